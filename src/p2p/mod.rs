//! The network layer: the only module that imports libp2p. One task owns the swarm; the
//! rest of the node talks to it through a bounded channel (`P2pHandle`). It publishes
//! this node's stored releases and community manifests over gossipsub, validates every
//! snapshot and manifest that arrives (gossip or catch-up) with `federation::validate`
//! before gossipsub may forward it, stores what is accepted, and answers and makes
//! catch-up requests (`sync`). Wire formats: `docs/protocol.md`.

pub mod behaviour;
pub mod per_ip;
pub mod secagg;
pub mod sync;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, TopicHash};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, identify, kad, mdns};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use self::behaviour::{Behaviour, BehaviourEvent};
use self::sync::{Arrivals, MAX_FETCH, MAX_MANIFESTS, MAX_REFS, RateLimit, Ref, SyncRequest, SyncResponse};
use crate::federation::community::{ManifestError, ManifestV1, SignedManifest, accept, open_manifest};
use crate::federation::validate::{Context, Verdict, check_snapshot};
use crate::federation::{CommunityId, NodeId, short_hex};
use crate::identity::NodeIdentity;
use crate::privacy::params::Floor;
use crate::store::Store;

/// What the node asks of the network task.
pub enum Command {
    /// Publish this node's stored release (signed envelope bytes) to every community it
    /// is a member of.
    PublishRelease(Vec<u8>),
    /// The followed communities or a manifest changed on disk: resubscribe and redial.
    Refresh,
    Status(oneshot::Sender<Status>),
}

/// A cheap, cloneable handle to the network task.
#[derive(Clone)]
pub struct P2pHandle {
    tx: mpsc::Sender<Command>,
    pub peer_id: String,
}

impl P2pHandle {
    pub async fn publish_release(&self, bytes: Vec<u8>) {
        let _ = self.tx.send(Command::PublishRelease(bytes)).await;
    }

    pub async fn refresh(&self) {
        let _ = self.tx.send(Command::Refresh).await;
    }

    pub async fn status(&self) -> Option<Status> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::Status(tx)).await.ok()?;
        rx.await.ok()
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    pub peer_id: String,
    /// Addresses: the node's and its peers' (for a home node, its people's). Shown only
    /// to administrators (`Status::without_addresses` for everyone else).
    pub listen: Vec<String>,
    pub peers: Vec<PeerStatus>,
    /// Snapshots accepted / ignored / rejected (manifests too) since start, and kept as
    /// evidence (an origin's equivocation, a manifest fork).
    pub accepted: u64,
    pub ignored: u64,
    pub rejected: u64,
    pub evidence: u64,
}

impl Status {
    /// The status as anyone but an administrator may see it: no addresses.
    pub fn without_addresses(mut self) -> Status {
        self.listen.clear();
        for p in &mut self.peers {
            p.address.clear();
        }
        self
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct PeerStatus {
    pub peer_id: String,
    pub address: String,
    pub agent: String,
}

/// The `[p2p]` options the task needs.
#[derive(Clone, Debug)]
pub struct Options {
    pub listen: Vec<Multiaddr>,
    pub external: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    /// Serve the peer directory (Kademlia server mode) from the start.
    pub serve_directory: bool,
    pub relays: Vec<Multiaddr>,
    pub relay_server: bool,
    pub autonat: bool,
    pub retention_secs: i64,
    pub sync_interval: Duration,
    pub max_requests_per_minute: u32,
    /// Established connections at most (`p2p.max_connections`).
    pub max_connections: u32,
    /// Established connections per IP address at most (`p2p.max_connections_per_ip`).
    pub max_connections_per_ip: u32,
    /// No new connection while the process uses more memory than this.
    pub max_memory_bytes: usize,
    /// This node's release period (`privacy.period_secs`): snapshots of periods of
    /// another length are not taken (a community shares one period grid).
    pub period_secs: u32,
    /// How long after a period ends an administrator merges and signs its community's
    /// result: members release after their grace time, and catch-up needs a round or two.
    pub result_delay_secs: i64,
    /// How long after a period ends its listens are final (`privacy.grace_secs`): a
    /// member makes its secure-aggregation reports from then on.
    pub grace_secs: i64,
    /// The users' privacy budget, charged for secure-aggregation reports.
    pub budget: crate::privacy::params::Budget,
    /// How listens are credited to artists (as in the node's own releases).
    pub credit_rules: crate::stats::credits::CreditRules,
    /// Where received secure-aggregation messages are written (`p2p.secagg_audit_dir`).
    pub secagg_audit: Option<std::path::PathBuf>,
}

impl Options {
    pub fn from_config(c: &crate::config::P2pConfig, privacy: &crate::config::PrivacyConfig) -> Options {
        let period_secs = privacy.period_secs;
        let parse = |v: &[String]| v.iter().filter_map(|a| a.parse().ok()).collect();
        Options {
            listen: parse(&c.listen),
            external: parse(&c.external),
            bootstrap: parse(&c.bootstrap),
            mdns: c.mdns,
            serve_directory: c.serve_directory,
            relays: parse(&c.relays),
            relay_server: c.relay_server,
            autonat: c.autonat,
            retention_secs: i64::from(c.retention_secs),
            sync_interval: Duration::from_secs(u64::from(c.sync_interval_secs)),
            period_secs,
            max_requests_per_minute: c.max_requests_per_minute,
            max_connections: c.max_connections,
            max_connections_per_ip: c.max_connections_per_ip,
            max_memory_bytes: usize::try_from(u64::from(c.max_memory_mib).saturating_mul(1 << 20))
                .unwrap_or(usize::MAX),
            result_delay_secs: i64::from(privacy.grace_secs).saturating_add(2 * i64::from(c.sync_interval_secs)),
            grace_secs: i64::from(privacy.grace_secs),
            budget: privacy.budget().unwrap_or_default(),
            credit_rules: crate::stats::credits::CreditRules::default(),
            secagg_audit: c.secagg_audit_dir.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("p2p: {0}")]
    Start(String),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum TopicKind {
    Snapshot,
    Meta,
    Result,
    /// Secure-aggregation results, signed by both aggregators (`p2p::secagg`).
    Secure,
}

pub fn snapshot_topic(id: &CommunityId) -> IdentTopic {
    IdentTopic::new(format!("/hearsay/1/c/{}/snapshot", short_hex(id)))
}

/// The Kademlia key under which a community's members announce themselves (provider
/// records are only hints: membership is always checked against the manifest).
pub fn community_dht_key(id: &CommunityId) -> kad::RecordKey {
    kad::RecordKey::new(&blake3::derive_key("hearsay 2026-11 community-dht-key v1", id))
}

pub fn meta_topic(id: &CommunityId) -> IdentTopic {
    IdentTopic::new(format!("/hearsay/1/c/{}/meta", short_hex(id)))
}

pub fn result_topic(id: &CommunityId) -> IdentTopic {
    IdentTopic::new(format!("/hearsay/1/c/{}/result", short_hex(id)))
}

/// Where a community's secure-aggregation results travel (every follower subscribes).
pub fn secure_topic(id: &CommunityId) -> IdentTopic {
    IdentTopic::new(format!("/hearsay/1/c/{}/secure", short_hex(id)))
}

/// The libp2p PeerId of a node key.
pub fn peer_id_of(node: &NodeId) -> Option<PeerId> {
    let key = libp2p::identity::ed25519::PublicKey::try_from_bytes(node).ok()?;
    Some(PeerId::from_public_key(&libp2p::identity::PublicKey::from(key)))
}

/// The node key inside a PeerId (ed25519 PeerIds embed it).
pub fn node_of(peer: &PeerId) -> Option<NodeId> {
    let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
    let key = libp2p::identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    Some(key.try_into_ed25519().ok()?.to_bytes())
}

/// The node key a PeerId in its text form (`12D3KooW…`) names; None when the text is
/// not a PeerId or not an ed25519 one.
pub fn node_of_text(text: &str) -> Option<NodeId> {
    node_of(&text.trim().parse::<PeerId>().ok()?)
}

/// Starts the network task. Listen failures are logged, not fatal: a node whose port
/// is taken still serves its users.
pub fn spawn(store: Store, identity: std::sync::Arc<NodeIdentity>, options: Options) -> Result<P2pHandle, Error> {
    let key = libp2p::identity::Keypair::from_protobuf_encoding(&identity.encode())
        .map_err(|e| Error::Start(format!("node key: {e}")))?;
    let opts = behaviour::Options {
        max_connections: options.max_connections,
        max_connections_per_ip: options.max_connections_per_ip,
        max_memory_bytes: options.max_memory_bytes,
        mdns: options.mdns,
        relay_server: options.relay_server,
        autonat: options.autonat,
        heartbeat: Duration::from_millis(500),
    };
    let mut swarm = behaviour::build(key, &opts).map_err(|e| Error::Start(e.to_string()))?;
    for addr in &options.listen {
        if let Err(e) = swarm.listen_on(addr.clone()) {
            tracing::warn!(%addr, error = %e, "cannot listen");
        }
    }
    for addr in &options.external {
        swarm.add_external_address(addr.clone());
    }
    // Every member serves the peer directory by default: joiners learn of each other
    // through the node they joined by and connect directly (one host, one LAN). With
    // `serve_directory` off, only a node others can reach (a declared external address,
    // or a hub) serves it; others start as clients and switch when AutoNAT confirms an
    // address.
    if options.serve_directory || !options.external.is_empty() || options.relay_server {
        swarm.behaviour_mut().kad.set_mode(Some(kad::Mode::Server));
    }
    for relay in &options.relays {
        if let Err(e) = swarm.listen_on(relay.clone().with(Protocol::P2pCircuit)) {
            tracing::warn!(%relay, error = %e, "cannot reserve a relay slot");
        }
    }
    let peer_id = *swarm.local_peer_id();
    let (tx, rx) = mpsc::channel(256);
    let mut task = Task {
        swarm,
        store,
        options,
        me: identity.public_key(),
        identity,
        published_results: HashMap::new(),
        topics: HashMap::new(),
        communities: Vec::new(),
        unknown: Vec::new(),
        pending: Vec::new(),
        requests: HashMap::new(),
        limits: RateLimit::default(),
        ip_limits: RateLimit::default(),
        peer_ips: HashMap::new(),
        peers: HashMap::new(),
        penalties: HashMap::new(),
        redial: Redial::default(),
        status: Status { peer_id: peer_id.to_string(), ..Status::default() },
        last_lookup: None,
        strangers: Default::default(),
        counted_members: None,
        unwanted: Default::default(),
        skew_warned: None,
        arrivals: Arrivals::new(0, []),
        watermarks: HashMap::new(),
        rounds: 0,
        secagg: secagg::State::default(),
    };
    task.arrivals = task.load_arrivals();
    task.refresh();
    tokio::spawn(task.run(rx));
    Ok(P2pHandle { tx, peer_id: peer_id.to_string() })
}

/// Backoff for redialling bootstrap peers that do not answer: the first retry after
/// `FIRST`, then twice as long each time up to `MAX`; a connection resets it. (The
/// bootstrap list is redialled every 10 s; an address that never answers was dialled
/// every 10 s forever.) Hand-written: a map of two values per peer, no crate needed.
#[derive(Default)]
struct Redial {
    next: HashMap<PeerId, (Instant, Duration)>,
}

impl Redial {
    const FIRST: Duration = Duration::from_secs(10);
    const MAX: Duration = Duration::from_secs(600);

    /// Whether `peer` may be dialled at `now`; if so, the dial is counted.
    fn may_dial(&mut self, peer: PeerId, now: Instant) -> bool {
        match self.next.get_mut(&peer) {
            Some((at, _)) if now < *at => false,
            Some((at, wait)) => {
                *wait = (*wait * 2).min(Self::MAX);
                *at = now + *wait;
                true
            }
            None => {
                self.next.insert(peer, (now + Self::FIRST, Self::FIRST));
                true
            }
        }
    }

    fn connected(&mut self, peer: &PeerId) {
        self.next.remove(peer);
    }
}

/// A followed community as the task keeps it.
struct Community {
    id: CommunityId,
    manifest: ManifestV1,
    /// This node publishes its releases there.
    member: bool,
    /// Followed only through a federation link, not as a member: its signed results
    /// are taken, not its members' snapshots.
    by_result: bool,
    /// Addresses from the ticket it was joined with.
    bootstrap: Vec<String>,
}

struct Task {
    swarm: libp2p::Swarm<Behaviour>,
    store: Store,
    options: Options,
    me: NodeId,
    identity: std::sync::Arc<NodeIdentity>,
    /// Per (community, period), how many inputs the last result this node signed had
    /// (an administrator re-issues only when it holds more).
    published_results: HashMap<(CommunityId, i64), usize>,
    topics: HashMap<TopicHash, (CommunityId, TopicKind)>,
    /// Followed communities whose manifest is held.
    communities: Vec<Community>,
    /// Followed communities whose manifest is not held yet (fetched by sync).
    unknown: Vec<(CommunityId, Vec<String>)>,
    /// Publications waiting for a subscriber: (topic, bytes, first tried).
    pending: Vec<(IdentTopic, Vec<u8>, Instant)>,
    requests: HashMap<OutboundRequestId, PeerId>,
    limits: RateLimit<PeerId>,
    ip_limits: RateLimit<per_ip::Key>,
    /// The remote IP address of each connected peer (`None`: reached through a relay),
    /// for `ip_limits` and for what the directory serves of it.
    peer_ips: HashMap<PeerId, Option<std::net::IpAddr>>,
    peers: HashMap<PeerId, PeerStatus>,
    penalties: HashMap<PeerId, f64>,
    /// When each bootstrap peer may be dialled again.
    redial: Redial,
    status: Status,
    /// When members were last announced and looked up in the DHT.
    last_lookup: Option<Instant>,
    /// Origins never seen before, taken through open communities only, in the current
    /// period (`validate::MAX_STRANGERS_PER_PERIOD`).
    strangers: crate::federation::validate::Strangers,
    /// The members `strangers` was last counted against.
    counted_members: Option<std::collections::BTreeSet<NodeId>>,
    /// Snapshots (blake3) taken and found to name no followed community that counts
    /// their origin: not fetched again by catch-up (refs do not say which communities a
    /// snapshot names). Cleared when it grows past `MAX_UNWANTED`.
    unwanted: std::collections::HashSet<[u8; 32]>,
    /// When the clock-skew warning was last given.
    skew_warned: Option<Instant>,
    /// The snapshots taken, in order: what `RefsSince` answers from.
    arrivals: Arrivals,
    /// Per peer, the watermark of its arrival log to ask from next (epoch, after).
    watermarks: HashMap<PeerId, (u64, u64)>,
    /// Catch-up rounds made (every `FULL_ROUND_EVERY`th forgets the watermarks).
    rounds: u64,
    /// Secure aggregation in progress (`secagg`).
    secagg: secagg::State,
}

/// Catch-up rounds between two that forget every watermark (see `sync_with_random_peer`).
const FULL_ROUND_EVERY: u64 = 4;
/// Most snapshot fetches in flight from one answer (of 16 each): the connection carries
/// 16 streams at once and the peer answers 120 requests a minute; an answer with more
/// missing keeps its watermark, so the next round asks for the rest.
const MAX_FETCHES_PER_ANSWER: usize = 8;
/// Most refs one `Have` may carry (an announcement is what one fetch of 16 brought).
const MAX_HAVE: usize = 64;

/// Peers whose catch-up watermark is remembered (beyond: forgotten, and the next round
/// with each is a first contact again).
const MAX_WATERMARKS: usize = 4096;

/// Bound of `Task::unwanted` (32 bytes each: 2 MiB).
const MAX_UNWANTED: usize = 65_536;

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut sync_tick = tokio::time::interval(self.options.sync_interval);
        let mut redial_tick = tokio::time::interval(Duration::from_secs(10));
        let mut kad_tick = tokio::time::interval(Duration::from_secs(300));
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    None => break,
                    Some(cmd) => self.command(cmd),
                },
                event = self.swarm.select_next_some() => self.event(event),
                _ = sync_tick.tick() => {
                    self.sync_with_random_peer();
                    self.prune();
                    self.publish_results();
                    self.secagg_tick();
                }
                _ = kad_tick.tick() => {
                    // Refresh the routing table (an error only means no peer is known
                    // yet) and look for members of each community again.
                    let _ = self.swarm.behaviour_mut().kad.bootstrap();
                    self.last_lookup = None;
                    self.announce_and_look_up();
                }
                _ = redial_tick.tick() => {
                    self.dial_bootstrap();
                    self.retry_pending(None);
                }
            }
        }
    }

    /// The arrival log at start: what the store holds in the retention window, oldest
    /// first, under a fresh epoch (so peers' watermarks from before are stale).
    fn load_arrivals(&self) -> Arrivals {
        let now = Self::now();
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_nanos() % u128::from(u64::MAX)).unwrap_or(1));
        let mut held = self
            .store
            .snapshot_refs(now - self.options.retention_secs, now + 86_400, sync::MAX_ARRIVALS)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "reading held snapshots");
                Vec::new()
            });
        held.reverse();
        Arrivals::new(epoch, held)
    }

    /// Forgets snapshots of periods past the retention window.
    fn prune(&mut self) {
        self.arrivals.prune(Self::now() - self.options.retention_secs);
        match self.store.prune_snapshots(Self::now() - self.options.retention_secs) {
            Ok(0) => {}
            Ok(n) => {
                tracing::debug!(snapshots = n, "pruned snapshots past retention");
                self.recount_strangers();
            }
            Err(e) => tracing::warn!(error = %e, "pruning old snapshots"),
        }
        if let Err(e) = self.store.prune_results(Self::now() - self.options.retention_secs) {
            tracing::warn!(error = %e, "pruning old community results");
        }
    }

    /// Which non-member origins' snapshots are held (the open-community intake bounds
    /// them: `validate::MAX_STRANGER_ORIGINS`).
    /// Whether it could (the next refresh tries again if not).
    fn recount_strangers(&mut self) -> bool {
        match self.store.held_origins() {
            Ok(held) => {
                let communities = &self.communities;
                self.strangers
                    .set_held(held.into_iter().filter(|o| !communities.iter().any(|c| c.manifest.is_member(o))));
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the origins held");
                false
            }
        }
    }

    fn now() -> i64 {
        crate::now_unix()
    }

    /// Reloads followed communities from the store, subscribes to their topics, and
    /// queues this node's manifests (as an administrator) for publication.
    fn refresh(&mut self) {
        // What was not wanted under the old communities or manifests may be now: and
        // the watermarks passed such refs, so the next round with each peer starts over.
        self.unwanted.clear();
        self.watermarks.clear();
        let followed = match self.store.followed() {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "reading followed communities");
                return;
            }
        };
        self.communities.clear();
        self.unknown.clear();
        let mut links = Vec::new();
        let by_result = self.store.followed_by_result().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading which communities are followed through links");
            Default::default()
        });
        for (id, follow) in &followed {
            let Ok(Some(m)) = self.store.manifest(id) else {
                self.unknown.push((*id, follow.bootstrap.clone()));
                continue;
            };
            // Through a link only: results, not every member's snapshot.
            let linked_only = by_result.contains(id);
            let mut topics = vec![
                (meta_topic(id), TopicKind::Meta),
                (result_topic(id), TopicKind::Result),
                (secure_topic(id), TopicKind::Secure),
            ];
            if !linked_only {
                topics.push((snapshot_topic(id), TopicKind::Snapshot));
            }
            for (topic, kind) in topics {
                if !self.topics.contains_key(&topic.hash()) {
                    if let Err(e) = self.swarm.behaviour_mut().gossipsub.subscribe(&topic) {
                        tracing::warn!(error = ?e, "subscribing");
                    }
                    behaviour::set_topic_scoring(&mut self.swarm.behaviour_mut().gossipsub, &topic);
                    self.topics.insert(topic.hash(), (*id, kind));
                }
            }
            if m.manifest.admins.contains(&self.me) {
                self.queue(meta_topic(id), m.signed.clone());
            }
            if let Some(sa) = &m.manifest.secure
                && self.on_schedule(&m.manifest.secure).is_none()
            {
                tracing::warn!(
                    community = %short_hex(id),
                    schedule = sa.period_secs,
                    period = self.options.period_secs,
                    "this community's secure aggregation runs on another period than privacy.period_secs: this node takes no part"
                );
            }
            links.extend(m.manifest.links.iter().cloned());
            self.communities.push(Community {
                id: *id,
                manifest: m.manifest,
                member: follow.member,
                by_result: linked_only,
                bootstrap: follow.bootstrap.clone(),
            });
        }
        // Who is a stranger changes only with membership: recount (a scan of every held
        // snapshot's key) when the members differ, not on every refresh.
        let members: std::collections::BTreeSet<NodeId> =
            self.communities.iter().flat_map(|c| c.manifest.members.iter().map(|m| m.node)).collect();
        if self.counted_members.as_ref() != Some(&members) && self.recount_strangers() {
            self.counted_members = Some(members);
        }
        // A community's federation links are followed too, so its federated chart can
        // be computed here.
        let mut added = false;
        for l in links {
            if !followed.iter().any(|(id, _)| *id == l.community) {
                let f = crate::store::values::FollowV1 {
                    member: false,
                    bootstrap: l.bootstrap.clone(),
                    since: Self::now(),
                };
                if self.store.follow(&l.community, &f).is_ok() {
                    self.unknown.push((l.community, l.bootstrap));
                    added = true;
                }
            }
        }
        if added {
            let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
            for p in peers {
                self.catch_up(p);
            }
        }
        self.dial_bootstrap();
    }

    fn bootstrap_addrs(&self) -> Vec<Multiaddr> {
        let mut out = self.options.bootstrap.clone();
        for c in &self.communities {
            let m = &c.manifest;
            for a in m.bootstrap.iter().chain(c.bootstrap.iter()).chain(m.links.iter().flat_map(|l| l.bootstrap.iter()))
            {
                if let Ok(addr) = a.parse::<Multiaddr>() {
                    out.push(addr);
                }
            }
        }
        for (_, addrs) in &self.unknown {
            out.extend(addrs.iter().filter_map(|a| a.parse::<Multiaddr>().ok()));
        }
        out.sort();
        out.dedup();
        out
    }

    fn dial_bootstrap(&mut self) {
        let me = *self.swarm.local_peer_id();
        for addr in self.bootstrap_addrs() {
            let Some(Protocol::P2p(peer)) = addr.iter().last() else { continue };
            if peer == me || self.swarm.is_connected(&peer) || !self.redial.may_dial(peer, Instant::now()) {
                continue;
            }
            self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
            if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::debug!(%addr, error = %e, "dial");
            }
        }
    }

    fn queue(&mut self, topic: IdentTopic, bytes: Vec<u8>) {
        match self.swarm.behaviour_mut().gossipsub.publish(topic.clone(), bytes.clone()) {
            Ok(_) | Err(gossipsub::PublishError::Duplicate) => {}
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) | Err(gossipsub::PublishError::AllQueuesFull(_)) => {
                self.pending.push((topic, bytes, Instant::now()));
            }
            Err(e) => tracing::warn!(error = ?e, "publishing"),
        }
    }

    fn retry_pending(&mut self, topic: Option<&TopicHash>) {
        let pending = std::mem::take(&mut self.pending);
        for (t, bytes, since) in pending {
            if since.elapsed() > Duration::from_secs(3_600) {
                continue;
            }
            if topic.is_some_and(|h| *h != t.hash()) {
                self.pending.push((t, bytes, since));
                continue;
            }
            match self.swarm.behaviour_mut().gossipsub.publish(t.clone(), bytes.clone()) {
                Ok(_) | Err(gossipsub::PublishError::Duplicate) => {}
                Err(_) => self.pending.push((t, bytes, since)),
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::PublishRelease(bytes) => {
                if let Ok((_, s)) = crate::envelope::open_snapshot(&bytes) {
                    self.arrivals.push((s.period_start, s.origin, s.version, *blake3::hash(&bytes).as_bytes()));
                }
                let targets: Vec<CommunityId> = self.communities.iter().filter(|c| c.member).map(|c| c.id).collect();
                for id in targets {
                    self.queue(snapshot_topic(&id), bytes.clone());
                }
            }
            Command::Refresh => self.refresh(),
            Command::Status(reply) => {
                let mut s = self.status.clone();
                s.listen = self.swarm.listeners().map(|a| a.to_string()).collect();
                s.peers = self.swarm.connected_peers().filter_map(|p| self.peers.get(p).cloned()).collect();
                s.peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
                let _ = reply.send(s);
            }
        }
    }

    /// The privacy floors of the followed communities that would count `origin`, among
    /// those named (`None`: any); empty: not wanted.
    fn wanted(&self, origin: &NodeId, named: Option<&[CommunityId]>) -> Vec<Floor> {
        crate::federation::validate::floors_counting(
            self.communities.iter().filter(|c| !c.by_result).map(|c| (&c.id, &c.manifest)),
            origin,
            named,
        )
    }

    /// Validates a snapshot and stores it when accepted (or as evidence of equivocation).
    fn take_snapshot(&mut self, bytes: &[u8]) -> Verdict {
        let now = Self::now();
        let store = self.store.clone();
        let wanted = |o: &NodeId, named: Option<&[CommunityId]>| self.wanted(o, named);
        let held = move |o: &NodeId, p: i64| store.held_versions(p, o).unwrap_or_default();
        let ctx = Context {
            now,
            oldest: now - self.options.retention_secs,
            period_secs: self.options.period_secs,
            wanted: &wanted,
            held: &held,
        };
        let (verdict, valid) = check_snapshot(bytes, &ctx);
        let verdict = match &valid {
            Some(v) => {
                let origin = v.snapshot.origin;
                let member = self.communities.iter().any(|c| c.manifest.is_member(&origin));
                // (A member needs no look-up: the rule does not apply to it.)
                let seen = member || self.store.origin_first_seen(&origin).ok().flatten().is_some();
                self.strangers.check(verdict, &origin, member, seen, now, self.options.period_secs)
            }
            None => verdict,
        };
        let store_it = matches!(verdict, Verdict::Accept | Verdict::Evidence(_));
        if let (true, Some(v)) = (store_it, valid) {
            let stored = self
                .store
                .put_snapshot(v.snapshot.period_start, &v.snapshot.origin, v.snapshot.version, bytes)
                .and_then(|_| self.store.note_origin_seen(&v.snapshot.origin, now));
            if let Err(e) = stored {
                tracing::error!(error = %e, "storing a snapshot");
                return Verdict::Ignore("storage failed".into());
            }
            self.arrivals.push((v.snapshot.period_start, v.snapshot.origin, v.snapshot.version, v.hash));
        }
        match &verdict {
            Verdict::Accept => self.status.accepted += 1,
            Verdict::Ignore(why) => {
                tracing::debug!(reason = %why, "ignored a snapshot");
                // Dated ahead of this clock: either that peer's clock or this one is
                // off. Said at most once an hour.
                if why == crate::federation::validate::FROM_THE_FUTURE
                    && self.skew_warned.is_none_or(|t| t.elapsed() > Duration::from_secs(3_600))
                {
                    self.skew_warned = Some(Instant::now());
                    tracing::warn!(
                        "a peer's release is dated more than 5 minutes ahead of this node's clock: check this clock (NTP)"
                    );
                }
                if crate::federation::validate::not_to_fetch_again(&verdict) {
                    if self.unwanted.len() >= MAX_UNWANTED {
                        self.unwanted.clear();
                    }
                    self.unwanted.insert(*blake3::hash(bytes).as_bytes());
                }
                self.status.ignored += 1
            }
            Verdict::Reject(_) => self.status.rejected += 1,
            Verdict::Evidence(_) => {
                tracing::warn!("an origin equivocated: two snapshots of one version, both kept as evidence");
                self.status.evidence += 1
            }
        }
        verdict
    }

    /// Validates a community result (`federation::result::check`) and keeps it: a member
    /// of the community (who holds its snapshots) recomputes it first, and keeps one that
    /// differs as evidence against its signer, out of its charts. Passed on either way
    /// (relaying an administrator's signed result is no fault).
    fn take_result(&mut self, bytes: &[u8]) -> Verdict {
        let now = Self::now();
        let store = self.store.clone();
        let latest = store.clone();
        let manifest_at = move |id: &CommunityId, v: u32| store.manifest_at(id, v).ok().flatten().map(|m| m.manifest);
        let current = move |id: &CommunityId| latest.manifest(id).ok().flatten().map(|m| m.manifest);
        let ctx = crate::federation::result::Context {
            now,
            oldest: now - self.options.retention_secs,
            period_secs: self.options.period_secs,
            manifest_at: &manifest_at,
            current: &current,
        };
        let valid = match crate::federation::result::check(bytes, &ctx) {
            Ok(v) => v,
            Err(Ok(why)) => {
                self.status.ignored += 1;
                return Verdict::Ignore(why);
            }
            Err(Err(why)) => {
                self.status.rejected += 1;
                return Verdict::Reject(why);
            }
        };
        let r = &valid.result;
        let Some(c) = self.communities.iter().find(|c| c.id == r.community) else {
            return Verdict::Ignore("not a followed community".into());
        };
        let signer = valid.envelope.signer;
        // Before any recomputation: what its signer already has held here for the
        // period (a replay, a re-dated copy or an evidenced signer costs a lookup).
        match self.store.result_held(&r.community, r.period_start, &signer) {
            Ok((_, true)) => return Verdict::Ignore("a wrong result of this signer for this period is held".into()),
            Ok((Some(held), false)) if held >= r.inputs.len() => return Verdict::Ignore("duplicate".into()),
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "reading the community results held");
                return Verdict::Ignore("storage failed".into());
            }
        }
        let verification = if c.member {
            let manifest = (ctx.manifest_at)(&r.community, r.manifest_version);
            match (manifest, self.store.period_state(r.period_start)) {
                (Some(m), Ok(held)) => r.verify(&m, &held),
                _ => crate::federation::result::Verification::Incomplete,
            }
        } else {
            crate::federation::result::Verification::Incomplete
        };
        tracing::debug!(signer = %short_hex(&signer), period = r.period_start, inputs = r.inputs.len(), ?verification, "a community result");
        let stored = if verification == crate::federation::result::Verification::Differs {
            tracing::warn!(
                signer = %short_hex(&signer),
                period = r.period_start,
                "an administrator signed a community result that its members' snapshots do not give: kept as evidence"
            );
            self.status.evidence += 1;
            self.store.put_wrong_result(&signer, r, bytes)
        } else {
            self.store.put_result(&signer, r, bytes)
        };
        match stored {
            Ok(true) => {
                self.status.accepted += 1;
                Verdict::Accept
            }
            Ok(false) => Verdict::Ignore("duplicate".into()),
            Err(e) => {
                tracing::error!(error = %e, "storing a community result");
                Verdict::Ignore("storage failed".into())
            }
        }
    }

    /// As an administrator of a community this node is a member of, merges and signs
    /// its result for each period that ended `result_delay_secs` ago or earlier (in the
    /// retention window, the newest four periods at most), once, and again only when
    /// more members' snapshots have arrived since (so at most once per member).
    fn publish_results(&mut self) {
        let now = Self::now();
        let secs = i64::from(self.options.period_secs.max(1));
        let latest = crate::privacy::accountant::period_of(now - self.options.result_delay_secs - secs, secs);
        let mine: Vec<(CommunityId, ManifestV1)> = self
            .communities
            .iter()
            .filter(|c| c.member && c.manifest.admins.contains(&self.me))
            .map(|c| (c.id, c.manifest.clone()))
            .collect();
        for (id, manifest) in mine {
            for back in 0..4 {
                let period = latest - back * secs;
                if period < now - self.options.retention_secs {
                    break;
                }
                let state = match self.store.period_state(period) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading snapshots for a community result");
                        return;
                    }
                };
                let issued = self.published_results.get(&(id, period)).copied();
                let Some(r) =
                    crate::federation::result::ResultV1::of(&manifest, &state, period, self.options.period_secs, now)
                else {
                    continue;
                };
                if issued.is_some_and(|n| n >= r.inputs.len()) {
                    continue;
                }
                let bytes = self.identity.sign_result(&r);
                match self.store.put_result(&self.me, &r, &bytes) {
                    // Not stored: this node signed one with as many inputs before (a
                    // restart forgot `published_results`); peers would not take it either.
                    Ok(false) => {
                        self.published_results.insert((id, period), r.inputs.len());
                    }
                    Ok(true) => {
                        tracing::debug!(period, inputs = r.inputs.len(), "signed this community's result");
                        self.published_results.insert((id, period), r.inputs.len());
                        self.queue(result_topic(&id), bytes);
                    }
                    Err(e) => tracing::warn!(error = %e, "storing this node's community result"),
                }
            }
        }
        let oldest = latest - 8 * secs;
        self.published_results.retain(|(_, p), _| *p >= oldest);
    }

    /// Validates a manifest for community `id`; stores it when it is the next version.
    /// Returns the verdict and whether versions are missing (to fetch by sync).
    fn take_manifest(&mut self, id: &CommunityId, bytes: &[u8]) -> (Verdict, bool) {
        let (verdict, missing) = self.judge_manifest(id, bytes);
        if let Verdict::Reject(_) = verdict {
            self.status.rejected += 1;
        }
        (verdict, missing)
    }

    fn judge_manifest(&mut self, id: &CommunityId, bytes: &[u8]) -> (Verdict, bool) {
        let new = match open_manifest(bytes) {
            Ok(m) => m,
            Err(ManifestError::UnknownSchema(_)) => return (Verdict::Ignore("unknown manifest schema".into()), false),
            Err(e) => return (Verdict::Reject(e.to_string()), false),
        };
        let current = self.store.manifest(id).ok().flatten();
        if current.as_ref().is_some_and(|c| c.manifest.version >= new.manifest.version) {
            return (self.take_fork(id, &new), false);
        }
        match accept(id, current.as_ref(), &new) {
            Ok(()) => {
                if let Err(e) = self.store.put_manifest(&new) {
                    tracing::error!(error = %e, "storing a manifest");
                    return (Verdict::Ignore("storage failed".into()), false);
                }
                tracing::info!(community = %short_hex(id), version = new.manifest.version, "manifest updated");
                self.refresh();
                (Verdict::Accept, false)
            }
            Err(ManifestError::NotNext { .. }) => (Verdict::Ignore("a version is missing".into()), true),
            Err(ManifestError::WrongCommunity) => (Verdict::Ignore("another community".into()), false),
            // A validly signed next version of another history: after a fork, honest
            // relays carry the other branch's later versions; not their fault.
            Err(ManifestError::WrongPrev) => (Verdict::Ignore("another branch of a forked history".into()), false),
            Err(e) => (Verdict::Reject(e.to_string()), false),
        }
    }

    /// A manifest of a version already held: the same one (ignored), or a **fork**
    /// (`community::is_fork`: a second history signed by an administrator), kept once
    /// per version as evidence, warned about and passed on; never a relay's fault.
    fn take_fork(&mut self, id: &CommunityId, new: &SignedManifest) -> Verdict {
        let v = new.manifest.version;
        let held = self.store.manifest_at(id, v).ok().flatten();
        let parent = self.store.manifest_at(id, v.saturating_sub(1)).ok().flatten();
        let (Some(held), Some(parent)) = (held, parent) else {
            return Verdict::Ignore("not newer".into());
        };
        if !crate::federation::community::is_fork(id, &parent, &held, new) {
            return Verdict::Ignore("not newer".into());
        }
        match self.store.put_manifest_fork(new) {
            Ok(true) => {
                tracing::warn!(
                    community = %short_hex(id),
                    version = v,
                    "the community's administrators signed two different manifests of one version (a fork): kept as evidence, shown on /network"
                );
                self.status.evidence += 1;
                Verdict::Evidence("manifest fork".into())
            }
            Ok(false) => Verdict::Ignore("fork already recorded".into()),
            Err(e) => {
                tracing::error!(error = %e, "storing a manifest fork");
                Verdict::Ignore("storage failed".into())
            }
        }
    }

    fn penalise(&mut self, peer: PeerId, why: &str) {
        let score = self.penalties.entry(peer).or_insert(0.0);
        *score -= 10.0;
        let s = *score;
        self.swarm.behaviour_mut().gossipsub.set_application_score(&peer, s);
        tracing::info!(%peer, reason = why, "peer sent invalid data");
    }

    fn event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                let verdict = match self.topics.get(&message.topic).copied() {
                    None => Verdict::Ignore("not our topic".into()),
                    Some((_, TopicKind::Snapshot)) => self.take_snapshot(&message.data),
                    Some((_, TopicKind::Result)) => self.take_result(&message.data),
                    Some((id, TopicKind::Secure)) => self.take_secure_result(&id, &message.data),
                    Some((id, TopicKind::Meta)) => {
                        let (v, missing) = self.take_manifest(&id, &message.data);
                        if missing {
                            self.request_manifests(propagation_source, id);
                        }
                        v
                    }
                };
                let acceptance = match &verdict {
                    // Evidence is passed on so every node leaves the origin out alike.
                    Verdict::Accept | Verdict::Evidence(_) => MessageAcceptance::Accept,
                    Verdict::Ignore(_) => MessageAcceptance::Ignore,
                    Verdict::Reject(why) => {
                        tracing::info!(peer = %propagation_source, reason = %why, "rejected a gossip message");
                        MessageAcceptance::Reject
                    }
                };
                self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                    &message_id,
                    &propagation_source,
                    acceptance,
                );
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { topic, .. })) => {
                self.retry_pending(Some(&topic));
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                if let Some(p) = self.peers.get_mut(&peer_id) {
                    p.agent = info.agent_version.clone();
                }
                if info.protocols.iter().any(|p| p.as_ref() == behaviour::KAD_PROTOCOL) {
                    // Only addresses as far-reaching as the one the peer was met at go
                    // into the directory others are served from.
                    let remote = self.peer_ips.get(&peer_id).copied().flatten();
                    for addr in info.listen_addrs {
                        if sync::directory_may_serve(&addr, remote) {
                            self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                        }
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders { providers, .. })),
                ..
            })) => {
                let me = *self.swarm.local_peer_id();
                for peer in providers {
                    if peer != me && !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(peer);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::InboundRequest {
                request: kad::InboundRequest::AddProvider { record: Some(record) },
            })) => {
                // Keep provider hints only for communities this node follows.
                let known = self.communities.iter().any(|c| community_dht_key(&c.id) == record.key);
                if known {
                    let _ = kad::store::RecordStore::add_provider(self.swarm.behaviour_mut().kad.store_mut(), record);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    if !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(addr);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::Message { peer, message, .. })) => {
                match message {
                    request_response::Message::Request { request, channel, .. } => {
                        let response = self.answer(peer, request);
                        let _ = self.swarm.behaviour_mut().sync.send_response(channel, response);
                    }
                    request_response::Message::Response { request_id, response } => {
                        self.requests.remove(&request_id);
                        self.on_response(peer, response);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            })) => {
                self.requests.remove(&request_id);
                tracing::debug!(%peer, error = %error, "sync request failed");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Secagg(request_response::Event::Message {
                peer, message, ..
            })) => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let response = if self.allowed(peer) {
                        if self.audits_request_from(&peer) {
                            self.audit_secagg(peer, secagg::ReceivedRef::Request(&request));
                        }
                        self.answer_secagg(peer, request)
                    } else {
                        secagg::SecaggResponse::Error("rate limited".into())
                    };
                    let _ = self.swarm.behaviour_mut().secagg.send_response(channel, response);
                }
                request_response::Message::Response { request_id, response } => {
                    if let Some(pending) = self.secagg.requests.remove(&request_id) {
                        self.audit_secagg(peer, secagg::ReceivedRef::Response(&response));
                        self.on_secagg_response(peer, pending, response);
                    }
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Secagg(request_response::Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            })) => {
                if let Some(pending) = self.secagg.requests.remove(&request_id) {
                    tracing::info!(%peer, error = %error, "secure aggregation request failed");
                    self.secagg_failed(pending);
                }
            }
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, num_established, .. } => {
                self.redial.connected(&peer_id);
                // A relayed connection's address is the relay's, not the peer's.
                let remote = endpoint.get_remote_address();
                if per_ip::key_of(remote) == Some(per_ip::Key::Relayed) {
                    self.peer_ips.insert(peer_id, None);
                } else if let Some(ip) = sync::ip_of(remote) {
                    self.peer_ips.insert(peer_id, Some(ip));
                }
                self.peers.insert(
                    peer_id,
                    PeerStatus {
                        peer_id: peer_id.to_string(),
                        address: endpoint.get_remote_address().to_string(),
                        agent: String::new(),
                    },
                );
                if num_established.get() == 1 {
                    self.catch_up(peer_id);
                    self.announce_and_look_up();
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                self.peer_ips.remove(&peer_id);
                self.peers.remove(&peer_id);
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                tracing::info!(%address, "reachable from outside at this address");
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "p2p listening");
            }
            SwarmEvent::ListenerError { error, .. } => tracing::warn!(error = %error, "p2p listener failed"),
            _ => {}
        }
    }

    /// The refs of a catch-up answer (or a `Have`) from `peer`: fetches from it those
    /// this node wants and lacks.
    fn take_refs(&mut self, peer: PeerId, refs: Vec<Ref>) {
        if refs.len() > MAX_REFS {
            self.penalise(peer, "too many refs");
            return;
        }
        let _ = self.fetch_missing(peer, refs);
    }

    /// Fetches from `peer` what of `refs` this node wants and lacks, at most
    /// `MAX_FETCHES_PER_ANSWER` requests; returns whether that was all of it.
    fn fetch_missing(&mut self, peer: PeerId, refs: Vec<Ref>) -> bool {
        let missing: Vec<Ref> = refs
            .into_iter()
            .filter(|r| !self.wanted(&r.1, None).is_empty() && !self.unwanted.contains(&r.3))
            .filter(|r| self.store.held_versions(r.0, &r.1).map(|h| !h.iter().any(|x| x.1 == r.3)).unwrap_or(false))
            .collect();
        let chunks: Vec<Vec<Ref>> = missing.chunks(MAX_FETCH).map(<[Ref]>::to_vec).collect();
        let all = chunks.len() <= MAX_FETCHES_PER_ANSWER;
        for chunk in chunks.into_iter().take(MAX_FETCHES_PER_ANSWER) {
            self.send(peer, SyncRequest::Snapshots { refs: chunk });
        }
        all
    }

    fn send(&mut self, peer: PeerId, request: SyncRequest) {
        let id = self.swarm.behaviour_mut().sync.send_request(&peer, request);
        self.requests.insert(id, peer);
    }

    /// Announces this node as a member of its communities in the DHT and looks up the
    /// other members (at most every 30 s; the answers are dialled as they come).
    fn announce_and_look_up(&mut self) {
        if self.last_lookup.is_some_and(|t| t.elapsed() < Duration::from_secs(30)) {
            return;
        }
        self.last_lookup = Some(Instant::now());
        let keys: Vec<(kad::RecordKey, bool)> =
            self.communities.iter().map(|c| (community_dht_key(&c.id), c.member)).collect();
        for (key, member) in keys {
            if member {
                let _ = self.swarm.behaviour_mut().kad.start_providing(key.clone());
            }
            self.swarm.behaviour_mut().kad.get_providers(key);
        }
    }

    /// Asks `peer` what it holds for the retention window, and for newer manifests.
    fn catch_up(&mut self, peer: PeerId) {
        if self.communities.is_empty() && self.unknown.is_empty() {
            return;
        }
        let (epoch, after) = self.watermarks.get(&peer).copied().unwrap_or((0, 0));
        self.send(peer, SyncRequest::RefsSince { epoch, after });
        let ids: Vec<CommunityId> =
            self.communities.iter().map(|c| c.id).chain(self.unknown.iter().map(|(id, _)| *id)).collect();
        for id in ids {
            self.request_manifests(peer, id);
        }
        let from = Self::now() - self.options.retention_secs;
        // Communities taken by result, and those it is a member of (to recompute what
        // their administrators signed while this node was away).
        let linked: Vec<CommunityId> =
            self.communities.iter().filter(|c| c.by_result || c.member).map(|c| c.id).collect();
        for community in linked {
            let have = self.store.result_periods(&community, from, sync::MAX_HAVE_RESULTS).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "reading the results held");
                Vec::new()
            });
            self.send(peer, SyncRequest::Results { community, from, have });
        }
    }

    fn request_manifests(&mut self, peer: PeerId, id: CommunityId) {
        let after = self.store.manifest(&id).ok().flatten().map_or(0, |m| m.manifest.version);
        self.send(peer, SyncRequest::Manifests { community: id, after });
    }

    fn sync_with_random_peer(&mut self) {
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        if peers.is_empty() {
            return;
        }
        // Every `FULL_ROUND_EVERY` rounds the watermarks are forgotten, so a round asks
        // for the peer's newest refs again: what a failed fetch or a lost answer
        // skipped comes back within that many rounds (an hour at the default interval).
        self.rounds = self.rounds.wrapping_add(1);
        if self.rounds.is_multiple_of(FULL_ROUND_EVERY) {
            self.watermarks.clear();
        }
        // Round robin over the connected peers. (It was `now % peers`: with a sync
        // interval that the number of peers divides — 900 s and 2, 3, 4, 5 or 6 peers, or
        // 2 s and 2 peers — every round picked the same peer, and the others were never
        // caught up with after the first connection.)
        let pick = usize::try_from(self.rounds % u64::try_from(peers.len()).unwrap_or(1)).unwrap_or(0);
        self.catch_up(peers[pick]);
    }

    /// The per-peer and per-address request limits, shared by every protocol: per
    /// address as well (an IPv6 /64 as one; every relayed peer together), so fresh
    /// PeerIds do not reset the limit.
    fn allowed(&mut self, peer: PeerId) -> bool {
        let (now, per_minute) = (Instant::now(), self.options.max_requests_per_minute);
        let key =
            self.peer_ips.get(&peer).map(|ip| ip.map_or(per_ip::Key::Relayed, |ip| per_ip::Key::Ip(per_ip::mask(ip))));
        let ip_ok = key.is_none_or(|k| self.ip_limits.allow(k, per_minute.saturating_mul(sync::IP_FACTOR), now));
        self.limits.allow(peer, per_minute, now) && ip_ok
    }

    fn answer(&mut self, peer: PeerId, request: SyncRequest) -> SyncResponse {
        if !self.allowed(peer) {
            return SyncResponse::Error("rate limited".into());
        }
        let now = Self::now();
        match request {
            SyncRequest::Refs { from, to } => {
                if to <= from || to - from > self.options.retention_secs + 7 * 86_400 || to > now + 86_400 {
                    return SyncResponse::Error("range too large or in the future".into());
                }
                match self.store.snapshot_refs(from, to, MAX_REFS) {
                    Ok(refs) => SyncResponse::Refs(refs),
                    Err(e) => SyncResponse::Error(format!("store: {e}")),
                }
            }
            SyncRequest::RefsSince { epoch, after } => {
                let (epoch, next, refs) = self.arrivals.since(epoch, after, MAX_REFS);
                let oldest = now - self.options.retention_secs;
                SyncResponse::RefsSince { epoch, next, refs: refs.into_iter().filter(|r| r.0 >= oldest).collect() }
            }
            SyncRequest::Have { refs } => {
                if refs.len() > MAX_HAVE {
                    return SyncResponse::Error(format!("at most {MAX_HAVE} refs"));
                }
                // Fetched from the announcer like the refs of a catch-up answer.
                let oldest = now - self.options.retention_secs;
                self.fetch_missing(peer, refs.into_iter().filter(|r| r.0 >= oldest).collect());
                SyncResponse::Noted
            }
            SyncRequest::Snapshots { refs } => {
                if refs.len() > MAX_FETCH {
                    return SyncResponse::Error(format!("at most {MAX_FETCH} snapshots per request"));
                }
                let mut out = Vec::new();
                for r in refs {
                    if let Ok(Some(b)) = self.store.snapshot_bytes(&r) {
                        out.push(serde_bytes::ByteBuf::from(b));
                    }
                }
                SyncResponse::Snapshots(out)
            }
            SyncRequest::Results { community, from, have } => {
                if have.len() > sync::MAX_HAVE_RESULTS {
                    return SyncResponse::Error(format!("at most {} periods held", sync::MAX_HAVE_RESULTS));
                }
                let have: HashMap<i64, u32> = have.into_iter().collect();
                match self.store.results_since(&community, from, &have, sync::MAX_RESULTS) {
                    Ok(list) => SyncResponse::Results(list.into_iter().map(serde_bytes::ByteBuf::from).collect()),
                    Err(e) => SyncResponse::Error(format!("store: {e}")),
                }
            }
            SyncRequest::Manifests { community, after } => {
                match self.store.manifests_after(&community, after, MAX_MANIFESTS) {
                    Ok(list) => SyncResponse::Manifests(list.into_iter().map(serde_bytes::ByteBuf::from).collect()),
                    Err(e) => SyncResponse::Error(format!("store: {e}")),
                }
            }
        }
    }

    fn on_response(&mut self, peer: PeerId, response: SyncResponse) {
        match response {
            SyncResponse::Refs(refs) => self.take_refs(peer, refs),
            SyncResponse::RefsSince { epoch, next, refs } => {
                if refs.len() > MAX_REFS {
                    self.penalise(peer, "too many refs");
                    return;
                }
                // The watermark moves only when every missing ref is being fetched.
                if self.fetch_missing(peer, refs) {
                    if self.watermarks.len() >= MAX_WATERMARKS && !self.watermarks.contains_key(&peer) {
                        self.watermarks.clear();
                    }
                    self.watermarks.insert(peer, (epoch, next));
                }
            }
            SyncResponse::Noted => {}
            SyncResponse::Snapshots(list) => {
                if list.len() > MAX_FETCH {
                    self.penalise(peer, "too many snapshots");
                    return;
                }
                let mark = self.arrivals.head();
                for b in list {
                    // Relaying evidence of someone else's equivocation is no fault
                    // (`Verdict::Evidence`, not a rejection).
                    if let Verdict::Reject(why) = self.take_snapshot(&b) {
                        self.penalise(peer, &why);
                    }
                }
                // What catch-up brought, the other peers may lack too (gossip passed it
                // by them, or they were cut off): announce it (`Have`).
                let taken = self.arrivals.after(mark);
                if !taken.is_empty() {
                    let others: Vec<PeerId> = self.swarm.connected_peers().copied().filter(|p| *p != peer).collect();
                    for other in others {
                        self.send(other, SyncRequest::Have { refs: taken.clone() });
                    }
                }
            }
            SyncResponse::Manifests(list) => {
                for b in list.into_iter().take(MAX_MANIFESTS) {
                    // Which community first (no signature checked), so another
                    // community's manifests cost nothing; a later schema than this
                    // build knows is skipped, as on gossip, never the sender's fault.
                    let id = match crate::federation::community::peek_community(&b) {
                        Ok(id) => id,
                        Err(ManifestError::UnknownSchema(_)) => continue,
                        Err(_) => {
                            self.penalise(peer, "invalid manifest");
                            break;
                        }
                    };
                    if !self.communities.iter().any(|c| c.id == id) && !self.unknown.iter().any(|(c, _)| *c == id) {
                        continue;
                    }
                    if let (Verdict::Reject(why), _) = self.take_manifest(&id, &b) {
                        self.penalise(peer, &why);
                        break;
                    }
                }
            }
            SyncResponse::Results(list) => {
                if list.len() > sync::MAX_RESULTS {
                    self.penalise(peer, "too many results");
                    return;
                }
                for b in list {
                    if let Verdict::Reject(why) = self.take_result(&b) {
                        self.penalise(peer, &why);
                        break;
                    }
                }
            }
            SyncResponse::Error(e) => tracing::debug!(%peer, error = %e, "sync refused"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ticks every 10 s for two hours against a peer that never answers: dialled ever
    /// less often, at most every 10 minutes, and at once again after a connection.
    #[test]
    fn an_unanswering_bootstrap_peer_is_redialled_ever_less_often() {
        let peer = PeerId::random();
        let mut redial = Redial::default();
        let start = Instant::now();
        let dials: Vec<u64> = (0..720u64)
            .map(|tick| tick * 10)
            .filter(|t| redial.may_dial(peer, start + Duration::from_secs(*t)))
            .collect();
        assert!(dials.len() < 25, "{} dials in two hours (720 without backoff): {dials:?}", dials.len());
        let gaps: Vec<u64> = dials.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.windows(2).all(|g| g[0] <= g[1]), "gaps grow: {gaps:?}");
        assert!(gaps.iter().all(|g| *g <= 610), "at most every 10 minutes: {gaps:?}");
        redial.connected(&peer);
        assert!(redial.may_dial(peer, start + Duration::from_secs(7_205)), "a connection resets the backoff");
    }
}
