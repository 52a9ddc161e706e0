//! The store: the only module that imports sled.
//!
//! `Store` opens the database, checks and migrates its schema, and offers typed
//! operations: users and tokens (`users`), reading and verifying logs (`logs`). Every
//! append to a log goes through the single writer thread in `writer`, which groups
//! concurrent batches into one transaction and one flush. The layout is in `schema`
//! and `docs/storage.md`.

pub mod aggregates;
pub mod codec;
pub mod compact;
pub mod federation;
pub(crate) mod hashindex;
pub mod insights;
pub mod keys;
pub mod logs;
pub mod migrate;
pub mod recover;
pub mod releases;
pub mod schema;
pub mod secagg;
pub mod space;
pub mod users;
pub mod values;
mod watermark;
pub mod writer;

use std::path::{Path, PathBuf};

pub use keys::UserId;

pub use logs::StoredListen;
pub use writer::{Action, IngestStats, Ingestor, Outcome, Phase};

/// Errors of the store. Corrupt bytes are reported with their tree and key, never a panic.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Db(#[from] sled::Error),
    #[error("database at {path} is in use by another hearsay process (stop the node first)")]
    Locked { path: PathBuf },
    #[error("corrupt value in tree {tree} at key {key}: {reason}")]
    Corrupt { tree: &'static str, key: String, reason: String },
    #[error(
        "database schema version {found} is newer than this build supports ({supported}): \
         upgrade hearsay, or restore a backup made by this version"
    )]
    NewerSchema { found: u32, supported: u32 },
    #[error("user name {0:?} is taken")]
    UserExists(String),
    #[error("no such user: {0}")]
    NoSuchUser(String),
    #[error("invalid user name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid password: {0}")]
    InvalidPassword(&'static str),
    #[error("{0}")]
    Invalid(String),
    #[error("the log writer has stopped")]
    WriterGone,
    #[error("no randomness from the operating system: {0}")]
    Random(String),
    #[error("password hashing failed: {0}")]
    PasswordHash(String),
    #[error("too many password checks are waiting; try again in a moment")]
    Busy,
    #[error("{0} ids are exhausted")]
    IdsExhausted(&'static str),
    #[error("the batch was not stored: the group it was committed with failed ({0})")]
    CommitFailed(String),
    #[error(
        "the disk holding {path} has {free_mb} MiB free, below the reserve of {reserve_mb} MiB \
         (store.reserve_mb): nothing is written until space is freed"
    )]
    DiskFull { path: PathBuf, free_mb: u64, reserve_mb: u64 },
    #[error("the store stopped writing after a failed write ({0}); the node reopens it from disk")]
    Failed(String),
    #[error(
        "the database in {path} is damaged: {reason}. `hearsay store recover DIR` salvages every \
         entry that still verifies into a new data directory (see docs/operations.md)"
    )]
    Damaged { path: PathBuf, reason: String },
}

/// What kind of failure an error is, for the protocols to answer it their way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// The request asked for something invalid (400).
    Invalid,
    /// Nothing can be written: the disk is below its reserve (507).
    DiskFull,
    /// The store is not available right now: stopped after a failed write and being
    /// reopened, or the writer is gone (503).
    Unavailable,
    /// Anything else (500).
    Internal,
}

impl Error {
    pub fn class(&self) -> Class {
        match self {
            Error::Invalid(_) | Error::InvalidName { .. } | Error::InvalidPassword(_) | Error::UserExists(_) => {
                Class::Invalid
            }
            Error::DiskFull { .. } => Class::DiskFull,
            Error::Failed(_) | Error::WriterGone | Error::Locked { .. } | Error::CommitFailed(_) | Error::Busy => {
                Class::Unavailable
            }
            Error::Damaged { .. } => Class::Internal,
            _ => Class::Internal,
        }
    }

    /// The same refusal again, for the next request it applies to (errors hold
    /// sled's, which do not clone).
    pub fn refusal(&self) -> Error {
        match self {
            Error::DiskFull { path, free_mb, reserve_mb } => {
                Error::DiskFull { path: path.clone(), free_mb: *free_mb, reserve_mb: *reserve_mb }
            }
            Error::Failed(reason) => Error::Failed(reason.clone()),
            other => Error::CommitFailed(other.to_string()),
        }
    }

    pub(crate) fn corrupt(tree: &'static str, key: &[u8], reason: &str) -> Error {
        Error::Corrupt { tree, key: hex::encode(key), reason: reason.to_owned() }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Handles to every tree; cheap to clone (sled handles are reference counted).
#[derive(Clone)]
pub(crate) struct Trees {
    pub meta: sled::Tree,
    pub username_userid: sled::Tree,
    pub userid_user: sled::Tree,
    pub userid_signingkey: sled::Tree,
    pub tokendigest_token: sled::Tree,
    pub userid_tokenid_tokendigest: sled::Tree,
    pub userid_loghead: sled::Tree,
    pub userid_seq_block: sled::Tree,
    pub userid_day_listens: sled::Tree,
    pub trackchunk_tracks: sled::Tree,
    pub clientname_clientid: sled::Tree,
    pub clientid_clientname: sled::Tree,
    pub itemchunk_items: sled::Tree,
    pub trackchunk_credits: sled::Tree,
    pub userid_bucket_counts: sled::Tree,
    pub userid_statsmark: sled::Tree,
    pub userid_recording_feedback: sled::Tree,
    pub trackid_spellings: sled::Tree,
    pub userid_item_spelling: sled::Tree,
    pub sessiondigest_session: sled::Tree,
    pub userid_seq_info: sled::Tree,
    pub sessiondigest_websession: sled::Tree,
    pub userid_settings: sled::Tree,
    pub invitedigest_invite: sled::Tree,
    pub periodstart_release: sled::Tree,
    pub userid_week_ledger: sled::Tree,
    pub userid_periodstart_contribution: sled::Tree,
    pub period_origin_snapshot: sled::Tree,
    pub origin_firstseen: sled::Tree,
    pub community_version_manifest: sled::Tree,
    pub community_version_fork: sled::Tree,
    pub community_version_signed: sled::Tree,
    pub community_period_signer_result: sled::Tree,
    pub community_period_signer_wrongresult: sled::Tree,
    pub secagg_state: sled::Tree,
    pub userid_period_community_securereport: sled::Tree,
    pub community_follow: sled::Tree,
}

/// An open database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    pub(crate) trees: Trees,
    path: PathBuf,
    /// Statistics buckets changed since they were last stored (newer than sled's copy),
    /// shared between the writer and readers; see `schema::USERID_STATSMARK`.
    pub(crate) hot: HotBuckets,
    /// Changes of node buckets not yet merged into them (`aggregates::NodePending`).
    pub(crate) node_pending: aggregates::NodePending,
    /// Held by each store of node changes for its whole pass (`store_node_changes`): two
    /// at once (the writer's background pass and `store_hot` called beside a running
    /// writer) could each read a chunk before the other wrote it, and lose a change.
    pub(crate) node_stores: std::sync::Arc<std::sync::Mutex<()>>,
    /// Set by the writer before it starts a background pass of node changes, cleared
    /// when the pass's thread ends (`Writer::store_node_in_background`): the pass takes
    /// pending changes as it goes, so the writer's bound on them is wider meanwhile.
    pub(crate) node_pass_under_way: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Users by newest listen, for the home page (`logs::NewestListens`).
    pub(crate) newest: logs::NewestIndex,
    /// Similar users per user, until any log, level or account changes
    /// (`insights::SimilarCache`).
    pub(crate) similar: insights::SimilarCache,
    pub(crate) tastes: insights::TasteCache,
    /// Network views until the next federation write (`federation::NetworkCache`).
    pub(crate) network: std::sync::Arc<std::sync::Mutex<federation::NetworkCache>>,
    /// Node buckets read and assembled, until a change of them (`aggregates::NodeCache`).
    pub(crate) node_cache: std::sync::Arc<std::sync::Mutex<aggregates::NodeCache>>,
    /// Sharing level of new accounts (the node's config), as `SharingLevel::ALL` index.
    default_level: std::sync::Arc<std::sync::atomic::AtomicU8>,
    pub(crate) health: std::sync::Arc<Health>,
    /// The page cache's size: at rest, or larger during a bulk import (`cache_for_bulk`).
    cache: std::sync::Arc<CacheSize>,
    reserve_mb: u64,
    /// sled's data file (`db/db`), to allocate room ahead of its writes.
    data_file: Option<std::sync::Arc<std::fs::File>>,
    /// Held by the publisher from reading a period's inputs until its release is stored,
    /// and by the writer while it commits a group that erases listens: so an erasure
    /// either comes before the read (the listen is not in the release) or after the
    /// contribution records exist (it clears their names). See `contributions_lock`.
    contributions: std::sync::Arc<std::sync::Mutex<()>>,
    /// Faults the unit tests inject into this store (no other store sees them).
    #[cfg(test)]
    pub(crate) faults: std::sync::Arc<Faults>,
}

/// Faults a unit test injects into one store, to reach the branches a real disk reaches
/// only by chance.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Faults {
    /// The thread adding a group's node changes (`writer::absorb`) waits while set,
    /// holding the pending changes' lock.
    pub hold_absorb: std::sync::atomic::AtomicBool,
    /// `put_node_chunks` and `store_node_changes` fail at their write number n + 1
    /// (0: never).
    pub node_chunk_fails_at: std::sync::atomic::AtomicUsize,
    /// The writer stores every group's statistics, the node's included (as it does
    /// every `NODE_PERSIST_EVERY`).
    pub store_node_each_group: std::sync::atomic::AtomicBool,
    /// The writer's node chunks are due with every group and stored by a background
    /// pass however few changes are pending (as a bulk import's are).
    pub store_node_in_background_each_group: std::sync::atomic::AtomicBool,
    /// A background pass of node chunks, once it stored them, waits while this is set.
    pub hold_node_store: std::sync::atomic::AtomicBool,
    /// A background pass of node chunks waits while this is set before it starts.
    pub hold_node_store_start: std::sync::atomic::AtomicBool,
    /// The next group stores its statistics with the node's by a background pass (as
    /// `store_node_in_background_each_group`, once); later groups follow the timers.
    pub store_node_in_background_next_group: std::sync::atomic::AtomicBool,
    /// The writer's bound on pending node changes (`NODE_HOT_MAX_PAIRS`) when not 0.
    pub node_max_pairs: std::sync::atomic::AtomicUsize,
    /// The writer stops without storing what memory holds, as a crash leaves the store
    /// (what it wrote was flushed).
    pub skip_final_store: std::sync::atomic::AtomicBool,
    /// A group's write (`writer::committer::Write::run`) waits while set before writing.
    pub hold_write: std::sync::atomic::AtomicBool,
    /// The next group's write fails before writing anything, as an I/O error of sled's
    /// would (cleared by that write).
    pub fail_write: std::sync::atomic::AtomicBool,
}

/// Buckets newer than their stored copy.
pub(crate) type HotBuckets =
    std::sync::Arc<std::sync::RwLock<std::collections::HashMap<[u8; 9], std::sync::Arc<values::AggV2>>>>;

/// The node's key file in a data directory (written by `identity`; a backup or a
/// recovery carries it over).
pub const NODE_KEY_FILE: &str = "node_key";

/// Store options taken from the config.
#[derive(Clone, Debug)]
pub struct Options {
    /// sled's page cache at rest (`store.cache_mb`), in MiB.
    pub cache_mb: u64,
    /// sled's page cache while the writer imports in bulk (`store.import_cache_mb`), in
    /// MiB; `cache_mb` where smaller.
    pub import_cache_mb: u64,
    /// Free space below which nothing is written (`store.reserve_mb`), in MiB.
    pub reserve_mb: u64,
    /// Whether a database created with these options compresses its pages
    /// (`store.compression`); an existing one keeps its own setting.
    pub compression: bool,
}

impl From<&crate::config::StoreConfig> for Options {
    fn from(c: &crate::config::StoreConfig) -> Options {
        Options {
            cache_mb: c.cache_mb,
            import_cache_mb: c.import_cache_mb,
            reserve_mb: c.reserve_mb,
            compression: c.compression,
        }
    }
}

impl Default for Options {
    fn default() -> Options {
        Options::from(&crate::config::StoreConfig::default())
    }
}

/// zstd level of compressed databases: level 1 gave the same bytes as level 3 on the
/// 1M-listen benchmark (about 93 B per listen) at 84,000–88,000 listens/s against
/// 79,000 (sled's default, 5: 89.7 B at 67,000).
const ZSTD_LEVEL: i32 = 1;

/// Frees the pages sled dropped: sled frees a page it pages out or replaces only once
/// no thread can still read it (crossbeam's epoch-based reclamation, sled's default
/// collector, the same `crossbeam-epoch` as sled's), and that collector frees at most
/// eight batches of 64 each time a thread pins 128 times or flushes. A node at rest
/// pins little (sled's flusher, the release ticks), so what a shrunken cache paged out
/// (deferred on this thread) would stay allocated for long: pinning and flushing here
/// (about 6 ms for 65,536 rounds) frees it and every batch other threads handed over,
/// as far as no thread holds a pin meanwhile. What other threads hold in their own
/// unfinished batch (under 64 each) waits for them.
fn reclaim_dropped_pages() {
    for _ in 0..(1 << 16) {
        crossbeam_epoch::pin().flush();
    }
}

/// The page cache's size, in bytes (`Store::cache_for_bulk`, `Store::settle_cache`).
struct CacheSize {
    rest: u64,
    bulk: u64,
    state: std::sync::Mutex<Bulk>,
}

/// Where the page cache stands with bulk imports.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Bulk {
    /// At its size at rest.
    AtRest,
    /// Grown: the writer is committing a group of an import's size (one can take longer
    /// than `BULK_SETTLE`: a background pass of node statistics to wait for, a slow disk).
    Running,
    /// Grown: the last group of an import's size ended then.
    Ended(std::time::Instant),
}

/// How long after the last bulk group the page cache goes back to its size at rest.
pub const BULK_SETTLE: std::time::Duration = std::time::Duration::from_secs(5);

/// sled's configuration for the database at `path`: an existing database keeps the
/// compression it was created with (sled refuses to open it with the other, and records
/// it in its `conf` file); a new one takes `options.compression`, or `compression` when
/// given (what `recover` tries on a database whose `conf` is gone).
pub fn sled_config(path: &Path, options: &Options, compression: Option<bool>) -> sled::Config {
    let compress = compression.or_else(|| stored_compression(path)).unwrap_or(options.compression);
    sled::Config::new()
        .path(path)
        .cache_capacity(options.cache_mb.saturating_mul(1 << 20))
        .use_compression(compress)
        .compression_factor(ZSTD_LEVEL)
}

/// Syncs sled's `conf` file at `path` and the directory holding it: sled 0.34 writes it
/// once, when it creates a database, and never syncs it.
pub(crate) fn sync_conf(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path.join("conf"))?.sync_all()?;
    sync_dir(path)
}

/// Syncs a directory (its entries: renames, new files). Some file systems (network,
/// FUSE) cannot and answer EINVAL: that is taken as done, as RocksDB does.
pub(crate) fn sync_dir(path: &Path) -> std::io::Result<()> {
    match std::fs::File::open(path)?.sync_all() {
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok(()),
        other => other,
    }
}

/// The compression recorded in sled's `conf` file at `path`, if it can be read (a line
/// `use_compression: true` or `false`).
pub(crate) fn stored_compression(path: &Path) -> Option<bool> {
    let conf = std::fs::read(path.join("conf")).ok()?;
    // sled 0.34 writes the conf's lines followed by a CRC: read the lines as text up to it.
    let text = String::from_utf8_lossy(&conf);
    text.lines().find_map(|line| line.strip_prefix("use_compression: ")).and_then(|v| v.trim().parse().ok())
}

/// Whether the store may still write: it stops for good (until reopened) after a
/// failed write, since sled keeps the failed group in memory and fails every later
/// write; readers must not see what was never acknowledged.
#[derive(Default)]
pub(crate) struct Health {
    failure: std::sync::Mutex<Option<String>>,
    failed: std::sync::atomic::AtomicBool,
    changed: tokio::sync::Notify,
    /// Below the reserve at the last check (logged once per change, not per request).
    low_space: std::sync::atomic::AtomicBool,
    /// Entries in every log, all flushed (`watermark`), and the lock of its file.
    acknowledged: std::sync::atomic::AtomicU64,
    watermark_lock: std::sync::Mutex<()>,
}

impl Store {
    /// Opens (creating if needed) the database in `dir/db`, then checks the schema
    /// version: a missing one is initialised, an older one migrated, a newer one refused.
    pub fn open(dir: &Path, options: &Options) -> Result<Store> {
        let store = Store::open_files(dir, options)?;
        catch_damage(&store.path, || -> Result<()> {
            migrate::bring_up_to_date(&store, migrate::MIGRATIONS)?;
            store.check_acknowledged()?;
            store.finish_pending()?;
            store.start_acknowledged()?;
            // Node buckets that lagged the user buckets at an unclean stop are rebuilt
            // from them; the recount then moves both on.
            if store.trees.meta.contains_key(aggregates::NODE_STALE)? {
                tracing::warn!("rebuilding the node statistics after an unclean stop");
                store.rebuild_node_stats()?;
            }
            store.recount_after_crash()
        })??;
        Ok(store)
    }

    /// Opens sled in `dir/db` and every tree, and nothing more (no migration, no
    /// checks, no recount): what `recover` reads a damaged store with.
    pub(crate) fn open_files(dir: &Path, options: &Options) -> Result<Store> {
        Store::open_files_compressed(dir, options, None)
    }

    /// `open_files`, with sled's compression given instead of read from its `conf` file
    /// (`recover`, when that file is gone).
    pub(crate) fn open_files_compressed(dir: &Path, options: &Options, compression: Option<bool>) -> Result<Store> {
        let path = dir.join("db");
        std::fs::create_dir_all(dir).map_err(|e| Error::Db(sled::Error::Io(e)))?;
        compact::finish_interrupted_swap(dir).map_err(|e| Error::Db(sled::Error::Io(e)))?;
        // A database whose conf cannot be read does not say whether its pages are
        // compressed. sled opening it the wrong way panics on the first page it cannot
        // decompress or parse, and first writes a new conf with the guess, so the guess
        // would stick: never guess on the real files (`recover` tries both on copies).
        let has_log = std::fs::metadata(path.join("db")).is_ok_and(|m| m.len() > 0);
        if compression.is_none() && has_log && stored_compression(&path).is_none() {
            return Err(Error::Damaged {
                path: path.join("conf"),
                reason: "sled's config file is missing or unreadable, so whether the database is compressed is \
                         unknown (run `hearsay store recover`)"
                    .into(),
            });
        }
        // Missing or unreadable here means a database without a log: sled writes a conf.
        let new_conf = stored_compression(&path).is_none();
        // Never open sled where it cannot write: opening replays its log and may write
        // a snapshot, and a snapshot cut short by a full disk is what wrecks a store.
        check_space(dir, options.reserve_mb, 0)?;
        for name in space::remove_unfinished_snapshots(&path).map_err(|e| Error::Db(sled::Error::Io(e)))? {
            tracing::warn!(file = %path.join(&name).display(), "removed an unfinished snapshot (a write cut short)");
        }
        // sled's background flusher can hold the lock for a moment after the previous
        // handle in this process was dropped, so a lock conflict is retried briefly
        // before it is reported as another process using the database.
        let mut attempt = 0;
        let db = loop {
            let config = sled_config(&path, options, compression);
            // sled panics on some damaged files (a truncated segment: an index out of
            // bounds): that is damage to report, not a crash.
            let opened = catch_damage(&path, || config.open().map_err(Error::Db))?;
            match opened {
                Ok(db) => break db,
                Err(Error::Db(sled::Error::Io(ref io))) if io.to_string().contains("lock") => {
                    attempt += 1;
                    if attempt >= 20 {
                        return Err(Error::Locked { path: path.clone() });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(Error::Db(sled::Error::Corruption { .. })) => {
                    return Err(Error::Damaged {
                        path: path.clone(),
                        reason: "sled found corrupt data in its log or snapshot files".into(),
                    });
                }
                // What sled says of a config file or log it cannot parse.
                Err(Error::Db(e @ (sled::Error::Unsupported(_) | sled::Error::ReportableBug(_)))) => {
                    return Err(Error::Damaged {
                        path: path.clone(),
                        reason: format!("sled cannot read its files ({e})"),
                    });
                }
                Err(other) => return Err(other),
            }
        };
        if new_conf {
            // sled writes its conf without syncing it; a conf lost to a power cut would
            // leave the store refusing to open (above), so it is made durable now.
            sync_conf(&path).map_err(|e| Error::Db(sled::Error::Io(e)))?;
        }
        let t = |name: &str| db.open_tree(name);
        let trees = Trees {
            meta: t(schema::META)?,
            username_userid: t(schema::USERNAME_USERID)?,
            userid_user: t(schema::USERID_USER)?,
            userid_signingkey: t(schema::USERID_SIGNINGKEY)?,
            tokendigest_token: t(schema::TOKENDIGEST_TOKEN)?,
            userid_tokenid_tokendigest: t(schema::USERID_TOKENID_TOKENDIGEST)?,
            userid_loghead: t(schema::USERID_LOGHEAD)?,
            userid_seq_block: t(schema::USERID_SEQ_BLOCK)?,
            userid_day_listens: t(schema::USERID_DAY_LISTENS)?,
            trackchunk_tracks: t(schema::TRACKCHUNK_TRACKS)?,
            clientname_clientid: t(schema::CLIENTNAME_CLIENTID)?,
            clientid_clientname: t(schema::CLIENTID_CLIENTNAME)?,
            itemchunk_items: t(schema::ITEMCHUNK_ITEMS)?,
            trackchunk_credits: t(schema::TRACKCHUNK_CREDITS)?,
            userid_bucket_counts: t(schema::USERID_BUCKET_COUNTS)?,
            userid_statsmark: t(schema::USERID_STATSMARK)?,
            userid_recording_feedback: t(schema::USERID_RECORDING_FEEDBACK)?,
            trackid_spellings: t(schema::TRACKID_SPELLINGS)?,
            userid_item_spelling: t(schema::USERID_ITEM_SPELLING)?,
            sessiondigest_session: t(schema::SESSIONDIGEST_SESSION)?,
            userid_seq_info: t(schema::USERID_SEQ_INFO)?,
            sessiondigest_websession: t(schema::SESSIONDIGEST_WEBSESSION)?,
            userid_settings: t(schema::USERID_SETTINGS)?,
            invitedigest_invite: t(schema::INVITEDIGEST_INVITE)?,
            periodstart_release: t(schema::PERIODSTART_RELEASE)?,
            userid_week_ledger: t(schema::USERID_WEEK_LEDGER)?,
            userid_periodstart_contribution: t(schema::USERID_PERIODSTART_CONTRIBUTION)?,
            period_origin_snapshot: t(schema::PERIOD_ORIGIN_SNAPSHOT)?,
            origin_firstseen: t(schema::ORIGIN_FIRSTSEEN)?,
            community_version_manifest: t(schema::COMMUNITY_VERSION_MANIFEST)?,
            community_version_fork: t(schema::COMMUNITY_VERSION_FORK)?,
            community_version_signed: t(schema::COMMUNITY_VERSION_SIGNED)?,
            community_period_signer_result: t(schema::COMMUNITY_PERIOD_SIGNER_RESULT)?,
            community_period_signer_wrongresult: t(schema::COMMUNITY_PERIOD_SIGNER_WRONGRESULT)?,
            community_follow: t(schema::COMMUNITY_FOLLOW)?,
            secagg_state: t(schema::SECAGG_STATE)?,
            userid_period_community_securereport: t(schema::USERID_PERIOD_COMMUNITY_SECUREREPORT)?,
        };
        let data_file = std::fs::OpenOptions::new().write(true).open(path.join("db")).ok().map(std::sync::Arc::new);
        let store = Store {
            db,
            trees,
            path,
            hot: HotBuckets::default(),
            node_pending: Default::default(),
            node_stores: Default::default(),
            node_pass_under_way: Default::default(),
            newest: Default::default(),
            similar: Default::default(),
            tastes: insights::TasteCache::default(),
            network: Default::default(),
            node_cache: Default::default(),
            default_level: std::sync::Arc::new(std::sync::atomic::AtomicU8::new(1)),
            health: std::sync::Arc::default(),
            cache: std::sync::Arc::new(CacheSize {
                rest: options.cache_mb.saturating_mul(1 << 20),
                bulk: options.import_cache_mb.max(options.cache_mb).saturating_mul(1 << 20),
                state: std::sync::Mutex::new(Bulk::AtRest),
            }),
            reserve_mb: options.reserve_mb,
            data_file,
            contributions: std::sync::Arc::default(),
            #[cfg(test)]
            faults: std::sync::Arc::default(),
        };
        Ok(store)
    }

    /// The writer begins a group of an import's size (`bulk_group_done` when it ends):
    /// sled's page cache takes `store.import_cache_mb` until `settle_cache` finds no such
    /// group running, nor one ended in the last `BULK_SETTLE`. Nothing where that is no
    /// larger than `store.cache_mb`. Pages are counted by their size in memory (vendored
    /// sled), so the cache at rest holds little of a store far larger than it, and a bulk
    /// import of one rereads the pages it keeps changing (node statistics, the identity
    /// chunks) from disk: on the 10,000-member benchmark, 131 s with 48 MiB, 112 with 96
    /// (before node changes were added beside the writer; since, 88.4 s with 80 and a
    /// peak 29 MiB lower than with 96; 93.8 s with 64, its peak 13 MiB below 80's).
    pub(crate) fn cache_for_bulk(&self) {
        if self.cache.bulk <= self.cache.rest {
            return;
        }
        let mut state = self.cache.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *state == Bulk::AtRest
            && let Err(e) = self.db.set_cache_capacity(self.cache.bulk)
        {
            tracing::warn!(error = %e, "raising the page cache for an import");
        }
        *state = Bulk::Running;
    }

    /// The writer ended a group `cache_for_bulk` began.
    pub(crate) fn bulk_group_done(&self) {
        let mut state = self.cache.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *state == Bulk::Running {
            *state = Bulk::Ended(std::time::Instant::now());
        }
    }

    /// Puts sled's page cache back to its size at rest once no bulk group runs nor ended
    /// in the last `after`, paging out what does not fit and freeing those pages (`true`
    /// then): the node's idle checks call it (`BULK_SETTLE`) before giving memory back.
    pub fn settle_cache(&self, after: std::time::Duration) -> bool {
        let mut state = self.cache.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !matches!(*state, Bulk::Ended(at) if at.elapsed() >= after) {
            return false;
        }
        *state = Bulk::AtRest;
        if let Err(e) = self.db.set_cache_capacity(self.cache.rest) {
            tracing::warn!(error = %e, "putting the page cache back to its size at rest");
        }
        drop(state);
        reclaim_dropped_pages();
        true
    }

    /// Orders releases and erasures (see the `contributions` field). A poisoned lock only
    /// means a holder panicked; the order it gives still holds, so it is taken anyway.
    pub fn contributions_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.contributions.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `Ok` while the disk holding the store has at least the reserve free and no write
    /// has failed; else why not. Checked before every write.
    pub fn writable(&self) -> Result<()> {
        if let Some(reason) = self.failure() {
            return Err(Error::Failed(reason));
        }
        let dir = self.path.parent().unwrap_or(&self.path);
        let checked = check_space(dir, self.reserve_mb, self.ahead());
        let low = checked.is_err();
        if self.health.low_space.swap(low, std::sync::atomic::Ordering::AcqRel) != low {
            match &checked {
                Err(e) => tracing::warn!(error = %e, "refusing writes"),
                Ok(()) => tracing::info!("disk space is back above the reserve: writing again"),
            }
        }
        checked
    }

    /// Makes sure the next `bytes` sled writes have disk blocks allocated for them
    /// (`space::allocate_ahead`): the writer asks before every group, so that a disk
    /// filled by anything meanwhile cannot fail a write half-way. `DiskFull` when the
    /// room cannot be had.
    pub(crate) fn make_room(&self, bytes: u64) -> Result<()> {
        let Some(file) = &self.data_file else { return Ok(()) };
        let dir = self.path.parent().unwrap_or(&self.path).to_owned();
        // The room counts as free space (it is the store's own), and no more is taken
        // than the disk has above the reserve: asking for it can never push the node
        // below its own reserve.
        let free = space::available(&dir).map_err(|e| Error::Db(sled::Error::Io(e)))?.saturating_add(self.ahead());
        let reserve = self.reserve_mb.saturating_mul(1 << 20);
        if free.saturating_sub(reserve) < bytes {
            return Err(Error::DiskFull { path: dir, free_mb: free >> 20, reserve_mb: self.reserve_mb });
        }
        match space::allocate_ahead(file, bytes) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) => {
                let dir = self.path.parent().unwrap_or(&self.path).to_owned();
                let free_mb = space::available(&dir).unwrap_or(0) >> 20;
                Err(Error::DiskFull { path: dir, free_mb, reserve_mb: self.reserve_mb })
            }
            Err(e) => {
                // A file system without fallocate: the reserve check alone guards it.
                tracing::debug!(error = %e, "cannot allocate room ahead");
                Ok(())
            }
        }
    }

    /// Bytes allocated past the end of sled's data file and not written yet.
    fn ahead(&self) -> u64 {
        self.data_file.as_deref().map_or(0, space::allocated_ahead)
    }

    /// Why the store stopped writing, once a write has failed.
    pub fn failure(&self) -> Option<String> {
        if !self.health.failed.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        self.health.failure.lock().map_or_else(|_| Some("unknown".into()), |f| f.clone())
    }

    /// Marks the store failed: nothing more is written or read through it; the node
    /// drops it and reopens the directory, where only what was flushed remains.
    pub(crate) fn fail(&self, reason: &str) {
        if let Ok(mut f) = self.health.failure.lock() {
            f.get_or_insert_with(|| reason.to_owned());
        }
        self.health.failed.store(true, std::sync::atomic::Ordering::Release);
        self.health.changed.notify_waiters();
        tracing::error!(reason, "the store failed a write: writes and reads stop until it is reopened");
    }

    /// Resolves once the store has failed.
    pub async fn failed(&self) {
        loop {
            let notified = self.health.changed.notified();
            if self.failure().is_some() {
                return;
            }
            notified.await;
        }
    }

    /// Sets the sharing level new accounts get.
    pub fn set_default_level(&self, level: crate::privacy::SharingLevel) {
        let i = crate::privacy::SharingLevel::ALL.iter().position(|l| *l == level).unwrap_or(1);
        self.default_level.store(i as u8, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn default_level(&self) -> crate::privacy::SharingLevel {
        let i = self.default_level.load(std::sync::atomic::Ordering::Relaxed) as usize;
        crate::privacy::SharingLevel::ALL.get(i).copied().unwrap_or_default()
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes every dirty buffer to disk and fsyncs.
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }

    /// Per tree: name, number of items, bytes of keys and values (the logical size, before
    /// sled's own overhead). Walks every tree: for benchmarks and `hearsay store stats`.
    pub fn tree_stats(&self) -> Result<Vec<(&'static str, u64, u64)>> {
        let mut out = Vec::new();
        for name in schema::ALL_TREES {
            let Some(tree) = self.tree(name) else {
                continue;
            };
            let (mut items, mut bytes) = (0u64, 0u64);
            for kv in tree.iter() {
                let (k, v) = kv?;
                items += 1;
                bytes += (k.len() + v.len()) as u64;
            }
            out.push((*name, items, bytes));
        }
        Ok(out)
    }

    /// `userid_bucket_counts` split by what its values are: members' buckets per
    /// granularity, node buckets per kind of count and granularity (`docs/storage.md`).
    /// (label, number of items, bytes of keys and values), in key order of the labels.
    pub fn bucket_stats(&self) -> Result<Vec<(String, u64, u64)>> {
        const GRANULARITY: [&str; 5] = ["day", "month", "year", "week", "all time"];
        const WHAT: [&str; 4] = ["listens per item", "listeners per item", "stored-name members", "totals"];
        let name = |i: Option<&u8>| i.and_then(|&g| GRANULARITY.get(usize::from(g))).copied().unwrap_or("?");
        let mut out: std::collections::BTreeMap<(u8, u8, u8), (String, u64, u64)> = Default::default();
        for kv in self.trees.userid_bucket_counts.iter() {
            let (k, v) = kv?;
            let (label, order) = if aggregates::is_node_key(&k) {
                let what = k.get(1).and_then(|&w| WHAT.get(usize::from(w))).copied().unwrap_or("?");
                (
                    format!("node: {what}, {}", name(k.get(2))),
                    (1, k.get(1).copied().unwrap_or(0), k.get(2).copied().unwrap_or(0)),
                )
            } else {
                // A damaged key is counted under "?": a report of sizes, not a check.
                let granularity = keys::parse_bucket(schema::USERID_BUCKET_COUNTS, &k).ok().map(|(_, g, _)| g);
                (format!("members: {}", name(granularity.as_ref())), (0, 0, granularity.unwrap_or(u8::MAX)))
            };
            let e = out.entry(order).or_insert((label, 0, 0));
            e.1 += 1;
            e.2 += (k.len() + v.len()) as u64;
        }
        Ok(out.into_values().collect())
    }

    /// The raw sled tree `name`, for tests that change bytes underneath the store.
    /// Not for use by the node: every other module goes through typed operations.
    #[doc(hidden)]
    pub fn raw_tree_for_tests(&self, name: &str) -> Option<sled::Tree> {
        self.tree(name).cloned()
    }

    pub(crate) fn tree(&self, name: &str) -> Option<&sled::Tree> {
        let t = &self.trees;
        Some(match name {
            schema::META => &t.meta,
            schema::USERNAME_USERID => &t.username_userid,
            schema::USERID_USER => &t.userid_user,
            schema::USERID_SIGNINGKEY => &t.userid_signingkey,
            schema::TOKENDIGEST_TOKEN => &t.tokendigest_token,
            schema::USERID_TOKENID_TOKENDIGEST => &t.userid_tokenid_tokendigest,
            schema::USERID_LOGHEAD => &t.userid_loghead,
            schema::USERID_SEQ_BLOCK => &t.userid_seq_block,
            schema::USERID_DAY_LISTENS => &t.userid_day_listens,
            schema::TRACKCHUNK_TRACKS => &t.trackchunk_tracks,
            schema::CLIENTNAME_CLIENTID => &t.clientname_clientid,
            schema::CLIENTID_CLIENTNAME => &t.clientid_clientname,
            schema::ITEMCHUNK_ITEMS => &t.itemchunk_items,
            schema::TRACKCHUNK_CREDITS => &t.trackchunk_credits,
            schema::USERID_BUCKET_COUNTS => &t.userid_bucket_counts,
            schema::USERID_STATSMARK => &t.userid_statsmark,
            schema::USERID_RECORDING_FEEDBACK => &t.userid_recording_feedback,
            schema::TRACKID_SPELLINGS => &t.trackid_spellings,
            schema::USERID_ITEM_SPELLING => &t.userid_item_spelling,
            schema::SESSIONDIGEST_SESSION => &t.sessiondigest_session,
            schema::USERID_SEQ_INFO => &t.userid_seq_info,
            schema::SESSIONDIGEST_WEBSESSION => &t.sessiondigest_websession,
            schema::USERID_SETTINGS => &t.userid_settings,
            schema::INVITEDIGEST_INVITE => &t.invitedigest_invite,
            schema::PERIODSTART_RELEASE => &t.periodstart_release,
            schema::USERID_WEEK_LEDGER => &t.userid_week_ledger,
            schema::USERID_PERIODSTART_CONTRIBUTION => &t.userid_periodstart_contribution,
            schema::PERIOD_ORIGIN_SNAPSHOT => &t.period_origin_snapshot,
            schema::ORIGIN_FIRSTSEEN => &t.origin_firstseen,
            schema::COMMUNITY_VERSION_MANIFEST => &t.community_version_manifest,
            schema::COMMUNITY_VERSION_FORK => &t.community_version_fork,
            schema::COMMUNITY_VERSION_SIGNED => &t.community_version_signed,
            schema::COMMUNITY_PERIOD_SIGNER_RESULT => &t.community_period_signer_result,
            schema::COMMUNITY_PERIOD_SIGNER_WRONGRESULT => &t.community_period_signer_wrongresult,
            schema::SECAGG_STATE => &t.secagg_state,
            schema::USERID_PERIOD_COMMUNITY_SECUREREPORT => &t.userid_period_community_securereport,
            schema::COMMUNITY_FOLLOW => &t.community_follow,
            _ => return None,
        })
    }

    /// Listens held, over every user's log (live ones: erased ones excluded).
    pub fn listens_total(&self) -> Result<u64> {
        let mut n = 0u64;
        for user in self.users()? {
            n = n.saturating_add(self.log_head(user.id)?.n_listens);
        }
        Ok(n)
    }

    /// Atomically increments the counter `name` in `meta` and returns the value before.
    pub(crate) fn next_id(&self, name: &'static str, first: u32) -> Result<u32> {
        let mut taken = first;
        self.trees.meta.update_and_fetch(name, |old| {
            let current = old.and_then(|b| <[u8; 4]>::try_from(b).ok()).map_or(first, u32::from_be_bytes);
            taken = current;
            Some(current.saturating_add(1).to_be_bytes().to_vec())
        })?;
        Ok(taken)
    }
}

/// `Error::DiskFull` when the file system holding `dir` has less than `reserve_mb` free
/// (counting `ahead` bytes already allocated to the store as free).
fn check_space(dir: &Path, reserve_mb: u64, ahead: u64) -> Result<()> {
    let free = space::available(dir).map_err(|e| Error::Db(sled::Error::Io(e)))?.saturating_add(ahead);
    let reserve = reserve_mb.saturating_mul(1 << 20);
    if free < reserve {
        return Err(Error::DiskFull { path: dir.to_owned(), free_mb: free >> 20, reserve_mb });
    }
    Ok(())
}

/// Runs `f`, turning a panic inside it (sled panics on some damaged files) into
/// `Error::Damaged` naming `path`. The panic's own message is kept from stderr.
pub(crate) fn catch_damage<T>(path: &Path, f: impl FnOnce() -> T) -> Result<T> {
    quiet_panics_in_dependencies();
    CATCHING.with(|c| c.set(c.get() + 1));
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(c.get().saturating_sub(1)));
    caught.map_err(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        Error::Damaged { path: path.to_owned(), reason: format!("reading it failed inside sled ({what})") }
    })
}

thread_local! {
    /// How many `catch_damage` calls this thread is inside.
    static CATCHING: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Panics raised inside sled within `catch_damage` are reported as `Error::Damaged`;
/// this hook keeps their raw message and backtrace off the terminal there, and passes
/// every other panic (elsewhere, or outside `catch_damage`) to the previous hook.
fn quiet_panics_in_dependencies() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_sled = info.location().is_some_and(|l| l.file().contains("/sled-"));
            if in_sled && CATCHING.with(std::cell::Cell::get) > 0 {
                tracing::debug!(%info, "a panic inside sled (reported as damage)");
            } else {
                previous(info);
            }
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bulk import grows sled's page cache to `import_cache_mb`; settling puts it back
    /// to `cache_mb`, only once no bulk group came for the time given, paging out what
    /// does not fit; pages read back whole while the cache shrinks and grows beside them.
    #[test]
    fn the_page_cache_grows_for_an_import_and_settles_back() {
        const REST: u64 = 8 << 20;
        let dir = tempfile::tempdir().expect("tempdir");
        let options = Options { cache_mb: 8, import_cache_mb: 64, ..Options::default() };
        let store = Store::open(dir.path(), &options).expect("open");
        let values: Vec<Vec<u8>> = (0..40_000u32)
            .map(|i| (0..100 + i % 200).map(|j| u8::try_from((j + i * 31) % 251).unwrap_or(0)).collect())
            .collect();
        let key = |i: usize| u32::try_from(i).unwrap_or(u32::MAX).to_be_bytes();
        let read_all = |db: &sled::Db| {
            for (i, v) in values.iter().enumerate() {
                let got = db.get(key(i)).expect("get");
                assert_eq!(got.as_deref(), Some(v.as_slice()), "value {i}");
            }
        };
        let write_all = |db: &sled::Db| {
            for (i, v) in values.iter().enumerate() {
                db.insert(key(i), v.as_slice()).expect("insert");
            }
        };
        // At rest the cache holds what its size allows (each of sled's 256 shards keeps at
        // least its newest page).
        write_all(&store.db);
        read_all(&store.db);
        let at_rest = store.db.cache_size();
        assert!(at_rest <= REST * 3 / 2, "at rest the cache holds {at_rest} B");
        // An import's cache holds several times that.
        store.cache_for_bulk();
        write_all(&store.db);
        read_all(&store.db);
        let in_bulk = store.db.cache_size();
        assert!(in_bulk > REST * 3 / 2, "during an import the cache holds {in_bulk} B");
        assert!(!store.settle_cache(std::time::Duration::ZERO), "settled while a bulk group runs");
        store.bulk_group_done();
        assert!(!store.settle_cache(std::time::Duration::from_secs(3_600)), "settled right after a bulk group");
        // (sled's flusher may rewrite a page meanwhile: the count moves a little.)
        assert!(store.db.cache_size() > REST * 3 / 2, "the cache shrank before settling");
        assert!(store.settle_cache(std::time::Duration::ZERO));
        let settled = store.db.cache_size();
        assert!(settled <= REST * 3 / 2, "settled, the cache holds {settled} B");
        assert!(!store.settle_cache(std::time::Duration::ZERO), "settled twice");
        // Readers beside a cache that grows and shrinks under them.
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| read_all(&store.db));
            }
            for _ in 0..20 {
                store.cache_for_bulk();
                store.bulk_group_done();
                assert!(store.settle_cache(std::time::Duration::ZERO));
            }
        });
        drop(store);
        read_all(&Store::open(dir.path(), &options).expect("reopen").db);
    }

    /// `reclaim_dropped_pages` drives sled's collector only if hearsay's `crossbeam-epoch`
    /// is sled's: one version of it in the lock file.
    #[test]
    fn one_crossbeam_epoch_is_shared_with_sled() {
        let lock = include_str!("../../Cargo.lock");
        assert_eq!(lock.matches("name = \"crossbeam-epoch\"").count(), 1, "two crossbeam-epoch versions");
    }

    /// What sled defers (a page paged out or replaced) is freed by the loop a node at
    /// rest runs after shrinking its cache, without any other sled work.
    #[test]
    fn deferred_frees_run_when_reclaimed() {
        // On a thread of its own: what it defers stays in its own batch until it flushes.
        let ran = std::thread::spawn(|| {
            let freed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let guard = crossbeam_epoch::pin();
            let counter = freed.clone();
            guard.defer(move || counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
            drop(guard);
            let started = std::time::Instant::now();
            // Other tests' threads may hold pins for a moment: retried, not waited out.
            while freed.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                if started.elapsed() > std::time::Duration::from_secs(30) {
                    return false;
                }
                reclaim_dropped_pages();
            }
            true
        })
        .join()
        .expect("the reclaiming thread");
        assert!(ran, "the deferred free never ran");
    }

    /// A sled database in `dir`, compressed at level 1 with a page cache of `cache` bytes
    /// (small, so that pages are read back from disk).
    fn small_compressed_db(dir: &Path, cache: u64) -> sled::Db {
        sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(cache)
            .use_compression(true)
            .compression_factor(1)
            .open()
            .expect("open")
    }

    /// sled (vendor/sled) decompresses each page it reads from disk with a zstd context
    /// kept per thread: pages evicted from a small cache and read again, from several
    /// threads at once and after a reopen, come back whole.
    #[test]
    fn compressed_pages_come_back_whole_from_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let values: Vec<Vec<u8>> = (0..3_000u32)
            .map(|i| {
                let len = 64 + (i * 7_919) % 3_000;
                (0..len).map(|j| u8::try_from((j / 3 + i * 31) % 251).unwrap_or(0)).collect()
            })
            .collect();
        let open = || small_compressed_db(dir.path(), 256 << 10);
        let read_all = |db: &sled::Db| {
            for (i, v) in values.iter().enumerate() {
                let got = db.get(u32::try_from(i).unwrap_or(0).to_be_bytes()).expect("get");
                assert_eq!(got.as_deref(), Some(v.as_slice()), "value {i}");
            }
        };
        {
            let db = open();
            for (i, v) in values.iter().enumerate() {
                db.insert(u32::try_from(i).unwrap_or(0).to_be_bytes(), v.as_slice()).expect("insert");
            }
            db.flush().expect("flush");
            std::thread::scope(|s| {
                for _ in 0..3 {
                    s.spawn(|| read_all(&db));
                }
            });
        }
        read_all(&open());
    }

    /// `sled::Tree::apply_sorted` (vendor/sled, the node-store passes' write) leaves the
    /// tree as `insert` and `remove` of the same keys would (the same writes through a
    /// transaction, key by key, give the same tree): runs dense and sparse, new keys
    /// splitting leaves, removals, a thread writing keys between them in the same
    /// leaves meanwhile (so the leaf it replaces changed under it), a small cache (pages
    /// read back from disk), and a reopen. Keys out of order are refused, with nothing
    /// written.
    #[test]
    fn sorted_runs_leave_the_tree_as_inserts_would() {
        use crate::privacy::noise::{RandomSource, Seeded};
        let mut rng = Seeded(0x9E37_79B9_7F4A_7C15);
        let mut next = move || rng.next_u64();
        let dir = tempfile::tempdir().expect("tempdir");
        let open = || small_compressed_db(dir.path(), 128 << 10);
        let key = |i: u64| (u32::try_from(i).unwrap_or(u32::MAX)).to_be_bytes().to_vec();
        let mut model: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = Default::default();
        let mut model_tx = model.clone();
        // In the tree's order (a key in the wrong leaf would show out of order).
        let contents = |tree: &sled::Tree| -> Vec<(Vec<u8>, Vec<u8>)> {
            tree.iter().map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).expect("read")).collect()
        };
        let listed = |model: &std::collections::BTreeMap<Vec<u8>, Vec<u8>>| -> Vec<(Vec<u8>, Vec<u8>)> {
            model.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let apply = |model: &mut std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
                     ops: &[(sled::IVec, Option<sled::IVec>)]| {
            for (k, v) in ops {
                match v {
                    Some(v) => model.insert(k.to_vec(), v.to_vec()),
                    None => model.remove(k.as_ref()),
                };
            }
        };
        {
            let db = open();
            let tx_tree = db.open_tree("tx").expect("tree");
            for round in 0..40u64 {
                // Even keys by runs (dense, sparse, or removing most: leaves merge);
                // every third round, odd keys by another thread meanwhile.
                let (dense, removing) = (round % 4 != 3, round % 5 == 4);
                let mut ops: Vec<(sled::IVec, Option<sled::IVec>)> = Vec::new();
                for i in (0..4_000u64).step_by(2) {
                    let pick = next() % 100;
                    if removing && pick < 90 {
                        ops.push((key(i).into(), None));
                    } else if (dense && pick < 80) || (!dense && pick < 3) {
                        let value = (next() % 10 != 0).then(|| {
                            let len = usize::try_from(16 + next() % 600).unwrap_or(16);
                            vec![u8::try_from((round + i) % 251).unwrap_or(0); len]
                        });
                        ops.push((key(i).into(), value.map(sled::IVec::from)));
                    }
                }
                let side: Vec<(Vec<u8>, Vec<u8>)> = match round % 3 {
                    0 => (1..4_000u64).step_by(2).filter(|_| next() % 4 == 0).map(|i| (key(i), vec![7; 40])).collect(),
                    _ => Vec::new(),
                };
                let mut applied = usize::MAX;
                let whole = std::thread::scope(|s| {
                    s.spawn(|| {
                        for (k, v) in &side {
                            db.insert(k.as_slice(), v.as_slice()).expect("insert beside");
                        }
                    });
                    db.apply_sorted(&ops, &mut applied).expect("apply_sorted")
                });
                if dense && !removing && round > 0 {
                    assert!(whole > 0, "round {round}: a dense run wrote no leaf as one page");
                }
                tx_tree
                    .transaction(|tx| {
                        for (k, v) in &ops {
                            match v {
                                Some(v) => tx.insert(k, v)?,
                                None => tx.remove(k)?,
                            };
                        }
                        Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
                    })
                    .expect("transaction");
                assert_eq!(applied, ops.len(), "round {round}: every op applied");
                apply(&mut model, &ops);
                apply(&mut model_tx, &ops);
                model.extend(side);
                assert_eq!(contents(&db), listed(&model), "round {round}");
                assert_eq!(contents(&tx_tree), listed(&model_tx), "round {round}: through transactions");
                for i in 0..4_000u64 {
                    let k = key(i);
                    assert_eq!(
                        db.get(&k).expect("get").as_deref(),
                        model.get(&k).map(Vec::as_slice),
                        "round {round}: key {i}"
                    );
                }
            }
            let unsorted: Vec<(sled::IVec, Option<sled::IVec>)> =
                vec![(key(10).into(), Some(b"b".into())), (key(4).into(), Some(b"a".into()))];
            let mut applied = usize::MAX;
            assert!(db.apply_sorted(&unsorted, &mut applied).is_err(), "keys out of order are refused");
            assert_eq!(applied, 0, "nothing of a refused run is written");
            assert_eq!(contents(&db), listed(&model), "nothing of a refused run is written");
            db.flush().expect("flush");
        }
        let db = open();
        assert_eq!(contents(&db), listed(&model), "after a reopen");
        assert_eq!(
            contents(&db.open_tree("tx").expect("tree")),
            listed(&model_tx),
            "through transactions, after a reopen"
        );
    }
}
