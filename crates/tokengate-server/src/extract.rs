//! Extractors: PAN-safe JSON bodies and path parameters, and the
//! authenticated caller.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{StatusCode, header, request::Parts};
use serde::de::DeserializeOwned;
use tokengate_vault::{Caller, RequestMeta};

use crate::app::AppState;
use crate::error::ApiError;

/// A path parameter (or a tuple of them) of type `T`. A segment that does
/// not fit is a 400 `invalid_path` in the API's JSON error shape, naming the
/// parameter and what it must be but never repeating the caller's text:
/// axum's own rejection is plain text that echoes the value, which may be a
/// card number sent where a token or a version belongs.
#[derive(Debug)]
pub struct PathParam<T>(pub T);

impl<T, S> FromRequestParts<S> for PathParam<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(PathParam(v)),
            Err(rejection) => Err(path_error(&rejection)),
        }
    }
}

fn path_error(rejection: &axum::extract::rejection::PathRejection) -> ApiError {
    use axum::extract::path::ErrorKind;
    use axum::extract::rejection::PathRejection;
    let message = match rejection {
        PathRejection::FailedToDeserializePathParams(e) => match e.kind() {
            // `key` is a name from our own route pattern, `expected_type` a
            // Rust type name: neither came from the caller.
            ErrorKind::InvalidUtf8InPathParam { key } => {
                format!("the `{key}` part of the path is not valid UTF-8")
            }
            ErrorKind::ParseErrorAtKey {
                key, expected_type, ..
            } => format!("the `{key}` part of the path must be a `{expected_type}`"),
            ErrorKind::ParseErrorAtIndex {
                index,
                expected_type,
                ..
            } => format!(
                "path parameter {} must be a `{expected_type}`",
                index.saturating_add(1)
            ),
            _ => "the path does not fit this route's parameters".to_owned(),
        },
        _ => "the path does not fit this route's parameters".to_owned(),
    };
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", message)
}

/// A JSON request body of type `T`, size-limited, with errors that name the
/// field and the problem but never repeat a value the caller sent.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("request body exceeds {limit} bytes"),
    )
}

/// Keep a path segment only if it is one of our own field names or an index;
/// anything else came from the caller and may be a secret.
fn safe_path(path: &serde_path_to_error::Path) -> String {
    let mut out = String::new();
    for seg in path.iter() {
        let s = match seg {
            serde_path_to_error::Segment::Seq { index } => format!("[{index}]"),
            serde_path_to_error::Segment::Map { key }
            | serde_path_to_error::Segment::Enum { variant: key } => {
                let ok = !key.is_empty()
                    && key.len() <= 32
                    && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
                if ok {
                    format!(".{key}")
                } else {
                    ".<key>".to_owned()
                }
            }
            serde_path_to_error::Segment::Unknown => ".?".to_owned(),
        };
        out.push_str(&s);
    }
    if out.is_empty() {
        "body".to_owned()
    } else {
        out.trim_start_matches('.').to_owned()
    }
}

/// Turn a serde error into a message without caller-sent values.
fn describe(err: &serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let inner = err.inner();
    let at = safe_path(err.path());
    match inner.classify() {
        serde_json::error::Category::Syntax
        | serde_json::error::Category::Eof
        | serde_json::error::Category::Io => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!(
                "request body is not valid JSON (line {}, column {})",
                inner.line(),
                inner.column()
            ),
        ),
        serde_json::error::Category::Data => {
            let msg = inner.to_string();
            // serde's messages: "unknown field `x`, expected one of ..",
            // "missing field `y`", "invalid type: <value>, expected <what>".
            let what = if msg.starts_with("unknown field") {
                let expected = msg
                    .split_once(", expected")
                    .map(|(_, e)| format!("; expected{}", strip_pos(e)))
                    .unwrap_or_default();
                format!("unknown field at `{at}`{expected}")
            } else if let Some(rest) = msg.strip_prefix("missing field `") {
                let field: String = rest
                    .chars()
                    .take_while(|c| *c != '`')
                    .filter(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if at == "body" {
                    format!("missing field `{field}`")
                } else {
                    format!("missing field `{field}` in `{at}`")
                }
            } else if let Some((_, expected)) = msg.split_once(", expected ") {
                format!("invalid value at `{at}`: expected {}", strip_pos(expected))
            } else {
                format!("invalid value at `{at}`")
            };
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", what)
        }
    }
}

/// Drop serde_json's " at line L column C" suffix and any quoted caller text.
fn strip_pos(s: &str) -> String {
    let s = s.split(" at line ").next().unwrap_or(s);
    // Expected-lists name our own fields; keep only safe characters.
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '`' | ',' | ' ' | '-'))
        .collect()
}

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.config.max_body_bytes;
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mime = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if mime != "application/json"
            && !(mime.starts_with("application/") && mime.ends_with("+json"))
        {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        if let Some(len) = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            && len > limit
        {
            return Err(too_large(limit));
        }
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| too_large(limit))?;
        let bytes = zeroize::Zeroizing::new(bytes.to_vec());
        // The common case, one pass. Only a body that fails is parsed again
        // to say precisely what is wrong.
        if let Ok(value) = serde_json::from_slice::<T>(&bytes) {
            return Ok(JsonBody(value));
        }
        // Is it JSON at all? (Separates malformed_json from a well-formed
        // body with the wrong shape, whatever serde reports.)
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!(
                    "request body is not valid JSON (line {}, column {})",
                    e.line(),
                    e.column()
                ),
            ));
        }
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut de).map_err(|e| describe(&e))?;
        Ok(JsonBody(value))
    }
}

/// The API key in a `Bearer <key>` header value (`Authorization`, or
/// `Proxy-Authorization` on the edge proxy).
pub(crate) fn bearer(value: &axum::http::HeaderValue) -> Option<&str> {
    let v = value.to_str().ok()?;
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .map(str::trim)
}

/// The caller, authenticated from `Authorization: Bearer <api key>`.
#[derive(Debug)]
pub struct Authed(pub Caller);

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let meta = parts
            .extensions
            .get::<RequestMeta>()
            .cloned()
            .unwrap_or_default();
        let presented = parts.headers.get(header::AUTHORIZATION).and_then(bearer);
        let caller = state.vault.authenticate(presented, meta).await?;
        Ok(Authed(caller))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Card {
        number: String,
        exp_month: u32,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        card: Card,
    }

    fn err(json: &str) -> ApiError {
        let de = &mut serde_json::Deserializer::from_str(json);
        describe(&serde_path_to_error::deserialize::<_, Body>(de).unwrap_err())
    }

    #[test]
    fn messages_never_echo_values() {
        let cases = [
            r#"{"card":{"number":"4111111111111111","exp_month":"4111111111111111"}}"#,
            r#"{"card":{"number":"4111111111111111","exp_month":1,"4111111111111111":1}}"#,
            r#"{"card":{"number":"4111111111111111","exp_month":1},"cvc-123":1}"#,
            r#"{"card":{"number":4111111111111111,"exp_month":1}}"#,
            r#"{"card":{"number":"4111111111111111","exp_month":"987"}}"#,
        ];
        for c in cases {
            let e = err(c);
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{c}");
            assert!(!e.message.contains("4111"), "{}", e.message);
            assert!(
                !e.message.contains("987") && !e.message.contains("123"),
                "{}",
                e.message
            );
        }
    }

    #[test]
    fn messages_name_the_field() {
        assert_eq!(
            err(r#"{"card":{"number":"x"}}"#).message,
            "missing field `exp_month` in `card`"
        );
        let e = err(r#"{"card":{"number":"x","exp_month":"7"}}"#);
        assert!(
            e.message.starts_with("invalid value at `card.exp_month`"),
            "{}",
            e.message
        );
        let e = err(r#"{"card":{"number":"x","exp_month":7,"colour":1}}"#);
        assert!(
            e.message.starts_with("unknown field at `card"),
            "{}",
            e.message
        );
        assert_eq!(err("{\"card\":").code, "malformed_json");
    }
}
