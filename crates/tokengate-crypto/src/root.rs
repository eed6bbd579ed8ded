//! Root-key providers: where the key that wraps every KEK lives.
//!
//! The root key never enters the database. Providers implement
//! [`RootKeyProvider`]; cloud KMSs and HSMs plug in behind the same trait
//! (wrap and unwrap happen inside the provider, so an HSM-held key never
//! leaves the device).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use data_encoding::BASE64;
use zeroize::Zeroizing;

use crate::CryptoError;
use crate::aead::AeadKey;
use crate::secret::{Key256, SecretBytes};

/// Wraps and unwraps key material under a root key the caller never sees.
pub trait RootKeyProvider: Send + Sync + std::fmt::Debug {
    /// Encrypt `key` bound to `aad`.
    fn wrap(&self, aad: &[u8], key: &[u8]) -> Result<Vec<u8>, CryptoError>;
    /// Decrypt what [`wrap`](Self::wrap) produced with the same `aad`.
    fn unwrap(&self, aad: &[u8], wrapped: &[u8]) -> Result<SecretBytes, CryptoError>;
    /// A short name for logs and `keys` output ("file", "pkcs11", …).
    fn kind(&self) -> &'static str;
}

const FILE_HEADER: &str = "tokengate-root-key-v1:";

/// The development root key: 32 random bytes in a file readable only by its
/// owner (mode 0600). Refuses to load a file that group or others can read.
pub struct FileRootKey {
    aead: AeadKey,
}

impl std::fmt::Debug for FileRootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileRootKey([REDACTED])")
    }
}

fn file_err(path: &Path, reason: impl Into<String>) -> CryptoError {
    CryptoError::RootKeyFile {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

impl FileRootKey {
    /// Generate a new root key and write it to `path` (which must not exist).
    pub fn create(path: &Path) -> Result<FileRootKey, CryptoError> {
        let key = Key256::generate()?;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| file_err(path, e.to_string()))?;
        let text = Zeroizing::new(format!("{FILE_HEADER}{}\n", BASE64.encode(key.expose())));
        f.write_all(text.as_bytes())
            .map_err(|e| file_err(path, e.to_string()))?;
        f.sync_all().map_err(|e| file_err(path, e.to_string()))?;
        Ok(FileRootKey {
            aead: AeadKey::new(key.expose())?,
        })
    }

    /// Load the root key from `path`, checking its permissions first.
    pub fn open(path: &Path) -> Result<FileRootKey, CryptoError> {
        let meta = fs::metadata(path).map_err(|e| file_err(path, e.to_string()))?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(file_err(
                path,
                format!(
                    "permissions {:o} let group or others read it; run `chmod 600` on it",
                    mode & 0o777
                ),
            ));
        }
        let text =
            Zeroizing::new(fs::read_to_string(path).map_err(|e| file_err(path, e.to_string()))?);
        let b64 = text
            .trim()
            .strip_prefix(FILE_HEADER)
            .ok_or_else(|| file_err(path, "not a tokengate root key file"))?;
        let raw = Zeroizing::new(
            BASE64
                .decode(b64.as_bytes())
                .map_err(|_| file_err(path, "corrupt key encoding"))?,
        );
        let key =
            Key256::try_from_slice(&raw).ok_or_else(|| file_err(path, "key is not 32 bytes"))?;
        Ok(FileRootKey {
            aead: AeadKey::new(key.expose())?,
        })
    }

    /// The conventional location inside a data directory.
    pub fn path_in(data_dir: &Path) -> PathBuf {
        data_dir.join("root.key")
    }
}

impl RootKeyProvider for FileRootKey {
    fn wrap(&self, aad: &[u8], key: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.aead.seal(aad, key)
    }

    fn unwrap(&self, aad: &[u8], wrapped: &[u8]) -> Result<SecretBytes, CryptoError> {
        self.aead.open(aad, wrapped).map(SecretBytes::new)
    }

    fn kind(&self) -> &'static str {
        "file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_open_and_permission_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.key");
        let created = FileRootKey::create(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let wrapped = created.wrap(b"a", b"k").unwrap();
        let opened = FileRootKey::open(&path).unwrap();
        assert_eq!(opened.unwrap(b"a", &wrapped).unwrap().expose(), b"k");
        assert!(
            FileRootKey::create(&path).is_err(),
            "must never overwrite a key"
        );

        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = FileRootKey::open(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
