//! A map from 128-bit digests to ids, for the writer's identity indexes (every track,
//! and every artist, recording and release by its identity).
//!
//! Written here rather than taken from a crate because its layout is the point: at
//! 10,000 members the node has 1.9M tracks and 1.8M recordings, and a `HashMap<[u8; 16],
//! u32>` costs 21 bytes per bucket with up to half the buckets empty (1.9M tracks past
//! the 1.83M a table of 2^21 buckets holds took 4.2M buckets, 88 MiB). Here the entries
//! known at start, and those merged since, are one sorted vector (20 bytes each, no
//! spare room); the few added since the last merge are a small hash map. The digests
//! are blake3 outputs, uniform, so a key's place in the sorted vector is found from its
//! leading bits: a directory holds, for each value of them, where its digests start
//! (about four digests per value, 1 byte per entry). A lookup then touches the
//! directory and one short run of the vector, two cache misses; interpolation took three
//! or four, and a tenth of the writer's time in the 10,000-member import went to them
//! (`perf record --call-graph dwarf` on the writer thread, 2026-12-05).

use rustc_hash::FxHashMap;

/// Digest -> id.
#[derive(Default)]
pub(crate) struct HashIndex {
    /// Sorted by digest, each digest once.
    base: Vec<([u8; 16], u32)>,
    /// `dir[p]`: the place in `base` of the first digest whose leading `bits` bits are
    /// `p` or more (`dir.len()` = 2^`bits` + 1; empty while `base` is).
    dir: Vec<u32>,
    bits: u32,
    /// Added since the last merge into `base`.
    recent: FxHashMap<[u8; 16], u32>,
}

/// Digests per directory slot, about (`HashIndex::dir`).
const PER_SLOT: usize = 4;

/// `recent` is merged into `base` once it holds more than this, or an eighth of `base`.
const MERGE_AT: usize = 4_096;

impl HashIndex {
    /// An index of `entries`; where a digest is given twice, the later id wins (as
    /// inserting them one by one into a map would).
    pub fn from_entries(mut entries: Vec<([u8; 16], u32)>) -> HashIndex {
        // Reversed, a stable sort puts the later of equal digests first in its run, and
        // `dedup_by_key` keeps the first: in place, no second vector.
        entries.reverse();
        entries.sort_by_key(|e| e.0);
        entries.dedup_by_key(|e| e.0);
        entries.shrink_to_fit();
        let mut index = HashIndex { base: entries, ..HashIndex::default() };
        index.index_base();
        index
    }

    pub fn get(&self, digest: &[u8; 16]) -> Option<u32> {
        // `base` first: most lookups find a digest known before the last merge.
        match self.find(digest) {
            Some(i) => Some(self.base[i].1),
            None => self.recent.get(digest).copied(),
        }
    }

    pub fn contains_key(&self, digest: &[u8; 16]) -> bool {
        self.get(digest).is_some()
    }

    /// Sets the id of `digest` (a new one, or a known one's replaced).
    pub fn insert(&mut self, digest: [u8; 16], id: u32) {
        if let Some(i) = self.find(&digest) {
            self.base[i].1 = id;
            return;
        }
        self.recent.insert(digest, id);
        if self.recent.len() > MERGE_AT.max(self.base.len() / 8) {
            self.merge();
        }
    }

    pub fn clear(&mut self) {
        *self = HashIndex::default();
    }

    /// Moves `recent` into `base`, in place: `base` grows by the entries added and is
    /// merged from the back (a second vector would double the peak: 38 MiB more at 1.9M
    /// tracks).
    fn merge(&mut self) {
        let mut add: Vec<([u8; 16], u32)> = self.recent.drain().collect();
        add.sort_unstable_by_key(|e| e.0);
        let (n, m) = (self.base.len(), add.len());
        self.base.reserve_exact(m);
        self.base.resize(n + m, ([0; 16], 0));
        // No digest is in both (`insert` updates `base` in place). The largest of the two
        // tails goes to the end; once `add` is placed, `base[..i]` is where it was.
        let (mut i, mut j) = (n, m);
        while let Some(last) = j.checked_sub(1) {
            let k = i + j - 1;
            if i > 0 && self.base[i - 1].0 > add[last].0 {
                self.base[k] = self.base[i - 1];
                i -= 1;
            } else {
                self.base[k] = add[last];
                j = last;
            }
        }
        self.recent.shrink_to_fit();
        self.index_base();
    }

    /// Builds `dir` for `base` as it now is.
    fn index_base(&mut self) {
        // 2^bits slots for `PER_SLOT` digests each, at most 2^31 (`base` holds u32 ids).
        let slots = (self.base.len() / PER_SLOT).max(1).next_power_of_two().min(1 << 31);
        self.bits = slots.trailing_zeros();
        self.dir.clear();
        if self.base.is_empty() {
            self.dir.shrink_to_fit();
            return;
        }
        self.dir.reserve_exact(slots + 1);
        let mut i = 0usize;
        for p in 0..=slots {
            while i < self.base.len() && self.slot(&self.base[i].0) < p {
                i += 1;
            }
            self.dir.push(u32::try_from(i).unwrap_or(u32::MAX));
        }
    }

    /// The directory slot of `digest`: its leading `bits` bits.
    fn slot(&self, digest: &[u8; 16]) -> usize {
        let lead = u64::from_be_bytes([
            digest[0], digest[1], digest[2], digest[3], digest[4], digest[5], digest[6], digest[7],
        ]);
        // `bits` ≤ 31: the shift is in range, and a `u32` fits any `usize` here.
        (lead.checked_shr(64 - self.bits).unwrap_or(0)) as usize
    }

    /// The place of `digest` in `base`: a binary search of the run its directory slot
    /// names (a few digests for uniform keys; any keys end in O(log n)).
    fn find(&self, digest: &[u8; 16]) -> Option<usize> {
        let p = self.slot(digest);
        let (lo, hi) = match (self.dir.get(p), self.dir.get(p + 1)) {
            (Some(&lo), Some(&hi)) => (lo as usize, hi as usize),
            _ => return None,
        };
        let run = self.base.get(lo..hi)?;
        run.binary_search_by(|e| e.0.cmp(digest)).ok().map(|i| lo + i)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn digest(n: u64) -> [u8; 16] {
        let h = blake3::hash(&n.to_le_bytes());
        let mut d = [0; 16];
        d.copy_from_slice(&h.as_bytes()[..16]);
        d
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// The index answers as a `HashMap` given the same inserts, whatever the keys
        /// (uniform digests, or clustered and extreme ones interpolation guesses badly),
        /// across merges.
        #[test]
        fn it_answers_as_a_hash_map(
            start in proptest::collection::vec((0u64..3_000, any::<u32>()), 0..3_000),
            added in proptest::collection::vec((0u64..12_000, any::<u32>()), 0..12_000),
            clustered in any::<bool>(),
        ) {
            let key = |n: u64| if clustered {
                let mut d = [0u8; 16];
                d[15] = (n % 256) as u8;
                d[14] = (n / 256 % 256) as u8;
                if n.is_multiple_of(7) { d[0] = 0xFF; }
                d
            } else { digest(n) };
            let mut want: HashMap<[u8; 16], u32> = HashMap::new();
            let entries: Vec<([u8; 16], u32)> = start.iter().map(|&(n, id)| (key(n), id)).collect();
            for &(k, id) in &entries {
                want.insert(k, id);
            }
            let mut index = HashIndex::from_entries(entries);
            for (i, &(n, id)) in added.iter().enumerate() {
                index.insert(key(n), id);
                want.insert(key(n), id);
                if i % 997 == 0 {
                    for m in (0..12_500).step_by(13) {
                        prop_assert_eq!(index.get(&key(m)), want.get(&key(m)).copied(), "key {}", m);
                    }
                }
            }
            for m in 0..12_500 {
                prop_assert_eq!(index.get(&key(m)), want.get(&key(m)).copied(), "key {}", m);
            }
            prop_assert_eq!(index.get(&[0; 16]), want.get(&[0; 16]).copied());
            prop_assert_eq!(index.get(&[0xFF; 16]), want.get(&[0xFF; 16]).copied());
        }
    }

    #[test]
    fn an_empty_index_finds_nothing() {
        let mut index = HashIndex::default();
        assert_eq!(index.get(&digest(1)), None);
        index.insert(digest(1), 7);
        assert_eq!(index.get(&digest(1)), Some(7));
        index.clear();
        assert!(!index.contains_key(&digest(1)));
    }
}
