//! The HTTP router: composes the scrobbler APIs (`api`) and the web view (`web`), which
//! share `state::AppState` and know nothing of each other, with `GET /health` and the
//! root path that both use (Audioscrobbler handshakes and the home page).

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::state::{AppState, ClientAddr};

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/", get(root))
        .merge(crate::api::listenbrainz::router())
        .merge(crate::api::lastfm::router())
        .merge(crate::api::audioscrobbler::router())
        .merge(crate::web::router())
        .layer(axum::middleware::from_fn_with_state(state.clone(), refuse_while_failed))
        .with_state(state)
}

/// After a failed write the store holds in memory what was never acknowledged, until
/// the node reopens it: nothing is read or written through it meanwhile.
async fn refuse_while_failed(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use axum::response::IntoResponse;
    match state.store.failure() {
        None => next.run(request).await,
        Some(_) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, "5")],
            Json(json!({"status": "unavailable", "code": 503, "error": "the node is reopening its store; try again in a moment"})),
        )
            .into_response(),
    }
}

/// `/`: an Audioscrobbler 1.2 handshake (`?hs=…`), which old players send to the root
/// of the URL they are given, or the web view's home page.
async fn root(
    state: State<AppState>,
    addr: ClientAddr,
    headers: HeaderMap,
    query: Query<HashMap<String, String>>,
) -> Response {
    if query.contains_key("hs") {
        crate::api::audioscrobbler::handshake(state, addr, headers, query).await
    } else {
        crate::web::home(state, headers).await
    }
}

/// Liveness and identity: answers while the node serves requests.
async fn health(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "peer_id": state.peer_id,
    }))
}
