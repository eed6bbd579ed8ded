//! The primary account number.
//!
//! A [`Pan`] exists only after the number passed every check: digits (with
//! optional single spaces or dashes between them), a known brand, a length
//! that brand issues, and the Luhn digit. It zeroizes its memory on drop and
//! cannot be formatted: `Debug` shows BIN6 and last4 only.

use std::fmt;

use zeroize::Zeroizing;

use crate::brand::{self, Brand};
use crate::card::CardError;
use crate::luhn;

/// A validated card number. Cloning copies the zeroizing buffer.
#[derive(Clone)]
pub struct Pan {
    /// Invariant: 12..=19 ASCII digits, Luhn-valid, length allowed for `brand`.
    digits: Zeroizing<String>,
    brand: Brand,
}

impl Pan {
    /// Shortest and longest PAN length ISO/IEC 7812 allows.
    pub const MIN_LEN: usize = 12;
    pub const MAX_LEN: usize = 19;

    /// Parse a number as a person types it: digits, optionally grouped with
    /// single spaces or dashes. The error never contains the input.
    pub fn parse(input: &str) -> Result<Pan, CardError> {
        let trimmed = input.trim();
        let mut digits = Zeroizing::new(String::with_capacity(Self::MAX_LEN));
        let mut prev_sep = true; // a separator may not lead
        for c in trimmed.chars() {
            match c {
                '0'..='9' => {
                    if digits.len() == Self::MAX_LEN {
                        return Err(CardError::InvalidLength);
                    }
                    digits.push(c);
                    prev_sep = false;
                }
                ' ' | '-' if !prev_sep => prev_sep = true,
                _ => return Err(CardError::InvalidNumberFormat),
            }
        }
        if prev_sep && !digits.is_empty() {
            // trailing separator after trim can only be a dash
            return Err(CardError::InvalidNumberFormat);
        }
        if digits.len() < Self::MIN_LEN {
            return Err(CardError::InvalidLength);
        }
        let bytes = digits.as_bytes();
        let brand = brand::detect(bytes).ok_or(CardError::UnknownBrand)?;
        if !brand.lengths().contains(&bytes.len()) {
            return Err(CardError::InvalidLength);
        }
        if !luhn::is_valid(bytes) {
            return Err(CardError::InvalidLuhn);
        }
        Ok(Pan { digits, brand })
    }

    pub fn brand(&self) -> Brand {
        self.brand
    }

    /// The first six digits (the BIN/IIN), which PCI DSS allows to be shown.
    pub fn bin6(&self) -> &str {
        &self.digits[..6]
    }

    /// The last four digits, which PCI DSS allows to be shown.
    pub fn last4(&self) -> &str {
        &self.digits[self.digits.len() - 4..]
    }

    pub fn len(&self) -> usize {
        self.digits.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// BIN6, asterisks, last4: the most PCI DSS 3.4.1 lets anyone see.
    pub fn masked(&self) -> String {
        let mut s = String::with_capacity(self.len());
        s.push_str(self.bin6());
        s.extend(std::iter::repeat_n('*', self.len() - 10));
        s.push_str(self.last4());
        s
    }

    /// The digits themselves. Call only to encrypt, fingerprint, or hand the
    /// number to a caller holding the `reveal` role.
    pub fn expose_digits(&self) -> &str {
        &self.digits
    }
}

impl fmt::Debug for Pan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pan({})", self.masked())
    }
}

impl PartialEq for Pan {
    fn eq(&self, other: &Self) -> bool {
        // Not used on secret-dependent paths that need constant time; the
        // vault compares keyed fingerprints instead.
        *self.digits == *other.digits
    }
}
impl Eq for Pan {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_grouped_input() {
        for s in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            " 378282246310005 ",
        ] {
            assert!(Pan::parse(s).is_ok(), "{s}");
        }
    }

    #[test]
    fn rejects_with_the_right_error() {
        assert_eq!(Pan::parse("4111111111111112"), Err(CardError::InvalidLuhn));
        assert_eq!(Pan::parse("41111111"), Err(CardError::InvalidLength));
        assert_eq!(
            Pan::parse("41111111111111111111"),
            Err(CardError::InvalidLength)
        );
        // Amex with 16 digits
        assert_eq!(
            Pan::parse("3782822463100051"),
            Err(CardError::InvalidLength)
        );
        assert_eq!(Pan::parse("1234567812345670"), Err(CardError::UnknownBrand));
        assert_eq!(
            Pan::parse("4111x111111111111"),
            Err(CardError::InvalidNumberFormat)
        );
        assert_eq!(
            Pan::parse("4111  1111 1111 1111"),
            Err(CardError::InvalidNumberFormat)
        );
        assert_eq!(
            Pan::parse("-4111111111111111"),
            Err(CardError::InvalidNumberFormat)
        );
        assert_eq!(Pan::parse(""), Err(CardError::InvalidLength));
    }

    #[test]
    fn debug_and_mask_hide_the_middle() {
        let pan = Pan::parse("4111111111111111").unwrap();
        assert_eq!(pan.masked(), "411111******1111");
        let dbg = format!("{pan:?}");
        assert!(!dbg.contains("4111111111111111"));
        assert_eq!(pan.bin6(), "411111");
        assert_eq!(pan.last4(), "1111");
        assert_eq!(pan.brand(), Brand::Visa);
    }
}
