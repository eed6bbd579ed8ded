//! Audit retention: records older than the retention period are archived
//! (gzip JSON Lines with the exact hashed JSON, ending with a signed
//! checkpoint that covers them) and then deleted, without breaking
//! verification of what remains.
//!
//! Only records that are (a) older than the cutoff, (b) covered by a signed
//! checkpoint (their Merkle-tree hashes are stored, so roots and proofs still
//! work) and (c) delivered to every drain are pruned. The store keeps where
//! the log now starts and the chain hash of the last pruned record, so
//! `audit verify` resumes the chain there and resumes the Merkle tree from
//! the stored subtree roots.

use std::io::Write;
use std::path::{Path, PathBuf};

use tokengate_audit::{Action, Ident, Outcome, SafeText};
use tokengate_store::{Job, Op};

use crate::access::{RequestMeta, event};
use crate::error::VaultError;
use crate::open::Vault;

/// What a prune did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PruneReport {
    /// Records archived and deleted by this run.
    pub pruned: u64,
    /// The log now starts after this record.
    pub upto_seq: u64,
    /// The archive written, if any.
    pub archive: Option<PathBuf>,
    /// The drain whose delivery cursor stopped pruning short of the cutoff
    /// (`tokengate audit drains`; a drain gone for good is removed with
    /// `tokengate audit drains --forget NAME`).
    pub held_back_by: Option<String>,
}

impl Vault {
    /// Archive to `archive_dir` and delete audit records older than
    /// `before_ms` (Unix ms) that a checkpoint covers and every drain has
    /// delivered.
    pub async fn prune_audit(
        &self,
        before_ms: i64,
        archive_dir: &Path,
    ) -> Result<PruneReport, VaultError> {
        let already = self.store.audit_pruned().await?.map_or(0, |(s, _)| s);
        let mut cutoff = self
            .store
            .last_audit_seq_before(before_ms)
            .await?
            .unwrap_or(0);
        if cutoff <= already {
            return Ok(PruneReport {
                pruned: 0,
                upto_seq: already,
                archive: None,
                held_back_by: None,
            });
        }
        // Covered by a checkpoint (sign one now if needed).
        let cp = self.checkpoint().await?;
        cutoff = cutoff.min(cp.size);
        let mut held_back_by = None;
        if let Some((name, seq)) = self
            .store
            .drain_cursors()
            .await?
            .into_iter()
            .min_by_key(|(_, seq)| *seq)
            && seq < cutoff
        {
            cutoff = seq;
            tracing::warn!(
                drain = %name,
                delivered_seq = seq,
                "audit pruning held back by a drain that has not delivered further; \
                 if it is gone for good: tokengate audit drains --forget <drain>"
            );
            held_back_by = Some(name);
        }
        if cutoff <= already {
            return Ok(PruneReport {
                pruned: 0,
                upto_seq: already,
                archive: None,
                held_back_by,
            });
        }
        std::fs::create_dir_all(archive_dir).map_err(|e| {
            VaultError::Setup(format!("archive dir {}: {e}", archive_dir.display()))
        })?;
        let path = archive_dir.join(format!("audit-{:012}-{cutoff:012}.jsonl.gz", already + 1));
        let io = |e: std::io::Error| VaultError::Setup(format!("archive {}: {e}", path.display()));
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io)?
        };
        let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
        let mut after = already;
        let mut last_hash = None;
        let mut count = 0u64;
        while after < cutoff {
            let page = self.store.audit_events(after, 5000).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for r in page.iter().take_while(|r| r.seq <= cutoff) {
                if r.seq != already + 1 + count {
                    return Err(VaultError::Internal(format!(
                        "audit record {} is missing; run `tokengate audit verify` before pruning",
                        already + 1 + count
                    )));
                }
                writeln!(gz, "{}", crate::auditlog::record_json(r, true)).map_err(io)?;
                last_hash = Some(r.hash);
                count += 1;
            }
        }
        let Some(last_hash) = last_hash.filter(|_| count == cutoff - already) else {
            return Err(VaultError::Internal(
                "audit records to archive are missing".into(),
            ));
        };
        writeln!(
            gz,
            "{}",
            serde_json::json!({"checkpoint": {"tree_size": cp.size, "note": cp.note}})
        )
        .map_err(io)?;
        let file = gz.finish().map_err(io)?;
        file.sync_all().map_err(io)?;
        if let Ok(dir) = std::fs::File::open(archive_dir) {
            let _ = dir.sync_all();
        }
        let mut ev = event(
            Action::AuditPrune,
            Outcome::Success,
            &Ident::from_static("system"),
            None,
            &RequestMeta::default(),
        );
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        ev.detail = Some(SafeText::new(&format!(
            "records {}..={cutoff} archived to {name}",
            already + 1
        )));
        let job = Job {
            ops: vec![Op::PruneAudit {
                upto_seq: cutoff,
                last_hash,
            }],
            events: vec![ev],
            ..Job::default()
        };
        match self.committer.submit(job).await? {
            Ok(_) => Ok(PruneReport {
                pruned: count,
                upto_seq: cutoff,
                archive: Some(path),
                held_back_by,
            }),
            Err(e) => Err(VaultError::Internal(format!("prune: {e:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::io::BufRead;

    use super::*;
    use crate::init::{InitOptions, init};
    use crate::open::VaultConfig;
    use tokengate_audit::VerifyError;

    async fn new_vault() -> (tempfile::TempDir, Vault) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        init(&InitOptions {
            data_dir: dir.clone(),
            database_url: None,
            custodians: None,
            custodian_keys: Vec::new(),
            pkcs11: None,
        })
        .await
        .unwrap();
        let vault = Vault::open(VaultConfig::new(&dir)).await.unwrap();
        (tmp, vault)
    }

    async fn add(vault: &Vault, n: usize) {
        for i in 0..n {
            vault
                .record_alert(&format!("kind=test n={i}"))
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn pruning_archives_then_deletes_and_verification_still_holds() {
        let (tmp, vault) = new_vault().await;
        add(&vault, 5).await;
        let early = vault.checkpoint().await.unwrap();
        add(&vault, 7).await;
        let archive = tmp.path().join("archive");
        let far_future = i64::MAX;
        let report = vault.prune_audit(far_future, &archive).await.unwrap();
        assert!(report.pruned >= 12, "{report:?}");
        // Nothing is left up to the cutoff (the prune's own record comes
        // after it), and verification holds, also against a checkpoint
        // inside the pruned part.
        let kept = vault.store.audit_events(0, 10).await.unwrap();
        assert_eq!(kept.first().map(|r| r.seq), Some(report.upto_seq + 1));
        assert!(kept[0].event_json.contains("audit_prune"));
        assert!(vault.verify_audit(None).await.unwrap().is_ok());
        assert!(vault.verify_audit(Some(&early)).await.unwrap().is_ok());
        // The log goes on; proofs still reach pruned records.
        add(&vault, 4).await;
        let later = vault.checkpoint().await.unwrap();
        assert!(vault.verify_audit(Some(&later)).await.unwrap().is_ok());
        let p = vault.prove_inclusion(1, None).await.unwrap();
        assert_eq!(p.tree_size, later.size);
        // Tampering with a kept record is still caught.
        vault
            .store
            .execute_raw_for_tests(&format!(
                "UPDATE audit_events SET event_json = REPLACE(event_json, 'kind=test', 'kind=tset') WHERE seq = {}",
                report.upto_seq + 2
            ))
            .await
            .unwrap();
        assert!(matches!(
            vault.verify_audit(None).await.unwrap(),
            Err(VerifyError::Edited { .. })
        ));

        // The archive holds every pruned record, byte-exact, chained from
        // genesis, and ends with a checkpoint that covers them.
        let path = report.archive.unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let lines: Vec<serde_json::Value> = std::io::BufReader::new(flate2::read::GzDecoder::new(
            std::fs::File::open(&path).unwrap(),
        ))
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
        let (records, tail) = lines.split_at(lines.len() - 1);
        assert_eq!(records.len() as u64, report.pruned);
        let mut prev = tokengate_audit::GENESIS;
        for (i, r) in records.iter().enumerate() {
            let seq = i as u64 + 1;
            assert_eq!(r["seq"].as_u64(), Some(seq));
            prev = tokengate_audit::chain_hash(
                seq,
                &prev,
                r["event_json"].as_str().unwrap().as_bytes(),
            );
            assert_eq!(
                r["hash"].as_str().unwrap(),
                data_encoding::HEXLOWER.encode(&prev)
            );
        }
        let cp = tail[0]["checkpoint"]["note"].as_str().unwrap();
        let opened = vault.open_checkpoint(cp).unwrap();
        assert!(opened.size >= report.upto_seq);
        // A second run has nothing to do.
        let again = vault.prune_audit(far_future, &archive).await.unwrap();
        assert!(
            again.pruned <= 6 && again.upto_seq >= report.upto_seq,
            "{again:?}"
        );
    }

    #[tokio::test]
    async fn only_records_delivered_to_every_drain_and_older_than_the_cutoff_go() {
        let (tmp, vault) = new_vault().await;
        add(&vault, 10).await;
        vault.set_drain_cursor("siem", 4).await.unwrap();
        let report = vault
            .prune_audit(i64::MAX, &tmp.path().join("a"))
            .await
            .unwrap();
        assert_eq!(report.upto_seq, 4, "{report:?}");
        assert_eq!(report.held_back_by.as_deref(), Some("siem"));
        assert!(vault.verify_audit(None).await.unwrap().is_ok());
        // The drain is gone for good: forgotten (audited), pruning goes on.
        assert_eq!(
            vault.forget_drain("nope").await.unwrap_err().code(),
            "drain_not_found"
        );
        assert_eq!(vault.forget_drain("siem").await.unwrap(), 4);
        assert!(vault.drain_cursors().await.unwrap().is_empty());
        let kept = vault.store.audit_events(0, 1000).await.unwrap();
        assert!(
            kept.iter()
                .any(|r| r.event_json.contains("audit_drain_forget")
                    && r.event_json.contains("siem")),
            "the forget is audited"
        );
        let report = vault
            .prune_audit(i64::MAX, &tmp.path().join("a"))
            .await
            .unwrap();
        assert!(report.upto_seq > 4, "{report:?}");
        assert_eq!(report.held_back_by, None);
        assert!(vault.verify_audit(None).await.unwrap().is_ok());
        // Nothing is older than the epoch.
        let (tmp, vault) = new_vault().await;
        add(&vault, 3).await;
        let report = vault.prune_audit(0, &tmp.path().join("a")).await.unwrap();
        assert_eq!((report.pruned, report.archive), (0, None));
    }
}
