//! The transparency page (`/privacy`) and the published releases (`/releases`,
//! `/releases/{start}`): every snapshot this node has published, decoded, with its
//! parameters; for a signed-in user, their ledger and what of them went into each
//! release; for an administrator, every user's figures. Only published (noisy) values
//! and a user's own data are shown; true aggregate counts exist nowhere.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::{page, server_error, viewer};
use crate::envelope::open_snapshot;
use crate::privacy::params::eps_text;
use crate::privacy::snapshot::{Entry, SnapshotV1};
use crate::state::AppState;

const SHOWN_RELEASES: usize = 20;

fn utc(t: i64) -> String {
    jiff::Timestamp::from_second(t).map(|ts| ts.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()).unwrap_or_default()
}

fn span(start: i64, secs: i64) -> String {
    if secs % 604_800 == 0 {
        let date = jiff::Timestamp::from_second(start).map(|t| t.to_zoned(jiff::tz::TimeZone::UTC).date());
        if let Ok(d) = date {
            let w = d.iso_week_date();
            return format!("ISO week {}-W{:02} (from {})", w.year(), w.week(), utc(start));
        }
    }
    format!("{} – {}", utc(start), utc(start + secs))
}

fn delta_text(pico: u64) -> String {
    format!("{:e}", pico as f64 * 1e-12)
}

/// `GET /releases/{start}`: the signed snapshot envelope exactly as published.
pub async fn release_bytes(State(state): State<AppState>, Path(start): Path<String>) -> Response {
    let Ok(start) = start.parse::<i64>() else {
        return (StatusCode::BAD_REQUEST, "the period start is a Unix time in seconds\n").into_response();
    };
    match state.store.release(start) {
        Ok(Some(bytes)) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "no release for that period\n").into_response(),
        Err(e) => {
            tracing::error!(error = %e, "reading a release");
            (StatusCode::INTERNAL_SERVER_ERROR, "could not read the release\n").into_response()
        }
    }
}

/// `GET /releases`: the list of published releases (JSON), newest first.
pub async fn release_list(State(state): State<AppState>) -> Response {
    match state.store.releases(usize::MAX) {
        Ok(list) => {
            let rows: Vec<serde_json::Value> = list
                .iter()
                .map(|(start, bytes)| {
                    serde_json::json!({
                        "period_start": start,
                        "bytes": bytes.len(),
                        "blake3": blake3::hash(bytes).to_hex().to_string(),
                        "url": format!("/releases/{start}"),
                    })
                })
                .collect();
            axum::Json(serde_json::json!({ "releases": rows })).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "listing releases");
            (StatusCode::INTERNAL_SERVER_ERROR, "could not list releases\n").into_response()
        }
    }
}

fn chart_table(caption: &str, entries: &[Entry], noisy: bool) -> Markup {
    let mut rows: Vec<&Entry> = entries.iter().collect();
    rows.sort_by(|a, b| b.listeners.cmp(&a.listeners).then(b.listens.cmp(&a.listens)));
    let approx = if noisy { "≈ " } else { "" };
    html! {
        @if rows.is_empty() {
            p.muted { (caption) ": nothing." }
        } @else {
            table {
                caption { (caption) }
                thead { tr { th { "Item" } th { "Listeners" } th { "Listens" } } }
                tbody {
                    @for e in rows {
                        tr { td { (e.name.display()) } td { (approx) (e.listeners) } td { (approx) (e.listens.max(0)) } }
                    }
                }
            }
        }
    }
}

pub(super) fn snapshot_view(start: i64, bytes: &[u8]) -> Markup {
    let hash = blake3::hash(bytes).to_hex().to_string();
    match open_snapshot(bytes) {
        Err(e) => html! { p.error { "Release of " (utc(start)) " does not verify: " (e.to_string()) } },
        Ok((_, s)) => snapshot_body(&s, &hash, bytes.len()),
    }
}

fn snapshot_body(s: &SnapshotV1, hash: &str, size: usize) -> Markup {
    let p = &s.params;
    html! {
        section.release {
            h3 { (span(s.period_start, i64::from(s.period_secs))) }
            p.muted {
                "Issued " (utc(s.issued_at)) " · version " (s.version) " · " (size) " bytes · blake3 "
                code { (&hash[..16]) "…" } " · "
                a href={ "/releases/" (s.period_start) } { "signed bytes" }
            }
            p {
                "Aggregate section: ε " (eps_text(u64::from(p.eps_listeners_milli))) " (items and listeners) + "
                (eps_text(u64::from(p.eps_listens_milli))) " (listens) per chart, δ " (delta_text(p.delta_pico))
                " per chart, k " (p.k) ", L0 " (p.l0) ", C " (p.clamp) ", threshold τ " (s.tau) "."
            }
            div.cols {
                div { (chart_table("Public users: artists (exact)", &s.public.artists, false)) }
                div { (chart_table("Public users: tracks (exact)", &s.public.tracks, false)) }
                div { (chart_table("Everyone else sharing in aggregate: artists (noisy)", &s.aggregate.artists, true)) }
                div { (chart_table("Everyone else sharing in aggregate: tracks (noisy)", &s.aggregate.tracks, true)) }
            }
        }
    }
}

/// `GET /privacy`: the transparency page.
pub async fn page_handler(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let v = viewer(&state, &headers);
    let cfg = &state.privacy;
    let (params, budget) = match (cfg.params(), cfg.budget()) {
        (Ok(p), Ok(b)) => (p, b),
        _ => return server_error(&v, "invalid privacy config"),
    };
    let releases = match state.store.releases(SHOWN_RELEASES) {
        Ok(r) => r,
        Err(e) => return server_error(&v, e),
    };
    let cost = params.release_cost();
    let mine = match &v.0 {
        Some((me, _)) => {
            let mut ledgers = state.store.user_ledgers(me.id, usize::MAX).unwrap_or_default();
            let total = ledgers.iter().fold(crate::privacy::params::Spend::default(), |a, (_, l)| a.plus(l.spent));
            ledgers.truncate(12);
            let contributions = state.store.contributions(me.id, SHOWN_RELEASES).unwrap_or_default();
            // The rolling year the cap holds over: this week and the 51 before it.
            let week = crate::privacy::accountant::week_of(crate::now_unix());
            let year = state
                .store
                .accounts(week, [me.id.0])
                .unwrap_or_default()
                .remove(&me.id.0)
                .map(|a| a.earlier.plus(a.week.spent))
                .unwrap_or_default();
            let secure = state.store.secure_reports(me.id, SHOWN_RELEASES).unwrap_or_default();
            Some((me.clone(), ledgers, contributions, year, total, secure))
        }
        None => None,
    };
    let admin_rows = if super::is_admin(&state, &v) {
        let mut rows = Vec::new();
        for u in state.store.users().unwrap_or_default() {
            if !v.may(&state, &u, crate::policy::Purpose::Accounting).exact() {
                continue;
            }
            let ledgers = state.store.user_ledgers(u.id, 1).unwrap_or_default();
            let contributions = state.store.contributions(u.id, usize::MAX).unwrap_or_default();
            rows.push((u, ledgers.into_iter().next(), contributions));
        }
        Some(rows)
    } else {
        None
    };
    page(
        StatusCode::OK,
        "Privacy",
        &v,
        html! {
            h1 { "What leaves this node" }
            p {
                "Once per period (" (span_len(i64::from(cfg.period_secs))) "), " (span_len(i64::from(cfg.grace_secs))) " after it ends, "
                "this node publishes one signed snapshot, computed once and never re-made. It holds two sections:"
            }
            ul {
                li { strong { "Public" } ": exact listener and listen counts over the users who chose the public level." }
                li {
                    strong { "Aggregate" } ": counts over the users who chose the aggregate level, with differential privacy. "
                    "Each user counts with at most " (params.l0) " artists and " (params.l0) " tracks, at most " (params.clamp)
                    " listens each; an item appears only if at least " (params.k) " people here listened to it and its noisy listener count reaches "
                    (params.tau()) ". Noise is exact integer Laplace noise from the operating system's random source."
                }
                li { strong { "Private" } " users are in no release, and nothing about them is read to make one." }
            }
            p {
                "One release costs each aggregate user ε " (eps_text(cost.eps_milli)) " and δ " (delta_text(cost.delta_pico))
                ", every period, whether they listened or not (so what they spend says nothing of their activity). "
                "Each user's week may spend at most ε " (eps_text(budget.week.eps_milli)) " and δ " (delta_text(budget.week.delta_pico))
                ", and any 52 weeks in a row at most ε " (eps_text(budget.year.eps_milli)) " and δ " (delta_text(budget.year.delta_pico))
                " (the spends of all releases add up). A release that would go over leaves that user out."
            }
            @if let Some((me, ledgers, contributions, year, total, secure)) = &mine {
                h2 { "You" }
                p { "Your sharing level is " strong { (me.visibility.as_str()) } ". Sharing more applies from the next period, sharing less at once ("
                    a href="/settings" { "settings" } ")." }
                h3 { "Your privacy budget" }
                p.budget-total {
                    "Over the last 52 weeks your data has cost ε " strong { (eps_text(year.eps_milli)) } " of " (eps_text(budget.year.eps_milli))
                    " and δ " (delta_text(year.delta_pico)) " of " (delta_text(budget.year.delta_pico))
                    "; since your account was made here, ε " (eps_text(total.eps_milli)) " and δ " (delta_text(total.delta_pico)) " in all."
                }
                @if ledgers.is_empty() {
                    p.muted { "No release has used your data yet." }
                } @else {
                    table {
                        thead { tr { th { "Week from" } th { "ε spent" } th { "δ spent" } th { "Releases" } } }
                        tbody {
                            @for (week, l) in ledgers {
                                tr {
                                    td { (utc(*week)) }
                                    td { (eps_text(l.spent.eps_milli)) " of " (eps_text(budget.week.eps_milli)) }
                                    td { (delta_text(l.spent.delta_pico)) }
                                    td { (l.periods.len()) }
                                }
                            }
                        }
                    }
                }
                h3 { "Community reports sent for you (secure aggregation)" }
                @if secure.is_empty() {
                    p.muted { "None: no community this node reports to counts by secure aggregation, or you are not at the aggregate level." }
                } @else {
                    p.muted { "Each report is split into two encrypted shares, one for each of the community's aggregators; neither can read it alone. Seen here only by you." }
                    table.secure-reports {
                        thead { tr { th { "Period from" } th { "Community" } th { "Counted" } th { "ε charged" } } }
                        tbody {
                            @for r in secure {
                                tr {
                                    td { (utc(r.period)) }
                                    td { code { (crate::federation::short_hex(&r.community)) } }
                                    td {
                                        @if let Some(why) = &r.refused { "Not sent: " (why) }
                                        @else if r.items.is_empty() { "Nothing (none of your items was in the round's list; the report was sent all the same)" }
                                        @else { @for (i, n) in r.items.iter().enumerate() { @if i > 0 { ", " } (n.display()) } }
                                    }
                                    td { (eps_text(r.charged.eps_milli)) }
                                }
                            }
                        }
                    }
                }
                h3 { "What of you went into each release" }
                @if contributions.is_empty() {
                    p.muted { "Nothing of yours has been released." }
                }
                @for (start, c) in contributions {
                    div.contribution {
                        h4 { (utc(*start)) " · as " (c.level.as_str()) }
                        @if let Some(why) = &c.refused {
                            p { "Left out: " (why) }
                        } @else {
                            p.muted {
                                @if c.exact() { "Your exact counts (top items shown):" }
                                @else { "Your bounded contribution, before noise (seen only by you):" }
                            }
                            @if c.artists.is_empty() && c.tracks.is_empty() {
                                p.muted { "(No items: you did not listen that period, or you erased those listens since.)" }
                            }
                            ul {
                                @for (name, n) in c.artists.iter().chain(c.tracks.iter()) {
                                    li { (name.display()) ": " (n) }
                                }
                            }
                        }
                    }
                }
            }
            @if let Some(rows) = &admin_rows {
                h2 { "All users (administrators only)" }
                table {
                    thead { tr { th { "User" } th { "Level" } th { "Latest week: ε spent" } th { "Releases with their data" } th { "Left out (over budget)" } } }
                    tbody {
                        @for (u, ledger, contributions) in rows {
                            tr {
                                td { (u.name) }
                                td { (u.visibility.as_str()) }
                                td { @if let Some((_, l)) = ledger { (eps_text(l.spent.eps_milli)) } @else { "0" } }
                                td { (contributions.iter().filter(|(_, c)| c.refused.is_none()).count()) }
                                td { (contributions.iter().filter(|(_, c)| c.refused.is_some()).count()) }
                            }
                        }
                    }
                }
            }
            h2 { "Releases published by this node" }
            @let sent_to: Vec<String> = state.store.followed().unwrap_or_default().into_iter()
                .filter(|(_, f)| f.member)
                .filter_map(|(id, _)| state.store.manifest(&id).ok().flatten().map(|m| m.manifest.name))
                .collect();
            p {
                @if sent_to.is_empty() { "This node is in no community: its releases are served at /releases and sent to no one." }
                @else { "Each release is sent, exactly as shown, to the members of: " (sent_to.join(", ")) " (libp2p gossip; peers that were offline fetch the same bytes by catch-up)." }
            }
            p.muted { "Newest first, decoded from the signed bytes that left the node (list as JSON: " a href="/releases" { "/releases" } ")." }
            @if releases.is_empty() {
                p { "None yet." }
            }
            @for (start, bytes) in &releases {
                (snapshot_view(*start, bytes))
            }
        },
    )
}

fn span_len(secs: i64) -> String {
    match secs {
        604_800 => "an ISO week, in UTC".into(),
        s if s % 86_400 == 0 => format!("{} days", s / 86_400),
        s if s % 3_600 == 0 => format!("{} hours", s / 3_600),
        s => format!("{s} seconds"),
    }
}
