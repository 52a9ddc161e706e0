//! The conformance suite: every ListenBrainz endpoint and Last.fm method the node
//! implements, called against a running node, its answer compared in *shape* with an
//! example response written down from the real service's documentation
//! (`tests/conformance/`, see its README for the sources and the rules).
//!
//! Shape, not values: every key of the example is in the answer with the same JSON
//! type (a string stays a string, an integer an integer), arrays hold elements shaped
//! like one of the example's, and in XML every element and attribute of the example is
//! there. Extra keys are allowed, as the real services add fields and clients ignore
//! what they do not know.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::support::{NodeProcess, data_with_user, hearsay};

fn example(rel: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/conformance").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Where `got` differs in shape from `example` (appended to `out` with their paths).
pub fn json_shape(path: &str, example: &Value, got: &Value, out: &mut Vec<String>) {
    match (example, got) {
        // `null` in an example: the key must be there, with any value (the real
        // service sends null or a value, e.g. an MBID it may not know).
        (Value::Null, _) => {}
        // A decimal in the example accepts any number; an integer only an integer.
        (Value::Number(e), Value::Number(_)) if e.is_f64() => {}
        (Value::Object(e), Value::Object(g)) => {
            for (k, ev) in e {
                match g.get(k) {
                    Some(gv) => json_shape(&format!("{path}.{k}"), ev, gv, out),
                    None => out.push(format!("{path}.{k}: missing")),
                }
            }
        }
        (Value::Array(e), Value::Array(g)) => {
            if !e.is_empty() && g.is_empty() {
                out.push(format!("{path}: empty, the example has elements (the test data should give some)"));
            }
            for (i, gv) in g.iter().enumerate() {
                // The element must match one of the example's elements (a list may hold
                // variants, e.g. the track playing now beside played ones).
                let tries: Vec<Vec<String>> = e
                    .iter()
                    .map(|ev| {
                        let mut o = Vec::new();
                        json_shape(&format!("{path}[{i}]"), ev, gv, &mut o);
                        o
                    })
                    .collect();
                if let Some(closest) = tries.iter().min_by_key(|o| o.len()).filter(|o| !o.is_empty()) {
                    out.extend(closest.iter().cloned());
                }
            }
        }
        (e, g) if json_kind(e) != json_kind(g) => {
            out.push(format!("{path}: {} {g}, the example has {} {e}", json_kind(g), json_kind(e)));
        }
        _ => {}
    }
}

/// Where the XML `got` differs in shape from `example`: element names, attributes, and
/// for each child name of the example, the answer's children of that name.
pub fn xml_shape(
    path: &str,
    index: Option<usize>,
    example: roxmltree::Node,
    got: roxmltree::Node,
    out: &mut Vec<String>,
) {
    let here = match index {
        Some(i) => format!("{path}/{}[{i}]", example.tag_name().name()),
        None => format!("{path}/{}", example.tag_name().name()),
    };
    if example.tag_name().name() != got.tag_name().name() {
        out.push(format!("{here}: the answer has <{}>", got.tag_name().name()));
        return;
    }
    for a in example.attributes() {
        if got.attribute(a.name()).is_none() {
            out.push(format!("{here}@{}: missing", a.name()));
        }
    }
    let mut names: Vec<&str> = example.children().filter(|c| c.is_element()).map(|c| c.tag_name().name()).collect();
    names.dedup();
    for name in names {
        let variants: Vec<_> = example.children().filter(|c| c.tag_name().name() == name).collect();
        let found: Vec<_> = got.children().filter(|c| c.tag_name().name() == name).collect();
        if found.is_empty() {
            out.push(format!("{here}/{name}: missing"));
        }
        for (i, g) in found.into_iter().enumerate() {
            let tries: Vec<Vec<String>> = variants
                .iter()
                .map(|e| {
                    let mut o = Vec::new();
                    xml_shape(&here, Some(i), *e, g, &mut o);
                    o
                })
                .collect();
            if let Some(closest) = tries.iter().min_by_key(|o| o.len()).filter(|o| !o.is_empty()) {
                out.extend(closest.iter().cloned());
            }
        }
    }
}

fn check_json(name: &str, example_file: &str, body: &str, failures: &mut Vec<String>) {
    let example: Value = serde_json::from_str(&example(example_file)).expect("example json");
    match serde_json::from_str::<Value>(body) {
        Ok(got) => {
            let mut out = Vec::new();
            json_shape("", &example, &got, &mut out);
            failures.extend(out.into_iter().map(|o| format!("{name} ({example_file}) {o}")));
        }
        Err(e) => failures.push(format!("{name}: not JSON ({e}): {body:.200}")),
    }
}

fn check_xml(name: &str, example_file: &str, body: &str, failures: &mut Vec<String>) {
    let text = example(example_file);
    let example = roxmltree::Document::parse(&text).expect("example xml");
    match roxmltree::Document::parse(body) {
        Ok(got) => {
            let mut out = Vec::new();
            xml_shape("", None, example.root_element(), got.root_element(), &mut out);
            failures.extend(out.into_iter().map(|o| format!("{name} ({example_file}) {o}")));
        }
        Err(e) => failures.push(format!("{name}: not XML ({e}): {body:.200}")),
    }
}

/// A Last.fm call of the suite: method, parameters, status, example file stem.
type Call<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16, &'a str);

fn answer(r: Result<ureq::Response, ureq::Error>) -> (u16, String, String) {
    let r = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    let ct = r.header("content-type").unwrap_or_default().to_owned();
    (r.status(), ct, r.into_string().unwrap_or_default())
}

#[test]
fn the_shape_checker_finds_what_typed_clients_trip_on() {
    // The checker itself, on the differences it exists to find.
    let ex = json!({"a": {"n": 1, "s": "1", "f": 0.5, "l": [{"x": "y"}], "maybe": null}});
    let mut out = Vec::new();
    json_shape("", &ex, &json!({"a": {"n": 1, "s": "1", "f": 2, "l": [{"x": "z"}], "maybe": 3, "extra": 1}}), &mut out);
    assert!(out.is_empty(), "{out:?}");
    for (got, finding) in [
        (json!({"a": {"n": "1", "s": "1", "f": 1, "l": [], "maybe": 1}}), ".a.n: string"),
        (json!({"a": {"n": 1, "s": 1, "f": 1, "l": [], "maybe": 1}}), ".a.s: integer"),
        (json!({"a": {"n": 1.5, "s": "1", "f": 1, "l": [], "maybe": 1}}), ".a.n: float"),
        (json!({"a": {"n": 1, "s": "1", "f": 1, "l": [{}], "maybe": 1}}), ".a.l[0].x: missing"),
        (json!({"a": {"n": 1, "s": "1", "f": 1, "l": {"x": "y"}, "maybe": 1}}), ".a.l: object"),
        (json!({"a": {"n": 1, "s": "1", "f": 1, "l": [{"x": "y"}]}}), ".a.maybe: missing"),
        (json!({"a": {"n": 1, "s": "1", "f": 1, "l": [], "maybe": 1}}), ".a.l: empty"),
    ] {
        let mut out = Vec::new();
        json_shape("", &ex, &got, &mut out);
        assert!(out.iter().any(|o| o.starts_with(finding)), "{finding}: {out:?}");
    }
    let ex =
        roxmltree::Document::parse(r#"<lfm><t a="1"><n/><d u="2"/></t><t a="1" now="1"><n/></t></lfm>"#).expect("xml");
    for (got, finding) in [
        (r#"<lfm><t a="1"><n/><d u="2"/></t><t a="0" now="1"><n/></t></lfm>"#, None),
        (r#"<lfm><t><n/></t></lfm>"#, Some("/lfm/t[0]@a: missing")),
        (r#"<lfm><t a="1"><d/></t></lfm>"#, Some("/lfm/t[0]/n: missing")),
        (r#"<lfm></lfm>"#, Some("/lfm/t: missing")),
    ] {
        let got = roxmltree::Document::parse(got).expect("xml");
        let mut out = Vec::new();
        xml_shape("", None, ex.root_element(), got.root_element(), &mut out);
        match finding {
            None => assert!(out.is_empty(), "{out:?}"),
            Some(f) => assert!(out.iter().any(|o| o.starts_with(f)), "{f}: {out:?}"),
        }
    }
}

#[test]
fn every_endpoint_and_method_answers_in_the_real_services_shapes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, token) = data_with_user(dir.path());
    // A second member, public, who listens like alice: similar users and the node's
    // (sitewide) charts need one.
    let pw = dir.path().join("pw");
    assert_eq!(hearsay(&data, &["user", "add", "bob", "--password-file", pw.to_str().expect("utf8")]).0, 0);
    assert_eq!(hearsay(&data, &["user", "set-visibility", "bob", "public"]).0, 0);
    let (code, bob_token, _) = hearsay(&data, &["token", "new", "bob"]);
    assert_eq!(code, 0);
    let bob_token = bob_token.trim().to_owned();
    let node = NodeProcess::start(&data);
    let base = node.url.clone();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    let auth = format!("Token {token}");
    let lb_get = |path: &str| answer(ureq::get(&format!("{base}{path}")).set("Authorization", &auth).call());
    let lb_post = |path: &str, body: Value| {
        answer(ureq::post(&format!("{base}{path}")).set("Authorization", &auth).send_string(&body.to_string()))
    };
    let mut failures = Vec::new();
    let mut expect = |name: &str, (status, ct, body): (u16, String, String), want: u16, file: &str| {
        if status != want {
            failures.push(format!("{name}: status {status}, want {want}: {body:.300}"));
        } else if file.ends_with(".xml") {
            if !ct.starts_with("text/xml") {
                failures.push(format!("{name}: content type {ct:?}"));
            }
            check_xml(name, file, &body, &mut failures);
        } else {
            if !ct.starts_with("application/json") {
                failures.push(format!("{name}: content type {ct:?}"));
            }
            check_json(name, file, &body, &mut failures);
        }
    };

    // The test data: listens with every field, over the last weeks, one loved.
    let listens: Vec<Value> = (0..12)
        .map(|i| {
            json!({"listened_at": now - 3600 - i * 86_400, "track_metadata": {
            "artist_name": if i % 3 == 0 { "Kanye West" } else { "Sigur Rós" },
            "track_name": format!("Song {}", i % 4),
            "release_name": "The Life of Pablo",
            "additional_info": {
                "recording_mbid": "2cfad207-3f55-4aec-8120-86cf66e34d59",
                "release_mbid": "b1c2a2a4-6b46-4d8e-9a4a-4f5e1bb4c2b6",
                "artist_mbids": ["164f0d73-1234-4e2c-8743-d77bf2191051"],
                "duration_ms": 193_000,
                "submission_client": "Pano Scrobbler",
                "tracknumber": 3,
            }}})
        })
        .collect();
    let lb = "listenbrainz";
    let bob = answer(
        ureq::post(&format!("{base}/1/submit-listens"))
            .set("Authorization", &format!("Token {bob_token}"))
            .send_string(&json!({"listen_type": "import", "payload": listens}).to_string()),
    );
    assert_eq!(bob.0, 200, "{}", bob.2);
    expect(
        "submit-listens",
        lb_post("/1/submit-listens", json!({"listen_type": "import", "payload": listens})),
        200,
        &format!("{lb}/submit-listens.json"),
    );
    expect(
        "submit-listens (error)",
        lb_post("/1/submit-listens", json!({"payload": []})),
        400,
        &format!("{lb}/error.json"),
    );
    expect("validate-token", lb_get("/1/validate-token"), 200, &format!("{lb}/validate-token.valid.json"));
    expect(
        "validate-token (invalid)",
        answer(ureq::get(&format!("{base}/1/validate-token")).set("Authorization", "Token nope").call()),
        200,
        &format!("{lb}/validate-token.invalid.json"),
    );
    let got = lb_get("/1/user/alice/listens?count=3");
    let msid = serde_json::from_str::<Value>(&got.2)
        .ok()
        .and_then(|v| v["payload"]["listens"][0]["recording_msid"].as_str().map(str::to_owned));
    expect("user/listens", got, 200, &format!("{lb}/user-listens.json"));
    expect("user/listen-count", lb_get("/1/user/alice/listen-count"), 200, &format!("{lb}/user-listen-count.json"));
    expect(
        "submit-listens (playing_now)",
        lb_post(
            "/1/submit-listens",
            json!({"listen_type": "playing_now", "payload": [{"track_metadata": {
                "artist_name": "Kanye West", "track_name": "Fade", "release_name": "The Life of Pablo"}}]}),
        ),
        200,
        &format!("{lb}/submit-listens.json"),
    );
    expect("user/playing-now", lb_get("/1/user/alice/playing-now"), 200, &format!("{lb}/user-playing-now.json"));
    let msid = msid.expect("a recording msid");
    expect(
        "feedback/recording-feedback",
        lb_post("/1/feedback/recording-feedback", json!({"recording_msid": msid, "score": 1})),
        200,
        &format!("{lb}/submit-listens.json"),
    );
    for entity in ["artists", "recordings", "releases"] {
        expect(
            &format!("stats/user/{entity}"),
            lb_get(&format!("/1/stats/user/alice/{entity}")),
            200,
            &format!("{lb}/stats-user-{entity}.json"),
        );
    }
    expect(
        "stats/user/listening-activity",
        lb_get("/1/stats/user/alice/listening-activity?range=all_time"),
        200,
        &format!("{lb}/stats-user-listening-activity.json"),
    );
    expect(
        "stats/user/daily-activity",
        lb_get("/1/stats/user/alice/daily-activity"),
        200,
        &format!("{lb}/stats-user-daily-activity.json"),
    );
    expect(
        "feedback/user/get-feedback",
        lb_get("/1/feedback/user/alice/get-feedback"),
        200,
        &format!("{lb}/feedback-user-get-feedback.json"),
    );
    expect(
        "feedback/user/get-feedback?metadata=true",
        lb_get("/1/feedback/user/alice/get-feedback?metadata=true"),
        200,
        &format!("{lb}/feedback-user-get-feedback.metadata.json"),
    );
    // Reads without a token, of a public member: the same shapes.
    let anonymous = |path: &str| answer(ureq::get(&format!("{base}{path}")).call());
    expect("user/listens (no token)", anonymous("/1/user/bob/listens"), 200, &format!("{lb}/user-listens.json"));
    expect(
        "stats/user/artists (no token)",
        anonymous("/1/stats/user/bob/artists"),
        200,
        &format!("{lb}/stats-user-artists.json"),
    );
    expect("user/similar-users", lb_get("/1/user/alice/similar-users"), 200, &format!("{lb}/user-similar-users.json"));
    expect(
        "latest-import (POST)",
        lb_post("/1/latest-import", json!({"ts": now - 100, "service": "lastfm"})),
        200,
        &format!("{lb}/submit-listens.json"),
    );
    expect(
        "latest-import",
        lb_get("/1/latest-import?user_name=alice&service=lastfm"),
        200,
        &format!("{lb}/latest-import.get.json"),
    );
    for entity in ["artists", "recordings", "releases"] {
        expect(
            &format!("stats/sitewide/{entity}"),
            answer(ureq::get(&format!("{base}/1/stats/sitewide/{entity}")).call()),
            200,
            &format!("{lb}/stats-sitewide-{entity}.json"),
        );
    }
    expect("unknown /1/ path", lb_get("/1/no-such-thing"), 404, &format!("{lb}/error.json"));

    // Last.fm, in JSON and in XML.
    let api = format!("{base}/2.0/");
    let lastfm = |params: &[(&str, &str)], json: bool| {
        let mut all: Vec<(&str, &str)> = params.to_vec();
        all.push(("api_key", "0123456789abcdef0123456789abcdef"));
        if json {
            all.push(("format", "json"));
        }
        answer(ureq::post(&api).send_form(&all))
    };
    let (_, _, session) =
        lastfm(&[("method", "auth.getMobileSession"), ("username", "alice"), ("password", "password123")], true);
    let sk = serde_json::from_str::<Value>(&session).ok().and_then(|v| v["session"]["key"].as_str().map(str::to_owned));
    let sk = sk.unwrap_or_else(|| panic!("no session: {session}"));
    let ts = (now - 60).to_string();
    let (month_ago, soon) = ((now - 30 * 86_400).to_string(), (now + 1).to_string());
    let calls: Vec<Call> = vec![
        (
            "auth.getMobileSession",
            vec![("username", "alice"), ("password", "password123")],
            200,
            "auth.getMobileSession",
        ),
        ("auth.getToken", vec![], 200, "auth.getToken"),
        (
            "track.scrobble",
            vec![
                ("sk", &sk),
                ("artist", "Kanye West"),
                ("track", "Fade"),
                ("album", "The Life of Pablo"),
                ("timestamp", &ts),
            ],
            200,
            "track.scrobble",
        ),
        (
            "track.updateNowPlaying",
            vec![("sk", &sk), ("artist", "Kanye West"), ("track", "Fade"), ("album", "The Life of Pablo")],
            200,
            "track.updateNowPlaying",
        ),
        ("track.love", vec![("sk", &sk), ("artist", "Kanye West"), ("track", "Fade")], 200, "track.love"),
        ("user.getInfo", vec![("sk", &sk)], 200, "user.getInfo"),
        ("user.getInfo", vec![("sk", &sk), ("user", "nobody")], 404, "error"),
        ("user.getRecentTracks", vec![("sk", &sk), ("user", "alice")], 200, "user.getRecentTracks"),
        ("user.getTopArtists", vec![("sk", &sk), ("user", "alice")], 200, "user.getTopArtists"),
        ("user.getTopTracks", vec![("sk", &sk), ("user", "alice")], 200, "user.getTopTracks"),
        ("user.getTopAlbums", vec![("sk", &sk), ("user", "alice")], 200, "user.getTopAlbums"),
        ("user.getLovedTracks", vec![("sk", &sk), ("user", "alice")], 200, "user.getLovedTracks"),
        ("user.getWeeklyChartList", vec![("sk", &sk), ("user", "alice")], 200, "user.getWeeklyChartList"),
        (
            "user.getWeeklyArtistChart",
            vec![("sk", &sk), ("user", "alice"), ("from", &month_ago), ("to", &soon)],
            200,
            "user.getWeeklyArtistChart",
        ),
        (
            "user.getWeeklyAlbumChart",
            vec![("sk", &sk), ("user", "alice"), ("from", &month_ago), ("to", &soon)],
            200,
            "user.getWeeklyAlbumChart",
        ),
        (
            "user.getWeeklyTrackChart",
            vec![("sk", &sk), ("user", "alice"), ("from", &month_ago), ("to", &soon)],
            200,
            "user.getWeeklyTrackChart",
        ),
        (
            "track.getInfo",
            vec![("sk", &sk), ("artist", "Kanye West"), ("track", "Fade"), ("username", "alice")],
            200,
            "track.getInfo",
        ),
        ("artist.getInfo", vec![("sk", &sk), ("artist", "Kanye West"), ("username", "alice")], 200, "artist.getInfo"),
        (
            "album.getInfo",
            vec![("sk", &sk), ("artist", "Kanye West"), ("album", "The Life of Pablo"), ("username", "alice")],
            200,
            "album.getInfo",
        ),
        ("library.getArtists", vec![("sk", &sk), ("user", "alice")], 200, "library.getArtists"),
        // Without a session: a public member's reads, and item info with no user.
        ("user.getRecentTracks", vec![("user", "bob")], 200, "user.getRecentTracks"),
        ("user.getTopTracks", vec![("user", "bob")], 200, "user.getTopTracks"),
        ("artist.getInfo", vec![("artist", "Kanye West")], 200, "artist.getInfo.nouser"),
        ("track.getInfo", vec![("artist", "Kanye West"), ("track", "Song 0")], 200, "track.getInfo.nouser"),
    ];
    for (method, params, status, file) in &calls {
        for json in [true, false] {
            let mut all = vec![("method", *method)];
            all.extend(params.iter().copied());
            let ext = if json { "json" } else { "xml" };
            expect(&format!("{method} ({ext})"), lastfm(&all, json), *status, &format!("lastfm/{file}.{ext}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} differences from the real services' shapes:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(node.terminate(), Some(0));
}
