//! Importing listening histories through the ingest path.
//!
//! `formats` detects and reads every supported export (ListenBrainz JSONL and JSON,
//! Last.fm CSV, Spotify extended and account-data histories, Maloja, Rockbox) as a
//! stream of records; `import_records` validates every record through `Listen::parse`
//! and hands batches to the writer; a bad record is reported with its place, records
//! that are not listens (skips, podcasts, private sessions) are counted by reason, and
//! the good ones are kept. Re-running an import adds nothing (the duplicate rule drops
//! what is already there).

pub mod formats;
pub mod jobs;
pub mod json_stream;
pub mod listenbrainz;
pub mod source;

use std::io::BufRead;

use crate::store::{Action, Ingestor, Outcome, UserId};

/// Listens per batch handed to the writer.
pub const BATCH: usize = 1000;
/// Bad records kept for the summary (the count covers all of them).
pub const MAX_REPORTED: usize = 20;

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Records read so far (good and bad).
    pub read: u64,
    pub imported: u64,
    pub duplicates: u64,
    pub bad: u64,
    /// The first bad records: (line or element number, reason).
    pub bad_examples: Vec<(u64, String)>,
    /// Records that are not listens, by reason.
    pub dropped: std::collections::BTreeMap<&'static str, u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the file: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

/// Imports a ListenBrainz JSONL stream for `user`.
pub fn import_jsonl(
    reader: impl BufRead,
    ingestor: &Ingestor,
    user: UserId,
    now: i64,
    progress: impl FnMut(&Summary),
) -> Result<Summary, Error> {
    let records = listenbrainz::JsonlReader::new(reader, now).map(|r| {
        r.map(|(line, res)| (line, res.map_or_else(|e| formats::Parsed::Bad(e.to_string()), formats::Parsed::Listen)))
    });
    import_records(records, ingestor, user, progress)
}

/// Imports a stream of records for `user`. Parsing overlaps with writing: one batch is
/// written while the next is parsed. `progress` is called after each batch.
pub fn import_records(
    records: impl Iterator<Item = std::io::Result<(u64, formats::Parsed)>>,
    ingestor: &Ingestor,
    user: UserId,
    mut progress: impl FnMut(&Summary),
) -> Result<Summary, Error> {
    let mut summary = Summary::default();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Action>>(1);
    let writer = ingestor.clone();
    std::thread::scope(|scope| -> Result<(), Error> {
        let handle = scope.spawn(move || -> Result<Vec<Vec<Outcome>>, crate::store::Error> {
            let mut all = Vec::new();
            for batch in rx {
                all.push(writer.ingest_blocking(user, batch)?);
            }
            Ok(all)
        });
        let mut batch = Vec::with_capacity(BATCH);
        let mut send_error = false;
        for record in records {
            let (line, parsed) = record?;
            summary.read += 1;
            match parsed {
                formats::Parsed::Listen(listen) => batch.push(Action::Listen(listen)),
                formats::Parsed::Dropped(why) => *summary.dropped.entry(why).or_default() += 1,
                formats::Parsed::Bad(e) => {
                    summary.bad += 1;
                    if summary.bad_examples.len() < MAX_REPORTED {
                        summary.bad_examples.push((line, e));
                    }
                }
            }
            if batch.len() >= BATCH {
                if tx.send(std::mem::take(&mut batch)).is_err() {
                    send_error = true;
                    break;
                }
                progress(&summary);
            }
        }
        if !batch.is_empty() && !send_error {
            let _ = tx.send(batch);
        }
        drop(tx);
        let outcomes = handle.join().map_err(|_| std::io::Error::other("the import writer panicked"))??;
        for o in outcomes.iter().flatten() {
            match o {
                Outcome::Appended { .. } => summary.imported += 1,
                Outcome::Duplicate => summary.duplicates += 1,
                Outcome::NotFound => {}
            }
        }
        Ok(())
    })?;
    progress(&summary);
    Ok(summary)
}
