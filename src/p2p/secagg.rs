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
//!    aggregates a round once (a replay is refused), checks the minimum batch, draws
//!    its noised aggregate share once, and answers its verdicts and a commitment to
//!    that share;
//! 4. the leader finishes verification, draws its own noised aggregate share once
//!    and sends it (`Finish`); the helper combines both, signs the result (one per
//!    round) and reveals its share; the leader checks the share against the
//!    commitment and the result against both shares, and signs too;
//! 5. members fetch the doubly signed result (`Result`) and verify both signatures.
//!
//! Everything heavy (Prio3 sharding and verification) runs in the network task: a
//! round of a home node's users takes milliseconds; an aggregator's batch of 1,000
//! reports about half a second (`hearsay bench secagg`).

use std::collections::{BTreeMap, HashMap, HashSet};

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
use crate::federation::validate::Verdict;
use crate::federation::{CommunityId, NodeId, short_hex};
use crate::privacy::accountant::{period_of, week_of};
use crate::privacy::params::Spend;
use crate::store::secagg::{AGGREGATED, OutboxV1, REPORTED, SecaggAggV1, SecureReportV1};

pub const SECAGG_PROTOCOL: &str = "/hearsay/secagg/1.0.0";
/// A `Verify` of 4,000 reports over the largest vocabulary (2 × 4,096 items) fits
/// (about 6 MiB of verifier shares).
pub const MAX_SECAGG_REQUEST_BYTES: u64 = 8 << 20;
pub const MAX_SECAGG_RESPONSE_BYTES: u64 = 8 << 20;
/// Most shares one `Submit` carries; fewer when they would not fit
/// `SUBMIT_SHARE_BYTES` (a leader share is 16 bytes per vocabulary item and a little
/// more: about 64 KiB at the default 2 × 2,000 items).
pub const MAX_SHARES_PER_SUBMIT: usize = 64;
/// Bytes of shares in one `Submit` at most (the round travels beside them).
const SUBMIT_SHARE_BYTES: usize = 3 << 20;
/// Largest signed round (a 2 × 4,096-item vocabulary of capped names fits).
pub const MAX_ROUND_BYTES: usize = 4 << 20;
/// Most reports an aggregator verifies in one round.
pub const MAX_REPORTS_PER_ROUND: usize = 4_000;
/// How far back a member still reports, an aggregator still takes shares and
/// aggregates, and a member still fetches a result: three periods after the protocol's
/// own delays, and at least this many seconds.
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
    /// Leader -> helper: the leader's noised aggregate share of the round of a
    /// community period.
    Finish { community: [u8; 32], period: i64, round: [u8; 32], leader_aggregate: ByteBuf },
    /// Member -> leader: the signed secure result of a community period.
    Result { community: [u8; 32], period: i64 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecaggResponse {
    Round(ByteBuf),
    Submitted {
        accepted: u32,
        refused: Vec<String>,
    },
    /// Per report, the verifier message (accepted) or nothing (rejected); and
    /// `commit(salt, the helper's noised aggregate share)`.
    Verdicts {
        messages: Vec<(ReportId, Option<ByteBuf>)>,
        commitment: [u8; 32],
    },
    /// The result body the helper computed and signed, its aggregate share and salt.
    Cosigned {
        body: ByteBuf,
        sig: ByteBuf,
        aggregate: ByteBuf,
        salt: [u8; 32],
    },
    Result(Option<ByteBuf>),
    /// This period is over for the protocol (aggregated already, or too small a batch):
    /// nothing more will be released from it.
    Closed(String),
    Error(String),
}

/// One received message, as `p2p.secagg_audit_dir` keeps it (postcard, a file each:
/// `<second>-<tag>-<n>-request-<peer>.bin` or `…-response-…`: the run's first audit
/// second and a random tag, then numbered from 0; files are created new, never
/// overwritten).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Received {
    Request(SecaggRequest),
    Response(SecaggResponse),
}

/// The same, borrowed (it encodes to the same bytes): nothing is copied to audit.
#[derive(Clone, Copy, Debug, Serialize)]
pub enum ReceivedRef<'a> {
    Request(&'a SecaggRequest),
    Response(&'a SecaggResponse),
}

/// Audit files and bytes written per run at most (a bound on the directory).
const MAX_AUDIT_FILES: u64 = 1_000_000;
const MAX_AUDIT_BYTES: u64 = 16 << 30;

/// What an outbound request was for.
#[derive(Clone, Debug)]
pub(super) enum Pending {
    Round { community: CommunityId, period: i64 },
    Submit { community: CommunityId, period: i64, to_leader: bool, count: usize },
    Verify { community: CommunityId, period: i64, round: RoundId },
    Finish { community: CommunityId, period: i64, round: RoundId },
    Result { community: CommunityId, period: i64 },
}

impl Pending {
    /// The (community, period, what) it holds busy.
    fn key(&self) -> (CommunityId, i64, u8) {
        match self {
            Pending::Round { community, period } => (*community, *period, b'r'),
            Pending::Submit { community, period, to_leader, .. } => {
                (*community, *period, if *to_leader { b'l' } else { b'h' })
            }
            Pending::Verify { community, period, .. } => (*community, *period, b'v'),
            Pending::Finish { community, period, .. } => (*community, *period, b'f'),
            Pending::Result { community, period } => (*community, *period, b'R'),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Pending::Round { .. } => "round",
            Pending::Submit { .. } => "submit",
            Pending::Verify { .. } => "verify",
            Pending::Finish { .. } => "finish",
            Pending::Result { .. } => "result",
        }
    }
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
    /// Reports made for a community period until both aggregators took them (a copy
    /// of the store's, which a restart reads back).
    outbox: HashMap<(CommunityId, i64), OutboxV1>,
    /// (community, period, what) asked and not answered yet.
    busy: HashSet<(CommunityId, i64, u8)>,
    leading: HashMap<RoundId, Leading>,
    /// Periods past their result's publication whose result this node has neither
    /// fetched nor been gossiped yet, with the time it asks the leader next and the
    /// wait after that (doubled per ask up to a period or 8 sync intervals: results
    /// travel over gossip, the fetch is for a missed one).
    awaiting: HashMap<(CommunityId, i64), (i64, i64)>,
    /// Audit files and bytes written since the start, and the run's file name prefix.
    audited: u64,
    audit_bytes: u64,
    audit_run: Option<String>,
}

/// Why the leader has no round for a period: not yet (asked again), or never.
enum RoundRefusal {
    NotYet(String),
    Never(String),
}

/// Rounds a member asks for per community and tick at most (and results a node asks).
const MAX_ROUND_ASKS_PER_TICK: usize = 2;

fn err(why: impl ToString) -> SecaggResponse {
    SecaggResponse::Error(why.to_string())
}

impl Task {
    fn secure_of(&self, community: &CommunityId) -> Option<SecureAggregation> {
        self.communities.iter().find(|c| &c.id == community).and_then(|c| self.on_schedule(&c.manifest.secure))
    }

    /// A community's secure aggregation, if this node takes part: its schedule is this
    /// node's period (or the manifest names none, schema 3). A node of another period
    /// would make rounds and reports nobody else does; it takes no part (`refresh`
    /// warns).
    pub(super) fn on_schedule(&self, secure: &Option<SecureAggregation>) -> Option<SecureAggregation> {
        secure.clone().filter(|sa| sa.period_secs == 0 || i64::from(sa.period_secs) == self.period_secs())
    }

    fn period_secs(&self) -> i64 {
        i64::from(self.options.period_secs.max(1))
    }

    fn sync_secs(&self) -> i64 {
        i64::try_from(self.options.sync_interval.as_secs()).unwrap_or(60).max(1)
    }

    /// Seconds back from now that periods are still handled: three periods past every
    /// delay of the protocol (grace, the round's delay, verification, fetching).
    fn window_secs(&self) -> i64 {
        let delays = self.options.grace_secs.max(self.options.result_delay_secs).saturating_add(6 * self.sync_secs());
        self.period_secs().saturating_mul(3).saturating_add(delays).max(WINDOW_MIN_SECS)
    }

    /// When a node that has not received a period's result asks the leader for it:
    /// `result_delay + 5` sync intervals after the period ends (the leader publishes it
    /// after `result_delay + 3`).
    fn result_due(&self, period: i64) -> i64 {
        period
            .saturating_add(self.period_secs())
            .saturating_add(self.options.result_delay_secs)
            .saturating_add(5 * self.sync_secs())
    }

    /// Whether `period` is one of this node's periods, over, and within the window.
    fn in_window(&self, period: i64) -> bool {
        let (now, secs) = (Self::now(), self.period_secs());
        period_of(period, secs) == period
            && period >= period_of(now.saturating_sub(self.window_secs()), secs)
            && period.saturating_add(secs) <= now
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
        if i64::from(round.period_secs) != self.period_secs() || !self.in_window(round.period_start) {
            return Err("round is not of one of this node's periods within the window".into());
        }
        Ok((round, sa))
    }

    /// Runs the protocol's timed steps (from the sync tick).
    pub(super) fn secagg_tick(&mut self) {
        let now = Self::now();
        let secs = self.period_secs();
        let grace = self.options.grace_secs;
        let delay = self.options.result_delay_secs;
        let latest = period_of(now - secs, secs);
        let first = period_of(now.saturating_sub(self.window_secs()), secs);
        let list: Vec<(CommunityId, bool, SecureAggregation)> = self
            .communities
            .iter()
            .filter_map(|c| self.on_schedule(&c.manifest.secure).map(|sa| (c.id, c.member, sa)))
            .collect();
        for (id, member, sa) in list {
            // At most this many rounds asked for per community and tick, oldest first:
            // a node that was away catches up without flooding the leader.
            let (mut asks, mut fetches) = (0, 0);
            for p in (first..=latest).step_by(usize::try_from(secs).unwrap_or(1)) {
                let end = p + secs;
                // The leader makes the round `result_delay` after the period ends (the
                // members' own releases, after their grace, name the vocabulary).
                if member
                    && now >= end + grace.max(delay)
                    && asks < MAX_ROUND_ASKS_PER_TICK
                    && self.member_step(&id, p, &sa)
                {
                    asks += 1;
                }
                if sa.leader == self.me && now >= end + delay + 3 * self.sync_secs() {
                    self.leader_step(&id, p, &sa);
                }
                // Past the time the result is published, a node asks the leader for one
                // it missed: a member for the periods it reported, a follower (which
                // reports nothing) for any; a few a tick, oldest first.
                let fetch_from = self.result_due(p);
                if now < fetch_from || sa.leader == self.me || fetches >= MAX_ROUND_ASKS_PER_TICK {
                    continue;
                }
                let sync = self.sync_secs();
                let (next, wait) = match self.secagg.awaiting.get(&(id, p)) {
                    Some(due) => *due,
                    None if !member => (fetch_from, sync),
                    None => continue,
                };
                if self.store.secure_result(&id, p).ok().flatten().is_some() {
                    self.secagg.awaiting.remove(&(id, p));
                    continue;
                }
                if now >= next {
                    fetches += 1;
                    let cap = secs.max(8 * self.sync_secs());
                    self.secagg.awaiting.insert((id, p), (now.saturating_add(wait), wait.saturating_mul(2).min(cap)));
                    self.ask(
                        sa.leader,
                        SecaggRequest::Result { community: id, period: p },
                        Pending::Result { community: id, period: p },
                    );
                }
            }
        }
        // Older than the window: given up, and the aggregators' shares forgotten.
        self.secagg.outbox.retain(|(_, p), _| *p >= first);
        self.secagg.awaiting.retain(|(_, p), _| *p >= first);
        self.secagg.leading.retain(|_, l| l.round.period_start >= first);
        match self.store.prune_secagg(first) {
            Ok(0) => {}
            Ok(n) => tracing::info!(rounds = n, "secure aggregation: shares of past rounds deleted"),
            Err(e) => tracing::warn!(error = %e, "secure aggregation: pruning"),
        }
        // Results past retention, and the period marks once past both (a mark inside the
        // window is what stops a second report or aggregation).
        let retained = now.saturating_sub(self.options.retention_secs);
        if let Err(e) = self.store.prune_secure_results(retained.min(first)) {
            tracing::warn!(error = %e, "secure aggregation: pruning results");
        }
        self.prune_audit(now.saturating_sub(self.window_secs()));
    }

    /// Keeps a received message in `p2p.secagg_audit_dir`, when set: a new file, mode
    /// 0600, named by this run (start second and a random tag), a counter, the kind
    /// and the sender's PeerId. The caller passes only what was let in (within the
    /// request limits, from a member of a community with secure aggregation, or an
    /// answer to this node's own request). At most `MAX_AUDIT_FILES` files and
    /// `MAX_AUDIT_BYTES` per run; a failure is logged and the message handled anyway.
    pub(super) fn audit_secagg(&mut self, peer: PeerId, message: ReceivedRef<'_>) {
        let Some(dir) = self.options.secagg_audit.clone() else { return };
        if self.secagg.audited >= MAX_AUDIT_FILES || self.secagg.audit_bytes >= MAX_AUDIT_BYTES {
            return;
        }
        let kind = match message {
            ReceivedRef::Request(_) => "request",
            ReceivedRef::Response(_) => "response",
        };
        if self.secagg.audit_run.is_none() {
            if let Err(e) = std::fs::create_dir_all(&dir) {
                tracing::warn!(path = %dir.display(), error = %e, "secure aggregation: the audit directory");
            }
            let mut tag = [0u8; 4];
            let _ = getrandom::getrandom(&mut tag);
            self.secagg.audit_run = Some(format!("{}-{}", Self::now(), hex::encode(tag)));
        }
        let run = self.secagg.audit_run.clone().unwrap_or_default();
        let path = dir.join(format!("{run}-{:08}-{kind}-{peer}.bin", self.secagg.audited));
        self.secagg.audited += 1;
        let written = postcard::to_allocvec(&message).map_err(|e| e.to_string()).and_then(|bytes| {
            use std::io::Write;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            self.secagg.audit_bytes = self.secagg.audit_bytes.saturating_add(bytes.len() as u64);
            options.open(&path).and_then(|mut f| f.write_all(&bytes)).map_err(|e| e.to_string())
        });
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "secure aggregation: writing the audit file");
        }
    }

    /// Whether a request from `peer` is audited: from a member of a followed community
    /// with secure aggregation (anything else is refused unread anyway).
    pub(super) fn audits_request_from(&self, peer: &PeerId) -> bool {
        self.options.secagg_audit.is_some()
            && node_of(peer).is_some_and(|n| {
                self.communities
                    .iter()
                    .any(|c| self.on_schedule(&c.manifest.secure).is_some() && c.manifest.is_member(&n))
            })
    }

    /// Deletes audit files last written before `before` (the window: the store deletes
    /// the shares then too).
    fn prune_audit(&mut self, before: i64) {
        let Some(dir) = &self.options.secagg_audit else { return };
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        let cutoff = std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(before).unwrap_or(0));
        for entry in entries.flatten() {
            let old = entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < cutoff);
            let ours = entry.file_name().to_str().is_some_and(|n| n.ends_with(".bin"));
            if old
                && ours
                && let Err(e) = std::fs::remove_file(entry.path())
            {
                tracing::warn!(path = %entry.path().display(), error = %e, "secure aggregation: deleting an audit file");
            }
        }
    }

    /// Sends `request` to `to` unless one for the same (community, period, what) is in
    /// flight; to itself, answers it in place.
    fn ask(&mut self, to: NodeId, request: SecaggRequest, pending: Pending) {
        let key = pending.key();
        if !self.secagg.busy.insert(key) {
            return;
        }
        if to == self.me {
            let me = *self.swarm.local_peer_id();
            let response = self.answer_secagg(me, request);
            self.on_secagg_response(me, pending, response);
            return;
        }
        let Some(peer) = peer_id_of(&to) else {
            self.secagg.busy.remove(&key);
            return;
        };
        let id = self.swarm.behaviour_mut().secagg.send_request(&peer, request);
        self.secagg.requests.insert(id, pending);
    }

    /// The request for `pending` ended without an answer: asked again next tick.
    pub(super) fn secagg_failed(&mut self, pending: Pending) {
        self.secagg.busy.remove(&pending.key());
        if let Pending::Verify { round, .. } = pending {
            // Again with a fresh key: the helper never answered this one.
            self.secagg.leading.remove(&round);
        }
    }

    /// A member's step for one period; true when it asked the leader for the round.
    fn member_step(&mut self, id: &CommunityId, period: i64, sa: &SecureAggregation) -> bool {
        // The store's copy went (a user reported in the period was deleted): so does this.
        if self.secagg.outbox.contains_key(&(*id, period)) && !self.store.secagg_outbox_held(id, period).unwrap_or(true)
        {
            self.secagg.outbox.remove(&(*id, period));
            return false;
        }
        if !self.secagg.outbox.contains_key(&(*id, period)) {
            // Undelivered reports a restart left in the store.
            match self.store.secagg_outbox(id, period) {
                Ok(Some(out)) => {
                    self.secagg.outbox.insert((*id, period), out);
                    let due = (self.result_due(period), self.sync_secs());
                    self.secagg.awaiting.entry((*id, period)).or_insert(due);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "secure aggregation: reading undelivered reports"),
            }
        }
        if let Some(out) = self.secagg.outbox.get(&(*id, period)) {
            let (leader_left, helper_left) = (!out.leader.is_empty(), !out.helper.is_empty());
            if leader_left {
                self.deliver(id, period, true, sa.leader);
            }
            if helper_left {
                self.deliver(id, period, false, sa.helper);
            }
            return false;
        }
        if self.store.secagg_marked(REPORTED, id, period).unwrap_or(true)
            || self.secagg.busy.contains(&(*id, period, b'r'))
        {
            return false;
        }
        // A node with no user at the aggregate level has nothing to report (that says
        // how its users chose to share, not whether they listened).
        let secs = self.period_secs();
        let any = self
            .store
            .period_inputs(period, period + secs, &self.options.credit_rules)
            .map(|inputs| crate::privacy::release::secure_inputs(&inputs).next().is_some());
        match any {
            Ok(true) => {}
            Ok(false) => {
                let _ = self.store.secagg_mark(REPORTED, id, period);
                return false;
            }
            Err(e) => {
                tracing::warn!(error = %e, "secure aggregation: reading the period");
                return false;
            }
        }
        self.ask(sa.leader, SecaggRequest::Round { community: *id, period }, Pending::Round { community: *id, period });
        true
    }

    /// Sends the next chunk of shares for one aggregator: at most
    /// `MAX_SHARES_PER_SUBMIT`, and no more bytes than `SUBMIT_SHARE_BYTES` (at least one).
    fn deliver(&mut self, id: &CommunityId, period: i64, to_leader: bool, to: NodeId) {
        let Some(out) = self.secagg.outbox.get(&(*id, period)) else { return };
        let shares = if to_leader { &out.leader } else { &out.helper };
        let mut bytes = 0usize;
        let chunk: Vec<ShareV1> = shares
            .iter()
            .take(MAX_SHARES_PER_SUBMIT)
            .take_while(|s| {
                bytes = bytes.saturating_add(s.input_share.len() + s.public_share.len() + 64);
                bytes <= SUBMIT_SHARE_BYTES
            })
            .cloned()
            .collect();
        let chunk = if chunk.is_empty() { shares.iter().take(1).cloned().collect() } else { chunk };
        let count = chunk.len();
        let request = SecaggRequest::Submit { round: ByteBuf::from(out.round.clone()), shares: chunk };
        self.ask(to, request, Pending::Submit { community: *id, period, to_leader, count });
    }

    /// A member with the round: charge, bound, shard, record, then deliver. Every
    /// user at the aggregate level is reported, listened or not (an all-zero report
    /// is a valid one): how many reports a node sends depends on its users' levels,
    /// never on their activity. At most the community's quota per node, picked at
    /// random; the others are recorded as not sent.
    fn make_reports(&mut self, bytes: &[u8], community: &CommunityId, period: i64) -> Result<(), String> {
        use rand::seq::SliceRandom;
        let (round, sa) = self.open_round(bytes)?;
        if &round.community != community || round.period_start != period {
            return Err("the leader answered another round".into());
        }
        let secs = self.period_secs();
        let inputs = self
            .store
            .period_inputs(period, period + secs, &self.options.credit_rules)
            .map_err(|e| format!("reading the period: {e}"))?;
        let mut users: Vec<&crate::privacy::release::UserPeriod> =
            crate::privacy::release::secure_inputs(&inputs).collect();
        users.shuffle(&mut rand::make_rng::<rand::rngs::StdRng>());
        let quota = round.params.max_reports_per_node as usize;
        let week = week_of(period);
        let cost = Spend { eps_milli: round.params.cost_eps_milli(), delta_pico: 0 };
        // Each user within the quota is sharded first (the measurement does not depend
        // on the ledgers), outside the releases' lock: the Prio3 proofs take a few
        // milliseconds each. Nothing of an uncharged user's is kept below.
        let mut made = Vec::with_capacity(users.len().min(quota));
        for u in users.iter().take(quota) {
            let bits = secagg::measurement(&round, &u.artists, &u.tracks);
            let mut report = [0u8; 16];
            getrandom::getrandom(&mut report).map_err(|e| format!("randomness: {e}"))?;
            made.push((bits.clone(), secagg::shard(&round, &bits, report).map_err(|e| e.to_string())?));
        }
        let mut made = made.into_iter();
        let mut ledgers = BTreeMap::new();
        let mut records = Vec::new();
        let mut out = OutboxV1 { round: bytes.to_vec(), leader: Vec::new(), helper: Vec::new() };
        // The same lock as the node's releases: the ledgers read here are the ones
        // written below, with no release charging them in between.
        let _ordered = self.store.contributions_lock();
        let mut accounts =
            self.store.accounts(week, users.iter().map(|u| u.user)).map_err(|e| format!("reading ledgers: {e}"))?;
        for (i, u) in users.iter().enumerate() {
            // In the order sharded: the i-th user's report (within the quota).
            let sharded = if i < quota { made.next() } else { None };
            let Some(account) = accounts.get_mut(&u.user) else { continue };
            let mut record = SecureReportV1 {
                community: *community,
                period,
                round: round.id(),
                items: Vec::new(),
                charged: Spend::default(),
                refused: None,
            };
            if i >= quota {
                record.refused = Some(format!("the community takes at most {quota} reports per node a period"));
                records.push((u.user, record));
                continue;
            }
            if let Err(why) = account.week.charge_report(cost, self.options.budget, account.earlier) {
                record.refused = Some(why.to_string());
                records.push((u.user, record));
                continue;
            }
            let Some((bits, report)) = sharded else { continue };
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
            out.leader.push(report.leader);
            out.helper.push(report.helper);
        }
        // Stored with the charges in one transaction, so what the users are charged
        // for is delivered even after a crash.
        let fresh = self
            .store
            .commit_secure_reports(community, period, week, &ledgers, &records, &out)
            .map_err(|e| format!("recording the reports: {e}"))?;
        drop(_ordered);
        if !fresh || out.leader.is_empty() {
            return Ok(());
        }
        tracing::info!(community = %short_hex(community), period, reports = out.leader.len(), "secure aggregation: reports made");
        self.secagg.awaiting.insert((*community, period), (self.result_due(period), self.sync_secs()));
        self.secagg.outbox.insert((*community, period), out);
        self.deliver(community, period, true, sa.leader);
        self.deliver(community, period, false, sa.helper);
        Ok(())
    }

    /// The leader's round of a period that is over and within the window: made once,
    /// from what is public.
    fn round_for(&mut self, community: &CommunityId, period: i64) -> Result<Vec<u8>, RoundRefusal> {
        use RoundRefusal::{Never, NotYet};
        if !self.in_window(period) {
            // A period of the grid that has not ended yet will have a round; any other
            // (off the grid, past the window, absurd) never.
            let secs = self.period_secs();
            if period_of(period, secs) == period && period.saturating_add(secs) > Self::now() {
                return Err(NotYet("the period is not over".into()));
            }
            return Err(Never("not a period of this node's grid that is over and within the window".into()));
        }
        if let Some(held) = self.store.secagg_round(community, period).map_err(|e| NotYet(e.to_string()))? {
            return Ok(held);
        }
        let sa = self.secure_of(community).ok_or_else(|| Never("no secure aggregation in this community".into()))?;
        let secs = self.period_secs();
        if Self::now() < period.saturating_add(secs).saturating_add(self.options.result_delay_secs) {
            return Err(NotYet("the period's round is not made yet".into()));
        }
        let mut published = Vec::new();
        for back in 0..=3 {
            let state = self.store.period_state(period - back * secs).map_err(|e| NotYet(e.to_string()))?;
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
        // Nothing published to count (an empty vocabulary): no round, ever.
        round.check().map_err(|e| Never(format!("no round for this period: {e}")))?;
        let signed = self.identity.sign_round(&round);
        self.store.put_secagg_round(community, period, &signed).map_err(|e| NotYet(e.to_string()))
    }

    /// The leader's timed step: start verification once; after that, finish it (the
    /// same bytes again if the helper's answer was lost).
    fn leader_step(&mut self, id: &CommunityId, period: i64, sa: &SecureAggregation) {
        if self.store.secure_result(id, period).ok().flatten().is_some() {
            return;
        }
        let Ok(Some(bytes)) = self.store.secagg_round(id, period) else { return };
        let round = match self.open_round(&bytes) {
            Ok((r, _)) => r,
            Err(e) => {
                tracing::debug!(error = %e, "secure aggregation: own round");
                return;
            }
        };
        let rid = round.id();
        if self.store.secagg_marked(AGGREGATED, id, period).unwrap_or(true) {
            // Verified: re-send the same aggregate share until the helper answers.
            if let Ok(Some(own)) = self.store.secagg_aggregate(&rid)
                && own.peer_commitment.is_some()
            {
                self.send_finish(id, period, rid, sa.helper, own.aggregate);
            }
            return;
        }
        if self.secagg.busy.contains(&(*id, period, b'v')) {
            return;
        }
        let Ok(held) = self.store.secagg_shares(&rid) else { return };
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
        self.secagg.leading.insert(rid, Leading { round, start, held });
        self.ask(
            sa.helper,
            SecaggRequest::Verify { round: ByteBuf::from(bytes), key, shares },
            Pending::Verify { community: *id, period, round: rid },
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
                if self.on_schedule(&c.manifest.secure).map(|s| s.leader) != Some(self.me) {
                    return err("this node is not the community's leader");
                }
                match self.round_for(&community, period) {
                    Ok(bytes) => SecaggResponse::Round(ByteBuf::from(bytes)),
                    Err(RoundRefusal::NotYet(e)) => err(e),
                    Err(RoundRefusal::Never(e)) => SecaggResponse::Closed(e),
                }
            }
            SecaggRequest::Submit { round, shares } => self.take_shares(from, &round, &shares),
            SecaggRequest::Verify { round, key, shares } => self.helper_verify(from, &round, key, &shares),
            SecaggRequest::Finish { community, period, round, leader_aggregate } => {
                self.helper_finish(from, &community, period, &round, &leader_aggregate)
            }
            // Results are public (gossiped to every follower): any node may fetch one it
            // missed, under the request limits.
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
            return SecaggResponse::Closed("this round was already aggregated".into());
        }
        // One round per period: the helper keeps the first it is shown.
        match self.store.put_secagg_round(&c, p, round) {
            Ok(held) if held == round => {}
            Ok(_) => return err("another round of this period is held"),
            Err(e) => return err(e),
        }
        let rid = round_v.id();
        let vdaf = match round_v.vdaf() {
            Ok(v) => v,
            Err(e) => return err(e),
        };
        let mut from_node = match self.store.secagg_node_shares(&rid, &from) {
            Ok(n) => n as usize,
            Err(e) => return err(e),
        };
        let (mut accepted, mut refused, mut take) = (0u32, Vec::new(), Vec::new());
        for share in shares {
            let replay = match self.store.secagg_share_held(&rid, &share.report) {
                Ok(held) => held || take.iter().any(|h: &Held| h.share.report == share.report),
                Err(e) => return err(e),
            };
            match secagg::admit(&round_v, &rid, &vdaf, agg_id, replay, from_node, share) {
                Ok(()) => {
                    take.push(Held { node: from, share: share.clone() });
                    from_node += 1;
                    accepted += 1;
                }
                // A share already held is taken: a member retrying after a lost answer.
                Err(_) if replay => accepted += 1,
                Err(e) => refused.push(e.to_string()),
            }
        }
        // Stored (one batch, one flush) before the answer acknowledges them.
        if let Err(e) = self.store.put_secagg_shares(&rid, &from, &take) {
            return err(e);
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
        if shares.len() > MAX_REPORTS_PER_ROUND {
            return err("too many reports");
        }
        let (c, p) = (round_v.community, round_v.period_start);
        match self.store.secagg_round(&c, p) {
            Ok(Some(held)) if held == round => {}
            Ok(None) => return SecaggResponse::Closed("no share of this round was received".into()),
            Ok(Some(_)) => return err("another round of this period is held"),
            Err(e) => return err(e),
        }
        if Self::now() < p.saturating_add(self.period_secs()).saturating_add(self.options.result_delay_secs) {
            return err("the collection window is still open");
        }
        // Once per period, set before anything else: a replayed or second request never
        // yields a second aggregate of the same reports.
        match self.store.secagg_mark(AGGREGATED, &c, p) {
            Ok(true) => {}
            Ok(false) => return SecaggResponse::Closed("this round was already aggregated (a replay)".into()),
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
            Err(e) => return SecaggResponse::Closed(e.to_string()),
        };
        if let Err(e) = secagg::check_batch(&round_v.params, &step.accepted, &held) {
            tracing::info!(community = %short_hex(&c), period = p, "secure aggregation: too small a batch, nothing released");
            return SecaggResponse::Closed(e.to_string());
        }
        let mut rng = rand::make_rng::<rand::rngs::StdRng>();
        let aggregate = match secagg::noised_aggregate(&round_v, &step.accepted, &mut rng) {
            Ok(a) => a,
            Err(e) => return SecaggResponse::Closed(e.to_string()),
        };
        let mut salt = [0u8; 32];
        if getrandom::getrandom(&mut salt).is_err() {
            return SecaggResponse::Closed("no randomness".into());
        }
        let commitment = secagg::commit(&salt, &aggregate);
        let agg = SecaggAggV1 {
            aggregate,
            salt,
            accepted: u32::try_from(step.accepted.len()).unwrap_or(u32::MAX),
            peer_commitment: None,
            finished: None,
        };
        if let Err(e) = self.store.put_secagg_aggregate(&rid, &agg) {
            return err(e);
        }
        SecaggResponse::Verdicts {
            messages: step.messages.into_iter().map(|(r, m)| (r, m.map(ByteBuf::from))).collect(),
            commitment,
        }
    }

    /// The helper combines the leader's share with its own (drawn and committed to
    /// before it saw the leader's), signs the result once per round, and reveals its
    /// share so the leader can check the result.
    fn helper_finish(
        &mut self,
        from: NodeId,
        community: &CommunityId,
        period: i64,
        rid: &RoundId,
        leader_agg: &[u8],
    ) -> SecaggResponse {
        let Ok(Some(mut own)) = self.store.secagg_aggregate(rid) else {
            return err("this node has no aggregate of the round");
        };
        let leader_hash = *blake3::hash(leader_agg).as_bytes();
        let answer = |f: &crate::store::secagg::FinishedV1, own: &SecaggAggV1| SecaggResponse::Cosigned {
            body: ByteBuf::from(f.body.clone()),
            sig: ByteBuf::from(f.sig.clone()),
            aggregate: ByteBuf::from(own.aggregate.clone()),
            salt: own.salt,
        };
        if let Some(f) = &own.finished {
            // One result per round: the same answer again for the same share.
            return if f.leader_aggregate == leader_hash {
                answer(f, &own)
            } else {
                err("this round's result is already signed with another leader share")
            };
        }
        // Which round: the helper's own record of the period's, from this leader.
        let round = match self.store.secagg_round(community, period).map(|b| b.map(|b| self.open_round(&b))) {
            Ok(Some(Ok((r, sa)))) if sa.leader == from && sa.helper == self.me && r.id() == *rid => r,
            Ok(_) => return err("no round of this id held from this leader"),
            Err(e) => return err(e),
        };
        let counts = match secagg::combine(&round, leader_agg, &own.aggregate) {
            Ok(c) => c,
            Err(e) => return err(e),
        };
        let result = SecureResultV1::of(&round, &counts, Self::now());
        let body = result.encode();
        let sig = self.identity.sign_secure_result(&body);
        let finished = crate::store::secagg::FinishedV1 { leader_aggregate: leader_hash, body, sig };
        own.finished = Some(finished.clone());
        if let Err(e) = self.store.put_secagg_aggregate(rid, &own) {
            return err(e);
        }
        answer(&finished, &own)
    }

    /// A secure result over gossip (`secure_topic`): kept when both of the community's
    /// aggregators signed it, for a period of this node's grid and length that is over
    /// and within retention, issued after its period and not in the future. A result
    /// that does not decode, or names another community than its topic's, is rejected
    /// (the sender's fault); one whose signatures do not verify is ignored, not punished:
    /// the relay may hold a manifest that names other aggregators.
    pub(super) fn take_secure_result(&mut self, community: &CommunityId, bytes: &[u8]) -> Verdict {
        let verdict = self.judge_secure_result(community, bytes);
        match &verdict {
            Verdict::Accept => self.status.accepted += 1,
            Verdict::Reject(_) => self.status.rejected += 1,
            _ => self.status.ignored += 1,
        }
        verdict
    }

    fn judge_secure_result(&mut self, community: &CommunityId, bytes: &[u8]) -> Verdict {
        let (signed, r) = match SignedSecureResult::decode(bytes) {
            Ok((signed, r)) if &r.community == community => (signed, r),
            Ok(_) => return Verdict::Reject("a secure result of another community on this topic".into()),
            Err(e) => return Verdict::Reject(e.to_string()),
        };
        let Some(sa) = self.secure_of(community) else {
            return Verdict::Ignore("no secure aggregation in this community here".into());
        };
        let (now, secs, p) = (Self::now(), self.period_secs(), r.period_start);
        let end = p.saturating_add(secs);
        if i64::from(r.period_secs) != secs
            || period_of(p, secs) != p
            || end > now
            || p < now.saturating_sub(self.options.retention_secs)
            || r.issued_at < end
            || r.issued_at > now.saturating_add(300)
        {
            return Verdict::Ignore("a secure result outside this node's periods".into());
        }
        if let Err(e) = signed.check_signatures(&sa.leader, &sa.helper) {
            return Verdict::Ignore(e.to_string());
        }
        let stored = match self.store.put_secure_result(community, p, bytes) {
            Ok(true) => Ok(true),
            // One held already: it stays, unless it no longer verifies under the
            // community's aggregators (they changed since), when this one replaces it.
            Ok(false) => match self.store.secure_result(community, p) {
                Ok(Some(held)) if SignedSecureResult::open(&held, community, &sa.leader, &sa.helper).is_ok() => {
                    Ok(false)
                }
                Ok(_) => self.store.replace_secure_result(community, p, bytes).map(|()| true),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match stored {
            Ok(true) => {
                self.secagg.awaiting.remove(&(*community, p));
                Verdict::Accept
            }
            Ok(false) => Verdict::Ignore("duplicate".into()),
            Err(e) => {
                tracing::error!(error = %e, "storing a secure result");
                Verdict::Ignore("storage failed".into())
            }
        }
    }

    pub(super) fn on_secagg_response(&mut self, peer: PeerId, pending: Pending, response: SecaggResponse) {
        self.secagg.busy.remove(&pending.key());
        match (pending, response) {
            (pending, SecaggResponse::Error(why)) => {
                tracing::info!(%peer, error = %why, what = pending.name(), "secure aggregation refused");
                if let Pending::Verify { round, .. } = pending {
                    self.secagg.leading.remove(&round);
                }
            }
            (pending, SecaggResponse::Closed(why)) => {
                tracing::info!(%peer, why = %why, what = pending.name(), "secure aggregation: period closed");
                match pending {
                    Pending::Verify { community, period, round } => {
                        self.secagg.leading.remove(&round);
                        let _ = self.store.secagg_mark(AGGREGATED, &community, period);
                    }
                    Pending::Submit { community, period, .. } => {
                        self.secagg.outbox.remove(&(community, period));
                        if let Err(e) = self.store.drop_secagg_outbox(&community, period) {
                            tracing::warn!(error = %e, "secure aggregation: dropping closed reports");
                        }
                    }
                    // No round will be made: nothing is reported (nobody is charged).
                    Pending::Round { community, period } => {
                        let _ = self.store.secagg_mark(REPORTED, &community, period);
                    }
                    _ => {}
                }
            }
            (Pending::Round { community, period }, SecaggResponse::Round(bytes)) => {
                if let Err(e) = self.make_reports(&bytes, &community, period) {
                    tracing::warn!(community = %short_hex(&community), period, error = %e, "secure aggregation: no reports");
                }
            }
            (
                Pending::Submit { community, period, to_leader, count },
                SecaggResponse::Submitted { accepted, refused },
            ) => {
                if !refused.is_empty() {
                    tracing::info!(accepted, refused = ?refused, "secure aggregation: shares refused");
                }
                let done = match self.secagg.outbox.get_mut(&(community, period)) {
                    Some(out) => {
                        let list = if to_leader { &mut out.leader } else { &mut out.helper };
                        list.drain(..count.min(list.len()));
                        if let Err(e) = self.store.secagg_delivered(&community, period, to_leader, count) {
                            tracing::warn!(error = %e, "secure aggregation: recording a delivery");
                        }
                        out.leader.is_empty() && out.helper.is_empty()
                    }
                    None => false,
                };
                if done {
                    self.secagg.outbox.remove(&(community, period));
                }
            }
            (Pending::Verify { community, period, round }, SecaggResponse::Verdicts { messages, commitment }) => {
                self.leader_finish(&community, period, round, messages, commitment);
            }
            (Pending::Finish { community, period, round }, SecaggResponse::Cosigned { body, sig, aggregate, salt }) => {
                self.leader_sign(&community, period, &round, body.into_vec(), sig.into_vec(), &aggregate, &salt);
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
                if let Pending::Verify { round, .. } = pending {
                    self.secagg.leading.remove(&round);
                }
            }
        }
    }

    /// The leader with the helper's verdicts: finish verification, check the batch,
    /// draw its own noised aggregate once (stored with the helper's commitment), mark
    /// the period aggregated, and send the share.
    fn leader_finish(
        &mut self,
        c: &CommunityId,
        p: i64,
        rid: RoundId,
        messages: Vec<(ReportId, Option<ByteBuf>)>,
        commitment: [u8; 32],
    ) {
        let Some(Leading { round, start, held }) = self.secagg.leading.remove(&rid) else { return };
        // The helper has aggregated this round: it never will again.
        let _ = self.store.secagg_mark(AGGREGATED, c, p);
        let messages: Vec<(ReportId, Option<Vec<u8>>)> =
            messages.into_iter().map(|(r, m)| (r, m.map(|b| b.into_vec()))).collect();
        let outcome = (|| -> Result<SecaggAggV1, secagg::SecaggError> {
            let (accepted, rejected) = secagg::leader_finish(&round, start, &messages)?;
            if !rejected.is_empty() {
                tracing::info!(rejected = rejected.len(), "secure aggregation: reports rejected");
            }
            secagg::check_batch(&round.params, &accepted, &held)?;
            let mut rng = rand::make_rng::<rand::rngs::StdRng>();
            Ok(SecaggAggV1 {
                aggregate: secagg::noised_aggregate(&round, &accepted, &mut rng)?,
                salt: [0; 32],
                accepted: u32::try_from(accepted.len()).unwrap_or(u32::MAX),
                peer_commitment: Some(commitment),
                finished: None,
            })
        })();
        let own = match outcome {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(community = %short_hex(c), period = p, error = %e, "secure aggregation: nothing released");
                return;
            }
        };
        if let Err(e) = self.store.put_secagg_aggregate(&rid, &own) {
            tracing::warn!(error = %e, "secure aggregation: storing the aggregate");
            return;
        }
        let Some(sa) = self.secure_of(c) else { return };
        self.send_finish(c, p, rid, sa.helper, own.aggregate);
    }

    /// Sends the leader's stored aggregate share (the first time, and again until the
    /// helper answers: always the same bytes).
    fn send_finish(&mut self, c: &CommunityId, p: i64, rid: RoundId, helper: NodeId, aggregate: Vec<u8>) {
        self.ask(
            helper,
            SecaggRequest::Finish { community: *c, period: p, round: rid, leader_aggregate: ByteBuf::from(aggregate) },
            Pending::Finish { community: *c, period: p, round: rid },
        );
    }

    /// The leader with the helper's signed result: check the revealed share against
    /// the commitment and the result against both shares, then sign and store it.
    #[allow(clippy::too_many_arguments)]
    fn leader_sign(
        &mut self,
        c: &CommunityId,
        p: i64,
        rid: &RoundId,
        body: Vec<u8>,
        helper_sig: Vec<u8>,
        helper_agg: &[u8],
        salt: &[u8; 32],
    ) {
        let checked = (|| -> Result<Vec<u8>, String> {
            let sa = self.secure_of(c).ok_or("no secure aggregation")?;
            let bytes = self.store.secagg_round(c, p).map_err(|e| e.to_string())?.ok_or("no round")?;
            let (round, _) = self.open_round(&bytes)?;
            let own = self.store.secagg_aggregate(rid).map_err(|e| e.to_string())?.ok_or("no aggregate")?;
            let commitment = own.peer_commitment.ok_or("no commitment")?;
            let result: SecureResultV1 = match postcard::take_from_bytes(&body) {
                Ok((r, [])) => r,
                _ => return Err("the helper's result does not decode".into()),
            };
            if result.encode() != body || result.round != *rid {
                return Err("the helper's result is not canonical or names another round".into());
            }
            secagg::check_result(&round, &result, &own.aggregate, helper_agg, salt, &commitment)
                .map_err(|e| e.to_string())?;
            let leader_sig = self.identity.sign_secure_result(&body);
            let signed = SignedSecureResult { body: body.clone(), leader_sig, helper_sig: helper_sig.clone() };
            let bytes = signed.encode();
            SignedSecureResult::open(&bytes, c, &sa.leader, &sa.helper).map_err(|e| e.to_string())?;
            Ok(bytes)
        })();
        match checked {
            Ok(bytes) => match self.store.put_secure_result(c, p, &bytes) {
                Ok(_) => {
                    tracing::info!(community = %short_hex(c), period = p, "secure aggregation: result released");
                    self.queue(super::secure_topic(c), bytes);
                }
                Err(e) => tracing::warn!(error = %e, "secure aggregation: storing the result"),
            },
            Err(e) => {
                tracing::warn!(community = %short_hex(c), period = p, error = %e, "secure aggregation: the helper's result is refused, nothing released")
            }
        }
    }
}
