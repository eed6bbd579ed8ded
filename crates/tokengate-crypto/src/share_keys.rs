//! Custodian shares encrypted to each custodian's public key.
//!
//! `tokengate init --custodians N --threshold K --custodian-key KEY …`
//! encrypts share *i* to the *i*-th custodian's public key in the age file
//! format (X25519 recipients, `age1…`), ASCII-armored, so that the share
//! text only ever exists in clear inside tokengate's memory and, later, on
//! the custodian's own machine after `age -d -i key.txt share.age`.
//! tokengate never sees a custodian's private key; `tokengate unseal
//! --identity FILE` can decrypt locally for a custodian who prefers that.
//!
//! Only X25519 recipients are accepted: SSH public keys would need the age
//! crate's `ssh` feature, which brings an RSA implementation with an open
//! timing advisory, and the post-quantum hybrid recipients cannot be read
//! by the age releases that distributions ship today. A custodian makes a
//! key pair with `age-keygen -o key.txt` and hands over the `age1…` line.

use std::io::{Read, Write};
use std::str::FromStr;

use age::armor::{ArmoredReader, ArmoredWriter, Format};
use zeroize::Zeroizing;

/// The name of the encryption, as reported in `init --json`.
pub const SHARE_ENCRYPTION: &str = "age";

/// Why a custodian public key or an encrypted share was refused. Messages
/// never carry key material or share text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareKeyError {
    #[error("{0}")]
    Recipient(String),
    #[error("{0}")]
    Identity(String),
    #[error("{0}")]
    Decrypt(String),
    #[error("encrypting the share failed: {0}")]
    Encrypt(String),
}

/// A custodian's public key: an age X25519 recipient (`age1…`).
#[derive(Clone)]
pub struct ShareRecipient {
    key: age::x25519::Recipient,
}

impl std::fmt::Debug for ShareRecipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A public key: fine to show.
        write!(f, "ShareRecipient({})", self.key)
    }
}

impl std::fmt::Display for ShareRecipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.key.fmt(f)
    }
}

impl FromStr for ShareRecipient {
    type Err = ShareKeyError;

    /// Parse one recipient. The message of a refusal says what was
    /// expected and never repeats the input (which could be a private key
    /// pasted by mistake).
    fn from_str(s: &str) -> Result<ShareRecipient, ShareKeyError> {
        let s = s.trim();
        if s.starts_with("AGE-SECRET-KEY-") {
            return Err(ShareKeyError::Recipient(
                "this is an age private key (identity); give the custodian's public key (`age1…`, printed by `age-keygen -y key.txt`) and keep the private key with the custodian".into(),
            ));
        }
        if s.starts_with("ssh-") || s.starts_with("ecdsa-") || s.starts_with("sk-") {
            return Err(ShareKeyError::Recipient(
                "SSH public keys are not supported; the custodian makes an age key with `age-keygen -o key.txt` and gives its `age1…` public key".into(),
            ));
        }
        if s.starts_with("age1") && s.len() > 4 && s[4..].starts_with("pq1") {
            return Err(ShareKeyError::Recipient(
                "post-quantum age recipients are not supported yet; give an X25519 recipient (`age1…` from `age-keygen`)".into(),
            ));
        }
        age::x25519::Recipient::from_str(s)
            .map(|key| ShareRecipient { key })
            .map_err(|why| {
                ShareKeyError::Recipient(format!(
                    "not an age X25519 public key ({why}); expected `age1…` as printed by `age-keygen`"
                ))
            })
    }
}

impl ShareRecipient {
    /// Parse the text of a recipients file: `#` comments and blank lines
    /// are ignored, exactly one recipient must remain.
    pub fn from_file_text(text: &str) -> Result<ShareRecipient, ShareKeyError> {
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let Some(first) = lines.next() else {
            return Err(ShareKeyError::Recipient(
                "the file holds no public key (expected one `age1…` line)".into(),
            ));
        };
        let recipient = first.parse()?;
        if lines.next().is_some() {
            return Err(ShareKeyError::Recipient(
                "the file holds more than one key; give one file (or one `age1…` key) per custodian"
                    .into(),
            ));
        }
        Ok(recipient)
    }

    /// Encrypt `share` (plus a newline, so that `age -d` prints a whole
    /// line) to this custodian, ASCII-armored
    /// (`-----BEGIN AGE ENCRYPTED FILE-----`).
    pub fn encrypt_share(&self, share: &str) -> Result<String, ShareKeyError> {
        let line = Zeroizing::new(format!("{}\n", share.trim()));
        let recipients = [&self.key as &dyn age::Recipient];
        let encryptor = age::Encryptor::with_recipients(recipients.into_iter())
            .map_err(|e| ShareKeyError::Encrypt(e.to_string()))?;
        let mut out = Vec::new();
        let armored = ArmoredWriter::wrap_output(&mut out, Format::AsciiArmor)
            .map_err(|e| ShareKeyError::Encrypt(e.to_string()))?;
        let mut writer = encryptor
            .wrap_output(armored)
            .map_err(|e| ShareKeyError::Encrypt(e.to_string()))?;
        writer
            .write_all(line.as_bytes())
            .and_then(|()| writer.finish())
            .and_then(|armored| armored.finish())
            .map_err(|e| ShareKeyError::Encrypt(e.to_string()))?;
        String::from_utf8(out).map_err(|_| ShareKeyError::Encrypt("armor is not text".into()))
    }
}

/// A custodian's age identities (private keys), read from an identity file
/// such as `age-keygen -o key.txt` writes. Zeroized on drop by the age crate.
pub struct ShareIdentity {
    keys: Vec<age::x25519::Identity>,
}

impl std::fmt::Debug for ShareIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShareIdentity({} keys, [REDACTED])", self.keys.len())
    }
}

impl ShareIdentity {
    /// Parse an identity file: `#` comments and blank lines are ignored,
    /// every other line must be an `AGE-SECRET-KEY-1…`. Errors name the
    /// line number, never its content.
    pub fn from_file_text(text: &str) -> Result<ShareIdentity, ShareKeyError> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = age::x25519::Identity::from_str(line).map_err(|_| {
                ShareKeyError::Identity(format!(
                    "line {} of the identity file is not an age X25519 private key (`AGE-SECRET-KEY-1…`)",
                    i + 1
                ))
            })?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(ShareKeyError::Identity(
                "the identity file holds no age private key".into(),
            ));
        }
        Ok(ShareIdentity { keys })
    }

    /// Decrypt an armored (or binary) age file holding one share.
    pub fn decrypt_share(&self, encrypted: &[u8]) -> Result<Zeroizing<String>, ShareKeyError> {
        let decryptor = age::Decryptor::new_buffered(ArmoredReader::new(encrypted))
            .map_err(|_| {
                ShareKeyError::Decrypt(
                    "the input is not an age-encrypted share (expected `-----BEGIN AGE ENCRYPTED FILE-----`)".into(),
                )
            })?;
        let mut reader = decryptor
            .decrypt(self.keys.iter().map(|k| k as &dyn age::Identity))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => ShareKeyError::Decrypt(
                    "the share is not encrypted to this identity (wrong key file, or another custodian's share)".into(),
                ),
                _ => ShareKeyError::Decrypt(
                    "the encrypted share is damaged or was not made for an identity file".into(),
                ),
            })?;
        let mut plain = Zeroizing::new(Vec::new());
        reader.read_to_end(&mut plain).map_err(|_| {
            ShareKeyError::Decrypt("the encrypted share is truncated or damaged".into())
        })?;
        let text = std::str::from_utf8(&plain)
            .map_err(|_| ShareKeyError::Decrypt("the decrypted share is not text".into()))?;
        Ok(Zeroizing::new(text.trim().to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    fn pair() -> (String, String) {
        let id = age::x25519::Identity::generate();
        (
            id.to_string().expose_secret().to_owned(),
            id.to_public().to_string(),
        )
    }

    #[test]
    fn round_trip_through_armor() {
        let (secret, public) = pair();
        let r: ShareRecipient = public.parse().unwrap();
        assert_eq!(r.to_string(), public);
        let enc = r.encrypt_share("tgs1-1-ABC-0000").unwrap();
        assert!(enc.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"));
        assert!(enc.trim_end().ends_with("-----END AGE ENCRYPTED FILE-----"));
        assert!(!enc.contains("tgs1"));
        let text = format!("# created: now\n# public key: {public}\n{secret}\n");
        let id = ShareIdentity::from_file_text(&text).unwrap();
        assert_eq!(
            id.decrypt_share(enc.as_bytes()).unwrap().as_str(),
            "tgs1-1-ABC-0000"
        );
        // Another custodian's identity cannot read it.
        let (other, _) = pair();
        let e = ShareIdentity::from_file_text(&other)
            .unwrap()
            .decrypt_share(enc.as_bytes())
            .unwrap_err();
        assert!(
            e.to_string().contains("not encrypted to this identity"),
            "{e}"
        );
    }

    #[test]
    fn refusals_never_echo_the_input() {
        let (secret, public) = pair();
        for (input, want) in [
            (secret.as_str(), "private key"),
            ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA x@y", "SSH"),
            ("age1notakey", "not an age X25519 public key"),
            ("", "not an age X25519 public key"),
        ] {
            let e = input.parse::<ShareRecipient>().unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
            if !input.is_empty() {
                assert!(!e.contains(input), "{e}");
            }
        }
        assert!(
            ShareRecipient::from_file_text("# only a comment\n")
                .unwrap_err()
                .to_string()
                .contains("no public key")
        );
        assert!(
            ShareRecipient::from_file_text(&format!("{public}\n{public}\n"))
                .unwrap_err()
                .to_string()
                .contains("more than one")
        );
        assert_eq!(
            ShareRecipient::from_file_text(&format!("# a\n\n{public}\n"))
                .unwrap()
                .to_string(),
            public
        );
        let e = ShareIdentity::from_file_text(&format!("{public}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1") && !e.contains(&public), "{e}");
        let id = ShareIdentity::from_file_text(&secret).unwrap();
        assert!(!format!("{id:?}").contains(&secret));
        assert!(id.decrypt_share(b"tgs1-1-AAAA-0000").is_err());
    }
}
