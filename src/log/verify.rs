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
    #[error("entry {found} follows entry {expected_prev}: the sequence has a gap or is out of order")]
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
            self.fail(VerifyError::Sequence { expected_prev, found: seq });
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
        self.seals.push(PendingSeal { seq, from: self.first_unsealed, link: self.link, seal });
        self.first_unsealed = seq + 1;
    }

    /// Checks every seal and returns the first problem found, by position.
    pub fn finish(mut self) -> Result<Verified, VerifyError> {
        let bad_seal = self.first_bad_seal();
        // Prefer whichever problem comes first in the log: a changed entry makes the seal
        // after it fail too, and the entry is the more useful thing to name.
        let error = match (self.first_error.take(), bad_seal) {
            (Some(e), Some(s)) => Some(if error_position(&e) <= error_position(&s) { e } else { s }),
            (e, s) => e.or(s),
        };
        if let Some(e) = error {
            return Err(e);
        }
        if self.first_unsealed < self.next_seq {
            return Err(VerifyError::Unsealed { from: self.first_unsealed, to: self.next_seq - 1 });
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
        let messages: Vec<Vec<u8>> =
            self.seals.iter().map(|p| seal_message(&self.user, p.seq, &p.link, p.seal.signed_at)).collect();
        let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        let sigs: Vec<Signature> = self.seals.iter().map(|p| Signature::from_bytes(&p.seal.signature)).collect();
        let keys = vec![self.key; self.seals.len()];
        if ed25519_dalek::verify_batch(&refs, &sigs, &keys).is_ok() {
            return None;
        }
        self.seals
            .iter()
            .find(|p| !check_seal(&self.key, p.seq, &p.link, &p.seal))
            .map(|p| VerifyError::Seal { seq: p.seq, from: p.from })
            // Batch verification can reject what single strict verification accepts only
            // for malformed signatures; name the first seal then.
            .or_else(|| self.seals.first().map(|p| VerifyError::Seal { seq: p.seq, from: p.from }))
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

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;
    use proptest::prelude::*;

    use super::*;
    use crate::log::entry::{Body, content_hash};
    use crate::log::listen::TrackRef;
    use crate::log::seal::make_seal;

    fn track(i: u8) -> TrackRef {
        TrackRef {
            artist: format!("Artist {i}"),
            artist_names: vec![],
            artist_mbids: vec![],
            title: format!("Title {i}"),
            album: i.is_multiple_of(2).then(|| "Album".to_string()),
            recording_mbid: None,
            release_mbid: None,
        }
    }

    /// A log as a verifier sees it: entries with checks, and seals after some of them.
    struct TestLog {
        key: SigningKey,
        entries: Vec<(Content, [u8; 4])>,
        seals: Vec<(u64, Seal)>,
    }

    fn build(bodies: &[(u8, u8)], seal_every: usize) -> TestLog {
        let key = SigningKey::from_bytes(&[42; 32]);
        let user = key.verifying_key().to_bytes();
        let mut link = genesis_link(&user);
        let mut entries = Vec::new();
        let mut seals = Vec::new();
        for (seq, (kind, t)) in bodies.iter().enumerate() {
            let seq = seq as u64;
            let body = match kind % 3 {
                0 => Body::Listen {
                    track: track(*t),
                    listened_at: 1_600_000_000 + i64::from(*t),
                    duration_ms: None,
                    client: None,
                },
                1 => Body::Love(track(*t)),
                _ => Body::Unlove(track(*t)),
            };
            let salt = [*t; 16];
            link = next_link(&link, seq, &content_hash(&user, seq, &salt, body.borrowed()));
            entries.push((Content::Present { salt, body }, check_of(&link)));
            if (seq as usize + 1).is_multiple_of(seal_every) || seq as usize + 1 == bodies.len() {
                seals.push((seq, make_seal(&key, seq, &link, 1_700_000_000)));
            }
        }
        TestLog { key, entries, seals }
    }

    fn run(log: &TestLog) -> Result<Verified, VerifyError> {
        let mut v = Verifier::new(&log.key.verifying_key().to_bytes())?;
        let mut seals = log.seals.iter().peekable();
        for (seq, (content, check)) in log.entries.iter().enumerate() {
            v.entry(seq as u64, content, *check);
            while let Some((s, seal)) = seals.next_if(|(s, _)| *s == seq as u64) {
                v.seal(*s, *seal);
            }
        }
        v.finish()
    }

    fn bodies() -> impl Strategy<Value = Vec<(u8, u8)>> {
        proptest::collection::vec((any::<u8>(), any::<u8>()), 1..80)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn an_honest_log_verifies(bodies in bodies(), seal_every in 1usize..70) {
            let log = build(&bodies, seal_every);
            let v = run(&log).expect("verifies");
            prop_assert_eq!(v.n_entries, bodies.len() as u64);
        }

        #[test]
        fn erasing_any_entries_keeps_it_verifying(bodies in bodies(), erase in proptest::collection::vec(any::<prop::sample::Index>(), 0..10)) {
            let mut log = build(&bodies, 16);
            let user = log.key.verifying_key().to_bytes();
            for i in erase {
                let seq = i.index(log.entries.len());
                let hash = log.entries[seq].0.hash(&user, seq as u64);
                log.entries[seq].0 = Content::Erased { content_hash: hash };
            }
            prop_assert!(run(&log).is_ok());
        }

        #[test]
        fn a_changed_entry_is_named(bodies in bodies(), pick in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut log = build(&bodies, 16);
            let seq = pick.index(log.entries.len());
            if let Content::Present { salt, .. } = &mut log.entries[seq].0 {
                salt[0] ^= 1 << bit;
            }
            prop_assert_eq!(run(&log), Err(VerifyError::Entry { seq: seq as u64 }));
        }

        #[test]
        fn a_forged_seal_is_named(bodies in bodies(), pick in any::<prop::sample::Index>(), byte in 0usize..64) {
            let mut log = build(&bodies, 8);
            let i = pick.index(log.seals.len());
            log.seals[i].1.signature[byte] ^= 0x80;
            let (seq, _) = log.seals[i];
            let named = matches!(run(&log), Err(VerifyError::Seal { seq: s, .. }) if s == seq);
            prop_assert!(named, "seal at {} not named", seq);
        }
    }

    #[test]
    fn an_unsealed_tail_or_a_gap_is_refused() {
        let mut log = build(&[(0, 1), (1, 2), (0, 3)], 100);
        log.seals.clear();
        assert_eq!(run(&log), Err(VerifyError::Unsealed { from: 0, to: 2 }));

        let log = build(&[(0, 1), (1, 2), (0, 3)], 1);
        let mut v = Verifier::new(&log.key.verifying_key().to_bytes()).expect("key");
        v.entry(0, &log.entries[0].0, log.entries[0].1);
        v.entry(2, &log.entries[2].0, log.entries[2].1);
        assert_eq!(v.finish(), Err(VerifyError::Sequence { expected_prev: 0, found: 2 }));
    }

    #[test]
    fn a_seal_by_another_key_fails() {
        let mut log = build(&[(0, 1), (0, 2)], 100);
        let other = SigningKey::from_bytes(&[7; 32]);
        let user = log.key.verifying_key().to_bytes();
        let link = next_link(
            &next_link(&genesis_link(&user), 0, &log.entries[0].0.hash(&user, 0)),
            1,
            &log.entries[1].0.hash(&user, 1),
        );
        log.seals = vec![(1, make_seal(&other, 1, &link, 1))];
        assert_eq!(run(&log), Err(VerifyError::Seal { seq: 1, from: 0 }));
    }

    #[test]
    fn weak_keys_are_refused() {
        // The identity point (small order) encoded as a public key.
        let mut weak = [0u8; 32];
        weak[0] = 1;
        assert!(matches!(Verifier::new(&weak), Err(VerifyError::BadKey)));
    }
}
