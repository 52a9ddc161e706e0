//! What a node does with a snapshot from a peer (gossip or sync), cheapest check first.
//! `Reject` is for objectively invalid data (the sender is penalised); `Ignore` for
//! what is merely not wanted here (another policy, a duplicate, too old), so honest
//! relays are never punished for our policy.

use super::{CommunityId, NodeId};
use crate::envelope::{DST_SNAPSHOT, MAX_SIGNED_BYTES, OpenError, SignedV1, peek_signed, verify_signed};
use crate::privacy::params::Floor;
use crate::privacy::snapshot::SnapshotV1;

/// Clock skew tolerated between nodes, seconds.
pub const MAX_SKEW_SECS: i64 = 300;

/// Highest snapshot version accepted: a node re-issues a period's snapshot at most this
/// many times (it issues version 1; later ones supersede), so no origin can keep
/// minting versions of one period for every peer to store and forward.
pub const MAX_VERSION: u16 = 4;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Ignore(String),
    Reject(String),
    /// A second snapshot of one version from the same origin: proof that the origin
    /// equivocated. Kept (once) as evidence and passed on, so every node leaves the
    /// origin out of that period alike; never held against the relay that brought it.
    Evidence(String),
}

/// The floors of the followed communities that would count an origin, among those named.
pub type WantedLookup<'a> = &'a dyn Fn(&NodeId, Option<&[CommunityId]>) -> Vec<Floor>;

/// What is already held for (origin, period): every (version, blake3 of the bytes).
pub type HeldLookup<'a> = &'a dyn Fn(&NodeId, i64) -> Vec<(u16, [u8; 32])>;

/// What the receiving node knows.
pub struct Context<'a> {
    pub now: i64,
    /// Oldest period start accepted.
    pub oldest: i64,
    /// This node's period length: snapshots of another length are not wanted here (so
    /// no origin can fill the store with a snapshot per second of the retention window).
    pub period_secs: u32,
    /// The privacy floors of the followed communities that would count this origin,
    /// among those the snapshot names (`None`: before the body is read, any followed
    /// community); empty: not wanted here. A snapshot that meets any of them is kept;
    /// each community's chart then counts it only if it names that community and meets
    /// its floor (`merge`), so one strict community does not drop another's data.
    pub wanted: WantedLookup<'a>,
    pub held: HeldLookup<'a>,
}

/// How many origins this node has never seen before it takes snapshots from per period
/// of its own length, when they count only through an open community (members of an
/// allow-list community are always taken). A Sybil flood of an open community then
/// reaches the disk, and probation, at this rate, whatever the number of keys; honest
/// newcomers wait at most as long as the flood lasts (the price of open admission).
pub const MAX_STRANGERS_PER_PERIOD: u32 = 64;

/// The privacy floors of the followed communities (id, manifest) that would count
/// `origin` — a member, or any origin in an open community — among those the snapshot
/// names (`None`: any). The `wanted` lookup of the node and of the simulator.
pub fn floors_counting<'a>(
    followed: impl IntoIterator<Item = (&'a CommunityId, &'a super::community::ManifestV1)>,
    origin: &NodeId,
    named: Option<&[CommunityId]>,
) -> Vec<Floor> {
    followed
        .into_iter()
        .filter(|(id, _)| named.is_none_or(|n| n.contains(id)))
        .filter(|(_, m)| m.is_member(origin) || matches!(m.admission, super::community::Admission::Open { .. }))
        .map(|(_, m)| m.floor)
        .collect()
}

/// Most non-member origins (admitted through open communities) whose snapshots a node
/// holds at once: with retention, what bounds the disk an open community can take
/// (at most this many origins × the retention window's periods × 64 KiB).
pub const MAX_STRANGER_ORIGINS: usize = 256;

/// The reasons of the intake's `Ignore`s (the caller does not fetch such snapshots again).
pub const STRANGERS_THIS_PERIOD: &str = "too many new origins this period (open community intake)";
pub const STRANGERS_HELD: &str = "too many non-member origins held (open community intake)";
pub const BELOW_FLOOR: &str = "below the privacy floor of every community that would count it";

/// Whether an `Ignore` will not change by asking again soon (catch-up skips the
/// snapshot instead of fetching it at every round).
pub fn not_to_fetch_again(verdict: &Verdict) -> bool {
    matches!(verdict, Verdict::Ignore(m)
        if m.starts_with(NAMES_NO_COMMUNITY) || m == BELOW_FLOOR || m == STRANGERS_THIS_PERIOD || m == STRANGERS_HELD)
}

/// The open-community intake: strangers taken in the current period (at most
/// `MAX_STRANGERS_PER_PERIOD`) and the non-member origins held (at most
/// `MAX_STRANGER_ORIGINS`).
#[derive(Clone, Debug, Default)]
pub struct Strangers {
    period: i64,
    taken: u32,
    held: std::collections::HashSet<NodeId>,
}

impl Strangers {
    /// The intake rule, in one place for the node and the simulator: an accepted
    /// snapshot from an origin that no followed community lists as a member is taken
    /// only if its origin is already held, or there is room for one more non-member
    /// origin and, for an origin this node has never seen, `admit` allows (counted in
    /// this node's period holding `now`); anything else is left as it is.
    pub fn check(
        &mut self,
        verdict: Verdict,
        origin: &NodeId,
        member: bool,
        seen_before: bool,
        now: i64,
        period_secs: u32,
    ) -> Verdict {
        if verdict != Verdict::Accept || member || self.held.contains(origin) {
            return verdict;
        }
        if self.held.len() >= MAX_STRANGER_ORIGINS {
            return Verdict::Ignore(STRANGERS_HELD.into());
        }
        if !seen_before && !self.admit(crate::privacy::accountant::period_of(now, i64::from(period_secs))) {
            return Verdict::Ignore(STRANGERS_THIS_PERIOD.into());
        }
        self.held.insert(*origin);
        verdict
    }

    /// Whether one more stranger may be taken in `period` (this node's period that
    /// holds now); if so, it is counted.
    pub fn admit(&mut self, period: i64) -> bool {
        if self.period != period {
            self.period = period;
            self.taken = 0;
        }
        if self.taken >= MAX_STRANGERS_PER_PERIOD {
            return false;
        }
        self.taken += 1;
        true
    }

    /// The non-member origins whose snapshots are held now (after a start or a prune).
    pub fn set_held(&mut self, held: impl IntoIterator<Item = NodeId>) {
        self.held = held.into_iter().collect();
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }
}

/// The reason of the `Ignore` for a snapshot dated ahead of this node's clock by more
/// than `MAX_SKEW_SECS` (the caller warns: one of the clocks is off).
pub const FROM_THE_FUTURE: &str = "period or issue time in the future";

/// The reason of the `Ignore` for a snapshot that names no followed community that
/// would count its origin (the caller remembers such snapshots, not to fetch them again).
pub const NAMES_NO_COMMUNITY: &str = "names no followed community that would count its origin";

/// A snapshot that passed every check.
#[derive(Clone, Debug)]
pub struct Valid {
    pub envelope: SignedV1,
    pub snapshot: SnapshotV1,
    pub hash: [u8; 32],
}

/// Checks `bytes` in this order: size; canonical envelope; the claimed origin is
/// wanted (Ignore); strict signature (Reject); canonical, consistent body whose origin
/// is the signer (Reject); the period on the week grid (Reject) and of this node's
/// length (Ignore), the version within `MAX_VERSION` (Reject); period sanity: not in the future or issued before it ended
/// (Reject; in the future by more than the skew: Ignore), within retention (Ignore);
/// version: a duplicate (Ignore), the same version with other bytes (Evidence: the caller keeps it; once
/// an origin has equivocated in a period, anything more from it there is ignored);
/// the privacy floor per week of some community that would count it (Ignore).
pub fn check_snapshot(bytes: &[u8], ctx: &Context<'_>) -> (Verdict, Option<Valid>) {
    let reject = |m: String| (Verdict::Reject(m), None);
    let ignore = |m: String| (Verdict::Ignore(m), None);
    let env = match peek_signed(bytes, MAX_SIGNED_BYTES) {
        Ok(e) => e,
        Err(OpenError::TooLarge(n)) => return reject(format!("{n} bytes is over the limit")),
        Err(e) => return reject(e.to_string()),
    };
    if (ctx.wanted)(&env.signer, None).is_empty() {
        return ignore("origin is not counted by any community this node follows".into());
    }
    if let Err(e) = verify_signed(&env, DST_SNAPSHOT) {
        return reject(e.to_string());
    }
    let snapshot = match SnapshotV1::decode(&env.body) {
        Ok(s) => s,
        Err(crate::privacy::snapshot::DecodeError::UnknownSchema(s)) => {
            return ignore(format!("unknown snapshot schema {s}"));
        }
        Err(e) => return reject(e.to_string()),
    };
    if snapshot.origin != env.signer {
        return reject("origin is not the signer".into());
    }
    // Bound to its communities: one that the snapshot does not name never counts it,
    // so it is not wanted here for that community's sake.
    let floors = (ctx.wanted)(&snapshot.origin, Some(&snapshot.communities));
    if floors.is_empty() {
        return ignore(NAMES_NO_COMMUNITY.into());
    }
    // Periods divide a week and lie on the week grid (Mondays 00:00 UTC), as the
    // protocol says: anything else cannot be merged with the community's periods, and a
    // one-second "period" ending now would stand in for the newest chart.
    let secs = i64::from(snapshot.period_secs);
    if secs == 0
        || crate::privacy::params::WEEK_SECS % secs != 0
        || crate::privacy::accountant::period_of(snapshot.period_start, secs) != snapshot.period_start
    {
        return reject(format!(
            "a period of {secs} s starting at {} is not on the grid (a divisor of a week, aligned to Monday 00:00 UTC)",
            snapshot.period_start
        ));
    }
    if snapshot.period_secs != ctx.period_secs {
        return ignore(format!(
            "periods of {} s, this node's are {} s (privacy.period_secs)",
            snapshot.period_secs, ctx.period_secs
        ));
    }
    if snapshot.version == 0 || snapshot.version > MAX_VERSION {
        return reject(format!("version {} is outside 1..={MAX_VERSION}", snapshot.version));
    }
    let end = snapshot.period_start.saturating_add(secs);
    if end > ctx.now + MAX_SKEW_SECS || snapshot.issued_at > ctx.now + MAX_SKEW_SECS {
        // Ignored, not rejected: whether it is "in the future" depends on this clock,
        // and a relay whose clock is a second ahead of this one is not at fault.
        return ignore(FROM_THE_FUTURE.into());
    }
    if snapshot.issued_at < end {
        return reject("issued before its period ended".into());
    }
    if snapshot.period_start < ctx.oldest {
        return ignore("period is outside the retention window".into());
    }
    let hash = *blake3::hash(bytes).as_bytes();
    let held = (ctx.held)(&snapshot.origin, snapshot.period_start);
    if held.iter().any(|(_, h)| *h == hash) {
        return ignore("duplicate".into());
    }
    if held.iter().enumerate().any(|(i, (v, _))| held[..i].iter().any(|(w, _)| w == v)) {
        // One pair of evidence is enough: an equivocating origin cannot fill disks
        // with further variants.
        return ignore("the origin already equivocated in this period".into());
    }
    if held.iter().any(|(v, _)| *v == snapshot.version) {
        let valid = Valid { envelope: env, snapshot, hash };
        return (Verdict::Evidence("equivocation: another snapshot with the same version".into()), Some(valid));
    }
    // An older version than one held is kept too (at most MAX_VERSION of them): the
    // effective snapshot stays the newest, and a node holding version 2 still learns
    // that version 1 was equivocated, as every other node does.
    if !floors.iter().any(|f| meets_floor(&snapshot, f)) {
        return ignore(BELOW_FLOOR.into());
    }
    (Verdict::Accept, Some(Valid { envelope: env, snapshot, hash }))
}

/// Whether a snapshot's parameters meet a privacy floor, **per week**: a release's cost
/// times the releases a week holds at its period length (hourly releases at a weekly
/// floor's ε each would spend 168 times it).
pub fn meets_floor(snapshot: &SnapshotV1, floor: &Floor) -> bool {
    let cost = snapshot.params.release_cost();
    let per_week = u64::try_from(
        crate::privacy::params::WEEK_SECS.checked_div(i64::from(snapshot.period_secs)).unwrap_or(i64::MAX),
    )
    .unwrap_or(u64::MAX)
    .max(1);
    cost.eps_milli.saturating_mul(per_week) <= floor.max_eps_week_milli
        && cost.delta_pico.saturating_mul(per_week) <= floor.max_delta_week_pico
        && snapshot.params.k >= floor.min_k
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    use crate::envelope::seal;
    use crate::privacy::SharingLevel;
    use crate::privacy::noise::Seeded;
    use crate::privacy::params::{Budget, Params};
    use crate::privacy::release::{Period, UserPeriod, release};
    use crate::privacy::snapshot::ItemName;

    const START: i64 = 1_795_392_000;

    fn signed(id: &SigningKey, public_count: u64) -> Vec<u8> {
        let users = [UserPeriod {
            user: 1,
            level: SharingLevel::Public,
            artists: vec![(ItemName::artist("A"), public_count)],
            tracks: vec![(ItemName::track("A", "T"), public_count)],
        }];
        let period = Period {
            origin: id.verifying_key().to_bytes(),
            start: START,
            secs: 604_800,
            issued_at: START + 700_000,
            communities: vec![[9; 32]],
        };
        let budget = Budget::default();
        let r = release(period, &users, &Params::default(), budget, Default::default(), &[0; 32], &mut Seeded(7))
            .expect("release");
        seal(id, DST_SNAPSHOT, r.snapshot.encode())
    }

    fn verdict(bytes: &[u8], wanted: bool, held: Vec<(u16, [u8; 32])>, now: i64) -> Verdict {
        let wanted = move |_: &NodeId, names: Option<&[CommunityId]>| {
            if wanted && names.is_none_or(|n| n.contains(&[9; 32])) { vec![Floor::default()] } else { vec![] }
        };
        let held = move |_: &NodeId, _: i64| held.clone();
        let ctx = Context { now, oldest: now - 86_400 * 7 * 12, period_secs: 604_800, wanted: &wanted, held: &held };
        check_snapshot(bytes, &ctx).0
    }

    #[test]
    fn each_bad_input_is_rejected_or_ignored_as_documented() {
        let id = SigningKey::from_bytes(&[1; 32]);
        let good = signed(&id, 5);
        let now = START + 800_000;
        assert_eq!(verdict(&good, true, vec![], now), Verdict::Accept);
        // Not a member anywhere: ignored before the signature is even checked.
        assert!(matches!(verdict(&good, false, vec![], now), Verdict::Ignore(_)));
        // Tampered body: the signature fails.
        let mut tampered = good.clone();
        let n = tampered.len();
        tampered[n - 80] ^= 1;
        assert!(matches!(verdict(&tampered, true, vec![], now), Verdict::Reject(_)), "tampered");
        // Truncated, oversized, garbage.
        assert!(matches!(verdict(&good[..good.len() - 1], true, vec![], now), Verdict::Reject(_)));
        assert!(matches!(verdict(&vec![7u8; 70_000], true, vec![], now), Verdict::Reject(_)));
        // Forged: another key signs a snapshot claiming this origin.
        let other = SigningKey::from_bytes(&[2; 32]);
        let mut env: SignedV1 = postcard::from_bytes(&signed(&other, 5)).expect("env");
        env.signer = id.verifying_key().to_bytes();
        let forged = postcard::to_allocvec(&env).expect("encode");
        assert!(matches!(verdict(&forged, true, vec![], now), Verdict::Reject(_)), "forged");
        // Replayed: the same bytes again are a duplicate.
        let hash = *blake3::hash(&good).as_bytes();
        assert!(matches!(verdict(&good, true, vec![(1, hash)], now), Verdict::Ignore(_)));
        // Equivocation: a different snapshot with the same version.
        let other_same_version = signed(&id, 6);
        assert!(
            matches!(verdict(&other_same_version, true, vec![(1, hash)], now), Verdict::Evidence(m) if m.contains("equivocation"))
        );
        // An older version than one held is kept (so equivocation in it is seen by
        // every node alike); a second variant of it is evidence.
        assert_eq!(verdict(&good, true, vec![(2, [7; 32])], now), Verdict::Accept);
        assert!(matches!(verdict(&other_same_version, true, vec![(2, [7; 32]), (1, hash)], now), Verdict::Evidence(_)));
        // Once the evidence is held, a third variant is not stored (no disk filling).
        let third = signed(&id, 7);
        let second = *blake3::hash(&other_same_version).as_bytes();
        assert!(
            matches!(verdict(&third, true, vec![(1, hash), (1, second)], now), Verdict::Ignore(m) if m.contains("already equivocated"))
        );
        // Off the grid: a period length that does not divide a week, a start that is not
        // on the grid, a version past the bound.
        let resigned = |edit: &dyn Fn(&mut SnapshotV1)| -> Vec<u8> {
            let env: SignedV1 = postcard::from_bytes(&good).expect("env");
            let mut s = SnapshotV1::decode(&env.body).expect("snapshot");
            edit(&mut s);
            seal(&id, DST_SNAPSHOT, s.encode())
        };
        type Edit<'a> = &'a dyn Fn(&mut SnapshotV1);
        let cases: [(&str, Edit<'_>); 4] = [
            ("11 s periods", &|s| s.period_secs = 11),
            ("an unaligned start", &|s| s.period_start += 3_600),
            ("version 5", &|s| s.version = MAX_VERSION + 1),
            ("version 0", &|s| s.version = 0),
        ];
        for (what, edit) in cases {
            assert!(matches!(verdict(&resigned(edit), true, vec![], now), Verdict::Reject(_)), "{what}");
        }
        // Bound to its community: the same snapshot naming another community (or, in
        // schema 1, none) is not wanted here.
        let elsewhere = resigned(&|s| s.communities = vec![[8; 32]]);
        assert!(matches!(verdict(&elsewhere, true, vec![], now), Verdict::Ignore(m) if m.contains("names no")));
        let schema1 = resigned(&|s| {
            s.schema = crate::privacy::snapshot::SCHEMA_V1;
            s.communities.clear();
        });
        assert!(matches!(verdict(&schema1, true, vec![], now), Verdict::Ignore(_)));
        // On the grid but of another length than this node's: not wanted here (ignored,
        // so a relay of another community's snapshots is not penalised).
        let daily = resigned(&|s| s.period_secs = 86_400);
        assert!(matches!(verdict(&daily, true, vec![], now), Verdict::Ignore(m) if m.contains("86400 s")));
        assert_eq!(verdict(&resigned(&|s| s.version = MAX_VERSION), true, vec![], now), Verdict::Accept);
        // A period that has not ended yet by this clock (ignored: clocks differ, a relay
        // is not at fault), and one outside retention.
        assert!(matches!(verdict(&good, true, vec![], START + 1_000), Verdict::Ignore(m) if m == FROM_THE_FUTURE));
        assert!(matches!(verdict(&good, true, vec![], START + 86_400 * 7 * 20), Verdict::Ignore(_)));
    }

    #[test]
    fn floors_hold_per_week_and_any_community_that_would_count_it_suffices() {
        let id = SigningKey::from_bytes(&[1; 32]);
        let env: SignedV1 = postcard::from_bytes(&signed(&id, 5)).expect("env");
        let hourly = |s: &mut SnapshotV1| s.period_secs = 3_600;
        let mut s = SnapshotV1::decode(&env.body).expect("snapshot");
        hourly(&mut s);
        let bytes = seal(&id, DST_SNAPSHOT, s.encode());
        let check = |floors: Vec<Floor>| {
            let wanted = move |_: &NodeId, _: Option<&[CommunityId]>| floors.clone();
            let held = |_: &NodeId, _: i64| vec![];
            let now = START + 800_000;
            let ctx = Context { now, oldest: now - 86_400 * 7 * 12, period_secs: 3_600, wanted: &wanted, held: &held };
            check_snapshot(&bytes, &ctx).0
        };
        // One release costs ε 0.15, under the default floor of 4 per week; 168 hourly
        // releases cost 25.2 per week.
        assert!(s.params.release_cost().eps_milli <= Floor::default().max_eps_week_milli);
        assert!(matches!(check(vec![Floor::default()]), Verdict::Ignore(m) if m.contains("floor")));
        let loose = Floor { max_eps_week_milli: 30_000, max_delta_week_pico: u64::MAX, min_k: 2 };
        assert!(meets_floor(&s, &loose));
        // A strict community and a loose one: kept for the loose one.
        assert_eq!(check(vec![Floor::default(), loose]), Verdict::Accept);
    }

    #[test]
    fn strangers_are_taken_at_a_bounded_rate_per_period() {
        let mut s = Strangers::default();
        assert!((0..MAX_STRANGERS_PER_PERIOD).all(|_| s.admit(START)));
        assert!(!s.admit(START), "the 65th stranger of a period waits");
        assert!(s.admit(START + 604_800), "a new period takes strangers again");
    }

    /// Non-member origins held are bounded however many periods pass (before, every
    /// origin admitted stayed "seen" and kept publishing: the disk grew by 64 origins
    /// a period); members and origins already held are never refused; once a prune
    /// frees room, others are taken again.
    #[test]
    fn non_member_origins_held_are_bounded_across_periods() {
        let mut s = Strangers::default();
        let key = |i: usize| -> NodeId {
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&(i as u64).to_be_bytes());
            k
        };
        let week = 604_800;
        let mut taken = 0;
        for i in 0..10 * MAX_STRANGER_ORIGINS {
            let now = START + i64::try_from(i / 64).expect("small") * week;
            if s.check(Verdict::Accept, &key(i), false, false, now, 604_800) == Verdict::Accept {
                taken += 1;
            }
        }
        assert_eq!((taken, s.held()), (MAX_STRANGER_ORIGINS, MAX_STRANGER_ORIGINS));
        let late = START + 100 * week;
        assert_eq!(s.check(Verdict::Accept, &key(0), false, true, late, 604_800), Verdict::Accept, "held already");
        assert_eq!(s.check(Verdict::Accept, &key(99_999), true, false, late, 604_800), Verdict::Accept, "a member");
        let full = s.check(Verdict::Accept, &key(99_998), false, true, late, 604_800);
        assert!(not_to_fetch_again(&full), "{full:?}");
        s.set_held((0..10).map(key));
        assert_eq!(s.check(Verdict::Accept, &key(99_998), false, true, late, 604_800), Verdict::Accept, "room again");
    }
}
