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

fn login(url: &str) -> (String, String) {
    let (_, cookie, _) =
        post_form(&format!("{url}/login"), None, &[("username", "alice"), ("password", "password123")]);
    let session = cookie.expect("cookie").split(';').next().expect("pair").to_owned();
    let (_, page) = get(&format!("{url}/settings"), Some(&session));
    let csrf = page.split("name=\"csrf\" value=\"").nth(1).and_then(|r| r.split('"').next()).expect("csrf").to_owned();
    (session, csrf)
}

#[test]
fn history_deletes_and_settings_change_visibility_and_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, token) = data_with_user(dir.path());
    let node = NodeProcess::start(&data);
    let now = hearsay::now_unix();
    let payload: Vec<_> = (0..60)
        .map(|i| json!({"listened_at": now - 1000 - i * 300, "track_metadata": {"artist_name": "Band", "track_name": format!("Song {i}")}}))
        .collect();
    ureq::post(&format!("{}/1/submit-listens", node.url))
        .set("Authorization", &format!("Token {token}"))
        .send_string(&json!({"listen_type": "import", "payload": payload}).to_string())
        .expect("submit");
    let (session, csrf) = login(&node.url);
    let (s, page1) = get(&format!("{}/user/alice/history", node.url), Some(&session));
    assert!(s == 200 && page1.contains("page 1 of 2") && page1.contains("Song 0") && !page1.contains("Song 55"));
    let (_, page2) = get(&format!("{}/user/alice/history?page=2", node.url), Some(&session));
    assert!(page2.contains("Song 55"));
    assert_eq!(get(&format!("{}/user/alice/history?page=9", node.url), Some(&session)).0, 404);
    // Delete "Song 0" (the newest): its seq is in the first delete form.
    let seq = page1.split("name=\"seq\" value=\"").nth(1).and_then(|r| r.split('"').next()).expect("seq").to_owned();
    let url = format!("{}/user/alice/history/delete", node.url);
    assert_eq!(post_form(&url, Some(&session), &[("csrf", "forged"), ("seq", &seq)]).0, 403);
    assert_eq!(post_form(&url, Some(&session), &[("csrf", &csrf), ("seq", &seq), ("page", "1")]).0, 303);
    let (_, after) = get(&format!("{}/user/alice/history", node.url), Some(&session));
    assert!(after.contains("59 listens") && !after.contains(">Song 0<"), "deleted");
    // Anonymous visitors cannot delete or see the history of a hidden profile.
    assert_eq!(get(&format!("{}/user/alice/history", node.url), None).0, 404);
    assert_eq!(post_form(&url, None, &[("csrf", &csrf), ("seq", "1")]).0, 404);

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
