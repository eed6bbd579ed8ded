//! Inbound routes: match, read the body (bounded), replace card data, forward
//! to the app, and pass its answer back (optionally scrubbed).

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokengate_audit::{Action, Ident};
use tokengate_proxy::config::SafetyNet;
use tokengate_proxy::{BodyKind, body};
use tokengate_vault::{Caller, RequestMeta, Role};

use crate::error::ApiError;
use crate::proxy::{LiveRoute, ProxyState, cards, upstream};

/// Which side a failure is on (metric label `side`).
#[derive(Clone, Copy, Debug)]
pub enum Side {
    /// The caller sent something we refuse (4xx).
    Downstream,
    /// The app or processor failed (502/504).
    Upstream,
    /// tokengate itself (vault, audit) failed (5xx).
    Internal,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Downstream => "downstream",
            Side::Upstream => "upstream",
            Side::Internal => "internal",
        }
    }

    pub fn of(status: StatusCode) -> Side {
        match status.as_u16() {
            502 | 504 => Side::Upstream,
            500..=599 => Side::Internal,
            _ => Side::Downstream,
        }
    }
}

/// Count a finished request.
pub fn count(kind: &'static str, name: &str, outcome: &'static str, side: Option<Side>) {
    metrics::counter!(
        "tokengate_proxy_requests_total",
        "kind" => kind,
        "route" => name.to_owned(),
        "outcome" => outcome,
        "side" => side.map_or("none", Side::as_str),
    )
    .increment(1);
}

fn host_of(req: &Request) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().host().map(str::to_owned))
        .map(|h| {
            // Drop the port (IPv6 literals keep their brackets).
            match h.rfind(':') {
                Some(i) if !h[i..].contains(']') => h[..i].to_ascii_lowercase(),
                _ => h.to_ascii_lowercase(),
            }
        })
}

fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host.strip_suffix(suffix).is_some_and(|rest| {
            rest.ends_with('.') && rest.len() > 1 && !rest[..rest.len() - 1].contains('.')
        }),
        None => host == pattern,
    }
}

fn route_matches(r: &LiveRoute, req: &Request, host: Option<&str>) -> bool {
    let cfg = &r.route.cfg;
    let path = req.uri().path();
    if let Some(p) = &cfg.path_prefix {
        let ok = path == p
            || (path.starts_with(p.as_str())
                && (p.ends_with('/') || path.as_bytes().get(p.len()) == Some(&b'/')));
        if !ok {
            return false;
        }
    }
    if let Some(re) = &r.route.path_regex
        && !re.is_match(path)
    {
        return false;
    }
    if !r.route.methods.is_empty() && !r.route.methods.iter().any(|m| m == req.method().as_str()) {
        return false;
    }
    if let Some(h) = &cfg.host
        && !host.is_some_and(|host| host_matches(h, host))
    {
        return false;
    }
    if let Some(ct) = &cfg.content_type {
        let got = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase());
        if got.as_deref() != Some(ct.to_ascii_lowercase().as_str()) {
            return false;
        }
    }
    true
}

/// Read a body of at most `limit` bytes: 413 beyond it.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    match axum::body::to_bytes(body, limit).await {
        Ok(b) => Ok(b),
        Err(e) => {
            let too_big = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            if too_big {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("the request body is larger than {limit} bytes"),
                ))
            } else {
                Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "body_unreadable",
                    "the request body could not be read completely",
                ))
            }
        }
    }
}

/// Refuse compressed bodies: the safety net could not see inside them.
pub fn identity_only(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get(header::CONTENT_ENCODING).map(|v| v.as_bytes()) {
        None => Ok(()),
        Some(v) if v.eq_ignore_ascii_case(b"identity") => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_content_encoding",
            "send the body uncompressed (Content-Encoding: identity): card data inside compressed bodies cannot be checked",
        )),
    }
}

/// Where the request goes: the app's base URL + path (prefix stripped if
/// configured) + query.
fn upstream_url(r: &LiveRoute, req: &Request) -> String {
    let mut path = req.uri().path();
    if r.route.cfg.strip_prefix
        && let Some(p) = &r.route.cfg.path_prefix
    {
        path = path.strip_prefix(p.trim_end_matches('/')).unwrap_or(path);
    }
    let mut url = r.route.upstream.clone();
    if !path.starts_with('/') {
        url.push('/');
    }
    url.push_str(path);
    if let Some(q) = req.uri().query() {
        url.push('?');
        url.push_str(q);
    }
    url
}

fn kind_of(headers: &HeaderMap) -> BodyKind {
    BodyKind::from_content_type(
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    )
}

/// The fallback handler of the proxy listener.
pub async fn inbound(State(state): State<Arc<ProxyState>>, req: Request) -> Response {
    let rules = state.rules();
    let host = host_of(&req);
    let Some(live) = rules
        .routes
        .iter()
        .find(|r| route_matches(r, &req, host.as_deref()))
    else {
        count("inbound", "-", "no_route", Some(Side::Downstream));
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "no_route",
            "no proxy route matches this request",
        )
        .into_response();
    };
    let name = live.route.cfg.name.clone();
    let started = Instant::now();
    let resp = match forward(&state, &rules, live, req).await {
        Ok(r) => {
            count("inbound", &name, "forwarded", None);
            r
        }
        Err(e) => {
            let side = Side::of(e.status);
            metrics::counter!(
                "tokengate_proxy_rejections_total",
                "route" => name.clone(),
                "code" => e.code,
                "side" => side.as_str(),
            )
            .increment(1);
            count("inbound", &name, "error", Some(side));
            e.into_response()
        }
    };
    metrics::histogram!("tokengate_proxy_request_seconds", "route" => name)
        .record(started.elapsed().as_secs_f64());
    resp
}

fn proxy_caller(state: &ProxyState, route: &str, meta: RequestMeta) -> Caller {
    Caller {
        key_id: Ident::new(&format!("proxy.{route}"))
            .unwrap_or_else(|| Ident::from_static("proxy")),
        tenant: state.vault.default_tenant().to_owned(),
        roles: vec![Role::Tokenize],
        meta,
    }
}

async fn forward(
    state: &ProxyState,
    rules: &crate::proxy::Rules,
    live: &LiveRoute,
    req: Request,
) -> Result<Response, ApiError> {
    let cfg = &live.route.cfg;
    let meta = req
        .extensions()
        .get::<RequestMeta>()
        .cloned()
        .unwrap_or_default();
    let caller = proxy_caller(state, &cfg.name, meta.clone());
    identity_only(req.headers())?;
    let url = upstream_url(live, &req);
    let method = req.method().clone();
    let mut headers = upstream::forward_headers(req.headers(), &[]);
    let original_host = req.headers().get(header::HOST).cloned();
    let kind = kind_of(req.headers());
    if let Some(found) = card_in_url_or_headers(&state.net, &req) {
        refuse_url_or_header(state, &caller, cfg.safety_net, found).await?;
    }
    let limit = cfg.max_body_bytes.unwrap_or(rules.max_body);
    let body = read_body(req.into_body(), limit).await?;
    let new_body = if body.is_empty() {
        body
    } else {
        let hits = body::scan(&body, &kind, &live.route.selectors, Some(&state.net))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.code(), e.to_string()))?;
        if hits.is_empty() {
            body
        } else {
            let (with, counts) =
                cards::tokenize_inbound(state, &live.route, &caller, &hits).await?;
            metrics::counter!("tokengate_proxy_tokenized_fields_total", "route" => cfg.name.clone())
                .increment(counts.tokenized);
            Bytes::from(body::apply(&body, &hits, &with))
        }
    };
    // Forwarding facts for the app.
    if let Some(ip) = meta.client_ip {
        let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {ip}"),
            None => ip.to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            headers.insert("x-forwarded-for", v);
        }
    }
    if let Some(h) = original_host {
        headers.insert("x-forwarded-host", h);
    }
    if let Some(id) = &meta.request_id
        && let Ok(v) = HeaderValue::from_str(id.as_str())
    {
        headers.insert("x-request-id", v);
    }
    let timeout = cfg
        .timeout_ms
        .map_or(rules.timeout, std::time::Duration::from_millis);
    let mut out = axum::http::Request::new(Body::from(new_body));
    *out.method_mut() = method;
    *out.uri_mut() = url.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            "the request path cannot be forwarded",
        )
    })?;
    *out.headers_mut() = headers;
    let started = Instant::now();
    let sent = tokio::time::timeout(timeout, live.client.request(out)).await;
    metrics::histogram!("tokengate_proxy_upstream_seconds", "route" => cfg.name.clone())
        .record(started.elapsed().as_secs_f64());
    let upstream_resp = match sent {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::warn!(route = %cfg.name, error = %e, "proxy upstream failure");
            return Err(upstream_failure(state, &caller, &cfg.name, false, "app").await);
        }
        Err(_) => return Err(upstream_failure(state, &caller, &cfg.name, true, "app").await),
    };
    let (parts, body) = upstream_resp.into_parts();
    relay_response(
        state,
        &caller,
        parts.status,
        &parts.headers,
        Body::new(body),
        cfg.response.safety_net,
        "app's response",
        timeout,
    )
    .await
}

/// Card numbers in the path, query or a header value cannot be replaced
/// (they end up in access logs, caches and browser history): which place
/// holds one, if any (error code, place).
fn card_in_url_or_headers(
    net: &tokengate_proxy::Detector,
    req: &Request,
) -> Option<(&'static str, &'static str)> {
    let target = req.uri().path_and_query().map_or("", |p| p.as_str());
    // Percent-encoded digits must not hide a number.
    let decoded = tokengate_proxy::body::decode_form_component(target.as_bytes());
    if net.is_match(target.as_bytes()) || net.is_match(decoded.as_bytes()) {
        return Some(("card_data_in_url", "URL"));
    }
    req.headers()
        .values()
        .any(|v| net.is_match(v.as_bytes()))
        .then_some(("card_data_in_header", "request headers"))
}

/// Refuse (422) or, with the `alert` safety net, only alert on a card
/// number in the URL or headers.
async fn refuse_url_or_header(
    state: &ProxyState,
    caller: &Caller,
    policy: SafetyNet,
    (code, where_): (&'static str, &'static str),
) -> Result<(), ApiError> {
    let detail = format!("safety_net place={where_}");
    if policy == SafetyNet::Alert {
        return state
            .vault
            .record_edge_event(
                Action::Alert,
                code,
                caller.key_id.as_str(),
                &caller.meta,
                &format!("kind={code} actor={}", caller.key_id.as_str()),
            )
            .await
            .map_err(ApiError::from);
    }
    let error = ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        code,
        format!(
            "the {where_} hold something that looks like a card number; send card numbers only in the request body's configured fields"
        ),
    );
    Err(crate::proxy::audited_error(state, caller, Action::ProxyReject, &detail, error).await)
}

/// 502/504 for a failed upstream call, with an audit record.
pub async fn upstream_failure(
    state: &ProxyState,
    caller: &Caller,
    name: &str,
    timed_out: bool,
    what: &str,
) -> ApiError {
    let (status, code, message) = if timed_out {
        (
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            format!("the {what} did not answer in time"),
        )
    } else {
        (
            StatusCode::BAD_GATEWAY,
            "upstream_unavailable",
            format!("the {what} could not be reached"),
        )
    };
    tracing::warn!(route = name, code, "proxy upstream failure");
    let error = ApiError::new(status, code, message);
    crate::proxy::audited_error(
        state,
        caller,
        Action::ProxyUpstreamError,
        &format!("route={name}"),
        error,
    )
    .await
}

/// The upstream's answer as our response: streamed through unless card data
/// must be looked for, in which case it is read (bounded), scrubbed by
/// `policy`, and sent with its new length.
#[allow(clippy::too_many_arguments)]
pub async fn relay_response(
    state: &ProxyState,
    caller: &Caller,
    status: StatusCode,
    upstream_headers: &HeaderMap,
    body: Body,
    policy: SafetyNet,
    place: &str,
    timeout: std::time::Duration,
) -> Result<Response, ApiError> {
    let headers = upstream::forward_headers(upstream_headers, &[]);
    let mut out = if policy == SafetyNet::Off {
        Response::new(body)
    } else {
        identity_only(&headers).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_compressed",
                format!("the {place} is compressed and cannot be checked for card data"),
            )
        })?;
        let kind = kind_of(&headers);
        let bytes = tokio::time::timeout(timeout, axum::body::to_bytes(body, 64 * 1024 * 1024))
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    format!("the {place} did not finish in time"),
                )
            })?
            .map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unavailable",
                    format!("the {place} was cut off"),
                )
            })?;
        // A response that does not parse as its type is scanned as bytes.
        let hits = body::scan(&bytes, &kind, &[], Some(&state.net))
            .or_else(|_| body::scan(&bytes, &BodyKind::Other, &[], Some(&state.net)))
            .unwrap_or_default();
        let bytes = if hits.is_empty() {
            bytes
        } else {
            let (with, _) = cards::scrub_response(state, caller, &hits, policy, place).await?;
            Bytes::from(body::apply(&bytes, &hits, &with))
        };
        Response::new(Body::from(bytes))
    };
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_hosts_match_one_label() {
        assert!(host_matches("*.shop.example", "eu.shop.example"));
        assert!(!host_matches("*.shop.example", "shop.example"));
        assert!(!host_matches("*.shop.example", "a.b.shop.example"));
        assert!(!host_matches("*.shop.example", "evilshop.example"));
        assert!(host_matches("Shop.Example", "shop.example"));
    }
}
