//! Exports of a user's listens, streamed oldest first, in open formats that hearsay and
//! the services people move to read back:
//! - `listenbrainz`: ListenBrainz's JSONL export shape, one listen per line
//!   (`listened_at`, `track_metadata` with `artist_name`, `track_name`, `release_name`
//!   and `additional_info`: `artist_names`, `artist_mbids`, `recording_mbid`,
//!   `release_mbid`, `duration_ms`, `submission_client`, and the client's other fields);
//! - `csv`: a header `uts,utc_time,artist,album,track,duration_ms,recording_mbid` then
//!   one row per listen (RFC 4180 quoting), as the common Last.fm exporters write.

use std::io::Write;

use serde_json::{Map, Value, json};

use crate::log::listen::format_mbid;
use crate::store::logs::Order;
use crate::store::{Store, UserId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    ListenBrainz,
    Csv,
}

impl ExportFormat {
    pub fn parse(s: &str) -> Option<ExportFormat> {
        match s {
            "listenbrainz" | "jsonl" => Some(ExportFormat::ListenBrainz),
            "csv" => Some(ExportFormat::Csv),
            _ => None,
        }
    }

    pub fn file_name(self, user: &str) -> String {
        match self {
            ExportFormat::ListenBrainz => format!("{user}-listens.jsonl"),
            ExportFormat::Csv => format!("{user}-listens.csv"),
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::ListenBrainz => "application/x-ndjson; charset=utf-8",
            ExportFormat::Csv => "text/csv; charset=utf-8",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error("writing the export: {0}")]
    Io(#[from] std::io::Error),
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
}

/// Writes every live listen of `user` to `out`; returns how many.
pub fn export(store: &Store, user: UserId, format: ExportFormat, out: &mut impl Write) -> Result<u64, Error> {
    if format == ExportFormat::Csv {
        out.write_all(b"uts,utc_time,artist,album,track,duration_ms,recording_mbid\n")?;
    }
    let mut n = 0u64;
    let mut pending: Vec<crate::store::logs::StoredListen> = Vec::new();
    let mut io_error = None;
    let flush = |batch: &mut Vec<crate::store::logs::StoredListen>, out: &mut dyn Write| -> Result<(), Error> {
        let seqs: Vec<u64> = batch.iter().map(|l| l.seq).collect();
        let infos = store.listen_infos(user, &seqs)?;
        for stored in batch.drain(..) {
            let l = &stored.listen;
            match format {
                ExportFormat::ListenBrainz => {
                    let mut info: Map<String, Value> = infos
                        .get(&stored.seq)
                        .and_then(|i| serde_json::from_str::<Value>(i).ok())
                        .and_then(|v| v.as_object().cloned())
                        .unwrap_or_default();
                    if !l.track().artist_names.is_empty() {
                        info.insert("artist_names".into(), json!(l.track().artist_names));
                    }
                    if !l.track().artist_mbids.is_empty() {
                        info.insert(
                            "artist_mbids".into(),
                            json!(l.track().artist_mbids.iter().map(format_mbid).collect::<Vec<_>>()),
                        );
                    }
                    if let Some(m) = &l.track().recording_mbid {
                        info.insert("recording_mbid".into(), json!(format_mbid(m)));
                    }
                    if let Some(m) = &l.track().release_mbid {
                        info.insert("release_mbid".into(), json!(format_mbid(m)));
                    }
                    if let Some(d) = l.duration_ms() {
                        info.insert("duration_ms".into(), json!(d));
                    }
                    if let Some(c) = &l.client() {
                        info.insert("submission_client".into(), json!(c));
                    }
                    let mut meta = json!({ "artist_name": l.track().artist, "track_name": l.track().title });
                    if let Some(a) = &l.track().album {
                        meta["release_name"] = json!(a);
                    }
                    meta["additional_info"] = Value::Object(info);
                    let line = json!({ "listened_at": l.listened_at(), "track_metadata": meta });
                    serde_json::to_writer(&mut *out, &line).map_err(std::io::Error::other)?;
                    out.write_all(b"\n")?;
                }
                ExportFormat::Csv => {
                    let time = jiff::Timestamp::from_second(l.listened_at())
                        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
                        .unwrap_or_default();
                    writeln!(
                        out,
                        "{},{},{},{},{},{},{}",
                        l.listened_at(),
                        time,
                        csv_field(&l.track().artist),
                        csv_field(l.track().album.as_deref().unwrap_or("")),
                        csv_field(&l.track().title),
                        l.duration_ms().map(|d| d.to_string()).unwrap_or_default(),
                        l.track().recording_mbid.as_ref().map(format_mbid).unwrap_or_default(),
                    )?;
                }
            }
        }
        Ok(())
    };
    store.each_listen(user, i64::MIN, i64::MAX, Order::OldestFirst, |l| {
        pending.push(l);
        n += 1;
        if pending.len() >= 1024
            && let Err(e) = flush(&mut pending, out)
        {
            io_error = Some(e);
            return Ok(false);
        }
        Ok(true)
    })?;
    if let Some(e) = io_error {
        return Err(e);
    }
    flush(&mut pending, out)?;
    out.flush()?;
    Ok(n)
}
