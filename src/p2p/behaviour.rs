//! The libp2p behaviour and swarm: TCP + Noise + Yamux and QUIC, identify, a private
//! Kademlia, gossipsub with validate-before-propagate and content-addressed message
//! ids, request-response (CBOR) for catch-up, ping, optional mDNS, relay client and
//! DCUtR for nodes behind NAT, optional relay server for hubs.

use std::time::Duration;

use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, autonat, connection_limits, dcutr, gossipsub, identify, kad, mdns, memory_connection_limits, noise,
    ping, relay, request_response, tcp, yamux,
};

use super::sync::{SyncRequest, SyncResponse};

pub const KAD_PROTOCOL: &str = "/hearsay/kad/1.0.0";
pub const SYNC_PROTOCOL: &str = "/hearsay/sync/1.0.0";
pub const IDENTIFY_PROTOCOL: &str = "/hearsay/1.0.0";
const MESSAGE_ID_CONTEXT: &str = "hearsay 2026-11 gossip message-id v1";
/// Largest gossip message (a snapshot envelope or a manifest fits well under it).
pub const MAX_GOSSIP_BYTES: usize = 64 * 1024;
/// Request and response size limits of the sync protocol.
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024;
/// 16 snapshots of at most 61 KiB, 16 manifests of 48 KiB, or 4096 refs fit.
pub const MAX_RESPONSE_BYTES: u64 = 1280 * 1024;

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Caps on connections: in total, per peer, and pending inbound (checked first).
    pub limits: connection_limits::Behaviour,
    /// Refuses new connections while the process uses more memory than the cap.
    pub memory: memory_connection_limits::Behaviour,
    /// Caps connections per IP address (IPv6: per /64), loopback exempt.
    pub per_ip: super::per_ip::Behaviour,
    pub gossipsub: gossipsub::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub identify: identify::Behaviour,
    pub sync: request_response::cbor::Behaviour<SyncRequest, SyncResponse>,
    /// Secure aggregation between members and a community's two aggregators.
    pub secagg: request_response::cbor::Behaviour<super::secagg::SecaggRequest, super::secagg::SecaggResponse>,
    pub ping: ping::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub relay_client: relay::client::Behaviour,
    pub relay_server: Toggle<relay::Behaviour>,
    pub dcutr: dcutr::Behaviour,
    /// Asks peers to dial this node back to learn whether it is reachable (AutoNAT v2).
    pub autonat: Toggle<autonat::v2::client::Behaviour>,
    /// Dials others back for them (hubs, with `relay_server`).
    pub autonat_server: Toggle<autonat::v2::server::Behaviour>,
}

/// Gossip scoring suited to topics that carry about one message per node per period:
/// no penalty for "too few mesh deliveries" (it would punish every honest peer), a
/// strong one for invalid messages.
fn topic_params() -> gossipsub::TopicScoreParams {
    gossipsub::TopicScoreParams {
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -100.0,
        invalid_message_deliveries_decay: 0.3,
        ..Default::default()
    }
}

pub fn set_topic_scoring(g: &mut gossipsub::Behaviour, topic: &gossipsub::IdentTopic) {
    let _ = g.set_topic_params(topic.clone(), topic_params());
}

/// Connections one peer may hold at once (a redial racing an open one needs two).
pub const MAX_CONNECTIONS_PER_PEER: u32 = 2;
/// Inbound connections still in their handshake at once.
pub const MAX_PENDING_INCOMING: u32 = 64;

pub struct Options {
    pub max_connections: u32,
    pub max_connections_per_ip: u32,
    pub max_memory_bytes: usize,
    pub mdns: bool,
    pub relay_server: bool,
    pub autonat: bool,
    pub heartbeat: Duration,
}

pub fn build(
    key: libp2p::identity::Keypair,
    options: &Options,
) -> Result<libp2p::Swarm<Behaviour>, Box<dyn std::error::Error + Send + Sync>> {
    let heartbeat = options.heartbeat;
    let (mdns_on, relay_on, autonat_on) = (options.mdns, options.relay_server, options.autonat);
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established(Some(options.max_connections))
        .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
        .with_max_pending_incoming(Some(MAX_PENDING_INCOMING));
    let max_memory = options.max_memory_bytes;
    let per_ip = options.max_connections_per_ip;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)?
        .with_quic()
        .with_dns()?
        .with_relay_client(noise::Config::new, yamux::Config::default)?
        .with_behaviour(|key, relay_client| {
            let config = gossipsub::ConfigBuilder::default()
                .validation_mode(gossipsub::ValidationMode::Strict)
                .validate_messages()
                .message_id_fn(|m: &gossipsub::Message| {
                    let mut h = blake3::Hasher::new_derive_key(MESSAGE_ID_CONTEXT);
                    h.update(m.topic.as_str().as_bytes());
                    h.update(&[0]);
                    h.update(&m.data);
                    gossipsub::MessageId::from(h.finalize().as_bytes()[..20].to_vec())
                })
                .max_transmit_size(MAX_GOSSIP_BYTES)
                .duplicate_cache_time(Duration::from_secs(600))
                .heartbeat_interval(heartbeat)
                .build()
                .map_err(std::io::Error::other)?;
            let mut gossipsub = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), config)
                .map_err(std::io::Error::other)?;
            // Many nodes behind one address (loopback, a shared host, carrier NAT) are
            // normal here; the colocation penalty would graylist them all. Loopback is
            // exempt, and the threshold is raised for the rest.
            let mut score = gossipsub::PeerScoreParams { ip_colocation_factor_threshold: 50.0, ..Default::default() };
            score.ip_colocation_factor_whitelist.insert(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
            score.ip_colocation_factor_whitelist.insert(std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST));
            gossipsub
                .with_peer_score(score, gossipsub::PeerScoreThresholds::default())
                .map_err(std::io::Error::other)?;
            let peer = key.public().to_peer_id();
            let mut kad_config = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
            kad_config.set_record_filtering(kad::StoreInserts::FilterBoth);
            // Bootstrapped by the task when it knows peers (a lone node must not warn).
            kad_config.set_periodic_bootstrap_interval(None);
            let mdns = if mdns_on { Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer)?) } else { None };
            let codec = request_response::cbor::codec::Codec::default()
                .set_request_size_maximum(MAX_REQUEST_BYTES)
                .set_response_size_maximum(MAX_RESPONSE_BYTES);
            let secagg_codec = request_response::cbor::codec::Codec::default()
                .set_request_size_maximum(super::secagg::MAX_SECAGG_REQUEST_BYTES)
                .set_response_size_maximum(super::secagg::MAX_SECAGG_RESPONSE_BYTES);
            Ok(Behaviour {
                limits: connection_limits::Behaviour::new(limits),
                memory: memory_connection_limits::Behaviour::with_max_bytes(max_memory),
                per_ip: super::per_ip::Behaviour::new(per_ip),
                gossipsub,
                kad: kad::Behaviour::with_config(peer, kad::store::MemoryStore::new(peer), kad_config),
                identify: identify::Behaviour::new(
                    identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                        .with_agent_version(format!("hearsay/{}", env!("CARGO_PKG_VERSION"))),
                ),
                sync: request_response::Behaviour::with_codec(
                    codec,
                    [(StreamProtocol::new(SYNC_PROTOCOL), request_response::ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(30))
                        .with_max_concurrent_streams(16),
                ),
                secagg: request_response::Behaviour::with_codec(
                    secagg_codec,
                    [(StreamProtocol::new(super::secagg::SECAGG_PROTOCOL), request_response::ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(60))
                        .with_max_concurrent_streams(16),
                ),
                ping: ping::Behaviour::new(ping::Config::new()),
                mdns: mdns.into(),
                relay_client,
                relay_server: relay_on.then(|| relay::Behaviour::new(peer, relay::Config::default())).into(),
                dcutr: dcutr::Behaviour::new(peer),
                autonat: autonat_on
                    .then(|| {
                        autonat::v2::client::Behaviour::new(
                            rand::make_rng::<rand::rngs::StdRng>(),
                            autonat::v2::client::Config::default(),
                        )
                    })
                    .into(),
                autonat_server: relay_on
                    .then(|| autonat::v2::server::Behaviour::new(rand::make_rng::<rand::rngs::StdRng>()))
                    .into(),
            })
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    Ok(swarm)
}
