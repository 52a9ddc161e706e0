//! The node's statistics: what the node chart shows, kept per bucket like a user's, so
//! that a node chart costs O(items) and not O(users).
//!
//! A node bucket sums, over the users the access policy counts exactly into node charts
//! (`policy::Purpose::NodeChart`: the public members), each user's own bucket of the
//! same name: ISO week, month, year (in that user's time zone, as their profile counts
//! them) and all time. It holds listens per item and *listeners* per item, the number of
//! those users with at least one listen of it in the bucket. Listeners are not additive
//! across buckets (a user who played an artist on Monday and Friday is one listener of
//! the week), so a week's listeners are derived from the user's seven days, and all
//! time from the user's years, at the moment a user's bucket changes: only what crosses
//! zero moves a listener.
//!
//! Node buckets live in `userid_bucket_counts` under keys starting with 0xFF, which no
//! account's id does (`FIRST_NODE_ID`), so they share the user buckets' memory copy,
//! persistence and crash recount; they are stored right after the transaction that
//! stores the user buckets they summarise, not in it (`Store::put_node_chunks` says
//! why). The writer stores them less often than user buckets
//! (`writer::NODE_PERSIST_EVERY`); until it does, while their chunks are written, and
//! while a rebuild runs, `meta` holds `NODE_STALE` and an open rebuilds them from the
//! user buckets: otherwise stored node buckets match the stored user buckets.
//! A key is `0xFF ‖ what u8 ‖ granularity u8 ‖ number (i32 + 2^31) ‖ chunk u16`: each
//! bucket is split into chunks of item ids (256 for all time, up to 32,768 for weeks:
//! `chunk_shift`), so a change rewrites only the few small chunks holding the items it
//! touched, never a whole all-time chart
//! (at 10,000 members a megabyte, every few seconds), and a chart reads its chunks in
//! one range scan, in item order.
//!
//! - what 0, listens: counts = listens per item;
//! - what 1, listeners: counts = users with listens of the item in the bucket;
//! - what 2, plain (all time only): counts = counted users who listened to the item at
//!   some time and show it under its stored name (no spelling of their own): an item
//!   is shown on the node chart under its stored name only if one of them exists, else
//!   in a counted user's spelling (the stored name may be the spelling of a member who
//!   is not public);
//! - what 3, totals (chunk 0): `total` = listens, `counts[0]` = `[(0, users with
//!   listens in the bucket)]`.
//!
//! A chunk's `total` is the sum of its counts (it is stored while positive).
//!
//! Every change goes through `deltas`: the writer's groups, the recount after a crash,
//! a sharing-level change, a time-zone recount, a deletion; `Store::rebuild_node_stats`
//! recomputes them from the user buckets and gives the same bytes (property-tested).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::delta::{bump, merged, merged_encoded, narrow};
use super::*;
use crate::store::codec::encode;
use crate::store::keys::{BUCKET_ALL, BUCKET_WEEK};

/// `meta` key present while the stored node buckets lag the stored user buckets (the
/// writer keeps node buckets in memory longer, `writer::NODE_PERSIST_EVERY`, and writes
/// their chunks after the transaction of the user buckets): an open then rebuilds them
/// (`Store::open`).
pub(crate) const NODE_STALE: &[u8] = b"node_stale";

/// (item, change) pairs `Store::rebuild_node_stats` holds before it merges them into
/// the stored chunks (about 14 bytes each in its maps since changes are `i32`).
const REBUILD_PAIRS: usize = 2_000_000;

/// Node chunks a pass of `Store::store_node_changes` merges and writes at once, in key
/// order (`sled::Tree::apply_sorted`, vendor/README.md): a leaf of sled's tree holds about
/// 8 to 16 of them (17 until the next lookup splits it), and written one by one each
/// chunk was a fragment compressed on its own, the whole page again every tenth; zstd
/// was two fifths of the pass's thread.
const PASS_BATCH: usize = 64;

/// Node chunks `Store::put_node_chunks` writes between two flushes (and
/// `Store::store_node_changes` between two givings back of freed memory).
const CHUNKS_PER_FLUSH: usize = 10_000;

/// The first user id a node bucket key would read as; accounts get lower ids.
pub(crate) const FIRST_NODE_ID: u32 = 0xFF00_0000;
const WHAT_LISTENS: u8 = 0;
const WHAT_LISTENERS: u8 = 1;
const WHAT_PLAIN: u8 = 2;
const WHAT_TOTALS: u8 = 3;
/// Item ids per chunk of a node bucket, as a power of two, by granularity. A chunk
/// should hold enough to be worth a sled value (each costs sled a few hundred bytes on
/// disk and a page-table entry in memory) and little enough that rewriting the chunks a
/// change touches stays cheap. Weeks and months hold few of the node's items (at 1,000
/// members a 256-id chunk of a week held 42 bytes on average, and week and month
/// chunks were 610k of the 647k values of `userid_bucket_counts`), all time most of
/// them. Schema 13's spans (1,024, 4,096 and 8,192 ids for years, months and weeks)
/// made chunks of about a kilobyte at 1,000 members, but at 10,000 members, whose
/// 1.8M recordings spread each week's few listens thin, week and month chunks held 280
/// and 450 bytes and were 320k of the node's 376k chunks; an import's store rewrites
/// most of them. Since schema 20 they span four times more ids (years twice).
fn chunk_shift(granularity: u8) -> u32 {
    match granularity {
        BUCKET_ALL => 8,
        BUCKET_YEAR => 11,
        BUCKET_MONTH => 14,
        // BUCKET_WEEK: node buckets have no other granularity.
        _ => 15,
    }
}

/// The key of one chunk of a node bucket.
fn node_key(what: u8, granularity: u8, number: i32, chunk: u16) -> [u8; 9] {
    let mut k = [0xFF, what, granularity, 0, 0, 0, 0, 0, 0];
    k[3..7].copy_from_slice(&((number as u32) ^ 0x8000_0000).to_be_bytes());
    k[7..].copy_from_slice(&chunk.to_be_bytes());
    k
}

/// The chunk an item's counts are in, in a bucket of `granularity` (the last one holds
/// every id past 2^16 chunks).
fn chunk_of(granularity: u8, item: u32) -> u16 {
    u16::try_from(item >> chunk_shift(granularity)).unwrap_or(u16::MAX)
}

/// Chunk `key` with `change` merged, its total and bytes: from its stored bytes
/// (`merged_encoded`); else (a memory copy's chunk `held`, an older version, damage)
/// decoded, merged and encoded. An error for stored bytes that do not decode.
fn merged_chunk(key: &[u8; 9], held: Option<&AggV2>, stored: Option<&[u8]>, change: &Delta) -> Result<(u32, Vec<u8>)> {
    if let (None, Some(v)) = (held, stored)
        && let Some(done) = merged_encoded(v, change)
    {
        return Ok(done);
    }
    let base = match (held, stored) {
        (None, Some(v)) => Some(decode::<AggV2>(schema::USERID_BUCKET_COUNTS, key, v)?),
        _ => None,
    };
    let agg = merged(held.or(base.as_ref()), change);
    Ok((agg.total, encode(&agg)))
}

/// The copies of a node bucket's chunks one reader took at once (`Store::node_copies`):
/// stored, in the memory copy (newer), and their pending changes.
struct Copies {
    stored: Vec<(sled::IVec, sled::IVec)>,
    in_memory: Vec<([u8; 9], Arc<AggV2>)>,
    changes: Vec<([u8; 9], Delta)>,
}

/// Each chunk of `copies` in key order, its newest copy with its pending change merged,
/// given to `f` one at a time (one decoded at a time); what `f` returns, in order.
fn merged_copies<T>(copies: Copies, mut f: impl FnMut([u8; 9], Arc<AggV2>) -> Result<Option<T>>) -> Result<Vec<T>> {
    enum Copy {
        Stored(sled::IVec),
        InMemory(Arc<AggV2>),
    }
    let mut chunks: BTreeMap<[u8; 9], (Option<Copy>, Option<Delta>)> = BTreeMap::new();
    for (k, v) in copies.stored {
        let key = <[u8; 9]>::try_from(k.as_ref())
            .map_err(|_| Error::corrupt(schema::USERID_BUCKET_COUNTS, &k, "not a bucket key"))?;
        chunks.entry(key).or_default().0 = Some(Copy::Stored(v));
    }
    for (k, a) in copies.in_memory {
        chunks.entry(k).or_default().0 = Some(Copy::InMemory(a));
    }
    for (k, d) in copies.changes {
        chunks.entry(k).or_default().1 = Some(d);
    }
    let mut out = Vec::new();
    for (k, (copy, change)) in chunks {
        let base = match copy {
            None => None,
            Some(Copy::InMemory(a)) => Some(a),
            Some(Copy::Stored(v)) => Some(Arc::new(decode::<AggV2>(schema::USERID_BUCKET_COUNTS, &k, &v)?)),
        };
        let agg = match change {
            Some(d) => Arc::new(merged(base.as_deref(), &d)),
            None => match base {
                Some(a) => a,
                None => continue,
            },
        };
        out.extend(f(k, agg)?);
    }
    Ok(out)
}

/// The counts of kind index `kind` in `copies` (a bucket's chunks, or one), in item
/// order: one chunk is decoded at a time and only `kind`'s counts kept. The all-time
/// bucket of a 10,000-member node holds 1.8M recordings, and assembling all three kinds
/// of every chunk at once took about 90 MB more at the peak of a cold all-time chart.
fn counts_of(copies: Copies, kind: usize) -> Result<Vec<(u32, u32)>> {
    let mut out = Vec::new();
    merged_copies(copies, |_, agg| {
        out.extend_from_slice(agg.counts.get(kind).map_or(&[][..], Vec::as_slice));
        Ok(None::<()>)
    })?;
    Ok(out)
}

/// Changes of node buckets not yet merged into them, by chunk key: each writer group's
/// and a sharing-level change's (the user's whole contribution: O(the user's buckets),
/// no read of the node's chunks). Readers of node buckets add them (`Store::bucket`,
/// `node_chunks`). Only the writer adds to them (on its thread, or on the one adding its
/// groups' changes: `writer::absorb`). A store of node buckets merges
/// them into the stored chunks a batch of chunks at a time, each batch written and
/// dropped from here under this lock (`Store::store_node_changes`).
pub(crate) type NodePending = Arc<std::sync::RwLock<PendingChanges>>;

/// The pending node changes by chunk key, and the (item, change) pairs they hold
/// (`Delta::pairs`), counted as they change: the writer bounds them by that count
/// (`NODE_HOT_MAX_PAIRS`), and a background pass takes changes the writer added while
/// it ran, so a count kept by the writer alone was off by those (it was corrected by a
/// walk over every pending chunk at the bound). Read as the map (`Deref`); changed only
/// through the methods below, which keep the count.
#[derive(Debug, Default)]
pub(crate) struct PendingChanges {
    map: BTreeMap<[u8; 9], Delta>,
    pairs: usize,
}

impl std::ops::Deref for PendingChanges {
    type Target = BTreeMap<[u8; 9], Delta>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl PendingChanges {
    /// The (item, change) pairs held: the sum of `Delta::pairs` over the chunks.
    pub(crate) fn pairs(&self) -> usize {
        self.pairs
    }

    /// Changes the change of chunk `key` (a new, empty one if none) with `f`; the pairs
    /// it gained.
    pub(crate) fn update(&mut self, key: [u8; 9], f: impl FnOnce(&mut Delta)) -> usize {
        let d = self.map.entry(key).or_default();
        let before = d.pairs();
        f(d);
        // Changes only add to a delta's maps (`bump`), so its pairs never fall; were one
        // to, the count would still follow it.
        let after = d.pairs();
        self.pairs = self.pairs.saturating_sub(before).saturating_add(after);
        after.saturating_sub(before)
    }

    /// Takes the change of chunk `key` out.
    pub(crate) fn take(&mut self, key: &[u8; 9]) -> Option<Delta> {
        let d = self.map.remove(key)?;
        self.pairs = self.pairs.saturating_sub(d.pairs());
        Some(d)
    }

    /// Puts the change of chunk `key` back (one `take` took, which could not be
    /// stored), replacing any.
    pub(crate) fn put(&mut self, key: [u8; 9], d: Delta) {
        self.pairs = self.pairs.saturating_add(d.pairs());
        if let Some(old) = self.map.insert(key, d) {
            self.pairs = self.pairs.saturating_sub(old.pairs());
        }
    }

    pub(crate) fn clear(&mut self) {
        self.map.clear();
        self.pairs = 0;
    }
}

/// A bucket as a write: stored while it counts anything, else removed.
pub(crate) type BucketWrite = (Vec<u8>, Option<Vec<u8>>);

pub(crate) fn bucket_write(key: &[u8; 9], agg: &AggV2) -> BucketWrite {
    (key.to_vec(), (agg.total > 0).then(|| encode(agg)))
}

/// Applies bucket writes inside a transaction.
pub(crate) fn write_buckets(
    tree: &sled::transaction::TransactionalTree,
    writes: &[BucketWrite],
) -> std::result::Result<(), sled::transaction::UnabortableTransactionError> {
    for (k, v) in writes {
        match v {
            Some(v) => tree.insert(k.as_slice(), v.as_slice())?,
            None => tree.remove(k.as_slice())?,
        };
    }
    Ok(())
}

/// Whether a bucket key is a node bucket's.
pub(crate) fn is_node_key(key: &[u8]) -> bool {
    key.first() == Some(&0xFF)
}

/// The day number of the Monday of the ISO week holding `day` (day 0, 1970-01-01, was
/// a Thursday).
pub(crate) fn monday(day: i32) -> i32 {
    day - (day + 3).rem_euclid(7)
}

/// One user bucket, before and after a change (`None`: absent).
pub(crate) type Change = (Option<Arc<AggV2>>, Option<Arc<AggV2>>);

/// `item`'s count in a sorted `(item, count)` list.
fn count_in(counts: &[(u32, u32)], item: u32) -> i64 {
    counts.binary_search_by_key(&item, |c| c.0).map_or(0, |i| i64::from(counts[i].1))
}

/// Items whose count differs between two sorted lists, pushed to `into` in order.
fn differing(before: &[(u32, u32)], after: &[(u32, u32)], into: &mut Vec<u32>) {
    let (mut i, mut j) = (0, 0);
    loop {
        match (before.get(i), after.get(j)) {
            (Some(b), Some(a)) if b.0 == a.0 => {
                if b.1 != a.1 {
                    into.push(b.0);
                }
                i += 1;
                j += 1;
            }
            (Some(b), Some(a)) if b.0 < a.0 => {
                into.push(b.0);
                i += 1;
            }
            (Some(b), None) => {
                into.push(b.0);
                i += 1;
            }
            (_, Some(a)) => {
                into.push(a.0);
                j += 1;
            }
            (None, None) => break,
        }
    }
}

/// Where `deltas` puts the node changes it derives.
pub(crate) trait NodeSink {
    /// Changes (item, by) of items of kind index `kind` in chunk `key`, in item order,
    /// each a change of the chunk's total too.
    fn items(&mut self, key: [u8; 9], kind: usize, changes: &[(u32, i64)]);
    /// A totals chunk's change: `listens` to its total, `listeners` to its users with
    /// listens (`counts[0]`'s one entry). Given for every unit, changed or not.
    fn totals(&mut self, key: [u8; 9], listens: i64, listeners: i64);
}

/// Changes gathered per chunk, for a store or a rebuild.
impl NodeSink for FastMap<[u8; 9], Delta> {
    fn items(&mut self, key: [u8; 9], kind: usize, changes: &[(u32, i64)]) {
        let e = self.entry(key).or_default();
        let Some(counts) = e.counts.get_mut(kind) else { return };
        // Reserved once per chunk: growing a map one item at a time rehashed it over
        // and over (a tenth of the writer's time at 10,000 members, when the writer
        // gathered its groups' changes here).
        counts.reserve(changes.len());
        for &(item, by) in changes {
            let by = narrow(by);
            e.total += i64::from(by);
            bump(counts, item, by);
        }
    }

    fn totals(&mut self, key: [u8; 9], listens: i64, listeners: i64) {
        let e = self.entry(key).or_default();
        e.total += listens;
        bump(&mut e.counts[0], 0, narrow(listeners));
    }
}

/// A writer group's node changes as a flat list, added to the pending changes
/// (`NodePending`) while the group is written, on a thread beside the writer's
/// (`absorb_into`; `writer::commit` says why that is safe). Gathering them in maps per
/// chunk first, then absorbing those, built and dropped a hash map per chunk and kind
/// each group, and hashed every change twice: at 10,000 members a third of the writer's
/// time went to node changes, a tenth of it in the allocator. The writer keeps one
/// list and reuses its room from group to group.
#[derive(Debug, Default)]
pub(crate) struct NodeChanges {
    entries: Vec<NodeEntry>,
}

/// One change of a node chunk: of an item's count of kind index `kind` (< 3, and of
/// the chunk's total), or of a totals chunk's listens (`TOTAL_LISTENS`) or listeners
/// (`TOTAL_LISTENERS`).
#[derive(Clone, Copy, Debug)]
struct NodeEntry {
    key: [u8; 9],
    kind: u8,
    item: u32,
    by: i64,
}

const TOTAL_LISTENS: u8 = 3;
const TOTAL_LISTENERS: u8 = 4;

impl NodeSink for NodeChanges {
    fn items(&mut self, key: [u8; 9], kind: usize, changes: &[(u32, i64)]) {
        let Ok(kind) = u8::try_from(kind) else { return };
        let entries = changes.iter().map(|&(item, by)| NodeEntry { key, kind, item, by: i64::from(narrow(by)) });
        self.entries.extend(entries);
    }

    fn totals(&mut self, key: [u8; 9], listens: i64, listeners: i64) {
        self.entries.push(NodeEntry { key, kind: TOTAL_LISTENS, item: 0, by: listens });
        self.entries.push(NodeEntry { key, kind: TOTAL_LISTENERS, item: 0, by: i64::from(narrow(listeners)) });
    }
}

impl NodeChanges {
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The chunks changed, sorted, each once.
    pub(crate) fn keys(&self) -> Vec<[u8; 9]> {
        // A chunk's changes come in runs: one key a run before sorting.
        let mut keys: Vec<[u8; 9]> = self.entries.chunk_by(|a, b| a.key == b.key).map(|run| run[0].key).collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Puts the changes in key order, before `absorb_into` (outside the locks it is
    /// called under): a group's changes name thousands of chunks a few items each (an
    /// all-time chunk spans 256 ids), and looking each run up in the pending changes
    /// (376k chunks at 10,000 members) in the order the users' buckets gave them was a
    /// fifth of the writer's time, mostly waiting on memory; sorted, each chunk is
    /// looked up once and the next lookup walks the tree nodes the last brought into
    /// cache.
    pub(crate) fn sort(&mut self) {
        // Every node key starts with 0xFF (`node_key`): the other eight bytes, read as
        // one big-endian number, order them as the bytes do.
        self.entries.sort_unstable_by_key(|e| {
            let [_, rest @ ..] = e.key;
            u64::from_be_bytes(rest)
        });
    }

    /// Adds every change to `pending` (`NodePending`'s map), as `FastMap::<_, Delta>`
    /// gathers them, but one change at a time: each saturates at `i32`'s bounds as it
    /// is added, where a group's were summed first (the same below those bounds,
    /// which no node reaches: `Delta`). Returns the (item, change) pairs `pending`
    /// gained. Sorted first (`sort`), each chunk's run is looked up once.
    pub(crate) fn absorb_into(&self, pending: &mut PendingChanges) -> usize {
        let mut gained = 0usize;
        for run in self.entries.chunk_by(|a, b| a.key == b.key) {
            gained += pending.update(run[0].key, |d| {
                for e in run {
                    let (kind, total) = match e.kind {
                        TOTAL_LISTENS => {
                            d.total += e.by;
                            continue;
                        }
                        TOTAL_LISTENERS => (0, false),
                        kind => (usize::from(kind), true),
                    };
                    let Some(counts) = d.counts.get_mut(kind) else { continue };
                    let by = narrow(e.by);
                    if total {
                        d.total += i64::from(by);
                    }
                    bump(counts, e.item, by);
                }
            });
        }
        gained
    }
}

/// What one node bucket gets from one user: the user's buckets making it up, before and
/// after (a week: its seven days; all time: every year; else the bucket itself), of
/// which `changed` are the ones that changed.
struct Unit<'a> {
    granularity: u8,
    number: i32,
    parts: Vec<Part<'a>>,
}

/// A user's bucket before and after a change.
type Part<'a> = (Option<&'a AggV2>, Option<&'a AggV2>);

/// The lists `Unit::add_to` fills for one unit (per kind: changes of listens, of
/// listeners, of members showing the stored name; and the items that differ), emptied
/// and filled again for the next: one set for all the units of a user's change, not
/// ten vectors per unit (the writer's allocations wait for an arena's lock it shares).
#[derive(Default)]
struct Scratch {
    listens: [Vec<(u32, i64)>; 3],
    listeners: [Vec<(u32, i64)>; 3],
    plains: [Vec<(u32, i64)>; 3],
    items: Vec<u32>,
}

impl Scratch {
    fn clear(&mut self) {
        for v in self.listens.iter_mut().chain(&mut self.listeners).chain(&mut self.plains) {
            v.clear();
        }
        self.items.clear();
    }
}

/// A writer group's spellings not stored yet: those it records (`key` -> spelling, none
/// for the stored name) and those it removes.
pub(crate) type PendingSpellings<'a> = (&'a BTreeMap<[u8; 9], Option<String>>, &'a BTreeSet<[u8; 9]>);

/// Reads a user's bucket that did not change.
pub(crate) type Current<'a> = dyn FnMut(&[u8; 9]) -> Result<Option<Arc<AggV2>>> + 'a;

/// Whether the user shows an item (kind, id) under its stored name, before the change
/// (`false`) or after it (`true`).
pub(crate) type Plain<'a> = dyn FnMut(Kind, u32, bool) -> Result<bool> + 'a;

impl Unit<'_> {
    /// One side (`after` or before) of the parts.
    fn side(&self, after: bool) -> impl Iterator<Item = &AggV2> {
        self.parts.iter().filter_map(move |p: &Part<'_>| if after { p.1 } else { p.0 })
    }

    fn add_to(
        &self,
        scratch: &mut Scratch,
        out: &mut impl NodeSink,
        plain: &mut Plain<'_>,
        respelled: &[(Kind, u32)],
    ) -> Result<()> {
        let total = |after: bool| -> i64 { self.side(after).map(|a| i64::from(a.total)).sum() };
        let (tb, ta) = (total(false), total(true));
        let listeners_total = i64::from(ta > 0) - i64::from(tb > 0);
        // Per kind, the changes in item order (`items` is sorted): put into `out` a chunk
        // at a time (`NodeSink::items`).
        scratch.clear();
        let Scratch { listens, listeners, plains, items } = scratch;
        for kind in [Kind::Artist, Kind::Recording, Kind::Release] {
            let k = kind.index();
            items.clear();
            for (b, a) in &self.parts {
                // An unchanged part is the same bucket on both sides: nothing differs.
                if let (Some(b), Some(a)) = (b, a)
                    && std::ptr::eq(*b, *a)
                {
                    continue;
                }
                let empty: &[(u32, u32)] = &[];
                differing(b.map_or(empty, |x| &x.counts[k]), a.map_or(empty, |x| &x.counts[k]), items);
            }
            if self.granularity == BUCKET_ALL {
                // A spelling recorded by this change may turn a listener who stays one
                // away from the stored name (an erasure and a new listen in one group).
                items.extend(respelled.iter().filter(|(rk, _)| *rk == kind).map(|(_, id)| *id));
            }
            // Several parts (a week's days, the years) and respellings name an item more
            // than once.
            items.sort_unstable();
            items.dedup();
            for &item in items.iter() {
                let sum = |after: bool| -> i64 { self.side(after).map(|x| count_in(&x.counts[k], item)).sum() };
                let (b, a) = (sum(false), sum(true));
                if a != b {
                    listens[k].push((item, a - b));
                }
                let moved = i64::from(a > 0) - i64::from(b > 0);
                if moved != 0 {
                    listeners[k].push((item, moved));
                }
                if self.granularity == BUCKET_ALL && (a > 0 || b > 0) {
                    // Counted before as the spelling then stood, after as it stands now.
                    let was = b > 0 && plain(kind, item, false)?;
                    let is = a > 0 && plain(kind, item, true)?;
                    if was != is {
                        plains[k].push((item, i64::from(is) - i64::from(was)));
                    }
                }
            }
        }
        let (g, n) = (self.granularity, self.number);
        let put = |out: &mut _, what: u8, changes: &[Vec<(u32, i64)>; 3]| {
            for (k, sorted) in changes.iter().enumerate() {
                for run in sorted.chunk_by(|a, b| chunk_of(g, a.0) == chunk_of(g, b.0)) {
                    let Some(&(first, _)) = run.first() else { continue };
                    NodeSink::items(out, node_key(what, g, n, chunk_of(g, first)), k, run);
                }
            }
        };
        out.totals(node_key(WHAT_TOTALS, g, n, 0), ta - tb, listeners_total);
        put(out, WHAT_LISTENS, listens);
        put(out, WHAT_LISTENERS, listeners);
        if g == BUCKET_ALL {
            put(out, WHAT_PLAIN, plains);
        }
        Ok(())
    }
}

/// Adds to `out` what a change of one user's buckets makes of the node buckets.
/// `changes` are every changed bucket of that one user; `current` reads one of their
/// buckets that did not change; `years` are the years the user has buckets for
/// (changed or not); `plain` says whether the user shows an item under its stored name;
/// `respelled` are items the change recorded the user's own spelling of. The caller
/// decides whether the user is counted at all.
pub(crate) fn deltas(
    changes: &BTreeMap<[u8; 9], Change>,
    current: &mut Current<'_>,
    years: &BTreeSet<i32>,
    plain: &mut Plain<'_>,
    respelled: &[(Kind, u32)],
    out: &mut impl NodeSink,
) -> Result<()> {
    let Some(first) = changes.keys().next() else { return Ok(()) };
    let (user, _, _) = keys::parse_bucket(schema::USERID_BUCKET_COUNTS, first)?;
    debug_assert!(user.0 < FIRST_NODE_ID);
    // Unchanged buckets a week or all time needs, read once.
    let mut read: HashMap<[u8; 9], Option<Arc<AggV2>>> = HashMap::new();
    let mut scratch = Scratch::default();
    let mut weeks: BTreeSet<i32> = BTreeSet::new();
    let mut any_year = false;
    for (key, (before, after)) in changes {
        let (_, g, n) = keys::parse_bucket(schema::USERID_BUCKET_COUNTS, key)?;
        match g {
            BUCKET_DAY => {
                weeks.insert(monday(n));
            }
            BUCKET_MONTH | BUCKET_YEAR => {
                any_year |= g == BUCKET_YEAR;
                Unit { granularity: g, number: n, parts: vec![(before.as_deref(), after.as_deref())] }.add_to(
                    &mut scratch,
                    out,
                    plain,
                    respelled,
                )?;
            }
            _ => {}
        }
    }
    let mut wanted: Vec<[u8; 9]> = Vec::new();
    for &w in &weeks {
        wanted.extend((w..w + 7).map(|d| keys::bucket(user, BUCKET_DAY, d)));
    }
    if any_year {
        wanted.extend(years.iter().map(|&y| keys::bucket(user, BUCKET_YEAR, y)));
    }
    for key in wanted {
        if !changes.contains_key(&key) && !read.contains_key(&key) {
            read.insert(key, current(&key)?);
        }
    }
    let part = |key: [u8; 9]| -> Part<'_> {
        match changes.get(&key) {
            Some((b, a)) => (b.as_deref(), a.as_deref()),
            None => {
                let now = read.get(&key).and_then(|x| x.as_deref());
                (now, now)
            }
        }
    };
    for &w in &weeks {
        let parts = (w..w + 7).map(|d| part(keys::bucket(user, BUCKET_DAY, d))).collect();
        Unit { granularity: BUCKET_WEEK, number: w, parts }.add_to(&mut scratch, out, plain, respelled)?;
    }
    if any_year {
        let mut all: BTreeSet<i32> = years.clone();
        for key in changes.keys() {
            if let (_, BUCKET_YEAR, y) = keys::parse_bucket(schema::USERID_BUCKET_COUNTS, key)? {
                all.insert(y);
            }
        }
        let parts = all.iter().map(|&y| part(keys::bucket(user, BUCKET_YEAR, y))).collect();
        Unit { granularity: BUCKET_ALL, number: 0, parts }.add_to(&mut scratch, out, plain, respelled)?;
    }
    Ok(())
}

impl Store {
    /// The years `user` has a year bucket for, stored or only in memory.
    pub(crate) fn user_years(&self, user: UserId) -> Result<BTreeSet<i32>> {
        let mut prefix = keys::user(user).to_vec();
        prefix.push(BUCKET_YEAR);
        let mut years = BTreeSet::new();
        for key in self.trees.userid_bucket_counts.scan_prefix(&prefix).keys() {
            years.insert(keys::parse_bucket(schema::USERID_BUCKET_COUNTS, &key?)?.2);
        }
        if let Ok(hot) = self.hot.read() {
            for key in hot.keys().filter(|k| k.starts_with(&prefix)) {
                years.insert(keys::parse_bucket(schema::USERID_BUCKET_COUNTS, key)?.2);
            }
        }
        Ok(years)
    }

    /// Every bucket of `user` as it stands (stored, or the newer copy in memory).
    pub(crate) fn user_buckets(&self, user: UserId) -> Result<BTreeMap<[u8; 9], Arc<AggV2>>> {
        let mut keys_of: BTreeSet<[u8; 9]> = BTreeSet::new();
        for key in self.trees.userid_bucket_counts.scan_prefix(keys::user(user)).keys() {
            let key = key?;
            keys_of.insert(
                <[u8; 9]>::try_from(key.as_ref())
                    .map_err(|_| Error::corrupt(schema::USERID_BUCKET_COUNTS, &key, "not a bucket key"))?,
            );
        }
        if let Ok(hot) = self.hot.read() {
            keys_of.extend(hot.keys().filter(|k| k[..4] == keys::user(user)));
        }
        let mut out = BTreeMap::new();
        for key in keys_of {
            if let Some(agg) = self.bucket(&key)?.filter(|a| a.total > 0) {
                out.insert(key, agg);
            }
        }
        Ok(out)
    }

    /// Whether `user` shows item `id` of `kind` under its stored name (no spelling of
    /// their own, or a recorded "the stored one"); `pending` are spellings not yet stored.
    pub(crate) fn shows_stored_name(
        &self,
        user: UserId,
        kind: Kind,
        id: u32,
        pending: Option<PendingSpellings<'_>>,
    ) -> Result<bool> {
        let key = keys::user_item(user, kind.index() as u8, id);
        if let Some((spelled, unspelled)) = pending {
            if let Some(p) = spelled.get(&key) {
                return Ok(p.is_none());
            }
            if unspelled.contains(&key) {
                return Ok(true);
            }
        }
        match self.trees.userid_item_spelling.get(key)? {
            None => Ok(true),
            Some(v) => Ok(decode::<SpellingV1>(schema::USERID_ITEM_SPELLING, &key, &v)?.name.is_none()),
        }
    }

    /// Whether `user` has any spelling stored (`userid_item_spelling`): where none is,
    /// `shows_stored_name` answers from the pending ones alone. The writer asks about
    /// every item a group changes in a user's all-time counts (a member's import: a
    /// thousand sled lookups, a twentieth of the writer's time at 10,000 members), and
    /// most users spell every item as the node stores it.
    pub(crate) fn has_spellings(&self, user: UserId) -> Result<bool> {
        Ok(self.trees.userid_item_spelling.scan_prefix(keys::user(user)).next().transpose()?.is_some())
    }

    /// Whether `user` is summed into node charts.
    pub(crate) fn counted_in_node(&self, user: UserId) -> Result<bool> {
        Ok(self
            .user(user)?
            .is_some_and(|u| crate::policy::counted_exactly(u.visibility, crate::policy::Purpose::NodeChart)))
    }

    /// What adding (`sign` = 1) or removing (-1) every bucket of `user` does to the node
    /// buckets: a sharing-level change into or out of the node chart, a deletion, a
    /// recount in another time zone.
    pub(crate) fn whole_user_deltas(
        &self,
        user: UserId,
        buckets: &BTreeMap<[u8; 9], Arc<AggV2>>,
        adding: bool,
        out: &mut FastMap<[u8; 9], Delta>,
    ) -> Result<()> {
        let changes: BTreeMap<[u8; 9], Change> = buckets
            .iter()
            .map(|(k, a)| (*k, if adding { (None, Some(a.clone())) } else { (Some(a.clone()), None) }))
            .collect();
        // Every bucket of the user is in `changes`: any other is empty.
        deltas(
            &changes,
            &mut |_| Ok(None),
            &BTreeSet::new(),
            &mut |kind, id, _| self.shows_stored_name(user, kind, id, None),
            &[],
            out,
        )?;
        Ok(())
    }

    /// Node buckets with `deltas` applied, as `(key, bucket)` ready to store.
    pub(crate) fn merged_node(&self, deltas: &FastMap<[u8; 9], Delta>) -> Result<Vec<([u8; 9], AggV2)>> {
        deltas.iter().map(|(k, d)| Ok((*k, merged(self.bucket(k)?.as_deref(), d)))).collect()
    }

    /// Stores every in-memory bucket with each of their users' stats marks at the log
    /// head (the users' in one transaction, the node's after it) and empties the
    /// memory copy. Only with no writer
    /// appending (the writer stores its own with `apply`; this serves the commands that
    /// change buckets with the node stopped, after a recount filled the memory copy).
    pub(crate) fn store_hot(&self) -> Result<()> {
        let (hot, node) = match (self.hot.read(), self.node_pending.read()) {
            (Ok(h), Ok(p)) => (
                h.iter().filter(|(k, _)| !is_node_key(k.as_slice())).map(|(k, v)| (*k, v.clone())).collect::<Vec<_>>(),
                !p.is_empty() || h.keys().any(|k| is_node_key(k.as_slice())),
            ),
            _ => return Err(Error::Invalid("statistics cache poisoned".into())),
        };
        if hot.is_empty() && !node {
            return Ok(());
        }
        // Stale for another reason (a crash, a rebuild under way): it stays so.
        let was_stale = self.trees.meta.contains_key(NODE_STALE)?;
        let mut users: BTreeSet<UserId> = BTreeSet::new();
        let mut buckets = sled::Batch::default();
        for (k, agg) in &hot {
            users.insert(keys::parse_bucket(schema::USERID_BUCKET_COUNTS, k)?.0);
            match agg.total > 0 {
                true => buckets.insert(k.to_vec(), encode(agg.as_ref())),
                false => buckets.remove(k.to_vec()),
            }
        }
        let mut marks = sled::Batch::default();
        for user in users {
            marks.insert(keys::user(user).to_vec(), self.log_head(user)?.n_entries.to_be_bytes().to_vec());
        }
        use sled::Transactional;
        (&self.trees.userid_bucket_counts, &self.trees.userid_statsmark, &self.trees.meta)
            .transaction(|(b, m, meta)| {
                b.apply_batch(&buckets)?;
                m.apply_batch(&marks)?;
                if node {
                    meta.insert(NODE_STALE, &[])?;
                }
                Ok::<(), sled::transaction::ConflictableTransactionError<Error>>(())
            })
            .map_err(crate::store::users::tx_error)?;
        self.flush()?;
        // Node chunks after the transaction, stale until written.
        if node {
            self.store_node_changes()?;
            if !was_stale {
                self.clear_node_stale()?;
            }
        }
        self.forget_hot(None);
        Ok(())
    }

    /// Writes node chunks (`None` removes one) one operation at a time as `ops` yields
    /// them (stopping at its first error, which it returns), flushing every
    /// `CHUNKS_PER_FLUSH`. Callers have set `NODE_STALE` durably before and clear it after:
    /// a crash in between leaves it set, and the next open rebuilds the node buckets.
    ///
    /// Not in one sled batch or transaction: sled copies the whole leaf for each write
    /// into it and frees the copies only when the batch ends (it holds one epoch guard
    /// throughout), so n writes into leaves of m entries kept about n·m entries alive.
    /// The schema-13 migration of the 1,000-member node peaked at 1.9 GB in batches of
    /// 10,000 (426 MB this way, with 8M pairs pending), and that of the 10,000-member
    /// node was killed past 24 GB in one batch (1.2 GB this way; 788 MB with 2M pairs;
    /// at 1,000 members 176 MB once the old chunks were removed as scanned).
    pub(crate) fn put_node_chunks<K: AsRef<[u8]>>(
        &self,
        ops: impl IntoIterator<Item = Result<(K, Option<Vec<u8>>)>>,
    ) -> Result<()> {
        let tree = &self.trees.userid_bucket_counts;
        for (i, op) in ops.into_iter().enumerate() {
            #[cfg(test)]
            if self.faults.node_chunk_fails_at.load(std::sync::atomic::Ordering::Relaxed) == i + 1 {
                return Err(Error::Db(sled::Error::Io(std::io::Error::other("injected: writing a node chunk"))));
            }
            match op? {
                (k, Some(v)) => tree.insert(k, v)?,
                (k, None) => tree.remove(k)?,
            };
            if i % CHUNKS_PER_FLUSH == CHUNKS_PER_FLUSH - 1 {
                self.flush()?;
            }
        }
        self.flush()
    }

    /// Recomputes every node bucket from the user buckets of the users counted in node
    /// charts (after a rebuild, a migration, or anything that rewrote spellings). Stores
    /// the in-memory buckets first (no writer may run).
    pub fn rebuild_node_stats(&self) -> Result<()> {
        self.store_hot()?;
        // Cut short (the batches below are several), the next open starts again.
        self.mark_node_stale()?;
        // The old chunks removed as the scan meets them (sled's iterator reads on from
        // the last key it returned, so removing behind it is safe), not collected first.
        let old = self.trees.userid_bucket_counts.scan_prefix([0xFF]).keys();
        self.put_node_chunks(old.map(|k| Ok((k?, None))))?;
        let mut pending: FastMap<[u8; 9], Delta> = FastMap::default();
        // Each pending chunk merged, encoded and written in key order, one at a time.
        let spill = |pending: &mut FastMap<[u8; 9], Delta>| -> Result<()> {
            let mut changes: Vec<(&[u8; 9], &Delta)> = pending.iter().collect();
            changes.sort_unstable_by_key(|(k, _)| **k);
            self.put_node_chunks(changes.into_iter().map(|(k, d)| {
                let agg = merged(self.bucket(k)?.as_deref(), d);
                Ok((k, (agg.total > 0).then(|| encode(&agg))))
            }))?;
            pending.clear();
            Ok(())
        };
        for user in self.users()? {
            if !crate::policy::counted_exactly(user.visibility, crate::policy::Purpose::NodeChart) {
                continue;
            }
            let buckets = self.user_buckets(user.id)?;
            self.whole_user_deltas(user.id, &buckets, true, &mut pending)?;
            // Bounded memory on a large node: fold what is pending into the store.
            if pending.values().map(Delta::pairs).sum::<usize>() > REBUILD_PAIRS {
                spill(&mut pending)?;
            }
        }
        spill(&mut pending)?;
        drop(pending);
        self.node_changed(None::<&[[u8; 9]]>);
        // A rebuild runs inside a serving node's open (a migration, a crash's stale
        // node statistics): what its maps freed would otherwise stay resident.
        crate::memory::give_back();
        self.clear_node_stale()
    }

    /// Adds changes of node buckets to the pending ones (the writer thread only), then
    /// tells the node cache.
    pub(crate) fn add_node_pending(&self, deltas: &FastMap<[u8; 9], Delta>) -> Result<()> {
        let mut pending = self.node_pending.write().map_err(|_| Error::Invalid("node changes poisoned".into()))?;
        for (k, d) in deltas {
            pending.update(*k, |p| p.absorb(d));
        }
        drop(pending);
        self.node_changed(Some(deltas.keys()));
        Ok(())
    }

    /// Whether a background pass of node changes is under way (from before its thread
    /// starts to its end: `node_pass_under_way`), taking pending changes as it goes.
    pub(crate) fn node_store_running(&self) -> bool {
        self.node_pass_under_way.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The (item, change) pairs the pending node changes hold (`PendingChanges::pairs`).
    pub(crate) fn node_pending_pairs(&self) -> usize {
        match self.node_pending.read() {
            Ok(pending) => pending.pairs(),
            // Poisoned: counted as full, so the writer stores (and meets the poison).
            Err(_) => usize::MAX,
        }
    }

    /// What the pending node changes hold, for the debug log: chunks, (item, change)
    /// pairs as counted and as walked (the same, unless the count is wrong), maps
    /// holding any, and the entries their tables have room for (the memory they take is
    /// about 9 bytes per entry of room, plus each map's and chunk's own).
    pub(crate) fn node_pending_census(&self) -> [usize; 5] {
        let Ok(pending) = self.node_pending.read() else { return [0; 5] };
        pending.values().fold([pending.len(), pending.pairs(), 0, 0, 0], |[chunks, counted, walked, maps, room], d| {
            let (m, r) =
                d.counts.iter().filter(|c| c.capacity() > 0).fold((0, 0), |(m, r), c| (m + 1, r + c.capacity()));
            [chunks, counted, walked + d.pairs(), maps + m, room + r]
        })
    }

    /// Stores the node's changes: every pending change (`node_pending`) and every node
    /// bucket the memory copy holds (a recount's) merged into its stored chunk,
    /// `PASS_BATCH` chunks at a time in key order, each batch written (`apply_sorted`:
    /// a leaf of sled's tree as one page) and dropped from memory under the pending
    /// changes' write lock (and the memory copy's, before it, when that holds one of
    /// the chunks), which every reader of node buckets takes to read, so a reader sees a
    /// chunk's change either pending over the old chunk or in the new one, never
    /// neither nor both.
    /// Flushed every `CHUNKS_PER_FLUSH` and at the end; the memory freed meanwhile (the
    /// changes written, sled's page versions it replaced) is given back to the system
    /// then too (`memory::give_back`: with glibc the whole process's free memory, with
    /// mimalloc only this thread's heap), not only after the pass (so a store of 10,000
    /// chunks or more trims, whatever `GIVE_BACK_AFTER_PAIRS` says of its pairs): during
    /// an import's passes the writer goes on allocating, and the freed memory, kept until
    /// the pass ended, was a 40–50 MiB rise of the process's memory in each pass (the
    /// import's peak 440 MiB at 10,000 members; 426–427 so). By the writer thread, its
    /// background pass, or with none running; one pass at a time (`Store::node_stores`).
    /// The writer may add changes meanwhile: one added before its chunk is written is
    /// taken with it, later ones (and chunks new since the pass began) stay pending for
    /// the next store. Callers have set `NODE_STALE` durably before (`put_node_chunks`).
    ///
    /// One chunk at a time, not all merged first: the 10,000-member node of `bench
    /// community` has 376k node chunks, an import's store rewrites most of them, and
    /// holding them all decoded, then encoded, with a copy of the pending changes, took
    /// the importing process past 1.9 GB (1.2 GB this way), and a third longer.
    ///
    /// On an error the chunks of the batch not written (`apply_sorted` says how many
    /// were, an error sled reports once a page is in place included) keep their changes
    /// in memory (readers still see them), and so do those not reached.
    pub(crate) fn store_node_changes(&self) -> Result<()> {
        let _one_at_a_time = self.node_stores.lock().map_err(|_| Error::Invalid("node store poisoned".into()))?;
        let keys: Vec<[u8; 9]> = {
            let hot = self.hot.read().map_err(|_| Error::Invalid("statistics cache poisoned".into()))?;
            let pending = self.node_pending.read().map_err(|_| Error::Invalid("node changes poisoned".into()))?;
            let held = hot.keys().filter(|k| is_node_key(k.as_slice())).copied();
            let mut keys: Vec<[u8; 9]> = pending.keys().copied().chain(held).collect();
            keys.sort_unstable();
            keys.dedup();
            keys
        };
        let tree = &self.trees.userid_bucket_counts;
        let poisoned = || Error::Invalid("node changes poisoned".into());
        for (b, batch) in keys.chunks(PASS_BATCH).enumerate() {
            // Read outside the locks (only this pass writes node chunks), unless the
            // memory copy holds a newer one (after a recount).
            let held: Vec<bool> = {
                let hot = self.hot.read().map_err(|_| poisoned())?;
                batch.iter().map(|k| hot.contains_key(k)).collect()
            };
            let stored = batch
                .iter()
                .zip(&held)
                .map(|(k, held)| match held {
                    true => Ok(None),
                    false => tree.get(k),
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            // The memory copy's lock only for a batch with a chunk it holds (a recount's
            // at open, until the first store after it): it is the lock of every user
            // bucket the writer reads, and a node reader also takes the pending changes'
            // lock. Taken for every chunk, 64 at a time, it made a background pass of
            // the 10,000-member import hold the writer (imports of 166 and 174 s against
            // 149–154 one chunk at a time; `bench community`).
            let mut hot = match held.iter().any(|h| *h) {
                true => Some(self.hot.write().map_err(|_| poisoned())?),
                false => None,
            };
            let mut pending = self.node_pending.write().map_err(|_| poisoned())?;
            // What the batch took, put back for the chunks not written on an error.
            let mut taken: Vec<([u8; 9], Option<Arc<AggV2>>, Delta)> = Vec::with_capacity(batch.len());
            let mut ops: Vec<(sled::IVec, Option<sled::IVec>)> = Vec::with_capacity(batch.len());
            let mut failed = None;
            for ((k, held), stored) in batch.iter().zip(&held).zip(&stored) {
                let held = match held {
                    true => hot.as_mut().and_then(|hot| hot.remove(k)),
                    false => None,
                };
                let change = pending.take(k).unwrap_or_default();
                // A chunk that does not decode keeps its change pending.
                let chunk = merged_chunk(k, held.as_deref(), stored.as_deref(), &change);
                taken.push((*k, held, change));
                match chunk {
                    Ok((total, bytes)) => {
                        ops.push((sled::IVec::from(&k[..]), (total > 0).then(|| sled::IVec::from(bytes))))
                    }
                    Err(e) => {
                        failed = Some((ops.len(), e));
                        break;
                    }
                }
            }
            #[cfg(test)]
            let fails_at = self.faults.node_chunk_fails_at.load(std::sync::atomic::Ordering::Relaxed);
            #[cfg(not(test))]
            let fails_at = 0;
            // The injected failure of the `fails_at`th chunk of the pass: those before it
            // written, as a real one would leave them.
            let first = b * PASS_BATCH;
            let injected = (fails_at > first && fails_at <= first + ops.len()).then(|| fails_at - 1 - first);
            let mut applied = 0;
            let written = match injected {
                Some(at) => tree
                    .apply_sorted(&ops[..at], &mut applied)
                    .and_then(|_| Err(sled::Error::Io(std::io::Error::other("injected: writing a node chunk")))),
                None => tree.apply_sorted(&ops, &mut applied).map(drop),
            };
            let failed = match (written, failed) {
                (Err(e), _) => Some((applied, e.into())),
                (Ok(()), failed) => failed,
            };
            if let Some((applied, e)) = failed {
                for (k, held, change) in taken.into_iter().skip(applied) {
                    if let (Some(hot), Some(held)) = (hot.as_mut(), held) {
                        hot.insert(k, held);
                    }
                    pending.put(k, change);
                }
                return Err(e);
            }
            drop(pending);
            drop(hot);
            let done = first + batch.len();
            if done / CHUNKS_PER_FLUSH > first / CHUNKS_PER_FLUSH {
                self.flush()?;
                crate::memory::give_back();
            }
        }
        self.flush()
    }

    /// Records that the stored node buckets must be rebuilt at the next open, durably.
    pub(crate) fn mark_node_stale(&self) -> Result<()> {
        self.trees.meta.insert(NODE_STALE, &[])?;
        self.flush()
    }

    /// Records that the stored node buckets hold every change again, durably.
    pub(crate) fn clear_node_stale(&self) -> Result<()> {
        self.trees.meta.remove(NODE_STALE)?;
        self.flush()
    }

    /// The copies of the node buckets `reads` names (`what`, and `Some` chunk or all) of
    /// one period, all read under one taking of both locks (in the order every reader
    /// takes them): the stored chunks, the memory copy's and the pending changes. A
    /// store writes each chunk and drops its change under the write lock
    /// (`store_node_changes`), so each change is seen once; and the writer adds a
    /// group's changes under it, so what one answer puts side by side (a bucket's
    /// total and its rows) is of one moment. Decoded and merged by the caller, after:
    /// a writer waiting for the lock stops every reader queued behind it.
    fn node_copies<const N: usize>(
        &self,
        reads: [(u8, Option<u16>); N],
        granularity: u8,
        number: i32,
    ) -> Result<[Copies; N]> {
        let hot = self.hot.read().map_err(|_| Error::Invalid("statistics cache poisoned".into()))?;
        let pending = self.node_pending.read().map_err(|_| Error::Invalid("node changes poisoned".into()))?;
        let copies = reads.into_iter().map(|(what, only)| -> Result<Copies> {
            let (first, last) = only.map_or((0, u16::MAX), |c| (c, c));
            let whole = node_key(what, granularity, number, first);
            let prefix = &whole[..7];
            // One chunk: point reads (a scan of the memory copy is O(its buckets)).
            let (stored, in_memory) = match only {
                Some(_) => (
                    self.trees
                        .userid_bucket_counts
                        .get(whole)?
                        .map(|v| (sled::IVec::from(&whole[..]), v))
                        .into_iter()
                        .collect(),
                    hot.get(&whole).map(|a| (whole, a.clone())).into_iter().collect(),
                ),
                None => (
                    self.trees.userid_bucket_counts.scan_prefix(prefix).collect::<sled::Result<Vec<_>>>()?,
                    hot.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(k, a)| (*k, a.clone())).collect(),
                ),
            };
            let (from, to) = (node_key(what, granularity, number, first), node_key(what, granularity, number, last));
            let changes = pending.range(from..=to).map(|(k, d)| (*k, d.clone())).collect();
            Ok(Copies { stored, in_memory, changes })
        });
        let copies = copies.collect::<Result<Vec<Copies>>>()?;
        <[Copies; N]>::try_from(copies).map_err(|_| Error::Invalid("node copies: one per read".into()))
    }

    /// A node bucket's counts of one kind: listens per item, listeners per item, and the
    /// bucket's listens and listeners (from the node cache when it holds it).
    pub(crate) fn node_bucket(&self, granularity: u8, number: i32, kind: Kind) -> Result<Arc<NodeBucket>> {
        let key = (granularity, number, kind.index());
        let generation = {
            let cache = self.node_cache.lock().map_err(|_| Error::Invalid("node cache poisoned".into()))?;
            if let Some(b) = cache.buckets.get(&key) {
                return Ok(b.clone());
            }
            cache.generation
        };
        // The totals and the rows of one moment (a chart's rows add up to its total).
        let reads = [(WHAT_TOTALS, Some(0)), (WHAT_LISTENS, None), (WHAT_LISTENERS, None)];
        let [totals, listens, listeners] = self.node_copies(reads, granularity, number)?;
        let totals = merged_copies(totals, |_, agg| Ok(Some(agg)))?.pop().unwrap_or_default();
        let bucket = Arc::new(NodeBucket {
            listens: counts_of(listens, kind.index())?,
            listeners: counts_of(listeners, kind.index())?,
            total_listens: u64::from(totals.total),
            total_listeners: totals.counts[0].first().map_or(0, |c| u64::from(c.1)),
        });
        if let Ok(mut cache) = self.node_cache.lock() {
            let n = bucket.pairs();
            if cache.generation == generation && n <= NODE_CACHE_PAIRS {
                if cache.pairs + n > NODE_CACHE_PAIRS {
                    cache.buckets.clear();
                    cache.pairs = 0;
                }
                cache.pairs += n;
                cache.buckets.insert(key, bucket.clone());
            }
        }
        Ok(bucket)
    }

    /// One item's listens and listeners in a node bucket: reads the one chunk of each
    /// that holds it.
    pub(crate) fn node_item_counts(&self, kind: Kind, granularity: u8, number: i32, id: u32) -> Result<(u64, u64)> {
        let chunk = Some(chunk_of(granularity, id));
        let [listens, listeners] =
            self.node_copies([(WHAT_LISTENS, chunk), (WHAT_LISTENERS, chunk)], granularity, number)?;
        let count = |copies| -> Result<u64> {
            let counts = counts_of(copies, kind.index())?;
            Ok(u64::try_from(count_in(&counts, id)).unwrap_or(0))
        };
        Ok((count(listens)?, count(listeners)?))
    }

    /// The head of the node chart of one bucket and kind, at least `limit` rows (with
    /// ties) when the bucket has them: from the node cache up to `CACHED_TOP` rows.
    pub(crate) fn node_top(&self, kind: Kind, granularity: u8, number: i32, limit: usize) -> Result<Arc<NodeTop>> {
        let key = (granularity, number, kind.index());
        let generation = {
            let cache = self.node_cache.lock().map_err(|_| Error::Invalid("node cache poisoned".into()))?;
            match cache.tops.get(&key) {
                Some(t) if limit <= CACHED_TOP => return Ok(t.clone()),
                _ => cache.generation,
            }
        };
        let bucket = self.node_bucket(granularity, number, kind)?;
        let (counts, of) = (&bucket.listens, &bucket.listeners);
        let top = crate::stats::chart::top_with_ties_of(
            counts.iter().map(|&(id, n)| (id, u64::from(n))).collect(),
            limit.max(CACHED_TOP),
        );
        let mut rows: Vec<(u32, u64, u64)> = top
            .into_iter()
            .map(|(id, n)| (id, n, of.binary_search_by_key(&id, |c| c.0).map_or(0, |i| u64::from(of[i].1))))
            .collect();
        if limit <= CACHED_TOP {
            bound_last_tie(&mut rows);
        }
        let t = Arc::new(NodeTop {
            rows,
            total_listens: bucket.total_listens,
            total_listeners: bucket.total_listeners,
            distinct: counts.len() as u64,
        });
        if let Ok(mut cache) = self.node_cache.lock()
            && cache.generation == generation
            && limit <= CACHED_TOP
        {
            if cache.tops.len() >= 256 {
                cache.tops.clear();
            }
            cache.tops.insert(key, t.clone());
        }
        Ok(t)
    }

    /// Which of `items` some counted user shows under its stored name: reads only the
    /// chunks holding them.
    pub(crate) fn shown_plain(&self, items: &[(Kind, u32)]) -> Result<BTreeSet<(Kind, u32)>> {
        let mut chunks: BTreeMap<u16, Option<Arc<AggV2>>> = BTreeMap::new();
        let mut out = BTreeSet::new();
        for &(kind, id) in items {
            let chunk = chunk_of(BUCKET_ALL, id);
            if let std::collections::btree_map::Entry::Vacant(v) = chunks.entry(chunk) {
                v.insert(self.bucket(&node_key(WHAT_PLAIN, BUCKET_ALL, 0, chunk))?);
            }
            if chunks.get(&chunk).and_then(Option::as_ref).is_some_and(|c| count_in(&c.counts[kind.index()], id) > 0) {
                out.insert((kind, id));
            }
        }
        Ok(out)
    }

    /// Forgets what the node cache holds of the node buckets among `changed` (every one
    /// when `None`), and what readers are assembling now. Called after the change is
    /// visible to readers (memory copy or store).
    pub(crate) fn node_changed<'a>(&self, changed: Option<impl IntoIterator<Item = &'a [u8; 9]>>) {
        let Ok(mut cache) = self.node_cache.lock() else { return };
        cache.generation = cache.generation.wrapping_add(1);
        match changed {
            None => {
                cache.forget_assembled();
                cache.forget_ranges();
            }
            Some(keys) => {
                for k in keys.into_iter().filter(|k| is_node_key(k.as_slice())) {
                    cache.forget_bucket_of(k);
                    if k[2] == BUCKET_WEEK {
                        cache.week_changed(node_key_number(k));
                    }
                }
            }
        }
    }

    /// After a writer group, visible to readers: node buckets `changed` as
    /// `node_changed` says (all that the cache assembled from chunks when `chunks_stored`:
    /// the stored changes reached chunks `changed` does not name). The range charts go
    /// by `days`, the local days whose listens of counted members the group changed,
    /// not by the weeks of `changed`: a scrobble on a quarter's first day would otherwise
    /// forget last quarter's chart (its last week). A store of node chunks does not
    /// change what range charts count (they sum the members' buckets).
    pub(crate) fn node_group_changed<'a>(
        &self,
        changed: impl IntoIterator<Item = &'a [u8; 9]>,
        days: &BTreeSet<i32>,
        chunks_stored: bool,
    ) {
        let Ok(mut cache) = self.node_cache.lock() else { return };
        cache.generation = cache.generation.wrapping_add(1);
        if chunks_stored {
            cache.forget_assembled();
        } else if !(cache.buckets.is_empty() && cache.tops.is_empty()) {
            // A group changes thousands of chunks, runs of them in one bucket (keys come
            // sorted from the writer): each bucket forgotten once, and not at all while
            // nothing is kept (an import: this was 2.5% of the writer).
            let mut last = None;
            for k in changed.into_iter().filter(|k| is_node_key(k.as_slice())) {
                let bucket = (k[1], k[2], node_key_number(k));
                if last != Some(bucket) {
                    last = Some(bucket);
                    cache.forget_bucket_of(k);
                }
            }
        }
        for &day in days {
            cache.day_changed(day);
        }
    }

    /// The top of the node chart of `[from, to)` summed over the counted members (a
    /// range no node bucket holds: a quarter, a half year), kept per range and kind
    /// until a listen of a counted member on a day it may count changes
    /// (`node_group_changed`), or a change outside the writer's groups touches a week it
    /// meets (`node_changed`). A chart of the previous quarter thus stays kept while
    /// members scrobble today, and costs O(users) once.
    pub(crate) fn node_range_top(&self, kind: Kind, (from, to): (i64, i64), limit: usize) -> Result<Arc<RangeTop>> {
        let key = (kind.index(), from, to);
        let generation = {
            let cache = self.node_cache.lock().map_err(|_| Error::Invalid("node cache poisoned".into()))?;
            match cache.ranges.get(&key) {
                Some(t) if limit <= CACHED_TOP => return Ok(t.clone()),
                _ => cache.generation,
            }
        };
        let t = Arc::new(self.sum_node_range(kind, from, to, limit.max(CACHED_TOP))?);
        if let Ok(mut cache) = self.node_cache.lock()
            && limit <= CACHED_TOP
            && cache.range_unchanged_since(from, to, generation)
        {
            if cache.ranges.len() >= KEPT_RANGES {
                cache.ranges.clear();
            }
            cache.ranges.insert(key, t.clone());
        }
        Ok(t)
    }

    /// The node chart of `[from, to)` summed over the counted members' buckets:
    /// O(users). Its top `limit` rows (with ties), each with the first counted member
    /// (in id order) who played it in the range, whose spelling names it.
    fn sum_node_range(&self, kind: Kind, from: i64, to: i64, limit: usize) -> Result<RangeTop> {
        let mut listens = Summer::new();
        let mut listeners = Summer::new();
        let mut first: HashMap<u32, UserId> = HashMap::new();
        let (mut total, mut contributors) = (0u64, 0u64);
        for user in self.users()? {
            if !crate::policy::counted_exactly(user.visibility, crate::policy::Purpose::NodeChart) {
                continue;
            }
            let user_tz = period::time_zone(&user.timezone).map_err(|e| Error::Invalid(e.to_string()))?;
            let (sums, n) = self.sum_range(user.id, from, to, &user_tz)?;
            if n == 0 {
                continue;
            }
            total += n;
            contributors += 1;
            for (id, count) in sums[kind.index()].all() {
                listens.add(id, count);
                listeners.add(id, 1);
                first.entry(id).or_insert(user.id);
            }
        }
        let mut rows: Vec<(u32, u64, u64)> =
            listens.top_with_ties(limit).into_iter().map(|(id, n)| (id, n, listeners.count(id))).collect();
        if limit <= CACHED_TOP {
            bound_last_tie(&mut rows);
        }
        let spelled_by = rows.iter().filter_map(|(id, _, _)| first.get(id).map(|u| (*id, *u))).collect();
        Ok(RangeTop {
            top: NodeTop { rows, total_listens: total, total_listeners: contributors, distinct: listens.len() as u64 },
            spelled_by,
        })
    }
}

/// Range charts the node cache keeps (of ranges and kinds); past it, emptied.
const KEPT_RANGES: usize = 16;

/// Spans of days whose change the node cache remembers for readers summing a range;
/// past it, it forgets them and treats every day as changed.
const KEPT_SPAN_CHANGES: usize = 8_192;

/// The number (week, month, year) of node key `k` (`node_key`).
fn node_key_number(k: &[u8; 9]) -> i32 {
    i32::from_be_bytes([k[3], k[4], k[5], k[6]]) ^ i32::MIN
}

/// The first and last day (numbers) a listen in `[from, to)` can fall on in any member's
/// calendar: a member's local day of an instant is its UTC day or a neighbour (offsets
/// reach −12 and +14 hours, less than a day); a day of margin each side. Days and weeks,
/// not months: the month after a quarter is often the current one, and every scrobble in
/// it would forget the chart.
fn days_around(from: i64, to: i64) -> (i32, i32) {
    const MARGIN: i64 = 86_400;
    let day = |t: i64| day_number(local_date(t, &TimeZone::UTC));
    (day(from.saturating_sub(MARGIN)), day(to.saturating_sub(1).saturating_add(MARGIN)))
}

/// Whether two spans of days, first and last included, share a day.
fn meets((a, b): (i32, i32), (c, d): (i32, i32)) -> bool {
    a <= d && c <= b
}

impl NodeCache {
    /// Forgets the buckets and tops assembled from node chunks.
    fn forget_assembled(&mut self) {
        self.buckets.clear();
        self.tops.clear();
        self.pairs = 0;
    }

    /// Forgets what was assembled of the node bucket of key `k`, every kind (a change of
    /// who spells an item under its stored name, `WHAT_PLAIN`, changes no count).
    fn forget_bucket_of(&mut self, k: &[u8; 9]) {
        if k[1] == WHAT_PLAIN {
            return;
        }
        let (granularity, number) = (k[2], node_key_number(k));
        for kind in 0..3 {
            if let Some(b) = self.buckets.remove(&(granularity, number, kind)) {
                self.pairs = self.pairs.saturating_sub(b.pairs());
            }
            self.tops.remove(&(granularity, number, kind));
        }
    }

    /// Forgets the range charts and which days changed when (all did, now).
    fn forget_ranges(&mut self) {
        self.ranges.clear();
        self.span_changes.clear();
        self.all_changed = self.generation;
    }

    /// Records that listens of counted members on local day `day` changed (a writer
    /// group names its days).
    fn day_changed(&mut self, day: i32) {
        self.span_changed((day, day));
    }

    /// Records that the node week starting on day `monday` changed (changes outside the
    /// writer's groups name node buckets only; every change of a member's listens
    /// changes the node week of its day, `deltas`).
    fn week_changed(&mut self, monday: i32) {
        self.span_changed((monday, monday.saturating_add(6)));
    }

    /// Records that listens on the days of `span` changed at this generation, and
    /// forgets the range charts that may count them.
    fn span_changed(&mut self, span: (i32, i32)) {
        if self.span_changes.len() >= KEPT_SPAN_CHANGES && !self.span_changes.contains_key(&span) {
            self.forget_ranges();
            return;
        }
        self.span_changes.insert(span, self.generation);
        self.ranges.retain(|&(_, from, to), _| !meets(span, days_around(from, to)));
    }

    /// Whether nothing a chart of `[from, to)` counts changed after `generation`.
    fn range_unchanged_since(&self, from: i64, to: i64, generation: u64) -> bool {
        let days = days_around(from, to);
        self.all_changed <= generation
            && self.span_changes.iter().all(|(span, g)| *g <= generation || !meets(*span, days))
    }
}

/// Node buckets as charts read them (assembled from their chunks), kept until a change
/// of any of them: a node chart of a week, month, year or all time then costs a top-N
/// over the cached counts, not a range scan and a decode of every chunk. Bounded by the
/// counts it holds (`NODE_CACHE_PAIRS`; past it, emptied). Every change of node buckets
/// calls `Store::node_changed` after it is visible to readers; a reader stores what it
/// assembled only if no change happened meanwhile (`generation`), so nothing stale is
/// kept.
#[derive(Default)]
pub(crate) struct NodeCache {
    generation: u64,
    pairs: usize,
    /// Per (granularity, number, kind index).
    buckets: HashMap<(u8, i32, usize), Arc<NodeBucket>>,
    /// The top `CACHED_TOP` (with ties) of a bucket and kind: an all-time bucket of a
    /// large node holds millions of counts, more than `NODE_CACHE_PAIRS`, and a chart
    /// needs only its head.
    tops: HashMap<(u8, i32, usize), Arc<NodeTop>>,
    /// Charts of ranges no node bucket holds, per (kind index, from, to).
    ranges: HashMap<(usize, i64, i64), Arc<RangeTop>>,
    /// The generation at which listens of counted members last changed on a span of
    /// local days, first and last: one day (a writer group's) or a node week (another
    /// change's).
    span_changes: HashMap<(i32, i32), u64>,
    /// The generation at which every bucket last changed (`node_changed(None)`).
    all_changed: u64,
}

/// The top of a range's node chart, and who spells each of its rows.
pub(crate) struct RangeTop {
    pub top: NodeTop,
    pub spelled_by: HashMap<u32, UserId>,
}

/// Rows of a node chart kept ready per bucket and kind (more are computed each time).
pub(crate) const CACHED_TOP: usize = 1_000;

/// The head of a node chart: `(item, listens, listeners)` by listens (then id), with
/// every item tied at the last place; the bucket's totals.
pub(crate) struct NodeTop {
    pub rows: Vec<(u32, u64, u64)>,
    pub total_listens: u64,
    pub total_listeners: u64,
    pub distinct: u64,
}

impl NodeTop {
    /// The first `n` rows and every row tied with the `n`-th.
    pub(crate) fn head(&self, n: usize) -> &[(u32, u64, u64)] {
        if n == 0 {
            return &[];
        }
        match self.rows.get(n - 1) {
            None => &self.rows,
            Some(&(_, boundary, _)) => {
                let end = self.rows.iter().position(|r| r.1 < boundary).unwrap_or(self.rows.len());
                &self.rows[..end]
            }
        }
    }
}

/// Keeps at most `NODE_TIE_LIMIT + 1` rows of a cached head's last tie. A page never
/// ranks a tie longer than `NODE_TIE_LIMIT` that holds its last row (`chart::ranked_len`
/// ends the chart before it, seeing it is longer), and the head of a node chart with a
/// one-listen tail at row 1,000 held the whole tail: tens of thousands of rows per
/// cached head, up to 256 heads. Only for heads of at most `CACHED_TOP` rows asked: a
/// longer listing (`node_chart` with a larger limit) lists its last tie whole.
fn bound_last_tie(rows: &mut Vec<(u32, u64, u64)>) {
    if let Some(&(_, last, _)) = rows.last() {
        let start = rows.partition_point(|r| r.1 > last);
        let keep = start.saturating_add(super::NODE_TIE_LIMIT).saturating_add(1);
        rows.truncate(keep);
    }
}

/// Most counts the node cache holds (about 8 bytes each): 4M, 32 MiB.
const NODE_CACHE_PAIRS: usize = 4_000_000;

/// One node bucket's counts of one kind, read.
pub(crate) struct NodeBucket {
    /// (item, listens) by item.
    pub listens: Vec<(u32, u32)>,
    /// (item, listeners) by item.
    pub listeners: Vec<(u32, u32)>,
    pub total_listens: u64,
    pub total_listeners: u64,
}

impl NodeBucket {
    fn pairs(&self) -> usize {
        self.listens.len() + self.listeners.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One user's change whose items straddle chunk boundaries (32,768 is one at every
    /// granularity) lands each item in its own chunk, with each chunk's total the sum
    /// of its counts, for the week, month, year and all-time node buckets.
    #[test]
    fn a_change_lands_each_item_in_its_own_chunk() {
        let user = UserId(7);
        let items: Vec<u32> = vec![3, 255, 256, 2_047, 2_048, 16_383, 16_384, 32_766, 32_767, 32_768, 32_769, 140_000];
        let agg = |n: u32| AggV2 {
            total: n * u32::try_from(items.len()).unwrap_or(0),
            counts: [0, 1, 2].map(|_| items.iter().map(|i| (*i, n)).collect()),
            hours: Vec::new(),
        };
        let day = 20_000; // 2024-10-04, a Friday
        let mut changes: BTreeMap<[u8; 9], Change> = BTreeMap::new();
        changes.insert(keys::bucket(user, BUCKET_DAY, day), (None, Some(Arc::new(agg(1)))));
        changes.insert(keys::bucket(user, BUCKET_MONTH, 24 * 12 + 9), (None, Some(Arc::new(agg(1)))));
        changes.insert(keys::bucket(user, BUCKET_YEAR, 2024), (Some(Arc::new(agg(2))), Some(Arc::new(agg(3)))));
        let mut out: FastMap<[u8; 9], Delta> = FastMap::default();
        let years: BTreeSet<i32> = [2024].into();
        deltas(&changes, &mut |_| Ok(None), &years, &mut |_, _, _| Ok(true), &[], &mut out).expect("deltas");
        let mut seen: BTreeMap<(u8, u8), BTreeMap<u32, i64>> = BTreeMap::new();
        for (key, d) in &out {
            let (what, g) = (key[1], key[2]);
            let chunk = u16::from_be_bytes([key[7], key[8]]);
            if what == WHAT_TOTALS {
                continue;
            }
            let mut sum = 0;
            for (k, counts) in d.counts.iter().enumerate() {
                for (item, by) in counts {
                    assert_eq!(chunk, chunk_of(g, *item), "item {item} of granularity {g} in chunk {chunk}");
                    sum += i64::from(*by);
                    if k == 1 {
                        *seen.entry((what, g)).or_default().entry(*item).or_default() += i64::from(*by);
                    }
                }
            }
            assert_eq!(d.total, sum, "a chunk's total is the sum of its counts");
        }
        for g in [BUCKET_WEEK, BUCKET_MONTH, BUCKET_ALL] {
            let listens = seen.get(&(WHAT_LISTENS, g)).expect("listens");
            assert_eq!(listens.keys().copied().collect::<Vec<_>>(), items, "granularity {g}");
            assert!(listens.values().all(|by| *by == 1), "granularity {g}: {listens:?}");
        }
        // All time moved from 2 to 3 listens of each: no listener moved.
        assert!(seen.get(&(WHAT_LISTENERS, BUCKET_ALL)).is_none_or(BTreeMap::is_empty));
        assert!(seen.get(&(WHAT_LISTENERS, BUCKET_WEEK)).is_some_and(|l| l.len() == items.len()));
    }

    /// The writer's flat list of node changes, added to pending changes, gives what
    /// gathering them per chunk (`FastMap<_, Delta>`, as rebuilds and sharing-level
    /// changes do) and absorbing that gives: the same chunks, totals and counts, and
    /// the pairs it reports gained are those the pending map gained.
    #[test]
    fn flat_changes_absorb_as_gathered_ones_do() {
        let agg = |items: &[u32], n: u32| AggV2 {
            total: n * u32::try_from(items.len()).unwrap_or(0),
            counts: [0, 1, 2].map(|_| items.iter().map(|i| (*i, n)).collect()),
            hours: Vec::new(),
        };
        let years: BTreeSet<i32> = [2023, 2024].into();
        let mut gathered: FastMap<[u8; 9], Delta> = FastMap::default();
        let mut flat = NodeChanges::default();
        // Three users' changes, sharing items and chunks: the second loses listens, the
        // third is a new listener of every bucket (its totals chunks gain a listener).
        let users =
            [(7, vec![1, 300], vec![1, 2, 300, 70_000]), (8, vec![2, 5, 301], vec![5]), (9, vec![], vec![2, 9])];
        for (user, before, after) in users {
            let user = UserId(user);
            let mut changes: BTreeMap<[u8; 9], Change> = BTreeMap::new();
            for (g, n) in [(BUCKET_DAY, 19_725), (BUCKET_DAY, 19_727), (BUCKET_MONTH, 24 * 12), (BUCKET_YEAR, 2024)] {
                let before = (!before.is_empty()).then(|| Arc::new(agg(&before, 2)));
                changes.insert(keys::bucket(user, g, n), (before, Some(Arc::new(agg(&after, 1)))));
            }
            let older = Some(Arc::new(agg(&[1, 2, 3], 4)));
            let mut current = |_: &[u8; 9]| Ok(older.clone());
            let plain = |_: Kind, id: u32, after: bool| Ok(after || id.is_multiple_of(2));
            deltas(&changes, &mut current, &years, &mut plain.clone(), &[(Kind::Artist, 5)], &mut gathered)
                .expect("deltas");
            deltas(&changes, &mut current, &years, &mut plain.clone(), &[(Kind::Artist, 5)], &mut flat)
                .expect("deltas");
        }
        assert!(!flat.is_empty());
        let mut keys: Vec<[u8; 9]> = gathered.keys().copied().collect();
        keys.sort_unstable();
        assert_eq!(flat.keys(), keys, "the chunks changed, each once");
        // Into pending changes already holding some of those chunks' items, and others.
        let mut old = FastMap::default();
        for (i, k) in keys.iter().enumerate().step_by(3) {
            let d: &mut Delta = old.entry(*k).or_default();
            d.total = 5;
            d.counts[1].insert(u32::try_from(i).unwrap_or(0), 5);
            d.counts[0].insert(1, -1);
        }
        let mut by_map: BTreeMap<[u8; 9], Delta> = old.iter().map(|(k, d)| (*k, d.clone())).collect();
        let mut by_list = PendingChanges::default();
        for (k, d) in &by_map {
            by_list.put(*k, d.clone());
        }
        for (k, d) in &gathered {
            by_map.entry(*k).or_default().absorb(d);
        }
        let pairs = |m: &BTreeMap<[u8; 9], Delta>| m.values().map(Delta::pairs).sum::<usize>();
        assert_eq!(by_list.pairs(), pairs(&by_list), "counted as put");
        flat.sort();
        let (was, gained) = (pairs(&by_list), flat.absorb_into(&mut by_list));
        assert_eq!(pairs(&by_list), was + gained, "the pairs gained, exactly");
        assert_eq!(by_list.pairs(), pairs(&by_list), "counted as gained");
        assert_eq!(by_list.len(), by_map.len());
        for ((k1, a), (k2, b)) in by_list.iter().zip(&by_map) {
            assert_eq!(k1, k2);
            assert_eq!(a.total, b.total, "total of {k1:?}");
            for kind in 0..3 {
                let sorted = |d: &Delta| d.counts[kind].iter().map(|(i, n)| (*i, *n)).collect::<BTreeMap<u32, i32>>();
                assert_eq!(sorted(a), sorted(b), "kind {kind} of {k1:?}");
            }
        }
        flat.clear();
        assert!(flat.is_empty() && flat.keys().is_empty());
    }

    #[test]
    fn monday_is_the_iso_weeks_first_day() {
        for day in -800..800 {
            let date = period::date_of(day);
            let iso = date.iso_week_date();
            let m = monday(day);
            assert_eq!(period::date_of(m).weekday(), jiff::civil::Weekday::Monday);
            assert_eq!(period::date_of(m).iso_week_date().week(), iso.week());
            assert!((0..7).contains(&(day - m)));
        }
    }

    #[test]
    fn a_chunk_spans_the_ids_of_its_granularity() {
        for (g, span) in [(BUCKET_ALL, 256u32), (BUCKET_YEAR, 2_048), (BUCKET_MONTH, 16_384), (BUCKET_WEEK, 32_768)] {
            assert_eq!((chunk_of(g, 0), chunk_of(g, span - 1), chunk_of(g, span)), (0, 0, 1), "granularity {g}");
            assert_eq!(chunk_of(g, 5 * span + 7), 5);
        }
        // Ids past the last chunk share it: keys stay in item order.
        assert_eq!(chunk_of(BUCKET_ALL, u32::MAX), u16::MAX);
        assert_eq!(chunk_of(BUCKET_WEEK, u32::MAX), u16::MAX);
    }

    /// A kept range chart goes when a week it may count in changes (the week before
    /// its first day too, when that is a Monday: a member behind UTC lives its first
    /// hours on the Sunday before), or all do; a change of another week keeps it (the
    /// week after it, in the current month); a reader who began before a change that
    /// concerns its range does not keep what it summed.
    #[test]
    fn a_kept_range_chart_goes_with_the_days_and_weeks_it_counts() {
        let monday = |y: i16, m: i8, d: i8| {
            let date = jiff::civil::date(y, m, d);
            assert_eq!(date.weekday(), jiff::civil::Weekday::Monday);
            day_number(date)
        };
        // 2025-09-01 (a Monday) .. 2025-10-01 UTC.
        let (from, to) = (1_756_684_800, 1_759_276_800);
        let top = || {
            let top = NodeTop { rows: vec![], total_listens: 0, total_listeners: 0, distinct: 0 };
            Arc::new(RangeTop { top, spelled_by: HashMap::new() })
        };
        let mut cache = NodeCache::default();
        cache.ranges.insert((0, from, to), top());
        let start = cache.generation;
        let weeks = [(monday(2025, 10, 6), true), (monday(2025, 8, 18), true), (monday(2025, 8, 25), false)];
        for (w, kept) in weeks {
            cache.generation += 1;
            cache.week_changed(w);
            assert_eq!(cache.ranges.contains_key(&(0, from, to)), kept, "week {w}");
        }
        assert!(!cache.range_unchanged_since(from, to, start), "the week before changed after the reader began");
        assert!(cache.range_unchanged_since(from, to, cache.generation));
        assert!(cache.range_unchanged_since(to + 100 * 86_400, to + 120 * 86_400, start), "another range");
        // The week holding the range's last day (and the first of the next month).
        cache.ranges.insert((0, from, to), top());
        cache.generation += 1;
        cache.week_changed(monday(2025, 9, 29));
        assert!(!cache.ranges.contains_key(&(0, from, to)));
        // A writer group's days: only the range's days and one either side count (a
        // scrobble on October 2nd keeps September's chart, though its week meets it).
        let day = |m: i8, d: i8| day_number(jiff::civil::date(2025, m, d));
        cache.ranges.insert((0, from, to), top());
        let before = cache.generation;
        for (d, kept) in [(day(10, 2), true), (day(8, 30), true), (day(10, 1), false)] {
            cache.generation += 1;
            cache.day_changed(d);
            assert_eq!(cache.ranges.contains_key(&(0, from, to)), kept, "day {d}");
            cache.ranges.insert((0, from, to), top());
        }
        assert!(!cache.range_unchanged_since(from, to, before), "October 1st changed after the reader began");
        cache.generation += 1;
        cache.day_changed(day(8, 31));
        assert!(!cache.ranges.contains_key(&(0, from, to)), "August 31st: a member behind UTC");
        cache.ranges.insert((0, from, to), top());
        cache.generation += 1;
        cache.forget_ranges();
        assert!(cache.ranges.is_empty());
        assert!(!cache.range_unchanged_since(to + 100 * 86_400, to + 120 * 86_400, start), "every week changed");
    }

    /// `store_hot` writes node chunks after its transaction: it clears `NODE_STALE`
    /// only when it set it itself, and a chunk whose total fell to zero is removed.
    #[test]
    fn storing_the_memory_copy_keeps_a_staleness_it_did_not_cause() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = crate::store::Options { cache_mb: 4, ..Default::default() };
        let store = Store::open(dir.path(), &options).expect("open");
        let key = node_key(WHAT_LISTENS, BUCKET_ALL, 0, 3);
        let chunk = |total| Arc::new(AggV2 { total, counts: [vec![(3 * 256, total)], vec![], vec![]], hours: vec![] });
        let put = |agg: Arc<AggV2>| store.hot.write().expect("hot").insert(key, agg);
        let stale = || store.trees.meta.contains_key(NODE_STALE).expect("meta");

        put(chunk(5));
        store.store_hot().expect("store");
        assert!(!stale(), "set and cleared by the store itself");
        assert_eq!(store.bucket(&key).expect("read").map(|a| a.total), Some(5));
        assert!(store.hot.read().expect("hot").is_empty());

        store.mark_node_stale().expect("mark");
        put(chunk(0));
        store.store_hot().expect("store");
        assert!(stale(), "stale before: the stored node buckets still lag");
        assert!(store.trees.userid_bucket_counts.get(key).expect("get").is_none(), "an empty chunk is removed");

        // Nothing of the node's in memory, only a user's bucket: stored, and the
        // staleness is left as it was.
        let user_key = keys::bucket(UserId(1), keys::BUCKET_YEAR, 2026);
        store.hot.write().expect("hot").insert(user_key, chunk(2));
        store.store_hot().expect("store");
        assert!(store.trees.userid_bucket_counts.get(user_key).expect("get").is_some());
        assert!(stale());
        store.clear_node_stale().expect("clear");
        store.store_hot().expect("store");
        assert!(!stale());
    }
}
