//! The `pkcs11` root-key provider: the root key is an AES-256 secret key
//! object generated inside an HSM (any PKCS#11 module; SoftHSM2 in tests)
//! and it never leaves it.
//!
//! The key object is created with `CKA_TOKEN=true` (it persists in the
//! token), `CKA_SENSITIVE=true` and `CKA_EXTRACTABLE=false` (the module
//! refuses to reveal or export its value), and is found again by its
//! `CKA_LABEL`. Wrapping a KEK is `CKM_AES_GCM` encryption inside the HSM
//! with a fresh random 96-bit IV per wrap and the caller's associated data,
//! so a wrapped KEK copied to another purpose or version does not unwrap,
//! exactly as with the file provider. Wrapped form: `IV (12) ‖ ciphertext ‖
//! tag (16)`.
//!
//! What the data directory keeps ([`Pkcs11Config`], `pkcs11.json`): module
//! path, token label, key label and, when the token was chosen by slot, the
//! slot ID. Never the PIN: it comes from the environment variable
//! [`PIN_ENV`] when a vault is opened, and is held only as a zeroized secret
//! (the `secrecy` type cryptoki uses) for as long as the provider lives, so
//! that a lost session can be logged in again.
//!
//! Token selection: by label, which must then name exactly one initialised
//! token (two tokens with one label are refused as ambiguous), or by slot
//! ID (`--pkcs11-slot`), whose token must carry the recorded label.
//!
//! Session loss: HSMs drop sessions (a restart, a network HSM's reconnect,
//! a token removed and put back, another application logging the token
//! out). When a wrap or unwrap fails with a session-level error
//! ([`is_session_error`]), the provider opens a new session, logs in again,
//! finds the key again by its label (its handle may have changed), checks
//! its attributes again and retries the operation once. If that fails too,
//! the error is returned: the caller's operation fails closed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use serde::{Deserialize, Serialize};

use crate::CryptoError;
use crate::root::RootKeyProvider;
use crate::secret::SecretBytes;

/// The environment variable the token PIN is read from.
pub const PIN_ENV: &str = "TOKENGATE_PKCS11_PIN";
/// The key label `init` uses when none is given.
pub const DEFAULT_KEY_LABEL: &str = "tokengate-root-key";
const FORMAT: &str = "tokengate-pkcs11-v1";
const IV_LEN: usize = 12;
const TAG_BITS: u64 = 128;
const TAG_LEN: usize = 16;

/// Which HSM key a data directory uses (public: no PIN, no key material).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pkcs11Config {
    pub format: String,
    /// Path of the PKCS#11 module (shared library).
    pub module: PathBuf,
    /// Label of the token (`CKA_LABEL` of the token, as `softhsm2-util
    /// --show-slots` or `pkcs11-tool -L` lists it).
    pub token_label: String,
    /// `CKA_LABEL` of the AES-256 root key object in that token.
    pub key_label: String,
    /// The slot ID, when the token was chosen by slot (`--pkcs11-slot`);
    /// the token found there must carry `token_label`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u64>,
}

impl Pkcs11Config {
    pub fn new(module: impl Into<PathBuf>, token_label: &str, key_label: &str) -> Pkcs11Config {
        Pkcs11Config {
            format: FORMAT.to_owned(),
            module: module.into(),
            token_label: token_label.to_owned(),
            key_label: key_label.to_owned(),
            slot: None,
        }
    }

    /// Choose the token by slot ID. An empty `token_label` is filled in
    /// with the label of the token found there when the key is opened.
    pub fn with_slot(mut self, slot: u64) -> Pkcs11Config {
        self.slot = Some(slot);
        self
    }
}

/// Whether a PKCS#11 error means the session (or the login, or the key's
/// handle in it) was lost rather than that the operation itself was
/// refused: the provider then reconnects and retries once.
pub fn is_session_error(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::DeviceRemoved
            | RvError::TokenNotPresent
            | RvError::UserNotLoggedIn
            // After a logout or a reinsertion, modules drop the handles of
            // private objects; the key is found again by its label.
            | RvError::KeyHandleInvalid
            | RvError::ObjectHandleInvalid
    )
}

fn hsm_err(what: &str, e: CkError) -> CryptoError {
    let detail = match e {
        CkError::Pkcs11(rv, f) => format!("{f} returned {rv:?}"),
        other => other.to_string(),
    };
    CryptoError::Hsm(format!("{what}: {detail}"))
}

/// The PIN from [`PIN_ENV`].
pub fn pin_from_env() -> Result<AuthPin, CryptoError> {
    match std::env::var(PIN_ENV) {
        Ok(p) if !p.is_empty() => Ok(AuthPin::from(p)),
        _ => Err(CryptoError::Hsm(format!(
            "the token PIN is read from the environment variable {PIN_ENV}, which is not set"
        ))),
    }
}

/// One initialised context per module for the whole process: PKCS#11 allows
/// one `C_Initialize` per process, and the module stays loaded.
fn context(module: &Path) -> Result<Pkcs11, CryptoError> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut map = CONTEXTS
        .get_or_init(Mutex::default)
        .lock()
        .map_err(|_| CryptoError::Hsm("PKCS#11 context lock poisoned".into()))?;
    if let Some(c) = map.get(module) {
        return Ok(c.clone());
    }
    let ctx = Pkcs11::new(module).map_err(|e| {
        CryptoError::Hsm(format!(
            "cannot load the PKCS#11 module {}: {e}",
            module.display()
        ))
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(hsm_err("C_Initialize", e)),
    }
    map.insert(module.to_path_buf(), ctx.clone());
    Ok(ctx)
}

/// A logged-in session and the root key's handle in it.
struct Connection {
    session: Session,
    key: ObjectHandle,
}

/// The root key held in an HSM. Only a session handle and an object handle
/// are kept here (and the PIN, to log in again after a lost session); the
/// key value is never in this process.
pub struct Pkcs11RootKey {
    conn: Mutex<Connection>,
    config: Pkcs11Config,
    pin: AuthPin,
    reconnects: AtomicU64,
}

impl std::fmt::Debug for Pkcs11RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11RootKey")
            .field("module", &self.config.module)
            .field("token_label", &self.config.token_label)
            .field("key_label", &self.config.key_label)
            .field("slot", &self.config.slot)
            .finish_non_exhaustive()
    }
}

fn find_key(session: &Session, label: &str) -> Result<Option<ObjectHandle>, CryptoError> {
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(|e| hsm_err("C_FindObjects", e))?;
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        _ => Err(CryptoError::Hsm(format!(
            "{} secret keys in the token are labelled {label:?}; the root key label must be unique",
            found.len()
        ))),
    }
}

/// Refuse a key object that is not a non-extractable, sensitive AES-256 key.
fn check_key(session: &Session, key: ObjectHandle, label: &str) -> Result<(), CryptoError> {
    let attrs = session
        .get_attributes(
            key,
            &[
                AttributeType::KeyType,
                AttributeType::ValueLen,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Encrypt,
                AttributeType::Decrypt,
            ],
        )
        .map_err(|e| hsm_err("C_GetAttributeValue", e))?;
    let (mut aes, mut len, mut sensitive, mut extractable, mut enc, mut dec) =
        (false, 0u64, false, true, false, false);
    for a in attrs {
        match a {
            Attribute::KeyType(t) => aes = t == KeyType::AES,
            Attribute::ValueLen(l) => len = l.into(),
            Attribute::Sensitive(b) => sensitive = b,
            Attribute::Extractable(b) => extractable = b,
            Attribute::Encrypt(b) => enc = b,
            Attribute::Decrypt(b) => dec = b,
            _ => {}
        }
    }
    if !(aes && len == 32 && sensitive && !extractable && enc && dec) {
        return Err(CryptoError::Hsm(format!(
            "the key labelled {label:?} is not a sensitive, non-extractable AES-256 key allowed to encrypt and decrypt; refusing to use it"
        )));
    }
    Ok(())
}

/// The slot of the token `config` names, and that token's label.
fn find_slot(ctx: &Pkcs11, config: &Pkcs11Config) -> Result<(Slot, String), CryptoError> {
    let mut tokens = Vec::new();
    for s in ctx
        .get_slots_with_initialized_token()
        .map_err(|e| hsm_err("C_GetSlotList", e))?
    {
        let info = ctx
            .get_token_info(s)
            .map_err(|e| hsm_err("C_GetTokenInfo", e))?;
        tokens.push((s, info.label().trim_end().to_owned()));
    }
    if let Some(id) = config.slot {
        let (slot, label) = tokens
            .into_iter()
            .find(|(s, _)| s.id() == id)
            .ok_or_else(|| {
                CryptoError::Hsm(format!(
                    "no initialised token in slot {id} of the PKCS#11 module {}",
                    config.module.display()
                ))
            })?;
        if !config.token_label.is_empty() && label != config.token_label {
            return Err(CryptoError::Hsm(format!(
                "slot {id} holds the token labelled {label:?}, not {:?}; refusing to use another token",
                config.token_label
            )));
        }
        return Ok((slot, label));
    }
    let matching: Vec<Slot> = tokens
        .iter()
        .filter(|(_, l)| *l == config.token_label)
        .map(|(s, _)| *s)
        .collect();
    match matching.as_slice() {
        [one] => Ok((*one, config.token_label.clone())),
        [] => Err(CryptoError::Hsm(format!(
            "no initialised token labelled {:?} in the PKCS#11 module {}",
            config.token_label,
            config.module.display()
        ))),
        many => Err(CryptoError::Hsm(format!(
            "the token label {:?} is ambiguous: {} tokens carry it (slots {}); choose one with --pkcs11-slot ID",
            config.token_label,
            many.len(),
            many.iter()
                .map(|s| s.id().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn login(ctx: &Pkcs11, slot: Slot, pin: &AuthPin) -> Result<Session, CryptoError> {
    let session = ctx
        .open_rw_session(slot)
        .map_err(|e| hsm_err("C_OpenSession", e))?;
    match session.login(UserType::User, Some(pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
        Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => Err(CryptoError::Hsm(format!(
            "the token refused the PIN (from {PIN_ENV})"
        ))),
        Err(e) => Err(hsm_err("C_Login", e)),
    }
}

/// Find the token, log in, find and check the key: a ready connection and
/// the configuration with the token label filled in.
fn connect(
    config: &Pkcs11Config,
    pin: &AuthPin,
) -> Result<(Connection, Pkcs11Config), CryptoError> {
    let ctx = context(&config.module)?;
    let (slot, label) = find_slot(&ctx, config)?;
    let session = login(&ctx, slot, pin)?;
    let key = find_key(&session, &config.key_label)?.ok_or_else(|| {
        CryptoError::Hsm(format!(
            "no key labelled {:?} in token {label:?}",
            config.key_label
        ))
    })?;
    check_key(&session, key, &config.key_label)?;
    let mut config = config.clone();
    config.token_label = label;
    Ok((Connection { session, key }, config))
}

impl Pkcs11RootKey {
    /// Open the existing root key named by `config`.
    pub fn open(config: &Pkcs11Config, pin: &AuthPin) -> Result<Pkcs11RootKey, CryptoError> {
        if config.format != FORMAT {
            return Err(CryptoError::Hsm(format!(
                "unknown pkcs11 configuration format {:?}",
                config.format
            )));
        }
        let (conn, config) = connect(config, pin)?;
        Ok(Pkcs11RootKey {
            conn: Mutex::new(conn),
            config,
            pin: pin.clone(),
            reconnects: AtomicU64::new(0),
        })
    }

    /// Use the key labelled `config.key_label`, generating it inside the
    /// token first when there is none. Returns whether it was generated.
    pub fn open_or_generate(
        config: &Pkcs11Config,
        pin: &AuthPin,
    ) -> Result<(Pkcs11RootKey, bool), CryptoError> {
        let ctx = context(&config.module)?;
        let (slot, _) = find_slot(&ctx, config)?;
        let session = login(&ctx, slot, pin)?;
        let generated = if find_key(&session, &config.key_label)?.is_none() {
            session
                .generate_key(
                    &Mechanism::AesKeyGen,
                    &[
                        Attribute::Class(ObjectClass::SECRET_KEY),
                        Attribute::KeyType(KeyType::AES),
                        Attribute::ValueLen(32.into()),
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Sensitive(true),
                        Attribute::Extractable(false),
                        Attribute::Encrypt(true),
                        Attribute::Decrypt(true),
                        Attribute::Wrap(false),
                        Attribute::Unwrap(false),
                        Attribute::Sign(false),
                        Attribute::Verify(false),
                        Attribute::Derive(false),
                        Attribute::Label(config.key_label.as_bytes().to_vec()),
                    ],
                )
                .map_err(|e| hsm_err("C_GenerateKey", e))?;
            true
        } else {
            false
        };
        drop(session);
        Ok((Self::open(config, pin)?, generated))
    }

    pub fn config(&self) -> &Pkcs11Config {
        &self.config
    }

    /// How many times a lost session was replaced.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Run `op` with the session and the key handle. On a session-level
    /// error, reconnect (new session, login, key found and checked again)
    /// and run it once more; a failed reconnect or a second failure is
    /// returned as is.
    fn with_session<T>(
        &self,
        mut op: impl FnMut(&Session, ObjectHandle) -> Result<T, CkError>,
    ) -> Result<Result<T, CkError>, CryptoError> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| CryptoError::Hsm("PKCS#11 session lock poisoned".into()))?;
        match op(&conn.session, conn.key) {
            Err(CkError::Pkcs11(rv, _)) if is_session_error(rv) => {
                let (fresh, _) = connect(&self.config, &self.pin).map_err(|e| {
                    CryptoError::Hsm(format!(
                        "the HSM session was lost ({rv:?}) and could not be reopened: {e}"
                    ))
                })?;
                // The old session is closed when dropped (an error for a
                // handle the module already forgot is ignored).
                *conn = fresh;
                self.reconnects.fetch_add(1, Ordering::Relaxed);
                Ok(op(&conn.session, conn.key))
            }
            other => Ok(other),
        }
    }
}

impl RootKeyProvider for Pkcs11RootKey {
    fn wrap(&self, aad: &[u8], key: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let iv = crate::random::bytes::<IV_LEN>()?;
        let sealed = self
            .with_session(|session, handle| {
                let mut iv = iv;
                let params = GcmParams::new(&mut iv, aad, TAG_BITS.into())?;
                session.encrypt(&Mechanism::AesGcm(params), handle, key)
            })?
            .map_err(|e| hsm_err("C_Encrypt", e))?;
        let mut out = Vec::with_capacity(IV_LEN + sealed.len());
        out.extend_from_slice(&iv);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    fn unwrap(&self, aad: &[u8], wrapped: &[u8]) -> Result<SecretBytes, CryptoError> {
        if wrapped.len() < IV_LEN + TAG_LEN {
            return Err(CryptoError::Malformed);
        }
        let (iv, sealed) = wrapped.split_at(IV_LEN);
        let result = self.with_session(|session, handle| {
            let mut iv = iv.to_vec();
            let params = GcmParams::new(&mut iv, aad, TAG_BITS.into())?;
            session.decrypt(&Mechanism::AesGcm(params), handle, sealed)
        })?;
        match result {
            Ok(plain) => Ok(SecretBytes::new(plain)),
            // A failed tag check: wrong AAD, other key, or tampered bytes.
            // Modules differ in how they say so (SoftHSM2 answers
            // CKR_GENERAL_ERROR); either way nothing is returned.
            Err(CkError::Pkcs11(
                RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::GeneralError
                | RvError::FunctionFailed,
                _,
            )) => Err(CryptoError::Decrypt),
            Err(e) => Err(hsm_err("C_Decrypt", e)),
        }
    }

    fn kind(&self) -> &'static str {
        "pkcs11"
    }
}

/// A SoftHSM2 token in a temporary directory, for tests (feature
/// `test-support`).
#[cfg(feature = "test-support")]
#[allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]
pub mod test_support {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// Where Debian's `softhsm2` package installs the module.
    pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
    pub const TOKEN_LABEL: &str = "T";
    /// Long enough that finding it in a file is no accident.
    pub const PIN: &str = "tokengate-test-pin-4711";
    /// Set in a child test process that runs inside a prepared token.
    const CHILD_ENV: &str = "TOKENGATE_TEST_SOFTHSM_CHILD";

    /// A fresh SoftHSM2 configuration with one initialised token, removed
    /// when dropped.
    #[derive(Debug)]
    pub struct SoftHsm {
        pub dir: PathBuf,
        pub conf: PathBuf,
    }

    impl Drop for SoftHsm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn present() -> bool {
        Path::new(SOFTHSM_MODULE).exists()
            && Command::new("softhsm2-util")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
    }

    impl SoftHsm {
        /// `None` (after printing why) when SoftHSM2 is not installed and
        /// the `CI` variable is unset; under CI its absence fails the test.
        pub fn setup() -> Option<SoftHsm> {
            if !present() {
                if std::env::var_os("CI").is_some() {
                    panic!(
                        "SoftHSM2 is required under CI: install the Debian package softhsm2 ({SOFTHSM_MODULE} and softhsm2-util)"
                    );
                }
                // Straight to the stream: the test harness captures the
                // print macros of passing tests, and this note must show.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: SoftHSM2 is not installed (Debian package softhsm2); the pkcs11 provider was not tested"
                );
                return None;
            }
            let dir = tempfile::Builder::new()
                .prefix("softhsm-")
                .tempdir()
                .unwrap()
                .keep();
            let tokens = dir.join("tokens");
            std::fs::create_dir_all(&tokens).unwrap();
            let conf = dir.join("softhsm2.conf");
            std::fs::write(
                &conf,
                format!(
                    "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                    tokens.display()
                ),
            )
            .unwrap();
            let out = Command::new("softhsm2-util")
                .env("SOFTHSM2_CONF", &conf)
                .args([
                    "--init-token",
                    "--free",
                    "--label",
                    TOKEN_LABEL,
                    "--pin",
                    PIN,
                    "--so-pin",
                    "5678",
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "softhsm2-util --init-token: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Some(SoftHsm { dir, conf })
        }

        /// Initialise one more token in this configuration (same PIN).
        pub fn add_token(&self, label: &str) {
            add_token_to(&self.conf, label);
        }

        /// `(slot ID, token label)` of every initialised token, as
        /// `softhsm2-util --show-slots` lists them.
        pub fn slots(&self) -> Vec<(u64, String)> {
            slots_of(&self.conf)
        }

        /// Environment for a process that uses this token (PIN included).
        pub fn envs(&self) -> Vec<(String, String)> {
            vec![
                ("SOFTHSM2_CONF".into(), self.conf.display().to_string()),
                (super::PIN_ENV.into(), PIN.into()),
            ]
        }
    }

    /// Initialise one more token (PIN [`PIN`]) in the SoftHSM2
    /// configuration `conf`; before the module is loaded in this process.
    pub fn add_token_to(conf: &Path, label: &str) {
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", conf)
            .args(["--init-token", "--free", "--label", label])
            .args(["--pin", PIN, "--so-pin", "5678"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "softhsm2-util --init-token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `(slot ID, token label)` of every initialised token of the SoftHSM2
    /// configuration `conf`.
    pub fn slots_of(conf: &Path) -> Vec<(u64, String)> {
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", conf)
            .arg("--show-slots")
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        let mut slots = Vec::new();
        let mut current: Option<u64> = None;
        let mut initialized = false;
        for line in text.lines() {
            if let Some(id) = line.strip_prefix("Slot ") {
                current = id.trim().parse().ok();
                initialized = false;
            } else if line.trim().starts_with("Initialized:") {
                initialized = line.trim().ends_with("yes");
            } else if let (Some(id), Some(label), true) =
                (current, line.trim().strip_prefix("Label:"), initialized)
            {
                slots.push((id, label.trim().to_owned()));
            }
        }
        slots
    }

    /// Run the test `name` (of the current test binary) again in a child
    /// process whose environment points SoftHSM2 at a fresh token; returns
    /// true in that child, where the test body runs. In the parent, returns
    /// false after the child passed (or after a printed skip note).
    pub fn in_child_with_token(name: &str) -> bool {
        if std::env::var_os(CHILD_ENV).is_some() {
            return true;
        }
        let Some(hsm) = SoftHsm::setup() else {
            return false;
        };
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .envs(hsm.envs())
            .env(CHILD_ENV, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child test {name} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        false
    }
}
