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

/// A domain as mapped to a certificate: a host name (`shop.example.com`) or
/// a wildcard for one label (`*.example.com`), lower-case, without a
/// trailing dot. IP addresses are refused: clients never send them in SNI.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainName(String);

impl DomainName {
    /// Validates and normalises `domain`.
    ///
    /// # Errors
    /// [`CertError::DomainIsIp`] for an IP address; [`CertError::InvalidDomain`]
    /// for anything else that is not a host name or `*.` + a host name of at
    /// least two labels.
    pub fn parse(domain: &str) -> Result<Self, CertError> {
        let invalid = || CertError::InvalidDomain {
            domain: domain.to_owned(),
        };
        let (wildcard, rest) = match domain.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, domain),
        };
        match Host::parse(rest) {
            Ok(Host::Ip(_)) if !wildcard => Err(CertError::DomainIsIp {
                domain: domain.to_owned(),
            }),
            Ok(Host::Dns(name)) => {
                // `*.com` would claim a whole top-level domain.
                if wildcard && !name.contains('.') {
                    return Err(invalid());
                }
                Ok(Self(if wildcard { format!("*.{name}") } else { name }))
            }
            _ => Err(invalid()),
        }
    }

    /// The normalised name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is a wildcard (`*.example.com`).
    pub fn is_wildcard(&self) -> bool {
        self.0.starts_with("*.")
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `sans` cover a mapped domain. A host name is covered as in
/// [`covers`]; a wildcard domain only by the same wildcard SAN (a list of
/// host names cannot cover every name under a parent).
pub fn covers_domain(sans: &[SubjectAltName], domain: &DomainName) -> bool {
    if domain.is_wildcard() {
        sans.iter().any(|san| match san {
            SubjectAltName::Dns(name) => name
                .strip_suffix('.')
                .unwrap_or(name)
                .eq_ignore_ascii_case(domain.as_str()),
            SubjectAltName::Ip(_) => false,
        })
    } else {
        let host = Host::Dns(domain.as_str().to_owned());
        sans.iter().any(|san| san.covers(&host))
    }
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

    #[test]
    fn domain_names_normalise_and_wildcards_cover_only_themselves() {
        let d = DomainName::parse("Shop.Example.COM.").unwrap();
        assert_eq!(d.as_str(), "shop.example.com");
        assert!(!d.is_wildcard());
        let w = DomainName::parse("*.Example.com").unwrap();
        assert_eq!(w.as_str(), "*.example.com");
        assert!(w.is_wildcard());
        for bad in [
            "",
            "*.com",
            "*",
            "*.",
            "a.*.com",
            "**.a.com",
            "a b.com",
            "*.*.a.com",
        ] {
            assert!(
                matches!(DomainName::parse(bad), Err(CertError::InvalidDomain { .. })),
                "{bad}"
            );
        }
        for ip in ["192.0.2.1", "::1", "[2001:db8::1]"] {
            assert!(
                matches!(DomainName::parse(ip), Err(CertError::DomainIsIp { .. })),
                "{ip}"
            );
        }
        let sans = [dns("*.example.com"), dns("example.com")];
        assert!(covers_domain(&sans, &w));
        assert!(covers_domain(
            &sans,
            &DomainName::parse("a.example.com").unwrap()
        ));
        assert!(covers_domain(
            &sans,
            &DomainName::parse("example.com").unwrap()
        ));
        assert!(!covers_domain(
            &sans,
            &DomainName::parse("*.a.example.com").unwrap()
        ));
        assert!(!covers_domain(&[dns("a.example.com")], &w));
    }
}
