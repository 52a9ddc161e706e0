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
    while let Some(((k, n), took_base, took_change)) = merge_step(base.get(i).copied(), changes.get(j).copied()) {
        i += usize::from(took_base);
        j += usize::from(took_change);
        if n > 0 {
            out.push((k, n));
        }
    }
    out
}

/// One step of merging a sorted list's next entry (`base`) with the next sorted change:
/// the (key, count) it gives (a count at 0 or below is dropped by the caller), and
/// whether it took the entry and the change. None when both are used up. Shared by
/// `merge_sorted` and `merged_encoded`, which must merge alike.
fn merge_step<K: Ord + Copy>(base: Option<(K, u32)>, change: Option<(K, i64)>) -> Option<((K, u32), bool, bool)> {
    let clamp = |n: i64| u32::try_from(n.max(0)).unwrap_or(u32::MAX);
    Some(match (base, change) {
        (Some((bk, bn)), Some((ck, cn))) if bk == ck => ((bk, clamp(i64::from(bn) + cn)), true, true),
        (Some((bk, bn)), Some((ck, _))) if bk < ck => ((bk, bn), true, false),
        (Some((bk, bn)), None) => ((bk, bn), true, false),
        (_, Some((ck, cn))) => ((ck, clamp(cn)), false, true),
        (None, None) => return None,
    })
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

/// `encode(&merged(Some(&decode(stored)), delta))` and the merged total, straight from
/// `stored`: the bytes of a version 2 `AggV2` (`values`: a version byte, then postcard:
/// the total, three lists of `(id gap, count)` and the hour slots, every integer a
/// LEB128 varint) with no hour slots, as node chunks are, merged by `merge_sorted`'s
/// rule while read, with no list decoded or allocated but the sorted changes. A store of
/// node statistics rewrites most of the node's chunks, and decoding each into lists,
/// merging those into new lists and encoding them was about half of its time.
/// None for any other bytes (another version, hour slots, a varint postcard would not
/// have written, trailing bytes): the caller decodes them as before, which also names
/// what is wrong with a damaged value.
pub(crate) fn merged_encoded(stored: &[u8], delta: &Delta) -> Option<(u32, Vec<u8>)> {
    let (&version, body) = stored.split_first()?;
    if version != <AggV2 as crate::store::codec::Versioned>::VERSION || !delta.hours.is_empty() {
        return None;
    }
    let mut at = 0usize;
    let base_total = read_u32(body, &mut at)?;
    let total = u32::try_from((i64::from(base_total) + delta.total).max(0)).unwrap_or(u32::MAX);
    // Room for everything up front: an entry takes at most 5 + 5 bytes, a list's
    // length 5. Grown as it filled, the output and the list were a third of a
    // node-store pass's merging (reallocations; 2026-12-06, thirteenth session).
    let added: usize = delta.counts.iter().map(FastMap::len).sum();
    let room = stored.len().saturating_add(added.saturating_mul(10)).saturating_add(32);
    let mut out = Vec::with_capacity(room);
    out.push(version);
    write_varint(&mut out, u64::from(total));
    let mut list = Vec::with_capacity(room);
    let mut changes: Vec<(u32, i64)> = Vec::with_capacity(delta.counts.iter().map(FastMap::len).max().unwrap_or(0));
    for kind in &delta.counts {
        // Postcard writes a length as a `usize` varint; one past `u32` could not fit.
        let n = u64::from(read_u32(body, &mut at)?);
        // Each entry takes at least two bytes: a length past what is left is damage.
        if n > (body.len().saturating_sub(at) / 2) as u64 {
            return None;
        }
        changes.clear();
        changes.extend(kind.iter().filter(|(_, d)| **d != 0).map(|(k, d)| (*k, i64::from(*d))));
        changes.sort_unstable_by_key(|c| c.0);
        list.clear();
        let (mut written, mut prev_out, mut prev_in, mut left, mut j) = (0u64, 0u32, 0u32, n, 0usize);
        let mut base: Option<(u32, u32)> = None;
        loop {
            if base.is_none() && left > 0 {
                prev_in = prev_in.wrapping_add(read_u32(body, &mut at)?);
                base = Some((prev_in, read_u32(body, &mut at)?));
                left -= 1;
            }
            let Some(((k, count), took_base, took_change)) = merge_step(base, changes.get(j).copied()) else { break };
            if took_base {
                base = None;
            }
            j += usize::from(took_change);
            if count > 0 {
                write_varint(&mut list, u64::from(k.wrapping_sub(prev_out)));
                write_varint(&mut list, u64::from(count));
                prev_out = k;
                written += 1;
            }
        }
        write_varint(&mut out, written);
        out.extend_from_slice(&list);
    }
    // The hour slots: none stored, none added.
    if read_u32(body, &mut at)? != 0 || at != body.len() {
        return None;
    }
    write_varint(&mut out, 0);
    Some((total, out))
}

/// A LEB128 varint of at most `max` (≤ 9) bytes at `at`, as postcard writes them (no byte of
/// zeroes after the first: postcard writes the shortest form).
fn read_varint(bytes: &[u8], at: &mut usize, max: usize) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..max {
        let b = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return (i == 0 || b != 0).then_some(value);
        }
    }
    None
}

fn read_u32(bytes: &[u8], at: &mut usize) -> Option<u32> {
    u32::try_from(read_varint(bytes, at, 5)?).ok()
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7F) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
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

    fn agg() -> impl proptest::strategy::Strategy<Value = AggV2> {
        use proptest::prelude::*;
        // Small ids so that changes meet stored items; some lists unsorted, some
        // counts 0 (what `merge_sorted` drops), some near `u32::MAX`.
        let list = proptest::collection::vec((0u32..64, prop_oneof![0u32..5, Just(u32::MAX - 1), any::<u32>()]), 0..20);
        (any::<u32>(), [list.clone(), list.clone(), list], any::<bool>()).prop_map(|(total, mut counts, sort)| {
            if sort {
                for l in &mut counts {
                    l.sort_unstable();
                    l.dedup_by_key(|e| e.0);
                }
            }
            AggV2 { total, counts, hours: vec![] }
        })
    }

    fn change() -> impl proptest::strategy::Strategy<Value = Delta> {
        use proptest::prelude::*;
        let map =
            proptest::collection::hash_map(0u32..80, prop_oneof![-3i32..4, Just(i32::MIN), Just(i32::MAX)], 0..20);
        (any::<i32>(), [map.clone(), map.clone(), map]).prop_map(|(total, counts)| Delta {
            total: i64::from(total),
            counts: counts.map(|m| m.into_iter().collect()),
            hours: FastMap::default(),
        })
    }

    proptest::proptest! {
        /// Merged from its stored bytes, a node chunk is exactly what decoding,
        /// merging and encoding it gives, whatever the lists hold.
        #[test]
        fn a_chunk_merged_from_its_bytes_is_the_merge_encoded(base in agg(), d in change()) {
            let want = merged(Some(&base), &d);
            let got = merged_encoded(&crate::store::codec::encode(&base), &d);
            proptest::prop_assert_eq!(got, Some((want.total, crate::store::codec::encode(&want))));
        }

        /// Any bytes: merged only when they decode, and then as decoded; else left to
        /// the decoder (None).
        #[test]
        fn bytes_merged_only_as_they_decode(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40), d in change()) {
            let mut bytes = bytes;
            if let Some(b) = bytes.first_mut() {
                *b = 2;
            }
            if let Some((total, out)) = merged_encoded(&bytes, &d) {
                let base: AggV2 = crate::store::codec::decode("test", b"k", &bytes).expect("merged bytes decode");
                let want = merged(Some(&base), &d);
                proptest::prop_assert_eq!((total, out), (want.total, crate::store::codec::encode(&want)));
            }
        }
    }

    /// Hour slots, another version, truncated or trailing bytes: left to the decoder.
    #[test]
    fn other_bytes_are_left_to_the_decoder() {
        let base = AggV2 { total: 3, counts: [vec![(1, 1)], vec![(2, 1)], vec![(3, 1)]], hours: vec![] };
        let bytes = crate::store::codec::encode(&base);
        let d = one_item(1);
        assert_eq!(merged_encoded(&bytes, &d), None, "a change of hour slots");
        let mut d = Delta::default();
        d.counts[0].insert(1, 1);
        assert!(merged_encoded(&bytes, &d).is_some());
        let with_hours = AggV2 { hours: vec![((1, 2), 3)], ..base.clone() };
        assert_eq!(merged_encoded(&crate::store::codec::encode(&with_hours), &d), None, "stored hour slots");
        assert_eq!(merged_encoded(&bytes[..bytes.len() - 1], &d), None, "truncated");
        assert_eq!(merged_encoded(&[bytes.as_slice(), &[0]].concat(), &d), None, "trailing bytes");
        let mut v1 = bytes.clone();
        v1[0] = 1;
        assert_eq!(merged_encoded(&v1, &d), None, "version 1");
        // A varint with a needless zero byte (postcard writes the shortest form).
        let long = [&[2u8, 0x83, 0x00][..], &bytes[2..]].concat();
        assert_eq!(merged_encoded(&long, &d), None, "a long varint");
        assert_eq!(merged_encoded(&[], &d), None);
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
