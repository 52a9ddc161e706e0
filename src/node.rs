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
    let store = Store::open(&config.node.data_dir, &store::Options { cache_mb: config.store.cache_mb })?;
    store.set_default_level(config.privacy.level().unwrap_or_default());
    Ok(store)
}

impl Node {
    /// Opens everything; binds nothing.
    pub fn build(config: Config) -> Result<Node, Error> {
        config.validate()?;
        let store = open_store(&config)?;
        let identity = std::sync::Arc::new(NodeIdentity::load_or_create(&config.node.data_dir)?);
        let ingestor =
            Ingestor::start(store.clone(), config.store.group_commit_max_listens, config.stats.credit_rules())?;
        Ok(Node { config, store, ingestor, identity })
    }

    /// Serves HTTP on `listener` until `shutdown` resolves, then drains in-flight
    /// requests, lets the writer finish every queued batch, and flushes.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let publisher = std::sync::Arc::new(crate::publish::Publisher::new(
            self.store.clone(),
            self.identity.clone(),
            &self.config.privacy,
        )?);
        let p2p = if self.config.p2p.enabled {
            Some(crate::p2p::spawn(
                self.store.clone(),
                &self.identity,
                crate::p2p::Options::from_config(&self.config.p2p),
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
        let state = AppState {
            store: self.store.clone(),
            ingestor: self.ingestor.clone(),
            peer_id: self.identity.peer_id(),
            live: crate::state::Live::default(),
            node_timezone: self.config.node.timezone.clone(),
            secure_cookies: self.config.http.secure_cookies,
            admins: self.config.node.admins.clone(),
            open_registration: self.config.node.open_registration,
            privacy: std::sync::Arc::new(self.config.privacy.clone()),
            p2p,
            signer: self.identity.clone(),
            node_key: self.identity.public_key(),
        };
        axum::serve(listener, router(state).into_make_service_with_connect_info::<std::net::SocketAddr>())
            .with_graceful_shutdown(shutdown)
            .await?;
        releases.abort();
        let ingestor = self.ingestor.clone();
        let _ = tokio::task::spawn_blocking(move || ingestor.stop()).await;
        self.store.flush()?;
        tracing::info!("node stopped; store flushed");
        Ok(())
    }
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
