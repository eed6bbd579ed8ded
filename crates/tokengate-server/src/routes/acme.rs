//! `GET /.well-known/acme-challenge/{token}`: the HTTP-01 answers the ACME
//! task published. No authentication (the CA must read them); answers are
//! public by design and expire after ten minutes.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::app::AppState;
use crate::error::ApiError;
use crate::extract::PathParam;

/// The key authorization for `token`, as text.
pub async fn http01(State(s): State<AppState>, PathParam(token): PathParam<String>) -> Response {
    // ACME tokens are base64url (RFC 8555 §8.3); anything else is not ours.
    let plausible = !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !plausible {
        return ApiError::not_found().into_response();
    }
    match s.vault.acme_challenge(&token).await {
        Ok(Some(answer)) => ([(header::CONTENT_TYPE, "text/plain")], answer).into_response(),
        Ok(None) => ApiError::not_found().into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}
