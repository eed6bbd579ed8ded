#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)] // test code: fail loudly
//! Key lifecycle through the vault API, on SQLite and on PostgreSQL (URL
//! from `TOKENGATE_TEST_POSTGRES_URL`, one schema per test; CI sets it):
//! records written under data KEK v1, v2 and v3 all reveal; rewrap moves
//! every record to the newest version; a raised minimum decryption version
//! refuses old records until they are rewrapped; destroy is refused while
//! records use a version; fingerprint rotation keeps search and
//! deterministic tokens working throughout. Each runs a third time with
//! the root key in a SoftHSM2 token (pkcs11 provider) instead of `root.key`.

use std::path::PathBuf;
use std::sync::Arc;

use tokengate_crypto::KeyPurpose;
use tokengate_vault::{
    Caller, CardInput, InitOptions, KeyActor, RekeyOptions, RequestMeta, TokenizeRequest, Vault,
    VaultConfig, VaultError, init,
};
use zeroize::Zeroizing;

const PANS: [&str; 3] = ["4242424242424242", "5555555555554444", "378282246310005"];

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    database_url: Option<String>,
    admin_key: String,
}

async fn fixture(name: &str, postgres: bool) -> Option<Fixture> {
    fixture_with(name, postgres, None).await
}

/// The root key in the SoftHSM2 token the test process was started with
/// (see `in_child_with_token`).
fn hsm_config() -> tokengate_crypto::pkcs11::Pkcs11Config {
    use tokengate_crypto::pkcs11::test_support::{SOFTHSM_MODULE, TOKEN_LABEL};
    tokengate_crypto::pkcs11::Pkcs11Config::new(SOFTHSM_MODULE, TOKEN_LABEL, "root")
}

async fn fixture_with(
    name: &str,
    postgres: bool,
    pkcs11: Option<tokengate_crypto::pkcs11::Pkcs11Config>,
) -> Option<Fixture> {
    let database_url = if postgres {
        let url = match std::env::var("TOKENGATE_TEST_POSTGRES_URL") {
            Ok(u) => u,
            Err(_) => {
                assert!(
                    std::env::var("CI").is_err(),
                    "CI must set TOKENGATE_TEST_POSTGRES_URL"
                );
                eprintln!("TOKENGATE_TEST_POSTGRES_URL unset: skipping {name} on PostgreSQL");
                return None;
            }
        };
        let schema = format!("keys_{name}_{}", std::process::id());
        let admin = tokengate_store::Store::connect(&url).await.unwrap();
        admin
            .execute_raw_for_tests(&format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
            ))
            .await
            .unwrap();
        admin.close().await;
        let sep = if url.contains('?') { '&' } else { '?' };
        Some(format!("{url}{sep}options=-c%20search_path%3D{schema}"))
    } else {
        None
    };
    let tmp = match std::env::var_os("TOKENGATE_TEST_ARTIFACTS") {
        Some(base) => {
            std::fs::create_dir_all(&base).unwrap();
            tempfile::tempdir_in(base).unwrap()
        }
        None => tempfile::tempdir().unwrap(),
    };
    let dir = tmp.path().join("data");
    let out = init(&InitOptions {
        data_dir: dir.clone(),
        database_url: database_url.clone(),
        custodians: None,
        custodian_keys: Vec::new(),
        pkcs11,
    })
    .await
    .unwrap();
    Some(Fixture {
        _tmp: tmp,
        dir,
        database_url,
        admin_key: out.admin_api_key,
    })
}

impl Fixture {
    async fn open(&self) -> Arc<Vault> {
        let mut cfg = VaultConfig::new(&self.dir);
        cfg.database_url = self.database_url.clone();
        Arc::new(Vault::open(cfg).await.unwrap())
    }
}

async fn caller(vault: &Vault, key: &str) -> Caller {
    let admin = vault
        .authenticate(Some(key), RequestMeta::default())
        .await
        .unwrap();
    let new = vault
        .create_api_key(&admin, "app", &["tokenize".to_owned(), "reveal".to_owned()])
        .await
        .unwrap();
    vault
        .authenticate(Some(&new.secret), RequestMeta::default())
        .await
        .unwrap()
}

fn request(pan: &str, deterministic: bool) -> TokenizeRequest {
    TokenizeRequest {
        card: CardInput {
            number: Zeroizing::new(pan.to_owned()),
            exp_month: 12,
            exp_year: 2040,
            name: None,
            cvc: None,
        },
        deterministic,
        ..TokenizeRequest::default()
    }
}

fn actor() -> KeyActor {
    KeyActor::cli(Some("test"))
}

fn no_progress(_: u64, _: u64) {}

async fn records_on(vault: &Vault, purpose: &str) -> Vec<(u32, i64)> {
    vault
        .list_keys()
        .await
        .unwrap()
        .into_iter()
        .filter(|k| k.purpose == purpose && k.records.unwrap_or(0) > 0)
        .map(|k| (k.version, k.records.unwrap()))
        .collect()
}

async fn rotation_rewrap_and_min_version(f: Fixture) {
    let vault = f.open().await;
    let app = caller(&vault, &f.admin_key).await;
    let mut tokens = Vec::new();
    // Records under v1, v2 and v3 of the data KEK.
    for (i, pan) in PANS.iter().enumerate() {
        if i > 0 {
            let k = vault.rotate_key(KeyPurpose::Data, &actor()).await.unwrap();
            assert_eq!((k.version, k.state.as_str()), (i as u32 + 1, "active"));
        }
        for _ in 0..3 {
            tokens.push((
                vault
                    .tokenize(&app, &request(pan, false))
                    .await
                    .unwrap()
                    .info
                    .token,
                *pan,
            ));
        }
    }
    assert_eq!(
        records_on(&vault, "data").await,
        vec![(1, 3), (2, 3), (3, 3)]
    );
    let keys = vault.list_keys().await.unwrap();
    let state = |v: u32| {
        keys.iter()
            .find(|k| k.purpose == "data" && k.version == v)
            .unwrap()
            .state
            .clone()
    };
    assert_eq!(
        (state(1), state(2), state(3)),
        (
            "decrypt-only".into(),
            "decrypt-only".into(),
            "active".into()
        )
    );
    for (t, pan) in &tokens {
        assert_eq!(vault.reveal(&app, t).await.unwrap().number.as_str(), *pan);
    }

    // A raised minimum decryption version refuses v1 and v2 records with a
    // clear error, until they are rewrapped.
    vault
        .set_min_decryption_version(KeyPurpose::Data, 3, &actor())
        .await
        .unwrap();
    let err = vault.reveal(&app, &tokens[0].0).await.unwrap_err();
    assert!(matches!(err, VaultError::KeyRetired), "{err:?}");
    assert_eq!(err.code(), "key_version_retired");
    assert!(err.to_string().contains("rewrap"), "{err}");
    assert_eq!(
        vault
            .reveal(&app, &tokens[8].0)
            .await
            .unwrap()
            .number
            .as_str(),
        PANS[2]
    );
    // Destroy is refused while records use the version; so is the active one.
    let err = vault
        .destroy_key(KeyPurpose::Data, 1, &actor())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "key_in_use", "{err}");
    assert!(err.to_string().contains("3 stored records"), "{err}");
    let err = vault
        .destroy_key(KeyPurpose::Data, 3, &actor())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "key_version_active");

    let report = vault
        .rekey(
            KeyPurpose::Data,
            RekeyOptions {
                batch: 2,
                ..RekeyOptions::default()
            },
            &actor(),
            &no_progress,
        )
        .await
        .unwrap();
    assert_eq!(
        (report.total, report.moved, report.failed, report.remaining),
        (6, 6, 0, 0),
        "{report:?}"
    );
    assert_eq!(records_on(&vault, "data").await, vec![(3, 9)]);
    for (t, pan) in &tokens {
        assert_eq!(vault.reveal(&app, t).await.unwrap().number.as_str(), *pan);
    }
    // Running it again moves nothing.
    let again = vault
        .rekey(
            KeyPurpose::Data,
            RekeyOptions::default(),
            &actor(),
            &no_progress,
        )
        .await
        .unwrap();
    assert_eq!((again.total, again.moved), (0, 0));

    // Now v1 can be destroyed; its wrapped key is erased.
    vault
        .destroy_key(KeyPurpose::Data, 1, &actor())
        .await
        .unwrap();
    let keys = vault.list_keys().await.unwrap();
    assert!(
        keys.iter()
            .any(|k| k.purpose == "data" && k.version == 1 && k.state == "destroyed")
    );
    let rows = vault.store().keys().await.unwrap();
    assert!(
        rows.iter()
            .find(|r| r.purpose == "data" && r.version == 1)
            .unwrap()
            .wrapped
            .is_empty()
    );
    // The audit trail has every step.
    let actions: Vec<String> = vault
        .store()
        .audit_events(0, 100_000)
        .await
        .unwrap()
        .iter()
        .map(|r| {
            serde_json::from_str::<serde_json::Value>(&r.event_json).unwrap()["action"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    for a in [
        "key_rotate",
        "key_min_decryption",
        "key_rewrap",
        "key_destroy",
    ] {
        assert!(actions.iter().any(|x| x == a), "{a} not audited");
    }
    // A vault opened afterwards (another process) sees the same ring.
    vault.store().close().await;
    let reopened = f.open().await;
    let app2 = caller(&reopened, &f.admin_key).await;
    assert_eq!(
        reopened
            .reveal(&app2, &tokens[0].0)
            .await
            .unwrap()
            .number
            .as_str(),
        PANS[0]
    );
}

async fn fingerprint_rotation_keeps_search(f: Fixture) {
    let vault = f.open().await;
    let app = caller(&vault, &f.admin_key).await;
    let det = vault
        .tokenize(&app, &request(PANS[0], true))
        .await
        .unwrap()
        .info
        .token;
    let plain = vault
        .tokenize(&app, &request(PANS[1], false))
        .await
        .unwrap()
        .info
        .token;
    vault
        .rotate_key(KeyPurpose::Fingerprint, &actor())
        .await
        .unwrap();
    // Before the re-fingerprint job: search finds records under v1, and a
    // deterministic tokenize of the same card returns the same token.
    let found = vault.search(&app, PANS[1]).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].token, plain);
    let again = vault.tokenize(&app, &request(PANS[0], true)).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.info.token, det);
    // A new record gets a v2 fingerprint.
    let newer = vault
        .tokenize(&app, &request(PANS[1], false))
        .await
        .unwrap()
        .info
        .token;
    assert_eq!(
        records_on(&vault, "fingerprint").await,
        vec![(1, 2), (2, 1)]
    );
    assert_eq!(vault.search(&app, PANS[1]).await.unwrap().len(), 2);

    let report = vault
        .rekey(
            KeyPurpose::Fingerprint,
            RekeyOptions::default(),
            &actor(),
            &no_progress,
        )
        .await
        .unwrap();
    assert_eq!((report.moved, report.failed, report.remaining), (2, 0, 0));
    assert_eq!(records_on(&vault, "fingerprint").await, vec![(2, 3)]);
    let mut found: Vec<String> = vault
        .search(&app, PANS[1])
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.token)
        .collect();
    found.sort();
    let mut want = vec![plain.clone(), newer];
    want.sort();
    assert_eq!(found, want);
    let again = vault.tokenize(&app, &request(PANS[0], true)).await.unwrap();
    assert_eq!((again.created, again.info.token), (false, det));
    // v1 is now unused and can go.
    vault
        .destroy_key(KeyPurpose::Fingerprint, 1, &actor())
        .await
        .unwrap();
    assert_eq!(vault.search(&app, PANS[1]).await.unwrap().len(), 2);
}

async fn bad_requests_are_refused(f: Fixture) {
    let vault = f.open().await;
    let err = vault
        .rotate_key(KeyPurpose::AuditSigning, &actor())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "key_rotation_unsupported");
    let err = vault
        .set_min_decryption_version(KeyPurpose::Data, 2, &actor())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_key_version");
    let err = vault
        .destroy_key(KeyPurpose::Data, 9, &actor())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "key_version_not_found");
    let err = vault
        .rekey(
            KeyPurpose::Cvc,
            RekeyOptions::default(),
            &actor(),
            &no_progress,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "rekey_unsupported");
    for (opts, code) in [
        (
            RekeyOptions {
                busy_share: 0.0,
                ..RekeyOptions::default()
            },
            "invalid_busy_share",
        ),
        (
            RekeyOptions {
                busy_share: 1.5,
                ..RekeyOptions::default()
            },
            "invalid_busy_share",
        ),
        (
            RekeyOptions {
                busy_share: f64::NAN,
                ..RekeyOptions::default()
            },
            "invalid_busy_share",
        ),
        (
            RekeyOptions {
                batch: 0,
                ..RekeyOptions::default()
            },
            "invalid_batch",
        ),
    ] {
        let err = vault
            .rekey(KeyPurpose::Data, opts, &actor(), &no_progress)
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{opts:?}");
    }
    assert_eq!(
        tokengate_vault::parse_purpose("nope").unwrap_err().code(),
        "unknown_key_purpose"
    );
}

/// A rewrap yields to live traffic (tokenize running next to it) and runs
/// flat out when there is none; every record moves either way.
async fn rewrap_yields_to_live_traffic(f: Fixture) {
    let vault = f.open().await;
    let app = Arc::new(caller(&vault, &f.admin_key).await);
    let writes = (0..300).map(|i| {
        let (vault, app) = (vault.clone(), app.clone());
        async move {
            vault
                .tokenize(&app, &request(PANS[i % PANS.len()], false))
                .await
                .unwrap()
        }
    });
    futures::future::join_all(writes).await;
    vault.rotate_key(KeyPurpose::Data, &actor()).await.unwrap();

    // Live traffic: tokenize in a loop until the rewrap is done.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (vault, app, stop) = (vault.clone(), app.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                vault
                    .tokenize(&app, &request(PANS[0], false))
                    .await
                    .unwrap();
                n += 1;
            }
            n
        })
    };
    let opts = RekeyOptions {
        batch: 10,
        busy_share: 0.25,
        ..RekeyOptions::default()
    };
    let busy = vault
        .rekey(KeyPurpose::Data, opts, &actor(), &no_progress)
        .await
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let live = traffic.await.unwrap();
    assert!(live > 0);
    assert_eq!((busy.moved, busy.failed, busy.remaining), (300, 0, 0));
    assert!(
        busy.yielded_millis > 0,
        "no yield under live traffic: {busy:?}"
    );
    assert!(busy.yielded_millis <= busy.millis, "{busy:?}");

    // No traffic: no yield.
    vault.rotate_key(KeyPurpose::Data, &actor()).await.unwrap();
    let idle = vault
        .rekey(KeyPurpose::Data, opts, &actor(), &no_progress)
        .await
        .unwrap();
    assert_eq!(idle.remaining, 0, "{idle:?}");
    assert!(idle.moved >= 300, "{idle:?}");
    assert_eq!(idle.yielded_millis, 0, "{idle:?}");
}

/// Another process (the CLI) rotates; the running vault's poll picks it up.
async fn rotation_by_another_process_is_picked_up(f: Fixture) {
    let server = f.open().await;
    let cli = f.open().await;
    let app = caller(&server, &f.admin_key).await;
    assert!(!server.refresh_key_ring().await.unwrap());
    cli.rotate_key(KeyPurpose::Data, &actor()).await.unwrap();
    assert!(server.refresh_key_ring().await.unwrap());
    let t = server
        .tokenize(&app, &request(PANS[0], false))
        .await
        .unwrap()
        .info
        .token;
    let row = server
        .store()
        .get_token("default", &t, 0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.kek_version, 2, "new writes use the new version at once");
}

/// An active key older than its cryptoperiod raises an audit alert, and is
/// rotated when automatic rotation is on.
async fn cryptoperiods_warn_and_rotate(f: Fixture) {
    let vault = f.open().await;
    let periods = [(KeyPurpose::Data, 365), (KeyPurpose::Cvc, 365)];
    assert!(
        vault
            .check_cryptoperiods(&periods, false)
            .await
            .unwrap()
            .is_empty()
    );
    vault
        .store()
        .execute_raw_for_tests(
            "UPDATE keys SET created_at = created_at - 400 * 86400 WHERE purpose = 'data'",
        )
        .await
        .unwrap();
    let found = vault.check_cryptoperiods(&periods, false).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].purpose.as_str(), found[0].version), ("data", 1));
    assert!(found[0].age_days >= 400);
    assert_eq!(found[0].rotated_to, None);
    // 0 means no cryptoperiod.
    assert!(
        vault
            .check_cryptoperiods(&[(KeyPurpose::Data, 0)], true)
            .await
            .unwrap()
            .is_empty()
    );
    let alerts = vault
        .store()
        .audit_events(0, 100_000)
        .await
        .unwrap()
        .iter()
        .filter(|r| r.event_json.contains("cryptoperiod_exceeded"))
        .count();
    assert_eq!(alerts, 1, "one audit alert per exceeded check");
    let found = vault.check_cryptoperiods(&periods, true).await.unwrap();
    assert_eq!(found[0].rotated_to, Some(2));
    assert!(
        vault
            .check_cryptoperiods(&periods, true)
            .await
            .unwrap()
            .is_empty()
    );
    let active: Vec<u32> = vault
        .list_keys()
        .await
        .unwrap()
        .into_iter()
        .filter(|k| k.purpose == "data" && k.state == "active")
        .map(|k| k.version)
        .collect();
    assert_eq!(active, vec![2]);
}

macro_rules! both {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let f = super::fixture(stringify!($name), false).await.unwrap();
                super::$body(f).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(f) = super::fixture(stringify!($name), true).await {
                    super::$body(f).await;
                }
            }
            /// SQLite, root key in SoftHSM2 (re-run in a child process
            /// pointed at a fresh token; skipped outside CI without it).
            #[test]
            fn pkcs11() {
                use tokengate_crypto::pkcs11::test_support::in_child_with_token;
                if !in_child_with_token(concat!(stringify!($name), "::pkcs11")) {
                    return;
                }
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let f =
                        super::fixture_with(stringify!($name), false, Some(super::hsm_config()))
                            .await
                            .unwrap();
                    assert!(!f.dir.join("root.key").exists());
                    assert!(f.dir.join("pkcs11.json").exists());
                    super::$body(f).await;
                });
            }
        }
    };
}

both!(rotate_rewrap_min, rotation_rewrap_and_min_version);
both!(fingerprint, fingerprint_rotation_keeps_search);
both!(refusals, bad_requests_are_refused);
both!(pickup, rotation_by_another_process_is_picked_up);
both!(cryptoperiod, cryptoperiods_warn_and_rotate);
both!(rewrap_yields, rewrap_yields_to_live_traffic);
