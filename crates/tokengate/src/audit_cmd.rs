//! `tokengate audit …`: verify the trail, sign and print checkpoints, prove
//! inclusion and consistency. Exit codes: 0 ok; 1 verification failed; 2 the
//! input (a checkpoint file, a record number) cannot be used.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use tokengate_server::config::{Config, ProcessEnv};
use tokengate_vault::{Vault, VaultError};

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Verify the hash chain, the signed head, every stored checkpoint and the
    /// Merkle tree (recomputed from the records); exit 1 naming the first bad record.
    Verify {
        #[arg(long, default_value = "./tokengate-data", env = "TOKENGATE_DATA_DIR")]
        data_dir: PathBuf,
        /// A checkpoint saved earlier (`audit checkpoint --out FILE`): the log
        /// must still contain exactly the records it covered.
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Sign a checkpoint covering every record so far and print it (C2SP
    /// tlog-checkpoint signed note). Keep a copy outside tokengate.
    Checkpoint {
        #[arg(long, default_value = "./tokengate-data", env = "TOKENGATE_DATA_DIR")]
        data_dir: PathBuf,
        /// Also write the note to FILE.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Search the audit log; prints one JSON record per line
    /// (`{seq, hash, event}` as JSON). The search is itself audited (actor `cli`).
    Search {
        #[arg(long, default_value = "./tokengate-data", env = "TOKENGATE_DATA_DIR")]
        data_dir: PathBuf,
        #[command(flatten)]
        filter: Filter,
        /// At most this many records (1-10000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Export every record since a time as JSON Lines with the exact hashed
    /// JSON (seq, prev_hash, hash, event_json), oldest first, so the
    /// chain and the Merkle tree can be recomputed from the file alone.
    Export {
        #[arg(long, default_value = "./tokengate-data", env = "TOKENGATE_DATA_DIR")]
        data_dir: PathBuf,
        /// RFC 3339 time or Unix milliseconds.
        #[arg(long)]
        since: String,
        /// Output format (only `jsonl`).
        #[arg(long, default_value = "jsonl", value_parser = ["jsonl"])]
        format: String,
    },
    /// Archive (gzip JSON Lines + checkpoint) and delete records older than
    /// the retention period that a checkpoint covers and every drain has
    /// delivered. The server does this hourly on its own.
    Prune {
        #[arg(long, default_value = "./tokengate-data", env = "TOKENGATE_DATA_DIR")]
        data_dir: PathBuf,
        /// Keep this many days (default: `audit_retention_days`, 400).
        #[arg(long)]
        older_than_days: Option<u64>,
        /// Where archives go (default: DATA_DIR/archive).
        #[arg(long)]
        archive_dir: Option<PathBuf>,
    },
    /// List each audit drain's delivery cursor (the lowest holds back
    /// pruning), or with `--forget NAME` remove the cursor of a drain that is
    /// gone for good (audited).
    Drains {
        #[arg(long, default_value = "./tokengate-data", env = "TOKENGATE_DATA_DIR")]
        data_dir: PathBuf,
        /// Remove this drain's cursor so that it no longer holds back pruning.
        #[arg(long, value_name = "NAME")]
        forget: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Print the keyed hash that an HMAC'd audit field (`audit_hmac_fields`)
    /// holds for VALUE, to find its records in a search or export.
    Hash {
        #[arg(long, default_value = "./tokengate-data", env = "TOKENGATE_DATA_DIR")]
        data_dir: PathBuf,
        value: String,
    },
    /// Print a Merkle proof as JSON: inclusion of record `--seq`, or
    /// consistency from tree size `--from` (RFC 9162), up to `--tree-size`
    /// (default: the latest checkpoint).
    Prove {
        #[arg(long, default_value = "./tokengate-data", env = "TOKENGATE_DATA_DIR")]
        data_dir: PathBuf,
        #[arg(long, conflicts_with = "from", required_unless_present = "from")]
        seq: Option<u64>,
        #[arg(long)]
        from: Option<u64>,
        #[arg(long)]
        tree_size: Option<u64>,
    },
}

/// Search filters shared by `audit search`.
#[derive(clap::Args, Debug)]
pub struct Filter {
    /// RFC 3339 time or Unix milliseconds (inclusive).
    #[arg(long)]
    since: Option<String>,
    /// RFC 3339 time or Unix milliseconds (exclusive).
    #[arg(long)]
    until: Option<String>,
    /// API key id, `system`, `cli` or `anonymous`.
    #[arg(long)]
    actor: Option<String>,
    /// e.g. `token_reveal`, `auth_failure`.
    #[arg(long)]
    action: Option<String>,
    #[arg(long)]
    token: Option<String>,
    #[arg(long)]
    request_id: Option<String>,
    /// `success` or `failure`.
    #[arg(long)]
    outcome: Option<String>,
    /// Only records after this sequence number (paging).
    #[arg(long, default_value_t = 0)]
    after_seq: u64,
}

impl Filter {
    fn query(&self) -> Result<tokengate_vault::AuditQuery, VaultError> {
        use tokengate_vault::auditlog::{parse_outcome, parse_time};
        Ok(tokengate_vault::AuditQuery {
            since_ms: self.since.as_deref().map(parse_time).transpose()?,
            until_ms: self.until.as_deref().map(parse_time).transpose()?,
            actor: self.actor.clone(),
            action: self.action.clone(),
            token: self.token.clone(),
            request_id: self.request_id.clone(),
            success: self.outcome.as_deref().map(parse_outcome).transpose()?,
            after_seq: self.after_seq,
        })
    }
}

async fn open(data_dir: &Path) -> anyhow::Result<std::sync::Arc<Vault>> {
    let mut cfg = Config::load(None, &ProcessEnv).unwrap_or_default();
    cfg.data_dir = data_dir.to_path_buf();
    Ok(tokengate_server::run::open_vault(&cfg).await?)
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

pub async fn run(cmd: AuditCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCmd::Verify {
            data_dir,
            checkpoint,
            json,
        } => verify(&data_dir, checkpoint.as_deref(), json).await,
        AuditCmd::Checkpoint {
            data_dir,
            out,
            json,
        } => {
            let vault = open(&data_dir).await?;
            let cp = vault.checkpoint().await?;
            if let Some(path) = out {
                std::fs::write(&path, &cp.note)
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            }
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "origin": cp.origin,
                        "tree_size": cp.size,
                        "root": data_encoding::BASE64.encode(&cp.root),
                        "note": cp.note,
                        "verifier_key": tokengate_audit::checkpoint::verifier_key(&vault.audit_public_key()?),
                    })
                );
            } else {
                print!("{}", cp.note);
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Prune {
            data_dir,
            older_than_days,
            archive_dir,
        } => {
            let days = older_than_days.unwrap_or_else(|| {
                Config::load(None, &ProcessEnv).map_or(400, |c| c.audit_retention_days)
            });
            if days == 0 {
                return Ok(usage_error("--older-than-days must be at least 1"));
            }
            let vault = open(&data_dir).await?;
            let cutoff = tokengate_vault::clock::now_ms().saturating_sub(
                i64::try_from(days)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(86_400_000),
            );
            let archive = archive_dir.unwrap_or_else(|| data_dir.join("archive"));
            let report = vault.prune_audit(cutoff, &archive).await?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Drains {
            data_dir,
            forget,
            json,
        } => {
            let vault = open(&data_dir).await?;
            if let Some(name) = forget {
                let seq = vault.forget_drain(&name).await?;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"forgotten": name, "delivered_seq": seq})
                    );
                } else {
                    println!(
                        "drain {name} forgotten (it had delivered up to record {seq}); it no longer holds back pruning"
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            let head = vault.audit_head_seq().await?;
            let drains: Vec<serde_json::Value> = vault
                .drain_cursors()
                .await?
                .into_iter()
                .map(|(name, seq)| {
                    serde_json::json!({
                        "name": name,
                        "delivered_seq": seq,
                        "behind": head.saturating_sub(seq),
                    })
                })
                .collect();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"head_seq": head, "drains": drains})
                );
            } else {
                println!("{:<24} {:>14} {:>10}", "NAME", "DELIVERED_SEQ", "BEHIND");
                for d in &drains {
                    println!(
                        "{:<24} {:>14} {:>10}",
                        d["name"].as_str().unwrap_or(""),
                        d["delivered_seq"],
                        d["behind"]
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Hash { data_dir, value } => {
            let vault = open(&data_dir).await?;
            println!("{}", vault.audit_hash(&value)?);
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Search {
            data_dir,
            filter,
            limit,
        } => {
            let q = match filter.query() {
                Ok(q) => q,
                Err(e) => return Ok(usage_error(&e.to_string())),
            };
            if !(1..=10_000).contains(&limit) {
                return Ok(usage_error("--limit must be 1-10000"));
            }
            let vault = open(&data_dir).await?;
            let mut out = std::io::stdout().lock();
            for r in vault.search_audit_local(&q, limit).await? {
                writeln!(out, "{}", tokengate_vault::auditlog::record_json(&r, false))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Export {
            data_dir,
            since,
            format: _,
        } => {
            let since = match tokengate_vault::auditlog::parse_time(&since) {
                Ok(t) => t,
                Err(e) => return Ok(usage_error(&e.to_string())),
            };
            let vault = open(&data_dir).await?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            vault
                .export_audit_local(since, |r| {
                    writeln!(out, "{}", tokengate_vault::auditlog::record_json(r, true))
                })
                .await?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Prove {
            data_dir,
            seq,
            from,
            tree_size,
        } => {
            let vault = open(&data_dir).await?;
            let out = match (seq, from) {
                (Some(seq), _) => vault
                    .prove_inclusion(seq, tree_size)
                    .await
                    .map(|p| serde_json::to_string_pretty(&p)),
                (None, Some(from)) => vault
                    .prove_consistency(from, tree_size)
                    .await
                    .map(|p| serde_json::to_string_pretty(&p)),
                (None, None) => return Ok(usage_error("give --seq N or --from N")),
            };
            match out {
                Ok(text) => {
                    println!("{}", text?);
                    Ok(ExitCode::SUCCESS)
                }
                Err(VaultError::Invalid { message, .. }) => Ok(usage_error(&message)),
                Err(e) => Err(e.into()),
            }
        }
    }
}

async fn verify(
    data_dir: &Path,
    checkpoint: Option<&Path>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let vault = open(data_dir).await?;
    let pinned = match checkpoint {
        None => None,
        Some(path) => {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => return Ok(usage_error(&format!("cannot read {}: {e}", path.display()))),
            };
            match vault.open_checkpoint(&text) {
                Ok(c) => Some(c),
                Err(e @ tokengate_audit::CheckpointError::Malformed(_)) => {
                    return Ok(usage_error(&format!("{}: {e}", path.display())));
                }
                // Well-formed but not ours: as serious as a failed check.
                Err(e) => {
                    report_failure(json, None, &format!("{}: {e}", path.display()));
                    return Ok(ExitCode::from(1));
                }
            }
        }
    };
    match vault.verify_audit(pinned.as_ref()).await? {
        Ok(report) => {
            let latest = vault.latest_checkpoint().await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "ok": true,
                        "records": report.records,
                        "last_seq": report.last_seq,
                        "head_hash": report.head_hash,
                        "latest_checkpoint": latest.as_ref().map(|c| c.size),
                        "pinned_checkpoint": pinned.as_ref().map(|c| c.size),
                    })
                );
            } else {
                println!(
                    "audit trail intact: {} records, head {} (seq {})",
                    report.records, report.head_hash, report.last_seq
                );
                if let Some(c) = latest {
                    println!(
                        "latest checkpoint: {} records, root {}",
                        c.size,
                        data_encoding::BASE64.encode(&c.root)
                    );
                }
                if let Some(c) = pinned {
                    println!(
                        "the log still holds exactly the {} records of the given checkpoint",
                        c.size
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            report_failure(json, e.seq(), &e.to_string());
            // On record (and so at every drain), best effort: the log itself
            // may be what is broken.
            let _ = vault
                .record_alert(&format!(
                    "kind=verify_failed first_bad_record={}",
                    e.seq().unwrap_or(0)
                ))
                .await;
            Ok(ExitCode::from(1))
        }
    }
}

fn report_failure(json: bool, seq: Option<u64>, message: &str) {
    if json {
        println!(
            "{}",
            serde_json::json!({"ok": false, "first_bad_record": seq, "error": message})
        );
    } else {
        println!("audit trail FAILED verification: {message}");
    }
}
