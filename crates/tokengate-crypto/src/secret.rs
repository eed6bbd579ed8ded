//! Secret containers: zeroized on drop, never printed.

use std::fmt;

use zeroize::{Zeroize, Zeroizing};

/// A 256-bit symmetric key.
#[derive(Clone, Zeroize)]
#[zeroize(drop)]
pub struct Key256([u8; 32]);

impl Key256 {
    pub fn from_bytes(bytes: [u8; 32]) -> Key256 {
        Key256(bytes)
    }

    /// A fresh key from the system CSPRNG.
    pub fn generate() -> Result<Key256, crate::CryptoError> {
        let mut k = [0u8; 32];
        crate::random::fill(&mut k)?;
        Ok(Key256(k))
    }

    pub fn try_from_slice(s: &[u8]) -> Option<Key256> {
        let arr: [u8; 32] = s.try_into().ok()?;
        Some(Key256(arr))
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Key256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key256([REDACTED])")
    }
}

/// Arbitrary secret bytes (decrypted plaintext, API-key secrets).
#[derive(Clone, Default)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    pub fn new(v: Vec<u8>) -> SecretBytes {
        SecretBytes(Zeroizing::new(v))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn into_inner(self) -> Zeroizing<Vec<u8>> {
        self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBytes([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_bytes() {
        let k = Key256::from_bytes([0x41; 32]);
        assert_eq!(format!("{k:?}"), "Key256([REDACTED])");
        let s = SecretBytes::new(b"hunter2".to_vec());
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
