//! `/v1/tokens`: tokenize, batch, metadata, reveal, delete, search.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Deserializer, Serialize};
use tokengate_core::TokenFormat;
use tokengate_vault::{CardInput, TokenInfo, TokenizeRequest};
use utoipa::ToSchema;
use zeroize::Zeroizing;

use crate::app::AppState;
use crate::error::{ApiError, ErrorDetail};
use crate::extract::{Authed, JsonBody, PathParam};

/// A string that holds card data: zeroized on drop, never printed.
#[derive(Clone, Default)]
pub struct SecretString(pub Zeroizing<String>);

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(SecretString(Zeroizing::new(String::deserialize(d)?)))
    }
}

/// A month or year given as a number or a string of digits.
fn number_or_digits<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        Num(u32),
        Str(String),
    }
    match N::deserialize(d).map_err(|_| serde::de::Error::custom("expected a whole number"))? {
        N::Num(n) => Ok(n),
        N::Str(s) => s
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom("expected a whole number")),
    }
}

/// Card data sent to be tokenized.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CardBody {
    /// The card number; digits, optionally grouped with single spaces or dashes.
    #[schema(value_type = String, example = "4242 4242 4242 4242")]
    pub number: SecretString,
    #[serde(deserialize_with = "number_or_digits")]
    #[schema(value_type = u32, minimum = 1, maximum = 12)]
    pub exp_month: u32,
    /// Four-digit year (two digits mean 20xx).
    #[serde(deserialize_with = "number_or_digits")]
    #[schema(value_type = u32)]
    pub exp_year: u32,
    #[schema(value_type = Option<String>)]
    #[serde(default)]
    pub name: Option<SecretString>,
    /// Held encrypted until the first reveal or the CVC TTL (≤ 1 h).
    #[schema(value_type = Option<String>)]
    #[serde(default)]
    pub cvc: Option<SecretString>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FormatBody {
    /// `tok_` + 40 characters: creation time (ms), then 152 random bits.
    #[default]
    Opaque,
    /// Same length as the card, first six and last four digits kept, fails Luhn.
    Bin6Last4,
}

/// `POST /v1/tokens` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenizeBody {
    pub card: CardBody,
    #[serde(default)]
    pub format: FormatBody,
    /// Return the same token for the same card number (keyed fingerprint).
    #[serde(default)]
    pub deterministic: bool,
    /// Your own JSON object (≤ 4 KiB, stored unencrypted, must hold no card data).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

impl TokenizeBody {
    fn into_request(self) -> TokenizeRequest {
        TokenizeRequest {
            card: CardInput {
                number: self.card.number.0,
                exp_month: self.card.exp_month,
                exp_year: self.card.exp_year,
                name: self.card.name.map(|n| n.0),
                cvc: self.card.cvc.map(|c| c.0),
            },
            format: match self.format {
                FormatBody::Opaque => TokenFormat::Opaque,
                FormatBody::Bin6Last4 => TokenFormat::Bin6Last4,
            },
            deterministic: self.deterministic,
            metadata: self.metadata,
            expiry_unknown: false,
        }
    }
}

/// The masked view of a card.
#[derive(Debug, Serialize, ToSchema)]
pub struct MaskedCard {
    pub brand: String,
    pub bin: String,
    pub last4: String,
    pub exp_month: u8,
    pub exp_year: u16,
}

/// A token and what may be shown about its card.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    pub token: String,
    pub format: String,
    pub card: MaskedCard,
    /// Keyed HMAC-SHA256 fingerprint of the card number (hex).
    pub fingerprint: String,
    pub deterministic: bool,
    /// Whether a CVC is still held for the next reveal.
    pub has_cvc: bool,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    pub created_at: String,
}

impl From<TokenInfo> for TokenResponse {
    fn from(i: TokenInfo) -> Self {
        TokenResponse {
            token: i.token,
            format: i.format,
            card: MaskedCard {
                brand: i.brand,
                bin: i.bin,
                last4: i.last4,
                exp_month: i.exp_month,
                exp_year: i.exp_year,
            },
            fingerprint: i.fingerprint,
            deterministic: i.deterministic,
            has_cvc: i.has_cvc,
            metadata: i.metadata,
            created_at: i.created_at,
        }
    }
}

/// Tokenize a card.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = TokenizeBody,
    security(("api_key" = [])),
    responses(
        (status = 201, description = "Token created", body = TokenResponse),
        (status = 200, description = "Deterministic mode: the existing token for this card", body = TokenResponse),
        (status = 400, description = "Malformed JSON or unknown field", body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
        (status = 413, body = crate::error::ErrorBody), (status = 415, body = crate::error::ErrorBody),
        (status = 422, description = "Invalid card: invalid_luhn, invalid_card_length, unknown_brand, card_expired, invalid_expiry, invalid_cvc, …", body = crate::error::ErrorBody),
        (status = 503, description = "audit_unavailable: the audit record could not be written", body = crate::error::ErrorBody),
    ))]
pub async fn create(
    State(s): State<AppState>,
    Authed(caller): Authed,
    JsonBody(body): JsonBody<TokenizeBody>,
) -> Result<Response, ApiError> {
    let out = s.vault.tokenize(&caller, &body.into_request()).await?;
    metrics::counter!("tokengate_tokens_created_total").increment(u64::from(out.created));
    let status = if out.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(TokenResponse::from(out.info))).into_response())
}

/// `POST /v1/tokens/batch` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// 1 to 1000 cards.
    pub items: Vec<TokenizeBody>,
}

/// One card's result in a batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchItem {
    pub index: usize,
    /// The status this card alone would have had.
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenResponse>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    pub results: Vec<BatchItem>,
}

/// Tokenize up to 1000 cards, with a result per card.
#[utoipa::path(post, path = "/v1/tokens/batch", tag = "tokens", request_body = BatchBody,
    security(("api_key" = [])),
    responses((status = 200, body = BatchResponse), (status = 400, body = crate::error::ErrorBody),
        (status = 422, description = "invalid_batch_size", body = crate::error::ErrorBody),
        (status = 503, body = crate::error::ErrorBody)))]
pub async fn batch(
    State(s): State<AppState>,
    Authed(caller): Authed,
    JsonBody(body): JsonBody<BatchBody>,
) -> Result<Json<BatchResponse>, ApiError> {
    let reqs: Vec<TokenizeRequest> = body
        .items
        .into_iter()
        .map(TokenizeBody::into_request)
        .collect();
    let results = s.vault.tokenize_batch(&caller, &reqs).await?;
    let results = results
        .into_iter()
        .enumerate()
        .map(|(index, r)| match r {
            Ok(out) => BatchItem {
                index,
                status: if out.created { 201 } else { 200 },
                token: Some(TokenResponse::from(out.info)),
                error: None,
            },
            Err(e) => {
                let api = ApiError::from(e);
                BatchItem {
                    index,
                    status: api.status.as_u16(),
                    token: None,
                    error: Some(ErrorDetail {
                        code: api.code.to_owned(),
                        message: api.message,
                    }),
                }
            }
        })
        .collect();
    Ok(Json(BatchResponse { results }))
}

/// Masked metadata of a token (never the card number).
#[utoipa::path(get, path = "/v1/tokens/{token}", tag = "tokens", security(("api_key" = [])),
    params(("token" = String, Path)),
    responses((status = 200, body = TokenResponse), (status = 404, description = "token_not_found", body = crate::error::ErrorBody)))]
pub async fn info(
    State(s): State<AppState>,
    Authed(caller): Authed,
    PathParam(token): PathParam<String>,
) -> Result<Json<TokenResponse>, ApiError> {
    Ok(Json(s.vault.token_info(&caller, &token).await?.into()))
}

/// A revealed card.
#[derive(Serialize, ToSchema)]
pub struct RevealedCardBody {
    pub number: String,
    pub brand: String,
    pub exp_month: u8,
    pub exp_year: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Only on the first reveal while the CVC is held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cvc: Option<String>,
}

impl std::fmt::Debug for RevealedCardBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RevealedCardBody([REDACTED])")
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RevealResponse {
    pub token: String,
    pub card: RevealedCardBody,
}

/// The card behind a token (role `reveal`). A held CVC is returned once, then deleted.
#[utoipa::path(post, path = "/v1/tokens/{token}/reveal", tag = "tokens", security(("api_key" = [])),
    params(("token" = String, Path)),
    responses((status = 200, body = RevealResponse), (status = 403, body = crate::error::ErrorBody),
        (status = 404, description = "token_not_found", body = crate::error::ErrorBody),
        (status = 503, description = "audit_unavailable", body = crate::error::ErrorBody)))]
pub async fn reveal(
    State(s): State<AppState>,
    Authed(caller): Authed,
    PathParam(token): PathParam<String>,
) -> Result<Json<RevealResponse>, ApiError> {
    let card = s.vault.reveal(&caller, &token).await?;
    metrics::counter!("tokengate_reveals_total").increment(1);
    Ok(Json(RevealResponse {
        token: card.info.token.clone(),
        card: RevealedCardBody {
            number: card.number.to_string(),
            brand: card.info.brand.clone(),
            exp_month: card.info.exp_month,
            exp_year: card.info.exp_year,
            name: card.name.as_ref().map(|n| n.to_string()),
            cvc: card.cvc.as_ref().map(|c| c.to_string()),
        },
    }))
}

/// Delete a token; its data key is destroyed with it.
#[utoipa::path(delete, path = "/v1/tokens/{token}", tag = "tokens", security(("api_key" = [])),
    params(("token" = String, Path)),
    responses((status = 204), (status = 404, description = "token_not_found", body = crate::error::ErrorBody)))]
pub async fn delete(
    State(s): State<AppState>,
    Authed(caller): Authed,
    PathParam(token): PathParam<String>,
) -> Result<StatusCode, ApiError> {
    s.vault.delete(&caller, &token).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/tokens/search` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchBody {
    #[schema(value_type = String)]
    pub number: SecretString,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResponse {
    pub tokens: Vec<TokenResponse>,
}

/// Tokens whose keyed fingerprint matches a card number.
#[utoipa::path(post, path = "/v1/tokens/search", tag = "tokens", request_body = SearchBody, security(("api_key" = [])),
    responses((status = 200, body = SearchResponse), (status = 422, body = crate::error::ErrorBody)))]
pub async fn search(
    State(s): State<AppState>,
    Authed(caller): Authed,
    JsonBody(body): JsonBody<SearchBody>,
) -> Result<Json<SearchResponse>, ApiError> {
    let found = s.vault.search(&caller, &body.number.0).await?;
    Ok(Json(SearchResponse {
        tokens: found.into_iter().map(TokenResponse::from).collect(),
    }))
}
