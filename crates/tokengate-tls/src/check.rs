//! The checks run when a certificate is added or updated, and the details
//! shown afterwards.
//!
//! Order: parse the bundle → RSA key sizes → parse the key and match it to
//! the leaf → leaf validity at `now` → build the chain leaf → root from the
//! bundle (any order) → broken signature hashes → domains. The first failing
//! check is returned. Trust is not a check: it is the `trusted` flag.
//!
//! "Chain incomplete" means the leaf's issuer is neither in the bundle nor
//! among the trust roots: the classic missing intermediate. When the bundle
//! does hold an issuer of the leaf but the top of the chain is issued by an
//! unknown CA, that is not an error: a private or unlisted root cannot be
//! told apart from a missing second intermediate, and issue 3 allows chains
//! that do not reach the roots (`trusted: false`).
//!
//! Not checked (yet): validity of intermediates, name constraints, key usage
//! and extended key usage, revocation.

use std::fmt;
use std::net::IpAddr;

use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::error::{CertError, PemInput, PemProblem};
use crate::key::PrivateKey;
use crate::pem;
use crate::roots::TrustRoots;
use crate::san::{Host, SubjectAltName};

/// The public key type of a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyType {
    /// RSA with a modulus of this many bits.
    Rsa {
        /// Modulus length.
        bits: usize,
    },
    /// ECDSA on NIST P-256.
    EcdsaP256,
    /// ECDSA on NIST P-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rsa { bits } => write!(f, "RSA {bits}"),
            Self::EcdsaP256 => f.write_str("ECDSA P-256"),
            Self::EcdsaP384 => f.write_str("ECDSA P-384"),
            Self::Ed25519 => f.write_str("Ed25519"),
        }
    }
}

/// Details of a leaf certificate, as `certs info` shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertInfo {
    /// The subject's common names (usually one).
    pub common_names: Vec<String>,
    /// The subject distinguished name (`CN=…, O=…`).
    pub subject: String,
    /// The issuer distinguished name.
    pub issuer: String,
    /// Start of validity, RFC 3339.
    pub not_before: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
    /// Subject alternative names, in certificate order.
    pub sans: Vec<SubjectAltName>,
    /// Whether the chain verifies against the trust roots passed in.
    pub trusted: bool,
    /// Public key type.
    pub key_type: KeyType,
    /// Serial number, colon-separated lowercase hex.
    pub serial: String,
    /// SHA-256 of the DER certificate, colon-separated uppercase hex.
    pub sha256_fingerprint: String,
}

/// What the checks are run against.
#[derive(Debug, Clone)]
pub struct CheckOptions<'a> {
    now: OffsetDateTime,
    roots: &'a TrustRoots,
    domains: Vec<String>,
}

impl<'a> CheckOptions<'a> {
    /// Checks at time `now` against `roots`, with no domains to cover.
    pub fn new(now: OffsetDateTime, roots: &'a TrustRoots) -> Self {
        Self {
            now,
            roots,
            domains: Vec::new(),
        }
    }

    /// Also require that the leaf covers `domain`.
    #[must_use]
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        self.domains.push(domain.into());
        self
    }
}

/// A certificate and key that passed every check.
#[derive(Debug)]
#[non_exhaustive]
pub struct CheckedCertificate {
    /// Details of the leaf.
    pub info: CertInfo,
    /// The chain as it should be served: leaf first, then each issuer, up
    /// to (and including, when the bundle held it) the root. Certificates
    /// of the bundle that are not on this chain are left out.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key of the leaf.
    pub key: PrivateKey,
}

/// Signature algorithms whose hash is broken (SHA-1, MD5, MD2).
fn weak_signature(oid: &str) -> Option<&'static str> {
    match oid {
        "1.2.840.113549.1.1.5" | "1.3.14.3.2.29" => Some("sha1WithRSAEncryption (SHA-1)"),
        "1.2.840.10045.4.1" => Some("ecdsa-with-SHA1 (SHA-1)"),
        "1.2.840.10040.4.3" => Some("dsa-with-sha1 (SHA-1)"),
        "1.2.840.113549.1.1.4" => Some("md5WithRSAEncryption (MD5)"),
        "1.2.840.113549.1.1.2" => Some("md2WithRSAEncryption (MD2)"),
        _ => None,
    }
}

/// Bits in a big-endian unsigned integer, ignoring leading zeros.
fn bit_length(bytes: &[u8]) -> usize {
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    match bytes.get(skip) {
        Some(first) => (bytes.len() - skip - 1) * 8 + (8 - first.leading_zeros() as usize),
        None => 0,
    }
}

/// The name used for a certificate in messages: its first CN, or its
/// subject when it has none.
fn display_name(cert: &X509Certificate<'_>) -> String {
    common_names(cert)
        .into_iter()
        .next()
        .unwrap_or_else(|| cert.subject().to_string())
}

fn common_names(cert: &X509Certificate<'_>) -> Vec<String> {
    cert.subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect()
}

fn key_type(cert: &X509Certificate<'_>) -> Result<KeyType, CertError> {
    let spki = cert.public_key();
    let unsupported = || CertError::UnsupportedKeyType {
        cn: display_name(cert),
        algorithm: spki.algorithm.algorithm.to_id_string(),
    };
    match spki.algorithm.algorithm.to_id_string().as_str() {
        "1.2.840.113549.1.1.1" => match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => Ok(KeyType::Rsa {
                bits: bit_length(rsa.modulus),
            }),
            _ => Err(unsupported()),
        },
        "1.2.840.10045.2.1" => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| oid.to_id_string());
            match curve.as_deref() {
                Some("1.2.840.10045.3.1.7") => Ok(KeyType::EcdsaP256),
                Some("1.3.132.0.34") => Ok(KeyType::EcdsaP384),
                _ => Err(unsupported()),
            }
        }
        "1.3.101.112" => Ok(KeyType::Ed25519),
        _ => Err(unsupported()),
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

fn sans(cert: &X509Certificate<'_>) -> Vec<SubjectAltName> {
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    ext.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(SubjectAltName::Dns(dns.to_ascii_lowercase())),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes)
                    .ok()
                    .map(|b| SubjectAltName::Ip(IpAddr::from(b))),
                16 => <[u8; 16]>::try_from(*bytes)
                    .ok()
                    .map(|b| SubjectAltName::Ip(IpAddr::from(b))),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn hex_colons(bytes: &[u8]) -> String {
    data_encoding::HEXUPPER
        .encode(bytes)
        .as_bytes()
        .chunks(2)
        .filter_map(|pair| std::str::from_utf8(pair).ok())
        .collect::<Vec<_>>()
        .join(":")
}

fn is_self_issued(cert: &X509Certificate<'_>) -> bool {
    cert.subject().as_raw() == cert.issuer().as_raw()
}

/// Whether `issuer_spki` (DER) verifies the signature on `cert`.
fn signed_by(cert: &X509Certificate<'_>, issuer_spki: &SubjectPublicKeyInfo<'_>) -> bool {
    cert.verify_signature(Some(issuer_spki)).is_ok()
}

/// Whether a trust anchor issued `cert`, or `cert` is itself an anchor.
fn anchored(cert: &X509Certificate<'_>, roots: &TrustRoots) -> bool {
    roots.anchors.iter().any(|anchor| {
        if anchor.subject == cert.subject().as_raw() && anchor.spki == cert.public_key().raw {
            return true;
        }
        anchor.subject == cert.issuer().as_raw()
            && SubjectPublicKeyInfo::from_der(&anchor.spki)
                .map(|(_, spki)| signed_by(cert, &spki))
                .unwrap_or(false)
    })
}

/// Parses the certificate bundle into DER blocks (certificates only).
fn parse_bundle(input: &[u8]) -> Result<Vec<pem::PemBlock>, CertError> {
    let which = PemInput::Certificates;
    let blocks = pem::parse(input, which)?;
    if blocks.is_empty() {
        return Err(CertError::NoPemBlock {
            input: which,
            expected: "CERTIFICATE",
        });
    }
    for block in &blocks {
        if block.label != "CERTIFICATE" {
            let hint = if block.label.contains("PRIVATE KEY") {
                "a private key does not belong in the certificate bundle; pass it as the key file"
            } else {
                "only CERTIFICATE blocks belong in the certificate bundle"
            };
            return Err(block.error(which, PemProblem::UnexpectedLabel { hint }));
        }
    }
    Ok(blocks)
}

/// Picks the leaf: the first certificate that issued no other certificate
/// of the bundle (by name). Falls back to the first one.
fn leaf_index(certs: &[X509Certificate<'_>]) -> usize {
    (0..certs.len())
        .find(|&i| {
            !certs
                .iter()
                .enumerate()
                .any(|(j, other)| j != i && other.issuer().as_raw() == certs[i].subject().as_raw())
        })
        .unwrap_or(0)
}

/// Runs every check on a PEM certificate bundle (leaf, intermediates and
/// possibly the root, in any order) and a PEM private key.
///
/// # Errors
/// The first check that fails, as a [`CertError`] naming the certificate.
pub fn check_certificate(
    bundle_pem: &[u8],
    key_pem: &[u8],
    options: &CheckOptions<'_>,
) -> Result<CheckedCertificate, CertError> {
    check(bundle_pem, KeySource::Pem(key_pem), options)
}

/// Like [`check_certificate`], with a private key that was already loaded
/// (for instance the stored key of a certificate being renewed with the
/// same key).
///
/// # Errors
/// The first check that fails, as a [`CertError`] naming the certificate.
pub fn check_certificate_with_key(
    bundle_pem: &[u8],
    key: PrivateKey,
    options: &CheckOptions<'_>,
) -> Result<CheckedCertificate, CertError> {
    check(bundle_pem, KeySource::Loaded(key), options)
}

enum KeySource<'a> {
    Pem(&'a [u8]),
    Loaded(PrivateKey),
}

fn check(
    bundle_pem: &[u8],
    key: KeySource<'_>,
    options: &CheckOptions<'_>,
) -> Result<CheckedCertificate, CertError> {
    let blocks = parse_bundle(bundle_pem)?;
    let mut certs = Vec::with_capacity(blocks.len());
    for block in &blocks {
        let cert = X509Certificate::from_der(&block.der)
            .map(|(_, cert)| cert)
            .map_err(|e| {
                block.error(
                    PemInput::Certificates,
                    PemProblem::NotACertificate {
                        reason: e.to_string(),
                    },
                )
            })?;
        certs.push(cert);
    }

    // Key sizes first: aws-lc-rs refuses to load short RSA keys, and "too
    // weak" is the useful message.
    let mut key_types = Vec::with_capacity(certs.len());
    for cert in &certs {
        let kt = key_type(cert)?;
        if let KeyType::Rsa { bits } = kt {
            if bits < 2048 {
                return Err(CertError::WeakRsaKey {
                    cn: display_name(cert),
                    bits,
                });
            }
        }
        key_types.push(kt);
    }

    let leaf_at = leaf_index(&certs);
    let leaf = &certs[leaf_at];
    let leaf_name = display_name(leaf);

    let key = match key {
        KeySource::Pem(pem) => PrivateKey::from_pem(pem)?,
        KeySource::Loaded(key) => key,
    };
    let key_matches = key
        .public_key_spki()
        .and_then(|spki| {
            SubjectPublicKeyInfo::from_der(&spki).ok().map(|(_, spki)| {
                spki.algorithm.algorithm == leaf.public_key().algorithm.algorithm
                    && spki.subject_public_key.data == leaf.public_key().subject_public_key.data
            })
        })
        .unwrap_or(false);
    if !key_matches {
        return Err(CertError::KeyMismatch { cn: leaf_name });
    }

    let validity = leaf.validity();
    let not_before = validity.not_before.to_datetime();
    let not_after = validity.not_after.to_datetime();
    if options.now < not_before {
        return Err(CertError::NotYetValid {
            cn: leaf_name,
            not_before: rfc3339(not_before),
        });
    }
    if options.now > not_after {
        return Err(CertError::Expired {
            cn: leaf_name,
            not_after: rfc3339(not_after),
        });
    }

    // Chain: follow issuers through the bundle until a self-issued root or
    // a certificate a trust anchor issued.
    let mut order = vec![leaf_at];
    let mut used = vec![false; certs.len()];
    used[leaf_at] = true;
    while let Some(&current_at) = order.last() {
        let current = &certs[current_at];
        if is_self_issued(current) {
            break;
        }
        let issuer_at = (0..certs.len()).find(|&i| {
            !used[i]
                && certs[i].subject().as_raw() == current.issuer().as_raw()
                && signed_by(current, certs[i].public_key())
        });
        match issuer_at {
            Some(i) => {
                used[i] = true;
                order.push(i);
            }
            None if anchored(current, options.roots) => break,
            // An intermediate from the bundle whose issuer is unknown: it may
            // be a private root or one missing from the given roots, which
            // is allowed (`trusted: false`); the bundle is served as far as
            // it goes.
            None if order.len() > 1 => break,
            None => {
                return Err(CertError::ChainIncomplete {
                    cn: display_name(current),
                    issuer: current.issuer().to_string(),
                });
            }
        }
    }
    let trusted = order.iter().any(|&i| anchored(&certs[i], options.roots));

    // Broken hashes anywhere but on a self-signed root (whose signature
    // nobody relies on). A lone self-signed leaf is still a leaf.
    for (position, &i) in order.iter().enumerate() {
        let cert = &certs[i];
        let is_root = position > 0 && position + 1 == order.len() && is_self_issued(cert);
        if is_root {
            continue;
        }
        if let Some(algorithm) = weak_signature(&cert.signature_algorithm.algorithm.to_id_string())
        {
            return Err(CertError::WeakSignature {
                cn: display_name(cert),
                algorithm,
            });
        }
    }

    let leaf_sans = sans(leaf);
    for domain in &options.domains {
        let host = Host::parse(domain)?;
        if !leaf_sans.iter().any(|san| san.covers(&host)) {
            return Err(CertError::DomainNotCovered {
                cn: leaf_name,
                domain: domain.clone(),
                sans: leaf_sans.iter().map(ToString::to_string).collect(),
            });
        }
    }

    let fingerprint = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &blocks[leaf_at].der);
    let info = CertInfo {
        common_names: common_names(leaf),
        subject: leaf.subject().to_string(),
        issuer: leaf.issuer().to_string(),
        not_before: rfc3339(not_before),
        not_after: rfc3339(not_after),
        sans: leaf_sans,
        trusted,
        key_type: key_types[leaf_at],
        serial: leaf.raw_serial_as_string(),
        sha256_fingerprint: hex_colons(fingerprint.as_ref()),
    };
    let chain = order
        .iter()
        .map(|&i| CertificateDer::from(blocks[i].der.to_vec()))
        .collect();
    Ok(CheckedCertificate { info, chain, key })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_length_ignores_leading_zeros() {
        assert_eq!(bit_length(&[]), 0);
        assert_eq!(bit_length(&[0, 0]), 0);
        assert_eq!(bit_length(&[0, 0x80, 0]), 16);
        assert_eq!(bit_length(&[0x01, 0xff]), 9);
    }

    #[test]
    fn weak_signature_oids() {
        assert!(weak_signature("1.2.840.113549.1.1.5").is_some());
        assert!(weak_signature("1.2.840.113549.1.1.4").is_some());
        assert!(weak_signature("1.2.840.10045.4.1").is_some());
        assert!(weak_signature("1.2.840.113549.1.1.11").is_none());
        assert!(weak_signature("1.2.840.10045.4.3.2").is_none());
    }

    #[test]
    fn fingerprint_format() {
        assert_eq!(hex_colons(&[0xab, 0x01, 0xff]), "AB:01:FF");
    }
}
