//! The `[webhooks]` configuration section, validated before anything binds.
//!
//! ```toml
//! [[webhooks.sources]]
//! name = "stripe"
//! kind = "stripe"
//! secrets = ["whsec_…"]
//! [webhooks.deliver]
//! url = "http://127.0.0.1:9100/hooks"
//! secret = "whsec_…"
//! ```

use std::collections::BTreeSet;

use serde::Deserialize;
use tokengate_webhooks::{Algorithm, Encoding, Generic, Key, Scheme, Template, Verifier};
use zeroize::Zeroizing;

/// A secret from the configuration file: zeroized, never printed.
#[derive(Clone)]
pub struct SecretString(Zeroizing<String>);

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| SecretString(Zeroizing::new(s)))
    }
}

impl SecretString {
    pub fn new(s: &str) -> SecretString {
        SecretString(Zeroizing::new(s.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// Signature scheme of a source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Stripe,
    Standard,
    Generic,
}

/// Card fields in a source's payload that are tokenized through the vault
/// (JSON pointers, e.g. `/data/object/card/number`). The token replaces the
/// number; a number that cannot be tokenized is masked instead.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardFields {
    pub number: String,
    pub exp_month: String,
    pub exp_year: String,
}

fn d_tolerance() -> u64 {
    tokengate_webhooks::DEFAULT_TOLERANCE_SECS
}
fn d_body() -> usize {
    256 * 1024
}
fn d_rate() -> u32 {
    1000
}

/// One `[[webhooks.sources]]` entry: `POST /webhooks/{name}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// URL segment and audit/metric label: `[a-z0-9_-]`, 1–64 characters.
    pub name: String,
    pub kind: SourceKind,
    /// Several for rotation: a signature made with any of them verifies.
    pub secrets: Vec<SecretString>,
    /// Seconds a signed timestamp may be off, either way (default 300).
    #[serde(default = "d_tolerance")]
    pub tolerance_secs: u64,
    /// Largest body accepted (default 256 KiB).
    #[serde(default = "d_body")]
    pub max_body_bytes: usize,
    /// Requests per second accepted from this source (token bucket, burst
    /// of the same size); more get 429.
    #[serde(default = "d_rate")]
    pub rate_limit_per_sec: u32,
    /// Generic: the header holding the signature.
    #[serde(default)]
    pub header: Option<String>,
    /// Generic: `sha256` (default) or `sha512`.
    #[serde(default)]
    pub algorithm: Option<String>,
    /// Generic: `hex` (default) or `base64`.
    #[serde(default)]
    pub encoding: Option<String>,
    /// Generic: text before the MAC in the header (e.g. `sha256=`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Generic: what is signed, from `{body}`, `{timestamp}`, `{id}`
    /// (default `{body}`).
    #[serde(default)]
    pub signed_content: Option<String>,
    /// Generic: header with the Unix-seconds timestamp (tolerance checked).
    #[serde(default)]
    pub timestamp_header: Option<String>,
    /// Generic: header with the event id (idempotency); without it the id
    /// is the SHA-256 of the body.
    #[serde(default)]
    pub id_header: Option<String>,
    /// Card fields tokenized through the vault before the event is stored.
    #[serde(default)]
    pub tokenize: Vec<CardFields>,
}

impl SourceConfig {
    fn scheme(&self) -> Result<Scheme, (String, String)> {
        let f = |k: &str| format!("webhooks.sources[{}].{k}", self.name);
        Ok(match self.kind {
            SourceKind::Stripe => Scheme::Stripe,
            SourceKind::Standard => Scheme::Standard,
            SourceKind::Generic => {
                let header = self.header.clone().ok_or_else(|| {
                    (
                        f("header"),
                        "kind = \"generic\" needs the signature header name".to_owned(),
                    )
                })?;
                let algorithm = match self.algorithm.as_deref().unwrap_or("sha256") {
                    "sha256" => Algorithm::Sha256,
                    "sha512" => Algorithm::Sha512,
                    _ => return Err((f("algorithm"), "must be `sha256` or `sha512`".into())),
                };
                let encoding = match self.encoding.as_deref().unwrap_or("hex") {
                    "hex" => Encoding::Hex,
                    "base64" => Encoding::Base64,
                    _ => return Err((f("encoding"), "must be `hex` or `base64`".into())),
                };
                let template = Template::parse(self.signed_content.as_deref().unwrap_or("{body}"))
                    .map_err(|m| (f("signed_content"), m))?;
                let g = Generic {
                    header,
                    algorithm,
                    encoding,
                    prefix: self.prefix.clone().unwrap_or_default(),
                    template,
                    timestamp_header: self.timestamp_header.clone(),
                    id_header: self.id_header.clone(),
                };
                g.validate().map_err(|m| (f("signed_content"), m))?;
                Scheme::Generic(g)
            }
        })
    }

    /// The verifier for this source.
    pub fn verifier(&self) -> Result<Verifier, (String, String)> {
        let scheme = self.scheme()?;
        let field = format!("webhooks.sources[{}].secrets", self.name);
        let keys = self
            .secrets
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Key::parse(&scheme, s.expose())
                    .map_err(|m| (field.clone(), format!("secret {}: {m}", i + 1)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Verifier::new(scheme, keys, self.tolerance_secs).map_err(|m| (field.clone(), m))
    }
}

fn d_attempts() -> u32 {
    15
}
fn d_base_ms() -> u64 {
    1000
}
fn d_max_secs() -> u64 {
    3600
}
fn d_timeout() -> u64 {
    10
}

/// `[webhooks.deliver]`: the application that receives verified events,
/// re-signed with Standard Webhooks v1.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverConfig {
    /// `http://` or `https://` URL the events are POSTed to.
    pub url: String,
    /// `whsec_…`: the app verifies deliveries with it.
    pub secret: SecretString,
    /// Attempts before an event is dead-lettered (default 15).
    #[serde(default = "d_attempts")]
    pub max_attempts: u32,
    /// First retry delay in ms (doubles per attempt, with jitter; default 1000).
    #[serde(default = "d_base_ms")]
    pub backoff_base_ms: u64,
    /// Longest delay between attempts in seconds (default 3600).
    #[serde(default = "d_max_secs")]
    pub backoff_max_secs: u64,
    /// Per-attempt timeout in seconds (default 10).
    #[serde(default = "d_timeout")]
    pub timeout_secs: u64,
}

fn d_subject() -> String {
    "tokengate.webhooks".into()
}
fn d_stream() -> String {
    "TOKENGATE_WEBHOOKS".into()
}

/// `[webhooks.nats]`: publish every verified event to NATS JetStream on
/// `<subject>.<source>`, with `Nats-Msg-Id` for de-duplication, waiting
/// for the stream's acknowledgement.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// `nats://host:port`.
    pub url: String,
    /// Subject prefix (default `tokengate.webhooks`).
    #[serde(default = "d_subject")]
    pub subject: String,
    /// Stream created (if missing) over `<subject>.>` (default `TOKENGATE_WEBHOOKS`).
    #[serde(default = "d_stream")]
    pub stream: String,
    #[serde(default = "d_attempts")]
    pub max_attempts: u32,
    #[serde(default = "d_base_ms")]
    pub backoff_base_ms: u64,
    #[serde(default = "d_max_secs")]
    pub backoff_max_secs: u64,
}

/// The `[webhooks]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksSection {
    pub sources: Vec<SourceConfig>,
    pub deliver: Option<DeliverConfig>,
    pub nats: Option<NatsConfig>,
    /// Hours a delivered event (and so its id, for idempotency) is kept
    /// (default 72).
    pub retention_hours: u64,
}

impl Default for WebhooksSection {
    fn default() -> Self {
        WebhooksSection {
            sources: Vec::new(),
            deliver: None,
            nats: None,
            retention_hours: 72,
        }
    }
}

/// A source name usable in a URL, an audit identifier and a metric label.
pub fn valid_source_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && !tokengate_core::contains_pan_like(name)
}

impl WebhooksSection {
    /// Check every setting; `Err((field, message))`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let mut names = BTreeSet::new();
        for s in &self.sources {
            if !valid_source_name(&s.name) {
                return Err((
                    "webhooks.sources.name".into(),
                    "must be 1-64 characters of a-z, 0-9, `_` and `-`".into(),
                ));
            }
            if !names.insert(s.name.as_str()) {
                return Err((
                    "webhooks.sources".into(),
                    format!("two sources are named {:?}", s.name),
                ));
            }
            let f = |k: &str| format!("webhooks.sources[{}].{k}", s.name);
            if s.secrets.is_empty() {
                return Err((f("secrets"), "at least one secret is needed".into()));
            }
            if !(1..=3600).contains(&s.tolerance_secs) {
                return Err((f("tolerance_secs"), "must be 1-3600".into()));
            }
            if !(1..=16 * 1024 * 1024).contains(&s.max_body_bytes) {
                return Err((f("max_body_bytes"), "must be 1-16777216".into()));
            }
            if s.rate_limit_per_sec == 0 {
                return Err((f("rate_limit_per_sec"), "must be at least 1".into()));
            }
            if s.kind != SourceKind::Generic
                && (s.header.is_some()
                    || s.algorithm.is_some()
                    || s.encoding.is_some()
                    || s.prefix.is_some()
                    || s.signed_content.is_some()
                    || s.timestamp_header.is_some()
                    || s.id_header.is_some())
            {
                return Err((
                    f("kind"),
                    "header, algorithm, encoding, prefix, signed_content, timestamp_header and id_header are for kind = \"generic\"".into(),
                ));
            }
            for t in &s.tokenize {
                for p in [&t.number, &t.exp_month, &t.exp_year] {
                    if !p.starts_with('/') {
                        return Err((
                            f("tokenize"),
                            format!("{p:?} is not a JSON pointer (e.g. /card/number)"),
                        ));
                    }
                }
            }
            s.verifier()?;
        }
        if let Some(d) = &self.deliver {
            if !(d.url.starts_with("http://") || d.url.starts_with("https://")) {
                return Err((
                    "webhooks.deliver.url".into(),
                    "must be an http:// or https:// URL".into(),
                ));
            }
            tokengate_webhooks::Signer::new(d.secret.expose())
                .map_err(|m| ("webhooks.deliver.secret".to_owned(), m))?;
            check_retry(
                "webhooks.deliver",
                d.max_attempts,
                d.backoff_base_ms,
                d.backoff_max_secs,
            )?;
            if !(1..=300).contains(&d.timeout_secs) {
                return Err((
                    "webhooks.deliver.timeout_secs".into(),
                    "must be 1-300".into(),
                ));
            }
        }
        if let Some(n) = &self.nats {
            if !n.url.starts_with("nats://") && !n.url.starts_with("tls://") {
                return Err((
                    "webhooks.nats.url".into(),
                    "must be a nats:// or tls:// URL".into(),
                ));
            }
            let token = |s: &str| {
                !s.is_empty()
                    && s.split('.').all(|t| {
                        !t.is_empty()
                            && t.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                    })
            };
            if !token(&n.subject) {
                return Err((
                    "webhooks.nats.subject".into(),
                    "must be dot-separated tokens of letters, digits, `_`, `-`".into(),
                ));
            }
            if n.stream.is_empty()
                || !n
                    .stream
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err((
                    "webhooks.nats.stream".into(),
                    "must be letters, digits, `_`, `-`".into(),
                ));
            }
            check_retry(
                "webhooks.nats",
                n.max_attempts,
                n.backoff_base_ms,
                n.backoff_max_secs,
            )?;
        }
        if !(1..=24 * 366).contains(&self.retention_hours) {
            return Err(("webhooks.retention_hours".into(), "must be 1-8784".into()));
        }
        Ok(())
    }
}

fn check_retry(
    section: &str,
    attempts: u32,
    base_ms: u64,
    max_secs: u64,
) -> Result<(), (String, String)> {
    if !(1..=1000).contains(&attempts) {
        return Err((format!("{section}.max_attempts"), "must be 1-1000".into()));
    }
    if !(10..=3_600_000).contains(&base_ms) {
        return Err((
            format!("{section}.backoff_base_ms"),
            "must be 10-3600000".into(),
        ));
    }
    if !(1..=86_400).contains(&max_secs) {
        return Err((
            format!("{section}.backoff_max_secs"),
            "must be 1-86400".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::collections::HashMap;

    fn load(toml: &str) -> Result<Config, crate::config::ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, toml).unwrap();
        Config::load(Some(&f), &HashMap::<String, String>::new())
    }

    #[test]
    fn the_issue_example_loads() {
        let c = load(
            r#"
[[webhooks.sources]]
name = "stripe"
kind = "stripe"                 # Stripe-Signature: t=…,v1=…
secrets = ["whsec_abc"]         # several secrets per source, for rotation
[[webhooks.sources]]
name = "std"
kind = "standard"
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
[webhooks.deliver]
url = "http://127.0.0.1:9100/hooks"   # the app
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
"#,
        )
        .unwrap();
        assert_eq!(c.webhooks.sources.len(), 2);
        assert_eq!(c.webhooks.sources[0].tolerance_secs, 300);
        assert!(
            !format!("{c:?}").contains("whsec_abc"),
            "secrets are not printed"
        );
    }

    #[test]
    fn bad_settings_name_the_field() {
        let e = load(
            "[[webhooks.sources]]\nname = \"Bad Name\"\nkind = \"stripe\"\nsecrets = [\"x\"]\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "webhooks.sources.name");
        let e = load(
            "[[webhooks.sources]]\nname = \"s\"\nkind = \"standard\"\nsecrets = [\"whsec_***\"]\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "webhooks.sources[s].secrets");
        let e = load("[[webhooks.sources]]\nname = \"g\"\nkind = \"generic\"\nsecrets = [\"k\"]\n")
            .unwrap_err();
        assert_eq!(e.field, "webhooks.sources[g].header");
        let e = load("[[webhooks.sources]]\nname = \"g\"\nkind = \"generic\"\nheader = \"X-Sig\"\nsigned_content = \"{timestamp}.{body}\"\nsecrets = [\"k\"]\n").unwrap_err();
        assert_eq!(e.field, "webhooks.sources[g].signed_content");
        let e = load("[[webhooks.sources]]\nname = \"s\"\nkind = \"stripe\"\nheader = \"X\"\nsecrets = [\"k\"]\n").unwrap_err();
        assert_eq!(e.field, "webhooks.sources[s].kind");
        let e =
            load("[webhooks.deliver]\nurl = \"ftp://x\"\nsecret = \"whsec_YWJj\"\n").unwrap_err();
        assert_eq!(e.field, "webhooks.deliver.url");
        let e = load("[webhooks.deliver]\nurl = \"http://x\"\nsecret = \"plain\"\n").unwrap_err();
        assert_eq!(e.field, "webhooks.deliver.secret");
        let e = load("[webhooks.nats]\nurl = \"nats://127.0.0.1:4222\"\nsubject = \"a..b\"\n")
            .unwrap_err();
        assert_eq!(e.field, "webhooks.nats.subject");
        let e = load("[[webhooks.sources]]\nname = \"s\"\nkind = \"stripe\"\nsecrets = [\"k\"]\n[[webhooks.sources]]\nname = \"s\"\nkind = \"stripe\"\nsecrets = [\"k\"]\n").unwrap_err();
        assert_eq!(e.field, "webhooks.sources");
        let c = load("[[webhooks.sources]]\nname = \"g\"\nkind = \"generic\"\nheader = \"X-Sig\"\nalgorithm = \"sha512\"\nencoding = \"base64\"\nprefix = \"sha512=\"\nsigned_content = \"{timestamp}.{body}\"\ntimestamp_header = \"X-Ts\"\nsecrets = [\"k\"]\n").unwrap();
        assert!(c.webhooks.sources[0].verifier().is_ok());
    }
}
