//! Secure aggregation across nodes, pure: a community's private chart counted from
//! secret shares that no single node ever sees in the clear.
//!
//! The cryptography is Prio3 (draft-irtf-cfrg-vdaf) from the `prio` crate
//! (libprio-rs), with its `MultihotCountVec` validity circuit: each report is a vector of
//! bits over the round's public vocabulary with at most `2·L0` bits set (L0 artists and
//! L0 tracks per user), secret-shared between two aggregators, each with a
//! zero-knowledge proof share that the aggregators check together without learning the
//! vector. The noise is `prio`'s discrete Laplace sampler. This module is the protocol
//! around them: the round (what is counted, under which parameters), the client's
//! bounded measurement, the two aggregators' verification steps, the minimum batch,
//! the noise each aggregator adds by itself, and the combination into a chart.
//!
//! Privacy: each aggregator holds one share of every report (uniformly random on its
//! own), its own output and aggregate shares, and the other aggregator's *noised*
//! aggregate share. What either learns beyond the released chart is the number of
//! reports each node sent. Each aggregator adds discrete Laplace noise of scale
//! `2·L0/ε` to every coordinate of its aggregate share, so the total is ε-DP even
//! when the other aggregator removes its own noise (its noise is the only noise it
//! can remove). The vocabulary is public (built from published sections only), so
//! releasing noisy counts over it needs no partition selection and no δ; the display
//! threshold is post-processing.
//!
//! Robustness: a report outside the bounds (a value other than 0 or 1, more bits than
//! `2·L0`, a broken proof, the wrong length, another round's context) fails
//! verification and is left out; it never enters the sums. Robustness against a
//! dishonest *aggregator* is not Prio's goal. The release is signed by both: the helper
//! commits to its noised aggregate share before it sees the leader's (`commit`),
//! computes and signs the result, and the leader signs it only if the revealed share
//! matches the commitment and the result is what both shares make (`check_result`).
//! An aggregator can still spoil the total with a wrong share of its own (see
//! docs/privacy.md, "Secure aggregation").

use std::collections::{BTreeMap, BTreeSet};

use prio::codec::{Encode, ParameterizedDecode};
use prio::dp::distributions::PureDpDiscreteLaplace;
use prio::dp::{DifferentialPrivacyStrategy, PureDpBudget, Rational};
use prio::field::{Field128, FieldElement, FieldElementWithInteger};
use prio::vdaf::prio3::{
    Prio3InputShare, Prio3MultihotCountVec, Prio3PublicShare, Prio3VerifierShare, Prio3VerifyState,
};
use prio::vdaf::{AggregateShare, Aggregator, OutputShare, VerifyTransition};
use serde::{Deserialize, Serialize};

use super::{CommunityId, NodeId};
use crate::privacy::snapshot::{ItemId, ItemName};

/// Domain separation of everything this protocol hashes or hands to Prio3.
pub const CONTEXT: &str = "hearsay 2026-12 secure aggregation v1";
pub const SCHEMA: u16 = 1;
/// The two aggregators' indices in Prio3.
pub const LEADER: usize = 0;
pub const HELPER: usize = 1;
/// Most items per chart in a round's vocabulary.
pub const MAX_VOCABULARY: usize = 4096;
/// Most items of a released chart.
pub const MAX_RELEASED: usize = 100;

pub type RoundId = [u8; 32];
pub type ReportId = [u8; 16];
type Field = Field128;
/// The accepted reports' output shares held by one aggregator.
pub type Accepted = BTreeMap<ReportId, OutputShare<Field128>>;

/// The community's secure-aggregation settings, as its manifest carries them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecureParams {
    /// ε of one period's release, in 1/1000. Each aggregator's noise alone gives it.
    pub eps_milli: u32,
    /// Items counted per user per chart (artists, tracks).
    pub l0: u32,
    /// Nothing is released from fewer accepted reports than this…
    pub min_users: u32,
    /// …or from fewer distinct member nodes.
    pub min_nodes: u32,
    /// Most reports one node may send per round (its users at the aggregate level).
    pub max_reports_per_node: u32,
    /// Items whose noisy listener count is below this are not shown (post-processing).
    pub min_listeners: u32,
    /// Most items per chart in the vocabulary.
    pub vocabulary: u32,
}

/// ε of one secure report by default, in 1/1000: the default weekly budget
/// (`privacy::params::Budget`), so one report a week fits it all year (52 × 0.15 ≤ 8).
pub const DEFAULT_EPS_MILLI: u32 = 150;
pub const DEFAULT_VOCABULARY: u32 = 2_000;

impl Default for SecureParams {
    fn default() -> Self {
        // L0 = 1 as in the node's own release; at ε 0.15 each aggregator's noise has
        // scale 2/0.15 ≈ 13.3, and the display threshold that keeps a 2 × 2,000-item
        // vocabulary's noise off the chart is 169 listeners.
        SecureParams {
            eps_milli: DEFAULT_EPS_MILLI,
            l0: 1,
            min_users: 10,
            min_nodes: 3,
            max_reports_per_node: 64,
            min_listeners: suggested_min_listeners(DEFAULT_EPS_MILLI, 1, DEFAULT_VOCABULARY),
            vocabulary: DEFAULT_VOCABULARY,
        }
    }
}

/// Expected rows per release made of noise alone (an item nobody counted that the
/// two aggregators' noise lifts over the display threshold) that
/// `suggested_min_listeners` allows.
pub const NOISE_ROWS: f64 = 0.05;

/// The display threshold at which a release of `2 × vocabulary` items shows at most
/// `NOISE_ROWS` rows of pure noise, in expectation. The released count of an item
/// nobody counted is the sum of two Laplace variables of scale `b = 2·L0/ε`, whose tail
/// is `P(S > t) = e^(-t/b)·(2 + t/b)/4` for continuous noise; one more than its
/// solution covers the discrete noise's mass at the threshold itself (the unit tests
/// check the result against the exact discrete convolution).
pub fn suggested_min_listeners(eps_milli: u32, l0: u32, vocabulary: u32) -> u32 {
    let b = 2.0 * f64::from(l0.max(1)) * 1000.0 / f64::from(eps_milli.max(1));
    let items = 2.0 * f64::from(vocabulary.max(1));
    let tail = |x: f64| (-x).exp() * (2.0 + x) / 4.0;
    // x = t/b: the tail falls monotonically; bisect for tail(x) · items = NOISE_ROWS.
    let (mut lo, mut hi) = (0.0f64, 200.0f64);
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if tail(mid) * items > NOISE_ROWS { lo = mid } else { hi = mid }
    }
    let t = (hi * b).ceil() + 1.0;
    if t >= f64::from(u32::MAX) { u32::MAX } else { (t as u32).max(1) }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecaggError {
    #[error("secure aggregation parameters: {0}")]
    Params(String),
    #[error("round: {0}")]
    Round(String),
    #[error("report {report}: {why}")]
    Report { report: String, why: String },
    #[error(
        "batch too small: {users} accepted reports from {nodes} nodes, the community needs {min_users} from {min_nodes}"
    )]
    BatchTooSmall { users: usize, nodes: usize, min_users: u32, min_nodes: u32 },
    #[error("aggregation: {0}")]
    Aggregate(String),
}

fn report_err(id: &ReportId, why: impl ToString) -> SecaggError {
    SecaggError::Report { report: hex::encode(id), why: why.to_string() }
}

impl SecureParams {
    pub fn validate(&self) -> Result<(), SecaggError> {
        let bad = |s: &str| Err(SecaggError::Params(s.to_owned()));
        if self.eps_milli == 0 || self.eps_milli > 100_000 {
            return bad("epsilon must be in (0, 100]");
        }
        if self.l0 == 0 || self.l0 > 100 {
            return bad("l0 must be in 1..=100");
        }
        if self.min_users < 2 {
            return bad("min_users must be at least 2 (one report would be that user's)");
        }
        if self.min_nodes < 2 {
            return bad("min_nodes must be at least 2 (one node's reports would be that node's)");
        }
        if self.max_reports_per_node == 0 || self.max_reports_per_node > 100_000 {
            return bad("max_reports_per_node must be in 1..=100000");
        }
        if self.vocabulary == 0 || self.vocabulary as usize > MAX_VOCABULARY {
            return bad("vocabulary must be in 1..=4096 items per chart");
        }
        Ok(())
    }

    /// Bits a report may set: L0 per chart, two charts.
    pub fn max_weight(&self) -> usize {
        2 * self.l0 as usize
    }

    /// L1 sensitivity of the counts to one user added or removed, and so the noise
    /// scale `b = sensitivity / ε` each aggregator applies.
    pub fn sensitivity(&self) -> u64 {
        2 * u64::from(self.l0)
    }

    /// What one report costs the user it is for.
    pub fn cost_eps_milli(&self) -> u64 {
        u64::from(self.eps_milli)
    }
}

/// One period's round: the leader announces it, members report against it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundV1 {
    pub schema: u16,
    pub community: CommunityId,
    pub leader: NodeId,
    pub helper: NodeId,
    pub period_start: i64,
    pub period_secs: u32,
    pub params: SecureParams,
    /// The public vocabulary, canonical names sorted by item id, unique.
    pub artists: Vec<ItemName>,
    pub tracks: Vec<ItemName>,
}

impl RoundV1 {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<RoundV1, SecaggError> {
        let round: RoundV1 = postcard::from_bytes(bytes).map_err(|e| SecaggError::Round(e.to_string()))?;
        round.check()?;
        Ok(round)
    }

    /// blake3 of the round's canonical bytes: every share and result names it, and it
    /// is part of Prio3's context, so a report made for one round fails in any other.
    pub fn id(&self) -> RoundId {
        round_id_of(&self.encode())
    }

    pub fn check(&self) -> Result<(), SecaggError> {
        if self.schema != SCHEMA {
            return Err(SecaggError::Round(format!("unknown schema {}", self.schema)));
        }
        self.params.validate()?;
        if self.leader == self.helper {
            return Err(SecaggError::Round("the leader and the helper must be different nodes".into()));
        }
        if self.period_secs == 0 {
            return Err(SecaggError::Round("period of 0 seconds".into()));
        }
        for (what, list) in [("artists", &self.artists), ("tracks", &self.tracks)] {
            if list.len() > self.params.vocabulary as usize {
                return Err(SecaggError::Round(format!(
                    "{} {what} in the vocabulary, the parameters allow {}",
                    list.len(),
                    self.params.vocabulary
                )));
            }
            let ids: Vec<ItemId> = list.iter().map(ItemName::id).collect();
            if ids.windows(2).any(|w| w[0] >= w[1]) {
                return Err(SecaggError::Round(format!("{what} are not sorted by item id and unique")));
            }
            let want_title = what == "tracks";
            if list.iter().any(|n| n.title.is_some() != want_title || *n != n.canonical()) {
                return Err(SecaggError::Round(format!("{what} hold a name that is not a canonical {what} name")));
            }
        }
        if self.is_empty() {
            return Err(SecaggError::Round("empty vocabulary".into()));
        }
        Ok(())
    }

    /// Length of a report's vector: artists, then tracks.
    pub fn len(&self) -> usize {
        self.artists.len() + self.tracks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The Prio3 instance of this round.
    pub fn vdaf(&self) -> Result<Prio3MultihotCountVec, SecaggError> {
        let len = self.len();
        Prio3MultihotCountVec::new_multihot_count_vec(2, len, self.params.max_weight(), chunk_length(len))
            .map_err(|e| SecaggError::Round(format!("Prio3: {e}")))
    }

    /// Prio3's application context: the protocol and the round.
    pub fn context(&self) -> Vec<u8> {
        let mut c = CONTEXT.as_bytes().to_vec();
        c.extend_from_slice(&self.id());
        c
    }
}

/// The id of the round whose canonical bytes are `body`.
pub fn round_id_of(body: &[u8]) -> RoundId {
    let mut h = blake3::Hasher::new_derive_key(CONTEXT);
    h.update(b"round");
    h.update(body);
    *h.finalize().as_bytes()
}

/// The gadget chunk length Prio3 recommends for a vector of `len`: about √len.
fn chunk_length(len: usize) -> usize {
    (len as f64).sqrt().ceil().max(1.0) as usize
}

/// The public vocabulary of a round: the items already published (public sections,
/// DP sections, earlier community charts), most listeners first, capped per chart,
/// canonical names sorted by item id.
pub fn vocabulary(published: impl IntoIterator<Item = (ItemName, i64)>, cap: usize) -> (Vec<ItemName>, Vec<ItemName>) {
    let mut score: BTreeMap<ItemId, (i64, ItemName)> = BTreeMap::new();
    for (name, listeners) in published {
        let name = name.canonical();
        let e = score.entry(name.id()).or_insert((0, name));
        e.0 = e.0.saturating_add(listeners.max(0));
    }
    let (mut artists, mut tracks): (Vec<_>, Vec<_>) =
        score.into_iter().map(|(id, (s, n))| (s, id, n)).partition(|(_, _, n)| n.title.is_none());
    let pick = |v: &mut Vec<(i64, ItemId, ItemName)>| -> Vec<ItemName> {
        v.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        v.truncate(cap);
        v.sort_by_key(|a| a.1);
        v.drain(..).map(|(_, _, n)| n).collect()
    };
    (pick(&mut artists), pick(&mut tracks))
}

/// One user's bounded measurement: their L0 most played vocabulary items per chart
/// (ties by item id) set to 1. It depends only on the user's own listens and the
/// public vocabulary.
pub fn measurement(round: &RoundV1, artists: &[(ItemName, u64)], tracks: &[(ItemName, u64)]) -> Vec<bool> {
    let mut out = vec![false; round.len()];
    let l0 = round.params.l0 as usize;
    let mut mark = |vocab: &[ItemName], offset: usize, listened: &[(ItemName, u64)]| {
        let index: BTreeMap<ItemId, usize> = vocab.iter().enumerate().map(|(i, n)| (n.id(), i)).collect();
        let mut hits: Vec<(u64, ItemId, usize)> = listened
            .iter()
            .filter(|(_, n)| *n > 0)
            .filter_map(|(name, n)| {
                let id = name.id();
                index.get(&id).map(|&i| (*n, id, i))
            })
            .collect();
        hits.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        hits.dedup_by(|a, b| a.2 == b.2);
        for (_, _, i) in hits.into_iter().take(l0) {
            if let Some(slot) = out.get_mut(offset + i) {
                *slot = true;
            }
        }
    };
    mark(&round.artists, 0, artists);
    mark(&round.tracks, round.artists.len(), tracks);
    out
}

/// What a member node sends to one aggregator for one user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareV1 {
    pub round: RoundId,
    pub report: ReportId,
    #[serde(with = "serde_bytes")]
    pub public_share: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub input_share: Vec<u8>,
}

/// One user's report: the share for each aggregator.
#[derive(Clone, Debug)]
pub struct ClientReport {
    pub leader: ShareV1,
    pub helper: ShareV1,
}

/// Shards one measurement. `report` must be fresh random bytes (it is Prio3's nonce).
pub fn shard(round: &RoundV1, measurement: &[bool], report: ReportId) -> Result<ClientReport, SecaggError> {
    use prio::vdaf::Client;
    let vdaf = round.vdaf()?;
    let (public, inputs) =
        vdaf.shard(&round.context(), &measurement.to_vec(), &report).map_err(|e| report_err(&report, e))?;
    let public_share = public.get_encoded().map_err(|e| report_err(&report, e))?;
    let mut inputs = inputs.into_iter();
    let mut next = || -> Result<ShareV1, SecaggError> {
        let share = inputs.next().ok_or_else(|| report_err(&report, "Prio3 made too few shares"))?;
        Ok(ShareV1 {
            round: round.id(),
            report,
            public_share: public_share.clone(),
            input_share: share.get_encoded().map_err(|e| report_err(&report, e))?,
        })
    };
    let leader = next()?;
    let helper = next()?;
    Ok(ClientReport { leader, helper })
}

/// A share an aggregator holds, with the member node that sent it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub node: NodeId,
    pub share: ShareV1,
}

/// Checks a share as it arrives: for this round (`round_id`, `vdaf`: the round's id
/// and Prio3 instance, computed once per batch), of the right shape for this
/// aggregator, not a report already held (`replay`), within the sender's quota
/// (`from_node`: the shares of this round already held from the sender). Decoding
/// here means a malformed share is refused at once with a reason, not at aggregation.
pub fn admit(
    round: &RoundV1,
    round_id: &RoundId,
    vdaf: &Prio3MultihotCountVec,
    agg_id: usize,
    replay: bool,
    from_node: usize,
    share: &ShareV1,
) -> Result<(), SecaggError> {
    if &share.round != round_id {
        return Err(report_err(&share.report, "made for another round"));
    }
    if replay {
        return Err(report_err(&share.report, "already received (a replay)"));
    }
    if from_node >= round.params.max_reports_per_node as usize {
        return Err(report_err(
            &share.report,
            format!(
                "the node already sent {from_node} reports, the community allows {}",
                round.params.max_reports_per_node
            ),
        ));
    }
    decode_share(vdaf, agg_id, share)?;
    Ok(())
}

fn decode_share(
    vdaf: &Prio3MultihotCountVec,
    agg_id: usize,
    share: &ShareV1,
) -> Result<(Prio3PublicShare<32>, Prio3InputShare<Field, 32>), SecaggError> {
    let public = Prio3PublicShare::get_decoded_with_param(vdaf, &share.public_share)
        .map_err(|e| report_err(&share.report, format!("malformed public share: {e}")))?;
    let input = Prio3InputShare::get_decoded_with_param(&(vdaf, agg_id), &share.input_share)
        .map_err(|e| report_err(&share.report, format!("malformed input share: {e}")))?;
    Ok((public, input))
}

/// The leader's first step: its verifier share of every report it holds. Reports
/// that fail already here are rejected (listed with the reason).
pub struct LeaderStart {
    states: BTreeMap<ReportId, Prio3VerifyState<Field, 32>>,
    /// Sent to the helper.
    pub shares: Vec<(ReportId, Vec<u8>)>,
    pub rejected: Vec<SecaggError>,
}

pub fn leader_start(
    round: &RoundV1,
    verify_key: &[u8; 32],
    held: &BTreeMap<ReportId, Held>,
) -> Result<LeaderStart, SecaggError> {
    let vdaf = round.vdaf()?;
    let ctx = round.context();
    let mut out = LeaderStart { states: BTreeMap::new(), shares: Vec::new(), rejected: Vec::new() };
    for (id, h) in held {
        let step = || -> Result<_, SecaggError> {
            let (public, input) = decode_share(&vdaf, LEADER, &h.share)?;
            let (state, share) =
                vdaf.verify_init(verify_key, &ctx, LEADER, &(), id, &public, &input).map_err(|e| report_err(id, e))?;
            Ok((state, share.get_encoded().map_err(|e| report_err(id, e))?))
        };
        match step() {
            Ok((state, bytes)) => {
                out.states.insert(*id, state);
                out.shares.push((*id, bytes));
            }
            Err(e) => out.rejected.push(e),
        }
    }
    Ok(out)
}

/// The helper's step: with the leader's verifier shares, decide every report both
/// hold. Returns the accepted reports' output shares and, per report the leader
/// named, the verifier message (or `None`: rejected).
pub struct HelperStep {
    pub accepted: Accepted,
    pub messages: Vec<(ReportId, Option<Vec<u8>>)>,
    pub rejected: Vec<SecaggError>,
}

pub fn helper_step(
    round: &RoundV1,
    verify_key: &[u8; 32],
    held: &BTreeMap<ReportId, Held>,
    leader_shares: &[(ReportId, Vec<u8>)],
) -> Result<HelperStep, SecaggError> {
    let vdaf = round.vdaf()?;
    let ctx = round.context();
    let mut out = HelperStep { accepted: BTreeMap::new(), messages: Vec::new(), rejected: Vec::new() };
    let mut seen = BTreeSet::new();
    for (id, leader_bytes) in leader_shares {
        if !seen.insert(*id) {
            return Err(SecaggError::Aggregate(format!("the leader named report {} twice", hex::encode(id))));
        }
        let step = || -> Result<_, SecaggError> {
            let h = held.get(id).ok_or_else(|| report_err(id, "the helper holds no share of it"))?;
            let (public, input) = decode_share(&vdaf, HELPER, &h.share)?;
            let (state, mine) =
                vdaf.verify_init(verify_key, &ctx, HELPER, &(), id, &public, &input).map_err(|e| report_err(id, e))?;
            let theirs = Prio3VerifierShare::get_decoded_with_param(&state, leader_bytes)
                .map_err(|e| report_err(id, format!("malformed leader verifier share: {e}")))?;
            let message = vdaf.verifier_shares_to_message(&ctx, &(), [theirs, mine]).map_err(|e| report_err(id, e))?;
            let bytes = message.get_encoded().map_err(|e| report_err(id, e))?;
            match vdaf.verify_next(&ctx, state, message).map_err(|e| report_err(id, e))? {
                VerifyTransition::Finish(output) => Ok((output, bytes)),
                VerifyTransition::Continue(..) => Err(report_err(id, "Prio3 asked for another round")),
            }
        };
        match step() {
            Ok((output, bytes)) => {
                out.accepted.insert(*id, output);
                out.messages.push((*id, Some(bytes)));
            }
            Err(e) => {
                out.rejected.push(e);
                out.messages.push((*id, None));
            }
        }
    }
    Ok(out)
}

/// The leader's last step: the helper's verdicts applied. The accepted set must be
/// exactly the helper's.
pub fn leader_finish(
    round: &RoundV1,
    start: LeaderStart,
    messages: &[(ReportId, Option<Vec<u8>>)],
) -> Result<(Accepted, Vec<SecaggError>), SecaggError> {
    let vdaf = round.vdaf()?;
    let ctx = round.context();
    let mut states = start.states;
    let mut accepted = BTreeMap::new();
    let mut rejected = start.rejected;
    for (id, message) in messages {
        let state = states.remove(id).ok_or_else(|| {
            SecaggError::Aggregate(format!(
                "the helper answered for report {} the leader did not send",
                hex::encode(id)
            ))
        })?;
        let Some(bytes) = message else {
            rejected.push(report_err(id, "rejected by the helper"));
            continue;
        };
        let message = prio::vdaf::prio3::Prio3VerifierMessage::get_decoded_with_param(&state, bytes)
            .map_err(|e| SecaggError::Aggregate(format!("malformed verifier message for {}: {e}", hex::encode(id))))?;
        match vdaf.verify_next(&ctx, state, message) {
            Ok(VerifyTransition::Finish(output)) => {
                accepted.insert(*id, output);
            }
            // The helper accepted a report the leader's check refuses: one of the two
            // aggregators is not following the protocol; nothing is released.
            Ok(VerifyTransition::Continue(..)) | Err(_) => {
                return Err(SecaggError::Aggregate(format!(
                    "the helper accepted report {} but its verifier message does not verify",
                    hex::encode(id)
                )));
            }
        }
    }
    if let Some(id) = states.keys().next() {
        return Err(SecaggError::Aggregate(format!("the helper gave no verdict on report {}", hex::encode(id))));
    }
    Ok((accepted, rejected))
}

/// Checks the community's minimum batch over the accepted reports.
pub fn check_batch(
    params: &SecureParams,
    accepted: &Accepted,
    held: &BTreeMap<ReportId, Held>,
) -> Result<(), SecaggError> {
    let nodes: BTreeSet<&NodeId> = accepted.keys().filter_map(|id| held.get(id).map(|h| &h.node)).collect();
    if accepted.len() < params.min_users as usize || nodes.len() < params.min_nodes as usize {
        return Err(SecaggError::BatchTooSmall {
            users: accepted.len(),
            nodes: nodes.len(),
            min_users: params.min_users,
            min_nodes: params.min_nodes,
        });
    }
    Ok(())
}

/// Sums the accepted output shares and adds this aggregator's own noise: discrete
/// Laplace of scale `2·L0/ε` (from `prio::dp`) on every coordinate. The encoded
/// aggregate share is what goes to the other aggregator.
pub fn noised_aggregate(
    round: &RoundV1,
    accepted: &Accepted,
    rng: &mut (impl rand::Rng + ?Sized),
) -> Result<Vec<u8>, SecaggError> {
    use prio::vdaf::Aggregatable;
    use rand::distr::Distribution;
    let vdaf = round.vdaf()?;
    let mut agg = vdaf.aggregate_init(&());
    for out in accepted.values() {
        agg.accumulate(out).map_err(|e| SecaggError::Aggregate(e.to_string()))?;
    }
    let eps = Rational::from_unsigned(u128::from(round.params.eps_milli), 1000)
        .map_err(|e| SecaggError::Aggregate(e.to_string()))?;
    let budget = PureDpBudget::new(eps).map_err(|e| SecaggError::Aggregate(e.to_string()))?;
    let sensitivity = Rational::from_unsigned(u128::from(round.params.sensitivity()), 1)
        .map_err(|e| SecaggError::Aggregate(e.to_string()))?;
    let dist = PureDpDiscreteLaplace::from_budget(budget)
        .create_distribution(sensitivity)
        .map_err(|e| SecaggError::Aggregate(e.to_string()))?;
    let mut values: Vec<Field> = agg.as_ref().to_vec();
    for v in &mut values {
        let noise = dist.sample(rng);
        let n = i64::try_from(&noise).map_err(|_| SecaggError::Aggregate("noise out of range".into()))?;
        *v += signed(n);
    }
    AggregateShare::from(values).get_encoded().map_err(|e| SecaggError::Aggregate(e.to_string()))
}

fn signed(n: i64) -> Field {
    let m = Field::from(u128::from(n.unsigned_abs()));
    if n < 0 { Field::zero() - m } else { m }
}

/// The noisy total from both aggregate shares: one signed count per vocabulary item.
pub fn combine(round: &RoundV1, leader: &[u8], helper: &[u8]) -> Result<Vec<i64>, SecaggError> {
    let vdaf = round.vdaf()?;
    let decode = |b: &[u8], who: &str| {
        AggregateShare::<Field>::get_decoded_with_param(&(&vdaf, &()), b)
            .map_err(|e| SecaggError::Aggregate(format!("malformed {who} aggregate share: {e}")))
    };
    let (a, b) = (decode(leader, "leader")?, decode(helper, "helper")?);
    let (a, b) = (a.as_ref(), b.as_ref());
    if a.len() != round.len() || b.len() != round.len() {
        return Err(SecaggError::Aggregate("aggregate share of the wrong length".into()));
    }
    let half = Field::modulus() / 2;
    Ok(a.iter()
        .zip(b)
        .map(|(x, y)| {
            let v = u128::from(*x + *y);
            // Values above p/2 are negative (noise larger than the count).
            let s = if v > half { -i128::try_from(Field::modulus() - v).unwrap_or(i128::MAX) } else { v as i128 };
            i64::try_from(s).unwrap_or(if s < 0 { i64::MIN } else { i64::MAX })
        })
        .collect())
}

/// One row of a released secure chart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecureEntry {
    pub name: ItemName,
    /// Noisy number of users who counted the item.
    pub listeners: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecureChart {
    pub artists: Vec<SecureEntry>,
    pub tracks: Vec<SecureEntry>,
}

/// The chart from the noisy counts: items at or above the display threshold, most
/// listeners first (ties by item id), at most `MAX_RELEASED` per chart.
pub fn chart(round: &RoundV1, counts: &[i64]) -> SecureChart {
    let min = i64::from(round.params.min_listeners);
    let pick = |names: &[ItemName], counts: &[i64]| -> Vec<SecureEntry> {
        let mut rows: Vec<(i64, ItemId, &ItemName)> =
            names.iter().zip(counts).filter(|(_, c)| **c >= min).map(|(n, c)| (*c, n.id(), n)).collect();
        rows.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        rows.truncate(MAX_RELEASED);
        rows.into_iter().map(|(c, _, n)| SecureEntry { name: n.clone(), listeners: c }).collect()
    };
    let split = round.artists.len().min(counts.len());
    SecureChart { artists: pick(&round.artists, &counts[..split]), tracks: pick(&round.tracks, &counts[split..]) }
}

/// A community's private chart for one period, as both aggregators computed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecureResultV1 {
    pub schema: u16,
    pub community: CommunityId,
    pub round: RoundId,
    pub period_start: i64,
    pub period_secs: u32,
    pub issued_at: i64,
    /// The minimum batch the release met (the community's parameters): how many
    /// reports and nodes it counted exactly is not published.
    pub min_users: u32,
    pub min_nodes: u32,
    /// ε of this release (each aggregator's noise alone).
    pub eps_milli: u32,
    pub chart: SecureChart,
}

/// Largest signed secure result.
pub const MAX_SECURE_RESULT_BYTES: usize = 60 * 1024;

/// The result body and both aggregators' signatures over it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedSecureResult {
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub leader_sig: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub helper_sig: Vec<u8>,
}

impl SecureResultV1 {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// The result a round's noisy counts make. It says how many reports and nodes
    /// were counted only as "at least the minimum batch": an exact number would move
    /// by one with one user, outside the noise.
    pub fn of(round: &RoundV1, counts: &[i64], issued_at: i64) -> SecureResultV1 {
        SecureResultV1 {
            schema: SCHEMA,
            community: round.community,
            round: round.id(),
            period_start: round.period_start,
            period_secs: round.period_secs,
            issued_at,
            min_users: round.params.min_users,
            min_nodes: round.params.min_nodes,
            eps_milli: round.params.eps_milli,
            chart: chart(round, counts),
        }
    }
}

impl SignedSecureResult {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes a signed result without checking its signatures: size, canonical
    /// decoding of the envelope and of the body, schema and bounds. A failure here is
    /// the sender's fault whatever manifest anyone holds.
    pub fn decode(bytes: &[u8]) -> Result<(SignedSecureResult, SecureResultV1), SecaggError> {
        let bad = |why: &str| SecaggError::Aggregate(format!("secure result: {why}"));
        if bytes.len() > MAX_SECURE_RESULT_BYTES {
            return Err(bad("over the size limit"));
        }
        let signed: SignedSecureResult = match postcard::take_from_bytes(bytes) {
            Ok((s, [])) => s,
            _ => return Err(bad("does not decode")),
        };
        if signed.encode() != bytes {
            return Err(bad("not canonical"));
        }
        let result: SecureResultV1 = match postcard::take_from_bytes(&signed.body) {
            Ok((r, [])) => r,
            _ => return Err(bad("the body does not decode")),
        };
        if result.encode() != signed.body || result.schema != SCHEMA {
            return Err(bad("the body is not canonical"));
        }
        if result.chart.artists.len() > MAX_RELEASED || result.chart.tracks.len() > MAX_RELEASED {
            return Err(bad("too many rows"));
        }
        Ok((signed, result))
    }

    /// Opens a signed result of `community` whose aggregators are `leader` and
    /// `helper` (from the manifest): `decode`, the community, then both signatures.
    pub fn open(
        bytes: &[u8],
        community: &CommunityId,
        leader: &NodeId,
        helper: &NodeId,
    ) -> Result<SecureResultV1, SecaggError> {
        let (signed, result) = Self::decode(bytes)?;
        if &result.community != community {
            return Err(SecaggError::Aggregate("secure result: for another community".into()));
        }
        signed.check_signatures(leader, helper)?;
        Ok(result)
    }

    /// Both aggregators' signatures over the body (of a result `decode` accepted).
    pub fn check_signatures(&self, leader: &NodeId, helper: &NodeId) -> Result<(), SecaggError> {
        use crate::envelope::{DST_SECURE_RESULT, verify_detached};
        let bad = |why: &str| SecaggError::Aggregate(format!("secure result: {why}"));
        verify_detached(leader, DST_SECURE_RESULT, &self.body, &self.leader_sig)
            .map_err(|_| bad("the leader's signature does not verify"))?;
        verify_detached(helper, DST_SECURE_RESULT, &self.body, &self.helper_sig)
            .map_err(|_| bad("the helper's signature does not verify"))
    }
}

/// A commitment to an aggregate share: `blake3::derive_key(CONTEXT, "commit" ‖ salt ‖
/// share)`. The helper commits to its noised aggregate share before it sees the
/// leader's, and reveals it after: neither aggregator can choose its share as a
/// function of the other's (which would let it release any chart it liked).
pub fn commit(salt: &[u8; 32], aggregate: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(CONTEXT);
    h.update(b"commit");
    h.update(salt);
    h.update(aggregate);
    *h.finalize().as_bytes()
}

/// The leader's check before it signs the result the helper computed and signed:
/// the helper's revealed share matches its earlier commitment, and the result is
/// exactly what the two shares make.
pub fn check_result(
    round: &RoundV1,
    result: &SecureResultV1,
    own: &[u8],
    helper_agg: &[u8],
    salt: &[u8; 32],
    commitment: &[u8; 32],
) -> Result<(), SecaggError> {
    if &commit(salt, helper_agg) != commitment {
        return Err(SecaggError::Aggregate(
            "the helper's aggregate share is not the one it committed to: not signed".into(),
        ));
    }
    let counts = combine(round, own, helper_agg)?;
    if &SecureResultV1::of(round, &counts, result.issued_at) != result {
        return Err(SecaggError::Aggregate(
            "the helper's result is not what the aggregate shares make: not signed".into(),
        ));
    }
    Ok(())
}

#[doc(hidden)]
pub mod dishonest;
#[cfg(test)]
mod tests;
