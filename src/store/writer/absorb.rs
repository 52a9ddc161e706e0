//! Adding each group's node changes to the pending ones (`aggregates::NodePending`) on a
//! thread beside the writer's.
//!
//! Why: at 10,000 members the writer is the import's bottleneck (all of one core, the
//! process about half of two), and adding a group's changes to the pending maps, a hash
//! lookup per change among millions (`NodeChanges::absorb_into`), took a quarter of the
//! import's time on it. Here it runs while the writer writes the group, acknowledges it
//! and prepares the next one.
//!
//! What keeps it correct:
//! - The changes are sent before the group is written and put in order meanwhile, but
//!   added only once whoever wrote the group says it was written and flushed (`Teller`:
//!   the thread writing groups, `committer`, right after its flush, so the changes are
//!   added while the writer prepares the next group): a reader never sees changes of a
//!   group that is not durable.
//! - The thread takes the pending changes' write lock before the writer goes past the
//!   group's write (`Absorber::locked`), so before the group is acknowledged: a reader of
//!   node buckets takes that lock to read (`Store::bucket`) and so sees an acknowledged
//!   group whole, never its listens without their node changes.
//! - The writer waits for the thread (`Absorber::finish`) before it reads, changes or
//!   stores the pending changes itself: at the start of every group's write
//!   (`Writer::begin_apply`, through which deletions, time zones, backups and the shutdown
//!   store first), before a store of node chunks, before a sharing level's change, and
//!   before it reloads its memory (`reset`). Readers only wait for the lock.
//! - A thread that panicked leaves its channels closed: the writer fails the store (a
//!   group already written stays acknowledged).
//! - With mimalloc, what a store of node chunks frees of this thread's allocations is
//!   given back by this thread when the writer asks (`Absorber::give_back`).
//!
//! Without a thread (none could be started), the writer adds them itself after the write.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use crate::store::aggregates::{NodeChanges, NodePending};
use crate::store::{Error, Result};

use super::Spent;

/// A group's changes sent to the thread: the changes, and what the group's batches
/// carried.
type Work = (NodeChanges, Spent);

pub(super) struct Absorber {
    work: Option<SyncSender<Msg>>,
    /// The chunks a group changes, sent once the lock is taken.
    locked: Receiver<Vec<[u8; 9]>>,
    /// The changes given back (for their room).
    done: Receiver<NodeChanges>,
    /// A group's changes were sent and not yet given back.
    in_flight: bool,
    thread: Option<JoinHandle<()>>,
}

pub(super) fn gone() -> Error {
    Error::Invalid("the thread adding node changes stopped (it panicked)".into())
}

/// Puts a group's changes in key order (`NodeChanges::sort`, outside the lock); the
/// chunks they change.
fn order(node: &mut NodeChanges) -> Vec<[u8; 9]> {
    node.sort();
    node.keys()
}

/// Takes the pending changes' lock, calls `locked`, and adds the changes (in order:
/// `order`; `PendingChanges` counts the pairs they gain). A lock poisoned by a panicking
/// thread is taken all the same: the group is written, and does not fail for it.
fn add(pending: &NodePending, node: &NodeChanges, locked: impl FnOnce()) {
    if node.is_empty() {
        locked();
        return;
    }
    let mut held = pending.write().unwrap_or_else(std::sync::PoisonError::into_inner);
    locked();
    node.absorb_into(&mut held);
}

/// Adds a written group's changes on the calling thread (when there is no thread for
/// it): the chunks they change.
pub(super) fn absorb(pending: &NodePending, node: &mut NodeChanges) -> Vec<[u8; 9]> {
    let changed = order(node);
    add(pending, node, || ());
    changed
}

/// What the writer sends the thread.
enum Msg {
    /// A group's changes, and what its batches carried (dropped there: freeing a group's
    /// listens was 5% of the writer).
    Work(Box<Work>),
    /// Whether the group sent last was written: its changes are added only then.
    Written(bool),
    /// Give back the memory this thread's heap holds freed (`memory::give_back`; with
    /// mimalloc a thread's heap is collected only by that thread).
    GiveBack,
}

impl Absorber {
    pub(super) fn start(
        pending: NodePending,
        #[cfg(test)] faults: std::sync::Arc<crate::store::Faults>,
    ) -> std::io::Result<Absorber> {
        let (work_tx, work_rx) = sync_channel::<Msg>(2);
        let (locked_tx, locked_rx) = sync_channel(1);
        let (done_tx, done_rx) = sync_channel(1);
        let thread = std::thread::Builder::new().name("hearsay-absorb".into()).spawn(move || {
            // The next message but a request to give memory back, answered on the way.
            let next = || loop {
                match work_rx.recv() {
                    Ok(Msg::GiveBack) => {
                        #[cfg(feature = "mimalloc")]
                        crate::memory::give_back();
                    }
                    other => return other.ok(),
                }
            };
            while let Some(msg) = next() {
                let Msg::Work(work) = msg else { continue };
                let (mut node, spent) = *work;
                // Ordered while the group is written; added only once it is. Nothing
                // else is sent between (`Writer::begin_apply`, then the write's `Teller`);
                // without the answer (its sender is gone) the changes are not added.
                let changed = order(&mut node);
                let written = matches!(next(), Some(Msg::Written(true)));
                if written {
                    add(&pending, &node, || {
                        let _ = locked_tx.send(changed);
                        #[cfg(test)]
                        while faults.hold_absorb.load(std::sync::atomic::Ordering::Relaxed) {
                            std::thread::sleep(std::time::Duration::from_millis(1));
                        }
                    });
                }
                drop(spent);
                if done_tx.send(node).is_err() {
                    return;
                }
            }
        })?;
        Ok(Absorber { work: Some(work_tx), locked: locked_rx, done: done_rx, in_flight: false, thread: Some(thread) })
    }

    /// Hands a group's changes over before the group is written (after `finish`: one
    /// group at a time); given back if the thread is gone.
    pub(super) fn send(&mut self, work: Work) -> std::result::Result<(), Work> {
        let Some(tx) = &self.work else { return Err(work) };
        match tx.send(Msg::Work(Box::new(work))) {
            Ok(()) => {
                self.in_flight = true;
                Ok(())
            }
            Err(std::sync::mpsc::SendError(Msg::Work(work))) => Err(*work),
            // Only a `Work` was sent, so only a `Work` comes back.
            Err(std::sync::mpsc::SendError(_)) => Err((NodeChanges::default(), Vec::new())),
        }
    }

    /// Who tells the thread that the group sent last was written (`Teller::tell`).
    pub(super) fn teller(&self) -> Option<Teller> {
        self.work.clone().map(Teller)
    }

    /// After the group sent last was told written or not (`Teller::tell`): once it was,
    /// waits until the thread holds the pending changes' lock, and returns the chunks
    /// the group changes (none when it was not written).
    pub(super) fn locked(&self, written: bool) -> Result<Vec<[u8; 9]>> {
        match written {
            true => self.locked.recv().map_err(|_| gone()),
            false => Ok(Vec::new()),
        }
    }

    /// Asks the thread to give back the memory its heap holds freed (after a store of
    /// node chunks freed what it had allocated). Not waited for.
    pub(super) fn give_back(&self) {
        if let Some(tx) = &self.work {
            let _ = tx.try_send(Msg::GiveBack);
        }
    }

    /// Waits for the group sent last to be added (or dropped, not written): its changes
    /// (for their room). None when none is in flight.
    pub(super) fn finish(&mut self) -> Result<Option<NodeChanges>> {
        if !std::mem::take(&mut self.in_flight) {
            return Ok(None);
        }
        let done = self.done.recv().map_err(|_| gone())?;
        // Chunks sent and not asked for (the writer went on without `locked`): dropped
        // here, not taken for the next group's.
        while self.locked.try_recv().is_ok() {}
        Ok(Some(done))
    }
}

/// Tells the thread whether the group sent last was written, once: the writer, or the
/// thread that wrote the group (`committer`), right after its flush, so that its changes
/// are added while the writer prepares the next group. Held only while that group is
/// written (the thread ends once every sender is gone).
pub(super) struct Teller(SyncSender<Msg>);

impl Teller {
    /// Whether the thread was told (it is gone otherwise).
    pub(super) fn tell(&self, written: bool) -> bool {
        self.0.send(Msg::Written(written)).is_ok()
    }
}

impl Drop for Absorber {
    /// The thread ends with its channel, and is waited for: nothing of the writer's
    /// outlives it.
    fn drop(&mut self) {
        self.work = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
