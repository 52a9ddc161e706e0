//! Federation with the real binary over libp2p on 127.0.0.1: nodes A and B form
//! community X, node C community Y, X links Y. Users at every sharing level scrobble
//! through the ListenBrainz API; after the (4-second) period closes every node shows
//! the same community and federated charts, equal to the merge of the published
//! snapshots; a late joiner catches up; a restarted node keeps its state.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::privacy::{SHORT_PERIODS, fresh_period, release_of, submit, user_with_token};
use crate::support::{NodeProcess, bin};

struct Peer {
    data: PathBuf,
    port: u16,
    id: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port()
}

impl Peer {
    fn new(dir: &Path, name: &str) -> Peer {
        let data = dir.join(name);
        let port = free_port();
        let mut p = Peer { data, port, id: String::new() };
        p.id = p.cli(&["node", "id"]).trim().to_owned();
        p
    }

    fn listen(&self) -> String {
        format!("[\"/ip4/127.0.0.1/tcp/{}\"]", self.port)
    }

    fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> =
            SHORT_PERIODS.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        env.push(("HEARSAY_P2P__LISTEN".into(), self.listen()));
        env.push(("HEARSAY_P2P__SYNC_INTERVAL_SECS".into(), "2".into()));
        env.push(("HEARSAY_NODE__LOG".into(), "warn,hearsay::p2p=debug".into()));
        env
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(bin())
            .args(args)
            .env("HEARSAY_NODE__DATA_DIR", &self.data)
            .env("HEARSAY_NODE__LOG", "warn")
            .env("HEARSAY_P2P__LISTEN", self.listen())
            .stdin(Stdio::null())
            .output()
            .expect("run hearsay");
        assert!(out.status.success(), "hearsay {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn start(&self) -> NodeProcess {
        let env = self.env();
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        NodeProcess::start_with(&self.data, &pairs)
    }
}

fn network(url: &str, period: i64) -> Value {
    let body =
        ureq::get(&format!("{url}/api/network?period={period}")).call().expect("network").into_string().expect("body");
    serde_json::from_str(&body).expect("json")
}

fn community<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v["communities"].as_array()?.iter().find(|c| c["name"] == name)
}

/// Polls until `f` holds for the node's network view, or fails with the last view.
fn wait_for(url: &str, period: i64, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let v = network(url, period);
        if f(&v) {
            return v;
        }
        if Instant::now() > deadline {
            panic!("{what}: not reached at {url}: {v:#}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn origins(v: &Value, name: &str, which: &str) -> i64 {
    community(v, name).and_then(|c| c[which]["origins"].as_i64()).unwrap_or(-1)
}

#[test]
fn three_nodes_two_communities_a_link_a_late_joiner_and_a_restart_agree_on_the_charts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, c, d) = (
        Peer::new(dir.path(), "a"),
        Peer::new(dir.path(), "b"),
        Peer::new(dir.path(), "c"),
        Peer::new(dir.path(), "d"),
    );

    // X: A administers, B is admitted. Y: C administers. X links Y at weight 0.5.
    // The test's loose privacy parameters (to publish anything from a few users) are
    // below the default floor, so these communities set a floor that admits them.
    let floor = ["--max-epsilon-week", "1000", "--min-k", "2"];
    a.cli(&[&["community", "create", "X"][..], &floor].concat());
    let ticket_b = a.cli(&["community", "invite", "X", "--node", &b.id]);
    b.cli(&["community", "join", ticket_b.trim()]);
    c.cli(&[&["community", "create", "Y"][..], &floor].concat());
    let ticket_y = c.cli(&["community", "invite", "Y"]);
    a.cli(&["community", "link", "X", ticket_y.trim(), "--weight", "0.5"]);
    let ticket_x = a.cli(&["community", "invite", "X"]);
    d.cli(&["community", "follow", ticket_x.trim()]);

    // Users at every level on A, B and C.
    let mut tokens = Vec::new();
    for (p, tag) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        let t = |name: &str, level: &str| user_with_token(&p.data, dir.path(), &format!("{tag}{name}"), level);
        tokens.push((
            tag,
            t("pub", "public"),
            t("priv", "private"),
            vec![t("agg1", "aggregate"), t("agg2", "aggregate")],
        ));
    }
    let (na, nb, nc) = (a.start(), b.start(), c.start());
    let urls = [na.url.clone(), nb.url.clone(), nc.url.clone()];

    let p = fresh_period();
    for ((tag, public, private, aggregate), url) in tokens.iter().zip(&urls) {
        let open = format!("Open {tag}");
        submit(url, public, &[(&open, "One", p), (&open, "Two", p + 1), ("Shared Artist", "Hit", p)]);
        submit(url, private, &[("Hidden Zq", "Secret", p), ("Shared Artist", "Hit", p)]);
        for t in aggregate {
            submit(url, t, &[("Shared Artist", "Hit", p), ("Shared Artist", "Other", p + 1)]);
        }
    }
    let releases: Vec<Vec<u8>> = urls.iter().map(|u| release_of(u, p, Duration::from_secs(20))).collect();

    // Every node converges: X has 2 origins, Y has 1, X's federated chart 3.
    let va = wait_for(&na.url, p, "A sees X, Y and the federated chart", |v| {
        origins(v, "X", "chart") == 2 && origins(v, "Y", "chart") == 1 && origins(v, "X", "federated") == 3
    });
    let vb = wait_for(&nb.url, p, "B sees the same", |v| {
        origins(v, "X", "chart") == 2 && origins(v, "Y", "chart") == 1 && origins(v, "X", "federated") == 3
    });
    let vc = wait_for(&nc.url, p, "C sees Y", |v| origins(v, "Y", "chart") == 1);
    for name in ["X", "Y"] {
        assert_eq!(community(&va, name).map(|c| &c["chart"]), community(&vb, name).map(|c| &c["chart"]), "{name}");
    }
    assert_eq!(community(&va, "X").map(|c| &c["federated"]), community(&vb, "X").map(|c| &c["federated"]));
    assert_eq!(community(&va, "Y").map(|c| &c["chart"]), community(&vc, "Y").map(|c| &c["chart"]));

    // The charts are the merge of the published snapshots: recompute X's from the
    // bytes A and B published.
    let key = |id: &str| hearsay::p2p::node_of(&id.parse().expect("peer id")).expect("ed25519");
    let mut manifest = hearsay::federation::community::ManifestV1::genesis("X", key(&a.id), 0);
    manifest.members = [key(&a.id), key(&b.id)]
        .into_iter()
        .map(|node| hearsay::federation::community::Member { node, weight_milli: 1000 })
        .collect();
    manifest.members.sort_by_key(|m| m.node);
    let mut state = hearsay::federation::merge::PeriodState::default();
    for bytes in &releases[..2] {
        let (_, s) = hearsay::identity::open_snapshot(bytes).expect("verifies");
        state.insert(hearsay::federation::merge::Held {
            version: s.version,
            hash: *blake3::hash(bytes).as_bytes(),
            snapshot: s,
        });
    }
    let expected = hearsay::federation::merge::community_chart(&manifest, &state, |_| 0);
    assert_eq!(community(&va, "X").expect("X")["chart"], serde_json::to_value(&expected).expect("json"));
    // Public sections are exact: A's public user's artist has 1 listener, 2 listens.
    let open_a = expected.artists.iter().find(|r| r.name.artist == "Open a").expect("public artist");
    assert_eq!((open_a.listeners, open_a.listens, open_a.origins), (1, 2, 1));
    // Nothing of the private users anywhere.
    for v in [&va, &vb, &vc] {
        assert!(!v.to_string().contains("Hidden Zq"));
    }

    // A late joiner that only follows X catches up to the same charts.
    let nd = d.start();
    let vd =
        wait_for(&nd.url, p, "D catches up", |v| origins(v, "X", "chart") == 2 && origins(v, "X", "federated") == 3);
    assert_eq!(community(&vd, "X").map(|c| &c["chart"]), community(&va, "X").map(|c| &c["chart"]));
    assert_eq!(community(&vd, "X").map(|c| &c["federated"]), community(&va, "X").map(|c| &c["federated"]));

    // A restarted node keeps its state.
    assert_eq!(nb.terminate(), Some(0));
    let nb = b.start();
    let after = network(&nb.url, p);
    assert_eq!(community(&after, "X").map(|c| &c["chart"]), community(&vb, "X").map(|c| &c["chart"]));
    assert_eq!(community(&after, "X").map(|c| &c["federated"]), community(&vb, "X").map(|c| &c["federated"]));
    drop((na, nb, nc, nd));
}
