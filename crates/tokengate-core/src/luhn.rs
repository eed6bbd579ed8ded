//! The Luhn (mod 10) check digit used by every payment card number.

/// True when the ASCII digit string passes the Luhn check.
///
/// Invariant: `digits` holds only `b'0'..=b'9'`; other bytes give an
/// unspecified (but non-panicking) result.
#[inline]
pub fn is_valid(digits: &[u8]) -> bool {
    checksum(digits) == 0
}

/// The Luhn sum mod 10 over the whole string (0 means valid).
#[inline]
pub fn checksum(digits: &[u8]) -> u32 {
    // Doubling table for the digits in "every second from the right" place.
    const DOUBLED: [u32; 10] = [0, 2, 4, 6, 8, 1, 3, 5, 7, 9];
    let mut sum = 0u32;
    for (i, &b) in digits.iter().rev().enumerate() {
        let d = u32::from(b.wrapping_sub(b'0')) % 10;
        sum += if i % 2 == 1 { DOUBLED[d as usize] } else { d };
    }
    sum % 10
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_numbers() {
        assert!(is_valid(b"4111111111111111"));
        assert!(is_valid(b"378282246310005"));
        assert!(is_valid(b"5555555555554444"));
        assert!(!is_valid(b"4111111111111112"));
        assert!(!is_valid(b"1234567812345678"));
    }

    #[test]
    fn every_single_digit_change_is_caught() {
        let good = b"4539578763621486".to_vec();
        assert!(is_valid(&good));
        for pos in 0..good.len() {
            for d in b'0'..=b'9' {
                if d == good[pos] {
                    continue;
                }
                let mut bad = good.clone();
                bad[pos] = d;
                assert!(!is_valid(&bad), "change at {pos} to {d} not caught");
            }
        }
    }
}
