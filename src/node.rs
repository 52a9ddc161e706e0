//! Composition root: builds the store, the writer and the HTTP server from a `Config`,
//! and runs them until a shutdown future resolves (`run(listener, shutdown)`, so tests
//! bind port 0 and stop the node when they like).

use std::future::Future;

use crate::config::Config;
use crate::http::router;
use crate::identity::NodeIdentity;
use crate::state::AppState;
use crate::store::{self, Ingestor, Store};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Identity(#[from] crate::identity::Error),
    #[error("http: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    P2p(#[from] crate::p2p::Error),
}

/// A node, opened but not yet serving.
pub struct Node {
    pub config: Config,
    pub store: Store,
    pub ingestor: Ingestor,
    pub identity: std::sync::Arc<NodeIdentity>,
}

/// Opens the store named by the config. Used by the node and by offline CLI commands.
pub fn open_store(config: &Config) -> Result<Store, store::Error> {
    let store = Store::open(&config.node.data_dir, &store::Options::from(&config.store))?;
    store.set_default_level(config.privacy.level().unwrap_or_default());
    Ok(store)
}

impl Node {
    /// Opens everything; binds nothing. `Error::Store(DiskFull)` when the disk is below
    /// its reserve (nothing is opened then).
    pub fn build(config: Config) -> Result<Node, Error> {
        config.validate()?;
        let store = open_store(&config)?;
        let identity = std::sync::Arc::new(NodeIdentity::load_or_create(&config.node.data_dir)?);
        let ingestor =
            Ingestor::start(store.clone(), config.store.group_commit_max_listens, config.stats.credit_rules())?;
        Ok(Node { config, store, ingestor, identity })
    }

    /// Serves HTTP on `listener` until `shutdown` resolves, then drains in-flight
    /// requests, lets the writer finish every queued batch, and flushes. One run of an
    /// open store: `serve` is the supervisor that reopens a store after a failed write.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop.send(true);
        });
        match self.run_until(listener, stopped).await? {
            Ended::Shutdown => Ok(()),
            Ended::StoreFailed(reason) => Err(Error::Store(store::Error::Failed(reason))),
        }
    }

    /// Serves until `stop` turns true or the store fails a write.
    async fn run_until(
        self,
        listener: tokio::net::TcpListener,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Ended, Error> {
        let publisher = std::sync::Arc::new(
            crate::publish::Publisher::new(self.store.clone(), self.identity.clone(), &self.config.privacy)?
                .with_credit_rules(self.config.stats.credit_rules()),
        );
        let p2p = if self.config.p2p.enabled {
            Some(crate::p2p::spawn(
                self.store.clone(),
                self.identity.clone(),
                crate::p2p::Options {
                    credit_rules: self.config.stats.credit_rules(),
                    ..crate::p2p::Options::from_config(&self.config.p2p, &self.config.privacy)
                },
            )?)
        } else {
            None
        };
        let network = p2p.clone();
        let store = self.store.clone();
        let releases = tokio::spawn(async move {
            let mut every = tokio::time::interval(publisher.tick());
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let p = publisher.clone();
                match tokio::task::spawn_blocking(move || p.run_due(crate::now_unix())).await {
                    Ok(Ok(pass)) => {
                        // Stored first (above); only now may the release leave the node.
                        for period in pass.released {
                            if let (Some(net), Ok(Some(bytes))) = (&network, store.release(period)) {
                                net.publish_release(bytes).await;
                            }
                        }
                    }
                    Ok(Err(e)) => tracing::error!(error = %e, "releasing a period failed; retrying at the next tick"),
                    Err(e) => tracing::error!(error = %e, "the release task panicked"),
                }
            }
        });
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::default());
        let state = AppState {
            store: self.store.clone(),
            ingestor: self.ingestor.clone(),
            peer_id: self.identity.peer_id(),
            live: crate::state::Live::default(),
            node_timezone: self.config.node.timezone.clone(),
            secure_cookies: self.config.http.secure_cookies,
            front: std::sync::Arc::new(crate::state::Front {
                public_url: self.config.http.public_url.as_deref().and_then(|u| crate::config::public_url(u).ok()),
                trusted: self.config.http.trusted_proxies.iter().filter_map(|p| p.trim().parse().ok()).collect(),
            }),
            admins: self.config.node.admins.clone(),
            open_registration: self.config.node.open_registration,
            privacy: std::sync::Arc::new(self.config.privacy.clone()),
            p2p,
            signer: self.identity.clone(),
            node_key: self.identity.public_key(),
            control_token: write_control_token(&self.config.node.data_dir).map(std::sync::Arc::new),
            metrics: metrics.clone(),
            api_limiter: crate::state::ApiLimiter::new(self.config.http.api_rate_limit).map(std::sync::Arc::new),
            metrics_config: std::sync::Arc::new(self.config.metrics.clone()),
        };
        let failed_store = self.store.clone();
        let until = async move {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {}
                () = failed_store.failed() => {}
            }
        };
        let limits = crate::http::Limits { shed: Some(metrics.shed_connections.clone()), ..http_limits(&self.config) };
        let idle = tokio::spawn(give_back_when_idle(metrics.clone(), self.store.clone()));
        crate::http::serve(listener, router(state), limits, until).await?;
        tracing::debug!("http stopped");
        idle.abort();
        releases.abort();
        let ingestor = self.ingestor.clone();
        let _ = tokio::task::spawn_blocking(move || ingestor.stop()).await;
        tracing::debug!("writer stopped");
        if let Some(reason) = self.store.failure() {
            // Nothing more is written: what was acknowledged was flushed with its group.
            // sled's handle is dropped on a thread of its own: after a failed write its
            // drop may never return (it loops flushing), and it must not hold up this task.
            let Node { store, ingestor, .. } = self;
            let _ = std::thread::Builder::new().name("hearsay-drop-failed-store".into()).spawn(move || {
                drop(ingestor);
                drop(store);
            });
            return Ok(Ended::StoreFailed(reason));
        }
        match self.store.flush() {
            Ok(()) => tracing::info!("node stopped; store flushed"),
            // Every acknowledged group was flushed when it was answered; what a last
            // flush would add (statistics buckets) is recounted from the log at start.
            Err(e) => tracing::warn!(error = %e, "node stopped; the last flush failed (recounted at the next start)"),
        }
        Ok(Ended::Shutdown)
    }
}

/// How often `give_back_when_idle` looks whether the node answered requests.
pub const IDLE_CHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// Gives the memory the process freed back to the system (`memory::give_back`) once the
/// node is idle: at the first check that finds no request answered since the one before
/// (after start), then after each spell of requests, once a check finds none since the
/// last. What a node frees serving reads stays with the allocator otherwise: on the
/// 10,000-member benchmark node, 100 home pages took a node from 290 to 332 MiB, and
/// giving back then brought it to 270. Not under load: a request seen since the last
/// check waits a check (health checks and metrics scrapes do not count). Each check also
/// puts sled's page cache back to its size at rest once a bulk import has ended
/// (`Store::settle_cache`) and then gives back at once, requests or not: once per import.
async fn give_back_when_idle(metrics: std::sync::Arc<crate::metrics::Metrics>, store: crate::store::Store) {
    let mut every = tokio::time::interval(IDLE_CHECK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut idle = IdleGiveBack::default();
    loop {
        every.tick().await;
        let store = store.clone();
        let settled = tokio::task::spawn_blocking(move || store.settle_cache(crate::store::BULK_SETTLE)).await;
        if idle.due(metrics.answered(), settled.unwrap_or(false)) {
            let _ = tokio::task::spawn_blocking(crate::memory::give_back).await;
        }
    }
}

/// When an idle node gives memory back (`give_back_when_idle`): the count of requests
/// answered at the last check (none before the first), and at the last give-back (none
/// yet: start-up's work is given back at the first idle check).
#[derive(Debug, Default)]
struct IdleGiveBack {
    seen: Option<u64>,
    given_at: Option<u64>,
}

impl IdleGiveBack {
    /// Whether to give back now, `answered` requests answered so far; `settled`: a bulk
    /// import's page cache was just put back to its size at rest (tens of MiB freed at
    /// once, after an import that may have run beside requests): given back now, busy
    /// or not, once.
    fn due(&mut self, answered: u64, settled: bool) -> bool {
        let idle = self.seen == Some(answered);
        self.seen = Some(answered);
        if settled || (idle && self.given_at != Some(answered)) {
            self.given_at = Some(answered);
            return true;
        }
        false
    }
}

/// Name of the file holding the control token in the data directory.
pub const CONTROL_TOKEN_FILE: &str = "control.token";

/// Writes a fresh control token to `dir/control.token`, readable by this OS user only;
/// `None` (control requests refused) when it cannot be written.
fn write_control_token(dir: &std::path::Path) -> Option<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let token = hex::encode(crate::auth::random_bytes::<32>().ok()?);
    let path = dir.join(CONTROL_TOKEN_FILE);
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).ok()?;
    f.write_all(token.as_bytes()).ok()?;
    Some(token)
}

/// The HTTP server's limits: the config's, with the connection cap kept under the
/// open-file limit (sled, libp2p and the log need some files too).
fn http_limits(config: &Config) -> crate::http::Limits {
    let files = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX);
    let fit = usize::try_from(files.saturating_sub(256)).unwrap_or(usize::MAX).max(16);
    crate::http::Limits {
        max_connections: config.http.max_connections.min(fit),
        header_timeout: std::time::Duration::from_secs(config.http.header_timeout_secs),
        request_timeout: std::time::Duration::from_secs(config.http.request_timeout_secs),
        shed: None,
    }
}

/// How one run of an open store ended.
enum Ended {
    Shutdown,
    StoreFailed(String),
}

/// Runs the node on `listener` until `shutdown` resolves, as its supervisor: the store
/// is opened only when the disk has its reserve free (until then every request is
/// answered 503 and `/health` says why), and a store that failed a write is dropped and
/// reopened from disk, where only what was flushed (everything acknowledged) remains.
pub async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    config.validate()?;
    let files = crate::http::raise_open_file_limit();
    let limits = http_limits(&config);
    tracing::info!(open_files = files, max_connections = limits.max_connections, "serving");
    let listener = listener.into_std()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let mut waiting_since: Option<std::time::Instant> = None;
    // Since when a failed store's files are still locked by its old handle.
    let mut failed_at: Option<std::time::Instant> = None;
    loop {
        if *stopped.borrow() {
            return Ok(());
        }
        let build = config.clone();
        let opened = tokio::task::spawn_blocking(move || Node::build(build))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        let node = match opened {
            Ok(node) => node,
            Err(Error::Store(store::Error::Locked { .. }))
                if failed_at.is_some_and(|t| t.elapsed() > std::time::Duration::from_secs(10)) =>
            {
                // The failed handle never let go of its files (sled can loop in its drop
                // after a failed write): start afresh as a new process image, same PID.
                restart_process(&listener)?;
                return Ok(());
            }
            Err(Error::Store(e @ (store::Error::DiskFull { .. } | store::Error::Locked { .. }))) => {
                if waiting_since.is_none_or(|t| t.elapsed() > std::time::Duration::from_secs(60)) {
                    tracing::warn!(error = %e, "waiting to open the store");
                    waiting_since = Some(std::time::Instant::now());
                }
                wait_unavailable(&listener, &e.to_string(), stopped.clone()).await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        waiting_since = None;
        let serving = tokio::net::TcpListener::from_std(listener.try_clone()?)?;
        match node.run_until(serving, stopped.clone()).await? {
            Ended::Shutdown => return Ok(()),
            Ended::StoreFailed(reason) => {
                tracing::warn!(reason, "reopening the store from disk");
                failed_at = Some(std::time::Instant::now());
            }
        }
    }
}

/// Replaces this process with a fresh run of the same binary and arguments (same PID,
/// so a service manager sees nothing), serving the same HTTP address: every file of
/// this image, sled's included, is closed by the exec. Returns only on failure.
fn restart_process(listener: &std::net::TcpListener) -> Result<(), Error> {
    use std::os::unix::process::CommandExt;
    let addr = listener.local_addr()?;
    tracing::error!(%addr, "the failed store keeps its files locked: restarting the process");
    let exe = std::env::current_exe()?;
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("HEARSAY_HTTP__LISTEN", addr.to_string())
        .exec();
    Err(Error::Io(err))
}

/// Answers every request 503 (with why) for two seconds, or until `stop`.
async fn wait_unavailable(
    listener: &std::net::TcpListener,
    why: &str,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), Error> {
    use axum::response::IntoResponse;
    let why = why.to_owned();
    let app = axum::Router::new().fallback(move || {
        let why = why.clone();
        async move {
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                [(axum::http::header::RETRY_AFTER, "5")],
                axum::Json(serde_json::json!({"status": "unavailable", "code": 503, "error": why})),
            )
                .into_response()
        }
    });
    let serving = tokio::net::TcpListener::from_std(listener.try_clone()?)?;
    let until = async move {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => {}
            () = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
        }
    };
    // The same limits as always: a client that trickles its headers cannot hold this up.
    let limits = crate::http::Limits {
        max_connections: 1024,
        header_timeout: std::time::Duration::from_secs(2),
        request_timeout: std::time::Duration::from_secs(2),
        shed: None,
    };
    crate::http::serve(serving, app, limits, until).await?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle node gives memory back once after start, then once after each spell of
    /// requests has ended; never at a check that saw requests since the last one.
    #[test]
    fn memory_is_given_back_once_per_idle_spell() {
        let mut idle = IdleGiveBack::default();
        let checks: Vec<bool> = [0, 0, 0, 5, 9, 9, 9, 10, 10, 10].into_iter().map(|n| idle.due(n, false)).collect();
        assert_eq!(checks, [false, true, false, false, false, true, false, false, true, false]);
        let mut busy = IdleGiveBack::default();
        assert!([0, 1, 2, 3].into_iter().all(|n| !busy.due(n, false)), "never while requests come");
        // A bulk import's page cache settled: given back at that check, busy or idle, once.
        assert!(busy.due(4, true));
        assert!(!busy.due(5, false));
        assert!(idle.due(10, true));
        assert!(!idle.due(10, false));
    }
}
