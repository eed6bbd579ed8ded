//! Tokens: the surrogate values that stand for a PAN.
//!
//! Two formats:
//! - `opaque`: `tok_` + 40 base32 characters = a 48-bit millisecond
//!   timestamp followed by 152 random bits. The time prefix makes new tokens
//!   sort after old ones, so index inserts append instead of scattering
//!   across the B-tree (the same reason UUIDv7 exists); it reveals only when
//!   the token was created, which the metadata shows anyway.
//! - `bin6_last4`: as long as the PAN, keeps its first six and last four
//!   digits, random digits between, and a check digit that fails Luhn on
//!   purpose so that a token can never be mistaken for (or charged as) a card.

use std::fmt;

use crate::luhn;
use crate::pan::Pan;

/// Which kind of token to issue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum TokenFormat {
    #[default]
    Opaque,
    Bin6Last4,
}

impl TokenFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenFormat::Opaque => "opaque",
            TokenFormat::Bin6Last4 => "bin6_last4",
        }
    }

    pub fn from_name(s: &str) -> Option<TokenFormat> {
        match s {
            "opaque" => Some(TokenFormat::Opaque),
            "bin6_last4" => Some(TokenFormat::Bin6Last4),
            _ => None,
        }
    }
}

/// Random bytes an opaque token needs (152 bits).
pub const OPAQUE_RANDOM_BYTES: usize = 19;
const OPAQUE_PREFIX: &str = "tok_";
/// Characters after the prefix: (6 time bytes + 19 random bytes) × 8 / 5.
const OPAQUE_CHARS: usize = 40;
/// Base32 in ASCII order, so that string order equals numeric order.
const BASE32_ORDERED: &[u8; 32] = b"234567abcdefghijklmnopqrstuvwxyz";

/// A syntactically valid token. It is not secret: it may appear in logs,
/// audit records and URLs. Invariant: never a Luhn-valid digit string.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Token(String);

/// The string is not a token tokengate could have issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a valid token")]
pub struct TokenParseError;

impl Token {
    /// Build an opaque token from the creation time (Unix ms) and 19 random bytes.
    pub fn opaque(time_ms: u64, random: &[u8; OPAQUE_RANDOM_BYTES]) -> Token {
        let mut s = String::with_capacity(OPAQUE_PREFIX.len() + OPAQUE_CHARS);
        s.push_str(OPAQUE_PREFIX);
        // 200 bits = 40 groups of 5 bits.
        let time = time_ms.to_be_bytes();
        let mut acc: u64 = 0;
        let mut bits = 0;
        for &b in time[2..].iter().chain(random.iter()) {
            acc = (acc << 8) | u64::from(b);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                s.push(BASE32_ORDERED[((acc >> bits) & 31) as usize] as char);
            }
        }
        Token(s)
    }

    /// Build a BIN6+last4 token for `pan`. `random` supplies one byte per
    /// middle digit (at least `pan.len() - 10` bytes); bytes are reduced mod
    /// 10 (the small bias is irrelevant: uniqueness is enforced by the store).
    pub fn bin6_last4(pan: &Pan, random: &[u8]) -> Token {
        let middle = pan.len() - 10;
        let mut s = String::with_capacity(pan.len());
        s.push_str(pan.bin6());
        for i in 0..middle {
            let b = random.get(i).copied().unwrap_or(0);
            s.push((b'0' + b % 10) as char);
        }
        s.push_str(pan.last4());
        if luhn::is_valid(s.as_bytes()) {
            // Changing one digit always changes the Luhn sum, so bumping the
            // last random digit makes the token fail the check.
            let idx = 6 + middle - 1;
            let mut bytes = s.into_bytes();
            bytes[idx] = b'0' + (bytes[idx] - b'0' + 1) % 10;
            s = bytes.into_iter().map(char::from).collect();
        }
        Token(s)
    }

    /// Parse a token received from a caller.
    pub fn parse(s: &str) -> Result<Token, TokenParseError> {
        if let Some(rest) = s.strip_prefix(OPAQUE_PREFIX) {
            if rest.len() == OPAQUE_CHARS && rest.bytes().all(|b| BASE32_ORDERED.contains(&b)) {
                return Ok(Token(s.to_owned()));
            }
            return Err(TokenParseError);
        }
        let b = s.as_bytes();
        if (Pan::MIN_LEN..=Pan::MAX_LEN).contains(&b.len())
            && b.iter().all(u8::is_ascii_digit)
            && !luhn::is_valid(b)
        {
            return Ok(Token(s.to_owned()));
        }
        Err(TokenParseError)
    }

    pub fn format(&self) -> TokenFormat {
        if self.0.starts_with(OPAQUE_PREFIX) {
            TokenFormat::Opaque
        } else {
            TokenFormat::Bin6Last4
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opaque_round_trip() {
        let t = Token::opaque(1_800_000_000_000, &[0xA5; OPAQUE_RANDOM_BYTES]);
        assert_eq!(t.as_str().len(), 44);
        assert_eq!(Token::parse(t.as_str()), Ok(t.clone()));
        assert_eq!(t.format(), TokenFormat::Opaque);
        assert!(Token::parse("tok_short").is_err());
        assert!(Token::parse("tok_ABCDEFGHIJKLMNOPQRSTUVWXYZ234567ABCDEF").is_err());
    }

    #[test]
    fn opaque_tokens_sort_by_creation_time() {
        let mut prev = Token::opaque(0, &[0xFF; OPAQUE_RANDOM_BYTES]);
        for ms in [
            1u64,
            999,
            1_000,
            1_763_800_000_000,
            1_763_800_000_001,
            (1 << 48) - 1,
        ] {
            let t = Token::opaque(ms, &[0; OPAQUE_RANDOM_BYTES]);
            assert!(t.as_str() > prev.as_str(), "{t} !> {prev}");
            prev = Token::opaque(ms, &[0xFF; OPAQUE_RANDOM_BYTES]);
        }
    }

    #[test]
    fn opaque_tokens_differ_in_their_random_part() {
        let a = Token::opaque(5, &[1; OPAQUE_RANDOM_BYTES]);
        let b = Token::opaque(5, &[2; OPAQUE_RANDOM_BYTES]);
        assert_ne!(a, b);
    }

    #[test]
    fn bin6_last4_keeps_shape_and_fails_luhn() {
        let pan = Pan::parse("4111111111111111").unwrap();
        for seed in 0u8..=255 {
            let random = [seed, seed.wrapping_mul(7), seed.wrapping_add(3), 9, seed, 1];
            let t = Token::bin6_last4(&pan, &random);
            let s = t.as_str();
            assert_eq!(s.len(), 16);
            assert!(s.starts_with("411111") && s.ends_with("1111"));
            assert!(!luhn::is_valid(s.as_bytes()), "{s} passes Luhn");
            assert_eq!(Token::parse(s), Ok(t.clone()));
            assert_eq!(t.format(), TokenFormat::Bin6Last4);
        }
    }

    #[test]
    fn a_real_pan_is_not_a_token() {
        assert!(Token::parse("4111111111111111").is_err());
    }
}
