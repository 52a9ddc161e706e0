//! The web view over HTTP: log-in, profiles, visibility, escaping, 404s, CSRF.
//! (The headless-browser tests come with the rest of the web view.)

use serde_json::json;

use crate::support::{NodeProcess, data_with_user, hearsay};

pub(crate) fn get(url: &str, cookie: Option<&str>) -> (u16, String) {
    let mut req = ureq::get(url);
    if let Some(c) = cookie {
        req = req.set("Cookie", c);
    }
    match req.call() {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap_or_default()),
        Err(e) => panic!("{e}"),
    }
}

/// Posts a form without following redirects; returns status, Set-Cookie and body.
fn post_form(url: &str, cookie: Option<&str>, pairs: &[(&str, &str)]) -> (u16, Option<String>, String) {
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let mut req = agent.post(url);
    if let Some(c) = cookie {
        req = req.set("Cookie", c);
    }
    let resp = match req.send_form(pairs) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    let set_cookie = resp.header("set-cookie").map(str::to_owned);
    (resp.status(), set_cookie, resp.into_string().unwrap_or_default())
}

/// The pre-session form cookie and token a browser gets with a form page.
fn form_token(url: &str) -> (String, String) {
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let resp = match agent.get(url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    let cookie = resp.header("set-cookie").expect("form cookie").split(';').next().expect("pair").to_owned();
    let html = resp.into_string().expect("html");
    let token = html
        .split("name=\"form_token\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("form token")
        .to_owned();
    (cookie, token)
}

/// Posts the log-in form as a browser does (with its form token); returns status,
/// Set-Cookie and body.
pub(crate) fn login_post(base: &str, user: &str, password: &str) -> (u16, Option<String>, String) {
    let (cookie, token) = form_token(&format!("{base}/login"));
    post_form(
        &format!("{base}/login"),
        Some(&cookie),
        &[("form_token", &token), ("username", user), ("password", password)],
    )
}

#[test]
fn profiles_follow_visibility_escape_names_and_logins_use_csrf() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, token) = data_with_user(dir.path());
    let node = NodeProcess::start(&data);
    let now = hearsay::now_unix();
    let body = json!({"listen_type": "import", "payload": [
        {"listened_at": now - 100, "track_metadata": {"artist_name": "<script>alert(1)</script>", "track_name": "Tag & \"Quote\""}},
        {"listened_at": now - 400, "track_metadata": {"artist_name": "Sigur Rós", "track_name": "Hoppípolla"}},
    ]});
    ureq::post(&format!("{}/1/submit-listens", node.url))
        .set("Authorization", &format!("Token {token}"))
        .send_string(&body.to_string())
        .expect("submit");

    // Anonymous: the profile (aggregate by default) is a 404 page, like a missing user.
    let (s1, hidden) = get(&format!("{}/user/alice", node.url), None);
    let (s2, missing) = get(&format!("{}/user/nobody", node.url), None);
    assert_eq!((s1, s2), (404, 404));
    assert_eq!(hidden, missing, "a hidden profile is indistinguishable from a missing one");
    assert_eq!(get(&format!("{}/no/such/page", node.url), None).0, 404);

    // Log in: a wrong password re-shows the form with an error; the right one sets a
    // HttpOnly, SameSite cookie and redirects to the profile.
    let (s, _, body) = login_post(&node.url, "alice", "nope");
    assert!(s == 401 && body.contains("Wrong user name or password"), "{s}");
    // A log-in form posted from elsewhere (no form token) is refused.
    let (s, _, _) =
        post_form(&format!("{}/login", node.url), None, &[("username", "alice"), ("password", "password123")]);
    assert_eq!(s, 403);
    let (s, cookie, _) = login_post(&node.url, "alice", "password123");
    assert_eq!(s, 303);
    let cookie = cookie.expect("session cookie");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"), "{cookie}");
    let session = cookie.split(';').next().expect("pair").to_owned();
    let (s, page) = get(&format!("{}/user/alice?period=all", node.url), Some(&session));
    assert_eq!(s, 200);
    assert!(page.contains("Sigur Rós") && page.contains("Hoppípolla"));
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "names are escaped");
    assert!(!page.contains("<script>alert(1)</script>"), "no raw markup from a listen");
    assert!(page.contains("Tag &amp; &quot;Quote&quot;") || page.contains("Tag &amp; \"Quote\""));
    assert!(page.contains("Listening clock") && page.contains("<svg"));
    // Chart rows link to item pages: plays per month, first listen, weekly ranks.
    let link = page
        .split("href=\"/user/alice/artist/")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("artist link")
        .to_owned();
    let (s, artist) = get(&format!("{}/user/alice/artist/{link}", node.url), Some(&session));
    assert!(s == 200 && artist.contains("Listens per month") && artist.contains("first heard"), "{artist}");
    assert_eq!(get(&format!("{}/user/alice/artist/99999", node.url), Some(&session)).0, 404);
    assert_eq!(get(&format!("{}/user/alice/planet/0", node.url), Some(&session)).0, 404);
    let (s, weekly) = get(&format!("{}/user/alice/weekly", node.url), Some(&session));
    assert!(s == 200 && weekly.contains("Sigur Rós") && weekly.contains("new"), "{weekly}");
    assert_eq!(get(&format!("{}/user/alice/weekly?year=2021&week=53", node.url), Some(&session)).0, 404);

    // Log out needs the form's CSRF token.
    let (s, _, _) = post_form(&format!("{}/logout", node.url), Some(&session), &[("csrf", "forged")]);
    assert_eq!(s, 403);
    let csrf =
        page.split("name=\"csrf\" value=\"").nth(1).and_then(|r| r.split('"').next()).expect("csrf field").to_owned();
    let (s, _, _) = post_form(&format!("{}/logout", node.url), Some(&session), &[("csrf", &csrf)]);
    assert_eq!(s, 303);
    assert_eq!(get(&format!("{}/user/alice", node.url), Some(&session)).0, 404, "the session ended");

    // Public: anyone sees the profile.
    assert_eq!(node.terminate(), Some(0));
    assert_eq!(hearsay(&data, &["user", "set-visibility", "alice", "public"]).0, 0);
    let node = NodeProcess::start(&data);
    let (s, page) = get(&format!("{}/user/alice?period=all", node.url), None);
    assert!(s == 200 && page.contains("Hoppípolla"));
    let (s, home) = get(&format!("{}/", node.url), None);
    assert!(s == 200 && home.contains("Sigur Rós"), "public listens on the home page");
    drop(node);
}

pub fn login(url: &str) -> (String, String) {
    let (_, cookie, _) = login_post(url, "alice", "password123");
    let session = cookie.expect("cookie").split(';').next().expect("pair").to_owned();
    let (_, page) = get(&format!("{url}/settings"), Some(&session));
    let csrf = page.split("name=\"csrf\" value=\"").nth(1).and_then(|r| r.split('"').next()).expect("csrf").to_owned();
    (session, csrf)
}

#[test]
fn out_of_range_periods_are_not_found_not_server_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, _) = data_with_user(dir.path());
    hearsay(&data, &["user", "set-visibility", "alice", "public"]);
    let node = NodeProcess::start(&data);
    for query in ["year=9999&week=1", "year=-9999&week=1", "year=1&week=1", "year=2024&week=60", "year=99999999"] {
        let (status, _) = get(&format!("{}/user/alice/weekly?{query}", node.url), None);
        assert!(status == 404 || status == 200, "{query}: {status}");
        assert_ne!(status, 500, "{query}");
    }
    for period in ["9999", "9999-01", "9999-W01", "0", "-5"] {
        let (status, _) = get(&format!("{}/user/alice?period={period}", node.url), None);
        assert!(status < 500, "period={period}: {status}");
    }
}

#[test]
fn history_deletes_and_settings_change_visibility_and_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, token) = data_with_user(dir.path());
    let node = NodeProcess::start(&data);
    let now = hearsay::now_unix();
    // Songs 45 to 59 share one second, across the boundary of the first page (50).
    let payload: Vec<_> = (0..60)
        .map(|i| json!({"listened_at": now - 1000 - i.min(45) * 300, "track_metadata": {"artist_name": "Band", "track_name": format!("Song {i}")}}))
        .collect();
    ureq::post(&format!("{}/1/submit-listens", node.url))
        .set("Authorization", &format!("Token {token}"))
        .send_string(&json!({"listen_type": "import", "payload": payload}).to_string())
        .expect("submit");
    let (session, csrf) = login(&node.url);
    let (s, connect) = get(&format!("{}/connect", node.url), Some(&session));
    assert!(s == 200 && connect.contains(&format!("{}/1/submit-listens", node.url)), "the node's own URL is filled in");
    assert_eq!(get(&format!("{}/connect", node.url), None).0, 200, "anonymous visitors are sent to log in");
    // Pages by cursor: the newest 50, then older from the last listen shown; every
    // listen once, those sharing the boundary's second included; back by "Newer".
    let (s, page1) = get(&format!("{}/user/alice/history", node.url), Some(&session));
    assert!(s == 200 && page1.contains("60 listens") && page1.contains(">Song 0<"), "{page1}");
    let link = |page: &str, label: &str| -> Option<String> {
        let at = page.find(&format!("\">{label}</a>"))?;
        let start = page[..at].rfind("href=\"")? + 6;
        Some(page[start..at].replace("&amp;", "&"))
    };
    assert!(link(&page1, "Newer").is_none(), "nothing newer than the newest");
    let older = link(&page1, "Older").expect("an Older link");
    assert!(older.starts_with("?before="), "{older}");
    let (s, page2) = get(&format!("{}/user/alice/history{older}", node.url), Some(&session));
    assert_eq!(s, 200);
    let songs = |page: &str| -> Vec<String> {
        page.split(">Song ").skip(1).filter_map(|r| r.split('<').next()).map(String::from).collect()
    };
    let mut all: Vec<String> = songs(&page1).into_iter().chain(songs(&page2)).collect();
    assert_eq!((songs(&page1).len(), songs(&page2).len()), (50, 10));
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 60, "every listen once across the pages");
    assert!(link(&page2, "Older").is_none(), "nothing older than the oldest");
    let newer = link(&page2, "Newer").expect("a Newer link");
    let (_, back) = get(&format!("{}/user/alice/history{newer}", node.url), Some(&session));
    assert_eq!(songs(&back), songs(&page1), "Newer from page 2 is page 1 again");
    assert!(link(&back, "Newer").is_none() && link(&back, "Older").is_some(), "at the top: Older only");
    for bad in ["?before=abc", "?before=1.2&after=1.2", "?after=9999999999.0", "?before=0.0"] {
        assert_eq!(get(&format!("{}/user/alice/history{bad}", node.url), Some(&session)).0, 404, "{bad}");
    }
    // Delete "Song 0" (the newest): its seq is in the first delete form.
    let seq = page1.split("name=\"seq\" value=\"").nth(1).and_then(|r| r.split('"').next()).expect("seq").to_owned();
    let url = format!("{}/user/alice/history/delete", node.url);
    assert_eq!(post_form(&url, Some(&session), &[("csrf", "forged"), ("seq", &seq)]).0, 403);
    assert_eq!(post_form(&url, Some(&session), &[("csrf", &csrf), ("seq", &seq), ("page", "")]).0, 303);
    // From an older page, back to the same cursor; a page value that is not a cursor
    // (a header or another site) comes back as the newest page.
    let location = |pairs: &[(&str, &str)]| -> Option<String> {
        let agent = ureq::AgentBuilder::new().redirects(0).build();
        let resp = agent.post(&url).set("Cookie", &session).send_form(pairs).expect("303");
        resp.header("location").map(str::to_owned)
    };
    let seqs: Vec<String> =
        page2.split("name=\"seq\" value=\"").skip(1).filter_map(|r| r.split('"').next()).map(String::from).collect();
    assert_eq!(
        location(&[("csrf", &csrf), ("seq", &seqs[0]), ("page", &older)]).as_deref(),
        Some(format!("/user/alice/history{older}").as_str())
    );
    for (evil, seq) in
        ["?before=1.2%0d%0aX-Evil:%20y", "//evil.example/", "?before=1.2&after=3.4"].iter().zip(&seqs[1..])
    {
        assert_eq!(
            location(&[("csrf", &csrf), ("seq", seq), ("page", evil)]).as_deref(),
            Some("/user/alice/history"),
            "{evil}"
        );
    }
    // The rest of page 2, from page 2: back to it while it holds listens, then, with its
    // last one gone, to the newest page (not to an empty cursor page's 404).
    for (i, seq) in seqs[4..].iter().enumerate() {
        let last = i + 5 == seqs.len();
        let want = if last { "/user/alice/history".to_owned() } else { format!("/user/alice/history{older}") };
        assert_eq!(location(&[("csrf", &csrf), ("seq", seq), ("page", &older)]), Some(want), "delete {i}");
    }
    assert_eq!(get(&format!("{}/user/alice/history{older}", node.url), Some(&session)).0, 404, "page 2 is empty now");
    // All ten of page 2's listens gone as well: 49 left.
    let (_, after) = get(&format!("{}/user/alice/history", node.url), Some(&session));
    assert!(after.contains("49 listens") && !after.contains(">Song 0<"), "deleted");
    // Anonymous visitors cannot delete or see the history of a hidden profile.
    assert_eq!(get(&format!("{}/user/alice/history", node.url), None).0, 404);
    assert_eq!(post_form(&url, None, &[("csrf", &csrf), ("seq", "1")]).0, 404);

    // Pause scrobbling: submissions are answered ok and not stored, until resumed.
    let pause = format!("{}/settings/pause", node.url);
    let (s, _, body) = post_form(&pause, Some(&session), &[("csrf", &csrf), ("paused", "yes")]);
    assert!(s == 200 && body.contains("Scrobbling is paused"));
    let incognito = json!({"listen_type": "single", "payload": [{"listened_at": now - 30, "track_metadata": {"artist_name": "Secret", "track_name": "Incognito"}}]});
    let submit = |body: &serde_json::Value| {
        ureq::post(&format!("{}/1/submit-listens", node.url))
            .set("Authorization", &format!("Token {token}"))
            .send_string(&body.to_string())
            .expect("accepted")
            .status()
    };
    assert_eq!(submit(&incognito), 200);
    let (_, hist) = get(&format!("{}/user/alice/history", node.url), Some(&session));
    assert!(!hist.contains("Incognito") && hist.contains("49 listens"), "paused: nothing stored");
    post_form(&pause, Some(&session), &[("csrf", &csrf), ("paused", "no")]);
    assert_eq!(submit(&incognito), 200);
    let (_, hist) = get(&format!("{}/user/alice/history", node.url), Some(&session));
    assert!(hist.contains("Incognito") && hist.contains("50 listens"), "resumed: stored");
    // Time zone: an unknown one is refused with the form shown again; a known one is saved.
    let tz = format!("{}/settings/timezone", node.url);
    let (s, _, body) = post_form(&tz, Some(&session), &[("csrf", &csrf), ("timezone", "Mars/Olympus")]);
    assert!(s == 400 && body.contains("Unknown time zone"), "{s}");
    let (s, _, body) = post_form(&tz, Some(&session), &[("csrf", &csrf), ("timezone", "Europe/Berlin")]);
    assert!(s == 200 && body.contains("value=\"Europe/Berlin\""), "{s}");
    // Settings: make the profile public, then private again; create and revoke a token.
    let vis = format!("{}/settings/visibility", node.url);
    assert_eq!(post_form(&vis, Some(&session), &[("csrf", &csrf), ("level", "public")]).0, 200);
    assert_eq!(get(&format!("{}/user/alice", node.url), None).0, 200);
    assert_eq!(post_form(&vis, Some(&session), &[("csrf", &csrf), ("level", "private")]).0, 200);
    assert_eq!(get(&format!("{}/user/alice", node.url), None).0, 404);
    let (s, _, made) =
        post_form(&format!("{}/settings/tokens", node.url), Some(&session), &[("csrf", &csrf), ("name", "my phone")]);
    assert_eq!(s, 200);
    let new_token =
        made.split("<code>").nth(1).and_then(|r| r.split("</code>").next()).expect("token shown once").to_owned();
    let validate = |t: &str| {
        let v: serde_json::Value = serde_json::from_str(
            &ureq::get(&format!("{}/1/validate-token?token={t}", node.url))
                .call()
                .expect("v")
                .into_string()
                .expect("b"),
        )
        .expect("json");
        v["valid"].as_bool()
    };
    assert_eq!(validate(&new_token), Some(true));
    let (_, settings) = get(&format!("{}/settings", node.url), Some(&session));
    assert!(!settings.contains(&new_token), "a token is shown only once");
    let ids: Vec<String> =
        settings.split("name=\"id\" value=\"").skip(1).filter_map(|r| r.split('"').next()).map(str::to_owned).collect();
    for id in ids {
        post_form(&format!("{}/settings/tokens/revoke", node.url), Some(&session), &[("csrf", &csrf), ("id", &id)]);
    }
    assert_eq!(validate(&new_token), Some(false));
    assert_eq!(validate(&token), Some(false));
    drop(node);
}

/// Every page and read API × every sharing level × owner / another user / anonymous:
/// only the owner, or anyone for a public user, sees anything; everyone else gets
/// exactly what they would get for a user who does not exist.
#[test]
fn visibility_matrix_nothing_leaks() {
    use hearsay::store::users::SharingLevel;
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, alice_token) = data_with_user(dir.path());
    let pw = dir.path().join("pw");
    assert_eq!(hearsay(&data, &["user", "add", "bob", "--password-file", pw.to_str().expect("utf8")]).0, 0);
    let (_, bob_token, _) = hearsay(&data, &["token", "new", "bob"]);
    let bob_token = bob_token.trim().to_owned();
    let secret = "Unmistakable Secret Song 4242";
    for level in [SharingLevel::Private, SharingLevel::Aggregate, SharingLevel::Public] {
        assert_eq!(hearsay(&data, &["user", "set-visibility", "alice", level.as_str()]).0, 0);
        let node = NodeProcess::start(&data);
        let now = hearsay::now_unix();
        let submit = json!({"listen_type": "single", "payload": [{"listened_at": now - 60, "track_metadata": {"artist_name": "Secretive", "track_name": secret}}]});
        ureq::post(&format!("{}/1/submit-listens", node.url))
            .set("Authorization", &format!("Token {alice_token}"))
            .send_string(&submit.to_string())
            .expect("submit");
        let (alice_session, _) = login(&node.url);
        let (_, bob_cookie, _) = login_post(&node.url, "bob", "password123");
        let bob_session = bob_cookie.expect("cookie").split(';').next().expect("pair").to_owned();
        let lastfm_sk = |token: &str| -> String {
            let r = ureq::post(&format!("{}/2.0/", node.url))
                .send_form(&[
                    ("method", "auth.getMobileSession"),
                    ("username", if token == alice_token { "alice" } else { "bob" }),
                    ("password", token),
                    ("format", "json"),
                ])
                .expect("session")
                .into_string()
                .expect("body");
            serde_json::from_str::<serde_json::Value>(&r).expect("json")["session"]["key"]
                .as_str()
                .expect("key")
                .to_owned()
        };
        let (alice_sk, bob_sk) = (lastfm_sk(&alice_token), lastfm_sk(&bob_token));
        // (what, url for a given user name, how to authenticate as a viewer)
        use hearsay::stats::chart::Kind;
        use hearsay::store::aggregates::item_handle;
        let artist_page = format!("/user/{{}}/artist/{}", item_handle(Kind::Artist, "Secretive", None));
        let track_page = format!("/user/{{}}/track/{}", item_handle(Kind::Recording, secret, Some("Secretive")));
        let pages =
            ["/user/{}", "/user/{}?period=all", "/user/{}/history", &artist_page, &track_page, "/user/{}/weekly"];
        let apis = [
            "/1/user/{}/listens",
            "/1/user/{}/listen-count",
            "/1/user/{}/playing-now",
            "/1/stats/user/{}/artists",
            "/1/stats/user/{}/recordings",
            "/1/stats/user/{}/releases",
        ];
        let lastfm =
            ["user.getInfo", "user.getRecentTracks", "user.getTopArtists", "user.getTopTracks", "user.getTopAlbums"];
        #[derive(Clone, Copy, Debug, PartialEq)]
        enum Who {
            Owner,
            Other,
            Anonymous,
        }
        for who in [Who::Owner, Who::Other, Who::Anonymous] {
            let allowed = who == Who::Owner || level == SharingLevel::Public;
            let (cookie, token, sk) = match who {
                Who::Owner => (Some(alice_session.as_str()), Some(alice_token.as_str()), Some(alice_sk.as_str())),
                Who::Other => (Some(bob_session.as_str()), Some(bob_token.as_str()), Some(bob_sk.as_str())),
                Who::Anonymous => (None, None, None),
            };
            for p in pages {
                let (s, body) = get(&format!("{}{}", node.url, p.replace("{}", "alice")), cookie);
                let (s_missing, body_missing) = get(&format!("{}{}", node.url, p.replace("{}", "nobody")), cookie);
                if allowed {
                    assert_eq!(s, 200, "{level:?} {who:?} {p}");
                } else {
                    assert_eq!(
                        (s, &body),
                        (s_missing, &body_missing),
                        "{level:?} {who:?} {p}: hidden must look missing"
                    );
                    assert!(!body.contains(secret), "{level:?} {who:?} {p} leaked");
                }
            }
            for a in apis {
                let fetch = |name: &str| {
                    let mut req = ureq::get(&format!("{}{}", node.url, a.replace("{}", name)));
                    if let Some(t) = token {
                        req = req.set("Authorization", &format!("Token {t}"));
                    }
                    match req.call() {
                        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
                        Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap_or_default()),
                        Err(e) => panic!("{e}"),
                    }
                };
                let (s, body) = fetch("alice");
                let (s_missing, body_missing) = fetch("nobody");
                if allowed {
                    assert!(s == 200 || s == 204, "{level:?} {who:?} {a}: {s}");
                } else {
                    assert_eq!(
                        (s, body.replace("alice", "X")),
                        (s_missing, body_missing.replace("nobody", "X")),
                        "{level:?} {who:?} {a}"
                    );
                    assert!(!body.contains(secret), "{level:?} {who:?} {a} leaked");
                }
            }
            for m in lastfm {
                let call = |name: &str| {
                    let mut form = vec![("method", m), ("user", name)];
                    if let Some(k) = sk {
                        form.push(("sk", k));
                    }
                    match ureq::post(&format!("{}/2.0/", node.url)).send_form(&form) {
                        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
                        Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap_or_default()),
                        Err(e) => panic!("{e}"),
                    }
                };
                let (s, body) = call("alice");
                let (s_missing, body_missing) = call("nobody");
                if allowed {
                    assert_eq!(s, 200, "{level:?} {who:?} {m}");
                } else {
                    assert_eq!((s, &body), (s_missing, &body_missing), "{level:?} {who:?} {m}");
                    assert!(!body.contains(secret), "{level:?} {who:?} {m} leaked");
                }
            }
        }
        // The home page lists public users' recent listens to anyone; the node chart
        // (artists only, no user named) sums public users only (`policy`), for visitors
        // and members alike: an aggregate user counts only in DP releases.
        let (_, home) = get(&format!("{}/", node.url), None);
        assert_eq!(home.contains(secret), level == SharingLevel::Public, "{level:?}: recent listens");
        assert_eq!(home.contains("Secretive"), level == SharingLevel::Public, "{level:?}: visitors' home");
        let (_, member_home) = get(&format!("{}/", node.url), Some(&bob_session));
        assert_eq!(member_home.contains("Secretive"), level == SharingLevel::Public, "{level:?}: members' node chart");
        assert_eq!(node.terminate(), Some(0));
    }
}

#[test]
fn delete_all_my_data_erases_the_account_while_the_node_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, token) = data_with_user(dir.path());
    let node = NodeProcess::start(&data);
    let now = hearsay::now_unix();
    let submit = json!({"listen_type": "single", "payload": [{"listened_at": now - 60, "track_metadata": {"artist_name": "Gone", "track_name": "Soon"}}]});
    ureq::post(&format!("{}/1/submit-listens", node.url))
        .set("Authorization", &format!("Token {token}"))
        .send_string(&submit.to_string())
        .expect("submit");
    let (session, csrf) = login(&node.url);
    let url = format!("{}/settings/delete", node.url);
    let (s, _, body) = post_form(&url, Some(&session), &[("csrf", &csrf), ("confirm", "not-alice")]);
    assert!(s == 400 && body.contains("Nothing was deleted"));
    let (s, cookie, body) = post_form(&url, Some(&session), &[("csrf", &csrf), ("confirm", "alice")]);
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("1 listens") && body.contains("store compact"), "{body}");
    assert!(cookie.is_some_and(|c| c.contains("Max-Age=0")));
    // Everything is gone: the session, the token, the profile, the user.
    assert_eq!(get(&format!("{}/user/alice", node.url), Some(&session)).0, 404);
    let v: serde_json::Value = serde_json::from_str(
        &ureq::get(&format!("{}/1/validate-token?token={token}", node.url))
            .call()
            .expect("v")
            .into_string()
            .expect("b"),
    )
    .expect("json");
    assert_eq!(v["valid"], false);
    // The name can be registered again (from the command line) and starts empty.
    assert_eq!(node.terminate(), Some(0));
    let store = hearsay::store::Store::open(&data, &hearsay::store::Options { cache_mb: 8, ..Default::default() })
        .expect("open");
    assert!(store.user_by_name("alice").expect("lookup").is_none());
    assert!(store.users().expect("users").is_empty());
}

#[test]
fn the_admin_page_is_for_administrators_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, _) = data_with_user(dir.path());
    let pw = dir.path().join("pw");
    assert_eq!(hearsay(&data, &["user", "add", "bob", "--password-file", pw.to_str().expect("utf8")]).0, 0);
    let node = NodeProcess::start_with(&data, &[("HEARSAY_NODE__ADMINS", "[\"alice\"]")]);
    let (alice, _) = login(&node.url);
    let (_, bob_cookie, _) = login_post(&node.url, "bob", "password123");
    let bob = bob_cookie.expect("cookie").split(';').next().expect("pair").to_owned();
    let (s, page) = get(&format!("{}/admin", node.url), Some(&alice));
    assert!(s == 200 && page.contains("12D3KooW") && page.contains("bob") && page.contains("MiB on disk"), "{page}");
    assert_eq!(get(&format!("{}/admin", node.url), Some(&bob)).0, 404);
    assert_eq!(get(&format!("{}/admin", node.url), None).0, 404);

    // Registration is by invitation (open registration is off by default).
    assert_eq!(get(&format!("{}/register", node.url), None).0, 403);
    let csrf = page.split("name=\"csrf\" value=\"").nth(1).and_then(|r| r.split('"').next()).expect("csrf").to_owned();
    assert_eq!(
        post_form(&format!("{}/admin/invite", node.url), Some(&bob), &[("csrf", &csrf)]).0,
        404,
        "bob is no admin"
    );
    let (s, _, made) = post_form(&format!("{}/admin/invite", node.url), Some(&alice), &[("csrf", &csrf)]);
    assert_eq!(s, 200);
    let code = made.split("invite=").nth(1).and_then(|r| r.split('<').next()).expect("invite link").to_owned();
    assert_eq!(get(&format!("{}/register?invite={code}", node.url), None).0, 200);
    let register = format!("{}/register", node.url);
    let (form_cookie, token) = form_token(&format!("{register}?invite={code}"));
    let fc = Some(form_cookie.as_str());
    let (s, _, body) = post_form(
        &register,
        fc,
        &[("form_token", &token), ("invite", &code), ("username", "bad name"), ("password", "password123")],
    );
    assert!(s == 400 && body.contains("invalid user name"), "{body}");
    let (s, cookie, _) = post_form(
        &register,
        fc,
        &[("form_token", &token), ("invite", &code), ("username", "carol"), ("password", "password123")],
    );
    assert!(s == 303 && cookie.is_some(), "registered and logged in");
    let (s, _, _) = post_form(
        &register,
        fc,
        &[("form_token", &token), ("invite", &code), ("username", "dave"), ("password", "password123")],
    );
    assert_eq!(s, 403, "an invitation works once");
}

#[test]
fn a_community_administrator_admits_and_removes_members_in_the_web_view() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, _) = data_with_user(dir.path());
    let (code, id, err) = hearsay(&data, &["community", "create", "Friends"]);
    assert_eq!(code, 0, "{err}");
    let id = id.trim().to_owned();
    let (code, newcomer, _) = hearsay(&dir.path().join("other"), &["node", "id"]);
    assert_eq!(code, 0);
    let newcomer = newcomer.trim().to_owned();
    let node = NodeProcess::start_with(&data, &[("HEARSAY_NODE__ADMINS", "[\"alice\"]")]);
    let (alice, csrf) = login(&node.url);
    let url = format!("{}/network/community/{id}", node.url);
    let (s, page) = get(&url, Some(&alice));
    assert!(s == 200 && page.contains("Members (1)") && page.contains("Admit"), "{page}");
    // Visitors see the manifest, not the forms; a forged form post is refused.
    let (_, visitor) = get(&url, None);
    assert!(visitor.contains("Members (1)") && !visitor.contains("Admit"));
    assert_eq!(post_form(&format!("{url}/admit"), Some(&alice), &[("node", &newcomer)]).0, 403);
    let (s, _, page) = post_form(&format!("{url}/admit"), Some(&alice), &[("csrf", &csrf), ("node", &newcomer)]);
    assert!(s == 200 && page.contains("Manifest version 2") && page.contains(&newcomer), "{page}");
    // The invitation ticket, with the node running: the newcomer joins with it.
    let (_, page) = get(&url, Some(&alice));
    let ticket = page.split("hearsay2").nth(1).and_then(|t| t.split('<').next()).expect("a ticket on the page");
    let newcomer_dir = dir.path().join("newcomer");
    let (code, _, err) = hearsay(&newcomer_dir, &["community", "join", &format!("hearsay2{ticket}")]);
    assert_eq!(code, 0, "the ticket from the page joins: {err}");
    assert!(!visitor.contains("hearsay2"), "only the administrator sees the ticket");
    let (s, _, page) = post_form(&format!("{url}/admit"), Some(&alice), &[("csrf", &csrf), ("node", "not-a-peer")]);
    assert!(s == 400 && page.contains("not an ed25519 PeerId"), "{page}");
    let (s, _, page) = post_form(&format!("{url}/remove"), Some(&alice), &[("csrf", &csrf), ("node", &newcomer)]);
    assert!(s == 200 && page.contains("Manifest version 3") && page.contains("Members (1)"), "{page}");
    let (_, network) = get(&format!("{}/network", node.url), Some(&alice));
    assert!(network.contains("Friends") && network.contains("manifest v3"), "{network}");
    assert_eq!(node.terminate(), Some(0));
    let (_, list, _) = hearsay(&data, &["community", "list"]);
    assert!(list.contains("Friends\tv3\t1 members\tmember"), "{list}");
}

/// A community whose changes need two administrators: on the web page, one
/// administrator's admission is only a proposal (202, nothing changes); a proposal
/// from the other administrator's node is approved with the page's form and published.
#[test]
fn a_threshold_community_takes_approvals_in_the_web_view() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, _) = data_with_user(dir.path());
    let (code, id, err) = hearsay(&data, &["community", "create", "Friends"]);
    assert_eq!(code, 0, "{err}");
    let id = id.trim().to_owned();
    let other = dir.path().join("other");
    let other_id = hearsay(&other, &["node", "id"]).1.trim().to_owned();
    let newcomer = hearsay(&dir.path().join("newcomer"), &["node", "id"]).1.trim().to_owned();
    let (code, _, err) = hearsay(&data, &["community", "admins", "Friends", "--add", &other_id, "--threshold", "2"]);
    assert_eq!(code, 0, "{err}");
    let ticket = hearsay(&data, &["community", "invite", "Friends"]).1;
    assert_eq!(hearsay(&other, &["community", "join", ticket.trim()]).0, 0);
    // The other administrator proposes admitting the newcomer.
    let (code, _, err) = hearsay(&other, &["community", "invite", "Friends", "--node", &newcomer]);
    assert_eq!(code, 0, "{err}");
    let proposal = err.lines().find(|l| l.starts_with("hearsay-proposal1")).expect("a proposal").to_owned();

    let node = NodeProcess::start_with(&data, &[("HEARSAY_NODE__ADMINS", "[\"alice\"]")]);
    let (alice, csrf) = login(&node.url);
    let url = format!("{}/network/community/{id}", node.url);
    let (_, page) = get(&url, Some(&alice));
    assert!(page.contains("2 must sign each new version") && page.contains("Approve a proposal"), "{page}");
    // Alone, this administrator only proposes.
    let third = hearsay(&dir.path().join("third"), &["node", "id"]).1.trim().to_owned();
    let (s, _, page) = post_form(&format!("{url}/admit"), Some(&alice), &[("csrf", &csrf), ("node", &third)]);
    assert!(s == 202 && page.contains("signed by 1 of the 2") && page.contains("hearsay-proposal1"), "{page}");
    assert!(page.contains("Members (2)") && !page.contains(&third), "nothing changed: {page}");
    // Not a proposal, and a forged one.
    let (s, _, page) = post_form(&format!("{url}/approve"), Some(&alice), &[("csrf", &csrf), ("proposal", "hello")]);
    assert!(s == 400 && page.contains("not a hearsay manifest proposal"), "{page}");
    let mut forged = proposal.clone();
    let last = forged.pop().expect("a digit");
    forged.push(if last == '0' { '1' } else { '0' });
    let (s, _, _) = post_form(&format!("{url}/approve"), Some(&alice), &[("csrf", &csrf), ("proposal", &forged)]);
    assert_eq!(s, 400, "a forged proposal");
    // Without the CSRF token: refused.
    assert_eq!(post_form(&format!("{url}/approve"), Some(&alice), &[("proposal", &proposal)]).0, 403);
    // The other administrator's proposal: first shown, not signed.
    let (s, _, page) = post_form(&format!("{url}/approve"), Some(&alice), &[("csrf", &csrf), ("proposal", &proposal)]);
    assert!(
        s == 200 && page.contains(&format!("member added: {newcomer}")) && page.contains("Sign these changes"),
        "{page}"
    );
    assert!(page.contains("Members (2)"), "nothing signed yet: {page}");
    let sign = [("csrf", csrf.as_str()), ("proposal", proposal.as_str()), ("confirm", "sign")];
    // This node already signed another version 3 (its own admission above): refused,
    // with the way out; withdrawn, the approval goes through.
    let (s, _, page) = post_form(&format!("{url}/approve"), Some(&alice), &sign);
    assert!(s == 409 && page.contains("already signed a different version 3") && page.contains("Withdraw"), "{page}");
    let (s, _, page) = post_form(&format!("{url}/withdraw"), Some(&alice), &[("csrf", &csrf)]);
    assert!(s == 200 && page.contains("withdrawn"), "{page}");
    let (s, _, page) = post_form(&format!("{url}/approve"), Some(&alice), &sign);
    assert!(s == 200 && page.contains("Manifest version 3 signed") && page.contains("Members (3)"), "{page}");
    assert!(page.contains(&newcomer), "{page}");
    assert_eq!(node.terminate(), Some(0));
    let (_, list, _) = hearsay(&data, &["community", "list"]);
    assert!(list.contains("Friends\tv3\t3 members"), "{list}");
}

#[test]
fn a_user_downloads_their_listens_and_nobody_else_can() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, token) = data_with_user(dir.path());
    let node = NodeProcess::start(&data);
    let now = hearsay::now_unix();
    let payload: Vec<_> = (0..3)
        .map(|i| json!({"listened_at": now - 1000 * (i + 1), "track_metadata": {"artist_name": "Down, Load", "track_name": format!("Song {i}")}}))
        .collect();
    ureq::post(&format!("{}/1/submit-listens", node.url))
        .set("Authorization", &format!("Token {token}"))
        .send_string(&json!({"listen_type": "import", "payload": payload}).to_string())
        .expect("submit");
    let (session, _) = login(&node.url);
    let (s, csv) = get(&format!("{}/settings/export/csv", node.url), Some(&session));
    assert_eq!(s, 200);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "uts,utc_time,artist,album,track,duration_ms,recording_mbid");
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(lines[1].contains("\"Down, Load\",,Song 2"), "oldest first, quoted: {csv}");
    let (s, jsonl) = get(&format!("{}/settings/export/listenbrainz", node.url), Some(&session));
    assert_eq!(s, 200);
    let first: serde_json::Value = serde_json::from_str(jsonl.lines().next().expect("a line")).expect("json");
    assert_eq!(first["track_metadata"]["artist_name"], "Down, Load");
    // Without a session: to the log-in page, never the data.
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let r = agent.get(&format!("{}/settings/export/csv", node.url)).call().expect("redirect");
    assert_eq!((r.status(), r.header("location")), (303, Some("/login")));
    assert_eq!(node.terminate(), Some(0));
}

/// Network addresses (the node's and its peers') are for administrators and the
/// operator's command line only; everyone else sees PeerIds.
#[test]
fn network_addresses_are_shown_to_administrators_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, _) = data_with_user(dir.path());
    let node = NodeProcess::start_with(&data, &[("HEARSAY_NODE__ADMINS", "[\"alice\"]")]);
    let json = |auth: Option<&str>| -> serde_json::Value {
        let mut req = ureq::get(&format!("{}/api/network", node.url));
        if let Some(a) = auth {
            req = req.set("Authorization", a);
        }
        serde_json::from_str(&req.call().expect("network").into_string().expect("body")).expect("json")
    };
    // The p2p layer may take a moment to report its listen addresses.
    let mut control = String::new();
    for _ in 0..50 {
        if let Ok(t) = std::fs::read_to_string(data.join("control.token")) {
            control = t;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mut operator = json(Some(&format!("Bearer {}", control.trim())));
    for _ in 0..50 {
        if operator["p2p"]["listen"].as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        operator = json(Some(&format!("Bearer {}", control.trim())));
    }
    let listen = operator["p2p"]["listen"].as_array().expect("listen").clone();
    assert!(!listen.is_empty(), "the operator sees the listen addresses: {operator}");
    let anonymous = json(None);
    assert_eq!(anonymous["p2p"]["listen"], serde_json::json!([]), "{anonymous}");
    assert!(!anonymous.to_string().contains("/ip4/"), "an address reached a visitor: {anonymous}");
    let forged = json(Some("Bearer not-the-token"));
    assert!(!forged.to_string().contains("/ip4/"), "a wrong control token is a visitor");
    let (_, page) = get(&format!("{}/network", node.url), None);
    assert!(!page.contains("/ip4/") && page.contains("administrators only"), "{page}");
    let (session, _) = login(&node.url);
    let (_, admin_page) = get(&format!("{}/network", node.url), Some(&session));
    assert!(admin_page.contains("/ip4/127.0.0.1"), "the administrator sees them: {admin_page}");
    assert_eq!(node.terminate(), Some(0));
}

/// The home page's "recently, from public profiles": the 15 newest listens across every
/// public user, newest first, a deleted listen gone, never one of a member who is not
/// public (whose listens are the newest of all here). The page reads listens only from
/// users who can still place one (`profile::recent_public`); this checks it finds the
/// same 15 as reading everyone's would.
#[test]
fn the_home_page_shows_the_newest_public_listens_across_users() {
    use hearsay::store::users::SharingLevel;
    use hearsay::store::{Action, Ingestor, Options, Store};
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let now = hearsay::now_unix();
    let mut expected: Vec<(i64, String)> = Vec::new();
    {
        let store = Store::open(&data, &Options { cache_mb: 8, ..Default::default() }).expect("open");
        let ingestor = Ingestor::start(store.clone(), 10_000, Default::default()).expect("writer");
        let created = now - 30 * 86_400;
        for i in 0..6i64 {
            let name = format!("pub{i}");
            let id = store
                .create_user_with_key(&name, "password123", [u8::try_from(i + 1).expect("small"); 32], created)
                .expect("user")
                .id;
            store.set_visibility_at(id, SharingLevel::Public, created).expect("level");
            // Interleaved across users; user 0's are the newest, user 5's the oldest.
            let listens: Vec<Action> = (0..10i64)
                .map(|j| {
                    let at = now - 1_000 - (j * 6 + i) * 60;
                    Action::Listen(crate::support::listen_accepted_at(&name, &format!("Song {i}-{j}"), at, now))
                })
                .collect();
            ingestor.ingest_blocking(id, listens).expect("ingest");
            for j in 0..10i64 {
                expected.push((now - 1_000 - (j * 6 + i) * 60, format!("Song {i}-{j}")));
            }
        }
        // Delete pub0's newest listen.
        let pub0 = store.user_by_name("pub0").expect("read").expect("pub0");
        let newest = store.listens(pub0.id, 0, i64::MAX, 1, hearsay::store::logs::Order::NewestFirst).expect("read");
        ingestor.ingest_blocking(pub0.id, vec![Action::Delete { seq: newest[0].seq }]).expect("delete");
        expected.retain(|(_, t)| t != "Song 0-0");
        // Twenty more public users, older listens only, two of them tied at one second:
        // none places a listen, and the page need not read them.
        for i in 0..20i64 {
            let name = format!("old{i}");
            let id = store
                .create_user_with_key(&name, "password123", [u8::try_from(100 + i).expect("small"); 32], created)
                .expect("user")
                .id;
            store.set_visibility_at(id, SharingLevel::Public, created).expect("level");
            let at = now - 50_000 - if i < 2 { 0 } else { i * 60 };
            let listens = vec![Action::Listen(crate::support::listen_accepted_at(&name, &format!("Old {i}"), at, now))];
            ingestor.ingest_blocking(id, listens).expect("ingest");
            expected.push((at, format!("Old {i}")));
        }
        let hidden = store.create_user_with_key("quiet", "password123", [42; 32], created).expect("user").id;
        store.set_visibility_at(hidden, SharingLevel::Aggregate, created).expect("level");
        let secret: Vec<Action> = (0..5i64)
            .map(|j| {
                Action::Listen(crate::support::listen_accepted_at("Quiet", &format!("Secret {j}"), now - 100 - j, now))
            })
            .collect();
        ingestor.ingest_blocking(hidden, secret).expect("ingest");
        ingestor.stop();
    }
    expected.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    let want: Vec<String> = expected.into_iter().take(15).map(|(_, t)| t).collect();
    let node = NodeProcess::start(&data);
    let (s, home) = get(&format!("{}/", node.url), None);
    assert_eq!(s, 200);
    let section = home.split("Recently, from public profiles").nth(1).expect("the section");
    let section = section.split("</ul>").next().unwrap_or_default();
    let got: Vec<String> = section.split(" – ").skip(1).filter_map(|r| r.split('<').next()).map(String::from).collect();
    assert_eq!(got, want, "{section}");
    assert!(!home.contains("Secret"), "a member who is not public");
}

/// The home page's order of users (`Store::users_by_newest_listen`, in memory) is kept
/// up by the writer once built: a newer listen moves its user first, older listens
/// move nobody, a new member enters, an erased newest listen gives way to the user's
/// newest live one at once, and a deleted account leaves.
#[test]
fn the_users_newest_listens_follow_the_writer() {
    use crate::support::{NOW, TestStore, listen};
    use hearsay::store::Action;
    let t = TestStore::new();
    let bob = t.store.create_user("bob", "password1", NOW).expect("bob").id;
    t.ingestor.ingest_blocking(t.user, vec![Action::Listen(listen("A", "a", NOW - 100))]).expect("ingest");
    t.ingestor.ingest_blocking(bob, vec![Action::Listen(listen("B", "b", NOW - 200))]).expect("ingest");
    let order = |t: &TestStore| t.store.users_by_newest_listen().expect("order");
    assert_eq!(order(&t), [(NOW - 100, t.user), (NOW - 200, bob)], "built from the day index");
    t.ingestor.ingest_blocking(bob, vec![Action::Listen(listen("B", "c", NOW - 50))]).expect("ingest");
    assert_eq!(order(&t), [(NOW - 50, bob), (NOW - 100, t.user)], "a newer listen");
    t.ingestor.ingest_blocking(t.user, vec![Action::Listen(listen("A", "d", NOW - 9_000))]).expect("ingest");
    assert_eq!(order(&t), [(NOW - 50, bob), (NOW - 100, t.user)], "an older one moves nobody");
    let carol = t.store.create_user("carol", "password1", NOW).expect("carol").id;
    t.ingestor.ingest_blocking(carol, vec![Action::Listen(listen("C", "e", NOW - 10))]).expect("ingest");
    assert_eq!(order(&t)[0], (NOW - 10, carol), "a new member");
    // bob erases his newest (seq 1): the erased time is not kept.
    t.ingestor.ingest_blocking(bob, vec![Action::Delete { seq: 1 }]).expect("erase");
    assert_eq!(order(&t), [(NOW - 10, carol), (NOW - 100, t.user), (NOW - 200, bob)], "an erasure");
    // Erasing his last listen takes him out.
    t.ingestor.ingest_blocking(bob, vec![Action::Delete { seq: 0 }]).expect("erase");
    assert_eq!(order(&t), [(NOW - 10, carol), (NOW - 100, t.user)], "no live listen");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(t.ingestor.delete_user(carol)).expect("delete");
    assert_eq!(order(&t), [(NOW - 100, t.user)], "a deleted account");
    // Reopened, the index is built again from the day index: the same.
    let t = TestStore::reopen(t.close());
    assert_eq!(order(&t), [(NOW - 100, t.user)]);
}

/// The home page after its newest-listen index is built (in process, the node serving
/// over HTTP): a private member's newer listens never show, a member made public shows
/// at once, an erased listen and a deleted account leave the page at once.
#[test]
fn the_home_page_follows_levels_erasures_and_deletions_after_its_index_is_built() {
    use hearsay::store::users::SharingLevel;
    use hearsay::store::{Action, logs::Order};
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = hearsay::config::Config::default();
    config.node.data_dir = dir.path().join("data");
    config.p2p.enabled = false;
    let node = hearsay::node::Node::build(config).expect("node");
    let (store, ingestor) = (node.store.clone(), node.ingestor.clone());
    let now = hearsay::now_unix();
    let add = |name: &str, level: SharingLevel, titles: &[(&str, i64)]| {
        let id = store.create_user(name, "password123", now - 86_400).expect("user").id;
        store.set_visibility(id, level).expect("level");
        let listens = titles
            .iter()
            .map(|(t, ago)| Action::Listen(crate::support::listen_accepted_at(name, t, now - ago, now)))
            .collect();
        ingestor.ingest_blocking(id, listens).expect("ingest");
        id
    };
    let open = add("open", SharingLevel::Public, &[("Open One", 500), ("Open Two", 400)]);
    let quiet = add("quiet", SharingLevel::Private, &[("Quiet One", 300)]);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(node.run(listener, async {
        let _ = stopped.await;
    }));
    let recent = || -> String {
        let (s, home) = get(&format!("{base}/"), None);
        assert_eq!(s, 200);
        home.split("Recently, from public profiles")
            .nth(1)
            .expect("section")
            .split("</ul>")
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    let first = recent();
    assert!(first.contains("Open Two") && first.contains("Open One") && !first.contains("Quiet"), "{first}");
    // A private member's newer listen: never on the page.
    ingestor
        .ingest_blocking(
            quiet,
            vec![Action::Listen(crate::support::listen_accepted_at("quiet", "Quiet Two", now - 100, now))],
        )
        .expect("ingest");
    assert!(!recent().contains("Quiet"), "a private member");
    // Made public through the writer (the settings page): shown at once.
    runtime.block_on(ingestor.set_visibility(quiet, SharingLevel::Public)).expect("public");
    let shown = recent();
    assert!(shown.contains("Quiet Two") && shown.contains("Quiet One"), "{shown}");
    // The open member erases their newest listen: gone at once.
    let newest = store.listens(open, 0, i64::MAX, 1, Order::NewestFirst).expect("read");
    ingestor.ingest_blocking(open, vec![Action::Delete { seq: newest[0].seq }]).expect("erase");
    let after = recent();
    assert!(!after.contains("Open Two") && after.contains("Open One"), "{after}");
    // The quiet member deletes their account: gone at once.
    runtime.block_on(ingestor.delete_user(quiet)).expect("delete");
    let last = recent();
    assert!(!last.contains("Quiet") && last.contains("Open One"), "{last}");
    let _ = stop.send(());
    runtime.block_on(server).expect("join").expect("node stopped");
}
