//! A JSON walker that reports where each scalar sits, as a byte range of the
//! original body, so that a field can be replaced without re-serializing the
//! document: every byte we do not replace reaches the app unchanged (number
//! precision, key order, whitespace and escapes included).
//!
//! The body is first validated by `serde_json` (strict RFC 8259, depth limit
//! 128); the walker then only ever sees valid JSON.

use std::ops::Range;

use zeroize::Zeroizing;

use crate::jsonpath::Seg;

/// What kind of scalar a range holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scalar {
    /// A string value (range includes the quotes).
    Str,
    /// A member name (range includes the quotes).
    Key,
    /// A number.
    Num,
    /// `true`, `false` or `null`.
    Literal,
    /// An object or array (reported for selected paths only, so that a rule
    /// pointing at one can be refused).
    Container,
}

/// Why a body is not JSON. Never quotes the body.
#[derive(Debug, thiserror::Error)]
#[error("the body is not valid JSON ({what} at line {line}, column {column})")]
pub struct JsonError {
    pub what: &'static str,
    pub line: usize,
    pub column: usize,
}

/// Deepest nesting accepted (the walker recurses once per level).
pub const MAX_DEPTH: usize = 128;

/// Check `body` is valid JSON nested at most [`MAX_DEPTH`] levels.
pub fn validate(body: &[u8]) -> Result<(), JsonError> {
    serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(|e| JsonError {
        what: match e.classify() {
            serde_json::error::Category::Eof => "unexpected end",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "invalid value",
            serde_json::error::Category::Io => "read error",
        },
        line: e.line(),
        column: e.column(),
    })?;
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    for (i, &b) in body.iter().enumerate() {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    let line = 1 + body[..i].iter().filter(|&&c| c == b'\n').count();
                    let column = i - body[..i]
                        .iter()
                        .rposition(|&c| c == b'\n')
                        .map_or(0, |p| p + 1)
                        + 1;
                    return Err(JsonError {
                        what: "nested deeper than 128 levels",
                        line,
                        column,
                    });
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Decode a string scalar (quotes included). `None` only for invalid input,
/// which [`validate`] has already excluded.
pub fn decode_str(raw: &[u8]) -> Option<Zeroizing<String>> {
    decode_str_ref(raw).map(Decoded::into_owned)
}

/// A decoded string scalar: the body's own bytes when the literal holds no
/// escape (no copy), else a decoded copy that is wiped when dropped. It may
/// hold a card number: `Debug` shows only its length.
pub enum Decoded<'a> {
    Borrowed(&'a str),
    Owned(Zeroizing<String>),
}

impl std::fmt::Debug for Decoded<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Decoded::Borrowed(_) => "Borrowed",
            Decoded::Owned(_) => "Owned",
        };
        write!(f, "Decoded::{kind}({} bytes)", self.len())
    }
}

impl Decoded<'_> {
    /// An owned copy, wiped when dropped.
    pub fn into_owned(self) -> Zeroizing<String> {
        match self {
            Decoded::Borrowed(s) => Zeroizing::new(s.to_owned()),
            Decoded::Owned(s) => s,
        }
    }
}

impl std::ops::Deref for Decoded<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            Decoded::Borrowed(s) => s,
            Decoded::Owned(s) => s.as_str(),
        }
    }
}

/// [`decode_str`] without a copy when the literal holds no escape (most
/// scalars a safety net looks at, and then drops).
pub fn decode_str_ref(raw: &[u8]) -> Option<Decoded<'_>> {
    let inner = raw.get(1..raw.len().checked_sub(1)?)?;
    if !inner.contains(&b'\\') {
        return std::str::from_utf8(inner).ok().map(Decoded::Borrowed);
    }
    serde_json::from_slice::<String>(raw)
        .ok()
        .map(|s| Decoded::Owned(Zeroizing::new(s)))
}

/// Encode `s` as a JSON string literal.
pub fn encode_str(s: &str) -> Vec<u8> {
    // Serializing a &str cannot fail.
    serde_json::to_vec(s).unwrap_or_else(|_| b"\"\"".to_vec())
}

/// Called with each scalar's path, byte range and kind.
pub type Visit<'v> = dyn FnMut(&[Seg], Range<usize>, Scalar) + 'v;

/// Visit every scalar of a valid document, in order, with its path.
/// `want_container` says for which paths an object/array should be reported
/// as [`Scalar::Container`] (walking continues inside it either way).
pub fn walk(body: &[u8], want_container: &dyn Fn(&[Seg]) -> bool, visit: &mut Visit<'_>) {
    let mut w = Walker {
        b: body,
        i: 0,
        path: Vec::new(),
    };
    w.value(want_container, visit);
}

struct Walker<'a> {
    b: &'a [u8],
    i: usize,
    path: Vec<Seg>,
}

impl Walker<'_> {
    fn peek(&self) -> u8 {
        self.b.get(self.i).copied().unwrap_or(0)
    }

    fn ws(&mut self) {
        while matches!(self.peek(), b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    /// At a `"`: the range of the string, quotes included.
    fn string(&mut self) -> Range<usize> {
        let start = self.i;
        self.i += 1;
        while self.i < self.b.len() {
            match self.b[self.i] {
                b'\\' => self.i += 2,
                b'"' => {
                    self.i += 1;
                    break;
                }
                _ => self.i += 1,
            }
        }
        start..self.i.min(self.b.len())
    }

    fn value(&mut self, want: &dyn Fn(&[Seg]) -> bool, visit: &mut Visit<'_>) {
        self.ws();
        let start = self.i;
        match self.peek() {
            b'{' => {
                self.i += 1;
                self.ws();
                if self.peek() == b'}' {
                    self.i += 1;
                } else {
                    loop {
                        self.ws();
                        let kr = self.string();
                        let key = decode_str_ref(&self.b[kr.clone()])
                            .map(|k| k.to_string())
                            .unwrap_or_default();
                        visit(&self.path, kr, Scalar::Key);
                        self.ws();
                        self.i += 1; // ':'
                        self.path.push(Seg::Key(key));
                        self.value(want, visit);
                        self.path.pop();
                        self.ws();
                        let sep = self.peek();
                        self.i += 1; // ',' or '}'
                        if sep != b',' {
                            break;
                        }
                    }
                }
                if want(&self.path) {
                    visit(&self.path, start..self.i, Scalar::Container);
                }
            }
            b'[' => {
                self.i += 1;
                self.ws();
                if self.peek() == b']' {
                    self.i += 1;
                } else {
                    let mut n = 0;
                    loop {
                        self.path.push(Seg::Index(n));
                        self.value(want, visit);
                        self.path.pop();
                        n += 1;
                        self.ws();
                        let sep = self.peek();
                        self.i += 1;
                        if sep != b',' {
                            break;
                        }
                    }
                }
                if want(&self.path) {
                    visit(&self.path, start..self.i, Scalar::Container);
                }
            }
            b'"' => {
                let r = self.string();
                visit(&self.path, r, Scalar::Str);
            }
            b't' | b'f' | b'n' => {
                while self.peek().is_ascii_alphabetic() {
                    self.i += 1;
                }
                visit(&self.path, start..self.i, Scalar::Literal);
            }
            _ => {
                while matches!(self.peek(), b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') {
                    self.i += 1;
                }
                visit(&self.path, start..self.i, Scalar::Num);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalars(body: &str) -> Vec<(String, String, Scalar)> {
        validate(body.as_bytes()).unwrap();
        let mut out = Vec::new();
        walk(body.as_bytes(), &|_| false, &mut |path, r, kind| {
            let p = path
                .iter()
                .map(|s| match s {
                    Seg::Key(k) => format!(".{k}"),
                    Seg::Index(i) => format!("[{i}]"),
                })
                .collect::<String>();
            out.push((p, body[r].to_owned(), kind));
        });
        out
    }

    #[test]
    fn reports_every_scalar_with_its_path_and_exact_bytes() {
        let got = scalars(
            r#" { "a" : { "b\"c" : [1.50e3, "x\u0041", true, null, {"d": -0}] }, "e":[] , "f":{}} "#,
        );
        let want: Vec<(&str, &str, Scalar)> = vec![
            ("", "\"a\"", Scalar::Key),
            (".a", "\"b\\\"c\"", Scalar::Key),
            (".a.b\"c[0]", "1.50e3", Scalar::Num),
            (".a.b\"c[1]", "\"x\\u0041\"", Scalar::Str),
            (".a.b\"c[2]", "true", Scalar::Literal),
            (".a.b\"c[3]", "null", Scalar::Literal),
            (".a.b\"c[4]", "\"d\"", Scalar::Key),
            (".a.b\"c[4].d", "-0", Scalar::Num),
            ("", "\"e\"", Scalar::Key),
            ("", "\"f\"", Scalar::Key),
        ];
        let want: Vec<_> = want
            .into_iter()
            .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn decodes_escapes() {
        assert_eq!(decode_str(br#""x\u0041\n""#).unwrap().as_str(), "xA\n");
        assert_eq!(decode_str(br#""plain""#).unwrap().as_str(), "plain");
        // Without an escape the body's own bytes are used; with one, a copy.
        assert!(matches!(
            decode_str_ref(br#""plain""#),
            Some(Decoded::Borrowed("plain"))
        ));
        match decode_str_ref(br#""4111\u0031""#) {
            Some(Decoded::Owned(s)) => assert_eq!(s.as_str(), "41111"),
            other => panic!("expected a decoded copy, got {other:?}"),
        }
        assert!(decode_str_ref(b"\"").is_none());
        assert_eq!(encode_str("a\"b"), br#""a\"b""#.to_vec());
    }

    #[test]
    fn containers_reported_when_asked() {
        let body = br#"{"card":{"number":{"x":1}}}"#;
        let mut seen = Vec::new();
        walk(body, &|p| p.len() == 2, &mut |_, r, k| {
            if k == Scalar::Container {
                seen.push(String::from_utf8(body[r].to_vec()).unwrap());
            }
        });
        assert_eq!(seen, vec![r#"{"x":1}"#.to_owned()]);
    }

    #[test]
    fn invalid_json_is_refused_without_quoting_it() {
        for bad in [
            "{",
            "{\"a\":}",
            "[1,]",
            "{\"a\" 1}",
            "\"\\x\"",
            "01",
            "{'a':1}",
            "nul",
        ] {
            let e = validate(bad.as_bytes()).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains("line 1"), "{msg}");
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(validate(deep.as_bytes()).is_err(), "depth limit");
    }
}
