//! Node configuration: one `Config` struct, every field documented with its default.
//!
//! Layers, later wins: built-in defaults < TOML file (`--config` or `HEARSAY_CONFIG`) <
//! environment `HEARSAY_SECTION__KEY` < `HEARSAY_SECTION__KEY_FILE` (the file's contents,
//! for secrets). The whole config is validated before anything opens or binds; a bad value
//! is an error naming its key. `config/example.toml` lists every option with its default
//! and a test keeps it in step with this file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Prefix of every environment variable the node reads.
pub const ENV_PREFIX: &str = "HEARSAY_";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeConfig,
    pub http: HttpConfig,
    pub store: StoreConfig,
    pub stats: StatsConfig,
    pub privacy: PrivacyConfig,
    pub p2p: P2pConfig,
    pub metrics: MetricsConfig,
}

/// `[metrics]`: the Prometheus endpoint `GET /metrics` (`crate::metrics`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics` at all. Default: true.
    pub enabled: bool,
    /// Client addresses that may read it directly (not through a proxy). Default:
    /// loopback only (`127.0.0.1`, `::1`).
    pub allow: Vec<std::net::IpAddr>,
    /// A bearer token that may read it from anywhere (`Authorization: Bearer …`), for a
    /// Prometheus on another host; best set as a secret file
    /// (`HEARSAY_METRICS__TOKEN_FILE`). Default: none.
    pub token: Option<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            allow: vec![std::net::Ipv4Addr::LOCALHOST.into(), std::net::Ipv6Addr::LOCALHOST.into()],
            token: None,
        }
    }
}

/// The log's line format (`node.log_format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Directory holding the database and the node key; created when missing.
    /// Default: `hearsay-data` (relative to the working directory).
    pub data_dir: PathBuf,
    /// Log filter in `tracing` syntax (e.g. `info`, `hearsay=debug`). Default: `info`.
    pub log: String,
    /// How log lines are written: `text` (for people; colours only on a terminal) or
    /// `json` (one object per line, for log collectors). Default: `text`.
    pub log_format: LogFormat,
    /// Time zone of the node's own charts (an IANA name). Default: `UTC`.
    pub timezone: String,
    /// User names of the node's administrators (they see the admin page). Default: none.
    pub admins: Vec<String>,
    /// Let anyone create an account at `/register`. Default: `false` (administrators
    /// hand out invitation links instead).
    pub open_registration: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address the HTTP server binds. Default: `127.0.0.1:8487` (port 0 picks a free one).
    pub listen: String,
    /// Mark the web view's session cookies `Secure`: set it when the node is reached
    /// over TLS (through a reverse proxy). Default: `false`.
    pub secure_cookies: bool,
    /// Most connections served at once; past it a new connection is answered 503 and
    /// closed at once (it is also kept below the open-file limit, which the node raises
    /// to the system's hard limit at start). Idle connections are cheap (at most 32 KiB
    /// of headers each), so the default leaves room for many slow clients while real
    /// ones are served. Default: `4096`; allowed 16..=1000000.
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers. Default: `10`; allowed 1..=600.
    pub header_timeout_secs: u64,
    /// Seconds a request may take, reading its body included (uploads to `/import` are
    /// exempt: they are bounded by size). Default: `60`; allowed 1..=3600.
    pub request_timeout_secs: u64,
    /// Requests one client address may make to the scrobbler APIs (ListenBrainz,
    /// Last.fm, Audioscrobbler) per 10 seconds, as a burst that refills evenly; past it,
    /// 429 (ListenBrainz answers carry `X-RateLimit-*`). Loopback clients are not
    /// limited; behind a proxy, list it in `trusted_proxies` so the limit applies to each
    /// real client. `0` turns it off. Default: `300`; allowed 0..=1000000.
    pub api_rate_limit: u32,
    /// The address people and players reach this node at, when it differs from what
    /// they connect to (a TLS front: `https://music.example.org`, optionally with a
    /// path prefix): every URL the node hands out (the Audioscrobbler 1.2 handshake,
    /// `/connect`, invitations) starts with it. Default: none (the request's `Host`,
    /// over `http`, or what a trusted proxy says).
    pub public_url: Option<String>,
    /// IP addresses of reverse proxies in front of the node. From these only, the
    /// `X-Forwarded-For` (the client's address, for rate limits), `X-Forwarded-Proto` and
    /// `X-Forwarded-Host` headers are believed; from anyone else they are ignored.
    /// Default: none.
    pub trusted_proxies: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// sled page cache in MiB, pages counted by their size in memory. sled's own default
    /// (1 GiB) is far too big for a home server. Default: `32`; allowed 4..=65536.
    pub cache_mb: u64,
    /// sled page cache in MiB while the node imports in bulk (the writer commits groups
    /// of an import's size); back to `cache_mb` once no such group came for a few
    /// seconds; below `cache_mb`, `cache_mb`. Default: `64`; allowed 4..=65536.
    pub import_cache_mb: u64,
    /// Most listens written in one group commit (one flush). Default: `20000`.
    pub group_commit_max_listens: usize,
    /// Free space (MiB) kept on the disk holding the data directory. Below it the node
    /// writes nothing (scrobbles are answered 507, the store is not opened) and reads go
    /// on; writing resumes by itself once space is back. Default: `64`; allowed
    /// 1..=1048576.
    pub reserve_mb: u64,
    /// Compress the database's pages with zstd (level 1) in a store created from now on:
    /// about a fifth less disk, writes about a fifth slower (a bulk load of a large node:
    /// docs/operations.md). A store keeps the setting it
    /// was created with (sled cannot change it in place); `hearsay store compact`
    /// rewrites it with this one. Default: `true`.
    pub compression: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatsConfig {
    /// Words that separate a main artist from guests (`A feat. B`, `Title (feat. B)`),
    /// matched case-insensitively. Default: `["feat.", "feat", "ft.", "ft", "featuring"]`.
    /// After a change, run `hearsay stats rebuild`.
    pub feat_markers: Vec<String>,
    /// Split `A & B` / `A, B` into two artists when both are already known on the node
    /// as artists of their own (MBIDs or artist lists always count). Default: `false`:
    /// "known on the node" is other users' listening, so with it on, a private user's
    /// history can change how a public user's chart splits a name (docs/privacy.md).
    /// Releases never use it.
    pub split_known_artists: bool,
}

/// The federation's network layer (see `docs/protocol.md`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct P2pConfig {
    /// Run the peer-to-peer layer at all. Default: `true` (a node without bootstrap
    /// peers or communities simply runs alone).
    pub enabled: bool,
    /// libp2p addresses to listen on (TCP and QUIC). Default: TCP and QUIC on port 4001,
    /// all interfaces.
    pub listen: Vec<String>,
    /// Addresses other nodes should use to reach this one (put in invite tickets),
    /// e.g. `/dns4/music.example.org/tcp/4001`. Default: none (the listen addresses
    /// that are not wildcards are used).
    pub external: Vec<String>,
    /// Peers to connect to at start (multiaddrs ending in `/p2p/<PeerId>`), besides the
    /// bootstrap addresses of followed communities. Default: none.
    pub bootstrap: Vec<String>,
    /// Discover peers on the local network with mDNS (it announces this node's PeerId
    /// to the LAN). Default: `false`.
    pub mdns: bool,
    /// Serve the peer directory (Kademlia server mode) to connected peers, so that
    /// members who joined through one node's ticket find and connect to each other
    /// instead of hanging off that node. `false`: serve it only with `p2p.external`,
    /// `p2p.relay_server` or once AutoNAT confirms an address (for a node behind NAT
    /// whose addresses others cannot dial). Default: `true`.
    pub serve_directory: bool,
    /// Relay nodes to reserve a slot on when this node is not reachable (behind NAT):
    /// multiaddrs ending in `/p2p/<PeerId>`; hole punching (DCUtR) upgrades relayed
    /// connections to direct ones. Default: none.
    pub relays: Vec<String>,
    /// Serve as a relay for others, and dial others back so they learn whether they
    /// are reachable (run this on a reachable community hub). Default: `false`.
    pub relay_server: bool,
    /// Ask peers to dial this node back (AutoNAT v2) to learn whether it is reachable;
    /// a confirmed address turns on Kademlia server mode. Default: `true`.
    pub autonat: bool,
    /// Snapshots of periods older than this many seconds are ignored and not synced.
    /// Default: `7257600` (12 weeks).
    pub retention_secs: u32,
    /// Seconds between catch-up rounds with a random connected peer (also done on each
    /// new connection). Default: `900`.
    pub sync_interval_secs: u32,
    /// Catch-up requests a peer may make per minute before being refused (one IP
    /// address: 8 times this, whatever its PeerIds). Default: `120`.
    pub max_requests_per_minute: u32,
    /// Established peer connections at most (and 2 per peer, 64 inbound handshakes at
    /// once). Default: `256`.
    pub max_connections: u32,
    /// Established peer connections from one IP address (IPv6: one /64) at most,
    /// inbound and outbound; loopback is exempt. Default: `16`.
    pub max_connections_per_ip: u32,
    /// New peer connections are refused while the process uses more memory than this
    /// many MiB. Default: `1024`.
    pub max_memory_mib: u32,
    /// Write every secure-aggregation message this node receives (requests and
    /// answers, one file each) into this directory, for an operator who wants to show
    /// or check what an aggregator learns (`docs/operations.md`). Default: unset (off).
    pub secagg_audit_dir: Option<std::path::PathBuf>,
}

impl Default for P2pConfig {
    fn default() -> Self {
        P2pConfig {
            enabled: true,
            listen: vec!["/ip4/0.0.0.0/tcp/4001".into(), "/ip4/0.0.0.0/udp/4001/quic-v1".into()],
            external: Vec::new(),
            bootstrap: Vec::new(),
            mdns: false,
            serve_directory: true,
            relays: Vec::new(),
            relay_server: false,
            autonat: true,
            retention_secs: 7_257_600,
            sync_interval_secs: 900,
            max_requests_per_minute: 120,
            max_connections: 256,
            max_connections_per_ip: 16,
            max_memory_mib: 1024,
            secagg_audit_dir: None,
        }
    }
}

impl P2pConfig {
    pub fn validate(&self) -> Result<(), Error> {
        for (key, list) in [
            ("p2p.listen", &self.listen),
            ("p2p.external", &self.external),
            ("p2p.bootstrap", &self.bootstrap),
            ("p2p.relays", &self.relays),
        ] {
            for a in list {
                if a.parse::<libp2p::Multiaddr>().is_err() {
                    return Err(Error::Invalid { key, reason: format!("{a:?} is not a multiaddr") });
                }
            }
        }
        let checks: [(&'static str, bool, &str); 6] = [
            ("p2p.sync_interval_secs", self.sync_interval_secs == 0, "must be positive"),
            ("p2p.max_requests_per_minute", self.max_requests_per_minute == 0, "must be positive"),
            ("p2p.max_connections", self.max_connections < 8, "must be at least 8"),
            ("p2p.max_connections_per_ip", self.max_connections_per_ip == 0, "must be positive"),
            ("p2p.max_memory_mib", self.max_memory_mib < 64, "must be at least 64"),
            ("p2p.retention_secs", self.retention_secs < 3_600, "must be at least 3600 (an hour)"),
        ];
        if let Some((key, _, reason)) = checks.into_iter().find(|c| c.1) {
            return Err(Error::Invalid { key, reason: reason.into() });
        }
        Ok(())
    }
}

/// What leaves the node and how (see `docs/privacy.md`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    /// Sharing level of new accounts: `private`, `aggregate` or `public`. Default:
    /// `aggregate`.
    pub default_level: String,
    /// Length of a release period in seconds; it must divide a week (periods tile ISO
    /// weeks in UTC). Default: `604800` (one ISO week).
    pub period_secs: u32,
    /// Seconds after a period ends before it is finalised and released (late scrobbles
    /// from offline players still count). Default: `172800` (48 h).
    pub grace_secs: u32,
    /// A node that starts (or restarts after a long stop) releases the latest finalised
    /// period and at most this many before it. Default: `2`.
    pub backfill_periods: u32,
    /// ε per chart for choosing items and noising their listener counts. Default: `0.06`.
    pub epsilon_listeners: f64,
    /// ε per chart for noising the chosen items' listen counts. Default: `0.015`.
    pub epsilon_listens: f64,
    /// δ per chart. Default: `5e-8`.
    pub delta: f64,
    /// Never publish an item with fewer real listeners than this (at least 2). Default: `10`.
    pub k: u32,
    /// Items per user per chart that count (L0). Default: `1`.
    pub l0: u32,
    /// Listens per user per item that count (C). Default: `10`.
    pub clamp: u32,
    /// Most ε one user's week may spend, over all releases. Default: `0.15` (one release
    /// of two charts at the defaults).
    pub week_epsilon_budget: f64,
    /// Most δ one user's week may spend. Default: `1e-7`.
    pub week_delta_budget: f64,
    /// Most ε one user may spend over any 52 consecutive weeks (basic composition).
    /// Default: `8.0` (a weekly release all year costs 7.8 at the defaults).
    pub year_epsilon_budget: f64,
    /// Most δ one user may spend over any 52 consecutive weeks. Default: `1e-5`.
    pub year_delta_budget: f64,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig {
            default_level: "aggregate".into(),
            period_secs: 604_800,
            grace_secs: 172_800,
            backfill_periods: 2,
            epsilon_listeners: 0.06,
            epsilon_listens: 0.015,
            delta: 5e-8,
            k: 10,
            l0: 1,
            clamp: 10,
            week_epsilon_budget: 0.15,
            week_delta_budget: 1e-7,
            year_epsilon_budget: 8.0,
            year_delta_budget: 1e-5,
        }
    }
}

/// ε as exact thousandths; `None` when it is not a positive finite number.
fn milli(x: f64) -> Option<u64> {
    (x.is_finite() && x > 0.0 && x <= 1e9).then(|| (x * 1000.0).round() as u64)
}

/// δ as exact units of 1e-12; `None` when not in (0, 1).
fn pico(x: f64) -> Option<u64> {
    (x.is_finite() && x > 0.0 && x < 1.0).then(|| (x * 1e12).round() as u64)
}

impl PrivacyConfig {
    pub fn level(&self) -> Option<crate::privacy::SharingLevel> {
        crate::privacy::SharingLevel::parse(&self.default_level)
    }

    /// The mechanism's parameters, or the key that is wrong.
    pub fn params(&self) -> Result<crate::privacy::params::Params, Error> {
        let invalid = |key: &'static str, reason: String| Error::Invalid { key, reason };
        let eps = |key: &'static str, x: f64| {
            milli(x)
                .filter(|m| *m > 0)
                .and_then(|m| u32::try_from(m).ok())
                .ok_or_else(|| invalid(key, format!("{x} must be a number above 0 (at least 0.001)")))
        };
        let params = crate::privacy::params::Params {
            eps_listeners_milli: eps("privacy.epsilon_listeners", self.epsilon_listeners)?,
            eps_listens_milli: eps("privacy.epsilon_listens", self.epsilon_listens)?,
            delta_pico: pico(self.delta)
                .filter(|p| *p > 0)
                .ok_or_else(|| invalid("privacy.delta", format!("{} must be between 1e-12 and 1e-3", self.delta)))?,
            k: self.k,
            l0: self.l0,
            clamp: self.clamp,
        };
        params.validate().map_err(|e| {
            let key = match &e {
                crate::privacy::params::ParamError::KTooSmall(_) => "privacy.k",
                crate::privacy::params::ParamError::DeltaTooLarge(_) => "privacy.delta",
                crate::privacy::params::ParamError::NotPositive("l0") => "privacy.l0",
                crate::privacy::params::ParamError::NotPositive("clamp") => "privacy.clamp",
                crate::privacy::params::ParamError::TooLarge { what, .. } => match *what {
                    "l0" => "privacy.l0",
                    "clamp" => "privacy.clamp",
                    "k" => "privacy.k",
                    _ => "privacy.epsilon_listeners",
                },
                _ => "privacy",
            };
            invalid(key, e.to_string())
        })?;
        Ok(params)
    }

    /// The weekly budget per user.
    pub fn budget(&self) -> Result<crate::privacy::params::Budget, Error> {
        let spend = |eps_key: &'static str, eps: f64, delta_key: &'static str, delta: f64| {
            let eps_milli = milli(eps)
                .ok_or_else(|| Error::Invalid { key: eps_key, reason: format!("{eps} must be a number above 0") })?;
            let delta_pico = pico(delta)
                .ok_or_else(|| Error::Invalid { key: delta_key, reason: format!("{delta} must be between 0 and 1") })?;
            Ok::<_, Error>(crate::privacy::params::Spend { eps_milli, delta_pico })
        };
        Ok(crate::privacy::params::Budget {
            week: spend(
                "privacy.week_epsilon_budget",
                self.week_epsilon_budget,
                "privacy.week_delta_budget",
                self.week_delta_budget,
            )?,
            year: spend(
                "privacy.year_epsilon_budget",
                self.year_epsilon_budget,
                "privacy.year_delta_budget",
                self.year_delta_budget,
            )?,
        })
    }

    pub fn validate(&self) -> Result<(), Error> {
        if self.level().is_none() {
            return Err(Error::Invalid {
                key: "privacy.default_level",
                reason: format!("{:?} is not one of private, aggregate, public", self.default_level),
            });
        }
        if self.period_secs == 0 || 604_800 % self.period_secs != 0 {
            return Err(Error::Invalid {
                key: "privacy.period_secs",
                reason: format!("{} does not divide a week (604800 s)", self.period_secs),
            });
        }
        let params = self.params()?;
        let budget = self.budget()?;
        params.fits(budget).map_err(|e| Error::Invalid {
            key: if e.to_string().contains("yearly") {
                "privacy.year_epsilon_budget"
            } else {
                "privacy.week_epsilon_budget"
            },
            reason: e.to_string(),
        })?;
        Ok(())
    }
}

impl Default for StatsConfig {
    fn default() -> Self {
        let rules = crate::stats::credits::CreditRules::default();
        StatsConfig { feat_markers: rules.feat_markers, split_known_artists: rules.split_known_artists }
    }
}

impl StatsConfig {
    pub fn credit_rules(&self) -> crate::stats::credits::CreditRules {
        crate::stats::credits::CreditRules {
            feat_markers: self.feat_markers.clone(),
            split_known_artists: self.split_known_artists,
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: PathBuf::from("hearsay-data"),
            log: "info".into(),
            log_format: LogFormat::Text,
            timezone: "UTC".into(),
            admins: Vec::new(),
            open_registration: false,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8487".into(),
            secure_cookies: false,
            max_connections: 4096,
            header_timeout_secs: 10,
            request_timeout_secs: 60,
            api_rate_limit: 300,
            public_url: None,
            trusted_proxies: Vec::new(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            cache_mb: 32,
            import_cache_mb: 64,
            group_commit_max_listens: 20_000,
            reserve_mb: 64,
            compression: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config: {0}")]
    Load(Box<figment::Error>),
    #[error("config: {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("config: {var}: cannot read {path}: {source}")]
    SecretFile { var: String, path: PathBuf, source: std::io::Error },
    #[error("config: {path}: file not found")]
    MissingFile { path: PathBuf },
    /// A value of the wrong shape, named as the file and the environment spell it.
    #[error("config: {key} (environment: {env}): {reason}")]
    Value { key: String, env: String, reason: String },
}

/// Names a figment error by its key in both spellings, and says how a list is written
/// (figment's own message names an internal type and source line).
fn explain(e: figment::Error) -> Error {
    if e.path.is_empty() {
        return Error::Load(Box::new(e));
    }
    let key = e.path.join(".");
    let env = format!("{ENV_PREFIX}{}", e.path.iter().map(|p| p.to_uppercase()).collect::<Vec<_>>().join("__"));
    let reason = match &e.kind {
        figment::error::Kind::InvalidType(actual, expected) if expected.contains("sequence") => format!(
            "expected a list, found {actual}: write it as [\"a\", \"b\"], in the file `{} = [\"…\"]`, in the environment {env}='[\"…\", \"…\"]'",
            e.path.last().map_or("key", String::as_str)
        ),
        kind => kind.to_string(),
    };
    Error::Value { key, env, reason }
}

impl Config {
    /// Loads the layered config from the process environment, with the TOML file at
    /// `file` (or `HEARSAY_CONFIG` when `file` is `None`).
    pub fn load(file: Option<&Path>) -> Result<Config, Error> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Config::load_from(file, &vars)
    }

    /// As `load`, with the environment given explicitly (tests use this).
    pub fn load_from(file: Option<&Path>, vars: &[(String, String)]) -> Result<Config, Error> {
        let file = file
            .map(Path::to_path_buf)
            .or_else(|| vars.iter().find(|(k, _)| k == "HEARSAY_CONFIG").map(|(_, v)| PathBuf::from(v)));
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(Error::MissingFile { path });
            }
            figment = figment.merge(Toml::file(path));
        }
        // Only names with a section separator are config keys, so unrelated HEARSAY_*
        // variables (HEARSAY_CONFIG, test switches) are not mistaken for options.
        let env_vars: Vec<(String, String)> = vars
            .iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__") && !k.ends_with("_FILE"))
            .cloned()
            .collect();
        for (name, value) in &env_vars {
            figment = figment.merge(Serialized::global(&env_key(name), parse_env_value(value)));
        }
        for (name, path) in vars.iter().filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__")) {
            let Some(base) = name.strip_suffix("_FILE") else {
                continue;
            };
            let content = std::fs::read_to_string(path).map_err(|source| Error::SecretFile {
                var: name.clone(),
                path: PathBuf::from(path),
                source,
            })?;
            let value = content.trim_end_matches(['\n', '\r']);
            figment = figment.merge(Serialized::global(&env_key(base), parse_env_value(value)));
        }
        let config: Config = figment.extract().map_err(explain)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value; the error names the first bad key.
    pub fn validate(&self) -> Result<(), Error> {
        if self.node.data_dir.as_os_str().is_empty() {
            return Err(Error::Invalid { key: "node.data_dir", reason: "must not be empty".into() });
        }
        if tracing_subscriber::EnvFilter::try_new(&self.node.log).is_err() {
            return Err(Error::Invalid {
                key: "node.log",
                reason: format!("{:?} is not a valid log filter", self.node.log),
            });
        }
        if crate::stats::period::time_zone(&self.node.timezone).is_err() {
            return Err(Error::Invalid {
                key: "node.timezone",
                reason: format!("{:?} is not a known time zone", self.node.timezone),
            });
        }
        self.http_listen()?;
        if let Some(u) = &self.http.public_url {
            public_url(u).map_err(|reason| Error::Invalid { key: "http.public_url", reason })?;
        }
        for p in &self.http.trusted_proxies {
            if p.trim().parse::<std::net::IpAddr>().is_err() {
                return Err(Error::Invalid {
                    key: "http.trusted_proxies",
                    reason: format!("{p:?} is not an IP address (one address per entry, e.g. \"127.0.0.1\")"),
                });
            }
        }
        if self.metrics.token.as_deref().is_some_and(|t| t.trim().len() < 16) {
            return Err(Error::Invalid {
                key: "metrics.token",
                reason: "must be at least 16 characters (a random secret, e.g. `openssl rand -hex 16`)".into(),
            });
        }
        for (key, value, range) in [
            ("http.max_connections", self.http.max_connections as u64, 16..=1_000_000),
            ("http.header_timeout_secs", self.http.header_timeout_secs, 1..=600),
            ("http.request_timeout_secs", self.http.request_timeout_secs, 1..=3600),
            ("http.api_rate_limit", u64::from(self.http.api_rate_limit), 0..=1_000_000),
        ] {
            if !range.contains(&value) {
                return Err(Error::Invalid {
                    key,
                    reason: format!("{value} is outside {}..={}", range.start(), range.end()),
                });
            }
        }
        if !(4..=65536).contains(&self.store.cache_mb) {
            return Err(Error::Invalid {
                key: "store.cache_mb",
                reason: format!("{} is outside 4..=65536", self.store.cache_mb),
            });
        }
        if !(4..=65536).contains(&self.store.import_cache_mb) {
            return Err(Error::Invalid {
                key: "store.import_cache_mb",
                reason: format!("{} is outside 4..=65536", self.store.import_cache_mb),
            });
        }
        if !(1..=1_048_576).contains(&self.store.reserve_mb) {
            return Err(Error::Invalid {
                key: "store.reserve_mb",
                reason: format!("{} is outside 1..=1048576", self.store.reserve_mb),
            });
        }
        if !(1..=1_000_000).contains(&self.store.group_commit_max_listens) {
            return Err(Error::Invalid {
                key: "store.group_commit_max_listens",
                reason: format!("{} is outside 1..=1000000", self.store.group_commit_max_listens),
            });
        }
        self.privacy.validate()?;
        self.p2p.validate()?;
        if self.stats.feat_markers.iter().any(|m| m.trim().is_empty() || m.contains(char::is_whitespace)) {
            return Err(Error::Invalid {
                key: "stats.feat_markers",
                reason: "markers must be single non-empty words".into(),
            });
        }
        Ok(())
    }

    /// The parsed HTTP bind address.
    pub fn http_listen(&self) -> Result<SocketAddr, Error> {
        self.http.listen.parse().map_err(|_| Error::Invalid {
            key: "http.listen",
            reason: format!("{:?} is not an address like 127.0.0.1:8487", self.http.listen),
        })
    }
}

/// `HEARSAY_STORE__CACHE_MB` -> `store.cache_mb`.
fn env_key(name: &str) -> String {
    name.trim_start_matches(ENV_PREFIX).to_ascii_lowercase().replace("__", ".")
}

fn parse_env_value(raw: &str) -> figment::value::Value {
    // Infallible: anything that is not a number or boolean stays a string.
    raw.parse().unwrap_or_else(|_| figment::value::Value::from(raw.to_owned()))
}

/// `http.public_url` checked and normalised: `http` or `https`, a host, an optional path
/// prefix, no query, no trailing slash.
pub fn public_url(text: &str) -> Result<String, String> {
    let t = text.trim().trim_end_matches('/');
    let rest = t
        .strip_prefix("https://")
        .or_else(|| t.strip_prefix("http://"))
        .ok_or_else(|| format!("{text:?} must start with https:// or http://"))?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty()
        || rest.contains(['?', '#', ' '])
        || !rest.chars().all(|c| c.is_ascii_graphic())
        || host.contains('@')
    {
        return Err(format!("{text:?} is not an address like https://music.example.org"));
    }
    Ok(t.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_list_given_as_a_plain_string_says_how_to_write_a_list() {
        let vars = vec![("HEARSAY_P2P__LISTEN".to_owned(), "/ip4/127.0.0.1/tcp/4001".to_owned())];
        let e = Config::load_from(None, &vars).expect_err("a string is not a list").to_string();
        assert!(e.contains("p2p.listen") && e.contains("HEARSAY_P2P__LISTEN='[\""), "{e}");
        assert!(!e.contains("src/config.rs") && !e.contains("figment"), "no internals: {e}");
        let vars = vec![("HEARSAY_P2P__LISTEN".to_owned(), "[\"/ip4/127.0.0.1/tcp/4001\"]".to_owned())];
        assert!(Config::load_from(None, &vars).is_ok());
    }

    #[test]
    fn defaults_need_no_file() {
        assert_eq!(Config::load_from(None, &[]).expect("defaults"), Config::default());
    }

    #[test]
    fn precedence_is_defaults_then_file_then_env_then_file_secret() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[store]\ncache_mb = 32\n[http]\nlisten = \"127.0.0.1:1\"\n").expect("write");
        let c = Config::load_from(Some(&file), &[]).expect("file");
        assert_eq!((c.store.cache_mb, c.http.listen.as_str()), (32, "127.0.0.1:1"));
        let c = Config::load_from(Some(&file), &vars(&[("HEARSAY_STORE__CACHE_MB", "16")])).expect("env");
        assert_eq!((c.store.cache_mb, c.http.listen.as_str()), (16, "127.0.0.1:1"));
        let secret = dir.path().join("listen");
        std::fs::write(&secret, "127.0.0.1:2\n").expect("write");
        let c = Config::load_from(
            Some(&file),
            &vars(&[
                ("HEARSAY_HTTP__LISTEN", "127.0.0.1:3"),
                ("HEARSAY_HTTP__LISTEN_FILE", secret.to_str().expect("utf8")),
            ]),
        )
        .expect("file secret");
        assert_eq!(c.http.listen, "127.0.0.1:2");
        // HEARSAY_CONFIG names the file when no flag does.
        let c = Config::load_from(None, &vars(&[("HEARSAY_CONFIG", file.to_str().expect("utf8"))])).expect("var");
        assert_eq!(c.store.cache_mb, 32);
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("HEARSAY_STORE__CACHE_MB", "1", "store.cache_mb"),
            ("HEARSAY_STORE__CACHE_MB", "lots", "store.cache_mb"),
            ("HEARSAY_STORE__IMPORT_CACHE_MB", "2", "store.import_cache_mb"),
            ("HEARSAY_STORE__IMPORT_CACHE_MB", "70000", "store.import_cache_mb"),
            ("HEARSAY_HTTP__LISTEN", "nowhere", "http.listen"),
            ("HEARSAY_NODE__LOG", "=[", "node.log"),
            ("HEARSAY_STORE__NO_SUCH_KEY", "1", "no_such_key"),
            ("HEARSAY_PRIVACY__EPSILON_LISTENERS", "0", "privacy.epsilon_listeners"),
            ("HEARSAY_PRIVACY__EPSILON_LISTENS", "-1", "privacy.epsilon_listens"),
            ("HEARSAY_PRIVACY__K", "1", "privacy.k"),
            ("HEARSAY_PRIVACY__DELTA", "0.5", "privacy.delta"),
            ("HEARSAY_PRIVACY__WEEK_EPSILON_BUDGET", "0.1", "no release could ever be made"),
            ("HEARSAY_PRIVACY__YEAR_EPSILON_BUDGET", "0.1", "privacy.year_epsilon_budget"),
            ("HEARSAY_PRIVACY__PERIOD_SECS", "11", "privacy.period_secs"),
            ("HEARSAY_PRIVACY__DEFAULT_LEVEL", "everyone", "privacy.default_level"),
        ];
        for (var, value, key) in cases {
            let err = Config::load_from(None, &vars(&[(var, value)])).expect_err(var).to_string();
            assert!(err.contains(key), "{var}={value}: {err}");
        }
        let err = Config::load_from(None, &vars(&[("HEARSAY_HTTP__LISTEN_FILE", "/nonexistent/x")]))
            .expect_err("missing secret file")
            .to_string();
        assert!(err.contains("HEARSAY_HTTP__LISTEN_FILE"), "{err}");
    }

    #[test]
    fn example_config_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml");
        let text = std::fs::read_to_string(&path).expect("config/example.toml");
        let example: toml::Table = toml::from_str(&text).expect("valid TOML");
        let defaults = toml::Table::try_from(Config::default()).expect("serialisable");
        assert_eq!(example, defaults, "config/example.toml drifted from Config::default()");
        // And every option is documented there with a comment.
        for (section, table) in &defaults {
            for key in table.as_table().expect("sections are tables").keys() {
                let line = text.lines().position(|l| l.starts_with(&format!("{key} ="))).expect(key);
                assert!(
                    line > 0 && text.lines().nth(line - 1).is_some_and(|l| l.starts_with('#')),
                    "{section}.{key} lacks a comment"
                );
            }
        }
    }

    #[test]
    fn public_urls_are_http_or_https_addresses_without_trailing_slash() {
        assert_eq!(super::public_url("https://music.example.org/").as_deref(), Ok("https://music.example.org"));
        assert_eq!(super::public_url("http://10.0.0.2:8487/hearsay").as_deref(), Ok("http://10.0.0.2:8487/hearsay"));
        for bad in ["music.example.org", "ftp://x", "https://", "https://a b", "https://x/?q=1", "https://u@x"] {
            assert!(super::public_url(bad).is_err(), "{bad}");
        }
    }
}
