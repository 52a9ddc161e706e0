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
use crate::privacy::{fresh_period, release_of, submit, user_with_token};
use crate::support::NodeProcess;

/// Home nodes: 12, or `HEARSAY_SECAGG_NODES` (the closing note's 50-node figure).
fn members() -> usize {
    std::env::var("HEARSAY_SECAGG_NODES").ok().and_then(|v| v.parse().ok()).unwrap_or(12)
}

/// Seconds since the 4-second period starting at `p` ended.
fn ended(p: i64) -> f64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64();
    now - (p + 4) as f64
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
    let mut leader = Peer::new(dir.path(), "leader");
    let mut helper = Peer::new(dir.path(), "helper");
    let audits = [dir.path().join("leader-audit"), dir.path().join("helper-audit")];
    for (p, audit) in [(&mut leader, &audits[0]), (&mut helper, &audits[1])] {
        p.extra.push(("HEARSAY_P2P__SECAGG_AUDIT_DIR".into(), audit.display().to_string()));
    }
    // Not a member: it only follows the community, and learns its results over gossip.
    let follower = Peer::new(dir.path(), "follower");
    let count = members();
    let members: Vec<Peer> = (0..count).map(|i| Peer::new(dir.path(), &format!("home{i}"))).collect();
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
    ]);
    for p in std::iter::once(&helper).chain(&members) {
        let ticket = leader.cli(&["community", "invite", "Homes", "--node", &p.id]);
        p.cli(&["community", "join", ticket.trim()]);
    }
    let ticket = leader.cli(&["community", "invite", "Homes"]);
    follower.cli(&["community", "follow", ticket.trim()]);
    let curator = user_with_token(&leader.data, dir.path(), "curator", "public");
    let tokens: Vec<String> = members
        .iter()
        .enumerate()
        .map(|(i, p)| user_with_token(&p.data, dir.path(), &format!("u{i}"), "aggregate"))
        .collect();

    let nl = leader.start();
    let mut nh = Some(helper.start());
    let nodes: Vec<NodeProcess> = members.iter().map(Peer::start).collect();
    let nf = follower.start();
    // Let the members find the helper (through the leader's directory).
    std::thread::sleep(Duration::from_secs(4));

    let p = fresh_period();
    scrobble(&nodes, &tokens, (&nl, &curator), p + 1);
    let secure = wait_secure(&nodes[0].url, p, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("no secure result for {p}: {:#}", network(&nodes[0].url, p)));
    let alpha = listeners(&secure, "artists", "shared alpha").expect("Shared Alpha is in the private chart");
    assert!(
        (count as i64 - 2..=count as i64 + 2).contains(&alpha),
        "{count} users, little noise: {alpha} ({secure:#})"
    );
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

    // The helper stopped: members cannot give it their shares and nothing is released.
    drop(nh.take());
    let p2 = fresh_period();
    scrobble(&nodes, &tokens, (&nl, &curator), p2 + 1);
    // With both aggregators up, the chart reaches the members about 18 s after the
    // period ends (its round at +5 s, verification at +11 s, the members' fetch at
    // +15 s with 2-second sync ticks); 26 s is well past that.
    std::thread::sleep(Duration::from_secs(30));
    assert!(secure_chart(&nodes[0].url, p2).is_none(), "no release without the helper");
    assert!(secure_chart(&nl.url, p2).is_none(), "not even at the leader");

    // Restarted: the next period releases.
    nh = Some(helper.start());
    std::thread::sleep(Duration::from_secs(4));
    let p3 = fresh_period();
    scrobble(&nodes, &tokens, (&nl, &curator), p3 + 1);
    let again = wait_secure(&nodes[0].url, p3, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("no secure result after the restart: {:#}", network(&nodes[0].url, p3)));
    eprintln!(
        "period {p3}: after the helper's restart, the private chart reached a member {:.1} s after the period ended",
        ended(p3)
    );
    assert!(listeners(&again, "artists", "shared alpha").is_some_and(|n| n >= 10), "{again:#}");

    drop(nodes);
    drop((nl, nh));
    inspect_aggregators(&leader, &helper, p, count);
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
            let bytes = std::fs::read(entry.expect("entry").path()).expect("read");
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
        assert_eq!(shares.len(), count, "{who} holds one share per user");
        let nodes: std::collections::BTreeSet<_> = shares.values().map(|h| h.node).collect();
        assert_eq!(nodes.len(), count, "one report per home node");
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
            let agg = store.secagg_aggregate(&round.id()).expect("read").expect("the helper's aggregate");
            assert_eq!(agg.accepted as usize, count);
        }
        if agg_id == 0 {
            assert!(store.secure_result(&cid, p).expect("read").is_some(), "the leader holds the released result");
        } else {
            let agg = store.secagg_aggregate(&round.id()).expect("read").expect("the helper's aggregate");
            assert!(agg.finished.is_some(), "the helper signed the period's one result");
        }
    }
}
