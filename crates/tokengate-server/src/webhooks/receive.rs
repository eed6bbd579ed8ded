//! `POST /webhooks/{source}`.
//!
//! Order of checks: known source → per-source rate limit → body size →
//! signature and timestamp over the raw bytes → event id → card data
//! (configured fields tokenized, every other card number masked) → outbox
//! insert, durable before the answer. A replayed event id answers 200 and is
//! not stored or delivered again. Every refusal except the rate limit's 429
//! (which exists to bound work, audit writes included) is audited with its
//! reason; all are counted in `tokengate_webhooks_rejected_total`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokengate_audit::Ident;
use tokengate_store::{WebhookDelivery, WebhookEventRow};
use tokengate_vault::{Caller, CardInput, RequestMeta, Role, TokenizeRequest, Vault};
use tokengate_webhooks::scrub::{card_at, mask_pans, mask_text, replace_at};
use tokengate_webhooks::{HeaderLookup, Scheme, Verifier, stripe_event_id};
use tokio::sync::watch;
use zeroize::Zeroizing;

use super::config::{CardFields, SourceConfig, WebhooksSection};
use crate::app::AppState;
use crate::error::ApiError;
use crate::extract::PathParam;

/// A token bucket: `rate` per second, burst of `rate`.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    rate: f64,
}

impl Bucket {
    fn new(rate: u32) -> Bucket {
        Bucket {
            tokens: f64::from(rate),
            last: Instant::now(),
            rate: f64::from(rate),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Source {
    name: String,
    verifier: Verifier,
    max_body: usize,
    tokenize: Vec<CardFields>,
    bucket: Mutex<Bucket>,
}

/// The configured sources and the delivery workers' wake-up signals.
pub struct Receivers {
    sources: HashMap<String, Source>,
    /// Requests naming an unknown source share one bucket (their audit
    /// writes are bounded too).
    unknown: Mutex<Bucket>,
    app: bool,
    nats: bool,
    /// Signalled after every stored event.
    pub wake_app: watch::Sender<u64>,
    pub wake_nats: watch::Sender<u64>,
}

impl std::fmt::Debug for Receivers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receivers")
            .field("sources", &self.sources.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Receivers {
    /// From a validated section (a source that fails to build is left out
    /// and logged; validation makes that impossible).
    pub fn new(cfg: &WebhooksSection) -> Receivers {
        let mut sources = HashMap::new();
        for s in &cfg.sources {
            match build(s) {
                Ok(src) => {
                    if let Scheme::Generic(g) = src.verifier.scheme()
                        && !g.id_is_signed()
                    {
                        tracing::warn!(
                            source = %s.name,
                            "webhook source: the id_header is not part of signed_content, so a captured \
                             request replayed within tolerance_secs with a new id verifies and is stored \
                             and delivered again; add {{id}} to signed_content if the sender signs the id, \
                             or drop id_header (the SHA-256 of the body is then the id)"
                        );
                    }
                    sources.insert(s.name.clone(), src);
                }
                Err((field, msg)) => tracing::error!(%field, %msg, "webhook source left out"),
            }
        }
        Receivers {
            sources,
            unknown: Mutex::new(Bucket::new(10)),
            app: cfg.deliver.is_some(),
            nats: cfg.nats.is_some(),
            wake_app: watch::channel(0).0,
            wake_nats: watch::channel(0).0,
        }
    }

    /// Source names, for the delivery lanes.
    pub fn source_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.sources.keys().cloned().collect();
        v.sort();
        v
    }
}

fn build(s: &SourceConfig) -> Result<Source, (String, String)> {
    Ok(Source {
        name: s.name.clone(),
        verifier: s.verifier()?,
        max_body: s.max_body_bytes,
        tokenize: s.tokenize.clone(),
        bucket: Mutex::new(Bucket::new(s.rate_limit_per_sec)),
    })
}

struct Headers<'a>(&'a HeaderMap);

impl HeaderLookup for Headers<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The 200 answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Received {
    /// `stored` (new event, durable, queued for delivery) or `duplicate`
    /// (this event id was stored before; not delivered again).
    pub status: &'static str,
}

fn reject_count(source: &str, reason: &'static str) {
    metrics::counter!("tokengate_webhooks_rejected_total", "source" => source.to_owned(), "reason" => reason).increment(1);
}

/// Audit and count a refusal, then build its answer. If the audit record
/// cannot be written the answer is 503 (fail closed: nothing was stored).
async fn refuse(
    vault: &Vault,
    source: Option<&str>,
    meta: &RequestMeta,
    status: StatusCode,
    reason: &'static str,
    message: &str,
    detail: &str,
) -> ApiError {
    reject_count(source.unwrap_or("unknown"), reason);
    if let Err(e) = vault.webhook_reject(source, reason, detail, meta).await {
        return ApiError::from(e);
    }
    ApiError::new(status, reason, message)
}

fn now_secs() -> i64 {
    tokengate_vault::clock::now_ms() / 1000
}

/// `POST /webhooks/{source}`: verify, de-duplicate, store, answer.
#[utoipa::path(post, path = "/webhooks/{source}", tag = "webhooks",
    params(("source" = String, Path, description = "A configured `[[webhooks.sources]]` name")),
    request_body(content = String, description = "The sender's raw payload (verified byte for byte)", content_type = "application/json"),
    responses(
        (status = 200, description = "Stored durably (or a duplicate of a stored event)", body = Received),
        (status = 400, description = "missing_signature, malformed_signature, missing_event_id", body = crate::error::ErrorBody),
        (status = 401, description = "bad_signature, stale_timestamp, future_timestamp", body = crate::error::ErrorBody),
        (status = 404, description = "unknown_webhook_source", body = crate::error::ErrorBody),
        (status = 413, description = "payload_too_large", body = crate::error::ErrorBody),
        (status = 422, description = "card_data_unmaskable: card numbers in a body that is not text", body = crate::error::ErrorBody),
        (status = 429, description = "rate_limited", body = crate::error::ErrorBody),
        (status = 503, description = "audit_unavailable / outbox_unavailable: nothing stored, send again", body = crate::error::ErrorBody),
    ))]
pub async fn receive(
    State(state): State<AppState>,
    PathParam(source): PathParam<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let vault = state.vault.as_ref();
    let rx = state.webhooks.as_ref();
    let meta = req
        .extensions()
        .get::<RequestMeta>()
        .cloned()
        .unwrap_or_default();
    let Some(src) = rx.sources.get(&source) else {
        let allowed = rx.unknown.lock().map(|mut b| b.take()).unwrap_or(false);
        if !allowed {
            reject_count("unknown", "rate_limited");
            return Ok(rate_limited());
        }
        // The name is caller text: only its redacted, shortened form is kept.
        let detail = format!("source={}", source.chars().take(64).collect::<String>());
        return Err(refuse(
            vault,
            None,
            &meta,
            StatusCode::NOT_FOUND,
            "unknown_webhook_source",
            "no webhook source of that name is configured",
            &detail,
        )
        .await);
    };
    let name = src.name.as_str();
    if !src.bucket.lock().map(|mut b| b.take()).unwrap_or(false) {
        reject_count(name, "rate_limited");
        return Ok(rate_limited());
    }
    let (parts, body) = req.into_parts();
    if let Some(len) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        && len > src.max_body
    {
        return Err(too_large(vault, name, &meta, src.max_body).await);
    }
    let body = match axum::body::to_bytes(body, src.max_body).await {
        Ok(b) => b,
        Err(_) => return Err(too_large(vault, name, &meta, src.max_body).await),
    };
    let verified = match src
        .verifier
        .verify(&Headers(&parts.headers), &body, now_secs())
    {
        Ok(v) => v,
        Err(e) => {
            let status = match e.code() {
                "missing_signature" | "malformed_signature" => StatusCode::BAD_REQUEST,
                _ => StatusCode::UNAUTHORIZED,
            };
            return Err(refuse(
                vault,
                Some(name),
                &meta,
                status,
                e.code(),
                &e.to_string(),
                "",
            )
            .await);
        }
    };
    let event_id = match (src.verifier.scheme(), verified.id) {
        (_, Some(id)) => id,
        (Scheme::Stripe, None) => match stripe_event_id(&body) {
            Some(id) => id,
            None => {
                return Err(refuse(
                    vault,
                    Some(name),
                    &meta,
                    StatusCode::BAD_REQUEST,
                    "missing_event_id",
                    "a Stripe event needs a top-level \"id\"",
                    "",
                )
                .await);
            }
        },
        (_, None) => format!(
            "sha256:{}",
            data_encoding::HEXLOWER
                .encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &body).as_ref())
        ),
    };
    // An id is the sender's text: never store something card-like as is,
    // and never let two ids become one (see `webhook_event_key`).
    let event_id = vault.webhook_event_key(&event_id)?;
    let (payload, event_type) = match screen(vault, src, &body, &meta).await {
        Ok(p) => p,
        Err(reason) => {
            return Err(refuse(
                vault,
                Some(name),
                &meta,
                StatusCode::UNPROCESSABLE_ENTITY,
                reason,
                "the body holds card numbers and is not text they can be masked in",
                "",
            )
            .await);
        }
    };
    let row = WebhookEventRow {
        seq: 0,
        source: name.to_owned(),
        event_id: event_id.clone(),
        event_type,
        received_at: tokengate_vault::clock::now_ms(),
        payload,
        app: WebhookDelivery::new(rx.app),
        nats: WebhookDelivery::new(rx.nats),
    };
    let stored = match vault.webhook_store(row).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(source = name, code = e.code(), error = %e, "webhook outbox write failed");
            metrics::counter!("tokengate_webhooks_store_failures_total", "source" => name.to_owned()).increment(1);
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "outbox_unavailable",
                "the event could not be stored; nothing was accepted, send it again",
            ));
        }
    };
    if !stored {
        // A replay of a stored event: acknowledged, not delivered again.
        reject_count(name, "replay");
        metrics::counter!("tokengate_webhooks_duplicates_total", "source" => name.to_owned())
            .increment(1);
        vault
            .webhook_reject(Some(name), "replay", &format!("event_id={event_id}"), &meta)
            .await?;
        return Ok((
            StatusCode::OK,
            Json(Received {
                status: "duplicate",
            }),
        )
            .into_response());
    }
    metrics::counter!("tokengate_webhooks_received_total", "source" => name.to_owned())
        .increment(1);
    if rx.app {
        rx.wake_app.send_modify(|c| *c = c.wrapping_add(1));
    }
    if rx.nats {
        rx.wake_nats.send_modify(|c| *c = c.wrapping_add(1));
    }
    Ok((StatusCode::OK, Json(Received { status: "stored" })).into_response())
}

fn rate_limited() -> Response {
    let mut r = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many webhooks from this source; retry later",
    )
    .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

async fn too_large(vault: &Vault, source: &str, meta: &RequestMeta, limit: usize) -> ApiError {
    refuse(
        vault,
        Some(source),
        meta,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        &format!("the body must be at most {limit} bytes for this source"),
        "",
    )
    .await
}

/// The payload as stored and delivered: configured card fields tokenized,
/// every other card number masked. The raw bytes are kept when nothing
/// had to change. `Err(reason)` when card data cannot be made safe.
async fn screen(
    vault: &Vault,
    src: &Source,
    body: &[u8],
    meta: &RequestMeta,
) -> Result<(Vec<u8>, Option<String>), &'static str> {
    // Fast path: nothing card-like in the raw text (and no `\u` escapes
    // that could spell digits) and no fields to tokenize: the body is kept
    // byte for byte and only its `type` is read.
    if src.tokenize.is_empty()
        && let Ok(text) = std::str::from_utf8(body)
        && !text.contains("\\u")
        && !tokengate_core::contains_pan_like(text)
    {
        return Ok((body.to_vec(), event_type_only(body)));
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(mut v) => {
            let event_type = v.get("type").and_then(|t| t.as_str()).map(|t| {
                tokengate_audit::SafeText::new(t)
                    .as_str()
                    .chars()
                    .take(128)
                    .collect()
            });
            let mut changed = 0usize;
            for fields in &src.tokenize {
                changed += usize::from(tokenize_field(vault, src, &mut v, fields, meta).await);
            }
            let masked = mask_pans(&mut v);
            if masked > 0 {
                metrics::counter!("tokengate_webhooks_pans_masked_total", "source" => src.name.clone())
                    .increment(masked as u64);
            }
            changed += masked;
            if changed == 0 {
                return Ok((body.to_vec(), event_type));
            }
            serde_json::to_vec(&v)
                .map(|b| (b, event_type))
                .map_err(|_| "card_data_unmaskable")
        }
        Err(_) => match std::str::from_utf8(body) {
            Ok(text) => Ok((
                mask_text(text).map_or_else(|| body.to_vec(), String::into_bytes),
                None,
            )),
            Err(_) => {
                if tokengate_core::contains_pan_like(&String::from_utf8_lossy(body)) {
                    Err("card_data_unmaskable")
                } else {
                    Ok((body.to_vec(), None))
                }
            }
        },
    }
}

/// The top-level `"type"` string of a JSON body, PAN-safe and at most 128
/// characters.
fn event_type_only(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct TypeOnly {
        #[serde(rename = "type", default)]
        t: Option<String>,
    }
    serde_json::from_slice::<TypeOnly>(body).ok()?.t.map(|t| {
        tokengate_audit::SafeText::new(&t)
            .as_str()
            .chars()
            .take(128)
            .collect()
    })
}

/// Tokenize one configured card (deterministic: a redelivered event gets
/// the same token); true when the number was replaced by a token. A number
/// that cannot be tokenized is left to the mask.
async fn tokenize_field(
    vault: &Vault,
    src: &Source,
    v: &mut serde_json::Value,
    f: &CardFields,
    meta: &RequestMeta,
) -> bool {
    let Some(number) = card_at(v, &f.number).map(Zeroizing::new) else {
        return false;
    };
    let num = |p: &str| card_at(v, p).and_then(|s| s.trim().parse::<u32>().ok());
    let (Some(exp_month), Some(exp_year)) = (num(&f.exp_month), num(&f.exp_year)) else {
        return false;
    };
    let caller = Caller {
        key_id: Ident::new(&format!("webhook:{}", src.name))
            .unwrap_or_else(|| Ident::from_static("webhook:unknown")),
        tenant: vault.default_tenant().to_owned(),
        roles: vec![Role::Tokenize],
        meta: meta.clone(),
    };
    let req = TokenizeRequest {
        card: CardInput {
            number,
            exp_month,
            exp_year: if exp_year < 100 {
                exp_year + 2000
            } else {
                exp_year
            },
            name: None,
            cvc: None,
        },
        deterministic: true,
        ..TokenizeRequest::default()
    };
    match vault.tokenize(&caller, &req).await {
        Ok(out) => {
            metrics::counter!("tokengate_webhooks_pans_tokenized_total", "source" => src.name.clone())
                .increment(1);
            replace_at(v, &f.number, &out.info.token)
        }
        Err(e) => {
            tracing::warn!(source = %src.name, code = e.code(), "webhook card field not tokenized; masked instead");
            false
        }
    }
}
