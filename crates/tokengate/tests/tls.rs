//! The TLS edge end to end: the `certs` / `domains` commands against a data
//! directory, and a real `tokengate serve` process answering handshakes by
//! SNI, reloading certificates without a restart, refusing old protocol
//! versions, hardening every response, redirecting plain HTTP, trusting
//! proxy headers only from trusted proxies, and watching expiry. Test
//! certificates are generated here with rcgen (a root, an intermediate and
//! leaves), except the weak ones rcgen cannot make, which come from
//! `crates/tokengate-tls/tests/fixtures`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bin, init, test_dir};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
use serde_json::Value;
use time::{Duration as TimeDuration, OffsetDateTime};
use tokengate_store::Store;

// ---- certificates ----------------------------------------------------------

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    cert: Certificate,
}

fn root(cn: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).unwrap();
    Ca { params, key, cert }
}

fn intermediate(cn: &str, parent: &Ca) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let issuer = Issuer::from_params(&parent.params, &parent.key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    Ca { params, key, cert }
}

/// A leaf certificate and its key, as files would hold them.
struct Leaf {
    cert: Certificate,
    key: KeyPair,
}

impl Leaf {
    fn der(&self) -> Vec<u8> {
        self.cert.der().to_vec()
    }
    /// The 32-byte private scalar of the (P-256) key: what must never be
    /// found anywhere in clear.
    fn secret_scalar(&self) -> Vec<u8> {
        let der = self.key.serialize_der();
        // ECPrivateKey ::= SEQUENCE { version INTEGER 1, privateKey OCTET STRING (32) … }
        let at = der
            .windows(5)
            .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
            .unwrap();
        der[at + 5..at + 5 + 32].to_vec()
    }
}

fn leaf_between(
    cn: &str,
    names: &[&str],
    issuer: &Ca,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.not_before = not_before;
    params.not_after = not_after;
    let issuer = Issuer::from_params(&issuer.params, &issuer.key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    Leaf { cert, key }
}

fn leaf(cn: &str, names: &[&str], issuer: &Ca) -> Leaf {
    let now = OffsetDateTime::now_utc();
    leaf_between(
        cn,
        names,
        issuer,
        now - TimeDuration::days(1),
        now + TimeDuration::days(90),
    )
}

/// A test PKI: root → intermediate, leaves signed by the intermediate.
struct Pki {
    root: Ca,
    inter: Ca,
}

fn pki() -> Pki {
    let root = root("tokengate Test Root");
    let inter = intermediate("tokengate Test Intermediate", &root);
    Pki { root, inter }
}

fn write(dir: &Path, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

/// Writes `leaf` as `<name>.crt` (leaf + intermediate) and `<name>.key`.
fn files(dir: &Path, name: &str, leaf: &Leaf, pki: &Pki) -> (PathBuf, PathBuf) {
    let bundle = format!("{}{}", leaf.cert.pem(), pki.inter.cert.pem());
    (
        write(dir, &format!("{name}.crt"), bundle),
        write(dir, &format!("{name}.key"), leaf.key.serialize_pem()),
    )
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tokengate-tls/tests/fixtures")
        .join(name)
}

// ---- the CLI -----------------------------------------------------------------

/// Every CLI output of this test binary, kept to search for key material.
static OUTPUTS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

fn tg(data_dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = bin();
    cmd.args(args).arg("--data-dir").arg(data_dir);
    cmd.env_remove("TOKENGATE_TRUST_ROOTS");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let mut all = OUTPUTS.lock().unwrap();
    all.extend_from_slice(&out.stdout);
    all.extend_from_slice(&out.stderr);
    out
}

/// Runs with `--json`; returns (exit code, stdout as JSON, stderr).
fn tg_json(data_dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> (i32, Value, String) {
    let mut with_json = args.to_vec();
    with_json.push("--json");
    let out = tg(data_dir, &with_json, envs);
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap(),
        v,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(data_dir: &Path, args: &[&str]) -> Value {
    let (code, v, err) = tg_json(data_dir, args, &[]);
    assert_eq!(code, 0, "{args:?}: {err}");
    v
}

/// Asserts that the command fails with exit 1 and `code`, in both the JSON
/// body and the stderr line; returns the message.
fn fails(data_dir: &Path, args: &[&str], code: &str) -> String {
    let (exit, v, err) = tg_json(data_dir, args, &[]);
    assert_eq!(exit, 1, "{args:?} should fail with {code}: {v} {err}");
    assert_eq!(v["error"]["code"], code, "{args:?}: {v} {err}");
    assert!(err.contains(&format!("error[{code}]")), "{err}");
    v["error"]["message"].as_str().unwrap().to_owned()
}

fn new_data_dir(prefix: &str) -> (PathBuf, PathBuf) {
    let base = test_dir(prefix);
    let data = base.join("data");
    init(&data);
    (base, data)
}

/// Runs `f` on a runtime of its own, on its own thread (callers may be
/// inside a runtime already).
fn blocking<T: Send + 'static>(f: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || tokio::runtime::Runtime::new().unwrap().block_on(f))
        .join()
        .unwrap()
}

fn audit_actions(data_dir: &Path) -> Vec<Value> {
    let db = data_dir.join("tokengate.db");
    blocking(async move {
        let store = Store::open_sqlite(&db).await.unwrap();
        let recs = store.audit_events(0, 100_000).await.unwrap();
        store.close().await;
        recs.iter()
            .map(|r| serde_json::from_str(&r.event_json).unwrap())
            .collect()
    })
}

fn raw_sql(data_dir: &Path, sql: &str) {
    let db = data_dir.join("tokengate.db");
    let sql = sql.to_owned();
    blocking(async move {
        let store = Store::open_sqlite(&db).await.unwrap();
        store.execute_raw_for_tests(&sql).await.unwrap();
        store.close().await;
    });
}

// ---- a real server -------------------------------------------------------------

struct Edge {
    child: Child,
    https: SocketAddr,
    http: Option<SocketAddr>,
    log: PathBuf,
}

impl Edge {
    fn start(data_dir: &Path, log: &Path, envs: &[(&str, &str)]) -> Edge {
        Edge::start_on(data_dir, log, "127.0.0.1:0", envs)
    }

    fn start_on(data_dir: &Path, log: &Path, listen: &str, envs: &[(&str, &str)]) -> Edge {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut cmd = bin();
        cmd.args(["serve", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .env("TOKENGATE_TLS_RELOAD_MS", "100")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut http = None;
        let https = loop {
            let line = lines
                .next()
                .expect("server exited before listening")
                .unwrap();
            if let Some(rest) = line.strip_prefix("tokengate redirecting http://") {
                http = Some(rest.split_whitespace().next().unwrap().parse().unwrap());
            }
            if let Some(addr) = line.strip_prefix("tokengate listening on https://") {
                break addr.trim().parse().unwrap();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Edge {
            child,
            https,
            http,
            log: log.to_path_buf(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- a TLS client that shows what the server sent --------------------------------

/// Accepts any certificate (the tests compare it byte for byte instead).
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn client_config(versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    // Every handshake is a full one, so it shows the certificate served now.
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A completed handshake to `addr`, with SNI `sni` (none: by IP address).
fn connect_with(
    addr: SocketAddr,
    sni: Option<&str>,
    config: Arc<ClientConfig>,
) -> Result<Tls, String> {
    let name = match sni {
        Some(s) => ServerName::try_from(s.to_owned()).unwrap(),
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let conn = ClientConnection::new(config, name).unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tls = StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| e.to_string())?;
    }
    Ok(tls)
}

fn connect(addr: SocketAddr, sni: Option<&str>) -> Result<Tls, String> {
    connect_with(
        addr,
        sni,
        client_config(&[&rustls::version::TLS13, &rustls::version::TLS12]),
    )
}

/// The leaf certificate served to a client sending `sni`.
fn served_leaf(addr: SocketAddr, sni: Option<&str>) -> Result<Vec<u8>, String> {
    let tls = connect(addr, sni)?;
    Ok(tls.conn.peer_certificates().unwrap()[0].to_vec())
}

/// One HTTP/1.1 request on an open (keep-alive) connection.
fn http_get(tls: &mut Tls, host: &str, path: &str) -> (u16, String) {
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n\r\n"
    )
    .unwrap();
    tls.flush().unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    tls.read_exact(&mut body).unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn openssl(args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl must be installed (Debian package `openssl`)")
}

/// Polls `f` every 20 ms until it returns true or `limit` passes; returns
/// how long it took.
fn within(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn reqwest_client() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

// ---- tests ----------------------------------------------------------------------

#[test]
fn every_check_fails_with_its_code_and_nothing_is_stored() {
    let (base, data) = new_data_dir("tls-checks-");
    let pki = pki();
    let shop = leaf(
        "shop.example.com",
        &["shop.example.com", "*.shop.example.com"],
        &pki.inter,
    );
    let (crt, key) = files(&base, "shop", &shop, &pki);
    let crt = crt.to_str().unwrap();
    let key = key.to_str().unwrap();

    // PEM that does not parse: the message names the block and the line.
    let bundle = std::fs::read_to_string(crt).unwrap();
    let truncated = write(&base, "truncated.crt", &bundle[..bundle.len() * 3 / 4]);
    let msg = fails(
        &data,
        &["certs", "add", truncated.to_str().unwrap(), key],
        "pem_invalid",
    );
    assert!(msg.contains("block") && msg.contains("line"), "{msg}");
    let mut lines: Vec<&str> = bundle.lines().collect();
    lines[3] = "this is not base64!";
    let garbage = write(&base, "garbage.crt", lines.join("\n"));
    let msg = fails(
        &data,
        &["certs", "add", garbage.to_str().unwrap(), key],
        "pem_invalid",
    );
    assert!(msg.contains("block 1") && msg.contains("line 4"), "{msg}");
    fails(&data, &["certs", "add", crt, crt], "pem_missing");
    fails(&data, &["certs", "add", key, key], "pem_unexpected_block");

    // Key does not match the certificate.
    let other = leaf("other.example.com", &["other.example.com"], &pki.inter);
    let (_, other_key) = files(&base, "other", &other, &pki);
    fails(
        &data,
        &["certs", "add", crt, other_key.to_str().unwrap()],
        "key_mismatch",
    );

    // Expired and not yet valid.
    let now = OffsetDateTime::now_utc();
    let old = leaf_between(
        "old.example.com",
        &["old.example.com"],
        &pki.inter,
        now - TimeDuration::days(90),
        now - TimeDuration::days(1),
    );
    let (old_crt, old_key) = files(&base, "old", &old, &pki);
    fails(
        &data,
        &[
            "certs",
            "add",
            old_crt.to_str().unwrap(),
            old_key.to_str().unwrap(),
        ],
        "cert_expired",
    );
    let future = leaf_between(
        "new.example.com",
        &["new.example.com"],
        &pki.inter,
        now + TimeDuration::days(2),
        now + TimeDuration::days(90),
    );
    let (new_crt, new_key) = files(&base, "future", &future, &pki);
    fails(
        &data,
        &[
            "certs",
            "add",
            new_crt.to_str().unwrap(),
            new_key.to_str().unwrap(),
        ],
        "cert_not_yet_valid",
    );

    // Chain incomplete: the leaf alone, without its intermediate.
    let alone = write(&base, "alone.crt", shop.cert.pem());
    let msg = fails(
        &data,
        &["certs", "add", alone.to_str().unwrap(), key],
        "chain_incomplete",
    );
    assert!(msg.contains("tokengate Test Intermediate"), "{msg}");

    // RSA < 2048 and SHA-1 signatures (OpenSSL-made fixtures).
    let rsa = [fixture("rsa1024.crt"), fixture("rsa1024.key")];
    fails(
        &data,
        &[
            "certs",
            "add",
            rsa[0].to_str().unwrap(),
            rsa[1].to_str().unwrap(),
        ],
        "rsa_key_too_weak",
    );
    let sha1 = [fixture("sha1.crt"), fixture("sha1.key")];
    fails(
        &data,
        &[
            "certs",
            "add",
            sha1[0].to_str().unwrap(),
            sha1[1].to_str().unwrap(),
        ],
        "weak_signature",
    );

    // Domains: not covered by a SAN (wildcards for one label only), invalid, an IP.
    let msg = fails(
        &data,
        &["certs", "add", crt, key, "--domain", "www.example.com"],
        "domain_not_covered",
    );
    assert!(msg.contains("shop.example.com"), "{msg}");
    fails(
        &data,
        &["certs", "add", crt, key, "--domain", "a.b.shop.example.com"],
        "domain_not_covered",
    );
    fails(
        &data,
        &["certs", "add", crt, key, "--domain", "*.example.com"],
        "domain_not_covered",
    );
    fails(
        &data,
        &["certs", "add", crt, key, "--domain", "bad domain"],
        "invalid_domain",
    );
    fails(
        &data,
        &["certs", "add", crt, key, "--domain", "127.0.0.1"],
        "domain_is_ip",
    );
    fails(
        &data,
        &["certs", "add", crt, key, "--name", "Bad Name"],
        "invalid_cert_name",
    );
    fails(
        &data,
        &["certs", "add", "/nonexistent.crt", key],
        "file_unreadable",
    );

    // Nothing above was stored.
    let list = ok(&data, &["certs"]);
    assert_eq!(list["certificates"].as_array().unwrap().len(), 1, "{list}");

    // Not trusted by the system roots: allowed, shown as Trusted: false.
    let added = ok(
        &data,
        &[
            "certs",
            "add",
            crt,
            key,
            "--domain",
            "shop.example.com",
            "--domain",
            "*.shop.example.com",
            "--name",
            "shop",
        ],
    );
    assert_eq!(added["trusted"], false);
    assert_eq!(added["chain_length"], 2);
    fails(
        &data,
        &["certs", "add", crt, key, "--name", "shop"],
        "cert_name_taken",
    );
    fails(
        &data,
        &["certs", "add", crt, key, "--domain", "shop.example.com"],
        "domain_taken",
    );

    // Trusted against the roots given; the bundle is ordered leaf → root
    // whatever order it came in.
    let roots = write(&base, "roots.pem", pki.root.cert.pem());
    let shuffled = write(
        &base,
        "shuffled.crt",
        format!(
            "{}{}{}",
            pki.root.cert.pem(),
            shop.cert.pem(),
            pki.inter.cert.pem()
        ),
    );
    let (code, v, err) = tg_json(
        &data,
        &[
            "certs",
            "add",
            shuffled.to_str().unwrap(),
            key,
            "--name",
            "shop-trusted",
        ],
        &[("TOKENGATE_TRUST_ROOTS", roots.to_str().unwrap())],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["trusted"], true);
    assert_eq!(v["chain_length"], 3);

    // Objects that do not exist, and updates that fail their checks.
    fails(
        &data,
        &["certs", "info", "--name", "nope"],
        "cert_not_found",
    );
    fails(
        &data,
        &["certs", "update", "--name", "nope", crt],
        "cert_not_found",
    );
    fails(
        &data,
        &["certs", "remove", "--name", "nope", "--yes"],
        "cert_not_found",
    );
    fails(
        &data,
        &[
            "certs",
            "update",
            "--name",
            "shop",
            other_key.to_str().unwrap(),
        ],
        "pem_unexpected_block",
    );
    let (other_crt, _) = files(&base, "other", &other, &pki);
    // The stored key does not match another certificate…
    fails(
        &data,
        &[
            "certs",
            "update",
            "--name",
            "shop",
            other_crt.to_str().unwrap(),
        ],
        "key_mismatch",
    );
    // …and a new certificate must still cover the domains it serves.
    fails(
        &data,
        &[
            "certs",
            "update",
            "--name",
            "shop",
            other_crt.to_str().unwrap(),
            other_key.to_str().unwrap(),
        ],
        "domain_not_covered",
    );
    fails(
        &data,
        &["domains", "add", "shop.example.com"],
        "domain_exists",
    );
    fails(
        &data,
        &["domains", "update", "nope.example.com", "--cert", "shop"],
        "domain_not_found",
    );
    fails(
        &data,
        &["domains", "remove", "nope.example.com"],
        "domain_not_found",
    );
    fails(
        &data,
        &["domains", "add", "x.example.org", "--cert", "nope"],
        "cert_not_found",
    );
    fails(
        &data,
        &["domains", "add", "x.example.org", "--cert", "shop"],
        "domain_not_covered",
    );
    fails(&data, &["domains", "add", "10.0.0.1"], "domain_is_ip");

    // Remove asks; without a terminal and without --yes it refuses.
    let msg = fails(
        &data,
        &["certs", "remove", "--name", "shop"],
        "confirmation_required",
    );
    assert!(msg.contains("--yes"), "{msg}");
    assert_eq!(
        ok(&data, &["certs"])["certificates"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // A bad environment is a configuration error (exit 64), not a crash.
    let (code, v, _) = tg_json(&data, &["certs"], &[("TOKENGATE_TLS_UNKNOWN_SNI", "maybe")]);
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (64, Some("config_error"))
    );
}

#[test]
fn certificates_and_domains_lifecycle_is_audited() {
    let (base, data) = new_data_dir("tls-lifecycle-");
    let pki = pki();
    let a = leaf(
        "a.example.com",
        &["a.example.com", "*.example.com"],
        &pki.inter,
    );
    let (a_crt, a_key) = files(&base, "a", &a, &pki);

    // No --name: a memorable adjective-noun-number name.
    let added = ok(
        &data,
        &[
            "certs",
            "add",
            a_crt.to_str().unwrap(),
            a_key.to_str().unwrap(),
            "--domain",
            "a.example.com",
        ],
    );
    let name = added["name"].as_str().unwrap().to_owned();
    let parts: Vec<&str> = name.split('-').collect();
    assert_eq!(parts.len(), 3, "{name}");
    assert!(
        parts[2].len() == 4 && parts[2].chars().all(|c| c.is_ascii_digit()),
        "{name}"
    );
    for field in [
        "common_names",
        "subject",
        "issuer",
        "starts_at",
        "expires_at",
        "sans",
        "trusted",
        "domains",
    ] {
        assert!(!added[field].is_null(), "{field} missing: {added}");
    }
    assert_eq!(added["domains"], serde_json::json!(["a.example.com"]));
    assert_eq!(added["type"], "manual");

    // The table and the info view.
    let out = tg(&data, &["certs"], &[]);
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    let header = table.lines().next().unwrap();
    for col in [
        "Name",
        "Common Name(s)",
        "Expires",
        "Trusted",
        "Type",
        "Domains",
    ] {
        assert!(header.contains(col), "{header}");
    }
    assert!(
        table.contains(&name) && table.contains("a.example.com") && table.contains("False"),
        "{table}"
    );
    assert!(
        table.contains("localhost") && table.contains("self-signed"),
        "{table}"
    );
    let out = tg(
        &data,
        &["certs", "info", "--name", &name, "--show-domains"],
        &[],
    );
    let info = String::from_utf8(out.stdout).unwrap();
    for label in [
        "Common Name(s):",
        "Subject:",
        "Issuer:",
        "Starts At:",
        "Expires At:",
        "SANs:",
        "Trusted:",
        "Domains:",
    ] {
        assert!(info.contains(label), "{label} missing:\n{info}");
    }
    let out = tg(&data, &["certs", "info", "--name", &name], &[]);
    assert!(!String::from_utf8(out.stdout).unwrap().contains("Domains:"));

    // Domains.
    ok(&data, &["domains", "add", "*.example.com", "--cert", &name]);
    ok(&data, &["domains", "add", "later.example.org"]);
    let list = ok(&data, &["domains"]);
    let pairs: Vec<(String, Value)> = list["domains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["domain"].as_str().unwrap().to_owned(),
                d["certificate"].clone(),
            )
        })
        .collect();
    assert!(
        pairs.contains(&("*.example.com".into(), Value::String(name.clone()))),
        "{list}"
    );
    assert!(
        pairs.contains(&("later.example.org".into(), Value::Null)),
        "{list}"
    );
    let out = tg(&data, &["domains"], &[]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.lines().next().unwrap().contains("Certificate"),
        "{table}"
    );

    // Update: renewal with the same key, then with a new key.
    let renewed = leaf_between(
        "a.example.com",
        &["a.example.com", "*.example.com"],
        &pki.inter,
        OffsetDateTime::now_utc() - TimeDuration::days(1),
        OffsetDateTime::now_utc() + TimeDuration::days(180),
    );
    // rcgen made a new key; re-sign the same key instead for the keep-key case.
    let same_key_params = {
        let mut p =
            CertificateParams::new(vec!["a.example.com".to_owned(), "*.example.com".to_owned()])
                .unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "a.example.com");
        p.not_after = OffsetDateTime::now_utc() + TimeDuration::days(120);
        p
    };
    let same_key_cert = same_key_params
        .signed_by(
            &a.key,
            &Issuer::from_params(&pki.inter.params, &pki.inter.key),
        )
        .unwrap();
    let same = write(
        &base,
        "same-key.crt",
        format!("{}{}", same_key_cert.pem(), pki.inter.cert.pem()),
    );
    let v = ok(
        &data,
        &["certs", "update", "--name", &name, same.to_str().unwrap()],
    );
    assert_ne!(v["sha256_fingerprint"], added["sha256_fingerprint"]);
    let (r_crt, r_key) = files(&base, "renewed", &renewed, &pki);
    let v = ok(
        &data,
        &[
            "certs",
            "update",
            "--name",
            &name,
            r_crt.to_str().unwrap(),
            r_key.to_str().unwrap(),
        ],
    );
    assert_eq!(v["domains"].as_array().unwrap().len(), 2);

    ok(&data, &["domains", "remove", "later.example.org"]);
    let removed = ok(&data, &["certs", "remove", "--name", &name, "--yes"]);
    let mut lost: Vec<String> = removed["domains_without_certificate"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_owned())
        .collect();
    lost.sort();
    assert_eq!(lost, vec!["*.example.com", "a.example.com"]);
    let out = tg(
        &data,
        &["certs", "remove", "--name", "localhost", "--yes"],
        &[],
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("these domains lose HTTPS: localhost"),
        "{text}"
    );
    assert!(text.contains("default certificate"), "{text}");
    // The domains stay, without a certificate.
    let list = ok(&data, &["domains"]);
    assert!(
        list["domains"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["certificate"].is_null()),
        "{list}"
    );

    // Every change is in the audit trail, attributed to the CLI, and the
    // chain verifies.
    let events = audit_actions(&data);
    let actions: Vec<&str> = events
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for (action, count) in [
        ("cert_add", 2),
        ("cert_update", 2),
        ("cert_remove", 2),
        ("domain_add", 2),
        ("domain_remove", 1),
    ] {
        assert_eq!(
            actions.iter().filter(|a| **a == action).count(),
            count,
            "{action}: {actions:?}"
        );
    }
    let update = events
        .iter()
        .find(|e| e["action"] == "cert_update")
        .unwrap();
    assert_eq!(update["actor"], "cli");
    assert_eq!(update["subject"], name.as_str());
    assert!(
        update["detail"].as_str().unwrap().contains("key=kept"),
        "{update}"
    );
    let out = tg(&data, &["audit", "verify"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn sni_picks_the_certificate_mapped_to_the_domain() {
    let (base, data) = new_data_dir("tls-sni-");
    let pki = pki();
    let a = leaf("a.test", &["a.test"], &pki.inter);
    let b = leaf("b.test", &["*.b.test", "b.test"], &pki.inter);
    let c = leaf("c.test", &["c.test", "a.test"], &pki.inter);
    for (name, l, domain) in [
        ("cert-a", &a, "a.test"),
        ("cert-b", &b, "*.b.test"),
        ("cert-c", &c, "c.test"),
    ] {
        let (crt, key) = files(&base, name, l, &pki);
        ok(
            &data,
            &[
                "certs",
                "add",
                crt.to_str().unwrap(),
                key.to_str().unwrap(),
                "--domain",
                domain,
                "--name",
                name,
            ],
        );
    }

    let edge = Edge::start(&data, &base.join("server.log"), &[]);
    let local = served_leaf(edge.https, Some("localhost")).unwrap();
    // rustls client.
    assert_eq!(served_leaf(edge.https, Some("a.test")).unwrap(), a.der());
    assert_eq!(served_leaf(edge.https, Some("A.TEST")).unwrap(), a.der());
    assert_eq!(served_leaf(edge.https, Some("c.test")).unwrap(), c.der());
    assert_eq!(
        served_leaf(edge.https, Some("shop.b.test")).unwrap(),
        b.der(),
        "wildcard"
    );
    // Unknown names and clients without SNI get the default (localhost).
    assert_ne!(local, a.der());
    assert_eq!(
        served_leaf(edge.https, Some("x.shop.b.test")).unwrap(),
        local,
        "one label only"
    );
    assert_eq!(
        served_leaf(edge.https, Some("unknown.test")).unwrap(),
        local
    );
    assert_eq!(served_leaf(edge.https, None).unwrap(), local);
    // The intermediate is served after the leaf.
    let tls = connect(edge.https, Some("a.test")).unwrap();
    let chain = tls.conn.peer_certificates().unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1].as_ref(), pki.inter.cert.der().as_ref());

    // openssl s_client -servername, as an operator would check.
    let connect_to = format!("127.0.0.1:{}", edge.https.port());
    for (sni, cn) in [
        ("a.test", "CN = a.test"),
        ("www.b.test", "CN = b.test"),
        ("c.test", "CN = c.test"),
    ] {
        let out = openssl(&["s_client", "-connect", &connect_to, "-servername", sni]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("subject={cn}")), "{sni}: {text}");
        assert!(
            text.contains("issuer=CN = tokengate Test Intermediate"),
            "{text}"
        );
    }

    // Moving a domain to another certificate reaches new handshakes
    // without a restart.
    ok(&data, &["domains", "update", "a.test", "--cert", "cert-c"]);
    let took = within(Duration::from_secs(1), || {
        served_leaf(edge.https, Some("a.test")).unwrap() == c.der()
    });
    assert!(took.is_some(), "a.test still served with cert-a after 1 s");
    drop(edge);

    // With tls_unknown_sni = "refuse", unknown names and no SNI are refused.
    let edge = Edge::start(
        &data,
        &base.join("server-refuse.log"),
        &[("TOKENGATE_TLS_UNKNOWN_SNI", "refuse")],
    );
    assert!(served_leaf(edge.https, Some("unknown.test")).is_err());
    assert!(served_leaf(edge.https, None).is_err());
    assert_eq!(served_leaf(edge.https, Some("c.test")).unwrap(), c.der());
    let out = openssl(&[
        "s_client",
        "-connect",
        &format!("127.0.0.1:{}", edge.https.port()),
        "-servername",
        "unknown.test",
    ]);
    assert!(
        !out.status.success(),
        "openssl got a certificate for an unknown name"
    );
}

#[test]
fn certs_update_while_a_keep_alive_connection_is_open() {
    let (base, data) = new_data_dir("tls-reload-");
    let pki = pki();
    let old = leaf("shop.test", &["shop.test"], &pki.inter);
    let (crt, key) = files(&base, "old", &old, &pki);
    ok(
        &data,
        &[
            "certs",
            "add",
            crt.to_str().unwrap(),
            key.to_str().unwrap(),
            "--domain",
            "shop.test",
            "--name",
            "shop",
        ],
    );
    let edge = Edge::start(&data, &base.join("server.log"), &[]);

    let mut open = connect(edge.https, Some("shop.test")).unwrap();
    assert_eq!(
        open.conn.peer_certificates().unwrap()[0].as_ref(),
        old.der().as_slice()
    );
    assert_eq!(http_get(&mut open, "shop.test", "/healthz").0, 200);

    let new = leaf("shop.test", &["shop.test"], &pki.inter);
    let (new_crt, new_key) = files(&base, "new", &new, &pki);
    ok(
        &data,
        &[
            "certs",
            "update",
            "--name",
            "shop",
            new_crt.to_str().unwrap(),
            new_key.to_str().unwrap(),
        ],
    );
    let changed = Instant::now();
    let took = within(Duration::from_secs(1), || {
        served_leaf(edge.https, Some("shop.test")).unwrap() == new.der()
    });
    assert!(
        took.is_some(),
        "new handshakes still got the old certificate 1 s after `certs update`"
    );
    assert!(changed.elapsed() <= Duration::from_millis(1500));

    // The connection opened before the update keeps working, several times.
    for _ in 0..3 {
        let (status, body) = http_get(&mut open, "shop.test", "/healthz");
        assert_eq!(status, 200);
        assert!(body.contains("ok"), "{body}");
    }
    assert!(
        edge.log().contains("certificate store changed"),
        "{}",
        edge.log()
    );
}

#[test]
fn tls_versions_alpn_and_tls_1_1_refused() {
    let (base, data) = new_data_dir("tls-versions-");
    let edge = Edge::start(&data, &base.join("server.log"), &[]);
    let to = format!("127.0.0.1:{}", edge.https.port());

    // TLS 1.1 and 1.0 are refused. SECLEVEL=0 makes OpenSSL actually offer
    // them (its defaults would not even try), so the refusal is the server's.
    for old in ["-tls1_1", "-tls1"] {
        let out = openssl(&[
            "s_client",
            "-connect",
            &to,
            old,
            "-cipher",
            "DEFAULT:@SECLEVEL=0",
        ]);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{old} was accepted: {all}");
        assert!(
            all.contains("protocol version") || all.contains("alert"),
            "{old}: {all}"
        );
        assert!(!all.contains("BEGIN CERTIFICATE"), "{old}: {all}");
    }
    // TLS 1.2 and 1.3 work, with ALPN h2 and http/1.1.
    for (version, proto) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let out = openssl(&[
            "s_client",
            "-connect",
            &to,
            version,
            "-alpn",
            "h2,http/1.1",
            "-servername",
            "localhost",
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("Protocol  : {proto}"))
                || text.contains(&format!("New, {proto}")),
            "{version}: {text}"
        );
        assert!(text.contains("ALPN protocol: h2"), "{version}: {text}");
    }
    // TLS 1.2 offers only AEAD suites with forward secrecy.
    let out = openssl(&[
        "s_client",
        "-connect",
        &to,
        "-tls1_2",
        "-cipher",
        "AES128-SHA:AES256-SHA:DES-CBC3-SHA",
    ]);
    assert!(!out.status.success(), "a static-RSA CBC suite was accepted");
    // The server, not the client, picks the suite: a client that prefers
    // ChaCha20 still gets AES-128-GCM, the server's first choice.
    for (version, flag, offer, chosen) in [
        (
            "-tls1_3",
            "-ciphersuites",
            "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256",
            "TLS_AES_128_GCM_SHA256",
        ),
        (
            "-tls1_2",
            "-cipher",
            "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256",
            "ECDHE-ECDSA-AES128-GCM-SHA256",
        ),
    ] {
        let out = openssl(&[
            "s_client",
            "-connect",
            &to,
            version,
            flag,
            offer,
            "-servername",
            "localhost",
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("Cipher is {chosen}"))
                || text.contains(&format!("Cipher    : {chosen}")),
            "{version}: {text}"
        );
    }
    // rustls clients for each version.
    for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let tls = connect_with(edge.https, Some("localhost"), client_config(&[v])).unwrap();
        assert_eq!(tls.conn.protocol_version(), Some(v.version));
    }
}

#[test]
fn tls_session_resumption() {
    let (base, data) = new_data_dir("tls-resume-");
    let edge = Edge::start(&data, &base.join("server.log"), &[]);
    for v in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let mut config = (*client_config(&[v])).clone();
        // One client-side store, shared by the connections below.
        config.resumption = rustls::client::Resumption::in_memory_sessions(16);
        let config = Arc::new(config);
        let mut first = connect_with(edge.https, Some("localhost"), config.clone()).unwrap();
        assert_eq!(
            first.conn.handshake_kind(),
            Some(rustls::HandshakeKind::Full)
        );
        // TLS 1.3 tickets arrive after the handshake: read a response.
        assert_eq!(http_get(&mut first, "localhost", "/healthz").0, 200);
        for _ in 0..2 {
            let mut again = connect_with(edge.https, Some("localhost"), config.clone()).unwrap();
            assert_eq!(
                again.conn.handshake_kind(),
                Some(rustls::HandshakeKind::Resumed),
                "{v:?}"
            );
            assert_eq!(http_get(&mut again, "localhost", "/healthz").0, 200);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_headers_on_2xx_4xx_and_5xx() {
    let (base, data) = new_data_dir("tls-headers-");
    let edge = Edge::start(&data, &base.join("server.log"), &[]);
    let c = reqwest_client();
    let url = |p: &str| format!("https://127.0.0.1:{}{p}", edge.https.port());
    let check = |resp: &reqwest::Response| {
        let h = resp.headers();
        let hsts = h["strict-transport-security"].to_str().unwrap();
        let age: u64 = hsts
            .split(';')
            .find_map(|p| p.trim().strip_prefix("max-age="))
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            age >= 31_536_000 && hsts.contains("includeSubDomains"),
            "{hsts}"
        );
        assert_eq!(
            h["content-security-policy"],
            "default-src 'none'; frame-ancestors 'none'"
        );
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert!(h.get("server").is_none() && h.get("x-powered-by").is_none());
    };
    let ok = c.get(url("/healthz")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    check(&ok);
    let unauthorized = c
        .post(url("/v1/tokens"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    check(&unauthorized);
    assert_eq!(unauthorized.headers()["cache-control"], "no-store");
    let missing = c.get(url("/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    check(&missing);

    // A 5xx: the audit trail cannot be written, so the request is refused.
    raw_sql(
        &data,
        "CREATE TRIGGER audit_off BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'disk full'); END",
    );
    let refused = c
        .post(url("/v1/tokens"))
        .bearer_auth("tg_aaaaaaaaaaaaaaaa_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    check(&refused);
    assert_eq!(refused.headers()["cache-control"], "no-store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_redirects_and_proxy_headers_only_from_trusted_proxies() {
    let (base, data) = new_data_dir("tls-edge-");
    let c = reqwest_client();

    // Not behind a proxy: the plain listener only redirects (308), except
    // ACME HTTP-01 paths; forwarded headers are ignored.
    let edge = Edge::start(
        &data,
        &base.join("server.log"),
        &[("TOKENGATE_HTTP_LISTEN", "127.0.0.1:0")],
    );
    let http = edge.http.expect("plain-HTTP listener announced");
    let resp = c
        .get(format!("http://{http}/v1/tokens/tok_x?a=1"))
        .header("host", "shop.example.com")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 308);
    assert_eq!(
        resp.headers()["location"],
        format!(
            "https://shop.example.com:{}/v1/tokens/tok_x?a=1",
            edge.https.port()
        )
        .as_str()
    );
    let resp = c
        .get(format!("http://{http}/.well-known/acme-challenge/token123"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        404,
        "ACME paths are answered over HTTP, not redirected"
    );
    let resp = c
        .post(format!("https://127.0.0.1:{}/v1/tokens", edge.https.port()))
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "http")
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        401,
        "headers from an untrusted peer change nothing"
    );
    drop(edge);
    let last = audit_actions(&data)
        .into_iter()
        .rev()
        .find(|e| e["action"] == "auth_failure")
        .unwrap();
    assert_eq!(last["client_ip"], "127.0.0.1");

    // Behind a trusted proxy (127.0.0.1): the client address comes from
    // X-Forwarded-For, forwarded http is redirected, forwarded https is
    // served even on the plain listener (the router terminated TLS).
    let edge = Edge::start(
        &data,
        &base.join("server-proxy.log"),
        &[
            ("TOKENGATE_HTTP_LISTEN", "127.0.0.1:0"),
            ("TOKENGATE_BEHIND_PROXY", "true"),
            ("TOKENGATE_TRUSTED_PROXIES", "127.0.0.1/32, 10.0.0.0/8"),
        ],
    );
    let http = edge.http.unwrap();
    let resp = c
        .post(format!("http://{http}/v1/tokens"))
        .header("host", "shop.example.com")
        .header("x-forwarded-for", "198.51.100.1, 203.0.113.9, 10.1.2.3")
        .header("x-forwarded-proto", "https")
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "served, not redirected");
    let resp = c
        .get(format!("https://127.0.0.1:{}/healthz", edge.https.port()))
        .header("host", "shop.example.com")
        .header("x-forwarded-proto", "http")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 308);
    assert!(
        resp.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("https://shop.example.com")
    );
    let resp = c
        .get(format!("http://{http}/healthz"))
        .header("host", "shop.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        308,
        "no forwarded proto on the plain listener: redirect"
    );
    drop(edge);
    let last = audit_actions(&data)
        .into_iter()
        .rev()
        .find(|e| e["action"] == "auth_failure")
        .unwrap();
    assert_eq!(
        last["client_ip"], "203.0.113.9",
        "right-most untrusted address"
    );
}

#[test]
fn private_keys_never_appear_in_clear() {
    let (base, data) = new_data_dir("tls-keys-");
    let pki = pki();
    let a = leaf("keys.test", &["keys.test"], &pki.inter);
    let b = leaf("keys.test", &["keys.test"], &pki.inter);
    let (a_crt, a_key) = files(&base, "a", &a, &pki);
    let (b_crt, b_key) = files(&base, "b", &b, &pki);
    ok(
        &data,
        &[
            "certs",
            "add",
            a_crt.to_str().unwrap(),
            a_key.to_str().unwrap(),
            "--domain",
            "keys.test",
            "--name",
            "keys",
        ],
    );
    let edge = Edge::start(
        &data,
        &data.join("server.log"),
        &[("TOKENGATE_LOG", "debug")],
    );
    ok(
        &data,
        &[
            "certs",
            "update",
            "--name",
            "keys",
            b_crt.to_str().unwrap(),
            b_key.to_str().unwrap(),
        ],
    );
    within(Duration::from_secs(2), || {
        served_leaf(edge.https, Some("keys.test")).unwrap() == b.der()
    })
    .unwrap();
    for args in [
        &["certs"][..],
        &["certs", "info", "--name", "keys", "--show-domains"],
        &["domains"],
    ] {
        ok(&data, args);
        tg(&data, args, &[]);
    }
    let log = edge.log();
    drop(edge);
    // Keep the key files out of the search: they are the inputs.
    std::fs::remove_file(&a_key).unwrap();
    std::fs::remove_file(&b_key).unwrap();

    let mut needles: Vec<(String, Vec<u8>)> = Vec::new();
    for (label, l) in [("a", &a), ("b", &b)] {
        let der = l.key.serialize_der();
        let pem = l.key.serialize_pem();
        needles.push((format!("{label}: scalar"), l.secret_scalar()));
        needles.push((format!("{label}: DER"), der));
        for (i, line) in pem.lines().filter(|l| !l.starts_with("-----")).enumerate() {
            needles.push((format!("{label}: PEM line {i}"), line.as_bytes().to_vec()));
        }
    }
    let mut haystacks: Vec<(String, Vec<u8>)> = common::files_under(&base)
        .into_iter()
        .map(|f| (f.display().to_string(), std::fs::read(&f).unwrap()))
        .collect();
    assert!(
        haystacks
            .iter()
            .any(|(f, _)| f.ends_with("tokengate.db-wal")),
        "the WAL was searched"
    );
    haystacks.push(("server log".into(), log.into_bytes()));
    haystacks.push(("CLI output".into(), OUTPUTS.lock().unwrap().clone()));
    for (where_, bytes) in &haystacks {
        for (what, needle) in &needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_slice()),
                "private key material ({what}) found in clear in {where_}"
            );
        }
    }
    // The certificates themselves are public and are stored.
    let db = std::fs::read(data.join("tokengate.db")).unwrap_or_default();
    let wal = std::fs::read(data.join("tokengate.db-wal")).unwrap_or_default();
    let b64 = b.cert.pem();
    let line = b64.lines().nth(1).unwrap();
    assert!(
        db.windows(line.len()).any(|w| w == line.as_bytes())
            || wal.windows(line.len()).any(|w| w == line.as_bytes()),
        "sanity: the search would find stored PEM text"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_watch_sets_the_metric_and_warns_once_per_threshold() {
    let (base, data) = new_data_dir("tls-expiry-");
    let pki = pki();
    let now = OffsetDateTime::now_utc();
    let soon = leaf_between(
        "soon.test",
        &["soon.test"],
        &pki.inter,
        now - TimeDuration::days(80),
        now + TimeDuration::days(10) + TimeDuration::hours(1),
    );
    let (crt, key) = files(&base, "soon", &soon, &pki);
    ok(
        &data,
        &[
            "certs",
            "add",
            crt.to_str().unwrap(),
            key.to_str().unwrap(),
            "--domain",
            "soon.test",
            "--name",
            "soon",
        ],
    );
    let envs = [("TOKENGATE_TLS_EXPIRY_CHECK_SECS", "1")];
    let edge = Edge::start(&data, &base.join("server.log"), &envs);
    let c = reqwest_client();
    let metrics_url = format!("https://127.0.0.1:{}/metrics", edge.https.port());
    let mut text = String::new();
    for _ in 0..50 {
        text = c
            .get(&metrics_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("tokengate_tls_certificate_expiry_days{certificate=\"soon\"}") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        text.contains("tokengate_tls_certificate_expiry_days{certificate=\"soon\"} 10"),
        "{text}"
    );
    assert!(
        text.contains("tokengate_tls_certificate_expiry_days{certificate=\"localhost\"}"),
        "{text}"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        edge.log().contains("TLS certificate expires soon"),
        "{}",
        edge.log()
    );
    drop(edge);
    // Restart: the warning for this threshold is not repeated.
    let edge = Edge::start(&data, &base.join("server2.log"), &envs);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    drop(edge);
    let warnings: Vec<Value> = audit_actions(&data)
        .into_iter()
        .filter(|e| e["action"] == "cert_expiry_warning")
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0]["subject"], "soon");
    let detail = warnings[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("threshold_days=14") && detail.contains("days_left=10"),
        "{detail}"
    );
}

#[test]
fn legacy_certificate_files_are_imported_and_the_key_file_deleted() {
    let (base, data) = new_data_dir("tls-legacy-");
    // A data directory from before the certificate store: its pair in
    // files, nothing in the store.
    raw_sql(
        &data,
        "DELETE FROM tls_domains; DELETE FROM tls_certificates",
    );
    let pki = pki();
    let l = leaf("localhost", &["localhost"], &pki.inter);
    std::fs::create_dir_all(data.join("tls")).unwrap();
    write(
        &data.join("tls"),
        "cert.pem",
        format!("{}{}", l.cert.pem(), pki.inter.cert.pem()),
    );
    write(&data.join("tls"), "key.pem", l.key.serialize_pem());
    let edge = Edge::start(&data, &base.join("server.log"), &[]);
    assert_eq!(served_leaf(edge.https, None).unwrap(), l.der());
    assert!(
        !data.join("tls/key.pem").exists(),
        "the clear-text key file is gone"
    );
    drop(edge);
    let list = ok(&data, &["certs"]);
    assert_eq!(list["certificates"][0]["name"], "localhost");
    assert!(
        audit_actions(&data)
            .iter()
            .any(|e| e["action"] == "cert_add" && e["actor"] == "system")
    );
}

#[test]
fn two_nodes_on_postgresql_reload_a_certificate_added_by_the_cli() {
    let Some(node_url) = common::fresh_pg_schema("tls_e2e") else {
        return;
    };
    let db = [("DATABASE_URL", node_url.as_str())];

    let base = test_dir("tls-pg-");
    let data = base.join("data");
    common::init_json(&data, &[("DATABASE_URL", &node_url)]);
    let one = Edge::start(&data, &base.join("node1.log"), &db);
    let two = Edge::start(&data, &base.join("node2.log"), &db);

    let pki = pki();
    let shop = leaf("pg.test", &["pg.test"], &pki.inter);
    let (crt, key) = files(&base, "pg", &shop, &pki);
    let (code, v, err) = tg_json(
        &data,
        &[
            "certs",
            "add",
            crt.to_str().unwrap(),
            key.to_str().unwrap(),
            "--domain",
            "pg.test",
            "--name",
            "pg",
        ],
        &db,
    );
    assert_eq!(code, 0, "{v} {err}");
    for node in [&one, &two] {
        let took = within(Duration::from_secs(1), || {
            served_leaf(node.https, Some("pg.test")).unwrap() == shop.der()
        });
        assert!(
            took.is_some(),
            "a node did not pick up the certificate within 1 s"
        );
    }
    let (code, v, _) = tg_json(&data, &["domains"], &db);
    assert_eq!(code, 0);
    assert!(
        v["domains"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["domain"] == "pg.test" && d["certificate"] == "pg"),
        "{v}"
    );
    drop(one);
    drop(two);
    let out = bin()
        .args(["audit", "verify", "--data-dir"])
        .arg(&data)
        .env("DATABASE_URL", &node_url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

// ---- testssl.sh ----------------------------------------------------------------------

/// A certificate as a public CA issues it: 90 days, server-auth only, with
/// a CRL distribution point (testssl.sh rates a leaf without CRL or OCSP
/// URL, and one valid for years, as HIGH: properties of the certificate,
/// not of the server). The CRL URL is never fetched (no `--phone-out`).
fn ca_style_leaf(domain: &str, key: KeyPair, issuer: &Ca) -> Leaf {
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::new(vec![domain.to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, domain);
    params.not_before = now - TimeDuration::hours(1);
    params.not_after = now + TimeDuration::days(90);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
        uris: vec!["http://crl.example.invalid/scan-test.crl".to_owned()],
    }];
    params.use_authority_key_identifier_extension = true;
    let issuer = Issuer::from_params(&issuer.params, &issuer.key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    Leaf { cert, key }
}

/// The checks run: everything testssl.sh runs by default except client
/// simulation (`-c`) and the per-cipher list (`-e`), which only ever report
/// INFO (they show what clients would negotiate, and list the same suites
/// that `-s`, `-f` and `-P` rate); they took 30 of the 75 s of a default run.
const TESTSSL_CHECKS: [&str; 7] = ["-p", "-s", "-f", "-P", "-S", "-h", "-U"];

/// Runs testssl.sh against `domain` at `addr`; returns its JSON findings.
fn testssl(addr: SocketAddr, domain: &str, ca: &Path, json: &Path) -> Vec<Value> {
    let out = Command::new("testssl")
        .args(["--quiet", "--color", "0", "--warnings", "batch"])
        .args(["--nodns", "none", "--ip", "127.0.0.1"])
        .args(["--connect-timeout", "10", "--openssl-timeout", "10"])
        .arg("--add-ca")
        .arg(ca)
        .arg("--jsonfile")
        .arg(json)
        .args(TESTSSL_CHECKS)
        .arg(format!("{domain}:{}", addr.port()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = std::fs::read_to_string(json).unwrap_or_else(|e| {
        panic!(
            "testssl wrote no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    serde_json::from_str::<Vec<Value>>(&text).unwrap()
}

#[test]
fn testssl_finds_nothing_medium_or_worse() {
    if Command::new("testssl").arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").is_err(),
            "CI must install Debian's `testssl.sh` package (see .ci/run)"
        );
        eprintln!("testssl is not installed: skipping");
        return;
    }
    let (base, data) = new_data_dir("tls-testssl-");
    // A private CA (root → intermediate) the scanner is told to trust
    // (--add-ca), so the chain-of-trust check is a real one too.
    let root_ca = root("tokengate Scan Test Root");
    let inter = intermediate("tokengate Scan Test Intermediate", &root_ca);
    let ca_file = write(&base, "scan-root.pem", root_ca.cert.pem());
    let ec = ca_style_leaf("ec.scan.test", KeyPair::generate().unwrap(), &inter);
    let rsa_key = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let rsa = ca_style_leaf("rsa.scan.test", rsa_key, &inter);
    for (name, l, domain) in [
        ("scan-ec", &ec, "ec.scan.test"),
        ("scan-rsa", &rsa, "rsa.scan.test"),
    ] {
        let crt = write(
            &base,
            &format!("{name}.crt"),
            format!("{}{}", l.cert.pem(), inter.cert.pem()),
        );
        let key = write(&base, &format!("{name}.key"), l.key.serialize_pem());
        let (code, v, err) = tg_json(
            &data,
            &[
                "certs",
                "add",
                crt.to_str().unwrap(),
                key.to_str().unwrap(),
                "--domain",
                domain,
                "--name",
                name,
            ],
            &[("TOKENGATE_TRUST_ROOTS", ca_file.to_str().unwrap())],
        );
        assert_eq!(code, 0, "{v} {err}");
        assert_eq!(v["trusted"], true, "{v}");
    }
    // Clients without SNI get a CA-issued certificate too.
    let edge = Edge::start(
        &data,
        &base.join("server.log"),
        &[("TOKENGATE_TLS_DEFAULT_CERT", "scan-ec")],
    );

    // Both scans at once: each is mostly waiting on its own connections.
    let scans: Vec<_> = ["ec.scan.test", "rsa.scan.test"]
        .into_iter()
        .map(|domain| {
            let (addr, ca) = (edge.https, ca_file.clone());
            let json = base.join(format!("testssl-{domain}.json"));
            std::thread::spawn(move || (domain, testssl(addr, domain, &ca, &json)))
        })
        .collect();
    for scan in scans {
        let (domain, findings) = scan.join().unwrap();
        let by_id = |id: &str| {
            findings
                .iter()
                .find(|f| f["id"] == id)
                .unwrap_or_else(|| panic!("{domain}: no finding {id}: {findings:?}"))
        };
        // The scan reached the server and saw what it should.
        assert_eq!(by_id("TLS1_3")["finding"], "offered with final", "{domain}");
        assert_eq!(by_id("TLS1_1")["finding"], "not offered", "{domain}");
        assert_eq!(by_id("cert_chain_of_trust")["severity"], "OK", "{domain}");
        assert_eq!(by_id("cipher_order")["severity"], "OK", "{domain}");
        assert!(
            by_id("cert_commonName")["finding"]
                .as_str()
                .unwrap()
                .contains(domain),
            "{domain}"
        );
        let bad: Vec<String> = findings
            .iter()
            .filter(|f| {
                match f["severity"].as_str() {
                    Some("MEDIUM" | "HIGH" | "CRITICAL" | "FATAL") => true,
                    // A check that could not run might hide a finding, so
                    // a warning fails too; except the session-resumption
                    // probe, which races the scanner's own `openssl
                    // s_client` (it closes before the server's TLS 1.3
                    // ticket arrives, against nginx just as often; see
                    // `tls_session_resumption` for the real check).
                    Some("WARN") => !f["id"]
                        .as_str()
                        .is_some_and(|id| id.starts_with("sessionresumption_")),
                    _ => false,
                }
            })
            .map(|f| format!("{} {}: {}", f["severity"], f["id"], f["finding"]))
            .collect();
        assert!(bad.is_empty(), "{domain}: testssl.sh found {bad:#?}");
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for f in &findings {
            *counts
                .entry(f["severity"].as_str().unwrap_or("?").to_owned())
                .or_default() += 1;
        }
        eprintln!("testssl {domain}: {counts:?}");
    }
    // The scanner's probing left no panic or key material in the log.
    let log = edge.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(!log.contains("PRIVATE KEY"), "{log}");
}

// ---- ACME against Pebble ------------------------------------------------------------

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `N` distinct free ports. Every listener is held until all are chosen:
/// dropped one by one, the kernel may hand the same port out twice (it did:
/// Pebble's DNS server and its management API were once given one port,
/// and the management API could not start).
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

fn wait_for_port(port: u16) {
    let ok = within(Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(ok.is_some(), "nothing listens on port {port}");
}

/// A plain HTTP/1.1 POST (the challenge test server's management API).
fn post(port: u16, path: &str, body: &str) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

fn acme_status(data: &Path, domain: &str) -> Value {
    let v = ok(data, &["certs", "auto"]);
    v["domains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["domain"] == domain)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Pebble (real validation, nonce rejection at its default) with
/// pebble-challtestsrv as its DNS server: every name resolves to 127.0.0.1
/// except `fail.test` (127.0.0.2, where nothing listens).
struct Pebble {
    dir_port: u16,
    http_port: u16,
    tls_port: u16,
    chall_port: u16,
    api_ca: PathBuf,
    _procs: (Proc, Proc),
}

impl Pebble {
    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.dir_port)
    }
}

#[allow(clippy::print_stderr)]
fn pebble_installed() -> bool {
    if Path::new("/usr/bin/pebble").exists() {
        return true;
    }
    assert!(
        std::env::var("CI").is_err(),
        "CI must install Debian's `pebble` package (see .ci/run)"
    );
    eprintln!("pebble is not installed: skipping");
    false
}

fn start_pebble(base: &Path) -> Pebble {
    // Pebble's own HTTPS certificate, from a test root that tokengate is
    // told to trust for the ACME directory (acme_ca_root).
    let api_root = root("Pebble API Test Root");
    let api = leaf("localhost", &["localhost", "127.0.0.1"], &api_root);
    let api_crt = write(base, "pebble-api.crt", api.cert.pem());
    let api_key = write(base, "pebble-api.key", api.key.serialize_pem());
    let api_ca = write(base, "pebble-api-root.pem", api_root.cert.pem());
    let [
        dir_port,
        mgmt_port,
        http_port,
        tls_port,
        dns_port,
        chall_port,
    ] = free_ports();
    let config = serde_json::json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{dir_port}"),
        "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
        "certificate": api_crt,
        "privateKey": api_key,
        "httpPort": http_port,
        "tlsPort": tls_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
        // Short-lived certificates, so that renewal (at a third of the
        // lifetime left) happens within the test.
        "certificateValidityPeriod": 30
    }});
    let config_path = write(base, "pebble.json", config.to_string());
    let log = |name: &str| Stdio::from(std::fs::File::create(base.join(name)).unwrap());
    // DNS: every name resolves to 127.0.0.1, where tokengate's plain-HTTP
    // listener answers HTTP-01; fail.test points where nothing listens.
    let dns = Proc(
        Command::new("pebble-challtestsrv")
            .args([
                "-dns01",
                &format!("127.0.0.1:{dns_port}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
            ])
            .args([
                "-management",
                &format!("127.0.0.1:{chall_port}"),
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
            ])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .unwrap(),
    );
    wait_for_port(chall_port);
    post(
        chall_port,
        "/add-a",
        r#"{"host":"fail.test","addresses":["127.0.0.2"]}"#,
    );
    // Real validation; nonce rejection left at Pebble's default. Only the
    // random sleep before validating is turned off.
    let pebble = Proc(
        Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .unwrap(),
    );
    wait_for_port(dir_port);
    Pebble {
        dir_port,
        http_port,
        tls_port,
        chall_port,
        api_ca,
        _procs: (dns, pebble),
    }
}

#[test]
fn acme_issues_and_renews_against_pebble() {
    if !pebble_installed() {
        return;
    }
    let (base, data) = new_data_dir("tls-acme-");
    let pebble = start_pebble(&base);

    ok(&data, &["certs", "auto", "enable", "--domain", "acme.test"]);
    ok(&data, &["certs", "auto", "enable", "--domain", "fail.test"]);
    fails(
        &data,
        &["certs", "auto", "enable", "--domain", "acme.test"],
        "acme_exists",
    );
    assert_eq!(acme_status(&data, "acme.test")["status"], "pending");

    let http_listen = format!("127.0.0.1:{}", pebble.http_port);
    let directory = pebble.directory();
    let edge = Edge::start(
        &data,
        &base.join("server.log"),
        &[
            ("TOKENGATE_HTTP_LISTEN", http_listen.as_str()),
            ("TOKENGATE_ACME_DIRECTORY_URL", directory.as_str()),
            ("TOKENGATE_ACME_CA_ROOT", pebble.api_ca.to_str().unwrap()),
            ("TOKENGATE_ACME_CHECK_SECS", "1"),
            ("TOKENGATE_ACME_RETRY_SECS", "3600"),
        ],
    );
    let local = served_leaf(edge.https, Some("localhost")).unwrap();
    let mut first = Vec::new();
    let issued = within(Duration::from_secs(60), || {
        first = served_leaf(edge.https, Some("acme.test")).unwrap();
        first != local
    });
    assert!(
        issued.is_some(),
        "no ACME certificate served for acme.test:\n{}",
        edge.log()
    );
    let info = ok(&data, &["certs", "info", "--name", "acme-acme.test"]);
    assert_eq!(info["type"], "acme");
    assert!(
        info["issuer"].as_str().unwrap().contains("Pebble"),
        "{info}"
    );
    assert_eq!(info["domains"], serde_json::json!(["acme.test"]));
    let status = acme_status(&data, "acme.test");
    assert_eq!(status["status"], "valid", "{status}");
    assert_eq!(status["certificate"], "acme-acme.test");
    assert!(
        status["next_renewal"].as_str().unwrap().len() >= 20,
        "{status}"
    );

    // Renewal when a third of the (30 s) lifetime is left: a new leaf.
    let renewed = within(Duration::from_secs(60), || {
        served_leaf(edge.https, Some("acme.test")).unwrap() != first
    });
    assert!(
        renewed.is_some(),
        "the certificate was not renewed:\n{}",
        edge.log()
    );

    // The domain the CA cannot reach fails, with the reason, and backs off.
    let failed = within(Duration::from_secs(30), || {
        acme_status(&data, "fail.test")["status"] == "failed"
    });
    assert!(failed.is_some(), "{}", edge.log());
    let status = acme_status(&data, "fail.test");
    assert!(
        !status["last_error"].as_str().unwrap_or("").is_empty(),
        "{status}"
    );
    assert_eq!(status["failures"], 1);
    let table = String::from_utf8(tg(&data, &["certs", "auto"], &[]).stdout).unwrap();
    for col in ["Domain", "Status", "Next Renewal", "Last Error"] {
        assert!(table.contains(col), "{table}");
    }
    drop(edge);

    ok(
        &data,
        &["certs", "auto", "disable", "--domain", "fail.test"],
    );
    fails(
        &data,
        &["certs", "auto", "disable", "--domain", "fail.test"],
        "acme_not_found",
    );
    let events = audit_actions(&data);
    let count = |action: &str, outcome: &str| {
        events
            .iter()
            .filter(|e| e["action"] == action && e["outcome"] == outcome)
            .count()
    };
    assert!(count("acme_order", "success") >= 2, "{events:?}");
    assert!(count("acme_order", "failure") >= 1);
    assert_eq!(count("acme_enable", "success"), 2);
    assert_eq!(count("acme_disable", "success"), 1);
    assert!(
        events
            .iter()
            .any(|e| e["action"] == "cert_add" && e["actor"] == "acme")
    );
    assert!(
        events
            .iter()
            .any(|e| e["action"] == "cert_update" && e["actor"] == "acme")
    );
    let out = tg(&data, &["audit", "verify"], &[]);
    assert!(out.status.success());
}

/// Two nodes on one PostgreSQL database, both with ACME on: the node that
/// orders is not the one the CA reaches for TLS-ALPN-01 (Pebble validates
/// on node two's port; node two never orders), so the answer must travel
/// through the database; each certificate is ordered once.
#[test]
fn acme_two_nodes_order_once_and_either_answers_tls_alpn_01() {
    if !pebble_installed() {
        return;
    }
    let Some(node_url) = common::fresh_pg_schema("tls_acme2") else {
        return;
    };
    let base = test_dir("tls-acme-2nodes-");
    let data = base.join("data");
    common::init_json(&data, &[("DATABASE_URL", &node_url)]);
    let pebble = start_pebble(&base);
    let directory = pebble.directory();
    let ca_root = pebble.api_ca.to_str().unwrap().to_owned();
    let acme = |check_secs: &'static str| {
        vec![
            ("DATABASE_URL", node_url.clone()),
            ("TOKENGATE_ACME_DIRECTORY_URL", directory.clone()),
            ("TOKENGATE_ACME_CA_ROOT", ca_root.clone()),
            ("TOKENGATE_ACME_CHALLENGE", "tls-alpn-01".to_owned()),
            ("TOKENGATE_ACME_CHECK_SECS", check_secs.to_owned()),
            ("TOKENGATE_ACME_RETRY_SECS", "3600".to_owned()),
        ]
    };
    fn as_refs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
        v.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }
    // Node two: where Pebble connects; it checks for due domains only at
    // start (none yet), so it never orders.
    let two_env = acme("3600");
    let two = Edge::start_on(
        &data,
        &base.join("node2.log"),
        &format!("127.0.0.1:{}", pebble.tls_port),
        &as_refs(&two_env),
    );
    let one_env = acme("1");
    let one = Edge::start(&data, &base.join("node1.log"), &as_refs(&one_env));
    let db = [("DATABASE_URL", node_url.as_str())];
    let (code, v, err) = tg_json(
        &data,
        &["certs", "auto", "enable", "--domain", "two.test"],
        &db,
    );
    assert_eq!(code, 0, "{v} {err}");

    let local = served_leaf(two.https, Some("localhost")).unwrap();
    let issued = within(Duration::from_secs(60), || {
        served_leaf(two.https, Some("two.test")).unwrap() != local
    });
    assert!(
        issued.is_some(),
        "no ACME certificate for two.test:\nnode one:\n{}\nnode two:\n{}",
        one.log(),
        two.log()
    );
    let leaf = served_leaf(two.https, Some("two.test")).unwrap();
    let same = within(Duration::from_secs(5), || {
        served_leaf(one.https, Some("two.test")).unwrap() == leaf
    });
    assert!(
        same.is_some(),
        "node one does not serve the issued certificate"
    );
    drop(one);
    drop(two);

    let events: Vec<Value> = blocking({
        let node_url = node_url.clone();
        async move {
            let store = Store::connect(&node_url).await.unwrap();
            let recs = store.audit_events(0, 100_000).await.unwrap();
            store.close().await;
            recs.iter()
                .map(|r| serde_json::from_str(&r.event_json).unwrap())
                .collect()
        }
    });
    let orders: Vec<&Value> = events
        .iter()
        .filter(|e| e["action"] == "acme_order")
        .collect();
    assert_eq!(orders.len(), 1, "{orders:?}");
    assert_eq!(orders[0]["outcome"], "success", "{orders:?}");
    // The answer was withdrawn from the database after the order.
    let left = blocking(async move {
        let store = Store::connect(&node_url).await.unwrap();
        let left = store.acme_alpn_challenges(0).await.unwrap();
        store.close().await;
        left
    });
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn acme_tls_alpn_01_and_wildcard_dns_01_against_pebble() {
    if !pebble_installed() {
        return;
    }
    let (base, data) = new_data_dir("tls-acme-alpn-dns-");
    let pebble = start_pebble(&base);
    // The DNS-01 hook: publishes and withdraws TXT records at challtestsrv
    // (plain bash, no HTTP client needed), and notes each call.
    let calls = base.join("hook-calls.log");
    let hook = write(
        &base,
        "dns-hook.sh",
        format!(
            r#"#!/bin/bash
# dns-hook ACTION DOMAIN RECORD VALUE
set -eu
echo "$1 $2 $3" >> '{calls}'
case "$1" in
  present) path=/set-txt; body="{{\"host\":\"$3.\",\"value\":\"$4\"}}" ;;
  cleanup) path=/clear-txt; body="{{\"host\":\"$3.\"}}" ;;
  *) echo "unknown action $1" >&2; exit 2 ;;
esac
exec 3<>/dev/tcp/127.0.0.1/{port}
printf 'POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' "$path" "${{#body}}" "$body" >&3
read -r status <&3
case "$status" in *" 200 "*) ;; *) echo "challtestsrv said: $status" >&2; exit 1 ;; esac
"#,
            calls = calls.display(),
            port = pebble.chall_port
        ),
    );
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    ok(&data, &["certs", "auto", "enable", "--domain", "alpn.test"]);
    ok(
        &data,
        &["certs", "auto", "enable", "--domain", "*.wild.test"],
    );

    // tokengate's HTTPS listener on the port Pebble validates TLS-ALPN-01
    // on; no plain-HTTP listener, so HTTP-01 cannot be what succeeds.
    let listen = format!("127.0.0.1:{}", pebble.tls_port);
    let directory = pebble.directory();
    let edge = Edge::start_on(
        &data,
        &base.join("server.log"),
        &listen,
        &[
            ("TOKENGATE_ACME_DIRECTORY_URL", directory.as_str()),
            ("TOKENGATE_ACME_CA_ROOT", pebble.api_ca.to_str().unwrap()),
            ("TOKENGATE_ACME_CHALLENGE", "tls-alpn-01"),
            ("TOKENGATE_ACME_DNS_HOOK", hook.to_str().unwrap()),
            ("TOKENGATE_ACME_DNS_WAIT_SECS", "0"),
            ("TOKENGATE_ACME_CHECK_SECS", "1"),
            ("TOKENGATE_ACME_RETRY_SECS", "3600"),
        ],
    );
    assert!(edge.http.is_none());
    let local = served_leaf(edge.https, Some("localhost")).unwrap();
    for name in ["alpn.test", "shop.wild.test"] {
        let issued = within(Duration::from_secs(60), || {
            served_leaf(edge.https, Some(name)).unwrap() != local
        });
        assert!(
            issued.is_some(),
            "no ACME certificate served for {name}:\n{}",
            edge.log()
        );
    }
    let alpn = ok(&data, &["certs", "info", "--name", "acme-alpn.test"]);
    assert!(
        alpn["issuer"].as_str().unwrap().contains("Pebble"),
        "{alpn}"
    );
    assert_eq!(alpn["domains"], serde_json::json!(["alpn.test"]));
    let wild = ok(
        &data,
        &["certs", "info", "--name", "acme-wildcard.wild.test"],
    );
    assert_eq!(wild["type"], "acme");
    assert_eq!(wild["domains"], serde_json::json!(["*.wild.test"]));
    for domain in ["alpn.test", "*.wild.test"] {
        assert_eq!(acme_status(&data, domain)["status"], "valid");
    }
    // The hook published the TXT record of the wildcard's base name and
    // withdrew it afterwards.
    let log = std::fs::read_to_string(&calls).unwrap();
    assert!(
        log.contains("present wild.test _acme-challenge.wild.test"),
        "{log}"
    );
    assert!(
        log.contains("cleanup wild.test _acme-challenge.wild.test"),
        "{log}"
    );
    assert!(!log.contains("alpn.test"), "alpn.test used DNS-01: {log}");

    // With no challenge pending, a client offering only acme-tls/1 is
    // refused, whatever the name; ordinary clients never get acme-tls/1.
    let mut acme_client = (*client_config(&[&rustls::version::TLS13])).clone();
    acme_client.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    let acme_client = Arc::new(acme_client);
    for name in ["alpn.test", "localhost"] {
        assert!(
            connect_with(edge.https, Some(name), acme_client.clone()).is_err(),
            "{name}"
        );
    }
    let out = openssl(&[
        "s_client",
        "-connect",
        &listen,
        "-servername",
        "alpn.test",
        "-alpn",
        "h2,http/1.1,acme-tls/1",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ALPN protocol: h2"), "{text}");
    drop(edge);

    let events = audit_actions(&data);
    let orders = events
        .iter()
        .filter(|e| e["action"] == "acme_order" && e["outcome"] == "success")
        .count();
    assert!(orders >= 2, "{events:?}");
}
