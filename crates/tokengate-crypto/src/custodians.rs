//! Custodian shares of the root key (split knowledge, dual control).
//!
//! `tokengate init --custodians N --threshold K` generates the root key
//! inside tokengate and splits it with Shamir secret sharing over GF(256)
//! (the `vsss-rs` crate: audited, byte-oriented). Each share is
//! full-length: as long as the key itself, plus its one-byte identifier, so
//! that K-1 shares reveal nothing about the key (PCI DSS 3.6.1.2: "a key
//! split into two parts does not meet this requirement"; Shamir shares do).
//!
//! What is stored ([`CustodianSetup`], in the data directory): N, K, one
//! check value per share, and a check value of the root key. The check
//! values are SHA-256 over a domain-separated share or key; shares and key
//! are 256-bit random, so a check value reveals nothing usable. No share is
//! ever stored. A share that does not belong to this data directory, or was
//! mistyped, is refused as soon as it is entered.
//!
//! Share text: `tgs1-<id>-<base32 share>-<checksum>`; the identifier and a
//! short checksum let a custodian catch a typo before anything is sent.

use aws_lc_rs::digest::{SHA256, digest};
use data_encoding::{BASE32_NOPAD, HEXLOWER};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use vsss_rs::Gf256;
use zeroize::Zeroizing;

use crate::CryptoError;
use crate::aead::AeadKey;
use crate::root::RootKeyProvider;
use crate::secret::{Key256, SecretBytes};

/// What a data directory keeps about its custodian shares (public).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CustodianSetup {
    pub format: String,
    pub shares: u8,
    pub threshold: u8,
    /// `check(share)` for share identifiers 1..=N, hex.
    pub share_checks: Vec<String>,
    /// `check(root key)`, hex.
    pub root_check: String,
}

fn check(label: &[u8], bytes: &[u8]) -> String {
    let mut input = Zeroizing::new(Vec::with_capacity(label.len() + bytes.len()));
    input.extend_from_slice(label);
    input.extend_from_slice(bytes);
    HEXLOWER.encode(digest(&SHA256, &input).as_ref())
}

fn share_check(share: &[u8]) -> String {
    check(b"tokengate/custodian-share-check/v1\0", share)
}

fn root_check(key: &[u8]) -> String {
    check(b"tokengate/custodian-root-check/v1\0", key)
}

fn checksum(body: &str) -> String {
    HEXLOWER.encode(&digest(&SHA256, body.as_bytes()).as_ref()[..2])
}

/// Encode one share for a custodian.
fn encode_share(share: &[u8]) -> Zeroizing<String> {
    let id = share.first().copied().unwrap_or(0);
    let body = Zeroizing::new(format!("tgs1-{id}-{}", BASE32_NOPAD.encode(share)));
    let sum = checksum(&body);
    Zeroizing::new(format!("{}-{sum}", body.as_str()))
}

/// Why a share was refused. Messages never contain the share.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    #[error("this is not a tokengate custodian share (expected `tgs1-…`)")]
    Format,
    #[error("the share's checksum does not match: it was mistyped or truncated")]
    Checksum,
    #[error("share {0} does not belong to this data directory")]
    Unknown(u8),
    #[error("share {0} was already entered")]
    Duplicate(u8),
    #[error("the shares combine to a key this data directory does not know")]
    WrongKey,
    #[error("{0}")]
    Setup(String),
}

/// Parse share text into its bytes (identifier first).
pub fn parse_share(text: &str) -> Result<Zeroizing<Vec<u8>>, ShareError> {
    let text = text.trim();
    let (body, sum) = text.rsplit_once('-').ok_or(ShareError::Format)?;
    let mut parts = body.splitn(3, '-');
    if parts.next() != Some("tgs1") {
        return Err(ShareError::Format);
    }
    let id: u8 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(ShareError::Format)?;
    let b32 = parts.next().ok_or(ShareError::Format)?;
    if !bool::from(checksum(body).as_bytes().ct_eq(sum.as_bytes())) {
        return Err(ShareError::Checksum);
    }
    let bytes = Zeroizing::new(
        BASE32_NOPAD
            .decode(b32.as_bytes())
            .map_err(|_| ShareError::Format)?,
    );
    if bytes.len() != 33 || bytes[0] != id || id == 0 {
        return Err(ShareError::Format);
    }
    Ok(bytes)
}

/// A new root key split into shares.
pub struct SplitRoot {
    /// The root key, for `init` to wrap the first key ring with.
    pub root: CustodianRootKey,
    /// One text per custodian, shown once.
    pub shares: Vec<Zeroizing<String>>,
    pub setup: CustodianSetup,
}

impl std::fmt::Debug for SplitRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitRoot")
            .field("setup", &self.setup)
            .finish_non_exhaustive()
    }
}

/// Generate a root key and split it into `shares` shares, any `threshold`
/// of which rebuild it (2 ≤ threshold ≤ shares ≤ 255).
pub fn split_new_root(shares: u8, threshold: u8) -> Result<SplitRoot, ShareError> {
    if threshold < 2 || threshold > shares {
        return Err(ShareError::Setup(format!(
            "need 2 <= threshold <= custodians (got threshold {threshold}, custodians {shares})"
        )));
    }
    let key = Key256::generate().map_err(|e| ShareError::Setup(e.to_string()))?;
    // The operating system generator; a failure to read it aborts the split.
    let rng = rand::rand_core::UnwrapErr(rand::rngs::SysRng);
    let raw = Gf256::split_bytes(
        usize::from(threshold),
        usize::from(shares),
        key.expose(),
        rng,
    )
    .map_err(|e| ShareError::Setup(format!("secret sharing failed: {e:?}")))?;
    let raw: Vec<Zeroizing<Vec<u8>>> = raw.into_iter().map(Zeroizing::new).collect();
    let mut by_id: Vec<&Zeroizing<Vec<u8>>> = raw.iter().collect();
    by_id.sort_by_key(|s| s.first().copied().unwrap_or(0));
    let setup = CustodianSetup {
        format: "tokengate-custodians-v1".into(),
        shares,
        threshold,
        share_checks: by_id.iter().map(|s| share_check(s)).collect(),
        root_check: root_check(key.expose()),
    };
    // Share identifiers are 1..=N in order; check values are looked up by them.
    if by_id
        .iter()
        .enumerate()
        .any(|(i, s)| s.first().copied() != u8::try_from(i + 1).ok())
    {
        return Err(ShareError::Setup("unexpected share identifiers".into()));
    }
    Ok(SplitRoot {
        root: CustodianRootKey::new(&key).map_err(|e| ShareError::Setup(e.to_string()))?,
        shares: by_id.iter().map(|s| encode_share(s)).collect(),
        setup,
    })
}

/// Collects shares until the threshold is reached. Holds them only in
/// memory (zeroized on drop).
pub struct Unsealer {
    setup: CustodianSetup,
    collected: Vec<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for Unsealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Unsealer({}/{} shares)",
            self.collected.len(),
            self.setup.threshold
        )
    }
}

impl Unsealer {
    pub fn new(setup: CustodianSetup) -> Unsealer {
        Unsealer {
            setup,
            collected: Vec::new(),
        }
    }

    /// Shares accepted so far.
    pub fn progress(&self) -> u8 {
        self.collected.len() as u8
    }

    pub fn threshold(&self) -> u8 {
        self.setup.threshold
    }

    /// Forget the shares entered so far.
    pub fn reset(&mut self) {
        self.collected.clear();
    }

    /// Add one share. Returns the root key once `threshold` valid shares
    /// are in (and forgets the shares).
    pub fn add(&mut self, text: &str) -> Result<Option<CustodianRootKey>, ShareError> {
        let share = parse_share(text)?;
        let id = share[0];
        let expected = self
            .setup
            .share_checks
            .get(usize::from(id) - 1)
            .ok_or(ShareError::Unknown(id))?;
        if !bool::from(share_check(&share).as_bytes().ct_eq(expected.as_bytes())) {
            return Err(ShareError::Unknown(id));
        }
        if self.collected.iter().any(|s| s[0] == id) {
            return Err(ShareError::Duplicate(id));
        }
        self.collected.push(share);
        if self.collected.len() < usize::from(self.setup.threshold) {
            return Ok(None);
        }
        let shares: Vec<Vec<u8>> = self.collected.iter().map(|s| s.to_vec()).collect();
        self.collected.clear();
        let combined = Gf256::combine_bytes(&shares);
        for mut s in shares {
            zeroize::Zeroize::zeroize(&mut s);
        }
        let key = Zeroizing::new(combined.map_err(|_| ShareError::WrongKey)?);
        if !bool::from(
            root_check(&key)
                .as_bytes()
                .ct_eq(self.setup.root_check.as_bytes()),
        ) {
            return Err(ShareError::WrongKey);
        }
        let key = Key256::try_from_slice(&key).ok_or(ShareError::WrongKey)?;
        CustodianRootKey::new(&key)
            .map(Some)
            .map_err(|e| ShareError::Setup(e.to_string()))
    }
}

/// The root key rebuilt from custodian shares, held only in memory.
pub struct CustodianRootKey {
    aead: AeadKey,
}

impl std::fmt::Debug for CustodianRootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CustodianRootKey([REDACTED])")
    }
}

impl CustodianRootKey {
    fn new(key: &Key256) -> Result<CustodianRootKey, CryptoError> {
        Ok(CustodianRootKey {
            aead: AeadKey::new(key.expose())?,
        })
    }
}

impl RootKeyProvider for CustodianRootKey {
    fn wrap(&self, aad: &[u8], key: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.aead.seal(aad, key)
    }

    fn unwrap(&self, aad: &[u8], wrapped: &[u8]) -> Result<SecretBytes, CryptoError> {
        self.aead.open(aad, wrapped).map(SecretBytes::new)
    }

    fn kind(&self) -> &'static str {
        "custodians"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrap_check(root: &CustodianRootKey) -> Vec<u8> {
        root.wrap(b"aad", b"kek").unwrap()
    }

    #[test]
    fn k_shares_rebuild_the_key_and_k_minus_1_do_not() {
        let split = split_new_root(5, 3).unwrap();
        assert_eq!(split.shares.len(), 5);
        let wrapped = wrap_check(&split.root);
        // Every 3-subset works, in any order.
        for (a, b, c) in [(0, 1, 2), (4, 2, 0), (1, 3, 4), (3, 0, 2)] {
            let mut u = Unsealer::new(split.setup.clone());
            assert!(u.add(&split.shares[a]).unwrap().is_none());
            assert!(u.add(&split.shares[b]).unwrap().is_none());
            assert_eq!(u.progress(), 2, "K-1 shares do not unseal");
            let root = u.add(&split.shares[c]).unwrap().expect("K shares unseal");
            assert_eq!(root.unwrap(b"aad", &wrapped).unwrap().expose(), b"kek");
            assert_eq!(u.progress(), 0, "shares are forgotten once used");
        }
    }

    #[test]
    fn shares_are_full_length_and_never_the_key() {
        let split = split_new_root(2, 2).unwrap();
        for s in &split.shares {
            let bytes = parse_share(s).unwrap();
            assert_eq!(bytes.len(), 33, "identifier + 32 bytes: full length");
        }
        let a = parse_share(&split.shares[0]).unwrap();
        let b = parse_share(&split.shares[1]).unwrap();
        assert_ne!(a[1..], b[1..]);
    }

    #[test]
    fn wrong_mistyped_foreign_and_duplicate_shares_are_refused() {
        let split = split_new_root(3, 2).unwrap();
        let other = split_new_root(3, 2).unwrap();
        let mut u = Unsealer::new(split.setup.clone());
        // Another data directory's share, same identifier.
        assert_eq!(u.add(&other.shares[0]).unwrap_err(), ShareError::Unknown(1));
        // A typo in the body.
        let mut typo = split.shares[1].to_string();
        let i = typo.len() - 10;
        let c = if &typo[i..=i] == "A" { "B" } else { "A" };
        typo.replace_range(i..=i, c);
        assert_eq!(u.add(&typo).unwrap_err(), ShareError::Checksum);
        assert_eq!(u.add("hello").unwrap_err(), ShareError::Format);
        assert_eq!(u.progress(), 0, "refused shares do not count");
        assert!(u.add(&split.shares[1]).unwrap().is_none());
        assert_eq!(
            u.add(&split.shares[1]).unwrap_err(),
            ShareError::Duplicate(2)
        );
        assert!(u.add(&split.shares[2]).unwrap().is_some());
        // Error messages never contain a share.
        for e in [
            ShareError::Unknown(1),
            ShareError::Checksum,
            ShareError::WrongKey,
        ] {
            assert!(!e.to_string().contains("tgs1"));
        }
    }

    #[test]
    fn a_tampered_setup_is_detected() {
        let split = split_new_root(3, 2).unwrap();
        let mut setup = split.setup.clone();
        setup.root_check = "00".repeat(32);
        let mut u = Unsealer::new(setup);
        u.add(&split.shares[0]).unwrap();
        assert_eq!(u.add(&split.shares[1]).unwrap_err(), ShareError::WrongKey);
    }

    #[test]
    fn bad_parameters() {
        assert!(split_new_root(3, 1).is_err());
        assert!(split_new_root(2, 3).is_err());
    }
}
