//! The network page (`/network`) and its JSON form (`/api/network`, also what
//! `hearsay peers` reads): this node's PeerId and peers, and each followed community
//! with its chart and federated chart, how many origins contributed, and how fresh.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use std::collections::HashMap;

use super::{page, server_error, viewer};
use crate::federation::merge::Chart;
use crate::http::AppState;

async fn gather(state: &AppState, period: Option<i64>) -> Result<serde_json::Value, String> {
    let status = match &state.p2p {
        Some(p) => p.status().await,
        None => None,
    };
    let store = state.store.clone();
    let communities = tokio::task::spawn_blocking(move || store.network_view(period))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(serde_json::json!({
        "peer_id": state.peer_id,
        "p2p": status,
        "communities": communities,
    }))
}

fn period_of(q: &HashMap<String, String>) -> Option<i64> {
    q.get("period").and_then(|p| p.parse().ok())
}

/// `GET /api/network`.
pub async fn json(State(state): State<AppState>, Query(q): Query<HashMap<String, String>>) -> Response {
    match gather(&state, period_of(&q)).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "network view");
            (StatusCode::INTERNAL_SERVER_ERROR, "could not read the network state\n").into_response()
        }
    }
}

fn chart_table(title: &str, chart: &Chart) -> Markup {
    html! {
        h3 { (title) }
        p.muted { (chart.origins) " origins contributed" }
        @if chart.artists.is_empty() {
            p.muted { "No artists yet." }
        } @else {
            table {
                thead { tr { th { "#" } th { "Artist" } th { "Listeners" } th { "Listens" } th { "Origins" } } }
                tbody {
                    @for (i, r) in chart.artists.iter().enumerate() {
                        tr { td { (i + 1) } td { (r.name.display()) } td { "≈ " (r.listeners) } td { "≈ " (r.listens.max(0)) } td { (r.origins) } }
                    }
                }
            }
        }
        @if !chart.tracks.is_empty() {
            table {
                thead { tr { th { "#" } th { "Track" } th { "Listeners" } th { "Origins" } } }
                tbody {
                    @for (i, r) in chart.tracks.iter().enumerate() {
                        tr { td { (i + 1) } td { (r.name.display()) } td { "≈ " (r.listeners) } td { (r.origins) } }
                    }
                }
            }
        }
    }
}

/// `GET /network`.
pub async fn page_handler(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let v = viewer(&state, &headers);
    let status = match &state.p2p {
        Some(p) => p.status().await,
        None => None,
    };
    let store = state.store.clone();
    let period = period_of(&q);
    let communities = match tokio::task::spawn_blocking(move || store.network_view(period)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return server_error(&v, e),
        Err(e) => return server_error(&v, e),
    };
    page(
        StatusCode::OK,
        "Network",
        &v,
        html! {
            h1 { "Network" }
            p { "This node: " code { (state.peer_id) } }
            @match &status {
                None => p.muted { "The peer-to-peer layer is off (p2p.enabled = false)." },
                Some(s) => {
                    p.muted { "Listening on " (s.listen.join(", ")) ". Snapshots received: " (s.accepted) " accepted, " (s.ignored) " ignored, " (s.rejected) " rejected." }
                    h2 { "Peers (" (s.peers.len()) ")" }
                    @if s.peers.is_empty() { p.muted { "No peers connected." } }
                    ul { @for p in &s.peers { li { code { (p.peer_id) } " " (p.agent) " " span.muted { (p.address) } } } }
                }
            }
            h2 { "Communities" }
            @if communities.is_empty() {
                p.muted { "This node follows no community. An administrator creates one with " code { "hearsay community create NAME" } " or joins one with " code { "hearsay community join TICKET" } "." }
            }
            @for c in &communities {
                section {
                    h2 { (c.name) " " span.muted { "(" (c.id) ", manifest v" (c.version) ", " (c.members) " members" @if c.member { ", this node publishes here" } ")" } }
                    @if let Some(p) = c.period {
                        p.muted { "Period from " (jiff::Timestamp::from_second(p).map(|t| t.to_string()).unwrap_or_default()) }
                    }
                    (chart_table("Community chart", &c.chart))
                    @if let Some(f) = &c.federated {
                        p.muted { "Linked: " @for (name, id, w, held) in &c.links { (name) " (" (id) ", weight " (f64::from(*w) / 1000.0) @if !held { ", not reached yet" } ") " } }
                        (chart_table("Federated chart", f))
                    }
                }
            }
        },
    )
}
