//! Log entries, their canonical bytes, and the blake3 hash chain.
//!
//! A user's log is a sequence of entries numbered by `seq` (0, 1, 2, ... in append order).
//! Each entry has a *content hash* over its canonical bytes and a *link* that chains it
//! to the previous entry. Erasing an entry (a delete tombstone) drops its content but keeps
//! its content hash, so the chain, and every signature over it, still verifies; the
//! per-entry random salt makes the kept hash reveal nothing about the erased content.
//! The exact byte layout is specified in `docs/protocol.md`; change it only with a new
//! `ENTRY_FORMAT` and a migration. No I/O here.

use serde::Serialize;

use super::listen::TrackRef;

/// Version byte that starts every canonical entry.
pub const ENTRY_FORMAT: u8 = 1;
/// blake3 `derive_key` context for content hashes.
pub const CONTENT_CONTEXT: &str = "hearsay 2026-11-23 log entry content v1";
/// blake3 `derive_key` context for chain links.
pub const LINK_CONTEXT: &str = "hearsay 2026-11-23 log chain link v1";
/// blake3 `derive_key` context for the genesis link of a user's chain.
pub const GENESIS_CONTEXT: &str = "hearsay 2026-11-23 log genesis v1";

/// Random bytes in every entry, so an erased entry's hash cannot be brute-forced.
pub type Salt = [u8; 16];
pub type Hash32 = [u8; 32];

/// A `derive_key` hasher for `context`, its context key hashed once per process: the
/// writer hashes every listen's content, link and dedupe key under a fixed context, and
/// hashing the context string again each time (one blake3 compression) was about a
/// third of those hashes. `blake3::hazmat` is the crate's own API for this; the output
/// is `blake3::derive_key`'s (tested below).
pub(crate) fn derive_hasher(key: &std::sync::LazyLock<blake3::hazmat::ContextKey>) -> blake3::Hasher {
    use blake3::hazmat::HasherExt;
    blake3::Hasher::new_from_context_key(key)
}

/// Declares a `LazyLock` holding the context key of a `derive_key` context.
macro_rules! context_key {
    ($name:ident, $context:expr) => {
        static $name: std::sync::LazyLock<blake3::hazmat::ContextKey> =
            std::sync::LazyLock::new(|| blake3::hazmat::hash_derive_key_context($context));
    };
}
pub(crate) use context_key;

context_key!(CONTENT_KEY, CONTENT_CONTEXT);
context_key!(LINK_KEY, LINK_CONTEXT);

/// What an entry says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Listen {
        track: TrackRef,
        listened_at: i64,
        duration_ms: Option<u32>,
        client: Option<String>,
    },
    /// Feedback: the user loves the track.
    Love(TrackRef),
    /// Feedback cleared: neither loved nor hated any more.
    Unlove(TrackRef),
    /// Tombstone for the listen at `target`: that entry's content is erased.
    Delete {
        target: u64,
    },
    /// Feedback: the user hates the track (ListenBrainz's score -1).
    Hate(TrackRef),
}

/// An entry as read back from a log: either its content or, once erased, only its hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    Present { salt: Salt, body: Body },
    Erased { content_hash: Hash32 },
}

impl Content {
    /// Whether the entry holds what the node accepts from a client, as `Listen::parse`
    /// and `TrackRef::parse` check it (the time only after `MIN_LISTENED_AT`): an entry
    /// brought from elsewhere is signed as easily by hand as by a node.
    pub fn check(&self) -> Result<(), super::ListenError> {
        match self {
            Content::Present { body: Body::Listen { track, listened_at, duration_ms, client }, .. } => {
                super::Listen::check_parts(track, *listened_at, *duration_ms, client.as_deref())
            }
            Content::Present { body: Body::Love(t) | Body::Unlove(t) | Body::Hate(t), .. } => t.check(),
            Content::Present { body: Body::Delete { .. }, .. } | Content::Erased { .. } => Ok(()),
        }
    }
}

/// A borrowed `Body` in canonical field order: what the content hash covers,
/// serialised with postcard. The writer hashes a new listen from the parts it was
/// given, with no copy of its names (`Body::borrowed` for an owned body).
#[derive(Clone, Copy, Debug, Serialize)]
pub enum BodyRef<'a> {
    Listen { listened_at: i64, duration_ms: Option<u32>, client: Option<&'a str>, track: &'a TrackRef },
    Love(&'a TrackRef),
    Unlove(&'a TrackRef),
    Delete { target: u64 },
    Hate(&'a TrackRef),
}

impl Body {
    /// This body, borrowed in canonical field order.
    pub fn borrowed(&self) -> BodyRef<'_> {
        match self {
            Body::Listen { track, listened_at, duration_ms, client } => BodyRef::Listen {
                listened_at: *listened_at,
                duration_ms: *duration_ms,
                client: client.as_deref(),
                track,
            },
            Body::Love(track) => BodyRef::Love(track),
            Body::Unlove(track) => BodyRef::Unlove(track),
            Body::Hate(track) => BodyRef::Hate(track),
            Body::Delete { target } => BodyRef::Delete { target: *target },
        }
    }
}

#[derive(Serialize)]
struct CanonicalEntry<'a> {
    format: u8,
    user: &'a [u8; 32],
    seq: u64,
    salt: &'a Salt,
    body: BodyRef<'a>,
}

/// The canonical bytes of an entry: postcard of (format, user key, seq, salt, body).
pub fn canonical_bytes(user: &[u8; 32], seq: u64, salt: &Salt, body: &Body) -> Vec<u8> {
    let entry = CanonicalEntry { format: ENTRY_FORMAT, user, seq, salt, body: body.borrowed() };
    // Serialising plain structs of integers, strings and byte arrays into a Vec cannot
    // fail; an empty result would simply fail verification, never be trusted.
    postcard::to_allocvec(&entry).unwrap_or_default()
}

/// `f` of the postcard bytes of `value`: serialised on the stack when they fit (the
/// writer hashes every listen it appends, and growing a `Vec` for each was five
/// allocations a listen), else into a `Vec`. The same bytes either way.
pub fn with_postcard<T: Serialize, R>(value: &T, f: impl FnOnce(&[u8]) -> R) -> R {
    let mut buf = [0u8; 1024];
    match postcard::to_slice(value, &mut buf) {
        Ok(bytes) => f(bytes),
        // Serialising plain structs of integers, strings and byte arrays cannot fail
        // but for room; an empty result would fail verification, never be trusted.
        Err(_) => f(&postcard::to_allocvec(value).unwrap_or_default()),
    }
}

/// The content hash of an entry.
pub fn content_hash(user: &[u8; 32], seq: u64, salt: &Salt, body: BodyRef<'_>) -> Hash32 {
    let entry = CanonicalEntry { format: ENTRY_FORMAT, user, seq, salt, body };
    with_postcard(&entry, |bytes| derive_hasher(&CONTENT_KEY).update(bytes).finalize().into())
}

/// The link before the first entry of `user`'s chain.
pub fn genesis_link(user: &[u8; 32]) -> Hash32 {
    blake3::Hasher::new_derive_key(GENESIS_CONTEXT).update(user).finalize().into()
}

/// `link(seq) = blake3_derive(LINK_CONTEXT, link(seq-1) ‖ seq as u64 BE ‖ content_hash)`.
pub fn next_link(prev: &Hash32, seq: u64, content_hash: &Hash32) -> Hash32 {
    derive_hasher(&LINK_KEY).update(prev).update(&seq.to_be_bytes()).update(content_hash).finalize().into()
}

/// The short per-entry check stored beside each entry: the first 4 bytes of its link.
/// It does not protect anything (the seals do); it lets `verify` name the first entry
/// whose stored bytes changed instead of only the block.
pub fn check_of(link: &Hash32) -> [u8; 4] {
    [link[0], link[1], link[2], link[3]]
}

impl Content {
    /// The content hash of this entry, recomputed from content when present.
    pub fn hash(&self, user: &[u8; 32], seq: u64) -> Hash32 {
        match self {
            Content::Present { salt, body } => content_hash(user, seq, salt, body.borrowed()),
            Content::Erased { content_hash } => *content_hash,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The context keys hashed once give what `derive_key` gives (links are checked
    /// here, content hashes in `the_content_hash_covers_the_canonical_bytes_of_any_size`,
    /// dedupe keys in `dedupe::tests`).
    #[test]
    fn a_link_is_the_derive_key_of_its_parts() {
        let (prev, content) = ([3u8; 32], [5u8; 32]);
        let mut parts = prev.to_vec();
        parts.extend_from_slice(&77u64.to_be_bytes());
        parts.extend_from_slice(&content);
        assert_eq!(next_link(&prev, 77, &content), blake3::derive_key(LINK_CONTEXT, &parts));
    }

    fn track() -> TrackRef {
        TrackRef {
            artist: "Aphex Twin".into(),
            artist_names: vec![],
            artist_mbids: vec![],
            title: "Xtal".into(),
            album: Some("Selected Ambient Works 85–92".into()),
            recording_mbid: None,
            release_mbid: None,
        }
    }

    #[test]
    fn canonical_bytes_are_stable() {
        // A change to this vector is a change of the signed format: bump ENTRY_FORMAT.
        let body =
            Body::Listen { track: track(), listened_at: 1_700_000_000, duration_ms: Some(291_000), client: None };
        let bytes = canonical_bytes(&[7; 32], 3, &[9; 16], &body);
        assert_eq!(bytes[0], ENTRY_FORMAT);
        assert_eq!(&bytes[1..33], &[7; 32]);
        assert_eq!(bytes[33], 3, "seq as varint");
        assert_eq!(&bytes[34..50], &[9; 16]);
        assert_eq!(bytes[50], 0, "Listen discriminant");
        // The same vector is printed in docs/protocol.md for independent verifiers.
        assert_eq!(
            hex::encode(&bytes),
            "01070707070707070707070707070707070707070707070707070707070707070703090909090909090909090909090909090080c49fd50c01b8e111000a4170686578205477696e0000045874616c011e53656c656374656420416d6269656e7420576f726b73203835e2809339320000"
        );
        let content = content_hash(&[7; 32], 3, &[9; 16], body.borrowed());
        assert_eq!(hex::encode(content), "d968913e2b5851ca751378199f563654d3e04f6f855672f0c1661d9f16ad9088");
        assert_eq!(
            hex::encode(next_link(&genesis_link(&[7; 32]), 3, &content)),
            "4d15acc6046aae98ca60960674403a232ece0766aaf5262e4b46eeb8bf643ab7"
        );
    }

    /// The content hash is blake3 over the canonical bytes whether they fit the stack
    /// buffer `with_postcard` serialises into or not (a long title, many artists).
    #[test]
    fn the_content_hash_covers_the_canonical_bytes_of_any_size() {
        for len in [0, 900, 1_000, 1_024, 1_100, 5_000] {
            let mut t = track();
            t.title = "x".repeat(len);
            let body =
                Body::Listen { track: t, listened_at: 1_700_000_000, duration_ms: None, client: Some("c".into()) };
            let bytes = canonical_bytes(&[7; 32], 300, &[9; 16], &body);
            let expected: Hash32 = blake3::Hasher::new_derive_key(CONTENT_CONTEXT).update(&bytes).finalize().into();
            assert_eq!(content_hash(&[7; 32], 300, &[9; 16], body.borrowed()), expected, "title of {len} bytes");
        }
    }

    #[test]
    fn erased_entry_keeps_the_link() {
        let body = Body::Love(track());
        let present = Content::Present { salt: [1; 16], body };
        let h = present.hash(&[2; 32], 5);
        let erased = Content::Erased { content_hash: h };
        let prev = genesis_link(&[2; 32]);
        assert_eq!(next_link(&prev, 5, &present.hash(&[2; 32], 5)), next_link(&prev, 5, &erased.hash(&[2; 32], 5)));
    }

    #[test]
    fn salt_changes_the_hash() {
        let body = Body::Love(track());
        assert_ne!(
            content_hash(&[0; 32], 0, &[0; 16], body.borrowed()),
            content_hash(&[0; 32], 0, &[1; 16], body.borrowed())
        );
    }
}
