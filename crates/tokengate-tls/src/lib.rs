//! Certificate parsing and checks for tokengate's TLS edge.
//!
//! This crate owns what happens to a certificate and its private key before
//! tokengate will serve them: reading PEM bundles and keys (errors name the
//! block and line), the checks of `certs add` / `certs update` (key matches
//! the leaf, validity at a given time, chain completed from the bundle and
//! ordered leaf → root, trust against caller-given roots, domains covered by
//! SANs with wildcards, RSA ≥ 2048 bits, no SHA-1/MD5 signatures), the
//! details `certs info` shows ([`CertInfo`]), and memorable generated names.
//!
//! It also owns the SNI resolver ([`SniResolver`]: exact domain, then
//! wildcard, then a default or refusal) and the swappable handle rustls holds
//! for hot reload ([`ReloadableResolver`]), plus the domain names certificates
//! are mapped to ([`DomainName`]) and the PEM form chains are stored in.
//!
//! It does no I/O: bytes and the current time come in, results go out. The
//! certificate store itself (database rows, private keys sealed under the
//! vault's key ring) is in `tokengate-vault` and reload polling in
//! `tokengate-server`, unlike the starting layout in ARCHITECTURE.md: both
//! need the store and the key ring, which this crate must not depend on to
//! stay free of I/O. ACME (network I/O) is in `tokengate-server` for the
//! same reason.
//!
//! Private keys are held in [`PrivateKey`], which zeroizes its bytes on drop
//! and never prints them. Signatures are verified with aws-lc-rs (through
//! x509-parser and rustls); `ring` is not used.
//!
//! ```
//! use tokengate_tls::{check_certificate, CheckOptions, TrustRoots};
//! # fn run(bundle: &[u8], key: &[u8]) -> Result<(), tokengate_tls::CertError> {
//! let roots = TrustRoots::new();
//! let options = CheckOptions::new(time::OffsetDateTime::now_utc(), &roots).domain("shop.example.com");
//! let checked = check_certificate(bundle, key, &options)?;
//! println!("{} expires {}", checked.info.subject, checked.info.not_after);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod check;
mod error;
mod key;
mod names;
mod pem;
mod resolver;
mod roots;
mod san;

pub use check::{
    CertInfo, CheckOptions, CheckedCertificate, KeyType, check_certificate,
    check_certificate_with_key,
};
pub use error::{CertError, PemInput, PemProblem};
pub use key::{KeyFormat, PrivateKey};
pub use names::memorable_name;
pub use pem::{chain_from_pem, chain_to_pem};
pub use resolver::{ACME_TLS_ALPN, ReloadableResolver, ResolverError, SniResolver};
pub use roots::TrustRoots;
pub use san::{DomainName, SubjectAltName, covers, covers_domain};
