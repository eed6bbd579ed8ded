//! Card brands, recognised from the IIN (leading digits) and the length.
//!
//! The table follows the networks' published IIN ranges. The order matters:
//! the more specific range comes first (Discover's 6011 before RuPay's 60).

use std::fmt;

/// A card network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Brand {
    Visa,
    Mastercard,
    Amex,
    Discover,
    Jcb,
    DinersClub,
    UnionPay,
    Maestro,
    Mir,
    RuPay,
}

impl Brand {
    /// Stable lower-case name used in the API and in audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Brand::Visa => "visa",
            Brand::Mastercard => "mastercard",
            Brand::Amex => "amex",
            Brand::Discover => "discover",
            Brand::Jcb => "jcb",
            Brand::DinersClub => "diners",
            Brand::UnionPay => "unionpay",
            Brand::Maestro => "maestro",
            Brand::Mir => "mir",
            Brand::RuPay => "rupay",
        }
    }

    /// Parse the stable name back (used when reading stored records).
    pub fn from_name(s: &str) -> Option<Brand> {
        BRANDS.iter().copied().find(|b| b.as_str() == s)
    }

    /// Card number lengths this brand issues.
    pub fn lengths(self) -> &'static [usize] {
        match self {
            Brand::Visa => &[13, 16, 19],
            Brand::Mastercard => &[16],
            Brand::Amex => &[15],
            Brand::Discover | Brand::Jcb | Brand::UnionPay | Brand::Mir => &[16, 17, 18, 19],
            Brand::DinersClub => &[14, 15, 16, 17, 18, 19],
            Brand::Maestro => &[12, 13, 14, 15, 16, 17, 18, 19],
            Brand::RuPay => &[16],
        }
    }
}

impl fmt::Display for Brand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const BRANDS: [Brand; 10] = [
    Brand::Visa,
    Brand::Mastercard,
    Brand::Amex,
    Brand::Discover,
    Brand::Jcb,
    Brand::DinersClub,
    Brand::UnionPay,
    Brand::Maestro,
    Brand::Mir,
    Brand::RuPay,
];

/// One IIN range: numbers whose first `width` digits lie in `lo..=hi`.
struct Range {
    width: u32,
    lo: u32,
    hi: u32,
    brand: Brand,
}

const fn r(width: u32, lo: u32, hi: u32, brand: Brand) -> Range {
    Range {
        width,
        lo,
        hi,
        brand,
    }
}

/// Most specific first.
const RANGES: &[Range] = &[
    // Discover, including the China UnionPay co-branded 622126–622925.
    r(4, 6011, 6011, Brand::Discover),
    r(6, 622126, 622925, Brand::Discover),
    r(3, 644, 649, Brand::Discover),
    r(2, 65, 65, Brand::Discover),
    // Maestro ranges that sit inside others.
    r(4, 5018, 5018, Brand::Maestro),
    r(4, 5020, 5020, Brand::Maestro),
    r(4, 5038, 5038, Brand::Maestro),
    r(4, 5893, 5893, Brand::Maestro),
    r(4, 6304, 6304, Brand::Maestro),
    r(4, 6759, 6759, Brand::Maestro),
    r(4, 6761, 6763, Brand::Maestro),
    // Mir 2200–2204 before Mastercard's 2-series.
    r(4, 2200, 2204, Brand::Mir),
    r(4, 2221, 2720, Brand::Mastercard),
    r(2, 51, 55, Brand::Mastercard),
    r(2, 34, 34, Brand::Amex),
    r(2, 37, 37, Brand::Amex),
    r(4, 3528, 3589, Brand::Jcb),
    r(3, 300, 305, Brand::DinersClub),
    r(2, 36, 36, Brand::DinersClub),
    r(2, 38, 39, Brand::DinersClub),
    r(2, 62, 62, Brand::UnionPay),
    r(2, 81, 82, Brand::RuPay),
    r(3, 508, 508, Brand::RuPay),
    r(2, 60, 60, Brand::RuPay),
    r(1, 4, 4, Brand::Visa),
];

/// The brand whose IIN range contains this number's prefix, if any.
///
/// Invariant: `digits` is ASCII digits only.
pub fn detect(digits: &[u8]) -> Option<Brand> {
    RANGES.iter().find_map(|range| {
        let width = range.width as usize;
        if digits.len() < width {
            return None;
        }
        let prefix = digits[..width].iter().fold(0u32, |acc, &b| {
            acc * 10 + u32::from(b.wrapping_sub(b'0') % 10)
        });
        (range.lo..=range.hi)
            .contains(&prefix)
            .then_some(range.brand)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_each_brand() {
        let cases: &[(&[u8], Brand)] = &[
            (b"4111111111111111", Brand::Visa),
            (b"5555555555554444", Brand::Mastercard),
            (b"2223003122003222", Brand::Mastercard),
            (b"378282246310005", Brand::Amex),
            (b"6011111111111117", Brand::Discover),
            (b"6221260000000000", Brand::Discover),
            (b"3530111333300000", Brand::Jcb),
            (b"36227206271667", Brand::DinersClub),
            (b"6200000000000005", Brand::UnionPay),
            (b"6759649826438453", Brand::Maestro),
            (b"2200000000000004", Brand::Mir),
        ];
        for (digits, brand) in cases {
            assert_eq!(detect(digits), Some(*brand));
        }
    }

    #[test]
    fn unknown_prefixes() {
        assert_eq!(detect(b"1234567812345670"), None);
        assert_eq!(detect(b"9999999999999995"), None);
        assert_eq!(detect(b"7000000000000000"), None);
    }

    #[test]
    fn names_round_trip() {
        for b in BRANDS {
            assert_eq!(Brand::from_name(b.as_str()), Some(b));
        }
    }
}
