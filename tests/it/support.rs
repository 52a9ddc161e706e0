//! Helpers shared by the integration tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use hearsay::log::{Listen, RawListen};
use hearsay::store::{Ingestor, Options, Store, UserId};

pub const NOW: i64 = 1_760_000_000;

/// A validated listen, through the one constructor.
pub fn listen(artist: &str, title: &str, at: i64) -> Listen {
    listen_accepted_at(artist, title, at, NOW)
}

/// As `listen`, accepted at `now` (a listen may not be later than an hour after it).
pub fn listen_accepted_at(artist: &str, title: &str, at: i64, now: i64) -> Listen {
    let raw = RawListen {
        artist: artist.as_bytes(),
        title: title.as_bytes(),
        album: Some(b"An Album".as_slice()),
        listened_at: at,
        duration_ms: Some(200_000),
        client: Some(b"it".as_slice()),
        ..RawListen::default()
    };
    Listen::parse(&raw, now).expect("valid test listen")
}

/// Creates the store in `data` without compression (`store.compression = false`), so
/// a test can search its files for bytes that must not be there: zstd would hide them
/// (a store keeps the compression it was created with, whoever opens it later). What
/// the store writes does not depend on it: compression is below sled's pages.
pub fn uncompressed_store(data: &Path) {
    drop(Store::open(data, &Options { cache_mb: 8, compression: false, ..Default::default() }).expect("open"));
}

/// A store in a fresh temp dir with one user and a running writer.
pub struct TestStore {
    pub dir: tempfile::TempDir,
    pub store: Store,
    pub ingestor: Ingestor,
    pub user: UserId,
}

impl TestStore {
    pub fn new() -> TestStore {
        TestStore::with(&Options { cache_mb: 8, ..Default::default() })
    }

    /// A new store opened with `options` (e.g. uncompressed, for a test that searches
    /// the files).
    pub fn with(options: &Options) -> TestStore {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), options).expect("open");
        let user = store.create_user("alice", "password1", NOW).expect("user").id;
        let ingestor = Ingestor::start(store.clone(), 10_000, Default::default()).expect("writer");
        TestStore { dir, store, ingestor, user }
    }

    /// Stops the writer and closes the database, keeping the directory.
    pub fn close(self) -> tempfile::TempDir {
        self.ingestor.stop();
        drop(self.store);
        self.dir
    }

    pub fn reopen(dir: tempfile::TempDir) -> TestStore {
        let store = Store::open(dir.path(), &Options { cache_mb: 8, ..Default::default() }).expect("reopen");
        let user = store.user_by_name("alice").expect("lookup").expect("alice").id;
        let ingestor = Ingestor::start(store.clone(), 10_000, Default::default()).expect("writer");
        TestStore { dir, store, ingestor, user }
    }
}

/// Fails with a message naming the Debian package when a tool a test drives is missing
/// (`tests/run`, the README's test command, installs them all).
pub fn require(tool: &str, package: &str) {
    let found =
        std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()));
    assert!(
        found,
        "this test needs `{tool}`, from Debian's package `{package}`: run the suite with `tests/run` \
         (README.md), which installs it, or `apt-get install {package}`"
    );
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hearsay"))
}

/// `hearsay ARGS` with its data in `data_dir`; returns (status code, stdout, stderr).
pub fn hearsay(data_dir: &Path, args: &[&str]) -> (i32, String, String) {
    hearsay_with(data_dir, args, &[])
}

/// As `hearsay`, with extra environment variables (config overrides).
pub fn hearsay_with(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env("HEARSAY_NODE__DATA_DIR", data_dir)
        .env("HEARSAY_NODE__LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run hearsay");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A node process on 127.0.0.1 with a free port.
pub struct NodeProcess {
    pub child: Child,
    pub url: String,
}

impl NodeProcess {
    pub fn start(data_dir: &Path) -> NodeProcess {
        NodeProcess::start_with(data_dir, &[])
    }

    /// As `start`, with extra environment variables (config overrides).
    pub fn start_with(data_dir: &Path, env: &[(&str, &str)]) -> NodeProcess {
        NodeProcess::spawn(data_dir, env, Stdio::inherit())
    }

    /// As `start_with`, with the node's log (stderr) written to `log`.
    pub fn start_logging(data_dir: &Path, env: &[(&str, &str)], log: &Path) -> NodeProcess {
        NodeProcess::spawn(data_dir, env, Stdio::from(std::fs::File::create(log).expect("log file")))
    }

    /// As `start_with`, under an open-file limit of `soft` (raisable to `hard`).
    pub fn start_with_files(data_dir: &Path, env: &[(&str, &str)], soft: u64, hard: u64) -> NodeProcess {
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={soft}:{hard}")).arg("--").arg(bin());
        NodeProcess::spawn_command(cmd, data_dir, env, Stdio::inherit())
    }

    /// As `start_with`, as the unprivileged user and group `uid` (the test runs as root).
    pub fn start_as(data_dir: &Path, env: &[(&str, &str)], uid: u32) -> NodeProcess {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={uid}")).arg(format!("--regid={uid}")).arg("--clear-groups").arg("--").arg(bin());
        NodeProcess::spawn_command(cmd, data_dir, env, Stdio::inherit())
    }

    fn spawn(data_dir: &Path, env: &[(&str, &str)], stderr: Stdio) -> NodeProcess {
        NodeProcess::spawn_command(Command::new(bin()), data_dir, env, stderr)
    }

    fn spawn_command(mut cmd: Command, data_dir: &Path, env: &[(&str, &str)], stderr: Stdio) -> NodeProcess {
        let mut child = cmd
            .env("HEARSAY_NODE__LOG", "warn")
            .env("HEARSAY_P2P__LISTEN", "[\"/ip4/127.0.0.1/tcp/0\"]")
            .env("HEARSAY_HTTP__LISTEN", "127.0.0.1:0")
            .envs(env.iter().copied())
            .env("HEARSAY_NODE__DATA_DIR", data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn node");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("first line");
        let url = line
            .trim()
            .rsplit(' ')
            .next()
            .filter(|u| u.starts_with("http://"))
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_owned();
        NodeProcess { child, url }
    }

    /// SIGTERM, then wait; returns the exit code.
    pub fn terminate(mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        self.child.wait().expect("wait").code()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens a database directly with sled (with the compression it was made with),
/// retrying while a just-closed handle's background flusher still holds the lock.
pub fn raw_open(path: &Path) -> sled::Db {
    let config = || hearsay::store::sled_config(path, &Options::default(), None);
    for _ in 0..40 {
        match config().open() {
            Ok(db) => return db,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
    config().open().expect("raw open")
}

/// A Python with the real client libraries of `tests/requirements.txt` (liblistenbrainz,
/// pylast) installed, in the virtual environment `target/py-venv`, which `.ci/run`
/// prepares and a first local run creates from PyPI. The marker file holds the
/// requirements it was made with, so a change of versions rebuilds it.
pub fn python() -> PathBuf {
    static PY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PY.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let requirements = root.join("tests/requirements.txt");
        let wanted = std::fs::read_to_string(&requirements).expect("tests/requirements.txt");
        let venv = root.join("target/py-venv");
        let py = venv.join("bin/python");
        let marker = venv.join("hearsay-requirements.txt");
        if std::fs::read_to_string(&marker).ok().as_deref() != Some(wanted.as_str()) {
            require("python3", "python3-venv");
            let ok =
                Command::new("python3").args(["-m", "venv"]).arg(&venv).status().expect("python3 -m venv").success();
            assert!(ok, "cannot create a Python virtual environment (Debian: apt-get install python3-venv)");
            let ok = Command::new(&py)
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
                .arg(&requirements)
                .status()
                .expect("pip")
                .success();
            assert!(ok, "cannot install tests/requirements.txt from PyPI into target/py-venv");
            std::fs::write(&marker, &wanted).expect("marker");
        }
        py
    })
    .clone()
}

/// Runs a Python script with arguments; returns its stdout, failing on a non-zero exit.
pub fn run_python(script: &str, args: &[&str]) -> String {
    run_python_env(script, args, &[])
}

/// A data dir with user `alice` (password `password123`) and an API token for her.
pub fn data_with_user(dir: &Path) -> (PathBuf, String) {
    data_with_user_env(dir, &[])
}

/// As `data_with_user`, with config overrides for the commands.
pub fn data_with_user_env(dir: &Path, env: &[(&str, &str)]) -> (PathBuf, String) {
    let data = dir.join("data");
    let pw = dir.join("pw");
    std::fs::write(&pw, "password123\n").expect("pw");
    let (code, _, err) =
        hearsay_with(&data, &["user", "add", "alice", "--password-file", pw.to_str().expect("utf8")], env);
    assert_eq!(code, 0, "{err}");
    // A legacy token: the Audioscrobbler 1.2 and Last.fm authToken tests need its md5.
    let (code, token, err) = hearsay_with(&data, &["token", "new", "alice", "--legacy"], env);
    assert_eq!(code, 0, "{err}");
    (data, token.trim().to_owned())
}

/// A TLS front for a node (socat with a fresh self-signed certificate for 127.0.0.1):
/// pylast only speaks HTTPS. Clients trust it through `SSL_CERT_FILE = cert`.
pub struct TlsProxy {
    child: Child,
    pub host: String,
    pub cert: PathBuf,
}

impl TlsProxy {
    pub fn start(dir: &Path, upstream: &str) -> TlsProxy {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        require("openssl", "openssl");
        require("socat", "socat");
        let ok = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null())
            .status()
            .expect("openssl")
            .success();
        assert!(ok, "openssl could not make a certificate");
        let both = dir.join("both.pem");
        let pem = [std::fs::read(&cert).expect("cert"), std::fs::read(&key).expect("key")].concat();
        std::fs::write(&both, pem).expect("pem");
        let port = free_port();
        let upstream = upstream.trim_start_matches("http://");
        let child = Command::new("socat")
            .arg(format!("OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,verify=0,cert={}", both.display()))
            .arg(format!("TCP:{upstream}"))
            .stderr(Stdio::null())
            .spawn()
            .expect("socat starts");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        TlsProxy { child, host: format!("127.0.0.1:{port}"), cert }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// As `run_python`, with extra environment variables.
pub fn run_python_env(script: &str, args: &[&str], env: &[(&str, &Path)]) -> String {
    let mut cmd = Command::new(python());
    cmd.arg("-c").arg(script).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("python");
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sends only the head of a POST that announces a `content_length`-byte body, and
/// returns the raw response: shows a server refuses an oversized body before it is sent.
pub fn post_head_only(url: &str, path: &str, content_type: &str, content_length: usize, extra: &str) -> String {
    use std::io::{Read, Write};
    let host = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(host).expect("connect");
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("timeout");
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\nContent-Length: {content_length}\r\n{extra}Connection: close\r\n\r\n"
    )
    .expect("write head");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

/// The generator's output for `params`, made once per test process under
/// `target/tmp/fixture-TAG-PID` (directories of finished processes are removed).
pub fn generate_fixture(tag: &str, params: &crate::gen_history::Params) -> crate::gen_history::Fixture {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let prefix = format!("fixture-{tag}-");
    for entry in std::fs::read_dir(base).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let dir = base.join(format!("{prefix}{}", std::process::id()));
    crate::gen_history::generate(&dir, params).expect("the fixture generator writes its files")
}

/// A port free now, below Linux's ephemeral range (32768 and up): a port taken from
/// that range (by binding port 0) can be handed to another test's outgoing connection
/// before the node binds it, and the node then listens nowhere.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(37);
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = u16::try_from(20_000 + seed.wrapping_add(n.wrapping_mul(7)) % 12_000).unwrap_or(20_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The current unix time in seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}
