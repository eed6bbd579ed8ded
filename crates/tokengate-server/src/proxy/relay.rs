//! The outbound relay: `{METHOD} /relay/{processor}/{path}` is sent to the
//! processor's `base_url` + `/{path}`, with the tokens named by the
//! processor's reveal rules replaced by card numbers (or the held CVC).
//!
//! The caller authenticates with `Proxy-Authorization: Bearer <api key>`
//! (role `relay`), so that its own `Authorization` header (the processor's
//! credentials) passes through untouched. Card numbers go only to a
//! configured processor: an unknown name, an IP-literal base URL, or a name
//! that resolves to a non-public address is refused with 403
//! `egress_denied`, audited. Card numbers in the processor's answer are
//! tokenized before the app sees them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokengate_audit::Action;
use tokengate_proxy::config::SafetyNet;
use tokengate_proxy::{BodyKind, body, egress};
use tokengate_vault::{Caller, RequestMeta, Role};
use zeroize::Zeroize;

use crate::error::ApiError;
use crate::proxy::inbound::{
    Side, count, identity_only, read_body, relay_response, upstream_failure,
};
use crate::proxy::upstream::is_egress_refusal;
use crate::proxy::{LiveProcessor, ProxyState, cards, upstream};

/// The relay handler.
pub async fn relay(
    State(state): State<Arc<ProxyState>>,
    Path(params): Path<HashMap<String, String>>,
    req: Request,
) -> Response {
    let name = params.get("processor").cloned().unwrap_or_default();
    // The path after the processor name, as sent (not percent-decoded, so
    // that an encoded `/` or `?` stays what it was).
    let rest = req
        .uri()
        .path()
        .strip_prefix("/relay/")
        .and_then(|r| r.split_once('/'))
        .map_or("", |(_, rest)| rest)
        .to_owned();
    let started = Instant::now();
    let label = if tokengate_proxy::config::valid_name(&name) {
        name.clone()
    } else {
        "-".to_owned()
    };
    let resp = match run(&state, &name, &rest, req).await {
        Ok(r) => {
            count("relay", &label, "forwarded", None);
            r
        }
        Err(e) => {
            let side = Side::of(e.status);
            metrics::counter!(
                "tokengate_proxy_rejections_total",
                "route" => label.clone(),
                "code" => e.code,
                "side" => side.as_str(),
            )
            .increment(1);
            count("relay", &label, "error", Some(side));
            e.into_response()
        }
    };
    metrics::histogram!("tokengate_proxy_request_seconds", "route" => label)
        .record(started.elapsed().as_secs_f64());
    resp
}

pub(crate) async fn deny(
    state: &ProxyState,
    caller: &Caller,
    detail: &str,
    message: String,
) -> ApiError {
    let error = ApiError::new(StatusCode::FORBIDDEN, "egress_denied", message);
    crate::proxy::audited_error(state, caller, Action::EgressDenied, detail, error).await
}

async fn run(
    state: &ProxyState,
    name: &str,
    rest: &str,
    req: Request,
) -> Result<Response, ApiError> {
    // Dot segments (also percent-encoded) could climb out of the
    // processor's base path.
    if rest.split('/').any(|seg| {
        let d = tokengate_proxy::body::decode_form_component(seg.as_bytes());
        d.as_str() == "." || d.as_str() == ".."
    }) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            "the relay path may not contain `.` or `..` segments",
        ));
    }
    let meta = req
        .extensions()
        .get::<RequestMeta>()
        .cloned()
        .unwrap_or_default();
    let presented = req
        .headers()
        .get(header::PROXY_AUTHORIZATION)
        .and_then(crate::extract::bearer);
    let caller = state.vault.authenticate(presented, meta).await?;
    state
        .vault
        .require(&caller, Role::Relay, Action::TokenReveal)
        .await?;
    let rules = state.rules();
    let Some(live) = rules
        .processors
        .iter()
        .find(|p| p.processor.cfg.name == name)
    else {
        let shown = if tokengate_proxy::config::valid_name(name) {
            name
        } else {
            "?"
        };
        return Err(deny(
            state,
            &caller,
            &format!("processor={shown} reason=not_configured"),
            format!("`{shown}` is not a configured processor; card data goes only to processors in [[outbound.processors]]"),
        )
        .await);
    };
    check_literal(state, &caller, live).await?;
    forward(state, &rules, live, &caller, rest, req).await
}

/// IP-literal base URLs are refused unless allowed, and then only public
/// addresses unless private ones are allowed too.
async fn check_literal(
    state: &ProxyState,
    caller: &Caller,
    live: &LiveProcessor,
) -> Result<(), ApiError> {
    let cfg = &live.processor.cfg;
    let host = live.processor.host.as_str();
    if !egress::is_ip_literal(host) {
        return Ok(());
    }
    let ip: Option<std::net::IpAddr> = host.parse().ok();
    let refused = if !cfg.allow_ip_literal {
        Some("ip_literal")
    } else if !cfg.allow_private && ip.is_some_and(egress::is_non_public) {
        Some("non_public_address")
    } else {
        None
    };
    match refused {
        None => Ok(()),
        Some(reason) => Err(deny(
            state,
            caller,
            &format!("processor={} reason={reason}", cfg.name),
            format!(
                "processor `{}` has an IP-literal or non-public address; set allow_ip_literal / allow_private for it if this is intended",
                cfg.name
            ),
        )
        .await),
    }
}

async fn forward(
    state: &ProxyState,
    rules: &crate::proxy::Rules,
    live: &LiveProcessor,
    caller: &Caller,
    rest: &str,
    req: Request,
) -> Result<Response, ApiError> {
    let p = &live.processor;
    let mut url = format!("{}/{}", p.base, rest.trim_start_matches('/'));
    if let Some(q) = req.uri().query() {
        url.push('?');
        url.push_str(q);
    }
    send_to_processor(state, rules, live, caller, url, req).await
}

/// Send `req` to `url` at processor `live`: reveal rules applied to its
/// headers and body, card numbers in the answer tokenized. Shared by the
/// relay and the intercepting forward proxy.
pub async fn send_to_processor(
    state: &ProxyState,
    rules: &crate::proxy::Rules,
    live: &LiveProcessor,
    caller: &Caller,
    url: String,
    req: Request,
) -> Result<Response, ApiError> {
    let p = &live.processor;
    identity_only(req.headers())?;
    let method = req.method().clone();
    let mut headers =
        upstream::forward_headers(req.headers(), &["x-forwarded-for", "x-forwarded-host"]);
    // Header reveal rules.
    let mut revealed: u64 = 0;
    for (hname, part) in &p.headers {
        if let Some(v) = headers.get(hname.as_str()).and_then(|v| v.to_str().ok()) {
            let token = v.trim().to_owned();
            let mut value =
                cards::reveal_one(&state.vault, caller, &p.cfg.name, &token, *part).await?;
            let hv = HeaderValue::from_str(&value).map_err(|_| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "revealed value is not a header value",
                )
            })?;
            value.zeroize();
            headers.insert(
                axum::http::HeaderName::from_bytes(hname.as_bytes()).map_err(|_| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "bad header name",
                    )
                })?,
                hv,
            );
            revealed += 1;
        }
    }
    let kind = BodyKind::from_content_type(
        req.headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    );
    let body = read_body(req.into_body(), rules.max_body).await?;
    let new_body = if body.is_empty() || p.selectors.is_empty() {
        body
    } else {
        let hits = body::scan(&body, &kind, &p.selectors, None)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.code(), e.to_string()))?;
        let (mut with, n) =
            cards::reveal_outbound(state, caller, &p.cfg.name, &hits, &p.parts).await?;
        revealed += n;
        let out = body::apply(&body, &hits, &with);
        with.iter_mut().flatten().for_each(Zeroize::zeroize);
        Bytes::from(out)
    };
    metrics::counter!("tokengate_proxy_reveals_total", "processor" => p.cfg.name.clone())
        .increment(revealed);
    let started = Instant::now();
    let sent = live
        .client
        .request(method, &url)
        .headers(headers)
        .body(new_body)
        .timeout(rules.relay_timeout)
        .send()
        .await;
    metrics::histogram!("tokengate_proxy_upstream_seconds", "route" => p.cfg.name.clone())
        .record(started.elapsed().as_secs_f64());
    let resp = match sent {
        Ok(r) => r,
        Err(e) if is_egress_refusal(&e) => {
            return Err(deny(
                state,
                caller,
                &format!("processor={} reason=non_public_address", p.cfg.name),
                format!(
                    "processor `{}` resolves only to non-public addresses; set allow_private for it if this is intended",
                    p.cfg.name
                ),
            )
            .await);
        }
        Err(e) => {
            tracing::warn!(processor = %p.cfg.name, error = %e, "processor call failed");
            return Err(
                upstream_failure(state, caller, &p.cfg.name, e.is_timeout(), "processor").await,
            );
        }
    };
    let policy = if p.cfg.tokenize_response {
        SafetyNet::Tokenize
    } else {
        SafetyNet::Off
    };
    // Card numbers in the answer are tokenized on the caller's behalf.
    let scrubber = Caller {
        roles: vec![Role::Tokenize],
        ..caller.clone()
    };
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::Body::from_stream(resp.bytes_stream());
    relay_response(
        state,
        &scrubber,
        status,
        &headers,
        body,
        policy,
        "processor's response",
        rules.relay_timeout,
    )
    .await
}
