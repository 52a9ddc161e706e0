//! The node's own ed25519 identity key.
//!
//! Stored in `<data_dir>/node_key` (mode 0600, outside sled so it can be backed up and
//! restored on its own) in libp2p's protobuf key encoding: `08 01 12 40` followed by the
//! 32-byte secret and the 32-byte public key. That is exactly what
//! `libp2p::identity::Keypair::from_protobuf_encoding` reads, so the federation layer
//! loads this same key as the node's PeerId; snapshot and manifest signatures use it
//! under their own domain-separation tags (the envelope is `crate::envelope`).

use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;

use crate::envelope::{DST_MANIFEST, DST_SNAPSHOT};
use crate::privacy::Publishable;
use crate::privacy::snapshot::SnapshotV1;

const PREFIX: [u8; 4] = [0x08, 0x01, 0x12, 0x40];
pub const FILE_NAME: &str = crate::store::NODE_KEY_FILE;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("node key {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("node key {path}: {reason}")]
    Invalid { path: PathBuf, reason: &'static str },
    #[error("node key: no randomness from the OS: {0}")]
    Random(String),
}

/// The node's key pair.
pub struct NodeIdentity {
    key: SigningKey,
}

impl NodeIdentity {
    /// Loads `dir/node_key`, creating it with a fresh key when missing.
    pub fn load_or_create(dir: &Path) -> Result<NodeIdentity, Error> {
        let path = dir.join(FILE_NAME);
        match std::fs::read(&path) {
            Ok(bytes) => NodeIdentity::decode(&bytes).map_err(|reason| Error::Invalid { path, reason }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let seed = crate::auth::random_bytes::<32>().map_err(Error::Random)?;
                let id = NodeIdentity { key: SigningKey::from_bytes(&seed) };
                write_private(&path, &id.encode()).map_err(|source| Error::Io { path, source })?;
                Ok(id)
            }
            Err(source) => Err(Error::Io { path, source }),
        }
    }

    /// libp2p's protobuf encoding of the key pair.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = PREFIX.to_vec();
        out.extend_from_slice(&self.key.to_bytes());
        out.extend_from_slice(self.key.verifying_key().as_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<NodeIdentity, &'static str> {
        if bytes.len() != 68 || bytes[..4] != PREFIX {
            return Err("not a libp2p protobuf ed25519 key pair");
        }
        let mut seed = [0; 32];
        seed.copy_from_slice(&bytes[4..36]);
        let key = SigningKey::from_bytes(&seed);
        if key.verifying_key().as_bytes()[..] != bytes[36..] {
            return Err("public half does not match the secret");
        }
        Ok(NodeIdentity { key })
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The libp2p PeerId in its usual base58 text form (`12D3KooW…`): the identity
    /// multihash of the protobuf-encoded public key.
    pub fn peer_id(&self) -> String {
        let mut mh = vec![0x00, 36, 0x08, 0x01, 0x12, 0x20];
        mh.extend_from_slice(&self.public_key());
        bs58::encode(mh).into_string()
    }
}

impl NodeIdentity {
    /// Signs a publishable snapshot; returns the envelope bytes that are stored and sent.
    pub fn sign_snapshot(&self, snapshot: &Publishable<SnapshotV1>) -> Vec<u8> {
        self.sign(DST_SNAPSHOT, snapshot.encode())
    }

    /// Signs a community manifest (the node acting as the community's administrator).
    pub fn sign_manifest(&self, manifest: &crate::federation::community::ManifestV1) -> Vec<u8> {
        self.sign(DST_MANIFEST, manifest.encode())
    }

    /// Adds this node's co-signature to a manifest another administrator signed.
    pub fn cosign_manifest(
        &self,
        signed: &crate::federation::community::SignedManifest,
    ) -> Result<crate::federation::community::SignedManifest, crate::federation::community::ManifestError> {
        let sig = crate::envelope::sign_detached(&self.key, DST_MANIFEST, &signed.manifest.encode());
        signed.with_cosignature(self.public_key(), sig)
    }

    /// Signs a community result (the node acting as one of the community's
    /// administrators, `federation::result`).
    pub fn sign_result(&self, result: &crate::federation::result::ResultV1) -> Vec<u8> {
        self.sign(crate::envelope::DST_RESULT, result.encode())
    }

    /// Signs a secure-aggregation round (the node acting as the community's leader).
    pub fn sign_round(&self, round: &crate::federation::secagg::RoundV1) -> Vec<u8> {
        self.sign(crate::envelope::DST_SECURE_ROUND, round.encode())
    }

    /// Signs a secure result's body (detached: the result carries both aggregators'
    /// signatures).
    pub fn sign_secure_result(&self, body: &[u8]) -> Vec<u8> {
        crate::envelope::sign_detached(&self.key, crate::envelope::DST_SECURE_RESULT, body)
    }

    fn sign(&self, dst: &[u8], body: Vec<u8>) -> Vec<u8> {
        crate::envelope::seal(&self.key, dst, body)
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_created_once_private_and_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = NodeIdentity::load_or_create(dir.path()).expect("create");
        let b = NodeIdentity::load_or_create(dir.path()).expect("load");
        assert_eq!(a.public_key(), b.public_key());
        assert!(a.peer_id().starts_with("12D3KooW"), "{}", a.peer_id());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(FILE_NAME)).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join(FILE_NAME), b"garbage").expect("write");
        assert!(NodeIdentity::load_or_create(dir.path()).is_err());
    }
}
