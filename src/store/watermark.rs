//! The acknowledged-entries watermark: after every group the writer flushed, the total
//! number of log entries the store holds is written to `DATA_DIR/acknowledged`, a small
//! file beside sled's. sled recovers a damaged log by rolling back to the last message
//! it can read, which opens without complaint but without the entries after the damage;
//! comparing the entries found with the watermark turns that silent loss into an
//! `Error::Damaged` at open (for the node, `log verify` and every command alike).
//!
//! The file is replaced atomically (written beside, renamed over) but not synced: after
//! a power loss it may hold an older, smaller count, which can hide a loss but never
//! invent one, because it is only ever written after the flush that made its count
//! durable.

use super::{Error, Result, Store, schema};
use crate::store::codec::decode;
use crate::store::values::HeadV1;

const FILE: &str = "acknowledged";

impl Store {
    fn watermark_path(&self) -> std::path::PathBuf {
        self.path.parent().unwrap_or(&self.path).join(FILE)
    }

    /// Entries in every user's log, from the log heads, and how many heads do not
    /// decode (their users' reads report the damage, naming tree and key).
    pub fn entries_total(&self) -> Result<(u64, u64)> {
        let (mut total, mut unreadable) = (0u64, 0u64);
        for kv in self.trees.userid_loghead.iter() {
            let (k, v) = kv?;
            match decode::<HeadV1>(schema::USERID_LOGHEAD, &k, &v) {
                Ok(head) => total = total.saturating_add(head.next_seq),
                Err(_) => unreadable += 1,
            }
        }
        Ok((total, unreadable))
    }

    /// Moves the watermark: `added` entries were flushed. A raise is written without a
    /// sync (lagging after a power loss only weakens detection).
    pub(crate) fn acknowledge(&self, added: u64) {
        use std::sync::atomic::Ordering;
        let Ok(_one_writer) = self.health.watermark_lock.lock() else { return };
        let now = self.health.acknowledged.load(Ordering::Acquire).saturating_add(added);
        self.health.acknowledged.store(now, Ordering::Release);
        self.record_acknowledged(now);
    }

    /// Lowers the watermark by `removed` entries about to be deleted, durably (file and
    /// directory synced) before the deletion may start: a raise that lags is harmless,
    /// a lowering that lags would make the next open see a loss that is not one.
    pub(crate) fn unacknowledge(&self, removed: u64) -> Result<()> {
        use std::io::Write;
        use std::sync::atomic::Ordering;
        let _one_writer =
            self.health.watermark_lock.lock().map_err(|_| Error::Invalid("watermark lock poisoned".into()))?;
        let now = self.health.acknowledged.load(Ordering::Acquire).saturating_sub(removed);
        let path = self.watermark_path();
        let tmp = path.with_extension("new");
        let io = |e| Error::Db(sled::Error::Io(e));
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(format!("entries {now}\n").as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        self.health.acknowledged.store(now, Ordering::Release);
        Ok(())
    }

    /// Starts the watermark at what the store holds (at open, after the check).
    pub(crate) fn start_acknowledged(&self) -> Result<()> {
        let (found, unreadable) = self.entries_total()?;
        // With a head unreadable its entries are unknown: keep the higher mark.
        let total = if unreadable > 0 { found.max(self.acknowledged().unwrap_or(0)) } else { found };
        self.health.acknowledged.store(total, std::sync::atomic::Ordering::Release);
        self.record_acknowledged(total);
        Ok(())
    }

    fn record_acknowledged(&self, total: u64) {
        let path = self.watermark_path();
        let tmp = path.with_extension("new");
        let written = std::fs::write(&tmp, format!("entries {total}\n")).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            // Only the detection of damage is weaker for it; the data is safe.
            tracing::debug!(error = %e, "cannot write the acknowledged watermark");
        }
    }

    /// The recorded watermark, if any.
    pub fn acknowledged(&self) -> Option<u64> {
        let text = std::fs::read_to_string(self.watermark_path()).ok()?;
        text.trim().strip_prefix("entries ")?.parse().ok()
    }

    /// `Error::Damaged` when the logs hold fewer entries than were acknowledged.
    pub(crate) fn check_acknowledged(&self) -> Result<()> {
        let Some(acknowledged) = self.acknowledged() else { return Ok(()) };
        let (found, unreadable) = self.entries_total()?;
        if unreadable > 0 {
            tracing::warn!(unreadable, "log heads that do not decode: those users' reads report it");
            return Ok(());
        }
        if found < acknowledged {
            return Err(Error::Damaged {
                path: self.path.clone(),
                reason: format!(
                    "its logs hold {found} entries but {acknowledged} were acknowledged: {} are missing",
                    acknowledged - found
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_with_fewer_entries_than_acknowledged_is_damaged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), &Default::default()).expect("open");
        assert_eq!(store.acknowledged(), Some(0), "written at open");
        store.check_acknowledged().expect("healthy");
        store.acknowledge(5);
        let e = store.check_acknowledged().expect_err("5 acknowledged, 0 found");
        assert!(e.to_string().contains("0 entries but 5 were acknowledged"), "{e}");
    }
}
