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

#[derive(Subcommand)]
pub enum BenchCmd {
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
    words: Vec<&'static str>,
}

const WORDS: &[&str] = &[
    "love", "night", "heart", "dream", "fire", "blue", "light", "rain", "city", "song", "dance", "time", "summer",
    "shadow", "river", "golden", "wild", "electric", "silver", "ghost", "ocean", "stars", "glass", "paper", "echo",
    "velvet", "midnight", "sugar", "stone", "thunder", "winter", "crystal", "moon", "garden", "neon", "road",
];

impl Synthetic {
    pub fn new(seed: u64, n_artists: usize) -> Synthetic {
        let mut s = Synthetic {
            state: seed ^ 0x9E37_79B9_7F4A_7C15,
            at: 1_420_070_400,
            artists: Vec::new(),
            words: WORDS.to_vec(),
        };
        for i in 0..n_artists {
            let name = format!("{} {} {}", s.word().to_uppercase(), s.word(), i);
            s.artists.push(name);
        }
        s
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
        let album_no = self.skewed(6);
        let track_no = self.skewed(12);
        // Names derive from the indexes so the same track repeats exactly.
        let w = |k: u64| WORDS[(k % WORDS.len() as u64) as usize];
        let title =
            format!("{} {} {}", w(a * 7 + album_no * 13 + track_no), w(a + track_no * 5), w(track_no * 3 + album_no));
        let album = format!("{} {}", w(a * 3 + album_no), w(a + album_no * 11));
        self.at += 120 + (self.next() % 360) as i64;
        Listen {
            track: TrackRef {
                artist: self.artists[a as usize].clone(),
                artist_names: vec![],
                artist_mbids: vec![],
                title,
                album: Some(album),
                recording_mbid: None,
                release_mbid: None,
            },
            listened_at: self.at,
            duration_ms: Some(150_000 + (track_no as u32) * 7_000),
            client: Some("hearsay-bench".into()),
        }
    }
}

fn dir_bytes(path: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Peak resident set size of this process in KiB (Linux `VmHWM`).
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

pub fn run(config: &Config, cmd: BenchCmd) -> anyhow::Result<std::process::ExitCode> {
    let BenchCmd::Ingest { listens, batch, clients, artists, seed, dir, acks, verify } = cmd;
    let (dir, temporary) = match dir {
        Some(d) => (d, false),
        None => (std::env::temp_dir().join(format!("hearsay-bench-{}", std::process::id())), true),
    };
    let store = Store::open(&dir, &store::Options { cache_mb: config.store.cache_mb })?;
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
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(std::process::ExitCode::SUCCESS)
}
