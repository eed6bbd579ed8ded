//! Find the card data in a request or response body, and splice
//! replacements in.
//!
//! [`scan`] returns [`Hit`]s: byte ranges of the body that hold a selected
//! field, or a value in which the safety net found something that looks like
//! a card number. The caller decides what each part becomes (a token, a card
//! number toward a processor, `[redacted]`), then [`apply`] writes the new
//! body. Bytes outside the hits are copied unchanged, so everything else in
//! the body keeps its meaning, byte for byte.

use std::ops::Range;

use tokengate_scan::Detector;
use zeroize::Zeroizing;

use crate::json::{self, Scalar};
use crate::jsonpath::{JsonPath, Seg};

/// How the body is encoded, from its `Content-Type`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    Form,
    Multipart {
        boundary: String,
    },
    /// Anything else: fields cannot be selected; the safety net scans bytes.
    Other,
}

impl BodyKind {
    pub fn from_content_type(ct: Option<&str>) -> BodyKind {
        let Some(ct) = ct else {
            return BodyKind::Other;
        };
        let mut parts = ct.split(';');
        let mime = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        if mime == "application/json"
            || (mime.starts_with("application/") && mime.ends_with("+json"))
        {
            BodyKind::Json
        } else if mime == "application/x-www-form-urlencoded" {
            BodyKind::Form
        } else if mime == "multipart/form-data" {
            let boundary = parts.find_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("boundary")
                    .then(|| v.trim().trim_matches('"').to_owned())
            });
            match boundary {
                Some(b) if !b.is_empty() && b.len() <= 70 => BodyKind::Multipart { boundary: b },
                _ => BodyKind::Multipart {
                    boundary: String::new(),
                },
            }
        } else {
            BodyKind::Other
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            BodyKind::Json => "json",
            BodyKind::Form => "form",
            BodyKind::Multipart { .. } => "multipart",
            BodyKind::Other => "other",
        }
    }
}

/// Which values a rule selects.
#[derive(Clone, Debug)]
pub enum Selector {
    /// A JSON value by path (JSON bodies).
    Json(JsonPath),
    /// A form field by name (urlencoded and multipart bodies).
    Form(String),
}

/// How a replacement is written into the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enc {
    /// As a JSON string literal (the hit covers a whole JSON scalar).
    Json,
    /// Percent-encoded (the hit covers a urlencoded value).
    Form,
    /// As is (multipart content, other bodies).
    Raw,
}

/// Why a part of a hit is there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum What {
    /// Selected by rule number `rule` (index into the selectors given).
    Field { rule: usize },
    /// Not selected, but looks like a card number.
    Stray,
}

/// A stretch of a hit's text to replace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// Byte range within [`Hit::text`].
    pub range: Range<usize>,
    pub what: What,
}

/// A range of the body holding card data (or a selected value).
#[derive(Debug)]
pub struct Hit {
    /// Bytes of the body this hit replaces.
    pub range: Range<usize>,
    pub enc: Enc,
    /// The decoded value (empty when a selected value is not a string or
    /// number, which no rule accepts).
    pub text: Zeroizing<String>,
    pub parts: Vec<Part>,
    /// Values in one group belong together (a card number and its CVC):
    /// the parent path in JSON, the name up to its last `[` in forms.
    pub group: String,
}

impl Hit {
    /// The text of one part.
    pub fn part_text(&self, i: usize) -> &str {
        self.parts
            .get(i)
            .and_then(|p| self.text.get(p.range.clone()))
            .unwrap_or("")
    }
}

/// A body that cannot be read as its content type says.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Json(#[from] json::JsonError),
    #[error("the multipart body is malformed: {0}")]
    Multipart(&'static str),
}

impl BodyError {
    pub fn code(&self) -> &'static str {
        match self {
            BodyError::Json(_) => "invalid_json",
            BodyError::Multipart(_) => "invalid_multipart",
        }
    }
}

/// Find selected fields and (when `net` is given) stray card numbers.
pub fn scan(
    body: &[u8],
    kind: &BodyKind,
    selectors: &[Selector],
    net: Option<&Detector>,
) -> Result<Vec<Hit>, BodyError> {
    let mut hits = match kind {
        BodyKind::Json => scan_json(body, selectors, net)?,
        BodyKind::Form => scan_form(body, selectors, net),
        BodyKind::Multipart { boundary } => scan_multipart(body, boundary, selectors, net)?,
        BodyKind::Other => net.map(|d| raw_hits(body, 0, d)).unwrap_or_default(),
    };
    hits.sort_by_key(|h| h.range.start);
    Ok(hits)
}

/// Findings of `d` in `text`, as parts.
fn stray_parts(text: &str, d: &Detector) -> Vec<Part> {
    d.find(text.as_bytes())
        .map(|f| Part {
            range: f.start..f.end,
            what: What::Stray,
        })
        .collect()
}

/// Each finding in raw bytes as a hit of its own.
fn raw_hits(bytes: &[u8], offset: usize, d: &Detector) -> Vec<Hit> {
    d.find(bytes)
        .map(|f| {
            let text = String::from_utf8_lossy(&bytes[f.start..f.end]).into_owned();
            let len = text.len();
            Hit {
                range: offset + f.start..offset + f.end,
                enc: Enc::Raw,
                text: Zeroizing::new(text),
                parts: vec![Part {
                    range: 0..len,
                    what: What::Stray,
                }],
                group: String::new(),
            }
        })
        .collect()
}

fn path_group(path: &[Seg]) -> String {
    let parent = path.len().saturating_sub(1);
    path[..parent]
        .iter()
        .map(|s| match s {
            Seg::Key(k) => format!(".{k}"),
            Seg::Index(i) => format!("[{i}]"),
        })
        .collect()
}

fn scan_json(
    body: &[u8],
    selectors: &[Selector],
    net: Option<&Detector>,
) -> Result<Vec<Hit>, BodyError> {
    json::validate(body)?;
    let paths: Vec<(usize, &JsonPath)> = selectors
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            Selector::Json(p) => Some((i, p)),
            Selector::Form(_) => None,
        })
        .collect();
    let rule_at = |path: &[Seg]| paths.iter().find(|(_, p)| p.matches(path)).map(|(i, _)| *i);
    let mut hits = Vec::new();
    json::walk(body, &|p| rule_at(p).is_some(), &mut |path, range, kind| {
        let raw = &body[range.clone()];
        let selected = match kind {
            Scalar::Key => None,
            _ => rule_at(path),
        };
        if let Some(rule) = selected {
            let text = match kind {
                Scalar::Str => json::decode_str(raw).unwrap_or_default(),
                Scalar::Num => Zeroizing::new(String::from_utf8_lossy(raw).into_owned()),
                _ => Zeroizing::new(String::new()),
            };
            let len = text.len();
            hits.push(Hit {
                range,
                enc: Enc::Json,
                text,
                parts: vec![Part {
                    range: 0..len,
                    what: What::Field { rule },
                }],
                group: path_group(path),
            });
            return;
        }
        let Some(d) = net else { return };
        // Looked at without a copy; copied only when it holds a hit.
        let text = match kind {
            Scalar::Str | Scalar::Key => {
                json::decode_str_ref(raw).unwrap_or(json::Decoded::Borrowed(""))
            }
            // A number in a validated document is ASCII.
            Scalar::Num => json::Decoded::Borrowed(std::str::from_utf8(raw).unwrap_or_default()),
            Scalar::Literal | Scalar::Container => return,
        };
        let parts = stray_parts(&text, d);
        if !parts.is_empty() {
            hits.push(Hit {
                range,
                enc: Enc::Json,
                text: text.into_owned(),
                parts,
                group: path_group(path),
            });
        }
    });
    // A selected container also reported its own scalars; keep the container.
    let containers: Vec<Range<usize>> = hits
        .iter()
        .filter(|h| h.text.is_empty() && matches!(h.parts[0].what, What::Field { .. }))
        .map(|h| h.range.clone())
        .collect();
    hits.retain(|h| {
        !containers
            .iter()
            .any(|c| c != &h.range && c.start <= h.range.start && h.range.end <= c.end)
    });
    Ok(hits)
}

/// Decode one urlencoded name or value (`+` is a space; invalid escapes
/// are kept as they are).
pub fn decode_form_component(raw: &[u8]) -> Zeroizing<String> {
    let plus: Vec<u8> = raw
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    Zeroizing::new(
        percent_encoding::percent_decode(&plus)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

fn form_group(name: &str) -> String {
    match name.rfind('[') {
        Some(i) => name[..i].to_owned(),
        None => String::new(),
    }
}

fn select_form(selectors: &[Selector], name: &str) -> Option<usize> {
    selectors
        .iter()
        .position(|s| matches!(s, Selector::Form(n) if n == name))
}

fn scan_form(body: &[u8], selectors: &[Selector], net: Option<&Detector>) -> Vec<Hit> {
    let mut hits = Vec::new();
    let mut start = 0;
    for pair in body.split(|&b| b == b'&') {
        let end = start + pair.len();
        let pair_start = start;
        start = end + 1;
        if pair.is_empty() {
            continue;
        }
        let eq = pair.iter().position(|&b| b == b'=');
        let (name_raw, value_range) = match eq {
            Some(i) => (&pair[..i], pair_start + i + 1..end),
            None => (pair, end..end),
        };
        let name = decode_form_component(name_raw);
        let value = decode_form_component(&body[value_range.clone()]);
        let group = form_group(&name);
        if let Some(rule) = select_form(selectors, &name) {
            let len = value.len();
            hits.push(Hit {
                range: value_range,
                enc: Enc::Form,
                text: value,
                parts: vec![Part {
                    range: 0..len,
                    what: What::Field { rule },
                }],
                group,
            });
            continue;
        }
        let Some(d) = net else { continue };
        let name_parts = stray_parts(&name, d);
        if !name_parts.is_empty() {
            hits.push(Hit {
                range: pair_start..pair_start + name_raw.len(),
                enc: Enc::Form,
                text: name,
                parts: name_parts,
                group: group.clone(),
            });
        }
        let value_parts = stray_parts(&value, d);
        if !value_parts.is_empty() {
            hits.push(Hit {
                range: value_range,
                enc: Enc::Form,
                text: value,
                parts: value_parts,
                group,
            });
        }
    }
    hits
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

fn scan_multipart(
    body: &[u8],
    boundary: &str,
    selectors: &[Selector],
    net: Option<&Detector>,
) -> Result<Vec<Hit>, BodyError> {
    if boundary.is_empty() {
        return Err(BodyError::Multipart(
            "Content-Type has no usable boundary parameter",
        ));
    }
    let delim = format!("--{boundary}");
    let sep = format!("\r\n--{boundary}");
    let mut hits = Vec::new();
    // The preamble (before the first delimiter) is scanned as raw bytes.
    let first = if body.starts_with(delim.as_bytes()) {
        0
    } else {
        find(body, sep.as_bytes(), 0)
            .map(|p| p + 2)
            .ok_or(BodyError::Multipart("no boundary delimiter found"))?
    };
    if let Some(d) = net {
        hits.extend(raw_hits(&body[..first], 0, d));
    }
    let mut at = first + delim.len();
    loop {
        if body[at..].starts_with(b"--") {
            // Close delimiter; the epilogue is scanned as raw bytes.
            if let Some(d) = net {
                hits.extend(raw_hits(&body[at..], at, d));
            }
            return Ok(hits);
        }
        // Transport padding, then CRLF.
        while matches!(body.get(at), Some(b' ' | b'\t')) {
            at += 1;
        }
        if !body[at..].starts_with(b"\r\n") {
            return Err(BodyError::Multipart(
                "a delimiter line does not end in CRLF",
            ));
        }
        at += 2;
        let head_end = find(body, b"\r\n\r\n", at)
            .map(|p| p + 4)
            .or_else(|| body[at..].starts_with(b"\r\n").then_some(at + 2))
            .ok_or(BodyError::Multipart("a part's headers do not end"))?;
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let name = match httparse::parse_headers(&body[at..head_end], &mut headers) {
            Ok(httparse::Status::Complete(_)) => {
                let mut name = None;
                for h in headers.iter().filter(|h| !h.name.is_empty()) {
                    if h.name.eq_ignore_ascii_case("content-transfer-encoding") {
                        let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                        if !matches!(v.trim(), "7bit" | "8bit" | "binary") {
                            return Err(BodyError::Multipart(
                                "a part uses a Content-Transfer-Encoding other than 7bit, 8bit or binary",
                            ));
                        }
                    }
                    if h.name.eq_ignore_ascii_case("content-disposition") {
                        name = disposition_name(h.value);
                    }
                }
                name
            }
            _ => return Err(BodyError::Multipart("a part's headers cannot be parsed")),
        };
        let content_end = find(body, sep.as_bytes(), head_end).ok_or(BodyError::Multipart(
            "the body ends before the closing boundary",
        ))?;
        let content = head_end..content_end;
        let selected = name.as_deref().and_then(|n| select_form(selectors, n));
        if let Some(d) = net {
            hits.extend(raw_hits(&body[at..head_end], at, d));
        }
        match selected {
            Some(rule) => {
                let text = std::str::from_utf8(&body[content.clone()])
                    .map(str::to_owned)
                    .unwrap_or_default();
                let len = text.len();
                hits.push(Hit {
                    range: content,
                    enc: Enc::Raw,
                    text: Zeroizing::new(text),
                    parts: vec![Part {
                        range: 0..len,
                        what: What::Field { rule },
                    }],
                    group: name.as_deref().map(form_group).unwrap_or_default(),
                });
            }
            None => {
                if let Some(d) = net {
                    hits.extend(raw_hits(&body[content.clone()], content.start, d));
                }
            }
        }
        at = content_end + sep.len();
    }
}

/// `name` of a `Content-Disposition: form-data; name="…"` header.
fn disposition_name(value: &[u8]) -> Option<String> {
    let v = std::str::from_utf8(value).ok()?;
    v.split(';').skip(1).find_map(|p| {
        let (k, val) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("name")
            .then(|| val.trim().trim_matches('"').to_owned())
    })
}

/// The body with each hit's parts replaced by `with[h][p]` (one string per
/// part of each hit), each hit written in its encoding.
pub fn apply(body: &[u8], hits: &[Hit], with: &[Vec<String>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + hits.len() * 16);
    let mut copied = 0;
    for (hit, repl) in hits.iter().zip(with) {
        if hit.range.start < copied {
            continue; // overlapping hits cannot happen; never write twice
        }
        out.extend_from_slice(&body[copied..hit.range.start]);
        let mut text = String::with_capacity(hit.text.len() + 16);
        let mut at = 0;
        for (part, r) in hit.parts.iter().zip(repl) {
            text.push_str(hit.text.get(at..part.range.start).unwrap_or(""));
            text.push_str(r);
            at = part.range.end;
        }
        text.push_str(hit.text.get(at..).unwrap_or(""));
        match hit.enc {
            Enc::Json => out.extend_from_slice(&json::encode_str(&text)),
            Enc::Form => {
                out.extend(form_urlencoded::byte_serialize(text.as_bytes()).flat_map(str::bytes))
            }
            Enc::Raw => out.extend_from_slice(text.as_bytes()),
        }
        zeroize::Zeroize::zeroize(&mut text);
        copied = hit.range.end;
    }
    out.extend_from_slice(&body[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokengate_scan::DetectorConfig;

    const PAN: &str = "4242424242424242";
    const PAN2: &str = "5555555555554444";

    fn net() -> Detector {
        Detector::new(DetectorConfig {
            include_test_cards: true,
            include_low_entropy: true,
            ..DetectorConfig::default()
        })
    }

    fn sel(paths: &[&str]) -> Vec<Selector> {
        paths
            .iter()
            .map(|p| {
                if p.starts_with('$') {
                    Selector::Json(JsonPath::parse(p).unwrap())
                } else {
                    Selector::Form((*p).to_owned())
                }
            })
            .collect()
    }

    /// Replace every part with `T<rule>` / `S` and return the new body.
    fn rewrite(body: &str, kind: BodyKind, selectors: &[Selector]) -> String {
        let d = net();
        let hits = scan(body.as_bytes(), &kind, selectors, Some(&d)).unwrap();
        let with: Vec<Vec<String>> = hits
            .iter()
            .map(|h| {
                h.parts
                    .iter()
                    .map(|p| match p.what {
                        What::Field { rule } => format!("T{rule}"),
                        What::Stray => "S".to_owned(),
                    })
                    .collect()
            })
            .collect();
        String::from_utf8(apply(body.as_bytes(), &hits, &with)).unwrap()
    }

    #[test]
    fn json_fields_are_replaced_and_nothing_else_changes() {
        let body = format!(
            r#"{{ "amount": 12345678901234567890.10, "card": {{"number": "{PAN}", "cvc": "123"}},
               "items": [{{"pan": {PAN2}}}, {{"pan": "x"}}], "note": "pay \u0041" }}"#
        );
        let out = rewrite(
            &body,
            BodyKind::Json,
            &sel(&["$.card.number", "$.card.cvc", "$.items[*].pan"]),
        );
        let want = r#"{ "amount": 12345678901234567890.10, "card": {"number": "T0", "cvc": "T1"},
               "items": [{"pan": "T2"}, {"pan": "T2"}], "note": "pay \u0041" }"#;
        assert_eq!(out, want);
    }

    #[test]
    fn json_safety_net_sees_through_escapes_and_numbers() {
        // \u0034 is "4": a PAN hidden behind escapes is still found.
        let body = format!(
            r#"{{"memo": "card \u0034{} thanks", "n": {PAN2}, "{PAN}": 1, "ok": "1234"}}"#,
            &PAN[1..]
        );
        let out = rewrite(&body, BodyKind::Json, &[]);
        assert_eq!(
            out,
            r#"{"memo": "card S thanks", "n": "S", "S": 1, "ok": "1234"}"#
        );
    }

    #[test]
    fn selected_container_is_one_hit_with_empty_text() {
        let body = format!(r#"{{"card": {{"number": {{"x": "{PAN}"}}}}}}"#);
        let d = net();
        let hits = scan(
            body.as_bytes(),
            &BodyKind::Json,
            &sel(&["$.card.number"]),
            Some(&d),
        )
        .unwrap();
        assert_eq!(hits.len(), 1);
        assert!(hits[0].text.is_empty());
        assert_eq!(&body[hits[0].range.clone()], format!(r#"{{"x": "{PAN}"}}"#));
    }

    #[test]
    fn groups_pair_siblings() {
        let body = format!(r#"{{"a": {{"card": {{"number": "{PAN}", "cvc": "123"}}}}}}"#);
        let hits = scan(
            body.as_bytes(),
            &BodyKind::Json,
            &sel(&["$.a.card.number", "$.a.card.cvc"]),
            None,
        )
        .unwrap();
        assert_eq!(hits[0].group, ".a.card");
        assert_eq!(hits[1].group, ".a.card");
        assert_eq!(hits[0].part_text(0), PAN);
    }

    #[test]
    fn form_fields_by_decoded_name() {
        let body = format!(
            "amount=100&card%5Bnumber%5D={}&card[cvc]=123&memo=see+{PAN2}&x&e=a=b",
            "4242+4242+4242+4242"
        );
        let out = rewrite(&body, BodyKind::Form, &sel(&["card[number]", "card[cvc]"]));
        assert_eq!(
            out,
            "amount=100&card%5Bnumber%5D=T0&card[cvc]=T1&memo=see+S&x&e=a=b"
        );
        let hits = scan(
            body.as_bytes(),
            &BodyKind::Form,
            &sel(&["card[number]"]),
            None,
        )
        .unwrap();
        assert_eq!(hits[0].part_text(0), "4242 4242 4242 4242");
        assert_eq!(hits[0].group, "card");
    }

    #[test]
    fn multipart_fields_and_strays() {
        let body = format!(
            "pre\r\n--XyZ\r\nContent-Disposition: form-data; name=\"card[number]\"\r\n\r\n{PAN}\r\n\
             --XyZ\r\nContent-Disposition: form-data; name=\"doc\"; filename=\"a.txt\"\r\n\
             Content-Type: text/plain\r\n\r\nline {PAN2} end\r\n--XyZ--\r\n"
        );
        let kind = BodyKind::from_content_type(Some("multipart/form-data; boundary=\"XyZ\""));
        let out = rewrite(&body, kind, &sel(&["card[number]"]));
        assert_eq!(
            out,
            "pre\r\n--XyZ\r\nContent-Disposition: form-data; name=\"card[number]\"\r\n\r\nT0\r\n\
             --XyZ\r\nContent-Disposition: form-data; name=\"doc\"; filename=\"a.txt\"\r\n\
             Content-Type: text/plain\r\n\r\nline S end\r\n--XyZ--\r\n"
        );
    }

    #[test]
    fn malformed_multipart_is_refused() {
        let kind = BodyKind::from_content_type(Some("multipart/form-data; boundary=b"));
        for bad in [
            "no delimiter",
            "--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nunterminated",
            "--bXX",
            "--b\r\nContent-Transfer-Encoding: base64\r\n\r\nNDI0Mg==\r\n--b--",
        ] {
            let e = scan(bad.as_bytes(), &kind, &[], None).unwrap_err();
            assert_eq!(e.code(), "invalid_multipart", "{bad}");
        }
        let none = BodyKind::from_content_type(Some("multipart/form-data"));
        assert!(scan(b"--x\r\n", &none, &[], None).is_err());
    }

    #[test]
    fn other_bodies_are_scanned_as_bytes() {
        let out = rewrite(
            &format!("<card>{PAN}</card> 4242 4242 4242 4242"),
            BodyKind::Other,
            &[],
        );
        assert_eq!(out, "<card>S</card> S");
    }

    #[test]
    fn content_types() {
        assert_eq!(
            BodyKind::from_content_type(Some("Application/JSON; charset=utf-8")),
            BodyKind::Json
        );
        assert_eq!(
            BodyKind::from_content_type(Some("application/vnd.api+json")),
            BodyKind::Json
        );
        assert_eq!(
            BodyKind::from_content_type(Some("application/x-www-form-urlencoded")),
            BodyKind::Form
        );
        assert_eq!(BodyKind::from_content_type(None), BodyKind::Other);
        assert_eq!(
            BodyKind::from_content_type(Some("text/plain")),
            BodyKind::Other
        );
    }
}
