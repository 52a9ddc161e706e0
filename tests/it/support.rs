//! Helpers shared by the integration tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use hearsay::log::{Listen, RawListen};
use hearsay::store::{Ingestor, Options, Store, UserId};

pub const NOW: i64 = 1_760_000_000;

/// A validated listen, through the one constructor.
pub fn listen(artist: &str, title: &str, at: i64) -> Listen {
    let raw = RawListen {
        artist: artist.as_bytes(),
        title: title.as_bytes(),
        album: Some(b"An Album".as_slice()),
        listened_at: at,
        duration_ms: Some(200_000),
        client: Some(b"it".as_slice()),
        ..RawListen::default()
    };
    Listen::parse(&raw, NOW).expect("valid test listen")
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
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), &Options { cache_mb: 8 }).expect("open");
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
        let store = Store::open(dir.path(), &Options { cache_mb: 8 }).expect("reopen");
        let user = store.user_by_name("alice").expect("lookup").expect("alice").id;
        let ingestor = Ingestor::start(store.clone(), 10_000, Default::default()).expect("writer");
        TestStore { dir, store, ingestor, user }
    }
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hearsay"))
}

/// `hearsay ARGS` with its data in `data_dir`; returns (status code, stdout, stderr).
pub fn hearsay(data_dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env("HEARSAY_NODE__DATA_DIR", data_dir)
        .env("HEARSAY_NODE__LOG", "warn")
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
        let mut child = Command::new(bin())
            .env("HEARSAY_NODE__DATA_DIR", data_dir)
            .env("HEARSAY_HTTP__LISTEN", "127.0.0.1:0")
            .env("HEARSAY_NODE__LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
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

/// Opens a database directly with sled, retrying while a just-closed handle's
/// background flusher still holds the lock.
pub fn raw_open(path: &Path) -> sled::Db {
    for _ in 0..40 {
        match sled::open(path) {
            Ok(db) => return db,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
    sled::open(path).expect("raw open")
}
