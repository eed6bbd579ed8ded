//! Unit tests. Fixed vectors were computed with the Standard Webhooks
//! reference library and with a plain HMAC implementation (Stripe's
//! documented scheme), not with this crate.

use super::*;

const STD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const STD_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const STD_TS: i64 = 1_614_265_330;
const STD_BODY: &[u8] = br#"{"test": 2432232314}"#;
const STD_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

const STRIPE_SECRET: &str = "whsec_test_secret";
const STRIPE_TS: i64 = 1_700_000_000;
const STRIPE_BODY: &[u8] = br#"{"id":"evt_1","object":"event"}"#;
const STRIPE_V1: &str = "0c8670ed117751cc551a20e35839447075c42800ea3cf3e8a2fbda99cd1e6edd";

fn verifier(scheme: Scheme, secrets: &[&str]) -> Verifier {
    let keys = secrets
        .iter()
        .map(|s| Key::parse(&scheme, s).unwrap())
        .collect();
    Verifier::new(scheme, keys, DEFAULT_TOLERANCE_SECS).unwrap()
}

fn std_headers(sig: &str) -> Vec<(String, String)> {
    vec![
        ("Webhook-Id".into(), STD_ID.into()),
        ("webhook-timestamp".into(), STD_TS.to_string()),
        ("webhook-signature".into(), sig.into()),
    ]
}

#[test]
fn standard_reference_vector_verifies_and_signs() {
    let v = verifier(Scheme::Standard, &[STD_SECRET]);
    let ok = v.verify(&std_headers(STD_SIG), STD_BODY, STD_TS).unwrap();
    assert_eq!(ok.id.as_deref(), Some(STD_ID));
    assert_eq!(ok.timestamp, Some(STD_TS));
    let signer = Signer::new(STD_SECRET).unwrap();
    let h = signer.headers(STD_ID, STD_TS, STD_BODY);
    assert_eq!(h[2].1, STD_SIG);
}

#[test]
fn standard_refuses_tampering_and_wrong_secret() {
    let v = verifier(Scheme::Standard, &[STD_SECRET]);
    let tampered = br#"{"test": 2432232315}"#;
    assert_eq!(
        v.verify(&std_headers(STD_SIG), tampered, STD_TS),
        Err(VerifyError::BadSignature)
    );
    let mut h = std_headers(STD_SIG);
    h[0].1 = "msg_other".into();
    assert_eq!(
        v.verify(&h, STD_BODY, STD_TS),
        Err(VerifyError::BadSignature)
    );
    let other = verifier(Scheme::Standard, &["whsec_c2VjcmV0LW90aGVy"]);
    assert_eq!(
        other.verify(&std_headers(STD_SIG), STD_BODY, STD_TS),
        Err(VerifyError::BadSignature)
    );
    let h = std_headers(STD_SIG)[..2].to_vec();
    assert_eq!(
        v.verify(&h, STD_BODY, STD_TS).unwrap_err().code(),
        "missing_signature"
    );
    let mut h = std_headers(STD_SIG);
    h[1].1 = "yesterday".into();
    assert_eq!(
        v.verify(&h, STD_BODY, STD_TS).unwrap_err().code(),
        "malformed_signature"
    );
}

#[test]
fn standard_timestamp_tolerance_both_ways() {
    let v = verifier(Scheme::Standard, &[STD_SECRET]);
    let h = std_headers(STD_SIG);
    assert!(v.verify(&h, STD_BODY, STD_TS + 300).is_ok());
    assert!(v.verify(&h, STD_BODY, STD_TS - 300).is_ok());
    assert_eq!(
        v.verify(&h, STD_BODY, STD_TS + 301),
        Err(VerifyError::Stale)
    );
    assert_eq!(
        v.verify(&h, STD_BODY, STD_TS - 301),
        Err(VerifyError::Future)
    );
}

#[test]
fn standard_several_signatures_and_rotated_secrets() {
    let v = verifier(Scheme::Standard, &["whsec_bmV3LXNlY3JldA==", STD_SECRET]);
    let both = format!("v1,bm9wZQ== v2,whatever {STD_SIG}");
    assert!(v.verify(&std_headers(&both), STD_BODY, STD_TS).is_ok());
    // Bare base64 (no prefix) is accepted like the reference library does.
    let bare = verifier(Scheme::Standard, &["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]);
    assert!(bare.verify(&std_headers(STD_SIG), STD_BODY, STD_TS).is_ok());
}

#[test]
fn standard_v1a_ed25519() {
    let seed = [7u8; 32];
    let sk = format!("whsk_{}", BASE64.encode(&seed));
    let signer = verifier(Scheme::Standard, &[&sk]);
    let h = signer.sign_headers("msg_1", 100, b"hello").unwrap();
    assert!(h[2].1.starts_with("v1a,"));
    let Key::Ed25519 { public, .. } = Key::parse(&Scheme::Standard, &sk).unwrap() else {
        panic!("not ed25519");
    };
    let pk = format!("whpk_{}", BASE64.encode(&public));
    let v = verifier(Scheme::Standard, &[&pk]);
    assert!(v.verify(&h, b"hello", 100).is_ok());
    assert_eq!(v.verify(&h, b"hellO", 100), Err(VerifyError::BadSignature));
    // A v1a signature is never checked as HMAC, nor v1 as Ed25519.
    let hmac_only = verifier(Scheme::Standard, &[STD_SECRET]);
    assert_eq!(
        hmac_only.verify(&h, b"hello", 100),
        Err(VerifyError::BadSignature)
    );
    assert!(
        verifier(Scheme::Standard, &[&pk])
            .sign_headers("m", 1, b"x")
            .is_err(),
        "a public key cannot sign"
    );
    assert!(Key::parse(&Scheme::Standard, "whpk_AAAA").is_err());
}

#[test]
fn stripe_documented_scheme_and_rotation() {
    let v = verifier(Scheme::Stripe, &[STRIPE_SECRET]);
    let h = [(
        "stripe-signature",
        &*format!("t={STRIPE_TS},v1={STRIPE_V1},v0=abcd"),
    )];
    assert!(v.verify(&h, STRIPE_BODY, STRIPE_TS).is_ok());
    assert_eq!(
        stripe_header(STRIPE_SECRET.as_bytes(), STRIPE_TS, STRIPE_BODY),
        format!("t={STRIPE_TS},v1={STRIPE_V1}")
    );
    // Two v1 entries (Stripe rolling its secret): either may match.
    let two = format!("t={STRIPE_TS},v1={},v1={STRIPE_V1}", "ab".repeat(32));
    assert!(
        v.verify(
            &[("Stripe-Signature", two.as_str())],
            STRIPE_BODY,
            STRIPE_TS
        )
        .is_ok()
    );
    // Our rotation: the old secret still configured beside the new one.
    let rotated = verifier(Scheme::Stripe, &["whsec_new", STRIPE_SECRET]);
    assert!(rotated.verify(&h, STRIPE_BODY, STRIPE_TS).is_ok());
    let wrong = verifier(Scheme::Stripe, &["whsec_new"]);
    assert_eq!(
        wrong.verify(&h, STRIPE_BODY, STRIPE_TS),
        Err(VerifyError::BadSignature)
    );
    assert_eq!(
        v.verify(&h, br#"{"id":"evt_2","object":"event"}"#, STRIPE_TS),
        Err(VerifyError::BadSignature)
    );
    // The timestamp is signed: changing it breaks the signature.
    let moved = format!("t={},v1={STRIPE_V1}", STRIPE_TS + 1);
    assert_eq!(
        v.verify(
            &[("Stripe-Signature", moved.as_str())],
            STRIPE_BODY,
            STRIPE_TS
        ),
        Err(VerifyError::BadSignature)
    );
    assert_eq!(
        v.verify(&h, STRIPE_BODY, STRIPE_TS + 301),
        Err(VerifyError::Stale)
    );
    assert_eq!(
        v.verify(&h, STRIPE_BODY, STRIPE_TS - 301),
        Err(VerifyError::Future)
    );
    assert_eq!(
        v.verify(&[("Stripe-Signature", "v1=00")], STRIPE_BODY, STRIPE_TS)
            .unwrap_err()
            .code(),
        "malformed_signature"
    );
    assert_eq!(stripe_event_id(STRIPE_BODY).as_deref(), Some("evt_1"));
    assert_eq!(stripe_event_id(b"[]"), None);
}

fn generic(template: &str, ts: Option<&str>, id: Option<&str>) -> Scheme {
    Scheme::Generic(Generic {
        header: "X-Signature".into(),
        algorithm: Algorithm::Sha512,
        encoding: Encoding::Hex,
        prefix: "sha512=".into(),
        template: Template::parse(template).unwrap(),
        timestamp_header: ts.map(str::to_owned),
        id_header: id.map(str::to_owned),
    })
}

#[test]
fn generic_hmac_schemes() {
    let mac = "120c58023c72b10b814e631dec46baf9007723f57f292dcbe3027fe6d2321ba65aee8f568abe17f69e0db20e7cfa7a8f347ec9689aab080f832853c4c8fb76fb";
    let v = verifier(generic("{body}", None, None), &["generic-secret"]);
    let h = [("x-signature", &*format!("sha512={mac}"))];
    assert_eq!(
        v.verify(&h, br#"{"a":1}"#, 0).unwrap(),
        Verified {
            id: None,
            timestamp: None
        }
    );
    assert_eq!(
        v.verify(&h, br#"{"a":2}"#, 0),
        Err(VerifyError::BadSignature)
    );
    let h = [("x-signature", mac)];
    assert_eq!(
        v.verify(&h, br#"{"a":1}"#, 0).unwrap_err().code(),
        "malformed_signature"
    );

    let scheme = generic("{id}:{timestamp}:{body}", Some("X-Ts"), Some("X-Id"));
    let v = verifier(scheme, &["k1"]);
    let h = v.sign_headers("ev_9", 1000, b"payload").unwrap();
    assert_eq!(h.len(), 3);
    let ok = v.verify(&h, b"payload", 1000).unwrap();
    assert_eq!(ok.id.as_deref(), Some("ev_9"));
    assert_eq!(v.verify(&h, b"payload", 1301), Err(VerifyError::Stale));
    assert_eq!(v.verify(&h, b"payload", 699), Err(VerifyError::Future));
    let mut bad = h.clone();
    bad[1].1 = "1001".into();
    assert_eq!(
        v.verify(&bad, b"payload", 1000),
        Err(VerifyError::BadSignature)
    );

    let b64 = Scheme::Generic(Generic {
        header: "Sig".into(),
        algorithm: Algorithm::Sha256,
        encoding: Encoding::Base64,
        prefix: String::new(),
        template: Template::parse("{body}").unwrap(),
        timestamp_header: None,
        id_header: None,
    });
    let v = verifier(b64, &["k"]);
    let h = v.sign_headers("", 0, b"x").unwrap();
    assert!(v.verify(&h, b"x", 0).is_ok());
}

#[test]
fn templates_and_settings_are_checked() {
    assert!(Template::parse("{timestamp}.").is_err());
    assert!(Template::parse("{body}{body}").is_err());
    let g = Generic {
        header: "X".into(),
        algorithm: Algorithm::Sha256,
        encoding: Encoding::Hex,
        prefix: String::new(),
        template: Template::parse("{timestamp}.{body}").unwrap(),
        timestamp_header: None,
        id_header: None,
    };
    assert!(g.validate().is_err());
    assert!(Verifier::new(Scheme::Stripe, vec![], 300).is_err());
    assert!(Key::parse(&Scheme::Stripe, " ").is_err());
    assert!(Key::parse(&Scheme::Standard, "whsec_***").is_err());
    assert!(Signer::new("whpk_AAAA").is_err());
}

#[test]
fn secrets_are_not_debug_printed() {
    let k = Key::parse(&Scheme::Stripe, "whsec_supersecret").unwrap();
    assert!(!format!("{k:?}").contains("supersecret"));
    let s = Signer::new(STD_SECRET).unwrap();
    assert!(!format!("{s:?}").contains("MfKQ"));
}

#[test]
fn an_unsigned_id_header_is_told_apart() {
    let id_signed = |template: &str, id: Option<&str>| match generic(template, Some("X-Ts"), id) {
        Scheme::Generic(g) => g.id_is_signed(),
        _ => unreachable!(),
    };
    // The id header outside the signed content: a replay with a new id
    // would verify.
    assert!(!id_signed("{timestamp}.{body}", Some("X-Id")));
    assert!(id_signed("{id}.{timestamp}.{body}", Some("X-Id")));
    // No id header: the id is the hash of the (signed) body.
    assert!(id_signed("{timestamp}.{body}", None));
}
