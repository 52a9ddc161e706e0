//! The ingest path: one writer thread that appends to users' logs with group commit.
//!
//! Every API and importer calls `Ingestor::ingest` with a batch of actions for one user.
//! The writer takes the first waiting batch and every other batch already queued (up to
//! `max_group_listens`), and for the whole group, in one sled transaction: drops
//! duplicates (`log::dedupe`), interns track and client names, appends entries to the
//! users' chains, seals every block it touched with the user's key, updates the day
//! index and the heads. It then flushes once and only then answers every batch in the
//! group, so an acknowledged batch is durable and concurrent small batches share one
//! fsync. A single writer also means a user's chain has exactly one appender.
//!
//! If preparing one batch fails (unknown user, corrupt record), only that batch gets the
//! error: the caches are dropped and the rest of the group is prepared again from disk.

use std::collections::{BTreeMap, BTreeSet, HashMap, btree_map};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use ed25519_dalek::SigningKey;
use sled::Transactional;
use tokio::sync::{mpsc, oneshot};

use super::aggregates::{Delta, Dictionary, merged, place};
use super::codec::{decode, encode};
use super::keys::{self, UserId, day_of};
use super::schema::{self, BLOCK_ENTRIES, TRACK_CHUNK};
use super::values::{
    AggV1, BlockV1, ClientV1, DayItem, DayV1, FeedbackV1, HeadV1, InfoBlockV1, StoredEntry, TrackChunkV1, TrackV1,
};
use super::{Error, Result, Store};
use crate::log::dedupe::{dedupe_key, is_duplicate, search_secs, window_secs};
use crate::log::entry::{check_of, content_hash, genesis_link, next_link};
use crate::log::seal::make_seal;
use crate::log::{Body, Listen, Salt, TrackRef};
use crate::stats::credits::CreditRules;

/// One thing to append to a user's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Listen(Listen),
    Love(TrackRef),
    /// Clears a love or hate.
    Unlove(TrackRef),
    Hate(TrackRef),
    /// Erase the listen at this seq and append a tombstone for it.
    Delete {
        seq: u64,
    },
    /// Append an entry of a verified log brought from another node, exactly (its salt,
    /// or only its hash when erased), without the duplicate rule: the chain must stay
    /// the one that was verified. A tombstone is kept as it is (its target arrives
    /// already erased).
    Adopt(crate::log::Content),
}

/// What became of one action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Appended as entry `seq`.
    Appended { seq: u64 },
    /// A listen that duplicates one already in the log (or earlier in the batch).
    Duplicate,
    /// A delete of an entry that is not a live listen.
    NotFound,
}

struct Job {
    user: UserId,
    actions: Vec<Action>,
    reply: oneshot::Sender<Result<Vec<Outcome>>>,
}

enum Msg {
    Job(Job),
    /// Delete a user and everything stored under them, in order with appends.
    DeleteUser(UserId, oneshot::Sender<Result<u64>>),
    /// Change a user's time zone and recount their statistics, in order with appends.
    SetTimezone(UserId, String, oneshot::Sender<Result<()>>),
    Stop,
}

/// Handle to the writer thread; clone it freely.
#[derive(Clone)]
pub struct Ingestor {
    tx: mpsc::Sender<Msg>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    stats: Arc<Counters>,
}

/// Running totals of the writer, for the admin page and tests.
#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    groups: AtomicU64,
}

/// A snapshot of the writer's totals since start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IngestStats {
    /// Batches acknowledged.
    pub batches: u64,
    /// Group commits (= flushes) that carried them.
    pub groups: u64,
}

/// Most batches waiting for the writer before senders wait.
const QUEUE_DEPTH: usize = 1024;

impl Ingestor {
    /// Starts the writer thread over `store`.
    pub fn start(store: Store, max_group_listens: usize, rules: CreditRules) -> Result<Ingestor> {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let stats = Arc::new(Counters::default());
        let mut writer = Writer::new(store, max_group_listens.max(1), stats.clone(), rules)?;
        let thread = std::thread::Builder::new()
            .name("hearsay-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| Error::Db(sled::Error::Io(e)))?;
        Ok(Ingestor { tx, thread: Arc::new(Mutex::new(Some(thread))), stats })
    }

    /// Deletes a user and all their data through the writer, so no append for them can
    /// race the deletion. Returns the number of records removed.
    pub async fn delete_user(&self, user: UserId) -> Result<u64> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::DeleteUser(user, reply)).await.map_err(|_| Error::WriterGone)?;
        rx.await.map_err(|_| Error::WriterGone)?
    }

    /// Changes a user's time zone through the writer (their statistics are recounted in
    /// it, in order with appends).
    pub async fn set_timezone(&self, user: UserId, tz: &str) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::SetTimezone(user, tz.to_owned(), reply)).await.map_err(|_| Error::WriterGone)?;
        rx.await.map_err(|_| Error::WriterGone)?
    }

    /// Totals since the writer started.
    pub fn stats(&self) -> IngestStats {
        IngestStats {
            batches: self.stats.batches.load(Ordering::Relaxed),
            groups: self.stats.groups.load(Ordering::Relaxed),
        }
    }

    /// Appends `actions` to `user`'s log; returns once they are durable on disk.
    pub async fn ingest(&self, user: UserId, actions: Vec<Action>) -> Result<Vec<Outcome>> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Job(Job { user, actions, reply })).await.map_err(|_| Error::WriterGone)?;
        rx.await.map_err(|_| Error::WriterGone)?
    }

    /// As `ingest`, for callers outside an async runtime (CLI, benchmarks).
    pub fn ingest_blocking(&self, user: UserId, actions: Vec<Action>) -> Result<Vec<Outcome>> {
        let (reply, rx) = oneshot::channel();
        self.tx.blocking_send(Msg::Job(Job { user, actions, reply })).map_err(|_| Error::WriterGone)?;
        rx.blocking_recv().map_err(|_| Error::WriterGone)?
    }

    /// Finishes every queued batch, flushes, and stops the thread. Idempotent.
    pub fn stop(&self) {
        let _ = self.tx.try_send(Msg::Stop).or_else(|e| match e {
            mpsc::error::TrySendError::Full(m) => self.tx.blocking_send(m).map_err(|_| ()),
            mpsc::error::TrySendError::Closed(_) => Err(()),
        });
        let handle = self.thread.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

struct UserState {
    key: SigningKey,
    /// The user's time zone: buckets are local days, months and years.
    tz: jiff::tz::TimeZone,
    public: [u8; 32],
    head: HeadV1,
    /// The partly filled last block, once loaded or started.
    tail: Option<BlockV1>,
    tail_dirty: bool,
}

impl UserState {
    /// First seq of the partly filled last block, if there is one.
    fn tail_first(&self) -> Option<u64> {
        let filled = self.head.next_seq % BLOCK_ENTRIES;
        (filled != 0).then(|| self.head.next_seq - filled)
    }
}

/// Everything one group will write, keyed for deterministic order.
#[derive(Default)]
struct Group {
    blocks: BTreeMap<[u8; 12], BlockV1>,
    /// Day buckets read or changed by this group, with a dirty flag.
    days: BTreeMap<[u8; 8], (DayV1, bool)>,
    heads: BTreeMap<UserId, ()>,
    /// Track chunks completed by this group (the writer's open chunk is written too).
    track_chunks: BTreeMap<u32, TrackChunkV1>,
    new_tracks: bool,
    /// Changes to statistics buckets made by this group.
    aggs: BTreeMap<[u8; 9], Delta>,
    /// Extra listen metadata changes per log block: (slot, new info or None to drop).
    infos: BTreeMap<[u8; 12], Vec<(u8, Option<String>)>>,
    /// Feedback changes: `user ‖ recording` -> new feedback (None clears it).
    feedback: BTreeMap<[u8; 8], Option<FeedbackV1>>,
    /// A listen was erased: the buckets are stored with this group (see `apply`).
    has_delete: bool,
    clients: Vec<(String, u32)>,
}

struct Writer {
    store: Store,
    stats: Arc<Counters>,
    max_group_listens: usize,
    users: HashMap<UserId, UserState>,
    /// Every interned track: digest of its canonical TrackRef -> (track id, dedupe key).
    /// Built from `trackchunk_tracks` at start; about 40 bytes of memory per track.
    tracks: HashMap<[u8; 16], (u32, u32)>,
    /// The last, partly filled chunk of tracks; new tracks are appended to it.
    open_chunk: (u32, TrackChunkV1),
    clients: HashMap<String, u32>,
    next_client_id: u32,
    rules: CreditRules,
    /// Chart items and per-track credits (see `aggregates`).
    dict: Dictionary,
    /// Users with buckets in `store.hot` not yet stored.
    pending_users: BTreeSet<UserId>,
    last_persist: std::time::Instant,
}

/// Buckets kept only in memory are stored at least this often...
const PERSIST_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// ...or once they hold this many (item, count) pairs.
const HOT_MAX_PAIRS: usize = 2_000_000;

fn read_counter(store: &Store, name: &'static str, first: u32) -> Result<u32> {
    match store.trees.meta.get(name)? {
        None => Ok(first),
        Some(b) => <[u8; 4]>::try_from(b.as_ref())
            .map(u32::from_be_bytes)
            .map_err(|_| Error::corrupt(schema::META, name.as_bytes(), "counter is not a u32")),
    }
}

/// The digest that interns a track: blake3 of its postcard bytes, first 16 bytes.
fn track_digest(track: &TrackRef) -> [u8; 16] {
    let bytes = postcard::to_allocvec(track).unwrap_or_default();
    let hash = blake3::hash(&bytes);
    let mut d = [0; 16];
    d.copy_from_slice(&hash.as_bytes()[..16]);
    d
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Writer {
    fn new(store: Store, max_group_listens: usize, stats: Arc<Counters>, rules: CreditRules) -> Result<Writer> {
        let mut w = Writer {
            store,
            stats,
            max_group_listens,
            users: HashMap::new(),
            tracks: HashMap::new(),
            open_chunk: (0, TrackChunkV1::default()),
            clients: HashMap::new(),
            next_client_id: 0,
            dict: Dictionary::empty(rules.clone()),
            pending_users: BTreeSet::new(),
            last_persist: std::time::Instant::now(),
            rules,
        };
        w.reset()?;
        // Buckets recounted at open (after an unclean stop) are not stored yet.
        if let Ok(hot) = w.store.hot.read() {
            for k in hot.keys() {
                w.pending_users.insert(keys::parse_bucket(schema::USERID_BUCKET_COUNTS, k)?.0);
            }
        }
        Ok(w)
    }

    /// Deletes a user (after every earlier batch was committed): drops what the writer
    /// holds for them, stores the other users' in-memory statistics, then removes every
    /// record of theirs.
    fn delete_user(&mut self, user: UserId) -> Result<u64> {
        self.users.remove(&user);
        self.pending_users.remove(&user);
        self.store.forget_hot(Some(user));
        let mut persist_others = Group::default();
        self.apply(&mut persist_others, true)?;
        let removed = self.store.delete_user(user)?;
        Ok(removed)
    }

    /// Sets a user's time zone and recounts their buckets in it.
    fn set_timezone(&mut self, user: UserId, tz: &str) -> Result<()> {
        // Store everyone's in-memory buckets first, so the recount starts from disk.
        let mut persist = Group::default();
        self.apply(&mut persist, true)?;
        self.store.set_timezone(user, tz)?;
        self.users.remove(&user);
        self.store.rebuild_user_stats(user)
    }

    /// Drops every cache; the next batch reads state afresh from disk.
    fn reset(&mut self) -> Result<()> {
        self.users.clear();
        self.tracks.clear();
        self.clients.clear();
        self.open_chunk = (0, TrackChunkV1::default());
        self.dict = Dictionary::load(&self.store, self.rules.clone())?;
        for kv in self.store.trees.trackchunk_tracks.iter() {
            let (k, v) = kv?;
            let chunk = keys::parse_u32(schema::TRACKCHUNK_TRACKS, &k)?;
            let tracks: TrackChunkV1 = decode(schema::TRACKCHUNK_TRACKS, &k, &v)?;
            for (i, t) in tracks.tracks.iter().enumerate() {
                // A blanked track (see `compact`) is never matched again: a new listen
                // of it is interned afresh.
                if super::compact::is_blank(t) {
                    continue;
                }
                self.tracks.insert(track_digest(&t.track), (chunk * TRACK_CHUNK + i as u32, t.dedupe_key));
            }
            self.open_chunk = (chunk, tracks);
        }
        if self.open_chunk.1.tracks.len() >= TRACK_CHUNK as usize {
            self.open_chunk = (self.open_chunk.0 + 1, TrackChunkV1::default());
        }
        self.next_client_id = read_counter(&self.store, "next_client_id", 1)?;
        Ok(())
    }

    /// The buckets a group changed, with its changes applied.
    fn merge_buckets(&self, group: &Group) -> Result<Vec<([u8; 9], AggV1)>> {
        group.aggs.iter().map(|(k, delta)| Ok((*k, merged(self.store.bucket(k)?.as_deref(), delta)))).collect()
    }

    fn run(&mut self, mut rx: mpsc::Receiver<Msg>) {
        while let Some(msg) = rx.blocking_recv() {
            let first = match msg {
                Msg::Job(job) => job,
                Msg::DeleteUser(user, reply) => {
                    let _ = reply.send(self.delete_user(user));
                    continue;
                }
                Msg::SetTimezone(user, tz, reply) => {
                    let _ = reply.send(self.set_timezone(user, &tz));
                    continue;
                }
                Msg::Stop => break,
            };
            let mut n_actions = first.actions.len();
            let mut jobs = vec![first];
            let mut stop = false;
            let mut deferred = None;
            while n_actions < self.max_group_listens {
                match rx.try_recv() {
                    Ok(Msg::Job(job)) => {
                        n_actions += job.actions.len();
                        jobs.push(job);
                    }
                    Ok(Msg::Stop) => {
                        stop = true;
                        break;
                    }
                    Ok(other @ (Msg::DeleteUser(..) | Msg::SetTimezone(..))) => {
                        deferred = Some(other);
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.commit_group(jobs);
            match deferred {
                Some(Msg::DeleteUser(user, reply)) => {
                    let _ = reply.send(self.delete_user(user));
                }
                Some(Msg::SetTimezone(user, tz, reply)) => {
                    let _ = reply.send(self.set_timezone(user, &tz));
                }
                _ => {}
            }
            if stop {
                break;
            }
        }
        // Store the in-memory statistics, so the next start has nothing to recount.
        let mut last = Group::default();
        if let Err(e) = self.apply(&mut last, true) {
            tracing::error!(error = %e, "storing statistics at shutdown failed");
        }
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "final flush failed");
        }
    }

    fn commit_group(&mut self, mut jobs: Vec<Job>) {
        loop {
            if jobs.is_empty() {
                return;
            }
            let mut group = Group::default();
            let mut outcomes = Vec::with_capacity(jobs.len());
            let mut failed = None;
            for (i, job) in jobs.iter().enumerate() {
                match self.prepare(&mut group, job.user, &job.actions) {
                    Ok(o) => outcomes.push(o),
                    Err(e) => {
                        failed = Some((i, e));
                        break;
                    }
                }
            }
            if failed.is_none() {
                // Seal each touched user's tail block once for the whole group: one
                // signature per user per flush, however many batches it carried.
                let now = now_secs();
                let users: BTreeSet<UserId> = jobs.iter().map(|j| j.user).collect();
                for user in users {
                    self.finish_user(&mut group, user, now);
                }
            }
            if let Some((i, e)) = failed {
                let job = jobs.remove(i);
                let _ = job.reply.send(Err(e));
                if let Err(e) = self.reset() {
                    tracing::error!(error = %e, "writer cannot reload its state");
                }
                continue;
            }
            match self.apply(&mut group, false) {
                Ok(()) => {
                    self.stats.groups.fetch_add(1, Ordering::Relaxed);
                    self.stats.batches.fetch_add(jobs.len() as u64, Ordering::Relaxed);
                    for (job, o) in jobs.into_iter().zip(outcomes) {
                        let _ = job.reply.send(Ok(o));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "group commit failed");
                    let reason = e.to_string();
                    for job in jobs {
                        let _ = job.reply.send(Err(Error::Db(sled::Error::Unsupported(reason.clone()))));
                    }
                    if let Err(e) = self.reset() {
                        tracing::error!(error = %e, "writer cannot reload its state");
                    }
                }
            }
            return;
        }
    }

    fn load_user(&mut self, user: UserId) -> Result<()> {
        if self.users.contains_key(&user) {
            return Ok(());
        }
        let key = self.store.signing_key(user)?;
        let public = key.verifying_key().to_bytes();
        let tz = self.store.user_tz(user)?;
        let head_key = keys::user(user);
        let head = match self.store.trees.userid_loghead.get(head_key)? {
            Some(bytes) => decode(schema::USERID_LOGHEAD, &head_key, &bytes)?,
            None => HeadV1 { next_seq: 0, link: genesis_link(&public), n_listens: 0 },
        };
        self.users.insert(user, UserState { key, tz, public, head, tail: None, tail_dirty: false });
        Ok(())
    }

    fn prepare(&mut self, group: &mut Group, user: UserId, actions: &[Action]) -> Result<Vec<Outcome>> {
        self.load_user(user)?;
        let mut salts = vec![0u8; 16 * actions.len()];
        getrandom::getrandom(&mut salts).map_err(|e| Error::Crypto(e.to_string()))?;
        let signed_at = now_secs();
        let mut outcomes = Vec::with_capacity(actions.len());
        for (action, salt) in actions.iter().zip(salts.chunks_exact(16)) {
            let mut s: Salt = [0; 16];
            s.copy_from_slice(salt);
            outcomes.push(self.prepare_one(group, user, action, s, signed_at)?);
        }
        Ok(outcomes)
    }

    fn prepare_one(
        &mut self,
        group: &mut Group,
        user: UserId,
        action: &Action,
        salt: Salt,
        now: i64,
    ) -> Result<Outcome> {
        match action {
            Action::Listen(listen) => self.listen(group, user, listen, salt, now, true),
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
                    self.listen(group, user, &listen, *salt, now, false)
                }
                Body::Love(t) => self.prepare_one(group, user, &Action::Love(t.clone()), *salt, now),
                Body::Unlove(t) => self.prepare_one(group, user, &Action::Unlove(t.clone()), *salt, now),
                Body::Hate(t) => self.prepare_one(group, user, &Action::Hate(t.clone()), *salt, now),
                Body::Delete { target } => {
                    let target = *target;
                    let seq = self.append(group, user, body, *salt, now, |salt, check| StoredEntry::Delete {
                        salt,
                        check,
                        target,
                    })?;
                    Ok(Outcome::Appended { seq })
                }
            },
            Action::Love(track) | Action::Unlove(track) | Action::Hate(track) => {
                let (id, _) = self.intern_track(group, track)?;
                let score: i8 = match action {
                    Action::Love(_) => 1,
                    Action::Hate(_) => -1,
                    _ => 0,
                };
                let body = match score {
                    1 => Body::Love(track.clone()),
                    -1 => Body::Hate(track.clone()),
                    _ => Body::Unlove(track.clone()),
                };
                let seq = self.append(group, user, &body, salt, now, |salt, check| match score {
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
                let body = Body::Delete { target: *target };
                let target = *target;
                let seq = self.append(group, user, &body, salt, now, |salt, check| StoredEntry::Delete {
                    salt,
                    check,
                    target,
                })?;
                Ok(Outcome::Appended { seq })
            }
        }
    }

    /// Appends a listen and indexes it; with `dedupe`, a duplicate is dropped instead.
    fn listen(
        &mut self,
        group: &mut Group,
        user: UserId,
        listen: &Listen,
        salt: Salt,
        now: i64,
        dedupe: bool,
    ) -> Result<Outcome> {
        let (track, dkey) = self.intern_track(group, listen.track())?;
        let at = listen.listened_at();
        let mut nearby = Vec::new();
        let window = window_secs(listen.duration_ms());
        let reach = search_secs(window);
        for day in day_of(at - reach)..=day_of(at + reach) {
            let base = i64::from(day) * 86_400;
            let (bucket, _) = self.day(group, user, day)?;
            nearby.extend(bucket.items.iter().map(|i| (base + i64::from(i.sec), u32::from_be_bytes(i.key))));
        }
        if dedupe && is_duplicate(nearby, at, dkey, window) {
            return Ok(Outcome::Duplicate);
        }
        let client = match &listen.client() {
            Some(name) => self.intern_client(group, name)?,
            None => 0,
        };
        let body = Body::Listen {
            track: listen.track().clone(),
            listened_at: at,
            duration_ms: listen.duration_ms(),
            client: listen.client().map(str::to_owned),
        };
        let duration_ms = listen.duration_ms();
        let seq = self.append(group, user, &body, salt, now, |salt, check| StoredEntry::Listen {
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
        let item = DayItem { sec, seq, key: dkey.to_be_bytes() };
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

    fn day<'g>(&self, group: &'g mut Group, user: UserId, day: u32) -> Result<&'g mut (DayV1, bool)> {
        let key = keys::user_u32(user, day);
        Ok(match group.days.entry(key) {
            btree_map::Entry::Occupied(o) => o.into_mut(),
            btree_map::Entry::Vacant(v) => {
                let bucket = match self.store.trees.userid_day_listens.get(key)? {
                    Some(bytes) => decode(schema::USERID_DAY_LISTENS, &key, &bytes)?,
                    None => DayV1::default(),
                };
                v.insert((bucket, false))
            }
        })
    }

    /// Adds (`delta` = 1) or removes (-1) a listen to the user's statistics buckets.
    fn count(&mut self, group: &mut Group, user: UserId, at: i64, track: u32, delta: i64) -> Result<()> {
        let tz = &self.users.get(&user).ok_or(Error::WriterGone)?.tz;
        let placement = place(user, at, tz);
        let credits = match self.dict.known_credits(track) {
            Some(c) => c.clone(),
            None => self.dict.credits(track, &self.store.track(track)?),
        };
        for (i, key) in placement.keys.iter().enumerate() {
            group.aggs.entry(*key).or_default().add(&credits, delta, (i == 2).then_some(placement.slot));
        }
        Ok(())
    }

    fn intern_track(&mut self, group: &mut Group, track: &TrackRef) -> Result<(u32, u32)> {
        let digest = track_digest(track);
        if let Some(&hit) = self.tracks.get(&digest) {
            return Ok(hit);
        }
        let dkey = dedupe_key(track);
        let (chunk, open) = &mut self.open_chunk;
        let id = chunk
            .checked_mul(TRACK_CHUNK)
            .and_then(|base| base.checked_add(open.tracks.len() as u32))
            .ok_or_else(|| Error::Crypto("track ids exhausted".into()))?;
        open.tracks.push(TrackV1 { track: track.clone(), dedupe_key: dkey });
        group.new_tracks = true;
        if open.tracks.len() >= TRACK_CHUNK as usize {
            let full = std::mem::take(open);
            group.track_chunks.insert(*chunk, full);
            *chunk += 1;
        }
        self.tracks.insert(digest, (id, dkey));
        // Credits are decided once, when the node first sees a track (in id order).
        self.dict.credits(id, track);
        Ok((id, dkey))
    }

    fn intern_client(&mut self, group: &mut Group, name: &str) -> Result<u32> {
        if let Some(&id) = self.clients.get(name) {
            return Ok(id);
        }
        let id = match self.store.trees.clientname_clientid.get(name.as_bytes())? {
            Some(bytes) => keys::parse_u32(schema::CLIENTNAME_CLIENTID, &bytes)?,
            None => {
                let id = self.next_client_id;
                self.next_client_id += 1;
                group.clients.push((name.to_owned(), id));
                id
            }
        };
        self.clients.insert(name.to_owned(), id);
        Ok(id)
    }

    /// Loads the partly filled tail block of `user` into its state if needed.
    fn ensure_tail(&mut self, user: UserId) -> Result<()> {
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

    fn append(
        &mut self,
        group: &mut Group,
        user: UserId,
        body: &Body,
        salt: Salt,
        now: i64,
        make: impl FnOnce(Salt, [u8; 4]) -> StoredEntry,
    ) -> Result<u64> {
        self.append_hashed(group, user, None, Some((body, salt)), now, make)
    }

    /// Appends an entry given by its body and salt, or (erased) by its content hash.
    fn append_hashed(
        &mut self,
        group: &mut Group,
        user: UserId,
        hash: Option<crate::log::Hash32>,
        content: Option<(&Body, Salt)>,
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
        let tail = state.tail.get_or_insert_with(|| BlockV1 {
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
    fn finish_user(&mut self, group: &mut Group, user: UserId, now: i64) {
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
    fn erase(&mut self, group: &mut Group, user: UserId, target: u64) -> Result<bool> {
        self.ensure_tail(user)?;
        let store = self.store.clone();
        let state = self.users.get_mut(&user).ok_or(Error::WriterGone)?;
        if target >= state.head.next_seq {
            return Ok(false);
        }
        let first = target - target % BLOCK_ENTRIES;
        let key = keys::user_seq(user, first);
        let block: &mut BlockV1 = if state.tail_first() == Some(first) {
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
        let body =
            Body::Listen { track: store.track(track)?, listened_at, duration_ms, client: store.client_name(client)? };
        let content_hash = content_hash(&state.public, target, &salt, &body);
        if let Some(e) = block.entries.get_mut(slot) {
            *e = StoredEntry::Erased { content_hash, check };
        }
        state.head.n_listens = state.head.n_listens.saturating_sub(1);
        group.heads.insert(user, ());
        let (bucket, dirty) = self.day(group, user, day_of(listened_at))?;
        bucket.items.retain(|i| i.seq != target);
        *dirty = true;
        self.count(group, user, listened_at, track, -1)?;
        group.has_delete = true;
        group.infos.entry(key).or_default().push((slot as u8, None));
        Ok(true)
    }

    /// Writes a group in one transaction and flushes. Statistics buckets go to memory
    /// (`store.hot`) and are stored with a group only when `persist` is asked, the group
    /// erased a listen (a recount after a crash could not subtract erased content), the
    /// last store was `PERSIST_EVERY` ago, or memory holds too many; the stats marks are
    /// written with them.
    fn apply(&mut self, group: &mut Group, persist: bool) -> Result<()> {
        // Pre-encode every write so the transaction closure (which sled may retry) only
        // copies bytes. Tree indexes follow the `trees` array below.
        let mut ops: Vec<(usize, Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        for (k, b) in &group.blocks {
            ops.push((0, k.to_vec(), Some(encode(b))));
        }
        for (k, (d, dirty)) in &group.days {
            if *dirty {
                ops.push((1, k.to_vec(), (!d.items.is_empty()).then(|| encode(d))));
            }
        }
        for user in group.heads.keys() {
            if let Some(state) = self.users.get(user) {
                ops.push((2, keys::user(*user).to_vec(), Some(encode(&state.head))));
            }
        }
        for (chunk, tracks) in &group.track_chunks {
            ops.push((3, keys::u32_key(*chunk).to_vec(), Some(encode(tracks))));
        }
        if group.new_tracks && !self.open_chunk.1.tracks.is_empty() {
            ops.push((3, keys::u32_key(self.open_chunk.0).to_vec(), Some(encode(&self.open_chunk.1))));
        }
        for (name, id) in &group.clients {
            ops.push((4, name.as_bytes().to_vec(), Some(keys::u32_key(*id).to_vec())));
            ops.push((5, keys::u32_key(*id).to_vec(), Some(encode(&ClientV1 { name: name.clone() }))));
        }
        if !group.clients.is_empty() {
            ops.push((6, b"next_client_id".to_vec(), Some(self.next_client_id.to_be_bytes().to_vec())));
        }
        for (k, changes) in &group.infos {
            let mut block: InfoBlockV1 = match self.store.trees.userid_seq_info.get(k)? {
                Some(bytes) => decode(schema::USERID_SEQ_INFO, k, &bytes)?,
                None => InfoBlockV1::default(),
            };
            for (slot, info) in changes {
                block.items.retain(|(s, _)| s != slot);
                if let Some(info) = info {
                    block.items.push((*slot, info.clone()));
                }
            }
            block.items.sort_by_key(|(s, _)| *s);
            ops.push((12, k.to_vec(), (!block.items.is_empty()).then(|| encode(&block))));
        }
        for (k, f) in &group.feedback {
            ops.push((11, k.to_vec(), f.as_ref().map(encode)));
        }
        for (tree, k, v) in self.dict.take_writes() {
            ops.push((if tree == schema::ITEMCHUNK_ITEMS { 7 } else { 8 }, k, Some(v)));
        }
        let hot_pairs: usize = self
            .store
            .hot
            .read()
            .map(|h| h.values().map(|a| a.counts.iter().map(Vec::len).sum::<usize>() + a.hours.len()).sum())
            .unwrap_or(usize::MAX);
        let persist =
            persist || group.has_delete || self.last_persist.elapsed() >= PERSIST_EVERY || hot_pairs >= HOT_MAX_PAIRS;
        let mut group_users: BTreeSet<UserId> = BTreeSet::new();
        for k in group.aggs.keys() {
            group_users.insert(keys::parse_bucket(schema::USERID_BUCKET_COUNTS, k)?.0);
        }
        let buckets = self.merge_buckets(group)?;
        if persist {
            if let Ok(hot) = self.store.hot.read() {
                for (k, agg) in hot.iter().filter(|(k, _)| !group.aggs.contains_key(*k)) {
                    ops.push((9, k.to_vec(), (agg.total > 0).then(|| encode(agg.as_ref()))));
                }
            }
            for (k, agg) in &buckets {
                ops.push((9, k.to_vec(), (agg.total > 0).then(|| encode(agg))));
            }
            for user in self.pending_users.union(&group_users) {
                let mark = match self.users.get(user) {
                    Some(state) => state.head.next_seq,
                    None => self.store.log_head(*user)?.n_entries,
                };
                ops.push((10, keys::user(*user).to_vec(), Some(mark.to_be_bytes().to_vec())));
            }
        }
        let t = &self.store.trees;
        let trees = [
            &t.userid_seq_block,
            &t.userid_day_listens,
            &t.userid_loghead,
            &t.trackchunk_tracks,
            &t.clientname_clientid,
            &t.clientid_clientname,
            &t.meta,
            &t.itemchunk_items,
            &t.trackchunk_credits,
            &t.userid_bucket_counts,
            &t.userid_statsmark,
            &t.userid_recording_feedback,
            &t.userid_seq_info,
        ];
        trees[..]
            .transaction(|tx| {
                for (i, k, v) in &ops {
                    let Some(tree) = tx.get(*i) else { continue };
                    match v {
                        Some(v) => tree.insert(k.as_slice(), v.as_slice())?,
                        None => tree.remove(k.as_slice())?,
                    };
                }
                Ok::<(), sled::transaction::ConflictableTransactionError<Error>>(())
            })
            .map_err(super::users::tx_error)?;
        self.store.flush()?;
        let mut hot = self.store.hot.write().map_err(|_| Error::Invalid("statistics cache poisoned".into()))?;
        if persist {
            hot.clear();
            self.pending_users.clear();
            self.last_persist = std::time::Instant::now();
        } else {
            for (k, agg) in buckets {
                hot.insert(k, Arc::new(agg));
            }
            self.pending_users.extend(group_users);
        }
        Ok(())
    }
}
