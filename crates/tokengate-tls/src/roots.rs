//! Trust anchors the chain is verified against. The caller decides where
//! they come from (webpki-roots, the system store, a private CA).

use rustls::pki_types::TrustAnchor;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::{CertError, PemInput, PemProblem};
use crate::pem;

/// One anchor: a subject name and a public key, both as full DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Anchor {
    /// DER `Name` (with its SEQUENCE header).
    pub(crate) subject: Vec<u8>,
    /// DER `SubjectPublicKeyInfo` (with its SEQUENCE header).
    pub(crate) spki: Vec<u8>,
}

/// A set of trust anchors. Empty by default: nothing is trusted.
#[derive(Debug, Clone, Default)]
pub struct TrustRoots {
    pub(crate) anchors: Vec<Anchor>,
}

/// Wraps DER content octets in a SEQUENCE header.
fn der_sequence(content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = Vec::with_capacity(len + 6);
    out.push(0x30);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        let significant = &bytes[skip..];
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
    out.extend_from_slice(content);
    out
}

impl TrustRoots {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of anchors.
    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    /// Whether there are no anchors.
    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }

    /// Adds an anchor in the form webpki-roots and rustls use (subject and
    /// key as DER *content*, without their SEQUENCE headers).
    pub fn add_trust_anchor(&mut self, anchor: &TrustAnchor<'_>) {
        self.anchors.push(Anchor {
            subject: der_sequence(anchor.subject.as_ref()),
            spki: der_sequence(anchor.subject_public_key_info.as_ref()),
        });
    }

    /// Adds the subject and key of a DER certificate (for instance one from
    /// the system store).
    ///
    /// # Errors
    /// [`CertError::Pem`] (block 1) when `der` is not a certificate.
    pub fn add_der_certificate(&mut self, der: &[u8]) -> Result<(), CertError> {
        let cert = X509Certificate::from_der(der)
            .map(|(_, cert)| cert)
            .map_err(|e| CertError::Pem {
                input: PemInput::TrustRoots,
                block: 1,
                label: "CERTIFICATE".to_owned(),
                line: 1,
                problem: PemProblem::NotACertificate {
                    reason: e.to_string(),
                },
            })?;
        self.push_cert(&cert);
        Ok(())
    }

    /// Reads every `CERTIFICATE` block of a PEM bundle as an anchor.
    ///
    /// # Errors
    /// A [`CertError::Pem`] naming the block that does not parse, or
    /// [`CertError::NoPemBlock`] when there is none.
    pub fn from_pem(input: &[u8]) -> Result<Self, CertError> {
        let which = PemInput::TrustRoots;
        let mut roots = Self::new();
        for block in pem::parse(input, which)? {
            if block.label != "CERTIFICATE" {
                continue;
            }
            let cert = X509Certificate::from_der(&block.der)
                .map(|(_, cert)| cert)
                .map_err(|e| {
                    block.error(
                        which,
                        PemProblem::NotACertificate {
                            reason: e.to_string(),
                        },
                    )
                })?;
            roots.push_cert(&cert);
        }
        if roots.is_empty() {
            return Err(CertError::NoPemBlock {
                input: which,
                expected: "CERTIFICATE",
            });
        }
        Ok(roots)
    }

    pub(crate) fn push_cert(&mut self, cert: &X509Certificate<'_>) {
        self.anchors.push(Anchor {
            subject: cert.subject().as_raw().to_vec(),
            spki: cert.public_key().raw.to_vec(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::der_sequence;

    #[test]
    fn sequence_headers() {
        assert_eq!(der_sequence(&[1, 2]), vec![0x30, 2, 1, 2]);
        let long = vec![0_u8; 300];
        let wrapped = der_sequence(&long);
        assert_eq!(&wrapped[..4], &[0x30, 0x82, 0x01, 0x2c]);
        assert_eq!(wrapped.len(), 304);
        assert_eq!(&der_sequence(&[0; 200])[..3], &[0x30, 0x81, 200]);
    }
}
