//! Compaction: the point at which erased content physically leaves the database.
//!
//! sled is log-structured: when a listen is erased (or a user deleted), the live tree
//! changes at once but older copies of the changed blocks stay in sled's segment files
//! until its cleaner happens to rewrite those segments, with no time bound. `compact`
//! gives a hard guarantee instead: it blanks every interned track that no log refers to
//! any more (track names are shared by all users, so they outlive one user's erasure),
//! then copies every live tree into a fresh database file and deletes the old one.
//! It runs with the node stopped.

use std::collections::HashSet;
use std::path::Path;

use super::codec::{decode, encode};
use super::keys;
use super::schema::{self, TRACK_CHUNK};
use super::values::{BlockV1, StoredEntry, TrackChunkV1, TrackV1};
use super::{Error, Options, Result, Store};
use crate::log::TrackRef;

/// What a compaction did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactReport {
    pub tracks_blanked: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// The placeholder that replaces an unreferenced track's names.
pub(crate) fn blank_track() -> TrackV1 {
    TrackV1 {
        track: TrackRef {
            artist: String::new(),
            artist_names: vec![],
            artist_mbids: vec![],
            title: String::new(),
            album: None,
            recording_mbid: None,
            release_mbid: None,
        },
        dedupe_key: 0,
    }
}

pub(crate) fn is_blank(t: &TrackV1) -> bool {
    t.track.artist.is_empty() && t.track.title.is_empty()
}

fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Blanks unreferenced tracks, then rewrites the database at `dir/db` into a fresh file.
pub fn compact(dir: &Path, options: &Options) -> Result<CompactReport> {
    let store = Store::open(dir, options)?;
    let bytes_before = dir_bytes(store.path());
    let tracks_blanked = blank_unreferenced_tracks(&store)?;
    store.flush()?;

    let fresh_path = dir.join("db.compacting");
    if fresh_path.exists() {
        std::fs::remove_dir_all(&fresh_path).map_err(|e| Error::Db(sled::Error::Io(e)))?;
    }
    let fresh = sled::Config::new()
        .path(&fresh_path)
        .cache_capacity(options.cache_mb.saturating_mul(1 << 20))
        .open()?;
    fresh.import(store.db.export());
    fresh.flush()?;
    drop(fresh);
    let old_path = store.path().to_path_buf();
    drop(store);
    let retired = dir.join("db.old");
    let io = |e| Error::Db(sled::Error::Io(e));
    std::fs::rename(&old_path, &retired).map_err(io)?;
    std::fs::rename(&fresh_path, &old_path).map_err(io)?;
    std::fs::remove_dir_all(&retired).map_err(io)?;
    let bytes_after = dir_bytes(&old_path);
    Ok(CompactReport {
        tracks_blanked,
        bytes_before,
        bytes_after,
    })
}

fn blank_unreferenced_tracks(store: &Store) -> Result<u64> {
    let mut referenced = HashSet::new();
    for kv in store.trees.userid_seq_block.iter() {
        let (k, v) = kv?;
        let block: BlockV1 = decode(schema::USERID_SEQ_BLOCK, &k, &v)?;
        for e in &block.entries {
            match e {
                StoredEntry::Listen { track, .. }
                | StoredEntry::Love { track, .. }
                | StoredEntry::Unlove { track, .. } => {
                    referenced.insert(*track);
                }
                StoredEntry::Delete { .. } | StoredEntry::Erased { .. } => {}
            }
        }
    }
    let mut blanked = 0;
    for kv in store.trees.trackchunk_tracks.iter() {
        let (k, v) = kv?;
        let chunk = keys::parse_u32(schema::TRACKCHUNK_TRACKS, &k)?;
        let mut tracks: TrackChunkV1 = decode(schema::TRACKCHUNK_TRACKS, &k, &v)?;
        let mut changed = false;
        for (i, t) in tracks.tracks.iter_mut().enumerate() {
            let id = chunk * TRACK_CHUNK + i as u32;
            if !referenced.contains(&id) && !is_blank(t) {
                *t = blank_track();
                changed = true;
                blanked += 1;
            }
        }
        if changed {
            store.trees.trackchunk_tracks.insert(k, encode(&tracks))?;
        }
    }
    Ok(blanked)
}
