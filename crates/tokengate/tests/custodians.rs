//! The custodians root-key provider through the real binary: `init
//! --custodians 3 --threshold 2` prints three shares once and writes no key
//! file; every command that needs the root key stays sealed with fewer than
//! two valid shares, reports a wrong or mistyped share, and opens with any
//! two; `serve` unseals from shares on standard input; no share appears in
//! any file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

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
    let mut child = bin()
        .args(["keys", "--json", "--data-dir"])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
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

    // `serve` unseals from its standard input, then serves card data.
    let log = std::fs::File::create(base.join("server.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .env_remove("DATABASE_URL")
        .env_remove("PORT")
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{}\n{}\n", shares[1], shares[2]).as_bytes())
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("server exited").unwrap();
        if let Some(a) = line.strip_prefix("tokengate listening on ") {
            break a.trim().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = client();
        let key = new_key(&c, &addr, &admin, &["tokenize", "reveal"]).await;
        let v: Value = c
            .post(format!("{addr}/v1/tokens"))
            .bearer_auth(&key)
            .json(
                &json!({"card": {"number": "4242424242424242", "exp_month": 1, "exp_year": 2039}}),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = v["token"].as_str().unwrap().to_owned();
        let v: Value = c
            .post(format!("{addr}/v1/tokens/{token}/reveal"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["card"]["number"], "4242424242424242");
    });
    let _ = child.kill();
    let _ = child.wait();

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
