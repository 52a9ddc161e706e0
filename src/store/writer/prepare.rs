//! Turning a batch into log entries inside a group: the duplicate rule against the
//! day index, salts, content hashes and chain links, appends to tail blocks, seals,
//! erasure, and the statistics each change moves.

use std::collections::btree_map;

use crate::log::dedupe::{close_enough, search_secs, window_secs};
use crate::log::entry::BodyRef;
use crate::log::entry::{check_of, content_hash, next_link};
use crate::log::seal::make_seal;
use crate::log::{Body, Listen, Salt};
use crate::store::aggregates::place;
use crate::store::codec::decode;
use crate::store::keys::{self, BUCKET_YEAR, UserId, day_of};
use crate::store::schema::{self, BLOCK_ENTRIES};
use crate::store::values::{BlockV2, DayItem, DayV3, FeedbackV1, StoredEntry};
use crate::store::{Error, Result};

use super::*;

/// Stored block `key` through `cache` (`Writer::read_blocks`), None if there is none.
fn stored_block<'c>(
    cache: &'c mut std::collections::HashMap<[u8; 12], BlockV2>,
    store: &crate::store::Store,
    key: [u8; 12],
) -> Result<Option<&'c BlockV2>> {
    if !cache.contains_key(&key) {
        let Some(bytes) = store.trees.userid_seq_block.get(key)? else { return Ok(None) };
        if cache.len() >= READ_BLOCKS_KEPT {
            cache.clear();
        }
        cache.insert(key, decode(schema::USERID_SEQ_BLOCK, &key, &bytes)?);
    }
    Ok(cache.get(&key))
}

impl Writer {
    /// Prepares `actions` (`digests`: their listens' track digests, `Job::digests`;
    /// computed here where one is missing).
    pub(super) fn prepare(
        &mut self,
        group: &mut Group,
        user: UserId,
        actions: &[Action],
        digests: &[Option<[u8; 16]>],
    ) -> Result<Vec<Outcome>> {
        self.load_user(user)?;
        // The store's blocks change only when a group commits, after its prepares.
        self.read_blocks.clear();
        let mut salts = vec![0u8; 16 * actions.len()];
        getrandom::getrandom(&mut salts).map_err(|e| Error::Random(e.to_string()))?;
        let signed_at = now_secs();
        let mut outcomes = Vec::with_capacity(actions.len());
        for (i, (action, salt)) in actions.iter().zip(salts.chunks_exact(16)).enumerate() {
            let mut s: Salt = [0; 16];
            s.copy_from_slice(salt);
            let outcome = match (action, digests.get(i).copied().flatten()) {
                (Action::Listen(listen), Some(digest)) => {
                    self.listen(group, user, listen, (s, digest), signed_at, true)
                }
                _ => self.prepare_one(group, user, action, s, signed_at),
            };
            outcomes.push(outcome?);
        }
        Ok(outcomes)
    }

    /// `respell_after_erasures` for every user who erased listens in the group, once
    /// each, after all its batches (`commit_group`): a later batch's listens come after
    /// every listen that decides a spelling, so one pass at the end sees what each pass
    /// per batch would. The user whose pass failed, if one did.
    pub(super) fn respell_group(&mut self, group: &mut Group) -> std::result::Result<(), (UserId, Error)> {
        let mut erased: BTreeMap<UserId, BTreeSet<u32>> = BTreeMap::new();
        for (user, track) in std::mem::take(&mut group.erased_tracks) {
            erased.entry(user).or_default().insert(track);
        }
        for (user, tracks) in erased {
            let tracks: Vec<u32> = tracks.into_iter().collect();
            self.respell_after_erasures(group, user, &tracks).map_err(|e| (user, e))?;
        }
        Ok(())
    }

    /// A user's spelling of an item is the one of their first listen of it, as their
    /// log stands (`Store::rebuild_user_spellings` derives it so): after erasing listens
    /// of `tracks`, the spellings of those tracks' items are derived again from the
    /// user's remaining log, this group's changes included. Without it an erased first
    /// listen kept deciding how the user's statistics and the node chart spell the item
    /// (and whether the node chart may show its stored name), and a rebuild disagreed.
    /// O(the user's log) once per group with erasures; stops once every item is decided
    /// (an item no listen left spells otherwise reads the whole log: a bound would need
    /// the deciding listen's seq stored with the spelling). A block that is missing or
    /// does not decode is skipped with a warning: damage elsewhere in a log must not
    /// fail every erasure of its user.
    fn respell_after_erasures(&mut self, group: &mut Group, user: UserId, tracks: &[u32]) -> Result<()> {
        let mut open: BTreeSet<(u8, u32)> = BTreeSet::new();
        for &track in tracks {
            let Some(credits) = self.dict.known_credits(track) else { continue };
            for (kind, item) in credits.items() {
                let key = keys::user_item(user, kind, item);
                let recorded = group.spellings.contains_key(&key)
                    || (!group.unspelled.contains(&key) && self.store.trees.userid_item_spelling.contains_key(key)?);
                // No spelling recorded: every listen of the user spells it as stored.
                if recorded {
                    open.insert((kind, item));
                }
            }
        }
        let mut decided: BTreeMap<(u8, u32), Option<String>> = BTreeMap::new();
        let mut heard: BTreeSet<(u8, u32)> = BTreeSet::new();
        let next_seq = self.users.get(&user).ok_or(Error::WriterGone)?.head.next_seq;
        let mut first = 0;
        while first < next_seq && decided.len() < open.len() {
            let key = keys::user_seq(user, first);
            let state = self.users.get(&user).ok_or(Error::WriterGone)?;
            let block = match (state.tail_first() == Some(first), state.tail.as_ref(), group.blocks.get(&key)) {
                (true, Some(tail), _) => tail.clone(),
                (_, _, Some(b)) => b.clone(),
                _ => {
                    let read = self.store.trees.userid_seq_block.get(key)?;
                    match read.map(|bytes| decode::<BlockV2>(schema::USERID_SEQ_BLOCK, &key, &bytes)) {
                        Some(Ok(block)) => block,
                        damaged => {
                            let error = match damaged {
                                Some(Err(e)) => e.to_string(),
                                _ => "block missing".to_owned(),
                            };
                            tracing::warn!(user = user.0, first, %error, "a log block skipped while deriving spellings");
                            first = first.saturating_add(BLOCK_ENTRIES);
                            continue;
                        }
                    }
                }
            };
            for e in &block.entries {
                let StoredEntry::Listen { track, .. } = e else { continue };
                if self.dict.known_credits(*track).is_none() {
                    let names = self.store.track(*track)?;
                    self.dict.credit_track(*track, &names)?;
                }
                let Some(credits) = self.dict.known_credits(*track) else { continue };
                let variants = self.dict.spellings_of(*track).unwrap_or_default();
                for (kind, item) in credits.items() {
                    if !open.contains(&(kind, item)) || decided.contains_key(&(kind, item)) {
                        continue;
                    }
                    let new = heard.insert((kind, item));
                    if let Some((_, _, name)) = variants.iter().find(|(k, i, _)| (*k, *i) == (kind, item)) {
                        decided.insert((kind, item), new.then(|| name.clone()));
                    }
                }
            }
            first = first.saturating_add(BLOCK_ENTRIES);
        }
        for (kind, item) in open {
            let key = keys::user_item(user, kind, item);
            match decided.remove(&(kind, item)) {
                Some(name) => {
                    group.unspelled.remove(&key);
                    group.spellings.insert(key, name);
                }
                // No listen left spells it otherwise than stored: no record, as a
                // rebuild leaves none (a later listen records afresh).
                None => {
                    group.spellings.remove(&key);
                    group.unspelled.insert(key);
                }
            }
        }
        Ok(())
    }

    pub(super) fn prepare_one(
        &mut self,
        group: &mut Group,
        user: UserId,
        action: &Action,
        salt: Salt,
        now: i64,
    ) -> Result<Outcome> {
        match action {
            Action::Listen(listen) => self.listen(group, user, listen, (salt, track_digest(listen.track())), now, true),
            Action::Adopt(crate::log::Content::Erased { content_hash }) => {
                let hash = *content_hash;
                let seq = self.append_hashed(group, user, Some(hash), None, now, |_, check| StoredEntry::Erased {
                    content_hash: hash,
                    check,
                })?;
                Ok(Outcome::Appended { seq })
            }
            Action::Adopt(crate::log::Content::Present { salt, body }) => match body {
                Body::Listen { track, listened_at, duration_ms, client } => {
                    let listen = Listen::from_parts(track.clone(), *listened_at, *duration_ms, client.clone())
                        .map_err(|e| Error::Invalid(format!("adopted entry: {e}")))?;
                    self.listen(group, user, &listen, (*salt, track_digest(listen.track())), now, false)
                }
                Body::Love(t) => self.prepare_one(group, user, &Action::Love(t.clone()), *salt, now),
                Body::Unlove(t) => self.prepare_one(group, user, &Action::Unlove(t.clone()), *salt, now),
                Body::Hate(t) => self.prepare_one(group, user, &Action::Hate(t.clone()), *salt, now),
                Body::Delete { target } => {
                    let target = *target;
                    let seq = self.append(group, user, body.borrowed(), *salt, now, |salt, check| {
                        StoredEntry::Delete { salt, check, target }
                    })?;
                    Ok(Outcome::Appended { seq })
                }
            },
            Action::Love(track) | Action::Unlove(track) | Action::Hate(track) => {
                let (id, _) = self.intern_track(group, track, track_digest(track))?;
                let score: i8 = match action {
                    Action::Love(_) => 1,
                    Action::Hate(_) => -1,
                    _ => 0,
                };
                let body = match score {
                    1 => BodyRef::Love(track),
                    -1 => BodyRef::Hate(track),
                    _ => BodyRef::Unlove(track),
                };
                let seq = self.append(group, user, body, salt, now, |salt, check| match score {
                    1 => StoredEntry::Love { salt, check, track: id },
                    -1 => StoredEntry::Hate { salt, check, track: id },
                    _ => StoredEntry::Unlove { salt, check, track: id },
                })?;
                let recording = self.dict.known_credits(id).map(|c| c.recording).unwrap_or(u32::MAX);
                let key = keys::user_u32(user, recording);
                let value = (score != 0).then_some(FeedbackV1 { score, track: id, seq });
                group.feedback.insert(key, value);
                Ok(Outcome::Appended { seq })
            }
            Action::Delete { seq: target } => {
                if !self.erase(group, user, *target)? {
                    return Ok(Outcome::NotFound);
                }
                let target = *target;
                let seq = self.append(group, user, BodyRef::Delete { target }, salt, now, |salt, check| {
                    StoredEntry::Delete { salt, check, target }
                })?;
                Ok(Outcome::Appended { seq })
            }
        }
    }

    /// Appends a listen and indexes it; with `dedupe`, a duplicate is dropped instead.
    pub(super) fn listen(
        &mut self,
        group: &mut Group,
        user: UserId,
        listen: &Listen,
        (salt, digest): (Salt, [u8; 16]),
        now: i64,
        dedupe: bool,
    ) -> Result<Outcome> {
        let (track, dkey) = self.intern_track(group, listen.track(), digest)?;
        let at = listen.listened_at();
        if dedupe {
            let window = window_secs(listen.duration_ms());
            let reach = search_secs(window);
            let mut close = Vec::new();
            for day in day_of(at - reach)..=day_of(at + reach) {
                let base = i64::from(day) * 86_400;
                let (bucket, _) = self.day(group, user, day)?;
                let items = bucket.items.iter().map(|i| (base + i64::from(i.sec), i.seq));
                close.extend(items.filter(|(other, _)| close_enough(*other, at, window)).map(|(_, seq)| (day, seq)));
            }
            for (day, seq) in close {
                if self.listen_key(group, user, day, seq)? == Some(dkey) {
                    return Ok(Outcome::Duplicate);
                }
            }
        }
        let client = match &listen.client() {
            Some(name) => self.intern_client(group, name)?,
            None => 0,
        };
        // Hashed from the listen's own parts: no copy of its names.
        let body = BodyRef::Listen {
            track: listen.track(),
            listened_at: at,
            duration_ms: listen.duration_ms(),
            client: listen.client(),
        };
        let duration_ms = listen.duration_ms();
        let seq = self.append(group, user, body, salt, now, |salt, check| StoredEntry::Listen {
            salt,
            check,
            listened_at: at,
            track,
            duration_ms,
            client,
        })?;
        let day = day_of(at);
        let sec = u32::try_from(at - i64::from(day) * 86_400).unwrap_or(0);
        let (bucket, dirty) = self.day(group, user, day)?;
        let item = DayItem { sec, seq };
        let pos = bucket.items.partition_point(|i| *i < item);
        bucket.items.insert(pos, item);
        *dirty = true;
        if let Some(state) = self.users.get_mut(&user) {
            state.head.n_listens += 1;
        }
        self.count(group, user, at, track, 1)?;
        if let Some(info) = listen.info() {
            let first = seq - seq % BLOCK_ENTRIES;
            let slot = (seq - first) as u8;
            group.infos.entry(keys::user_seq(user, first)).or_default().push((slot, Some(info.to_owned())));
        }
        Ok(Outcome::Appended { seq })
    }

    /// The dedupe key of the track of the listen at `seq`, which the day index of `day`
    /// holds: from the user's tail block, a block this group changed, or the store (kept
    /// in `read_blocks` for the rest of the batch: a re-sent backlog asks for every listen
    /// of a block in turn). None, reported, when the index names no live listen: that
    /// damage must not stop the user's every later scrobble near that time.
    fn listen_key(&mut self, group: &Group, user: UserId, day: u32, seq: u64) -> Result<Option<u32>> {
        let first = seq - seq % BLOCK_ENTRIES;
        let key = keys::user_seq(user, first);
        let tail = self.users.get(&user).filter(|s| s.tail_first() == Some(first)).and_then(|s| s.tail.as_ref());
        let block = match tail.or_else(|| group.blocks.get(&key)) {
            Some(block) => block,
            None => match stored_block(&mut self.read_blocks, &self.store, key)? {
                Some(block) => block,
                None => {
                    let damage = Error::corrupt(schema::USERID_SEQ_BLOCK, &key, "indexed block missing");
                    tracing::warn!(error = %damage, seq, "the duplicate rule skips a listen of the day index");
                    return Ok(None);
                }
            },
        };
        let track = match block.entries.get(usize::try_from(seq - first).unwrap_or(usize::MAX)) {
            Some(StoredEntry::Listen { track, .. }) => Some(*track),
            _ => None,
        };
        match track {
            Some(track) => self.track_key(track).map(Some),
            None => {
                let at = keys::user_u32(user, day);
                let damage =
                    Error::corrupt(schema::USERID_DAY_LISTENS, &at, &format!("seq {seq} is not a live listen"));
                tracing::warn!(error = %damage, "the duplicate rule skips a listen of the day index");
                Ok(None)
            }
        }
    }

    pub(super) fn day<'g>(&self, group: &'g mut Group, user: UserId, day: u32) -> Result<&'g mut (DayV3, bool)> {
        let key = keys::user_u32(user, day);
        Ok(match group.days.entry(key) {
            btree_map::Entry::Occupied(o) => o.into_mut(),
            btree_map::Entry::Vacant(v) => {
                let bucket = match self.store.trees.userid_day_listens.get(key)? {
                    Some(bytes) => decode(schema::USERID_DAY_LISTENS, &key, &bytes)?,
                    None => DayV3::default(),
                };
                v.insert((bucket, false))
            }
        })
    }

    /// Adds (`delta` = 1) or removes (-1) a listen to the user's statistics buckets.
    pub(super) fn count(&mut self, group: &mut Group, user: UserId, at: i64, track: u32, delta: i32) -> Result<()> {
        let tz = &self.users.get(&user).ok_or(Error::WriterGone)?.tz;
        let placement = place(user, at, tz);
        if self.dict.known_credits(track).is_none() {
            let names = self.store.track(track)?;
            self.dict.credit_track(track, &names)?;
        }
        let credits =
            self.dict.known_credits(track).ok_or_else(|| Error::Invalid(format!("track {track} has no credits")))?;
        for (i, key) in placement.keys.iter().enumerate() {
            group.aggs.entry(*key).or_default().add(credits, delta, (i == 2).then_some(placement.slot));
        }
        if delta > 0 {
            self.note_spellings(group, user, track)?;
        }
        Ok(())
    }

    /// Records how `user` spells the items of `track` that the track spells otherwise
    /// than their stored names, where the user has no spelling recorded yet: the track's
    /// spelling if this is the user's first listen of the item, else the stored name
    /// (which is then the user's first spelling). So a user's statistics show each item as
    /// that user first spelled it, never as whoever scrobbled it first (`docs/privacy.md`).
    /// Runs after this listen is counted in `group.aggs`.
    fn note_spellings(&self, group: &mut Group, user: UserId, track: u32) -> Result<()> {
        let Some(spellings) = self.dict.spellings_of(track) else { return Ok(()) };
        for (kind, item, name) in spellings {
            let key = keys::user_item(user, *kind, *item);
            if group.spellings.contains_key(&key)
                || (!group.unspelled.contains(&key) && self.store.trees.userid_item_spelling.contains_key(key)?)
            {
                continue;
            }
            let first = self.all_time_count(group, user, *kind, *item)? <= 1;
            group.unspelled.remove(&key);
            group.spellings.insert(key, first.then(|| name.clone()));
        }
        Ok(())
    }

    /// `user`'s all-time listens of an item: stored or in-memory year buckets plus this
    /// group's changes.
    fn all_time_count(&self, group: &Group, user: UserId, kind: u8, item: u32) -> Result<i64> {
        let k = usize::from(kind);
        let mut prefix = keys::user(user).to_vec();
        prefix.push(BUCKET_YEAR);
        let mut years: BTreeSet<[u8; 9]> =
            self.store.user_years(user)?.into_iter().map(|y| keys::bucket(user, BUCKET_YEAR, y)).collect();
        years.extend(group.aggs.keys().filter(|key| key.starts_with(&prefix)));
        let mut n = 0i64;
        for key in &years {
            if let Some(agg) = self.store.bucket(key)?
                && let Some(counts) = agg.counts.get(k)
                && let Ok(i) = counts.binary_search_by_key(&item, |c| c.0)
            {
                n += i64::from(counts[i].1);
            }
            n += group.aggs.get(key).map_or(0, |d| d.count(k, item));
        }
        Ok(n)
    }

    /// Loads the partly filled tail block of `user` into its state if needed.
    pub(super) fn ensure_tail(&mut self, user: UserId) -> Result<()> {
        let store = &self.store;
        let state = self.users.get_mut(&user).ok_or(Error::WriterGone)?;
        if let (Some(first), None) = (state.tail_first(), &state.tail) {
            let key = keys::user_seq(user, first);
            let bytes = store
                .trees
                .userid_seq_block
                .get(key)?
                .ok_or_else(|| Error::corrupt(schema::USERID_SEQ_BLOCK, &key, "tail block missing"))?;
            state.tail = Some(decode(schema::USERID_SEQ_BLOCK, &key, &bytes)?);
        }
        Ok(())
    }

    pub(super) fn append(
        &mut self,
        group: &mut Group,
        user: UserId,
        body: BodyRef<'_>,
        salt: Salt,
        now: i64,
        make: impl FnOnce(Salt, [u8; 4]) -> StoredEntry,
    ) -> Result<u64> {
        self.append_hashed(group, user, None, Some((body, salt)), now, make)
    }

    /// Appends an entry given by its body and salt, or (erased) by its content hash.
    pub(super) fn append_hashed(
        &mut self,
        group: &mut Group,
        user: UserId,
        hash: Option<crate::log::Hash32>,
        content: Option<(BodyRef<'_>, Salt)>,
        now: i64,
        make: impl FnOnce(Salt, [u8; 4]) -> StoredEntry,
    ) -> Result<u64> {
        self.ensure_tail(user)?;
        let state = self.users.get_mut(&user).ok_or(Error::WriterGone)?;
        let seq = state.head.next_seq;
        let (hash, salt) = match (hash, content) {
            (Some(h), _) => (h, [0; 16]),
            (None, Some((body, salt))) => (content_hash(&state.public, seq, &salt, body), salt),
            (None, None) => return Err(Error::Invalid("an entry needs content or a hash".into())),
        };
        let link = next_link(&state.head.link, seq, &hash);
        let tail = state.tail.get_or_insert_with(|| BlockV2 {
            entries: Vec::with_capacity(BLOCK_ENTRIES as usize),
            signed_at: 0,
            sig: ([0; 32], [0; 32]),
        });
        tail.entries.push(make(salt, check_of(&link)));
        state.head.next_seq = seq + 1;
        state.head.link = link;
        state.tail_dirty = true;
        group.heads.insert(user, ());
        if state.head.next_seq % BLOCK_ENTRIES == 0 {
            let first = seq + 1 - BLOCK_ENTRIES;
            if let Some(mut full) = state.tail.take() {
                let seal = make_seal(&state.key, seq, &link, now);
                full.signed_at = seal.signed_at;
                full.set_signature(&seal.signature);
                group.blocks.insert(keys::user_seq(user, first), full);
            }
            state.tail_dirty = false;
        }
        Ok(seq)
    }

    /// Seals the user's tail block if this batch changed it and queues it for writing.
    pub(super) fn finish_user(&mut self, group: &mut Group, user: UserId, now: i64) {
        let Some(state) = self.users.get_mut(&user) else {
            return;
        };
        let (Some(first), Some(tail)) = (state.tail_first(), state.tail.as_mut()) else {
            return;
        };
        if !state.tail_dirty {
            return;
        }
        let last = state.head.next_seq - 1;
        let seal = make_seal(&state.key, last, &state.head.link, now);
        tail.signed_at = seal.signed_at;
        tail.set_signature(&seal.signature);
        group.blocks.insert(keys::user_seq(user, first), tail.clone());
        state.tail_dirty = false;
    }

    /// Replaces the live listen at `target` with its content hash and drops it from the
    /// day index. False when `target` is not a live listen.
    pub(super) fn erase(&mut self, group: &mut Group, user: UserId, target: u64) -> Result<bool> {
        self.ensure_tail(user)?;
        let store = self.store.clone();
        let state = self.users.get_mut(&user).ok_or(Error::WriterGone)?;
        if target >= state.head.next_seq {
            return Ok(false);
        }
        let first = target - target % BLOCK_ENTRIES;
        let key = keys::user_seq(user, first);
        let block: &mut BlockV2 = if state.tail_first() == Some(first) {
            state.tail_dirty = true;
            state.tail.as_mut().ok_or_else(|| Error::corrupt(schema::USERID_SEQ_BLOCK, &key, "tail not loaded"))?
        } else {
            match group.blocks.entry(key) {
                btree_map::Entry::Occupied(o) => o.into_mut(),
                btree_map::Entry::Vacant(v) => {
                    let bytes = store
                        .trees
                        .userid_seq_block
                        .get(key)?
                        .ok_or_else(|| Error::corrupt(schema::USERID_SEQ_BLOCK, &key, "block missing"))?;
                    v.insert(decode(schema::USERID_SEQ_BLOCK, &key, &bytes)?)
                }
            }
        };
        let slot = usize::try_from(target - first).unwrap_or(usize::MAX);
        let Some(StoredEntry::Listen { salt, check, listened_at, track, duration_ms, client }) =
            block.entries.get(slot).cloned()
        else {
            return Ok(false);
        };
        // The names as interned, by this group too (not stored yet: a listen and its
        // delete may come in one batch).
        let body = Body::Listen {
            track: interned_track(&self.open_chunk, &group.track_chunks, &store, track)?,
            listened_at,
            duration_ms,
            client: interned_client(&group.clients, &store, client)?,
        };
        let content_hash = content_hash(&state.public, target, &salt, body.borrowed());
        if let Some(e) = block.entries.get_mut(slot) {
            *e = StoredEntry::Erased { content_hash, check };
        }
        state.head.n_listens = state.head.n_listens.saturating_sub(1);
        group.heads.insert(user, ());
        let (bucket, dirty) = self.day(group, user, day_of(listened_at))?;
        bucket.items.retain(|i| i.seq != target);
        *dirty = true;
        self.count(group, user, listened_at, track, -1)?;
        group.erased_tracks.push((user, track));
        group.has_delete = true;
        group.erased_at.push((user, listened_at));
        group.infos.entry(key).or_default().push((slot as u8, None));
        Ok(true)
    }
}
