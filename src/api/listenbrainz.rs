//! The ListenBrainz API under `/1/`, as ListenBrainz's own server answers it: the same
//! validation rules and limits, the same JSON shapes, `{"code", "error"}` errors with
//! its status codes. See `docs/api-compat.md` for what is and is not implemented.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{msid, token_of};
use crate::listenbrainz_json::{RecordError, extra_info, parse_listen, parse_track};
use crate::log::TrackRef;
use crate::log::listen::format_mbid;
use crate::policy::Purpose;
use crate::state::{AppState, ClientAddr};
use crate::stats::chart::Kind;
use crate::stats::period::Period;
use crate::store::Action;
use crate::store::logs::{Order, StoredListen};
use crate::store::users::User;

/// ListenBrainz's limits (listenbrainz/webserver/views/api_tools.py).
pub const MAX_LISTENS_PER_REQUEST: usize = 1000;
pub const MAX_LISTEN_SIZE: usize = 10_240;
pub const MAX_BODY: usize = MAX_LISTENS_PER_REQUEST * MAX_LISTEN_SIZE;
pub const MAX_TAGS: usize = 50;
pub const MAX_TAG_LEN: usize = 64;
pub const MAX_ITEMS_PER_GET: usize = 1000;
pub const DEFAULT_ITEMS_PER_GET: usize = 25;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/1/submit-listens", post(submit_listens).layer(axum::extract::DefaultBodyLimit::max(MAX_BODY)))
        .route("/1/validate-token", get(validate_token))
        .route("/1/user/{user}/listens", get(listens))
        .route("/1/user/{user}/listen-count", get(listen_count))
        .route("/1/user/{user}/playing-now", get(playing_now))
        .route("/1/delete-listen", post(delete_listen))
        .route("/1/feedback/recording-feedback", post(recording_feedback))
        .route("/1/stats/user/{user}/{entity}", get(user_stats))
        .route("/1/stats/sitewide/{entity}", get(sitewide_stats))
        .route("/1/feedback/user/{user}/get-feedback", get(get_feedback))
        .route("/1/user/{user}/similar-users", get(similar_users))
        .route("/1/latest-import", get(latest_import).post(set_latest_import))
}

/// An error in ListenBrainz's shape.
#[derive(Debug)]
pub struct LbError {
    status: StatusCode,
    message: String,
}

impl LbError {
    fn new(status: StatusCode, message: impl Into<String>) -> LbError {
        LbError { status, message: message.into() }
    }

    fn bad(message: impl Into<String>) -> LbError {
        LbError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for LbError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"code": self.status.as_u16(), "error": self.message}))).into_response()
    }
}

impl From<crate::store::Error> for LbError {
    fn from(e: crate::store::Error) -> LbError {
        use crate::store::Class;
        match (e.class(), e) {
            (_, crate::store::Error::Invalid(m)) => LbError::bad(m),
            (Class::DiskFull, e) => {
                tracing::debug!(error = %e, "listenbrainz api: refused, disk full");
                LbError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "The node's disk is full: nothing was stored. Try again later.",
                )
            }
            (Class::Unavailable, e) => {
                tracing::warn!(error = %e, "listenbrainz api: store unavailable");
                LbError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The node is recovering its store: nothing was stored. Try again in a moment.",
                )
            }
            (_, other) => {
                tracing::error!(error = %other, "listenbrainz api: store error");
                LbError::new(StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong on the node; please try again.")
            }
        }
    }
}

type LbResult = Result<Json<Value>, LbError>;

#[derive(Deserialize, Default)]
pub struct TokenQuery {
    token: Option<String>,
}

/// The user a request's token belongs to, or ListenBrainz's 401.
fn authenticate(
    state: &AppState,
    addr: &ClientAddr,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<User, LbError> {
    authenticate_token(state, addr, headers, query).map(|(user, _)| user)
}

/// As `authenticate`, with the name the user gave the token.
fn authenticate_token(
    state: &AppState,
    addr: &ClientAddr,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<(User, String), LbError> {
    if addr.0.is_some_and(|a| state.live.is_limited(a)) {
        return Err(LbError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed authentication attempts; wait a minute.",
        ));
    }
    let Some(token) = token_of(headers, query) else {
        return Err(LbError::new(StatusCode::UNAUTHORIZED, "You need to provide an Authorization header."));
    };
    match state.store.user_by_token(&token)? {
        Some((user, info)) => Ok((user, info.name)),
        None => {
            if let Some(a) = addr.0 {
                state.live.record_failure(a);
            }
            Err(LbError::new(StatusCode::UNAUTHORIZED, "Invalid authorization token."))
        }
    }
}

/// The user named in a read URL if `viewer` may see them; unknown and hidden users
/// get the same 404.
fn visible_user(state: &AppState, name: &str, viewer: Option<&User>, purpose: Purpose) -> Result<User, LbError> {
    let not_found = || LbError::new(StatusCode::NOT_FOUND, format!("Cannot find user: {name}"));
    let user = state.store.user_by_name(name)?.ok_or_else(not_found)?;
    let who = crate::policy::Viewer::api_caller(viewer.map(|v| v.id.0));
    if crate::policy::may(who, state.subject(&user), purpose).exact() { Ok(user) } else { Err(not_found()) }
}

/// The user a read request names, if its sender (by token, or anonymous) may see them.
fn readable_user(
    state: &AppState,
    name: &str,
    headers: &HeaderMap,
    query: Option<&str>,
    purpose: Purpose,
) -> Result<User, LbError> {
    let viewer = viewer(state, headers, query)?;
    visible_user(state, name, viewer.as_ref(), purpose)
}

/// The viewer of a read request: the token's user if a valid token was sent.
fn viewer(state: &AppState, headers: &HeaderMap, query: Option<&str>) -> Result<Option<User>, LbError> {
    match token_of(headers, query) {
        Some(t) => Ok(state.store.user_by_token(&t)?.map(|(u, _)| u)),
        None => Ok(None),
    }
}

fn contains_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(contains_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

fn record_error(index: usize, e: RecordError) -> LbError {
    LbError::bad(format!("listen {index}: {e}"))
}

/// Checks the parts of a listen ListenBrainz checks beyond the listen itself.
fn check_listen_shape(index: usize, listen: &Map<String, Value>, playing_now: bool) -> Result<(), LbError> {
    let allowed: &[&str] = if playing_now { &["track_metadata"] } else { &["listened_at", "track_metadata"] };
    if let Some(key) = listen.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(LbError::bad(if playing_now {
            format!("listen {index}: JSON document may only contain track_metadata as top level key (found {key})")
        } else {
            format!(
                "listen {index}: JSON document may only contain listened_at and track_metadata top level keys (found {key})"
            )
        }));
    }
    if serde_json::to_vec(listen).map_or(0, |b| b.len()) > MAX_LISTEN_SIZE {
        return Err(LbError::bad(format!(
            "listen {index}: JSON document is too large (more than {MAX_LISTEN_SIZE} bytes)"
        )));
    }
    let tags = listen.get("track_metadata").and_then(|m| m.get("additional_info")).and_then(|a| a.get("tags"));
    if let Some(tags) = tags {
        let list = tags.as_array().ok_or_else(|| LbError::bad(format!("listen {index}: tags must be a list")))?;
        if list.len() > MAX_TAGS || list.iter().any(|t| t.as_str().is_none_or(|s| s.chars().count() > MAX_TAG_LEN)) {
            return Err(LbError::bad(format!(
                "listen {index}: at most {MAX_TAGS} tags of at most {MAX_TAG_LEN} characters"
            )));
        }
    }
    Ok(())
}

async fn submit_listens(
    State(state): State<AppState>,
    addr: ClientAddr,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
    body: axum::body::Body,
) -> LbResult {
    let (user, token_name) = authenticate_token(&state, &addr, &headers, q.token.as_deref())?;
    let body = super::read_body(&headers, body, MAX_BODY).await.map_err(|e| match e {
        super::BodyError::TooLarge => {
            LbError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("Payload too large: at most {MAX_BODY} bytes."))
        }
        super::BodyError::Unreadable(m) => LbError::bad(format!("Cannot read the request body: {m}")),
    })?;
    // ListenBrainz reads the body as JSON whatever the content type says; refuse only
    // types that cannot be JSON, so every player that works with it works here.
    let content_type = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type.starts_with("multipart/") || content_type.starts_with("application/x-www-form-urlencoded") {
        return Err(LbError::bad("The body must be a JSON document (Content-Type: application/json)."));
    }
    let doc: Value = serde_json::from_slice(&body).map_err(|_| LbError::bad("Invalid JSON document submitted."))?;
    if contains_nul(&doc) {
        return Err(LbError::bad("\\u0000 is not allowed in a JSON document."));
    }
    let listen_type = doc
        .get("listen_type")
        .and_then(Value::as_str)
        .ok_or_else(|| LbError::bad("JSON document must contain listen_type."))?;
    let payload = doc
        .get("payload")
        .and_then(Value::as_array)
        .ok_or_else(|| LbError::bad("JSON document must contain a payload list."))?;
    if payload.is_empty() {
        return Err(LbError::bad("JSON document does not contain any listens."));
    }
    if payload.len() > MAX_LISTENS_PER_REQUEST {
        return Err(LbError::bad(format!("Too many listens: at most {MAX_LISTENS_PER_REQUEST} per request.")));
    }
    if body.len() > payload.len() * MAX_LISTEN_SIZE {
        return Err(LbError::bad("JSON document is too large: at most 10240 bytes per listen."));
    }
    let now = crate::now_unix();
    match listen_type {
        "playing_now" => {
            if payload.len() != 1 {
                return Err(LbError::bad("JSON document must contain exactly one listen for listen_type playing_now."));
            }
            let listen = payload[0].as_object().ok_or_else(|| LbError::bad("listen 0: must be an object"))?;
            check_listen_shape(0, listen, true)?;
            let meta = listen
                .get("track_metadata")
                .and_then(Value::as_object)
                .ok_or_else(|| LbError::bad("listen 0: track_metadata: missing or not an object"))?;
            let (track, duration) = parse_track(meta).map_err(|e| record_error(0, e))?;
            let client = meta
                .get("additional_info")
                .and_then(|a| a.get("submission_client").or_else(|| a.get("media_player")))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or(Some(token_name));
            state.live.set_playing(user.id, track, client, duration);
            Ok(Json(json!({"status": "ok"})))
        }
        "single" | "import" => {
            if listen_type == "single" && payload.len() != 1 {
                return Err(LbError::bad("JSON document must contain exactly one listen for listen_type single."));
            }
            let mut actions = Vec::with_capacity(payload.len());
            for (i, item) in payload.iter().enumerate() {
                let obj = item.as_object().ok_or_else(|| LbError::bad(format!("listen {i}: must be an object")))?;
                check_listen_shape(i, obj, false)?;
                // ListenBrainz keeps every additional_info key; so does the node.
                let info = extra_info(item).map_err(|e| record_error(i, e))?;
                let listen =
                    parse_listen(item, now).and_then(|l| Ok(l.with_info(info)?)).map_err(|e| record_error(i, e))?;
                // A player that does not name itself is recorded under the name its user
                // gave its token ("navidrome"), not as no one.
                // (A name a listen cannot carry, from a token made before names were
                // checked, leaves the listen unnamed rather than refused.)
                let listen = match listen.client() {
                    Some(_) => listen,
                    None => {
                        let fallback = listen.clone();
                        listen.with_client(Some(token_name.clone())).unwrap_or(fallback)
                    }
                };
                actions.push(Action::Listen(listen));
            }
            // All or nothing: every listen was valid; the batch is durable when this returns.
            // Paused scrobbling (incognito): accepted, as the player expects, and not stored.
            let newest = actions.iter().filter_map(Action::listened_at).max();
            if !state.store.is_paused(user.id)? {
                state.ingestor.ingest(user.id, actions).await?;
            }
            state.live.listened(user.id, newest);
            Ok(Json(json!({"status": "ok"})))
        }
        other => Err(LbError::bad(format!("listen_type must be one of single, import, playing_now (not {other:?})."))),
    }
}

async fn validate_token(
    State(state): State<AppState>,
    addr: ClientAddr,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
) -> Result<Response, LbError> {
    if addr.0.is_some_and(|a| state.live.is_limited(a)) {
        return Err(LbError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed authentication attempts; wait a minute.",
        ));
    }
    let Some(token) = token_of(&headers, q.token.as_deref()) else {
        return Err(LbError::bad("You need to provide an Authorization token."));
    };
    Ok(match state.store.user_by_token(&token)? {
        Some((user, _)) => {
            Json(json!({"code": 200, "message": "Token valid.", "valid": true, "user_name": user.name})).into_response()
        }
        None => {
            if let Some(a) = addr.0 {
                state.live.record_failure(a);
            }
            Json(json!({"code": 200, "message": "Token invalid.", "valid": false})).into_response()
        }
    })
}

/// A listen as ListenBrainz returns it. The player's name (`submission_client`: what the
/// player called itself, or the name its user gave the token) only to the user: a token
/// label like "Kitchen Navidrome" is nobody else's business.
fn listen_json(user: &str, l: &StoredListen, extra: Option<&String>, own: bool) -> Value {
    let t = &l.listen.track();
    let mut info = Map::new();
    if let Some(Value::Object(kept)) = extra.and_then(|e| serde_json::from_str::<Value>(e).ok()) {
        info.extend(kept);
    }
    let msid = msid(t).to_string();
    info.insert("recording_msid".into(), json!(msid));
    if !t.artist_names.is_empty() {
        info.insert("artist_names".into(), json!(t.artist_names));
    }
    if !t.artist_mbids.is_empty() {
        info.insert("artist_mbids".into(), json!(t.artist_mbids.iter().map(format_mbid).collect::<Vec<_>>()));
    }
    if let Some(m) = &t.recording_mbid {
        info.insert("recording_mbid".into(), json!(format_mbid(m)));
    }
    if let Some(m) = &t.release_mbid {
        info.insert("release_mbid".into(), json!(format_mbid(m)));
    }
    if let Some(d) = l.listen.duration_ms() {
        info.insert("duration_ms".into(), json!(d));
    }
    if let (Some(c), true) = (&l.listen.client(), own) {
        info.insert("submission_client".into(), json!(c));
    }
    let mut meta = Map::new();
    meta.insert("artist_name".into(), json!(t.artist));
    meta.insert("track_name".into(), json!(t.title));
    if let Some(a) = &t.album {
        meta.insert("release_name".into(), json!(a));
    }
    meta.insert("additional_info".into(), Value::Object(info));
    json!({
        "listened_at": l.listen.listened_at(),
        "inserted_at": l.listen.listened_at(),
        "recording_msid": msid,
        "user_name": user,
        "track_metadata": meta,
    })
}

#[derive(Deserialize)]
struct ListensQuery {
    min_ts: Option<i64>,
    max_ts: Option<i64>,
    count: Option<i64>,
    token: Option<String>,
}

async fn listens(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(q): Query<ListensQuery>,
) -> LbResult {
    let viewer = viewer(&state, &headers, q.token.as_deref())?;
    let user = visible_user(&state, &name, viewer.as_ref(), Purpose::History)?;
    let own = viewer.as_ref().is_some_and(|v| v.id == user.id);
    let count = match q.count {
        Some(c) if c < 0 => return Err(LbError::bad("count must be a positive number")),
        Some(c) => (c as usize).min(MAX_ITEMS_PER_GET),
        None => DEFAULT_ITEMS_PER_GET,
    };
    if let (Some(min), Some(max)) = (q.min_ts, q.max_ts)
        && max <= min
    {
        return Err(LbError::bad("max_ts should be greater than min_ts"));
    }
    // Both bounds are exclusive, as in ListenBrainz.
    let from = q.min_ts.map_or(0, |t| t.saturating_add(1));
    let to = q.max_ts.unwrap_or(i64::MAX);
    let order = if q.min_ts.is_some() && q.max_ts.is_none() { Order::OldestFirst } else { Order::NewestFirst };
    let mut found = state.store.listens(user.id, from, to, count, order)?;
    if order == Order::OldestFirst {
        found.reverse();
    }
    let newest = state.store.listens(user.id, 0, i64::MAX, 1, Order::NewestFirst)?;
    let oldest = state.store.listens(user.id, 0, i64::MAX, 1, Order::OldestFirst)?;
    let seqs: Vec<u64> = found.iter().map(|l| l.seq).collect();
    // What a player sent beyond the modelled fields (the page a browser scrobbled from,
    // player versions…) is the user's own, whoever else may read their listens.
    let extra = if own { state.store.listen_infos(user.id, &seqs)? } else { Default::default() };
    let items: Vec<Value> = found.iter().map(|l| listen_json(&user.name, l, extra.get(&l.seq), own)).collect();
    Ok(Json(json!({"payload": {
        "count": items.len(),
        "listens": items,
        "latest_listen_ts": newest.first().map_or(0, |l| l.listen.listened_at()),
        "oldest_listen_ts": oldest.first().map_or(0, |l| l.listen.listened_at()),
        "user_id": user.name,
    }})))
}

async fn listen_count(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
) -> LbResult {
    let user = readable_user(&state, &name, &headers, q.token.as_deref(), Purpose::History)?;
    let n = state.store.log_head(user.id)?.n_listens;
    Ok(Json(json!({"payload": {"count": n}})))
}

fn track_meta(t: &TrackRef) -> Value {
    let mut meta = Map::new();
    meta.insert("artist_name".into(), json!(t.artist));
    meta.insert("track_name".into(), json!(t.title));
    if let Some(a) = &t.album {
        meta.insert("release_name".into(), json!(a));
    }
    Value::Object(meta)
}

async fn playing_now(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
) -> LbResult {
    let viewer = viewer(&state, &headers, q.token.as_deref())?;
    let user = visible_user(&state, &name, viewer.as_ref(), Purpose::History)?;
    let own = viewer.as_ref().is_some_and(|v| v.id == user.id);
    let listens: Vec<Value> = state
        .live
        .playing(user.id)
        .map(|p| {
            let mut meta = track_meta(&p.track);
            // Always present, as ListenBrainz sends it (typed clients fail without it).
            let mut info = Map::new();
            if let (Some(c), true) = (&p.client, own) {
                info.insert("submission_client".into(), json!(c));
            }
            meta["additional_info"] = Value::Object(info);
            json!({"track_metadata": meta, "user_name": user.name, "playing_now": true})
        })
        .into_iter()
        .collect();
    Ok(Json(
        json!({"payload": {"count": listens.len(), "user_id": user.name, "playing_now": true, "listens": listens}}),
    ))
}

/// The user's listens whose track has `msid` or `recording_mbid` `id` (newest first).
fn find_by_recording(
    state: &AppState,
    user: &User,
    id: &uuid::Uuid,
    at: Option<i64>,
) -> Result<Vec<StoredListen>, LbError> {
    let (from, to, limit) = match at {
        Some(t) => (t, t.saturating_add(1), usize::MAX),
        None => (0, i64::MAX, 100_000),
    };
    let candidates = state.store.listens(user.id, from, to, limit, Order::NewestFirst)?;
    Ok(candidates
        .into_iter()
        .filter(|l| msid(l.listen.track()) == *id || l.listen.track().recording_mbid == Some(*id.as_bytes()))
        .collect())
}

fn parse_uuid(v: Option<&Value>, field: &str) -> Result<uuid::Uuid, LbError> {
    v.and_then(Value::as_str)
        .and_then(|s| uuid::Uuid::try_parse(s.trim()).ok())
        .ok_or_else(|| LbError::bad(format!("{field} must be a valid UUID")))
}

/// The user and JSON body of an authenticated write.
async fn authenticated_json(
    state: &AppState,
    addr: &ClientAddr,
    headers: &HeaderMap,
    query_token: Option<&str>,
    body: axum::body::Body,
) -> Result<(User, Value), LbError> {
    let user = authenticate(state, addr, headers, query_token)?;
    let body = super::read_body(headers, body, 64 * 1024).await.map_err(|e| match e {
        super::BodyError::TooLarge => LbError::new(StatusCode::PAYLOAD_TOO_LARGE, "Payload too large."),
        super::BodyError::Unreadable(m) => LbError::bad(m),
    })?;
    let doc = serde_json::from_slice(&body).map_err(|_| LbError::bad("Invalid JSON document submitted."))?;
    Ok((user, doc))
}

async fn delete_listen(
    State(state): State<AppState>,
    addr: ClientAddr,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
    body: axum::body::Body,
) -> LbResult {
    let (user, doc) = authenticated_json(&state, &addr, &headers, q.token.as_deref(), body).await?;
    let listened_at =
        doc.get("listened_at").and_then(Value::as_i64).ok_or_else(|| LbError::bad("listened_at must be an integer"))?;
    let id = parse_uuid(doc.get("recording_msid"), "recording_msid")?;
    let matches = find_by_recording(&state, &user, &id, Some(listened_at))?;
    let Some(found) = matches.first() else {
        return Err(LbError::new(StatusCode::NOT_FOUND, "No listen with that listened_at and recording_msid."));
    };
    state.ingestor.ingest(user.id, vec![Action::Delete { seq: found.seq }]).await?;
    Ok(Json(json!({"status": "ok"})))
}

async fn recording_feedback(
    State(state): State<AppState>,
    addr: ClientAddr,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
    body: axum::body::Body,
) -> LbResult {
    let (user, doc) = authenticated_json(&state, &addr, &headers, q.token.as_deref(), body).await?;
    let score = doc.get("score").and_then(Value::as_i64).ok_or_else(|| LbError::bad("score must be 1, 0 or -1"))?;
    let id = match (doc.get("recording_msid"), doc.get("recording_mbid")) {
        (Some(v), _) if !v.is_null() => parse_uuid(Some(v), "recording_msid")?,
        (_, Some(v)) if !v.is_null() => parse_uuid(Some(v), "recording_mbid")?,
        _ => return Err(LbError::bad("Provide recording_msid or recording_mbid.")),
    };
    // Feedback is an entry of the signed log, which needs the track's names; the node
    // knows them from the user's listens of it.
    let Some(listen) = find_by_recording(&state, &user, &id, None)?.into_iter().next() else {
        return Err(LbError::new(StatusCode::NOT_FOUND, "This recording is not among your listens on this node."));
    };
    let track = listen.listen.into_track();
    let action = match score {
        1 => Action::Love(track),
        -1 => Action::Hate(track),
        0 => Action::Unlove(track),
        _ => return Err(LbError::bad("score must be 1, 0 or -1")),
    };
    state.ingestor.ingest(user.id, vec![action]).await?;
    Ok(Json(json!({"status": "ok"})))
}

#[derive(Deserialize)]
struct StatsQuery {
    range: Option<String>,
    count: Option<i64>,
    offset: Option<i64>,
    token: Option<String>,
}

/// ListenBrainz's `range` names as hearsay periods (documented in docs/api-compat.md).
pub fn range_period(range: &str, now: i64, tz: &jiff::tz::TimeZone) -> Option<Period> {
    let today = crate::stats::period::local_date(now, tz);
    Some(match range {
        "this_week" => {
            let w = today.iso_week_date();
            Period::IsoWeek { year: w.year(), week: w.week() }
        }
        "this_month" => Period::Month { year: today.year(), month: today.month() },
        "this_year" => Period::Year(today.year()),
        // The "last" ranges are the previous calendar ones, as ListenBrainz's
        // (`get_dates_for_stats_range`): the week before this one, last month, the
        // quarter and half year before this one, last year.
        "week" => {
            let w = today.checked_sub(jiff::Span::new().days(7)).ok()?.iso_week_date();
            Period::IsoWeek { year: w.year(), week: w.week() }
        }
        "month" => {
            let m = today.first_of_month().checked_sub(jiff::Span::new().months(1)).ok()?;
            Period::Month { year: m.year(), month: m.month() }
        }
        "quarter" => previous_months(today, 3, tz)?,
        "half_yearly" => previous_months(today, 6, tz)?,
        "year" => Period::Year(today.year().checked_sub(1)?),
        "all_time" => Period::AllTime,
        _ => return None,
    })
}

/// The calendar quarter (`months` = 3) or half year (6) before the one holding `today`,
/// as a range of instants in `tz`.
fn previous_months(today: jiff::civil::Date, months: i8, tz: &jiff::tz::TimeZone) -> Option<Period> {
    let first_of_this = (today.month() - 1) / months * months + 1;
    let this = jiff::civil::Date::new(today.year(), first_of_this, 1).ok()?;
    let previous = this.checked_sub(jiff::Span::new().months(i64::from(months))).ok()?;
    let at = |d: jiff::civil::Date| d.to_zoned(tz.clone()).ok().map(|z| z.timestamp().as_second());
    Some(Period::Range { from: at(previous)?, to: at(this)? })
}

async fn user_stats(
    State(state): State<AppState>,
    Path((name, entity)): Path<(String, String)>,
    headers: HeaderMap,
    Query(q): Query<StatsQuery>,
) -> Result<Response, LbError> {
    if entity == "listening-activity" || entity == "daily-activity" {
        return activity(&state, &name, &entity, &headers, q);
    }
    let (kind, list_key, total_key) = entity_keys(&entity)?;
    let user = readable_user(&state, &name, &headers, q.token.as_deref(), Purpose::Charts)?;
    let range = q.range.unwrap_or_else(|| "all_time".into());
    let now = crate::now_unix();
    let tz = crate::stats::period::time_zone(&user.timezone).map_err(|e| LbError::bad(e.to_string()))?;
    let period = range_period(&range, now, &tz).ok_or_else(|| LbError::bad("Invalid range"))?;
    let (count, offset) = count_offset(q.count, q.offset)?;
    let chart = state.store.chart(user.id, kind, &period, offset + count, now)?;
    if chart.listens == 0 {
        // ListenBrainz answers 204 when it has no statistics for the range.
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let rows: Vec<Value> = chart.rows.iter().skip(offset).map(|r| stat_row(kind, r)).collect();
    let mut payload = Map::new();
    payload.insert("user_id".into(), json!(user.name));
    payload.insert(list_key.into(), Value::Array(rows.clone()));
    payload.insert("count".into(), json!(rows.len()));
    payload.insert(total_key.into(), json!(chart.distinct));
    payload.insert("offset".into(), json!(offset));
    payload.insert("range".into(), json!(range));
    payload.insert("from_ts".into(), json!(chart.from));
    payload.insert("to_ts".into(), json!(chart.to));
    payload.insert("last_updated".into(), json!(now));
    Ok(Json(json!({"payload": payload})).into_response())
}

/// A statistics entity's kind and the payload keys of its list and total.
fn entity_keys(entity: &str) -> Result<(Kind, &'static str, &'static str), LbError> {
    match entity {
        "artists" => Ok((Kind::Artist, "artists", "total_artist_count")),
        "recordings" => Ok((Kind::Recording, "recordings", "total_recording_count")),
        "releases" => Ok((Kind::Release, "releases", "total_release_count")),
        _ => Err(LbError::new(StatusCode::NOT_FOUND, "Unknown statistic.")),
    }
}

/// One row of a statistics list as ListenBrainz sends it: the MBID keys are always there
/// (null or empty: the node's charts count by names).
fn stat_row(kind: Kind, r: &crate::store::aggregates::ChartRow) -> Value {
    match kind {
        Kind::Artist => json!({"artist_name": r.name, "artist_mbid": null, "listen_count": r.listens}),
        Kind::Recording => json!({
            "track_name": r.name, "artist_name": r.artist, "artist_mbids": [], "recording_mbid": null,
            "release_name": null, "release_mbid": null, "listen_count": r.listens,
        }),
        Kind::Release => json!({
            "release_name": r.name, "artist_name": r.artist, "artist_mbids": [], "release_mbid": null,
            "listen_count": r.listens,
        }),
    }
}

/// `count` and `offset` of a list request: at most `MAX_ITEMS_PER_GET`, never negative.
fn count_offset(count: Option<i64>, offset: Option<i64>) -> Result<(usize, usize), LbError> {
    let count = count.unwrap_or(DEFAULT_ITEMS_PER_GET as i64);
    let offset = offset.unwrap_or(0);
    if count < 0 || offset < 0 {
        return Err(LbError::bad("count and offset must be positive"));
    }
    let offset = usize::try_from(offset).map_err(|_| LbError::bad("offset is too large"))?;
    Ok(((count as usize).min(MAX_ITEMS_PER_GET), offset.min(1_000_000)))
}

/// Most rows of the node chart `GET /1/stats/sitewide/{entity}` lists (`offset + count`
/// past it lists fewer): the node cache keeps this head of each chart; a page past it
/// named every item tied with its rows (ties are broken by name), anew for each request
/// and without a token: `offset=100000` took 4.9 s at 10,000 members.
const SITEWIDE_ROWS: usize = crate::store::aggregates::CACHED_TOP;

/// `GET /1/stats/sitewide/{entity}`: the node's chart, which sums the public profiles
/// only (`policy::Purpose::NodeChart`), so anyone may read it; its top `SITEWIDE_ROWS`.
async fn sitewide_stats(
    State(state): State<AppState>,
    Path(entity): Path<String>,
    Query(q): Query<StatsQuery>,
) -> Result<Response, LbError> {
    let (kind, list_key, _) = entity_keys(&entity)?;
    let range = q.range.unwrap_or_else(|| "all_time".into());
    let now = crate::now_unix();
    let tz = crate::stats::period::time_zone(&state.node_timezone).map_err(|e| LbError::bad(e.to_string()))?;
    let period = range_period(&range, now, &tz).ok_or_else(|| LbError::bad("Invalid range"))?;
    let (count, offset) = count_offset(q.count, q.offset)?;
    let end = offset.saturating_add(count).min(SITEWIDE_ROWS);
    let chart = state.store.node_chart_page(kind, &period, offset.min(end)..end, now, &tz)?;
    if chart.listens == 0 {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let rows: Vec<Value> = chart.rows.iter().map(|r| stat_row(kind, &r.row)).collect();
    let mut payload = Map::new();
    payload.insert(list_key.into(), json!(rows));
    payload.insert("count".into(), json!(rows.len()));
    payload.insert("offset".into(), json!(offset));
    payload.insert("range".into(), json!(range));
    payload.insert("from_ts".into(), json!(chart.from));
    payload.insert("to_ts".into(), json!(chart.to));
    payload.insert("last_updated".into(), json!(now));
    Ok(Json(json!({"payload": payload})).into_response())
}

/// The start of a series step (a day number) as a unix time in `tz`.
fn day_start(day: i32, tz: &jiff::tz::TimeZone) -> i64 {
    crate::stats::period::date_of(day).to_zoned(tz.clone()).map_or(0, |z| z.timestamp().as_second())
}

/// `listening-activity` (listens per day, week, month or year of the range, by its
/// length) and `daily-activity` (per weekday and hour, in the user's time zone).
fn activity(
    state: &AppState,
    name: &str,
    entity: &str,
    headers: &HeaderMap,
    q: StatsQuery,
) -> Result<Response, LbError> {
    use crate::store::aggregates::Step;
    let user = readable_user(state, name, headers, q.token.as_deref(), Purpose::Charts)?;
    let range = q.range.unwrap_or_else(|| "all_time".into());
    let now = crate::now_unix();
    let tz = crate::stats::period::time_zone(&user.timezone).map_err(|e| LbError::bad(e.to_string()))?;
    let period = range_period(&range, now, &tz).ok_or_else(|| LbError::bad("Invalid range"))?;
    let (from, to) = crate::stats::period::resolve(&period, &tz, now).map_err(|e| LbError::bad(e.to_string()))?;
    let mut payload = Map::new();
    payload.insert("user_id".into(), json!(user.name));
    payload.insert("range".into(), json!(range));
    payload.insert("from_ts".into(), json!(from));
    payload.insert("to_ts".into(), json!(to));
    payload.insert("last_updated".into(), json!(now));
    if entity == "daily-activity" {
        let clock = state.store.clock(user.id, &period, now)?;
        if clock.iter().flatten().all(|n| *n == 0) {
            // As the other statistics (and ListenBrainz): nothing for the range.
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        let days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
        let mut by_day = Map::new();
        for (name, hours) in days.iter().zip(clock.iter()) {
            let hours: Vec<Value> =
                hours.iter().enumerate().map(|(h, n)| json!({"hour": h, "listen_count": n})).collect();
            by_day.insert((*name).into(), json!(hours));
        }
        payload.insert("daily_activity".into(), Value::Object(by_day));
        return Ok(Json(json!({"payload": payload})).into_response());
    }
    // The step follows the range's length, as ListenBrainz's: days of a week or month,
    // weeks of a quarter, months of a half year or year, years of all time.
    let step = match range.as_str() {
        "week" | "this_week" | "month" | "this_month" => Step::Day,
        "quarter" => Step::Week,
        _ => Step::Month,
    };
    let period = if range == "all_time" {
        // From the first listen: the series covers every month of it, summed by year.
        let first = state.store.listens(user.id, 0, i64::MAX, 1, Order::OldestFirst)?;
        match first.first() {
            Some(l) => Period::Range { from: l.listen.listened_at(), to: now.max(l.listen.listened_at() + 1) },
            None => period,
        }
    } else {
        period
    };
    let series = state.store.listens_series(user.id, &period, step, now)?;
    if series.iter().all(|(_, n)| *n == 0) {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let mut entries: Vec<(i64, i64, String, u64)> = Vec::new();
    for (i, (day, n)) in series.iter().enumerate() {
        let start = day_start(*day, &tz);
        let end = series.get(i + 1).map_or(to, |(next, _)| day_start(*next, &tz)) - 1;
        let date = crate::stats::period::date_of(*day);
        let label = match step {
            Step::Day => date.strftime("%A %-d %B %Y").to_string(),
            Step::Week => format!("Week of {}", date.strftime("%-d %B %Y")),
            Step::Month => date.strftime("%B %Y").to_string(),
        };
        if range == "all_time" {
            let year = date.year().to_string();
            match entries.last_mut() {
                Some(last) if last.2 == year => {
                    last.1 = end;
                    last.3 += n;
                }
                _ => entries.push((start, end, year, *n)),
            }
        } else {
            entries.push((start, end, label, *n));
        }
    }
    let list: Vec<Value> = entries
        .into_iter()
        .map(|(from_ts, to_ts, time_range, n)| {
            json!({"from_ts": from_ts, "to_ts": to_ts, "time_range": time_range, "listen_count": n})
        })
        .collect();
    payload.insert("listening_activity".into(), json!(list));
    Ok(Json(json!({"payload": payload})).into_response())
}

#[derive(Deserialize)]
struct FeedbackQuery {
    score: Option<i64>,
    count: Option<i64>,
    offset: Option<i64>,
    metadata: Option<String>,
    token: Option<String>,
}

/// `GET /1/feedback/user/{user}/get-feedback`: the user's loves (score 1) and hates
/// (-1), newest first. `created` is the start of the listen recorded just before the feedback
/// in the log (`Store::feedback_time`: the log keeps no time for feedback).
async fn get_feedback(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(q): Query<FeedbackQuery>,
) -> LbResult {
    let user = readable_user(&state, &name, &headers, q.token.as_deref(), Purpose::Profile)?;
    let scores: &[i8] = match q.score {
        None => &[1, -1],
        Some(1) => &[1],
        Some(-1) => &[-1],
        Some(_) => return Err(LbError::bad("score must be 1 or -1")),
    };
    let (count, offset) = count_offset(q.count, q.offset)?;
    let metadata = q.metadata.as_deref().is_some_and(|m| m.eq_ignore_ascii_case("true"));
    let mut all = Vec::new();
    for score in scores {
        all.extend(state.store.feedback(user.id, *score, usize::MAX)?);
    }
    all.sort_by_key(|f| std::cmp::Reverse(f.seq));
    let total = all.len();
    let mut items = Vec::new();
    for f in all.iter().skip(offset).take(count) {
        let created = state.store.feedback_time(user.id, f.seq)?.unwrap_or(0);
        let meta = if metadata { track_meta(&f.track) } else { Value::Null };
        items.push(json!({
            "created": created,
            "recording_mbid": f.track.recording_mbid.as_ref().map(format_mbid),
            "recording_msid": msid(&f.track).to_string(),
            "score": f.score,
            "track_metadata": meta,
            "user_id": user.name,
        }));
    }
    Ok(Json(json!({"count": items.len(), "feedback": items, "offset": offset, "total_count": total})))
}

/// `GET /1/user/{user}/similar-users`: the public members of this node who listen most
/// like the user (`Store::neighbours`), to whoever may see the user's charts.
async fn similar_users(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
) -> LbResult {
    let user = readable_user(&state, &name, &headers, q.token.as_deref(), Purpose::Charts)?;
    let list: Vec<Value> = state
        .store
        .neighbours(user.id, 10)?
        .into_iter()
        .map(|n| json!({"user_name": n.user.name, "similarity": f64::from(n.similarity)}))
        .collect();
    Ok(Json(json!({"payload": list})))
}

#[derive(Deserialize)]
struct LatestImportQuery {
    user_name: Option<String>,
    service: Option<String>,
    token: Option<String>,
}

/// `GET /1/latest-import?user_name=&service=`: where an importer left off (0 if never
/// set). It says when the user last imported, so it needs the right to see their
/// history.
async fn latest_import(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<LatestImportQuery>,
) -> LbResult {
    let name = q.user_name.ok_or_else(|| LbError::bad("user_name is required"))?;
    let user = readable_user(&state, &name, &headers, q.token.as_deref(), Purpose::History)?;
    let service = q.service.unwrap_or_else(|| "lastfm".into());
    let ts = state.store.latest_import(user.id, &service)?;
    Ok(Json(json!({"latest_import": ts, "musicbrainz_id": user.name})))
}

/// `POST /1/latest-import` `{"ts": int, "service": "lastfm"}` (authenticated).
async fn set_latest_import(
    State(state): State<AppState>,
    addr: ClientAddr,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
    body: axum::body::Body,
) -> LbResult {
    let (user, doc) = authenticated_json(&state, &addr, &headers, q.token.as_deref(), body).await?;
    let ts = doc
        .get("ts")
        .and_then(Value::as_i64)
        .filter(|t| *t >= 0)
        .ok_or_else(|| LbError::bad("ts must be a unix time"))?;
    let service = doc.get("service").and_then(Value::as_str).unwrap_or("lastfm");
    // Paused scrobbling stores nothing a client sends, this included.
    if !state.store.is_paused(user.id)? {
        state.store.set_latest_import(user.id, service, ts)?;
    }
    Ok(Json(json!({"status": "ok"})))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(date: &str) -> i64 {
        let d: jiff::civil::Date = date.parse().expect("date");
        d.to_zoned(jiff::tz::TimeZone::UTC).expect("zoned").timestamp().as_second() + 12 * 3600
    }

    /// The "last" ranges are the previous calendar week, month, quarter, half year and
    /// year, as ListenBrainz's `get_dates_for_stats_range`, across a year's turn too.
    #[test]
    fn last_ranges_are_the_previous_calendar_ones() {
        let utc = jiff::tz::TimeZone::UTC;
        let range = |name: &str, now: &str| range_period(name, at(now), &utc).expect("range");
        let span = |from: &str, to: &str| Period::Range { from: at(from) - 12 * 3600, to: at(to) - 12 * 3600 };
        // Wednesday 2 December 2026 is in ISO week 49.
        assert_eq!(range("this_week", "2026-12-02"), Period::IsoWeek { year: 2026, week: 49 });
        assert_eq!(range("week", "2026-12-02"), Period::IsoWeek { year: 2026, week: 48 });
        assert_eq!(range("month", "2026-12-02"), Period::Month { year: 2026, month: 11 });
        assert_eq!(range("quarter", "2026-12-02"), span("2026-07-01", "2026-10-01"));
        assert_eq!(range("half_yearly", "2026-12-02"), span("2026-01-01", "2026-07-01"));
        assert_eq!(range("year", "2026-12-02"), Period::Year(2025));
        assert_eq!(range("week", "2026-01-01"), Period::IsoWeek { year: 2025, week: 52 });
        assert_eq!(range("month", "2026-01-15"), Period::Month { year: 2025, month: 12 });
        assert_eq!(range("quarter", "2026-01-15"), span("2025-10-01", "2026-01-01"));
        assert_eq!(range("half_yearly", "2026-03-31"), span("2025-07-01", "2026-01-01"));
        assert_eq!(range("quarter", "2026-06-30"), span("2026-01-01", "2026-04-01"));
        assert!(range_period("fortnight", at("2026-12-02"), &utc).is_none());
    }
}
