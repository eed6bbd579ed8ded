//! Envelope encryption of card records.
//!
//! Each record gets a fresh 256-bit DEK. The card payload is sealed under the
//! DEK with the tenant and token as associated data; the DEK is sealed under
//! the active `data` KEK with tenant, token and KEK version as associated
//! data. Moving a ciphertext or a wrapped DEK to another row, tenant or
//! version fails. Rewrapping (key rotation) touches only the DEK: the card
//! payload is never decrypted for it.
//! Deleting the wrapped DEK makes the ciphertext unrecoverable
//! (crypto-shredding).

use crate::CryptoError;
use crate::aead::AeadKey;
use crate::keyring::{KeyPurpose, KeyRing};
use crate::secret::{Key256, SecretBytes};

/// What a record's ciphertext is bound to.
#[derive(Clone, Copy, Debug)]
pub struct RecordAad<'a> {
    pub tenant: &'a str,
    pub token: &'a str,
}

impl RecordAad<'_> {
    fn bytes(&self, label: &str, version: u32) -> Vec<u8> {
        let mut v = Vec::with_capacity(64 + self.tenant.len() + self.token.len());
        v.extend_from_slice(label.as_bytes());
        for part in [self.tenant.as_bytes(), self.token.as_bytes()] {
            v.extend_from_slice(&(part.len() as u32).to_be_bytes());
            v.extend_from_slice(part);
        }
        v.extend_from_slice(&version.to_be_bytes());
        v
    }
}

/// A sealed record as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub kek_version: u32,
    pub wrapped_dek: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl Envelope {
    /// Seal `plaintext` for the record named by `aad`, under the active data KEK.
    pub fn seal(
        ring: &KeyRing,
        aad: RecordAad<'_>,
        plaintext: &[u8],
    ) -> Result<Envelope, CryptoError> {
        let version = ring.active_version(KeyPurpose::Data)?;
        let kek = ring.aead(KeyPurpose::Data, version)?;
        let dek = Key256::generate()?;
        let ciphertext =
            AeadKey::new(dek.expose())?.seal(&aad.bytes("tokengate/record/v1", 0), plaintext)?;
        let wrapped_dek = kek.seal(&aad.bytes("tokengate/dek/v1", version), dek.expose())?;
        Ok(Envelope {
            kek_version: version,
            wrapped_dek,
            ciphertext,
        })
    }

    fn unwrap_dek(&self, ring: &KeyRing, aad: RecordAad<'_>) -> Result<Key256, CryptoError> {
        let kek = ring.aead(KeyPurpose::Data, self.kek_version)?;
        self.unwrap_dek_with(kek, aad)
    }

    fn unwrap_dek_with(&self, kek: &AeadKey, aad: RecordAad<'_>) -> Result<Key256, CryptoError> {
        let raw = SecretBytes::new(kek.open(
            &aad.bytes("tokengate/dek/v1", self.kek_version),
            &self.wrapped_dek,
        )?);
        Key256::try_from_slice(raw.expose()).ok_or(CryptoError::Malformed)
    }

    /// Decrypt the payload.
    pub fn open(&self, ring: &KeyRing, aad: RecordAad<'_>) -> Result<SecretBytes, CryptoError> {
        let dek = self.unwrap_dek(ring, aad)?;
        AeadKey::new(dek.expose())?
            .open(&aad.bytes("tokengate/record/v1", 0), &self.ciphertext)
            .map(SecretBytes::new)
    }

    /// Decrypt the payload for re-keying inside the vault (re-fingerprinting
    /// after a fingerprint-key rotation). Unlike [`open`](Self::open) this
    /// works under a data KEK below the minimum decryption version, so that
    /// such records can still be moved; the plaintext must never be returned
    /// to a caller.
    pub fn open_for_rekey(
        &self,
        ring: &KeyRing,
        aad: RecordAad<'_>,
    ) -> Result<SecretBytes, CryptoError> {
        let kek = ring.aead_for_rekey(KeyPurpose::Data, self.kek_version)?;
        let dek = self.unwrap_dek_with(kek, aad)?;
        AeadKey::new(dek.expose())?
            .open(&aad.bytes("tokengate/record/v1", 0), &self.ciphertext)
            .map(SecretBytes::new)
    }

    /// Move the DEK to the active data KEK. The payload ciphertext is kept
    /// as it is: no card data is decrypted. Works from any held version,
    /// including one below the minimum decryption version (that is how
    /// records leave it).
    pub fn rewrap(&self, ring: &KeyRing, aad: RecordAad<'_>) -> Result<Envelope, CryptoError> {
        let kek = ring.aead_for_rekey(KeyPurpose::Data, self.kek_version)?;
        let dek = self.unwrap_dek_with(kek, aad)?;
        let version = ring.active_version(KeyPurpose::Data)?;
        let wrapped_dek = ring
            .aead(KeyPurpose::Data, version)?
            .seal(&aad.bytes("tokengate/dek/v1", version), dek.expose())?;
        Ok(Envelope {
            kek_version: version,
            wrapped_dek,
            ciphertext: self.ciphertext.clone(),
        })
    }
}

/// Seal a CVC under the active `cvc` key. Returns (key version, ciphertext).
pub fn seal_cvc(
    ring: &KeyRing,
    aad: RecordAad<'_>,
    cvc: &str,
) -> Result<(u32, Vec<u8>), CryptoError> {
    let version = ring.active_version(KeyPurpose::Cvc)?;
    let ct = ring
        .aead(KeyPurpose::Cvc, version)?
        .seal(&aad.bytes("tokengate/cvc/v1", version), cvc.as_bytes())?;
    Ok((version, ct))
}

/// Open a CVC sealed by [`seal_cvc`].
pub fn open_cvc(
    ring: &KeyRing,
    aad: RecordAad<'_>,
    version: u32,
    ct: &[u8],
) -> Result<SecretBytes, CryptoError> {
    ring.aead(KeyPurpose::Cvc, version)?
        .open(&aad.bytes("tokengate/cvc/v1", version), ct)
        .map(SecretBytes::new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::root::FileRootKey;
    use std::collections::HashMap;

    fn ring() -> (tempfile::TempDir, KeyRing) {
        let dir = tempfile::tempdir().unwrap();
        let root = FileRootKey::create(&dir.path().join("root.key")).unwrap();
        let keys = KeyRing::generate_initial(&root, 0).unwrap();
        (dir, KeyRing::load(&root, &keys, &HashMap::new()).unwrap())
    }

    #[test]
    fn round_trip() {
        let (_d, ring) = ring();
        let aad = RecordAad {
            tenant: "t",
            token: "tok_a",
        };
        let env = Envelope::seal(&ring, aad, b"card").unwrap();
        assert_eq!(env.open(&ring, aad).unwrap().expose(), b"card");
    }

    #[test]
    fn moved_ciphertext_fails() {
        let (_d, ring) = ring();
        let a = RecordAad {
            tenant: "t",
            token: "tok_a",
        };
        let b = RecordAad {
            tenant: "t",
            token: "tok_b",
        };
        let env_a = Envelope::seal(&ring, a, b"card-a").unwrap();
        let env_b = Envelope::seal(&ring, b, b"card-b").unwrap();
        // Whole envelope moved to another token.
        assert!(matches!(env_a.open(&ring, b), Err(CryptoError::Decrypt)));
        // Only the ciphertext swapped.
        let mixed = Envelope {
            ciphertext: env_a.ciphertext.clone(),
            ..env_b.clone()
        };
        assert!(mixed.open(&ring, b).is_err());
        // Another tenant.
        assert!(
            env_a
                .open(
                    &ring,
                    RecordAad {
                        tenant: "u",
                        token: "tok_a"
                    }
                )
                .is_err()
        );
        // Version relabelled.
        let relabelled = Envelope {
            kek_version: 2,
            ..env_a.clone()
        };
        assert!(relabelled.open(&ring, a).is_err());
    }

    #[test]
    fn rewrap_moves_the_dek_and_keeps_the_ciphertext() {
        let dir = tempfile::tempdir().unwrap();
        let root = FileRootKey::create(&dir.path().join("root.key")).unwrap();
        let mut keys = KeyRing::generate_initial(&root, 0).unwrap();
        let v1 = KeyRing::load(&root, &keys, &HashMap::new()).unwrap();
        let aad = RecordAad {
            tenant: "t",
            token: "tok_a",
        };
        let env = Envelope::seal(&v1, aad, b"card").unwrap();
        keys.push(KeyRing::generate_version(&root, KeyPurpose::Data, 2, 0).unwrap());
        // Version 1 below the minimum decryption version: open refuses it,
        // rewrap still moves the record off it.
        let min = HashMap::from([(KeyPurpose::Data, 2)]);
        let v2 = KeyRing::load(&root, &keys, &min).unwrap();
        assert!(matches!(
            env.open(&v2, aad),
            Err(CryptoError::KeyVersionRetired { .. })
        ));
        let moved = env.rewrap(&v2, aad).unwrap();
        assert_eq!(moved.kek_version, 2);
        assert_eq!(moved.ciphertext, env.ciphertext);
        assert_ne!(moved.wrapped_dek, env.wrapped_dek);
        assert_eq!(moved.open(&v2, aad).unwrap().expose(), b"card");
        assert_eq!(env.open_for_rekey(&v2, aad).unwrap().expose(), b"card");
        // Bound to its record: another token cannot rewrap it.
        let other = RecordAad {
            tenant: "t",
            token: "tok_b",
        };
        assert!(env.rewrap(&v2, other).is_err());
    }

    #[test]
    fn cvc_bound_to_token() {
        let (_d, ring) = ring();
        let a = RecordAad {
            tenant: "t",
            token: "tok_a",
        };
        let (v, ct) = seal_cvc(&ring, a, "123").unwrap();
        assert_eq!(open_cvc(&ring, a, v, &ct).unwrap().expose(), b"123");
        assert!(
            open_cvc(
                &ring,
                RecordAad {
                    tenant: "t",
                    token: "tok_b"
                },
                v,
                &ct
            )
            .is_err()
        );
    }
}
