//! Cryptography for tokengate. Nothing here knows about HTTP or SQL.
//!
//! Key hierarchy (see docs/key-hierarchy.md):
//!
//! ```text
//! root key (provider: file | custodians | pkcs11)   never in the database
//!   └─ wraps KEKs, one set of versions per purpose, stored wrapped in the DB
//!        data        ─ wraps each record's DEK (AES-256-GCM)
//!        cvc         ─ encrypts CVCs directly (short-lived)
//!        fingerprint ─ HMAC-SHA256 key for PAN fingerprints (PCI DSS 3.5.1.1)
//!        api_key     ─ HMAC-SHA256 key for stored API-key hashes
//!        audit       ─ HMAC-SHA256 key for sensitive audit fields
//!        audit_signing ─ Ed25519 seed that signs the audit chain head
//!        tls_key     ─ wraps the DEK of each TLS private key (certificate store)
//! ```
//!
//! All AEAD is AES-256-GCM from aws-lc-rs with a random 96-bit nonce and
//! associated data that binds the ciphertext to its tenant, token, purpose and
//! key version, so a ciphertext copied to another row does not decrypt.

#![forbid(unsafe_code)]

pub mod aead;
pub mod custodians;
pub mod envelope;
pub mod keyring;
#[cfg(feature = "pkcs11")]
pub mod pkcs11;
pub mod random;
pub mod root;
pub mod secret;
pub mod share_keys;
pub mod tls_key;

pub use envelope::{Envelope, RecordAad};
pub use keyring::{KeyPurpose, KeyRing, KeyState, SharedRing, WrappedKey};
pub use root::{FileRootKey, RootKeyProvider};
pub use secret::{Key256, SecretBytes};
pub use tls_key::{PrivateKeyAad, open_private_key, seal_private_key};

/// Errors from this crate. None carries key material or plaintext.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// Authentication failed: wrong key, wrong AAD, or tampered bytes.
    #[error("decryption failed: the ciphertext, its key or its binding does not match")]
    Decrypt,
    #[error("no {purpose} key with version {version} in the key ring")]
    UnknownKeyVersion { purpose: &'static str, version: u32 },
    #[error("{purpose} key version {version} is below the minimum decryption version")]
    KeyVersionRetired { purpose: &'static str, version: u32 },
    #[error("the key ring has no active {0} key")]
    NoActiveKey(&'static str),
    #[error("malformed ciphertext")]
    Malformed,
    #[error("root key file {path}: {reason}")]
    RootKeyFile { path: String, reason: String },
    /// The HSM (pkcs11 provider) refused or failed; never carries the PIN.
    #[error("root key HSM: {0}")]
    Hsm(String),
    #[error("crypto library failure")]
    Library,
}
