//! Fault injection against the real binary: the disk fills up at random moments while
//! clients submit; the node is stopped and started again on the still-full disk; then
//! space comes back. Every round: no acknowledged listen lost, the store opens, `log
//! verify` passes, and writing resumes without a restart once space is back.
//!
//! The disk is a tmpfs mounted for the test, so this needs root (as CI and `tests/run`
//! on a fresh machine are). `HEARSAY_FAULT_ROUNDS` sets the number of rounds (default
//! 4; the acceptance run uses 30); `HEARSAY_FAULTS=0` leaves the suite out on a
//! machine where you are not root, and says so.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::{NodeProcess, data_with_user_env, hearsay_with};

/// A tmpfs of `size_mb` mounted on a fresh directory, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size_mb: u64) -> Tmpfs {
        let parent = tempfile::tempdir().expect("tempdir");
        let dir = parent.path().join("disk");
        std::fs::create_dir(&dir).expect("mkdir");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(&dir)
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs ({}): the fault suite needs root; HEARSAY_FAULTS=0 leaves it out",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs { dir, _parent: parent }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// The tests here load the machine heavily (tmpfs fills, thousands of connections,
/// hundreds of MiB of uploads): they take turns, so at most one runs at a time.
fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn enabled() -> bool {
    if std::env::var("HEARSAY_FAULTS").is_ok_and(|v| v == "0") {
        eprintln!("fault suite left out (HEARSAY_FAULTS=0)");
        return false;
    }
    true
}

fn rounds() -> u64 {
    std::env::var("HEARSAY_FAULT_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(4)
}

/// Takes the free space of the file system holding `dir` in a file of its own, leaving
/// about `leave` bytes: 0 for a full disk, or a little more than the node's reserve,
/// so that the reserve check passes and sled's own next write runs out of space.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    let free = || hearsay::store::space::available(dir).unwrap_or(0);
    let chunk = vec![0xA5u8; 1 << 16];
    while free() > leave + chunk.len() as u64 && f.write_all(&chunk).is_ok() {}
    if leave == 0 {
        let mut small = vec![0u8; 4096];
        while !small.is_empty() {
            if f.write_all(&small).is_err() {
                small.truncate(small.len() / 2);
            }
        }
    }
    let _ = f.sync_all();
    path
}

/// Appends to the filler until the disk is full.
fn fill_more(filler: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(filler)?;
    let mut chunk = vec![0x5Au8; 1 << 16];
    while !chunk.is_empty() {
        if f.write_all(&chunk).is_err() {
            chunk.truncate(chunk.len() / 2);
        }
    }
    f.sync_all()
}

/// Clients submitting distinct single listens over HTTP until `stop`; refused
/// submissions (507, 503, a closed connection) are retried with a new listen after a
/// pause. Returns the number acknowledged (HTTP 200).
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(url: &str, token: &str, clients: u64, round: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let base = hearsay::now_unix() - 300 * 86_400 + (round as i64) * 400_000;
        let threads = (0..clients)
            .map(|c| {
                let (url, token) = (format!("{url}/1/submit-listens"), token.to_owned());
                let (stop, acked) = (stop.clone(), acked.clone());
                std::thread::spawn(move || {
                    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(5)).build();
                    let mut i = 0i64;
                    while !stop.load(Ordering::Relaxed) {
                        let at = base + (c as i64) * 50_000 + i;
                        i += 1;
                        let body = format!(
                            r#"{{"listen_type":"single","payload":[{{"listened_at":{at},"track_metadata":{{"artist_name":"Load {c}","track_name":"Track {round}-{i}"}}}}]}}"#
                        );
                        match agent.post(&url).set("Authorization", &format!("Token {token}")).send_string(&body) {
                            Ok(r) if r.status() == 200 => {
                                acked.fetch_add(1, Ordering::SeqCst);
                            }
                            _ => std::thread::sleep(Duration::from_millis(50)),
                        }
                    }
                })
            })
            .collect();
        Load { stop, acked, threads }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("client");
        }
        self.acked.load(Ordering::SeqCst)
    }
}

fn stored_listens(data: &Path, env: &[(&str, &str)]) -> u64 {
    let (code, out, err) = hearsay_with(data, &["user", "list"], env);
    assert_eq!(code, 0, "user list: {out}{err}");
    out.split_whitespace()
        .find_map(|f| f.strip_prefix("listens="))
        .and_then(|n| n.parse().ok())
        .expect("listens= in user list")
}

fn health(url: &str) -> u16 {
    match ureq::get(&format!("{url}/health")).timeout(Duration::from_secs(2)).call() {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(_) => 0,
    }
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_full_disk_at_random_moments_loses_nothing_and_never_wrecks_the_store() {
    let _turn = heavy();
    if !enabled() {
        return;
    }
    let disk = Tmpfs::mount(48);
    let env = [("HEARSAY_STORE__RESERVE_MB", "1"), ("HEARSAY_P2P__ENABLED", "false"), ("HEARSAY_STORE__CACHE_MB", "8")];
    let (data, token) = data_with_user_env(&disk.dir, &env);
    let mut seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(7, |d| d.as_nanos() as u64) | 1;
    let mut jitter = |max: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % max
    };
    let mut acked_total = 0u64;
    let mut refused_total = 0u64;
    for round in 0..rounds() {
        // Load, then the disk fills at a random moment while the clients go on.
        let node = NodeProcess::start_with(&data, &env);
        let mut load = Load::start(&node.url, &token, 4, round * 2);
        std::thread::sleep(Duration::from_millis(200 + jitter(1200)));
        // Even rounds take every byte while the clients write. Odd rounds leave the
        // reserve and 64 KiB more, then send one batch (about 1 MB) bigger than that:
        // the reserve check alone would let it through and sled would run out of space
        // half-way; the node must refuse it (it cannot allocate room for it first).
        let leave = if round % 2 == 0 { 0 } else { (1 << 20) + (64 << 10) };
        let mut acked = 0;
        if leave > 0 {
            acked += load.stop();
            load = Load::start(&node.url, &token, 0, round * 2);
        }
        let filler = fill(&disk.dir, leave);
        std::thread::sleep(Duration::from_millis(300 + jitter(700)));
        if leave > 0 {
            // One batch bigger than the space left above the reserve: the reserve check
            // lets it through, and sled runs out of space writing it.
            let payload: Vec<String> = (0..1000)
                .map(|i| {
                    format!(
                        r#"{{"listened_at":{},"track_metadata":{{"artist_name":"Big {round}","track_name":"{i} {}"}}}}"#,
                        hearsay::now_unix() - 200_000 - i,
                        "x".repeat(900)
                    )
                })
                .collect();
            let body = format!(r#"{{"listen_type":"import","payload":[{}]}}"#, payload.join(","));
            let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(20)).build();
            match agent
                .post(&format!("{}/1/submit-listens", node.url))
                .set("Authorization", &format!("Token {token}"))
                .send_string(&body)
            {
                Ok(r) if r.status() == 200 => acked += 1000,
                Err(ureq::Error::Status(code, _)) => {
                    assert!(code == 507 || code == 503, "round {round}: the big batch answered {code}")
                }
                other => panic!("round {round}: the big batch: {other:?}"),
            }
            // Take the rest while the clients write.
            let _ = fill_more(&filler);
        }
        // Writes are refused now; a submission gets a clear status, not a hang.
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(5)).build();
        // (A connection the node was closing while it reopened its store is retried.)
        let mut probe = Err(ureq::Error::Status(0, ureq::Response::new(599, "none", "").expect("response")));
        for _ in 0..5 {
            probe = agent
                .post(&format!("{}/1/submit-listens", node.url))
                .set("Authorization", &format!("Token {token}"))
                .send_string(&format!(
                    r#"{{"listen_type":"single","payload":[{{"listened_at":{},"track_metadata":{{"artist_name":"Probe","track_name":"{round}"}}}}]}}"#,
                    hearsay::now_unix() - 100
                ));
            if !matches!(probe, Err(ureq::Error::Transport(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        match probe {
            Err(ureq::Error::Status(code, _)) => {
                assert!(code == 507 || code == 503, "round {round}: a write on a full disk answered {code}");
                refused_total += 1;
            }
            Ok(r) => panic!("round {round}: a write on a full disk was acknowledged ({})", r.status()),
            Err(e) => panic!("round {round}: the node stopped answering on a full disk: {e}"),
        }
        acked += load.stop();
        acked_total += acked;
        // SIGTERM while full: a clean stop.
        assert_eq!(node.terminate(), Some(0), "round {round}: SIGTERM on a full disk");

        // Started again on the still-full disk, the node does not open the store (a
        // command-line tool does not either), and says why.
        let node = NodeProcess::start_with(&data, &env);
        // (Generous: on a loaded two-core machine a debug node can take seconds to come up.)
        let mut seen = Vec::new();
        wait_for("a 503 from /health", Duration::from_secs(30), || {
            let code = health(&node.url);
            if seen.last() != Some(&code) {
                seen.push(code);
                eprintln!("round {round}: /health on the full disk answered {code}");
            }
            code == 503
        });
        let (code, _, err) = hearsay_with(&data, &["user", "list"], &env);
        assert_ne!(code, 0, "round {round}: a command opened the store on a full disk");
        assert!(err.contains("reserve") && err.contains("MiB free"), "round {round}: {err}");

        // Space comes back: the same process opens the store and takes writes again.
        std::fs::remove_file(&filler).expect("free the disk");
        wait_for("the store to open", Duration::from_secs(20), || health(&node.url) == 200);
        let load = Load::start(&node.url, &token, 2, round * 2 + 1);
        std::thread::sleep(Duration::from_millis(500));
        let after = load.stop();
        assert!(after > 0, "round {round}: no write acknowledged after space came back, without a restart");
        acked_total += after;
        assert_eq!(node.terminate(), Some(0));

        let (code, out, err) = hearsay_with(&data, &["log", "verify", "alice"], &env);
        assert_eq!(code, 0, "round {round}: log verify after a full disk: {out}{err}");
        let stored = stored_listens(&data, &env);
        assert!(stored >= acked_total, "round {round}: {stored} stored < {acked_total} acknowledged");
        eprintln!(
            "round {round}: {acked} acknowledged before the disk filled, {after} after space came back; {stored} stored, {acked_total} acknowledged in all"
        );
    }
    eprintln!("{} rounds: {acked_total} acknowledged, all stored; {refused_total} probes refused while full", rounds());
}

/// Peak resident memory of a process, in MiB (`VmHWM`).
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}

/// A multipart body streamed from pieces: (field name, file name, content generator).
struct Multipart {
    parts: Vec<Box<dyn std::io::Read + Send>>,
}

impl std::io::Read for Multipart {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while let Some(first) = self.parts.first_mut() {
            let n = first.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            self.parts.remove(0);
        }
        Ok(0)
    }
}

const BOUNDARY: &str = "hearsay-bomb-boundary";

fn part_head(name: &str, file: Option<&str>) -> Box<dyn std::io::Read + Send> {
    let disposition = match file {
        Some(f) => format!("form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream"),
        None => format!("form-data; name=\"{name}\""),
    };
    Box::new(std::io::Cursor::new(format!("--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n").into_bytes()))
}

fn bytes(b: Vec<u8>) -> Box<dyn std::io::Read + Send> {
    Box::new(std::io::Cursor::new(b))
}

/// Posts a multipart upload to `/import`; returns the status (0 when the node closed
/// the connection before reading everything) and the final page of the import.
fn upload(base: &str, session: &str, parts: Vec<Box<dyn std::io::Read + Send>>) -> (u16, String) {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(120)).redirects(0).build();
    let mut all = parts;
    all.push(bytes(format!("--{BOUNDARY}--\r\n").into_bytes()));
    let resp = agent
        .post(&format!("{base}/import"))
        .set("Cookie", session)
        .set("Content-Type", &format!("multipart/form-data; boundary={BOUNDARY}"))
        .send(Multipart { parts: all });
    let (status, url) = match resp {
        Ok(r) if r.status() == 303 || r.status() == 302 => {
            (200, format!("{base}{}", r.header("location").unwrap_or_default()))
        }
        Ok(r) => return (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => return (code, r.into_string().unwrap_or_default()),
        Err(_) => return (0, String::new()),
    };
    // Follow the job page until the import is over.
    for _ in 0..600 {
        let page = agent.get(&url).set("Cookie", session).call().map(|r| r.into_string().unwrap_or_default());
        let page = page.unwrap_or_default();
        if !page.contains("http-equiv=\"refresh\"") {
            return (status, page);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("the import did not finish");
}

fn zip_of(member: &str, content: impl Fn(&mut dyn std::io::Write)) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut out);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .large_file(true);
        z.start_file(member, opts).expect("member");
        content(&mut z);
        z.finish().expect("zip");
    }
    out.into_inner()
}

#[test]
fn import_bombs_are_refused_naming_the_limit_in_bounded_memory() {
    let _turn = heavy();
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, _) = crate::support::data_with_user(dir.path());
    let node = NodeProcess::start(&data);
    let (session, csrf) = crate::web::login(&node.url);
    let form = |csrf: &str| vec![part_head("csrf", None), bytes(format!("{csrf}\r\n").into_bytes())];

    // 1. A small zip holding a Spotify history of 256 MiB of '['.
    let nested = zip_of("Spotify Extended Streaming History/Streaming_History_Audio_2024.json", |w| {
        let chunk = vec![b'['; 1 << 20];
        for _ in 0..256 {
            w.write_all(&chunk).expect("write");
        }
    });
    eprintln!("nesting bomb: {} KiB zipped", nested.len() / 1024);
    let mut parts = form(&csrf);
    parts.extend([part_head("file", Some("my_spotify_data.zip")), bytes(nested), bytes(b"\r\n".to_vec())]);
    let (status, page) = upload(&node.url, &session, parts);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("expands more than 200 times"), "{page}");

    // 2. The same nesting as a plain file: the scanner refuses it at 64 levels.
    let mut parts = form(&csrf);
    parts.push(part_head("file", Some("Streaming_History_Audio_2023.json")));
    parts.push(Box::new(std::io::repeat(b'[').take(64 << 20)));
    parts.push(bytes(b"\r\n".to_vec()));
    let (_, page) = upload(&node.url, &session, parts);
    assert!(page.contains("deeper than 64"), "{page}");

    // 3. A Last.fm CSV with a 512 MiB line between good records.
    let mut csv: Vec<Box<dyn std::io::Read + Send>> = form(&csrf);
    csv.push(part_head("file", Some("lastfm.csv")));
    csv.push(bytes(b"Band,Album,Song One,31 May 2016 20:46\nBand,".to_vec()));
    csv.push(Box::new(std::io::repeat(b'x').take(512 << 20)));
    csv.push(bytes(b",Song,31 May 2016 20:50\nBand,Album,Song Two,31 May 2016 20:56\n\r\n".to_vec()));
    let (_, page) = upload(&node.url, &session, csv);
    assert!(page.contains("line longer than"), "{page}");

    // 4. A 400 MiB text field before the file: refused at 4 KiB, before the file.
    let mut parts = form(&csrf);
    parts.push(part_head("timezone", None));
    parts.push(Box::new(std::io::repeat(b'z').take(400 << 20)));
    parts.extend([bytes(b"\r\n".to_vec()), part_head("file", Some("x.csv")), bytes(b"a,b,c,d\r\n".to_vec())]);
    let (status, page) = upload(&node.url, &session, parts);
    assert!(status == 413 || status == 0, "{status}: {page}");
    if status == 413 {
        assert!(page.contains("longer than 4096 bytes"), "{page}");
    }

    let peak = peak_rss_mib(node.child.id());
    eprintln!("node peak RSS after the import bombs: {peak} MiB");
    assert!(peak < 200, "peak RSS {peak} MiB");
    assert_eq!(health(&node.url), 200, "the node still answers");
}

/// Opens `n` connections to `addr` that send a request's headers one byte at a time,
/// each byte ~`every` apart, until `stop`.
fn slow_clients(addr: &str, n: usize, every: Duration, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    let addr = addr.to_owned();
    std::thread::spawn(move || {
        use std::io::Write;
        let head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_vec();
        let mut streams: Vec<(std::net::TcpStream, usize)> = Vec::new();
        for _ in 0..n {
            if let Ok(s) = std::net::TcpStream::connect(&addr) {
                let _ = s.set_nonblocking(true);
                streams.push((s, 0));
            }
        }
        let opened = streams.len();
        while !stop.load(Ordering::Relaxed) {
            for (s, sent) in &mut streams {
                let byte = head.get(*sent).copied().unwrap_or(b'a');
                if s.write(&[byte]).is_ok() {
                    *sent += 1;
                }
            }
            std::thread::sleep(every);
        }
        opened
    })
}

/// Time for one `/health` on a fresh connection, and its status (0: no answer).
fn timed_health(url: &str) -> (Duration, u16) {
    let started = Instant::now();
    let status = match ureq::get(&format!("{url}/health")).timeout(Duration::from_secs(5)).call() {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(_) => 0,
    };
    (started.elapsed(), status)
}

#[test]
fn slow_header_clients_do_not_take_the_node_down() {
    let _turn = heavy();
    if !enabled() {
        return;
    }
    // This process needs 2,000+ sockets of its own.
    hearsay::http::raise_open_file_limit();
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, _) = crate::support::data_with_user(dir.path());
    let env = [("HEARSAY_HTTP__HEADER_TIMEOUT_SECS", "3"), ("HEARSAY_P2P__ENABLED", "false")];
    // The common default: a soft limit of 1,024 the node may raise.
    let node = NodeProcess::start_with_files(&data, &env, 1024, 20_000);
    let addr = node.url.trim_start_matches("http://").to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let attack = slow_clients(&addr, 2000, Duration::from_millis(500), stop.clone());
    std::thread::sleep(Duration::from_secs(2));
    let mut worst = Duration::ZERO;
    for _ in 0..12 {
        let (took, status) = timed_health(&node.url);
        assert_eq!(status, 200, "/health during 2,000 slow connections");
        worst = worst.max(took);
        std::thread::sleep(Duration::from_millis(250));
    }
    stop.store(true, Ordering::Relaxed);
    let opened = attack.join().expect("attack");
    eprintln!("2,000 slow-header connections ({opened} opened), open-file limit 1024 soft: slowest /health {worst:?}");
    assert!(worst < Duration::from_millis(100), "slowest /health took {worst:?}");
    drop(node);

    // A hard limit of 1,024 the node cannot raise: it caps its connections below it and
    // sheds the rest with 503 instead of failing to accept; once the slow clients are
    // timed out, it answers normally again.
    let node = NodeProcess::start_with_files(&data, &env, 1024, 1024);
    let stop = Arc::new(AtomicBool::new(false));
    let attack = slow_clients(node.url.trim_start_matches("http://"), 2000, Duration::from_millis(500), stop.clone());
    std::thread::sleep(Duration::from_secs(2));
    let mut answered = 0;
    for _ in 0..12 {
        let (took, status) = timed_health(&node.url);
        assert!(status == 200 || status == 503, "/health answered {status} at the limit");
        assert!(took < Duration::from_millis(500), "/health took {took:?} at the limit");
        answered += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    stop.store(true, Ordering::Relaxed);
    attack.join().expect("attack");
    wait_for("/health after the slow clients left", Duration::from_secs(10), || timed_health(&node.url).1 == 200);
    eprintln!("hard limit 1024: {answered}/12 probes answered (200 or 503) within 500 ms; 200 again after");
}

/// A way of damaging a file.
type Damage = Box<dyn Fn(&Path)>;

/// Starts the node on `data`: Ok(/health status) when it serves, Err(its stderr) when it
/// exits instead. Never a panic either way.
fn try_node(data: &Path) -> Result<u16, String> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(crate::support::bin())
        .env("HEARSAY_NODE__DATA_DIR", data)
        .env("HEARSAY_NODE__LOG", "error")
        .env("HEARSAY_HTTP__LISTEN", "127.0.0.1:0")
        .env("HEARSAY_P2P__ENABLED", "false")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    let _ = std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line);
    let Some(url) = line.trim().rsplit(' ').next().filter(|u| u.starts_with("http://")).map(str::to_owned) else {
        let out = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_ne!(out.status.code(), Some(101), "the node panicked: {err}");
        return Err(err);
    };
    // It may still be waiting to open the store (503): give it a moment.
    let mut status = 0;
    for _ in 0..20 {
        status = health(&url);
        if status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if status != 200 {
        return Err(err);
    }
    Ok(status)
}

#[test]
fn damaged_files_are_named_never_panic_and_recover_salvages_what_verifies() {
    let _turn = heavy();
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, _) = crate::support::data_with_user(dir.path());
    let pw = dir.path().join("pw");
    assert_eq!(hearsay_with(&data, &["user", "add", "bob", "--password-file", pw.to_str().expect("utf8")], &[]).0, 0);
    for (user, n, t0) in [("alice", 2000, 1_700_000_000i64), ("bob", 700, 1_710_000_000)] {
        let lines: String = (0..n)
            .map(|i| {
                format!(
                    "{{\"listened_at\":{},\"track_metadata\":{{\"artist_name\":\"{user} A{}\",\"track_name\":\"T{i}\"}}}}\n",
                    t0 + i * 300,
                    i % 29
                )
            })
            .collect();
        let file = dir.path().join(format!("{user}.jsonl"));
        std::fs::write(&file, lines).expect("write");
        let (code, _, err) = hearsay_with(&data, &["import", "--user", user, file.to_str().expect("utf8")], &[]);
        assert_eq!(code, 0, "{err}");
    }
    let pristine = dir.path().join("pristine");
    assert_eq!(
        std::process::Command::new("cp").arg("-r").arg(&data).arg(&pristine).status().expect("cp").code(),
        Some(0)
    );
    let files: Vec<String> = std::fs::read_dir(pristine.join("db"))
        .expect("db")
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(files.iter().any(|f| f == "db") && files.iter().any(|f| f.starts_with("snap.")), "{files:?}");
    let mut cases = 0;
    let mut recovered_cases = 0;
    for file in &files {
        let len = std::fs::metadata(pristine.join("db").join(file)).expect("len").len();
        let mut damages: Vec<(String, Damage)> = vec![
            ("truncated to 0".into(), Box::new(|p: &Path| std::fs::write(p, b"").expect("truncate"))),
            (
                "truncated to half".into(),
                Box::new(move |p: &Path| {
                    std::fs::OpenOptions::new().write(true).open(p).expect("open").set_len(len / 2).expect("truncate")
                }),
            ),
        ];
        for at in [len / 10, len / 3, len / 2, len * 4 / 5, len.saturating_sub(20)] {
            damages.push((
                format!("16 bytes flipped at {at}"),
                Box::new(move |p: &Path| {
                    use std::io::{Seek, Write};
                    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(p).expect("open");
                    let mut bytes = vec![0u8; 16];
                    f.seek(std::io::SeekFrom::Start(at)).expect("seek");
                    let n = f.read(&mut bytes).expect("read");
                    for b in &mut bytes[..n] {
                        *b ^= 0xA5;
                    }
                    f.seek(std::io::SeekFrom::Start(at)).expect("seek");
                    f.write_all(&bytes[..n]).expect("write");
                }),
            ));
        }
        for (what, damage) in damages {
            cases += 1;
            let _ = std::fs::remove_dir_all(&data);
            assert_eq!(
                std::process::Command::new("cp").arg("-r").arg(&pristine).arg(&data).status().expect("cp").code(),
                Some(0)
            );
            damage(&data.join("db").join(file));
            let case = format!("{file} {what}");
            let (code, out, err) = hearsay_with(&data, &["log", "verify", "alice"], &[]);
            assert!(code == 0 || code == 1 || code == 2, "{case}: log verify exited {code}: {err}");
            assert!(!err.contains("panicked"), "{case}: {err}");
            let healthy = code == 0;
            if !healthy {
                assert!(
                    (err.contains("damaged") || out.contains("FAILED"))
                        && (err.contains("db") || out.contains("entry")),
                    "{case}: the error does not name the damage: {out}{err}"
                );
            }
            let node = try_node(&data);
            assert_eq!(
                node.is_ok(),
                healthy,
                "{case}: log verify and the node disagree ({node:?}, verify: {out}{err})"
            );
            if healthy {
                let (_, list, _) = hearsay_with(&data, &["user", "list"], &[]);
                assert!(list.contains("listens=2000"), "{case}: a store called healthy lost listens: {list}");
                continue;
            }
            // Salvage into a new directory: it opens and verifies.
            let rescued = dir.path().join(format!("rescued-{cases}"));
            let (code, out, err) = hearsay_with(&data, &["store", "recover", rescued.to_str().expect("utf8")], &[]);
            if code != 0 {
                // sled cannot read anything from these files: a clear error, no panic.
                assert!(!err.contains("panicked") && err.contains("damaged"), "{case}: {err}");
                eprintln!("{case}: nothing to salvage ({})", err.trim());
                continue;
            }
            recovered_cases += 1;
            // Every user listed in the report verifies in the new store.
            for user in ["alice", "bob"] {
                if out.contains(&format!("  {user}: ")) {
                    let (code, verified, err) = hearsay_with(&rescued, &["log", "verify", user], &[]);
                    assert_eq!(code, 0, "{case}: {user} does not verify after recovery: {verified}{err}");
                }
            }
            let summary = out.lines().rev().find(|l| l.contains("recovered")).unwrap_or_default().to_owned();
            eprintln!("{case}: {summary}");
            assert!(out.contains("of 2700 acknowledged"), "{case}: {out}");
        }
    }
    eprintln!("{cases} damages: none panicked; {recovered_cases} salvaged with store recover");
}

/// A store whose sled config file is lost or cut no longer says whether its pages are
/// compressed, and sled opening it with a guess writes the guess into a new config
/// before it panics on the first page it cannot read. So the node and the commands
/// refuse to open it, naming the file, and leave the files as they are; `store recover`,
/// which tries the recorded compression and then the other on copies, salvages every
/// listen. Both kinds of store (uncompressed: made before `store.compression`), each
/// recovered under both settings (so the first try of a missing config is wrong once).
#[test]
fn a_store_whose_config_file_is_lost_is_never_read_with_a_guessed_compression() {
    let _turn = heavy();
    let dir = tempfile::tempdir().expect("tempdir");
    let lines: String = (0..500)
        .map(|i| {
            format!(
                "{{\"listened_at\":{},\"track_metadata\":{{\"artist_name\":\"A{}\",\"track_name\":\"T{i}\"}}}}\n",
                1_700_000_000 + i * 300,
                i % 13
            )
        })
        .collect();
    let file = dir.path().join("alice.jsonl");
    std::fs::write(&file, lines).expect("write");
    for made in ["false", "true"] {
        let made_with = [("HEARSAY_STORE__COMPRESSION", made)];
        let base = dir.path().join(format!("made-{made}"));
        std::fs::create_dir_all(&base).expect("dir");
        let (data, _) = data_with_user_env(&base, &made_with);
        let (code, _, err) =
            hearsay_with(&data, &["import", "--user", "alice", file.to_str().expect("utf8")], &made_with);
        assert_eq!(code, 0, "{err}");
        let conf = data.join("db").join("conf");
        let recorded = std::fs::read(&conf).expect("conf");
        let says = format!("use_compression: {made}");
        assert!(recorded.windows(says.len()).any(|w| w == says.as_bytes()), "made with compression {made}");
        let pristine = base.join("pristine");
        assert_eq!(
            std::process::Command::new("cp").arg("-r").arg(&data).arg(&pristine).status().expect("cp").code(),
            Some(0)
        );
        for (case, damage) in [("removed", None), ("cut to 0 bytes", Some(0u64)), ("cut short", Some(20))] {
            for recover_with in ["false", "true"] {
                let case = format!("made with compression {made}, its conf {case}, recovered with {recover_with}");
                let _ = std::fs::remove_dir_all(&data);
                assert_eq!(
                    std::process::Command::new("cp").arg("-r").arg(&pristine).arg(&data).status().expect("cp").code(),
                    Some(0)
                );
                match damage {
                    None => std::fs::remove_file(&conf).expect("remove"),
                    Some(len) => {
                        std::fs::OpenOptions::new().write(true).open(&conf).expect("conf").set_len(len).expect("cut")
                    }
                }
                let log_before = std::fs::read(data.join("db").join("db")).expect("sled's log");
                for setting in ["false", "true"] {
                    let (code, out, err) =
                        hearsay_with(&data, &["log", "verify", "alice"], &[("HEARSAY_STORE__COMPRESSION", setting)]);
                    assert_ne!(code, 0, "{case}: opened with a guess ({setting}): {out}{err}");
                    assert!(
                        err.contains("conf") && err.contains("store recover") && !err.contains("panicked"),
                        "{case}: {err}"
                    );
                }
                assert!(try_node(&data).is_err(), "{case}: the node started");
                assert_eq!(std::fs::read(data.join("db").join("db")).expect("log"), log_before, "{case}: log changed");
                assert_eq!(std::fs::read(&conf).ok().map(|c| c.len()), damage.map(|l| l as usize), "{case}: conf");
                let rescued = base.join(format!("rescued-{}", case.replace([' ', ','], "-")));
                let (code, out, err) = hearsay_with(
                    &data,
                    &["store", "recover", rescued.to_str().expect("utf8")],
                    &[("HEARSAY_STORE__COMPRESSION", recover_with)],
                );
                assert_eq!(code, 0, "{case}: {out}{err}");
                assert!(
                    out.contains("alice: 500 entries kept")
                        && out.contains("500 entries recovered of 500 acknowledged"),
                    "{case}: {out}"
                );
                let (code, verified, err) = hearsay_with(&rescued, &["log", "verify", "alice"], &[]);
                assert_eq!(code, 0, "{case}: {verified}{err}");
                assert_eq!(std::fs::read(data.join("db").join("db")).expect("log"), log_before, "{case}: recover");
            }
        }
        // A compaction cut short, the database it puts back without its conf: refused
        // too (the check runs after the database is put back).
        let _ = std::fs::remove_dir_all(&data);
        assert_eq!(
            std::process::Command::new("cp").arg("-r").arg(&pristine).arg(&data).status().expect("cp").code(),
            Some(0)
        );
        std::fs::rename(data.join("db"), data.join("db.old")).expect("rename");
        std::fs::remove_file(data.join("db.old").join("conf")).expect("remove");
        let (code, out, err) = hearsay_with(&data, &["log", "verify", "alice"], &[]);
        assert_ne!(code, 0, "made with {made}, a cut-short compaction: opened with a guess: {out}{err}");
        assert!(err.contains("conf") && err.contains("store recover"), "made with {made}: {err}");
    }
}

#[test]
fn a_running_node_backs_up_a_consistent_copy() {
    let _turn = heavy();
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, token) = crate::support::data_with_user(dir.path());
    let node = NodeProcess::start(&data);
    let load = Load::start(&node.url, &token, 2, 0);
    std::thread::sleep(Duration::from_millis(500));
    let copy = dir.path().join("copy");
    // The command line asks the running node (it holds the store).
    let url = node.url.trim_start_matches("http://").to_owned();
    let (code, out, err) = crate::support::hearsay_with(
        &data,
        &["store", "backup", copy.to_str().expect("utf8")],
        &[("HEARSAY_HTTP__LISTEN", &url)],
    );
    let acked = load.stop();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("by the running node"), "{out}");
    drop(node);
    let (code, verified, err) = hearsay_with(&copy, &["log", "verify", "alice"], &[]);
    assert_eq!(code, 0, "the copy verifies: {verified}{err}");
    assert!(copy.join("node_key").is_file(), "the node key is in the copy");
    let n: u64 = verified.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("entries");
    assert!(n > 0 && n <= acked, "{n} entries in the copy, {acked} acknowledged in all");
    // Without a running node, the command copies the store itself.
    let again = dir.path().join("again");
    let (code, out, err) = hearsay_with(&data, &["store", "backup", again.to_str().expect("utf8")], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = hearsay_with(&again, &["log", "verify", "alice"], &[]);
    assert_eq!(code, 0, "{err}");
    // A wrong control token is refused.
    let node = NodeProcess::start(&data);
    let r = ureq::post(&format!("{}/control/backup", node.url))
        .set("Authorization", "Bearer nope")
        .send_string(r#"{"dir":"/tmp/x"}"#);
    assert!(matches!(r, Err(ureq::Error::Status(403, _))), "{r:?}");
}
