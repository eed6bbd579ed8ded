//! The vault API over real HTTPS: error paths and codes, the role matrix,
//! card semantics (CVC, delete, deterministic, formats), fail-closed audit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use support::{Harness, card};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_reveal_delete_round_trip() {
    let h = Harness::start().await;
    let k = h.key(&["tokenize", "reveal"]).await;
    for pan in support::pans() {
        let (s, v) = h
            .tokenize(
                &k,
                json!({"number": pan, "exp_month": 1, "exp_year": 2032, "name": "Ada Lovelace"}),
            )
            .await;
        assert_eq!(s, 201, "{pan}: {v}");
        let tok = v["token"].as_str().unwrap();
        assert!(tok.starts_with("tok_") && tok.len() == 44);
        assert_eq!(v["card"]["last4"], pan[pan.len() - 4..]);
        assert_eq!(v["card"]["bin"], pan[..6]);
        assert!(
            !v.to_string().contains(pan),
            "tokenize response holds the PAN"
        );

        let (s, m) = h
            .call("GET", &format!("/v1/tokens/{tok}"), Some(&k), None)
            .await;
        assert_eq!(s, 200);
        assert!(!m.to_string().contains(pan));

        let (s, r) = h
            .call("POST", &format!("/v1/tokens/{tok}/reveal"), Some(&k), None)
            .await;
        assert_eq!(s, 200, "{r}");
        assert_eq!(r["card"]["number"], pan);
        assert_eq!(r["card"]["name"], "Ada Lovelace");
        assert_eq!(r["card"]["exp_year"], 2032);
    }
    // Delete: the record and its DEK are gone, reveal is 404.
    let (_, v) = h.tokenize(&k, card("4242 4242 4242 4242")).await;
    let tok = v["token"].as_str().unwrap().to_owned();
    let (s, _) = h
        .call("DELETE", &format!("/v1/tokens/{tok}"), Some(&k), None)
        .await;
    assert_eq!(s, 204);
    let (s, e) = h
        .call("POST", &format!("/v1/tokens/{tok}/reveal"), Some(&k), None)
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (404, Some("token_not_found"))
    );
    let (s, _) = h
        .call("DELETE", &format!("/v1/tokens/{tok}"), Some(&k), None)
        .await;
    assert_eq!(s, 404);
    assert!(
        h.vault()
            .store()
            .get_token("default", &tok, 0)
            .await
            .unwrap()
            .is_none()
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_path_has_its_code_and_no_5xx() {
    let h = Harness::start_with(|c| c.max_body_bytes = 64 * 1024).await;
    let k = h.key(&["tokenize", "reveal"]).await;
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"card": card("4242424242424241")}),
            422,
            "invalid_luhn",
        ),
        (
            json!({"card": card("42424242424")}),
            422,
            "invalid_card_length",
        ),
        (
            json!({"card": card("4242 4242 4242 4242 4242")}),
            422,
            "invalid_card_length",
        ),
        (
            json!({"card": card("378282246310005 0")}),
            422,
            "invalid_card_length",
        ),
        (
            json!({"card": card("1234567812345670")}),
            422,
            "unknown_brand",
        ),
        (
            json!({"card": card("4242-4242-abcd-4242")}),
            422,
            "invalid_number_format",
        ),
        (
            json!({"card": {"number": "4242424242424242", "exp_month": 1, "exp_year": 2020}}),
            422,
            "card_expired",
        ),
        (
            json!({"card": {"number": "4242424242424242", "exp_month": 13, "exp_year": 2030}}),
            422,
            "invalid_expiry",
        ),
        (
            json!({"card": {"number": "4242424242424242", "exp_month": 1, "exp_year": 2030, "cvc": "12"}}),
            422,
            "invalid_cvc",
        ),
        (
            json!({"card": {"number": "378282246310005", "exp_month": 1, "exp_year": 2030, "cvc": "123"}}),
            422,
            "invalid_cvc",
        ),
        (
            json!({"card": card("4242424242424242"), "colour": "red"}),
            400,
            "invalid_request",
        ),
        (
            json!({"card": {"number": "4242424242424242", "exp_month": 1, "exp_year": 2030, "pin": "1234"}}),
            400,
            "invalid_request",
        ),
        (
            json!({"card": {"number": "4242424242424242", "exp_year": 2030}}),
            400,
            "invalid_request",
        ),
        (
            json!({"card": card("4242424242424242"), "format": "fancy"}),
            400,
            "invalid_request",
        ),
        (
            json!({"card": card("4242424242424242"), "metadata": {"note": "card 5555 5555 5555 4444"}}),
            422,
            "metadata_contains_card_data",
        ),
        (
            json!({"card": card("4242424242424242"), "metadata": [1, 2]}),
            422,
            "invalid_metadata",
        ),
        (
            json!({"card": card("4242424242424242"), "metadata": {"big": "x".repeat(5000)}}),
            422,
            "metadata_too_large",
        ),
    ];
    for (body, status, code) in cases {
        let (s, v) = h
            .call("POST", "/v1/tokens", Some(&k), Some(body.clone()))
            .await;
        assert_eq!(
            (s, v["error"]["code"].as_str().unwrap_or("")),
            (status, code),
            "{body}: {v}"
        );
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
        let msg = v.to_string();
        for pan in [
            "4242424242424242",
            "5555 5555 5555 4444",
            "4242424242424241",
            "1234567812345670",
        ] {
            assert!(!msg.contains(pan), "error echoes input: {msg}");
        }
    }
    // Malformed JSON, wrong content type, oversize body.
    let (s, v) = h
        .raw(
            "/v1/tokens",
            Some(&k),
            "application/json",
            br#"{"card": {"number": "4242"#.to_vec(),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("malformed_json"))
    );
    let (s, v) = h
        .raw(
            "/v1/tokens",
            Some(&k),
            "application/json",
            b"{} trailing".to_vec(),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("malformed_json"))
    );
    let (s, v) = h
        .raw("/v1/tokens", Some(&k), "text/plain", b"{}".to_vec())
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    let (s, v) = h
        .raw(
            "/v1/tokens",
            Some(&k),
            "application/json",
            vec![b' '; 200 * 1024],
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );
    // Unknown token (and a real PAN where a token belongs: never looked up).
    for t in [
        "tok_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "4242424242424242",
        "nonsense",
    ] {
        let (s, v) = h
            .call("POST", &format!("/v1/tokens/{t}/reveal"), Some(&k), None)
            .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (404, Some("token_not_found")),
            "{t}"
        );
    }
    // Unknown route and wrong method: JSON errors too.
    let (s, v) = h.call("GET", "/v1/nothing", Some(&k), None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
    let (s, v) = h.call("PUT", "/v1/tokens", Some(&k), None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
    // Batch limits.
    let (s, v) = h
        .call(
            "POST",
            "/v1/tokens/batch",
            Some(&k),
            Some(json!({"items": []})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("invalid_batch_size"))
    );
    // Auth.
    let (s, v) = h
        .call(
            "POST",
            "/v1/tokens",
            None,
            Some(json!({"card": card("4242424242424242")})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (s, _) = h
        .call(
            "POST",
            "/v1/tokens",
            Some("tg_aaaaaaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 401);
    let (s, _) = h
        .call(
            "POST",
            "/v1/tokens",
            Some("4242424242424242"),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 401);
    let reveal_only = h.key(&["reveal"]).await;
    let (s, v) = h
        .call(
            "POST",
            "/v1/tokens",
            Some(&reveal_only),
            Some(json!({"card": card("4242424242424242")})),
        )
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("forbidden")));
    // Every refusal above was audited.
    let actions = h.audit_actions().await;
    assert!(actions.iter().filter(|(a, _)| a == "auth_failure").count() >= 3);
    assert!(actions.iter().any(|(a, _)| a == "access_denied"));
    assert!(
        actions
            .iter()
            .any(|(a, o)| a == "token_create" && o == "failure")
    );
    h.stop().await;
}

/// What each role may do. `true` = allowed.
/// A path segment that does not fit its route (not UTF-8, not a number
/// where a key version belongs) is a 400 `invalid_path` in the JSON error
/// shape, and the message never repeats what the caller sent: here a card
/// number sent as a key version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_that_does_not_fit_is_a_json_400_that_repeats_nothing() {
    let h = Harness::start().await;
    let k = h.key(&["tokenize", "reveal"]).await;
    let admin = h.admin.clone();
    let cases: [(&str, &str, Option<&str>); 5] = [
        ("GET", "/v1/tokens/%ff%fe", Some(&k)),
        ("POST", "/v1/tokens/%ff/reveal", Some(&k)),
        (
            "DELETE",
            "/v1/keys/data/versions/4111111111111111",
            Some(&admin),
        ),
        ("DELETE", "/v1/keys/data/versions/-1", Some(&admin)),
        ("POST", "/webhooks/%ff", None),
    ];
    for (method, path, key) in cases {
        let (s, v) = h.call(method, path, key, None).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("invalid_path")),
            "{method} {path}: {v}"
        );
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(!msg.is_empty());
        assert!(!msg.contains("4111111111111111"), "echoes input: {msg}");
        assert!(!msg.contains("-1"), "echoes input: {msg}");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_matrix() {
    let h = Harness::start().await;
    let setup = h.key(&["tokenize"]).await;
    let roles = ["admin", "tokenize", "reveal", "auditor", "relay"];
    let mut keys = Vec::new();
    for r in roles {
        keys.push((r, Some(h.key(&[r]).await)));
    }
    keys.push(("none", None));
    keys.push((
        "bogus",
        Some("tg_aaaaaaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb".to_owned()),
    ));

    // (route, method, required role)
    let routes = [
        ("POST /v1/tokens", "tokenize"),
        ("POST /v1/tokens/batch", "tokenize"),
        ("POST /v1/tokens/search", "tokenize"),
        ("GET /v1/tokens/{t}", "tokenize"),
        ("DELETE /v1/tokens/{t}", "tokenize"),
        ("POST /v1/tokens/{t}/reveal", "reveal"),
        ("POST /v1/api-keys", "admin"),
        ("GET /v1/api-keys", "admin"),
        ("DELETE /v1/api-keys/{k}", "admin"),
        ("GET /v1/audit/events?limit=5", "auditor"),
        ("GET /v1/audit/checkpoint", "auditor"),
        ("GET /v1/audit/proofs/inclusion?seq=1", "auditor"),
        ("GET /v1/audit/proofs/consistency?from=1", "auditor"),
    ];
    h.vault().checkpoint().await.unwrap();
    for (route, required) in routes {
        for (role, key) in &keys {
            let (_, t) = h.tokenize(&setup, card("4242424242424242")).await;
            let t = t["token"].as_str().unwrap().to_owned();
            let victim = h
                .call(
                    "POST",
                    "/v1/api-keys",
                    Some(&h.admin),
                    Some(json!({"name": "victim", "roles": ["auditor"]})),
                )
                .await
                .1;
            let victim_id = victim["id"].as_str().unwrap();
            let (method, path) = route.split_once(' ').unwrap();
            let path = path.replace("{t}", &t).replace("{k}", victim_id);
            let body = match route {
                "POST /v1/tokens" => Some(json!({"card": card("4242424242424242")})),
                "POST /v1/tokens/batch" => {
                    Some(json!({"items": [{"card": card("4242424242424242")}]}))
                }
                "POST /v1/tokens/search" => Some(json!({"number": "4242424242424242"})),
                "POST /v1/api-keys" => Some(json!({"name": "x", "roles": ["tokenize"]})),
                _ => None,
            };
            let (s, v) = h.call(method, &path, key.as_deref(), body).await;
            let expected = match *role {
                "none" | "bogus" => 401,
                r if r == required => match (method, route) {
                    ("POST", "POST /v1/tokens") | ("POST", "POST /v1/api-keys") => 201,
                    ("DELETE", _) => 204,
                    _ => 200,
                },
                _ => 403,
            };
            assert_eq!(s, expected, "{route} as {role}: {v}");
        }
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cvc_is_returned_once_then_gone() {
    let h = Harness::start().await;
    let k = h.key(&["tokenize", "reveal"]).await;
    let (s, v) = h
        .tokenize(
            &k,
            json!({"number": "5555555555554444", "exp_month": 3, "exp_year": 2030, "cvc": "737"}),
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(v["has_cvc"], true);
    let t = v["token"].as_str().unwrap();
    let row = h
        .vault()
        .store()
        .get_cvc("default", t)
        .await
        .unwrap()
        .unwrap();
    assert!(!String::from_utf8_lossy(&row.ciphertext).contains("737"));
    let (_, r1) = h
        .call("POST", &format!("/v1/tokens/{t}/reveal"), Some(&k), None)
        .await;
    assert_eq!(r1["card"]["cvc"], "737");
    let (_, r2) = h
        .call("POST", &format!("/v1/tokens/{t}/reveal"), Some(&k), None)
        .await;
    assert!(r2["card"].get("cvc").is_none(), "{r2}");
    assert_eq!(r2["card"]["number"], "5555555555554444");
    assert!(
        h.vault()
            .store()
            .get_cvc("default", t)
            .await
            .unwrap()
            .is_none()
    );
    let actions = h.audit_actions().await;
    assert_eq!(actions.iter().filter(|(a, _)| a == "cvc_delete").count(), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cvc_expires_after_ttl() {
    let h = Harness::start_with(|c| {
        c.cvc_ttl_secs = 1;
        c.cvc_sweep_secs = 1;
    })
    .await;
    let k = h.key(&["tokenize", "reveal"]).await;
    let (_, v) = h
        .tokenize(
            &k,
            json!({"number": "4111111111111111", "exp_month": 3, "exp_year": 2030, "cvc": "123"}),
        )
        .await;
    let t = v["token"].as_str().unwrap().to_owned();
    // Poll (bounded) until the sweeper has deleted it.
    let mut gone = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if h.vault()
            .store()
            .get_cvc("default", &t)
            .await
            .unwrap()
            .is_none()
        {
            gone = true;
            break;
        }
    }
    assert!(gone, "CVC still stored after its TTL");
    let (_, r) = h
        .call("POST", &format!("/v1/tokens/{t}/reveal"), Some(&k), None)
        .await;
    assert!(r["card"].get("cvc").is_none());
    let actions = h.audit_actions().await;
    assert!(
        actions.iter().any(|(a, _)| a == "cvc_expire"),
        "{actions:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formats_deterministic_batch_and_search() {
    let h = Harness::start().await;
    let k = h.key(&["tokenize", "reveal"]).await;
    // bin6_last4: same length, BIN and last4 kept, fails Luhn, reveals.
    let (s, v) = h
        .call(
            "POST",
            "/v1/tokens",
            Some(&k),
            Some(json!({"card": card("378282246310005"), "format": "bin6_last4"})),
        )
        .await;
    assert_eq!(s, 201);
    let t = v["token"].as_str().unwrap();
    assert_eq!(t.len(), 15);
    assert!(t.starts_with("378282") && t.ends_with("0005") && t != "378282246310005");
    assert!(!tokengate_core::luhn::is_valid(t.as_bytes()));
    let (_, r) = h
        .call("POST", &format!("/v1/tokens/{t}/reveal"), Some(&k), None)
        .await;
    assert_eq!(r["card"]["number"], "378282246310005");

    // Deterministic: same PAN → same token; 200 the second time.
    let body = json!({"card": card("6011111111111117"), "deterministic": true});
    let (s1, a) = h
        .call("POST", "/v1/tokens", Some(&k), Some(body.clone()))
        .await;
    let (s2, b) = h.call("POST", "/v1/tokens", Some(&k), Some(body)).await;
    assert_eq!((s1, s2), (201, 200));
    assert_eq!(a["token"], b["token"]);
    let (_, c) = h.tokenize(&k, card("6011111111111117")).await;
    assert_ne!(
        a["token"], c["token"],
        "non-deterministic mode issues a new token"
    );

    // Search finds all three by keyed fingerprint.
    let (s, found) = h
        .call(
            "POST",
            "/v1/tokens/search",
            Some(&k),
            Some(json!({"number": "6011 1111 1111 1117"})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(found["tokens"].as_array().unwrap().len(), 2);
    assert_eq!(a["fingerprint"], c["fingerprint"]);

    // Batch: per-item results.
    let items: Vec<Value> = (0..50)
        .map(|i| {
            if i % 10 == 3 {
                json!({"card": card("4242424242424241")})
            } else {
                json!({"card": card("4242424242424242")})
            }
        })
        .collect();
    let (s, res) = h
        .call(
            "POST",
            "/v1/tokens/batch",
            Some(&k),
            Some(json!({"items": items})),
        )
        .await;
    assert_eq!(s, 200);
    let results = res["results"].as_array().unwrap();
    assert_eq!(results.len(), 50);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["index"], i);
        if i % 10 == 3 {
            assert_eq!(
                (r["status"].as_u64(), r["error"]["code"].as_str()),
                (Some(422), Some("invalid_luhn"))
            );
        } else {
            assert_eq!(r["status"], 201);
            assert!(r["token"]["token"].as_str().unwrap().starts_with("tok_"));
        }
    }
    let too_many: Vec<Value> = (0..1001)
        .map(|_| json!({"card": card("4242424242424242")}))
        .collect();
    let (s, _) = h
        .call(
            "POST",
            "/v1/tokens/batch",
            Some(&k),
            Some(json!({"items": too_many})),
        )
        .await;
    assert_eq!(s, 422);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_closed_when_the_audit_write_fails() {
    let h = Harness::start().await;
    let k = h.key(&["tokenize", "reveal"]).await;
    let (_, v) = h.tokenize(&k, card("4242424242424242")).await;
    let t = v["token"].as_str().unwrap().to_owned();
    let before = h.vault().store().count_tokens().await.unwrap();
    h.vault()
        .store()
        .execute_raw_for_tests("CREATE TRIGGER audit_off BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'disk full'); END")
        .await
        .unwrap();
    let (s, e) = h.tokenize(&k, card("5555555555554444")).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (503, Some("audit_unavailable"))
    );
    let (s, e) = h
        .call("POST", &format!("/v1/tokens/{t}/reveal"), Some(&k), None)
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (503, Some("audit_unavailable"))
    );
    assert!(!e.to_string().contains("4242424242424242"));
    let (s, _) = h
        .call("DELETE", &format!("/v1/tokens/{t}"), Some(&k), None)
        .await;
    assert_eq!(s, 503);
    assert_eq!(
        h.vault().store().count_tokens().await.unwrap(),
        before,
        "nothing written without its audit record"
    );
    // Even a failed authentication cannot go unrecorded.
    let (s, _) = h
        .tokenize(
            "tg_aaaaaaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
            card("4242424242424242"),
        )
        .await;
    assert_eq!(s, 503);
    h.vault()
        .store()
        .execute_raw_for_tests("DROP TRIGGER audit_off")
        .await
        .unwrap();
    let (s, _) = h
        .call("POST", &format!("/v1/tokens/{t}/reveal"), Some(&k), None)
        .await;
    assert_eq!(s, 200);
    assert!(h.vault().verify_audit(None).await.unwrap().is_ok());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_or_tampered_ciphertext_does_not_decrypt() {
    let h = Harness::start().await;
    let k = h.key(&["tokenize", "reveal"]).await;
    let (_, a) = h.tokenize(&k, card("4242424242424242")).await;
    let (_, b) = h.tokenize(&k, card("5555555555554444")).await;
    let (ta, tb) = (a["token"].as_str().unwrap(), b["token"].as_str().unwrap());
    // Copy A's ciphertext and wrapped DEK into B's row (AAD names token B).
    h.vault()
        .store()
        .execute_raw_for_tests(&format!(
            "UPDATE tokens SET ciphertext = (SELECT ciphertext FROM tokens WHERE token = '{ta}'), \
             wrapped_dek = (SELECT wrapped_dek FROM tokens WHERE token = '{ta}') WHERE token = '{tb}'"
        ))
        .await
        .unwrap();
    let (s, v) = h
        .call("POST", &format!("/v1/tokens/{tb}/reveal"), Some(&k), None)
        .await;
    assert_eq!(s, 500, "{v}");
    assert!(!v.to_string().contains("4242424242424242"));
    // Flip a byte in A's ciphertext.
    h.vault()
        .store()
        .execute_raw_for_tests(&format!(
            "UPDATE tokens SET ciphertext = CAST(X'00' || substr(ciphertext, 2) AS BLOB) WHERE token = '{ta}'"
        ))
        .await
        .unwrap();
    let (s, _) = h
        .call("POST", &format!("/v1/tokens/{ta}/reveal"), Some(&k), None)
        .await;
    assert_eq!(s, 500);
    let actions = h.audit_actions().await;
    assert_eq!(
        actions
            .iter()
            .filter(|(a, o)| a == "token_reveal" && o == "failure")
            .count(),
        2
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_key_is_refused_at_once_and_secrets_are_not_listed() {
    let h = Harness::start().await;
    let (s, created) = h
        .call(
            "POST",
            "/v1/api-keys",
            Some(&h.admin),
            Some(json!({"name": "ci", "roles": ["tokenize"]})),
        )
        .await;
    assert_eq!(s, 201);
    let key = created["key"].as_str().unwrap();
    let id = created["id"].as_str().unwrap();
    let (s, _) = h.tokenize(key, card("4242424242424242")).await;
    assert_eq!(s, 201);
    let (_, list) = h.call("GET", "/v1/api-keys", Some(&h.admin), None).await;
    assert!(!list.to_string().contains(key));
    assert!(
        list["api_keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["id"] == id)
    );
    let (s, _) = h
        .call(
            "DELETE",
            &format!("/v1/api-keys/{id}"),
            Some(&h.admin),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (s, _) = h.tokenize(key, card("4242424242424242")).await;
    assert_eq!(s, 401);
    let (s, v) = h
        .call(
            "DELETE",
            &format!("/v1/api-keys/{id}"),
            Some(&h.admin),
            None,
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("api_key_not_found"))
    );
    let (s, v) = h
        .call(
            "POST",
            "/v1/api-keys",
            Some(&h.admin),
            Some(json!({"name": "x", "roles": ["root"]})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("invalid_roles"))
    );
    // The stored hash is not the key.
    let row = h.vault().store().get_api_key(id).await.unwrap().unwrap();
    assert_ne!(row.hash, key.as_bytes());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_health_metrics_openapi() {
    let h = Harness::start().await;
    for path in ["/healthz", "/v1/tokens/tok_x", "/nope"] {
        let resp = h
            .client
            .get(format!("{}{}", h.base, path))
            .send()
            .await
            .unwrap();
        let hd = resp.headers();
        assert!(
            hd["strict-transport-security"]
                .to_str()
                .unwrap()
                .contains("max-age=63072000"),
            "{path}"
        );
        assert_eq!(hd["x-content-type-options"], "nosniff");
        assert_eq!(hd["x-frame-options"], "DENY");
        assert_eq!(hd["referrer-policy"], "no-referrer");
        assert!(
            hd["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("frame-ancestors 'none'")
        );
        assert!(hd.contains_key("x-request-id"));
        assert!(!hd.contains_key("server"));
    }
    let resp = h
        .client
        .get(format!("{}/v1/tokens/tok_x", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let resp = h
        .client
        .get(format!("{}/healthz", h.base))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "abc-123");
    let resp = h
        .client
        .get(format!("{}/healthz", h.base))
        .header("x-request-id", "4242424242424242")
        .send()
        .await
        .unwrap();
    assert_ne!(
        resp.headers()["x-request-id"],
        "4242424242424242",
        "a PAN is never accepted as request id"
    );
    let (s, _) = h.call("GET", "/readyz", None, None).await;
    assert_eq!(s, 200);
    let k = h.key(&["tokenize"]).await;
    h.tokenize(&k, card("4242424242424242")).await;
    // A made-up method is answered (405) and counted, but never becomes a
    // label value of its own.
    let resp = h
        .client
        .request(
            reqwest::Method::from_bytes(b"XYZZY").unwrap(),
            format!("{}/healthz", h.base),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    let metrics = h
        .client
        .get(format!("{}/metrics", h.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tokengate_http_requests_total"),
        "{metrics}"
    );
    assert!(metrics.contains(r#"route="/v1/tokens""#));
    assert!(!metrics.contains("XYZZY"), "{metrics}");
    assert!(
        metrics.contains(r#"method="other",route="/healthz",status="405""#),
        "{metrics}"
    );
    let (s, doc) = h.call("GET", "/openapi.json", None, None).await;
    assert_eq!(s, 200);
    assert!(doc["paths"]["/v1/tokens"]["post"].is_object());
    assert!(doc["paths"]["/v1/tokens/{token}/reveal"]["post"].is_object());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_and_client_ip_reach_the_audit_record() {
    let h = Harness::start().await;
    let k = h.key(&["tokenize"]).await;
    let resp = h
        .client
        .post(format!("{}/v1/tokens", h.base))
        .bearer_auth(&k)
        .header("x-request-id", "order-77")
        .header("user-agent", "shop/1.0 4242424242424242")
        .json(&json!({"card": card("4242424242424242")}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let recs = h
        .vault()
        .store()
        .audit_events_for(None, Some("order-77"))
        .await
        .unwrap();
    assert_eq!(recs.len(), 1);
    let ev: Value = serde_json::from_str(&recs[0].event_json).unwrap();
    assert_eq!(ev["action"], "token_create");
    assert_eq!(ev["client_ip"], "127.0.0.1");
    assert_eq!(ev["user_agent"], "shop/1.0 ************4242");
    assert!(ev["actor"].as_str().unwrap().starts_with("key_"));
    assert!(ev["token"].as_str().unwrap().starts_with("tok_"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_search_checkpoint_and_proofs_over_the_api() {
    let h = Harness::start().await;
    let k = h.key(&["tokenize"]).await;
    let auditor = h.key(&["auditor"]).await;
    let (_, t) = h.tokenize(&k, card("4242424242424242")).await;
    let token = t["token"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        let (s, _) = h
            .call("GET", &format!("/v1/tokens/{token}"), Some(&k), None)
            .await;
        assert_eq!(s, 200);
    }
    let (s, _) = h
        .call(
            "GET",
            "/v1/tokens/tok_x",
            Some("tg_aaaaaaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"),
            None,
        )
        .await;
    assert_eq!(s, 401);

    // By token: the create and the three reads, oldest first.
    let (s, v) = h
        .call(
            "GET",
            &format!("/v1/audit/events?token={token}"),
            Some(&auditor),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let actions: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["token_create", "token_read", "token_read", "token_read"]
    );
    // By outcome and action.
    let (_, v) = h
        .call(
            "GET",
            "/v1/audit/events?outcome=failure&action=auth_failure",
            Some(&auditor),
            None,
        )
        .await;
    assert!(!v["events"].as_array().unwrap().is_empty(), "{v}");
    assert!(
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["event"]["outcome"] == "failure")
    );
    // Paging: two at a time, no record twice, in order.
    let (mut after, mut seen) = (0u64, Vec::new());
    loop {
        let (s, v) = h
            .call(
                "GET",
                &format!("/v1/audit/events?limit=2&after_seq={after}&until=9999999999999"),
                Some(&auditor),
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        for e in v["events"].as_array().unwrap() {
            seen.push(e["seq"].as_u64().unwrap());
        }
        match v["next_after_seq"].as_u64() {
            Some(n) => after = n,
            None => break,
        }
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]) && seen.len() >= 6,
        "{seen:?}"
    );
    // A time window in the future is empty; RFC 3339 is accepted.
    let (s, v) = h
        .call(
            "GET",
            "/v1/audit/events?since=2999-01-01T00:00:00Z",
            Some(&auditor),
            None,
        )
        .await;
    assert_eq!((s, v["events"].as_array().unwrap().len()), (200, 0), "{v}");
    // Every search was itself audited.
    let (_, v) = h
        .call(
            "GET",
            "/v1/audit/events?action=audit_read&limit=1000",
            Some(&auditor),
            None,
        )
        .await;
    assert!(v["events"].as_array().unwrap().len() >= 4, "{v}");

    // Bad parameters: 400 with a code, never a 5xx.
    for (q, code) in [
        ("since=yesterday", "invalid_time"),
        ("outcome=maybe", "invalid_outcome"),
        ("limit=0", "invalid_request"),
        ("limit=5000", "invalid_request"),
        ("after_seq=-1", "invalid_request"),
        ("colour=red", "invalid_request"),
        ("token=a&token=b", "invalid_request"),
    ] {
        let (s, v) = h
            .call(
                "GET",
                &format!("/v1/audit/events?{q}"),
                Some(&auditor),
                None,
            )
            .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some(code)),
            "{q}: {v}"
        );
    }

    // The server signs one at start; a fresh one covers everything so far.
    h.vault().checkpoint().await.unwrap();
    let (s, cp) = h
        .call("GET", "/v1/audit/checkpoint", Some(&auditor), None)
        .await;
    assert_eq!(s, 200, "{cp}");
    let size = cp["tree_size"].as_u64().unwrap();
    assert!(cp["note"].as_str().unwrap().starts_with("tokengate/audit/"));
    let (s, p) = h
        .call(
            "GET",
            &format!("/v1/audit/proofs/inclusion?seq={size}"),
            Some(&auditor),
            None,
        )
        .await;
    assert_eq!(
        (s, p["tree_size"].as_u64(), p["root"].clone()),
        (200, Some(size), cp["root"].clone()),
        "{p}"
    );
    let (s, p) = h
        .call(
            "GET",
            "/v1/audit/proofs/consistency?from=1",
            Some(&auditor),
            None,
        )
        .await;
    assert_eq!((s, p["to_root"].clone()), (200, cp["root"].clone()), "{p}");
    for q in [
        format!("inclusion?seq={}", size + 100),
        "inclusion".to_owned(),
        "consistency?from=0".to_owned(),
        format!("consistency?from=1&to={}", size + 100),
    ] {
        let (s, v) = h
            .call(
                "GET",
                &format!("/v1/audit/proofs/{q}"),
                Some(&auditor),
                None,
            )
            .await;
        assert_eq!(s, 400, "{q}: {v}");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_lock_the_key_then_the_address_and_raise_alerts() {
    let h = Harness::start_with(|c| {
        c.auth_lockout_key_threshold = 3;
        c.auth_lockout_ip_threshold = 6;
    })
    .await;
    let k = h.key(&["tokenize"]).await;
    // Same key id, wrong secret, three times: the key id is locked.
    let id_part = &k[3..19];
    let wrong = format!("tg_{id_part}_{}", "a".repeat(32));
    for _ in 0..3 {
        let (s, v) = h.call("GET", "/v1/tokens/tok_x", Some(&wrong), None).await;
        assert_eq!(s, 401, "{v}");
    }
    // Now even the right secret is refused, with 429 and a code.
    let (s, v) = h.call("GET", "/v1/tokens/tok_x", Some(&k), None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (429, Some("locked_out")),
        "{v}"
    );
    // Other keys from this address still work until the address threshold.
    let other = h.key(&["tokenize"]).await;
    let (s, _) = h.call("GET", "/v1/tokens/tok_x", Some(&other), None).await;
    assert_eq!(s, 404);
    let bogus = "tg_bbbbbbbbbbbbbbbb_cccccccccccccccccccccccccccccccc";
    for _ in 0..3 {
        let (s, _) = h.call("GET", "/v1/tokens/tok_x", Some(bogus), None).await;
        assert!(s == 401 || s == 429, "{s}");
    }
    let (s, v) = h.call("GET", "/v1/tokens/tok_x", Some(&other), None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (429, Some("locked_out")),
        "{v}"
    );
    // Lockouts and alerts are on record.
    let recs = h.vault().store().audit_events(0, 10_000).await.unwrap();
    let details: Vec<Value> = recs
        .iter()
        .map(|r| serde_json::from_str::<Value>(&r.event_json).unwrap())
        .filter(|e| e["action"] == "lockout" || e["action"] == "alert")
        .collect();
    let key_id = format!("key={}", &format!("key_{id_part}"));
    assert!(
        details
            .iter()
            .any(|e| e["action"] == "lockout" && e["detail"].as_str().unwrap().contains(&key_id)),
        "{details:?}"
    );
    assert!(
        details
            .iter()
            .any(|e| e["action"] == "lockout"
                && e["detail"].as_str().unwrap().contains("ip=127.0.0.1")),
        "{details:?}"
    );
    assert!(
        details.iter().any(|e| e["action"] == "alert"
            && e["detail"]
                .as_str()
                .unwrap()
                .starts_with("kind=failed_auth_threshold")),
        "{details:?}"
    );
    assert!(recs.iter().any(|r| r.event_json.contains("\"locked_out\"")));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reveal_rate_spike_raises_one_alert() {
    let h = Harness::start_with(|c| c.reveal_alert_per_minute = 3).await;
    let k = h.key(&["tokenize", "reveal"]).await;
    let (_, t) = h.tokenize(&k, card("4242424242424242")).await;
    let token = t["token"].as_str().unwrap().to_owned();
    for _ in 0..5 {
        let (s, _) = h
            .call(
                "POST",
                &format!("/v1/tokens/{token}/reveal"),
                Some(&k),
                None,
            )
            .await;
        assert_eq!(s, 200);
    }
    let recs = h.vault().store().audit_events(0, 10_000).await.unwrap();
    let alerts: Vec<&str> = recs
        .iter()
        .filter(|r| r.event_json.contains("kind=reveal_rate"))
        .map(|r| r.event_json.as_str())
        .collect();
    // Exactly one: even if the minute rolls over mid-test, five reveals
    // cross a limit of three in only one of the two minutes.
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    h.stop().await;
}
