//! The signed chain head: (seq, hash) of the newest record, Ed25519-signed.
//!
//! The hash chain alone shows edits, deletions in the middle and reordering,
//! but not records cut off the end. The writer signs the head after every
//! commit; `audit verify` checks that the chain reaches the signed head.

use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::chain::ChainHash;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedHead {
    pub seq: u64,
    pub hash: ChainHash,
    /// Ed25519 over `"tokengate-audit-head-v1" ‖ seq ‖ hash`.
    pub signature: Vec<u8>,
}

impl SignedHead {
    fn message(seq: u64, hash: &ChainHash) -> Vec<u8> {
        let mut m = b"tokengate-audit-head-v1".to_vec();
        m.extend_from_slice(&seq.to_be_bytes());
        m.extend_from_slice(hash);
        m
    }

    pub fn sign(key: &Ed25519KeyPair, seq: u64, hash: ChainHash) -> SignedHead {
        let signature = key.sign(&Self::message(seq, &hash)).as_ref().to_vec();
        SignedHead {
            seq,
            hash,
            signature,
        }
    }

    /// True when the signature is valid for `public_key` (32 raw bytes).
    pub fn verify(&self, public_key: &[u8]) -> bool {
        UnparsedPublicKey::new(&signature::ED25519, public_key)
            .verify(&Self::message(self.seq, &self.hash), &self.signature)
            .is_ok()
    }
}

/// The raw public key of a signing key pair.
pub fn public_key(key: &Ed25519KeyPair) -> Vec<u8> {
    key.public_key().as_ref().to_vec()
}
