//! Writing each group (its sled transaction, then the flush that makes it durable) on a
//! thread beside the writer's, while the writer prepares the next group.
//!
//! Why: at 10,000 members the writer is a bulk import's critical path, and it did
//! everything in series: prepare a group, write it, flush, prepare the next. sled's
//! transactions and flushes were about a quarter of its time (17.1 and 1.7 s of a
//! 72.8 s import, the tenth session of 2026-12-06), with the machine's second core a
//! third idle. Here they run while the writer prepares the group after (`Writer::run`).
//!
//! What keeps it correct:
//! - One group is written at a time, and the writer lands it (`Writer::land`: waits for
//!   its write, adds its node changes, puts its buckets in memory, then acknowledges its
//!   batches) before it begins the next group's write: every read that
//!   `Writer::begin_apply` makes before writing sees the group before whole. An
//!   acknowledged batch is durable, and batches are acknowledged in the order they were
//!   written.
//! - The group prepared meanwhile shares no user with the one being written, and erases
//!   no listen (the writer lands that one first otherwise): preparing reads a user's
//!   stored blocks, day buckets, spellings and statistics, and only its own users'; what
//!   it reads of the rest (tracks, items, clients, heads) the writer holds in memory,
//!   but for an erasure, which reads the erased listen's track and client from the store
//!   (they may be the group in flight's to write).
//! - Room on disk is made for both groups (`Store::make_room`): the one in flight may not
//!   have written into its own yet.
//! - Anything else the writer does (a deletion, a time zone, a sharing level, a backup,
//!   an item's id, a failed batch's reload from disk, the shutdown) lands the group in
//!   flight first.
//! - A write that fails fails the store, as before (`Writer::poison`); the group
//!   prepared meanwhile is then refused (the store is no longer writable). A write that
//!   panics (in sled) is answered as a failed write; a thread that stopped otherwise
//!   leaves its channel closed, and the writer fails the store the same way and writes
//!   later groups itself.
//! - Whoever writes a group tells the thread adding its node changes (`absorb::Teller`)
//!   whether it was written, right after the flush, so they are added while the writer
//!   prepares the next group; the writer waits for that thread's lock before it
//!   acknowledges the group (`absorb`).
//!
//! Without a thread (none could be started), the writer writes each group itself.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use sled::Transactional;

use super::{Counters, Msg, Phase, absorb};
use crate::store::{Error, Result, Store};

/// One write of a pre-encoded group: (tree index, key, value or None to remove).
pub(super) type Ops = Vec<(usize, Vec<u8>, Option<Vec<u8>>)>;

/// A group's write: its operations in one sled transaction over the trees they touch,
/// then a flush. Only copies bytes (sled may run the transaction's closure again).
pub(super) struct Write {
    /// The trees the operations touch; `slot[i]` is the place of tree index `i` among them.
    pub(super) trees: Vec<sled::Tree>,
    pub(super) slot: [usize; 16],
    pub(super) ops: Ops,
    pub(super) store: Store,
    pub(super) stats: Arc<Counters>,
    /// Told whether the group was written, right after its flush: the thread adding its
    /// node changes (`absorb`), which adds them while the writer goes on. None when that
    /// thread does not have them.
    pub(super) absorber: Option<absorb::Teller>,
}

impl Write {
    /// Writes and flushes, then tells the thread adding the group's node changes
    /// whether it did (a panic in sled included, as a failed write: the thread must be
    /// told either way).
    pub(super) fn run(&self) -> Result<()> {
        let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.write()))
            .unwrap_or_else(|_| Err(Error::Db(sled::Error::ReportableBug("a group's write panicked".into()))));
        if let Some(absorber) = &self.absorber {
            absorber.tell(written.is_ok());
        }
        written
    }

    /// Writes and flushes, timing both (`Phase::Transaction`, `Phase::Flush`).
    fn write(&self) -> Result<()> {
        #[cfg(test)]
        {
            use std::sync::atomic::Ordering::Relaxed;
            while self.store.faults.hold_write.load(Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            if self.store.faults.fail_write.swap(false, Relaxed) {
                return Err(Error::Db(sled::Error::Io(std::io::Error::other("injected: writing a group"))));
            }
        }
        let started = std::time::Instant::now();
        let written = match self.trees.is_empty() {
            true => Ok(()),
            false => self.trees[..]
                .transaction(|tx| {
                    for (i, k, v) in &self.ops {
                        let Some(tree) = self.slot.get(*i).and_then(|s| tx.get(*s)) else { continue };
                        match v {
                            Some(v) => tree.insert(k.as_slice(), v.as_slice())?,
                            None => tree.remove(k.as_slice())?,
                        };
                    }
                    Ok::<(), sled::transaction::ConflictableTransactionError<Error>>(())
                })
                .map_err(crate::store::users::tx_error),
        };
        self.stats.time(Phase::Transaction, started);
        let started = std::time::Instant::now();
        let flushed = written.and_then(|()| self.store.flush());
        self.stats.time(Phase::Flush, started);
        flushed
    }
}

pub(super) fn gone() -> Error {
    Error::Invalid("the thread writing groups stopped (it panicked)".into())
}

pub(super) struct Committer {
    work: Option<SyncSender<Box<Write>>>,
    /// A write's result, and the write itself: dropped by the writer, whose allocations
    /// its buffers are (freeing them here took the writer's arena lock while it prepared:
    /// glibc's allocator, `memory::tune`).
    done: Receiver<(Result<()>, Box<Write>)>,
    /// A write was sent and its result not yet taken.
    in_flight: bool,
    /// The thread stopped (`is_gone`).
    gone: bool,
    /// The result of the write in flight, taken by `ended`.
    ended: Option<(Result<()>, Box<Write>)>,
    thread: Option<JoinHandle<()>>,
}

impl Committer {
    /// Starts the thread; `waker` is the writer's queue, where the thread says that a
    /// write ended (`Msg::Written`), so that a writer with nothing else to do lands the
    /// group then, and one given a batch meanwhile prepares it first. Weak: the queue
    /// closes when every `Ingestor` is gone, as without this thread.
    pub(super) fn start(waker: tokio::sync::mpsc::WeakSender<Msg>) -> std::io::Result<Committer> {
        let (work_tx, work_rx) = sync_channel::<Box<Write>>(1);
        let (done_tx, done_rx) = sync_channel(1);
        let thread = std::thread::Builder::new().name("hearsay-commit".into()).spawn(move || {
            while let Ok(write) = work_rx.recv() {
                let written = write.run();
                if done_tx.send((written, write)).is_err() {
                    return;
                }
                // A full queue holds batches: the writer prepares them, then lands the
                // group without being told.
                if let Some(queue) = waker.upgrade() {
                    let _ = queue.try_send(Msg::Written);
                }
            }
        })?;
        Ok(Committer {
            work: Some(work_tx),
            done: done_rx,
            in_flight: false,
            gone: false,
            ended: None,
            thread: Some(thread),
        })
    }

    /// Hands a group's write over (after `finish`: one at a time); given back if the
    /// thread is gone.
    pub(super) fn send(&mut self, write: Box<Write>) -> std::result::Result<(), Box<Write>> {
        let Some(tx) = &self.work else { return Err(write) };
        match tx.send(write) {
            Ok(()) => {
                self.in_flight = true;
                Ok(())
            }
            Err(std::sync::mpsc::SendError(write)) => Err(write),
        }
    }

    /// Whether the write sent last has ended (its result is waiting for `finish`).
    pub(super) fn ended(&mut self) -> bool {
        if self.in_flight && self.ended.is_none() {
            match self.done.try_recv() {
                Ok(ended) => self.ended = Some(ended),
                // The thread stopped: `finish` says so at once (no wake-up will come).
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return true,
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
            }
        }
        self.ended.is_some()
    }

    /// Waits for the write sent last: its result, or `None` when none is in flight.
    pub(super) fn finish(&mut self) -> Option<Result<()>> {
        if !std::mem::take(&mut self.in_flight) {
            return None;
        }
        let ended = match self.ended.take() {
            Some(ended) => Ok(ended),
            None => self.done.recv(),
        };
        Some(match ended {
            Ok((written, write)) => {
                drop(write);
                written
            }
            Err(_) => {
                self.gone = true;
                Err(gone())
            }
        })
    }

    /// The thread stopped without answering a write (it panicked outside the write, which
    /// `Write::run` catches): that write told no one whether it was written.
    pub(super) fn is_gone(&self) -> bool {
        self.gone
    }
}

impl Drop for Committer {
    /// The thread ends with its channel, and is waited for (with the write it may be
    /// doing): nothing of the writer's outlives it.
    fn drop(&mut self) {
        self.work = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
