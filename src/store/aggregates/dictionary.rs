//! The statistics dictionary: for every interned track, the items it counts for
//! (artists by the credit rule, recording, release), decided once when the track is
//! first seen, and where each item's counts are placed.

use std::collections::{BTreeSet, HashMap};

use jiff::tz::TimeZone;

use crate::log::TrackRef;
use crate::log::dedupe::normalize_name;
use crate::stats::chart::Kind;
use crate::stats::credits::{CreditRules, Credits, credit};
use crate::stats::period::{day_number, month_number};
use crate::store::codec::{decode, encode};
use crate::store::keys::{self, BUCKET_DAY, BUCKET_MONTH, BUCKET_YEAR, UserId};
use crate::store::schema::{self, ITEM_CHUNK, TRACK_CHUNK};
use crate::store::values::{CreditChunkV1, ItemChunkV1, ItemV1, SpellingsV1, TrackCreditsV1};
use crate::store::{Error, Result, Store};

/// Every chart item and every track's credits, in memory, with the chunks changed
/// since the last write. Owned by the writer (and by a rebuild).
pub(crate) struct Dictionary {
    pub(super) rules: CreditRules,
    /// Per kind: identity key -> item id.
    pub(super) index: [HashMap<String, u32>; 3],
    /// Per kind: number of items, and the last (partly filled) chunk's items.
    pub(super) n_items: [u32; 3],
    pub(super) open: [Vec<ItemV1>; 3],
    /// Chunks filled since the last write: (kind, chunk, items).
    pub(super) full: Vec<(usize, u32, Vec<ItemV1>)>,
    /// Per kind, per item id: a fingerprint of the item's stored name, to tell whether a
    /// new track spells it the same way without reading the name back.
    pub(super) fingerprints: [Vec<u32>; 3],
    /// Per track id, for the few tracks that spell an item differently from its stored
    /// name: (kind index, item id, this track's spelling) (`trackid_spellings`).
    pub(super) spellings: HashMap<u32, Vec<(u8, u32, String)>>,
    /// Per track id.
    pub(super) credits: Vec<Option<TrackCreditsV1>>,
    pub(super) dirty_items: BTreeSet<(usize, u32)>,
    pub(super) dirty_credits: BTreeSet<u32>,
    pub(super) dirty_spellings: BTreeSet<u32>,
}

/// A 32-bit fingerprint of a spelling (exact bytes). Two spellings of one item that
/// collide are taken as equal: the user is then shown the item's stored name, which
/// differs from theirs only in case or spacing (a 2^-32 chance per new track and item).
fn fingerprint(name: &str) -> u32 {
    let h = blake3::hash(name.as_bytes());
    let b = h.as_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

pub(super) fn identity(kind: Kind, name: &str, artist: Option<u32>) -> String {
    match (kind, artist) {
        (Kind::Artist, _) | (_, None) => normalize_name(name),
        (_, Some(a)) => format!("{a}\u{1f}{}", normalize_name(name)),
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
            spellings: HashMap::new(),
            credits: Vec::new(),
            dirty_items: BTreeSet::new(),
            dirty_credits: BTreeSet::new(),
            dirty_spellings: BTreeSet::new(),
        }
    }

    pub fn load(store: &Store, rules: CreditRules) -> Result<Dictionary> {
        let mut d = Dictionary::empty(rules);
        for kv in store.trees.itemchunk_items.iter() {
            let (k, v) = kv?;
            let kind = *k.first().ok_or_else(|| Error::corrupt(schema::ITEMCHUNK_ITEMS, &k, "empty key"))? as usize;
            let chunk: ItemChunkV1 = decode(schema::ITEMCHUNK_ITEMS, &k, &v)?;
            let kind_enum =
                *Kind::ALL.get(kind).ok_or_else(|| Error::corrupt(schema::ITEMCHUNK_ITEMS, &k, "unknown kind"))?;
            for item in &chunk.items {
                let id = d.n_items[kind];
                d.n_items[kind] += 1;
                d.fingerprints[kind].push(fingerprint(&item.name));
                // A name blanked by compaction is never matched again.
                if !item.name.is_empty() {
                    d.index[kind].insert(identity(kind_enum, &item.name, item.artist), id);
                }
            }
            // Chunks come in key order, so the last one seen per kind is the open one.
            d.open[kind] = if chunk.items.len() < ITEM_CHUNK as usize { chunk.items } else { Vec::new() };
        }
        for kv in store.trees.trackchunk_credits.iter() {
            let (k, v) = kv?;
            let chunk: CreditChunkV1 = decode(schema::TRACKCHUNK_CREDITS, &k, &v)?;
            d.credits.extend(chunk.tracks);
        }
        for kv in store.trees.trackid_spellings.iter() {
            let (k, v) = kv?;
            let track = keys::parse_u32(schema::TRACKID_SPELLINGS, &k)?;
            let s: SpellingsV1 = decode(schema::TRACKID_SPELLINGS, &k, &v)?;
            d.spellings.insert(track, s.items);
        }
        Ok(d)
    }

    pub(super) fn intern(&mut self, kind: Kind, name: &str, artist: Option<u32>) -> u32 {
        let k = kind.index();
        let key = identity(kind, name, artist);
        if let Some(&id) = self.index[k].get(&key) {
            return id;
        }
        let id = self.n_items[k];
        self.n_items[k] += 1;
        self.open[k].push(ItemV1 { name: name.to_owned(), artist });
        self.fingerprints[k].push(fingerprint(name));
        self.index[k].insert(key, id);
        self.dirty_items.insert((k, id / ITEM_CHUNK));
        if self.open[k].len() >= ITEM_CHUNK as usize {
            self.full.push((k, id / ITEM_CHUNK, std::mem::take(&mut self.open[k])));
        }
        id
    }

    /// The credits of track `id`, computing (and interning items for) a new track.
    /// Tracks must be seen in id order, as the writer and the rebuild both do.
    pub fn credits(&mut self, id: u32, track: &TrackRef) -> TrackCreditsV1 {
        if let Some(Some(c)) = self.credits.get(id as usize) {
            return c.clone();
        }
        let artists_index = &self.index[Kind::Artist.index()];
        let known = |norm: &str| artists_index.contains_key(norm);
        let c = credit(track, &self.rules, &known);
        let artists: Vec<u32> = c.artists.iter().map(|a| self.intern(Kind::Artist, a, None)).collect();
        let main = artists.first().copied();
        let recording = self.intern(Kind::Recording, &c.title, main);
        let release = track.album.as_deref().map(|album| self.intern(Kind::Release, album, main));
        let credits = TrackCreditsV1 { artists, recording, release };
        self.note_variants(id, &c, track.album.as_deref(), &credits);
        let slot = id as usize;
        if self.credits.len() <= slot {
            self.credits.resize(slot + 1, None);
        }
        self.credits[slot] = Some(credits.clone());
        self.dirty_credits.insert(id / TRACK_CHUNK);
        credits
    }

    /// Remembers which items of track `id` (credited as `c`, ids in `credits`) the track
    /// spells otherwise than their stored names. Each credited string is matched to its
    /// item by identity, so credits made under other rules (a migration, a compaction)
    /// pair no string with the wrong item; a string that matches none is left out.
    fn note_variants(&mut self, id: u32, c: &Credits, album: Option<&str>, credits: &TrackCreditsV1) {
        let main = credits.artists.first().copied();
        let lookup = |kind: Kind, name: &str, artist: Option<u32>| {
            self.index[kind.index()].get(&identity(kind, name, artist)).copied()
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
        let Some(credits) = self.known_credits(id).cloned() else { return };
        let artists_index = &self.index[Kind::Artist.index()];
        let known = |norm: &str| artists_index.contains_key(norm);
        let c = credit(track, &self.rules, &known);
        self.spellings.remove(&id);
        self.note_variants(id, &c, track.album.as_deref(), &credits);
    }

    /// The items track `id` spells otherwise than their stored names, if any.
    pub fn spellings_of(&self, id: u32) -> Option<&[(u8, u32, String)]> {
        self.spellings.get(&id).map(Vec::as_slice)
    }

    /// The credits of an already interned track.
    pub fn known_credits(&self, id: u32) -> Option<&TrackCreditsV1> {
        self.credits.get(id as usize).and_then(Option::as_ref)
    }

    /// Encoded writes for every changed chunk: (tree, key, value).
    pub fn take_writes(&mut self) -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        for (kind, chunk, items) in std::mem::take(&mut self.full) {
            out.push((
                schema::ITEMCHUNK_ITEMS,
                keys::kind_chunk(kind as u8, chunk).to_vec(),
                encode(&ItemChunkV1 { items }),
            ));
        }
        for (kind, chunk) in std::mem::take(&mut self.dirty_items) {
            if chunk == self.n_items[kind] / ITEM_CHUNK && !self.open[kind].is_empty() {
                let items = self.open[kind].clone();
                out.push((
                    schema::ITEMCHUNK_ITEMS,
                    keys::kind_chunk(kind as u8, chunk).to_vec(),
                    encode(&ItemChunkV1 { items }),
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
            let start = (chunk * TRACK_CHUNK) as usize;
            let end = (start + TRACK_CHUNK as usize).min(self.credits.len());
            let tracks = self.credits.get(start..end).unwrap_or_default().to_vec();
            out.push((schema::TRACKCHUNK_CREDITS, keys::u32_key(chunk).to_vec(), encode(&CreditChunkV1 { tracks })));
        }
        out
    }
}
