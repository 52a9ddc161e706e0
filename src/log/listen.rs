//! `Listen` and `TrackRef`: the validated domain values of a play.
//!
//! `Listen::parse` is the only way to make a `Listen`: every API, importer and test goes
//! through it, so the rest of the node can rely on the invariants written on each field.
//! This module does no I/O and reads no clock: `now` is passed in.

use serde::{Deserialize, Serialize};

/// The earliest accepted `listened_at`: 2002-10-01T00:00:00Z, the date Last.fm's
/// predecessor started recording plays (ListenBrainz uses the same floor).
pub const MIN_LISTENED_AT: i64 = 1_033_430_400;
/// How far into the future a `listened_at` may be (client clocks drift).
pub const MAX_FUTURE_SKEW_SECS: i64 = 3600;
/// Longest accepted name field (artist, title, album), in bytes of UTF-8.
pub const MAX_NAME_BYTES: usize = 1024;
/// Longest accepted client name, in bytes of UTF-8.
pub const MAX_CLIENT_BYTES: usize = 128;
/// Most artists in one credit list or MBID list.
pub const MAX_ARTISTS: usize = 32;
/// Longest accepted duration: 24 days, ListenBrainz's limit.
pub const MAX_DURATION_MS: u32 = 24 * 24 * 3600 * 1000;

/// A MusicBrainz identifier (a UUID), kept as its 16 bytes.
pub type Mbid = [u8; 16];

/// What was played, as submitted. Names are kept exactly as submitted (after trimming
/// surrounding white space); identity comparisons normalise them elsewhere (`dedupe`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TrackRef {
    /// The artist credit as one string, e.g. `"Daft Punk feat. Pharrell Williams"`.
    pub artist: String,
    /// The individual artists when the submission listed them (may be empty).
    pub artist_names: Vec<String>,
    /// MusicBrainz artist ids when submitted (may be empty).
    pub artist_mbids: Vec<Mbid>,
    pub title: String,
    pub album: Option<String>,
    pub recording_mbid: Option<Mbid>,
    pub release_mbid: Option<Mbid>,
}

/// One validated play. The fields are private: `Listen::parse` (input from outside)
/// and `Listen::from_parts` (a listen read back from a log) are its only constructors,
/// and both validate, so every `Listen` holds the invariants written on its fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Listen {
    track: TrackRef,
    /// UTC unix seconds when playback started, in `[MIN_LISTENED_AT, now + 1h]` for the
    /// `now` at which it was accepted.
    listened_at: i64,
    /// Track length in milliseconds, when known; in `1..=MAX_DURATION_MS`.
    duration_ms: Option<u32>,
    /// The submitting client (e.g. `"Navidrome"`), when known.
    client: Option<String>,
    /// Extra client metadata (ListenBrainz's `additional_info` beyond the fields above),
    /// as compact JSON of at most `MAX_INFO_BYTES`. Kept beside the signed log, not in
    /// it: the entry's canonical bytes do not include it (see `docs/protocol.md`).
    info: Option<String>,
}

/// Largest `Listen::info`, in bytes.
pub const MAX_INFO_BYTES: usize = 10_240;

/// The unvalidated parts of a listen, as bytes straight from a parser.
#[derive(Clone, Debug, Default)]
pub struct RawListen<'a> {
    pub artist: &'a [u8],
    pub artist_names: Vec<&'a [u8]>,
    pub artist_mbids: Vec<&'a [u8]>,
    pub title: &'a [u8],
    pub album: Option<&'a [u8]>,
    pub recording_mbid: Option<&'a [u8]>,
    pub release_mbid: Option<&'a [u8]>,
    pub listened_at: i64,
    pub duration_ms: Option<u64>,
    pub client: Option<&'a [u8]>,
}

/// Why a listen was refused; `field` names the offending field as the APIs call it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ListenError {
    #[error("{field}: must not be empty")]
    Empty { field: &'static str },
    #[error("{field}: longer than {max} bytes")]
    TooLong { field: &'static str, max: usize },
    #[error("{field}: not valid UTF-8")]
    InvalidUtf8 { field: &'static str },
    #[error("{field}: contains a control character (U+{code:04X})")]
    ControlChar { field: &'static str, code: u32 },
    #[error("{field}: {value} is before 2002-10-01")]
    TooEarly { field: &'static str, value: i64 },
    #[error("{field}: {value} is more than an hour in the future")]
    InFuture { field: &'static str, value: i64 },
    #[error("{field}: not a MusicBrainz id (UUID)")]
    BadMbid { field: &'static str },
    #[error("{field}: must be between 1 and {max}")]
    OutOfRange { field: &'static str, max: u64 },
    #[error("{field}: more than {max} entries")]
    TooMany { field: &'static str, max: usize },
    #[error("{field}: white space around the text")]
    Untrimmed { field: &'static str },
}

/// Validates one text field: UTF-8, no control characters (NUL included), trimmed,
/// non-empty, at most `max` bytes.
pub fn parse_text(field: &'static str, raw: &[u8], max: usize) -> Result<String, ListenError> {
    let text = std::str::from_utf8(raw).map_err(|_| ListenError::InvalidUtf8 { field })?;
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return Err(ListenError::ControlChar { field, code: c as u32 });
    }
    let text = text.trim();
    if text.is_empty() {
        return Err(ListenError::Empty { field });
    }
    if text.len() > max {
        return Err(ListenError::TooLong { field, max });
    }
    Ok(text.to_owned())
}

/// Parses a MusicBrainz id in its usual hyphenated (or simple) UUID form.
pub fn parse_mbid(field: &'static str, raw: &[u8]) -> Result<Mbid, ListenError> {
    let text = std::str::from_utf8(raw).map_err(|_| ListenError::InvalidUtf8 { field })?;
    uuid::Uuid::try_parse(text.trim()).map(|u| *u.as_bytes()).map_err(|_| ListenError::BadMbid { field })
}

/// Formats an MBID in the hyphenated lower-case form MusicBrainz uses.
pub fn format_mbid(mbid: &Mbid) -> String {
    uuid::Uuid::from_bytes(*mbid).hyphenated().to_string()
}

fn optional_text(field: &'static str, raw: Option<&[u8]>, max: usize) -> Result<Option<String>, ListenError> {
    match raw {
        None => Ok(None),
        // An empty optional field is treated as absent, as ListenBrainz does for release_name.
        Some(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(None),
        Some(bytes) => parse_text(field, bytes, max).map(Some),
    }
}

/// Validates a listened_at against the accepted window for a given `now`.
pub fn check_listened_at(listened_at: i64, now: i64) -> Result<i64, ListenError> {
    let field = "listened_at";
    if listened_at < MIN_LISTENED_AT {
        return Err(ListenError::TooEarly { field, value: listened_at });
    }
    if listened_at > now.saturating_add(MAX_FUTURE_SKEW_SECS) {
        return Err(ListenError::InFuture { field, value: listened_at });
    }
    Ok(listened_at)
}

impl TrackRef {
    /// Validates the track part of a raw listen.
    pub fn parse(raw: &RawListen<'_>) -> Result<TrackRef, ListenError> {
        let artist = parse_text("artist_name", raw.artist, MAX_NAME_BYTES)?;
        let title = parse_text("track_name", raw.title, MAX_NAME_BYTES)?;
        let album = optional_text("release_name", raw.album, MAX_NAME_BYTES)?;
        if raw.artist_names.len() > MAX_ARTISTS {
            return Err(ListenError::TooMany { field: "artist_names", max: MAX_ARTISTS });
        }
        if raw.artist_mbids.len() > MAX_ARTISTS {
            return Err(ListenError::TooMany { field: "artist_mbids", max: MAX_ARTISTS });
        }
        let artist_names = raw
            .artist_names
            .iter()
            .map(|name| parse_text("artist_names", name, MAX_NAME_BYTES))
            .collect::<Result<Vec<_>, _>>()?;
        let artist_mbids =
            raw.artist_mbids.iter().map(|m| parse_mbid("artist_mbids", m)).collect::<Result<Vec<_>, _>>()?;
        let recording_mbid = raw.recording_mbid.map(|m| parse_mbid("recording_mbid", m)).transpose()?;
        let release_mbid = raw.release_mbid.map(|m| parse_mbid("release_mbid", m)).transpose()?;
        Ok(TrackRef { artist, artist_names, artist_mbids, title, album, recording_mbid, release_mbid })
    }

    /// Checks a track already in hand (read back from a log or a dictionary) as
    /// `parse` checks raw input.
    pub fn check(&self) -> Result<(), ListenError> {
        check_text("artist_name", &self.artist, MAX_NAME_BYTES)?;
        check_text("track_name", &self.title, MAX_NAME_BYTES)?;
        if let Some(album) = &self.album {
            check_text("release_name", album, MAX_NAME_BYTES)?;
        }
        if self.artist_names.len() > MAX_ARTISTS {
            return Err(ListenError::TooMany { field: "artist_names", max: MAX_ARTISTS });
        }
        if self.artist_mbids.len() > MAX_ARTISTS {
            return Err(ListenError::TooMany { field: "artist_mbids", max: MAX_ARTISTS });
        }
        for name in &self.artist_names {
            check_text("artist_names", name, MAX_NAME_BYTES)?;
        }
        Ok(())
    }
}

impl Listen {
    /// The one validating constructor of a `Listen`. `now` is the current UTC unix time.
    pub fn parse(raw: &RawListen<'_>, now: i64) -> Result<Listen, ListenError> {
        let track = TrackRef::parse(raw)?;
        let listened_at = check_listened_at(raw.listened_at, now)?;
        let duration_ms = match raw.duration_ms {
            None => None,
            Some(ms) if ms == 0 || ms > u64::from(MAX_DURATION_MS) => {
                return Err(ListenError::OutOfRange { field: "duration_ms", max: u64::from(MAX_DURATION_MS) });
            }
            Some(ms) => u32::try_from(ms).ok(),
        };
        let client = optional_text("submission_client", raw.client, MAX_CLIENT_BYTES)?;
        Ok(Listen { track, listened_at, duration_ms, client, info: None })
    }

    /// A listen from parts already held in a log (read back from the store or from an
    /// account bundle): every field is checked as `parse` checks it, except that the
    /// time is only required to be after `MIN_LISTENED_AT` (it was accepted at some
    /// earlier `now`; a signed log proves when).
    pub fn from_parts(
        track: TrackRef,
        listened_at: i64,
        duration_ms: Option<u32>,
        client: Option<String>,
    ) -> Result<Listen, ListenError> {
        Listen::check_parts(&track, listened_at, duration_ms, client.as_deref())?;
        Ok(Listen { track, listened_at, duration_ms, client, info: None })
    }

    /// What `from_parts` checks, without building the listen.
    pub fn check_parts(
        track: &TrackRef,
        listened_at: i64,
        duration_ms: Option<u32>,
        client: Option<&str>,
    ) -> Result<(), ListenError> {
        track.check()?;
        check_listened_at(listened_at, i64::MAX - MAX_FUTURE_SKEW_SECS)?;
        if duration_ms.is_some_and(|ms| ms == 0 || ms > MAX_DURATION_MS) {
            return Err(ListenError::OutOfRange { field: "duration_ms", max: u64::from(MAX_DURATION_MS) });
        }
        if let Some(c) = client {
            check_text("submission_client", c, MAX_CLIENT_BYTES)?;
        }
        Ok(())
    }

    /// The same listen from another client (`None`: unknown), checked as `parse` checks
    /// a submitted client name.
    pub fn with_client(mut self, client: Option<String>) -> Result<Listen, ListenError> {
        if let Some(c) = &client {
            check_text("submission_client", c, MAX_CLIENT_BYTES)?;
        }
        self.client = client;
        Ok(self)
    }

    /// The same listen carrying client metadata (compact JSON of at most
    /// `MAX_INFO_BYTES`; `None` removes it).
    pub fn with_info(mut self, info: Option<String>) -> Result<Listen, ListenError> {
        if info.as_ref().is_some_and(|i| i.len() > MAX_INFO_BYTES) {
            return Err(ListenError::TooLong { field: "additional_info", max: MAX_INFO_BYTES });
        }
        self.info = info;
        Ok(self)
    }

    pub fn track(&self) -> &TrackRef {
        &self.track
    }

    pub fn listened_at(&self) -> i64 {
        self.listened_at
    }

    pub fn duration_ms(&self) -> Option<u32> {
        self.duration_ms
    }

    pub fn client(&self) -> Option<&str> {
        self.client.as_deref()
    }

    pub fn info(&self) -> Option<&str> {
        self.info.as_deref()
    }

    /// The track, taking the listen apart.
    pub fn into_track(self) -> TrackRef {
        self.track
    }
}

/// Checks a text already in hand as `parse_text` checks raw bytes: no control
/// character, no surrounding white space, non-empty, at most `max` bytes.
fn check_text(field: &'static str, text: &str, max: usize) -> Result<(), ListenError> {
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return Err(ListenError::ControlChar { field, code: c as u32 });
    }
    if text.trim().is_empty() {
        return Err(ListenError::Empty { field });
    }
    if text.trim().len() != text.len() {
        return Err(ListenError::Untrimmed { field });
    }
    if text.len() > max {
        return Err(ListenError::TooLong { field, max });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_760_000_000;

    fn raw<'a>(artist: &'a [u8], title: &'a [u8]) -> RawListen<'a> {
        RawListen { artist, title, listened_at: NOW - 10, ..RawListen::default() }
    }

    #[test]
    fn accepts_and_trims() {
        let l = Listen::parse(&raw(b"  Bj\xc3\xb6rk ", b"Joga"), NOW).expect("valid");
        assert_eq!(l.track.artist, "Björk");
        assert_eq!(l.track.album, None);
    }

    #[test]
    fn names_the_bad_field() {
        let cases: Vec<(RawListen<'_>, ListenError)> = vec![
            (raw(b"", b"t"), ListenError::Empty { field: "artist_name" }),
            (raw(b"a", b"   "), ListenError::Empty { field: "track_name" }),
            (raw(b"a\0b", b"t"), ListenError::ControlChar { field: "artist_name", code: 0 }),
            (raw(b"a", b"t\x07"), ListenError::ControlChar { field: "track_name", code: 7 }),
            (raw(b"\xff", b"t"), ListenError::InvalidUtf8 { field: "artist_name" }),
            (
                raw(&[b'x'; MAX_NAME_BYTES + 1], b"t"),
                ListenError::TooLong { field: "artist_name", max: MAX_NAME_BYTES },
            ),
            (
                RawListen { listened_at: MIN_LISTENED_AT - 1, ..raw(b"a", b"t") },
                ListenError::TooEarly { field: "listened_at", value: MIN_LISTENED_AT - 1 },
            ),
            (
                RawListen { listened_at: NOW + 3601, ..raw(b"a", b"t") },
                ListenError::InFuture { field: "listened_at", value: NOW + 3601 },
            ),
            (
                RawListen { recording_mbid: Some(b"nope"), ..raw(b"a", b"t") },
                ListenError::BadMbid { field: "recording_mbid" },
            ),
            (
                RawListen { duration_ms: Some(0), ..raw(b"a", b"t") },
                ListenError::OutOfRange { field: "duration_ms", max: u64::from(MAX_DURATION_MS) },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(Listen::parse(&input, NOW), Err(want.clone()), "{want}");
        }
    }

    #[test]
    fn edges_of_the_time_window_are_inclusive() {
        assert!(Listen::parse(&RawListen { listened_at: MIN_LISTENED_AT, ..raw(b"a", b"t") }, NOW).is_ok());
        assert!(Listen::parse(&RawListen { listened_at: NOW + 3600, ..raw(b"a", b"t") }, NOW).is_ok());
    }

    #[test]
    fn parts_read_back_are_checked_as_input_is() {
        let good = Listen::parse(&raw(b"Band", b"Song"), NOW).expect("valid");
        let t = good.track().clone();
        assert_eq!(Listen::from_parts(t.clone(), good.listened_at(), None, None), Ok(good.clone()));
        // Long after it was accepted, a stored listen is still valid.
        assert!(Listen::from_parts(t.clone(), NOW + 10 * 365 * 86_400, None, None).is_ok());
        let bad_track = |f: fn(&mut TrackRef)| {
            let mut x = t.clone();
            f(&mut x);
            Listen::from_parts(x, NOW, None, None)
        };
        assert_eq!(bad_track(|x| x.artist = String::new()), Err(ListenError::Empty { field: "artist_name" }));
        assert_eq!(bad_track(|x| x.title = " padded".into()), Err(ListenError::Untrimmed { field: "track_name" }));
        assert_eq!(
            bad_track(|x| x.album = Some("a\u{7}b".into())),
            Err(ListenError::ControlChar { field: "release_name", code: 7 })
        );
        assert!(bad_track(|x| x.artist_names = vec!["n".into(); MAX_ARTISTS + 1]).is_err());
        assert!(bad_track(|x| x.artist = "x".repeat(MAX_NAME_BYTES + 1)).is_err());
        assert!(Listen::from_parts(t.clone(), MIN_LISTENED_AT - 1, None, None).is_err());
        assert!(Listen::from_parts(t.clone(), NOW, Some(0), None).is_err());
        assert!(Listen::from_parts(t.clone(), NOW, None, Some("c\n".into())).is_err());
        assert!(good.clone().with_info(Some("x".repeat(MAX_INFO_BYTES + 1))).is_err());
        assert!(good.with_client(Some(String::new())).is_err());
    }

    #[test]
    fn mbids_round_trip() {
        let text = "f27ec8db-af05-4f36-916e-3d57f91ecf5e";
        let m = parse_mbid("recording_mbid", text.as_bytes()).expect("uuid");
        assert_eq!(format_mbid(&m), text);
    }
}
