//! hearsay: a federated peer-to-peer scrobble network node.
//!
//! Crate map (see `docs/ARCHITECTURE.md` for data flow and invariants):
//! - `log`: pure domain of the signed listening log (listens, chain, seals, verification);
//! - `store`: the only module that touches sled; users, tokens, logs, the ingest writer;
//! - `auth`: password hashing and API tokens;
//! - `identity`: the node's own ed25519 key, stored so libp2p can load it;
//! - `config`: layered configuration;
//! - `http`: the HTTP router (health; later the scrobbler APIs and the web view);
//! - `node`: composition root, `run(listener, shutdown)`;
//! - `bench`: benchmark commands that print figures;
//! - `cli`: the command line.

pub mod account;
pub mod api;
pub mod auth;
pub mod bench;
mod bench_fed;
pub mod cli;
mod cli_community;
pub mod config;
pub mod export;
pub mod federation;
pub mod http;
pub mod identity;
pub mod import;
pub mod log;
pub mod node;
pub mod p2p;
pub mod privacy;
pub mod publish;
pub mod stats;
pub mod store;
pub mod web;

/// The current UTC time in unix seconds: the one place the node reads the clock for
/// domain purposes, passed down to pure code.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
