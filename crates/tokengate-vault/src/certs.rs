//! The TLS certificate store: certificates, their private keys, and the
//! domains they serve. Used by the `certs` / `domains` commands and by the
//! server (which builds its SNI resolver from [`Vault::tls_resolver`]).
//!
//! Invariants:
//! - a private key is written only sealed under the `tls_key` KEK, bound to
//!   the certificate's name and leaf hash (`tokengate_crypto::tls_key`); it
//!   leaves this module only as a `tokengate_tls::PrivateKey` inside a
//!   resolver, and no function returns its bytes, PEM or DER;
//! - every add, update and removal of a certificate or domain commits
//!   together with its audit event (fail closed), and sets a new random
//!   `tls_generation` in `meta`, which running servers poll to reload;
//! - everything stored has passed the checks of `tokengate_tls` at the time
//!   it was stored (key match, validity, chain, key size, signature hash,
//!   SAN coverage of every mapped domain).

use std::path::Path;

use data_encoding::HEXLOWER;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokengate_audit::{Action, AuditEvent, Ident, Outcome, SafeText};
use tokengate_crypto::{Envelope, PrivateKeyAad, open_private_key, seal_private_key};
use tokengate_store::{Job, JobError, Op, OpOutput, TlsCertRow, TlsDomainRow, TlsOp};
use tokengate_tls::{
    CertError, CheckOptions, CheckedCertificate, DomainName, KeyFormat, PrivateKey, SniResolver,
    SubjectAltName, TrustRoots, chain_from_pem, chain_to_pem, check_certificate,
    check_certificate_with_key, covers_domain, memorable_name,
};
use zeroize::Zeroizing;

use crate::access::{RequestMeta, event};
use crate::clock::{now_ms, rfc3339};
use crate::error::VaultError;
use crate::open::Vault;

/// The `meta` key whose value changes (to a new random value) with every
/// certificate or domain change. Servers poll it to reload.
pub const TLS_GENERATION_KEY: &str = "tls_generation";

/// The name `init` gives the self-signed certificate for localhost.
pub const LOCALHOST_CERT: &str = "localhost";

/// Where the system trust store usually is (Debian, Ubuntu, Alpine).
pub const SYSTEM_TRUST_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How a certificate is managed (the `Type` column of `tokengate certs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertSource {
    /// Added by an operator (`certs add`).
    Manual,
    /// Made by `init` for localhost.
    SelfSigned,
    /// Issued and renewed through ACME (`certs auto`).
    Acme,
}

impl CertSource {
    pub fn as_str(self) -> &'static str {
        match self {
            CertSource::Manual => "manual",
            CertSource::SelfSigned => "self-signed",
            CertSource::Acme => "acme",
        }
    }
}

/// Who is changing the certificate store, for the audit trail.
#[derive(Clone, Debug)]
pub struct CertActor {
    pub id: Ident,
    pub meta: RequestMeta,
}

impl CertActor {
    /// tokengate itself (init, upgrades).
    pub fn system() -> CertActor {
        CertActor {
            id: Ident::from_static("system"),
            meta: RequestMeta::default(),
        }
    }

    /// The command line, naming the operating-system user when known.
    pub fn cli(os_user: Option<&str>) -> CertActor {
        let agent = match os_user {
            Some(user) => format!("tokengate-cli user={user}"),
            None => "tokengate-cli".to_owned(),
        };
        CertActor {
            id: Ident::from_static("cli"),
            meta: RequestMeta {
                user_agent: Some(SafeText::new(&agent)),
                ..RequestMeta::default()
            },
        }
    }
}

/// Certificate details as stored in `info_json` (all public).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct StoredInfo {
    common_names: Vec<String>,
    subject: String,
    issuer: String,
    not_before: String,
    not_after: String,
    sans: Vec<String>,
    trusted: bool,
    key_type: String,
    serial: String,
    sha256_fingerprint: String,
    chain_length: usize,
}

/// A certificate as `certs` / `certs info` show it. Holds nothing secret.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CertificateView {
    pub name: String,
    /// `manual` or `self-signed`.
    #[serde(rename = "type")]
    pub source: String,
    pub common_names: Vec<String>,
    pub subject: String,
    pub issuer: String,
    pub starts_at: String,
    pub expires_at: String,
    /// Whole days until expiry (negative once expired).
    pub days_to_expiry: i64,
    pub sans: Vec<String>,
    /// Whether the chain verified against the trust roots when it was stored.
    pub trusted: bool,
    pub key_type: String,
    pub serial: String,
    pub sha256_fingerprint: String,
    /// Certificates served: the leaf and its issuers from the bundle.
    pub chain_length: usize,
    pub domains: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// A domain and the certificate serving it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct DomainView {
    pub domain: String,
    /// `None`: no certificate (no HTTPS for this name unless a default
    /// certificate is configured).
    pub certificate: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// A certificate to add.
#[derive(Clone, Copy, Debug)]
pub struct NewCertificate<'a> {
    /// PEM: leaf, intermediates, maybe the root, in any order.
    pub bundle_pem: &'a [u8],
    /// PEM private key of the leaf.
    pub key_pem: &'a [u8],
    /// A memorable name is generated when `None`.
    pub name: Option<&'a str>,
    /// Domains to serve with it (each must be covered by a SAN).
    pub domains: &'a [String],
    pub source: CertSource,
}

/// What a removal took away.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RemovedCertificate {
    pub name: String,
    /// Domains that were served with this certificate and now have none.
    pub domains_without_certificate: Vec<String>,
}

/// A certificate close to (or past) its expiry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertExpiry {
    pub name: String,
    pub sha256_fingerprint: String,
    pub expires_at: String,
    /// Whole days left (negative once expired).
    pub days_left: i64,
}

/// A resolver built from the store, with what could not be loaded.
#[derive(Debug)]
pub struct LoadedResolver {
    pub resolver: SniResolver,
    /// One line per certificate or mapping that was left out, and why.
    /// Never contains key material.
    pub problems: Vec<String>,
}

fn cert_err(e: CertError) -> VaultError {
    VaultError::invalid(e.code(), e.to_string())
}

fn cert_not_found(name: &str) -> VaultError {
    VaultError::NotFound {
        code: "cert_not_found",
        message: format!("no certificate named {name:?}; `tokengate certs` lists the certificates"),
    }
}

fn domain_not_found(domain: &str) -> VaultError {
    VaultError::NotFound {
        code: "domain_not_found",
        message: format!("no domain {domain:?}; `tokengate domains` lists the domains"),
    }
}

/// Certificate names: 1–63 of `a-z 0-9 . _ -`, starting with a letter or
/// digit (so they are safe identifiers in audit records and file names).
fn valid_name(name: &str) -> Result<(), VaultError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
        && Ident::new(name).is_some();
    if ok {
        Ok(())
    } else {
        Err(VaultError::invalid(
            "invalid_cert_name",
            format!(
                "{name:?} is not a valid certificate name: use 1-63 lower-case letters, digits, '.', '_' or '-', starting with a letter or digit"
            ),
        ))
    }
}

fn parse_domain(domain: &str) -> Result<DomainName, VaultError> {
    DomainName::parse(domain.trim()).map_err(cert_err)
}

pub(crate) fn sha256(bytes: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

fn stored_info(checked: &CheckedCertificate) -> StoredInfo {
    let info = &checked.info;
    StoredInfo {
        common_names: info.common_names.clone(),
        subject: info.subject.clone(),
        issuer: info.issuer.clone(),
        not_before: info.not_before.clone(),
        not_after: info.not_after.clone(),
        sans: info.sans.iter().map(ToString::to_string).collect(),
        trusted: info.trusted,
        key_type: info.key_type.to_string(),
        serial: info.serial.clone(),
        sha256_fingerprint: info.sha256_fingerprint.clone(),
        chain_length: checked.chain.len(),
    }
}

fn unix_seconds(rfc: &str) -> Result<i64, VaultError> {
    OffsetDateTime::parse(rfc, &time::format_description::well_known::Rfc3339)
        .map(OffsetDateTime::unix_timestamp)
        .map_err(|_| VaultError::Internal("certificate validity is not RFC 3339".into()))
}

fn days_left(not_after: i64, now_ms: i64) -> i64 {
    (not_after * 1000 - now_ms).div_euclid(86_400_000)
}

/// The SANs of a stored certificate, parsed back.
fn stored_sans(info: &StoredInfo) -> Vec<SubjectAltName> {
    info.sans
        .iter()
        .map(|s| match s.parse::<std::net::IpAddr>() {
            Ok(ip) => SubjectAltName::Ip(ip),
            Err(_) => SubjectAltName::Dns(s.clone()),
        })
        .collect()
}

fn not_covered(info: &StoredInfo, domain: &DomainName) -> VaultError {
    cert_err(CertError::DomainNotCovered {
        cn: info
            .common_names
            .first()
            .cloned()
            .unwrap_or_else(|| info.subject.clone()),
        domain: domain.to_string(),
        sans: info.sans.clone(),
    })
}

fn parse_info(row: &TlsCertRow) -> Result<StoredInfo, VaultError> {
    serde_json::from_str(&row.info_json).map_err(|_| {
        VaultError::Internal(format!("certificate {:?}: details unreadable", row.name))
    })
}

/// A fresh value for [`TLS_GENERATION_KEY`].
fn new_generation() -> Result<String, VaultError> {
    let random: [u8; 8] = tokengate_crypto::random::bytes()?;
    Ok(format!("{}-{}", now_ms(), HEXLOWER.encode(&random)))
}

/// The trust roots `Trusted` is judged against: the PEM bundle at `path`,
/// else `$TOKENGATE_TRUST_ROOTS`, else the system bundle. A missing or
/// unreadable bundle means nothing is trusted (`Trusted: false`), never an
/// error: trust is informational.
pub fn load_trust_roots(path: Option<&Path>) -> TrustRoots {
    let from_env = std::env::var_os("TOKENGATE_TRUST_ROOTS").map(std::path::PathBuf::from);
    let path = path
        .map(Path::to_path_buf)
        .or(from_env)
        .unwrap_or_else(|| SYSTEM_TRUST_ROOTS.into());
    match std::fs::read(&path) {
        Ok(bytes) => TrustRoots::from_pem(&bytes).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "trust roots unreadable; nothing is trusted");
            TrustRoots::new()
        }),
        Err(_) => TrustRoots::new(),
    }
}

impl Vault {
    fn tls_event(
        &self,
        action: Action,
        actor: &CertActor,
        subject: Option<&str>,
        detail: String,
    ) -> AuditEvent {
        let mut ev = event(
            action,
            Outcome::Success,
            &actor.id,
            Some(&self.tenant),
            &actor.meta,
        );
        ev.subject = subject.and_then(Ident::new);
        ev.detail = Some(SafeText::new(&detail));
        ev
    }

    /// Seal `key` for certificate `name` whose leaf is `leaf_der`.
    fn seal_key(
        &self,
        name: &str,
        leaf_der: &[u8],
        key: &PrivateKey,
    ) -> Result<Envelope, VaultError> {
        let leaf = sha256(leaf_der);
        let der = key.secret_der();
        Ok(seal_private_key(
            &self.ring(),
            PrivateKeyAad {
                name,
                leaf_sha256: &leaf,
            },
            der.secret_der(),
        )?)
    }

    /// Decrypt the stored key of `row`. Fails when the row was tampered with
    /// (moved key, replaced certificate) or the key ring lacks its KEK.
    fn open_key(
        &self,
        row: &TlsCertRow,
    ) -> Result<(Vec<rustls::pki_types::CertificateDer<'static>>, PrivateKey), VaultError> {
        let corrupt =
            |what: &str| VaultError::Internal(format!("certificate {:?}: {what}", row.name));
        let chain =
            chain_from_pem(&row.chain_pem).map_err(|_| corrupt("stored chain unreadable"))?;
        let leaf = chain.first().ok_or_else(|| corrupt("stored chain empty"))?;
        let leaf_hash = sha256(leaf.as_ref());
        let sealed = Envelope {
            kek_version: row.kek_version,
            wrapped_dek: row.wrapped_dek.clone(),
            ciphertext: row.key_ciphertext.clone(),
        };
        let der = open_private_key(
            &self.ring(),
            PrivateKeyAad {
                name: &row.name,
                leaf_sha256: &leaf_hash,
            },
            &sealed,
        )
        .map_err(|_| corrupt("private key does not decrypt (tampered row or missing key)"))?;
        let format =
            KeyFormat::from_name(&row.key_format).ok_or_else(|| corrupt("unknown key format"))?;
        let key = PrivateKey::from_der(format, der.into_inner())
            .ok_or_else(|| corrupt("stored private key unusable"))?;
        Ok((chain, key))
    }

    async fn generate_cert_name(&self) -> Result<String, VaultError> {
        for _ in 0..32 {
            let random: [u8; 8] = tokengate_crypto::random::bytes()?;
            let name = memorable_name(u64::from_le_bytes(random));
            if self.store.tls_certificate(&name).await?.is_none() {
                return Ok(name);
            }
        }
        Err(VaultError::Internal(
            "could not find a free certificate name".into(),
        ))
    }

    async fn domains_of(&self, cert: &str) -> Result<Vec<String>, VaultError> {
        Ok(self
            .store
            .tls_domains()
            .await?
            .into_iter()
            .filter(|d| d.cert_name.as_deref() == Some(cert))
            .map(|d| d.domain)
            .collect())
    }

    fn view(&self, row: &TlsCertRow, domains: Vec<String>) -> Result<CertificateView, VaultError> {
        let info = parse_info(row)?;
        Ok(CertificateView {
            name: row.name.clone(),
            source: row.source.clone(),
            common_names: info.common_names,
            subject: info.subject,
            issuer: info.issuer,
            starts_at: info.not_before,
            expires_at: info.not_after,
            days_to_expiry: days_left(row.not_after, now_ms()),
            sans: info.sans,
            trusted: info.trusted,
            key_type: info.key_type,
            serial: info.serial,
            sha256_fingerprint: info.sha256_fingerprint,
            chain_length: info.chain_length,
            domains,
            created_at: rfc3339(row.created_at),
            updated_at: rfc3339(row.updated_at),
        })
    }

    async fn commit_tls(
        &self,
        ops: Vec<TlsOp>,
        events: Vec<AuditEvent>,
    ) -> Result<Result<Vec<OpOutput>, JobError>, VaultError> {
        let mut ops: Vec<Op> = ops.into_iter().map(Op::Tls).collect();
        ops.push(Op::SetMeta {
            key: TLS_GENERATION_KEY.to_owned(),
            value: new_generation()?,
        });
        Ok(self
            .committer
            .submit(Job {
                ops,
                events,
                ..Job::default()
            })
            .await?)
    }

    /// Check, seal and store a certificate, and map `domains` to it.
    ///
    /// A domain that exists without a certificate gets this one; a domain
    /// already served by another certificate is refused (`domain_taken`).
    pub async fn add_certificate(
        &self,
        new: NewCertificate<'_>,
        roots: &TrustRoots,
        actor: &CertActor,
    ) -> Result<CertificateView, VaultError> {
        if let Some(name) = new.name {
            valid_name(name)?;
        }
        let mut domains = Vec::new();
        for d in new.domains {
            let d = parse_domain(d)?;
            if !domains.contains(&d) {
                domains.push(d);
            }
        }
        let checked = check_certificate(
            new.bundle_pem,
            new.key_pem,
            &CheckOptions::new(OffsetDateTime::now_utc(), roots),
        )
        .map_err(cert_err)?;
        let info = stored_info(&checked);
        let sans = stored_sans(&info);
        for d in &domains {
            if !covers_domain(&sans, d) {
                return Err(not_covered(&info, d));
            }
        }
        let name = match new.name {
            Some(n) => {
                if self.store.tls_certificate(n).await?.is_some() {
                    return Err(VaultError::invalid(
                        "cert_name_taken",
                        format!(
                            "a certificate named {n:?} exists; choose another --name, or replace it with `tokengate certs update --name {n}`"
                        ),
                    ));
                }
                n.to_owned()
            }
            None => self.generate_cert_name().await?,
        };
        let now = now_ms();
        let mut ops = Vec::new();
        let mut mapped = Vec::new();
        for d in &domains {
            match self.store.tls_domain(d.as_str()).await? {
                Some(row) => match row.cert_name {
                    Some(other) => {
                        return Err(VaultError::invalid(
                            "domain_taken",
                            format!(
                                "{d} is served by certificate {other:?}; move it with `tokengate domains update {d} --cert NAME` after adding"
                            ),
                        ));
                    }
                    None => ops.push(TlsOp::UpdateDomain {
                        domain: d.to_string(),
                        cert_name: Some(name.clone()),
                        now,
                    }),
                },
                None => ops.push(TlsOp::InsertDomain(TlsDomainRow {
                    domain: d.to_string(),
                    cert_name: Some(name.clone()),
                    created_at: now,
                    updated_at: now,
                })),
            }
            mapped.push(d.to_string());
        }
        let leaf = checked
            .chain
            .first()
            .ok_or_else(|| VaultError::Internal("checked chain is empty".into()))?;
        let sealed = self.seal_key(&name, leaf.as_ref(), &checked.key)?;
        let row = TlsCertRow {
            name: name.clone(),
            source: new.source.as_str().to_owned(),
            chain_pem: chain_to_pem(&checked.chain),
            info_json: serde_json::to_string(&info)
                .map_err(|e| VaultError::Internal(e.to_string()))?,
            not_after: unix_seconds(&info.not_after)?,
            key_format: checked.key.format().as_str().to_owned(),
            kek_version: sealed.kek_version,
            wrapped_dek: sealed.wrapped_dek,
            key_ciphertext: sealed.ciphertext,
            created_at: now,
            updated_at: now,
        };
        ops.insert(0, TlsOp::InsertCert(row.clone()));
        let ev = self.tls_event(
            Action::CertAdd,
            actor,
            Some(&name),
            format!(
                "sha256={} expires={} trusted={} domains={}",
                info.sha256_fingerprint,
                info.not_after,
                info.trusted,
                mapped.join(",")
            ),
        );
        let n_ops = ops.len();
        match self.commit_tls(ops, vec![ev]).await? {
            Ok(out) if out.iter().take(n_ops).all(|o| o.affected() == 1) => {}
            Ok(_) => {
                return Err(VaultError::invalid(
                    "conflict",
                    "the certificate store changed while adding; nothing was added, try again",
                ));
            }
            Err(JobError::Conflict) => {
                return Err(VaultError::invalid(
                    "conflict",
                    format!(
                        "a certificate named {name:?} or one of the domains was added at the same time; nothing was added, try again"
                    ),
                ));
            }
            Err(JobError::Database(e)) => return Err(VaultError::Internal(e)),
        }
        self.view(&row, mapped)
    }

    /// Replace the certificate `name` (renewal). With `key_pem` the key is
    /// replaced too; without, the stored key must match the new certificate.
    /// Every domain mapped to it must still be covered.
    pub async fn update_certificate(
        &self,
        name: &str,
        bundle_pem: &[u8],
        key_pem: Option<&[u8]>,
        roots: &TrustRoots,
        actor: &CertActor,
    ) -> Result<CertificateView, VaultError> {
        let old = self
            .store
            .tls_certificate(name)
            .await?
            .ok_or_else(|| cert_not_found(name))?;
        let old_info = parse_info(&old)?;
        let options = CheckOptions::new(OffsetDateTime::now_utc(), roots);
        let checked = match key_pem {
            Some(pem) => check_certificate(bundle_pem, pem, &options),
            None => {
                let (_, key) = self.open_key(&old)?;
                check_certificate_with_key(bundle_pem, key, &options)
            }
        }
        .map_err(cert_err)?;
        let info = stored_info(&checked);
        let sans = stored_sans(&info);
        let domains = self.domains_of(name).await?;
        for d in &domains {
            let parsed = parse_domain(d)?;
            if !covers_domain(&sans, &parsed) {
                return Err(not_covered(&info, &parsed));
            }
        }
        let leaf = checked
            .chain
            .first()
            .ok_or_else(|| VaultError::Internal("checked chain is empty".into()))?;
        let sealed = self.seal_key(name, leaf.as_ref(), &checked.key)?;
        let now = now_ms();
        let row = TlsCertRow {
            name: name.to_owned(),
            // An ACME renewal stays `acme`; anything an operator puts in
            // place is `manual`.
            source: if actor.id.as_str() == "acme" {
                CertSource::Acme
            } else {
                CertSource::Manual
            }
            .as_str()
            .to_owned(),
            chain_pem: chain_to_pem(&checked.chain),
            info_json: serde_json::to_string(&info)
                .map_err(|e| VaultError::Internal(e.to_string()))?,
            not_after: unix_seconds(&info.not_after)?,
            key_format: checked.key.format().as_str().to_owned(),
            kek_version: sealed.kek_version,
            wrapped_dek: sealed.wrapped_dek,
            key_ciphertext: sealed.ciphertext,
            created_at: old.created_at,
            updated_at: now,
        };
        let ev = self.tls_event(
            Action::CertUpdate,
            actor,
            Some(name),
            format!(
                "old_sha256={} new_sha256={} expires={} key={}",
                old_info.sha256_fingerprint,
                info.sha256_fingerprint,
                info.not_after,
                if key_pem.is_some() {
                    "replaced"
                } else {
                    "kept"
                }
            ),
        );
        match self
            .commit_tls(vec![TlsOp::UpdateCert(row.clone())], vec![ev])
            .await?
        {
            Ok(out) if out.first().map(OpOutput::affected) == Some(1) => {}
            Ok(_) => return Err(cert_not_found(name)),
            Err(JobError::Conflict) => {
                return Err(VaultError::invalid(
                    "conflict",
                    "the certificate store changed at the same time; try again",
                ));
            }
            Err(JobError::Database(e)) => return Err(VaultError::Internal(e)),
        }
        self.view(&row, domains)
    }

    /// Remove the certificate `name` and its sealed key. Its domains stay,
    /// without a certificate.
    pub async fn remove_certificate(
        &self,
        name: &str,
        actor: &CertActor,
    ) -> Result<RemovedCertificate, VaultError> {
        let row = self
            .store
            .tls_certificate(name)
            .await?
            .ok_or_else(|| cert_not_found(name))?;
        let info = parse_info(&row)?;
        let domains = self.domains_of(name).await?;
        let ev = self.tls_event(
            Action::CertRemove,
            actor,
            Some(name),
            format!(
                "sha256={} domains_without_certificate={}",
                info.sha256_fingerprint,
                domains.join(",")
            ),
        );
        let op = TlsOp::DeleteCert {
            name: name.to_owned(),
            now: now_ms(),
        };
        match self.commit_tls(vec![op], vec![ev]).await? {
            Ok(out) if out.first().map(OpOutput::affected) == Some(1) => {}
            Ok(_) => return Err(cert_not_found(name)),
            Err(JobError::Conflict) => {
                return Err(VaultError::invalid(
                    "conflict",
                    "the certificate store changed at the same time; try again",
                ));
            }
            Err(JobError::Database(e)) => return Err(VaultError::Internal(e)),
        }
        Ok(RemovedCertificate {
            name: name.to_owned(),
            domains_without_certificate: domains,
        })
    }

    /// Every certificate with its domains, by name.
    pub async fn certificates(&self) -> Result<Vec<CertificateView>, VaultError> {
        let domains = self.store.tls_domains().await?;
        self.store
            .tls_certificates()
            .await?
            .iter()
            .map(|row| {
                let mapped = domains
                    .iter()
                    .filter(|d| d.cert_name.as_deref() == Some(row.name.as_str()))
                    .map(|d| d.domain.clone())
                    .collect();
                self.view(row, mapped)
            })
            .collect()
    }

    /// One certificate with its domains.
    pub async fn certificate(&self, name: &str) -> Result<CertificateView, VaultError> {
        let row = self
            .store
            .tls_certificate(name)
            .await?
            .ok_or_else(|| cert_not_found(name))?;
        let domains = self.domains_of(name).await?;
        self.view(&row, domains)
    }

    /// Every domain with its certificate, by name.
    pub async fn domains(&self) -> Result<Vec<DomainView>, VaultError> {
        Ok(self
            .store
            .tls_domains()
            .await?
            .into_iter()
            .map(|d| DomainView {
                domain: d.domain,
                certificate: d.cert_name,
                created_at: rfc3339(d.created_at),
                updated_at: rfc3339(d.updated_at),
            })
            .collect())
    }

    /// The stored certificate `cert`, checked to cover `domain`.
    async fn covering_cert(&self, cert: &str, domain: &DomainName) -> Result<(), VaultError> {
        let row = self
            .store
            .tls_certificate(cert)
            .await?
            .ok_or_else(|| cert_not_found(cert))?;
        let info = parse_info(&row)?;
        if covers_domain(&stored_sans(&info), domain) {
            Ok(())
        } else {
            Err(not_covered(&info, domain))
        }
    }

    /// Add `domain`, served by `cert` when given.
    pub async fn add_domain(
        &self,
        domain: &str,
        cert: Option<&str>,
        actor: &CertActor,
    ) -> Result<DomainView, VaultError> {
        let d = parse_domain(domain)?;
        if let Some(existing) = self.store.tls_domain(d.as_str()).await? {
            let hint = match existing.cert_name {
                Some(c) => format!(
                    "it is served by certificate {c:?}; use `tokengate domains update {d} --cert NAME` to change that"
                ),
                None => format!(
                    "use `tokengate domains update {d} --cert NAME` to give it a certificate"
                ),
            };
            return Err(VaultError::invalid(
                "domain_exists",
                format!("{d} is already a domain: {hint}"),
            ));
        }
        if let Some(c) = cert {
            self.covering_cert(c, &d).await?;
        }
        let now = now_ms();
        let ev = self.tls_event(
            Action::DomainAdd,
            actor,
            cert,
            format!("domain={d} certificate={}", cert.unwrap_or("none")),
        );
        let op = TlsOp::InsertDomain(TlsDomainRow {
            domain: d.to_string(),
            cert_name: cert.map(str::to_owned),
            created_at: now,
            updated_at: now,
        });
        match self.commit_tls(vec![op], vec![ev]).await? {
            Ok(out) if out.first().map(OpOutput::affected) == Some(1) => {}
            Ok(_) => return Err(cert_not_found(cert.unwrap_or_default())),
            Err(JobError::Conflict) => {
                return Err(VaultError::invalid(
                    "domain_exists",
                    format!("{d} was added at the same time"),
                ));
            }
            Err(JobError::Database(e)) => return Err(VaultError::Internal(e)),
        }
        Ok(DomainView {
            domain: d.to_string(),
            certificate: cert.map(str::to_owned),
            created_at: rfc3339(now),
            updated_at: rfc3339(now),
        })
    }

    /// Serve `domain` with `cert` from now on.
    pub async fn update_domain(
        &self,
        domain: &str,
        cert: &str,
        actor: &CertActor,
    ) -> Result<DomainView, VaultError> {
        let d = parse_domain(domain)?;
        let existing = self
            .store
            .tls_domain(d.as_str())
            .await?
            .ok_or_else(|| domain_not_found(d.as_str()))?;
        self.covering_cert(cert, &d).await?;
        let now = now_ms();
        let ev = self.tls_event(
            Action::DomainUpdate,
            actor,
            Some(cert),
            format!(
                "domain={d} certificate={cert} previous={}",
                existing.cert_name.as_deref().unwrap_or("none")
            ),
        );
        let op = TlsOp::UpdateDomain {
            domain: d.to_string(),
            cert_name: Some(cert.to_owned()),
            now,
        };
        match self.commit_tls(vec![op], vec![ev]).await? {
            Ok(out) if out.first().map(OpOutput::affected) == Some(1) => {}
            Ok(_) => {
                return Err(VaultError::invalid(
                    "conflict",
                    "the domain or the certificate was removed at the same time; nothing changed",
                ));
            }
            Err(JobError::Conflict) => {
                return Err(VaultError::invalid(
                    "conflict",
                    "the certificate store changed at the same time; try again",
                ));
            }
            Err(JobError::Database(e)) => return Err(VaultError::Internal(e)),
        }
        Ok(DomainView {
            domain: d.to_string(),
            certificate: Some(cert.to_owned()),
            created_at: rfc3339(existing.created_at),
            updated_at: rfc3339(now),
        })
    }

    /// Remove `domain` (it is no longer served by any certificate of its own).
    pub async fn remove_domain(
        &self,
        domain: &str,
        actor: &CertActor,
    ) -> Result<DomainView, VaultError> {
        let d = parse_domain(domain)?;
        let existing = self
            .store
            .tls_domain(d.as_str())
            .await?
            .ok_or_else(|| domain_not_found(d.as_str()))?;
        let cert = existing.cert_name.clone();
        let ev = self.tls_event(
            Action::DomainRemove,
            actor,
            cert.as_deref(),
            format!(
                "domain={d} certificate={}",
                cert.as_deref().unwrap_or("none")
            ),
        );
        let op = TlsOp::DeleteDomain {
            domain: d.to_string(),
        };
        match self.commit_tls(vec![op], vec![ev]).await? {
            Ok(out) if out.first().map(OpOutput::affected) == Some(1) => {}
            Ok(_) => return Err(domain_not_found(d.as_str())),
            Err(JobError::Conflict) => {
                return Err(VaultError::invalid(
                    "conflict",
                    "the certificate store changed at the same time; try again",
                ));
            }
            Err(JobError::Database(e)) => return Err(VaultError::Internal(e)),
        }
        Ok(DomainView {
            domain: existing.domain,
            certificate: cert,
            created_at: rfc3339(existing.created_at),
            updated_at: rfc3339(now_ms()),
        })
    }

    /// The current value of the change counter (`None` before any change).
    pub async fn tls_generation(&self) -> Result<Option<String>, VaultError> {
        Ok(self.store.meta(TLS_GENERATION_KEY).await?)
    }

    /// Build an SNI resolver from the store: every certificate whose key
    /// decrypts, every domain mapped to one of them, and `default_cert` for
    /// unknown names (none: refuse them). Certificates that cannot be loaded
    /// are left out (fail closed) and named in `problems`.
    pub async fn tls_resolver(
        &self,
        default_cert: Option<&str>,
    ) -> Result<LoadedResolver, VaultError> {
        let mut resolver = SniResolver::new();
        let mut problems = Vec::new();
        for row in self.store.tls_certificates().await? {
            let loaded = self.open_key(&row).and_then(|(chain, key)| {
                resolver
                    .add_certificate(&row.name, chain, &key)
                    .map_err(|e| VaultError::Internal(e.to_string()))
            });
            if let Err(e) = loaded {
                let detail = match e {
                    VaultError::Internal(d) => d,
                    other => other.to_string(),
                };
                problems.push(detail);
            }
        }
        for d in self.store.tls_domains().await? {
            let Some(cert) = d.cert_name else { continue };
            let Ok(name) = DomainName::parse(&d.domain) else {
                problems.push(format!(
                    "domain {:?}: not a valid domain; skipped",
                    d.domain
                ));
                continue;
            };
            if !resolver.map_domain(&name, &cert) {
                problems.push(format!(
                    "domain {name}: certificate {cert:?} is not loaded; the domain is not served"
                ));
            }
        }
        if let Some(default) = default_cert
            && !resolver.set_default(default)
        {
            problems.push(format!(
                "default certificate {default:?} is not in the store (or not loaded): clients with unknown or no SNI are refused"
            ));
        }
        Ok(LoadedResolver { resolver, problems })
    }

    /// Certificates whose expiry is at most `within_days` away (or past),
    /// soonest first.
    pub async fn expiring_certificates(
        &self,
        within_days: i64,
    ) -> Result<Vec<CertExpiry>, VaultError> {
        let now = now_ms();
        let mut out = Vec::new();
        for row in self.store.tls_certificates().await? {
            let days = days_left(row.not_after, now);
            if days > within_days {
                continue;
            }
            let info = parse_info(&row)?;
            out.push(CertExpiry {
                name: row.name,
                sha256_fingerprint: info.sha256_fingerprint,
                expires_at: info.not_after,
                days_left: days,
            });
        }
        out.sort_by_key(|c| c.days_left);
        Ok(out)
    }

    /// Days to expiry of every certificate, by name (for the metric).
    pub async fn certificate_expiry_days(&self) -> Result<Vec<(String, i64)>, VaultError> {
        let now = now_ms();
        Ok(self
            .store
            .tls_certificates()
            .await?
            .into_iter()
            .map(|r| (r.name, days_left(r.not_after, now)))
            .collect())
    }

    /// Record (once per certificate, leaf and threshold) that `cert` is
    /// within `threshold_days` of expiry. Returns `true` when this call
    /// recorded it, `false` when it had been recorded before.
    pub async fn record_expiry_warning(
        &self,
        cert: &CertExpiry,
        threshold_days: i64,
    ) -> Result<bool, VaultError> {
        let key = format!("tls_expiry_warned/{}", cert.name);
        let value = format!("{}/{threshold_days}", cert.sha256_fingerprint);
        let previous = self.store.meta(&key).await?;
        // Already warned at this threshold or a lower one for this leaf.
        if let Some(prev) = previous
            && let Some((fp, t)) = prev.rsplit_once('/')
            && fp == cert.sha256_fingerprint
            && t.parse::<i64>().is_ok_and(|t| t <= threshold_days)
        {
            return Ok(false);
        }
        let actor = CertActor::system();
        let ev = self.tls_event(
            Action::CertExpiryWarning,
            &actor,
            Some(&cert.name),
            format!(
                "threshold_days={threshold_days} days_left={} expires={} sha256={}",
                cert.days_left, cert.expires_at, cert.sha256_fingerprint
            ),
        );
        self.committer
            .submit(Job {
                ops: vec![Op::SetMeta { key, value }],
                events: vec![ev],
                ..Job::default()
            })
            .await?
            .map_err(|e| VaultError::Internal(e.to_string()))?;
        Ok(true)
    }

    /// Data directories made before the certificate store kept the
    /// self-signed pair in `tls/cert.pem` + `tls/key.pem`. When the store has
    /// no certificate and the pair exists, it is imported (checked, sealed,
    /// audited, as `localhost`, serving `localhost`) and the clear-text key
    /// file is deleted. Returns whether anything was imported.
    pub async fn import_legacy_tls_files(&self) -> Result<bool, VaultError> {
        let dir = crate::open::DataDir(self.config.data_dir.clone());
        let (cert_path, key_path) = (dir.tls_cert(), dir.tls_key());
        if !key_path.exists() || !self.store.tls_certificates().await?.is_empty() {
            return Ok(false);
        }
        let cert = std::fs::read(&cert_path)
            .map_err(|e| VaultError::Setup(format!("{}: {e}", cert_path.display())))?;
        let key = Zeroizing::new(
            std::fs::read(&key_path)
                .map_err(|e| VaultError::Setup(format!("{}: {e}", key_path.display())))?,
        );
        let domains = [LOCALHOST_CERT.to_owned()];
        let new = NewCertificate {
            bundle_pem: &cert,
            key_pem: &key,
            name: Some(LOCALHOST_CERT),
            domains: &domains,
            source: CertSource::SelfSigned,
        };
        self.add_certificate(new, &TrustRoots::new(), &CertActor::system())
            .await?;
        std::fs::remove_file(&key_path).map_err(|e| {
            VaultError::Setup(format!(
                "imported, but cannot delete {}: {e}",
                key_path.display()
            ))
        })?;
        tracing::info!(file = %key_path.display(), "imported the legacy TLS key into the certificate store and deleted the file");
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "localhost",
            "brave-falcon-0042",
            "shop.example.com",
            "a",
            "0_x",
        ] {
            assert!(valid_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "A",
            "a b",
            "a/b",
            &"a".repeat(64),
            "4111111111111111",
        ] {
            assert!(valid_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn days() {
        let day = 86_400_000;
        assert_eq!(days_left(10 * 86_400, 0), 10);
        assert_eq!(days_left(10 * 86_400, day / 2), 9);
        assert_eq!(days_left(0, 1), -1);
    }
}
