//! rustls server configuration and the certificate lifecycle of a running
//! server.
//!
//! - [`server_config`]: TLS 1.2 and 1.3 only, ECDHE with AES-GCM or
//!   ChaCha20-Poly1305 (Mozilla "intermediate" without the DHE suites, which
//!   rustls does not implement) in the server's order of preference
//!   ([`CIPHER_SUITES`]), ALPN h2 and http/1.1, session resumption by
//!   tickets and by session cache. The certificate is chosen per handshake
//!   by SNI from a [`ReloadableResolver`].
//! - [`reload_loop`]: polls the store's change counter and swaps the
//!   resolver when it changes, so certificate and domain changes made by the
//!   CLI (in another process, or on another node) reach new handshakes
//!   within one poll interval. The `ServerConfig` itself is never replaced:
//!   open connections are untouched and session tickets stay valid.
//! - [`expiry_loop`]: the `tokengate_tls_certificate_expiry_days` gauge, and
//!   warnings at 30, 14 and 7 days in the log and the audit trail.

use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokengate_tls::ReloadableResolver;
use tokengate_vault::Vault;

/// A TLS set-up problem.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsError(pub String);

/// The cipher suites offered, in the server's order of preference (the
/// order of Mozilla's "intermediate" configuration): AES-128-GCM, then
/// AES-256-GCM, then ChaCha20-Poly1305; for TLS 1.2 ECDHE only, ECDSA and
/// RSA certificates alike. The server picks the first suite of this list
/// that the client offers (scanners such as testssl.sh rate a server that
/// lets the client choose as a finding).
pub static CIPHER_SUITES: &[rustls::SupportedCipherSuite] = {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    &[
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ]
};

/// The server configuration, answering each handshake from `resolver`.
/// With `acme_tls_alpn`, `acme-tls/1` is accepted too (last, so that it is
/// chosen only by a client that offers nothing else: an ACME server
/// validating TLS-ALPN-01).
pub fn server_config(
    resolver: Arc<ReloadableResolver>,
    acme_tls_alpn: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: CIPHER_SUITES.to_vec(),
        ..rustls::crypto::aws_lc_rs::default_provider()
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.ignore_client_order = true;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if acme_tls_alpn {
        config
            .alpn_protocols
            .push(tokengate_tls::ACME_TLS_ALPN.to_vec());
    }
    config.ticketer =
        rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| TlsError(e.to_string()))?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(64 * 1024);
    Ok(Arc::new(config))
}

/// Build a resolver from the store and report what was left out.
pub async fn load_resolver(
    vault: &Vault,
    default_cert: Option<&str>,
) -> Result<tokengate_tls::SniResolver, tokengate_vault::VaultError> {
    let loaded = vault.tls_resolver(default_cert).await?;
    for problem in &loaded.problems {
        tracing::error!(%problem, "certificate store: entry not served");
    }
    if loaded.resolver.certificate_names().is_empty() {
        tracing::warn!(
            "the certificate store is empty: every TLS handshake is refused until `tokengate certs add` adds one"
        );
    }
    Ok(loaded.resolver)
}

/// Reload `resolver` whenever the store's change counter moves. Runs until
/// the task is aborted. A failed reload keeps the current certificates.
pub async fn reload_loop(
    vault: Arc<Vault>,
    resolver: Arc<ReloadableResolver>,
    default_cert: Option<String>,
    every: Duration,
    mut seen: Option<String>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let current = match vault.tls_generation().await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(error = %e, "certificate store: cannot read the change counter");
                continue;
            }
        };
        if current == seen {
            continue;
        }
        match load_resolver(&vault, default_cert.as_deref()).await {
            Ok(next) => {
                tracing::info!(
                    certificates = next.certificate_names().len(),
                    "certificate store changed: new handshakes use the new certificates"
                );
                resolver.replace(next);
                seen = current;
            }
            Err(e) => {
                tracing::error!(error = %e, "certificate store: reload failed; keeping the current certificates");
            }
        }
    }
}

/// Expiry warning thresholds, in days, largest first.
pub const EXPIRY_WARNING_DAYS: [i64; 3] = [30, 14, 7];

/// The smallest threshold `days_left` is within, if any.
pub fn expiry_threshold(days_left: i64) -> Option<i64> {
    EXPIRY_WARNING_DAYS
        .iter()
        .rev()
        .copied()
        .find(|t| days_left <= *t)
}

/// One round of the expiry watch: set the gauge for every certificate, and
/// record a warning for each certificate that crossed a threshold (once per
/// certificate, leaf and threshold, across restarts and nodes).
pub async fn check_expiry(vault: &Vault) -> Result<(), tokengate_vault::VaultError> {
    for (name, days) in vault.certificate_expiry_days().await? {
        metrics::gauge!("tokengate_tls_certificate_expiry_days", "certificate" => name)
            .set(days as f64);
    }
    for cert in vault.expiring_certificates(30).await? {
        let Some(threshold) = expiry_threshold(cert.days_left) else {
            continue;
        };
        if vault.record_expiry_warning(&cert, threshold).await? {
            tracing::warn!(
                certificate = %cert.name,
                days_left = cert.days_left,
                expires_at = %cert.expires_at,
                threshold_days = threshold,
                "TLS certificate expires soon; renew it and run `tokengate certs update`"
            );
        }
    }
    Ok(())
}

/// Run [`check_expiry`] now and then every `every`.
pub async fn expiry_loop(vault: Arc<Vault>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = check_expiry(&vault).await {
            tracing::warn!(error = %e, "certificate expiry check failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_order_aead_suites_tls12_and_13() {
        let config = server_config(Arc::new(ReloadableResolver::default()), false).unwrap();
        assert!(config.ignore_client_order, "the server picks the suite");
        let suites = &config.crypto_provider().cipher_suites;
        assert_eq!(suites.len(), 9);
        assert_eq!(
            suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        for suite in suites {
            let name = format!("{:?}", suite.suite());
            assert!(name.contains("GCM") || name.contains("CHACHA20"), "{name}");
            assert!(
                suite.version() == &rustls::version::TLS13 || name.contains("ECDHE"),
                "{name}"
            );
        }
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(config.ticketer.enabled());
        let with_acme = server_config(Arc::new(ReloadableResolver::default()), true).unwrap();
        assert_eq!(
            with_acme.alpn_protocols.last().unwrap(),
            tokengate_tls::ACME_TLS_ALPN
        );
    }

    #[test]
    fn thresholds() {
        assert_eq!(expiry_threshold(31), None);
        assert_eq!(expiry_threshold(30), Some(30));
        assert_eq!(expiry_threshold(15), Some(30));
        assert_eq!(expiry_threshold(14), Some(14));
        assert_eq!(expiry_threshold(8), Some(14));
        assert_eq!(expiry_threshold(7), Some(7));
        assert_eq!(expiry_threshold(-3), Some(7));
    }
}
