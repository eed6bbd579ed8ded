//! Integration tests of the certificate checks. Fixtures are generated with
//! rcgen at test time, except the few rcgen cannot make (see
//! `fixtures/README.md`).

// Fixture helpers are not `#[test]` functions, so clippy's test exemption
// does not reach them; a failing helper should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, IsCa, Issuer, KeyPair,
    PKCS_ECDSA_P384_SHA384, PKCS_ED25519, PKCS_RSA_SHA256, RsaKeySize,
};
use time::{Duration, OffsetDateTime};
use tokengate_tls::{
    CertError, CheckOptions, KeyFormat, KeyType, PemProblem, SubjectAltName, TrustRoots,
    check_certificate,
};

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    cert: Certificate,
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn root(cn: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    Ca { params, key, cert }
}

fn intermediate(cn: &str, parent: &Ca) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let issuer = Issuer::from_params(&parent.params, &parent.key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    Ca { params, key, cert }
}

struct Leaf {
    cert: Certificate,
    key: KeyPair,
}

fn leaf_with(
    cn: &str,
    names: &[&str],
    issuer: &Ca,
    key: KeyPair,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Leaf {
    let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.not_before = not_before;
    params.not_after = not_after;
    let issuer = Issuer::from_params(&issuer.params, &issuer.key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    Leaf { cert, key }
}

fn leaf(cn: &str, names: &[&str], issuer: &Ca) -> Leaf {
    leaf_with(
        cn,
        names,
        issuer,
        KeyPair::generate().unwrap(),
        now() - Duration::days(1),
        now() + Duration::days(90),
    )
}

/// root → intermediate → leaf for shop.example.com.
struct Chain {
    root: Ca,
    inter: Ca,
    leaf: Leaf,
}

fn chain() -> Chain {
    let root = root("Test Root CA");
    let inter = intermediate("Test Intermediate CA", &root);
    let leaf = leaf(
        "shop.example.com",
        &["shop.example.com", "www.example.com"],
        &inter,
    );
    Chain { root, inter, leaf }
}

fn bundle(certs: &[&Certificate]) -> String {
    certs.iter().map(|c| c.pem()).collect()
}

fn roots_of(ca: &Ca) -> TrustRoots {
    TrustRoots::from_pem(ca.cert.pem().as_bytes()).unwrap()
}

fn check(
    bundle: &str,
    key: &str,
    options: &CheckOptions<'_>,
) -> Result<tokengate_tls::CheckedCertificate, CertError> {
    check_certificate(bundle.as_bytes(), key.as_bytes(), options)
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[test]
fn shuffled_bundle_is_ordered_leaf_to_root_and_trusted() {
    let c = chain();
    let roots = roots_of(&c.root);
    let pem = bundle(&[&c.inter.cert, &c.root.cert, &c.leaf.cert]);
    let options = CheckOptions::new(now(), &roots).domain("shop.example.com");
    let checked = check(&pem, &c.leaf.key.serialize_pem(), &options).unwrap();

    let expected: Vec<&[u8]> = vec![c.leaf.cert.der(), c.inter.cert.der(), c.root.cert.der()];
    let got: Vec<&[u8]> = checked.chain.iter().map(|d| d.as_ref()).collect();
    assert_eq!(got, expected);

    let info = &checked.info;
    assert!(info.trusted);
    assert_eq!(info.common_names, vec!["shop.example.com".to_owned()]);
    assert_eq!(info.subject, "CN=shop.example.com");
    assert_eq!(info.issuer, "CN=Test Intermediate CA");
    assert_eq!(
        info.sans,
        vec![
            SubjectAltName::Dns("shop.example.com".into()),
            SubjectAltName::Dns("www.example.com".into())
        ]
    );
    assert_eq!(info.key_type, KeyType::EcdsaP256);
    assert_eq!(info.sha256_fingerprint.len(), 32 * 3 - 1);
    assert!(info.sha256_fingerprint.split(':').all(|b| b.len() == 2));
    assert!(!info.serial.is_empty());
    let not_after = OffsetDateTime::parse(
        &info.not_after,
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(not_after > now() + Duration::days(89));
    assert!(
        OffsetDateTime::parse(
            &info.not_before,
            &time::format_description::well_known::Rfc3339
        )
        .is_ok()
    );
}

#[test]
fn chain_verifies_against_roots_given_apart_from_the_bundle() {
    let c = chain();
    let roots = roots_of(&c.root);
    let pem = bundle(&[&c.leaf.cert, &c.inter.cert]);
    let checked = check(
        &pem,
        &c.leaf.key.serialize_pem(),
        &CheckOptions::new(now(), &roots),
    )
    .unwrap();
    assert!(checked.info.trusted);
    assert_eq!(checked.chain.len(), 2);
}

#[test]
fn unknown_root_is_not_an_error_but_untrusted() {
    let c = chain();
    let other = roots_of(&root("Some Other Root"));
    let pem = bundle(&[&c.root.cert, &c.leaf.cert, &c.inter.cert]);
    for roots in [TrustRoots::new(), other] {
        let checked = check(
            &pem,
            &c.leaf.key.serialize_pem(),
            &CheckOptions::new(now(), &roots),
        )
        .unwrap();
        assert!(!checked.info.trusted);
        assert_eq!(checked.chain.len(), 3);
    }
}

#[test]
fn missing_intermediate_is_reported_by_name() {
    let c = chain();
    let roots = roots_of(&c.root);
    // Root present (in the bundle and as anchor), intermediate missing.
    let pem = bundle(&[&c.leaf.cert, &c.root.cert]);
    let err = check(
        &pem,
        &c.leaf.key.serialize_pem(),
        &CheckOptions::new(now(), &roots),
    )
    .err()
    .unwrap();
    match &err {
        CertError::ChainIncomplete { cn, issuer } => {
            assert_eq!(cn, "shop.example.com");
            assert_eq!(issuer, "CN=Test Intermediate CA");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("intermediate"), "{err}");

    // Intermediate present but its issuer neither in the bundle nor trusted:
    // allowed (a private root), served as far as it goes, untrusted.
    let pem = bundle(&[&c.leaf.cert, &c.inter.cert]);
    let checked = check(
        &pem,
        &c.leaf.key.serialize_pem(),
        &CheckOptions::new(now(), &TrustRoots::new()),
    )
    .unwrap();
    assert!(!checked.info.trusted);
    assert_eq!(checked.chain.len(), 2);

    // A leaf alone whose issuer is unknown.
    let err = check(
        &bundle(&[&c.leaf.cert]),
        &c.leaf.key.serialize_pem(),
        &CheckOptions::new(now(), &TrustRoots::new()),
    )
    .err()
    .unwrap();
    assert!(
        matches!(&err, CertError::ChainIncomplete { cn, .. } if cn == "shop.example.com"),
        "{err:?}"
    );
}

#[test]
fn wrong_key_is_rejected() {
    let c = chain();
    let roots = roots_of(&c.root);
    let other_key = KeyPair::generate().unwrap();
    let pem = bundle(&[&c.leaf.cert, &c.inter.cert]);
    let err = check(
        &pem,
        &other_key.serialize_pem(),
        &CheckOptions::new(now(), &roots),
    )
    .err()
    .unwrap();
    assert!(
        matches!(&err, CertError::KeyMismatch { cn } if cn == "shop.example.com"),
        "{err:?}"
    );
    assert!(err.to_string().contains("does not match"), "{err}");

    // The intermediate's key does not count either.
    let err = check(
        &pem,
        &c.inter.key.serialize_pem(),
        &CheckOptions::new(now(), &roots),
    )
    .err()
    .unwrap();
    assert!(matches!(err, CertError::KeyMismatch { .. }), "{err:?}");
}

#[test]
fn expired_and_not_yet_valid_leaves() {
    let ca = root("Test Root CA");
    let roots = roots_of(&ca);
    let expired = leaf_with(
        "old.example.com",
        &["old.example.com"],
        &ca,
        KeyPair::generate().unwrap(),
        now() - Duration::days(100),
        now() - Duration::days(10),
    );
    let pem = bundle(&[&expired.cert]);
    let key = expired.key.serialize_pem();
    let err = check(&pem, &key, &CheckOptions::new(now(), &roots))
        .err()
        .unwrap();
    assert!(
        matches!(&err, CertError::Expired { cn, .. } if cn == "old.example.com"),
        "{err:?}"
    );
    // `now` is the caller's: at a time inside the validity period it passes.
    check(
        &pem,
        &key,
        &CheckOptions::new(now() - Duration::days(50), &roots),
    )
    .unwrap();

    let future = leaf_with(
        "new.example.com",
        &["new.example.com"],
        &ca,
        KeyPair::generate().unwrap(),
        now() + Duration::days(10),
        now() + Duration::days(100),
    );
    let pem = bundle(&[&future.cert]);
    let key = future.key.serialize_pem();
    let err = check(&pem, &key, &CheckOptions::new(now(), &roots))
        .err()
        .unwrap();
    assert!(
        matches!(&err, CertError::NotYetValid { cn, .. } if cn == "new.example.com"),
        "{err:?}"
    );
    check(
        &pem,
        &key,
        &CheckOptions::new(now() + Duration::days(50), &roots),
    )
    .unwrap();
}

#[test]
fn domains_must_be_covered_with_wildcards_for_one_label() {
    let ca = root("Test Root CA");
    let roots = roots_of(&ca);
    let l = leaf("*.example.com", &["*.example.com", "192.0.2.10"], &ca);
    let pem = bundle(&[&l.cert]);
    let key = l.key.serialize_pem();
    let run = |domain: &str| check(&pem, &key, &CheckOptions::new(now(), &roots).domain(domain));

    run("a.example.com").unwrap();
    run("192.0.2.10").unwrap();
    for uncovered in [
        "example.com",
        "a.b.example.com",
        "a.example.org",
        "192.0.2.11",
    ] {
        let err = run(uncovered).err().unwrap();
        match &err {
            CertError::DomainNotCovered { cn, domain, sans } => {
                assert_eq!(cn, "*.example.com");
                assert_eq!(domain, uncovered);
                assert_eq!(
                    sans,
                    &vec!["*.example.com".to_owned(), "192.0.2.10".to_owned()]
                );
            }
            other => panic!("{uncovered}: unexpected {other:?}"),
        }
    }
    assert!(matches!(
        run("not a domain"),
        Err(CertError::InvalidDomain { .. })
    ));
    let checked = run("a.example.com").unwrap();
    assert!(
        checked
            .info
            .sans
            .contains(&SubjectAltName::Ip("192.0.2.10".parse().unwrap()))
    );
}

#[test]
fn rsa_1024_is_too_weak() {
    let err = check(
        &fixture("rsa1024.crt"),
        &fixture("rsa1024.key"),
        &CheckOptions::new(now(), &TrustRoots::new()),
    )
    .err()
    .unwrap();
    assert!(
        matches!(&err, CertError::WeakRsaKey { cn, bits: 1024 } if cn == "weak-rsa.test"),
        "{err:?}"
    );
    assert!(err.to_string().contains("2048"), "{err}");
}

#[test]
fn rsa_2048_ecdsa_p384_and_ed25519_are_accepted() {
    let ca = root("Test Root CA");
    let roots = roots_of(&ca);
    let cases = [
        (
            KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048).unwrap(),
            KeyType::Rsa { bits: 2048 },
        ),
        (
            KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap(),
            KeyType::EcdsaP384,
        ),
        (
            KeyPair::generate_for(&PKCS_ED25519).unwrap(),
            KeyType::Ed25519,
        ),
    ];
    for (key, expected) in cases {
        let l = leaf_with(
            "k.example.com",
            &["k.example.com"],
            &ca,
            key,
            now() - Duration::days(1),
            now() + Duration::days(1),
        );
        let checked = check(
            &bundle(&[&l.cert]),
            &l.key.serialize_pem(),
            &CheckOptions::new(now(), &roots),
        )
        .unwrap();
        assert_eq!(checked.info.key_type, expected);
        assert!(checked.info.trusted);
    }
}

#[test]
fn sha1_signature_on_a_leaf_is_rejected() {
    let err = check(
        &fixture("sha1.crt"),
        &fixture("sha1.key"),
        &CheckOptions::new(now(), &TrustRoots::new()),
    )
    .err()
    .unwrap();
    assert!(
        matches!(&err, CertError::WeakSignature { cn, algorithm } if cn == "sha1.test" && algorithm.contains("SHA-1")),
        "{err:?}"
    );
}

#[test]
fn sha1_signature_on_a_self_signed_root_is_fine() {
    let root_pem = fixture("sha1-root.crt");
    let roots = TrustRoots::from_pem(root_pem.as_bytes()).unwrap();
    let pem = format!("{root_pem}{}", fixture("modern-leaf.crt"));
    let checked = check(
        &pem,
        &fixture("modern-leaf.key"),
        &CheckOptions::new(now(), &roots).domain("modern.test"),
    )
    .unwrap();
    assert!(checked.info.trusted);
    assert_eq!(checked.chain.len(), 2);
}

#[test]
fn truncated_pem_names_block_and_line() {
    let c = chain();
    let pem = bundle(&[&c.leaf.cert, &c.inter.cert]);
    let second_begin = pem.match_indices("-----BEGIN").nth(1).unwrap().0;
    let second_line = pem[..second_begin].lines().count() + 1;
    let truncated = &pem[..pem.len() - 40];
    let err = check(
        truncated,
        &c.leaf.key.serialize_pem(),
        &CheckOptions::new(now(), &TrustRoots::new()),
    )
    .err()
    .unwrap();
    assert!(
        matches!(&err, CertError::Pem { block: 2, line, problem: PemProblem::MissingEnd, .. } if *line == second_line),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&format!(
            "block 2 (CERTIFICATE) starting at line {second_line}"
        )),
        "{message}"
    );
}

#[test]
fn garbage_in_block_2_names_block_and_line() {
    let c = chain();
    let pem = bundle(&[&c.leaf.cert, &c.inter.cert]);
    let mut lines: Vec<String> = pem.lines().map(str::to_owned).collect();
    let second = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("-----BEGIN"))
        .nth(1)
        .unwrap()
        .0;
    lines[second + 2] = "this is not base64 !".to_owned();
    let damaged = lines.join("\n");
    let err = check(
        &damaged,
        &c.leaf.key.serialize_pem(),
        &CheckOptions::new(now(), &TrustRoots::new()),
    )
    .err()
    .unwrap();
    let bad_line = second + 3;
    assert!(
        matches!(&err, CertError::Pem { block: 2, problem: PemProblem::InvalidBase64 { line }, .. } if *line == bad_line),
        "{err:?}"
    );
    assert!(err.to_string().contains(&format!(
        "block 2 (CERTIFICATE) starting at line {}",
        second + 1
    )));

    // Valid base64 that is not a certificate.
    let mut lines: Vec<String> = pem.lines().map(str::to_owned).collect();
    let end = lines
        .iter()
        .rposition(|l| l.starts_with("-----END"))
        .unwrap();
    lines.splice(second + 1..end, ["AAECAwQFBgcICQ==".to_owned()]);
    let err = check(
        &lines.join("\n"),
        &c.leaf.key.serialize_pem(),
        &CheckOptions::new(now(), &TrustRoots::new()),
    )
    .err()
    .unwrap();
    assert!(
        matches!(
            &err,
            CertError::Pem {
                block: 2,
                problem: PemProblem::NotACertificate { .. },
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn key_file_problems() {
    let c = chain();
    let pem = bundle(&[&c.leaf.cert, &c.inter.cert]);
    let roots = roots_of(&c.root);
    let options = CheckOptions::new(now(), &roots);
    let key = c.leaf.key.serialize_pem();

    assert!(matches!(
        check(&pem, "", &options),
        Err(CertError::NoPemBlock { .. })
    ));
    let two = format!("{key}{}", c.inter.key.serialize_pem());
    assert!(matches!(
        check(&pem, &two, &options),
        Err(CertError::MultipleKeys { count: 2 })
    ));
    let encrypted =
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAEC\n-----END ENCRYPTED PRIVATE KEY-----\n";
    assert!(matches!(
        check(&pem, encrypted, &options),
        Err(CertError::Pem {
            problem: PemProblem::EncryptedKey,
            ..
        })
    ));
    let not_a_key = "-----BEGIN PRIVATE KEY-----\nAAECAwQF\n-----END PRIVATE KEY-----\n";
    assert!(matches!(
        check(&pem, not_a_key, &options),
        Err(CertError::Pem {
            problem: PemProblem::UnsupportedKey,
            ..
        })
    ));
    // A key file that also holds the certificate is fine.
    check(&pem, &format!("{}{key}", c.leaf.cert.pem()), &options).unwrap();
    // A key inside the certificate bundle is refused, without echoing it.
    let with_key = format!("{pem}{key}");
    let err = check(&with_key, &key, &options).err().unwrap();
    assert!(
        matches!(
            &err,
            CertError::Pem {
                block: 3,
                problem: PemProblem::UnexpectedLabel { .. },
                ..
            }
        ),
        "{err:?}"
    );
    let body = key.lines().nth(1).unwrap();
    assert!(!err.to_string().contains(body));
    assert!(!format!("{err:?}").contains(body));
}

#[test]
fn debug_never_prints_the_private_key() {
    let c = chain();
    let pem = bundle(&[&c.leaf.cert, &c.inter.cert]);
    let roots = roots_of(&c.root);
    let checked = check(
        &pem,
        &c.leaf.key.serialize_pem(),
        &CheckOptions::new(now(), &roots),
    )
    .unwrap();
    let secret = checked.key.secret_der();
    let secret_bytes: &[u8] = secret.secret_der();
    assert_eq!(secret_bytes, c.leaf.key.serialized_der());

    for debug in [
        format!("{checked:?}"),
        format!("{checked:#?}"),
        format!("{:?}", checked.key),
    ] {
        assert!(debug.contains("[REDACTED]"), "{debug}");
        // Neither the bytes as Rust prints a slice nor any run of them.
        assert!(!debug.contains(&format!("{secret_bytes:?}")));
        let first_bytes = format!("{:?}", &secret_bytes[..6]);
        assert!(
            !debug.contains(first_bytes.trim_end_matches(']')),
            "{debug}"
        );
    }
}

#[test]
fn older_key_encodings_load() {
    let checked = check(
        &format!("{}{}", fixture("modern-leaf.crt"), fixture("sha1-root.crt")),
        &fixture("modern-leaf.sec1.key"),
        &CheckOptions::new(now(), &TrustRoots::new()),
    )
    .unwrap();
    assert_eq!(checked.key.format(), KeyFormat::Sec1);
    assert!(!checked.info.trusted);

    // The PKCS#1 key loads and matches: the check goes on to the signature.
    let err = check(
        &fixture("sha1.crt"),
        &fixture("sha1.pkcs1.key"),
        &CheckOptions::new(now(), &TrustRoots::new()),
    )
    .err()
    .unwrap();
    assert!(matches!(err, CertError::WeakSignature { .. }), "{err:?}");
}

fn local(roots: &TrustRoots) -> CheckOptions<'_> {
    CheckOptions::new(now(), roots)
        .domain("localhost")
        .domain("127.0.0.1")
}

#[test]
fn self_signed_leaf_is_trusted_only_when_it_is_a_root() {
    let key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.self_signed(&key).unwrap();
    let pem = cert.pem();
    let key_pem = key.serialize_pem();

    let untrusted = check(&pem, &key_pem, &local(&TrustRoots::new())).unwrap();
    assert!(!untrusted.info.trusted);
    assert_eq!(untrusted.chain.len(), 1);
    assert_eq!(untrusted.info.issuer, "CN=localhost");

    let roots = TrustRoots::from_pem(pem.as_bytes()).unwrap();
    assert!(check(&pem, &key_pem, &local(&roots)).unwrap().info.trusted);
}

#[test]
fn trust_roots_accept_der_certificates() {
    let c = chain();
    let mut roots = TrustRoots::new();
    roots.add_der_certificate(c.root.cert.der()).unwrap();
    assert_eq!(roots.len(), 1);
    let pem = bundle(&[&c.leaf.cert, &c.inter.cert]);
    let checked = check(
        &pem,
        &c.leaf.key.serialize_pem(),
        &CheckOptions::new(now(), &roots),
    )
    .unwrap();
    assert!(checked.info.trusted);
    assert!(roots_of(&c.root).len() == 1);
    assert!(matches!(
        TrustRoots::from_pem(b"nothing"),
        Err(CertError::NoPemBlock { .. })
    ));
    assert!(roots.add_der_certificate(b"junk").is_err());
}

#[test]
fn issuer_is_chosen_by_signature_not_just_by_name() {
    let c = chain();
    let roots = roots_of(&c.root);
    // Same name as the real intermediate, different key, also issued by the root.
    let impostor = intermediate("Test Intermediate CA", &c.root);
    let pem = bundle(&[&impostor.cert, &c.leaf.cert, &c.inter.cert]);
    let checked = check(
        &pem,
        &c.leaf.key.serialize_pem(),
        &CheckOptions::new(now(), &roots),
    )
    .unwrap();
    let got: Vec<&[u8]> = checked.chain.iter().map(|d| d.as_ref()).collect();
    assert_eq!(
        got,
        vec![c.leaf.cert.der().as_ref(), c.inter.cert.der().as_ref()]
    );

    // With only the impostor, the real issuer is missing.
    let pem = bundle(&[&c.leaf.cert, &impostor.cert]);
    let err = check(
        &pem,
        &c.leaf.key.serialize_pem(),
        &CheckOptions::new(now(), &roots),
    )
    .err()
    .unwrap();
    assert!(
        matches!(&err, CertError::ChainIncomplete { cn, .. } if cn == "shop.example.com"),
        "{err:?}"
    );
}

/// The content octets of a DER SEQUENCE (what webpki-roots stores).
fn strip_sequence_header(der: &[u8]) -> &[u8] {
    assert_eq!(der[0], 0x30);
    let first = usize::from(der[1]);
    let header = if first < 0x80 { 2 } else { 2 + (first & 0x7f) };
    &der[header..]
}

#[test]
fn trust_anchors_in_webpki_form_are_accepted() {
    use rustls::pki_types::{Der, TrustAnchor};
    use x509_parser::prelude::{FromDer, X509Certificate};

    let c = chain();
    let (_, root) = X509Certificate::from_der(c.root.cert.der()).unwrap();
    let anchor = TrustAnchor {
        subject: Der::from_slice(strip_sequence_header(root.subject().as_raw())),
        subject_public_key_info: Der::from_slice(strip_sequence_header(root.public_key().raw)),
        name_constraints: None,
    };
    let mut roots = TrustRoots::new();
    roots.add_trust_anchor(&anchor);
    let pem = bundle(&[&c.leaf.cert, &c.inter.cert]);
    let checked = check(
        &pem,
        &c.leaf.key.serialize_pem(),
        &CheckOptions::new(now(), &roots),
    )
    .unwrap();
    assert!(checked.info.trusted);
}
