//! Charts: ranking items by listen counts summed over buckets.
//!
//! A bucket stores, per kind of item, a list of `(item id, count)` sorted by id. A
//! chart for a range sums the buckets its plan names into a map by item id (`Summer`:
//! a dense array indexed by id was faster for one user on a small node, but cost the
//! node's number of items on every request), then selects the top N. Pure.

use serde::{Deserialize, Serialize};

/// What a chart ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    Artist,
    /// A track as charts see it: its main artist and its title without guests.
    Recording,
    /// An album: its title and main artist.
    Release,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Artist, Kind::Recording, Kind::Release];

    pub fn index(self) -> usize {
        match self {
            Kind::Artist => 0,
            Kind::Recording => 1,
            Kind::Release => 2,
        }
    }
}

/// Adds `delta` to `id`'s count in a sorted `(id, count)` list, dropping zero counts.
pub fn bump<K: Ord + Copy>(counts: &mut Vec<(K, u32)>, id: K, delta: i64) {
    match counts.binary_search_by_key(&id, |(i, _)| *i) {
        Ok(pos) => {
            let n = i64::from(counts[pos].1) + delta;
            if n <= 0 {
                counts.remove(pos);
            } else {
                counts[pos].1 = u32::try_from(n).unwrap_or(u32::MAX);
            }
        }
        Err(pos) => {
            if delta > 0 {
                counts.insert(pos, (id, u32::try_from(delta).unwrap_or(u32::MAX)));
            }
        }
    }
}

/// Accumulates counts from buckets and partial listens. A map, not a vector indexed by
/// item id: summing one user's buckets must cost what that user listened to, not the
/// node's number of items (a dense vector of a 10,000-member node's 1.8M recordings
/// was 14 MB allocated, zeroed and freed for every chart request).
#[derive(Default)]
pub struct Summer {
    counts: rustc_hash::FxHashMap<u32, u64>,
}

impl Summer {
    pub fn new() -> Summer {
        Summer::default()
    }

    pub fn add(&mut self, id: u32, n: u64) {
        let c = self.counts.entry(id).or_insert(0);
        *c = c.saturating_add(n);
    }

    pub fn add_all(&mut self, counts: &[(u32, u32)]) {
        self.counts.reserve(counts.len());
        for &(id, n) in counts {
            self.add(id, u64::from(n));
        }
    }

    pub fn count(&self, id: u32) -> u64 {
        self.counts.get(&id).copied().unwrap_or(0)
    }

    /// Number of distinct items with a count.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    fn pairs(&self) -> Vec<(u32, u64)> {
        self.counts.iter().map(|(&id, &n)| (id, n)).collect()
    }

    /// The `n` items with the highest counts, highest first; ties by lower id (first
    /// seen on the node).
    pub fn top(&self, n: usize) -> Vec<(u32, u64)> {
        let mut items = self.pairs();
        let order = |a: &(u32, u64), b: &(u32, u64)| b.1.cmp(&a.1).then(a.0.cmp(&b.0));
        if n < items.len() {
            items.select_nth_unstable_by(n, order);
            items.truncate(n);
        }
        items.sort_unstable_by(order);
        items
    }

    /// The top `n` plus every item tied with the `n`-th, however many, so the caller
    /// breaks ties by name: which items make a chart must not depend on item ids (they
    /// count items in the order the node first saw them, which is other users' doing).
    pub fn top_with_ties(&self, n: usize) -> Vec<(u32, u64)> {
        if n == 0 {
            return Vec::new();
        }
        top_with_ties_of(self.pairs(), n)
    }

    /// Every item with its count, by id.
    pub fn all(&self) -> Vec<(u32, u64)> {
        let mut items = self.pairs();
        items.sort_unstable_by_key(|&(id, _)| id);
        items
    }
}

/// The top `n` of `(item, count)` pairs plus every item tied with the `n`-th, highest
/// first (`Summer::top_with_ties`).
pub fn top_with_ties_of(mut items: Vec<(u32, u64)>, n: usize) -> Vec<(u32, u64)> {
    if n == 0 {
        return Vec::new();
    }
    if n < items.len() {
        let (_, &mut (_, boundary), _) = items.select_nth_unstable_by(n - 1, |a, b| b.1.cmp(&a.1));
        items.retain(|&(_, c)| c >= boundary);
    }
    items.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    items
}

/// The rows of `top` (highest count first) that rows `offset..end` of its chart depend
/// on: ties are broken by name, so a page needs every row tied with one of its rows
/// named, and no other (a row with another count keeps its place whatever its name).
pub fn tied_span(top: &[(u32, u64)], offset: usize, end: usize) -> std::ops::Range<usize> {
    let end = end.min(top.len());
    if offset >= end {
        return top.len()..top.len();
    }
    let (first, last) = (top[offset].1, top[end - 1].1);
    top.partition_point(|r| r.1 > first)..top.partition_point(|r| r.1 >= last)
}

/// How many rows of `top` (a chart's first `end` rows with every row tied with the
/// last: highest count first) a chart lists: all of them, unless the tie holding row
/// `end` is more than `tie_limit` rows long. Ranking such a tie (by name) names every
/// item in it, tens of thousands in a node's one-listen tail, for any request that
/// reaches it; the chart then ends before the tie. The tie's own length decides, not
/// the page: every page that reaches it agrees (a tie longer than the chart's cached
/// head is its last, so no page short of a whole listing ends past it).
pub fn ranked_len(top: &[(u32, u64)], end: usize, tie_limit: usize) -> usize {
    match (top.len() > end, top.last()) {
        (true, Some(&(_, last))) => {
            let start = top.partition_point(|r| r.1 > last);
            if top.len() - start > tie_limit { start } else { top.len() }
        }
        _ => top.len(),
    }
}

#[cfg(test)]
mod tests {
    /// `(row, count)` pairs of a chart with these counts, highest first.
    fn ranked(counts: &[u64]) -> Vec<(u32, u64)> {
        counts.iter().enumerate().map(|(i, &c)| (i as u32, c)).collect()
    }

    #[test]
    fn a_tie_running_far_past_a_charts_end_is_left_off() {
        let top = ranked(&[9, 7, 7, 3, 3, 3, 3, 3]);
        // The tie of 3s holds rows 4 to 8: five rows long.
        assert_eq!(super::ranked_len(&top, 4, 5), 8);
        assert_eq!(super::ranked_len(&top, 4, 4), 3, "the chart ends before the tie");
        assert_eq!(super::ranked_len(&top, 7, 4), 3, "whichever row of it the page ends on");
        assert_eq!(super::ranked_len(&top[..3], 3, 0), 3, "no tie past the end");
        assert_eq!(super::ranked_len(&top[..3], 2, 1), 1, "the tie of 7s, two rows long");
        assert_eq!(super::ranked_len(&top[..3], 2, 2), 3);
        assert_eq!(super::ranked_len(&[], 5, 0), 0);
    }

    #[test]
    fn a_pages_span_is_its_rows_and_their_ties() {
        let top = ranked(&[9, 7, 7, 7, 5, 4, 4, 1]);
        assert_eq!(super::tied_span(&top, 0, 1), 0..1);
        assert_eq!(super::tied_span(&top, 0, 2), 0..4, "the tie at the page's end");
        assert_eq!(super::tied_span(&top, 3, 5), 1..5, "the tie at its start");
        assert_eq!(super::tied_span(&top, 5, 6), 5..7);
        assert_eq!(super::tied_span(&top, 4, 100), 4..8, "past the end");
        assert_eq!(super::tied_span(&top, 8, 10), 8..8);
        assert_eq!(super::tied_span(&top, 3, 3), 8..8, "an empty page");
    }

    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn bump_keeps_a_sorted_map_of_positive_counts(ops in proptest::collection::vec((0u32..20, -3i64..4), 0..200)) {
            let mut counts = Vec::new();
            let mut model = std::collections::BTreeMap::<u32, i64>::new();
            for (id, delta) in ops {
                bump(&mut counts, id, delta);
                let e = model.entry(id).or_insert(0);
                *e = (*e + delta).max(0);
            }
            let want: Vec<(u32, u32)> = model.into_iter().filter(|(_, n)| *n > 0).map(|(i, n)| (i, n as u32)).collect();
            prop_assert_eq!(counts, want);
        }

        #[test]
        fn top_is_the_best_n(items in proptest::collection::vec((0u32..500, 1u32..50), 0..300), n in 0usize..40) {
            let mut s = Summer::new();
            for (id, c) in &items { s.add(*id, u64::from(*c)); }
            let mut all = s.all();
            all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            all.truncate(n);
            prop_assert_eq!(s.top(n), all);
        }

        #[test]
        fn top_with_ties_keeps_every_item_tied_with_the_last(items in proptest::collection::vec((0u32..500, 1u32..5), 0..300), n in 0usize..40) {
            let mut s = Summer::new();
            for (id, c) in &items { s.add(*id, u64::from(*c)); }
            let got = s.top_with_ties(n);
            let top = s.top(n);
            let boundary = top.last().map(|t| t.1);
            let want: Vec<(u32, u64)> = match boundary {
                Some(b) => { let mut all = s.all(); all.retain(|x| x.1 >= b); all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0))); all }
                None => Vec::new(),
            };
            prop_assert_eq!(got, want);
        }
    }
}
