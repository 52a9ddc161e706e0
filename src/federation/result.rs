//! Signed merged results, pure: a community's chart for one period as one of its
//! administrators merged it from its members' snapshots, with the snapshots it merged
//! named. A node that follows a community only through a federation link takes its
//! result instead of every member's snapshot, so what a node receives per period grows
//! with its own community and its links, not with every origin of the network.
//!
//! Trust: a result is as honest as the administrator who signed it (the administrators
//! are trusted with the community's manifest already); the community's members, who
//! hold the snapshots, recompute every result they can (`verify`) and keep a result
//! that differs as evidence against its signer (shown on `/network`, left out of their
//! charts). A node that holds only the result cannot check it.

use serde::{Deserialize, Serialize};

use super::community::ManifestV1;
use super::merge::{Chart, Held, MAX_ROWS, PeriodState, community_chart};
use super::validate::MAX_SKEW_SECS;
use super::{CommunityId, NodeId};
use crate::envelope::{DST_RESULT, OpenError, SignedV1, peek_signed, verify_signed};

pub const SCHEMA: u16 = 1;
/// Largest result body: its signed envelope stays under gossip's 64 KiB.
pub const MAX_RESULT_BYTES: usize = 60 * 1024;
/// Largest signed result.
pub const MAX_SIGNED_RESULT_BYTES: usize = MAX_RESULT_BYTES + 128;

/// One merged snapshot: the member's index in the manifest version the result names,
/// and the first 16 bytes of blake3 of the snapshot's signed bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Input {
    pub member: u16,
    pub hash: [u8; 16],
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultV1 {
    pub schema: u16,
    pub community: CommunityId,
    /// The manifest version whose members, weights, policy and floor it merged under,
    /// and blake3 of that version's body (so a node that took another branch of a
    /// forked history does not judge it by the wrong members).
    pub manifest_version: u32,
    pub manifest_hash: [u8; 32],
    pub period_start: i64,
    pub period_secs: u32,
    pub issued_at: i64,
    /// Sorted by member, one per member at most.
    pub inputs: Vec<Input>,
    /// `community_chart` over exactly the inputs (members only: `corroborating` 0),
    /// `origins` = the number of inputs.
    pub chart: Chart,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResultError {
    #[error("result of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("result does not decode canonically: {0}")]
    Malformed(String),
    #[error("unknown result schema {0}")]
    UnknownSchema(u16),
    #[error("result is inconsistent: {0}")]
    Invalid(String),
    #[error(transparent)]
    Open(#[from] OpenError),
}

/// How a member's recomputation compares with a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verification {
    /// The listed snapshots, merged under the named manifest, give exactly this chart.
    Matches,
    /// They give another chart: the signer signed a wrong result.
    Differs,
    /// Some listed snapshot is not held here: not checked.
    Incomplete,
}

impl ResultV1 {
    pub fn encode(&self) -> Vec<u8> {
        // Plain structs of integers, strings and vectors: serialising cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Size first, then canonical decoding, schema and internal consistency.
    pub fn decode(bytes: &[u8]) -> Result<ResultV1, ResultError> {
        if bytes.len() > MAX_RESULT_BYTES {
            return Err(ResultError::TooLarge(bytes.len()));
        }
        let (schema, _) = postcard::take_from_bytes::<u16>(bytes).map_err(|e| ResultError::Malformed(e.to_string()))?;
        if schema != SCHEMA {
            return Err(ResultError::UnknownSchema(schema));
        }
        let r: ResultV1 = postcard::from_bytes(bytes).map_err(|e| ResultError::Malformed(e.to_string()))?;
        if r.encode() != bytes {
            return Err(ResultError::Malformed("not canonical".into()));
        }
        r.consistent()?;
        Ok(r)
    }

    fn consistent(&self) -> Result<(), ResultError> {
        let bad = |m: &str| Err(ResultError::Invalid(m.into()));
        if self.inputs.is_empty() {
            return bad("no inputs");
        }
        if self.inputs.windows(2).any(|w| w[0].member >= w[1].member) {
            return bad("inputs not sorted by member, or a member twice");
        }
        let n = u32::try_from(self.inputs.len()).unwrap_or(u32::MAX);
        if self.chart.origins != n || self.chart.corroborating != 0 {
            return bad("origins are not the inputs");
        }
        for rows in [&self.chart.artists, &self.chart.tracks] {
            if rows.len() > MAX_ROWS {
                return bad("too many rows");
            }
            if rows.iter().any(|r| r.origins == 0 || r.origins > n || r.corroborating != 0 || r.listeners <= 0) {
                return bad("a row's origins or listeners are out of range");
            }
            if rows.iter().any(|r| r.name.id() != r.item) {
                return bad("a row's item is not its name's");
            }
            let mut items: Vec<_> = rows.iter().map(|r| r.item).collect();
            items.sort_unstable();
            if items.windows(2).any(|w| w[0] == w[1]) {
                return bad("an item twice");
            }
        }
        Ok(())
    }

    /// The result of `manifest`'s community for a period from what `state` holds: every
    /// member's effective snapshot that the community counts (it names the community,
    /// meets its floor, has a weight), merged without probation (members are listed by
    /// the administrators). `None` when no member's snapshot counts.
    pub fn of(
        manifest: &ManifestV1,
        state: &PeriodState,
        period_start: i64,
        period_secs: u32,
        issued_at: i64,
    ) -> Option<ResultV1> {
        let id = manifest.community();
        let mut inputs = Vec::new();
        let mut merged = PeriodState::default();
        for (origin, snapshot) in state.effective() {
            let Some(index) = manifest.members.iter().position(|m| m.node == *origin) else { continue };
            let counts = snapshot.communities.contains(&id)
                && super::validate::meets_floor(snapshot, &manifest.floor)
                && manifest.weight(origin).is_some_and(|w| w > 0)
                && snapshot.period_start == period_start
                && snapshot.period_secs == period_secs;
            if !counts {
                continue;
            }
            let Some(((version, hash), _)) = state.by_origin.get(origin).and_then(|v| v.iter().next_back()) else {
                continue;
            };
            let mut short = [0u8; 16];
            short.copy_from_slice(&hash[..16]);
            inputs.push(Input { member: u16::try_from(index).ok()?, hash: short });
            merged.insert(Held { version: *version, hash: *hash, snapshot: snapshot.clone() });
        }
        if inputs.is_empty() {
            return None;
        }
        inputs.sort();
        let r = ResultV1 {
            schema: SCHEMA,
            community: id,
            manifest_version: manifest.version,
            manifest_hash: manifest.body_hash(),
            period_start,
            period_secs,
            issued_at,
            inputs,
            chart: merged_chart(manifest, &merged),
        };
        // Fits by construction (`the_largest_result_fits_one_message`).
        (r.encode().len() <= MAX_RESULT_BYTES).then_some(r)
    }

    /// The merged origins, by node id (inputs name members of the manifest version).
    pub fn input_nodes(&self, manifest: &ManifestV1) -> Vec<NodeId> {
        self.inputs.iter().filter_map(|i| manifest.members.get(usize::from(i.member)).map(|m| m.node)).collect()
    }

    /// Recomputes this result from the snapshots `held` for its period under `manifest`
    /// (the version it names) and compares.
    pub fn verify(&self, manifest: &ManifestV1, held: &PeriodState) -> Verification {
        let mut merged = PeriodState::default();
        for input in &self.inputs {
            let Some(member) = manifest.members.get(usize::from(input.member)) else {
                return Verification::Differs;
            };
            let found = held.by_origin.get(&member.node).and_then(|versions| {
                versions.iter().find(|((_, h), _)| h[..16] == input.hash).map(|((v, h), s)| (*v, *h, s.clone()))
            });
            let Some((version, hash, snapshot)) = found else {
                return Verification::Incomplete;
            };
            merged.insert(Held { version, hash, snapshot });
        }
        let mut expected = self.clone();
        expected.chart = merged_chart(manifest, &merged);
        if expected.chart == self.chart { Verification::Matches } else { Verification::Differs }
    }
}

/// The members' chart over exactly `merged` (no probation; nothing else corroborates).
fn merged_chart(manifest: &ManifestV1, merged: &PeriodState) -> Chart {
    community_chart(manifest, merged, |_| u32::MAX)
}

/// What the receiving node knows of the result's community.
pub struct Context<'a> {
    pub now: i64,
    /// Oldest period start accepted.
    pub oldest: i64,
    /// This node's period length.
    pub period_secs: u32,
    /// The community's manifest of a version, when held.
    pub manifest_at: &'a dyn Fn(&CommunityId, u32) -> Option<ManifestV1>,
    /// The community's latest manifest held.
    pub current: &'a dyn Fn(&CommunityId) -> Option<ManifestV1>,
}

/// A result that passed every check.
#[derive(Clone, Debug)]
pub struct ValidResult {
    pub envelope: SignedV1,
    pub result: ResultV1,
    pub hash: [u8; 32],
}

/// What became of a result from a peer: `Err(Ok(reason))` to ignore (not wanted here,
/// unknown manifest version, another period length, outside retention or in the
/// future), `Err(Err(reason))` to reject (an objective fault of the signed bytes).
pub type Checked = Result<ValidResult, Result<String, String>>;

/// Checks a signed result: size, envelope, body (Reject); the manifest version it
/// names must be held here with the body it names (Ignore: unknown, or another branch
/// of a fork); the signer must be an administrator of that version (Reject) and of the
/// latest one held (Ignore: a removed administrator's, which a relay with an older
/// manifest may pass on in good faith); signature, period on the grid and issued after
/// it ended, inputs naming members (Reject); of this node's period length, not in the
/// future, within retention (Ignore).
pub fn check(bytes: &[u8], ctx: &Context<'_>) -> Checked {
    let reject = |m: String| Err(Err(m));
    let ignore = |m: String| Err(Ok(m));
    let env = match peek_signed(bytes, MAX_SIGNED_RESULT_BYTES) {
        Ok(e) => e,
        Err(e) => return reject(e.to_string()),
    };
    let result = match ResultV1::decode(&env.body) {
        Ok(r) => r,
        Err(ResultError::UnknownSchema(s)) => return ignore(format!("unknown result schema {s}")),
        Err(e) => return reject(e.to_string()),
    };
    let Some(manifest) = (ctx.manifest_at)(&result.community, result.manifest_version) else {
        return ignore(format!("manifest version {} of its community is not held here", result.manifest_version));
    };
    if manifest.body_hash() != result.manifest_hash {
        return ignore(format!("another manifest of version {} is held here (a fork)", result.manifest_version));
    }
    if !manifest.admins.contains(&env.signer) {
        return reject("signed by a node that is not an administrator of the manifest it names".into());
    }
    if (ctx.current)(&result.community).is_some_and(|m| !m.admins.contains(&env.signer)) {
        return ignore("signed by a node that is no longer an administrator".into());
    }
    if let Err(e) = verify_signed(&env, DST_RESULT) {
        return reject(e.to_string());
    }
    let secs = i64::from(result.period_secs);
    if secs == 0
        || crate::privacy::params::WEEK_SECS % secs != 0
        || crate::privacy::accountant::period_of(result.period_start, secs) != result.period_start
    {
        return reject(format!("a period of {secs} s starting at {} is not on the grid", result.period_start));
    }
    let end = result.period_start.saturating_add(secs);
    if result.issued_at < end {
        return reject("issued before its period ended".into());
    }
    if result.inputs.last().is_some_and(|i| usize::from(i.member) >= manifest.members.len()) {
        return reject("an input is not a member of the manifest it names".into());
    }
    if result.period_secs != ctx.period_secs {
        return ignore(format!("periods of {} s, this node's are {} s", result.period_secs, ctx.period_secs));
    }
    if result.issued_at > ctx.now + MAX_SKEW_SECS {
        return ignore(super::validate::FROM_THE_FUTURE.into());
    }
    if result.period_start < ctx.oldest {
        return ignore("period is outside the retention window".into());
    }
    let hash = *blake3::hash(bytes).as_bytes();
    Ok(ValidResult { envelope: env, result, hash })
}

/// Whether a signer's new result for a period replaces its held one: only with more
/// inputs (a later date alone would let it re-issue without end).
pub fn supersedes(new: &ResultV1, held: &ResultV1) -> bool {
    new.inputs.len() > held.inputs.len()
}

/// Of two results of one community and period, whether `a` is the better one to show:
/// more inputs, then issued later, then the smaller hash (so every node holding the
/// same results picks the same one).
pub fn better(a: (&ResultV1, &[u8; 32]), b: (&ResultV1, &[u8; 32])) -> bool {
    (a.0.inputs.len(), a.0.issued_at, std::cmp::Reverse(a.1))
        > (b.0.inputs.len(), b.0.issued_at, std::cmp::Reverse(b.1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::seal;
    use crate::federation::community::Member;
    use crate::privacy::params::Params;
    use crate::privacy::snapshot::{Charts, Entry, ItemName, SnapshotV1};
    use ed25519_dalek::SigningKey;

    const START: i64 = 1_795_392_000;
    const SECS: u32 = 604_800;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn manifest(members: &[u8]) -> ManifestV1 {
        let mut m = ManifestV1::genesis("R", key(1).verifying_key().to_bytes(), 0);
        m.members =
            members.iter().map(|n| Member { node: key(*n).verifying_key().to_bytes(), weight_milli: 1000 }).collect();
        m.members.sort_by_key(|m| m.node);
        m.floor.max_eps_week_milli = u64::MAX;
        m.floor.max_delta_week_pico = u64::MAX;
        m.floor.min_k = 0;
        m = m.next(1, |_| {});
        m
    }

    fn snapshot(origin: u8, community: CommunityId, artists: &[(&str, i64)]) -> (Vec<u8>, SnapshotV1) {
        let params = Params::default();
        let mut entries: Vec<Entry> = artists
            .iter()
            .map(|(a, n)| {
                let name = ItemName::artist(a);
                Entry { item: name.id(), name, listeners: *n, listens: n * 2 }
            })
            .collect();
        entries.sort_by_key(|e| e.item);
        let s = SnapshotV1 {
            schema: crate::privacy::snapshot::SCHEMA,
            origin: key(origin).verifying_key().to_bytes(),
            period_start: START,
            period_secs: SECS,
            version: 1,
            issued_at: START + i64::from(SECS),
            params,
            tau: params.tau(),
            public: Charts { artists: entries, tracks: Vec::new() },
            aggregate: Charts::default(),
            communities: vec![community],
        };
        (seal(&key(origin), crate::envelope::DST_SNAPSHOT, s.encode()), s)
    }

    fn state(m: &ManifestV1, which: &[(u8, &[(&str, i64)])]) -> PeriodState {
        let mut st = PeriodState::default();
        for (o, a) in which {
            let (bytes, s) = snapshot(*o, m.community(), a);
            st.insert(Held { version: 1, hash: *blake3::hash(&bytes).as_bytes(), snapshot: s });
        }
        st
    }

    fn ctx<'a>(m: &'a ManifestV1) -> Context<'a> {
        let f: &'a dyn Fn(&CommunityId, u32) -> Option<ManifestV1> =
            Box::leak(Box::new(move |_: &CommunityId, v: u32| (v == m.version).then(|| m.clone())));
        let current: &'a dyn Fn(&CommunityId) -> Option<ManifestV1> =
            Box::leak(Box::new(move |_: &CommunityId| Some(m.clone())));
        Context {
            now: START + 2 * i64::from(SECS),
            oldest: START - 10 * i64::from(SECS),
            period_secs: SECS,
            manifest_at: f,
            current,
        }
    }

    #[test]
    fn a_result_is_the_members_chart_and_a_member_recomputes_it() {
        let m = manifest(&[2, 3]);
        let st = state(&m, &[(2, &[("A", 5), ("B", 2)]), (3, &[("A", 4)]), (4, &[("A", 100)])]);
        let r = ResultV1::of(&m, &st, START, SECS, START + i64::from(SECS) + 10).expect("a result");
        assert_eq!(r.inputs.len(), 2, "the non-member's snapshot is not an input");
        assert_eq!(r.chart.origins, 2);
        let a = r.chart.artists.iter().find(|x| x.name.artist == "A").expect("A");
        assert_eq!((a.listeners, a.origins), (9, 2));
        assert_eq!(r.verify(&m, &st), Verification::Matches);
        // A lie about one row differs; a snapshot not held here is incomplete.
        let mut lie = r.clone();
        lie.chart.artists[0].listeners += 1000;
        assert_eq!(lie.verify(&m, &st), Verification::Differs);
        let partial = state(&m, &[(2, &[("A", 5), ("B", 2)])]);
        assert_eq!(r.verify(&m, &partial), Verification::Incomplete);
        // Round trip, canonical, signed by an administrator.
        assert_eq!(ResultV1::decode(&r.encode()), Ok(r.clone()));
        let signed = seal(&key(1), DST_RESULT, r.encode());
        let ok = check(&signed, &ctx(&m)).expect("valid");
        assert_eq!(ok.result, r);
    }

    #[test]
    fn results_from_non_administrators_or_off_the_rules_are_refused() {
        let m = manifest(&[2, 3]);
        let st = state(&m, &[(2, &[("A", 5)]), (3, &[("A", 4)])]);
        let r = ResultV1::of(&m, &st, START, SECS, START + i64::from(SECS)).expect("a result");
        let rejected = |bytes: &[u8]| matches!(check(bytes, &ctx(&m)), Err(Err(_)));
        // A member that is not an administrator.
        assert!(rejected(&seal(&key(2), DST_RESULT, r.encode())));
        // Under another tag (a snapshot signature replayed as a result).
        assert!(rejected(&seal(&key(1), crate::envelope::DST_SNAPSHOT, r.encode())));
        // Issued before the period ended; off the grid; an input past the members;
        // origins that are not the inputs; rows claiming more origins than inputs.
        let mut early = r.clone();
        early.issued_at = START;
        let mut off = r.clone();
        off.period_start += 1;
        let mut stray = r.clone();
        stray.inputs.push(Input { member: 7, hash: [0; 16] });
        stray.chart.origins = 3;
        let mut more = r.clone();
        more.chart.origins = 5;
        let mut row = r.clone();
        row.chart.artists[0].origins = 3;
        let mut named = r.clone();
        named.chart.artists[0].item = [0; 16];
        for bad in [early, off, stray, more, row, named] {
            assert!(rejected(&seal(&key(1), DST_RESULT, bad.encode())), "{bad:?}");
        }
        // Not canonical: trailing bytes.
        let mut trailing = r.encode();
        trailing.push(0);
        assert!(rejected(&seal(&key(1), DST_RESULT, trailing)));
        // An unknown manifest version, or another body of it (a fork), is ignored, not
        // rejected: relays on the other branch are not at fault.
        let mut later = r.clone();
        later.manifest_version += 1;
        assert!(matches!(check(&seal(&key(1), DST_RESULT, later.encode()), &ctx(&m)), Err(Ok(_))));
        let mut forked = r.clone();
        forked.manifest_hash = [3; 32];
        assert!(matches!(check(&seal(&key(1), DST_RESULT, forked.encode()), &ctx(&m)), Err(Ok(_))));
        // An administrator of the version it names whom the latest version removed:
        // ignored.
        let removed = m.next(2, |x| x.admins = vec![key(2).verifying_key().to_bytes()]);
        let mut c = ctx(&m);
        let latest = move |_: &CommunityId| Some(removed.clone());
        c.current = &latest;
        let err = check(&seal(&key(1), DST_RESULT, r.encode()), &c).expect_err("removed");
        assert_eq!(err, Ok("signed by a node that is no longer an administrator".to_owned()));
    }

    #[test]
    fn the_largest_result_fits_one_message() {
        // 500 members (the most a manifest lists), 100 artists and 100 tracks of
        // names at the length limit, counts at the i64 limit.
        let most = crate::federation::community::MAX_MEMBERS;
        let name = "\u{10348}".repeat(crate::privacy::snapshot::MAX_NAME_BYTES / 4);
        let row = |i: usize, title: bool| {
            let n = if title {
                ItemName::track(&format!("{i:02}{name}"), &format!("{i:02}{name}"))
            } else {
                ItemName::artist(&format!("{i:02}{name}"))
            };
            crate::federation::merge::Row {
                item: n.id(),
                name: n,
                listeners: i64::MAX,
                listens: i64::MIN,
                origins: u32::MAX,
                corroborating: 0,
            }
        };
        let r = ResultV1 {
            schema: SCHEMA,
            community: [0xff; 32],
            manifest_version: u32::MAX,
            manifest_hash: [0xff; 32],
            period_start: i64::MIN,
            period_secs: u32::MAX,
            issued_at: i64::MAX,
            inputs: (0..most).map(|i| Input { member: u16::try_from(i).expect("small"), hash: [0xff; 16] }).collect(),
            chart: Chart {
                artists: (0..MAX_ROWS).map(|i| row(i, false)).collect(),
                tracks: (0..MAX_ROWS).map(|i| row(i, true)).collect(),
                origins: u32::MAX,
                corroborating: 0,
            },
        };
        let n = r.encode().len();
        assert!(n <= MAX_RESULT_BYTES, "{n} bytes");
        assert!(seal(&key(1), DST_RESULT, r.encode()).len() <= MAX_SIGNED_RESULT_BYTES);
    }

    #[test]
    fn the_better_of_two_results_has_more_inputs() {
        let m = manifest(&[2, 3]);
        let both = state(&m, &[(2, &[("A", 5)]), (3, &[("A", 4)])]);
        let one = state(&m, &[(2, &[("A", 5)])]);
        let r2 = ResultV1::of(&m, &both, START, SECS, START + i64::from(SECS)).expect("two");
        let r1 = ResultV1::of(&m, &one, START, SECS, START + i64::from(SECS) + 5).expect("one");
        assert!(better((&r2, &[1; 32]), (&r1, &[0; 32])));
        assert!(!better((&r1, &[0; 32]), (&r2, &[1; 32])));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let m = manifest(&[2, 3]);
            let _ = check(&bytes, &ctx(&m));
            let _ = ResultV1::decode(&bytes);
        }
    }
}
