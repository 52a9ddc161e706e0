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
#[derive(Clone, Debug, Default)]
pub(crate) struct Delta {
    pub(super) total: i64,
    pub(super) counts: [FastMap<u32, i64>; 3],
    pub(super) hours: FastMap<(u16, u8), i64>,
}

impl Delta {
    /// Adds another change of the same bucket to this one.
    pub(crate) fn absorb(&mut self, other: &Delta) {
        self.total += other.total;
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            for (item, by) in theirs {
                *mine.entry(*item).or_default() += by;
            }
        }
        for (slot, by) in &other.hours {
            *self.hours.entry(*slot).or_default() += by;
        }
    }

    /// The (item, count) changes it holds.
    pub(crate) fn pairs(&self) -> usize {
        self.counts.iter().map(FastMap::len).sum::<usize>() + self.hours.len()
    }

    /// This change's count of item `item` of kind index `kind`.
    pub(crate) fn count(&self, kind: usize, item: u32) -> i64 {
        self.counts.get(kind).and_then(|c| c.get(&item)).copied().unwrap_or(0)
    }
}

pub(super) fn merge_sorted<K: Ord + Copy>(base: &[(K, u32)], delta: &FastMap<K, i64>) -> Vec<(K, u32)> {
    let mut changes: Vec<(K, i64)> = delta.iter().filter(|(_, d)| **d != 0).map(|(k, d)| (*k, *d)).collect();
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
    pub fn add(&mut self, credits: Credited<'_>, delta: i64, hours: Option<(u16, u8)>) {
        self.total += delta;
        for &a in credits.artists {
            *self.counts[Kind::Artist.index()].entry(a).or_default() += delta;
        }
        *self.counts[Kind::Recording.index()].entry(credits.recording).or_default() += delta;
        if let Some(r) = credits.release {
            *self.counts[Kind::Release.index()].entry(r).or_default() += delta;
        }
        if let Some(slot) = hours {
            *self.hours.entry(slot).or_default() += delta;
        }
    }
}
