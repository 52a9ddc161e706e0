//! Interning: each distinct track and client name gets a dense id the first time the
//! node sees it (tracks in chunks of `TRACK_CHUNK`), and credits are decided then.

use crate::log::TrackRef;
use crate::log::dedupe::dedupe_key;
use crate::store::keys::{self};
use crate::store::schema::{self, TRACK_CHUNK};
use crate::store::values::TrackChunkV2;
use crate::store::{Error, Result, Store};

use super::*;

/// The digest that interns a track: blake3 of its postcard bytes, first 16 bytes
/// (serialised on the stack: this runs for every listen the writer appends).
pub(super) fn track_digest(track: &TrackRef) -> [u8; 16] {
    let hash = crate::log::entry::with_postcard(track, blake3::hash);
    let mut d = [0; 16];
    d.copy_from_slice(&hash.as_bytes()[..16]);
    d
}

/// Track `id` as interned: from the writer's open chunk, a chunk this group filled, or
/// the store.
pub(super) fn interned_track(
    open: &(u32, TrackChunkV2),
    filled: &BTreeMap<u32, TrackChunkV2>,
    store: &Store,
    id: u32,
) -> Result<TrackRef> {
    let (chunk, slot) = (id / TRACK_CHUNK, (id % TRACK_CHUNK) as usize);
    let pending = if open.0 == chunk { Some(&open.1) } else { filled.get(&chunk) };
    match pending {
        Some(tracks) => {
            tracks.tracks.get(slot).cloned().ok_or_else(|| {
                Error::corrupt(schema::TRACKCHUNK_TRACKS, &keys::u32_key(chunk), "track id past its chunk")
            })
        }
        None => store.track(id),
    }
}

/// Client `id` as interned: by this group (`Group::clients`) or before (the store).
pub(super) fn interned_client(new: &[(String, u32)], store: &Store, id: u32) -> Result<Option<String>> {
    match new.iter().find(|(_, i)| *i == id) {
        Some((name, _)) => Ok(Some(name.clone())),
        None => store.client_name(id),
    }
}

impl Writer {
    /// The id and dedupe key of `track`, whose `track_digest` is `digest`.
    pub(super) fn intern_track(&mut self, group: &mut Group, track: &TrackRef, digest: [u8; 16]) -> Result<(u32, u32)> {
        if let Some(id) = self.tracks.get(&digest) {
            return Ok((id, self.track_key(id)?));
        }
        let dkey = dedupe_key(track);
        let (chunk, open) = &mut self.open_chunk;
        let id = chunk
            .checked_mul(TRACK_CHUNK)
            .and_then(|base| base.checked_add(open.tracks.len() as u32))
            .ok_or(Error::IdsExhausted("track"))?;
        if self.track_keys.len() != id as usize {
            return Err(Error::corrupt(schema::TRACKCHUNK_TRACKS, &keys::u32_key(*chunk), "track ids out of step"));
        }
        open.tracks.push(track.clone());
        group.new_tracks = true;
        if open.tracks.len() >= TRACK_CHUNK as usize {
            let full = std::mem::take(open);
            group.track_chunks.insert(*chunk, full);
            *chunk += 1;
        }
        self.tracks.insert(digest, id);
        self.track_keys.push(dkey);
        // Credits are decided once, when the node first sees a track (in id order).
        self.dict.credit_track(id, track)?;
        Ok((id, dkey))
    }

    /// The dedupe key of interned track `id`.
    pub(super) fn track_key(&self, id: u32) -> Result<u32> {
        self.track_keys.get(id as usize).copied().ok_or_else(|| {
            Error::corrupt(schema::TRACKCHUNK_TRACKS, &keys::u32_key(id / TRACK_CHUNK), "track id past the last track")
        })
    }

    pub(super) fn intern_client(&mut self, group: &mut Group, name: &str) -> Result<u32> {
        if let Some((last, id)) = &self.last_client
            && last == name
        {
            return Ok(*id);
        }
        if let Some(&id) = self.clients.get(name) {
            self.last_client = Some((name.to_owned(), id));
            return Ok(id);
        }
        let id = match self.store.trees.clientname_clientid.get(name.as_bytes())? {
            Some(bytes) => keys::parse_u32(schema::CLIENTNAME_CLIENTID, &bytes)?,
            None => {
                let id = self.next_client_id;
                self.next_client_id = id.checked_add(1).ok_or(Error::IdsExhausted("client"))?;
                group.clients.push((name.to_owned(), id));
                id
            }
        };
        self.clients.insert(name.to_owned(), id);
        self.last_client = Some((name.to_owned(), id));
        Ok(id)
    }
}
