//! The ListenBrainz API with the real client library (liblistenbrainz), raw requests as
//! players send them, and every kind of bad input.

use serde_json::{Value, json};

use crate::support::{NodeProcess, data_with_user, run_python};

const LIBLISTENBRAINZ: &str = r#"
import json, sys, time
import liblistenbrainz as lb
url, token = sys.argv[1], sys.argv[2]
client = lb.ListenBrainz(api_base_url=url)
client.set_auth_token(token)  # calls /1/validate-token
now = int(time.time())
client.submit_single_listen(lb.Listen(track_name="Hoppípolla", artist_name="Sigur Rós", release_name="Takk...", listened_at=now - 100))
batch = [lb.Listen(track_name=f"Track {i}", artist_name="Batch Artist", listened_at=now - 1000 - i) for i in range(10)]
batch.append(lb.Listen(track_name="With MBID", artist_name="Batch Artist", listened_at=now - 5000,
                       recording_mbid="f27ec8db-af05-4f36-916e-3d57f91ecf5e"))
client.submit_multiple_listens(batch)
client.submit_playing_now(lb.Listen(track_name="Now Song", artist_name="Now Artist"))
playing = client.get_playing_now("alice")
listens = client.get_listens("alice", count=100)
count_before = client.get_user_listen_count("alice")
victim = [l for l in listens if l.track_name == "Track 3"][0]
client.delete_listen(victim)
client.submit_user_feedback(1, "f27ec8db-af05-4f36-916e-3d57f91ecf5e")
top = client.get_user_artists("alice")
print(json.dumps({
    "playing": playing.track_name if playing else None,
    "listens": [[l.artist_name, l.track_name, l.listened_at] for l in listens],
    "count_before": count_before,
    "count_after": client.get_user_listen_count("alice"),
    "top": top["payload"]["artists"][0],
}))
"#;

#[test]
fn liblistenbrainz_submits_reads_deletes_and_loves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, token) = data_with_user(dir.path());
    let node = NodeProcess::start(&data);
    let out: Value = serde_json::from_str(&run_python(LIBLISTENBRAINZ, &[&node.url, &token])).expect("json");
    assert_eq!(out["playing"], "Now Song");
    assert_eq!(out["listens"].as_array().map(Vec::len), Some(12));
    assert_eq!(out["listens"][0][1], "Hoppípolla", "newest first");
    assert_eq!((out["count_before"].as_u64(), out["count_after"].as_u64()), (Some(12), Some(11)));
    assert_eq!(out["top"], json!({"artist_name": "Batch Artist", "artist_mbid": null, "listen_count": 10}));
    assert_eq!(node.terminate(), Some(0));

    // Really stored: read the store itself after the node stopped.
    let store = hearsay::store::Store::open(&data, &hearsay::store::Options { cache_mb: 8, ..Default::default() })
        .expect("open");
    let alice = store.user_by_name("alice").expect("lookup").expect("alice").id;
    let titles: Vec<String> = store
        .listens(alice, 0, i64::MAX, 100, hearsay::store::logs::Order::NewestFirst)
        .expect("listens")
        .into_iter()
        .map(|l| l.listen.track().title.clone())
        .collect();
    assert_eq!(titles.len(), 11);
    assert!(titles.contains(&"Hoppípolla".to_string()) && !titles.contains(&"Track 3".to_string()));
    let loves = store.feedback(alice, 1, 10).expect("loves");
    assert_eq!(loves.iter().map(|f| f.row.name.as_str()).collect::<Vec<_>>(), ["With MBID"]);
    store.verify_log(alice).expect("db").expect("the log verifies");
}

fn post(url: &str, token: Option<&str>, body: &[u8]) -> (u16, Value) {
    let mut req = ureq::post(url);
    if let Some(t) = token {
        req = req.set("Authorization", &format!("token {t}"));
    }
    let resp = match req.send_bytes(body) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    let status = resp.status();
    let text = resp.into_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn get(url: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = ureq::get(url);
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Token {t}"));
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    let status = resp.status();
    (status, serde_json::from_str(&resp.into_string().unwrap_or_default()).unwrap_or(Value::Null))
}

fn listen(at: i64, artist: &str, title: &str) -> Value {
    json!({"listened_at": at, "track_metadata": {"artist_name": artist, "track_name": title}})
}

#[test]
fn bad_requests_get_listenbrainz_errors_and_store_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, token) = data_with_user(dir.path());
    let node = NodeProcess::start(&data);
    let submit = format!("{}/1/submit-listens", node.url);
    let now = hearsay::now_unix();
    let t = Some(token.as_str());
    let good = listen(now - 10, "A", "B");
    let cases: Vec<(&str, Option<&str>, Vec<u8>, u16)> = vec![
        ("no token", None, json!({"listen_type": "single", "payload": [good]}).to_string().into_bytes(), 401),
        ("bad token", Some("00000000-0000-4000-8000-000000000000"), json!({"listen_type": "single", "payload": [good]}).to_string().into_bytes(), 401),
        ("invalid JSON", t, b"{not json".to_vec(), 400),
        ("invalid UTF-8", t, b"{\"listen_type\":\"single\",\"payload\":[{\"listened_at\":1,\"track_metadata\":{\"artist_name\":\"\xff\"}}]}".to_vec(), 400),
        ("unknown listen_type", t, json!({"listen_type": "many", "payload": [good]}).to_string().into_bytes(), 400),
        ("single with two", t, json!({"listen_type": "single", "payload": [good, good]}).to_string().into_bytes(), 400),
        ("empty payload", t, json!({"listen_type": "import", "payload": []}).to_string().into_bytes(), 400),
        ("NUL byte", t, json!({"listen_type": "single", "payload": [listen(now, "A\u{0}", "B")]}).to_string().into_bytes(), 400),
        ("too early", t, json!({"listen_type": "single", "payload": [listen(1_000_000_000, "A", "B")]}).to_string().into_bytes(), 400),
        ("future", t, json!({"listen_type": "single", "payload": [listen(now + 7200, "A", "B")]}).to_string().into_bytes(), 400),
        ("wrong type", t, json!({"listen_type": "single", "payload": [{"listened_at": "soon", "track_metadata": {"artist_name": "A", "track_name": "B"}}]}).to_string().into_bytes(), 400),
        ("missing field", t, json!({"listen_type": "single", "payload": [{"listened_at": now, "track_metadata": {"artist_name": "A"}}]}).to_string().into_bytes(), 400),
        ("extra key", t, json!({"listen_type": "single", "payload": [{"listened_at": now, "foo": 1, "track_metadata": {"artist_name": "A", "track_name": "B"}}]}).to_string().into_bytes(), 400),
        ("playing_now with time", t, json!({"listen_type": "playing_now", "payload": [listen(now, "A", "B")]}).to_string().into_bytes(), 400),
        ("bad MBID", t, json!({"listen_type": "single", "payload": [{"listened_at": now, "track_metadata": {"artist_name": "A", "track_name": "B", "additional_info": {"recording_mbid": "nope"}}}]}).to_string().into_bytes(), 400),
        ("too many listens", t, json!({"listen_type": "import", "payload": vec![good.clone(); 1001]}).to_string().into_bytes(), 400),
        // One bad listen among good ones: the whole request is refused.
        ("all or nothing", t, json!({"listen_type": "import", "payload": [listen(now - 1, "A", "B"), listen(now - 2, "", "B")]}).to_string().into_bytes(), 400),
    ];
    for (name, token, body, want) in cases {
        let (status, err) = post(&submit, token, &body);
        assert_eq!(status, want, "{name}: {err}");
        assert_eq!(err["code"].as_u64(), Some(u64::from(want)), "{name}: {err}");
        assert!(err["error"].as_str().is_some_and(|e| !e.is_empty()), "{name}: {err}");
    }
    // Oversized: refused with 413 before the whole body is read.
    let auth = format!("Authorization: Token {token}\r\n");
    let r = crate::support::post_head_only(&node.url, "/1/submit-listens", "application/json", 10_240_001, &auth);
    assert!(r.starts_with("HTTP/1.1 413") && r.contains("\"code\":413"), "{r}");
    let (_, count) = get(&format!("{}/1/user/alice/listen-count", node.url), t);
    assert_eq!(count["payload"]["count"], 0, "nothing was stored");

    // validate-token: valid, invalid (200), missing (400).
    let (s, v) = get(&format!("{}/1/validate-token", node.url), t);
    assert_eq!((s, v["valid"].as_bool(), v["user_name"].as_str()), (200, Some(true), Some("alice")));
    let (s, v) = get(&format!("{}/1/validate-token?token=nope", node.url), None);
    assert_eq!((s, v["valid"].as_bool(), v["message"].as_str()), (200, Some(false), Some("Token invalid.")));
    let (s, _) = get(&format!("{}/1/validate-token", node.url), None);
    assert_eq!(s, 400);
    // Reads: hidden and unknown users look the same to others; the owner sees hers.
    let (s1, e1) = get(&format!("{}/1/user/alice/listens", node.url), None);
    let (s2, e2) = get(&format!("{}/1/user/nobody/listens", node.url), None);
    assert_eq!((s1, s2), (404, 404));
    assert_eq!(
        e1["error"].as_str().map(|e| e.replace("alice", "X")),
        e2["error"].as_str().map(|e| e.replace("nobody", "X"))
    );
    assert_eq!(get(&format!("{}/1/user/alice/listens", node.url), t).0, 200);
    let (s, _) = get(&format!("{}/1/stats/user/alice/artists?range=fortnight", node.url), t);
    assert_eq!(s, 400);
    // Playing now: `additional_info` is always there, as ListenBrainz sends it (a typed
    // client failed on the missing field).
    let now_playing = json!({"listen_type": "playing_now", "payload": [{"track_metadata": {"artist_name": "Now", "track_name": "Here"}}]});
    assert_eq!(post(&submit, t, now_playing.to_string().as_bytes()).0, 200);
    let (s, v) = get(&format!("{}/1/user/alice/playing-now", node.url), t);
    assert_eq!(s, 200);
    let meta = &v["payload"]["listens"][0]["track_metadata"];
    assert_eq!(meta["track_name"], "Here", "{v}");
    assert!(meta["additional_info"].is_object(), "{v}");
    // An endpoint this node does not serve: a JSON error, not the HTML page.
    let (s, v) = get(&format!("{}/1/no/such/endpoint", node.url), t);
    assert_eq!((s, v["code"].as_i64()), (404, Some(404)), "{v}");
    drop(node);
}

#[test]
fn requests_as_players_send_them_are_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, token) = data_with_user(dir.path());
    let node = NodeProcess::start(&data);
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/listenbrainz");
    let now = hearsay::now_unix();
    let mut expected = 0;
    let mut names: Vec<_> =
        std::fs::read_dir(&fixtures).expect("tests/data/listenbrainz").flatten().map(|e| e.path()).collect();
    names.sort();
    for path in names {
        // The fixtures carry "__NOW__" where a player puts the current time.
        let text = std::fs::read_to_string(&path).expect("fixture").replace("__NOW__", &(now - 60).to_string());
        let doc: Value = serde_json::from_str(&text).expect("fixture json");
        let (status, body) = post(&format!("{}/1/submit-listens", node.url), Some(&token), text.as_bytes());
        assert_eq!(status, 200, "{}: {body}", path.display());
        if doc["listen_type"] != "playing_now" {
            expected += doc["payload"].as_array().map_or(0, Vec::len);
        }
    }
    let (_, count) = get(&format!("{}/1/user/alice/listen-count", node.url), Some(&token));
    assert_eq!(count["payload"]["count"].as_u64(), Some(expected as u64));
    let (_, listens) = get(&format!("{}/1/user/alice/listens?count=100", node.url), Some(&token));
    let artists: Vec<&str> = listens["payload"]["listens"]
        .as_array()
        .expect("listens")
        .iter()
        .filter_map(|l| l["track_metadata"]["artist_name"].as_str())
        .collect();
    assert!(artists.contains(&"Daft Punk"), "{artists:?}");
    // additional_info is kept: Web Scrobbler's origin URL and Navidrome's track number.
    let all = listens["payload"]["listens"].as_array().expect("listens");
    let info = |artist: &str| {
        all.iter().find(|l| l["track_metadata"]["artist_name"] == artist).expect(artist)["track_metadata"]["additional_info"].clone()
    };
    assert_eq!(info("Aurora")["origin_url"], "https://music.youtube.com/watch?v=d_HlPboLRL8");
    assert_eq!(info("Aurora")["music_service"], "music.youtube.com");
    assert_eq!(info("Daft Punk")["tracknumber"], 8);
    assert_eq!(info("Daft Punk")["submission_client"], "Navidrome");
    drop(node);
}

#[test]
fn sigkill_during_concurrent_submissions_loses_no_acknowledged_listen() {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, token) = data_with_user(dir.path());
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(5, |d| d.as_nanos() as u64) | 1;
    let now = hearsay::now_unix();
    for round in 0..3 {
        let mut node = NodeProcess::start(&data);
        let url = format!("{}/1/submit-listens", node.url);
        let clients: Vec<_> = (0..8)
            .map(|c| {
                let (url, token, acked) = (url.clone(), token.clone(), acked.clone());
                std::thread::spawn(move || {
                    let agent = ureq::AgentBuilder::new().build();
                    for i in 0..100_000i64 {
                        let title = format!("round {round} client {c} listen {i}");
                        let body = json!({"listen_type": "single", "payload": [listen(now - 86_400 + i, &format!("Crash {c}"), &title)]});
                        match agent.post(&url).set("Authorization", &format!("Token {token}")).send_string(&body.to_string()) {
                            Ok(_) => acked.lock().expect("lock").push(title),
                            Err(_) => return, // the node is gone
                        }
                    }
                })
            })
            .collect();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(std::time::Duration::from_millis(300 + seed % 900));
        node.child.kill().expect("SIGKILL");
        node.child.wait().expect("wait");
        for c in clients {
            c.join().expect("client");
        }
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() > 100, "too few acknowledged listens to mean anything: {}", acked.len());
    let store = hearsay::store::Store::open(&data, &hearsay::store::Options { cache_mb: 8, ..Default::default() })
        .expect("open");
    let alice = store.user_by_name("alice").expect("lookup").expect("alice").id;
    let stored: std::collections::HashSet<String> = store
        .listens(alice, 0, i64::MAX, usize::MAX, hearsay::store::logs::Order::OldestFirst)
        .expect("listens")
        .into_iter()
        .map(|l| l.listen.track().title.clone())
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|t| !stored.contains(*t)).collect();
    assert!(lost.is_empty(), "{} acknowledged listens lost, e.g. {:?}", lost.len(), lost.first());
    store.verify_log(alice).expect("db").expect("the log verifies after three SIGKILLs");
    eprintln!("{} acknowledged, {} stored, none lost", acked.len(), stored.len());
}

/// Reads as token-less client libraries make them (liblistenbrainz without a token set,
/// pylast-style Last.fm calls without a session): "no such user" for a member at the
/// default level, until they open their API reads; then the API answers and nothing
/// else changes (the web pages, a private member).
const TOKENLESS_READS: &str = r#"
import json, sys
import liblistenbrainz as lb
client = lb.ListenBrainz(api_base_url=sys.argv[1])
try:
    listens = [l.track_name for l in client.get_listens("alice", count=10)]
    print(json.dumps({"listens": listens}))
except lb.errors.ListenBrainzAPIException as e:
    print(json.dumps({"error": e.status_code}))
"#;

#[test]
fn token_less_reads_answer_only_for_members_who_opened_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, token) = data_with_user(dir.path());
    let read_all = |node: &NodeProcess| {
        let lb: Value = serde_json::from_str(&run_python(TOKENLESS_READS, &[&node.url])).expect("json");
        let lastfm = get(&format!("{}/2.0/?method=user.getrecenttracks&user=alice&format=json", node.url), None);
        let web = ureq::get(&format!("{}/user/alice", node.url)).call().map_or_else(
            |e| match e {
                ureq::Error::Status(s, _) => s,
                other => panic!("{other}"),
            },
            |r| r.status(),
        );
        (lb, lastfm, web)
    };
    let node = NodeProcess::start(&data);
    let mut with_origin = listen(1_700_000_000, "Artist", "Song");
    with_origin["track_metadata"]["additional_info"] = json!({"origin_url": "https://secret.example/page"});
    let (s, _) = post(
        &format!("{}/1/submit-listens", node.url),
        Some(&token),
        &serde_json::to_vec(&json!({"listen_type": "import", "payload": [with_origin]})).expect("json"),
    );
    assert_eq!(s, 200);
    let (lb, (lastfm_status, _), web) = read_all(&node);
    assert_eq!(lb, json!({"error": 404}), "closed by default");
    assert_eq!((lastfm_status, web), (404, 404));
    assert_eq!(node.terminate(), Some(0));

    let (code, _, err) = crate::support::hearsay(&data, &["user", "set-api-reads", "alice", "open"]);
    assert_eq!(code, 0, "{err}");
    let node = NodeProcess::start(&data);
    let (lb, (lastfm_status, lastfm), web) = read_all(&node);
    assert_eq!(lb, json!({"listens": ["Song"]}), "opened");
    assert_eq!(lastfm_status, 200);
    // A list of one is an array, as Last.fm sends lists; an empty list an empty array.
    assert_eq!(lastfm["recenttracks"]["track"][0]["name"], "Song", "{lastfm}");
    let (s, loved) = get(&format!("{}/2.0/?method=user.getlovedtracks&user=alice&format=json", node.url), None);
    assert_eq!((s, &loved["lovedtracks"]["track"]), (200, &json!([])), "{loved}");
    assert_eq!(web, 404, "the web pages are not affected");
    // What the player sent beyond the modelled fields stays the user's own.
    let (_, theirs) = get(&format!("{}/1/user/alice/listens", node.url), None);
    let (_, own) = get(&format!("{}/1/user/alice/listens", node.url), Some(&token));
    assert_eq!(theirs["payload"]["count"], 1);
    assert!(!theirs.to_string().contains("secret.example"), "{theirs}");
    assert!(own.to_string().contains("secret.example"), "{own}");
    // Nor is what is summed for others: the node chart counts public members only.
    let (s, sitewide) = get(&format!("{}/1/stats/sitewide/artists", node.url), None);
    assert_eq!(s, 204, "{sitewide}");
    assert_eq!(node.terminate(), Some(0));

    // A private member is never readable, the switch notwithstanding.
    assert_eq!(crate::support::hearsay(&data, &["user", "set-visibility", "alice", "private"]).0, 0);
    let node = NodeProcess::start(&data);
    let (lb, (lastfm_status, _), _) = read_all(&node);
    assert_eq!((lb, lastfm_status), (json!({"error": 404}), 404));
    assert_eq!(node.terminate(), Some(0));
}

#[test]
fn a_back_dated_listen_does_not_end_playing_now() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, token) = data_with_user(dir.path());
    let node = NodeProcess::start(&data);
    let t = Some(token.as_str());
    let submit = format!("{}/1/submit-listens", node.url);
    let now = crate::support::unix_now();
    let playing = || {
        let (s, v) = get(&format!("{}/1/user/alice/playing-now", node.url), t);
        assert_eq!(s, 200);
        v["payload"]["listens"][0]["track_metadata"]["track_name"].as_str().map(str::to_owned)
    };
    let now_playing = json!({"listen_type": "playing_now", "payload": [{"track_metadata": {"artist_name": "Now", "track_name": "Here"}}]});
    assert_eq!(post(&submit, t, now_playing.to_string().as_bytes()).0, 200);
    // An import of last week, and the previous track scrobbled at its end: still playing.
    let old = json!({"listen_type": "import", "payload": [listen(now - 7 * 86_400, "Old", "Times")]});
    assert_eq!(post(&submit, t, old.to_string().as_bytes()).0, 200);
    let previous = json!({"listen_type": "single", "payload": [listen(now - 200, "Before", "That")]});
    assert_eq!(post(&submit, t, previous.to_string().as_bytes()).0, 200);
    // A 40-second track just before, and the same song's previous play: still playing.
    let short = json!({"listen_type": "single", "payload": [listen(now - 40, "Short", "Track")]});
    assert_eq!(post(&submit, t, short.to_string().as_bytes()).0, 200);
    let repeat = json!({"listen_type": "single", "payload": [listen(now - 300, "Now", "Here")]});
    assert_eq!(post(&submit, t, repeat.to_string().as_bytes()).0, 200);
    assert_eq!(playing().as_deref(), Some("Here"));
    // The playing track scrobbled: it ends.
    let done = json!({"listen_type": "single", "payload": [listen(now - 5, "Now", "Here")]});
    assert_eq!(post(&submit, t, done.to_string().as_bytes()).0, 200);
    assert_eq!(playing(), None);
    // As does a listen that began after it started (the next track, no "playing now" sent).
    assert_eq!(post(&submit, t, now_playing.to_string().as_bytes()).0, 200);
    let next = json!({"listen_type": "single", "payload": [listen(crate::support::unix_now(), "Next", "One")]});
    assert_eq!(post(&submit, t, next.to_string().as_bytes()).0, 200);
    assert_eq!(playing(), None);
    assert_eq!(node.terminate(), Some(0));
}

#[test]
fn each_client_address_is_limited_with_listenbrainz_rate_limit_headers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, token) = data_with_user(dir.path());
    // The test's requests come "through a front" at 127.0.0.1, for clients it names.
    let node = NodeProcess::start_with(
        &data,
        &[("HEARSAY_HTTP__API_RATE_LIMIT", "5"), ("HEARSAY_HTTP__TRUSTED_PROXIES", "[\"127.0.0.1\"]")],
    );
    let call = |client: Option<&str>, path: &str| {
        let mut req = ureq::get(&format!("{}{path}", node.url)).set("Authorization", &format!("Token {token}"));
        if let Some(c) = client {
            req = req.set("X-Forwarded-For", c);
        }
        let r = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{e}"),
        };
        let header = |h: &str| r.header(h).map(str::to_owned);
        let heads = [
            header("x-ratelimit-limit"),
            header("x-ratelimit-remaining"),
            header("x-ratelimit-reset-in"),
            header("retry-after"),
        ];
        (r.status(), heads, r.into_string().unwrap_or_default())
    };
    let a = Some("203.0.113.5");
    // (A slow machine may refill a request's worth between calls: at most one more.)
    for left in (0..5).rev() {
        let (s, [limit, remaining, reset_in, _], _) = call(a, "/1/validate-token");
        assert_eq!(s, 200);
        assert_eq!(limit.as_deref(), Some("5"));
        let remaining: u32 = remaining.expect("remaining").parse().expect("number");
        assert!(remaining == left || remaining == left + 1, "{remaining} left, expected {left}");
        let reset_in: u64 = reset_in.expect("reset-in").parse().expect("number");
        assert!((1..=10).contains(&reset_in), "{reset_in}");
    }
    // Past the allowance (a call or two more, whatever refilled meanwhile): ListenBrainz's
    // 429, in its shape, with the headers.
    let (mut s, mut heads, mut body) = call(a, "/1/validate-token");
    if s == 200 {
        (s, heads, body) = call(a, "/1/validate-token");
    }
    let [_, remaining, _, retry_after] = heads;
    assert_eq!((s, remaining.as_deref()), (429, Some("0")), "{body}");
    assert!(retry_after.is_some());
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["code"], 429);
    // The same address on the other protocols: their own refusals.
    let (s, _, body) = call(a, "/2.0/?method=user.getinfo&user=alice&format=json");
    assert_eq!((s, serde_json::from_str::<Value>(&body).expect("json")["error"].as_u64()), (429, Some(29)), "{body}");
    let (s, _, body) = call(a, "/?hs=true&p=1.2.1&c=tst&v=1&u=alice&t=1&a=x");
    assert!(s == 200 && body.starts_with("FAILED "), "{s} {body}");
    // Another client is not affected, nor the node's own machine, nor the web view.
    let (s, [_, remaining, _, _], _) = call(Some("203.0.113.6"), "/1/validate-token");
    assert_eq!((s, remaining.as_deref()), (200, Some("4")));
    for _ in 0..10 {
        let (s, [limit, ..], _) = call(None, "/1/validate-token");
        assert_eq!((s, limit), (200, None), "loopback is not limited");
    }
    let (s, ..) = call(a, "/login");
    assert_eq!(s, 200, "the web view is not the API");
    // The allowance refills: 2 s is one request's worth at 5 per 10 s.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (s, ..) = call(a, "/1/validate-token");
    assert_eq!(s, 200);
    assert_eq!(node.terminate(), Some(0));
}

/// liblistenbrainz through a TLS front (as a node is reached from the internet), on the
/// reads it has beyond listens: statistics, feedback; and the rate-limit headers it
/// paces itself by.
const LIBLISTENBRAINZ_TLS: &str = r#"
import json, sys, time
import liblistenbrainz as lb
url, token = sys.argv[1], sys.argv[2]
client = lb.ListenBrainz(api_base_url=url)
client.set_auth_token(token)
now = int(time.time())
# Wednesday noon (UTC) of last week: ListenBrainz's "week" is the previous calendar week.
monday = now - now % 86400 - ((now // 86400 + 3) % 7) * 86400
last_week = monday - 5 * 86400 + 12 * 3600
client.submit_multiple_listens([lb.Listen(track_name=f"Song {i % 2}", artist_name="Artist A" if i < 3 else "Artist B",
    listened_at=last_week - 600 * i, recording_mbid="f27ec8db-af05-4f36-916e-3d57f91ecf5e" if i == 0 else None) for i in range(5)])
client.submit_user_feedback(1, "f27ec8db-af05-4f36-916e-3d57f91ecf5e")
feedback = client.get_user_feedback("alice", score=1, metadata=True)
artists = client.get_user_artists("alice", time_range="week")
recordings = client.get_user_recordings("alice")
print(json.dumps({
    "feedback": [[f["score"], f["track_metadata"]["track_name"]] for f in feedback["feedback"]],
    "artists": [[a["artist_name"], a["listen_count"]] for a in artists["payload"]["artists"]],
    "recordings": len(recordings["payload"]["recordings"]),
    "listens": [l.track_name for l in client.get_listens("alice", count=2)],
}))
"#;

#[test]
fn liblistenbrainz_through_a_tls_front_reads_statistics_and_feedback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, token) = data_with_user(dir.path());
    let node = NodeProcess::start(&data);
    let tls = crate::support::TlsProxy::start(dir.path(), &node.url);
    let out = crate::support::run_python_env(
        LIBLISTENBRAINZ_TLS,
        &[&format!("https://{}", tls.host), &token],
        &[("REQUESTS_CA_BUNDLE", &tls.cert)],
    );
    let out: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(out["feedback"], json!([[1, "Song 0"]]));
    assert_eq!(out["artists"], json!([["Artist A", 3], ["Artist B", 2]]));
    assert_eq!(out["recordings"], 4);
    assert_eq!(out["listens"], json!(["Song 0", "Song 1"]));
    drop(tls);
    assert_eq!(node.terminate(), Some(0));
}

#[test]
fn a_player_that_does_not_name_itself_is_recorded_under_its_tokens_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, _) = data_with_user(dir.path());
    let (code, token, err) = crate::support::hearsay(&data, &["token", "new", "alice", "--name", "Kitchen Navidrome"]);
    assert_eq!(code, 0, "{err}");
    let token = token.trim().to_owned();
    let node = NodeProcess::start(&data);
    let submit = format!("{}/1/submit-listens", node.url);
    let named = json!({"listened_at": 1_700_000_000, "track_metadata": {"artist_name": "A", "track_name": "Named",
        "additional_info": {"submission_client": "Web Scrobbler"}}});
    let body = json!({"listen_type": "import", "payload": [listen(1_700_000_600, "A", "Anonymous"), named]});
    assert_eq!(post(&submit, Some(&token), body.to_string().as_bytes()).0, 200);
    let (_, v) = get(&format!("{}/1/user/alice/listens", node.url), Some(&token));
    let clients: Vec<&str> = v["payload"]["listens"]
        .as_array()
        .expect("listens")
        .iter()
        .map(|l| l["track_metadata"]["additional_info"]["submission_client"].as_str().unwrap_or("none"))
        .collect();
    assert_eq!(clients, ["Kitchen Navidrome", "Web Scrobbler"]);
    let playing = json!({"listen_type": "playing_now", "payload": [{"track_metadata": {"artist_name": "A", "track_name": "Now"}}]});
    assert_eq!(post(&submit, Some(&token), playing.to_string().as_bytes()).0, 200);
    let (_, v) = get(&format!("{}/1/user/alice/playing-now", node.url), Some(&token));
    assert_eq!(
        v["payload"]["listens"][0]["track_metadata"]["additional_info"]["submission_client"],
        "Kitchen Navidrome"
    );
    assert_eq!(node.terminate(), Some(0));
}

/// Last.fm's `user.getRecentTracks` pages newest first without repeating or skipping a
/// listen (two in one second included), within `from`/`to`, with the right total; the
/// pages before the one asked for are skipped in the day index, not decoded.
#[test]
fn lastfm_recent_tracks_pages_cover_every_listen_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, token) = data_with_user(dir.path());
    assert_eq!(crate::support::hearsay(&data, &["user", "set-visibility", "alice", "public"]).0, 0);
    let node = NodeProcess::start(&data);
    let base = hearsay::now_unix() - 30 * 86_400;
    // 13 listens over a month, two of them in one second.
    let mut ats: Vec<i64> = (0..12).map(|i| base + i * 2 * 86_400 + i * 37).collect();
    ats.push(ats[5]);
    let payload: Vec<Value> = ats.iter().enumerate().map(|(i, at)| listen(*at, "Pager", &format!("T{i:02}"))).collect();
    let (s, v) = post(
        &format!("{}/1/submit-listens", node.url),
        Some(&token),
        json!({"listen_type": "import", "payload": payload}).to_string().as_bytes(),
    );
    assert_eq!(s, 200, "{v}");
    let page = |n: usize, extra: &str| -> (Vec<String>, String) {
        let (s, v) = get(
            &format!("{}/2.0/?method=user.getrecenttracks&user=alice&format=json&limit=5&page={n}{extra}", node.url),
            None,
        );
        assert_eq!(s, 200, "{v}");
        let names = v["recenttracks"]["track"]
            .as_array()
            .map_or_else(Vec::new, |t| t.iter().map(|x| x["name"].as_str().unwrap_or_default().to_owned()).collect());
        (names, v["recenttracks"]["@attr"]["total"].as_str().unwrap_or_default().to_owned())
    };
    let mut all = Vec::new();
    for n in 1..=4 {
        let (names, total) = page(n, "");
        assert_eq!(total, "13");
        all.extend(names);
    }
    assert_eq!(all.len(), 13, "{all:?}");
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 13, "no listen twice: {all:?}");
    assert_eq!(all[0], "T11", "newest first");
    // Within from/to (inclusive of `to`, as Last.fm): listens 3..=8 (T12 shares T05's second).
    let window = format!("&from={}&to={}", ats[3], ats[8]);
    let (first, total) = page(1, &window);
    let (second, _) = page(2, &window);
    assert_eq!(total, "7");
    assert_eq!(first.len() + second.len(), 7, "{first:?} {second:?}");
    assert_eq!(first[0], "T08");
    assert!(second.contains(&"T03".to_owned()), "{second:?}");
    assert!(page(3, &window).0.is_empty());
}

/// The sitewide charts list the node's top 1,000 items: a page deep in a long tail of
/// ties would name every tied item of the node for each request, without a token.
#[test]
fn sitewide_charts_list_the_top_thousand_items() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, token) = data_with_user(dir.path());
    assert_eq!(crate::support::hearsay(&data, &["user", "set-visibility", "alice", "public"]).0, 0);
    let node = NodeProcess::start(&data);
    let now = hearsay::now_unix();
    for batch in 0..3i64 {
        let payload: Vec<Value> = (0..350)
            .map(|i| listen(now - 100_000 + batch * 1_000 + i, &format!("Artist {batch}-{i}"), "Song"))
            .collect();
        let body = serde_json::to_vec(&json!({"listen_type": "import", "payload": payload})).expect("json");
        assert_eq!(post(&format!("{}/1/submit-listens", node.url), Some(&token), &body).0, 200);
    }
    let page = |offset: usize| {
        let url = format!("{}/1/stats/sitewide/artists?range=all_time&count=10&offset={offset}", node.url);
        let (s, body) = get(&url, None);
        assert_eq!(s, 200, "{body}");
        body["payload"]["artists"].as_array().map_or(usize::MAX, Vec::len)
    };
    assert_eq!(page(0), 10);
    assert_eq!(page(995), 5, "the 996th to the 1,000th of 1,050");
    assert_eq!(page(1_000), 0);
    assert_eq!(node.terminate(), Some(0));
}
