//! Audioscrobbler 1.2 exchanges as mpdscribble makes them.

use crate::support::{NodeProcess, TlsProxy, data_with_user, free_port, run_python_env};

fn md5(s: &str) -> String {
    hearsay::auth::md5_hex(s.as_bytes())
}

fn get(url: &str) -> String {
    ureq::get(url).call().expect("get").into_string().expect("body")
}

fn post(url: &str, pairs: &[(String, String)]) -> String {
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    ureq::post(url).send_form(&refs).expect("post").into_string().expect("body")
}

#[test]
fn handshake_now_playing_and_submission() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, token) = data_with_user(dir.path());
    let node = NodeProcess::start(&data);
    let now = hearsay::now_unix();
    let t = now.to_string();
    let auth = md5(&format!("{}{t}", md5(&token)));
    let hs =
        |user: &str, t: &str, a: &str| get(&format!("{}/?hs=true&p=1.2&c=mdc&v=0.25&u={user}&t={t}&a={a}", node.url));

    assert_eq!(hs("alice", &t, "0123456789abcdef0123456789abcdef"), "BADAUTH\n");
    assert_eq!(hs("nobody", &t, &auth), "BADAUTH\n");
    assert_eq!(hs("alice", &(now - 3600).to_string(), &md5(&format!("{}{}", md5(&token), now - 3600))), "BADTIME\n");
    // Extreme times are refused, not overflowed.
    assert_eq!(hs("alice", "-9223372036854775808", &auth), "BADTIME\n");
    assert_eq!(hs("alice", "9223372036854775807", &auth), "BADTIME\n");
    let reply = hs("alice", &t, &auth);
    let lines: Vec<&str> = reply.lines().collect();
    assert_eq!(lines.len(), 4, "{reply}");
    assert_eq!(lines[0], "OK");
    let (session, np, submit) = (lines[1].to_owned(), lines[2].to_owned(), lines[3].to_owned());

    let s = |v: &str| ("s".to_string(), v.to_string());
    let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
    assert_eq!(
        post(&np, &[s(&session), kv("a", "Sigur Rós"), kv("t", "Glósóli"), kv("b", "Takk..."), kv("l", "370")]),
        "OK\n"
    );
    assert_eq!(post(&np, &[s("nope"), kv("a", "A"), kv("t", "B")]), "BADSESSION\n");
    // A decimal time, as some players send it: taken by truncation (the Last.fm side
    // refused these until 2026-12; see `api::whole_number`).
    let listened = format!("{}.75", now - 400);
    let second = (now - 800).to_string();
    let mut tracks = vec![s(&session)];
    for (i, (a, title, at, r)) in [
        ("Sigur Rós", "Glósóli", &listened, "L"),
        ("Múm", "Green Grass of Tunnel", &second, ""),
        ("Skipped", "Track", &second, "S"),
    ]
    .iter()
    .enumerate()
    {
        tracks.extend([
            kv(&format!("a[{i}]"), a),
            kv(&format!("t[{i}]"), title),
            kv(&format!("i[{i}]"), at),
            kv(&format!("o[{i}]"), "P"),
            kv(&format!("r[{i}]"), r),
            kv(&format!("l[{i}]"), "300.000"),
            kv(&format!("b[{i}]"), ""),
            kv(&format!("n[{i}]"), if i == 0 { "7" } else { "" }),
            kv(&format!("m[{i}]"), ""),
        ]);
    }
    assert_eq!(post(&submit, &tracks), "OK\n");
    // A bad track fails the submission, and nothing of it is stored.
    let bad = vec![s(&session), kv("a[0]", "A"), kv("t[0]", "B"), kv("i[0]", "1000"), kv("o[0]", "P")];
    assert!(post(&submit, &bad).starts_with("FAILED Track 0: listened_at"));
    assert_eq!(post(&submit, &[s("nope"), kv("a[0]", "A")]), "BADSESSION\n");
    assert_eq!(node.terminate(), Some(0));

    let store = hearsay::store::Store::open(&data, &hearsay::store::Options { cache_mb: 8, ..Default::default() })
        .expect("open");
    let alice = store.user_by_name("alice").expect("lookup").expect("alice").id;
    let titles: Vec<String> = store
        .listens(alice, 0, i64::MAX, 10, hearsay::store::logs::Order::NewestFirst)
        .expect("listens")
        .into_iter()
        .map(|l| l.listen.track().title.clone())
        .collect();
    assert_eq!(titles, ["Glósóli", "Green Grass of Tunnel"]);
    let first = store.listens(alice, 0, i64::MAX, 1, hearsay::store::logs::Order::NewestFirst).expect("listens");
    assert_eq!(first[0].listen.listened_at(), now - 400, "truncated");
    assert_eq!(first[0].listen.duration_ms(), Some(300_000), "a decimal length is kept");
    assert_eq!(store.feedback(alice, 1, 10).expect("loves").len(), 1, "r[i]=L loves the track");
    // Recorded under the player's name from its handshake (c=mdc, v=0.25), with its track
    // number kept as ListenBrainz's `tracknumber`.
    assert_eq!(first[0].listen.client(), Some("mpdscribble 0.25"));
    let info = store.listen_infos(alice, &[first[0].seq]).expect("infos");
    assert_eq!(info.get(&first[0].seq).map(String::as_str), Some(r#"{"tracknumber":7}"#));
}

/// Only a token made for a legacy client keeps the md5 these protocols prove it with: a
/// default token cannot open an Audioscrobbler 1.2 session nor a Last.fm `authToken`
/// session, and no md5 of it is anywhere in the data directory.
#[test]
fn only_legacy_tokens_keep_an_md5_and_open_legacy_sessions() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The files are searched for the md5 below.
    crate::support::uncompressed_store(&dir.path().join("data"));
    let (data, legacy) = data_with_user(dir.path());
    let (code, plain, err) = crate::support::hearsay(&data, &["token", "new", "alice", "--name", "modern"]);
    assert_eq!(code, 0, "{err}");
    let plain = plain.trim().to_owned();
    let node = NodeProcess::start(&data);
    let t = hearsay::now_unix().to_string();
    let hs = |token: &str| {
        let a = md5(&format!("{}{t}", md5(token)));
        get(&format!("{}/?hs=true&p=1.2&c=mpd&v=0.25&u=alice&t={t}&a={a}", node.url))
    };
    assert!(hs(&legacy).starts_with("OK\n"), "the legacy token opens a session");
    assert_eq!(hs(&plain), "BADAUTH\n", "a default token has no md5 to check against");
    let auth_token = |token: &str| {
        let r = ureq::post(&format!("{}/2.0/", node.url)).send_form(&[
            ("method", "auth.getMobileSession"),
            ("username", "alice"),
            ("authToken", &md5(&format!("alice{}", md5(token)))),
            ("format", "json"),
        ]);
        match r {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(s, _)) => s,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(auth_token(&legacy), 200);
    assert_ne!(auth_token(&plain), 200, "authToken with a default token");
    // The default token still works as the password, as ListenBrainz and modern Last.fm
    // clients send it.
    let r = ureq::post(&format!("{}/2.0/", node.url))
        .send_form(&[
            ("method", "auth.getMobileSession"),
            ("username", "alice"),
            ("password", &plain),
            ("format", "json"),
        ])
        .expect("password = token");
    assert_eq!(r.status(), 200);
    assert_eq!(node.terminate(), Some(0));
    let md5_bytes = <md5::Md5 as md5::Digest>::digest(plain.as_bytes());
    let mut files = Vec::new();
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).expect("dir").flatten() {
            if e.path().is_dir() { walk(&e.path(), out) } else { out.push(e.path()) }
        }
    }
    walk(&data, &mut files);
    // The search can find an md5 where one is kept: the legacy token's.
    let legacy_md5 = <md5::Md5 as md5::Digest>::digest(legacy.as_bytes());
    let mut legacy_found = false;
    for f in files {
        let bytes = std::fs::read(&f).expect("read");
        assert!(!bytes.windows(16).any(|w| w == md5_bytes.as_slice()), "{} holds a default token's md5", f.display());
        legacy_found |= bytes.windows(16).any(|w| w == legacy_md5.as_slice());
    }
    assert!(legacy_found, "the legacy token's md5 is not found: the search is blind");
}

/// A player behind a TLS front, as the README advises: the handshake hands out the
/// front's `https://` addresses (`http.public_url`), and a real HTTPS client stores all
/// its plays through them (before: `http://…` was hard-coded, and such a player stored 0
/// of 3). Without `public_url`, a trusted proxy's `X-Forwarded-Proto`/`-Host` are used,
/// and anyone else's are ignored.
#[test]
fn a_player_behind_a_tls_front_is_handed_its_https_addresses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, token) = data_with_user(dir.path());
    let port = free_port();
    let tls = TlsProxy::start(dir.path(), &format!("127.0.0.1:{port}"));
    let listen = format!("127.0.0.1:{port}");
    let public = format!("https://{}", tls.host);
    let node = NodeProcess::start_with(
        &data,
        &[("HEARSAY_HTTP__LISTEN", listen.as_str()), ("HEARSAY_HTTP__PUBLIC_URL", public.as_str())],
    );
    let now = hearsay::now_unix();
    let out = run_python_env(PLAYER_OVER_TLS, &[&public, &token, &now.to_string()], &[("SSL_CERT_FILE", &tls.cert)]);
    assert!(out.contains(&format!("np={public}/as/1.2/np")), "{out}");
    assert!(out.trim_end().ends_with("submitted OK"), "{out}");
    assert_eq!(node.terminate(), Some(0));
    let store = hearsay::store::Store::open(&data, &hearsay::store::Options { cache_mb: 8, ..Default::default() })
        .expect("open");
    let alice = store.user_by_name("alice").expect("lookup").expect("alice").id;
    let stored = store.listens(alice, 0, i64::MAX, 10, hearsay::store::logs::Order::NewestFirst).expect("listens");
    assert_eq!(stored.len(), 3, "every play through the front is stored");
    drop(store);

    // Forwarded headers: believed from a trusted proxy only.
    let t = hearsay::now_unix().to_string();
    let a = md5(&format!("{}{t}", md5(&token)));
    let handshake = |url: &str| {
        ureq::get(&format!("{url}/?hs=true&p=1.2&c=mpd&v=0.25&u=alice&t={t}&a={a}"))
            .set("X-Forwarded-Proto", "https")
            .set("X-Forwarded-Host", "music.example.org")
            .call()
            .expect("handshake")
            .into_string()
            .expect("body")
    };
    let trusting = NodeProcess::start_with(&data, &[("HEARSAY_HTTP__TRUSTED_PROXIES", "[\"127.0.0.1\"]")]);
    let reply = handshake(&trusting.url);
    assert_eq!(reply.lines().nth(2), Some("https://music.example.org/as/1.2/np"), "{reply}");
    drop(trusting);
    let plain = NodeProcess::start(&data);
    let reply = handshake(&plain.url);
    assert_eq!(reply.lines().nth(2), Some(format!("{}/as/1.2/np", plain.url).as_str()), "{reply}");
}

/// An Audioscrobbler 1.2 player over HTTPS (Python's standard library, verifying the
/// front's certificate): handshake at the public address, then three plays to the
/// submission address the handshake gave.
const PLAYER_OVER_TLS: &str = r#"
import hashlib, sys, urllib.parse, urllib.request
base, token, now = sys.argv[1], sys.argv[2], int(sys.argv[3])
md5 = lambda s: hashlib.md5(s.encode()).hexdigest()
t = str(now)
q = urllib.parse.urlencode({"hs": "true", "p": "1.2", "c": "tst", "v": "1.0", "u": "alice", "t": t, "a": md5(md5(token) + t)})
lines = urllib.request.urlopen(base + "/?" + q).read().decode().splitlines()
assert lines[0] == "OK", lines
session, np, submit = lines[1], lines[2], lines[3]
print("np=" + np)
form = {"s": session}
for i in range(3):
    form.update({f"a[{i}]": "Front Band", f"t[{i}]": f"Song {i}", f"i[{i}]": str(now - 600 * (i + 1)), f"o[{i}]": "P", f"r[{i}]": "", f"l[{i}]": "200", f"b[{i}]": "", f"n[{i}]": "", f"m[{i}]": ""})
reply = urllib.request.urlopen(submit, data=urllib.parse.urlencode(form).encode()).read().decode()
print("submitted " + reply.strip())
"#;
