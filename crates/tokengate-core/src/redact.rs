//! Last-line defence against card numbers in text we emit.
//!
//! [`redact_pans`] masks every digit run (digits with optional single spaces
//! or dashes between them) that could be a card number: 12–19 digits passing
//! Luhn, or any run longer than 19 digits (which could hide one). It is applied
//! to every log line and every error message, so that even a bug that formats
//! user input cannot carry a PAN out. It over-masks by design.

use std::borrow::Cow;

use crate::luhn;

/// Minimum digits in a run that we consider.
const MIN_DIGITS: usize = 12;
const MAX_DIGITS: usize = 19;

/// A digit run found in text: byte range, its digits, and where each group
/// of digits (between separators) starts in `digits`.
struct Run {
    start: usize,
    end: usize,
    digits: Vec<u8>,
    group_starts: Vec<usize>,
}

/// The index of the first ASCII digit at or after `i` (`bytes.len()` if
/// none). Digit-free stretches, most of a typical text, are skipped 16 bytes
/// at a time with a test the compiler turns into vector instructions.
fn next_digit(bytes: &[u8], mut i: usize) -> usize {
    while let Some(chunk) = bytes
        .get(i..i.saturating_add(16))
        .and_then(|c| <&[u8; 16]>::try_from(c).ok())
    {
        if chunk.iter().fold(false, |any, b| any | b.is_ascii_digit()) {
            break;
        }
        i += 16;
    }
    while i < bytes.len() && !bytes[i].is_ascii_digit() {
        i += 1;
    }
    i
}

fn runs(text: &str) -> impl Iterator<Item = Run> + '_ {
    let bytes = text.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        loop {
            i = next_digit(bytes, i);
            if i >= bytes.len() {
                break;
            }
            // Measure the run first: most digit runs (dates, ids, hex) are
            // shorter than a card number and need no buffers at all.
            let start = i;
            let mut count = 0;
            let mut end = i;
            while i < bytes.len() {
                let b = bytes[i];
                if b.is_ascii_digit() {
                    count += 1;
                    i += 1;
                    end = i;
                } else if (b == b' ' || b == b'-')
                    && i + 1 < bytes.len()
                    && bytes[i + 1].is_ascii_digit()
                {
                    i += 1;
                } else {
                    break;
                }
            }
            i = end.max(i);
            if count >= MIN_DIGITS {
                // Inside the run every non-digit is a single separator
                // followed by a digit: it starts a new group.
                let mut digits = Vec::with_capacity(count);
                let mut group_starts = vec![0];
                for &b in &bytes[start..end] {
                    if b.is_ascii_digit() {
                        digits.push(b);
                    } else {
                        group_starts.push(digits.len());
                    }
                }
                return Some(Run {
                    start,
                    end,
                    digits,
                    group_starts,
                });
            }
        }
        None
    })
}

/// Which digits of `run` must be masked: every group-aligned window of
/// 12–19 digits that passes Luhn, and every unseparated stretch longer than
/// 19 digits (it could hide a card number at any offset).
fn suspicious_digits(run: &Run) -> Option<Vec<bool>> {
    let n = run.digits.len();
    let mut ends: Vec<usize> = run.group_starts[1..].to_vec();
    ends.push(n);
    let mut mask: Option<Vec<bool>> = None;
    for (gi, &s) in run.group_starts.iter().enumerate() {
        let group_end = ends[gi];
        if group_end - s > MAX_DIGITS {
            let m = mask.get_or_insert_with(|| vec![false; n]);
            m[s..group_end].iter_mut().for_each(|x| *x = true);
        }
        for &e in &ends[gi..] {
            let len = e - s;
            if len > MAX_DIGITS {
                break;
            }
            // No card number starts with 0 (and a leading 0 never changes
            // the Luhn sum, so it would only widen the mask).
            if len >= MIN_DIGITS && run.digits[s] != b'0' && luhn::is_valid(&run.digits[s..e]) {
                let m = mask.get_or_insert_with(|| vec![false; n]);
                m[s..e].iter_mut().for_each(|x| *x = true);
            }
        }
    }
    mask
}

/// True when `text` holds something that could be a card number.
pub fn contains_pan_like(text: &str) -> bool {
    runs(text).any(|r| suspicious_digits(&r).is_some())
}

/// `text` with every possible card number masked (all digits of a suspicious
/// window but its last four replaced by `*`; separators kept). Borrowed when
/// nothing matched.
pub fn redact_pans(text: &str) -> Cow<'_, str> {
    let mut out: Option<String> = None;
    let mut copied = 0;
    for run in runs(text) {
        let Some(mut mask) = suspicious_digits(&run) else {
            continue;
        };
        // Keep the last four digits of each masked stretch visible.
        let mut i = mask.len();
        while i > 0 {
            if mask[i - 1] {
                let stop = i.saturating_sub(4);
                let mut j = i;
                while j > stop && mask[j - 1] {
                    mask[j - 1] = false;
                    j -= 1;
                }
                while j > 0 && mask[j - 1] {
                    j -= 1;
                }
                i = j;
            } else {
                i -= 1;
            }
        }
        let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
        o.push_str(&text[copied..run.start]);
        let mut d = 0;
        for b in text[run.start..run.end].bytes() {
            if b.is_ascii_digit() {
                o.push(if mask[d] { '*' } else { b as char });
                d += 1;
            } else {
                o.push(b as char);
            }
        }
        copied = run.end;
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut o) => {
            o.push_str(&text[copied..]);
            Cow::Owned(o)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_card_numbers_in_any_grouping() {
        assert_eq!(
            redact_pans("pan=4111111111111111;"),
            "pan=************1111;"
        );
        assert_eq!(
            redact_pans("4111 1111 1111 1111 x"),
            "**** **** **** 1111 x"
        );
        assert_eq!(redact_pans("a 3782-822463-10005"), "a ****-******-*0005");
        assert_eq!(
            redact_pans("unknown field `5555555555554444`"),
            "unknown field `************4444`"
        );
    }

    #[test]
    fn finds_a_card_number_at_every_offset_in_long_text() {
        // The digit skip works 16 bytes at a time: a number must be found
        // wherever it starts relative to those chunks.
        for k in 0..48 {
            let text = format!("{}4111111111111111{}", "x".repeat(k), "y".repeat(k % 19));
            assert!(contains_pan_like(&text), "offset {k}");
            let masked = redact_pans(&text);
            assert_eq!(
                masked,
                format!("{}************1111{}", "x".repeat(k), "y".repeat(k % 19)),
                "offset {k}"
            );
            // A lone digit just before a chunk boundary, then the number.
            let text = format!("{}7{}4111111111111111", "x".repeat(k), "z".repeat(16));
            assert!(contains_pan_like(&text), "offset {k}");
        }
        assert_eq!(next_digit(b"", 0), 0);
        assert_eq!(next_digit(b"abc", 0), 3);
        assert_eq!(next_digit(&[b'a'; 40], 0), 40);
        let mut b = [b'a'; 40];
        b[33] = b'5';
        assert_eq!(next_digit(&b, 0), 33);
        assert_eq!(next_digit(&b, 34), 40);
    }

    #[test]
    fn leaves_ordinary_numbers() {
        let s = "order 1234567812345678 at 2026-11-22 12:00, id 42";
        assert_eq!(redact_pans(s), s);
        assert!(matches!(redact_pans(s), Cow::Borrowed(_)));
        assert!(!contains_pan_like(s));
    }

    #[test]
    fn finds_pans_next_to_other_numbers() {
        assert_eq!(
            redact_pans("curl/8 4111111111111111"),
            "curl/8 ************1111"
        );
        assert_eq!(
            redact_pans("4111111111111111 2026"),
            "************1111 2026"
        );
        assert_eq!(
            redact_pans("1 4111 1111 1111 1111 99"),
            "1 **** **** **** 1111 99"
        );
    }

    #[test]
    fn masks_long_runs_that_could_hide_a_pan() {
        let s = "x411111111111111100000y";
        assert!(contains_pan_like(s));
        assert!(!redact_pans(s).contains("4111111111111111"));
    }
}
