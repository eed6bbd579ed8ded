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

/// A digit run found in text: byte range and its digits.
struct Run {
    start: usize,
    end: usize,
    digits: Vec<u8>,
}

fn runs(text: &str) -> impl Iterator<Item = Run> + '_ {
    let bytes = text.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < bytes.len() {
            if !bytes[i].is_ascii_digit() {
                i += 1;
                continue;
            }
            let start = i;
            let mut digits = Vec::with_capacity(24);
            let mut end = i;
            while i < bytes.len() {
                let b = bytes[i];
                if b.is_ascii_digit() {
                    digits.push(b);
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
            if digits.len() >= MIN_DIGITS {
                return Some(Run { start, end, digits });
            }
        }
        None
    })
}

fn suspicious(digits: &[u8]) -> bool {
    digits.len() > MAX_DIGITS || luhn::is_valid(digits)
}

/// True when `text` holds something that could be a card number.
pub fn contains_pan_like(text: &str) -> bool {
    runs(text).any(|r| suspicious(&r.digits))
}

/// `text` with every possible card number masked (all digits but the last
/// four replaced by `*`; separators kept). Borrowed when nothing matched.
pub fn redact_pans(text: &str) -> Cow<'_, str> {
    let mut out: Option<String> = None;
    let mut copied = 0;
    for run in runs(text) {
        if !suspicious(&run.digits) {
            continue;
        }
        let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
        o.push_str(&text[copied..run.start]);
        let keep_from = run.digits.len().saturating_sub(4);
        let mut seen = 0;
        for b in text[run.start..run.end].bytes() {
            if b.is_ascii_digit() {
                o.push(if seen < keep_from { '*' } else { b as char });
                seen += 1;
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
        assert_eq!(redact_pans("pan=4111111111111111;"), "pan=************1111;");
        assert_eq!(redact_pans("4111 1111 1111 1111 x"), "**** **** **** 1111 x");
        assert_eq!(redact_pans("a 3782-822463-10005"), "a ****-******-*0005");
        assert_eq!(redact_pans("unknown field `5555555555554444`"), "unknown field `************4444`");
    }

    #[test]
    fn leaves_ordinary_numbers() {
        let s = "order 1234567812345678 at 2026-11-22 12:00, id 42";
        assert_eq!(redact_pans(s), s);
        assert!(matches!(redact_pans(s), Cow::Borrowed(_)));
        assert!(!contains_pan_like(s));
    }

    #[test]
    fn masks_long_runs_that_could_hide_a_pan() {
        let s = "x411111111111111100000y";
        assert!(contains_pan_like(s));
        assert!(!redact_pans(s).contains("4111111111111111"));
    }
}
