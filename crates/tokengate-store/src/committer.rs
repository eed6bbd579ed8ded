//! Group commit: many concurrent jobs, one transaction, one fsync.
//!
//! Requests submit a [`Job`] and wait. A single task takes every job that is
//! waiting (up to `max_batch`), commits them together with
//! [`Store::commit_pipelined`], and answers each once the batch is durable.
//! Under load the fsync cost is shared by the whole batch, and the next batch
//! is built while the previous one is being synced; when idle a job commits
//! alone at once. Nothing is acknowledged before its transaction committed
//! and reached the disk.

use std::sync::Arc;

use tokengate_audit::AuditEvent;
use tokio::sync::{mpsc, oneshot};

use crate::StoreError;
use crate::model::{Job, JobResult};
use crate::store::{HeadSigner, Store};

type Reply = oneshot::Sender<Result<JobResult, StoreError>>;

/// Rewrites an audit event before it is committed (e.g. replaces fields by
/// keyed hashes). Runs on the submitting task, not on the writer.
pub type EventFilter = Arc<dyn Fn(&mut AuditEvent) + Send + Sync>;

/// Handle to the committer task. Cheap to clone.
#[derive(Clone)]
pub struct GroupCommitter {
    tx: mpsc::Sender<(Job, Reply)>,
    filter: Option<EventFilter>,
    /// Reasons the audit trail cannot be trusted right now (e.g. a
    /// fail-closed drain is down). While any is set, jobs that write audit
    /// events are refused.
    gate: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

impl std::fmt::Debug for GroupCommitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommitter")
            .field("filter", &self.filter.is_some())
            .finish_non_exhaustive()
    }
}

impl GroupCommitter {
    /// Start the committer task on the current tokio runtime.
    pub fn spawn(store: Store, signer: Arc<dyn HeadSigner>, max_batch: usize) -> GroupCommitter {
        Self::spawn_with_filter(store, signer, max_batch, None)
    }

    /// [`GroupCommitter::spawn`] with an [`EventFilter`] applied to every
    /// audit event submitted.
    pub fn spawn_with_filter(
        store: Store,
        signer: Arc<dyn HeadSigner>,
        max_batch: usize,
        filter: Option<EventFilter>,
    ) -> GroupCommitter {
        let (tx, mut rx) = mpsc::channel::<(Job, Reply)>(max_batch * 4);
        tokio::spawn(async move {
            let mut jobs = Vec::with_capacity(max_batch);
            let mut replies = Vec::with_capacity(max_batch);
            while let Some((job, reply)) = rx.recv().await {
                jobs.push(job);
                replies.push(reply);
                while jobs.len() < max_batch {
                    match rx.try_recv() {
                        Ok((job, reply)) => {
                            jobs.push(job);
                            replies.push(reply);
                        }
                        Err(_) => break,
                    }
                }
                let started = std::time::Instant::now();
                let n = jobs.len();
                let result = store
                    .commit_pipelined(std::mem::take(&mut jobs), signer.clone())
                    .await;
                metrics::histogram!("tokengate_store_commit_jobs").record(n as f64);
                let batch_replies = std::mem::replace(&mut replies, Vec::with_capacity(max_batch));
                match result {
                    Ok((results, durable)) => {
                        // Answer once the batch is on disk; meanwhile this
                        // loop already commits the next batch.
                        tokio::spawn(async move {
                            let synced = durable.wait().await;
                            metrics::histogram!("tokengate_store_commit_seconds")
                                .record(started.elapsed().as_secs_f64());
                            match synced {
                                Ok(()) => {
                                    for (reply, result) in batch_replies.into_iter().zip(results) {
                                        let _ = reply.send(Ok(result));
                                    }
                                }
                                Err(e) => refuse(batch_replies, &e),
                            }
                        });
                    }
                    Err(e) => refuse(batch_replies, &e),
                }
                jobs.clear();
            }
        });
        GroupCommitter {
            tx,
            filter,
            gate: Arc::default(),
        }
    }

    /// Commit `job` (with others waiting at the same time) and return its result.
    /// Open (`ok = true`) or close the audit gate for `reason`.
    pub fn set_gate(&self, reason: &str, ok: bool) {
        let mut g = self
            .gate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = if ok {
            g.remove(reason)
        } else {
            g.insert(reason.to_owned())
        };
        if changed {
            if ok {
                tracing::info!(reason, "audit gate reopened");
            } else {
                tracing::error!(reason, "audit gate closed: refusing audited operations");
            }
        }
    }

    pub async fn submit(&self, mut job: Job) -> Result<JobResult, StoreError> {
        if !job.events.is_empty() || !job.events_if_affected.is_empty() {
            let g = self
                .gate
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(reason) = g.iter().next() {
                return Err(StoreError::AuditWrite(format!(
                    "{reason} is not delivering and is configured to fail closed"
                )));
            }
        }
        if let Some(f) = &self.filter {
            job.events.iter_mut().for_each(|e| f(e));
            job.events_if_affected.iter_mut().for_each(|(_, e)| f(e));
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((job, reply))
            .await
            .map_err(|_| StoreError::CommitterStopped)?;
        rx.await.map_err(|_| StoreError::CommitterStopped)?
    }
}

fn refuse(replies: Vec<Reply>, e: &StoreError) {
    tracing::error!(error = %e, jobs = replies.len(), "batch commit failed; refusing the operations");
    for reply in replies {
        let _ = reply.send(Err(e.clone()));
    }
}
