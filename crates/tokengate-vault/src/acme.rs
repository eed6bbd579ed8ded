//! Automated certificates: the state that `tokengate certs auto` and the
//! server's ACME task share, in the database.
//!
//! The CLI puts a domain under ACME management (`pending`); a server with
//! `acme_directory_url` configured orders its certificate, answers the
//! HTTP-01 challenge from [`Vault::acme_challenge`] (any node can answer:
//! the answers are in the database), installs the certificate through the
//! normal certificate store (checked, key sealed, audited, actor `acme`),
//! and records the outcome: `valid` with the renewal time (when a third of
//! the lifetime is left), or `failed` with the error and a back-off.
//!
//! Invariant: the ACME account's credentials (which hold its private key)
//! are stored only sealed under the `tls_key` KEK, like certificate keys.

use data_encoding::HEXLOWER;
use serde::Serialize;
use tokengate_audit::{Action, AuditEvent, Ident, Outcome, SafeText};
use tokengate_crypto::{Envelope, PrivateKeyAad, open_private_key, seal_private_key};
use tokengate_store::{
    ACME_ALPN_TOKEN_PREFIX, AcmeAccountRow, AcmeDomainRow, Job, JobError, Op, TlsOp,
};
use tokengate_tls::DomainName;
use zeroize::Zeroizing;

use crate::access::event;
use crate::certs::{CertActor, CertSource, CertificateView, NewCertificate, load_trust_roots};
use crate::clock::{now_ms, rfc3339};
use crate::error::VaultError;
use crate::open::Vault;

/// The ACME state of one domain, as `certs auto` shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AcmeStatus {
    pub domain: String,
    /// `pending`, `valid` or `failed`.
    pub status: String,
    pub certificate: Option<String>,
    pub last_error: Option<String>,
    /// When the next order (pending, failed) or renewal (valid) is due.
    pub next_renewal: String,
    pub failures: u32,
}

impl From<&AcmeDomainRow> for AcmeStatus {
    fn from(r: &AcmeDomainRow) -> Self {
        AcmeStatus {
            domain: r.domain.clone(),
            status: r.status.clone(),
            certificate: r.cert_name.clone(),
            last_error: r.last_error.clone(),
            next_renewal: rfc3339(r.next_attempt_at),
            failures: r.failures,
        }
    }
}

/// The outcome of one order, for [`Vault::acme_record`].
#[derive(Clone, Debug)]
pub enum AcmeOutcome {
    /// Issued and installed as `cert_name`; renew at `renew_at` (Unix ms).
    Issued { cert_name: String, renew_at: i64 },
    /// Failed with `error`; try again at `retry_at` (Unix ms).
    Failed { error: String, retry_at: i64 },
}

fn acme_actor() -> CertActor {
    CertActor {
        id: Ident::from_static("acme"),
        meta: crate::RequestMeta::default(),
    }
}

/// The name ACME certificates get: `acme-` + the domain (`*` spelled
/// `wildcard`), shortened with a hash when too long for a name.
pub fn acme_cert_name(domain: &str) -> String {
    let base = format!("acme-{}", domain.replace('*', "wildcard"));
    if base.len() <= 63 {
        return base;
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, domain.as_bytes());
    let hash = data_encoding::HEXLOWER.encode(&digest.as_ref()[..4]);
    format!("{}-{hash}", base[..54].trim_end_matches(['.', '-']))
}

/// When to renew a certificate: when a third of its lifetime is left
/// (Unix milliseconds).
pub fn renewal_time(view: &CertificateView) -> Result<i64, VaultError> {
    let parse = |t: &str| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
            .map_err(|_| VaultError::Internal("certificate validity is not RFC 3339".into()))
    };
    let start = parse(&view.starts_at)?;
    let end = parse(&view.expires_at)?;
    Ok(start + (end - start) * 2 / 3)
}

const ACCOUNT_NAME: &str = "acme:account";

fn account_aad_hash(directory_url: &str) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, directory_url.as_bytes())
        .as_ref()
        .to_vec()
}

impl Vault {
    fn acme_event(
        &self,
        action: Action,
        outcome: Outcome,
        actor: &CertActor,
        detail: String,
    ) -> AuditEvent {
        let mut ev = event(action, outcome, &actor.id, Some(&self.tenant), &actor.meta);
        ev.detail = Some(SafeText::new(&detail));
        ev
    }

    async fn commit_acme(
        &self,
        ops: Vec<TlsOp>,
        events: Vec<AuditEvent>,
    ) -> Result<Result<(), JobError>, VaultError> {
        Ok(self
            .committer
            .submit(Job {
                ops: ops.into_iter().map(Op::Tls).collect(),
                events,
                ..Job::default()
            })
            .await?
            .map(|_| ()))
    }

    /// Put `domain` under ACME management: a server with ACME configured
    /// orders its certificate and renews it. A wildcard (`*.example.com`)
    /// is ordered through DNS-01.
    pub async fn acme_enable(
        &self,
        domain: &str,
        actor: &CertActor,
    ) -> Result<AcmeStatus, VaultError> {
        let d = DomainName::parse(domain.trim())
            .map_err(|e| VaultError::invalid(e.code(), e.to_string()))?;
        // A wildcard is ordered with the DNS-01 challenge: the server needs
        // `acme_dns_hook` (without it the order fails with that reason).
        if self
            .store
            .acme_domains()
            .await?
            .iter()
            .any(|r| r.domain == d.as_str())
        {
            return Err(VaultError::invalid(
                "acme_exists",
                format!(
                    "{d} is already under ACME management; `tokengate certs auto` shows its status"
                ),
            ));
        }
        let now = now_ms();
        let row = AcmeDomainRow {
            domain: d.to_string(),
            status: "pending".into(),
            cert_name: None,
            last_error: None,
            next_attempt_at: now,
            failures: 0,
            updated_at: now,
        };
        let ev = self.acme_event(
            Action::AcmeEnable,
            Outcome::Success,
            actor,
            format!("domain={d}"),
        );
        self.commit_acme(vec![TlsOp::PutAcmeDomain(row.clone())], vec![ev])
            .await?
            .map_err(|e| VaultError::Internal(e.to_string()))?;
        Ok(AcmeStatus::from(&row))
    }

    /// Stop ordering and renewing `domain`. Its certificate stays.
    pub async fn acme_disable(&self, domain: &str, actor: &CertActor) -> Result<(), VaultError> {
        let d = DomainName::parse(domain.trim())
            .map_err(|e| VaultError::invalid(e.code(), e.to_string()))?;
        if !self
            .store
            .acme_domains()
            .await?
            .iter()
            .any(|r| r.domain == d.as_str())
        {
            return Err(VaultError::NotFound {
                code: "acme_not_found",
                message: format!("{d} is not under ACME management"),
            });
        }
        let ev = self.acme_event(
            Action::AcmeDisable,
            Outcome::Success,
            actor,
            format!("domain={d}"),
        );
        self.commit_acme(
            vec![TlsOp::DeleteAcmeDomain {
                domain: d.to_string(),
            }],
            vec![ev],
        )
        .await?
        .map_err(|e| VaultError::Internal(e.to_string()))
    }

    /// Every domain under ACME management.
    pub async fn acme_statuses(&self) -> Result<Vec<AcmeStatus>, VaultError> {
        Ok(self
            .store
            .acme_domains()
            .await?
            .iter()
            .map(AcmeStatus::from)
            .collect())
    }

    /// Domains whose order or renewal is due at `now`.
    pub async fn acme_due(&self, now: i64) -> Result<Vec<AcmeDomainRow>, VaultError> {
        Ok(self
            .store
            .acme_domains()
            .await?
            .into_iter()
            .filter(|r| r.next_attempt_at <= now)
            .collect())
    }

    /// Publish an HTTP-01 answer for `ttl_ms`. Protocol state, not audited
    /// (the order's outcome is).
    pub async fn acme_put_challenge(
        &self,
        token: &str,
        key_authorization: &str,
        ttl_ms: i64,
    ) -> Result<(), VaultError> {
        self.commit_acme(
            vec![TlsOp::PutAcmeChallenge {
                token: token.to_owned(),
                key_authorization: key_authorization.to_owned(),
                expires_at: now_ms() + ttl_ms,
            }],
            Vec::new(),
        )
        .await?
        .map_err(|e| VaultError::Internal(e.to_string()))
    }

    /// Withdraw an HTTP-01 answer (and any expired ones).
    pub async fn acme_delete_challenge(&self, token: &str) -> Result<(), VaultError> {
        self.commit_acme(
            vec![TlsOp::DeleteAcmeChallenge {
                token: token.to_owned(),
                now: now_ms(),
            }],
            Vec::new(),
        )
        .await?
        .map_err(|e| VaultError::Internal(e.to_string()))
    }

    /// Take the attempt at `row`'s domain for this node, for `lease_ms`: on
    /// several nodes sharing a database only the one that wins orders (the
    /// others no longer see the domain as due). A node that dies mid-order
    /// leaves the lease to run out. `false`: another node took it first.
    pub async fn acme_claim(&self, row: &AcmeDomainRow, lease_ms: i64) -> Result<bool, VaultError> {
        let out = self
            .committer
            .submit(Job {
                ops: vec![Op::Tls(TlsOp::ClaimAcmeDomain {
                    domain: row.domain.clone(),
                    seen: row.next_attempt_at,
                    until: now_ms() + lease_ms,
                })],
                ..Job::default()
            })
            .await?
            .map_err(|e| VaultError::Internal(format!("{e:?}")))?;
        Ok(out.iter().map(|o| o.affected()).sum::<u64>() == 1)
    }

    /// Publish a TLS-ALPN-01 answer (the SHA-256 of the key authorization)
    /// for `domain` to every node, for `ttl_ms`.
    pub async fn acme_put_alpn_challenge(
        &self,
        domain: &str,
        digest: &[u8],
        ttl_ms: i64,
    ) -> Result<(), VaultError> {
        self.acme_put_challenge(
            &format!("{ACME_ALPN_TOKEN_PREFIX}{domain}"),
            &HEXLOWER.encode(digest),
            ttl_ms,
        )
        .await
    }

    /// Withdraw the TLS-ALPN-01 answer for `domain`.
    pub async fn acme_delete_alpn_challenge(&self, domain: &str) -> Result<(), VaultError> {
        self.acme_delete_challenge(&format!("{ACME_ALPN_TOKEN_PREFIX}{domain}"))
            .await
    }

    /// Every published TLS-ALPN-01 answer: `(domain, SHA-256 digest)`.
    pub async fn acme_alpn_challenges(&self) -> Result<Vec<(String, Vec<u8>)>, VaultError> {
        Ok(self
            .store
            .acme_alpn_challenges(now_ms())
            .await?
            .into_iter()
            .filter_map(|(domain, hex)| {
                let digest = HEXLOWER.decode(hex.as_bytes()).ok()?;
                (digest.len() == 32).then_some((domain, digest))
            })
            .collect())
    }

    /// The HTTP-01 answer for `token`, if one is published.
    pub async fn acme_challenge(&self, token: &str) -> Result<Option<String>, VaultError> {
        Ok(self.store.acme_challenge(token, now_ms()).await?)
    }

    /// The stored credentials (JSON) of the account at `directory_url`.
    pub async fn acme_account(
        &self,
        directory_url: &str,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, VaultError> {
        let Some(row) = self.store.acme_account(directory_url).await? else {
            return Ok(None);
        };
        let hash = account_aad_hash(directory_url);
        let sealed = Envelope {
            kek_version: row.kek_version,
            wrapped_dek: row.wrapped_dek,
            ciphertext: row.sealed_credentials,
        };
        let plain = open_private_key(
            &self.ring(),
            PrivateKeyAad {
                name: ACCOUNT_NAME,
                leaf_sha256: &hash,
            },
            &sealed,
        )
        .map_err(|_| VaultError::Internal("the ACME account credentials do not decrypt".into()))?;
        Ok(Some(plain.into_inner()))
    }

    /// Store new account credentials (sealed). Returns `false` when another
    /// node stored an account for this directory first (use that one).
    pub async fn acme_store_account(
        &self,
        directory_url: &str,
        credentials: &[u8],
    ) -> Result<bool, VaultError> {
        let hash = account_aad_hash(directory_url);
        let sealed = seal_private_key(
            &self.ring(),
            PrivateKeyAad {
                name: ACCOUNT_NAME,
                leaf_sha256: &hash,
            },
            credentials,
        )?;
        let row = AcmeAccountRow {
            directory_url: directory_url.to_owned(),
            kek_version: sealed.kek_version,
            wrapped_dek: sealed.wrapped_dek,
            sealed_credentials: sealed.ciphertext,
            created_at: now_ms(),
        };
        let mut ev = self.acme_event(
            Action::KeyCreate,
            Outcome::Success,
            &acme_actor(),
            format!("acme_account directory={directory_url}"),
        );
        ev.subject = Ident::new("acme_account");
        match self
            .commit_acme(vec![TlsOp::InsertAcmeAccount(row)], vec![ev])
            .await?
        {
            Ok(()) => Ok(true),
            Err(JobError::Conflict) => Ok(false),
            Err(JobError::Database(e)) => Err(VaultError::Internal(e)),
        }
    }

    /// Install a certificate ACME issued for `domain` (add, or update the
    /// previous one), and serve `domain` with it. Checked like any other.
    pub async fn acme_install(
        &self,
        domain: &str,
        chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<CertificateView, VaultError> {
        let name = acme_cert_name(domain);
        let actor = acme_actor();
        let roots = load_trust_roots(None);
        let view = if self.store.tls_certificate(&name).await?.is_some() {
            self.update_certificate(&name, chain_pem, Some(key_pem), &roots, &actor)
                .await?
        } else {
            self.add_certificate(
                NewCertificate {
                    bundle_pem: chain_pem,
                    key_pem,
                    name: Some(&name),
                    domains: &[],
                    source: CertSource::Acme,
                },
                &roots,
                &actor,
            )
            .await?
        };
        match self.store.tls_domain(domain).await? {
            Some(d) if d.cert_name.as_deref() == Some(name.as_str()) => {}
            Some(_) => {
                self.update_domain(domain, &name, &actor).await?;
            }
            None => {
                self.add_domain(domain, Some(&name), &actor).await?;
            }
        }
        self.certificate(&name).await.or(Ok(view))
    }

    /// Record the outcome of an order for `row`'s domain (audited).
    pub async fn acme_record(
        &self,
        row: &AcmeDomainRow,
        outcome: AcmeOutcome,
    ) -> Result<AcmeStatus, VaultError> {
        let now = now_ms();
        let (next, ev) = match outcome {
            AcmeOutcome::Issued {
                cert_name,
                renew_at,
            } => (
                AcmeDomainRow {
                    status: "valid".into(),
                    cert_name: Some(cert_name.clone()),
                    last_error: None,
                    next_attempt_at: renew_at,
                    failures: 0,
                    updated_at: now,
                    ..row.clone()
                },
                self.acme_event(
                    Action::AcmeOrder,
                    Outcome::Success,
                    &acme_actor(),
                    format!(
                        "domain={} certificate={cert_name} renew_at={}",
                        row.domain,
                        rfc3339(renew_at)
                    ),
                ),
            ),
            AcmeOutcome::Failed { error, retry_at } => {
                let error = SafeText::new(&error).as_str().to_owned();
                let ev = self.acme_event(
                    Action::AcmeOrder,
                    Outcome::failure("acme_order_failed"),
                    &acme_actor(),
                    format!(
                        "domain={} retry_at={} error={error}",
                        row.domain,
                        rfc3339(retry_at)
                    ),
                );
                (
                    AcmeDomainRow {
                        // A valid certificate stays valid (and served) while
                        // its renewal fails.
                        status: if row.status == "valid" {
                            "valid".into()
                        } else {
                            "failed".into()
                        },
                        last_error: Some(error),
                        next_attempt_at: retry_at,
                        failures: row.failures.saturating_add(1),
                        updated_at: now,
                        ..row.clone()
                    },
                    ev,
                )
            }
        };
        self.commit_acme(vec![TlsOp::PutAcmeDomain(next.clone())], vec![ev])
            .await?
            .map_err(|e| VaultError::Internal(e.to_string()))?;
        Ok(AcmeStatus::from(&next))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    async fn vault() -> (tempfile::TempDir, Vault) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        crate::init::init(&crate::init::InitOptions {
            data_dir: dir.clone(),
            database_url: None,
            custodians: None,
            custodian_keys: Vec::new(),
            pkcs11: None,
        })
        .await
        .unwrap();
        let vault = Vault::open(crate::open::VaultConfig::new(&dir))
            .await
            .unwrap();
        (tmp, vault)
    }

    /// Two nodes reading the same due row: one takes the order, the other
    /// is told no, and the domain is no longer due until the lease ends.
    #[tokio::test]
    async fn one_node_takes_each_order() {
        let (_tmp, vault) = vault().await;
        vault
            .acme_enable("claim.test", &CertActor::cli(Some("t")))
            .await
            .unwrap();
        let now = now_ms();
        let due = vault.acme_due(now).await.unwrap();
        assert_eq!(due.len(), 1);
        let row = &due[0];
        assert!(vault.acme_claim(row, 60_000).await.unwrap());
        assert!(!vault.acme_claim(row, 60_000).await.unwrap());
        assert!(vault.acme_due(now_ms()).await.unwrap().is_empty());
        assert_eq!(vault.acme_due(now + 61_000).await.unwrap().len(), 1);
    }

    /// TLS-ALPN-01 answers go through the database to every node, and only
    /// well-formed digests come back.
    #[tokio::test]
    async fn alpn_answers_are_shared_and_withdrawn() {
        let (_tmp, vault) = vault().await;
        vault
            .acme_put_alpn_challenge("a.test", &[7u8; 32], 60_000)
            .await
            .unwrap();
        vault
            .acme_put_alpn_challenge("gone.test", &[1u8; 32], -1)
            .await
            .unwrap();
        vault
            .acme_put_challenge("http-token", "ka", 60_000)
            .await
            .unwrap();
        assert_eq!(
            vault.acme_alpn_challenges().await.unwrap(),
            vec![("a.test".to_owned(), vec![7u8; 32])]
        );
        // Not reachable as an HTTP-01 token by its domain alone.
        assert_eq!(vault.acme_challenge("a.test").await.unwrap(), None);
        vault.acme_delete_alpn_challenge("a.test").await.unwrap();
        assert!(vault.acme_alpn_challenges().await.unwrap().is_empty());
        assert_eq!(
            vault.acme_challenge("http-token").await.unwrap().as_deref(),
            Some("ka")
        );
    }

    #[test]
    fn cert_names_are_valid_and_bounded() {
        assert_eq!(acme_cert_name("shop.example.com"), "acme-shop.example.com");
        let long = format!("{}.example.com", "a".repeat(60));
        let name = acme_cert_name(&long);
        assert!(name.len() <= 63, "{name}");
        assert!(name.starts_with("acme-aaaa"));
        assert_ne!(acme_cert_name(&long), acme_cert_name(&format!("b{long}")));
    }
}
