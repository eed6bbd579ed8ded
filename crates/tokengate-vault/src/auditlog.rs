//! The audit log's Merkle tree: signed checkpoints, proofs, and verification
//! that recomputes everything from the records.
//!
//! The hot path is untouched: requests append records to the hash chain as
//! before. [`Vault::checkpoint`] (run by the server every few seconds, and by
//! `tokengate audit checkpoint`) appends the tree's stored hashes for the
//! records written since the last checkpoint and signs a C2SP checkpoint, in
//! one store job. Two nodes racing for the same checkpoint conflict and one
//! wins; the result is the same tree.
//!
//! `tlog_tiles`' tree functions read hashes synchronously; the store is
//! async. The indexes a function reads depend only on sizes, never on hash
//! values, so `with_tree` runs it once against a recorder to learn the
//! indexes, fetches them, and runs it again on the fetched hashes.

use std::cell::RefCell;
use std::collections::HashMap;

use tokengate_audit::checkpoint::{self, CheckpointError, SignedCheckpoint};
use tokengate_audit::merkle::{
    self, Hash, HashReader, Reader, RootBuilder, StoredTree, TreeError, leaf_hash,
    stored_hash_index,
};
use tokengate_audit::{Action, Ident, Outcome, SafeText, StoredEvent};
use tokengate_audit::{Verifier, VerifyError, VerifyReport};
use tokengate_store::{AuditQuery, CheckpointRow, Job, JobError, Op, Store};

use crate::access::{Caller, RequestMeta, Role, event};

use crate::clock::now_ms;
use crate::error::VaultError;
use crate::open::Vault;

/// Records read per page while checkpointing or verifying.
const PAGE: i64 = 5000;
/// Most records one background checkpoint covers past the previous one
/// (its writer transaction stores about twice as many tree hashes).
const CHECKPOINT_STEP: u64 = 8192;
/// Records per page of an export.
const PAGE_EXPORT: i32 = 5000;

/// An inclusion proof: record `seq` is leaf `seq - 1` of the tree of
/// `tree_size` records whose root is `root`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct InclusionProof {
    pub seq: u64,
    pub leaf_index: u64,
    pub tree_size: u64,
    /// Base64 of the RFC 6962 leaf hash of the record's `event_json`.
    pub leaf_hash: String,
    pub root: String,
    /// Base64 hashes, RFC 9162 §2.1.3 order.
    pub proof: Vec<String>,
}

/// A consistency proof: the tree of `from_size` records is a prefix of the
/// tree of `to_size` records.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConsistencyProof {
    pub from_size: u64,
    pub from_root: String,
    pub to_size: u64,
    pub to_root: String,
    pub proof: Vec<String>,
}

fn b64(h: &Hash) -> String {
    data_encoding::BASE64.encode(&h.0)
}

fn tree_err(e: TreeError) -> VaultError {
    VaultError::Internal(format!("audit tree: {e}"))
}

struct Recorder(RefCell<Vec<u64>>);

impl StoredTree for Recorder {
    fn read(&self, indexes: &[u64]) -> Result<Vec<Hash>, String> {
        self.0.borrow_mut().extend_from_slice(indexes);
        Ok(vec![Hash([0; 32]); indexes.len()])
    }
}

struct Fetched(HashMap<u64, [u8; 32]>);

impl StoredTree for Fetched {
    fn read(&self, indexes: &[u64]) -> Result<Vec<Hash>, String> {
        indexes
            .iter()
            .map(|i| {
                self.0
                    .get(i)
                    .map(|h| Hash(*h))
                    .ok_or_else(|| format!("stored tree hash {i} is missing"))
            })
            .collect()
    }
}

/// Run `f` against the stored tree (see the module docs).
async fn with_tree<R>(
    store: &Store,
    f: impl Fn(&dyn StoredTree) -> Result<R, TreeError>,
) -> Result<R, VaultError> {
    let rec = Recorder(RefCell::new(Vec::new()));
    f(&rec).map_err(tree_err)?;
    let mut indexes = rec.0.into_inner();
    indexes.sort_unstable();
    indexes.dedup();
    let fetched = Fetched(store.audit_tree_hashes(&indexes).await?);
    f(&fetched).map_err(tree_err)
}

impl Vault {
    /// Sign a checkpoint covering every record written so far (returns the
    /// latest one when nothing new was written).
    pub async fn checkpoint(&self) -> Result<SignedCheckpoint, VaultError> {
        self.checkpoint_step(u64::MAX).await
    }

    /// Sign a checkpoint covering at most `max_records` records past the
    /// latest one. The background checkpointer catches up on a long
    /// un-checkpointed log in such steps, so that no single writer
    /// transaction (the tree hashes of every new record) holds up live
    /// writes for long.
    async fn checkpoint_step(&self, max_records: u64) -> Result<SignedCheckpoint, VaultError> {
        let ring = self.ring();
        let key = ring.audit_signer()?;
        let latest = self.store.latest_checkpoint().await?;
        let from = latest.as_ref().map_or(0, |c| c.tree_size);
        let head = self.store.audit_head().await?.map_or(0, |h| h.seq);
        let head = head.min(from.saturating_add(max_records.max(1)));
        if head <= from {
            return match &latest {
                Some(c) => open_row(c, &self.audit_public_key()?),
                // An empty log has nothing to pin.
                None => Err(VaultError::Invalid {
                    code: "no_records",
                    message: "the audit log has no records yet".into(),
                }),
            };
        }
        let mut leaves = Vec::with_capacity(usize::try_from(head - from).unwrap_or(0));
        let mut after = from;
        while after < head {
            // Only the leaf hashes, computed where the records are read.
            let page = self.store.audit_leaf_hashes(after, PAGE).await?;
            let Some(&(last, _)) = page.last() else { break };
            after = last;
            leaves.extend(
                page.into_iter()
                    .take_while(|(seq, _)| *seq <= head)
                    .map(|(_, h)| h),
            );
        }
        if leaves.len() as u64 != head - from {
            return Err(VaultError::Internal(
                "audit records are missing below the signed head; run `tokengate audit verify`"
                    .into(),
            ));
        }
        let hashes = with_tree(&self.store, |t| merkle::append_hashes(from, &leaves, t)).await?;
        let base = stored_hash_index(0, from);
        let root = {
            let new: HashMap<u64, [u8; 32]> = hashes
                .iter()
                .enumerate()
                .map(|(k, h)| (base + k as u64, h.0))
                .collect();
            let indexes = merkle::sub_tree_index(0, head, vec![]);
            let old: Vec<u64> = indexes.iter().copied().filter(|i| *i < base).collect();
            let mut all = self.store.audit_tree_hashes(&old).await?;
            all.extend(new);
            merkle::tree_hash(head, &Reader(&Fetched(all))).map_err(tree_err)?
        };
        let signed =
            checkpoint::sign(key, head, root.0).map_err(|e| VaultError::Internal(e.to_string()))?;
        let job = Job {
            ops: vec![
                Op::AppendTreeHashes {
                    first_index: base,
                    hashes: hashes.iter().map(|h| h.0).collect(),
                },
                Op::InsertCheckpoint(CheckpointRow {
                    tree_size: head,
                    root: root.0,
                    note: signed.note.clone(),
                    created_at: now_ms(),
                }),
            ],
            ..Job::default()
        };
        match self.committer.submit(job).await? {
            Ok(_) => Ok(signed),
            // Another node or process made it first: the same tree.
            Err(JobError::Conflict) => Ok(self.latest_checkpoint().await?.unwrap_or(signed)),
            Err(e) => Err(VaultError::Internal(format!("checkpoint: {e:?}"))),
        }
    }

    /// Sign a checkpoint every `every` while new records arrive.
    pub fn spawn_checkpointer(
        self: &std::sync::Arc<Self>,
        every: std::time::Duration,
        every_records: u64,
    ) -> tokio::task::JoinHandle<()> {
        let vault = std::sync::Arc::clone(self);
        tokio::spawn(async move {
            // Checked every second (or `every`, if shorter): a checkpoint is
            // due once `every` has passed or `every_records` new records wait.
            let poll = every.min(std::time::Duration::from_secs(1));
            let mut tick = tokio::time::interval(poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = tokio::time::Instant::now();
            let mut first = true;
            loop {
                tick.tick().await;
                let due_by_time = first || last.elapsed() >= every;
                let due_by_count = every_records > 0 && {
                    let covered = vault
                        .store
                        .latest_checkpoint()
                        .await
                        .ok()
                        .flatten()
                        .map_or(0, |c| c.tree_size);
                    let head = vault
                        .store
                        .audit_head()
                        .await
                        .ok()
                        .flatten()
                        .map_or(0, |h| h.seq);
                    head.saturating_sub(covered) >= every_records
                };
                if !(due_by_time || due_by_count) {
                    continue;
                }
                first = false;
                last = tokio::time::Instant::now();
                // In steps of CHECKPOINT_STEP records until caught up (or
                // until a step makes no progress).
                let target = vault
                    .store
                    .audit_head()
                    .await
                    .ok()
                    .flatten()
                    .map_or(0, |h| h.seq);
                let mut covered = 0;
                loop {
                    match vault.checkpoint_step(CHECKPOINT_STEP).await {
                        Ok(c) if c.size < target && c.size > covered => {
                            covered = c.size;
                            tokio::task::yield_now().await;
                        }
                        Ok(_) | Err(VaultError::Invalid { .. }) => break,
                        Err(e) => {
                            tracing::error!(code = e.code(), error = %e, "audit checkpoint failed; will retry");
                            break;
                        }
                    }
                }
            }
        })
    }

    /// Search the audit log (role `auditor`). The search itself is audited
    /// before any record is returned (PCI DSS 10.2.1.3), fail closed.
    pub async fn search_audit(
        &self,
        caller: &Caller,
        q: &AuditQuery,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, VaultError> {
        self.require(caller, Role::Auditor, Action::AuditRead)
            .await?;
        self.audited_search(&caller.key_id, Some(&caller.tenant), &caller.meta, q, limit)
            .await
    }

    /// The same for the local CLI (`tokengate audit search|export`), recorded
    /// with actor `cli`.
    pub async fn search_audit_local(
        &self,
        q: &AuditQuery,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, VaultError> {
        self.audited_search(
            &Ident::from_static("cli"),
            None,
            &RequestMeta::default(),
            q,
            limit,
        )
        .await
    }

    /// Every record with `ts_ms >= since_ms` up to the current head, oldest
    /// first, handed to `sink` page by page; audited once (actor `cli`)
    /// before anything is read. Returns the number exported.
    pub async fn export_audit_local(
        &self,
        since_ms: i64,
        mut sink: impl FnMut(&StoredEvent) -> std::io::Result<()>,
    ) -> Result<u64, VaultError> {
        let mut q = AuditQuery {
            since_ms: Some(since_ms),
            ..AuditQuery::default()
        };
        let mut ev = event(
            Action::AuditRead,
            Outcome::Success,
            &Ident::from_static("cli"),
            None,
            &RequestMeta::default(),
        );
        ev.detail = Some(SafeText::new(&format!("export {}", describe(&q))));
        self.record(vec![ev]).await?;
        // Stop at the head as it is now: the export's own record and later
        // ones belong to the next export.
        let head = self.store.audit_head().await?.map_or(0, |h| h.seq);
        let mut count = 0;
        while q.after_seq < head {
            let page = self.store.search_audit(&q, i64::from(PAGE_EXPORT)).await?;
            let Some(last) = page.last() else { break };
            q.after_seq = last.seq;
            for r in page.iter().take_while(|r| r.seq <= head) {
                sink(r).map_err(|e| VaultError::Internal(format!("export output: {e}")))?;
                count += 1;
            }
        }
        Ok(count)
    }

    async fn audited_search(
        &self,
        actor: &Ident,
        tenant: Option<&str>,
        meta: &RequestMeta,
        q: &AuditQuery,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, VaultError> {
        let mut ev = event(Action::AuditRead, Outcome::Success, actor, tenant, meta);
        ev.detail = Some(SafeText::new(&describe(q)));
        self.record(vec![ev]).await?;
        let limit = i64::try_from(limit.clamp(1, 10_000)).unwrap_or(10_000);
        Ok(self.store.search_audit(q, limit).await?)
    }

    /// Record that drain `name` delivered every record up to `seq`.
    pub async fn set_drain_cursor(&self, name: &str, seq: u64) -> Result<(), VaultError> {
        let job = Job {
            ops: vec![Op::SetDrainCursor {
                name: name.to_owned(),
                seq,
            }],
            ..Job::default()
        };
        match self.committer.submit(job).await? {
            Ok(_) => Ok(()),
            Err(e) => Err(VaultError::Internal(format!("drain cursor: {e:?}"))),
        }
    }

    /// The audit chain's length (its last record's `seq`; 0 when empty).
    pub async fn audit_head_seq(&self) -> Result<u64, VaultError> {
        Ok(self.store.audit_head().await?.map_or(0, |h| h.seq))
    }

    /// Every drain's delivery cursor: `(name, delivered_seq)`. The lowest
    /// holds back pruning.
    pub async fn drain_cursors(&self) -> Result<Vec<(String, u64)>, VaultError> {
        Ok(self.store.drain_cursors().await?)
    }

    /// Remove the cursor of a drain that is gone for good, so that it no
    /// longer holds back pruning (audited, actor `cli`). A drain still
    /// configured on a running node writes its cursor again and starts
    /// over from the oldest record kept.
    pub async fn forget_drain(&self, name: &str) -> Result<u64, VaultError> {
        let Some(seq) = self
            .drain_cursors()
            .await?
            .into_iter()
            .find_map(|(n, s)| (n == name).then_some(s))
        else {
            return Err(VaultError::NotFound {
                code: "drain_not_found",
                message:
                    "no drain of that name has a delivery cursor (see `tokengate audit drains`)"
                        .into(),
            });
        };
        let mut ev = event(
            Action::AuditDrainForget,
            Outcome::Success,
            &Ident::from_static("cli"),
            None,
            &crate::access::RequestMeta::default(),
        );
        ev.detail = Some(SafeText::new(&format!("delivered_seq={seq}")));
        ev.subject = Ident::new(name);
        let job = Job {
            ops: vec![Op::ForgetDrain {
                name: name.to_owned(),
            }],
            events: vec![ev],
            ..Job::default()
        };
        match self.committer.submit(job).await? {
            Ok(_) => Ok(seq),
            Err(e) => Err(VaultError::Internal(format!("forget drain: {e:?}"))),
        }
    }

    /// Record an `alert` event (`detail` starts with `kind=…`); it reaches
    /// every drain like any record.
    pub async fn record_alert(&self, detail: &str) -> Result<(), VaultError> {
        let mut ev = event(
            Action::Alert,
            Outcome::Success,
            &Ident::from_static("system"),
            None,
            &RequestMeta::default(),
        );
        ev.detail = Some(SafeText::new(detail));
        self.record(vec![ev]).await
    }

    /// Record what the edge proxy refused or saw fail (`proxy_reject`,
    /// `proxy_upstream_error`, `egress_denied`, or an `alert`), by `actor`
    /// (`proxy.<route>` or the relaying API key), with the request's facts.
    /// `detail` is redacted like any free text.
    pub async fn record_edge_event(
        &self,
        action: Action,
        reason: &'static str,
        actor: &str,
        meta: &RequestMeta,
        detail: &str,
    ) -> Result<(), VaultError> {
        let outcome = if action == Action::Alert {
            Outcome::Success
        } else {
            Outcome::failure(reason)
        };
        let actor = Ident::new(actor).unwrap_or_else(|| Ident::from_static("proxy"));
        let mut ev = event(action, outcome, &actor, Some(&self.tenant), meta);
        ev.detail = Some(SafeText::new(detail));
        self.record(vec![ev]).await
    }

    /// Open or close the audit gate for `reason` (see `GroupCommitter::set_gate`).
    pub fn set_audit_gate(&self, reason: &str, ok: bool) {
        self.committer.set_gate(reason, ok);
    }

    /// The newest stored checkpoint, signature checked.
    pub async fn latest_checkpoint(&self) -> Result<Option<SignedCheckpoint>, VaultError> {
        let pk = self.audit_public_key()?;
        match self.store.latest_checkpoint().await? {
            Some(c) => Ok(Some(open_row(&c, &pk)?)),
            None => Ok(None),
        }
    }

    /// Prove that record `seq` is in the tree of `tree_size` records
    /// (default: the latest checkpoint).
    pub async fn prove_inclusion(
        &self,
        seq: u64,
        tree_size: Option<u64>,
    ) -> Result<InclusionProof, VaultError> {
        let size = self.proof_size(tree_size).await?;
        if seq == 0 || seq > size {
            return Err(VaultError::Invalid {
                code: "record_not_in_tree",
                message: format!("record {seq} is not in a tree of {size} records (1..={size})"),
            });
        }
        let n = seq - 1;
        let proof = with_tree(&self.store, |t| merkle::prove_record(size, n, &Reader(t))).await?;
        let root = with_tree(&self.store, |t| merkle::tree_hash(size, &Reader(t))).await?;
        let leaf = self
            .store
            .audit_tree_hashes(&[stored_hash_index(0, n)])
            .await?
            .get(&stored_hash_index(0, n))
            .map(|h| Hash(*h))
            .ok_or_else(|| tree_err(TreeError::IndexesNotInTree))?;
        Ok(InclusionProof {
            seq,
            leaf_index: n,
            tree_size: size,
            leaf_hash: b64(&leaf),
            root: b64(&root),
            proof: proof.iter().map(b64).collect(),
        })
    }

    /// Prove that the tree of `from` records is a prefix of the tree of `to`
    /// records (default: the latest checkpoint).
    pub async fn prove_consistency(
        &self,
        from: u64,
        to: Option<u64>,
    ) -> Result<ConsistencyProof, VaultError> {
        let to = self.proof_size(to).await?;
        if from == 0 || from > to {
            return Err(VaultError::Invalid {
                code: "bad_tree_sizes",
                message: format!("need 1 <= from <= to; got from={from}, to={to}"),
            });
        }
        let proof = with_tree(&self.store, |t| merkle::prove_tree(to, from, &Reader(t))).await?;
        let from_root = with_tree(&self.store, |t| merkle::tree_hash(from, &Reader(t))).await?;
        let to_root = with_tree(&self.store, |t| merkle::tree_hash(to, &Reader(t))).await?;
        Ok(ConsistencyProof {
            from_size: from,
            from_root: b64(&from_root),
            to_size: to,
            to_root: b64(&to_root),
            proof: proof.iter().map(b64).collect(),
        })
    }

    /// Proofs are only served for trees the stored hashes cover (up to the
    /// latest checkpoint).
    async fn proof_size(&self, tree_size: Option<u64>) -> Result<u64, VaultError> {
        let covered = self
            .store
            .latest_checkpoint()
            .await?
            .map_or(0, |c| c.tree_size);
        match tree_size {
            None if covered == 0 => Err(VaultError::Invalid {
                code: "no_checkpoint",
                message: "no checkpoint yet; run `tokengate audit checkpoint`".into(),
            }),
            None => Ok(covered),
            Some(t) if t == 0 || t > covered => Err(VaultError::Invalid {
                code: "tree_size_not_checkpointed",
                message: format!("tree size {t} is beyond the latest checkpoint ({covered})"),
            }),
            Some(t) => Ok(t),
        }
    }

    /// Check the whole audit trail: chain links, hashes, the signed head,
    /// every stored checkpoint (signature and root recomputed from the
    /// records), the stored tree, and optionally a checkpoint kept outside
    /// (`pinned`, a signed note).
    pub async fn verify_audit(
        &self,
        pinned: Option<&SignedCheckpoint>,
    ) -> Result<Result<VerifyReport, VerifyError>, VaultError> {
        verify_store(&self.store, &self.audit_public_key()?, pinned).await
    }

    /// Open a checkpoint note kept outside (a file, a SIEM) against this
    /// vault's audit key.
    pub fn open_checkpoint(&self, note: &str) -> Result<SignedCheckpoint, CheckpointError> {
        let pk = self
            .audit_public_key()
            .map_err(|e| CheckpointError::Malformed(e.to_string()))?;
        checkpoint::open(note, &pk)
    }
}

/// A time bound for searches: RFC 3339 (`2026-11-22T10:00:00Z`) or Unix
/// milliseconds.
pub fn parse_time(s: &str) -> Result<i64, VaultError> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX))
        .map_err(|_| VaultError::Invalid {
            code: "invalid_time",
            message: format!(
                "{:?} is not a time: use RFC 3339 (2026-11-22T10:00:00Z) or Unix milliseconds",
                tokengate_core::redact_pans(s)
            ),
        })
}

/// `success` / `failure` → the query's outcome filter.
pub fn parse_outcome(s: &str) -> Result<bool, VaultError> {
    match s {
        "success" => Ok(true),
        "failure" => Ok(false),
        _ => Err(VaultError::Invalid {
            code: "invalid_outcome",
            message: "outcome must be `success` or `failure`".into(),
        }),
    }
}

/// One record as search results show it: `{seq, hash, event}` (hashes hex).
/// With `exact`, as exports carry it instead: `{seq, prev_hash, hash,
/// event_json}` with the byte-exact JSON that was hashed, so the chain and the
/// Merkle tree can be recomputed from an export alone.
pub fn record_json(r: &StoredEvent, exact: bool) -> serde_json::Value {
    let hex = |h: &[u8]| data_encoding::HEXLOWER.encode(h);
    if exact {
        serde_json::json!({
            "seq": r.seq,
            "prev_hash": hex(&r.prev_hash),
            "hash": hex(&r.hash),
            "event_json": r.event_json,
        })
    } else {
        let event: serde_json::Value =
            serde_json::from_str(&r.event_json).unwrap_or(serde_json::Value::Null);
        serde_json::json!({ "seq": r.seq, "hash": hex(&r.hash), "event": event })
    }
}

/// The filters of a search, for its own audit record.
fn describe(q: &AuditQuery) -> String {
    let mut parts = vec![format!("after_seq={}", q.after_seq)];
    let mut add = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            parts.push(format!("{k}={v}"));
        }
    };
    add("since_ms", q.since_ms.map(|v| v.to_string()));
    add("until_ms", q.until_ms.map(|v| v.to_string()));
    add("actor", q.actor.clone());
    add("action", q.action.clone());
    add("token", q.token.clone());
    add("request_id", q.request_id.clone());
    add(
        "outcome",
        q.success
            .map(|ok| if ok { "success" } else { "failure" }.to_owned()),
    );
    parts.join(" ")
}

fn open_row(c: &CheckpointRow, pk: &[u8]) -> Result<SignedCheckpoint, VaultError> {
    checkpoint::open(&c.note, pk).map_err(|e| {
        VaultError::Internal(format!(
            "stored checkpoint {} does not verify: {e}",
            c.tree_size
        ))
    })
}

/// Verify the audit trail in `store` against `public_key` (see
/// [`Vault::verify_audit`]).
pub async fn verify_store(
    store: &Store,
    public_key: &[u8],
    pinned: Option<&SignedCheckpoint>,
) -> Result<Result<VerifyReport, VerifyError>, VaultError> {
    // After retention pruning the chain resumes at the first kept record and
    // the tree from the stored roots of the pruned prefix; checkpoints and a
    // pinned checkpoint inside the prefix are checked against the stored tree.
    let pruned = store.audit_pruned().await?;
    let upto = pruned.map_or(0, |(s, _)| s);
    let mut chain = match pruned {
        Some((s, h)) => Verifier::resume(s + 1, h),
        None => Verifier::default(),
    };
    let mut tree = if upto == 0 {
        RootBuilder::new()
    } else {
        let roots = with_tree(store, |t| {
            Reader(t).read_hashes(&merkle::sub_tree_index(0, upto, vec![]))
        })
        .await
        .ok();
        match roots.and_then(|r| RootBuilder::resume(upto, &r)) {
            Some(b) => b,
            None => return Ok(Err(VerifyError::StoredTreeMismatch { size: upto })),
        }
    };
    let stored_root = |size: u64| async move {
        with_tree(store, |t| merkle::tree_hash(size, &Reader(t)))
            .await
            .ok()
            .map(|h| h.0)
    };
    if let Some(p) = pinned
        && p.size <= upto
        && stored_root(p.size).await != Some(p.root)
    {
        return Ok(Err(VerifyError::PinnedCheckpointMismatch { size: p.size }));
    }
    let mut cp_after = 0u64;
    loop {
        let page = store.checkpoints(cp_after, 1000).await?;
        let inside: Vec<&CheckpointRow> = page.iter().filter(|c| c.tree_size <= upto).collect();
        for c in &inside {
            let sig_ok = checkpoint::open(&c.note, public_key)
                .is_ok_and(|o| o.size == c.tree_size && o.root == c.root);
            if !sig_ok {
                return Ok(Err(VerifyError::CheckpointSignature { size: c.tree_size }));
            }
            if stored_root(c.tree_size).await != Some(c.root) {
                return Ok(Err(VerifyError::CheckpointMismatch { size: c.tree_size }));
            }
            cp_after = c.tree_size;
        }
        if inside.len() < page.len() || page.is_empty() {
            break;
        }
    }
    // Stored checkpoints after the prefix, fetched page by page in size order.
    let mut pending: std::collections::VecDeque<CheckpointRow> = Default::default();
    let mut cp_done = false;
    // The stored tree is recomputed from the records up to the latest
    // checkpoint and compared hash by hash, page by page: proofs come from it.
    let tree_covers = store.latest_checkpoint().await?.map_or(0, |c| c.tree_size);
    let mut recomputed: Vec<Hash> = Vec::new();
    let mut compared = merkle::stored_hash_count(upto); // next stored hash to compare
    let mut after = upto;
    let check = |tree: &RootBuilder, c: &CheckpointRow| -> Result<(), VerifyError> {
        let opened = checkpoint::open(&c.note, public_key)
            .map_err(|_| VerifyError::CheckpointSignature { size: c.tree_size })?;
        if opened.size != c.tree_size || opened.root != c.root || tree.root().0 != c.root {
            return Err(VerifyError::CheckpointMismatch { size: c.tree_size });
        }
        Ok(())
    };
    loop {
        let page = store.audit_events(after, PAGE).await?;
        if page.is_empty() {
            break;
        }
        for r in &page {
            if let Err(e) = chain.push(r) {
                return Ok(Err(e));
            }
            let leaf = leaf_hash(&r.event_json);
            if tree.size() < tree_covers {
                tree.push_stored(leaf, &mut recomputed);
            } else {
                tree.push(leaf);
            }
            after = r.seq;
            if pinned.is_some_and(|p| p.size == tree.size())
                && pinned.is_some_and(|p| p.root != tree.root().0)
            {
                return Ok(Err(VerifyError::PinnedCheckpointMismatch {
                    size: tree.size(),
                }));
            }
            if pending.is_empty() && !cp_done {
                let next = store.checkpoints(cp_after, 1000).await?;
                cp_done = next.is_empty();
                if let Some(l) = next.last() {
                    cp_after = l.tree_size;
                }
                pending.extend(next);
            }
            while pending.front().is_some_and(|c| c.tree_size <= tree.size()) {
                if let Some(c) = pending.pop_front()
                    && let Err(e) = check(&tree, &c)
                {
                    return Ok(Err(e));
                }
            }
        }
        if !compare_stored(store, &mut recomputed, &mut compared).await? {
            return Ok(Err(VerifyError::StoredTreeMismatch { size: tree_covers }));
        }
    }
    let last_seq = tree.size();
    if let Some(p) = pinned
        && p.size > last_seq.max(upto)
    {
        return Ok(Err(VerifyError::PinnedCheckpointBeyondLog {
            size: p.size,
            last_seq,
        }));
    }
    if pending.is_empty() && !cp_done {
        pending.extend(store.checkpoints(cp_after, 1).await?);
    }
    if let Some(c) = pending.front() {
        return Ok(Err(VerifyError::CheckpointBeyondLog {
            size: c.tree_size,
            last_seq,
        }));
    }
    if compared != merkle::stored_hash_count(tree_covers) {
        return Ok(Err(VerifyError::StoredTreeMismatch { size: tree_covers }));
    }
    let head = store.audit_head().await?;
    Ok(chain.finish(head.as_ref(), public_key))
}

/// Compare `recomputed` stored hashes with the stored tree from index
/// `*compared` on; drains what was compared. False on the first difference
/// or missing hash.
async fn compare_stored(
    store: &Store,
    recomputed: &mut Vec<Hash>,
    compared: &mut u64,
) -> Result<bool, VaultError> {
    let mut done = 0usize;
    while done < recomputed.len() {
        let want = i64::try_from(recomputed.len() - done)
            .unwrap_or(i64::MAX)
            .min(PAGE * 2);
        let stored = store.audit_tree_range(*compared, want).await?;
        if stored.is_empty() {
            return Ok(false);
        }
        for (idx, h) in stored {
            if idx != *compared || recomputed.get(done).map(|r| r.0) != Some(h) {
                return Ok(false);
            }
            *compared += 1;
            done += 1;
        }
    }
    recomputed.clear();
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::access::RequestMeta;
    use crate::init::{InitOptions, init};
    use crate::open::VaultConfig;
    use aws_lc_rs::digest::{Context, SHA256};
    use data_encoding::{BASE64, HEXUPPER};
    use tokengate_audit::{SignedHead, chain_hash};

    async fn vault_with_records(n: usize) -> (tempfile::TempDir, Vault) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let out = init(&InitOptions {
            data_dir: dir.clone(),
            database_url: None,
            custodians: None,
            custodian_keys: Vec::new(),
            pkcs11: None,
        })
        .await
        .unwrap();
        let vault = Vault::open(VaultConfig::new(&dir)).await.unwrap();
        let admin = vault
            .authenticate(Some(&out.admin_api_key), RequestMeta::default())
            .await
            .unwrap();
        for i in 0..n {
            vault
                .create_api_key(&admin, &format!("k{i}"), &["tokenize".to_owned()])
                .await
                .unwrap();
        }
        (tmp, vault)
    }

    async fn add_records(vault: &Vault, n: usize) {
        let admin = vault.store.list_api_keys(&vault.tenant).await.unwrap();
        assert!(!admin.is_empty());
        // Each failed authentication is audited too: a cheap way to append.
        for _ in 0..n {
            let _ = vault
                .authenticate(Some("tg_nope"), RequestMeta::default())
                .await;
        }
    }

    /// Catching up in small steps gives the same tree as one checkpoint
    /// over everything, and every intermediate checkpoint is consistent with
    /// the last.
    #[tokio::test]
    async fn stepped_checkpoints_match_one_full_checkpoint() {
        let (_tmp, vault) = vault_with_records(3).await;
        add_records(&vault, 20).await;
        let head = vault.store.audit_head().await.unwrap().unwrap().seq;
        assert!(head > 20);
        let mut sizes = Vec::new();
        loop {
            let c = vault.checkpoint_step(7).await.unwrap();
            assert!(
                c.size <= sizes.last().copied().unwrap_or(0) + 7,
                "{}",
                c.size
            );
            if sizes.last() == Some(&c.size) {
                break;
            }
            sizes.push(c.size);
        }
        assert_eq!(sizes.last().copied(), Some(head));
        assert!(sizes.len() >= 3, "{sizes:?}");
        for pair in sizes.windows(2) {
            vault
                .prove_consistency(pair[0], Some(pair[1]))
                .await
                .unwrap();
        }
        // A fresh tree over the same records, in one step, has the same root.
        let stepped = vault.latest_checkpoint().await.unwrap().unwrap();
        sql(
            &vault,
            "DELETE FROM audit_tree; DELETE FROM audit_checkpoints",
        )
        .await;
        let full = vault.checkpoint().await.unwrap();
        assert_eq!((full.size, full.root), (stepped.size, stepped.root));
    }

    async fn sql(vault: &Vault, q: &str) {
        vault.store.execute_raw_for_tests(q).await.unwrap();
    }

    /// What an attacker with the database and the signing key does: change
    /// record `seq`'s content, re-chain every later record, re-sign the head,
    /// and rebuild the stored tree and checkpoints from the forged records.
    async fn rewrite_and_rechain(
        vault: &Vault,
        edit: impl Fn(&mut Vec<tokengate_audit::StoredEvent>),
    ) {
        let mut recs = vault.store.audit_events(0, 1_000_000).await.unwrap();
        edit(&mut recs);
        sql(vault, "DELETE FROM audit_events").await;
        let mut prev = tokengate_audit::GENESIS;
        for (i, r) in recs.iter_mut().enumerate() {
            r.seq = i as u64 + 1;
            r.prev_hash = prev;
            r.hash = chain_hash(r.seq, &prev, r.event_json.as_bytes());
            prev = r.hash;
            sql(
                vault,
                &format!(
                    "INSERT INTO audit_events (seq, ts_ms, action, actor, outcome, event_json, prev_hash, hash) \
                     VALUES ({}, 0, 'x', 'x', 'success', '{}', X'{}', X'{}')",
                    r.seq,
                    r.event_json.replace('\'', "''"),
                    HEXUPPER.encode(&r.prev_hash),
                    HEXUPPER.encode(&r.hash)
                ),
            )
            .await;
        }
        let last = recs.last().unwrap();
        let head = SignedHead::sign(vault.ring().audit_signer().unwrap(), last.seq, last.hash);
        sql(
            vault,
            &format!(
                "UPDATE audit_head SET seq = {}, hash = X'{}', signature = X'{}'",
                head.seq,
                HEXUPPER.encode(&head.hash),
                HEXUPPER.encode(&head.signature)
            ),
        )
        .await;
        sql(
            vault,
            "DELETE FROM audit_tree; DELETE FROM audit_checkpoints",
        )
        .await;
        vault.checkpoint().await.unwrap();
    }

    #[tokio::test]
    async fn a_saved_checkpoint_catches_a_rewritten_rechained_resigned_log() {
        let (_tmp, vault) = vault_with_records(6).await;
        let saved = vault.checkpoint().await.unwrap();
        add_records(&vault, 3).await;
        vault.checkpoint().await.unwrap();
        assert!(vault.verify_audit(Some(&saved)).await.unwrap().is_ok());

        // Edit a covered record.
        rewrite_and_rechain(&vault, |recs| {
            let before = recs[2].event_json.clone();
            recs[2].event_json = before.replacen("\"ts_ms\":", "\"ts_ms\":1", 1);
            assert_ne!(recs[2].event_json, before);
        })
        .await;
        // Every internal check passes: the attacker had the key.
        let internal = vault.verify_audit(None).await.unwrap();
        assert!(internal.is_ok(), "{internal:?}");
        // The copy kept outside does not.
        assert_eq!(
            vault.verify_audit(Some(&saved)).await.unwrap(),
            Err(VerifyError::PinnedCheckpointMismatch { size: saved.size })
        );
    }

    #[tokio::test]
    async fn a_saved_checkpoint_catches_deletion_and_truncation() {
        let (_tmp, vault) = vault_with_records(6).await;
        let saved = vault.checkpoint().await.unwrap();
        add_records(&vault, 2).await;
        rewrite_and_rechain(&vault, |recs| {
            recs.remove(1);
        })
        .await;
        assert!(vault.verify_audit(None).await.unwrap().is_ok());
        assert!(matches!(
            vault.verify_audit(Some(&saved)).await.unwrap(),
            Err(VerifyError::PinnedCheckpointMismatch { .. })
        ));

        let (_tmp, vault) = vault_with_records(6).await;
        let saved = vault.checkpoint().await.unwrap();
        rewrite_and_rechain(&vault, |recs| {
            recs.truncate(recs.len() - 2);
        })
        .await;
        assert!(vault.verify_audit(None).await.unwrap().is_ok());
        assert_eq!(
            vault.verify_audit(Some(&saved)).await.unwrap(),
            Err(VerifyError::PinnedCheckpointBeyondLog {
                size: saved.size,
                last_seq: saved.size - 2
            })
        );
    }

    #[tokio::test]
    async fn stored_checkpoints_and_tree_are_checked_against_the_records() {
        let (_tmp, vault) = vault_with_records(5).await;
        let cp = vault.checkpoint().await.unwrap();
        // Editing a record without re-signing anything: the chain catches it.
        // Forging a stored checkpoint's root: caught against the records.
        sql(&vault, "UPDATE audit_checkpoints SET root = X'1111111111111111111111111111111111111111111111111111111111111111'").await;
        assert!(matches!(
            vault.verify_audit(None).await.unwrap(),
            Err(VerifyError::CheckpointMismatch { .. } | VerifyError::CheckpointSignature { .. })
        ));
        let (_tmp, vault) = vault_with_records(5).await;
        vault.checkpoint().await.unwrap();
        sql(&vault, "UPDATE audit_tree SET hash = X'0000000000000000000000000000000000000000000000000000000000000000' WHERE idx = 0").await;
        assert_eq!(
            vault.verify_audit(None).await.unwrap(),
            Err(VerifyError::StoredTreeMismatch { size: cp.size })
        );
    }

    // ---- an independent RFC 6962 / RFC 9162 implementation -------------

    fn sha(parts: &[&[u8]]) -> [u8; 32] {
        let mut c = Context::new(&SHA256);
        for p in parts {
            c.update(p);
        }
        c.finish().as_ref().try_into().unwrap()
    }
    fn leaf(d: &[u8]) -> [u8; 32] {
        sha(&[&[0], d])
    }
    fn node(l: &[u8; 32], r: &[u8; 32]) -> [u8; 32] {
        sha(&[&[1], l, r])
    }
    /// RFC 6962 §2.1 MTH, recursively.
    fn mth(leaves: &[[u8; 32]]) -> [u8; 32] {
        match leaves.len() {
            0 => sha(&[]),
            1 => leaves[0],
            n => {
                let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
                node(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }
    /// RFC 9162 §2.1.3.2.
    fn verify_inclusion(
        index: u64,
        size: u64,
        leaf_hash: [u8; 32],
        proof: &[[u8; 32]],
        root: [u8; 32],
    ) -> bool {
        if index >= size {
            return false;
        }
        let (mut fn_, mut sn) = (index, size - 1);
        let mut r = leaf_hash;
        for p in proof {
            if sn == 0 {
                return false;
            }
            if fn_ & 1 == 1 || fn_ == sn {
                r = node(p, &r);
                if fn_ & 1 == 0 {
                    while fn_ & 1 == 0 && fn_ != 0 {
                        fn_ >>= 1;
                        sn >>= 1;
                    }
                }
            } else {
                r = node(&r, p);
            }
            fn_ >>= 1;
            sn >>= 1;
        }
        sn == 0 && r == root
    }
    /// RFC 9162 §2.1.4.2.
    fn verify_consistency(
        first: u64,
        second: u64,
        r1: [u8; 32],
        r2: [u8; 32],
        proof: &[[u8; 32]],
    ) -> bool {
        if first == second {
            return proof.is_empty() && r1 == r2;
        }
        let mut path: Vec<[u8; 32]> = proof.to_vec();
        if first.is_power_of_two() {
            path.insert(0, r1);
        }
        let (mut fn_, mut sn) = (first - 1, second - 1);
        while fn_ & 1 == 1 {
            fn_ >>= 1;
            sn >>= 1;
        }
        let mut it = path.into_iter();
        let Some(c) = it.next() else { return false };
        let (mut fr, mut sr) = (c, c);
        for c in it {
            if sn == 0 {
                return false;
            }
            if fn_ & 1 == 1 || fn_ == sn {
                fr = node(&c, &fr);
                sr = node(&c, &sr);
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            } else {
                sr = node(&sr, &c);
            }
            fn_ >>= 1;
            sn >>= 1;
        }
        fr == r1 && sr == r2 && sn == 0
    }
    fn unb64(s: &str) -> [u8; 32] {
        BASE64.decode(s.as_bytes()).unwrap().try_into().unwrap()
    }

    #[tokio::test]
    async fn proofs_check_out_against_an_independent_rfc6962_implementation() {
        let (_tmp, vault) = vault_with_records(4).await;
        let first = vault.checkpoint().await.unwrap();
        add_records(&vault, 13).await;
        let second = vault.checkpoint().await.unwrap();
        let recs = vault.store.audit_events(0, 1_000_000).await.unwrap();
        let leaves: Vec<[u8; 32]> = recs[..second.size as usize]
            .iter()
            .map(|r| leaf(r.event_json.as_bytes()))
            .collect();
        assert_eq!(mth(&leaves), second.root);
        assert_eq!(mth(&leaves[..first.size as usize]), first.root);

        for seq in 1..=second.size {
            let p = vault.prove_inclusion(seq, None).await.unwrap();
            let proof: Vec<[u8; 32]> = p.proof.iter().map(|s| unb64(s)).collect();
            assert_eq!(unb64(&p.leaf_hash), leaves[seq as usize - 1]);
            assert!(
                verify_inclusion(
                    seq - 1,
                    second.size,
                    leaves[seq as usize - 1],
                    &proof,
                    second.root
                ),
                "seq {seq}"
            );
            // A proof for the wrong leaf does not verify.
            let other = leaves[(seq as usize) % leaves.len()];
            if other != leaves[seq as usize - 1] {
                assert!(!verify_inclusion(
                    seq - 1,
                    second.size,
                    other,
                    &proof,
                    second.root
                ));
            }
        }
        for from in 1..=second.size {
            let p = vault.prove_consistency(from, None).await.unwrap();
            let proof: Vec<[u8; 32]> = p.proof.iter().map(|s| unb64(s)).collect();
            let r1 = mth(&leaves[..from as usize]);
            assert_eq!(unb64(&p.from_root), r1);
            assert!(
                verify_consistency(from, second.size, r1, second.root, &proof),
                "from {from}"
            );
            assert!(
                !verify_consistency(from, second.size, r1, first.root, &proof)
                    || first.root == second.root
            );
        }
        // Beyond the latest checkpoint: a clear error, not a panic.
        assert!(matches!(
            vault.prove_inclusion(second.size + 1, None).await,
            Err(VaultError::Invalid { .. })
        ));
        assert!(matches!(
            vault.prove_consistency(1, Some(second.size + 5)).await,
            Err(VaultError::Invalid { .. })
        ));
    }
}
