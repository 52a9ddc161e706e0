//! `hearsay bench secagg`: the cost of secure aggregation (`federation::secagg`) on
//! this machine. A member node's time and bytes per report, and each aggregator's time
//! to check and sum a batch, over one round's vocabulary. Both aggregators run in this
//! process one after the other, so each one's time is its own.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::federation::secagg::{
    self, HELPER, Held, LEADER, ReportId, RoundV1, SCHEMA, SecureParams, admit, check_batch, combine, helper_step,
    leader_finish, leader_start, noised_aggregate,
};
use crate::privacy::snapshot::ItemName;

pub fn run(reports: usize, vocabulary: usize, l0: u32, nodes: usize) -> anyhow::Result<std::process::ExitCode> {
    anyhow::ensure!(reports >= 1 && vocabulary >= 2 && nodes >= 1, "need at least one report, two items and one node");
    let per_chart = vocabulary / 2;
    let names = |track: bool| {
        let mut v: Vec<ItemName> = (0..per_chart)
            .map(|i| {
                let a = format!("Artist {i}");
                if track { ItemName::track(&a, "Song").canonical() } else { ItemName::artist(&a).canonical() }
            })
            .collect();
        v.sort_by_key(ItemName::id);
        v
    };
    let defaults = SecureParams::default();
    let vocabulary = u32::try_from(per_chart)?;
    // The display threshold `community secure` would pick for this ε, L0 and vocabulary.
    let params = SecureParams {
        l0,
        vocabulary,
        max_reports_per_node: u32::try_from(reports.div_ceil(nodes))?,
        min_listeners: crate::federation::secagg::suggested_min_listeners(defaults.eps_milli, l0, vocabulary),
        ..defaults
    };
    let round = RoundV1 {
        schema: SCHEMA,
        community: [1; 32],
        leader: [2; 32],
        helper: [3; 32],
        period_start: 0,
        period_secs: 604_800,
        params,
        artists: names(false),
        tracks: names(true),
    };
    round.check()?;
    println!(
        "secure aggregation: {reports} reports from {nodes} nodes, vocabulary {} items ({per_chart} artists + {per_chart} tracks), L0 {l0} per chart (at most {} bits set), ε {} per aggregator's noise, Prio3MultihotCountVec over Field128",
        round.len(),
        params.max_weight(),
        crate::privacy::params::eps_text(u64::from(params.eps_milli))
    );

    // Members: one measurement and one shard per user.
    let mut shard_ms = Vec::with_capacity(reports);
    let (mut bytes_leader, mut bytes_helper) = (0usize, 0usize);
    let mut leader: BTreeMap<ReportId, Held> = BTreeMap::new();
    let mut helper: BTreeMap<ReportId, Held> = BTreeMap::new();
    let mut rng_state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    let mut reports_made = Vec::with_capacity(reports);
    for u in 0..reports {
        let listened: Vec<(ItemName, u64)> =
            (0..20).map(|_| (round.artists[(next() % per_chart as u64) as usize].clone(), 1 + next() % 30)).collect();
        let tracks: Vec<(ItemName, u64)> =
            (0..20).map(|_| (round.tracks[(next() % per_chart as u64) as usize].clone(), 1 + next() % 30)).collect();
        let mut id = [0u8; 16];
        getrandom::getrandom(&mut id)?;
        let t = Instant::now();
        let m = secagg::measurement(&round, &listened, &tracks);
        let rep = secagg::shard(&round, &m, id)?;
        shard_ms.push(t.elapsed().as_secs_f64() * 1e3);
        // What goes on the wire: each share postcard-encoded, as the protocol sends it.
        bytes_leader += postcard::to_allocvec(&rep.leader)?.len();
        bytes_helper += postcard::to_allocvec(&rep.helper)?.len();
        reports_made.push((u % nodes, rep));
    }
    shard_ms.sort_by(f64::total_cmp);
    let mean = shard_ms.iter().sum::<f64>() / shard_ms.len() as f64;
    let p99 = shard_ms[(shard_ms.len() * 99 / 100).min(shard_ms.len() - 1)];
    println!(
        "  member, per report: {mean:.2} ms mean, {p99:.2} ms p99 to bound and shard; {} bytes to the leader + {} bytes to the helper",
        bytes_leader / reports,
        bytes_helper / reports
    );

    // Intake: every share decoded and checked as it arrives.
    let node = |n: usize| {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&(n as u64).to_be_bytes());
        id
    };
    let (mut intake_leader, mut intake_helper) = (0f64, 0f64);
    let (round_id, vdaf) = (round.id(), round.vdaf()?);
    // What the store keeps per round and sender (a counter, not a scan).
    let mut per_node: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
    for (n, rep) in reports_made {
        let t = Instant::now();
        let from = per_node.get(&n).copied().unwrap_or(0);
        admit(&round, &round_id, &vdaf, LEADER, leader.contains_key(&rep.leader.report), from, &rep.leader)?;
        leader.insert(rep.leader.report, Held { node: node(n), share: rep.leader });
        intake_leader += t.elapsed().as_secs_f64();
        let t = Instant::now();
        admit(&round, &round_id, &vdaf, HELPER, helper.contains_key(&rep.helper.report), from, &rep.helper)?;
        *per_node.entry(n).or_insert(0) += 1;
        helper.insert(rep.helper.report, Held { node: node(n), share: rep.helper });
        intake_helper += t.elapsed().as_secs_f64();
    }

    let mut key = [0u8; 32];
    getrandom::getrandom(&mut key)?;
    let t = Instant::now();
    let start = leader_start(&round, &key, &leader)?;
    let leader_start_s = t.elapsed().as_secs_f64();
    let shares_bytes: usize = start.shares.iter().map(|(_, b)| b.len() + 16).sum();
    let t = Instant::now();
    let step = helper_step(&round, &key, &helper, &start.shares)?;
    check_batch(&round.params, &step.accepted, &helper)?;
    let mut rng = rand::make_rng::<rand::rngs::StdRng>();
    let helper_agg = noised_aggregate(&round, &step.accepted, &mut rng)?;
    let helper_s = t.elapsed().as_secs_f64();
    let messages_bytes: usize = step.messages.iter().map(|(_, b)| b.as_ref().map_or(0, Vec::len) + 17).sum();
    let t = Instant::now();
    let (accepted, rejected) = leader_finish(&round, start, &step.messages)?;
    check_batch(&round.params, &accepted, &leader)?;
    let leader_agg = noised_aggregate(&round, &accepted, &mut rng)?;
    let counts = combine(&round, &leader_agg, &helper_agg)?;
    let leader_s = leader_start_s + t.elapsed().as_secs_f64();
    anyhow::ensure!(accepted.len() == reports && rejected.is_empty(), "every honest report is accepted");
    let chart = secagg::chart(&round, &counts);
    println!(
        "  leader: {:.0} ms to take the {reports} shares in, {:.0} ms to verify and sum them (noise and combination included)",
        intake_leader * 1e3,
        leader_s * 1e3
    );
    println!(
        "  helper: {:.0} ms to take the {reports} shares in, {:.0} ms to verify and sum them (noise included)",
        intake_helper * 1e3,
        helper_s * 1e3
    );
    println!(
        "  between the aggregators: {} KiB of verifier shares, {} KiB of verifier messages, {} + {} bytes of noised aggregate shares",
        shares_bytes / 1024,
        messages_bytes / 1024,
        leader_agg.len(),
        helper_agg.len()
    );
    println!(
        "  released: {} artists, {} tracks at or above {} noisy listeners",
        chart.artists.len(),
        chart.tracks.len(),
        round.params.min_listeners
    );
    Ok(std::process::ExitCode::SUCCESS)
}
