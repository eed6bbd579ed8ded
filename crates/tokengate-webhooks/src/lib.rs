//! Webhook signature schemes: verification over the raw request bytes, and
//! signing (tokengate re-signs every delivery; `tokengate webhooks sign`
//! prints headers for an application's own tests). No I/O, no clock: the
//! caller passes the current time.
//!
//! Schemes:
//! - [`Scheme::Stripe`]: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]`,
//!   HMAC-SHA256 over `"<t>.<raw body>"`, keyed with the whole secret string
//!   (`whsec_…`) as bytes. Several `v1` entries (during Stripe's secret
//!   rotation) and several configured secrets (ours) are all tried.
//! - [`Scheme::Standard`] (Standard Webhooks): `webhook-id`,
//!   `webhook-timestamp`, `webhook-signature: v1,<b64> v1a,<b64> …` over
//!   `"<id>.<timestamp>.<raw body>"`; `v1` is HMAC-SHA256 keyed with the
//!   base64 after `whsec_`, `v1a` is Ed25519 with a `whpk_` public key (or
//!   the public half of a `whsk_` secret key).
//! - [`Scheme::Generic`]: one header holding an HMAC (SHA-256 or SHA-512,
//!   hex or base64, optional prefix such as `sha256=`) over a signed-content
//!   template built from `{body}`, `{timestamp}` and `{id}`.
//!
//! Invariants: signatures are compared in constant time; the body is never
//! re-serialized before verification; a timestamp more than the tolerance
//! away from now, in either direction, is refused; secrets are zeroized and
//! never printed by `Debug`.

#![forbid(unsafe_code)]

use aws_lc_rs::{hmac, signature};
use data_encoding::{BASE64, BASE64_NOPAD, HEXLOWER, HEXLOWER_PERMISSIVE};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Default timestamp tolerance, both directions.
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;
/// Signatures looked at in one header at most (bounds the work a forged
/// request can cause).
pub const MAX_SIGNATURES: usize = 16;

/// Where a verifier reads request headers (names compared ASCII
/// case-insensitively).
pub trait HeaderLookup {
    fn header(&self, name: &str) -> Option<&str>;
}

impl HeaderLookup for [(&str, &str)] {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

impl<const N: usize> HeaderLookup for [(&str, &str); N] {
    fn header(&self, name: &str) -> Option<&str> {
        self.as_slice().header(name)
    }
}

impl HeaderLookup for Vec<(String, String)> {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// HMAC hash for the generic scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    fn hmac(self) -> hmac::Algorithm {
        match self {
            Algorithm::Sha256 => hmac::HMAC_SHA256,
            Algorithm::Sha512 => hmac::HMAC_SHA512,
        }
    }
}

/// How the generic scheme writes a MAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Hex,
    Base64,
}

/// One piece of a signed-content template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Lit(Vec<u8>),
    Body,
    Timestamp,
    Id,
}

/// A signed-content template such as `{timestamp}.{body}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template(Vec<Part>);

impl Template {
    /// Parse; `{body}` must appear exactly once; other text is literal.
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = s;
        let mut bodies = 0;
        while !rest.is_empty() {
            let next = [
                ("{body}", Part::Body),
                ("{timestamp}", Part::Timestamp),
                ("{id}", Part::Id),
            ]
            .into_iter()
            .filter_map(|(pat, p)| rest.find(pat).map(|i| (i, pat, p)))
            .min_by_key(|(i, _, _)| *i);
            match next {
                Some((i, pat, p)) => {
                    if i > 0 {
                        parts.push(Part::Lit(rest.as_bytes()[..i].to_vec()));
                    }
                    if p == Part::Body {
                        bodies += 1;
                    }
                    parts.push(p);
                    rest = &rest[i + pat.len()..];
                }
                None => {
                    parts.push(Part::Lit(rest.as_bytes().to_vec()));
                    rest = "";
                }
            }
        }
        if bodies != 1 {
            return Err("the template must contain {body} exactly once".into());
        }
        Ok(Template(parts))
    }

    fn uses(&self, p: &Part) -> bool {
        self.0.contains(p)
    }

    fn render(&self, id: &str, ts: &str, body: &[u8]) -> Vec<u8> {
        self.pieces(id, ts, body).concat()
    }

    /// The signed content as the pieces it is made of, in order: a MAC is
    /// fed piece by piece, with no copy of the body.
    fn pieces<'a>(&'a self, id: &'a str, ts: &'a str, body: &'a [u8]) -> Vec<&'a [u8]> {
        self.0
            .iter()
            .map(|p| match p {
                Part::Lit(b) => b.as_slice(),
                Part::Body => body,
                Part::Timestamp => ts.as_bytes(),
                Part::Id => id.as_bytes(),
            })
            .collect()
    }
}

/// The generic scheme's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generic {
    /// Header holding the MAC, e.g. `X-Signature`.
    pub header: String,
    pub algorithm: Algorithm,
    pub encoding: Encoding,
    /// Text before the MAC in the header, e.g. `sha256=` (may be empty).
    pub prefix: String,
    pub template: Template,
    /// Header with a Unix-seconds timestamp (checked against the tolerance).
    pub timestamp_header: Option<String>,
    /// Header with the event id (for idempotency).
    pub id_header: Option<String>,
}

impl Generic {
    /// Whether the idempotency key is covered by the signature: the id
    /// header is part of `signed_content`, or there is no id header (the id
    /// is then the SHA-256 of the signed body). When it is not, a captured
    /// request replayed within the tolerance with a new id verifies and is
    /// a new event.
    pub fn id_is_signed(&self) -> bool {
        self.id_header.is_none() || self.template.uses(&Part::Id)
    }

    /// Check that the template only uses headers that are configured.
    pub fn validate(&self) -> Result<(), String> {
        if self.header.trim().is_empty() {
            return Err("header must name the signature header".into());
        }
        if self.template.uses(&Part::Timestamp) && self.timestamp_header.is_none() {
            return Err("the template uses {timestamp} but timestamp_header is not set".into());
        }
        if self.template.uses(&Part::Id) && self.id_header.is_none() {
            return Err("the template uses {id} but id_header is not set".into());
        }
        Ok(())
    }
}

/// A signature scheme.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scheme {
    Stripe,
    Standard,
    Generic(Generic),
}

/// A key that verifies (and, when it holds the private part, signs).
pub enum Key {
    /// HMAC key bytes.
    Hmac(Zeroizing<Vec<u8>>),
    /// Ed25519 public key, and the 32-byte seed when it was given (`whsk_`).
    Ed25519 {
        public: [u8; 32],
        seed: Option<Zeroizing<[u8; 32]>>,
    },
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Hmac(_) => f.write_str("Key::Hmac([REDACTED])"),
            Key::Ed25519 { seed, .. } => write!(
                f,
                "Key::Ed25519({})",
                if seed.is_some() { "secret" } else { "public" }
            ),
        }
    }
}

fn b64_decode(s: &str) -> Option<Zeroizing<Vec<u8>>> {
    BASE64
        .decode(s.as_bytes())
        .or_else(|_| BASE64_NOPAD.decode(s.as_bytes()))
        .ok()
        .map(Zeroizing::new)
}

impl Key {
    /// Parse a configured secret for `scheme`. Stripe and generic secrets
    /// are used as their bytes; Standard Webhooks secrets are `whsec_<b64>`
    /// (or bare base64), `whpk_<b64>` (Ed25519 public key) or `whsk_<b64>`
    /// (Ed25519 seed, or seed and public key).
    pub fn parse(scheme: &Scheme, s: &str) -> Result<Key, String> {
        if s.trim().is_empty() {
            return Err("a secret may not be empty".into());
        }
        match scheme {
            Scheme::Stripe | Scheme::Generic(_) => {
                Ok(Key::Hmac(Zeroizing::new(s.as_bytes().to_vec())))
            }
            Scheme::Standard => {
                if let Some(pk) = s.strip_prefix("whpk_") {
                    let bytes = b64_decode(pk).ok_or("whpk_ key is not base64")?;
                    let public: [u8; 32] = bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| "whpk_ key must be 32 bytes")?;
                    Ok(Key::Ed25519 { public, seed: None })
                } else if let Some(sk) = s.strip_prefix("whsk_") {
                    let bytes = b64_decode(sk).ok_or("whsk_ key is not base64")?;
                    if bytes.len() != 32 && bytes.len() != 64 {
                        return Err("whsk_ key must be 32 or 64 bytes".into());
                    }
                    let mut seed = Zeroizing::new([0u8; 32]);
                    seed.copy_from_slice(&bytes[..32]);
                    let pair = signature::Ed25519KeyPair::from_seed_unchecked(seed.as_slice())
                        .map_err(|_| "whsk_ key is not an Ed25519 key")?;
                    let public: [u8; 32] = signature::KeyPair::public_key(&pair)
                        .as_ref()
                        .try_into()
                        .map_err(|_| "whsk_ key is not an Ed25519 key")?;
                    if bytes.len() == 64 && bytes[32..] != public {
                        return Err("whsk_ key: public half does not match".into());
                    }
                    Ok(Key::Ed25519 {
                        public,
                        seed: Some(seed),
                    })
                } else {
                    let raw = s.strip_prefix("whsec_").unwrap_or(s);
                    let bytes = b64_decode(raw).ok_or("whsec_ secret is not base64")?;
                    if bytes.is_empty() {
                        return Err("a secret may not be empty".into());
                    }
                    Ok(Key::Hmac(bytes))
                }
            }
        }
    }
}

/// Why a request was refused. [`VerifyError::code`] is the stable reason
/// written to the audit log and the metrics.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("the {0} header is missing")]
    MissingHeader(String),
    #[error("the {0} header is malformed")]
    Malformed(String),
    #[error("no signature matches any configured secret")]
    BadSignature,
    #[error("the timestamp is older than the tolerance")]
    Stale,
    #[error("the timestamp is further in the future than the tolerance")]
    Future,
}

impl VerifyError {
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::MissingHeader(_) => "missing_signature",
            VerifyError::Malformed(_) => "malformed_signature",
            VerifyError::BadSignature => "bad_signature",
            VerifyError::Stale => "stale_timestamp",
            VerifyError::Future => "future_timestamp",
        }
    }
}

/// What a verified request told us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The event id from a header (`webhook-id`, the generic `id_header`);
    /// `None` for Stripe, whose id is in the body.
    pub id: Option<String>,
    /// The signed timestamp, Unix seconds.
    pub timestamp: Option<i64>,
}

/// A scheme with its keys and tolerance.
#[derive(Debug)]
pub struct Verifier {
    scheme: Scheme,
    keys: Vec<Key>,
    /// For each HMAC secret in `keys` (same index), its HMAC key under the
    /// scheme's algorithm, set up once (inner and outer pads) instead of
    /// for every request. `aws_lc_rs`'s key prints no secret in `Debug`.
    macs: Vec<Option<hmac::Key>>,
    tolerance: u64,
}

fn header<'a>(h: &'a dyn HeaderLookup, name: &str) -> Result<&'a str, VerifyError> {
    h.header(name)
        .ok_or_else(|| VerifyError::MissingHeader(name.to_owned()))
}

fn parse_ts(name: &str, v: &str) -> Result<i64, VerifyError> {
    let v = v.trim();
    if v.is_empty() || v.len() > 12 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::Malformed(name.to_owned()));
    }
    v.parse()
        .map_err(|_| VerifyError::Malformed(name.to_owned()))
}

fn hmac_tag(alg: hmac::Algorithm, key: &[u8], parts: &[&[u8]]) -> hmac::Tag {
    mac_tag(&hmac::Key::new(alg, key), parts)
}

fn mac_tag(key: &hmac::Key, parts: &[&[u8]]) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(key);
    for p in parts {
        ctx.update(p);
    }
    ctx.sign()
}

impl Verifier {
    /// `keys` must not be empty; `tolerance_secs` applies both ways.
    pub fn new(scheme: Scheme, keys: Vec<Key>, tolerance_secs: u64) -> Result<Verifier, String> {
        if keys.is_empty() {
            return Err("at least one secret is needed".into());
        }
        if let Scheme::Generic(g) = &scheme {
            g.validate()?;
        }
        if matches!(scheme, Scheme::Stripe | Scheme::Generic(_))
            && keys.iter().any(|k| !matches!(k, Key::Hmac(_)))
        {
            return Err("this scheme uses HMAC secrets only".into());
        }
        let alg = match &scheme {
            Scheme::Generic(g) => g.algorithm.hmac(),
            Scheme::Stripe | Scheme::Standard => hmac::HMAC_SHA256,
        };
        let macs = keys
            .iter()
            .map(|k| match k {
                Key::Hmac(secret) => Some(hmac::Key::new(alg, secret)),
                Key::Ed25519 { .. } => None,
            })
            .collect();
        Ok(Verifier {
            scheme,
            keys,
            macs,
            tolerance: tolerance_secs,
        })
    }

    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    fn check_time(&self, ts: i64, now: i64) -> Result<(), VerifyError> {
        let tol = i64::try_from(self.tolerance).unwrap_or(i64::MAX);
        if ts < now.saturating_sub(tol) {
            return Err(VerifyError::Stale);
        }
        if ts > now.saturating_add(tol) {
            return Err(VerifyError::Future);
        }
        Ok(())
    }

    /// Verify `body` (the raw bytes as received) with `headers` at `now`
    /// (Unix seconds). The signature is checked first, so a stale or future
    /// verdict means a genuinely signed but mistimed request.
    pub fn verify(
        &self,
        headers: &dyn HeaderLookup,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, VerifyError> {
        match &self.scheme {
            Scheme::Stripe => self.verify_stripe(headers, body, now),
            Scheme::Standard => self.verify_standard(headers, body, now),
            Scheme::Generic(g) => self.verify_generic(g, headers, body, now),
        }
    }

    fn verify_stripe(
        &self,
        headers: &dyn HeaderLookup,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, VerifyError> {
        const H: &str = "Stripe-Signature";
        let value = header(headers, H)?;
        let mut ts = None;
        let mut sigs = Vec::new();
        for item in value.split(',') {
            let (k, v) = item
                .trim()
                .split_once('=')
                .ok_or_else(|| VerifyError::Malformed(H.into()))?;
            match k {
                "t" => ts = Some(parse_ts(H, v)?),
                // A wrong-length or non-hex entry simply cannot match.
                "v1" if sigs.len() < MAX_SIGNATURES => {
                    if let Ok(b) = HEXLOWER_PERMISSIVE.decode(v.as_bytes()) {
                        sigs.push(b);
                    }
                }
                _ => {} // v0 and future schemes are ignored
            }
        }
        let ts = ts.ok_or_else(|| VerifyError::Malformed(H.into()))?;
        if sigs.is_empty() {
            return Err(VerifyError::BadSignature);
        }
        let t = ts.to_string();
        let mut ok = false;
        for mac in self.macs.iter().flatten() {
            let tag = mac_tag(mac, &[t.as_bytes(), b".", body]);
            for s in &sigs {
                ok |= bool::from(tag.as_ref().ct_eq(s.as_slice()));
            }
        }
        if !ok {
            return Err(VerifyError::BadSignature);
        }
        self.check_time(ts, now)?;
        Ok(Verified {
            id: None,
            timestamp: Some(ts),
        })
    }

    fn verify_standard(
        &self,
        headers: &dyn HeaderLookup,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, VerifyError> {
        let id = header(headers, "webhook-id")?;
        if id.is_empty() || id.len() > 256 {
            return Err(VerifyError::Malformed("webhook-id".into()));
        }
        let ts_text = header(headers, "webhook-timestamp")?;
        let ts = parse_ts("webhook-timestamp", ts_text)?;
        let sig_header = header(headers, "webhook-signature")?;
        let signed: Vec<&[u8]> = vec![id.as_bytes(), b".", ts_text.trim().as_bytes(), b".", body];
        let mut hmac_tags: Vec<Option<hmac::Tag>> = self.keys.iter().map(|_| None).collect();
        let mut content: Option<Vec<u8>> = None;
        let mut ok = false;
        for entry in sig_header
            .split(' ')
            .filter(|s| !s.is_empty())
            .take(MAX_SIGNATURES)
        {
            let Some((version, sig)) = entry.split_once(',') else {
                continue;
            };
            let Some(sig) = b64_decode(sig) else {
                continue;
            };
            for (i, key) in self.keys.iter().enumerate() {
                match (version, key) {
                    ("v1", Key::Hmac(_)) => {
                        let Some(mac) = &self.macs[i] else { continue };
                        let tag = hmac_tags[i].get_or_insert_with(|| mac_tag(mac, &signed));
                        ok |= bool::from(tag.as_ref().ct_eq(sig.as_slice()));
                    }
                    ("v1a", Key::Ed25519 { public, .. }) => {
                        let msg = content.get_or_insert_with(|| signed.concat());
                        ok |= signature::UnparsedPublicKey::new(&signature::ED25519, public)
                            .verify(msg, &sig)
                            .is_ok();
                    }
                    _ => {}
                }
            }
        }
        if !ok {
            return Err(VerifyError::BadSignature);
        }
        self.check_time(ts, now)?;
        Ok(Verified {
            id: Some(id.to_owned()),
            timestamp: Some(ts),
        })
    }

    fn verify_generic(
        &self,
        g: &Generic,
        headers: &dyn HeaderLookup,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, VerifyError> {
        let value = header(headers, &g.header)?.trim();
        let mac = value
            .strip_prefix(g.prefix.as_str())
            .ok_or_else(|| VerifyError::Malformed(g.header.clone()))?;
        let sig = match g.encoding {
            Encoding::Hex => HEXLOWER_PERMISSIVE.decode(mac.as_bytes()).ok(),
            Encoding::Base64 => b64_decode(mac).map(|z| z.to_vec()),
        }
        .ok_or_else(|| VerifyError::Malformed(g.header.clone()))?;
        let ts_text = match &g.timestamp_header {
            Some(h) => Some(header(headers, h)?.trim()),
            None => None,
        };
        let id = match &g.id_header {
            Some(h) => {
                let id = header(headers, h)?.trim();
                if id.is_empty() || id.len() > 256 {
                    return Err(VerifyError::Malformed(h.clone()));
                }
                Some(id)
            }
            None => None,
        };
        let content = g
            .template
            .pieces(id.unwrap_or(""), ts_text.unwrap_or(""), body);
        let mut ok = false;
        for mac in self.macs.iter().flatten() {
            let tag = mac_tag(mac, &content);
            ok |= bool::from(tag.as_ref().ct_eq(sig.as_slice()));
        }
        if !ok {
            return Err(VerifyError::BadSignature);
        }
        let timestamp = match (ts_text, &g.timestamp_header) {
            (Some(t), Some(h)) => {
                let ts = parse_ts(h, t)?;
                self.check_time(ts, now)?;
                Some(ts)
            }
            _ => None,
        };
        Ok(Verified {
            id: id.map(str::to_owned),
            timestamp,
        })
    }

    /// Headers that make `body` verify under this scheme, signed with the
    /// first key able to sign (for `tokengate webhooks sign` and tests).
    /// `id` is used where the scheme carries one.
    pub fn sign_headers(
        &self,
        id: &str,
        ts: i64,
        body: &[u8],
    ) -> Result<Vec<(String, String)>, String> {
        match &self.scheme {
            Scheme::Stripe => {
                let Some(Key::Hmac(k)) = self.keys.first() else {
                    return Err("no HMAC secret".into());
                };
                Ok(vec![(
                    "Stripe-Signature".into(),
                    stripe_header(k, ts, body),
                )])
            }
            Scheme::Standard => {
                let sig = self
                    .keys
                    .iter()
                    .find_map(|k| match k {
                        Key::Hmac(k) => Some(sign_v1(k, id, ts, body)),
                        Key::Ed25519 { seed: Some(s), .. } => sign_v1a(s, id, ts, body).ok(),
                        Key::Ed25519 { seed: None, .. } => None,
                    })
                    .ok_or(
                        "no secret can sign: whpk_ keys only verify; configure whsec_ or whsk_",
                    )?;
                Ok(standard_headers(id, ts, sig))
            }
            Scheme::Generic(g) => {
                let Some(Key::Hmac(k)) = self.keys.first() else {
                    return Err("no HMAC secret".into());
                };
                let ts_text = ts.to_string();
                let content = g.template.render(id, &ts_text, body);
                let tag = hmac_tag(g.algorithm.hmac(), k, &[&content]);
                let mac = match g.encoding {
                    Encoding::Hex => HEXLOWER.encode(tag.as_ref()),
                    Encoding::Base64 => BASE64.encode(tag.as_ref()),
                };
                let mut h = vec![(g.header.clone(), format!("{}{mac}", g.prefix))];
                if let Some(t) = &g.timestamp_header {
                    h.push((t.clone(), ts_text));
                }
                if let Some(i) = &g.id_header {
                    h.push((i.clone(), id.to_owned()));
                }
                Ok(h)
            }
        }
    }
}

/// `t=<ts>,v1=<hex HMAC-SHA256 of "<ts>.<body>">` with `secret`'s bytes.
pub fn stripe_header(secret: &[u8], ts: i64, body: &[u8]) -> String {
    let t = ts.to_string();
    let tag = hmac_tag(hmac::HMAC_SHA256, secret, &[t.as_bytes(), b".", body]);
    format!("t={t},v1={}", HEXLOWER.encode(tag.as_ref()))
}

/// A Standard Webhooks `v1,<base64>` signature with HMAC key bytes `key`.
pub fn sign_v1(key: &[u8], id: &str, ts: i64, body: &[u8]) -> String {
    let t = ts.to_string();
    let tag = hmac_tag(
        hmac::HMAC_SHA256,
        key,
        &[id.as_bytes(), b".", t.as_bytes(), b".", body],
    );
    format!("v1,{}", BASE64.encode(tag.as_ref()))
}

/// A Standard Webhooks `v1a,<base64>` (Ed25519) signature.
pub fn sign_v1a(seed: &[u8; 32], id: &str, ts: i64, body: &[u8]) -> Result<String, String> {
    let pair = signature::Ed25519KeyPair::from_seed_unchecked(seed)
        .map_err(|_| "not an Ed25519 seed".to_owned())?;
    let msg = [id.as_bytes(), b".", ts.to_string().as_bytes(), b".", body].concat();
    Ok(format!("v1a,{}", BASE64.encode(pair.sign(&msg).as_ref())))
}

/// `webhook-id`, `webhook-timestamp`, `webhook-signature`.
pub fn standard_headers(id: &str, ts: i64, signature: String) -> Vec<(String, String)> {
    vec![
        ("webhook-id".into(), id.to_owned()),
        ("webhook-timestamp".into(), ts.to_string()),
        ("webhook-signature".into(), signature),
    ]
}

/// A Standard Webhooks v1 signer (tokengate's deliveries to the app).
pub struct Signer {
    key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer([REDACTED])")
    }
}

impl Signer {
    /// From a `whsec_<base64>` secret.
    pub fn new(secret: &str) -> Result<Signer, String> {
        match Key::parse(&Scheme::Standard, secret)? {
            Key::Hmac(key) => Ok(Signer { key }),
            Key::Ed25519 { .. } => Err("the delivery secret must be a whsec_ secret".into()),
        }
    }

    /// The three Standard Webhooks headers for one delivery.
    pub fn headers(&self, id: &str, ts: i64, body: &[u8]) -> Vec<(String, String)> {
        standard_headers(id, ts, sign_v1(&self.key, id, ts, body))
    }
}

/// Stripe's event id: the top-level `"id"` string of the JSON body.
pub fn stripe_event_id(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Ev {
        id: String,
    }
    serde_json::from_slice::<Ev>(body)
        .ok()
        .map(|e| e.id)
        .filter(|id| !id.is_empty() && id.len() <= 256)
}

#[cfg(test)]
mod tests;

pub mod scrub;
