//! The catch-up protocol (`/hearsay/sync/1.0.0`, request-response, CBOR around opaque
//! signed bytes): a node asks a peer which snapshots it holds for a range of periods,
//! fetches those it lacks, and fetches community manifests newer than its own. Every
//! snapshot and manifest fetched is validated exactly as if it came by gossip.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

/// Most references in one answer, snapshots per fetch, manifests per answer.
pub const MAX_REFS: usize = 4096;
pub const MAX_FETCH: usize = 64;
pub const MAX_MANIFESTS: usize = 64;

/// (period start, origin, version, blake3 of the bytes).
pub type Ref = (i64, [u8; 32], u16, [u8; 32]);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncRequest {
    /// References of the snapshots held with `from <= period < to`.
    Refs { from: i64, to: i64 },
    /// The bytes of these snapshots (at most `MAX_FETCH`).
    Snapshots { refs: Vec<Ref> },
    /// Signed manifests of a community with a version above `after`.
    Manifests { community: [u8; 32], after: u32 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncResponse {
    Refs(Vec<Ref>),
    Snapshots(Vec<serde_bytes::ByteBuf>),
    Manifests(Vec<serde_bytes::ByteBuf>),
    /// Refused: rate limited, range too large, too many refs.
    Error(String),
}

/// A per-peer fixed-window limit on inbound requests. (The federation issue replaces
/// it with limits per address as well, where a keyed limiter crate fits; today it is
/// this map, pruned as windows pass.)
#[derive(Default)]
pub struct RateLimit {
    windows: HashMap<PeerId, (Instant, u32)>,
}

impl RateLimit {
    /// Whether `peer` may make one more request now (at most `per_minute` a minute).
    pub fn allow(&mut self, peer: PeerId, per_minute: u32, now: Instant) -> bool {
        if self.windows.len() > 10_000 {
            self.windows.retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(60));
        }
        let w = self.windows.entry(peer).or_insert((now, 0));
        if now.duration_since(w.0) >= Duration::from_secs(60) {
            *w = (now, 0);
        }
        w.1 += 1;
        w.1 <= per_minute
    }
}
