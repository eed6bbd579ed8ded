//! `tokengate keys …` (the key ring) and `tokengate api-keys …` from the
//! command line. They work on the data directory (or `DATABASE_URL`)
//! whether or not a server runs; a running server picks key changes up
//! within `key_reload_ms` (1 s).
//!
//! Errors: `error[code]: message` on stderr (with `--json`, also
//! `{"error": {"code", "message"}}` on stdout) and exit code 1.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Instant;

use clap::{Args, Subcommand};
use tokengate_audit::Ident;
use tokengate_crypto::share_keys::ShareIdentity;
use tokengate_vault::{Caller, RekeyOptions, RequestMeta, Role, parse_purpose};

use crate::certs::{Common, Failure, actor, fail, open, print_json, report};

#[derive(Args, Debug)]
pub struct KeysArgs {
    #[command(subcommand)]
    cmd: Option<KeysCmd>,
    #[command(flatten)]
    common: Common,
}

#[derive(Subcommand, Debug)]
enum KeysCmd {
    /// Add a new version of a purpose; new writes use it at once (a running server within 1 s).
    Rotate {
        /// data, fingerprint, cvc, api_key or tls_key.
        #[arg(long)]
        purpose: String,
    },
    /// Move every record to the newest key: `data` rewraps each DEK (no card data decrypted), `fingerprint` recomputes fingerprints. Online, resumable, audited.
    Rewrap {
        #[arg(long, default_value = "data")]
        purpose: String,
        /// At most this many records per second (default: unlimited).
        #[arg(long)]
        rate: Option<u32>,
        /// Records per transaction.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// While live traffic is seen, run at most this share of the time (0 < x <= 1; 1 = never yield).
        #[arg(long, default_value_t = tokengate_vault::keys::DEFAULT_BUSY_SHARE)]
        busy_share: f64,
    },
    /// Refuse decryption under versions below VERSION (records on them fail until rewrapped).
    SetMinDecryptionVersion {
        #[arg(long)]
        purpose: String,
        #[arg(long)]
        version: u32,
    },
    /// Destroy a key version (refused while records use it).
    Destroy {
        #[arg(long)]
        purpose: String,
        #[arg(long)]
        version: u32,
    },
}

/// `tokengate keys …`.
pub async fn run_keys(args: KeysArgs) -> ExitCode {
    let json = args.common.json;
    match keys(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => report(json, &f),
    }
}

fn progress_bar() -> impl Fn(u64, u64) + Send + Sync {
    let tty = std::io::stderr().is_terminal();
    let last = Mutex::new(None::<Instant>);
    move |done: u64, total: u64| {
        if !tty {
            return;
        }
        let now = Instant::now();
        if let Ok(mut l) = last.lock() {
            if l.is_some_and(|t| now.duration_since(t).as_millis() < 100) && done < total {
                return;
            }
            *l = Some(now);
        }
        let frac = if total == 0 {
            1.0
        } else {
            done as f64 / total as f64
        };
        let filled = (frac * 30.0).round() as usize;
        eprint!(
            "\r[{}{}] {:>3}% {done}/{total}",
            "#".repeat(filled.min(30)),
            " ".repeat(30 - filled.min(30)),
            (frac * 100.0).round() as u64
        );
        let _ = std::io::stderr().flush();
    }
}

async fn keys(args: KeysArgs) -> Result<(), Failure> {
    let json = args.common.json;
    let (vault, _) = open(&args.common).await?;
    let result = match args.cmd {
        None => {
            let keys = vault.list_keys().await?;
            if json {
                print_json(&serde_json::json!({ "keys": keys }))?;
            } else {
                println!(
                    "{:<14} {:>7}  {:<13} {:<26} {:>8}  {:>10}",
                    "PURPOSE", "VERSION", "STATE", "CREATED", "AGE", "RECORDS"
                );
                for k in &keys {
                    println!(
                        "{:<14} {:>7}  {:<13} {:<26} {:>7}d  {:>10}",
                        k.purpose,
                        k.version,
                        k.state,
                        k.created_at,
                        k.age_days,
                        k.records.map_or("-".to_owned(), |n| n.to_string())
                    );
                }
            }
            Ok(())
        }
        Some(KeysCmd::Rotate { purpose }) => {
            let k = vault.rotate_key(parse_purpose(&purpose)?, &actor()).await?;
            if json {
                print_json(&k)?;
            } else {
                println!(
                    "{} key version {} is now active; run `tokengate keys rewrap{}` to move existing records",
                    k.purpose,
                    k.version,
                    if k.purpose == "fingerprint" {
                        " --purpose fingerprint"
                    } else {
                        ""
                    }
                );
            }
            Ok(())
        }
        Some(KeysCmd::Rewrap {
            purpose,
            rate,
            batch,
            busy_share,
        }) => {
            let bar = progress_bar();
            let r = vault
                .rekey(
                    parse_purpose(&purpose)?,
                    RekeyOptions {
                        batch,
                        rate,
                        busy_share,
                    },
                    &actor(),
                    &bar,
                )
                .await?;
            if std::io::stderr().is_terminal() {
                eprintln!();
            }
            if json {
                print_json(&r)?;
            } else {
                let secs = (r.millis as f64 / 1000.0).max(0.001);
                println!(
                    "{}: {} records moved to version {} in {:.1} s ({:.0}/s; {:.1} s of it yielded to live traffic); {} changed meanwhile, {} failed, {} remaining",
                    r.purpose,
                    r.moved,
                    r.target_version,
                    secs,
                    r.moved as f64 / secs,
                    r.yielded_millis as f64 / 1000.0,
                    r.skipped,
                    r.failed,
                    r.remaining
                );
            }
            if r.failed > 0 {
                Err(fail(
                    "rekey_incomplete",
                    format!(
                        "{} records could not be moved (see the log for their tokens)",
                        r.failed
                    ),
                ))
            } else {
                Ok(())
            }
        }
        Some(KeysCmd::SetMinDecryptionVersion { purpose, version }) => {
            vault
                .set_min_decryption_version(parse_purpose(&purpose)?, version, &actor())
                .await?;
            if json {
                print_json(
                    &serde_json::json!({"purpose": purpose, "min_decryption_version": version}),
                )?;
            } else {
                println!("{purpose}: versions below {version} no longer decrypt");
            }
            Ok(())
        }
        Some(KeysCmd::Destroy { purpose, version }) => {
            vault
                .destroy_key(parse_purpose(&purpose)?, version, &actor())
                .await?;
            if json {
                print_json(
                    &serde_json::json!({"purpose": purpose, "version": version, "state": "destroyed"}),
                )?;
            } else {
                println!("{purpose} key version {version} destroyed");
            }
            Ok(())
        }
    };
    vault.store().close().await;
    result
}

#[derive(Args, Debug)]
pub struct ApiKeysArgs {
    #[command(subcommand)]
    cmd: Option<ApiKeysCmd>,
    #[command(flatten)]
    common: Common,
}

#[derive(Subcommand, Debug)]
enum ApiKeysCmd {
    /// Create an API key; its secret is printed once.
    Create {
        #[arg(long)]
        name: String,
        /// admin, tokenize, reveal or auditor (repeatable).
        #[arg(long = "role", value_name = "ROLE", required = true)]
        roles: Vec<String>,
    },
    /// Revoke an API key at once (a running server within its key cache TTL, 1 s).
    Revoke {
        /// The key id (`key_…`).
        id: String,
    },
}

/// `tokengate api-keys …`.
pub async fn run_api_keys(args: ApiKeysArgs) -> ExitCode {
    let json = args.common.json;
    match api_keys(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => report(json, &f),
    }
}

async fn api_keys(args: ApiKeysArgs) -> Result<(), Failure> {
    let json = args.common.json;
    let (vault, _) = open(&args.common).await?;
    let a = actor();
    // The command line acts as an administrator of the default tenant: it
    // holds the data directory and root key already. Audited as `cli`.
    let caller = Caller {
        key_id: Ident::from_static("cli"),
        tenant: vault.default_tenant().to_owned(),
        roles: vec![Role::Admin],
        meta: RequestMeta {
            user_agent: a.meta.user_agent.clone(),
            ..RequestMeta::default()
        },
    };
    let result = match args.cmd {
        None => {
            let keys = vault.list_api_keys(&caller).await?;
            if json {
                print_json(&serde_json::json!({ "api_keys": keys }))?;
            } else {
                println!(
                    "{:<22} {:<16} {:<28} {:<26} REVOKED",
                    "ID", "NAME", "ROLES", "CREATED"
                );
                for k in &keys {
                    println!(
                        "{:<22} {:<16} {:<28} {:<26} {}",
                        k.id,
                        k.name,
                        k.roles.join(","),
                        k.created_at,
                        k.revoked_at.as_deref().unwrap_or("-")
                    );
                }
            }
            Ok(())
        }
        Some(ApiKeysCmd::Create { name, roles }) => {
            let new = vault.create_api_key(&caller, &name, &roles).await?;
            if json {
                print_json(
                    &serde_json::json!({"id": new.info.id, "name": new.info.name, "roles": new.info.roles, "key": new.secret.as_str()}),
                )?;
            } else {
                println!(
                    "API key {} created (shown once, store it now):",
                    new.info.id
                );
                println!("  {}", new.secret.as_str());
            }
            Ok(())
        }
        Some(ApiKeysCmd::Revoke { id }) => {
            vault.revoke_api_key(&caller, &id).await?;
            if json {
                print_json(&serde_json::json!({"id": id, "revoked": true}))?;
            } else {
                println!("API key {id} revoked");
            }
            Ok(())
        }
    };
    vault.store().close().await;
    result
}

/// Where a running server is, for `unseal` / `seal`.
#[derive(Args, Debug)]
pub struct SysArgs {
    /// The server's HTTPS address.
    #[arg(long, default_value = "https://127.0.0.1:8443", env = "TOKENGATE_URL")]
    url: String,
    /// SHA-256 of the server's certificate (the sealed server logs it). Needed unless the URL is a loopback address.
    #[arg(long)]
    pin: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `tokengate unseal` options.
#[derive(clap::Args, Debug)]
pub struct UnsealArgs {
    #[command(flatten)]
    sys: SysArgs,
    /// The custodian's age identity file (e.g. key.txt from `age-keygen`): standard input is then the
    /// armored share block printed by `init --custodian-key`, decrypted here before it is sent.
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
}

/// Read the share: one line of standard input, or with `identity` the whole
/// armored age block, decrypted with the custodian's identity file.
fn read_share(identity: Option<&std::path::Path>) -> Result<zeroize::Zeroizing<String>, Failure> {
    use std::io::{BufRead, Read};
    let Some(path) = identity else {
        if std::io::stdin().is_terminal() {
            eprint!("Custodian share: ");
            let _ = std::io::stderr().flush();
        }
        let mut line = zeroize::Zeroizing::new(String::new());
        if std::io::stdin().lock().read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty()
        {
            return Err(fail("no_share", "no share given on standard input"));
        }
        return Ok(zeroize::Zeroizing::new(line.trim().to_owned()));
    };
    let text = std::fs::read(path)
        .map(zeroize::Zeroizing::new)
        .map_err(|e| {
            fail(
                "invalid_identity",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
    let identity = std::str::from_utf8(&text)
        .map_err(|_| {
            fail(
                "invalid_identity",
                format!("{} is not a text file", path.display()),
            )
        })
        .and_then(|t| {
            ShareIdentity::from_file_text(t)
                .map_err(|e| fail("invalid_identity", format!("{}: {e}", path.display())))
        })?;
    if std::io::stdin().is_terminal() {
        eprintln!("Paste the encrypted share block, then end input (Ctrl-D):");
    }
    let mut block = zeroize::Zeroizing::new(Vec::new());
    // An armored share is well under 1 KiB.
    if std::io::stdin()
        .lock()
        .take(64 * 1024)
        .read_to_end(&mut block)
        .is_err()
        || block.iter().all(u8::is_ascii_whitespace)
    {
        return Err(fail(
            "no_share",
            "no encrypted share given on standard input",
        ));
    }
    identity
        .decrypt_share(&block)
        .map_err(|e| fail("share_decrypt_failed", e.to_string()))
}

fn sys_failure(json: bool, code: &str, message: &str) -> ExitCode {
    let f = Failure {
        code: "request_failed",
        message: format!("{code}: {message}"),
        exit: 1,
    };
    report(json, &f)
}

fn print_seal(json: bool, r: &tokengate_server::sealed::SealReply) {
    if json {
        println!(
            "{}",
            serde_json::json!({"sealed": r.sealed, "progress": r.progress, "threshold": r.threshold})
        );
    } else if r.sealed {
        println!("sealed: {} of {} shares entered", r.progress, r.threshold);
    } else {
        println!("unsealed");
    }
}

/// `tokengate unseal`: read one share (prompted on a terminal, else one line
/// of standard input; with `--identity`, an armored age block decrypted
/// locally) and send it to the server.
pub async fn run_unseal(args: UnsealArgs) -> ExitCode {
    let UnsealArgs {
        sys: args,
        identity,
    } = args;
    let client = match tokengate_server::sealed::sys_client(&args.url, args.pin.as_deref()) {
        Ok(c) => c,
        Err(e) => return report(args.json, &fail("invalid_arguments", e)),
    };
    let share = match read_share(identity.as_deref()) {
        Ok(s) => s,
        Err(f) => return report(args.json, &f),
    };
    match tokengate_server::sealed::send_unseal(&client, &args.url, &share).await {
        Ok(r) => {
            print_seal(args.json, &r);
            ExitCode::SUCCESS
        }
        Err((code, message)) => sys_failure(args.json, &code, &message),
    }
}

/// `tokengate seal`: seal a running server (admin API key from
/// `TOKENGATE_API_KEY`, never a flag: flags show in `ps`).
pub async fn run_seal(args: SysArgs) -> ExitCode {
    let Ok(key) = std::env::var("TOKENGATE_API_KEY") else {
        return report(
            args.json,
            &fail("no_api_key", "set TOKENGATE_API_KEY to an admin API key"),
        );
    };
    let client = match tokengate_server::sealed::sys_client(&args.url, args.pin.as_deref()) {
        Ok(c) => c,
        Err(e) => return report(args.json, &fail("invalid_arguments", e)),
    };
    match tokengate_server::sealed::send_seal(&client, &args.url, &key).await {
        Ok(r) => {
            print_seal(args.json, &r);
            ExitCode::SUCCESS
        }
        Err((code, message)) => sys_failure(args.json, &code, &message),
    }
}
