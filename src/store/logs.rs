//! Reading users' logs: listens by time, entries in order, and whole-log verification.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use super::codec::decode;
use super::keys::{self, UserId, day_of};
use super::schema::{self, BLOCK_ENTRIES, TRACK_CHUNK};
use super::values::{BlockV2, ClientV1, DayV3, HeadV1, StoredEntry, TrackChunkV2};
use super::{Error, Result, Store};
use crate::log::{Body, Content, Listen, Seal, TrackRef, Verified, Verifier, VerifyError};

/// A live listen with its position in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredListen {
    pub seq: u64,
    pub listen: Listen,
}

/// Which way to walk a time range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    OldestFirst,
    NewestFirst,
}

/// Summary of a user's log head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogHead {
    pub n_entries: u64,
    pub n_listens: u64,
    pub head: [u8; 32],
}

/// Resolves interned ids while reading, so each name is decoded once per read.
#[derive(Default)]
struct Names {
    chunks: HashMap<u32, TrackChunkV2>,
    clients: HashMap<u32, Option<String>>,
}

impl Names {
    fn track(&mut self, store: &Store, id: u32) -> Result<TrackRef> {
        let chunk = id / TRACK_CHUNK;
        let tracks = match self.chunks.entry(chunk) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => v.insert(store.track_chunk(chunk)?),
        };
        tracks
            .tracks
            .get((id % TRACK_CHUNK) as usize)
            .cloned()
            .ok_or_else(|| Error::corrupt(schema::TRACKCHUNK_TRACKS, &keys::u32_key(chunk), "track id past the chunk"))
    }

    fn client(&mut self, store: &Store, id: u32) -> Result<Option<String>> {
        if let Some(c) = self.clients.get(&id) {
            return Ok(c.clone());
        }
        let c = store.client_name(id)?;
        self.clients.insert(id, c.clone());
        Ok(c)
    }

    fn content(&mut self, store: &Store, entry: &StoredEntry) -> Result<Content> {
        Ok(match entry {
            StoredEntry::Listen { salt, listened_at, track, duration_ms, client, .. } => Content::Present {
                salt: *salt,
                body: Body::Listen {
                    track: self.track(store, *track)?,
                    listened_at: *listened_at,
                    duration_ms: *duration_ms,
                    client: self.client(store, *client)?,
                },
            },
            StoredEntry::Love { salt, track, .. } => {
                Content::Present { salt: *salt, body: Body::Love(self.track(store, *track)?) }
            }
            StoredEntry::Unlove { salt, track, .. } => {
                Content::Present { salt: *salt, body: Body::Unlove(self.track(store, *track)?) }
            }
            StoredEntry::Hate { salt, track, .. } => {
                Content::Present { salt: *salt, body: Body::Hate(self.track(store, *track)?) }
            }
            StoredEntry::Delete { salt, target, .. } => {
                Content::Present { salt: *salt, body: Body::Delete { target: *target } }
            }
            StoredEntry::Erased { content_hash, .. } => Content::Erased { content_hash: *content_hash },
        })
    }
}

/// Each user's newest listen time, for the home page's "recently, from public
/// profiles" (`Store::users_by_newest_listen`): built from the day index on first use,
/// then raised by the writer after each group (`Store::note_newest_listens`), read
/// again from the day index for a user whose listens a group erased, and dropped with
/// a deleted account: each time is the user's newest live listen. Memory: one entry per
/// user who has listened.
#[derive(Default)]
pub(crate) struct NewestListens {
    by_user: HashMap<UserId, i64>,
    order: std::collections::BTreeSet<(std::cmp::Reverse<i64>, UserId)>,
}

impl NewestListens {
    /// Sets a user's time (`None`: no live listen, or no account).
    fn set(&mut self, user: UserId, at: Option<i64>) {
        if let Some(old) = self.by_user.remove(&user) {
            self.order.remove(&(std::cmp::Reverse(old), user));
        }
        if let Some(at) = at {
            self.by_user.insert(user, at);
            self.order.insert((std::cmp::Reverse(at), user));
        }
    }

    /// Sets a user's time if `at` is newer.
    fn raise(&mut self, user: UserId, at: i64) {
        if self.by_user.get(&user).is_none_or(|old| *old < at) {
            self.set(user, Some(at));
        }
    }
}

/// When the newest listen of a day bucket (`day` its UTC day number) was played.
pub(crate) fn newest_in_day(day: u32, bucket: &DayV3) -> Option<i64> {
    bucket.items.last().map(|item| i64::from(day) * 86_400 + i64::from(item.sec))
}

/// The index shared by a store's handles (`None` until first asked).
pub(crate) type NewestIndex = std::sync::Arc<std::sync::RwLock<Option<NewestListens>>>;

impl Store {
    /// Every user who has listened, newest listen first: `(time of their newest live
    /// listen, user)` (a deleted account may remain until the writer drops it: the
    /// caller looks each user up). Built from the day index at the first call (one read
    /// per user; a user whose index cannot be read is left out and logged, not the
    /// page), kept up by the writer since.
    pub fn users_by_newest_listen(&self) -> Result<Vec<(i64, UserId)>> {
        // A panic while building left the index unbuilt (it is set only at the end):
        // a poisoned lock is taken over, not a page broken until a restart.
        let ordered = |i: &NewestListens| i.order.iter().map(|(at, u)| (at.0, *u)).collect();
        if let Some(index) = self.newest.read().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref() {
            return Ok(ordered(index));
        }
        // Built under the write lock: a group committed meanwhile is either read here
        // or noted by the writer once the lock is free (`note_newest_listens`).
        let mut guard = self.newest.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.is_none() {
            let mut index = NewestListens::default();
            for user in self.users()? {
                match self.newest_listen_at(user.id) {
                    Ok(Some(at)) => index.raise(user.id, at),
                    Ok(None) => {}
                    Err(e) => tracing::error!(error = %e, "reading a user's newest listen for the home page"),
                }
            }
            *guard = Some(index);
        }
        Ok(guard.as_ref().map(ordered).unwrap_or_default())
    }

    /// After a group (the writer): raises users' newest listen times, and sets those of
    /// `exact` (users whose listens it erased, read again; `None` for none left).
    /// Nothing to keep up before the index is first built.
    pub(crate) fn note_newest_listens(
        &self,
        newest: &std::collections::BTreeMap<UserId, i64>,
        exact: &[(UserId, Option<i64>)],
    ) {
        let mut guard = self.newest.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(index) = guard.as_mut() {
            for (user, at) in newest {
                index.raise(*user, *at);
            }
            for (user, at) in exact {
                index.set(*user, *at);
            }
        }
    }

    /// The chunk of interned tracks holding `id`.
    pub(crate) fn track_chunk(&self, chunk: u32) -> Result<TrackChunkV2> {
        let key = keys::u32_key(chunk);
        let bytes = self
            .trees
            .trackchunk_tracks
            .get(key)?
            .ok_or_else(|| Error::corrupt(schema::TRACKCHUNK_TRACKS, &key, "missing track chunk"))?;
        decode(schema::TRACKCHUNK_TRACKS, &key, &bytes)
    }

    /// The interned track `id`.
    pub(crate) fn track(&self, id: u32) -> Result<TrackRef> {
        let chunk = self.track_chunk(id / TRACK_CHUNK)?;
        chunk.tracks.get((id % TRACK_CHUNK) as usize).cloned().ok_or_else(|| {
            Error::corrupt(schema::TRACKCHUNK_TRACKS, &keys::u32_key(id / TRACK_CHUNK), "track id past the chunk")
        })
    }

    /// The interned client `id` (0 means none).
    pub(crate) fn client_name(&self, id: u32) -> Result<Option<String>> {
        if id == 0 {
            return Ok(None);
        }
        let key = keys::u32_key(id);
        let bytes = self
            .trees
            .clientid_clientname
            .get(key)?
            .ok_or_else(|| Error::corrupt(schema::CLIENTID_CLIENTNAME, &key, "missing client"))?;
        Ok(Some(decode::<ClientV1>(schema::CLIENTID_CLIENTNAME, &key, &bytes)?.name))
    }

    /// The head of `user`'s log.
    pub fn log_head(&self, user: UserId) -> Result<LogHead> {
        let key = keys::user(user);
        Ok(match self.trees.userid_loghead.get(key)? {
            None => LogHead { n_entries: 0, n_listens: 0, head: [0; 32] },
            Some(bytes) => {
                let h: HeadV1 = decode(schema::USERID_LOGHEAD, &key, &bytes)?;
                LogHead { n_entries: h.next_seq, n_listens: h.n_listens, head: h.link }
            }
        })
    }

    fn block(&self, user: UserId, first: u64) -> Result<Option<BlockV2>> {
        let key = keys::user_seq(user, first);
        match self.trees.userid_seq_block.get(key)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(decode(schema::USERID_SEQ_BLOCK, &key, &bytes)?)),
        }
    }

    /// Live listens with `from <= listened_at < to`, at most `limit`, in `order`.
    pub fn listens(&self, user: UserId, from: i64, to: i64, limit: usize, order: Order) -> Result<Vec<StoredListen>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        self.each_listen(user, from, to, order, |l| {
            out.push(l);
            Ok(out.len() < limit)
        })?;
        Ok(out)
    }

    /// When the user's newest live listen was played (from the day index, newest day
    /// first: no listen decoded), `None` without any.
    pub fn newest_listen_at(&self, user: UserId) -> Result<Option<i64>> {
        let lo = keys::user_u32(user, 0);
        let hi = keys::user_u32(user, u32::MAX);
        for kv in self.trees.userid_day_listens.range(lo..=hi).rev() {
            let (k, v) = kv?;
            let (_, day) = keys::parse_user_u32(schema::USERID_DAY_LISTENS, &k)?;
            let bucket: DayV3 = decode(schema::USERID_DAY_LISTENS, &k, &v)?;
            // The writer removes emptied buckets; an empty one is skipped all the same.
            if let Some(at) = newest_in_day(day, &bucket) {
                return Ok(Some(at));
            }
        }
        Ok(None)
    }

    /// How many live listens have `from <= listened_at < to`, counted from the day
    /// index without reading a listen (memory does not grow with the range).
    pub fn count_listens(&self, user: UserId, from: i64, to: i64) -> Result<u64> {
        // The day index holds exactly the live listens (an erasure takes its item out):
        // counted there, without reading a block of the log.
        if from >= to {
            return Ok(0);
        }
        let lo = keys::user_u32(user, day_of(from.max(0)));
        let hi = keys::user_u32(user, day_of(to.max(1) - 1));
        let mut n = 0u64;
        for kv in self.trees.userid_day_listens.range(lo..=hi) {
            let (k, v) = kv?;
            let (_, day) = keys::parse_user_u32(schema::USERID_DAY_LISTENS, &k)?;
            let bucket: DayV3 = decode(schema::USERID_DAY_LISTENS, &k, &v)?;
            let base = i64::from(day) * 86_400;
            let inside = bucket.items.iter().filter(|i| (from..to).contains(&(base + i64::from(i.sec))));
            n = n.saturating_add(u64::try_from(inside.count()).unwrap_or(u64::MAX));
        }
        Ok(n)
    }

    /// Calls `f` with every live listen with `from <= listened_at < to`, in `order`,
    /// holding one day of the index at a time; stops when `f` returns `Ok(false)`.
    pub fn each_listen(
        &self,
        user: UserId,
        from: i64,
        to: i64,
        order: Order,
        f: impl FnMut(StoredListen) -> Result<bool>,
    ) -> Result<()> {
        self.each_listen_but(user, from, to, order, |_, _| false, f)
    }

    /// As `each_listen`, leaving out the listens for which `skip(listened_at, seq)` holds,
    /// decided from the index before any listen is read (a history cursor leaves out the
    /// listens of its own second on its side without decoding them).
    pub fn each_listen_but(
        &self,
        user: UserId,
        from: i64,
        to: i64,
        order: Order,
        skip: impl Fn(i64, u64) -> bool,
        mut f: impl FnMut(StoredListen) -> Result<bool>,
    ) -> Result<()> {
        if from >= to {
            return Ok(());
        }
        let lo = keys::user_u32(user, day_of(from.max(0)));
        let hi = keys::user_u32(user, day_of(to.max(1) - 1));
        let range = self.trees.userid_day_listens.range(lo..=hi);
        let days: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = match order {
            Order::OldestFirst => Box::new(range),
            Order::NewestFirst => Box::new(range.rev()),
        };
        let mut names = Names::default();
        let mut blocks: HashMap<u64, BlockV2> = HashMap::new();
        for kv in days {
            let (k, v) = kv?;
            let (_, day) = keys::parse_user_u32(schema::USERID_DAY_LISTENS, &k)?;
            let bucket: DayV3 = decode(schema::USERID_DAY_LISTENS, &k, &v)?;
            let base = i64::from(day) * 86_400;
            let items: Box<dyn Iterator<Item = _>> = match order {
                Order::OldestFirst => Box::new(bucket.items.iter()),
                Order::NewestFirst => Box::new(bucket.items.iter().rev()),
            };
            for item in items {
                let at = base + i64::from(item.sec);
                if at < from || at >= to || skip(at, item.seq) {
                    continue;
                }
                let first = item.seq - item.seq % BLOCK_ENTRIES;
                let block = match blocks.entry(first) {
                    Entry::Occupied(o) => o.into_mut(),
                    Entry::Vacant(v) => v.insert(self.block(user, first)?.ok_or_else(|| {
                        Error::corrupt(schema::USERID_SEQ_BLOCK, &keys::user_seq(user, first), "indexed block missing")
                    })?),
                };
                let entry = block.entries.get(usize::try_from(item.seq - first).unwrap_or(usize::MAX));
                let Some(entry) = entry else {
                    return Err(Error::corrupt(schema::USERID_DAY_LISTENS, &k, "points past its block"));
                };
                if let Content::Present { body: Body::Listen { track, listened_at, duration_ms, client }, .. } =
                    names.content(self, entry)?
                {
                    let listen = Listen::from_parts(track, listened_at, duration_ms, client).map_err(|e| {
                        Error::corrupt(schema::USERID_SEQ_BLOCK, &keys::user_seq(user, first), &e.to_string())
                    })?;
                    if !f(StoredListen { seq: item.seq, listen })? {
                        return Ok(());
                    }
                }
            }
            // Blocks of earlier days are not needed again (days are in order).
            if blocks.len() > 64 {
                blocks.clear();
            }
        }
        Ok(())
    }

    /// The extra client metadata (`Listen::info`) of those of `seqs` that have any.
    pub fn listen_infos(&self, user: UserId, seqs: &[u64]) -> Result<HashMap<u64, String>> {
        let mut out = HashMap::new();
        let mut blocks: HashMap<u64, Option<super::values::InfoBlockV1>> = HashMap::new();
        for &seq in seqs {
            let first = seq - seq % BLOCK_ENTRIES;
            if let Entry::Vacant(v) = blocks.entry(first) {
                let key = keys::user_seq(user, first);
                v.insert(match self.trees.userid_seq_info.get(key)? {
                    Some(bytes) => Some(decode(schema::USERID_SEQ_INFO, &key, &bytes)?),
                    None => None,
                });
            }
            let slot = (seq - first) as u8;
            if let Some(Some(block)) = blocks.get(&first)
                && let Some((_, info)) = block.items.iter().find(|(s, _)| *s == slot)
            {
                out.insert(seq, info.clone());
            }
        }
        Ok(out)
    }

    /// Calls `f` with each block of `user`'s log in seq order: its first seq, its
    /// entries resolved (with their 4-byte checks), and its seal.
    pub fn each_log_block(
        &self,
        user: UserId,
        mut f: impl FnMut(u64, Vec<(Content, [u8; 4])>, Seal) -> Result<()>,
    ) -> Result<()> {
        let mut names = Names::default();
        for kv in self.trees.userid_seq_block.scan_prefix(keys::user(user)) {
            let (k, v) = kv?;
            let (_, first) = keys::parse_user_seq(schema::USERID_SEQ_BLOCK, &k)?;
            let block: BlockV2 = decode(schema::USERID_SEQ_BLOCK, &k, &v)?;
            let mut entries = Vec::with_capacity(block.entries.len());
            for e in &block.entries {
                entries.push((names.content(self, e)?, e.check()));
            }
            f(first, entries, Seal { signed_at: block.signed_at, signature: block.signature() })?;
        }
        Ok(())
    }

    /// The time a love or a hate at log entry `seq` is shown with: the log records no
    /// time for feedback, so it is the start of the listen recorded just before it in the log
    /// (still present) — the feedback came after that listen was recorded. Not a block's
    /// seal time: the open block is resealed at every write, so that would tell when the
    /// user last wrote anything (a deletion included). Looks back at most 8 blocks;
    /// `None` if no listen is found.
    pub fn feedback_time(&self, user: UserId, seq: u64) -> Result<Option<i64>> {
        let mut first = seq - seq % schema::BLOCK_ENTRIES;
        let mut end = seq;
        for _ in 0..8 {
            let key = keys::user_seq(user, first);
            if let Some(v) = self.trees.userid_seq_block.get(key)? {
                let block: BlockV2 = decode(schema::USERID_SEQ_BLOCK, &key, &v)?;
                let upto = usize::try_from(end - first).unwrap_or(usize::MAX).min(block.entries.len());
                let found = block.entries[..upto].iter().rev().find_map(|e| match e {
                    super::values::StoredEntry::Listen { listened_at, .. } => Some(*listened_at),
                    _ => None,
                });
                if found.is_some() {
                    return Ok(found);
                }
            }
            if first == 0 {
                break;
            }
            end = first;
            first -= schema::BLOCK_ENTRIES;
        }
        Ok(None)
    }

    /// Every entry of `user`'s log in seq order, resolved (erased ones as their hash).
    pub fn entries(&self, user: UserId) -> Result<Vec<(u64, Content)>> {
        let mut names = Names::default();
        let mut out = Vec::new();
        for kv in self.trees.userid_seq_block.scan_prefix(keys::user(user)) {
            let (k, v) = kv?;
            let (_, first) = keys::parse_user_seq(schema::USERID_SEQ_BLOCK, &k)?;
            let block: BlockV2 = decode(schema::USERID_SEQ_BLOCK, &k, &v)?;
            for (i, e) in block.entries.iter().enumerate() {
                out.push((first + i as u64, names.content(self, e)?));
            }
        }
        Ok(out)
    }

    /// Recomputes `user`'s whole chain and checks every seal. The outer error is a
    /// database failure; the inner one the first problem found in the log.
    pub fn verify_log(&self, user: UserId) -> Result<Result<Verified, VerifyError>> {
        let Some(u) = self.user(user)? else {
            return Err(Error::NoSuchUser(format!("#{}", user.0)));
        };
        let mut verifier = match Verifier::new(&u.public_key) {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        };
        let mut names = Names::default();
        let mut expected_first = 0u64;
        for kv in self.trees.userid_seq_block.scan_prefix(keys::user(user)) {
            let (k, v) = kv?;
            let first = match keys::parse_user_seq(schema::USERID_SEQ_BLOCK, &k) {
                Ok((_, first)) => first,
                Err(e) => {
                    verifier.unreadable(expected_first, e.to_string());
                    continue;
                }
            };
            expected_first = first + BLOCK_ENTRIES;
            let block: BlockV2 = match decode(schema::USERID_SEQ_BLOCK, &k, &v) {
                Ok(b) => b,
                Err(e) => {
                    verifier.unreadable(first, e.to_string());
                    continue;
                }
            };
            let mut last = None;
            for (i, entry) in block.entries.iter().enumerate() {
                let seq = first + i as u64;
                match names.content(self, entry) {
                    Ok(content) => verifier.entry(seq, &content, entry.check()),
                    Err(e) => verifier.unreadable(seq, e.to_string()),
                }
                last = Some(seq);
            }
            if let Some(seq) = last {
                verifier.seal(seq, Seal { signed_at: block.signed_at, signature: block.signature() });
            }
        }
        let head = self.log_head(user)?;
        let result = verifier.finish();
        // The head record must agree with the chain it summarises.
        if let Ok(v) = &result
            && (v.n_entries != head.n_entries || (v.n_entries > 0 && v.head != head.head))
        {
            return Ok(Err(VerifyError::Entry { seq: head.n_entries.min(v.n_entries) }));
        }
        Ok(result)
    }
}
