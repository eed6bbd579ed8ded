//! Opening a vault: data directory, root key, store, key ring, committer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokengate_audit::SignedHead;
use tokengate_audit::chain::ChainHash;
use tokengate_audit::{Action, AuditEvent, Ident, Outcome, SafeText};
use tokengate_crypto::{
    FileRootKey, KeyPurpose, KeyRing, KeyState, RootKeyProvider, SharedRing, WrappedKey,
};
use tokengate_store::{GroupCommitter, HeadSigner, Job, KeyRow, Op, Store};

use crate::access::CachedKey;
use crate::error::VaultError;

/// Where a vault keeps its files.
#[derive(Clone, Debug)]
pub struct DataDir(pub PathBuf);

impl DataDir {
    pub fn database(&self) -> PathBuf {
        self.0.join("tokengate.db")
    }
    pub fn root_key(&self) -> PathBuf {
        FileRootKey::path_in(&self.0)
    }
    /// With the custodians root-key provider: share count, threshold and
    /// check values (never a share).
    pub fn custodians(&self) -> PathBuf {
        self.0.join("custodians.json")
    }
    /// With the pkcs11 root-key provider: module path, token label and key
    /// label (never the PIN, never key material).
    pub fn pkcs11(&self) -> PathBuf {
        self.0.join("pkcs11.json")
    }
    /// Legacy (before the certificate store): the self-signed certificate
    /// file. Imported into the store on first start, see
    /// `Vault::import_legacy_tls_files`.
    pub fn tls_cert(&self) -> PathBuf {
        self.0.join("tls").join("cert.pem")
    }
    /// Legacy: the clear-text key file; deleted once imported.
    pub fn tls_key(&self) -> PathBuf {
        self.0.join("tls").join("key.pem")
    }
    /// The store URL: `database_url` when given, else the SQLite file here.
    pub fn store_url(&self, database_url: Option<&str>) -> String {
        match database_url {
            Some(u) => u.to_owned(),
            None => format!("sqlite://{}?mode=rwc", self.database().display()),
        }
    }
}

/// Run-time settings of the vault.
#[derive(Clone, Debug)]
pub struct VaultConfig {
    pub data_dir: PathBuf,
    /// `postgres://…` to use PostgreSQL; SQLite in the data dir otherwise.
    pub database_url: Option<String>,
    /// How long a CVC is held at most (PCI DSS: not after authorization).
    pub cvc_ttl: Duration,
    /// Largest number of jobs in one group commit.
    pub max_commit_batch: usize,
    /// How long an authenticated API key is trusted before it is re-read
    /// (revocation on another node takes effect within this time).
    pub api_key_cache_ttl: Duration,
    /// Request fields stored in audit records only as keyed hashes.
    pub audit_hmac_fields: Vec<AuditHmacField>,
    /// Lockout after failed authentications.
    pub lockout: crate::lockout::LockoutPolicy,
    /// Reveals by one key within a minute that raise an alert (0: never).
    pub reveal_alert_per_minute: u32,
    /// Where custodian shares come from when the data directory's root key
    /// is split among custodians (the CLI: standard input).
    pub share_source: Option<ShareSource>,
}

/// Supplies custodian shares one at a time: called with (threshold, shares
/// accepted so far); `None` when there are no more.
#[derive(Clone)]
pub struct ShareSource(pub Arc<dyn Fn(u8, u8) -> Option<zeroize::Zeroizing<String>> + Send + Sync>);

impl std::fmt::Debug for ShareSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShareSource")
    }
}

/// A request field that can be stored keyed-hashed in audit records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditHmacField {
    ClientIp,
    UserAgent,
}

impl AuditHmacField {
    pub fn from_name(s: &str) -> Option<AuditHmacField> {
        match s {
            "client_ip" => Some(AuditHmacField::ClientIp),
            "user_agent" => Some(AuditHmacField::UserAgent),
            _ => None,
        }
    }
}

/// The keyed hash of an audit field value under the active `audit` key (the
/// same function `tokengate audit hash` prints).
pub fn audit_hmac(ring: &KeyRing, value: &str) -> Result<tokengate_audit::HmacValue, VaultError> {
    let v = ring.active_version(KeyPurpose::Audit)?;
    let mac = ring.hmac(
        KeyPurpose::Audit,
        v,
        &[b"tokengate-audit-field-v1", value.as_bytes()],
    )?;
    Ok(tokengate_audit::HmacValue::new(v, &mac))
}

fn hmac_filter(
    ring: Arc<SharedRing>,
    fields: &[AuditHmacField],
) -> Option<tokengate_store::EventFilter> {
    if fields.is_empty() {
        return None;
    }
    let (ip, ua) = (
        fields.contains(&AuditHmacField::ClientIp),
        fields.contains(&AuditHmacField::UserAgent),
    );
    Some(Arc::new(move |e: &mut tokengate_audit::AuditEvent| {
        // Without the key the value is dropped, never kept in clear.
        let ring = ring.get();
        if ip && let Some(addr) = e.client_ip.take() {
            e.client_ip_hmac = audit_hmac(&ring, &addr.to_string()).ok();
        }
        if ua && let Some(agent) = e.user_agent.take() {
            e.user_agent_hmac = audit_hmac(&ring, agent.as_str()).ok();
        }
    }))
}

impl VaultConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> VaultConfig {
        VaultConfig {
            data_dir: data_dir.into(),
            database_url: None,
            cvc_ttl: Duration::from_secs(3600),
            max_commit_batch: 256,
            api_key_cache_ttl: Duration::from_secs(1),
            audit_hmac_fields: Vec::new(),
            lockout: crate::lockout::LockoutPolicy::default(),
            reveal_alert_per_minute: 600,
            share_source: None,
        }
    }
}

/// The audit head signer backed by the key ring's Ed25519 key.
pub(crate) struct RingSigner(pub(crate) Arc<SharedRing>);

impl HeadSigner for RingSigner {
    fn sign(&self, seq: u64, hash: &ChainHash) -> Vec<u8> {
        match self.0.get().audit_signer() {
            Ok(k) => SignedHead::sign(k, seq, *hash).signature,
            // Without a key the head cannot verify; `audit verify` reports it.
            Err(_) => Vec::new(),
        }
    }
}

/// An open vault. Cheap to share behind an `Arc`.
pub struct Vault {
    pub(crate) config: VaultConfig,
    pub(crate) store: Store,
    pub(crate) committer: GroupCommitter,
    /// Invariant: replaced only by [`Vault::reload_key_ring`], with a ring
    /// loaded from the store by `root`.
    pub(crate) ring: Arc<SharedRing>,
    /// Wraps and unwraps KEKs (new versions, reloads after a rotation).
    pub(crate) root: Arc<dyn RootKeyProvider>,
    /// The key-ring generation the ring was loaded at (see
    /// [`KEY_GENERATION_META`]).
    pub(crate) key_generation: std::sync::Mutex<Option<String>>,
    /// The background re-keying job (admin API).
    pub(crate) rekey_job: Arc<std::sync::Mutex<crate::keys::RekeyJobStatus>>,
    pub(crate) key_cache: RwLock<HashMap<String, CachedKey>>,
    pub(crate) tenant: String,
    pub(crate) lockout: crate::lockout::Lockout,
    /// Per key: (minute, reveals in it). Cleared each minute.
    pub(crate) reveal_rate: std::sync::Mutex<(i64, HashMap<String, u32>)>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("data_dir", &self.config.data_dir)
            .finish_non_exhaustive()
    }
}

pub(crate) fn key_rows_to_wrapped(rows: &[KeyRow]) -> Result<Vec<WrappedKey>, VaultError> {
    rows.iter()
        .map(|r| {
            Ok(WrappedKey {
                purpose: KeyPurpose::from_name(&r.purpose).ok_or_else(|| {
                    VaultError::Internal(format!("unknown key purpose {}", r.purpose))
                })?,
                version: r.version,
                state: KeyState::from_name(&r.state).ok_or_else(|| {
                    VaultError::Internal(format!("unknown key state {}", r.state))
                })?,
                created_at: r.created_at,
                wrapped: r.wrapped.clone(),
            })
        })
        .collect()
}

/// Meta key changed (to a fresh random value) by every key-ring change, so
/// that running servers notice and reload.
pub(crate) const KEY_GENERATION_META: &str = "key_ring_generation";

/// Meta key holding the minimum decryption version of `purpose`.
pub(crate) fn min_decryption_meta(purpose: KeyPurpose) -> String {
    format!("key_min_decryption_version/{}", purpose.as_str())
}

/// The minimum decryption version of every purpose that has one.
pub(crate) async fn min_decryption_versions(
    store: &Store,
) -> Result<HashMap<KeyPurpose, u32>, VaultError> {
    let mut out = HashMap::new();
    for p in KeyPurpose::ALL {
        if let Some(v) = store.meta(&min_decryption_meta(p)).await? {
            let v = v.parse::<u32>().map_err(|_| {
                VaultError::Internal(format!(
                    "corrupt minimum decryption version for {}",
                    p.as_str()
                ))
            })?;
            out.insert(p, v);
        }
    }
    Ok(out)
}

pub(crate) fn load_ring_from(
    root: &dyn RootKeyProvider,
    rows: &[KeyRow],
    min: &HashMap<KeyPurpose, u32>,
) -> Result<KeyRing, VaultError> {
    let wrapped = key_rows_to_wrapped(rows)?;
    KeyRing::load(root, &wrapped, min).map_err(|e| {
        VaultError::Setup(format!(
            "cannot unwrap the key ring with this root key: {e}"
        ))
    })
}

fn load_ring(root: &dyn RootKeyProvider, rows: &[KeyRow]) -> Result<Arc<SharedRing>, VaultError> {
    Ok(Arc::new(SharedRing::new(load_ring_from(
        root,
        rows,
        &HashMap::new(),
    )?)))
}

/// Create version 1 of every key purpose that has no version yet. Returns
/// whether anything was created. Two processes racing here both succeed:
/// the second one's insert conflicts and is dropped.
async fn add_missing_purposes(
    store: &Store,
    root: &dyn RootKeyProvider,
    rows: &[KeyRow],
    ring: Arc<SharedRing>,
) -> Result<bool, VaultError> {
    let missing: Vec<KeyPurpose> = KeyPurpose::ALL
        .into_iter()
        .filter(|p| !rows.iter().any(|r| r.purpose == p.as_str()))
        .collect();
    if missing.is_empty() {
        return Ok(false);
    }
    let now = crate::clock::now_ms();
    let mut jobs = Vec::new();
    for purpose in missing {
        let w = KeyRing::generate_version(root, purpose, 1, now / 1000)?;
        let mut ev = AuditEvent::new(
            now,
            Action::KeyCreate,
            Outcome::Success,
            Ident::from_static("system"),
        );
        ev.subject = Ident::new(purpose.as_str());
        ev.detail = Some(SafeText::new("version=1 reason=new_purpose"));
        jobs.push(Job {
            ops: vec![Op::InsertKey(KeyRow {
                purpose: purpose.as_str().to_owned(),
                version: w.version,
                state: w.state.as_str().to_owned(),
                created_at: w.created_at,
                wrapped: w.wrapped,
            })],
            events: vec![ev],
            ..Job::default()
        });
    }
    store.commit(jobs, Arc::new(RingSigner(ring))).await?;
    Ok(true)
}

impl Vault {
    /// Open an initialised data directory. Must run inside a tokio runtime.
    pub async fn open(config: VaultConfig) -> Result<Vault, VaultError> {
        let dir = DataDir(config.data_dir.clone());
        if dir.custodians().exists() {
            let root = unseal_with_shares(&dir, config.share_source.as_ref())?;
            return Self::open_with_root(config, Arc::new(root)).await;
        }
        if dir.pkcs11().exists() {
            let root = open_pkcs11(&dir)?;
            return Self::open_with_root(config, Arc::new(root)).await;
        }
        let root =
            FileRootKey::open(&dir.root_key()).map_err(|e| VaultError::Setup(e.to_string()))?;
        Self::open_with_root(config, Arc::new(root)).await
    }

    /// Open with an explicit root-key provider.
    pub async fn open_with_root(
        config: VaultConfig,
        root: Arc<dyn RootKeyProvider>,
    ) -> Result<Vault, VaultError> {
        let dir = DataDir(config.data_dir.clone());
        let url = dir.store_url(config.database_url.as_deref());
        let store = Store::connect(&url)
            .await
            .map_err(|e| VaultError::Setup(e.to_string()))?;
        let rows = store.keys().await?;
        if rows.is_empty() {
            return Err(VaultError::Setup(
                "the database holds no keys: run `tokengate init` first".into(),
            ));
        }
        let generation = store.meta(KEY_GENERATION_META).await?;
        let ring = load_ring(root.as_ref(), &rows)?;
        // Purposes added after this data directory was made (e.g. `tls_key`)
        // get their first version now, audited like any key creation.
        let rows = match add_missing_purposes(&store, root.as_ref(), &rows, ring.clone()).await? {
            true => store.keys().await?,
            false => rows,
        };
        let min = min_decryption_versions(&store).await?;
        ring.set(load_ring_from(root.as_ref(), &rows, &min)?);
        let tenant = store
            .meta("default_tenant")
            .await?
            .unwrap_or_else(|| "default".to_owned());
        let committer = GroupCommitter::spawn_with_filter(
            store.clone(),
            Arc::new(RingSigner(ring.clone())),
            config.max_commit_batch.max(1),
            hmac_filter(ring.clone(), &config.audit_hmac_fields),
        );
        Ok(Vault {
            store,
            committer,
            ring,
            root,
            key_generation: std::sync::Mutex::new(generation),
            rekey_job: Arc::default(),
            key_cache: RwLock::new(HashMap::new()),
            tenant,
            lockout: crate::lockout::Lockout::new(config.lockout),
            reveal_rate: std::sync::Mutex::new((0, HashMap::new())),
            config,
        })
    }

    /// `tokengate audit hash VALUE`: the text an HMAC'd audit field holds for
    /// `value`.
    pub fn audit_hash(&self, value: &str) -> Result<String, VaultError> {
        Ok(audit_hmac(&self.ring(), value)?.as_str().to_owned())
    }

    pub fn config(&self) -> &VaultConfig {
        &self.config
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn default_tenant(&self) -> &str {
        &self.tenant
    }

    /// Ed25519 public key that verifies the audit head (hex).
    pub fn audit_public_key(&self) -> Result<Vec<u8>, VaultError> {
        Ok(tokengate_audit::head::public_key(
            self.ring().audit_signer()?,
        ))
    }

    /// A snapshot of the current key ring.
    pub(crate) fn ring(&self) -> Arc<KeyRing> {
        self.ring.get()
    }
}

/// Log in to the HSM recorded in the data directory (PIN from
/// `TOKENGATE_PKCS11_PIN`) and find the root key there.
fn open_pkcs11(dir: &DataDir) -> Result<tokengate_crypto::pkcs11::Pkcs11RootKey, VaultError> {
    use tokengate_crypto::pkcs11::{Pkcs11Config, Pkcs11RootKey, pin_from_env};
    let path = dir.pkcs11();
    let text = std::fs::read(&path)
        .map_err(|e| VaultError::Setup(format!("cannot read {}: {e}", path.display())))?;
    let cfg: Pkcs11Config = serde_json::from_slice(&text)
        .map_err(|e| VaultError::Setup(format!("{} is corrupt: {e}", path.display())))?;
    let pin = pin_from_env().map_err(|e| VaultError::Setup(e.to_string()))?;
    Pkcs11RootKey::open(&cfg, &pin).map_err(|e| VaultError::Setup(e.to_string()))
}

/// Rebuild the root key from custodian shares taken from `source`.
fn unseal_with_shares(
    dir: &DataDir,
    source: Option<&ShareSource>,
) -> Result<tokengate_crypto::custodians::CustodianRootKey, VaultError> {
    use tokengate_crypto::custodians::{CustodianSetup, Unsealer};
    let path = dir.custodians();
    let text = std::fs::read(&path)
        .map_err(|e| VaultError::Setup(format!("cannot read {}: {e}", path.display())))?;
    let setup: CustodianSetup = serde_json::from_slice(&text)
        .map_err(|e| VaultError::Setup(format!("{} is corrupt: {e}", path.display())))?;
    let mut unsealer = Unsealer::new(setup);
    let sealed = |u: &Unsealer| {
        VaultError::Setup(format!(
            "sealed: the root key is split among custodians; {} of {} shares entered (give one share per line on standard input)",
            u.progress(),
            u.threshold()
        ))
    };
    let source = source.ok_or_else(|| sealed(&unsealer))?;
    loop {
        let Some(share) = (source.0)(unsealer.threshold(), unsealer.progress()) else {
            return Err(sealed(&unsealer));
        };
        match unsealer.add(&share) {
            Ok(Some(root)) => return Ok(root),
            Ok(None) => continue,
            Err(e) => {
                return Err(VaultError::Setup(format!(
                    "share refused: {e} ({} of {} valid shares entered)",
                    unsealer.progress(),
                    unsealer.threshold()
                )));
            }
        }
    }
}

/// True when `dir` holds nothing that `init` would create.
pub fn is_fresh(dir: &Path) -> bool {
    match std::fs::read_dir(dir) {
        Ok(mut it) => it.next().is_none(),
        Err(_) => true,
    }
}
