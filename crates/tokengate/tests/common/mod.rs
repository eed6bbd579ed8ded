//! Helpers for tests that drive the real `tokengate` binary.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

pub fn bin() -> Command {
    bin_via(&[])
}

/// The binary run through `wrapper` (`sh -c '…'`, `setpriv …`; the binary's
/// path is the wrapper's last argument), with the same clean environment
/// as [`bin`].
pub fn bin_via(wrapper: &[&str]) -> Command {
    const BIN: &str = env!("CARGO_BIN_EXE_tokengate");
    let mut c = match wrapper.split_first() {
        None => Command::new(BIN),
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(BIN);
            c
        }
    };
    c.env_remove("DATABASE_URL")
        .env_remove("PORT")
        .env_remove("TOKENGATE_DATA_DIR");
    c
}

/// A fresh directory; kept under `TOKENGATE_TEST_ARTIFACTS` when set.
pub fn test_dir(prefix: &str) -> PathBuf {
    match std::env::var("TOKENGATE_TEST_ARTIFACTS") {
        Ok(base) => {
            std::fs::create_dir_all(&base).unwrap();
            tempfile::Builder::new()
                .prefix(prefix)
                .tempdir_in(base)
                .unwrap()
                .keep()
        }
        Err(_) => tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .unwrap()
            .keep(),
    }
}

/// `tokengate init --json` → admin key.
pub fn init(data_dir: &Path) -> String {
    init_json(data_dir, &[])["admin_api_key"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `tokengate init --json` with `envs` (e.g. `DATABASE_URL`); must succeed.
/// Returns what it printed.
pub fn init_json(data_dir: &Path, envs: &[(&str, &str)]) -> Value {
    let out = bin()
        .args(["init", "--json", "--data-dir"])
        .arg(data_dir)
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Run `cmd` with `input` on its standard input; its output.
pub fn output_with_stdin(cmd: &mut Command, input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[derive(Debug)]
pub struct Server {
    pub child: Child,
    pub base: String,
    /// The edge proxy's base URL, when `[proxy]` is configured.
    pub proxy: Option<String>,
    /// The outbound forward proxy's URL, when `[outbound] listen` is set.
    pub forward: Option<String>,
}

impl Server {
    /// Start `tokengate serve` on a free port; stderr goes to `log`.
    pub fn start(data_dir: &Path, log: &Path, envs: &[(&str, &str)]) -> Server {
        Self::start_with(data_dir, log, envs, &[])
    }

    /// [`Server::start`] with extra `serve` arguments (e.g. `--config FILE`).
    pub fn start_with(data_dir: &Path, log: &Path, envs: &[(&str, &str)], args: &[&str]) -> Server {
        let mut cmd = bin();
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Self::spawn(cmd, log)
    }

    /// Run `cmd` (a `serve` command line, possibly wrapped) and wait until
    /// it listens; stderr goes to `log`.
    pub fn spawn(mut cmd: Command, log: &Path) -> Server {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        cmd.stdout(Stdio::piped()).stderr(Stdio::from(log_file));
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut proxy = None;
        let mut forward = None;
        let base = loop {
            let line = lines
                .next()
                .expect("server exited before listening")
                .unwrap();
            if let Some(addr) = line.strip_prefix("tokengate outbound proxy listening on ") {
                forward = Some(addr.trim().to_owned());
            }
            if let Some(addr) = line.strip_prefix("tokengate proxy listening on ") {
                proxy = Some(addr.trim().to_owned());
            }
            if let Some(addr) = line.strip_prefix("tokengate listening on ") {
                break addr.trim().to_owned();
            }
        };
        // Keep draining stdout so the server never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            base,
            proxy,
            forward,
        }
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap(); // SIGKILL on Unix
        self.child.wait().unwrap();
    }

    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..100 {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The runtime the blocking tests drive their HTTP clients on: two
/// workers, like the machines the suite runs on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .pool_max_idle_per_host(64)
        .build()
        .unwrap()
}

/// `GET {base}/metrics`: the Prometheus text.
pub async fn metrics_text(c: &reqwest::Client, base: &str) -> String {
    c.get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub async fn new_key(c: &reqwest::Client, base: &str, admin: &str, roles: &[&str]) -> String {
    let v: Value = c
        .post(format!("{base}/v1/api-keys"))
        .bearer_auth(admin)
        .json(&json!({"name": "test", "roles": roles}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["key"].as_str().unwrap().to_owned()
}

/// A Luhn-valid 16-digit Visa-range number built from `n`.
pub fn pan_from(n: u64) -> String {
    let body = format!("4{:014}", n % 100_000_000_000_000);
    let digits: Vec<u32> = body.chars().map(|c| c.to_digit(10).unwrap()).collect();
    for check in 0..10 {
        let mut all = digits.clone();
        all.push(check);
        if tokengate_core::luhn::is_valid(
            all.iter()
                .map(|d| b'0' + *d as u8)
                .collect::<Vec<_>>()
                .as_slice(),
        ) {
            return format!("{body}{check}");
        }
    }
    unreachable!()
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p)
            } else {
                out.push(p)
            }
        }
    }
    out
}

/// Panic if any file under `dir` contains any of `needles` (raw bytes).
pub fn assert_absent(dir: &Path, needles: &[String]) {
    let files = files_under(dir);
    assert!(!files.is_empty());
    let set: std::collections::HashSet<&[u8]> = needles.iter().map(|n| n.as_bytes()).collect();
    let mut lengths: Vec<usize> = needles.iter().map(String::len).collect();
    lengths.sort_unstable();
    lengths.dedup();
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        for i in 0..bytes.len() {
            if !bytes[i].is_ascii_digit() {
                continue;
            }
            for &l in &lengths {
                if let Some(w) = bytes.get(i..i + l)
                    && set.contains(w)
                {
                    panic!(
                        "card number ending {} found in {}",
                        String::from_utf8_lossy(&w[l - 4..]),
                        f.display()
                    );
                }
            }
        }
    }
}

/// A fresh, empty PostgreSQL schema named `{prefix}_{pid}` on the server
/// of `TOKENGATE_TEST_POSTGRES_URL`, and the URL that makes it the search
/// path (what `DATABASE_URL` of each node gets). `None` (skip) when the
/// variable is unset outside CI; CI must set it.
#[allow(clippy::print_stderr)]
pub fn fresh_pg_schema(prefix: &str) -> Option<String> {
    let Ok(url) = std::env::var("TOKENGATE_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var("CI").is_err(),
            "CI must set TOKENGATE_TEST_POSTGRES_URL"
        );
        eprintln!("TOKENGATE_TEST_POSTGRES_URL unset: skipping");
        return None;
    };
    let schema = format!("{prefix}_{}", std::process::id());
    let sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}");
    let admin_url = url.clone();
    std::thread::spawn(move || {
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let admin = tokengate_store::Store::connect(&admin_url).await.unwrap();
            admin.execute_raw_for_tests(&sql).await.unwrap();
            admin.close().await;
        });
    })
    .join()
    .unwrap();
    let sep = if url.contains('?') { '&' } else { '?' };
    Some(format!("{url}{sep}options=-c%20search_path%3D{schema}"))
}

/// Tokenize `pan` with `key` and reveal the token again: the card must
/// come back. Returns the token.
pub async fn tokenize_and_reveal(c: &reqwest::Client, base: &str, key: &str, pan: &str) -> String {
    let v: Value = c
        .post(format!("{base}/v1/tokens"))
        .bearer_auth(key)
        .json(&json!({"card": {"number": pan, "exp_month": 1, "exp_year": 2039}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = v["token"].as_str().unwrap().to_owned();
    let v: Value = c
        .post(format!("{base}/v1/tokens/{token}/reveal"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["card"]["number"], pan);
    token
}
