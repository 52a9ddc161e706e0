//! Secure aggregation on disk (`federation::secagg`): what this node holds as an
//! aggregator (rounds, shares, its noised aggregate until it co-signs, which periods it
//! aggregated), what it sent as a member (one mark per community period, and per user
//! the report record the user sees), and the signed secure results. The protocol's
//! decisions are `federation::secagg`'s and `p2p::secagg`'s; this file stores.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sled::Transactional;

use super::codec::{Versioned, decode, encode};
use super::keys;
use super::{Error, Result, Store, UserId, schema};
use crate::federation::CommunityId;
use crate::federation::secagg::{Held, ReportId, RoundId};
use crate::privacy::accountant::Ledger;
use crate::privacy::params::Spend;
use crate::privacy::snapshot::ItemName;

/// A share held as an aggregator (`HeldV1` in docs/storage.md).
impl Versioned for Held {
    const VERSION: u8 = 1;
}

/// An aggregator's own noised aggregate share of a round, drawn once: a retried
/// message sends the same bytes, never a second draw of noise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecaggAggV1 {
    #[serde(with = "serde_bytes")]
    pub aggregate: Vec<u8>,
    /// The helper's commitment salt (the leader's: zero).
    pub salt: [u8; 32],
    /// Reports accepted.
    pub accepted: u32,
    /// The leader's: the helper's commitment to its share.
    pub peer_commitment: Option<[u8; 32]>,
    /// The helper's: the result it computed and signed, and blake3 of the leader share
    /// it was computed with (the helper signs one result per round).
    pub finished: Option<FinishedV1>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishedV1 {
    pub leader_aggregate: [u8; 32],
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub sig: Vec<u8>,
}

impl Versioned for SecaggAggV1 {
    const VERSION: u8 = 1;
}

/// What this node sent for one user to one community's secure aggregation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecureReportV1 {
    pub community: CommunityId,
    pub period: i64,
    pub round: RoundId,
    /// The vocabulary items the report counted (at most L0 per chart).
    pub items: Vec<ItemName>,
    pub charged: Spend,
    /// Why nothing was sent for this user (over budget), if so.
    pub refused: Option<String>,
}

impl Versioned for SecureReportV1 {
    const VERSION: u8 = 1;
}

/// A member's reports of a period not yet taken by both aggregators: `o ‖ community ‖
/// period` holds the signed round, `… ‖ side (b'L' leader, b'H' helper) ‖ index u32 BE`
/// one share each (postcard `ShareV1`), so delivering a chunk deletes its keys and
/// rewrites nothing else.
const OUTBOX: u8 = b'o';
const TO_LEADER: u8 = b'L';
const TO_HELPER: u8 = b'H';

/// The reports a member made for one community period, until both aggregators took
/// them: stored with the users' charges, so a restart delivers them still.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboxV1 {
    /// The signed round they were made for.
    pub round: Vec<u8>,
    pub leader: Vec<crate::federation::secagg::ShareV1>,
    pub helper: Vec<crate::federation::secagg::ShareV1>,
}

/// Marks: this node aggregated a community period (as leader or helper), or reported it.
pub const AGGREGATED: u8 = b'd';
pub const REPORTED: u8 = b'm';

fn community_period(kind: u8, community: &CommunityId, period: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(41);
    k.push(kind);
    k.extend_from_slice(community);
    k.extend_from_slice(&keys::time_key(period));
    k
}

fn node_key(round: &RoundId, node: &crate::federation::NodeId) -> Vec<u8> {
    let mut k = round_key(b'n', round);
    k.extend_from_slice(node);
    k
}

/// The period of a `kind ‖ community ‖ period ‖ …` key of `secagg_state`.
fn key_period(k: &[u8]) -> Result<i64> {
    k.get(33..41)
        .and_then(|t| <[u8; 8]>::try_from(t).ok())
        .map(|t| i64::try_from(u64::from_be_bytes(t)).unwrap_or(i64::MAX))
        .ok_or_else(|| Error::corrupt(schema::SECAGG_STATE, k, "key is not kind ‖ community ‖ period"))
}

fn round_key(kind: u8, round: &RoundId) -> Vec<u8> {
    let mut k = Vec::with_capacity(49);
    k.push(kind);
    k.extend_from_slice(round);
    k
}

impl Store {
    /// The signed round of a community period this node holds, if any.
    pub fn secagg_round(&self, community: &CommunityId, period: i64) -> Result<Option<Vec<u8>>> {
        Ok(self.trees.secagg_state.get(community_period(b'r', community, period))?.map(|v| v.to_vec()))
    }

    /// Stores the signed round of a community period unless one is held; returns the
    /// one held afterwards (a leader announces one round per period, whatever happens).
    pub fn put_secagg_round(&self, community: &CommunityId, period: i64, signed: &[u8]) -> Result<Vec<u8>> {
        self.writable()?;
        let key = community_period(b'r', community, period);
        match self.trees.secagg_state.compare_and_swap(&key, None as Option<&[u8]>, Some(signed))? {
            Ok(()) => {
                self.flush()?;
                Ok(signed.to_vec())
            }
            Err(e) => Ok(e.current.map(|v| v.to_vec()).unwrap_or_default()),
        }
    }

    /// Stores shares this node holds as an aggregator, all from `node`, and counts them
    /// against it, in one batch (flushed: an acknowledged share survives a crash).
    pub fn put_secagg_shares(&self, round: &RoundId, node: &crate::federation::NodeId, shares: &[Held]) -> Result<()> {
        if shares.is_empty() {
            return Ok(());
        }
        self.writable()?;
        let n = self.secagg_node_shares(round, node)?.saturating_add(u32::try_from(shares.len()).unwrap_or(u32::MAX));
        let mut batch = sled::Batch::default();
        for held in shares {
            let mut k = round_key(b's', round);
            k.extend_from_slice(&held.share.report);
            batch.insert(k, encode(held));
        }
        batch.insert(node_key(round, node), &n.to_be_bytes()[..]);
        self.trees.secagg_state.apply_batch(batch)?;
        self.flush()
    }

    /// Whether a share of this report is held for the round.
    pub fn secagg_share_held(&self, round: &RoundId, report: &ReportId) -> Result<bool> {
        let mut k = round_key(b's', round);
        k.extend_from_slice(report);
        Ok(self.trees.secagg_state.contains_key(k)?)
    }

    /// How many shares of the round are held from `node`.
    pub fn secagg_node_shares(&self, round: &RoundId, node: &crate::federation::NodeId) -> Result<u32> {
        let k = node_key(round, node);
        match self.trees.secagg_state.get(&k)? {
            None => Ok(0),
            Some(v) => <[u8; 4]>::try_from(v.as_ref())
                .map(u32::from_be_bytes)
                .map_err(|_| Error::corrupt(schema::SECAGG_STATE, &k, "count is not a u32")),
        }
    }

    /// Forgets the rounds of periods before `before`: their shares, counters and
    /// aggregates (nothing is released from them any more), and the round itself. The
    /// marks stay, so such a period is never reported or aggregated again. Returns the
    /// rounds forgotten.
    pub fn prune_secagg(&self, before: i64) -> Result<usize> {
        self.writable()?;
        let mut old = Vec::new();
        for kv in self.trees.secagg_state.scan_prefix([b'r']) {
            let (k, v) = kv?;
            let period = key_period(&k)?;
            if period < before {
                let id = crate::envelope::peek_signed(&v, usize::MAX)
                    .map(|env| crate::federation::secagg::round_id_of(&env.body))
                    .map_err(|_| Error::corrupt(schema::SECAGG_STATE, &k, "not a signed round"))?;
                old.push((k.to_vec(), id));
            }
        }
        // A member's undelivered reports of periods past the window: never delivered.
        let outboxes = self.remove_periods_before(&[OUTBOX], before)?;
        for (key, id) in &old {
            let mut batch = sled::Batch::default();
            for kind in [b's', b'n', b'a'] {
                for kv in self.trees.secagg_state.scan_prefix(round_key(kind, id)) {
                    batch.remove(kv?.0);
                }
            }
            batch.remove(key.as_slice());
            self.trees.secagg_state.apply_batch(batch)?;
        }
        if !old.is_empty() || outboxes > 0 {
            self.flush()?;
        }
        Ok(old.len())
    }

    /// Every share held for a round.
    pub fn secagg_shares(&self, round: &RoundId) -> Result<BTreeMap<ReportId, Held>> {
        let mut out = BTreeMap::new();
        for kv in self.trees.secagg_state.scan_prefix(round_key(b's', round)) {
            let (k, v) = kv?;
            let held: Held = decode(schema::SECAGG_STATE, &k, &v)?;
            out.insert(held.share.report, held);
        }
        Ok(out)
    }

    /// Sets a mark once: true when this call set it.
    pub fn secagg_mark(&self, kind: u8, community: &CommunityId, period: i64) -> Result<bool> {
        self.writable()?;
        let key = community_period(kind, community, period);
        let set = self.trees.secagg_state.compare_and_swap(&key, None as Option<&[u8]>, Some(&[][..]))?.is_ok();
        self.flush()?;
        Ok(set)
    }

    pub fn secagg_marked(&self, kind: u8, community: &CommunityId, period: i64) -> Result<bool> {
        Ok(self.trees.secagg_state.contains_key(community_period(kind, community, period))?)
    }

    pub fn put_secagg_aggregate(&self, round: &RoundId, agg: &SecaggAggV1) -> Result<()> {
        self.writable()?;
        self.trees.secagg_state.insert(round_key(b'a', round), encode(agg))?;
        self.flush()
    }

    pub fn secagg_aggregate(&self, round: &RoundId) -> Result<Option<SecaggAggV1>> {
        let k = round_key(b'a', round);
        match self.trees.secagg_state.get(&k)? {
            Some(v) => Ok(Some(decode(schema::SECAGG_STATE, &k, &v)?)),
            None => Ok(None),
        }
    }

    /// Replaces the held secure result of a period (one that no longer verifies under
    /// the community's current aggregators) with a verified one.
    pub fn replace_secure_result(&self, community: &CommunityId, period: i64, signed: &[u8]) -> Result<()> {
        self.writable()?;
        self.trees.secagg_state.insert(community_period(b'R', community, period), signed)?;
        self.network_changed();
        self.flush()?;
        Ok(())
    }

    /// Deletes the secure results and the period marks (reported, aggregated) of every
    /// period before `before`. Returns how many entries went.
    pub fn prune_secure_results(&self, before: i64) -> Result<usize> {
        self.writable()?;
        let n = self.remove_periods_before(&[b'R', REPORTED, AGGREGATED], before)?;
        if n > 0 {
            self.flush()?;
        }
        Ok(n)
    }

    /// Removes (one batch, not flushed) every `kind ‖ community ‖ period ‖ …` entry of
    /// `kinds` whose period is before `before`; returns how many.
    fn remove_periods_before(&self, kinds: &[u8], before: i64) -> Result<usize> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for kind in kinds {
            for kv in self.trees.secagg_state.scan_prefix([*kind]) {
                let (k, _) = kv?;
                if key_period(&k)? < before {
                    batch.remove(k);
                    n += 1;
                }
            }
        }
        if n > 0 {
            self.trees.secagg_state.apply_batch(batch)?;
        }
        Ok(n)
    }

    /// Stores a verified secure result (the first one of a period stays).
    pub fn put_secure_result(&self, community: &CommunityId, period: i64, signed: &[u8]) -> Result<bool> {
        self.writable()?;
        let key = community_period(b'R', community, period);
        let new = self.trees.secagg_state.compare_and_swap(&key, None as Option<&[u8]>, Some(signed))?.is_ok();
        if new {
            self.network_changed();
            self.flush()?;
        }
        Ok(new)
    }

    pub fn secure_result(&self, community: &CommunityId, period: i64) -> Result<Option<Vec<u8>>> {
        Ok(self.trees.secagg_state.get(community_period(b'R', community, period))?.map(|v| v.to_vec()))
    }

    /// The newest secure result of a community at or before `period`: (period, bytes).
    pub fn latest_secure_result(&self, community: &CommunityId, period: i64) -> Result<Option<(i64, Vec<u8>)>> {
        let from = community_period(b'R', community, i64::MIN);
        let to = community_period(b'R', community, period);
        let Some(kv) = self.trees.secagg_state.range(from..=to).next_back() else { return Ok(None) };
        let (k, v) = kv?;
        Ok(Some((key_period(&k)?, v.to_vec())))
    }

    /// Records a member node's reports of one community period, in one transaction:
    /// the mark (refused if already set: a period is reported once), the users'
    /// charged ledgers of `week`, each user's report record, and the reports to deliver
    /// (`outbox`: the round and each share under its own key, only when a report is
    /// sent). False when the period was already reported (nothing changes).
    pub fn commit_secure_reports(
        &self,
        community: &CommunityId,
        period: i64,
        week: i64,
        ledgers: &BTreeMap<u32, Ledger>,
        records: &[(u32, SecureReportV1)],
        outbox: &OutboxV1,
    ) -> Result<bool> {
        self.writable()?;
        let t = &self.trees;
        let mark = community_period(REPORTED, community, period);
        let out_key = community_period(OUTBOX, community, period);
        let mut shares = Vec::new();
        for (side, list) in [(TO_LEADER, &outbox.leader), (TO_HELPER, &outbox.helper)] {
            for (i, share) in list.iter().enumerate() {
                let mut k = out_key.clone();
                k.push(side);
                k.extend_from_slice(&u32::try_from(i).unwrap_or(u32::MAX).to_be_bytes());
                shares.push((
                    k,
                    postcard::to_allocvec(share)
                        .map_err(|e| Error::corrupt(schema::SECAGG_STATE, &out_key, &e.to_string()))?,
                ));
            }
        }
        let sending = !shares.is_empty();
        let result = (&t.secagg_state, &t.userid_week_ledger, &t.userid_period_community_securereport).transaction(
            |(state, ledger_tree, report_tree)| {
                if state.get(&mark)?.is_some() {
                    return sled::transaction::abort(());
                }
                state.insert(mark.as_slice(), &[][..])?;
                if sending {
                    state.insert(out_key.as_slice(), outbox.round.as_slice())?;
                    for (k, v) in &shares {
                        state.insert(k.as_slice(), v.as_slice())?;
                    }
                }
                for (user, ledger) in ledgers {
                    ledger_tree.insert(&keys::user_time(UserId(*user), week), encode(ledger))?;
                }
                for (user, r) in records {
                    let mut k = keys::user_time(UserId(*user), period).to_vec();
                    k.extend_from_slice(community);
                    report_tree.insert(k, encode(r))?;
                }
                Ok(())
            },
        );
        match result {
            Ok(()) => {
                self.flush()?;
                Ok(true)
            }
            Err(sled::transaction::TransactionError::Abort(())) => Ok(false),
            Err(sled::transaction::TransactionError::Storage(e)) => Err(Error::Db(e)),
        }
    }

    /// A member's undelivered reports of a community period.
    pub fn secagg_outbox(&self, community: &CommunityId, period: i64) -> Result<Option<OutboxV1>> {
        let base = community_period(OUTBOX, community, period);
        let mut out = OutboxV1::default();
        let mut held = false;
        for kv in self.trees.secagg_state.scan_prefix(&base) {
            let (k, v) = kv?;
            match k.get(base.len()) {
                None => {
                    out.round = v.to_vec();
                    held = true;
                }
                Some(side) => {
                    let share = postcard::from_bytes(&v)
                        .map_err(|_| Error::corrupt(schema::SECAGG_STATE, &k, "not a share"))?;
                    if *side == TO_LEADER { out.leader.push(share) } else { out.helper.push(share) }
                }
            }
        }
        Ok(held.then_some(out))
    }

    /// The first `count` undelivered shares for one aggregator were taken: their keys
    /// go (and the round's, once no share is left).
    pub fn secagg_delivered(&self, community: &CommunityId, period: i64, to_leader: bool, count: usize) -> Result<()> {
        self.writable()?;
        let base = community_period(OUTBOX, community, period);
        let mut side = base.clone();
        side.push(if to_leader { TO_LEADER } else { TO_HELPER });
        let mut batch = sled::Batch::default();
        for kv in self.trees.secagg_state.scan_prefix(&side).take(count) {
            batch.remove(kv?.0);
        }
        self.trees.secagg_state.apply_batch(batch)?;
        let left = self
            .trees
            .secagg_state
            .scan_prefix(&base)
            .keys()
            .filter(|k| k.as_ref().map_or(true, |k| k.len() > base.len()))
            .count();
        if left == 0 {
            self.trees.secagg_state.remove(&base)?;
        }
        self.flush()
    }

    /// Whether undelivered reports of a community period are stored.
    pub fn secagg_outbox_held(&self, community: &CommunityId, period: i64) -> Result<bool> {
        Ok(self.trees.secagg_state.contains_key(community_period(OUTBOX, community, period))?)
    }

    /// Drops a period's undelivered reports (the aggregators closed it, or a user
    /// reported in it was deleted).
    pub fn drop_secagg_outbox(&self, community: &CommunityId, period: i64) -> Result<()> {
        self.writable()?;
        let mut batch = sled::Batch::default();
        for kv in self.trees.secagg_state.scan_prefix(community_period(OUTBOX, community, period)) {
            batch.remove(kv?.0);
        }
        self.trees.secagg_state.apply_batch(batch)?;
        self.flush()
    }

    /// The user's secure-aggregation report records, newest first.
    pub fn secure_reports(&self, user: UserId, limit: usize) -> Result<Vec<SecureReportV1>> {
        let mut out = Vec::new();
        for kv in self.trees.userid_period_community_securereport.scan_prefix(keys::user(user)).rev().take(limit) {
            let (k, v) = kv?;
            out.push(decode(schema::USERID_PERIOD_COMMUNITY_SECUREREPORT, &k, &v)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Options, Store};

    /// Results and period marks go once past the cut, nothing newer; a held result
    /// stays against a second one unless replaced.
    #[test]
    fn results_and_marks_are_pruned_past_the_cut_and_a_result_is_replaced_only_on_purpose() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), &Options::default()).expect("open");
        let (c, other) = ([3u8; 32], [4u8; 32]);
        for p in [100, 200, 300] {
            assert!(store.put_secure_result(&c, p, format!("r{p}").as_bytes()).expect("put"));
            assert!(store.secagg_mark(REPORTED, &c, p).expect("mark"));
            assert!(store.secagg_mark(AGGREGATED, &other, p).expect("mark"));
        }
        assert!(!store.put_secure_result(&c, 300, b"second").expect("put"), "the first result stays");
        store.replace_secure_result(&c, 300, b"replaced").expect("replace");
        assert_eq!(store.secure_result(&c, 300).expect("read").as_deref(), Some(&b"replaced"[..]));
        assert_eq!(
            store.prune_secure_results(200).expect("prune"),
            3,
            "period 100: the result and mark of c, the mark of other"
        );
        assert_eq!(store.secure_result(&c, 100).expect("read"), None);
        assert!(store.secure_result(&c, 200).expect("read").is_some());
        assert!(store.secagg_mark(REPORTED, &c, 100).expect("mark again"), "the old mark is gone");
        assert!(!store.secagg_mark(REPORTED, &c, 200).expect("mark"), "a newer mark stays");
        assert!(!store.secagg_mark(AGGREGATED, &other, 300).expect("mark"));
    }

    /// A member's reports are stored with its users' charges, in one transaction, and
    /// read back after a restart; delivered ones go, and so do periods past the window.
    #[test]
    fn undelivered_reports_are_stored_with_the_charges_and_outlive_a_restart() {
        use crate::federation::secagg::ShareV1;
        let dir = tempfile::tempdir().expect("tempdir");
        let c = [5u8; 32];
        let share = |n: u8| ShareV1 { round: [1; 32], report: [n; 16], public_share: vec![n], input_share: vec![n; 8] };
        let out =
            OutboxV1 { round: b"signed round".to_vec(), leader: vec![share(1), share(2)], helper: vec![share(3)] };
        let record = SecureReportV1 {
            community: c,
            period: 600,
            round: [1; 32],
            items: Vec::new(),
            charged: Spend { eps_milli: 150, delta_pico: 0 },
            refused: None,
        };
        let ledger = Ledger { spent: Spend { eps_milli: 150, delta_pico: 0 }, periods: Vec::new() };
        {
            let store = Store::open(dir.path(), &Options::default()).expect("open");
            let ledgers = BTreeMap::from([(7u32, ledger.clone())]);
            assert!(store.commit_secure_reports(&c, 600, 0, &ledgers, &[(7, record.clone())], &out).expect("commit"));
            assert!(
                !store.commit_secure_reports(&c, 600, 0, &ledgers, &[(7, record)], &out).expect("again"),
                "a period is reported once"
            );
        }
        let store = Store::open(dir.path(), &Options::default()).expect("reopen");
        assert_eq!(store.secagg_outbox(&c, 600).expect("read"), Some(out.clone()), "read back after a restart");
        store.secagg_delivered(&c, 600, true, 1).expect("one delivered to the leader");
        let one_less = OutboxV1 { leader: vec![share(2)], ..out.clone() };
        assert_eq!(store.secagg_outbox(&c, 600).expect("read"), Some(one_less), "the first share went");
        store.secagg_delivered(&c, 600, true, 64).expect("the rest to the leader");
        store.secagg_delivered(&c, 600, false, 64).expect("all to the helper");
        assert_eq!(store.secagg_outbox(&c, 600).expect("read"), None, "nothing left, the round too");
        let ledgers = BTreeMap::new();
        assert!(store.commit_secure_reports(&c, 700, 0, &ledgers, &[], &out).expect("another period"));
        store.drop_secagg_outbox(&c, 700).expect("closed");
        assert_eq!(store.secagg_outbox(&c, 700).expect("read"), None, "closed: dropped");
        assert!(store.commit_secure_reports(&c, 800, 0, &ledgers, &[], &out).expect("another period"));
        store.prune_secagg(900).expect("prune");
        assert_eq!(store.secagg_outbox(&c, 800).expect("read"), None, "past the window: gone");
        // A user reported in a period is deleted: that period's undelivered shares go
        // (both shares of a report together are the user's items); another period stays.
        let alice = store.create_user("alice", "password1", 0).expect("user").id;
        let sent = SecureReportV1 { community: c, period: 1_000, ..record_for(c) };
        assert!(store.commit_secure_reports(&c, 1_000, 0, &ledgers, &[(alice.0, sent)], &out).expect("commit"));
        assert!(store.commit_secure_reports(&c, 1_100, 0, &ledgers, &[], &out).expect("commit"));
        store.delete_user(alice).expect("delete");
        assert_eq!(store.secagg_outbox(&c, 1_000).expect("read"), None, "the deleted user's period: dropped");
        assert!(store.secagg_outbox(&c, 1_100).expect("read").is_some(), "another period: kept");
    }

    fn record_for(c: CommunityId) -> SecureReportV1 {
        SecureReportV1 {
            community: c,
            period: 0,
            round: [1; 32],
            items: Vec::new(),
            charged: Spend { eps_milli: 150, delta_pico: 0 },
            refused: None,
        }
    }
}
