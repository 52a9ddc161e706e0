//! Signed envelopes, pure: `SignedV1 { signer, body, sig }` with
//! `sig = Ed25519(signer, DST ‖ body)` under a domain-separation tag per kind of message
//! (release snapshots, community manifests), canonical postcard encoding, and the checked
//! opening of a received snapshot. Used by `identity` (which holds the node's key and
//! signs) and by `federation` and `store` (which open what peers send).

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::privacy::snapshot::{DecodeError, MAX_SNAPSHOT_BYTES, SnapshotV1};

/// Domain-separation tag of snapshot signatures: NUL-terminated, so it can never be a
/// prefix of libp2p's own signing domains or of another hearsay tag.
pub const DST_SNAPSHOT: &[u8] = b"hearsay/v1/chart-snapshot\0";
/// Largest signed envelope accepted: the snapshot limit plus key, signature and lengths.
pub const MAX_SIGNED_BYTES: usize = MAX_SNAPSHOT_BYTES + 128;

/// A signed message: `sig = Ed25519(signer, DST ‖ body)`. The body bytes are signed
/// and shipped as they are; receivers verify them before decoding them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedV1 {
    pub signer: [u8; 32],
    pub body: Vec<u8>,
    /// 64 bytes (a `Vec` because serde has no 64-byte arrays).
    pub sig: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("signed message of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("signed message does not decode canonically")]
    Malformed,
    #[error("bad signature")]
    BadSignature,
    #[error("snapshot origin is not its signer")]
    WrongOrigin,
    #[error(transparent)]
    Snapshot(#[from] DecodeError),
}

/// Domain-separation tag of community manifest signatures.
pub const DST_MANIFEST: &[u8] = b"hearsay/v1/community-manifest\0";

/// Domain-separation tag of community results (`federation::result`).
pub const DST_RESULT: &[u8] = b"hearsay/v1/community-result\0";

/// Domain-separation tags of secure aggregation (`federation::secagg`): the leader's
/// round announcement, and a secure result (signed by both aggregators).
pub const DST_SECURE_ROUND: &[u8] = b"hearsay/v1/secure-round\0";
pub const DST_SECURE_RESULT: &[u8] = b"hearsay/v1/secure-result\0";

/// Signs `body` under `dst` with `key`; returns the canonical envelope bytes.
pub fn seal(key: &SigningKey, dst: &[u8], body: Vec<u8>) -> Vec<u8> {
    let mut msg = dst.to_vec();
    msg.extend_from_slice(&body);
    let sig = key.sign(&msg).to_bytes().to_vec();
    let env = SignedV1 { signer: key.verifying_key().to_bytes(), body, sig };
    postcard::to_allocvec(&env).unwrap_or_default()
}

/// Decodes an envelope canonically and verifies its signature under `dst` (strict).
/// Checks size first; `max` bounds the whole envelope.
pub fn open_signed(bytes: &[u8], dst: &[u8], max: usize) -> Result<SignedV1, OpenError> {
    let env = peek_signed(bytes, max)?;
    verify_signed(&env, dst)?;
    Ok(env)
}

/// The envelope, decoded canonically but **not yet verified** (to check cheap things,
/// such as whether the claimed signer is a member, before the signature).
pub fn peek_signed(bytes: &[u8], max: usize) -> Result<SignedV1, OpenError> {
    match split_signed(bytes, max)? {
        (env, []) => Ok(env),
        _ => Err(OpenError::Malformed),
    }
}

/// An envelope at the start of `bytes`, decoded canonically but not yet verified, and
/// what follows it (a manifest's co-signatures). `max` bounds all of `bytes`.
pub fn split_signed(bytes: &[u8], max: usize) -> Result<(SignedV1, &[u8]), OpenError> {
    if bytes.len() > max {
        return Err(OpenError::TooLarge(bytes.len()));
    }
    let Ok((env, rest)) = postcard::take_from_bytes::<SignedV1>(bytes) else {
        return Err(OpenError::Malformed);
    };
    let used = bytes.len() - rest.len();
    if postcard::to_allocvec(&env).ok().as_deref() != bytes.get(..used) {
        return Err(OpenError::Malformed);
    }
    Ok((env, rest))
}

/// A signature by `key` over `dst ‖ body` alone (64 bytes), for a co-signature of a
/// body another key sealed.
pub fn sign_detached(key: &SigningKey, dst: &[u8], body: &[u8]) -> Vec<u8> {
    let mut msg = dst.to_vec();
    msg.extend_from_slice(body);
    key.sign(&msg).to_bytes().to_vec()
}

/// Verifies a peeked envelope's signature under `dst`.
pub fn verify_signed(env: &SignedV1, dst: &[u8]) -> Result<(), OpenError> {
    verify_detached(&env.signer, dst, &env.body, &env.sig)
}

/// Verifies `sig` by `signer` over `dst ‖ body` (strict).
pub fn verify_detached(signer: &[u8; 32], dst: &[u8], body: &[u8], sig: &[u8]) -> Result<(), OpenError> {
    let key = VerifyingKey::from_bytes(signer).map_err(|_| OpenError::BadSignature)?;
    let sig = Signature::from_slice(sig).map_err(|_| OpenError::BadSignature)?;
    let mut msg = dst.to_vec();
    msg.extend_from_slice(body);
    key.verify_strict(&msg, &sig).map_err(|_| OpenError::BadSignature)
}

/// Checks an envelope, cheapest first: size, canonical decoding, strict signature
/// (`verify_strict`: no small-order keys, no malleable signatures), then the snapshot's
/// own canonical decoding and consistency, and that its origin is the signer.
pub fn open_snapshot(bytes: &[u8]) -> Result<(SignedV1, SnapshotV1), OpenError> {
    let env = open_signed(bytes, DST_SNAPSHOT, MAX_SIGNED_BYTES)?;
    let snap = SnapshotV1::decode(&env.body)?;
    if snap.origin != env.signer {
        return Err(OpenError::WrongOrigin);
    }
    Ok((env, snap))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = super::open_snapshot(&bytes);
        }
    }
}
