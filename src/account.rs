//! Account bundles: one file with a user's public key and whole signed log (tombstones
//! and erased entries included, as hashes), which anyone can verify without the node,
//! and the user's privacy ledgers of the last 52 weeks (so the new node's yearly cap
//! counts what the old node spent). Format (`docs/protocol.md` §8): the line
//! `hearsay-account-bundle v2\n` (v1: without ledgers, still read), then frames of
//! `u32 BE length ‖ postcard`: one `HeaderV2` (`HeaderV1`), then one `BlockV1` per log
//! block in order. Verification recomputes the chain and checks every seal, streaming, and names
//! the first bad entry. The user's private key is never in a bundle: it is written, only
//! when asked, to a separate file.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use crate::log::{Body, Content, Hash32, Salt, Seal, TrackRef, Verified, Verifier, VerifyError};
use crate::store::{Store, UserId};

pub const MAGIC: &[u8] = b"hearsay-account-bundle v2\n";
/// Bundles written before ledgers travelled with them.
pub const MAGIC_V1: &[u8] = b"hearsay-account-bundle v1\n";
/// Most weekly ledgers a bundle carries (a rolling year's, and the week of the export).
pub const MAX_LEDGERS: usize = 53;
/// Largest frame (a block of 64 entries with long names fits well under it).
pub const MAX_FRAME: u32 = 4 * 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderV1 {
    pub name: String,
    pub public_key: [u8; 32],
    pub timezone: String,
    pub created_at: i64,
    pub exported_at: i64,
    /// Entries in the log (so a bundle cut between blocks is noticed).
    pub entries: u64,
}

/// The v2 header: `HeaderV1`'s fields and the user's weekly privacy ledgers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderV2 {
    pub name: String,
    pub public_key: [u8; 32],
    pub timezone: String,
    pub created_at: i64,
    pub exported_at: i64,
    pub entries: u64,
    /// (week start, ledger), ascending: what releases of the old node charged this user
    /// in the 52 weeks before the export. Not signed (the user could drop it, spending
    /// only their own budget); checked for shape on import.
    pub ledgers: Vec<(i64, crate::privacy::accountant::Ledger)>,
}

impl From<HeaderV1> for HeaderV2 {
    fn from(h: HeaderV1) -> HeaderV2 {
        HeaderV2 {
            name: h.name,
            public_key: h.public_key,
            timezone: h.timezone,
            created_at: h.created_at,
            exported_at: h.exported_at,
            entries: h.entries,
            ledgers: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryV1 {
    Listen { salt: Salt, track: TrackRef, listened_at: i64, duration_ms: Option<u32>, client: Option<String> },
    Love { salt: Salt, track: TrackRef },
    Unlove { salt: Salt, track: TrackRef },
    Hate { salt: Salt, track: TrackRef },
    Delete { salt: Salt, target: u64 },
    Erased { content_hash: Hash32 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockV1 {
    pub first: u64,
    /// Each entry with the first 4 bytes of its chain link (names the first changed one).
    pub entries: Vec<(EntryV1, [u8; 4])>,
    pub signed_at: i64,
    pub signature: Vec<u8>,
}

fn to_wire(c: Content) -> EntryV1 {
    match c {
        Content::Erased { content_hash } => EntryV1::Erased { content_hash },
        Content::Present { salt, body } => match body {
            Body::Listen { track, listened_at, duration_ms, client } => {
                EntryV1::Listen { salt, track, listened_at, duration_ms, client }
            }
            Body::Love(track) => EntryV1::Love { salt, track },
            Body::Unlove(track) => EntryV1::Unlove { salt, track },
            Body::Hate(track) => EntryV1::Hate { salt, track },
            Body::Delete { target } => EntryV1::Delete { salt, target },
        },
    }
}

pub fn from_wire(e: EntryV1) -> Content {
    match e {
        EntryV1::Erased { content_hash } => Content::Erased { content_hash },
        EntryV1::Listen { salt, track, listened_at, duration_ms, client } => {
            Content::Present { salt, body: Body::Listen { track, listened_at, duration_ms, client } }
        }
        EntryV1::Love { salt, track } => Content::Present { salt, body: Body::Love(track) },
        EntryV1::Unlove { salt, track } => Content::Present { salt, body: Body::Unlove(track) },
        EntryV1::Hate { salt, track } => Content::Present { salt, body: Body::Hate(track) },
        EntryV1::Delete { salt, target } => Content::Present { salt, body: Body::Delete { target } },
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a hearsay account bundle")]
    NotABundle,
    #[error("the bundle is cut off after entry {after}: it ends inside a block, or blocks are missing")]
    Truncated { after: u64 },
    #[error("the bundle is damaged at the block after entry {after}: {reason}")]
    Damaged { after: u64, reason: String },
    #[error("the log does not verify: {0}")]
    Verify(#[from] VerifyError),
    #[error("entry {entry} is not a valid listen or track: {reason}")]
    Invalid { entry: u64, reason: crate::log::ListenError },
}

fn write_frame(w: &mut impl Write, value: &impl Serialize) -> Result<(), Error> {
    let bytes = postcard::to_allocvec(value).map_err(|e| Error::Io(std::io::Error::other(e)))?;
    w.write_all(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes())?;
    w.write_all(&bytes)?;
    Ok(())
}

/// Writes `user`'s bundle; returns the number of entries.
pub fn export(store: &Store, user: UserId, now: i64, w: &mut impl Write) -> Result<u64, Error> {
    let u = store.user(user)?.ok_or_else(|| crate::store::Error::NoSuchUser(format!("#{}", user.0)))?;
    let head = store.log_head(user)?;
    w.write_all(MAGIC)?;
    let year_ago = now.saturating_sub(crate::privacy::params::WEEK_SECS.saturating_mul(53));
    let mut ledgers: Vec<(i64, crate::privacy::accountant::Ledger)> =
        store.user_ledgers(user, MAX_LEDGERS)?.into_iter().filter(|(week, _)| *week >= year_ago).collect();
    ledgers.reverse();
    let header = HeaderV2 {
        name: u.name.clone(),
        public_key: u.public_key,
        timezone: u.timezone.clone(),
        created_at: u.created_at,
        exported_at: now,
        entries: head.n_entries,
        ledgers,
    };
    write_frame(w, &header)?;
    let mut io_error = None;
    store.each_log_block(user, |first, entries, seal| {
        let block = BlockV1 {
            first,
            entries: entries.into_iter().map(|(c, check)| (to_wire(c), check)).collect(),
            signed_at: seal.signed_at,
            signature: seal.signature.to_vec(),
        };
        if let Err(e) = write_frame(w, &block) {
            io_error = Some(e);
        }
        Ok(())
    })?;
    if let Some(e) = io_error {
        return Err(e);
    }
    w.flush()?;
    Ok(head.n_entries)
}

/// Reads one frame; `Ok(None)` at a clean end of file.
fn read_frame(r: &mut impl Read, after: u64) -> Result<Option<Vec<u8>>, Error> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..])?;
        if n == 0 {
            return if got == 0 { Ok(None) } else { Err(Error::Truncated { after }) };
        }
        got += n;
    }
    let len = u32::from_be_bytes(len);
    if len > MAX_FRAME {
        return Err(Error::Damaged { after, reason: format!("a frame of {len} bytes") });
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf).map_err(|_| Error::Truncated { after })?;
    Ok(Some(buf))
}

/// Reads and verifies a whole bundle, streaming, calling `each` with every block that
/// was read (to store it after verification, the caller buffers or re-reads). Names
/// the first bad entry.
pub fn verify(r: &mut impl Read, mut each: impl FnMut(&BlockV1)) -> Result<(HeaderV2, Verified), Error> {
    let mut magic = vec![0u8; MAGIC.len()];
    if r.read_exact(&mut magic).is_err() || (magic != MAGIC && magic != MAGIC_V1) {
        return Err(Error::NotABundle);
    }
    let header_bytes = read_frame(r, 0)?.ok_or(Error::NotABundle)?;
    let header: HeaderV2 = if magic == MAGIC_V1 {
        match postcard::from_bytes::<HeaderV1>(&header_bytes) {
            Ok(h) => h.into(),
            Err(_) => return Err(Error::NotABundle),
        }
    } else {
        match postcard::from_bytes(&header_bytes) {
            Ok(h) => h,
            Err(_) => return Err(Error::NotABundle),
        }
    };
    check_ledgers(&header)?;
    let mut verifier = Verifier::new(&header.public_key)?;
    let mut seen = 0u64;
    while let Some(frame) = read_frame(r, seen.saturating_sub(1))? {
        let block: BlockV1 = match postcard::take_from_bytes::<BlockV1>(&frame) {
            Ok((b, [])) => b,
            _ => {
                return Err(Error::Damaged { after: seen.saturating_sub(1), reason: "a block does not decode".into() });
            }
        };
        let Ok(signature) = <[u8; 64]>::try_from(block.signature.as_slice()) else {
            return Err(Error::Damaged { after: seen.saturating_sub(1), reason: "a seal is not 64 bytes".into() });
        };
        let mut last = None;
        for (i, (entry, check)) in block.entries.iter().enumerate() {
            let seq = block.first + i as u64;
            // A correctly signed entry must still hold what the node accepts: a bundle
            // is built by hand as easily as by a node.
            let content = from_wire(entry.clone());
            if let Err(reason) = content.check() {
                return Err(Error::Invalid { entry: seq, reason });
            }
            verifier.entry(seq, &content, *check);
            last = Some(seq);
            seen = seen.max(seq + 1);
        }
        if let Some(seq) = last {
            verifier.seal(seq, Seal { signed_at: block.signed_at, signature });
        }
        each(&block);
    }
    let verified = verifier.finish()?;
    if verified.n_entries != header.entries {
        return Err(Error::Truncated { after: verified.n_entries.saturating_sub(1) });
    }
    Ok((header, verified))
}

/// A bundle's ledgers: at most `MAX_LEDGERS`, weeks ascending, each on a week start and
/// not after the export.
fn check_ledgers(h: &HeaderV2) -> Result<(), Error> {
    let bad = |reason: &str| Err(Error::Damaged { after: 0, reason: format!("the header's ledgers: {reason}") });
    if h.ledgers.len() > MAX_LEDGERS {
        return bad("more weeks than a year");
    }
    let week = crate::privacy::params::WEEK_SECS;
    let mut last = i64::MIN;
    for (start, ledger) in &h.ledgers {
        if *start <= last || *start > h.exported_at || crate::privacy::accountant::week_of(*start) != *start {
            return bad("weeks out of order, not week starts, or after the export");
        }
        if ledger.periods.len() > 10_080
            || ledger.periods.iter().any(|p| *p < *start || *p >= start.saturating_add(week))
        {
            return bad("a released period outside its week");
        }
        last = *start;
    }
    Ok(())
}

/// Why an account could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Bundle(#[from] Error),
    #[error("the secret key file is not this account's key (its public key differs)")]
    WrongKey,
    #[error("secret key file: {0}")]
    KeyFile(String),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

/// Reads a secret key file written by `account export --with-secret-key`.
pub fn read_secret_key(text: &str) -> Result<[u8; 32], ImportError> {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#'));
    let bytes =
        line.and_then(|l| hex::decode(l).ok()).ok_or_else(|| ImportError::KeyFile("no hex key in it".into()))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| ImportError::KeyFile("the key is not 32 bytes".into()))
}

/// Imports a bundle as a new user named `name` (default: the bundle's), keeping the
/// account's identity: the whole bundle is verified before anything is stored, the
/// user is created with the same signing key, every entry is appended exactly as it
/// was, and the stored log must then verify with the same chain head. On any failure
/// after the user was created, the user is deleted again, so a re-run starts clean.
pub fn import(
    store: &Store,
    ingestor: &crate::store::Ingestor,
    open: &dyn Fn() -> std::io::Result<Box<dyn Read>>,
    seed: [u8; 32],
    name: Option<&str>,
    password: &str,
    now: i64,
) -> Result<(crate::store::users::User, Verified), ImportError> {
    let (header, verified) = verify(&mut open().map_err(Error::Io)?, |_| {})?;
    let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().to_bytes();
    if public != header.public_key {
        return Err(ImportError::WrongKey);
    }
    let user = store.create_user_with_key(name.unwrap_or(&header.name), password, seed, now)?;
    let result = (|| -> Result<Verified, ImportError> {
        if crate::stats::period::time_zone(&header.timezone).is_ok() {
            store.set_timezone(user.id, &header.timezone)?;
        }
        let mut reader = open().map_err(Error::Io)?;
        let mut batch = Vec::new();
        let mut failure = None;
        verify(&mut reader, |block| {
            if failure.is_some() {
                return;
            }
            batch.extend(block.entries.iter().map(|(e, _)| crate::store::Action::Adopt(from_wire(e.clone()))));
            if batch.len() >= 1024
                && let Err(e) = ingestor.ingest_blocking(user.id, std::mem::take(&mut batch))
            {
                failure = Some(e);
            }
        })?;
        if let Some(e) = failure {
            return Err(e.into());
        }
        if !batch.is_empty() {
            ingestor.ingest_blocking(user.id, batch)?;
        }
        // The old node's charges count against this node's yearly cap (the joined-at
        // rule keeps this node from releasing the weeks before the move).
        store.adopt_ledgers(user.id, &header.ledgers)?;
        match store.verify_log(user.id)? {
            Ok(v) if v.head == verified.head && v.n_entries == verified.n_entries => Ok(v),
            Ok(_) => {
                Err(Error::Damaged { after: 0, reason: "the stored chain differs from the bundle's".into() }.into())
            }
            Err(e) => Err(Error::Verify(e).into()),
        }
    })();
    match result {
        Ok(v) => Ok((user, v)),
        Err(e) => {
            let _ = futures::executor::block_on(ingestor.delete_user(user.id));
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{ListenError, TrackRef};

    fn track(artist: &str) -> TrackRef {
        TrackRef {
            artist: artist.into(),
            artist_names: vec![],
            artist_mbids: vec![],
            title: "Song".into(),
            album: None,
            recording_mbid: None,
            release_mbid: None,
        }
    }

    #[test]
    fn a_signed_entry_that_the_node_would_refuse_is_refused_in_a_bundle() {
        let salt = [0; 16];
        let listen = |artist: &str, at: i64| EntryV1::Listen {
            salt,
            track: track(artist),
            listened_at: at,
            duration_ms: None,
            client: None,
        };
        // As `verify` checks each entry of a bundle.
        let check_entry = |e: EntryV1| from_wire(e).check();
        assert_eq!(check_entry(listen("Band", 1_700_000_000)), Ok(()));
        assert_eq!(
            check_entry(listen("Ba\u{0}nd", 1_700_000_000)),
            Err(ListenError::ControlChar { field: "artist_name", code: 0 })
        );
        assert!(check_entry(listen("Band", 5)).is_err(), "before 2002");
        assert!(check_entry(EntryV1::Love { salt, track: track("") }).is_err());
        assert_eq!(check_entry(EntryV1::Delete { salt, target: 3 }), Ok(()));
    }
}
