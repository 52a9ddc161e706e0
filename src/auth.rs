//! Credentials: argon2id password hashes and API tokens.
//!
//! Tokens are 122 random bits formatted as a UUID (the shape ListenBrainz tokens have, so
//! clients that check the shape accept them). They are shown once and stored only as
//! their blake3 digest: lookup is by digest, and the digest of a guess reveals nothing
//! about the real token, so lookup timing leaks nothing useful; the final comparison is
//! constant-time anyway.

use std::sync::mpsc;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use subtle::ConstantTimeEq;

/// Shortest accepted password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest accepted password, in bytes (argon2 hashes anything, but bound the work).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Threads that hash and check passwords: every argon2 computation of the process runs
/// on one of them, so at most this many 19 MiB working sets exist at once, and the
/// memory is one buffer per thread, reused (checks allocate nothing; the allocator never
/// sees a 19 MiB block come and go, which made glibc keep one per thread that ever
/// hashed). Callers wait their turn; past `QUEUE` waiting jobs a check is refused as
/// busy at once (a flood of log-ins must not tie up every thread that serves requests).
pub const HASH_THREADS: usize = 2;
const QUEUE: usize = 32;

/// The hashing threads have `QUEUE` jobs waiting already: try again later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("password checks are busy; try again in a moment")]
pub struct Busy;
/// The largest argon2 memory cost checked (64 MiB): a stored hash asking for more is
/// treated as not matching rather than allocated.
const MAX_BLOCKS: usize = 64 * 1024;

enum Job {
    Hash { password: String, reply: mpsc::SyncSender<Result<String, String>> },
    Verify { hash: String, password: String, reply: mpsc::SyncSender<bool> },
}

fn pool() -> Option<&'static mpsc::SyncSender<Job>> {
    static POOL: std::sync::OnceLock<Option<mpsc::SyncSender<Job>>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for i in 0..HASH_THREADS {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new().name(format!("hearsay-argon2-{i}")).spawn(move || {
                let mut blocks: Vec<Block> = Vec::new();
                loop {
                    let job = match rx.lock() {
                        Ok(guard) => guard.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(Job::Hash { password, reply }) => {
                            let _ = reply.send(hash_now(&password));
                        }
                        Ok(Job::Verify { hash, password, reply }) => {
                            let _ = reply.send(verify_now(&mut blocks, &hash, password.as_bytes()));
                        }
                        Err(_) => return,
                    }
                }
            });
            if spawned.is_err() {
                return None;
            }
        }
        Some(tx)
    })
    .as_ref()
}

/// Hashes a password with argon2id (the crate's defaults: 19 MiB, 2 passes, OWASP's
/// recommendation) into a PHC string, on one of the hashing threads.
pub fn hash_password(password: &str) -> Result<String, String> {
    let Some(pool) = pool() else { return hash_now(password) };
    let (reply, answer) = mpsc::sync_channel(1);
    pool.try_send(Job::Hash { password: password.to_owned(), reply }).map_err(|_| Busy.to_string())?;
    answer.recv().map_err(|e| e.to_string())?
}

/// Whether `password` matches the PHC `hash`, checked on one of the hashing threads;
/// `Err(Busy)` when too many checks wait already. A malformed hash never matches.
pub fn verify_password(hash: &str, password: &str) -> Result<bool, Busy> {
    let Some(pool) = pool() else { return Ok(verify_now(&mut Vec::new(), hash, password.as_bytes())) };
    let (reply, answer) = mpsc::sync_channel(1);
    let job = Job::Verify { hash: hash.to_owned(), password: password.to_owned(), reply };
    pool.try_send(job).map_err(|_| Busy)?;
    Ok(answer.recv().unwrap_or(false))
}

fn hash_now(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
}

/// Checks `password` against a PHC argon2 hash in the caller's reusable `blocks`.
fn verify_now(blocks: &mut Vec<Block>, hash: &str, password: &[u8]) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else { return false };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else { return false };
    let version = match parsed.version.map(Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let (Ok(params), Some(expected), Some(salt)) = (Params::try_from(&parsed), parsed.hash, parsed.salt) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else { return false };
    let needed = params.block_count();
    if needed > MAX_BLOCKS {
        return false;
    }
    if blocks.len() < needed {
        blocks.resize(needed, Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    let ok = Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password, salt, &mut out, &mut blocks[..needed])
        .is_ok();
    ok && bool::from(out.as_slice().ct_eq(expected.as_bytes()))
}

/// Does the work of one password check against a throw-away hash, so that a log-in
/// attempt for an unknown user takes as long as one with a wrong password.
pub fn equalise_timing(password: &str) {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let hash = DUMMY.get_or_init(|| hash_password("hearsay-timing-dummy").unwrap_or_default());
    let _ = verify_password(hash, password);
}

/// A fresh API token.
pub fn new_token() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).map_err(|e| e.to_string())?;
    Ok(uuid::Builder::from_random_bytes(bytes).into_uuid().hyphenated().to_string())
}

/// The digest under which a token is stored. Tokens are compared case-insensitively
/// (clients sometimes upper-case UUIDs), so the digest is of the lower-case form.
pub fn token_digest(token: &str) -> [u8; 32] {
    blake3::derive_key("hearsay 2026-11-23 api token v1", token.trim().to_ascii_lowercase().as_bytes())
}

/// The digest under which a Last.fm-style session key is stored.
pub fn session_digest(key: &str) -> [u8; 32] {
    blake3::derive_key("hearsay 2026-11-23 session key v1", key.trim().to_ascii_lowercase().as_bytes())
}

/// Lower-case hex md5, as the legacy scrobbler protocols use it.
pub fn md5_hex(data: &[u8]) -> String {
    hex::encode(<md5::Md5 as md5::Digest>::digest(data))
}

/// Constant-time equality of two strings of equal length (false when lengths differ).
pub fn strings_equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Constant-time equality of two digests.
pub fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

/// Fresh random bytes from the OS.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], String> {
    let mut bytes = [0u8; N];
    getrandom::getrandom(&mut bytes).map_err(|e| e.to_string())?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_and_wrong_ones_do_not() {
        let h = hash_password("correct horse").expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert_eq!(verify_password(&h, "correct horse"), Ok(true));
        assert_eq!(verify_password(&h, "correct horsf"), Ok(false));
        assert_eq!(verify_password("garbage", "correct horse"), Ok(false));
    }

    #[test]
    fn the_reused_memory_check_agrees_with_argon2s_own_for_any_parameters() {
        use argon2::PasswordVerifier;
        let mut blocks = Vec::new();
        for (algorithm, m, t, p, len) in [
            (Algorithm::Argon2id, 19_456, 2, 1, 32),
            (Algorithm::Argon2id, 4096, 3, 2, 16),
            (Algorithm::Argon2i, 8, 1, 1, 64),
        ] {
            let params = Params::new(m, t, p, Some(len)).expect("params");
            let salt = SaltString::generate(&mut OsRng);
            let h = Argon2::new(algorithm, Version::V0x13, params)
                .hash_password(b"pw one", &salt)
                .expect("hash")
                .to_string();
            let parsed = PasswordHash::new(&h).expect("parse");
            assert!(Argon2::default().verify_password(b"pw one", &parsed).is_ok());
            assert!(verify_now(&mut blocks, &h, b"pw one"), "{h}");
            assert!(!verify_now(&mut blocks, &h, b"pw two"), "{h}");
        }
        // A stored hash asking for a huge memory cost is not allocated.
        let huge =
            "$argon2id$v=19$m=4194304,t=1,p=1$c29tZXNhbHRzb21lc2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert!(!verify_now(&mut blocks, huge, b"x"));
        assert!(blocks.len() <= MAX_BLOCKS);
    }

    #[test]
    fn tokens_are_uuid_shaped_and_unique() {
        let a = new_token().expect("token");
        let b = new_token().expect("token");
        assert_ne!(a, b);
        assert!(uuid::Uuid::parse_str(&a).is_ok());
        assert!(digests_equal(&token_digest(&a), &token_digest(&a.to_uppercase())));
        assert!(!digests_equal(&token_digest(&a), &token_digest(&b)));
    }
}
