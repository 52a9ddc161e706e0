//! `hearsay bench federation`: N real nodes in this process (each its own sled store,
//! node key and libp2p swarm on 127.0.0.1) in one community. Every node publishes its
//! release for the same period; the figure is the time from the last publication until
//! every node holds the merged chart with all N origins. Also printed: bytes on the
//! loopback interface per node (all libp2p traffic of the run: gossip, catch-up,
//! identify, ping), and memory per node.

use std::time::{Duration, Instant};

use crate::federation::community::{ManifestV1, Member, open_manifest};
use crate::identity::NodeIdentity;
use crate::privacy::SharingLevel;
use crate::privacy::accountant::period_of;
use crate::privacy::params::{Budget, Params};
use crate::privacy::release::{Period, UserPeriod, release};
use crate::privacy::snapshot::ItemName;
use crate::publish::OsRandom;
use crate::store::values::FollowV1;
use crate::store::{self, Store};

fn loopback_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    text.lines()
        .find(|l| l.trim_start().starts_with("lo:"))
        .and_then(|l| l.split(':').nth(1)?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn run(nodes: usize, links: usize, items: usize, timeout_secs: u64) -> anyhow::Result<std::process::ExitCode> {
    let nodes = nodes.max(2);
    let dir = super::temp_dir("federation")?;
    let now = crate::now_unix();
    let period = period_of(now - 14 * 86_400, 604_800);
    let rss0 = super::rss_kib();
    let mut peers = Vec::new();
    for i in 0..nodes {
        let d = dir.path().join(format!("n{i}"));
        let s = Store::open(&d, &store::Options { cache_mb: 4, ..Default::default() })?;
        let id = std::sync::Arc::new(NodeIdentity::load_or_create(&d)?);
        peers.push((s, id, free_port()?));
    }
    // One allow-list community of every node, administered by node 0.
    let mut m = ManifestV1::genesis("bench", peers[0].1.public_key(), now);
    m.members = peers.iter().map(|(_, id, _)| Member { node: id.public_key(), weight_milli: 1000 }).collect();
    m.members.sort_by_key(|x| x.node);
    let signed = open_manifest(&peers[0].1.sign_manifest(&m)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cid = m.community();
    let addr = |i: usize| format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", peers[i].2, peers[i].1.peer_id());
    for (i, (s, _, _)) in peers.iter().enumerate() {
        s.put_manifest(&signed)?;
        // Each node knows node 0 and `links` others: a sparse, connected graph.
        let mut boot = vec![addr(0)];
        for k in 1..=links {
            boot.push(addr((i + k * 7 + 1) % nodes));
        }
        s.follow(&cid, &FollowV1 { member: true, bootstrap: boot, since: now })?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let bytes0 = loopback_bytes();
    let result = rt.block_on(async {
        let mut handles = Vec::new();
        for (s, id, port) in &peers {
            let options = crate::p2p::Options {
                listen: vec![format!("/ip4/127.0.0.1/tcp/{port}").parse()?],
                external: Vec::new(),
                bootstrap: Vec::new(),
                mdns: false,
                serve_directory: true,
                relays: Vec::new(),
                relay_server: false,
                autonat: false,
                retention_secs: 12 * 604_800,
                sync_interval: Duration::from_secs(30),
                max_requests_per_minute: 600,
                max_connections: 256,
                max_connections_per_ip: 16,
                // Every node of the benchmark shares this process's memory.
                max_memory_bytes: usize::MAX,
                period_secs: 604_800,
                result_delay_secs: 3_600,
                grace_secs: 60,
                budget: Default::default(),
                credit_rules: Default::default(),
                secagg_audit: None,
            };
            handles.push(crate::p2p::spawn(s.clone(), std::sync::Arc::clone(id), options)?);
        }
        // Let the mesh form.
        let settle = Instant::now();
        loop {
            let mut connected = 0;
            for h in &handles {
                if h.status().await.is_some_and(|s| !s.peers.is_empty()) {
                    connected += 1;
                }
            }
            if connected == nodes || settle.elapsed() > Duration::from_secs(60) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let settle_secs = settle.elapsed().as_secs_f64();
        let bytes_before_publish = loopback_bytes();
        // Every node releases and publishes the same period.
        let mut size = 0;
        for (i, ((s, id, _), h)) in peers.iter().zip(&handles).enumerate() {
            // A public listener per node with `items` artists and tracks, half of them
            // shared by every node: a realistic snapshot size.
            let name = |j: usize| {
                if j.is_multiple_of(2) { format!("Shared Artist {j}") } else { format!("Node {i} Artist {j}") }
            };
            let users = [UserPeriod {
                user: 1,
                level: SharingLevel::Public,
                artists: (0..items).map(|j| (ItemName::artist(&name(j)), 1 + j as u64)).collect(),
                tracks: (0..items)
                    .map(|j| (ItemName::track(&name(j), &format!("Song number {j}")), 1 + j as u64))
                    .collect(),
            }];
            let p = Period {
                origin: id.public_key(),
                start: period,
                secs: 604_800,
                issued_at: now - 60,
                communities: vec![cid],
            };
            let budget = Budget::default();
            let r = release(p, &users, &Params::default(), budget, Default::default(), &[0; 32], &mut OsRandom)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let bytes = id.sign_snapshot(&r.snapshot);
            size = bytes.len();
            s.put_snapshot(period, &id.public_key(), 1, &bytes)?;
            h.publish_release(bytes).await;
        }
        let last_publish = Instant::now();
        let deadline = last_publish + Duration::from_secs(timeout_secs);
        let mut done = vec![false; nodes];
        while done.iter().any(|d| !d) && Instant::now() < deadline {
            for (i, (s, _, _)) in peers.iter().enumerate() {
                if !done[i] {
                    done[i] = s.community_chart(&cid, period, 604_800)?.is_some_and(|c| c.origins as usize == nodes);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let converged = last_publish.elapsed();
        let complete = done.iter().filter(|d| **d).count();
        let bytes_after = loopback_bytes();
        anyhow::Ok((settle_secs, size, converged, complete, bytes_before_publish, bytes_after))
    })?;
    let (settle_secs, size, converged, complete, before_publish, after) = result;
    let rss = super::rss_kib();
    println!("federation: {nodes} nodes on 127.0.0.1, one community, each node dialling node 0 and {links} others");
    println!("  mesh formed in {settle_secs:.1} s; snapshot size {size} bytes");
    println!(
        "  last publication -> every node holding the merged chart ({complete}/{nodes} nodes with all {nodes} origins): {:.2} s",
        converged.as_secs_f64()
    );
    println!(
        "  loopback bytes per node: {:.1} KiB for the period's publication and merge, {:.1} KiB in all (mesh upkeep, identify, catch-up included)",
        (after.saturating_sub(before_publish)) as f64 / nodes as f64 / 1024.0,
        (after.saturating_sub(bytes0)) as f64 / nodes as f64 / 1024.0
    );
    println!(
        "  memory: {:.1} MiB RSS per node ({:.0} MiB for all {nodes})",
        (rss.saturating_sub(rss0)) as f64 / nodes as f64 / 1024.0,
        rss as f64 / 1024.0
    );
    drop(rt);
    Ok(if complete == nodes { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE })
}
