//! Disk space as a state of the store. Below a reserve of free space (`store.reserve_mb`)
//! the node writes nothing: the store is not opened, and a running writer refuses
//! batches with `Error::DiskFull`, which the APIs answer with HTTP 507. Reads go on;
//! writing resumes by itself once space is back (the check runs before every group).
//!
//! Also here: the one repair the node makes before sled opens a directory. sled 0.34
//! writes a snapshot to `snap.<lsn>.generating`, syncs it and renames it; but when it
//! lists snapshots at start it counts `*.generating` files too, so a snapshot cut short
//! by a full disk (an empty or partial `.generating` file) is read as the newest and
//! the store "corrupt" for good (`read_snapshot` in sled's `pagecache/snapshot.rs`).
//! A `.generating` file is never a finished snapshot (sled renames only after the
//! sync), so removing it loses nothing: sled replays its log from the last complete
//! snapshot instead.

use std::path::Path;

/// Bytes an unprivileged process may still write on the file system holding `path`.
pub fn available(path: &Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(path)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Allocates `len` bytes past the end of `file` without changing its length
/// (`fallocate` with `FALLOC_FL_KEEP_SIZE`): sled appends its log to this file, and
/// writes into blocks allocated ahead cannot fail for want of space, whatever another
/// process does to the disk meanwhile.
pub fn allocate_ahead(file: &std::fs::File, len: u64) -> std::io::Result<()> {
    let end = file.metadata()?.len();
    rustix::fs::fallocate(file, rustix::fs::FallocateFlags::KEEP_SIZE, end, len).map_err(std::io::Error::from)
}

/// Bytes allocated to `file` past its end (by `allocate_ahead`, not yet written).
pub fn allocated_ahead(file: &std::fs::File) -> u64 {
    use std::os::unix::fs::MetadataExt;
    file.metadata().map_or(0, |m| m.blocks().saturating_mul(512).saturating_sub(m.len()))
}

/// Removes unfinished snapshot files (`snap.*.generating`) from sled's directory;
/// returns their names.
pub fn remove_unfinished_snapshots(db_dir: &Path) -> std::io::Result<Vec<String>> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(db_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            std::fs::remove_file(entry.path())?;
            removed.push(name);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unfinished_snapshots_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["snap.00000000000A0000", "snap.00000000000B0000.generating", "conf", "db"] {
            std::fs::write(dir.path().join(name), b"").expect("write");
        }
        let removed = remove_unfinished_snapshots(dir.path()).expect("remove");
        assert_eq!(removed, ["snap.00000000000B0000.generating"]);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read")
            .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["conf", "db", "snap.00000000000A0000"]);
        assert!(available(dir.path()).expect("statvfs") > 0);
        assert!(remove_unfinished_snapshots(&dir.path().join("missing")).expect("ok").is_empty());
    }
}
