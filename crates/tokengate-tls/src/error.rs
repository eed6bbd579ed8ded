//! The one error type of this crate. Every check has its own variant; every
//! message names the certificate (its subject CN) and says what to do.
//!
//! Invariant: no variant holds private key bytes, and no message prints them.

use std::fmt;

/// Which input a PEM error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PemInput {
    /// The certificate bundle (leaf, intermediates, maybe a root).
    Certificates,
    /// The private key file.
    PrivateKey,
    /// A bundle of trust anchors (root certificates).
    TrustRoots,
}

impl fmt::Display for PemInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Certificates => "certificate bundle",
            Self::PrivateKey => "private key",
            Self::TrustRoots => "trust roots",
        })
    }
}

/// What went wrong inside one PEM block.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PemProblem {
    /// The file ends before the block's `-----END …-----` line (truncated).
    MissingEnd,
    /// The END line names a different label than the BEGIN line.
    MismatchedEnd {
        /// Label on the END line.
        found: String,
    },
    /// A line of the body is not valid base64.
    InvalidBase64 {
        /// 1-based line number of the bad line.
        line: usize,
    },
    /// The body as a whole does not decode as base64 (bad padding or length).
    InvalidBase64Body,
    /// The block has no content.
    Empty,
    /// The block decodes but is not an X.509 certificate.
    NotACertificate {
        /// The parser's reason.
        reason: String,
    },
    /// A block of this label does not belong in this input.
    UnexpectedLabel {
        /// What to do about it.
        hint: &'static str,
    },
    /// The private key is encrypted with a passphrase.
    EncryptedKey,
    /// The key decodes but is not a usable RSA, ECDSA P-256/P-384 or Ed25519 key.
    UnsupportedKey,
}

impl fmt::Display for PemProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingEnd => f.write_str(
                "no matching -----END----- line: the file is truncated; copy the whole block",
            ),
            Self::MismatchedEnd { found } => write!(
                f,
                "the END line says {found:?}, which does not match the BEGIN line; the file is damaged"
            ),
            Self::InvalidBase64 { line } => write!(
                f,
                "line {line} is not base64; the block is damaged, export it again"
            ),
            Self::InvalidBase64Body => f.write_str(
                "the base64 body does not decode (wrong length or padding); the block is damaged, export it again",
            ),
            Self::Empty => f.write_str("the block is empty"),
            Self::NotACertificate { reason } => {
                write!(f, "not a valid X.509 certificate ({reason})")
            }
            Self::UnexpectedLabel { hint } => f.write_str(hint),
            Self::EncryptedKey => f.write_str(
                "the private key is encrypted; decrypt it first (openssl pkey -in KEY -out PLAIN.key)",
            ),
            Self::UnsupportedKey => f.write_str(
                "not a usable private key; supported are RSA (PKCS#1 or PKCS#8), ECDSA P-256/P-384 (SEC1 or PKCS#8) and Ed25519 (PKCS#8)",
            ),
        }
    }
}

/// Everything that can make a certificate and key unusable.
///
/// A chain that does not verify against the trust roots is *not* an error:
/// it is reported as `trusted: false` in [`CertInfo`](crate::CertInfo).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// The input holds no PEM block of the expected kind.
    #[error("{input}: no PEM block found; expected -----BEGIN {expected}-----")]
    NoPemBlock {
        /// Which input.
        input: PemInput,
        /// The label that was expected.
        expected: &'static str,
    },

    /// One PEM block does not parse.
    #[error("{input}: block {block} ({label}) starting at line {line}: {problem}")]
    Pem {
        /// Which input.
        input: PemInput,
        /// 1-based index of the block in the input.
        block: usize,
        /// The label on its BEGIN line.
        label: String,
        /// 1-based line of its BEGIN line.
        line: usize,
        /// What is wrong with it.
        problem: PemProblem,
    },

    /// The key file holds more than one private key.
    #[error(
        "private key: {count} private keys found; pass exactly one, the key of the leaf certificate"
    )]
    MultipleKeys {
        /// How many key blocks were found.
        count: usize,
    },

    /// The certificate's public key is of a type tokengate does not serve.
    #[error(
        "certificate \"{cn}\": unsupported public key type {algorithm}; use RSA (2048 bits or more), ECDSA P-256/P-384 or Ed25519"
    )]
    UnsupportedKeyType {
        /// Subject CN (or subject) of the certificate.
        cn: String,
        /// The key algorithm as found.
        algorithm: String,
    },

    /// An RSA key in the chain is shorter than 2048 bits.
    #[error(
        "certificate \"{cn}\": RSA key of {bits} bits is too weak; issue a new certificate with an RSA key of at least 2048 bits (or ECDSA P-256)"
    )]
    WeakRsaKey {
        /// Subject CN (or subject) of the certificate.
        cn: String,
        /// Modulus length in bits.
        bits: usize,
    },

    /// The private key does not belong to the leaf certificate.
    #[error(
        "certificate \"{cn}\": the private key does not match this certificate; pass the key that was generated together with its signing request"
    )]
    KeyMismatch {
        /// Subject CN (or subject) of the leaf.
        cn: String,
    },

    /// The leaf's validity period ended before `now`.
    #[error(
        "certificate \"{cn}\": expired at {not_after}; renew it with your certificate authority"
    )]
    Expired {
        /// Subject CN (or subject) of the leaf.
        cn: String,
        /// End of validity, RFC 3339.
        not_after: String,
    },

    /// The leaf's validity period starts after `now`.
    #[error(
        "certificate \"{cn}\": not valid before {not_before}; wait until then or check this machine's clock"
    )]
    NotYetValid {
        /// Subject CN (or subject) of the leaf.
        cn: String,
        /// Start of validity, RFC 3339.
        not_before: String,
    },

    /// The leaf's issuer is neither in the bundle nor a trust root.
    #[error(
        "certificate \"{cn}\": chain incomplete, its issuer \"{issuer}\" is missing; append the intermediate certificate(s) from your certificate authority to the bundle (for a private CA without intermediates, append its root)"
    )]
    ChainIncomplete {
        /// Subject CN (or subject) of the leaf.
        cn: String,
        /// The missing issuer's distinguished name.
        issuer: String,
    },

    /// A certificate in the chain (other than a self-signed root) carries a
    /// signature made with a broken hash function.
    #[error(
        "certificate \"{cn}\": signed with {algorithm}, which is broken; ask your certificate authority to reissue it with SHA-256 or better"
    )]
    WeakSignature {
        /// Subject CN (or subject) of the certificate.
        cn: String,
        /// Name of the signature algorithm.
        algorithm: &'static str,
    },

    /// The leaf does not cover a requested domain.
    #[error(
        "certificate \"{cn}\": does not cover {domain:?} (its names: {}); use a certificate whose subject alternative names include it", sans_list(.sans)
    )]
    DomainNotCovered {
        /// Subject CN (or subject) of the leaf.
        cn: String,
        /// The domain (or IP address) asked for.
        domain: String,
        /// The leaf's subject alternative names.
        sans: Vec<String>,
    },

    /// A domain passed by the caller is not a valid host name or IP address.
    #[error("{domain:?} is not a valid domain name or IP address")]
    InvalidDomain {
        /// The domain as given.
        domain: String,
    },

    /// An IP address was given where a domain (a name clients send in SNI)
    /// is needed.
    #[error(
        "{domain:?} is an IP address; clients never send IP addresses in SNI, so only host names can be mapped (connections by IP address get the default certificate)"
    )]
    DomainIsIp {
        /// The address as given.
        domain: String,
    },
}

impl CertError {
    /// A stable snake_case code for this error, for scripts and the API.
    /// Codes never change meaning; new variants get new codes.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoPemBlock { .. } => "pem_missing",
            Self::Pem { problem, .. } => match problem {
                PemProblem::EncryptedKey => "key_encrypted",
                PemProblem::UnsupportedKey => "key_unsupported",
                PemProblem::NotACertificate { .. } => "cert_invalid",
                PemProblem::UnexpectedLabel { .. } => "pem_unexpected_block",
                _ => "pem_invalid",
            },
            Self::MultipleKeys { .. } => "key_multiple",
            Self::UnsupportedKeyType { .. } => "cert_key_type_unsupported",
            Self::WeakRsaKey { .. } => "rsa_key_too_weak",
            Self::KeyMismatch { .. } => "key_mismatch",
            Self::Expired { .. } => "cert_expired",
            Self::NotYetValid { .. } => "cert_not_yet_valid",
            Self::ChainIncomplete { .. } => "chain_incomplete",
            Self::WeakSignature { .. } => "weak_signature",
            Self::DomainNotCovered { .. } => "domain_not_covered",
            Self::InvalidDomain { .. } => "invalid_domain",
            Self::DomainIsIp { .. } => "domain_is_ip",
        }
    }
}

fn sans_list(sans: &[String]) -> String {
    if sans.is_empty() {
        "none".to_owned()
    } else {
        sans.join(", ")
    }
}
