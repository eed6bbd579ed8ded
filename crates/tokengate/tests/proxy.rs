//! The edge proxy end to end: the real binary in front of a real app (an
//! HTTP server started here) and a processor over TLS (an HTTPS server with
//! its own CA). The app must never receive a card number, and the tokens it
//! gets must reveal to the originals; the processor must receive the card
//! numbers; everything else is refused before it reaches either.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use common::*;
use serde_json::{Value, json};
use tokio::net::TcpListener;

const PAN: &str = "4242424242424242";
const PAN_FORM: &str = "5555555555554444";
const PAN_STRAY: &str = "4111111111111111";
const PAN_PROC: &str = "378282246310005";
const PAN_MULTI: &str = "6011111111111117";

/// One request as the app or processor saw it.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    headers: HeaderMap,
    body: String,
}

type Log = Arc<Mutex<Vec<Seen>>>;

async fn record(
    State(log): State<Log>,
    req: Request,
) -> (axum::http::StatusCode, HeaderMap, String) {
    let (parts, body) = req.into_parts();
    let body: Bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let path = parts.uri.path().to_owned();
    log.lock().unwrap().push(Seen {
        path: path.clone(),
        headers: parts.headers.clone(),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    if path.ends_with("/slow") {
        tokio::time::sleep(Duration::from_secs(4)).await;
    }
    let mut h = HeaderMap::new();
    h.insert("content-type", "application/json".parse().unwrap());
    if path.starts_with("/charges") {
        // A processor that echoes the card number back: it must be
        // tokenized before the app sees the answer.
        return (
            axum::http::StatusCode::OK,
            h,
            json!({"id": "ch_1", "source": {"number": PAN_PROC, "brand": "amex"}}).to_string(),
        );
    }
    (
        axum::http::StatusCode::OK,
        h,
        json!({"ok": true, "path": path}).to_string(),
    )
}

async fn spawn_app(log: Log) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let app = Router::new().fallback(record).with_state(log);
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

/// An HTTPS processor with a CA of its own; returns its port and CA file.
async fn spawn_processor(log: Log, dir: &Path) -> (SocketAddr, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test processor CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let ca_file = dir.join("processor-ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let app = Router::new().fallback(record).with_state(log);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
            });
        }
    });
    (addr, ca_file)
}

fn config(app: SocketAddr, dead: SocketAddr, proc_port: u16, ca: &Path, extra: &str) -> String {
    format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
timeout_ms = 1500
max_body_bytes = 4096

[[proxy.inbound]]
name = "checkout"
path_prefix = "/checkout"
upstream = "http://{app}"
fields = [{{ json = "$.card.number", action = "tokenize", format = "opaque" }},
          {{ json = "$.card.cvc", action = "tokenize_cvc" }},
          {{ form = "card[number]", action = "tokenize" }}]

[[proxy.inbound]]
name = "lenient"
path_prefix = "/lenient"
upstream = "http://{app}"
on_invalid = "redact"
safety_net = "tokenize"
fields = [{{ json = "$.items[*].pan", action = "tokenize" }}, {{ form = "pan", action = "tokenize" }}]

[[proxy.inbound]]
name = "tlsapp"
path_prefix = "/secure"
strip_prefix = true
upstream = "https://localhost:{proc_port}"
upstream_ca_file = "{ca}"
response = {{ safety_net = "tokenize" }}
fields = [{{ json = "$.pan", action = "tokenize" }}]

[[proxy.inbound]]
name = "down"
path_prefix = "/down"
upstream = "http://{dead}"

[[outbound.processors]]
name = "acquirer"
base_url = "https://localhost:{proc_port}"
ca_file = "{ca}"
allow_private = true
reveal = [{{ form = "card[number]" }}, {{ json = "$.source.number" }},
          {{ json = "$.source.cvc", reveal = "cvc" }}, {{ header = "X-Card-Token" }}]

[[outbound.processors]]
name = "internal"
base_url = "https://localhost:{proc_port}"
ca_file = "{ca}"
reveal = [{{ json = "$.source.number" }}]
{extra}
"#,
        ca = ca.display()
    )
}

async fn audit_count(c: &reqwest::Client, base: &str, auditor: &str, action: &str) -> usize {
    let v: Value = c
        .get(format!("{base}/v1/audit/events?action={action}&limit=1000"))
        .bearer_auth(auditor)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["events"].as_array().unwrap().len()
}

async fn reveal(c: &reqwest::Client, base: &str, key: &str, token: &str) -> Value {
    c.post(format!("{base}/v1/tokens/{token}/reveal"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn is_token(v: &str) -> bool {
    v.starts_with("tok_")
}

/// A data dir with its admin key, a recording app, a recording TLS
/// processor, and an address where nothing listens.
struct Setup {
    dir: std::path::PathBuf,
    data: std::path::PathBuf,
    admin: String,
    app_log: Log,
    proc_log: Log,
    app: SocketAddr,
    proc_addr: SocketAddr,
    ca: std::path::PathBuf,
    dead: SocketAddr,
}

async fn setup(prefix: &str) -> Setup {
    let dir = test_dir(prefix);
    let data = dir.join("data");
    let admin = init(&data);
    let app_log: Log = Arc::default();
    let proc_log: Log = Arc::default();
    let app = spawn_app(app_log.clone()).await;
    let (proc_addr, ca) = spawn_processor(proc_log.clone(), &dir).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    Setup {
        dir,
        data,
        admin,
        app_log,
        proc_log,
        app,
        proc_addr,
        ca,
        dead,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_proxy_keeps_card_numbers_out_of_the_app() {
    let Setup {
        dir,
        data,
        admin,
        app_log,
        proc_log,
        app,
        proc_addr,
        ca,
        dead,
    } = setup("proxy-").await;
    let cfg_file = dir.join("tokengate.toml");
    std::fs::write(&cfg_file, config(app, dead, proc_addr.port(), &ca, "")).unwrap();
    let log = dir.join("server.log");
    let server = Server::start_with(&data, &log, &[], &["--config", cfg_file.to_str().unwrap()]);
    let proxy = server.proxy.clone().expect("proxy address printed");
    assert!(proxy.starts_with("https://"), "{proxy}");
    let c = client();
    let base = server.base.clone();
    let revealer = new_key(&c, &base, &admin, &["reveal"]).await;
    let auditor = new_key(&c, &base, &admin, &["auditor"]).await;
    let relay_key = new_key(&c, &base, &admin, &["relay"]).await;

    // --- JSON: number and CVC become the same token; the rest is untouched.
    let body = format!(
        r#"{{"amount": 12345678901234567890.10, "card": {{"number": "{}", "cvc": "123"}}, "note": "hi"}}"#,
        "4242 4242 4242 4242"
    );
    let r = c
        .post(format!("{proxy}/checkout/pay?x=1"))
        .header("content-type", "application/json")
        .header("x-request-id", "req-proxy-test-1")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let seen = app_log.lock().unwrap().last().cloned().unwrap();
    assert_eq!(seen.path, "/checkout/pay");
    assert_eq!(seen.headers["x-request-id"], "req-proxy-test-1");
    assert!(seen.headers.contains_key("x-forwarded-for"));
    let v: Value = serde_json::from_str(&seen.body).unwrap();
    let token = v["card"]["number"].as_str().unwrap().to_owned();
    assert!(is_token(&token), "{token}");
    assert_eq!(
        v["card"]["cvc"],
        token.as_str(),
        "CVC replaced by its card's token"
    );
    assert!(
        seen.body.contains(r#""amount": 12345678901234567890.10"#),
        "other bytes unchanged: {}",
        seen.body
    );
    let card = reveal(&c, &base, &revealer, &token).await;
    assert_eq!(card["card"]["number"], PAN);
    assert_eq!(card["card"]["cvc"], "123", "{card}");

    // --- Form body.
    let r = c
        .post(format!("{proxy}/checkout/form"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "amount=100&card%5Bnumber%5D={PAN_FORM}&email=a%40b.example"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = app_log.lock().unwrap().last().cloned().unwrap();
    let form: Vec<(String, String)> = url_pairs(&seen.body);
    assert_eq!(form[0], ("amount".into(), "100".into()));
    assert_eq!(form[2], ("email".into(), "a@b.example".into()));
    assert!(is_token(&form[1].1));
    assert_eq!(
        reveal(&c, &base, &revealer, &form[1].1).await["card"]["number"],
        PAN_FORM
    );

    // --- Multipart body, lenient route: a selected array, an invalid
    //     value redacted, a stray number tokenized by the safety net.
    let r = c
        .post(format!("{proxy}/lenient/items"))
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"items": [{{"pan": "{PAN_MULTI}"}}, {{"pan": "1234"}}], "memo": "call me about {PAN_STRAY}"}}"#
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let seen = app_log.lock().unwrap().last().cloned().unwrap();
    let v: Value = serde_json::from_str(&seen.body).unwrap();
    let t0 = v["items"][0]["pan"].as_str().unwrap();
    assert!(is_token(t0));
    assert_eq!(v["items"][1]["pan"], "[redacted]");
    let memo = v["memo"].as_str().unwrap();
    let stray_token = memo.strip_prefix("call me about ").unwrap();
    assert!(is_token(stray_token), "{memo}");
    assert_eq!(
        reveal(&c, &base, &revealer, stray_token).await["card"]["number"],
        PAN_STRAY
    );
    let boundary = "xYzZy";
    let mp = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"pan\"\r\n\r\n{PAN_MULTI}\r\n--{boundary}\r\n\
         Content-Disposition: form-data; name=\"note\"\r\n\r\nthanks\r\n--{boundary}--\r\n"
    );
    let r = c
        .post(format!("{proxy}/lenient/upload"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(mp)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = app_log.lock().unwrap().last().cloned().unwrap();
    assert!(!seen.body.contains(PAN_MULTI));
    assert!(seen.body.contains("\r\n\r\nthanks\r\n"), "{}", seen.body);
    assert!(seen.body.contains("\r\n\r\ntok_"), "{}", seen.body);

    // --- An app over HTTPS (its own CA), prefix stripped, and card numbers
    //     in its answer tokenized on the way back.
    let r = c
        .post(format!("{proxy}/secure/charges"))
        .header("content-type", "application/json")
        .body(format!(r#"{{"pan": "{PAN_MULTI}"}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let answer: Value = r.json().await.unwrap();
    let seen = proc_log.lock().unwrap().last().cloned().unwrap();
    assert_eq!(seen.path, "/charges");
    let sent: Value = serde_json::from_str(&seen.body).unwrap();
    assert!(is_token(sent["pan"].as_str().unwrap()), "{sent}");
    let back = answer["source"]["number"].as_str().unwrap();
    assert!(is_token(back), "the app's answer was scrubbed: {answer}");
    assert_eq!(
        reveal(&c, &base, &revealer, back).await["card"]["number"],
        PAN_PROC
    );
    proc_log.lock().unwrap().clear();

    // --- Refusals happen before the app: the app's log does not grow.
    let before = app_log.lock().unwrap().len();
    let refusals: Vec<(String, &str, u16, &str)> = vec![
        (
            format!(r#"{{"card": {{"number": "{PAN}"}}, "memo": "{PAN_STRAY}"}}"#),
            "application/json",
            422,
            "unexpected_card_data",
        ),
        (
            r#"{"card": {"number": "4242424242424241"}}"#.to_owned(),
            "application/json",
            422,
            "invalid_card_field",
        ),
        (
            r#"{"card": {"number": "#.to_owned(),
            "application/json",
            400,
            "invalid_json",
        ),
        (
            format!(r#"{{"pad": "{}"}}"#, "x".repeat(5000)),
            "application/json",
            413,
            "body_too_large",
        ),
        (
            format!("note={PAN_STRAY}"),
            "application/x-www-form-urlencoded",
            422,
            "unexpected_card_data",
        ),
        (
            format!("<xml>{PAN_STRAY}</xml>"),
            "text/xml",
            422,
            "unexpected_card_data",
        ),
        (
            r#"{"card": {"cvc": "123"}}"#.to_owned(),
            "application/json",
            422,
            "cvc_without_card",
        ),
    ];
    for (body, ct, status, code) in refusals {
        let r = c
            .post(format!("{proxy}/checkout/pay"))
            .header("content-type", ct)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{code}");
        let text = r.text().await.unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["code"], code, "{text}");
        for pan in [PAN, PAN_STRAY] {
            assert!(!text.contains(pan), "error echoes a card number: {text}");
        }
    }
    // Card numbers in the URL (also percent-encoded) or a header.
    for (url, header, code) in [
        (
            format!("{proxy}/checkout/pay?card={PAN_STRAY}"),
            None,
            "card_data_in_url",
        ),
        (
            format!("{proxy}/checkout/pay?card=%34{}", &PAN_STRAY[1..]),
            None,
            "card_data_in_url",
        ),
        (
            format!("{proxy}/checkout/{PAN_STRAY}"),
            None,
            "card_data_in_url",
        ),
        (
            format!("{proxy}/checkout/pay"),
            Some(PAN_STRAY),
            "card_data_in_header",
        ),
    ] {
        let mut rq = c.get(&url);
        if let Some(h) = header {
            rq = rq.header("x-card", h);
        }
        let r = rq.send().await.unwrap();
        assert_eq!(r.status(), 422, "{code}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], code);
    }
    let r = c
        .post(format!("{proxy}/checkout/pay"))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(
        app_log.lock().unwrap().len(),
        before,
        "a refused request reached the app"
    );
    assert!(audit_count(&c, &base, &auditor, "proxy_reject").await >= 4);

    // --- No route → 404; upstream down → 502 (audited); slow → 504.
    let r = c.get(format!("{proxy}/elsewhere")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = c.get(format!("{proxy}/down/x")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_unavailable");
    assert_eq!(
        audit_count(&c, &base, &auditor, "proxy_upstream_error").await,
        1
    );
    let t = std::time::Instant::now();
    let r = c
        .get(format!("{proxy}/checkout/slow"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "gave up at the timeout, not after the app"
    );
    assert_eq!(
        audit_count(&c, &base, &auditor, "proxy_upstream_error").await,
        2
    );

    // --- Relay: the processor gets card numbers, the app gets tokens back.
    // A fresh card with a CVC for the relay.
    let r = c
        .post(format!("{proxy}/checkout/pay"))
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"card": {{"number": "{PAN_FORM}", "cvc": "987"}}}}"#
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = app_log.lock().unwrap().last().cloned().unwrap();
    let v: Value = serde_json::from_str(&seen.body).unwrap();
    let relay_token = v["card"]["number"].as_str().unwrap().to_owned();
    let r = c
        .post(format!("{proxy}/relay/acquirer/charges"))
        .header("proxy-authorization", format!("Bearer {relay_key}"))
        .header("authorization", "Bearer sk_processor_secret")
        .header("x-card-token", &token)
        .header("content-type", "application/json")
        .body(
            json!({"amount": 100, "source": {"number": relay_token, "cvc": relay_token}})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let answer: Value = r.json().await.unwrap();
    let seen = proc_log.lock().unwrap().last().cloned().unwrap();
    assert_eq!(seen.path, "/charges");
    let sent: Value = serde_json::from_str(&seen.body).unwrap();
    assert_eq!(sent["source"]["number"], PAN_FORM);
    assert_eq!(sent["source"]["cvc"], "987");
    assert_eq!(seen.headers["x-card-token"], PAN);
    assert_eq!(seen.headers["authorization"], "Bearer sk_processor_secret");
    assert!(!seen.headers.contains_key("proxy-authorization"));
    // The processor echoed a card number: the app gets a token instead.
    let echoed = answer["source"]["number"].as_str().unwrap();
    assert!(is_token(echoed), "{answer}");
    assert_eq!(
        reveal(&c, &base, &revealer, echoed).await["card"]["number"],
        PAN_PROC
    );
    // The CVC went once; a second relay asking for it is refused.
    let r = c
        .post(format!("{proxy}/relay/acquirer/charges"))
        .header("proxy-authorization", format!("Bearer {relay_key}"))
        .header("content-type", "application/json")
        .body(json!({"source": {"cvc": relay_token}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let reveals: Value = c
        .get(format!(
            "{base}/v1/audit/events?action=token_reveal&token={relay_token}"
        ))
        .bearer_auth(&auditor)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let details: Vec<String> = reveals["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["detail"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(
        details.iter().any(|d| d == "destination=acquirer"),
        "{details:?}"
    );

    // Dot segments could climb out of the processor's base path. HTTP
    // clients normalise them away, so send the request line as is.
    let hostport = proxy.trim_start_matches("https://").to_owned();
    for path in [
        "/relay/acquirer/v1/%2e%2e/admin",
        "/relay/acquirer/./x",
        "/relay/acquirer/a/../b",
    ] {
        let raw = raw_https(
            &hostport,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: localhost\r\nProxy-Authorization: Bearer {relay_key}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            ),
        );
        assert!(raw.starts_with("HTTP/1.1 400"), "{path}: {raw}");
        assert!(raw.contains("invalid_path"), "{raw}");
    }

    // Egress: unknown processor, private address without allow_private,
    // a key without the relay role.
    let processed = proc_log.lock().unwrap().len();
    for (path, key, status, code) in [
        ("/relay/evil/x", relay_key.as_str(), 403, "egress_denied"),
        (
            "/relay/internal/charges",
            relay_key.as_str(),
            403,
            "egress_denied",
        ),
        (
            "/relay/acquirer/charges",
            revealer.as_str(),
            403,
            "forbidden",
        ),
        ("/relay/acquirer/charges", "tg_nope", 401, "unauthorized"),
    ] {
        let r = c
            .post(format!("{proxy}{path}"))
            .header("proxy-authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(json!({"source": {"number": token}}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{path}: {v}");
    }
    assert_eq!(
        proc_log.lock().unwrap().len(),
        processed,
        "a refused relay reached the processor"
    );
    assert_eq!(audit_count(&c, &base, &auditor, "egress_denied").await, 2);

    // --- Routes reload without restart.
    let extra = format!(
        "\n[[proxy.inbound]]\nname = \"late\"\npath_prefix = \"/late\"\nupstream = \"http://{app}\"\nfields = [{{ json = \"$.pan\", action = \"tokenize\" }}]\n"
    );
    std::fs::write(&cfg_file, config(app, dead, proc_addr.port(), &ca, &extra)).unwrap();
    let mut ok = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = c
            .post(format!("{proxy}/late/x"))
            .header("content-type", "application/json")
            .body(format!(r#"{{"pan": "{PAN}"}}"#))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            ok = true;
            break;
        }
    }
    assert!(ok, "the new route never became active");
    let seen = app_log.lock().unwrap().last().cloned().unwrap();
    assert!(!seen.body.contains(PAN));
    // A broken file keeps the routes in force.
    std::fs::write(&cfg_file, "[proxy]\nlisten = 5\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = c
        .post(format!("{proxy}/late/x"))
        .header("content-type", "application/json")
        .body(format!(r#"{{"pan": "{PAN}"}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // --- Metrics per route.
    let m = metrics_text(&c, &base).await;
    assert!(m.contains("tokengate_proxy_requests_total"), "metrics");
    assert!(m.contains(r#"route="checkout""#));
    assert!(m.contains("tokengate_proxy_tokenized_fields_total"));
    assert!(m.contains("tokengate_proxy_reveals_total"));
    assert!(m.contains(r#"side="upstream""#));

    // --- The app never saw a card number; neither did any file but the
    //     encrypted store.
    for s in app_log.lock().unwrap().iter() {
        for pan in [PAN, PAN_FORM, PAN_STRAY, PAN_PROC, PAN_MULTI] {
            assert!(
                !s.body.contains(pan),
                "the app received a card number: {}",
                s.path
            );
        }
    }
    drop(server);
    assert_absent(
        &dir,
        &[PAN, PAN_FORM, PAN_STRAY, PAN_PROC, PAN_MULTI].map(str::to_owned),
    );
}

/// Send `request` as is over TLS (`openssl s_client`, Debian package
/// `openssl`) and return what came back.
fn raw_https(hostport: &str, request: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-connect",
            hostport,
            "-servername",
            "localhost",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl must be installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn url_pairs(body: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(body.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The forward proxy: the app uses tokengate as its HTTPS proxy and trusts
/// the outbound CA; calls to a configured processor are intercepted, tokens
/// become card numbers; anything else is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_proxy_intercepts_tls_toward_processors_only() {
    let Setup {
        dir,
        data,
        admin,
        app_log,
        proc_log,
        app,
        proc_addr,
        ca,
        dead,
    } = setup("proxy-fwd-").await;
    let extra = "[outbound]\nlisten = \"127.0.0.1:0\"\ntunnel = [\"localhost:1\"]\n";
    let cfg_file = dir.join("tokengate.toml");
    // `[outbound]` must come before the array tables that extend it.
    let text = config(app, dead, proc_addr.port(), &ca, "");
    let text = text.replacen(
        "[[outbound.processors]]",
        &format!("{extra}\n[[outbound.processors]]"),
        1,
    );
    // This server's proxy listener is plain HTTP behind a router (here the
    // test itself, on 127.0.0.1) that terminates TLS.
    let text = text.replacen(
        "max_body_bytes = 4096\n",
        "max_body_bytes = 4096\ntls = false\n",
        1,
    );
    let text = format!("behind_proxy = true\ntrusted_proxies = [\"127.0.0.1/32\"]\n{text}");
    std::fs::write(&cfg_file, text).unwrap();
    let server = Server::start_with(
        &data,
        &dir.join("server.log"),
        &[],
        &["--config", cfg_file.to_str().unwrap()],
    );
    let forward = server
        .forward
        .clone()
        .expect("forward proxy address printed");
    let c = client();
    let base = server.base.clone();
    let plain = server.proxy.clone().unwrap();
    assert!(plain.starts_with("http://"), "{plain}");
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // What the router received over plain HTTP is sent to HTTPS (308).
    let r = no_redirects
        .post(format!("{plain}/checkout/pay"))
        .header("x-forwarded-proto", "http")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert!(app_log.lock().unwrap().is_empty());
    let r = no_redirects
        .post(format!("{plain}/checkout/pay"))
        .header("x-forwarded-proto", "https")
        .header("content-type", "application/json")
        .body(format!(r#"{{"card": {{"number": "{PAN_FORM}"}}}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = app_log.lock().unwrap().pop().unwrap();
    assert!(
        !seen.body.contains(PAN_FORM) && seen.body.contains("tok_"),
        "{}",
        seen.body
    );
    let revealer = new_key(&c, &base, &admin, &["reveal"]).await;
    let relay_key = new_key(&c, &base, &admin, &["relay"]).await;
    let tokenizer = new_key(&c, &base, &admin, &["tokenize"]).await;
    let v: Value = c
        .post(format!("{base}/v1/tokens"))
        .bearer_auth(&tokenizer)
        .json(&json!({"card": {"number": PAN, "exp_month": 12, "exp_year": 2035}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = v["token"].as_str().unwrap().to_owned();

    let out = bin()
        .args(["ca", "export", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success());
    let ca_pem = String::from_utf8(out.stdout).unwrap();
    assert!(ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    let app_client = |key: Option<&str>| {
        let mut proxy = reqwest::Proxy::all(&forward).unwrap();
        if let Some(k) = key {
            proxy = proxy.basic_auth("app", k);
        }
        reqwest::Client::builder()
            .proxy(proxy)
            .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
            .build()
            .unwrap()
    };

    let r = app_client(Some(&relay_key))
        .post(format!("https://localhost:{}/charges", proc_addr.port()))
        .header("authorization", "Bearer sk_processor")
        .json(&json!({"amount": 5, "source": {"number": token}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let answer: Value = r.json().await.unwrap();
    let seen = proc_log.lock().unwrap().last().cloned().unwrap();
    let sent: Value = serde_json::from_str(&seen.body).unwrap();
    assert_eq!(
        sent["source"]["number"], PAN,
        "the processor gets the card number"
    );
    assert_eq!(seen.headers["authorization"], "Bearer sk_processor");
    let echoed = answer["source"]["number"].as_str().unwrap();
    assert!(is_token(echoed), "{answer}");
    assert_eq!(
        reveal(&c, &base, &revealer, echoed).await["card"]["number"],
        PAN_PROC
    );

    // Refusals: no key (407), a host that is not a processor, a tunnel to a
    // non-public address, plain HTTP — none reach anything.
    let processed = proc_log.lock().unwrap().len();
    let r = app_client(None)
        .get(format!("https://localhost:{}/charges", proc_addr.port()))
        .send()
        .await;
    assert!(r.is_err(), "CONNECT without credentials must fail");
    for url in [
        format!("https://127.0.0.1:{}/charges", proc_addr.port()),
        "https://localhost:1/".to_owned(),
        format!("http://{app}/plain"),
    ] {
        let r = app_client(Some(&relay_key)).get(&url).send().await;
        match r {
            Err(_) => {}
            Ok(resp) => assert_eq!(resp.status(), 403, "{url}"),
        }
    }
    assert_eq!(proc_log.lock().unwrap().len(), processed);
    assert!(
        app_log.lock().unwrap().is_empty(),
        "plain HTTP went through"
    );
    let v: Value = c
        .get(format!("{base}/v1/audit/events?action=egress_denied"))
        .bearer_auth(new_key(&c, &base, &admin, &["auditor"]).await)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["events"].as_array().unwrap().len(), 3, "{v}");
    drop(server);
    assert_absent(&dir, &[PAN, PAN_PROC, PAN_FORM].map(str::to_owned));
}
