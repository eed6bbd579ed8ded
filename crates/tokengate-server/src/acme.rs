//! The ACME task of a running server (RFC 8555, through instant-acme).
//!
//! Every `acme_check_secs` it looks for domains under ACME management whose
//! order or renewal is due (`tokengate certs auto enable` makes one due at
//! once), orders a certificate, publishes the HTTP-01 answer in the
//! database (so whichever node the CA reaches can answer it, on the
//! plain-HTTP listener at `/.well-known/acme-challenge/TOKEN`), generates a
//! fresh P-256 key and CSR, and installs the issued chain through the
//! certificate store — checked, key sealed, audited as actor `acme` — where
//! the reload loop picks it up. Renewal is due when a third of the lifetime
//! is left; a failure is retried after `acme_retry_secs`, doubling per
//! consecutive failure up to six hours.
//!
//! Not answered yet: TLS-ALPN-01 and DNS-01 (so no wildcard certificates).
//! Several nodes with ACME configured may each order a due certificate; the
//! results are equivalent, so configure ACME on one node to avoid waste.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use tokengate_vault::{AcmeOutcome, Vault, acme_cert_name, renewal_time};
use zeroize::Zeroizing;

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
}

/// How long an HTTP-01 answer stays published.
const CHALLENGE_TTL_MS: i64 = 10 * 60 * 1000;
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

/// Orders a certificate for `domain`; returns (chain PEM, key PEM).
async fn order(
    vault: &Vault,
    account: &Account,
    domain: &str,
) -> Result<(String, Zeroizing<String>), String> {
    let ids = [Identifier::Dns(domain.to_owned())];
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(|e| format!("new order: {e}"))?;
    let mut tokens = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(next) = authorizations.next().await {
        let mut authz = next.map_err(|e| format!("authorization: {e}"))?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(format!("authorization is {other:?}")),
        }
        let mut challenge = authz
            .challenge(ChallengeType::Http01)
            .ok_or("the ACME server offered no HTTP-01 challenge")?;
        let key_authorization = challenge.key_authorization();
        let token = challenge.token.clone();
        vault
            .acme_put_challenge(&token, key_authorization.as_str(), CHALLENGE_TTL_MS)
            .await
            .map_err(|e| e.to_string())?;
        tokens.push(token);
        challenge
            .set_ready()
            .await
            .map_err(|e| format!("challenge: {e}"))?;
    }
    let status = order.poll_ready(&RetryPolicy::default()).await;
    for token in &tokens {
        if let Err(e) = vault.acme_delete_challenge(token).await {
            tracing::warn!(error = %e, "could not withdraw an HTTP-01 answer; it expires by itself");
        }
    }
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

/// One round: order or renew every due domain.
pub async fn run_due(vault: &Vault, settings: &AcmeSettings, cached: &mut Option<Account>) {
    let due = match vault.acme_due(now_ms()).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "ACME: cannot read the due domains");
            return;
        }
    };
    for row in due {
        let attempt = async {
            let account = match cached {
                Some(a) => a.clone(),
                None => {
                    let a = account(vault, settings).await?;
                    *cached = Some(a.clone());
                    a
                }
            };
            let (chain, key) = order(vault, &account, &row.domain).await?;
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

/// Run [`run_due`] every `check_every`, until aborted.
pub async fn acme_loop(vault: Arc<Vault>, settings: AcmeSettings) {
    let mut tick = tokio::time::interval(settings.check_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut account = None;
    loop {
        tick.tick().await;
        run_due(&vault, &settings, &mut account).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_six_hours() {
        let base = Duration::from_secs(60);
        assert_eq!(backoff(base, 0), Duration::from_secs(60));
        assert_eq!(backoff(base, 1), Duration::from_secs(120));
        assert_eq!(backoff(base, 3), Duration::from_secs(480));
        assert_eq!(backoff(base, 30), MAX_BACKOFF);
    }
}
