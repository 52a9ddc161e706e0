//! Changes to statistics buckets held in memory between persists, and the merge of
//! sorted (item, count) runs.

use std::collections::HashMap;

use super::Credited;
use crate::stats::chart::Kind;
use crate::store::values::AggV2;

/// A map hashed with `rustc_hash`'s Fx: its keys are item ids the node assigns in order,
/// and hour slots and bucket keys derived from those ids and from listen times inside
/// the accepted window, small bounded domains where no client can pile keys into one
/// hash bucket; std's SipHash cost a tenth of the writer's time in the import profile.
pub(crate) type FastMap<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;

/// Pending changes to one bucket, merged into it in one pass (`merged`): a year bucket
/// holds tens of thousands of items, so inserting listens one by one into its sorted
/// lists would cost a copy of the list each.
///
/// Each item's change is an `i32`: the node's pending changes hold millions of them
/// (`NODE_HOT_MAX_PAIRS`; 16M when measured), and 8-byte entries instead of 16 took ~150
/// MiB off an import's peak (the process's peak 725 → 573 MiB at 10,000 members). A
/// change is a count of listens (or listeners) gained or lost between two stores;
/// stored counts are `u32`, clamped at 0 and `u32::MAX` when merged, and a change past
/// `i32`'s range (over two billion listens of one item between two stores) saturates
/// there (`narrow`), as no node reaches.
#[derive(Clone, Debug, Default)]
pub(crate) struct Delta {
    pub(super) total: i64,
    pub(super) counts: [FastMap<u32, i32>; 3],
    pub(super) hours: FastMap<(u16, u8), i32>,
}

/// `n` as an item's change, saturated at `i32`'s bounds (see `Delta`).
pub(crate) fn narrow(n: i64) -> i32 {
    i32::try_from(n).unwrap_or(if n < 0 { i32::MIN } else { i32::MAX })
}

/// Adds `by` to the change of `key`, saturating (see `Delta`).
pub(crate) fn bump<K: std::hash::Hash + Eq>(changes: &mut FastMap<K, i32>, key: K, by: i32) {
    let n = changes.entry(key).or_default();
    *n = n.saturating_add(by);
}

impl Delta {
    /// Adds another change of the same bucket to this one.
    pub(crate) fn absorb(&mut self, other: &Delta) {
        self.total += other.total;
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            for (item, by) in theirs {
                bump(mine, *item, *by);
            }
        }
        for (slot, by) in &other.hours {
            bump(&mut self.hours, *slot, *by);
        }
    }

    /// The (item, count) changes it holds.
    pub(crate) fn pairs(&self) -> usize {
        self.counts.iter().map(FastMap::len).sum::<usize>() + self.hours.len()
    }

    /// This change's count of item `item` of kind index `kind`.
    pub(crate) fn count(&self, kind: usize, item: u32) -> i64 {
        self.counts.get(kind).and_then(|c| c.get(&item)).map_or(0, |&n| i64::from(n))
    }
}

pub(super) fn merge_sorted<K: Ord + Copy>(base: &[(K, u32)], delta: &FastMap<K, i32>) -> Vec<(K, u32)> {
    let mut changes: Vec<(K, i64)> = delta.iter().filter(|(_, d)| **d != 0).map(|(k, d)| (*k, i64::from(*d))).collect();
    changes.sort_unstable_by_key(|c| c.0);
    let mut out = Vec::with_capacity(base.len() + changes.len());
    let (mut i, mut j) = (0, 0);
    let clamp = |n: i64| u32::try_from(n.max(0)).unwrap_or(u32::MAX);
    while i < base.len() || j < changes.len() {
        let (k, n) = match (base.get(i), changes.get(j)) {
            (Some(&(bk, bn)), Some(&(ck, cn))) if bk == ck => {
                i += 1;
                j += 1;
                (bk, clamp(i64::from(bn) + cn))
            }
            (Some(&(bk, bn)), Some(&(ck, _))) if bk < ck => {
                i += 1;
                (bk, bn)
            }
            (Some(&(bk, bn)), None) => {
                i += 1;
                (bk, bn)
            }
            (_, Some(&(ck, cn))) => {
                j += 1;
                (ck, clamp(cn))
            }
            (None, None) => break,
        };
        if n > 0 {
            out.push((k, n));
        }
    }
    out
}

/// `base` with `delta` applied.
pub(crate) fn merged(base: Option<&AggV2>, delta: &Delta) -> AggV2 {
    let empty = AggV2::default();
    let base = base.unwrap_or(&empty);
    AggV2 {
        total: u32::try_from((i64::from(base.total) + delta.total).max(0)).unwrap_or(u32::MAX),
        counts: [0, 1, 2].map(|k| merge_sorted(&base.counts[k], &delta.counts[k])),
        hours: merge_sorted(&base.hours, &delta.hours),
    }
}

impl Delta {
    /// Adds (`delta` = 1) or removes (-1) one listen with `credits`.
    pub fn add(&mut self, credits: Credited<'_>, delta: i32, hours: Option<(u16, u8)>) {
        self.total += i64::from(delta);
        for &a in credits.artists {
            bump(&mut self.counts[Kind::Artist.index()], a, delta);
        }
        bump(&mut self.counts[Kind::Recording.index()], credits.recording, delta);
        if let Some(r) = credits.release {
            bump(&mut self.counts[Kind::Release.index()], r, delta);
        }
        if let Some(slot) = hours {
            bump(&mut self.hours, slot, delta);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_item(n: i32) -> Delta {
        let mut d = Delta { total: i64::from(n), ..Delta::default() };
        d.counts[1].insert(7, n);
        d.hours.insert((3, 4), n);
        d
    }

    /// Changes past `i32`'s range saturate instead of wrapping (or panicking in a debug
    /// build): a wrapped change would turn a large gain into a loss in the stored count.
    #[test]
    fn changes_saturate_at_the_bounds_of_i32() {
        let mut d = one_item(i32::MAX - 1);
        d.absorb(&one_item(5));
        assert_eq!(d.count(1, 7), i64::from(i32::MAX));
        assert_eq!(d.hours[&(3, 4)], i32::MAX);
        assert_eq!(d.total, i64::from(i32::MAX) + 4, "the bucket's total is an i64");
        let mut d = one_item(i32::MIN + 1);
        d.absorb(&one_item(-5));
        assert_eq!(d.count(1, 7), i64::from(i32::MIN));
        assert_eq!((narrow(i64::MAX), narrow(i64::MIN), narrow(-3)), (i32::MAX, i32::MIN, -3));
        // A listen added to a change at the bound: every count it touches saturates.
        let mut d = one_item(i32::MAX);
        d.counts[0].insert(2, i32::MAX);
        d.counts[2].insert(9, i32::MAX);
        d.add(Credited { artists: &[2], recording: 7, release: Some(9) }, 1, Some((3, 4)));
        assert_eq!(
            (d.count(0, 2), d.count(1, 7), d.count(2, 9)),
            (i64::from(i32::MAX), i64::from(i32::MAX), i64::from(i32::MAX))
        );
        assert_eq!(d.hours[&(3, 4)], i32::MAX);
    }

    /// Merged into a stored bucket, a change clamps the count at 0 and `u32::MAX`, and
    /// an item whose count reaches 0 leaves the bucket.
    #[test]
    fn a_merged_change_is_clamped_to_the_stored_range() {
        let base = AggV2 {
            total: 10,
            counts: [vec![], vec![(5, 3), (7, u32::MAX - 1), (9, 4)], vec![]],
            hours: vec![((3, 4), 2)],
        };
        let mut d = one_item(i32::MAX);
        d.counts[1].insert(5, -3);
        d.counts[1].insert(9, -100);
        d.hours.insert((3, 4), -2);
        let m = merged(Some(&base), &d);
        assert_eq!(m.counts[1], vec![(7, u32::MAX)]);
        assert!(m.hours.is_empty());
    }
}
