//! The statistics dictionary: for every interned track, the items it counts for
//! (artists by the credit rule, recording, release), decided once when the track is
//! first seen, and where each item's counts are placed.

use std::collections::{BTreeSet, HashMap};

use jiff::tz::TimeZone;

use crate::log::TrackRef;
use crate::log::dedupe::{collapsed_pieces, normalize_name};
use crate::stats::chart::Kind;
use crate::stats::credits::{CreditRules, Credits, credit};
use crate::stats::period::{day_number, month_number};
use crate::store::codec::{Versioned, decode, encode};
use crate::store::hashindex::HashIndex;
use crate::store::keys::{self, BUCKET_DAY, BUCKET_MONTH, BUCKET_YEAR, UserId};
use crate::store::schema::{self, ITEM_CHUNK, TRACK_CHUNK};
use crate::store::values::{
    CreditChunkV2, ItemChunkV2, ItemName, ItemV1, ItemV2, SpellingsV1, TrackChunkV2, TrackCreditsV1, find_in_track,
};
use crate::store::{Error, Result, Store};

/// Every chart item and every track's credits, in memory, with the chunks changed
/// since the last write. Owned by the writer (and by a rebuild).
pub(crate) struct Dictionary {
    pub(super) rules: CreditRules,
    /// Per kind: a 128-bit hash of the identity key (`identity_key`) -> item id. Keyed by
    /// the hash rather than the string: at 10,000 members (1.8M recordings) the strings
    /// and their allocations cost about 70 bytes per item, the hash 20 per entry (25–40
    /// with the table's spare room).
    pub(super) index: [HashIndex; 3],
    /// Per kind: number of items, and the last (partly filled) chunk's items.
    pub(super) n_items: [u32; 3],
    pub(super) open: [Vec<ItemV2>; 3],
    /// Chunks filled since the last write: (kind, chunk, items).
    pub(super) full: Vec<(usize, u32, Vec<ItemV2>)>,
    /// Per kind, per item id: a fingerprint of the item's stored name, to tell whether a
    /// new track spells it the same way without reading the name back.
    pub(super) fingerprints: [Vec<u32>; 3],
    /// Per track id, for the few tracks that spell an item differently from its stored
    /// name: (kind index, item id, this track's spelling) (`trackid_spellings`).
    /// (Fx-hashed: track ids are the node's own, and the writer asks for every listen.)
    pub(super) spellings: super::FastMap<u32, Vec<(u8, u32, String)>>,
    /// Per track id.
    pub(super) credits: CreditTable,
    pub(super) dirty_items: BTreeSet<(usize, u32)>,
    pub(super) dirty_credits: BTreeSet<u32>,
    pub(super) dirty_spellings: BTreeSet<u32>,
}

/// Reads item names where they are stored: in the tracks that spell them
/// (`ItemName::Spelled`), keeping the last few track chunks read (a chunk's items come
/// from neighbouring tracks, and a scan of a kind's chunks meets its tracks in id
/// order).
pub(crate) struct NameReader<'s> {
    store: &'s Store,
    chunks: HashMap<u32, Option<Chunk>>,
    /// Whether a chunk read a second time is decoded (a scan), or always read in place
    /// (a chart's rows: decoding a chunk allocates every name in it, for one or two).
    decode_again: bool,
}

/// A track chunk as a `NameReader` keeps it: the stored bytes of a version 2 value read
/// once (its names read in place: a chart's rows each read a different chunk), then
/// decoded when read again (a scan of items reads each chunk for many of them), or an
/// older value decoded.
enum Chunk {
    Stored(sled::IVec),
    Decoded(TrackChunkV2),
}

/// Track chunks a `NameReader` keeps before it starts again.
const NAME_READER_CHUNKS: usize = 256;

impl<'s> NameReader<'s> {
    /// A reader for a scan of many items (each chunk decoded when read again).
    pub fn new(store: &'s Store) -> NameReader<'s> {
        NameReader { store, chunks: HashMap::new(), decode_again: true }
    }

    /// A reader for a few items (a chart's rows): names always read in place.
    pub fn in_place(store: &'s Store) -> NameReader<'s> {
        NameReader { store, chunks: HashMap::new(), decode_again: false }
    }

    /// The name and main artist of `item`, read from chunk `key` of `itemchunk_items`
    /// (named in the error when the track it points at does not hold it).
    pub fn resolve(&mut self, key: &[u8], item: ItemV2) -> Result<ItemV1> {
        let name = match item.name {
            ItemName::Literal(name) => name,
            spelled @ ItemName::Spelled { track, .. } => {
                let n = track / TRACK_CHUNK;
                let index = (track % TRACK_CHUNK) as usize;
                let tracks_key = keys::u32_key(n);
                if let Some(Some(Chunk::Stored(bytes))) = self.chunks.get(&n).filter(|_| self.decode_again) {
                    let decoded = decode(schema::TRACKCHUNK_TRACKS, &tracks_key, bytes)?;
                    self.chunks.insert(n, Some(Chunk::Decoded(decoded)));
                } else if !self.chunks.contains_key(&n) {
                    self.fetch(n)?;
                }
                let found = match self.chunks.get(&n).and_then(Option::as_ref) {
                    None => None,
                    Some(Chunk::Decoded(chunk)) => {
                        chunk.tracks.get(index).and_then(|t| spelled.in_track(t)).map(str::to_owned)
                    }
                    Some(Chunk::Stored(bytes)) => {
                        let track = crate::store::values::borrowed_track(bytes, index)
                            .unwrap_or_else(|| Err("not a version 2 chunk".into()))
                            .map_err(|e| Error::corrupt(schema::TRACKCHUNK_TRACKS, &tracks_key, &e))?;
                        track.as_ref().and_then(|t| spelled.in_track(t)).map(str::to_owned)
                    }
                };
                let what = || format!("an item named by track {track}, which does not hold its name");
                found.ok_or_else(|| Error::corrupt(schema::ITEMCHUNK_ITEMS, key, &what()))?
            }
        };
        Ok(ItemV1 { name, artist: item.artist })
    }

    fn fetch(&mut self, n: u32) -> Result<()> {
        let key = keys::u32_key(n);
        let chunk = match self.store.trees.trackchunk_tracks.get(key)? {
            None => None,
            Some(bytes) if bytes.first() == Some(&TrackChunkV2::VERSION) => Some(Chunk::Stored(bytes)),
            Some(bytes) => Some(Chunk::Decoded(decode(schema::TRACKCHUNK_TRACKS, &key, &bytes)?)),
        };
        if self.chunks.len() >= NAME_READER_CHUNKS {
            self.chunks.clear();
        }
        self.chunks.insert(n, chunk);
        Ok(())
    }

    /// Every item of chunk `key`, resolved.
    #[cfg(test)]
    pub fn chunk(&mut self, key: &[u8], bytes: &[u8]) -> Result<Vec<ItemV1>> {
        let chunk: ItemChunkV2 = decode(schema::ITEMCHUNK_ITEMS, key, bytes)?;
        chunk.items.into_iter().map(|item| self.resolve(key, item)).collect()
    }
}

/// A 32-bit fingerprint of a spelling (exact bytes). Two spellings of one item that
/// collide are taken as equal: the user is then shown the item's stored name, which
/// differs from theirs only in case or spacing (a 2^-32 chance per new track and item).
fn fingerprint(name: &str) -> u32 {
    let h = blake3::hash(name.as_bytes());
    let b = h.as_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// The key of an item's identity in `Dictionary::index`: its normalised name, plus the
/// main artist for recordings and releases, hashed. blake3 truncated to 128 bits: two
/// distinct identities share a key with a chance of about n²/2¹²⁹ (10⁻²⁶ for 2M items).
pub(super) fn identity_key(kind: Kind, name: &str, artist: Option<u32>) -> [u8; 16] {
    let artist = if kind == Kind::Artist { None } else { artist };
    if !name.is_ascii() {
        return normalized_key(artist, &normalize_name(name));
    }
    // `normalize_name` of ASCII is its collapsed pieces lower-cased: hashed a piece at a
    // time, with no normalised copy (the writer keys every new track's items, and every
    // item when it starts; `ascii_identity_is_the_normalised_one`).
    let mut h = identity_hasher(artist);
    let mut lower = [0u8; 64];
    for word in collapsed_pieces(name) {
        for piece in word.as_bytes().chunks(lower.len()) {
            let out = &mut lower[..piece.len()];
            out.copy_from_slice(piece);
            out.make_ascii_lowercase();
            h.update(out);
        }
    }
    first_16(&h)
}

/// `identity_key` of an already normalised name.
fn normalized_key(artist: Option<u32>, normalized: &str) -> [u8; 16] {
    let mut h = identity_hasher(artist);
    h.update(normalized.as_bytes());
    first_16(&h)
}

/// A hasher of identity keys, given the artist part.
fn identity_hasher(artist: Option<u32>) -> blake3::Hasher {
    let mut h = blake3::Hasher::new();
    match artist {
        None => h.update(&[0]),
        Some(a) => h.update(&[1]).update(&a.to_be_bytes()),
    };
    h
}

/// The first 128 bits of the hash.
fn first_16(h: &blake3::Hasher) -> [u8; 16] {
    let mut key = [0; 16];
    key.copy_from_slice(&h.finalize().as_bytes()[..16]);
    key
}

/// The credits of one track as the dictionary holds them: borrowed from its table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Credited<'a> {
    /// Artist item ids, main artist first.
    pub artists: &'a [u32],
    pub recording: u32,
    pub release: Option<u32>,
}

impl Credited<'_> {
    /// The items these credits name, as (kind index, item id): artists, recording,
    /// release.
    pub fn items(self) -> Vec<(u8, u32)> {
        let mut items: Vec<(u8, u32)> = self.artists.iter().map(|a| (0u8, *a)).collect();
        items.push((1, self.recording));
        items.extend(self.release.map(|r| (2u8, r)));
        items
    }

    pub fn to_stored(self) -> TrackCreditsV1 {
        TrackCreditsV1 { artists: self.artists.to_vec(), recording: self.recording, release: self.release }
    }
}

/// Every track's credits, packed: 16 bytes per track plus 4 per artist credit. Held as
/// `Vec<Option<TrackCreditsV1>>` they cost about 72 bytes per track (a `Vec` per track and
/// its allocation), 130 MiB at the 1.8M tracks of a 10,000-member node.
#[derive(Default)]
pub(super) struct CreditTable {
    slots: Vec<Slot>,
    /// The artists of every track, each track's a contiguous run.
    artists: Vec<u32>,
}

#[derive(Clone, Copy, Default)]
struct Slot {
    recording: u32,
    release: u32,
    /// Index of the track's first artist in `CreditTable::artists`.
    first: u32,
    /// The number of artists, with `PRESENT` and `HAS_RELEASE` flags.
    meta: u32,
}

const PRESENT: u32 = 1 << 31;
const HAS_RELEASE: u32 = 1 << 30;
const ARTISTS: u32 = HAS_RELEASE - 1;

impl CreditTable {
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn get(&self, id: u32) -> Option<Credited<'_>> {
        let slot = self.slots.get(id as usize).filter(|s| s.meta & PRESENT != 0)?;
        let first = slot.first as usize;
        let artists = self.artists.get(first..first + (slot.meta & ARTISTS) as usize)?;
        Some(Credited {
            artists,
            recording: slot.recording,
            release: (slot.meta & HAS_RELEASE != 0).then_some(slot.release),
        })
    }

    /// Makes room for track `id`, as a track with no credits (a blanked one) if new.
    pub fn reserve_to(&mut self, id: u32) {
        let len = id as usize + 1;
        if self.slots.len() < len {
            self.slots.resize(len, Slot::default());
        }
    }

    /// Whether a track crediting `artists` artists can be added: their number fits the
    /// slot and the arena's end stays addressable. (Where they would start, how many.)
    pub fn room_for(&self, artists: usize) -> Result<(u32, u32)> {
        let n = u32::try_from(artists).ok().filter(|n| *n <= ARTISTS);
        let n = n.ok_or_else(|| Error::Invalid(format!("a track credits {artists} artists")))?;
        let first = u32::try_from(self.artists.len()).ok().filter(|f| f.checked_add(n).is_some());
        Ok((first.ok_or(Error::IdsExhausted("artist credits"))?, n))
    }

    /// Sets the credits of track `id`.
    pub fn set(&mut self, id: u32, c: Option<&TrackCreditsV1>) -> Result<()> {
        let slot = match c {
            None => Slot::default(),
            Some(c) => {
                let (first, n) = self.room_for(c.artists.len())?;
                self.artists.extend_from_slice(&c.artists);
                let release = c.release.unwrap_or(0);
                Slot {
                    recording: c.recording,
                    release,
                    first,
                    meta: PRESENT | n | c.release.map_or(0, |_| HAS_RELEASE),
                }
            }
        };
        self.reserve_to(id);
        if let Some(s) = self.slots.get_mut(id as usize) {
            *s = slot;
        }
        Ok(())
    }

    fn shrink_to_fit(&mut self) {
        self.slots.shrink_to_fit();
        self.artists.shrink_to_fit();
    }
}

/// Where one listen counts: its three bucket keys and its (day of year, hour).
pub(crate) struct Placement {
    pub keys: [[u8; 9]; 3],
    pub slot: (u16, u8),
}

pub(crate) fn place(user: UserId, listened_at: i64, tz: &TimeZone) -> Placement {
    let zoned = jiff::Timestamp::from_second(listened_at).unwrap_or(jiff::Timestamp::UNIX_EPOCH).to_zoned(tz.clone());
    let date = zoned.date();
    Placement {
        keys: [
            keys::bucket(user, BUCKET_DAY, day_number(date)),
            keys::bucket(user, BUCKET_MONTH, month_number(date)),
            keys::bucket(user, BUCKET_YEAR, i32::from(date.year())),
        ],
        slot: (u16::try_from(date.day_of_year()).unwrap_or(0), u8::try_from(zoned.hour()).unwrap_or(0)),
    }
}

impl Dictionary {
    pub fn empty(rules: CreditRules) -> Dictionary {
        Dictionary {
            rules,
            index: Default::default(),
            n_items: [0; 3],
            open: Default::default(),
            full: Vec::new(),
            fingerprints: Default::default(),
            spellings: super::FastMap::default(),
            credits: CreditTable::default(),
            dirty_items: BTreeSet::new(),
            dirty_credits: BTreeSet::new(),
            dirty_spellings: BTreeSet::new(),
        }
    }

    pub fn load(store: &Store, rules: CreditRules) -> Result<Dictionary> {
        let mut d = Dictionary::empty(rules);
        let mut names = NameReader::new(store);
        let mut identities: [Vec<([u8; 16], u32)>; 3] = Default::default();
        for kv in store.trees.itemchunk_items.iter() {
            let (k, v) = kv?;
            let kind = *k.first().ok_or_else(|| Error::corrupt(schema::ITEMCHUNK_ITEMS, &k, "empty key"))? as usize;
            let chunk: ItemChunkV2 = decode(schema::ITEMCHUNK_ITEMS, &k, &v)?;
            let kind_enum =
                *Kind::ALL.get(kind).ok_or_else(|| Error::corrupt(schema::ITEMCHUNK_ITEMS, &k, "unknown kind"))?;
            // The open chunk is kept as stored (names as places); every item is resolved
            // once for its identity and fingerprint.
            let open = chunk.items.len() < ITEM_CHUNK as usize;
            let kept = if open { chunk.items.clone() } else { Vec::new() };
            for item in chunk.items {
                let id = d.n_items[kind];
                d.n_items[kind] += 1;
                let item = names.resolve(&k, item)?;
                d.fingerprints[kind].push(fingerprint(&item.name));
                // A name blanked by compaction is never matched again.
                if !item.name.is_empty() {
                    identities[kind].push((identity_key(kind_enum, &item.name, item.artist), id));
                }
            }
            // Chunks come in key order, so the last one seen per kind is the open one.
            d.open[kind] = kept;
        }
        d.index = identities.map(HashIndex::from_entries);
        for kv in store.trees.trackchunk_credits.iter() {
            let (k, v) = kv?;
            let chunk: CreditChunkV2 = decode(schema::TRACKCHUNK_CREDITS, &k, &v)?;
            // Chunks are written for every track in id order, so they follow each other
            // with no gap: a key past the next one is damage, refused before the table
            // would be sized by it.
            let first = keys::parse_u32(schema::TRACKCHUNK_CREDITS, &k)?
                .checked_mul(TRACK_CHUNK)
                .filter(|first| *first as usize <= d.credits.len())
                .ok_or_else(|| Error::corrupt(schema::TRACKCHUNK_CREDITS, &k, "a chunk number past the next one"))?;
            for (i, track) in chunk.tracks.iter().enumerate() {
                let id = u32::try_from(i).ok().and_then(|i| first.checked_add(i));
                let id = id.ok_or_else(|| Error::corrupt(schema::TRACKCHUNK_CREDITS, &k, "track id out of range"))?;
                d.credits.set(id, track.as_ref())?;
            }
        }
        d.credits.shrink_to_fit();
        for kv in store.trees.trackid_spellings.iter() {
            let (k, v) = kv?;
            let track = keys::parse_u32(schema::TRACKID_SPELLINGS, &k)?;
            let s: SpellingsV1 = decode(schema::TRACKID_SPELLINGS, &k, &v)?;
            d.spellings.insert(track, s.items);
        }
        Ok(d)
    }

    /// The id of the item `name` (of main artist `artist`), interned with track `source`
    /// (id, names) when new: its name is stored as a place in the track's names where
    /// the track holds it (`ItemName::Spelled`).
    pub(super) fn intern(&mut self, kind: Kind, name: &str, artist: Option<u32>, source: (u32, &TrackRef)) -> u32 {
        let k = kind.index();
        let key = identity_key(kind, name, artist);
        if let Some(id) = self.index[k].get(&key) {
            return id;
        }
        let id = self.n_items[k];
        self.n_items[k] += 1;
        let stored = find_in_track(source.0, source.1, name).unwrap_or_else(|| ItemName::Literal(name.to_owned()));
        self.open[k].push(ItemV2 { name: stored, artist });
        self.fingerprints[k].push(fingerprint(name));
        self.index[k].insert(key, id);
        self.dirty_items.insert((k, id / ITEM_CHUNK));
        if self.open[k].len() >= ITEM_CHUNK as usize {
            self.full.push((k, id / ITEM_CHUNK, std::mem::take(&mut self.open[k])));
        }
        id
    }

    /// Decides the credits of track `id` (interning its items) unless already known;
    /// `known_credits` then has them. Tracks must be seen in id order, as the writer and
    /// the rebuild both do.
    pub fn credit_track(&mut self, id: u32, track: &TrackRef) -> Result<()> {
        if self.credits.get(id).is_some() {
            return Ok(());
        }
        let artists_index = &self.index[Kind::Artist.index()];
        let known = |norm: &str| artists_index.contains_key(&normalized_key(None, norm));
        let c = credit(track, &self.rules, &known);
        // What `CreditTable::set` could refuse, checked before any item is interned.
        self.credits.room_for(c.artists.len())?;
        let artists: Vec<u32> = c.artists.iter().map(|a| self.intern(Kind::Artist, a, None, (id, track))).collect();
        let main = artists.first().copied();
        let recording = self.intern(Kind::Recording, &c.title, main, (id, track));
        let release = track.album.as_deref().map(|album| self.intern(Kind::Release, album, main, (id, track)));
        // Each string was just interned as its item: no need to look it up again.
        let mut named: Vec<(Kind, u32, &str)> =
            c.artists.iter().zip(&artists).map(|(a, item)| (Kind::Artist, *item, a.as_str())).collect();
        named.push((Kind::Recording, recording, c.title.as_str()));
        if let (Some(album), Some(r)) = (track.album.as_deref(), release) {
            named.push((Kind::Release, r, album));
        }
        self.note_spellings(id, named);
        let credits = TrackCreditsV1 { artists, recording, release };
        self.credits.set(id, Some(&credits))?;
        self.dirty_credits.insert(id / TRACK_CHUNK);
        Ok(())
    }

    /// Records track `id` as one with no credits (blanked by compaction).
    pub fn blank_track(&mut self, id: u32) -> Result<()> {
        self.credits.set(id, None)?;
        self.dirty_credits.insert(id / TRACK_CHUNK);
        Ok(())
    }

    /// Remembers which items of track `id` (credited as `c`, ids in `credits`) the track
    /// spells otherwise than their stored names. Each credited string is matched to its
    /// item by identity, so credits made under other rules (a migration, a compaction)
    /// pair no string with the wrong item; a string that matches none is left out.
    fn note_variants(&mut self, id: u32, c: &Credits, album: Option<&str>, credits: &TrackCreditsV1) {
        let main = credits.artists.first().copied();
        let lookup = |kind: Kind, name: &str, artist: Option<u32>| {
            self.index[kind.index()].get(&identity_key(kind, name, artist))
        };
        let mut named: Vec<(Kind, u32, &str)> = Vec::new();
        for a in &c.artists {
            if let Some(item) = lookup(Kind::Artist, a, None).filter(|i| credits.artists.contains(i)) {
                named.push((Kind::Artist, item, a.as_str()));
            }
        }
        if lookup(Kind::Recording, &c.title, main) == Some(credits.recording) {
            named.push((Kind::Recording, credits.recording, c.title.as_str()));
        }
        if let (Some(album), Some(r)) = (album, credits.release)
            && lookup(Kind::Release, album, main) == Some(r)
        {
            named.push((Kind::Release, r, album));
        }
        self.note_spellings(id, named);
    }

    /// Remembers which of `named` (items of track `id`, each with the string the track
    /// credits it as) the track spells otherwise than the item's stored name.
    fn note_spellings(&mut self, id: u32, named: Vec<(Kind, u32, &str)>) {
        let variants: Vec<(u8, u32, String)> = named
            .into_iter()
            .filter(|(kind, item, spelled)| {
                self.fingerprints[kind.index()].get(*item as usize).is_some_and(|f| *f != fingerprint(spelled))
            })
            .map(|(kind, item, spelled)| (kind.index() as u8, item, spelled.to_owned()))
            .collect();
        if !variants.is_empty() {
            self.spellings.insert(id, variants);
            self.dirty_spellings.insert(id);
        }
    }

    /// For a dictionary loaded from a store written before spellings were kept (or being
    /// compacted): works out the spellings of an interned track from its names and its
    /// stored credits, under this dictionary's credit rules.
    pub fn recompute_variants(&mut self, id: u32, track: &TrackRef) {
        let Some(credits) = self.known_credits(id).map(Credited::to_stored) else { return };
        let artists_index = &self.index[Kind::Artist.index()];
        let known = |norm: &str| artists_index.contains_key(&normalized_key(None, norm));
        let c = credit(track, &self.rules, &known);
        self.spellings.remove(&id);
        self.note_variants(id, &c, track.album.as_deref(), &credits);
    }

    /// The items track `id` spells otherwise than their stored names, if any.
    pub fn spellings_of(&self, id: u32) -> Option<&[(u8, u32, String)]> {
        self.spellings.get(&id).map(Vec::as_slice)
    }

    /// The id of the item `name` of `kind` (recordings and releases: of main artist
    /// `artist`), if interned: by identity, as `intern` finds it.
    pub fn lookup(&self, kind: Kind, name: &str, artist: Option<&str>) -> Option<u32> {
        let artist = match kind {
            Kind::Artist => None,
            Kind::Recording | Kind::Release => {
                Some(self.index[Kind::Artist.index()].get(&identity_key(Kind::Artist, artist?, None))?)
            }
        };
        self.index[kind.index()].get(&identity_key(kind, name, artist))
    }

    /// The credits of an already interned track.
    pub fn known_credits(&self, id: u32) -> Option<Credited<'_>> {
        self.credits.get(id)
    }

    /// Encoded writes for every changed chunk: (tree, key, value).
    pub fn take_writes(&mut self) -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        for (kind, chunk, items) in std::mem::take(&mut self.full) {
            out.push((
                schema::ITEMCHUNK_ITEMS,
                keys::kind_chunk(kind as u8, chunk).to_vec(),
                encode(&ItemChunkV2 { items }),
            ));
        }
        for (kind, chunk) in std::mem::take(&mut self.dirty_items) {
            if chunk == self.n_items[kind] / ITEM_CHUNK && !self.open[kind].is_empty() {
                let items = self.open[kind].clone();
                out.push((
                    schema::ITEMCHUNK_ITEMS,
                    keys::kind_chunk(kind as u8, chunk).to_vec(),
                    encode(&ItemChunkV2 { items }),
                ));
            }
        }
        for track in std::mem::take(&mut self.dirty_spellings) {
            if let Some(items) = self.spellings.get(&track) {
                let value = encode(&SpellingsV1 { items: items.clone() });
                out.push((schema::TRACKID_SPELLINGS, keys::u32_key(track).to_vec(), value));
            }
        }
        for chunk in std::mem::take(&mut self.dirty_credits) {
            let start = u64::from(chunk) * u64::from(TRACK_CHUNK);
            let end = (start + u64::from(TRACK_CHUNK)).min(self.credits.len() as u64);
            let tracks = (start..end)
                .map(|id| u32::try_from(id).ok().and_then(|id| self.credits.get(id)).map(Credited::to_stored))
                .collect();
            out.push((schema::TRACKCHUNK_CREDITS, keys::u32_key(chunk).to_vec(), encode(&CreditChunkV2 { tracks })));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Options;

    proptest::proptest! {
        #[test]
        fn ascii_identity_is_the_normalised_one(
            name in "([ -~\t\n\x0b\x0c\r\x1c-\x1f\x00]{0,40}|[A-Za-z]{60,140}( [A-Za-z ]{0,70})?)",
            artist in proptest::option::of(proptest::num::u32::ANY),
            kind in 0usize..3,
        ) {
            let kind = [Kind::Artist, Kind::Recording, Kind::Release][kind];
            let part = if kind == Kind::Artist { None } else { artist };
            proptest::prop_assert_eq!(identity_key(kind, &name, artist), normalized_key(part, &normalize_name(&name)));
        }
    }

    fn track(artist: &str, title: &str, album: Option<&str>) -> TrackRef {
        TrackRef {
            artist: artist.into(),
            artist_names: Vec::new(),
            artist_mbids: Vec::new(),
            title: title.into(),
            album: album.map(Into::into),
            recording_mbid: None,
            release_mbid: None,
        }
    }

    fn all(d: &Dictionary, n: u32) -> Vec<Option<TrackCreditsV1>> {
        (0..n).map(|id| d.known_credits(id).map(Credited::to_stored)).collect()
    }

    /// A place in a blanked track would never resolve (readers refuse it as damage): a
    /// blank track credited anyway (the writer's catch-up of a track without credits
    /// meeting damage) or an empty name is stored as a string, and the store still loads.
    #[test]
    fn a_name_is_never_a_place_in_a_blank_track() {
        let blank = crate::store::compact::blank_track();
        let t = track("A", "B", None);
        assert_eq!(find_in_track(3, &t, ""), None);
        assert_eq!(find_in_track(3, &blank, ""), None);
        assert_eq!(find_in_track(3, &t, "B"), Some(ItemName::Spelled { track: 3, field: 1, part: None }));
        let mut d = Dictionary::empty(CreditRules::default());
        d.credit_track(0, &blank).expect("credit");
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), &Options { cache_mb: 4, ..Default::default() }).expect("open");
        for (tree, k, v) in d.take_writes() {
            store.tree(tree).expect("tree").insert(k, v).expect("insert");
        }
        store
            .trees
            .trackchunk_tracks
            .insert(keys::u32_key(0), encode(&TrackChunkV2 { tracks: vec![blank] }))
            .expect("insert");
        let loaded = Dictionary::load(&store, CreditRules::default()).expect("load");
        assert_eq!(loaded.n_items, d.n_items);
    }

    /// The packed credits and hashed identities, through a store and back: what the
    /// writer decides in memory is what a restarted writer (`load`) holds, names still
    /// find their items, and the "known artist" split still sees the hashed artists.
    #[test]
    fn a_loaded_dictionary_holds_the_credits_and_identities_it_wrote() {
        let tracks = [
            Some(track("Simon", "The Boxer", None)),
            Some(track("Garfunkel", "Bright Eyes", Some("Fate for Breakfast"))),
            Some(track("Simon & Garfunkel", "Mrs. Robinson", Some("Bookends"))),
            Some(track("Björk", "Jóga", Some("Homogenic"))),
            None,
            Some(track("BJÖRK", "JÓGA", Some("homogenic"))),
            Some(track("Jay-Z & Kanye West", "Otis", None)),
            Some(track("Daft Punk feat. Pharrell Williams", "Get Lucky", None)),
        ];
        let rules = CreditRules { split_known_artists: true, ..CreditRules::default() };
        let mut d = Dictionary::empty(rules.clone());
        // The tracks as the writer stores them: item names point into them.
        let mut stored = Vec::new();
        for (id, t) in (0u32..).zip(&tracks) {
            match t {
                Some(t) => d.credit_track(id, t).expect("credit"),
                None => d.blank_track(id).expect("blank"),
            }
            stored.push(t.clone().unwrap_or_else(crate::store::compact::blank_track));
        }
        // More tracks, past the first chunk of 64, the last one blank.
        let mut n = tracks.len() as u32;
        for i in 0..70 {
            let t = track(&format!("Filler {i}"), "Song", None);
            d.credit_track(n, &t).expect("credit");
            stored.push(t);
            n += 1;
        }
        d.blank_track(n).expect("blank");
        stored.push(crate::store::compact::blank_track());
        n += 1;
        let before = all(&d, n);
        assert_eq!(d.credits.len(), n as usize);
        let artists = |id: usize| before[id].as_ref().map(|c| c.artists.len());
        assert_eq!(artists(2), Some(2), "both halves are known artists: split");
        assert_eq!(artists(6), Some(1), "neither half is known: one artist");
        assert_eq!(artists(7), Some(2), "a guest is an artist of the track");
        assert_eq!(before[4], None, "the blank track has no credits");
        assert_eq!(before[3], before[5], "the same items after normalisation");
        assert_eq!(before[0].as_ref().map(|c| c.release), Some(None), "no album, no release");
        assert!(before[1].as_ref().is_some_and(|c| c.release.is_some()), "an album is a release");

        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), &Options { cache_mb: 4, ..Default::default() }).expect("open");
        for (tree, k, v) in d.take_writes() {
            store.tree(tree).expect("tree").insert(k, v).expect("insert");
        }
        for (chunk, tracks) in (0u32..).zip(stored.chunks(TRACK_CHUNK as usize)) {
            let value = encode(&TrackChunkV2 { tracks: tracks.to_vec() });
            store.trees.trackchunk_tracks.insert(keys::u32_key(chunk), value).expect("insert");
        }
        // Every name is stored once, in the track that first spelled it, the split
        // artists and the title stripped of its guest included.
        let mut names = NameReader::new(&store);
        let mut artists = Vec::new();
        for kv in store.trees.itemchunk_items.iter() {
            let (k, v) = kv.expect("read");
            let chunk: ItemChunkV2 = decode(schema::ITEMCHUNK_ITEMS, &k, &v).expect("decode");
            assert!(chunk.items.iter().all(|i| matches!(i.name, ItemName::Spelled { .. })), "{chunk:?}");
            if k.first() == Some(&0) {
                artists.extend(names.chunk(&k, &v).expect("names").into_iter().map(|i| i.name));
            }
        }
        assert_eq!(artists[..5], ["Simon", "Garfunkel", "Björk", "Jay-Z & Kanye West", "Daft Punk"]);
        assert_eq!(artists[5], "Pharrell Williams");
        let mut loaded = Dictionary::load(&store, rules).expect("load");
        assert_eq!(all(&loaded, n), before);
        assert_eq!(loaded.credits.len(), n as usize, "the trailing blank is kept");
        assert_eq!(loaded.n_items, d.n_items);
        assert_eq!(loaded.known_credits(n), None);

        // A new track naming known items finds them in both, and adds no item.
        let again = track("simon & GARFUNKEL", "MRS. ROBINSON", Some("BOOKENDS"));
        for dict in [&mut d, &mut loaded] {
            let items = dict.n_items;
            dict.credit_track(n, &again).expect("credit");
            assert_eq!(dict.known_credits(n).map(Credited::to_stored), before[2]);
            assert_eq!(dict.n_items, items);
        }
    }
}
