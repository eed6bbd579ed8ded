//! The key ring: every KEK by purpose and version, unwrapped in memory.
//!
//! New writes use the active version of a purpose; reads use the version
//! recorded with the data, as long as it is not below the purpose's minimum
//! decryption version. KEKs are stored in the database only wrapped by the
//! root key, bound (AAD) to their purpose and version so that one cannot be
//! substituted for another (PCI DSS 3.6.1.2 / 3.7.7).

use std::collections::{BTreeMap, HashMap};

use aws_lc_rs::hmac;
use aws_lc_rs::signature::Ed25519KeyPair;

use crate::CryptoError;
use crate::aead::AeadKey;
use crate::root::RootKeyProvider;
use crate::secret::Key256;

/// What a key is for. Each purpose has its own versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyPurpose {
    /// Wraps each record's data-encryption key.
    Data,
    /// Encrypts CVCs (held at most an hour).
    Cvc,
    /// Keyed fingerprint of PANs (duplicate detection, search).
    Fingerprint,
    /// Keyed hash under which API keys are stored.
    ApiKey,
    /// Keyed hash for sensitive values in audit records.
    Audit,
    /// Ed25519 seed that signs the audit chain head.
    AuditSigning,
    /// Wraps the DEK of each TLS private key in the certificate store.
    TlsKey,
}

impl KeyPurpose {
    pub const ALL: [KeyPurpose; 7] = [
        KeyPurpose::Data,
        KeyPurpose::Cvc,
        KeyPurpose::Fingerprint,
        KeyPurpose::ApiKey,
        KeyPurpose::Audit,
        KeyPurpose::AuditSigning,
        KeyPurpose::TlsKey,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyPurpose::Data => "data",
            KeyPurpose::Cvc => "cvc",
            KeyPurpose::Fingerprint => "fingerprint",
            KeyPurpose::ApiKey => "api_key",
            KeyPurpose::Audit => "audit",
            KeyPurpose::AuditSigning => "audit_signing",
            KeyPurpose::TlsKey => "tls_key",
        }
    }

    pub fn from_name(s: &str) -> Option<KeyPurpose> {
        KeyPurpose::ALL.into_iter().find(|p| p.as_str() == s)
    }

    fn is_hmac(self) -> bool {
        matches!(
            self,
            KeyPurpose::Fingerprint | KeyPurpose::ApiKey | KeyPurpose::Audit
        )
    }
}

/// Lifecycle state of one key version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyState {
    Active,
    DecryptOnly,
    Retired,
    Destroyed,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::DecryptOnly => "decrypt-only",
            KeyState::Retired => "retired",
            KeyState::Destroyed => "destroyed",
        }
    }

    pub fn from_name(s: &str) -> Option<KeyState> {
        [
            KeyState::Active,
            KeyState::DecryptOnly,
            KeyState::Retired,
            KeyState::Destroyed,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// A key version as stored: wrapped by the root key.
#[derive(Clone, Debug)]
pub struct WrappedKey {
    pub purpose: KeyPurpose,
    pub version: u32,
    pub state: KeyState,
    /// Unix seconds.
    pub created_at: i64,
    /// Invariant: `root.wrap(kek_aad(purpose, version), key)`.
    pub wrapped: Vec<u8>,
}

/// AAD binding a wrapped KEK to its purpose and version.
pub fn kek_aad(purpose: KeyPurpose, version: u32) -> Vec<u8> {
    format!("tokengate/kek/v1/{}/{}", purpose.as_str(), version).into_bytes()
}

/// One unwrapped key version, ready to use.
struct Entry {
    state: KeyState,
    aead: Option<AeadKey>,
    hmac: Option<hmac::Key>,
    ed25519: Option<Ed25519KeyPair>,
}

#[derive(Default)]
struct PurposeKeys {
    active: Option<u32>,
    min_decrypt: u32,
    versions: BTreeMap<u32, Entry>,
}

/// All KEKs in memory. Cheap to share behind an `Arc`.
#[derive(Default)]
pub struct KeyRing {
    purposes: HashMap<KeyPurpose, PurposeKeys>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_map();
        for (p, k) in &self.purposes {
            d.entry(&p.as_str(), &k.versions.keys().collect::<Vec<_>>());
        }
        d.finish()
    }
}

impl KeyRing {
    /// Generate version 1 of every purpose, wrapped by `root`, for `init`.
    pub fn generate_initial(
        root: &dyn RootKeyProvider,
        now: i64,
    ) -> Result<Vec<WrappedKey>, CryptoError> {
        KeyPurpose::ALL
            .into_iter()
            .map(|p| Self::generate_version(root, p, 1, now))
            .collect()
    }

    /// Generate one new key version, wrapped by `root`.
    pub fn generate_version(
        root: &dyn RootKeyProvider,
        purpose: KeyPurpose,
        version: u32,
        now: i64,
    ) -> Result<WrappedKey, CryptoError> {
        let key = Key256::generate()?;
        let wrapped = root.wrap(&kek_aad(purpose, version), key.expose())?;
        Ok(WrappedKey {
            purpose,
            version,
            state: KeyState::Active,
            created_at: now,
            wrapped,
        })
    }

    /// Unwrap every stored version with `root`. Destroyed versions are skipped.
    /// `min_decrypt` gives the minimum decryption version per purpose.
    pub fn load(
        root: &dyn RootKeyProvider,
        stored: &[WrappedKey],
        min_decrypt: &HashMap<KeyPurpose, u32>,
    ) -> Result<KeyRing, CryptoError> {
        let mut ring = KeyRing::default();
        for w in stored {
            let pk = ring.purposes.entry(w.purpose).or_default();
            if w.state == KeyState::Destroyed {
                continue;
            }
            let raw = root.unwrap(&kek_aad(w.purpose, w.version), &w.wrapped)?;
            let key = Key256::try_from_slice(raw.expose()).ok_or(CryptoError::Malformed)?;
            let mut entry = Entry {
                state: w.state,
                aead: None,
                hmac: None,
                ed25519: None,
            };
            match w.purpose {
                p if p.is_hmac() => {
                    entry.hmac = Some(hmac::Key::new(hmac::HMAC_SHA256, key.expose()))
                }
                KeyPurpose::AuditSigning => {
                    entry.ed25519 = Some(
                        Ed25519KeyPair::from_seed_unchecked(key.expose())
                            .map_err(|_| CryptoError::Library)?,
                    )
                }
                _ => entry.aead = Some(AeadKey::new(key.expose())?),
            }
            if w.state == KeyState::Active && pk.active.is_none_or(|a| a < w.version) {
                pk.active = Some(w.version);
            }
            pk.versions.insert(w.version, entry);
        }
        for (p, v) in min_decrypt {
            ring.purposes.entry(*p).or_default().min_decrypt = *v;
        }
        Ok(ring)
    }

    /// The version new writes of `purpose` use.
    pub fn active_version(&self, purpose: KeyPurpose) -> Result<u32, CryptoError> {
        self.purposes
            .get(&purpose)
            .and_then(|p| p.active)
            .ok_or(CryptoError::NoActiveKey(purpose.as_str()))
    }

    /// Every usable version of `purpose`, newest first.
    pub fn versions(&self, purpose: KeyPurpose) -> Vec<u32> {
        self.purposes
            .get(&purpose)
            .map(|p| {
                p.versions
                    .keys()
                    .rev()
                    .copied()
                    .filter(|v| *v >= p.min_decrypt)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The minimum decryption version of `purpose` (0 when none is set).
    pub fn min_decryption_version(&self, purpose: KeyPurpose) -> u32 {
        self.purposes.get(&purpose).map_or(0, |p| p.min_decrypt)
    }

    /// Every version of `purpose` still held (not destroyed), whatever its
    /// state, oldest first.
    pub fn held_versions(&self, purpose: KeyPurpose) -> Vec<u32> {
        self.purposes
            .get(&purpose)
            .map(|p| p.versions.keys().copied().collect())
            .unwrap_or_default()
    }

    /// A held version for re-keying only (rewrap, re-fingerprint): retired
    /// versions and versions below the minimum decryption version still
    /// unwrap a DEK here, so that records can be moved off them; destroyed
    /// versions are gone. Card data opened this way never leaves the vault.
    fn entry_for_rekey(&self, purpose: KeyPurpose, version: u32) -> Result<&Entry, CryptoError> {
        self.purposes
            .get(&purpose)
            .and_then(|p| p.versions.get(&version))
            .ok_or(CryptoError::UnknownKeyVersion {
                purpose: purpose.as_str(),
                version,
            })
    }

    /// The AEAD key of `purpose` at `version` for re-keying: retired
    /// versions and versions below the minimum decryption version still
    /// work here (records are moved off them); destroyed ones do not.
    pub fn aead_for_rekey(
        &self,
        purpose: KeyPurpose,
        version: u32,
    ) -> Result<&AeadKey, CryptoError> {
        self.entry_for_rekey(purpose, version)?
            .aead
            .as_ref()
            .ok_or(CryptoError::Library)
    }

    fn entry(&self, purpose: KeyPurpose, version: u32) -> Result<&Entry, CryptoError> {
        let pk = self
            .purposes
            .get(&purpose)
            .ok_or(CryptoError::UnknownKeyVersion {
                purpose: purpose.as_str(),
                version,
            })?;
        if version < pk.min_decrypt {
            return Err(CryptoError::KeyVersionRetired {
                purpose: purpose.as_str(),
                version,
            });
        }
        let e = pk
            .versions
            .get(&version)
            .ok_or(CryptoError::UnknownKeyVersion {
                purpose: purpose.as_str(),
                version,
            })?;
        if matches!(e.state, KeyState::Retired | KeyState::Destroyed) {
            return Err(CryptoError::KeyVersionRetired {
                purpose: purpose.as_str(),
                version,
            });
        }
        Ok(e)
    }

    /// The active audit-signing key pair.
    pub fn audit_signer(&self) -> Result<&Ed25519KeyPair, CryptoError> {
        let v = self.active_version(KeyPurpose::AuditSigning)?;
        self.entry(KeyPurpose::AuditSigning, v)?
            .ed25519
            .as_ref()
            .ok_or(CryptoError::Library)
    }

    /// The AEAD key for `purpose` (data or cvc) at `version`.
    pub fn aead(&self, purpose: KeyPurpose, version: u32) -> Result<&AeadKey, CryptoError> {
        self.entry(purpose, version)?
            .aead
            .as_ref()
            .ok_or(CryptoError::Library)
    }

    /// HMAC-SHA256 of `parts` (length-prefixed, so part boundaries are bound)
    /// under `purpose`'s key at `version`.
    pub fn hmac(
        &self,
        purpose: KeyPurpose,
        version: u32,
        parts: &[&[u8]],
    ) -> Result<[u8; 32], CryptoError> {
        let key = self
            .entry(purpose, version)?
            .hmac
            .as_ref()
            .ok_or(CryptoError::Library)?;
        let mut ctx = hmac::Context::with_key(key);
        for p in parts {
            ctx.update(&(p.len() as u64).to_be_bytes());
            ctx.update(p);
        }
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Keyed PAN fingerprint for `tenant` under the fingerprint key `version`.
    pub fn fingerprint(
        &self,
        version: u32,
        tenant: &str,
        pan_digits: &str,
    ) -> Result<[u8; 32], CryptoError> {
        self.hmac(
            KeyPurpose::Fingerprint,
            version,
            &[b"pan-fingerprint", tenant.as_bytes(), pan_digits.as_bytes()],
        )
    }
}

/// The key ring a running vault uses, replaceable while it runs (after a
/// rotation, another process's included). Readers take a cheap snapshot.
#[derive(Debug)]
pub struct SharedRing {
    current: std::sync::RwLock<std::sync::Arc<KeyRing>>,
}

impl SharedRing {
    pub fn new(ring: KeyRing) -> SharedRing {
        SharedRing {
            current: std::sync::RwLock::new(std::sync::Arc::new(ring)),
        }
    }

    /// The current ring. Operations hold the snapshot for their duration.
    pub fn get(&self) -> std::sync::Arc<KeyRing> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replace the ring; operations already running keep their snapshot.
    pub fn set(&self, ring: KeyRing) {
        let new = std::sync::Arc::new(ring);
        match self.current.write() {
            Ok(mut g) => *g = new,
            Err(p) => *p.into_inner() = new,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::root::FileRootKey;

    fn ring() -> (tempfile::TempDir, FileRootKey, Vec<WrappedKey>) {
        let dir = tempfile::tempdir().unwrap();
        let root = FileRootKey::create(&dir.path().join("root.key")).unwrap();
        let keys = KeyRing::generate_initial(&root, 0).unwrap();
        (dir, root, keys)
    }

    #[test]
    fn load_and_use() {
        let (_d, root, keys) = ring();
        let ring = KeyRing::load(&root, &keys, &HashMap::new()).unwrap();
        assert_eq!(ring.active_version(KeyPurpose::Data).unwrap(), 1);
        let a = ring.fingerprint(1, "t", "4111111111111111").unwrap();
        let b = ring.fingerprint(1, "t", "4111111111111111").unwrap();
        let c = ring.fingerprint(1, "u", "4111111111111111").unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c, "fingerprints are per tenant");
        assert!(ring.aead(KeyPurpose::Data, 2).is_err());
    }

    #[test]
    fn substituted_kek_is_refused() {
        let (_d, root, mut keys) = ring();
        // Put the cvc key's wrapped bytes in the data key's place.
        let cvc = keys
            .iter()
            .find(|k| k.purpose == KeyPurpose::Cvc)
            .unwrap()
            .wrapped
            .clone();
        keys.iter_mut()
            .find(|k| k.purpose == KeyPurpose::Data)
            .unwrap()
            .wrapped = cvc;
        assert!(matches!(
            KeyRing::load(&root, &keys, &HashMap::new()),
            Err(CryptoError::Decrypt)
        ));
    }

    #[test]
    fn min_decryption_version() {
        let (_d, root, mut keys) = ring();
        keys.push(KeyRing::generate_version(&root, KeyPurpose::Data, 2, 0).unwrap());
        let min = HashMap::from([(KeyPurpose::Data, 2)]);
        let ring = KeyRing::load(&root, &keys, &min).unwrap();
        assert_eq!(ring.active_version(KeyPurpose::Data).unwrap(), 2);
        assert!(matches!(
            ring.aead(KeyPurpose::Data, 1),
            Err(CryptoError::KeyVersionRetired { .. })
        ));
        assert!(ring.aead(KeyPurpose::Data, 2).is_ok());
        // Re-keying may still use the old version, so records can move off it.
        assert!(ring.aead_for_rekey(KeyPurpose::Data, 1).is_ok());
        assert_eq!(ring.min_decryption_version(KeyPurpose::Data), 2);
        assert_eq!(ring.held_versions(KeyPurpose::Data), vec![1, 2]);
    }

    #[test]
    fn destroyed_version_is_gone_even_for_rekey() {
        let (_d, root, mut keys) = ring();
        let mut v2 = KeyRing::generate_version(&root, KeyPurpose::Data, 2, 0).unwrap();
        v2.state = KeyState::Destroyed;
        v2.wrapped.clear();
        keys.push(v2);
        let ring = KeyRing::load(&root, &keys, &HashMap::new()).unwrap();
        assert!(ring.aead_for_rekey(KeyPurpose::Data, 2).is_err());
        assert_eq!(ring.active_version(KeyPurpose::Data).unwrap(), 1);
    }
}
