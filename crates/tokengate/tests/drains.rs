#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)] // test code: fail loudly
//! Audit drains against real TLS receivers written here: a syslog receiver
//! that parses RFC 5425 octet-counted framing and RFC 5424 headers strictly,
//! and an HTTPS receiver. Both are stopped mid-stream and started again; every
//! record must arrive, in order, with nothing lost.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A CA and a localhost server certificate signed by it (PEM files in `dir`).
fn receiver_pki(dir: &Path) -> (Arc<rustls::ServerConfig>, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test SIEM CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let ca_file = dir.join("siem-ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    (Arc::new(config), ca_file)
}

/// What receivers saw: seq → (arrival order, message), and checkpoints.
#[derive(Default)]
struct Seen {
    records: BTreeMap<u64, usize>,
    arrivals: Vec<u64>,
    checkpoints: Vec<u64>,
    bad: Vec<String>,
    /// `(action, detail)` of each record received over HTTPS.
    events: Vec<(String, String)>,
}

/// Strict RFC 5425 reader: `MSG-LEN SP SYSLOG-MSG`, MSG-LEN a non-zero
/// decimal without leading zeros; each message an RFC 5424 header.
async fn syslog_connection(
    mut s: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    seen: Arc<Mutex<Seen>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(sp) = buf.iter().position(|b| *b == b' ') {
            let len_txt = std::str::from_utf8(&buf[..sp]).unwrap_or("");
            let valid_len = !len_txt.is_empty()
                && !len_txt.starts_with('0')
                && len_txt.bytes().all(|b| b.is_ascii_digit());
            if !valid_len {
                seen.lock()
                    .unwrap()
                    .bad
                    .push(format!("bad frame length {len_txt:?}"));
                return;
            }
            let len: usize = len_txt.parse().unwrap();
            if buf.len() < sp + 1 + len {
                break;
            }
            let msg = String::from_utf8(buf[sp + 1..sp + 1 + len].to_vec()).unwrap();
            buf.drain(..sp + 1 + len);
            record_syslog(&msg, &seen);
        }
    }
    if !buf.is_empty() {
        seen.lock()
            .unwrap()
            .bad
            .push("truncated frame at close".into());
    }
    // Close our side after reading everything: that is the confirmation.
    let _ = s.shutdown().await;
}

fn record_syslog(msg: &str, seen: &Mutex<Seen>) {
    let mut seen = seen.lock().unwrap();
    // <PRI>1 TIMESTAMP HOST APP PROCID MSGID [SD] MSG
    let parts: Vec<&str> = msg.splitn(7, ' ').collect();
    let pri_ok = parts[0].starts_with('<') && parts[0].ends_with(">1");
    if parts.len() < 7 || !pri_ok || parts[3] != "tokengate" {
        seen.bad.push(format!("bad RFC 5424 header: {msg}"));
        return;
    }
    let rest = parts[6];
    if parts[5] == "checkpoint" {
        let size = rest
            .split("tree_size=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        seen.checkpoints.push(size);
        return;
    }
    let seq: u64 = rest
        .split("seq=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    let json_start = rest.find("] ").unwrap() + 2;
    let ev: Value = serde_json::from_str(&rest[json_start..]).unwrap();
    assert!(ev["action"].is_string());
    let order = seen.arrivals.len();
    seen.arrivals.push(seq);
    seen.records.entry(seq).or_insert(order);
}

/// Accept syslog connections on `listener` until `stop` fires.
fn spawn_syslog(
    rt: &tokio::runtime::Runtime,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    seen: Arc<Mutex<Seen>>,
) -> tokio::task::JoinHandle<()> {
    rt.spawn(async move {
        let acceptor = TlsAcceptor::from(tls);
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                if let Ok(s) = acceptor.accept(tcp).await {
                    syslog_connection(s, seen).await;
                }
            });
        }
    })
}

/// A receiver that reads what it is sent and then vanishes without closing
/// the TLS session (a crash): nothing it read may count as delivered.
fn spawn_blackhole(
    rt: &tokio::runtime::Runtime,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
) -> tokio::task::JoinHandle<()> {
    rt.spawn(async move {
        let acceptor = TlsAcceptor::from(tls);
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            if let Ok(mut s) = acceptor.accept(tcp).await {
                let mut chunk = [0u8; 4096];
                let _ = s.read(&mut chunk).await;
                let (tcp, _) = s.into_inner();
                drop(tcp); // no close_notify
            }
        }
    })
}

/// A minimal HTTPS receiver: every POST body is a batch; answers 200.
fn spawn_https(
    rt: &tokio::runtime::Runtime,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    seen: Arc<Mutex<Seen>>,
) -> tokio::task::JoinHandle<()> {
    rt.spawn(async move {
        let acceptor = TlsAcceptor::from(tls);
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 16384];
                loop {
                    // Headers.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse().unwrap())
                        .unwrap_or(0);
                    let batch_header = head
                        .lines()
                        .find_map(|l| l.strip_prefix("x-tokengate-batch:"))
                        .map(|v| v.trim().to_owned());
                    while buf.len() < head_end + len {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Value =
                        serde_json::from_slice(&buf[head_end..head_end + len]).unwrap();
                    buf.drain(..head_end + len);
                    {
                        let mut seen = seen.lock().unwrap();
                        if batch_header.as_deref() != body["batch"].as_str() {
                            seen.bad.push(format!(
                                "batch header {batch_header:?} vs body {}",
                                body["batch"]
                            ));
                        }
                        for r in body["records"].as_array().unwrap() {
                            let seq = r["seq"].as_u64().unwrap();
                            let ev: Value =
                                serde_json::from_str(r["event_json"].as_str().unwrap()).unwrap();
                            seen.events.push((
                                ev["action"].as_str().unwrap_or("").to_owned(),
                                ev["detail"].as_str().unwrap_or("").to_owned(),
                            ));
                            let order = seen.arrivals.len();
                            seen.arrivals.push(seq);
                            seen.records.entry(seq).or_insert(order);
                        }
                        for c in body["checkpoints"].as_array().unwrap() {
                            seen.checkpoints.push(c["tree_size"].as_u64().unwrap());
                        }
                    }
                    if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    })
}

fn free_addr(rt: &tokio::runtime::Runtime) -> SocketAddr {
    rt.block_on(async {
        TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
    })
}

fn bind(rt: &tokio::runtime::Runtime, addr: SocketAddr) -> TcpListener {
    rt.block_on(async {
        for _ in 0..50 {
            if let Ok(l) = TcpListener::bind(addr).await {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("cannot bind {addr}");
    })
}

fn make_records(rt: &tokio::runtime::Runtime, base: &str, key: &str, from: u64, n: u64) {
    rt.block_on(async {
        let c = client();
        for i in from..from + n {
            let r = c
                .post(format!("{base}/v1/tokens"))
                .bearer_auth(key)
                .json(&json!({"card": {"number": pan_from(i), "exp_month": 1, "exp_year": 2031}}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }
    });
}

fn head_seq(data_dir: &Path) -> u64 {
    let out = bin()
        .args(["audit", "verify", "--json", "--data-dir"])
        .arg(data_dir)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["last_seq"].as_u64().unwrap()
}

/// Wait until the receiver has every record up to at least `upto`.
fn wait_all(seen: &Mutex<Seen>, upto: u64, limit: Duration) {
    let start = Instant::now();
    loop {
        {
            let s = seen.lock().unwrap();
            if (1..=upto).all(|q| s.records.contains_key(&q)) {
                return;
            }
            if start.elapsed() > limit {
                let missing: Vec<u64> = (1..=upto)
                    .filter(|q| !s.records.contains_key(q))
                    .take(20)
                    .collect();
                panic!(
                    "records missing after {limit:?}: {missing:?} (bad: {:?})",
                    s.bad
                );
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// First arrivals must be in sequence order (re-sends after a failure may
/// repeat records; they never jump ahead of a missing one).
fn assert_in_order(seen: &Seen) {
    let mut first_seen: Vec<(usize, u64)> = seen.records.iter().map(|(s, o)| (*o, *s)).collect();
    first_seen.sort_unstable();
    let seqs: Vec<u64> = first_seen.iter().map(|(_, s)| *s).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] + 1 == w[1]),
        "out of order: {seqs:?}"
    );
    assert_eq!(seqs.first(), Some(&1));
    assert!(seen.bad.is_empty(), "{:?}", seen.bad);
}

fn start_with_drain(base: &Path, drain: &str) -> (std::path::PathBuf, String, Server) {
    let dir = base.join("data");
    let admin = init(&dir);
    let cfg = base.join("tokengate.toml");
    std::fs::write(&cfg, format!("audit_checkpoint_secs = 1\n\n{drain}")).unwrap();
    let server = Server::start_with(
        &dir,
        &base.join("server.log"),
        &[],
        &["--config", cfg.to_str().unwrap()],
    );
    (dir, admin, server)
}

#[test]
fn syslog_drain_survives_a_receiver_restart_mid_stream() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let base = test_dir("drain-syslog-");
    let (tls, ca) = receiver_pki(&base);
    let addr = free_addr(&rt);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let rx = spawn_syslog(&rt, bind(&rt, addr), tls.clone(), seen.clone());
    let drain = format!(
        "[[audit.drains]]\nname = \"siem\"\nurl = \"syslog+tls://localhost:{}\"\nca_file = {:?}\nbatch = 7\n",
        addr.port(),
        ca.to_str().unwrap()
    );
    let (dir, admin, mut server) = start_with_drain(&base, &drain);
    let key = rt.block_on(new_key(&client(), &server.base, &admin, &["tokenize"]));
    make_records(&rt, &server.base, &key, 0, 20);
    wait_all(&seen, 10, Duration::from_secs(20));
    // The receiver goes away mid-stream; records keep coming.
    rx.abort();
    std::thread::sleep(Duration::from_millis(300));
    make_records(&rt, &server.base, &key, 20, 30);
    std::thread::sleep(Duration::from_secs(1));
    // Then a receiver that crashes mid-batch, then the real one again.
    let hole = spawn_blackhole(&rt, bind(&rt, addr), tls.clone());
    std::thread::sleep(Duration::from_secs(2));
    hole.abort();
    std::thread::sleep(Duration::from_millis(300));
    let _rx = spawn_syslog(&rt, bind(&rt, addr), tls, seen.clone());
    make_records(&rt, &server.base, &key, 50, 10);
    server.terminate();
    let head = head_seq(&dir);
    assert!(head >= 63, "{head}");
    // Restarted server resumes from its cursor.
    let mut server = Server::start_with(
        &dir,
        &base.join("server.log"),
        &[],
        &["--config", base.join("tokengate.toml").to_str().unwrap()],
    );
    wait_all(&seen, head, Duration::from_secs(60));
    server.terminate();
    let s = seen.lock().unwrap();
    assert_in_order(&s);
    assert!(!s.checkpoints.is_empty(), "checkpoints go to the drain too");
}

#[test]
fn https_drain_delivers_everything_in_order_after_an_outage() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let base = test_dir("drain-https-");
    let (tls, ca) = receiver_pki(&base);
    // The receiver is down at first.
    let addr = free_addr(&rt);
    let drain = format!(
        "[[audit.drains]]\nname = \"collector\"\nurl = \"https://localhost:{}/ingest\"\nca_file = {:?}\nbatch = 5\n",
        addr.port(),
        ca.to_str().unwrap()
    );
    let (dir, admin, mut server) = start_with_drain(&base, &drain);
    let key = rt.block_on(new_key(&client(), &server.base, &admin, &["tokenize"]));
    make_records(&rt, &server.base, &key, 0, 25);
    std::thread::sleep(Duration::from_secs(2));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let _rx = spawn_https(&rt, bind(&rt, addr), tls, seen.clone());
    make_records(&rt, &server.base, &key, 25, 5);
    let head = head_seq(&dir);
    wait_all(&seen, head - 1, Duration::from_secs(60));
    server.terminate();
    let s = seen.lock().unwrap();
    assert_in_order(&s);
    assert!(!s.checkpoints.is_empty());
}

#[test]
fn a_fail_closed_drain_that_is_down_stops_card_operations() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let base = test_dir("drain-closed-");
    let (tls, ca) = receiver_pki(&base);
    let addr = free_addr(&rt);
    let drain = format!(
        "[[audit.drains]]\nname = \"must\"\nurl = \"https://localhost:{}/ingest\"\nca_file = {:?}\non_failure = \"fail_closed\"\nmax_lag_secs = 1\n",
        addr.port(),
        ca.to_str().unwrap()
    );
    let (_dir, admin, mut server) = start_with_drain(&base, &drain);
    let tokenizer = rt.block_on(new_key(&client(), &server.base, &admin, &["tokenize"]));
    // Give the drain time to fail for longer than max_lag_secs.
    std::thread::sleep(Duration::from_secs(3));
    let status = |key: &str| {
        rt.block_on(async {
            client()
                .post(format!("{}/v1/tokens", server.base))
                .bearer_auth(key)
                .json(&json!({"card": {"number": pan_from(1), "exp_month": 1, "exp_year": 2031}}))
                .send()
                .await
                .unwrap()
        })
    };
    let r = status(&tokenizer);
    assert_eq!(r.status(), 503);
    let body: Value = rt.block_on(r.json()).unwrap();
    assert_eq!(body["error"]["code"], "audit_unavailable", "{body}");
    // The receiver comes up: the backlog drains and operations resume.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let _rx = spawn_https(&rt, bind(&rt, addr), tls, seen.clone());
    let start = Instant::now();
    let key = loop {
        let r = rt.block_on(async {
            client()
                .post(format!("{}/v1/api-keys", server.base))
                .bearer_auth(&admin)
                .json(&json!({"name": "after", "roles": ["tokenize"]}))
                .send()
                .await
                .unwrap()
        });
        if r.status() == 201 {
            break rt.block_on(r.json::<Value>()).unwrap()["key"]
                .as_str()
                .unwrap()
                .to_owned();
        }
        assert!(start.elapsed() < Duration::from_secs(60), "never reopened");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status(&key).status(), 201);
    server.terminate();
}

#[test]
fn alerts_reach_the_alert_webhook_and_nothing_else_does() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let base = test_dir("drain-alerts-");
    let (tls, ca) = receiver_pki(&base);
    let addr = free_addr(&rt);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let _rx = spawn_https(&rt, bind(&rt, addr), tls, seen.clone());
    let dir = base.join("data");
    let _admin = init(&dir);
    let url = format!("https://localhost:{}/alerts", addr.port());
    let mut server = Server::start(
        &dir,
        &base.join("server.log"),
        &[
            ("TOKENGATE_ALERT_WEBHOOK_URL", url.as_str()),
            ("TOKENGATE_ALERT_WEBHOOK_CA_FILE", ca.to_str().unwrap()),
            ("TOKENGATE_AUTH_LOCKOUT_KEY_THRESHOLD", "2"),
        ],
    );
    rt.block_on(async {
        let c = client();
        for _ in 0..2 {
            let r = c
                .get(format!("{}/v1/tokens/tok_x", server.base))
                .bearer_auth("tg_dddddddddddddddd_eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 401);
        }
    });
    let start = Instant::now();
    loop {
        {
            let s = seen.lock().unwrap();
            if s.events
                .iter()
                .any(|(a, d)| a == "alert" && d.starts_with("kind=failed_auth_threshold"))
            {
                assert!(s.events.iter().all(|(a, _)| a == "alert"), "{:?}", s.events);
                assert!(s.bad.is_empty(), "{:?}", s.bad);
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no alert arrived"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    server.terminate();

    // Only https is accepted for the webhook.
    let out = bin()
        .args(["serve", "--data-dir"])
        .arg(&dir)
        .env("TOKENGATE_ALERT_WEBHOOK_URL", "http://localhost:1/alerts")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn syslog_drain_presents_its_client_certificate_when_the_receiver_requires_one() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let base = test_dir("drain-mtls-");
    // One CA signs the receiver's certificate and tokengate's client certificate.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let client_cert = rcgen::CertificateParams::new(vec!["tokengate-drain".to_owned()])
        .unwrap()
        .signed_by(&client_key, &issuer)
        .unwrap();
    let ca_file = base.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    std::fs::write(base.join("client.pem"), client_cert.pem()).unwrap();
    std::fs::write(base.join("client.key"), client_key.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let tls = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![server_cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
            )
            .unwrap(),
    );
    let addr = free_addr(&rt);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let _rx = spawn_syslog(&rt, bind(&rt, addr), tls.clone(), seen.clone());
    let drain = format!(
        "[[audit.drains]]\nname = \"siem\"\nurl = \"syslog+tls://localhost:{}\"\nca_file = {:?}\nclient_cert = {:?}\nclient_key = {:?}\n",
        addr.port(),
        ca_file.to_str().unwrap(),
        base.join("client.pem").to_str().unwrap(),
        base.join("client.key").to_str().unwrap()
    );
    let (dir, _admin, mut server) = start_with_drain(&base, &drain);
    std::thread::sleep(Duration::from_secs(1));
    let head = head_seq(&dir);
    wait_all(&seen, head.min(3), Duration::from_secs(30));
    server.terminate();
    assert!(seen.lock().unwrap().bad.is_empty());

    // Without the client certificate the receiver refuses, and nothing arrives.
    let base = test_dir("drain-mtls-none-");
    let seen2 = Arc::new(Mutex::new(Seen::default()));
    let addr2 = free_addr(&rt);
    let _rx2 = spawn_syslog(&rt, bind(&rt, addr2), tls.clone(), seen2.clone());
    let drain = format!(
        "[[audit.drains]]\nname = \"siem\"\nurl = \"syslog+tls://localhost:{}\"\nca_file = {:?}\n",
        addr2.port(),
        ca_file.to_str().unwrap()
    );
    let (_dir, _admin, mut server) = start_with_drain(&base, &drain);
    std::thread::sleep(Duration::from_secs(2));
    server.terminate();
    assert!(seen2.lock().unwrap().records.is_empty());
}
