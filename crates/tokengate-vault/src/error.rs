//! Vault errors. Each has a stable snake_case code; none carries card data.

use tokengate_core::CardError;
use tokengate_crypto::CryptoError;
use tokengate_store::StoreError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The card itself is invalid (Luhn, length, brand, expiry, CVC).
    #[error("{0}")]
    Card(#[from] CardError),
    /// The request is well-formed JSON but not a valid request.
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    #[error("no token with that value exists")]
    TokenNotFound,
    /// A named object (certificate, domain) does not exist.
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    #[error("no API key with that id exists")]
    ApiKeyNotFound,
    #[error("missing or invalid API key; send `Authorization: Bearer <api key>`")]
    Unauthenticated,
    #[error(
        "too many failed authentications from this client or for this key; try again in {retry_after_secs} s"
    )]
    LockedOut { retry_after_secs: u64 },
    #[error("this API key lacks the `{required}` role needed for this operation")]
    Forbidden { required: &'static str },
    #[error("the audit trail cannot be written, so the operation was refused")]
    AuditUnavailable,
    #[error("the data store is unavailable; try again")]
    StoreUnavailable,
    #[error("could not issue a unique token; try again")]
    TokenCollision,
    #[error(
        "this record is encrypted under a key version below the minimum decryption version; rewrap the records"
    )]
    KeyRetired,
    #[error("internal error")]
    Internal(String),
    /// The vault cannot open: missing or unreadable key, database, data dir.
    /// Only at start-up; the message tells the operator what to fix.
    #[error("{0}")]
    Setup(String),
}

impl VaultError {
    pub fn code(&self) -> &'static str {
        match self {
            VaultError::Card(c) => c.code(),
            VaultError::Invalid { code, .. } => code,
            VaultError::TokenNotFound => "token_not_found",
            VaultError::NotFound { code, .. } => code,
            VaultError::ApiKeyNotFound => "api_key_not_found",
            VaultError::Unauthenticated => "unauthorized",
            VaultError::LockedOut { .. } => "locked_out",
            VaultError::Forbidden { .. } => "forbidden",
            VaultError::AuditUnavailable => "audit_unavailable",
            VaultError::StoreUnavailable => "store_unavailable",
            VaultError::TokenCollision => "token_collision",
            VaultError::KeyRetired => "key_version_retired",
            VaultError::Internal(_) => "internal_error",
            VaultError::Setup(_) => "setup_error",
        }
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> VaultError {
        VaultError::Invalid {
            code,
            message: message.into(),
        }
    }
}

impl From<StoreError> for VaultError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AuditWrite(detail) => {
                tracing::error!(%detail, "audit write failed: refusing the operation");
                VaultError::AuditUnavailable
            }
            StoreError::Corrupt(detail) => {
                VaultError::Internal(format!("stored data is corrupt: {detail}"))
            }
            other => {
                tracing::error!(error = %other, "store error");
                VaultError::StoreUnavailable
            }
        }
    }
}

impl From<CryptoError> for VaultError {
    fn from(e: CryptoError) -> Self {
        match e {
            CryptoError::KeyVersionRetired { .. } => VaultError::KeyRetired,
            other => VaultError::Internal(other.to_string()),
        }
    }
}
