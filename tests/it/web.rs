//! The web view over HTTP: log-in, profiles, visibility, escaping, 404s, CSRF.
//! (The headless-browser tests come with the rest of the web view.)

use serde_json::json;

use crate::support::{NodeProcess, data_with_user, hearsay};

fn get(url: &str, cookie: Option<&str>) -> (u16, String) {
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
    let (s, _, body) = post_form(&format!("{}/login", node.url), None, &[("username", "alice"), ("password", "nope")]);
    assert!(s == 401 && body.contains("Wrong user name or password"), "{s}");
    let (s, cookie, _) =
        post_form(&format!("{}/login", node.url), None, &[("username", "alice"), ("password", "password123")]);
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
