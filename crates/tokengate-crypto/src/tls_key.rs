//! Encryption at rest of TLS private keys (the certificate store).
//!
//! Same envelope as card records, under its own KEK purpose: each private key
//! gets a fresh 256-bit DEK; the key's DER bytes are sealed under the DEK and
//! the DEK is sealed under the active `tls_key` KEK. Both layers bind (AAD)
//! the certificate's name and the SHA-256 of its leaf certificate, so a
//! sealed key moved to another certificate row, or left behind when the
//! certificate is replaced, does not decrypt. The DEK layer also binds the
//! KEK version.
//!
//! Nothing here ever returns the key other than as [`SecretBytes`]
//! (zeroized on drop, never printed).

use crate::CryptoError;
use crate::aead::AeadKey;
use crate::envelope::Envelope;
use crate::keyring::{KeyPurpose, KeyRing};
use crate::secret::{Key256, SecretBytes};

/// What a sealed private key is bound to.
#[derive(Clone, Copy, Debug)]
pub struct PrivateKeyAad<'a> {
    /// The certificate's name in the store.
    pub name: &'a str,
    /// SHA-256 of the DER leaf certificate the key belongs to.
    pub leaf_sha256: &'a [u8],
}

impl PrivateKeyAad<'_> {
    fn bytes(&self, label: &str, version: u32) -> Vec<u8> {
        let mut v = Vec::with_capacity(label.len() + self.name.len() + 48);
        v.extend_from_slice(label.as_bytes());
        for part in [self.name.as_bytes(), self.leaf_sha256] {
            v.extend_from_slice(&(part.len() as u32).to_be_bytes());
            v.extend_from_slice(part);
        }
        v.extend_from_slice(&version.to_be_bytes());
        v
    }
}

const KEY_LABEL: &str = "tokengate/tls-private-key/v1";
const DEK_LABEL: &str = "tokengate/tls-dek/v1";

/// Seal the DER bytes of a private key under the active `tls_key` KEK.
pub fn seal_private_key(
    ring: &KeyRing,
    aad: PrivateKeyAad<'_>,
    der: &[u8],
) -> Result<Envelope, CryptoError> {
    let version = ring.active_version(KeyPurpose::TlsKey)?;
    let kek = ring.aead(KeyPurpose::TlsKey, version)?;
    let dek = Key256::generate()?;
    let ciphertext = AeadKey::new(dek.expose())?.seal(&aad.bytes(KEY_LABEL, 0), der)?;
    let wrapped_dek = kek.seal(&aad.bytes(DEK_LABEL, version), dek.expose())?;
    Ok(Envelope {
        kek_version: version,
        wrapped_dek,
        ciphertext,
    })
}

/// Open a private key sealed by [`seal_private_key`] with the same binding.
pub fn open_private_key(
    ring: &KeyRing,
    aad: PrivateKeyAad<'_>,
    sealed: &Envelope,
) -> Result<SecretBytes, CryptoError> {
    let kek = ring.aead(KeyPurpose::TlsKey, sealed.kek_version)?;
    let raw = SecretBytes::new(kek.open(
        &aad.bytes(DEK_LABEL, sealed.kek_version),
        &sealed.wrapped_dek,
    )?);
    let dek = Key256::try_from_slice(raw.expose()).ok_or(CryptoError::Malformed)?;
    AeadKey::new(dek.expose())?
        .open(&aad.bytes(KEY_LABEL, 0), &sealed.ciphertext)
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
    fn round_trip_and_bindings() {
        let (_d, ring) = ring();
        let a = PrivateKeyAad {
            name: "brave-falcon-0042",
            leaf_sha256: &[1; 32],
        };
        let secret = b"-- private key der --";
        let sealed = seal_private_key(&ring, a, secret).unwrap();
        assert!(
            !sealed.ciphertext.windows(secret.len()).any(|w| w == secret),
            "no plaintext in the ciphertext"
        );
        assert_eq!(
            open_private_key(&ring, a, &sealed).unwrap().expose(),
            secret
        );
        // Another certificate name.
        let b = PrivateKeyAad {
            name: "calm-otter-0001",
            ..a
        };
        assert!(matches!(
            open_private_key(&ring, b, &sealed),
            Err(CryptoError::Decrypt)
        ));
        // Same name, replaced certificate.
        let c = PrivateKeyAad {
            leaf_sha256: &[2; 32],
            ..a
        };
        assert!(open_private_key(&ring, c, &sealed).is_err());
        // Version relabelled.
        let relabelled = Envelope {
            kek_version: 2,
            ..sealed.clone()
        };
        assert!(open_private_key(&ring, a, &relabelled).is_err());
        // A card-record envelope key cannot open it (separate purpose).
        let card_aad = crate::RecordAad {
            tenant: "t",
            token: "brave-falcon-0042",
        };
        assert!(sealed.open(&ring, card_aad).is_err());
    }
}
