//! Delivery from the outbox, at least once.
//!
//! One lane per (target, source): a lane takes its source's pending events
//! in `seq` order and does not move past an event until it was delivered
//! or dead-lettered, so order is kept per source while one slow source does
//! not hold up another. A failed attempt is recorded (attempt count, next
//! time, reason) before the lane waits: a restart resumes where it was. An
//! event is marked delivered only after the target confirmed it, so a crash
//! in between means one more delivery, never none (receivers de-duplicate
//! by `webhook-id` / `Nats-Msg-Id`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokengate_store::{WebhookEventRow, WebhookTarget};
use tokengate_vault::Vault;
use tokengate_webhooks::Signer;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::config::{DeliverConfig, WebhooksSection};
use super::nats::NatsSink;
use super::{Receivers, backoff_ms, retry_after_ms};

/// What one attempt came to.
#[derive(Debug)]
pub enum Attempt {
    Delivered,
    /// Try again (after `after_ms` when the target said so).
    Retry {
        error: String,
        after_ms: Option<u64>,
    },
    /// The target is gone for good (HTTP 410): dead-letter and stop
    /// delivering to it until an operator replays.
    Gone(String),
}

/// Retry settings of a target.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub max_attempts: u32,
    pub base_ms: u64,
    pub max_ms: u64,
}

/// The app: POST, re-signed with Standard Webhooks v1.
#[derive(Debug)]
pub struct AppSink {
    client: reqwest::Client,
    url: String,
    signer: Signer,
}

/// The `webhook-id` / `Nats-Msg-Id` of an event: stable across attempts
/// and restarts, unique across sources.
pub fn delivery_id(row: &WebhookEventRow) -> String {
    format!("{}:{}", row.source, row.event_id)
}

impl AppSink {
    pub fn new(cfg: &DeliverConfig) -> Result<AppSink, String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(cfg.timeout_secs))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(AppSink {
            client,
            url: cfg.url.clone(),
            signer: Signer::new(cfg.secret.expose())?,
        })
    }

    pub async fn send(&self, row: &WebhookEventRow) -> Attempt {
        let id = delivery_id(row);
        let ts = tokengate_vault::clock::now_ms() / 1000;
        let mut req = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("tokengate-source", &row.source)
            .body(row.payload.clone());
        for (k, v) in self.signer.headers(&id, ts, &row.payload) {
            req = req.header(k, v);
        }
        if let Some(t) = &row.event_type {
            req = req.header("tokengate-event-type", t);
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status();
                if status.is_success() {
                    Attempt::Delivered
                } else if status == reqwest::StatusCode::GONE {
                    Attempt::Gone("http 410 gone".into())
                } else {
                    let after_ms = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| retry_after_ms(v, tokengate_vault::clock::now_ms()));
                    Attempt::Retry {
                        error: format!("http {}", status.as_u16()),
                        after_ms,
                    }
                }
            }
            Err(e) => Attempt::Retry {
                error: if e.is_timeout() {
                    "timeout".into()
                } else if e.is_connect() {
                    "connect failed".into()
                } else {
                    "request failed".into()
                },
                after_ms: None,
            },
        }
    }
}

/// Where a lane delivers.
#[derive(Debug)]
pub enum Sink {
    App(AppSink),
    Nats(NatsSink),
}

impl Sink {
    async fn send(&self, row: &WebhookEventRow) -> Attempt {
        match self {
            Sink::App(a) => a.send(row).await,
            Sink::Nats(n) => n.send(row).await,
        }
    }
}

/// Everything one target's lanes share.
#[derive(Debug)]
pub struct Target {
    pub target: WebhookTarget,
    pub sink: Sink,
    pub policy: Policy,
    /// Set after a 410 (and on start if it was set before).
    pub disabled: AtomicBool,
}

const BATCH: i64 = 100;
/// Pending events are looked for at least this often (events queued again
/// by `tokengate webhooks dlq replay` from another process).
const POLL: Duration = Duration::from_secs(1);

async fn wait(wake: &mut watch::Receiver<u64>, d: Duration) {
    tokio::select! {
        _ = wake.changed() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

/// One source's lane to one target; runs until aborted.
pub async fn lane(
    vault: Arc<Vault>,
    t: Arc<Target>,
    source: String,
    mut wake: watch::Receiver<u64>,
) {
    let target = t.target;
    loop {
        if t.disabled.load(Ordering::Relaxed) {
            // Re-enabled by `tokengate webhooks dlq replay`.
            match vault.webhook_disabled(target).await {
                Ok(None) => t.disabled.store(false, Ordering::Relaxed),
                _ => {
                    tokio::time::sleep(POLL).await;
                    continue;
                }
            }
        }
        let rows = match vault
            .store()
            .webhook_pending(target, Some(&source), 0, BATCH)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(target = target.as_str(), error = %e, "webhook outbox read failed");
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        if rows.is_empty() {
            wait(&mut wake, POLL).await;
            continue;
        }
        for row in rows {
            let st = match target {
                WebhookTarget::App => &row.app,
                WebhookTarget::Nats => &row.nats,
            };
            let now = tokengate_vault::clock::now_ms();
            if st.next_at > now {
                // The head is backing off; nothing behind it may pass.
                let d = u64::try_from(st.next_at - now).unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(d.min(60_000))).await;
                break;
            }
            match step(&vault, &t, &row, st.attempts).await {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::error!(target = target.as_str(), code = e.code(), error = %e, "webhook delivery state not recorded; retrying");
                    tokio::time::sleep(POLL).await;
                    break;
                }
            }
        }
    }
}

/// One attempt and its record. `Ok(true)`: the lane may go on to the next
/// event.
async fn step(
    vault: &Vault,
    t: &Target,
    row: &WebhookEventRow,
    attempts: u32,
) -> Result<bool, tokengate_vault::VaultError> {
    let target = t.target;
    let label = target.as_str();
    match t.sink.send(row).await {
        Attempt::Delivered => {
            vault.webhook_delivered(row.seq, target).await?;
            metrics::counter!("tokengate_webhooks_delivered_total", "target" => label, "source" => row.source.clone()).increment(1);
            Ok(true)
        }
        Attempt::Retry { error, after_ms } => {
            metrics::counter!("tokengate_webhooks_delivery_failures_total", "target" => label)
                .increment(1);
            let attempts = attempts.saturating_add(1);
            if attempts >= t.policy.max_attempts {
                tracing::warn!(target = label, source = %row.source, seq = row.seq, %error, "webhook dead-lettered after {attempts} attempts");
                vault
                    .webhook_dead_letter(row.seq, target, &row.source, &row.event_id, &error)
                    .await?;
                metrics::counter!("tokengate_webhooks_dead_lettered_total", "target" => label)
                    .increment(1);
                return Ok(true);
            }
            // Retry-After is honoured as given (up to a day); otherwise
            // exponential backoff capped at the configured maximum.
            let delay = match after_ms {
                Some(a) => a.min(86_400_000),
                None => backoff_ms(attempts, t.policy.base_ms, t.policy.max_ms),
            };
            let next_at = tokengate_vault::clock::now_ms()
                .saturating_add(i64::try_from(delay).unwrap_or(i64::MAX));
            tracing::info!(target = label, source = %row.source, seq = row.seq, %error, delay_ms = delay, "webhook delivery failed; will retry");
            vault
                .webhook_retry(row.seq, target, next_at, &error)
                .await?;
            Ok(false)
        }
        Attempt::Gone(error) => {
            tracing::error!(
                target = label,
                "target answered 410 Gone: delivery disabled until `tokengate webhooks dlq replay`"
            );
            vault
                .webhook_dead_letter(row.seq, target, &row.source, &row.event_id, &error)
                .await?;
            vault.webhook_set_disabled(target, Some(&error)).await?;
            t.disabled.store(true, Ordering::Relaxed);
            metrics::counter!("tokengate_webhooks_dead_lettered_total", "target" => label)
                .increment(1);
            Ok(false)
        }
    }
}

/// Start the lanes for every configured target and the retention task.
pub fn spawn_all(
    vault: Arc<Vault>,
    cfg: &WebhooksSection,
    rx: &Receivers,
) -> Result<Vec<JoinHandle<()>>, String> {
    let mut tasks = Vec::new();
    let sources = rx.source_names();
    if let Some(d) = &cfg.deliver {
        let t = Arc::new(Target {
            target: WebhookTarget::App,
            sink: Sink::App(AppSink::new(d)?),
            policy: Policy {
                max_attempts: d.max_attempts,
                base_ms: d.backoff_base_ms,
                max_ms: d.backoff_max_secs.saturating_mul(1000),
            },
            disabled: AtomicBool::new(false),
        });
        start_lanes(&vault, &t, &sources, &rx.wake_app, &mut tasks);
    }
    if let Some(n) = cfg.nats.clone() {
        let vault = vault.clone();
        let sources = sources.clone();
        let wake = rx.wake_nats.clone();
        tasks.push(tokio::spawn(async move {
            let sink = NatsSink::connect(&n).await;
            let t = Arc::new(Target {
                target: WebhookTarget::Nats,
                sink: Sink::Nats(sink),
                policy: Policy {
                    max_attempts: n.max_attempts,
                    base_ms: n.backoff_base_ms,
                    max_ms: n.backoff_max_secs.saturating_mul(1000),
                },
                disabled: AtomicBool::new(false),
            });
            let mut lanes = Vec::new();
            start_lanes(&vault, &t, &sources, &wake, &mut lanes);
            // Lanes end with this task (aborting it drops the handles only,
            // so abort them explicitly when it is cancelled).
            let _guard = AbortOnDrop(lanes);
            std::future::pending::<()>().await;
        }));
    }
    let retention = Duration::from_secs(cfg.retention_hours.saturating_mul(3600));
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(600));
        loop {
            tick.tick().await;
            let cutoff = tokengate_vault::clock::now_ms()
                .saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
            match vault.webhook_prune(cutoff).await {
                Ok(n) if n > 0 => tracing::info!(
                    pruned = n,
                    "delivered webhook events past retention removed"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "webhook retention failed; will retry"),
            }
        }
    }));
    Ok(tasks)
}

struct AbortOnDrop(Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.iter().for_each(JoinHandle::abort);
    }
}

fn start_lanes(
    vault: &Arc<Vault>,
    t: &Arc<Target>,
    sources: &[String],
    wake: &watch::Sender<u64>,
    tasks: &mut Vec<JoinHandle<()>>,
) {
    for s in sources {
        tasks.push(tokio::spawn(lane(
            vault.clone(),
            t.clone(),
            s.clone(),
            wake.subscribe(),
        )));
    }
}
