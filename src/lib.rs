//! hearsay: a federated peer-to-peer scrobble network node.
//!
//! Crate map (see `docs/ARCHITECTURE.md` for data flow and invariants):
//! - `log`: pure domain of the signed listening log (listens, chain, seals, verification,
//!   the duplicate rule);
//! - `stats`: pure statistics (credits, periods, charts, insights);
//! - `privacy`: pure rules of what may leave the node (levels, parameters, noise, the
//!   accountant, the release and its only output, `Publishable<SnapshotV1>`);
//! - `policy`: the access policy, pure: what any viewer may learn about a user, for
//!   each purpose;
//! - `federation`: pure communities, validation of peers' data, and merging;
//! - `store`: the only module that touches sled; users, tokens, logs, the ingest writer,
//!   aggregates, releases, federation state;
//! - `p2p`: the only module that touches libp2p;
//! - `publish`: the release schedule; `import`, `export`, `account`: histories in and out;
//! - `api`: the scrobbler protocols; `web`: the local web view; `http`: the router;
//! - `auth`, `identity`, `envelope` (signed envelopes), `config`, `state` (what HTTP
//!   handlers share), `node` (composition root), `cli`, `bench` (the `bench` feature).

pub mod account;
pub mod api;
pub mod auth;
#[cfg(feature = "bench")]
pub mod bench;
pub mod cli;
pub mod config;
pub mod envelope;
pub mod export;
pub mod federation;
pub mod http;
pub mod identity;
pub mod import;
pub mod listenbrainz_json;
pub mod log;
pub mod memory;
pub mod metrics;
pub mod node;
pub mod p2p;
pub mod policy;
pub mod privacy;
pub mod publish;
pub mod state;
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
