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
//! path, token label and key label. Never the PIN: it comes from the
//! environment variable [`PIN_ENV`] when a vault is opened, and is held only
//! as a zeroized secret until the login.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
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
}

impl Pkcs11Config {
    pub fn new(module: impl Into<PathBuf>, token_label: &str, key_label: &str) -> Pkcs11Config {
        Pkcs11Config {
            format: FORMAT.to_owned(),
            module: module.into(),
            token_label: token_label.to_owned(),
            key_label: key_label.to_owned(),
        }
    }
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

/// The root key held in an HSM. Only a session handle and an object handle
/// are kept here; the key value is never in this process.
pub struct Pkcs11RootKey {
    session: Mutex<Session>,
    key: ObjectHandle,
    config: Pkcs11Config,
}

impl std::fmt::Debug for Pkcs11RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11RootKey")
            .field("module", &self.config.module)
            .field("token_label", &self.config.token_label)
            .field("key_label", &self.config.key_label)
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

fn login(ctx: &Pkcs11, config: &Pkcs11Config, pin: &AuthPin) -> Result<Session, CryptoError> {
    let mut slot = None;
    for s in ctx
        .get_slots_with_initialized_token()
        .map_err(|e| hsm_err("C_GetSlotList", e))?
    {
        let info = ctx
            .get_token_info(s)
            .map_err(|e| hsm_err("C_GetTokenInfo", e))?;
        if info.label().trim_end() == config.token_label {
            slot = Some(s);
            break;
        }
    }
    let slot = slot.ok_or_else(|| {
        CryptoError::Hsm(format!(
            "no initialised token labelled {:?} in the PKCS#11 module {}",
            config.token_label,
            config.module.display()
        ))
    })?;
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

impl Pkcs11RootKey {
    /// Open the existing root key named by `config`.
    pub fn open(config: &Pkcs11Config, pin: &AuthPin) -> Result<Pkcs11RootKey, CryptoError> {
        if config.format != FORMAT {
            return Err(CryptoError::Hsm(format!(
                "unknown pkcs11 configuration format {:?}",
                config.format
            )));
        }
        let ctx = context(&config.module)?;
        let session = login(&ctx, config, pin)?;
        let key = find_key(&session, &config.key_label)?.ok_or_else(|| {
            CryptoError::Hsm(format!(
                "no key labelled {:?} in token {:?}",
                config.key_label, config.token_label
            ))
        })?;
        check_key(&session, key, &config.key_label)?;
        Ok(Pkcs11RootKey {
            session: Mutex::new(session),
            key,
            config: config.clone(),
        })
    }

    /// Use the key labelled `config.key_label`, generating it inside the
    /// token first when there is none. Returns whether it was generated.
    pub fn open_or_generate(
        config: &Pkcs11Config,
        pin: &AuthPin,
    ) -> Result<(Pkcs11RootKey, bool), CryptoError> {
        let ctx = context(&config.module)?;
        let session = login(&ctx, config, pin)?;
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

    fn session(&self) -> Result<std::sync::MutexGuard<'_, Session>, CryptoError> {
        self.session
            .lock()
            .map_err(|_| CryptoError::Hsm("PKCS#11 session lock poisoned".into()))
    }
}

impl RootKeyProvider for Pkcs11RootKey {
    fn wrap(&self, aad: &[u8], key: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut iv = crate::random::bytes::<IV_LEN>()?;
        let sealed = {
            let params = GcmParams::new(&mut iv, aad, TAG_BITS.into())
                .map_err(|e| hsm_err("GCM parameters", e))?;
            self.session()?
                .encrypt(&Mechanism::AesGcm(params), self.key, key)
                .map_err(|e| hsm_err("C_Encrypt", e))?
        };
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
        let mut iv = iv.to_vec();
        let params = GcmParams::new(&mut iv, aad, TAG_BITS.into())
            .map_err(|e| hsm_err("GCM parameters", e))?;
        match self
            .session()?
            .decrypt(&Mechanism::AesGcm(params), self.key, sealed)
        {
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

        /// Environment for a process that uses this token (PIN included).
        pub fn envs(&self) -> Vec<(String, String)> {
            vec![
                ("SOFTHSM2_CONF".into(), self.conf.display().to_string()),
                (super::PIN_ENV.into(), PIN.into()),
            ]
        }
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
