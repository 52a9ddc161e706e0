//! Communities: a manifest signed by an administrator node says who the members are,
//! how their snapshots are merged, the privacy floor they must meet, and which other
//! communities this one federates with. The community's id is the hash of its first
//! (genesis) manifest, so it cannot be re-pointed; each later version names the hash of
//! the one before and is signed by as many administrators of the one before as that one's
//! `admin_threshold` says (one by default; the others' signatures travel as
//! co-signatures after the signed envelope).

use serde::{Deserialize, Serialize};

use super::secagg::SecureParams;
use super::{CommunityId, NodeId};
use crate::envelope::{DST_MANIFEST, OpenError, split_signed, verify_detached, verify_signed};
use crate::privacy::params::Floor;

pub const SCHEMA: u16 = 1;
/// A manifest whose next version needs several administrators: schema 1's fields, then
/// `admin_threshold` (a manifest with a threshold of 1 is always encoded as schema 1,
/// so the ids and hashes of existing communities never change).
pub const SCHEMA_THRESHOLD: u16 = 2;
/// A community that counts its members' aggregate users by secure aggregation: schema
/// 1's fields, then `admin_threshold` (1 allowed), then `secure`.
pub const SCHEMA_SECURE: u16 = 3;
/// Secure aggregation with its release schedule: schema 3's fields, then the period
/// (seconds) its rounds follow. Schema 3 manifests keep their bytes: their rounds
/// follow each node's own period.
pub const SCHEMA_SCHEDULE: u16 = 4;
const COMMUNITY_ID_CONTEXT: &str = "hearsay 2026-11 community-id v1";
/// Largest signed manifest accepted.
pub const MAX_MANIFEST_BYTES: usize = 48 * 1024;
pub const MAX_NAME_BYTES: usize = 64;
pub const MAX_MEMBERS: usize = 500;
/// Most administrators, and so most co-signatures a manifest carries.
pub const MAX_ADMINS: usize = 32;
pub const MAX_LINKS: usize = 16;
pub const MAX_ADDRS: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Admission {
    /// Only listed members count (the default).
    AllowList,
    /// Any node that publishes to the community counts, after `probation_periods`
    /// periods of valid snapshots.
    Open { probation_periods: u32 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub node: NodeId,
    /// Weight of this origin's counts, in 1/1000 (0..=1000).
    pub weight_milli: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Most of an item's community count one origin may provide, in 1/1000, once at
    /// least `share_cap_from` origins report the item.
    pub max_origin_share_milli: u16,
    pub share_cap_from: u16,
    /// Least number of origins reporting an item for it to enter the chart.
    pub min_origins_per_item: u16,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { max_origin_share_milli: 250, share_cap_from: 4, min_origins_per_item: 1 }
    }
}

/// A federation link: this community's federated chart includes `community`'s chart
/// with `weight_milli`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub community: CommunityId,
    pub name: String,
    pub weight_milli: u16,
    /// Where to find that community's members (multiaddrs with `/p2p/`).
    pub bootstrap: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestV1 {
    pub schema: u16,
    pub name: String,
    /// `None` in the genesis manifest; the community id afterwards.
    pub genesis: Option<CommunityId>,
    /// 1 for the genesis manifest, then +1 per update.
    pub version: u32,
    /// blake3 of the previous version's body.
    pub prev: Option<[u8; 32]>,
    pub issued_at: i64,
    /// Nodes whose signature makes the next version (sorted, unique).
    pub admins: Vec<NodeId>,
    pub admission: Admission,
    /// Sorted by node, unique.
    pub members: Vec<Member>,
    pub policy: Policy,
    pub floor: Floor,
    pub links: Vec<Link>,
    /// Addresses of members to connect to (multiaddrs with `/p2p/`).
    pub bootstrap: Vec<String>,
    /// How many of this version's administrators must sign the next version (1 ..=
    /// `admins.len()`); encoded after the other fields in schema 2 only.
    #[serde(skip)]
    pub admin_threshold: u16,
    /// Secure aggregation, if the community uses it; encoded after the threshold in
    /// schema 3 only.
    #[serde(skip)]
    pub secure: Option<SecureAggregation>,
}

/// Secure aggregation (`federation::secagg`): the two aggregator nodes, which should be
/// run by different administrators (neither alone sees any report), and the
/// parameters every round of the community uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecureAggregation {
    pub leader: NodeId,
    pub helper: NodeId,
    pub params: SecureParams,
    /// The release schedule: one round per period of this many seconds (on the week
    /// grid), after the period ends (by the protocol's delays, `docs/protocol.md` §7.4).
    /// 0 (schema 3): each node's own period. Encoded after `secure` (schema 4), not
    /// inside it.
    #[serde(skip)]
    pub period_secs: u32,
}

/// A co-signature: another administrator's signature over the same manifest body,
/// `Ed25519(signer, DST_MANIFEST ‖ body)`, exactly as if that one had sealed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct CoSignature {
    signer: NodeId,
    sig: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error(transparent)]
    Envelope(#[from] OpenError),
    #[error("manifest does not decode canonically")]
    Malformed,
    #[error("unknown manifest schema {0}")]
    UnknownSchema(u16),
    #[error("manifest is inconsistent: {0}")]
    Invalid(String),
    #[error("manifest is for another community")]
    WrongCommunity,
    #[error("manifest version {got} does not follow {have}")]
    NotNext { have: u32, got: u32 },
    #[error("manifest does not name the previous version's hash")]
    WrongPrev,
    #[error("manifest is not signed by an administrator of the previous version")]
    NotAdmin,
    #[error("manifest is signed by {have} of the {need} administrators the previous version requires")]
    TooFewAdmins { have: usize, need: usize },
    #[error("manifest carries a signature of a node that is not an administrator of the previous version")]
    StraySignature,
}

impl ManifestV1 {
    pub fn genesis(name: &str, admin: NodeId, issued_at: i64) -> ManifestV1 {
        ManifestV1 {
            schema: SCHEMA,
            name: name.trim().to_owned(),
            genesis: None,
            version: 1,
            prev: None,
            issued_at,
            admins: vec![admin],
            admission: Admission::AllowList,
            members: vec![Member { node: admin, weight_milli: 1000 }],
            policy: Policy::default(),
            floor: Floor::default(),
            links: Vec::new(),
            bootstrap: Vec::new(),
            admin_threshold: 1,
            secure: None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // A threshold above 1 is always written: under schema 1 it makes bytes that do
        // not decode, never a manifest that silently lost its threshold.
        // A period is always written, so that under schemas 1 to 3 it makes bytes that
        // do not decode, never a manifest that silently lost its schedule.
        if self.schema == SCHEMA_SCHEDULE || self.secure.as_ref().is_some_and(|s| s.period_secs != 0) {
            let period = self.secure.as_ref().map_or(0, |s| s.period_secs);
            postcard::to_allocvec(&(self, self.admin_threshold, &self.secure, period))
        } else if self.schema == SCHEMA_SECURE || self.secure.is_some() {
            postcard::to_allocvec(&(self, self.admin_threshold, &self.secure))
        } else if self.schema == SCHEMA && self.admin_threshold <= 1 {
            postcard::to_allocvec(self)
        } else {
            postcard::to_allocvec(&(self, self.admin_threshold))
        }
        .unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<ManifestV1, ManifestError> {
        let (schema, _) = postcard::take_from_bytes::<u16>(bytes).map_err(|_| ManifestError::Malformed)?;
        let m = match schema {
            SCHEMA => match postcard::take_from_bytes::<ManifestV1>(bytes) {
                Ok((m, [])) => ManifestV1 { admin_threshold: 1, ..m },
                _ => return Err(ManifestError::Malformed),
            },
            SCHEMA_THRESHOLD => match postcard::take_from_bytes::<(ManifestV1, u16)>(bytes) {
                Ok(((m, admin_threshold), [])) => ManifestV1 { admin_threshold, ..m },
                _ => return Err(ManifestError::Malformed),
            },
            SCHEMA_SECURE => match postcard::take_from_bytes::<(ManifestV1, u16, Option<SecureAggregation>)>(bytes) {
                Ok(((m, admin_threshold, secure), [])) => ManifestV1 { admin_threshold, secure, ..m },
                _ => return Err(ManifestError::Malformed),
            },
            SCHEMA_SCHEDULE => {
                match postcard::take_from_bytes::<(ManifestV1, u16, Option<SecureAggregation>, u32)>(bytes) {
                    Ok(((m, admin_threshold, Some(secure), period_secs), [])) => {
                        ManifestV1 { admin_threshold, secure: Some(SecureAggregation { period_secs, ..secure }), ..m }
                    }
                    _ => return Err(ManifestError::Malformed),
                }
            }
            _ => return Err(ManifestError::UnknownSchema(schema)),
        };
        if m.encode() != bytes {
            return Err(ManifestError::Malformed);
        }
        m.check()?;
        Ok(m)
    }

    /// The community id this manifest belongs to (its own hash when it is the genesis).
    pub fn community(&self) -> CommunityId {
        self.genesis.unwrap_or_else(|| community_id(&self.encode()))
    }

    pub fn is_member(&self, node: &NodeId) -> bool {
        self.members.binary_search_by(|m| m.node.cmp(node)).is_ok()
    }

    pub fn weight(&self, node: &NodeId) -> Option<u16> {
        self.members.binary_search_by(|m| m.node.cmp(node)).ok().map(|i| self.members[i].weight_milli)
    }

    /// The next version: the same content changed by `edit`, with version, prev,
    /// genesis and time set.
    pub fn next(&self, issued_at: i64, edit: impl FnOnce(&mut ManifestV1)) -> ManifestV1 {
        let mut m = self.clone();
        edit(&mut m);
        m.genesis = Some(self.community());
        m.version = self.version + 1;
        m.prev = Some(self.body_hash());
        m.issued_at = issued_at;
        m.members.sort_by_key(|a| a.node);
        m.members.dedup_by(|a, b| a.node == b.node);
        m.admins.sort();
        m.admins.dedup();
        m.admin_threshold = m.admin_threshold.max(1);
        m.schema = if m.secure.as_ref().is_some_and(|s| s.period_secs > 0) {
            SCHEMA_SCHEDULE
        } else if m.secure.is_some() {
            SCHEMA_SECURE
        } else if m.admin_threshold > 1 {
            SCHEMA_THRESHOLD
        } else {
            SCHEMA
        };
        m
    }

    /// blake3 of the encoded body: what the next version's `prev` names, what a node's
    /// signature claim records, what tells a fork from other signatures on one body.
    pub fn body_hash(&self) -> [u8; 32] {
        *blake3::hash(&self.encode()).as_bytes()
    }

    /// The manifest after a round trip through its encoding: an edit that broke a rule
    /// (a threshold above the administrators, too many members…) says which here,
    /// before anyone signs it.
    pub fn manifest_checked(&self) -> Result<ManifestV1, ManifestError> {
        ManifestV1::decode(&self.encode())
    }

    fn check(&self) -> Result<(), ManifestError> {
        let bad = |m: &str| Err(ManifestError::Invalid(m.to_owned()));
        if self.name.is_empty() || self.name.len() > MAX_NAME_BYTES || self.name.chars().any(char::is_control) {
            return bad("name must be 1 to 64 bytes without control characters");
        }
        if self.version == 0
            || (self.version == 1) != self.genesis.is_none()
            || (self.version == 1) != self.prev.is_none()
        {
            return bad("version, genesis and prev disagree");
        }
        if self.admins.is_empty() || self.admins.len() > MAX_ADMINS || self.admins.windows(2).any(|w| w[0] >= w[1]) {
            return bad("admins must be non-empty, sorted, unique and at most 32");
        }
        // Schema 1 means a threshold of 1; schema 2 one of 2 up to the administrators:
        // one encoding for each threshold.
        let threshold_fits = match self.schema {
            SCHEMA => self.admin_threshold == 1,
            SCHEMA_SECURE | SCHEMA_SCHEDULE => (1..=self.admins.len()).contains(&usize::from(self.admin_threshold)),
            _ => (2..=self.admins.len()).contains(&usize::from(self.admin_threshold)),
        };
        if !threshold_fits {
            return bad(
                "the administrators' threshold must be 1 (schema 1) or 2 up to the number of administrators (schema 2)",
            );
        }
        match (&self.secure, self.schema) {
            (None, SCHEMA_SECURE | SCHEMA_SCHEDULE) => return bad("schemas 3 and 4 name secure aggregation"),
            (Some(_), s) if s != SCHEMA_SECURE && s != SCHEMA_SCHEDULE => {
                return bad("secure aggregation needs schema 3 or 4");
            }
            (Some(sa), s) => {
                let schedule_fits = if s == SCHEMA_SCHEDULE {
                    sa.period_secs > 0 && crate::privacy::params::WEEK_SECS % i64::from(sa.period_secs) == 0
                } else {
                    sa.period_secs == 0
                };
                if !schedule_fits {
                    return bad("a secure aggregation period (schema 4 only) must divide a week");
                }
                if sa.leader == sa.helper {
                    return bad("the two secure aggregators must be different nodes");
                }
                if let Err(e) = sa.params.validate() {
                    return bad(&e.to_string());
                }
            }
            (None, _) => {}
        }
        if self.members.len() > MAX_MEMBERS || self.members.windows(2).any(|w| w[0].node >= w[1].node) {
            return bad("members must be sorted, unique and at most 500");
        }
        if self.members.iter().any(|m| m.weight_milli > 1000) || self.links.iter().any(|l| l.weight_milli > 1000) {
            return bad("weights are in 0..=1000");
        }
        if self.links.len() > MAX_LINKS || self.bootstrap.len() > MAX_ADDRS {
            return bad("too many links or addresses");
        }
        if self.bootstrap.iter().chain(self.links.iter().flat_map(|l| l.bootstrap.iter())).any(|a| a.len() > 256) {
            return bad("address too long");
        }
        if self.policy.max_origin_share_milli == 0 || self.policy.max_origin_share_milli > 1000 {
            return bad("max_origin_share must be in 1..=1000");
        }
        Ok(())
    }
}

pub fn community_id(genesis_body: &[u8]) -> CommunityId {
    blake3::derive_key(COMMUNITY_ID_CONTEXT, genesis_body)
}

/// A verified manifest with the bytes it came in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedManifest {
    pub manifest: ManifestV1,
    /// The signed envelope, followed by the co-signatures when there are any.
    pub signed: Vec<u8>,
    /// Whoever sealed the envelope.
    pub signer: NodeId,
    /// Further signers of the same body (sorted, unique, never `signer`), verified.
    pub cosigners: Vec<NodeId>,
}

impl SignedManifest {
    pub fn body_hash(&self) -> [u8; 32] {
        self.manifest.body_hash()
    }

    /// Everyone whose valid signature the manifest carries.
    pub fn signers(&self) -> impl Iterator<Item = &NodeId> {
        std::iter::once(&self.signer).chain(self.cosigners.iter())
    }

    /// The same manifest with one more signature: `sig` by `signer` over
    /// `DST_MANIFEST ‖ body` (see `identity::NodeIdentity::cosign_manifest`). A signer
    /// already present changes nothing.
    pub fn with_cosignature(&self, signer: NodeId, sig: Vec<u8>) -> Result<SignedManifest, ManifestError> {
        if self.signers().any(|s| *s == signer) {
            return Ok(self.clone());
        }
        let (_, rest) = split_signed(&self.signed, MAX_MANIFEST_BYTES)?;
        let envelope = &self.signed[..self.signed.len() - rest.len()];
        let mut cosigs = decode_cosignatures(rest)?;
        cosigs.push(CoSignature { signer, sig });
        cosigs.sort_by_key(|c| c.signer);
        let mut bytes = envelope.to_vec();
        bytes.extend(postcard::to_allocvec(&cosigs).map_err(|_| ManifestError::Malformed)?);
        open_manifest(&bytes)
    }
}

fn decode_cosignatures(bytes: &[u8]) -> Result<Vec<CoSignature>, ManifestError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    match postcard::take_from_bytes::<Vec<CoSignature>>(bytes) {
        Ok((c, [])) if !c.is_empty() && postcard::to_allocvec(&c).ok().as_deref() == Some(bytes) => Ok(c),
        _ => Err(ManifestError::Malformed),
    }
}

/// The community a signed manifest claims to belong to, decoded without checking any
/// signature (to drop another community's manifests before spending signature checks
/// on them); `Err(UnknownSchema)` for a manifest of a later schema.
pub fn peek_community(bytes: &[u8]) -> Result<CommunityId, ManifestError> {
    let (env, _) = split_signed(bytes, MAX_MANIFEST_BYTES)?;
    Ok(ManifestV1::decode(&env.body)?.community())
}

/// Verifies and decodes a signed manifest (not yet whether it may follow another): the
/// envelope's signature, then each co-signature over the same body. Canonical: no
/// co-signatures means no bytes after the envelope (a schema 1 manifest's bytes are
/// what they always were); otherwise a non-empty list sorted by signer, without
/// repeats or the envelope's own signer.
pub fn open_manifest(bytes: &[u8]) -> Result<SignedManifest, ManifestError> {
    let (env, rest) = split_signed(bytes, MAX_MANIFEST_BYTES)?;
    verify_signed(&env, DST_MANIFEST)?;
    let manifest = ManifestV1::decode(&env.body)?;
    let cosigs = decode_cosignatures(rest)?;
    if cosigs.len() >= MAX_ADMINS
        || cosigs.windows(2).any(|w| w[0].signer >= w[1].signer)
        || cosigs.iter().any(|c| c.signer == env.signer)
    {
        return Err(ManifestError::Malformed);
    }
    for c in &cosigs {
        verify_detached(&c.signer, DST_MANIFEST, &env.body, &c.sig)?;
    }
    Ok(SignedManifest {
        manifest,
        signed: bytes.to_vec(),
        signer: env.signer,
        cosigners: cosigs.into_iter().map(|c| c.signer).collect(),
    })
}

/// Whether `new` may replace `current` for community `id`: the next version, naming
/// the current one's hash, signed by at least `admin_threshold` of the current
/// administrators. A genesis is accepted when its hash is the id and its signer one of
/// its own administrators.
pub fn accept(id: &CommunityId, current: Option<&SignedManifest>, new: &SignedManifest) -> Result<(), ManifestError> {
    if new.manifest.community() != *id {
        return Err(ManifestError::WrongCommunity);
    }
    match current {
        None if new.manifest.version == 1 => {
            if new.cosigners.iter().any(|c| !new.manifest.admins.contains(c)) {
                Err(ManifestError::StraySignature)
            } else if new.manifest.admins.contains(&new.signer) {
                Ok(())
            } else {
                Err(ManifestError::NotAdmin)
            }
        }
        None => Err(ManifestError::NotNext { have: 0, got: new.manifest.version }),
        Some(cur) => {
            if new.manifest.version != cur.manifest.version + 1 {
                return Err(ManifestError::NotNext { have: cur.manifest.version, got: new.manifest.version });
            }
            if new.manifest.prev != Some(cur.body_hash()) {
                return Err(ManifestError::WrongPrev);
            }
            // Counted against the previous version's administrators and threshold
            // (never the new version's: an administrator cannot add a puppet and have
            // it co-sign). A co-signature by anyone else is refused outright, so no
            // one can pad a valid manifest with signatures that every node then stores,
            // re-verifies and passes on.
            let admins = &cur.manifest.admins;
            if new.cosigners.iter().any(|c| !admins.contains(c)) {
                return Err(ManifestError::StraySignature);
            }
            let signers: std::collections::BTreeSet<&NodeId> = new.signers().filter(|s| admins.contains(s)).collect();
            let (have, need) = (signers.len(), usize::from(cur.manifest.admin_threshold.max(1)));
            match have {
                0 => Err(ManifestError::NotAdmin),
                h if h < need => Err(ManifestError::TooFewAdmins { have, need }),
                _ => Ok(()),
            }
        }
    }
}

/// Whether `new` is a **fork**: a second, different manifest of a version already held
/// (`held`), validly following the same previous version (`parent`): signed by as many
/// of its administrators as its threshold asks (other signatures on the same body are
/// the same version, not a fork). Two such manifests mean the community's administrators signed
/// two histories: evidence to keep, show and pass on, never a fault of whoever relays it.
/// (The genesis cannot fork: the community id is its hash.)
pub fn is_fork(id: &CommunityId, parent: &SignedManifest, held: &SignedManifest, new: &SignedManifest) -> bool {
    new.manifest.version == held.manifest.version
        && new.body_hash() != held.body_hash()
        && held.manifest.version == parent.manifest.version.saturating_add(1)
        && accept(id, Some(parent), new).is_ok()
}

/// Where a newly signed next version stands: complete (store and spread it), or
/// signed by fewer administrators than the current version requires (a **proposal**,
/// passed to the others to co-sign; nothing changes until it is complete).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settled {
    Complete(SignedManifest),
    NeedsMore { proposal: SignedManifest, have: usize, need: usize },
}

/// Settles a signed next version against the current one (see `accept`).
pub fn settle(
    id: &CommunityId,
    current: Option<&SignedManifest>,
    new: SignedManifest,
) -> Result<Settled, ManifestError> {
    match accept(id, current, &new) {
        Ok(()) => Ok(Settled::Complete(new)),
        Err(ManifestError::TooFewAdmins { have, need }) => Ok(Settled::NeedsMore { proposal: new, have, need }),
        Err(e) => Err(e),
    }
}

const PROPOSAL_PREFIX: &str = "hearsay-proposal1";

/// What a next version changes, line by line, for an administrator about to sign it
/// (an approval is never blind). Node keys are shown by `node_text` (PeerIds at the edges).
pub fn describe_change(cur: &ManifestV1, new: &ManifestV1, node_text: impl Fn(&NodeId) -> String) -> Vec<String> {
    let mut out = Vec::new();
    if cur.name != new.name {
        out.push(format!("name: {:?} -> {:?}", cur.name, new.name));
    }
    for a in new.admins.iter().filter(|a| !cur.admins.contains(a)) {
        out.push(format!("administrator added: {}", node_text(a)));
    }
    for a in cur.admins.iter().filter(|a| !new.admins.contains(a)) {
        out.push(format!("administrator removed: {}", node_text(a)));
    }
    if cur.admin_threshold != new.admin_threshold {
        out.push(format!(
            "signatures each later version needs: {} -> {} (of {} administrators)",
            cur.admin_threshold,
            new.admin_threshold,
            new.admins.len()
        ));
    }
    if cur.secure != new.secure {
        out.push(match &new.secure {
            Some(sa) => format!(
                "secure aggregation: leader {}, helper {}, {}, ε {} per period, L0 {}, at least {} users from {} nodes",
                node_text(&sa.leader),
                node_text(&sa.helper),
                match sa.period_secs {
                    0 => "every node's own period".to_owned(),
                    p => format!("one release per {p} s period"),
                },
                crate::privacy::params::eps_text(u64::from(sa.params.eps_milli)),
                sa.params.l0,
                sa.params.min_users,
                sa.params.min_nodes
            ),
            None => "secure aggregation: off".to_owned(),
        });
    }
    if cur.admission != new.admission {
        out.push(format!("admission: {:?} -> {:?}", cur.admission, new.admission));
    }
    for m in &new.members {
        match cur.weight(&m.node) {
            None => out.push(format!(
                "member added: {} (weight {})",
                node_text(&m.node),
                f64::from(m.weight_milli) / 1000.0
            )),
            Some(w) if w != m.weight_milli => out.push(format!(
                "member weight: {} {} -> {}",
                node_text(&m.node),
                f64::from(w) / 1000.0,
                f64::from(m.weight_milli) / 1000.0
            )),
            Some(_) => {}
        }
    }
    for m in cur.members.iter().filter(|m| !new.is_member(&m.node)) {
        out.push(format!("member removed: {}", node_text(&m.node)));
    }
    if cur.policy != new.policy {
        out.push(format!("merge policy: {:?} -> {:?}", cur.policy, new.policy));
    }
    if cur.floor != new.floor {
        out.push(format!("privacy floor: {:?} -> {:?}", cur.floor, new.floor));
    }
    for l in new.links.iter().filter(|l| !cur.links.contains(l)) {
        out.push(format!(
            "link set: {} ({}) weight {}",
            l.name,
            super::short_hex(&l.community),
            f64::from(l.weight_milli) / 1000.0
        ));
    }
    for l in cur.links.iter().filter(|l| !new.links.iter().any(|n| n.community == l.community)) {
        out.push(format!("link removed: {} ({})", l.name, super::short_hex(&l.community)));
    }
    if cur.bootstrap != new.bootstrap {
        out.push(format!("bootstrap addresses: {} -> {}", cur.bootstrap.join(" "), new.bootstrap.join(" ")));
    }
    if out.is_empty() {
        out.push("nothing but the version and time".into());
    }
    out
}

/// A proposal as text to pass to the other administrators: the prefix, then lower-case
/// hex of the signed bytes (envelope and co-signatures).
pub fn proposal_text(m: &SignedManifest) -> String {
    format!("{PROPOSAL_PREFIX}{}", hex::encode(&m.signed))
}

/// Reads and verifies a proposal's signatures (not yet whether it follows the current
/// version: `settle` says).
pub fn proposal_from_text(text: &str) -> Result<SignedManifest, String> {
    let hexpart = text
        .trim()
        .strip_prefix(PROPOSAL_PREFIX)
        .ok_or("not a hearsay manifest proposal (it starts with hearsay-proposal1)")?;
    if hexpart.len() > 2 * MAX_MANIFEST_BYTES {
        return Err("proposal too long".into());
    }
    let bytes = hex::decode(hexpart).map_err(|_| "proposal is not valid hex")?;
    open_manifest(&bytes).map_err(|e| format!("proposal: {e}"))
}

/// A ticket of the first format (`hearsay1`): the community id, its latest signed
/// manifest, addresses. Read only when its manifest is version 1 (which the id checks);
/// a later version in it cannot be checked against the id (`TicketV2`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketV1 {
    pub community: CommunityId,
    pub manifest: Vec<u8>,
    pub bootstrap: Vec<String>,
}

/// What `community invite` prints: the community id, its manifest chain from version 1
/// (the whole chain when it fits `MAX_TICKET_CHAIN_BYTES`, else version 1 alone: the
/// rest comes from peers, checked version by version), the latest version's number and
/// addresses to reach members. Text form: `hearsay2` + lower-case hex of the postcard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketV2 {
    pub community: CommunityId,
    /// Signed manifests, versions 1, 2, … in order.
    pub chain: Vec<Vec<u8>>,
    /// The latest version when the ticket was made.
    pub head: u32,
    pub bootstrap: Vec<String>,
}

const TICKET_PREFIX_V1: &str = "hearsay1";
const TICKET_PREFIX: &str = "hearsay2";
/// Most bytes of manifests a ticket carries (64 KiB of hex: a ticket stays one
/// command-line argument, under Linux's 128 KiB per argument).
pub const MAX_TICKET_CHAIN_BYTES: usize = 32 * 1024;

impl TicketV2 {
    /// A ticket for a community whose latest version is `head`, from `chain`, its
    /// versions 1, 2, … in order: all of them when they are all there and fit
    /// `MAX_TICKET_CHAIN_BYTES`, else version 1 alone.
    pub fn new(community: CommunityId, chain: Vec<Vec<u8>>, head: u32, bootstrap: Vec<String>) -> TicketV2 {
        let total: usize = chain.iter().map(Vec::len).sum();
        let whole = u32::try_from(chain.len()).is_ok_and(|n| n == head) && total <= MAX_TICKET_CHAIN_BYTES;
        let chain = if whole { chain } else { chain.into_iter().take(1).collect() };
        TicketV2 { community, chain, head, bootstrap }
    }

    pub fn to_text(&self) -> String {
        format!("{TICKET_PREFIX}{}", hex::encode(postcard::to_allocvec(self).unwrap_or_default()))
    }

    /// Parses a ticket and checks its chain from the community id: version 1 must be
    /// the body the id is derived from, signed by one of its administrators, and each
    /// later version accepted by the one before (`accept`: `prev`, `genesis`, the
    /// threshold of the previous administrators). Returns the ticket and the checked
    /// chain (never empty). A first-format ticket is read only when its manifest is
    /// version 1: a forger could otherwise name any community with a manifest of its own.
    pub fn from_text(text: &str) -> Result<(TicketV2, Vec<SignedManifest>), String> {
        let text = text.trim();
        let (v1, hexpart) = match (text.strip_prefix(TICKET_PREFIX), text.strip_prefix(TICKET_PREFIX_V1)) {
            (Some(h), _) => (false, h),
            (None, Some(h)) => (true, h),
            _ => return Err("not a hearsay ticket (it starts with hearsay2)".into()),
        };
        if hexpart.len() > 2 * (MAX_TICKET_CHAIN_BYTES + MAX_MANIFEST_BYTES + 8 * 1024) {
            return Err("ticket too long".into());
        }
        let bytes = hex::decode(hexpart).map_err(|_| "ticket is not valid hex")?;
        let ticket = if v1 {
            let old: TicketV1 = match postcard::take_from_bytes(&bytes) {
                Ok((t, [])) => t,
                _ => return Err("ticket does not decode".into()),
            };
            let m = open_manifest(&old.manifest).map_err(|e| format!("ticket manifest: {e}"))?;
            if m.manifest.version != 1 {
                return Err(format!(
                    "this is a ticket of the first format with manifest version {}, which cannot be checked against its community id: ask the administrator for a new ticket (hearsay2…)",
                    m.manifest.version
                ));
            }
            TicketV2 { community: old.community, chain: vec![old.manifest], head: 1, bootstrap: old.bootstrap }
        } else {
            match postcard::take_from_bytes(&bytes) {
                Ok((t, [])) => t,
                _ => return Err("ticket does not decode".into()),
            }
        };
        let mut checked: Vec<SignedManifest> = Vec::new();
        for (i, b) in ticket.chain.iter().enumerate() {
            let m = open_manifest(b).map_err(|e| format!("ticket manifest {}: {e}", i + 1))?;
            if m.manifest.version != u32::try_from(i + 1).unwrap_or(u32::MAX) {
                return Err(format!("ticket manifest {} is version {}", i + 1, m.manifest.version));
            }
            if checked.is_empty()
                && (community_id(&m.manifest.encode()) != ticket.community || m.manifest.genesis.is_some())
            {
                return Err("the ticket's first manifest is not the one its community id comes from".into());
            }
            // Exactly as from a peer, version 1 included (no stray co-signatures).
            accept(&ticket.community, checked.last(), &m).map_err(|e| format!("ticket manifest {}: {e}", i + 1))?;
            checked.push(m);
        }
        if checked.is_empty() {
            return Err("the ticket carries no manifest".into());
        }
        Ok((ticket, checked))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::seal;
    use ed25519_dalek::SigningKey;

    fn signed(key: &SigningKey, m: &ManifestV1) -> SignedManifest {
        open_manifest(&seal(key, DST_MANIFEST, m.encode())).expect("valid")
    }

    /// The chain rule and the fork rule: a version follows the one before when an
    /// administrator of that one signs it; a second, different, validly signed manifest
    /// of a version held is a fork; a non-administrator's, another parent's or the same
    /// manifest again is not.
    #[test]
    fn versions_follow_by_an_admin_and_a_second_signed_version_is_a_fork() {
        let (admin, outsider) = (SigningKey::from_bytes(&[1; 32]), SigningKey::from_bytes(&[2; 32]));
        let admin_id = admin.verifying_key().to_bytes();
        let v1 = signed(&admin, &ManifestV1::genesis("c", admin_id, 10));
        let id = v1.manifest.community();
        assert_eq!(accept(&id, None, &v1), Ok(()));
        let v2 = signed(&admin, &v1.manifest.next(20, |m| m.name = "two".into()));
        assert_eq!(accept(&id, Some(&v1), &v2), Ok(()));
        let by_outsider = signed(&outsider, &v1.manifest.next(20, |m| m.name = "mine".into()));
        assert_eq!(accept(&id, Some(&v1), &by_outsider), Err(ManifestError::NotAdmin));
        let v3 = signed(&admin, &v2.manifest.next(30, |_| {}));
        assert!(matches!(accept(&id, Some(&v1), &v3), Err(ManifestError::NotNext { .. })));

        let fork = signed(&admin, &v1.manifest.next(21, |m| m.name = "other".into()));
        assert!(is_fork(&id, &v1, &v2, &fork));
        assert!(!is_fork(&id, &v1, &v2, &v2), "the same manifest again");
        assert!(!is_fork(&id, &v1, &v2, &by_outsider), "not signed by an administrator");
        assert!(!is_fork(&id, &v2, &v3, &fork), "another parent");
        assert!(!is_fork(&[7; 32], &v1, &v2, &fork), "another community");
    }

    /// Secure aggregation is schema 3: it round-trips with any threshold, moves to a
    /// new version like any edit, and a manifest that names it under another schema,
    /// names the same node twice or carries bad parameters does not decode.
    #[test]
    fn secure_aggregation_is_carried_by_schema_3_only() {
        let admin = SigningKey::from_bytes(&[1; 32]);
        let v1 = ManifestV1::genesis("c", admin.verifying_key().to_bytes(), 10);
        let sa =
            SecureAggregation { leader: [5; 32], helper: [6; 32], params: SecureParams::default(), period_secs: 0 };
        let v2 = v1.next(20, |m| {
            m.schema = SCHEMA_SECURE;
            m.secure = Some(sa.clone());
        });
        let back = ManifestV1::decode(&v2.encode()).expect("decodes");
        assert_eq!(back.secure.as_ref(), Some(&sa));
        assert_eq!(back.admin_threshold, 1);
        assert_eq!(accept(&v1.community(), Some(&signed(&admin, &v1)), &signed(&admin, &v2)), Ok(()));
        let v3 = back.next(30, |m| m.name = "renamed".into());
        assert_eq!(ManifestV1::decode(&v3.encode()).expect("decodes").secure, Some(sa.clone()), "kept by next()");
        // Schema 1 bytes of v1 are unchanged: existing community ids do not move.
        assert_eq!(ManifestV1::decode(&v1.encode()).expect("decodes"), v1);
        for (what, edit) in [
            ("schema 1 naming it", Box::new(|m: &mut ManifestV1| m.schema = SCHEMA) as Box<dyn Fn(&mut ManifestV1)>),
            ("schema 3 without it", Box::new(|m: &mut ManifestV1| m.secure = None)),
            ("one node twice", Box::new(|m: &mut ManifestV1| m.secure.as_mut().expect("set").helper = [5; 32])),
            ("zero epsilon", Box::new(|m: &mut ManifestV1| m.secure.as_mut().expect("set").params.eps_milli = 0)),
        ] {
            let mut bad = v2.clone();
            edit(&mut bad);
            assert!(ManifestV1::decode(&bad.encode()).is_err(), "{what} is refused");
        }
    }

    /// The release schedule is schema 4: a period that divides a week, carried after
    /// `secure`; schema 3 stays as it was (no period: each node's own).
    #[test]
    fn the_secure_schedule_is_schema_4_and_divides_a_week() {
        let admin = SigningKey::from_bytes(&[1; 32]);
        let v1 = ManifestV1::genesis("c", admin.verifying_key().to_bytes(), 10);
        let sa =
            SecureAggregation { leader: [5; 32], helper: [6; 32], params: SecureParams::default(), period_secs: 3_600 };
        let v2 = v1.next(20, |m| m.secure = Some(sa.clone()));
        assert_eq!(v2.schema, SCHEMA_SCHEDULE);
        let back = ManifestV1::decode(&v2.encode()).expect("decodes");
        assert_eq!(back.secure.as_ref(), Some(&sa), "the period round-trips");
        assert_eq!(accept(&v1.community(), Some(&signed(&admin, &v1)), &signed(&admin, &v2)), Ok(()));
        // Without a period it is schema 3, whose bytes carry none.
        let v3 = back.next(30, |m| m.secure.as_mut().expect("set").period_secs = 0);
        assert_eq!(v3.schema, SCHEMA_SECURE);
        assert_eq!(ManifestV1::decode(&v3.encode()).expect("decodes").secure.map(|s| s.period_secs), Some(0));
        for (what, edit) in [
            (
                "a period that does not divide a week",
                Box::new(|m: &mut ManifestV1| m.secure.as_mut().expect("set").period_secs = 1_000)
                    as Box<dyn Fn(&mut ManifestV1)>,
            ),
            ("schema 4 with period 0", Box::new(|m: &mut ManifestV1| m.secure.as_mut().expect("set").period_secs = 0)),
            ("schema 4 without secure aggregation", Box::new(|m: &mut ManifestV1| m.secure = None)),
            ("a period under schema 3", Box::new(|m: &mut ManifestV1| m.schema = SCHEMA_SECURE)),
        ] {
            let mut bad = v2.clone();
            edit(&mut bad);
            let bytes = bad.encode();
            let decoded = ManifestV1::decode(&bytes);
            assert!(bad.check().is_err(), "{what} is refused");
            assert!(decoded.is_err(), "{what} does not decode: {decoded:?}");
        }
    }

    /// A ticket's chain is checked from the community id: a forger's own manifest
    /// naming someone else's community (which a `hearsay1` ticket of a later version
    /// could carry, signed by "one of its own administrators") is refused, as is a chain
    /// with a version its predecessor's administrators did not sign; a chain too long
    /// for a ticket is cut to version 1 and the rest comes from peers.
    #[test]
    fn a_ticket_is_checked_from_its_community_id() {
        let (admin, forger) = (SigningKey::from_bytes(&[3; 32]), SigningKey::from_bytes(&[4; 32]));
        let v1 = signed(&admin, &ManifestV1::genesis("c", admin.verifying_key().to_bytes(), 10));
        let id = v1.manifest.community();
        let v2 = signed(&admin, &v1.manifest.next(20, |m| m.name = "two".into()));
        let text = TicketV2::new(id, vec![v1.signed.clone(), v2.signed.clone()], 2, vec![]).to_text();
        let (t, chain) = TicketV2::from_text(&text).expect("valid");
        assert_eq!((t.head, chain.len(), chain[1].manifest.name.as_str()), (2, 2, "two"));

        // The forger's version 2 of the same community, signed by itself as its admin.
        let forged = signed(
            &forger,
            &v1.manifest.next(20, |m| {
                m.admins = vec![forger.verifying_key().to_bytes()];
                m.name = "mine".into();
            }),
        );
        let old = TicketV1 { community: id, manifest: forged.signed.clone(), bootstrap: vec![] };
        let old_text = format!("hearsay1{}", hex::encode(postcard::to_allocvec(&old).expect("encode")));
        let err = TicketV2::from_text(&old_text).expect_err("a first-format ticket of version 2");
        assert!(err.contains("cannot be checked"), "{err}");
        let bad = TicketV2 {
            community: id,
            chain: vec![v1.signed.clone(), forged.signed.clone()],
            head: 2,
            bootstrap: vec![],
        };
        assert!(TicketV2::from_text(&bad.to_text()).is_err(), "not signed by version 1's administrator");
        let alone = TicketV2 { community: id, chain: vec![forged.signed.clone()], head: 2, bootstrap: vec![] };
        assert!(TicketV2::from_text(&alone.to_text()).is_err(), "a chain must start at version 1");
        let other = TicketV2 { community: [7; 32], chain: vec![v1.signed.clone()], head: 1, bootstrap: vec![] };
        assert!(TicketV2::from_text(&other.to_text()).is_err(), "version 1 of another community");
        // Version 1 padded with a co-signature of a key that is no administrator: refused,
        // as from a peer (it would be stored and served, and peers would refuse it).
        let padded = cosigned(&v1, &forger);
        let bad = TicketV2 { community: id, chain: vec![padded.signed], head: 1, bootstrap: vec![] };
        let err = TicketV2::from_text(&bad.to_text()).expect_err("padded");
        assert!(err.contains("ticket manifest 1"), "{err}");
        let empty = TicketV2 { community: id, chain: vec![], head: 1, bootstrap: vec![] };
        assert!(TicketV2::from_text(&empty.to_text()).is_err());
        // A first-format ticket of version 1 is still read.
        let old = TicketV1 { community: id, manifest: v1.signed.clone(), bootstrap: vec!["/ip4/1.2.3.4".into()] };
        let old_text = format!("hearsay1{}", hex::encode(postcard::to_allocvec(&old).expect("encode")));
        assert_eq!(TicketV2::from_text(&old_text).expect("version 1").1, vec![v1.clone()]);
        // Too long (or incomplete): version 1 alone.
        let big = vec![v1.signed.clone(); MAX_TICKET_CHAIN_BYTES / v1.signed.len() + 2];
        let n = u32::try_from(big.len()).expect("small");
        assert_eq!(TicketV2::new(id, big, n, vec![]).chain, vec![v1.signed.clone()]);
        assert_eq!(TicketV2::new(id, vec![v1.signed.clone()], 5, vec![]).chain.len(), 1);
    }

    fn cosigned(m: &SignedManifest, key: &SigningKey) -> SignedManifest {
        let sig = crate::envelope::sign_detached(key, DST_MANIFEST, &m.manifest.encode());
        m.with_cosignature(key.verifying_key().to_bytes(), sig).expect("cosign")
    }

    /// With a threshold of 2 of 3 administrators, no single administrator makes the
    /// next version, nor one plus an outsider; two do, in either order of signing; a
    /// forged, repeated or unsorted co-signature is refused; a threshold of 1 keeps
    /// schema 1 bytes (existing ids and hashes unchanged), and a threshold above the
    /// administrators or a schema that disagrees with it does not decode.
    #[test]
    fn a_threshold_of_administrators_must_sign_the_next_version() {
        let keys: Vec<SigningKey> = (1..=4).map(|i| SigningKey::from_bytes(&[i; 32])).collect();
        let ids: Vec<NodeId> = keys.iter().map(|k| k.verifying_key().to_bytes()).collect();
        let g = ManifestV1::genesis("c", ids[0], 10);
        assert_eq!(g.encode(), postcard::to_allocvec(&g).expect("encode"), "schema 1 bytes are what they were");
        let v1 = signed(&keys[0], &g);
        let id = v1.manifest.community();
        let v2m = v1.manifest.next(20, |m| {
            m.admins.extend([ids[1], ids[2]]);
            m.admin_threshold = 2;
        });
        assert_eq!(v2m.schema, SCHEMA_THRESHOLD);
        let v2 = signed(&keys[0], &v2m);
        assert_eq!(accept(&id, Some(&v1), &v2), Ok(()), "v1 needs one administrator");
        assert_eq!(ManifestV1::decode(&v2m.encode()).expect("decodes").admin_threshold, 2);

        let v3m = v2.manifest.next(30, |m| m.name = "three".into());
        let alone = signed(&keys[1], &v3m);
        assert_eq!(accept(&id, Some(&v2), &alone), Err(ManifestError::TooFewAdmins { have: 1, need: 2 }));
        let with_outsider = cosigned(&alone, &keys[3]);
        assert_eq!(accept(&id, Some(&v2), &with_outsider), Err(ManifestError::StraySignature));
        let two = cosigned(&alone, &keys[2]);
        assert_eq!(two.cosigners, vec![ids[2]]);
        assert_eq!(accept(&id, Some(&v2), &two), Ok(()));
        let other_order = cosigned(&signed(&keys[2], &v3m), &keys[1]);
        assert_eq!(accept(&id, Some(&v2), &other_order), Ok(()));
        assert_eq!(other_order.body_hash(), two.body_hash(), "co-signatures do not change the body");
        assert_eq!(cosigned(&two, &keys[2]), two, "a signer already present changes nothing");
        assert!(open_manifest(&two.signed).is_ok());

        // Forged, repeated, the sealer again, trailing junk.
        let (_, rest) = split_signed(&two.signed, MAX_MANIFEST_BYTES).expect("split");
        let envelope = &two.signed[..two.signed.len() - rest.len()];
        let forge = |cos: Vec<CoSignature>| {
            let mut b = envelope.to_vec();
            b.extend(postcard::to_allocvec(&cos).expect("encode"));
            open_manifest(&b)
        };
        let good = crate::envelope::sign_detached(&keys[2], DST_MANIFEST, &v3m.encode());
        let mut bad = good.clone();
        bad[0] ^= 1;
        assert!(forge(vec![CoSignature { signer: ids[2], sig: bad }]).is_err(), "forged");
        assert!(
            forge(vec![
                CoSignature { signer: ids[2], sig: good.clone() },
                CoSignature { signer: ids[2], sig: good.clone() }
            ])
            .is_err(),
            "repeated"
        );
        let own = crate::envelope::sign_detached(&keys[1], DST_MANIFEST, &v3m.encode());
        assert!(forge(vec![CoSignature { signer: ids[1], sig: own }]).is_err(), "the sealer again");
        assert!(forge(Vec::new()).is_err(), "an empty list is not canonical");
        let mut junk = two.signed.clone();
        junk.push(0);
        assert!(open_manifest(&junk).is_err(), "trailing bytes");

        // Thresholds that do not fit.
        let mut too_high = v2m.clone();
        too_high.admin_threshold = 4;
        assert!(matches!(ManifestV1::decode(&too_high.encode()), Err(ManifestError::Invalid(_))));
        let mut schema1_with_two = v2m.clone();
        schema1_with_two.schema = SCHEMA;
        assert!(ManifestV1::decode(&schema1_with_two.encode()).is_err());
        let mut schema2_with_one = v2m.clone();
        schema2_with_one.admin_threshold = 1;
        assert!(ManifestV1::decode(&schema2_with_one.encode()).is_err());
        let back_to_one = v2.manifest.next(40, |m| m.admin_threshold = 1);
        assert_eq!(back_to_one.schema, SCHEMA);
        let mut zero = v2m.clone();
        zero.admin_threshold = 0;
        assert!(ManifestV1::decode(&zero.encode()).is_err(), "schema 2 with a threshold of 0");

        // Lowering the threshold, or adding a puppet administrator who co-signs its own
        // admission, still needs the current threshold of the current administrators.
        let lower = signed(&keys[0], &back_to_one);
        assert_eq!(accept(&id, Some(&v2), &lower), Err(ManifestError::TooFewAdmins { have: 1, need: 2 }));
        let puppet = v2.manifest.next(50, |m| m.admins.push(ids[3]));
        let with_puppet = cosigned(&signed(&keys[0], &puppet), &keys[3]);
        assert_eq!(accept(&id, Some(&v2), &with_puppet), Err(ManifestError::StraySignature));
        // Padding a valid version with an outsider's signature is refused, not ignored.
        assert_eq!(accept(&id, Some(&v2), &cosigned(&two, &keys[3])), Err(ManifestError::StraySignature));

        // Other signatures on one body are the same version, not a fork; a second body
        // signed by one administrator under a threshold of two is not a fork either.
        let v3 = two.clone();
        assert!(!is_fork(&id, &v2, &v3, &other_order), "same body, other signatures");
        let other_body = signed(&keys[1], &v2.manifest.next(31, |m| m.name = "another".into()));
        assert!(!is_fork(&id, &v2, &v3, &other_body), "one signature under a threshold of two");
        let real_fork = cosigned(&other_body, &keys[0]);
        assert!(is_fork(&id, &v2, &v3, &real_fork), "two administrators signed two histories");
        let changes = describe_change(&v2.manifest, &with_puppet.manifest, |n| hex::encode(&n[..2]));
        assert_eq!(changes, vec![format!("administrator added: {}", hex::encode(&ids[3][..2]))]);
    }
}
