//! Importing listening histories through the ingest path.
//!
//! Today: ListenBrainz JSONL exports (`listenbrainz`). Each importer streams its file,
//! validates every record through `Listen::parse`, and hands batches to the writer; a
//! bad record is reported with its place and the good ones are kept. Re-running an
//! import adds nothing (the duplicate rule drops what is already there).

pub mod listenbrainz;

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
    /// The first bad records: (line, reason).
    pub bad_examples: Vec<(u64, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the file: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

/// Imports a ListenBrainz JSONL stream for `user`. Parsing overlaps with writing: one
/// batch is written while the next is parsed. `progress` is called after each batch.
pub fn import_jsonl(
    reader: impl BufRead,
    ingestor: &Ingestor,
    user: UserId,
    now: i64,
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
        for record in listenbrainz::JsonlReader::new(reader, now) {
            let (line, result) = record?;
            summary.read += 1;
            match result {
                Ok(listen) => batch.push(Action::Listen(listen)),
                Err(e) => {
                    summary.bad += 1;
                    if summary.bad_examples.len() < MAX_REPORTED {
                        summary.bad_examples.push((line, e.to_string()));
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
