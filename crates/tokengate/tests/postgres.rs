//! The same binary on PostgreSQL (`DATABASE_URL=postgres://…`): init, serve,
//! tokenize, reveal, audit verify. Two nodes share one database and one
//! audit chain. URL from `TOKENGATE_TEST_POSTGRES_URL` (CI sets it).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod common;

use common::*;
use serde_json::{Value, json};

#[test]
fn two_nodes_on_postgresql() {
    let Some(node_url) = fresh_pg_schema("e2e") else {
        return;
    };
    let rt = runtime();

    let base = test_dir("pg-");
    let dir = base.join("data");
    let init = common::init_json(&dir, &[("DATABASE_URL", &node_url)]);
    assert_eq!(init["database"], "postgresql");
    assert!(
        !dir.join("tokengate.db").exists(),
        "no SQLite file when PostgreSQL is selected"
    );
    let admin_key = init["admin_api_key"].as_str().unwrap().to_owned();

    // A second init against the same database is refused (keys never replaced).
    let again = bin()
        .args(["init", "--data-dir"])
        .arg(base.join("other"))
        .env("DATABASE_URL", &node_url)
        .output()
        .unwrap();
    assert!(!again.status.success());

    let env = [("DATABASE_URL", node_url.as_str())];
    let a = Server::start(&dir, &base.join("a.log"), &env);
    let b = Server::start(&dir, &base.join("b.log"), &env);
    rt.block_on(async {
        let c = client();
        let k = new_key(&c, &a.base, &admin_key, &["tokenize", "reveal"]).await;
        let mut tokens = Vec::new();
        for i in 0..40u64 {
            let node = if i % 2 == 0 { &a.base } else { &b.base };
            let pan = pan_from(9_000 + i);
            let v: Value = c
                .post(format!("{node}/v1/tokens"))
                .bearer_auth(&k)
                .json(&json!({"card": {"number": pan, "exp_month": 2, "exp_year": 2031, "cvc": "321"}}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            tokens.push((v["token"].as_str().unwrap().to_owned(), pan));
        }
        // Reveal on the other node: same data, CVC once across nodes.
        for (i, (t, pan)) in tokens.iter().enumerate() {
            let node = if i % 2 == 0 { &b.base } else { &a.base };
            let r: Value = c.post(format!("{node}/v1/tokens/{t}/reveal")).bearer_auth(&k).send().await.unwrap().json().await.unwrap();
            assert_eq!(r["card"]["number"].as_str(), Some(pan.as_str()));
            assert_eq!(r["card"]["cvc"], "321");
            let other = if i % 2 == 0 { &a.base } else { &b.base };
            let r: Value = c.post(format!("{other}/v1/tokens/{t}/reveal")).bearer_auth(&k).send().await.unwrap().json().await.unwrap();
            assert!(r["card"].get("cvc").is_none());
        }
        let (s, e) = {
            let r = c.post(format!("{}/v1/tokens", a.base)).bearer_auth(&k).json(&json!({"card": {"number": "4242424242424241", "exp_month": 1, "exp_year": 2030}})).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        };
        assert_eq!((s, e["error"]["code"].as_str()), (422, Some("invalid_luhn")));
    });
    drop(a);
    drop(b);
    let out = bin()
        .args(["audit", "verify", "--json", "--data-dir"])
        .arg(&dir)
        .env("DATABASE_URL", &node_url)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "{v}");
    assert!(v["records"].as_u64().unwrap() > 120, "{v}");
}
