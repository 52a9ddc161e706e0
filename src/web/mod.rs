//! The local web view: server-rendered pages (maud templates, escaped by construction),
//! usable without JavaScript. Today: home (the node's chart this week and public users'
//! recent listens), log-in and log-out with cookie sessions and CSRF tokens, user
//! profiles (top artists, tracks and albums with a period switcher, recent listens, now
//! playing, loves) shown only as each user's visibility allows, and a 404 page that is
//! the same for a missing and a hidden profile.

use std::collections::HashMap;

pub mod plot;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};

mod downloads;
mod network;
mod transparency;
pub mod upload;

use crate::state::AppState;
use crate::state::ClientAddr;
use crate::stats::chart::Kind;
use crate::stats::period::Period;
use crate::store::logs::Order;
use crate::store::users::{SharingLevel, User};

const COOKIE: &str = "hearsay_session";
/// Cookie holding the token that forms shown before log-in must echo (double-submit
/// CSRF protection for the log-in and registration forms).
const FORM_COOKIE: &str = "hearsay_form";

fn named_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// The pre-session form token of this browser, and a cookie to set when it is new.
fn form_token(headers: &HeaderMap) -> (String, Option<String>) {
    match named_cookie(headers, FORM_COOKIE).filter(|t| t.len() == 32) {
        Some(t) => (t, None),
        None => {
            let t = crate::auth::random_bytes::<16>().map(hex::encode).unwrap_or_default();
            let cookie = format!("{FORM_COOKIE}={t}; Path=/; HttpOnly; SameSite=Strict");
            (t, Some(cookie))
        }
    }
}

fn with_cookie(mut response: Response, cookie: Option<String>) -> Response {
    if let Some(v) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

/// True when a pre-session form echoes this browser's form token.
fn form_token_ok(headers: &HeaderMap, fields: &HashMap<String, String>) -> bool {
    match (named_cookie(headers, FORM_COOKIE), fields.get("form_token")) {
        (Some(c), Some(f)) => crate::auth::strings_equal(&c, f),
        _ => false,
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/user/{name}", get(profile))
        .route("/user/{name}/history", get(history))
        .route("/user/{name}/weekly", get(weekly))
        .route("/user/{name}/{what}/{id}", get(item))
        .route("/user/{name}/history/delete", post(delete_listen))
        .route("/settings", get(settings))
        .route("/connect", get(connect))
        .route("/admin", get(admin))
        .route("/admin/invite", post(invite))
        .route("/register", get(register_page).post(register))
        .route("/api/auth/", get(approval_page).post(approve))
        .route("/api/auth", get(approval_page).post(approve))
        .route("/settings/delete", get(delete_page).post(delete_account))
        .route("/settings/visibility", post(set_visibility))
        .route("/settings/timezone", post(set_timezone))
        .route("/settings/pause", post(set_pause))
        .route("/settings/tokens", post(create_token))
        .route("/settings/tokens/revoke", post(revoke_token))
        .route("/settings/export/{format}", get(downloads::download))
        .route(
            "/import",
            get(upload::form)
                .post(upload::upload)
                .layer(axum::extract::DefaultBodyLimit::max(upload::MAX_UPLOAD_BYTES)),
        )
        .route("/import/{job}", get(upload::status))
        .route("/privacy", get(transparency::page_handler))
        .route("/network", get(network::page_handler))
        .route("/api/network", get(network::json))
        .route("/network/community/{id}", get(network::community_page))
        .route("/network/community/{id}/{action}", post(network::edit_members))
        .route("/releases", get(transparency::release_list))
        .route("/releases/{start}", get(transparency::release_bytes))
        .fallback(not_found)
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:60rem;margin:0 auto;padding:0 1rem;color:#1d1d1f;background:#fafafa}\
nav{display:flex;gap:1rem;align-items:center;padding:.75rem 0;border-bottom:1px solid #ddd}nav a{color:#0b57d0}\
h1{font-size:1.6rem}table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.25rem .5rem;border-bottom:1px solid #eee}\
.cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(16rem,1fr));gap:1.5rem}.muted{color:#555}\
figure{margin:0}.clock td{width:1.2rem;height:1.2rem;padding:0;border:1px solid #fff}.clock th{font-size:.7rem;font-weight:normal}\
.sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}figure svg{max-width:100%;height:auto}.periods a{margin-right:.5rem}.periods a[aria-current]{font-weight:bold}label{display:block;margin:.5rem 0}\
input{font-size:1rem;padding:.3rem}button{font-size:1rem;padding:.3rem .8rem}.error{color:#a00000}";

/// The signed-in user of a request and their CSRF token, if any.
struct Viewer(Option<(User, String)>);

/// Whether the viewer is one of the node's administrators (`node.admins`).
fn is_admin(state: &AppState, v: &Viewer) -> bool {
    v.0.as_ref().is_some_and(|(me, _)| state.admins.iter().any(|a| a.eq_ignore_ascii_case(&me.name)))
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    named_cookie(headers, COOKIE)
}

fn viewer(state: &AppState, headers: &HeaderMap) -> Viewer {
    Viewer(cookie_value(headers).and_then(|k| state.store.web_session(&k).ok().flatten()))
}

fn layout(title: &str, viewer: &Viewer, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · hearsay" }
                style { (maud::PreEscaped(STYLE)) }
            }
            body {
                nav aria-label="main" {
                    a href="/" { strong { "hearsay" } }
                    @if let Some((user, csrf)) = &viewer.0 {
                        a href={ "/user/" (user.name) } { (user.name) }
                        a href={ "/user/" (user.name) "/history" } { "History" }
                        a href="/settings" { "Settings" }
                        a href="/connect" { "Connect a player" }
                        a href="/import" { "Import" }
                        a href="/privacy" { "Privacy" }
                        a href="/network" { "Network" }
                        form method="post" action="/logout" style="margin-left:auto" {
                            input type="hidden" name="csrf" value=(csrf);
                            button { "Log out" }
                        }
                    } @else {
                        a href="/login" style="margin-left:auto" { "Log in" }
                    }
                }
                main { (body) }
            }
        }
    }
}

fn page(status: StatusCode, title: &str, viewer: &Viewer, body: Markup) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], layout(title, viewer, body).into_string())
        .into_response()
}

fn not_found_page(viewer: &Viewer) -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Not found",
        viewer,
        html! {
            h1 { "Not found" }
            p { "There is nothing here, or it is not yours to see." }
            p { a href="/" { "Back to the start" } }
        },
    )
}

async fn not_found(State(state): State<AppState>, headers: HeaderMap) -> Response {
    not_found_page(&viewer(&state, &headers))
}

fn server_error(viewer: &Viewer, e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "web view error");
    page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        viewer,
        html! {
            h1 { "Something went wrong" }
            p { "The node could not show this page. Try again in a moment." }
        },
    )
}

/// `/`: the home page (`http` hands Audioscrobbler handshakes at `/?hs=…` to `api`).
pub async fn home(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let viewer = viewer(&state, &headers);
    let now = crate::now_unix();
    let tz = crate::stats::period::time_zone(&state.node_timezone).unwrap_or(jiff::tz::TimeZone::UTC);
    let week = crate::stats::period::local_date(now, &tz).iso_week_date();
    let this_week = Period::IsoWeek { year: week.year(), week: week.week() };
    // The exact node chart is for the node's members only; visitors see what the node
    // has published (docs/privacy.md).
    let chart = if viewer.0.is_some() {
        match state.store.node_chart(Kind::Artist, &this_week, 10, now, &tz) {
            Ok(c) => Some(c),
            Err(e) => return server_error(&viewer, e),
        }
    } else {
        None
    };
    let latest = state.store.releases(1).unwrap_or_default().into_iter().next();
    let mut recent = Vec::new();
    for user in state.store.users().unwrap_or_default().into_iter().filter(|u| u.visibility == SharingLevel::Public) {
        for l in state.store.listens(user.id, 0, i64::MAX, 10, Order::NewestFirst).unwrap_or_default() {
            recent.push((user.name.clone(), l));
        }
    }
    recent.sort_by_key(|r| std::cmp::Reverse(r.1.listen.listened_at()));
    recent.truncate(15);
    page(
        StatusCode::OK,
        "Home",
        &viewer,
        html! {
            @if let Some(chart) = &chart {
                h1 { "This week among this node's members" }
                p.muted { "Only members of this node see this chart; it never leaves the node. Private members are not in it." }
                @if chart.rows.is_empty() {
                    p.muted { "No listens shared on this node this week yet." }
                } @else {
                    p.muted { (chart.listens) " listens from " (chart.listeners) " listeners" }
                    table {
                        thead { tr { th { "#" } th { "Artist" } th { "Listeners" } th { "Listens" } } }
                        tbody {
                            @for (i, r) in chart.rows.iter().enumerate() {
                                tr { td { (i + 1) } td { (r.row.name) } td { (r.listeners) } td { (r.row.listens) } }
                            }
                        }
                    }
                }
            } @else {
                h1 { "hearsay" }
                p { "A node of a federated scrobble network: its members' listening stays here; only what they choose leaves, as aggregates. " a href="/privacy" { "What this node publishes" } "." }
            }
            h2 { "Latest release of this node" }
            @if let Some((start, bytes)) = &latest {
                (transparency::snapshot_view(*start, bytes))
            } @else {
                p.muted { "Nothing published yet." }
            }
            h2 { "Recently, from public profiles" }
            @if recent.is_empty() { p.muted { "Nobody here shares their listening publicly yet." } }
            ul {
                @for (name, l) in &recent {
                    li { a href={ "/user/" (name) } { (name) } " — " (l.listen.track().artist) " – " (l.listen.track().title) }
                }
            }
        },
    )
}

async fn login_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let (token, cookie) = form_token(&headers);
    with_cookie(login_form(&viewer(&state, &headers), &token, None, StatusCode::OK), cookie)
}

fn login_form(viewer: &Viewer, form_token: &str, error: Option<&str>, status: StatusCode) -> Response {
    page(
        status,
        "Log in",
        viewer,
        html! {
            h1 { "Log in" }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form method="post" action="/login" {
                input type="hidden" name="form_token" value=(form_token);
                label { "User name " input name="username" autocomplete="username" required; }
                label { "Password " input type="password" name="password" autocomplete="current-password" required; }
                button { "Log in" }
            }
        },
    )
}

fn form_fields(body: &Bytes) -> HashMap<String, String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body).unwrap_or_default().into_iter().collect()
}

async fn login(State(state): State<AppState>, addr: ClientAddr, headers: HeaderMap, body: Bytes) -> Response {
    let v = viewer(&state, &headers);
    let f = form_fields(&body);
    let (token, cookie) = form_token(&headers);
    if !form_token_ok(&headers, &f) {
        return with_cookie(
            login_form(&v, &token, Some("This form has expired. Try again."), StatusCode::FORBIDDEN),
            cookie,
        );
    }
    if addr.0.is_some_and(|a| state.live.is_limited(a)) {
        return login_form(&v, &token, Some("Too many failed attempts. Wait a minute."), StatusCode::TOO_MANY_REQUESTS);
    }
    let (name, password) = (f.get("username").map_or("", String::as_str), f.get("password").map_or("", String::as_str));
    let user = match state.store.check_password(name, password) {
        Ok(Some(u)) => u,
        Ok(None) => {
            if let Some(a) = addr.0 {
                state.live.record_failure(a);
            }
            return login_form(&v, &token, Some("Wrong user name or password."), StatusCode::UNAUTHORIZED);
        }
        Err(e) => return server_error(&v, e),
    };
    let (key, _) = match state.store.create_web_session(user.id, crate::now_unix()) {
        Ok(s) => s,
        Err(e) => return server_error(&v, e),
    };
    let secure = if state.secure_cookies { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={key}; Path=/; HttpOnly; SameSite=Lax; Max-Age=2592000{secure}");
    let mut response = Redirect::to(&format!("/user/{}", user.name)).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

async fn logout(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let v = viewer(&state, &headers);
    let f = form_fields(&body);
    let (Some((_, csrf)), Some(key)) = (&v.0, cookie_value(&headers)) else { return Redirect::to("/").into_response() };
    if !f.get("csrf").is_some_and(|c| crate::auth::strings_equal(c, csrf)) {
        return page(
            StatusCode::FORBIDDEN,
            "Refused",
            &v,
            html! { h1 { "Refused" } p { "This form has expired. Go back and try again." } },
        );
    }
    if let Err(e) = state.store.end_web_session(&key) {
        return server_error(&v, e);
    }
    let mut response = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0")) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// Period choices on profiles: (query value, label, period).
fn periods() -> [(&'static str, &'static str, Period); 6] {
    [
        ("7d", "Last 7 days", Period::LastDays(7)),
        ("1m", "Last month", Period::LastMonths(1)),
        ("3m", "Last 3 months", Period::LastMonths(3)),
        ("6m", "Last 6 months", Period::LastMonths(6)),
        ("12m", "Last 12 months", Period::LastMonths(12)),
        ("all", "All time", Period::AllTime),
    ]
}

async fn profile(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let v = viewer(&state, &headers);
    let user = match state.store.user_by_name(&name) {
        Ok(Some(u)) => u,
        Ok(None) => return not_found_page(&v),
        Err(e) => return server_error(&v, e),
    };
    let own = v.0.as_ref().is_some_and(|(me, _)| me.id == user.id);
    if !own && user.visibility != SharingLevel::Public {
        // A hidden profile looks exactly like a missing one.
        return not_found_page(&v);
    }
    let chosen = q.get("period").map_or("7d", String::as_str);
    let Some((key, label, period)) = periods().into_iter().find(|(k, _, _)| *k == chosen) else {
        return not_found_page(&v);
    };
    let now = crate::now_unix();
    let charts: Result<Vec<_>, _> =
        Kind::ALL.iter().map(|kind| state.store.chart(user.id, *kind, &period, 10, now)).collect();
    let charts = match charts {
        Ok(c) => c,
        Err(e) => return server_error(&v, e),
    };
    let recent = state.store.listens(user.id, 0, i64::MAX, 20, Order::NewestFirst).unwrap_or_default();
    let loves = state.store.feedback(user.id, 1, 10).unwrap_or_default();
    let playing = state.live.playing(user.id);
    let total = state.store.log_head(user.id).map(|h| h.n_listens).unwrap_or(0);
    let weekly = state
        .store
        .listens_series(user.id, &Period::LastMonths(12), crate::store::aggregates::Step::Week, now)
        .unwrap_or_default();
    let weekly_total: u64 = weekly.iter().map(|(_, n)| n).sum();
    let plot = plot::listens_svg(&weekly, 720, 140);
    let clock = state.store.clock(user.id, &period, now).unwrap_or([[0; 24]; 7]);
    let neighbours = if own { state.store.neighbours(user.id, 5).unwrap_or_default() } else { Vec::new() };
    page(
        StatusCode::OK,
        &user.name,
        &v,
        html! {
            h1 { (user.name) }
            p.muted { (total) " listens" @if own { " · your profile is " (user.visibility.as_str()) } }
        @if own && state.store.is_paused(user.id).unwrap_or(false) {
            p role="status" { strong { "Scrobbling is paused" } " — submissions are not stored. " a href="/settings" { "Resume" } }
        }
            @if let Some(p) = &playing { p { "Now playing: " strong { (p.track.artist) " – " (p.track.title) } } }
            nav.periods aria-label="period" {
                @for (k, l, _) in periods() {
                    @if k == key { a href={ "?period=" (k) } aria-current="page" { (l) } } @else { a href={ "?period=" (k) } { (l) } }
                }
            }
            h2 { (label) }
            div.cols {
                @for (title, what, chart) in [("Top artists", "artist", &charts[0]), ("Top tracks", "track", &charts[1]), ("Top albums", "album", &charts[2])] {
                    section {
                        h3 { (title) }
                        @if chart.rows.is_empty() { p.muted { "Nothing in this period." } }
                        ol {
                            @for r in &chart.rows {
                                li { a href={ "/user/" (user.name) "/" (what) "/" (r.id) } { @if let Some(a) = &r.artist { (a) " – " } (r.name) } " " span.muted { "(" (r.listens) ")" } }
                            }
                        }
                    }
                }
            }
            p { a href={ "/user/" (user.name) "/weekly" } { "Weekly charts" } }
        h2 { "Listens per week, last 12 months" }
        figure role="img" aria-label={ (weekly_total) " listens over the last 12 months, per week" } {
            (maud::PreEscaped(plot))
        }
        h2 { "Listening clock" }
        (clock_table(&clock))
        @if !neighbours.is_empty() {
            h2 { "Listens like you" }
            ul {
                @for n in &neighbours {
                    li {
                        @if n.user.visibility == SharingLevel::Public { a href={ "/user/" (n.user.name) } { (n.user.name) } } @else { (n.user.name) }
                        " " span.muted { (format!("{:.0}%", n.similarity * 100.0)) }
                    }
                }
            }
        }
        h2 { "Recent listens" }
            @if recent.is_empty() { p.muted { "No listens yet." } }
            table {
                tbody {
                    @for l in &recent {
                        tr {
                            td { (l.listen.track().artist) }
                            td { (l.listen.track().title) }
                            td.muted { (jiff::Timestamp::from_second(l.listen.listened_at()).map(|t| t.strftime("%Y-%m-%d %H:%M").to_string()).unwrap_or_default()) }
                        }
                    }
                }
            }
            @if !loves.is_empty() {
                h2 { "Loved tracks" }
                ul { @for f in &loves { li { @if let Some(a) = &f.row.artist { (a) " – " } (f.row.name) } } }
            }
        },
    )
}

/// Listens per history page.
const PAGE: usize = 50;

fn csrf_ok(viewer: &Viewer, fields: &HashMap<String, String>) -> bool {
    match (&viewer.0, fields.get("csrf")) {
        (Some((_, want)), Some(got)) => crate::auth::strings_equal(got, want),
        _ => false,
    }
}

/// The viewer, signed-in user and fields of a form post carrying this session's CSRF
/// token; otherwise the response to send (to the log-in page, or refused).
fn signed_form(
    state: &AppState,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Viewer, User, HashMap<String, String>), Box<Response>> {
    let v = viewer(state, headers);
    let f = form_fields(body);
    let Some((me, _)) = v.0.clone() else { return Err(Box::new(Redirect::to("/login").into_response())) };
    if !csrf_ok(&v, &f) {
        return Err(Box::new(refused(&v)));
    }
    Ok((v, me, f))
}

fn refused(viewer: &Viewer) -> Response {
    page(
        StatusCode::FORBIDDEN,
        "Refused",
        viewer,
        html! { h1 { "Refused" } p { "This form has expired. Go back, reload and try again." } },
    )
}

/// `/user/{name}/history?page=N`: every listen, newest first, with delete buttons for
/// the owner.
pub async fn history(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let v = viewer(&state, &headers);
    let Ok(Some(user)) = state.store.user_by_name(&name) else { return not_found_page(&v) };
    let own = v.0.as_ref().is_some_and(|(me, _)| me.id == user.id);
    if !own && user.visibility != SharingLevel::Public {
        return not_found_page(&v);
    }
    let page_no = q.get("page").and_then(|p| p.parse::<usize>().ok()).filter(|p| *p >= 1).unwrap_or(1);
    let total = state.store.log_head(user.id).map(|h| h.n_listens as usize).unwrap_or(0);
    let pages = total.div_ceil(PAGE).max(1);
    if page_no > pages {
        return not_found_page(&v);
    }
    let listens = match state.store.listens(user.id, 0, i64::MAX, page_no * PAGE, Order::NewestFirst) {
        Ok(l) => l,
        Err(e) => return server_error(&v, e),
    };
    let csrf = v.0.as_ref().map(|(_, c)| c.clone()).unwrap_or_default();
    page(
        StatusCode::OK,
        &format!("{} · history", user.name),
        &v,
        html! {
            h1 { a href={ "/user/" (user.name) } { (user.name) } " · history" }
            p.muted { (total) " listens · page " (page_no) " of " (pages) }
            table {
                thead { tr { th { "When (UTC)" } th { "Artist" } th { "Track" } th { "Album" } @if own { th { span.muted { "Delete" } } } } }
                tbody {
                    @for l in listens.iter().skip((page_no - 1) * PAGE) {
                        tr {
                            td.muted { (jiff::Timestamp::from_second(l.listen.listened_at()).map(|t| t.strftime("%Y-%m-%d %H:%M").to_string()).unwrap_or_default()) }
                            td { (l.listen.track().artist) }
                            td { (l.listen.track().title) }
                            td { (l.listen.track().album.clone().unwrap_or_default()) }
                            @if own {
                                td {
                                    form method="post" action={ "/user/" (user.name) "/history/delete" } {
                                        input type="hidden" name="csrf" value=(csrf);
                                        input type="hidden" name="seq" value=(l.seq);
                                        input type="hidden" name="page" value=(page_no);
                                        button aria-label={ "Delete " (l.listen.track().title) } { "Delete" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            nav aria-label="pages" {
                @if page_no > 1 { a href={ "?page=" (page_no - 1) } { "Newer" } }
                @if page_no < pages { a href={ "?page=" (page_no + 1) } { "Older" } }
            }
        },
    )
}

/// Deletes one of the signed-in user's listens (a tombstone in their log).
pub async fn delete_listen(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let v = viewer(&state, &headers);
    let f = form_fields(&body);
    let Some((me, _)) = v.0.as_ref().filter(|(me, _)| me.name.eq_ignore_ascii_case(&name)) else {
        return not_found_page(&v);
    };
    if !csrf_ok(&v, &f) {
        return refused(&v);
    }
    let Some(seq) = f.get("seq").and_then(|s| s.parse::<u64>().ok()) else { return refused(&v) };
    if let Err(e) = state.ingestor.ingest(me.id, vec![crate::store::Action::Delete { seq }]).await {
        return server_error(&v, e);
    }
    let back = f.get("page").map_or("1", String::as_str);
    Redirect::to(&format!("/user/{}/history?page={}", me.name, back.parse::<usize>().unwrap_or(1))).into_response()
}

/// `/settings`: sharing level and API tokens of the signed-in user.
pub async fn settings(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let v = viewer(&state, &headers);
    settings_page(&state, &v, None, StatusCode::OK)
}

fn settings_page(state: &AppState, v: &Viewer, message: Option<Markup>, status: StatusCode) -> Response {
    let Some((me, csrf)) = &v.0 else { return Redirect::to("/login").into_response() };
    let tokens = state.store.tokens(me.id).unwrap_or_default();
    let paused = state.store.is_paused(me.id).unwrap_or(false);
    let levels = [
        (
            SharingLevel::Private,
            "Private: nothing derived from your listening leaves this node or is shown to anyone else. Other members do not see you in the node chart or as a neighbour, and you are in no release.".to_owned(),
        ),
        (
            SharingLevel::Aggregate,
            format!(
                "Aggregate (default): members of this node see your listening inside the node chart, never your profile. Outside the node you count only in the aggregate section of each release: at most your top {l0} artists and tracks, at most {c} listens each, with differential privacy, so nobody can tell whether you were in it.",
                l0 = state.privacy.l0,
                c = state.privacy.clamp
            ),
        ),
        (
            SharingLevel::Public,
            "Public: anyone can see your profile and history, and your exact listening counts go into the public section of each release.".to_owned(),
        ),
    ];
    page(
        status,
        "Settings",
        v,
        html! {
            h1 { "Settings" }
            @if let Some(m) = message { div role="status" { (m) } }
            h2 { "Who sees your listening" }
            form method="post" action="/settings/visibility" {
                input type="hidden" name="csrf" value=(csrf);
                fieldset {
                    legend { "Sharing level" }
                    @for (level, text) in levels {
                        label {
                            @if me.visibility == level {
                                input type="radio" name="level" value=(level.as_str()) checked;
                            } @else {
                                input type="radio" name="level" value=(level.as_str());
                            }
                            " " (text)
                        }
                    }
                }
                p.muted { "A change applies from the next release. " a href="/privacy" { "What this node has published, and what of you" } "." }
                button { "Save" }
            }
            h2 { "Pause scrobbling" }
        form method="post" action="/settings/pause" {
            input type="hidden" name="csrf" value=(csrf);
            @if paused {
                p role="status" { strong { "Scrobbling is paused." } " Your players' submissions are accepted and thrown away: nothing is stored." }
                input type="hidden" name="paused" value="no";
                button { "Resume scrobbling" }
            } @else {
                p { "Incognito: while paused, submissions from your players are accepted (so they do not retry) and not stored." }
                input type="hidden" name="paused" value="yes";
                button { "Pause scrobbling" }
            }
        }
        h2 { "Time zone" }
        form method="post" action="/settings/timezone" {
            input type="hidden" name="csrf" value=(csrf);
            label { "Your periods (this week, this month…) start at midnight in " input name="timezone" value=(me.timezone) required maxlength="64" list="zones"; }
            datalist id="zones" { @for z in ["UTC", "Europe/London", "Europe/Berlin", "Europe/Paris", "America/New_York", "America/Chicago", "America/Los_Angeles", "Asia/Tokyo", "Australia/Sydney"] { option value=(z) {} } }
            button { "Save" }
        }
        h2 { "API tokens" }
            p.muted { "Give a player a token to scrobble to this node (ListenBrainz clients use it as is; Last.fm 2.0 and Audioscrobbler 1.2 clients use it as the password). See docs/api-compat.md for each player." }
            table {
                tbody {
                    @for t in &tokens {
                        tr {
                            td { (t.name) }
                            td {
                                form method="post" action="/settings/tokens/revoke" {
                                    input type="hidden" name="csrf" value=(csrf);
                                    input type="hidden" name="id" value=(t.id);
                                    button aria-label={ "Revoke " (t.name) } { "Revoke" }
                                }
                            }
                        }
                    }
                }
            }
        form method="post" action="/settings/tokens" {
                input type="hidden" name="csrf" value=(csrf);
                label { "Name for a new token (e.g. the player) " input name="name" required maxlength="64"; }
                button { "Create token" }
            }
            h2 { "Your data" }
            p { a href="/import" { "Import your history" } " from ListenBrainz, Last.fm, Spotify, Maloja or a Rockbox player." }
            p {
                "Download all your listens: "
                a href="/settings/export/listenbrainz" download { "ListenBrainz JSONL" }
                " (ListenBrainz and hearsay import it) or "
                a href="/settings/export/csv" download { "CSV" } "."
            }
            p { a href="/settings/delete" { "Delete all my data" } }
        },
    )
}

pub async fn set_visibility(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let (v, me, f) = match signed_form(&state, &headers, &body) {
        Ok(signed) => signed,
        Err(response) => return *response,
    };
    let Some(level) = f.get("level").and_then(|l| SharingLevel::parse(l)) else {
        return settings_page(
            &state,
            &v,
            Some(html! { p.error { "Choose a sharing level." } }),
            StatusCode::BAD_REQUEST,
        );
    };
    if let Err(e) = state.store.set_visibility(me.id, level) {
        return server_error(&v, e);
    }
    let v = viewer(&state, &headers);
    settings_page(
        &state,
        &v,
        Some(html! { p { "Your sharing level is now " strong { (level.as_str()) } "." } }),
        StatusCode::OK,
    )
}

pub async fn create_token(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let (v, me, f) = match signed_form(&state, &headers, &body) {
        Ok(signed) => signed,
        Err(response) => return *response,
    };
    let name = f.get("name").map(|n| n.trim()).unwrap_or_default();
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return settings_page(
            &state,
            &v,
            Some(html! { p.error { "Give the token a name of 1 to 64 characters." } }),
            StatusCode::BAD_REQUEST,
        );
    }
    match state.store.create_token(me.id, name, crate::now_unix()) {
        Ok((token, _)) => settings_page(
            &state,
            &v,
            Some(html! { p { "New token for " (name) " — copy it now, it is not shown again: " code { (token) } } }),
            StatusCode::OK,
        ),
        Err(e) => server_error(&v, e),
    }
}

pub async fn revoke_token(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let (v, me, f) = match signed_form(&state, &headers, &body) {
        Ok(signed) => signed,
        Err(response) => return *response,
    };
    let Some(id) = f.get("id").and_then(|i| i.parse::<u32>().ok()) else { return refused(&v) };
    match state.store.revoke_token(me.id, id) {
        Ok(_) => settings_page(&state, &v, Some(html! { p { "Token revoked." } }), StatusCode::OK),
        Err(e) => server_error(&v, e),
    }
}

/// `/connect`: what to paste into each player, with this node's address filled in.
pub async fn connect(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let v = viewer(&state, &headers);
    let Some((me, _)) = &v.0 else { return Redirect::to("/login").into_response() };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1:8487");
    let node = format!("http://{host}");
    let rows = [
        (
            "Navidrome",
            "ListenBrainz",
            format!(
                "ND_LISTENBRAINZ_BASEURL={node}/1/ — then enable ListenBrainz in your Navidrome settings with a token"
            ),
        ),
        ("Jellyfin (ListenBrainz plugin)", "ListenBrainz", format!("ListenBrainz API URL: {node} — and a token")),
        ("Web Scrobbler", "ListenBrainz", format!("API URL: {node}/1/submit-listens — and a token")),
        ("Pano Scrobbler", "ListenBrainz", format!("custom API root: {node}/ — and a token")),
        ("mpdscribble", "Audioscrobbler 1.2", format!("url = {node}/ · username = {} · password = a token", me.name)),
        (
            "pylast",
            "Last.fm 2.0",
            format!(
                "ws_server = (\"{host}\", \"/2.0/\") · user name {} · a token as the password (HTTPS only: put TLS in front)",
                me.name
            ),
        ),
    ];
    page(
        StatusCode::OK,
        "Connect a player",
        &v,
        html! {
            h1 { "Connect a player" }
            p { "Make a token under " a href="/settings" { "Settings" } " for each player, then set it up as below." }
            table {
                thead { tr { th { "Player" } th { "Protocol" } th { "What to set" } } }
                tbody { @for (player, protocol, what) in &rows { tr { td { (player) } td { (protocol) } td { code { (what) } } } } }
            }
            h2 { "pylast" }
            pre { code { "import pylast\nnet = pylast.LibreFMNetwork(api_key=\"x\" * 32, api_secret=\"y\" * 32)\nnet.ws_server = (\"" (host) "\", \"/2.0/\")\nnet.session_key = pylast.SessionKeyGenerator(net).get_session_key(\"" (me.name) "\", pylast.md5(\"<your token>\"))\nnet.scrobble(artist=\"Artist\", title=\"Title\", timestamp=1700000000)" } }
        },
    )
}

/// A user whose pages the viewer may see, or the response to send instead.
fn visible(state: &AppState, v: &Viewer, name: &str) -> Result<User, Box<Response>> {
    match state.store.user_by_name(name) {
        Ok(Some(u)) if u.visibility == SharingLevel::Public || v.0.as_ref().is_some_and(|(me, _)| me.id == u.id) => {
            Ok(u)
        }
        Ok(_) => Err(Box::new(not_found_page(v))),
        Err(e) => Err(Box::new(server_error(v, e))),
    }
}

fn kind_of(path: &str) -> Option<(Kind, &'static str)> {
    match path {
        "artist" => Some((Kind::Artist, "artist")),
        "track" => Some((Kind::Recording, "track")),
        "album" => Some((Kind::Release, "album")),
        _ => None,
    }
}

/// `/user/{name}/{artist|track|album}/{id}`: one item in one user's listening: plays per
/// month, first listen, weekly ranks over the last year, and (artists) similar artists.
pub async fn item(
    State(state): State<AppState>,
    Path((name, what, id)): Path<(String, String, u32)>,
    headers: HeaderMap,
) -> Response {
    let v = viewer(&state, &headers);
    let user = match visible(&state, &v, &name) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let Some((kind, label)) = kind_of(&what) else { return not_found_page(&v) };
    if state.store.check_item(kind, id).is_err() {
        return not_found_page(&v);
    }
    let now = crate::now_unix();
    let all = state.store.chart(user.id, kind, &Period::AllTime, 100_000, now).unwrap_or_else(|_| {
        crate::store::aggregates::Chart { kind, from: 0, to: 0, listens: 0, distinct: 0, rows: Vec::new() }
    });
    let Some(row) = all.rows.iter().find(|r| r.id == id).cloned() else { return not_found_page(&v) };
    let monthly = state
        .store
        .item_series(user.id, kind, id, &Period::AllTime, crate::store::aggregates::Step::Month, now)
        .unwrap_or_default();
    let first_month = monthly.iter().position(|(_, n)| *n > 0).unwrap_or(0);
    let monthly = &monthly[first_month..];
    let first = state.store.first_listen(user.id, kind, id).ok().flatten();
    let ranks = state.store.rank_history(user.id, kind, id, &Period::LastMonths(12), now).unwrap_or_default();
    let weeks_at_one = ranks.iter().filter(|w| w.rank == Some(1)).count();
    let best = ranks.iter().filter_map(|w| w.rank).min();
    let similar =
        if kind == Kind::Artist { state.store.similar_artists(id, 8).unwrap_or_default() } else { Vec::new() };
    let plot = plot::listens_svg(monthly, 720, 140);
    let title = match &row.artist {
        Some(a) => format!("{a} – {}", row.name),
        None => row.name.clone(),
    };
    page(
        StatusCode::OK,
        &title,
        &v,
        html! {
            p.muted { a href={ "/user/" (user.name) } { (user.name) } " · " (label) }
            h1 { (title) }
            p { (row.listens) " listens" @if let Some(f) = first { " · first heard " (jiff::Timestamp::from_second(f).map(|t| t.strftime("%Y-%m-%d").to_string()).unwrap_or_default()) } }
            h2 { "Listens per month" }
            figure role="img" aria-label={ (row.listens) " listens, per month since the first" } { (maud::PreEscaped(plot)) }
            h2 { "Weekly charts, last 12 months" }
            p { @match best { Some(b) => { "Best weekly rank: #" (b) " · weeks at #1: " (weeks_at_one) }, None => { "Not charted in the last 12 months." } } }
        @if best.is_some() {
            table {
                caption.muted { "Rank in each week it was played" }
                thead { tr { th { "Week of" } th { "Rank" } th { "Listens" } } }
                tbody {
                    @for w in ranks.iter().filter(|w| w.rank.is_some()).rev() {
                        tr {
                            td { (crate::stats::period::date_of(w.monday).to_string()) }
                            td { "#" (w.rank.unwrap_or(0)) }
                            td { (w.listens) }
                        }
                    }
                }
            }
        }
            @if !similar.is_empty() {
                h2 { "Similar artists on this node" }
                ul { @for (r, _) in &similar { li { (r.name) } } }
            }
        },
    )
}

/// Hour × weekday heat map of a user's listening, as an HTML table (readable without
/// colour: each cell carries its count).
fn clock_table(clock: &[[u64; 24]; 7]) -> Markup {
    let max = clock.iter().flatten().copied().max().unwrap_or(0).max(1);
    let days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    html! {
        table.clock {
            caption.muted { "Listens by weekday and hour (local time)" }
            thead { tr { th { "" } @for h in 0..24 { th scope="col" { (h) } } } }
            tbody {
                @for (d, row) in clock.iter().enumerate() {
                    tr {
                        th scope="row" { (days[d]) }
                        @for n in row {
                            td style={ "background:rgba(11,87,208," (format!("{:.2}", *n as f64 / max as f64)) ")" } title=(n) {
                                span.sr { (n) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `/settings/delete`: erase the account and everything stored for it.
pub async fn delete_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let v = viewer(&state, &headers);
    let Some((me, csrf)) = &v.0 else { return Redirect::to("/login").into_response() };
    let total = state.store.log_head(me.id).map(|h| h.n_listens).unwrap_or(0);
    page(
        StatusCode::OK,
        "Delete all my data",
        &v,
        html! {
            h1 { "Delete all my data" }
            p { "This erases your account from this node: your " (total) " listens and the whole signed log, your statistics, loves and hates, tokens, sessions and keys. It cannot be undone. Nothing of it has left this node unless you made your profile public." }
            p { "Export your history first if you want to keep it (exports come soon)." }
            form method="post" action="/settings/delete" {
                input type="hidden" name="csrf" value=(csrf);
                label { "Type your user name to confirm " input name="confirm" autocomplete="off" required; }
                button { "Delete everything" }
            }
        },
    )
}

pub async fn delete_account(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let (v, me, f) = match signed_form(&state, &headers, &body) {
        Ok(signed) => signed,
        Err(response) => return *response,
    };
    if f.get("confirm").map(|c| c.trim()) != Some(me.name.as_str()) {
        return page(
            StatusCode::BAD_REQUEST,
            "Not deleted",
            &v,
            html! {
                h1 { "Not deleted" }
                p.error role="alert" { "The name you typed does not match. Nothing was deleted." }
                p { a href="/settings/delete" { "Try again" } }
            },
        );
    }
    let listens = state.store.log_head(me.id).map(|h| h.n_listens).unwrap_or(0);
    let removed = match state.ingestor.delete_user(me.id).await {
        Ok(n) => n,
        Err(e) => return server_error(&v, e),
    };
    let mut response = page(
        StatusCode::OK,
        "Deleted",
        &Viewer(None),
        html! {
            h1 { "Your data is deleted" }
            p { "Erased from this node's database: the account " strong { (me.name) } ", " (listens) " listens with the signed log they were in, all statistics, loves and hates, tokens, sessions and keys (" (removed) " records)." }
            p { "Old copies leave the database files when the node's owner next runs " code { "hearsay store compact" } "." }
        },
    );
    if let Ok(v) = HeaderValue::from_str(&format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0")) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

pub async fn set_timezone(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let (v, me, f) = match signed_form(&state, &headers, &body) {
        Ok(signed) => signed,
        Err(response) => return *response,
    };
    let tz = f.get("timezone").map(|t| t.trim()).unwrap_or_default().to_owned();
    if crate::stats::period::time_zone(&tz).is_err() {
        return settings_page(
            &state,
            &v,
            Some(html! { p.error role="alert" { "Unknown time zone: " (tz) ". Use a name like Europe/Berlin." } }),
            StatusCode::BAD_REQUEST,
        );
    }
    if let Err(e) = state.ingestor.set_timezone(me.id, &tz).await {
        return server_error(&v, e);
    }
    let v = viewer(&state, &headers);
    settings_page(
        &state,
        &v,
        Some(html! { p { "Your time zone is now " strong { (tz) } "; your statistics were recounted in it." } }),
        StatusCode::OK,
    )
}

pub async fn set_pause(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let (v, me, f) = match signed_form(&state, &headers, &body) {
        Ok(signed) => signed,
        Err(response) => return *response,
    };
    let paused = f.get("paused").is_some_and(|p| p == "yes");
    if let Err(e) = state.store.set_paused(me.id, paused) {
        return server_error(&v, e);
    }
    let message = if paused { "Scrobbling is paused." } else { "Scrobbling resumed." };
    settings_page(&state, &v, Some(html! { p { (message) } }), StatusCode::OK)
}

/// `/user/{name}/weekly?year=Y&week=W`: the weekly chart archive, one ISO week at a
/// time, with last week's ranks and new entries.
pub async fn weekly(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let v = viewer(&state, &headers);
    let user = match visible(&state, &v, &name) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let now = crate::now_unix();
    let tz = crate::stats::period::time_zone(&user.timezone).unwrap_or(jiff::tz::TimeZone::UTC);
    let this = crate::stats::period::local_date(now, &tz).iso_week_date();
    let year = q.get("year").and_then(|y| y.parse::<i16>().ok()).unwrap_or(this.year());
    let week = q.get("week").and_then(|w| w.parse::<i8>().ok()).unwrap_or(this.week());
    let Ok(monday) = jiff::civil::ISOWeekDate::new(year, week, jiff::civil::Weekday::Monday) else {
        return not_found_page(&v);
    };
    let rows = match state.store.weekly_chart(user.id, Kind::Artist, year, week, 20, now) {
        Ok(r) => r,
        Err(e) => return server_error(&v, e),
    };
    let step = |days: i64| monday.date().checked_add(jiff::Span::new().days(days)).ok().map(|d| d.iso_week_date());
    let (prev, next) = (step(-7), step(7));
    page(
        StatusCode::OK,
        &format!("{} · week {year}-W{week:02}", user.name),
        &v,
        html! {
            p.muted { a href={ "/user/" (user.name) } { (user.name) } " · weekly charts" }
            h1 { "Week " (year) "-W" (format!("{week:02}")) }
            nav aria-label="weeks" {
                @if let Some(p) = prev { a href={ "?year=" (p.year()) "&week=" (p.week()) } { "Previous week" } }
                @if let Some(n) = next { " " a href={ "?year=" (n.year()) "&week=" (n.week()) } { "Next week" } }
            }
            @if rows.is_empty() { p.muted { "No listens that week." } }
            table {
                thead { tr { th { "#" } th { "Artist" } th { "Listens" } th { "Last week" } } }
                tbody {
                    @for r in &rows {
                        tr {
                            td { (r.rank) }
                            td { a href={ "/user/" (user.name) "/artist/" (r.row.id) } { (r.row.name) } }
                            td { (r.row.listens) }
                            td { @if r.new { strong { "new" } } @else { @match r.previous_rank { Some(p) => { (p) }, None => { "re-entry" } } } }
                        }
                    }
                }
            }
        },
    )
}

/// `/admin`: the node's users, storage and identity, for administrators (`node.admins`);
/// a 404 for everyone else.
pub async fn admin(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let v = viewer(&state, &headers);
    let is_admin = is_admin(&state, &v);
    if !is_admin {
        return not_found_page(&v);
    }
    let users = state.store.users().unwrap_or_default();
    let size = state.store.size_on_disk().unwrap_or(0);
    let writes = state.ingestor.stats();
    page(
        StatusCode::OK,
        "Admin",
        &v,
        html! {
            h1 { "This node" }
            p { "PeerId " code { (state.peer_id) } " · hearsay " (env!("CARGO_PKG_VERSION")) }
            p { "Database: " (format!("{:.1}", size as f64 / 1_048_576.0)) " MiB on disk · " (writes.batches) " batches in " (writes.groups) " group commits since start" }
            h2 { "Users" }
            table {
                thead { tr { th { "Name" } th { "Listens" } th { "Sharing" } th { "Time zone" } } }
                tbody {
                    @for u in &users {
                        tr {
                            td { (u.name) }
                            td { (state.store.log_head(u.id).map(|h| h.n_listens).unwrap_or(0)) }
                            td { (u.visibility.as_str()) }
                            td { (u.timezone) }
                        }
                    }
                }
            }
            h2 { "Invite someone" }
        @if let Some((_, csrf)) = &v.0 {
            form method="post" action="/admin/invite" {
                input type="hidden" name="csrf" value=(csrf);
                button { "Make an invitation link" }
            }
        }
        p.muted { "Or add users with " code { "hearsay user add NAME" } " (with the node stopped)." }
        },
    )
}

fn register_form(viewer: &Viewer, form_token: &str, invite: &str, error: Option<&str>, status: StatusCode) -> Response {
    page(
        status,
        "Create an account",
        viewer,
        html! {
            h1 { "Create an account" }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form method="post" action="/register" {
                input type="hidden" name="form_token" value=(form_token);
                input type="hidden" name="invite" value=(invite);
                label { "User name (letters, digits, _ . -) " input name="username" autocomplete="username" required maxlength="64" pattern="[A-Za-z0-9_.\\-]+"; }
                label { "Password (at least 8 characters) " input type="password" name="password" autocomplete="new-password" required minlength="8"; }
                button { "Create account" }
            }
        },
    )
}

/// `/register`: open when `node.open_registration` is on, else only with an invitation.
pub async fn register_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let v = viewer(&state, &headers);
    let invite = q.get("invite").cloned().unwrap_or_default();
    let allowed = state.open_registration || state.store.invite_valid(&invite).unwrap_or(false);
    if !allowed {
        return page(
            StatusCode::FORBIDDEN,
            "Invitation needed",
            &v,
            html! {
                h1 { "Invitation needed" }
                p { "Accounts on this node are by invitation. Ask the node's owner for an invitation link." }
            },
        );
    }
    let (token, cookie) = form_token(&headers);
    with_cookie(register_form(&v, &token, &invite, None, StatusCode::OK), cookie)
}

pub async fn register(State(state): State<AppState>, addr: ClientAddr, headers: HeaderMap, body: Bytes) -> Response {
    let v = viewer(&state, &headers);
    let f = form_fields(&body);
    let (token, cookie) = form_token(&headers);
    if !form_token_ok(&headers, &f) {
        return with_cookie(
            register_form(&v, &token, "", Some("This form has expired. Try again."), StatusCode::FORBIDDEN),
            cookie,
        );
    }
    if addr.0.is_some_and(|a| state.live.is_limited(a)) {
        return register_form(&v, &token, "", Some("Too many attempts. Wait a minute."), StatusCode::TOO_MANY_REQUESTS);
    }
    let get = |k: &str| f.get(k).map_or("", String::as_str);
    let (invite, name, password) = (get("invite"), get("username"), get("password"));
    let now = crate::now_unix();
    let created = if state.open_registration && invite.is_empty() {
        state.store.create_user(name, password, now).map(Some)
    } else {
        state.store.create_user_invited(invite, name, password, now)
    };
    match created {
        Ok(Some(_)) => login(State(state), addr, headers, body).await,
        Ok(None) => {
            if let Some(a) = addr.0 {
                state.live.record_failure(a);
            }
            page(
                StatusCode::FORBIDDEN,
                "Invitation needed",
                &v,
                html! { h1 { "Invitation needed" } p { "This invitation is not valid (any more)." } },
            )
        }
        Err(
            e @ (crate::store::Error::UserExists(_)
            | crate::store::Error::InvalidName { .. }
            | crate::store::Error::InvalidPassword(_)),
        ) => register_form(&v, &token, invite, Some(&e.to_string()), StatusCode::BAD_REQUEST),
        Err(e) => server_error(&v, e),
    }
}

/// Administrators make invitation links on the admin page.
pub async fn invite(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let v = viewer(&state, &headers);
    let f = form_fields(&body);
    let Some((me, _)) = v.0.as_ref().filter(|_| is_admin(&state, &v)) else {
        return not_found_page(&v);
    };
    if !csrf_ok(&v, &f) {
        return refused(&v);
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1:8487");
    match state.store.create_invite(me.id, crate::now_unix()) {
        Ok(code) => page(
            StatusCode::OK,
            "Invitation",
            &v,
            html! {
                h1 { "Invitation" }
                p { "Send this link to the person you invite; it works once:" }
                p { code { "http://" (host) "/register?invite=" (code) } }
                p { a href="/admin" { "Back to the admin page" } }
            },
        ),
        Err(e) => server_error(&v, e),
    }
}

fn valid_auth_token(t: &str) -> bool {
    t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `/api/auth/?api_key=…&token=…`: the page a Last.fm client opens so the user can let
/// it scrobble (`auth.getToken` → here → `auth.getSession`). Signed in: one click;
/// otherwise the user name and password.
pub async fn approval_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let v = viewer(&state, &headers);
    let Some(token) = q.get("token").filter(|t| valid_auth_token(t)).cloned() else {
        return page(
            StatusCode::BAD_REQUEST,
            "Connect an application",
            &v,
            html! {
                h1 { "Connect an application" }
                p { "This link has no valid token. Start again from your application." }
            },
        );
    };
    let (form, cookie) = form_token(&headers);
    let body = html! {
        h1 { "Connect an application" }
        p { "An application asks to scrobble to your account on this node and to read your listening." }
        form method="post" action="/api/auth/" {
            input type="hidden" name="token" value=(token);
            input type="hidden" name="form_token" value=(form);
            @if let Some((me, _)) = &v.0 {
                p { "Signed in as " strong { (me.name) } "." }
            } @else {
                label { "User name " input name="username" autocomplete="username" required; }
                label { "Password " input type="password" name="password" autocomplete="current-password" required; }
            }
            button { "Allow" }
        }
    };
    with_cookie(page(StatusCode::OK, "Connect an application", &v, body), cookie)
}

pub async fn approve(State(state): State<AppState>, addr: ClientAddr, headers: HeaderMap, body: Bytes) -> Response {
    let v = viewer(&state, &headers);
    let f = form_fields(&body);
    if !form_token_ok(&headers, &f) {
        return refused(&v);
    }
    if addr.0.is_some_and(|a| state.live.is_limited(a)) {
        return page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many attempts",
            &v,
            html! { h1 { "Too many attempts" } p { "Wait a minute and try again." } },
        );
    }
    let get = |k: &str| f.get(k).map_or("", String::as_str);
    let user = match &v.0 {
        Some((me, _)) => Some(me.clone()),
        None => state.store.check_password(get("username"), get("password")).ok().flatten(),
    };
    let Some(user) = user else {
        if let Some(a) = addr.0 {
            state.live.record_failure(a);
        }
        return page(
            StatusCode::FORBIDDEN,
            "Not allowed",
            &v,
            html! { h1 { "Not allowed" } p { "Wrong user name or password. Go back and try again." } },
        );
    };
    if state.live.lastfm_tokens.approve(get("token"), user.id) {
        page(
            StatusCode::OK,
            "Application connected",
            &v,
            html! { h1 { "Application connected" } p { "Done. Return to your application." } },
        )
    } else {
        page(
            StatusCode::BAD_REQUEST,
            "Link expired",
            &v,
            html! { h1 { "Link expired" } p { "This request has expired. Start again from your application." } },
        )
    }
}
