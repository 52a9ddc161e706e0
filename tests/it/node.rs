//! The real binary: the node with no config, the CLI, and SIGKILL crashes.

use std::time::{Duration, Instant};

use crate::support::{NodeProcess, hearsay};

#[test]
fn a_node_starts_with_no_config_answers_health_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(&dir.path().join("data"));
    let body: serde_json::Value = serde_json::from_str(
        &ureq::get(&format!("{}/health", node.url)).call().expect("health").into_string().expect("body"),
    )
    .expect("json");
    assert_eq!(body["status"], "ok");
    assert!(body["peer_id"].as_str().is_some_and(|p| p.starts_with("12D3KooW")));
    assert!(dir.path().join("data/node_key").is_file());
    // While the node runs, offline commands say why they cannot open the store.
    let (code, _, err) = hearsay(&dir.path().join("data"), &["user", "list"]);
    assert_ne!(code, 0);
    assert!(err.contains("in use by another hearsay process"), "{err}");
    assert_eq!(node.terminate(), Some(0));
}

#[test]
fn users_and_tokens_from_the_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "a long password\n").expect("write");
    let pw = pw.to_str().expect("utf8");
    let (code, out, err) = hearsay(&data, &["user", "add", "carol", "--password-file", pw]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("created user carol"), "{out}");
    let (code, _, err) = hearsay(&data, &["user", "add", "CAROL", "--password-file", pw]);
    assert_ne!(code, 0);
    assert!(err.contains("taken"), "{err}");
    let (code, _, err) = hearsay(&data, &["user", "add", "dave"]);
    assert_ne!(code, 0);
    assert!(err.contains("--password-file"), "{err}");

    let (code, token, _) = hearsay(&data, &["token", "new", "carol", "--name", "navidrome"]);
    assert_eq!(code, 0);
    assert_eq!(token.trim().len(), 36, "{token}");
    let (_, list, _) = hearsay(&data, &["token", "list", "carol"]);
    assert!(list.contains("navidrome"), "{list}");
    assert!(!list.contains(token.trim()), "the token itself is never stored or listed");
    let id = list.split('\t').next().expect("id").to_owned();
    assert_eq!(hearsay(&data, &["token", "revoke", "carol", &id]).0, 0);
    assert_ne!(hearsay(&data, &["token", "revoke", "carol", &id]).0, 0);

    let (code, out, _) = hearsay(&data, &["log", "verify", "carol"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("ok: 0 entries"), "{out}");
    let (code, out, _) = hearsay(&data, &["user", "delete", "carol", "--yes"]);
    assert_eq!(code, 0, "{out}");
    let (_, out, _) = hearsay(&data, &["user", "list"]);
    assert!(!out.contains("carol"));
}

#[test]
fn a_bad_config_is_refused_before_anything_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("never-created");
    let out = std::process::Command::new(crate::support::bin())
        .env("HEARSAY_NODE__DATA_DIR", &data)
        .env("HEARSAY_STORE__CACHE_MB", "0")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("store.cache_mb"));
    assert!(!data.exists(), "nothing may be created when the config is bad");
}

/// A tiny xorshift so the kill moments differ per run without a dependency.
fn jitter(seed: &mut u64, max_ms: u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed % max_ms
}

/// Submits distinct single listens over HTTP from `clients` threads until the node
/// stops answering; each thread returns how many were acknowledged (HTTP 200, sent
/// only after the listen's group was flushed).
fn load(url: &str, token: &str, clients: u64, round: u64) -> Vec<std::thread::JoinHandle<u64>> {
    let base = hearsay::now_unix() - 60 * 86_400 + (round as i64) * 1_000_000;
    (0..clients)
        .map(|c| {
            let (url, token) = (format!("{url}/1/submit-listens"), token.to_owned());
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
                let mut acked = 0u64;
                for i in 0.. {
                    let at = base + (c as i64) * 100_000 + i;
                    let body = format!(
                        r#"{{"listen_type":"single","payload":[{{"listened_at":{at},"track_metadata":{{"artist_name":"Load {c}","track_name":"Track {round}-{i}"}}}}]}}"#
                    );
                    match agent.post(&url).set("Authorization", &format!("Token {token}")).send_string(&body) {
                        Ok(r) if r.status() == 200 => acked += 1,
                        _ => break,
                    }
                }
                acked
            })
        })
        .collect()
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_listen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, token) = crate::support::data_with_user(dir.path());
    let mut seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(7, |d| d.as_nanos() as u64) | 1;
    let mut acked_total = 0u64;
    for round in 0..4u64 {
        let node = NodeProcess::start(&data);
        let clients = load(&node.url, &token, 8, round);
        // Kill at a random moment while the clients submit.
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(300 + jitter(&mut seed, 1500)));
        let pid = node.child.id().to_string();
        std::process::Command::new("kill").args(["-KILL", &pid]).status().expect("kill");
        drop(node);
        let acked: u64 = clients.into_iter().map(|h| h.join().expect("client")).sum();
        assert!(started.elapsed() < Duration::from_secs(60));
        acked_total += acked;

        let (code, out, err) = hearsay(&data, &["log", "verify", "alice"]);
        assert_eq!(code, 0, "round {round}: {out}{err}");
        let (_, users, _) = hearsay(&data, &["user", "list"]);
        let stored: u64 = users
            .split_whitespace()
            .find_map(|f| f.strip_prefix("listens="))
            .and_then(|n| n.parse().ok())
            .expect("listens= in user list");
        assert!(stored >= acked_total, "round {round}: {stored} stored < {acked_total} acknowledged");
        // Statistics recounted after the crash equal a rebuild from the log.
        let top = |what: &str| {
            let (code, out, err) = hearsay(&data, &["stats", "top", "alice", "--kind", what, "--limit", "10"]);
            assert_eq!(code, 0, "{err}");
            let mut lines: Vec<String> = out.lines().map(str::to_owned).collect();
            lines[0] = lines[0].split(", ").take(2).collect::<Vec<_>>().join(", ");
            lines
        };
        // Alice is public from the second round on: the node's statistics too.
        let node = |what: &str| {
            let (code, out, err) = hearsay(&data, &["stats", "node", "--kind", what, "--limit", "10"]);
            assert_eq!(code, 0, "{err}");
            let mut lines: Vec<String> = out.lines().map(str::to_owned).collect();
            lines[0] = lines[0].split(", ").take(3).collect::<Vec<_>>().join(", ");
            lines
        };
        let recounted = (top("artists"), top("tracks"), top("albums"));
        let node_recounted = (node("artists"), node("tracks"), node("albums"));
        assert!(recounted.0[0].starts_with(&format!("{stored} listens")), "{:?}", recounted.0);
        if round > 0 {
            assert!(
                node_recounted.0[0].starts_with(&format!("{stored} listens, 1 listeners")),
                "{:?}",
                node_recounted.0
            );
        }
        assert_eq!(hearsay(&data, &["stats", "rebuild"]).0, 0);
        assert_eq!(recounted, (top("artists"), top("tracks"), top("albums")), "round {round}");
        assert_eq!(node_recounted, (node("artists"), node("tracks"), node("albums")), "round {round}");
        if round == 0 {
            assert_eq!(hearsay(&data, &["user", "set-visibility", "alice", "public"]).0, 0);
        }
        eprintln!(
            "round {round}: killed after {acked} acknowledged in this run; {stored} stored, {acked_total} acknowledged in all"
        );
    }
    assert!(acked_total > 0, "nothing was acknowledged before the kills");
}

#[test]
fn log_verify_on_the_command_line_names_a_changed_entry() {
    use hearsay::store::codec::{decode, encode};
    use hearsay::store::schema;
    use hearsay::store::values::{BlockV2, StoredEntry};

    let dir = tempfile::tempdir().expect("tempdir");
    let (data, _) = crate::support::data_with_user(dir.path());
    let jsonl: String = (0..500)
        .map(|i| {
            format!(
                "{{\"listened_at\":{},\"track_metadata\":{{\"artist_name\":\"A{}\",\"track_name\":\"T{i}\"}}}}\n",
                1_700_000_000 + i * 600,
                i % 7
            )
        })
        .collect();
    let file = dir.path().join("listens.jsonl");
    std::fs::write(&file, jsonl).expect("write");
    let (code, _, err) = hearsay(&data, &["import", "--user", "alice", file.to_str().expect("utf8")]);
    assert_eq!(code, 0, "{err}");
    let (code, ok, _) = hearsay(&data, &["log", "verify", "alice"]);
    assert_eq!(code, 0, "{ok}");
    assert!(ok.starts_with("ok: 500 entries"), "{ok}");

    // Flip one bit of entry 200's timestamp (block 192..256, slot 8), underneath.
    let db = crate::support::raw_open(&data.join("db"));
    let tree = db.open_tree(schema::USERID_SEQ_BLOCK).expect("tree");
    let mut key = 1u32.to_be_bytes().to_vec();
    key.extend_from_slice(&192u64.to_be_bytes());
    let raw = tree.get(&key).expect("get").expect("block");
    let mut block: BlockV2 = decode(schema::USERID_SEQ_BLOCK, &key, &raw).expect("decode");
    if let StoredEntry::Listen { listened_at, .. } = &mut block.entries[8] {
        *listened_at ^= 2;
    }
    tree.insert(&key, encode(&block)).expect("insert");
    db.flush().expect("flush");
    drop(tree);
    drop(db);

    let (code, out, _) = hearsay(&data, &["log", "verify", "alice"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("FAILED: entry 200:"), "{out}");
}

#[test]
fn the_json_log_format_writes_one_object_per_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let log = dir.path().join("node.log");
    let node = crate::support::NodeProcess::start_logging(
        &data,
        &[("HEARSAY_NODE__LOG", "info"), ("HEARSAY_NODE__LOG_FORMAT", "json")],
        &log,
    );
    // Serving (and its signal handlers in place) before it is stopped.
    assert_eq!(ureq::get(&format!("{}/health", node.url)).call().expect("health").status(), 200);
    assert_eq!(node.terminate(), Some(0));
    let text = std::fs::read_to_string(&log).expect("log");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let started = lines.iter().find(|l| l["message"] == "node started").unwrap_or_else(|| panic!("{text}"));
    assert_eq!(started["level"], "INFO");
    assert!(started["timestamp"].is_string() && started["target"].is_string(), "{started}");
    // An unknown format is refused at start, naming the option and the choices.
    let (code, _, err) = crate::support::hearsay_with(&data, &["user", "list"], &[("HEARSAY_NODE__LOG_FORMAT", "xml")]);
    assert!(code != 0 && err.contains("log_format") && err.contains("json"), "{err}");
}

#[test]
fn metrics_are_served_to_loopback_and_token_bearers_only_never_through_a_proxy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, token) = crate::support::data_with_user(dir.path());
    let secret = "metrics-secret-0123456789";
    let node = NodeProcess::start_with(&data, &[("HEARSAY_METRICS__TOKEN", secret)]);
    let body = serde_json::json!({"listen_type": "single", "payload": [{"listened_at": 1_700_000_000,
        "track_metadata": {"artist_name": "Metric Artist", "track_name": "Metric Song"}}]});
    let submitted = ureq::post(&format!("{}/1/submit-listens", node.url))
        .set("Authorization", &format!("Token {token}"))
        .send_string(&body.to_string())
        .expect("submit");
    assert_eq!(submitted.status(), 200);
    let _ = ureq::get(&format!("{}/1/user/nobody/listens", node.url)).call();
    let scrape = |headers: &[(&str, &str)]| {
        let mut req = ureq::get(&format!("{}/metrics", node.url));
        for (k, v) in headers {
            req = req.set(k, v);
        }
        match req.call() {
            Ok(r) => (r.status(), r.into_string().expect("text")),
            Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap_or_default()),
            Err(e) => panic!("{e}"),
        }
    };
    // Loopback, directly: every family, with what just happened in it.
    let (status, text) = scrape(&[]);
    assert_eq!(status, 200, "{text}");
    for line in [
        "hearsay_http_requests_total{api=\"listenbrainz\",outcome=\"ok\"} 1",
        "hearsay_http_requests_total{api=\"listenbrainz\",outcome=\"not_found\"} 1",
        "hearsay_submit_seconds_count{api=\"listenbrainz\"} 1",
        "hearsay_ingest_batches_total 1",
        "hearsay_ingest_reloads_total 0",
        "hearsay_users 1",
        "hearsay_ingest_queue_depth 0",
        "hearsay_http_connections_shed_total 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
    assert!(text.contains("hearsay_store_bytes ") && text.contains("hearsay_peers ") && text.ends_with("# EOF\n"));
    // Node-wide numbers only: no user, track, token or address in them.
    for needle in ["alice", "Metric Artist", "Metric Song", &token, "127.0.0.1"] {
        assert!(!text.contains(needle), "{needle} in the metrics");
    }
    // Through a proxy (a TLS front on the same host forwards from loopback): as if
    // there were nothing, unless the bearer token comes along.
    let (status, _) = scrape(&[("X-Forwarded-For", "198.51.100.7")]);
    assert_eq!(status, 404);
    let (status, _) = scrape(&[("Forwarded", "for=198.51.100.7")]);
    assert_eq!(status, 404);
    let bearer = format!("Bearer {secret}");
    let (status, _) = scrape(&[("X-Forwarded-For", "198.51.100.7"), ("Authorization", &bearer)]);
    assert_eq!(status, 200);
    let (status, _) =
        scrape(&[("X-Forwarded-For", "198.51.100.7"), ("Authorization", "Bearer wrong-secret-0123456789")]);
    assert_eq!(status, 404);
    assert_eq!(node.terminate(), Some(0));
    // An address not allowed, and the endpoint switched off.
    let node = NodeProcess::start_with(&data, &[("HEARSAY_METRICS__ALLOW", "[\"192.0.2.1\"]")]);
    assert_eq!(scrape_at(&node.url), 404);
    assert_eq!(node.terminate(), Some(0));
    let node = NodeProcess::start_with(&data, &[("HEARSAY_METRICS__ENABLED", "false")]);
    assert_eq!(scrape_at(&node.url), 404);
    assert_eq!(node.terminate(), Some(0));
    // A listed proxy forwards for others even without a forwarding header.
    let node = NodeProcess::start_with(&data, &[("HEARSAY_HTTP__TRUSTED_PROXIES", "[\"127.0.0.1\"]")]);
    assert_eq!(scrape_at(&node.url), 404);
    assert_eq!(node.terminate(), Some(0));
}

fn scrape_at(url: &str) -> u16 {
    match ureq::get(&format!("{url}/metrics")).call() {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(s, _)) => s,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn store_stats_says_where_the_bytes_go_per_tree_and_per_listen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, token) = crate::support::data_with_user(dir.path());
    let node = NodeProcess::start(&data);
    let payload: Vec<_> = (0..50)
        .map(|i| {
            serde_json::json!({"listened_at": 1_700_000_000 + i * 600,
                "track_metadata": {"artist_name": format!("Artist {}", i % 5), "track_name": format!("Song {i}")}})
        })
        .collect();
    let body = serde_json::json!({"listen_type": "import", "payload": payload}).to_string();
    let r = ureq::post(&format!("{}/1/submit-listens", node.url))
        .set("Authorization", &format!("Token {token}"))
        .send_string(&body)
        .expect("submit");
    assert_eq!(r.status(), 200);
    assert_eq!(node.terminate(), Some(0));
    let (code, out, err) = hearsay(&data, &["store", "stats"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("1 users, 50 listens\n"), "{out}");
    let per_listen = |tree: &str| -> f64 {
        let line =
            out.lines().find(|l| l.split_whitespace().next() == Some(tree)).unwrap_or_else(|| panic!("{tree}: {out}"));
        line.split_whitespace().last().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{line}"))
    };
    // The log holds every listen; its blocks cost something per listen, and the files
    // at least what the trees hold.
    assert!(per_listen("userid_seq_block") > 10.0, "{out}");
    let line =
        |name: &str| out.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name}: {out}")).to_owned();
    let total = |l: String| -> u64 { l.split_whitespace().rev().nth(1).and_then(|n| n.parse().ok()).expect("bytes") };
    assert!(total(line("files on disk")) >= total(line("all trees")), "{out}");
}
