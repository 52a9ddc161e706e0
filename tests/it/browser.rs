//! A person in a real browser: headless Chromium driven through WebDriver
//! (chromedriver, from Debian's `chromium-driver`, which `tests/run` installs).
//! Screenshots of the pages visited go to `target/screenshots/`, printed at the end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::support::{NodeProcess, data_with_user};

struct Driver(Child, u16);

impl Driver {
    fn start() -> Driver {
        crate::support::require("chromium", "chromium");
        crate::support::require("chromedriver", "chromium-driver");
        let port = crate::support::free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Driver(child, port)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn browser(driver: &Driver, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--window-size=1200,1000", format!("--user-data-dir={}", profile.display())]
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.1))
        .await
        .expect("a WebDriver session with headless Chromium")
}

async fn shot(client: &Client, dir: &Path, name: &str) {
    let png = client.screenshot().await.expect("screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
}

/// The page's text once it has loaded (a click may still be navigating).
async fn text(client: &Client) -> String {
    for _ in 0..100 {
        if let Ok(body) = client.find(Locator::Css("body")).await
            && let Ok(t) = body.text().await
            && !t.is_empty()
        {
            return t;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the page did not load");
}

/// Clicks and waits until the browser has left `from` (a form post or a link).
async fn click_and_wait(client: &Client, locator: Locator<'_>) {
    let before = client.current_url().await.expect("url");
    client.find(locator).await.expect("element").click().await.expect("click");
    for _ in 0..100 {
        let ready: Option<String> =
            client.execute("return document.readyState", vec![]).await.ok().and_then(|v| v.as_str().map(str::to_owned));
        if client.current_url().await.is_ok_and(|u| u != before) && ready.as_deref() == Some("complete") {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_logs_in_sees_listens_deletes_one_and_hides_the_profile() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, token) = data_with_user(dir.path());
    let node = NodeProcess::start(&data);
    let url = node.url.clone();
    let now = hearsay::now_unix();
    let payload: Vec<_> = [("Sigur Rós", "Hoppípolla"), ("Sigur Rós", "Glósóli"), ("Björk", "Jóga"), ("<script>x</script>", "Escaped")]
        .iter()
        .enumerate()
        .map(|(i, (a, t))| json!({"listened_at": now - 600 * (i as i64 + 1), "track_metadata": {"artist_name": a, "track_name": t}}))
        .collect();
    let submit = format!("{url}/1/submit-listens");
    let body = json!({"listen_type": "import", "payload": payload}).to_string();
    tokio::task::spawn_blocking(move || {
        ureq::post(&submit).set("Authorization", &format!("Token {token}")).send_string(&body).expect("submit")
    })
    .await
    .expect("join");

    let shots: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let driver = Driver::start();
    let me = browser(&driver, &dir.path().join("chrome-me")).await;

    // Log in through the form.
    me.goto(&format!("{url}/login")).await.expect("login page");
    shot(&me, &shots, "login").await;
    me.find(Locator::Css("input[name=username]")).await.expect("user field").send_keys("alice").await.expect("type");
    me.find(Locator::Css("input[name=password]"))
        .await
        .expect("password field")
        .send_keys("password123")
        .await
        .expect("type");
    click_and_wait(&me, Locator::Css("main form button")).await;
    assert!(me.current_url().await.expect("url").path().ends_with("/user/alice"));
    let profile = text(&me).await;
    assert!(profile.contains("Sigur Rós") && profile.contains("Hoppípolla"), "{profile}");
    assert!(profile.contains("<script>x</script>"), "the name shows as text, not markup");
    shot(&me, &shots, "profile").await;

    // Switch periods.
    click_and_wait(&me, Locator::LinkText("All time")).await;
    assert!(me.current_url().await.expect("url").query().is_some_and(|q| q.contains("period=all")));
    let chart = text(&me).await;
    assert!(chart.contains("All time") && chart.contains("Sigur Rós (2)"), "{chart}");

    // Delete a listen from the history.
    click_and_wait(&me, Locator::LinkText("History")).await;
    assert!(text(&me).await.contains("4 listens"));
    shot(&me, &shots, "history").await;
    let history_url = me.current_url().await.expect("url");
    me.find(Locator::Css("button[aria-label='Delete Hoppípolla']"))
        .await
        .expect("delete button")
        .click()
        .await
        .expect("delete");
    // The delete redirects back to the same page: wait for the new content.
    for _ in 0..100 {
        if text(&me).await.contains("3 listens") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _ = history_url;
    let after = text(&me).await;
    assert!(after.contains("3 listens") && !after.contains("Hoppípolla"), "{after}");

    // Make the profile public: another visitor sees it. Then private: they get a 404.
    me.goto(&format!("{url}/settings")).await.expect("settings");
    me.find(Locator::Css("input[value=public]")).await.expect("public").click().await.expect("choose");
    click_and_wait(&me, Locator::Css("form[action='/settings/visibility'] button")).await;
    assert!(text(&me).await.contains("now public"));
    shot(&me, &shots, "settings").await;
    let other = browser(&driver, &dir.path().join("chrome-other")).await;
    other.goto(&format!("{url}/user/alice")).await.expect("visit");
    assert!(text(&other).await.contains("Glósóli"), "a public profile is visible to others");
    shot(&other, &shots, "profile-as-visitor").await;
    me.goto(&format!("{url}/settings")).await.expect("settings");
    me.find(Locator::Css("input[value=private]")).await.expect("private").click().await.expect("choose");
    click_and_wait(&me, Locator::Css("form[action='/settings/visibility'] button")).await;
    assert!(text(&me).await.contains("now private"));
    other.goto(&format!("{url}/user/alice")).await.expect("visit again");
    let hidden = text(&other).await;
    assert!(hidden.contains("Not found") && !hidden.contains("Glósóli"), "{hidden}");
    shot(&other, &shots, "hidden-profile").await;
    other.close().await.expect("close");
    me.close().await.expect("close");
    eprintln!("screenshots: {}", shots.display());
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transparency_page_shows_each_release_the_ledger_and_what_of_me_went_in() {
    use crate::privacy::{SHORT_PERIODS, fresh_period, release_of, submit, user_with_token};
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let alice = user_with_token(&data, dir.path(), "alice", "aggregate");
    let bob = user_with_token(&data, dir.path(), "bob", "public");
    // τ is 3 at these parameters: with fewer aggregate users the node would charge none.
    for quiet in ["carol", "dave"] {
        user_with_token(&data, dir.path(), quiet, "aggregate");
    }
    let mut env = SHORT_PERIODS.to_vec();
    env.push(("HEARSAY_NODE__ADMINS", "[\"alice\"]"));
    let node = NodeProcess::start_with(&data, &env);
    let url = node.url.clone();
    let (u, a, b) = (url.clone(), alice.clone(), bob.clone());
    let period = tokio::task::spawn_blocking(move || {
        let p = fresh_period();
        submit(&u, &a, &[("Múm", "Green Grass of Tunnel", p), ("Múm", "We Have a Map", p + 1)]);
        submit(&u, &b, &[("Public Radio Band", "Signal", p)]);
        release_of(&u, p, std::time::Duration::from_secs(20));
        p
    })
    .await
    .expect("join");

    let shots: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let driver = Driver::start();
    let me = browser(&driver, &dir.path().join("chrome-privacy")).await;
    me.goto(&format!("{url}/login")).await.expect("login page");
    me.find(Locator::Css("input[name=username]")).await.expect("user field").send_keys("alice").await.expect("type");
    me.find(Locator::Css("input[name=password]")).await.expect("pw").send_keys("password123").await.expect("type");
    click_and_wait(&me, Locator::Css("main form button")).await;
    click_and_wait(&me, Locator::LinkText("Privacy")).await;
    assert!(me.current_url().await.expect("url").path().ends_with("/privacy"));
    let page = text(&me).await;
    shot(&me, &shots, "privacy").await;
    // The release, decoded: the public user's exact counts, the parameters.
    assert!(page.contains("Releases published by this node"), "{page}");
    assert!(page.contains("Public Radio Band"), "the public section is shown: {page}");
    assert!(page.contains("threshold τ 3"), "the parameters are shown: {page}");
    // Alice's own figures: her level, ledger and bounded contribution (never another's).
    assert!(page.contains("Your sharing level is aggregate"), "{page}");
    // Charged every period since the node started (ε 300 a release at these
    // parameters), with the rolling year's total beside the weekly rows.
    assert!(page.contains("00 of 100000000"), "ε spent of the weekly budget: {page}");
    assert!(page.contains("Over the last 52 weeks your data has cost ε"), "the yearly total: {page}");
    assert!(page.contains("Múm: 2"), "her bounded contribution: {page}");
    // As an administrator she sees every user's level and counts, not their items.
    assert!(page.contains("All users (administrators only)"), "{page}");
    assert!(!page.contains("Signal: 1"), "bob's own contribution is bob's: {page}");
    // The signed bytes behind the page are a link away.
    // (Every period has a release: later, empty ones may be listed above this one.)
    let mut hrefs = Vec::new();
    for link in me.find_all(Locator::LinkText("signed bytes")).await.expect("bytes links") {
        hrefs.push(link.attr("href").await.expect("href").unwrap_or_default());
    }
    assert!(hrefs.contains(&format!("/releases/{period}")), "{hrefs:?}");
    me.close().await.expect("close");
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_uploads_an_export_sees_the_listens_and_downloads_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, _) = data_with_user(dir.path());
    let node = NodeProcess::start(&data);
    let url = node.url.clone();
    // A Last.fm CSV as lastfm-to-csv writes it, with one bad row.
    let csv = dir.path().join("lastfm_alice.csv");
    std::fs::write(
        &csv,
        "Múm,Finally We Are No One,Green Grass of Tunnel,01 Jun 2024 20:46\n\
         Múm,Finally We Are No One,We Have a Map of the Piano,01 Jun 2024 20:52\n\
         Broken,,row\n\
         Björk,Homogenic,Jóga,02 Jun 2024 08:10\n",
    )
    .expect("write csv");
    let shots: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let driver = Driver::start();
    let me = browser(&driver, &dir.path().join("chrome-upload")).await;
    me.goto(&format!("{url}/login")).await.expect("login page");
    me.find(Locator::Css("input[name=username]")).await.expect("user field").send_keys("alice").await.expect("type");
    me.find(Locator::Css("input[name=password]")).await.expect("pw").send_keys("password123").await.expect("type");
    click_and_wait(&me, Locator::Css("main form button")).await;
    click_and_wait(&me, Locator::LinkText("Import")).await;
    me.find(Locator::Css("input[type=file]"))
        .await
        .expect("file field")
        .send_keys(csv.to_str().expect("utf8"))
        .await
        .expect("choose the file");
    shot(&me, &shots, "import-form").await;
    click_and_wait(&me, Locator::Css("main form button")).await;
    let mut page = String::new();
    for _ in 0..100 {
        page = text(&me).await;
        if page.contains("Import finished") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    shot(&me, &shots, "import-summary").await;
    assert!(page.contains("Import finished") && page.contains("lastfm-csv"), "{page}");
    assert!(page.contains("Record 3: expected 4 columns"), "the bad row is named: {page}");
    click_and_wait(&me, Locator::LinkText("See your history")).await;
    let history = text(&me).await;
    assert!(
        history.contains("3 listens") && history.contains("Jóga") && history.contains("Green Grass of Tunnel"),
        "{history}"
    );
    // The download links hand back the same listens.
    me.goto(&format!("{url}/settings")).await.expect("settings");
    let link = me.find(Locator::LinkText("CSV")).await.expect("download link");
    let href = link.attr("href").await.expect("href").expect("has href");
    let cookie = me.get_named_cookie("hearsay_session").await.expect("session cookie");
    let (u, c) = (format!("{url}{href}"), format!("hearsay_session={}", cookie.value()));
    let body = tokio::task::spawn_blocking(move || {
        ureq::get(&u).set("Cookie", &c).call().expect("download").into_string().expect("body")
    })
    .await
    .expect("join");
    assert_eq!(body.lines().count(), 4, "header and three listens: {body}");
    assert!(body.contains("Björk,Homogenic,Jóga"), "{body}");
    me.close().await.expect("close");
    drop(node);
}

/// axe-core, which `tests/run` puts into `target/axe` from npm.
fn axe_source() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/axe/node_modules/axe-core/axe.min.js");
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: this test needs axe-core from npm: run the suite with `tests/run` (README.md), which \
             installs it, or `npm install --prefix target/axe axe-core@4.10.3`",
            path.display()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_fits_a_phone_and_passes_an_accessibility_check() {
    let axe = axe_source();
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, token) = data_with_user(dir.path());
    assert_eq!(crate::support::hearsay(&data, &["user", "set-visibility", "alice", "public"]).0, 0);
    let node = NodeProcess::start(&data);
    let url = node.url.clone();
    let now = hearsay::now_unix();
    // A year of listens: plots, charts and rank histories to draw.
    let payload: Vec<_> = (0..120)
        .map(|i| {
            let artist = ["Sigur Rós", "Björk", "Múm", "A Band With A Rather Long Name Indeed"][i % 4];
            json!({"listened_at": now - 3600 - 3 * 86_400 * i as i64, "track_metadata": {
                "artist_name": artist, "track_name": format!("Song {}", i % 7), "release_name": "An Album"}})
        })
        .collect();
    let submit = format!("{url}/1/submit-listens");
    let body = json!({"listen_type": "import", "payload": payload}).to_string();
    tokio::task::spawn_blocking(move || {
        ureq::post(&submit).set("Authorization", &format!("Token {token}")).send_string(&body).expect("submit")
    })
    .await
    .expect("join");
    let handle = hearsay::store::aggregates::item_handle(hearsay::stats::chart::Kind::Artist, "Sigur Rós", None);

    let shots: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let driver = Driver::start();
    let me = browser(&driver, &dir.path().join("chrome-phone")).await;
    // A phone's viewport (the window is a little taller than the viewport).
    me.set_window_size(390, 900).await.expect("phone size");
    let pages_anonymous = ["/", "/login", "/register", "/user/alice", "/privacy"];
    let pages_signed_in = [
        "/user/alice".to_owned(),
        "/user/alice?period=all".to_owned(),
        "/user/alice/history".to_owned(),
        "/user/alice/weekly".to_owned(),
        format!("/user/alice/artist/{handle}"),
        "/settings".to_owned(),
        "/connect".to_owned(),
        "/network".to_owned(),
        "/privacy".to_owned(),
        "/import".to_owned(),
        "/no-such-page".to_owned(),
    ];
    let mut problems = Vec::new();
    let mut check = async |path: &str, name: &str| {
        me.goto(&format!("{url}{path}")).await.expect("page");
        text(&me).await;
        let sizes = me
            .execute("return [document.documentElement.scrollWidth, window.innerWidth]", vec![])
            .await
            .expect("sizes");
        let (content, viewport) = (sizes[0].as_i64().unwrap_or(0), sizes[1].as_i64().unwrap_or(0));
        if content > viewport + 1 {
            // The outermost elements that stick out, to say what to fix.
            let wide = me
                .execute(
                    "return Array.from(document.querySelectorAll('body *')).filter(e => \
                       e.getBoundingClientRect().right > window.innerWidth + 1 && \
                       !(e.parentElement && e.parentElement.getBoundingClientRect().right > window.innerWidth + 1)) \
                     .slice(0, 3).map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))",
                    vec![],
                )
                .await
                .unwrap_or_default();
            problems.push(format!("{path}: {content} px wide on a {viewport} px phone: {wide}"));
        }
        me.execute(&axe, vec![]).await.expect("axe loads");
        let found = me
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document, {resultTypes: ['violations']}).then(r => done(r.violations.map(v =>
                   [v.id, v.impact, v.nodes.length, v.nodes.slice(0, 2).map(n => n.target.join(' ')).join(' | ')])));",
                vec![],
            )
            .await
            .expect("axe runs");
        let found = found.as_array().unwrap_or_else(|| panic!("{path}: axe did not answer a list: {found}"));
        for v in found {
            if matches!(v[1].as_str(), Some("serious" | "critical")) {
                problems.push(format!("{path}: {v}"));
            }
        }
        shot(&me, &shots, &format!("phone-{name}")).await;
    };
    for (i, path) in pages_anonymous.iter().enumerate() {
        check(path, &format!("anonymous-{i}")).await;
    }
    // Signed in.
    me.goto(&format!("{url}/login")).await.expect("login page");
    me.find(Locator::Css("input[name=username]")).await.expect("user field").send_keys("alice").await.expect("type");
    me.find(Locator::Css("input[name=password]")).await.expect("pw").send_keys("password123").await.expect("type");
    click_and_wait(&me, Locator::Css("main form button")).await;
    for (i, path) in pages_signed_in.iter().enumerate() {
        check(path, &format!("member-{i}")).await;
    }
    // The item page draws the rank history with labelled axes.
    me.goto(&format!("{url}/user/alice/artist/{handle}")).await.expect("item");
    let item = me.source().await.expect("source");
    assert!(item.contains("Weekly rank over the last 12 months"), "the rank plot is named");
    assert!(item.lines().any(|l| l.trim() == "rank") && item.lines().any(|l| l.trim() == "#1"), "its axis is labelled");
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
    me.close().await.expect("close");
    drop(driver);
    assert_eq!(node.terminate(), Some(0));
}
