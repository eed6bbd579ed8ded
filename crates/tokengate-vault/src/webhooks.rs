//! The webhook outbox through the vault's group committer: store a verified
//! event durably (before the receiver answers 2xx), audit every refusal,
//! record delivery progress, dead-letter and replay.
//!
//! Payloads handed in here have already been screened for card numbers by
//! the receiver (tokenized or masked); this module stores them as given.

use std::borrow::Cow;

use tokengate_audit::{Action, Ident, Outcome, SafeText};
use tokengate_crypto::KeyPurpose;
use tokengate_store::{Job, Op, WebhookEventRow, WebhookOp, WebhookTarget};

use crate::access::{RequestMeta, event};
use crate::error::VaultError;
use crate::open::Vault;

/// The audit actor for a webhook source: `webhook:<source>`.
fn actor(source: Option<&str>) -> Ident {
    source
        .and_then(|s| Ident::new(&format!("webhook:{s}")))
        .unwrap_or_else(|| Ident::from_static("webhook:unknown"))
}

impl Vault {
    async fn webhook_job(&self, job: Job) -> Result<u64, VaultError> {
        match self.committer.submit(job).await {
            Ok(Ok(out)) => Ok(out.first().map_or(0, |o| o.affected())),
            Ok(Err(e)) => Err(VaultError::Internal(format!("webhook outbox: {e}"))),
            Err(_) => Err(VaultError::AuditUnavailable),
        }
    }

    /// The form in which a sender's event id is stored and de-duplicated:
    /// the id as sent, unless it holds something that reads as a card
    /// number. Such an id is never stored in clear: its card-like digits
    /// are masked (last four kept), followed by `~fp<version>~` and 128 bits
    /// of a keyed hash of the whole id under the fingerprint key.
    ///
    /// Masking alone made different ids one: two numeric ids with the same
    /// length and last four digits masked to the same text, and the second
    /// event was answered as a replay and never delivered. The keyed hash
    /// keeps them apart without revealing them (an unkeyed hash of a card
    /// number could be reversed by trying every number). After a
    /// fingerprint-key rotation a replay of such an id hashes differently
    /// and is delivered again (at least once, as every delivery is).
    pub fn webhook_event_key(&self, id: &str) -> Result<String, VaultError> {
        let masked = match tokengate_core::redact_pans(id) {
            Cow::Borrowed(_) => return Ok(id.to_owned()),
            Cow::Owned(m) => m,
        };
        let ring = self.ring();
        let version = ring.active_version(KeyPurpose::Fingerprint)?;
        let mac = ring.hmac(
            KeyPurpose::Fingerprint,
            version,
            &[b"webhook-event-id-v1", id.as_bytes()],
        )?;
        let (tag, _) = mac.split_at(16);
        Ok(format!(
            "{masked}~fp{version}~{}",
            data_encoding::HEXLOWER.encode(tag)
        ))
    }

    /// Store a verified event. `Ok(true)`: stored now and durable;
    /// `Ok(false)`: the same `(source, event_id)` was stored before (a
    /// replay), and the caller answers 2xx without delivering it again.
    pub async fn webhook_store(&self, row: WebhookEventRow) -> Result<bool, VaultError> {
        let n = self
            .webhook_job(Job {
                ops: vec![Op::Webhook(WebhookOp::Insert(row))],
                ..Job::default()
            })
            .await?;
        Ok(n > 0)
    }

    /// Audit a refused webhook with its stable `reason` code. `source` is
    /// `None` for an unknown source; `detail` is free text (PAN-redacted).
    pub async fn webhook_reject(
        &self,
        source: Option<&str>,
        reason: &'static str,
        detail: &str,
        meta: &RequestMeta,
    ) -> Result<(), VaultError> {
        let mut ev = event(
            Action::WebhookReject,
            Outcome::failure(reason),
            &actor(source),
            None,
            meta,
        );
        ev.detail = (!detail.is_empty()).then(|| SafeText::new(detail));
        self.record(vec![ev]).await
    }

    /// A delivery to `target` succeeded.
    pub async fn webhook_delivered(
        &self,
        seq: u64,
        target: WebhookTarget,
    ) -> Result<(), VaultError> {
        self.webhook_job(Job {
            ops: vec![Op::Webhook(WebhookOp::Delivered { seq, target })],
            ..Job::default()
        })
        .await
        .map(|_| ())
    }

    /// A delivery failed; try again at `next_at` (Unix ms).
    pub async fn webhook_retry(
        &self,
        seq: u64,
        target: WebhookTarget,
        next_at: i64,
        error: &str,
    ) -> Result<(), VaultError> {
        self.webhook_job(Job {
            ops: vec![Op::Webhook(WebhookOp::Retry {
                seq,
                target,
                next_at,
                error: SafeText::new(error).as_str().to_owned(),
            })],
            ..Job::default()
        })
        .await
        .map(|_| ())
    }

    /// Dead-letter an event for `target`, audited in the same transaction.
    pub async fn webhook_dead_letter(
        &self,
        seq: u64,
        target: WebhookTarget,
        source: &str,
        event_id: &str,
        error: &str,
    ) -> Result<(), VaultError> {
        let error = SafeText::new(error);
        let mut ev = event(
            Action::WebhookDeadLetter,
            Outcome::failure("delivery_failed"),
            &actor(Some(source)),
            None,
            &RequestMeta::default(),
        );
        ev.detail = Some(SafeText::new(&format!(
            "target={} seq={seq} event_id={event_id} error={}",
            target.as_str(),
            error.as_str()
        )));
        self.webhook_job(Job {
            ops: vec![Op::Webhook(WebhookOp::Dead {
                seq,
                target,
                error: error.as_str().to_owned(),
            })],
            events: vec![ev],
            ..Job::default()
        })
        .await
        .map(|_| ())
    }

    /// Queue dead-lettered events again (one by `seq`, or all), audited.
    /// Returns how many were queued.
    pub async fn webhook_replay(
        &self,
        seq: Option<u64>,
        target: WebhookTarget,
        actor_name: &str,
    ) -> Result<u64, VaultError> {
        let actor = Ident::new(actor_name).unwrap_or_else(|| Ident::from_static("cli"));
        let mut ev = event(
            Action::WebhookReplay,
            Outcome::Success,
            &actor,
            None,
            &RequestMeta::default(),
        );
        ev.detail = Some(SafeText::new(&format!(
            "target={} seq={}",
            target.as_str(),
            seq.map_or_else(|| "all".to_owned(), |s| s.to_string())
        )));
        self.webhook_job(Job {
            ops: vec![Op::Webhook(WebhookOp::Requeue {
                seq,
                target,
                now: crate::clock::now_ms(),
            })],
            events: vec![ev],
            ..Job::default()
        })
        .await
    }

    /// Delete delivered events received before `before_ms`; returns how many.
    pub async fn webhook_prune(&self, before_ms: i64) -> Result<u64, VaultError> {
        self.webhook_job(Job {
            ops: vec![Op::Webhook(WebhookOp::Prune {
                received_before: before_ms,
            })],
            ..Job::default()
        })
        .await
    }
}

impl Vault {
    /// Turn delivery to `target` off (`Some(reason)`, e.g. the app answered
    /// 410 Gone) or back on (`None`). Kept across restarts.
    pub async fn webhook_set_disabled(
        &self,
        target: WebhookTarget,
        reason: Option<&str>,
    ) -> Result<(), VaultError> {
        self.webhook_job(Job {
            ops: vec![Op::SetMeta {
                key: format!("webhooks.{}.disabled", target.as_str()),
                value: reason
                    .map(|r| SafeText::new(r).as_str().to_owned())
                    .unwrap_or_default(),
            }],
            ..Job::default()
        })
        .await
        .map(|_| ())
    }

    /// Why delivery to `target` is off, if it is.
    pub async fn webhook_disabled(
        &self,
        target: WebhookTarget,
    ) -> Result<Option<String>, VaultError> {
        Ok(self
            .store
            .meta(&format!("webhooks.{}.disabled", target.as_str()))
            .await?
            .filter(|v| !v.is_empty()))
    }
}
