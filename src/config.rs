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
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Directory holding the database and the node key; created when missing.
    /// Default: `hearsay-data` (relative to the working directory).
    pub data_dir: PathBuf,
    /// Log filter in `tracing` syntax (e.g. `info`, `hearsay=debug`). Default: `info`.
    pub log: String,
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
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// sled page cache in MiB. sled's own default (1 GiB) is far too big for a home
    /// server. Default: `64`; allowed 4..=65536.
    pub cache_mb: u64,
    /// Most listens written in one group commit (one flush). Default: `20000`.
    pub group_commit_max_listens: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatsConfig {
    /// Words that separate a main artist from guests (`A feat. B`, `Title (feat. B)`),
    /// matched case-insensitively. Default: `["feat.", "feat", "ft.", "ft", "featuring"]`.
    /// After a change, run `hearsay stats rebuild`.
    pub feat_markers: Vec<String>,
    /// Split `A & B` / `A, B` into two artists when both are already known on the node
    /// as artists of their own (MBIDs or artist lists always count). Default: `true`.
    pub split_known_artists: bool,
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
            timezone: "UTC".into(),
            admins: Vec::new(),
            open_registration: false,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: "127.0.0.1:8487".into(), secure_cookies: false }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { cache_mb: 64, group_commit_max_listens: 20_000 }
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
        let config: Config = figment.extract().map_err(|e| Error::Load(Box::new(e)))?;
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
        if !(4..=65536).contains(&self.store.cache_mb) {
            return Err(Error::Invalid {
                key: "store.cache_mb",
                reason: format!("{} is outside 4..=65536", self.store.cache_mb),
            });
        }
        if !(1..=1_000_000).contains(&self.store.group_commit_max_listens) {
            return Err(Error::Invalid {
                key: "store.group_commit_max_listens",
                reason: format!("{} is outside 1..=1000000", self.store.group_commit_max_listens),
            });
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
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
            ("HEARSAY_HTTP__LISTEN", "nowhere", "http.listen"),
            ("HEARSAY_NODE__LOG", "=[", "node.log"),
            ("HEARSAY_STORE__NO_SUCH_KEY", "1", "no_such_key"),
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
}
