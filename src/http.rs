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
        .route("/control/backup", axum::routing::post(control_backup))
        .route("/metrics", get(metrics))
        .merge(crate::api::listenbrainz::router())
        .merge(crate::api::lastfm::router())
        .merge(crate::api::audioscrobbler::router())
        .merge(crate::web::router())
        .layer(axum::middleware::from_fn_with_state(state.clone(), refuse_while_failed))
        .layer(axum::middleware::from_fn_with_state(state.clone(), limit_api))
        .layer(axum::middleware::from_fn_with_state(state.clone(), count_requests))
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

/// The API a request went to, and whether it is a submission (timed).
fn classify(method: &axum::http::Method, uri: &axum::http::Uri) -> (crate::metrics::Api, bool) {
    use crate::metrics::Api;
    let path = uri.path();
    let post = method == axum::http::Method::POST;
    if path.starts_with("/1/") {
        (Api::Listenbrainz, post && path == "/1/submit-listens")
    } else if path == "/2.0" || path.starts_with("/2.0/") {
        // Last.fm's method is in the body; every POST counts (scrobbles, now playing,
        // love, sessions).
        (Api::Lastfm, post)
    } else if path.starts_with("/as/1.2/") || (path == "/" && is_handshake(uri.query())) {
        (Api::Audioscrobbler, post)
    } else {
        (Api::Web, false)
    }
}

/// The scrobbler APIs' per-client limit (`http.api_rate_limit`): past it, each protocol's
/// own "too many requests"; ListenBrainz answers carry ListenBrainz's `X-RateLimit-*`
/// headers, refused or not. Loopback clients (a player on the node's machine, or a
/// proxy not listed in `trusted_proxies`) and the web view are not limited here.
async fn limit_api(
    State(state): State<AppState>,
    addr: ClientAddr,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use crate::metrics::Api;
    use axum::response::IntoResponse;
    let (api, _) = classify(request.method(), request.uri());
    let addr = addr.0.map(|a| match a {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, std::net::IpAddr::V4),
        v4 => v4,
    });
    let (Some(limiter), Some(addr)) = (&state.api_limiter, addr) else { return next.run(request).await };
    if api == Api::Web || addr.is_loopback() {
        return next.run(request).await;
    }
    let verdict = limiter.check(addr);
    let headers = |remaining: u32, reset_in: u64| {
        let reset = crate::now_unix().saturating_add(i64::try_from(reset_in).unwrap_or(i64::MAX));
        [
            ("x-ratelimit-limit", limiter.limit().to_string()),
            ("x-ratelimit-remaining", remaining.to_string()),
            ("x-ratelimit-reset-in", reset_in.to_string()),
            ("x-ratelimit-reset", reset.to_string()),
        ]
    };
    match verdict {
        crate::state::RateVerdict::Allowed { remaining } => {
            let mut response = next.run(request).await;
            if api == Api::Listenbrainz {
                for (k, v) in headers(remaining, limiter.full_in(remaining)) {
                    if let Ok(v) = axum::http::HeaderValue::from_str(&v) {
                        response.headers_mut().insert(k, v);
                    }
                }
            }
            response
        }
        crate::state::RateVerdict::Limited { retry_in } => {
            // Rounded up: a client told to wait less than it must comes back too early.
            let secs = retry_in.as_secs_f64().ceil().max(1.0) as u64;
            let retry_after = [(axum::http::header::RETRY_AFTER, secs.to_string())];
            let message = format!(
                "Too many requests from this address: at most {} per 10 seconds; retry in {secs} s.",
                limiter.limit()
            );
            match api {
                Api::Listenbrainz => {
                    let body = Json(json!({"code": 429, "error": message}));
                    let mut response = (axum::http::StatusCode::TOO_MANY_REQUESTS, retry_after, body).into_response();
                    for (k, v) in headers(0, secs) {
                        if let Ok(v) = axum::http::HeaderValue::from_str(&v) {
                            response.headers_mut().insert(k, v);
                        }
                    }
                    response
                }
                Api::Lastfm => crate::api::lastfm::rate_limited(request.uri().query(), &message).into_response(),
                // Audioscrobbler 1.2 players read the first line of a 200 answer.
                _ => ([(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("FAILED {message}\n"))
                    .into_response(),
            }
        }
    }
}

/// Whether the root path's query is an Audioscrobbler handshake: it has an `hs` key,
/// read as `root` reads it (decoded, so `h%73=` counts and `months=` does not).
fn is_handshake(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(q).is_ok_and(|pairs| pairs.iter().any(|(k, _)| k == "hs"))
    })
}

/// Whether a request is a health check or a metrics scrape, which do not make the node
/// busy (`Metrics::record`).
fn is_probe(path: &str) -> bool {
    matches!(path, "/health" | "/metrics")
}

/// Counts every request by API and outcome and times submissions (`crate::metrics`).
async fn count_requests(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (api, submission) = classify(request.method(), request.uri());
    let probe = is_probe(request.uri().path());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let seconds = submission.then(|| started.elapsed().as_secs_f64());
    state.metrics.record(api, response.status().as_u16(), seconds, probe);
    response
}

/// Whether a request may read the metrics: a bearer of `metrics.token`, or a direct
/// (unproxied) client among `metrics.allow`. A request carrying any forwarding header
/// came through a proxy (a TLS front on this host forwards from loopback) and needs the
/// token.
fn may_read_metrics(
    config: &crate::config::MetricsConfig,
    front: &crate::state::Front,
    addr: Option<std::net::IpAddr>,
    headers: &HeaderMap,
) -> bool {
    use std::net::IpAddr;
    if let Some(token) = config.token.as_deref().filter(|t| !t.is_empty()) {
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given.is_some_and(|g| crate::auth::strings_equal(g.trim(), token)) {
            return true;
        }
    }
    // A listed proxy forwards for others, whatever headers it sends or leaves out.
    let proxied = front.is_trusted(addr)
        || [
            "x-forwarded-for",
            "forwarded",
            "x-real-ip",
            "x-forwarded-host",
            "x-forwarded-proto",
            "via",
            "cf-connecting-ip",
            "true-client-ip",
            "x-client-ip",
        ]
        .iter()
        .any(|h| headers.contains_key(*h));
    let addr = addr.map(|a| match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    });
    !proxied && addr.is_some_and(|a| config.allow.contains(&a))
}

/// `GET /metrics`: OpenMetrics text for the operator; anyone else is answered as if
/// there were nothing here (a refusal would say there is).
async fn metrics(
    State(state): State<AppState>,
    peer: crate::state::PeerAddr,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    use axum::response::IntoResponse;
    let config = &state.metrics_config;
    if !config.enabled || !may_read_metrics(config, &state.front, peer.0, &headers) {
        return crate::web::not_found_response(&state, &uri, &headers);
    }
    let status = match &state.p2p {
        Some(p2p) => p2p.status().await,
        None => None,
    };
    let ingest = state.ingestor.stats();
    let readings = crate::metrics::Readings {
        batches: ingest.batches,
        groups: ingest.groups,
        reloads: ingest.reloads,
        queue: state.ingestor.queued(),
        store_bytes: state.store.size_on_disk().unwrap_or(0),
        users: state.store.users().map(|u| u.len()).unwrap_or(0),
        peers: status.as_ref().map_or(0, |s| s.peers.len()),
        snapshots: status.as_ref().map(|s| [s.accepted, s.ignored, s.rejected, s.evidence]),
        last_release: state.store.releases(1).unwrap_or_default().first().map_or(0, |r| r.0),
    };
    match state.metrics.render(&readings) {
        Some(text) => {
            ([(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
                .into_response()
        }
        None => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// `/`: an Audioscrobbler 1.2 handshake (`?hs=…`), which old players send to the root
/// of the URL they are given, or the web view's home page.
async fn root(
    state: State<AppState>,
    addr: ClientAddr,
    peer: crate::state::PeerAddr,
    headers: HeaderMap,
    query: Query<HashMap<String, String>>,
) -> Response {
    if query.contains_key("hs") {
        crate::api::audioscrobbler::handshake(state, addr, peer, headers, query).await
    } else {
        crate::web::home(state, headers).await
    }
}

/// `POST /control/backup` `{"dir": "/absolute/new/dir"}` with `Authorization: Bearer
/// <DATA_DIR/control.token>`: a consistent copy of the running node's store (what
/// `hearsay store backup` asks for when the node runs).
async fn control_backup(State(state): State<AppState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    if !state.is_operator(&headers) {
        return (StatusCode::FORBIDDEN, Json(json!({"error": "control requests need the node's control token"})))
            .into_response();
    }
    let dir = serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["dir"].as_str().map(std::path::PathBuf::from));
    let Some(dir) = dir.filter(|d| d.is_absolute()) else {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "give {\"dir\": an absolute path}"}))).into_response();
    };
    match state.ingestor.backup(dir).await {
        Ok(dir) => Json(json!({"dir": dir, "entries": state.store.acknowledged()})).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": e.to_string()}))).into_response(),
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

/// Limits of the HTTP server (`[http]` in the config).
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: std::time::Duration,
    pub request_timeout: std::time::Duration,
    /// Counts connections shed at the cap (`hearsay_http_connections_shed_total`).
    pub shed: Option<prometheus_client::metrics::counter::Counter>,
}

/// What a shed connection is told: the node is at its connection limit.
const SHED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain\r\n\
Content-Length: 42\r\nConnection: close\r\n\r\nthe node is at its connection limit; retry\n";

/// Serves `app` on `listener` until `shutdown` resolves, then lets open requests finish.
///
/// This is axum::serve with the limits a public server needs, which axum::serve does
/// not expose: at most `max_connections` at once (past it a connection is answered 503
/// and closed, so an overload sheds instead of exhausting file descriptors), a client
/// gets `header_timeout` to send its headers (slow-header clients cannot hold
/// connections open), and a request gets `request_timeout` (uploads to `/import`
/// excepted: they are bounded by size). Accept errors such as running out of file
/// descriptors back off instead of spinning.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // Headers over 32 KiB are refused (ours are a cookie and a token), which also bounds
    // what each of up to max_connections slow clients can make the node hold.
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(32 * 1024)
        .keep_alive(true);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut last_accept_warning: Option<std::time::Instant> = None;
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS...: wait for connections to close.
                    if last_accept_warning.is_none_or(|t| t.elapsed() > std::time::Duration::from_secs(60)) {
                        tracing::warn!(error = %e, "cannot accept connections; backing off");
                        last_accept_warning = Some(std::time::Instant::now());
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if let Some(shed) = &limits.shed {
                shed.inc();
            }
            tokio::spawn(async move {
                let mut stream = stream;
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), stream.write_all(SHED)).await;
            });
            continue;
        };
        let app = app.clone();
        let request_timeout = limits.request_timeout;
        let service = hyper::service::service_fn(move |request: axum::http::Request<hyper::body::Incoming>| {
            let mut app = app.clone();
            async move {
                let mut request = request.map(axum::body::Body::new);
                request.extensions_mut().insert(axum::extract::ConnectInfo(addr));
                // Uploads are bounded by size and backups by the store's size, not time.
                let upload =
                    request.uri().path().starts_with("/import") || request.uri().path().starts_with("/control/");
                // Handlers read sled, sum charts and wait for argon2: they run on the
                // blocking pool, so the runtime's few worker threads (two on a 2-core
                // machine) only move bytes and a slow page never stalls other clients.
                let runtime = tokio::runtime::Handle::current();
                let call = tokio::task::spawn_blocking(move || {
                    runtime.block_on(tower_service::Service::call(&mut app, request))
                });
                let call = async move {
                    match call.await {
                        Ok(response) => response,
                        Err(e) => {
                            use axum::response::IntoResponse;
                            tracing::error!(error = %e, "a request handler panicked");
                            Ok(axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response())
                        }
                    }
                };
                if upload {
                    return call.await;
                }
                match tokio::time::timeout(request_timeout, call).await {
                    Ok(response) => response,
                    Err(_) => {
                        use axum::response::IntoResponse;
                        Ok((axum::http::StatusCode::REQUEST_TIMEOUT, "the request took too long\n").into_response())
                    }
                }
            }
        });
        let connection = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(slot);
        });
    }
    drop(listener);
    // Open requests finish; a connection that does not within the request timeout is
    // dropped (a stuck client must not keep the node from stopping or reopening).
    if tokio::time::timeout(limits.request_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after the request timeout were dropped");
    }
    Ok(())
}

/// Raises this process's soft open-file limit to its hard limit (where the system
/// allows it); returns the soft limit now in force.
pub fn raise_open_file_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum
        && limit.current.is_some_and(|soft| soft < hard)
    {
        let raised = rustix::process::Rlimit { current: Some(hard), maximum: Some(hard) };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return hard;
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::{classify, is_probe};

    /// Health checks and scrapes are counted but leave the node idle; anything else,
    /// answered however, makes it busy.
    #[test]
    fn probes_leave_the_node_idle() {
        let metrics = crate::metrics::Metrics::default();
        for path in ["/health", "/metrics"] {
            assert!(is_probe(path));
            metrics.record(crate::metrics::Api::Web, 200, None, is_probe(path));
        }
        assert_eq!(metrics.answered(), 0);
        for path in ["/", "/health/x", "/1/submit-listens", "/metricsx"] {
            assert!(!is_probe(path), "{path}");
            metrics.record(
                classify(&axum::http::Method::GET, &path.parse().expect("uri")).0,
                404,
                None,
                is_probe(path),
            );
        }
        assert_eq!(metrics.answered(), 4);
    }

    #[test]
    fn handshakes_are_told_by_their_decoded_key_as_the_root_reads_them() {
        use super::is_handshake;
        assert!(is_handshake(Some("hs=true&p=1.2")));
        assert!(is_handshake(Some("h%73=true&p=1.2")));
        assert!(is_handshake(Some("p=1.2&hs")));
        assert!(!is_handshake(Some("months=3")));
        assert!(!is_handshake(Some("paths=x")));
        assert!(!is_handshake(None));
    }
}
