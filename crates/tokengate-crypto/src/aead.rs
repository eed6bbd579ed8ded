//! AES-256-GCM with a random nonce. Wire format: `nonce(12) || ciphertext || tag(16)`.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

use crate::{CryptoError, random};

/// Bytes the format adds to the plaintext.
pub const OVERHEAD: usize = NONCE_LEN + 16;

/// A ready AES-256-GCM key (key schedule done once).
pub struct AeadKey(LessSafeKey);

impl std::fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AeadKey([REDACTED])")
    }
}

impl AeadKey {
    pub fn new(key: &[u8; 32]) -> Result<AeadKey, CryptoError> {
        let unbound = UnboundKey::new(&AES_256_GCM, key).map_err(|_| CryptoError::Library)?;
        Ok(AeadKey(LessSafeKey::new(unbound)))
    }

    /// Encrypt `plaintext`, binding `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let nonce_bytes: [u8; NONCE_LEN] = random::bytes()?;
        let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(plaintext);
        let (head, body) = out.split_at_mut(NONCE_LEN);
        let _ = head;
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(aad),
                body,
            )
            .map_err(|_| CryptoError::Library)?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypt what [`seal`](Self::seal) produced with the same `aad`.
    /// The returned buffer holds plaintext: callers wrap it in a zeroizing type.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < OVERHEAD {
            return Err(CryptoError::Malformed);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Malformed)?;
        let mut buf = body.to_vec();
        let plain_len = self
            .0
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .map_err(|_| CryptoError::Decrypt)?
            .len();
        buf.truncate(plain_len);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let k = AeadKey::new(&[7u8; 32]).unwrap();
        let sealed = k.seal(b"aad", b"secret").unwrap();
        assert_eq!(k.open(b"aad", &sealed).unwrap(), b"secret");
        assert!(matches!(
            k.open(b"other", &sealed),
            Err(CryptoError::Decrypt)
        ));
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert!(k.open(b"aad", &t).is_err(), "flip at {i} not detected");
        }
        let other = AeadKey::new(&[8u8; 32]).unwrap();
        assert!(other.open(b"aad", &sealed).is_err());
        assert!(matches!(
            k.open(b"aad", &sealed[..10]),
            Err(CryptoError::Malformed)
        ));
    }

    #[test]
    fn nonces_differ() {
        let k = AeadKey::new(&[7u8; 32]).unwrap();
        assert_ne!(k.seal(b"", b"x").unwrap(), k.seal(b"", b"x").unwrap());
    }
}
