//! `tokengate webhooks`: sign a payload as a configured source would (for
//! an application's own tests), and the dead-letter queue.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};
use tokengate_server::config::{Config, ProcessEnv};
use tokengate_store::WebhookTarget;

#[derive(Subcommand, Debug)]
pub enum WebhooksCmd {
    /// Print the headers that make FILE verify as a webhook from SOURCE.
    Sign {
        /// TOML configuration file with the `[[webhooks.sources]]`.
        #[arg(long, env = "TOKENGATE_CONFIG")]
        config: PathBuf,
        /// Source name.
        #[arg(long)]
        source: String,
        /// Event id (`webhook-id` / generic id header); default: a random `msg_…`.
        #[arg(long)]
        id: Option<String>,
        /// Unix seconds to sign with; default: now.
        #[arg(long)]
        timestamp: Option<i64>,
        /// The payload, exactly as it will be sent.
        file: PathBuf,
    },
    /// Events whose delivery failed for good.
    Dlq {
        #[command(subcommand)]
        cmd: DlqCmd,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum TargetArg {
    App,
    Nats,
}

impl From<TargetArg> for WebhookTarget {
    fn from(t: TargetArg) -> Self {
        match t {
            TargetArg::App => WebhookTarget::App,
            TargetArg::Nats => WebhookTarget::Nats,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum DlqCmd {
    /// List dead-lettered events (no payloads).
    List {
        #[arg(long, default_value = "./tokengate-data", env = "TOKENGATE_DATA_DIR")]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Queue dead-lettered events again (and re-enable a target disabled
    /// by a 410); a running server delivers them within a second.
    Replay {
        #[arg(long, default_value = "./tokengate-data", env = "TOKENGATE_DATA_DIR")]
        data_dir: PathBuf,
        /// One event by its sequence number (see `dlq list`).
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        seq: Option<u64>,
        /// Every dead-lettered event of the target.
        #[arg(long)]
        all: bool,
        #[arg(long, value_enum, default_value = "app")]
        target: TargetArg,
    },
}

async fn open(data_dir: &Path) -> anyhow::Result<std::sync::Arc<tokengate_vault::Vault>> {
    let mut cfg = Config::load(None, &ProcessEnv).unwrap_or_default();
    cfg.data_dir = data_dir.to_path_buf();
    Ok(tokengate_server::run::open_vault(&cfg).await?)
}

pub async fn run(cmd: WebhooksCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        WebhooksCmd::Sign {
            config,
            source,
            id,
            timestamp,
            file,
        } => sign(&config, &source, id, timestamp, &file),
        WebhooksCmd::Dlq { cmd } => match cmd {
            DlqCmd::List {
                data_dir,
                limit,
                json,
            } => list(&data_dir, limit, json).await,
            DlqCmd::Replay {
                data_dir,
                seq,
                all: _,
                target,
            } => {
                let vault = open(&data_dir).await?;
                let target = WebhookTarget::from(target);
                let n = vault.webhook_replay(seq, target, "cli").await?;
                vault.webhook_set_disabled(target, None).await?;
                println!("{n} event(s) queued again for {}", target.as_str());
                Ok(ExitCode::SUCCESS)
            }
        },
    }
}

fn sign(
    config: &Path,
    source: &str,
    id: Option<String>,
    timestamp: Option<i64>,
    file: &Path,
) -> anyhow::Result<ExitCode> {
    let cfg = match Config::load(Some(config), &ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}", tokengate_core::redact_pans(&e.to_string()));
            return Ok(ExitCode::from(64));
        }
    };
    let Some(src) = cfg.webhooks.sources.iter().find(|s| s.name == source) else {
        eprintln!(
            "error: no webhook source named {source:?} in {}",
            config.display()
        );
        return Ok(ExitCode::from(2));
    };
    let body =
        std::fs::read(file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let verifier = src
        .verifier()
        .map_err(|(f, m)| anyhow::anyhow!("{f}: {m}"))?;
    let id = id.unwrap_or_else(|| {
        let r: [u8; 12] = tokengate_crypto::random::bytes().unwrap_or([0; 12]);
        format!("msg_{}", data_encoding::HEXLOWER.encode(&r))
    });
    let ts = timestamp.unwrap_or_else(|| tokengate_vault::clock::now_ms() / 1000);
    let headers = verifier
        .sign_headers(&id, ts, &body)
        .map_err(|m| anyhow::anyhow!("{m}"))?;
    for (k, v) in headers {
        println!("{k}: {v}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(data_dir: &Path, limit: i64, json: bool) -> anyhow::Result<ExitCode> {
    let vault = open(data_dir).await?;
    let rows = vault.store().webhook_dead(limit.clamp(1, 10_000)).await?;
    let items: Vec<serde_json::Value> = rows
        .iter()
        .flat_map(|r| {
            [(WebhookTarget::App, &r.app), (WebhookTarget::Nats, &r.nats)]
                .into_iter()
                .filter(|(_, d)| d.state == "dead")
                .map(move |(t, d)| {
                    serde_json::json!({
                        "seq": r.seq,
                        "source": r.source,
                        "event_id": r.event_id,
                        "event_type": r.event_type,
                        "target": t.as_str(),
                        "attempts": d.attempts,
                        "last_error": d.last_error,
                        "received_at": tokengate_vault::clock::rfc3339(r.received_at),
                    })
                })
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&items)?);
    } else if items.is_empty() {
        println!("no dead-lettered webhook events");
    } else {
        println!("SEQ\tTARGET\tSOURCE\tEVENT ID\tATTEMPTS\tLAST ERROR");
        for i in &items {
            println!(
                "{}\t{}\t{}\t{}\t{}\t{}",
                i["seq"],
                i["target"].as_str().unwrap_or(""),
                i["source"].as_str().unwrap_or(""),
                i["event_id"].as_str().unwrap_or(""),
                i["attempts"],
                i["last_error"].as_str().unwrap_or("")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
