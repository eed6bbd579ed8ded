#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)] // test code: fail loudly
//! The webhook receiver end to end, against the real binary: signatures
//! made here per each scheme's published definition (Stripe's HMAC over
//! `t.body`, Standard Webhooks' over `id.ts.body`, with aws-lc-rs directly,
//! not tokengate's own signing code) and by the Standard Webhooks reference
//! library (Python `standardwebhooks`); an app written here that records
//! deliveries and can fail on purpose; `kill -9`; NATS JetStream.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use common::*;
use data_encoding::{BASE64, HEXLOWER};
use serde_json::{Value, json};

const STD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const DELIVER_SECRET: &str = "whsec_ZGVsaXZlcnktc2VjcmV0LWZvci10ZXN0cw==";
const STRIPE_NEW: &str = "whsec_stripe_new_secret";
const STRIPE_OLD: &str = "whsec_stripe_old_secret";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Stripe's documented scheme: `t=<ts>,v1=<hex HMAC-SHA256(secret, "<ts>.<body>")>`.
fn stripe_v1(secret: &str, ts: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut signed = format!("{ts}.").into_bytes();
    signed.extend_from_slice(body);
    HEXLOWER.encode(hmac::sign(&key, &signed).as_ref())
}

/// Standard Webhooks v1: base64 HMAC-SHA256 keyed by the base64 after
/// `whsec_`, over `"<id>.<ts>.<body>"`.
fn std_v1(secret: &str, id: &str, ts: i64, body: &[u8]) -> String {
    let raw = BASE64
        .decode(secret.trim_start_matches("whsec_").as_bytes())
        .unwrap();
    let key = hmac::Key::new(hmac::HMAC_SHA256, &raw);
    let mut signed = format!("{id}.{ts}.").into_bytes();
    signed.extend_from_slice(body);
    format!("v1,{}", BASE64.encode(hmac::sign(&key, &signed).as_ref()))
}

// ---- the app ------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Ok,
    Fail(u16),
    RetryAfter(u64),
}

#[derive(Debug)]
struct Delivery {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    at: Instant,
}

#[derive(Clone, Debug)]
struct App {
    mode: Arc<Mutex<Mode>>,
    /// Accepted deliveries, in arrival order.
    got: Arc<Mutex<Vec<Delivery>>>,
    /// Every attempt's arrival time.
    tries: Arc<Mutex<Vec<Instant>>>,
}

impl App {
    fn new() -> App {
        App {
            mode: Arc::new(Mutex::new(Mode::Ok)),
            got: Arc::new(Mutex::new(Vec::new())),
            tries: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn set(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }

    fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    fn bodies(&self) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|d| serde_json::from_slice(&d.body).unwrap())
            .collect()
    }
}

async fn hook(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    app.tries.lock().unwrap().push(Instant::now());
    let mode = *app.mode.lock().unwrap();
    match mode {
        Mode::Ok => {
            app.got.lock().unwrap().push(Delivery {
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                    .collect(),
                body: body.to_vec(),
                at: Instant::now(),
            });
            StatusCode::NO_CONTENT.into_response()
        }
        Mode::Fail(code) => StatusCode::from_u16(code).unwrap().into_response(),
        Mode::RetryAfter(secs) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", secs.to_string())],
        )
            .into_response(),
    }
}

async fn serve_app(listener: tokio::net::TcpListener, app: App) {
    let router = axum::Router::new()
        .route("/hooks", axum::routing::post(hook))
        .with_state(app);
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
}

async fn start_app() -> (App, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = App::new();
    serve_app(listener, app.clone()).await;
    (app, addr)
}

async fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- tokengate ------------------------------------------------------------

fn write_config(dir: &Path, deliver: Option<SocketAddr>, extra: &str) -> PathBuf {
    let mut toml = format!(
        r#"
[[webhooks.sources]]
name = "stripe"
kind = "stripe"
secrets = ["{STRIPE_NEW}", "{STRIPE_OLD}"]

[[webhooks.sources]]
name = "std"
kind = "standard"
secrets = ["{STD_SECRET}"]
max_body_bytes = 4096

[[webhooks.sources.tokenize]]
number = "/card/number"
exp_month = "/card/exp_month"
exp_year = "/card/exp_year"

[[webhooks.sources]]
name = "limited"
kind = "standard"
secrets = ["{STD_SECRET}"]
rate_limit_per_sec = 2
"#
    );
    if let Some(a) = deliver {
        toml.push_str(&format!(
            r#"
[webhooks.deliver]
url = "http://{a}/hooks"
secret = "{DELIVER_SECRET}"
backoff_base_ms = 50
backoff_max_secs = 1
max_attempts = 1000
"#
        ));
    }
    toml.push_str(extra);
    let f = dir.join("tokengate.toml");
    std::fs::write(&f, toml).unwrap();
    f
}

struct Tg {
    server: Server,
    dir: PathBuf,
    admin: String,
    config: PathBuf,
    http: reqwest::Client,
}

impl Tg {
    fn start(name: &str, deliver: Option<SocketAddr>, extra: &str) -> Tg {
        let dir = test_dir(name);
        let data = dir.join("data");
        let admin = init(&data);
        let config = write_config(&dir, deliver, extra);
        let server = Server::start_with(
            &data,
            &dir.join("server.log"),
            &[],
            &["--config", config.to_str().unwrap()],
        );
        Tg {
            server,
            dir,
            admin,
            config,
            http: client(),
        }
    }

    fn restart(&mut self) {
        self.server = Server::start_with(
            &self.dir.join("data"),
            &self.dir.join("server.log"),
            &[],
            &["--config", self.config.to_str().unwrap()],
        );
    }

    async fn post(&self, source: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}/webhooks/{source}", self.server.base))
            .header("content-type", "application/json")
            .body(body.to_vec());
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn stripe(&self, secrets: &[&str], ts: i64, body: &[u8]) -> (u16, Value) {
        let mut h = format!("t={ts}");
        for s in secrets {
            h.push_str(&format!(",v1={}", stripe_v1(s, ts, body)));
        }
        self.post("stripe", &[("Stripe-Signature", h)], body).await
    }

    async fn standard(&self, id: &str, ts: i64, body: &[u8]) -> (u16, Value) {
        let sig = std_v1(STD_SECRET, id, ts, body);
        self.post(
            "std",
            &[
                ("webhook-id", id.to_owned()),
                ("webhook-timestamp", ts.to_string()),
                ("webhook-signature", sig),
            ],
            body,
        )
        .await
    }

    /// `webhook_reject` audit records: (reason, detail).
    async fn rejections(&self) -> Vec<(String, String)> {
        let key = new_key(&self.http, &self.server.base, &self.admin, &["auditor"]).await;
        let v: Value = self
            .http
            .get(format!(
                "{}/v1/audit/events?action=webhook_reject&limit=1000",
                self.server.base
            ))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["event"]["reason"].as_str().unwrap_or("").to_owned(),
                    e["event"]["detail"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    async fn metrics(&self) -> String {
        metrics_text(&self.http, &self.server.base).await
    }

    fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = bin()
            .args(args)
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// Tampering, wrong and rotated secrets, Stripe's two `v1` during rotation,
/// stale and future timestamps, replays, unknown sources, oversized bodies:
/// each gets its answer, and every refusal is audited with its reason and
/// counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_idempotency_and_audited_refusals() {
    let tg = Tg::start("wh-verify", None, "");
    let t = now();
    let body = br#"{"id":"evt_1","object":"event","type":"charge.succeeded"}"#;

    // Signed with the old (rotated-out but still configured) secret.
    let (s, v) = tg.stripe(&[STRIPE_OLD], t, body).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("stored")), "{v}");
    // Two v1 during Stripe's rotation: one made with a secret we do not
    // have, one with the new secret.
    let body2 = br#"{"id":"evt_2","object":"event"}"#;
    let (s, v) = tg.stripe(&["whsec_unknown", STRIPE_NEW], t, body2).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("stored")), "{v}");
    // The same event again: acknowledged, not stored again.
    let (s, v) = tg.stripe(&[STRIPE_NEW], t + 1, body).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("duplicate")), "{v}");

    // Tampered body, tampered header (timestamp), wrong secret.
    let sig = stripe_v1(STRIPE_NEW, t, body);
    let tampered = br#"{"id":"evt_1","object":"event","type":"charge.refunded"}"#;
    let (s, v) = tg
        .post(
            "stripe",
            &[("Stripe-Signature", format!("t={t},v1={sig}"))],
            tampered,
        )
        .await;
    assert_eq!((s, code(&v)), (401, "bad_signature"));
    let (s, v) = tg
        .post(
            "stripe",
            &[("Stripe-Signature", format!("t={},v1={sig}", t + 5))],
            body,
        )
        .await;
    assert_eq!((s, code(&v)), (401, "bad_signature"));
    let (s, v) = tg.stripe(&["whsec_wrong"], t, body).await;
    assert_eq!((s, code(&v)), (401, "bad_signature"));
    // Correctly signed but mistimed, both ways.
    let b3 = br#"{"id":"evt_3"}"#;
    let (s, v) = tg.stripe(&[STRIPE_NEW], t - 301, b3).await;
    assert_eq!((s, code(&v)), (401, "stale_timestamp"));
    let (s, v) = tg.stripe(&[STRIPE_NEW], t + 400, b3).await;
    assert_eq!((s, code(&v)), (401, "future_timestamp"));
    let (s, v) = tg.post("stripe", &[], b3).await;
    assert_eq!((s, code(&v)), (400, "missing_signature"));
    let (s, v) = tg.stripe(&[STRIPE_NEW], t, br#"{"object":"event"}"#).await;
    assert_eq!((s, code(&v)), (400, "missing_event_id"));

    // Standard Webhooks.
    let sb = br#"{"type":"invoice.paid","n":1}"#;
    let (s, v) = tg.standard("msg_1", t, sb).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("stored")), "{v}");
    let (s, v) = tg.standard("msg_1", t, sb).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("duplicate")));
    let sig = std_v1(STD_SECRET, "msg_2", t, sb);
    let (s, v) = tg
        .post(
            "std",
            &[
                ("webhook-id", "msg_2x".into()),
                ("webhook-timestamp", t.to_string()),
                ("webhook-signature", sig.clone()),
            ],
            sb,
        )
        .await;
    assert_eq!((s, code(&v)), (401, "bad_signature"), "tampered id header");
    let (s, v) = tg.standard("msg_3", t - 1000, sb).await;
    assert_eq!((s, code(&v)), (401, "stale_timestamp"));
    let (s, v) = tg.standard("msg_4", t + 1000, sb).await;
    assert_eq!((s, code(&v)), (401, "future_timestamp"));
    let big = vec![b' '; 5000];
    let (s, v) = tg.standard("msg_5", t, &big).await;
    assert_eq!((s, code(&v)), (413, "payload_too_large"));
    let (s, v) = tg.post("nope", &[], b"{}").await;
    assert_eq!((s, code(&v)), (404, "unknown_webhook_source"));
    // Per-source rate limit: a burst of 2, then 429 with Retry-After.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(tg.post("limited", &[], b"{}").await.0);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        3,
        "{statuses:?}"
    );
    let resp = tg
        .http
        .post(format!("{}/webhooks/limited", tg.server.base))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    // The other sources are not affected.
    let (s, _) = tg.standard("msg_after_limit", now(), sb).await;
    assert_eq!(s, 200);

    let reasons: Vec<String> = tg.rejections().await.into_iter().map(|r| r.0).collect();
    for r in [
        "bad_signature",
        "stale_timestamp",
        "future_timestamp",
        "missing_signature",
        "missing_event_id",
        "payload_too_large",
        "unknown_webhook_source",
        "replay",
    ] {
        assert!(
            reasons.iter().any(|x| x == r),
            "{r} not audited: {reasons:?}"
        );
    }
    assert_eq!(reasons.iter().filter(|r| *r == "bad_signature").count(), 4);
    assert_eq!(reasons.iter().filter(|r| *r == "replay").count(), 2);
    let m = tg.metrics().await;
    for needle in [
        r#"reason="bad_signature""#,
        r#"reason="replay""#,
        r#"reason="stale_timestamp""#,
        r#"reason="future_timestamp""#,
        r#"reason="rate_limited""#,
        "tokengate_webhooks_received_total",
    ] {
        assert!(
            m.lines()
                .any(|l| l.starts_with("tokengate_webhooks") && l.contains(needle)),
            "{needle} not in metrics"
        );
    }
}

/// Event ids that read as card numbers: never stored or delivered in clear,
/// and two different ones never become one. These two mask to the same
/// text (`************1111`); each is stored and delivered, and only a real
/// replay is answered as a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_like_event_ids_are_masked_and_stay_distinct() {
    let (app, addr) = start_app().await;
    let tg = Tg::start("wh-card-ids", Some(addr), "");
    let t = now();
    let ids = ["4111111111111111", "4000000000061111"];
    for (i, id) in ids.iter().enumerate() {
        let body = json!({"type": "invoice.paid", "n": i}).to_string();
        let (s, v) = tg.standard(id, t, body.as_bytes()).await;
        assert_eq!((s, v["status"].as_str()), (200, Some("stored")), "{v}");
    }
    let body = json!({"type": "invoice.paid", "n": 0}).to_string();
    let (s, v) = tg.standard(ids[0], t, body.as_bytes()).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("duplicate")), "{v}");
    wait_for("both delivered", 20, || app.count() >= 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.count(), 2, "each event once");
    let delivered: Vec<String> = app
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|d| {
            d.headers
                .iter()
                .find(|(k, _)| k == "webhook-id")
                .map(|(_, v)| v.clone())
                .unwrap()
        })
        .collect();
    assert_ne!(delivered[0], delivered[1]);
    for id in &delivered {
        assert!(id.starts_with("std:************1111~fp"), "{id}");
    }
    drop(tg.server);
    assert_absent(&tg.dir, &ids.map(str::to_owned));
}

/// The app is down (503, then 429 with Retry-After) for a while: every
/// event is delivered afterwards, in order, once, re-signed with Standard
/// Webhooks v1 under the delivery secret; the Retry-After is honoured; card
/// numbers never reach the app (a configured field becomes a token, the
/// rest are masked) nor tokengate's files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_outage_delivered_later_in_order_and_resigned() {
    let (app, addr) = start_app().await;
    app.set(Mode::Fail(503));
    let tg = Tg::start("wh-outage", Some(addr), "");
    let t = now();
    for i in 0..6 {
        let body = if i == 2 {
            // A card in a tokenized field and one in free text.
            json!({"type": "card.updated", "n": i,
                   "card": {"number": "4111111111111111", "exp_month": 12, "exp_year": 2031},
                   "note": "customer typed 5555 5555 5555 4444 in a memo"})
            .to_string()
        } else if i == 4 {
            // A card number spelled with JSON escapes.
            r#"{"type":"invoice.paid","n":4,"memo":"\u0034111111111111111"}"#.to_owned()
        } else {
            json!({"type": "invoice.paid", "n": i}).to_string()
        };
        let (s, v) = tg.standard(&format!("msg_{i}"), t, body.as_bytes()).await;
        assert_eq!(s, 200, "{v}");
    }
    wait_for("a few failed attempts", 20, || {
        app.tries.lock().unwrap().len() >= 3
    })
    .await;
    assert_eq!(app.count(), 0);
    app.set(Mode::RetryAfter(2));
    let before = app.tries.lock().unwrap().len();
    wait_for("the 429", 20, || app.tries.lock().unwrap().len() > before).await;
    let asked = Instant::now();
    app.set(Mode::Ok);
    wait_for("all six delivered", 30, || app.count() >= 6).await;
    let first = app.got.lock().unwrap()[0].at;
    assert!(
        first.duration_since(asked) >= Duration::from_millis(1500),
        "Retry-After: 2 was not honoured"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bodies = app.bodies();
    assert_eq!(bodies.len(), 6, "each event once");
    let order: Vec<i64> = bodies.iter().map(|b| b["n"].as_i64().unwrap()).collect();
    assert_eq!(order, [0, 1, 2, 3, 4, 5]);

    // Re-signed: verifies under the delivery secret (not the sender's).
    let verifier = |secret: &str| {
        tokengate_webhooks::Verifier::new(
            tokengate_webhooks::Scheme::Standard,
            vec![
                tokengate_webhooks::Key::parse(&tokengate_webhooks::Scheme::Standard, secret)
                    .unwrap(),
            ],
            300,
        )
        .unwrap()
    };
    for d in app.got.lock().unwrap().iter() {
        let h = d.headers.clone();
        assert!(verifier(DELIVER_SECRET).verify(&h, &d.body, now()).is_ok());
        assert!(verifier(STD_SECRET).verify(&h, &d.body, now()).is_err());
        let id = h.iter().find(|(k, _)| k == "webhook-id").unwrap();
        assert!(id.1.starts_with("std:msg_"), "{id:?}");
    }
    let card = &bodies[2];
    let token = card["card"]["number"].as_str().unwrap();
    assert!(!token.contains("4111111111111111"));
    assert!(!token.is_empty());
    assert_eq!(card["note"], "customer typed **** **** **** 4444 in a memo");
    assert_eq!(bodies[4]["memo"], "************1111");
    assert_eq!(bodies[1]["type"], "invoice.paid");
    // Redelivery of the same card gives the same token (deterministic).
    let again = json!({"type": "card.updated", "n": 99,
        "card": {"number": "4111111111111111", "exp_month": 12, "exp_year": 2031}})
    .to_string();
    assert_eq!(tg.standard("msg_99", t, again.as_bytes()).await.0, 200);
    wait_for("the seventh", 20, || app.count() >= 7).await;
    assert_eq!(app.bodies()[6]["card"]["number"].as_str(), Some(token));
    let m = tg.metrics().await;
    assert!(m.contains("tokengate_webhooks_pans_masked_total"));
    assert!(m.contains("tokengate_webhooks_pans_tokenized_total"));
    drop(tg.server);
    assert_absent(
        &tg.dir,
        &["4111111111111111".to_owned(), "5555555555554444".to_owned()],
    );
}

/// `kill -9` after the 2xx and before any delivery (the app is not even
/// listening): after a restart every acknowledged event is delivered, in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_kill_9() {
    // Reserve a port for the app, which starts only after the crash.
    let reserve = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = reserve.local_addr().unwrap();
    drop(reserve);
    let mut tg = Tg::start("wh-crash", Some(addr), "");
    let t = now();
    for i in 0..20 {
        let body = json!({"type": "invoice.paid", "n": i}).to_string();
        let (s, _) = tg.standard(&format!("msg_{i}"), t, body.as_bytes()).await;
        assert_eq!(s, 200);
    }
    tg.server.kill9();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let app = App::new();
    serve_app(listener, app.clone()).await;
    tg.restart();
    wait_for("twenty delivered after the restart", 30, || {
        app.count() >= 20
    })
    .await;
    let order: Vec<i64> = app
        .bodies()
        .iter()
        .map(|b| b["n"].as_i64().unwrap())
        .collect();
    assert_eq!(order, (0..20).collect::<Vec<_>>());
    // And the restarted server still knows them: replays are duplicates.
    let body = json!({"type": "invoice.paid", "n": 0}).to_string();
    let (_, v) = tg.standard("msg_0", t, body.as_bytes()).await;
    assert_eq!(v["status"], "duplicate");
}

/// 410 Gone dead-letters the event and stops delivery; the CLI lists the
/// dead letter and replays it, which also turns delivery back on. Too many
/// failures dead-letter an event without stopping the ones behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_and_max_attempts_dead_letter_and_replay() {
    let (app, addr) = start_app().await;
    app.set(Mode::Fail(410));
    let tg = Tg::start("wh-dlq", Some(addr), "");
    let t = now();
    let (s, _) = tg.standard("msg_a", t, br#"{"type":"a","n":0}"#).await;
    assert_eq!(s, 200);
    let (s, _) = tg.standard("msg_b", t, br#"{"type":"b","n":1}"#).await;
    assert_eq!(s, 200);
    wait_for("the 410", 20, || !app.tries.lock().unwrap().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(app.tries.lock().unwrap().len(), 1, "disabled after 410");
    let (ok, out) = tg.cli(&["webhooks", "dlq", "list", "--json"]);
    assert!(ok, "{out}");
    let list: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["event_id"], "msg_a");
    assert_eq!(list[0]["last_error"], "http 410 gone");
    app.set(Mode::Ok);
    let (ok, out) = tg.cli(&["webhooks", "dlq", "replay", "--all"]);
    assert!(ok, "{out}");
    assert!(out.contains("1 event(s) queued again"), "{out}");
    wait_for("both delivered after replay", 20, || app.count() >= 2).await;
    let order: Vec<i64> = app
        .bodies()
        .iter()
        .map(|b| b["n"].as_i64().unwrap())
        .collect();
    assert_eq!(order, [0, 1]);
    let (_, out) = tg.cli(&["webhooks", "dlq", "list"]);
    assert!(out.contains("no dead-lettered"), "{out}");
    let key = new_key(&tg.http, &tg.server.base, &tg.admin, &["auditor"]).await;
    for action in ["webhook_dead_letter", "webhook_replay"] {
        let v: Value = tg
            .http
            .get(format!(
                "{}/v1/audit/events?action={action}",
                tg.server.base
            ))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["events"].as_array().unwrap().len(), 1, "{action}: {v}");
    }
}

/// After `max_attempts` failures an event is dead-lettered and the next one
/// of the same source goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_attempts_dead_letters_and_moves_on() {
    let (app, addr) = start_app().await;
    app.set(Mode::Fail(500));
    let dir = test_dir("wh-maxatt");
    let data = dir.join("data");
    let _admin = init(&data);
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[webhooks.sources]]\nname = \"std\"\nkind = \"standard\"\nsecrets = [\"{STD_SECRET}\"]\n\
             [webhooks.deliver]\nurl = \"http://{addr}/hooks\"\nsecret = \"{DELIVER_SECRET}\"\n\
             backoff_base_ms = 20\nbackoff_max_secs = 1\nmax_attempts = 3\n"
        ),
    )
    .unwrap();
    let server = Server::start_with(
        &data,
        &dir.join("log"),
        &[],
        &["--config", cfg.to_str().unwrap()],
    );
    let http = client();
    let t = now();
    for (id, n) in [("m1", 1), ("m2", 2)] {
        let body = json!({"n": n}).to_string();
        let resp = http
            .post(format!("{}/webhooks/std", server.base))
            .header("webhook-id", id)
            .header("webhook-timestamp", t.to_string())
            .header(
                "webhook-signature",
                std_v1(STD_SECRET, id, t, body.as_bytes()),
            )
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    wait_for("three failed attempts each", 20, || {
        app.tries.lock().unwrap().len() >= 6
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        app.tries.lock().unwrap().len(),
        6,
        "no attempt past max_attempts"
    );
    let out = bin()
        .args(["webhooks", "dlq", "list", "--json", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["attempts"], 3);
    assert_eq!(list[0]["last_error"], "http 500");
}

/// `tokengate webhooks sign` prints headers that the receiver accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_command_headers_verify() {
    let tg = Tg::start("wh-sign", None, "");
    let payload = tg.dir.join("event.json");
    std::fs::write(&payload, br#"{"id":"evt_signed","type":"x"}"#).unwrap();
    for source in ["std", "stripe"] {
        let out = bin()
            .args(["webhooks", "sign", "--config"])
            .arg(&tg.config)
            .args(["--source", source])
            .arg(&payload)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let headers: Vec<(&str, String)> = text
            .lines()
            .map(|l| {
                let (k, v) = l.split_once(": ").unwrap();
                (k, v.to_owned())
            })
            .collect();
        let body = std::fs::read(&payload).unwrap();
        let (s, v) = tg.post(source, &headers, &body).await;
        assert_eq!(
            (s, v["status"].as_str()),
            (200, Some("stored")),
            "{source}: {v}"
        );
    }
    let out = bin()
        .args(["webhooks", "sign", "--config"])
        .arg(&tg.config)
        .args(["--source", "nope"])
        .arg(&payload)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// Interop with the Standard Webhooks reference library (Python package
/// `standardwebhooks`, installed by `.ci/run`): its signatures are accepted,
/// and tokengate's deliveries verify with it on the app side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_webhooks_reference_library_interop() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import standardwebhooks"])
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var("CI").is_err(),
            "CI must install the Python package standardwebhooks"
        );
        eprintln!("python3 standardwebhooks missing: skipping interop test");
        return;
    }
    let (app, addr) = start_app().await;
    let tg = Tg::start("wh-interop", Some(addr), "");
    let script = tg.dir.join("sign.py");
    std::fs::write(
        &script,
        r#"
import sys, json, datetime
from standardwebhooks.webhooks import Webhook
secret, msg_id, payload = sys.argv[1], sys.argv[2], sys.argv[3]
ts = datetime.datetime.now(tz=datetime.timezone.utc)
sig = Webhook(secret).sign(msg_id, ts, payload)
print(json.dumps({"webhook-id": msg_id, "webhook-timestamp": str(int(ts.timestamp())), "webhook-signature": sig}))
"#,
    )
    .unwrap();
    let body = r#"{"type":"ref.lib","n":7}"#;
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args([STD_SECRET, "msg_reflib", body])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let h: Value = serde_json::from_slice(&out.stdout).unwrap();
    let headers: Vec<(&str, String)> = ["webhook-id", "webhook-timestamp", "webhook-signature"]
        .iter()
        .map(|k| (*k, h[*k].as_str().unwrap().to_owned()))
        .collect();
    let (s, v) = tg.post("std", &headers, body.as_bytes()).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("stored")), "{v}");
    // Its signature over a different body is refused.
    let (s, _) = tg
        .post("std", &headers, br#"{"type":"ref.lib","n":8}"#)
        .await;
    assert_eq!(s, 401);

    wait_for("the delivery", 20, || app.count() >= 1).await;
    let (dh, db) = {
        let got = app.got.lock().unwrap();
        (got[0].headers.clone(), got[0].body.clone())
    };
    let verify = tg.dir.join("verify.py");
    std::fs::write(
        &verify,
        r#"
import sys, json
from standardwebhooks.webhooks import Webhook
secret, headers, body_file = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
body = open(body_file, "rb").read()
print(json.dumps(Webhook(secret).verify(body, headers)))
"#,
    )
    .unwrap();
    let body_file = tg.dir.join("delivered.json");
    std::fs::write(&body_file, &db).unwrap();
    let hjson: serde_json::Map<String, Value> = dh
        .iter()
        .filter(|(k, _)| k.starts_with("webhook-"))
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let run = |secret: &str| {
        std::process::Command::new("python3")
            .arg(&verify)
            .arg(secret)
            .arg(Value::Object(hjson.clone()).to_string())
            .arg(&body_file)
            .output()
            .unwrap()
    };
    let ok = run(DELIVER_SECRET);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let parsed: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(parsed["n"], 7);
    assert!(
        !run(STD_SECRET).status.success(),
        "the wrong secret must fail"
    );
}

/// Delivery to NATS JetStream on the real server (`TOKENGATE_TEST_NATS_URL`,
/// set by `.ci/run`): every event lands in the stream once, with
/// `Nats-Msg-Id` = `<source>:<event id>`, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_jetstream_delivery() {
    let Ok(url) = std::env::var("TOKENGATE_TEST_NATS_URL") else {
        assert!(
            std::env::var("CI").is_err(),
            "CI must set TOKENGATE_TEST_NATS_URL"
        );
        eprintln!("TOKENGATE_TEST_NATS_URL unset: skipping");
        return;
    };
    let tag = format!("{}{}", std::process::id(), now() % 100_000);
    let subject = format!("tgtest.wh{tag}");
    let stream = format!("TGTEST_WH_{tag}");
    let extra = format!(
        "\n[webhooks.nats]\nurl = \"{url}\"\nsubject = \"{subject}\"\nstream = \"{stream}\"\nbackoff_base_ms = 50\nbackoff_max_secs = 1\n"
    );
    let tg = Tg::start("wh-nats", None, &extra);
    let t = now();
    for i in 0..5 {
        let body = json!({"type": "invoice.paid", "n": i}).to_string();
        assert_eq!(
            tg.standard(&format!("msg_{i}"), t, body.as_bytes()).await.0,
            200
        );
    }
    // A duplicate is not published again.
    let body = json!({"type": "invoice.paid", "n": 0}).to_string();
    assert_eq!(
        tg.standard("msg_0", t, body.as_bytes()).await.1["status"],
        "duplicate"
    );

    let nc = async_nats::connect(url.as_str()).await.unwrap();
    let js = async_nats::jetstream::new(nc);
    let end = Instant::now() + Duration::from_secs(30);
    let mut st = loop {
        if let Ok(s) = js.get_stream(&stream).await {
            break s;
        }
        assert!(Instant::now() < end, "stream never created");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    loop {
        let n = st.info().await.unwrap().state.messages;
        if n >= 5 {
            break;
        }
        assert!(Instant::now() < end, "only {n} messages in the stream");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(st.info().await.unwrap().state.messages, 5);
    for (i, seq) in (1..=5u64).enumerate() {
        let m = st.get_raw_message(seq).await.unwrap();
        assert_eq!(m.subject.as_str(), format!("{subject}.std"));
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(v["n"], i as i64);
        let id = m.headers.get("Nats-Msg-Id").unwrap().as_str();
        assert_eq!(id, format!("std:msg_{i}"));
    }
    js.delete_stream(&stream).await.unwrap();
}
