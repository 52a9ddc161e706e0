//! The HTTP router. Today: `GET /health`. The scrobbler APIs (`api`) and the web view
//! (`web`) mount their routers here.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::store::{Ingestor, Store};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub ingestor: Ingestor,
    pub peer_id: String,
    pub api: crate::api::ApiState,
    /// Time zone of the node's own charts (`node.timezone`).
    pub node_timezone: String,
    /// Mark session cookies `Secure` (`http.secure_cookies`, for nodes behind TLS).
    pub secure_cookies: bool,
    /// Administrators' user names (`node.admins`).
    pub admins: Vec<String>,
    /// `node.open_registration`.
    pub open_registration: bool,
    /// The `[privacy]` section: what the transparency page explains.
    pub privacy: std::sync::Arc<crate::config::PrivacyConfig>,
    /// The network task, when `p2p.enabled`.
    pub p2p: Option<crate::p2p::P2pHandle>,
    /// The node key, to sign community manifests an administrator changes in the web
    /// view, and its public half.
    pub signer: std::sync::Arc<crate::identity::NodeIdentity>,
    pub node_key: [u8; 32],
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .merge(crate::api::listenbrainz::router())
        .merge(crate::api::lastfm::router())
        .merge(crate::api::audioscrobbler::router())
        .merge(crate::web::router())
        .with_state(state)
}

/// Liveness and identity: answers while the node serves requests.
async fn health(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "peer_id": state.peer_id,
    }))
}
