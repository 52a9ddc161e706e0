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
//! A batch refused for what it carries (unknown user, an adopted entry this node would
//! not take) is answered before the group is prepared (`Writer::check`). If preparing
//! one batch fails on damage (a corrupt record), only that batch gets the error: the
//! caches are dropped and the rest of the group is prepared again from disk.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::store::hashindex::HashIndex;

use ed25519_dalek::SigningKey;
use tokio::sync::{mpsc, oneshot};

use super::aggregates::{Delta, Dictionary};
use super::codec::decode;
use super::keys::{self, UserId};
use super::schema::{self, BLOCK_ENTRIES, TRACK_CHUNK};
use super::values::{BlockV2, DayV3, FeedbackV1, HeadV1, TrackChunkV2};
use super::{Error, Result, Store};
use crate::log::dedupe::dedupe_key;
use crate::log::entry::genesis_link;
use crate::log::{Listen, TrackRef};
use crate::stats::credits::CreditRules;

mod absorb;
mod commit;
mod committer;
mod intern;
mod prepare;
use intern::*;

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

impl Action {
    /// When the listen began, for a listen.
    pub fn listened_at(&self) -> Option<i64> {
        match self {
            Action::Listen(l) => Some(l.listened_at()),
            _ => None,
        }
    }
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
    /// Per action, the digest that interns its listen's track (`track_digest`), made by
    /// the sender's thread: hashing every listen's names was a twentieth of the writer's
    /// time in a bulk import, which the writer, one thread, bounds.
    digests: Vec<Option<[u8; 16]>>,
    reply: oneshot::Sender<Result<Vec<Outcome>>>,
}

impl Job {
    fn new(user: UserId, actions: Vec<Action>, reply: oneshot::Sender<Result<Vec<Outcome>>>) -> Job {
        let digests = actions
            .iter()
            .map(|a| match a {
                Action::Listen(listen) => Some(track_digest(listen.track())),
                _ => None,
            })
            .collect();
        Job { user, actions, digests, reply }
    }
}

enum Msg {
    Job(Job),
    /// Delete a user and everything stored under them, in order with appends.
    DeleteUser(UserId, oneshot::Sender<Result<u64>>),
    /// Change a user's time zone and recount their statistics, in order with appends.
    SetTimezone(UserId, String, oneshot::Sender<Result<()>>),
    /// Change a user's sharing level (and the node statistics), in order with appends.
    SetVisibility(UserId, super::users::SharingLevel, oneshot::Sender<Result<()>>),
    /// Write a consistent copy of the store as a new data directory, no log write
    /// happening meanwhile.
    Backup(std::path::PathBuf, oneshot::Sender<Result<std::path::PathBuf>>),
    /// The id of an item by its names, from the dictionary (`Dictionary::lookup`).
    ItemId(crate::stats::chart::Kind, String, Option<String>, oneshot::Sender<Option<u32>>),
    Stop,
    /// The committing thread ended a group's write (`committer`): the writer lands it.
    Written,
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
    reloads: AtomicU64,
    /// Microseconds spent per `Phase`.
    phases: [AtomicU64; Phase::ALL.len()],
}

/// Where the writer thread's time goes, timed by its clock (`IngestStats::phases`): what
/// `bench community` prints to say what an import waited for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Taking batches off the queue, and waiting for them.
    Waiting,
    /// Groups, from their first check to their acknowledgement (the phases below but
    /// `Waiting` are parts of it, or of the work of other messages).
    Groups,
    /// Preparing a group's listens: interning, counting, sealing.
    Preparing,
    /// sled's transactions (on the committing thread, `committer`, while the writer
    /// prepares the next group; on the writer's only without that thread).
    Transaction,
    /// sled's flushes (the group durable on disk), as `Transaction`.
    Flush,
    /// Waiting for the committing thread to end a group's write.
    Writing,
    /// Waiting for the thread adding node changes (`absorb`).
    NodeChanges,
    /// Waiting for a background pass storing node statistics to end.
    NodePass,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::Waiting,
        Phase::Groups,
        Phase::Preparing,
        Phase::Transaction,
        Phase::Flush,
        Phase::Writing,
        Phase::NodeChanges,
        Phase::NodePass,
    ];
}

impl Counters {
    /// Adds the time since `since` to `phase`.
    fn time(&self, phase: Phase, since: std::time::Instant) {
        let us = u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.phases[phase as usize].fetch_add(us, Ordering::Relaxed);
    }
}

/// A snapshot of the writer's totals since start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IngestStats {
    /// Batches acknowledged.
    pub batches: u64,
    /// Group commits (= flushes) that carried them.
    pub groups: u64,
    /// Times the writer dropped its memory and read it again from the store after a
    /// group failed (`Writer::reset`: seconds on a large node). A batch refused for what
    /// it carries never causes one (`Writer::check`).
    pub reloads: u64,
    /// Time spent per phase, indexed as `Phase::ALL`.
    pub phases: [std::time::Duration; Phase::ALL.len()],
}

impl IngestStats {
    /// The writer's time in `phase` since it started.
    pub fn phase(&self, phase: Phase) -> std::time::Duration {
        self.phases[phase as usize]
    }
}

/// Most batches waiting for the writer before senders wait.
const QUEUE_DEPTH: usize = 1024;

impl Ingestor {
    /// Starts the writer thread over `store`.
    pub fn start(store: Store, max_group_listens: usize, rules: CreditRules) -> Result<Ingestor> {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let stats = Arc::new(Counters::default());
        let watched = store.clone();
        let waker = tx.downgrade();
        let mut writer = Writer::new(store, max_group_listens.max(1), stats.clone(), rules, waker)?;
        let thread = std::thread::Builder::new()
            .name("hearsay-writer".into())
            .spawn(move || {
                // A panic in the writer (a bug, or sled on damaged files) must not leave
                // the node refusing every write forever: the store fails, and the node
                // reopens it with a new writer.
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| writer.run(rx)));
                if ran.is_err() {
                    watched.fail("the writer thread panicked");
                }
            })
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

    /// Changes a user's sharing level through the writer (the node statistics gain or
    /// lose their buckets, in order with appends).
    pub async fn set_visibility(&self, user: UserId, level: super::users::SharingLevel) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::SetVisibility(user, level, reply)).await.map_err(|_| Error::WriterGone)?;
        rx.await.map_err(|_| Error::WriterGone)?
    }

    /// As `set_visibility`, for callers outside an async runtime (benchmarks): a level
    /// changed beside a running writer goes through it, never through
    /// `Store::set_visibility` (which stores the memory copy as if no writer ran).
    pub fn set_visibility_blocking(&self, user: UserId, level: super::users::SharingLevel) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.tx.blocking_send(Msg::SetVisibility(user, level, reply)).map_err(|_| Error::WriterGone)?;
        rx.blocking_recv().map_err(|_| Error::WriterGone)?
    }

    /// The store's id of the item `name` of `kind` (recordings and releases: of main
    /// artist `artist`), if the node has it, identified as charts identify items
    /// (normalised names). Asked of the writer, which holds every item's identity in
    /// memory: O(1), where finding it among a chart's rows named every item of the node
    /// (50 s for one `track.getInfo` at 10,000 members). Waits for the batch being written.
    /// The id never leaves the store's callers (see `ChartRow::id`).
    pub async fn item_id(
        &self,
        kind: crate::stats::chart::Kind,
        name: &str,
        artist: Option<&str>,
    ) -> Result<Option<u32>> {
        let (reply, rx) = oneshot::channel();
        let msg = Msg::ItemId(kind, name.to_owned(), artist.map(str::to_owned), reply);
        self.tx.send(msg).await.map_err(|_| Error::WriterGone)?;
        rx.await.map_err(|_| Error::WriterGone)
    }

    /// Changes a user's time zone through the writer (their statistics are recounted in
    /// it, in order with appends).
    pub async fn set_timezone(&self, user: UserId, tz: &str) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::SetTimezone(user, tz.to_owned(), reply)).await.map_err(|_| Error::WriterGone)?;
        rx.await.map_err(|_| Error::WriterGone)?
    }

    /// Writes a consistent copy of the store as the new data directory `dir`, in order
    /// with appends (batches wait while it is written).
    pub async fn backup(&self, dir: std::path::PathBuf) -> Result<std::path::PathBuf> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Backup(dir, reply)).await.map_err(|_| Error::WriterGone)?;
        rx.await.map_err(|_| Error::WriterGone)?
    }

    /// Writes waiting in the writer's queue (not yet taken).
    pub fn queued(&self) -> usize {
        self.tx.max_capacity().saturating_sub(self.tx.capacity())
    }

    /// Totals since the writer started.
    pub fn stats(&self) -> IngestStats {
        IngestStats {
            batches: self.stats.batches.load(Ordering::Relaxed),
            groups: self.stats.groups.load(Ordering::Relaxed),
            reloads: self.stats.reloads.load(Ordering::Relaxed),
            phases: std::array::from_fn(|i| {
                std::time::Duration::from_micros(self.stats.phases[i].load(Ordering::Relaxed))
            }),
        }
    }

    /// Appends `actions` to `user`'s log; returns once they are durable on disk.
    pub async fn ingest(&self, user: UserId, actions: Vec<Action>) -> Result<Vec<Outcome>> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Job(Job::new(user, actions, reply))).await.map_err(|_| Error::WriterGone)?;
        rx.await.map_err(|_| Error::WriterGone)?
    }

    /// As `ingest`, for callers outside an async runtime (CLI, benchmarks).
    pub fn ingest_blocking(&self, user: UserId, actions: Vec<Action>) -> Result<Vec<Outcome>> {
        let (reply, rx) = oneshot::channel();
        self.tx.blocking_send(Msg::Job(Job::new(user, actions, reply))).map_err(|_| Error::WriterGone)?;
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
    tail: Option<BlockV2>,
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
    blocks: BTreeMap<[u8; 12], BlockV2>,
    /// Day buckets read or changed by this group, with a dirty flag.
    days: BTreeMap<[u8; 8], (DayV3, bool)>,
    heads: BTreeMap<UserId, ()>,
    /// Track chunks completed by this group (the writer's open chunk is written too).
    track_chunks: BTreeMap<u32, TrackChunkV2>,
    new_tracks: bool,
    /// Changes to statistics buckets made by this group.
    aggs: BTreeMap<[u8; 9], Delta>,
    /// Extra listen metadata changes per log block: (slot, new info or None to drop).
    infos: BTreeMap<[u8; 12], Vec<(u8, Option<String>)>>,
    /// Feedback changes: `user ‖ recording` -> new feedback (None clears it).
    feedback: BTreeMap<[u8; 8], Option<FeedbackV1>>,
    /// Spellings a user sends for the first time that differ from the items' stored
    /// names: `user ‖ kind ‖ item` -> spelling (`userid_item_spelling`).
    spellings: BTreeMap<[u8; 9], Option<String>>,
    /// Spellings this group removes: the user's listens left after an erasure hold no
    /// other spelling of the item (`Writer::respell_after_erasures`).
    unspelled: BTreeSet<[u8; 9]>,
    /// (user, track) of every listen this group erased, in order.
    erased_tracks: Vec<(UserId, u32)>,
    /// A listen was erased: the buckets are stored with this group (see `apply`).
    has_delete: bool,
    /// When each listen erased by this group was played: its user's contribution record
    /// of that period loses its item names in the same transaction.
    erased_at: Vec<(UserId, i64)>,
    clients: Vec<(String, u32)>,
    /// What the group's batches carried, done with once prepared: dropped by the thread
    /// that adds the group's node changes (`absorb`), not by the writer (freeing a
    /// group's listens was 5% of the writer in an import).
    spent: Spent,
}

/// What a group's batches carried (their actions and digests), done with once prepared.
type Spent = Vec<(Vec<Action>, Vec<Option<[u8; 16]>>)>;

struct Writer {
    store: Store,
    stats: Arc<Counters>,
    max_group_listens: usize,
    users: crate::store::aggregates::FastMap<UserId, UserState>,
    /// Every interned track: digest of its canonical TrackRef -> track id. Built from
    /// `trackchunk_tracks` at start; 20 bytes of memory per track (`HashIndex`).
    tracks: HashIndex,
    /// Per track id, the track's dedupe key (0 for a blanked track): what the duplicate
    /// rule compares, read here instead of from each day index item.
    track_keys: Vec<u32>,
    /// Stored blocks the duplicate rule read during the current batch (`listen_key`).
    read_blocks: HashMap<[u8; 12], BlockV2>,
    /// The last, partly filled chunk of tracks; new tracks are appended to it.
    open_chunk: (u32, TrackChunkV2),
    clients: HashMap<String, u32>,
    /// The client name interned last and its id: a batch's listens come from one
    /// player, so most find it here without hashing the name (`clients` keeps SipHash:
    /// its keys are what clients send).
    last_client: Option<(String, u32)>,
    next_client_id: u32,
    rules: CreditRules,
    /// Chart items and per-track credits (see `aggregates`).
    dict: Dictionary,
    /// Users with buckets in `store.hot` not yet stored.
    pending_users: BTreeSet<UserId>,
    last_persist: std::time::Instant,
    /// When the node buckets were last stored (`NODE_PERSIST_EVERY`).
    last_node_persist: std::time::Instant,
    /// A group's node changes (`Writer::merge_buckets`), kept for its room.
    node_changes: crate::store::aggregates::NodeChanges,
    /// A background pass storing node chunks (`Writer::store_node_in_background`).
    node_store: Option<JoinHandle<()>>,
    /// The thread writing groups (`committer`); none if it could not be started or
    /// stopped (the writer writes them itself). Dropped before `absorber`: a write it
    /// holds holds a sender of that thread's (`absorb::Teller`).
    committer: Option<committer::Committer>,
    /// The thread adding groups' node changes to the pending ones (`absorb`); none if it
    /// could not be started (the writer adds them itself) or stopped.
    absorber: Option<absorb::Absorber>,
    /// The group being written by `committer` while the writer prepares the next one,
    /// landed by `Writer::land`.
    in_flight: Option<InFlight>,
}

/// A group handed to the committing thread, and what landing it takes.
struct InFlight {
    jobs: Vec<Job>,
    outcomes: Vec<Vec<Outcome>>,
    group: Group,
    after: commit::After,
    /// The group began a bulk group's cache (`Store::cache_for_bulk`).
    bulk: bool,
    /// The room it asked for (`Store::make_room`).
    room: u64,
}

/// Buckets kept only in memory are stored at least this often...
const PERSIST_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// ...or once they hold this many (item, count) pairs.
const HOT_MAX_PAIRS: usize = 2_000_000;
/// How often the node buckets are stored with the user buckets (and always when asked
/// to store, or when memory holds `NODE_HOT_MAX_PAIRS` of them). An import of a member's years
/// touches thousands of node chunks, so storing them every `PERSIST_EVERY` rewrote the
/// node's whole statistics every two seconds (1.6 KB of sled's files per imported
/// listen); meanwhile the store is marked `NODE_STALE` and an open after a crash
/// rebuilds the node buckets from the user buckets.
const NODE_PERSIST_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// Most node changes held in memory before they are stored: the pending (item, change)
/// pairs (`aggregates::PendingChanges::pairs`, counted as they are added and taken;
/// with repeats, an upper bound, before 2026-12-05's third session, when the figures
/// below up to "6M" were measured) and the counts of node buckets a recount left in the
/// memory copy. A store rewrites most of
/// the node's chunks whatever their number (an import's members span every week), so
/// this bound sets how often a bulk import pays for it: at 10,000 members 8M gave 15
/// stores of 1–9 s (import 258 s, importing process 1,268 MiB at its peak), 16M nine
/// (192 s, 1,363 MiB) (`bench community`, docs/ARCHITECTURE.md). Since changes are
/// `i32` and chunks wider (schema 20) stores cost 1–5 s: 16M gave a 169 s import and a
/// 515 MiB peak, 12M 172.5 s and 482 MiB. Since large stores run in the background
/// (`BACKGROUND_STORE_PAIRS`), changes also pile up while a pass runs: 12M then peaked
/// at 531–539 MiB, hence 8M. With mimalloc (`--features mimalloc`, `memory`), 8M gave
/// a 115.6 s import and a 512 MiB peak, 6M 106.6 s and 514 (smaller stores, each over
/// sooner; the peak in the reads after the import), and 105.6–107.8 s and 486–521 once
/// the writer collects after each background pass (`reap_node_store`); with glibc 6M
/// gave 153.9 s and 453 MiB, no better or worse than 8M (148.8–153.9 s and 453–457):
/// 6M for the mimalloc build's peak. Counted without repeats (as gained), 6M meant more
/// pairs in memory than before: the import's peak with glibc was 441–446 MiB (passes of
/// up to 9 s). But a pass running meanwhile took part of the pairs counted as gained, and
/// the later passes of an import started with 3.6–4.2M of the 6M pending (17 passes).
/// Counted again at the bound once a pass began since (after waiting for it), 6M gave
/// 12 passes and a 457 MiB peak, 5M 14 passes and 440–464 MiB (the pass's thread
/// spending about a quarter less), 4M 19 passes and 440, 426–427 once passes give
/// memory back as they go (`Store::store_node_changes`); the import's time the same
/// within this machine's run-to-run variation (the writer is its critical path), so 4M
/// for the peak (2026-12-05, seventh session). Since the eighth, the pending pairs are
/// counted where they change (no walk at the bound), and while a background pass is
/// under way the writer goes on up to `commit::during_a_pass` of this bound (then 1.75
/// times) before it waits for the pass. That cap, 7M, was reached before the pass ended:
/// the writer waited 9.3–9.8 s for passes in a 75–100 s import (the tenth session of
/// 2026-12-06; `bench community` prints the wait). At 3M, with the same 7M cap
/// (7/3 times), a pass has 4M pairs of room to end in instead of 3M: waits of 5.9,
/// 6.8 and 8.3 s in three imports against 9.3–9.8 s in three at 4M, peaks 443–446 MiB
/// against 434–452, the pass's thread a tenth more CPU; the imports' times within the
/// machine's noise (72.8–76.4 s against 74.5–78.1 on fast machines). Since the
/// thirteenth session, passes write each leaf of sled's tree once
/// (`sled::Tree::apply_sorted`), take a fifth to a quarter less CPU time per chunk and end
/// before the bound is pending again: at 3M, 23 passes of 1.14M chunks in all (import
/// 81.4 s, peak 409 MiB); at 5M, 16 passes of 0.94M chunks (77.7 s, 417 MiB), the
/// passes' thread 23.8 s of CPU time against 29.8.
const NODE_HOT_MAX_PAIRS: usize = 5_000_000;

/// Node changes stored at once past which the writer gives freed memory back to the
/// system afterwards (`memory::give_back`): a store that large freed pending maps of
/// tens of MiB or more; smaller ones (the minute's store of a node at rest) are not
/// worth the walk over the heap.
const GIVE_BACK_AFTER_PAIRS: usize = 1 << 20;
/// Node changes stored at once from which the store runs on its own thread while the
/// writer goes on (`Writer::store_node_in_background`): a bulk import's stores took
/// 1–5 s each, ~30 s of a 10,000-member import's writer thread with the machine's
/// second core idle. Smaller stores (the minute's store of a node at rest) stay on the
/// writer, which then clears `NODE_STALE` right after them.
const BACKGROUND_STORE_PAIRS: usize = 1 << 20;
/// Most stored blocks `Writer::read_blocks` holds (about 2 KB each).
const READ_BLOCKS_KEPT: usize = 256;

/// A group of at least this many actions is an import's (its batches are
/// `import::BATCH`, 1,000 listens; a scrobbler submits one, or up to 50 at a time from
/// its queue), or a burst of scrobbles as heavy as one: sled's page cache grows to
/// `store.import_cache_mb` for it (`Store::cache_for_bulk`).
const BULK_GROUP: usize = 1_000;

impl Drop for Writer {
    /// A writer that panicked (`Ingestor::start` catches it) does not leave its
    /// background pass running with a clone of the store the node reopens.
    fn drop(&mut self) {
        // A group still in flight (the writer panicked) is written, not acknowledged: the
        // store failed with the panic (`Ingestor::start`).
        self.abandon();
        let _ = self.finish_absorb();
        self.wait_for_node_store();
    }
}

fn read_counter(store: &Store, name: &'static str, first: u32) -> Result<u32> {
    match store.trees.meta.get(name)? {
        None => Ok(first),
        Some(b) => <[u8; 4]>::try_from(b.as_ref())
            .map(u32::from_be_bytes)
            .map_err(|_| Error::corrupt(schema::META, name.as_bytes(), "counter is not a u32")),
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Writer {
    fn new(
        store: Store,
        max_group_listens: usize,
        stats: Arc<Counters>,
        rules: CreditRules,
        waker: mpsc::WeakSender<Msg>,
    ) -> Result<Writer> {
        let absorber = absorb::Absorber::start(
            store.node_pending.clone(),
            #[cfg(test)]
            store.faults.clone(),
        )
        .map_err(|e| tracing::warn!(error = %e, "no thread to add node changes: the writer adds them"))
        .ok();
        let mut w = Writer {
            store,
            stats,
            max_group_listens,
            users: Default::default(),
            tracks: HashIndex::default(),
            track_keys: Vec::new(),
            read_blocks: HashMap::new(),
            open_chunk: (0, TrackChunkV2::default()),
            clients: HashMap::new(),
            last_client: None,
            next_client_id: 0,
            dict: Dictionary::empty(rules.clone()),
            pending_users: BTreeSet::new(),
            last_persist: std::time::Instant::now(),
            last_node_persist: std::time::Instant::now(),
            node_changes: Default::default(),
            node_store: None,
            committer: committer::Committer::start(waker)
                .map_err(|e| tracing::warn!(error = %e, "no thread to write groups: the writer writes them"))
                .ok(),
            absorber,
            in_flight: None,
            rules,
        };
        w.reset()?;
        // Buckets recounted at open (after an unclean stop) are not stored yet.
        if let Ok(hot) = w.store.hot.read() {
            for k in hot.keys().filter(|k| !super::aggregates::is_node_key(k.as_slice())) {
                w.pending_users.insert(keys::parse_bucket(schema::USERID_BUCKET_COUNTS, k)?.0);
            }
        }
        Ok(w)
    }

    /// Deletes a user (after every earlier batch was committed): drops what the writer
    /// holds for them, stores the other users' in-memory statistics, then removes every
    /// record of theirs.
    fn delete_user(&mut self, user: UserId) -> Result<u64> {
        self.store.writable()?;
        // Everyone's in-memory buckets first, the user's included: the node buckets
        // lose exactly what the stored buckets of a counted user hold.
        let mut persist = Group::default();
        self.apply(&mut persist, true)?;
        self.users.remove(&user);
        self.pending_users.remove(&user);
        let removed = self.store.delete_user(user)?;
        Ok(removed)
    }

    /// Sets a user's sharing level: the node buckets in memory gain or lose the user's
    /// buckets as they stand, stored with the next store of node buckets
    /// (`Store::set_visibility_deferred`).
    fn set_visibility(&mut self, user: UserId, level: super::users::SharingLevel) -> Result<()> {
        self.finish_absorb()?;
        self.store.set_visibility_deferred(user, level, crate::now_unix())
    }

    /// Sets a user's time zone and recounts their buckets in it.
    fn set_timezone(&mut self, user: UserId, tz: &str) -> Result<()> {
        self.store.writable()?;
        // Store everyone's in-memory buckets first, so the recount starts from disk.
        let mut persist = Group::default();
        self.apply(&mut persist, true)?;
        self.store.set_timezone(user, tz)?;
        self.users.remove(&user);
        self.store.rebuild_user_stats(user)?;
        self.store.recounted(user)
    }

    /// Stores the in-memory statistics, then copies the store (nothing else is written
    /// through this thread meanwhile).
    fn backup(&mut self, dir: &std::path::Path) -> Result<std::path::PathBuf> {
        self.store.writable()?;
        let mut persist = Group::default();
        self.apply(&mut persist, true)?;
        // `apply` fails the store without an error when only the node chunks failed.
        self.store.writable()?;
        super::recover::backup(&self.store, dir, &super::Options::default())
    }

    /// Drops every cache; the next batch reads state afresh from disk.
    fn reset(&mut self) -> Result<()> {
        self.finish_absorb()?;
        self.users.clear();
        self.tracks.clear();
        self.track_keys.clear();
        self.read_blocks.clear();
        self.clients.clear();
        self.last_client = None;
        self.open_chunk = (0, TrackChunkV2::default());
        self.dict = Dictionary::load(&self.store, self.rules.clone())?;
        let mut digests = Vec::new();
        for kv in self.store.trees.trackchunk_tracks.iter() {
            let (k, v) = kv?;
            let chunk = keys::parse_u32(schema::TRACKCHUNK_TRACKS, &k)?;
            let tracks: TrackChunkV2 = decode(schema::TRACKCHUNK_TRACKS, &k, &v)?;
            for (i, t) in tracks.tracks.iter().enumerate() {
                // Chunks are written for every track in id order, so they follow each
                // other with no gap: a key past the next one is damage, refused before
                // the tables would be sized by it (as `Dictionary::load` does).
                let id = u32::try_from(i).ok().and_then(|i| chunk.checked_mul(TRACK_CHUNK)?.checked_add(i));
                let id = id.filter(|id| *id as usize == self.track_keys.len()).ok_or_else(|| {
                    Error::corrupt(schema::TRACKCHUNK_TRACKS, &k, "a chunk that does not follow the one before")
                })?;
                // A blanked track (see `compact`) is never matched again: a new listen
                // of it is interned afresh. Keys are computed, not stored (`TrackChunkV2`).
                if super::compact::is_blank(t) {
                    self.track_keys.push(0);
                } else {
                    self.track_keys.push(dedupe_key(t));
                    digests.push((track_digest(t), id));
                }
            }
            self.open_chunk = (chunk, tracks);
        }
        self.tracks = HashIndex::from_entries(digests);
        if self.open_chunk.1.tracks.len() >= TRACK_CHUNK as usize {
            self.open_chunk = (self.open_chunk.0 + 1, TrackChunkV2::default());
        }
        self.next_client_id = read_counter(&self.store, "next_client_id", 1)?;
        Ok(())
    }

    fn run(&mut self, mut rx: mpsc::Receiver<Msg>) {
        loop {
            // With a group in flight, the next message is a batch to prepare while it is
            // written, or its end (`Msg::Written`; one that comes after the group was
            // landed is left alone, or it would land the next one before its write
            // ended); anything else lands it first. Waiting with a group in flight is
            // waiting for its write.
            let waiting = std::time::Instant::now();
            let phase = if self.in_flight.is_some() { Phase::Writing } else { Phase::Waiting };
            let Some(msg) = rx.blocking_recv() else { break };
            self.stats.time(phase, waiting);
            if phase == Phase::Writing {
                self.stats.time(Phase::Groups, waiting);
            }
            match msg {
                Msg::Job(_) => {}
                Msg::Written if !self.committer.as_mut().is_some_and(committer::Committer::ended) => continue,
                _ => self.land(false),
            }
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
                Msg::SetVisibility(user, level, reply) => {
                    let _ = reply.send(self.set_visibility(user, level));
                    continue;
                }
                Msg::Backup(dir, reply) => {
                    let _ = reply.send(self.backup(&dir));
                    continue;
                }
                Msg::ItemId(kind, name, artist, reply) => {
                    let _ = reply.send(self.dict.lookup(kind, &name, artist.as_deref()));
                    continue;
                }
                Msg::Stop => break,
                Msg::Written => continue,
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
                    // The group in flight is landed once this one is prepared (or refused:
                    // `commit_group`).
                    Ok(Msg::Written) => {}
                    // Answered from what is committed (the group in flight landed first);
                    // the group then commits as gathered, so a stream of lookups cannot
                    // hold it back.
                    Ok(Msg::ItemId(kind, name, artist, reply)) => {
                        self.land(false);
                        let _ = reply.send(self.dict.lookup(kind, &name, artist.as_deref()));
                        break;
                    }
                    Ok(
                        other @ (Msg::DeleteUser(..) | Msg::SetTimezone(..) | Msg::SetVisibility(..) | Msg::Backup(..)),
                    ) => {
                        deferred = Some(other);
                        break;
                    }
                    Err(_) => break,
                }
            }
            // Marked from before the group to after it: the cache stays grown through a
            // group of several seconds.
            let bulk = n_actions >= BULK_GROUP;
            if bulk {
                self.store.cache_for_bulk();
            }
            // Prepared while the group in flight is written, unless they share a user, or
            // erase listens (an erasure reads the names of the listen's track and client,
            // which may be the group in flight's to write: see `committer`).
            if let Some(f) = &self.in_flight
                && jobs.iter().any(|j| {
                    f.jobs.iter().any(|k| k.user == j.user)
                        || j.actions.iter().any(|a| matches!(a, Action::Delete { .. }))
                })
            {
                self.land(bulk);
            }
            self.commit_group(jobs, std::time::Instant::now(), bulk);
            // A write that ended unnoticed (its wake-up taken while this group was
            // gathered, or dropped by a full queue) is landed now, not at the next message.
            if self.committer.as_mut().is_some_and(committer::Committer::ended) {
                self.land(false);
            }
            // Whatever comes next waits for this group to be written.
            if deferred.is_some() || stop {
                self.land(false);
            }
            // A group in flight that is a bulk one ends the bulk when it lands.
            if bulk && !self.in_flight.as_ref().is_some_and(|f| f.bulk) {
                self.store.bulk_group_done();
            }
            match deferred {
                Some(Msg::DeleteUser(user, reply)) => {
                    let _ = reply.send(self.delete_user(user));
                }
                Some(Msg::SetTimezone(user, tz, reply)) => {
                    let _ = reply.send(self.set_timezone(user, &tz));
                }
                Some(Msg::SetVisibility(user, level, reply)) => {
                    let _ = reply.send(self.set_visibility(user, level));
                }
                Some(Msg::Backup(dir, reply)) => {
                    let _ = reply.send(self.backup(&dir));
                }
                _ => {}
            }
            if stop {
                break;
            }
        }
        self.land(false);
        // Store the in-memory statistics, so the next start has nothing to recount (a
        // failed or full store is left alone: the next start recounts from the log).
        #[cfg(test)]
        let crash = self.store.faults.skip_final_store.load(Ordering::Relaxed);
        #[cfg(not(test))]
        let crash = false;
        if !crash && self.store.writable().is_ok() {
            let mut last = Group::default();
            if let Err(e) = self.apply(&mut last, true) {
                tracing::error!(error = %e, "storing statistics at shutdown failed");
            }
            if let Err(e) = self.store.flush() {
                tracing::error!(error = %e, "final flush failed");
            }
        }
        // A background pass still running (a failed store skips the final store above)
        // ends before the writer does: `Drop for Writer`.
    }

    /// A write failed: sled keeps the failed group in memory and fails every later
    /// write, and this thread's indexes may be ahead of the disk. The store stops (no
    /// more writes or reads through it) and the node reopens it from what was flushed.
    fn poison(&mut self, what: &str, e: &Error) {
        tracing::error!(error = %e, "{what} failed");
        self.store.fail(&format!("{what}: {e}"));
    }

    /// Prepares a group, then lands the group in flight (`land`) and hands this one's
    /// write to the committing thread: it is landed while the next group is prepared, or
    /// when nothing else comes. A group that erased listens (written under the
    /// contributions' lock, `apply`), or any without that thread, is written and answered
    /// here. The group's time on this thread counts as `Phase::Groups` (from `started`),
    /// before any batch is answered: a caller reading `Ingestor::stats` after its
    /// acknowledgement finds its group counted. `bulk`: the group is a bulk one.
    fn commit_group(&mut self, jobs: Vec<Job>, mut started: std::time::Instant, bulk: bool) {
        // Below the disk reserve, after a failed write, or without room allocated for
        // what this group will write: refuse without writing anything.
        let actions: usize = jobs.iter().map(|j| j.actions.len()).sum();
        // More than a group writes: each action costs sled well under 4 KiB (entry,
        // names, day index, statistics, rewritten pages), plus a MiB for the rest.
        let room = (actions as u64).saturating_mul(4 << 10).saturating_add(1 << 20);
        // The group in flight may not have written into its own room yet: room for both.
        let ahead = room.saturating_add(self.in_flight.as_ref().map_or(0, |f| f.room));
        if let Err(e) = self.store.writable().and_then(|()| self.store.make_room(ahead)) {
            self.stats.time(Phase::Groups, started);
            for job in jobs {
                let _ = job.reply.send(Err(e.refusal()));
            }
            // The group in flight is answered however this one ends (its wake-up may
            // have been taken while this one was gathered).
            self.land(bulk);
            return;
        }
        let mut checked = Vec::with_capacity(jobs.len());
        for job in jobs {
            match self.check(job.user, &job.actions) {
                Ok(()) => checked.push(job),
                Err(e) => {
                    let _ = job.reply.send(Err(e));
                }
            }
        }
        let mut jobs = checked;
        loop {
            if jobs.is_empty() {
                self.stats.time(Phase::Groups, started);
                self.land(bulk);
                return;
            }
            let mut group = Group::default();
            let mut outcomes = Vec::with_capacity(jobs.len());
            let mut failed = None;
            let preparing = std::time::Instant::now();
            for (i, job) in jobs.iter().enumerate() {
                match self.prepare(&mut group, job.user, &job.actions, &job.digests) {
                    Ok(o) => outcomes.push(o),
                    Err(e) => {
                        failed = Some((i, e));
                        break;
                    }
                }
            }
            if failed.is_none()
                && let Err((user, e)) = self.respell_group(&mut group)
            {
                // Reported to the first batch of the user whose log could not be read.
                failed = Some((jobs.iter().position(|j| j.user == user).unwrap_or(0), e));
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
            self.stats.time(Phase::Preparing, preparing);
            // The group in flight is landed before this one's write begins (everything
            // `begin_apply` reads sees it whole), or before memory is read again from
            // the disk; its time counts on its own.
            self.stats.time(Phase::Groups, started);
            self.land(bulk);
            started = std::time::Instant::now();
            if let Some((i, e)) = failed {
                let job = jobs.remove(i);
                // Past `check`, only damage (or a full id space) fails a prepare.
                tracing::error!(error = %e, "a batch failed while prepared; the writer reloads its memory");
                self.stats.reloads.fetch_add(1, Ordering::Relaxed);
                let _ = job.reply.send(Err(e));
                // Only memory changed: reload it from the disk.
                if let Err(e) = self.reset() {
                    self.poison("reloading the writer's state", &e);
                    self.stats.time(Phase::Groups, started);
                    for job in jobs {
                        let _ = job.reply.send(Err(e.refusal()));
                    }
                    return;
                }
                continue;
            }
            group.spent =
                jobs.iter_mut().map(|j| (std::mem::take(&mut j.actions), std::mem::take(&mut j.digests))).collect();
            if !group.erased_at.is_empty() || self.committer.is_none() {
                let result = self.apply(&mut group, false);
                self.answer(jobs, outcomes, result, started);
                return;
            }
            let (write, after) = match self.begin_apply(&mut group, false) {
                Ok(begun) => begun,
                Err(e) => return self.answer(jobs, outcomes, Err(e), started),
            };
            let sent = match self.committer.as_mut() {
                Some(committer) => committer.send(write),
                None => Err(write),
            };
            match sent {
                Ok(()) => {
                    self.in_flight = Some(InFlight { jobs, outcomes, group, after, bulk, room });
                    self.stats.time(Phase::Groups, started);
                }
                Err(write) => {
                    // The thread is gone: written here (`write_now`).
                    let written = self.write_now(write);
                    let result = self.end_apply(&group, after, written);
                    self.answer(jobs, outcomes, result, started);
                }
            }
            return;
        }
    }

    /// Lands the group in flight, if any: waits for its write (`Phase::Writing`), ends its
    /// `apply` and answers its batches (`answer`). `next_bulk`: the group prepared next is
    /// a bulk one too (the page cache stays grown for it).
    fn land(&mut self, next_bulk: bool) {
        let Some(InFlight { jobs, outcomes, group, after, bulk, .. }) = self.in_flight.take() else { return };
        let started = std::time::Instant::now();
        let written = self.written();
        let result = self.end_apply(&group, after, written);
        self.answer(jobs, outcomes, result, started);
        if bulk && !next_bulk {
            self.store.bulk_group_done();
        }
    }

    /// Answers a group's batches with what became of its write, after counting its time
    /// on this thread since `started` (`Phase::Groups`).
    fn answer(&mut self, jobs: Vec<Job>, outcomes: Vec<Vec<Outcome>>, result: Result<()>, started: std::time::Instant) {
        self.stats.time(Phase::Groups, started);
        match result {
            Ok(()) => {
                let appended = outcomes.iter().flatten().filter(|o| matches!(o, Outcome::Appended { .. })).count();
                self.store.acknowledge(appended as u64);
                self.stats.groups.fetch_add(1, Ordering::Relaxed);
                self.stats.batches.fetch_add(jobs.len() as u64, Ordering::Relaxed);
                for (job, o) in jobs.into_iter().zip(outcomes) {
                    let _ = job.reply.send(Ok(o));
                }
            }
            Err(e) if self.store.failure().is_some() => {
                let reason = e.to_string();
                for job in jobs {
                    let _ = job.reply.send(Err(Error::CommitFailed(reason.clone())));
                }
            }
            Err(e) => {
                // Failed before writing anything (a stored value that does not
                // decode): only this group fails; memory is reloaded from disk.
                tracing::error!(error = %e, "a group could not be prepared for writing");
                self.stats.reloads.fetch_add(1, Ordering::Relaxed);
                for job in jobs {
                    let _ = job.reply.send(Err(e.refusal()));
                }
                if let Err(e) = self.reset() {
                    self.poison("reloading the writer's state", &e);
                }
            }
        }
    }

    /// Refuses a batch for what it carries, before the group is prepared and without
    /// changing anything but the users loaded: an unknown user, an adopted entry this
    /// node would not take from a client (`Content::check`). A
    /// prepare that fails is answered by `reset`, which reads the dictionary and every
    /// track again (seconds on a large node, while every batch waits): what a request or
    /// a bundle carries must not be able to cause one.
    fn check(&mut self, user: UserId, actions: &[Action]) -> Result<()> {
        self.load_user(user)?;
        // Other actions were built by `Listen::parse` and `TrackRef::parse`.
        for action in actions {
            if let Action::Adopt(content) = action {
                content.check().map_err(|e| Error::Invalid(format!("adopted entry: {e}")))?;
            }
        }
        Ok(())
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
}
