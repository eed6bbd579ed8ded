//! Group commit: many concurrent jobs, one transaction, one fsync.
//!
//! Requests submit a [`Job`] and wait. One loop takes every job that is
//! waiting (up to `max_batch`), commits them together, and answers each once
//! the batch is durable. With SQLite the loop is an OS thread of its own that
//! commits on the writer connection directly and leaves the answers to the
//! WAL sync thread (`wal_sync`); with PostgreSQL it is a task calling
//! [`Store::commit_pipelined`].
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

/// What the committer's queue carries.
enum Msg {
    Job(Job, Reply),
    /// An fsync of the WAL ended (SQLite's writer thread waits for it).
    Synced,
}

/// Rewrites an audit event before it is committed (e.g. replaces fields by
/// keyed hashes). Runs on the submitting task, not on the writer.
pub type EventFilter = Arc<dyn Fn(&mut AuditEvent) + Send + Sync>;

/// Handle to the committer task. Cheap to clone.
#[derive(Clone)]
pub struct GroupCommitter {
    tx: mpsc::Sender<Msg>,
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
    /// Start the committer: SQLite's writer thread, or (PostgreSQL) a task
    /// on the current tokio runtime.
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
        let (tx, rx) = mpsc::channel::<Msg>(max_batch * 4);
        let rx = match store.sqlite_writer().cloned() {
            Some(writer) => {
                spawn_writer_thread(writer, rx, tx.downgrade(), signer.clone(), max_batch)
            }
            None => Some(rx),
        };
        if let Some(rx) = rx {
            tokio::spawn(commit_loop(store, rx, signer, max_batch));
        }
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
            .send(Msg::Job(job, reply))
            .await
            .map_err(|_| StoreError::CommitterStopped)?;
        rx.await.map_err(|_| StoreError::CommitterStopped)?
    }
}

/// Take the job `first` and every job already waiting, up to `max_batch`.
fn take_batch(
    first: (Job, Reply),
    rx: &mut mpsc::Receiver<Msg>,
    max_batch: usize,
) -> (Vec<Job>, Vec<Reply>) {
    let mut jobs = Vec::with_capacity(max_batch);
    let mut replies = Vec::with_capacity(max_batch);
    let (job, reply) = first;
    jobs.push(job);
    replies.push(reply);
    while jobs.len() < max_batch {
        match rx.try_recv() {
            Ok(Msg::Job(job, reply)) => {
                jobs.push(job);
                replies.push(reply);
            }
            Ok(Msg::Synced) => {}
            Err(_) => break,
        }
    }
    (jobs, replies)
}

/// Answer every job of a batch: its own result once the batch is durable,
/// or the batch's error.
fn answer(
    replies: Vec<Reply>,
    result: Result<Vec<JobResult>, StoreError>,
    started: std::time::Instant,
) {
    metrics::histogram!("tokengate_store_commit_seconds").record(started.elapsed().as_secs_f64());
    match result {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(result));
            }
        }
        Err(e) => refuse(replies, &e),
    }
}

/// SQLite: one OS thread takes jobs off the queue and commits them on the
/// writer connection itself; the WAL sync thread answers each batch once
/// it is on disk. While an fsync runs the thread keeps its batch open and
/// applies the jobs arriving meanwhile, and commits as soon as the fsync
/// ends (`SqliteWriter::commit_gathering`; the sync thread's hook puts a
/// `Synced` on the queue to wake it). The thread wakes for each job that
/// arrives while it waits and once at the end of the fsync; there is no
/// hop to the blocking pool and back, and no task per batch waiting for
/// the sync. Gives `rx` back if the thread cannot be started.
fn spawn_writer_thread(
    writer: crate::sqlite_writer::SqliteWriter,
    rx: mpsc::Receiver<Msg>,
    wake: mpsc::WeakSender<Msg>,
    signer: Arc<dyn HeadSigner>,
    max_batch: usize,
) -> Option<mpsc::Receiver<Msg>> {
    // The receiver moves into the thread only once it is running; if the
    // spawn fails it comes back through this slot.
    let slot = Arc::new(std::sync::Mutex::new(Some(rx)));
    let thread_slot = slot.clone();
    let spawned = std::thread::Builder::new()
        .name("tokengate-writer".into())
        .spawn(move || {
            let taken = thread_slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            let Some(mut rx) = taken else { return };
            // A weak handle: the queue still closes when every
            // `GroupCommitter` is gone. A full queue drops the wake-up,
            // but then a job is waiting, which wakes the thread as well.
            writer.on_synced(Box::new(move || {
                if let Some(tx) = wake.upgrade() {
                    let _ = tx.try_send(Msg::Synced);
                }
            }));
            // Ends when every `GroupCommitter` handle is gone.
            while let Some(msg) = rx.blocking_recv() {
                let Msg::Job(job, reply) = msg else { continue };
                let started = std::time::Instant::now();
                let mut next = |block: bool| loop {
                    let msg = if block {
                        rx.blocking_recv()
                    } else {
                        rx.try_recv().ok()
                    };
                    match msg {
                        Some(Msg::Job(job, reply)) => return Some((job, reply)),
                        // Stale unless we are waiting for it.
                        Some(Msg::Synced) if !block => {}
                        Some(Msg::Synced) | None => return None,
                    }
                };
                writer.commit_gathering(
                    (job, reply),
                    max_batch,
                    &mut next,
                    signer.as_ref(),
                    move |replies, result| {
                        metrics::histogram!("tokengate_store_commit_jobs")
                            .record(replies.len() as f64);
                        answer(replies, result, started);
                    },
                );
            }
        });
    match spawned {
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the writer thread; committing from a task");
            // The thread never ran, so the receiver is still in the slot.
            slot.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
        }
    }
}

/// PostgreSQL (and SQLite if its writer thread could not start): a task
/// takes batches off the queue and commits them; each batch is answered
/// once durable while the loop already commits the next.
async fn commit_loop(
    store: Store,
    mut rx: mpsc::Receiver<Msg>,
    signer: Arc<dyn HeadSigner>,
    max_batch: usize,
) {
    while let Some(msg) = rx.recv().await {
        let Msg::Job(job, reply) = msg else { continue };
        let (jobs, replies) = take_batch((job, reply), &mut rx, max_batch);
        let started = std::time::Instant::now();
        metrics::histogram!("tokengate_store_commit_jobs").record(jobs.len() as f64);
        match store.commit_pipelined(jobs, signer.clone()).await {
            Ok((results, durable)) => {
                // Answer once the batch is on disk; meanwhile this loop
                // already commits the next batch.
                tokio::spawn(async move {
                    let synced = durable.wait().await;
                    answer(replies, synced.map(|()| results), started);
                });
            }
            Err(e) => answer(replies, Err(e), started),
        }
    }
}

fn refuse(replies: Vec<Reply>, e: &StoreError) {
    tracing::error!(error = %e, jobs = replies.len(), "batch commit failed; refusing the operations");
    for reply in replies {
        let _ = reply.send(Err(e.clone()));
    }
}
