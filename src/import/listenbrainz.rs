//! ListenBrainz listens as JSON, and the streaming reader of ListenBrainz's JSONL
//! export (one listen per line). The scrobbler API reuses `raw_listen` for
//! `submit-listens` payloads, which carry the same `track_metadata` shape.

use std::io::BufRead;

use serde_json::{Map, Value};

use crate::log::{Listen, ListenError, RawListen, TrackRef};

/// Longest accepted line of a JSONL export. ListenBrainz caps a listen at 10,240
/// bytes; exports add a few fields, so allow generously more.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Why one record was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("{0}")]
    Shape(String),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("line longer than {MAX_LINE_BYTES} bytes")]
    TooLong,
}

fn str_field<'a>(obj: &'a serde_json::Map<String, Value>, key: &str) -> Result<Option<&'a str>, RecordError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(RecordError::Shape(format!("{key}: must be a string"))),
    }
}

fn int_field(obj: &serde_json::Map<String, Value>, key: &str) -> Result<Option<i64>, RecordError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| RecordError::Shape(format!("{key}: not an integer"))),
        // ListenBrainz coerces numeric strings with int().
        Some(Value::String(s)) => {
            s.trim().parse::<i64>().map(Some).map_err(|_| RecordError::Shape(format!("{key}: not an integer")))
        }
        Some(_) => Err(RecordError::Shape(format!("{key}: not an integer"))),
    }
}

fn str_list<'a>(obj: &'a serde_json::Map<String, Value>, key: &str) -> Result<Vec<&'a str>, RecordError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .filter(|v| !matches!(v, Value::String(s) if s.trim().is_empty()))
            .map(|v| v.as_str().ok_or_else(|| RecordError::Shape(format!("{key}: must be a list of strings"))))
            .collect(),
        Some(_) => Err(RecordError::Shape(format!("{key}: must be a list of strings"))),
    }
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.trim().is_empty())
}

/// Validates one listen object (`{"listened_at": .., "track_metadata": {..}}`).
pub fn parse_listen(value: &Value, now: i64) -> Result<Listen, RecordError> {
    let obj = value.as_object().ok_or_else(|| RecordError::Shape("a listen must be a JSON object".into()))?;
    let listened_at =
        int_field(obj, "listened_at")?.ok_or_else(|| RecordError::Shape("listened_at: missing".into()))?;
    let meta = match obj.get("track_metadata") {
        Some(Value::Object(m)) => m,
        _ => return Err(RecordError::Shape("track_metadata: missing or not an object".into())),
    };
    with_raw(meta, listened_at, |raw| Ok(Listen::parse(raw, now)?))
}

/// `additional_info` keys that become fields of the listen itself.
const MODELLED_INFO_KEYS: &[&str] =
    &["artist_mbids", "artist_names", "recording_mbid", "release_mbid", "duration_ms", "duration", "submission_client"];

/// The rest of a listen's `additional_info`, as compact JSON, to keep beside the log
/// (`Listen::info`); None when nothing is left.
pub fn extra_info(listen: &Value) -> Result<Option<String>, RecordError> {
    let Some(Value::Object(info)) = listen.get("track_metadata").and_then(|m| m.get("additional_info")) else {
        return Ok(None);
    };
    let rest: Map<String, Value> = info
        .iter()
        .filter(|(k, v)| !MODELLED_INFO_KEYS.contains(&k.as_str()) && !v.is_null())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if rest.is_empty() {
        return Ok(None);
    }
    let text = Value::Object(rest).to_string();
    if text.len() > crate::log::listen::MAX_INFO_BYTES {
        return Err(RecordError::Shape(format!(
            "additional_info: longer than {} bytes",
            crate::log::listen::MAX_INFO_BYTES
        )));
    }
    Ok(Some(text))
}

/// Validates a `track_metadata` object alone (a "playing now" has no time).
pub fn parse_track(meta: &serde_json::Map<String, Value>) -> Result<(TrackRef, Option<u32>), RecordError> {
    with_raw(meta, 0, |raw| {
        let track = TrackRef::parse(raw)?;
        let duration = raw.duration_ms.and_then(|ms| u32::try_from(ms).ok());
        Ok((track, duration))
    })
}

/// Builds the raw listen a `track_metadata` object describes and hands it to `f`.
fn with_raw<T>(
    meta: &serde_json::Map<String, Value>,
    listened_at: i64,
    f: impl FnOnce(&RawListen<'_>) -> Result<T, RecordError>,
) -> Result<T, RecordError> {
    let empty = serde_json::Map::new();
    let info = match meta.get("additional_info") {
        Some(Value::Object(m)) => m,
        None | Some(Value::Null) => &empty,
        Some(_) => return Err(RecordError::Shape("additional_info: must be an object".into())),
    };
    let artist = str_field(meta, "artist_name")?.ok_or_else(|| RecordError::Shape("artist_name: missing".into()))?;
    let title = str_field(meta, "track_name")?.ok_or_else(|| RecordError::Shape("track_name: missing".into()))?;
    let duration_ms = match (int_field(info, "duration_ms")?, int_field(info, "duration")?) {
        (Some(_), Some(_)) => {
            return Err(RecordError::Shape("duration and duration_ms cannot both be given".into()));
        }
        (Some(ms), None) => Some(ms),
        (None, Some(secs)) => Some(secs.saturating_mul(1000)),
        (None, None) => None,
    };
    let duration_ms = match duration_ms {
        Some(ms) if ms <= 0 => {
            return Err(RecordError::Shape("duration: must be positive".into()));
        }
        other => other.map(|ms| ms as u64),
    };
    let raw = RawListen {
        artist: artist.as_bytes(),
        artist_names: str_list(info, "artist_names")?.into_iter().map(str::as_bytes).collect(),
        artist_mbids: str_list(info, "artist_mbids")?.into_iter().map(str::as_bytes).collect(),
        title: title.as_bytes(),
        album: str_field(meta, "release_name")?.map(str::as_bytes),
        recording_mbid: non_empty(str_field(info, "recording_mbid")?).map(str::as_bytes),
        release_mbid: non_empty(str_field(info, "release_mbid")?).map(str::as_bytes),
        listened_at,
        duration_ms,
        client: non_empty(str_field(info, "submission_client")?.or(str_field(info, "media_player")?))
            .map(str::as_bytes),
    };
    f(&raw)
}

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
            (first.track.album.as_deref(), first.duration_ms, first.track.artist_mbids.len()),
            (None, Some(1000), 1)
        );
        assert!(matches!(out[1].1, Err(RecordError::Json(_))));
        assert_eq!(out[2].1.as_ref().expect("line 4").duration_ms, Some(200_000));
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
