//! Who is looking: the session cookie, the viewer it names, and CSRF protection (the
//! session's token on every form after log-in; a double-submit form cookie before).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use cookie::{Cookie, SameSite};

use crate::state::AppState;
use crate::store::users::User;

use super::*;

pub(super) const COOKIE: &str = "hearsay_session";

/// Cookie holding the token that forms shown before log-in must echo (double-submit
/// CSRF protection for the log-in and registration forms).
pub(super) const FORM_COOKIE: &str = "hearsay_form";

/// The value of cookie `name` in a request (the `cookie` crate parses the header).
pub(super) fn named_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

/// The `Set-Cookie` value of a new session (30 days; `Secure` behind TLS).
pub(super) fn session_cookie(key: &str, secure: bool) -> String {
    Cookie::build((COOKIE, key))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .max_age(cookie::time::Duration::days(30))
        .secure(secure)
        .build()
        .to_string()
}

/// Sets the session cookie on a response: a new session, or `None` to remove it.
pub(super) fn set_session_cookie(mut response: Response, key: Option<&str>, secure: bool) -> Response {
    let value = match key {
        Some(k) => session_cookie(k, secure),
        None => Cookie::build((COOKIE, ""))
            .path("/")
            .http_only(true)
            .same_site(SameSite::Lax)
            .max_age(cookie::time::Duration::ZERO)
            .build()
            .to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

pub(super) fn form_token(headers: &HeaderMap) -> (String, Option<String>) {
    match named_cookie(headers, FORM_COOKIE).filter(|t| t.len() == 32) {
        Some(t) => (t, None),
        None => {
            let t = crate::auth::random_bytes::<16>().map(hex::encode).unwrap_or_default();
            let cookie = Cookie::build((FORM_COOKIE, t.clone()))
                .path("/")
                .http_only(true)
                .same_site(SameSite::Strict)
                .build()
                .to_string();
            (t, Some(cookie))
        }
    }
}

pub(super) fn with_cookie(mut response: Response, cookie: Option<String>) -> Response {
    if let Some(v) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

/// True when a pre-session form echoes this browser's form token.
pub(super) fn form_token_ok(headers: &HeaderMap, fields: &HashMap<String, String>) -> bool {
    match (named_cookie(headers, FORM_COOKIE), fields.get("form_token")) {
        (Some(c), Some(f)) => crate::auth::strings_equal(&c, f),
        _ => false,
    }
}

/// The signed-in user of a request and their CSRF token, if any.
pub(super) struct Viewer(pub(super) Option<(User, String)>);

/// Whether the viewer is one of the node's administrators (`node.admins`).
pub(super) fn is_admin(state: &AppState, v: &Viewer) -> bool {
    v.0.as_ref().is_some_and(|(me, _)| state.admins.iter().any(|a| a.eq_ignore_ascii_case(&me.name)))
}

impl Viewer {
    /// The viewer as the access policy knows them.
    pub(super) fn policy(&self, state: &AppState) -> crate::policy::Viewer {
        match &self.0 {
            Some((me, _)) => crate::policy::Viewer::Member { id: me.id.0, admin: is_admin(state, self) },
            None => crate::policy::Viewer::Anonymous,
        }
    }

    /// What the viewer may learn about `user` for `purpose` (`crate::policy`).
    pub(super) fn may(&self, state: &AppState, user: &User, purpose: crate::policy::Purpose) -> crate::policy::Access {
        crate::policy::may(self.policy(state), state.subject(user), purpose)
    }
}

/// The user named `name` if the viewer may learn `purpose` about them exactly; otherwise
/// the response to send: a hidden user looks exactly like a missing one.
pub(super) fn shown(
    state: &AppState,
    v: &Viewer,
    name: &str,
    purpose: crate::policy::Purpose,
) -> Result<User, Box<Response>> {
    match state.store.user_by_name(name) {
        Ok(Some(u)) if v.may(state, &u, purpose).exact() => Ok(u),
        Ok(_) => Err(Box::new(super::page::not_found_page(v))),
        Err(e) => Err(Box::new(super::page::server_error(v, e))),
    }
}

pub(super) fn cookie_value(headers: &HeaderMap) -> Option<String> {
    named_cookie(headers, COOKIE)
}

pub(super) fn viewer(state: &AppState, headers: &HeaderMap) -> Viewer {
    Viewer(cookie_value(headers).and_then(|k| state.store.web_session(&k).ok().flatten()))
}

pub(super) fn form_fields(body: &Bytes) -> HashMap<String, String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body).unwrap_or_default().into_iter().collect()
}

pub(super) fn csrf_ok(viewer: &Viewer, fields: &HashMap<String, String>) -> bool {
    match (&viewer.0, fields.get("csrf")) {
        (Some((_, want)), Some(got)) => crate::auth::strings_equal(got, want),
        _ => false,
    }
}

/// The viewer, signed-in user and fields of a form post carrying this session's CSRF
/// token; otherwise the response to send (to the log-in page, or refused).
pub(super) fn signed_form(
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
