//! The snapshot a node publishes for one finalised period, and its canonical encoding
//! (postcard; the decoder refuses anything that does not re-encode to the same bytes).
//! Wire format and field meanings: `docs/protocol.md`.

use serde::{Deserialize, Serialize};

use super::params::{MAX_ITEMS, MAX_PUBLIC_ITEMS, Params};
use crate::log::dedupe::normalize_name;

/// Current schema of `SnapshotV1`: 2 names the communities the snapshot is for.
pub const SCHEMA: u16 = 2;
/// The first schema (no `communities`): still decoded, so stored releases and held
/// snapshots stay readable, but counted by no community.
pub const SCHEMA_V1: u16 = 1;
/// Most communities one snapshot names.
pub const MAX_COMMUNITIES: usize = 16;
/// Longest artist or title carried, in bytes (cut at a character boundary).
pub const MAX_NAME_BYTES: usize = 96;
/// Largest encoded snapshot.
pub const MAX_SNAPSHOT_BYTES: usize = 60 * 1024;
const ITEM_ID_CONTEXT: &str = "hearsay 2026-11 item-id v1";

/// A node's aggregate statement about one period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotV1 {
    pub schema: u16,
    /// The origin node's ed25519 public key (its libp2p identity).
    pub origin: [u8; 32],
    /// Start of the period (Unix seconds; periods tile ISO weeks in UTC).
    pub period_start: i64,
    pub period_secs: u32,
    /// 1 for the one release of a period.
    pub version: u16,
    pub issued_at: i64,
    /// The parameters the aggregate section was made with, and its threshold τ.
    pub params: Params,
    pub tau: i64,
    /// Exact sums over the node's public users.
    pub public: Charts,
    /// Contribution-bounded, noised and thresholded sums over its aggregate users.
    pub aggregate: Charts,
    /// The communities (ids) this snapshot is published to, sorted, unique: a community
    /// counts only snapshots that name it, so a snapshot cannot be taken from one
    /// community into another's chart. Empty in schema 1 (and not encoded there).
    pub communities: Vec<[u8; 32]>,
}

/// Schema 1's layout: `SnapshotV1` without `communities`.
#[derive(Serialize, Deserialize)]
struct SchemaV1 {
    schema: u16,
    origin: [u8; 32],
    period_start: i64,
    period_secs: u32,
    version: u16,
    issued_at: i64,
    params: Params,
    tau: i64,
    public: Charts,
    aggregate: Charts,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charts {
    pub artists: Vec<Entry>,
    pub tracks: Vec<Entry>,
}

/// One item of a chart. Entries are sorted by `item`, unique.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub item: ItemId,
    pub name: ItemName,
    /// Listeners (noisy in the aggregate section, always ≥ τ there).
    pub listeners: i64,
    /// Listens (noisy in the aggregate section; may be negative there: clamping is left
    /// to whoever displays a sum, so sums stay unbiased).
    pub listens: i64,
}

/// The stable cross-node identity of an item: blake3 of its normalised names.
pub type ItemId = [u8; 16];

/// Display names: the artist, and the title for tracks.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ItemName {
    pub artist: String,
    pub title: Option<String>,
}

impl ItemName {
    pub fn artist(name: &str) -> ItemName {
        ItemName { artist: cap(name), title: None }
    }

    pub fn track(artist: &str, title: &str) -> ItemName {
        ItemName { artist: cap(artist), title: Some(cap(title)) }
    }

    /// `blake3::derive_key(ITEM_ID_CONTEXT, normalised artist [0x1f normalised title])`,
    /// first 16 bytes. Normalisation: NFC, Unicode case folding, whitespace collapsed.
    pub fn id(&self) -> ItemId {
        let mut h = blake3::Hasher::new_derive_key(ITEM_ID_CONTEXT);
        h.update(normalize_name(&self.artist).as_bytes());
        if let Some(t) = &self.title {
            h.update(&[0x1f]);
            h.update(normalize_name(t).as_bytes());
        }
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.finalize().as_bytes()[..16]);
        out
    }

    /// The name as its identity knows it (normalised: NFC, case-folded, whitespace
    /// collapsed): a function of the item alone, so publishing it says nothing about
    /// whose spelling it was. Used in the DP section.
    pub fn canonical(&self) -> ItemName {
        ItemName {
            artist: cap(&normalize_name(&self.artist)),
            title: self.title.as_deref().map(|t| cap(&normalize_name(t))),
        }
    }

    pub fn display(&self) -> String {
        match &self.title {
            Some(t) => format!("{} – {}", self.artist, t),
            None => self.artist.clone(),
        }
    }
}

/// Trimmed, without control characters (so no name can forge the 0x1f separator), at
/// most `MAX_NAME_BYTES`.
fn cap(s: &str) -> String {
    let cleaned: String = s.chars().filter(|c| !c.is_control()).collect();
    let s = cleaned.trim();
    if s.len() <= MAX_NAME_BYTES {
        return s.to_owned();
    }
    let mut end = MAX_NAME_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("snapshot of {0} bytes is over the {MAX_SNAPSHOT_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("snapshot does not decode: {0}")]
    Malformed(String),
    #[error("snapshot is not canonically encoded")]
    NotCanonical,
    #[error("unknown snapshot schema {0}")]
    UnknownSchema(u16),
    #[error("snapshot is inconsistent: {0}")]
    Invalid(String),
}

impl SnapshotV1 {
    /// The canonical bytes.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain structs of integers, strings and vectors cannot fail.
        if self.schema == SCHEMA_V1 {
            let v1 = SchemaV1 {
                schema: self.schema,
                origin: self.origin,
                period_start: self.period_start,
                period_secs: self.period_secs,
                version: self.version,
                issued_at: self.issued_at,
                params: self.params,
                tau: self.tau,
                public: self.public.clone(),
                aggregate: self.aggregate.clone(),
            };
            return postcard::to_allocvec(&v1).unwrap_or_default();
        }
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Size first, then canonical decoding, schema, and internal consistency.
    pub fn decode(bytes: &[u8]) -> Result<SnapshotV1, DecodeError> {
        if bytes.len() > MAX_SNAPSHOT_BYTES {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        // The schema comes first so a newer one is told apart from garbage.
        let (schema, _) = postcard::take_from_bytes::<u16>(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        let malformed = |e: postcard::Error| DecodeError::Malformed(e.to_string());
        let (snap, rest) = match schema {
            SCHEMA => postcard::take_from_bytes::<SnapshotV1>(bytes).map_err(malformed)?,
            SCHEMA_V1 => {
                let (v1, rest) = postcard::take_from_bytes::<SchemaV1>(bytes).map_err(malformed)?;
                let snap = SnapshotV1 {
                    schema: v1.schema,
                    origin: v1.origin,
                    period_start: v1.period_start,
                    period_secs: v1.period_secs,
                    version: v1.version,
                    issued_at: v1.issued_at,
                    params: v1.params,
                    tau: v1.tau,
                    public: v1.public,
                    aggregate: v1.aggregate,
                    communities: Vec::new(),
                };
                (snap, rest)
            }
            other => return Err(DecodeError::UnknownSchema(other)),
        };
        if !rest.is_empty() || snap.encode() != bytes {
            return Err(DecodeError::NotCanonical);
        }
        snap.check()?;
        Ok(snap)
    }

    /// Internal consistency: sorted unique ids that match the names, name lengths,
    /// section sizes, the declared threshold, and positive counts where they must be.
    pub fn check(&self) -> Result<(), DecodeError> {
        let bad = |m: String| Err(DecodeError::Invalid(m));
        if self.period_secs == 0 {
            return bad("period length 0".into());
        }
        if self.params.validate().is_err() {
            return bad("invalid privacy parameters".into());
        }
        if self.communities.len() > MAX_COMMUNITIES || self.communities.windows(2).any(|w| w[0] >= w[1]) {
            return bad(format!("communities: more than {MAX_COMMUNITIES}, or not sorted and unique"));
        }
        if self.tau != self.params.tau() {
            return bad(format!("τ {} does not follow from the parameters ({})", self.tau, self.params.tau()));
        }
        for (section, charts, max) in
            [("public", &self.public, MAX_PUBLIC_ITEMS), ("aggregate", &self.aggregate, MAX_ITEMS)]
        {
            for (chart, entries, tracks) in [("artists", &charts.artists, false), ("tracks", &charts.tracks, true)] {
                if entries.len() > max {
                    return bad(format!("{section} {chart}: {} entries, most {max}", entries.len()));
                }
                for (i, e) in entries.iter().enumerate() {
                    if i > 0 && entries[i - 1].item >= e.item {
                        return bad(format!("{section} {chart}: entries not sorted by item id"));
                    }
                    if e.name.title.is_some() != tracks
                        || cap(&e.name.artist) != e.name.artist
                        || e.name.title.as_ref().is_some_and(|t| &cap(t) != t)
                    {
                        return bad(format!("{section} {chart}: entry {i} has a malformed name"));
                    }
                    if e.name.id() != e.item {
                        return bad(format!("{section} {chart}: entry {i}'s id does not match its name"));
                    }
                    let floor = if section == "aggregate" { self.tau } else { 1 };
                    if e.listeners < floor || (section == "public" && e.listens < e.listeners) {
                        return bad(format!("{section} {chart}: entry {i} has impossible counts"));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_ids_follow_normalised_names() {
        assert_eq!(ItemName::artist("Björk").id(), ItemName::artist("  BJÖRK ").id());
        assert_eq!(ItemName::track("A", "Song  Title").id(), ItemName::track("a", "song title").id());
        assert_ne!(ItemName::track("A", "B").id(), ItemName::artist("A\u{1f}B").id());
        // Golden vector: every node must derive the same ids.
        assert_eq!(hex::encode(ItemName::artist("Radiohead").id()), "50fd122f18ddaa2203e48a2fdbe51ab7");
        assert_eq!(hex::encode(ItemName::track("Radiohead", "Creep").id()), "60aca41ee9c4d1ba8f5ba04b913589a7");
    }

    #[test]
    fn long_names_are_cut_at_a_character_boundary() {
        let n = ItemName::artist(&"é".repeat(100));
        assert!(n.artist.len() <= MAX_NAME_BYTES && n.artist.chars().all(|c| c == 'é'));
    }
}

#[cfg(test)]
mod codec_properties {
    use super::*;
    use proptest::prelude::*;

    fn entries(names: Vec<(String, Option<String>, i64, i64)>, floor: i64) -> Vec<Entry> {
        let mut out: Vec<Entry> = names
            .into_iter()
            .map(|(a, t, l, n)| {
                let name = match t {
                    Some(t) => ItemName::track(&a, &t),
                    None => ItemName::artist(&a),
                };
                Entry { item: name.id(), name, listeners: floor + l, listens: floor + l + n }
            })
            .collect();
        out.sort_by_key(|e| e.item);
        out.dedup_by_key(|e| e.item);
        out
    }

    fn arb_snapshot() -> impl Strategy<Value = SnapshotV1> {
        let names = |_tracks: bool| {
            proptest::collection::vec(("[a-zA-Zé ]{1,20}", "[a-z0-9]{1,12}", 0i64..500, 0i64..5000), 0..20)
        };
        (
            (names(false), names(true), names(false), names(true)),
            any::<[u8; 32]>(),
            0i64..10_000,
            1u32..5,
            proptest::collection::btree_set(any::<[u8; 32]>(), 0..4),
        )
            .prop_map(|((pa, pt, aa, at), origin, week, k, communities)| {
                let params = Params { k: k + 1, ..Params::default() };
                let tau = params.tau();
                let fix = |v: Vec<(String, String, i64, i64)>, tracks: bool| {
                    v.into_iter().map(|(a, t, l, n)| (a, tracks.then_some(t), l, n)).collect()
                };
                SnapshotV1 {
                    schema: SCHEMA,
                    origin,
                    period_start: 345_600 + week * 604_800,
                    period_secs: 604_800,
                    version: 1,
                    issued_at: 345_600 + (week + 1) * 604_800 + 172_800,
                    params,
                    tau,
                    public: Charts { artists: entries(fix(pa, false), 1), tracks: entries(fix(pt, true), 1) },
                    aggregate: Charts { artists: entries(fix(aa, false), tau), tracks: entries(fix(at, true), tau) },
                    communities: communities.into_iter().collect(),
                }
            })
    }

    proptest! {
        #[test]
        fn round_trips(s in arb_snapshot()) {
            prop_assert_eq!(SnapshotV1::decode(&s.encode()), Ok(s));
        }

        /// Schema 1 (before snapshots named communities) still decodes, to no community,
        /// and re-encodes to the same bytes (held snapshots and stored releases stay
        /// readable after the upgrade).
        #[test]
        fn schema_1_still_decodes(mut s in arb_snapshot()) {
            s.schema = SCHEMA_V1;
            s.communities.clear();
            let bytes = s.encode();
            let mut v2 = s.clone();
            v2.schema = SCHEMA;
            prop_assert_eq!(bytes.len() + 1, v2.encode().len(), "the same layout less the community list");
            prop_assert_eq!(SnapshotV1::decode(&bytes), Ok(s));
        }

        #[test]
        fn a_decoded_snapshot_re_encodes_to_exactly_its_bytes(s in arb_snapshot(), at in any::<usize>(), byte in any::<u8>()) {
            let mut bytes = s.encode();
            let i = at % bytes.len();
            bytes[i] = byte;
            if let Ok(d) = SnapshotV1::decode(&bytes) {
                prop_assert_eq!(d.encode(), bytes);
            }
        }

        #[test]
        fn non_canonical_encodings_are_refused(s in arb_snapshot(), extra in any::<u8>()) {
            let bytes = s.encode();
            let mut trailing = bytes.clone();
            trailing.push(extra);
            prop_assert!(SnapshotV1::decode(&trailing).is_err());
            // The period length as a needlessly long varint (a continuation byte of 0), at
            // its place: after the schema, the origin's 32 bytes and the period's start
            // (searching the bytes for its encoding could find it inside the origin,
            // whose bytes are any: a byte more there is not a non-canonical varint).
            let secs = postcard::to_allocvec(&s.period_secs).expect("varint");
            let pos = postcard::to_allocvec(&(s.schema, s.origin, s.period_start)).expect("varints").len();
            prop_assert_eq!(bytes.get(pos..pos + secs.len()), Some(secs.as_slice()));
            let mut long = bytes[..pos].to_vec();
            let (last, init) = secs.split_last().expect("non-empty");
            long.extend_from_slice(init);
            long.push(last | 0x80);
            long.push(0);
            long.extend_from_slice(&bytes[pos + secs.len()..]);
            prop_assert!(SnapshotV1::decode(&long).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = SnapshotV1::decode(&bytes);
        }
    }
}
