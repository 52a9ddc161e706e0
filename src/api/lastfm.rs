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
use crate::state::{AppState, ClientAddr, PeerAddr, TokenError};
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
    /// Attributes; the flag marks the ones Last.fm's JSON gives as numbers (`accepted`
    /// and `ignored` of a scrobble answer).
    attrs: Vec<(String, String, bool)>,
    text: Option<String>,
    /// Rendered as a JSON number rather than a string (where Last.fm's JSON has one,
    /// e.g. `subscriber` in a session: typed clients refuse a string there).
    number: Option<i64>,
    /// A list: in JSON its children named so are always an array, also with one
    /// element or none (`"track": []`), as Last.fm answers lists and typed clients
    /// expect them.
    list_of: Option<&'static str>,
    children: Vec<El>,
}

impl El {
    fn new(name: &str) -> El {
        El { name: name.into(), attrs: Vec::new(), text: None, number: None, list_of: None, children: Vec::new() }
    }
    /// A list of `item` elements (see `list_of`).
    fn list(name: &str, item: &'static str) -> El {
        El { list_of: Some(item), ..El::new(name) }
    }
    /// An element whose JSON value is a number (its XML text the same digits).
    fn number(name: &str, n: i64) -> El {
        El { number: Some(n), ..El::text(name, n) }
    }
    fn text(name: &str, text: impl ToString) -> El {
        El { text: Some(text.to_string()), ..El::new(name) }
    }
    fn attr(mut self, k: &str, v: impl ToString) -> El {
        self.attrs.push((k.into(), v.to_string(), false));
        self
    }
    /// An attribute whose JSON value is a number.
    fn attr_number(mut self, k: &str, n: i64) -> El {
        self.attrs.push((k.into(), n.to_string(), true));
        self
    }
    /// Text in XML, a number in JSON (`registered`: a date in XML, seconds in JSON).
    fn with_number(mut self, n: i64) -> El {
        self.number = Some(n);
        self
    }
    /// A page of a list's `total` items, `limit` per page, as Last.fm's attributes.
    fn paged(self, page: usize, limit: usize, total: usize) -> El {
        self.attr("page", page)
            .attr("perPage", limit)
            .attr("totalPages", total.div_ceil(limit).max(1))
            .attr("total", total)
    }
    fn children(mut self, cs: impl IntoIterator<Item = El>) -> El {
        self.children.extend(cs);
        self
    }
    fn child(mut self, c: El) -> El {
        self.children.push(c);
        self
    }

    fn xml(&self, out: &mut String) {
        out.push('<');
        out.push_str(&self.name);
        for (k, v, _) in &self.attrs {
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
        if self.children.is_empty() && self.list_of.is_none() {
            if let (Some(n), true) = (self.number, self.attrs.is_empty()) {
                return json!(n);
            }
            let text = match self.number {
                Some(n) => json!(n),
                None => json!(self.text.clone().unwrap_or_default()),
            };
            if self.attrs.is_empty() {
                return text;
            }
            let mut m: Map<String, Value> = self.attrs.iter().map(attr_json).collect();
            m.insert("#text".into(), text);
            return Value::Object(m);
        }
        let mut m = Map::new();
        if let Some(item) = self.list_of {
            m.insert(item.into(), json!([]));
        }
        for c in &self.children {
            let v = c.json();
            if Some(c.name.as_str()) == self.list_of {
                if let Some(Value::Array(a)) = m.get_mut(&c.name) {
                    a.push(v);
                }
                continue;
            }
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
            m.insert("@attr".into(), Value::Object(self.attrs.iter().map(attr_json).collect()));
        }
        Value::Object(m)
    }
}

fn attr_json((k, v, number): &(String, String, bool)) -> (String, Value) {
    let value = match v.parse::<i64>() {
        Ok(n) if *number => json!(n),
        _ => json!(v),
    };
    (k.clone(), value)
}

/// The four sizes of `image` Last.fm gives every artist, album and track; the node has
/// no pictures, so their addresses are empty, as Last.fm's are for items without one.
fn images() -> impl Iterator<Item = El> {
    ["small", "medium", "large", "extralarge"].into_iter().map(|size| El::text("image", "").attr("size", size))
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

/// Last.fm's answer to a client over the request limit (error 29), in the format the
/// query asks for (the body is not read for it).
pub fn rate_limited(query: Option<&str>, message: &str) -> Response {
    let json = query.is_some_and(|q| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(q)
            .is_ok_and(|pairs| pairs.iter().any(|(k, v)| k == "format" && v.eq_ignore_ascii_case("json")))
    });
    let mut response =
        Reply { json, result: Err((StatusCode::TOO_MANY_REQUESTS, 29, format!("Rate Limit Exceeded - {message}"))) }
            .into_response();
    response.headers_mut().insert(header::RETRY_AFTER, axum::http::HeaderValue::from_static("10"));
    response
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
    peer: PeerAddr,
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
    let base = state.front.base_url(&headers, peer.0);
    let read = Read { state: &state, params: &params, base: &base };
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
        "user.getinfo" => read.user_info(),
        "user.getrecenttracks" => read.recent_tracks(),
        "user.gettopartists" => read.top(Kind::Artist, false),
        "user.gettoptracks" => read.top(Kind::Recording, false),
        "user.gettopalbums" => read.top(Kind::Release, false),
        "library.getartists" => read.top(Kind::Artist, true),
        "user.getlovedtracks" => read.loved_tracks(),
        "user.getweeklychartlist" => read.weekly_chart_list(),
        "user.getweeklyartistchart" => read.weekly_chart(Kind::Artist),
        "user.getweeklyalbumchart" => read.weekly_chart(Kind::Release),
        "user.getweeklytrackchart" => read.weekly_chart(Kind::Recording),
        "artist.getinfo" => read.item_info(Kind::Artist).await,
        "album.getinfo" => read.item_info(Kind::Release).await,
        "track.getinfo" => read.item_info(Kind::Recording).await,
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
    session_client(state, params).map(|(user, _)| user)
}

/// The session's user, and the name its listens are recorded under: the token's that
/// opened it, else "Last.fm API client" (a session opened with the account password or
/// in the browser does not say which player holds it).
fn session_client(state: &AppState, params: &Params) -> Result<(User, String), (StatusCode, u32, String)> {
    let invalid = || fail(StatusCode::FORBIDDEN, 9, "Invalid session key - Please re-authenticate");
    let sk = params.get("sk").ok_or_else(invalid)?;
    let (user, client) = state.store.session(sk).map_err(store_err)?.ok_or_else(invalid)?;
    Ok((user, client.unwrap_or_else(|| "Last.fm API client".to_owned())))
}

async fn mobile_session(state: &AppState, addr: &ClientAddr, params: &Params) -> Outcome2 {
    if addr.0.is_some_and(|a| state.live.is_limited(a)) {
        return Err(fail(StatusCode::TOO_MANY_REQUESTS, 29, "Rate limit exceeded"));
    }
    let username = params.get("username").ok_or_else(|| bad_params("Invalid parameters - username is required"))?;
    let denied = || fail(StatusCode::FORBIDDEN, 4, "Authentication Failed - invalid username or password");
    let found = match (params.get("password"), params.get("authToken").or_else(|| params.get("authtoken"))) {
        (Some(password), _) => {
            // The account password, or an API token used as an application password.
            let by_password = state.check_password(username, password).await.map_err(store_err)?;
            let by_token = match by_password {
                Some(_) => None,
                None => state.store.user_by_token(password).map_err(store_err)?.map(|(u, t)| (u, Some(t.name))),
            };
            by_password.map(|u| (u, None)).or(by_token).filter(|(u, _)| u.name.eq_ignore_ascii_case(username))
        }
        (None, Some(auth_token)) => {
            // authToken = md5(username + md5(password)); the password is an API token.
            match state.store.user_by_name(username).map_err(store_err)? {
                Some(user) => {
                    let want = auth_token.to_ascii_lowercase();
                    let token = state
                        .store
                        .legacy_token_matching(user.id, |md5_token| {
                            strings_equal(&md5_hex(format!("{username}{md5_token}").as_bytes()), &want)
                                || strings_equal(
                                    &md5_hex(format!("{}{md5_token}", username.to_lowercase()).as_bytes()),
                                    &want,
                                )
                        })
                        .map_err(store_err)?;
                    token.map(|name| (user, Some(name)))
                }
                None => None,
            }
        }
        (None, None) => return Err(bad_params("Invalid parameters - password or authToken is required")),
    };
    let Some((user, token_name)) = found else {
        if let Some(a) = addr.0 {
            state.live.record_failure(a);
        }
        return Err(denied());
    };
    session_for(state, &user, token_name.as_deref())
}

/// Starts a session for `user` (opened with the token named `client`, if one) and
/// answers it as Last.fm does.
fn session_for(state: &AppState, user: &User, client: Option<&str>) -> Outcome2 {
    let key = state.store.create_session(user.id, crate::now_unix(), client).map_err(store_err)?;
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
    session_for(state, &user, None)
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
    let (user, client) = session_client(state, params)?;
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
        let track_number = params.get_ci(&format!("trackNumber{suffix}"));
        let parsed = Listen::parse(&raw, now)
            .and_then(|l| l.with_client(Some(client.clone())))
            .and_then(|l| l.with_info(super::audioscrobbler::track_number_info(track_number)))
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
    state.live.listened(user.id, results.iter().filter_map(|r| r.4.as_ref().ok()).map(Listen::listened_at).max());
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
    Ok(vec![container.attr_number("accepted", accepted).attr_number("ignored", ignored)])
}

fn track_of(params: &Params) -> Result<(TrackRef, Option<u32>), (StatusCode, u32, String)> {
    let raw = raw_from(params, "", 0);
    let track = TrackRef::parse(&raw).map_err(|e| bad_params(&format!("Invalid parameters - {e}")))?;
    Ok((track, raw.duration_ms.and_then(|d| u32::try_from(d).ok())))
}

fn now_playing(state: &AppState, params: &Params) -> Outcome2 {
    let (user, client) = session_client(state, params)?;
    let (track, duration) = track_of(params)?;
    let el = El::new("nowplaying")
        .child(El::text("track", &track.title).attr("corrected", 0))
        .child(El::text("artist", &track.artist).attr("corrected", 0))
        .child(El::text("album", track.album.clone().unwrap_or_default()).attr("corrected", 0))
        .child(El::text("albumArtist", "").attr("corrected", 0))
        .child(El::text("ignoredMessage", "").attr("code", 0));
    state.live.set_playing(user.id, track, Some(client), duration);
    Ok(vec![el])
}

async fn love(state: &AppState, params: &Params, love: bool) -> Outcome2 {
    let user = session_user(state, params)?;
    let (track, _) = track_of(params)?;
    let action = if love { Action::Love(track) } else { Action::Unlove(track) };
    state.ingestor.ingest(user.id, vec![action]).await.map_err(store_err)?;
    Ok(Vec::new())
}

/// A read request: the node, its parameters and the base of the URLs it hands out.
struct Read<'a> {
    state: &'a AppState,
    params: &'a Params,
    base: &'a str,
}

impl Read<'_> {
    /// The user a read names (`user` or `username`, else the session's) if the caller
    /// may see them for `purpose`.
    fn user(&self, purpose: Purpose) -> Result<User, (StatusCode, u32, String)> {
        self.named_user(purpose)?.ok_or_else(|| bad_params("Invalid parameters - user is required"))
    }

    /// As `user`, `None` when no user is named and no session sent.
    fn named_user(&self, purpose: Purpose) -> Result<Option<User>, (StatusCode, u32, String)> {
        let (state, params) = (self.state, self.params);
        let viewer = match params.get("sk") {
            Some(sk) => state.store.user_by_session(sk).map_err(store_err)?,
            None => None,
        };
        let name = match (params.get("user").or_else(|| params.get("username")), &viewer) {
            (Some(n), _) => n.to_owned(),
            (None, Some(v)) => v.name.clone(),
            (None, None) => return Ok(None),
        };
        let not_found = || fail(StatusCode::NOT_FOUND, 6, "User not found");
        let user = state.store.user_by_name(&name).map_err(store_err)?.ok_or_else(not_found)?;
        let who = crate::policy::Viewer::api_caller(viewer.as_ref().map(|v| v.id.0));
        if crate::policy::may(who, state.subject(&user), purpose).exact() { Ok(Some(user)) } else { Err(not_found()) }
    }

    fn number(&self, name: &str, default: usize, max: usize) -> Result<usize, (StatusCode, u32, String)> {
        match self.params.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| *n >= 1)
                .map(|n| n.min(max))
                .ok_or_else(|| bad_params(&format!("Invalid parameters - {name}"))),
        }
    }

    /// A unix time parameter (decimals truncated), if given.
    fn time(&self, name: &str) -> Result<Option<i64>, (StatusCode, u32, String)> {
        match self.params.get(name) {
            None => Ok(None),
            Some(v) => super::whole_number(v)
                .and_then(|n| i64::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| bad_params(&format!("Invalid parameters - {name} must be a unix time"))),
        }
    }

    /// The address of an item's page on this node (Last.fm's `url`).
    fn url(&self, user: &User, kind: Kind, name: &str, artist: Option<&str>) -> String {
        let what = match kind {
            Kind::Artist => "artist",
            Kind::Recording => "track",
            Kind::Release => "album",
        };
        let handle = crate::store::aggregates::item_handle(kind, name, artist);
        format!("{}/user/{}/{what}/{handle}", self.base, user.name)
    }

    fn user_info(&self) -> Outcome2 {
        let user = self.user(Purpose::Profile)?;
        let store = &self.state.store;
        let count = store.log_head(user.id).map_err(store_err)?.n_listens;
        let now = crate::now_unix();
        let distinct = |kind| store.chart(user.id, kind, &Period::AllTime, 0, now).map(|c| c.distinct);
        let artists = distinct(Kind::Artist).map_err(store_err)?;
        let tracks = distinct(Kind::Recording).map_err(store_err)?;
        let albums = distinct(Kind::Release).map_err(store_err)?;
        let registered = jiff::Timestamp::from_second(user.created_at)
            .map(|t| t.strftime("%Y-%m-%d %H:%M").to_string())
            .unwrap_or_default();
        Ok(vec![
            El::new("user")
                .child(El::text("name", &user.name))
                .child(El::text("realname", ""))
                .children(images())
                .child(El::text("url", format!("{}/user/{}", self.base, user.name)))
                .child(El::text("country", "None"))
                .child(El::text("age", 0))
                .child(El::text("gender", "n"))
                .child(El::text("subscriber", 0))
                .child(El::text("playcount", count))
                .child(El::text("playlists", 0))
                .child(El::text("bootstrap", 0))
                .child(
                    El::text("registered", registered).with_number(user.created_at).attr("unixtime", user.created_at),
                )
                .child(El::text("type", "user"))
                .child(El::text("artist_count", artists))
                .child(El::text("track_count", tracks))
                .child(El::text("album_count", albums)),
        ])
    }

    /// A track of a list (recent, loved): artist and album as `mbid` attributes with text.
    fn track_el(&self, user: &User, t: &TrackRef) -> El {
        let mbid = |m: &Option<[u8; 16]>| m.as_ref().map(crate::log::listen::format_mbid).unwrap_or_default();
        El::new("track")
            .child(
                El::text("artist", &t.artist)
                    .attr("mbid", t.artist_mbids.first().map(crate::log::listen::format_mbid).unwrap_or_default()),
            )
            .child(El::text("name", &t.title))
            .child(El::text("streamable", 0))
            .child(El::text("mbid", mbid(&t.recording_mbid)))
            .child(El::text("album", t.album.clone().unwrap_or_default()).attr("mbid", mbid(&t.release_mbid)))
            .child(El::text("url", self.url(user, Kind::Recording, &t.title, Some(&t.artist))))
            .children(images())
    }

    fn recent_tracks(&self) -> Outcome2 {
        let state = self.state;
        let user = self.user(Purpose::History)?;
        let limit = self.number("limit", 50, 1000)?;
        let page = self.number("page", 1, 1_000_000)?;
        let from = self.time("from")?.unwrap_or(0);
        let to = self.time("to")?.map_or(i64::MAX, |t| t.saturating_add(1));
        let total = if from == 0 && to == i64::MAX {
            state.store.log_head(user.id).map_err(store_err)?.n_listens as usize
        } else {
            usize::try_from(state.store.count_listens(user.id, from, to).map_err(store_err)?).unwrap_or(usize::MAX)
        };
        // Only the page asked for is read: earlier pages are skipped in the day index,
        // before any listen of theirs is decoded.
        let skip = (page - 1).saturating_mul(limit);
        let seen = std::cell::Cell::new(0usize);
        let mut listens = Vec::with_capacity(limit);
        state
            .store
            .each_listen_but(
                user.id,
                from,
                to,
                Order::NewestFirst,
                |_, _| {
                    seen.set(seen.get().saturating_add(1));
                    seen.get() <= skip
                },
                |l| {
                    listens.push(l);
                    Ok(listens.len() < limit)
                },
            )
            .map_err(store_err)?;
        let mut container = El::list("recenttracks", "track").attr("user", &user.name).paged(page, limit, total);
        if page == 1
            && let Some(p) = state.live.playing(user.id)
        {
            container = container.child(self.track_el(&user, &p.track).attr("nowplaying", "true"));
        }
        for l in &listens {
            let t = l.listen.track();
            let date = jiff::Timestamp::from_second(l.listen.listened_at())
                .map(|ts| ts.strftime("%d %b %Y, %H:%M").to_string())
                .unwrap_or_default();
            container = container
                .child(self.track_el(&user, t).child(El::text("date", date).attr("uts", l.listen.listened_at())));
        }
        Ok(vec![container])
    }

    /// The `artist` of a chart item: `name`, `mbid`, `url` children (top tracks and
    /// albums, loved tracks) or, in the weekly charts, text with an `mbid` attribute.
    fn artist_el(&self, user: &User, artist: &str, nested: bool) -> El {
        if nested {
            El::new("artist")
                .child(El::text("name", artist))
                .child(El::text("mbid", ""))
                .child(El::text("url", self.url(user, Kind::Artist, artist, None)))
        } else {
            El::text("artist", artist).attr("mbid", "")
        }
    }

    /// `user.getTop{Artists,Tracks,Albums}`, and `library.getArtists` (all time).
    fn top(&self, kind: Kind, library: bool) -> Outcome2 {
        let user = self.user(Purpose::Charts)?;
        let period_name = if library { "overall" } else { self.params.get("period").unwrap_or("overall") };
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
        let limit = self.number("limit", 50, 1000)?;
        let page = self.number("page", 1, 10_000)?;
        let chart =
            self.state.store.chart(user.id, kind, &period, page * limit, crate::now_unix()).map_err(store_err)?;
        let (container_name, item) = match (kind, library) {
            (Kind::Artist, true) => ("artists", "artist"),
            (Kind::Artist, false) => ("topartists", "artist"),
            (Kind::Recording, _) => ("toptracks", "track"),
            (Kind::Release, _) => ("topalbums", "album"),
        };
        let total = chart.distinct as usize;
        let mut container = El::list(container_name, item).attr("user", &user.name);
        if !library {
            container = container.attr("period", period_name);
        }
        container = container.paged(page, limit, total);
        for (i, row) in chart.rows.iter().enumerate().skip((page - 1) * limit) {
            let mut el = El::new(item);
            if !library {
                el = el.attr("rank", i + 1);
            }
            el = el
                .child(El::text("name", &row.name))
                .child(El::text("playcount", row.listens))
                .child(El::text("mbid", ""))
                .child(El::text("url", self.url(&user, kind, &row.name, row.artist.as_deref())));
            el = match kind {
                Kind::Artist => el.child(El::text("streamable", 0)),
                Kind::Recording => {
                    el.child(El::text("duration", 0)).child(El::text("streamable", 0).attr("fulltrack", 0))
                }
                Kind::Release => el,
            };
            if library {
                el = el.child(El::text("tagcount", 0));
            }
            if let Some(a) = &row.artist {
                el = el.child(self.artist_el(&user, a, true));
            }
            container = container.child(el.children(images()));
        }
        Ok(vec![container])
    }

    fn loved_tracks(&self) -> Outcome2 {
        let user = self.user(Purpose::Profile)?;
        let limit = self.number("limit", 50, 1000)?;
        let page = self.number("page", 1, 10_000)?;
        let store = &self.state.store;
        let all = store.feedback(user.id, 1, usize::MAX).map_err(store_err)?;
        let total = all.len();
        let mut container = El::list("lovedtracks", "track").attr("user", &user.name).paged(page, limit, total);
        for f in all.iter().skip((page - 1).saturating_mul(limit)).take(limit) {
            let at = store.feedback_time(user.id, f.seq).map_err(store_err)?.unwrap_or(0);
            let date = jiff::Timestamp::from_second(at)
                .map(|ts| ts.strftime("%d %b %Y, %H:%M").to_string())
                .unwrap_or_default();
            let artist = f.row.artist.clone().unwrap_or_default();
            container = container.child(
                El::new("track")
                    .child(El::text("name", &f.row.name))
                    .child(El::text("mbid", ""))
                    .child(El::text("url", self.url(&user, Kind::Recording, &f.row.name, Some(&artist))))
                    .child(El::text("date", date).attr("uts", at))
                    .child(self.artist_el(&user, &artist, true))
                    .children(images())
                    .child(El::text("streamable", 0).attr("fulltrack", 0)),
            );
        }
        Ok(vec![container])
    }

    /// The user's weeks (Monday to Monday in their time zone) from their first listen to
    /// the current one, as Last.fm lists its weekly charts.
    fn weekly_chart_list(&self) -> Outcome2 {
        let user = self.user(Purpose::Charts)?;
        let store = &self.state.store;
        let now = crate::now_unix();
        let first = store.listens(user.id, 0, i64::MAX, 1, Order::OldestFirst).map_err(store_err)?;
        let mut container = El::list("weeklychartlist", "chart").attr("user", &user.name);
        let Some(first) = first.first().map(|l| l.listen.listened_at()) else { return Ok(vec![container]) };
        let tz = crate::stats::period::time_zone(&user.timezone).map_err(|e| bad_params(&e.to_string()))?;
        // At most ten years of weeks: a list longer than that helps no client.
        let mut week_start = week_start(first.max(now - 10 * 366 * 86_400), &tz);
        while week_start <= now {
            // Noon of the next Monday is inside the next week whatever daylight saving did.
            let next = self::week_start(week_start + 7 * 86_400 + 12 * 3600, &tz);
            container = container.child(El::text("chart", "").attr("from", week_start).attr("to", next));
            week_start = next;
        }
        Ok(vec![container])
    }

    /// `user.getWeekly{Artist,Album,Track}Chart`: the chart of `[from, to)` (default:
    /// the current week).
    fn weekly_chart(&self, kind: Kind) -> Outcome2 {
        let user = self.user(Purpose::Charts)?;
        let now = crate::now_unix();
        let tz = crate::stats::period::time_zone(&user.timezone).map_err(|e| bad_params(&e.to_string()))?;
        let (from, to) = match (self.time("from")?, self.time("to")?) {
            (Some(f), Some(t)) if f < t => (f, t),
            (None, None) => {
                let from = week_start(now, &tz);
                // The next Monday 00:00, as the chart list has it (a week with a daylight
                // saving change is an hour longer or shorter than 7 × 24 h).
                (from, week_start(from + 7 * 86_400 + 12 * 3600, &tz))
            }
            _ => return Err(bad_params("Invalid parameters - from and to must both be given, from before to")),
        };
        let limit = self.number("limit", 50, 1000)?;
        let chart =
            self.state.store.chart(user.id, kind, &Period::Range { from, to }, limit, now).map_err(|e| match e {
                crate::store::Error::Invalid(m) => bad_params(&format!("Invalid parameters - {m}")),
                other => store_err(other),
            })?;
        let (container_name, item) = match kind {
            Kind::Artist => ("weeklyartistchart", "artist"),
            Kind::Recording => ("weeklytrackchart", "track"),
            Kind::Release => ("weeklyalbumchart", "album"),
        };
        let mut container = El::list(container_name, item).attr("user", &user.name).attr("from", from).attr("to", to);
        for (i, row) in chart.rows.iter().enumerate() {
            let mut el = El::new(item).attr("rank", i + 1);
            if let Some(a) = &row.artist {
                el = el.child(self.artist_el(&user, a, false));
            }
            el = el
                .child(El::text("name", &row.name))
                .child(El::text("mbid", ""))
                .child(El::text("playcount", row.listens))
                .child(El::text("url", self.url(&user, kind, &row.name, row.artist.as_deref())));
            if kind == Kind::Recording {
                el = el.children(images());
            }
            container = container.child(el);
        }
        Ok(vec![container])
    }

    /// `artist.getInfo`, `album.getInfo`, `track.getInfo`. The item's `listeners` and
    /// `playcount` are the node's public profiles' (the node chart's), its
    /// `userplaycount` (and `userloved`) those of the user named by `username` or the
    /// session, if the caller may see that user's charts.
    async fn item_info(&self, kind: Kind) -> Outcome2 {
        let params = self.params;
        let artist = params.get("artist").ok_or_else(|| bad_params("Invalid parameters - artist is required"))?;
        let name = match kind {
            Kind::Artist => artist,
            Kind::Recording => {
                params.get("track").ok_or_else(|| bad_params("Invalid parameters - track is required"))?
            }
            Kind::Release => params.get("album").ok_or_else(|| bad_params("Invalid parameters - album is required"))?,
        };
        let artist_of_item = (kind != Kind::Artist).then_some(artist);
        let handle = crate::store::aggregates::item_handle(kind, name, artist_of_item);
        let store = &self.state.store;
        let now = crate::now_unix();
        // The item by identity, then its row alone: O(1) in the node's items.
        let id = self.state.ingestor.item_id(kind, name, artist_of_item).await.map_err(store_err)?;
        // The dictionary holds every member's items, private ones' too: an unknown item
        // reads the counts of one all the same (as an item no counted member played
        // does), so the time taken does not tell whether anyone on the node ever played
        // it (only the node chart's answer does).
        let node = match id {
            Some(id) => store.node_item(kind, id).map_err(store_err)?,
            None => {
                store.node_item_counts(kind, crate::store::keys::BUCKET_ALL, 0, 0).map_err(store_err)?;
                None
            }
        };
        let on_node = node.as_ref().filter(|r| r.row.handle == handle);
        let user = self.named_user(Purpose::Charts)?;
        let mine = match &user {
            Some(u) => {
                let chart = store.chart(u.id, kind, &Period::AllTime, usize::MAX, now).map_err(store_err)?;
                chart.rows.into_iter().find(|r| r.handle == handle)
            }
            None => None,
        };
        if on_node.is_none() && mine.is_none() {
            let what = match kind {
                Kind::Artist => "The artist you supplied could not be found",
                Kind::Recording => "Track not found",
                Kind::Release => "Album not found",
            };
            return Err(fail(StatusCode::NOT_FOUND, 6, what));
        }
        // Named as the node or the user spells it.
        let (shown_name, shown_artist) = match (on_node, &mine) {
            (_, Some(r)) => (r.name.clone(), r.artist.clone()),
            (Some(r), None) => (r.row.name.clone(), r.row.artist.clone()),
            (None, None) => (name.to_owned(), artist_of_item.map(str::to_owned)),
        };
        let (listeners, playcount) = on_node.map_or((0, 0), |r| (r.listeners, r.row.listens));
        // The item's page is a user's; with no user named, the node's home page (where its
        // chart is).
        let url = match &user {
            Some(u) => self.url(u, kind, &shown_name, shown_artist.as_deref()),
            None => format!("{}/", self.base),
        };
        let mut el = El::new(match kind {
            Kind::Artist => "artist",
            Kind::Recording => "track",
            Kind::Release => "album",
        })
        .child(El::text("name", &shown_name));
        let user_fields = |mut el: El| -> Result<El, (StatusCode, u32, String)> {
            if let (Some(u), Some(r)) = (&user, &mine) {
                el = el.child(El::text("userplaycount", r.listens));
                if kind == Kind::Recording {
                    let loved = store.feedback_score(u.id, r.id).map_err(store_err)? == Some(1);
                    el = el.child(El::text("userloved", u8::from(loved)));
                }
            } else if user.is_some() {
                el = el.child(El::text("userplaycount", 0));
                if kind == Kind::Recording {
                    el = el.child(El::text("userloved", 0));
                }
            }
            Ok(el)
        };
        match kind {
            Kind::Artist => {
                el = el
                    .child(El::text("mbid", ""))
                    .child(El::text("url", url))
                    .children(images())
                    .child(El::text("streamable", 0))
                    .child(El::text("ontour", 0));
                let stats =
                    El::new("stats").child(El::text("listeners", listeners)).child(El::text("playcount", playcount));
                el = el.child(user_fields(stats)?);
            }
            Kind::Release => {
                el = el
                    .child(El::text("artist", shown_artist.clone().unwrap_or_default()))
                    .child(El::text("mbid", ""))
                    .child(El::text("url", url))
                    .children(images())
                    .child(El::text("listeners", listeners))
                    .child(El::text("playcount", playcount));
                el = user_fields(el)?;
            }
            Kind::Recording => {
                let artist_name = shown_artist.clone().unwrap_or_default();
                el = el
                    .child(El::text("mbid", ""))
                    .child(El::text("url", url))
                    .child(El::text("duration", 0))
                    .child(El::text("streamable", 0).attr("fulltrack", 0))
                    .child(El::text("listeners", listeners))
                    .child(El::text("playcount", playcount))
                    .child(match &user {
                        Some(u) => self.artist_el(u, &artist_name, true),
                        None => El::new("artist")
                            .child(El::text("name", &artist_name))
                            .child(El::text("mbid", ""))
                            .child(El::text("url", format!("{}/", self.base))),
                    });
                el = user_fields(el)?;
            }
        }
        Ok(vec![el])
    }
}

/// The start (Monday 00:00 local) of the week holding `t`.
fn week_start(t: i64, tz: &jiff::tz::TimeZone) -> i64 {
    let date = crate::stats::period::local_date(t, tz);
    let monday =
        date.checked_sub(jiff::Span::new().days(i64::from(date.weekday().to_monday_zero_offset()))).unwrap_or(date);
    monday.to_zoned(tz.clone()).map_or(t, |z| z.timestamp().as_second())
}
