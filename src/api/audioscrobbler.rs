//! Audioscrobbler 1.2 (mpdscribble and other old players): a handshake on `/?hs=true`,
//! then now-playing and submission URLs, answered with `OK`, `BADAUTH`, `BADTIME`,
//! `BADSESSION` or `FAILED <reason>` lines.
//!
//! The password of the protocol is an API token (`hearsay token new`): the handshake
//! proves it as `md5(md5(password) + timestamp)`, which needs the md5 the node keeps of
//! each token and never of account passwords. Sessions live in memory for 24 hours; a
//! client whose session is gone after a restart gets `BADSESSION` and hands shakes again,
//! as the protocol intends.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use crate::auth::{md5_hex, strings_equal};
use crate::log::{Listen, RawListen, TrackRef};
use crate::state::{AppState, ClientAddr};
use crate::store::{Action, UserId};

/// Largest clock difference accepted in a handshake (GNU FM's rule).
pub const MAX_SKEW_SECS: i64 = 300;
/// Most tracks in one submission.
pub const MAX_TRACKS: usize = 50;
/// Largest now-playing or submission form.
const MAX_FORM: usize = 256 * 1024;

pub fn router() -> Router<AppState> {
    Router::new().route("/as/1.2/np", post(now_playing)).route("/as/1.2/submit", post(submit))
}

fn lines(text: impl Into<String>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text.into()).into_response()
}

/// `/?hs=true`: the handshake (the web view's root handler hands these over).
pub async fn handshake(
    State(state): State<AppState>,
    addr: ClientAddr,
    peer: crate::state::PeerAddr,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if q.get("hs").map(String::as_str) != Some("true") {
        return lines("hearsay node: point Audioscrobbler 1.2 clients (mpdscribble) here; see docs/api-compat.md\n");
    }
    if addr.0.is_some_and(|a| state.live.is_limited(a)) {
        return lines("FAILED Too many failed handshakes; wait a minute\n");
    }
    let (Some(user), Some(t), Some(a)) = (q.get("u"), q.get("t"), q.get("a")) else {
        return lines("FAILED Missing u, t or a\n");
    };
    if !matches!(q.get("p").map(String::as_str), Some("1.2") | Some("1.2.1")) {
        return lines("FAILED Unsupported protocol version: use 1.2\n");
    }
    let Ok(ts) = t.parse::<i64>() else { return lines("FAILED t must be a unix time\n") };
    if ts.checked_sub(crate::now_unix()).is_none_or(|d| d.checked_abs().is_none_or(|d| d > MAX_SKEW_SECS)) {
        return lines("BADTIME\n");
    }
    let found = match state.store.user_by_name(user) {
        Ok(u) => u,
        Err(_) => return lines("FAILED The node could not check the credentials\n"),
    };
    let want = a.to_ascii_lowercase();
    let ok = found.as_ref().is_some_and(|u| {
        state
            .store
            .legacy_password_matches(u.id, |md5_token| {
                strings_equal(&md5_hex(format!("{md5_token}{t}").as_bytes()), &want)
            })
            .unwrap_or(false)
    });
    let (Some(user), true) = (found, ok) else {
        if let Some(a) = addr.0 {
            state.live.record_failure(a);
        }
        return lines("BADAUTH\n");
    };
    let client = client_name(q.get("c").map(String::as_str), q.get("v").map(String::as_str));
    let Some(session) = state.live.as_sessions.create(user.id, &client) else {
        return lines("FAILED Could not start a session\n");
    };
    // Behind a TLS front the player must be sent to the front's https address.
    let base = state.front.base_url(&headers, peer.0);
    lines(format!("OK\n{session}\n{base}/as/1.2/np\n{base}/as/1.2/submit\n"))
}

fn form(body: &[u8]) -> Option<HashMap<String, String>> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body).ok().map(|v| v.into_iter().collect())
}

fn session_user(state: &AppState, f: &HashMap<String, String>) -> Option<(UserId, std::sync::Arc<str>)> {
    f.get("s").and_then(|s| state.live.as_sessions.get(s))
}

/// The player's name from the handshake's client id `c` and version `v`, as the listen
/// records it: a known id by its name (`mdc` is mpdscribble), else the id itself; each
/// part at most 24 bytes (cut at a character boundary, without control characters or
/// outer spaces), so the whole stays within what a listen's client may be.
pub fn client_name(c: Option<&str>, v: Option<&str>) -> String {
    let clean = |s: &str| {
        let s: String = s.chars().filter(|c| !c.is_control()).collect();
        let mut end = s.len().min(24);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].trim().to_owned()
    };
    let c = c.map(clean).unwrap_or_default();
    let name = match c.as_str() {
        "mdc" => "mpdscribble".to_owned(),
        "tst" | "" => "Audioscrobbler 1.2 client".to_owned(),
        other => format!("Audioscrobbler 1.2 client {other}"),
    };
    match v.map(clean).filter(|v| !v.is_empty()) {
        Some(v) => format!("{name} {v}"),
        None => name,
    }
}

/// A track number (`n`) as the listen's extra metadata, ListenBrainz's `tracknumber`.
pub fn track_number_info(n: Option<&str>) -> Option<String> {
    let n = n.and_then(super::whole_number).filter(|n| (1..=9999).contains(n))?;
    Some(serde_json::json!({"tracknumber": n}).to_string())
}

async fn now_playing(State(state): State<AppState>, headers: HeaderMap, body: axum::body::Body) -> Response {
    let Some(f) = super::read_body(&headers, body, MAX_FORM).await.ok().and_then(|b| form(&b)) else {
        return lines("FAILED The body is not a form of at most 256 KiB\n");
    };
    let Some((user, client)) = session_user(&state, &f) else { return lines("BADSESSION\n") };
    let raw = RawListen {
        artist: f.get("a").map_or(&b""[..], |s| s.as_bytes()),
        title: f.get("t").map_or(&b""[..], |s| s.as_bytes()),
        album: f.get("b").map(|s| s.as_bytes()),
        recording_mbid: f.get("m").map(|s| s.as_bytes()).filter(|m| !m.is_empty()),
        ..RawListen::default()
    };
    match TrackRef::parse(&raw) {
        Ok(track) => {
            let length = f.get("l").and_then(|l| seconds_to_ms(l));
            state.live.set_playing(user, track, Some(client.to_string()), length);
            lines("OK\n")
        }
        Err(e) => lines(format!("FAILED {e}\n")),
    }
}

async fn submit(State(state): State<AppState>, headers: HeaderMap, body: axum::body::Body) -> Response {
    let Some(f) = super::read_body(&headers, body, MAX_FORM).await.ok().and_then(|b| form(&b)) else {
        return lines("FAILED The body is not a form of at most 256 KiB\n");
    };
    let Some((user, client)) = session_user(&state, &f) else { return lines("BADSESSION\n") };
    let now = crate::now_unix();
    let mut actions = Vec::new();
    for i in 0..MAX_TRACKS + 1 {
        let get = |k: &str| f.get(&format!("{k}[{i}]"));
        let Some(artist) = get("a") else { break };
        if i == MAX_TRACKS {
            return lines(format!("FAILED At most {MAX_TRACKS} tracks per submission\n"));
        }
        // A track the user skipped is not a listen.
        if get("r").is_some_and(|r| r == "S") {
            continue;
        }
        let Some(at) = get("i").and_then(|t| super::whole_number(t)).and_then(|t| i64::try_from(t).ok()) else {
            return lines(format!("FAILED i[{i}] must be a unix time\n"));
        };
        let raw = RawListen {
            artist: artist.as_bytes(),
            title: get("t").map_or(&b""[..], |s| s.as_bytes()),
            album: get("b").map(|s| s.as_bytes()).filter(|b| !b.is_empty()),
            recording_mbid: get("m").map(|s| s.as_bytes()).filter(|m| !m.is_empty()),
            listened_at: at,
            duration_ms: get("l").and_then(|l| seconds_to_ms(l)).map(u64::from),
            client: Some(client.as_bytes()),
            ..RawListen::default()
        };
        match Listen::parse(&raw, now).and_then(|l| l.with_info(track_number_info(get("n").map(String::as_str)))) {
            Ok(listen) => {
                let loved = get("r").is_some_and(|r| r == "L");
                let track = listen.track().clone();
                actions.push(Action::Listen(listen));
                if loved {
                    actions.push(Action::Love(track));
                }
            }
            // All or nothing: the client keeps its queue and can fix or drop the track.
            Err(e) => return lines(format!("FAILED Track {i}: {e}\n")),
        }
    }
    if !actions.is_empty() && !state.store.is_paused(user).unwrap_or(false) {
        let newest = actions.iter().filter_map(Action::listened_at).max();
        if let Err(e) = state.ingestor.ingest(user, actions).await {
            if e.class() == crate::store::Class::DiskFull {
                tracing::debug!(error = %e, "audioscrobbler: refused, disk full");
                return lines("FAILED The node's disk is full: nothing was stored; try again later\n");
            }
            tracing::error!(error = %e, "audioscrobbler: ingest failed");
            return lines("FAILED The node could not store the submission; try again\n");
        }
        state.live.listened(user, newest);
    }
    lines("OK\n")
}

/// A track length in seconds as these protocols send it, in milliseconds; `None` when
/// absent, zero, malformed or beyond `MAX_DURATION_MS` (a length the player got wrong
/// is dropped, the play is kept: the player cannot correct it and would lose it).
fn seconds_to_ms(text: &str) -> Option<u32> {
    let secs = super::whole_number(text).filter(|s| *s > 0)?;
    let ms = secs.checked_mul(1000)?;
    u32::try_from(ms).ok().filter(|ms| *ms <= crate::log::listen::MAX_DURATION_MS)
}

#[cfg(test)]
mod tests {
    use super::client_name;

    #[test]
    fn client_names_are_bounded_trimmed_and_always_a_valid_listen_client() {
        assert_eq!(client_name(Some("mdc"), Some("0.25")), "mpdscribble 0.25");
        assert_eq!(client_name(None, None), "Audioscrobbler 1.2 client");
        assert_eq!(client_name(Some("tst"), Some("\u{1}")), "Audioscrobbler 1.2 client");
        let long = client_name(Some(&"é".repeat(100)), Some("1.0 beta build 12345678 x"));
        assert!(long.len() <= 26 + 24 + 1 + 24, "{long}");
        for (c, v) in [
            (Some("ab\u{7}c"), Some(" 1.0 ")),
            (Some(" "), Some("v ")),
            (Some(&*"x".repeat(300)), Some(&*"y".repeat(300))),
        ] {
            let name = client_name(c, v);
            assert_eq!(name, name.trim(), "{name:?}");
            assert!(!name.chars().any(char::is_control) && name.len() <= 128, "{name:?}");
            let raw = crate::log::RawListen {
                artist: b"A",
                title: b"T",
                listened_at: 1_700_000_000,
                client: Some(name.as_bytes()),
                ..crate::log::RawListen::default()
            };
            assert!(crate::log::Listen::parse(&raw, 1_700_000_100).is_ok(), "{name:?}");
        }
    }
}
