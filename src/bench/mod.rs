//! `hearsay bench ...`: benchmarks that print figures (tests check behaviour, these
//! measure it).
//!
//! `bench ingest` writes N synthetic listens for one user, in batches, through the real
//! ingest path (`Ingestor`, group commit, flush per group) into a fresh store, then
//! prints listens/s, bytes on disk per listen and the process's peak RSS. With `--acks`
//! it prints `acked N` after every acknowledged batch: the crash test kills it at random
//! and checks that every acknowledged listen survived.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Subcommand;

use crate::config::Config;
use crate::log::{Listen, TrackRef};
use crate::store::{self, Action, Ingestor, Outcome, Store};

mod federation;
mod secagg;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// N real nodes (libp2p over 127.0.0.1, one process) in one community: time from
    /// the last node's publication until every node holds the merged chart; bytes
    /// and memory per node.
    Federation {
        #[arg(long, default_value_t = 50)]
        nodes: usize,
        /// Peers each node dials besides node 0.
        #[arg(long, default_value_t = 3)]
        links: usize,
        /// Artists and tracks in each node's snapshot (the public section holds at most 50).
        #[arg(long, default_value_t = 50)]
        items: usize,
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
    /// Secure aggregation (`federation::secagg`): a member's time and bytes per report,
    /// and each aggregator's time to verify and sum a batch over a vocabulary.
    Secagg {
        #[arg(long, default_value_t = 1000)]
        reports: usize,
        /// Items in the vocabulary, half artists, half tracks.
        #[arg(long, default_value_t = 2000)]
        vocabulary: usize,
        #[arg(long, default_value_t = 3)]
        l0: u32,
        /// Member nodes the reports come from.
        #[arg(long, default_value_t = 50)]
        nodes: usize,
    },
    /// The deterministic federation simulator (`federation::sim`): the same intake and
    /// merge code as a node over a virtual clock and network. Prints, per adversary
    /// scenario, convergence time, traffic per node, and how far the attacked
    /// community's top 10 moved against the stated bound.
    Sim {
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        #[arg(long, default_value_t = 10)]
        communities: usize,
        #[arg(long, default_value_t = 4)]
        periods: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// One scenario (honest, lyingmember, sybilflood, backdating, replay,
        /// equivocation, partition, churn); all when omitted.
        #[arg(long)]
        scenario: Option<String>,
        /// Every node takes its linked community's snapshots, not its signed result
        /// (as before community results): for comparison.
        #[arg(long)]
        snapshots: bool,
    },
    /// One public user with N synthetic listens; time the web view's pages over HTTP
    /// on 127.0.0.1 (server time plus a loopback round trip).
    Web {
        #[arg(long, default_value_t = 1_000_000)]
        listens: u64,
        #[arg(long, default_value_t = 30)]
        requests: usize,
    },
    /// Start a node on 127.0.0.1 in this process and load it with single-listen
    /// ListenBrainz submissions from concurrent keep-alive connections; print the rate
    /// of acknowledged (durable) listens and the latency percentiles.
    Http {
        #[arg(long, default_value_t = 32)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Log-ins over HTTP (web form and Last.fm `auth.getMobileSession`, half each) from
    /// concurrent clients; print the node's resident memory before and after, and the
    /// rate (every log-in is an argon2 check).
    Logins {
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        #[arg(long, default_value_t = 8)]
        clients: u64,
    },
    /// Many public users on one node: time the home page over HTTP (this week's node
    /// chart of public profiles and the newest public listens).
    Home {
        #[arg(long, default_value_t = 1000)]
        users: u64,
        #[arg(long, default_value_t = 1000)]
        listens_per_user: u64,
        #[arg(long, default_value_t = 30)]
        requests: usize,
    },
    /// A node for a whole community (issue 17's figures): N public users × M listens,
    /// built once into `--dir` (reused when it holds a finished build, so later runs time
    /// reads only), then every figure printed: the accounts' creation, the import's time
    /// and rate (`--importers` users importing at once, as members do when a node opens),
    /// per-user import times early and late, the writer's time by phase, the process's
    /// CPU time during the import and its shares, bytes per listen on disk, RSS at rest and
    /// peak, and p50/p99 of
    /// the home page, profiles, node charts (this week, all time), history and similar
    /// users (warm) over HTTP, and a per-user visibility change.
    Community {
        #[arg(long, default_value_t = 10_000)]
        users: u64,
        #[arg(long, default_value_t = 1000)]
        listens_per_user: u64,
        #[arg(long, default_value_t = 30)]
        requests: usize,
        /// Where the node is built and kept (a temporary directory, removed, when omitted).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        /// Members importing their histories at once while the node is built.
        #[arg(long, default_value_t = 8)]
        importers: usize,
        /// Artists in the catalogue the members draw theirs from (200–500 each, the
        /// popular ones most often).
        #[arg(long, default_value_t = 100_000)]
        catalogue: u64,
    },
    /// Many users on one node: time "similar users" (cold: taste vectors computed;
    /// warm: cached) and the node chart.
    Neighbours {
        #[arg(long, default_value_t = 1000)]
        users: u64,
        #[arg(long, default_value_t = 1000)]
        listens_per_user: u64,
        #[arg(long, default_value_t = 50)]
        queries: usize,
        /// Artists in the catalogue the users draw theirs from (200–500 each, the
        /// popular ones most often), as in `community`.
        #[arg(long, default_value_t = 100_000)]
        catalogue: u64,
    },
    /// Build one user's history (synthetic or a ListenBrainz JSONL file), reopen the
    /// store cold, and time chart, series and clock queries over random periods.
    Stats {
        /// Number of synthetic listens (ignored with --jsonl).
        #[arg(long, default_value_t = 1_000_000)]
        listens: u64,
        /// Import this ListenBrainz JSONL file instead (e.g. the fixture generator's).
        #[arg(long)]
        jsonl: Option<PathBuf>,
        /// Artists in the synthetic catalogue.
        #[arg(long, default_value_t = 1000)]
        artists: usize,
        /// Queries of each kind.
        #[arg(long, default_value_t = 300)]
        queries: usize,
    },
    /// Ingest synthetic listens into a fresh store and print throughput, disk and memory.
    Ingest {
        /// Number of listens.
        #[arg(long, default_value_t = 1_000_000)]
        listens: u64,
        /// Listens per batch.
        #[arg(long, default_value_t = 1000)]
        batch: u64,
        /// Concurrent submitters (each its own user), to exercise group commit.
        #[arg(long, default_value_t = 1)]
        clients: u64,
        /// Artists in the synthetic catalogue (about 48 distinct tracks each).
        #[arg(long, default_value_t = 3000)]
        artists: usize,
        /// Seed of the synthetic history (different seeds give different listens).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Store directory (default: a fresh temporary one, removed afterwards).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print `acked N` after each acknowledged batch.
        #[arg(long)]
        acks: bool,
        /// Also verify every log at the end and time it.
        #[arg(long)]
        verify: bool,
    },
}

/// A deterministic generator of plausible listens: a catalogue of artists, albums and
/// tracks with realistic name lengths, played with a skewed (Zipf-like) popularity,
/// about five minutes apart, from 2015 on.
pub struct Synthetic {
    state: u64,
    at: i64,
    artists: Vec<String>,
    /// Each artist's number in the catalogue its albums and titles derive from.
    numbers: Vec<u64>,
    words: Vec<&'static str>,
}

const WORDS: &[&str] = &[
    "love", "night", "heart", "dream", "fire", "blue", "light", "rain", "city", "song", "dance", "time", "summer",
    "shadow", "river", "golden", "wild", "electric", "silver", "ghost", "ocean", "stars", "glass", "paper", "echo",
    "velvet", "midnight", "sugar", "stone", "thunder", "winter", "crystal", "moon", "garden", "neon", "road",
];

impl Synthetic {
    pub fn new(seed: u64, n_artists: usize) -> Synthetic {
        let mut s = Synthetic::empty(seed);
        for i in 0..n_artists {
            let name = format!("{} {} {}", s.word().to_uppercase(), s.word(), i);
            s.artists.push(name);
            s.numbers.push(i as u64);
        }
        s
    }

    /// A member of a community: `n_artists` artists drawn from a catalogue of
    /// `catalogue` shared by every member, the popular ones most often (so members
    /// overlap as listeners do), with a history that starts on a day of 2015–2024 chosen
    /// by the seed. (`new` gives every seed artists of its own: items then grow with
    /// members, which no community's listening does.)
    pub fn member(seed: u64, n_artists: usize, catalogue: u64) -> Synthetic {
        let mut s = Synthetic::empty(seed);
        s.at += (s.next() % 3_650) as i64 * 86_400;
        let mut chosen = std::collections::BTreeSet::new();
        while chosen.len() < n_artists.min(usize::try_from(catalogue).unwrap_or(usize::MAX)) {
            chosen.insert(s.skewed(catalogue.max(1)));
        }
        for g in chosen {
            // The name is the catalogue's: the same artist for every member.
            let mix = g.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let n = WORDS.len() as u64;
            s.artists.push(format!(
                "{} {} {g}",
                WORDS[(mix % n) as usize].to_uppercase(),
                WORDS[((mix >> 17) % n) as usize]
            ));
            s.numbers.push(g);
        }
        s
    }

    /// No artists yet; listens from 2015-01-01.
    fn empty(seed: u64) -> Synthetic {
        Synthetic {
            state: seed ^ 0x9E37_79B9_7F4A_7C15,
            at: 1_420_070_400,
            artists: Vec::new(),
            numbers: Vec::new(),
            words: WORDS.to_vec(),
        }
    }

    fn next(&mut self) -> u64 {
        // splitmix64
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn word(&mut self) -> &'static str {
        let i = (self.next() % self.words.len() as u64) as usize;
        self.words[i]
    }

    /// Skewed pick in `0..n`: squares a uniform draw, so low indexes are popular.
    fn skewed(&mut self, n: u64) -> u64 {
        let u = (self.next() % 1_000_000) as f64 / 1_000_000.0;
        ((u * u * u) * n as f64) as u64 % n.max(1)
    }

    pub fn listen(&mut self) -> Listen {
        let a = self.skewed(self.artists.len() as u64);
        let g = self.numbers[a as usize];
        let album_no = self.skewed(6);
        let track_no = self.skewed(12);
        // Names derive from the indexes so the same track repeats exactly.
        let w = |k: u64| WORDS[(k % WORDS.len() as u64) as usize];
        let title =
            format!("{} {} {}", w(g * 7 + album_no * 13 + track_no), w(g + track_no * 5), w(track_no * 3 + album_no));
        let album = format!("{} {}", w(g * 3 + album_no), w(g + album_no * 11));
        self.at += 120 + (self.next() % 360) as i64;
        let track = TrackRef {
            artist: self.artists[a as usize].clone(),
            artist_names: vec![],
            artist_mbids: vec![],
            title,
            album: Some(album),
            recording_mbid: None,
            release_mbid: None,
        };
        let duration = Some(150_000 + (track_no as u32) * 7_000);
        // Names from the word list are valid by construction; the constructor checks.
        Listen::from_parts(track, self.at, duration, Some("hearsay-bench".into()))
            .unwrap_or_else(|e| unreachable!("a synthetic listen is valid: {e}"))
    }
}

use crate::store::compact::dir_bytes;

/// A line of this process's `/proc/self/status` in KiB (`VmHWM`: peak resident set
/// size; `VmRSS`: resident now). 0 where the file is missing (not Linux).
fn status_kib(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Peak resident set size of this process in KiB.
fn peak_rss_kib() -> u64 {
    status_kib("VmHWM")
}

/// Resident set size of this process now, in KiB.
fn rss_kib() -> u64 {
    status_kib("VmRSS")
}

/// What the kernel's scheduler counted for one thread (`/proc/<pid>/task/<tid>/schedstat`):
/// nanoseconds on a core, nanoseconds runnable but waiting for one, and times it was
/// switched onto a core.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SchedTimes {
    on_core_ns: u64,
    waiting_ns: u64,
    switches: u64,
}

/// The CPU time, in seconds, of every thread this process has run, those that ended
/// included (`getrusage`: user and system time); `None` where it cannot be read, or
/// off Linux with glibc (where the build has no `libc`).
fn process_cpu_secs() -> Option<f64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: `getrusage` fills the one `rusage` it is given a pointer to; the pointer
        // is to memory of ours, sized and aligned for a `rusage` by `MaybeUninit`, and it
        // has no other precondition. `RUSAGE_SELF` is a valid `who`.
        #[allow(unsafe_code)]
        let filled = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } == 0;
        if !filled {
            return None;
        }
        // SAFETY: zeroed is a valid `rusage` (integers and `timeval`s of integers), and
        // `getrusage` returned 0, having written all of it.
        #[allow(unsafe_code)]
        let usage = unsafe { usage.assume_init() };
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Some(secs(usage.ru_utime) + secs(usage.ru_stime))
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

impl SchedTimes {
    /// The three numbers of a `schedstat` line; `None` if it has fewer or any is not one.
    fn parse(line: &str) -> Option<SchedTimes> {
        let mut n = line.split_whitespace().map(str::parse::<u64>);
        Some(SchedTimes { on_core_ns: n.next()?.ok()?, waiting_ns: n.next()?.ok()?, switches: n.next()?.ok()? })
    }

    /// The scheduler's counts of this process's thread called `name` (the first found;
    /// the kernel keeps 15 bytes of a name), `None` where there is none or no `/proc`
    /// (not Linux).
    fn of_thread(name: &str) -> Option<SchedTimes> {
        std::fs::read_dir("/proc/self/task").ok()?.flatten().find_map(|task| {
            let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
            if comm.trim_end() != name {
                return None;
            }
            SchedTimes::parse(&std::fs::read_to_string(task.path().join("schedstat")).ok()?)
        })
    }

    /// Where one thread's `wall` seconds between two counts went: on a core, waiting
    /// for one (preempted, or woken and not yet run), and the rest blocked (locks,
    /// channels, the disk).
    fn describe(before: SchedTimes, after: SchedTimes, wall: f64) -> String {
        let s = |a: u64, b: u64| a.saturating_sub(b) as f64 / 1e9;
        let on = s(after.on_core_ns, before.on_core_ns);
        let waiting = s(after.waiting_ns, before.waiting_ns);
        format!(
            "on a core {on:.1} s, waiting for one {waiting:.1} s, blocked {:.1} s, {} switches",
            (wall - on - waiting).max(0.0),
            after.switches.saturating_sub(before.switches)
        )
    }
}

/// Names of the ingest's threads (as `store::writer` names them; the kernel keeps 15
/// bytes of a name).
const WRITER_THREAD: &str = "hearsay-writer";
const COMMIT_THREAD: &str = "hearsay-commit";
const ABSORB_THREAD: &str = "hearsay-absorb";

/// The counts of the writer (`writer`, taken by the caller), the committing thread and
/// the thread adding node changes, in `describe_cpu`'s order.
fn ingest_threads(writer: Option<SchedTimes>) -> [Option<SchedTimes>; 3] {
    [writer, SchedTimes::of_thread(COMMIT_THREAD), SchedTimes::of_thread(ABSORB_THREAD)]
}

/// The process's CPU time over an import's `secs` seconds until its last listens were
/// acknowledged (before the writer's final store), and the shares of the writer, the
/// committing thread and the thread adding node changes over the same span (a thread
/// not found when the import began was started during it and counts its whole time:
/// the writer thread starts its committing thread as it starts, which the first count,
/// taken once the writer thread is there, can miss; one gone at the end counts nothing;
/// the rest is the node-store passes, the importers and sled's threads). On this 2-core
/// machine the import has taken about three quarters of the process's CPU time in every
/// run a profiler did not slow, while the CPU time of the same import varied by a third
/// with the machine (docs/ARCHITECTURE.md, 2026-12-06): builds compare by their CPU
/// time's shares, which the machine's speed moves together.
fn describe_cpu(secs: f64, cpu: f64, before: &[Option<SchedTimes>; 3], after: &[Option<SchedTimes>; 3]) -> String {
    let of = |i: usize| match (&before[i], &after[i]) {
        (Some(b), Some(a)) => a.on_core_ns.saturating_sub(b.on_core_ns) as f64 / 1e9,
        (None, Some(a)) => a.on_core_ns as f64 / 1e9,
        (_, None) => 0.0,
    };
    let (writer, commit, absorb) = (of(0), of(1), of(2));
    let share = |t: f64| if cpu > 0.0 { 100.0 * t / cpu } else { 0.0 };
    let rest = (cpu - writer - commit - absorb).max(0.0);
    format!(
        "the process's CPU time until the import was acknowledged ({secs:.1} s): {cpu:.1} s, that time {:.2} times it; the writer {writer:.1} s ({:.0}%), the committing thread {commit:.1} s ({:.0}%), the thread adding node changes {absorb:.1} s ({:.0}%), the rest (node-store passes, importers, sled) {rest:.1} s ({:.0}%)",
        if cpu > 0.0 { secs / cpu } else { 0.0 },
        share(writer),
        share(commit),
        share(absorb),
        share(rest)
    )
}

fn sim(
    nodes: usize,
    communities: usize,
    periods: u32,
    seed: u64,
    only: Option<&str>,
    snapshots: bool,
) -> anyhow::Result<std::process::ExitCode> {
    use crate::federation::sim::{Config, Scenario, run};
    anyhow::ensure!(communities >= 2 && nodes >= communities * 4, "at least 2 communities of 4 nodes");
    let scenarios: Vec<Scenario> =
        Scenario::ALL.into_iter().filter(|s| only.is_none_or(|o| format!("{s:?}").eq_ignore_ascii_case(o))).collect();
    anyhow::ensure!(!scenarios.is_empty(), "unknown scenario {only:?}");
    println!(
        "simulator: {nodes} honest nodes, {communities} communities (each linked to the next; the last open), {periods} weekly periods, seed {seed}; linked communities as {}",
        if snapshots { "their members' snapshots" } else { "signed results" }
    );
    for scenario in scenarios {
        let started = std::time::Instant::now();
        let cfg = Config { nodes, communities, periods, seed, scenario, results: !snapshots, ..Config::default() };
        let r = run(&cfg);
        let secs = |v: &[Option<u64>]| -> String {
            v.iter()
                .map(|c| c.map_or_else(|| "never".to_owned(), |ms| format!("{:.1} s", ms as f64 / 1000.0)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!("== {} ({} nodes, {:.1} s wall)", r.scenario, r.nodes, started.elapsed().as_secs_f64());
        println!(
            "  convergence per period (last honest release -> every honest node holds all): {}; incomplete nodes {:?}",
            secs(&r.convergence_ms),
            r.incomplete
        );
        if !snapshots {
            println!(
                "  community results per period (last published -> every honest node holds its linked community's): {}",
                secs(&r.results_convergence_ms)
            );
        }
        println!(
            "  per honest node and period: {:.0} messages, {:.1} KiB (gossip + catch-up, sent + received)",
            r.messages_per_node,
            r.bytes_per_node / 1024.0
        );
        println!(
            "  snapshots: {} accepted, {} ignored, {} rejected, {} kept as evidence; honest relays penalised: {}; adversary snapshots stored: {}",
            r.accepted, r.ignored, r.rejected, r.evidence, r.honest_penalised, r.adversary_stored
        );
        println!(
            "  attacked community top 10: moved {:?} (entries the hostile origins could outbid, by the merge's bounds: {:?}); fake artists in it: {:?}; all its honest members agree: {:?}",
            r.top10_moved, r.top10_bound, r.fake_in_top10, r.agree
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// A fresh temporary directory for one benchmark, removed when dropped.
fn temp_dir(what: &str) -> anyhow::Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new().prefix(&format!("hearsay-bench-{what}-")).tempdir()?)
}

pub fn run(config: &Config, cmd: BenchCmd) -> anyhow::Result<std::process::ExitCode> {
    let cmd = match cmd {
        BenchCmd::Stats { listens, jsonl, artists, queries } => return stats(config, listens, jsonl, artists, queries),
        BenchCmd::Federation { nodes, links, items, timeout_secs } => {
            return federation::run(nodes, links, items, timeout_secs);
        }
        BenchCmd::Sim { nodes, communities, periods, seed, scenario, snapshots } => {
            return sim(nodes, communities, periods, seed, scenario.as_deref(), snapshots);
        }
        BenchCmd::Secagg { reports, vocabulary, l0, nodes } => return secagg::run(reports, vocabulary, l0, nodes),
        BenchCmd::Http { connections, seconds } => return http(config, connections, seconds),
        BenchCmd::Web { listens, requests } => return web(config, listens, requests),
        BenchCmd::Logins { count, clients } => return logins(config, count, clients),
        BenchCmd::Home { users, listens_per_user, requests } => {
            return home(config, users, listens_per_user, requests);
        }
        BenchCmd::Community { users, listens_per_user, requests, dir, importers, catalogue } => {
            return community(config, users, listens_per_user, requests, dir, (importers, catalogue));
        }
        BenchCmd::Neighbours { users, listens_per_user, queries, catalogue } => {
            return neighbours(config, users, listens_per_user, queries, catalogue);
        }
        other => other,
    };
    let BenchCmd::Ingest { listens, batch, clients, artists, seed, dir, acks, verify } = cmd else {
        return Ok(std::process::ExitCode::FAILURE);
    };
    let temporary = match dir {
        Some(_) => None,
        None => Some(temp_dir("ingest")?),
    };
    let dir = dir.unwrap_or_else(|| temporary.as_ref().map(|t| t.path().to_owned()).unwrap_or_default());
    let store = Store::open(&dir, &store::Options::from(&config.store))?;
    let ingestor = Ingestor::start(store.clone(), config.store.group_commit_max_listens, config.stats.credit_rules())?;
    let clients = clients.max(1);
    let mut users = Vec::new();
    for c in 0..clients {
        let name = format!("bench{c}");
        let user = match store.user_by_name(&name)? {
            Some(u) => u,
            None => store.create_user(&name, "bench-password", crate::now_unix())?,
        };
        users.push(user.id);
    }
    let per_client = listens / clients;
    let batch = batch.max(1);
    let acked = std::sync::atomic::AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let mut handles = Vec::new();
        for (c, user) in users.iter().enumerate() {
            let ingestor = ingestor.clone();
            let acked = &acked;
            handles.push(scope.spawn(move || -> anyhow::Result<()> {
                let mut synthetic = Synthetic::new(seed.wrapping_mul(1000).wrapping_add(c as u64), artists.max(1));
                let mut done = 0;
                while done < per_client {
                    let n = batch.min(per_client - done);
                    let actions = (0..n).map(|_| Action::Listen(synthetic.listen())).collect();
                    let outcomes = ingestor.ingest_blocking(*user, actions)?;
                    let appended = outcomes.iter().filter(|o| matches!(o, Outcome::Appended { .. })).count() as u64;
                    let total = acked.fetch_add(appended, std::sync::atomic::Ordering::SeqCst) + appended;
                    if acks {
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "acked {total}")?;
                        out.flush()?;
                    }
                    done += n;
                }
                Ok(())
            }));
        }
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("a bench client panicked"))??;
        }
        Ok(())
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    ingestor.stop();
    store.flush()?;
    let n = acked.load(std::sync::atomic::Ordering::SeqCst);
    let bytes = dir_bytes(&dir);
    println!(
        "ingest: {n} listens in {elapsed:.2} s = {:.0} listens/s (batches of {batch}, {clients} client(s))",
        n as f64 / elapsed
    );
    println!(
        "disk: {bytes} bytes = {:.1} bytes/listen (sled files, including indexes and interned names)",
        bytes as f64 / n.max(1) as f64
    );
    for (name, items, logical) in store.tree_stats()? {
        if items > 0 {
            println!(
                "  tree {name}: {items} items, {logical} bytes of keys and values ({:.1} bytes/listen)",
                logical as f64 / n.max(1) as f64
            );
        }
    }
    println!("peak RSS: {:.1} MiB", peak_rss_kib() as f64 / 1024.0);
    if verify {
        for user in &users {
            let t = Instant::now();
            let v = store.verify_log(*user)?.context("verification failed")?;
            println!("verify: {} entries, {} seals in {:.2} s", v.n_entries, v.n_seals, t.elapsed().as_secs_f64());
        }
    }
    drop(store);
    drop(temporary);
    Ok(std::process::ExitCode::SUCCESS)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(name: &str, mut millis: Vec<f64>) {
    millis.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{name:<44} n={:<4} p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms",
        millis.len(),
        percentile(&millis, 0.5),
        percentile(&millis, 0.99),
        millis.last().copied().unwrap_or(0.0)
    );
}

fn stats(
    config: &Config,
    listens: u64,
    jsonl: Option<PathBuf>,
    artists: usize,
    queries: usize,
) -> anyhow::Result<std::process::ExitCode> {
    use crate::stats::chart::Kind;
    use crate::stats::period::Period;
    use crate::store::aggregates::Step;
    use crate::store::logs::Order;

    let temporary = temp_dir("stats")?;
    let dir = temporary.path().to_owned();
    let options = store::Options::from(&config.store);
    let store = Store::open(&dir, &options)?;
    let user = store.create_user("bench0", "bench-password", crate::now_unix())?.id;
    let ingestor = Ingestor::start(store.clone(), config.store.group_commit_max_listens, config.stats.credit_rules())?;
    let started = Instant::now();
    let n = match &jsonl {
        Some(path) => {
            let file = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
            crate::import::import_jsonl(file, &ingestor, user, crate::now_unix(), |_| {})?.imported
        }
        None => {
            let mut synthetic = Synthetic::new(1, artists.max(1));
            let mut done = 0;
            while done < listens {
                let k = 1000.min(listens - done);
                ingestor.ingest_blocking(user, (0..k).map(|_| Action::Listen(synthetic.listen())).collect())?;
                done += k;
            }
            done
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    ingestor.stop();
    println!("ingest with statistics: {n} listens in {elapsed:.2} s = {:.0} listens/s", n as f64 / elapsed);
    let stats_trees = [
        crate::store::schema::ITEMCHUNK_ITEMS,
        crate::store::schema::TRACKCHUNK_CREDITS,
        crate::store::schema::USERID_BUCKET_COUNTS,
    ];
    let mut logical = 0;
    for (name, items, bytes) in store.tree_stats()? {
        if stats_trees.contains(&name) {
            logical += bytes;
            println!("  tree {name}: {items} items, {:.1} bytes/listen", bytes as f64 / n.max(1) as f64);
        }
    }
    store.flush()?;
    println!(
        "aggregates: {:.1} logical bytes/listen; whole database {:.1} bytes/listen on disk",
        logical as f64 / n.max(1) as f64,
        dir_bytes(&dir) as f64 / n.max(1) as f64
    );
    drop(store);

    // Reopen cold, as after a restart.
    let store = Store::open(&dir, &options)?;
    let first = store.listens(user, 0, i64::MAX, 1, Order::OldestFirst)?.first().map_or(0, |l| l.listen.listened_at());
    let last = store.listens(user, 0, i64::MAX, 1, Order::NewestFirst)?.first().map_or(0, |l| l.listen.listened_at());
    let now = last + 86_400;
    println!("history: {:.1} years; queries as of a day after the last listen", (last - first) as f64 / 31_557_600.0);
    let mut rng = Synthetic::new(7, 1);
    let mut pick = |n: u64| rng.next() % n.max(1);
    let time = |f: &mut dyn FnMut() -> crate::store::Result<()>| -> anyhow::Result<f64> {
        let t = Instant::now();
        f()?;
        Ok(t.elapsed().as_secs_f64() * 1000.0)
    };
    let utc = jiff::tz::TimeZone::UTC;
    let first_year = crate::stats::period::local_date(first, &utc).year();
    let years = (crate::stats::period::local_date(last, &utc).year() - first_year + 1) as u64;
    let rolling = [
        Period::LastDays(7),
        Period::LastMonths(1),
        Period::LastMonths(3),
        Period::LastMonths(6),
        Period::LastMonths(12),
        Period::AllTime,
    ];
    let mut groups: Vec<(&str, Vec<f64>)> = Vec::new();
    for (name, make) in [
        ("top-50, rolling (7d/1m/3m/6m/12m/all)", 0),
        ("top-50, calendar (ISO week/month/year)", 1),
        ("top-50, random [from, to) range", 2),
        ("top-50, all time", 3),
    ] {
        let mut times = Vec::with_capacity(queries);
        for _ in 0..queries {
            let kind = Kind::ALL[pick(3) as usize];
            let period = match make {
                0 => rolling[pick(6) as usize].clone(),
                1 => {
                    let year = first_year + pick(years) as i16;
                    match pick(3) {
                        0 => Period::IsoWeek { year, week: 1 + pick(52) as i8 },
                        1 => Period::Month { year, month: 1 + pick(12) as i8 },
                        _ => Period::Year(year),
                    }
                }
                2 => {
                    let from = first + pick((last - first).max(1) as u64) as i64;
                    let len = 3600 + pick((last - from).max(3601) as u64) as i64;
                    Period::Range { from, to: from + len }
                }
                _ => Period::AllTime,
            };
            times.push(time(&mut || store.chart(user, kind, &period, 50, now).map(|_| ()))?);
        }
        groups.push((name, times));
    }
    let mut series = Vec::new();
    let mut clock = Vec::new();
    for _ in 0..queries.min(100) {
        series.push(time(&mut || store.listens_series(user, &Period::AllTime, Step::Week, now).map(|_| ()))?);
        clock.push(time(&mut || store.clock(user, &Period::AllTime, now).map(|_| ()))?);
    }
    groups.push(("listens per week, whole history", series));
    groups.push(("listening clock, whole history", clock));
    for (name, times) in groups {
        report(name, times);
    }
    println!("peak RSS: {:.1} MiB", peak_rss_kib() as f64 / 1024.0);
    drop(store);
    drop(temporary);
    Ok(std::process::ExitCode::SUCCESS)
}

fn neighbours(
    config: &Config,
    n_users: u64,
    per_user: u64,
    queries: usize,
    catalogue: u64,
) -> anyhow::Result<std::process::ExitCode> {
    let temporary = temp_dir("neighbours")?;
    let dir = temporary.path().to_owned();
    let store = Store::open(&dir, &store::Options::from(&config.store))?;
    let ingestor = Ingestor::start(store.clone(), config.store.group_commit_max_listens, config.stats.credit_rules())?;
    let started = Instant::now();
    let mut ids = Vec::new();
    for u in 0..n_users {
        let id = store.create_user(&format!("user{u}"), "bench-password", crate::now_unix())?.id;
        // Only public users are anyone's neighbours (`policy::Purpose::Similarity`).
        ingestor.set_visibility_blocking(id, crate::store::users::SharingLevel::Public)?;
        // Every user draws from one shared catalogue, the popular artists most often,
        // so tastes overlap as listeners' do. (`Synthetic::new` names its artists from
        // its seed: users shared none, and every list of neighbours came out empty.)
        let mut synthetic = Synthetic::member(u + 1, 200 + (u as usize % 7) * 50, catalogue);
        let actions = (0..per_user).map(|_| Action::Listen(synthetic.listen())).collect();
        ingestor.ingest_blocking(id, actions)?;
        ids.push(id);
    }
    ingestor.stop();
    println!("{n_users} users x {per_user} listens set up in {:.1} s", started.elapsed().as_secs_f64());
    let t = Instant::now();
    let first = store.neighbours(ids[0], 20)?;
    println!(
        "similar users, cold (taste vectors of all {n_users} users computed): {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let mut warm = Vec::new();
    for q in 0..queries {
        let t = Instant::now();
        store.neighbours(ids[q % ids.len()], 20)?;
        warm.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    report("similar users among all, warm (each list computed, tastes kept)", warm);
    println!(
        "  e.g. user0's nearest: {:?}",
        first.iter().take(3).map(|n| (n.user.name.clone(), n.similarity)).collect::<Vec<_>>()
    );
    let mut charts = Vec::new();
    for _ in 0..queries.min(10) {
        let t = Instant::now();
        store.node_chart(
            crate::stats::chart::Kind::Artist,
            &crate::stats::period::Period::AllTime,
            50,
            crate::now_unix(),
            &jiff::tz::TimeZone::UTC,
        )?;
        charts.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    report("node chart, top-50 artists, all time", charts);
    drop(store);
    drop(temporary);
    Ok(std::process::ExitCode::SUCCESS)
}

/// The writer's time per `Phase` from `before` to `after`, as `bench community` prints
/// it: its groups, what of them went where, and its wait for batches.
fn describe_phases(before: &crate::store::IngestStats, after: &crate::store::IngestStats) -> String {
    use crate::store::Phase;
    let secs = |p: Phase| after.phase(p).saturating_sub(before.phase(p)).as_secs_f64();
    let parts = [Phase::Preparing, Phase::Writing, Phase::NodeChanges, Phase::NodePass];
    let rest = secs(Phase::Groups) - parts.iter().map(|p| secs(*p)).sum::<f64>();
    format!(
        "groups {:.1} s (preparing listens {:.1} s, waiting for their writes {:.1} s, for the node changes' thread {:.1} s and for node-store passes {:.1} s, the rest {:.1} s), waiting for batches {:.1} s; the groups' writes (beside the writer) took sled transactions {:.1} s and flushes {:.1} s",
        secs(Phase::Groups),
        secs(Phase::Preparing),
        secs(Phase::Writing),
        secs(Phase::NodeChanges),
        secs(Phase::NodePass),
        rest.max(0.0),
        secs(Phase::Waiting),
        secs(Phase::Transaction),
        secs(Phase::Flush),
    )
}

/// The marker of a finished `bench community` build: users × listens per user.
const COMMUNITY_BUILT: &str = "bench-community-built";

fn community(
    config: &Config,
    n_users: u64,
    per_user: u64,
    requests: usize,
    dir: Option<std::path::PathBuf>,
    (importers, catalogue): (usize, u64),
) -> anyhow::Result<std::process::ExitCode> {
    anyhow::ensure!(n_users >= 1 && per_user >= 1, "at least one user and one listen");
    anyhow::ensure!((1..=256).contains(&importers), "between 1 and 256 importers");
    let temporary = match &dir {
        Some(_) => None,
        None => Some(temp_dir("community")?),
    };
    let path = match (&dir, &temporary) {
        (Some(d), _) => d.clone(),
        (None, Some(t)) => t.path().to_owned(),
        (None, None) => anyhow::bail!("no directory"),
    };
    let want = format!("{n_users} x {per_user}, catalogue {catalogue}");
    let built = std::fs::read_to_string(path.join(COMMUNITY_BUILT)).ok();
    if built.as_deref() == Some(want.as_str()) {
        println!("reusing the node built in {} ({want})", path.display());
    } else {
        anyhow::ensure!(
            built.is_none() && std::fs::read_dir(&path).map_or(true, |mut d| d.next().is_none()),
            "{} holds something else: give an empty or new directory",
            path.display()
        );
        std::fs::create_dir_all(&path)?;
        let started = Instant::now();
        let store = Store::open(&path, &store::Options::from(&config.store))?;
        // The accounts first, timed apart: each costs an argon2id hash of its password
        // (by design) and a key pair, and members join a node over weeks, not while it
        // imports. Public from the start, so every import moves the node statistics.
        let ids = std::sync::Mutex::new(Vec::with_capacity(usize::try_from(n_users)?));
        let next = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| -> anyhow::Result<()> {
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| -> anyhow::Result<()> {
                        loop {
                            let u = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if u >= n_users {
                                return Ok(());
                            }
                            let id = store.create_user(&format!("user{u}"), "bench-password", crate::now_unix())?.id;
                            store.set_visibility(id, crate::store::users::SharingLevel::Public)?;
                            ids.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push((u, id));
                        }
                    })
                })
                .collect();
            for w in workers {
                w.join().map_err(|_| anyhow::anyhow!("an account thread panicked"))??;
            }
            Ok(())
        })?;
        let mut ids = ids.into_inner().map_err(|_| anyhow::anyhow!("poisoned"))?;
        ids.sort_unstable();
        println!(
            "accounts: {n_users} created in {:.1} s (two threads; argon2id per password)",
            started.elapsed().as_secs_f64()
        );
        let ingestor =
            Ingestor::start(store.clone(), config.store.group_commit_max_listens, config.stats.credit_rules())?;
        // A new thread takes its name when it first runs: look for the writer a while
        // (before the clock starts: it has nothing to do until the first member's listens).
        let writer_before = (0..200).find_map(|_| {
            SchedTimes::of_thread(WRITER_THREAD).or_else(|| {
                std::thread::sleep(std::time::Duration::from_millis(10));
                None
            })
        });
        let phases_before = ingestor.stats();
        // The writer's count taken above; the committing thread and the one adding node
        // changes started before it.
        let threads_before = ingest_threads(writer_before);
        let cpu_before = process_cpu_secs();
        let started = Instant::now();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let times = std::sync::Mutex::new(vec![0.0f64; ids.len()]);
        let tick = std::sync::Mutex::new(Instant::now());
        std::thread::scope(|s| -> anyhow::Result<()> {
            let workers: Vec<_> = (0..importers)
                .map(|_| {
                    s.spawn(|| -> anyhow::Result<()> {
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(&(u, id)) = ids.get(i) else { return Ok(()) };
                            let mut synthetic = Synthetic::member(u + 1, 200 + (u as usize % 7) * 50, catalogue);
                            let actions = (0..per_user).map(|_| Action::Listen(synthetic.listen())).collect();
                            let t = Instant::now();
                            ingestor.ingest_blocking(id, actions)?;
                            let ms = t.elapsed().as_secs_f64() * 1000.0;
                            times.lock().map_err(|_| anyhow::anyhow!("poisoned"))?[i] = ms;
                            let mut last = tick.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                            if last.elapsed().as_secs() >= 30 {
                                *last = Instant::now();
                                println!("  … {} users imported, {:.0} s", i + 1, started.elapsed().as_secs_f64());
                            }
                        }
                    })
                })
                .collect();
            for w in workers {
                w.join().map_err(|_| anyhow::anyhow!("an import thread panicked"))??;
            }
            Ok(())
        })?;
        // Every member's listens are acknowledged: counted before `stop` ends the writer.
        let writer_after = SchedTimes::of_thread(WRITER_THREAD);
        let threads_after = ingest_threads(writer_after);
        let cpu = cpu_before.zip(process_cpu_secs()).map(|(b, a)| a - b);
        let phases = ingestor.stats();
        let wall = started.elapsed().as_secs_f64();
        ingestor.stop();
        store.flush()?;
        drop(store);
        let secs = started.elapsed().as_secs_f64();
        let before = status_kib("VmRSS");
        crate::memory::give_back();
        println!(
            "RSS after the import, its store closed: {:.0} MiB, {:.0} MiB after giving freed memory back; the import's peak {:.0} MiB",
            before as f64 / 1024.0,
            status_kib("VmRSS") as f64 / 1024.0,
            peak_rss_kib() as f64 / 1024.0
        );
        let total = n_users * per_user;
        let times = times.into_inner().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let tenth = (times.len() / 10).max(1);
        let mean = |t: &[f64]| t.iter().sum::<f64>() / t.len().max(1) as f64;
        println!(
            "import: {total} listens of {n_users} users in {secs:.1} s = {:.0} listens/s (goal: 10M in < 120 s), {importers} members importing at once; one member's {per_user} listens took {:.1} ms on average among the first tenth of members, {:.1} ms among the last tenth (waiting for the writer included)",
            total as f64 / secs,
            mean(&times[..tenth]),
            mean(&times[times.len() - tenth..]),
        );
        // The import's time is mostly the writer's; on a shared machine its CPU time for
        // the same listens varies between runs, so say where its wall time went.
        if let (Some(before), Some(after)) = (writer_before, writer_after) {
            println!(
                "the writer thread during the import ({wall:.1} s): {}",
                SchedTimes::describe(before, after, wall)
            );
        }
        println!("the writer's time by what it did: {}", describe_phases(&phases_before, &phases));
        if let Some(cpu) = cpu {
            println!("{}", describe_cpu(wall, cpu, &threads_before, &threads_after));
        }
        std::fs::write(path.join(COMMUNITY_BUILT), &want)?;
    }
    let total = n_users * per_user;
    let bytes = dir_bytes(&path);
    println!(
        "disk: {:.1} MiB = {:.0} bytes per listen (goal ≤ 99), everything in the data directory",
        bytes as f64 / (1 << 20) as f64,
        bytes as f64 / total as f64
    );
    let mut node_config = config.clone();
    node_config.node.data_dir = path.clone();
    node_config.p2p.enabled = false;
    let node = crate::node::Node::build(node_config)?;
    let store = node.store.clone();
    let ingestor = node.ingestor.clone();
    let mut distinct = Vec::new();
    for kind in [crate::stats::chart::Kind::Artist, crate::stats::chart::Kind::Recording] {
        let chart = store.node_chart(
            kind,
            &crate::stats::period::Period::AllTime,
            1,
            crate::now_unix(),
            &jiff::tz::TimeZone::UTC,
        )?;
        distinct.push(chart.distinct);
    }
    println!("the node's items: {} artists, {} recordings", distinct[0], distinct[1]);
    let served = Served::start(node)?;
    std::thread::sleep(std::time::Duration::from_secs(2));
    println!("RSS 2 s after start: {:.0} MiB", status_kib("VmRSS") as f64 / 1024.0);
    // At rest: idle past two of the node's checks, the first of which gives back what
    // starting freed (`node::give_back_when_idle`).
    let idle = crate::node::IDLE_CHECK * 2 + std::time::Duration::from_secs(1);
    std::thread::sleep(idle.saturating_sub(std::time::Duration::from_secs(2)));
    println!(
        "RSS at rest (idle {} s after start, before any read): {:.0} MiB (goal ≤ 300 MB = 286 MiB)",
        idle.as_secs(),
        status_kib("VmRSS") as f64 / 1024.0
    );
    let agent = ureq::AgentBuilder::new().build();
    let last_user = n_users - 1;
    let pages: Vec<(String, String)> = vec![
        ("home page (every user public)".into(), "/".into()),
        ("profile".into(), format!("/user/user{}", n_users / 2)),
        ("history page".into(), format!("/user/user{last_user}/history")),
        ("node chart, this week (API)".into(), "/1/stats/sitewide/artists?range=week".into()),
        ("node chart, all time (API)".into(), "/1/stats/sitewide/artists?range=all_time".into()),
        (
            "node chart, all time, recordings 901-1,000 (API)".into(),
            "/1/stats/sitewide/recordings?range=all_time&count=100&offset=900".into(),
        ),
        // No node bucket holds these: summed over the members once, then kept.
        ("node chart, last quarter (API)".into(), "/1/stats/sitewide/artists?range=quarter".into()),
        ("node chart, last half year (API)".into(), "/1/stats/sitewide/recordings?range=half_yearly".into()),
        ("user listens (API)".into(), format!("/1/user/user{last_user}/listens?count=25")),
        ("user top artists (API)".into(), format!("/1/stats/user/user{last_user}/artists")),
        ("similar users, warm (API)".into(), "/1/user/user0/similar-users".into()),
    ];
    for (name, route) in &pages {
        let url = format!("{}{route}", served.base);
        // The first call warms caches (similar users: every taste vector).
        let t = Instant::now();
        let first = agent.get(&url).call();
        let cold = t.elapsed().as_secs_f64() * 1000.0;
        if let Err(e) = first {
            println!("{name}: {e}");
            continue;
        }
        let mut times = Vec::with_capacity(requests);
        for _ in 0..requests {
            let t = Instant::now();
            std::hint::black_box(agent.get(&url).call()?.into_string()?);
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        report(&format!("{name} (first {cold:.0} ms)"), times);
    }
    // Where the peak is reached: the reads above, or the writes below.
    let memory = |stage: &str| {
        println!(
            "RSS after {stage}: {:.0} MiB, peak so far {:.0} MiB",
            rss_kib() as f64 / 1024.0,
            peak_rss_kib() as f64 / 1024.0
        )
    };
    memory("the reads");
    let user = store.user_by_name(&format!("user{last_user}"))?.ok_or_else(|| anyhow::anyhow!("no user"))?;
    let t = Instant::now();
    // Through the writer, as the settings page does (the node is running).
    served.runtime.block_on(ingestor.set_visibility(user.id, crate::store::users::SharingLevel::Aggregate))?;
    served.runtime.block_on(ingestor.set_visibility(user.id, crate::store::users::SharingLevel::Public))?;
    println!("per-user operation: two visibility changes of one user {:.1} ms", t.elapsed().as_secs_f64() * 1000.0);
    memory("the level changes");
    // The changes above forget every kept neighbours list: one recomputed from the
    // (warm) taste vectors, as after any change on a live node.
    let url = format!("{}/1/user/user0/similar-users", served.base);
    let t = Instant::now();
    std::hint::black_box(agent.get(&url).call()?.into_string()?);
    println!("similar users right after a change (the list recomputed): {:.1} ms", t.elapsed().as_secs_f64() * 1000.0);
    // A scrobble, the change a live node sees all the time, forgets every list too (not
    // who may be a neighbour): one listen of another member, then user0's list.
    let mut times = Vec::with_capacity(10);
    for k in 1..=10u64 {
        let member = store.user_by_name(&format!("user{k}"))?.ok_or_else(|| anyhow::anyhow!("no user{k}"))?;
        // A time no earlier run used: a listen seen before is a duplicate, not a change
        // (a run a few minutes after another meets its listens: step back ten minutes).
        let appended = |o: &[crate::store::writer::Outcome]| {
            matches!(o.first(), Some(crate::store::writer::Outcome::Appended { .. }))
        };
        let mut outcomes = Vec::new();
        for attempt in 0..50i64 {
            let mut synthetic = Synthetic::new(k, 200);
            synthetic.at = crate::now_unix() - 3_600 * k as i64 - 600 * attempt;
            outcomes = ingestor.ingest_blocking(member.id, vec![Action::Listen(synthetic.listen())])?;
            if appended(&outcomes) {
                break;
            }
        }
        anyhow::ensure!(appended(&outcomes), "the scrobble was not appended: {outcomes:?}");
        let t = Instant::now();
        std::hint::black_box(agent.get(&url).call()?.into_string()?);
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    report("similar users after a scrobble (recomputed)", times);
    // The scrobbles above fell in the last hours: the last quarter's chart stays kept
    // (unless the quarter began less than a week ago).
    let url = format!("{}/1/stats/sitewide/artists?range=quarter", served.base);
    let t = Instant::now();
    std::hint::black_box(agent.get(&url).call()?.into_string()?);
    println!("node chart, last quarter, after the scrobbles: {:.1} ms", t.elapsed().as_secs_f64() * 1000.0);
    println!("RSS peak: {:.0} MiB (goal ≤ 500 MB = 476.8 MiB)", status_kib("VmHWM") as f64 / 1024.0);
    // A node at rest after serving: idle past two of its checks, so it has given back
    // what the reads freed (`node::give_back_when_idle`).
    std::thread::sleep(idle);
    println!(
        "RSS at rest after the reads (idle {} s): {:.0} MiB (goal ≤ 300 MB = 286 MiB)",
        idle.as_secs(),
        status_kib("VmRSS") as f64 / 1024.0
    );
    // An import into the running node (as an upload or the ListenBrainz API's batches):
    // sled's cache grows for it and settles back once it ends (`Store::settle_cache`).
    let started = Instant::now();
    let mut imported = 0usize;
    for k in 0..20u64 {
        let member = store.user_by_name(&format!("user{k}"))?.ok_or_else(|| anyhow::anyhow!("no user{k}"))?;
        let mut synthetic = Synthetic::member(1_000_000 + k, 300, catalogue);
        synthetic.at = crate::now_unix() - 60 * 86_400;
        let actions: Vec<Action> = (0..1_000).map(|_| Action::Listen(synthetic.listen())).collect();
        let outcomes = ingestor.ingest_blocking(member.id, actions)?;
        imported += outcomes.iter().filter(|o| matches!(o, crate::store::writer::Outcome::Appended { .. })).count();
    }
    println!(
        "import into the running node: {imported} listens appended for 20 members in {:.1} s, RSS right after {:.0} MiB",
        started.elapsed().as_secs_f64(),
        status_kib("VmRSS") as f64 / 1024.0
    );
    let settle = crate::store::BULK_SETTLE + idle + crate::node::IDLE_CHECK;
    std::thread::sleep(settle);
    println!(
        "RSS at rest after that import (idle {} s): {:.0} MiB (goal ≤ 300 MB = 286 MiB); peak {:.0} MiB (goal ≤ 500 MB = 476.8 MiB)",
        settle.as_secs(),
        status_kib("VmRSS") as f64 / 1024.0,
        peak_rss_kib() as f64 / 1024.0
    );
    served.stop()?;
    drop(temporary);
    Ok(std::process::ExitCode::SUCCESS)
}

fn home(config: &Config, n_users: u64, per_user: u64, requests: usize) -> anyhow::Result<std::process::ExitCode> {
    let temporary = temp_dir("home")?;
    let started = Instant::now();
    {
        let store = Store::open(temporary.path(), &store::Options::from(&config.store))?;
        let ingestor =
            Ingestor::start(store.clone(), config.store.group_commit_max_listens, config.stats.credit_rules())?;
        for u in 0..n_users {
            let id = store.create_user(&format!("user{u}"), "bench-password", crate::now_unix())?.id;
            ingestor.set_visibility_blocking(id, crate::store::users::SharingLevel::Public)?;
            let mut synthetic = Synthetic::new(u + 1, 200 + (u as usize % 7) * 50);
            ingestor.ingest_blocking(id, (0..per_user).map(|_| Action::Listen(synthetic.listen())).collect())?;
        }
        ingestor.stop();
    }
    println!("{n_users} public users x {per_user} listens set up in {:.1} s", started.elapsed().as_secs_f64());
    let mut node_config = config.clone();
    node_config.node.data_dir = temporary.path().to_owned();
    node_config.p2p.enabled = false;
    let served = Served::start(crate::node::Node::build(node_config)?)?;
    let agent = ureq::AgentBuilder::new().build();
    let url = format!("{}/", served.base);
    agent.get(&url).call()?;
    let mut times = Vec::with_capacity(requests);
    for _ in 0..requests {
        let t = Instant::now();
        std::hint::black_box(agent.get(&url).call()?.into_string()?);
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    report(&format!("GET / ({n_users} public users)"), times);
    served.stop()?;
    drop(temporary);
    Ok(std::process::ExitCode::SUCCESS)
}

fn http(config: &Config, connections: usize, seconds: u64) -> anyhow::Result<std::process::ExitCode> {
    let (dir, node, user) = bench_node(config, "http")?;
    let (token, _) = node.store.create_token(user.id, "bench", crate::now_unix(), false)?;
    let ingestor = node.ingestor.clone();
    let served = Served::start(node)?;
    let url = format!("{}/1/submit-listens", served.base);
    let deadline = Instant::now() + std::time::Duration::from_secs(seconds);
    let base = crate::now_unix() - 3 * 86_400;
    let results: Vec<(u64, Vec<f64>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..connections)
            .map(|c| {
                let (url, token) = (url.clone(), token.clone());
                scope.spawn(move || {
                    let agent = ureq::AgentBuilder::new().build();
                    let (mut ok, mut latencies) = (0u64, Vec::new());
                    let mut i = 0u64;
                    while Instant::now() < deadline {
                        // Distinct tracks, so the duplicate rule keeps every one.
                        let body = format!(
                            "{{\"listen_type\":\"single\",\"payload\":[{{\"listened_at\":{},\"track_metadata\":{{\"artist_name\":\"Load {c}\",\"track_name\":\"Track {i}\"}}}}]}}",
                            base + i as i64
                        );
                        let t = Instant::now();
                        let sent = agent
                            .post(&url)
                            .set("Authorization", &format!("Token {token}"))
                            .set("Content-Type", "application/json")
                            .send_string(&body);
                        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                        if sent.is_ok() {
                            ok += 1;
                        }
                        i += 1;
                    }
                    (ok, latencies)
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    let acknowledged: u64 = results.iter().map(|(ok, _)| ok).sum();
    let latencies: Vec<f64> = results.into_iter().flat_map(|(_, l)| l).collect();
    served.stop()?;
    println!(
        "{acknowledged} listens acknowledged in {seconds} s from {connections} connections = {:.0} listens/s (each acknowledged after its group was flushed)",
        acknowledged as f64 / seconds as f64
    );
    report("submit-listens latency", latencies);
    let groups = ingestor.stats();
    println!(
        "group commits: {} flushes for {} batches ({:.1} batches per flush)",
        groups.groups,
        groups.batches,
        groups.batches as f64 / groups.groups.max(1) as f64
    );
    let store = Store::open(dir.path(), &store::Options::from(&config.store))?;
    let stored = store.log_head(user.id)?.n_listens;
    println!("stored after shutdown: {stored} (acknowledged {acknowledged})");
    drop(store);
    drop(dir);
    Ok(std::process::ExitCode::SUCCESS)
}

fn web(config: &Config, listens: u64, requests: usize) -> anyhow::Result<std::process::ExitCode> {
    let (dir, node, user) = bench_node(config, "web")?;
    node.ingestor.set_visibility_blocking(user.id, crate::store::users::SharingLevel::Public)?;
    let mut synthetic = Synthetic::new(1, 1000);
    let mut done = 0;
    while done < listens {
        let k = 1000.min(listens - done);
        node.ingestor.ingest_blocking(user.id, (0..k).map(|_| Action::Listen(synthetic.listen())).collect())?;
        done += k;
    }
    // The cursor of the 100th history page (the last listen of the 99th), found once.
    let before = node.store.listens(user.id, 0, i64::MAX, 99 * 50, crate::store::logs::Order::NewestFirst)?;
    let deep = before.last().map_or_else(String::new, |l| format!("{}.{}", l.listen.listened_at(), l.seq));
    let served = Served::start(node)?;
    let base = served.base.clone();
    println!("{listens} listens for one public user; {requests} requests per page, after one warm-up");
    let agent = ureq::AgentBuilder::new().build();
    for path in [
        "/",
        "/user/bench0",
        "/user/bench0?period=12m",
        "/user/bench0?period=all",
        "/user/bench0/history",
        "/user/bench0/history?before={page100}",
    ] {
        // A page deep in the history (the 100th, by cursor).
        let path = path.replace("{page100}", &deep);
        let url = format!("{base}{path}");
        agent.get(&url).call()?;
        let mut times = Vec::with_capacity(requests);
        for _ in 0..requests {
            let t = Instant::now();
            let body = agent.get(&url).call()?.into_string()?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            std::hint::black_box(body);
        }
        report(&format!("GET {path}"), times);
    }
    served.stop()?;
    drop(dir);
    Ok(std::process::ExitCode::SUCCESS)
}

fn logins(config: &Config, count: u64, clients: u64) -> anyhow::Result<std::process::ExitCode> {
    let (dir, node, _) = bench_node(config, "logins")?;
    let served = Served::start(node)?;
    let base = served.base.clone();
    let one = |agent: &ureq::Agent, i: u64| -> anyhow::Result<()> {
        if i.is_multiple_of(2) {
            // The web form: its page sets the pre-session form cookie and token.
            let page = agent.get(&format!("{base}/login")).call()?;
            let cookie = page.header("set-cookie").unwrap_or_default().split(';').next().unwrap_or_default().to_owned();
            let html = page.into_string()?;
            let token = html.split("name=\"form_token\" value=\"").nth(1).and_then(|r| r.split('"').next());
            let token = token.context("no form token")?.to_owned();
            let r = agent.post(&format!("{base}/login")).set("Cookie", &cookie).send_form(&[
                ("form_token", &token),
                ("username", "bench0"),
                ("password", "bench-password"),
            ]);
            anyhow::ensure!(matches!(r, Ok(ref r) if r.status() == 303), "web log-in failed: {r:?}");
        } else {
            let r = agent.post(&format!("{base}/2.0/")).send_form(&[
                ("method", "auth.getMobileSession"),
                ("username", "bench0"),
                ("password", "bench-password"),
                ("format", "json"),
            ]);
            anyhow::ensure!(matches!(r, Ok(ref r) if r.status() == 200), "Last.fm log-in failed: {r:?}");
        }
        Ok(())
    };
    let warm = ureq::AgentBuilder::new().redirects(0).build();
    for i in 0..20 {
        one(&warm, i)?;
    }
    let before = rss_kib();
    let started = Instant::now();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..clients.max(1))
            .map(|c| {
                let one = &one;
                scope.spawn(move || -> anyhow::Result<()> {
                    let agent = ureq::AgentBuilder::new().redirects(0).build();
                    let mut i = c;
                    while i < count {
                        one(&agent, i)?;
                        i += clients.max(1);
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("a client panicked"))??;
        }
        Ok(())
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    let after = rss_kib();
    println!(
        "{count} log-ins (half web, half Last.fm) from {clients} clients in {elapsed:.1} s = {:.1}/s",
        count as f64 / elapsed
    );
    println!(
        "resident memory: {:.1} MiB after 20 warm-up log-ins, {:.1} MiB after {count} ({:+.1} MiB); peak {:.1} MiB",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        (after as f64 - before as f64) / 1024.0,
        peak_rss_kib() as f64 / 1024.0
    );
    served.stop()?;
    drop(dir);
    Ok(std::process::ExitCode::SUCCESS)
}

/// A fresh node in a temporary directory with one user, `bench0`, for the HTTP
/// benchmarks: (directory, node, user). The network stays off: these benchmarks bind
/// nothing but HTTP on 127.0.0.1.
fn bench_node(
    config: &Config,
    what: &str,
) -> anyhow::Result<(tempfile::TempDir, crate::node::Node, crate::store::users::User)> {
    let dir = temp_dir(what)?;
    let mut node_config = config.clone();
    node_config.node.data_dir = dir.path().to_owned();
    node_config.p2p.enabled = false;
    let node = crate::node::Node::build(node_config)?;
    let user = node.store.create_user("bench0", "bench-password", crate::now_unix())?;
    Ok((dir, node, user))
}

/// A node serving HTTP on a free port of 127.0.0.1 from its own runtime.
struct Served {
    runtime: tokio::runtime::Runtime,
    base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), crate::node::Error>>,
}

impl Served {
    fn start(node: crate::node::Node) -> anyhow::Result<Served> {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let base = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = runtime.spawn(node.run(listener, async {
            let _ = stopped.await;
        }));
        Ok(Served { runtime, base, stop, server })
    }

    /// Shuts the node down gracefully (the writer drains and flushes).
    fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.runtime.block_on(self.server)??;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{SchedTimes, describe_cpu};

    #[test]
    fn the_writers_phases_read_with_what_is_left_of_its_groups() {
        use std::time::Duration;
        // As `Phase::ALL`: waiting, groups, preparing, transaction, flush, writing, node
        // changes, node pass.
        let stats = |ms: [u64; 8]| crate::store::IngestStats {
            batches: 8,
            groups: 1,
            reloads: 0,
            phases: ms.map(Duration::from_millis),
        };
        // Before the clock: the writer waited for its first batch, and nothing else.
        let before = stats([500, 0, 0, 0, 0, 0, 0, 0]);
        let after = stats([10_500, 60_000, 30_000, 17_000, 2_000, 5_000, 3_000, 9_000]);
        assert_eq!(
            super::describe_phases(&before, &after),
            "groups 60.0 s (preparing listens 30.0 s, waiting for their writes 5.0 s, for the node changes' thread 3.0 s and for node-store passes 9.0 s, the rest 13.0 s), waiting for batches 10.0 s; the groups' writes (beside the writer) took sled transactions 17.0 s and flushes 2.0 s"
        );
    }

    /// The process's CPU time counts a thread's work once that thread has ended: at
    /// least the time the thread itself was on a core (its `schedstat`).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn the_process_cpu_time_counts_an_ended_threads_work() {
        use super::process_cpu_secs;
        let before = process_cpu_secs().expect("getrusage");
        let on_core = std::thread::spawn(|| {
            let started = std::time::Instant::now();
            let mut x = 0u64;
            while started.elapsed() < std::time::Duration::from_millis(300) {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            let line = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
            SchedTimes::parse(&line).expect("three counts").on_core_ns as f64 / 1e9
        })
        .join()
        .expect("spin");
        let after = process_cpu_secs().expect("getrusage");
        assert!(on_core > 0.0, "the thread was never on a core");
        // getrusage counts in microseconds, the scheduler in nanoseconds.
        assert!(after - before >= on_core - 0.001, "{before} s, then {after} s; the thread alone {on_core} s");
    }

    /// The CPU time's shares: each thread's time on a core over the process's, the rest
    /// what they leave, and the import's time over the CPU time.
    #[test]
    fn the_cpu_time_is_split_into_the_ingest_threads_and_the_rest() {
        let at = |s: u64| Some(SchedTimes { on_core_ns: s * 1_000_000_000, waiting_ns: 0, switches: 0 });
        let line = describe_cpu(75.0, 100.0, &[at(1), at(2), None], &[at(31), at(18), at(9)]);
        assert!(line.contains("acknowledged (75.0 s): 100.0 s, that time 0.75 times it"), "{line}");
        assert!(line.contains("the writer 30.0 s (30%)"), "{line}");
        assert!(line.contains("the committing thread 16.0 s (16%)"), "{line}");
        // A thread not found before was started during the import: its whole time.
        assert!(line.contains("node changes 9.0 s (9%)"), "{line}");
        assert!(line.contains("(node-store passes, importers, sled) 45.0 s (45%)"), "{line}");
        // One gone by the end counts nothing (its time is in the rest).
        let line = describe_cpu(75.0, 100.0, &[at(1), at(2), at(3)], &[at(31), None, at(9)]);
        assert!(line.contains("the committing thread 0.0 s (0%)"), "{line}");
        assert!(line.contains("(node-store passes, importers, sled) 64.0 s (64%)"), "{line}");
    }

    #[test]
    fn a_schedstat_line_reads_as_its_three_counts() {
        let t = SchedTimes::parse("58400000000 9700000000 360622\n");
        assert_eq!(t, Some(SchedTimes { on_core_ns: 58_400_000_000, waiting_ns: 9_700_000_000, switches: 360_622 }));
        assert_eq!(SchedTimes::parse("1 2"), None, "two numbers");
        assert_eq!(SchedTimes::parse("1 x 3"), None, "not a number");
        assert_eq!(SchedTimes::parse(""), None);
    }

    #[test]
    fn the_writer_time_is_split_into_core_waiting_and_blocked() {
        let before = SchedTimes { on_core_ns: 1_000_000_000, waiting_ns: 500_000_000, switches: 10 };
        let after = SchedTimes { on_core_ns: 59_400_000_000, waiting_ns: 10_200_000_000, switches: 360_632 };
        assert_eq!(
            SchedTimes::describe(before, after, 81.0),
            "on a core 58.4 s, waiting for one 9.7 s, blocked 12.9 s, 360622 switches"
        );
        // Counts that went backwards (a different thread) do not underflow.
        assert!(
            SchedTimes::describe(after, before, 1.0)
                .starts_with("on a core 0.0 s, waiting for one 0.0 s, blocked 1.0 s, 0")
        );
    }

    #[test]
    fn this_thread_is_found_by_its_name() {
        let found = std::thread::Builder::new()
            .name("hearsay-schedt".into())
            .spawn(|| {
                // Spins until its counts say 20 ms on a core (however loaded the machine),
                // or 10 s have passed.
                let first = SchedTimes::of_thread("hearsay-schedt");
                let spin = std::time::Instant::now();
                loop {
                    std::hint::black_box(0u64);
                    let now = SchedTimes::of_thread("hearsay-schedt");
                    let done = now.is_none_or(|t| t.on_core_ns >= 20_000_000);
                    if done || spin.elapsed() > std::time::Duration::from_secs(10) {
                        return (first, now);
                    }
                }
            })
            .expect("spawn")
            .join()
            .expect("join");
        if std::path::Path::new("/proc/self/task").exists() {
            let (Some(first), Some(last)) = found else { panic!("this thread's schedstat: {found:?}") };
            assert!(last.on_core_ns >= 20_000_000, "{last:?}: its counts did not grow as it spun");
            assert!(last.on_core_ns > first.on_core_ns && last.switches >= first.switches, "{first:?} then {last:?}");
        }
        assert_eq!(SchedTimes::of_thread("no thread is called this"), None);
    }
}
