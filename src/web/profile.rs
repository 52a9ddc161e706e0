//! What a user's listening looks like: the home page, profiles with charts and plots,
//! artist, track and album pages, weekly charts and the history with deletion, each
//! shown only as the user's sharing level allows.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use crate::policy::Purpose;
use crate::state::AppState;
use crate::stats::chart::Kind;
use crate::stats::period::Period;
use crate::store::logs::Order;

use super::*;

/// `/`: the home page (`http` hands Audioscrobbler handshakes at `/?hs=…` to `api`).
pub async fn home(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let viewer = viewer(&state, &headers);
    let now = crate::now_unix();
    let tz = crate::stats::period::time_zone(&state.node_timezone).unwrap_or(jiff::tz::TimeZone::UTC);
    let week = crate::stats::period::local_date(now, &tz).iso_week_date();
    let this_week = Period::IsoWeek { year: week.year(), week: week.week() };
    // The node chart sums the public profiles only (`policy::Purpose::NodeChart`), so
    // anyone may see it; aggregate members count only in the releases.
    let chart = match state.store.node_chart(Kind::Artist, &this_week, 10, now, &tz) {
        Ok(c) => Some(c),
        Err(e) => return server_error(&viewer, e),
    };
    let latest = state.store.releases(1).unwrap_or_default().into_iter().next();
    let recent = match recent_public(&state, &viewer, RECENT) {
        Ok(r) => r,
        Err(e) => return server_error(&viewer, e),
    };
    page(
        StatusCode::OK,
        "Home",
        &viewer,
        html! {
            @if let Some(chart) = &chart {
                h1 { "This week on this node's public profiles" }
                p.muted { "Summed over the members who chose to be public. Members at the aggregate level count only in the node's privacy-protected releases (below); private members nowhere." }
                @if chart.rows.is_empty() {
                    p.muted { "No listens on public profiles this week yet." }
                } @else {
                    p.muted { (chart.listens) " listens from " (chart.listeners) " listeners" }
                    table {
                        thead { tr { th { "#" } th { "Artist" } th { "Listeners" } th { "Listens" } } }
                        tbody {
                            @for (i, r) in chart.rows.iter().enumerate() {
                                tr { td { (i + 1) } td { (r.row.name) } td { (r.listeners) } td { (r.row.listens) } }
                            }
                        }
                    }
                }
            } @else {
                h1 { "hearsay" }
                p { "A node of a federated scrobble network: its members' listening stays here; only what they choose leaves, as aggregates. " a href="/privacy" { "What this node publishes" } "." }
            }
            h2 { "Latest release of this node" }
            @if let Some((start, bytes)) = &latest {
                (transparency::snapshot_view(*start, bytes))
            } @else {
                p.muted { "Nothing published yet." }
            }
            h2 { "Recently, from public profiles" }
            @if recent.is_empty() { p.muted { "Nobody here shares their listening publicly yet." } }
            ul {
                @for (name, l) in &recent {
                    li { a href={ "/user/" (name) } { (name) } " — " (l.listen.track().artist) " – " (l.listen.track().title) }
                }
            }
        },
    )
}

/// Listens in the home page's "recently, from public profiles".
const RECENT: usize = 15;

/// The `n` newest listens of the users whose history `viewer` may see, newest first.
/// Users are taken newest listen first (`Store::users_by_newest_listen`, kept in memory),
/// and listens are read only from users who can still place one among the `n`: with
/// every member public, a handful of users are looked up and read, whatever the node's
/// size.
fn recent_public(
    state: &AppState,
    viewer: &super::Viewer,
    n: usize,
) -> crate::store::Result<Vec<(String, crate::store::StoredListen)>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut recent: Vec<(String, crate::store::StoredListen)> = Vec::new();
    for (newest, id) in state.store.users_by_newest_listen()? {
        // The n-th newest so far is at least as new as anything this user (and every
        // later one) played: nothing left can enter (a tie would be cut, as read later).
        if recent.get(n - 1).is_some_and(|r| r.1.listen.listened_at() >= newest) {
            break;
        }
        let user = match state.store.user(id) {
            Ok(Some(u)) => u,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(error = %e, "reading a user for the home page");
                continue;
            }
        };
        if !viewer.may(state, &user, Purpose::History).exact() {
            continue;
        }
        // One user's unreadable index costs that user's listens here, not the page.
        match state.store.listens(user.id, 0, i64::MAX, n, Order::NewestFirst) {
            Ok(listens) => recent.extend(listens.into_iter().map(|l| (user.name.clone(), l))),
            Err(e) => tracing::error!(error = %e, "reading a user's listens for the home page"),
        }
        recent.sort_by_key(|r| std::cmp::Reverse(r.1.listen.listened_at()));
        recent.truncate(n);
    }
    Ok(recent)
}

/// Period choices on profiles: (query value, label, period).
pub(super) fn periods() -> [(&'static str, &'static str, Period); 6] {
    [
        ("7d", "Last 7 days", Period::LastDays(7)),
        ("1m", "Last month", Period::LastMonths(1)),
        ("3m", "Last 3 months", Period::LastMonths(3)),
        ("6m", "Last 6 months", Period::LastMonths(6)),
        ("12m", "Last 12 months", Period::LastMonths(12)),
        ("all", "All time", Period::AllTime),
    ]
}

pub(super) async fn profile(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let v = viewer(&state, &headers);
    // A hidden profile looks exactly like a missing one.
    let user = match shown(&state, &v, &name, Purpose::Profile) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let own = v.0.as_ref().is_some_and(|(me, _)| me.id == user.id);
    let chosen = q.get("period").map_or("7d", String::as_str);
    let Some((key, label, period)) = periods().into_iter().find(|(k, _, _)| *k == chosen) else {
        return not_found_page(&v);
    };
    let now = crate::now_unix();
    let charts: Result<Vec<_>, _> =
        Kind::ALL.iter().map(|kind| state.store.chart(user.id, *kind, &period, 10, now)).collect();
    let charts = match charts {
        Ok(c) => c,
        Err(e) => return server_error(&v, e),
    };
    let recent = state.store.listens(user.id, 0, i64::MAX, 20, Order::NewestFirst).unwrap_or_default();
    let loves = state.store.feedback(user.id, 1, 10).unwrap_or_default();
    let playing = state.live.playing(user.id);
    let total = state.store.log_head(user.id).map(|h| h.n_listens).unwrap_or(0);
    let weekly = state
        .store
        .listens_series(user.id, &Period::LastMonths(12), crate::store::aggregates::Step::Week, now)
        .unwrap_or_default();
    let weekly_total: u64 = weekly.iter().map(|(_, n)| n).sum();
    let plot = plot::listens_svg(&weekly, plot::Steps::Weeks, 560, 200);
    let clock = state.store.clock(user.id, &period, now).unwrap_or([[0; 24]; 7]);
    let neighbours = if own { state.store.neighbours(user.id, 5).unwrap_or_default() } else { Vec::new() };
    page(
        StatusCode::OK,
        &user.name,
        &v,
        html! {
            h1 { (user.name) }
            p.muted { (total) " listens" @if own { " · your profile is " (user.visibility.as_str()) } }
        @if own && state.store.is_paused(user.id).unwrap_or(false) {
            p role="status" { strong { "Scrobbling is paused" } " — submissions are not stored. " a href="/settings" { "Resume" } }
        }
            @if let Some(p) = &playing { p { "Now playing: " strong { (p.track.artist) " – " (p.track.title) } } }
            nav.periods aria-label="period" {
                @for (k, l, _) in periods() {
                    @if k == key { a href={ "?period=" (k) } aria-current="page" { (l) } } @else { a href={ "?period=" (k) } { (l) } }
                }
            }
            h2 { (label) }
            div.cols {
                @for (title, what, chart) in [("Top artists", "artist", &charts[0]), ("Top tracks", "track", &charts[1]), ("Top albums", "album", &charts[2])] {
                    section {
                        h3 { (title) }
                        @if chart.rows.is_empty() { p.muted { "Nothing in this period." } }
                        ol {
                            @for r in &chart.rows {
                                li { a href={ "/user/" (user.name) "/" (what) "/" (r.handle) } { @if let Some(a) = &r.artist { (a) " – " } (r.name) } " " span.muted { "(" (r.listens) ")" } }
                            }
                        }
                    }
                }
            }
            p { a href={ "/user/" (user.name) "/weekly" } { "Weekly charts" } }
        h2 { "Listens per week, last 12 months" }
        figure role="img" aria-label={ (weekly_total) " listens over the last 12 months, per week; the numbers follow" } {
            (maud::PreEscaped(plot))
        }
        // The plot's numbers, for screen readers and whoever wants them exactly.
        details {
            summary { "The numbers, week by week" }
            div.scroll tabindex="0" role="region" aria-label="Listens per week" {
                table {
                    thead { tr { th { "Week of" } th { "Listens" } } }
                    tbody { @for (day, n) in weekly.iter().rev() { tr { td { (crate::stats::period::date_of(*day).to_string()) } td { (n) } } } }
                }
            }
        }
        h2 { "Listening clock" }
        (clock_table(&clock))
        @if !neighbours.is_empty() {
            h2 { "Listens like you" }
            ul {
                @for n in &neighbours {
                    li {
                        a href={ "/user/" (n.user.name) } { (n.user.name) }
                        " " span.muted { (format!("{:.0}%", n.similarity * 100.0)) }
                    }
                }
            }
        }
        h2 { "Recent listens" }
            @if recent.is_empty() { p.muted { "No listens yet." } }
            table {
                tbody {
                    @for l in &recent {
                        tr {
                            td { (l.listen.track().artist) }
                            td { (l.listen.track().title) }
                            td.muted { (jiff::Timestamp::from_second(l.listen.listened_at()).map(|t| t.strftime("%Y-%m-%d %H:%M").to_string()).unwrap_or_default()) }
                        }
                    }
                }
            }
            @if !loves.is_empty() {
                h2 { "Loved tracks" }
                ul { @for f in &loves { li { @if let Some(a) = &f.row.artist { (a) " – " } (f.row.name) } } }
            }
        },
    )
}

/// Listens per history page.
pub(super) const PAGE: usize = 50;

/// A place in a user's history: a listen's time and sequence number. Pages are read from
/// a cursor (`?before=T.S`: the page of listens just older, `?after=T.S`: just newer), so
/// a page deep in a long history costs what the first does (reading up to it was
/// O(page × 50) with page numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cursor {
    at: i64,
    seq: u64,
}

impl Cursor {
    fn parse(text: &str) -> Option<Cursor> {
        let (at, seq) = text.split_once('.')?;
        Some(Cursor { at: at.parse().ok()?, seq: seq.parse().ok()? })
    }

    fn of(l: &crate::store::StoredListen) -> Cursor {
        Cursor { at: l.listen.listened_at(), seq: l.seq }
    }

    fn text(self) -> String {
        format!("{}.{}", self.at, self.seq)
    }
}

/// Which page of the history: the newest, or the one older or newer than a listen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HistoryPage {
    Newest,
    Before(Cursor),
    After(Cursor),
}

impl HistoryPage {
    fn from_query(q: &HashMap<String, String>) -> Option<HistoryPage> {
        match (q.get("before"), q.get("after")) {
            (Some(b), None) => Cursor::parse(b).map(HistoryPage::Before),
            (None, Some(a)) => Cursor::parse(a).map(HistoryPage::After),
            (None, None) => Some(HistoryPage::Newest),
            (Some(_), Some(_)) => None,
        }
    }

    /// The query that shows this page again (rebuilt from parsed numbers).
    fn query(self) -> String {
        match self {
            HistoryPage::Newest => String::new(),
            HistoryPage::Before(c) => format!("?before={}", c.text()),
            HistoryPage::After(c) => format!("?after={}", c.text()),
        }
    }
}

/// One page of `user`'s history, newest first, and whether there are older and newer
/// listens beyond it. Reads at most one page and one listen more, whatever the depth;
/// the listens of the cursor's own second on its side are left out from the index,
/// without being read.
fn history_page(
    store: &crate::store::Store,
    user: crate::store::UserId,
    which: HistoryPage,
) -> crate::store::Result<(Vec<crate::store::StoredListen>, bool, bool)> {
    let mut out = Vec::new();
    let mut take = |l| {
        out.push(l);
        Ok(out.len() <= PAGE)
    };
    match which {
        HistoryPage::Newest => store.each_listen(user, 0, i64::MAX, Order::NewestFirst, &mut take)?,
        HistoryPage::Before(c) => {
            let (to, skip) = beyond(c, true);
            store.each_listen_but(user, 0, to, Order::NewestFirst, skip, &mut take)?;
        }
        HistoryPage::After(c) => {
            let (from, skip) = beyond(c, false);
            store.each_listen_but(user, from, i64::MAX, Order::OldestFirst, skip, &mut take)?;
        }
    }
    let more = out.len() > PAGE;
    out.truncate(PAGE);
    if let HistoryPage::After(_) = which {
        out.reverse();
    }
    let (older, newer) = match which {
        HistoryPage::Newest => (more, false),
        HistoryPage::Before(_) => {
            (more, out.first().map_or(Ok(true), |f| any_beyond(store, user, Cursor::of(f), false))?)
        }
        HistoryPage::After(_) => (out.last().map_or(Ok(true), |l| any_beyond(store, user, Cursor::of(l), true))?, more),
    };
    Ok((out, older, newer))
}

/// The bound of a read beyond cursor `c` (older: the end, `to`; newer: the start,
/// `from`) and which listens of its own second to leave out: in (time, seq) order, the
/// cursor itself and those on the other side of it.
fn beyond(c: Cursor, older: bool) -> (i64, impl Fn(i64, u64) -> bool) {
    let bound = if older { c.at.saturating_add(1) } else { c.at };
    (bound, move |at: i64, seq: u64| at == c.at && if older { seq >= c.seq } else { seq <= c.seq })
}

/// Whether any listen lies beyond `c` (older or newer).
fn any_beyond(
    store: &crate::store::Store,
    user: crate::store::UserId,
    c: Cursor,
    older: bool,
) -> crate::store::Result<bool> {
    let mut any = false;
    let (bound, skip) = beyond(c, older);
    let found = |_| {
        any = true;
        Ok(false)
    };
    if older {
        store.each_listen_but(user, 0, bound, Order::NewestFirst, skip, found)?;
    } else {
        store.each_listen_but(user, bound, i64::MAX, Order::OldestFirst, skip, found)?;
    }
    Ok(any)
}

/// `/user/{name}/history` (`?before=T.S` / `?after=T.S`): every listen, newest first,
/// a page at a time from a cursor, with delete buttons for the owner.
pub async fn history(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let v = viewer(&state, &headers);
    let user = match shown(&state, &v, &name, Purpose::History) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let own = v.0.as_ref().is_some_and(|(me, _)| me.id == user.id);
    let Some(which) = HistoryPage::from_query(&q) else { return not_found_page(&v) };
    let total = state.store.log_head(user.id).map(|h| h.n_listens as usize).unwrap_or(0);
    let (listens, older, newer) = match history_page(&state.store, user.id, which) {
        Ok(p) => p,
        Err(e) => return server_error(&v, e),
    };
    if listens.is_empty() && which != HistoryPage::Newest {
        return not_found_page(&v);
    }
    let csrf = v.0.as_ref().map(|(_, c)| c.clone()).unwrap_or_default();
    page(
        StatusCode::OK,
        &format!("{} · history", user.name),
        &v,
        html! {
            h1 { a href={ "/user/" (user.name) } { (user.name) } " · history" }
            p.muted { (total) " listens · newest first" @if which != HistoryPage::Newest { " · " a href="?" { "back to the newest" } } }
            table {
                thead { tr { th { "When (UTC)" } th { "Artist" } th { "Track" } th { "Album" } @if own { th { span.muted { "Delete" } } } } }
                tbody {
                    @for l in &listens {
                        tr {
                            td.muted { (jiff::Timestamp::from_second(l.listen.listened_at()).map(|t| t.strftime("%Y-%m-%d %H:%M").to_string()).unwrap_or_default()) }
                            td { (l.listen.track().artist) }
                            td { (l.listen.track().title) }
                            td { (l.listen.track().album.clone().unwrap_or_default()) }
                            @if own {
                                td {
                                    form method="post" action={ "/user/" (user.name) "/history/delete" } {
                                        input type="hidden" name="csrf" value=(csrf);
                                        input type="hidden" name="seq" value=(l.seq);
                                        input type="hidden" name="page" value=(which.query());
                                        button aria-label={ "Delete " (l.listen.track().title) } { "Delete" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            nav aria-label="pages" {
                @if let (true, Some(first)) = (newer, listens.first()) { a href={ "?after=" (Cursor::of(first).text()) } { "Newer" } " " }
                @if let (true, Some(last)) = (older, listens.last()) { a href={ "?before=" (Cursor::of(last).text()) } { "Older" } }
            }
        },
    )
}

/// Deletes one of the signed-in user's listens (a tombstone in their log).
pub async fn delete_listen(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let v = viewer(&state, &headers);
    let f = form_fields(&body);
    let Some((me, _)) = v.0.as_ref().filter(|(me, _)| me.name.eq_ignore_ascii_case(&name)) else {
        return not_found_page(&v);
    };
    if !csrf_ok(&v, &f) {
        return refused(&v);
    }
    let Some(seq) = f.get("seq").and_then(|s| s.parse::<u64>().ok()) else { return refused(&v) };
    if let Err(e) = state.ingestor.ingest(me.id, vec![crate::store::Action::Delete { seq }]).await {
        return server_error(&v, e);
    }
    // Back to the page the listen was on, its cursor rebuilt from parsed numbers; the
    // newest page when that one is now empty (its last listen deleted).
    let back = f.get("page").map_or("", String::as_str).trim_start_matches('?');
    let q: HashMap<String, String> = form_fields(&Bytes::copy_from_slice(back.as_bytes()));
    let mut which = HistoryPage::from_query(&q).unwrap_or(HistoryPage::Newest);
    if history_page(&state.store, me.id, which).is_ok_and(|(l, _, _)| l.is_empty()) {
        which = HistoryPage::Newest;
    }
    Redirect::to(&format!("/user/{}/history{}", me.name, which.query())).into_response()
}

pub(super) fn kind_of(path: &str) -> Option<(Kind, &'static str)> {
    match path {
        "artist" => Some((Kind::Artist, "artist")),
        "track" => Some((Kind::Recording, "track")),
        "album" => Some((Kind::Release, "album")),
        _ => None,
    }
}

/// `/user/{name}/{artist|track|album}/{handle}`: one item in one user's listening: plays
/// per month, first listen, weekly ranks over the last year, and (artists) similar
/// artists. The handle (`item_handle`) is looked up among the user's own items.
pub async fn item(
    State(state): State<AppState>,
    Path((name, what, handle)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let v = viewer(&state, &headers);
    let user = match shown(&state, &v, &name, Purpose::Charts) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let Some((kind, label)) = kind_of(&what) else { return not_found_page(&v) };
    let now = crate::now_unix();
    let all = state.store.chart(user.id, kind, &Period::AllTime, 100_000, now).unwrap_or_else(|_| {
        crate::store::aggregates::Chart { kind, from: 0, to: 0, listens: 0, distinct: 0, rows: Vec::new() }
    });
    let Some(row) = all.rows.iter().find(|r| r.handle == handle).cloned() else { return not_found_page(&v) };
    let id = row.id;
    let monthly = state
        .store
        .item_series(user.id, kind, id, &Period::AllTime, crate::store::aggregates::Step::Month, now)
        .unwrap_or_default();
    let first_month = monthly.iter().position(|(_, n)| *n > 0).unwrap_or(0);
    let monthly = &monthly[first_month..];
    let first = state.store.first_listen(user.id, kind, id).ok().flatten();
    let ranks = state.store.rank_history(user.id, kind, id, &Period::LastMonths(12), now).unwrap_or_default();
    let weeks_at_one = ranks.iter().filter(|w| w.rank == Some(1)).count();
    let best = ranks.iter().filter_map(|w| w.rank).min();
    let similar =
        if kind == Kind::Artist { state.store.similar_artists(id, 8).unwrap_or_default() } else { Vec::new() };
    let plot = plot::listens_svg(monthly, plot::Steps::Months, 560, 200);
    let rank_weeks: Vec<(i32, Option<u32>)> = ranks.iter().map(|w| (w.monday, w.rank)).collect();
    let rank_plot = plot::ranks_svg(&rank_weeks, 560, 200);
    let title = match &row.artist {
        Some(a) => format!("{a} – {}", row.name),
        None => row.name.clone(),
    };
    page(
        StatusCode::OK,
        &title,
        &v,
        html! {
            p.muted { a href={ "/user/" (user.name) } { (user.name) } " · " (label) }
            h1 { (title) }
            p { (row.listens) " listens" @if let Some(f) = first { " · first heard " (jiff::Timestamp::from_second(f).map(|t| t.strftime("%Y-%m-%d").to_string()).unwrap_or_default()) } }
            h2 { "Listens per month" }
            figure role="img" aria-label={ (row.listens) " listens, per month since the first; the numbers follow" } { (maud::PreEscaped(plot)) }
            details {
                summary { "The numbers, month by month" }
                table {
                    thead { tr { th { "Month" } th { "Listens" } } }
                    tbody { @for (day, n) in monthly.iter().rev() { tr { td { (crate::stats::period::date_of(*day).strftime("%Y-%m").to_string()) } td { (n) } } } }
                }
            }
            h2 { "Weekly charts, last 12 months" }
            p { @match best { Some(b) => { "Best weekly rank: #" (b) " · weeks at #1: " (weeks_at_one) }, None => { "Not charted in the last 12 months." } } }
        @if let Some(b) = best {
            figure role="img" aria-label={ "Weekly rank over the last 12 months, best #" (b) "; the table below lists each week" } { (maud::PreEscaped(rank_plot)) }
            table {
                caption.muted { "Rank in each week it was played" }
                thead { tr { th { "Week of" } th { "Rank" } th { "Listens" } } }
                tbody {
                    @for w in ranks.iter().filter(|w| w.rank.is_some()).rev() {
                        tr {
                            td { (crate::stats::period::date_of(w.monday).to_string()) }
                            td { "#" (w.rank.unwrap_or(0)) }
                            td { (w.listens) }
                        }
                    }
                }
            }
        }
            @if !similar.is_empty() {
                h2 { "Similar artists on this node" }
                ul { @for (r, _) in &similar { li { (r.name) } } }
            }
        },
    )
}

/// Hour × weekday heat map of a user's listening, as an HTML table (readable without
/// colour: each cell carries its count).
pub(super) fn clock_table(clock: &[[u64; 24]; 7]) -> Markup {
    let max = clock.iter().flatten().copied().max().unwrap_or(0).max(1);
    let days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    html! {
        // In a region that scrolls sideways on a phone, focusable so a keyboard reaches it.
        div.scroll tabindex="0" role="region" aria-label="Listens by weekday and hour" {
        table.clock {
            caption.muted { "Listens by weekday and hour (local time)" }
            thead { tr { th { "" } @for h in 0..24 { th scope="col" { (h) } } } }
            tbody {
                @for (d, row) in clock.iter().enumerate() {
                    tr {
                        th scope="row" { (days[d]) }
                        @for n in row {
                            td style={ "background:rgba(11,87,208," (format!("{:.2}", *n as f64 / max as f64)) ")" } title=(n) {
                                span.sr { (n) }
                            }
                        }
                    }
                }
            }
        }
        }
    }
}

/// `/user/{name}/weekly?year=Y&week=W`: the weekly chart archive, one ISO week at a
/// time, with last week's ranks and new entries.
pub async fn weekly(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let v = viewer(&state, &headers);
    let user = match shown(&state, &v, &name, Purpose::Charts) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let now = crate::now_unix();
    let tz = crate::stats::period::time_zone(&user.timezone).unwrap_or(jiff::tz::TimeZone::UTC);
    let this = crate::stats::period::local_date(now, &tz).iso_week_date();
    let year = q.get("year").and_then(|y| y.parse::<i16>().ok()).unwrap_or(this.year());
    let week = q.get("week").and_then(|w| w.parse::<i8>().ok()).unwrap_or(this.week());
    let Ok(monday) = jiff::civil::ISOWeekDate::new(year, week, jiff::civil::Weekday::Monday) else {
        return not_found_page(&v);
    };
    if !crate::stats::period::YEARS.contains(&year) {
        return not_found_page(&v);
    }
    let rows = match state.store.weekly_chart(user.id, Kind::Artist, year, week, 20, now) {
        Ok(r) => r,
        Err(e) => return server_error(&v, e),
    };
    let step = |days: i64| monday.date().checked_add(jiff::Span::new().days(days)).ok().map(|d| d.iso_week_date());
    let (prev, next) = (step(-7), step(7));
    page(
        StatusCode::OK,
        &format!("{} · week {year}-W{week:02}", user.name),
        &v,
        html! {
            p.muted { a href={ "/user/" (user.name) } { (user.name) } " · weekly charts" }
            h1 { "Week " (year) "-W" (format!("{week:02}")) }
            nav aria-label="weeks" {
                @if let Some(p) = prev { a href={ "?year=" (p.year()) "&week=" (p.week()) } { "Previous week" } }
                @if let Some(n) = next { " " a href={ "?year=" (n.year()) "&week=" (n.week()) } { "Next week" } }
            }
            @if rows.is_empty() { p.muted { "No listens that week." } }
            table {
                thead { tr { th { "#" } th { "Artist" } th { "Listens" } th { "Last week" } } }
                tbody {
                    @for r in &rows {
                        tr {
                            td { (r.rank) }
                            td { a href={ "/user/" (user.name) "/artist/" (r.row.handle) } { (r.row.name) } }
                            td { (r.row.listens) }
                            td { @if r.new { strong { "new" } } @else { @match r.previous_rank { Some(p) => { (p) }, None => { "re-entry" } } } }
                        }
                    }
                }
            }
        },
    )
}
