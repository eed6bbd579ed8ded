//! Configuration: an optional TOML file, then `TOKENGATE_*` environment
//! variables, then the PaaS conventions `PORT` and `DATABASE_URL`, then
//! command-line flags (applied by the CLI). Validation happens here, before
//! anything binds a port or touches a file; errors name the field.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where environment variables come from (a map in tests).
pub trait Env {
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Env for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Everything `serve` needs.
/// The `[audit]` table of the configuration file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    pub drains: Vec<crate::drain::DrainConfig>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub data_dir: PathBuf,
    /// `host:port` to serve HTTPS on.
    pub listen: Option<SocketAddr>,
    /// `postgres://…` for PostgreSQL; the SQLite file in `data_dir` otherwise.
    pub database_url: Option<String>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Seconds a CVC is held at most (1–3600).
    pub cvc_ttl_secs: u64,
    /// Seconds between sweeps for expired CVCs.
    pub cvc_sweep_secs: u64,
    /// Seconds between signed audit checkpoints (made only when new records
    /// were written).
    pub audit_checkpoint_secs: u64,
    /// Also sign a checkpoint as soon as this many records wait (0: by time only).
    pub audit_checkpoint_records: u64,
    /// Request fields stored in audit records only as keyed hashes
    /// (`client_ip`, `user_agent`); `tokengate audit hash VALUE` correlates.
    pub audit_hmac_fields: Vec<String>,
    /// Failed authentications for one API-key id within
    /// `auth_lockout_window_secs` that lock it (0: never; PCI DSS 8.3.4: ≤ 10).
    pub auth_lockout_key_threshold: u32,
    /// The same for one client address (0: never).
    pub auth_lockout_ip_threshold: u32,
    pub auth_lockout_window_secs: u64,
    /// How long a lock lasts (PCI DSS 8.3.4: ≥ 30 minutes).
    pub auth_lockout_secs: u64,
    /// Audit records are kept at least this many days, then archived and
    /// pruned (PCI DSS 10.5.1: 12 months).
    pub audit_retention_days: u64,
    /// Where alert records (failed-auth lockouts, reveal-rate spikes, drain
    /// down, verify failures) are POSTed as they happen (https only; an HTTPS
    /// drain limited to `alert` records, with its own cursor).
    pub alert_webhook_url: Option<String>,
    /// CA (PEM) for `alert_webhook_url`; the system roots when absent.
    pub alert_webhook_ca_file: Option<PathBuf>,
    /// Reveals by one API key within a minute that raise a `reveal_rate`
    /// alert (0: never).
    pub reveal_alert_per_minute: u32,
    /// `[audit]` section: `[[audit.drains]]` (see `drain::DrainConfig`).
    pub audit: AuditSection,
    /// `[proxy]`: the inbound tokenizing proxy (its own listener and routes;
    /// routes are reloaded from the file without restart).
    pub proxy: Option<tokengate_proxy::ProxyConfig>,
    /// `[outbound]`: processors reachable through the relay.
    pub outbound: tokengate_proxy::OutboundConfig,
    /// The file this configuration came from (for reloads); not a setting.
    #[serde(skip)]
    pub source_file: Option<PathBuf>,
    /// `[webhooks]` section: `[[webhooks.sources]]`, `[webhooks.deliver]`,
    /// `[webhooks.nats]` (see `webhooks::config`).
    pub webhooks: crate::webhooks::config::WebhooksSection,
    pub log_format: LogFormat,
    /// Replaced by the certificate store (`tokengate certs add`); setting
    /// either is a configuration error that says so.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Certificate (by name) for clients whose SNI matches no domain, and
    /// for clients that send no SNI (those connecting by IP address).
    pub tls_default_cert: String,
    /// What to do with such clients: serve `tls_default_cert`, or refuse
    /// the handshake.
    pub tls_unknown_sni: UnknownSni,
    /// How often a running server checks the store for certificate and
    /// domain changes, in milliseconds (100–10000).
    pub tls_reload_ms: u64,
    /// How often certificate expiry is checked (metric, warnings), seconds.
    pub tls_expiry_check_secs: u64,
    /// How often a running server checks the store for key-ring changes
    /// (a rotation by the CLI or another node), in milliseconds (100–10000).
    pub key_reload_ms: u64,
    /// Cryptoperiod of the data KEK (wraps record DEKs), days; 0: none.
    /// `serve` warns (log + audit alert) when the active version is older.
    pub data_key_cryptoperiod_days: u64,
    /// Cryptoperiod of the PAN fingerprint key, days; 0: none.
    pub fingerprint_key_cryptoperiod_days: u64,
    /// Cryptoperiod of the CVC key, days; 0: none.
    pub cvc_key_cryptoperiod_days: u64,
    /// Rotate a key automatically when its cryptoperiod is exceeded (records
    /// move to the new version with `tokengate keys rewrap`).
    pub key_auto_rotate: bool,
    /// Lock every page of the `serve` process in RAM (`mlockall`), so that
    /// card data and keys in memory never reach swap; `serve` refuses to
    /// start if the lock fails. Off: a warning when the host has swap.
    pub lock_memory: bool,
    /// Optional plain-HTTP listener that only redirects to HTTPS (308),
    /// except ACME HTTP-01 paths.
    pub http_listen: Option<SocketAddr>,
    /// HTTPS port written in redirects; default: the port of `listen`
    /// (omitted when it is 443).
    pub public_https_port: Option<u16>,
    /// Behind a proxy or PaaS router: take the client address and scheme
    /// from X-Forwarded-For / X-Forwarded-Proto, only when the connection
    /// comes from `trusted_proxies`.
    pub behind_proxy: bool,
    /// CIDR blocks (`10.0.0.0/8`, `::1/128`) of the proxies to trust.
    pub trusted_proxies: Vec<String>,
    /// ACME directory (`https://…/directory`); ACME is off without it.
    pub acme_directory_url: Option<String>,
    /// PEM root of the ACME server's own HTTPS certificate (test CAs such
    /// as Pebble); the system roots otherwise.
    pub acme_ca_root: Option<PathBuf>,
    /// ACME account contact, e.g. `mailto:ops@example.com`.
    pub acme_contact: Option<String>,
    /// How often due orders and renewals are looked for, seconds.
    pub acme_check_secs: u64,
    /// First retry delay after a failed order, seconds (doubles per failure).
    pub acme_retry_secs: u64,
    /// The challenge answered for ordinary (non-wildcard) domains.
    pub acme_challenge: AcmeChallenge,
    /// Command that publishes and withdraws DNS-01 TXT records (called as
    /// `HOOK present|cleanup DOMAIN RECORD_NAME VALUE`). Needed for
    /// `acme_challenge = "dns-01"` and for wildcard domains.
    pub acme_dns_hook: Option<PathBuf>,
    /// Seconds to wait after the hook published a record before the CA is
    /// asked to look (DNS propagation), 0-3600.
    pub acme_dns_wait_secs: u64,
}

/// The ACME challenge type tokengate answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
pub enum AcmeChallenge {
    /// A file on the plain-HTTP listener (port 80).
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    /// A challenge certificate on the HTTPS listener (port 443), to clients
    /// that offer only the `acme-tls/1` ALPN protocol.
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// A TXT record, published by `acme_dns_hook`.
    #[serde(rename = "dns-01")]
    Dns01,
}

/// Handshakes whose SNI matches no domain, or that carry none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UnknownSni {
    /// Serve `tls_default_cert`.
    #[default]
    Default,
    /// Refuse the handshake.
    Refuse,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./tokengate-data"),
            listen: None,
            database_url: None,
            max_body_bytes: 1024 * 1024,
            cvc_ttl_secs: 3600,
            cvc_sweep_secs: 10,
            audit_checkpoint_secs: 10,
            audit_checkpoint_records: 10_000,
            audit_hmac_fields: Vec::new(),
            audit: AuditSection::default(),
            proxy: None,
            outbound: tokengate_proxy::OutboundConfig::default(),
            source_file: None,
            webhooks: crate::webhooks::config::WebhooksSection::default(),
            audit_retention_days: 400,
            alert_webhook_url: None,
            alert_webhook_ca_file: None,
            reveal_alert_per_minute: 600,
            auth_lockout_key_threshold: 10,
            auth_lockout_ip_threshold: 100,
            auth_lockout_window_secs: 900,
            auth_lockout_secs: 1800,
            log_format: LogFormat::Text,
            tls_cert: None,
            tls_key: None,
            tls_default_cert: "localhost".to_owned(),
            tls_unknown_sni: UnknownSni::Default,
            tls_reload_ms: 250,
            tls_expiry_check_secs: 3600,
            key_reload_ms: 1000,
            data_key_cryptoperiod_days: 365,
            fingerprint_key_cryptoperiod_days: 365,
            cvc_key_cryptoperiod_days: 365,
            key_auto_rotate: false,
            lock_memory: false,
            http_listen: None,
            public_https_port: None,
            behind_proxy: false,
            trusted_proxies: Vec::new(),
            acme_directory_url: None,
            acme_ca_root: None,
            acme_contact: None,
            acme_check_secs: 60,
            acme_retry_secs: 60,
            acme_challenge: AcmeChallenge::Http01,
            acme_dns_hook: None,
            acme_dns_wait_secs: 30,
        }
    }
}

/// A configuration problem, naming the setting.
#[derive(Debug, thiserror::Error)]
#[error("configuration error in {field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

fn cerr(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_owned(),
        message: message.into(),
    }
}

impl Config {
    /// `alert_webhook_url` as a drain of `alert` records.
    pub fn alert_drain(&self) -> Option<crate::drain::DrainConfig> {
        self.alert_webhook_url
            .as_ref()
            .map(|url| crate::drain::DrainConfig {
                name: "alert-webhook".into(),
                url: url.clone(),
                ca_file: self.alert_webhook_ca_file.clone(),
                client_cert: None,
                client_key: None,
                on_failure: crate::drain::OnFailure::Buffer,
                batch: 100,
                max_lag_secs: 30,
                actions: vec!["alert".into()],
            })
    }

    /// The lockout policy these settings describe.
    pub fn lockout(&self) -> tokengate_vault::LockoutPolicy {
        tokengate_vault::LockoutPolicy {
            key_threshold: self.auth_lockout_key_threshold,
            ip_threshold: self.auth_lockout_ip_threshold,
            window: std::time::Duration::from_secs(self.auth_lockout_window_secs),
            duration: std::time::Duration::from_secs(self.auth_lockout_secs),
        }
    }

    pub const DEFAULT_PORT: u16 = 8443;

    /// Load from `file` (if any) and `env`, and validate.
    pub fn load(file: Option<&Path>, env: &dyn Env) -> Result<Config, ConfigError> {
        let mut cfg = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| cerr(&path.display().to_string(), e.to_string()))?;
                let de = toml::Deserializer::parse(&text)
                    .map_err(|e| cerr(&path.display().to_string(), e.to_string()))?;
                serde_path_to_error::deserialize(de).map_err(|e| {
                    cerr(
                        &format!("{} `{}`", path.display(), e.path()),
                        e.inner().message().to_owned(),
                    )
                })?
            }
            None => Config::default(),
        };
        cfg.source_file = file.map(Path::to_path_buf);
        let parse_num = |key: &str, v: String| {
            v.parse::<u64>()
                .map_err(|_| cerr(key, "must be a whole number"))
        };
        let parse_bool = |key: &str, v: String| match v.as_str() {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(cerr(key, "must be `true` or `false`")),
        };
        if let Some(v) = env.get("TOKENGATE_DATA_DIR") {
            cfg.data_dir = PathBuf::from(v);
        }
        if let Some(v) = env.get("TOKENGATE_LISTEN") {
            cfg.listen =
                Some(v.parse().map_err(|_| {
                    cerr("TOKENGATE_LISTEN", "must be host:port, e.g. 127.0.0.1:8443")
                })?);
        }
        if let Some(v) = env
            .get("DATABASE_URL")
            .or_else(|| env.get("TOKENGATE_DATABASE_URL"))
        {
            cfg.database_url = Some(v);
        }
        if let Some(v) = env.get("TOKENGATE_MAX_BODY_BYTES") {
            cfg.max_body_bytes = parse_num("TOKENGATE_MAX_BODY_BYTES", v)? as usize;
        }
        if let Some(v) = env.get("TOKENGATE_CVC_TTL_SECS") {
            cfg.cvc_ttl_secs = parse_num("TOKENGATE_CVC_TTL_SECS", v)?;
        }
        if let Some(v) = env.get("TOKENGATE_CVC_SWEEP_SECS") {
            cfg.cvc_sweep_secs = parse_num("TOKENGATE_CVC_SWEEP_SECS", v)?;
        }
        if let Some(v) = env.get("TOKENGATE_AUDIT_CHECKPOINT_RECORDS") {
            cfg.audit_checkpoint_records = parse_num("TOKENGATE_AUDIT_CHECKPOINT_RECORDS", v)?;
        }
        if let Some(v) = env.get("TOKENGATE_AUDIT_CHECKPOINT_SECS") {
            cfg.audit_checkpoint_secs = parse_num("TOKENGATE_AUDIT_CHECKPOINT_SECS", v)?;
        }
        if let Some(v) = env.get("TOKENGATE_LOG_FORMAT") {
            cfg.log_format = match v.as_str() {
                "json" => LogFormat::Json,
                "text" => LogFormat::Text,
                _ => return Err(cerr("TOKENGATE_LOG_FORMAT", "must be `text` or `json`")),
            };
        }
        if let Some(v) = env.get("TOKENGATE_TLS_DEFAULT_CERT") {
            cfg.tls_default_cert = v;
        }
        if let Some(v) = env.get("TOKENGATE_TLS_UNKNOWN_SNI") {
            cfg.tls_unknown_sni = match v.as_str() {
                "default" => UnknownSni::Default,
                "refuse" => UnknownSni::Refuse,
                _ => {
                    return Err(cerr(
                        "TOKENGATE_TLS_UNKNOWN_SNI",
                        "must be `default` or `refuse`",
                    ));
                }
            };
        }
        if let Some(v) = env.get("TOKENGATE_TLS_RELOAD_MS") {
            cfg.tls_reload_ms = parse_num("TOKENGATE_TLS_RELOAD_MS", v)?;
        }
        if let Some(v) = env.get("TOKENGATE_TLS_EXPIRY_CHECK_SECS") {
            cfg.tls_expiry_check_secs = parse_num("TOKENGATE_TLS_EXPIRY_CHECK_SECS", v)?;
        }
        if let Some(v) = env.get("TOKENGATE_HTTP_LISTEN") {
            cfg.http_listen = Some(v.parse().map_err(|_| {
                cerr(
                    "TOKENGATE_HTTP_LISTEN",
                    "must be host:port, e.g. 0.0.0.0:8080",
                )
            })?);
        }
        if let Some(v) = env.get("TOKENGATE_PUBLIC_HTTPS_PORT") {
            cfg.public_https_port = Some(
                v.parse()
                    .map_err(|_| cerr("TOKENGATE_PUBLIC_HTTPS_PORT", "must be a port number"))?,
            );
        }
        if let Some(v) = env.get("TOKENGATE_KEY_RELOAD_MS") {
            cfg.key_reload_ms = parse_num("TOKENGATE_KEY_RELOAD_MS", v)?;
        }
        if let Some(v) = env.get("TOKENGATE_DATA_KEY_CRYPTOPERIOD_DAYS") {
            cfg.data_key_cryptoperiod_days = parse_num("TOKENGATE_DATA_KEY_CRYPTOPERIOD_DAYS", v)?;
        }
        if let Some(v) = env.get("TOKENGATE_FINGERPRINT_KEY_CRYPTOPERIOD_DAYS") {
            cfg.fingerprint_key_cryptoperiod_days =
                parse_num("TOKENGATE_FINGERPRINT_KEY_CRYPTOPERIOD_DAYS", v)?;
        }
        if let Some(v) = env.get("TOKENGATE_CVC_KEY_CRYPTOPERIOD_DAYS") {
            cfg.cvc_key_cryptoperiod_days = parse_num("TOKENGATE_CVC_KEY_CRYPTOPERIOD_DAYS", v)?;
        }
        if let Some(v) = env.get("TOKENGATE_KEY_AUTO_ROTATE") {
            cfg.key_auto_rotate = parse_bool("TOKENGATE_KEY_AUTO_ROTATE", v)?;
        }
        if let Some(v) = env.get("TOKENGATE_LOCK_MEMORY") {
            cfg.lock_memory = parse_bool("TOKENGATE_LOCK_MEMORY", v)?;
        }
        if let Some(v) = env.get("TOKENGATE_BEHIND_PROXY") {
            cfg.behind_proxy = parse_bool("TOKENGATE_BEHIND_PROXY", v)?;
        }
        if let Some(v) = env.get("TOKENGATE_ALERT_WEBHOOK_URL") {
            cfg.alert_webhook_url = Some(v);
        }
        if let Some(v) = env.get("TOKENGATE_ALERT_WEBHOOK_CA_FILE") {
            cfg.alert_webhook_ca_file = Some(PathBuf::from(v));
        }
        if let Some(v) = env.get("TOKENGATE_REVEAL_ALERT_PER_MINUTE") {
            cfg.reveal_alert_per_minute =
                u32::try_from(parse_num("TOKENGATE_REVEAL_ALERT_PER_MINUTE", v)?)
                    .map_err(|_| cerr("TOKENGATE_REVEAL_ALERT_PER_MINUTE", "too large"))?;
        }
        if let Some(v) = env.get("TOKENGATE_AUDIT_RETENTION_DAYS") {
            cfg.audit_retention_days = parse_num("TOKENGATE_AUDIT_RETENTION_DAYS", v)?;
        }
        for (name, slot) in [
            (
                "TOKENGATE_AUTH_LOCKOUT_WINDOW_SECS",
                &mut cfg.auth_lockout_window_secs,
            ),
            ("TOKENGATE_AUTH_LOCKOUT_SECS", &mut cfg.auth_lockout_secs),
        ] {
            if let Some(v) = env.get(name) {
                *slot = parse_num(name, v)?;
            }
        }
        for (name, slot) in [
            (
                "TOKENGATE_AUTH_LOCKOUT_KEY_THRESHOLD",
                &mut cfg.auth_lockout_key_threshold,
            ),
            (
                "TOKENGATE_AUTH_LOCKOUT_IP_THRESHOLD",
                &mut cfg.auth_lockout_ip_threshold,
            ),
        ] {
            if let Some(v) = env.get(name) {
                *slot = u32::try_from(parse_num(name, v)?).map_err(|_| cerr(name, "too large"))?;
            }
        }
        if let Some(v) = env.get("TOKENGATE_AUDIT_HMAC_FIELDS") {
            cfg.audit_hmac_fields = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if let Some(v) = env.get("TOKENGATE_TRUSTED_PROXIES") {
            cfg.trusted_proxies = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if let Some(v) = env.get("TOKENGATE_ACME_DIRECTORY_URL") {
            cfg.acme_directory_url = Some(v);
        }
        if let Some(v) = env.get("TOKENGATE_ACME_CA_ROOT") {
            cfg.acme_ca_root = Some(PathBuf::from(v));
        }
        if let Some(v) = env.get("TOKENGATE_ACME_CONTACT") {
            cfg.acme_contact = Some(v);
        }
        if let Some(v) = env.get("TOKENGATE_ACME_CHECK_SECS") {
            cfg.acme_check_secs = parse_num("TOKENGATE_ACME_CHECK_SECS", v)?;
        }
        if let Some(v) = env.get("TOKENGATE_ACME_RETRY_SECS") {
            cfg.acme_retry_secs = parse_num("TOKENGATE_ACME_RETRY_SECS", v)?;
        }
        if let Some(v) = env.get("TOKENGATE_ACME_CHALLENGE") {
            cfg.acme_challenge = match v.as_str() {
                "http-01" => AcmeChallenge::Http01,
                "tls-alpn-01" => AcmeChallenge::TlsAlpn01,
                "dns-01" => AcmeChallenge::Dns01,
                _ => {
                    return Err(cerr(
                        "TOKENGATE_ACME_CHALLENGE",
                        "must be `http-01`, `tls-alpn-01` or `dns-01`",
                    ));
                }
            };
        }
        if let Some(v) = env.get("TOKENGATE_ACME_DNS_HOOK") {
            cfg.acme_dns_hook = Some(PathBuf::from(v));
        }
        if let Some(v) = env.get("TOKENGATE_ACME_DNS_WAIT_SECS") {
            cfg.acme_dns_wait_secs = parse_num("TOKENGATE_ACME_DNS_WAIT_SECS", v)?;
        }
        if cfg.listen.is_none()
            && let Some(port) = env.get("PORT")
        {
            let port: u16 = port
                .parse()
                .map_err(|_| cerr("PORT", "must be a port number"))?;
            cfg.listen = Some(SocketAddr::from(([0, 0, 0, 0], port)));
        }
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1024..=64 * 1024 * 1024).contains(&self.max_body_bytes) {
            return Err(cerr("max_body_bytes", "must be between 1024 and 67108864"));
        }
        if !(1..=3600).contains(&self.cvc_ttl_secs) {
            return Err(cerr(
                "cvc_ttl_secs",
                "must be 1-3600: a CVC may not be held longer than an hour",
            ));
        }
        if !(1..=3600).contains(&self.cvc_sweep_secs) {
            return Err(cerr("cvc_sweep_secs", "must be 1-3600"));
        }
        if let Some(bad) = self
            .audit_hmac_fields
            .iter()
            .find(|f| tokengate_vault::AuditHmacField::from_name(f).is_none())
        {
            return Err(cerr(
                "audit_hmac_fields",
                format!("unknown field {bad:?}; known: client_ip, user_agent"),
            ));
        }
        if !(1..=36_500).contains(&self.audit_retention_days) {
            return Err(cerr("audit_retention_days", "must be 1-36500"));
        }
        if !(1..=86_400).contains(&self.auth_lockout_window_secs) {
            return Err(cerr("auth_lockout_window_secs", "must be 1-86400"));
        }
        if !(1..=86_400).contains(&self.auth_lockout_secs) {
            return Err(cerr("auth_lockout_secs", "must be 1-86400"));
        }
        if let Some(u) = &self.alert_webhook_url
            && !u.starts_with("https://")
        {
            return Err(cerr("alert_webhook_url", "must be an https:// URL"));
        }
        if let Some(d) = self.alert_drain() {
            crate::drain::Drain::new(d).map_err(|m| cerr("alert_webhook_url", m))?;
        }
        let mut names = std::collections::BTreeSet::new();
        for d in &self.audit.drains {
            crate::drain::Drain::new(d.clone())
                .map_err(|m| cerr(&format!("audit.drains[{}]", d.name), m))?;
            if !names.insert(d.name.clone()) {
                return Err(cerr(
                    "audit.drains",
                    format!("two drains are named {:?}", d.name),
                ));
            }
        }
        if let Some(p) = &self.proxy {
            p.compile().map_err(|e| cerr(&e.field, e.message))?;
            let trusted_router = self.behind_proxy && !self.trusted_proxies.is_empty();
            if !(p.tls || trusted_router) {
                return Err(cerr(
                    "proxy.tls",
                    "`tls = false` is for a proxy listener behind a router that terminates TLS: \
                     set `behind_proxy = true` and `trusted_proxies` (the router's addresses), \
                     so that only requests the router received over HTTPS are accepted",
                ));
            }
            if let Some(n) = p.max_body_bytes
                && !(1024..=64 * 1024 * 1024).contains(&n)
            {
                return Err(cerr(
                    "proxy.max_body_bytes",
                    "must be between 1024 and 67108864",
                ));
            }
        }
        let processors = self
            .outbound
            .compile()
            .map_err(|e| cerr(&e.field, e.message))?;
        if !processors.is_empty() && self.proxy.is_none() {
            return Err(cerr(
                "outbound.processors",
                "the relay (`/relay/{processor}/…`) is served on the proxy listener: add a `[proxy]` section with `listen`",
            ));
        }
        self.webhooks.validate().map_err(|(f, m)| cerr(&f, m))?;
        if !(1..=3600).contains(&self.audit_checkpoint_secs) {
            return Err(cerr("audit_checkpoint_secs", "must be 1-3600"));
        }
        if let Some(u) = &self.database_url
            && !(u.starts_with("postgres://")
                || u.starts_with("postgresql://")
                || u.starts_with("sqlite:"))
        {
            return Err(cerr(
                "database_url",
                "must start with postgres:// or sqlite:",
            ));
        }
        if self.tls_cert.is_some() || self.tls_key.is_some() {
            return Err(cerr(
                "tls_cert/tls_key",
                "certificates now live in the certificate store: remove these settings and run `tokengate certs add CERT KEY --domain DOMAIN`",
            ));
        }
        if self.tls_unknown_sni == UnknownSni::Default && self.tls_default_cert.trim().is_empty() {
            return Err(cerr(
                "tls_default_cert",
                "must name a certificate (or set tls_unknown_sni = \"refuse\")",
            ));
        }
        if !(100..=10_000).contains(&self.tls_reload_ms) {
            return Err(cerr("tls_reload_ms", "must be 100-10000"));
        }
        if !(100..=10_000).contains(&self.key_reload_ms) {
            return Err(cerr("key_reload_ms", "must be 100-10000"));
        }
        for (field, days) in [
            (
                "data_key_cryptoperiod_days",
                self.data_key_cryptoperiod_days,
            ),
            (
                "fingerprint_key_cryptoperiod_days",
                self.fingerprint_key_cryptoperiod_days,
            ),
            ("cvc_key_cryptoperiod_days", self.cvc_key_cryptoperiod_days),
        ] {
            if days > 36_500 {
                return Err(cerr(field, "must be 0 (no cryptoperiod) to 36500 days"));
            }
        }
        if !(1..=86_400).contains(&self.tls_expiry_check_secs) {
            return Err(cerr("tls_expiry_check_secs", "must be 1-86400"));
        }
        if self.public_https_port == Some(0) {
            return Err(cerr("public_https_port", "must be 1-65535"));
        }
        if let Some(url) = &self.acme_directory_url
            && !url.starts_with("https://")
        {
            return Err(cerr("acme_directory_url", "must be an https:// URL"));
        }
        if !(1..=3600).contains(&self.acme_check_secs) {
            return Err(cerr("acme_check_secs", "must be 1-3600"));
        }
        if !(1..=86_400).contains(&self.acme_retry_secs) {
            return Err(cerr("acme_retry_secs", "must be 1-86400"));
        }
        if let Some(contact) = &self.acme_contact
            && !contact.starts_with("mailto:")
        {
            return Err(cerr("acme_contact", "must be a mailto: URL"));
        }
        if self.acme_challenge == AcmeChallenge::Dns01 && self.acme_dns_hook.is_none() {
            return Err(cerr(
                "acme_dns_hook",
                "acme_challenge = \"dns-01\" needs the command that publishes TXT records",
            ));
        }
        if let Some(hook) = &self.acme_dns_hook
            && !hook.is_file()
        {
            return Err(cerr(
                "acme_dns_hook",
                format!("{} is not a file", hook.display()),
            ));
        }
        if self.acme_dns_wait_secs > 3600 {
            return Err(cerr("acme_dns_wait_secs", "must be 0-3600"));
        }
        let proxies = self.trusted_proxy_cidrs()?;
        if self.behind_proxy && proxies.is_empty() {
            return Err(cerr(
                "trusted_proxies",
                "behind_proxy needs at least one CIDR of the proxies to trust (e.g. [\"10.0.0.0/8\"])",
            ));
        }
        Ok(())
    }

    /// The configured cryptoperiods, days per key purpose (0: none).
    pub fn cryptoperiods(&self) -> Vec<(tokengate_crypto::KeyPurpose, u64)> {
        use tokengate_crypto::KeyPurpose;
        vec![
            (KeyPurpose::Data, self.data_key_cryptoperiod_days),
            (
                KeyPurpose::Fingerprint,
                self.fingerprint_key_cryptoperiod_days,
            ),
            (KeyPurpose::Cvc, self.cvc_key_cryptoperiod_days),
        ]
    }

    /// `trusted_proxies` parsed.
    pub fn trusted_proxy_cidrs(&self) -> Result<Vec<crate::edge::Cidr>, ConfigError> {
        self.trusted_proxies
            .iter()
            .map(|s| {
                s.parse().map_err(|e: crate::edge::CidrError| {
                    cerr("trusted_proxies", format!("{s:?}: {e}"))
                })
            })
            .collect()
    }

    /// The ACME task's settings, when ACME is configured.
    pub fn acme(&self) -> Option<crate::acme::AcmeSettings> {
        self.acme_directory_url
            .as_ref()
            .map(|url| crate::acme::AcmeSettings {
                directory_url: url.clone(),
                ca_root: self.acme_ca_root.clone(),
                contact: self.acme_contact.clone(),
                check_every: Duration::from_secs(self.acme_check_secs),
                retry_base: Duration::from_secs(self.acme_retry_secs),
                challenge: self.acme_challenge,
                dns_hook: self.acme_dns_hook.clone(),
                dns_wait: Duration::from_secs(self.acme_dns_wait_secs),
            })
    }

    /// Whether the HTTPS listener answers TLS-ALPN-01 validation.
    pub fn acme_tls_alpn(&self) -> bool {
        self.acme_directory_url.is_some() && self.acme_challenge == AcmeChallenge::TlsAlpn01
    }

    /// The certificate for unknown or missing SNI, or `None` to refuse.
    pub fn default_cert(&self) -> Option<&str> {
        match self.tls_unknown_sni {
            UnknownSni::Default => Some(self.tls_default_cert.as_str()),
            UnknownSni::Refuse => None,
        }
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], Self::DEFAULT_PORT)))
    }

    pub fn cvc_ttl(&self) -> Duration {
        Duration::from_secs(self.cvc_ttl_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn port_and_database_url_conventions() {
        let c = Config::load(
            None,
            &env(&[("PORT", "9000"), ("DATABASE_URL", "postgres://x/y")]),
        )
        .unwrap();
        assert_eq!(c.listen_addr().port(), 9000);
        assert_eq!(c.database_url.as_deref(), Some("postgres://x/y"));
        let c = Config::load(
            None,
            &env(&[("PORT", "9000"), ("TOKENGATE_LISTEN", "127.0.0.1:7000")]),
        )
        .unwrap();
        assert_eq!(c.listen_addr().port(), 7000);
    }

    #[test]
    fn a_plain_proxy_listener_needs_a_trusted_router() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        let route = "[[proxy.inbound]]\nname = \"r\"\nupstream = \"http://127.0.0.1:9\"\n";
        std::fs::write(
            &file,
            format!("[proxy]\nlisten = \"127.0.0.1:0\"\ntls = false\n{route}"),
        )
        .unwrap();
        let e = Config::load(Some(&file), &env(&[])).unwrap_err();
        assert_eq!(e.field, "proxy.tls", "{e}");
        std::fs::write(
            &file,
            format!(
                "behind_proxy = true\ntrusted_proxies = [\"10.0.0.0/8\"]\n[proxy]\nlisten = \"127.0.0.1:0\"\ntls = false\n{route}"
            ),
        )
        .unwrap();
        assert!(Config::load(Some(&file), &env(&[])).is_ok());
    }

    #[test]
    fn errors_name_the_field() {
        let e = Config::load(None, &env(&[("TOKENGATE_CVC_TTL_SECS", "7200")])).unwrap_err();
        assert_eq!(e.field, "cvc_ttl_secs");
        let e = Config::load(None, &env(&[("PORT", "http")])).unwrap_err();
        assert_eq!(e.field, "PORT");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "max_body_bytes = \"big\"\n").unwrap();
        let e = Config::load(Some(&f), &env(&[])).unwrap_err();
        assert!(e.field.contains("max_body_bytes"), "{e}");
        std::fs::write(&f, "colour = 1\n").unwrap();
        assert!(Config::load(Some(&f), &env(&[])).is_err());
    }

    #[test]
    fn lock_memory_from_file_and_environment() {
        assert!(!Config::load(None, &env(&[])).unwrap().lock_memory);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "lock_memory = true\n").unwrap();
        assert!(Config::load(Some(&f), &env(&[])).unwrap().lock_memory);
        // The environment wins over the file.
        let c = Config::load(Some(&f), &env(&[("TOKENGATE_LOCK_MEMORY", "false")])).unwrap();
        assert!(!c.lock_memory);
        let e = Config::load(None, &env(&[("TOKENGATE_LOCK_MEMORY", "on")])).unwrap_err();
        assert_eq!(e.field, "TOKENGATE_LOCK_MEMORY");
        std::fs::write(&f, "lock_memory = \"yes\"\n").unwrap();
        assert!(Config::load(Some(&f), &env(&[])).is_err());
    }

    #[test]
    fn key_lifecycle_settings() {
        let c = Config::load(None, &env(&[])).unwrap();
        assert_eq!(c.key_reload_ms, 1000);
        assert_eq!(c.data_key_cryptoperiod_days, 365);
        assert!(!c.key_auto_rotate);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "data_key_cryptoperiod_days = 90\nfingerprint_key_cryptoperiod_days = 0\nkey_auto_rotate = true\n",
        )
        .unwrap();
        let c = Config::load(Some(&f), &env(&[])).unwrap();
        assert_eq!(
            c.cryptoperiods(),
            vec![
                (tokengate_crypto::KeyPurpose::Data, 90),
                (tokengate_crypto::KeyPurpose::Fingerprint, 0),
                (tokengate_crypto::KeyPurpose::Cvc, 365)
            ]
        );
        assert!(c.key_auto_rotate);
        let e = Config::load(None, &env(&[("TOKENGATE_KEY_RELOAD_MS", "5")])).unwrap_err();
        assert_eq!(e.field, "key_reload_ms");
        let e = Config::load(None, &env(&[("TOKENGATE_KEY_AUTO_ROTATE", "yes")])).unwrap_err();
        assert_eq!(e.field, "TOKENGATE_KEY_AUTO_ROTATE");
        let e = Config::load(
            None,
            &env(&[("TOKENGATE_DATA_KEY_CRYPTOPERIOD_DAYS", "99999")]),
        )
        .unwrap_err();
        assert_eq!(e.field, "data_key_cryptoperiod_days");
    }

    #[test]
    fn tls_and_edge_settings() {
        let c = Config::load(None, &env(&[])).unwrap();
        assert_eq!(c.default_cert(), Some("localhost"));
        let c = Config::load(None, &env(&[("TOKENGATE_TLS_UNKNOWN_SNI", "refuse")])).unwrap();
        assert_eq!(c.default_cert(), None);
        let e = Config::load(None, &env(&[("TOKENGATE_TLS_UNKNOWN_SNI", "maybe")])).unwrap_err();
        assert_eq!(e.field, "TOKENGATE_TLS_UNKNOWN_SNI");
        let e = Config::load(None, &env(&[("TOKENGATE_BEHIND_PROXY", "true")])).unwrap_err();
        assert_eq!(e.field, "trusted_proxies");
        let c = Config::load(
            None,
            &env(&[
                ("TOKENGATE_BEHIND_PROXY", "true"),
                ("TOKENGATE_TRUSTED_PROXIES", "10.0.0.0/8, ::1/128"),
            ]),
        )
        .unwrap();
        assert_eq!(c.trusted_proxy_cidrs().unwrap().len(), 2);
        let e =
            Config::load(None, &env(&[("TOKENGATE_TRUSTED_PROXIES", "10.0.0.0/33")])).unwrap_err();
        assert_eq!(e.field, "trusted_proxies");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "tls_cert = \"/etc/cert.pem\"\ntls_key = \"/etc/key.pem\"\n",
        )
        .unwrap();
        let e = Config::load(Some(&f), &env(&[])).unwrap_err();
        assert!(e.message.contains("certs add"), "{e}");
        std::fs::write(
            &f,
            "tls_default_cert = \"shop\"\nhttp_listen = \"127.0.0.1:8080\"\nbehind_proxy = true\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
        )
        .unwrap();
        let c = Config::load(Some(&f), &env(&[])).unwrap();
        assert_eq!(c.default_cert(), Some("shop"));
        assert!(c.behind_proxy);
        assert_eq!(c.http_listen.unwrap().port(), 8080);
    }

    #[test]
    fn acme_challenge_settings() {
        let c = Config::load(None, &env(&[])).unwrap();
        assert_eq!(c.acme_challenge, AcmeChallenge::Http01);
        assert!(!c.acme_tls_alpn());
        let c = Config::load(
            None,
            &env(&[
                ("TOKENGATE_ACME_DIRECTORY_URL", "https://ca.test/dir"),
                ("TOKENGATE_ACME_CHALLENGE", "tls-alpn-01"),
            ]),
        )
        .unwrap();
        assert!(c.acme_tls_alpn());
        let e =
            Config::load(None, &env(&[("TOKENGATE_ACME_CHALLENGE", "tls-sni-01")])).unwrap_err();
        assert_eq!(e.field, "TOKENGATE_ACME_CHALLENGE");
        let e = Config::load(None, &env(&[("TOKENGATE_ACME_CHALLENGE", "dns-01")])).unwrap_err();
        assert_eq!(e.field, "acme_dns_hook");
        let e = Config::load(
            None,
            &env(&[("TOKENGATE_ACME_DNS_HOOK", "/nonexistent/dns-hook")]),
        )
        .unwrap_err();
        assert_eq!(e.field, "acme_dns_hook");
        let dir = tempfile::tempdir().unwrap();
        let hook = dir.path().join("hook.sh");
        std::fs::write(&hook, "#!/bin/sh\n").unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            format!(
                "acme_challenge = \"dns-01\"\nacme_dns_hook = {:?}\nacme_dns_wait_secs = 5\n",
                hook.display().to_string()
            ),
        )
        .unwrap();
        let c = Config::load(Some(&f), &env(&[])).unwrap();
        assert_eq!(c.acme_challenge, AcmeChallenge::Dns01);
        assert_eq!(c.acme_dns_wait_secs, 5);
        let e =
            Config::load(Some(&f), &env(&[("TOKENGATE_ACME_DNS_WAIT_SECS", "7200")])).unwrap_err();
        assert_eq!(e.field, "acme_dns_wait_secs");
    }
}
