//! Pipelined durability for the SQLite writer: commit now, fsync the WAL on
//! another thread, acknowledge when the fsync that covers the commit is done.
//!
//! Why: with `synchronous=FULL` every commit waits for its own WAL fsync, so
//! the single writer sits idle on the disk for most of each batch and the
//! next batch cannot start until the previous one is on disk. Here the writer
//! commits with `synchronous=NORMAL` (WAL frames reach the OS with `write`,
//! no fsync) and a dedicated thread runs `fdatasync` on the WAL file in a
//! loop. Each fsync covers every commit that returned before it started, so
//! while one batch is being synced the jobs for the next one gather (and are
//! committed together as soon as the fsync ends) — the same idea as
//! PostgreSQL's group commit with a separate WAL flush.
//!
//! What still holds (and why):
//! - Nothing is acknowledged before it is on disk: callers wait on
//!   [`Durable::wait`], which resolves only after an fsync that began after
//!   the commit returned.
//! - A crash or power loss keeps a prefix of the commits: SQLite's WAL
//!   frames carry cumulative checksums and recovery stops at the first frame
//!   that does not verify, so an unsynced later commit can never survive
//!   while an earlier one is lost. Every acknowledged commit lies before the
//!   last completed fsync.
//! - Checkpoints stay safe: with `synchronous=NORMAL` SQLite itself syncs
//!   the WAL before copying pages into the database file and syncs the
//!   database file afterwards.
//! - A failed fsync is fatal for this process's writer (after a failed fsync
//!   Linux may drop the dirty pages, so a retry could report success for data
//!   that is gone): every waiting and every later commit is refused.
//!
//! What changes: a commit is visible to readers in this process slightly
//! before it is durable (at most one fsync). A reader can only ask about a
//! record whose identifier it already holds, and identifiers are handed out
//! only after the fsync, so this is observable only through searches.

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::watch;

use crate::StoreError;

/// Progress published by the sync thread.
#[derive(Clone, Debug, Default)]
struct Synced {
    /// Every commit with a generation ≤ `upto` is on disk.
    upto: u64,
    /// Set once an fsync failed; the writer refuses everything after.
    failed: Option<String>,
}

/// Called by the sync thread once the commit it was registered for is on
/// disk (`Ok`), or can never be (`Err`).
pub(crate) type Waiter = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

#[derive(Default)]
struct Pending {
    /// Generation of the newest commit handed to the OS.
    committed: u64,
    shutdown: bool,
    /// Callbacks by generation, oldest first (see [`WalSyncer::committed_then`]).
    waiters: std::collections::VecDeque<(u64, Waiter)>,
    /// Why the sync thread stopped for good, once it has.
    failed: Option<String>,
    /// An fsync is running.
    syncing: bool,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("committed", &self.committed)
            .field("shutdown", &self.shutdown)
            .field("waiters", &self.waiters.len())
            .field("failed", &self.failed)
            .field("syncing", &self.syncing)
            .finish()
    }
}

/// Called by the sync thread after every fsync (see [`WalSyncer::on_synced`]).
pub(crate) type SyncedHook = Box<dyn Fn() + Send + Sync>;

struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the sync thread (a commit to sync, or shutdown).
    wake: Condvar,
    /// Told after every fsync: the writer thread, which keeps a batch
    /// open while an fsync runs (`SqliteWriter::commit_gathering`).
    on_synced: Mutex<Vec<SyncedHook>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

/// Owner of the sync thread; dropping it stops the thread.
#[derive(Debug)]
pub(crate) struct WalSyncer {
    shared: Arc<Shared>,
    synced: watch::Receiver<Synced>,
}

/// A commit that is in the OS but maybe not yet on disk.
#[derive(Debug)]
#[must_use = "a commit is acknowledged only after `wait` returns Ok"]
pub struct Durable(Inner);

#[derive(Debug)]
enum Inner {
    /// Already durable (PostgreSQL, or a synchronous commit).
    Now,
    Wal {
        generation: u64,
        synced: watch::Receiver<Synced>,
    },
}

impl Durable {
    pub(crate) fn now() -> Durable {
        Durable(Inner::Now)
    }

    /// Wait until the commit is on disk.
    pub async fn wait(self) -> Result<(), StoreError> {
        match self.0 {
            Inner::Now => Ok(()),
            Inner::Wal {
                generation,
                mut synced,
            } => {
                let state = synced
                    .wait_for(|s| s.upto >= generation || s.failed.is_some())
                    .await
                    .map_err(|_| StoreError::Unavailable("the WAL sync thread stopped".into()))?;
                match &state.failed {
                    // A failure after our generation was synced does not
                    // concern this commit.
                    Some(_) if state.upto >= generation => Ok(()),
                    Some(e) => Err(StoreError::Unavailable(format!("WAL fsync failed: {e}"))),
                    None => Ok(()),
                }
            }
        }
    }
}

impl WalSyncer {
    /// Start the sync thread for the WAL file at `wal_path`.
    pub(crate) fn start(wal_path: PathBuf) -> Result<WalSyncer, StoreError> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            on_synced: Mutex::new(Vec::new()),
        });
        let (tx, rx) = watch::channel(Synced::default());
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("tokengate-wal-sync".into())
            .spawn(move || run(&thread_shared, &wal_path, &tx))
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot start the WAL sync thread: {e}"))
            })?;
        Ok(WalSyncer { shared, synced: rx })
    }

    /// Refuse new commits once an fsync has failed.
    pub(crate) fn check(&self) -> Result<(), StoreError> {
        match &self.synced.borrow().failed {
            Some(e) => Err(StoreError::Unavailable(format!(
                "an earlier WAL fsync failed ({e}); restart tokengate"
            ))),
            None => Ok(()),
        }
    }

    /// Record that a commit has returned (call while still holding the
    /// writer connection, so generations follow WAL order).
    pub(crate) fn committed(&self) -> Durable {
        let generation = {
            let mut p = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            p.committed += 1;
            p.committed
        };
        self.shared.wake.notify_one();
        Durable(Inner::Wal {
            generation,
            synced: self.synced.clone(),
        })
    }
}

impl WalSyncer {
    /// [`WalSyncer::committed`] for a caller that is not async (the SQLite
    /// writer thread): `then` runs on the sync thread once the commit is on
    /// disk, so acknowledging it costs no hand-off to another task. Call
    /// while still holding the writer connection.
    pub(crate) fn committed_then(&self, then: Waiter) {
        let mut p = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(e) = &p.failed {
            let e = StoreError::Unavailable(format!("WAL fsync failed: {e}"));
            drop(p);
            then(Err(e));
            return;
        }
        p.committed += 1;
        let generation = p.committed;
        p.waiters.push_back((generation, then));
        drop(p);
        self.shared.wake.notify_one();
    }
}

impl WalSyncer {
    /// Whether an fsync is running now (false once one has failed). The
    /// writer keeps its batch open while this holds: a commit made now
    /// could not be acknowledged before the *next* fsync anyway.
    pub(crate) fn is_syncing(&self) -> bool {
        let p = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        p.syncing && p.failed.is_none()
    }

    /// Call `hook` on the sync thread after every fsync, successful or not
    /// (in addition to the hooks added before: every group committer on
    /// this store gets its wake-up). It must not block.
    pub(crate) fn on_synced(&self, hook: SyncedHook) {
        self.shared
            .on_synced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(hook);
    }
}

impl Drop for WalSyncer {
    fn drop(&mut self) {
        if let Ok(mut p) = self.shared.pending.lock() {
            p.shutdown = true;
        }
        self.shared.wake.notify_one();
    }
}

fn run(shared: &Shared, wal_path: &std::path::Path, tx: &watch::Sender<Synced>) {
    let mut file: Option<File> = None;
    let mut synced = 0u64;
    loop {
        let target = {
            let mut p = shared
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            while p.committed == synced && !p.shutdown {
                p = shared
                    .wake
                    .wait(p)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            if p.committed == synced {
                return; // shut down with nothing pending
            }
            p.syncing = true;
            p.committed
        };
        // Every commit up to `target` returned before this point, so its
        // frames are in the OS; this fsync makes them durable.
        let started = std::time::Instant::now();
        let result = match &file {
            Some(f) => f.sync_data(),
            None => File::open(wal_path).and_then(|f| {
                let r = f.sync_data();
                file = Some(f);
                r
            }),
        };
        metrics::histogram!("tokengate_store_wal_sync_seconds")
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                synced = target;
                tx.send_modify(|s| s.upto = target);
                let done = take_waiters(shared, |p| {
                    p.syncing = false;
                    let n = p.waiters.iter().take_while(|(g, _)| *g <= target).count();
                    p.waiters.drain(..n).collect()
                });
                for (_, then) in done {
                    then(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "WAL fsync failed; refusing all further writes");
                tx.send_modify(|s| s.failed = Some(e.to_string()));
                let all = take_waiters(shared, |p| {
                    p.syncing = false;
                    p.failed = Some(e.to_string());
                    p.waiters.drain(..).collect()
                });
                for (_, then) in all {
                    then(Err(StoreError::Unavailable(format!(
                        "WAL fsync failed: {e}"
                    ))));
                }
                return;
            }
        }
    }
}

/// Take waiters out under the lock (run them after releasing it).
fn take_waiters(
    shared: &Shared,
    take: impl FnOnce(&mut Pending) -> Vec<(u64, Waiter)>,
) -> Vec<(u64, Waiter)> {
    let taken = {
        let mut p = shared
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        take(&mut p)
    };
    for hook in shared
        .on_synced
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
    {
        hook();
    }
    taken
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[tokio::test]
    async fn commits_resolve_after_the_wal_is_synced() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("db-wal");
        std::fs::write(&wal, b"frames").unwrap();
        let syncer = WalSyncer::start(wal).unwrap();
        let first = syncer.committed();
        let second = syncer.committed();
        let in_time = std::time::Duration::from_secs(30);
        tokio::time::timeout(in_time, second.wait())
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(in_time, first.wait())
            .await
            .unwrap()
            .unwrap();
        // The sync thread has published a generation covering both.
        assert!(syncer.synced.borrow().upto >= 2);
        syncer.check().unwrap();
    }

    #[tokio::test]
    async fn a_failed_sync_refuses_the_commit_and_every_later_one() {
        let dir = tempfile::tempdir().unwrap();
        // No WAL file where the syncer looks: its fsync cannot happen.
        let syncer = WalSyncer::start(dir.path().join("missing-wal")).unwrap();
        let err = syncer.committed().wait().await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(syncer.check().is_err(), "later commits must be refused");
        let err = syncer.committed().wait().await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    }

    type Outcome = Result<(), StoreError>;

    /// A channel the callbacks of `committed_then` report to.
    fn report() -> (
        std::sync::mpsc::Sender<Outcome>,
        std::sync::mpsc::Receiver<Outcome>,
    ) {
        std::sync::mpsc::channel()
    }

    /// A `committed_then` callback that reports its outcome to `tx`.
    fn to(tx: &std::sync::mpsc::Sender<Outcome>) -> Waiter {
        let tx = tx.clone();
        Box::new(move |r| {
            let _ = tx.send(r);
        })
    }

    #[test]
    fn callbacks_run_after_the_wal_is_synced() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("db-wal");
        std::fs::write(&wal, b"frames").unwrap();
        let syncer = WalSyncer::start(wal).unwrap();
        let (tx, rx) = report();
        for _ in 0..3 {
            syncer.committed_then(to(&tx));
        }
        let in_time = std::time::Duration::from_secs(30);
        for _ in 0..3 {
            rx.recv_timeout(in_time).unwrap().unwrap();
        }
        // Only after a sync that covered all three.
        assert!(syncer.synced.borrow().upto >= 3);
    }

    #[test]
    fn a_failed_sync_fails_the_callback_and_every_later_one() {
        let dir = tempfile::tempdir().unwrap();
        let syncer = WalSyncer::start(dir.path().join("missing-wal")).unwrap();
        let (tx, rx) = report();
        let in_time = std::time::Duration::from_secs(30);
        syncer.committed_then(to(&tx));
        let err = rx.recv_timeout(in_time).unwrap().unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        // After the failure a new commit is refused at once, not left waiting.
        syncer.committed_then(to(&tx));
        let err = rx.recv_timeout(in_time).unwrap().unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    }

    #[test]
    fn the_synced_hook_runs_after_every_fsync_and_ends_syncing() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("db-wal");
        std::fs::write(&wal, b"frames").unwrap();
        let syncer = WalSyncer::start(wal).unwrap();
        let (hook_tx, hook_rx) = std::sync::mpsc::channel();
        let hook_tx = Mutex::new(hook_tx);
        syncer.on_synced(Box::new(move || {
            let _ = hook_tx.lock().unwrap().send(());
        }));
        assert!(!syncer.is_syncing(), "nothing to sync yet");
        let (tx, rx) = report();
        let in_time = std::time::Duration::from_secs(30);
        for _ in 0..20 {
            syncer.committed_then(to(&tx));
            // The hook runs once the fsync covering this commit is done,
            // and by then the syncer no longer counts as syncing.
            hook_rx.recv_timeout(in_time).unwrap();
            rx.recv_timeout(in_time).unwrap().unwrap();
            assert!(!syncer.is_syncing());
        }
        // A failed fsync runs the hook too: a writer waiting for the end of
        // an fsync is never left waiting.
        let failed = WalSyncer::start(dir.path().join("missing-wal")).unwrap();
        let (hook_tx, hook_rx) = std::sync::mpsc::channel();
        let hook_tx = Mutex::new(hook_tx);
        failed.on_synced(Box::new(move || {
            let _ = hook_tx.lock().unwrap().send(());
        }));
        let (tx, rx) = report();
        failed.committed_then(to(&tx));
        hook_rx.recv_timeout(in_time).unwrap();
        assert!(rx.recv_timeout(in_time).unwrap().is_err());
        assert!(!failed.is_syncing());
    }

    #[tokio::test]
    async fn already_durable_commits_resolve_at_once() {
        Durable::now().wait().await.unwrap();
    }
}
