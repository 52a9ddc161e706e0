//! The Last.fm 2.0 API with the real pylast (over TLS, as pylast insists), raw form
//! requests, and error shapes.

use serde_json::Value;

use crate::support::{NodeProcess, TlsProxy, data_with_user, run_python_env};

const PYLAST: &str = r#"
import json, sys, time
import pylast
host, token = sys.argv[1], sys.argv[2]
net = pylast.LibreFMNetwork(api_key="a" * 32, api_secret="b" * 32)
net.ws_server = (host, "/2.0/")
net.homepage = f"https://{host}"
# pylast's username + password method: auth.getMobileSession with authToken.
net.session_key = pylast.SessionKeyGenerator(net).get_session_key("alice", pylast.md5(token))
now = int(time.time())
net.scrobble(artist="Sigur Rós", title="Hoppípolla", timestamp=now - 300, album="Takk...")
net.scrobble_many([{"artist": "Batch", "title": f"Song {i}", "timestamp": now - 1000 - i, "duration": 200} for i in range(5)])
net.update_now_playing(artist="Now Artist", title="Now Song")
user = net.get_user("alice")
playing = user.get_now_playing()
net.get_track("Sigur Rós", "Hoppípolla").love()
recent = user.get_recent_tracks(limit=10)
top = user.get_top_artists(limit=5)
print(json.dumps({
    "session": bool(net.session_key),
    "playing": str(playing.title) if playing else None,
    "recent": [[str(r.track.artist), str(r.track.title), int(r.timestamp)] for r in recent],
    "playcount": user.get_playcount(),
    "top": [[str(t.item), int(t.weight)] for t in top],
}))
"#;

#[test]
fn pylast_authenticates_scrobbles_loves_and_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, token) = data_with_user(dir.path());
    let node = NodeProcess::start(&data);
    let tls = TlsProxy::start(dir.path(), &node.url);
    let out = run_python_env(PYLAST, &[&tls.host, &token], &[("SSL_CERT_FILE", &tls.cert)]);
    let out: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(out["session"], true);
    assert_eq!(out["playing"], "Now Song");
    assert_eq!(out["recent"].as_array().map(Vec::len), Some(6));
    assert_eq!(out["recent"][0][1], "Hoppípolla");
    assert_eq!(out["playcount"], 6);
    assert_eq!(out["top"][0], serde_json::json!(["Batch", 5]));
    drop(tls);
    assert_eq!(node.terminate(), Some(0));

    let store = hearsay::store::Store::open(&data, &hearsay::store::Options { cache_mb: 8, ..Default::default() })
        .expect("open");
    let alice = store.user_by_name("alice").expect("lookup").expect("alice").id;
    assert_eq!(store.log_head(alice).expect("head").n_listens, 6);
    let loves = store.feedback(alice, 1, 10).expect("loves");
    assert_eq!(loves.iter().map(|f| f.row.name.as_str()).collect::<Vec<_>>(), ["Hoppípolla"]);
    store.verify_log(alice).expect("db").expect("verifies");
    // The session was opened with the token (authToken), so its listens carry the
    // token's name, not a generic one.
    let newest = store.listens(alice, 0, i64::MAX, 1, hearsay::store::logs::Order::NewestFirst).expect("listens");
    assert_eq!(newest[0].listen.client(), Some("default"));
}

fn form(url: &str, pairs: &[(&str, &str)]) -> (u16, String) {
    let resp = match ureq::post(url).send_form(pairs) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    (resp.status(), resp.into_string().unwrap_or_default())
}

#[test]
fn sessions_scrobble_batches_and_errors_in_xml_and_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, token) = data_with_user(dir.path());
    let node = NodeProcess::start(&data);
    let api = format!("{}/2.0/", node.url);
    // The account password works too (auth.getMobileSession's current form), as JSON.
    let (s, body) = form(
        &api,
        &[
            ("method", "auth.getMobileSession"),
            ("username", "alice"),
            ("password", "password123"),
            ("api_key", "k"),
            ("format", "json"),
        ],
    );
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    let sk = v["session"]["key"].as_str().expect("key").to_owned();
    assert_eq!(v["session"]["name"], "alice");
    // A number, as Last.fm sends it: typed clients refused the string "0".
    assert_eq!(v["session"]["subscriber"], serde_json::json!(0), "{body}");
    // Wrong password: error 4, in XML by default.
    let (s, body) = form(&api, &[("method", "auth.getMobileSession"), ("username", "alice"), ("password", "nope")]);
    assert_eq!(s, 403);
    assert!(body.contains("<lfm status=\"failed\"><error code=\"4\">"), "{body}");
    // A batch with array notation: one good, one too old, one duplicate of the first.
    let now = hearsay::now_unix().to_string();
    let early = "1000000000";
    let (s, body) = form(
        &api,
        &[
            ("method", "track.scrobble"),
            ("sk", &sk),
            ("artist[0]", "Björk"),
            ("track[0]", "Jóga"),
            ("timestamp[0]", &now),
            ("album[0]", "Homogenic"),
            ("artist[1]", "Old"),
            ("track[1]", "Song"),
            ("timestamp[1]", early),
            ("artist[2]", "björk"),
            ("track[2]", "jóga"),
            ("timestamp[2]", &now),
        ],
    );
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("<scrobbles accepted=\"1\" ignored=\"2\">"), "{body}");
    assert!(body.contains("<ignoredMessage code=\"3\">"), "{body}");
    assert!(body.contains("<ignoredMessage code=\"91\">"), "{body}");
    // Decimal timestamps and durations (players that send seconds as floats): taken by
    // truncation, as Last.fm does (before: "timestamp[0] is required", retried forever).
    let at = hearsay::now_unix() - 120;
    let decimal = format!("{at}.3156145");
    let (s, body) = form(
        &api,
        &[
            ("method", "track.scrobble"),
            ("sk", &sk),
            ("artist[0]", "Decimal Band"),
            ("track[0]", "Float Time"),
            ("timestamp[0]", &decimal),
            ("duration[0]", "34.000"),
        ],
    );
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("<scrobbles accepted=\"1\" ignored=\"0\">"), "{body}");
    let listens = ureq::get(&format!("{}/1/user/alice/listens", node.url))
        .set("Authorization", &format!("Token {token}"))
        .call()
        .expect("listens")
        .into_string()
        .expect("body");
    let v: Value = serde_json::from_str(&listens).expect("json");
    let decimal_listen = v["payload"]["listens"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["track_metadata"]["artist_name"] == "Decimal Band"))
        .expect("the decimal scrobble is stored");
    assert_eq!(decimal_listen["listened_at"], at, "truncated");
    assert_eq!(decimal_listen["track_metadata"]["additional_info"]["duration_ms"], 34_000, "{decimal_listen}");
    let (s, body) = form(
        &api,
        &[("method", "track.scrobble"), ("sk", &sk), ("artist", "A"), ("track", "B"), ("timestamp", "soon")],
    );
    assert!(s == 400 && body.contains("is not a unix time"), "{body}");
    // Without a session, with an unknown method, with a missing parameter.
    let (s, body) = form(&api, &[("method", "track.scrobble"), ("artist", "A"), ("track", "B"), ("timestamp", &now)]);
    assert!(s == 403 && body.contains("code=\"9\""), "{body}");
    let (s, body) = form(&api, &[("method", "track.fly"), ("format", "json")]);
    assert_eq!(s, 400);
    assert_eq!(serde_json::from_str::<Value>(&body).expect("json")["error"], 3);
    let (s, body) = form(&api, &[("method", "track.scrobble"), ("sk", &sk), ("artist", "A"), ("track", "B")]);
    assert!(s == 400 && body.contains("code=\"6\""), "{body}");
    // JSON: one scrobble is an object, attributes under @attr.
    let (_, body) = form(
        &api,
        &[
            ("method", "track.scrobble"),
            ("sk", &sk),
            ("artist", "Solo"),
            ("track", "One"),
            ("timestamp", &now),
            ("trackNumber", "3"),
            ("format", "json"),
        ],
    );
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["scrobbles"]["@attr"]["accepted"], 1, "a number, as Last.fm sends it");
    assert_eq!(v["scrobbles"]["scrobble"]["artist"]["#text"], "Solo");
    // Reads of a private profile by others: not found.
    let (s, _) = form(&api, &[("method", "user.getRecentTracks"), ("user", "alice")]);
    assert_eq!(s, 404);
    let (s, body) =
        form(&api, &[("method", "user.getRecentTracks"), ("user", "alice"), ("sk", &sk), ("format", "json")]);
    assert_eq!(s, 200);
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["recenttracks"]["@attr"]["total"], "3", "Björk, Decimal Band, Solo");
    // Oversized: refused from its announced length alone, in Last.fm's shape.
    let r = crate::support::post_head_only(&node.url, "/2.0/", "application/x-www-form-urlencoded", 300 * 1024, "");
    assert!(r.starts_with("HTTP/1.1 413") && r.contains("code=\"6\""), "{r}");
    assert_eq!(node.terminate(), Some(0));
    // The track number is kept, as ListenBrainz's `tracknumber`.
    let store = hearsay::store::Store::open(&data, &hearsay::store::Options { cache_mb: 8, ..Default::default() })
        .expect("open");
    let alice = store.user_by_name("alice").expect("lookup").expect("alice").id;
    let all = store.listens(alice, 0, i64::MAX, 100, hearsay::store::logs::Order::NewestFirst).expect("listens");
    let solo = all.iter().find(|l| l.listen.track().artist == "Solo").expect("Solo");
    let info = store.listen_infos(alice, &[solo.seq]).expect("infos");
    assert_eq!(info.get(&solo.seq).map(String::as_str), Some(r#"{"tracknumber":3}"#));
}

const PYLAST_WEB_AUTH: &str = r#"
import sys
import pylast
host = sys.argv[1]
net = pylast.LibreFMNetwork(api_key="a" * 32, api_secret="b" * 32)
net.ws_server = (host, "/2.0/")
net.homepage = f"https://{host}"
sg = pylast.SessionKeyGenerator(net)
url = sg.get_web_auth_url()
print(url, flush=True)
sys.stdin.readline()  # the user approves in a browser meanwhile
key = sg.get_web_auth_session_key(url)
net.session_key = key
net.scrobble(artist="Web Auth", title="Approved", timestamp=int(__import__("time").time()) - 60)
print(key, flush=True)
"#;

#[test]
fn pylast_web_authentication_with_the_approval_page() {
    use std::io::{BufRead, Write};
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, _) = data_with_user(dir.path());
    let node = NodeProcess::start(&data);
    let tls = TlsProxy::start(dir.path(), &node.url);
    let mut child = std::process::Command::new(crate::support::python())
        .arg("-c")
        .arg(PYLAST_WEB_AUTH)
        .arg(&tls.host)
        .env("SSL_CERT_FILE", &tls.cert)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut url = String::new();
    out.read_line(&mut url).expect("url");
    let url = url.trim().to_owned();
    assert!(url.contains("/api/auth/?api_key="), "{url}");
    let token = url.split("token=").nth(1).expect("token").to_owned();
    // Not yet approved: error 14; the page asks for the user's credentials.
    let (s, body) = form(&format!("{}/2.0/", node.url), &[("method", "auth.getSession"), ("token", &token)]);
    assert!(s == 403 && body.contains("code=\"14\""), "{body}");
    let resp = ureq::get(&format!("{}/api/auth/?token={token}", node.url)).call().expect("page");
    let cookie = resp.header("set-cookie").expect("form cookie").split(';').next().expect("pair").to_owned();
    let page = resp.into_string().expect("html");
    assert!(page.contains("name=\"password\"") && page.contains(&token));
    let form_token =
        page.split("name=\"form_token\" value=\"").nth(1).and_then(|r| r.split('"').next()).expect("token").to_owned();
    let approve = |password: &str| {
        let r = ureq::post(&format!("{}/api/auth/", node.url)).set("Cookie", &cookie).send_form(&[
            ("token", &token),
            ("form_token", &form_token),
            ("username", "alice"),
            ("password", password),
        ]);
        match r {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(s, _)) => s,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(approve("wrong"), 403);
    assert_eq!(approve("password123"), 200);
    child.stdin.take().expect("stdin").write_all(b"\n").expect("approve");
    let mut key = String::new();
    out.read_line(&mut key).expect("key");
    assert_eq!(key.trim().len(), 32, "{key}");
    assert!(child.wait().expect("python").success());
    // The token was single use.
    let (_, body) = form(&format!("{}/2.0/", node.url), &[("method", "auth.getSession"), ("token", &token)]);
    assert!(body.contains("code=\"4\""), "{body}");
    drop(tls);
    assert_eq!(node.terminate(), Some(0));
}

#[test]
fn numbers_a_client_sends_are_checked_not_overflowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, _) = data_with_user(dir.path());
    let node = NodeProcess::start(&data);
    let api = format!("{}/2.0/", node.url);
    let (_, body) = form(
        &api,
        &[("method", "auth.getMobileSession"), ("username", "alice"), ("password", "password123"), ("format", "json")],
    );
    let v: Value = serde_json::from_str(&body).expect("json");
    let sk = v["session"]["key"].as_str().expect("key").to_owned();
    // A length of 2^64/1000 seconds: dropped (it used to wrap to 384 ms), the play kept.
    let now = (hearsay::now_unix() - 60).to_string();
    let (s, body) = form(
        &api,
        &[
            ("method", "track.scrobble"),
            ("sk", &sk),
            ("artist", "Band"),
            ("track", "Long One"),
            ("timestamp", &now),
            ("duration", "18446744073709552"),
            ("format", "json"),
        ],
    );
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("\"accepted\":\"1\"") || body.contains("\"accepted\":1"), "{body}");
    // auth.getToken is anonymous: one address gets a bounded number per minute.
    let mut refused = 0;
    for _ in 0..40 {
        let (s, _) = form(&api, &[("method", "auth.getToken"), ("format", "json")]);
        if s == 429 {
            refused += 1;
        }
    }
    assert_eq!(refused, 40 - hearsay::state::MAX_TOKENS_PER_MINUTE as usize);
    drop(node);
    let store = hearsay::store::Store::open(&data, &Default::default()).expect("open");
    let alice = store.user_by_name("alice").expect("lookup").expect("alice");
    let listens = store.listens(alice.id, 0, i64::MAX, 10, hearsay::store::logs::Order::NewestFirst).expect("listens");
    assert_eq!(listens[0].listen.track().title, "Long One");
    assert_eq!(listens[0].listen.duration_ms(), None, "an impossible length is dropped, not wrapped");
}

const PYLAST_READS: &str = r#"
import json, sys, time
import pylast
host, token = sys.argv[1], sys.argv[2]
net = pylast.LibreFMNetwork(api_key="a" * 32, api_secret="b" * 32)
net.ws_server = (host, "/2.0/")
net.homepage = f"https://{host}"
net.session_key = pylast.SessionKeyGenerator(net).get_session_key("alice", pylast.md5(token))
now = int(time.time())
plays = [("Sigur Rós", "Hoppípolla", "Takk...")] * 3 + [("Björk", "Jóga", "Homogenic")] * 2
net.scrobble_many([{"artist": a, "title": t, "album": b, "timestamp": now - 600 - 60 * i} for i, (a, t, b) in enumerate(plays)])
net.get_track("Björk", "Jóga").love()
user = net.get_user("alice")
loved = user.get_loved_tracks()
dates = user.get_weekly_chart_dates()
weekly = user.get_weekly_artist_charts(str(now - 86400 * 7), str(now + 60))
track = pylast.Track("Sigur Rós", "Hoppípolla", net, username="alice")
artist = pylast.Artist("Björk", net, username="alice")
album = pylast.Album("Sigur Rós", "Takk...", net, username="alice")
library = pylast.Library("alice", net).get_artists(limit=None)
print(json.dumps({
    "loved": [[str(l.track.artist), str(l.track.title), int(l.timestamp)] for l in loved],
    "weeks": len(dates),
    "last_week": [int(x) for x in dates[-1]],
    "weekly": [[str(t.item), int(t.weight)] for t in weekly],
    "track_plays": track.get_userplaycount(),
    "track_loved": track.get_userloved(),
    "artist_plays": artist.get_userplaycount(),
    "album_plays": album.get_userplaycount(),
    "library": sorted([str(i.item), i.playcount] for i in library),
    "now": now,
}))
"#;

#[test]
fn pylast_reads_loved_tracks_weekly_charts_item_info_and_the_library() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, token) = data_with_user(dir.path());
    let node = NodeProcess::start(&data);
    let tls = TlsProxy::start(dir.path(), &node.url);
    let out = run_python_env(PYLAST_READS, &[&tls.host, &token], &[("SSL_CERT_FILE", &tls.cert)]);
    let out: Value = serde_json::from_str(&out).expect("json");
    let now = out["now"].as_i64().expect("now");
    assert_eq!(out["loved"][0][0], "Björk");
    assert_eq!(out["loved"][0][1], "Jóga");
    // The love's time: the start of the listen recorded just before it (the log keeps no
    // time for feedback): the batch's last, the oldest play.
    assert_eq!(out["loved"][0][2].as_i64(), Some(now - 600 - 60 * 4));
    assert!(out["weeks"].as_u64().is_some_and(|w| w >= 1), "{out}");
    let [from, to] = [out["last_week"][0].as_i64().expect("from"), out["last_week"][1].as_i64().expect("to")];
    assert!(from <= now && now < to && to - from >= 6 * 86_400, "{out}");
    assert_eq!(out["weekly"], serde_json::json!([["Sigur Rós", 3], ["Björk", 2]]));
    assert_eq!((out["track_plays"].as_i64(), out["track_loved"].as_bool()), (Some(3), Some(false)));
    assert_eq!((out["artist_plays"].as_i64(), out["album_plays"].as_i64()), (Some(2), Some(3)));
    assert_eq!(out["library"], serde_json::json!([["Björk", 2], ["Sigur Rós", 3]]));
    drop(tls);
    assert_eq!(node.terminate(), Some(0));
}
