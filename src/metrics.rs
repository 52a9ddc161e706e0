//! Prometheus metrics at `GET /metrics` (OpenMetrics text), for the node's operator.
//!
//! Node-wide counts only, never a user's: requests by API and outcome, the time a
//! submission takes until it is durable, the writer's queue and totals, the store's
//! size, members, peers and snapshots. Even so they say when the node's people listen
//! (on a one-person node, when that person does), so they are served only to the
//! addresses in `metrics.allow` (loopback by default) or to a bearer of
//! `metrics.token`, and never to a request that came through a proxy: a TLS front on the
//! same host would otherwise hand them to the world (`docs/operations.md`). The route,
//! the request counting and who may read them are in `http`; this module holds the
//! registry and renders it.

use std::sync::Mutex;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Which surface a request went to.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Api {
    Listenbrainz,
    Lastfm,
    Audioscrobbler,
    Web,
}

/// How a request ended, from its status: a refusal names its reason.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Invalid,
    Unauthenticated,
    NotFound,
    TooLarge,
    RateLimited,
    Unavailable,
    DiskFull,
    Error,
}

/// Label values in Prometheus's lower snake case.
macro_rules! label_values {
    ($t:ty { $($v:ident => $s:literal),* $(,)? }) => {
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut prometheus_client::encoding::LabelValueEncoder) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, match self { $(Self::$v => $s),* })
            }
        }
    };
}

label_values!(Api { Listenbrainz => "listenbrainz", Lastfm => "lastfm", Audioscrobbler => "audioscrobbler", Web => "web" });
label_values!(Outcome {
    Ok => "ok",
    Invalid => "invalid",
    Unauthenticated => "unauthenticated",
    NotFound => "not_found",
    TooLarge => "too_large",
    RateLimited => "rate_limited",
    Unavailable => "unavailable",
    DiskFull => "disk_full",
    Error => "error",
});
label_values!(Verdict { Accepted => "accepted", Ignored => "ignored", Rejected => "rejected", Evidence => "evidence" });

impl Outcome {
    fn of(status: u16) -> Outcome {
        match status {
            100..=399 => Outcome::Ok,
            401 | 403 => Outcome::Unauthenticated,
            404 | 405 => Outcome::NotFound,
            413 => Outcome::TooLarge,
            429 => Outcome::RateLimited,
            503 => Outcome::Unavailable,
            507 => Outcome::DiskFull,
            400..=499 => Outcome::Invalid,
            _ => Outcome::Error,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    api: Api,
    outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabel {
    api: Api,
}

type Histograms = Family<ApiLabel, Histogram, fn() -> Histogram>;

fn submit_histogram() -> Histogram {
    // 0.5 ms to about 8 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

/// The node's metrics: what requests update as they go, and what a scrape reads.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    /// Requests answered, of every API and outcome: whether the node was idle
    /// (`node::give_back_when_idle`). Not exported.
    answered: std::sync::atomic::AtomicU64,
    submit_seconds: Histograms,
    /// Connections answered 503 at the connection cap (`http.max_connections`).
    pub shed_connections: Counter,
    // Read at each scrape:
    batches: Counter,
    groups: Counter,
    reloads: Counter,
    queue: Gauge,
    store_bytes: Gauge,
    users: Gauge,
    peers: Gauge,
    snapshots: Family<SnapshotLabel, Counter>,
    releases: Gauge,
    /// Scrapes are serialised: reading the totals and moving the counters to them is one
    /// step.
    scrape: Mutex<()>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SnapshotLabel {
    verdict: Verdict,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Verdict {
    Accepted,
    Ignored,
    Rejected,
    Evidence,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("hearsay");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by API and outcome (a refusal names its reason)",
            requests.clone(),
        );
        let submit_seconds: Histograms = Family::new_with_constructor(submit_histogram);
        registry.register(
            "submit_seconds",
            "Time from a submission's arrival to its answer (listens durable on disk), by API",
            submit_seconds.clone(),
        );
        let shed_connections = Counter::default();
        registry.register(
            "http_connections_shed",
            "Connections answered 503 at the connection cap (http.max_connections)",
            shed_connections.clone(),
        );
        let batches = Counter::default();
        registry.register("ingest_batches", "Submissions written by the store's writer", batches.clone());
        let groups = Counter::default();
        registry.register("ingest_commits", "Group commits (one flush for several submissions)", groups.clone());
        let reloads = Counter::default();
        registry.register(
            "ingest_reloads",
            "Times the store's writer read its memory again after damage in the store failed a write",
            reloads.clone(),
        );
        let queue = Gauge::default();
        registry.register("ingest_queue_depth", "Writes waiting for the store's writer", queue.clone());
        let store_bytes = Gauge::default();
        registry.register("store_bytes", "Size of the store on disk, in bytes", store_bytes.clone());
        let users = Gauge::default();
        registry.register("users", "Accounts on this node", users.clone());
        let peers = Gauge::default();
        registry.register("peers", "Connected peers (0 when the p2p layer is off)", peers.clone());
        let snapshots = Family::<SnapshotLabel, Counter>::default();
        registry.register("snapshots", "Peers' snapshots and manifests taken in, by verdict", snapshots.clone());
        let releases = Gauge::default();
        registry.register(
            "last_release_period_start",
            "Start (unix seconds) of the newest period this node released; 0 before the first",
            releases.clone(),
        );
        Metrics {
            registry,
            requests,
            answered: std::sync::atomic::AtomicU64::new(0),
            submit_seconds,
            shed_connections,
            batches,
            groups,
            reloads,
            queue,
            store_bytes,
            users,
            peers,
            snapshots,
            releases,
            scrape: Mutex::new(()),
        }
    }
}

impl Metrics {
    /// One request answered: counted by API and outcome; a submission's time observed.
    /// `probe`: a health check or a metrics scrape, which does not keep the node from
    /// being idle (`answered`): a load balancer probing every few seconds would.
    pub fn record(&self, api: Api, status: u16, submission_seconds: Option<f64>, probe: bool) {
        self.requests.get_or_create(&RequestLabels { api, outcome: Outcome::of(status) }).inc();
        if !probe {
            self.answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(seconds) = submission_seconds {
            self.submit_seconds.get_or_create(&ApiLabel { api }).observe(seconds);
        }
    }

    /// Requests answered since the node started, but for probes (`record`).
    pub fn answered(&self) -> u64 {
        self.answered.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The OpenMetrics text of everything, with `readings` taken for this scrape.
    pub fn render(&self, r: &Readings) -> Option<String> {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        catch_up(&self.batches, r.batches);
        catch_up(&self.groups, r.groups);
        catch_up(&self.reloads, r.reloads);
        gauge(&self.queue, r.queue);
        gauge(&self.store_bytes, r.store_bytes);
        gauge(&self.users, r.users);
        gauge(&self.peers, r.peers);
        gauge(&self.releases, r.last_release);
        if let Some([accepted, ignored, rejected, evidence]) = r.snapshots {
            for (verdict, total) in [
                (Verdict::Accepted, accepted),
                (Verdict::Ignored, ignored),
                (Verdict::Rejected, rejected),
                (Verdict::Evidence, evidence),
            ] {
                catch_up(&self.snapshots.get_or_create(&SnapshotLabel { verdict }), total);
            }
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).ok()?;
        Some(text)
    }
}

/// What a scrape reads from the node.
#[derive(Clone, Debug, Default)]
pub struct Readings {
    pub batches: u64,
    pub groups: u64,
    pub reloads: u64,
    pub queue: usize,
    pub store_bytes: u64,
    pub users: usize,
    pub peers: usize,
    /// Accepted, ignored, rejected, kept as evidence (when the p2p layer runs).
    pub snapshots: Option<[u64; 4]>,
    pub last_release: i64,
}

/// Moves a counter fed from elsewhere up to `total` (it only ever grows there).
fn catch_up(counter: &Counter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

fn gauge(g: &Gauge, v: impl TryInto<i64>) {
    g.set(v.try_into().unwrap_or(i64::MAX));
}
