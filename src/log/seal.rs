//! Seals: the user's ed25519 signature over the chain head.
//!
//! Signing every entry would cost ~25 µs per listen; instead a *seal* signs the chain's
//! link at one position, and because each link commits to every entry before it, one seal
//! vouches for the whole prefix. The store seals the last entry of every block it writes
//! (a block holds at most a few dozen entries), so a batch of 1000 listens costs a few
//! dozen signatures and `verify` can still localise damage to one block. No I/O here.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use super::entry::Hash32;

/// Domain-separation tag prefixed to every seal message (NUL-terminated, never a prefix of
/// libp2p's own signing domains).
pub const SEAL_DST: &[u8] = b"hearsay/v1/log-seal\0";

/// A signature over the chain head at `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seal {
    /// UTC unix seconds when the seal was made (when the entries were appended).
    pub signed_at: i64,
    pub signature: [u8; 64],
}

/// The exact bytes a seal signs: `SEAL_DST ‖ user ‖ seq BE ‖ link ‖ signed_at BE`.
pub fn seal_message(user: &[u8; 32], seq: u64, link: &Hash32, signed_at: i64) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SEAL_DST.len() + 32 + 8 + 32 + 8);
    msg.extend_from_slice(SEAL_DST);
    msg.extend_from_slice(user);
    msg.extend_from_slice(&seq.to_be_bytes());
    msg.extend_from_slice(link);
    msg.extend_from_slice(&signed_at.to_be_bytes());
    msg
}

/// Signs the head at `seq` whose link is `link`.
pub fn make_seal(key: &SigningKey, seq: u64, link: &Hash32, signed_at: i64) -> Seal {
    let user = key.verifying_key().to_bytes();
    let signature = key.sign(&seal_message(&user, seq, link, signed_at)).to_bytes();
    Seal { signed_at, signature }
}

/// Checks one seal strictly (rejects small-order keys and non-canonical signatures).
pub fn check_seal(key: &VerifyingKey, seq: u64, link: &Hash32, seal: &Seal) -> bool {
    let msg = seal_message(key.as_bytes(), seq, link, seal.signed_at);
    key.verify_strict(&msg, &Signature::from_bytes(&seal.signature)).is_ok()
}
