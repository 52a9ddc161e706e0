//! Compaction: the point at which erased content physically leaves the database.
//!
//! sled is log-structured: when a listen is erased (or a user deleted), the live tree
//! changes at once but older copies of the changed blocks stay in sled's segment files
//! until its cleaner happens to rewrite those segments, with no time bound. `compact`
//! gives a hard guarantee instead: it blanks every interned track that no log refers to
//! any more (track names are shared by all users, so they outlive one user's erasure),
//! and the chart items (artist, recording, release names) no remaining track credits,
//! recomputes the users' spellings from what remains, then copies every live tree into a fresh database file and deletes the old one.
//! The copy writes values of older encodings in the current one (`current_version`).
//! It runs with the node stopped.

use std::collections::HashSet;
use std::path::Path;

use super::codec::{decode, encode};
use super::keys;
use super::schema::ITEM_CHUNK;
use super::schema::{self, TRACK_CHUNK};
use super::values::{AggV2, BlockV2, CreditChunkV2, DayV3, ItemChunkV2, ItemName, StoredEntry, TrackChunkV2};
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
pub(crate) fn blank_track() -> TrackRef {
    TrackRef {
        artist: String::new(),
        artist_names: vec![],
        artist_mbids: vec![],
        title: String::new(),
        album: None,
        recording_mbid: None,
        release_mbid: None,
    }
}

/// Whether compaction blanked `t` (`blank_track`): the one rule, `Named::is_blank`.
pub(crate) fn is_blank(t: &TrackRef) -> bool {
    crate::store::values::Named::is_blank(t)
}

/// Bytes of every file below `path` (apparent sizes).
pub fn dir_bytes(path: &Path) -> u64 {
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

/// Finishes or undoes a compaction a crash cut short (called before sled opens `dir/db`):
/// with `db` gone between the two renames, the old database (`db.old`) comes back;
/// with the new one in place, the old one goes; a half-built `db.compacting` goes.
pub(crate) fn finish_interrupted_swap(dir: &Path) -> std::io::Result<()> {
    let (db, old, fresh) = (dir.join("db"), dir.join("db.old"), dir.join("db.compacting"));
    if !db.exists() && old.exists() {
        tracing::warn!(dir = %dir.display(), "a compaction was cut short: the database before it is put back");
        std::fs::rename(&old, &db)?;
    }
    if db.exists() && old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    if db.exists() && fresh.exists() {
        std::fs::remove_dir_all(&fresh)?;
    }
    Ok(())
}

/// Blanks unreferenced tracks, then rewrites the database at `dir/db` into a fresh file.
pub fn compact(dir: &Path, options: &Options, rules: &crate::stats::credits::CreditRules) -> Result<CompactReport> {
    let store = Store::open(dir, options)?;
    let bytes_before = dir_bytes(store.path());
    // The copy needs as much room as the database, beside the reserve.
    let needed = bytes_before.saturating_add(options.reserve_mb.saturating_mul(1 << 20));
    let free = super::space::available(dir).map_err(|e| Error::Db(sled::Error::Io(e)))?;
    if free < needed {
        return Err(Error::DiskFull { path: dir.to_owned(), free_mb: free >> 20, reserve_mb: needed >> 20 });
    }
    let referenced = referenced_tracks(&store)?;
    // Items named by a track about to be blanked keep their names, as strings; stored
    // before any track is blanked, so a crash in between leaves every name readable.
    pin_item_names(&store, &referenced)?;
    store.flush()?;
    let tracks_blanked = blank_unreferenced_tracks(&store, &referenced)?;
    blank_unreferenced_items(&store)?;
    // Spellings come from the remaining tracks and logs only: an erased listen's spelling
    // goes with it.
    store.rebuild_spellings(rules)?;
    store.flush()?;

    let fresh_path = dir.join("db.compacting");
    if fresh_path.exists() {
        std::fs::remove_dir_all(&fresh_path).map_err(|e| Error::Db(sled::Error::Io(e)))?;
    }
    // A fresh database: it takes `store.compression` (how a store changes it).
    let fresh = super::sled_config(&fresh_path, options, None).open()?;
    let trees = store.db.export().into_iter().map(|(kind, name, items)| {
        let items: Box<dyn Iterator<Item = Vec<Vec<u8>>>> = match &name[..] {
            n if n == schema::USERID_BUCKET_COUNTS.as_bytes() => {
                Box::new(items.map(|kv| current_version::<AggV2>(schema::USERID_BUCKET_COUNTS, kv)))
            }
            n if n == schema::USERID_DAY_LISTENS.as_bytes() => {
                Box::new(items.map(|kv| current_version::<DayV3>(schema::USERID_DAY_LISTENS, kv)))
            }
            n if n == schema::USERID_SEQ_BLOCK.as_bytes() => {
                Box::new(items.map(|kv| current_version::<BlockV2>(schema::USERID_SEQ_BLOCK, kv)))
            }
            n if n == schema::TRACKCHUNK_CREDITS.as_bytes() => {
                Box::new(items.map(|kv| current_version::<CreditChunkV2>(schema::TRACKCHUNK_CREDITS, kv)))
            }
            n if n == schema::TRACKCHUNK_TRACKS.as_bytes() => {
                Box::new(items.map(|kv| current_version::<TrackChunkV2>(schema::TRACKCHUNK_TRACKS, kv)))
            }
            n if n == schema::ITEMCHUNK_ITEMS.as_bytes() => {
                Box::new(items.map(|kv| current_version::<ItemChunkV2>(schema::ITEMCHUNK_ITEMS, kv)))
            }
            _ => Box::new(items),
        };
        (kind, name, items)
    });
    fresh.import(trees.collect());
    fresh.flush()?;
    drop(fresh);
    let io = |e| Error::Db(sled::Error::Io(e));
    // sled never syncs its conf, which alone says whether the pages are compressed.
    super::sync_conf(&fresh_path).map_err(io)?;
    let old_path = store.path().to_path_buf();
    drop(store);
    let retired = dir.join("db.old");
    std::fs::rename(&old_path, &retired).map_err(io)?;
    std::fs::rename(&fresh_path, &old_path).map_err(io)?;
    // The renames made durable before the old database goes.
    super::sync_dir(dir).map_err(io)?;
    std::fs::remove_dir_all(&retired).map_err(io)?;
    let bytes_after = dir_bytes(&old_path);
    Ok(CompactReport { tracks_blanked, bytes_before, bytes_after })
}

/// A value of a tree whose encoding changed (schemas 14 to 18: delta-coded, keys left out) in the
/// version this build writes. Older values are read as they are, but only a value that
/// changes is written again, and a full log block or a past day never changes: the
/// copy is where they shrink. A value that does not decode is copied as it is
/// (compaction does not repair; reading it names its tree and key).
fn current_version<T: super::codec::Versioned>(tree: &'static str, mut kv: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    if let [key, value] = kv.as_mut_slice()
        && value.first() != Some(&T::VERSION)
        && let Ok(current) = decode::<T>(tree, key, value)
    {
        *value = encode(&current);
    }
    kv
}

/// Blanks chart items (artist, recording and release names) that no remaining track
/// credits, and drops the credits of blanked tracks.
fn blank_unreferenced_items(store: &Store) -> Result<()> {
    let mut referenced: [HashSet<u32>; 3] = Default::default();
    let mut tracks_alive = HashSet::new();
    for kv in store.trees.trackchunk_tracks.iter() {
        let (k, v) = kv?;
        let chunk = keys::parse_u32(schema::TRACKCHUNK_TRACKS, &k)?;
        let tracks: TrackChunkV2 = decode(schema::TRACKCHUNK_TRACKS, &k, &v)?;
        for (i, t) in tracks.tracks.iter().enumerate() {
            if !is_blank(t) {
                tracks_alive.insert(chunk * TRACK_CHUNK + i as u32);
            }
        }
    }
    for kv in store.trees.trackchunk_credits.iter() {
        let (k, v) = kv?;
        let chunk = keys::parse_u32(schema::TRACKCHUNK_CREDITS, &k)?;
        let mut credits: CreditChunkV2 = decode(schema::TRACKCHUNK_CREDITS, &k, &v)?;
        let mut changed = false;
        for (i, c) in credits.tracks.iter_mut().enumerate() {
            let id = chunk * TRACK_CHUNK + i as u32;
            if !tracks_alive.contains(&id) {
                changed |= c.take().is_some();
                continue;
            }
            if let Some(c) = c {
                referenced[0].extend(c.artists.iter().copied());
                referenced[1].insert(c.recording);
                referenced[2].extend(c.release);
            }
        }
        if changed {
            store.trees.trackchunk_credits.insert(k, encode(&credits))?;
        }
    }
    // A recording or release keeps its main artist's name alive.
    for kv in store.trees.itemchunk_items.iter() {
        let (k, v) = kv?;
        let chunk: ItemChunkV2 = decode(schema::ITEMCHUNK_ITEMS, &k, &v)?;
        let (kind, n) = (k.first().copied().unwrap_or(0) as usize, keys::parse_u32(schema::ITEMCHUNK_ITEMS, &k[1..])?);
        for (i, item) in chunk.items.iter().enumerate() {
            if kind > 0 && referenced.get(kind).is_some_and(|r| r.contains(&(n * ITEM_CHUNK + i as u32))) {
                referenced[0].extend(item.artist);
            }
        }
    }
    for kv in store.trees.itemchunk_items.iter() {
        let (k, v) = kv?;
        let mut chunk: ItemChunkV2 = decode(schema::ITEMCHUNK_ITEMS, &k, &v)?;
        let (kind, n) = (k.first().copied().unwrap_or(0) as usize, keys::parse_u32(schema::ITEMCHUNK_ITEMS, &k[1..])?);
        let mut changed = false;
        for (i, item) in chunk.items.iter_mut().enumerate() {
            let alive = referenced.get(kind).is_some_and(|r| r.contains(&(n * ITEM_CHUNK + i as u32)));
            let blank = matches!(&item.name, ItemName::Literal(name) if name.is_empty());
            if !alive && !blank {
                item.name = ItemName::Literal(String::new());
                item.artist = None;
                changed = true;
            }
        }
        if changed {
            store.trees.itemchunk_items.insert(k, encode(&chunk))?;
        }
    }
    Ok(())
}

/// Writes as strings the names of items that tracks outside `referenced` spell.
fn pin_item_names(store: &Store, referenced: &HashSet<u32>) -> Result<()> {
    let mut names = super::aggregates::NameReader::new(store);
    for kv in store.trees.itemchunk_items.iter() {
        let (k, v) = kv?;
        let mut chunk: ItemChunkV2 = decode(schema::ITEMCHUNK_ITEMS, &k, &v)?;
        let mut changed = false;
        for item in &mut chunk.items {
            if let ItemName::Spelled { track, .. } = item.name
                && !referenced.contains(&track)
            {
                item.name = ItemName::Literal(names.resolve(&k, item.clone())?.name);
                changed = true;
            }
        }
        if changed {
            store.trees.itemchunk_items.insert(k, encode(&chunk))?;
        }
    }
    Ok(())
}

/// The tracks some log entry names.
fn referenced_tracks(store: &Store) -> Result<HashSet<u32>> {
    let mut referenced = HashSet::new();
    for kv in store.trees.userid_seq_block.iter() {
        let (k, v) = kv?;
        let block: BlockV2 = decode(schema::USERID_SEQ_BLOCK, &k, &v)?;
        for e in &block.entries {
            match e {
                StoredEntry::Listen { track, .. }
                | StoredEntry::Love { track, .. }
                | StoredEntry::Unlove { track, .. }
                | StoredEntry::Hate { track, .. } => {
                    referenced.insert(*track);
                }
                StoredEntry::Delete { .. } | StoredEntry::Erased { .. } => {}
            }
        }
    }
    Ok(referenced)
}

fn blank_unreferenced_tracks(store: &Store, referenced: &HashSet<u32>) -> Result<u64> {
    let mut blanked = 0;
    for kv in store.trees.trackchunk_tracks.iter() {
        let (k, v) = kv?;
        let chunk = keys::parse_u32(schema::TRACKCHUNK_TRACKS, &k)?;
        let mut tracks: TrackChunkV2 = decode(schema::TRACKCHUNK_TRACKS, &k, &v)?;
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
