//! Secure aggregation over libp2p (`/hearsay/secagg/1.0.0`, request-response, CBOR):
//! the protocol of `federation::secagg` between member nodes and a community's two
//! aggregators (named in its manifest).
//!
//! Per community period, once it is final:
//! 1. a member asks the leader for the period's signed round (`Round`); the leader
//!    makes it once, from what is already public, and answers it to every member;
//! 2. the member charges each aggregate user's ledger, shards one report per user, and
//!    sends each aggregator its shares (`Submit`), each over its own encrypted
//!    connection: neither aggregator gets the other's share;
//! 3. after the collection window, the leader starts verification and sends the
//!    helper its verifier shares under a fresh verification key (`Verify`); the helper
//!    aggregates a round once (a replay is refused), checks the minimum batch, and
//!    answers its verdicts and its noised aggregate share;
//! 4. the leader finishes verification, adds its own noise, combines, signs the
//!    result and asks the helper to co-sign (`Finish`); the helper recomputes the
//!    total from both aggregate shares and signs only if it matches;
//! 5. members fetch the signed result (`Result`) and verify both signatures.
//!
//! Everything heavy (Prio3 sharding and verification) runs in the network task: a
//! round of a home node's users takes milliseconds; an aggregator's batch of 1,000
//! reports about half a second (`hearsay bench secagg`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use libp2p::PeerId;
use libp2p::request_response::OutboundRequestId;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::{Task, node_of, peer_id_of};
use crate::envelope::{DST_SECURE_ROUND, open_signed};
use crate::federation::community::SecureAggregation;
use crate::federation::secagg::{
    self, HELPER, Held, LEADER, LeaderStart, ReportId, RoundId, RoundV1, SCHEMA, SecureResultV1, ShareV1,
    SignedSecureResult,
};
use crate::federation::{CommunityId, NodeId, short_hex};
use crate::privacy::accountant::{period_of, week_of};
use crate::privacy::params::Spend;
use crate::store::secagg::{AGGREGATED, REPORTED, SecaggAggV1, SecureReportV1};

pub const SECAGG_PROTOCOL: &str = "/hearsay/secagg/1.0.0";
/// A `Verify` of 4,000 reports over a 4,096-item vocabulary fits (about 6 MiB).
pub const MAX_SECAGG_REQUEST_BYTES: u64 = 8 << 20;
pub const MAX_SECAGG_RESPONSE_BYTES: u64 = 8 << 20;
/// Most shares one `Submit` carries (a leader share is about 36 KiB at 2,000 items).
pub const MAX_SHARES_PER_SUBMIT: usize = 64;
/// Largest signed round (a 2 × 4,096-item vocabulary of capped names fits).
pub const MAX_ROUND_BYTES: usize = 4 << 20;
/// Most reports an aggregator verifies in one round.
pub const MAX_REPORTS_PER_ROUND: usize = 4_000;
/// How far back a member still reports, an aggregator still aggregates and a member
/// still fetches a result: three periods, and at least this many seconds.
const WINDOW_MIN_SECS: i64 = 120;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecaggRequest {
    /// Member -> leader: the signed round of a community period.
    Round { community: [u8; 32], period: i64 },
    /// Member -> aggregator: shares of one round (at most `MAX_SHARES_PER_SUBMIT`),
    /// with the signed round (so the helper learns it from any member).
    Submit { round: ByteBuf, shares: Vec<ShareV1> },
    /// Leader -> helper: the leader's verifier shares under `key` (fresh per attempt).
    Verify { round: ByteBuf, key: [u8; 32], shares: Vec<(ReportId, ByteBuf)> },
    /// Leader -> helper: the result body, the leader's noised aggregate share and its
    /// signature, for the helper to check and co-sign.
    Finish { result: ByteBuf, leader_aggregate: ByteBuf, leader_sig: ByteBuf },
    /// Anyone -> an aggregator: the signed secure result of a community period.
    Result { community: [u8; 32], period: i64 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecaggResponse {
    Round(ByteBuf),
    Submitted { accepted: u32, refused: Vec<String> },
    Verdicts { messages: Vec<(ReportId, Option<ByteBuf>)>, aggregate: ByteBuf },
    Cosigned { sig: ByteBuf },
    Result(Option<ByteBuf>),
    Error(String),
}

/// What an outbound request was for.
#[derive(Clone, Debug)]
pub(super) enum Pending {
    Round { community: CommunityId, period: i64 },
    Submit { community: CommunityId, period: i64, to_leader: bool },
    Verify { round: RoundId },
    Finish { round: RoundId },
    Result { community: CommunityId, period: i64 },
}

/// Reports made for one community period, until both aggregators took them.
struct Outbox {
    round: Vec<u8>,
    leader: Vec<ShareV1>,
    helper: Vec<ShareV1>,
    leader_done: bool,
    helper_done: bool,
}

/// A verification the leader started, waiting for the helper's verdicts.
struct Leading {
    round: RoundV1,
    start: LeaderStart,
    held: BTreeMap<ReportId, Held>,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) requests: HashMap<OutboundRequestId, Pending>,
    outbox: HashMap<(CommunityId, i64), Outbox>,
    /// (community, period, what) asked and not answered yet.
    busy: HashSet<(CommunityId, i64, u8)>,
    leading: HashMap<RoundId, Leading>,
    /// Leader: result body and its own signature, waiting for the co-signature.
    finishing: HashMap<RoundId, (CommunityId, i64, Vec<u8>, Vec<u8>)>,
    /// Member: periods it reported, whose result it has yet to fetch.
    awaiting: HashSet<(CommunityId, i64)>,
}

fn err(why: impl ToString) -> SecaggResponse {
    SecaggResponse::Error(why.to_string())
}

impl Task {
    fn secure_of(&self, community: &CommunityId) -> Option<SecureAggregation> {
        self.communities.iter().find(|c| &c.id == community).and_then(|c| c.manifest.secure.clone())
    }

    fn period_secs(&self) -> i64 {
        i64::from(self.options.period_secs.max(1))
    }

    /// Opens a signed round for `community` as its manifest names it.
    fn open_round(&self, bytes: &[u8]) -> Result<(RoundV1, SecureAggregation), String> {
        let env = open_signed(bytes, DST_SECURE_ROUND, MAX_ROUND_BYTES).map_err(|e| format!("round: {e}"))?;
        let round = RoundV1::decode(&env.body).map_err(|e| e.to_string())?;
        let sa = self.secure_of(&round.community).ok_or("round of a community without secure aggregation here")?;
        if env.signer != sa.leader
            || round.leader != sa.leader
            || round.helper != sa.helper
            || round.params != sa.params
        {
            return Err("round does not match the community's manifest".into());
        }
        if i64::from(round.period_secs) != self.period_secs()
            || round.period_start != period_of(round.period_start, self.period_secs())
        {
            return Err("round is not one of this node's periods".into());
        }
        Ok((round, sa))
    }

    /// Runs the protocol's timed steps (from the sync tick).
    pub(super) fn secagg_tick(&mut self) {
        let now = Self::now();
        let secs = self.period_secs();
        let grace = self.options.grace_secs;
        let latest = period_of(now - grace - secs, secs);
        let list: Vec<(CommunityId, bool, SecureAggregation)> =
            self.communities.iter().filter_map(|c| c.manifest.secure.clone().map(|sa| (c.id, c.member, sa))).collect();
        let window = (3 * secs).max(WINDOW_MIN_SECS);
        for (id, member, sa) in list {
            let first = period_of(now - window, secs);
            for p in (first..=latest).step_by(usize::try_from(secs).unwrap_or(1)) {
                let end = p + secs;
                if member && now >= end + grace {
                    self.member_step(&id, p, &sa);
                }
                if sa.leader == self.me && now >= end + self.options.result_delay_secs + 3 * self.sync_secs() {
                    self.leader_step(&id, p, &sa);
                }
                if !self.secagg.awaiting.contains(&(id, p)) {
                    continue;
                }
                if self.store.secure_result(&id, p).ok().flatten().is_some() {
                    self.secagg.awaiting.remove(&(id, p));
                    continue;
                }
                if now >= end + self.options.result_delay_secs + 5 * self.sync_secs() {
                    self.ask(
                        &id,
                        p,
                        b'R',
                        sa.leader,
                        SecaggRequest::Result { community: id, period: p },
                        Pending::Result { community: id, period: p },
                    );
                }
            }
        }
        // Older than the window: given up (the aggregators no longer take reports).
        let oldest = period_of(now - window, secs);
        self.secagg.outbox.retain(|(_, p), _| *p >= oldest);
        self.secagg.awaiting.retain(|(_, p)| *p >= oldest);
    }

    fn sync_secs(&self) -> i64 {
        i64::try_from(self.options.sync_interval.as_secs()).unwrap_or(60).max(1)
    }

    /// Sends `request` to `to` unless one for (community, period, what) is in flight;
    /// to itself, answers it in place.
    fn ask(
        &mut self,
        community: &CommunityId,
        period: i64,
        what: u8,
        to: NodeId,
        request: SecaggRequest,
        pending: Pending,
    ) {
        if !self.secagg.busy.insert((*community, period, what)) {
            return;
        }
        if to == self.me {
            let me = *self.swarm.local_peer_id();
            let response = self.answer_secagg(me, request);
            self.secagg.busy.remove(&(*community, period, what));
            self.on_secagg_response(me, pending, response);
            return;
        }
        let Some(peer) = peer_id_of(&to) else {
            self.secagg.busy.remove(&(*community, period, what));
            return;
        };
        let id = self.swarm.behaviour_mut().secagg.send_request(&peer, request);
        self.secagg.requests.insert(id, pending);
    }

    /// The request for `pending` ended without an answer.
    pub(super) fn secagg_failed(&mut self, pending: Pending) {
        self.release_busy(&pending);
        if let Pending::Verify { round } = pending {
            // Tried again next tick with a fresh key (the helper never saw this one).
            self.secagg.leading.remove(&round);
        }
    }

    fn release_busy(&mut self, pending: &Pending) {
        let key = match pending {
            Pending::Round { community, period } => (*community, *period, b'r'),
            Pending::Submit { community, period, to_leader } => {
                (*community, *period, if *to_leader { b'l' } else { b'h' })
            }
            Pending::Result { community, period } => (*community, *period, b'R'),
            Pending::Verify { round } | Pending::Finish { round } => {
                let found = self
                    .secagg
                    .leading
                    .get(round)
                    .map(|l| (l.round.community, l.round.period_start))
                    .or_else(|| self.secagg.finishing.get(round).map(|f| (f.0, f.1)));
                match found {
                    Some((c, p)) => (c, p, if matches!(pending, Pending::Verify { .. }) { b'v' } else { b'f' }),
                    None => return,
                }
            }
        };
        self.secagg.busy.remove(&key);
    }

    fn member_step(&mut self, id: &CommunityId, period: i64, sa: &SecureAggregation) {
        if let Some(out) = self.secagg.outbox.get(&(*id, period)) {
            let (round, leader_done, helper_done) = (out.round.clone(), out.leader_done, out.helper_done);
            if !leader_done {
                self.deliver(id, period, &round, true, sa.leader);
            }
            if !helper_done {
                self.deliver(id, period, &round, false, sa.helper);
            }
            return;
        }
        if self.store.secagg_marked(REPORTED, id, period).unwrap_or(true) {
            return;
        }
        // Nobody to report for (no aggregate user listened): the period is done here,
        // and the leader is not asked.
        let secs = self.period_secs();
        let any = self
            .store
            .period_inputs(period, period + secs, &self.options.credit_rules)
            .map(|inputs| crate::privacy::release::secure_inputs(&inputs).next().is_some());
        match any {
            Ok(true) => {}
            Ok(false) => {
                let _ = self.store.commit_secure_reports(id, period, week_of(period), &BTreeMap::new(), &[]);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "secure aggregation: reading the period");
                return;
            }
        }
        self.ask(
            id,
            period,
            b'r',
            sa.leader,
            SecaggRequest::Round { community: *id, period },
            Pending::Round { community: *id, period },
        );
    }

    fn deliver(&mut self, id: &CommunityId, period: i64, round: &[u8], to_leader: bool, to: NodeId) {
        let Some(out) = self.secagg.outbox.get(&(*id, period)) else { return };
        let shares = if to_leader { &out.leader } else { &out.helper };
        // One request per chunk would need per-chunk bookkeeping; a home node's users
        // fit one request, a larger node's first chunk goes now and the rest follow.
        let chunk: Vec<ShareV1> = shares.iter().take(MAX_SHARES_PER_SUBMIT).cloned().collect();
        let request = SecaggRequest::Submit { round: ByteBuf::from(round.to_vec()), shares: chunk };
        self.ask(
            id,
            period,
            if to_leader { b'l' } else { b'h' },
            to,
            request,
            Pending::Submit { community: *id, period, to_leader },
        );
    }

    /// A member with the round: charge, bound, shard, record, then deliver.
    fn make_reports(&mut self, bytes: &[u8], community: &CommunityId, period: i64) -> Result<(), String> {
        let (round, sa) = self.open_round(bytes)?;
        if &round.community != community || round.period_start != period {
            return Err("the leader answered another round".into());
        }
        let secs = self.period_secs();
        let inputs = self
            .store
            .period_inputs(period, period + secs, &self.options.credit_rules)
            .map_err(|e| format!("reading the period: {e}"))?;
        let users: Vec<&crate::privacy::release::UserPeriod> =
            crate::privacy::release::secure_inputs(&inputs).collect();
        let week = week_of(period);
        let mut accounts =
            self.store.accounts(week, users.iter().map(|u| u.user)).map_err(|e| format!("reading ledgers: {e}"))?;
        let cost = Spend { eps_milli: round.params.cost_eps_milli(), delta_pico: 0 };
        let mut ledgers = BTreeMap::new();
        let mut records = Vec::new();
        let (mut to_leader, mut to_helper) = (Vec::new(), Vec::new());
        for u in users {
            let Some(account) = accounts.get_mut(&u.user) else { continue };
            let mut record = SecureReportV1 {
                community: *community,
                period,
                round: round.id(),
                items: Vec::new(),
                charged: Spend::default(),
                refused: None,
            };
            if let Err(why) = account.week.charge_report(cost, self.options.budget, account.earlier) {
                record.refused = Some(why.to_string());
                records.push((u.user, record));
                continue;
            }
            let bits = secagg::measurement(&round, &u.artists, &u.tracks);
            let mut report = [0u8; 16];
            getrandom::getrandom(&mut report).map_err(|e| format!("randomness: {e}"))?;
            let made = secagg::shard(&round, &bits, report).map_err(|e| e.to_string())?;
            record.items = round
                .artists
                .iter()
                .chain(&round.tracks)
                .zip(&bits)
                .filter(|(_, b)| **b)
                .map(|(n, _)| n.clone())
                .collect();
            record.charged = cost;
            ledgers.insert(u.user, account.week.clone());
            records.push((u.user, record));
            to_leader.push(made.leader);
            to_helper.push(made.helper);
        }
        let fresh = self
            .store
            .commit_secure_reports(community, period, week, &ledgers, &records)
            .map_err(|e| format!("recording the reports: {e}"))?;
        if !fresh || to_leader.is_empty() {
            return Ok(());
        }
        tracing::info!(community = %short_hex(community), period, reports = to_leader.len(), "secure aggregation: reports made");
        self.secagg.awaiting.insert((*community, period));
        self.secagg.outbox.insert(
            (*community, period),
            Outbox {
                round: bytes.to_vec(),
                leader: to_leader,
                helper: to_helper,
                leader_done: false,
                helper_done: false,
            },
        );
        self.deliver(community, period, bytes, true, sa.leader);
        self.deliver(community, period, bytes, false, sa.helper);
        Ok(())
    }

    /// The leader's round of a final period: made once, from what is public.
    fn round_for(&mut self, community: &CommunityId, period: i64) -> Result<Vec<u8>, String> {
        if let Some(held) = self.store.secagg_round(community, period).map_err(|e| e.to_string())? {
            return Ok(held);
        }
        let sa = self.secure_of(community).ok_or("no secure aggregation in this community")?;
        let secs = self.period_secs();
        if Self::now() < period + secs + self.options.result_delay_secs {
            return Err("the period's round is not made yet".into());
        }
        let mut published = Vec::new();
        for back in 0..=3 {
            let state = self.store.period_state(period - back * secs).map_err(|e| e.to_string())?;
            for snaps in state.by_origin.values() {
                let Some(s) = snaps.values().last() else { continue };
                if !s.communities.contains(community) {
                    continue;
                }
                for e in s
                    .public
                    .artists
                    .iter()
                    .chain(&s.public.tracks)
                    .chain(&s.aggregate.artists)
                    .chain(&s.aggregate.tracks)
                {
                    published.push((e.name.clone(), e.listeners));
                }
            }
        }
        if let Ok(Some((_, bytes))) = self.store.latest_secure_result(community, period - secs)
            && let Ok(r) = SignedSecureResult::open(&bytes, community, &sa.leader, &sa.helper)
        {
            for e in r.chart.artists.iter().chain(&r.chart.tracks) {
                published.push((e.name.clone(), e.listeners));
            }
        }
        let (artists, tracks) = secagg::vocabulary(published, sa.params.vocabulary as usize);
        let round = RoundV1 {
            schema: SCHEMA,
            community: *community,
            leader: sa.leader,
            helper: sa.helper,
            period_start: period,
            period_secs: u32::try_from(secs).unwrap_or(u32::MAX),
            params: sa.params,
            artists,
            tracks,
        };
        round.check().map_err(|e| format!("no round for this period: {e}"))?;
        let signed = self.identity.sign_round(&round);
        self.store.put_secagg_round(community, period, &signed).map_err(|e| e.to_string())
    }

    fn leader_step(&mut self, id: &CommunityId, period: i64, sa: &SecureAggregation) {
        if self.store.secagg_marked(AGGREGATED, id, period).unwrap_or(true)
            || self.secagg.busy.contains(&(*id, period, b'v'))
        {
            return;
        }
        let Ok(Some(bytes)) = self.store.secagg_round(id, period) else { return };
        let round = match self.open_round(&bytes) {
            Ok((r, _)) => r,
            Err(e) => {
                tracing::warn!(error = %e, "secure aggregation: own round");
                return;
            }
        };
        let Ok(held) = self.store.secagg_shares(&round.id()) else { return };
        let mut key = [0u8; 32];
        if getrandom::getrandom(&mut key).is_err() {
            return;
        }
        let start = match secagg::leader_start(&round, &key, &held) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "secure aggregation: verification");
                return;
            }
        };
        let shares = start.shares.iter().map(|(r, b)| (*r, ByteBuf::from(b.clone()))).collect();
        let rid = round.id();
        self.secagg.leading.insert(rid, Leading { round, start, held });
        self.ask(
            id,
            period,
            b'v',
            sa.helper,
            SecaggRequest::Verify { round: ByteBuf::from(bytes), key, shares },
            Pending::Verify { round: rid },
        );
    }

    pub(super) fn answer_secagg(&mut self, peer: PeerId, request: SecaggRequest) -> SecaggResponse {
        let Some(from) = node_of(&peer) else { return err("unknown peer key") };
        match request {
            SecaggRequest::Round { community, period } => {
                let Some(c) = self.communities.iter().find(|c| c.id == community) else {
                    return err("unknown community");
                };
                if !c.manifest.is_member(&from) {
                    return err("only members get rounds");
                }
                if c.manifest.secure.as_ref().map(|s| s.leader) != Some(self.me) {
                    return err("this node is not the community's leader");
                }
                match self.round_for(&community, period) {
                    Ok(bytes) => SecaggResponse::Round(ByteBuf::from(bytes)),
                    Err(e) => err(e),
                }
            }
            SecaggRequest::Submit { round, shares } => self.take_shares(from, &round, &shares),
            SecaggRequest::Verify { round, key, shares } => self.helper_verify(from, &round, key, &shares),
            SecaggRequest::Finish { result, leader_aggregate, leader_sig } => {
                self.helper_finish(from, &result, &leader_aggregate, &leader_sig)
            }
            SecaggRequest::Result { community, period } => match self.store.secure_result(&community, period) {
                Ok(r) => SecaggResponse::Result(r.map(ByteBuf::from)),
                Err(e) => err(e),
            },
        }
    }

    fn take_shares(&mut self, from: NodeId, round: &[u8], shares: &[ShareV1]) -> SecaggResponse {
        if shares.len() > MAX_SHARES_PER_SUBMIT {
            return err("too many shares in one request");
        }
        let (round_v, sa) = match self.open_round(round) {
            Ok(r) => r,
            Err(e) => return err(e),
        };
        let (c, p) = (round_v.community, round_v.period_start);
        let agg_id = if sa.leader == self.me {
            LEADER
        } else if sa.helper == self.me {
            HELPER
        } else {
            return err("this node is not one of the community's aggregators");
        };
        let member = self.communities.iter().any(|x| x.id == c && x.manifest.is_member(&from));
        if !member {
            return err("only members may report");
        }
        if self.store.secagg_marked(AGGREGATED, &c, p).unwrap_or(true) {
            return err("this round was already aggregated");
        }
        // One round per period: the helper keeps the first it is shown.
        match self.store.put_secagg_round(&c, p, round) {
            Ok(held) if held == round => {}
            Ok(_) => return err("another round of this period is held"),
            Err(e) => return err(e),
        }
        let rid = round_v.id();
        let mut held = match self.store.secagg_shares(&rid) {
            Ok(h) => h,
            Err(e) => return err(e),
        };
        let (mut accepted, mut refused) = (0u32, Vec::new());
        for share in shares {
            if held.len() >= MAX_REPORTS_PER_ROUND {
                refused.push("the round is full".to_owned());
                continue;
            }
            match secagg::admit(&round_v, agg_id, &held, &from, share) {
                Ok(()) => {
                    let h = Held { node: from, share: share.clone() };
                    if let Err(e) = self.store.put_secagg_share(&rid, &h) {
                        return err(e);
                    }
                    held.insert(share.report, h);
                    accepted += 1;
                }
                Err(e) => refused.push(e.to_string()),
            }
        }
        SecaggResponse::Submitted { accepted, refused }
    }

    fn helper_verify(
        &mut self,
        from: NodeId,
        round: &[u8],
        key: [u8; 32],
        shares: &[(ReportId, ByteBuf)],
    ) -> SecaggResponse {
        let (round_v, sa) = match self.open_round(round) {
            Ok(r) => r,
            Err(e) => return err(e),
        };
        if sa.leader != from || sa.helper != self.me {
            return err("only the community's leader asks its helper to verify");
        }
        let (c, p) = (round_v.community, round_v.period_start);
        match self.store.secagg_round(&c, p) {
            Ok(Some(held)) if held == round => {}
            Ok(None) => return err("no share of this round was received"),
            Ok(Some(_)) => return err("another round of this period is held"),
            Err(e) => return err(e),
        }
        if Self::now() < p + self.period_secs() + self.options.result_delay_secs {
            return err("the collection window is still open");
        }
        // Once per period, set before anything else: a replayed or second request never
        // yields a second aggregate of the same reports.
        match self.store.secagg_mark(AGGREGATED, &c, p) {
            Ok(true) => {}
            Ok(false) => return err("this round was already aggregated (a replay)"),
            Err(e) => return err(e),
        }
        let rid = round_v.id();
        let held = match self.store.secagg_shares(&rid) {
            Ok(h) => h,
            Err(e) => return err(e),
        };
        let leader_shares: Vec<(ReportId, Vec<u8>)> = shares.iter().map(|(r, b)| (*r, b.to_vec())).collect();
        let step = match secagg::helper_step(&round_v, &key, &held, &leader_shares) {
            Ok(s) => s,
            Err(e) => return err(e),
        };
        if let Err(e) = secagg::check_batch(&round_v.params, &step.accepted, &held) {
            tracing::info!(community = %short_hex(&c), period = p, error = %e, "secure aggregation: nothing released");
            return err(e);
        }
        let mut rng = rand::make_rng::<rand::rngs::StdRng>();
        let aggregate = match secagg::noised_aggregate(&round_v, &step.accepted, &mut rng) {
            Ok(a) => a,
            Err(e) => return err(e),
        };
        let nodes = nodes_of(&step.accepted, &held);
        let agg = SecaggAggV1 {
            aggregate: aggregate.clone(),
            accepted: u32::try_from(step.accepted.len()).unwrap_or(u32::MAX),
            nodes: u32::try_from(nodes).unwrap_or(u32::MAX),
        };
        if let Err(e) = self.store.put_secagg_aggregate(&rid, &agg) {
            return err(e);
        }
        SecaggResponse::Verdicts {
            messages: step.messages.into_iter().map(|(r, m)| (r, m.map(ByteBuf::from))).collect(),
            aggregate: ByteBuf::from(aggregate),
        }
    }

    fn helper_finish(&mut self, from: NodeId, body: &[u8], leader_agg: &[u8], leader_sig: &[u8]) -> SecaggResponse {
        let result: SecureResultV1 = match postcard::from_bytes(body) {
            Ok(r) => r,
            Err(e) => return err(format!("result: {e}")),
        };
        let Some(sa) = self.secure_of(&result.community) else { return err("unknown community") };
        if sa.leader != from || sa.helper != self.me {
            return err("only the community's leader asks its helper to co-sign");
        }
        let Ok(Some(round_bytes)) = self.store.secagg_round(&result.community, result.period_start) else {
            return err("no round held for this period");
        };
        let round = match self.open_round(&round_bytes) {
            Ok((r, _)) => r,
            Err(e) => return err(e),
        };
        if round.id() != result.round {
            return err("the result names another round");
        }
        if crate::envelope::verify_detached(&sa.leader, crate::envelope::DST_SECURE_RESULT, body, leader_sig).is_err() {
            return err("the leader's signature does not verify");
        }
        let Ok(Some(own)) = self.store.secagg_aggregate(&round.id()) else {
            return err("this node has no aggregate of the round");
        };
        if let Err(e) =
            secagg::check_result(&round, &result, leader_agg, &own.aggregate, own.accepted as usize, own.nodes as usize)
        {
            return err(e);
        }
        let sig = self.identity.sign_secure_result(body);
        let signed =
            SignedSecureResult { body: body.to_vec(), leader_sig: leader_sig.to_vec(), helper_sig: sig.clone() };
        if let Err(e) = self.store.put_secure_result(&result.community, result.period_start, &signed.encode()) {
            return err(e);
        }
        SecaggResponse::Cosigned { sig: ByteBuf::from(sig) }
    }

    pub(super) fn on_secagg_response(&mut self, peer: PeerId, pending: Pending, response: SecaggResponse) {
        self.release_busy(&pending);
        if let SecaggResponse::Error(why) = &response {
            tracing::info!(%peer, error = %why, what = ?pending_name(&pending), "secure aggregation refused");
            if let Pending::Verify { round } = pending {
                self.secagg.leading.remove(&round);
            }
            return;
        }
        match (pending, response) {
            (Pending::Round { community, period }, SecaggResponse::Round(bytes)) => {
                if let Err(e) = self.make_reports(&bytes, &community, period) {
                    tracing::warn!(community = %short_hex(&community), period, error = %e, "secure aggregation: no reports");
                }
            }
            (Pending::Submit { community, period, to_leader }, SecaggResponse::Submitted { accepted, refused }) => {
                if !refused.is_empty() {
                    tracing::info!(accepted, refused = ?refused, "secure aggregation: shares refused");
                }
                let done = if let Some(out) = self.secagg.outbox.get_mut(&(community, period)) {
                    let list = if to_leader { &mut out.leader } else { &mut out.helper };
                    let n = list.len().min(MAX_SHARES_PER_SUBMIT);
                    list.drain(..n);
                    if list.is_empty() {
                        if to_leader {
                            out.leader_done = true;
                        } else {
                            out.helper_done = true;
                        }
                    }
                    out.leader_done && out.helper_done
                } else {
                    false
                };
                if done {
                    self.secagg.outbox.remove(&(community, period));
                }
            }
            (Pending::Verify { round }, SecaggResponse::Verdicts { messages, aggregate }) => {
                self.leader_finish(round, messages, aggregate.into_vec());
            }
            (Pending::Finish { round }, SecaggResponse::Cosigned { sig }) => {
                let Some((community, period, body, leader_sig)) = self.secagg.finishing.remove(&round) else { return };
                let Some(sa) = self.secure_of(&community) else { return };
                let signed = SignedSecureResult { body, leader_sig, helper_sig: sig.into_vec() };
                let bytes = signed.encode();
                match SignedSecureResult::open(&bytes, &community, &sa.leader, &sa.helper) {
                    Ok(_) => {
                        let _ = self.store.put_secure_result(&community, period, &bytes);
                        tracing::info!(community = %short_hex(&community), period, "secure aggregation: result released");
                    }
                    Err(e) => tracing::warn!(error = %e, "secure aggregation: the helper's co-signature"),
                }
            }
            (Pending::Result { community, period }, SecaggResponse::Result(Some(bytes))) => {
                let Some(sa) = self.secure_of(&community) else { return };
                match SignedSecureResult::open(&bytes, &community, &sa.leader, &sa.helper) {
                    Ok(r) if r.period_start == period => {
                        let _ = self.store.put_secure_result(&community, period, &bytes);
                    }
                    Ok(_) => self.penalise(peer, "secure result of another period"),
                    Err(_) => self.penalise(peer, "secure result that does not verify"),
                }
            }
            (Pending::Result { .. }, SecaggResponse::Result(None)) => {}
            (pending, _) => {
                self.penalise(peer, "secure aggregation answer of the wrong kind");
                if let Pending::Verify { round } = pending {
                    self.secagg.leading.remove(&round);
                }
            }
        }
    }

    fn leader_finish(&mut self, rid: RoundId, messages: Vec<(ReportId, Option<ByteBuf>)>, helper_agg: Vec<u8>) {
        let Some(Leading { round, start, held }) = self.secagg.leading.remove(&rid) else { return };
        let (c, p) = (round.community, round.period_start);
        // The helper has aggregated this round: it never will again.
        let _ = self.store.secagg_mark(AGGREGATED, &c, p);
        let messages: Vec<(ReportId, Option<Vec<u8>>)> =
            messages.into_iter().map(|(r, m)| (r, m.map(|b| b.into_vec()))).collect();
        let outcome = (|| -> Result<(SecureResultV1, Vec<u8>), secagg::SecaggError> {
            let (accepted, rejected) = secagg::leader_finish(&round, start, &messages)?;
            if !rejected.is_empty() {
                tracing::info!(rejected = rejected.len(), "secure aggregation: reports rejected");
            }
            secagg::check_batch(&round.params, &accepted, &held)?;
            let mut rng = rand::make_rng::<rand::rngs::StdRng>();
            let own = secagg::noised_aggregate(&round, &accepted, &mut rng)?;
            let counts = secagg::combine(&round, &own, &helper_agg)?;
            let nodes = nodes_of(&accepted, &held);
            Ok((SecureResultV1::of(&round, &counts, accepted.len(), nodes, Self::now()), own))
        })();
        let (result, own) = match outcome {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(community = %short_hex(&c), period = p, error = %e, "secure aggregation: nothing released");
                return;
            }
        };
        let Some(sa) = self.secure_of(&c) else { return };
        let body = result.encode();
        let sig = self.identity.sign_secure_result(&body);
        self.secagg.finishing.insert(rid, (c, p, body.clone(), sig.clone()));
        self.ask(
            &c,
            p,
            b'f',
            sa.helper,
            SecaggRequest::Finish {
                result: ByteBuf::from(body),
                leader_aggregate: ByteBuf::from(own),
                leader_sig: ByteBuf::from(sig),
            },
            Pending::Finish { round: rid },
        );
    }
}

fn nodes_of(accepted: &secagg::Accepted, held: &BTreeMap<ReportId, Held>) -> usize {
    accepted.keys().filter_map(|r| held.get(r).map(|h| h.node)).collect::<BTreeSet<_>>().len()
}

fn pending_name(p: &Pending) -> &'static str {
    match p {
        Pending::Round { .. } => "round",
        Pending::Submit { .. } => "submit",
        Pending::Verify { .. } => "verify",
        Pending::Finish { .. } => "finish",
        Pending::Result { .. } => "result",
    }
}
