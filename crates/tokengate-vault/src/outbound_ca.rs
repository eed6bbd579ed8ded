//! The outbound CA: the certificate authority the intercepting forward proxy
//! signs per-processor certificates with. The app trusts it (`tokengate ca
//! export`) so that its TLS calls to processors can be opened, the tokens
//! in them replaced by card numbers, and sent on over a new TLS connection
//! to the real processor.
//!
//! The CA's private key is sealed like TLS keys (under the `tls_key` KEK,
//! bound to the name `outbound-ca` and the CA certificate's hash) and kept in
//! the `meta` table; it is never exported. The CA is made by `init` (and by
//! `ca export` or `serve` for data directories made before it existed).

use tokengate_audit::{Action, Ident, Outcome, SafeText};
use tokengate_crypto::{Envelope, PrivateKeyAad, open_private_key, seal_private_key};
use tokengate_store::{Job, Op};
use zeroize::Zeroizing;

use crate::access::{RequestMeta, event};
use crate::certs::sha256;
use crate::error::VaultError;
use crate::open::Vault;

const CERT_KEY: &str = "outbound_ca_cert";
const SEALED_KEY: &str = "outbound_ca_key";
const NAME: &str = "outbound-ca";

/// The CA, unsealed in memory.
pub struct OutboundCa {
    /// PEM of the CA certificate (what the app trusts).
    pub cert_pem: String,
    key: rcgen::KeyPair,
}

impl std::fmt::Debug for OutboundCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundCa")
            .field("cert_pem", &self.cert_pem)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// The CA's parameters. The issuer of every leaf is rebuilt from these, so
/// they never change.
fn ca_params() -> Result<rcgen::CertificateParams, VaultError> {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| VaultError::Internal(e.to_string()))?;
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "tokengate outbound CA");
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, "tokengate");
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    Ok(p)
}

fn der_of(pem: &str) -> Result<Vec<u8>, VaultError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.as_ref().to_vec())
        .map_err(|_| VaultError::Internal("stored outbound CA certificate unreadable".into()))
}

/// A certificate issued by the outbound CA.
pub struct IssuedLeaf {
    /// DER certificates: the leaf, then the CA.
    pub chain: Vec<Vec<u8>>,
    /// The leaf's PKCS#8 private key (DER).
    pub key_der: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for IssuedLeaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedLeaf")
            .field("chain_len", &self.chain.len())
            .field("key_der", &"<redacted>")
            .finish()
    }
}

impl OutboundCa {
    /// A leaf certificate for `host`, valid a day, signed by this CA.
    pub fn issue(&self, host: &str) -> Result<IssuedLeaf, VaultError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| VaultError::Internal(format!("key generation: {e}")))?;
        let mut params = rcgen::CertificateParams::new(vec![host.to_owned()])
            .map_err(|e| VaultError::invalid("invalid_host", format!("not a host name: {e}")))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, host);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(1);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let issuer = rcgen::Issuer::new(ca_params()?, &self.key);
        let leaf = params
            .signed_by(&key, &issuer)
            .map_err(|e| VaultError::Internal(e.to_string()))?;
        let ca_der = der_of(&self.cert_pem)?;
        Ok(IssuedLeaf {
            chain: vec![leaf.der().to_vec(), ca_der],
            key_der: Zeroizing::new(key.serialize_der()),
        })
    }
}

impl Vault {
    /// The outbound CA; made (and audited) when missing and `create` is set.
    pub async fn outbound_ca(&self, create: bool) -> Result<Option<OutboundCa>, VaultError> {
        let cert = self.store.meta(CERT_KEY).await?;
        let sealed = self.store.meta(SEALED_KEY).await?;
        if let (Some(cert_pem), Some(sealed)) = (cert, sealed) {
            let env: SealedJson = serde_json::from_str(&sealed)
                .map_err(|_| VaultError::Internal("stored outbound CA key unreadable".into()))?;
            let env = env.into_envelope()?;
            let leaf = sha256(&der_of(&cert_pem)?);
            let der = open_private_key(
                &self.ring(),
                PrivateKeyAad {
                    name: NAME,
                    leaf_sha256: &leaf,
                },
                &env,
            )?;
            let key = rcgen::KeyPair::try_from(der.expose())
                .map_err(|_| VaultError::Internal("stored outbound CA key unreadable".into()))?;
            return Ok(Some(OutboundCa { cert_pem, key }));
        }
        if !create {
            return Ok(None);
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| VaultError::Internal(format!("key generation: {e}")))?;
        let mut params = ca_params()?;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        let cert = params
            .self_signed(&key)
            .map_err(|e| VaultError::Internal(e.to_string()))?;
        let leaf = sha256(cert.der());
        let der = Zeroizing::new(key.serialize_der());
        let env = seal_private_key(
            &self.ring(),
            PrivateKeyAad {
                name: NAME,
                leaf_sha256: &leaf,
            },
            &der,
        )?;
        let sealed = serde_json::to_string(&SealedJson::from(&env))
            .map_err(|e| VaultError::Internal(e.to_string()))?;
        let mut ev = event(
            Action::KeyCreate,
            Outcome::Success,
            &Ident::from_static("system"),
            Some(&self.tenant),
            &RequestMeta::default(),
        );
        ev.detail = Some(SafeText::new("key=outbound_ca"));
        let job = Job {
            ops: vec![
                Op::SetMeta {
                    key: CERT_KEY.to_owned(),
                    value: cert.pem(),
                },
                Op::SetMeta {
                    key: SEALED_KEY.to_owned(),
                    value: sealed,
                },
            ],
            events: vec![ev],
            ..Job::default()
        };
        self.committer
            .submit(job)
            .await?
            .map_err(|e| VaultError::Internal(format!("outbound CA: {e:?}")))?;
        Ok(Some(OutboundCa {
            cert_pem: cert.pem(),
            key,
        }))
    }
}

/// The sealed key as stored (base64 fields).
#[derive(serde::Serialize, serde::Deserialize)]
struct SealedJson {
    v: u32,
    dek: String,
    ct: String,
}

impl From<&Envelope> for SealedJson {
    fn from(e: &Envelope) -> Self {
        SealedJson {
            v: e.kek_version,
            dek: data_encoding::BASE64.encode(&e.wrapped_dek),
            ct: data_encoding::BASE64.encode(&e.ciphertext),
        }
    }
}

impl SealedJson {
    fn into_envelope(self) -> Result<Envelope, VaultError> {
        let bad = |_| VaultError::Internal("stored outbound CA key unreadable".into());
        Ok(Envelope {
            kek_version: self.v,
            wrapped_dek: data_encoding::BASE64
                .decode(self.dek.as_bytes())
                .map_err(bad)?,
            ciphertext: data_encoding::BASE64
                .decode(self.ct.as_bytes())
                .map_err(bad)?,
        })
    }
}
