//! Downloads of the signed-in user's listens (`/settings/export/{format}`), streamed:
//! the export runs on a blocking thread and writes 64 KiB chunks into a bounded
//! channel that is the response body, so no export is ever held whole in memory.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::viewer;
use crate::export::{ExportFormat, export};
use crate::state::AppState;

/// A `Write` that sends full chunks down a channel.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
    buf: Vec<u8>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 64 * 1024 {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::take(&mut self.buf);
            self.tx.blocking_send(Ok(chunk)).map_err(|_| std::io::Error::other("the download was cancelled"))?;
        }
        Ok(())
    }
}

pub async fn download(State(state): State<AppState>, headers: HeaderMap, Path(format): Path<String>) -> Response {
    let v = viewer(&state, &headers);
    let Some((me, _)) = v.0.clone() else { return Redirect::to("/login").into_response() };
    let Some(format) = ExportFormat::parse(&format) else { return super::not_found_page(&v) };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || {
        let mut w = ChannelWriter { tx: tx.clone(), buf: Vec::new() };
        if let Err(e) = export(&store, me.id, format, &mut w) {
            tracing::warn!(error = %e, "export stopped");
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let name = format.file_name(&v.0.as_ref().map(|(u, _)| u.name.clone()).unwrap_or_default());
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(format.content_type())),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}
