#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)] // test code: fail loudly
//! The store conformance suite. Every test runs against SQLite and against
//! PostgreSQL (URL from `TOKENGATE_TEST_POSTGRES_URL`, one schema per test).
//! In CI (`CI=true`) a missing PostgreSQL URL is a failure, not a skip.

use std::sync::Arc;

use aws_lc_rs::signature::Ed25519KeyPair;
use tokengate_audit::chain::ChainHash;
use tokengate_audit::{Action, AuditEvent, Ident, Outcome, SignedHead, Verifier};
use tokengate_store::*;

struct TestSigner(Ed25519KeyPair);
impl HeadSigner for TestSigner {
    fn sign(&self, seq: u64, hash: &ChainHash) -> Vec<u8> {
        SignedHead::sign(&self.0, seq, *hash).signature
    }
}

fn signer() -> TestSigner {
    TestSigner(Ed25519KeyPair::from_seed_unchecked(&[3u8; 32]).unwrap())
}

fn public_key() -> Vec<u8> {
    tokengate_audit::head::public_key(&signer().0)
}

struct Fixture {
    store: Store,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("t.db")).await.unwrap();
    Fixture {
        store,
        _dir: Some(dir),
    }
}

async fn postgres(name: &str) -> Option<Fixture> {
    let url = match std::env::var("TOKENGATE_TEST_POSTGRES_URL") {
        Ok(u) => u,
        Err(_) => {
            assert!(
                std::env::var("CI").is_err(),
                "CI must set TOKENGATE_TEST_POSTGRES_URL"
            );
            eprintln!("TOKENGATE_TEST_POSTGRES_URL unset: skipping the PostgreSQL half of {name}");
            return None;
        }
    };
    let schema = format!("conf_{name}_{}", std::process::id());
    // Start from an empty schema.
    let admin = Store::connect(&url).await.unwrap();
    admin
        .execute_raw_for_tests(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .unwrap();
    admin.close().await;
    let store = Store::connect_with_schema(&url, Some(&schema))
        .await
        .unwrap();
    Some(Fixture { store, _dir: None })
}

/// Define a test that runs `$body(store)` on both backends.
macro_rules! conformance {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let f = super::sqlite().await;
                super::$body(&f.store).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(f) = super::postgres(stringify!($name)).await {
                    super::$body(&f.store).await;
                }
            }
        }
    };
}

fn event(action: Action, token: &str) -> AuditEvent {
    let mut e = AuditEvent::new(
        1_700_000_000_000,
        action,
        Outcome::Success,
        Ident::from_static("key_test"),
    );
    e.token = Ident::new(token);
    e
}

fn token_row(token: &str, fp: u8, deterministic: bool) -> TokenRow {
    TokenRow {
        tenant: "default".into(),
        token: token.into(),
        format: "opaque".into(),
        deterministic,
        fingerprint: vec![fp; 32],
        fp_version: 1,
        kek_version: 1,
        wrapped_dek: vec![1, 2, 3],
        ciphertext: vec![4, 5, 6],
        brand: "visa".into(),
        bin: "411111".into(),
        last4: "1111".into(),
        exp_month: 12,
        exp_year: 2030,
        metadata: Some(r#"{"order":"o-1"}"#.into()),
        created_at: 1,
        has_cvc: false,
    }
}

fn insert_job(row: TokenRow) -> Job {
    let ev = event(Action::TokenCreate, &row.token.clone());
    Job {
        ops: vec![Op::InsertToken(row)],
        events: vec![ev],
        events_if_affected: vec![],
    }
}

/// Commit through the store's write path with the test signer.
async fn commit(store: &Store, jobs: &[Job]) -> Result<Vec<JobResult>, StoreError> {
    store.commit(jobs.to_vec(), Arc::new(signer())).await
}

async fn verify(store: &Store) -> u64 {
    let mut v = Verifier::default();
    let mut after = 0;
    loop {
        let page = store.audit_events(after, 1000).await.unwrap();
        if page.is_empty() {
            break;
        }
        for r in &page {
            v.push(r).unwrap();
            after = r.seq;
        }
    }
    v.finish(store.audit_head().await.unwrap().as_ref(), &public_key())
        .unwrap()
        .records
}

async fn tokens_round_trip(store: &Store) {
    let res = commit(store, &[insert_job(token_row("tok_a", 7, false))])
        .await
        .unwrap();
    assert_eq!(res, vec![Ok(vec![OpOutput::Affected(1)])]);
    let got = store
        .get_token("default", "tok_a", 0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, token_row("tok_a", 7, false));
    assert!(
        store
            .get_token("other", "tok_a", 0)
            .await
            .unwrap()
            .is_none(),
        "tenants are separate"
    );
    assert!(
        store
            .get_token("default", "tok_b", 0)
            .await
            .unwrap()
            .is_none()
    );
    let found = store
        .find_by_fingerprint("default", &[7u8; 32], 10)
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(verify(store).await, 1);
}
conformance!(tokens, tokens_round_trip);

async fn conflicts_roll_back_alone(store: &Store) {
    commit(store, &[insert_job(token_row("tok_a", 1, true))])
        .await
        .unwrap();
    let res = commit(
        store,
        &[
            insert_job(token_row("tok_a", 2, false)), // same token
            insert_job(token_row("tok_b", 1, true)),  // same deterministic fingerprint
            insert_job(token_row("tok_c", 1, false)), // fine: not deterministic
        ],
    )
    .await
    .unwrap();
    assert_eq!(res[0], Err(JobError::Conflict));
    assert_eq!(res[1], Err(JobError::Conflict));
    assert!(res[2].is_ok());
    assert!(
        store
            .get_token("default", "tok_b", 0)
            .await
            .unwrap()
            .is_none()
    );
    let det = store
        .find_deterministic("default", "opaque", &[1u8; 32])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(det.token, "tok_a");
    // Only the committed jobs left audit records.
    assert_eq!(verify(store).await, 2);
}
conformance!(conflicts, conflicts_roll_back_alone);

async fn audit_failure_fails_closed(store: &Store) {
    commit(store, &[insert_job(token_row("tok_a", 1, false))])
        .await
        .unwrap();
    let trigger = match store.backend() {
        Backend::Sqlite => {
            "CREATE TRIGGER audit_off BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'audit disk full'); END"
        }
        Backend::Postgres => {
            "CREATE FUNCTION audit_off() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'audit disk full'; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER audit_off BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION audit_off()"
        }
    };
    store.execute_raw_for_tests(trigger).await.unwrap();
    let err = commit(store, &[insert_job(token_row("tok_b", 2, false))])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AuditWrite(_)), "{err:?}");
    assert!(
        store
            .get_token("default", "tok_b", 0)
            .await
            .unwrap()
            .is_none(),
        "the record must not outlive its audit failure"
    );
    store
        .execute_raw_for_tests("DROP TRIGGER audit_off ON audit_events")
        .await
        .ok();
    store
        .execute_raw_for_tests("DROP TRIGGER audit_off")
        .await
        .ok();
    commit(store, &[insert_job(token_row("tok_b", 2, false))])
        .await
        .unwrap();
    assert_eq!(verify(store).await, 2);
}
conformance!(fail_closed, audit_failure_fails_closed);

async fn cvc_taken_once_and_expires(store: &Store) {
    let mut job = insert_job(token_row("tok_a", 1, false));
    job.ops.push(Op::InsertCvc(CvcRow {
        tenant: "default".into(),
        token: "tok_a".into(),
        key_version: 1,
        ciphertext: vec![9; 20],
        expires_at: 1000,
    }));
    let mut job_b = insert_job(token_row("tok_b", 2, false));
    job_b.ops.push(Op::InsertCvc(CvcRow {
        tenant: "default".into(),
        token: "tok_b".into(),
        key_version: 1,
        ciphertext: vec![8; 20],
        expires_at: 1000,
    }));
    commit(store, &[job, job_b]).await.unwrap();
    assert!(
        store
            .get_token("default", "tok_a", 999)
            .await
            .unwrap()
            .unwrap()
            .has_cvc
    );
    assert!(
        !store
            .get_token("default", "tok_a", 1000)
            .await
            .unwrap()
            .unwrap()
            .has_cvc
    );

    let take = |now| Job {
        ops: vec![Op::TakeCvc {
            tenant: "default".into(),
            token: "tok_a".into(),
            now,
        }],
        events: vec![event(Action::TokenReveal, "tok_a")],
        events_if_affected: vec![(0, event(Action::CvcDelete, "tok_a"))],
    };
    // Expired: not returned.
    let r = commit(store, &[take(1000)]).await.unwrap();
    assert_eq!(r[0], Ok(vec![OpOutput::Cvc(None)]));
    // Two takes in one batch: only the first gets it.
    let r = commit(store, &[take(999), take(999)]).await.unwrap();
    assert!(
        matches!(&r[0], Ok(v) if matches!(&v[0], OpOutput::Cvc(Some(c)) if c.ciphertext == vec![9; 20]))
    );
    assert_eq!(r[1], Ok(vec![OpOutput::Cvc(None)]));
    assert!(store.get_cvc("default", "tok_a").await.unwrap().is_none());

    assert_eq!(
        store.expired_cvcs(1000, 10).await.unwrap(),
        vec![("default".to_owned(), "tok_b".to_owned())]
    );
    let expire = Job {
        ops: vec![Op::ExpireCvc {
            tenant: "default".into(),
            token: "tok_b".into(),
            now: 1000,
        }],
        events: vec![],
        events_if_affected: vec![(0, event(Action::CvcExpire, "tok_b"))],
    };
    let r = commit(store, std::slice::from_ref(&expire)).await.unwrap();
    assert_eq!(r[0], Ok(vec![OpOutput::Affected(1)]));
    let r = commit(store, &[expire]).await.unwrap();
    assert_eq!(r[0], Ok(vec![OpOutput::Affected(0)]));
    // 2 creates + 3 reveals + 1 cvc_delete + 1 cvc_expire; the second expire wrote nothing.
    assert_eq!(verify(store).await, 7);
}
conformance!(cvc, cvc_taken_once_and_expires);

async fn delete_shreds_record_and_cvc(store: &Store) {
    let mut job = insert_job(token_row("tok_a", 1, false));
    job.ops.push(Op::InsertCvc(CvcRow {
        tenant: "default".into(),
        token: "tok_a".into(),
        key_version: 1,
        ciphertext: vec![9; 20],
        expires_at: i64::MAX,
    }));
    commit(store, &[job]).await.unwrap();
    let del = Job {
        ops: vec![Op::DeleteToken {
            tenant: "default".into(),
            token: "tok_a".into(),
        }],
        events: vec![event(Action::TokenDelete, "tok_a")],
        events_if_affected: vec![],
    };
    let r = commit(store, std::slice::from_ref(&del)).await.unwrap();
    assert_eq!(r[0], Ok(vec![OpOutput::Affected(1)]));
    assert!(
        store
            .get_token("default", "tok_a", 0)
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.get_cvc("default", "tok_a").await.unwrap().is_none());
    let r = commit(store, &[del]).await.unwrap();
    assert_eq!(r[0], Ok(vec![OpOutput::Affected(0)]));
}
conformance!(delete, delete_shreds_record_and_cvc);

async fn api_keys_and_key_ring(store: &Store) {
    let key = ApiKeyRow {
        id: "key_1".into(),
        tenant: "default".into(),
        name: "ci".into(),
        roles: vec!["tokenize".into(), "reveal".into()],
        key_version: 1,
        hash: vec![5; 32],
        created_at: 10,
        revoked_at: None,
    };
    let kr = KeyRow {
        purpose: "data".into(),
        version: 1,
        state: "active".into(),
        created_at: 10,
        wrapped: vec![1; 60],
    };
    let job = Job {
        ops: vec![
            Op::InsertApiKey(key.clone()),
            Op::InsertKey(kr.clone()),
            Op::SetMeta {
                key: "tenant".into(),
                value: "default".into(),
            },
        ],
        events: vec![event(Action::ApiKeyCreate, "key_1")],
        events_if_affected: vec![],
    };
    commit(store, &[job]).await.unwrap();
    assert_eq!(store.get_api_key("key_1").await.unwrap(), Some(key.clone()));
    assert_eq!(
        store.list_api_keys("default").await.unwrap(),
        vec![key.clone()]
    );
    assert_eq!(store.keys().await.unwrap(), vec![kr]);
    assert_eq!(
        store.meta("tenant").await.unwrap().as_deref(),
        Some("default")
    );
    let revoke = Job {
        ops: vec![Op::RevokeApiKey {
            tenant: "default".into(),
            id: "key_1".into(),
            now: 20,
        }],
        events: vec![],
        events_if_affected: vec![],
    };
    assert_eq!(
        commit(store, std::slice::from_ref(&revoke)).await.unwrap()[0],
        Ok(vec![OpOutput::Affected(1)])
    );
    assert_eq!(
        commit(store, &[revoke]).await.unwrap()[0],
        Ok(vec![OpOutput::Affected(0)])
    );
    assert_eq!(
        store
            .get_api_key("key_1")
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        Some(20)
    );
}
conformance!(api_keys, api_keys_and_key_ring);

fn cert_row(name: &str, not_after: i64) -> TlsCertRow {
    TlsCertRow {
        name: name.into(),
        source: "manual".into(),
        chain_pem: "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n".into(),
        info_json: r#"{"common_names":["shop.example.com"]}"#.into(),
        not_after,
        key_format: "pkcs8".into(),
        kek_version: 1,
        wrapped_dek: vec![9; 60],
        key_ciphertext: vec![8; 100],
        created_at: 10,
        updated_at: 10,
    }
}

fn tls_job(ops: Vec<TlsOp>) -> Job {
    Job {
        ops: ops.into_iter().map(Op::Tls).collect(),
        events: vec![event(Action::CertAdd, "tls")],
        events_if_affected: vec![],
    }
}

async fn tls_certificates_and_domains(store: &Store) {
    let a = cert_row("brave-falcon-0042", 2_000_000_000);
    let res = commit(
        store,
        &[tls_job(vec![
            TlsOp::InsertCert(a.clone()),
            TlsOp::InsertDomain(TlsDomainRow {
                domain: "shop.example.com".into(),
                cert_name: Some(a.name.clone()),
                created_at: 10,
                updated_at: 10,
            }),
            TlsOp::InsertDomain(TlsDomainRow {
                domain: "*.example.com".into(),
                cert_name: None,
                created_at: 10,
                updated_at: 10,
            }),
            // A domain pointing at a certificate that does not exist is not written.
            TlsOp::InsertDomain(TlsDomainRow {
                domain: "ghost.example.com".into(),
                cert_name: Some("no-such-cert".into()),
                created_at: 10,
                updated_at: 10,
            }),
        ])],
    )
    .await
    .unwrap();
    assert_eq!(
        res[0],
        Ok(vec![
            OpOutput::Affected(1),
            OpOutput::Affected(1),
            OpOutput::Affected(1),
            OpOutput::Affected(0)
        ])
    );
    assert_eq!(store.tls_certificates().await.unwrap(), vec![a.clone()]);
    assert_eq!(
        store.tls_certificate(&a.name).await.unwrap(),
        Some(a.clone())
    );
    assert_eq!(store.tls_certificate("nope").await.unwrap(), None);
    let domains = store.tls_domains().await.unwrap();
    assert_eq!(
        domains
            .iter()
            .map(|d| (d.domain.as_str(), d.cert_name.as_deref()))
            .collect::<Vec<_>>(),
        vec![
            ("*.example.com", None),
            ("shop.example.com", Some("brave-falcon-0042"))
        ]
    );

    // Duplicate name and duplicate domain: conflicts, rolled back alone.
    let dup = commit(
        store,
        &[
            tls_job(vec![TlsOp::InsertCert(a.clone())]),
            tls_job(vec![TlsOp::InsertDomain(TlsDomainRow {
                domain: "shop.example.com".into(),
                cert_name: None,
                created_at: 11,
                updated_at: 11,
            })]),
            tls_job(vec![TlsOp::InsertCert(cert_row("calm-otter-0001", 1))]),
        ],
    )
    .await
    .unwrap();
    assert_eq!(dup[0], Err(JobError::Conflict));
    assert_eq!(dup[1], Err(JobError::Conflict));
    assert!(dup[2].is_ok());

    // Update keeps the name and created_at.
    let mut updated = cert_row(&a.name, 2_100_000_000);
    updated.key_ciphertext = vec![7; 90];
    updated.kek_version = 2;
    updated.created_at = 999;
    updated.updated_at = 50;
    let res = commit(
        store,
        &[tls_job(vec![
            TlsOp::UpdateCert(updated.clone()),
            TlsOp::UpdateCert(cert_row("missing", 1)),
            TlsOp::UpdateDomain {
                domain: "*.example.com".into(),
                cert_name: Some("calm-otter-0001".into()),
                now: 51,
            },
            TlsOp::UpdateDomain {
                domain: "*.example.com".into(),
                cert_name: Some("no-such-cert".into()),
                now: 52,
            },
            TlsOp::UpdateDomain {
                domain: "nope.example.com".into(),
                cert_name: None,
                now: 52,
            },
        ])],
    )
    .await
    .unwrap();
    assert_eq!(
        res[0],
        Ok(vec![
            OpOutput::Affected(1),
            OpOutput::Affected(0),
            OpOutput::Affected(1),
            OpOutput::Affected(0),
            OpOutput::Affected(0)
        ])
    );
    let stored = store.tls_certificate(&a.name).await.unwrap().unwrap();
    assert_eq!(stored.created_at, 10);
    assert_eq!(stored.updated_at, 50);
    assert_eq!(stored.not_after, 2_100_000_000);
    assert_eq!(stored.key_ciphertext, vec![7; 90]);
    assert_eq!(stored.kek_version, 2);
    let wild = store.tls_domain("*.example.com").await.unwrap().unwrap();
    assert_eq!(wild.cert_name.as_deref(), Some("calm-otter-0001"));
    assert_eq!(wild.updated_at, 51);

    // Deleting a certificate leaves its domains without one.
    let res = commit(
        store,
        &[tls_job(vec![
            TlsOp::DeleteCert {
                name: a.name.clone(),
                now: 60,
            },
            TlsOp::DeleteDomain {
                domain: "*.example.com".into(),
            },
            TlsOp::DeleteDomain {
                domain: "*.example.com".into(),
            },
        ])],
    )
    .await
    .unwrap();
    assert_eq!(
        res[0],
        Ok(vec![
            OpOutput::Affected(1),
            OpOutput::Affected(1),
            OpOutput::Affected(0)
        ])
    );
    let shop = store.tls_domain("shop.example.com").await.unwrap().unwrap();
    assert_eq!(shop.cert_name, None);
    assert_eq!(shop.updated_at, 60);
    assert_eq!(store.tls_domain("*.example.com").await.unwrap(), None);
    assert_eq!(
        store
            .tls_certificates()
            .await
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        vec!["calm-otter-0001"]
    );
    // Every committed job was audited, in one intact chain.
    assert_eq!(verify(store).await, 4);
}
conformance!(tls_store, tls_certificates_and_domains);

async fn acme_state_challenges_and_accounts(store: &Store) {
    let mut row = AcmeDomainRow {
        domain: "shop.example.com".into(),
        status: "pending".into(),
        cert_name: None,
        last_error: None,
        next_attempt_at: 0,
        failures: 0,
        updated_at: 1,
    };
    let account = AcmeAccountRow {
        directory_url: "https://acme.test/dir".into(),
        kek_version: 1,
        wrapped_dek: vec![1; 60],
        sealed_credentials: vec![2; 200],
        created_at: 1,
    };
    let res = commit(
        store,
        &[tls_job(vec![
            TlsOp::PutAcmeDomain(row.clone()),
            TlsOp::PutAcmeChallenge {
                token: "tok-1".into(),
                key_authorization: "tok-1.thumb".into(),
                expires_at: 100,
            },
            TlsOp::PutAcmeChallenge {
                token: "tok-old".into(),
                key_authorization: "tok-old.thumb".into(),
                expires_at: 10,
            },
            TlsOp::InsertAcmeAccount(account.clone()),
        ])],
    )
    .await
    .unwrap();
    assert!(res[0].is_ok());
    assert_eq!(store.acme_domains().await.unwrap(), vec![row.clone()]);
    assert_eq!(
        store.acme_challenge("tok-1", 50).await.unwrap().as_deref(),
        Some("tok-1.thumb")
    );
    assert_eq!(
        store.acme_challenge("tok-1", 100).await.unwrap(),
        None,
        "expired"
    );
    assert_eq!(
        store.acme_account(&account.directory_url).await.unwrap(),
        Some(account.clone())
    );
    assert_eq!(store.acme_account("https://other/dir").await.unwrap(), None);

    // Upsert, conflict on a second account, challenge clean-up.
    row.status = "valid".into();
    row.cert_name = Some("acme-shop".into());
    row.failures = 2;
    row.last_error = Some("connection refused".into());
    row.next_attempt_at = 500;
    let res = commit(
        store,
        &[
            tls_job(vec![
                TlsOp::PutAcmeDomain(row.clone()),
                TlsOp::DeleteAcmeChallenge {
                    token: "nope".into(),
                    now: 20,
                },
            ]),
            tls_job(vec![TlsOp::InsertAcmeAccount(account.clone())]),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        res[0],
        Ok(vec![OpOutput::Affected(1), OpOutput::Affected(1)])
    );
    assert_eq!(res[1], Err(JobError::Conflict));
    assert_eq!(store.acme_domains().await.unwrap(), vec![row.clone()]);
    assert_eq!(
        store.acme_challenge("tok-old", 0).await.unwrap(),
        None,
        "expired answers swept"
    );

    // Claiming the next attempt: a compare-and-set on what was read.
    let claim = |seen: i64, until: i64| {
        tls_job(vec![TlsOp::ClaimAcmeDomain {
            domain: row.domain.clone(),
            seen,
            until,
        }])
    };
    let res = commit(store, &[claim(500, 900), claim(500, 950)])
        .await
        .unwrap();
    assert_eq!(res[0], Ok(vec![OpOutput::Affected(1)]));
    assert_eq!(
        res[1],
        Ok(vec![OpOutput::Affected(0)]),
        "second claim loses"
    );
    assert_eq!(store.acme_domains().await.unwrap()[0].next_attempt_at, 900);
    row.next_attempt_at = 900;

    // TLS-ALPN-01 answers: listed by domain, never with HTTP-01 tokens.
    let alpn = format!(
        "{}alpn.example.com",
        tokengate_store::ACME_ALPN_TOKEN_PREFIX
    );
    commit(
        store,
        &[tls_job(vec![TlsOp::PutAcmeChallenge {
            token: alpn.clone(),
            key_authorization: "ab".repeat(32),
            expires_at: 100,
        }])],
    )
    .await
    .unwrap();
    assert_eq!(
        store.acme_alpn_challenges(50).await.unwrap(),
        vec![("alpn.example.com".to_owned(), "ab".repeat(32))]
    );
    assert!(store.acme_alpn_challenges(100).await.unwrap().is_empty());
    commit(
        store,
        &[tls_job(vec![TlsOp::DeleteAcmeChallenge {
            token: alpn,
            now: 0,
        }])],
    )
    .await
    .unwrap();
    assert!(store.acme_alpn_challenges(0).await.unwrap().is_empty());
    assert!(store.acme_challenge("tok-1", 0).await.unwrap().is_some());
    let res = commit(
        store,
        &[tls_job(vec![
            TlsOp::DeleteAcmeChallenge {
                token: "tok-1".into(),
                now: 0,
            },
            TlsOp::DeleteAcmeDomain {
                domain: row.domain.clone(),
            },
        ])],
    )
    .await
    .unwrap();
    assert_eq!(
        res[0],
        Ok(vec![OpOutput::Affected(1), OpOutput::Affected(1)])
    );
    assert!(store.acme_domains().await.unwrap().is_empty());
    assert_eq!(store.acme_challenge("tok-1", 0).await.unwrap(), None);
    // 3 jobs before, plus two claims, one put and one delete.
    assert_eq!(verify(store).await, 7);
}
conformance!(acme_store, acme_state_challenges_and_accounts);

/// `n` token inserts submitted at once through one group committer (the
/// token of job `i` named `name(i)`), and their results in order.
async fn submit_concurrently(
    store: &Store,
    n: usize,
    name: impl Fn(usize) -> String,
) -> Vec<JobResult> {
    let committer = GroupCommitter::spawn(store.clone(), Arc::new(signer()), 64);
    let mut handles = Vec::new();
    for i in 0..n {
        let c = committer.clone();
        let job = insert_job(token_row(&name(i), (i % 250) as u8, false));
        handles.push(tokio::spawn(async move { c.submit(job).await }));
    }
    let mut results = Vec::new();
    for h in handles {
        results.push(h.await.unwrap().unwrap());
    }
    results
}

async fn group_commit_under_concurrency(store: &Store) {
    let results = submit_concurrently(store, 300, |i| format!("tok_{i}")).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(store.count_tokens().await.unwrap(), 300);
    assert_eq!(verify(store).await, 300);
    let for_token = store.audit_events_for(Some("tok_7"), None).await.unwrap();
    assert_eq!(for_token.len(), 1);
}
conformance!(group_commit, group_commit_under_concurrency);

/// Concurrent jobs of which most conflict (the same token submitted four
/// times): through the group committer (on SQLite the writer thread,
/// which applies jobs to an open batch as they arrive and redoes the
/// batch with savepoints on a conflict), exactly one job per token
/// succeeds, every other one is a conflict, and the audit chain holds
/// exactly the successful jobs' records.
async fn group_commit_with_conflicts(store: &Store) {
    let results = submit_concurrently(store, 200, |i| format!("tok_dup_{}", i % 50)).await;
    let (mut ok, mut conflicts) = (0, 0);
    for r in results {
        match r {
            Ok(_) => ok += 1,
            Err(JobError::Conflict) => conflicts += 1,
            Err(e) => panic!("unexpected job error {e:?}"),
        }
    }
    assert_eq!((ok, conflicts), (50, 150));
    assert_eq!(store.count_tokens().await.unwrap(), 50);
    assert_eq!(verify(store).await, 50);
}
conformance!(group_commit_conflicts, group_commit_with_conflicts);

async fn tampering_is_detected(store: &Store) {
    for i in 0..5 {
        commit(
            store,
            &[insert_job(token_row(&format!("tok_{i}"), i, false))],
        )
        .await
        .unwrap();
    }
    assert_eq!(verify(store).await, 5);
    store
        .execute_raw_for_tests("UPDATE audit_events SET event_json = REPLACE(event_json, 'key_test', 'key_evil') WHERE seq = 3")
        .await
        .unwrap();
    let mut v = Verifier::default();
    let err = store
        .audit_events(0, 100)
        .await
        .unwrap()
        .iter()
        .try_for_each(|r| v.push(r))
        .unwrap_err();
    assert_eq!(err.seq(), Some(3));
}
conformance!(tampering, tampering_is_detected);

/// The audit tree's stored hashes and checkpoints: appended in order, read
/// back by index and by range, and a second append of the same range or size
/// is a conflict that leaves nothing behind (two checkpointers racing).
async fn audit_tree_and_checkpoints(store: &Store) {
    // More than one multi-row chunk on PostgreSQL (500 rows each).
    let hashes: Vec<[u8; 32]> = (0..1200u32)
        .map(|i| {
            let mut h = [0u8; 32];
            h[..4].copy_from_slice(&i.to_be_bytes());
            h
        })
        .collect();
    let cp = |size: u64| CheckpointRow {
        tree_size: size,
        root: [size as u8; 32],
        note: format!("origin\n{size}\nroot\n"),
        created_at: 1,
    };
    let job = |first: u64, hs: &[[u8; 32]], size: u64| Job {
        ops: vec![
            Op::AppendTreeHashes {
                first_index: first,
                hashes: hs.to_vec(),
            },
            Op::InsertCheckpoint(cp(size)),
        ],
        ..Job::default()
    };
    let r = commit(
        store,
        &[
            job(0, &hashes[..1000], 500),
            job(1000, &hashes[1000..], 600),
        ],
    )
    .await
    .unwrap();
    assert!(r.iter().all(Result::is_ok), "{r:?}");
    // Racing a checkpoint already made: conflict, and nothing of it stays.
    let r = commit(store, &[job(1000, &[[9u8; 32]; 3], 601)])
        .await
        .unwrap();
    assert_eq!(r[0], Err(JobError::Conflict));
    assert!(store.checkpoints(600, 10).await.unwrap().is_empty());

    let got = store
        .audit_tree_hashes(&[0, 999, 1000, 1199, 5000])
        .await
        .unwrap();
    assert_eq!(got.len(), 4);
    assert_eq!(got[&999], hashes[999]);
    assert_eq!(got[&1199], hashes[1199]);
    let range = store.audit_tree_range(995, 10).await.unwrap();
    assert_eq!(range.len(), 10);
    assert!(range.iter().all(|(i, h)| hashes[*i as usize] == *h));
    assert_eq!(range[0].0, 995);
    assert_eq!(store.latest_checkpoint().await.unwrap(), Some(cp(600)));
    assert_eq!(
        store.checkpoints(0, 10).await.unwrap(),
        vec![cp(500), cp(600)]
    );
}
conformance!(audit_tree, audit_tree_and_checkpoints);

/// The checkpointer's read: one leaf hash per record, in order, paged, and
/// equal to the RFC 6962 hash of the stored `event_json` (on SQLite it is
/// read by a connection of its own, not sqlx; both must agree).
async fn audit_leaf_hashes_match_records(store: &Store) {
    let jobs: Vec<Job> = (0..7)
        .map(|i| Job {
            events: vec![event(Action::TokenCreate, &format!("tok_leaf_{i}"))],
            ..Job::default()
        })
        .collect();
    let r = commit(store, &jobs).await.unwrap();
    assert!(r.iter().all(Result::is_ok), "{r:?}");
    let records = store.audit_events(0, 100).await.unwrap();
    assert_eq!(records.len(), 7);
    let want: Vec<(u64, [u8; 32])> = records
        .iter()
        .map(|r| (r.seq, tokengate_audit::merkle::leaf_hash(&r.event_json).0))
        .collect();
    let mut got = Vec::new();
    let mut after = 0;
    loop {
        let page = store.audit_leaf_hashes(after, 3).await.unwrap();
        let Some(&(last, _)) = page.last() else { break };
        assert!(page.len() <= 3);
        after = last;
        got.extend(page.into_iter().map(|(seq, h)| (seq, h.0)));
    }
    assert_eq!(got, want);
    // A tampered record changes its leaf (the checkpointer cannot sign over
    // an edit it did not see).
    store
        .execute_raw_for_tests(
            "UPDATE audit_events SET event_json = REPLACE(event_json, 'tok_leaf_2', 'tok_evil_2') WHERE seq = 3",
        )
        .await
        .unwrap();
    let page = store.audit_leaf_hashes(2, 1).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].0, 3);
    assert_ne!(page[0].1.0, want[2].1);
}
conformance!(audit_leaves, audit_leaf_hashes_match_records);

/// Retention: pruning deletes records up to a sequence number and records
/// where the log now starts, on both backends.
async fn audit_prune(store: &Store) {
    for i in 0..5 {
        commit(
            store,
            &[Job {
                events: vec![event(Action::TokenRead, &format!("tok_{i}"))],
                ..Job::default()
            }],
        )
        .await
        .unwrap();
    }
    let recs = store.audit_events(0, 100).await.unwrap();
    let r = commit(
        store,
        &[Job {
            ops: vec![Op::PruneAudit {
                upto_seq: 3,
                last_hash: recs[2].hash,
            }],
            ..Job::default()
        }],
    )
    .await
    .unwrap();
    assert_eq!(r[0].as_ref().unwrap()[0].affected(), 3);
    assert_eq!(store.audit_pruned().await.unwrap(), Some((3, recs[2].hash)));
    let kept: Vec<u64> = store
        .audit_events(0, 100)
        .await
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(kept, vec![4, 5]);
    assert_eq!(
        store.last_audit_seq_before(i64::MAX).await.unwrap(),
        Some(5)
    );
    assert!(store.drain_cursors().await.unwrap().is_empty());
    let cursor = |name: &str, seq: u64| Job {
        ops: vec![Op::SetDrainCursor {
            name: name.into(),
            seq,
        }],
        ..Job::default()
    };
    commit(
        store,
        &[cursor("siem", 5), cursor("archive", 3), cursor("siem", 4)],
    )
    .await
    .unwrap();
    assert_eq!(
        store.drain_cursors().await.unwrap(),
        vec![("archive".to_owned(), 3), ("siem".to_owned(), 5)],
        "a cursor never moves back"
    );
    let forget = |name: &str| Job {
        ops: vec![Op::ForgetDrain { name: name.into() }],
        ..Job::default()
    };
    let r = commit(store, &[forget("archive"), forget("nope")])
        .await
        .unwrap();
    assert_eq!(r[0], Ok(vec![OpOutput::Affected(1)]));
    assert_eq!(r[1], Ok(vec![OpOutput::Affected(0)]));
    assert_eq!(
        store.drain_cursors().await.unwrap(),
        vec![("siem".to_owned(), 5)]
    );
}
conformance!(prune, audit_prune);

fn webhook_row(source: &str, id: &str, received_at: i64, nats: bool) -> WebhookEventRow {
    WebhookEventRow {
        seq: 0,
        source: source.into(),
        event_id: id.into(),
        event_type: Some("charge.succeeded".into()),
        received_at,
        payload: format!(r#"{{"id":"{id}"}}"#).into_bytes(),
        app: WebhookDelivery::new(true),
        nats: WebhookDelivery::new(nats),
    }
}

async fn webhook_op(store: &Store, op: WebhookOp) -> u64 {
    let r = commit(
        store,
        &[Job {
            ops: vec![Op::Webhook(op)],
            ..Job::default()
        }],
    )
    .await
    .unwrap();
    r[0].as_ref().unwrap()[0].affected()
}

async fn webhook_outbox(store: &Store) {
    use WebhookTarget::{App, Nats};
    // Insert three events; a duplicate (same source and id) affects nothing,
    // the same id from another source is a different event.
    assert_eq!(
        webhook_op(
            store,
            WebhookOp::Insert(webhook_row("stripe", "evt_1", 10, true))
        )
        .await,
        1
    );
    assert_eq!(
        webhook_op(
            store,
            WebhookOp::Insert(webhook_row("stripe", "evt_2", 11, true))
        )
        .await,
        1
    );
    assert_eq!(
        webhook_op(
            store,
            WebhookOp::Insert(webhook_row("stripe", "evt_1", 12, true))
        )
        .await,
        0
    );
    assert_eq!(
        webhook_op(
            store,
            WebhookOp::Insert(webhook_row("std", "evt_1", 13, false))
        )
        .await,
        1
    );
    let pending = store.webhook_pending(App, None, 0, 100).await.unwrap();
    assert_eq!(
        pending
            .iter()
            .map(|e| (e.source.as_str(), e.event_id.as_str()))
            .collect::<Vec<_>>(),
        [("stripe", "evt_1"), ("stripe", "evt_2"), ("std", "evt_1")],
        "oldest first"
    );
    assert!(pending.windows(2).all(|w| w[0].seq < w[1].seq));
    let std_only = store
        .webhook_pending(App, Some("std"), 0, 100)
        .await
        .unwrap();
    assert_eq!(std_only.len(), 1);
    assert_eq!(std_only[0].source, "std");
    let first = &pending[0];
    assert_eq!(first.payload, br#"{"id":"evt_1"}"#);
    assert_eq!(first.received_at, 10, "the duplicate did not overwrite it");
    assert_eq!(first.app.state, "pending");
    assert_eq!(
        store
            .webhook_pending(Nats, None, 0, 100)
            .await
            .unwrap()
            .len(),
        2
    );
    let (s1, s2, s3) = (pending[0].seq, pending[1].seq, pending[2].seq);
    assert_eq!(
        store
            .webhook_pending(App, None, s1, 100)
            .await
            .unwrap()
            .len(),
        2,
        "after_seq"
    );

    // A retry keeps it pending with a later time; delivered and dead end it.
    assert_eq!(
        webhook_op(
            store,
            WebhookOp::Retry {
                seq: s1,
                target: App,
                next_at: 99,
                error: "http 503".into()
            }
        )
        .await,
        1
    );
    let e = store
        .webhook_event("stripe", "evt_1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (e.app.state.as_str(), e.app.attempts, e.app.next_at),
        ("pending", 1, 99)
    );
    assert_eq!(e.app.last_error.as_deref(), Some("http 503"));
    assert_eq!(
        webhook_op(
            store,
            WebhookOp::Delivered {
                seq: s1,
                target: App
            }
        )
        .await,
        1
    );
    assert_eq!(
        webhook_op(
            store,
            WebhookOp::Delivered {
                seq: s1,
                target: App
            }
        )
        .await,
        0,
        "only from pending"
    );
    let e = store
        .webhook_event("stripe", "evt_1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((e.app.state.as_str(), e.app.attempts), ("delivered", 2));
    assert_eq!(e.app.last_error, None);
    assert_eq!(e.nats.state, "pending", "targets are independent");
    assert_eq!(
        webhook_op(
            store,
            WebhookOp::Dead {
                seq: s2,
                target: App,
                error: "http 410".into()
            }
        )
        .await,
        1
    );
    let dead = store.webhook_dead(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].seq, s2);
    assert_eq!(dead[0].app.last_error.as_deref(), Some("http 410"));
    assert_eq!(
        store
            .webhook_pending(App, None, 0, 100)
            .await
            .unwrap()
            .len(),
        1
    );

    // Replay puts it back with a fresh count.
    assert_eq!(
        webhook_op(
            store,
            WebhookOp::Requeue {
                seq: None,
                target: App,
                now: 500
            }
        )
        .await,
        1
    );
    let e = store
        .webhook_event("stripe", "evt_2")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (e.app.state.as_str(), e.app.attempts, e.app.next_at),
        ("pending", 0, 500)
    );
    assert_eq!(
        webhook_op(
            store,
            WebhookOp::Requeue {
                seq: Some(s2),
                target: App,
                now: 1
            }
        )
        .await,
        0
    );

    // Prune removes only old events that no target still needs.
    assert_eq!(
        webhook_op(
            store,
            WebhookOp::Delivered {
                seq: s3,
                target: App
            }
        )
        .await,
        1
    );
    assert_eq!(
        webhook_op(
            store,
            WebhookOp::Delivered {
                seq: s1,
                target: Nats
            }
        )
        .await,
        1
    );
    assert_eq!(
        webhook_op(
            store,
            WebhookOp::Prune {
                received_before: 12
            }
        )
        .await,
        1,
        "evt_1 of stripe"
    );
    assert!(
        store
            .webhook_event("stripe", "evt_1")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        webhook_op(
            store,
            WebhookOp::Prune {
                received_before: 1000
            }
        )
        .await,
        1,
        "std evt_1 (nats none)"
    );
    assert!(
        store
            .webhook_event("stripe", "evt_2")
            .await
            .unwrap()
            .is_some(),
        "still pending"
    );
}
conformance!(webhooks, webhook_outbox);
fn key_row(purpose: &str, version: u32, state: &str) -> KeyRow {
    KeyRow {
        purpose: purpose.into(),
        version,
        state: state.into(),
        created_at: 10,
        wrapped: vec![version as u8; 60],
    }
}

fn ops_job(ops: Vec<Op>) -> Job {
    Job {
        ops,
        events: vec![],
        events_if_affected: vec![],
    }
}

/// Key lifecycle: usage counts, re-keying batches in key order, the
/// compare-and-set rewrap and re-fingerprint, key states, guarded destroy.
async fn key_lifecycle(store: &Store) {
    let mut jobs = Vec::new();
    for (i, t) in ["tok_a", "tok_b", "tok_c", "tok_d"].iter().enumerate() {
        let mut row = token_row(t, i as u8, false);
        if i == 3 {
            row.tenant = "other".into();
        }
        jobs.push(insert_job(row));
    }
    jobs.push(ops_job(vec![
        Op::InsertKey(key_row("data", 1, "active")),
        Op::InsertKey(key_row("data", 2, "active")),
        Op::InsertKey(key_row("fingerprint", 1, "active")),
    ]));
    for r in commit(store, &jobs).await.unwrap() {
        r.unwrap();
    }
    let usage = store.key_usage().await.unwrap();
    assert!(usage.contains(&KeyUsage {
        purpose: "data".into(),
        version: 1,
        records: 4
    }));
    assert!(usage.contains(&KeyUsage {
        purpose: "fingerprint".into(),
        version: 1,
        records: 4
    }));

    // Batches walk (tenant, token) order from a cursor.
    let b1 = store
        .tokens_on_version(RekeyColumn::Data, 1, None, 2)
        .await
        .unwrap();
    let names: Vec<_> = b1.iter().map(|r| r.token.as_str()).collect();
    assert_eq!(names, ["tok_a", "tok_b"]);
    let b2 = store
        .tokens_on_version(RekeyColumn::Data, 1, Some(("default", "tok_b")), 10)
        .await
        .unwrap();
    let names: Vec<_> = b2
        .iter()
        .map(|r| (r.tenant.as_str(), r.token.as_str()))
        .collect();
    assert_eq!(names, [("default", "tok_c"), ("other", "tok_d")]);
    let deks = store
        .deks_on_version(1, Some(("default", "tok_b")), 10)
        .await
        .unwrap();
    assert_eq!(
        deks.iter()
            .map(|d| (d.token.as_str(), d.kek_version, d.wrapped_dek.clone()))
            .collect::<Vec<_>>(),
        [("tok_c", 1, vec![1, 2, 3]), ("tok_d", 1, vec![1, 2, 3])]
    );

    // Compare-and-set: the first rewrap of tok_a wins, a replay does nothing.
    let rewrap = |from: u32| Op::RewrapDek {
        tenant: "default".into(),
        token: "tok_a".into(),
        from_version: from,
        to_version: 2,
        wrapped_dek: vec![9, 9, 9],
    };
    let out = commit(store, &[ops_job(vec![rewrap(1), rewrap(1)])])
        .await
        .unwrap();
    assert_eq!(
        out[0],
        Ok(vec![OpOutput::Affected(1), OpOutput::Affected(0)])
    );
    let a = store
        .get_token("default", "tok_a", 0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((a.kek_version, a.wrapped_dek.clone()), (2, vec![9, 9, 9]));
    assert_eq!(a.ciphertext, vec![4, 5, 6], "the payload is not touched");
    assert!(
        store
            .tokens_on_version(RekeyColumn::Data, 1, None, 10)
            .await
            .unwrap()
            .iter()
            .all(|r| r.token != "tok_a")
    );
    let refp = Op::Refingerprint {
        tenant: "default".into(),
        token: "tok_b".into(),
        from_version: 1,
        to_version: 2,
        fingerprint: vec![0xee; 32],
    };
    let out = commit(store, &[ops_job(vec![refp.clone(), refp])])
        .await
        .unwrap();
    assert_eq!(
        out[0],
        Ok(vec![OpOutput::Affected(1), OpOutput::Affected(0)])
    );
    assert_eq!(
        store
            .find_by_fingerprint("default", &[0xee; 32], 10)
            .await
            .unwrap()[0]
            .token,
        "tok_b"
    );

    // A version in use cannot be destroyed, nor an active one.
    let destroy = |v: u32| {
        ops_job(vec![Op::DestroyKey {
            purpose: "data".into(),
            version: v,
        }])
    };
    let state = |v: u32| Op::SetKeyState {
        purpose: "data".into(),
        version: v,
        state: "decrypt-only".into(),
    };
    commit(store, &[ops_job(vec![state(1)])]).await.unwrap()[0]
        .clone()
        .unwrap();
    assert_eq!(
        commit(store, &[destroy(1)]).await.unwrap()[0],
        Ok(vec![OpOutput::Affected(0)]),
        "three records still use data v1"
    );
    assert_eq!(
        commit(store, &[destroy(2)]).await.unwrap()[0],
        Ok(vec![OpOutput::Affected(0)]),
        "v2 is active"
    );
    let mut moves = Vec::new();
    for (tenant, token) in [
        ("default", "tok_b"),
        ("default", "tok_c"),
        ("other", "tok_d"),
    ] {
        moves.push(Op::RewrapDek {
            tenant: tenant.into(),
            token: token.into(),
            from_version: 1,
            to_version: 2,
            wrapped_dek: vec![8],
        });
    }
    commit(store, &[ops_job(moves)]).await.unwrap()[0]
        .clone()
        .unwrap();
    assert_eq!(
        commit(store, &[destroy(1)]).await.unwrap()[0],
        Ok(vec![OpOutput::Affected(1)])
    );
    let keys = store.keys().await.unwrap();
    let v1 = keys
        .iter()
        .find(|k| k.purpose == "data" && k.version == 1)
        .unwrap();
    assert_eq!(v1.state, "destroyed");
    assert!(v1.wrapped.is_empty(), "the wrapped key is erased");
    // A destroyed key is never revived.
    assert_eq!(
        commit(store, &[ops_job(vec![state(1)])]).await.unwrap()[0],
        Ok(vec![OpOutput::Affected(0)])
    );
    let usage = store.key_usage().await.unwrap();
    assert!(usage.contains(&KeyUsage {
        purpose: "data".into(),
        version: 2,
        records: 4
    }));
    assert!(!usage.iter().any(|u| u.purpose == "data" && u.version == 1));
}
conformance!(key_lifecycle_ops, key_lifecycle);
