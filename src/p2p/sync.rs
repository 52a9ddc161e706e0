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
/// Most results per answer (16 × 61 KiB).
pub const MAX_RESULTS: usize = 16;
/// Most (period, inputs) pairs a `Results` request lists.
pub const MAX_HAVE_RESULTS: usize = 1024;

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
    /// References of the snapshots the peer took after `after` in its arrival log
    /// `epoch` (both from its last `RefsSince` answer; `0, 0` the first time): catch-up
    /// rounds after the first carry only what is new, not the retention window's refs.
    RefsSince { epoch: u64, after: u64 },
    /// The sender just took these snapshots by catch-up (at most `MAX_REFS`): the
    /// receiver fetches from it those it lacks and wants, and announces them onward, so
    /// a gap (a healed partition, a node back online) closes in round trips.
    Have { refs: Vec<Ref> },
    /// Signed results of a community for periods from `from` on, newest first (at
    /// most `MAX_RESULTS`), but none for a period listed in `have` with at least as many
    /// inputs (what the asker holds, at most `MAX_HAVE_RESULTS`, the newest).
    Results { community: [u8; 32], from: i64, have: Vec<(i64, u32)> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncResponse {
    Refs(Vec<Ref>),
    Snapshots(Vec<serde_bytes::ByteBuf>),
    Manifests(Vec<serde_bytes::ByteBuf>),
    /// Refused: rate limited, range too large, too many refs.
    Error(String),
    /// The refs after the watermark, and the watermark to send next time.
    RefsSince {
        epoch: u64,
        next: u64,
        refs: Vec<Ref>,
    },
    /// A `Have` was received.
    Noted,
    Results(Vec<serde_bytes::ByteBuf>),
}

/// The snapshots this node took, in the order it took them (a sequence number each):
/// what `RefsSince` answers from. Kept in memory for the retention window and rebuilt
/// at start under a fresh random `epoch`, so a peer's watermark from before a restart
/// is recognised as stale and answered as a first contact.
pub struct Arrivals {
    epoch: u64,
    next: u64,
    entries: std::collections::VecDeque<(u64, Ref)>,
}

/// Most refs the arrival log keeps (beyond: the oldest are forgotten, and a peer far
/// behind is answered as a first contact).
pub const MAX_ARRIVALS: usize = 262_144;

impl Arrivals {
    /// A log under `epoch` (non-zero) holding `held` (oldest first).
    pub fn new(epoch: u64, held: impl IntoIterator<Item = Ref>) -> Arrivals {
        let mut a = Arrivals { epoch: epoch.max(1), next: 1, entries: Default::default() };
        for r in held {
            a.push(r);
        }
        a
    }

    pub fn push(&mut self, r: Ref) {
        if self.entries.len() >= MAX_ARRIVALS {
            self.entries.pop_front();
        }
        self.entries.push_back((self.next, r));
        self.next += 1;
    }

    /// Forgets refs of periods before `oldest`.
    pub fn prune(&mut self, oldest: i64) {
        self.entries.retain(|(_, r)| r.0 >= oldest);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The refs taken since `after` in `epoch`, at most `max`, oldest first, and the
    /// watermark to ask from next. Another epoch (a first contact, or a restart since) or
    /// a watermark past the head: the newest `max` refs and the head (a first contact
    /// wants what is current; rounds that forget watermarks stay one page). A watermark
    /// of this epoch older than the log (a prune since: a peer far behind) starts from the
    /// oldest ref kept and goes on from there round after round, so such a peer skips
    /// none of the retention window.
    pub fn since(&self, epoch: u64, after: u64, max: usize) -> (u64, u64, Vec<Ref>) {
        let head = self.next - 1;
        let oldest_kept = self.entries.front().map_or(self.next, |e| e.0);
        if epoch != self.epoch || after > head {
            let skip = self.entries.len().saturating_sub(max);
            return (self.epoch, head, self.entries.iter().skip(skip).map(|e| e.1).collect());
        }
        let start =
            if after.saturating_add(1) < oldest_kept { 0 } else { self.entries.partition_point(|e| e.0 <= after) };
        let refs: Vec<(u64, Ref)> = self.entries.iter().skip(start).take(max).copied().collect();
        let next = refs.last().map_or(after.min(head), |e| e.0);
        (self.epoch, next, refs.into_iter().map(|e| e.1).collect())
    }

    /// The refs taken after sequence number `mark` (for announcing what a catch-up
    /// brought).
    pub fn after(&self, mark: u64) -> Vec<Ref> {
        let start = self.entries.partition_point(|e| e.0 <= mark);
        self.entries.iter().skip(start).map(|e| e.1).collect()
    }

    pub fn head(&self) -> u64 {
        self.next - 1
    }
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

/// How far an IP address reaches: this host, a local network, or the internet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Host,
    Local,
    Global,
}

pub fn scope(ip: std::net::IpAddr) -> Scope {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) if v4.is_loopback() => Scope::Host,
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            // RFC 1918, link-local, CGNAT (100.64/10), unspecified.
            if v4.is_private() || v4.is_link_local() || (a == 100 && (64..128).contains(&b)) || v4.is_unspecified() {
                Scope::Local
            } else {
                Scope::Global
            }
        }
        IpAddr::V6(v6) if v6.is_loopback() => Scope::Host,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => scope(IpAddr::V4(v4)),
            // Unique local fc00::/7, link-local fe80::/10, unspecified.
            None if (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.is_unspecified() =>
            {
                Scope::Local
            }
            None => Scope::Global,
        },
    }
}

/// Whether a peer's listen address `addr` may go into the peer directory (and so be
/// handed to other peers), given the address the peer was reached at (`remote`; `None`
/// for a relayed connection, taken as the internet): only addresses at least as
/// far-reaching as that one. A peer met over the internet has none of its LAN or
/// loopback addresses republished, so the directory hands out neither undialable
/// private addresses nor a home network's layout; one met on a LAN or this host has its
/// addresses of that reach and wider served. An unspecified address (`0.0.0.0`, `::`)
/// never is. Names (`/dns…`) and relay addresses carry no address of the node itself and
/// are kept.
pub fn directory_may_serve(addr: &libp2p::Multiaddr, remote: Option<std::net::IpAddr>) -> bool {
    match ip_of(addr) {
        None => true,
        Some(ip) if ip.is_unspecified() => false,
        Some(_) if addr.iter().any(|p| matches!(p, libp2p::multiaddr::Protocol::P2pCircuit)) => true,
        Some(ip) => scope(ip) >= remote.map_or(Scope::Global, scope),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_serves_only_addresses_as_far_reaching_as_the_peer_was_met_at() {
        let a = |s: &str| -> libp2p::Multiaddr { s.parse().expect("multiaddr") };
        let ip = |s: &str| -> Option<std::net::IpAddr> { Some(s.parse().expect("ip")) };
        let global = ip("203.0.113.7");
        assert!(directory_may_serve(&a("/ip4/198.51.100.1/tcp/4001"), global));
        assert!(!directory_may_serve(&a("/ip4/192.168.1.20/tcp/4001"), global), "a LAN address met over the internet");
        assert!(!directory_may_serve(&a("/ip4/127.0.0.1/tcp/4001"), global));
        assert!(!directory_may_serve(&a("/ip4/100.64.3.2/tcp/4001"), global), "CGNAT");
        assert!(!directory_may_serve(&a("/ip6/fd00::1/tcp/4001"), global), "IPv6 unique local");
        assert!(directory_may_serve(&a("/ip4/192.168.1.20/tcp/4001"), ip("10.0.0.9")), "one LAN");
        assert!(
            directory_may_serve(&a("/ip4/198.51.100.1/tcp/4001"), ip("10.0.0.9")),
            "met on a LAN: its global address too"
        );
        assert!(directory_may_serve(&a("/ip4/127.0.0.1/tcp/4001"), ip("127.0.0.1")), "one host");
        assert!(directory_may_serve(&a("/ip4/192.168.1.20/tcp/4001"), ip("127.0.0.1")), "met on this host: wider too");
        assert!(!directory_may_serve(&a("/ip4/127.0.0.1/tcp/4001"), ip("10.0.0.9")), "met on a LAN: not its loopback");
        assert!(!directory_may_serve(&a("/ip4/0.0.0.0/tcp/4001"), ip("127.0.0.1")), "never an unspecified address");
        assert!(directory_may_serve(&a("/ip4/198.51.100.1/tcp/4001"), None), "relayed: as the internet");
        assert!(directory_may_serve(&a("/dns4/music.example.org/tcp/4001"), global));
        assert!(!directory_may_serve(&a("/ip4/10.1.1.1/tcp/4001"), None), "relayed: not its LAN");
        assert!(directory_may_serve(
            &a("/ip4/198.51.100.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit"),
            None
        ));
    }

    fn r(i: u8) -> Ref {
        (i64::from(i) * 604_800, [i; 32], 1, [i; 32])
    }

    /// Later rounds carry only what is new; a stale epoch (a restart) or a watermark past
    /// the head is answered as a first contact (the newest); a watermark older than the
    /// log (a prune since) from the oldest ref kept, in pieces of `max`, without loss.
    #[test]
    fn arrivals_answer_what_is_new_since_a_watermark() {
        let mut a = Arrivals::new(7, (0..5).map(r));
        let (epoch, next, first) = a.since(0, 0, 100);
        assert_eq!((epoch, next, first.len()), (7, 5, 5), "first contact: everything");
        assert_eq!(a.since(7, next, 100).2, vec![], "nothing new");
        a.push(r(5));
        a.push(r(6));
        assert_eq!(a.since(7, next, 100), (7, 7, vec![r(5), r(6)]));
        let (_, n1, part) = a.since(7, 2, 3);
        assert_eq!((n1, part), (5, vec![r(2), r(3), r(4)]), "a gap in pieces");
        assert_eq!(a.since(7, n1, 3), (7, 7, vec![r(5), r(6)]));
        assert_eq!(a.since(8, 3, 2), (7, 7, vec![r(5), r(6)]), "another epoch: the newest, from the head");
        assert_eq!(a.since(7, 99, 2).1, 7, "a watermark past the head");
        a.prune(3 * 604_800);
        assert_eq!(a.len(), 4);
        assert_eq!(a.since(7, 1, 2), (7, 5, vec![r(3), r(4)]), "older than the log: from the oldest kept");
        assert_eq!(a.since(7, 5, 2), (7, 7, vec![r(5), r(6)]), "then the rest: nothing skipped");
        assert_eq!(Arrivals::new(9, []).since(1, 0, 2), (9, 0, vec![]), "an empty log");
        let mut pruned = Arrivals::new(9, (0..3).map(r));
        pruned.prune(5 * 604_800);
        assert_eq!(pruned.since(9, 1, 2), (9, 1, vec![]), "pruned empty: nothing, the watermark kept");
        assert_eq!(a.after(6), vec![r(6)], "after sequence number 6 (r(5))");
    }

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
