//! Communities: a manifest signed by an administrator node says who the members are,
//! how their snapshots are merged, the privacy floor they must meet, and which other
//! communities this one federates with. The community's id is the hash of its first
//! (genesis) manifest, so it cannot be re-pointed; each later version names the hash of
//! the one before and is signed by an administrator of the one before.

use serde::{Deserialize, Serialize};

use super::{CommunityId, NodeId};
use crate::envelope::{DST_MANIFEST, OpenError, SignedV1, open_signed};
use crate::privacy::params::Floor;

pub const SCHEMA: u16 = 1;
const COMMUNITY_ID_CONTEXT: &str = "hearsay 2026-11 community-id v1";
/// Largest signed manifest accepted.
pub const MAX_MANIFEST_BYTES: usize = 48 * 1024;
pub const MAX_NAME_BYTES: usize = 64;
pub const MAX_MEMBERS: usize = 500;
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
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<ManifestV1, ManifestError> {
        let (schema, _) = postcard::take_from_bytes::<u16>(bytes).map_err(|_| ManifestError::Malformed)?;
        if schema != SCHEMA {
            return Err(ManifestError::UnknownSchema(schema));
        }
        let m: ManifestV1 = match postcard::take_from_bytes(bytes) {
            Ok((m, [])) => m,
            _ => return Err(ManifestError::Malformed),
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
        m.prev = Some(*blake3::hash(&self.encode()).as_bytes());
        m.issued_at = issued_at;
        m.members.sort_by_key(|a| a.node);
        m.members.dedup_by(|a, b| a.node == b.node);
        m.admins.sort();
        m.admins.dedup();
        m
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
        if self.admins.is_empty() || self.admins.windows(2).any(|w| w[0] >= w[1]) {
            return bad("admins must be non-empty, sorted and unique");
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
    pub signed: Vec<u8>,
    pub signer: NodeId,
}

impl SignedManifest {
    pub fn body_hash(&self) -> [u8; 32] {
        *blake3::hash(&self.manifest.encode()).as_bytes()
    }
}

/// Verifies and decodes a signed manifest (not yet whether it may follow another).
pub fn open_manifest(bytes: &[u8]) -> Result<SignedManifest, ManifestError> {
    let SignedV1 { signer, body, .. } = open_signed(bytes, DST_MANIFEST, MAX_MANIFEST_BYTES)?;
    let manifest = ManifestV1::decode(&body)?;
    Ok(SignedManifest { manifest, signed: bytes.to_vec(), signer })
}

/// Whether `new` may replace `current` for community `id`: the next version, naming
/// the current one's hash, signed by one of the current administrators. A genesis is
/// accepted when its hash is the id and its signer one of its own administrators.
pub fn accept(id: &CommunityId, current: Option<&SignedManifest>, new: &SignedManifest) -> Result<(), ManifestError> {
    if new.manifest.community() != *id {
        return Err(ManifestError::WrongCommunity);
    }
    match current {
        None if new.manifest.version == 1 => {
            if new.manifest.admins.contains(&new.signer) {
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
            if !cur.manifest.admins.contains(&new.signer) {
                return Err(ManifestError::NotAdmin);
            }
            Ok(())
        }
    }
}

/// Whether `new` is a **fork**: a second, different manifest of a version already held
/// (`held`), validly following the same previous version (`parent`) and signed by one of
/// its administrators. Two such manifests mean the community's administrators signed
/// two histories: evidence to keep, show and pass on, never a fault of whoever relays it.
/// (The genesis cannot fork: the community id is its hash.)
pub fn is_fork(id: &CommunityId, parent: &SignedManifest, held: &SignedManifest, new: &SignedManifest) -> bool {
    new.manifest.version == held.manifest.version
        && new.body_hash() != held.body_hash()
        && held.manifest.version == parent.manifest.version.saturating_add(1)
        && accept(id, Some(parent), new).is_ok()
}

/// What `community invite` prints: the community id, its latest signed manifest and
/// addresses to reach members. Text form: `hearsay1` + lower-case hex of the postcard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketV1 {
    pub community: CommunityId,
    pub manifest: Vec<u8>,
    pub bootstrap: Vec<String>,
}

const TICKET_PREFIX: &str = "hearsay1";

impl TicketV1 {
    pub fn to_text(&self) -> String {
        format!("{TICKET_PREFIX}{}", hex::encode(postcard::to_allocvec(self).unwrap_or_default()))
    }

    /// Parses and verifies a ticket: its manifest must be validly signed by one of its
    /// own administrators and belong to the ticket's community.
    pub fn from_text(text: &str) -> Result<(TicketV1, SignedManifest), String> {
        let hexpart =
            text.trim().strip_prefix(TICKET_PREFIX).ok_or("not a hearsay ticket (it starts with hearsay1)")?;
        if hexpart.len() > 2 * (MAX_MANIFEST_BYTES + 8 * 1024) {
            return Err("ticket too long".into());
        }
        let bytes = hex::decode(hexpart).map_err(|_| "ticket is not valid hex")?;
        let ticket: TicketV1 = match postcard::take_from_bytes(&bytes) {
            Ok((t, [])) => t,
            _ => return Err("ticket does not decode".into()),
        };
        let m = open_manifest(&ticket.manifest).map_err(|e| format!("ticket manifest: {e}"))?;
        if m.manifest.community() != ticket.community {
            return Err("ticket manifest is for another community".into());
        }
        if !m.manifest.admins.contains(&m.signer) {
            return Err("ticket manifest is not signed by an administrator".into());
        }
        Ok((ticket, m))
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
}
