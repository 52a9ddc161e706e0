use std::collections::BTreeMap;

use prio::codec::Encode;
// Seeded: the pure core draws no randomness of its own (its callers pass an RNG).
use rand::{SeedableRng, rngs::StdRng};

use super::dishonest::{encoded, shard_raw};
use super::*;

fn cheat(r: &RoundV1, raw: Vec<u128>, report: ReportId) -> ClientReport {
    shard_raw(r, raw, report).expect("the dishonest client shards")
}

fn names(prefix: &str, n: usize, track: bool) -> Vec<ItemName> {
    let mut v: Vec<ItemName> = (0..n)
        .map(|i| {
            let a = format!("{prefix} {i}");
            if track { ItemName::track(&a, "song").canonical() } else { ItemName::artist(&a).canonical() }
        })
        .collect();
    v.sort_by_key(ItemName::id);
    v
}

fn round(params: SecureParams) -> RoundV1 {
    RoundV1 {
        schema: SCHEMA,
        community: [7; 32],
        leader: [1; 32],
        helper: [2; 32],
        period_start: 1_700_000_000,
        period_secs: 604_800,
        params,
        artists: names("artist", 20, false),
        tracks: names("artist", 20, true),
    }
}

fn params() -> SecureParams {
    SecureParams { eps_milli: 50_000, l0: 2, min_users: 3, min_nodes: 2, min_listeners: 2, ..SecureParams::default() }
}

fn id(i: u32) -> ReportId {
    let mut r = [0u8; 16];
    r[..4].copy_from_slice(&i.to_be_bytes());
    r
}

/// `admit` against the shares a map holds.
fn admit_to(
    r: &RoundV1,
    agg: usize,
    held: &BTreeMap<ReportId, Held>,
    node: &NodeId,
    share: &ShareV1,
) -> Result<(), SecaggError> {
    let from = held.values().filter(|h| &h.node == node).count();
    admit(r, &r.id(), &r.vdaf()?, agg, held.contains_key(&share.report), from, share)
}

#[derive(Default)]
struct Both {
    leader: BTreeMap<ReportId, Held>,
    helper: BTreeMap<ReportId, Held>,
}

impl Both {
    fn add(&mut self, r: &RoundV1, node: u8, rep: ClientReport) -> Result<(), SecaggError> {
        admit_to(r, LEADER, &self.leader, &[node; 32], &rep.leader)?;
        admit_to(r, HELPER, &self.helper, &[node; 32], &rep.helper)?;
        self.leader.insert(rep.leader.report, Held { node: [node; 32], share: rep.leader });
        self.helper.insert(rep.helper.report, Held { node: [node; 32], share: rep.helper });
        Ok(())
    }

    /// Both aggregators' steps; returns the accepted ids and the rejections.
    fn verify(&self, r: &RoundV1) -> (Accepted, Accepted, usize) {
        let key = [9u8; 32];
        let start = leader_start(r, &key, &self.leader).expect("leader start");
        let h = helper_step(r, &key, &self.helper, &start.shares).expect("helper step");
        let rejected_by_helper = h.rejected.len();
        let (l, _) = leader_finish(r, start, &h.messages).expect("leader finish");
        assert_eq!(l.keys().collect::<Vec<_>>(), h.accepted.keys().collect::<Vec<_>>(), "same accepted set");
        (l, h.accepted, rejected_by_helper)
    }
}

fn total(r: &RoundV1, l: &Accepted, h: &Accepted) -> Vec<i64> {
    // Without noise: both shares summed exactly (a zero-noise stand-in built from the
    // accepted outputs, to check the arithmetic).
    use prio::vdaf::Aggregatable;
    let vdaf = r.vdaf().expect("vdaf");
    let sum = |m: &Accepted| {
        let mut a = vdaf.aggregate_init(&());
        for o in m.values() {
            a.accumulate(o).expect("accumulate");
        }
        a.get_encoded().expect("encode")
    };
    combine(r, &sum(l), &sum(h)).expect("combine")
}

#[test]
fn honest_reports_sum_to_the_listeners_per_item() {
    let r = round(params());
    let mut both = Both::default();
    let a = &r.artists;
    let t = &r.tracks;
    for u in 0..6u32 {
        // Everyone: artist 0 (3 plays) and artist 1 (2); track 0; users 0–2 also track 1.
        let mut artists = vec![(a[0].clone(), 3), (a[1].clone(), 2), (a[2].clone(), 1)];
        artists.push((ItemName::artist("not in the vocabulary"), 99));
        let mut tracks = vec![(t[0].clone(), 5)];
        if u < 3 {
            tracks.push((t[1].clone(), 1));
        }
        let m = measurement(&r, &artists, &tracks);
        assert_eq!(m.iter().filter(|b| **b).count(), if u < 3 { 4 } else { 3 }, "L0 = 2 per chart");
        both.add(&r, (u % 3) as u8, shard(&r, &m, id(u)).expect("shard")).expect("admitted");
    }
    let (l, h, rejected) = both.verify(&r);
    assert_eq!((l.len(), rejected), (6, 0));
    let counts = total(&r, &l, &h);
    let mut want = vec![0i64; r.len()];
    want[0] = 6;
    want[1] = 6;
    want[20] = 6;
    want[21] = 3;
    assert_eq!(counts, want, "artist 2 is the third artist: cut by L0");
    check_batch(&r.params, &l, &both.leader).expect("6 users from 3 nodes");
}

#[test]
fn a_share_alone_shows_nothing_of_the_measurement() {
    let r = round(params());
    let mut m = vec![false; r.len()];
    m[3] = true;
    let rep = shard(&r, &m, id(1)).expect("shard");
    let vdaf = r.vdaf().expect("vdaf");
    let (_, input) = decode_share(&vdaf, LEADER, &rep.leader).expect("decode");
    // The leader's share holds field elements; were it the measurement, all would be 0
    // or 1. The helper's share is a seed.
    let bytes = input.get_encoded().expect("encode");
    let elems: Vec<u128> =
        bytes[..16 * r.len()].chunks(16).map(|c| u128::from_le_bytes(c.try_into().expect("16 bytes"))).collect();
    assert!(elems.iter().filter(|v| **v <= 1).count() <= 1, "the leader's share is not the vector in the clear");
    assert!(rep.helper.input_share.len() < 100, "the helper's share is a seed: {} bytes", rep.helper.input_share.len());
}

#[test]
fn reports_that_break_the_bounds_are_rejected_and_never_counted() {
    let r = round(params());
    let mut both = Both::default();
    let mut honest = vec![false; r.len()];
    honest[0] = true;
    for u in 0..4u32 {
        both.add(&r, u as u8, shard(&r, &honest, id(u)).expect("shard")).expect("admitted");
    }
    // A count above C = 1: item 0 set to 7, weight bits claiming 1.
    let mut above_c = encoded(&r, &honest).expect("encode");
    above_c[0] = 7;
    both.add(&r, 5, cheat(&r, above_c, id(100))).expect("well formed, admitted");
    // More than L0 items: 2·L0 + 1 bits set, the weight claiming 2·L0.
    let mut five = vec![false; r.len()];
    for slot in five.iter_mut().take(5) {
        *slot = true;
    }
    let mut four = five.clone();
    four[4] = false;
    let mut over_l0 = encoded(&r, &four).expect("encode");
    over_l0[4] = 1;
    both.add(&r, 6, cheat(&r, over_l0, id(101))).expect("well formed, admitted");
    // A broken proof: one byte of the leader's proof share changed.
    let mut bad_proof = shard(&r, &honest, id(102)).expect("shard");
    let at = 16 * (r.len() + 3) + 5;
    bad_proof.leader.input_share[at] ^= 1;
    both.add(&r, 7, bad_proof).expect("still decodes");
    // The dishonest client's path itself works: a valid encoding through it passes.
    both.add(&r, 8, cheat(&r, encoded(&r, &honest).expect("encode"), id(103))).expect("admitted");

    let (l, h, rejected) = both.verify(&r);
    assert_eq!(rejected, 3, "the three bad reports are rejected");
    assert_eq!(l.len(), 5);
    assert!(l.contains_key(&id(103)), "a valid report through the cheating client is accepted");
    assert!(!l.contains_key(&id(100)) && !l.contains_key(&id(101)) && !l.contains_key(&id(102)));
    let counts = total(&r, &l, &h);
    assert_eq!(counts[0], 5, "only the valid reports are counted");
    assert!(counts[1..].iter().all(|c| *c == 0));
}

#[test]
fn malformed_and_replayed_shares_are_refused_on_arrival() {
    let r = round(params());
    let mut both = Both::default();
    let rep = shard(&r, &vec![false; r.len()], id(1)).expect("shard");
    let mut short = rep.leader.clone();
    short.input_share.pop();
    let e = admit_to(&r, LEADER, &both.leader, &[1; 32], &short).expect_err("short");
    assert!(e.to_string().contains("malformed input share"), "{e}");
    let mut other = rep.leader.clone();
    other.round = [0; 32];
    assert!(
        admit_to(&r, LEADER, &both.leader, &[1; 32], &other).expect_err("round").to_string().contains("another round")
    );
    both.add(&r, 1, rep.clone()).expect("first");
    let e = both.add(&r, 1, rep).expect_err("replay");
    assert!(e.to_string().contains("replay"), "{e}");
    // A report made for one round fails in the next, even under a fresh id.
    let mut next = round(params());
    next.period_start += 604_800;
    let old = shard(&r, &vec![false; r.len()], id(2)).expect("shard");
    let moved = ShareV1 { round: next.id(), ..old.leader };
    let mut b2 = Both::default();
    b2.leader.insert(moved.report, Held { node: [1; 32], share: moved });
    b2.helper.insert(old.helper.report, Held { node: [1; 32], share: ShareV1 { round: next.id(), ..old.helper } });
    let (l, _, rejected) = b2.verify(&next);
    assert_eq!((l.len(), rejected), (0, 1), "another round's context fails verification");
}

#[test]
fn a_node_may_not_send_more_than_its_quota() {
    let r = round(SecureParams { max_reports_per_node: 2, ..params() });
    let mut both = Both::default();
    for u in 0..2 {
        both.add(&r, 1, shard(&r, &vec![false; r.len()], id(u)).expect("shard")).expect("within quota");
    }
    let e = both.add(&r, 1, shard(&r, &vec![false; r.len()], id(9)).expect("shard")).expect_err("over");
    assert!(e.to_string().contains("allows 2"), "{e}");
}

#[test]
fn below_the_minimum_batch_nothing_is_released() {
    let r = round(SecureParams { min_users: 3, min_nodes: 3, ..params() });
    let mut both = Both::default();
    for u in 0..5u32 {
        // Five users, but on two nodes.
        both.add(&r, (u % 2) as u8, shard(&r, &vec![false; r.len()], id(u)).expect("shard")).expect("admitted");
    }
    let (l, _, _) = both.verify(&r);
    let e = check_batch(&r.params, &l, &both.leader).expect_err("two nodes");
    assert!(matches!(e, SecaggError::BatchTooSmall { users: 5, nodes: 2, .. }), "{e}");
}

#[test]
fn each_aggregator_noises_its_own_share() {
    let r = round(SecureParams { eps_milli: 500, ..params() });
    let mut both = Both::default();
    for u in 0..4u32 {
        let mut m = vec![false; r.len()];
        m[0] = true;
        both.add(&r, u as u8, shard(&r, &m, id(u)).expect("shard")).expect("admitted");
    }
    let (l, h, _) = both.verify(&r);
    let mut rng = StdRng::seed_from_u64(7);
    let exact = total(&r, &l, &h);
    // The leader's noise alone: the helper's share added exactly.
    use prio::vdaf::Aggregatable;
    let vdaf = r.vdaf().expect("vdaf");
    let mut plain = vdaf.aggregate_init(&());
    for o in h.values() {
        plain.accumulate(o).expect("acc");
    }
    let plain = plain.get_encoded().expect("enc");
    let noisy_leader = noised_aggregate(&r, &l, &mut rng).expect("noise");
    let one_noise = combine(&r, &noisy_leader, &plain).expect("combine");
    let moved = one_noise.iter().zip(&exact).filter(|(a, b)| a != b).count();
    // Scale 2·L0/ε = 8: P(noise = 0) ≈ 0.06, so nearly every one of 40 coordinates moves.
    assert!(moved >= 25, "the leader's noise alone moves the counts: {moved} of {}", exact.len());
    let noisy_helper = noised_aggregate(&r, &h, &mut rng).expect("noise");
    let both_noise = combine(&r, &noisy_leader, &noisy_helper).expect("combine");
    assert_ne!(both_noise, one_noise);
    // The chart shows only rows at or above the threshold, most listeners first.
    let c = chart(&r, &both_noise);
    assert!(c.artists.windows(2).all(|w| w[0].listeners >= w[1].listeners));
    assert!(c.artists.iter().chain(&c.tracks).all(|e| e.listeners >= 2));
}

#[test]
fn rounds_and_parameters_are_checked() {
    let mut r = round(params());
    r.check().expect("valid");
    assert_eq!(RoundV1::decode(&r.encode()).expect("decodes"), r);
    r.artists.reverse();
    assert!(r.check().expect_err("unsorted").to_string().contains("sorted"));
    let mut r = round(params());
    r.helper = r.leader;
    assert!(r.check().is_err());
    let mut r = round(params());
    r.artists.push(ItemName::track("x", "y"));
    assert!(r.check().is_err());
    assert!(SecureParams { min_nodes: 1, ..params() }.validate().is_err());
    assert!(SecureParams { eps_milli: 0, ..params() }.validate().is_err());
    assert!(SecureParams { vocabulary: 5_000, ..params() }.validate().is_err());
}

#[test]
fn the_vocabulary_is_the_most_published_items_sorted_by_id() {
    let published = vec![
        (ItemName::artist("A"), 5),
        (ItemName::artist("a"), 5),
        (ItemName::artist("B"), 1),
        (ItemName::artist("C"), 7),
        (ItemName::track("A", "x"), 3),
    ];
    let (artists, tracks) = vocabulary(published, 2);
    assert_eq!(artists.len(), 2, "capped");
    assert!(artists.iter().all(|n| n.artist == "a" || n.artist == "c"), "{artists:?}: A and a are one item (10), C 7");
    assert!(artists.windows(2).all(|w| w[0].id() < w[1].id()));
    assert_eq!(tracks.len(), 1);
}

#[test]
fn a_result_needs_both_signatures_and_the_helper_co_signs_only_the_true_total() {
    use crate::envelope::{DST_SECURE_RESULT, sign_detached};
    use ed25519_dalek::SigningKey;
    let (lk, hk) = (SigningKey::from_bytes(&[1; 32]), SigningKey::from_bytes(&[2; 32]));
    let mut r = round(params());
    r.leader = lk.verifying_key().to_bytes();
    r.helper = hk.verifying_key().to_bytes();
    let mut both = Both::default();
    for u in 0..4u32 {
        let mut m = vec![false; r.len()];
        m[1] = true;
        both.add(&r, u as u8, shard(&r, &m, id(u)).expect("shard")).expect("admitted");
    }
    let (l, h, _) = both.verify(&r);
    let mut rng = StdRng::seed_from_u64(7);
    let (la, ha) = (noised_aggregate(&r, &l, &mut rng).expect("l"), noised_aggregate(&r, &h, &mut rng).expect("h"));
    let counts = combine(&r, &la, &ha).expect("combine");
    let result = SecureResultV1::of(&r, &counts, 99);
    let salt = [5u8; 32];
    let commitment = commit(&salt, &ha);
    check_result(&r, &result, &la, &ha, &salt, &commitment).expect("the true total is signed");
    // A helper that inflates an item is caught.
    let mut lie = result.clone();
    lie.chart.artists.insert(0, SecureEntry { name: r.artists[5].clone(), listeners: 1_000 });
    assert!(check_result(&r, &lie, &la, &ha, &salt, &commitment).is_err());
    // A helper that changes its share after seeing the leader's (to make any chart it
    // likes add up) no longer matches its commitment.
    let forged = noised_aggregate(&r, &Accepted::new(), &mut rng).expect("another share");
    assert_ne!(forged, ha);
    let counts2 = combine(&r, &la, &forged).expect("combine");
    let consistent = SecureResultV1::of(&r, &counts2, 99);
    assert!(check_result(&r, &consistent, &la, &forged, &salt, &commitment).is_err());
    assert!(
        check_result(&r, &consistent, &la, &forged, &salt, &commit(&salt, &forged)).is_ok(),
        "the commitment is what caught it"
    );

    let body = result.encode();
    let signed = SignedSecureResult {
        leader_sig: sign_detached(&lk, DST_SECURE_RESULT, &body),
        helper_sig: sign_detached(&hk, DST_SECURE_RESULT, &body),
        body: body.clone(),
    };
    let opened = SignedSecureResult::open(&signed.encode(), &r.community, &r.leader, &r.helper).expect("opens");
    assert_eq!(opened, result);
    // The leader alone (its signature twice) is not enough.
    let alone = SignedSecureResult { helper_sig: signed.leader_sig.clone(), ..signed.clone() };
    assert!(SignedSecureResult::open(&alone.encode(), &r.community, &r.leader, &r.helper).is_err());
    assert!(SignedSecureResult::open(&signed.encode(), &[0; 32], &r.leader, &r.helper).is_err(), "another community");
}

/// The suggested display threshold keeps the expected rows of pure noise per release
/// at or under `NOISE_ROWS`, under the exact discrete noise (the convolution of the
/// two aggregators' discrete Laplace noise), and is not needlessly high.
#[test]
fn the_suggested_threshold_keeps_noise_off_the_chart() {
    assert_eq!(SecureParams::default().min_listeners, 169, "ε 0.15, L0 1, 2 × 2,000 items");
    for (eps_milli, l0, vocabulary) in [(150, 1, 2_000), (1_000, 1, 2_000), (500, 2, 100), (20_000, 1, 50)] {
        let t = suggested_min_listeners(eps_milli, l0, vocabulary);
        let b = 2.0 * f64::from(l0) * 1000.0 / f64::from(eps_milli);
        // Discrete Laplace of scale b: P(k) = (1 - a)/(1 + a) · a^|k|, a = e^(-1/b).
        let a = (-1.0 / b).exp();
        let m = (60.0 * b).ceil() as i64 + 2;
        let pmf: Vec<f64> = (-m..=m).map(|k| (1.0 - a) / (1.0 + a) * a.powi(k.abs() as i32)).collect();
        // Tail of the sum at x: Σ_i P(X = i) · P(Y ≥ x - i).
        let mut upper = vec![0.0; pmf.len() + 1];
        for i in (0..pmf.len()).rev() {
            upper[i] = upper[i + 1] + pmf[i];
        }
        let tail = |x: i64| -> f64 {
            (-m..=m)
                .map(|i| {
                    let need = x - i;
                    let idx = (need + m).clamp(0, 2 * m + 1) as usize;
                    pmf[(i + m) as usize] * upper[idx]
                })
                .sum()
        };
        let items = 2.0 * f64::from(vocabulary);
        let rows = tail(i64::from(t)) * items;
        assert!(rows <= NOISE_ROWS, "ε {eps_milli}‰: threshold {t} lets {rows} noise rows through");
        let lower = (f64::from(t) - 2.0 * b - 1.0).floor() as i64;
        assert!(tail(lower) * items > NOISE_ROWS, "ε {eps_milli}‰: threshold {t} is more than 2b + 1 too high");
    }
}
