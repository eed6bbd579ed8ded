//! A small PEM (RFC 7468) reader that remembers where each block starts, so
//! that errors can say "block 2 (CERTIFICATE) starting at line 14".
//!
//! Text outside blocks is ignored, as RFC 7468 allows. Decoded bytes are held
//! in [`Zeroizing`] buffers because a block may be a private key.

use zeroize::Zeroizing;

use crate::error::{CertError, PemInput, PemProblem};

/// One decoded PEM block.
pub(crate) struct PemBlock {
    /// 1-based index of the block in its input.
    pub(crate) index: usize,
    /// The label of the BEGIN line, e.g. `CERTIFICATE`.
    pub(crate) label: String,
    /// 1-based line number of the BEGIN line.
    pub(crate) line: usize,
    /// The decoded DER bytes. Invariant: non-empty.
    pub(crate) der: Zeroizing<Vec<u8>>,
}

impl PemBlock {
    /// An error about this block.
    pub(crate) fn error(&self, input: PemInput, problem: PemProblem) -> CertError {
        CertError::Pem {
            input,
            block: self.index,
            label: self.label.clone(),
            line: self.line,
            problem,
        }
    }
}

fn boundary<'a>(line: &'a [u8], kind: &str) -> Option<&'a str> {
    let text = std::str::from_utf8(line).ok()?;
    let rest = text.strip_prefix("-----")?.strip_prefix(kind)?;
    let rest = rest.strip_prefix(' ')?;
    rest.strip_suffix("-----")
}

fn is_base64_line(line: &[u8]) -> bool {
    line.iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
}

struct Open {
    index: usize,
    label: String,
    line: usize,
    body: Zeroizing<Vec<u8>>,
}

impl Open {
    fn error(&self, input: PemInput, problem: PemProblem) -> CertError {
        CertError::Pem {
            input,
            block: self.index,
            label: self.label.clone(),
            line: self.line,
            problem,
        }
    }

    fn finish(self, input: PemInput) -> Result<PemBlock, CertError> {
        if self.body.is_empty() {
            return Err(self.error(input, PemProblem::Empty));
        }
        let der = data_encoding::BASE64
            .decode(&self.body)
            .map(Zeroizing::new)
            .map_err(|_| self.error(input, PemProblem::InvalidBase64Body))?;
        if der.is_empty() {
            return Err(self.error(input, PemProblem::Empty));
        }
        Ok(PemBlock {
            index: self.index,
            label: self.label,
            line: self.line,
            der,
        })
    }
}

/// Splits `input` into decoded PEM blocks, in order.
///
/// Fails on the first damaged block: one without an END line, with a
/// mismatched END line, or with a body that is not base64.
pub(crate) fn parse(input: &[u8], which: PemInput) -> Result<Vec<PemBlock>, CertError> {
    let mut blocks = Vec::new();
    let mut open: Option<Open> = None;
    for (n, raw) in input.split(|&b| b == b'\n').enumerate() {
        let line_no = n + 1;
        let line = raw.trim_ascii();
        if let Some(current) = open.as_mut() {
            if let Some(label) = boundary(line, "END") {
                if label != current.label {
                    return Err(current.error(
                        which,
                        PemProblem::MismatchedEnd {
                            found: label.to_owned(),
                        },
                    ));
                }
                if let Some(done) = open.take() {
                    blocks.push(done.finish(which)?);
                }
            } else if boundary(line, "BEGIN").is_some() {
                return Err(current.error(which, PemProblem::MissingEnd));
            } else if line.is_empty() {
                // Blank lines inside a body are tolerated.
            } else if is_base64_line(line) {
                current.body.extend_from_slice(line);
            } else if line.starts_with(b"Proc-Type:") && line.ends_with(b"ENCRYPTED") {
                return Err(current.error(which, PemProblem::EncryptedKey));
            } else {
                return Err(current.error(which, PemProblem::InvalidBase64 { line: line_no }));
            }
        } else if let Some(label) = boundary(line, "BEGIN") {
            open = Some(Open {
                index: blocks.len() + 1,
                label: label.to_owned(),
                line: line_no,
                body: Zeroizing::new(Vec::new()),
            });
        }
    }
    if let Some(current) = open {
        return Err(current.error(which, PemProblem::MissingEnd));
    }
    Ok(blocks)
}

/// Encodes a certificate chain as PEM (`CERTIFICATE` blocks, 64-column
/// base64), in the order given. For public certificates only.
pub fn chain_to_pem(chain: &[rustls::pki_types::CertificateDer<'_>]) -> String {
    let mut out = String::new();
    for cert in chain {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = data_encoding::BASE64.encode(cert.as_ref());
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

/// Decodes what [`chain_to_pem`] wrote (any `CERTIFICATE` blocks, in order).
///
/// # Errors
/// A [`CertError::Pem`] naming the damaged block, or
/// [`CertError::NoPemBlock`] when there is no certificate.
pub fn chain_from_pem(
    input: &str,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, CertError> {
    let which = PemInput::Certificates;
    let chain: Vec<_> = parse(input.as_bytes(), which)?
        .into_iter()
        .filter(|b| b.label == "CERTIFICATE")
        .map(|b| rustls::pki_types::CertificateDer::from(b.der.to_vec()))
        .collect();
    if chain.is_empty() {
        return Err(CertError::NoPemBlock {
            input: which,
            expected: "CERTIFICATE",
        });
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_blocks_with_line_numbers_and_ignores_text_between() {
        let pem = b"hello\n-----BEGIN A-----\nAAEC\n-----END A-----\n\nnote\r\n-----BEGIN B-----\r\nAw==\r\n-----END B-----\r\n";
        let blocks = parse(pem, PemInput::Certificates).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!((blocks[0].index, blocks[0].line), (1, 2));
        assert_eq!(blocks[0].label, "A");
        assert_eq!(&blocks[0].der[..], &[0, 1, 2]);
        assert_eq!((blocks[1].index, blocks[1].line), (2, 7));
        assert_eq!(&blocks[1].der[..], &[3]);
    }

    #[test]
    fn truncated_block_names_block_and_line() {
        let pem = b"-----BEGIN A-----\nAAEC\n-----END A-----\n-----BEGIN B-----\nAAEC\n";
        let err = parse(pem, PemInput::Certificates).err().unwrap();
        assert!(matches!(
            err,
            CertError::Pem {
                block: 2,
                line: 4,
                problem: PemProblem::MissingEnd,
                ..
            }
        ));
        assert!(
            err.to_string().contains("block 2 (B) starting at line 4"),
            "{err}"
        );
    }

    #[test]
    fn begin_inside_a_block_means_the_first_is_truncated() {
        let pem = b"-----BEGIN A-----\nAAEC\n-----BEGIN B-----\nAAEC\n-----END B-----\n";
        let err = parse(pem, PemInput::Certificates).err().unwrap();
        assert!(matches!(
            err,
            CertError::Pem {
                block: 1,
                problem: PemProblem::MissingEnd,
                ..
            }
        ));
    }

    #[test]
    fn garbage_line_is_reported_with_its_number() {
        let pem = b"-----BEGIN A-----\nAAEC\n-----END A-----\n-----BEGIN A-----\nAAEC\nnot base64!\n-----END A-----\n";
        let err = parse(pem, PemInput::Certificates).err().unwrap();
        assert!(matches!(
            err,
            CertError::Pem {
                block: 2,
                line: 4,
                problem: PemProblem::InvalidBase64 { line: 6 },
                ..
            }
        ));
    }

    #[test]
    fn mismatched_end_and_bad_padding_and_empty() {
        let err = parse(
            b"-----BEGIN A-----\nAAEC\n-----END B-----\n",
            PemInput::Certificates,
        )
        .err()
        .unwrap();
        assert!(matches!(
            err,
            CertError::Pem {
                problem: PemProblem::MismatchedEnd { .. },
                ..
            }
        ));
        let err = parse(
            b"-----BEGIN A-----\nAAE\n-----END A-----\n",
            PemInput::Certificates,
        )
        .err()
        .unwrap();
        assert!(matches!(
            err,
            CertError::Pem {
                problem: PemProblem::InvalidBase64Body,
                ..
            }
        ));
        let err = parse(
            b"-----BEGIN A-----\n-----END A-----\n",
            PemInput::Certificates,
        )
        .err()
        .unwrap();
        assert!(matches!(
            err,
            CertError::Pem {
                problem: PemProblem::Empty,
                ..
            }
        ));
    }

    #[test]
    fn legacy_encrypted_key_is_recognised() {
        let pem = b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAEC\n-----END RSA PRIVATE KEY-----\n";
        let err = parse(pem, PemInput::PrivateKey).err().unwrap();
        assert!(matches!(
            err,
            CertError::Pem {
                problem: PemProblem::EncryptedKey,
                ..
            }
        ));
    }

    #[test]
    fn chain_pem_round_trip() {
        let chain = vec![
            rustls::pki_types::CertificateDer::from(vec![7_u8; 100]),
            rustls::pki_types::CertificateDer::from(vec![1_u8, 2, 3]),
        ];
        let pem = chain_to_pem(&chain);
        assert!(pem.lines().all(|l| l.len() <= 64));
        assert_eq!(chain_from_pem(&pem).unwrap(), chain);
        assert!(matches!(
            chain_from_pem(""),
            Err(CertError::NoPemBlock { .. })
        ));
    }
}
