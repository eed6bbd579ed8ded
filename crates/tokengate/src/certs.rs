//! `tokengate certs …` and `tokengate domains …`: the certificate store from
//! the command line. They work on the data directory (or `DATABASE_URL`)
//! whether or not a server runs; a running server picks changes up within
//! its reload interval.
//!
//! Output: tables and details for people, `--json` for scripts. Errors:
//! `error[code]: message` on stderr (with `--json`, also
//! `{"error": {"code", "message"}}` on stdout) and exit code 1; an invalid
//! configuration exits 64. No output ever contains a private key.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};
use serde::Serialize;
use tokengate_server::config::{Config, ProcessEnv};
use tokengate_vault::{
    CertActor, CertSource, CertificateView, DomainView, NewCertificate, Vault, VaultError,
    load_trust_roots,
};
use zeroize::Zeroizing;

/// Options every `certs` / `domains` command takes.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Data directory.
    #[arg(
        long,
        global = true,
        default_value = "./tokengate-data",
        env = "TOKENGATE_DATA_DIR"
    )]
    pub(crate) data_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = false)]
pub struct CertsArgs {
    #[command(subcommand)]
    cmd: Option<CertsCmd>,
    #[command(flatten)]
    common: Common,
}

#[derive(Subcommand, Debug)]
enum CertsCmd {
    /// Add a certificate: PEM bundle (leaf, intermediates) and its private key.
    Add {
        /// PEM certificate bundle: the leaf and its intermediates, any order.
        crt: PathBuf,
        /// PEM private key of the leaf (not encrypted).
        key: PathBuf,
        /// Serve this domain with it (repeatable; wildcards like *.example.com allowed).
        #[arg(long = "domain", value_name = "DOMAIN")]
        domains: Vec<String>,
        /// Name for the certificate (default: a generated adjective-noun-number).
        #[arg(long)]
        name: Option<String>,
    },
    /// Show one certificate.
    Info {
        #[arg(long)]
        name: String,
        /// Also list the domains it serves.
        #[arg(long)]
        show_domains: bool,
    },
    /// Replace a certificate (renewal); with KEY the private key too.
    Update {
        #[arg(long)]
        name: String,
        /// PEM certificate bundle.
        crt: PathBuf,
        /// PEM private key (default: keep the stored key; it must match).
        key: Option<PathBuf>,
    },
    /// Remove a certificate; its domains lose HTTPS.
    Remove {
        #[arg(long)]
        name: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Automated certificates (ACME): status per domain (no subcommand), enable, disable.
    Auto {
        #[command(subcommand)]
        cmd: Option<AutoCmd>,
    },
}

#[derive(Subcommand, Debug)]
enum AutoCmd {
    /// Order and renew the certificate of a domain through ACME (done by a server with acme_directory_url set).
    Enable {
        #[arg(long)]
        domain: String,
    },
    /// Stop ordering and renewing; the certificate stays.
    Disable {
        #[arg(long)]
        domain: String,
    },
}

#[derive(Args, Debug)]
pub struct DomainsArgs {
    #[command(subcommand)]
    cmd: Option<DomainsCmd>,
    #[command(flatten)]
    common: Common,
}

#[derive(Subcommand, Debug)]
enum DomainsCmd {
    /// Add a domain, optionally served by a certificate.
    Add {
        domain: String,
        /// Certificate name.
        #[arg(long)]
        cert: Option<String>,
    },
    /// Serve a domain with another certificate.
    Update {
        domain: String,
        /// Certificate name.
        #[arg(long)]
        cert: String,
    },
    /// Remove a domain.
    Remove { domain: String },
}

/// A failure with a stable code, printed the same way everywhere.
pub(crate) struct Failure {
    pub(crate) code: &'static str,
    pub(crate) message: String,
    pub(crate) exit: u8,
}

impl From<VaultError> for Failure {
    fn from(e: VaultError) -> Self {
        let message = match &e {
            // Internal details go to the operator running the CLI; they
            // never contain key material (see tokengate-vault `certs`).
            VaultError::Internal(detail) => format!("internal error: {detail}"),
            other => other.to_string(),
        };
        Failure {
            code: e.code(),
            message,
            exit: 1,
        }
    }
}

pub(crate) fn fail(code: &'static str, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
        exit: 1,
    }
}

pub(crate) fn report(json: bool, f: &Failure) -> ExitCode {
    let message = tokengate_core::redact_pans(&f.message).into_owned();
    if json {
        println!(
            "{}",
            serde_json::json!({"error": {"code": f.code, "message": message}})
        );
    }
    eprintln!("error[{}]: {message}", f.code);
    ExitCode::from(f.exit)
}

pub(crate) fn print_json<T: Serialize>(value: &T) -> Result<(), Failure> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| fail("internal_error", e.to_string()))?;
    println!("{text}");
    Ok(())
}

fn config(data_dir: &Path) -> Result<Config, Failure> {
    let mut cfg = Config::load(None, &ProcessEnv).map_err(|e| Failure {
        code: "config_error",
        message: e.to_string(),
        exit: 64,
    })?;
    cfg.data_dir = data_dir.to_path_buf();
    Ok(cfg)
}

pub(crate) async fn open(common: &Common) -> Result<(Arc<Vault>, Config), Failure> {
    let cfg = config(&common.data_dir)?;
    let vault = tokengate_server::run::open_vault(&cfg).await?;
    Ok((vault, cfg))
}

fn read_file(path: &Path, what: &str) -> Result<Zeroizing<Vec<u8>>, Failure> {
    std::fs::read(path).map(Zeroizing::new).map_err(|e| {
        fail(
            "file_unreadable",
            format!("cannot read the {what} {}: {e}", path.display()),
        )
    })
}

pub(crate) fn actor() -> CertActor {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok();
    CertActor::cli(user.as_deref())
}

fn print_details(cert: &CertificateView, show_domains: bool) {
    let rows: Vec<(&str, String)> = vec![
        ("Name", cert.name.clone()),
        ("Common Name(s)", cert.common_names.join(", ")),
        ("Subject", cert.subject.clone()),
        ("Issuer", cert.issuer.clone()),
        ("Starts At", cert.starts_at.clone()),
        (
            "Expires At",
            format!("{} ({} days)", cert.expires_at, cert.days_to_expiry),
        ),
        ("SANs", cert.sans.join(", ")),
        ("Trusted", cert.trusted.to_string()),
        ("Type", cert.source.clone()),
        ("Key", cert.key_type.clone()),
        ("Chain", format!("{} certificate(s)", cert.chain_length)),
        ("SHA-256", cert.sha256_fingerprint.clone()),
    ];
    for (label, value) in rows {
        println!("{:<16}{value}", format!("{label}:"));
    }
    if show_domains {
        if cert.domains.is_empty() {
            println!("{:<16}none", "Domains:");
        } else {
            println!("Domains:");
            for d in &cert.domains {
                println!("  {d}");
            }
        }
    }
}

/// A table with a header and a rule, columns as wide as their contents.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.iter().map(|h| (*h).to_owned()).collect());
    line(widths.iter().map(|w| "─".repeat(*w)).collect());
    for row in rows {
        line(row.clone());
    }
}

fn short_date(rfc3339: &str) -> String {
    // 2026-03-01T12:00:00Z → 2026-03-01 12:00 UTC
    match (rfc3339.get(..10), rfc3339.get(11..16)) {
        (Some(d), Some(t)) => format!("{d} {t} UTC"),
        _ => rfc3339.to_owned(),
    }
}

fn confirm(name: &str) -> Result<(), Failure> {
    if !std::io::stdin().is_terminal() {
        return Err(fail(
            "confirmation_required",
            "refusing to remove a certificate without confirmation: no terminal to ask on; pass --yes",
        ));
    }
    eprint!("To proceed, type {name:?}: ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| fail("confirmation_required", e.to_string()))?;
    if answer.trim() == name {
        Ok(())
    } else {
        Err(fail(
            "cancelled",
            "the answer did not match the certificate name; nothing was removed",
        ))
    }
}

async fn certs(args: CertsArgs) -> Result<(), Failure> {
    let json = args.common.json;
    let (vault, cfg) = open(&args.common).await?;
    match args.cmd {
        None => {
            let list = vault.certificates().await?;
            if json {
                return print_json(&serde_json::json!({ "certificates": list }));
            }
            if list.is_empty() {
                println!(
                    "No certificates. Add one with `tokengate certs add CRT KEY --domain DOMAIN`."
                );
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|c| {
                    vec![
                        c.name.clone(),
                        c.common_names.join(", "),
                        short_date(&c.expires_at),
                        if c.trusted { "True" } else { "False" }.to_owned(),
                        c.source.clone(),
                        if c.domains.is_empty() {
                            "none".to_owned()
                        } else {
                            c.domains.join(", ")
                        },
                    ]
                })
                .collect();
            print_table(
                &[
                    "Name",
                    "Common Name(s)",
                    "Expires",
                    "Trusted",
                    "Type",
                    "Domains",
                ],
                &rows,
            );
        }
        Some(CertsCmd::Add {
            crt,
            key,
            domains,
            name,
        }) => {
            let bundle = read_file(&crt, "certificate bundle")?;
            let key = read_file(&key, "private key")?;
            let added = vault
                .add_certificate(
                    NewCertificate {
                        bundle_pem: &bundle,
                        key_pem: &key,
                        name: name.as_deref(),
                        domains: &domains,
                        source: CertSource::Manual,
                    },
                    &load_trust_roots(None),
                    &actor(),
                )
                .await?;
            if json {
                return print_json(&added);
            }
            println!("Added certificate {}", added.name);
            print_details(&added, true);
        }
        Some(CertsCmd::Info { name, show_domains }) => {
            let cert = vault.certificate(&name).await?;
            if json {
                return print_json(&cert);
            }
            print_details(&cert, show_domains);
        }
        Some(CertsCmd::Update { name, crt, key }) => {
            let bundle = read_file(&crt, "certificate bundle")?;
            let key = match key {
                Some(path) => Some(read_file(&path, "private key")?),
                None => None,
            };
            let updated = vault
                .update_certificate(
                    &name,
                    &bundle,
                    key.as_deref().map(Vec::as_slice),
                    &load_trust_roots(None),
                    &actor(),
                )
                .await?;
            if json {
                return print_json(&updated);
            }
            println!("Updated certificate {}", updated.name);
            print_details(&updated, true);
        }
        Some(CertsCmd::Remove { name, yes }) => {
            let cert = vault.certificate(&name).await?;
            let is_default = cfg.default_cert() == Some(name.as_str());
            if cert.domains.is_empty() {
                eprintln!("Removing certificate {name}: no domain uses it.");
            } else {
                eprintln!(
                    "Removing certificate {name}: these domains lose HTTPS: {}",
                    cert.domains.join(", ")
                );
            }
            if is_default {
                eprintln!(
                    "It is the default certificate (tls_default_cert): clients with unknown or no SNI will be refused."
                );
            }
            if !yes {
                confirm(&name)?;
            }
            let removed = vault.remove_certificate(&name, &actor()).await?;
            if json {
                return print_json(&serde_json::json!({
                    "removed": removed.name,
                    "domains_without_certificate": removed.domains_without_certificate,
                    "was_default_certificate": is_default,
                }));
            }
            println!("Removed certificate {}", removed.name);
            if !removed.domains_without_certificate.is_empty() {
                println!(
                    "These domains no longer have HTTPS: {}",
                    removed.domains_without_certificate.join(", ")
                );
            }
        }
        Some(CertsCmd::Auto { cmd }) => return auto(&vault, cmd, json).await,
    }
    Ok(())
}

async fn auto(vault: &Vault, cmd: Option<AutoCmd>, json: bool) -> Result<(), Failure> {
    match cmd {
        None => {
            let list = vault.acme_statuses().await?;
            if json {
                return print_json(&serde_json::json!({ "domains": list }));
            }
            if list.is_empty() {
                println!(
                    "No automated certificates. Enable one with `tokengate certs auto enable --domain DOMAIN`."
                );
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|a| {
                    vec![
                        a.domain.clone(),
                        a.status.clone(),
                        a.certificate.clone().unwrap_or_else(|| "none".to_owned()),
                        short_date(&a.next_renewal),
                        a.last_error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "Domain",
                    "Status",
                    "Certificate",
                    "Next Renewal",
                    "Last Error",
                ],
                &rows,
            );
        }
        Some(AutoCmd::Enable { domain }) => {
            let status = vault.acme_enable(&domain, &actor()).await?;
            if json {
                return print_json(&status);
            }
            println!(
                "ACME enabled for {}: a server with acme_directory_url set orders its certificate now; `tokengate certs auto` shows progress",
                status.domain
            );
        }
        Some(AutoCmd::Disable { domain }) => {
            vault.acme_disable(&domain, &actor()).await?;
            if json {
                return print_json(&serde_json::json!({ "disabled": domain }));
            }
            println!("ACME disabled for {domain}; its certificate stays until removed");
        }
    }
    Ok(())
}

fn domain_line(d: &DomainView) -> String {
    match &d.certificate {
        Some(c) => format!("{} → certificate {c}", d.domain),
        None => format!("{} → no certificate", d.domain),
    }
}

async fn domains(args: DomainsArgs) -> Result<(), Failure> {
    let json = args.common.json;
    let (vault, _) = open(&args.common).await?;
    match args.cmd {
        None => {
            let list = vault.domains().await?;
            if json {
                return print_json(&serde_json::json!({ "domains": list }));
            }
            if list.is_empty() {
                println!("No domains. Add one with `tokengate domains add DOMAIN --cert NAME`.");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|d| {
                    vec![
                        d.domain.clone(),
                        d.certificate.clone().unwrap_or_else(|| "none".to_owned()),
                        short_date(&d.updated_at),
                    ]
                })
                .collect();
            print_table(&["Domain", "Certificate", "Updated"], &rows);
        }
        Some(DomainsCmd::Add { domain, cert }) => {
            let added = vault.add_domain(&domain, cert.as_deref(), &actor()).await?;
            if json {
                return print_json(&added);
            }
            println!("Added {}", domain_line(&added));
        }
        Some(DomainsCmd::Update { domain, cert }) => {
            let updated = vault.update_domain(&domain, &cert, &actor()).await?;
            if json {
                return print_json(&updated);
            }
            println!("Updated {}", domain_line(&updated));
        }
        Some(DomainsCmd::Remove { domain }) => {
            let removed = vault.remove_domain(&domain, &actor()).await?;
            if json {
                return print_json(&serde_json::json!({ "removed": removed.domain }));
            }
            println!("Removed domain {}", removed.domain);
        }
    }
    Ok(())
}

/// `tokengate certs …`.
pub async fn run_certs(args: CertsArgs) -> ExitCode {
    let json = args.common.json;
    match certs(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => report(json, &f),
    }
}

/// `tokengate domains …`.
pub async fn run_domains(args: DomainsArgs) -> ExitCode {
    let json = args.common.json;
    match domains(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => report(json, &f),
    }
}
