//! The scrobbler APIs players already speak. Only this module knows their wire
//! formats; every listen goes through `Listen::parse` and the store's ingest path.
//!
//! - `listenbrainz`: the ListenBrainz API under `/1/`;
//! - shared here: token extraction, bounded body reading and the recording ids
//!   ("MSIDs") handed to clients. The in-memory state the APIs share with the web view
//!   (now playing, failed log-ins, sessions, pending tokens) is `crate::state::Live`.

pub mod audioscrobbler;
pub mod lastfm;
pub mod listenbrainz;

use axum::http::HeaderMap;

use crate::log::TrackRef;

/// The token of a request: `Authorization: Token <t>` (scheme case-insensitive; `Bearer`
/// accepted too), else the `token` query parameter.
pub fn token_of(headers: &HeaderMap, query_token: Option<&str>) -> Option<String> {
    let header = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if let Some((scheme, token)) = header.and_then(|h| h.trim().split_once(' '))
        && (scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer"))
    {
        let token = token.trim();
        if !token.is_empty() {
            return Some(token.to_owned());
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

/// A whole number as players send it: digits, or digits with a decimal part that is
/// dropped (`1796126630.3156145` → 1796126630, `34.000` → 34), as Last.fm and
/// Audioscrobbler accept them. Anything else (signs, exponents, spaces inside, overflow)
/// is not a number.
pub fn whole_number(text: &str) -> Option<u64> {
    let text = text.trim();
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    whole.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::whole_number;

    #[test]
    fn whole_numbers_accept_decimals_by_truncation_and_nothing_else() {
        assert_eq!(whole_number("1796126630.3156145"), Some(1_796_126_630));
        assert_eq!(whole_number(" 34.000 "), Some(34));
        assert_eq!(whole_number("34."), Some(34));
        assert_eq!(whole_number("0"), Some(0));
        for bad in ["", ".5", "-3", "+3", "1e9", "3 4", "1.2.3", "99999999999999999999", "abc", "4,5"] {
            assert_eq!(whole_number(bad), None, "{bad:?}");
        }
    }
}
