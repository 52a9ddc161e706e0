//! Statistics aggregates: chart item dictionaries, per-track credits and per-user
//! bucket counts, maintained on every append and erase, and rebuilt from the logs on
//! demand. The rebuild gives byte-identical trees (tested): aggregates are a pure
//! function of the logs and the track dictionary.
//!
//! Queries (charts, series, the listening clock) sum whole buckets from the plan of
//! `stats::period`, and read the listens of the partial days at a range's ends.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use jiff::tz::TimeZone;

use super::{Error, Result, Store};
use crate::stats::chart::{Kind, Summer};
use crate::stats::period::{self, Bucket, Period, day_number, local_date};
use crate::store::codec::decode;
use crate::store::keys::{self, BUCKET_DAY, BUCKET_MONTH, BUCKET_YEAR, UserId};
use crate::store::schema::{self, BLOCK_ENTRIES, ITEM_CHUNK, TRACK_CHUNK};
use crate::store::values::{AggV2, BlockV2, CreditChunkV2, FeedbackV1, ItemChunkV2, ItemV1, SpellingV1, StoredEntry};

mod delta;
mod dictionary;
mod node;
mod rebuild;
pub(crate) use delta::*;
pub(crate) use dictionary::*;
pub(crate) use node::*;

/// One row of a chart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChartRow {
    /// The node's internal item id: never shown (ids count items in the order the node
    /// first saw them, which says what others scrobbled); links use `handle`.
    pub id: u32,
    /// The item's public handle in links (`item_handle`).
    pub handle: String,
    pub name: String,
    /// The main artist, for recordings and releases.
    pub artist: Option<String>,
    pub listens: u64,
}

/// Whose spellings name the items of a chart (`named_rows`).
pub(crate) enum SpelledBy<'a> {
    /// One user's: their own charts and pages.
    User(UserId),
    /// Per item, the user whose spelling names it (a node chart: a public user who
    /// listened to it). Items not listed keep their stored names.
    Each(&'a HashMap<u32, UserId>),
    /// Per `(kind index, item)`, the user whose spelling names it, main artists
    /// included; items not listed keep their stored names (a node chart from the node
    /// buckets: `node_speller`).
    Items(&'a HashMap<(u8, u32), UserId>),
}

impl SpelledBy<'_> {
    fn of(&self, kind: Kind, item: u32) -> Option<UserId> {
        match self {
            SpelledBy::User(u) => Some(*u),
            SpelledBy::Each(users) => users.get(&item).copied(),
            SpelledBy::Items(users) => users.get(&(kind.index() as u8, item)).copied(),
        }
    }

    /// Who spells the main artist `artist` of item `item` of `kind`.
    fn of_artist(&self, kind: Kind, item: u32, artist: u32) -> Option<UserId> {
        match self {
            SpelledBy::Items(users) => users.get(&(Kind::Artist.index() as u8, artist)).copied(),
            _ => self.of(kind, item),
        }
    }
}

/// blake3 `derive_key` context of item handles.
const ITEM_HANDLE_CONTEXT: &str = "hearsay 2026-12-01 item handle v1";

/// Rows a tie holding the end of the rows a request reads may have before the node
/// chart ends ahead of it (`chart::ranked_len`): a page names at most its end plus this
/// many rows, whatever the tail of the node's chart looks like (a node's items played
/// once in a week can be tens of thousands, each named for each request: about 25 µs a
/// name). A small node's ties of a few hundred are ranked as before.
const NODE_TIE_LIMIT: usize = 2_000;

/// The handle of an item in links: a hash of what identifies it (kind, normalised name,
/// normalised main artist), so a link says which item it is and nothing about when, or
/// whether, anyone else on the node scrobbled it. 16 hex digits; items are looked up by
/// handle among the items of the user whose page it is.
pub fn item_handle(kind: Kind, name: &str, artist: Option<&str>) -> String {
    let mut h = blake3::Hasher::new_derive_key(ITEM_HANDLE_CONTEXT);
    h.update(&[kind.index() as u8]);
    h.update(crate::log::dedupe::normalize_name(name).as_bytes());
    if let Some(a) = artist {
        h.update(&[0x1f]);
        h.update(crate::log::dedupe::normalize_name(a).as_bytes());
    }
    hex::encode(&h.finalize().as_bytes()[..8])
}

/// The node bucket that answers `period` exactly, if one does: `(granularity, number)`.
fn node_bucket_of(period: &Period, now: i64) -> Result<Option<(u8, i32)>> {
    let start = || -> Result<jiff::civil::Date> {
        let (from, _) = period::resolve(period, &TimeZone::UTC, now).map_err(|e| Error::Invalid(e.to_string()))?;
        Ok(local_date(from, &TimeZone::UTC))
    };
    Ok(match period {
        Period::IsoWeek { .. } => Some((keys::BUCKET_WEEK, day_number(start()?))),
        Period::Month { .. } => Some((BUCKET_MONTH, period::month_number(start()?))),
        Period::Year(y) => Some((BUCKET_YEAR, i32::from(*y))),
        Period::AllTime => Some((keys::BUCKET_ALL, 0)),
        _ => None,
    })
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
    /// The track as the user sent it when they gave the feedback.
    pub track: crate::log::TrackRef,
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
    pub(crate) fn bucket(&self, key: &[u8; 9]) -> Result<Option<std::sync::Arc<AggV2>>> {
        if !is_node_key(key) {
            return self.bucket_base(key, None);
        }
        // The memory copy, the pending changes and the stored chunk read under both locks,
        // which a store of node chunks takes to write a chunk and drop its change
        // (`store_node_changes`): each change is seen once, pending or stored.
        let hot = self.hot.read().map_err(|_| Error::Invalid("statistics cache poisoned".into()))?;
        let pending = self.node_pending.read().map_err(|_| Error::Invalid("node changes poisoned".into()))?;
        let base = self.bucket_base(key, Some(&hot))?;
        Ok(match pending.get(key) {
            None => base,
            Some(d) => Some(std::sync::Arc::new(merged(base.as_deref(), d))),
        })
    }

    /// A bucket as the memory copy (`hot`, read here unless given) or the store holds
    /// it, without pending node changes.
    pub(crate) fn bucket_base(
        &self,
        key: &[u8; 9],
        hot: Option<&HashMap<[u8; 9], std::sync::Arc<AggV2>>>,
    ) -> Result<Option<std::sync::Arc<AggV2>>> {
        let held = match hot {
            Some(h) => h.get(key).cloned(),
            None => self.hot.read().ok().and_then(|h| h.get(key).cloned()),
        };
        if let Some(agg) = held {
            return Ok(Some(agg));
        }
        match self.trees.userid_bucket_counts.get(key)? {
            None => Ok(None),
            Some(v) => Ok(Some(std::sync::Arc::new(decode(schema::USERID_BUCKET_COUNTS, key, &v)?))),
        }
    }

    fn credit_chunk(&self, chunk: u32) -> Result<CreditChunkV2> {
        let key = keys::u32_key(chunk);
        match self.trees.trackchunk_credits.get(key)? {
            None => Ok(CreditChunkV2::default()),
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
        let mut blocks: HashMap<u64, BlockV2> = HashMap::new();
        for kv in self.trees.userid_day_listens.range(lo..=hi) {
            let (k, v) = kv?;
            let (_, day) = keys::parse_user_u32(schema::USERID_DAY_LISTENS, &k)?;
            let bucket: super::values::DayV3 = decode(schema::USERID_DAY_LISTENS, &k, &v)?;
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
        let mut chunks: HashMap<u32, CreditChunkV2> = HashMap::new();
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
        let mut chunks: HashMap<u32, ItemChunkV2> = HashMap::new();
        let mut names = NameReader::in_place(self);
        let mut out = HashMap::new();
        for id in ids {
            let chunk = id / ITEM_CHUNK;
            let key = keys::kind_chunk(kind.index() as u8, chunk);
            if let std::collections::hash_map::Entry::Vacant(v) = chunks.entry(chunk) {
                let bytes = self
                    .trees
                    .itemchunk_items
                    .get(key)?
                    .ok_or_else(|| Error::corrupt(schema::ITEMCHUNK_ITEMS, &key, "missing item chunk"))?;
                v.insert(decode(schema::ITEMCHUNK_ITEMS, &key, &bytes)?);
            }
            if let Some(item) = chunks.get(&chunk).and_then(|c| c.items.get((id % ITEM_CHUNK) as usize)) {
                out.insert(id, names.resolve(&key, item.clone())?);
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
        let top = sum.top_with_ties(limit);
        let rows = self.named_rows(kind, top, limit, SpelledBy::User(user))?;
        Ok(Chart { kind, from, to, listens, distinct: sum.len() as u64, rows })
    }

    /// Names and main artists of `kind` items, ordered for display: by count, then
    /// name; at most `limit`. Each item is named as `by` spelled it.
    pub(crate) fn named_rows(
        &self,
        kind: Kind,
        top: Vec<(u32, u64)>,
        limit: usize,
        by: SpelledBy<'_>,
    ) -> Result<Vec<ChartRow>> {
        let names = self.item_names(kind, top.iter().map(|(id, _)| *id))?;
        self.rows_named(kind, top, limit, by, names)
    }

    /// `named_rows` with the items' stored names already read (`item_names`).
    fn rows_named(
        &self,
        kind: Kind,
        top: Vec<(u32, u64)>,
        limit: usize,
        by: SpelledBy<'_>,
        names: HashMap<u32, ItemV1>,
    ) -> Result<Vec<ChartRow>> {
        let artist_ids: Vec<u32> = names.values().filter_map(|i| i.artist).collect();
        let artists = if kind == Kind::Artist { HashMap::new() } else { self.item_names(Kind::Artist, artist_ids)? };
        let spellings = self.spellings(kind, &top, &names, &by)?;
        let spelled = |user: Option<UserId>, kind: Kind, id: u32, stored: &str| -> String {
            user.and_then(|u| spellings.get(&keys::user_item(u, kind.index() as u8, id)))
                .and_then(Clone::clone)
                .unwrap_or_else(|| stored.to_owned())
        };
        let mut rows: Vec<ChartRow> = top
            .into_iter()
            .map(|(id, n)| {
                let item = names.get(&id);
                let name = spelled(by.of(kind, id), kind, id, item.map_or("", |i| i.name.as_str()));
                let artist = item.and_then(|i| i.artist).and_then(|a| {
                    artists.get(&a).map(|stored| spelled(by.of_artist(kind, id, a), Kind::Artist, a, &stored.name))
                });
                ChartRow { id, handle: String::new(), name, artist, listens: n }
            })
            .collect();
        // Ties by name, then main artist: never by item ids, whose order depends on what
        // other users scrobbled first. Equal names and artists are the same identity, so
        // the order is total for named items.
        rows.sort_by(|a, b| {
            b.listens.cmp(&a.listens).then_with(|| a.name.cmp(&b.name)).then_with(|| a.artist.cmp(&b.artist))
        });
        rows.truncate(limit);
        for row in &mut rows {
            row.handle = item_handle(kind, &row.name, row.artist.as_deref());
        }
        Ok(rows)
    }

    /// The spellings (`userid_item_spelling`) that name `top` and their main artists for
    /// `by`: one prefix scan for a single user, point reads per item otherwise.
    fn spellings(
        &self,
        kind: Kind,
        top: &[(u32, u64)],
        names: &HashMap<u32, ItemV1>,
        by: &SpelledBy<'_>,
    ) -> Result<HashMap<[u8; 9], Option<String>>> {
        let mut out = HashMap::new();
        let tree = &self.trees.userid_item_spelling;
        let mut read = |k: &[u8], v: &[u8]| -> Result<()> {
            let spelling: SpellingV1 = decode(schema::USERID_ITEM_SPELLING, k, v)?;
            if let Ok(key) = <[u8; 9]>::try_from(k) {
                out.insert(key, spelling.name);
            }
            Ok(())
        };
        match by {
            SpelledBy::User(user) => {
                let kinds: &[Kind] = if kind == Kind::Artist { &[Kind::Artist] } else { &[kind, Kind::Artist] };
                for k in kinds {
                    let mut prefix = keys::user(*user).to_vec();
                    prefix.push(k.index() as u8);
                    for kv in tree.scan_prefix(prefix) {
                        let (k, v) = kv?;
                        read(&k, &v)?;
                    }
                }
            }
            SpelledBy::Items(users) => {
                for ((k, id), user) in users.iter() {
                    let key = keys::user_item(*user, *k, *id);
                    if let Some(v) = tree.get(key)? {
                        read(&key, &v)?;
                    }
                }
            }
            SpelledBy::Each(users) => {
                for (id, _) in top {
                    let Some(user) = users.get(id) else { continue };
                    let mut wanted = vec![keys::user_item(*user, kind.index() as u8, *id)];
                    if let Some(a) = names.get(id).and_then(|i| i.artist) {
                        wanted.push(keys::user_item(*user, Kind::Artist.index() as u8, a));
                    }
                    for k in wanted {
                        if let Some(v) = tree.get(k)? {
                            read(&k, &v)?;
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// The node's chart: the users the access policy lets be summed into it exactly
    /// (`policy::Purpose::NodeChart`: public users), for a period in the node's time
    /// zone, with the number of distinct listeners per item.
    ///
    /// An ISO week, a month, a year and all time are read from the node buckets
    /// (`aggregates::node`: O(items), each member's listens in their own calendar, as
    /// their profile counts them); other periods (rolling days and months, ranges) sum
    /// the members' buckets over the instants of the period in the node's time zone.
    pub fn node_chart(&self, kind: Kind, period: &Period, limit: usize, now: i64, tz: &TimeZone) -> Result<NodeChart> {
        self.node_chart_page(kind, period, 0..limit, now, tz)
    }

    /// Rows `page` of the node chart (`node_chart`): only the rows of the page and the
    /// rows tied with them are named (`chart::tied_span`), so a page deep in the chart
    /// costs what its first page does (row 900 of 1,000 named every row before it: 50 ms
    /// at 10,000 members).
    pub fn node_chart_page(
        &self,
        kind: Kind,
        period: &Period,
        page: std::ops::Range<usize>,
        now: i64,
        tz: &TimeZone,
    ) -> Result<NodeChart> {
        let (from, to) = period::resolve(period, tz, now).map_err(|e| Error::Invalid(e.to_string()))?;
        if let Some((granularity, number)) = node_bucket_of(period, now)? {
            return self.node_chart_from_buckets(kind, (granularity, number), page, (from, to));
        }
        self.node_chart_by_users(kind, from, to, page)
    }

    /// Rows `page` of a node chart whose top (with ties past `page.end`) is `head`.
    fn node_page(
        &self,
        kind: Kind,
        head: &NodeTop,
        page: std::ops::Range<usize>,
        (from, to): (i64, i64),
        spelled_by: Option<&HashMap<u32, UserId>>,
    ) -> Result<NodeChart> {
        let rows = head.head(page.end);
        let mut all: Vec<(u32, u64)> = rows.iter().map(|&(id, n, _)| (id, n)).collect();
        all.truncate(crate::stats::chart::ranked_len(&all, page.end, NODE_TIE_LIMIT));
        let span = crate::stats::chart::tied_span(&all, page.start, page.end);
        let top = all[span.clone()].to_vec();
        let listeners: HashMap<u32, u64> = rows[span.clone()].iter().map(|&(id, _, l)| (id, l)).collect();
        let named = match spelled_by {
            Some(by) => self.named_rows(kind, top, page.end.saturating_sub(span.start), SpelledBy::Each(by))?,
            None => {
                let (by, names) = self.node_spellers(kind, &top)?;
                self.rows_named(kind, top, page.end.saturating_sub(span.start), SpelledBy::Items(&by), names)?
            }
        };
        let rows = named
            .into_iter()
            .skip(page.start.saturating_sub(span.start))
            .map(|row| NodeChartRow { listeners: listeners.get(&row.id).copied().unwrap_or(0), row })
            .collect();
        Ok(NodeChart {
            kind,
            from,
            to,
            listens: head.total_listens,
            listeners: head.total_listeners,
            distinct: head.distinct,
            rows,
        })
    }

    /// Rows the node cache keeps for the head of the all-time node chart of `kind`
    /// (tests check that its bound holds: `node::bound_last_tie`).
    #[doc(hidden)]
    pub fn cached_node_head_len_for_tests(&self, kind: Kind) -> Result<usize> {
        Ok(self.node_top(kind, keys::BUCKET_ALL, 0, node::CACHED_TOP)?.rows.len())
    }

    /// Item `id`'s row of the all-time node chart, named as `node_chart` names its rows;
    /// None when no member counted in it played the item. Reads the item's chunks only:
    /// O(1) in the node's items, where finding the row in the chart named them all.
    pub fn node_item(&self, kind: Kind, id: u32) -> Result<Option<NodeChartRow>> {
        let (listens, listeners) = self.node_item_counts(kind, keys::BUCKET_ALL, 0, id)?;
        if listens == 0 {
            return Ok(None);
        }
        let top = vec![(id, listens)];
        let (by, names) = self.node_spellers(kind, &top)?;
        let row = self.rows_named(kind, top, 1, SpelledBy::Items(&by), names)?.into_iter().next();
        Ok(row.map(|row| NodeChartRow { listeners, row }))
    }

    /// A node chart from the node buckets.
    fn node_chart_from_buckets(
        &self,
        kind: Kind,
        (granularity, number): (u8, i32),
        page: std::ops::Range<usize>,
        range: (i64, i64),
    ) -> Result<NodeChart> {
        let head = self.node_top(kind, granularity, number, page.end)?;
        self.node_page(kind, &head, page, range, None)
    }

    /// Who spells each of `top` (and their main artists) on a node chart: nobody (the
    /// stored name) when a counted member shows it under that name, else the first
    /// counted member whose own spelling it has. The stored name is the first spelling
    /// the node saw, perhaps a private member's: it is shown only when a counted member
    /// shows it too. With the stored names of `top`, read on the way.
    #[allow(clippy::type_complexity)]
    fn node_spellers(
        &self,
        kind: Kind,
        top: &[(u32, u64)],
    ) -> Result<(HashMap<(u8, u32), UserId>, HashMap<u32, ItemV1>)> {
        let mut wanted: Vec<(Kind, u32)> = top.iter().map(|(id, _)| (kind, *id)).collect();
        let names = self.item_names(kind, top.iter().map(|(id, _)| *id))?;
        if kind != Kind::Artist {
            let mut artists: Vec<u32> = names.values().filter_map(|i| i.artist).collect();
            artists.sort_unstable();
            artists.dedup();
            wanted.extend(artists.into_iter().map(|a| (Kind::Artist, a)));
        }
        let plain = self.shown_plain(&wanted)?;
        // Items no counted member shows under the stored name: someone's own spelling.
        let respelled: BTreeMap<(u8, u32), ()> = wanted
            .into_iter()
            .filter(|item| !plain.contains(item))
            .map(|(k, id)| ((k.index() as u8, id), ()))
            .collect();
        let mut out = HashMap::new();
        if respelled.is_empty() {
            return Ok((out, names));
        }
        let mut counted: Vec<UserId> = self
            .users()?
            .into_iter()
            .filter(|u| crate::policy::counted_exactly(u.visibility, crate::policy::Purpose::NodeChart))
            .map(|u| u.id)
            .collect();
        counted.sort();
        if respelled.len() <= 8 {
            // A few items: point reads, member by member, until one spelled each.
            for &(k, id) in respelled.keys() {
                for user in &counted {
                    let key = keys::user_item(*user, k, id);
                    let own = match self.trees.userid_item_spelling.get(key)? {
                        Some(v) => decode::<SpellingV1>(schema::USERID_ITEM_SPELLING, &key, &v)?.name.is_some(),
                        None => false,
                    };
                    if own {
                        out.insert((k, id), *user);
                        break;
                    }
                }
            }
            return Ok((out, names));
        }
        // Many (a long chart): one pass over the counted members' own spellings, which
        // exist only for items some track spells otherwise, not one per item and member.
        let kinds: BTreeSet<u8> = respelled.keys().map(|(k, _)| *k).collect();
        for user in &counted {
            for k in &kinds {
                let mut prefix = keys::user(*user).to_vec();
                prefix.push(*k);
                for kv in self.trees.userid_item_spelling.scan_prefix(prefix) {
                    let (key, v) = kv?;
                    let Some(id) = key.get(5..9).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(u32::from_be_bytes)
                    else {
                        continue;
                    };
                    if respelled.contains_key(&(*k, id))
                        && !out.contains_key(&(*k, id))
                        && decode::<SpellingV1>(schema::USERID_ITEM_SPELLING, &key, &v)?.name.is_some()
                    {
                        out.insert((*k, id), *user);
                    }
                }
            }
        }
        Ok((out, names))
    }

    /// A node chart summed over the members' buckets for `[from, to)`: O(users) the
    /// first time, kept (`node_range_top`) until a change it counts.
    pub(crate) fn node_chart_by_users(
        &self,
        kind: Kind,
        from: i64,
        to: i64,
        page: std::ops::Range<usize>,
    ) -> Result<NodeChart> {
        let range = self.node_range_top(kind, (from, to), page.end)?;
        self.node_page(kind, &range.top, page, (from, to), Some(&range.spelled_by))
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

    /// The user's feedback on one recording item: 1 loved, -1 hated, `None` neither.
    pub fn feedback_score(&self, user: UserId, recording: u32) -> Result<Option<i8>> {
        let key = keys::user_u32(user, recording);
        match self.trees.userid_recording_feedback.get(key)? {
            Some(v) => Ok(Some(decode::<FeedbackV1>(schema::USERID_RECORDING_FEEDBACK, &key, &v)?.score)),
            None => Ok(None),
        }
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
        let rows: HashMap<u32, ChartRow> = self
            .named_rows(Kind::Recording, top, usize::MAX, SpelledBy::User(user))?
            .into_iter()
            .map(|r| (r.id, r))
            .collect();
        // Named as the user sent the track they loved or hated: a recording loved but never
        // listened to has no spelling of theirs in the statistics.
        let mut out = Vec::new();
        for (r, f) in found {
            let Some(row) = rows.get(&r) else { continue };
            let mut row = row.clone();
            let track = self.track(f.track)?;
            row.name = track.title.clone();
            row.artist = Some(track.artist.clone());
            out.push(Feedback { row, track, score: f.score, seq: f.seq });
        }
        Ok(out)
    }
}
