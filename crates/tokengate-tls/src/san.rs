//! Subject alternative names and whether they cover a domain.
//!
//! Rules (RFC 6125 as browsers apply it): DNS names compare without regard
//! to case or a trailing dot; a wildcard is only a whole left-most label
//! `*`, and it stands for exactly one non-empty label, so `*.example.com`
//! covers `a.example.com` but neither `example.com` nor `a.b.example.com`.
//! IP addresses match only IP address SANs, never DNS names. The subject CN
//! is not consulted.

use std::fmt;
use std::net::IpAddr;

use crate::error::CertError;

/// One subject alternative name of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubjectAltName {
    /// A DNS name, possibly a wildcard (`*.example.com`), lower-cased.
    Dns(String),
    /// An IP address.
    Ip(IpAddr),
}

impl fmt::Display for SubjectAltName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns(name) => f.write_str(name),
            Self::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// A domain a caller wants served, validated once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Host {
    Dns(String),
    Ip(IpAddr),
}

impl Host {
    pub(crate) fn parse(domain: &str) -> Result<Self, CertError> {
        let invalid = || CertError::InvalidDomain {
            domain: domain.to_owned(),
        };
        let bare = domain
            .strip_prefix('[')
            .and_then(|d| d.strip_suffix(']'))
            .unwrap_or(domain);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Self::Ip(ip));
        }
        let name = domain
            .strip_suffix('.')
            .unwrap_or(domain)
            .to_ascii_lowercase();
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if valid {
            Ok(Self::Dns(name))
        } else {
            Err(invalid())
        }
    }
}

impl SubjectAltName {
    /// Whether this SAN covers `host`.
    pub(crate) fn covers(&self, host: &Host) -> bool {
        match (self, host) {
            (Self::Ip(san), Host::Ip(ip)) => san == ip,
            (Self::Dns(san), Host::Dns(name)) => dns_covers(san, name),
            _ => false,
        }
    }
}

fn dns_covers(san: &str, name: &str) -> bool {
    let san = san.strip_suffix('.').unwrap_or(san);
    if let Some(parent) = san.strip_prefix("*.") {
        // Exactly one non-empty label in place of the `*`.
        match name.split_once('.') {
            Some((first, rest)) => {
                !first.is_empty() && !parent.is_empty() && rest.eq_ignore_ascii_case(parent)
            }
            None => false,
        }
    } else {
        // A `*` anywhere else (`f*.example.com`) is not honoured: it is then
        // compared literally and cannot match a valid host name.
        san.eq_ignore_ascii_case(name)
    }
}

/// Whether any of `sans` covers `domain`.
///
/// # Errors
/// [`CertError::InvalidDomain`] when `domain` is neither a host name nor an
/// IP address.
pub fn covers(sans: &[SubjectAltName], domain: &str) -> Result<bool, CertError> {
    let host = Host::parse(domain)?;
    Ok(sans.iter().any(|san| san.covers(&host)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns(s: &str) -> SubjectAltName {
        SubjectAltName::Dns(s.to_owned())
    }

    #[test]
    fn wildcard_covers_one_label_only() {
        let sans = [dns("*.example.com")];
        assert!(covers(&sans, "a.example.com").unwrap());
        assert!(covers(&sans, "A.Example.COM.").unwrap());
        assert!(!covers(&sans, "example.com").unwrap());
        assert!(!covers(&sans, "a.b.example.com").unwrap());
        assert!(!covers(&sans, "a.example.org").unwrap());
        assert!(!covers(&sans, "aexample.com").unwrap());
    }

    #[test]
    fn wildcard_needs_a_non_empty_label_and_parent() {
        // Host::parse refuses these names; dns_covers must not rely on it.
        assert!(!dns_covers("*.example.com", ".example.com"));
        assert!(!dns_covers("*.", "a."));
        assert!(dns_covers("*.example.com", "a.example.com"));
    }

    #[test]
    fn exact_names_and_partial_wildcards() {
        assert!(covers(&[dns("example.com")], "EXAMPLE.com").unwrap());
        assert!(!covers(&[dns("example.com")], "www.example.com").unwrap());
        assert!(!covers(&[dns("f*.example.com")], "foo.example.com").unwrap());
    }

    #[test]
    fn ip_addresses_match_ip_sans_only() {
        let sans = [
            SubjectAltName::Ip("192.0.2.7".parse().unwrap()),
            SubjectAltName::Ip("2001:db8::1".parse().unwrap()),
            dns("10.0.0.1"),
        ];
        assert!(covers(&sans, "192.0.2.7").unwrap());
        assert!(covers(&sans, "[2001:db8::1]").unwrap());
        assert!(covers(&sans, "2001:0db8:0:0::1").unwrap());
        assert!(!covers(&sans, "192.0.2.8").unwrap());
        assert!(!covers(&sans, "10.0.0.1").unwrap());
    }

    #[test]
    fn invalid_domains_are_errors() {
        for bad in ["", ".", "a..b", "-a.com", "a b.com", "*.example.com"] {
            assert!(
                matches!(covers(&[], bad), Err(CertError::InvalidDomain { .. })),
                "{bad}"
            );
        }
    }
}
