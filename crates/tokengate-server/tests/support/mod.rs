//! Shared test harness: a real server on port 0 over TLS, with a fresh data
//! directory. When `TOKENGATE_TEST_ARTIFACTS` is set, data directories are
//! kept there so CI can search them for leaked card numbers afterwards.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use serde_json::{Value, json};
use tokengate_server::config::Config;
use tokengate_server::run::{Running, start};
use tokengate_vault::InitOptions;

pub const PANS: &str = include_str!("../../../../testdata/pans.txt");

pub fn pans() -> Vec<&'static str> {
    PANS.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect()
}

pub fn test_dir() -> PathBuf {
    match std::env::var("TOKENGATE_TEST_ARTIFACTS") {
        Ok(base) => {
            std::fs::create_dir_all(&base).unwrap();
            tempfile::Builder::new()
                .prefix("server-")
                .tempdir_in(base)
                .unwrap()
                .keep()
        }
        Err(_) => tempfile::tempdir().unwrap().keep(),
    }
}

#[derive(Debug)]
pub struct Harness {
    pub running: Option<Running>,
    pub data_dir: PathBuf,
    pub client: reqwest::Client,
    pub base: String,
    pub admin: String,
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut Config)) -> Harness {
        let data_dir = test_dir().join("data");
        let out = tokengate_vault::init(&InitOptions {
            data_dir: data_dir.clone(),
            database_url: None,
            custodians: None,
            custodian_keys: Vec::new(),
            pkcs11: None,
        })
        .await
        .unwrap();
        let mut cfg = Config {
            data_dir: data_dir.clone(),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            // Most tests send many bad keys from one address on purpose;
            // lockout has its own tests, which turn it on.
            auth_lockout_key_threshold: 0,
            auth_lockout_ip_threshold: 0,
            ..Config::default()
        };
        f(&mut cfg);
        let running = start(&cfg).await.unwrap();
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap();
        let base = format!("https://127.0.0.1:{}", running.addr.port());
        Harness {
            running: Some(running),
            data_dir,
            client,
            base,
            admin: out.admin_api_key,
        }
    }

    pub fn vault(&self) -> &tokengate_vault::Vault {
        self.running.as_ref().unwrap().vault.as_ref().unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!("{}{}", self.base, path);
        let mut req = self.client.request(method.parse().unwrap(), url);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, v)
    }

    pub async fn raw(
        &self,
        path: &str,
        key: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .post(format!("{}{}", self.base, path))
            .header("content-type", content_type)
            .body(body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// A new API key with `roles`.
    pub async fn key(&self, roles: &[&str]) -> String {
        let (s, v) = self
            .call(
                "POST",
                "/v1/api-keys",
                Some(&self.admin),
                Some(json!({"name": "test", "roles": roles})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        v["key"].as_str().unwrap().to_owned()
    }

    pub async fn tokenize(&self, key: &str, card: Value) -> (u16, Value) {
        self.call(
            "POST",
            "/v1/tokens",
            Some(key),
            Some(json!({ "card": card })),
        )
        .await
    }

    /// Audit actions recorded so far, in order.
    pub async fn audit_actions(&self) -> Vec<(String, String)> {
        let recs = self.vault().store().audit_events(0, 100_000).await.unwrap();
        recs.iter()
            .map(|r| {
                let v: Value = serde_json::from_str(&r.event_json).unwrap();
                (
                    v["action"].as_str().unwrap().to_owned(),
                    v["outcome"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }
}

pub fn card(number: &str) -> Value {
    json!({"number": number, "exp_month": 12, "exp_year": 2031})
}
