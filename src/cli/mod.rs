//! The command line: `hearsay [run]`, `user`, `token`, `import`, `export`, `account`,
//! `stats`, `store`, `log verify`, `community …` (in `community`), and `bench` when
//! built with the `bench` feature.
//!
//! Commands other than `run` open the store directly, so they need the node stopped
//! (sled allows one process per database; the error says so plainly).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::node::{open_store, shutdown_signal};
use crate::store::UserId;

mod community;

#[derive(Parser)]
#[command(name = "hearsay", version, about = "A federated peer-to-peer scrobble network node")]
pub struct Cli {
    /// TOML config file (default: $HEARSAY_CONFIG, else built-in defaults).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node (the default).
    Run,
    /// Manage users.
    #[command(subcommand)]
    User(UserCmd),
    /// Manage API tokens (for ListenBrainz-style clients).
    #[command(subcommand)]
    Token(TokenCmd),
    /// Inspect users' signed logs.
    #[command(subcommand)]
    Log(LogCmd),
    /// Import a listening history for a user: ListenBrainz (JSONL or JSON), Last.fm
    /// CSV, Spotify (extended or account-data history; a folder of its files), Maloja,
    /// Rockbox `.scrobbler.log`. The format is detected per file unless --format says.
    Import {
        #[arg(long)]
        user: String,
        /// listenbrainz-jsonl, listenbrainz-json, lastfm-csv, spotify-extended,
        /// spotify-account, maloja or rockbox.
        #[arg(long)]
        format: Option<String>,
        /// Time zone of a Rockbox log marked #TZ/UNKNOWN (device-local times);
        /// default: the user's time zone.
        #[arg(long)]
        timezone: Option<String>,
        /// Files or folders to import.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Export a user's listens, oldest first: ListenBrainz JSONL (`listenbrainz`,
    /// which ListenBrainz and hearsay import) or CSV with a header (`csv`).
    Export {
        #[arg(long)]
        user: String,
        #[arg(long, default_value = "listenbrainz")]
        format: String,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Statistics.
    #[command(subcommand)]
    Stats(StatsCmd),
    /// Database maintenance.
    #[command(subcommand)]
    Store(StoreCmd),
    /// Benchmarks that print figures (built with `--features bench`).
    #[cfg(feature = "bench")]
    #[command(subcommand)]
    Bench(crate::bench::BenchCmd),
    /// Communities: create, invite, join, follow, link, list.
    #[command(subcommand)]
    Community(community::CommunityCmd),
    /// This node's identity.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Account bundles: a user's whole signed log in one file, verifiable anywhere.
    #[command(subcommand)]
    Account(AccountCmd),
    /// The running node's peers and communities.
    Peers,
}

#[derive(Subcommand)]
enum AccountCmd {
    /// Write NAME's public key and whole signed log (tombstones included) to one file.
    Export {
        name: String,
        #[arg(long)]
        out: PathBuf,
        /// Also write the user's private signing key to this separate file (mode 0600):
        /// only for moving the account to another node; keep it secret.
        #[arg(long)]
        with_secret_key: Option<PathBuf>,
    },
    /// Verify a bundle: recompute the chain and check every signature; names the first
    /// bad entry.
    Verify { file: PathBuf },
    /// Move an account here: verify the whole bundle, then recreate the user with the
    /// same identity key (from the secret key file) so new listens extend the same chain.
    Import {
        file: PathBuf,
        #[arg(long)]
        secret_key: PathBuf,
        /// Name on this node (default: the name in the bundle).
        #[arg(long)]
        name: Option<String>,
        /// The password on this node: first line of this file (else asked).
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Print this node's PeerId (creating its key if needed).
    Id,
}

#[derive(Subcommand)]
enum UserCmd {
    /// Create a user (password from a prompt, or the first line of --password-file).
    Add {
        name: String,
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// List users.
    List,
    /// Set a user's time zone (an IANA name such as Europe/Berlin); rebuilds their
    /// statistics so periods follow their local midnight.
    SetTimezone { name: String, timezone: String },
    /// Set a user's sharing level: private, aggregate (the default) or public.
    SetVisibility { name: String, level: String },
    /// Let anyone read a user's profile, listens and charts through the scrobbler APIs
    /// without a token (`open`), or require one again (`closed`, the default). For apps
    /// that never send a token on reads; the web pages are not affected.
    SetApiReads { name: String, state: String },
    /// Delete a user and all their data.
    Delete {
        name: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a token; it is printed once and never stored.
    New {
        user: String,
        #[arg(long, default_value = "default")]
        name: String,
        /// For an old player that speaks Audioscrobbler 1.2 or logs in to Last.fm 2.0
        /// with `authToken`: the token's md5 is kept, which is as good as the token to
        /// whoever reads the database (docs/privacy.md).
        #[arg(long)]
        legacy: bool,
    },
    /// List a user's tokens.
    List { user: String },
    /// Revoke a token by its id (see `token list`).
    Revoke { user: String, id: u32 },
}

#[derive(Subcommand)]
enum StatsCmd {
    /// A user's top artists, tracks or albums for a period.
    Top {
        user: String,
        /// artists, tracks or albums.
        #[arg(long, default_value = "artists")]
        kind: String,
        /// 7d, 1m, 3m, 6m, 12m, all, 2024, 2024-03, 2024-W05 or FROM..TO (unix seconds).
        #[arg(long, default_value = "all")]
        period: String,
        #[arg(long, default_value_t = 25)]
        limit: usize,
    },
    /// The node's chart (its public members summed) for a period.
    Node {
        /// artists, tracks or albums.
        #[arg(long, default_value = "artists")]
        kind: String,
        /// As for `stats top`; weeks, months, years and all are read from the node's
        /// own statistics, the others summed over the members.
        #[arg(long, default_value = "all")]
        period: String,
        #[arg(long, default_value_t = 25)]
        limit: usize,
    },
    /// Recompute every statistic from the logs (after changing `[stats]` settings).
    Rebuild,
}

/// A chart kind named on the command line.
fn chart_kind(kind: &str) -> anyhow::Result<crate::stats::chart::Kind> {
    Ok(match kind {
        "artists" => crate::stats::chart::Kind::Artist,
        "tracks" => crate::stats::chart::Kind::Recording,
        "albums" => crate::stats::chart::Kind::Release,
        other => bail!("unknown kind {other:?}: use artists, tracks or albums"),
    })
}

#[derive(Subcommand)]
enum StoreCmd {
    /// Rewrite the database into a fresh file so erased listens and deleted users
    /// physically leave it; blanks track names no log refers to any more.
    Compact,
    /// Write a consistent copy of the data (database and node key) to a new directory,
    /// which a node can run from. Works while the node runs (it asks the node).
    Backup { dir: PathBuf },
    /// Salvage a damaged data directory into a new one: every entry of every user's log
    /// that still verifies, their accounts, tokens, settings and privacy ledgers; the
    /// statistics are rebuilt. The damaged files are not changed; what was lost is
    /// listed. Run it with the node stopped.
    Recover { dir: PathBuf },
    /// Where the bytes go: items and bytes (keys and values) per tree, the files' size
    /// on disk, and each per listen. Run it with the node stopped.
    Stats,
}

#[derive(Subcommand)]
enum LogCmd {
    /// Recompute a user's hash chain and check every signature.
    Verify { user: String },
}

/// `hearsay store stats`: bytes per tree and per listen.
fn store_stats(config: &Config) -> anyhow::Result<ExitCode> {
    let store = open_store(config)?;
    let mut trees = store.tree_stats()?;
    trees.sort_by_key(|t| std::cmp::Reverse(t.2));
    let listens = store.listens_total()?;
    let users = store.users()?.len();
    let logical: u64 = trees.iter().map(|t| t.2).sum();
    let files = store.size_on_disk()?;
    let per = |bytes: u64| if listens == 0 { "-".to_owned() } else { format!("{:.1}", bytes as f64 / listens as f64) };
    println!("{users} users, {listens} listens");
    println!("{:<34} {:>10} {:>14} {:>12}", "tree", "items", "bytes", "per listen");
    for (name, items, bytes) in trees.iter().filter(|t| t.1 > 0) {
        println!("{name:<34} {items:>10} {bytes:>14} {:>12}", per(*bytes));
    }
    println!("{:<34} {:>10} {logical:>14} {:>12}", "all trees (keys and values)", "", per(logical));
    println!("{:<34} {:>10} {files:>14} {:>12}", "files on disk", "", per(files));
    println!("\nuserid_bucket_counts by what its values hold:");
    for (label, items, bytes) in store.bucket_stats()? {
        println!("  {label:<42} {items:>10} {bytes:>14} {:>12}", per(bytes));
    }
    Ok(ExitCode::SUCCESS)
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(filter: &str, format: crate::config::LogFormat) {
    let mut directives = filter.to_owned();
    // A node with no peers yet (alone, or before its first connection) makes Kademlia
    // warn that it cannot bootstrap; that is the normal state of a lone node, not a
    // fault, so it is kept out of the log unless asked for.
    if !filter.contains("libp2p_kad") {
        directives.push_str(",libp2p_kad::behaviour=error");
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&directives).unwrap_or_else(|_| "info".into());
    // Colours only on a terminal (and not under NO_COLOR): a log file or journald gets
    // plain text, not escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        crate::config::LogFormat::Text => builder.with_ansi(ansi).try_init(),
        // One JSON object per line: time, level, target, message and the event's fields.
        crate::config::LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = Config::load(cli.config.as_deref())?;
    init_tracing(&config.node.log, config.node.log_format);
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run_node(config),
        Command::User(cmd) => user_cmd(&config, cmd),
        Command::Token(cmd) => token_cmd(&config, cmd),
        Command::Log(LogCmd::Verify { user }) => verify(&config, &user),
        Command::Import { user, format, timezone, paths } => {
            import(&config, &user, format.as_deref(), timezone.as_deref(), &paths)
        }
        Command::Export { user, format, out } => export(&config, &user, &format, out.as_deref()),
        Command::Stats(cmd) => stats_cmd(&config, cmd),
        Command::Store(StoreCmd::Compact) => {
            let r = crate::store::compact::compact(
                &config.node.data_dir,
                &crate::store::Options::from(&config.store),
                &config.stats.credit_rules(),
            )?;
            println!(
                "compacted: {} unreferenced track names blanked; {} -> {} bytes",
                r.tracks_blanked, r.bytes_before, r.bytes_after
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Store(StoreCmd::Backup { dir }) => backup(&config, &dir),
        Command::Store(StoreCmd::Recover { dir }) => recover(&config, &dir),
        Command::Store(StoreCmd::Stats) => store_stats(&config),
        #[cfg(feature = "bench")]
        Command::Bench(cmd) => crate::bench::run(&config, cmd),
        Command::Community(cmd) => community::run(&config, cmd),
        Command::Node(NodeCmd::Id) => {
            std::fs::create_dir_all(&config.node.data_dir)?;
            println!("{}", crate::identity::NodeIdentity::load_or_create(&config.node.data_dir)?.peer_id());
            Ok(ExitCode::SUCCESS)
        }
        Command::Peers => community::peers(&config),
        Command::Account(AccountCmd::Export { name, out, with_secret_key }) => {
            let store = open_store(&config)?;
            let u = find_user(&store, &name)?;
            let file = std::fs::File::create(&out).with_context(|| format!("cannot create {}", out.display()))?;
            let n = crate::account::export(&store, u.id, crate::now_unix(), &mut std::io::BufWriter::new(file))?;
            println!("{}: {n} entries of {}'s log", out.display(), u.name);
            if let Some(path) = with_secret_key {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let seed = store.signing_key(u.id)?.to_bytes();
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
                writeln!(
                    f,
                    "# hearsay secret signing key of {}: whoever holds it can sign as them. Keep it secret.",
                    u.name
                )?;
                writeln!(f, "{}", hex::encode(seed))?;
                println!("{}: the private key, readable only by you", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Account(AccountCmd::Import { file, secret_key, name, password_file }) => {
            let seed = crate::account::read_secret_key(
                &std::fs::read_to_string(&secret_key)
                    .with_context(|| format!("cannot read {}", secret_key.display()))?,
            )?;
            let password = read_password(password_file)?;
            let store = open_store(&config)?;
            let ingestor = crate::store::Ingestor::start(
                store.clone(),
                config.store.group_commit_max_listens,
                config.stats.credit_rules(),
            )?;
            let path = file.clone();
            let open = move || -> std::io::Result<Box<dyn std::io::Read>> {
                Ok(Box::new(std::io::BufReader::new(std::fs::File::open(&path)?)))
            };
            let result =
                crate::account::import(&store, &ingestor, &open, seed, name.as_deref(), &password, crate::now_unix());
            ingestor.stop();
            match result {
                Ok((user, v)) => {
                    println!(
                        "{}: imported as {}; {} entries verified here, same chain head",
                        file.display(),
                        user.name,
                        v.n_entries
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    println!("{}: refused: {e}", file.display());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Account(AccountCmd::Verify { file }) => {
            let f = std::fs::File::open(&file).with_context(|| format!("cannot open {}", file.display()))?;
            match crate::account::verify(&mut std::io::BufReader::new(f), |_| {}) {
                Ok((h, v)) => {
                    println!(
                        "{}: {}'s log verifies: {} entries ({} erased), {} seals",
                        file.display(),
                        h.name,
                        v.n_entries,
                        v.n_erased,
                        v.n_seals
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    println!("{}: refused: {e}", file.display());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

fn run_node(config: Config) -> anyhow::Result<ExitCode> {
    let addr = config.http_listen()?;
    config.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot bind {addr}"))?;
        let local = listener.local_addr()?;
        std::fs::create_dir_all(&config.node.data_dir)
            .with_context(|| format!("cannot create {}", config.node.data_dir.display()))?;
        let peer_id = crate::identity::NodeIdentity::load_or_create(&config.node.data_dir)?.peer_id();
        tracing::info!(peer_id, data_dir = %config.node.data_dir.display(), "node started");
        println!("hearsay node listening on http://{local}");
        crate::node::serve(config, listener, shutdown_signal()).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn read_password(file: Option<PathBuf>) -> anyhow::Result<String> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        return Ok(text.lines().next().unwrap_or_default().to_owned());
    }
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to ask for a password: use --password-file");
    }
    let first = rpassword::prompt_password("password: ")?;
    let again = rpassword::prompt_password("again: ")?;
    if first != again {
        bail!("the passwords differ");
    }
    Ok(first)
}

fn find_user(store: &crate::store::Store, name: &str) -> anyhow::Result<crate::store::users::User> {
    store.user_by_name(name)?.with_context(|| format!("no such user: {name}"))
}

fn user_cmd(config: &Config, cmd: UserCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        UserCmd::Add { name, password_file } => {
            let password = read_password(password_file)?;
            let store = open_store(config)?;
            let user = store.create_user(&name, &password, crate::now_unix())?;
            println!("created user {} (id {}, key {})", user.name, user.id.0, hex::encode(user.public_key));
        }
        UserCmd::List => {
            let store = open_store(config)?;
            for u in store.users()? {
                let head = store.log_head(u.id)?;
                println!(
                    "{}\t{}\tlistens={}\tentries={}\tkey={}",
                    u.id.0,
                    u.name,
                    head.n_listens,
                    head.n_entries,
                    hex::encode(u.public_key)
                );
            }
        }
        UserCmd::SetTimezone { name, timezone } => {
            let store = open_store(config)?;
            let user = find_user(&store, &name)?;
            store.set_timezone(user.id, &timezone)?;
            store.rebuild_user_stats(user.id)?;
            println!("{name}'s time zone is now {timezone}; statistics rebuilt");
        }
        UserCmd::SetVisibility { name, level } => {
            let Some(visibility) = crate::store::users::SharingLevel::parse(&level) else {
                bail!("unknown level {level:?}: use private, aggregate or public");
            };
            let store = open_store(config)?;
            let user = find_user(&store, &name)?;
            store.set_visibility(user.id, visibility)?;
            println!("{name} is now {level}");
        }
        UserCmd::SetApiReads { name, state } => {
            let open = match state.as_str() {
                "open" => true,
                "closed" => false,
                other => bail!("unknown state {other:?}: use open or closed"),
            };
            let store = open_store(config)?;
            let user = find_user(&store, &name)?;
            store.set_api_reads_open(user.id, open)?;
            println!("{name}'s API reads are now {state}");
        }
        UserCmd::Delete { name, yes } => {
            if !yes {
                if !std::io::stdin().is_terminal() {
                    bail!("refusing to delete without --yes when there is no terminal to confirm on");
                }
                eprint!("delete user {name} and all their listens? type the name to confirm: ");
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer)?;
                if answer.trim() != name {
                    bail!("not confirmed; nothing deleted");
                }
            }
            let store = open_store(config)?;
            let user = find_user(&store, &name)?;
            let n = store.delete_user(user.id)?;
            println!("deleted user {name}: {n} records removed");
            println!("run `hearsay store compact` to remove the old copies from the database files");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn token_cmd(config: &Config, cmd: TokenCmd) -> anyhow::Result<ExitCode> {
    let store = open_store(config)?;
    match cmd {
        TokenCmd::New { user, name, legacy } => {
            let u = find_user(&store, &user)?;
            let (token, info) = store.create_token(u.id, &name, crate::now_unix(), legacy)?;
            eprintln!("token {} ({}) for {}; shown once, store it now:", info.id, info.name, u.name);
            println!("{token}");
        }
        TokenCmd::List { user } => {
            let u = find_user(&store, &user)?;
            for t in store.tokens(u.id)? {
                println!("{}\t{}\tcreated_at={}", t.id, t.name, t.created_at);
            }
        }
        TokenCmd::Revoke { user, id } => {
            let u = find_user(&store, &user)?;
            if !store.revoke_token(u.id, id)? {
                bail!("{user} has no token {id}");
            }
            println!("revoked token {id} of {user}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(config: &Config, name: &str) -> anyhow::Result<ExitCode> {
    let store = open_store(config)?;
    let user = find_user(&store, name)?;
    let started = std::time::Instant::now();
    match store.verify_log(UserId(user.id.0))? {
        Ok(v) => {
            println!(
                "ok: {} entries ({} erased), {} seals, head {} ({:.2}s)",
                v.n_entries,
                v.n_erased,
                v.n_seals,
                hex::encode(v.head),
                started.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("FAILED: {e}");
            Ok(ExitCode::from(2))
        }
    }
}

fn import(
    config: &Config,
    user: &str,
    format: Option<&str>,
    timezone: Option<&str>,
    paths: &[PathBuf],
) -> anyhow::Result<ExitCode> {
    use crate::import::formats::{Format, Options};
    let forced = match format {
        None => None,
        Some(f) => Some(Format::parse(f).with_context(|| {
            let names: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
            format!("unknown format {f:?}: one of {}", names.join(", "))
        })?),
    };
    let store = open_store(config)?;
    let u = find_user(&store, user)?;
    let tz_name = timezone.map_or_else(|| u.timezone.clone(), str::to_owned);
    let tz = crate::stats::period::time_zone(&tz_name).map_err(|e| anyhow::anyhow!("--timezone: {e}"))?;
    let ingestor = crate::store::Ingestor::start(
        store.clone(),
        config.store.group_commit_max_listens,
        config.stats.credit_rules(),
    )?;
    let options = Options { now: crate::now_unix(), timezone: tz };
    let mut read_anything = false;
    // The share of the file (or zip member) read, on stderr when it is a terminal
    // (indicatif draws nothing otherwise).
    let bar = indicatif::ProgressBar::with_draw_target(Some(0), indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template("[{bar:20}] {percent:>3}% {wide_msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut progress = |name: &str, s: &crate::import::Summary, fraction: crate::import::source::Fraction| {
        if let Some((done, total)) = fraction.filter(|(_, total)| *total > 0) {
            bar.set_length(total);
            bar.set_position(done.min(total));
        }
        bar.set_message(format!("{name}: {} records read, {} bad", s.read, s.bad));
    };
    for path in paths {
        let reports = crate::import::source::import_path(path, forced, &ingestor, u.id, &options, &mut progress)
            .with_context(|| format!("importing {}", path.display()))?;
        bar.finish_and_clear();
        bar.reset();
        for r in reports {
            let Some(format) = r.format else {
                println!("{}: skipped, {}", r.name, r.note.as_deref().unwrap_or("not an export"));
                continue;
            };
            let summary = &r.summary;
            read_anything |= summary.read > summary.bad;
            println!(
                "{} ({}): {} imported, {} duplicates skipped, {} not listens, {} bad records ({:.1} s)",
                r.name,
                format.name(),
                summary.imported,
                summary.duplicates,
                summary.dropped.values().sum::<u64>(),
                summary.bad,
                r.secs
            );
            for (why, n) in &summary.dropped {
                println!("  not a listen: {why}: {n}");
            }
            let unit = if matches!(format, Format::LastfmCsv | Format::Rockbox | Format::ListenBrainzJsonl) {
                "line"
            } else {
                "record"
            };
            for (line, reason) in &summary.bad_examples {
                println!("  {unit} {line}: {reason}");
            }
            if summary.bad > summary.bad_examples.len() as u64 {
                println!("  ... and {} more", summary.bad - summary.bad_examples.len() as u64);
            }
        }
    }
    ingestor.stop();
    Ok(if read_anything { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn export(config: &Config, user: &str, format: &str, out: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let format = crate::export::ExportFormat::parse(format)
        .with_context(|| format!("unknown export format {format:?}: listenbrainz or csv"))?;
    let store = open_store(config)?;
    let u = find_user(&store, user)?;
    let n = match out {
        Some(path) => {
            let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
            crate::export::export(&store, u.id, format, &mut std::io::BufWriter::new(file))?
        }
        None => crate::export::export(&store, u.id, format, &mut std::io::BufWriter::new(std::io::stdout().lock()))?,
    };
    eprintln!("exported {n} listens");
    Ok(ExitCode::SUCCESS)
}

fn stats_cmd(config: &Config, cmd: StatsCmd) -> anyhow::Result<ExitCode> {
    let store = open_store(config)?;
    match cmd {
        StatsCmd::Top { user, kind, period, limit } => {
            let u = find_user(&store, &user)?;
            let kind = chart_kind(&kind)?;
            let period: crate::stats::period::Period = period.parse()?;
            let chart = store.chart(u.id, kind, &period, limit, crate::now_unix())?;
            println!("{} listens, {} distinct, {}..{}", chart.listens, chart.distinct, chart.from, chart.to);
            for (i, row) in chart.rows.iter().enumerate() {
                match &row.artist {
                    Some(a) => println!("{:>3}. {} - {}\t{}", i + 1, a, row.name, row.listens),
                    None => println!("{:>3}. {}\t{}", i + 1, row.name, row.listens),
                }
            }
        }
        StatsCmd::Node { kind, period, limit } => {
            let kind = chart_kind(&kind)?;
            let period: crate::stats::period::Period = period.parse()?;
            let tz = crate::stats::period::time_zone(&config.node.timezone)?;
            let chart = store.node_chart(kind, &period, limit, crate::now_unix(), &tz)?;
            println!(
                "{} listens, {} listeners, {} distinct, {}..{}",
                chart.listens, chart.listeners, chart.distinct, chart.from, chart.to
            );
            for (i, r) in chart.rows.iter().enumerate() {
                match &r.row.artist {
                    Some(a) => println!("{:>3}. {} - {}\t{}\t{}", i + 1, a, r.row.name, r.listeners, r.row.listens),
                    None => println!("{:>3}. {}\t{}\t{}", i + 1, r.row.name, r.listeners, r.row.listens),
                }
            }
        }
        StatsCmd::Rebuild => {
            let started = std::time::Instant::now();
            store.rebuild_stats(&config.stats.credit_rules())?;
            println!("statistics rebuilt in {:.1} s", started.elapsed().as_secs_f64());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn absolute(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    Ok(if dir.is_absolute() { dir.to_owned() } else { std::env::current_dir()?.join(dir) })
}

fn backup(config: &Config, dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let dir = absolute(dir)?;
    match crate::store::Store::open(&config.node.data_dir, &crate::store::Options::from(&config.store)) {
        Ok(store) => {
            crate::store::recover::backup(&store, &dir, &crate::store::Options::from(&config.store))?;
            println!("backed up to {} ({} entries)", dir.display(), store.entries_total()?.0);
            Ok(ExitCode::SUCCESS)
        }
        Err(crate::store::Error::Locked { .. }) => {
            // The node runs: it makes the copy, between two groups of writes.
            let token_file = config.node.data_dir.join(crate::node::CONTROL_TOKEN_FILE);
            let token = std::fs::read_to_string(&token_file).with_context(|| {
                format!("the node runs, and its control token {} cannot be read", token_file.display())
            })?;
            let url = format!("http://{}/control/backup", config.http_listen()?);
            let reply = ureq::post(&url)
                .set("Authorization", &format!("Bearer {}", token.trim()))
                .timeout(std::time::Duration::from_secs(3600))
                .set("Content-Type", "application/json")
                .send_string(&serde_json::json!({"dir": dir}).to_string());
            match reply {
                Ok(r) => {
                    let v: serde_json::Value = serde_json::from_str(&r.into_string()?)?;
                    println!("backed up to {} by the running node ({} entries)", dir.display(), v["entries"]);
                    Ok(ExitCode::SUCCESS)
                }
                Err(ureq::Error::Status(_, r)) => {
                    let v: serde_json::Value =
                        serde_json::from_str(&r.into_string().unwrap_or_default()).unwrap_or_default();
                    bail!("the node refused the backup: {}", v["error"].as_str().unwrap_or("no reason given"))
                }
                Err(e) => bail!("the node runs but does not answer at {url}: {e}"),
            }
        }
        Err(e) => Err(e.into()),
    }
}

fn recover(config: &Config, dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let dir = absolute(dir)?;
    let report =
        crate::store::recover::recover(&config.node.data_dir, &dir, &crate::store::Options::from(&config.store))?;
    println!("recovered into {} (the damaged files were opened {})", dir.display(), report.opened);
    for u in &report.users {
        let lost = u.found.saturating_sub(u.kept);
        match &u.why {
            Some(why) if lost > 0 || u.kept < u.found => {
                println!("  {}: {} of {} entries kept; lost from entry {}: {why}", u.name, u.kept, u.found, u.kept)
            }
            Some(why) => println!("  {}: {} entries kept; the log ends early: {why}", u.name, u.kept),
            None => println!("  {}: {} entries kept", u.name, u.kept),
        }
    }
    for lost in &report.lost_users {
        println!("  not recovered: {lost}");
    }
    let kept = report.kept();
    match report.acknowledged {
        Some(ack) if ack > kept => println!("{kept} entries recovered of {ack} acknowledged: {} lost", ack - kept),
        Some(ack) => println!("{kept} entries recovered of {ack} acknowledged"),
        None => println!("{kept} entries recovered"),
    }
    println!("run the node on the new directory (node.data_dir = {})", dir.display());
    Ok(ExitCode::SUCCESS)
}
