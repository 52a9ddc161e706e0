//! Secure aggregation across home nodes (`federation::secagg`, `p2p::secagg`), with the
//! real binary over libp2p on 127.0.0.1: twelve single-user nodes whose users are at
//! the aggregate level, and two aggregators (the leader also hosts one public user,
//! whose public section makes the round's vocabulary). No node could publish its user
//! alone (its own DP section stays empty); the community's private chart counts them
//! all and reaches a mere follower over gossip; neither aggregator stored or received
//! any user's or node's counts in the clear (both keep every message they receive in
//! an audit directory, inspected at the end). With the helper stopped nothing is
//! released; restarted, the next period is.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::federation::{Peer, SHORT_PERIOD_FLOOR, community, network};
use crate::privacy::{release_of, submit, user_with_token};
use crate::support::NodeProcess;

/// Home nodes: 12, or `HEARSAY_SECAGG_NODES` (the closing note's 50-node figure).
fn members() -> usize {
    std::env::var("HEARSAY_SECAGG_NODES").ok().and_then(|v| v.parse().ok()).unwrap_or(12)
}

/// The nodes' period and sync interval: 4 s and 2 s, or `HEARSAY_SECAGG_PERIOD` and
/// `HEARSAY_SECAGG_SYNC` (longer ones for the 50-node figure on a 2-core machine).
fn timing() -> (i64, i64) {
    let var = |k: &str, d: i64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    (var("HEARSAY_SECAGG_PERIOD", 4), var("HEARSAY_SECAGG_SYNC", 2))
}

/// When a result is due after its period ends: the leader's round `grace + 2 sync` after
/// the end (grace 1 s), verification 3 sync later, members' fetch 2 sync after that.
fn due() -> Duration {
    let (_, sync) = timing();
    Duration::from_secs((1 + 7 * sync) as u64)
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64()
}

/// Waits for the start of the next period (of `timing()`, on the week grid).
fn fresh_period() -> i64 {
    let secs = timing().0 as f64;
    let monday = 4.0 * 86_400.0;
    let t = now();
    let next = monday + (((t - monday) / secs).floor() + 1.0) * secs;
    std::thread::sleep(Duration::from_secs_f64(next - t + 0.05));
    next as i64
}

/// Seconds since the period starting at `p` ended.
fn ended(p: i64) -> f64 {
    now() - (p + timing().0) as f64
}

fn secure_chart(url: &str, period: i64) -> Option<Value> {
    let v = network(url, period);
    community(&v, "Homes").map(|c| c["secure"].clone()).filter(|s| !s.is_null())
}

fn wait_secure(url: &str, period: i64, within: Duration) -> Option<Value> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = secure_chart(url, period) {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn listeners(chart: &Value, kind: &str, name: &str) -> Option<i64> {
    chart["chart"][kind].as_array()?.iter().find(|e| e["name"]["artist"].as_str() == Some(name))?["listeners"].as_i64()
}

/// Every member's user listens to the shared artist; each also to an artist of their
/// own (never in the vocabulary: nobody published it).
fn scrobble(nodes: &[NodeProcess], tokens: &[String], curator: (&NodeProcess, &str), at: i64) {
    submit(&curator.0.url, curator.1, &[("Shared Alpha", "Anthem", at), ("Shared Beta", "Ballad", at)]);
    for (i, (n, t)) in nodes.iter().zip(tokens).enumerate() {
        let own = format!("Solo Artist {i}");
        submit(
            &n.url,
            t,
            &[("Shared Alpha", "Anthem", at), ("Shared Alpha", "Anthem", at + 1), (own.as_str(), "Mine", at + 2)],
        );
    }
}

#[test]
fn twelve_home_nodes_are_counted_privately_by_two_aggregators() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (period_secs, sync_secs) = timing();
    let times = [
        ("HEARSAY_PRIVACY__PERIOD_SECS".to_owned(), period_secs.to_string()),
        ("HEARSAY_P2P__SYNC_INTERVAL_SECS".to_owned(), sync_secs.to_string()),
    ];
    let mut leader = Peer::new(dir.path(), "leader");
    let mut helper = Peer::new(dir.path(), "helper");
    let audits = [dir.path().join("leader-audit"), dir.path().join("helper-audit")];
    for (p, audit) in [(&mut leader, &audits[0]), (&mut helper, &audits[1])] {
        p.extra.push(("HEARSAY_P2P__SECAGG_AUDIT_DIR".into(), audit.display().to_string()));
        // Every node here is on 127.0.0.1, so they share the aggregators' per-address
        // request limit, which stands for one household's nodes; 50 homes would
        // exhaust it in each period's few seconds of rounds and shares.
        p.extra.push(("HEARSAY_P2P__MAX_REQUESTS_PER_MINUTE".into(), "2000".into()));
    }
    // Not a member: it only follows the community, and learns its results over gossip.
    let mut follower = Peer::new(dir.path(), "follower");
    let count = members();
    let mut members: Vec<Peer> = (0..count).map(|i| Peer::new(dir.path(), &format!("home{i}"))).collect();
    for p in members.iter_mut().chain([&mut leader, &mut helper, &mut follower]) {
        p.extra.extend(times.iter().cloned());
    }
    leader.cli(&[&["community", "create", "Homes"][..], &SHORT_PERIOD_FLOOR].concat());
    // ε 20 per period: noise of scale 0.1 per aggregator, so the test reads exact counts.
    leader.cli(&[
        "community",
        "secure",
        "Homes",
        "--leader",
        &leader.id,
        "--helper",
        &helper.id,
        "--epsilon",
        "20",
        "--min-users",
        "10",
        "--min-nodes",
        "3",
        "--min-listeners",
        "5",
        "--vocabulary",
        "50",
        "--period",
        &period_secs.to_string(),
    ]);
    for p in std::iter::once(&helper).chain(&members) {
        let ticket = leader.cli(&["community", "invite", "Homes", "--node", &p.id]);
        p.cli(&["community", "join", ticket.trim()]);
    }
    let ticket = leader.cli(&["community", "invite", "Homes"]);
    follower.cli(&["community", "follow", ticket.trim()]);
    // A member that cheats (it runs no node: the manifest lists its key, that is all).
    let rogue_key = libp2p::identity::Keypair::generate_ed25519();
    leader.cli(&["community", "invite", "Homes", "--node", &rogue_key.public().to_peer_id().to_string()]);
    let community = {
        let store = hearsay::store::Store::open(&leader.data, &hearsay::store::Options::default()).expect("open");
        store.followed().expect("followed").into_iter().next().expect("one community").0
    };
    let curator = user_with_token(&leader.data, dir.path(), "curator", "public");
    let tokens: Vec<String> = members
        .iter()
        .enumerate()
        .map(|(i, p)| user_with_token(&p.data, dir.path(), &format!("u{i}"), "aggregate"))
        .collect();

    let mut nl = leader.start();
    let mut nh = Some(helper.start());
    let nodes: Vec<NodeProcess> = members.iter().map(Peer::start).collect();
    let nf = follower.start();
    // Let the members find the helper (through the leader's directory).
    std::thread::sleep(Duration::from_secs(4));

    let p = fresh_period();
    scrobble(&nodes, &tokens, (&nl, &curator), p + 1);
    // From the period's start: its end, the protocol's delays, and a margin.
    let within = Duration::from_secs(period_secs as u64) + due() + Duration::from_secs(45);
    let rogue = rogue_member::spawn(rogue_member::Target {
        key: rogue_key,
        leader: leader.address(),
        helper: helper.address(),
        community,
        period: p,
        within,
    });
    let secure = wait_secure(&nodes[0].url, p, within)
        .unwrap_or_else(|| panic!("no secure result for {p}: {:#}", network(&nodes[0].url, p)));
    let alpha = listeners(&secure, "artists", "shared alpha").expect("Shared Alpha is in the private chart");
    // The members' users and the rogue's one valid report; none of its bad ones (the
    // count above 1 alone would add 7). ε 20: noise of scale 0.1 per aggregator.
    assert!(
        (count as i64..=count as i64 + 2).contains(&alpha),
        "{count} users and one valid rogue report, little noise: {alpha} ({secure:#})"
    );
    let answers = rogue.join().expect("the rogue member");
    eprintln!("the rogue member's answers: {answers:?}");
    assert!(answers.round, "a member gets the round");
    let submitted: Vec<_> = answers.submitted.iter().filter(|(_, accepted, _)| *accepted == 4).collect();
    assert_eq!(submitted.len(), 2, "each aggregator took the four well-formed shares in: {answers:?}");
    for leads in [true, false] {
        let later = answers.submitted.iter().find(|(l, a, _)| *l == leads && *a != 4).expect("the later submit");
        assert_eq!(later.1, 1, "the replayed valid share counts as a retry, nothing more: {later:?}");
        assert_eq!(later.2.len(), 2, "the cut share and the other round's are refused on arrival: {later:?}");
        assert!(later.2.iter().any(|r| r.contains("another round")), "{later:?}");
    }
    // The release says only that the minimum batch was met: an exact count of reports
    // would move by one with one user, outside the noise.
    assert_eq!(secure["min_users"], 10, "{secure:#}");
    assert!(secure.get("reports").is_none() && secure.get("nodes").is_none());
    assert!(listeners(&secure, "artists", "shared beta").is_none(), "nobody at the aggregate level played Beta");
    let names = secure.to_string().to_lowercase();
    assert!(!names.contains("solo artist"), "unpublished items are not in the vocabulary: {secure:#}");
    // No member could have published its user alone: its own DP section is empty.
    for n in &nodes {
        let release = release_of(&n.url, p, Duration::from_secs(20));
        let text = String::from_utf8_lossy(&release).to_lowercase();
        assert!(!text.contains("shared alpha"), "a single-user node's own release names nothing");
    }
    // Every member and the helper show the same signed result.
    for url in std::iter::once(&nodes[count - 1].url).chain(std::iter::once(&nl.url)) {
        let other = wait_secure(url, p, Duration::from_secs(30)).expect("result everywhere");
        assert_eq!(other["chart"], secure["chart"]);
    }
    eprintln!("period {p}: the private chart reached a member {:.1} s after the period ended", ended(p));
    // A follower never reports nor fetches (only members may): the result came by gossip.
    let gossiped = wait_secure(&nf.url, p, Duration::from_secs(30)).expect("the result reaches a follower");
    assert_eq!(gossiped["chart"], secure["chart"]);
    drop(nf);
    // Each user sees on their privacy page what their node sent for them.
    let (_, cookie, _) = crate::web::login_post(&nodes[0].url, "u0", "password123");
    let session = cookie.expect("logged in").split(';').next().expect("cookie").to_owned();
    let (status, page) = crate::web::get(&format!("{}/privacy", nodes[0].url), Some(&session));
    assert_eq!(status, 200);
    let mine = page.split("Community reports sent for you").nth(1).expect("the section").to_lowercase();
    assert!(mine.contains("shared alpha") && mine.contains("<td>20</td>"), "the items and the ε charged: {page}");
    let (_, anonymous) = crate::web::get(&format!("{}/privacy", nodes[0].url), None);
    assert!(!anonymous.contains("Community reports sent for you"), "shown to the user only");

    // Both aggregators stopped for a moment: what they stored for the first period is
    // inspected now (the store is pruned once the period is past the window). The
    // leader comes back at once; the helper stays away.
    drop(nh.take());
    drop(nl);
    inspect_aggregators(&leader, &helper, p, count);
    nl = leader.start();

    // The helper stopped: members cannot give it their shares and nothing is released.
    let p2 = fresh_period();
    scrobble(&nodes, &tokens, (&nl, &curator), p2 + 1);
    // With both aggregators up, the chart reaches the members about 12 s after the
    // period ends (its round at +5 s, verification at +11 s, gossip right after, the
    // members' fetch from +15 s, with 2-second sync ticks); 26 s is well past that.
    std::thread::sleep(Duration::from_secs_f64(period_secs as f64 + due().as_secs_f64() + 11.0));
    assert!(secure_chart(&nodes[0].url, p2).is_none(), "no release without the helper");
    assert!(secure_chart(&nl.url, p2).is_none(), "not even at the leader");

    // Restarted: the next period releases.
    nh = Some(helper.start());
    std::thread::sleep(Duration::from_secs(4));
    let p3 = fresh_period();
    scrobble(&nodes, &tokens, (&nl, &curator), p3 + 1);
    let again = wait_secure(&nodes[0].url, p3, within)
        .unwrap_or_else(|| panic!("no secure result after the restart: {:#}", network(&nodes[0].url, p3)));
    eprintln!(
        "period {p3}: after the helper's restart, the private chart reached a member {:.1} s after the period ended",
        ended(p3)
    );
    assert!(listeners(&again, "artists", "shared alpha").is_some_and(|n| n >= 10), "{again:#}");

    drop(nodes);
    drop((nl, nh));
    inspect_received(&audits, count);
}

/// Small integers (|x| ≤ 1,000, as field elements) among the 16-byte Field128
/// elements of `bytes`: a count in the clear is one; a share of one is uniformly random.
fn clear_elements(bytes: &[u8]) -> usize {
    use prio::field::{Field128, FieldElementWithInteger};
    let p = Field128::modulus();
    bytes
        .chunks_exact(16)
        .map(|c| u128::from_le_bytes(c.try_into().expect("16")))
        .filter(|x| *x <= 1_000 || (*x < p && *x >= p - 1_000))
        .count()
}

/// Everything both aggregators received, from their audit directories: shares, the
/// other aggregator's verifier shares and noised aggregate share, public rounds and
/// results. No message carries counts or names in the clear.
fn inspect_received(audits: &[std::path::PathBuf; 2], count: usize) {
    use hearsay::p2p::secagg::{Received, SecaggRequest, SecaggResponse};
    for (who, dir) in ["leader", "helper"].iter().zip(audits) {
        let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
        for entry in std::fs::read_dir(dir).expect("the audit directory") {
            let path = entry.expect("entry").path();
            let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).expect("meta").permissions());
            assert_eq!(mode & 0o777, 0o600, "{}: only the node's user reads an audit file", path.display());
            let bytes = std::fs::read(&path).expect("read");
            let received: Received = postcard::from_bytes(&bytes).expect("an audit file decodes");
            let (kind, secret): (&str, Vec<&[u8]>) = match &received {
                Received::Request(SecaggRequest::Submit { shares, .. }) => {
                    ("submit", shares.iter().flat_map(|s| [&s.input_share[..], &s.public_share[..]]).collect())
                }
                Received::Request(SecaggRequest::Verify { shares, .. }) => {
                    ("verify", shares.iter().map(|(_, b)| &b[..]).collect())
                }
                Received::Request(SecaggRequest::Finish { leader_aggregate, .. }) => {
                    ("finish", vec![&leader_aggregate[..]])
                }
                Received::Response(SecaggResponse::Verdicts { messages, .. }) => {
                    ("verdicts", messages.iter().filter_map(|(_, m)| m.as_ref().map(|b| &b[..])).collect())
                }
                Received::Response(SecaggResponse::Cosigned { aggregate, .. }) => ("cosigned", vec![&aggregate[..]]),
                // Public: rounds (the vocabulary), results, and the protocol's answers.
                Received::Request(SecaggRequest::Round { .. }) => ("round?", vec![]),
                Received::Request(SecaggRequest::Result { .. }) => ("result?", vec![]),
                Received::Response(r) => (
                    match r {
                        SecaggResponse::Round(_) => "round",
                        SecaggResponse::Submitted { .. } => "submitted",
                        SecaggResponse::Result(_) => "result",
                        SecaggResponse::Closed(_) => "closed",
                        _ => "error",
                    },
                    vec![],
                ),
            };
            *kinds.entry(kind).or_default() += 1;
            for part in secret {
                assert!(clear_elements(part) <= 1, "{who} received a {kind} with counts in the clear");
                // Names travel only in the public rounds and results.
                let text = String::from_utf8_lossy(part).to_lowercase();
                assert!(!text.contains("alpha") && !text.contains("solo"), "{who}: a name in a {kind}");
            }
        }
        eprintln!("{who} received: {kinds:?}");
        assert!(kinds.get("submit").is_some_and(|n| *n >= count), "{who}: every member's shares ({kinds:?})");
        if *who == "helper" {
            assert!(kinds.contains_key("verify") && kinds.contains_key("finish"), "{kinds:?}");
        } else {
            assert!(kinds.contains_key("verdicts") && kinds.contains_key("cosigned"), "{kinds:?}");
        }
    }
}

/// Everything the aggregators stored for the first period: shares that are uniformly
/// random on their own, a noised aggregate, the public round and the released result.
fn inspect_aggregators(leader: &Peer, helper: &Peer, p: i64, count: usize) {
    use hearsay::federation::secagg::RoundV1;
    use prio::codec::ParameterizedDecode;
    use prio::vdaf::prio3::Prio3InputShare;
    for (who, peer, agg_id) in [("leader", leader, 0usize), ("helper", helper, 1usize)] {
        let store = hearsay::store::Store::open(&peer.data, &hearsay::store::Options::default()).expect("open");
        let (cid, _) = store.followed().expect("followed").into_iter().next().expect("one community");
        let signed = store.secagg_round(&cid, p).expect("read").expect("the round is held");
        let env =
            hearsay::envelope::open_signed(&signed, hearsay::envelope::DST_SECURE_ROUND, 1 << 22).expect("signed");
        let round = RoundV1::decode(&env.body).expect("round");
        let vdaf = round.vdaf().expect("vdaf");
        let shares = store.secagg_shares(&round.id()).expect("shares");
        // One share per user, and the rogue member's four well-formed ones.
        assert_eq!(shares.len(), count + 4, "{who} holds one share per user and the rogue's four");
        let nodes: std::collections::BTreeSet<_> = shares.values().map(|h| h.node).collect();
        assert_eq!(nodes.len(), count + 1, "the home nodes and the rogue");
        for held in shares.values() {
            let share =
                Prio3InputShare::get_decoded_with_param(&(&vdaf, agg_id), &held.share.input_share).expect("decodes");
            let bytes = prio::codec::Encode::get_encoded(&share).expect("encode");
            if agg_id == 0 {
                // The leader's share carries field elements: were they the user's vector,
                // each would be 0 or 1.
                let small = bytes[..16 * round.len()]
                    .chunks(16)
                    .filter(|c| u128::from_le_bytes((*c).try_into().expect("16")) <= 1)
                    .count();
                assert!(small <= 1, "{who}: a share in the clear ({small} of {} elements are 0 or 1)", round.len());
            } else {
                assert!(bytes.len() <= 64, "{who}: the helper's share is a seed, {} bytes", bytes.len());
            }
            // No stored share names any item: names only ever travel in the public round.
            let text = String::from_utf8_lossy(&held.share.input_share).to_lowercase();
            assert!(!text.contains("alpha") && !text.contains("solo"));
        }
        if agg_id == 1 {
            // The three reports beyond the bounds failed verification: only the users'
            // and the rogue's valid one were summed.
            let agg = store.secagg_aggregate(&round.id()).expect("read").expect("the helper's aggregate");
            assert_eq!(agg.accepted as usize, count + 1, "count above 1, more than 2·L0 items, broken proof: rejected");
        }
        if agg_id == 0 {
            assert!(store.secure_result(&cid, p).expect("read").is_some(), "the leader holds the released result");
        } else {
            let agg = store.secagg_aggregate(&round.id()).expect("read").expect("the helper's aggregate");
            assert!(agg.finished.is_some(), "the helper signed the period's one result");
        }
    }
}

/// A member node that cheats, over the network: the node's own libp2p behaviour under
/// a key the manifest lists as a member. It asks the leader for the period's round,
/// then sends each aggregator its shares of reports the honest client refuses to make
/// (real Prio3 sharding and proofs over bad encodings, `federation::secagg::dishonest`):
/// a count above 1, more than 2·L0 items, a broken proof; one valid report; then a
/// share cut short and one naming another round (refused on arrival), and the valid
/// report again (a replay).
mod rogue_member {
    use std::time::Duration;

    use futures::StreamExt;
    use hearsay::federation::secagg::dishonest::{encoded, shard_raw};
    use hearsay::federation::secagg::{ClientReport, RoundV1, ShareV1, shard};
    use hearsay::p2p::behaviour::BehaviourEvent;
    use hearsay::p2p::secagg::{SecaggRequest, SecaggResponse};
    use libp2p::request_response::{self, OutboundRequestId};
    use libp2p::swarm::SwarmEvent;
    use libp2p::{Multiaddr, PeerId};
    use serde_bytes::ByteBuf;

    /// What the aggregators answered the rogue's submissions.
    #[derive(Debug, Default)]
    pub struct Answers {
        pub round: bool,
        /// (to the leader, accepted, refused reasons) per `Submit`.
        pub submitted: Vec<(bool, u32, Vec<String>)>,
        /// Anything else that happened (for a failure's message).
        pub log: Vec<String>,
    }

    /// Whom the rogue member attacks, in which community period, for how long at most.
    pub struct Target {
        pub key: libp2p::identity::Keypair,
        pub leader: Multiaddr,
        pub helper: Multiaddr,
        pub community: [u8; 32],
        pub period: i64,
        pub within: Duration,
    }

    pub fn spawn(target: Target) -> std::thread::JoinHandle<Answers> {
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(run(target))
        })
    }

    fn peer_of(a: &Multiaddr) -> PeerId {
        a.iter()
            .find_map(|p| match p {
                libp2p::multiaddr::Protocol::P2p(id) => Some(id),
                _ => None,
            })
            .expect("a /p2p address")
    }

    /// The bad reports, the valid one, and what goes to each aggregator, in order.
    fn reports(round: &RoundV1) -> (Vec<ShareV1>, Vec<ShareV1>, Vec<ShareV1>, Vec<ShareV1>) {
        let len = round.len();
        let alpha = round.artists.iter().position(|n| n.artist == "shared alpha").expect("alpha in the vocabulary");
        let others: Vec<usize> = (0..len).filter(|i| *i != alpha).collect();
        let bits = |on: &[usize]| -> Vec<bool> { (0..len).map(|i| on.contains(&i)).collect() };
        let id = || {
            let mut r = [0u8; 16];
            getrandom::getrandom(&mut r).expect("random");
            r
        };
        let mut above_c = encoded(round, &bits(&[alpha])).expect("encode");
        above_c[alpha] = 7;
        let max = round.params.max_weight();
        let mut over_l0 = encoded(round, &bits(&[&[alpha][..], &others[..max - 1]].concat())).expect("encode");
        over_l0[others[max - 1]] = 1;
        let mut bad_proof = shard(round, &bits(&[alpha]), id()).expect("shard");
        let at = 16 * (len + 3) + 5;
        bad_proof.leader.input_share[at] ^= 1;
        let valid = shard_raw(round, encoded(round, &bits(&[alpha])).expect("encode"), id()).expect("shard");
        let bad: Vec<ClientReport> = vec![
            shard_raw(round, above_c, id()).expect("shard"),
            shard_raw(round, over_l0, id()).expect("shard"),
            bad_proof,
            valid.clone(),
        ];
        let mut short = shard(round, &bits(&[]), id()).expect("shard");
        short.leader.input_share.truncate(10);
        short.helper.input_share.truncate(10);
        let other = shard(round, &bits(&[]), id()).expect("shard");
        let elsewhere = |s: &ShareV1| ShareV1 { round: [9; 32], ..s.clone() };
        let to_leader = bad.iter().map(|r| r.leader.clone()).collect();
        let to_helper = bad.iter().map(|r| r.helper.clone()).collect();
        let later_leader = vec![short.leader, elsewhere(&other.leader), valid.leader];
        let later_helper = vec![short.helper, elsewhere(&other.helper), valid.helper];
        (to_leader, to_helper, later_leader, later_helper)
    }

    async fn run(Target { key, leader, helper, community, period, within }: Target) -> Answers {
        let mut s = crate::federation::rogue::swarm_with(key);
        let (lp, hp) = (peer_of(&leader), peer_of(&helper));
        s.dial(leader).expect("dial the leader");
        s.dial(helper).expect("dial the helper");
        let mut answers = Answers::default();
        let mut asking: Option<OutboundRequestId> = None;
        let mut submits: Vec<(OutboundRequestId, bool)> = Vec::new();
        let mut later: Option<(Vec<u8>, Vec<ShareV1>, Vec<ShareV1>)> = None;
        let deadline = tokio::time::Instant::now() + within;
        // The leader makes the round `result_delay` (5 s here) after the period ends.
        let (period_secs, _) = super::timing();
        let asks_from = tokio::time::Instant::now()
            + Duration::from_secs_f64((period + period_secs + 5) as f64 - super::now()).max(Duration::ZERO);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let event = tokio::select! {
                e = s.select_next_some() => e,
                _ = tick.tick() => {
                    let due = tokio::time::Instant::now() >= asks_from;
                    if due && !answers.round && asking.is_none() && s.is_connected(&lp) {
                        asking = Some(s.behaviour_mut().secagg.send_request(&lp, SecaggRequest::Round { community, period }));
                    }
                    if answers.submitted.len() >= 4 {
                        break;
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(deadline) => break,
            };
            let message = match event {
                SwarmEvent::Behaviour(BehaviourEvent::Secagg(request_response::Event::Message { message, .. })) => {
                    message
                }
                SwarmEvent::Behaviour(BehaviourEvent::Secagg(e)) => {
                    answers.log.push(format!("{e:?}"));
                    continue;
                }
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    answers.log.push(format!("connected to {peer_id}"));
                    continue;
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    answers.log.push(format!("dial: {error}"));
                    continue;
                }
                _ => continue,
            };
            let request_response::Message::Response { request_id, response } = message else { continue };
            if Some(request_id) == asking {
                asking = None;
                let SecaggResponse::Round(bytes) = response else {
                    answers.log.push(format!("round: {response:?}"));
                    continue;
                };
                answers.round = true;
                let env = hearsay::envelope::open_signed(&bytes, hearsay::envelope::DST_SECURE_ROUND, 1 << 22)
                    .expect("a signed round");
                let round = RoundV1::decode(&env.body).expect("round");
                let (to_leader, to_helper, later_leader, later_helper) = reports(&round);
                for (peer, shares, leads) in [(lp, to_leader, true), (hp, to_helper, false)] {
                    let request = SecaggRequest::Submit { round: bytes.clone(), shares };
                    submits.push((s.behaviour_mut().secagg.send_request(&peer, request), leads));
                }
                later = Some((bytes.into_vec(), later_leader, later_helper));
                continue;
            }
            let Some(&(_, leads)) = submits.iter().find(|(id, _)| *id == request_id) else { continue };
            if let SecaggResponse::Submitted { accepted, refused } = response {
                answers.submitted.push((leads, accepted, refused));
            }
            // After the first two answers: the malformed shares and the replay.
            if answers.submitted.len() == 2
                && let Some((bytes, l, h)) = later.take()
            {
                for (peer, shares, leads) in [(lp, l, true), (hp, h, false)] {
                    let request = SecaggRequest::Submit { round: ByteBuf::from(bytes.clone()), shares };
                    submits.push((s.behaviour_mut().secagg.send_request(&peer, request), leads));
                }
            }
        }
        answers
    }
}
