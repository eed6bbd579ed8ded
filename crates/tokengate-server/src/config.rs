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
    pub log_format: LogFormat,
    /// TLS certificate chain and key (PEM); default: the data dir's self-signed pair.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
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
            log_format: LogFormat::Text,
            tls_cert: None,
            tls_key: None,
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
        let parse_num = |key: &str, v: String| {
            v.parse::<u64>()
                .map_err(|_| cerr(key, "must be a whole number"))
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
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(cerr("tls_cert/tls_key", "set both or neither"));
        }
        Ok(())
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
}
