//! The signed listening log: pure domain logic, no I/O, no clock, no global RNG.
//!
//! - `listen`: the validated `Listen` and its one constructor `Listen::parse`;
//! - `entry`: log entries, their canonical bytes and the blake3 hash chain;
//! - `seal`: ed25519 signatures over chain heads;
//! - `verify`: streaming verification of a whole log;
//! - `dedupe`: the duplicate rule and name normalisation.
//!
//! `docs/protocol.md` specifies the bytes precisely enough for an independent verifier.

pub mod dedupe;
pub mod entry;
pub mod listen;
pub mod seal;
pub mod verify;

pub use entry::{Body, Content, Hash32, Salt};
pub use listen::{Listen, ListenError, RawListen, TrackRef};
pub use seal::Seal;
pub use verify::{Verified, Verifier, VerifyError};
