//! A user's settings: sharing level, time zone, pausing, API tokens, what to paste
//! into each player (`/connect`), and deleting the account.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use crate::state::AppState;
use crate::store::users::SharingLevel;

use super::*;

/// `/settings`: sharing level and API tokens of the signed-in user.
pub async fn settings(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let v = viewer(&state, &headers);
    settings_page(&state, &v, None, StatusCode::OK)
}

pub(super) fn settings_page(state: &AppState, v: &Viewer, message: Option<Markup>, status: StatusCode) -> Response {
    let Some((me, csrf)) = &v.0 else { return Redirect::to("/login").into_response() };
    let tokens = state.store.tokens(me.id).unwrap_or_default();
    let settings = state.store.settings(me.id).unwrap_or_default();
    let paused = settings.paused;
    let levels = [
        (
            SharingLevel::Private,
            "Private: nothing derived from your listening leaves this node or is shown to anyone else: no profile, no node chart, no neighbours, no similar artists, no release.".to_owned(),
        ),
        (
            SharingLevel::Aggregate,
            format!(
                "Aggregate (default): nobody else sees anything of yours on this node (no profile, not in the node chart, nobody's neighbour, not in similar artists). Outside the node you count only in the aggregate section of each release: at most your top {l0} artists and tracks, at most {c} listens each, with differential privacy (ε {week} a week, at most {year} over any 52 weeks), so nobody can tell whether you were in it.",
                l0 = state.privacy.l0,
                c = state.privacy.clamp,
                week = state.privacy.week_epsilon_budget,
                year = state.privacy.year_epsilon_budget,
            ),
        ),
        (
            SharingLevel::Public,
            "Public: anyone can see your profile and history; you count in the node chart, as other members' neighbour and in similar artists, and your exact listening counts go into the public section of each release.".to_owned(),
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
                p.muted { "Sharing more applies from the next period; sharing less applies at once, also to a week that has ended and is not yet released. " a href="/privacy" { "What this node has published, and what of you" } "." }
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
        h2 { "Reads without a token" }
        form method="post" action="/settings/api-reads" {
            input type="hidden" name="csrf" value=(csrf);
            @if settings.api_reads_open {
                p role="status" { strong { "Anyone can read your profile, listens and charts through the scrobbler APIs" } " (ListenBrainz " code { "/1/" } ", Last.fm " code { "/2.0/" } ") without a token, whatever your sharing level says for this site's pages." }
                input type="hidden" name="open" value="no";
                button { "Require a token again" }
            } @else {
                p { "Some apps and client libraries read your listens or charts without sending a token, and get \"no such user\" unless you are public. You can let anyone who knows your user name and this node's address read your profile, listens and charts through the scrobbler APIs, without a token. The web pages, node charts and releases are not affected; a private account is never readable." }
                input type="hidden" name="open" value="yes";
                button { "Let apps read my listens without a token" }
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
                            td { (t.name) @if t.legacy { " " span.muted { "(legacy: its md5 is stored)" } } }
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
                label {
                    input type="checkbox" name="legacy";
                    " For an old player (Audioscrobbler 1.2, or Last.fm log-in with an authToken). "
                    span.muted { "These protocols prove the token by its md5, so the node must keep that md5, which is as good as the token to anyone who reads the database or a backup. Leave unticked for ListenBrainz clients and Last.fm clients that send the token as the password." }
                }
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
    if let Err(e) = state.ingestor.set_visibility(me.id, level).await {
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
    let legacy = f.get("legacy").is_some_and(|v| v == "on");
    match state.store.create_token(me.id, name, crate::now_unix(), legacy) {
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
pub async fn connect(State(state): State<AppState>, peer: crate::state::PeerAddr, headers: HeaderMap) -> Response {
    let v = viewer(&state, &headers);
    let Some((me, _)) = &v.0 else { return Redirect::to("/login").into_response() };
    let node = state.front.base_url(&headers, peer.0);
    let host = node.split_once("://").map_or(node.as_str(), |(_, h)| h).to_owned();
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
            p { "Reading back: apps that show your listens or charts send the token too, or, if they never do, ask you to open your API reads under " a href="/settings" { "Settings" } " (\"Reads without a token\"): then anyone who knows your user name can read them through the API. " @if state.store.settings(me.id).map(|s| s.api_reads_open).unwrap_or(false) { strong { "Your API reads are open." } } @else { "Yours need a token." } }
            table {
                thead { tr { th { "Player" } th { "Protocol" } th { "What to set" } } }
                tbody { @for (player, protocol, what) in &rows { tr { td { (player) } td { (protocol) } td { code { (what) } } } } }
            }
            h2 { "pylast" }
            pre { code { "import pylast\nnet = pylast.LibreFMNetwork(api_key=\"x\" * 32, api_secret=\"y\" * 32)\nnet.ws_server = (\"" (host) "\", \"/2.0/\")\nnet.session_key = pylast.SessionKeyGenerator(net).get_session_key(\"" (me.name) "\", pylast.md5(\"<your token>\"))\nnet.scrobble(artist=\"Artist\", title=\"Title\", timestamp=1700000000)" } }
        },
    )
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
    let response = page(
        StatusCode::OK,
        "Deleted",
        &Viewer(None),
        html! {
            h1 { "Your data is deleted" }
            p { "Erased from this node's database: the account " strong { (me.name) } ", " (listens) " listens with the signed log they were in, all statistics, loves and hates, tokens, sessions and keys (" (removed) " records)." }
            p { "Old copies leave the database files when the node's owner next runs " code { "hearsay store compact" } "." }
        },
    );
    set_session_cookie(response, None, state.secure_cookies)
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

pub async fn set_api_reads(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let (v, me, f) = match signed_form(&state, &headers, &body) {
        Ok(signed) => signed,
        Err(response) => return *response,
    };
    let open = f.get("open").is_some_and(|p| p == "yes");
    if let Err(e) = state.store.set_api_reads_open(me.id, open) {
        return server_error(&v, e);
    }
    let message = if open {
        "Your profile, listens and charts can now be read through the scrobbler APIs without a token."
    } else {
        "Reading your listens through the scrobbler APIs needs a token again."
    };
    settings_page(&state, &v, Some(html! { p { (message) } }), StatusCode::OK)
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
