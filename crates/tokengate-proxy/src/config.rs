//! The `[proxy]` and `[outbound]` sections of the configuration file, and
//! their compiled form. Everything is checked when the file is loaded (and
//! on every reload); a bad reload keeps the rules in force.

use std::net::SocketAddr;
use std::path::PathBuf;

use regex::Regex;
use serde::Deserialize;

use crate::body::Selector;
use crate::jsonpath::JsonPath;

fn yes() -> bool {
    true
}

/// `[proxy]`: the inbound listener and its routes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Where the proxy listens (its own listener, apart from the API).
    pub listen: SocketAddr,
    /// HTTPS with the certificate store (SNI as on the API listener);
    /// `false` behind a PaaS router that terminates TLS.
    #[serde(default = "yes")]
    pub tls: bool,
    /// Largest request body, bytes (default 1 MiB); larger → 413.
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
    /// Time allowed for the upstream to answer, ms (default 30 s); → 504.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub inbound: Vec<InboundRoute>,
}

/// What to do with a selected value that is not a valid card number.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnInvalid {
    /// 422 `invalid_card_field` before the app sees anything.
    #[default]
    Reject,
    /// Pass it on as `[redacted]`.
    Redact,
}

/// What to do with something that looks like a card number outside the
/// selected fields.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SafetyNet {
    /// 422 `unexpected_card_data`.
    #[default]
    Reject,
    /// Replace it with a token.
    Tokenize,
    /// Let it through, and write an `alert` audit record.
    Alert,
    /// Do not look (responses only).
    Off,
}

/// What a field rule does.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FieldAction {
    /// Replace a card number with a token.
    Tokenize,
    /// Hold the CVC with the card number of the same object (or form
    /// group) for at most the CVC TTL, and replace it with that card's token.
    TokenizeCvc,
}

/// One field rule of an inbound route.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldRule {
    pub json: Option<String>,
    pub form: Option<String>,
    pub action: FieldAction,
    /// `opaque` (default) or `bin6_last4`.
    #[serde(default)]
    pub format: Option<String>,
    /// The same card number gets the same token.
    #[serde(default)]
    pub deterministic: bool,
}

/// Response processing of an inbound route.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseRules {
    /// Card numbers in the app's response: `off` (default), `reject` (502),
    /// `tokenize` or `alert`.
    #[serde(default = "net_off")]
    pub safety_net: SafetyNet,
}

fn net_off() -> SafetyNet {
    SafetyNet::Off
}

impl Default for ResponseRules {
    fn default() -> Self {
        ResponseRules {
            safety_net: SafetyNet::Off,
        }
    }
}

/// One `[[proxy.inbound]]` route.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundRoute {
    /// Used in metrics and audit records: letters, digits, `-`, `_`, `.`.
    pub name: String,
    pub path_prefix: Option<String>,
    pub path_regex: Option<String>,
    /// `Host` (port ignored), exact or `*.example.com`.
    pub host: Option<String>,
    /// Methods matched (all when empty).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Media type matched (`application/json`), parameters ignored.
    pub content_type: Option<String>,
    /// `http://` or `https://` base URL of the app.
    pub upstream: String,
    #[serde(default)]
    pub fields: Vec<FieldRule>,
    #[serde(default)]
    pub on_invalid: OnInvalid,
    #[serde(default)]
    pub safety_net: SafetyNet,
    /// Remove `path_prefix` before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
    pub timeout_ms: Option<u64>,
    pub max_body_bytes: Option<usize>,
    /// PEM roots for an https upstream (system roots otherwise).
    pub upstream_ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for an upstream that wants mTLS.
    pub upstream_client_cert: Option<PathBuf>,
    pub upstream_client_key: Option<PathBuf>,
    #[serde(default)]
    pub response: ResponseRules,
}

/// `[outbound]`: processors the app may reach through the relay.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// An HTTP forward proxy (plain HTTP, `CONNECT`): TLS toward a
    /// configured processor's host is intercepted with the outbound CA and
    /// its reveal rules applied; `tunnel` hosts are tunneled untouched;
    /// anything else is refused.
    pub listen: Option<SocketAddr>,
    /// `host:port` the forward proxy may tunnel without interception (no
    /// card data can be revealed into them).
    #[serde(default)]
    pub tunnel: Vec<String>,
    /// Time allowed for a processor to answer, ms (default 30 s).
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub processors: Vec<Processor>,
}

/// Which part of a card a reveal rule puts in.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RevealPart {
    #[default]
    Number,
    /// The CVC, if still held (once; it is deleted when revealed).
    Cvc,
}

/// One reveal rule: where the app put a token that the processor must
/// receive as a card number.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevealRule {
    pub json: Option<String>,
    pub form: Option<String>,
    pub header: Option<String>,
    #[serde(default)]
    pub reveal: RevealPart,
}

/// One `[[outbound.processors]]` entry: the only places card numbers go.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Processor {
    /// `/relay/{name}/…`.
    pub name: String,
    /// `https://api.processor.example` (a path prefix is allowed).
    pub base_url: String,
    #[serde(default)]
    pub reveal: Vec<RevealRule>,
    /// Allow addresses in private, loopback, link-local and other
    /// non-public ranges (SSRF guard; off by default).
    #[serde(default)]
    pub allow_private: bool,
    /// Allow `base_url` to be an IP literal (off by default).
    #[serde(default)]
    pub allow_ip_literal: bool,
    /// PEM roots for the processor (system roots otherwise).
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Card numbers in the processor's response are tokenized before the
    /// app sees them (default on).
    #[serde(default = "yes")]
    pub tokenize_response: bool,
}

/// A problem in the proxy configuration, naming the setting.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RuleError {
    pub field: String,
    pub message: String,
}

fn rerr(field: impl Into<String>, message: impl Into<String>) -> RuleError {
    RuleError {
        field: field.into(),
        message: message.into(),
    }
}

/// A compiled inbound route.
#[derive(Clone, Debug)]
pub struct Route {
    pub cfg: InboundRoute,
    pub path_regex: Option<Regex>,
    pub methods: Vec<String>,
    pub selectors: Vec<Selector>,
    /// Upstream base without a trailing `/`.
    pub upstream: String,
}

/// A compiled processor.
#[derive(Clone, Debug)]
pub struct CompiledProcessor {
    pub cfg: Processor,
    pub base: String,
    /// Host (lower case, no brackets) and port of `base`: what a `CONNECT`
    /// to this processor names.
    pub host: String,
    pub port: u16,
    pub selectors: Vec<Selector>,
    /// Header names (lower case) with the part they reveal.
    pub headers: Vec<(String, RevealPart)>,
    /// Reveal part per selector.
    pub parts: Vec<RevealPart>,
}

/// Names used as metric labels and in audit records.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !tokengate_core::contains_pan_like(name)
}

fn selector(
    field: &str,
    json: &Option<String>,
    form: &Option<String>,
) -> Result<Selector, RuleError> {
    match (json, form) {
        (Some(p), None) => JsonPath::parse(p)
            .map(Selector::Json)
            .map_err(|e| rerr(field, e.to_string())),
        (None, Some(f)) if !f.is_empty() => Ok(Selector::Form(f.clone())),
        _ => Err(rerr(field, "give exactly one of `json` or `form`")),
    }
}

fn base_url(field: &str, url: &str) -> Result<String, RuleError> {
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err(rerr(field, "must start with http:// or https://"));
    }
    if url.contains(['?', '#']) {
        return Err(rerr(field, "must not hold a query or fragment"));
    }
    let rest = &url[url.find("://").map_or(0, |i| i + 3)..];
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return Err(rerr(field, "needs a host and no user info"));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// Host and port of a checked base URL.
fn authority(base: &str) -> (String, u16) {
    let https = base.to_ascii_lowercase().starts_with("https://");
    let rest = &base[base.find("://").map_or(0, |i| i + 3)..];
    let auth = rest.split('/').next().unwrap_or("");
    let (host, port) = if let Some(v6) = auth.strip_prefix('[') {
        let (h, after) = v6.split_once(']').unwrap_or((v6, ""));
        (h, after.strip_prefix(':'))
    } else {
        match auth.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (auth, None),
        }
    };
    let default = if https { 443 } else { 80 };
    (
        host.to_ascii_lowercase(),
        port.and_then(|p| p.parse().ok()).unwrap_or(default),
    )
}

impl ProxyConfig {
    /// Check and compile the routes.
    pub fn compile(&self) -> Result<Vec<Route>, RuleError> {
        let mut names = std::collections::HashSet::new();
        self.inbound
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let at = format!("proxy.inbound[{i}]");
                if !valid_name(&r.name) {
                    return Err(rerr(
                        format!("{at}.name"),
                        "1–64 letters, digits, `-`, `_` or `.` (and not a card number)",
                    ));
                }
                if !names.insert(r.name.clone()) {
                    return Err(rerr(format!("{at}.name"), "two routes have this name"));
                }
                if let Some(p) = &r.path_prefix {
                    if !p.starts_with('/') {
                        return Err(rerr(format!("{at}.path_prefix"), "must start with `/`"));
                    }
                    if p.starts_with("/relay/") || p == "/relay" {
                        return Err(rerr(
                            format!("{at}.path_prefix"),
                            "`/relay/` is reserved for the outbound relay",
                        ));
                    }
                }
                if r.strip_prefix && r.path_prefix.is_none() {
                    return Err(rerr(format!("{at}.strip_prefix"), "needs `path_prefix`"));
                }
                let path_regex = r
                    .path_regex
                    .as_deref()
                    .map(Regex::new)
                    .transpose()
                    .map_err(|e| rerr(format!("{at}.path_regex"), e.to_string()))?;
                let selectors = r
                    .fields
                    .iter()
                    .enumerate()
                    .map(|(j, f)| {
                        let fat = format!("{at}.fields[{j}]");
                        if let Some(fmt) = &f.format
                            && tokengate_core::TokenFormat::from_name(fmt).is_none()
                        {
                            return Err(rerr(
                                format!("{fat}.format"),
                                "must be `opaque` or `bin6_last4`",
                            ));
                        }
                        selector(&fat, &f.json, &f.form)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if r.fields
                    .iter()
                    .any(|f| f.action == FieldAction::TokenizeCvc)
                    && !r.fields.iter().any(|f| f.action == FieldAction::Tokenize)
                {
                    return Err(rerr(
                        format!("{at}.fields"),
                        "`tokenize_cvc` needs a `tokenize` field for the card number it belongs to",
                    ));
                }
                if r.safety_net == SafetyNet::Off {
                    return Err(rerr(
                        format!("{at}.safety_net"),
                        "the request safety net cannot be turned off; use `alert` to only report",
                    ));
                }
                let upstream = base_url(&format!("{at}.upstream"), &r.upstream)?;
                if r.upstream_client_cert.is_some() != r.upstream_client_key.is_some() {
                    return Err(rerr(
                        format!("{at}.upstream_client_cert"),
                        "give both the client certificate and its key",
                    ));
                }
                let methods = r.methods.iter().map(|m| m.to_ascii_uppercase()).collect();
                Ok(Route {
                    cfg: r.clone(),
                    path_regex,
                    methods,
                    selectors,
                    upstream,
                })
            })
            .collect()
    }
}

impl OutboundConfig {
    /// Check and compile the processors.
    pub fn compile(&self) -> Result<Vec<CompiledProcessor>, RuleError> {
        for (i, t) in self.tunnel.iter().enumerate() {
            let ok = t
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                return Err(rerr(format!("outbound.tunnel[{i}]"), "must be host:port"));
            }
        }
        let mut names = std::collections::HashSet::new();
        self.processors
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let at = format!("outbound.processors[{i}]");
                if !valid_name(&p.name) {
                    return Err(rerr(
                        format!("{at}.name"),
                        "1–64 letters, digits, `-`, `_` or `.` (and not a card number)",
                    ));
                }
                if !names.insert(p.name.clone()) {
                    return Err(rerr(format!("{at}.name"), "two processors have this name"));
                }
                let base = base_url(&format!("{at}.base_url"), &p.base_url)?;
                if p.client_cert.is_some() != p.client_key.is_some() {
                    return Err(rerr(
                        format!("{at}.client_cert"),
                        "give both the client certificate and its key",
                    ));
                }
                let mut selectors = Vec::new();
                let mut parts = Vec::new();
                let mut headers = Vec::new();
                for (j, r) in p.reveal.iter().enumerate() {
                    let rat = format!("{at}.reveal[{j}]");
                    match (&r.header, &r.json, &r.form) {
                        (Some(h), None, None) => {
                            if h.is_empty()
                                || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                            {
                                return Err(rerr(rat, "`header` must be a header name"));
                            }
                            headers.push((h.to_ascii_lowercase(), r.reveal));
                        }
                        (None, _, _) => {
                            selectors.push(selector(&rat, &r.json, &r.form)?);
                            parts.push(r.reveal);
                        }
                        _ => {
                            return Err(rerr(
                                rat,
                                "give exactly one of `json`, `form` or `header`",
                            ));
                        }
                    }
                }
                let (host, port) = authority(&base);
                Ok(CompiledProcessor {
                    cfg: p.clone(),
                    host,
                    port,
                    base,
                    selectors,
                    headers,
                    parts,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        proxy: ProxyConfig,
        #[serde(default)]
        outbound: OutboundConfig,
    }

    #[test]
    fn the_documented_shape_loads() {
        let f: File = toml::from_str(
            r#"
[proxy]
listen = "127.0.0.1:9443"
[[proxy.inbound]]
name = "checkout"
path_prefix = "/checkout"
upstream = "http://127.0.0.1:9000"
fields = [{ json = "$.card.number", action = "tokenize", format = "opaque" },
          { json = "$.card.cvc", action = "tokenize_cvc" },
          { form = "card[number]", action = "tokenize" }]
[[outbound.processors]]
name = "acquirer"
base_url = "https://api.acquirer.example/v1/"
reveal = [{ form = "card[number]" }, { json = "$.source.cvc", reveal = "cvc" }, { header = "X-Card" }]
"#,
        )
        .unwrap();
        assert!(f.proxy.tls);
        let routes = f.proxy.compile().unwrap();
        assert_eq!(routes[0].selectors.len(), 3);
        let p = f.outbound.compile().unwrap();
        assert_eq!(p[0].base, "https://api.acquirer.example/v1");
        assert_eq!(
            p[0].headers,
            vec![("x-card".to_owned(), RevealPart::Number)]
        );
        assert_eq!(p[0].parts, vec![RevealPart::Number, RevealPart::Cvc]);
    }

    fn route_err(extra: &str) -> String {
        let text = format!(
            "[proxy]\nlisten = \"127.0.0.1:1\"\n[[proxy.inbound]]\nname = \"r\"\nupstream = \"http://a\"\n{extra}"
        );
        match toml::from_str::<File>(&text) {
            Err(e) => e.to_string(),
            Ok(f) => f.proxy.compile().unwrap_err().to_string(),
        }
    }

    #[test]
    fn bad_routes_are_refused_with_the_field_named() {
        for (extra, want) in [
            (
                "fields = [{ json = \"card.number\", action = \"tokenize\" }]",
                "fields[0]",
            ),
            (
                "fields = [{ json = \"$.a\", form = \"a\", action = \"tokenize\" }]",
                "exactly one",
            ),
            (
                "fields = [{ json = \"$.a\", action = \"tokenize_cvc\" }]",
                "tokenize_cvc",
            ),
            (
                "fields = [{ json = \"$.a\", action = \"tokenize\", format = \"x\" }]",
                "format",
            ),
            ("path_prefix = \"/relay/x\"", "reserved"),
            ("path_prefix = \"x\"", "path_prefix"),
            ("path_regex = \"(\"", "path_regex"),
            ("safety_net = \"off\"", "cannot be turned off"),
            ("strip_prefix = true", "strip_prefix"),
            ("typo = 1", "unknown field"),
        ] {
            let e = route_err(extra);
            assert!(e.contains(want), "{extra}: {e}");
        }
        let bad_name = "[proxy]\nlisten = \"127.0.0.1:1\"\n[[proxy.inbound]]\nname = \"4111111111111111\"\nupstream = \"http://a\"\n";
        let f: File = toml::from_str(bad_name).unwrap();
        assert!(f.proxy.compile().unwrap_err().to_string().contains("name"));
        for bad in ["ftp://a", "http://u@a", "http://a/?q", "http://"] {
            assert!(base_url("x", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn authorities_and_tunnels() {
        assert_eq!(
            authority("https://API.example.com/v1"),
            ("api.example.com".into(), 443)
        );
        assert_eq!(authority("http://a:8080"), ("a".into(), 8080));
        assert_eq!(authority("https://[::1]:9443/x"), ("::1".into(), 9443));
        let o = OutboundConfig {
            tunnel: vec!["nohost".into()],
            ..OutboundConfig::default()
        };
        assert!(o.compile().unwrap_err().to_string().contains("host:port"));
    }
}
