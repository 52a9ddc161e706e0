//! Statistics aggregates: chart item dictionaries, per-track credits and per-user
//! bucket counts, maintained on every append and erase, and rebuilt from the logs on
//! demand. The rebuild gives byte-identical trees (tested): aggregates are a pure
//! function of the logs and the track dictionary.
//!
//! Queries (charts, series, the listening clock) sum whole buckets from the plan of
//! `stats::period`, and read the listens of the partial days at a range's ends.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use jiff::tz::TimeZone;

use super::codec::{decode, encode};
use super::keys::{self, BUCKET_DAY, BUCKET_MONTH, BUCKET_YEAR, UserId};
use super::schema::{self, BLOCK_ENTRIES, ITEM_CHUNK, TRACK_CHUNK};
use super::values::{
    AggV1, BlockV1, CreditChunkV1, FeedbackV1, ItemChunkV1, ItemV1, StoredEntry, TrackChunkV1, TrackCreditsV1,
};
use super::{Error, Result, Store};
use crate::log::TrackRef;
use crate::log::dedupe::normalize_name;
use crate::stats::chart::{Kind, Summer};
use crate::stats::credits::{CreditRules, credit};
use crate::stats::period::{self, Bucket, Period, day_number, local_date, month_number};

/// Every chart item and every track's credits, in memory, with the chunks changed
/// since the last write. Owned by the writer (and by a rebuild).
pub(crate) struct Dictionary {
    rules: CreditRules,
    /// Per kind: identity key -> item id.
    index: [HashMap<String, u32>; 3],
    /// Per kind: number of items, and the last (partly filled) chunk's items.
    n_items: [u32; 3],
    open: [Vec<ItemV1>; 3],
    /// Chunks filled since the last write: (kind, chunk, items).
    full: Vec<(usize, u32, Vec<ItemV1>)>,
    /// Per track id.
    credits: Vec<Option<TrackCreditsV1>>,
    dirty_items: BTreeSet<(usize, u32)>,
    dirty_credits: BTreeSet<u32>,
}

fn identity(kind: Kind, name: &str, artist: Option<u32>) -> String {
    match (kind, artist) {
        (Kind::Artist, _) | (_, None) => normalize_name(name),
        (_, Some(a)) => format!("{a}\u{1f}{}", normalize_name(name)),
    }
}

impl Dictionary {
    pub fn empty(rules: CreditRules) -> Dictionary {
        Dictionary {
            rules,
            index: Default::default(),
            n_items: [0; 3],
            open: Default::default(),
            full: Vec::new(),
            credits: Vec::new(),
            dirty_items: BTreeSet::new(),
            dirty_credits: BTreeSet::new(),
        }
    }

    pub fn load(store: &Store, rules: CreditRules) -> Result<Dictionary> {
        let mut d = Dictionary::empty(rules);
        for kv in store.trees.itemchunk_items.iter() {
            let (k, v) = kv?;
            let kind = *k.first().ok_or_else(|| Error::corrupt(schema::ITEMCHUNK_ITEMS, &k, "empty key"))? as usize;
            let chunk: ItemChunkV1 = decode(schema::ITEMCHUNK_ITEMS, &k, &v)?;
            let kind_enum =
                *Kind::ALL.get(kind).ok_or_else(|| Error::corrupt(schema::ITEMCHUNK_ITEMS, &k, "unknown kind"))?;
            for item in &chunk.items {
                let id = d.n_items[kind];
                d.n_items[kind] += 1;
                // A name blanked by compaction is never matched again.
                if !item.name.is_empty() {
                    d.index[kind].insert(identity(kind_enum, &item.name, item.artist), id);
                }
            }
            // Chunks come in key order, so the last one seen per kind is the open one.
            d.open[kind] = if chunk.items.len() < ITEM_CHUNK as usize { chunk.items } else { Vec::new() };
        }
        for kv in store.trees.trackchunk_credits.iter() {
            let (k, v) = kv?;
            let chunk: CreditChunkV1 = decode(schema::TRACKCHUNK_CREDITS, &k, &v)?;
            d.credits.extend(chunk.tracks);
        }
        Ok(d)
    }

    fn intern(&mut self, kind: Kind, name: &str, artist: Option<u32>) -> u32 {
        let k = kind.index();
        let key = identity(kind, name, artist);
        if let Some(&id) = self.index[k].get(&key) {
            return id;
        }
        let id = self.n_items[k];
        self.n_items[k] += 1;
        self.open[k].push(ItemV1 { name: name.to_owned(), artist });
        self.index[k].insert(key, id);
        self.dirty_items.insert((k, id / ITEM_CHUNK));
        if self.open[k].len() >= ITEM_CHUNK as usize {
            self.full.push((k, id / ITEM_CHUNK, std::mem::take(&mut self.open[k])));
        }
        id
    }

    /// The credits of track `id`, computing (and interning items for) a new track.
    /// Tracks must be seen in id order, as the writer and the rebuild both do.
    pub fn credits(&mut self, id: u32, track: &TrackRef) -> TrackCreditsV1 {
        if let Some(Some(c)) = self.credits.get(id as usize) {
            return c.clone();
        }
        let artists_index = &self.index[Kind::Artist.index()];
        let known = |norm: &str| artists_index.contains_key(norm);
        let c = credit(track, &self.rules, &known);
        let artists: Vec<u32> = c.artists.iter().map(|a| self.intern(Kind::Artist, a, None)).collect();
        let main = artists.first().copied();
        let recording = self.intern(Kind::Recording, &c.title, main);
        let release = track.album.as_deref().map(|album| self.intern(Kind::Release, album, main));
        let credits = TrackCreditsV1 { artists, recording, release };
        let slot = id as usize;
        if self.credits.len() <= slot {
            self.credits.resize(slot + 1, None);
        }
        self.credits[slot] = Some(credits.clone());
        self.dirty_credits.insert(id / TRACK_CHUNK);
        credits
    }

    /// The credits of an already interned track.
    pub fn known_credits(&self, id: u32) -> Option<&TrackCreditsV1> {
        self.credits.get(id as usize).and_then(Option::as_ref)
    }

    /// Encoded writes for every changed chunk: (tree, key, value).
    pub fn take_writes(&mut self) -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        for (kind, chunk, items) in std::mem::take(&mut self.full) {
            out.push((
                schema::ITEMCHUNK_ITEMS,
                keys::kind_chunk(kind as u8, chunk).to_vec(),
                encode(&ItemChunkV1 { items }),
            ));
        }
        for (kind, chunk) in std::mem::take(&mut self.dirty_items) {
            if chunk == self.n_items[kind] / ITEM_CHUNK && !self.open[kind].is_empty() {
                let items = self.open[kind].clone();
                out.push((
                    schema::ITEMCHUNK_ITEMS,
                    keys::kind_chunk(kind as u8, chunk).to_vec(),
                    encode(&ItemChunkV1 { items }),
                ));
            }
        }
        for chunk in std::mem::take(&mut self.dirty_credits) {
            let start = (chunk * TRACK_CHUNK) as usize;
            let end = (start + TRACK_CHUNK as usize).min(self.credits.len());
            let tracks = self.credits.get(start..end).unwrap_or_default().to_vec();
            out.push((schema::TRACKCHUNK_CREDITS, keys::u32_key(chunk).to_vec(), encode(&CreditChunkV1 { tracks })));
        }
        out
    }
}

/// Where one listen counts: its three bucket keys and its (day of year, hour).
pub(crate) struct Placement {
    pub keys: [[u8; 9]; 3],
    pub slot: (u16, u8),
}

pub(crate) fn place(user: UserId, listened_at: i64, tz: &TimeZone) -> Placement {
    let zoned = jiff::Timestamp::from_second(listened_at).unwrap_or(jiff::Timestamp::UNIX_EPOCH).to_zoned(tz.clone());
    let date = zoned.date();
    Placement {
        keys: [
            keys::bucket(user, BUCKET_DAY, day_number(date)),
            keys::bucket(user, BUCKET_MONTH, month_number(date)),
            keys::bucket(user, BUCKET_YEAR, i32::from(date.year())),
        ],
        slot: (u16::try_from(date.day_of_year()).unwrap_or(0), u8::try_from(zoned.hour()).unwrap_or(0)),
    }
}

/// Pending changes to one bucket, merged into it in one pass (`merged`): a year bucket
/// holds tens of thousands of items, so inserting listens one by one into its sorted
/// lists would cost a copy of the list each.
#[derive(Clone, Debug, Default)]
pub(crate) struct Delta {
    total: i64,
    counts: [HashMap<u32, i64>; 3],
    hours: HashMap<(u16, u8), i64>,
}

impl Delta {
    /// Adds (`delta` = 1) or removes (-1) one listen with `credits`.
    pub fn add(&mut self, credits: &TrackCreditsV1, delta: i64, hours: Option<(u16, u8)>) {
        self.total += delta;
        for &a in &credits.artists {
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

fn merge_sorted<K: Ord + Copy>(base: &[(K, u32)], delta: &HashMap<K, i64>) -> Vec<(K, u32)> {
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
pub(crate) fn merged(base: Option<&AggV1>, delta: &Delta) -> AggV1 {
    let empty = AggV1::default();
    let base = base.unwrap_or(&empty);
    AggV1 {
        total: u32::try_from((i64::from(base.total) + delta.total).max(0)).unwrap_or(u32::MAX),
        counts: [0, 1, 2].map(|k| merge_sorted(&base.counts[k], &delta.counts[k])),
        hours: merge_sorted(&base.hours, &delta.hours),
    }
}

/// Most items tied with a chart's last place that are named to break the tie; past it,
/// ties at the last place go to the item the node saw first.
const MAX_TIES: usize = 1000;

/// One row of a chart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChartRow {
    pub id: u32,
    pub name: String,
    /// The main artist, for recordings and releases.
    pub artist: Option<String>,
    pub listens: u64,
}

/// A ranked chart for one user and period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chart {
    pub kind: Kind,
    pub from: i64,
    pub to: i64,
    /// Listens in the period.
    pub listens: u64,
    /// Distinct items in the period.
    pub distinct: u64,
    pub rows: Vec<ChartRow>,
}

/// A love or hate, with the recording's all-time listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Feedback {
    pub row: ChartRow,
    pub score: i8,
    /// The log entry that gave it (newer is larger).
    pub seq: u64,
}

/// One row of a node chart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeChartRow {
    pub row: ChartRow,
    /// Distinct users who listened to the item in the period.
    pub listeners: u64,
}

/// A node's chart for one period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeChart {
    pub kind: Kind,
    pub from: i64,
    pub to: i64,
    pub listens: u64,
    /// Users who contributed listens.
    pub listeners: u64,
    pub distinct: u64,
    pub rows: Vec<NodeChartRow>,
}

/// Granularity of a listens-over-time series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Day,
    /// ISO weeks (Monday first).
    Week,
    Month,
}

impl Store {
    pub(crate) fn user_tz(&self, user: UserId) -> Result<TimeZone> {
        let u = self.user(user)?.ok_or_else(|| Error::NoSuchUser(format!("#{}", user.0)))?;
        period::time_zone(&u.timezone).map_err(|e| Error::Invalid(e.to_string()))
    }

    /// A bucket as the writer last left it: the in-memory copy if newer, else sled's.
    pub(crate) fn bucket(&self, key: &[u8; 9]) -> Result<Option<std::sync::Arc<AggV1>>> {
        if let Some(hot) = self.hot.read().ok().and_then(|h| h.get(key).cloned()) {
            return Ok(Some(hot));
        }
        match self.trees.userid_bucket_counts.get(key)? {
            None => Ok(None),
            Some(v) => Ok(Some(std::sync::Arc::new(decode(schema::USERID_BUCKET_COUNTS, key, &v)?))),
        }
    }

    fn credit_chunk(&self, chunk: u32) -> Result<CreditChunkV1> {
        let key = keys::u32_key(chunk);
        match self.trees.trackchunk_credits.get(key)? {
            None => Ok(CreditChunkV1::default()),
            Some(v) => decode(schema::TRACKCHUNK_CREDITS, &key, &v),
        }
    }

    /// Calls `f(listened_at, track id)` for every live listen of `user` in `[from, to)`.
    pub(crate) fn for_each_listen_in(
        &self,
        user: UserId,
        from: i64,
        to: i64,
        mut f: impl FnMut(i64, u32) -> Result<()>,
    ) -> Result<()> {
        if from >= to {
            return Ok(());
        }
        let lo = keys::user_u32(user, keys::day_of(from.max(0)));
        let hi = keys::user_u32(user, keys::day_of(to.max(1) - 1));
        let mut blocks: HashMap<u64, BlockV1> = HashMap::new();
        for kv in self.trees.userid_day_listens.range(lo..=hi) {
            let (k, v) = kv?;
            let (_, day) = keys::parse_user_u32(schema::USERID_DAY_LISTENS, &k)?;
            let bucket: super::values::DayV1 = decode(schema::USERID_DAY_LISTENS, &k, &v)?;
            for item in bucket.items {
                let at = i64::from(day) * 86_400 + i64::from(item.sec);
                if at < from || at >= to {
                    continue;
                }
                let first = item.seq - item.seq % BLOCK_ENTRIES;
                let block = match blocks.entry(first) {
                    std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        let key = keys::user_seq(user, first);
                        let bytes =
                            self.trees.userid_seq_block.get(key)?.ok_or_else(|| {
                                Error::corrupt(schema::USERID_SEQ_BLOCK, &key, "indexed block missing")
                            })?;
                        v.insert(decode(schema::USERID_SEQ_BLOCK, &key, &bytes)?)
                    }
                };
                if let Some(StoredEntry::Listen { track, .. }) = block.entries.get((item.seq - first) as usize) {
                    f(at, *track)?;
                }
            }
        }
        Ok(())
    }

    /// Sums `user`'s counts of every kind over `[from, to)`: (summers per kind, total).
    pub(crate) fn sum_range(&self, user: UserId, from: i64, to: i64, tz: &TimeZone) -> Result<([Summer; 3], u64)> {
        let plan = period::plan(from, to, tz).map_err(|e| Error::Invalid(e.to_string()))?;
        let mut sums: [Summer; 3] = Default::default();
        let mut total = 0u64;
        for b in &plan.buckets {
            let key = match *b {
                Bucket::Day(d) => keys::bucket(user, BUCKET_DAY, d),
                Bucket::Month(m) => keys::bucket(user, BUCKET_MONTH, m),
                Bucket::Year(y) => keys::bucket(user, BUCKET_YEAR, y),
            };
            if let Some(agg) = self.bucket(&key)? {
                total += u64::from(agg.total);
                for (sum, counts) in sums.iter_mut().zip(agg.counts.iter()) {
                    sum.add_all(counts);
                }
            }
        }
        let mut chunks: HashMap<u32, CreditChunkV1> = HashMap::new();
        for &(a, b) in &plan.partial {
            self.for_each_listen_in(user, a, b, |_, track| {
                let chunk = match chunks.entry(track / TRACK_CHUNK) {
                    std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => v.insert(self.credit_chunk(track / TRACK_CHUNK)?),
                };
                if let Some(Some(c)) = chunk.tracks.get((track % TRACK_CHUNK) as usize) {
                    total += 1;
                    for &artist in &c.artists {
                        sums[Kind::Artist.index()].add(artist, 1);
                    }
                    sums[Kind::Recording.index()].add(c.recording, 1);
                    if let Some(r) = c.release {
                        sums[Kind::Release.index()].add(r, 1);
                    }
                }
                Ok(())
            })?;
        }
        Ok((sums, total))
    }

    fn item_names(&self, kind: Kind, ids: impl IntoIterator<Item = u32>) -> Result<HashMap<u32, ItemV1>> {
        let mut chunks: HashMap<u32, ItemChunkV1> = HashMap::new();
        let mut out = HashMap::new();
        for id in ids {
            let chunk = id / ITEM_CHUNK;
            if let std::collections::hash_map::Entry::Vacant(v) = chunks.entry(chunk) {
                let key = keys::kind_chunk(kind.index() as u8, chunk);
                let bytes = self
                    .trees
                    .itemchunk_items
                    .get(key)?
                    .ok_or_else(|| Error::corrupt(schema::ITEMCHUNK_ITEMS, &key, "missing item chunk"))?;
                v.insert(decode(schema::ITEMCHUNK_ITEMS, &key, &bytes)?);
            }
            if let Some(item) = chunks.get(&chunk).and_then(|c| c.items.get((id % ITEM_CHUNK) as usize)) {
                out.insert(id, item.clone());
            }
        }
        Ok(out)
    }

    /// The top `limit` items of `kind` for `user` in `period` (in the user's time zone).
    pub fn chart(&self, user: UserId, kind: Kind, period: &Period, limit: usize, now: i64) -> Result<Chart> {
        let tz = self.user_tz(user)?;
        let (from, to) = period::resolve(period, &tz, now).map_err(|e| Error::Invalid(e.to_string()))?;
        let (sums, listens) = self.sum_range(user, from, to, &tz)?;
        let sum = &sums[kind.index()];
        // Ties at the last place are broken by name, so fetch them all (within reason).
        let top = sum.top_with_ties(limit, MAX_TIES);
        let rows = self.named_rows(kind, top, limit)?;
        Ok(Chart { kind, from, to, listens, distinct: sum.len() as u64, rows })
    }

    /// Names and main artists of `kind` items, ordered for display: by count, then
    /// name; at most `limit`.
    pub(crate) fn named_rows(&self, kind: Kind, top: Vec<(u32, u64)>, limit: usize) -> Result<Vec<ChartRow>> {
        let names = self.item_names(kind, top.iter().map(|(id, _)| *id))?;
        let artist_ids: Vec<u32> = names.values().filter_map(|i| i.artist).collect();
        let artists = if kind == Kind::Artist { HashMap::new() } else { self.item_names(Kind::Artist, artist_ids)? };
        let mut rows: Vec<ChartRow> = top
            .into_iter()
            .map(|(id, n)| {
                let item = names.get(&id);
                ChartRow {
                    id,
                    name: item.map(|i| i.name.clone()).unwrap_or_default(),
                    artist: item.and_then(|i| i.artist).and_then(|a| artists.get(&a)).map(|a| a.name.clone()),
                    listens: n,
                }
            })
            .collect();
        rows.sort_by(|a, b| b.listens.cmp(&a.listens).then_with(|| a.name.cmp(&b.name)).then(a.id.cmp(&b.id)));
        rows.truncate(limit);
        Ok(rows)
    }

    /// The node's chart: every user whose sharing level allows it (not private), for a
    /// period in the node's time zone, with the number of distinct listeners per item.
    pub fn node_chart(&self, kind: Kind, period: &Period, limit: usize, now: i64, tz: &TimeZone) -> Result<NodeChart> {
        let (from, to) = period::resolve(period, tz, now).map_err(|e| Error::Invalid(e.to_string()))?;
        let mut listens = Summer::new();
        let mut listeners = Summer::new();
        let (mut total, mut contributors) = (0u64, 0u64);
        for user in self.users()? {
            if user.visibility == super::users::SharingLevel::Private {
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
            }
        }
        let top = listens.top_with_ties(limit, MAX_TIES);
        let rows = self
            .named_rows(kind, top, limit)?
            .into_iter()
            .map(|row| NodeChartRow { listeners: listeners.count(row.id), row })
            .collect();
        Ok(NodeChart { kind, from, to, listens: total, listeners: contributors, distinct: listens.len() as u64, rows })
    }

    fn year_hours(&self, user: UserId, year: i32) -> Result<Vec<((u16, u8), u32)>> {
        Ok(self.bucket(&keys::bucket(user, BUCKET_YEAR, year))?.map(|a| a.hours.clone()).unwrap_or_default())
    }

    /// Listens per local day of `user` for the whole local days of `[from, to)`:
    /// `(day number, listens)` for days with listens, ascending.
    fn daily(&self, user: UserId, from: i64, to: i64, tz: &TimeZone) -> Result<Vec<(i32, u64, [u64; 24])>> {
        let first = local_date(from, tz);
        let last = local_date(to.saturating_sub(1).max(from), tz);
        let mut out: BTreeMap<i32, (u64, [u64; 24])> = BTreeMap::new();
        for year in i32::from(first.year())..=i32::from(last.year()) {
            let Ok(jan1) = jiff::civil::Date::new(year as i16, 1, 1) else { continue };
            let base = day_number(jan1);
            for ((doy, hour), n) in self.year_hours(user, year)? {
                let day = base + i32::from(doy) - 1;
                if day < day_number(first) || day > day_number(last) {
                    continue;
                }
                let e = out.entry(day).or_insert((0, [0; 24]));
                e.0 += u64::from(n);
                e.1[usize::from(hour.min(23))] += u64::from(n);
            }
        }
        Ok(out.into_iter().map(|(d, (n, h))| (d, n, h)).collect())
    }

    /// Listens per day, ISO week or month over `period`: `(start day number, listens)`
    /// for every step in the period, zeros included.
    pub fn listens_series(&self, user: UserId, period: &Period, step: Step, now: i64) -> Result<Vec<(i32, u64)>> {
        let tz = self.user_tz(user)?;
        let (from, to) = period::resolve(period, &tz, now).map_err(|e| Error::Invalid(e.to_string()))?;
        let days = self.daily(user, from, to, &tz)?;
        let start_of_step = |day: i32| -> i32 {
            let date = period::date_of(day);
            match step {
                Step::Day => day,
                Step::Week => day - i32::from(date.weekday().to_monday_zero_offset()),
                Step::Month => day_number(date.first_of_month()),
            }
        };
        let first = start_of_step(day_number(local_date(from, &tz)));
        let last = start_of_step(day_number(local_date(to.saturating_sub(1).max(from), &tz)));
        let mut series: BTreeMap<i32, u64> = BTreeMap::new();
        let mut d = first;
        while d <= last {
            series.insert(d, 0);
            d = match step {
                Step::Day => d + 1,
                Step::Week => d + 7,
                Step::Month => day_number(
                    period::date_of(d).checked_add(jiff::Span::new().months(1)).unwrap_or(period::date_of(last + 1)),
                ),
            };
        }
        for (day, n, _) in days {
            *series.entry(start_of_step(day)).or_insert(0) += n;
        }
        Ok(series.into_iter().collect())
    }

    /// The listening clock over `period`: listens by local weekday (Monday = 0) and hour.
    pub fn clock(&self, user: UserId, period: &Period, now: i64) -> Result<[[u64; 24]; 7]> {
        let tz = self.user_tz(user)?;
        let (from, to) = period::resolve(period, &tz, now).map_err(|e| Error::Invalid(e.to_string()))?;
        let mut clock = [[0u64; 24]; 7];
        for (day, _, hours) in self.daily(user, from, to, &tz)? {
            let weekday = usize::try_from(period::date_of(day).weekday().to_monday_zero_offset()).unwrap_or(0);
            for (h, n) in hours.iter().enumerate() {
                clock[weekday][h] += n;
            }
        }
        Ok(clock)
    }

    /// After an unclean stop, counts every user's entries past their stats mark into the
    /// in-memory buckets, so reads are right from the moment the store opens. A user
    /// whose records cannot be read is reported and skipped.
    pub(crate) fn recount_after_crash(&self) -> Result<()> {
        let mut dict: Option<Dictionary> = None;
        for kv in self.trees.userid_loghead.iter() {
            let (k, v) = kv?;
            let counted = keys::parse_user(schema::USERID_LOGHEAD, &k).and_then(|user| {
                let head: super::values::HeadV1 = decode(schema::USERID_LOGHEAD, &k, &v)?;
                let mark = match self.trees.userid_statsmark.get(keys::user(user))? {
                    Some(b) => <[u8; 8]>::try_from(b.as_ref())
                        .map(u64::from_be_bytes)
                        .map_err(|_| Error::corrupt(schema::USERID_STATSMARK, &keys::user(user), "not a u64"))?,
                    None => 0,
                };
                if mark >= head.next_seq {
                    return Ok(());
                }
                if dict.is_none() {
                    dict = Some(Dictionary::load(self, CreditRules::default())?);
                }
                let Some(dict) = dict.as_ref() else { return Ok(()) };
                self.recount_user(user, mark, dict)?;
                tracing::info!(
                    user = user.0,
                    from = mark,
                    to = head.next_seq,
                    "statistics recounted after an unclean stop"
                );
                Ok(())
            });
            if let Err(e) = counted {
                tracing::error!(error = %e, "cannot recount statistics");
            }
        }
        Ok(())
    }

    fn recount_user(&self, user: UserId, mark: u64, dict: &Dictionary) -> Result<()> {
        let tz = self.user_tz(user)?;
        let mut deltas: BTreeMap<[u8; 9], Delta> = BTreeMap::new();
        let start = keys::user_seq(user, mark - mark % BLOCK_ENTRIES);
        for kv in self.trees.userid_seq_block.range(start..=keys::user_seq(user, u64::MAX)) {
            let (k, v) = kv?;
            let (_, first) = keys::parse_user_seq(schema::USERID_SEQ_BLOCK, &k)?;
            let block: BlockV1 = decode(schema::USERID_SEQ_BLOCK, &k, &v)?;
            for (i, e) in block.entries.iter().enumerate() {
                let StoredEntry::Listen { listened_at, track, .. } = e else { continue };
                let Some(credits) = dict.known_credits(*track).filter(|_| first + i as u64 >= mark) else { continue };
                let p = place(user, *listened_at, &tz);
                for (j, key) in p.keys.iter().enumerate() {
                    deltas.entry(*key).or_default().add(credits, 1, (j == 2).then_some(p.slot));
                }
            }
        }
        let mut merged_buckets = Vec::new();
        for (k, delta) in &deltas {
            merged_buckets.push((*k, merged(self.bucket(k)?.as_deref(), delta)));
        }
        let mut hot = self.hot.write().map_err(|_| Error::Invalid("statistics cache poisoned".into()))?;
        for (k, agg) in merged_buckets {
            hot.insert(k, std::sync::Arc::new(agg));
        }
        Ok(())
    }

    /// Recomputes every statistic from the logs: dictionaries, credits, every user's
    /// buckets. The writer must not be running.
    pub fn rebuild_stats(&self, rules: &CreditRules) -> Result<()> {
        for tree in [
            &self.trees.itemchunk_items,
            &self.trees.trackchunk_credits,
            &self.trees.userid_bucket_counts,
            &self.trees.userid_statsmark,
            &self.trees.userid_recording_feedback,
        ] {
            tree.clear()?;
        }
        self.forget_hot(None);
        let mut dict = Dictionary::empty(rules.clone());
        for kv in self.trees.trackchunk_tracks.iter() {
            let (k, v) = kv?;
            let chunk = keys::parse_u32(schema::TRACKCHUNK_TRACKS, &k)?;
            let tracks: TrackChunkV1 = decode(schema::TRACKCHUNK_TRACKS, &k, &v)?;
            for (i, t) in tracks.tracks.iter().enumerate() {
                let id = chunk * TRACK_CHUNK + i as u32;
                if super::compact::is_blank(t) {
                    if dict.credits.len() <= id as usize {
                        dict.credits.resize(id as usize + 1, None);
                    }
                    dict.dirty_credits.insert(chunk);
                } else {
                    dict.credits(id, &t.track);
                }
            }
        }
        for (tree, k, v) in dict.take_writes() {
            if let Some(t) = self.tree(tree) {
                t.insert(k, v)?;
            }
        }
        for user in self.users()? {
            self.rebuild_user_buckets(user.id, &dict)?;
            self.rebuild_user_feedback(user.id, &dict)?;
        }
        self.flush()
    }

    /// Drops in-memory buckets (of one user, or all) that a rebuild or deletion replaced.
    pub(crate) fn forget_hot(&self, user: Option<UserId>) {
        if let Ok(mut hot) = self.hot.write() {
            match user {
                None => hot.clear(),
                Some(u) => hot.retain(|k, _| k[..4] != keys::user(u)),
            }
        }
    }

    /// Recomputes one user's buckets (after a time zone change).
    pub fn rebuild_user_stats(&self, user: UserId) -> Result<()> {
        let dict = Dictionary::load(self, CreditRules::default())?;
        let mut batch = sled::Batch::default();
        for k in self.trees.userid_bucket_counts.scan_prefix(keys::user(user)).keys() {
            batch.remove(k?);
        }
        self.trees.userid_bucket_counts.apply_batch(batch)?;
        self.forget_hot(Some(user));
        self.rebuild_user_buckets(user, &dict)?;
        self.flush()
    }

    fn rebuild_user_feedback(&self, user: UserId, dict: &Dictionary) -> Result<()> {
        let mut current: BTreeMap<[u8; 8], FeedbackV1> = BTreeMap::new();
        for kv in self.trees.userid_seq_block.scan_prefix(keys::user(user)) {
            let (k, v) = kv?;
            let (_, first) = keys::parse_user_seq(schema::USERID_SEQ_BLOCK, &k)?;
            let block: BlockV1 = decode(schema::USERID_SEQ_BLOCK, &k, &v)?;
            for (i, e) in block.entries.iter().enumerate() {
                let (track, score) = match e {
                    StoredEntry::Love { track, .. } => (*track, 1),
                    StoredEntry::Hate { track, .. } => (*track, -1),
                    StoredEntry::Unlove { track, .. } => (*track, 0),
                    _ => continue,
                };
                let Some(credits) = dict.known_credits(track) else { continue };
                let key = keys::user_u32(user, credits.recording);
                if score == 0 {
                    current.remove(&key);
                } else {
                    current.insert(key, FeedbackV1 { score, track, seq: first + i as u64 });
                }
            }
        }
        let mut batch = sled::Batch::default();
        for (k, f) in &current {
            batch.insert(k.to_vec(), encode(f));
        }
        self.trees.userid_recording_feedback.apply_batch(batch)?;
        Ok(())
    }

    /// The user's loves (`score` 1) or hates (-1), newest first, with all-time listens.
    pub fn feedback(&self, user: UserId, score: i8, limit: usize) -> Result<Vec<Feedback>> {
        let mut found = Vec::new();
        for kv in self.trees.userid_recording_feedback.scan_prefix(keys::user(user)) {
            let (k, v) = kv?;
            let (_, recording) = keys::parse_user_u32(schema::USERID_RECORDING_FEEDBACK, &k)?;
            let f: FeedbackV1 = decode(schema::USERID_RECORDING_FEEDBACK, &k, &v)?;
            if f.score == score {
                found.push((recording, f));
            }
        }
        found.sort_by_key(|f| std::cmp::Reverse(f.1.seq));
        found.truncate(limit);
        let tz = self.user_tz(user)?;
        let (all, _) = self.sum_range(user, crate::log::listen::MIN_LISTENED_AT, period::MAX_INSTANT, &tz)?;
        let recordings = &all[Kind::Recording.index()];
        let top: Vec<(u32, u64)> = found.iter().map(|(r, _)| (*r, recordings.count(*r))).collect();
        let rows: HashMap<u32, ChartRow> =
            self.named_rows(Kind::Recording, top, usize::MAX)?.into_iter().map(|r| (r.id, r)).collect();
        Ok(found
            .into_iter()
            .filter_map(|(r, f)| rows.get(&r).map(|row| Feedback { row: row.clone(), score: f.score, seq: f.seq }))
            .collect())
    }

    fn rebuild_user_buckets(&self, user: UserId, dict: &Dictionary) -> Result<()> {
        let tz = self.user_tz(user)?;
        let mut buckets: BTreeMap<[u8; 9], Delta> = BTreeMap::new();
        for kv in self.trees.userid_seq_block.scan_prefix(keys::user(user)) {
            let (k, v) = kv?;
            let block: BlockV1 = decode(schema::USERID_SEQ_BLOCK, &k, &v)?;
            for e in &block.entries {
                let StoredEntry::Listen { listened_at, track, .. } = e else { continue };
                let Some(credits) = dict.known_credits(*track) else { continue };
                let p = place(user, *listened_at, &tz);
                for (i, key) in p.keys.iter().enumerate() {
                    buckets.entry(*key).or_default().add(credits, 1, (i == 2).then_some(p.slot));
                }
            }
        }
        let mut batch = sled::Batch::default();
        for (k, delta) in &buckets {
            batch.insert(k.to_vec(), encode(&merged(None, delta)));
        }
        self.trees.userid_bucket_counts.apply_batch(batch)?;
        let mark = self.log_head(user)?.n_entries;
        self.trees.userid_statsmark.insert(keys::user(user), &mark.to_be_bytes())?;
        Ok(())
    }
}
