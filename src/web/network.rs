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
use crate::state::AppState;

/// The p2p status for this viewer: addresses (the node's and its peers', for a home
/// node its people's) only for administrators and the operator's command line.
async fn status_for(state: &AppState, admin: bool) -> Option<crate::p2p::Status> {
    let status = match &state.p2p {
        Some(p) => p.status().await,
        None => None,
    };
    if admin { status } else { status.map(crate::p2p::Status::without_addresses) }
}

async fn gather(state: &AppState, period: Option<i64>, admin: bool) -> Result<serde_json::Value, String> {
    let status = status_for(state, admin).await;
    let store = state.store.clone();
    let secs = state.privacy.period_secs;
    let communities = tokio::task::spawn_blocking(move || store.network_view(period, secs))
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
pub async fn json(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let admin = state.is_operator(&headers) || super::is_admin(&state, &viewer(&state, &headers));
    match gather(&state, period_of(&q), admin).await {
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
        p.muted { (chart.origins) " origins contributed"
            @if chart.corroborating > 0 { "; " (chart.corroborating) " non-member nodes corroborate (unverified: the “+” after an item's origins; they change no count or rank)" } }
        @if chart.artists.is_empty() {
            p.muted { "No artists yet." }
        } @else {
            table {
                thead { tr { th { "#" } th { "Artist" } th { "Listeners" } th { "Listens" } th { "Origins" } } }
                tbody {
                    @for (i, r) in chart.artists.iter().enumerate() {
                        tr { td { (i + 1) } td { (r.name.display()) } td { "≈ " (r.listeners) } td { "≈ " (r.listens.max(0)) } td { (r.origins) @if r.corroborating > 0 { " +" (r.corroborating) } } }
                    }
                }
            }
        }
        @if !chart.tracks.is_empty() {
            table {
                thead { tr { th { "#" } th { "Track" } th { "Listeners" } th { "Origins" } } }
                tbody {
                    @for (i, r) in chart.tracks.iter().enumerate() {
                        tr { td { (i + 1) } td { (r.name.display()) } td { "≈ " (r.listeners) } td { (r.origins) @if r.corroborating > 0 { " +" (r.corroborating) } } }
                    }
                }
            }
        }
    }
}

/// A community's private chart: its members' aggregate users, counted by secure
/// aggregation (neither aggregator saw any node's counts), noised once per community.
fn secure_table(r: &crate::federation::secagg::SecureResultV1) -> Markup {
    let rows = |title: &str, list: &[crate::federation::secagg::SecureEntry]| {
        html! {
            @if !list.is_empty() {
                table {
                    thead { tr { th { "#" } th { (title) } th { "Listeners" } } }
                    tbody {
                        @for (i, e) in list.iter().enumerate() {
                            tr { td { (i + 1) } td { (e.name.display()) } td { "≈ " (e.listeners) } }
                        }
                    }
                }
            }
        }
    };
    html! {
        h3 { "Private chart (secure aggregation)" }
        p.muted { "Counted from the encrypted shares of at least " (r.min_users) " users on at least " (r.min_nodes) " member nodes (the exact numbers are not published: they would move with one user); the two aggregators each added noise (ε "
            (crate::privacy::params::eps_text(u64::from(r.eps_milli))) ") and signed the total. No node's or user's own counts were seen by anyone." }
        @if r.chart.artists.is_empty() && r.chart.tracks.is_empty() {
            p.muted { "No item reached the display threshold." }
        }
        (rows("Artist", &r.chart.artists))
        (rows("Track", &r.chart.tracks))
    }
}

/// `GET /network`.
pub async fn page_handler(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let v = viewer(&state, &headers);
    let admin = super::is_admin(&state, &v);
    let status = status_for(&state, admin).await;
    let store = state.store.clone();
    let period = period_of(&q);
    let secs = state.privacy.period_secs;
    let now = crate::now_unix();
    let communities = match tokio::task::spawn_blocking(move || store.network_view(period, secs)).await {
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
                    p.muted {
                        @if admin { "Listening on " (s.listen.join(", ")) ". " } @else { "(Addresses are shown to administrators only.) " }
                        "Snapshots received: " (s.accepted) " accepted, " (s.ignored) " ignored, " (s.rejected) " rejected, " (s.evidence) " kept as evidence of an origin's equivocation."
                    }
                    h2 { "Peers (" (s.peers.len()) ")" }
                    @if s.peers.is_empty() { p.muted { "No peers connected." } }
                    ul { @for p in &s.peers { li { code { (p.peer_id) } " " (p.agent) @if admin { " " span.muted { (p.address) } } } } }
                }
            }
            h2 { "Communities" }
            @if communities.is_empty() {
                p.muted { "This node follows no community. An administrator creates one with " code { "hearsay community create NAME" } " or joins one with " code { "hearsay community join TICKET" } "." }
            }
            @for c in &communities {
                section {
                    h2 { a href={ "/network/community/" (c.id) } { (c.name) } " " span.muted { "(" (c.id) ", manifest v" (c.version) ", " (c.members) " members" @if c.member { ", this node publishes here" } ")" } }
                    @if !c.forks.is_empty() {
                        p.error role="alert" { "Warning: this community's administrators signed two different manifests of version " @for (i, v) in c.forks.iter().enumerate() { @if i > 0 { ", " } (v) } " (a fork of its history). This node follows the version it received first; ask the administrators which one is meant." }
                    }
                    @if let Some(p) = c.period {
                        p.muted {
                            "Period from " (jiff::Timestamp::from_second(p).map(|t| t.to_string()).unwrap_or_default()) " · "
                            a href={ "/network?period=" (p.saturating_sub(i64::from(secs))) } { "earlier period" }
                            @if p.saturating_add(2 * i64::from(secs)) <= now { " · " a href={ "/network?period=" (p.saturating_add(i64::from(secs))) } { "later period" } }
                            " · " a href="/network" { "last complete period" }
                        }
                    }
                    @if !c.wrong_results.is_empty() {
                        p.error role="alert" { "Warning: an administrator signed a community result that its members' snapshots do not give (recomputed here): " @for (i, (p, s)) in c.wrong_results.iter().enumerate() { @if i > 0 { ", " } "administrator " code { (s) } " for the period from " (jiff::Timestamp::from_second(*p).map(|t| t.to_string()).unwrap_or_default()) } ". This node leaves that result out." }
                    }
                    @if let Some(by) = &c.merged_by {
                        p.muted { "This community is linked, not joined: its chart is the result administrator " code { (by) } " merged and signed from its members' snapshots (its members check it; this node cannot)." }
                    }
                    (chart_table("Community chart", &c.chart))
                    @if let Some(s) = &c.secure {
                        (secure_table(s))
                    }
                    @if let Some(f) = &c.federated {
                        p.muted { "Linked: " @for (name, id, w, held) in &c.links { (name) " (" (id) ", weight " (f64::from(*w) / 1000.0) @if !held { ", not reached yet" } ") " } }
                        (chart_table("Federated chart", f))
                    }
                }
            }
        },
    )
}

fn find_community(
    state: &AppState,
    short: &str,
) -> Option<(crate::federation::CommunityId, crate::federation::community::SignedManifest)> {
    let followed = state.store.followed().ok()?;
    followed.into_iter().find_map(|(id, _)| {
        (crate::federation::short_hex(&id) == short)
            .then(|| state.store.manifest(&id).ok().flatten().map(|m| (id, m)))
            .flatten()
    })
}

fn peer_text(node: &crate::federation::NodeId) -> String {
    crate::p2p::peer_id_of(node).map(|p| p.to_string()).unwrap_or_else(|| hex::encode(node))
}

/// `GET /network/community/{id}`: a community's manifest; for this node's
/// administrators, when the node administers the community, forms to admit and remove
/// members.
pub async fn community_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::extract::Path(short): axum::extract::Path<String>,
) -> Response {
    let v = viewer(&state, &headers);
    community_view(&state, &v, &short, None, StatusCode::OK)
}

fn community_view(
    state: &AppState,
    v: &super::Viewer,
    short: &str,
    message: Option<Markup>,
    status: StatusCode,
) -> Response {
    let Some((id, m)) = find_community(state, short) else { return super::not_found_page(v) };
    let manifest = &m.manifest;
    let can_edit = super::is_admin(state, v) && manifest.admins.contains(&state.node_key);
    let csrf = v.0.as_ref().map(|(_, c)| c.clone()).unwrap_or_default();
    let ticket = if can_edit {
        match state.store.ticket_chain(&id) {
            Ok((chain, head)) => {
                crate::federation::community::TicketV2::new(id, chain, head, manifest.bootstrap.clone()).to_text()
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the manifest chain for a ticket");
                String::new()
            }
        }
    } else {
        String::new()
    };
    page(
        status,
        &manifest.name,
        v,
        html! {
            h1 { "Community " (manifest.name) }
            @if let Some(msg) = message { div role="status" { (msg) } }
            p.muted { "Id " code { (short) } " · manifest version " (manifest.version) " · " (match manifest.admission {
                crate::federation::community::Admission::AllowList => "allow-list".to_owned(),
                crate::federation::community::Admission::Open { probation_periods } => format!("open, probation {probation_periods} periods"),
            }) }
            p { "Privacy floor: at most ε " (crate::privacy::params::eps_text(manifest.floor.max_eps_week_milli)) " per user-week, k at least " (manifest.floor.min_k) ". "
                "Merging: no origin counts more than " (crate::federation::merge::MEDIAN_MULTIPLE) " times the median origin's largest count for any item; one origin gives at most " (f64::from(manifest.policy.max_origin_share_milli) / 10.0) " % of an item once " (manifest.policy.share_cap_from) " origins report it; an item needs " (manifest.policy.min_origins_per_item) " member origin(s); nodes not listed as members only corroborate." }
            h2 { "Administrators" @if manifest.admin_threshold > 1 { " (" (manifest.admin_threshold) " must sign each new version)" } }
            ul { @for a in &manifest.admins { li { code { (peer_text(a)) } } } }
            h2 { "Members (" (manifest.members.len()) ")" }
            table {
                thead { tr { th { "Node" } th { "Weight" } @if can_edit { th {} } } }
                tbody {
                    @for mem in &manifest.members {
                        tr {
                            td { code { (peer_text(&mem.node)) } }
                            td { (f64::from(mem.weight_milli) / 1000.0) }
                            @if can_edit {
                                td {
                                    form method="post" action={ "/network/community/" (short) "/remove" } {
                                        input type="hidden" name="csrf" value=(csrf);
                                        input type="hidden" name="node" value=(peer_text(&mem.node));
                                        button aria-label={ "Remove " (peer_text(&mem.node)) } { "Remove" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if can_edit {
                form method="post" action={ "/network/community/" (short) "/admit" } {
                    input type="hidden" name="csrf" value=(csrf);
                    label { "Admit a node (its PeerId, from " code { "hearsay node id" } ") " input name="node" required maxlength="64"; }
                    button { "Admit" }
                }
                @if manifest.admin_threshold > 1 {
                    h2 { "Approve a proposal" }
                    p { "Each new version needs " (manifest.admin_threshold) " of the " (manifest.admins.len()) " administrators' signatures. Paste a proposal another administrator gave you:" }
                    form method="post" action={ "/network/community/" (short) "/approve" } {
                        input type="hidden" name="csrf" value=(csrf);
                        label { "Proposal " textarea name="proposal" required rows="3" cols="80" maxlength="100000" {} }
                        button { "Approve" }
                    }
                }
                h2 { "Invitation" }
                p { "After admitting a node, give its administrator this ticket; on that node: " code { "hearsay community join TICKET" } " (no need to stop this node)." }
                textarea readonly rows="4" cols="80" aria-label="Invitation ticket" {
                    (ticket)
                }
            }
            @if !manifest.links.is_empty() {
                h2 { "Federation links" }
                ul { @for l in &manifest.links { li { (l.name) " (" (crate::federation::short_hex(&l.community)) "), weight " (f64::from(l.weight_milli) / 1000.0) } } }
            }
            p { a href="/network" { "Back to the network" } }
        },
    )
}

/// `POST /network/community/{id}/admit` and `/remove`: a new manifest version signed
/// by this node, stored, then spread to the members by the network task.
pub async fn edit_members(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::extract::Path((short, action)): axum::extract::Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let (v, _, f) = match super::signed_form(&state, &headers, &body) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let Some((cid, m)) = find_community(&state, &short) else { return super::not_found_page(&v) };
    if !super::is_admin(&state, &v) || !m.manifest.admins.contains(&state.node_key) {
        return super::not_found_page(&v);
    }
    let bad =
        |msg: &str| community_view(&state, &v, &short, Some(html! { p.error { (msg) } }), StatusCode::BAD_REQUEST);
    if action == "approve" {
        let proposal =
            match crate::federation::community::proposal_from_text(f.get("proposal").map_or("", String::as_str)) {
                Ok(p)
                    if p.manifest.community() == cid && p.manifest.version == m.manifest.version.saturating_add(1) =>
                {
                    p
                }
                Ok(_) => return bad("That proposal is not the next version of this community's manifest."),
                Err(e) => return bad(&e),
            };
        // Never blind: the first post shows what the proposal changes; only the
        // confirming post (its button) signs.
        if f.get("confirm").map(String::as_str) != Some("sign") {
            let csrf = v.0.as_ref().map(|(_, c)| c.clone()).unwrap_or_default();
            let changes = crate::federation::community::describe_change(&m.manifest, &proposal.manifest, peer_text);
            let text = crate::federation::community::proposal_text(&proposal);
            return community_view(
                &state,
                &v,
                &short,
                Some(html! {
                    p { "Version " (proposal.manifest.version) " changes:" }
                    ul { @for c in &changes { li { (c) } } }
                    form method="post" action={ "/network/community/" (short) "/approve" } {
                        input type="hidden" name="csrf" value=(csrf);
                        input type="hidden" name="proposal" value=(text);
                        button name="confirm" value="sign" { "Sign these changes" }
                    }
                }),
                StatusCode::OK,
            );
        }
        if let Err(r) = claim(&state, &v, &short, &cid, &proposal.manifest) {
            return *r;
        }
        return match state.signer.cosign_manifest(&proposal) {
            Ok(signed) => settle_and_store(&state, &v, &short, &cid, &m, signed).await,
            Err(e) => bad(&e.to_string()),
        };
    }
    if action == "withdraw" {
        let next = m.manifest.version.saturating_add(1);
        let msg = match state.store.withdraw_manifest_signature(&cid, next) {
            Ok(true) => {
                format!("This node's signature of the pending version {next} is withdrawn: it may sign another.")
            }
            Ok(false) => format!("This node signed no pending version {next}."),
            Err(e) => return server_error(&v, e),
        };
        return community_view(&state, &v, &short, Some(html! { p { (msg) } }), StatusCode::OK);
    }
    let Some(node) = f.get("node").and_then(|n| crate::p2p::node_of_text(n)) else {
        return bad("That is not an ed25519 PeerId.");
    };
    let now = crate::now_unix();
    let next = match action.as_str() {
        "admit" if !m.manifest.is_member(&node) => {
            m.manifest.next(now, |x| x.members.push(crate::federation::community::Member { node, weight_milli: 1000 }))
        }
        "remove" if m.manifest.is_member(&node) && !m.manifest.admins.contains(&node) => {
            m.manifest.next(now, |x| x.members.retain(|mem| mem.node != node))
        }
        "admit" | "remove" => return bad("Nothing to change (already a member, not a member, or an administrator)."),
        _ => return super::not_found_page(&v),
    };
    if let Err(r) = claim(&state, &v, &short, &cid, &next) {
        return *r;
    }
    match crate::federation::community::open_manifest(&state.signer.sign_manifest(&next)) {
        Ok(signed) => settle_and_store(&state, &v, &short, &cid, &m, signed).await,
        Err(e) => server_error(&v, e),
    }
}

/// Refuses to sign a second body of a version this node signed (a fork), with the way
/// out: finish the pending proposal, or withdraw it.
fn claim(
    state: &AppState,
    v: &super::Viewer,
    short: &str,
    cid: &crate::federation::CommunityId,
    m: &crate::federation::community::ManifestV1,
) -> Result<(), Box<Response>> {
    match state.store.claim_manifest_signature(cid, m.version, &m.body_hash()) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => {
            let csrf = v.0.as_ref().map(|(_, c)| c.clone()).unwrap_or_default();
            Err(Box::new(community_view(
                state,
                v,
                short,
                Some(html! {
                    p.error { "This node already signed a different version " (m.version) " (a proposal still pending): signing another would fork the community's history. Finish that one, or withdraw it (if it still gathers its signatures elsewhere, the two would be a fork)." }
                    form method="post" action={ "/network/community/" (short) "/withdraw" } {
                        input type="hidden" name="csrf" value=(csrf);
                        button { "Withdraw this node's pending signature" }
                    }
                }),
                StatusCode::CONFLICT,
            )))
        }
        Err(e) => Err(Box::new(server_error(v, e))),
    }
}

/// Stores a signed next version and has the network task spread it, or, when the
/// community needs more administrators' signatures, shows the proposal to pass on.
async fn settle_and_store(
    state: &AppState,
    v: &super::Viewer,
    short: &str,
    cid: &crate::federation::CommunityId,
    current: &crate::federation::community::SignedManifest,
    signed: crate::federation::community::SignedManifest,
) -> Response {
    use crate::federation::community::{Settled, proposal_text, settle};
    let version = signed.manifest.version;
    match settle(cid, Some(current), signed) {
        Ok(Settled::Complete(m)) => {
            match state.store.put_manifest(&m) {
                Ok(true) => {}
                Ok(false) => {
                    return community_view(
                        state,
                        v,
                        short,
                        Some(
                            html! { p.error { "Another version " (version) " arrived meanwhile: nothing published." } },
                        ),
                        StatusCode::CONFLICT,
                    );
                }
                Err(e) => return server_error(v, e),
            }
            if let Some(p) = &state.p2p {
                p.refresh().await;
            }
            community_view(
                state,
                v,
                short,
                Some(html! { p { "Manifest version " (version) " signed and sent to the members." } }),
                StatusCode::OK,
            )
        }
        Ok(Settled::NeedsMore { proposal, have, need }) => community_view(
            state,
            v,
            short,
            Some(html! {
                p { "Manifest version " (version) " is signed by " (have) " of the " (need) " administrators it needs; nothing changes until the others approve it. "
                    "Give them this proposal (on their node: the community page's Approve form, or " code { "hearsay community approve PROPOSAL" } "):" }
                textarea readonly rows="4" cols="80" aria-label="Proposal to approve" { (proposal_text(&proposal)) }
            }),
            StatusCode::ACCEPTED,
        ),
        Err(e) => community_view(state, v, short, Some(html! { p.error { (e.to_string()) } }), StatusCode::BAD_REQUEST),
    }
}
