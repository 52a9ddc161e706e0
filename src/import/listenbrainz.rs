//! The streaming reader of ListenBrainz's JSONL export (one listen per line); each
//! line is one listen object of `crate::listenbrainz_json`.

use std::io::BufRead;

pub use crate::listenbrainz_json::{MAX_LINE_BYTES, RecordError, extra_info, parse_listen};
use crate::log::Listen;
use serde_json::Value;

/// Reads a JSONL export one line at a time, never holding more than one line.
/// Yields `(line number, result)`; blank lines are skipped; a BOM and CRLF endings are
/// accepted.
pub struct JsonlReader<R> {
    reader: R,
    line: u64,
    now: i64,
    buf: Vec<u8>,
}

impl<R: BufRead> JsonlReader<R> {
    pub fn new(reader: R, now: i64) -> JsonlReader<R> {
        JsonlReader { reader, line: 0, now, buf: Vec::new() }
    }

    /// Reads one line into `buf`, at most `MAX_LINE_BYTES`; Ok(None) at the end,
    /// Ok(Some(false)) when the line was too long (and was skipped).
    fn next_line(&mut self) -> std::io::Result<Option<bool>> {
        self.buf.clear();
        let mut too_long = false;
        loop {
            let available = self.reader.fill_buf()?;
            if available.is_empty() {
                return Ok(if self.buf.is_empty() && !too_long { None } else { Some(!too_long) });
            }
            let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (&available[..i], Some(i + 1)),
                None => (available, None),
            };
            if !too_long {
                if self.buf.len() + chunk.len() > MAX_LINE_BYTES {
                    too_long = true;
                    self.buf.clear();
                } else {
                    self.buf.extend_from_slice(chunk);
                }
            }
            let consumed = done.unwrap_or(available.len());
            self.reader.consume(consumed);
            if done.is_some() {
                return Ok(Some(!too_long));
            }
        }
    }
}

impl<R: BufRead> Iterator for JsonlReader<R> {
    type Item = std::io::Result<(u64, Result<Listen, RecordError>)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let fits = match self.next_line() {
                Ok(None) => return None,
                Ok(Some(fits)) => fits,
                Err(e) => return Some(Err(e)),
            };
            self.line += 1;
            if !fits {
                return Some(Ok((self.line, Err(RecordError::TooLong))));
            }
            let mut bytes = self.buf.as_slice();
            if self.line == 1 {
                bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
            }
            let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
            if bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let result = serde_json::from_slice::<Value>(bytes)
                .map_err(|e| RecordError::Json(e.to_string()))
                .and_then(|v| parse_listen(&v, self.now));
            return Some(Ok((self.line, result)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::ListenError;

    const NOW: i64 = 1_760_000_000;

    fn read(text: &[u8]) -> Vec<(u64, Result<Listen, RecordError>)> {
        JsonlReader::new(text, NOW).map(|r| r.expect("io")).collect()
    }

    #[test]
    fn reads_good_lines_and_names_bad_ones() {
        let text = b"\xEF\xBB\xBF{\"listened_at\":1700000000,\"track_metadata\":{\"artist_name\":\"A\",\"track_name\":\"T\",\"release_name\":\"\",\"additional_info\":{\"duration_ms\":1000,\"artist_mbids\":[\"f27ec8db-af05-4f36-916e-3d57f91ecf5e\"],\"recording_mbid\":\"\"}}}\r\n\
\n\
{not json}\n\
{\"listened_at\":\"1700000001\",\"track_metadata\":{\"artist_name\":\"A\",\"track_name\":\"T2\",\"additional_info\":{\"duration\":200}}}\n\
{\"listened_at\":5,\"track_metadata\":{\"artist_name\":\"A\",\"track_name\":\"T\"}}\n\
{\"listened_at\":1700000000,\"track_metadata\":{\"artist_name\":\"A\\u0000\",\"track_name\":\"T\"}}\n\
[1,2]\n\
{\"listened_at\":1700000000,\"track_metadata\":{\"artist_name\":\"A\",\"track_name\":\"T\"}}";
        let out = read(text);
        let lines: Vec<u64> = out.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [1, 3, 4, 5, 6, 7, 8]);
        let first = out[0].1.as_ref().expect("line 1");
        assert_eq!(
            (first.track().album.as_deref(), first.duration_ms(), first.track().artist_mbids.len()),
            (None, Some(1000), 1)
        );
        assert!(matches!(out[1].1, Err(RecordError::Json(_))));
        assert_eq!(out[2].1.as_ref().expect("line 4").duration_ms(), Some(200_000));
        assert!(matches!(out[3].1, Err(RecordError::Listen(ListenError::TooEarly { .. }))));
        assert!(matches!(out[4].1, Err(RecordError::Listen(ListenError::ControlChar { .. }))));
        assert!(matches!(out[5].1, Err(RecordError::Shape(_))));
        assert!(out[6].1.is_ok(), "last line without newline");
    }

    #[test]
    fn an_overlong_line_is_skipped_not_buffered() {
        let mut text = vec![b'x'; MAX_LINE_BYTES + 10];
        text.push(b'\n');
        text.extend_from_slice(
            b"{\"listened_at\":1700000000,\"track_metadata\":{\"artist_name\":\"A\",\"track_name\":\"T\"}}\n",
        );
        let out = read(&text);
        assert!(matches!(out[0], (1, Err(RecordError::TooLong))));
        assert!(matches!(out[1], (2, Ok(_))));
    }

    #[test]
    fn invalid_utf8_is_an_error_for_its_line_only() {
        let text = b"{\"listened_at\":1700000000,\"track_metadata\":{\"artist_name\":\"\xff\",\"track_name\":\"T\"}}\n{\"listened_at\":1700000000,\"track_metadata\":{\"artist_name\":\"A\",\"track_name\":\"T\"}}\n";
        let out = read(text);
        assert!(out[0].1.is_err());
        assert!(out[1].1.is_ok());
    }
}
