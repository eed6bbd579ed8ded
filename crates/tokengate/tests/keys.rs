//! Key lifecycle through the real binary: `keys rotate` by the CLI while a
//! server serves (the server picks the new version up), `keys rewrap` killed
//! with SIGKILL half-way and run again (completes; nothing lost, nothing
//! moved twice; every record reveals), and the admin API (`/v1/keys…`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn keys_json(dir: &std::path::Path) -> Vec<Value> {
    let out = bin()
        .args(["keys", "--json", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["keys"].as_array().unwrap().clone()
}

/// `(version, records)` of the data KEK versions that hold records.
fn data_usage(dir: &std::path::Path) -> Vec<(u64, u64)> {
    keys_json(dir)
        .iter()
        .filter(|k| k["purpose"] == "data" && k["records"].as_u64().unwrap_or(0) > 0)
        .map(|k| {
            (
                k["version"].as_u64().unwrap(),
                k["records"].as_u64().unwrap(),
            )
        })
        .collect()
}

async fn tokenize_batch(
    c: &reqwest::Client,
    base: &str,
    key: &str,
    from: u64,
    n: u64,
) -> Vec<(String, String)> {
    let pans: Vec<String> = (from..from + n).map(pan_from).collect();
    let items: Vec<Value> = pans
        .iter()
        .map(|p| json!({"card": {"number": p, "exp_month": 5, "exp_year": 2035}}))
        .collect();
    let v: Value = c
        .post(format!("{base}/v1/tokens/batch"))
        .bearer_auth(key)
        .json(&json!({ "items": items }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .zip(pans)
        .map(|(r, p)| (r["token"]["token"].as_str().unwrap().to_owned(), p))
        .collect()
}

async fn reveal_all(c: &reqwest::Client, base: &str, key: &str, tokens: &[(String, String)]) {
    let mut tasks = Vec::new();
    for chunk in tokens.chunks(tokens.len().div_ceil(8)) {
        let (c, base, key, chunk) = (c.clone(), base.to_owned(), key.to_owned(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            for (t, pan) in chunk {
                let r = c
                    .post(format!("{base}/v1/tokens/{t}/reveal"))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "{t}");
                let v: Value = r.json().await.unwrap();
                assert_eq!(v["card"]["number"].as_str().unwrap(), pan);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[test]
fn rotate_online_and_rewrap_survives_kill_9() {
    let base = test_dir("keys-");
    let dir = base.join("data");
    let admin = init(&dir);
    let server = Server::start(&dir, &base.join("server.log"), &[]);
    let rt = runtime();
    let c = client();
    let key = rt.block_on(new_key(&c, &server.base, &admin, &["tokenize", "reveal"]));
    let mut tokens = Vec::new();
    for b in 0..4 {
        tokens.extend(rt.block_on(tokenize_batch(&c, &server.base, &key, 1 + b * 1000, 1000)));
    }
    assert_eq!(data_usage(&dir), vec![(1, 4000)]);

    // The CLI rotates while the server runs; the server's next writes use
    // version 2 once it has reloaded (within key_reload_ms = 1 s).
    let out = bin()
        .args([
            "keys",
            "rotate",
            "--purpose",
            "data",
            "--json",
            "--data-dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rotated: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (rotated["version"].as_u64(), rotated["state"].as_str()),
        (Some(2), Some("active"))
    );
    let start = Instant::now();
    let mut next = 100_000;
    loop {
        tokens.extend(rt.block_on(tokenize_batch(&c, &server.base, &key, next, 1)));
        next += 1;
        if data_usage(&dir).iter().any(|(v, _)| *v == 2) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "server never picked up version 2"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A rate-limited rewrap, killed with SIGKILL part-way, while the server
    // keeps tokenizing.
    let mut job = bin()
        .args([
            "keys",
            "rewrap",
            "--batch",
            "100",
            "--rate",
            "2000",
            "--data-dir",
        ])
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(900));
    tokens.extend(rt.block_on(tokenize_batch(&c, &server.base, &key, 200_000, 100)));
    job.kill().unwrap();
    job.wait().unwrap();
    let partial = data_usage(&dir);
    let on_v1 = partial.iter().find(|(v, _)| *v == 1).map_or(0, |(_, n)| *n);
    assert!(
        on_v1 > 0 && on_v1 < 4000,
        "the job was to be killed part-way: {partial:?}"
    );
    let total: u64 = partial.iter().map(|(_, n)| n).sum();
    assert_eq!(total, tokens.len() as u64, "no record lost");

    // Run again: it finishes, moving exactly the records still on v1.
    let out = bin()
        .args(["keys", "rewrap", "--json", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["total"].as_u64(), Some(on_v1), "{report}");
    assert_eq!(report["moved"].as_u64(), Some(on_v1), "{report}");
    assert_eq!(report["failed"].as_u64(), Some(0));
    assert_eq!(report["remaining"].as_u64(), Some(0));
    assert_eq!(data_usage(&dir), vec![(2, tokens.len() as u64)]);
    rt.block_on(reveal_all(&c, &server.base, &key, &tokens));

    // Version 1 holds no record now: it can be destroyed, and every record
    // still reveals.
    let out = bin()
        .args([
            "keys",
            "destroy",
            "--purpose",
            "data",
            "--version",
            "1",
            "--data-dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    rt.block_on(reveal_all(&c, &server.base, &key, &tokens[..50]));

    // The audit trail (rotation, both rewrap runs, destroy) verifies.
    let out = bin()
        .args(["audit", "verify", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn admin_api_and_cli_errors() {
    let base = test_dir("keysapi-");
    let dir = base.join("data");
    let admin = init(&dir);
    let server = Server::start(&dir, &base.join("server.log"), &[]);
    let rt = runtime();
    let c = client();
    let b = server.base.clone();
    rt.block_on(async {
        let key = new_key(&c, &b, &admin, &["tokenize", "reveal"]).await;
        let tokens = tokenize_batch(&c, &b, &key, 1, 20).await;
        // Admin only.
        let r = c
            .get(format!("{b}/v1/keys"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        let v: Value = c
            .get(format!("{b}/v1/keys"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let data1 = v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["purpose"] == "data" && k["version"] == 1)
            .unwrap()
            .clone();
        assert_eq!(data1["records"], 20);
        assert_eq!(data1["state"], "active");

        let r = c
            .post(format!("{b}/v1/keys/data/rotate"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let r = c
            .post(format!("{b}/v1/keys/nope/rotate"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "unknown_key_purpose");

        // Raise the minimum: old records refuse with a clear error.
        let r = c
            .post(format!("{b}/v1/keys/data/min-decryption-version"))
            .bearer_auth(&admin)
            .json(&json!({"version": 2}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        let r = c
            .post(format!("{b}/v1/tokens/{}/reveal", tokens[0].0))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 409);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "key_version_retired");

        // Destroy refused while in use.
        let r = c
            .delete(format!("{b}/v1/keys/data/versions/1"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "key_in_use");

        // Background rewrap, then everything reveals again.
        let r = c
            .post(format!("{b}/v1/keys/rewrap"))
            .bearer_auth(&admin)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let start = Instant::now();
        let status = loop {
            let s: Value = c
                .get(format!("{b}/v1/keys/rewrap"))
                .bearer_auth(&admin)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if s["running"] == false {
                break s;
            }
            assert!(start.elapsed() < Duration::from_secs(30));
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(status["report"]["moved"], 20, "{status}");
        assert_eq!(status["report"]["remaining"], 0);
        reveal_all(&c, &b, &key, &tokens).await;
        let r = c
            .delete(format!("{b}/v1/keys/data/versions/1"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    });

    // CLI errors: a clear code and exit 1.
    let out = bin()
        .args([
            "keys",
            "destroy",
            "--purpose",
            "data",
            "--version",
            "2",
            "--json",
            "--data-dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["error"]["code"], "key_version_active");
    let out = bin()
        .args(["keys", "rotate", "--purpose", "audit_signing", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("key_rotation_unsupported"));

    // api-keys from the CLI: create, list, revoke (the server refuses the
    // revoked key within its cache TTL).
    let out = bin()
        .args([
            "api-keys",
            "create",
            "--name",
            "ops",
            "--role",
            "tokenize",
            "--json",
            "--data-dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (id, secret) = (
        created["id"].as_str().unwrap().to_owned(),
        created["key"].as_str().unwrap().to_owned(),
    );
    let out = bin()
        .args(["api-keys", "--json", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        list["api_keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["id"] == id.as_str())
    );
    let out = bin()
        .args(["api-keys", "revoke", &id, "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(1500));
    let status = rt.block_on(async {
        c.get(format!("{b}/v1/tokens/tok_x"))
            .bearer_auth(&secret)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 401);
    let out = bin()
        .args(["api-keys", "revoke", &id, "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "revoking twice is an error");
}
