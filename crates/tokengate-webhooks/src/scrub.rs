//! The PAN safety net for verified payloads: every JSON string, number and
//! object key that could be a card number is masked (all digits but the
//! last four replaced by `*`), so a raw PAN never reaches the app or NATS.
//! Fields configured for tokenization are taken out first by the caller
//! (see [`card_at`] and [`replace_at`]) and replaced by vault tokens.

use serde_json::Value;
use tokengate_core::{contains_pan_like, redact_pans};

/// Mask every card-number-like value in `v`; returns how many values
/// changed.
pub fn mask_pans(v: &mut Value) -> usize {
    match v {
        Value::String(s) => {
            if contains_pan_like(s) {
                *s = redact_pans(s).into_owned();
                1
            } else {
                0
            }
        }
        Value::Number(n) => {
            let text = n.to_string();
            if contains_pan_like(&text) {
                *v = Value::String(redact_pans(&text).into_owned());
                1
            } else {
                0
            }
        }
        Value::Array(a) => a.iter_mut().map(mask_pans).sum(),
        Value::Object(o) => {
            let mut n = 0;
            let keys: Vec<String> = o.keys().filter(|k| contains_pan_like(k)).cloned().collect();
            for k in keys {
                if let Some(val) = o.remove(&k) {
                    o.insert(redact_pans(&k).into_owned(), val);
                    n += 1;
                }
            }
            n + o.values_mut().map(mask_pans).sum::<usize>()
        }
        Value::Null | Value::Bool(_) => 0,
    }
}

/// Mask card numbers in a non-JSON text body.
pub fn mask_text(s: &str) -> Option<String> {
    contains_pan_like(s).then(|| redact_pans(s).into_owned())
}

/// The value at JSON pointer `ptr` as text (a string, or a number written
/// out), for card fields that are tokenized.
pub fn card_at(v: &Value, ptr: &str) -> Option<String> {
    match v.pointer(ptr)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Replace the value at `ptr` with the string `with`; false if absent.
pub fn replace_at(v: &mut Value, ptr: &str, with: &str) -> bool {
    match v.pointer_mut(ptr) {
        Some(slot) => {
            *slot = Value::String(with.to_owned());
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_strings_numbers_and_keys() {
        let mut v: Value = serde_json::from_str(
            r#"{"a":"card 4111111111111111 ok","b":[5555555555554444],"4012888888881881":1,"amount":1999,"id":"evt_1"}"#,
        )
        .unwrap();
        assert_eq!(mask_pans(&mut v), 3);
        let s = v.to_string();
        for pan in ["4111111111111111", "5555555555554444", "4012888888881881"] {
            assert!(!s.contains(pan), "{s}");
        }
        assert!(s.contains("************1111"), "{s}");
        assert_eq!(v["amount"], 1999);
        assert_eq!(v["id"], "evt_1");
        let mut clean: Value = serde_json::from_str(r#"{"x":"4111111111111112"}"#).unwrap();
        assert_eq!(mask_pans(&mut clean), 0, "fails Luhn: not a card number");
    }

    #[test]
    fn pointers() {
        let mut v: Value =
            serde_json::from_str(r#"{"card":{"number":"4111111111111111"}}"#).unwrap();
        assert_eq!(
            card_at(&v, "/card/number").as_deref(),
            Some("4111111111111111")
        );
        assert!(replace_at(&mut v, "/card/number", "tok_1"));
        assert_eq!(v["card"]["number"], "tok_1");
        assert!(!replace_at(&mut v, "/card/cvc", "x"));
        assert_eq!(
            mask_text("pan=4111 1111 1111 1111").as_deref(),
            Some("pan=**** **** **** 1111")
        );
        assert_eq!(mask_text("nothing"), None);
    }
}
