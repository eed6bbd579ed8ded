//! The outbound forward proxy (`[outbound] listen`): the app sets it as its
//! HTTPS proxy and trusts the outbound CA (`tokengate ca export`).
//!
//! - `CONNECT host:port` to a configured processor: tokengate answers the
//!   TLS handshake itself with a certificate for `host` signed by the
//!   outbound CA, reads each request inside, applies the processor's reveal
//!   rules and sends it on to the real processor over a new TLS connection
//!   (same client, egress checks and response tokenization as the relay).
//! - `CONNECT` to a `tunnel` entry: bytes are tunneled untouched (nothing
//!   can be revealed into them), after the same address checks.
//! - Anything else, including plain-HTTP requests: 403 `egress_denied`,
//!   audited.
//!
//! Every request needs `Proxy-Authorization` (Basic with the API key as the
//! password, or Bearer) for a key with the `relay` role: 407 without it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokengate_audit::{Ident, SafeText};
use tokengate_proxy::egress;
use tokengate_vault::outbound_ca::OutboundCa;
use tokengate_vault::{Caller, RequestMeta, Role};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::error::ApiError;
use crate::proxy::inbound::{Side, count};
use crate::proxy::relay::{deny, send_to_processor};
use crate::proxy::{LiveProcessor, ProxyState};

/// Minted certificates are re-made after this long (they are valid a day).
const LEAF_TTL: Duration = Duration::from_secs(12 * 3600);

/// State of the forward proxy listener.
pub struct Forward {
    pub state: Arc<ProxyState>,
    ca: OutboundCa,
    leaves: Mutex<HashMap<String, (Instant, Arc<rustls::ServerConfig>)>>,
}

impl std::fmt::Debug for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forward").finish_non_exhaustive()
    }
}

impl Forward {
    pub fn new(state: Arc<ProxyState>, ca: OutboundCa) -> Arc<Forward> {
        Arc::new(Forward {
            state,
            ca,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// The TLS configuration presenting a certificate for `host`.
    fn tls_for(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, String> {
        let mut leaves = self
            .leaves
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((made, cfg)) = leaves.get(host)
            && made.elapsed() < LEAF_TTL
        {
            return Ok(cfg.clone());
        }
        let leaf = self.ca.issue(host).map_err(|e| e.to_string())?;
        let chain = leaf
            .chain
            .into_iter()
            .map(rustls::pki_types::CertificateDer::from)
            .collect();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf.key_der.to_vec().into());
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let cfg = Arc::new(cfg);
        if leaves.len() > 1000 {
            leaves.clear();
        }
        leaves.insert(host.to_owned(), (Instant::now(), cfg.clone()));
        Ok(cfg)
    }
}

/// Accept loop of the forward proxy.
pub async fn serve(listener: TcpListener, fwd: Arc<Forward>, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "forward proxy accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let fwd = fwd.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let fwd = fwd.clone();
                async move { Ok::<_, Infallible>(handle(fwd, peer, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(tcp), svc)
                .with_upgrades()
                .await;
        });
    }
}

fn meta_for(peer: SocketAddr, req: &Request<Incoming>) -> RequestMeta {
    RequestMeta {
        request_id: Some(crate::app::new_request_id()),
        client_ip: Some(peer.ip()),
        user_agent: req
            .headers()
            .get(header::USER_AGENT)
            .map(|v| SafeText::new(&String::from_utf8_lossy(v.as_bytes()))),
    }
}

/// The API key in `Proxy-Authorization` (Basic password or Bearer).
fn presented_key(req: &Request<Incoming>) -> Option<String> {
    let value = req.headers().get(header::PROXY_AUTHORIZATION)?;
    let v = value.to_str().ok()?;
    if let Some(b) = v
        .strip_prefix("Basic ")
        .or_else(|| v.strip_prefix("basic "))
    {
        let raw = data_encoding::BASE64.decode(b.trim().as_bytes()).ok()?;
        let text = String::from_utf8(raw).ok()?;
        return text.split_once(':').map(|(_, p)| p.to_owned());
    }
    crate::extract::bearer(value).map(str::to_owned)
}

async fn handle(fwd: Arc<Forward>, peer: SocketAddr, req: Request<Incoming>) -> Response {
    let meta = meta_for(peer, &req);
    let key = presented_key(&req);
    if key.is_none() {
        count("forward", "-", "error", Some(Side::Downstream));
        let mut r = ApiError::new(
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            "proxy_authentication_required",
            "send Proxy-Authorization with an API key that has the relay role (Basic, as the password; or Bearer)",
        )
        .into_response();
        r.headers_mut().insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"tokengate\""),
        );
        return r;
    }
    let state = &fwd.state;
    let caller = match state.vault.authenticate(key.as_deref(), meta).await {
        Ok(c) => c,
        Err(e) => return ApiError::from(e).into_response(),
    };
    if let Err(e) = state
        .vault
        .require(&caller, Role::Relay, tokengate_audit::Action::TokenReveal)
        .await
    {
        return ApiError::from(e).into_response();
    }
    if req.method() != axum::http::Method::CONNECT {
        count("forward", "-", "error", Some(Side::Downstream));
        return deny(
            state,
            &caller,
            "reason=not_connect",
            "the forward proxy only opens CONNECT tunnels (HTTPS); plain HTTP toward processors is refused".into(),
        )
        .await
        .into_response();
    }
    let Some(auth) = req.uri().authority().cloned() else {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_connect",
            "CONNECT needs host:port",
        )
        .into_response();
    };
    let host = auth
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = auth.port_u16().unwrap_or(443);
    let rules = state.rules();
    let processor = rules
        .processors
        .iter()
        .position(|p| p.processor.host == host && p.processor.port == port);
    if let Some(i) = processor {
        let name = rules.processors[i].processor.cfg.name.clone();
        if egress::is_ip_literal(&host) && !rules.processors[i].processor.cfg.allow_ip_literal {
            return deny(
                state,
                &caller,
                &format!("processor={name} reason=ip_literal"),
                format!("processor `{name}` is addressed by IP literal; set allow_ip_literal for it if this is intended"),
            )
            .await
            .into_response();
        }
        let tls = match fwd.tls_for(&host) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot mint a certificate for an intercepted host");
                return ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "cannot open this tunnel",
                )
                .into_response();
            }
        };
        let fwd2 = fwd.clone();
        tokio::spawn(async move {
            match hyper::upgrade::on(req).await {
                Ok(up) => intercept(fwd2, up, tls, i, name, caller).await,
                Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
            }
        });
        count("forward", "-", "intercepted", None);
        return Response::new(Body::empty());
    }
    let target = format!("{host}:{port}");
    let tunnel_ok = rules
        .tunnels
        .iter()
        .any(|x| x.eq_ignore_ascii_case(&target));
    if !tunnel_ok {
        count("forward", "-", "error", Some(Side::Downstream));
        let shown = Ident::new(&host).map_or_else(|| "?".to_owned(), |i| i.as_str().to_owned());
        return deny(
            state,
            &caller,
            &format!("host={shown} reason=not_allowed"),
            "this host is neither a configured processor nor an allowed tunnel".into(),
        )
        .await
        .into_response();
    }
    let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((host.as_str(), port)).await {
        Ok(a) => a.filter(|a| !egress::is_non_public(a.ip())).collect(),
        Err(_) => Vec::new(),
    };
    if addrs.is_empty() {
        return deny(
            state,
            &caller,
            "reason=non_public_address",
            "the tunnel target does not resolve to a public address".into(),
        )
        .await
        .into_response();
    }
    tokio::spawn(async move {
        let Ok(up) = hyper::upgrade::on(req).await else {
            return;
        };
        if let Ok(mut upstream) = TcpStream::connect(&addrs[..]).await {
            let mut client = TokioIo::new(up);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
    });
    count("forward", "-", "tunneled", None);
    Response::new(Body::empty())
}

/// Serve the app's requests inside an intercepted tunnel.
async fn intercept(
    fwd: Arc<Forward>,
    up: hyper::upgrade::Upgraded,
    tls: Arc<rustls::ServerConfig>,
    processor: usize,
    name: String,
    caller: Caller,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let stream = match tokio::time::timeout(
        Duration::from_secs(10),
        acceptor.accept(TokioIo::new(up)),
    )
    .await
    {
        Ok(Ok(s)) => s,
        _ => {
            tracing::debug!(processor = %name, "intercepted TLS handshake failed (does the app trust the outbound CA?)");
            return;
        }
    };
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let fwd = fwd.clone();
        let caller = caller.clone();
        let name = name.clone();
        async move {
            let rules = fwd.state.rules();
            // The processor list may have been reloaded: find it again.
            let Some(live): Option<&LiveProcessor> = rules
                .processors
                .get(processor)
                .filter(|p| p.processor.cfg.name == name)
                .or_else(|| {
                    rules
                        .processors
                        .iter()
                        .find(|p| p.processor.cfg.name == name)
                })
            else {
                return Ok::<_, Infallible>(
                    ApiError::new(
                        StatusCode::FORBIDDEN,
                        "egress_denied",
                        "this processor is no longer configured",
                    )
                    .into_response(),
                );
            };
            let path = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            let authority = if live.processor.port == 443 {
                live.processor.host.clone()
            } else {
                format!("{}:{}", live.processor.host, live.processor.port)
            };
            let url = format!("https://{authority}{path}");
            let mut caller = caller.clone();
            caller.meta.request_id = Some(crate::app::new_request_id());
            let req = req.map(Body::new);
            let resp = match send_to_processor(&fwd.state, &rules, live, &caller, url, req).await {
                Ok(r) => {
                    count("forward", &name, "forwarded", None);
                    r
                }
                Err(e) => {
                    count("forward", &name, "error", Some(Side::of(e.status)));
                    e.into_response()
                }
            };
            Ok(resp)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}
