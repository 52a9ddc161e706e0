//! The frame of every page: the style sheet, the layout with its navigation, the
//! error pages (one 404 for a missing and a hidden profile alike) and the refusal of a
//! forged form.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use crate::state::AppState;

use super::*;

/// Readable on a phone: the navigation wraps, wide tables scroll inside a `.scroll` region, long
/// addresses break (`browser::every_page_fits_a_phone_and_passes_an_accessibility_check`).
pub(super) const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:60rem;margin:0 auto;padding:0 1rem;color:#1d1d1f;background:#fafafa}\
nav{display:flex;flex-wrap:wrap;gap:.5rem 1rem;align-items:center;padding:.75rem 0;border-bottom:1px solid #ddd}nav a{color:#0b57d0}\
h1{font-size:1.6rem}table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.25rem .5rem;border-bottom:1px solid #eee}\
.cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(16rem,100%),1fr));gap:1.5rem}.cols>*{min-width:0}.muted{color:#555}\
figure{margin:0}.clock td{width:1.2rem;height:1.2rem;padding:0;border:1px solid #fff}.clock th{font-size:.7rem;font-weight:normal}\
.sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}figure svg{max-width:100%;height:auto}.periods a{margin-right:.5rem}.periods a[aria-current]{font-weight:bold}label{display:block;margin:.5rem 0}\
input{font-size:1rem;padding:.3rem;max-width:100%}button{font-size:1rem;padding:.3rem .8rem}.error{color:#a00000}\
.scroll{overflow-x:auto;max-width:100%;position:relative}code{overflow-wrap:anywhere}pre{overflow-x:auto;white-space:pre-wrap;overflow-wrap:anywhere}\
@media (max-width:40rem){td,th{padding:.25rem .35rem}h1{font-size:1.35rem}}";

pub(super) fn layout(title: &str, viewer: &Viewer, body: Markup) -> Markup {
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

pub(super) fn page(status: StatusCode, title: &str, viewer: &Viewer, body: Markup) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], layout(title, viewer, body).into_string())
        .into_response()
}

pub(super) fn not_found_page(viewer: &Viewer) -> Response {
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

/// What no route serves: under `/1/` (the ListenBrainz API) a JSON error as ListenBrainz
/// answers, so clients calling a method this node lacks read an error instead of
/// failing to parse an HTML page; elsewhere the page.
pub(super) async fn not_found(State(state): State<AppState>, uri: axum::http::Uri, headers: HeaderMap) -> Response {
    not_found_response(&state, &uri, &headers)
}

/// The answer to a path nothing serves (also what `/metrics` tells those it refuses).
pub fn not_found_response(state: &AppState, uri: &axum::http::Uri, headers: &HeaderMap) -> Response {
    if uri.path().starts_with("/1/") || uri.path() == "/1" {
        let body = serde_json::json!({"code": 404, "error": "Not found: this node does not serve this ListenBrainz API endpoint."});
        return (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
    }
    not_found_page(&viewer(state, headers))
}

pub(super) fn server_error<E: std::fmt::Display + 'static>(viewer: &Viewer, e: E) -> Response {
    // A store error says whether the disk is full or the store is reopening.
    let class = (&e as &dyn std::any::Any).downcast_ref::<crate::store::Error>().map(crate::store::Error::class);
    match class {
        Some(crate::store::Class::DiskFull) => {
            tracing::debug!(error = %e, "web view: refused, disk full");
            return page(
                StatusCode::INSUFFICIENT_STORAGE,
                "The disk is full",
                viewer,
                html! { h1 { "The node's disk is full" } p { "Nothing could be saved. Reading works; try again once the node's owner has freed some space." } },
            );
        }
        Some(crate::store::Class::Invalid) => {
            return page(
                StatusCode::BAD_REQUEST,
                "Not possible",
                viewer,
                html! { h1 { "That is not possible" } p { (e.to_string()) } },
            );
        }
        Some(crate::store::Class::Unavailable) => {
            tracing::warn!(error = %e, "web view: store unavailable");
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again in a moment",
                viewer,
                html! { h1 { "Try again in a moment" } p { "The node is reopening its store." } },
            );
        }
        _ => {}
    }
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

pub(super) fn refused(viewer: &Viewer) -> Response {
    page(
        StatusCode::FORBIDDEN,
        "Refused",
        viewer,
        html! { h1 { "Refused" } p { "This form has expired. Go back, reload and try again." } },
    )
}
