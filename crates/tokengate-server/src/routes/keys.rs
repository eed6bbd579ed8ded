//! `/v1/keys`: the key ring — list versions, rotate, minimum decryption
//! version, destroy, and the background re-keying job (rewrap,
//! re-fingerprint). Role `admin`; every change is audited.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tokengate_audit::Action;
use tokengate_vault::{
    Caller, KeyActor, KeyVersionInfo, RekeyJobStatus, RekeyOptions, RekeyReport, Role,
    parse_purpose,
};
use utoipa::ToSchema;

use crate::app::AppState;
use crate::error::ApiError;
use crate::extract::{Authed, JsonBody, PathParam};

/// One key version.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyVersionBody {
    /// `data`, `fingerprint`, `cvc`, `api_key`, `audit`, `audit_signing`, `tls_key`.
    pub purpose: String,
    pub version: u32,
    /// `active`, `decrypt-only`, `retired` or `destroyed`.
    pub state: String,
    pub created_at: String,
    pub age_days: i64,
    /// Stored records using this version (`null`: not tracked per record).
    pub records: Option<i64>,
    pub min_decryption_version: u32,
}

impl From<KeyVersionInfo> for KeyVersionBody {
    fn from(k: KeyVersionInfo) -> Self {
        KeyVersionBody {
            purpose: k.purpose,
            version: k.version,
            state: k.state,
            created_at: k.created_at,
            age_days: k.age_days,
            records: k.records,
            min_decryption_version: k.min_decryption_version,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyVersionBody>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MinVersionBody {
    pub version: u32,
}

#[derive(Debug, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RewrapBody {
    /// `data` (rewrap every DEK; default) or `fingerprint` (recompute every fingerprint).
    pub purpose: Option<String>,
    /// At most this many records per second (default: unlimited).
    pub rate: Option<u32>,
    /// Records per transaction (default 1000, at most 10000).
    pub batch: Option<usize>,
    /// Share of the time the job may run while live traffic is seen
    /// (0 < x ≤ 1; default 0.2; 1 = never yield).
    pub busy_share: Option<f64>,
}

/// A re-keying job's report.
#[derive(Debug, Serialize, ToSchema)]
pub struct RekeyReportBody {
    pub purpose: String,
    pub target_version: u32,
    pub total: u64,
    pub moved: u64,
    pub skipped: u64,
    pub failed: u64,
    pub remaining: u64,
    pub millis: u64,
    /// Of `millis`, the time the job slept to leave room for live traffic.
    pub yielded_millis: u64,
}

impl From<RekeyReport> for RekeyReportBody {
    fn from(r: RekeyReport) -> Self {
        RekeyReportBody {
            purpose: r.purpose,
            target_version: r.target_version,
            total: r.total,
            moved: r.moved,
            skipped: r.skipped,
            failed: r.failed,
            remaining: r.remaining,
            millis: r.millis,
            yielded_millis: r.yielded_millis,
        }
    }
}

/// The background re-keying job.
#[derive(Debug, Serialize, ToSchema)]
pub struct RekeyStatusBody {
    pub running: bool,
    pub purpose: Option<String>,
    pub done: u64,
    pub total: u64,
    pub report: Option<RekeyReportBody>,
    pub error: Option<String>,
}

impl From<RekeyJobStatus> for RekeyStatusBody {
    fn from(s: RekeyJobStatus) -> Self {
        RekeyStatusBody {
            running: s.running,
            purpose: s.purpose,
            done: s.done,
            total: s.total,
            report: s.report.map(RekeyReportBody::from),
            error: s.error,
        }
    }
}

async fn admin(s: &AppState, caller: &Caller, action: Action) -> Result<KeyActor, ApiError> {
    s.vault.require(caller, Role::Admin, action).await?;
    Ok(KeyActor {
        id: caller.key_id.clone(),
        meta: caller.meta.clone(),
    })
}

/// List every key version with its state, age and record count.
#[utoipa::path(get, path = "/v1/keys", tag = "keys", security(("api_key" = [])),
    responses((status = 200, body = KeyList), (status = 403, body = crate::error::ErrorBody)))]
pub async fn list(
    State(s): State<AppState>,
    Authed(caller): Authed,
) -> Result<Json<KeyList>, ApiError> {
    admin(&s, &caller, Action::KeyList).await?;
    let keys = s.vault.list_keys().await?;
    Ok(Json(KeyList {
        keys: keys.into_iter().map(KeyVersionBody::from).collect(),
    }))
}

/// Add a new version of a purpose; new writes use it at once (other nodes
/// within `key_reload_ms`).
#[utoipa::path(post, path = "/v1/keys/{purpose}/rotate", tag = "keys", security(("api_key" = [])),
    params(("purpose" = String, Path)),
    responses((status = 201, body = KeyVersionBody), (status = 403, body = crate::error::ErrorBody),
        (status = 422, description = "unknown_key_purpose, key_rotation_unsupported", body = crate::error::ErrorBody)))]
pub async fn rotate(
    State(s): State<AppState>,
    Authed(caller): Authed,
    PathParam(purpose): PathParam<String>,
) -> Result<(StatusCode, Json<KeyVersionBody>), ApiError> {
    let actor = admin(&s, &caller, Action::KeyRotate).await?;
    let purpose = parse_purpose(&purpose)?;
    let k = s.vault.rotate_key(purpose, &actor).await?;
    Ok((StatusCode::CREATED, Json(k.into())))
}

/// Refuse decryption under versions below `version` until records are rewrapped.
#[utoipa::path(post, path = "/v1/keys/{purpose}/min-decryption-version", tag = "keys", security(("api_key" = [])),
    params(("purpose" = String, Path)), request_body = MinVersionBody,
    responses((status = 204), (status = 403, body = crate::error::ErrorBody),
        (status = 422, description = "invalid_key_version", body = crate::error::ErrorBody)))]
pub async fn min_version(
    State(s): State<AppState>,
    Authed(caller): Authed,
    PathParam(purpose): PathParam<String>,
    JsonBody(body): JsonBody<MinVersionBody>,
) -> Result<StatusCode, ApiError> {
    let actor = admin(&s, &caller, Action::KeyMinDecryption).await?;
    let purpose = parse_purpose(&purpose)?;
    s.vault
        .set_min_decryption_version(purpose, body.version, &actor)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Destroy a key version (refused while records use it, and for the active version).
#[utoipa::path(delete, path = "/v1/keys/{purpose}/versions/{version}", tag = "keys", security(("api_key" = [])),
    params(("purpose" = String, Path), ("version" = u32, Path)),
    responses((status = 204), (status = 403, body = crate::error::ErrorBody),
        (status = 404, description = "key_version_not_found", body = crate::error::ErrorBody),
        (status = 422, description = "key_in_use, key_version_active", body = crate::error::ErrorBody)))]
pub async fn destroy(
    State(s): State<AppState>,
    Authed(caller): Authed,
    PathParam((purpose, version)): PathParam<(String, u32)>,
) -> Result<StatusCode, ApiError> {
    let actor = admin(&s, &caller, Action::KeyDestroy).await?;
    let purpose = parse_purpose(&purpose)?;
    s.vault.destroy_key(purpose, version, &actor).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Start moving every record to the newest key version in the background
/// (no card data is decrypted for a DEK rewrap). Resumable; see GET.
#[utoipa::path(post, path = "/v1/keys/rewrap", tag = "keys", security(("api_key" = [])),
    request_body = RewrapBody,
    responses((status = 202, body = RekeyStatusBody), (status = 403, body = crate::error::ErrorBody),
        (status = 422, description = "rekey_running, rekey_unsupported", body = crate::error::ErrorBody)))]
pub async fn rewrap(
    State(s): State<AppState>,
    Authed(caller): Authed,
    JsonBody(body): JsonBody<RewrapBody>,
) -> Result<(StatusCode, Json<RekeyStatusBody>), ApiError> {
    let actor = admin(&s, &caller, Action::KeyRewrap).await?;
    let purpose = parse_purpose(body.purpose.as_deref().unwrap_or("data"))?;
    let mut opts = RekeyOptions::default();
    if let Some(b) = body.batch {
        opts.batch = b;
    }
    opts.rate = body.rate;
    if let Some(share) = body.busy_share {
        opts.busy_share = share;
    }
    let status = s.vault.start_rekey(purpose, opts, actor)?;
    Ok((StatusCode::ACCEPTED, Json(status.into())))
}

/// The background re-keying job's progress and last report.
#[utoipa::path(get, path = "/v1/keys/rewrap", tag = "keys", security(("api_key" = [])),
    responses((status = 200, body = RekeyStatusBody), (status = 403, body = crate::error::ErrorBody)))]
pub async fn rewrap_status(
    State(s): State<AppState>,
    Authed(caller): Authed,
) -> Result<Json<RekeyStatusBody>, ApiError> {
    admin(&s, &caller, Action::KeyList).await?;
    Ok(Json(s.vault.rekey_status().into()))
}
