//! Credentials: argon2id password hashes and API tokens.
//!
//! Tokens are 122 random bits formatted as a UUID (the shape ListenBrainz tokens have, so
//! clients that check the shape accept them). They are shown once and stored only as
//! their blake3 digest: lookup is by digest, and the digest of a guess reveals nothing
//! about the real token, so lookup timing leaks nothing useful; the final comparison is
//! constant-time anyway.

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use subtle::ConstantTimeEq;

/// Shortest accepted password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest accepted password, in bytes (argon2 hashes anything, but bound the work).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Hashes a password with argon2id (the crate's defaults: 19 MiB, 2 passes, OWASP's
/// recommendation) into a PHC string.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
}

/// True when `password` matches the PHC `hash`. A malformed hash never matches.
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
        .unwrap_or(false)
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
        assert!(verify_password(&h, "correct horse"));
        assert!(!verify_password(&h, "correct horsf"));
        assert!(!verify_password("garbage", "correct horse"));
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
