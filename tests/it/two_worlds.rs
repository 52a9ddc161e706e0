//! The two-worlds test: two nodes that differ by one user's whole history, with equal
//! noise draws, crawled on every route the code registers (read from the source, so a
//! new route is crawled without editing this test), as an anonymous visitor, another
//! member, an administrator and a peer, plus every byte published.
//!
//! - The user at **private**: every output is identical, except that user's own view of
//!   themself (not crawled).
//! - The user at **aggregate**: at the default parameters a small node's DP section is
//!   empty either way, so again every output is identical; with loose parameters the
//!   published releases may differ only in their DP (aggregate) section, and every
//!   route that does not show a release is identical.
//!
//! Both worlds are copies of one data directory (same node key, privacy key, user keys
//! and salts), the target's history added to one of them; releases are made in-process
//! with the same seeded noise, then both nodes serve the result.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hearsay::privacy::noise::RandomSource;
use hearsay::store::users::SharingLevel;
use hearsay::store::{Action, Ingestor, Options, Store};
use rand::{Rng as _, SeedableRng};

use crate::support::NodeProcess;

/// A listen played at `at` (before now).
fn listen(artist: &str, title: &str, at: i64) -> hearsay::log::Listen {
    crate::support::listen_accepted_at(artist, title, at, hearsay::now_unix())
}

/// A seeded source, the same in both worlds.
struct Draws(rand::rngs::Xoshiro256PlusPlus);

impl RandomSource for Draws {
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
}

const PASSWORD: &str = "password123";
const TARGET: &str = "tess";
/// Only the target ever listens to this artist.
const TARGET_ONLY: &str = "Zqx Tess Only Band";

const DAY: i64 = 86_400;
/// Listens fall half a day away from every "last N days" boundary: the crawl of both
/// worlds takes minutes, and a listen a few seconds inside "last 7 days" when one world
/// is read would be outside it when the other is (a flaky difference that is the clock's,
/// not the data's).
const HALF_DAY: i64 = DAY / 2;

/// The other members and their levels.
const LEVELS: [(&str, SharingLevel); 4] = [
    ("alice", SharingLevel::Public),
    ("bob", SharingLevel::Aggregate),
    ("carol", SharingLevel::Aggregate),
    ("dave", SharingLevel::Private),
];

/// The target's listens: first on the node in world 0, so that they name and number the
/// items first: shared items in odd spellings (identity ignores case and spacing), and an
/// item only the target plays.
fn target_history(now: i64) -> Vec<Action> {
    let mut actions = Vec::new();
    for d in 0..30 {
        let at = now - 35 * DAY + d * DAY + HALF_DAY + 3_000;
        actions.push(Action::Listen(listen("SHARED  band", "common SONG", at)));
        actions.push(Action::Listen(listen(TARGET_ONLY, "Tess Song", at + 7)));
        actions.push(Action::Listen(listen("Alice OWN Band", "own song", at + 13)));
    }
    actions
}

/// The other members' listens, the same in both worlds.
fn others_history(i: usize, name: &str, now: i64) -> Vec<Action> {
    let mut actions = Vec::new();
    for d in 0..30 {
        let at = now - 35 * DAY + d * DAY + HALF_DAY + i64::try_from(i).expect("small") * 60;
        actions.push(Action::Listen(listen("Shared Band", "Common Song", at)));
        actions.push(Action::Listen(listen(&format!("{name} Own Band"), "Own Song", at + 7)));
    }
    actions
}

/// Handles of every item the worlds hold (in any spelling: handles ignore case and
/// spacing), and one of an item nobody played.
fn handles() -> Vec<String> {
    use hearsay::stats::chart::Kind;
    use hearsay::store::aggregates::item_handle;
    let mut artists: Vec<String> = LEVELS.iter().map(|(n, _)| format!("{n} Own Band")).collect();
    artists.extend(["Shared Band".to_owned(), TARGET_ONLY.to_owned(), "Nobody Played This".to_owned()]);
    let mut out: Vec<String> = artists.iter().map(|a| item_handle(Kind::Artist, a, None)).collect();
    for a in &artists {
        for t in ["Common Song", "Own Song", "Tess Song"] {
            out.push(item_handle(Kind::Recording, t, Some(a)));
        }
        out.push(item_handle(Kind::Release, "An Album", Some(a)));
    }
    out.push("0".to_owned());
    out
}

/// Every path the code registers with `.route("…"`, from the source.
fn routes() -> BTreeSet<String> {
    let mut files = Vec::new();
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("src") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
    let mut out = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        // `.route(` then the path literal, on the same line or the next.
        for part in text.split(".route(").skip(1) {
            let rest = part.trim_start();
            if let Some(literal) = rest.strip_prefix('"')
                && let Some(path) = literal.split('"').next()
            {
                out.insert(path.to_owned());
            }
        }
    }
    out
}

/// The Last.fm read methods the dispatcher knows (`user.*`, `library.*`, `*.getinfo`),
/// from the source.
fn lastfm_reads() -> BTreeSet<String> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api/lastfm.rs")).expect("read");
    text.split('"')
        .filter(|s| {
            (s.starts_with("user.") || s.starts_with("library.") || s.ends_with(".getinfo"))
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '.')
        })
        .map(String::from)
        .collect()
}

/// The concrete URLs a route pattern stands for.
fn expand(route: &str, periods: &[i64]) -> Vec<String> {
    let users = ["alice", "bob", "carol", "dave", TARGET, "nobody"];
    let mut urls = vec![route.to_owned()];
    let subst = |urls: Vec<String>, key: &str, values: &[String]| -> Vec<String> {
        urls.into_iter()
            .flat_map(|u| if u.contains(key) { values.iter().map(|v| u.replace(key, v)).collect() } else { vec![u] })
            .collect()
    };
    let users: Vec<String> = users.iter().map(|s| (*s).to_owned()).collect();
    urls = subst(urls, "{user}", &users);
    urls = subst(urls, "{name}", &users);
    urls = subst(urls, "{entity}", &["artists", "recordings", "releases"].map(String::from));
    urls = subst(urls, "{what}", &["artist", "track", "album", "recording"].map(String::from));
    urls = subst(urls, "{handle}", &handles());
    urls = subst(urls, "{start}", &periods.iter().map(i64::to_string).collect::<Vec<_>>());
    urls = subst(urls, "{format}", &["listenbrainz", "csv"].map(String::from));
    urls = subst(urls, "{job}", &["1".to_owned()]);
    urls = subst(urls, "{action}", &["edit".to_owned()]);
    // Query variants people use.
    let mut out = Vec::new();
    for u in urls {
        if u.starts_with("/user/") && u.matches('/').count() == 2 {
            for p in ["7d", "1m", "3m", "12m", "all"] {
                out.push(format!("{u}?period={p}"));
            }
        }
        if u.ends_with("/weekly") {
            out.push(format!("{u}?year=2026&week=1"));
        }
        out.push(u);
    }
    out
}

/// A viewer of both worlds: how their requests are made.
#[derive(Clone)]
struct Who {
    name: &'static str,
    /// Per world: a web session cookie, an API token, a Last.fm session key.
    cookie: [Option<String>; 2],
    token: Option<String>,
    sk: [Option<String>; 2],
}

impl Who {
    /// A viewer with no session, token or key: a visitor, or a peer reading over HTTP.
    fn signed_out(name: &'static str) -> Who {
        Who { name, cookie: [None, None], token: None, sk: [None, None] }
    }
}

fn fetch(url: &str, who: &Who, world: usize) -> (u16, Vec<u8>) {
    // The viewers are people on other hosts: through the node's TLS front (from this
    // host, with a forwarding header), as anyone but the operator reaches it. Only the
    // operator's own requests (`/metrics` from loopback, directly) see node internals.
    let mut req = ureq::get(url).timeout(Duration::from_secs(20)).set("X-Forwarded-For", "198.51.100.9");
    if let Some(c) = &who.cookie[world] {
        req = req.set("Cookie", c);
    }
    if let Some(t) = &who.token {
        req = req.set("Authorization", &format!("Token {t}"));
    }
    let (status, reader) = match req.call() {
        Ok(r) => (r.status(), r.into_reader()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_reader()),
        Err(e) => panic!("{url}: {e}"),
    };
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(reader, 8 << 20), &mut body).expect("body");
    (status, body)
}

/// What may differ between two identical worlds for reasons of their own: CSRF and form
/// tokens, random hashes (log heads, salts), the database size and write counters the
/// administrator sees.
fn normalise(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body).into_owned();
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 32 && run.chars().all(|c| c.is_ascii_hexdigit()) {
            out.push_str("<hex>");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    let mut out = mask_after(&out, "name=\"csrf\" value=\"", '"');
    // ListenBrainz stats say when they were computed (the clock, not the data).
    out = mask_after(&out, "\"last_updated\":", ',');
    // A range that ends "now" ends at the request's second.
    out = mask_after(&out, "\"to_ts\":", ',');
    out = mask_after(&out, "name=\"form_token\" value=\"", '"');
    out = mask_after(&out, "Database: ", ' ');
    out
}

fn mask_after(text: &str, marker: &str, end: char) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(marker) {
        out.push_str(&rest[..at + marker.len()]);
        rest = &rest[at + marker.len()..];
        let stop = rest.find(end).unwrap_or(rest.len());
        out.push_str("<masked>");
        rest = &rest[stop..];
    }
    out.push_str(rest);
    out
}

struct World {
    _dir: tempfile::TempDir,
    node: NodeProcess,
}

/// Builds the base directory: users with fixed keys, everyone's history but the
/// target's, the node and privacy keys made; returns the members' API tokens (the same
/// in both copies).
fn base(dir: &Path, level: &str, now: i64) -> Vec<(&'static str, String)> {
    let mut tokens = Vec::new();
    let data = dir.join("data");
    let store = Store::open(&data, &Options { cache_mb: 8, ..Default::default() }).expect("open");
    let ingestor = Ingestor::start(store.clone(), 10_000, Default::default()).expect("writer");
    let created = now - 40 * DAY;
    for (i, (name, lvl)) in LEVELS.iter().enumerate() {
        let seed = [u8::try_from(i + 1).expect("small"); 32];
        let id = store.create_user_with_key(name, PASSWORD, seed, created).expect("user").id;
        store.set_visibility_at(id, *lvl, created).expect("level");
        if *name != "dave" {
            tokens.push((*name, store.create_token(id, "crawl", created, false).expect("token").0));
        }
    }
    let target = SharingLevel::parse(level).expect("level");
    let t = store.create_user_with_key(TARGET, PASSWORD, [9; 32], created).expect("target").id;
    store.set_visibility_at(t, target, created).expect("level");
    store.privacy_key().expect("privacy key");
    ingestor.stop();
    drop(store);
    hearsay::identity::NodeIdentity::load_or_create(&data).expect("node key");
    tokens
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

fn privacy_env(loose: bool) -> Vec<(&'static str, &'static str)> {
    let mut env = vec![("HEARSAY_P2P__ENABLED", "false"), ("HEARSAY_NODE__ADMINS", "[\"carol\"]")];
    if loose {
        env.extend([
            ("HEARSAY_PRIVACY__K", "2"),
            ("HEARSAY_PRIVACY__L0", "3"),
            ("HEARSAY_PRIVACY__EPSILON_LISTENERS", "100"),
            ("HEARSAY_PRIVACY__EPSILON_LISTENS", "50"),
            ("HEARSAY_PRIVACY__WEEK_EPSILON_BUDGET", "100000000"),
            ("HEARSAY_PRIVACY__YEAR_EPSILON_BUDGET", "100000000"),
            ("HEARSAY_PRIVACY__WEEK_DELTA_BUDGET", "0.5"),
            ("HEARSAY_PRIVACY__YEAR_DELTA_BUDGET", "0.5"),
        ]);
    }
    env
}

fn privacy_config(env: &[(&str, &str)]) -> hearsay::config::PrivacyConfig {
    let vars: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    hearsay::config::Config::load_from(None, &vars).expect("config").privacy
}

/// Makes the two worlds: a copy of `base` each; the target's history in world 0 only;
/// releases made with the same draws; both nodes started.
fn make_worlds(level: &str, loose: bool) -> ([World; 2], Vec<i64>, Vec<(&'static str, String)>) {
    let now = hearsay::now_unix();
    let tmp = tempfile::tempdir().expect("tempdir");
    let tokens = base(tmp.path(), level, now);
    let env = privacy_env(loose);
    let config = privacy_config(&env);
    let mut periods = Vec::new();
    let make = |with_target: bool, periods: &mut Vec<i64>| -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_dir(&tmp.path().join("data"), &dir.path().join("data"));
        let data = dir.path().join("data");
        {
            let store = Store::open(&data, &Options { cache_mb: 8, ..Default::default() }).expect("open");
            let ingestor = Ingestor::start(store.clone(), 10_000, Default::default()).expect("writer");
            if with_target {
                let t = store.user_by_name(TARGET).expect("read").expect("target").id;
                ingestor.ingest_blocking(t, target_history(now)).expect("ingest target");
            }
            for (i, (name, _)) in LEVELS.iter().enumerate() {
                let id = store.user_by_name(name).expect("read").expect("member").id;
                ingestor.ingest_blocking(id, others_history(i, name, now)).expect("ingest");
            }
            ingestor.stop();
            let identity = Arc::new(hearsay::identity::NodeIdentity::load_or_create(&data).expect("key"));
            let publisher = hearsay::publish::Publisher::new(store.clone(), identity, &config).expect("publisher");
            let pass = publisher.run_due_with(now, &mut Draws(SeedableRng::seed_from_u64(42))).expect("release");
            *periods = pass.released.clone();
        }
        let node = NodeProcess::start_with(&data, &env);
        World { _dir: dir, node }
    };
    let w0 = make(true, &mut periods);
    let mut periods1 = Vec::new();
    let w1 = make(false, &mut periods1);
    assert_eq!(periods, periods1, "both worlds release the same periods");
    assert!(!periods.is_empty(), "the worlds released something");
    ([w0, w1], periods, tokens)
}

fn web_login(url: &str, user: &str) -> String {
    let page = ureq::get(&format!("{url}/login")).call().expect("login page");
    let cookie = page.header("set-cookie").unwrap_or_default().split(';').next().unwrap_or_default().to_owned();
    let html = page.into_string().expect("html");
    let token =
        html.split("name=\"form_token\" value=\"").nth(1).and_then(|r| r.split('"').next()).expect("form token");
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let r = agent
        .post(&format!("{url}/login"))
        .set("Cookie", &cookie)
        .send_form(&[("form_token", token), ("username", user), ("password", PASSWORD)])
        .expect("log in");
    r.header("set-cookie").expect("session cookie").split(';').next().expect("pair").to_owned()
}

fn lastfm_session(url: &str, user: &str) -> String {
    let r = ureq::post(&format!("{url}/2.0/"))
        .send_form(&[
            ("method", "auth.getMobileSession"),
            ("username", user),
            ("password", PASSWORD),
            ("format", "json"),
        ])
        .expect("session");
    let v: serde_json::Value = serde_json::from_str(&r.into_string().expect("body")).expect("json");
    v["session"]["key"].as_str().expect("key").to_owned()
}

fn viewers(worlds: &[World; 2], tokens: &[(&'static str, String)]) -> Vec<Who> {
    let token_of = |name: &str| tokens.iter().find(|(n, _)| *n == name).map(|(_, t)| t.clone());
    let urls = [&worlds[0].node.url, &worlds[1].node.url];
    let member = |name: &'static str| Who {
        name,
        cookie: [Some(web_login(urls[0], name)), Some(web_login(urls[1], name))],
        token: token_of(name),
        sk: [Some(lastfm_session(urls[0], name)), Some(lastfm_session(urls[1], name))],
    };
    vec![
        Who::signed_out("anonymous"),
        member("bob"),
        member("carol"),
        // A peer reads what an anonymous visitor reads over HTTP, plus every published
        // byte (compared below).
        Who::signed_out("peer"),
    ]
}

struct Crawl {
    /// (viewer, url, status, same in both worlds)
    rows: Vec<(String, String, u16, bool)>,
    differing: Vec<(String, String, String, String)>,
}

fn crawl(worlds: &[World; 2], periods: &[i64], tokens: &[(&'static str, String)]) -> Crawl {
    let who = viewers(worlds, tokens);
    let mut urls: Vec<String> = routes().iter().flat_map(|r| expand(r, periods)).collect();
    let methods = lastfm_reads();
    assert!(methods.len() >= 14, "the crawl finds the read methods: {methods:?}");
    for method in methods {
        for user in ["alice", "bob", "carol", "dave", TARGET, "nobody"] {
            for extra in ["", "&period=overall", "&period=7day"] {
                urls.push(format!("/2.0/?method={method}&user={user}&format=json{extra}"));
            }
            // Item info: the target's own artist, a shared one, and the user's play count.
            for artist in [TARGET_ONLY, "Shared Band"] {
                let a = artist.replace(' ', "+");
                urls.push(format!(
                    "/2.0/?method={method}&artist={a}&track=Tess+Song&album=An+Album&username={user}&format=json"
                ));
            }
        }
        let a = TARGET_ONLY.replace(' ', "+");
        urls.push(format!("/2.0/?method={method}&artist={a}&track=Tess+Song&format=json"));
    }
    for user in ["alice", "bob", "carol", "dave", TARGET, "nobody"] {
        urls.push(format!("/1/latest-import?user_name={user}"));
        urls.push(format!("/1/feedback/user/{user}/get-feedback?metadata=true"));
    }
    let mut rows = Vec::new();
    let mut differing = Vec::new();
    for w in &who {
        for url in &urls {
            let mut url = url.clone();
            let sk = [w.sk[0].clone(), w.sk[1].clone()];
            let outputs: Vec<(u16, String)> = (0..2)
                .map(|i| {
                    let mut u = format!("{}{url}", worlds[i].node.url);
                    if url.starts_with("/2.0/")
                        && let Some(sk) = &sk[i]
                    {
                        u.push_str(&format!("&sk={sk}"));
                    }
                    let (s, b) = fetch(&u, w, i);
                    // Each world's own address (the /connect page names it) is its own.
                    let host = worlds[i].node.url.trim_start_matches("http://").to_owned();
                    (s, normalise(&b).replace(&host, "<this node>"))
                })
                .collect();
            let same = outputs[0] == outputs[1];
            if url.starts_with("/2.0/") {
                url.push_str(" (+sk)");
            }
            rows.push((w.name.to_owned(), url.clone(), outputs[0].0, same));
            if !same {
                differing.push((w.name.to_owned(), url, outputs[0].1.clone(), outputs[1].1.clone()));
            }
        }
    }
    Crawl { rows, differing }
}

fn first_difference(a: &str, b: &str) -> String {
    let at = a.chars().zip(b.chars()).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
    let from = at.saturating_sub(120);
    let cut = |s: &str| s.chars().skip(from).take(300).collect::<String>();
    format!("world with the user: …{}…\nworld without: …{}…", cut(a), cut(b))
}

fn report(level: &str, c: &Crawl) {
    eprintln!("two worlds, target at {level}: {} requests", c.rows.len());
    let mut by_route: std::collections::BTreeMap<(String, u16), (usize, usize)> = Default::default();
    for (who, url, status, same) in &c.rows {
        let route = url.split('?').next().unwrap_or(url).to_owned();
        let e = by_route.entry((format!("{who} {route}"), *status)).or_default();
        e.0 += 1;
        e.1 += usize::from(*same);
    }
    for ((route, status), (n, same)) in &by_route {
        eprintln!("  {route} -> {status}: {same}/{n} identical");
    }
}

#[test]
fn a_private_user_changes_nothing_anyone_else_can_see() {
    let (worlds, periods, tokens) = make_worlds("private", false);
    let c = crawl(&worlds, &periods, &tokens);
    report("private", &c);
    for p in &periods {
        let a = fetch(&format!("{}/releases/{p}", worlds[0].node.url), &Who::signed_out("peer"), 0);
        let b = fetch(&format!("{}/releases/{p}", worlds[1].node.url), &Who::signed_out("peer"), 1);
        assert_eq!(a, b, "published bytes of period {p} differ");
    }
    let msgs: Vec<String> =
        c.differing.iter().map(|(w, u, a, b)| format!("{w} {u}:\n{}", first_difference(a, b))).collect();
    assert!(msgs.is_empty(), "{} outputs differ:\n{}", msgs.len(), msgs.join("\n\n"));
    for (w, u, _, _) in &c.differing {
        eprintln!("{w} {u}");
    }
    let all: String = c.rows.iter().map(|r| r.1.clone()).collect();
    assert!(!all.is_empty());
}

#[test]
fn an_aggregate_user_changes_nothing_but_dp_values() {
    // Defaults: the node is far below τ, so the DP section is empty either way and
    // every output must be identical.
    let (worlds, periods, tokens) = make_worlds("aggregate", false);
    let c = crawl(&worlds, &periods, &tokens);
    report("aggregate (default parameters)", &c);
    let msgs: Vec<String> =
        c.differing.iter().map(|(w, u, a, b)| format!("{w} {u}:\n{}", first_difference(a, b))).collect();
    assert!(msgs.is_empty(), "{} outputs differ:\n{}", msgs.len(), msgs.join("\n\n"));
    drop(worlds);

    // Loose parameters: the DP section publishes; the releases may differ only there.
    let (worlds, periods, tokens) = make_worlds("aggregate", true);
    let c = crawl(&worlds, &periods, &tokens);
    report("aggregate (loose parameters)", &c);
    let peer = Who::signed_out("peer");
    let mut dp_differs = 0;
    for p in &periods {
        let a = fetch(&format!("{}/releases/{p}", worlds[0].node.url), &peer, 0).1;
        let b = fetch(&format!("{}/releases/{p}", worlds[1].node.url), &peer, 1).1;
        let (_, sa) = hearsay::envelope::open_snapshot(&a).expect("verifies");
        let (_, sb) = hearsay::envelope::open_snapshot(&b).expect("verifies");
        assert_eq!(sa.public, sb.public, "period {p}: the public section moved");
        assert_eq!((sa.params, sa.tau, sa.period_start), (sb.params, sb.tau, sb.period_start));
        dp_differs += usize::from(sa.aggregate != sb.aggregate);
        for e in sa.aggregate.artists.iter().chain(&sa.aggregate.tracks) {
            assert_ne!(e.name.artist, TARGET_ONLY, "one user's own artist passed k = 2");
        }
    }
    eprintln!("{dp_differs} of {} releases differ in their DP section", periods.len());
    // Pages that show releases (home, /privacy, /releases/…) may differ in DP values;
    // every other route must not.
    let shows_releases =
        |u: &str| u == "/" || u.starts_with("/privacy") || u.starts_with("/releases") || u.starts_with("/?");
    let msgs: Vec<String> = c
        .differing
        .iter()
        .filter(|(_, u, _, _)| !shows_releases(u.split('?').next().unwrap_or(u)))
        .map(|(w, u, a, b)| format!("{w} {u}:\n{}", first_difference(a, b)))
        .collect();
    assert!(msgs.is_empty(), "{} outputs differ outside releases:\n{}", msgs.len(), msgs.join("\n\n"));
}
