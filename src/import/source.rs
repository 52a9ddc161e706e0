//! Where records come from: a file, a folder of files, or a zip archive (as Spotify and
//! ListenBrainz deliver their exports). Each file or member is detected and imported
//! on its own, with its own report; members that are not exports are reported and
//! skipped. Zip archives are read member by member, never unpacked to disk, with
//! limits against zip bombs.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use super::formats::{Format, Options, records};
use super::{Error, Summary, import_records};
use crate::store::{Ingestor, UserId};

/// Most members of a zip archive looked at.
pub const MAX_ZIP_MEMBERS: usize = 1000;
/// Most bytes read from one member (declared or actual).
pub const MAX_MEMBER_BYTES: u64 = 2 << 30;
/// Largest ratio of a member's size to its compressed size. Exports compress about
/// 10:1 (JSON) to 30:1 (repetitive CSV); a member claiming more is a decompression bomb.
pub const MAX_COMPRESSION_RATIO: u64 = 200;

/// Bytes of the current file (or member) read so far, and its size: (done, total).
pub type Fraction = Option<(u64, u64)>;

/// Counts the bytes read through it, for progress.
struct Counting<R> {
    inner: R,
    read: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// What happened to one file or archive member.
#[derive(Debug)]
pub struct Report {
    pub name: String,
    /// `None` when it was skipped (not an export).
    pub format: Option<Format>,
    pub summary: Summary,
    pub secs: f64,
    /// Why it was skipped or could not be read.
    pub note: Option<String>,
}

#[allow(clippy::too_many_arguments)]
fn import_reader(
    name: &str,
    reader: Box<dyn BufRead + '_>,
    size: (std::sync::Arc<std::sync::atomic::AtomicU64>, u64),
    format: Format,
    ingestor: &Ingestor,
    user: UserId,
    options: &Options,
    progress: &mut dyn FnMut(&str, &Summary, Fraction),
) -> Result<Report, Error> {
    let started = std::time::Instant::now();
    let (read, total) = size;
    let summary = import_records(records(format, reader, options), ingestor, user, |s| {
        progress(name, s, Some((read.load(std::sync::atomic::Ordering::Relaxed), total)))
    })?;
    Ok(Report {
        name: name.to_owned(),
        format: Some(format),
        summary,
        secs: started.elapsed().as_secs_f64(),
        note: None,
    })
}

fn skipped(name: String, note: &str) -> Report {
    Report { name, format: None, summary: Summary::default(), secs: 0.0, note: Some(note.to_owned()) }
}

/// Imports every export found at `path` (a file, a folder, or a `.zip`).
pub fn import_path(
    path: &Path,
    forced: Option<Format>,
    ingestor: &Ingestor,
    user: UserId,
    options: &Options,
    progress: &mut dyn FnMut(&str, &Summary, Fraction),
) -> Result<Vec<Report>, Error> {
    let mut reports = Vec::new();
    if path.is_dir() {
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(path)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
        files.sort();
        for f in files {
            reports.extend(import_path(&f, forced, ingestor, user, options, progress)?);
        }
        return Ok(reports);
    }
    let name = path.display().to_string();
    let mut magic = [0u8; 4];
    let is_zip = std::fs::File::open(path)?.read(&mut magic)? == 4 && magic == *b"PK\x03\x04";
    if is_zip && forced.is_none() {
        return import_zip(path, forced, ingestor, user, options, progress);
    }
    let file = std::fs::File::open(path)?;
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let unknown = "not a known export format (name it with --format)";
    reports.push(import_stream(name, path, file, total, (forced, unknown), ingestor, user, options, progress)?);
    Ok(reports)
}

/// Detects and imports one stream (a file or an archive member): a report, or a
/// skipped one when it is not an export (`unknown` says why).
#[allow(clippy::too_many_arguments)]
fn import_stream(
    label: String,
    name: &Path,
    inner: impl Read,
    total: u64,
    (forced, unknown): (Option<Format>, &str),
    ingestor: &Ingestor,
    user: UserId,
    options: &Options,
    progress: &mut dyn FnMut(&str, &Summary, Fraction),
) -> Result<Report, Error> {
    let read = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut reader = BufReader::with_capacity(1 << 20, Counting { inner, read: read.clone() });
    let head = reader.fill_buf()?.to_vec();
    let Some(format) = forced.or_else(|| Format::detect(name, &head)) else {
        return Ok(skipped(label, unknown));
    };
    import_reader(&label, Box::new(reader), (read, total), format, ingestor, user, options, progress)
}

fn import_zip(
    path: &Path,
    forced: Option<Format>,
    ingestor: &Ingestor,
    user: UserId,
    options: &Options,
    progress: &mut dyn FnMut(&str, &Summary, Fraction),
) -> Result<Vec<Report>, Error> {
    let mut reports = Vec::new();
    let file = std::fs::File::open(path)?;
    let mut archive = match zip::ZipArchive::new(file) {
        Ok(a) => a,
        Err(e) => {
            reports.push(skipped(path.display().to_string(), &format!("not a readable zip archive: {e}")));
            return Ok(reports);
        }
    };
    let mut names: Vec<(String, usize)> =
        (0..archive.len()).filter_map(|i| archive.name_for_index(i).map(|n| (n.to_owned(), i))).collect();
    names.sort();
    if names.len() > MAX_ZIP_MEMBERS {
        reports.push(skipped(
            path.display().to_string(),
            &format!("{} members, more than {MAX_ZIP_MEMBERS}: not imported", names.len()),
        ));
        return Ok(reports);
    }
    for (member, index) in names {
        let label = format!("{}:{member}", path.display());
        let mut entry = match archive.by_index(index) {
            Ok(e) => e,
            Err(e) => {
                reports.push(skipped(label, &format!("unreadable member: {e}")));
                continue;
            }
        };
        if entry.is_dir() {
            continue;
        }
        if entry.size() > MAX_MEMBER_BYTES {
            reports.push(skipped(label, "larger than 2 GiB uncompressed: not imported"));
            continue;
        }
        // The sizes in the archive can lie: whatever they say, no more is read than the
        // ratio allows for the compressed bytes (at least 1 MiB).
        let allowed = entry.compressed_size().saturating_mul(MAX_COMPRESSION_RATIO).clamp(1 << 20, MAX_MEMBER_BYTES);
        if entry.size() > allowed {
            reports.push(skipped(
                label,
                &format!("expands more than {MAX_COMPRESSION_RATIO} times (a decompression bomb?): not imported"),
            ));
            continue;
        }
        let total = entry.size();
        let limited = Bounded { inner: &mut entry as &mut dyn Read, left: allowed };
        let unknown = "not a listening history (skipped)";
        let member_path = Path::new(&member);
        let what = (forced, unknown);
        match import_stream(label.clone(), member_path, limited, total, what, ingestor, user, options, progress) {
            Ok(report) => reports.push(report),
            Err(Error::Io(e)) => reports.push(skipped(label, &format!("unreadable member: {e}"))),
            Err(e) => return Err(e),
        }
    }
    Ok(reports)
}

/// A zip member's reader that fails, rather than stops, past what its compressed size
/// allows: a member whose declared size lies is reported, never imported cut short
/// (a line cut mid-field could read as a valid but wrong listen).
struct Bounded<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            // One byte more than allowed means the member is bigger than it may be.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "expands more than {MAX_COMPRESSION_RATIO} times its compressed size (a decompression bomb?)"
                    ),
                )),
            };
        }
        let n = usize::try_from(self.left).unwrap_or(usize::MAX).min(buf.len());
        let read = self.inner.read(&mut buf[..n])?;
        self.left -= read as u64;
        Ok(read)
    }
}
