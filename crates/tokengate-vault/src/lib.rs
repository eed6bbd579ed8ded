//! The vault: every card-data and access-control operation, independent of
//! transport. The HTTP server and the CLI are thin layers over [`Vault`].
//!
//! Invariants this crate keeps:
//! - a card-data operation returns success only after its audit record
//!   committed in the same transaction as its data change (fail closed);
//! - plaintext card data exists only in zeroizing buffers and in the value
//!   handed back to a caller holding the `reveal` role;
//! - every failed authentication or authorization is audited.

#![forbid(unsafe_code)]

pub mod access;
pub mod acme;
pub mod auditlog;
pub mod cards;
pub mod certs;
pub mod clock;
pub mod error;
pub mod init;
pub mod keys;
pub mod lockout;
mod open;
pub mod outbound_ca;
pub mod retention;
pub mod sweeper;
pub mod webhooks;

pub use access::{ApiKeyInfo, Caller, NewApiKey, RequestMeta, Role};
pub use acme::{AcmeOutcome, AcmeStatus, acme_cert_name, renewal_time};
pub use auditlog::{ConsistencyProof, InclusionProof, verify_store};
pub use cards::{CardInput, RevealedCard, TokenInfo, TokenizeOutcome, TokenizeRequest};
pub use certs::{
    CertActor, CertExpiry, CertSource, CertificateView, DomainView, LoadedResolver, NewCertificate,
    RemovedCertificate, load_trust_roots,
};
pub use error::VaultError;
pub use init::{InitOptions, InitOutput, init};
pub use keys::{
    CryptoperiodExceeded, KeyActor, KeyVersionInfo, RekeyJobStatus, RekeyOptions, RekeyReport,
    parse_purpose,
};
pub use lockout::LockoutPolicy;
pub use open::{AuditHmacField, DataDir, ShareSource, Vault, VaultConfig, is_fresh};
pub use tokengate_store::AuditQuery;
