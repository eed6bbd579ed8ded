//! No card number in any log line, database page, WAL frame or file the
//! server writes — even when callers put card numbers where they do not
//! belong (unknown fields, headers, URLs, metadata, error-provoking input).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::json;

const PANS: &str = include_str!("../../../testdata/pans.txt");

fn pans() -> Vec<String> {
    PANS.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

fn grouped(p: &str, sep: char) -> String {
    p.as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(&sep.to_string())
}

#[test]
fn no_card_number_reaches_logs_or_files() {
    let base = test_dir("panleak-");
    let dir = base.join("data");
    let admin = init(&dir);
    let log = base.join("server.log");
    let mut server = Server::start(
        &dir,
        &log,
        &[("TOKENGATE_LOG", "debug,hyper=info,h2=info,rustls=info")],
    );
    let rt = runtime();
    let pans = pans();
    rt.block_on(async {
        let c = client();
        let b = &server.base;
        let k = new_key(&c, b, &admin, &["tokenize", "reveal"]).await;
        for pan in &pans {
            for number in [pan.clone(), grouped(pan, ' '), grouped(pan, '-')] {
                // Valid tokenize with CVC, then reveal twice, search, delete.
                let v: serde_json::Value = c
                    .post(format!("{b}/v1/tokens"))
                    .bearer_auth(&k)
                    .header("user-agent", format!("agent {pan}"))
                    .header("x-request-id", pan.as_str())
                    .json(&json!({"card": {"number": number, "exp_month": 7, "exp_year": 2030, "cvc": if pan.starts_with('3') && pan.len() == 15 { "1234" } else { "123" }, "name": "T Est"}}))
                    .send().await.unwrap().json().await.unwrap();
                let t = v["token"].as_str().unwrap_or_else(|| panic!("{v}")).to_owned();
                for _ in 0..2 {
                    c.post(format!("{b}/v1/tokens/{t}/reveal")).bearer_auth(&k).send().await.unwrap();
                }
                c.post(format!("{b}/v1/tokens/search")).bearer_auth(&k).json(&json!({"number": number})).send().await.unwrap();
                c.delete(format!("{b}/v1/tokens/{t}")).bearer_auth(&k).send().await.unwrap();
            }
            // Card numbers in all the wrong places.
            let wrong = [
                json!({"card": {"number": pan, "exp_month": 7, "exp_year": 2030}, pan.as_str(): 1}),
                json!({"card": {"number": pan, "exp_month": pan, "exp_year": 2030}}),
                json!({"card": {"number": pan, "exp_month": 7, "exp_year": 2030}, "metadata": {"note": pan}}),
                json!({"card": {"number": pan, "exp_month": 7, "exp_year": 2001}}),
                json!({"card": {"number": format!("{pan}0"), "exp_month": 7, "exp_year": 2030}}),
                json!({"number": pan}),
            ];
            for body in wrong {
                c.post(format!("{b}/v1/tokens")).bearer_auth(&k).json(&body).send().await.unwrap();
            }
            c.post(format!("{b}/v1/tokens")).bearer_auth(&k).header("content-type", "application/json")
                .body(format!("{{\"card\": {{\"number\": \"{pan}")).send().await.unwrap();
            c.post(format!("{b}/v1/tokens/{pan}/reveal")).bearer_auth(&k).send().await.unwrap();
            c.get(format!("{b}/v1/tokens/{pan}?pan={pan}")).bearer_auth(&k).send().await.unwrap();
            c.post(format!("{b}/v1/tokens")).bearer_auth(pan).json(&json!({"card": {"number": pan}})).send().await.unwrap();
            c.get(format!("{b}/{pan}")).send().await.unwrap();
        }
        // A load run: many concurrent tokenizations of the listed cards.
        let mut tasks = Vec::new();
        for w in 0..8 {
            let (c, b, k, pans) = (c.clone(), b.clone(), k.clone(), pans.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..150 {
                    let pan = &pans[(w + i) % pans.len()];
                    let r = c.post(format!("{b}/v1/tokens")).bearer_auth(&k)
                        .json(&json!({"card": {"number": pan, "exp_month": 7, "exp_year": 2030}, "deterministic": i % 2 == 0}))
                        .send().await.unwrap();
                    assert!(r.status().is_success());
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let metrics = c.get(format!("{b}/metrics")).send().await.unwrap().text().await.unwrap();
        for pan in &pans {
            assert!(!metrics.contains(pan.as_str()), "metrics hold a card number");
        }
    });
    // kill -9 so the WAL is left as it was.
    server.kill9();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.lines().count() > 100,
        "debug logging was not on: the test would prove nothing"
    );
    let mut needles = Vec::new();
    for p in &pans {
        needles.push(p.clone());
        needles.push(grouped(p, ' '));
        needles.push(grouped(p, '-'));
    }
    assert!(
        std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with("-wal"))
    );
    assert_absent(&base, &needles);
}

/// The search above must be able to fail: plant a card number and see it caught.
#[test]
fn the_leak_search_finds_a_planted_card_number() {
    let dir = test_dir("panleak-control-");
    std::fs::write(
        dir.join("planted.log"),
        b"\x00\x01 binary page ... 4000056655665556 ...",
    )
    .unwrap();
    let caught = std::panic::catch_unwind(|| assert_absent(&dir, &["4000056655665556".to_owned()]));
    assert!(caught.is_err(), "a planted card number was not found");
    std::fs::remove_file(dir.join("planted.log")).unwrap();
}
