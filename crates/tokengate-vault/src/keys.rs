//! Key lifecycle: list the key ring, rotate a purpose, raise or lower the
//! minimum decryption version, destroy a version, and the re-keying jobs
//! (rewrap every record's DEK onto the newest data KEK; recompute every
//! fingerprint under the newest fingerprint key).
//!
//! Invariants:
//! - every change to the key ring writes a fresh `key_ring_generation` in
//!   the same transaction, so a running server reloads within its poll
//!   interval (1 s);
//! - re-keying moves one record with a compare-and-set on its old version
//!   ([`Op::RewrapDek`], [`Op::Refingerprint`]): a job killed at any point
//!   and run again neither loses a record nor moves one twice;
//! - a DEK rewrap never decrypts card data; a re-fingerprint decrypts the
//!   number inside the vault only, in a zeroizing buffer;
//! - a version is destroyed only when no stored row uses it (checked in the
//!   destroying statement itself).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use data_encoding::HEXLOWER;
use serde::Serialize;
use tokengate_audit::{Action, Outcome, SafeText};
use tokengate_crypto::{Envelope, KeyPurpose, KeyRing, KeyState, RecordAad};
use tokengate_store::{Job, JobError, KeyRow, KeyUsage, Op, RekeyColumn, TokenRow};

use crate::access::event;
use crate::cards::Payload;
use crate::certs::CertActor;
use crate::clock::{now_ms, rfc3339};
use crate::error::VaultError;
use crate::open::{
    KEY_GENERATION_META, Vault, load_ring_from, min_decryption_meta, min_decryption_versions,
};

/// Who changes the key ring, for the audit trail (the CLI, an admin key).
pub type KeyActor = CertActor;

/// Purposes whose versions can be rotated. The audit keys are not: past
/// audit records and signed heads are verified with the version they were
/// made with, and that verification does not look up older versions yet.
pub const ROTATABLE: [KeyPurpose; 5] = [
    KeyPurpose::Data,
    KeyPurpose::Fingerprint,
    KeyPurpose::Cvc,
    KeyPurpose::ApiKey,
    KeyPurpose::TlsKey,
];

/// One key version as `tokengate keys` lists it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct KeyVersionInfo {
    pub purpose: String,
    pub version: u32,
    /// `active`, `decrypt-only`, `retired` (below the minimum decryption
    /// version: kept only so that records can be moved off it) or
    /// `destroyed`.
    pub state: String,
    pub created_at: String,
    pub age_days: i64,
    /// Stored rows that use this version; `null` for purposes not tracked
    /// per row (the audit keys).
    pub records: Option<i64>,
    pub min_decryption_version: u32,
}

/// Settings of a re-keying job.
#[derive(Clone, Copy, Debug)]
pub struct RekeyOptions {
    /// Records per batch; each batch is one writer transaction.
    pub batch: usize,
    /// At most this many records per second (`None`: as fast as the store
    /// takes them).
    pub rate: Option<u32>,
    /// While live traffic is seen (the audit chain grew during the last
    /// batch: tokenize, reveal, … by anyone, on any node), the job runs at
    /// most this share of the wall-clock time and sleeps the rest, in
    /// batches of at most [`BUSY_BATCH`] records. `1.0` never yields. With
    /// no live traffic the job runs flat out.
    pub busy_share: f64,
}

/// Largest batch while live traffic is seen: one batch holds the single
/// writer for a few milliseconds at most.
pub const BUSY_BATCH: usize = 200;

/// Default [`RekeyOptions::busy_share`].
pub const DEFAULT_BUSY_SHARE: f64 = 0.2;

impl Default for RekeyOptions {
    fn default() -> Self {
        RekeyOptions {
            batch: 1000,
            rate: None,
            busy_share: DEFAULT_BUSY_SHARE,
        }
    }
}

impl RekeyOptions {
    /// Check values a user sent (CLI flag, admin API body).
    pub fn validate(&self) -> Result<(), VaultError> {
        if !(self.busy_share > 0.0 && self.busy_share <= 1.0) {
            return Err(VaultError::invalid(
                "invalid_busy_share",
                "busy_share must be greater than 0 and at most 1 (1 = never yield to live traffic)",
            ));
        }
        if self.batch == 0 || self.batch > 10_000 {
            return Err(VaultError::invalid(
                "invalid_batch",
                "batch must be between 1 and 10000 records",
            ));
        }
        Ok(())
    }
}

/// What a re-keying job did.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct RekeyReport {
    /// `data` (DEK rewrap) or `fingerprint` (re-fingerprint).
    pub purpose: String,
    /// The version records were moved to.
    pub target_version: u32,
    /// Records on an older version when the job started.
    pub total: u64,
    /// Records this job moved.
    pub moved: u64,
    /// Records changed meanwhile by someone else (deleted, or moved by
    /// another job): left alone.
    pub skipped: u64,
    /// Records that could not be moved (their key version is destroyed, or
    /// the record does not decrypt); logged by token.
    pub failed: u64,
    /// Records still on an older version when the job ended.
    pub remaining: u64,
    pub millis: u64,
    /// Of `millis`, the time the job slept to leave the store and the CPU
    /// to live traffic (see [`RekeyOptions::busy_share`]).
    pub yielded_millis: u64,
}

/// A re-keying job running in the background (admin API), as last seen.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RekeyJobStatus {
    pub running: bool,
    pub purpose: Option<String>,
    pub done: u64,
    pub total: u64,
    /// The finished job's report.
    pub report: Option<RekeyReport>,
    /// Why the last job stopped early (it can be started again: it resumes).
    pub error: Option<String>,
}

/// An active key version older than its purpose's cryptoperiod.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CryptoperiodExceeded {
    pub purpose: String,
    pub version: u32,
    pub age_days: i64,
    pub cryptoperiod_days: u64,
    /// The version automatic rotation created, if it did.
    pub rotated_to: Option<u32>,
}

/// Receives a re-keying job's progress: `(records done, records in total)`.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Send + Sync);

fn rekey_column(purpose: KeyPurpose) -> Result<RekeyColumn, VaultError> {
    match purpose {
        KeyPurpose::Data => Ok(RekeyColumn::Data),
        KeyPurpose::Fingerprint => Ok(RekeyColumn::Fingerprint),
        other => Err(VaultError::invalid(
            "rekey_unsupported",
            format!(
                "records can be re-keyed for `data` (rewrap) and `fingerprint`, not `{}`",
                other.as_str()
            ),
        )),
    }
}

/// Parse a purpose name given by a user.
pub fn parse_purpose(name: &str) -> Result<KeyPurpose, VaultError> {
    KeyPurpose::from_name(name).ok_or_else(|| {
        VaultError::invalid(
            "unknown_key_purpose",
            format!(
                "unknown key purpose `{}`; one of: {}",
                tokengate_core::redact_pans(name),
                KeyPurpose::ALL.map(KeyPurpose::as_str).join(", ")
            ),
        )
    })
}

fn new_generation() -> Result<Op, VaultError> {
    let bytes = tokengate_crypto::random::bytes::<16>()?;
    Ok(Op::SetMeta {
        key: KEY_GENERATION_META.to_owned(),
        value: HEXLOWER.encode(&bytes),
    })
}

fn usage_of(usage: &[KeyUsage], purpose: KeyPurpose, version: u32) -> i64 {
    usage
        .iter()
        .filter(|u| u.purpose == purpose.as_str() && u.version == version)
        .map(|u| u.records)
        .sum()
}

/// Records of `purpose` on a version other than `target`.
fn off_target(usage: &[KeyUsage], purpose: KeyPurpose, target: u32) -> u64 {
    usage
        .iter()
        .filter(|u| u.purpose == purpose.as_str() && u.version != target)
        .map(|u| u.records.max(0) as u64)
        .sum()
}

impl Vault {
    /// Start a re-keying job in the background (one at a time per process;
    /// a job in another process may run alongside: records move once).
    pub fn start_rekey(
        self: &std::sync::Arc<Self>,
        purpose: KeyPurpose,
        opts: RekeyOptions,
        actor: KeyActor,
    ) -> Result<RekeyJobStatus, VaultError> {
        rekey_column(purpose)?;
        opts.validate()?;
        let status = {
            let mut g = self
                .rekey_job
                .lock()
                .map_err(|_| VaultError::Internal("rekey status lock".into()))?;
            if g.running {
                return Err(VaultError::invalid(
                    "rekey_running",
                    "a re-keying job is already running; watch it with GET /v1/keys/rewrap",
                ));
            }
            *g = RekeyJobStatus {
                running: true,
                purpose: Some(purpose.as_str().to_owned()),
                ..RekeyJobStatus::default()
            };
            g.clone()
        };
        let vault = self.clone();
        tokio::spawn(async move {
            let job = vault.rekey_job.clone();
            let progress = move |done: u64, total: u64| {
                if let Ok(mut g) = job.lock() {
                    g.done = done;
                    g.total = total;
                }
            };
            let result = vault.rekey(purpose, opts, &actor, &progress).await;
            if let Ok(mut g) = vault.rekey_job.lock() {
                g.running = false;
                match result {
                    Ok(r) => g.report = Some(r),
                    Err(e) => {
                        tracing::error!(code = e.code(), error = %e, "re-keying job stopped");
                        g.error = Some(e.to_string());
                    }
                }
            }
        });
        Ok(status)
    }

    /// Check each active key against its cryptoperiod (`(purpose, days)`).
    /// Every exceeded one is logged as a warning and recorded as an audit
    /// alert; with `auto_rotate` it is rotated (records then need a rewrap,
    /// which the warning says).
    pub async fn check_cryptoperiods(
        &self,
        periods: &[(KeyPurpose, u64)],
        auto_rotate: bool,
    ) -> Result<Vec<CryptoperiodExceeded>, VaultError> {
        let keys = self.list_keys().await?;
        let mut out = Vec::new();
        for &(purpose, days) in periods {
            let Some(active) = keys
                .iter()
                .filter(|k| k.purpose == purpose.as_str() && k.state == KeyState::Active.as_str())
                .max_by_key(|k| k.version)
            else {
                continue;
            };
            if days == 0 || active.age_days < i64::try_from(days).unwrap_or(i64::MAX) {
                continue;
            }
            let mut found = CryptoperiodExceeded {
                purpose: purpose.as_str().to_owned(),
                version: active.version,
                age_days: active.age_days,
                cryptoperiod_days: days,
                rotated_to: None,
            };
            tracing::warn!(
                purpose = purpose.as_str(),
                version = active.version,
                age_days = active.age_days,
                cryptoperiod_days = days,
                "key past its cryptoperiod: run `tokengate keys rotate --purpose {}` then `tokengate keys rewrap`",
                purpose.as_str()
            );
            let _ = self
                .record_alert(&format!(
                    "kind=cryptoperiod_exceeded purpose={} version={} age_days={} cryptoperiod_days={days}",
                    purpose.as_str(),
                    active.version,
                    active.age_days
                ))
                .await;
            if auto_rotate && ROTATABLE.contains(&purpose) {
                match self.rotate_key(purpose, &KeyActor::system()).await {
                    Ok(k) => {
                        tracing::warn!(
                            purpose = purpose.as_str(),
                            version = k.version,
                            "key rotated automatically (cryptoperiod); records stay on older versions until `tokengate keys rewrap`"
                        );
                        found.rotated_to = Some(k.version);
                    }
                    // Another node rotated at the same moment.
                    Err(e) => {
                        tracing::warn!(code = e.code(), error = %e, "automatic rotation skipped")
                    }
                }
            }
            out.push(found);
        }
        Ok(out)
    }

    /// The background re-keying job's status.
    pub fn rekey_status(&self) -> RekeyJobStatus {
        self.rekey_job.lock().map(|g| g.clone()).unwrap_or_default()
    }

    fn key_event(
        &self,
        action: Action,
        actor: &KeyActor,
        detail: &str,
    ) -> tokengate_audit::AuditEvent {
        let mut ev = event(
            action,
            Outcome::Success,
            &actor.id,
            Some(self.default_tenant()),
            &actor.meta,
        );
        ev.detail = Some(SafeText::new(detail));
        ev
    }

    /// Commit audit records written by tokengate itself (unseal, seal);
    /// fails closed like every audit write.
    pub async fn record_system(
        &self,
        events: Vec<tokengate_audit::AuditEvent>,
    ) -> Result<(), VaultError> {
        self.record(events).await
    }

    /// Reload the key ring from the store (after a change by this or
    /// another process).
    pub async fn reload_key_ring(&self) -> Result<(), VaultError> {
        let generation = self.store.meta(KEY_GENERATION_META).await?;
        let rows = self.store.keys().await?;
        let min = min_decryption_versions(&self.store).await?;
        let ring = load_ring_from(self.root.as_ref(), &rows, &min)?;
        self.ring.set(ring);
        if let Ok(mut g) = self.key_generation.lock() {
            *g = generation;
        }
        Ok(())
    }

    /// Reload the key ring if another process changed it. Returns whether it
    /// did. The server calls this every second.
    pub async fn refresh_key_ring(&self) -> Result<bool, VaultError> {
        let now = self.store.meta(KEY_GENERATION_META).await?;
        let known = self.key_generation.lock().ok().and_then(|g| g.clone());
        if now == known {
            return Ok(false);
        }
        self.reload_key_ring().await?;
        tracing::info!("key ring changed: reloaded");
        Ok(true)
    }

    /// Every key version with its state, age and how many records use it.
    pub async fn list_keys(&self) -> Result<Vec<KeyVersionInfo>, VaultError> {
        let rows = self.store.keys().await?;
        let usage = self.store.key_usage().await?;
        let min = min_decryption_versions(&self.store).await?;
        let now = now_ms();
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let purpose = KeyPurpose::from_name(&r.purpose);
            let tracked = !tokengate_store::key_usage_columns(&r.purpose).is_empty();
            out.push(KeyVersionInfo {
                purpose: r.purpose.clone(),
                version: r.version,
                state: r.state.clone(),
                created_at: rfc3339(r.created_at.saturating_mul(1000)),
                age_days: (now / 1000 - r.created_at).max(0) / 86_400,
                records: tracked.then(|| {
                    usage
                        .iter()
                        .filter(|u| u.purpose == r.purpose && u.version == r.version)
                        .map(|u| u.records)
                        .sum()
                }),
                min_decryption_version: purpose.and_then(|p| min.get(&p).copied()).unwrap_or(0),
            });
        }
        Ok(out)
    }

    async fn commit_key_job(&self, job: Job) -> Result<Vec<tokengate_store::OpOutput>, VaultError> {
        match self.committer.submit(job).await? {
            Ok(out) => Ok(out),
            Err(JobError::Conflict) => Err(VaultError::invalid(
                "concurrent_key_change",
                "another key change was made at the same moment; run the command again",
            )),
            Err(JobError::Database(e)) => Err(VaultError::Internal(e)),
        }
    }

    /// Add a new version of `purpose` and make it the one new writes use, at
    /// once here and within a second on running servers. Older versions
    /// become `decrypt-only`.
    pub async fn rotate_key(
        &self,
        purpose: KeyPurpose,
        actor: &KeyActor,
    ) -> Result<KeyVersionInfo, VaultError> {
        if !ROTATABLE.contains(&purpose) {
            return Err(VaultError::invalid(
                "key_rotation_unsupported",
                format!(
                    "`{}` keys cannot be rotated; rotatable: {}",
                    purpose.as_str(),
                    ROTATABLE.map(KeyPurpose::as_str).join(", ")
                ),
            ));
        }
        let rows = self.store.keys().await?;
        let mine: Vec<&KeyRow> = rows
            .iter()
            .filter(|r| r.purpose == purpose.as_str())
            .collect();
        let version = mine.iter().map(|r| r.version).max().unwrap_or(0) + 1;
        let now = now_ms();
        let w = KeyRing::generate_version(self.root.as_ref(), purpose, version, now / 1000)?;
        let mut ops = vec![Op::InsertKey(KeyRow {
            purpose: purpose.as_str().to_owned(),
            version,
            state: KeyState::Active.as_str().to_owned(),
            created_at: w.created_at,
            wrapped: w.wrapped,
        })];
        for r in mine.iter().filter(|r| r.state == KeyState::Active.as_str()) {
            ops.push(Op::SetKeyState {
                purpose: purpose.as_str().to_owned(),
                version: r.version,
                state: KeyState::DecryptOnly.as_str().to_owned(),
            });
        }
        ops.push(new_generation()?);
        let mut ev = self.key_event(Action::KeyRotate, actor, &format!("version={version}"));
        ev.subject = tokengate_audit::Ident::new(purpose.as_str());
        self.commit_key_job(Job {
            ops,
            events: vec![ev],
            ..Job::default()
        })
        .await?;
        self.reload_key_ring().await?;
        tracing::info!(purpose = purpose.as_str(), version, "key rotated");
        self.list_keys()
            .await?
            .into_iter()
            .find(|k| k.purpose == purpose.as_str() && k.version == version)
            .ok_or_else(|| VaultError::Internal("rotated key not found".into()))
    }

    /// Refuse decryption under versions of `purpose` below `version`
    /// (records on them answer `key_version_retired` until rewrapped).
    /// Versions below become `retired`, the others `decrypt-only` (the
    /// active one stays active). Lowering it again is allowed while the
    /// versions are not destroyed.
    pub async fn set_min_decryption_version(
        &self,
        purpose: KeyPurpose,
        version: u32,
        actor: &KeyActor,
    ) -> Result<(), VaultError> {
        if matches!(purpose, KeyPurpose::Audit | KeyPurpose::AuditSigning) {
            return Err(VaultError::invalid(
                "key_purpose_unsupported",
                "audit keys verify past records and have no minimum decryption version",
            ));
        }
        let active = self.ring().active_version(purpose)?;
        if version == 0 || version > active {
            return Err(VaultError::invalid(
                "invalid_key_version",
                format!(
                    "the minimum decryption version of `{}` must be between 1 and the active version {active}",
                    purpose.as_str()
                ),
            ));
        }
        let rows = self.store.keys().await?;
        let mut ops = vec![Op::SetMeta {
            key: min_decryption_meta(purpose),
            value: version.to_string(),
        }];
        for r in rows.iter().filter(|r| r.purpose == purpose.as_str()) {
            let state = if r.version == active {
                KeyState::Active
            } else if r.version < version {
                KeyState::Retired
            } else {
                KeyState::DecryptOnly
            };
            if r.state != state.as_str() && r.state != KeyState::Destroyed.as_str() {
                ops.push(Op::SetKeyState {
                    purpose: purpose.as_str().to_owned(),
                    version: r.version,
                    state: state.as_str().to_owned(),
                });
            }
        }
        ops.push(new_generation()?);
        let mut ev = self.key_event(
            Action::KeyMinDecryption,
            actor,
            &format!("min_decryption_version={version}"),
        );
        ev.subject = tokengate_audit::Ident::new(purpose.as_str());
        self.commit_key_job(Job {
            ops,
            events: vec![ev],
            ..Job::default()
        })
        .await?;
        self.reload_key_ring().await
    }

    /// Destroy a version of `purpose`: its wrapped key is erased and
    /// whatever it protected can never be decrypted again. Refused for the
    /// active version, for audit keys, and while any stored row uses it.
    pub async fn destroy_key(
        &self,
        purpose: KeyPurpose,
        version: u32,
        actor: &KeyActor,
    ) -> Result<(), VaultError> {
        if matches!(purpose, KeyPurpose::Audit | KeyPurpose::AuditSigning) {
            return Err(VaultError::invalid(
                "key_purpose_unsupported",
                "audit keys verify past records and are never destroyed",
            ));
        }
        let rows = self.store.keys().await?;
        let Some(row) = rows
            .iter()
            .find(|r| r.purpose == purpose.as_str() && r.version == version)
        else {
            return Err(VaultError::NotFound {
                code: "key_version_not_found",
                message: format!("`{}` has no version {version}", purpose.as_str()),
            });
        };
        if row.state == KeyState::Active.as_str() {
            return Err(VaultError::invalid(
                "key_version_active",
                format!(
                    "version {version} is the active `{}` key; rotate first",
                    purpose.as_str()
                ),
            ));
        }
        if row.state == KeyState::Destroyed.as_str() {
            return Ok(());
        }
        let mut ev = self.key_event(Action::KeyDestroy, actor, &format!("version={version}"));
        ev.subject = tokengate_audit::Ident::new(purpose.as_str());
        let out = self
            .commit_key_job(Job {
                ops: vec![
                    Op::DestroyKey {
                        purpose: purpose.as_str().to_owned(),
                        version,
                    },
                    new_generation()?,
                ],
                events: vec![],
                events_if_affected: vec![(0, ev)],
            })
            .await?;
        if out.first().map(|o| o.affected()) != Some(1) {
            let usage = self.store.key_usage().await?;
            let n = usage_of(&usage, purpose, version);
            let how = match purpose {
                KeyPurpose::Data => "run `tokengate keys rewrap` first",
                KeyPurpose::Fingerprint => {
                    "run `tokengate keys rewrap --purpose fingerprint` first"
                }
                _ => "wait until they are replaced or expire",
            };
            return Err(VaultError::invalid(
                "key_in_use",
                format!(
                    "{n} stored records still use `{}` version {version}; {how}",
                    purpose.as_str()
                ),
            ));
        }
        self.reload_key_ring().await
    }

    /// Move every record of `purpose` (`data`: rewrap the DEK; `fingerprint`:
    /// recompute the fingerprint) onto the newest version, in batches of one
    /// writer transaction each, while the vault keeps serving. Safe to run
    /// again after a crash, and next to another run: each record moves with
    /// a compare-and-set on its old version.
    pub async fn rekey(
        &self,
        purpose: KeyPurpose,
        opts: RekeyOptions,
        actor: &KeyActor,
        progress: Progress<'_>,
    ) -> Result<RekeyReport, VaultError> {
        let column = rekey_column(purpose)?;
        opts.validate()?;
        // Start from the newest ring in the store (another process may
        // have rotated).
        self.reload_key_ring().await?;
        let ring = self.ring();
        let target = ring.active_version(purpose)?;
        let started = Instant::now();
        let usage = self.store.key_usage().await?;
        let mut report = RekeyReport {
            purpose: purpose.as_str().to_owned(),
            target_version: target,
            total: off_target(&usage, purpose, target),
            ..RekeyReport::default()
        };
        let mut ev = self.key_event(
            Action::KeyRewrap,
            actor,
            &format!(
                "phase=start purpose={} target_version={target} records={}",
                purpose.as_str(),
                report.total
            ),
        );
        ev.subject = tokengate_audit::Ident::new(purpose.as_str());
        self.record(vec![ev]).await?;
        progress(0, report.total);

        let batch = opts.batch;
        let mut pacer = Pacer::new(opts.busy_share, self.audit_head_seq().await?);
        let mut done = 0u64;
        // A server that had not yet noticed the rotation may have written a
        // few records under the old version behind our cursor: go round
        // again until a pass finds nothing left to move.
        for _pass in 0..10 {
            let usage = self.store.key_usage().await?;
            let mut versions: Vec<u32> = usage
                .iter()
                .filter(|u| u.purpose == purpose.as_str() && u.version != target && u.records > 0)
                .map(|u| u.version)
                .collect();
            versions.sort_unstable();
            let moved_before = report.moved;
            for v in versions {
                // The next batch is read while the current one commits.
                let mut next = self.rekey_fetch(column, v, None, batch).await?;
                loop {
                    let current = next;
                    let Some(cursor) = current.last_key() else {
                        break;
                    };
                    let step = Instant::now();
                    let ops = self.rekey_ops(&ring, purpose, target, &current, &mut report);
                    let n = current.len() as u64;
                    let after = Some((cursor.0.as_str(), cursor.1.as_str()));
                    let (committed, fetched) = tokio::join!(
                        self.commit_rekey_batch(ops, &mut report),
                        self.rekey_fetch(column, v, after, pacer.batch(batch))
                    );
                    committed?;
                    next = fetched?;
                    done += n;
                    progress(done, report.total.max(done));
                    // Yield to live traffic: the job's own audit records are
                    // written only at start and finish, so a growing chain
                    // means someone else is using the vault.
                    if let Some(pause) =
                        pacer.after_batch(self.audit_head_seq().await?, step.elapsed())
                    {
                        tokio::time::sleep(pause).await;
                        report.yielded_millis += pause.as_millis() as u64;
                    }
                    if let Some(rate) = opts.rate.filter(|r| *r > 0) {
                        let due = Duration::from_secs_f64(done as f64 / f64::from(rate));
                        let elapsed = started.elapsed();
                        if due > elapsed {
                            tokio::time::sleep(due - elapsed).await;
                        }
                    }
                }
            }
            if report.moved == moved_before {
                break;
            }
        }
        let usage = self.store.key_usage().await?;
        report.remaining = off_target(&usage, purpose, target);
        report.millis = started.elapsed().as_millis() as u64;
        let mut ev = self.key_event(
            Action::KeyRewrap,
            actor,
            &format!(
                "phase=finish purpose={} target_version={target} moved={} skipped={} failed={} remaining={}",
                purpose.as_str(),
                report.moved,
                report.skipped,
                report.failed,
                report.remaining
            ),
        );
        ev.subject = tokengate_audit::Ident::new(purpose.as_str());
        if report.failed > 0 {
            ev.outcome = Outcome::failure("records_failed");
        }
        self.record(vec![ev]).await?;
        Ok(report)
    }

    async fn rekey_fetch(
        &self,
        column: RekeyColumn,
        version: u32,
        after: Option<(&str, &str)>,
        batch: usize,
    ) -> Result<RekeyBatch, VaultError> {
        Ok(match column {
            RekeyColumn::Data => RekeyBatch::Deks(
                self.store
                    .deks_on_version(version, after, batch as i64)
                    .await?,
            ),
            RekeyColumn::Fingerprint => RekeyBatch::Rows(
                self.store
                    .tokens_on_version(column, version, after, batch as i64)
                    .await?,
            ),
        })
    }

    /// The compare-and-set ops moving a batch to `target`. Records that
    /// cannot be moved are counted as failed and logged by token.
    fn rekey_ops(
        &self,
        ring: &KeyRing,
        purpose: KeyPurpose,
        target: u32,
        batch: &RekeyBatch,
        report: &mut RekeyReport,
    ) -> Vec<Op> {
        let mut ops = Vec::with_capacity(batch.len());
        let mut fail = |token: &str, e: tokengate_crypto::CryptoError| {
            report.failed += 1;
            tracing::error!(token = %token, error = %e, "record could not be re-keyed");
        };
        match (purpose, batch) {
            (KeyPurpose::Data, RekeyBatch::Deks(rows)) => {
                for row in rows {
                    let aad = RecordAad {
                        tenant: &row.tenant,
                        token: &row.token,
                    };
                    let env = Envelope {
                        kek_version: row.kek_version,
                        wrapped_dek: row.wrapped_dek.clone(),
                        ciphertext: Vec::new(),
                    };
                    // The ring snapshot's active version is the target.
                    match env.rewrap(ring, aad) {
                        Ok(moved) => ops.push(Op::RewrapDek {
                            tenant: row.tenant.clone(),
                            token: row.token.clone(),
                            from_version: row.kek_version,
                            to_version: moved.kek_version,
                            wrapped_dek: moved.wrapped_dek,
                        }),
                        Err(e) => fail(&row.token, e),
                    }
                }
            }
            (_, RekeyBatch::Rows(rows)) => {
                for row in rows {
                    match refingerprint(ring, row, target) {
                        Ok(op) => ops.push(op),
                        Err(e) => fail(&row.token, e),
                    }
                }
            }
            (_, RekeyBatch::Deks(rows)) => {
                for row in rows {
                    fail(&row.token, tokengate_crypto::CryptoError::Malformed);
                }
            }
        }
        ops
    }

    async fn commit_rekey_batch(
        &self,
        ops: Vec<Op>,
        report: &mut RekeyReport,
    ) -> Result<(), VaultError> {
        if ops.is_empty() {
            return Ok(());
        }
        let n = ops.len() as u64;
        match self
            .committer
            .submit(Job {
                ops: ops.clone(),
                ..Job::default()
            })
            .await?
        {
            Ok(out) => {
                let moved: u64 = out.iter().map(|o| o.affected()).sum();
                report.moved += moved;
                report.skipped += n - moved;
                Ok(())
            }
            // A re-fingerprint can meet the deterministic-token uniqueness
            // rule; redo the batch one record at a time so that only the
            // conflicting record is left out.
            Err(JobError::Conflict) => {
                for op in ops {
                    match self
                        .committer
                        .submit(Job {
                            ops: vec![op],
                            ..Job::default()
                        })
                        .await?
                    {
                        Ok(out) => {
                            let moved: u64 = out.iter().map(|o| o.affected()).sum();
                            report.moved += moved;
                            report.skipped += 1 - moved.min(1);
                        }
                        Err(JobError::Conflict) => {
                            report.failed += 1;
                            tracing::error!(
                                "a re-fingerprinted record conflicts with a deterministic token"
                            );
                        }
                        Err(JobError::Database(e)) => return Err(VaultError::Internal(e)),
                    }
                }
                Ok(())
            }
            Err(JobError::Database(e)) => Err(VaultError::Internal(e)),
        }
    }
}

/// Paces a re-keying job around live traffic: flat out while the audit
/// chain stands still, at most `share` of the wall-clock time (in small
/// batches) while it grows.
struct Pacer {
    share: f64,
    last_seq: u64,
    busy: bool,
}

impl Pacer {
    fn new(share: f64, seq: u64) -> Pacer {
        Pacer {
            share,
            last_seq: seq,
            busy: false,
        }
    }

    /// Size of the next batch to read.
    fn batch(&self, configured: usize) -> usize {
        if self.busy {
            configured.min(BUSY_BATCH)
        } else {
            configured
        }
    }

    /// After a batch that took `worked`, with the chain now at `seq`: how
    /// long to sleep before the next one.
    fn after_batch(&mut self, seq: u64, worked: Duration) -> Option<Duration> {
        self.busy = seq != self.last_seq;
        self.last_seq = seq;
        if !self.busy || self.share >= 1.0 {
            return None;
        }
        Some(worked.mul_f64((1.0 - self.share) / self.share))
    }
}

/// One batch of a re-keying job: a DEK rewrap reads only what it needs.
enum RekeyBatch {
    Deks(Vec<tokengate_store::DekRow>),
    Rows(Vec<TokenRow>),
}

impl RekeyBatch {
    fn len(&self) -> usize {
        match self {
            RekeyBatch::Deks(r) => r.len(),
            RekeyBatch::Rows(r) => r.len(),
        }
    }

    /// `(tenant, token)` of the last record: where the next batch starts.
    fn last_key(&self) -> Option<(String, String)> {
        match self {
            RekeyBatch::Deks(r) => r.last().map(|d| (d.tenant.clone(), d.token.clone())),
            RekeyBatch::Rows(r) => r.last().map(|t| (t.tenant.clone(), t.token.clone())),
        }
    }
}

/// The fingerprint of `row`'s card under fingerprint key `target`. The
/// number is decrypted inside the vault into a zeroizing buffer.
fn refingerprint(
    ring: &KeyRing,
    row: &TokenRow,
    target: u32,
) -> Result<Op, tokengate_crypto::CryptoError> {
    let aad = RecordAad {
        tenant: &row.tenant,
        token: &row.token,
    };
    let env = Envelope {
        kek_version: row.kek_version,
        wrapped_dek: row.wrapped_dek.clone(),
        ciphertext: row.ciphertext.clone(),
    };
    let plain = env.open_for_rekey(ring, aad)?;
    let payload: Payload = serde_json::from_slice(plain.expose())
        .map_err(|_| tokengate_crypto::CryptoError::Malformed)?;
    // `Payload` zeroizes its fields when dropped.
    let fp = ring.fingerprint(target, &row.tenant, &payload.number)?;
    Ok(Op::Refingerprint {
        tenant: row.tenant.clone(),
        token: row.token.clone(),
        from_version: row.fp_version,
        to_version: target,
        fingerprint: fp.to_vec(),
    })
}

/// Records per purpose and version, for callers that want the map.
pub fn usage_map(list: &[KeyVersionInfo]) -> HashMap<(String, u32), i64> {
    list.iter()
        .filter_map(|k| k.records.map(|n| ((k.purpose.clone(), k.version), n)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_runs_flat_out_while_the_chain_stands_still() {
        let mut p = Pacer::new(0.2, 7);
        assert_eq!(p.batch(1000), 1000);
        assert_eq!(p.after_batch(7, Duration::from_millis(10)), None);
        assert_eq!(p.batch(1000), 1000);
    }

    #[test]
    fn pacer_yields_its_share_while_the_chain_grows() {
        let mut p = Pacer::new(0.2, 7);
        // 10 ms of work at a 20 % share: 40 ms of sleep.
        assert_eq!(
            p.after_batch(9, Duration::from_millis(10)),
            Some(Duration::from_millis(40))
        );
        assert_eq!(p.batch(1000), BUSY_BATCH);
        assert_eq!(p.batch(50), 50);
        // Traffic stops: flat out again, full batches.
        assert_eq!(p.after_batch(9, Duration::from_millis(10)), None);
        assert_eq!(p.batch(1000), 1000);
        // A share of 1 never yields.
        let mut never = Pacer::new(1.0, 0);
        assert_eq!(never.after_batch(5, Duration::from_millis(10)), None);
    }
}
