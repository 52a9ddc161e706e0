//! The JSON shape of one ListenBrainz listen (`{"listened_at", "track_metadata":
//! {"artist_name", "track_name", "release_name", "additional_info"}}`), which is both
//! what the ListenBrainz API receives (`api::listenbrainz`) and what its exports hold
//! (`import`): validation into a `Listen` through `Listen::parse`, with errors that
//! name the field.

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
