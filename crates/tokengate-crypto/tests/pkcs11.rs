//! The pkcs11 root-key provider against a real SoftHSM2 token (each test
//! re-runs itself in a child process pointed at a fresh token; skipped with
//! a note when SoftHSM2 is absent, failed when it is absent under CI).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use tokengate_crypto::pkcs11::test_support::{
    PIN, SOFTHSM_MODULE, TOKEN_LABEL, in_child_with_token,
};
use tokengate_crypto::pkcs11::{Pkcs11Config, Pkcs11RootKey, pin_from_env};
use tokengate_crypto::{CryptoError, KeyRing, RootKeyProvider};

fn config(key_label: &str) -> Pkcs11Config {
    Pkcs11Config::new(SOFTHSM_MODULE, TOKEN_LABEL, key_label)
}

#[test]
fn wrap_unwrap_round_trip_inside_the_hsm() {
    if !in_child_with_token("wrap_unwrap_round_trip_inside_the_hsm") {
        return;
    }
    let pin = pin_from_env().unwrap();
    let (root, generated) = Pkcs11RootKey::open_or_generate(&config("root"), &pin).unwrap();
    assert!(generated);
    assert_eq!(root.kind(), "pkcs11");
    let kek = [7u8; 32];
    let w1 = root.wrap(b"purpose=data/v=1", &kek).unwrap();
    let w2 = root.wrap(b"purpose=data/v=1", &kek).unwrap();
    assert_eq!(w1.len(), 12 + 32 + 16);
    assert_ne!(w1, w2, "a fresh IV per wrap");
    assert!(
        !w1.windows(kek.len()).any(|w| w == kek),
        "the wrapped form does not hold the key"
    );
    assert_eq!(root.unwrap(b"purpose=data/v=1", &w1).unwrap().expose(), kek);

    // A second open finds the same key by its label (a restart).
    let (again, generated) = Pkcs11RootKey::open_or_generate(&config("root"), &pin).unwrap();
    assert!(!generated, "an existing key is used, not replaced");
    assert_eq!(
        again.unwrap(b"purpose=data/v=1", &w2).unwrap().expose(),
        kek
    );
    let reopened = Pkcs11RootKey::open(&config("root"), &pin).unwrap();
    assert_eq!(
        reopened.unwrap(b"purpose=data/v=1", &w1).unwrap().expose(),
        kek
    );

    // A whole key ring loads through it.
    let wrapped = KeyRing::generate_initial(&root, 1).unwrap();
    KeyRing::load(&reopened, &wrapped, &Default::default()).unwrap();

    // Another key in the same token does not unwrap it.
    let (other, _) = Pkcs11RootKey::open_or_generate(&config("other"), &pin).unwrap();
    assert!(matches!(
        other.unwrap(b"purpose=data/v=1", &w1),
        Err(CryptoError::Decrypt)
    ));
    // A missing key is reported by `open`, not created.
    let err = Pkcs11RootKey::open(&config("missing"), &pin).unwrap_err();
    assert!(err.to_string().contains("no key labelled"), "{err}");
}

#[test]
fn wrong_aad_or_tampered_bytes_do_not_unwrap() {
    if !in_child_with_token("wrong_aad_or_tampered_bytes_do_not_unwrap") {
        return;
    }
    // Before any login in this process: a wrong PIN is refused.
    let err = Pkcs11RootKey::open_or_generate(&config("root"), &AuthPin::from("9999".to_owned()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("refused the PIN"), "{err}");
    assert!(!err.contains("9999"), "{err}");

    let pin = pin_from_env().unwrap();
    let (root, _) = Pkcs11RootKey::open_or_generate(&config("root"), &pin).unwrap();
    let w = root
        .wrap(b"purpose=data/v=1", b"0123456789abcdef0123456789abcdef")
        .unwrap();
    assert!(matches!(
        root.unwrap(b"purpose=data/v=2", &w),
        Err(CryptoError::Decrypt)
    ));
    assert!(matches!(root.unwrap(b"", &w), Err(CryptoError::Decrypt)));
    for i in [0, 5, 12, 20, w.len() - 1] {
        let mut t = w.clone();
        t[i] ^= 1;
        assert!(
            matches!(
                root.unwrap(b"purpose=data/v=1", &t),
                Err(CryptoError::Decrypt)
            ),
            "byte {i} flipped"
        );
    }
    assert!(matches!(
        root.unwrap(b"purpose=data/v=1", &w[..w.len() - 1]),
        Err(CryptoError::Decrypt)
    ));
    assert!(matches!(
        root.unwrap(b"purpose=data/v=1", &w[..20]),
        Err(CryptoError::Malformed)
    ));
    assert_eq!(
        root.unwrap(b"purpose=data/v=1", &w).unwrap().expose(),
        b"0123456789abcdef0123456789abcdef"
    );
}

#[test]
fn the_root_key_cannot_be_read_out_of_the_token() {
    if !in_child_with_token("the_root_key_cannot_be_read_out_of_the_token") {
        return;
    }
    let pin = pin_from_env().unwrap();
    let (_root, _) = Pkcs11RootKey::open_or_generate(&config("root"), &pin).unwrap();

    // An independent session asks the token for the key's value.
    let ctx = Pkcs11::new(SOFTHSM_MODULE).unwrap();
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => panic!("{e}"),
    }
    let slot = ctx
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == TOKEN_LABEL)
        .unwrap();
    let session = ctx.open_rw_session(slot).unwrap();
    match session.login(UserType::User, Some(&AuthPin::from(PIN.to_owned()))) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("{e}"),
    }
    let keys = session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(b"root".to_vec()),
        ])
        .unwrap();
    assert_eq!(keys.len(), 1);
    let attrs = session
        .get_attributes(
            keys[0],
            &[
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Token,
                AttributeType::Value,
            ],
        )
        .unwrap();
    assert!(attrs.contains(&Attribute::Sensitive(true)), "{attrs:?}");
    assert!(attrs.contains(&Attribute::Extractable(false)), "{attrs:?}");
    assert!(attrs.contains(&Attribute::Token(true)), "{attrs:?}");
    assert!(
        !attrs.iter().any(|a| matches!(a, Attribute::Value(_))),
        "the token must refuse CKA_VALUE: {attrs:?}"
    );
    // Asked for alone, the value is refused outright.
    let only_value = session.get_attributes(keys[0], &[AttributeType::Value]);
    assert!(
        only_value.as_ref().is_ok_and(|v| v.is_empty())
            || matches!(
                only_value,
                Err(CkError::Pkcs11(RvError::AttributeSensitive, _))
            ),
        "{only_value:?}"
    );
    // Nor can the attributes be changed to make it extractable.
    assert!(
        session
            .update_attributes(keys[0], &[Attribute::Extractable(true)])
            .is_err()
    );
    assert!(
        session
            .update_attributes(keys[0], &[Attribute::Sensitive(false)])
            .is_err()
    );
}
