//! The local web view: server-rendered pages (maud templates, escaped by construction),
//! usable without JavaScript. Today: home (the node's chart this week and public users'
//! recent listens), log-in and log-out with cookie sessions and CSRF tokens, user
//! profiles (top artists, tracks and albums with a period switcher, recent listens, now
//! playing, loves) shown only as each user's visibility allows, and a 404 page that is
//! the same for a missing and a hidden profile.

pub mod plot;

use axum::Router;
use axum::routing::{get, post};

mod downloads;
mod network;
mod transparency;
pub mod upload;

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/user/{name}", get(profile))
        .route("/user/{name}/history", get(history))
        .route("/user/{name}/weekly", get(weekly))
        .route("/user/{name}/{what}/{handle}", get(item))
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
        .route("/settings/api-reads", post(set_api_reads))
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

mod account;
mod page;
mod profile;
mod session;
mod settings;

use account::*;
pub use page::not_found_response;
use page::*;
pub use profile::home;
use profile::*;
use session::*;
use settings::*;
