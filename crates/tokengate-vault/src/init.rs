//! `tokengate init`: create a data directory with everything a vault needs.
//!
//! Never overwrites: a non-empty data directory, or a database that already
//! holds keys, is refused, so keys cannot be replaced by accident.

use std::collections::HashMap;
use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use data_encoding::HEXLOWER;
use serde::Serialize;
use tokengate_audit::{Action, AuditEvent, Ident, Outcome};
use tokengate_crypto::pkcs11::{Pkcs11Config, Pkcs11RootKey};
use tokengate_crypto::share_keys::ShareRecipient;
use tokengate_crypto::{FileRootKey, KeyRing, RootKeyProvider};
use tokengate_store::{Job, KeyRow, Op, Store};
use tokengate_tls::TrustRoots;
use zeroize::Zeroizing;

use crate::access::{RequestMeta, Role};
use crate::certs::{CertActor, CertSource, LOCALHOST_CERT, NewCertificate};
use crate::clock::now_ms;
use crate::error::VaultError;
use crate::open::{DataDir, RingSigner, Vault, VaultConfig, is_fresh};

#[derive(Clone, Debug, Default)]
pub struct InitOptions {
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    /// `(custodians, threshold)`: split the root key into custodian shares
    /// instead of writing it to `root.key`.
    pub custodians: Option<(u8, u8)>,
    /// One public key per custodian, in share order (with `custodians`):
    /// share *i* is printed only encrypted to key *i* (age, armored).
    /// Empty: shares are printed in clear.
    pub custodian_keys: Vec<ShareRecipient>,
    /// Keep the root key in an HSM (the pkcs11 provider): the key labelled
    /// `key_label` in the token is used, or generated inside it. The PIN
    /// comes from `TOKENGATE_PKCS11_PIN`.
    pub pkcs11: Option<Pkcs11Config>,
}

/// What `init` created. `admin_api_key` is shown this once.
#[derive(Clone, Debug, Serialize)]
pub struct InitOutput {
    pub admin_api_key: String,
    pub admin_api_key_id: String,
    pub data_dir: String,
    pub database: String,
    /// `file` (the dev default) or `custodians`.
    pub root_key_provider: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_key_file: Option<String>,
    /// The custodian shares, each shown this once (custodians provider):
    /// plain share text, or with `share_encryption` each an armored age
    /// file that only its custodian can decrypt.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<String>,
    /// `age` when every share is encrypted to its custodian's public key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub share_encryption: Option<String>,
    /// The public key each share is encrypted to, in the same order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub share_recipients: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u8>,
    /// The HSM key (pkcs11 provider): module, token label, key label and,
    /// when chosen by slot, the slot ID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pkcs11: Option<Pkcs11Config>,
    /// Name of the self-signed certificate in the certificate store.
    pub tls_certificate: String,
    pub audit_public_key: String,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> VaultError {
    VaultError::invalid("init_failed", format!("{what} {}: {e}", path.display()))
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), VaultError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| io_err("cannot create", path, e))?;
    f.write_all(bytes)
        .map_err(|e| io_err("cannot write", path, e))?;
    f.sync_all().map_err(|e| io_err("cannot sync", path, e))
}

/// Create a self-signed certificate for localhost, 127.0.0.1 and ::1.
/// Returns (cert PEM, key PEM); the caller stores it sealed.
fn self_signed() -> Result<(String, zeroize::Zeroizing<String>), VaultError> {
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| VaultError::Internal(format!("key generation: {e}")))?;
    let mut params =
        rcgen::CertificateParams::new(names).map_err(|e| VaultError::Internal(e.to_string()))?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "tokengate localhost (self-signed)",
    );
    let cert = params
        .self_signed(&key)
        .map_err(|e| VaultError::Internal(e.to_string()))?;
    Ok((cert.pem(), zeroize::Zeroizing::new(key.serialize_pem())))
}

/// Set up `opts.data_dir` (and the database) from nothing.
pub async fn init(opts: &InitOptions) -> Result<InitOutput, VaultError> {
    let dir = DataDir(opts.data_dir.clone());
    if !is_fresh(&dir.0) {
        return Err(VaultError::invalid(
            "data_dir_exists",
            format!(
                "{} already exists and is not empty; refusing to touch existing keys",
                dir.0.display()
            ),
        ));
    }
    if opts.custodians.is_some() && opts.pkcs11.is_some() {
        return Err(VaultError::invalid(
            "invalid_root_key_provider",
            "choose one root-key provider: custodians or pkcs11, not both",
        ));
    }
    if !opts.custodian_keys.is_empty() {
        match opts.custodians {
            None => {
                return Err(VaultError::invalid(
                    "invalid_custodian_keys",
                    "custodian keys are only used with --custodians",
                ));
            }
            Some((n, _)) if usize::from(n) != opts.custodian_keys.len() => {
                return Err(VaultError::invalid(
                    "invalid_custodian_keys",
                    format!(
                        "{} custodian keys for {n} custodians: give exactly one per custodian, in order",
                        opts.custodian_keys.len()
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    // The HSM first: a missing PIN or token is reported before anything
    // is written.
    let hsm_root = match &opts.pkcs11 {
        Some(cfg) => Some(open_hsm_root(cfg)?),
        None => None,
    };
    // As resolved in the token (a slot chosen alone gets its token label).
    let hsm_config = hsm_root.as_ref().map(|r| r.config().clone());
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir.0)
        .map_err(|e| io_err("cannot create", &dir.0, e))?;
    let (root, shares): (Arc<dyn RootKeyProvider>, Vec<zeroize::Zeroizing<String>>) =
        match (opts.custodians, hsm_root) {
            (None, Some(root)) => {
                let text = serde_json::to_vec_pretty(root.config())
                    .map_err(|e| VaultError::Internal(e.to_string()))?;
                write_file(&dir.pkcs11(), &text, 0o600)?;
                (Arc::new(root), Vec::new())
            }
            (None, None) => (
                Arc::new(
                    FileRootKey::create(&dir.root_key())
                        .map_err(|e| VaultError::Internal(e.to_string()))?,
                ),
                Vec::new(),
            ),
            (Some((n, k)), _) => {
                let mut split = tokengate_crypto::custodians::split_new_root(n, k)
                    .map_err(|e| VaultError::invalid("invalid_custodians", e.to_string()))?;
                if !opts.custodian_keys.is_empty() {
                    // Encrypted before anything about the split is
                    // written; the clear shares are dropped (zeroized)
                    // here and never leave this function.
                    let encrypted = opts
                        .custodian_keys
                        .iter()
                        .zip(split.shares.iter())
                        .map(|(key, share)| key.encrypt_share(share).map(Zeroizing::new))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| VaultError::Internal(e.to_string()))?;
                    split.shares = encrypted;
                }
                let setup = serde_json::to_vec_pretty(&split.setup)
                    .map_err(|e| VaultError::Internal(e.to_string()))?;
                write_file(&dir.custodians(), &setup, 0o600)?;
                (Arc::new(split.root), split.shares)
            }
        };
    if opts.database_url.is_none() {
        // Create the database file owner-only; SQLite gives its -wal and
        // -shm files the same permissions.
        write_file(&dir.database(), b"", 0o600)?;
    }

    let url = dir.store_url(opts.database_url.as_deref());
    let store = Store::connect(&url)
        .await
        .map_err(|e| VaultError::invalid("database_unavailable", e.to_string()))?;
    if !store.keys().await?.is_empty() {
        return Err(VaultError::invalid(
            "database_initialised",
            "the database already holds a key ring; refusing to replace it",
        ));
    }
    let now = now_ms();
    let wrapped = KeyRing::generate_initial(root.as_ref(), now / 1000)?;
    let ring = Arc::new(tokengate_crypto::SharedRing::new(KeyRing::load(
        root.as_ref(),
        &wrapped,
        &HashMap::new(),
    )?));
    let mut job = Job::default();
    for w in &wrapped {
        job.ops.push(Op::InsertKey(KeyRow {
            purpose: w.purpose.as_str().to_owned(),
            version: w.version,
            state: w.state.as_str().to_owned(),
            created_at: w.created_at,
            wrapped: w.wrapped.clone(),
        }));
    }
    job.ops.push(Op::SetMeta {
        key: "default_tenant".into(),
        value: "default".into(),
    });
    let mut ev = AuditEvent::new(
        now,
        Action::Init,
        Outcome::Success,
        Ident::from_static("system"),
    );
    ev.tenant = Ident::new("default");
    job.events.push(ev);
    store
        .commit(vec![job], Arc::new(RingSigner(ring.clone())))
        .await?
        .into_iter()
        .next()
        .transpose()
        .map_err(|e| VaultError::Internal(e.to_string()))?;
    store.close().await;

    let mut config = VaultConfig::new(&dir.0);
    config.database_url = opts.database_url.clone();
    let vault = Vault::open_with_root(config, root.clone()).await?;
    let admin = vault
        .insert_api_key(
            None,
            "default",
            "admin",
            &[Role::Admin],
            &RequestMeta::default(),
        )
        .await?;
    let audit_public_key = HEXLOWER.encode(&vault.audit_public_key()?);

    // The self-signed certificate goes into the certificate store like any
    // other: its key sealed under the key ring, never written to a file.
    let (cert, key) = self_signed()?;
    let domains = [LOCALHOST_CERT.to_owned()];
    vault
        .add_certificate(
            NewCertificate {
                bundle_pem: cert.as_bytes(),
                key_pem: key.as_bytes(),
                name: Some(LOCALHOST_CERT),
                domains: &domains,
                source: CertSource::SelfSigned,
            },
            &TrustRoots::new(),
            &CertActor::system(),
        )
        .await?;
    // The CA the outbound forward proxy signs processor certificates with.
    vault.outbound_ca(true).await?;
    vault.store().close().await;

    Ok(InitOutput {
        admin_api_key: admin.secret.to_string(),
        admin_api_key_id: admin.info.id,
        data_dir: dir.0.display().to_string(),
        database: if opts.database_url.is_some() {
            "postgresql".into()
        } else {
            dir.database().display().to_string()
        },
        root_key_provider: root.kind().to_owned(),
        root_key_file: (opts.custodians.is_none() && opts.pkcs11.is_none())
            .then(|| dir.root_key().display().to_string()),
        threshold: opts.custodians.map(|(_, k)| k),
        pkcs11: hsm_config,
        shares: shares.iter().map(|s| s.to_string()).collect(),
        share_encryption: (!opts.custodian_keys.is_empty())
            .then(|| tokengate_crypto::share_keys::SHARE_ENCRYPTION.to_owned()),
        share_recipients: opts.custodian_keys.iter().map(|k| k.to_string()).collect(),
        tls_certificate: LOCALHOST_CERT.to_owned(),
        audit_public_key,
    })
}

/// The root key in the HSM named by `cfg` (generated inside the token when
/// it has no key with that label), logged in with the PIN from the
/// environment.
fn open_hsm_root(cfg: &Pkcs11Config) -> Result<Pkcs11RootKey, VaultError> {
    let pin = tokengate_crypto::pkcs11::pin_from_env()
        .map_err(|e| VaultError::invalid("pkcs11_pin_missing", e.to_string()))?;
    let (root, _generated) = Pkcs11RootKey::open_or_generate(cfg, &pin)
        .map_err(|e| VaultError::invalid("pkcs11_unavailable", e.to_string()))?;
    Ok(root)
}
