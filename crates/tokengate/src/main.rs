//! The `tokengate` command. Argument parsing, output and exit codes only:
//! everything it does lives in library crates that tests reach directly.
//!
//! Exit codes: 0 success; 1 failure (including `audit verify` finding
//! tampering, `scan` finding card numbers, and every refused `certs` /
//! `domains` change, reported as `error[code]: message`); 2 usage error
//! (clap, or a `scan` error); 64 invalid configuration (including an
//! `init --custodian-key` that does not parse or does not match
//! `--custodians`).

#![forbid(unsafe_code)]
// The CLI's job is to print to the terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

mod audit_cmd;
mod hardening;

/// mimalloc instead of glibc's malloc (measured: docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use audit_cmd::AuditCmd;
mod certs;
mod keys_cmd;
mod webhooks_cmd;

use clap::{Parser, Subcommand};
use tokengate_crypto::share_keys::ShareRecipient;
use tokengate_server::config::{Config, ProcessEnv};
use tokengate_vault::{InitOptions, is_fresh};

#[derive(Parser, Debug)]
#[command(
    name = "tokengate",
    version,
    about = "Keeps card data out of your application: vault, edge and compliance toolkit."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a data directory: database, root key, audit signing key, TLS certificate, admin API key.
    #[command(group(
        clap::ArgGroup::new("pkcs11_selector")
            .args(["pkcs11_token", "pkcs11_slot"])
            .multiple(true)
    ))]
    Init {
        #[arg(long, default_value = "./tokengate-data", env = "TOKENGATE_DATA_DIR")]
        data_dir: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// Split the root key among N custodians (Shamir shares, each printed once) instead of writing root.key.
        #[arg(long, value_name = "N", requires = "threshold", value_parser = clap::value_parser!(u8).range(2..=255))]
        custodians: Option<u8>,
        /// Shares needed to rebuild the root key (with --custodians).
        #[arg(long, value_name = "K", requires = "custodians", value_parser = clap::value_parser!(u8).range(2..=255))]
        threshold: Option<u8>,
        /// A custodian's age public key (`age1…`) or a file holding one; repeat once per custodian, in order.
        /// Each share is then printed only encrypted (ASCII-armored age) to its custodian's key.
        #[arg(long = "custodian-key", value_name = "KEY", requires = "custodians")]
        custodian_keys: Vec<String>,
        /// Keep the root key in an HSM: path of its PKCS#11 module (the PIN is read from TOKENGATE_PKCS11_PIN).
        #[arg(
            long,
            value_name = "PATH",
            requires = "pkcs11_selector",
            conflicts_with = "custodians"
        )]
        pkcs11_module: Option<PathBuf>,
        /// Label of the HSM token that holds the root key (with --pkcs11-module); must be unique among the module's tokens.
        #[arg(long, value_name = "LABEL", requires = "pkcs11_module")]
        pkcs11_token: Option<String>,
        /// Slot ID of the HSM token (with --pkcs11-module), when its label is not unique; kept in pkcs11.json.
        /// With --pkcs11-token too, the token in that slot must carry that label.
        #[arg(long, value_name = "ID", requires = "pkcs11_module")]
        pkcs11_slot: Option<u64>,
        /// Label of the root key object in the token; generated inside the token when absent.
        #[arg(long, value_name = "LABEL", requires = "pkcs11_module", default_value = tokengate_crypto::pkcs11::DEFAULT_KEY_LABEL)]
        pkcs11_key_label: String,
    },
    /// Serve the HTTPS API.
    Serve {
        #[arg(long, env = "TOKENGATE_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Address to listen on (default 127.0.0.1:8443, or 0.0.0.0:$PORT).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Development mode: initialise the data directory if it is missing.
        #[arg(long)]
        dev: bool,
    },
    /// TLS certificates: list (no subcommand), add, info, update, remove.
    Certs(certs::CertsArgs),
    /// Domains and the certificate each is served with: list, add, update, remove.
    Domains(certs::DomainsArgs),
    /// Key ring: list versions (no subcommand), rotate, rewrap, set-min-decryption-version, destroy.
    Keys(keys_cmd::KeysArgs),
    /// API keys: list (no subcommand), create, revoke.
    ApiKeys(keys_cmd::ApiKeysArgs),
    /// Send one custodian share to a sealed server (prompted, or one line of standard input; with --identity, an age-encrypted share block).
    Unseal(keys_cmd::UnsealArgs),
    /// Seal a running server: its root key is dropped from memory (admin key in TOKENGATE_API_KEY).
    Seal(keys_cmd::SysArgs),
    /// Audit trail commands.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// The outbound CA that the forward proxy signs processor certificates with.
    Ca {
        #[command(subcommand)]
        cmd: CaCmd,
    },
    /// Webhooks: sign a payload as a source would; the dead-letter queue (dlq list|replay).
    Webhooks {
        #[command(subcommand)]
        cmd: webhooks_cmd::WebhooksCmd,
    },
    /// Print the OpenAPI document.
    Openapi,
    /// Find card numbers in files, folders, archives, logs and databases (exit 0 none, 1 found, 2 error).
    Scan(tokengate_scan::ScanArgs),
}

#[derive(Subcommand, Debug)]
enum CaCmd {
    /// Print the outbound CA certificate (PEM) for the app to trust; made if missing.
    Export {
        #[arg(long, default_value = "./tokengate-data", env = "TOKENGATE_DATA_DIR")]
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    // Before anything sensitive is in memory (arguments included).
    if let Err(e) = hardening::apply() {
        eprintln!("error: {e}; refusing to run");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    tokengate_server::logging::install_panic_hook();
    // The scanner runs on plain threads (and its own runtime for
    // `--database`), so it starts before ours is built.
    if let Cmd::Scan(args) = cli.cmd {
        return tokengate_scan::run_cli_exit(args);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            let msg = format!("{e:#}");
            eprintln!("error: {}", tokengate_core::redact_pans(&msg));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Init {
            data_dir,
            json,
            custodians,
            threshold,
            custodian_keys,
            pkcs11_module,
            pkcs11_token,
            pkcs11_slot,
            pkcs11_key_label,
        } => {
            tokengate_server::logging::init(Default::default());
            // Every key is checked before anything is created.
            let custodian_keys = match custodian_recipients(&custodian_keys, custodians) {
                Ok(keys) => keys,
                Err(message) => {
                    eprintln!("error[invalid_custodian_key]: {message}");
                    return Ok(ExitCode::from(64));
                }
            };
            let database_url = std::env::var("DATABASE_URL").ok();
            let out = tokengate_vault::init(&InitOptions {
                data_dir,
                database_url,
                custodians: custodians.zip(threshold),
                custodian_keys,
                pkcs11: pkcs11_module.map(|module| {
                    let cfg = tokengate_crypto::pkcs11::Pkcs11Config::new(
                        module,
                        pkcs11_token.as_deref().unwrap_or(""),
                        &pkcs11_key_label,
                    );
                    match pkcs11_slot {
                        Some(slot) => cfg.with_slot(slot),
                        None => cfg,
                    }
                }),
            })
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print_init(&out);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Serve {
            data_dir,
            listen,
            config,
            dev,
        } => serve(data_dir, listen, config, dev).await,
        Cmd::Audit { cmd } => audit_cmd::run(cmd).await,
        Cmd::Webhooks { cmd } => webhooks_cmd::run(cmd).await,
        Cmd::Certs(args) => Ok(certs::run_certs(args).await),
        Cmd::Domains(args) => Ok(certs::run_domains(args).await),
        Cmd::Keys(args) => Ok(keys_cmd::run_keys(args).await),
        Cmd::ApiKeys(args) => Ok(keys_cmd::run_api_keys(args).await),
        Cmd::Unseal(args) => Ok(keys_cmd::run_unseal(args).await),
        Cmd::Seal(args) => Ok(keys_cmd::run_seal(args).await),
        // Handled in `main` before the runtime starts.
        Cmd::Scan(_) => Ok(ExitCode::from(2)),
        Cmd::Ca {
            cmd: CaCmd::Export { data_dir },
        } => {
            let mut cfg = Config::load(None, &ProcessEnv).unwrap_or_default();
            cfg.data_dir = data_dir;
            let vault = tokengate_server::run::open_vault(&cfg).await?;
            let ca = vault
                .outbound_ca(true)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no outbound CA"))?;
            print!("{}", ca.cert_pem);
            vault.store().close().await;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Openapi => {
            println!("{}", tokengate_server::openapi::json());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Resolve each `--custodian-key` (an `age1…` key, or a file holding one)
/// and check that there is one per custodian. Messages name the flag's
/// position and never quote what a file holds.
fn custodian_recipients(
    keys: &[String],
    custodians: Option<u8>,
) -> Result<Vec<ShareRecipient>, String> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let n = usize::from(custodians.unwrap_or(0));
    if keys.len() != n {
        return Err(format!(
            "{} --custodian-key given for --custodians {n}: give exactly one public key per custodian, in order",
            keys.len()
        ));
    }
    keys.iter()
        .enumerate()
        .map(|(i, key)| {
            let which = format!("--custodian-key #{} (custodian {})", i + 1, i + 1);
            let path = std::path::Path::new(key);
            if !path.is_file() {
                return key.parse::<ShareRecipient>().map_err(|e| {
                    let e = e.to_string();
                    if e.starts_with("not an age") {
                        format!("{which}: {e}, or the path of a file holding one")
                    } else {
                        format!("{which}: {e}")
                    }
                });
            }
            // Read into memory that is wiped: a private key given by
            // mistake does not linger.
            let text = std::fs::read(path)
                .map(zeroize::Zeroizing::new)
                .map_err(|e| format!("{which}: cannot read {}: {e}", path.display()))?;
            let text = std::str::from_utf8(&text)
                .map_err(|_| format!("{which}: {} is not a text file", path.display()))?;
            ShareRecipient::from_file_text(text)
                .map_err(|e| format!("{which}: {}: {e}", path.display()))
        })
        .collect()
}

fn print_init(out: &tokengate_vault::InitOutput) {
    println!("Initialised {}", out.data_dir);
    println!("  database:         {}", out.database);
    match (&out.root_key_file, &out.pkcs11) {
        (Some(f), _) => {
            println!("  root key file:    {f} (mode 0600; back it up apart from the database)")
        }
        (None, Some(p)) => println!(
            "  root key:         AES-256 key {:?} inside HSM token {:?}{} ({}); it never leaves the HSM",
            p.key_label,
            p.token_label,
            p.slot.map(|s| format!(" in slot {s}")).unwrap_or_default(),
            p.module.display()
        ),
        (None, None) => println!(
            "  root key:         split among {} custodians, any {} of them unseal (no key file)",
            out.shares.len(),
            out.threshold.unwrap_or(0)
        ),
    }
    println!(
        "  TLS certificate:  {:?} in the certificate store (self-signed for localhost; see `tokengate certs`)",
        out.tls_certificate
    );
    println!("  audit public key: {}", out.audit_public_key);
    println!();
    println!("Admin API key (shown once, store it now):");
    println!("  {}", out.admin_api_key);
    if !out.shares.is_empty() && out.share_encryption.is_some() {
        println!();
        println!(
            "Custodian shares, each encrypted (age) to its custodian's public key and shown once; tokengate never stores them."
        );
        println!(
            "Give each block to its custodian, who saves it (e.g. as share.age) and reads it with `age -d -i key.txt share.age`"
        );
        println!(
            "(or lets `tokengate unseal --identity key.txt` decrypt it) when the server is to be unsealed."
        );
        for (i, s) in out.shares.iter().enumerate() {
            let to = out.share_recipients.get(i).map_or("", String::as_str);
            println!();
            println!("custodian {} (to {to}):", i + 1);
            print!("{}", s);
            if !s.ends_with('\n') {
                println!();
            }
        }
    } else if !out.shares.is_empty() {
        println!();
        println!(
            "Custodian shares (each shown once: give each to its custodian now; tokengate never stores them):"
        );
        for (i, s) in out.shares.iter().enumerate() {
            println!("  custodian {}: {s}", i + 1);
        }
    }
}

async fn serve(
    data_dir: Option<PathBuf>,
    listen: Option<std::net::SocketAddr>,
    config: Option<PathBuf>,
    dev: bool,
) -> anyhow::Result<ExitCode> {
    let mut cfg = match Config::load(config.as_deref(), &ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            // Messages can quote configured values: mask card numbers.
            eprintln!("error: {}", tokengate_core::redact_pans(&e.to_string()));
            return Ok(ExitCode::from(64));
        }
    };
    if let Some(d) = data_dir {
        cfg.data_dir = d;
    }
    if listen.is_some() {
        cfg.listen = listen;
    }
    tokengate_server::logging::init(cfg.log_format);
    // Before any key is generated or loaded.
    let memory = match hardening::keep_out_of_swap(cfg.lock_memory) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if tokengate_server::run::metrics_handle().is_some() {
        memory.publish();
    }
    if dev && is_fresh(&cfg.data_dir) {
        let out = tokengate_vault::init(&InitOptions {
            data_dir: cfg.data_dir.clone(),
            database_url: cfg.database_url.clone(),
            custodians: None,
            custodian_keys: Vec::new(),
            pkcs11: None,
        })
        .await?;
        print_init(&out);
    }
    let running = tokengate_server::run::start(&cfg).await?;
    if let Some(http) = running.http_addr {
        println!("tokengate redirecting http://{http} to HTTPS");
    }
    if let Some(proxy) = running.proxy_addr {
        let scheme = if cfg.proxy.as_ref().is_some_and(|p| p.tls) {
            "https"
        } else {
            "http"
        };
        println!("tokengate proxy listening on {scheme}://{proxy}");
    }
    if let Some(fwd) = running.forward_addr {
        println!("tokengate outbound proxy listening on http://{fwd}");
    }
    println!("tokengate listening on https://{}", running.addr);
    let _ = std::io::stdout().flush();
    tracing::info!(addr = %running.addr, data_dir = %cfg.data_dir.display(), "serving");
    shutdown_signal().await;
    running.stop().await;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}
