//! The Last.fm 2.0 web-service API at `/2.0/`, as players and pylast speak it: form or
//! query parameters, XML answers (`format=json` for JSON), Last.fm's numeric error codes.
//!
//! `api_key` and `api_sig` are accepted and not checked: a signature is an md5 over the
//! parameters and the *client application's* secret, which only Last.fm knows, so no
//! self-hosted server can check it (ListenBrainz, GNU FM and Maloja do the same). The
//! user is authenticated by the session key (`sk`) from `auth.getMobileSession`.

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::{Map, Value, json};

use crate::auth::{md5_hex, strings_equal};
use crate::log::{Listen, ListenError, RawListen, TrackRef};
use crate::policy::Purpose;
use crate::state::{AppState, ClientAddr, TokenError};
use crate::stats::chart::Kind;
use crate::stats::period::Period;
use crate::store::logs::Order;
use crate::store::users::User;
use crate::store::{Action, Outcome};

/// Most scrobbles in one `track.scrobble` request (Last.fm's limit).
pub const MAX_SCROBBLES: usize = 50;
const MAX_BODY: usize = 256 * 1024;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/2.0/", any(dispatch).layer(axum::extract::DefaultBodyLimit::max(MAX_BODY)))
        .route("/2.0", any(dispatch).layer(axum::extract::DefaultBodyLimit::max(MAX_BODY)))
}

/// An element of a Last.fm response, rendered as XML or as Last.fm's JSON.
#[derive(Clone, Debug)]
pub struct El {
    name: String,
    attrs: Vec<(String, String)>,
    text: Option<String>,
    /// Rendered as a JSON number rather than a string (where Last.fm's JSON has one,
    /// e.g. `subscriber` in a session: typed clients refuse a string there).
    number: Option<i64>,
    children: Vec<El>,
}

impl El {
    fn new(name: &str) -> El {
        El { name: name.into(), attrs: Vec::new(), text: None, number: None, children: Vec::new() }
    }
    /// An element whose JSON value is a number (its XML text the same digits).
    fn number(name: &str, n: i64) -> El {
        El { number: Some(n), ..El::text(name, n) }
    }
    fn text(name: &str, text: impl ToString) -> El {
        El { text: Some(text.to_string()), ..El::new(name) }
    }
    fn attr(mut self, k: &str, v: impl ToString) -> El {
        self.attrs.push((k.into(), v.to_string()));
        self
    }
    fn child(mut self, c: El) -> El {
        self.children.push(c);
        self
    }

    fn xml(&self, out: &mut String) {
        out.push('<');
        out.push_str(&self.name);
        for (k, v) in &self.attrs {
            out.push_str(&format!(" {k}=\"{}\"", escape(v)));
        }
        out.push('>');
        if let Some(t) = &self.text {
            out.push_str(&escape(t));
        }
        for c in &self.children {
            c.xml(out);
        }
        out.push_str(&format!("</{}>", self.name));
    }

    /// Last.fm's JSON: text-only elements are strings; attributes of a text element sit
    /// beside `#text`, of a container under `@attr`; repeated children become arrays.
    fn json(&self) -> Value {
        if self.children.is_empty() {
            if let (Some(n), true) = (self.number, self.attrs.is_empty()) {
                return json!(n);
            }
            let text = json!(self.text.clone().unwrap_or_default());
            if self.attrs.is_empty() {
                return text;
            }
            let mut m: Map<String, Value> = self.attrs.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            m.insert("#text".into(), text);
            return Value::Object(m);
        }
        let mut m = Map::new();
        for c in &self.children {
            let v = c.json();
            match m.get_mut(&c.name) {
                Some(Value::Array(a)) if self.children.iter().filter(|x| x.name == c.name).count() > 1 => a.push(v),
                Some(existing) => {
                    let first = existing.take();
                    *existing = json!([first, v]);
                }
                None => {
                    m.insert(c.name.clone(), v);
                }
            }
        }
        if !self.attrs.is_empty() {
            m.insert("@attr".into(), Value::Object(self.attrs.iter().map(|(k, v)| (k.clone(), json!(v))).collect()));
        }
        Value::Object(m)
    }
}

/// XML's five predefined entities: all the escaping text and attribute values need
/// (names never hold control characters: `Listen::parse` refuses them). Written here
/// rather than taken from an XML crate because this replace chain is the whole job.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

/// The parameters of one request, from the query string and a form body together.
struct Params(Vec<(String, String)>);

impl Params {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }
    /// Case-insensitive lookup (clients disagree on `streamID` vs `streamId`, etc.).
    fn get_ci(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }
}

struct Reply {
    json: bool,
    result: Result<Vec<El>, (StatusCode, u32, String)>,
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        match (self.json, self.result) {
            (true, Ok(els)) => {
                let mut m = Map::new();
                for e in els {
                    m.insert(e.name.clone(), e.json());
                }
                axum::Json(Value::Object(m)).into_response()
            }
            (true, Err((status, code, message))) => {
                (status, axum::Json(json!({"error": code, "message": message}))).into_response()
            }
            (false, Ok(els)) => {
                let mut out = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<lfm status=\"ok\">");
                for e in els {
                    e.xml(&mut out);
                }
                out.push_str("</lfm>");
                ([(header::CONTENT_TYPE, "text/xml; charset=utf-8")], out).into_response()
            }
            (false, Err((status, code, message))) => {
                let out = format!(
                    "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<lfm status=\"failed\"><error code=\"{code}\">{}</error></lfm>",
                    escape(&message)
                );
                (status, [(header::CONTENT_TYPE, "text/xml; charset=utf-8")], out).into_response()
            }
        }
    }
}

type Outcome2 = Result<Vec<El>, (StatusCode, u32, String)>;

fn fail(status: StatusCode, code: u32, message: &str) -> (StatusCode, u32, String) {
    (status, code, message.to_owned())
}

fn bad_params(message: &str) -> (StatusCode, u32, String) {
    fail(StatusCode::BAD_REQUEST, 6, message)
}

async fn dispatch(
    State(state): State<AppState>,
    addr: ClientAddr,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Reply {
    let Ok(body) = super::read_body(&headers, body, MAX_BODY).await else {
        let json = query.iter().any(|(k, v)| k == "format" && v.eq_ignore_ascii_case("json"));
        let too_big = format!("Invalid parameters - the request is larger than {MAX_BODY} bytes");
        return Reply { json, result: Err((StatusCode::PAYLOAD_TOO_LARGE, 6, too_big)) };
    };
    let mut params = query;
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| ct.starts_with("application/x-www-form-urlencoded") || ct.starts_with("text/plain"));
    if form && !body.is_empty() {
        match serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body) {
            Ok(more) => params.extend(more),
            Err(_) => {
                return Reply { json: false, result: Err(bad_params("Invalid parameters - the body is not a form")) };
            }
        }
    }
    let params = Params(params);
    let json = params.get("format").is_some_and(|f| f.eq_ignore_ascii_case("json"));
    let method = params.get("method").unwrap_or_default().to_ascii_lowercase();
    let result = match method.as_str() {
        "auth.getmobilesession" => mobile_session(&state, &addr, &params).await,
        "auth.gettoken" => match state.live.lastfm_tokens.create(addr.0) {
            Ok(token) => Ok(vec![El::text("token", token)]),
            Err(crate::state::CreateError::TooMany) => {
                Err(fail(StatusCode::TOO_MANY_REQUESTS, 29, "Rate limit exceeded"))
            }
            Err(crate::state::CreateError::Unavailable) => {
                Err(fail(StatusCode::INTERNAL_SERVER_ERROR, 16, "Temporary error, try again"))
            }
        },
        "auth.getsession" => web_session(&state, &params),
        "track.scrobble" => scrobble(&state, &params).await,
        "track.updatenowplaying" => now_playing(&state, &params),
        "track.love" | "track.unlove" => love(&state, &params, method == "track.love").await,
        "user.getinfo" => user_info(&state, &params),
        "user.getrecenttracks" => recent_tracks(&state, &params),
        "user.gettopartists" => top(&state, &params, Kind::Artist),
        "user.gettoptracks" => top(&state, &params, Kind::Recording),
        "user.gettopalbums" => top(&state, &params, Kind::Release),
        _ => Err(fail(StatusCode::BAD_REQUEST, 3, "Invalid Method - No method with that name in this package")),
    };
    Reply { json, result }
}

fn store_err(e: crate::store::Error) -> (StatusCode, u32, String) {
    use crate::store::Class;
    match (e.class(), e) {
        (_, crate::store::Error::Invalid(m)) => bad_params(&m),
        (Class::DiskFull, e) => {
            tracing::debug!(error = %e, "last.fm api: refused, disk full");
            fail(StatusCode::INSUFFICIENT_STORAGE, 16, "The node's disk is full: nothing was stored. Try again later.")
        }
        (Class::Unavailable, e) => {
            tracing::warn!(error = %e, "last.fm api: store unavailable");
            fail(StatusCode::SERVICE_UNAVAILABLE, 16, "The service is temporarily unavailable, please try again.")
        }
        (_, other) => {
            tracing::error!(error = %other, "last.fm api: store error");
            fail(StatusCode::INTERNAL_SERVER_ERROR, 16, "Temporary error, try again")
        }
    }
}

fn session_user(state: &AppState, params: &Params) -> Result<User, (StatusCode, u32, String)> {
    let sk = params
        .get("sk")
        .ok_or_else(|| fail(StatusCode::FORBIDDEN, 9, "Invalid session key - Please re-authenticate"))?;
    state
        .store
        .user_by_session(sk)
        .map_err(store_err)?
        .ok_or_else(|| fail(StatusCode::FORBIDDEN, 9, "Invalid session key - Please re-authenticate"))
}

async fn mobile_session(state: &AppState, addr: &ClientAddr, params: &Params) -> Outcome2 {
    if addr.0.is_some_and(|a| state.live.is_limited(a)) {
        return Err(fail(StatusCode::TOO_MANY_REQUESTS, 29, "Rate limit exceeded"));
    }
    let username = params.get("username").ok_or_else(|| bad_params("Invalid parameters - username is required"))?;
    let denied = || fail(StatusCode::FORBIDDEN, 4, "Authentication Failed - invalid username or password");
    let user = match (params.get("password"), params.get("authToken").or_else(|| params.get("authtoken"))) {
        (Some(password), _) => {
            // The account password, or an API token used as an application password.
            let by_password = state.check_password(username, password).await.map_err(store_err)?;
            let by_token = match by_password {
                Some(_) => None,
                None => state.store.user_by_token(password).map_err(store_err)?.map(|(u, _)| u),
            };
            by_password.or(by_token).filter(|u| u.name.eq_ignore_ascii_case(username))
        }
        (None, Some(auth_token)) => {
            // authToken = md5(username + md5(password)); the password is an API token.
            match state.store.user_by_name(username).map_err(store_err)? {
                Some(user) => {
                    let want = auth_token.to_ascii_lowercase();
                    let ok = state
                        .store
                        .legacy_password_matches(user.id, |md5_token| {
                            strings_equal(&md5_hex(format!("{username}{md5_token}").as_bytes()), &want)
                                || strings_equal(
                                    &md5_hex(format!("{}{md5_token}", username.to_lowercase()).as_bytes()),
                                    &want,
                                )
                        })
                        .map_err(store_err)?;
                    ok.then_some(user)
                }
                None => None,
            }
        }
        (None, None) => return Err(bad_params("Invalid parameters - password or authToken is required")),
    };
    let Some(user) = user else {
        if let Some(a) = addr.0 {
            state.live.record_failure(a);
        }
        return Err(denied());
    };
    session_for(state, &user)
}

/// Starts a session for `user` and answers it as Last.fm does.
fn session_for(state: &AppState, user: &User) -> Outcome2 {
    let key = state.store.create_session(user.id, crate::now_unix()).map_err(store_err)?;
    Ok(vec![
        El::new("session")
            .child(El::text("name", &user.name))
            .child(El::text("key", key))
            .child(El::number("subscriber", 0)),
    ])
}

fn web_session(state: &AppState, params: &Params) -> Outcome2 {
    let token = params.get("token").ok_or_else(|| bad_params("Invalid parameters - token is required"))?;
    let user = state.live.lastfm_tokens.take(token).map_err(|e| {
        let (code, message) = match e {
            TokenError::Unknown => (4, "Invalid authentication token supplied"),
            TokenError::Expired => (15, "This token has expired"),
            TokenError::NotApproved => (14, "This token has not been authorized"),
            TokenError::Unavailable => (16, "Temporary error, try again"),
        };
        fail(StatusCode::FORBIDDEN, code, message)
    })?;
    let user = state
        .store
        .user(user)
        .map_err(store_err)?
        .ok_or_else(|| fail(StatusCode::FORBIDDEN, 4, "Invalid authentication token supplied"))?;
    session_for(state, &user)
}

/// Why a scrobble was ignored, as Last.fm's ignoredMessage codes.
fn ignored_code(e: &ListenError) -> (u32, String) {
    match e {
        ListenError::TooEarly { .. } => (3, "Timestamp was too old".into()),
        ListenError::InFuture { .. } => (4, "Timestamp was too new".into()),
        other => {
            let field = other.to_string();
            if field.starts_with("track_name") {
                (2, format!("Track was ignored: {field}"))
            } else {
                (1, format!("Artist was ignored: {field}"))
            }
        }
    }
}

fn raw_from<'a>(params: &'a Params, suffix: &str, listened_at: i64) -> RawListen<'a> {
    let get = |name: &str| params.get_ci(&format!("{name}{suffix}")).map(str::as_bytes);
    RawListen {
        artist: get("artist").unwrap_or_default(),
        title: get("track").unwrap_or_default(),
        album: get("album"),
        recording_mbid: get("mbid"),
        listened_at,
        // A length the player got wrong is dropped and the play kept (it cannot fix it).
        duration_ms: params
            .get_ci(&format!("duration{suffix}"))
            .and_then(super::whole_number)
            .and_then(|s| s.checked_mul(1000))
            .filter(|ms| (1..=u64::from(crate::log::listen::MAX_DURATION_MS)).contains(ms)),
        ..RawListen::default()
    }
}

fn scrobble_el(artist: &str, track: &str, album: Option<&str>, ts: i64, code: u32, message: &str) -> El {
    El::new("scrobble")
        .child(El::text("track", track).attr("corrected", 0))
        .child(El::text("artist", artist).attr("corrected", 0))
        .child(El::text("album", album.unwrap_or_default()).attr("corrected", 0))
        .child(El::text("albumArtist", "").attr("corrected", 0))
        .child(El::text("timestamp", ts))
        .child(El::text("ignoredMessage", message).attr("code", code))
}

/// One scrobble of a request: artist, track, album as sent, timestamp, and the listen
/// or why it is ignored.
type Submitted = (String, String, Option<String>, i64, Result<Listen, (u32, String)>);

async fn scrobble(state: &AppState, params: &Params) -> Outcome2 {
    let user = session_user(state, params)?;
    let mut indexes: Vec<String> = params
        .0
        .iter()
        .filter_map(|(k, _)| k.strip_prefix("artist[").and_then(|r| r.strip_suffix(']')).map(str::to_owned))
        .collect();
    indexes.sort_by_key(|i| i.parse::<u32>().unwrap_or(u32::MAX));
    indexes.dedup();
    let suffixes: Vec<String> =
        if indexes.is_empty() { vec![String::new()] } else { indexes.iter().map(|i| format!("[{i}]")).collect() };
    if suffixes.len() > MAX_SCROBBLES {
        return Err(bad_params("Invalid parameters - at most 50 scrobbles per request"));
    }
    let now = crate::now_unix();
    let mut results: Vec<Submitted> = Vec::new();
    for suffix in &suffixes {
        let ts = params
            .get_ci(&format!("timestamp{suffix}"))
            .map(|t| super::whole_number(t).and_then(|t| i64::try_from(t).ok()))
            .ok_or_else(|| bad_params(&format!("Invalid parameters - timestamp{suffix} is required")))?
            .ok_or_else(|| bad_params(&format!("Invalid parameters - timestamp{suffix} is not a unix time")))?;
        let raw = raw_from(params, suffix, ts);
        let shown = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let parsed = Listen::parse(&raw, now)
            .and_then(|l| l.with_client(params.get("api_key").map(|_| "Last.fm API client".to_owned())))
            .map_err(|e| ignored_code(&e));
        results.push((shown(raw.artist), shown(raw.title), raw.album.map(shown), ts, parsed));
    }
    let actions: Vec<Action> =
        results.iter().filter_map(|r| r.4.as_ref().ok().map(|l| Action::Listen(l.clone()))).collect();
    // Paused scrobbling (incognito): reported accepted, not stored.
    let paused = state.store.is_paused(user.id).map_err(store_err)?;
    let outcomes = if actions.is_empty() || paused {
        Vec::new()
    } else {
        state.ingestor.ingest(user.id, actions).await.map_err(store_err)?
    };
    state.live.clear_playing(user.id);
    let mut outcomes = outcomes.into_iter();
    let (mut accepted, mut ignored) = (0, 0);
    let mut container = El::new("scrobbles");
    for (artist, track, album, ts, parsed) in results {
        let (code, message) = match parsed {
            Ok(_) => match outcomes.next() {
                Some(Outcome::Duplicate) => (91, "Already scrobbled".to_owned()),
                _ => (0, String::new()),
            },
            Err(e) => e,
        };
        if code == 0 {
            accepted += 1;
        } else {
            ignored += 1;
        }
        container = container.child(scrobble_el(&artist, &track, album.as_deref(), ts, code, &message));
    }
    Ok(vec![container.attr("accepted", accepted).attr("ignored", ignored)])
}

fn track_of(params: &Params) -> Result<(TrackRef, Option<u32>), (StatusCode, u32, String)> {
    let raw = raw_from(params, "", 0);
    let track = TrackRef::parse(&raw).map_err(|e| bad_params(&format!("Invalid parameters - {e}")))?;
    Ok((track, raw.duration_ms.and_then(|d| u32::try_from(d).ok())))
}

fn now_playing(state: &AppState, params: &Params) -> Outcome2 {
    let user = session_user(state, params)?;
    let (track, duration) = track_of(params)?;
    let el = El::new("nowplaying")
        .child(El::text("track", &track.title).attr("corrected", 0))
        .child(El::text("artist", &track.artist).attr("corrected", 0))
        .child(El::text("album", track.album.clone().unwrap_or_default()).attr("corrected", 0))
        .child(El::text("albumArtist", "").attr("corrected", 0))
        .child(El::text("ignoredMessage", "").attr("code", 0));
    state.live.set_playing(user.id, track, Some("Last.fm API client".into()), duration);
    Ok(vec![el])
}

async fn love(state: &AppState, params: &Params, love: bool) -> Outcome2 {
    let user = session_user(state, params)?;
    let (track, _) = track_of(params)?;
    let action = if love { Action::Love(track) } else { Action::Unlove(track) };
    state.ingestor.ingest(user.id, vec![action]).await.map_err(store_err)?;
    Ok(Vec::new())
}

/// The user a read names (`user`, else the session's) if the caller may see them.
fn read_user(state: &AppState, params: &Params, purpose: Purpose) -> Result<User, (StatusCode, u32, String)> {
    let viewer = match params.get("sk") {
        Some(sk) => state.store.user_by_session(sk).map_err(store_err)?,
        None => None,
    };
    let name = match (params.get("user"), &viewer) {
        (Some(n), _) => n.to_owned(),
        (None, Some(v)) => v.name.clone(),
        (None, None) => return Err(bad_params("Invalid parameters - user is required")),
    };
    let not_found = || fail(StatusCode::NOT_FOUND, 6, "User not found");
    let user = state.store.user_by_name(&name).map_err(store_err)?.ok_or_else(not_found)?;
    let who = crate::policy::Viewer::member_or_anonymous(viewer.as_ref().map(|v| v.id.0));
    let subject = crate::policy::Subject { id: user.id.0, level: user.visibility };
    if crate::policy::may(who, subject, purpose).exact() { Ok(user) } else { Err(not_found()) }
}

fn number(params: &Params, name: &str, default: usize, max: usize) -> Result<usize, (StatusCode, u32, String)> {
    match params.get(name) {
        None => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1)
            .map(|n| n.min(max))
            .ok_or_else(|| bad_params(&format!("Invalid parameters - {name}"))),
    }
}

fn user_info(state: &AppState, params: &Params) -> Outcome2 {
    let user = read_user(state, params, Purpose::Profile)?;
    let count = state.store.log_head(user.id).map_err(store_err)?.n_listens;
    Ok(vec![
        El::new("user")
            .child(El::text("name", &user.name))
            .child(El::text("realname", ""))
            .child(El::text("playcount", count))
            .child(El::text("registered", user.created_at).attr("unixtime", user.created_at))
            .child(El::text("type", "user")),
    ])
}

fn recent_tracks(state: &AppState, params: &Params) -> Outcome2 {
    let user = read_user(state, params, Purpose::History)?;
    let limit = number(params, "limit", 50, 1000)?;
    let page = number(params, "page", 1, 1_000_000)?;
    let from = params.get("from").and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    let to = params.get("to").and_then(|v| v.parse::<i64>().ok()).map_or(i64::MAX, |t| t.saturating_add(1));
    let total = if from == 0 && to == i64::MAX {
        state.store.log_head(user.id).map_err(store_err)?.n_listens as usize
    } else {
        usize::try_from(state.store.count_listens(user.id, from, to).map_err(store_err)?).unwrap_or(usize::MAX)
    };
    // Only the page asked for is held: earlier pages are skipped, not collected.
    let skip = (page - 1).saturating_mul(limit);
    let mut seen = 0usize;
    let mut listens = Vec::with_capacity(limit);
    state
        .store
        .each_listen(user.id, from, to, Order::NewestFirst, |l| {
            seen += 1;
            if seen > skip {
                listens.push(l);
            }
            Ok(listens.len() < limit)
        })
        .map_err(store_err)?;
    let mut container = El::new("recenttracks")
        .attr("user", &user.name)
        .attr("page", page)
        .attr("perPage", limit)
        .attr("totalPages", total.div_ceil(limit).max(1))
        .attr("total", total);
    if page == 1 {
        if let Some(p) = state.live.playing(user.id) {
            container = container.child(
                El::new("track")
                    .attr("nowplaying", "true")
                    .child(El::text("artist", &p.track.artist).attr("mbid", ""))
                    .child(El::text("name", &p.track.title))
                    .child(El::text("album", p.track.album.clone().unwrap_or_default()).attr("mbid", "")),
            );
        }
    }
    for l in &listens {
        let t = &l.listen.track();
        let date = jiff::Timestamp::from_second(l.listen.listened_at())
            .map(|ts| ts.strftime("%d %b %Y, %H:%M").to_string())
            .unwrap_or_default();
        container = container.child(
            El::new("track")
                .child(El::text("artist", &t.artist).attr("mbid", ""))
                .child(El::text("name", &t.title))
                .child(El::text(
                    "mbid",
                    t.recording_mbid.as_ref().map(crate::log::listen::format_mbid).unwrap_or_default(),
                ))
                .child(El::text("album", t.album.clone().unwrap_or_default()).attr("mbid", ""))
                .child(El::text("date", date).attr("uts", l.listen.listened_at())),
        );
    }
    Ok(vec![container])
}

fn top(state: &AppState, params: &Params, kind: Kind) -> Outcome2 {
    let user = read_user(state, params, Purpose::Charts)?;
    let period_name = params.get("period").unwrap_or("overall");
    let period = match period_name {
        "overall" => Period::AllTime,
        "7day" => Period::LastDays(7),
        "1month" => Period::LastMonths(1),
        "3month" => Period::LastMonths(3),
        "6month" => Period::LastMonths(6),
        "12month" => Period::LastMonths(12),
        _ => {
            return Err(bad_params(
                "Invalid parameters - period must be overall, 7day, 1month, 3month, 6month or 12month",
            ));
        }
    };
    let limit = number(params, "limit", 50, 1000)?;
    let page = number(params, "page", 1, 10_000)?;
    let chart = state.store.chart(user.id, kind, &period, page * limit, crate::now_unix()).map_err(store_err)?;
    let (container_name, item) = match kind {
        Kind::Artist => ("topartists", "artist"),
        Kind::Recording => ("toptracks", "track"),
        Kind::Release => ("topalbums", "album"),
    };
    let total = chart.distinct as usize;
    let mut container = El::new(container_name)
        .attr("user", &user.name)
        .attr("period", period_name)
        .attr("page", page)
        .attr("perPage", limit)
        .attr("totalPages", total.div_ceil(limit).max(1))
        .attr("total", total);
    for (i, row) in chart.rows.iter().enumerate().skip((page - 1) * limit) {
        let mut el = El::new(item)
            .attr("rank", i + 1)
            .child(El::text("name", &row.name))
            .child(El::text("playcount", row.listens))
            .child(El::text("mbid", ""));
        if let Some(a) = &row.artist {
            el = el.child(El::new("artist").child(El::text("name", a)).child(El::text("mbid", "")));
        }
        container = container.child(el);
    }
    Ok(vec![container])
}
