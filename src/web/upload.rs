//! Uploading an export in the web view (`/import`): the file is streamed to a temporary
//! file in the data directory (never held in memory), imported on a blocking thread
//! through the same path as `hearsay import` (detection, zip archives, the summary),
//! and `/import/{job}` shows the progress while it runs (the page refreshes itself, no
//! JavaScript) and the summary at the end. The temporary file is removed afterwards.

use std::collections::HashMap;

use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{PreEscaped, html};

use super::{page, viewer};
use crate::import::Summary;
use crate::import::formats::{Format, Options};
use crate::import::jobs::{Job, Jobs};
use crate::state::AppState;

/// Largest upload accepted.
pub const MAX_UPLOAD_BYTES: usize = 4 << 30;

fn jobs_of(state: &AppState) -> Jobs {
    state.live.imports.clone()
}

pub async fn form(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let v = viewer(&state, &headers);
    let Some((_, csrf)) = v.0.clone() else { return Redirect::to("/login").into_response() };
    page(
        StatusCode::OK,
        "Import",
        &v,
        html! {
            h1 { "Bring your history" }
            p { "Upload an export from ListenBrainz (listens.jsonl, the JSON file or the zip), Last.fm (CSV), Spotify (the zip of your extended or account-data streaming history, or one of its JSON files), Maloja (maloja_export_….json) or a Rockbox .scrobbler.log. The format is recognised from the file; listens you already have here are skipped." }
            form method="post" action="/import" enctype="multipart/form-data" {
                input type="hidden" name="csrf" value=(csrf);
                label { "Export file " input type="file" name="file" required; }
                label { "Format "
                    select name="format" {
                        option value="" { "recognise it" }
                        @for f in Format::ALL { option value=(f.name()) { (f.name()) } }
                    }
                }
                label { "Time zone of a Rockbox log written in device time " input name="timezone" placeholder="your time zone"; }
                button { "Import" }
            }
        },
    )
}

pub async fn upload(State(state): State<AppState>, headers: HeaderMap, mut multipart: Multipart) -> Response {
    let v = viewer(&state, &headers);
    let Some((me, csrf)) = v.0.clone() else { return Redirect::to("/login").into_response() };
    let dir = state.store.path().parent().map(|p| p.join("uploads")).unwrap_or_else(|| "uploads".into());
    if let Err(e) = tokio::fs::create_dir_all(&dir).await {
        return super::server_error(&v, e);
    }
    let id = crate::auth::random_bytes::<16>().map(hex::encode).unwrap_or_default();
    let tmp = dir.join(format!("{id}.upload"));
    // Nothing is accepted that the store could not take in (the file lands on its disk).
    if let Err(e) = state.store.writable() {
        return super::server_error(&v, e);
    }
    let mut fields: HashMap<String, String> = HashMap::new();
    let mut file_name = String::new();
    let mut got_file = false;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return (StatusCode::BAD_REQUEST, format!("the upload did not arrive whole: {e}\n")).into_response();
            }
        };
        let name = field.name().unwrap_or_default().to_owned();
        if fields.len() >= MAX_FIELDS {
            let _ = tokio::fs::remove_file(&tmp).await;
            return (StatusCode::PAYLOAD_TOO_LARGE, format!("more than {MAX_FIELDS} form fields\n")).into_response();
        }
        if name == "file" {
            // The form's fields come first, so the CSRF token is checked before a byte
            // of the file is written.
            if !fields.get("csrf").is_some_and(|c| crate::auth::strings_equal(c, &csrf)) {
                return super::refused(&v);
            }
            file_name = field.file_name().unwrap_or("upload").chars().filter(|c| !c.is_control()).take(200).collect();
            if let Err(e) = save(field, &tmp).await {
                let _ = tokio::fs::remove_file(&tmp).await;
                return (StatusCode::BAD_REQUEST, format!("the upload did not arrive whole: {e}\n")).into_response();
            }
            got_file = true;
        } else {
            // Form fields are short (a token, a format name, a time zone): read at most
            // MAX_FIELD_BYTES of one, never the whole of whatever a client sends.
            match bounded_text(field).await {
                Ok(value) => {
                    fields.insert(name, value);
                }
                Err(why) => {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    return (StatusCode::PAYLOAD_TOO_LARGE, format!("{why}\n")).into_response();
                }
            }
        }
    }
    if !got_file {
        return (StatusCode::BAD_REQUEST, "no file was uploaded\n").into_response();
    }
    let forced = fields.get("format").filter(|f| !f.is_empty()).and_then(|f| Format::parse(f));
    let tz_name = fields.get("timezone").filter(|t| !t.trim().is_empty()).cloned().unwrap_or(me.timezone.clone());
    let tz = crate::stats::period::time_zone(&tz_name).unwrap_or(jiff::tz::TimeZone::UTC);
    // Keep the original name (its extension and words guide detection).
    let named = dir.join(format!("{id}-{}", file_name.replace(['/', '\\'], "_")));
    if tokio::fs::rename(&tmp, &named).await.is_err() {
        return super::server_error(&v, "could not keep the upload");
    }
    let jobs = jobs_of(&state);
    if let Ok(mut j) = jobs.lock() {
        j.insert(id.clone(), Job { user: me.id.0, file: file_name.clone(), running: true, ..Job::default() });
    }
    let ingestor = state.ingestor.clone();
    let job_id = id.clone();
    tokio::task::spawn_blocking(move || {
        let options = Options { now: crate::now_unix(), timezone: tz };
        let update = |f: &dyn Fn(&mut Job)| {
            if let Ok(mut j) = jobs.lock()
                && let Some(job) = j.get_mut(&job_id)
            {
                f(job);
            }
        };
        let prefix = format!("{job_id}-");
        let shown = |name: &str| -> String {
            let last = name.rsplit(['/', ':']).next().unwrap_or(name);
            last.strip_prefix(prefix.as_str()).unwrap_or(last).to_owned()
        };
        let mut progress = |part: &str, s: &Summary, fraction: crate::import::source::Fraction| {
            let part = shown(part);
            let percent = fraction.filter(|(_, t)| *t > 0).map(|(d, t)| d.min(t) * 100 / t);
            update(&|job: &mut Job| {
                job.percent = percent;
                match job.parts.last_mut() {
                    Some(last) if last.0 == part => last.2 = s.clone(),
                    _ => job.parts.push((part.clone(), None, s.clone(), None)),
                }
            });
        };
        let result = crate::import::source::import_path(&named, forced, &ingestor, me.id, &options, &mut progress);
        let _ = std::fs::remove_file(&named);
        update(&|job: &mut Job| {
            job.running = false;
            match &result {
                Ok(reports) => {
                    job.parts = reports
                        .iter()
                        .map(|r| (shown(&r.name), r.format.map(Format::name), r.summary.clone(), r.note.clone()))
                        .collect();
                }
                Err(e) => job.error = Some(e.to_string()),
            }
        });
    });
    Redirect::to(&format!("/import/{id}")).into_response()
}

/// Longest form field other than the file.
const MAX_FIELD_BYTES: usize = 4096;
/// Most form fields (the form has four).
const MAX_FIELDS: usize = 16;

/// A form field's text, refused past `MAX_FIELD_BYTES` as soon as it gets longer.
async fn bounded_text(mut field: axum::extract::multipart::Field<'_>) -> Result<String, String> {
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| format!("the upload did not arrive whole: {e}"))? {
        if bytes.len() + chunk.len() > MAX_FIELD_BYTES {
            return Err(format!("a form field is longer than {MAX_FIELD_BYTES} bytes"));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&bytes).chars().take(200).collect())
}

async fn save(mut field: axum::extract::multipart::Field<'_>, path: &std::path::Path) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::fs::File::create(path).await.map_err(|e| e.to_string())?;
    let mut written = 0usize;
    while let Some(chunk) = field.chunk().await.map_err(|e| e.to_string())? {
        written += chunk.len();
        if written > MAX_UPLOAD_BYTES {
            return Err("larger than 4 GiB".into());
        }
        file.write_all(&chunk).await.map_err(|e| e.to_string())?;
    }
    file.flush().await.map_err(|e| e.to_string())
}

pub async fn status(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let v = viewer(&state, &headers);
    let Some((me, _)) = v.0.clone() else { return Redirect::to("/login").into_response() };
    let job = jobs_of(&state).lock().ok().and_then(|j| j.get(&id).cloned()).filter(|j| j.user == me.id.0);
    let Some(job) = job else { return super::not_found_page(&v) };
    let body = html! {
        @if job.running {
            (PreEscaped("<meta http-equiv=\"refresh\" content=\"1\">"))
            h1 { "Importing " (job.file) "…" }
            @if let Some(p) = job.percent {
                p { progress max="100" value=(p) { (p) " %" } " " (p) " % of the current file read" }
            }
        } @else {
            h1 { "Import finished: " (job.file) }
        }
        @if let Some(e) = &job.error { p.error role="alert" { "The import stopped: " (e) } }
        table {
            thead { tr { th { "File" } th { "Format" } th { "Read" } th { "Imported" } th { "Already here" } th { "Not listens" } th { "Bad records" } } }
            tbody {
                @for (part, format, s, note) in &job.parts {
                    tr {
                        td { (part) }
                        td { (format.unwrap_or(if job.running { "…" } else { "skipped" })) @if let Some(n) = note { " (" (n) ")" } }
                        td { (s.read) } td { (s.imported) } td { (s.duplicates) }
                        td { (s.dropped.values().sum::<u64>()) } td { (s.bad) }
                    }
                }
            }
        }
        @for (part, _, s, _) in &job.parts {
            @if !s.dropped.is_empty() || !s.bad_examples.is_empty() {
                h2 { (part) }
                ul {
                    @for (why, n) in &s.dropped { li { "Not a listen: " (why) ": " (n) } }
                    @for (pos, why) in &s.bad_examples { li { "Record " (pos) ": " (why) } }
                }
            }
        }
        @if !job.running { p { a href={ "/user/" (me.name) "/history" } { "See your history" } " · " a href="/import" { "Import another file" } } }
    };
    page(StatusCode::OK, "Import", &v, body)
}
