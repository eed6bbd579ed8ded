//! Choosing the certificate for a TLS handshake by SNI, and swapping the
//! whole choice at run time (hot reload).
//!
//! [`SniResolver`] is an immutable snapshot: certificates by name, domains
//! mapped to names, and an optional default. For a client's SNI it tries the
//! exact domain, then the wildcard one label up (`a.example.com` →
//! `*.example.com`), then the default; a client without SNI (one that
//! connects by IP address) gets the default. With no default such
//! handshakes are refused.
//!
//! [`ReloadableResolver`] is what rustls holds: it answers from the current
//! snapshot and [`ReloadableResolver::replace`] swaps in a new one. A
//! handshake that started keeps the snapshot it read; open connections are
//! not touched (their keys were agreed at their handshake).
//!
//! It also answers ACME TLS-ALPN-01 validation (RFC 8737): a client that
//! offers the single ALPN protocol `acme-tls/1` gets the challenge
//! certificate published for its SNI with
//! [`ReloadableResolver::set_acme_challenge`], and never a real
//! certificate; with no challenge published for that name its handshake is
//! refused.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::key::PrivateKey;
use crate::san::DomainName;

/// Why a certificate could not be made ready for serving.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolverError {
    /// The chain is empty.
    #[error("certificate {name:?}: the chain is empty")]
    EmptyChain {
        /// Certificate name.
        name: String,
    },
    /// rustls cannot sign with the key.
    #[error("certificate {name:?}: the private key cannot be used for TLS")]
    UnusableKey {
        /// Certificate name.
        name: String,
    },
}

/// An immutable set of certificates and the domains they serve.
#[derive(Default, Clone)]
pub struct SniResolver {
    certs: HashMap<String, Arc<CertifiedKey>>,
    /// Invariant: keys are normalised [`DomainName`]s; values name an entry
    /// of `certs`.
    domains: HashMap<String, String>,
    default: Option<String>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.certs.keys().collect();
        names.sort();
        f.debug_struct("SniResolver")
            .field("certificates", &names)
            .field("domains", &self.domains.len())
            .field("default", &self.default)
            .finish()
    }
}

impl SniResolver {
    /// An empty resolver: every handshake is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a certificate under `name` (replacing one of the same name).
    ///
    /// # Errors
    /// When the chain is empty or rustls cannot load the key.
    pub fn add_certificate(
        &mut self,
        name: &str,
        chain: Vec<CertificateDer<'static>>,
        key: &PrivateKey,
    ) -> Result<(), ResolverError> {
        if chain.is_empty() {
            return Err(ResolverError::EmptyChain {
                name: name.to_owned(),
            });
        }
        let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key.secret_der())
            .map_err(|_| ResolverError::UnusableKey {
                name: name.to_owned(),
            })?;
        self.certs
            .insert(name.to_owned(), Arc::new(CertifiedKey::new(chain, signer)));
        Ok(())
    }

    /// Serves `domain` with the certificate `cert`. Returns `false` (and maps
    /// nothing) when no certificate of that name was added.
    pub fn map_domain(&mut self, domain: &DomainName, cert: &str) -> bool {
        if !self.certs.contains_key(cert) {
            return false;
        }
        self.domains
            .insert(domain.as_str().to_owned(), cert.to_owned());
        true
    }

    /// Serves unknown names and clients without SNI with `cert`. Returns
    /// `false` (and sets nothing) when no certificate of that name was added.
    pub fn set_default(&mut self, cert: &str) -> bool {
        if !self.certs.contains_key(cert) {
            return false;
        }
        self.default = Some(cert.to_owned());
        true
    }

    /// Names of the certificates held, sorted.
    pub fn certificate_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.certs.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The default certificate's name, if one is set.
    pub fn default_name(&self) -> Option<&str> {
        self.default.as_deref()
    }

    /// The name of the certificate for a client that sent `sni` (or none),
    /// or `None` when the handshake must be refused.
    pub fn select(&self, sni: Option<&str>) -> Option<&str> {
        let by_domain = sni.and_then(|sni| {
            let name = sni.strip_suffix('.').unwrap_or(sni).to_ascii_lowercase();
            if let Some(cert) = self.domains.get(&name) {
                return Some(cert.as_str());
            }
            let (_, parent) = name.split_once('.')?;
            self.domains.get(&format!("*.{parent}")).map(String::as_str)
        });
        by_domain.or(self.default.as_deref())
    }

    fn certified(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        self.select(sni)
            .and_then(|name| self.certs.get(name))
            .cloned()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certified(client_hello.server_name())
    }
}

/// The ALPN protocol of ACME TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Whether the client offers exactly `acme-tls/1`, as an ACME server
/// validating TLS-ALPN-01 does.
fn is_acme_validation(client_hello: &ClientHello<'_>) -> bool {
    client_hello.alpn().is_some_and(|mut protocols| {
        protocols.next() == Some(ACME_TLS_ALPN) && protocols.next().is_none()
    })
}

/// The resolver rustls holds for the life of the server; its snapshot can
/// be replaced at any time.
#[derive(Debug, Default)]
pub struct ReloadableResolver {
    current: RwLock<Arc<SniResolver>>,
    /// TLS-ALPN-01 challenge certificates by (lower-case) domain.
    acme: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl ReloadableResolver {
    /// Starts with `initial`.
    pub fn new(initial: SniResolver) -> Self {
        Self {
            current: RwLock::new(Arc::new(initial)),
            acme: RwLock::new(HashMap::new()),
        }
    }

    /// Answer TLS-ALPN-01 validation for `domain` with `challenge` (a
    /// self-signed certificate carrying the acmeIdentifier extension).
    pub fn set_acme_challenge(&self, domain: &str, challenge: Arc<CertifiedKey>) {
        let mut map = match self.acme.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.insert(domain.to_ascii_lowercase(), challenge);
    }

    /// Stop answering TLS-ALPN-01 validation for `domain`.
    pub fn remove_acme_challenge(&self, domain: &str) {
        let mut map = match self.acme.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.remove(&domain.to_ascii_lowercase());
    }

    fn acme_challenge(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let name = sni?.strip_suffix('.').unwrap_or(sni?).to_ascii_lowercase();
        let map = match self.acme.read() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.get(&name).cloned()
    }

    /// New handshakes use `next` from now on.
    pub fn replace(&self, next: SniResolver) {
        let next = Arc::new(next);
        match self.current.write() {
            Ok(mut guard) => *guard = next,
            // A writer panicked mid-swap: the pointer is still whole, so
            // take it over.
            Err(poisoned) => *poisoned.into_inner() = next,
        }
    }

    /// The snapshot in use.
    pub fn current(&self) -> Arc<SniResolver> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl ResolvesServerCert for ReloadableResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if is_acme_validation(&client_hello) {
            return self.acme_challenge(client_hello.server_name());
        }
        self.current().certified(client_hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver_with(names: &[&str]) -> SniResolver {
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = key.serialize_pem();
        let private = PrivateKey::from_pem(pem.as_bytes()).unwrap();
        let mut r = SniResolver::new();
        for name in names {
            let cert = rcgen::CertificateParams::new(vec![format!("{name}.test")])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            r.add_certificate(name, vec![cert.der().clone()], &private)
                .unwrap();
        }
        r
    }

    fn d(s: &str) -> DomainName {
        DomainName::parse(s).unwrap()
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let mut r = resolver_with(&["a", "b", "c"]);
        assert!(r.map_domain(&d("shop.example.com"), "a"));
        assert!(r.map_domain(&d("*.example.com"), "b"));
        assert!(!r.map_domain(&d("x.example.org"), "missing"));
        assert_eq!(r.select(Some("shop.example.com")), Some("a"));
        assert_eq!(r.select(Some("SHOP.example.com.")), Some("a"));
        assert_eq!(r.select(Some("www.example.com")), Some("b"));
        assert_eq!(r.select(Some("a.b.example.com")), None);
        assert_eq!(r.select(Some("example.com")), None);
        assert_eq!(r.select(None), None, "no default: refused");
        assert!(!r.set_default("missing"));
        assert!(r.set_default("c"));
        assert_eq!(r.select(Some("other.test")), Some("c"));
        assert_eq!(r.select(None), Some("c"));
        assert!(r.certified(Some("shop.example.com")).is_some());
        assert_eq!(r.certificate_names(), vec!["a", "b", "c"]);
    }

    #[test]
    fn replace_swaps_the_snapshot() {
        let mut first = resolver_with(&["a"]);
        first.set_default("a");
        let reloadable = ReloadableResolver::new(first);
        assert_eq!(reloadable.current().select(None), Some("a"));
        reloadable.replace(SniResolver::new());
        assert_eq!(reloadable.current().select(None), None);
        assert!(format!("{reloadable:?}").contains("SniResolver"));
    }

    #[test]
    fn acme_challenges_are_kept_by_lower_case_name() {
        let r = ReloadableResolver::new(resolver_with(&["a"]));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x.test".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(
            &rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        let ck = Arc::new(CertifiedKey::new(vec![cert.der().clone()], signer));
        r.set_acme_challenge("X.test", ck);
        assert!(r.acme_challenge(Some("x.test.")).is_some());
        assert!(r.acme_challenge(Some("y.test")).is_none());
        assert!(r.acme_challenge(None).is_none());
        r.remove_acme_challenge("x.TEST");
        assert!(r.acme_challenge(Some("x.test")).is_none());
    }

    #[test]
    fn empty_chain_is_refused() {
        let key = rcgen::KeyPair::generate().unwrap();
        let private = PrivateKey::from_pem(key.serialize_pem().as_bytes()).unwrap();
        assert_eq!(
            SniResolver::new().add_certificate("x", Vec::new(), &private),
            Err(ResolverError::EmptyChain { name: "x".into() })
        );
    }
}
