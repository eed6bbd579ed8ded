//! CVC and expiry, and the error type for everything a card can get wrong.

use std::fmt;

use zeroize::Zeroizing;

use crate::brand::Brand;

/// What is wrong with card input. Messages name the field, never its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CardError {
    #[error("card number may contain only digits, with single spaces or dashes between groups")]
    InvalidNumberFormat,
    #[error("card number length is not one this card brand issues")]
    InvalidLength,
    #[error("card number fails the Luhn check digit; check for a typo")]
    InvalidLuhn,
    #[error("card number does not belong to a supported card brand")]
    UnknownBrand,
    #[error("exp_month must be 1-12 and exp_year a four-digit year")]
    InvalidExpiry,
    #[error("card has expired")]
    Expired,
    #[error("cvc must be 3 digits (4 for American Express)")]
    InvalidCvc,
}

impl CardError {
    /// The stable machine-readable error code for the API.
    pub fn code(self) -> &'static str {
        match self {
            CardError::InvalidNumberFormat => "invalid_number_format",
            CardError::InvalidLength => "invalid_card_length",
            CardError::InvalidLuhn => "invalid_luhn",
            CardError::UnknownBrand => "unknown_brand",
            CardError::InvalidExpiry => "invalid_expiry",
            CardError::Expired => "card_expired",
            CardError::InvalidCvc => "invalid_cvc",
        }
    }
}

/// A calendar month, used as "now" for expiry checks (the caller owns the clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct YearMonth {
    pub year: u16,
    pub month: u8,
}

/// A card expiry date. Valid through the last day of `month`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expiry {
    month: u8,
    year: u16,
}

impl Expiry {
    /// How far ahead an expiry date may lie before we call it a typo.
    pub const MAX_YEARS_AHEAD: u16 = 50;

    /// Validate month 1–12, a four-digit year (two digits mean 20xx), not
    /// expired as of `now`, and not absurdly far in the future.
    pub fn new(month: u32, year: u32, now: YearMonth) -> Result<Expiry, CardError> {
        if !(1..=12).contains(&month) {
            return Err(CardError::InvalidExpiry);
        }
        let year = match year {
            0..=99 => 2000 + year,
            1000..=9999 => year,
            _ => return Err(CardError::InvalidExpiry),
        };
        let year = u16::try_from(year).map_err(|_| CardError::InvalidExpiry)?;
        let exp = YearMonth {
            year,
            month: month as u8,
        };
        if exp < now {
            return Err(CardError::Expired);
        }
        if year > now.year.saturating_add(Self::MAX_YEARS_AHEAD) {
            return Err(CardError::InvalidExpiry);
        }
        Ok(Expiry {
            month: month as u8,
            year,
        })
    }

    /// Rebuild a stored expiry without the "not expired" check.
    pub fn from_stored(month: u8, year: u16) -> Expiry {
        Expiry { month, year }
    }

    pub fn month(self) -> u8 {
        self.month
    }

    pub fn year(self) -> u16 {
        self.year
    }
}

/// Card verification code (SAD under PCI DSS: never stored after use).
#[derive(Clone)]
pub struct Cvc {
    /// Invariant: 3 or 4 ASCII digits.
    digits: Zeroizing<String>,
}

impl Cvc {
    /// Parse a CVC for a card of `brand` (4 digits for Amex, 3 otherwise).
    pub fn parse(input: &str, brand: Brand) -> Result<Cvc, CardError> {
        let want = if brand == Brand::Amex { 4 } else { 3 };
        let s = input.trim();
        if s.len() != want || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CardError::InvalidCvc);
        }
        Ok(Cvc {
            digits: Zeroizing::new(s.to_owned()),
        })
    }

    /// Rebuild a CVC decrypted from the store (length already checked on write).
    pub fn from_decrypted(digits: Zeroizing<String>) -> Result<Cvc, CardError> {
        if !(3..=4).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CardError::InvalidCvc);
        }
        Ok(Cvc { digits })
    }

    pub fn expose_digits(&self) -> &str {
        &self.digits
    }
}

impl fmt::Debug for Cvc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cvc([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: YearMonth = YearMonth {
        year: 2026,
        month: 11,
    };

    #[test]
    fn expiry_rules() {
        assert!(
            Expiry::new(11, 2026, NOW).is_ok(),
            "valid through end of month"
        );
        assert_eq!(Expiry::new(10, 2026, NOW), Err(CardError::Expired));
        assert_eq!(Expiry::new(13, 2027, NOW), Err(CardError::InvalidExpiry));
        assert_eq!(Expiry::new(0, 2027, NOW), Err(CardError::InvalidExpiry));
        assert_eq!(Expiry::new(1, 2090, NOW), Err(CardError::InvalidExpiry));
        assert_eq!(Expiry::new(1, 123, NOW), Err(CardError::InvalidExpiry));
        assert_eq!(Expiry::new(1, 30, NOW).map(|e| e.year()), Ok(2030));
    }

    #[test]
    fn cvc_rules() {
        assert!(Cvc::parse("123", Brand::Visa).is_ok());
        assert_eq!(
            Cvc::parse("1234", Brand::Visa).err(),
            Some(CardError::InvalidCvc)
        );
        assert!(Cvc::parse("1234", Brand::Amex).is_ok());
        assert_eq!(
            Cvc::parse("12a", Brand::Visa).err(),
            Some(CardError::InvalidCvc)
        );
        assert_eq!(
            format!("{:?}", Cvc::parse("987", Brand::Visa).unwrap()),
            "Cvc([REDACTED])"
        );
    }
}
