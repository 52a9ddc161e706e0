//! What leaves a node: a real node with users at all three sharing levels scrobbles
//! through the ListenBrainz API; after the (4-second) period closes, every published
//! byte is inspected. And the data-minimisation audit: no IP address, user agent, token
//! or listen ends up on disk or in the logs unless it is the user's own data.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{NodeProcess, hearsay};

/// Loose parameters so a handful of users can pass the threshold (k = 2, L0 = 3, ε 100
/// per chart for listeners, so τ = 3), a 4-second period, and budgets for many periods
/// (every aggregate user is charged every period).
pub const SHORT_PERIODS: &[(&str, &str)] = &[
    ("HEARSAY_PRIVACY__PERIOD_SECS", "4"),
    ("HEARSAY_PRIVACY__GRACE_SECS", "1"),
    ("HEARSAY_PRIVACY__BACKFILL_PERIODS", "0"),
    ("HEARSAY_PRIVACY__K", "2"),
    ("HEARSAY_PRIVACY__L0", "3"),
    ("HEARSAY_PRIVACY__EPSILON_LISTENERS", "100"),
    ("HEARSAY_PRIVACY__EPSILON_LISTENS", "50"),
    ("HEARSAY_PRIVACY__DELTA", "0.000000001"),
    ("HEARSAY_PRIVACY__WEEK_EPSILON_BUDGET", "100000000"),
    ("HEARSAY_PRIVACY__WEEK_DELTA_BUDGET", "0.5"),
    ("HEARSAY_PRIVACY__YEAR_EPSILON_BUDGET", "100000000"),
    ("HEARSAY_PRIVACY__YEAR_DELTA_BUDGET", "0.5"),
];

pub fn user_with_token(data: &Path, dir: &Path, name: &str, level: &str) -> String {
    let pw = dir.join("pw");
    std::fs::write(&pw, "password123\n").expect("pw");
    let (code, _, err) = hearsay(data, &["user", "add", name, "--password-file", pw.to_str().expect("utf8")]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = hearsay(data, &["user", "set-visibility", name, level]);
    assert_eq!(code, 0, "{err}");
    let (code, token, err) = hearsay(data, &["token", "new", name]);
    assert_eq!(code, 0, "{err}");
    token.trim().to_owned()
}

pub fn submit(url: &str, token: &str, listens: &[(&str, &str, i64)]) {
    let payload: Vec<Value> = listens
        .iter()
        .map(|(artist, title, at)| {
            json!({"listened_at": at, "track_metadata": {"artist_name": artist, "track_name": title}})
        })
        .collect();
    let r = ureq::post(&format!("{url}/1/submit-listens"))
        .set("Authorization", &format!("Token {token}"))
        .set("User-Agent", "canary-agent-7f3e/1.0")
        .set("X-Forwarded-For", "203.0.113.77")
        .set("Content-Type", "application/json")
        .send_string(&json!({"listen_type": "import", "payload": payload}).to_string())
        .expect("submit");
    assert_eq!(r.status(), 200);
}

fn get_json(url: &str) -> Value {
    serde_json::from_str(&ureq::get(url).call().expect("get").into_string().expect("body")).expect("json")
}

const EPOCH_MONDAY: i64 = 4 * 86_400;

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64()
}

/// Waits for a fresh 4-second period to begin and returns its start.
pub fn fresh_period() -> i64 {
    let t = now();
    let next = EPOCH_MONDAY as f64 + (((t - EPOCH_MONDAY as f64) / 4.0).floor() + 1.0) * 4.0;
    std::thread::sleep(Duration::from_secs_f64(next - t + 0.05));
    next as i64
}

pub fn release_of(url: &str, period: i64, within: Duration) -> Vec<u8> {
    let deadline = Instant::now() + within;
    loop {
        match ureq::get(&format!("{url}/releases/{period}")).call() {
            Ok(r) => {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut r.into_reader(), &mut bytes).expect("body");
                return bytes;
            }
            Err(ureq::Error::Status(404, _)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("release of {period}: {e}"),
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    let hay = String::from_utf8_lossy(haystack).to_lowercase();
    hay.contains(&needle.to_lowercase())
}

#[test]
fn a_node_with_all_three_levels_publishes_only_what_each_allows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let public = user_with_token(&data, dir.path(), "pia", "public");
    let private = user_with_token(&data, dir.path(), "quentin", "private");
    let aggregate: Vec<String> =
        (0..4).map(|i| user_with_token(&data, dir.path(), &format!("agg{i}"), "aggregate")).collect();
    let node = NodeProcess::start_with(&data, SHORT_PERIODS);
    let health = get_json(&format!("{}/health", node.url));

    let p = fresh_period();
    submit(
        &node.url,
        &public,
        &[("Open Skies", "Daylight", p), ("Open Skies", "Noon", p + 1), ("Shared Band", "Hit", p)],
    );
    submit(&node.url, &private, &[("Zq Hidden Artist", "Zq Secret Song", p), ("Shared Band", "Hit", p + 1)]);
    for (i, token) in aggregate.iter().enumerate() {
        let solo = format!("Solo Xv{i}");
        submit(
            &node.url,
            token,
            &[("Shared Band", "Hit", p), ("Shared Band", "B-side", p + 1), (&solo, "Alone", p + 2)],
        );
    }

    let bytes = release_of(&node.url, p, Duration::from_secs(20));
    let (envelope, snap) = hearsay::envelope::open_snapshot(&bytes).expect("verifies");
    // The origin is this node: its PeerId embeds the signing key.
    let mut mh = vec![0x00, 36, 0x08, 0x01, 0x12, 0x20];
    mh.extend_from_slice(&envelope.signer);
    assert_eq!(bs58::encode(mh).into_string(), health["peer_id"].as_str().expect("peer id"));
    assert_eq!((snap.period_start, snap.period_secs, snap.version), (p, 4, 1));

    // Public section: exactly the public user's counts.
    let public_artists: Vec<(String, i64, i64)> =
        snap.public.artists.iter().map(|e| (e.name.artist.clone(), e.listeners, e.listens)).collect();
    assert_eq!(public_artists.len(), 2, "{public_artists:?}");
    assert!(public_artists.contains(&("Open Skies".into(), 1, 2)), "{public_artists:?}");
    assert!(public_artists.contains(&("Shared Band".into(), 1, 1)), "{public_artists:?}");
    // Aggregate section: only items with ≥ k real listeners among the aggregate users.
    assert!(snap.aggregate.artists.iter().all(|e| e.name.artist == "shared band" && e.listeners >= snap.tau));
    assert!(
        snap.aggregate.tracks.iter().all(|e| e.name.artist == "shared band" && e.listeners >= snap.tau),
        "{:?}",
        snap.aggregate.tracks
    );

    // Every name in every entry is one this test allowed out.
    let allowed: BTreeSet<&str> =
        ["Open Skies", "Shared Band", "Daylight", "Noon", "Hit", "B-side", "shared band", "hit", "b-side"].into();
    for e in [&snap.public, &snap.aggregate].iter().flat_map(|c| c.artists.iter().chain(c.tracks.iter())) {
        assert!(allowed.contains(e.name.artist.as_str()), "{:?}", e.name);
        assert!(e.name.title.as_deref().is_none_or(|t| allowed.contains(t)), "{:?}", e.name);
    }
    // And no byte carries the private user, a lone aggregate listener, a user name or a
    // token.
    for needle in ["Zq Hidden", "Zq Secret", "Solo Xv", "quentin", "agg0", "pia", "canary-agent", "203.0.113"] {
        assert!(!contains(&bytes, needle), "{needle} is in the published bytes");
    }
    for token in aggregate.iter().chain([&public, &private]) {
        assert!(!contains(&bytes, token), "a token is in the published bytes");
    }

    // Re-served unchanged, listed, and never re-made: a late listen for the closed
    // period changes nothing, also after a restart.
    submit(&node.url, &public, &[("Open Skies", "Late", p + 2)]);
    let list = get_json(&format!("{}/releases", node.url));
    assert!(list["releases"].as_array().expect("array").iter().any(|r| r["period_start"] == p));
    assert_eq!(node.terminate(), Some(0));
    let node = NodeProcess::start_with(&data, SHORT_PERIODS);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(release_of(&node.url, p, Duration::from_secs(1)), bytes, "a release is re-served byte for byte");

    // The transparency page shows the release to anyone.
    let html = ureq::get(&format!("{}/privacy", node.url)).call().expect("privacy").into_string().expect("html");
    assert!(html.contains("Open Skies") && html.contains("threshold τ"), "{html}");
    assert!(!html.contains("Zq Hidden"));
    node.terminate();
}

fn all_bytes_under(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            all_bytes_under(&path, out);
        } else {
            out.push((path.display().to_string(), std::fs::read(&path).expect("read")));
        }
    }
}

#[test]
fn no_ip_address_user_agent_or_token_is_stored_or_logged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // The files are searched for what must not be stored.
    crate::support::uncompressed_store(&data);
    let token = user_with_token(&data, dir.path(), "alice", "aggregate");
    let log = dir.path().join("node.log");
    let node = NodeProcess::start_logging(&data, &[("HEARSAY_NODE__LOG", "debug")], &log);
    let at = now() as i64 - 600;
    submit(&node.url, &token, &[("Canary Artist Kq", "Canary Title Kq", at)]);
    // A failed log-in and a bad token, from a "remote" address.
    let _ = ureq::get(&format!("{}/1/validate-token", node.url))
        .set("Authorization", "Token not-a-real-token-canary")
        .set("User-Agent", "canary-agent-7f3e/1.0")
        .call();
    let _ = ureq::get(&format!("{}/?hs=true&p=1.2.1&c=tst&v=1&u=alice&t=1&a=canaryauth", node.url))
        .set("User-Agent", "canary-agent-7f3e/1.0")
        .set("X-Forwarded-For", "203.0.113.77")
        .call();
    assert_eq!(node.terminate(), Some(0));

    let mut files = Vec::new();
    all_bytes_under(&data, &mut files);
    assert!(files.len() > 3, "the data dir holds the database");
    // The search can find what is stored: the listen's artist.
    assert!(files.iter().any(|(_, bytes)| contains(bytes, "Canary Artist Kq")), "the search is blind");
    for (path, bytes) in &files {
        for needle in ["canary-agent", "203.0.113", "127.0.0.1", &token, "not-a-real-token", "canaryauth"] {
            assert!(!contains(bytes, needle), "{needle} is stored in {path}");
        }
    }
    let logged = std::fs::read(&log).expect("log");
    assert!(contains(&logged, "node started"), "the log was captured: {}", String::from_utf8_lossy(&logged));
    // Not a terminal: plain text, no colour escape codes (before, every line had them).
    assert!(!logged.contains(&0x1b), "escape codes in a log file:\n{}", String::from_utf8_lossy(&logged));
    for needle in
        ["Canary Artist", "Canary Title", "canary-agent", "203.0.113", &token, "not-a-real-token", "canaryauth"]
    {
        assert!(!contains(&logged, needle), "{needle} is in the log:\n{}", String::from_utf8_lossy(&logged));
    }
}

/// A one-user home node publishes one release every period, whether or not its user
/// listened: the release's existence and size say nothing of activity. Its one
/// aggregate user is below τ, so no period charges them (their budget stays for a
/// community's secure aggregation): every period alike, each record saying why.
#[test]
fn a_one_user_node_releases_every_period_whatever_the_activity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let token = user_with_token(&data, dir.path(), "solo", "aggregate");
    let node = NodeProcess::start_with(&data, SHORT_PERIODS);
    let first = fresh_period();
    // Listens in periods 0 and 2, none in 1 and 3.
    let periods: Vec<i64> = (0..4).map(|i| first + 4 * i).collect();
    for (i, p) in periods.iter().enumerate() {
        let wait = *p as f64 - now();
        if wait > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(wait + 0.05));
        }
        if i % 2 == 0 {
            submit(&node.url, &token, &[("Lonely Band", "Song", *p), ("Lonely Band", "Other", *p + 1)]);
        }
    }
    let releases: Vec<Vec<u8>> = periods.iter().map(|p| release_of(&node.url, *p, Duration::from_secs(20))).collect();
    let sizes: Vec<usize> = releases.iter().map(Vec::len).collect();
    eprintln!("release sizes over periods with, without, with, without listens: {sizes:?}");
    assert!(sizes.iter().all(|s| *s == sizes[0]), "sizes depend on activity: {sizes:?}");
    for (bytes, p) in releases.iter().zip(&periods) {
        let (_, snap) = hearsay::envelope::open_snapshot(bytes).expect("verifies");
        assert_eq!(snap.period_start, *p);
        assert!(snap.aggregate.artists.is_empty() && snap.public.artists.is_empty(), "one user is below k");
        assert!(!contains(bytes, "Lonely"), "a name left the node");
    }
    assert_eq!(node.terminate(), Some(0));
    let store = hearsay::store::Store::open(&data, &Default::default()).expect("open");
    let solo = store.user_by_name("solo").expect("read").expect("solo");
    let charged: Vec<(i64, bool)> = store
        .contributions(solo.id, 100)
        .expect("contributions")
        .into_iter()
        .filter(|(p, _)| periods.contains(p))
        .map(|(p, c)| (p, c.charged.eps_milli > 0))
        .collect();
    assert_eq!(charged.len(), 4, "one record per period: {charged:?}");
    assert!(charged.iter().all(|(_, c)| !*c), "charged in no period, active or not: {charged:?}");
    let reasons: std::collections::BTreeSet<String> = store
        .contributions(solo.id, 100)
        .expect("contributions")
        .into_iter()
        .filter(|(p, _)| periods.contains(p))
        .map(|(_, c)| c.refused.unwrap_or_default())
        .collect();
    assert_eq!(reasons.len(), 1, "the same record every period: {reasons:?}");
    assert!(reasons.iter().all(|r| r.contains("nothing was charged")), "{reasons:?}");
}

/// An erasure racing a release, many times over with random timing: whichever commits
/// first, the user's contribution record of the period never keeps a name of a listen
/// that ends up erased (the release itself carries only DP values and cannot be
/// recalled; the record is the user's own and must forget).
#[test]
fn an_erasure_racing_a_release_leaves_no_name_in_the_contribution_record() {
    use hearsay::store::{Action, Ingestor, Options, Store};
    struct Xorshift(u64);
    impl hearsay::privacy::noise::RandomSource for Xorshift {
        fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }
    let config = publisher_config(3600);
    let start = crate::support::NOW - crate::support::NOW.rem_euclid(3_600);
    for round in 0..40u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), &Options { cache_mb: 8, ..Default::default() }).expect("open");
        let user = store.create_user("alice", "password1", start - 30 * 86_400).expect("user").id;
        let ingestor = Ingestor::start(store.clone(), 10_000, Default::default()).expect("writer");
        let listens: Vec<Action> = (0..3)
            .map(|i| {
                let l = crate::support::listen_accepted_at(
                    "Racy Artist",
                    &format!("Racy Song {i}"),
                    start + 600 * i,
                    start + 3_600,
                );
                Action::Listen(l)
            })
            .collect();
        ingestor.ingest_blocking(user, listens).expect("ingest");
        let identity = std::sync::Arc::new(hearsay::identity::NodeIdentity::load_or_create(dir.path()).expect("key"));
        let publisher = hearsay::publish::Publisher::new(store.clone(), identity, &config).expect("publisher");
        let eraser = {
            let ingestor = ingestor.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_micros((round * 7_919) % 4_000));
                let deletes = (0..3).map(|seq| Action::Delete { seq }).collect();
                ingestor.ingest_blocking(user, deletes).expect("erase");
            })
        };
        let pass = publisher.run_due_with(start + 3_601, &mut Xorshift(round + 1)).expect("release");
        eraser.join().expect("eraser");
        assert_eq!(pass.released, [start], "round {round}");
        let records = store.contributions(user, 10).expect("records");
        assert_eq!(records.len(), 1, "round {round}: the user was charged for the period");
        let (_, c) = &records[0];
        let names = format!("{:?}{:?}", c.artists, c.tracks);
        assert!(!names.contains("Racy"), "round {round}: an erased listen's names outlived it: {names}");
        ingestor.stop();
    }
}

/// A clock that ran ahead and was set back: the node cannot release until it catches up
/// (a period is released once), and says so instead of falling silent; it resumes once
/// the clock passes its last release.
#[test]
fn a_clock_set_back_is_reported_not_a_silent_gap() {
    use hearsay::store::{Options, Store};
    let config = publisher_config(600);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), &Options { cache_mb: 8, ..Default::default() }).expect("open");
    let identity = std::sync::Arc::new(hearsay::identity::NodeIdentity::load_or_create(dir.path()).expect("key"));
    let publisher = hearsay::publish::Publisher::new(store, identity, &config).expect("publisher");
    let t = crate::support::NOW - crate::support::NOW.rem_euclid(600);
    // The clock runs 30 minutes ahead: the node releases the periods up to then.
    let ahead = publisher.run_due(t + 1_800 + 1).expect("pass");
    assert!(!ahead.released.is_empty() || ahead.empty > 0);
    assert_eq!(ahead.clock_behind_secs, None);
    // Set back to the true time: nothing can be released, and the pass says for how long.
    let back = publisher.run_due(t + 1).expect("pass");
    assert!(back.released.is_empty());
    assert!(back.clock_behind_secs.is_some_and(|s| s > 1_000 && s <= 1_800 + 600), "{back:?}");
    // Once the clock passes the last release, releases resume.
    let later = publisher.run_due(t + 2_400 + 1).expect("pass");
    assert_eq!(later.clock_behind_secs, None);
    assert_eq!(later.released.len() + later.empty, 1, "{later:?}");
}

/// The privacy settings of a publisher test: periods of `secs`, no grace, no backfill.
fn publisher_config(secs: u32) -> hearsay::config::PrivacyConfig {
    let secs = secs.to_string();
    let vars: Vec<(String, String)> = [
        ("HEARSAY_PRIVACY__PERIOD_SECS", secs.as_str()),
        ("HEARSAY_PRIVACY__GRACE_SECS", "0"),
        ("HEARSAY_PRIVACY__BACKFILL_PERIODS", "0"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    hearsay::config::Config::load_from(None, &vars).expect("config").privacy
}
