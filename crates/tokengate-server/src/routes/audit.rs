//! `/v1/audit/*`: search the audit log, the latest signed checkpoint, and
//! Merkle proofs. Role `auditor`. Searches are themselves audited.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use serde::Serialize;
use tokengate_audit::Action;
use tokengate_vault::auditlog::{parse_outcome, parse_time, record_json};
use tokengate_vault::{AuditQuery, ConsistencyProof, InclusionProof, Role, VaultError};
use utoipa::ToSchema;

use crate::app::AppState;
use crate::error::ApiError;
use crate::extract::Authed;

const MAX_LIMIT: usize = 1000;

/// Parse a query string into known keys; unknown or repeated keys are a 400.
fn params(raw: Option<&str>, known: &[&str]) -> Result<HashMap<String, String>, ApiError> {
    let mut out = HashMap::new();
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        if !known.contains(&k.as_ref()) {
            return Err(bad(&format!(
                "unknown query parameter; known: {}",
                known.join(", ")
            )));
        }
        if out.insert(k.into_owned(), v.into_owned()).is_some() {
            return Err(bad("a query parameter was given twice"));
        }
    }
    Ok(out)
}

fn bad(message: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
}

fn number(p: &HashMap<String, String>, key: &str) -> Result<Option<u64>, ApiError> {
    p.get(key)
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| bad(&format!("{key} must be a non-negative integer")))
        })
        .transpose()
}

fn invalid_to_400(e: VaultError) -> ApiError {
    match e {
        VaultError::Invalid { code, message } => {
            ApiError::new(StatusCode::BAD_REQUEST, code, message)
        }
        e => e.into(),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEventsBody {
    /// `{seq, hash, event}` per record, oldest first.
    pub events: Vec<serde_json::Value>,
    /// Pass as `after_seq` for the next page; null when this page was not full.
    pub next_after_seq: Option<u64>,
}

/// Search the audit log.
#[utoipa::path(get, path = "/v1/audit/events", tag = "audit", security(("api_key" = [])),
    params(
        ("since" = Option<String>, Query, description = "RFC 3339 time or Unix ms (inclusive)"),
        ("until" = Option<String>, Query, description = "RFC 3339 time or Unix ms (exclusive)"),
        ("actor" = Option<String>, Query), ("action" = Option<String>, Query), ("token" = Option<String>, Query),
        ("request_id" = Option<String>, Query), ("outcome" = Option<String>, Query, description = "success or failure"),
        ("after_seq" = Option<u64>, Query), ("limit" = Option<u64>, Query, description = "1-1000, default 100"),
    ),
    responses((status = 200, body = AuditEventsBody), (status = 400, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub async fn events(
    State(s): State<AppState>,
    Authed(caller): Authed,
    RawQuery(raw): RawQuery,
) -> Result<Json<AuditEventsBody>, ApiError> {
    let p = params(
        raw.as_deref(),
        &[
            "since",
            "until",
            "actor",
            "action",
            "token",
            "request_id",
            "outcome",
            "after_seq",
            "limit",
        ],
    )?;
    let limit = match number(&p, "limit")? {
        None => 100,
        Some(n) if (1..=MAX_LIMIT as u64).contains(&n) => n as usize,
        Some(_) => return Err(bad("limit must be 1-1000")),
    };
    let q = AuditQuery {
        since_ms: p
            .get("since")
            .map(|v| parse_time(v))
            .transpose()
            .map_err(invalid_to_400)?,
        until_ms: p
            .get("until")
            .map(|v| parse_time(v))
            .transpose()
            .map_err(invalid_to_400)?,
        actor: p.get("actor").cloned(),
        action: p.get("action").cloned(),
        token: p.get("token").cloned(),
        request_id: p.get("request_id").cloned(),
        success: p
            .get("outcome")
            .map(|v| parse_outcome(v))
            .transpose()
            .map_err(invalid_to_400)?,
        after_seq: number(&p, "after_seq")?.unwrap_or(0),
    };
    let records = s.vault.search_audit(&caller, &q, limit).await?;
    let next_after_seq = (records.len() == limit)
        .then(|| records.last().map(|r| r.seq))
        .flatten();
    Ok(Json(AuditEventsBody {
        events: records.iter().map(|r| record_json(r, false)).collect(),
        next_after_seq,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CheckpointBody {
    pub origin: String,
    pub tree_size: u64,
    /// Base64 RFC 6962 root.
    pub root: String,
    /// The C2SP signed note; keep a copy outside tokengate.
    pub note: String,
}

/// The latest signed checkpoint of the audit log.
#[utoipa::path(get, path = "/v1/audit/checkpoint", tag = "audit", security(("api_key" = [])),
    responses((status = 200, body = CheckpointBody), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn checkpoint(
    State(s): State<AppState>,
    Authed(caller): Authed,
) -> Result<Json<CheckpointBody>, ApiError> {
    s.vault
        .require(&caller, Role::Auditor, Action::AuditRead)
        .await?;
    match s.vault.latest_checkpoint().await? {
        Some(c) => Ok(Json(CheckpointBody {
            origin: c.origin,
            tree_size: c.size,
            root: data_encoding::BASE64.encode(&c.root),
            note: c.note,
        })),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_checkpoint",
            "no checkpoint yet; one is made within audit_checkpoint_secs of the first record",
        )),
    }
}

/// Inclusion proof for record `seq` (RFC 9162 §2.1.3).
#[utoipa::path(get, path = "/v1/audit/proofs/inclusion", tag = "audit", security(("api_key" = [])),
    params(("seq" = u64, Query), ("tree_size" = Option<u64>, Query, description = "default: the latest checkpoint")),
    responses((status = 200, body = Object), (status = 400, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub async fn inclusion(
    State(s): State<AppState>,
    Authed(caller): Authed,
    RawQuery(raw): RawQuery,
) -> Result<Json<InclusionProof>, ApiError> {
    s.vault
        .require(&caller, Role::Auditor, Action::AuditRead)
        .await?;
    let p = params(raw.as_deref(), &["seq", "tree_size"])?;
    let seq = number(&p, "seq")?.ok_or_else(|| bad("seq is required"))?;
    let proof = s
        .vault
        .prove_inclusion(seq, number(&p, "tree_size")?)
        .await
        .map_err(invalid_to_400)?;
    Ok(Json(proof))
}

/// Consistency proof from tree size `from` (RFC 9162 §2.1.4).
#[utoipa::path(get, path = "/v1/audit/proofs/consistency", tag = "audit", security(("api_key" = [])),
    params(("from" = u64, Query), ("to" = Option<u64>, Query, description = "default: the latest checkpoint")),
    responses((status = 200, body = Object), (status = 400, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub async fn consistency(
    State(s): State<AppState>,
    Authed(caller): Authed,
    RawQuery(raw): RawQuery,
) -> Result<Json<ConsistencyProof>, ApiError> {
    s.vault
        .require(&caller, Role::Auditor, Action::AuditRead)
        .await?;
    let p = params(raw.as_deref(), &["from", "to"])?;
    let from = number(&p, "from")?.ok_or_else(|| bad("from is required"))?;
    let proof = s
        .vault
        .prove_consistency(from, number(&p, "to")?)
        .await
        .map_err(invalid_to_400)?;
    Ok(Json(proof))
}
