//! Audit drains: every audit record, and every signed checkpoint, delivered
//! in order to an external SIEM over syslog-over-TLS (RFC 5424 messages,
//! RFC 5425 octet-counted framing) or HTTPS (batched JSON POSTs).
//!
//! The buffer is the audit log itself: each drain keeps a durable cursor
//! (the last sequence number the receiver confirmed) in the store, reads the
//! records after it, and advances it only after the receiver confirmed the
//! batch. An outage therefore loses nothing, however long; delivery resumes
//! in order from the cursor, at least once (a batch whose confirmation was
//! lost is sent again; every message carries its `seq` and chain `hash`, so
//! a receiver can drop duplicates).
//!
//! Confirmation: HTTPS — a 2xx to the POST (the `X-Tokengate-Batch` header,
//! `first-last` sequence numbers, is the same on a retry). Syslog has no
//! acknowledgements, so each batch goes on its own TLS connection, which the
//! drain then closes (close_notify) and waits for the receiver to close in
//! turn: a receiver closes only after reading everything before our
//! close_notify. A receiver that dies mid-batch never closes cleanly, and the
//! batch is sent again.
//!
//! `on_failure = "fail_closed"`: while such a drain is more than
//! `max_lag_secs` behind, the vault refuses every operation that must be
//! audited (the store's audit gate), as when the audit write itself fails.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;
use tokengate_audit::StoredEvent;
use tokengate_vault::Vault;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// What a drain does when it cannot deliver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Keep serving; the drain catches up from its cursor when it can.
    #[default]
    Buffer,
    /// Refuse audited operations while the drain lags more than `max_lag_secs`.
    FailClosed,
}

/// One `[[audit.drains]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainConfig {
    pub name: String,
    /// `syslog+tls://HOST:PORT` or `https://…`.
    pub url: String,
    /// CA certificates (PEM) that the receiver's certificate must chain to;
    /// the system roots when absent.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain and key (PEM) for mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Records per delivery (1–5000).
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// For `fail_closed`: how far behind (seconds without a confirmed
    /// delivery while records wait) before operations are refused.
    #[serde(default = "default_max_lag")]
    pub max_lag_secs: u64,
    /// Deliver only records with these actions (e.g. `["alert", "lockout"]`);
    /// all records and checkpoints when empty.
    #[serde(default)]
    pub actions: Vec<String>,
}

fn default_batch() -> usize {
    500
}
fn default_max_lag() -> u64 {
    30
}

#[derive(Clone, Debug)]
enum Target {
    Syslog { host: String, port: u16 },
    Https { url: String },
}

/// A drain ready to run: parsed target and TLS settings.
#[derive(Clone)]
pub struct Drain {
    pub config: DrainConfig,
    target: Target,
    tls: Arc<ClientConfig>,
    http: Option<reqwest::Client>,
}

impl std::fmt::Debug for Drain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drain")
            .field("name", &self.config.name)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Drain {
    /// Check a drain's configuration; the error names the field.
    pub fn new(config: DrainConfig) -> Result<Drain, String> {
        let name_ok = !config.name.is_empty()
            && config.name.len() <= 64
            && config
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        // The name is a metric label: it may never look like a card number.
        if !name_ok || tokengate_core::contains_pan_like(&config.name) {
            return Err(
                "name must be 1-64 letters, digits, '-' or '_' (and not a card number)".into(),
            );
        }
        if !(1..=5000).contains(&config.batch) {
            return Err("batch must be 1-5000".into());
        }
        if !(1..=86_400).contains(&config.max_lag_secs) {
            return Err("max_lag_secs must be 1-86400".into());
        }
        let target = if let Some(rest) = config.url.strip_prefix("syslog+tls://") {
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or("url: syslog+tls://HOST:PORT needs a port (6514 is the standard one)")?;
            let port = port
                .trim_end_matches('/')
                .parse::<u16>()
                .map_err(|_| "url: the port is not a number")?;
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            if host.is_empty() {
                return Err("url: no host".into());
            }
            Target::Syslog { host, port }
        } else if config.url.starts_with("https://") {
            Target::Https {
                url: config.url.clone(),
            }
        } else {
            return Err("url must start with syslog+tls:// or https://".into());
        };
        let tls = client_tls(&config)?;
        let http = match &target {
            Target::Https { .. } => Some(
                reqwest::Client::builder()
                    .use_preconfigured_tls((*tls).clone())
                    .timeout(Duration::from_secs(10))
                    .build()
                    .map_err(|e| format!("https client: {e}"))?,
            ),
            Target::Syslog { .. } => None,
        };
        Ok(Drain {
            config,
            target,
            tls,
            http,
        })
    }
}

fn client_tls(config: &DrainConfig) -> Result<Arc<ClientConfig>, String> {
    client_tls_from(
        config.ca_file.as_deref(),
        config.client_cert.as_deref(),
        config.client_key.as_deref(),
    )
}

/// A TLS 1.2/1.3 client configuration: roots from `ca_file` (PEM) or the
/// system, and an optional client certificate for mTLS.
pub(crate) fn client_tls_from(
    ca_file: Option<&std::path::Path>,
    client_cert: Option<&std::path::Path>,
    client_key: Option<&std::path::Path>,
) -> Result<Arc<ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("ca_file {}: {e}", path.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("ca_file {}: no certificate in it", path.display()));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match (client_cert, client_key) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| format!("client_cert {}: {e}", cert.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("client_cert {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("client_key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client_cert/client_key: {e}"))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("client_cert and client_key go together".into()),
    };
    Ok(Arc::new(config))
}

/// RFC 5424 message for one audit record: facility 13 (log audit), severity
/// 5 (notice) or 4 (warning) for failures; structured data carries `seq` and
/// the chain hash; the message is the record's exact hashed JSON.
pub fn syslog_message(r: &StoredEvent, host: &str) -> String {
    let ev: serde_json::Value = serde_json::from_str(&r.event_json).unwrap_or_default();
    let failure = ev.get("outcome").and_then(|o| o.as_str()) == Some("failure");
    let pri = 13 * 8 + if failure { 4 } else { 5 };
    let ts = ev
        .get("ts_ms")
        .and_then(serde_json::Value::as_i64)
        .and_then(|ms| {
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
        })
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".to_owned());
    let action = ev
        .get("action")
        .and_then(|a| a.as_str())
        .filter(|a| a.bytes().all(|b| b.is_ascii_graphic()) && a.len() <= 32)
        .unwrap_or("-");
    format!(
        "<{pri}>1 {ts} {host} tokengate - {action} [tokengate@32473 seq=\"{}\" hash=\"{}\"] {}",
        r.seq,
        data_encoding::HEXLOWER.encode(&r.hash),
        r.event_json
    )
}

/// RFC 5424 message carrying a signed checkpoint note (MSGID `checkpoint`).
pub fn syslog_checkpoint(size: u64, note: &str, host: &str) -> String {
    let ts = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "-".to_owned());
    format!(
        "<{}>1 {ts} {host} tokengate - checkpoint [tokengate@32473 tree_size=\"{size}\"] {note}",
        13 * 8 + 5
    )
}

/// RFC 5425 octet-counting frame: `LEN SP MSG`.
pub fn frame(msg: &str) -> Vec<u8> {
    let mut out = format!("{} ", msg.len()).into_bytes();
    out.extend_from_slice(msg.as_bytes());
    out
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "-".to_owned())
}

/// Deliver one batch (records plus checkpoints they complete); Ok once the
/// receiver confirmed it.
async fn deliver(
    drain: &Drain,
    records: &[StoredEvent],
    checkpoints: &[(u64, String)],
) -> Result<(), String> {
    let (first, last) = match (records.first(), records.last()) {
        (Some(f), Some(l)) => (f.seq, l.seq),
        _ => return Ok(()),
    };
    match &drain.target {
        Target::Https { url } => {
            let body = serde_json::json!({
                "batch": format!("{first}-{last}"),
                "records": records.iter().map(|r| tokengate_vault::auditlog::record_json(r, true)).collect::<Vec<_>>(),
                "checkpoints": checkpoints.iter().map(|(size, note)| serde_json::json!({"tree_size": size, "note": note})).collect::<Vec<_>>(),
            });
            let client = drain.http.as_ref().ok_or("no https client")?;
            let resp = client
                .post(url)
                .header("X-Tokengate-Batch", format!("{first}-{last}"))
                .json(&body)
                .send()
                .await
                .map_err(|e| format!("POST failed: {e}"))?;
            if resp.status().is_success() {
                Ok(())
            } else {
                Err(format!("receiver answered {}", resp.status()))
            }
        }
        Target::Syslog { host, port } => {
            let server = ServerName::try_from(host.clone())
                .map_err(|_| format!("{host} is not a valid server name"))?;
            let tcp = tokio::time::timeout(
                Duration::from_secs(5),
                TcpStream::connect((host.as_str(), *port)),
            )
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| format!("connect: {e}"))?;
            let mut tls = tokio::time::timeout(
                Duration::from_secs(5),
                TlsConnector::from(drain.tls.clone()).connect(server, tcp),
            )
            .await
            .map_err(|_| "TLS handshake timed out".to_owned())?
            .map_err(|e| format!("TLS: {e}"))?;
            let me = hostname();
            let mut buf = Vec::with_capacity(records.len() * 400);
            for r in records {
                buf.extend(frame(&syslog_message(r, &me)));
            }
            for (size, note) in checkpoints {
                buf.extend(frame(&syslog_checkpoint(*size, note, &me)));
            }
            let io = async {
                tls.write_all(&buf).await?;
                tls.flush().await?;
                // close_notify, then wait for the receiver to close in turn:
                // it has read everything we sent.
                tls.shutdown().await?;
                let mut rest = [0u8; 256];
                while tls.read(&mut rest).await? > 0 {}
                Ok::<(), std::io::Error>(())
            };
            tokio::time::timeout(Duration::from_secs(10), io)
                .await
                .map_err(|_| "the receiver did not confirm (no close) within 10 s".to_owned())?
                .map_err(|e| format!("send: {e}"))
        }
    }
}

/// Spawn one task per drain. Returns their handles (abort to stop).
pub fn spawn_all(vault: Arc<Vault>, drains: Vec<Drain>) -> Vec<tokio::task::JoinHandle<()>> {
    drains
        .into_iter()
        .map(|d| tokio::spawn(run(vault.clone(), d)))
        .collect()
}

async fn run(vault: Arc<Vault>, drain: Drain) {
    let name = drain.config.name.clone();
    let gate_key = format!("drain:{name}");
    let mut backoff = Duration::from_millis(100);
    // When records started waiting without a confirmed delivery.
    let mut behind_since: Option<Instant> = None;
    loop {
        let step = async {
            let cursor = vault
                .store()
                .drain_cursor(&name)
                .await
                .map_err(|e| e.to_string())?;
            let limit = i64::try_from(drain.config.batch).unwrap_or(500);
            let records = vault
                .store()
                .audit_events(cursor, limit)
                .await
                .map_err(|e| e.to_string())?;
            let Some(last) = records.last().map(|r| r.seq) else {
                return Ok::<bool, String>(false);
            };
            let records: Vec<StoredEvent> = if drain.config.actions.is_empty() {
                records
            } else {
                records
                    .into_iter()
                    .filter(|r| {
                        serde_json::from_str::<serde_json::Value>(&r.event_json)
                            .ok()
                            .and_then(|e| {
                                e.get("action").and_then(|a| a.as_str()).map(str::to_owned)
                            })
                            .is_some_and(|a| drain.config.actions.contains(&a))
                    })
                    .collect()
            };
            let checkpoints: Vec<(u64, String)> = if !drain.config.actions.is_empty() {
                Vec::new()
            } else {
                vault
                    .store()
                    .checkpoints(cursor, 100)
                    .await
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .filter(|c| c.tree_size <= last)
                    .map(|c| (c.tree_size, c.note))
                    .collect()
            };
            deliver(&drain, &records, &checkpoints).await?;
            vault
                .set_drain_cursor(&name, last)
                .await
                .map_err(|e| e.to_string())?;
            metrics::counter!("tokengate_audit_drain_records_total", "drain" => name.clone())
                .increment(records.len() as u64);
            Ok(true)
        };
        match step.await {
            Ok(sent) => {
                if behind_since.take().is_some() {
                    tracing::info!(drain = %name, "audit drain delivering again");
                    let _ = vault
                        .record_alert(&format!("kind=drain_recovered drain={name}"))
                        .await;
                }
                backoff = Duration::from_millis(100);
                if drain.config.on_failure == OnFailure::FailClosed {
                    vault.set_audit_gate(&gate_key, true);
                }
                if !sent {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            Err(e) => {
                if behind_since.is_none() {
                    // Best effort: with a fail-closed drain down the record
                    // may itself be refused.
                    let _ = vault
                        .record_alert(&format!("kind=drain_down drain={name}"))
                        .await;
                }
                let since = *behind_since.get_or_insert_with(Instant::now);
                tracing::warn!(drain = %name, error = %tokengate_core::redact_pans(&e), "audit drain cannot deliver; will retry");
                metrics::counter!("tokengate_audit_drain_failures_total", "drain" => name.clone())
                    .increment(1);
                if drain.config.on_failure == OnFailure::FailClosed
                    && since.elapsed() >= Duration::from_secs(drain.config.max_lag_secs)
                {
                    vault.set_audit_gate(&gate_key, false);
                }
                // Exponential back-off with jitter, capped at 30 s.
                let jitter = u64::from(rand_jitter()) % (backoff.as_millis() as u64 / 2 + 1);
                tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

fn rand_jitter() -> u32 {
    let mut b = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut b);
    u32::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(name: &str, url: &str) -> DrainConfig {
        DrainConfig {
            name: name.into(),
            url: url.into(),
            ca_file: None,
            client_cert: None,
            client_key: None,
            on_failure: OnFailure::Buffer,
            batch: 500,
            max_lag_secs: 30,
            actions: Vec::new(),
        }
    }

    #[test]
    fn bad_drain_settings_are_refused_with_a_reason() {
        assert!(Drain::new(cfg("siem", "syslog+tls://127.0.0.1:6514")).is_ok());
        for (name, url) in [
            ("siem", "syslog+tls://127.0.0.1"),
            ("siem", "syslog+tls://:6514"),
            ("siem", "syslog+tls://host:port"),
            ("siem", "http://collector/ingest"),
            ("", "https://collector/ingest"),
            ("has space", "https://collector/ingest"),
            ("4111111111111111", "https://collector/ingest"),
        ] {
            assert!(Drain::new(cfg(name, url)).is_err(), "{name} {url}");
        }
        let mut c = cfg("siem", "https://collector/ingest");
        c.batch = 0;
        assert!(Drain::new(c).is_err());
    }

    #[test]
    fn syslog_frames_are_octet_counted() {
        assert_eq!(
            frame("<109>1 - - tokengate - x - hi"),
            b"29 <109>1 - - tokengate - x - hi".to_vec()
        );
    }
}
