//! The edge in front of the API: which client a request really comes from,
//! whether it arrived over HTTPS, and the redirect to HTTPS when it did not.
//!
//! - On the plain-HTTP listener every request is answered with a 308 to the
//!   same path over HTTPS, except ACME HTTP-01 paths
//!   (`/.well-known/acme-challenge/…`), which must stay reachable over HTTP.
//! - With `behind_proxy`, `X-Forwarded-For` and `X-Forwarded-Proto` are
//!   believed only when the TCP peer is in `trusted_proxies`; then the client
//!   address is the right-most address of `X-Forwarded-For` that is not a
//!   trusted proxy, and a forwarded scheme of `http` is redirected (a PaaS
//!   router that terminated TLS forwards `https`, and is served). From any
//!   other peer the headers are ignored.
//!
//! The resolved address goes into [`ClientAddr`], which the request context
//! puts in audit records.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::app::PeerAddr;
use crate::error::ApiError;

/// How the request reached tokengate (set by the accept loop).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// The TLS listener.
    Tls,
    /// The plain-HTTP (redirect) listener.
    Plain,
}

/// The client's address after proxy headers were weighed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// Why a CIDR does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CidrError(&'static str);

/// An IP network such as `10.0.0.0/8` or `2001:db8::/32`. A bare address
/// means that one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| CidrError("not an IP address or CIDR block"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or(CidrError("prefix length out of range"))?,
            None => max,
        };
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn bits(ip: IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

impl Cidr {
    /// Whether `ip` is in this network. IPv4-mapped IPv6 addresses
    /// (`::ffff:10.0.0.1`) count as their IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if ip.is_ipv4() != self.network.is_ipv4() {
            return false;
        }
        let (net, width) = bits(self.network);
        let (addr, _) = bits(ip);
        if self.prefix == 0 {
            return true;
        }
        let shift = u32::from(width - self.prefix);
        (net >> shift) == (addr >> shift)
    }
}

/// What the edge needs to know.
#[derive(Clone, Debug)]
pub struct EdgeConfig {
    pub behind_proxy: bool,
    pub trusted_proxies: Vec<Cidr>,
    /// Port for `https://` redirect URLs (omitted when 443).
    pub https_port: u16,
}

impl EdgeConfig {
    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|c| c.contains(ip))
    }
}

/// The client address from `X-Forwarded-For`, read right to left past the
/// trusted proxies. `None` when the header is absent or holds anything that
/// is not an address (then the peer address stands).
fn forwarded_client(headers: &HeaderMap, config: &EdgeConfig) -> Option<IpAddr> {
    let mut hops: Vec<IpAddr> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        for part in value.to_str().ok()?.split(',') {
            let part = part.trim();
            let ip = part
                .parse::<IpAddr>()
                .or_else(|_| part.parse::<SocketAddr>().map(|s| s.ip()))
                .ok()?;
            hops.push(ip);
        }
    }
    let first = *hops.first()?;
    Some(
        hops.iter()
            .rev()
            .find(|ip| !config.trusted(**ip))
            .copied()
            .unwrap_or(first),
    )
}

/// `X-Forwarded-Proto` says `https` (`Some(true)`), `http` (`Some(false)`),
/// or nothing usable (`None`). With several values the last one (added by
/// the proxy nearest to us) counts.
fn forwarded_https(headers: &HeaderMap) -> Option<bool> {
    let value = headers.get_all("x-forwarded-proto").iter().next_back()?;
    let last = value.to_str().ok()?.rsplit(',').next()?.trim();
    if last.eq_ignore_ascii_case("https") {
        Some(true)
    } else if last.eq_ignore_ascii_case("http") {
        Some(false)
    } else {
        None
    }
}

/// The host of the request, checked to be a plain host name or address
/// (without the port), for building the redirect URL.
fn request_host(req: &Request) -> Option<String> {
    let raw = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()))?;
    let authority: axum::http::uri::Authority = raw.parse().ok()?;
    let host = authority.host();
    if host.starts_with('[') {
        let inner = host.strip_prefix('[')?.strip_suffix(']')?;
        inner.parse::<std::net::Ipv6Addr>().ok()?;
        return Some(host.to_ascii_lowercase());
    }
    let valid = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    valid.then(|| host.to_ascii_lowercase())
}

fn redirect_to_https(req: &Request, config: &EdgeConfig) -> Response {
    let Some(host) = request_host(req) else {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_host",
            "the Host header is missing or not a valid host name; use https:// directly",
        )
        .into_response();
    };
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let port = match config.https_port {
        443 => String::new(),
        p => format!(":{p}"),
    };
    let location = format!("https://{host}{port}{path}");
    match (location.parse::<Uri>(), HeaderValue::from_str(&location)) {
        (Ok(_), Ok(value)) => {
            (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, value)]).into_response()
        }
        _ => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_target",
            "the request target cannot be redirected; use https:// directly",
        )
        .into_response(),
    }
}

const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Resolves [`ClientAddr`] and redirects plain-HTTP requests to HTTPS.
pub async fn edge(State(config): State<Arc<EdgeConfig>>, mut req: Request, next: Next) -> Response {
    let transport = req
        .extensions()
        .get::<Transport>()
        .copied()
        .unwrap_or(Transport::Tls);
    let peer = req.extensions().get::<PeerAddr>().map(|p| p.0.ip());
    let from_trusted_proxy = config.behind_proxy && peer.is_some_and(|ip| config.trusted(ip));
    let client = if from_trusted_proxy {
        forwarded_client(req.headers(), &config).or(peer)
    } else {
        peer
    };
    if let Some(ip) = client {
        req.extensions_mut().insert(ClientAddr(ip));
    }
    let forwarded = if from_trusted_proxy {
        forwarded_https(req.headers())
    } else {
        None
    };
    let secure = match transport {
        // Over TLS unless a trusted proxy says its client used plain HTTP.
        Transport::Tls => forwarded != Some(false),
        // Plain only counts as secure when a trusted proxy terminated TLS.
        Transport::Plain => forwarded == Some(true),
    };
    if secure || req.uri().path().starts_with(ACME_CHALLENGE_PREFIX) {
        return next.run(req).await;
    }
    redirect_to_https(&req, &config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs() {
        let c = cidr("10.0.0.0/8");
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        assert!(cidr("192.0.2.7").contains("192.0.2.7".parse().unwrap()));
        assert!(!cidr("192.0.2.7").contains("192.0.2.8".parse().unwrap()));
        assert!(cidr("0.0.0.0/0").contains("8.8.8.8".parse().unwrap()));
        assert!(cidr("2001:db8::/32").contains("2001:db8:1::5".parse().unwrap()));
        assert!(!cidr("2001:db8::/32").contains("2001:db9::5".parse().unwrap()));
        assert_eq!(cidr("::1/128").to_string(), "::1/128");
        for bad in ["", "10.0.0.0/33", "::/129", "host/8", "10.0.0.0/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn forwarded_for_is_read_right_to_left_past_trusted_proxies() {
        let config = EdgeConfig {
            behind_proxy: true,
            trusted_proxies: vec![cidr("10.0.0.0/8")],
            https_port: 443,
        };
        let h = headers(&[("x-forwarded-for", "198.51.100.9, 203.0.113.5, 10.0.0.2")]);
        // The left-most entry is whatever the client claimed; the right-most
        // untrusted one is who connected to our proxy.
        assert_eq!(
            forwarded_client(&h, &config),
            Some("203.0.113.5".parse().unwrap())
        );
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.5"),
            ("x-forwarded-for", "10.0.0.3"),
        ]);
        assert_eq!(
            forwarded_client(&h, &config),
            Some("203.0.113.5".parse().unwrap())
        );
        let h = headers(&[("x-forwarded-for", "10.0.0.1, 10.0.0.2")]);
        assert_eq!(
            forwarded_client(&h, &config),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(
            forwarded_client(&headers(&[("x-forwarded-for", "junk, 1.2.3.4")]), &config),
            None
        );
        assert_eq!(forwarded_client(&headers(&[]), &config), None);
        assert_eq!(
            forwarded_client(
                &headers(&[("x-forwarded-for", "[2001:db8::1]:443")]),
                &config
            ),
            Some("2001:db8::1".parse().unwrap())
        );
    }

    #[test]
    fn forwarded_proto() {
        assert_eq!(
            forwarded_https(&headers(&[("x-forwarded-proto", "https")])),
            Some(true)
        );
        assert_eq!(
            forwarded_https(&headers(&[("x-forwarded-proto", "HTTP")])),
            Some(false)
        );
        assert_eq!(
            forwarded_https(&headers(&[("x-forwarded-proto", "https, http")])),
            Some(false)
        );
        assert_eq!(
            forwarded_https(&headers(&[("x-forwarded-proto", "ws")])),
            None
        );
        assert_eq!(forwarded_https(&headers(&[])), None);
    }
}
