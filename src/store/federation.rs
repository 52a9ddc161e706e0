//! Federation state on disk: validated snapshots of every origin (and this node's own),
//! the manifest chain of each community, and which communities this node follows.
//! Decisions (what is valid, how charts merge) are `federation`'s; this file stores.

use super::codec::{decode, encode};
use super::values::FollowV1;
use super::{Error, Result, Store, schema};
use crate::envelope::{MAX_SIGNED_BYTES, peek_signed};
use crate::federation::community::{SignedManifest, open_manifest};
use crate::federation::merge::{Held, PeriodState};
use crate::federation::result::{MAX_SIGNED_RESULT_BYTES, ResultV1, better, supersedes};
use crate::federation::{CommunityId, NodeId};
use crate::privacy::snapshot::SnapshotV1;

fn snapshot_key(period: i64, origin: &NodeId, version: u16, hash: &[u8; 32]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + 32 + 2 + 32);
    k.extend_from_slice(&super::keys::time_key(period));
    k.extend_from_slice(origin);
    k.extend_from_slice(&version.to_be_bytes());
    k.extend_from_slice(hash);
    k
}

fn prefix(period: i64, origin: Option<&NodeId>) -> Vec<u8> {
    let mut k = super::keys::time_key(period).to_vec();
    if let Some(o) = origin {
        k.extend_from_slice(o);
    }
    k
}

/// Reference to a held snapshot: (period, origin, version, blake3 of the bytes).
pub type SnapshotRef = (i64, NodeId, u16, [u8; 32]);

fn parse_ref(key: &[u8]) -> Result<SnapshotRef> {
    if key.len() != 74 {
        return Err(Error::corrupt(schema::PERIOD_ORIGIN_SNAPSHOT, key, "key is not period ‖ origin ‖ version ‖ hash"));
    }
    let mut t = [0u8; 8];
    t.copy_from_slice(&key[..8]);
    let mut origin = [0u8; 32];
    origin.copy_from_slice(&key[8..40]);
    let version = u16::from_be_bytes([key[40], key[41]]);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&key[42..74]);
    Ok((i64::try_from(u64::from_be_bytes(t)).unwrap_or(i64::MAX), origin, version, hash))
}

impl Store {
    /// Stores a validated snapshot envelope (the caller has checked it). Idempotent.
    pub fn put_snapshot(&self, period: i64, origin: &NodeId, version: u16, bytes: &[u8]) -> Result<[u8; 32]> {
        self.writable()?;
        let hash = *blake3::hash(bytes).as_bytes();
        self.trees.period_origin_snapshot.insert(snapshot_key(period, origin, version, &hash), bytes)?;
        self.network_changed();
        self.trees.period_origin_snapshot.flush()?;
        Ok(hash)
    }

    /// Every (version, hash) held for an origin's period.
    pub fn held_versions(&self, period: i64, origin: &NodeId) -> Result<Vec<(u16, [u8; 32])>> {
        let mut out = Vec::new();
        for kv in self.trees.period_origin_snapshot.scan_prefix(prefix(period, Some(origin))) {
            let (k, _) = kv?;
            let (_, _, v, h) = parse_ref(&k)?;
            out.push((v, h));
        }
        Ok(out)
    }

    /// References of the snapshots held with `from <= period < to`, newest first, at most
    /// `limit`.
    pub fn snapshot_refs(&self, from: i64, to: i64, limit: usize) -> Result<Vec<SnapshotRef>> {
        let mut out = Vec::new();
        if from >= to {
            return Ok(out);
        }
        // Newest first: past the limit, a peer catching up gets the recent periods (the
        // ones its charts show), not the oldest of the retention window.
        for kv in self
            .trees
            .period_origin_snapshot
            .range(prefix(from.max(0), None)..prefix(to.max(0), None))
            .rev()
            .take(limit)
        {
            let (k, _) = kv?;
            out.push(parse_ref(&k)?);
        }
        Ok(out)
    }

    /// The bytes of a held snapshot.
    pub fn snapshot_bytes(&self, r: &SnapshotRef) -> Result<Option<Vec<u8>>> {
        Ok(self.trees.period_origin_snapshot.get(snapshot_key(r.0, &r.1, r.2, &r.3))?.map(|v| v.to_vec()))
    }

    /// Everything held for a period, as the merge's state.
    pub fn period_state(&self, period: i64) -> Result<PeriodState> {
        let mut state = PeriodState::default();
        for kv in self.trees.period_origin_snapshot.scan_prefix(prefix(period, None)) {
            let (k, v) = kv?;
            let (_, _, version, hash) = parse_ref(&k)?;
            // Verified before it was stored: decode it, do not check the signature again.
            let snapshot = peek_signed(&v, MAX_SIGNED_BYTES)
                .map_err(|e| e.to_string())
                .and_then(|env| SnapshotV1::decode(&env.body).map_err(|e| e.to_string()))
                .map_err(|e| Error::corrupt(schema::PERIOD_ORIGIN_SNAPSHOT, &k, &format!("stored snapshot: {e}")))?;
            state.insert(Held { version, hash, snapshot });
        }
        Ok(state)
    }

    /// Periods (starts) for which any snapshot is held, newest first.
    pub fn snapshot_periods(&self, limit: usize) -> Result<Vec<i64>> {
        let mut out: Vec<i64> = Vec::new();
        let mut cursor: Option<Vec<u8>> = None;
        while out.len() < limit {
            let next = match &cursor {
                None => self.trees.period_origin_snapshot.last()?,
                Some(c) => self.trees.period_origin_snapshot.range(..c.clone()).next_back().transpose()?,
            };
            let Some((k, _)) = next else { break };
            let (period, ..) = parse_ref(&k)?;
            out.push(period);
            cursor = Some(prefix(period, None));
        }
        Ok(out)
    }

    /// Deletes every held snapshot of a period that starts before `before` (retention:
    /// what is older is never merged or served again). Returns how many went.
    pub fn prune_snapshots(&self, before: i64) -> Result<usize> {
        self.writable()?;
        let mut n = 0;
        for kv in self.trees.period_origin_snapshot.range(..prefix(before.max(0), None)) {
            let (k, _) = kv?;
            self.trees.period_origin_snapshot.remove(k)?;
            n += 1;
        }
        if n > 0 {
            self.trees.period_origin_snapshot.flush()?;
            self.network_changed();
        }
        Ok(n)
    }

    /// Every origin with a snapshot held (of any period still stored).
    pub fn held_origins(&self) -> Result<std::collections::BTreeSet<NodeId>> {
        let mut out = std::collections::BTreeSet::new();
        for kv in self.trees.period_origin_snapshot.iter() {
            let (k, _) = kv?;
            match k.get(8..40).and_then(|o| <[u8; 32]>::try_from(o).ok()) {
                Some(o) => {
                    out.insert(o);
                }
                None => {
                    return Err(Error::corrupt(schema::PERIOD_ORIGIN_SNAPSHOT, &k, "key is not period ‖ origin ‖ …"));
                }
            }
        }
        Ok(out)
    }

    /// Records that this node took a snapshot of `origin` at `now`, unless it did before.
    pub fn note_origin_seen(&self, origin: &NodeId, now: i64) -> Result<()> {
        self.writable()?;
        let value = super::keys::time_key(now);
        if self.trees.origin_firstseen.compare_and_swap(origin, None as Option<&[u8]>, Some(&value[..]))?.is_ok() {
            self.network_changed();
        }
        Ok(())
    }

    /// When this node first took a snapshot of `origin`.
    pub fn origin_first_seen(&self, origin: &NodeId) -> Result<Option<i64>> {
        Ok(self
            .trees
            .origin_firstseen
            .get(origin)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(|b| i64::try_from(u64::from_be_bytes(b)).unwrap_or(i64::MAX)))
    }

    /// Appends an accepted manifest version (the caller checked `accept`), never
    /// replacing a held one: `false` when another body of that version is held (it
    /// arrived meanwhile; the same body with other signatures counts as held).
    pub fn put_manifest(&self, m: &SignedManifest) -> Result<bool> {
        self.writable()?;
        let mut k = m.manifest.community().to_vec();
        k.extend_from_slice(&m.manifest.version.to_be_bytes());
        let tree = &self.trees.community_version_manifest;
        let stored = match tree.compare_and_swap(&k, None as Option<&[u8]>, Some(m.signed.as_slice()))? {
            Ok(()) => true,
            Err(e) => {
                let held = e.current.as_deref().map(open_manifest).transpose();
                let held = held.map_err(|e| Error::corrupt(schema::COMMUNITY_VERSION_MANIFEST, &k, &e.to_string()))?;
                return Ok(held.is_some_and(|h| h.body_hash() == m.body_hash()));
            }
        };
        tree.flush()?;
        self.network_changed();
        Ok(stored)
    }

    /// The latest accepted manifest of a community.
    pub fn manifest(&self, id: &CommunityId) -> Result<Option<SignedManifest>> {
        match self.trees.community_version_manifest.scan_prefix(id).next_back() {
            None => Ok(None),
            Some(kv) => {
                let (k, v) = kv?;
                open_manifest(&v)
                    .map(Some)
                    .map_err(|e| Error::corrupt(schema::COMMUNITY_VERSION_MANIFEST, &k, &e.to_string()))
            }
        }
    }

    /// What a ticket carries of a community's chain: the signed versions from 1 on, in
    /// order, while they fit `community::MAX_TICKET_CHAIN_BYTES` (reading no further),
    /// and the latest version's number.
    /// Empty when version 1 is not held (a node that joined with a first-format ticket
    /// of a later version: it cannot vouch for the chain); stops at any gap.
    pub fn ticket_chain(&self, id: &CommunityId) -> Result<(Vec<Vec<u8>>, u32)> {
        let head = self.manifest(id)?.map_or(0, |m| m.manifest.version);
        let mut chain = Vec::new();
        let mut total = 0usize;
        for kv in self.trees.community_version_manifest.scan_prefix(id) {
            let (k, v) = kv?;
            let version = k.get(32..36).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(u32::from_be_bytes);
            if version != u32::try_from(chain.len() + 1).ok() {
                break;
            }
            total = total.saturating_add(v.len());
            if total > crate::federation::community::MAX_TICKET_CHAIN_BYTES && !chain.is_empty() {
                break;
            }
            chain.push(v.to_vec());
        }
        Ok((chain, head))
    }

    /// The accepted manifest of one version of a community.
    pub fn manifest_at(&self, id: &CommunityId, version: u32) -> Result<Option<SignedManifest>> {
        let mut k = id.to_vec();
        k.extend_from_slice(&version.to_be_bytes());
        match self.trees.community_version_manifest.get(&k)? {
            None => Ok(None),
            Some(v) => open_manifest(&v)
                .map(Some)
                .map_err(|e| Error::corrupt(schema::COMMUNITY_VERSION_MANIFEST, &k, &e.to_string())),
        }
    }

    /// Keeps a fork (`community::is_fork`, checked by the caller) as evidence: at most one
    /// per version, so a forking administrator cannot fill the disk. Returns whether it
    /// was new.
    pub fn put_manifest_fork(&self, m: &SignedManifest) -> Result<bool> {
        self.writable()?;
        let mut k = m.manifest.community().to_vec();
        k.extend_from_slice(&m.manifest.version.to_be_bytes());
        let stored =
            self.trees.community_version_fork.compare_and_swap(k, None as Option<&[u8]>, Some(m.signed.as_slice()))?;
        self.trees.community_version_fork.flush()?;
        self.network_changed();
        Ok(stored.is_ok())
    }

    /// Records that this node signs the manifest body hashing to `body` as `version` of
    /// `id`. `Err(held)`: it already signed another body of that version (signing this
    /// one too would fork the community's history); signing the same body again is fine.
    pub fn claim_manifest_signature(
        &self,
        id: &CommunityId,
        version: u32,
        body: &[u8; 32],
    ) -> Result<std::result::Result<(), [u8; 32]>> {
        self.writable()?;
        let mut k = id.to_vec();
        k.extend_from_slice(&version.to_be_bytes());
        let tree = &self.trees.community_version_signed;
        let out = match tree.compare_and_swap(&k, None as Option<&[u8]>, Some(&body[..]))? {
            Ok(()) => Ok(()),
            Err(e) => match e.current.as_deref().and_then(|c| <[u8; 32]>::try_from(c).ok()) {
                Some(held) if held == *body => Ok(()),
                Some(held) => Err(held),
                None => {
                    return Err(Error::corrupt(schema::COMMUNITY_VERSION_SIGNED, &k, "value is not a 32-byte hash"));
                }
            },
        };
        tree.flush()?;
        Ok(out)
    }

    /// Forgets which body this node signed as `version` of `id` (a withdrawn proposal);
    /// whether there was one.
    pub fn withdraw_manifest_signature(&self, id: &CommunityId, version: u32) -> Result<bool> {
        self.writable()?;
        let mut k = id.to_vec();
        k.extend_from_slice(&version.to_be_bytes());
        let had = self.trees.community_version_signed.remove(k)?.is_some();
        self.trees.community_version_signed.flush()?;
        Ok(had)
    }

    /// The versions of a community its administrators forked, with the second manifest.
    pub fn manifest_forks(&self, id: &CommunityId) -> Result<Vec<(u32, Vec<u8>)>> {
        let mut out = Vec::new();
        for kv in self.trees.community_version_fork.scan_prefix(id) {
            let (k, v) = kv?;
            let version = k.get(32..36).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(u32::from_be_bytes);
            match version {
                Some(version) => out.push((version, v.to_vec())),
                None => return Err(Error::corrupt(schema::COMMUNITY_VERSION_FORK, &k, "key is not id ‖ version")),
            }
        }
        Ok(out)
    }

    /// Signed manifests of a community with a version above `after`, in order, each
    /// followed by its fork when one is held (so a peer catching up learns of it too).
    pub fn manifests_after(&self, id: &CommunityId, after: u32, limit: usize) -> Result<Vec<Vec<u8>>> {
        let mut from = id.to_vec();
        from.extend_from_slice(&after.saturating_add(1).to_be_bytes());
        let mut to = id.to_vec();
        to.extend_from_slice(&u32::MAX.to_be_bytes());
        let mut out = Vec::new();
        for kv in self.trees.community_version_manifest.range(from..=to) {
            let (k, v) = kv?;
            if out.len() >= limit {
                break;
            }
            out.push(v.to_vec());
            if let Some(fork) = self.trees.community_version_fork.get(&k)?
                && out.len() < limit
            {
                out.push(fork.to_vec());
            }
        }
        Ok(out)
    }

    pub fn follow(&self, id: &CommunityId, follow: &FollowV1) -> Result<()> {
        self.writable()?;
        self.trees.community_follow.insert(id, encode(follow))?;
        self.trees.community_follow.flush()?;
        self.network_changed();
        Ok(())
    }

    pub fn unfollow(&self, id: &CommunityId) -> Result<()> {
        self.writable()?;
        self.trees.community_follow.remove(id)?;
        self.network_changed();
        Ok(())
    }

    /// Every followed community with how it is followed.
    pub fn followed(&self) -> Result<Vec<(CommunityId, FollowV1)>> {
        let mut out = Vec::new();
        for kv in self.trees.community_follow.iter() {
            let (k, v) = kv?;
            let id = <[u8; 32]>::try_from(k.as_ref())
                .map_err(|_| Error::corrupt(schema::COMMUNITY_FOLLOW, &k, "key is not a community id"))?;
            out.push((id, decode(schema::COMMUNITY_FOLLOW, &k, &v)?));
        }
        Ok(out)
    }
}

/// Network views kept at once (distinct periods asked for since the last write).
const NETWORK_VIEWS_CACHED: usize = 16;

type ViewKey = (Option<i64>, u32);

/// The network views computed since the last federation write, and a count of writes
/// (a view computed across one is not kept).
#[derive(Default)]
pub(crate) struct NetworkCache {
    generation: u64,
    /// ((period asked for, period length), the view).
    views: Vec<(ViewKey, Vec<CommunityView>)>,
}

/// A followed community as shown on the network page.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CommunityView {
    pub id: String,
    pub name: String,
    pub version: u32,
    pub member: bool,
    pub members: usize,
    /// The period the charts are for (by default the last one this node released).
    pub period: Option<i64>,
    pub chart: crate::federation::merge::Chart,
    /// This chart combined with the linked communities' charts, when it has links.
    pub federated: Option<crate::federation::merge::Chart>,
    /// Linked communities: (name, id, weight in 1/1000, whether their manifest is held).
    pub links: Vec<(String, String, u16, bool)>,
    /// Manifest versions the administrators forked (two different signed manifests of
    /// one version): this node follows the one it took first.
    pub forks: Vec<u32>,
    /// When the chart is a signed result (a linked community this node is not a member
    /// of): the administrator who merged it (short id).
    pub merged_by: Option<String>,
    /// Results this node recomputed to other charts: (period, signer's short id).
    pub wrong_results: Vec<(i64, String)>,
    /// The community's private chart of the period (secure aggregation of its members'
    /// aggregate users, signed by both aggregators), when one was released.
    pub secure: Option<crate::federation::secagg::SecureResultV1>,
}

impl Store {
    /// The community's chart for the period starting at `period` and lasting `secs`:
    /// snapshots of periods of another length that happen to start there are not part of
    /// it (a one-second "period" must not count as a week).
    pub fn community_chart(
        &self,
        id: &CommunityId,
        period: i64,
        secs: u32,
    ) -> Result<Option<crate::federation::merge::Chart>> {
        self.merged_chart(id, period, secs, false)
    }

    /// The federated chart of community `id` for a period: its origins and its linked
    /// communities' (those whose manifests are held), each origin counted once.
    pub fn federated_chart(
        &self,
        id: &CommunityId,
        period: i64,
        secs: u32,
    ) -> Result<Option<crate::federation::merge::Chart>> {
        self.merged_chart(id, period, secs, true)
    }

    fn merged_chart(
        &self,
        id: &CommunityId,
        period: i64,
        secs: u32,
        with_links: bool,
    ) -> Result<Option<crate::federation::merge::Chart>> {
        let Some(m) = self.manifest(id)? else { return Ok(None) };
        let mut linked = Vec::new();
        let mut results = Vec::new();
        let followed = if with_links { self.followed()? } else { Vec::new() };
        for l in m.manifest.links.iter().filter(|_| with_links) {
            // A linked community this node is a member of: its snapshots are held here,
            // each origin counted once. Any other: its signed result (its snapshots are
            // not taken here), when one is held.
            if followed.iter().any(|(c, f)| *c == l.community && f.member) {
                if let Some(lm) = self.manifest(&l.community)? {
                    linked.push((l.weight_milli, lm.manifest));
                }
            } else if let Some((_, r, _)) = self.best_result(&l.community, period, secs)?
                && let Some(lm) = self.manifest_at(&l.community, r.manifest_version)?
            {
                results.push((l.weight_milli, r.input_nodes(&lm.manifest), r.chart));
            }
        }
        let refs: Vec<(u16, &crate::federation::community::ManifestV1)> = linked.iter().map(|(w, m)| (*w, m)).collect();
        let results: Vec<crate::federation::merge::Linked<'_>> = results
            .iter()
            .map(|(w, inputs, chart)| crate::federation::merge::Linked { weight_milli: *w, inputs, chart })
            .collect();
        let (state, seen) = self.chart_inputs(period, secs)?;
        Ok(Some(crate::federation::merge::federated_chart(&m.manifest, &refs, &results, &state, |o| seen(o))))
    }

    /// The communities this node takes as signed results rather than snapshots: those a
    /// followed community links and this node is not a member of (whether or not it
    /// also follows them by ticket).
    pub fn followed_by_result(&self) -> Result<std::collections::BTreeSet<CommunityId>> {
        let followed = self.followed()?;
        let mut linked = std::collections::BTreeSet::new();
        for (id, _) in &followed {
            if let Some(m) = self.manifest(id)? {
                linked.extend(m.manifest.links.iter().map(|l| l.community));
            }
        }
        Ok(followed.into_iter().filter(|(id, f)| !f.member && linked.contains(id)).map(|(id, _)| id).collect())
    }

    /// The snapshots of a period of length `secs`, and each origin's probation: whole
    /// periods from when this node first saw it to the period's start (none for an
    /// origin never seen here, or seen after the period began).
    #[allow(clippy::type_complexity)]
    fn chart_inputs(&self, period: i64, secs: u32) -> Result<(PeriodState, Box<dyn Fn(&NodeId) -> u32>)> {
        let mut state = self.period_state(period)?;
        for versions in state.by_origin.values_mut() {
            versions.retain(|_, s| s.period_secs == secs);
        }
        state.by_origin.retain(|_, versions| !versions.is_empty());
        let mut first_seen = std::collections::HashMap::new();
        for origin in state.by_origin.keys() {
            if let Some(t) = self.origin_first_seen(origin)? {
                first_seen.insert(*origin, t);
            }
        }
        let seen = move |o: &NodeId| crate::federation::merge::periods_seen(period, first_seen.get(o).copied(), secs);
        Ok((state, Box::new(seen)))
    }

    /// Every followed community with its chart and federated chart for the period of
    /// length `secs` starting at `period`; when `None`, the last complete period: the
    /// newest this node released itself (its own schedule, after the grace time), else
    /// the newest held. Never simply the newest held when the node has released: any
    /// member could send a snapshot of a short period ending now and stand in for the
    /// chart on every follower's page.
    ///
    /// Cached per (period, length) until the next federation write (`network_changed`):
    /// a page hit does not rescan every held snapshot.
    pub fn network_view(&self, period: Option<i64>, secs: u32) -> Result<Vec<CommunityView>> {
        let generation = {
            let cache = self.network.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((_, v)) = cache.views.iter().find(|(k, _)| *k == (period, secs)) {
                return Ok(v.clone());
            }
            cache.generation
        };
        let views = self.compute_network_view(period, secs)?;
        let mut cache = self.network.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // A write since the computation began may not be in it: not kept.
        if cache.generation == generation {
            if cache.views.len() >= NETWORK_VIEWS_CACHED {
                cache.views.remove(0);
            }
            cache.views.push(((period, secs), views.clone()));
        }
        Ok(views)
    }

    /// Forgets cached network views: called after every write to what they are made of
    /// (snapshots, first sightings, manifests, forks, follows, this node's releases).
    pub(crate) fn network_changed(&self) {
        let mut cache = self.network.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.generation = cache.generation.wrapping_add(1);
        cache.views.clear();
    }

    fn compute_network_view(&self, period: Option<i64>, secs: u32) -> Result<Vec<CommunityView>> {
        let period = match period {
            Some(p) => Some(p),
            None => match self.releases(1)?.first() {
                Some((start, _)) => Some(*start),
                None => self.snapshot_periods(1)?.into_iter().next(),
            },
        };
        let mut out = Vec::new();
        let by_result = self.followed_by_result()?;
        for (id, follow) in self.followed()? {
            let Some(m) = self.manifest(&id)? else { continue };
            let mut merged_by = None;
            let chart = match period {
                Some(p) if by_result.contains(&id) => match self.best_result(&id, p, secs)? {
                    Some((signer, r, _)) => {
                        merged_by = Some(crate::federation::short_hex(&signer));
                        r.chart
                    }
                    None => Default::default(),
                },
                Some(p) => self.community_chart(&id, p, secs)?.unwrap_or_default(),
                None => Default::default(),
            };
            let mut links = Vec::new();
            for l in &m.manifest.links {
                let held = self.manifest(&l.community)?.is_some();
                links.push((l.name.clone(), crate::federation::short_hex(&l.community), l.weight_milli, held));
            }
            let federated = match period {
                // A community taken by result: its members' snapshots are not here, so
                // neither is its federated chart.
                Some(p) if !m.manifest.links.is_empty() && !by_result.contains(&id) => {
                    self.federated_chart(&id, p, secs)?
                }
                _ => None,
            };
            out.push(CommunityView {
                id: crate::federation::short_hex(&id),
                name: m.manifest.name.clone(),
                version: m.manifest.version,
                member: follow.member,
                members: m.manifest.members.len(),
                period,
                chart,
                federated,
                links,
                forks: self.manifest_forks(&id)?.into_iter().map(|(v, _)| v).collect(),
                merged_by,
                wrong_results: self
                    .wrong_results(&id)?
                    .into_iter()
                    .map(|(p, s)| (p, crate::federation::short_hex(&s)))
                    .collect(),
                secure: match (&m.manifest.secure, period) {
                    (Some(sa), Some(p)) => self.secure_result(&id, p)?.and_then(|bytes| {
                        crate::federation::secagg::SignedSecureResult::open(&bytes, &id, &sa.leader, &sa.helper).ok()
                    }),
                    _ => None,
                },
            });
        }
        Ok(out)
    }
}

fn result_key(id: &CommunityId, period: i64, signer: &NodeId) -> Vec<u8> {
    let mut k = id.to_vec();
    k.extend_from_slice(&super::keys::time_key(period));
    k.extend_from_slice(signer);
    k
}

fn result_prefix(id: &CommunityId, period: i64) -> Vec<u8> {
    let mut k = id.to_vec();
    k.extend_from_slice(&super::keys::time_key(period));
    k
}

/// Most held results one catch-up question or answer reads (a community's periods in
/// the retention window times its administrators is the most there can be).
const MAX_RESULTS_SCANNED: usize = 4096;

/// A held result: its signer, the decoded result and blake3 of the signed bytes.
pub type HeldResult = (NodeId, ResultV1, [u8; 32]);

fn open_held_result(tree: &'static str, k: &[u8], v: &[u8]) -> Result<HeldResult> {
    let corrupt = |m: &str| Error::corrupt(tree, k, m);
    let env = crate::envelope::peek_signed(v, MAX_SIGNED_RESULT_BYTES).map_err(|e| corrupt(&e.to_string()))?;
    let r = ResultV1::decode(&env.body).map_err(|e| corrupt(&e.to_string()))?;
    Ok((env.signer, r, *blake3::hash(v).as_bytes()))
}

impl Store {
    /// Keeps a checked result (`federation::result::check`) unless one of its signer
    /// for the period is held with as many inputs or more (`result::supersedes`): so a
    /// signer re-issues a period at most once per member, whatever it dates them.
    /// Returns whether it was stored.
    pub fn put_result(&self, signer: &NodeId, r: &ResultV1, bytes: &[u8]) -> Result<bool> {
        self.writable()?;
        let k = result_key(&r.community, r.period_start, signer);
        let tree = &self.trees.community_period_signer_result;
        if let Some(held) = tree.get(&k)? {
            let (_, h, _) = open_held_result(schema::COMMUNITY_PERIOD_SIGNER_RESULT, &k, &held)?;
            if !supersedes(r, &h) {
                return Ok(false);
            }
        }
        tree.insert(k, bytes)?;
        tree.flush()?;
        self.network_changed();
        Ok(true)
    }

    /// How many inputs the result held from `signer` for a community's period has,
    /// and whether a wrong one of that signer is held for it: what a new result must
    /// beat before it is worth verifying.
    pub fn result_held(&self, id: &CommunityId, period: i64, signer: &NodeId) -> Result<(Option<usize>, bool)> {
        let k = result_key(id, period, signer);
        let inputs = match self.trees.community_period_signer_result.get(&k)? {
            Some(v) => Some(open_held_result(schema::COMMUNITY_PERIOD_SIGNER_RESULT, &k, &v)?.1.inputs.len()),
            None => None,
        };
        Ok((inputs, self.trees.community_period_signer_wrongresult.contains_key(&k)?))
    }

    /// Keeps a result found wrong as evidence (one per signer and period); whether new.
    pub fn put_wrong_result(&self, signer: &NodeId, r: &ResultV1, bytes: &[u8]) -> Result<bool> {
        self.writable()?;
        let k = result_key(&r.community, r.period_start, signer);
        let tree = &self.trees.community_period_signer_wrongresult;
        let stored = tree.compare_and_swap(k, None as Option<&[u8]>, Some(bytes))?.is_ok();
        tree.flush()?;
        self.network_changed();
        Ok(stored)
    }

    /// Every result held for a community's period, by signer.
    pub fn results(&self, id: &CommunityId, period: i64) -> Result<Vec<HeldResult>> {
        let mut out = Vec::new();
        for kv in self.trees.community_period_signer_result.scan_prefix(result_prefix(id, period)) {
            let (k, v) = kv?;
            out.push(open_held_result(schema::COMMUNITY_PERIOD_SIGNER_RESULT, &k, &v)?);
        }
        Ok(out)
    }

    /// The result a chart takes for a community's period of length `secs`: the best
    /// held (`result::better`) whose signer no wrong result is held against for it.
    pub fn best_result(&self, id: &CommunityId, period: i64, secs: u32) -> Result<Option<HeldResult>> {
        let mut best: Option<HeldResult> = None;
        for (signer, r, hash) in self.results(id, period)? {
            if r.period_secs != secs
                || self.trees.community_period_signer_wrongresult.contains_key(result_key(id, period, &signer))?
            {
                continue;
            }
            if best.as_ref().is_none_or(|(_, b, bh)| better((&r, &hash), (b, bh))) {
                best = Some((signer, r, hash));
            }
        }
        Ok(best)
    }

    /// Wrong results held against a community's administrators: (period, signer).
    pub fn wrong_results(&self, id: &CommunityId) -> Result<Vec<(i64, NodeId)>> {
        let mut out = Vec::new();
        for kv in self.trees.community_period_signer_wrongresult.scan_prefix(id) {
            let (k, v) = kv?;
            let (signer, r, _) = open_held_result(schema::COMMUNITY_PERIOD_SIGNER_WRONGRESULT, &k, &v)?;
            out.push((r.period_start, signer));
        }
        Ok(out)
    }

    /// Signed results of a community for periods from `from` on, newest first (at most
    /// `limit`), leaving out any for a period `have` lists with at least as many inputs:
    /// what a catch-up answer carries. Reads at most `MAX_RESULTS_SCANNED` held results.
    pub fn results_since(
        &self,
        id: &CommunityId,
        from: i64,
        have: &std::collections::HashMap<i64, u32>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        let range = result_prefix(id, from.max(0))..result_prefix(id, i64::MAX);
        for kv in self.trees.community_period_signer_result.range(range).rev().take(MAX_RESULTS_SCANNED) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = kv?;
            let (_, r, _) = open_held_result(schema::COMMUNITY_PERIOD_SIGNER_RESULT, &k, &v)?;
            let inputs = u32::try_from(r.inputs.len()).unwrap_or(u32::MAX);
            if have.get(&r.period_start).is_none_or(|held| *held < inputs) {
                out.push(v.to_vec());
            }
        }
        Ok(out)
    }

    /// Per period from `from` on (the newest `limit`), the most inputs of a result held
    /// for the community: what a `Results` request lists as held.
    pub fn result_periods(&self, id: &CommunityId, from: i64, limit: usize) -> Result<Vec<(i64, u32)>> {
        // Wrong results count as held too: a peer need not send them again.
        let mut per: std::collections::BTreeMap<i64, u32> = std::collections::BTreeMap::new();
        for (tree, name) in [
            (&self.trees.community_period_signer_result, schema::COMMUNITY_PERIOD_SIGNER_RESULT),
            (&self.trees.community_period_signer_wrongresult, schema::COMMUNITY_PERIOD_SIGNER_WRONGRESULT),
        ] {
            let range = result_prefix(id, from.max(0))..result_prefix(id, i64::MAX);
            for kv in tree.range(range).rev().take(MAX_RESULTS_SCANNED) {
                let (k, v) = kv?;
                let (_, r, _) = open_held_result(name, &k, &v)?;
                let inputs = u32::try_from(r.inputs.len()).unwrap_or(u32::MAX);
                let e = per.entry(r.period_start).or_insert(0);
                *e = (*e).max(inputs);
            }
        }
        Ok(per.into_iter().rev().take(limit).collect())
    }

    /// Deletes results (and wrong ones) of periods before `before`; how many went.
    pub fn prune_results(&self, before: i64) -> Result<usize> {
        self.writable()?;
        let mut n = 0;
        for tree in [&self.trees.community_period_signer_result, &self.trees.community_period_signer_wrongresult] {
            let mut old = Vec::new();
            for kv in tree.iter() {
                let (k, _) = kv?;
                let period = k.get(32..40).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_be_bytes);
                let period = period.map_or(i64::MIN, |p| i64::try_from(p).unwrap_or(i64::MAX));
                if period < before {
                    old.push(k);
                }
            }
            for k in old {
                tree.remove(k)?;
                n += 1;
            }
        }
        if n > 0 {
            self.network_changed();
        }
        Ok(n)
    }
}

#[cfg(test)]
mod result_tests {
    use super::*;
    use crate::federation::merge::Chart;
    use crate::federation::result::{Input, SCHEMA};

    fn result(period: i64, inputs: u16, issued_at: i64) -> ResultV1 {
        ResultV1 {
            schema: SCHEMA,
            community: [5; 32],
            manifest_version: 1,
            manifest_hash: [0; 32],
            period_start: period,
            period_secs: 4,
            issued_at,
            inputs: (0..inputs).map(|member| Input { member, hash: [1; 16] }).collect(),
            chart: Chart { artists: vec![], tracks: vec![], origins: u32::from(inputs), corroborating: 0 },
        }
    }

    fn bytes(r: &ResultV1) -> Vec<u8> {
        crate::envelope::seal(&ed25519_dalek::SigningKey::from_bytes(&[2; 32]), crate::envelope::DST_RESULT, r.encode())
    }

    /// A signer's result for a period is replaced only by one with more inputs (not by
    /// a later date: no flood of re-dated results); catch-up answers skip what the
    /// asker holds; the periods held are listed newest first; pruning goes by period.
    #[test]
    fn results_are_kept_one_per_signer_and_period_and_served_by_what_is_lacking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), &super::super::Options::default()).expect("open");
        let signer = ed25519_dalek::SigningKey::from_bytes(&[2; 32]).verifying_key().to_bytes();
        let id = [5; 32];
        let (two, later, three) = (result(100, 2, 110), result(100, 2, 120), result(100, 3, 105));
        assert!(store.put_result(&signer, &two, &bytes(&two)).expect("put"));
        assert!(!store.put_result(&signer, &later, &bytes(&later)).expect("put"), "a later date is not better");
        assert!(store.put_result(&signer, &three, &bytes(&three)).expect("put"), "more inputs are");
        assert!(!store.put_result(&signer, &two, &bytes(&two)).expect("put"));
        assert_eq!(store.result_held(&id, 100, &signer).expect("held"), (Some(3), false));
        let other = result(104, 1, 110);
        store.put_result(&signer, &other, &bytes(&other)).expect("put");
        assert_eq!(store.result_periods(&id, 0, 10).expect("periods"), vec![(104, 1), (100, 3)]);
        let none = std::collections::HashMap::new();
        assert_eq!(store.results_since(&id, 0, &none, 10).expect("since"), vec![bytes(&other), bytes(&three)]);
        assert_eq!(store.results_since(&id, 0, &none, 1).expect("since"), vec![bytes(&other)], "the limit");
        assert_eq!(store.results_since(&id, 101, &none, 10).expect("since"), vec![bytes(&other)], "from");
        let have: std::collections::HashMap<i64, u32> = [(104, 1), (100, 2)].into_iter().collect();
        assert_eq!(store.results_since(&id, 0, &have, 10).expect("since"), vec![bytes(&three)], "only what it lacks");
        assert!(store.results_since(&[6; 32], 0, &none, 10).expect("since").is_empty(), "another community");
        assert!(store.put_wrong_result(&signer, &two, &bytes(&two)).expect("wrong"));
        assert!(!store.put_wrong_result(&signer, &later, &bytes(&later)).expect("wrong"), "one per key");
        assert_eq!(store.wrong_results(&id).expect("wrong"), vec![(100, signer)]);
        assert_eq!(store.best_result(&id, 100, 4).expect("best"), None, "its signer's result is left out");
        assert_eq!(store.best_result(&id, 104, 4).expect("best").map(|b| b.1), Some(other));
        assert_eq!(store.prune_results(104).expect("prune"), 2);
        assert_eq!(store.result_periods(&id, 0, 10).expect("periods"), vec![(104, 1)]);
        assert!(store.wrong_results(&id).expect("wrong").is_empty());
    }
}
