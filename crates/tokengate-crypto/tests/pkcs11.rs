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
    PIN, SOFTHSM_MODULE, TOKEN_LABEL, add_token_to, in_child_with_token, slots_of,
};
use tokengate_crypto::pkcs11::{Pkcs11Config, Pkcs11RootKey, is_session_error, pin_from_env};
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

/// A second handle on the module in this process (as another part of an
/// application, or a second application sharing a network HSM's login,
/// would have): a user session on the test token.
fn second_session() -> cryptoki::session::Session {
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
    ctx.open_rw_session(slot).unwrap()
}

fn login(session: &cryptoki::session::Session, pin: &str) {
    match session.login(UserType::User, Some(&AuthPin::from(pin.to_owned()))) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn session_level_errors_are_the_ones_retried() {
    for rv in [
        RvError::SessionHandleInvalid,
        RvError::SessionClosed,
        RvError::DeviceRemoved,
        RvError::TokenNotPresent,
        RvError::UserNotLoggedIn,
        RvError::KeyHandleInvalid,
        RvError::ObjectHandleInvalid,
    ] {
        assert!(is_session_error(rv), "{rv:?}");
    }
    // A refused operation is not retried: a failed tag check, a bad PIN.
    for rv in [
        RvError::GeneralError,
        RvError::EncryptedDataInvalid,
        RvError::FunctionFailed,
        RvError::PinIncorrect,
        RvError::MechanismInvalid,
    ] {
        assert!(!is_session_error(rv), "{rv:?}");
    }
}

#[test]
fn a_lost_login_is_reopened_once_and_a_failed_reopen_fails_closed() {
    if !in_child_with_token("a_lost_login_is_reopened_once_and_a_failed_reopen_fails_closed") {
        return;
    }
    let pin = pin_from_env().unwrap();
    let (root, _) = Pkcs11RootKey::open_or_generate(&config("root"), &pin).unwrap();
    let kek = [9u8; 32];
    let w = root.wrap(b"aad", &kek).unwrap();
    assert_eq!(root.reconnects(), 0);

    // Another handle logs the application out of the token: the
    // provider's session loses its login (and the module drops the
    // private key's handle). The next unwrap reconnects and succeeds.
    let other = second_session();
    login(&other, PIN);
    other.logout().unwrap();
    assert_eq!(root.unwrap(b"aad", &w).unwrap().expose(), kek);
    assert_eq!(root.reconnects(), 1, "the session was really replaced");
    // The same for a wrap.
    login(&other, PIN);
    other.logout().unwrap();
    let w2 = root.wrap(b"aad", &kek).unwrap();
    assert_eq!(root.reconnects(), 2);
    assert_eq!(root.unwrap(b"aad", &w2).unwrap().expose(), kek);
    assert_eq!(root.reconnects(), 2, "no reconnect while the session works");

    // A refused operation is not a lost session: no reconnect.
    let mut tampered = w.clone();
    tampered[15] ^= 1;
    assert!(matches!(
        root.unwrap(b"aad", &tampered),
        Err(CryptoError::Decrypt)
    ));
    assert_eq!(root.reconnects(), 2);

    // The PIN is changed, then the login lost: the reconnect cannot log
    // in, and the operation fails (closed) with the reason.
    const NEW_PIN: &str = "another-test-pin-0815";
    login(&other, PIN);
    other
        .set_pin(
            &AuthPin::from(PIN.to_owned()),
            &AuthPin::from(NEW_PIN.to_owned()),
        )
        .unwrap();
    other.logout().unwrap();
    let err = root.unwrap(b"aad", &w).unwrap_err().to_string();
    assert!(
        err.contains("could not be reopened") && err.contains("refused the PIN"),
        "{err}"
    );
    assert!(!err.contains(PIN) && !err.contains(NEW_PIN), "{err}");
    assert!(root.wrap(b"aad", &kek).is_err(), "wraps fail closed too");
    assert_eq!(root.reconnects(), 2);

    // The PIN restored: the provider recovers on its own.
    login(&other, NEW_PIN);
    other
        .set_pin(
            &AuthPin::from(NEW_PIN.to_owned()),
            &AuthPin::from(PIN.to_owned()),
        )
        .unwrap();
    other.logout().unwrap();
    assert_eq!(root.unwrap(b"aad", &w).unwrap().expose(), kek);
    assert_eq!(root.reconnects(), 3);
}

#[test]
fn a_label_on_two_tokens_is_ambiguous_and_a_slot_chooses() {
    if !in_child_with_token("a_label_on_two_tokens_is_ambiguous_and_a_slot_chooses") {
        return;
    }
    // Two more tokens, before the module is loaded in this process: one
    // with the same label, one with another.
    let conf = std::path::PathBuf::from(std::env::var("SOFTHSM2_CONF").unwrap());
    add_token_to(&conf, TOKEN_LABEL);
    add_token_to(&conf, "other");
    let slots = slots_of(&conf);
    let same: Vec<u64> = slots
        .iter()
        .filter(|(_, l)| l == TOKEN_LABEL)
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(same.len(), 2, "{slots:?}");
    let other_slot = slots.iter().find(|(_, l)| l == "other").unwrap().0;
    let pin = pin_from_env().unwrap();

    let err = Pkcs11RootKey::open_or_generate(&config("root"), &pin)
        .unwrap_err()
        .to_string();
    assert!(err.contains("ambiguous"), "{err}");
    assert!(err.contains("--pkcs11-slot"), "{err}");
    for s in &same {
        assert!(err.contains(&s.to_string()), "{err}");
    }

    // The slot chooses; the configuration records it.
    let (root, generated) =
        Pkcs11RootKey::open_or_generate(&config("root").with_slot(same[1]), &pin).unwrap();
    assert!(generated);
    assert_eq!(root.config().slot, Some(same[1]));
    assert_eq!(root.config().token_label, TOKEN_LABEL);
    let w = root.wrap(b"aad", b"k").unwrap();
    // The key is in that token only.
    let err = Pkcs11RootKey::open(&config("root").with_slot(same[0]), &pin)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no key labelled"), "{err}");
    // A slot alone: the token's label is filled in.
    let by_slot = Pkcs11Config::new(SOFTHSM_MODULE, "", "root").with_slot(same[1]);
    let again = Pkcs11RootKey::open(&by_slot, &pin).unwrap();
    assert_eq!(again.config().token_label, TOKEN_LABEL);
    assert_eq!(again.unwrap(b"aad", &w).unwrap().expose(), b"k");
    // A slot whose token has another label is refused.
    let err = Pkcs11RootKey::open(&config("root").with_slot(other_slot), &pin)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "slot {other_slot} holds the token labelled \"other\""
        )),
        "{err}"
    );
    let err = Pkcs11RootKey::open(&config("root").with_slot(4242), &pin)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no initialised token in slot 4242"), "{err}");
    // The configuration round-trips through JSON with its slot; one
    // written before slots existed still reads.
    let text = serde_json::to_string(root.config()).unwrap();
    let back: Pkcs11Config = serde_json::from_str(&text).unwrap();
    assert_eq!(&back, root.config());
    let old: Pkcs11Config = serde_json::from_str(
        r#"{"format":"tokengate-pkcs11-v1","module":"/m.so","token_label":"T","key_label":"k"}"#,
    )
    .unwrap();
    assert_eq!(old.slot, None);
}
