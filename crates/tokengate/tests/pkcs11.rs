//! The pkcs11 root-key provider through the real binary, against a SoftHSM2
//! token made for the test: `init --pkcs11-module … --pkcs11-token T`
//! generates the root key inside the token and writes no key file; `serve`
//! tokenizes and reveals over HTTPS, a key rotation wraps the new KEK in the
//! HSM, a restarted server reveals the same cards, `audit verify` passes;
//! without the PIN (or with a wrong one) nothing opens; no file of the data
//! directory holds the PIN, a root key file or a card number.
//!
//! Skipped with a printed note when SoftHSM2 is not installed and `CI` is
//! unset; under CI its absence fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::*;
use serde_json::{Value, json};
use tokengate_crypto::pkcs11::test_support::{PIN, SOFTHSM_MODULE, SoftHsm, TOKEN_LABEL};

fn init_pkcs11(dir: &Path, envs: &[(String, String)], token: &str) -> std::process::Output {
    bin()
        .args(["init", "--json", "--pkcs11-module", SOFTHSM_MODULE])
        .args(["--pkcs11-token", token, "--data-dir"])
        .arg(dir)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap()
}

fn cli(args: &[&str], dir: &Path, envs: &[(String, String)]) -> std::process::Output {
    bin()
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env_remove("TOKENGATE_PKCS11_PIN")
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap()
}

#[test]
fn vault_lifecycle_with_the_root_key_in_softhsm2() {
    let Some(hsm) = SoftHsm::setup() else {
        return;
    };
    let envs = hsm.envs();
    let conf_only: Vec<(String, String)> = envs
        .iter()
        .filter(|(k, _)| k == "SOFTHSM2_CONF")
        .cloned()
        .collect();
    let base = test_dir("pkcs11-");
    let dir = base.join("data");

    // Refusals come before anything is written.
    let out = init_pkcs11(&base.join("nopin"), &conf_only, TOKEN_LABEL);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TOKENGATE_PKCS11_PIN"), "{err}");
    let out = init_pkcs11(&base.join("notoken"), &envs, "no-such-token");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no initialised token labelled \"no-such-token\""),
        "{err}"
    );
    assert!(!base.join("nopin").join("tokengate.db").exists());
    let out = bin()
        .args(["init", "--custodians", "2", "--threshold", "2"])
        .args(["--pkcs11-module", SOFTHSM_MODULE, "--pkcs11-token", "T"])
        .arg("--data-dir")
        .arg(base.join("both"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "one provider at a time");

    let out = init_pkcs11(&dir, &envs, TOKEN_LABEL);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["root_key_provider"], "pkcs11");
    assert!(v.get("root_key_file").is_none());
    assert_eq!(v["pkcs11"]["token_label"], TOKEN_LABEL);
    assert_eq!(v["pkcs11"]["key_label"], "tokengate-root-key");
    let admin = v["admin_api_key"].as_str().unwrap().to_owned();
    assert!(!dir.join("root.key").exists(), "no root key file");
    use std::os::unix::fs::PermissionsExt;
    let cfg_path = dir.join("pkcs11.json");
    assert_eq!(
        std::fs::metadata(&cfg_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let cfg: Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    let mut fields: Vec<&str> = cfg
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    fields.sort_unstable();
    assert_eq!(fields, ["format", "key_label", "module", "token_label"]);

    // CLI commands open the vault through the HSM, and only with the PIN.
    let out = cli(&["keys", "--json"], &dir, &envs);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["keys", "--json"], &dir, &conf_only);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TOKENGATE_PKCS11_PIN"));
    let wrong_pin = vec![
        conf_only[0].clone(),
        ("TOKENGATE_PKCS11_PIN".to_owned(), "0000".to_owned()),
    ];
    let out = cli(&["keys", "--json"], &dir, &wrong_pin);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused the PIN"), "{err}");

    let rt = runtime();
    let env_refs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let log = base.join("server.log");
    let pans = ["4242424242424242", "5555555555554444"];
    let tokenize = |base: String, key: String, pan: &'static str| {
        let c = client();
        async move {
            let r = c
                .post(format!("{base}/v1/tokens"))
                .bearer_auth(&key)
                .json(&json!({"card": {"number": pan, "exp_month": 4, "exp_year": 2037}}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            let v: Value = r.json().await.unwrap();
            v["token"].as_str().unwrap().to_owned()
        }
    };
    let reveal = |base: String, key: String, token: String| {
        let c = client();
        async move {
            let r = c
                .post(format!("{base}/v1/tokens/{token}/reveal"))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let v: Value = r.json().await.unwrap();
            v["card"]["number"].as_str().unwrap().to_owned()
        }
    };

    let mut server = Server::start(&dir, &log, &env_refs);
    let (key, t1) = rt.block_on(async {
        let key = new_key(&client(), &server.base, &admin, &["tokenize", "reveal"]).await;
        let t1 = tokenize(server.base.clone(), key.clone(), pans[0]).await;
        assert_eq!(
            reveal(server.base.clone(), key.clone(), t1.clone()).await,
            pans[0]
        );
        (key, t1)
    });
    server.terminate();

    // A new data KEK, wrapped inside the HSM, while the server is down.
    let out = cli(&["keys", "rotate", "--purpose", "data"], &dir, &envs);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Restart: both the old and a new record reveal.
    let mut server = Server::start(&dir, &log, &env_refs);
    rt.block_on(async {
        assert_eq!(
            reveal(server.base.clone(), key.clone(), t1.clone()).await,
            pans[0]
        );
        let t2 = tokenize(server.base.clone(), key.clone(), pans[1]).await;
        assert_eq!(reveal(server.base.clone(), key.clone(), t2).await, pans[1]);
    });
    server.terminate();

    // Without the PIN the server does not start.
    let out = bin()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env_remove("TOKENGATE_PKCS11_PIN")
        .envs(conf_only.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TOKENGATE_PKCS11_PIN"));

    let out = cli(&["keys", "--json"], &dir, &envs);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let data: Vec<&Value> = v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["purpose"] == "data")
        .collect();
    assert_eq!(data.len(), 2, "{v}");

    let out = cli(&["audit", "verify", "--json"], &dir, &envs);
    assert!(
        out.status.success(),
        "audit verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // No root key file, no PIN, no card number in any file of the data dir
    // (the server logs and the token directory live elsewhere).
    assert!(!dir.join("root.key").exists());
    for f in files_under(&dir) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes.windows(PIN.len()).any(|w| w == PIN.as_bytes()),
            "the PIN is in {}",
            f.display()
        );
    }
    assert_absent(&dir, &pans.map(str::to_owned));
    assert_absent(&base, &pans.map(str::to_owned));
}

/// Two tokens with one label: `init --pkcs11-token` refuses as ambiguous
/// (nothing created); `--pkcs11-slot` chooses, is kept in pkcs11.json and
/// is what later commands open; a slot whose token has another label than
/// `--pkcs11-token` is refused.
#[test]
fn two_tokens_with_one_label_are_told_apart_by_slot() {
    let Some(hsm) = SoftHsm::setup() else {
        return;
    };
    hsm.add_token(TOKEN_LABEL);
    hsm.add_token("other");
    let slots = hsm.slots();
    let same: Vec<u64> = slots
        .iter()
        .filter(|(_, l)| l == TOKEN_LABEL)
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(same.len(), 2, "{slots:?}");
    let other = slots.iter().find(|(_, l)| l == "other").unwrap().0;
    let envs = hsm.envs();
    let base = test_dir("pkcs11-slot-");

    let ambiguous = base.join("ambiguous");
    let out = init_pkcs11(&ambiguous, &envs, TOKEN_LABEL);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ambiguous") && err.contains("--pkcs11-slot"),
        "{err}"
    );
    assert!(!ambiguous.exists(), "nothing is created");

    let init_slot = |dir: &Path, slot: u64, token: Option<&str>| {
        let mut cmd = bin();
        cmd.args(["init", "--json", "--pkcs11-module", SOFTHSM_MODULE])
            .args(["--pkcs11-slot", &slot.to_string()]);
        if let Some(t) = token {
            cmd.args(["--pkcs11-token", t]);
        }
        cmd.arg("--data-dir")
            .arg(dir)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap()
    };
    let mismatch = base.join("mismatch");
    let out = init_slot(&mismatch, other, Some(TOKEN_LABEL));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("slot {other} holds the token labelled \"other\"")),
        "{err}"
    );
    assert!(!mismatch.exists());

    // The slot alone chooses; its token's label is recorded with it.
    let dir = base.join("data");
    let out = init_slot(&dir, same[1], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["pkcs11"]["slot"], same[1]);
    assert_eq!(v["pkcs11"]["token_label"], TOKEN_LABEL);
    let cfg_path = dir.join("pkcs11.json");
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    assert_eq!(cfg["slot"], same[1]);
    assert_eq!(cfg["token_label"], TOKEN_LABEL);
    let out = cli(&["keys", "--json"], &dir, &envs);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The recorded slot is what is opened: pointed at the other token with
    // the same label, the root key is not there.
    cfg["slot"] = json!(same[0]);
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let out = cli(&["keys", "--json"], &dir, &envs);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no key labelled"), "{err}");
}
