//! Group commit: many concurrent jobs, one transaction, one fsync.
//!
//! Requests submit a [`Job`] and wait. A single task takes every job that is
//! waiting (up to `max_batch`), commits them together with
//! [`Store::commit`], and answers each. Under load the fsync cost is shared by
//! the whole batch; when idle a job commits alone at once. Nothing is
//! acknowledged before its transaction committed.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::StoreError;
use crate::model::{Job, JobResult};
use crate::store::{HeadSigner, Store};

type Reply = oneshot::Sender<Result<JobResult, StoreError>>;

/// Handle to the committer task. Cheap to clone.
#[derive(Clone, Debug)]
pub struct GroupCommitter {
    tx: mpsc::Sender<(Job, Reply)>,
}

impl GroupCommitter {
    /// Start the committer task on the current tokio runtime.
    pub fn spawn(store: Store, signer: Arc<dyn HeadSigner>, max_batch: usize) -> GroupCommitter {
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
                    .commit(std::mem::take(&mut jobs), signer.clone())
                    .await;
                metrics::histogram!("tokengate_store_commit_jobs").record(n as f64);
                metrics::histogram!("tokengate_store_commit_seconds")
                    .record(started.elapsed().as_secs_f64());
                match result {
                    Ok(results) => {
                        for (reply, result) in replies.drain(..).zip(results) {
                            let _ = reply.send(Ok(result));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, jobs = n, "batch commit failed; refusing the operations");
                        for reply in replies.drain(..) {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
                jobs.clear();
            }
        });
        GroupCommitter { tx }
    }

    /// Commit `job` (with others waiting at the same time) and return its result.
    pub async fn submit(&self, job: Job) -> Result<JobResult, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((job, reply))
            .await
            .map_err(|_| StoreError::CommitterStopped)?;
        rx.await.map_err(|_| StoreError::CommitterStopped)?
    }
}
