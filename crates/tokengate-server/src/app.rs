//! The router and the layers every request passes through.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use tokengate_audit::{Ident, SafeText};
use tokengate_vault::{RequestMeta, Vault};

use crate::config::Config;
use crate::edge::{ClientAddr, EdgeConfig};
use crate::error::ApiError;
use crate::routes;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub vault: Arc<Vault>,
    pub config: Arc<Config>,
    pub metrics: Option<PrometheusHandle>,
    pub ready: Arc<AtomicBool>,
    /// `[[webhooks.sources]]` verifiers, rate limits and delivery wake-ups.
    pub webhooks: Arc<crate::webhooks::Receivers>,
    /// Set when the data directory's root key is split among custodians.
    pub seal: Option<Arc<crate::sealed::SealState>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

impl AppState {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// The peer address of the connection, set by the accept loop.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// `req_` + 12 hex digits of Unix ms + 12 hex digits that differ for every
/// id this process makes: sorts by time, so audit-index inserts append.
///
/// A request id is not a secret (a caller may send its own in
/// `X-Request-Id`), so it needs no CSPRNG call per request; that call was
/// about 2 % of a tokenize's CPU (docs/BENCHMARKS.md, eighth machine). The
/// tail is a per-process counter (see [`request_id_text`]).
pub(crate) fn new_request_id() -> Ident {
    static OFFSET: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| {
        u64::from_le_bytes(tokengate_crypto::random::bytes().unwrap_or_else(|_| {
            // No CSPRNG: the start time still separates processes.
            (tokengate_vault::clock::now_ms() as u64).to_le_bytes()
        }))
    });
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let ms = tokengate_vault::clock::now_ms().max(0) as u64;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Ident::new(&request_id_text(ms, n, *OFFSET))
        .unwrap_or_else(|| Ident::from_static("req_unknown"))
}

/// The id for millisecond `ms` and counter `n`.
///
/// - The tail's first hex digit is always `a`. Identifiers that read like a
///   card number (a run of 12–19 decimal digits that passes Luhn, or a
///   longer run) are refused by every log and audit field; with random hex
///   tails about one id in five hundred did (one in twenty-five in some
///   milliseconds), and became `req_unknown` in the audit record. The `a`
///   cuts every digit run: the 12 hex digits of the millisecond start with
///   `0` (until the year 2527), and 11 digits are too few for a card number.
/// - The other 11 digits are the low 44 bits of `n * M + offset`: with `M`
///   odd this is a bijection on 44-bit values, so no two ids of one process
///   share a tail within 2^44 requests, and a random per-process offset
///   keeps two processes' ids from lining up.
fn request_id_text(ms: u64, n: u64, offset: u64) -> String {
    const M: u64 = 0x9E37_79B9_7F4B; // odd
    const LOW_44: u64 = (1 << 44) - 1;
    let tail = (0xA << 44) | (n.wrapping_mul(M).wrapping_add(offset) & LOW_44);
    let mut bytes = [0u8; 12];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    bytes[6..].copy_from_slice(&tail.to_be_bytes()[2..]);
    format!("req_{}", data_encoding::HEXLOWER.encode(&bytes))
}

/// Assign the request id (the caller's `X-Request-Id` if it is a safe
/// identifier of ≤ 64 bytes, else a new one), collect audit facts, and echo
/// the id on the response.
pub(crate) async fn request_context(mut req: Request, next: Next) -> Response {
    let request_id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|s| s.len() <= 64)
        .and_then(Ident::new)
        .unwrap_or_else(new_request_id);
    let meta = RequestMeta {
        request_id: Some(request_id.clone()),
        // The address the edge resolved (X-Forwarded-For from a trusted
        // proxy), else the TCP peer.
        client_ip: req
            .extensions()
            .get::<ClientAddr>()
            .map(|c| c.0)
            .or_else(|| req.extensions().get::<PeerAddr>().map(|p| p.0.ip())),
        user_agent: req
            .headers()
            .get(header::USER_AGENT)
            .map(|v| SafeText::new(&String::from_utf8_lossy(v.as_bytes()))),
    };
    req.extensions_mut().insert(meta);
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(request_id.as_str()) {
        resp.headers_mut().insert(X_REQUEST_ID.clone(), v);
    }
    resp
}

/// How many headers [`security_headers`] may add.
const SECURITY_HEADERS: usize = 6;

/// Security headers on every response, success or error (including the
/// 500 of a caught panic and the edge's redirects).
async fn security_headers(req: Request, next: Next) -> Response {
    let card_route = req.uri().path().starts_with("/v1/");
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    // Room for these headers (and the request id added outside) in one
    // allocation: growing the map insert by insert re-allocated it up to
    // three times per response.
    h.reserve(SECURITY_HEADERS + 1);
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=63072000; includeSubDomains"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if card_route {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    h.remove(header::SERVER);
    resp
}

/// The `method` label: the standard methods by name, anything else
/// `other`. A client can send any token as a method; used as a label as
/// is, each new one would add time series for as long as the process runs.
fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Request count and latency per route template and status. Labels never
/// hold the raw path (which could hold a token or a mistyped PAN), and
/// every label has a bounded set of values.
async fn record_metrics(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_owned();
    let method = method_label(req.method());
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let elapsed = start.elapsed();
    tracing::debug!(%method, %route, %status, latency_us = elapsed.as_micros() as u64, "request");
    metrics::histogram!("tokengate_http_request_duration_seconds", "method" => method, "route" => route.clone()).record(elapsed.as_secs_f64());
    metrics::counter!("tokengate_http_requests_total", "method" => method, "route" => route, "status" => status.to_string()).increment(1);
    resp
}

async fn fallback() -> ApiError {
    ApiError::not_found()
}

pub(crate) fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::new(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        "internal error",
    )
    .into_response()
}

async fn method_not_allowed_to_json(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    if resp.status() == axum::http::StatusCode::METHOD_NOT_ALLOWED {
        return ApiError::method_not_allowed().into_response();
    }
    resp
}

/// The whole HTTP API.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/tokens", post(routes::tokens::create))
        .route("/v1/tokens/batch", post(routes::tokens::batch))
        .route("/v1/tokens/search", post(routes::tokens::search))
        .route(
            "/v1/tokens/{token}",
            get(routes::tokens::info).delete(routes::tokens::delete),
        )
        .route("/v1/tokens/{token}/reveal", post(routes::tokens::reveal))
        .route(
            "/v1/api-keys",
            post(routes::api_keys::create).get(routes::api_keys::list),
        )
        .route(
            "/v1/api-keys/{id}",
            axum::routing::delete(routes::api_keys::revoke),
        )
        .route("/v1/keys", get(routes::keys::list))
        .route(
            "/v1/keys/rewrap",
            post(routes::keys::rewrap).get(routes::keys::rewrap_status),
        )
        .route("/v1/keys/{purpose}/rotate", post(routes::keys::rotate))
        .route(
            "/v1/keys/{purpose}/min-decryption-version",
            post(routes::keys::min_version),
        )
        .route(
            "/v1/keys/{purpose}/versions/{version}",
            axum::routing::delete(routes::keys::destroy),
        )
        .route("/v1/sys/unseal", post(crate::sealed::unseal))
        .route("/v1/sys/seal", post(crate::sealed::seal))
        .route("/v1/sys/seal-status", get(crate::sealed::seal_status))
        .route("/v1/audit/events", get(routes::audit::events))
        .route("/v1/audit/checkpoint", get(routes::audit::checkpoint))
        .route("/v1/audit/proofs/inclusion", get(routes::audit::inclusion))
        .route(
            "/v1/audit/proofs/consistency",
            get(routes::audit::consistency),
        )
        .route(
            "/webhooks/{source}",
            post(crate::webhooks::receive::receive),
        )
        .route("/healthz", get(routes::health::healthz))
        .route("/readyz", get(routes::health::readyz))
        .route("/metrics", get(routes::health::metrics))
        .route("/openapi.json", get(routes::health::openapi))
        .route(
            "/.well-known/acme-challenge/{token}",
            get(routes::acme::http01),
        )
        .fallback(fallback)
        .with_state(state.clone());
    let edge = EdgeConfig {
        behind_proxy: state.config.behind_proxy,
        // Validated when the configuration was loaded.
        trusted_proxies: state.config.trusted_proxy_cidrs().unwrap_or_default(),
        https_port: state
            .config
            .public_https_port
            .unwrap_or_else(|| state.config.listen_addr().port()),
    };
    harden(api, edge)
}

/// The layers every response passes through, outermost first: panic guard,
/// security headers, edge (client address, redirect to HTTPS), request
/// context (request id, audit facts), panic guard again (so that a
/// handler's panic becomes a 500 that still carries the security headers),
/// JSON 405s, metrics.
///
/// Only the metrics layer is applied per route (it needs the matched route
/// template). The others wrap the whole router once: `Router::layer` wraps
/// every route separately, and each request then cloned and re-boxed the
/// whole stack of layers, layer by layer (about fifty allocations per
/// request for this stack).
pub fn harden(api: Router, edge: EdgeConfig) -> Router {
    let api = api.layer(middleware::from_fn(record_metrics));
    let stack = tower::ServiceBuilder::new()
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .layer(middleware::from_fn(security_headers))
        .layer(middleware::from_fn_with_state(
            Arc::new(edge),
            crate::edge::edge,
        ))
        .layer(middleware::from_fn(request_context))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .layer(middleware::from_fn(method_not_allowed_to_json))
        .service(api);
    Router::new().fallback_service(stack)
}

/// The layers of the edge proxy listener, outermost first: panic guard,
/// edge (client address behind a trusted router, redirect to HTTPS),
/// request context (request id, audit facts), panic guard again. No
/// security headers: the app's own headers pass through unchanged. They
/// wrap the proxy's router once (see [`harden`]).
pub fn proxy_layers(proxy: Router, edge: EdgeConfig) -> Router {
    let stack = tower::ServiceBuilder::new()
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .layer(middleware::from_fn_with_state(
            Arc::new(edge),
            crate::edge::edge,
        ))
        .layer(middleware::from_fn(request_context))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .service(proxy);
    Router::new().fallback_service(stack)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::Transport;
    use axum::body::Body;
    use tower::ServiceExt;

    fn hardened() -> Router {
        let api = Router::new()
            .route("/ok", get(|| async { "ok" }))
            .route(
                "/v1/boom",
                get(|| async {
                    let v: Vec<u8> = Vec::new();
                    // A handler bug: index out of bounds.
                    #[allow(clippy::indexing_slicing)]
                    let _ = v[1];
                    "unreachable"
                }),
            )
            .fallback(fallback);
        harden(
            api,
            EdgeConfig {
                behind_proxy: false,
                trusted_proxies: Vec::new(),
                https_port: 8443,
            },
        )
    }

    fn assert_hardened(resp: &Response) {
        let h = resp.headers();
        let hsts = h[header::STRICT_TRANSPORT_SECURITY].to_str().unwrap();
        assert!(hsts.contains("includeSubDomains"), "{hsts}");
        let age: u64 = hsts
            .split(';')
            .find_map(|p| p.trim().strip_prefix("max-age="))
            .unwrap()
            .parse()
            .unwrap();
        assert!(age >= 31_536_000, "{hsts}");
        assert_eq!(
            h[header::CONTENT_SECURITY_POLICY],
            "default-src 'none'; frame-ancestors 'none'"
        );
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
        assert!(h.get(header::SERVER).is_none());
        assert!(h.get("x-powered-by").is_none());
    }

    #[test]
    fn request_ids_are_distinct_sort_by_time_and_never_read_as_a_card_number() {
        // Milliseconds whose hex digits are all decimal (the worst case for
        // digit runs), and now.
        let now = tokengate_vault::clock::now_ms() as u64;
        for ms in [0x0123_4567_8901, 0x0999_9999_9999, now] {
            let mut seen = std::collections::HashSet::new();
            // A run of counters, and the run across the 44-bit wrap.
            for n in (0..20_000u64).chain((1u64 << 44) - 20_000..(1u64 << 44)) {
                let id = request_id_text(ms, n, 0xDEAD_BEEF_1234_5678);
                let hex = id.strip_prefix("req_").unwrap();
                assert_eq!(hex.len(), 24, "{id}");
                assert!(
                    hex.bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                );
                assert_eq!(&hex[..12], format!("{ms:012x}"), "{id}");
                assert!(Ident::new(&id).is_some(), "refused as card-like: {id}");
                assert!(seen.insert(id), "{n}");
            }
        }
        let ids: Vec<String> = (0..10_000)
            .map(|_| new_request_id().as_str().to_owned())
            .collect();
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        assert!(ids.iter().all(|id| id != "req_unknown"));
        // The first 12 hex digits are the millisecond: non-decreasing.
        assert!(ids.windows(2).all(|w| w[0][4..16] <= w[1][4..16]));
    }

    #[tokio::test]
    async fn a_panic_is_a_500_with_every_security_header() {
        let silence = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let resp = hardened()
            .oneshot(Request::get("/v1/boom").body(Body::empty()).unwrap())
            .await
            .unwrap();
        std::panic::set_hook(silence);
        assert_eq!(resp.status(), 500);
        assert_hardened(&resp);
        assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
        let resp = hardened()
            .oneshot(Request::get("/ok").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_hardened(&resp);
        let resp = hardened()
            .oneshot(Request::get("/nope").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
        assert_hardened(&resp);
    }

    #[tokio::test]
    async fn plain_http_is_redirected_except_acme_challenges() {
        let plain = |uri: &str, host: &str| {
            let mut req = Request::get(uri)
                .header(header::HOST, host)
                .body(Body::empty())
                .unwrap();
            req.extensions_mut().insert(Transport::Plain);
            req
        };
        let resp = hardened()
            .oneshot(plain("/v1/tokens?x=1", "shop.example.com:8080"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 308);
        assert_eq!(
            resp.headers()[header::LOCATION],
            "https://shop.example.com:8443/v1/tokens?x=1"
        );
        let resp = hardened()
            .oneshot(plain("/.well-known/acme-challenge/abc", "shop.example.com"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "answered, not redirected");
        let resp = hardened().oneshot(plain("/", "bad host\\x")).await.unwrap();
        assert_eq!(resp.status(), 400);
    }
}
