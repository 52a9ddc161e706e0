//! Federation with the real binary over libp2p on 127.0.0.1: nodes A and B form
//! community X, node C community Y, X links Y. Users at every sharing level scrobble
//! through the ListenBrainz API; after the (4-second) period closes every node shows
//! the same community and federated charts, equal to the merge of the published
//! snapshots; a late joiner catches up; a restarted node keeps its state.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::privacy::{SHORT_PERIODS, fresh_period, release_of, submit, user_with_token};
use crate::support::{NodeProcess, bin, free_port};

pub(crate) struct Peer {
    pub(crate) data: PathBuf,
    port: u16,
    pub(crate) id: String,
    pub(crate) extra: Vec<(String, String)>,
}

impl Peer {
    pub(crate) fn new(dir: &Path, name: &str) -> Peer {
        let data = dir.join(name);
        let port = free_port();
        let mut p = Peer { data, port, id: String::new(), extra: Vec::new() };
        p.id = p.cli(&["node", "id"]).trim().to_owned();
        p
    }

    fn listen(&self) -> String {
        format!("[\"/ip4/127.0.0.1/tcp/{}\"]", self.port)
    }

    /// Where the running node is dialled: its TCP listen address with its PeerId.
    pub(crate) fn address(&self) -> libp2p::Multiaddr {
        format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", self.port, self.id).parse().expect("multiaddr")
    }

    fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> =
            SHORT_PERIODS.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        env.push(("HEARSAY_P2P__LISTEN".into(), self.listen()));
        env.push(("HEARSAY_P2P__SYNC_INTERVAL_SECS".into(), "2".into()));
        env.extend(self.extra.iter().cloned());
        // A log filter for the nodes when debugging a test (e.g. `hearsay::p2p=info`).
        if let Ok(filter) = std::env::var("HEARSAY_TEST_NODE_LOG") {
            env.push(("HEARSAY_NODE__LOG".into(), filter));
        }
        env
    }

    pub(crate) fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(bin())
            .args(args)
            .env("HEARSAY_NODE__DATA_DIR", &self.data)
            .env("HEARSAY_NODE__LOG", "warn")
            .env("HEARSAY_P2P__LISTEN", self.listen())
            .stdin(Stdio::null())
            .output()
            .expect("run hearsay");
        assert!(out.status.success(), "hearsay {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command, whatever its outcome.
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin())
            .args(args)
            .env("HEARSAY_NODE__DATA_DIR", &self.data)
            .env("HEARSAY_NODE__LOG", "warn")
            .env("HEARSAY_P2P__LISTEN", self.listen())
            .stdin(Stdio::null())
            .output()
            .expect("run hearsay")
    }

    pub(crate) fn start(&self) -> NodeProcess {
        let env = self.env();
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        NodeProcess::start_with(&self.data, &pairs)
    }
}

/// The privacy floor of a test community whose members release every 4 seconds: floors
/// hold per week, and a week holds 151,200 such releases.
pub(crate) const SHORT_PERIOD_FLOOR: [&str; 6] = ["--max-epsilon-week", "1e9", "--max-delta-week", "1", "--min-k", "2"];

pub(crate) fn network(url: &str, period: i64) -> Value {
    let body =
        ureq::get(&format!("{url}/api/network?period={period}")).call().expect("network").into_string().expect("body");
    serde_json::from_str(&body).expect("json")
}

pub(crate) fn community<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v["communities"].as_array()?.iter().find(|c| c["name"] == name)
}

/// Polls until `f` holds for the node's network view, or fails with the last view.
fn wait_for(url: &str, period: i64, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let v = network(url, period);
        if f(&v) {
            return v;
        }
        if Instant::now() > deadline {
            panic!("{what}: not reached at {url}: {v:#}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn origins(v: &Value, name: &str, which: &str) -> i64 {
    community(v, name).and_then(|c| c[which]["origins"].as_i64()).unwrap_or(-1)
}

#[test]
fn three_nodes_two_communities_a_link_a_late_joiner_and_a_restart_agree_on_the_charts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut a, mut b, c, d) = (
        Peer::new(dir.path(), "a"),
        Peer::new(dir.path(), "b"),
        Peer::new(dir.path(), "c"),
        Peer::new(dir.path(), "d"),
    );
    // A and B declare their addresses, so they serve the DHT where members announce
    // themselves (with an address others can dial).
    for p in [&mut a, &mut b] {
        let external = format!("[\"/ip4/127.0.0.1/tcp/{}\"]", p.port);
        p.extra.push(("HEARSAY_P2P__EXTERNAL".into(), external));
    }

    // X: A administers, B is admitted. Y: C administers. X links Y at weight 0.5.
    // The test's loose privacy parameters (to publish anything from a few users) are
    // below the default floor, so these communities set a floor that admits them.
    let floor = SHORT_PERIOD_FLOOR;
    a.cli(&[&["community", "create", "X"][..], &floor].concat());
    let ticket_b = a.cli(&["community", "invite", "X", "--node", &b.id]);
    b.cli(&["community", "join", ticket_b.trim()]);
    c.cli(&[&["community", "create", "Y"][..], &floor].concat());
    let ticket_y = c.cli(&["community", "invite", "Y"]);
    a.cli(&["community", "link", "X", ticket_y.trim(), "--weight", "0.5"]);
    let ticket_x = a.cli(&["community", "invite", "X"]);
    d.cli(&["community", "follow", ticket_x.trim()]);

    // Users at every level on A, B and C.
    let mut tokens = Vec::new();
    for (p, tag) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        let t = |name: &str, level: &str| user_with_token(&p.data, dir.path(), &format!("{tag}{name}"), level);
        tokens.push((
            tag,
            t("pub", "public"),
            t("priv", "private"),
            vec![t("agg1", "aggregate"), t("agg2", "aggregate")],
        ));
    }
    let (na, nb, nc) = (a.start(), b.start(), c.start());
    let urls = [na.url.clone(), nb.url.clone(), nc.url.clone()];

    let p = fresh_period();
    for ((tag, public, private, aggregate), url) in tokens.iter().zip(&urls) {
        let open = format!("Open {tag}");
        submit(url, public, &[(&open, "One", p), (&open, "Two", p + 1), ("Shared Artist", "Hit", p)]);
        submit(url, private, &[("Hidden Zq", "Secret", p), ("Shared Artist", "Hit", p)]);
        for t in aggregate {
            submit(url, t, &[("Shared Artist", "Hit", p), ("Shared Artist", "Other", p + 1)]);
        }
    }
    let releases: Vec<Vec<u8>> = urls.iter().map(|u| release_of(u, p, Duration::from_secs(20))).collect();

    // Every node converges: X has 2 origins, Y has 1, X's federated chart 3.
    let va = wait_for(&na.url, p, "A sees X, Y and the federated chart", |v| {
        origins(v, "X", "chart") == 2 && origins(v, "Y", "chart") == 1 && origins(v, "X", "federated") == 3
    });
    let vb = wait_for(&nb.url, p, "B sees the same", |v| {
        origins(v, "X", "chart") == 2 && origins(v, "Y", "chart") == 1 && origins(v, "X", "federated") == 3
    });
    let vc = wait_for(&nc.url, p, "C sees Y", |v| origins(v, "Y", "chart") == 1);
    for name in ["X", "Y"] {
        assert_eq!(community(&va, name).map(|c| &c["chart"]), community(&vb, name).map(|c| &c["chart"]), "{name}");
    }
    assert_eq!(community(&va, "X").map(|c| &c["federated"]), community(&vb, "X").map(|c| &c["federated"]));
    assert_eq!(community(&va, "Y").map(|c| &c["chart"]), community(&vc, "Y").map(|c| &c["chart"]));

    // The charts are the merge of the published snapshots: recompute X's from the
    // bytes A and B published.
    let key = |id: &str| hearsay::p2p::node_of(&id.parse().expect("peer id")).expect("ed25519");
    let mut manifest = hearsay::federation::community::ManifestV1::genesis("X", key(&a.id), 0);
    manifest.members = [key(&a.id), key(&b.id)]
        .into_iter()
        .map(|node| hearsay::federation::community::Member { node, weight_milli: 1000 })
        .collect();
    manifest.members.sort_by_key(|m| m.node);
    // X's id: the community both A's and B's releases name (a snapshot counts only for
    // the communities it names).
    let named = |b: &Vec<u8>| hearsay::envelope::open_snapshot(b).expect("verifies").1.communities;
    let (na_ids, nb_ids) = (named(&releases[0]), named(&releases[1]));
    let x_ids: Vec<_> = na_ids.iter().filter(|id| nb_ids.contains(id)).collect();
    assert_eq!(x_ids.len(), 1, "A and B share one community: {na_ids:?} {nb_ids:?}");
    manifest.genesis = Some(*x_ids[0]);
    manifest.floor = hearsay::privacy::params::Floor {
        max_eps_week_milli: 1_000_000_000_000,
        max_delta_week_pico: 1_000_000_000_000,
        min_k: 2,
    };
    let mut state = hearsay::federation::merge::PeriodState::default();
    for bytes in &releases[..2] {
        let (_, s) = hearsay::envelope::open_snapshot(bytes).expect("verifies");
        state.insert(hearsay::federation::merge::Held {
            version: s.version,
            hash: *blake3::hash(bytes).as_bytes(),
            snapshot: s,
        });
    }
    let expected = hearsay::federation::merge::community_chart(&manifest, &state, |_| 0);
    assert_eq!(community(&va, "X").expect("X")["chart"], serde_json::to_value(&expected).expect("json"));
    // Public sections are exact: A's public user's artist has 1 listener, 2 listens.
    let open_a = expected.artists.iter().find(|r| r.name.artist == "Open a").expect("public artist");
    assert_eq!((open_a.listeners, open_a.listens, open_a.origins), (1, 2, 1));
    // A and B are no members of Y: they take Y's chart as the result C (Y's
    // administrator) merged and signed, not C's snapshot; C computes it from snapshots.
    let short = |id: &str| hearsay::federation::short_hex(&key(id));
    for v in [&va, &vb] {
        assert_eq!(community(v, "Y").expect("Y")["merged_by"], short(&c.id).as_str(), "{v}");
    }
    assert_eq!(community(&vc, "Y").expect("Y")["merged_by"], Value::Null);
    // X's federated chart is X's origins plus half of Y's result.
    let y_chart: hearsay::federation::merge::Chart =
        serde_json::from_value(community(&vc, "Y").expect("Y")["chart"].clone()).expect("chart");
    let y_inputs = [key(&c.id)];
    let linked = hearsay::federation::merge::Linked { weight_milli: 500, inputs: &y_inputs, chart: &y_chart };
    let federated = hearsay::federation::merge::federated_chart(&manifest, &[], &[linked], &state, |_| 0);
    assert_eq!(community(&va, "X").expect("X")["federated"], serde_json::to_value(&federated).expect("json"));
    let shared = federated.artists.iter().find(|r| r.name.artist == "Shared Artist").expect("shared");
    assert_eq!(shared.origins, 3, "A, B and, through Y's result, C");
    // The page picks other periods (it showed only the newest before).
    let page = ureq::get(&format!("{}/network?period={p}", na.url)).call().expect("page").into_string().expect("body");
    assert!(page.contains(&format!("/network?period={}", p - 4)), "a link to the earlier period");
    // Nothing of the private users anywhere.
    for v in [&va, &vb, &vc] {
        assert!(!v.to_string().contains("Hidden Zq"));
    }

    // A late joiner that only follows X catches up to the same charts.
    let nd = d.start();
    let vd =
        wait_for(&nd.url, p, "D catches up", |v| origins(v, "X", "chart") == 2 && origins(v, "X", "federated") == 3);
    assert_eq!(community(&vd, "X").map(|c| &c["chart"]), community(&va, "X").map(|c| &c["chart"]));
    assert_eq!(community(&vd, "X").map(|c| &c["federated"]), community(&va, "X").map(|c| &c["federated"]));
    // D's ticket only named A; it found B, a member, through the DHT and connected.
    wait_for(&nd.url, p, "D finds B through the DHT", |v| {
        v["p2p"]["peers"].as_array().is_some_and(|ps| ps.iter().any(|x| x["peer_id"] == b.id.as_str()))
    });

    // A restarted node keeps its state.
    assert_eq!(nb.terminate(), Some(0));
    let nb = b.start();
    let after = network(&nb.url, p);
    assert_eq!(community(&after, "X").map(|c| &c["chart"]), community(&vb, "X").map(|c| &c["chart"]));
    assert_eq!(community(&after, "X").map(|c| &c["federated"]), community(&vb, "X").map(|c| &c["federated"]));
    drop((na, nb, nc, nd));
    // A never took a snapshot of C's (Y's members' snapshots travel only in Y).
    let store = hearsay::store::Store::open(&a.data, &hearsay::store::Options::default()).expect("open A");
    let held = store.period_state(p).expect("held");
    assert!(held.by_origin.contains_key(&key(&b.id)), "B's snapshot is held");
    assert!(!held.by_origin.contains_key(&key(&c.id)), "C's snapshot is not");
}

/// A misbehaving peer built from the same libp2p behaviour: it connects to a member,
/// publishes bad snapshots and manifests over gossip, serves bad snapshots when asked
/// for catch-up, and makes absurd and flooding sync requests.
pub(crate) mod rogue {
    use std::time::Duration;

    use futures::StreamExt;
    use hearsay::p2p::behaviour::{Behaviour, BehaviourEvent, Options, build};
    use hearsay::p2p::sync::{SyncRequest, SyncResponse};
    use libp2p::gossipsub::{self, IdentTopic};
    use libp2p::request_response;
    use libp2p::swarm::SwarmEvent;
    use libp2p::{Multiaddr, Swarm};

    /// Runs `run` on a thread of its own until the returned flag is set.
    pub fn spawn(
        victim: Multiaddr,
        community_short: &str,
        bad: Bad,
    ) -> (std::sync::Arc<std::sync::atomic::AtomicBool>, std::thread::JoinHandle<Report>) {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, community) = (stop.clone(), community_short.to_owned());
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(run(victim, &community, bad, flag))
        });
        (stop, handle)
    }

    #[derive(Clone)]
    pub struct Bad {
        /// Sent over gossip on the snapshot topic.
        pub gossip: Vec<Vec<u8>>,
        /// Sent over gossip on the meta topic.
        pub manifests: Vec<Vec<u8>>,
        /// Sent over gossip on the result topic (again every second).
        pub results: Vec<Vec<u8>>,
        /// Served to the victim's catch-up requests, claimed as `origin`'s.
        pub served: Vec<Vec<u8>>,
        pub origin: [u8; 32],
        pub period: i64,
        /// Answer the victim's catch-up with garbage (which gets this peer graylisted,
        /// so its later gossip is dropped unseen) rather than with nothing.
        pub hostile_sync: bool,
    }

    impl Bad {
        /// Only these manifests, over gossip on the meta topic.
        pub fn manifests(manifests: Vec<Vec<u8>>) -> Bad {
            Bad {
                gossip: vec![],
                manifests,
                results: vec![],
                served: vec![],
                origin: [0; 32],
                period: 0,
                hostile_sync: false,
            }
        }

        /// Only these community results, over gossip on the result topic.
        pub fn results(results: Vec<Vec<u8>>) -> Bad {
            Bad { results, ..Bad::manifests(vec![]) }
        }
    }

    #[derive(Debug, Default)]
    pub struct Report {
        pub range_refused: bool,
        pub rate_limited: usize,
        pub served_requests: usize,
    }

    pub fn swarm() -> Swarm<Behaviour> {
        swarm_with(libp2p::identity::Keypair::generate_ed25519())
    }

    /// A swarm of the node's own behaviour under `key`.
    pub fn swarm_with(key: libp2p::identity::Keypair) -> Swarm<Behaviour> {
        build(
            key,
            &Options {
                max_connections: 256,
                max_connections_per_ip: 16,
                max_memory_bytes: usize::MAX,
                mdns: false,
                relay_server: false,
                autonat: false,
                heartbeat: Duration::from_millis(200),
            },
        )
        .expect("swarm")
    }

    /// Misbehaves until `stop` is set (the test sets it once the victim has answered
    /// every bad message) or for at most 60 s.
    pub async fn run(
        victim: Multiaddr,
        community_short: &str,
        bad: Bad,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> Report {
        let mut s = swarm();
        let snapshot_topic = IdentTopic::new(format!("/hearsay/1/c/{community_short}/snapshot"));
        let meta_topic = IdentTopic::new(format!("/hearsay/1/c/{community_short}/meta"));
        let result_topic = IdentTopic::new(format!("/hearsay/1/c/{community_short}/result"));
        s.behaviour_mut().gossipsub.subscribe(&result_topic).expect("subscribe");
        s.behaviour_mut().gossipsub.subscribe(&snapshot_topic).expect("subscribe");
        s.behaviour_mut().gossipsub.subscribe(&meta_topic).expect("subscribe");
        s.dial(victim).expect("dial");
        let mut report = Report::default();
        let mut published = false;
        let mut flood_sent = false;
        let refs: Vec<_> =
            bad.served.iter().map(|b| (bad.period, bad.origin, 1u16, *blake3::hash(b).as_bytes())).collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut victim_peer = None;
        let mut again = tokio::time::interval(Duration::from_secs(1));
        loop {
            let event = tokio::select! {
                e = s.select_next_some() => e,
                _ = again.tick() => {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    // Re-publish in case the first attempt raced the mesh (identical
                    // bytes are dropped as duplicates by the victim's cache anyway).
                    if published {
                        for b in &bad.gossip {
                            let _ = s.behaviour_mut().gossipsub.publish(snapshot_topic.clone(), b.clone());
                        }
                        for b in &bad.results {
                            let _ = s.behaviour_mut().gossipsub.publish(result_topic.clone(), b.clone());
                        }
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(deadline) => break,
            };
            match event {
                SwarmEvent::ConnectionEstablished { peer_id, .. } => victim_peer = Some(peer_id),
                SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { topic, .. }))
                    if topic == snapshot_topic.hash() && !published =>
                {
                    published = true;
                    for b in &bad.gossip {
                        let _ = s.behaviour_mut().gossipsub.publish(snapshot_topic.clone(), b.clone());
                    }
                    for b in &bad.manifests {
                        let _ = s.behaviour_mut().gossipsub.publish(meta_topic.clone(), b.clone());
                    }
                    if let (Some(p), false) = (victim_peer, flood_sent) {
                        flood_sent = true;
                        s.behaviour_mut().sync.send_request(&p, SyncRequest::Refs { from: 0, to: i64::MAX });
                        for _ in 0..15 {
                            s.behaviour_mut()
                                .sync
                                .send_request(&p, SyncRequest::Refs { from: bad.period, to: bad.period + 1 });
                        }
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::Message { message, .. })) => {
                    match message {
                        request_response::Message::Request { request, channel, .. } => {
                            let response = match request {
                                SyncRequest::Refs { .. } => SyncResponse::Refs(refs.clone()),
                                SyncRequest::RefsSince { .. } => {
                                    SyncResponse::RefsSince { epoch: 1, next: 1, refs: refs.clone() }
                                }
                                SyncRequest::Have { .. } => SyncResponse::Noted,
                                SyncRequest::Snapshots { .. } => {
                                    report.served_requests += 1;
                                    SyncResponse::Snapshots(
                                        bad.served.iter().cloned().map(serde_bytes::ByteBuf::from).collect(),
                                    )
                                }
                                SyncRequest::Manifests { .. } if bad.hostile_sync => {
                                    SyncResponse::Manifests(vec![serde_bytes::ByteBuf::from(
                                        b"not a manifest".to_vec(),
                                    )])
                                }
                                SyncRequest::Manifests { .. } => SyncResponse::Manifests(Vec::new()),
                                SyncRequest::Results { .. } => SyncResponse::Results(Vec::new()),
                            };
                            let _ = s.behaviour_mut().sync.send_response(channel, response);
                        }
                        request_response::Message::Response { response: SyncResponse::Error(e), .. } => {
                            if e.contains("range") {
                                report.range_refused = true;
                            }
                            if e.contains("rate limited") {
                                report.rate_limited += 1;
                            }
                        }
                        request_response::Message::Response { .. } => {}
                    }
                }
                _ => {}
            }
        }
        report
    }
}

/// Bad input from a peer: each case rejected or ignored as documented, nothing stored,
/// the chart unchanged, the node serving; then equivocation: kept as evidence (the relay not penalised),
/// and the equivocating origin left out of that period (the documented rule).
#[test]
fn a_rogue_peer_is_refused_and_changes_no_chart() {
    use hearsay::envelope::SignedV1;
    use hearsay::identity::NodeIdentity;
    use hearsay::privacy::params::{Budget, Params, Spend};
    use hearsay::privacy::release::{Period, UserPeriod, release};
    use hearsay::privacy::snapshot::ItemName;

    let dir = tempfile::tempdir().expect("tempdir");
    let (mut a, b) = (Peer::new(dir.path(), "a"), Peer::new(dir.path(), "b"));
    a.extra.push(("HEARSAY_P2P__MAX_REQUESTS_PER_MINUTE".into(), "12".into()));
    let floor = SHORT_PERIOD_FLOOR;
    let x = a.cli(&[&["community", "create", "X"][..], &floor].concat()).trim().to_owned();
    let ticket = a.cli(&["community", "invite", "X", "--node", &b.id]);
    b.cli(&["community", "join", ticket.trim()]);
    let (ta, tb) = (
        user_with_token(&a.data, dir.path(), "apub", "public"),
        user_with_token(&b.data, dir.path(), "bpub", "public"),
    );
    let (na, nb) = (a.start(), b.start());
    let p = fresh_period();
    submit(&na.url, &ta, &[("Honest A", "Song", p)]);
    submit(&nb.url, &tb, &[("Honest B", "Song", p)]);
    let b_release = release_of(&nb.url, p, Duration::from_secs(20));
    let before = wait_for(&na.url, p, "A counts A and B", |v| origins(v, "X", "chart") == 2);
    let counters = |v: &Value| (v["p2p"]["accepted"].as_i64().unwrap_or(0), v["p2p"]["rejected"].as_i64().unwrap_or(0));
    let (accepted0, rejected0) = counters(&before);
    let counted_at = std::time::Instant::now();

    // The bad inputs.
    let b_key = NodeIdentity::load_or_create(&b.data).expect("b key");
    let rogue_dir = tempfile::tempdir().expect("tempdir");
    let rogue_key = NodeIdentity::load_or_create(rogue_dir.path()).expect("rogue key");
    let make = |signer: &NodeIdentity, origin: [u8; 32], artist: &str| -> Vec<u8> {
        let users = [UserPeriod {
            user: 1,
            level: hearsay::privacy::SharingLevel::Public,
            artists: vec![(ItemName::artist(artist), 99)],
            tracks: vec![(ItemName::track(artist, "x"), 99)],
        }];
        let params =
            Params { eps_listeners_milli: 50_000, eps_listens_milli: 50_000, k: 2, l0: 3, ..Params::default() };
        let roomy = Spend { eps_milli: 1_000_000, delta_pico: 1_000_000 };
        let budget = Budget { week: roomy, year: roomy };
        let communities = hearsay::envelope::open_snapshot(&b_release).expect("B's release").1.communities;
        let period = Period { origin, start: p, secs: 4, issued_at: p + 5, communities };
        let r = release(period, &users, &params, budget, Default::default(), &[0; 32], &mut hearsay::publish::OsRandom)
            .expect("release");
        signer.sign_snapshot(&r.snapshot)
    };
    let non_member = make(&rogue_key, rogue_key.public_key(), "Rogue Band");
    let mut tampered = b_release.clone();
    let at = tampered.len() - 70;
    tampered[at] ^= 0x01;
    let truncated = b_release[..b_release.len() - 9].to_vec();
    let mut forged_env: SignedV1 = postcard::from_bytes(&make(&rogue_key, b_key.public_key(), "Forged")).expect("env");
    forged_env.signer = b_key.public_key();
    let forged = postcard::to_allocvec(&forged_env).expect("encode");
    let oversized = vec![0x42u8; 70_000];
    let bad = rogue::Bad {
        gossip: vec![non_member, tampered.clone(), truncated.clone(), forged.clone(), b_release.clone()],
        manifests: vec![b"garbage manifest".to_vec()],
        results: vec![],
        served: vec![oversized, tampered, truncated, forged],
        origin: b_key.public_key(),
        period: p,
        hostile_sync: true,
    };
    let victim: libp2p::Multiaddr = format!("/ip4/127.0.0.1/tcp/{}", a.port).parse().expect("addr");
    // The rogue misbehaves until the victim has refused its messages (a loaded machine,
    // such as CI's two cores running other tests, can take seconds), at most a minute.
    // If nothing is refused within 30 s, the rogue comes back on a fresh connection
    // (new key) once: a fresh connection starts a catch-up, which fetches its served
    // snapshots. (CI saw "rejected 0 -> 0" once in a full run on two loaded cores, the
    // rogue's connection and sync requests having worked; the cause is not known yet.)
    let (mut stop, mut rogue) = rogue::spawn(victim.clone(), &x, bad.clone());
    let started = std::time::Instant::now();
    let mut retried = false;
    let mut after = network(&na.url, p);
    while counters(&after).1 < rejected0 + 4 && started.elapsed() < std::time::Duration::from_secs(85) {
        std::thread::sleep(std::time::Duration::from_millis(300));
        after = network(&na.url, p);
        if !retried && started.elapsed() > std::time::Duration::from_secs(30) && counters(&after).1 == rejected0 {
            retried = true;
            eprintln!("the rogue peer was refused nothing in 30 s: once more on a fresh connection");
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = rogue.join();
            (stop, rogue) = rogue::spawn(victim.clone(), &x, bad.clone());
        }
    }
    // Let the flood of sync requests be answered too.
    std::thread::sleep(std::time::Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let report = rogue.join().expect("rogue");
    assert!(report.range_refused, "an absurd range is refused: {report:?}");
    assert!(report.rate_limited > 0, "a flood is rate limited: {report:?}");
    after = network(&na.url, p);
    let (accepted1, rejected1) = counters(&after);
    // B keeps releasing one snapshot every 4-second period (a release is made every
    // period, whatever the activity), which A accepts; nothing else may be. The bad
    // inputs are checked by what they would change: period p's chart and names below.
    let honest = i64::try_from(counted_at.elapsed().as_secs() / 4 + 3).unwrap_or(i64::MAX);
    assert!(
        accepted1 - accepted0 <= honest,
        "accepted {accepted0} -> {accepted1}, more than B's {honest} honest periods"
    );
    assert!(rejected1 >= rejected0 + 4, "rejected {rejected0} -> {rejected1}");
    assert_eq!(
        community(&after, "X").map(|c| &c["chart"]),
        community(&before, "X").map(|c| &c["chart"]),
        "no chart changed"
    );
    assert!(!after.to_string().contains("Rogue Band") && !after.to_string().contains("Forged"));
    ureq::get(&format!("{}/health", na.url)).call().expect("the node keeps serving");

    // Equivocation: B's key signs a second, different snapshot of the same period.
    let equivocation = make(&b_key, b_key.public_key(), "Second Story");
    let equivocation_hash = *blake3::hash(&equivocation).as_bytes();
    let bad = rogue::Bad {
        gossip: vec![equivocation],
        manifests: vec![],
        results: vec![],
        served: vec![],
        origin: b_key.public_key(),
        period: p,
        hostile_sync: false,
    };
    let (stop, rogue) = rogue::spawn(victim.clone(), &x, bad);
    let v = wait_for(&na.url, p, "the equivocating origin is left out", |v| origins(v, "X", "chart") == 1);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    rogue.join().expect("rogue");
    // Kept as evidence, not rejected: the rogue only relayed what B's key signed, and a
    // relay of evidence is never penalised.
    assert!(v["p2p"]["evidence"].as_i64().unwrap_or(0) >= 1, "equivocation is kept as evidence: {}", v["p2p"]);
    assert_eq!(counters(&v).1, rejected1, "relaying evidence is not a rejection");
    assert!(!v.to_string().contains("Second Story"));
    drop((na, nb));
    // What A holds for period p: nothing from the rogue's key; for B's origin, B's own
    // release and the equivocating one kept as evidence (it excludes B), nothing else.
    let store = hearsay::store::Store::open(&a.data, &Default::default()).expect("open A");
    assert!(store.held_versions(p, &rogue_key.public_key()).expect("read").is_empty(), "a non-member was stored");
    let honest_hash = *blake3::hash(&b_release).as_bytes();
    let held_b = store.held_versions(p, &b_key.public_key()).expect("read");
    assert!(held_b.iter().any(|(_, h)| *h == honest_hash), "B's release is held");
    assert!(
        held_b.iter().all(|(_, h)| *h == honest_hash || *h == equivocation_hash),
        "a tampered, truncated or forged snapshot was stored: {held_b:?}"
    );
}

/// A lying member against a running node: a member's key signs a snapshot claiming a
/// million listeners (and listens at the i64 limit) for an artist and for the honest
/// member's artist. The community chart counts the liar at most the per-origin cap
/// (`merge::MIN_ORIGIN_CAP`, 16 here: 4 × the median origin's largest count is lower),
/// the sums saturate rather than wrap or panic, and the node keeps serving. (Before the
/// robust merge, one origin's claim was counted as it came: a million listeners.)
#[test]
fn a_lying_member_counts_at_most_the_cap() {
    use hearsay::identity::NodeIdentity;
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (Peer::new(dir.path(), "a"), Peer::new(dir.path(), "b"));
    let x = a.cli(&[&["community", "create", "X"][..], &SHORT_PERIOD_FLOOR].concat()).trim().to_owned();
    a.cli(&["community", "invite", "X", "--node", &b.id]);
    let ta = user_with_token(&a.data, dir.path(), "apub", "public");
    let na = a.start();
    let p = fresh_period();
    submit(&na.url, &ta, &[("Honest Band", "One", p)]);
    let own = release_of(&na.url, p, Duration::from_secs(20));
    let communities = hearsay::envelope::open_snapshot(&own).expect("A's release").1.communities;
    // B's key (B's node never runs) signs the lie.
    let b_identity = NodeIdentity::load_or_create(&b.data).expect("B's key");
    let keypair = libp2p::identity::Keypair::from_protobuf_encoding(&b_identity.encode()).expect("key");
    let secret = keypair.try_into_ed25519().expect("ed25519").secret();
    let b_key = ed25519_dalek::SigningKey::from_bytes(&<[u8; 32]>::try_from(secret.as_ref()).expect("32 bytes"));
    let honest = snapshot_with(&b_identity, &communities, p, 4, &[("Liar Band", 1), ("Honest Band", 1)]);
    let (_, mut lie) = hearsay::envelope::open_snapshot(&honest).expect("B's snapshot");
    for e in &mut lie.public.artists {
        e.listeners = 1_000_000;
        e.listens = i64::MAX;
    }
    let lie = hearsay::envelope::seal(&b_key, hearsay::envelope::DST_SNAPSHOT, lie.encode());
    hearsay::envelope::open_snapshot(&lie).expect("a valid signed snapshot by a member");
    let victim: libp2p::Multiaddr = format!("/ip4/127.0.0.1/tcp/{}", a.port).parse().expect("addr");
    let bad = rogue::Bad { gossip: vec![lie], ..rogue::Bad::manifests(vec![]) };
    let (stop, rogue) = rogue::spawn(victim, &x, bad);
    let v = wait_for(&na.url, p, "the liar is counted", |v| origins(v, "X", "chart") == 2);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    rogue.join().expect("rogue");
    let chart = &community(&v, "X").expect("X")["chart"];
    let row = |name: &str| {
        chart["artists"].as_array().and_then(|rows| rows.iter().find(|r| r["name"]["artist"] == name)).cloned()
    };
    let liar = row("Liar Band").expect("listed");
    let honest = row("Honest Band").expect("listed");
    let cap = hearsay::federation::merge::MIN_ORIGIN_CAP;
    assert_eq!(liar["listeners"].as_i64(), Some(cap), "{chart}");
    assert_eq!(honest["listeners"].as_i64(), Some(1 + cap), "{chart}");
    assert!(honest["listens"].as_i64().is_some_and(|n| n > 0), "saturated, not wrapped: {chart}");
    ureq::get(&format!("{}/health", na.url)).call().expect("the node keeps serving");
}

/// A forged ticket: anyone can sign a manifest naming someone else's community id and
/// listing themselves as its administrator. `community join` refuses it, in the old
/// format (which carried the latest manifest alone, checked only against its own
/// administrators: it used to be taken) and in the new one (a chain checked from the
/// community id), and stores nothing; the administrator's real ticket is taken.
#[test]
fn a_forged_ticket_is_refused() {
    use hearsay::federation::community::{TicketV1, TicketV2, open_manifest};
    use hearsay::identity::NodeIdentity;
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, forger) = (Peer::new(dir.path(), "a"), Peer::new(dir.path(), "b"), Peer::new(dir.path(), "f"));
    a.cli(&["community", "create", "X"]);
    let real = a.cli(&["community", "invite", "X", "--node", &b.id]);
    let (t, chain) = TicketV2::from_text(real.trim()).expect("the real ticket");
    let forger_key = NodeIdentity::load_or_create(&forger.data).expect("key");
    let v1 = &chain[0];
    let fake = open_manifest(&forger_key.sign_manifest(&v1.manifest.next(hearsay::now_unix(), |m| {
        m.admins = vec![forger_key.public_key()];
        m.name = "Not X".into();
    })))
    .expect("a validly signed manifest");
    let old = TicketV1 { community: t.community, manifest: fake.signed.clone(), bootstrap: vec![] };
    let old = format!("hearsay1{}", hex::encode(postcard::to_allocvec(&old).expect("encode")));
    let new = TicketV2 {
        community: t.community,
        chain: vec![v1.signed.clone(), fake.signed.clone()],
        head: 2,
        bootstrap: vec![],
    };
    for forged in [old, new.to_text()] {
        let out = b.run(&["community", "join", &forged]);
        assert!(!out.status.success(), "a forged ticket was taken");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("ticket"), "{err}");
    }
    let store = hearsay::store::Store::open(&b.data, &Default::default()).expect("open B");
    assert!(store.manifest(&t.community).expect("read").is_none(), "nothing stored");
    drop(store);
    b.cli(&["community", "join", real.trim()]);
    let store = hearsay::store::Store::open(&b.data, &Default::default()).expect("open B");
    let held = store.manifest(&t.community).expect("read").expect("held");
    assert_eq!((held.manifest.version, held.manifest.name.as_str()), (2, "X"));
    assert!(store.manifest_at(&t.community, 1).expect("read").is_some(), "the whole chain is held");
}

/// A member's snapshot of a short period that ends after the node's last complete period
/// does not become what `/network` shows: the default is the last period this node
/// released on its own schedule, and charts count only snapshots of the node's period
/// length. (Before, the newest held period was shown: any member could stand in for the
/// community's chart on every follower's page with a one-second "period" ending now.)
#[test]
fn a_short_period_from_a_member_does_not_stand_in_for_the_chart() {
    use hearsay::identity::NodeIdentity;
    use hearsay::store::{Options, Store};
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Peer::new(dir.path(), "a");
    a.cli(&[&["community", "create", "X"][..], &SHORT_PERIOD_FLOOR].concat());
    let key = NodeIdentity::load_or_create(&a.data).expect("key");
    let store = Store::open(&a.data, &Options::default()).expect("open");
    let week = 604_800;
    let start = hearsay::privacy::accountant::week_of(hearsay::now_unix()) - 2 * week;
    let ids: Vec<[u8; 32]> = store.followed().expect("followed").into_iter().map(|(id, _)| id).collect();
    let snapshot = |start: i64, secs: u32, artist: &str| public_snapshot(&key, &ids, start, secs, artist);
    // This node's own release of the last complete week, as the publisher stores it.
    let own = snapshot(start, 604_800, "Weekly Band");
    store.commit_release(start, start, &own, &Default::default(), &[]).expect("release");
    store.put_snapshot(start, &key.public_key(), 1, &own).expect("held");
    // A one-second period of the current week, signed by a member.
    let short_start = start + week + 3_600;
    store
        .put_snapshot(short_start, &key.public_key(), 1, &snapshot(short_start, 1, "Short Period Band"))
        .expect("held");
    let view = store.network_view(None, 604_800).expect("view");
    let x = view.iter().find(|c| c.name == "X").expect("community X");
    assert_eq!(x.period, Some(start), "the last complete period on this node's schedule");
    let names: Vec<String> = x.chart.artists.iter().map(|r| format!("{:?}", r.name)).collect();
    assert!(names.iter().any(|n| n.contains("Weekly Band")), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("Short Period Band")), "{names:?}");
    // Asked for the short period, the week-long chart does not count it either.
    let view = store.network_view(Some(short_start), 604_800).expect("view");
    let x = view.iter().find(|c| c.name == "X").expect("community X");
    assert_eq!(x.chart.origins, 0, "a snapshot of another period length is not part of the chart");
}

/// An open community's probation counts periods from when this node first saw an origin,
/// not the snapshots the origin holds: a fresh key that signs backdated snapshots for
/// the whole retention window is not counted at full weight at once (before, three
/// backdated weeks passed a probation of two).
#[test]
fn backdated_snapshots_do_not_pass_probation() {
    use hearsay::identity::NodeIdentity;
    use hearsay::store::{Options, Store};
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Peer::new(dir.path(), "a");
    a.cli(&[&["community", "create", "Open", "--open-probation", "2"][..], &SHORT_PERIOD_FLOOR].concat());
    let own = NodeIdentity::load_or_create(&a.data).expect("key");
    let fresh_dir = tempfile::tempdir().expect("tempdir");
    let fresh = NodeIdentity::load_or_create(fresh_dir.path()).expect("fresh key");
    let store = Store::open(&a.data, &Options::default()).expect("open");
    let week = 604_800;
    let now = hearsay::now_unix();
    let last = hearsay::privacy::accountant::week_of(now) - week;
    let ids: Vec<[u8; 32]> = store.followed().expect("followed").into_iter().map(|(id, _)| id).collect();
    let snapshot = |key: &NodeIdentity, start: i64, artist: &str| public_snapshot(key, &ids, start, 604_800, artist);
    // This node has published here for ten weeks.
    store.note_origin_seen(&own.public_key(), last - 10 * week).expect("seen");
    store.put_snapshot(last, &own.public_key(), 1, &snapshot(&own, last, "Own Band")).expect("own");
    // A key first seen now, with snapshots of the last three weeks.
    for w in 0..3 {
        let start = last - w * week;
        store.put_snapshot(start, &fresh.public_key(), 1, &snapshot(&fresh, start, "Backdated Band")).expect("fresh");
    }
    store.note_origin_seen(&fresh.public_key(), now).expect("seen");
    let chart = |store: &Store| {
        let view = store.network_view(Some(last), 604_800).expect("view");
        let c = view.iter().find(|c| c.name == "Open").expect("community").chart.clone();
        (c.origins + c.corroborating, c.artists.iter().map(|r| format!("{:?}", r.name)).collect::<Vec<_>>())
    };
    let (origins, names) = chart(&store);
    assert_eq!(origins, 1, "only this node is taken: {names:?}");
    assert!(!names.iter().any(|n| n.contains("Backdated")), "{names:?}");
    // A key this node has seen for two whole periods before the week counts.
    let seasoned_dir = tempfile::tempdir().expect("tempdir");
    let seasoned = NodeIdentity::load_or_create(seasoned_dir.path()).expect("key");
    store.note_origin_seen(&seasoned.public_key(), last - 2 * week).expect("seen");
    store.put_snapshot(last, &seasoned.public_key(), 1, &snapshot(&seasoned, last, "Patient Band")).expect("put");
    let (origins, names) = chart(&store);
    assert_eq!(origins, 2, "{names:?}");
    // Taken, as a non-member: it corroborates what members count, and an artist only
    // it played stays off the chart (a Sybil flood past probation cannot list one).
    assert!(!names.iter().any(|n| n.contains("Patient Band")), "{names:?}");
    assert!(names.iter().any(|n| n.contains("Own Band")), "{names:?}");
}

/// A manifest fork, against a running node: the administrator's key signs a second,
/// different version 2 (members changed otherwise). The node keeps the version it has,
/// records the fork as evidence (once), shows a warning on `/network`, and does not
/// count the relay as a fault (before, a second version was ignored as "not newer" and
/// nobody learnt the history had forked).
#[test]
fn a_manifest_fork_is_kept_as_evidence_and_shown() {
    use hearsay::identity::NodeIdentity;
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, c) = (Peer::new(dir.path(), "a"), Peer::new(dir.path(), "b"), Peer::new(dir.path(), "c"));
    let x = a.cli(&["community", "create", "X"]).trim().to_owned();
    // Version 2 admits B.
    a.cli(&["community", "invite", "X", "--node", &b.id]);
    let ticket = a.cli(&["community", "invite", "X"]);
    let (_, chain) = hearsay::federation::community::TicketV2::from_text(ticket.trim()).expect("ticket");
    let v2 = chain.last().expect("a chain").clone();
    assert_eq!(v2.manifest.version, 2);
    let key = NodeIdentity::load_or_create(&a.data).expect("a key");
    // The fork: the same version and parent, admitting C instead of B.
    let mut other = v2.manifest.clone();
    let c_key = hearsay::p2p::node_of(&c.id.parse().expect("peer id")).expect("ed25519");
    other.members.retain(|m| m.node == key.public_key());
    other.members.push(hearsay::federation::community::Member { node: c_key, weight_milli: 1000 });
    other.members.sort_by_key(|m| m.node);
    let fork = key.sign_manifest(&other);
    // And a version 3 on the fork's branch, as honest relays of that branch carry it.
    let fork_parent = hearsay::federation::community::open_manifest(&fork).expect("fork");
    let on_fork = key.sign_manifest(&fork_parent.manifest.next(hearsay::now_unix(), |m| m.name = "X".into()));
    let na = a.start();
    let before = network(&na.url, fresh_period());
    let rejected0 = before["p2p"]["rejected"].as_i64().unwrap_or(0);
    let bad = rogue::Bad::manifests(vec![fork.clone(), fork, on_fork]);
    let victim: libp2p::Multiaddr = format!("/ip4/127.0.0.1/tcp/{}", a.port).parse().expect("addr");
    let (stop, rogue) = rogue::spawn(victim.clone(), &x, bad);
    let v = wait_for(&na.url, fresh_period(), "the fork is recorded", |v| {
        community(v, "X").is_some_and(|c| c["forks"] == serde_json::json!([2]))
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    rogue.join().expect("rogue");
    let x_view = community(&v, "X").expect("X");
    assert_eq!(x_view["version"], 2, "the version taken first stays");
    assert_eq!(x_view["members"], 2, "A and B, as in the version taken first");
    assert_eq!(v["p2p"]["evidence"].as_i64(), Some(1), "kept once: {}", v["p2p"]);
    assert_eq!(
        v["p2p"]["rejected"].as_i64().unwrap_or(0),
        rejected0,
        "relaying a fork, or a later version on its branch, is no fault"
    );
    let page = ureq::get(&format!("{}/network", na.url)).call().expect("page").into_string().expect("body");
    assert!(page.contains("signed two different manifests of version 2"), "{page}");
    drop(na);
    // Stored once; served in catch-up right after the version it forks.
    let store = hearsay::store::Store::open(&a.data, &hearsay::store::Options::default()).expect("open");
    let id = v2.manifest.community();
    let fork = hearsay::federation::community::open_manifest(&key.sign_manifest(&other)).expect("fork");
    assert!(!store.put_manifest_fork(&fork).expect("put"), "one fork per version");
    let served = store.manifests_after(&id, 1, 16).expect("after");
    assert_eq!(served, vec![v2.signed.clone(), fork.signed.clone()]);
    assert_eq!(store.manifests_after(&id, 1, 1).expect("after"), vec![v2.signed], "the limit holds");
}

/// Signed community results: an administrator's result that its members' snapshots do
/// not give is kept by a member as evidence against it (shown on `/network`, never
/// taken for a chart) and one signed by a node that is no administrator is refused,
/// while the administrator's honest result, which its node makes by itself after the
/// period, is kept as a match. (Before: there were no results, and every node that
/// followed a linked community took every one of its members' snapshots.)
#[test]
fn a_wrong_community_result_is_evidence_and_a_forged_one_is_refused() {
    use hearsay::federation::merge::{Held, PeriodState};
    use hearsay::federation::result::ResultV1;
    use hearsay::identity::NodeIdentity;
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, c) = (Peer::new(dir.path(), "a"), Peer::new(dir.path(), "b"), Peer::new(dir.path(), "c"));
    let x = a.cli(&[&["community", "create", "X"][..], &SHORT_PERIOD_FLOOR].concat()).trim().to_owned();
    let ticket = a.cli(&["community", "invite", "X", "--node", &b.id]);
    b.cli(&["community", "join", ticket.trim()]);
    let (_, chain) = hearsay::federation::community::TicketV2::from_text(ticket.trim()).expect("ticket");
    let manifest = chain.last().expect("a chain").clone();
    let (ta, tb) = (
        user_with_token(&a.data, dir.path(), "apub", "public"),
        user_with_token(&b.data, dir.path(), "bpub", "public"),
    );
    let (na, nb) = (a.start(), b.start());
    let p = fresh_period();
    submit(&na.url, &ta, &[("Alpha Band", "One", p)]);
    submit(&nb.url, &tb, &[("Beta Band", "Two", p)]);
    let releases = [release_of(&na.url, p, Duration::from_secs(20)), release_of(&nb.url, p, Duration::from_secs(20))];
    let before = wait_for(&nb.url, p, "B holds both snapshots", |v| origins(v, "X", "chart") == 2);
    let mut state = PeriodState::default();
    for bytes in &releases {
        let (_, s) = hearsay::envelope::open_snapshot(bytes).expect("verifies");
        state.insert(Held { version: s.version, hash: *blake3::hash(bytes).as_bytes(), snapshot: s });
    }
    let honest = ResultV1::of(&manifest.manifest, &state, p, 4, p + 30).expect("a result");
    assert_eq!(honest.inputs.len(), 2);
    // A's key signs a result that lifts one artist by 1000 listeners; C's key (no
    // administrator) signs the honest one.
    let a_key = NodeIdentity::load_or_create(&a.data).expect("A's key");
    let mut wrong = honest.clone();
    wrong.chart.artists[0].listeners += 1000;
    wrong.issued_at = p + 31;
    let forged = NodeIdentity::load_or_create(&c.data).expect("C's key").sign_result(&honest);
    let rejected0 = before["p2p"]["rejected"].as_i64().unwrap_or(0);
    let victim: libp2p::Multiaddr = format!("/ip4/127.0.0.1/tcp/{}", b.port).parse().expect("addr");
    let (stop, rogue) = rogue::spawn(victim, &x, rogue::Bad::results(vec![a_key.sign_result(&wrong), forged]));
    let v = wait_for(&nb.url, p, "B keeps the wrong result and refuses the forged one", |v| {
        community(v, "X").is_some_and(|c| c["wrong_results"].as_array().is_some_and(|w| !w.is_empty()))
            && v["p2p"]["rejected"].as_i64().unwrap_or(0) > rejected0
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    rogue.join().expect("rogue");
    let a_short = hearsay::federation::short_hex(&a_key.public_key());
    let x_view = community(&v, "X").expect("X");
    assert_eq!(x_view["wrong_results"], serde_json::json!([[p, a_short]]));
    assert_eq!(x_view["chart"], community(&before, "X").expect("X")["chart"], "no chart changed");
    let page = ureq::get(&format!("{}/network?period={p}", nb.url)).call().expect("page").into_string().expect("body");
    assert!(page.contains("do not give"), "{page}");
    // A's own node makes and signs each period's honest result after it, which B
    // recomputes to the same chart and keeps: the next period's, p + 4 (its node signs
    // it one grace time and two catch-up rounds after it ends, p + 13, on its next
    // tick). A's honest result for p itself came after the wrong one and is ignored:
    // a signer with a wrong result for a period has no result taken for it.
    let id = manifest.manifest.community();
    let due = p + 18;
    while hearsay::now_unix() < due {
        std::thread::sleep(Duration::from_millis(200));
    }
    drop((na, nb));
    let store = hearsay::store::Store::open(&b.data, &hearsay::store::Options::default()).expect("open B");
    let next = store.results(&id, p + 4).expect("read");
    assert!(
        next.iter().any(|(signer, r, _)| *signer == a_key.public_key() && r.inputs.len() == 2),
        "A's node made the next period's result and B kept it: {next:?}"
    );
    assert_eq!(store.wrong_results(&id).expect("read"), vec![(p, a_key.public_key())], "that one matched");
    // No chart takes a result from that administrator for that period.
    assert_eq!(store.best_result(&id, p, 4).expect("read"), None);
}

/// Manifest changes by a threshold of administrators: once A and B are both
/// administrators with a threshold of 2, A alone changes nothing (its node keeps the
/// version; a version signed by A's key alone, sent to B, is rejected), a node that is
/// not an administrator cannot approve, and B's approval completes the change, which
/// reaches A over the network. Before: one administrator's signature made any version.
#[test]
fn a_manifest_change_needs_the_threshold_of_administrators() {
    use hearsay::identity::NodeIdentity;
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, c) = (Peer::new(dir.path(), "a"), Peer::new(dir.path(), "b"), Peer::new(dir.path(), "c"));
    let x = a.cli(&["community", "create", "X"]).trim().to_owned();
    a.cli(&["community", "invite", "X", "--node", &b.id]);
    let out = a.cli(&["community", "admins", "X", "--add", &b.id, "--threshold", "2"]);
    assert!(out.trim().is_empty(), "v2 needed one administrator: published, no proposal: {out}");
    let ticket = a.cli(&["community", "invite", "X"]);
    b.cli(&["community", "join", ticket.trim()]);
    c.cli(&["community", "join", ticket.trim()]);
    assert!(b.cli(&["community", "list"]).contains("\tv3\t"), "B holds v3");

    // A alone admits C: a proposal (on stderr: stdout is the ticket), nothing stored.
    let out = a.run(&["community", "invite", "X", "--node", &c.id]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let proposal = err.lines().find(|l| l.starts_with("hearsay-proposal1")).expect("a proposal").to_owned();
    assert!(String::from_utf8_lossy(&out.stdout).trim().starts_with("hearsay2"), "stdout is the ticket alone");
    // A second, different proposal for the same version is refused (two bodies signed
    // as one version would be a fork, evidence against A).
    let second = a.run(&["community", "admins", "X", "--threshold", "1"]);
    assert!(!second.status.success(), "a second body of v4 signed");
    assert!(String::from_utf8_lossy(&second.stderr).contains("already signed a different version 4"));
    assert!(a.cli(&["community", "list"]).contains("\tv3\t"), "A still holds v3: {}", a.cli(&["community", "list"]));
    // C, a member but not an administrator, cannot approve.
    let refused = c.run(&["community", "approve", &proposal, "--yes"]);
    assert!(!refused.status.success(), "a non-administrator approved");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not an administrator"));

    // A's key alone signs v4 and sends it to B's node: rejected, B keeps v3.
    let key = NodeIdentity::load_or_create(&a.data).expect("a key");
    let alone = hearsay::federation::community::proposal_from_text(&proposal).expect("proposal");
    assert_eq!(alone.manifest.version, 4);
    assert_eq!(alone.signer, key.public_key());
    let nb = b.start();
    let rejected0 = network(&nb.url, fresh_period())["p2p"]["rejected"].as_i64().unwrap_or(0);
    let bad = rogue::Bad::manifests(vec![alone.signed.clone()]);
    let victim: libp2p::Multiaddr = format!("/ip4/127.0.0.1/tcp/{}", b.port).parse().expect("addr");
    let (stop, rogue) = rogue::spawn(victim, &x, bad);
    let v = wait_for(&nb.url, fresh_period(), "the under-signed version is rejected", |v| {
        v["p2p"]["rejected"].as_i64().unwrap_or(0) > rejected0
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    rogue.join().expect("rogue");
    assert_eq!(community(&v, "X").expect("X")["version"], 3, "B keeps v3: {v:#}");
    drop(nb);

    // B reads the change first (nothing signed without --yes), then approves: complete,
    // published; A learns it from B over the network.
    let read = b.run(&["community", "approve", &proposal]);
    assert!(!read.status.success());
    assert!(String::from_utf8_lossy(&read.stderr).contains(&format!("member added: {}", c.id)), "the change is shown");
    assert!(b.cli(&["community", "list"]).contains("\tv3\t"), "nothing signed yet");
    let out = b.cli(&["community", "approve", &proposal, "--yes"]);
    assert!(!out.contains("hearsay-proposal1"), "two of two signed: no further proposal");
    assert!(b.cli(&["community", "list"]).contains("\tv4\t3 members"), "{}", b.cli(&["community", "list"]));
    let (na, nb) = (a.start(), b.start());
    let v = wait_for(&na.url, fresh_period(), "A takes B's approved v4", |v| {
        community(v, "X").is_some_and(|c| c["version"] == 4 && c["members"] == 3)
    });
    assert_eq!(community(&v, "X").expect("X")["version"], 4);
    drop((na, nb));
}

/// What a catch-up brings is announced onward (`Have`): C, connected only to B, gets
/// A's release of a period it missed when B catches up with A, within seconds, not at
/// its next catch-up round (an hour here). Before, C got it only at that round: a
/// healed partition or a node back online took hours to spread (6.7 h at 1,000 nodes
/// in the simulator). Catch-up rounds ask only for what is new since the last one
/// (`RefsSince`).
#[test]
fn what_a_catch_up_brings_is_announced_to_the_other_peers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut a, mut b, mut c) = (Peer::new(dir.path(), "a"), Peer::new(dir.path(), "b"), Peer::new(dir.path(), "c"));
    for p in [&mut a, &mut b, &mut c] {
        p.extra.push(("HEARSAY_P2P__SYNC_INTERVAL_SECS".into(), "3600".into()));
    }
    // Nobody can reach A through the manifest or tickets (port 9 is closed): A's
    // release reaches C only through B.
    let unreachable = format!("/ip4/127.0.0.1/tcp/9/p2p/{}", a.id);
    let cli_a = |args: &[&str]| {
        let out = Command::new(bin())
            .args(args)
            .env("HEARSAY_NODE__DATA_DIR", &a.data)
            .env("HEARSAY_NODE__LOG", "warn")
            .env("HEARSAY_P2P__LISTEN", a.listen())
            .env("HEARSAY_P2P__EXTERNAL", format!("[\"{unreachable}\"]"))
            .stdin(Stdio::null())
            .output()
            .expect("run hearsay");
        assert!(out.status.success(), "hearsay {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    cli_a(&[&["community", "create", "X"][..], &SHORT_PERIOD_FLOOR].concat());
    let ticket_b = cli_a(&["community", "invite", "X", "--node", &b.id, "--addr", &unreachable]);
    let b_addr = format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", b.port, b.id);
    let ticket_c = cli_a(&["community", "invite", "X", "--node", &c.id, "--addr", &b_addr]);
    b.cli(&["community", "join", ticket_b.trim()]);
    c.cli(&["community", "join", ticket_c.trim()]);
    let token = user_with_token(&a.data, dir.path(), "apub", "public");

    // A releases period p alone, and stops.
    let p = {
        let na = a.start();
        let p = fresh_period();
        submit(&na.url, &token, &[("Far Away Band", "Song", p)]);
        release_of(&na.url, p, Duration::from_secs(20));
        p
    };
    let (nb, nc) = (b.start(), c.start());
    wait_for(&nc.url, p, "C connects to B", |v| v["p2p"]["peers"].as_array().is_some_and(|p| !p.is_empty()));
    // A comes back, dialling B only.
    a.extra.push(("HEARSAY_P2P__BOOTSTRAP".into(), format!("[\"{b_addr}\"]")));
    let started = Instant::now();
    let _na = a.start();
    let has_a = |v: &Value| community(v, "X").is_some_and(|c| c["chart"].to_string().contains("Far Away Band"));
    wait_for(&nb.url, p, "B catches up with A", has_a);
    wait_for(&nc.url, p, "C gets A's release through B's announcement", has_a);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(40), "took {took:?}");
}

/// A Sybil flood of an open community, against a running node: a dozen fresh keys, past
/// probation at once (probation 0), each claiming 99 listeners for a fake artist and for
/// the one artist the community's member played. They are taken, but only as
/// corroboration: the fake artist never shows, and the member's artist keeps exactly
/// its count, shown as corroborated by 12 (before: the fake artist led the chart; then,
/// until 2026-12, the member's artist rose by up to a quarter).
#[test]
fn a_sybil_flood_of_an_open_community_only_corroborates() {
    use hearsay::identity::NodeIdentity;
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Peer::new(dir.path(), "a");
    let o = a.cli(&[&["community", "create", "O", "--open-probation", "0"][..], &SHORT_PERIOD_FLOOR].concat());
    let o = o.trim().to_owned();
    let token = user_with_token(&a.data, dir.path(), "apub", "public");
    let na = a.start();
    let p = fresh_period();
    submit(&na.url, &token, &[("Member Band", "Song", p), ("Member Band", "Song", p + 1)]);
    let own = release_of(&na.url, p, Duration::from_secs(20));
    let communities = hearsay::envelope::open_snapshot(&own).expect("own release").1.communities;
    let before = wait_for(&na.url, p, "A counts itself", |v| origins(v, "O", "chart") == 1);
    let row = |v: &Value, artist: &str| -> Option<(i64, i64)> {
        community(v, "O")?["chart"]["artists"]
            .as_array()?
            .iter()
            .find(|r| r["name"].to_string().contains(artist))
            .map(|r| (r["listeners"].as_i64().unwrap_or(-1), r["listens"].as_i64().unwrap_or(-1)))
    };
    let (listeners, listens) = row(&before, "Member Band").expect("the member's artist");
    let sybils: Vec<Vec<u8>> = (0..12)
        .map(|_| {
            let key_dir = tempfile::tempdir().expect("tempdir");
            let key = NodeIdentity::load_or_create(key_dir.path()).expect("key");
            snapshot_with(&key, &communities, p, 4, &[("Sybil Anthem", 99), ("Member Band", 99)])
        })
        .collect();
    let bad = rogue::Bad {
        gossip: sybils,
        manifests: vec![],
        results: vec![],
        served: vec![],
        origin: [0; 32],
        period: p,
        hostile_sync: false,
    };
    let victim: libp2p::Multiaddr = format!("/ip4/127.0.0.1/tcp/{}", a.port).parse().expect("addr");
    let (stop, rogue) = rogue::spawn(victim.clone(), &o, bad);
    let after = wait_for(&na.url, p, "the Sybils are taken as corroboration", |v| {
        community(v, "O").is_some_and(|c| c["chart"]["corroborating"] == 12)
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    rogue.join().expect("rogue");
    assert!(!after.to_string().contains("Sybil Anthem"), "a fake artist listed: {after:#}");
    let (l, n) = row(&after, "Member Band").expect("the member's artist stays");
    assert_eq!((l, n), (listeners, listens), "the member's counts, untouched by 12 Sybils");
    assert_eq!(origins(&after, "O", "chart"), 1, "one origin counted: the member");
    let page = ureq::get(&format!("{}/network", na.url)).call().expect("page").into_string().expect("body");
    assert!(page.contains("12 non-member nodes corroborate"), "{page}");
}

/// A signed snapshot of `key`'s node for one 4-second period of its own, one public
/// user with these artists and play counts (loose parameters, nothing refused).
fn snapshot_with(
    key: &hearsay::identity::NodeIdentity,
    communities: &[[u8; 32]],
    start: i64,
    secs: u32,
    artists: &[(&str, u64)],
) -> Vec<u8> {
    use hearsay::privacy::params::{Budget, Params, Spend};
    use hearsay::privacy::release::{Period, UserPeriod, release};
    use hearsay::privacy::snapshot::ItemName;
    let users = [UserPeriod {
        user: 1,
        level: hearsay::privacy::SharingLevel::Public,
        artists: artists.iter().map(|(a, n)| (ItemName::artist(a), *n)).collect(),
        tracks: artists.iter().map(|(a, n)| (ItemName::track(a, "x"), *n)).collect(),
    }];
    let roomy = Spend { eps_milli: 1_000_000, delta_pico: 1_000_000 };
    let period = Period {
        origin: key.public_key(),
        start,
        secs,
        issued_at: start + i64::from(secs) + 1,
        communities: communities.to_vec(),
    };
    let params = Params { k: 2, ..Params::default() };
    let r = release(
        period,
        &users,
        &params,
        Budget { week: roomy, year: roomy },
        Default::default(),
        &[0; 32],
        &mut hearsay::publish::OsRandom,
    )
    .expect("release");
    key.sign_snapshot(&r.snapshot)
}

/// `/network` views are cached until the next write, so a page hit does not rescan
/// every held snapshot; every kind of write that changes a view shows at once: a
/// snapshot, a first sighting (probation), a manifest version, a follow, a prune.
#[test]
fn network_views_are_cached_until_any_write_that_changes_them() {
    use hearsay::identity::NodeIdentity;
    use hearsay::store::{Options, Store};
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Peer::new(dir.path(), "a");
    a.cli(&[&["community", "create", "Open", "--open-probation", "2"][..], &SHORT_PERIOD_FLOOR].concat());
    let own = NodeIdentity::load_or_create(&a.data).expect("key");
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = NodeIdentity::load_or_create(other_dir.path()).expect("key");
    let store = Store::open(&a.data, &Options::default()).expect("open");
    let week = 604_800;
    let last = hearsay::privacy::accountant::week_of(hearsay::now_unix()) - week;
    let followed = store.followed().expect("followed");
    let (id, follow) = followed[0].clone();
    let ids = vec![id];
    let view = |store: &Store| {
        let v = store.network_view(Some(last), 604_800).expect("view");
        let c = v.iter().find(|c| c.name == "Open").map(|c| (c.chart.origins + c.chart.corroborating, c.version));
        let again = store.network_view(Some(last), 604_800).expect("view");
        assert_eq!(format!("{v:?}"), format!("{again:?}"), "a cached view is the same view");
        c
    };
    assert_eq!(view(&store), Some((0, 1)));
    store.note_origin_seen(&own.public_key(), last - 10 * week).expect("seen");
    store
        .put_snapshot(last, &own.public_key(), 1, &public_snapshot(&own, &ids, last, week as u32, "Own"))
        .expect("put");
    assert_eq!(view(&store), Some((1, 1)), "a snapshot");
    store
        .put_snapshot(last, &other.public_key(), 1, &public_snapshot(&other, &ids, last, week as u32, "Own"))
        .expect("put");
    assert_eq!(view(&store), Some((1, 1)), "on probation: not counted yet");
    store.note_origin_seen(&other.public_key(), last - 3 * week).expect("seen");
    assert_eq!(view(&store), Some((2, 1)), "a first sighting (probation)");
    let current = store.manifest(&id).expect("manifest").expect("held");
    let next = current.manifest.next(hearsay::now_unix(), |m| m.name = "Open".into());
    let signed = hearsay::federation::community::open_manifest(&own.sign_manifest(&next)).expect("signed");
    store.put_manifest(&signed).expect("put manifest");
    assert_eq!(view(&store), Some((2, 2)), "a manifest version");
    store.unfollow(&id).expect("unfollow");
    assert_eq!(view(&store), None, "an unfollow");
    store.follow(&id, &follow).expect("follow");
    assert_eq!(view(&store), Some((2, 2)), "a follow");
    store.prune_snapshots(last + week).expect("prune");
    assert_eq!(view(&store), Some((0, 2)), "a prune");
}

/// A signed snapshot of `key`'s node for one period: one public user who played `artist`
/// nine times (loose privacy parameters, so nothing is refused for its budget).
fn public_snapshot(
    key: &hearsay::identity::NodeIdentity,
    communities: &[[u8; 32]],
    start: i64,
    secs: u32,
    artist: &str,
) -> Vec<u8> {
    snapshot_with(key, communities, start, secs, &[(artist, 9)])
}

/// Retention: snapshots of periods before the window are deleted, not kept forever
/// (any key could otherwise fill disks over time); those inside stay.
#[test]
fn snapshots_past_retention_are_pruned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = hearsay::store::Store::open(dir.path(), &Default::default()).expect("open");
    let old = 1_795_392_000;
    let new = old + 13 * 604_800;
    for (period, origin) in [(old, [1u8; 32]), (old, [2; 32]), (new, [1; 32])] {
        store.put_snapshot(period, &origin, 1, b"bytes").expect("put");
    }
    assert_eq!(store.prune_snapshots(new - 12 * 604_800).expect("prune"), 2);
    assert!(store.held_versions(old, &[1; 32]).expect("read").is_empty());
    assert_eq!(store.held_versions(new, &[1; 32]).expect("read").len(), 1);
    assert_eq!(store.prune_snapshots(new - 12 * 604_800).expect("prune"), 0);
}

/// A flood of connections from fresh keys: the node keeps at most `p2p.max_connections`
/// (before, it took every one), and keeps serving.
#[test]
fn a_connection_flood_is_capped() {
    // In total: 24 fresh keys from loopback (exempt from the per-address cap).
    let connected = flood(&[("HEARSAY_P2P__MAX_CONNECTIONS", "8")], "127.0.0.1", 24);
    assert!(connected <= 8, "{connected} of 24 fresh keys hold a connection; the cap is 8");
    assert!(connected >= 1, "the node still takes connections");
    // Per address: 24 fresh keys from one non-loopback address of this host, against
    // the default total of 256 (before the per-address cap, all 24 held one).
    let address = non_loopback_address();
    let connected = flood(&[("HEARSAY_P2P__MAX_CONNECTIONS_PER_IP", "4")], &address, 24);
    assert!(connected <= 4, "{connected} of 24 fresh keys from {address} hold a connection; the cap is 4");
    assert!(connected >= 1, "the node still takes connections from {address}");
}

/// Dials a fresh node (with `env`) at `ip` from `keys` fresh keys at once; returns how
/// many hold a connection after a while, checking the node's own count agrees.
fn flood(env: &[(&str, &str)], ip: &str, keys: usize) -> usize {
    use futures::StreamExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = Peer::new(dir.path(), "a");
    a.extra.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    a.extra.push(("HEARSAY_P2P__LISTEN".into(), format!("[\"/ip4/{ip}/tcp/{}\"]", a.port)));
    let na = a.start();
    let victim: libp2p::Multiaddr = format!("/ip4/{ip}/tcp/{}", a.port).parse().expect("addr");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let connected = rt.block_on(async {
        let mut swarms: Vec<_> = (0..keys).map(|_| rogue::swarm()).collect();
        for s in &mut swarms {
            s.dial(victim.clone()).expect("dial");
        }
        // Drive every swarm for a while: denied connections close right after the
        // handshake.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
        while tokio::time::Instant::now() < deadline {
            for s in &mut swarms {
                let _ = tokio::time::timeout(Duration::from_millis(5), s.select_next_some()).await;
            }
        }
        swarms.iter().filter(|s| s.connected_peers().count() > 0).count()
    });
    let v = network(&na.url, 0);
    let peers = v["p2p"]["peers"].as_array().map_or(0, Vec::len);
    assert!(peers <= connected.max(1) + 1, "the node counts {peers} peers, the dialers {connected}");
    connected
}

/// An IPv4 address of this host outside 127/8: the first interface's (found by routing
/// a UDP socket, which sends nothing), else 10.255.0.1 added to `lo` (tests run as
/// root, like the tmpfs fault tests).
fn non_loopback_address() -> String {
    let routed = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|()| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip());
    if let Ok(ip) = routed
        && !ip.is_loopback()
        && !ip.is_unspecified()
    {
        return ip.to_string();
    }
    let out = std::process::Command::new("ip")
        .args(["addr", "replace", "10.255.0.1/32", "dev", "lo"])
        .output()
        .expect("ip (iproute2) to add a test address");
    assert!(out.status.success(), "adding 10.255.0.1 to lo: {}", String::from_utf8_lossy(&out.stderr));
    "10.255.0.1".into()
}

/// A member node whose period length changes would publish off its communities' grid
/// (peers ignore those releases, and it is never counted again): the node refuses to
/// start, naming the setting, until it sets it back or leaves its communities.
#[test]
fn a_changed_period_is_a_config_error_for_a_member() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Peer::new(dir.path(), "a");
    a.cli(&[&["community", "create", "X"][..], &SHORT_PERIOD_FLOOR].concat());
    let na = a.start();
    let p = fresh_period();
    release_of(&na.url, p, Duration::from_secs(20));
    drop(na);
    let run = |extra: &[(&str, &str)]| {
        let mut cmd = Command::new(bin());
        for (k, v) in a.env() {
            cmd.env(k, v);
        }
        cmd.envs(extra.iter().copied())
            .env("HEARSAY_NODE__DATA_DIR", &a.data)
            .env("HEARSAY_HTTP__LISTEN", "127.0.0.1:0")
            .env("HEARSAY_NODE__LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn");
        // A node that starts runs until stopped: give it 5 s to fail.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().expect("wait") {
                let mut err = String::new();
                std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err).expect("read");
                return Some((status.success(), err));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    };
    let (ok, err) = run(&[("HEARSAY_PRIVACY__PERIOD_SECS", "8")]).expect("the node refuses to start");
    assert!(!ok && err.contains("privacy.period_secs") && err.contains("4-second"), "{err}");
    a.cli(&["community", "leave", "X"]);
    assert!(run(&[("HEARSAY_PRIVACY__PERIOD_SECS", "8")]).is_none(), "after leaving, it starts");
}

/// N separate node processes on 127.0.0.1 in one allow-list community, with default p2p
/// settings apart from ports (and 4-second periods, to see releases within a test; no
/// `p2p.external`): every node shows every origin within 10 s of the last release of a
/// period. N = 20 with `HEARSAY_FEDERATION_NODES=20` (the figure), 8 in CI.
/// Prints the time and each process's memory.
#[test]
fn separate_node_processes_all_show_every_origin() {
    let n: usize = std::env::var("HEARSAY_FEDERATION_NODES").ok().and_then(|v| v.parse().ok()).unwrap_or(8).max(2);
    let dir = tempfile::tempdir().expect("tempdir");
    let peers: Vec<Peer> = (0..n).map(|i| Peer::new(dir.path(), &format!("n{i}"))).collect();
    peers[0].cli(&[&["community", "create", "X"][..], &SHORT_PERIOD_FLOOR].concat());
    for p in &peers[1..] {
        let ticket = peers[0].cli(&["community", "invite", "X", "--node", &p.id]);
        p.cli(&["community", "join", ticket.trim()]);
    }
    let nodes: Vec<NodeProcess> = peers.iter().map(Peer::start).collect();
    // Three periods that start after every node runs: for each, wait for every node's
    // release, then for every node to show all origins.
    let mut worst = Duration::ZERO;
    let mut missing: Vec<(i64, usize)> = Vec::new();
    let first = fresh_period();
    for p in [first, first + 4, first + 8] {
        let seen = every_origin_shown(&nodes.iter().collect::<Vec<_>>(), p);
        worst = worst.max(seen.iter().flatten().max().copied().unwrap_or(Duration::MAX));
        missing.extend((0..n).filter(|i| seen[*i].is_none()).map(|i| (p, i)));
    }
    let rss_mib: Vec<u64> = nodes
        .iter()
        .map(|node| {
            let status = std::fs::read_to_string(format!("/proc/{}/status", node.child.id())).unwrap_or_default();
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map_or(0, |kb| kb / 1024)
        })
        .collect();
    eprintln!(
        "{n} node processes, 3 periods: the slowest node showed every origin {worst:?} after the period's last release; missing {missing:?}; RSS per process (MiB): {rss_mib:?}"
    );
    assert!(missing.is_empty(), "(period, node) never showing all {n} origins: {missing:?}");
    assert!(worst <= Duration::from_secs(10), "slowest: {worst:?}");
}

/// Waits for every node's release of period `p`, then up to 30 s for each node to show
/// all their origins in community X: per node, how long after the last release it did.
fn every_origin_shown(nodes: &[&NodeProcess], p: i64) -> Vec<Option<Duration>> {
    let n = nodes.len();
    for node in nodes {
        release_of(&node.url, p, Duration::from_secs(60));
    }
    let released = Instant::now();
    let mut seen = vec![None; n];
    while seen.iter().any(Option::is_none) && released.elapsed() < Duration::from_secs(30) {
        for (i, node) in nodes.iter().enumerate() {
            if seen[i].is_none() && origins(&network(&node.url, p), "X", "chart") == n as i64 {
                seen[i] = Some(released.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    seen
}

/// Members find each other, not only the node whose ticket they joined with: every
/// member serves the peer directory by default, so the joiners learn of each other
/// through the ticket's node and connect directly. With the ticket's node stopped, the
/// others still show each other's releases (before: a star around the ticket's node,
/// which fell apart with it).
#[test]
fn members_find_each_other_and_outlive_the_ticket_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let peers: Vec<Peer> = (0..4).map(|i| Peer::new(dir.path(), &format!("m{i}"))).collect();
    peers[0].cli(&[&["community", "create", "X"][..], &SHORT_PERIOD_FLOOR].concat());
    for p in &peers[1..] {
        let ticket = peers[0].cli(&["community", "invite", "X", "--node", &p.id]);
        p.cli(&["community", "join", ticket.trim()]);
    }
    let mut nodes: Vec<NodeProcess> = peers.iter().map(Peer::start).collect();
    let first = fresh_period();
    let seen = every_origin_shown(&nodes.iter().collect::<Vec<_>>(), first);
    assert!(seen.iter().all(Option::is_some), "with the ticket's node up: {seen:?}");
    // Give the lookups (every 30 s at most, and on each new connection) time to connect
    // the joiners to each other, then stop the ticket's node.
    let deadline = Instant::now() + Duration::from_secs(40);
    let connected = |node: &NodeProcess| -> usize {
        let v = network(&node.url, first);
        let ids: Vec<&str> =
            v["p2p"]["peers"].as_array().into_iter().flatten().filter_map(|p| p["peer_id"].as_str()).collect();
        peers[1..].iter().filter(|p| ids.contains(&p.id.as_str())).count()
    };
    while !nodes[1..].iter().all(|n| connected(n) >= 2) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(nodes.remove(0));
    let p = fresh_period() + 4;
    let seen = every_origin_shown(&nodes.iter().collect::<Vec<_>>(), p);
    assert!(seen.iter().all(Option::is_some), "the joiners without the ticket's node, showing all 3 origins: {seen:?}");
}

/// Splits a README command line as a shell would for the cases the README uses: words,
/// "double-quoted words", and a trailing comment.
fn shell_words(line: &str) -> Vec<String> {
    let line = line.split(" #").next().unwrap_or("");
    let (mut out, mut word, mut quoted) = (Vec::new(), String::new(), false);
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// The README's "Communities" section, walked as written: its commands are read from
/// README.md and run on two nodes ("the first node", "the second node", as its comments
/// say), with the PeerId, ticket and address placeholders filled in; then both nodes run
/// and each shows both origins. (`link` needs a second community's ticket and `peers`
/// the node's fixed HTTP address; both are covered elsewhere. `create` gets the floor
/// that 4-second periods need.)
#[test]
fn the_readme_community_section_works_as_written() {
    let readme =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).expect("README.md");
    let section = readme.split("\n## Communities\n").nth(1).expect("a Communities section");
    let section = section.split("\n## ").next().unwrap_or("");
    // Command lines of the first code block, with continuations joined.
    let mut commands: Vec<(bool, String)> = Vec::new(); // (on the second node, line)
    let mut second = false;
    let mut pending = String::new();
    for raw in
        section.lines().skip_while(|l| !l.starts_with("    ")).take_while(|l| l.starts_with("    ") || l.is_empty())
    {
        let line = raw.trim();
        if let Some(comment) = line.strip_prefix('#') {
            if comment.contains("on the second node") {
                second = true;
            } else if comment.contains("on the first node") {
                second = false;
            }
            continue;
        }
        pending.push_str(line.trim_end_matches('\\'));
        pending.push(' ');
        if line.ends_with('\\') {
            continue;
        }
        let cmd = std::mem::take(&mut pending);
        commands.push((second || cmd.contains("# on the second node"), cmd));
    }
    assert!(commands.len() >= 5, "the README's community commands: {commands:?}");
    let dir = tempfile::tempdir().expect("tempdir");
    let (first, second) = (Peer::new(dir.path(), "first"), Peer::new(dir.path(), "second"));
    let mut ticket = String::new();
    let mut ran = Vec::new();
    for (on_second, cmd) in &commands {
        let words = shell_words(cmd);
        let Some(rest) = words.iter().position(|w| w == "--").map(|i| &words[i + 1..]) else { continue };
        if rest.first().is_some_and(|w| w == "peers") || rest.get(1).is_some_and(|w| w == "link" || w == "leave") {
            continue;
        }
        let args: Vec<String> = rest
            .iter()
            .map(|w| match w.as_str() {
                w if w.starts_with("12D3KooW") && w.ends_with('…') => second.id.clone(),
                w if w.starts_with("hearsay2") && w.ends_with('…') => ticket.clone(),
                w if w.starts_with("/dns4/") => format!("/ip4/127.0.0.1/tcp/{}", first.port),
                w => w.to_owned(),
            })
            .collect();
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        // The one departure from the README: the test's 4-second periods make 151,200
        // releases a week, so the community's weekly privacy floor must admit them.
        if args.get(1) == Some(&"create") {
            args.extend(SHORT_PERIOD_FLOOR);
        }
        let node = if *on_second { &second } else { &first };
        let out = node.cli(&args);
        if let Some(t) = out.split_whitespace().find(|w| w.starts_with("hearsay2")) {
            ticket = t.to_owned();
        }
        ran.push(args.join(" "));
    }
    assert!(ran.iter().any(|r| r.starts_with("community join hearsay2")), "the walk joined: {ran:?}");
    // Both nodes run; each shows both origins for a period.
    let (n1, n2) = (first.start(), second.start());
    let p = fresh_period();
    for n in [&n1, &n2] {
        release_of(&n.url, p, Duration::from_secs(30));
    }
    for n in [&n1, &n2] {
        wait_for(&n.url, p, "both origins", |v| origins(v, "Friends of Ambient", "chart") == 2);
    }
    drop((n1, n2));
    // And leaving, as the README says.
    second.cli(&["community", "leave", "Friends of Ambient"]);
    assert!(!second.cli(&["community", "list"]).contains("Friends of Ambient"));
}
