//! Federation, pure: communities (signed manifests, tickets), the validation rules for
//! snapshots and manifests received from peers, and the merge of member snapshots into
//! community and federated charts. No I/O and no libp2p (that is `p2p`); the store keeps
//! what these functions accept.

pub mod community;
pub mod merge;
pub mod result;
pub mod secagg;
pub mod sim;
pub mod validate;

/// A node's identity on the wire: its ed25519 public key (the key in its PeerId).
pub type NodeId = [u8; 32];
/// `blake3::derive_key(COMMUNITY_ID_CONTEXT, genesis manifest body)`.
pub type CommunityId = [u8; 32];

/// Short hex form used in topics and URLs (the first 16 bytes).
pub fn short_hex(id: &[u8; 32]) -> String {
    hex::encode(&id[..16])
}
