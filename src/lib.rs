//! hearsay: a federated peer-to-peer scrobble network node.
//!
//! Crate map (see `docs/ARCHITECTURE.md` for data flow and invariants):
//! - `log`: pure domain of the signed listening log (listens, chain, seals, verification,
//!   the duplicate rule);
//! - `stats`: pure statistics (credits, periods, charts, insights);
//! - `privacy`: pure rules of what may leave the node (levels, parameters, noise, the
//!   accountant, the release and its only output, `Publishable<SnapshotV1>`);
//! - `federation`: pure communities, validation of peers' data, and merging;
//! - `store`: the only module that touches sled; users, tokens, logs, the ingest writer,
//!   aggregates, releases, federation state;
//! - `p2p`: the only module that touches libp2p;
//! - `publish`: the release schedule; `import`, `export`, `account`: histories in and out;
//! - `api`: the scrobbler protocols; `web`: the local web view; `http`: the router;
//! - `auth`, `identity`, `config`, `node` (composition root), `cli`, `bench`.

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
