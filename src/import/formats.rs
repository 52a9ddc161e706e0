//! Every export format a user can bring, detected from the file name and its first
//! bytes (or named with `--format`), each read as a stream of records: a listen, a
//! record that is not a listen (dropped, with the reason), or a bad record (with the
//! reason). Readers never hold the whole file; device data (Spotify's IP address,
//! platform, country, user agent) is never read into a listen.
//! Format notes and timestamp traps: `../shared/reference/protocols-and-features.md` §3.

use std::io::BufRead;
use std::path::Path;

use serde_json::Value;

use super::json_stream::ArrayObjects;
use super::listenbrainz::{JsonlReader, parse_listen};
use crate::log::{Listen, RawListen};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// ListenBrainz export, one listen per line (`listens.jsonl`).
    ListenBrainzJsonl,
    /// The older ListenBrainz export: one JSON array.
    ListenBrainzJson,
    /// Last.fm CSV as lastfm-to-csv writes it (`artist,album,track,date`, date in UTC)
    /// or with a header naming `uts`/`artist`/`album`/`track` columns.
    LastfmCsv,
    /// Spotify extended streaming history (`Streaming_History_Audio_*.json`).
    SpotifyExtended,
    /// Spotify account-data streaming history (`StreamingHistory*.json`).
    SpotifyAccount,
    /// Maloja's export (`maloja_export_*.json`).
    Maloja,
    /// Rockbox / portable player `.scrobbler.log`.
    Rockbox,
}

impl Format {
    pub const ALL: [Format; 7] = [
        Format::ListenBrainzJsonl,
        Format::ListenBrainzJson,
        Format::LastfmCsv,
        Format::SpotifyExtended,
        Format::SpotifyAccount,
        Format::Maloja,
        Format::Rockbox,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Format::ListenBrainzJsonl => "listenbrainz-jsonl",
            Format::ListenBrainzJson => "listenbrainz-json",
            Format::LastfmCsv => "lastfm-csv",
            Format::SpotifyExtended => "spotify-extended",
            Format::SpotifyAccount => "spotify-account",
            Format::Maloja => "maloja",
            Format::Rockbox => "rockbox",
        }
    }

    pub fn parse(name: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Guesses the format from the file name and its first bytes.
    pub fn detect(path: &Path, head: &[u8]) -> Option<Format> {
        let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
        let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
        let text = String::from_utf8_lossy(&head[..head.len().min(4096)]).into_owned();
        let trimmed = text.trim_start();
        if text.starts_with("#AUDIOSCROBBLER") || name.ends_with(".scrobbler.log") {
            return Some(Format::Rockbox);
        }
        if name.ends_with(".jsonl") {
            return Some(Format::ListenBrainzJsonl);
        }
        if name.contains("streaming_history_audio") || name.starts_with("endsong") || text.contains("\"ms_played\"") {
            return Some(Format::SpotifyExtended);
        }
        if name.starts_with("streaminghistory") || text.contains("\"endTime\"") {
            return Some(Format::SpotifyAccount);
        }
        if name.starts_with("maloja_export") || (trimmed.starts_with('{') && text.contains("\"scrobbles\"")) {
            return Some(Format::Maloja);
        }
        if trimmed.starts_with('[') && text.contains("\"listened_at\"") {
            return Some(Format::ListenBrainzJson);
        }
        if trimmed.starts_with('{') && text.contains("\"listened_at\"") {
            return Some(Format::ListenBrainzJsonl);
        }
        if name.ends_with(".csv") {
            return Some(Format::LastfmCsv);
        }
        None
    }
}

/// What one record of a file is.
#[derive(Debug)]
pub enum Parsed {
    Listen(Listen),
    /// Not a listen, by design (a skip, a podcast, a private session…).
    Dropped(&'static str),
    Bad(String),
}

/// Options some formats need.
#[derive(Clone, Debug)]
pub struct Options {
    pub now: i64,
    /// For Rockbox logs marked `#TZ/UNKNOWN` (device-local time): the device's zone.
    pub timezone: jiff::tz::TimeZone,
}

/// Records with their position (line or element number, from 1).
pub type Records<'a> = Box<dyn Iterator<Item = std::io::Result<(u64, Parsed)>> + 'a>;

/// The records of `reader` in `format`.
pub fn records<'a>(format: Format, reader: Box<dyn BufRead + 'a>, options: &Options) -> Records<'a> {
    let now = options.now;
    match format {
        Format::ListenBrainzJsonl => Box::new(
            JsonlReader::new(reader, now)
                .map(|r| r.map(|(line, res)| (line, res.map_or_else(|e| Parsed::Bad(e.to_string()), Parsed::Listen)))),
        ),
        Format::ListenBrainzJson => {
            json_objects(ArrayObjects::top_level(reader), move |v| match parse_listen(v, now) {
                Ok(l) => Parsed::Listen(l),
                Err(e) => Parsed::Bad(e.to_string()),
            })
        }
        Format::SpotifyExtended => json_objects(ArrayObjects::top_level(reader), move |v| spotify_extended(v, now)),
        Format::SpotifyAccount => json_objects(ArrayObjects::top_level(reader), move |v| spotify_account(v, now)),
        Format::Maloja => json_objects(ArrayObjects::under_key(reader, "scrobbles"), move |v| maloja(v, now)),
        Format::LastfmCsv => {
            let mut csv = LastfmCsv { header: None, now };
            Box::new(TextRecords { lines: LineReader::new(reader), parse: move |t: &str| csv.parse_line(t) })
        }
        Format::Rockbox => {
            let mut log = Rockbox { local: false, tz: options.timezone.clone(), now };
            Box::new(TextRecords { lines: LineReader::new(reader), parse: move |t: &str| log.parse_line(t) })
        }
    }
}

fn json_objects<'a, R: BufRead + 'a>(objects: ArrayObjects<R>, parse: impl Fn(&Value) -> Parsed + 'a) -> Records<'a> {
    Box::new(objects.map(move |item| {
        item.map(|(i, bytes)| match bytes {
            Err(why) => (i, Parsed::Bad(why.to_owned())),
            Ok(b) => match serde_json::from_slice::<Value>(&b) {
                Ok(v) => (i, parse(&v)),
                Err(e) => (i, Parsed::Bad(format!("not JSON: {e}"))),
            },
        })
    }))
}

fn build(raw: &RawListen<'_>, now: i64) -> Parsed {
    match Listen::parse(raw, now) {
        Ok(l) => Parsed::Listen(l),
        Err(e) => Parsed::Bad(e.to_string()),
    }
}

fn s<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(Value::as_str).map(str::trim).filter(|x| !x.is_empty())
}

/// Shortest play that counts as a listen (Spotify, as the scrobbling rule).
const MIN_PLAY_MS: i64 = 30_000;

fn spotify_extended(v: &Value, now: i64) -> Parsed {
    if v.get("incognito_mode").and_then(Value::as_bool) == Some(true) {
        return Parsed::Dropped("private session (incognito)");
    }
    let (Some(title), Some(artist)) = (s(v, "master_metadata_track_name"), s(v, "master_metadata_album_artist_name"))
    else {
        if s(v, "episode_name").is_some() || s(v, "audiobook_title").is_some() || s(v, "spotify_episode_uri").is_some()
        {
            return Parsed::Dropped("podcast or audiobook");
        }
        return Parsed::Bad("no track name or artist".into());
    };
    let Some(played) = v.get("ms_played").and_then(Value::as_i64) else {
        return Parsed::Bad("ms_played: missing".into());
    };
    if played < MIN_PLAY_MS {
        return Parsed::Dropped("played under 30 s");
    }
    let Some(end) = s(v, "ts").and_then(|t| t.parse::<jiff::Timestamp>().ok()) else {
        return Parsed::Bad("ts: not a time like 2024-01-31T12:00:00Z".into());
    };
    // `ts` is when playback ended.
    let start = end.as_second() - played / 1000;
    let raw = RawListen {
        artist: artist.as_bytes(),
        artist_names: Vec::new(),
        artist_mbids: Vec::new(),
        title: title.as_bytes(),
        album: s(v, "master_metadata_album_album_name").map(str::as_bytes),
        recording_mbid: None,
        release_mbid: None,
        listened_at: start,
        duration_ms: None,
        client: None,
    };
    build(&raw, now)
}

fn spotify_account(v: &Value, now: i64) -> Parsed {
    let (Some(title), Some(artist)) = (s(v, "trackName"), s(v, "artistName")) else {
        return Parsed::Bad("trackName and artistName are required".into());
    };
    let played = v.get("msPlayed").and_then(Value::as_i64).unwrap_or(0);
    if played < MIN_PLAY_MS {
        return Parsed::Dropped("played under 30 s");
    }
    let end = s(v, "endTime").and_then(|t| jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M", t).ok());
    let Some(end) = end.and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok()) else {
        return Parsed::Bad("endTime: not a time like 2024-01-31 12:00".into());
    };
    let raw = RawListen {
        artist: artist.as_bytes(),
        artist_names: Vec::new(),
        artist_mbids: Vec::new(),
        title: title.as_bytes(),
        album: None,
        recording_mbid: None,
        release_mbid: None,
        listened_at: end.timestamp().as_second() - played / 1000,
        duration_ms: None,
        client: None,
    };
    build(&raw, now)
}

fn maloja(v: &Value, now: i64) -> Parsed {
    let Some(time) = v.get("time").and_then(Value::as_i64) else {
        return Parsed::Bad("time: missing".into());
    };
    let track = v.get("track").unwrap_or(&Value::Null);
    let artists: Vec<&str> =
        track.get("artists").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    let Some(title) = s(track, "title") else {
        return Parsed::Bad("track.title: missing".into());
    };
    if artists.is_empty() {
        return Parsed::Bad("track.artists: missing".into());
    }
    let joined = artists.join(", ");
    let album = track.get("album").and_then(|a| s(a, "albumtitle"));
    let raw = RawListen {
        artist: joined.as_bytes(),
        artist_names: artists.iter().map(|a| a.as_bytes()).collect(),
        artist_mbids: Vec::new(),
        title: title.as_bytes(),
        album: album.map(str::as_bytes),
        recording_mbid: None,
        release_mbid: None,
        listened_at: time,
        duration_ms: track.get("length").and_then(Value::as_u64).filter(|l| *l > 0).and_then(|l| l.checked_mul(1000)),
        client: None,
    };
    build(&raw, now)
}

/// Lines of a text file, at most `MAX_LINE` bytes each; a BOM and CRLF are accepted,
/// invalid UTF-8 is reported per line.
struct LineReader<R> {
    reader: R,
    line: u64,
    buf: Vec<u8>,
}

const MAX_LINE: usize = 64 * 1024;

impl<R: BufRead> LineReader<R> {
    fn new(reader: R) -> LineReader<R> {
        LineReader { reader, line: 0, buf: Vec::new() }
    }

    /// The next line: (number, text or why it is unreadable).
    fn next_line(&mut self) -> Option<std::io::Result<(u64, Result<String, String>)>> {
        self.buf.clear();
        let n = match std::io::Read::take(&mut self.reader, MAX_LINE as u64 + 1).read_until(b'\n', &mut self.buf) {
            Ok(0) => return None,
            Ok(n) => n,
            Err(e) => return Some(Err(e)),
        };
        self.line += 1;
        if n > MAX_LINE && !self.buf.ends_with(b"\n") {
            // Skip the rest of an overlong line without holding it.
            if let Err(e) = skip_line(&mut self.reader) {
                return Some(Err(e));
            }
            return Some(Ok((self.line, Err(format!("line longer than {MAX_LINE} bytes")))));
        }
        let mut bytes = self.buf.as_slice();
        if self.line == 1 {
            bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        }
        let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        Some(Ok((self.line, String::from_utf8(bytes.to_vec()).map_err(|_| "invalid UTF-8".to_owned()))))
    }
}

/// Consumes the reader up to and including the next newline, holding nothing.
fn skip_line(reader: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    }
}

/// Records of a line-based file: `parse` turns each readable line into a record, or
/// `None` for lines that are not records (headers, comments, blanks); unreadable lines
/// are bad records.
struct TextRecords<R, P> {
    lines: LineReader<R>,
    parse: P,
}

impl<R: BufRead, P: FnMut(&str) -> Option<Parsed>> Iterator for TextRecords<R, P> {
    type Item = std::io::Result<(u64, Parsed)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (line, text) = match self.lines.next_line()? {
                Ok(x) => x,
                Err(e) => return Some(Err(e)),
            };
            match text {
                Err(why) => return Some(Ok((line, Parsed::Bad(why)))),
                Ok(text) => {
                    if let Some(parsed) = (self.parse)(&text) {
                        return Some(Ok((line, parsed)));
                    }
                }
            }
        }
    }
}

/// Splits one CSV line (RFC 4180 quoting, no embedded newlines).
fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (false, '"') if at_start => {
                quoted = true;
                at_start = false;
            }
            (true, '"') => {
                if chars.peek() == Some(&'"') {
                    cur.push('"');
                    chars.next();
                } else {
                    quoted = false;
                }
            }
            (false, ',') => {
                out.push(std::mem::take(&mut cur));
                at_start = true;
            }
            (_, c) => {
                cur.push(c);
                at_start = false;
            }
        }
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    out.push(cur);
    Ok(out)
}

struct LastfmCsv {
    /// Column positions of (time, artist, album, track) when the file has a header.
    header: Option<Option<[Option<usize>; 4]>>,
    now: i64,
}

/// `31 May 2016 20:46` (lastfm-to-csv) or `31 May 2016, 20:46`, in UTC.
fn lastfm_date(text: &str) -> Option<i64> {
    let t = text.replace(',', "");
    let d = jiff::civil::DateTime::strptime("%d %b %Y %H:%M", t.trim()).ok()?;
    Some(d.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp().as_second())
}

impl LastfmCsv {
    /// One line of the file: a record, or `None` for a header or a blank line.
    fn parse_line(&mut self, text: &str) -> Option<Parsed> {
        if text.trim().is_empty() {
            return None;
        }
        let fields = match csv_fields(text) {
            Ok(f) => f,
            Err(why) => return Some(Parsed::Bad(why)),
        };
        if self.header.is_none() {
            let lower: Vec<String> = fields.iter().map(|f| f.trim().to_lowercase()).collect();
            let pos = |names: &[&str]| lower.iter().position(|f| names.contains(&f.as_str()));
            let is_header = pos(&["artist"]).is_some() && pos(&["track", "name", "title"]).is_some();
            if is_header {
                self.header = Some(Some([
                    pos(&["uts", "date", "time", "timestamp"]),
                    pos(&["artist"]),
                    pos(&["album"]),
                    pos(&["track", "name", "title"]),
                ]));
                return None;
            }
            self.header = Some(None);
        }
        let plain = self.header.flatten().is_none();
        if plain && fields.len() < 4 {
            let got = fields.len();
            return Some(Parsed::Bad(format!("expected 4 columns (artist, album, track, date), got {got}")));
        }
        let cols = self.header.flatten().unwrap_or([Some(3), Some(0), Some(1), Some(2)]);
        let get = |i: Option<usize>| i.and_then(|i| fields.get(i)).map(|f| f.trim()).filter(|f| !f.is_empty());
        let (Some(artist), Some(title)) = (get(cols[1]), get(cols[3])) else {
            return Some(Parsed::Bad(format!("expected artist, album, track, date; got {} columns", fields.len())));
        };
        let Some(when) = get(cols[0]) else {
            return Some(Parsed::Dropped("no date (a now-playing row)"));
        };
        let Some(at) = when.parse::<i64>().ok().or_else(|| lastfm_date(when)) else {
            return Some(Parsed::Bad(format!("date {when:?} is neither Unix time nor like 31 May 2016 20:46")));
        };
        let raw = RawListen {
            artist: artist.as_bytes(),
            artist_names: Vec::new(),
            artist_mbids: Vec::new(),
            title: title.as_bytes(),
            album: get(cols[2]).map(str::as_bytes),
            recording_mbid: None,
            release_mbid: None,
            listened_at: at,
            duration_ms: None,
            client: None,
        };
        Some(build(&raw, self.now))
    }
}

struct Rockbox {
    /// `#TZ/UNKNOWN`: timestamps are device-local time written as if UTC.
    local: bool,
    tz: jiff::tz::TimeZone,
    now: i64,
}

impl Rockbox {
    /// One line of the log: a record, or `None` for a header, comment or blank line.
    fn parse_line(&mut self, text: &str) -> Option<Parsed> {
        if let Some(tz) = text.strip_prefix("#TZ/") {
            self.local = tz.trim() != "UTC";
            return None;
        }
        if text.starts_with('#') || text.trim().is_empty() {
            return None;
        }
        let f: Vec<&str> = text.split('\t').collect();
        if f.len() < 7 {
            return Some(Parsed::Bad(format!("expected 7 or 8 tab-separated fields, got {}", f.len())));
        }
        match f[5] {
            "L" => {}
            "S" => return Some(Parsed::Dropped("skipped on the device")),
            other => return Some(Parsed::Bad(format!("rating {other:?} is neither L nor S"))),
        }
        if f[0] == "<UNTAGGED>" {
            return Some(Parsed::Dropped("untagged file"));
        }
        let Ok(mut at) = f[6].trim().parse::<i64>() else {
            return Some(Parsed::Bad(format!("timestamp {:?} is not a number", f[6])));
        };
        if at == 0 {
            return Some(Parsed::Dropped("no clock on the device (timestamp 0)"));
        }
        if self.local {
            // The number is the local wall-clock time read as UTC.
            let civil = jiff::Timestamp::from_second(at).map(|t| t.to_zoned(jiff::tz::TimeZone::UTC).datetime());
            match civil.ok().and_then(|c| c.to_zoned(self.tz.clone()).ok()) {
                Some(z) => at = z.timestamp().as_second(),
                None => return Some(Parsed::Bad("timestamp out of range".into())),
            }
        }
        let mbid = f.get(7).map(|m| m.trim()).filter(|m| !m.is_empty());
        let raw = RawListen {
            artist: f[0].as_bytes(),
            artist_names: Vec::new(),
            artist_mbids: Vec::new(),
            title: f[2].as_bytes(),
            album: Some(f[1]).filter(|a| !a.trim().is_empty()).map(str::as_bytes),
            recording_mbid: mbid.map(str::as_bytes),
            release_mbid: None,
            listened_at: at,
            duration_ms: f[4].trim().parse::<u64>().ok().filter(|d| *d > 0).and_then(|d| d.checked_mul(1000)),
            client: None,
        };
        Some(build(&raw, self.now))
    }
}
