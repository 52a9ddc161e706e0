//! Insights over a user's statistics: discoveries, first listens, streaks, weekly rank
//! history, neighbours (similar users) and similar artists. Built on the buckets of
//! `aggregates`; the arithmetic is in `stats::insights`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::aggregates::{Chart, ChartRow, SpelledBy};
use super::keys::{self, BUCKET_DAY, BUCKET_MONTH, BUCKET_YEAR, UserId};
use super::logs::Order;
use super::schema::{self, TRACK_CHUNK};
use super::users::User;
use super::values::CreditChunkV2;
use super::{Error, Result, Store};
use crate::log::listen::MIN_LISTENED_AT;
use crate::stats::chart::Kind;
use crate::stats::insights::{Streaks, cosine, rank_of, streaks, taste};
use crate::stats::period::{self, Period, day_number, local_date, month_number};

/// Neighbours lists by (user, limit), each with the generation it was computed at; the
/// generation moves after every change that can change anyone's list (a group of
/// appends, a sharing level, a deletion: `Store::people_changed`), so a list is served
/// only while nothing changed since. At most `SIMILAR_ENTRIES` lists (past it, emptied).
///
/// It also keeps the ids of the users who may be shown as someone's neighbour
/// (`candidates`), until any account or sharing level changes (`accounts`): reading and
/// decoding every account record per list cost more than comparing the tastes. Only a
/// hint: each user shown is read again and checked against the access policy.
#[derive(Default)]
pub(crate) struct Similar {
    generation: u64,
    lists: HashMap<(UserId, usize), KeptList>,
    accounts: u64,
    candidates: Option<Arc<Vec<UserId>>>,
}

impl Similar {
    fn forget_lists(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        self.lists.clear();
    }
}

/// A neighbours list and the generation it was computed at.
type KeptList = (u64, Arc<Vec<Neighbour>>);

/// The neighbours cache shared by a store's handles.
pub(crate) type SimilarCache = Arc<Mutex<Similar>>;

/// Most neighbours lists kept.
const SIMILAR_ENTRIES: usize = 4_096;

/// Artists in a taste vector.
const TASTE_ARTISTS: usize = 500;

/// Taste vectors by user, valid while the user's log has the same number of entries.
pub(crate) type TasteCache = Arc<Mutex<Bounded<UserId, (u64, Arc<Vec<(u32, f32)>>)>>>;

/// Most vector entries the taste cache holds (8 bytes each: 64 MiB). A taste keeps every
/// artist tied at its cut (never cut by item number), so a vector's length is not
/// bounded by `TASTE_ARTISTS`: the bound is on entries, not users. Enough for every
/// user of a 10,000-user node at the usual 500 artists each, warm.
const MAX_TASTE_ENTRIES: usize = 8 << 20;

/// A map bounded by a total weight: when an insert would pass it, arbitrary other
/// entries go first. (Not LRU: a neighbours query reads every user's vector, so recency
/// says nothing about which is read next; a few lines rather than a cache crate.)
pub(crate) struct Bounded<K, V> {
    map: HashMap<K, (usize, V)>,
    weight: usize,
}

impl<K, V> Default for Bounded<K, V> {
    fn default() -> Self {
        Bounded { map: HashMap::new(), weight: 0 }
    }
}

impl<K: std::hash::Hash + Eq + Copy, V: Clone> Bounded<K, V> {
    fn get(&self, key: &K) -> Option<V> {
        self.map.get(key).map(|(_, v)| v.clone())
    }

    /// Inserts `value` of `weight` (a value heavier than `cap` alone is not kept).
    fn insert(&mut self, cap: usize, key: K, weight: usize, value: V) {
        if let Some((w, _)) = self.map.remove(&key) {
            self.weight -= w;
        }
        if weight > cap {
            return;
        }
        while self.weight + weight > cap {
            let Some(other) = self.map.keys().next().copied() else { break };
            if let Some((w, _)) = self.map.remove(&other) {
                self.weight -= w;
            }
        }
        self.weight += weight;
        self.map.insert(key, (weight, value));
    }
}

/// One week of a rank history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeekRank {
    /// Day number of the week's Monday (local).
    pub monday: i32,
    pub rank: Option<u32>,
    pub listens: u64,
}

/// A similar user.
#[derive(Clone, Debug, PartialEq)]
pub struct Neighbour {
    pub user: User,
    /// Cosine similarity of artist tastes, 0..=1.
    pub similarity: f32,
}

fn invalid(e: impl std::fmt::Display) -> Error {
    Error::Invalid(e.to_string())
}

impl Store {
    /// Items first heard in `period`: in it, and never before it.
    pub fn discoveries(&self, user: UserId, kind: Kind, period: &Period, limit: usize, now: i64) -> Result<Chart> {
        let tz = self.user_tz(user)?;
        let (from, to) = period::resolve(period, &tz, now).map_err(invalid)?;
        let (before, _) = self.sum_range(user, MIN_LISTENED_AT.min(from), from, &tz)?;
        let (during, listens) = self.sum_range(user, from, to, &tz)?;
        let mut fresh = crate::stats::chart::Summer::new();
        for (id, n) in during[kind.index()].all() {
            if before[kind.index()].count(id) == 0 {
                fresh.add(id, n);
            }
        }
        let rows = self.named_rows(kind, fresh.top_with_ties(limit), limit, SpelledBy::User(user))?;
        Ok(Chart { kind, from, to, listens, distinct: fresh.len() as u64, rows })
    }

    /// When `user` first listened to item `id` of `kind` (UTC seconds), if ever.
    pub fn first_listen(&self, user: UserId, kind: Kind, id: u32) -> Result<Option<i64>> {
        self.check_item(kind, id)?;
        let tz = self.user_tz(user)?;
        let Some(oldest) =
            self.listens(user, 0, i64::MAX, 1, Order::OldestFirst)?.first().map(|l| l.listen.listened_at())
        else {
            return Ok(None);
        };
        let newest =
            self.listens(user, 0, i64::MAX, 1, Order::NewestFirst)?.first().map_or(oldest, |l| l.listen.listened_at());
        let has = |key: [u8; 9]| -> Result<bool> {
            Ok(self
                .bucket(&key)?
                .is_some_and(|a| a.counts[kind.index()].binary_search_by_key(&id, |(i, _)| *i).is_ok()))
        };
        let (y0, y1) = (local_date(oldest, &tz).year(), local_date(newest, &tz).year());
        let Some(year) = (y0..=y1).find(|y| has(keys::bucket(user, BUCKET_YEAR, i32::from(*y))).unwrap_or(false))
        else {
            return Ok(None);
        };
        let Some(month) = (1..=12i8).find(|m| {
            jiff::civil::Date::new(year, *m, 1)
                .is_ok_and(|d| has(keys::bucket(user, BUCKET_MONTH, month_number(d))).unwrap_or(false))
        }) else {
            return Ok(None);
        };
        let first_day = jiff::civil::Date::new(year, month, 1).map_err(invalid)?;
        let mut day = first_day;
        while day.month() == month {
            if has(keys::bucket(user, BUCKET_DAY, day_number(day)))? {
                let start = day.to_zoned(tz.clone()).map_err(invalid)?.timestamp().as_second();
                let end =
                    day.tomorrow().map_err(invalid)?.to_zoned(tz.clone()).map_err(invalid)?.timestamp().as_second();
                return self.first_in_day(user, kind, id, start, end);
            }
            day = day.tomorrow().map_err(invalid)?;
        }
        Ok(None)
    }

    fn first_in_day(&self, user: UserId, kind: Kind, id: u32, start: i64, end: i64) -> Result<Option<i64>> {
        let mut first: Option<i64> = None;
        let mut chunks: HashMap<u32, CreditChunkV2> = HashMap::new();
        self.for_each_listen_in(user, start, end, |at, track| {
            let chunk = track / TRACK_CHUNK;
            if let std::collections::hash_map::Entry::Vacant(v) = chunks.entry(chunk) {
                let key = keys::u32_key(chunk);
                let bytes = self.trees.trackchunk_credits.get(key)?;
                v.insert(match bytes {
                    Some(b) => super::codec::decode(schema::TRACKCHUNK_CREDITS, &key, &b)?,
                    None => CreditChunkV2::default(),
                });
            }
            let credited =
                chunks.get(&chunk).and_then(|c| c.tracks.get((track % TRACK_CHUNK) as usize)).and_then(Option::as_ref);
            let hit = credited.is_some_and(|c| match kind {
                Kind::Artist => c.artists.contains(&id),
                Kind::Recording => c.recording == id,
                Kind::Release => c.release == Some(id),
            });
            if hit && first.is_none_or(|f| at < f) {
                first = Some(at);
            }
            Ok(())
        })?;
        Ok(first)
    }

    /// Longest and current daily listening streaks (local days).
    pub fn streaks(&self, user: UserId, now: i64) -> Result<Streaks> {
        let tz = self.user_tz(user)?;
        let days: Vec<i32> = self
            .listens_series(user, &Period::AllTime, super::aggregates::Step::Day, now)?
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(d, _)| d)
            .collect();
        Ok(streaks(&days, day_number(local_date(now, &tz))))
    }

    /// Rank of item `id` in the user's weekly charts, ISO week by ISO week over `period`.
    pub fn rank_history(&self, user: UserId, kind: Kind, id: u32, period: &Period, now: i64) -> Result<Vec<WeekRank>> {
        self.check_item(kind, id)?;
        let tz = self.user_tz(user)?;
        let (from, to) = period::resolve(period, &tz, now).map_err(invalid)?;
        let start = local_date(from, &tz);
        let mut monday =
            start.checked_sub(jiff::Span::new().days(start.weekday().to_monday_zero_offset())).map_err(invalid)?;
        let mut out = Vec::new();
        loop {
            let week_start = monday.to_zoned(tz.clone()).map_err(invalid)?.timestamp().as_second();
            if week_start >= to {
                break;
            }
            let next = monday.checked_add(jiff::Span::new().days(7)).map_err(invalid)?;
            let week_end = next.to_zoned(tz.clone()).map_err(invalid)?.timestamp().as_second();
            let (sums, _) = self.sum_range(user, week_start, week_end, &tz)?;
            let all = sums[kind.index()].all();
            out.push(WeekRank {
                monday: day_number(monday),
                rank: rank_of(&all, id),
                listens: sums[kind.index()].count(id),
            });
            monday = next;
        }
        Ok(out)
    }

    /// A user's artist taste vector (cached until their log changes).
    fn taste_of(&self, user: UserId) -> Result<Arc<Vec<(u32, f32)>>> {
        let entries = self.log_head(user)?.n_entries;
        if let Some((n, v)) = self.tastes.lock().ok().and_then(|c| c.get(&user))
            && n == entries
        {
            return Ok(v);
        }
        let tz = self.user_tz(user)?;
        let (sums, _) = self.sum_range(user, MIN_LISTENED_AT, period::MAX_INSTANT, &tz)?;
        let v = Arc::new(taste(sums[Kind::Artist.index()].all(), TASTE_ARTISTS));
        if let Ok(mut cache) = self.tastes.lock() {
            cache.insert(MAX_TASTE_ENTRIES, user, v.len().max(1), (entries, v.clone()));
        }
        Ok(v)
    }

    /// Users of this node who listen most like `user`, among those the access policy lets
    /// be shown as someone's neighbour (`policy::Purpose::Similarity`: public users).
    pub fn neighbours(&self, user: UserId, limit: usize) -> Result<Vec<Neighbour>> {
        let generation = {
            let cache = self.similar.lock().map_err(|_| Error::Invalid("similar users cache poisoned".into()))?;
            if let Some((at, list)) = cache.lists.get(&(user, limit))
                && *at == cache.generation
            {
                return Ok(list.as_ref().clone());
            }
            cache.generation
        };
        let out = self.neighbours_now(user, limit)?;
        // Kept only if nothing changed while it was computed (the generation moves
        // after a change is visible).
        if let Ok(mut cache) = self.similar.lock()
            && cache.generation == generation
        {
            if cache.lists.len() >= SIMILAR_ENTRIES {
                cache.lists.clear();
            }
            cache.lists.insert((user, limit), (generation, Arc::new(out.clone())));
        }
        Ok(out)
    }

    /// Forgets every neighbours list: called after a change of any log, sharing level
    /// or account is visible to readers.
    pub(crate) fn people_changed(&self) {
        if let Ok(mut cache) = self.similar.lock() {
            cache.forget_lists();
        }
    }

    /// Forgets the neighbour candidates and every list: called after an account is
    /// created, changed or deleted (its level above all) and the change is visible.
    pub(crate) fn accounts_changed(&self) {
        if let Ok(mut cache) = self.similar.lock() {
            cache.accounts = cache.accounts.wrapping_add(1);
            cache.candidates = None;
            cache.forget_lists();
        }
    }

    /// Ids of the users the access policy lets be shown as neighbours (kept until an
    /// account changes; computed again when a change raced the reading).
    fn neighbour_candidates(&self) -> Result<Arc<Vec<UserId>>> {
        let accounts = {
            let cache = self.similar.lock().map_err(|_| Error::Invalid("similar users cache poisoned".into()))?;
            if let Some(c) = &cache.candidates {
                return Ok(c.clone());
            }
            cache.accounts
        };
        let ids: Arc<Vec<UserId>> = Arc::new(
            self.users()?
                .into_iter()
                .filter(|u| crate::policy::counted_exactly(u.visibility, crate::policy::Purpose::Similarity))
                .map(|u| u.id)
                .collect(),
        );
        if let Ok(mut cache) = self.similar.lock()
            && cache.accounts == accounts
        {
            cache.candidates = Some(ids.clone());
        }
        Ok(ids)
    }

    fn neighbours_now(&self, user: UserId, limit: usize) -> Result<Vec<Neighbour>> {
        let mine = self.taste_of(user)?;
        let mut scored: Vec<(f32, UserId)> = Vec::new();
        for &other in self.neighbour_candidates()?.iter() {
            if other == user {
                continue;
            }
            // Deleted since the candidates were read: not a neighbour, not an error.
            let theirs = match self.taste_of(other) {
                Ok(t) => t,
                Err(Error::NoSuchUser(_)) => continue,
                Err(e) => return Err(e),
            };
            let similarity = cosine(&mine, &theirs);
            if similarity > 0.0 {
                scored.push((similarity, other));
            }
        }
        scored.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        // The best, each read again and checked against the policy (the candidates are a
        // hint), and every one tied with the last kept: ties go by name.
        let mut out: Vec<Neighbour> = Vec::new();
        for (similarity, id) in scored {
            if out.len() >= limit && out.last().is_none_or(|last| similarity < last.similarity) {
                break;
            }
            let Some(user) = self.user(id)? else { continue };
            if crate::policy::counted_exactly(user.visibility, crate::policy::Purpose::Similarity) {
                out.push(Neighbour { user, similarity });
            }
        }
        out.sort_by(|a, b| b.similarity.total_cmp(&a.similarity).then_with(|| a.user.name.cmp(&b.user.name)));
        out.truncate(limit);
        Ok(out)
    }

    /// Artists listened to by the same people as `artist` (cosine over the tastes of the
    /// users the access policy lets feed it: `policy::Purpose::Similarity`, public
    /// users). With few users on a node this says little.
    pub fn similar_artists(&self, artist: u32, limit: usize) -> Result<Vec<(ChartRow, f32)>> {
        let mut tastes = Vec::new();
        let mut spelled_by: HashMap<u32, UserId> = HashMap::new();
        for u in self.users()? {
            if crate::policy::counted_exactly(u.visibility, crate::policy::Purpose::Similarity) {
                let taste = self.taste_of(u.id)?;
                for (item, _) in taste.iter() {
                    spelled_by.entry(*item).or_insert(u.id);
                }
                tastes.push(taste);
            }
        }
        let mut dot: HashMap<u32, f32> = HashMap::new();
        let mut norm: HashMap<u32, f32> = HashMap::new();
        let mut mine = 0.0f32;
        for t in &tastes {
            let w_a = t.binary_search_by_key(&artist, |(i, _)| *i).ok().map_or(0.0, |i| t[i].1);
            mine += w_a * w_a;
            for &(b, w_b) in t.iter() {
                *norm.entry(b).or_default() += w_b * w_b;
                if w_a > 0.0 && b != artist {
                    *dot.entry(b).or_default() += w_a * w_b;
                }
            }
        }
        let mut scored: Vec<(u32, f32)> = dot
            .into_iter()
            .map(|(b, d)| (b, d / (mine.sqrt() * norm.get(&b).copied().unwrap_or(1.0).sqrt()).max(f32::MIN_POSITIVE)))
            .collect();
        // Keep the top `limit` and everything tied with the last of them; the tie is
        // broken below by names, not by item ids.
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        if let Some(last) = scored.get(limit.saturating_sub(1)).map(|s| s.1) {
            scored.retain(|s| s.1 >= last);
        }
        let rows = self.named_rows(
            Kind::Artist,
            scored.iter().map(|(id, _)| (*id, 0)).collect(),
            usize::MAX,
            SpelledBy::Each(&spelled_by),
        )?;
        let by_id: HashMap<u32, ChartRow> = rows.into_iter().map(|r| (r.id, r)).collect();
        let mut out: Vec<(ChartRow, f32)> =
            scored.into_iter().filter_map(|(id, s)| by_id.get(&id).map(|r| (r.clone(), s))).collect();
        // Ties by the handle, never the item ids (their order shows what others scrobbled).
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.handle.cmp(&b.0.handle)));
        out.truncate(limit);
        Ok(out)
    }
}

/// One row of a weekly chart from the archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeeklyRow {
    pub row: ChartRow,
    pub rank: u32,
    /// Rank in the week before (None: not listened to that week).
    pub previous_rank: Option<u32>,
    /// First week the user ever listened to it.
    pub new: bool,
}

impl Store {
    /// Fails unless item `id` of `kind` exists on the node.
    pub fn check_item(&self, kind: Kind, id: u32) -> Result<()> {
        let key = keys::kind_chunk(kind.index() as u8, id / schema::ITEM_CHUNK);
        let exists = match self.trees.itemchunk_items.get(key)? {
            None => false,
            Some(bytes) => {
                let chunk: super::values::ItemChunkV2 = super::codec::decode(schema::ITEMCHUNK_ITEMS, &key, &bytes)?;
                // A name compaction blanked is an empty literal.
                chunk.items.get((id % schema::ITEM_CHUNK) as usize).is_some_and(|i| match &i.name {
                    super::values::ItemName::Literal(name) => !name.is_empty(),
                    super::values::ItemName::Spelled { .. } => true,
                })
            }
        };
        if exists {
            Ok(())
        } else {
            let what = match kind {
                Kind::Artist => "artist",
                Kind::Recording => "track",
                Kind::Release => "album",
            };
            Err(Error::Invalid(format!("no such {what}: {id}")))
        }
    }

    /// Listens of item `id` per day, ISO week or month over `period` (whole local days),
    /// zeros included: `(start day number, listens)`.
    pub fn item_series(
        &self,
        user: UserId,
        kind: Kind,
        id: u32,
        period: &Period,
        step: super::aggregates::Step,
        now: i64,
    ) -> Result<Vec<(i32, u64)>> {
        use super::aggregates::Step;
        self.check_item(kind, id)?;
        let tz = self.user_tz(user)?;
        let (from, to) = period::resolve(period, &tz, now).map_err(invalid)?;
        let first = local_date(from, &tz);
        let last = local_date(to.saturating_sub(1).max(from), &tz);
        let start_of = |d: jiff::civil::Date| -> i32 {
            match step {
                Step::Day => day_number(d),
                Step::Week => day_number(d) - i32::from(d.weekday().to_monday_zero_offset()),
                Step::Month => day_number(d.first_of_month()),
            }
        };
        let mut series: std::collections::BTreeMap<i32, u64> = std::collections::BTreeMap::new();
        let mut d = first;
        while d <= last {
            series.entry(start_of(d)).or_insert(0);
            d = d.tomorrow().map_err(invalid)?;
        }
        let count_in = |key: [u8; 9]| -> Result<u64> {
            Ok(self.bucket(&key)?.map_or(0, |a| {
                a.counts[kind.index()]
                    .binary_search_by_key(&id, |(i, _)| *i)
                    .map_or(0, |i| u64::from(a.counts[kind.index()][i].1))
            }))
        };
        if step == Step::Month {
            // Whole months from month buckets; the partial months at the ends day by day.
            let mut m = first.first_of_month();
            while m <= last {
                let next = m.checked_add(jiff::Span::new().months(1)).map_err(invalid)?;
                if m >= first && next <= last.tomorrow().map_err(invalid)? {
                    *series.entry(day_number(m)).or_insert(0) +=
                        count_in(keys::bucket(user, BUCKET_MONTH, month_number(m)))?;
                } else {
                    let mut day = m.max(first);
                    while day < next && day <= last {
                        *series.entry(day_number(m)).or_insert(0) +=
                            count_in(keys::bucket(user, BUCKET_DAY, day_number(day)))?;
                        day = day.tomorrow().map_err(invalid)?;
                    }
                }
                m = next;
            }
        } else {
            // The days with a bucket: stored ones, and those so far only in memory; each
            // is then read once, newest copy first (`count_in` goes through `bucket`).
            let (lo_day, hi_day) = (day_number(first), day_number(last));
            let mut days = std::collections::BTreeSet::new();
            let range = keys::bucket(user, BUCKET_DAY, lo_day)..=keys::bucket(user, BUCKET_DAY, hi_day);
            for k in self.trees.userid_bucket_counts.range(range).keys() {
                days.insert(keys::parse_bucket(schema::USERID_BUCKET_COUNTS, &k?)?.2);
            }
            if let Ok(hot) = self.hot.read() {
                days.extend(
                    hot.keys()
                        .filter_map(|k| keys::parse_bucket(schema::USERID_BUCKET_COUNTS, k).ok())
                        .filter(|(u, g, d)| *u == user && *g == BUCKET_DAY && (lo_day..=hi_day).contains(d))
                        .map(|(_, _, d)| d),
                );
            }
            for day in days {
                *series.entry(start_of(period::date_of(day))).or_insert(0) +=
                    count_in(keys::bucket(user, BUCKET_DAY, day))?;
            }
        }
        Ok(series.into_iter().collect())
    }

    /// The user's chart for one ISO week, with last week's ranks and new entries.
    pub fn weekly_chart(
        &self,
        user: UserId,
        kind: Kind,
        year: i16,
        week: i8,
        limit: usize,
        now: i64,
    ) -> Result<Vec<WeeklyRow>> {
        let tz = self.user_tz(user)?;
        let this = Period::IsoWeek { year, week };
        let (from, to) = period::resolve(&this, &tz, now).map_err(invalid)?;
        let chart = self.chart(user, kind, &this, limit, now)?;
        let (prev, _) = self.sum_range(user, from - 7 * 86_400, from, &tz)?;
        let (before, _) = self.sum_range(user, MIN_LISTENED_AT.min(from), from, &tz)?;
        let prev_all = prev[kind.index()].all();
        let (this_sums, _) = self.sum_range(user, from, to, &tz)?;
        let this_all = this_sums[kind.index()].all();
        Ok(chart
            .rows
            .into_iter()
            .map(|row| WeeklyRow {
                rank: rank_of(&this_all, row.id).unwrap_or(0),
                previous_rank: rank_of(&prev_all, row.id),
                new: before[kind.index()].count(row.id) == 0,
                row,
            })
            .collect())
    }

    /// How many users of the node love the recording, among those the access policy lets
    /// be counted exactly (public users).
    pub fn love_count(&self, recording: u32) -> Result<u64> {
        let mut n = 0;
        for u in self.users()? {
            if !crate::policy::counted_exactly(u.visibility, crate::policy::Purpose::NodeChart) {
                continue;
            }
            if let Some(v) = self.trees.userid_recording_feedback.get(keys::user_u32(u.id, recording))? {
                let f: super::values::FeedbackV1 =
                    super::codec::decode(schema::USERID_RECORDING_FEEDBACK, &keys::user_u32(u.id, recording), &v)?;
                n += u64::from(f.score == 1);
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_taste_cache_stays_within_its_weight() {
        let mut cache: Bounded<u32, u32> = Bounded::default();
        for k in 0..100 {
            cache.insert(50, k, 1 + (k as usize % 7), k);
            assert!(cache.weight <= 50);
            assert_eq!(cache.weight, cache.map.values().map(|(w, _)| *w).sum::<usize>());
            assert_eq!(cache.get(&k), Some(k), "the newest is kept");
        }
        // Replacing a held key counts its new weight only; a value over the cap is not kept.
        let k = *cache.map.keys().next().expect("one");
        cache.insert(50, k, 3, 7);
        assert_eq!(cache.get(&k), Some(7));
        assert_eq!(cache.weight, cache.map.values().map(|(w, _)| *w).sum::<usize>());
        cache.insert(50, 1000, 51, 1);
        assert_eq!(cache.get(&1000), None);
    }
}
