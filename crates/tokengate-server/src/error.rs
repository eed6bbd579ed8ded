//! The API error body `{"error": {"code", "message"}}` and status mapping.
//!
//! 4xx for anything the caller did wrong, 5xx only for tokengate's own
//! faults. Messages never carry caller-sent values; as a last line they are
//! passed through the PAN redactor anyway.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokengate_vault::VaultError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case error code.
    pub code: String,
    /// What went wrong and what to do, for a person.
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn not_found() -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such route; see /openapi.json",
        )
    }

    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not accept that method",
        )
    }
}

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> Self {
        let status = match &e {
            VaultError::Card(_) | VaultError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            VaultError::TokenNotFound
            | VaultError::ApiKeyNotFound
            | VaultError::NotFound { .. } => StatusCode::NOT_FOUND,
            VaultError::Unauthenticated => StatusCode::UNAUTHORIZED,
            VaultError::LockedOut { .. } => StatusCode::TOO_MANY_REQUESTS,
            VaultError::Forbidden { .. } => StatusCode::FORBIDDEN,
            VaultError::AuditUnavailable | VaultError::StoreUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            VaultError::TokenCollision | VaultError::KeyRetired => StatusCode::CONFLICT,
            VaultError::Internal(detail) => {
                tracing::error!(detail = %detail, "internal error");
                StatusCode::INTERNAL_SERVER_ERROR
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            code: e.code(),
            message: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = tokengate_core::redact_pans(&self.message).into_owned();
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message,
            },
        };
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        resp
    }
}
