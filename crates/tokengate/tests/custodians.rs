//! The custodians root-key provider through the real binary: `init
//! --custodians 3 --threshold 2` prints three shares once and writes no key
//! file; every command that needs the root key stays sealed with fewer than
//! two valid shares, reports a wrong or mistyped share, and opens with any
//! two; `serve` starts sealed (card routes 503 `sealed`), K-1 shares sent
//! to `POST /v1/sys/unseal` do not unseal, a bad share is reported, the K-th
//! (through `tokengate unseal`) does; `tokengate seal` seals again; no share
//! appears in any file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::*;
use serde_json::{Value, json};

fn init_custodians(dir: &Path) -> (String, Vec<String>) {
    let out = bin()
        .args([
            "init",
            "--json",
            "--custodians",
            "3",
            "--threshold",
            "2",
            "--data-dir",
        ])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["root_key_provider"], "custodians");
    assert_eq!(v["threshold"], 2);
    assert!(v.get("root_key_file").is_none());
    let shares: Vec<String> = v["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    (v["admin_api_key"].as_str().unwrap().to_owned(), shares)
}

/// `tokengate keys --json` with `input` on standard input.
fn keys_with(dir: &Path, input: &str) -> std::process::Output {
    output_with_stdin(bin().args(["keys", "--json", "--data-dir"]).arg(dir), input)
}

#[test]
fn shares_unseal_k_and_only_k() {
    let base = test_dir("cust-");
    let dir = base.join("data");
    let (admin, shares) = init_custodians(&dir);
    assert_eq!(shares.len(), 3);
    assert!(shares.iter().all(|s| s.starts_with("tgs1-")));
    assert!(!dir.join("root.key").exists(), "no key file");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(dir.join("custodians.json"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // K-1 shares: still sealed, progress reported.
    let out = keys_with(&dir, &format!("{}\n", shares[0]));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sealed") && err.contains("1 of 2 shares"),
        "{err}"
    );
    // No shares at all.
    let out = keys_with(&dir, "");
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 of 2 shares"));
    // A share of another data directory is reported as such.
    let other = base.join("other");
    let (_, foreign) = init_custodians(&other);
    let out = keys_with(&dir, &format!("{}\n{}\n", shares[0], foreign[1]));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("share 2 does not belong to this data directory"),
        "{err}"
    );
    assert!(!err.contains("tgs1-"), "errors never echo a share: {err}");
    // A mistyped share.
    let mut typo = shares[1].clone();
    let i = typo.len() - 12;
    let c = if &typo[i..=i] == "A" { "B" } else { "A" };
    typo.replace_range(i..=i, c);
    let out = keys_with(&dir, &format!("{typo}\n"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mistyped"));
    // The same share twice does not count twice.
    let out = keys_with(&dir, &format!("{}\n{}\n", shares[2], shares[2]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already entered"));

    // Any K shares open it.
    for (a, b) in [(0, 1), (2, 0), (1, 2)] {
        let out = keys_with(&dir, &format!("{}\n{}\n", shares[a], shares[b]));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v["keys"].as_array().unwrap().len() >= 7);
    }

    // `serve` starts sealed: card routes answer 503 `sealed` until K shares
    // arrive over the API.
    let server = Server::start(&dir, &base.join("server.log"), &[]);
    let addr = server.base.clone();
    let rt = runtime();
    let c = client();
    rt.block_on(async {
        let r = c.get(format!("{addr}/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let r = c.get(format!("{addr}/readyz")).send().await.unwrap();
        assert_eq!(r.status(), 503);
        let r = c
            .post(format!("{addr}/v1/tokens"))
            .bearer_auth(&admin)
            .json(
                &json!({"card": {"number": "4242424242424242", "exp_month": 1, "exp_year": 2039}}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "sealed");
        let unseal = |share: String| {
            let c = c.clone();
            let addr = addr.clone();
            async move {
                c.post(format!("{addr}/v1/sys/unseal"))
                    .json(&json!({ "share": share }))
                    .send()
                    .await
                    .unwrap()
            }
        };
        let r = unseal(shares[0].clone()).await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v, json!({"sealed": true, "progress": 1, "threshold": 2}));
        // A bad share is reported and does not count.
        let r = unseal(foreign[1].clone()).await;
        assert_eq!(r.status(), 422);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "share_unknown");
        assert!(!e.to_string().contains("tgs1-"));
        let v: Value = c
            .get(format!("{addr}/v1/sys/seal-status"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v, json!({"sealed": true, "progress": 1, "threshold": 2}));
        let r = c
            .post(format!("{addr}/v1/tokens/tok_x/reveal"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503, "K-1 shares do not unseal");
    });
    // The second share through `tokengate unseal` (loopback: no pin needed).
    let out = output_with_stdin(
        bin().args(["unseal", "--json", "--url", &addr]),
        &format!("{}\n", shares[2]),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sealed"], false);
    let token = rt.block_on(async {
        let key = new_key(&c, &addr, &admin, &["tokenize", "reveal"]).await;
        let token = tokenize_and_reveal(&c, &addr, &key, "4242424242424242").await;
        // The unseal is audited, with the share refused while sealed.
        let auditor = new_key(&c, &addr, &admin, &["auditor"]).await;
        let v: Value = c
            .get(format!("{addr}/v1/audit/events?action=unseal"))
            .bearer_auth(&auditor)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let detail = v["events"][0]["event"]["detail"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(detail.contains("refused_shares_while_sealed=1"), "{detail}");
        token
    });
    // `tokengate seal` (admin): card routes refuse again.
    let out = bin()
        .args(["seal", "--json", "--url", &addr])
        .env("TOKENGATE_API_KEY", &admin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    rt.block_on(async {
        let r = c
            .get(format!("{addr}/v1/tokens/{token}"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        // Guessing shares is rate-limited (30 attempts a minute).
        let mut limited = false;
        for _ in 0..31 {
            let r = c
                .post(format!("{addr}/v1/sys/unseal"))
                .json(&json!({"share": "tgs1-1-AAAA-0000"}))
                .send()
                .await
                .unwrap();
            if r.status() == 429 {
                let e: Value = r.json().await.unwrap();
                assert_eq!(e["error"]["code"], "too_many_unseal_attempts");
                limited = true;
                break;
            }
            assert_eq!(r.status(), 422);
        }
        assert!(limited, "unseal attempts are rate-limited");
    });
    drop(server);
    // No share, in text or as raw bytes, is in any file the vault wrote.
    let mut needles: Vec<String> = shares.clone();
    for s in &shares {
        // The base32 body alone.
        needles.push(s.split('-').nth(2).unwrap().to_owned());
    }
    for f in files_under(&dir) {
        let bytes = std::fs::read(&f).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for n in &needles {
            assert!(!text.contains(n.as_str()), "a share is in {}", f.display());
        }
    }
}
