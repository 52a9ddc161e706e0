//! Accounts: log-in and log-out, registration by invitation (or open registration),
//! the administrator's page, and the approval of a Last.fm desktop-client token.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use crate::state::AppState;
use crate::state::ClientAddr;

use super::*;

pub(super) async fn login_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let (token, cookie) = form_token(&headers);
    with_cookie(login_form(&viewer(&state, &headers), &token, None, StatusCode::OK), cookie)
}

pub(super) fn login_form(viewer: &Viewer, form_token: &str, error: Option<&str>, status: StatusCode) -> Response {
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

pub(super) async fn login(
    State(state): State<AppState>,
    addr: ClientAddr,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
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
    let user = match state.check_password(name, password).await {
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
    let response = Redirect::to(&format!("/user/{}", user.name)).into_response();
    set_session_cookie(response, Some(&key), state.secure_cookies)
}

pub(super) async fn logout(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
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
    set_session_cookie(Redirect::to("/").into_response(), None, state.secure_cookies)
}

pub(super) fn register_form(
    viewer: &Viewer,
    form_token: &str,
    invite: &str,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
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
    let (store, open) = (state.store.clone(), state.open_registration && invite.is_empty());
    let (invite_code, name, password) = (invite.to_owned(), name.to_owned(), password.to_owned());
    // Hashing the new password is argon2's work: off the async runtime.
    let created = tokio::task::spawn_blocking(move || {
        if open {
            store.create_user(&name, &password, now).map(Some)
        } else {
            store.create_user_invited(&invite_code, &name, &password, now)
        }
    })
    .await
    .unwrap_or_else(|e| Err(crate::store::Error::PasswordHash(e.to_string())));
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
pub async fn invite(
    State(state): State<AppState>,
    peer: crate::state::PeerAddr,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let v = viewer(&state, &headers);
    let f = form_fields(&body);
    let Some((me, _)) = v.0.as_ref().filter(|_| is_admin(&state, &v)) else {
        return not_found_page(&v);
    };
    if !csrf_ok(&v, &f) {
        return refused(&v);
    }
    let base = state.front.base_url(&headers, peer.0);
    match state.store.create_invite(me.id, crate::now_unix()) {
        Ok(code) => page(
            StatusCode::OK,
            "Invitation",
            &v,
            html! {
                h1 { "Invitation" }
                p { "Send this link to the person you invite; it works once:" }
                p { code { (base) "/register?invite=" (code) } }
                p { a href="/admin" { "Back to the admin page" } }
            },
        ),
        Err(e) => server_error(&v, e),
    }
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
    page(
        StatusCode::OK,
        "Admin",
        &v,
        html! {
            h1 { "This node" }
            p { "PeerId " code { (state.peer_id) } " · hearsay " (env!("CARGO_PKG_VERSION")) }
            // (No write counters: polled, they would show when members listen.)
            p { "Database: " (format!("{:.1}", size as f64 / 1_048_576.0)) " MiB on disk" }
            h2 { "Users" }
            table {
                thead { tr { th { "Name" } th { "Listens" } th { "Sharing" } th { "Time zone" } } }
                tbody {
                    @for u in &users {
                        tr {
                            td { (u.name) }
                            td {
                                // Activity is history: shown only where the policy allows.
                                @if v.may(&state, u, crate::policy::Purpose::History).exact() {
                                    (state.store.log_head(u.id).map(|h| h.n_listens).unwrap_or(0))
                                } @else { span.muted { "not shared" } }
                            }
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

pub(super) fn valid_auth_token(t: &str) -> bool {
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
        None => state.check_password(get("username"), get("password")).await.ok().flatten(),
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
