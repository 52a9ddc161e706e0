//! Verification of a whole log: recompute the chain, check every seal.
//!
//! `Verifier` is fed entries and seals in `seq` order (streaming, so a log of millions of
//! entries needs memory only for its seals) and reports the *first* problem by position.
//! Seals are checked with ed25519 batch verification; if the batch fails, each seal is
//! checked alone to name the first bad one. No I/O here.

use ed25519_dalek::{Signature, VerifyingKey};

use super::entry::{Content, Hash32, check_of, genesis_link, next_link};
use super::seal::{Seal, check_seal, seal_message};

/// The first thing wrong with a log, by position.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the user's public key is not a valid ed25519 key or is a weak key")]
    BadKey,
    #[error(
        "entry {found} follows entry {expected_prev}: the sequence has a gap or is out of order"
    )]
    Sequence { expected_prev: u64, found: u64 },
    #[error("entry {seq}: stored bytes do not match the chain (changed on disk or in transit)")]
    Entry { seq: u64 },
    #[error("entry {seq}: unreadable: {reason}")]
    Unreadable { seq: u64, reason: String },
    #[error("seal at entry {seq} does not verify: entries {from}..={seq} are not vouched for")]
    Seal { seq: u64, from: u64 },
    #[error("a seal at entry {seq} has no entry at that position")]
    DanglingSeal { seq: u64 },
    #[error("entries {from}..={to} are not covered by any seal")]
    Unsealed { from: u64, to: u64 },
}

/// What a successful verification saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub n_entries: u64,
    pub n_erased: u64,
    pub n_seals: u64,
    /// The link of the last entry (the chain head), or the genesis link for an empty log.
    pub head: Hash32,
}

struct PendingSeal {
    seq: u64,
    from: u64,
    link: Hash32,
    seal: Seal,
}

/// Streaming verifier of one user's log.
pub struct Verifier {
    key: VerifyingKey,
    user: [u8; 32],
    link: Hash32,
    next_seq: u64,
    first_unsealed: u64,
    n_erased: u64,
    seals: Vec<PendingSeal>,
    first_error: Option<VerifyError>,
}

impl Verifier {
    pub fn new(user: &[u8; 32]) -> Result<Verifier, VerifyError> {
        let key = VerifyingKey::from_bytes(user).map_err(|_| VerifyError::BadKey)?;
        if key.is_weak() {
            return Err(VerifyError::BadKey);
        }
        Ok(Verifier {
            key,
            user: *user,
            link: genesis_link(user),
            next_seq: 0,
            first_unsealed: 0,
            n_erased: 0,
            seals: Vec::new(),
            first_error: None,
        })
    }

    fn fail(&mut self, error: VerifyError) {
        if self.first_error.is_none() {
            self.first_error = Some(error);
        }
    }

    /// Feeds the next entry. `check` is the short check stored beside it.
    pub fn entry(&mut self, seq: u64, content: &Content, check: [u8; 4]) {
        if seq != self.next_seq {
            let expected_prev = self.next_seq.wrapping_sub(1);
            self.fail(VerifyError::Sequence {
                expected_prev,
                found: seq,
            });
        }
        let hash = content.hash(&self.user, seq);
        self.link = next_link(&self.link, seq, &hash);
        if check_of(&self.link) != check {
            self.fail(VerifyError::Entry { seq });
        }
        if matches!(content, Content::Erased { .. }) {
            self.n_erased += 1;
        }
        self.next_seq = seq.saturating_add(1);
    }

    /// Reports an entry that could not even be decoded.
    pub fn unreadable(&mut self, seq: u64, reason: String) {
        self.fail(VerifyError::Unreadable { seq, reason });
    }

    /// Feeds a seal over the entry most recently fed, which must be `seq`.
    pub fn seal(&mut self, seq: u64, seal: Seal) {
        if self.next_seq == 0 || seq != self.next_seq - 1 {
            self.fail(VerifyError::DanglingSeal { seq });
            return;
        }
        self.seals.push(PendingSeal {
            seq,
            from: self.first_unsealed,
            link: self.link,
            seal,
        });
        self.first_unsealed = seq + 1;
    }

    /// Checks every seal and returns the first problem found, by position.
    pub fn finish(mut self) -> Result<Verified, VerifyError> {
        let bad_seal = self.first_bad_seal();
        // Prefer whichever problem comes first in the log: a changed entry makes the seal
        // after it fail too, and the entry is the more useful thing to name.
        let error = match (self.first_error.take(), bad_seal) {
            (Some(e), Some(s)) => Some(if error_position(&e) <= error_position(&s) {
                e
            } else {
                s
            }),
            (e, s) => e.or(s),
        };
        if let Some(e) = error {
            return Err(e);
        }
        if self.first_unsealed < self.next_seq {
            return Err(VerifyError::Unsealed {
                from: self.first_unsealed,
                to: self.next_seq - 1,
            });
        }
        Ok(Verified {
            n_entries: self.next_seq,
            n_erased: self.n_erased,
            n_seals: self.seals.len() as u64,
            head: self.link,
        })
    }

    fn first_bad_seal(&self) -> Option<VerifyError> {
        if self.seals.is_empty() {
            return None;
        }
        let messages: Vec<Vec<u8>> = self
            .seals
            .iter()
            .map(|p| seal_message(&self.user, p.seq, &p.link, p.seal.signed_at))
            .collect();
        let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        let sigs: Vec<Signature> = self
            .seals
            .iter()
            .map(|p| Signature::from_bytes(&p.seal.signature))
            .collect();
        let keys = vec![self.key; self.seals.len()];
        if ed25519_dalek::verify_batch(&refs, &sigs, &keys).is_ok() {
            return None;
        }
        self.seals
            .iter()
            .find(|p| !check_seal(&self.key, p.seq, &p.link, &p.seal))
            .map(|p| VerifyError::Seal {
                seq: p.seq,
                from: p.from,
            })
            // Batch verification can reject what single strict verification accepts only
            // for malformed signatures; name the first seal then.
            .or_else(|| {
                self.seals.first().map(|p| VerifyError::Seal {
                    seq: p.seq,
                    from: p.from,
                })
            })
    }
}

fn error_position(e: &VerifyError) -> u64 {
    match e {
        VerifyError::BadKey => 0,
        VerifyError::Sequence { found, .. } => *found,
        VerifyError::Entry { seq } | VerifyError::Unreadable { seq, .. } => *seq,
        // A seal is placed at its last entry, so a changed entry inside its range is
        // reported before the seal that it broke.
        VerifyError::Seal { seq, .. } => *seq,
        VerifyError::DanglingSeal { seq } => *seq,
        VerifyError::Unsealed { from, .. } => *from,
    }
}
