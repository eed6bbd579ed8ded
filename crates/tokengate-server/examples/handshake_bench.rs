//! TLS handshake load generator: N concurrent connections, each a TCP
//! connect plus a TLS handshake, as many as the server completes in a fixed
//! time. Used by `bench/tls-handshakes.sh` to compare tokengate with nginx
//! (docs/BENCHMARKS.md).
//!
//! ```text
//! handshake_bench --connect 127.0.0.1:8443 --sni ec.bench.test \
//!     [--mode full|resumed] [--tls 1.3|1.2] [--concurrency 64] \
//!     [--seconds 10] [--warmup 2] [--threads 1] [--watch-pid PID]…
//! ```
//!
//! A handshake counts once the server has finished it too: for TLS 1.3 the
//! client waits for the server's first post-handshake NewSessionTicket
//! (sent only after the server has checked the client's Finished); for TLS
//! 1.2 the server's Finished comes last anyway. Then the connection is
//! dropped. No application data is sent, so the HTTP stack behind the TLS
//! layer plays no part.
//!
//! - `full`: no session resumption offered; every handshake is a full one
//!   (key exchange and a certificate signature by the server).
//! - `resumed`: each task keeps the tickets the server sends and offers
//!   one on its next connection (TLS 1.3: PSK with (EC)DHE, TLS 1.2: the
//!   session ticket). The count of handshakes the server resumed and of
//!   those it did not is printed.
//!
//! `--watch-pid` (repeatable): processes whose CPU time (user + system,
//! from `/proc`) over the measured window is reported as `server_cpu_s`,
//! beside the load generator's own `client_cpu_s`.
//!
//! The client does not verify the server's certificate or its signature:
//! it measures the server, and spends as little CPU as it can. Prints one
//! JSON line.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, HandshakeKind, NamedGroup, SignatureScheme};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::TlsConnector;

#[derive(Debug)]
struct NoVerify(Vec<SignatureScheme>);

impl ServerCertVerifier for NoVerify {
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
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.clone()
    }
}

/// One task's session store: tickets in arrival order, and a signal when
/// one arrives. In `full` mode it hands none out.
#[derive(Debug)]
struct TaskStore {
    resume: bool,
    tls13: Mutex<VecDeque<Tls13ClientSessionValue>>,
    tls12: Mutex<Option<Tls12ClientSessionValue>>,
    /// TLS 1.3 tickets received so far, and a signal for each.
    received: AtomicU64,
    arrived: Notify,
}

impl TaskStore {
    fn new(resume: bool) -> Self {
        Self {
            resume,
            tls13: Mutex::new(VecDeque::new()),
            tls12: Mutex::new(None),
            received: AtomicU64::new(0),
            arrived: Notify::new(),
        }
    }
}

impl ClientSessionStore for TaskStore {
    fn set_kx_hint(&self, _: ServerName<'static>, _: NamedGroup) {}
    fn kx_hint(&self, _: &ServerName<'_>) -> Option<NamedGroup> {
        None
    }
    fn set_tls12_session(&self, _: ServerName<'static>, value: Tls12ClientSessionValue) {
        *self.tls12.lock().unwrap() = Some(value);
    }
    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        if !self.resume {
            return None;
        }
        self.tls12.lock().unwrap().clone()
    }
    fn remove_tls12_session(&self, _: &ServerName<'static>) {
        *self.tls12.lock().unwrap() = None;
    }
    fn insert_tls13_ticket(&self, _: ServerName<'static>, value: Tls13ClientSessionValue) {
        if self.resume {
            let mut q = self.tls13.lock().unwrap();
            q.push_back(value);
            while q.len() > 4 {
                q.pop_front();
            }
        }
        self.received.fetch_add(1, Ordering::SeqCst);
        self.arrived.notify_one();
    }
    fn take_tls13_ticket(&self, _: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        if !self.resume {
            return None;
        }
        // The newest ticket: the one most certainly still valid.
        self.tls13.lock().unwrap().pop_back()
    }
}

#[derive(Debug, Clone)]
struct Args {
    connect: SocketAddr,
    sni: String,
    resume: bool,
    tls13: bool,
    concurrency: usize,
    seconds: f64,
    warmup: f64,
    threads: usize,
    watch: Vec<u32>,
}

fn args() -> Args {
    let mut a = Args {
        connect: "127.0.0.1:8443".parse().unwrap(),
        sni: "localhost".into(),
        resume: false,
        tls13: true,
        concurrency: 64,
        seconds: 10.0,
        warmup: 2.0,
        threads: 1,
        watch: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--connect" => a.connect = value.parse().expect("--connect HOST:PORT"),
            "--sni" => a.sni = value,
            "--mode" => {
                a.resume = match value.as_str() {
                    "full" => false,
                    "resumed" => true,
                    _ => panic!("--mode full|resumed"),
                }
            }
            "--tls" => {
                a.tls13 = match value.as_str() {
                    "1.3" => true,
                    "1.2" => false,
                    _ => panic!("--tls 1.3|1.2"),
                }
            }
            "--concurrency" => a.concurrency = value.parse().expect("--concurrency N"),
            "--seconds" => a.seconds = value.parse().expect("--seconds S"),
            "--warmup" => a.warmup = value.parse().expect("--warmup S"),
            "--threads" => a.threads = value.parse().expect("--threads N"),
            "--watch-pid" => a.watch.push(value.parse().expect("--watch-pid PID")),
            other => panic!("unknown option {other}"),
        }
    }
    a
}

#[derive(Debug, Default)]
struct Counters {
    full: AtomicU64,
    resumed: AtomicU64,
    errors: AtomicU64,
}

fn config(args: &Args, store: Arc<TaskStore>) -> Arc<ClientConfig> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    // One key share, the group both servers prefer: no retry round trip.
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let schemes = provider
        .signature_verification_algorithms
        .supported_schemes();
    let version = if args.tls13 {
        &rustls::version::TLS13
    } else {
        &rustls::version::TLS12
    };
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[version])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(schemes)))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::store(store);
    Arc::new(config)
}

/// One connection: connect, handshake, wait until the server finished too.
async fn one(
    args: &Args,
    connector: &TlsConnector,
    store: &TaskStore,
    name: &ServerName<'static>,
) -> Result<HandshakeKind, std::io::Error> {
    let before = store.received.load(Ordering::SeqCst);
    let tcp = TcpStream::connect(args.connect).await?;
    tcp.set_nodelay(true)?;
    let mut tls = connector.connect(name.clone(), tcp).await?;
    let kind = tls
        .get_ref()
        .1
        .handshake_kind()
        .unwrap_or(HandshakeKind::Full);
    if args.tls13 {
        // The first NewSessionTicket: the server has checked our Finished.
        // (A permit left over from an earlier connection only costs a
        // second look at the counter.)
        let mut buf = [0u8; 64];
        while store.received.load(Ordering::SeqCst) == before {
            tokio::select! {
                () = store.arrived.notified() => {}
                r = tls.read(&mut buf) => {
                    r?;
                    return Err(std::io::Error::other("connection ended before a ticket"));
                }
            }
        }
    }
    Ok(kind)
}

async fn task(args: Arc<Args>, counting: Arc<AtomicBool>, stop: Arc<AtomicBool>, c: Arc<Counters>) {
    let store = Arc::new(TaskStore::new(args.resume));
    let connector = TlsConnector::from(config(&args, store.clone()));
    let name = ServerName::try_from(args.sni.clone()).unwrap();
    while !stop.load(Ordering::Relaxed) {
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            one(&args, &connector, &store, &name),
        )
        .await;
        if !counting.load(Ordering::Relaxed) {
            continue;
        }
        match r {
            Ok(Ok(HandshakeKind::Resumed)) => c.resumed.fetch_add(1, Ordering::Relaxed),
            Ok(Ok(_)) => c.full.fetch_add(1, Ordering::Relaxed),
            Ok(Err(_)) | Err(_) => c.errors.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`
/// (in clock ticks of 1/100 s, the Linux value).
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter().map(|p| cpu_seconds(&p.to_string())).sum()
}

fn main() {
    let args = Arc::new(args());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let counting = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let tasks: Vec<_> = (0..args.concurrency)
            .map(|_| {
                tokio::spawn(task(
                    args.clone(),
                    counting.clone(),
                    stop.clone(),
                    counters.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
        let (server0, client0) = (cpu_of(&args.watch), cpu_seconds("self"));
        counting.store(true, Ordering::Relaxed);
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
        counting.store(false, Ordering::Relaxed);
        let elapsed = start.elapsed().as_secs_f64();
        let server_cpu = cpu_of(&args.watch) - server0;
        let client_cpu = cpu_seconds("self") - client0;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        let full = counters.full.load(Ordering::Relaxed);
        let resumed = counters.resumed.load(Ordering::Relaxed);
        let errors = counters.errors.load(Ordering::Relaxed);
        let total = full + resumed;
        println!(
            "{{\"connect\":\"{}\",\"sni\":\"{}\",\"mode\":\"{}\",\"tls\":\"{}\",\"concurrency\":{},\"seconds\":{:.3},\"handshakes\":{},\"full\":{},\"resumed\":{},\"errors\":{},\"per_sec\":{:.1},\"server_cpu_s\":{:.2},\"client_cpu_s\":{:.2}}}",
            args.connect,
            args.sni,
            if args.resume { "resumed" } else { "full" },
            if args.tls13 { "1.3" } else { "1.2" },
            args.concurrency,
            elapsed,
            total,
            full,
            resumed,
            errors,
            total as f64 / elapsed,
            server_cpu,
            client_cpu
        );
    });
}
