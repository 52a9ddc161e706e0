//! The catch-up protocol (`/hearsay/sync/1.0.0`, request-response, CBOR around opaque
//! signed bytes): a node asks a peer which snapshots it holds for a range of periods,
//! fetches those it lacks, and fetches community manifests newer than its own. Every
//! snapshot and manifest fetched is validated exactly as if it came by gossip.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Most references in one answer, snapshots per fetch, manifests per answer. A fetch of
/// 16 snapshots (a 1.2 KiB request) is answered with at most 16 × 61 KiB ≈ 1 MiB, and a
/// manifests request with at most 16 × 48 KiB: no small request draws more than that.
pub const MAX_REFS: usize = 4096;
pub const MAX_FETCH: usize = 16;
pub const MAX_MANIFESTS: usize = 16;

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

/// A fixed-window limit on inbound requests per key: kept per PeerId and per IP
/// address (`IP_FACTOR` times the per-peer limit: many honest nodes share an address,
/// but a fresh PeerId does not reset it). Hand-written: a map of two values per key,
/// pruned as windows pass; governor's keyed limiter would do, at the cost of a
/// dependency for twenty lines.
pub struct RateLimit<K> {
    windows: HashMap<K, (Instant, u32)>,
}

impl<K> Default for RateLimit<K> {
    fn default() -> Self {
        RateLimit { windows: HashMap::new() }
    }
}

/// How many times the per-peer limit one IP address gets.
pub const IP_FACTOR: u32 = 8;

impl<K: std::hash::Hash + Eq> RateLimit<K> {
    /// Whether `key` may make one more request now (at most `per_minute` a minute).
    pub fn allow(&mut self, key: K, per_minute: u32, now: Instant) -> bool {
        if self.windows.len() > 10_000 {
            self.windows.retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(60));
        }
        let w = self.windows.entry(key).or_insert((now, 0));
        if now.duration_since(w.0) >= Duration::from_secs(60) {
            *w = (now, 0);
        }
        w.1 = w.1.saturating_add(1);
        w.1 <= per_minute
    }
}

/// The IP address in a multiaddr, if any.
pub fn ip_of(addr: &libp2p::Multiaddr) -> Option<std::net::IpAddr> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::Ip4(ip) => Some(ip.into()),
        libp2p::multiaddr::Protocol::Ip6(ip) => Some(ip.into()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_peer_id_does_not_reset_the_limit_of_its_address() {
        use libp2p::PeerId;
        let (mut peers, mut ips) = (RateLimit::default(), RateLimit::default());
        let now = Instant::now();
        let ip: std::net::IpAddr = [10, 0, 0, 1].into();
        let mut allowed = 0;
        // A new PeerId for every request, from one address.
        for _ in 0..1000 {
            let peer = PeerId::random();
            if peers.allow(peer, 60, now) && ips.allow(ip, 60 * IP_FACTOR, now) {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 60 * IP_FACTOR);
        assert!(ips.allow(ip, 60 * IP_FACTOR, now + Duration::from_secs(61)), "a new window");
        let addr: libp2p::Multiaddr = "/ip4/10.0.0.1/tcp/4001".parse().expect("addr");
        assert_eq!(ip_of(&addr), Some(ip));
    }
}
