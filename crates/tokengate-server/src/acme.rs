//! The ACME task of a running server (RFC 8555, through instant-acme).
//!
//! Every `acme_check_secs` it looks for domains under ACME management whose
//! order or renewal is due (`tokengate certs auto enable` makes one due at
//! once), orders a certificate, answers the challenge, generates a fresh
//! P-256 key and CSR, and installs the issued chain through the certificate
//! store — checked, key sealed, audited as actor `acme` — where the reload
//! loop picks it up. Renewal is due when a third of the lifetime is left; a
//! failure is retried after `acme_retry_secs`, doubling per consecutive
//! failure up to six hours.
//!
//! Challenges (`acme_challenge`; wildcard domains always use DNS-01):
//! - HTTP-01: the answer goes in the database, so whichever node the CA
//!   reaches answers it, on the plain-HTTP listener at
//!   `/.well-known/acme-challenge/TOKEN`.
//! - TLS-ALPN-01 (RFC 8737): a self-signed challenge certificate with the
//!   acmeIdentifier extension, served by this node's HTTPS listener to
//!   clients that offer only the `acme-tls/1` ALPN protocol
//!   ([`ReloadableResolver::set_acme_challenge`]). Only the ordering node
//!   holds it.
//! - DNS-01: `acme_dns_hook present DOMAIN _acme-challenge.NAME VALUE`
//!   publishes the TXT record, then `acme_dns_wait_secs` pass before the CA
//!   is told to look; `… cleanup …` withdraws it afterwards, whatever the
//!   outcome.
//!
//! Several nodes with ACME configured may each order a due certificate; the
//! results are equivalent, so configure ACME on one node to avoid waste.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::sign::CertifiedKey;
use tokengate_tls::ReloadableResolver;
use tokengate_vault::{AcmeOutcome, Vault, acme_cert_name, renewal_time};
use zeroize::Zeroizing;

use crate::config::AcmeChallenge;

/// What the task needs from the configuration.
#[derive(Clone, Debug)]
pub struct AcmeSettings {
    pub directory_url: String,
    /// PEM root of the ACME server's HTTPS certificate (test CAs); the
    /// system roots otherwise.
    pub ca_root: Option<PathBuf>,
    /// Account contact (`mailto:…`).
    pub contact: Option<String>,
    pub check_every: Duration,
    pub retry_base: Duration,
    /// The challenge for non-wildcard domains.
    pub challenge: AcmeChallenge,
    /// The DNS-01 hook command.
    pub dns_hook: Option<PathBuf>,
    /// Wait after publishing a TXT record.
    pub dns_wait: Duration,
}

/// Longest a DNS hook may run.
const DNS_HOOK_TIMEOUT: Duration = Duration::from_secs(120);

/// How long an HTTP-01 or TLS-ALPN-01 answer stays published.
const CHALLENGE_TTL_MS: i64 = 10 * 60 * 1000;
/// How long one node holds the attempt at a domain (several nodes on one
/// database order each certificate once), plus the DNS-01 wait; a node
/// that dies mid-order leaves it to run out.
const ORDER_LEASE_MS: i64 = 15 * 60 * 1000;
/// How often every node copies the published TLS-ALPN-01 answers into its
/// resolver, so that the CA's validation may reach any node.
const ALPN_SYNC_EVERY: Duration = Duration::from_secs(1);
/// Wait between publishing a TLS-ALPN-01 answer and asking the CA to
/// validate: more than one sync period of the other nodes.
const ALPN_PUBLISH_WAIT: Duration = Duration::from_millis(1500);
/// Longest wait between attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);

fn backoff(base: Duration, failures: u32) -> Duration {
    let factor = 1u32.checked_shl(failures.min(16)).unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(MAX_BACKOFF)
}

fn now_ms() -> i64 {
    tokengate_vault::clock::now_ms()
}

fn builder(settings: &AcmeSettings) -> Result<instant_acme::AccountBuilder, String> {
    match &settings.ca_root {
        Some(root) => Account::builder_with_root(root)
            .map_err(|e| format!("ACME CA root {}: {e}", root.display())),
        None => Account::builder().map_err(|e| format!("ACME HTTP client: {e}")),
    }
}

/// The account for the directory: restored from the store, or created and
/// stored (sealed).
async fn account(vault: &Vault, settings: &AcmeSettings) -> Result<Account, String> {
    let url = &settings.directory_url;
    if let Some(stored) = vault.acme_account(url).await.map_err(|e| e.to_string())? {
        let credentials: AccountCredentials = serde_json::from_slice(&stored)
            .map_err(|_| "stored ACME account credentials are unreadable".to_owned())?;
        return builder(settings)?
            .from_credentials(credentials)
            .await
            .map_err(|e| format!("ACME account: {e}"));
    }
    let contact: Vec<&str> = settings.contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder(settings)?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            url.clone(),
            None,
        )
        .await
        .map_err(|e| format!("ACME account creation at {url}: {e}"))?;
    let json = Zeroizing::new(serde_json::to_vec(&credentials).map_err(|e| e.to_string())?);
    if vault
        .acme_store_account(url, &json)
        .await
        .map_err(|e| e.to_string())?
    {
        tracing::info!(directory = %url, "ACME account created");
        Ok(account)
    } else {
        // Another node stored one first: use that.
        Box::pin(self::account(vault, settings)).await
    }
}

/// The challenge type used for `domain`.
fn challenge_for(settings: &AcmeSettings, domain: &str) -> Result<AcmeChallenge, String> {
    if domain.starts_with("*.") {
        return match settings.dns_hook {
            Some(_) => Ok(AcmeChallenge::Dns01),
            None => {
                Err("wildcard certificates need the DNS-01 challenge: set acme_dns_hook".to_owned())
            }
        };
    }
    Ok(settings.challenge)
}

/// The TLS-ALPN-01 challenge certificate for `domain` (RFC 8737 §3): self
/// signed, the domain as its only SAN, and the critical acmeIdentifier
/// extension holding the SHA-256 digest of the key authorization.
fn alpn_challenge_cert(domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    if digest.len() != 32 {
        return Err("the key authorization digest is not SHA-256".to_owned());
    }
    let key = rcgen::KeyPair::generate().map_err(|e| format!("challenge key: {e}"))?;
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()])
        .map_err(|e| format!("challenge certificate: {e}"))?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("challenge certificate: {e}"))?;
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der)
        .map_err(|e| format!("challenge key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

/// Runs the DNS hook: `HOOK ACTION DOMAIN RECORD VALUE`. The error names
/// the exit status and the hook's last line on standard error (at most 200
/// characters).
async fn dns_hook(
    hook: &std::path::Path,
    action: &str,
    domain: &str,
    record: &str,
    value: &str,
) -> Result<(), String> {
    let run = tokio::process::Command::new(hook)
        .args([action, domain, record, value])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(DNS_HOOK_TIMEOUT, run).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(format!("DNS hook {}: {e}", hook.display())),
        Err(_) => {
            return Err(format!(
                "DNS hook {} {action}: no answer within {} s",
                hook.display(),
                DNS_HOOK_TIMEOUT.as_secs()
            ));
        }
    };
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last: String = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .chars()
        .take(200)
        .collect();
    Err(format!(
        "DNS hook {} {action} failed ({}){}",
        hook.display(),
        out.status,
        if last.is_empty() {
            String::new()
        } else {
            format!(": {last}")
        }
    ))
}

/// What was published for one order, to withdraw afterwards.
#[derive(Default)]
struct Published {
    http_tokens: Vec<String>,
    alpn_domains: Vec<String>,
    /// (domain, record name, value)
    dns_records: Vec<(String, String, String)>,
}

impl Published {
    async fn withdraw(self, vault: &Vault, resolver: &ReloadableResolver, settings: &AcmeSettings) {
        for token in &self.http_tokens {
            if let Err(e) = vault.acme_delete_challenge(token).await {
                tracing::warn!(error = %e, "could not withdraw an HTTP-01 answer; it expires by itself");
            }
        }
        for domain in &self.alpn_domains {
            resolver.remove_acme_challenge(domain);
            if let Err(e) = vault.acme_delete_alpn_challenge(domain).await {
                tracing::warn!(error = %e, "could not withdraw a TLS-ALPN-01 answer; it expires by itself");
            }
        }
        if let Some(hook) = &settings.dns_hook {
            for (domain, record, value) in &self.dns_records {
                if let Err(e) = dns_hook(hook, "cleanup", domain, record, value).await {
                    tracing::warn!(%domain, error = %e, "DNS-01 record not withdrawn");
                }
            }
        }
    }
}

/// Orders a certificate for `domain`; returns (chain PEM, key PEM).
async fn order(
    vault: &Vault,
    resolver: &ReloadableResolver,
    settings: &AcmeSettings,
    account: &Account,
    domain: &str,
) -> Result<(String, Zeroizing<String>), String> {
    let kind = challenge_for(settings, domain)?;
    let ids = [Identifier::Dns(domain.to_owned())];
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(|e| format!("new order: {e}"))?;
    let mut published = Published::default();
    let answered = answer(vault, resolver, settings, &mut order, kind, &mut published).await;
    let status = match answered {
        Ok(()) => order.poll_ready(&RetryPolicy::default()).await,
        Err(e) => {
            published.withdraw(vault, resolver, settings).await;
            return Err(e);
        }
    };
    published.withdraw(vault, resolver, settings).await;
    match status {
        Ok(OrderStatus::Ready) => {}
        Ok(other) => {
            // Say why: the first challenge error the CA reported.
            let mut reason = format!("order is {other:?}");
            let mut authorizations = order.authorizations();
            while let Some(Ok(authz)) = authorizations.next().await {
                if let Some(problem) = authz.challenges.iter().find_map(|c| c.error.as_ref()) {
                    reason = format!(
                        "{reason}: {}",
                        problem.detail.as_deref().unwrap_or("validation failed")
                    );
                    break;
                }
            }
            return Err(reason);
        }
        Err(e) => return Err(format!("waiting for validation: {e}")),
    }
    let key = rcgen::KeyPair::generate().map_err(|e| format!("key generation: {e}"))?;
    let csr = rcgen::CertificateParams::new(vec![domain.to_owned()])
        .and_then(|params| params.serialize_request(&key))
        .map_err(|e| format!("CSR: {e}"))?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(|e| format!("finalize: {e}"))?;
    let chain = order
        .poll_certificate(&RetryPolicy::default())
        .await
        .map_err(|e| format!("certificate: {e}"))?;
    Ok((chain, Zeroizing::new(key.serialize_pem())))
}

/// Publishes the answer to every pending authorization of `order` and tells
/// the CA to validate it. What was published is added to `published` as it
/// goes, so that the caller withdraws it whatever happens.
async fn answer(
    vault: &Vault,
    resolver: &ReloadableResolver,
    settings: &AcmeSettings,
    order: &mut instant_acme::Order,
    kind: AcmeChallenge,
    published: &mut Published,
) -> Result<(), String> {
    let (challenge_type, name) = match kind {
        AcmeChallenge::Http01 => (ChallengeType::Http01, "HTTP-01"),
        AcmeChallenge::TlsAlpn01 => (ChallengeType::TlsAlpn01, "TLS-ALPN-01"),
        AcmeChallenge::Dns01 => (ChallengeType::Dns01, "DNS-01"),
    };
    let mut authorizations = order.authorizations();
    while let Some(next) = authorizations.next().await {
        let mut authz = next.map_err(|e| format!("authorization: {e}"))?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(format!("authorization is {other:?}")),
        }
        let mut challenge = authz
            .challenge(challenge_type.clone())
            .ok_or_else(|| format!("the ACME server offered no {name} challenge"))?;
        // The identifier without its wildcard label.
        let identifier = match challenge.identifier().identifier {
            Identifier::Dns(d) => d.clone(),
            other => return Err(format!("unexpected identifier {other:?}")),
        };
        let key_authorization = challenge.key_authorization();
        match kind {
            AcmeChallenge::Http01 => {
                let token = challenge.token.clone();
                vault
                    .acme_put_challenge(&token, key_authorization.as_str(), CHALLENGE_TTL_MS)
                    .await
                    .map_err(|e| e.to_string())?;
                published.http_tokens.push(token);
            }
            AcmeChallenge::TlsAlpn01 => {
                let digest = key_authorization.digest();
                let cert = alpn_challenge_cert(&identifier, digest.as_ref())?;
                // Here at once, and on every other node sharing the
                // database within a sync period: the CA may reach any.
                resolver.set_acme_challenge(&identifier, cert);
                published.alpn_domains.push(identifier.clone());
                vault
                    .acme_put_alpn_challenge(&identifier, digest.as_ref(), CHALLENGE_TTL_MS)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::time::sleep(ALPN_PUBLISH_WAIT).await;
            }
            AcmeChallenge::Dns01 => {
                let hook = settings
                    .dns_hook
                    .as_deref()
                    .ok_or("DNS-01 needs acme_dns_hook")?;
                let record = format!("_acme-challenge.{identifier}");
                let value = key_authorization.dns_value();
                // Withdrawn afterwards even if `present` failed half-way.
                published
                    .dns_records
                    .push((identifier.clone(), record.clone(), value.clone()));
                dns_hook(hook, "present", &identifier, &record, &value).await?;
                tokio::time::sleep(settings.dns_wait).await;
            }
        }
        challenge
            .set_ready()
            .await
            .map_err(|e| format!("challenge: {e}"))?;
    }
    Ok(())
}

/// One round: order or renew every due domain.
pub async fn run_due(
    vault: &Vault,
    resolver: &ReloadableResolver,
    settings: &AcmeSettings,
    cached: &mut Option<Account>,
) {
    let due = match vault.acme_due(now_ms()).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "ACME: cannot read the due domains");
            return;
        }
    };
    for row in due {
        // Several nodes on one database: only the one that takes the
        // attempt orders.
        // An order waits `dns_wait` for DNS propagation: the lease covers it.
        let lease = ORDER_LEASE_MS.saturating_add(settings.dns_wait.as_millis() as i64);
        match vault.acme_claim(&row, lease).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(domain = %row.domain, "ACME: another node is ordering");
                continue;
            }
            Err(e) => {
                tracing::warn!(domain = %row.domain, error = %e, "ACME: cannot take the order");
                continue;
            }
        }
        let attempt = async {
            let account = match cached {
                Some(a) => a.clone(),
                None => {
                    let a = account(vault, settings).await?;
                    *cached = Some(a.clone());
                    a
                }
            };
            let (chain, key) = order(vault, resolver, settings, &account, &row.domain).await?;
            let view = vault
                .acme_install(&row.domain, chain.as_bytes(), key.as_bytes())
                .await
                .map_err(|e| format!("issued certificate refused: {e}"))?;
            let renew_at = renewal_time(&view).map_err(|e| e.to_string())?;
            Ok::<_, String>(renew_at)
        };
        let outcome = match attempt.await {
            Ok(renew_at) => {
                tracing::info!(domain = %row.domain, "ACME certificate issued and installed");
                AcmeOutcome::Issued {
                    cert_name: acme_cert_name(&row.domain),
                    renew_at,
                }
            }
            Err(error) => {
                let wait = backoff(settings.retry_base, row.failures);
                tracing::warn!(domain = %row.domain, %error, retry_in_secs = wait.as_secs(), "ACME order failed");
                AcmeOutcome::Failed {
                    error,
                    retry_at: now_ms() + wait.as_millis() as i64,
                }
            }
        };
        if let Err(e) = vault.acme_record(&row, outcome).await {
            tracing::error!(domain = %row.domain, error = %e, "ACME: cannot record the outcome");
        }
    }
}

/// Keep this node's resolver answering every TLS-ALPN-01 challenge
/// published in the database (by whichever node is ordering), until
/// aborted.
pub async fn alpn_sync_loop(vault: Arc<Vault>, resolver: Arc<ReloadableResolver>) {
    let mut tick = tokio::time::interval(ALPN_SYNC_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What this loop put in the resolver: domain → digest.
    let mut synced: std::collections::HashMap<String, Vec<u8>> = Default::default();
    loop {
        tick.tick().await;
        let published = match vault.acme_alpn_challenges().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "ACME: cannot read the TLS-ALPN-01 answers");
                continue;
            }
        };
        let now: std::collections::HashMap<String, Vec<u8>> = published.into_iter().collect();
        for (domain, digest) in &now {
            if synced.get(domain) == Some(digest) {
                continue;
            }
            match alpn_challenge_cert(domain, digest) {
                Ok(cert) => {
                    resolver.set_acme_challenge(domain, cert);
                    synced.insert(domain.clone(), digest.clone());
                }
                Err(e) => tracing::warn!(%domain, error = %e, "ACME: bad TLS-ALPN-01 answer"),
            }
        }
        synced.retain(|domain, _| {
            let keep = now.contains_key(domain);
            if !keep {
                resolver.remove_acme_challenge(domain);
            }
            keep
        });
    }
}

/// Run [`run_due`] every `check_every`, until aborted.
pub async fn acme_loop(
    vault: Arc<Vault>,
    resolver: Arc<ReloadableResolver>,
    settings: AcmeSettings,
) {
    let mut tick = tokio::time::interval(settings.check_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut account = None;
    loop {
        tick.tick().await;
        run_due(&vault, &resolver, &settings, &mut account).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(hook: Option<PathBuf>) -> AcmeSettings {
        AcmeSettings {
            directory_url: "https://ca.test/dir".into(),
            ca_root: None,
            contact: None,
            check_every: Duration::from_secs(1),
            retry_base: Duration::from_secs(1),
            challenge: AcmeChallenge::TlsAlpn01,
            dns_hook: hook,
            dns_wait: Duration::ZERO,
        }
    }

    #[test]
    fn wildcards_use_dns_01_and_need_the_hook() {
        let without = settings(None);
        assert_eq!(
            challenge_for(&without, "shop.test"),
            Ok(AcmeChallenge::TlsAlpn01)
        );
        let e = challenge_for(&without, "*.shop.test").unwrap_err();
        assert!(e.contains("acme_dns_hook"), "{e}");
        let with = settings(Some(PathBuf::from("/bin/true")));
        assert_eq!(
            challenge_for(&with, "*.shop.test"),
            Ok(AcmeChallenge::Dns01)
        );
    }

    #[test]
    fn challenge_certificate_needs_a_sha256_digest() {
        assert!(alpn_challenge_cert("a.test", &[0u8; 31]).is_err());
        let ck = alpn_challenge_cert("a.test", &[7u8; 32]).unwrap();
        assert_eq!(ck.cert.len(), 1);
    }

    #[tokio::test]
    async fn a_failing_dns_hook_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let hook = dir.path().join("hook.sh");
        std::fs::write(
            &hook,
            "#!/bin/sh\necho \"noise\" >&2\necho \"zone $2 not managed here\" >&2\nexit 3\n",
        )
        .unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let e = dns_hook(&hook, "present", "x.test", "_acme-challenge.x.test", "v")
            .await
            .unwrap_err();
        assert!(e.contains("zone x.test not managed here"), "{e}");
        assert!(e.contains("present"), "{e}");
        assert!(e.contains('3'), "{e}");
        assert!(!e.contains("noise"), "{e}");
        let missing = dir.path().join("missing");
        assert!(
            dns_hook(&missing, "cleanup", "x.test", "r", "v")
                .await
                .is_err()
        );
    }

    #[test]
    fn backoff_doubles_up_to_six_hours() {
        let base = Duration::from_secs(60);
        assert_eq!(backoff(base, 0), Duration::from_secs(60));
        assert_eq!(backoff(base, 1), Duration::from_secs(120));
        assert_eq!(backoff(base, 3), Duration::from_secs(480));
        assert_eq!(backoff(base, 30), MAX_BACKOFF);
    }
}
