//! A cap on connections per IP address (IPv6: per /64), inbound and outbound, so one
//! host cannot take every connection slot with fresh PeerIds (libp2p's
//! `connection-limits` counts in total and per peer only). Written here because no
//! maintained libp2p behaviour limits by address; it follows `connection-limits`' shape:
//! checked when a connection is established, counted from the swarm's events.
//!
//! Loopback is exempt: several nodes on one host (tests, benchmarks, a shared machine)
//! all connect from 127.0.0.1, and a process on the same host can do worse anyway.
//! Relayed connections (through a circuit relay: no address of the peer's own) count
//! together as one address, so fresh PeerIds behind relays cannot take every slot either.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::behaviour::ConnectionEstablished;
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};

/// Relayed connections, all together, may hold this many times the per-address cap.
pub const RELAYED_FACTOR: u32 = 4;

/// What a limit counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    /// An IPv4 address, or the /64 of an IPv6 one (a single host commonly holds a /64).
    Ip(IpAddr),
    /// Every connection through a circuit relay, together.
    Relayed,
}

/// The key of a connection's remote address: relayed (the address goes through
/// `/p2p-circuit`, or, as libp2p gives an inbound relayed connection, is only the
/// peer's `/p2p/…`), else its IP address. `None` for loopback and other addresses
/// without an IP (a name this node dialled).
pub fn key_of(addr: &Multiaddr) -> Option<Key> {
    use libp2p::multiaddr::Protocol;
    let relayed = addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
        || (addr.iter().next().is_some() && addr.iter().all(|p| matches!(p, Protocol::P2p(_))));
    if relayed {
        return Some(Key::Relayed);
    }
    let ip = super::sync::ip_of(addr)?;
    if ip.is_loopback() {
        return None;
    }
    Some(Key::Ip(mask(ip)))
}

/// An IPv6 address reduced to its /64 (IPv4 unchanged): what one host can hold.
pub fn mask(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("more than {0} connections from one address")]
pub struct TooMany(pub u32);

pub struct Behaviour {
    max: u32,
    per_key: HashMap<Key, u32>,
    by_connection: HashMap<ConnectionId, Key>,
    /// Inbound connections still in their handshake, per key: counted with the
    /// established ones, so one address cannot hold every handshake slot either.
    pending: HashMap<ConnectionId, Key>,
    pending_per_key: HashMap<Key, u32>,
}

impl Behaviour {
    pub fn new(max: u32) -> Behaviour {
        Behaviour {
            max: max.max(1),
            per_key: HashMap::new(),
            by_connection: HashMap::new(),
            pending: HashMap::new(),
            pending_per_key: HashMap::new(),
        }
    }

    /// Room for one more connection from `addr`, besides `id` itself (pending).
    fn check(&self, id: ConnectionId, addr: &Multiaddr) -> Result<(), ConnectionDenied> {
        match key_of(addr) {
            Some(k) => {
                let mine = u32::from(self.pending.get(&id) == Some(&k));
                let held = self.per_key.get(&k).copied().unwrap_or(0)
                    + self.pending_per_key.get(&k).copied().unwrap_or(0).saturating_sub(mine);
                // Every relay's connections share one key: room for several hosts' worth.
                let max = if k == Key::Relayed { self.max.saturating_mul(RELAYED_FACTOR) } else { self.max };
                if held >= max { Err(ConnectionDenied::new(TooMany(max))) } else { Ok(()) }
            }
            None => Ok(()),
        }
    }

    fn end_pending(&mut self, id: ConnectionId) {
        if let Some(k) = self.pending.remove(&id)
            && let Some(n) = self.pending_per_key.get_mut(&k)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.pending_per_key.remove(&k);
            }
        }
    }

    fn add(&mut self, id: ConnectionId, addr: &Multiaddr) {
        if let Some(k) = key_of(addr) {
            *self.per_key.entry(k).or_insert(0) += 1;
            self.by_connection.insert(id, k);
        }
    }

    /// Connections counted against addresses now (for tests).
    pub fn counted(&self) -> usize {
        self.by_connection.len()
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.check(id, remote)?;
        if let Some(k) = key_of(remote) {
            self.pending.insert(id, k);
            *self.pending_per_key.entry(k).or_insert(0) += 1;
        }
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check(id, remote)?;
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        _: PeerId,
        addr: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check(id, addr)?;
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        // Counted once established (as `connection-limits` does): a connection another
        // behaviour denied is never established, so it is never counted.
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished { connection_id, endpoint, .. }) => {
                self.end_pending(connection_id);
                self.add(connection_id, endpoint.get_remote_address())
            }
            FromSwarm::ListenFailure(f) => self.end_pending(f.connection_id),
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => self.forget(connection_id),
            _ => {}
        }
    }

    fn on_connection_handler_event(&mut self, _: PeerId, _: ConnectionId, event: THandlerOutEvent<Self>) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

impl Behaviour {
    fn forget(&mut self, id: ConnectionId) {
        if let Some(k) = self.by_connection.remove(&id)
            && let Some(n) = self.per_key.get_mut(&k)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_key.remove(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::core::ConnectedPoint;

    #[test]
    fn ipv6_counts_per_64_and_loopback_is_exempt() {
        let a: Multiaddr = "/ip6/2001:db8:1:2:aaaa::1/tcp/1".parse().expect("addr");
        let b: Multiaddr = "/ip6/2001:db8:1:2:bbbb::9/tcp/1".parse().expect("addr");
        let c: Multiaddr = "/ip6/2001:db8:1:3::1/tcp/1".parse().expect("addr");
        assert_eq!(key_of(&a), key_of(&b), "one /64");
        assert_ne!(key_of(&a), key_of(&c));
        assert_eq!(key_of(&"/ip4/127.0.0.1/tcp/1".parse().expect("addr")), None);
        assert_eq!(key_of(&"/ip6/::1/tcp/1".parse().expect("addr")), None);
        assert!(key_of(&"/ip4/10.0.0.7/tcp/1".parse().expect("addr")).is_some());
        // Relayed: inbound (libp2p gives only the peer's id) and outbound (through a
        // relay's address) count together, not against the relay's own address.
        let peer = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
        assert_eq!(key_of(&format!("/p2p/{peer}").parse().expect("addr")), Some(Key::Relayed));
        let via = format!("/ip4/198.51.100.4/tcp/4001/p2p/{peer}/p2p-circuit/p2p/{peer}");
        assert_eq!(key_of(&via.parse().expect("addr")), Some(Key::Relayed));
        assert_eq!(key_of(&"/dns4/music.example.org/tcp/4001".parse().expect("addr")), None);
    }

    #[test]
    fn an_address_holds_at_most_max_connections_and_gets_room_back_on_close() {
        let mut b = Behaviour::new(3);
        let from: Multiaddr = "/ip4/203.0.113.5/tcp/4001".parse().expect("addr");
        let other: Multiaddr = "/ip4/203.0.113.6/tcp/4001".parse().expect("addr");
        let local: Multiaddr = "/ip4/0.0.0.0/tcp/1".parse().expect("addr");
        let ids: Vec<ConnectionId> = (0..5).map(|_| ConnectionId::new_unchecked(rand_id())).collect();
        let establish = |b: &mut Behaviour, id: ConnectionId, remote: &Multiaddr| -> bool {
            let peer = PeerId::random();
            if b.handle_established_inbound_connection(id, peer, &local, remote).is_err() {
                return false;
            }
            let endpoint = ConnectedPoint::Listener { local_addr: local.clone(), send_back_addr: remote.clone() };
            b.on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
                peer_id: peer,
                connection_id: id,
                endpoint: &endpoint,
                failed_addresses: &[],
                other_established: 0,
            }));
            true
        };
        // Handshakes count too: with two pending from one address, one more fits.
        let (p1, p2, p3) = (
            ConnectionId::new_unchecked(rand_id()),
            ConnectionId::new_unchecked(rand_id()),
            ConnectionId::new_unchecked(rand_id()),
        );
        assert!(b.handle_pending_inbound_connection(p1, &local, &from).is_ok());
        assert!(b.handle_pending_inbound_connection(p2, &local, &from).is_ok());
        assert!(b.handle_pending_inbound_connection(p3, &local, &from).is_ok());
        assert!(
            b.handle_pending_inbound_connection(ConnectionId::new_unchecked(rand_id()), &local, &from).is_err(),
            "a fourth handshake from one address"
        );
        assert!(b.handle_established_inbound_connection(p1, PeerId::random(), &local, &from).is_ok(), "its own slot");
        for p in [p1, p2, p3] {
            b.end_pending(p);
        }
        let allowed = ids.iter().filter(|id| establish(&mut b, **id, &from)).count();
        assert_eq!(allowed, 3, "fresh PeerIds do not get around it");
        assert!(establish(&mut b, ids[4], &other), "another address has its own room");
        b.forget(ids[0]);
        assert!(establish(&mut b, ids[3], &from), "a closed connection gives its room back");
        assert_eq!(b.counted(), 4);
    }

    fn rand_id() -> usize {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(1_000_000);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }
}
