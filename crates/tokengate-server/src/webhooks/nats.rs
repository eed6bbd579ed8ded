//! Publishing verified events to NATS JetStream.
//!
//! Subject `<subject>.<source>`; header `Nats-Msg-Id: <source>:<event id>`
//! so that JetStream drops a republish within its duplicate window (a
//! restart between the ack and our delivered mark); an event counts as
//! delivered only when the stream acknowledged it (it is stored there).

use std::time::Duration;

use async_nats::jetstream;
use tokengate_store::WebhookEventRow;

use super::config::NatsConfig;
use super::deliver::{Attempt, delivery_id};

/// A JetStream context and where to publish.
pub struct NatsSink {
    js: jetstream::Context,
    subject: String,
}

impl std::fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSink")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl NatsSink {
    /// Connect (retrying until the server answers) and make sure the stream
    /// exists.
    pub async fn connect(cfg: &NatsConfig) -> NatsSink {
        let mut delay = Duration::from_millis(500);
        loop {
            match Self::try_connect(cfg).await {
                Ok(s) => return s,
                Err(e) => {
                    tracing::warn!(error = %e, "NATS JetStream not reachable; retrying");
                    metrics::counter!("tokengate_webhooks_delivery_failures_total", "target" => "nats")
                        .increment(1);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    async fn try_connect(cfg: &NatsConfig) -> Result<NatsSink, String> {
        let client = async_nats::connect(cfg.url.as_str())
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let js = jetstream::new(client);
        js.get_or_create_stream(jetstream::stream::Config {
            name: cfg.stream.clone(),
            subjects: vec![format!("{}.>", cfg.subject)],
            ..Default::default()
        })
        .await
        .map_err(|e| format!("stream {}: {e}", cfg.stream))?;
        Ok(NatsSink {
            js,
            subject: cfg.subject.clone(),
        })
    }

    pub async fn send(&self, row: &WebhookEventRow) -> Attempt {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", delivery_id(row).as_str());
        headers.insert("Tokengate-Source", row.source.as_str());
        if let Some(t) = &row.event_type {
            headers.insert("Tokengate-Event-Type", t.as_str());
        }
        let subject = format!("{}.{}", self.subject, row.source);
        let ack = match self
            .js
            .publish_with_headers(subject, headers, row.payload.clone().into())
            .await
        {
            Ok(f) => f,
            Err(e) => {
                return Attempt::Retry {
                    error: format!("nats publish: {}", e.kind()),
                    after_ms: None,
                };
            }
        };
        match ack.await {
            Ok(_) => Attempt::Delivered,
            Err(e) => Attempt::Retry {
                error: format!("nats ack: {}", e.kind()),
                after_ms: None,
            },
        }
    }
}
