//! The private key: read from PEM, held in a zeroizing buffer, never printed.

use std::fmt;

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};
use zeroize::Zeroizing;

use crate::error::{CertError, PemInput, PemProblem};
use crate::pem;

/// How the key's DER bytes are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyFormat {
    /// PKCS#8 (`-----BEGIN PRIVATE KEY-----`).
    Pkcs8,
    /// PKCS#1 RSA (`-----BEGIN RSA PRIVATE KEY-----`).
    Pkcs1,
    /// SEC1 EC (`-----BEGIN EC PRIVATE KEY-----`).
    Sec1,
}

impl KeyFormat {
    /// Stable lower-case name (`pkcs8`, `pkcs1`, `sec1`), for storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pkcs8 => "pkcs8",
            Self::Pkcs1 => "pkcs1",
            Self::Sec1 => "sec1",
        }
    }

    /// The format named by [`as_str`](Self::as_str).
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Pkcs8, Self::Pkcs1, Self::Sec1]
            .into_iter()
            .find(|f| f.as_str() == name)
    }
}

/// A private key in DER form.
///
/// Invariant: the bytes are wiped from memory when the value is dropped, and
/// `Debug` prints `[REDACTED]` instead of them.
pub struct PrivateKey {
    format: KeyFormat,
    der: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("format", &self.format)
            .field("der", &"[REDACTED]")
            .finish()
    }
}

impl PrivateKey {
    /// The encoding of the key.
    pub fn format(&self) -> KeyFormat {
        self.format
    }

    /// The key for rustls (borrowed; nothing is copied). Handle with care:
    /// this is the secret itself.
    pub fn secret_der(&self) -> PrivateKeyDer<'_> {
        match self.format {
            KeyFormat::Pkcs8 => PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(&self.der[..])),
            KeyFormat::Pkcs1 => PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(&self.der[..])),
            KeyFormat::Sec1 => PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(&self.der[..])),
        }
    }

    /// Reads exactly one private key from a PEM file. Blocks that are not
    /// keys (certificates, `EC PARAMETERS`) are skipped.
    pub fn from_pem(input: &[u8]) -> Result<Self, CertError> {
        let which = PemInput::PrivateKey;
        let mut found = Vec::new();
        for block in pem::parse(input, which)? {
            let format = match block.label.as_str() {
                "PRIVATE KEY" => KeyFormat::Pkcs8,
                "RSA PRIVATE KEY" => KeyFormat::Pkcs1,
                "EC PRIVATE KEY" => KeyFormat::Sec1,
                "ENCRYPTED PRIVATE KEY" => {
                    return Err(block.error(which, PemProblem::EncryptedKey));
                }
                _ => continue,
            };
            found.push((block, format));
        }
        let count = found.len();
        let mut found = found.into_iter();
        let Some((block, format)) = found.next() else {
            return Err(CertError::NoPemBlock {
                input: which,
                expected: "PRIVATE KEY",
            });
        };
        if count > 1 {
            return Err(CertError::MultipleKeys { count });
        }
        let key = Self {
            format,
            der: Zeroizing::new(block.der.to_vec()),
        };
        // Loading it once proves it is a key rustls can sign with.
        if key.public_key_spki().is_none() {
            return Err(block.error(which, PemProblem::UnsupportedKey));
        }
        Ok(key)
    }

    /// A key from DER bytes of a known encoding (for instance decrypted
    /// from the certificate store). `None` when rustls cannot load it.
    pub fn from_der(format: KeyFormat, der: Zeroizing<Vec<u8>>) -> Option<Self> {
        let key = Self { format, der };
        key.public_key_spki().map(|_| key)
    }

    /// The DER SubjectPublicKeyInfo of the key, or `None` when the key is
    /// not one rustls (aws-lc-rs) can load.
    pub(crate) fn public_key_spki(&self) -> Option<Vec<u8>> {
        let signer =
            rustls::crypto::aws_lc_rs::sign::any_supported_type(&self.secret_der()).ok()?;
        signer.public_key().map(|spki| spki.as_ref().to_vec())
    }
}
