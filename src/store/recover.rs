//! Salvage and backup. The signed logs are the truth: `recover` reads a damaged data
//! directory (a copy of it: the damaged files are never changed), keeps of every
//! user's log the longest prefix that still verifies (chain and seals, against the
//! user's public key), appends it to a new store through the writer, as an account
//! import does (so the statistics are rebuilt), and carries over what is keyed by user
//! and not derived from the logs (tokens, settings, privacy ledgers and contributions)
//! and the node's own records (releases, federation state, the privacy key). Nothing
//! that does not verify is kept; what was lost is reported per user.
//!
//! `backup` writes a consistent copy of an open store: the caller (the writer thread,
//! for a running node) makes sure no log write happens meanwhile.

use std::path::{Path, PathBuf};

use super::codec::decode;
use super::keys::{self, UserId};
use super::values::{SigningKeyV1, UserV3};
use super::{Error, Options, Result, Store, schema};
use crate::log::{Content, Seal, Verifier, VerifyError};
use crate::stats::credits::CreditRules;

/// What `recover` did for one user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserReport {
    pub name: String,
    /// Entries readable in the damaged store, and kept (the verified prefix).
    pub found: u64,
    pub kept: u64,
    /// Why the rest was not kept, when something was not.
    pub why: Option<String>,
}

/// What `recover` did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub users: Vec<UserReport>,
    /// Users whose account or key could not be read at all.
    pub lost_users: Vec<String>,
    /// The damaged store's acknowledged-entries watermark, if it had one.
    pub acknowledged: Option<u64>,
    /// How the damaged files were opened.
    pub opened: String,
}

impl Report {
    pub fn kept(&self) -> u64 {
        self.users.iter().map(|u| u.kept).sum()
    }
}

/// Trees copied as they are, for the users recovered (keys start with a user id).
const USER_TREES: &[&str] = &[
    schema::USERID_TOKENID_TOKENDIGEST,
    schema::USERID_SETTINGS,
    schema::USERID_WEEK_LEDGER,
    schema::USERID_PERIODSTART_CONTRIBUTION,
    schema::USERID_PERIOD_COMMUNITY_SECUREREPORT,
];
/// The node's own trees, copied as they are.
const NODE_TREES: &[&str] = &[
    schema::PERIODSTART_RELEASE,
    schema::PERIOD_ORIGIN_SNAPSHOT,
    schema::COMMUNITY_VERSION_MANIFEST,
    schema::COMMUNITY_VERSION_FORK,
    // Which manifest bodies this node signed: without it, a salvaged node could sign
    // a second body of a version (a fork).
    schema::COMMUNITY_VERSION_SIGNED,
    schema::COMMUNITY_PERIOD_SIGNER_RESULT,
    schema::COMMUNITY_PERIOD_SIGNER_WRONGRESULT,
    schema::COMMUNITY_FOLLOW,
    schema::INVITEDIGEST_INVITE,
    // Which periods this node already reported or aggregated: without it, a salvaged
    // node could report its users twice for one period.
    schema::SECAGG_STATE,
];
/// `meta` keys carried over.
const META_KEYS: &[&str] = &["privacy_key", "release_watermark", "next_token_id"];

/// Copies a directory tree (files and folders).
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

fn io(e: std::io::Error) -> Error {
    Error::Db(sled::Error::Io(e))
}

/// Opens a copy of a damaged store, trying less and less of sled's files: as it is,
/// then without its snapshots (sled replays its whole log), then without its config
/// (with the compression it recorded, then the other: the config may be what is damaged).
/// Each attempt has a fresh copy of `from`'s database of its own (`work` for the first,
/// which the caller made): a failed open may have written to its copy (sled writes a new
/// config with the compression it was given before it reads a page).
fn open_damaged(from: &Path, work: &Path, options: &Options) -> Result<(Store, String)> {
    let recorded = super::stored_compression(&from.join("db")).unwrap_or(options.compression);
    // (what, without snapshots, without config, compression given)
    let attempts = [
        ("as it is", false, false, None),
        ("without sled's snapshot files", true, false, None),
        ("without sled's snapshot and config files", true, true, Some(recorded)),
        ("without sled's snapshot and config files, the other compression", true, true, Some(!recorded)),
    ];
    let mut last = None;
    // A store opened without its config but holding no account: kept while the other
    // compression is tried, and returned if that one does no better (it may still hold
    // the node's own records).
    let mut fallback: Option<(Store, String)> = None;
    for (i, (what, no_snapshots, no_config, compression)) in attempts.into_iter().enumerate() {
        let here = if i == 0 { work.to_path_buf() } else { work.join(format!("attempt-{i}")) };
        let db = here.join("db");
        // At most two copies on disk at once (a failed attempt's goes before the next
        // is made, the kept one stays): a large store may not have room for more.
        let prepared = (|| -> std::io::Result<()> {
            if i > 0 {
                // A new directory: `recover` removed `work`, so one left over fails here.
                std::fs::create_dir(&here)?;
                copy_dir(&from.join("db"), &db)?;
            }
            for entry in std::fs::read_dir(&db)? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if (no_snapshots && name.starts_with("snap.")) || (no_config && name == "conf") {
                    std::fs::remove_file(entry.path())?;
                }
            }
            Ok(())
        })();
        if let Err(e) = prepared {
            // Without returning: a kept store is still better than this error.
            last = Some(io(e));
            let _ = std::fs::remove_dir_all(&db);
            continue;
        }
        let store = match Store::open_files_compressed(&here, options, compression) {
            Ok(store) => store,
            Err(e) => {
                last = Some(e);
                let _ = std::fs::remove_dir_all(&db);
                continue;
            }
        };
        if !no_config || has_accounts(&store) {
            if let Some((kept, _)) = fallback.take() {
                let kept_db = kept.path().to_path_buf();
                drop(kept);
                let _ = std::fs::remove_dir_all(kept_db);
            }
            return Ok((store, what.to_owned()));
        }
        if fallback.is_none() {
            fallback = Some((store, what.to_owned()));
        } else {
            drop(store);
            let _ = std::fs::remove_dir_all(&db);
        }
    }
    if let Some(kept) = fallback {
        return Ok(kept);
    }
    Err(last.unwrap_or(Error::Damaged { path: work.join("db"), reason: "sled cannot open it".into() }))
}

/// Whether any account record can be read (its key, at least), without a panic inside
/// sled escaping.
fn has_accounts(store: &Store) -> bool {
    let first = super::catch_damage(store.path(), || store.trees.userid_user.iter().next());
    matches!(first, Ok(Some(Ok(_))))
}

type Block = (u64, Vec<(Content, [u8; 4])>, Seal);

/// The blocks of a user's log that can be read, in order, up to the first that cannot.
fn readable_blocks(store: &Store, user: UserId) -> (Vec<Block>, Option<String>) {
    let mut blocks = Vec::new();
    let read = super::catch_damage(&store.path, || {
        store.each_log_block(user, |first, entries, seal| {
            blocks.push((first, entries, seal));
            Ok(())
        })
    });
    let why = match read {
        Ok(Ok(())) => None,
        Ok(Err(e)) | Err(e) => Some(e.to_string()),
    };
    (blocks, why)
}

/// Verifies `blocks` from the first; on a failure, drops the block it is in and every
/// later one and tries again. Returns how many blocks verify and why the rest do not.
fn verified_prefix(public_key: &[u8; 32], blocks: &[Block]) -> Result<(usize, Option<String>), VerifyError> {
    let mut n = blocks.len();
    let mut why = None;
    loop {
        let mut v = Verifier::new(public_key)?;
        for (first, entries, seal) in &blocks[..n] {
            let mut last = None;
            for (i, (content, check)) in entries.iter().enumerate() {
                let seq = first + i as u64;
                v.entry(seq, content, *check);
                last = Some(seq);
            }
            if let Some(seq) = last {
                v.seal(seq, *seal);
            }
        }
        match v.finish() {
            Ok(_) => return Ok((n, why)),
            Err(e) => {
                let bad = match &e {
                    VerifyError::BadKey => return Err(e),
                    VerifyError::Sequence { found, .. } => *found,
                    VerifyError::Entry { seq }
                    | VerifyError::Unreadable { seq, .. }
                    | VerifyError::DanglingSeal { seq } => *seq,
                    VerifyError::Seal { from, .. } => *from,
                    VerifyError::Unsealed { from, .. } => *from,
                };
                let keep =
                    blocks[..n].iter().take_while(|(first, entries, _)| first + entries.len() as u64 <= bad).count();
                why.get_or_insert_with(|| e.to_string());
                if keep >= n {
                    // Cannot shrink further (should not happen): keep nothing.
                    return Ok((0, why));
                }
                n = keep;
            }
        }
    }
}

/// Appends `entries` to `user`'s new log exactly (in batches; a refused batch is
/// retried entry by entry up to the refused one, which ends the log there: an entry the
/// node would not accept today, however it was signed). Returns (entries kept, why the
/// rest was not).
fn adopt(ingestor: &super::Ingestor, user: UserId, entries: &[&Content]) -> Result<(u64, Option<String>)> {
    let mut kept = 0u64;
    for chunk in entries.chunks(1024) {
        let batch = chunk.iter().map(|c| super::Action::Adopt((*c).clone())).collect();
        if ingestor.ingest_blocking(user, batch).is_ok() {
            kept += chunk.len() as u64;
            continue;
        }
        for c in chunk {
            match ingestor.ingest_blocking(user, vec![super::Action::Adopt((*c).clone())]) {
                Ok(_) => kept += 1,
                Err(e) => return Ok((kept, Some(format!("entry {kept} is refused: {e}")))),
            }
        }
    }
    Ok((kept, None))
}

/// Recovers the data directory `from` into a new data directory `to` (which must not
/// hold a store yet). See the module documentation.
pub fn recover(from: &Path, to: &Path, options: &Options) -> Result<Report> {
    if to.join("db").exists() {
        return Err(Error::Invalid(format!("{} already holds a store: recover into a new directory", to.display())));
    }
    std::fs::create_dir_all(to).map_err(io)?;
    let work = to.join(".recover-work");
    match std::fs::remove_dir_all(&work) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
        _ => {}
    }
    copy_dir(&from.join("db"), &work.join("db")).map_err(io)?;
    let result = recover_from_copy(from, &work, to, options);
    let _ = std::fs::remove_dir_all(&work);
    let key = from.join(super::NODE_KEY_FILE);
    if result.is_ok() && key.exists() {
        std::fs::copy(&key, to.join(super::NODE_KEY_FILE)).map_err(io)?;
    }
    result
}

fn recover_from_copy(from: &Path, work: &Path, to: &Path, options: &Options) -> Result<Report> {
    let (old, opened) = open_damaged(from, work, options)?;
    let acknowledged = std::fs::read_to_string(from.join("acknowledged"))
        .ok()
        .and_then(|t| t.trim().strip_prefix("entries ").and_then(|n| n.parse().ok()));
    let mut report = Report { acknowledged, opened, ..Report::default() };
    let new = Store::open(to, options)?;
    let ingestor = super::Ingestor::start(new.clone(), 20_000, CreditRules::default())?;
    let mut recovered = Vec::new();
    let users: Vec<(sled::IVec, sled::IVec)> = super::catch_damage(&old.path, || {
        old.trees.userid_user.iter().filter_map(std::result::Result::ok).collect::<Vec<_>>()
    })?;
    for (k, v) in users {
        let Ok(id) = keys::parse_u32(schema::USERID_USER, &k).map(UserId) else { continue };
        let Ok(record) = decode::<UserV3>(schema::USERID_USER, &k, &v) else {
            report.lost_users.push(format!("#{}: the account record does not decode", id.0));
            continue;
        };
        let seed = old
            .trees
            .userid_signingkey
            .get(keys::user(id))
            .ok()
            .flatten()
            .and_then(|b| decode::<SigningKeyV1>(schema::USERID_SIGNINGKEY, &keys::user(id), &b).ok());
        let Some(SigningKeyV1 { seed }) = seed else {
            report.lost_users.push(format!("{}: the signing key cannot be read", record.name));
            continue;
        };
        let (blocks, unreadable) = readable_blocks(&old, id);
        let found: u64 = blocks.iter().map(|(_, e, _)| e.len() as u64).sum();
        let (n, why) = match verified_prefix(&record.public_key, &blocks) {
            Ok(r) => r,
            Err(e) => {
                report.lost_users.push(format!("{}: {e}", record.name));
                continue;
            }
        };
        new.insert_recovered_user(id, &record, seed)?;
        let entries: Vec<&Content> = blocks[..n].iter().flat_map(|(_, e, _)| e.iter().map(|(c, _)| c)).collect();
        let (kept, refused) = adopt(&ingestor, id, &entries)?;
        recovered.push((id, kept));
        report.users.push(UserReport { name: record.name, found, kept, why: refused.or(why).or(unreadable) });
    }
    ingestor.stop();
    super::catch_damage(&old.path, || copy_records(&old, &new, &recovered))??;
    new.flush()?;
    drop(new);
    // The new store opens like any other (and its statistics are recounted if needed).
    Store::open(to, options)?;
    Ok(report)
}

/// Copies what is keyed by user and not derived from the logs (for the users
/// recovered), and the node's own records.
fn copy_records(old: &Store, new: &Store, recovered: &[(UserId, u64)]) -> Result<()> {
    for name in USER_TREES.iter().copied().chain([schema::USERID_SEQ_INFO]) {
        let (Some(src), Some(dst)) = (old.tree(name), new.tree(name)) else { continue };
        for (id, kept) in recovered {
            for (k, v) in src.scan_prefix(keys::user(*id)).filter_map(std::result::Result::ok) {
                // Extra client metadata only for the entries kept.
                if name == schema::USERID_SEQ_INFO
                    && keys::parse_user_seq(name, &k).map_or(true, |(_, first)| first >= *kept)
                {
                    continue;
                }
                dst.insert(k, v)?;
            }
        }
    }
    // Tokens: the records their index points at.
    for (id, _) in recovered {
        for (_, digest) in
            new.trees.userid_tokenid_tokendigest.scan_prefix(keys::user(*id)).filter_map(std::result::Result::ok)
        {
            if let Ok(Some(record)) = old.trees.tokendigest_token.get(&digest) {
                new.trees.tokendigest_token.insert(digest, record)?;
            }
        }
    }
    for name in NODE_TREES {
        let (Some(src), Some(dst)) = (old.tree(name), new.tree(name)) else { continue };
        for (k, v) in src.iter().filter_map(std::result::Result::ok) {
            dst.insert(k, v)?;
        }
    }
    for key in META_KEYS {
        if let Ok(Some(v)) = old.trees.meta.get(key) {
            new.trees.meta.insert(key, v)?;
        }
    }
    Ok(())
}

/// Writes a consistent copy of `store` as a new data directory `to`: every tree,
/// copied item by item into a new database, then flushed. The caller keeps log writes
/// out meanwhile (the writer thread does this for a running node).
pub fn backup(store: &Store, to: &Path, options: &Options) -> Result<PathBuf> {
    if to.join("db").exists() {
        return Err(Error::Invalid(format!("{} already holds a store: back up into a new directory", to.display())));
    }
    std::fs::create_dir_all(to).map_err(io)?;
    store.flush()?;
    let db = super::sled_config(&to.join("db"), options, None).open()?;
    for name in schema::ALL_TREES {
        let (Some(src), Ok(dst)) = (store.tree(name), db.open_tree(name)) else { continue };
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for kv in src.iter() {
            let (k, v) = kv?;
            batch.insert(k, v);
            n += 1;
            if n % 10_000 == 0 {
                dst.apply_batch(std::mem::take(&mut batch))?;
            }
        }
        dst.apply_batch(batch)?;
    }
    db.flush()?;
    drop(db);
    // sled never syncs its conf, which alone says whether the pages are compressed.
    super::sync_conf(&to.join("db")).map_err(io)?;
    if let Some(dir) = store.path.parent() {
        let key = dir.join(super::NODE_KEY_FILE);
        if key.exists() {
            std::fs::copy(&key, to.join(super::NODE_KEY_FILE)).map_err(io)?;
        }
    }
    // The copy opens like any other store (this also writes its watermark).
    Store::open(to, options)?;
    Ok(to.to_owned())
}
