//! The `tokengate` binary: init, serve, audit verify (with tampering), exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use serde_json::{Value, json};

#[test]
fn init_creates_and_refuses_to_overwrite() {
    let dir = test_dir("cli-init-").join("data");
    let out = bin()
        .args(["init", "--json", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    for field in [
        "admin_api_key",
        "admin_api_key_id",
        "root_key_file",
        "database",
        "tls_certificate",
        "audit_public_key",
    ] {
        assert!(v[field].is_string(), "missing {field}");
    }
    assert!(v["admin_api_key"].as_str().unwrap().starts_with("tg_"));
    let mode = |p: &str| std::fs::metadata(dir.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("root.key"), 0o600);
    // The self-signed certificate is in the certificate store (key sealed),
    // not in files.
    assert_eq!(v["tls_certificate"], "localhost");
    assert!(!dir.join("tls").exists());
    assert_eq!(mode("tokengate.db"), 0o600);
    assert_eq!(mode(""), 0o700);
    let root_before = std::fs::read(dir.join("root.key")).unwrap();
    let again = bin()
        .args(["init", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing"));
    assert_eq!(
        std::fs::read(dir.join("root.key")).unwrap(),
        root_before,
        "keys never overwritten"
    );
}

#[test]
fn serve_refuses_a_readable_root_key_and_bad_config() {
    let dir = test_dir("cli-perm-").join("data");
    init(&dir);
    std::fs::set_permissions(dir.join("root.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = bin()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("chmod 600"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = bin()
        .args(["serve", "--data-dir"])
        .arg(&dir)
        .env("TOKENGATE_CVC_TTL_SECS", "99999")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cvc_ttl_secs"));
}

#[test]
fn serve_dev_initialises_and_prints_the_admin_key() {
    let dir = test_dir("cli-dev-").join("data");
    let mut child = bin()
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let mut saw_key = false;
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.trim_start().starts_with("tg_") {
            saw_key = true;
        }
        if line.starts_with("tokengate listening on https://127.0.0.1:") {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(saw_key);
    assert!(dir.join("root.key").exists());
}

fn sqlite(db: &std::path::Path, sql: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = tokengate_store_for_tests(db).await;
        store.execute_raw_for_tests(sql).await.unwrap();
        store.close().await;
    });
}

async fn tokengate_store_for_tests(db: &std::path::Path) -> tokengate_store::Store {
    tokengate_store::Store::open_sqlite(db).await.unwrap()
}

fn verify(dir: &std::path::Path) -> (i32, Value) {
    let out = bin()
        .args(["audit", "verify", "--json", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
    )
}

/// Populate a data dir with some audit records through a real server.
fn populated() -> std::path::PathBuf {
    let base = test_dir("cli-audit-");
    let dir = base.join("data");
    let admin = init(&dir);
    let mut server = Server::start(&dir, &base.join("server.log"), &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = client();
        let k = new_key(&c, &server.base, &admin, &["tokenize", "reveal"]).await;
        for i in 0..5 {
            let r = c
                .post(format!("{}/v1/tokens", server.base))
                .bearer_auth(&k)
                .json(&json!({"card": {"number": pan_from(i), "exp_month": 1, "exp_year": 2031}}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }
    });
    server.terminate();
    dir
}

#[test]
fn audit_verify_catches_edit_delete_reorder_truncate() {
    let dir = populated();
    let db = dir.join("tokengate.db");
    let (code, v) = verify(&dir);
    assert_eq!(code, 0, "{v}");
    assert!(v["records"].as_u64().unwrap() >= 8);

    // Edit one record's content.
    let d = populated();
    sqlite(
        &d.join("tokengate.db"),
        "UPDATE audit_events SET event_json = REPLACE(event_json, 'success', 'failure') WHERE seq = 4",
    );
    let (code, v) = verify(&d);
    assert_eq!((code, v["first_bad_record"].as_u64()), (1, Some(4)), "{v}");

    // Delete one in the middle.
    let d = populated();
    sqlite(
        &d.join("tokengate.db"),
        "DELETE FROM audit_events WHERE seq = 5",
    );
    let (code, v) = verify(&d);
    assert_eq!((code, v["first_bad_record"].as_u64()), (1, Some(6)), "{v}");

    // Reorder two records (swap their sequence numbers).
    let d = populated();
    sqlite(
        &d.join("tokengate.db"),
        "UPDATE audit_events SET seq = -1 WHERE seq = 3; UPDATE audit_events SET seq = 3 WHERE seq = 4; UPDATE audit_events SET seq = 4 WHERE seq = -1",
    );
    let (code, v) = verify(&d);
    assert_eq!((code, v["first_bad_record"].as_u64()), (1, Some(3)), "{v}");

    // Cut the newest record off the end.
    sqlite(
        &db,
        "DELETE FROM audit_events WHERE seq = (SELECT MAX(seq) FROM audit_events)",
    );
    let (code, v) = verify(&dir);
    assert_eq!(code, 1, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("cut off the end"),
        "{v}"
    );
}

#[test]
fn openapi_document_in_docs_is_current() {
    let out = bin().arg("openapi").output().unwrap();
    assert!(out.status.success());
    let generated = String::from_utf8(out.stdout).unwrap();
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/openapi.json"
    ))
    .unwrap();
    assert_eq!(
        generated.trim(),
        committed.trim(),
        "docs/openapi.json is stale: run `cargo run -- openapi > docs/openapi.json`"
    );
}

#[test]
fn scan_is_wired_into_the_binary() {
    let dir = test_dir("cli-scan-");
    std::fs::write(
        dir.join("app.log"),
        "GET /pay?card=4000 0566 5566 5556 200\n",
    )
    .unwrap();
    std::fs::write(dir.join("clean.log"), "order 1234567812345678 shipped\n").unwrap();
    let out = bin()
        .args(["scan", "--json", "--include-test-cards"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let finding: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(finding["brand"], "visa");
    assert!(finding["path"].as_str().unwrap().ends_with("app.log"));
    assert!(!text.contains("4000 0566 5566 5556") && !text.contains("4000056655665556"));
    std::fs::remove_file(dir.join("app.log")).unwrap();
    let out = bin().arg("scan").arg(&dir).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn json_logs_are_one_json_object_per_line() {
    let base = test_dir("cli-jsonlog-");
    let dir = base.join("data");
    let admin = init(&dir);
    let log = base.join("server.log");
    let mut server = Server::start(
        &dir,
        &log,
        &[
            ("TOKENGATE_LOG_FORMAT", "json"),
            ("TOKENGATE_LOG", "debug,hyper=info,h2=info,rustls=info"),
        ],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = client();
        let k = new_key(&c, &server.base, &admin, &["tokenize"]).await;
        let r = c
            .post(format!("{}/v1/tokens", server.base))
            .bearer_auth(&k)
            .json(
                &json!({"card": {"number": "4242424242424241", "exp_month": 1, "exp_year": 2031}}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422);
    });
    server.terminate();
    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        lines += 1;
    }
    assert!(lines >= 3, "expected request logs, got {lines} lines");
    assert!(
        text.contains("\"route\":\"/v1/tokens\""),
        "request log line missing"
    );
    assert!(!text.contains("4242424242424241"));
}

#[test]
fn audit_checkpoint_pins_the_log_for_a_later_verify() {
    let dir = populated();
    let base = dir.parent().unwrap().to_path_buf();
    let saved = base.join("checkpoint.txt");
    let out = bin()
        .args(["audit", "checkpoint", "--json", "--out"])
        .arg(&saved)
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cp: Value = serde_json::from_slice(&out.stdout).unwrap();
    let size = cp["tree_size"].as_u64().unwrap();
    assert!(size >= 8, "{cp}");
    assert_eq!(
        std::fs::read_to_string(&saved).unwrap(),
        cp["note"].as_str().unwrap()
    );

    let verify_pinned = |file: &std::path::Path| {
        let out = bin()
            .args(["audit", "verify", "--json", "--checkpoint"])
            .arg(file)
            .arg("--data-dir")
            .arg(&dir)
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, v, _) = verify_pinned(&saved);
    assert_eq!(
        (code, v["pinned_checkpoint"].as_u64()),
        (0, Some(size)),
        "{v}"
    );

    // A proof for a covered record, as JSON.
    let out = bin()
        .args(["audit", "prove", "--seq", "2", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let proof: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(proof["tree_size"].as_u64(), Some(size));
    // Asking beyond the checkpoint is a usage error, not a crash.
    let out = bin()
        .args(["audit", "prove", "--seq", "100000", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    // Unusable files: exit 2 with a message; a note from another vault: exit 1.
    let garbage = base.join("garbage.txt");
    std::fs::write(&garbage, "not a checkpoint\n").unwrap();
    let (code, _, err) = verify_pinned(&garbage);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("checkpoint"), "{err}");
    let other = populated();
    let foreign = base.join("foreign.txt");
    let out = bin()
        .args(["audit", "checkpoint", "--out"])
        .arg(&foreign)
        .arg("--data-dir")
        .arg(&other)
        .output()
        .unwrap();
    assert!(out.status.success());
    let (code, v, _) = verify_pinned(&foreign);
    assert_eq!(code, 1, "{v}");

    // Edit a covered record: caught against the saved checkpoint.
    sqlite(
        &dir.join("tokengate.db"),
        "UPDATE audit_events SET event_json = REPLACE(event_json, 'success', 'failure') WHERE seq = 2",
    );
    let (code, v, _) = verify_pinned(&saved);
    assert_eq!(code, 1, "{v}");
}

#[test]
fn audit_search_and_export_from_the_cli() {
    let dir = populated();
    let run = |args: &[&str]| {
        let out = bin()
            .args(args)
            .arg("--data-dir")
            .arg(&dir)
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&[
        "audit",
        "search",
        "--action",
        "token_create",
        "--outcome",
        "success",
    ]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(lines.iter().all(|l| l["event"]["action"] == "token_create"));

    // The export carries the exact hashed JSON: the chain can be recomputed
    // from the file alone, and it ends at least where the search saw.
    let (code, out, err) = run(&["audit", "export", "--since", "1970-01-01T00:00:00Z"]);
    assert_eq!(code, 0, "{err}");
    let mut prev = tokengate_audit::GENESIS;
    let mut n = 0u64;
    for l in out.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        n += 1;
        assert_eq!(v["seq"].as_u64(), Some(n));
        assert_eq!(
            v["prev_hash"].as_str().unwrap(),
            data_encoding::HEXLOWER.encode(&prev)
        );
        let h = tokengate_audit::chain_hash(n, &prev, v["event_json"].as_str().unwrap().as_bytes());
        assert_eq!(
            v["hash"].as_str().unwrap(),
            data_encoding::HEXLOWER.encode(&h)
        );
        prev = h;
    }
    assert!(n >= 9, "{out}");
    // The search and the export are themselves on record.
    let (_, out, _) = run(&[
        "audit",
        "search",
        "--action",
        "audit_read",
        "--actor",
        "cli",
    ]);
    assert!(out.lines().count() >= 2, "{out}");

    for bad in [
        vec!["audit", "search", "--since", "yesterday"],
        vec!["audit", "search", "--outcome", "maybe"],
        vec!["audit", "search", "--limit", "0"],
        vec!["audit", "export", "--since", "soon"],
    ] {
        let (code, _, err) = run(&bad);
        assert_eq!(code, 2, "{bad:?}: {err}");
        assert!(err.starts_with("error:"), "{err}");
    }
}

#[test]
fn hmac_audit_fields_hide_the_value_and_audit_hash_finds_it() {
    let base = test_dir("cli-hmac-");
    let dir = base.join("data");
    let admin = init(&dir);
    let agent = "shop-checkout/7.1 (secret-host-name)";
    let mut server = Server::start(
        &dir,
        &base.join("server.log"),
        &[("TOKENGATE_AUDIT_HMAC_FIELDS", "client_ip,user_agent")],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = client();
        let k = new_key(&c, &server.base, &admin, &["tokenize"]).await;
        let r = c
            .post(format!("{}/v1/tokens", server.base))
            .bearer_auth(&k)
            .header("user-agent", agent)
            .json(&json!({"card": {"number": pan_from(1), "exp_month": 1, "exp_year": 2031}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    });
    server.terminate();
    let hash = |v: &str| {
        let out = bin()
            .args(["audit", "hash", v, "--data-dir"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let (ua_hash, ip_hash) = (hash(agent), hash("127.0.0.1"));
    assert!(ua_hash.starts_with("hmac-sha256-v1:"), "{ua_hash}");
    assert_ne!(ua_hash, hash("other"));
    let out = bin()
        .args(["audit", "search", "--action", "token_create", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let ev: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(ev["event"]["user_agent_hmac"], ua_hash.as_str(), "{ev}");
    assert_eq!(ev["event"]["client_ip_hmac"], ip_hash.as_str(), "{ev}");
    assert!(
        ev["event"]["user_agent"].is_null() && ev["event"]["client_ip"].is_null(),
        "{ev}"
    );
    // The clear values are nowhere in the database or its WAL.
    let files = files_under(&dir);
    assert!(files.iter().any(|f| f.ends_with("tokengate.db")));
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes.windows(16).any(|w| w == b"secret-host-name"),
            "clear user agent in {}",
            f.display()
        );
    }
    let (code, v) = verify(&dir);
    assert_eq!(code, 0, "{v}");

    // An unknown field name is a configuration error.
    let out = bin()
        .args(["serve", "--data-dir"])
        .arg(&dir)
        .env("TOKENGATE_AUDIT_HMAC_FIELDS", "client_ip,password")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn audit_prune_keeps_recent_records_and_checks_its_input() {
    let dir = populated();
    let out = bin()
        .args(["audit", "prune", "--older-than-days", "1", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["pruned"].as_u64(), v["upto_seq"].as_u64()),
        (Some(0), Some(0)),
        "{v}"
    );
    let out = bin()
        .args(["audit", "prune", "--older-than-days", "0", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let (code, v) = verify(&dir);
    assert_eq!(code, 0, "{v}");
}

/// A drain gone from the configuration keeps its cursor, which holds back
/// pruning: `audit drains` shows it, `--forget` removes it (audited).
#[test]
fn audit_drains_lists_and_forgets_cursors() {
    let dir = populated();
    sqlite(
        &dir.join("tokengate.db"),
        "INSERT INTO audit_drains (name, delivered_seq) VALUES ('old-siem', 2)",
    );
    let drains = |args: &[&str]| {
        let out = bin()
            .args(["audit", "drains", "--json"])
            .args(args)
            .arg("--data-dir")
            .arg(&dir)
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, v, err) = drains(&[]);
    assert_eq!(code, 0, "{err}");
    let head = v["head_seq"].as_u64().unwrap();
    assert!(head > 2, "{v}");
    assert_eq!(
        v["drains"],
        json!([{"name": "old-siem", "delivered_seq": 2, "behind": head - 2}])
    );
    let (code, v, err) = drains(&["--forget", "old-siem"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(v, json!({"forgotten": "old-siem", "delivered_seq": 2}));
    let (code, _, err) = drains(&["--forget", "old-siem"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("no drain of that name has a delivery cursor"),
        "{err}"
    );
    let (_, v, _) = drains(&[]);
    assert_eq!(v["drains"], json!([]));
    let (code, v) = verify(&dir);
    assert_eq!(code, 0, "{v}");
}

#[test]
fn a_checkpoint_is_signed_once_enough_records_wait() {
    let base = test_dir("cli-ckpt-count-");
    let dir = base.join("data");
    let admin = init(&dir);
    let mut server = Server::start(
        &dir,
        &base.join("server.log"),
        &[
            ("TOKENGATE_AUDIT_CHECKPOINT_SECS", "3600"),
            ("TOKENGATE_AUDIT_CHECKPOINT_RECORDS", "5"),
        ],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let latest = |rt: &tokio::runtime::Runtime, admin: &str, base: &str| -> u64 {
        rt.block_on(async {
            let c = client();
            let k = new_key(&c, base, admin, &["auditor"]).await;
            let v: Value = c
                .get(format!("{base}/v1/audit/checkpoint"))
                .bearer_auth(&k)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["tree_size"].as_u64().unwrap_or(0)
        })
    };
    // The start-up checkpoint, then eight more records (key creations).
    std::thread::sleep(std::time::Duration::from_millis(500));
    let start = latest(&rt, &admin, &server.base);
    for _ in 0..7 {
        latest(&rt, &admin, &server.base);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let now = latest(&rt, &admin, &server.base);
        if now >= start + 5 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no count-triggered checkpoint ({start} -> {now})"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    server.terminate();
}

/// While the server commits a steady tokenize load (its writer keeps each
/// batch open, holding SQLite's write lock, for as long as an fsync runs),
/// another process's writes still get their turn: `api-keys create` from
/// the command line succeeds every time instead of running into SQLite's
/// busy timeout, and the load keeps flowing meanwhile.
#[test]
fn cli_writes_get_through_while_the_server_is_under_load() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    let base = test_dir("cli-load-");
    let dir = base.join("data");
    let admin = init(&dir);
    let server = Server::start(&dir, &base.join("server.log"), &[]);
    let rt = runtime();
    let key = rt.block_on(new_key(&client(), &server.base, &admin, &["tokenize"]));
    let stop = Arc::new(AtomicBool::new(false));
    let created = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..16u64 {
        let (c, b, k) = (client(), server.base.clone(), key.clone());
        let (stop, created) = (stop.clone(), created.clone());
        tasks.push(rt.spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let resp = c
                    .post(format!("{b}/v1/tokens"))
                    .bearer_auth(&k)
                    .json(&json!({"card": {"number": pan_from(w * 1_000_000 + i), "exp_month": 5, "exp_year": 2033}}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 201);
                created.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let until = Instant::now() + Duration::from_secs(30);
    while created.load(Ordering::Relaxed) < 300 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        created.load(Ordering::Relaxed) >= 300,
        "the load never got going"
    );
    for i in 0..3 {
        let before = created.load(Ordering::Relaxed);
        // SQLite's busy timeout is 10 s: a write that cannot get the lock
        // fails by then. Past a minute the command is stuck: fail, not hang.
        let mut child = bin()
            .args([
                "api-keys",
                "create",
                "--name",
                &format!("ops{i}"),
                "--role",
                "tokenize",
                "--json",
                "--data-dir",
            ])
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > until {
                let _ = child.kill();
                panic!("a CLI write under load was still waiting after a minute");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(status.success(), "a CLI write under load failed: {stderr}");
        // The load was still being served around the CLI's write.
        let until = Instant::now() + Duration::from_secs(30);
        while created.load(Ordering::Relaxed) < before + 50 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            created.load(Ordering::Relaxed) >= before + 50,
            "the load stopped"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        rt.block_on(t).unwrap();
    }
    // No card number of the load in the database, its WAL or the log.
    let used: Vec<String> = (0..16u64)
        .flat_map(|w| (1..=5).map(move |i| pan_from(w * 1_000_000 + i)))
        .collect();
    assert_absent(&base, &used);
}

/// Files named `core…` under `dir`.
fn core_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|f| {
            f.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("core"))
        })
        .collect()
}

/// A key with `tokenize` and `reveal`, then one card tokenized and revealed
/// through the server at `base`: the card number is in its memory.
fn tokenize_one(base: &str, admin: &str, pan: &str) {
    runtime().block_on(async {
        let c = client();
        let key = new_key(&c, base, admin, &["tokenize", "reveal"]).await;
        tokenize_and_reveal(&c, base, &key, pan).await;
    });
}

/// Panic unless `/metrics` at `base` has every one of `lines` as a line;
/// the whole text otherwise.
fn assert_metrics_lines(base: &str, lines: &[&str]) -> String {
    let metrics = runtime().block_on(metrics_text(&client(), base));
    for line in lines {
        assert!(
            metrics.lines().any(|l| l == *line),
            "{line} not in /metrics"
        );
    }
    metrics
}

/// `kill -ABRT` on a process: how it ended.
fn abort_and_wait(child: &mut std::process::Child) -> std::process::ExitStatus {
    let sent = std::process::Command::new("kill")
        .args(["-ABRT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    child.wait().unwrap()
}

/// A crash must not copy the process's memory (card numbers, keys) into a
/// core file. The server is started the way a debugging setup would start
/// it, with `ulimit -c unlimited`, in a directory of its own; it tokenizes
/// and reveals a card and is then sent SIGABRT. Before the hardening in
/// `crates/tokengate/src/hardening.rs` this wrote a core file of about a
/// gigabyte (sparse) holding the card number.
#[test]
fn a_crashing_server_writes_no_core_dump() {
    use std::os::unix::process::ExitStatusExt;
    let dir = test_dir("tg-core-");
    let data = dir.join("data");
    let admin = init(&data);
    // Control: an ordinary process started the same way here does dump a
    // core. Where the host collects none at all (no core support), the
    // limits below are still checked.
    let mut control = std::process::Command::new("sh")
        .current_dir(&dir)
        .args(["-c", "ulimit -c unlimited && exec sleep 30"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let control_dumped = abort_and_wait(&mut control).core_dumped();
    for f in core_files(&dir) {
        std::fs::remove_file(f).unwrap();
    }
    if !control_dumped {
        eprintln!("note: this host dumps no core even for `sleep`; only the limits are checked");
    }

    let mut cmd = bin_via(&["sh", "-c", "ulimit -c unlimited && exec \"$0\" \"$@\""]);
    cmd.current_dir(&dir)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data);
    let mut server = Server::spawn(cmd, &dir.join("server.log"));
    let pan = pan_from(424_242_424_242);
    tokenize_one(&server.base, &admin, &pan);
    // The limit the shell raised was lowered again, soft and hard.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.child.id())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    let cols: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(&cols[4..6], ["0", "0"], "{core}");
    let metrics = assert_metrics_lines(
        &server.base,
        &[
            "tokengate_process_memory_locked 0",
            "tokengate_process_core_dumps_disabled 1",
        ],
    );
    // Its value is the host's.
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tokengate_host_swap_areas "))
    );

    let status = abort_and_wait(&mut server.child);
    assert_eq!(status.signal(), Some(6), "{status:?}");
    assert!(!status.core_dumped(), "the server dumped a core");
    let cores = core_files(&dir);
    assert!(cores.is_empty(), "core files: {cores:?}");
    assert_absent(&dir, &[pan]);
}

/// `lock_memory = true`: the serving process's pages are locked in RAM
/// (`VmLck` in `/proc/<pid>/status`), and where they cannot be locked
/// `serve` refuses to start with a message that says how to allow it.
#[test]
fn lock_memory_keeps_the_server_in_ram_or_refuses_to_start() {
    let dir = test_dir("tg-mlock-");
    let data = dir.join("data");
    let admin = init(&data);
    let server = Server::start(
        &data,
        &dir.join("server.log"),
        &[("TOKENGATE_LOCK_MEMORY", "true")],
    );
    let pan = pan_from(737_373_737);
    tokenize_one(&server.base, &admin, &pan);
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let locked_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    // The binary, the runtime's threads and the pages touched so far.
    assert!(locked_kb >= 1024, "VmLck {locked_kb} kB");
    let _ = assert_metrics_lines(
        &server.base,
        &[
            "tokengate_process_memory_locked 1",
            "tokengate_process_core_dumps_disabled 1",
        ],
    );
    drop(server);
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap();
    assert!(log.contains("memory locked"), "{log}");

    // Without the right to lock: no CAP_IPC_LOCK (dropped from the bounding
    // and inheritable sets, so not regained by root at exec) and a lock
    // limit of 0. Needs root to drop them; skipped otherwise.
    let uid = std::process::Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        eprintln!("note: not root; the refusal is not checked");
        return;
    }
    let mut refused = bin_via(&[
        "setpriv",
        "--bounding-set=-ipc_lock",
        "--inh-caps=-ipc_lock",
        "prlimit",
        "--memlock=0:0",
        "--",
    ])
    .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
    .arg(&data)
    .env("TOKENGATE_LOCK_MEMORY", "true")
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    // A server that started anyway would never exit: stop it and fail.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while refused.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = refused.kill();
            panic!("serve started although its memory could not be locked");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = refused.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("memory cannot be locked"), "{stderr}");
    assert!(stderr.contains("LimitMEMLOCK"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
    assert_absent(&dir, &[pan]);
}
