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
//! - The thread takes the pending changes' write lock before the writer goes past the
//!   group's write (`Absorber::locked`), so before the group is acknowledged: a reader
//!   of node buckets takes that lock to read (`Store::bucket`) and so sees an
//!   acknowledged group whole, never its listens without their node changes.
//! - The writer waits for the thread (`Absorber::finish`) before anything else reads or
//!   stores the pending changes: at the start of every group's write (`Writer::apply`),
//!   before a store of node chunks, and before any other message it handles.
//! - The changes are sent only once nothing but the write can fail, and a failed write
//!   fails the store (no reads through it; its memory is dropped when it reopens), so
//!   changes added for a group that is not written are never read.
//! - A thread that panicked leaves its channels closed: the writer fails the store.
//!
//! Without a thread (none could be started), the writer adds them itself after the write.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use crate::store::aggregates::{NodeChanges, NodePending};
use crate::store::{Error, Result};

use super::Spent;

/// A group's changes sent to the thread: the changes, and what the group's batches
/// carried, dropped there (freeing a group's listens was 5% of the writer).
type Work = (NodeChanges, Spent);

pub(super) struct Absorber {
    work: Option<SyncSender<Work>>,
    /// The chunks a group changes, sent once the lock is taken.
    locked: Receiver<Vec<[u8; 9]>>,
    /// The changes given back (for their room) and the pairs the pending maps gained.
    done: Receiver<(NodeChanges, usize)>,
    /// A group's changes were sent and not yet given back.
    in_flight: bool,
    thread: Option<JoinHandle<()>>,
}

pub(super) fn gone() -> Error {
    Error::Invalid("the thread adding node changes stopped (it panicked)".into())
}

/// Sorts a group's changes, takes the pending changes' lock, tells which chunks they
/// change, and adds them. A lock poisoned by a panicking thread is taken all the same:
/// the group is being written, and does not fail for it.
pub(super) fn absorb(pending: &NodePending, node: &mut NodeChanges, locked: impl FnOnce(Vec<[u8; 9]>)) -> usize {
    if node.is_empty() {
        locked(Vec::new());
        return 0;
    }
    // Sorted outside the lock (`NodeChanges::sort`).
    node.sort();
    let keys = node.keys();
    let mut held = pending.write().unwrap_or_else(std::sync::PoisonError::into_inner);
    locked(keys);
    node.absorb_into(&mut held)
}

impl Absorber {
    pub(super) fn start(
        pending: NodePending,
        #[cfg(test)] faults: std::sync::Arc<crate::store::Faults>,
    ) -> std::io::Result<Absorber> {
        let (work_tx, work_rx) = sync_channel::<Work>(1);
        let (locked_tx, locked_rx) = sync_channel(1);
        let (done_tx, done_rx) = sync_channel(1);
        let thread = std::thread::Builder::new().name("hearsay-absorb".into()).spawn(move || {
            while let Ok((mut node, spent)) = work_rx.recv() {
                let gained = absorb(&pending, &mut node, |keys| {
                    let _ = locked_tx.send(keys);
                    #[cfg(test)]
                    while faults.hold_absorb.load(std::sync::atomic::Ordering::Relaxed) {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                });
                drop(spent);
                if done_tx.send((node, gained)).is_err() {
                    return;
                }
            }
        })?;
        Ok(Absorber { work: Some(work_tx), locked: locked_rx, done: done_rx, in_flight: false, thread: Some(thread) })
    }

    /// Hands a group's changes to the thread (after `finish`: one group at a time);
    /// given back if it is gone.
    pub(super) fn send(&mut self, work: Work) -> std::result::Result<(), Work> {
        let Some(tx) = &self.work else { return Err(work) };
        match tx.send(work) {
            Ok(()) => {
                self.in_flight = true;
                Ok(())
            }
            Err(std::sync::mpsc::SendError(work)) => Err(work),
        }
    }

    /// Waits until the thread holds the pending changes' lock for the group sent last;
    /// the chunks it changes.
    pub(super) fn locked(&self) -> Result<Vec<[u8; 9]>> {
        self.locked.recv().map_err(|_| gone())
    }

    /// Waits for the group sent last to be added: its changes (for their room) and the
    /// pairs the pending maps gained. None when none is in flight.
    pub(super) fn finish(&mut self) -> Result<Option<(NodeChanges, usize)>> {
        if !std::mem::take(&mut self.in_flight) {
            return Ok(None);
        }
        let done = self.done.recv().map_err(|_| gone())?;
        // The chunks of a group whose write failed were not asked for (`locked`): sent
        // before `done`, they are dropped here, not taken for the next group's.
        while self.locked.try_recv().is_ok() {}
        Ok(Some(done))
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
