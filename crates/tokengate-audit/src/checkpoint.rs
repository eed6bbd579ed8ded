//! Signed checkpoints: the Merkle root of the audit log at a size, in the
//! C2SP `tlog-checkpoint` text form, signed as a C2SP `signed-note` with the
//! audit Ed25519 key.
//!
//! ```text
//! tokengate/audit/3f1c…          ← origin (also the signing key's name)
//! 1024                           ← tree size (records 1..=1024)
//! q0tZ…=                         ← base64 RFC 6962 root
//!
//! — tokengate/audit/3f1c… AbCd…  ← key id ‖ Ed25519 signature, base64
//! ```
//!
//! A checkpoint saved outside tokengate (a file, a SIEM) pins the log: a
//! later `audit verify --checkpoint` recomputes the root at that size from
//! the records and any edit, deletion or rewrite — even one re-chained and
//! re-signed by someone holding the database and the signing key — shows.
//! The format is the one Go's `sumdb/note`, Sigstore and the public witness
//! network read, so third-party tooling can verify it with [`verifier_key`].

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use data_encoding::{BASE64, HEXLOWER};
use signed_note::{Note, StandardVerifier, VerifierList};
use tlog_tiles::Checkpoint;

use crate::merkle::Hash;

/// Why a checkpoint was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    #[error("not a signed checkpoint note (C2SP tlog-checkpoint + signed-note): {0}")]
    Malformed(String),
    #[error("the checkpoint is not signed by this vault's audit key ({0})")]
    BadSignature(String),
    #[error("the checkpoint's origin {found:?} is not this vault's log ({expected:?})")]
    WrongOrigin { expected: String, found: String },
}

const ALG_ED25519: u8 = 1;

/// The log's origin line and key name, derived from the audit public key so
/// two vaults never share one: `tokengate/audit/<16 hex of SHA-256(key)>`.
pub fn origin(public_key: &[u8]) -> String {
    let d = digest(&SHA256, public_key);
    format!("tokengate/audit/{}", HEXLOWER.encode(&d.as_ref()[..8]))
}

/// The verifier key in the `name+id+base64` form of C2SP signed-note, for
/// checking checkpoints with third-party tools.
pub fn verifier_key(public_key: &[u8]) -> String {
    let name = origin(public_key);
    let encoded = encoded_key(public_key);
    format!(
        "{name}+{:08x}+{}",
        signed_note::key_id(&name, &encoded),
        BASE64.encode(&encoded)
    )
}

fn encoded_key(public_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + public_key.len());
    k.push(ALG_ED25519);
    k.extend_from_slice(public_key);
    k
}

/// A checkpoint whose signature has been checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub origin: String,
    /// Number of records covered: seq 1..=size.
    pub size: u64,
    pub root: [u8; 32],
    /// The whole signed note, as stored and exported.
    pub note: String,
}

struct AuditSigner<'a> {
    name: String,
    id: u32,
    key: &'a Ed25519KeyPair,
}

impl signed_note::Signer for AuditSigner<'_> {
    fn name(&self) -> &str {
        &self.name
    }
    fn key_id(&self) -> u32 {
        self.id
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        Ok(self.key.sign(msg).as_ref().to_vec())
    }
}

/// Sign the checkpoint for a tree of `size` records with root `root`.
pub fn sign(
    key: &Ed25519KeyPair,
    size: u64,
    root: [u8; 32],
) -> Result<SignedCheckpoint, CheckpointError> {
    let public_key = key.public_key().as_ref();
    let name = origin(public_key);
    let text = Checkpoint::new(&name, size, Hash(root), "")
        .map_err(|e| CheckpointError::Malformed(e.to_string()))?
        .to_bytes();
    let mut note = Note::new(&text, &[]).map_err(|e| CheckpointError::Malformed(e.to_string()))?;
    let signer = AuditSigner {
        id: signed_note::key_id(&name, &encoded_key(public_key)),
        name: name.clone(),
        key,
    };
    note.add_sigs(&[&signer])
        .map_err(|e| CheckpointError::Malformed(e.to_string()))?;
    let note = String::from_utf8(note.to_bytes())
        .map_err(|e| CheckpointError::Malformed(e.to_string()))?;
    Ok(SignedCheckpoint {
        origin: name,
        size,
        root,
        note,
    })
}

/// Parse a signed checkpoint note and check its signature against
/// `public_key` (32 raw Ed25519 bytes) and its origin against this log's.
pub fn open(note: &str, public_key: &[u8]) -> Result<SignedCheckpoint, CheckpointError> {
    let parsed =
        Note::from_bytes(note.as_bytes()).map_err(|e| CheckpointError::Malformed(e.to_string()))?;
    let verifier = StandardVerifier::new(&verifier_key(public_key))
        .map_err(|e| CheckpointError::Malformed(e.to_string()))?;
    parsed
        .verify(&VerifierList::new(vec![Box::new(verifier)]))
        .map_err(|e| CheckpointError::BadSignature(e.to_string()))?;
    let cp = Checkpoint::from_bytes(parsed.text())
        .map_err(|e| CheckpointError::Malformed(e.to_string()))?;
    let expected = origin(public_key);
    if cp.origin() != expected {
        return Err(CheckpointError::WrongOrigin {
            expected,
            found: cp.origin().to_owned(),
        });
    }
    Ok(SignedCheckpoint {
        origin: cp.origin().to_owned(),
        size: cp.size(),
        root: cp.hash().0,
        note: note.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn key(seed: u8) -> Ed25519KeyPair {
        Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap()
    }

    #[test]
    fn signs_in_the_c2sp_form_and_opens_again() {
        let k = key(7);
        let pk = k.public_key().as_ref().to_vec();
        let cp = sign(&k, 42, [3u8; 32]).unwrap();
        let lines: Vec<&str> = cp.note.lines().collect();
        assert_eq!(lines[0], origin(&pk));
        assert_eq!(lines[1], "42");
        assert_eq!(lines[2], BASE64.encode(&[3u8; 32]));
        assert_eq!(lines[3], "");
        assert!(lines[4].starts_with(&format!("\u{2014} {} ", origin(&pk))));
        assert_eq!(open(&cp.note, &pk).unwrap(), cp);
    }

    #[test]
    fn refuses_other_keys_edits_and_garbage() {
        let cp = sign(&key(7), 42, [3u8; 32]).unwrap();
        let other = key(8);
        let other_pk = other.public_key().as_ref().to_vec();
        assert!(open(&cp.note, &other_pk).is_err());
        let pk = key(7).public_key().as_ref().to_vec();
        let edited = cp.note.replacen("\n42\n", "\n41\n", 1);
        assert!(matches!(
            open(&edited, &pk),
            Err(CheckpointError::BadSignature(_))
        ));
        assert!(matches!(
            open("hello", &pk),
            Err(CheckpointError::Malformed(_))
        ));
        assert!(matches!(
            open(&cp.note[..cp.note.len() - 5], &pk),
            Err(CheckpointError::Malformed(_) | CheckpointError::BadSignature(_))
        ));
    }
}
