//! `/v1/api-keys`: create (secret shown once), list, revoke. Role `admin`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tokengate_vault::ApiKeyInfo;
use utoipa::ToSchema;

use crate::app::AppState;
use crate::error::ApiError;
use crate::extract::{Authed, JsonBody, PathParam};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyBody {
    pub name: String,
    /// Any of `admin`, `tokenize`, `reveal`, `auditor`.
    pub roles: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyBody {
    pub id: String,
    pub name: String,
    pub roles: Vec<String>,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

impl From<ApiKeyInfo> for ApiKeyBody {
    fn from(i: ApiKeyInfo) -> Self {
        ApiKeyBody {
            id: i.id,
            name: i.name,
            roles: i.roles,
            created_at: i.created_at,
            revoked_at: i.revoked_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct CreatedKeyBody {
    #[serde(flatten)]
    pub info: ApiKeyBody,
    /// The secret API key. Shown only in this response; store it now.
    pub key: String,
}

impl std::fmt::Debug for CreatedKeyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKeyBody")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyList {
    pub api_keys: Vec<ApiKeyBody>,
}

/// Create an API key.
#[utoipa::path(post, path = "/v1/api-keys", tag = "api-keys", request_body = CreateKeyBody, security(("api_key" = [])),
    responses((status = 201, body = CreatedKeyBody), (status = 403, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub async fn create(
    State(s): State<AppState>,
    Authed(caller): Authed,
    JsonBody(body): JsonBody<CreateKeyBody>,
) -> Result<(StatusCode, Json<CreatedKeyBody>), ApiError> {
    let new = s
        .vault
        .create_api_key(&caller, &body.name, &body.roles)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedKeyBody {
            info: new.info.into(),
            key: new.secret.to_string(),
        }),
    ))
}

/// List API keys (never their secrets).
#[utoipa::path(get, path = "/v1/api-keys", tag = "api-keys", security(("api_key" = [])),
    responses((status = 200, body = ApiKeyList), (status = 403, body = crate::error::ErrorBody)))]
pub async fn list(
    State(s): State<AppState>,
    Authed(caller): Authed,
) -> Result<Json<ApiKeyList>, ApiError> {
    let keys = s.vault.list_api_keys(&caller).await?;
    Ok(Json(ApiKeyList {
        api_keys: keys.into_iter().map(ApiKeyBody::from).collect(),
    }))
}

/// Revoke an API key at once.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "api-keys", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, description = "api_key_not_found", body = crate::error::ErrorBody)))]
pub async fn revoke(
    State(s): State<AppState>,
    Authed(caller): Authed,
    PathParam(id): PathParam<String>,
) -> Result<StatusCode, ApiError> {
    s.vault.revoke_api_key(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
