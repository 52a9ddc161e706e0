//! The scrobbler APIs players already speak. Only this module knows their wire
//! formats; every listen goes through `Listen::parse` and the store's ingest path.
//!
//! - `listenbrainz`: the ListenBrainz API under `/1/`;
//! - shared here: token extraction, per-address limits on failed log-ins, the
//!   in-memory "now playing" state, and the recording ids ("MSIDs") handed to clients.

pub mod audioscrobbler;
pub mod lastfm;
pub mod listenbrainz;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;

use crate::log::TrackRef;
use crate::store::UserId;

/// Failed authentications allowed per client address per minute before 429.
pub const MAX_FAILED_AUTH_PER_MINUTE: u32 = 30;
/// How long "now playing" lasts when the track's length is unknown (ListenBrainz: 10 min).
pub const NOW_PLAYING_DEFAULT: Duration = Duration::from_secs(600);

/// What a user is playing, kept in memory only and never written anywhere.
#[derive(Clone, Debug)]
pub struct NowPlaying {
    pub track: TrackRef,
    pub client: Option<String>,
    pub until: Instant,
}

/// State shared by the API handlers.
#[derive(Clone, Default)]
pub struct ApiState {
    /// Audioscrobbler 1.2 sessions.
    pub as_sessions: audioscrobbler::Sessions,
    /// Last.fm web/desktop authentication tokens awaiting approval.
    pub auth_tokens: lastfm::AuthTokens,
    now_playing: Arc<Mutex<HashMap<UserId, NowPlaying>>>,
    failures: Arc<Mutex<HashMap<IpAddr, (Instant, u32)>>>,
    /// Imports started from the web view (`web::upload`), in memory.
    pub uploads: crate::web::upload::Jobs,
}

impl ApiState {
    pub fn set_playing(&self, user: UserId, track: TrackRef, client: Option<String>, duration_ms: Option<u32>) {
        let length = duration_ms.map_or(NOW_PLAYING_DEFAULT, |ms| Duration::from_millis(u64::from(ms)));
        if let Ok(mut map) = self.now_playing.lock() {
            map.insert(user, NowPlaying { track, client, until: Instant::now() + length });
        }
    }

    pub fn playing(&self, user: UserId) -> Option<NowPlaying> {
        let mut map = self.now_playing.lock().ok()?;
        match map.get(&user) {
            Some(p) if p.until > Instant::now() => Some(p.clone()),
            Some(_) => {
                map.remove(&user);
                None
            }
            None => None,
        }
    }

    /// A new listen ends "now playing".
    pub fn clear_playing(&self, user: UserId) {
        if let Ok(mut map) = self.now_playing.lock() {
            map.remove(&user);
        }
    }

    /// True when `addr` has failed authentication too often in the last minute. The
    /// address is kept in memory for at most that minute and never written anywhere.
    pub fn is_limited(&self, addr: IpAddr) -> bool {
        let Ok(mut map) = self.failures.lock() else { return false };
        let now = Instant::now();
        map.retain(|_, (since, _)| now.duration_since(*since) < Duration::from_secs(60));
        map.get(&addr).is_some_and(|(_, n)| *n >= MAX_FAILED_AUTH_PER_MINUTE)
    }

    pub fn record_failure(&self, addr: IpAddr) {
        if let Ok(mut map) = self.failures.lock() {
            let entry = map.entry(addr).or_insert((Instant::now(), 0));
            entry.1 += 1;
        }
    }
}

/// The token of a request: `Authorization: Token <t>` (scheme case-insensitive; `Bearer`
/// accepted too), else the `token` query parameter.
pub fn token_of(headers: &HeaderMap, query_token: Option<&str>) -> Option<String> {
    let header = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if let Some((scheme, token)) = header.and_then(|h| h.trim().split_once(' ')) {
        if scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer") {
            let token = token.trim();
            if !token.is_empty() {
                return Some(token.to_owned());
            }
        }
    }
    query_token.filter(|t| !t.trim().is_empty()).map(|t| t.trim().to_owned())
}

/// The recording id ("MSID") a track is given in API responses: a UUID derived from
/// the track as submitted, so the same track always has the same id, on any node.
pub fn msid(track: &TrackRef) -> uuid::Uuid {
    let bytes = postcard::to_allocvec(track).unwrap_or_default();
    let digest = blake3::derive_key("hearsay 2026-11-23 recording msid v1", &bytes);
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(id).into_uuid()
}

/// Why a request body was not read.
#[derive(Debug)]
pub enum BodyError {
    /// Larger than the limit: known from `Content-Length` before anything was read, or
    /// found while reading (a chunked body), never after reading it all.
    TooLarge,
    Unreadable(String),
}

/// Reads a request body of at most `max` bytes, refusing an oversized one from its
/// announced length before reading any of it.
pub async fn read_body(
    headers: &HeaderMap,
    body: axum::body::Body,
    max: usize,
) -> Result<axum::body::Bytes, BodyError> {
    let announced = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge);
    }
    axum::body::to_bytes(body, max).await.map_err(|e| {
        let text = e.to_string();
        if text.contains("length limit") { BodyError::TooLarge } else { BodyError::Unreadable(text) }
    })
}
