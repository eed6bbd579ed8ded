//! `kill -9` during a tokenize load: after a restart every token whose 201
//! the client received reveals to its card, and the audit trail verifies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

#[test]
fn acknowledged_tokens_survive_kill_9() {
    let base = test_dir("crash-");
    let dir = base.join("data");
    let admin = init(&dir);
    let log = base.join("server.log");
    let mut server = Server::start(&dir, &log, &[]);
    let rt = runtime();

    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let key = rt.block_on(new_key(
        &client(),
        &server.base,
        &admin,
        &["tokenize", "reveal"],
    ));
    // 16 clients tokenize distinct cards until the server dies (bounded).
    let mut tasks = Vec::new();
    for w in 0..16u64 {
        let (c, b, k, acked) = (client(), server.base.clone(), key.clone(), acked.clone());
        tasks.push(rt.spawn(async move {
            let start = Instant::now();
            for i in 0..100_000u64 {
                if start.elapsed() > Duration::from_secs(20) {
                    break;
                }
                let pan = pan_from(w * 1_000_000 + i + 1);
                let resp = c
                    .post(format!("{b}/v1/tokens"))
                    .bearer_auth(&k)
                    .json(&json!({"card": {"number": pan, "exp_month": 5, "exp_year": 2033}}))
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status() == 201 => {
                        let v: Value = match r.json().await {
                            Ok(v) => v,
                            Err(_) => break, // died mid-body: not acknowledged
                        };
                        acked
                            .lock()
                            .unwrap()
                            .push((v["token"].as_str().unwrap().to_owned(), pan));
                    }
                    Ok(r) => panic!("unexpected status {}", r.status()),
                    Err(_) => break, // server gone
                }
            }
        }));
    }
    // Let the load run, then kill -9 while requests are in flight.
    let deadline = Instant::now() + Duration::from_secs(15);
    while acked.lock().unwrap().len() < 400 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill9();
    for t in tasks {
        rt.block_on(t).unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 100,
        "too little load before the kill: {}",
        acked.len()
    );

    let server = Server::start(&dir, &log, &[]);
    let c = client();
    rt.block_on(async {
        let mut checks = Vec::new();
        for chunk in acked.chunks(acked.len().div_ceil(16)) {
            let (c, b, key, chunk) = (c.clone(), server.base.clone(), key.clone(), chunk.to_vec());
            checks.push(tokio::spawn(async move {
                for (token, pan) in chunk {
                    let r: Value = c
                        .post(format!("{b}/v1/tokens/{token}/reveal"))
                        .bearer_auth(&key)
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    assert_eq!(
                        r["card"]["number"].as_str(),
                        Some(pan.as_str()),
                        "token {token} lost after kill -9"
                    );
                }
            }));
        }
        for ch in checks {
            ch.await.unwrap();
        }
    });
    drop(server);
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
    // And none of those card numbers is in the database, WAL or log in clear.
    let pans: Vec<String> = acked.iter().map(|(_, p)| p.clone()).collect();
    assert_absent(&base, &pans);
}
