//! HTTP clients toward the app (inbound routes) and processors (relay), and
//! the header rules of a hop.
//!
//! Both clients follow no redirects (a 3xx goes back to the caller: a
//! processor must not be able to send card numbers on to another host) and
//! ignore `HTTP(S)_PROXY` variables. Processor clients resolve names through
//! [`EgressResolver`], which drops every non-public address unless the
//! processor allows private ones; the connection is made only to addresses
//! that passed.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName, header};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use tokengate_proxy::config::{CompiledProcessor, Route};
use tokengate_proxy::egress;

use crate::drain::client_tls_from;

fn builder(tls: Arc<rustls::ClientConfig>) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(256)
}

/// The HTTP client toward an inbound route's app: hyper's pooled client
/// over plain TCP or rustls (the app is configured, not chosen by the
/// caller, so no egress filtering; requests are built from a parsed base).
pub type AppClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    axum::body::Body,
>;

/// The client for one inbound route's app.
pub fn app_client(route: &Route) -> Result<AppClient, String> {
    let tls = client_tls_from(
        route.cfg.upstream_ca_file.as_deref(),
        route.cfg.upstream_client_cert.as_deref(),
        route.cfg.upstream_client_key.as_deref(),
    )
    .map_err(|e| format!("proxy route {}: {e}", route.cfg.name))?;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*tls).clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build(https),
    )
}

/// The client for one processor.
pub fn processor_client(p: &CompiledProcessor) -> Result<reqwest::Client, String> {
    let tls = client_tls_from(
        p.cfg.ca_file.as_deref(),
        p.cfg.client_cert.as_deref(),
        p.cfg.client_key.as_deref(),
    )
    .map_err(|e| format!("processor {}: {e}", p.cfg.name))?;
    builder(tls)
        .dns_resolver(Arc::new(EgressResolver {
            allow_private: p.cfg.allow_private,
        }))
        .build()
        .map_err(|e| format!("processor {}: {e}", p.cfg.name))
}

/// Resolves with the system resolver, then keeps only addresses the egress
/// policy allows. No address left: the lookup fails, so nothing connects.
#[derive(Debug)]
pub struct EgressResolver {
    pub allow_private: bool,
}

/// Every address of `name` was in a non-public range.
#[derive(Debug, thiserror::Error)]
#[error("egress refused: the processor's name resolves only to non-public addresses")]
pub struct EgressRefused;

impl Resolve for EgressResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow_private || !egress::is_non_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(EgressRefused) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// True when a reqwest error came from the egress resolver.
pub fn is_egress_refusal(e: &reqwest::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if s.is::<EgressRefused>() {
            return true;
        }
        src = s.source();
    }
    false
}

/// Headers that belong to one hop and are never forwarded (RFC 9110 7.6.1),
/// plus those recomputed for the new body.
const HOP: [HeaderName; 9] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::CONTENT_LENGTH,
    header::HOST,
];

/// Copy `from` without hop-by-hop headers (including those `Connection`
/// names) and without `extra_drop`.
pub fn forward_headers(from: &HeaderMap, extra_drop: &[&str]) -> HeaderMap {
    let named: Vec<String> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::with_capacity(from.len());
    for (k, v) in from {
        let name = k.as_str();
        if HOP.contains(k)
            || name == "keep-alive"
            || named.iter().any(|n| n == name)
            || extra_drop.contains(&name)
        {
            continue;
        }
        out.append(k.clone(), v.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("1"));
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Bearer k"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        h.insert(header::HOST, HeaderValue::from_static("a"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        h.insert("x-drop", HeaderValue::from_static("1"));
        let out = forward_headers(&h, &["x-drop"]);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out.contains_key("x-keep"));
    }

    #[tokio::test]
    async fn the_resolver_keeps_only_public_addresses() {
        let strict = EgressResolver {
            allow_private: false,
        };
        let name: Name = "localhost".parse().unwrap();
        assert!(strict.resolve(name).await.is_err());
        let open = EgressResolver {
            allow_private: true,
        };
        let name: Name = "localhost".parse().unwrap();
        assert!(open.resolve(name).await.unwrap().count() > 0);
    }
}
