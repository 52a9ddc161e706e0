//! Merging: a community's chart for a period is a pure function of the set of valid
//! member snapshots held for it. The set is a map origin → (version, snapshot) where a
//! higher version wins and two different snapshots with the same version mark the
//! origin as equivocating (left out for that period): so inserting snapshots in any order, any
//! number of times, gives the same state (commutative, associative, idempotent), and no
//! listen is ever counted twice. Federated charts combine community charts by weight.

use std::collections::BTreeMap;

use super::community::{Admission, ManifestV1};
use super::validate::meets_floor;
use super::{CommunityId, NodeId};
use crate::privacy::snapshot::{Entry, ItemId, ItemName, SnapshotV1};

/// Most rows of a community or federated chart.
pub const MAX_ROWS: usize = 100;

/// One origin's snapshot as held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub version: u16,
    pub hash: [u8; 32],
    pub snapshot: SnapshotV1,
}

/// All that is held for one period: per origin, every distinct (version, hash) seen.
/// A plain set union, so joins are commutative, associative and idempotent whatever
/// the order; the effective snapshot of an origin is its highest version, and an
/// origin with two different snapshots of one version is equivocating and left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeriodState {
    pub by_origin: BTreeMap<NodeId, BTreeMap<(u16, [u8; 32]), SnapshotV1>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insert {
    Stored,
    Duplicate,
    Older,
    Equivocation,
}

impl PeriodState {
    pub fn insert(&mut self, held: Held) -> Insert {
        let versions = self.by_origin.entry(held.snapshot.origin).or_default();
        if versions.contains_key(&(held.version, held.hash)) {
            return Insert::Duplicate;
        }
        let outcome = if versions.keys().any(|(v, _)| *v == held.version) {
            Insert::Equivocation
        } else if versions.keys().any(|(v, _)| *v > held.version) {
            Insert::Older
        } else {
            Insert::Stored
        };
        versions.insert((held.version, held.hash), held.snapshot);
        outcome
    }

    /// Joins another state into this one.
    pub fn merge(&mut self, other: &PeriodState) {
        for (origin, versions) in &other.by_origin {
            let mine = self.by_origin.entry(*origin).or_default();
            for (k, v) in versions {
                mine.entry(*k).or_insert_with(|| v.clone());
            }
        }
    }

    pub fn equivocating(&self, origin: &NodeId) -> bool {
        self.by_origin.get(origin).is_some_and(|v| v.keys().zip(v.keys().skip(1)).any(|(a, b)| a.0 == b.0))
    }

    /// Each non-equivocating origin's highest version.
    pub fn effective(&self) -> impl Iterator<Item = (&NodeId, &SnapshotV1)> {
        self.by_origin
            .iter()
            .filter(|(o, _)| !self.equivocating(o))
            .filter_map(|(o, v)| v.iter().next_back().map(|(_, s)| (o, s)))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Row {
    pub item: ItemId,
    pub name: ItemName,
    pub listeners: i64,
    pub listens: i64,
    /// How many counted origins reported the item: members of a community that counts
    /// them (every counted origin of an allow-list community).
    pub origins: u32,
    /// How many non-members (origins admitted through an open community) reported it as
    /// well: shown as corroboration, never in the counts or the ranks.
    #[serde(default)]
    pub corroborating: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Chart {
    pub artists: Vec<Row>,
    pub tracks: Vec<Row>,
    /// Origins whose snapshots were counted (members).
    pub origins: u32,
    /// Non-members whose snapshots were taken as corroboration (open communities).
    #[serde(default)]
    pub corroborating: u32,
}

/// Which origins count and with what weight (in 1/1000): members of an allow-list
/// community, or in an open one any origin past its probation (`seen_periods`: how many
/// periods the origin has published valid snapshots for, before this one).
pub fn weight_of(manifest: &ManifestV1, origin: &NodeId, seen_periods: u32) -> Option<u16> {
    match manifest.admission {
        Admission::AllowList => manifest.weight(origin),
        Admission::Open { probation_periods } => {
            (seen_periods >= probation_periods).then(|| manifest.weight(origin).unwrap_or(1000))
        }
    }
}

/// How many whole periods of length `secs` lie between when this node first saw an
/// origin and the start of `period` (0 if never seen, or seen after it started): the
/// probation measure. Measured from first sight, so a fresh key cannot shorten its
/// probation by minting backdated snapshots.
pub fn periods_seen(period: i64, first_seen: Option<i64>, secs: u32) -> u32 {
    let len = i64::from(secs.max(1));
    first_seen.map_or(0, |t| u32::try_from(period.saturating_sub(t).max(0) / len).unwrap_or(u32::MAX))
}

/// The community chart for one period.
pub fn community_chart(manifest: &ManifestV1, state: &PeriodState, seen: impl Fn(&NodeId) -> u32) -> Chart {
    federated_chart(manifest, &[], &[], state, seen)
}

/// A linked community's signed merged result (`federation::result`), as a federated
/// chart of a node that does not hold that community's snapshots counts it: its rows at
/// `weight_milli` (the link's weight), its `inputs` the origins it merged.
#[derive(Clone, Copy, Debug)]
pub struct Linked<'a> {
    pub weight_milli: u16,
    pub inputs: &'a [NodeId],
    pub chart: &'a Chart,
}

/// A federated chart: the origins this community counts and those each linked community
/// counts, **each origin once**, at the highest of its weights (a linked community's
/// weight times its link weight / 1000), merged under this community's policy. So a node
/// that is a member of two linked communities is not counted twice. A community counts an
/// origin's snapshot only if the snapshot names it and meets its own privacy floor.
///
/// Linked communities whose snapshots this node does not hold come in as their signed
/// results (`results`): each adds its rows at its link weight, scaled by the share of
/// its inputs not counted already (by a snapshot here or an earlier result, heaviest
/// link first), so an origin in two communities is still counted about once; their
/// origins count towards `min_origins_per_item`, and they enter no per-origin cap (each
/// is a community's own capped sum).
pub fn federated_chart(
    own: &ManifestV1,
    linked: &[(u16, &ManifestV1)],
    results: &[Linked<'_>],
    state: &PeriodState,
    seen: impl Fn(&NodeId) -> u32,
) -> Chart {
    let own_id = own.community();
    let linked_ids: Vec<CommunityId> = linked.iter().map(|(_, m)| m.community()).collect();
    let mut counted = Vec::new();
    for (origin, snapshot) in state.effective() {
        let s = seen(origin);
        // Each community counts only snapshots that name it and meet its own floor.
        let counts = |m: &ManifestV1, id: &CommunityId| {
            (snapshot.communities.contains(id) && meets_floor(snapshot, &m.floor))
                .then(|| weight_of(m, origin, s))
                .flatten()
        };
        // As a member: the highest weight among the communities that list it; only if
        // none does, as a non-member (admitted through an open community, it only
        // corroborates: `chart_of`) at the highest weight among those. So a weight from
        // an open community never lends a member's standing, nor the reverse.
        let (mut as_member, mut as_other): (Option<u32>, Option<u32>) = (None, None);
        let mut note = |m: &ManifestV1, w: u32| {
            let slot = if m.is_member(origin) { &mut as_member } else { &mut as_other };
            *slot = Some(slot.map_or(w, |x| x.max(w)));
        };
        if let Some(w) = counts(own, &own_id) {
            note(own, u32::from(w));
        }
        for ((link, m), id) in linked.iter().zip(&linked_ids) {
            if let Some(w) = counts(m, id) {
                note(m, u32::from(*link) * u32::from(w) / 1000);
            }
        }
        let (weight, member) = match (as_member, as_other) {
            (Some(w), _) => (w, true),
            (None, Some(w)) => (w, false),
            (None, None) => continue,
        };
        if weight > 0 {
            counted.push(Counted { weight: u16::try_from(weight).unwrap_or(u16::MAX), member, snapshot });
        }
    }
    // Origins counted here as members: a non-member only corroborates, so a linked
    // result's origin that is one here is counted nowhere else.
    let mut seen_origins: std::collections::BTreeSet<NodeId> =
        counted.iter().filter(|c| c.member).map(|c| c.snapshot.origin).collect();
    let mut order: Vec<&Linked<'_>> = results.iter().collect();
    order.sort_by_key(|r| std::cmp::Reverse(r.weight_milli));
    let mut extras = Vec::new();
    for r in order {
        let n = r.inputs.len();
        let fresh = r.inputs.iter().filter(|o| seen_origins.insert(**o)).count();
        if n == 0 || fresh == 0 {
            continue;
        }
        // Weight × fresh / n, in 1/1000 (n ≥ fresh > 0).
        let w = u64::from(r.weight_milli) * u64::try_from(fresh).unwrap_or(0) / u64::try_from(n).unwrap_or(1);
        let share = (u32::try_from(fresh).unwrap_or(u32::MAX), u32::try_from(n).unwrap_or(u32::MAX));
        extras.push((u16::try_from(w).unwrap_or(u16::MAX), r.chart, share));
    }
    chart_of(&own.policy, &counted, &extras)
}

/// One origin's snapshot as a chart counts it.
struct Counted<'a> {
    /// In 1/1000.
    weight: u16,
    /// Listed in the manifest of a community that counts it (every counted origin of an
    /// allow-list community is), rather than admitted through an open community.
    member: bool,
    snapshot: &'a SnapshotV1,
}

// Non-members (origins admitted through an open community) corroborate: each item
// shows how many of them reported it (`Row::corroborating`), and that is all. They add
// nothing to any count, list nothing, and move no rank, however many they are: a Sybil
// flood of an open community, of any size, changes no entry of its chart by
// construction. (Until 2026-12 they could add up to a quarter of an item's members'
// count, which let a flood lift an item within 1.25× of the 10th past it.)

/// How many times the median origin's largest count one origin may give any item.
pub const MEDIAN_MULTIPLE: i64 = 4;
/// The per-origin cap never falls below this many listeners (listens: 16 times it), so
/// a community of one-user nodes still lets a bigger node count as more than one.
pub const MIN_ORIGIN_CAP: i64 = 16;

/// The per-origin cap for one chart: `MEDIAN_MULTIPLE` times the lower median, over the
/// counted origins, of each origin's largest count in that chart (at least `floor`).
/// With k hostile origins among n > 2k, the lower median lies between two honest
/// origins' values, so no lie can raise the cap past `MEDIAN_MULTIPLE` times the
/// largest honest value (nor lower it below the floor). Lies do move the cap within
/// that range, and with it how much of the honest origins' own counts is kept.
pub fn origin_cap(largest: &mut [i64], floor: i64) -> i64 {
    largest.sort_unstable();
    let median = match largest.len() {
        0 => 0,
        n => largest[(n - 1) / 2],
    };
    median.saturating_mul(MEDIAN_MULTIPLE).max(floor)
}

/// Merges the counted origins' snapshots under `policy`. Robust by construction: each
/// origin's count for an item is clipped at the per-origin cap (`origin_cap`), weighted,
/// and once `share_cap_from` origins report the item, clipped again so that no origin
/// holds more than `max_origin_share_milli` of it (`clipped_sum`). The bound, for k
/// hostile members out of n > 2k: the hostile part of any item's listeners is at most
/// k · cap, and cap ≤ max(`MIN_ORIGIN_CAP`, `MEDIAN_MULTIPLE` × the largest honest
/// count) — however few origins report the item. (The honest part is the honest
/// counts clipped at that same cap, which lies move within the range; so an honest
/// entry's count can also shift, by re-clipping, not only be outbid.) Non-members of an
/// open community are only counted as corroboration (`Row::corroborating`): nothing of
/// theirs enters a count, a cap or a rank. Arithmetic saturates (i128 inside the clip).
///
/// `extras`: linked communities' results, (weight in 1/1000, chart, (inputs not counted
/// yet, inputs)): their rows are added to the members' sums at that weight, and their
/// origins, in the share not counted yet, to each row's, after the caps.
fn chart_of(policy: &super::community::Policy, counted: &[Counted<'_>], extras: &[(u16, &Chart, (u32, u32))]) -> Chart {
    let pick = |s: &SnapshotV1, tracks: bool| -> Vec<Entry> {
        let (p, a) =
            if tracks { (&s.public.tracks, &s.aggregate.tracks) } else { (&s.public.artists, &s.aggregate.artists) };
        p.iter().chain(a.iter()).cloned().collect()
    };
    let sum = |tracks: bool| -> Vec<Row> {
        // Each origin's own sums per item (public + aggregate), then the caps.
        type Sums = BTreeMap<ItemId, (ItemName, i64, i64)>;
        let per_origin: Vec<(&Counted<'_>, Sums)> = counted
            .iter()
            .map(|c| {
                let mut mine: Sums = BTreeMap::new();
                for e in pick(c.snapshot, tracks) {
                    let m = mine.entry(e.item).or_insert_with(|| (e.name.clone(), 0, 0));
                    m.1 = m.1.saturating_add(e.listeners);
                    m.2 = m.2.saturating_add(e.listens);
                }
                (c, mine)
            })
            .collect();
        // The cap comes from members: non-members cannot move it.
        let largest = |f: fn(&(ItemName, i64, i64)) -> i64| -> Vec<i64> {
            per_origin.iter().filter(|(c, _)| c.member).map(|(_, m)| m.values().map(f).max().unwrap_or(0)).collect()
        };
        let cap_listeners = origin_cap(&mut largest(|v| v.1), MIN_ORIGIN_CAP);
        let cap_listens = origin_cap(&mut largest(|v| v.2), MIN_ORIGIN_CAP.saturating_mul(16));
        // item -> (name, per-origin (member, listeners, listens) in 1/1000)
        type Part = (bool, i64, i64);
        // Per item: its name, each counted origin's part, and the linked results' part
        // (listeners and listens in 1/1000, origins).
        type Item = (ItemName, Vec<Part>, (i128, i128, u32));
        let mut per_item: BTreeMap<ItemId, Item> = BTreeMap::new();
        for (c, mine) in per_origin {
            for (item, (name, l, n)) in mine {
                let w = i64::from(c.weight);
                per_item
                    .entry(item)
                    .or_insert_with(|| (name, Vec::new(), (0, 0, 0)))
                    .1
                    // Listens may be negative in aggregate sections (noise left in); no
                    // origin pulls an item down by more than the cap either.
                    .push((
                        c.member,
                        l.min(cap_listeners).saturating_mul(w),
                        n.clamp(-cap_listens, cap_listens).saturating_mul(w),
                    ));
            }
        }
        for (w, chart, (fresh, n)) in extras {
            let rows = if tracks { &chart.tracks } else { &chart.artists };
            for r in rows {
                let e = &mut per_item.entry(r.item).or_insert_with(|| (r.name.clone(), Vec::new(), (0, 0, 0))).2;
                // No linked origin counts more than one of this chart's may (the
                // per-origin cap): a row gives at most its origins × the cap, whatever
                // the linked community's administrator signed.
                let most = |cap: i64| i128::from(cap).saturating_mul(i128::from(r.origins.max(1)));
                let listeners = i128::from(r.listeners).min(most(cap_listeners));
                let listens = i128::from(r.listens).clamp(-most(cap_listens), most(cap_listens));
                e.0 = e.0.saturating_add(listeners.saturating_mul(i128::from(*w)));
                e.1 = e.1.saturating_add(listens.saturating_mul(i128::from(*w)));
                // Its origins in the share not counted yet (n ≥ fresh > 0).
                let origins = u64::from(r.origins) * u64::from(*fresh) / u64::from((*n).max(1));
                e.2 = e.2.saturating_add(u32::try_from(origins).unwrap_or(u32::MAX));
            }
        }
        let mut rows: Vec<Row> = Vec::new();
        for (item, (name, contributions, linked)) in per_item {
            // Enough origins to list an item: members only (non-members corroborate),
            // and the origins of linked results.
            let members = contributions.iter().filter(|c| c.0).count();
            let origins = u32::try_from(members).unwrap_or(u32::MAX).saturating_add(linked.2);
            let corroborating = u32::try_from(contributions.len() - members).unwrap_or(u32::MAX);
            if origins == 0 || origins < u32::from(policy.min_origins_per_item) {
                continue;
            }
            let share = policy.max_origin_share_milli;
            // A share can only hold among at least 1000 / share origins.
            let enough = u32::from(policy.share_cap_from).max(1000u32.div_ceil(u32::from(share.max(1))));
            let total = |values: Vec<i64>| -> i128 {
                let capped = u32::try_from(values.len()).unwrap_or(u32::MAX) >= enough;
                if capped { clipped_sum(&values, share) } else { values.iter().map(|v| i128::from(*v)).sum() }
            };
            let count = |f: fn(&Part) -> i64, linked: i128| -> i64 {
                let sum = total(contributions.iter().filter(|c| c.0).map(f).collect()).saturating_add(linked) / 1000;
                i64::try_from(sum).unwrap_or(if sum < 0 { i64::MIN } else { i64::MAX })
            };
            let listeners = count(|c| c.1, linked.0);
            let listens = count(|c| c.2, linked.1);
            rows.push(Row { item, name, listeners, listens, origins, corroborating });
        }
        rank(&mut rows);
        rows
    };
    let members = counted.iter().filter(|c| c.member).count();
    let linked = extras.iter().fold(0u32, |n, e| n.saturating_add(e.2.0));
    Chart {
        artists: sum(false),
        tracks: sum(true),
        origins: u32::try_from(members).unwrap_or(u32::MAX).saturating_add(linked),
        corroborating: u32::try_from(counted.len() - members).unwrap_or(u32::MAX),
    }
}

/// The sum of origins' contributions to one item, each clipped at one cap `t` chosen so
/// that no origin gives more than `share_milli` / 1000 of the clipped total (the largest
/// such cap: origins below it keep their whole contribution). So whatever one origin
/// claims, it holds at most that share of the item's count, and k origins together at
/// most k times it. Negative contributions (DP noise) count as they are and are never
/// clipped. Needs `1000 / share_milli` origins or more (`share_cap_from`); with fewer, no
/// cap can hold and the plain sum is taken.
pub fn clipped_sum(values: &[i64], share_milli: u16) -> i128 {
    let share = i128::from(share_milli.clamp(1, 1000));
    let plain: i128 = values.iter().map(|v| i128::from(*v)).sum();
    let mut positive: Vec<i128> = values.iter().filter(|v| **v > 0).map(|v| i128::from(*v)).collect();
    positive.sort_unstable();
    let negative = plain - positive.iter().sum::<i128>();
    let n = positive.len();
    // With the largest `capped` values clipped at t and the rest whole (sum `below`):
    // t = share · (below + capped · t) / 1000, so t = share · below / (1000 − share · capped).
    let mut below: i128 = positive.iter().sum();
    for capped in 0..=n {
        if capped > 0 {
            below -= positive[n - capped];
        }
        let denominator = 1000 - share * i128::try_from(capped).unwrap_or(i128::MAX / 2000);
        if capped == 0 {
            // Nothing clipped: fine if the largest already holds at most the share.
            let total = below;
            if positive.last().is_none_or(|&max| max * 1000 <= share * total) {
                return plain;
            }
            continue;
        }
        if denominator <= 0 {
            break;
        }
        let t = share * below / denominator;
        let lower = if capped < n { positive[n - capped - 1] } else { 0 };
        if t >= lower && t <= positive[n - capped] {
            return below + t * i128::try_from(capped).unwrap_or(0) + negative;
        }
    }
    // No cap can hold the share (too few origins report the item): the plain sum.
    plain
}

fn rank(rows: &mut Vec<Row>) {
    rows.retain(|r| r.listeners > 0);
    rows.sort_by(|a, b| b.listeners.cmp(&a.listeners).then(b.listens.cmp(&a.listens)).then(a.item.cmp(&b.item)));
    rows.truncate(MAX_ROWS);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privacy::params::Params;
    use crate::privacy::snapshot::{Charts, SCHEMA};
    use proptest::prelude::*;

    fn snap(origin: u8, counts: &[(u8, i64)]) -> SnapshotV1 {
        let params = Params::default();
        let mut artists: Vec<Entry> = counts
            .iter()
            .map(|(a, n)| {
                let name = ItemName::artist(&format!("Artist {a}"));
                Entry { item: name.id(), name, listeners: *n, listens: n.saturating_mul(3) }
            })
            .collect();
        artists.sort_by_key(|e| e.item);
        artists.dedup_by_key(|e| e.item);
        SnapshotV1 {
            schema: SCHEMA,
            origin: [origin; 32],
            period_start: 0,
            period_secs: 604_800,
            version: 1,
            issued_at: 1,
            params,
            tau: params.tau(),
            public: Charts { artists, tracks: Vec::new() },
            aggregate: Charts::default(),
            communities: vec![TEST_COMMUNITY],
        }
    }

    /// The id every test manifest carries (as a manifest after genesis does).
    const TEST_COMMUNITY: CommunityId = [9; 32];

    fn held(s: SnapshotV1, version: u16) -> Held {
        let mut s = s;
        s.version = version;
        Held { version, hash: *blake3::hash(&s.encode()).as_bytes(), snapshot: s }
    }

    fn manifest(members: &[u8]) -> ManifestV1 {
        let mut m = ManifestV1::genesis("test", [1; 32], 0);
        m.genesis = Some(TEST_COMMUNITY);
        m.members =
            members.iter().map(|o| super::super::community::Member { node: [*o; 32], weight_milli: 1000 }).collect();
        m
    }

    fn arb_held() -> impl Strategy<Value = Held> {
        (0u8..4, 1u16..3, proptest::collection::vec((0u8..6, 1i64..50), 0..5))
            .prop_map(|(origin, version, counts)| held(snap(origin, &counts), version))
    }

    fn state_of(items: &[Held]) -> PeriodState {
        let mut s = PeriodState::default();
        for h in items {
            s.insert(h.clone());
        }
        s
    }

    proptest! {
        #[test]
        fn insertion_order_and_duplicates_do_not_matter(items in proptest::collection::vec(arb_held(), 0..12), seed in any::<u64>()) {
            let a = state_of(&items);
            let mut shuffled = items.clone();
            shuffled.extend(items.iter().take(3).cloned());
            // A deterministic shuffle from the seed.
            let mut x = seed | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let b = state_of(&shuffled);
            prop_assert_eq!(&a, &b);
            let m = manifest(&[0, 1, 2, 3]);
            prop_assert_eq!(community_chart(&m, &a, |_| 0), community_chart(&m, &b, |_| 0));
        }

        #[test]
        fn merge_is_associative_commutative_and_idempotent(
            x in proptest::collection::vec(arb_held(), 0..6),
            y in proptest::collection::vec(arb_held(), 0..6),
            z in proptest::collection::vec(arb_held(), 0..6),
        ) {
            let (a, b, c) = (state_of(&x), state_of(&y), state_of(&z));
            let join = |p: &PeriodState, q: &PeriodState| { let mut r = p.clone(); r.merge(q); r };
            prop_assert_eq!(join(&join(&a, &b), &c), join(&a, &join(&b, &c)));
            prop_assert_eq!(join(&a, &b), join(&b, &a));
            prop_assert_eq!(join(&a, &a), a.clone());
        }
    }

    #[test]
    fn newer_versions_win_equivocation_excludes_and_non_members_do_not_count() {
        let mut s = PeriodState::default();
        assert_eq!(s.insert(held(snap(1, &[(1, 20)]), 2)), Insert::Stored);
        assert_eq!(s.insert(held(snap(1, &[(1, 20)]), 2)), Insert::Duplicate);
        assert_eq!(s.insert(held(snap(1, &[(1, 5)]), 1)), Insert::Older);
        assert_eq!(s.insert(held(snap(2, &[(1, 7)]), 1)), Insert::Stored);
        assert_eq!(s.insert(held(snap(9, &[(1, 1000)]), 1)), Insert::Stored);
        let m = manifest(&[1, 2]);
        let c = community_chart(&m, &s, |_| 0);
        assert_eq!((c.origins, c.artists[0].listeners, c.artists[0].origins), (2, 27, 2));
        assert_eq!(s.insert(held(snap(2, &[(1, 8)]), 1)), Insert::Equivocation);
        let c = community_chart(&m, &s, |_| 0);
        assert_eq!((c.origins, c.artists[0].listeners), (1, 20), "the equivocating origin is left out");
    }

    proptest! {
        /// Whatever one origin claims, it holds at most the share of the clipped total:
        /// the total is at most the others' sum / (1 − share); k origins at most k shares.
        #[test]
        fn one_origin_holds_at_most_its_share(
            honest in proptest::collection::vec(0i64..1_000_000, 3..12),
            claim in 0i64..i64::MAX,
            colluders in 1usize..3,
        ) {
            let share = 250u16;
            let others: i128 = honest.iter().map(|v| i128::from(*v)).sum();
            let mut values = honest.clone();
            values.push(claim);
            let total = clipped_sum(&values, share);
            prop_assert!(total <= others * 1000 / 750 + 1, "{total} from {values:?}");
            // k colluding origins together: at most k shares of the total.
            let mut values = honest.clone();
            values.extend(std::iter::repeat_n(claim, colluders));
            if values.len() >= 4 {
                let total = clipped_sum(&values, share);
                let k = i128::try_from(colluders).expect("small");
                prop_assert!(total * (1000 - 250 * k) <= others * 1000 + 1000, "{total} from {values:?}");
            }
        }

        /// Honest origins that all report alike are never clipped; no sum overflows.
        #[test]
        fn equal_reports_are_summed_whole_and_nothing_overflows(v in 0i64..i64::MAX, n in 4usize..40) {
            let values = vec![v; n];
            prop_assert_eq!(clipped_sum(&values, 250), i128::from(v) * i128::try_from(n).expect("small"));
        }
    }

    proptest! {
        /// The stated bound: with k hostile origins among n > 2k, whatever they claim and
        /// on however few origins an item rests, the hostile part of its listeners is at
        /// most k · cap, with cap ≤ max(MIN_ORIGIN_CAP, MEDIAN_MULTIPLE × the largest
        /// honest count): the item's count is at most the honest counts clipped at that
        /// cap plus k · cap.
        #[test]
        fn hostile_origins_add_at_most_k_caps_to_any_item(
            honest in proptest::collection::vec(proptest::collection::vec((0u8..8, 1i64..400), 1..6), 3..9),
            claims in proptest::collection::vec(proptest::collection::vec((0u8..12, 1i64..i64::MAX), 1..6), 1..4),
        ) {
            prop_assume!(claims.len() * 2 < honest.len() + claims.len());
            let n = u8::try_from(honest.len() + claims.len()).expect("small");
            let mut m = manifest(&(0..n).collect::<Vec<_>>());
            m.policy.share_cap_from = 1000; // only the median cap, to test it alone
            let mut all: Vec<Held> =
                honest.iter().enumerate().map(|(i, c)| held(snap(u8::try_from(i).expect("small"), c), 1)).collect();
            for (j, c) in claims.iter().enumerate() {
                all.push(held(snap(u8::try_from(honest.len() + j).expect("small"), c), 1));
            }
            let after = community_chart(&m, &state_of(&all), |_| 0);
            // The cap the merge used, recomputed from every counted origin's largest count.
            let largest_of = |c: &Vec<(u8, i64)>| {
                let mut per: BTreeMap<u8, i64> = BTreeMap::new();
                for (a, v) in c { per.entry(*a).or_insert(*v); }
                per.values().copied().max().unwrap_or(0)
            };
            let mut largest: Vec<i64> = honest.iter().chain(&claims).map(largest_of).collect();
            let cap = origin_cap(&mut largest, MIN_ORIGIN_CAP);
            let top_honest = honest.iter().map(largest_of).max().unwrap_or(0);
            prop_assert!(cap <= (MEDIAN_MULTIPLE * top_honest).max(MIN_ORIGIN_CAP), "cap {cap} past the honest range");
            let k = i64::try_from(claims.len()).expect("small");
            for row in &after.artists {
                let honest_part: i64 = honest
                    .iter()
                    .filter_map(|c| {
                        let mut per: BTreeMap<u8, i64> = BTreeMap::new();
                        for (a, v) in c { per.entry(*a).or_insert(*v); }
                        per.iter().find(|(a, _)| ItemName::artist(&format!("Artist {a}")).id() == row.item).map(|(_, v)| (*v).min(cap))
                    })
                    .sum();
                prop_assert!(row.listeners - honest_part <= k * cap, "{}: {} = honest {honest_part} + more than {k} × {cap}", row.name.display(), row.listeners);
            }
        }
    }

    proptest! {
        /// The open-community rule: any number of non-members (a Sybil flood), whatever
        /// they claim, leave the chart exactly the members' chart (every item, count and
        /// rank), only the corroboration counts differ.
        #[test]
        fn non_members_only_corroborate_whatever_their_number(
            members in proptest::collection::vec(proptest::collection::vec((0u8..8, -5i64..400), 1..6), 1..6),
            others in proptest::collection::vec(proptest::collection::vec((0u8..12, i64::MIN..i64::MAX), 1..6), 0..40),
        ) {
            let listed: Vec<u8> = (0..u8::try_from(members.len()).expect("small")).collect();
            let mut m = manifest(&listed);
            m.admission = Admission::Open { probation_periods: 0 };
            let mut all: Vec<Held> =
                members.iter().enumerate().map(|(i, c)| held(snap(u8::try_from(i).expect("small"), c), 1)).collect();
            let only_members = community_chart(&m, &state_of(&all), |_| 0);
            for (j, c) in others.iter().enumerate() {
                all.push(held(snap(100 + u8::try_from(j).expect("small"), c), 1));
            }
            let with_others = community_chart(&m, &state_of(&all), |_| 0);
            type Counts = Vec<(ItemId, i64, i64, u32)>;
            let strip = |c: &Chart| -> (Counts, Counts, u32) {
                let rows = |rows: &[Row]| rows.iter().map(|r| (r.item, r.listeners, r.listens, r.origins)).collect();
                (rows(&c.artists), rows(&c.tracks), c.origins)
            };
            prop_assert_eq!(strip(&with_others), strip(&only_members), "non-members changed the chart");
            prop_assert!(only_members.artists.iter().all(|r| r.corroborating == 0));
        }
    }

    /// Review findings: non-members do not make up an item's minimum number of origins,
    /// and a weight from an open community does not lend a member's standing (an origin
    /// listed in a linked community at a low link weight and admitted through an open
    /// one at a high weight counts as a member at the low weight, not at the high one).
    #[test]
    fn non_members_neither_fill_the_minimum_nor_lend_weight() {
        let mut open = manifest(&[1]);
        open.admission = Admission::Open { probation_periods: 0 };
        open.policy.min_origins_per_item = 3;
        let s = state_of(&[held(snap(1, &[(1, 8)]), 1), held(snap(20, &[(1, 8)]), 1), held(snap(21, &[(1, 8)]), 1)]);
        assert!(community_chart(&open, &s, |_| 0).artists.is_empty(), "one member and two Sybils list nothing");
        // Origin 5: a member of `strict` (linked at 100), a non-member of `open` (its own).
        let mut own = manifest(&[1]);
        own.admission = Admission::Open { probation_periods: 0 };
        let mut strict = manifest(&[5]);
        strict.genesis = Some(TEST_COMMUNITY);
        let s = state_of(&[held(snap(1, &[(1, 100)]), 1), held(snap(5, &[(2, 100)]), 1)]);
        let fed = federated_chart(&own, &[(100, &strict)], &[], &s, |_| 0);
        let artist2 = fed.artists.iter().find(|r| r.item == ItemName::artist("Artist 2").id()).expect("listed");
        assert_eq!(artist2.listeners, 10, "a member at its link weight (100 × 0.1), not 100: {:?}", fed.artists);
    }

    #[test]
    fn one_origin_claiming_a_thousand_counts_at_most_four_medians() {
        // Two origins: no share cap can hold, but the median cap does.
        let m = manifest(&[1, 2, 3]);
        let s = state_of(&[held(snap(1, &[(1, 1000)]), 1), held(snap(2, &[(1, 10)]), 1), held(snap(3, &[(2, 9)]), 1)]);
        let c = community_chart(&m, &s, |_| 0);
        assert_eq!(c.artists[0].listeners, 10 + MIN_ORIGIN_CAP.max(4 * 10), "{:?}", c.artists);
    }

    #[test]
    fn sums_saturate_instead_of_overflowing() {
        let m = manifest(&[1, 2]);
        let s = state_of(&[held(snap(1, &[(1, i64::MAX)]), 1), held(snap(2, &[(1, i64::MAX)]), 1)]);
        let c = community_chart(&m, &s, |_| 0);
        assert!(c.artists[0].listeners > 0, "saturated, not wrapped: {:?}", c.artists[0]);
        let fed = federated_chart(&m, &[(1000, &m)], &[], &s, |_| 0);
        assert!(fed.artists[0].listeners > 0, "{:?}", fed.artists[0]);
    }

    #[test]
    fn caps_and_minimum_origins_apply() {
        let mut m = manifest(&[1, 2, 3, 4]);
        m.policy.min_origins_per_item = 2;
        let s = state_of(&[
            held(snap(1, &[(1, 1000), (2, 5)]), 1),
            held(snap(2, &[(1, 10)]), 1),
            held(snap(3, &[(1, 10)]), 1),
            held(snap(4, &[(1, 10)]), 1),
        ]);
        let c = community_chart(&m, &s, |_| 0);
        assert_eq!(c.artists.len(), 1, "artist 2 has one origin");
        // One origin claims 1000 against three 10s: it may give at most 25 % of the
        // item's clipped total, so it counts 10 (10 of 40), not 257 of 287 (90 %) as
        // when the cap was a share of a total that included its own claim.
        assert_eq!(c.artists[0].listeners, 40);
        // Linked to a community with the same members: each origin still counts once
        // (before, the linked chart was added on top: 60 listeners from 8 "origins").
        let fed = federated_chart(&m, &[(500, &m)], &[], &s, |_| 0);
        assert_eq!((fed.artists[0].listeners, fed.origins), (40, 4));
        // A member only of the linked community counts at its link weight.
        let mut other = manifest(&[5]);
        other.policy = m.policy;
        let s5 = state_of(&[held(snap(5, &[(1, 10)]), 1)]);
        let mut both = s.clone();
        both.merge(&s5);
        let fed = federated_chart(&m, &[(500, &other)], &[], &both, |_| 0);
        assert_eq!(fed.origins, 5);
    }

    #[test]
    fn a_linked_result_counts_at_its_weight_and_what_was_counted_already_once() {
        let mut m = manifest(&[1, 2]);
        m.policy.min_origins_per_item = 3;
        let s = state_of(&[held(snap(1, &[(1, 10), (2, 4)]), 1), held(snap(2, &[(1, 10)]), 1)]);
        // A linked community's result: artist 1 at 60 listeners from two origins, artist
        // 3 at 50 from two (under this chart's cap of 40 per origin).
        let row = |a: u8, n: i64, origins: u32| {
            let name = ItemName::artist(&format!("Artist {a}"));
            Row { item: name.id(), name, listeners: n, listens: n.saturating_mul(3), origins, corroborating: 0 }
        };
        let linked =
            Chart { artists: vec![row(1, 60, 2), row(3, 50, 2)], tracks: vec![], origins: 2, corroborating: 0 };
        let at = |c: &Chart, a: u8| {
            c.artists.iter().find(|r| r.name.artist == format!("Artist {a}")).map(|r| (r.listeners, r.origins))
        };
        // Disjoint origins: all of it at the link weight (0.5); artist 1 reaches the
        // minimum of 3 origins only with the result's; artist 2 (one origin) does not.
        let (x, y) = ([7; 32], [8; 32]);
        let fresh = [x, y];
        let fed = federated_chart(&m, &[], &[Linked { weight_milli: 500, inputs: &fresh, chart: &linked }], &s, |_| 0);
        assert_eq!(at(&fed, 1), Some((20 + 30, 4)));
        assert_eq!(at(&fed, 2), None);
        assert_eq!(fed.origins, 4);
        let alone = community_chart(&m, &s, |_| 0);
        assert!(alone.artists.is_empty(), "two origins list nothing under a minimum of 3");
        // One of its two inputs is counted here already: half of it.
        let half = [[1; 32], y];
        let fed = federated_chart(&m, &[], &[Linked { weight_milli: 500, inputs: &half, chart: &linked }], &s, |_| 0);
        assert_eq!(at(&fed, 1), Some((20 + 15, 3)), "its origins in that share too");
        assert_eq!(fed.origins, 3);
        // Both counted here already, or by a heavier link's result: nothing more.
        let same = [[1; 32], [2; 32]];
        let fed = federated_chart(&m, &[], &[Linked { weight_milli: 500, inputs: &same, chart: &linked }], &s, |_| 0);
        assert_eq!(fed.origins, 2);
        let twice = [
            Linked { weight_milli: 500, inputs: &fresh, chart: &linked },
            Linked { weight_milli: 900, inputs: &fresh, chart: &linked },
        ];
        let fed = federated_chart(&m, &[], &twice, &s, |_| 0);
        assert_eq!(at(&fed, 1), Some((20 + 54, 4)), "the heavier link counts, the other adds nothing");
        // A linked administrator's claim counts at most its origins × this chart's cap
        // (here 4 × the median origin's largest count, 10: 40 per origin).
        let lie = Chart { artists: vec![row(1, i64::MAX, 2)], tracks: vec![], origins: 2, corroborating: 0 };
        let fed = federated_chart(&m, &[], &[Linked { weight_milli: 1000, inputs: &fresh, chart: &lie }], &s, |_| 0);
        assert_eq!(at(&fed, 1), Some((20 + 2 * 40, 4)), "{:?}", fed.artists);
        // An origin that only corroborates here (a non-member of an open community) is
        // counted nowhere else: a result that merged it counts in full.
        let mut open = m.clone();
        open.admission = Admission::Open { probation_periods: 0 };
        let with_stranger =
            state_of(&[held(snap(1, &[(1, 10)]), 1), held(snap(2, &[(1, 10)]), 1), held(snap(9, &[(1, 10)]), 1)]);
        let stranger = [[9; 32], y];
        let fed = federated_chart(
            &open,
            &[],
            &[Linked { weight_milli: 500, inputs: &stranger, chart: &linked }],
            &with_stranger,
            |_| 0,
        );
        assert_eq!(at(&fed, 1), Some((20 + 30, 4)), "{:?}", fed.artists);
    }
}
