//! The SQLite write path: a whole batch runs inside one blocking thread on a
//! dedicated connection with cached prepared statements.
//!
//! Why not sqlx here: sqlx-sqlite sends every statement to its worker thread
//! and back; a batch is ~4 statements per job, so a commit spent most of its
//! time in thread hand-offs (measured: ~50 µs per job and ~1 ms per batch,
//! see docs/BENCHMARKS.md). Here a batch costs one hand-off. Reads (but the
//! checkpointer's, see `sqlite_reader`), schema migrations and PostgreSQL
//! stay on sqlx; the conformance suite runs every behaviour against both
//! write paths.
//!
//! Commits do not fsync inline: the connection runs `synchronous=NORMAL` and
//! [`WalSyncer`] makes each commit durable on its own thread before it is
//! acknowledged (see `wal_sync` for why this keeps every guarantee).

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use tokengate_audit::chain::{ChainHash, GENESIS, link};
use tokengate_audit::{AuditEvent, StoredEvent};

use crate::StoreError;
use crate::model::*;
use crate::store::HeadSigner;
use crate::wal_sync::{Durable, WalSyncer};

/// The single writer connection of this process.
#[derive(Clone, Debug)]
pub(crate) struct SqliteWriter {
    conn: Arc<Mutex<Connection>>,
    syncer: Arc<WalSyncer>,
}

fn db_err(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

fn is_unique(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == ErrorCode::ConstraintViolation
            && (f.extended_code == 2067 /* UNIQUE */ || f.extended_code == 1555 /* PRIMARYKEY */))
}

impl SqliteWriter {
    pub(crate) fn open(path: &Path) -> Result<SqliteWriter, StoreError> {
        let conn = Connection::open(path).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        // WAL; freed pages overwritten (deleted DEKs do not linger); the WAL
        // is fsynced by the syncer thread before any commit is acknowledged,
        // so SQLite itself need not fsync on commit (NORMAL still syncs
        // around checkpoints).
        //
        // Page cache: 16 MiB, not more. When a B-tree rebalance reorders
        // pages, SQLite parks one under a page number past the end of the
        // file, and the commit then sweeps the whole page cache to drop it.
        // That sweep is proportional to the cache: with 128 MiB it took
        // 21 % of the server's CPU under a reveal load, 4 % with 16 MiB,
        // while pages read from the OS cache instead cost < 0.2 % (see
        // docs/BENCHMARKS.md, "The writer's page cache").
        //
        // Checkpoint every 500 WAL pages, not SQLite's default 1,000: the
        // automatic checkpoint runs inside the commit that crosses the
        // threshold (copy the pages, fsync the WAL and the database file),
        // and every request queued behind that commit waits for it. Half
        // the pages, half the stall: webhook p99 at 24 connections fell
        // from 4.3–8.8 ms to 3.5–3.6 ms at the same throughput (4,000
        // pages: 11–27 ms). A checkpoint on a thread of its own was worse
        // (its database fsync delays the WAL fsync; docs/BENCHMARKS.md,
        // "Kept: a WAL checkpoint every 500 pages").
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000; \
             PRAGMA secure_delete = ON; PRAGMA foreign_keys = ON; PRAGMA cache_size = -16384; \
             PRAGMA temp_store = MEMORY; PRAGMA wal_autocheckpoint = 500;",
        )
        .map_err(db_err)?;
        conn.set_prepared_statement_cache_capacity(64);
        // SQLite names the WAL after the database file.
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let syncer = WalSyncer::start(wal.into())?;
        Ok(SqliteWriter {
            conn: Arc::new(Mutex::new(conn)),
            syncer: Arc::new(syncer),
        })
    }

    /// Commit `jobs` in one transaction on a blocking thread. The results are
    /// final but must not be acknowledged before the returned [`Durable`]
    /// resolves.
    pub(crate) async fn commit(
        &self,
        jobs: Vec<Job>,
        signer: Arc<dyn HeadSigner>,
    ) -> Result<(Vec<JobResult>, Durable), StoreError> {
        self.syncer.check()?;
        let conn = self.conn.clone();
        let syncer = self.syncer.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StoreError::Database("writer lock poisoned".into()))?;
            let results = commit_sync(&mut guard, &jobs, signer.as_ref())?;
            // Still under the connection lock: generations follow WAL order.
            Ok((results, syncer.committed()))
        })
        .await
        .map_err(|e| StoreError::Database(format!("writer task failed: {e}")))?
    }
}

/// How long the writer keeps gathering jobs into an open batch while an
/// fsync runs, at most: past it the batch commits anyway.
const MAX_GATHER: std::time::Duration = std::time::Duration::from_millis(5);

impl SqliteWriter {
    /// Call `hook` after every WAL fsync (it must not block): the writer
    /// thread's wake-up when it gathers a batch.
    pub(crate) fn on_synced(&self, hook: crate::wal_sync::SyncedHook) {
        self.syncer.on_synced(hook);
    }

    /// The group committer's writer thread: commit `first` and every job
    /// that arrives while the WAL sync thread is in an fsync, in one
    /// transaction, applying each job as it arrives.
    ///
    /// A commit made during an fsync could not be acknowledged before the
    /// next fsync anyway, so the batch stays open while one runs: the jobs
    /// arriving meanwhile join it (fewer, larger commits, each writing its
    /// dirty pages to the WAL once) and their statements run while the
    /// disk works. When the fsync ends the batch takes whatever is queued
    /// and commits at once; with no fsync running it commits at once. At
    /// most `max_batch` jobs, and at most [`MAX_GATHER`] of waiting.
    ///
    /// `next(block)` hands over the next job and its tag: without `block`
    /// only one already queued; with `block` it waits for a job or for the
    /// end of an fsync (`None`, see [`on_synced`](Self::on_synced)).
    /// `then` gets every tag and the results once the commit is on disk
    /// (on the WAL sync thread), or the error at once. Nothing is
    /// acknowledged before `then` runs.
    pub(crate) fn commit_gathering<R: Send + 'static>(
        &self,
        first: (Job, R),
        max_batch: usize,
        next: &mut dyn FnMut(bool) -> Option<(Job, R)>,
        signer: &dyn HeadSigner,
        then: impl FnOnce(Vec<R>, Result<Vec<JobResult>, StoreError>) + Send + 'static,
    ) {
        let (job, tag) = first;
        let mut jobs = vec![job];
        let mut tags = vec![tag];
        if let Err(e) = self.syncer.check() {
            return then(tags, Err(e));
        }
        let mut guard = match self.conn.lock() {
            Ok(g) => g,
            Err(_) => {
                return then(
                    tags,
                    Err(StoreError::Database("writer lock poisoned".into())),
                );
            }
        };
        let deadline = std::time::Instant::now() + MAX_GATHER;
        // A conflict redoes every job gathered so far with savepoints, and
        // gathering goes on.
        let result = optimistic(|savepoints| {
            self.gather(
                &mut guard, &mut jobs, &mut tags, max_batch, next, deadline, savepoints, signer,
            )
        });
        match result {
            // Still under the connection lock: generations follow WAL order.
            Ok(results) => self
                .syncer
                .committed_then(Box::new(move |synced| then(tags, synced.map(|()| results)))),
            Err(e) => {
                drop(guard);
                then(tags, Err(e));
            }
        }
    }

    /// One attempt of [`commit_gathering`](Self::commit_gathering): apply
    /// the jobs gathered so far, gather more while an fsync runs, commit.
    // The gathering state lives in `commit_gathering` and must survive a
    // redo with savepoints, so it is passed in piece by piece.
    #[allow(clippy::too_many_arguments)]
    fn gather<R>(
        &self,
        conn: &mut Connection,
        jobs: &mut Vec<Job>,
        tags: &mut Vec<R>,
        max_batch: usize,
        next: &mut dyn FnMut(bool) -> Option<(Job, R)>,
        deadline: std::time::Instant,
        savepoints: bool,
        signer: &dyn HeadSigner,
    ) -> Result<Vec<JobResult>, Retry> {
        let mut batch = OpenBatch::begin(conn, savepoints)?;
        for job in jobs.iter() {
            batch.apply(job)?;
        }
        while jobs.len() < max_batch {
            let wait = self.syncer.is_syncing() && std::time::Instant::now() < deadline;
            match next(wait) {
                Some((job, tag)) => {
                    // Kept before it is applied: a redo with savepoints
                    // must include it.
                    jobs.push(job);
                    tags.push(tag);
                    if let Some(job) = jobs.last() {
                        batch.apply(job)?;
                    }
                }
                // An fsync ended (or the queue closed): look again.
                None if wait => {}
                None => break,
            }
        }
        Ok(batch.commit(signer)?)
    }
}

fn commit_sync(
    conn: &mut Connection,
    jobs: &[Job],
    signer: &dyn HeadSigner,
) -> Result<Vec<JobResult>, StoreError> {
    optimistic(|savepoints| commit_attempt(conn, jobs, signer, savepoints))
}

/// Run `attempt` optimistically first, without savepoints. A job that hits
/// a uniqueness conflict aborts that attempt, and the batch is redone with a
/// savepoint per job, so that only the conflicting job is rolled back.
fn optimistic<T>(mut attempt: impl FnMut(bool) -> Result<T, Retry>) -> Result<T, StoreError> {
    match attempt(false) {
        Ok(r) => Ok(r),
        Err(Retry::Fail(e)) => Err(e),
        Err(Retry::WithSavepoints) => match attempt(true) {
            Ok(r) => Ok(r),
            Err(Retry::Fail(e)) => Err(e),
            Err(Retry::WithSavepoints) => {
                Err(StoreError::Database("conflict outside a savepoint".into()))
            }
        },
    }
}

enum Retry {
    WithSavepoints,
    Fail(StoreError),
}

impl From<StoreError> for Retry {
    fn from(e: StoreError) -> Self {
        Retry::Fail(e)
    }
}

fn commit_attempt(
    conn: &mut Connection,
    jobs: &[Job],
    signer: &dyn HeadSigner,
    savepoints: bool,
) -> Result<Vec<JobResult>, Retry> {
    let mut batch = OpenBatch::begin(conn, savepoints)?;
    for job in jobs {
        batch.apply(job)?;
    }
    Ok(batch.commit(signer)?)
}

/// A write transaction that jobs are applied to one at a time, then
/// committed: the batch's audit records extend the chain from its head.
struct OpenBatch<'c> {
    /// Dropping it without `commit` rolls back (rusqlite default).
    tx: rusqlite::Transaction<'c>,
    savepoints: bool,
    seq: u64,
    prev: ChainHash,
    start_seq: u64,
    results: Vec<JobResult>,
}

impl<'c> OpenBatch<'c> {
    fn begin(conn: &'c mut Connection, savepoints: bool) -> Result<OpenBatch<'c>, StoreError> {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let head: Option<(i64, Vec<u8>)> = tx
            .prepare_cached("SELECT seq, hash FROM audit_head WHERE id = 1")
            .and_then(|mut st| st.query_row([], |r| Ok((r.get(0)?, r.get(1)?))).optional())
            .map_err(db_err)?;
        let (seq, prev): (u64, ChainHash) = match head {
            Some((s, h)) => (
                u64::try_from(s).map_err(|_| StoreError::Corrupt("seq".into()))?,
                h.try_into()
                    .map_err(|_| StoreError::Corrupt("hash is not 32 bytes".into()))?,
            ),
            None => (0, GENESIS),
        };
        Ok(OpenBatch {
            tx,
            savepoints,
            seq,
            prev,
            start_seq: seq,
            results: Vec::new(),
        })
    }

    /// A savepoint statement, by cached statement.
    fn sp(&self, sql: &str) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(sql)
            .and_then(|mut st| st.execute([]))
            .map(|_| ())
            .map_err(db_err)
    }

    /// Apply one job (its ops, then its audit records). Without savepoints
    /// a uniqueness conflict asks for the whole batch again with them.
    fn apply(&mut self, job: &Job) -> Result<(), Retry> {
        if self.savepoints {
            self.sp("SAVEPOINT job")?;
        }
        let outcome = match apply_ops(&self.tx, &job.ops) {
            Ok(outputs) => {
                let conditional = job
                    .events_if_affected
                    .iter()
                    .filter(|(i, _)| outputs.get(*i).is_some_and(|o| o.affected() > 0))
                    .map(|(_, e)| e);
                for event in job.events.iter().chain(conditional) {
                    let rec = link(self.seq, self.prev, event);
                    insert_audit(&self.tx, &rec, event)
                        .map_err(|e| StoreError::AuditWrite(e.to_string()))?;
                    self.seq = rec.seq;
                    self.prev = rec.hash;
                }
                Ok(outputs)
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(outputs) => {
                if self.savepoints {
                    self.sp("RELEASE SAVEPOINT job")?;
                }
                self.results.push(Ok(outputs));
                Ok(())
            }
            Err(e) if is_unique(&e) => {
                if !self.savepoints {
                    return Err(Retry::WithSavepoints);
                }
                self.sp("ROLLBACK TO SAVEPOINT job")?;
                self.sp("RELEASE SAVEPOINT job")?;
                self.results.push(Err(JobError::Conflict));
                Ok(())
            }
            Err(e) => Err(Retry::Fail(db_err(e))),
        }
    }

    /// Sign the new chain head (if records were added) and commit.
    fn commit(self, signer: &dyn HeadSigner) -> Result<Vec<JobResult>, StoreError> {
        if self.seq != self.start_seq {
            let sig = signer.sign(self.seq, &self.prev);
            self.tx
                .prepare_cached(
                    "INSERT INTO audit_head (id, seq, hash, signature) VALUES (1, ?1, ?2, ?3) \
                     ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, signature = excluded.signature",
                )
                .and_then(|mut st| st.execute(params![self.seq as i64, self.prev.as_slice(), sig]))
                .map_err(|e| StoreError::AuditWrite(e.to_string()))?;
        }
        self.tx
            .commit()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(self.results)
    }
}

fn insert_audit(conn: &Connection, rec: &StoredEvent, event: &AuditEvent) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO audit_events (seq, ts_ms, action, actor, token, request_id, outcome, event_json, prev_hash, hash) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        rec.seq as i64,
        event.ts_ms,
        event.action.as_str(),
        event.actor.as_str(),
        event.token.as_ref().map(|t| t.as_str()),
        event.request_id.as_ref().map(|t| t.as_str()),
        if event.outcome.is_success() { "success" } else { "failure" },
        rec.event_json,
        rec.prev_hash.as_slice(),
        rec.hash.as_slice(),
    ])?;
    Ok(())
}

/// `$N` placeholders (shared with the sqlx path) as SQLite's `?N`.
pub(crate) fn sqlite_sql(sql: &str) -> String {
    sql.replace('$', "?")
}

fn apply_ops(conn: &Connection, ops: &[Op]) -> rusqlite::Result<Vec<OpOutput>> {
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let o = match op {
            Op::InsertToken(t) => OpOutput::Affected(conn.prepare_cached(
                "INSERT INTO tokens (tenant, token, format, deterministic, fingerprint, fp_version, kek_version, \
                 wrapped_dek, ciphertext, brand, bin, last4, exp_month, exp_year, metadata, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            )?
            .execute(params![
                t.tenant, t.token, t.format, i64::from(t.deterministic), t.fingerprint, i64::from(t.fp_version),
                i64::from(t.kek_version), t.wrapped_dek, t.ciphertext, t.brand, t.bin, t.last4,
                i64::from(t.exp_month), i64::from(t.exp_year), t.metadata, t.created_at
            ])? as u64),
            Op::InsertCvc(c) => OpOutput::Affected(conn.prepare_cached(
                "INSERT INTO cvcs (tenant, token, key_version, ciphertext, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![c.tenant, c.token, i64::from(c.key_version), c.ciphertext, c.expires_at])? as u64),
            Op::DeleteToken { tenant, token } => {
                conn.prepare_cached("DELETE FROM cvcs WHERE tenant = ?1 AND token = ?2")?.execute(params![tenant, token])?;
                OpOutput::Affected(
                    conn.prepare_cached("DELETE FROM tokens WHERE tenant = ?1 AND token = ?2")?.execute(params![tenant, token])?
                        as u64,
                )
            }
            Op::TakeCvc { tenant, token, now } => OpOutput::Cvc(
                conn.prepare_cached(
                    "DELETE FROM cvcs WHERE tenant = ?1 AND token = ?2 AND expires_at > ?3 \
                     RETURNING tenant, token, key_version, ciphertext, expires_at",
                )?
                .query_row(params![tenant, token, now], |r| {
                    Ok(CvcRow {
                        tenant: r.get(0)?,
                        token: r.get(1)?,
                        key_version: u32::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                        ciphertext: r.get(3)?,
                        expires_at: r.get(4)?,
                    })
                })
                .optional()?,
            ),
            Op::ExpireCvc { tenant, token, now } => OpOutput::Affected(
                conn.prepare_cached("DELETE FROM cvcs WHERE tenant = ?1 AND token = ?2 AND expires_at <= ?3")?
                    .execute(params![tenant, token, now])? as u64,
            ),
            Op::InsertApiKey(k) => OpOutput::Affected(conn.prepare_cached(
                "INSERT INTO api_keys (id, tenant, name, roles, key_version, hash, created_at, revoked_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL)",
            )?
            .execute(params![k.id, k.tenant, k.name, k.roles.join(","), i64::from(k.key_version), k.hash, k.created_at])?
                as u64),
            Op::RevokeApiKey { tenant, id, now } => OpOutput::Affected(
                conn.prepare_cached(
                    "UPDATE api_keys SET revoked_at = ?1 WHERE tenant = ?2 AND id = ?3 AND revoked_at IS NULL",
                )?
                .execute(params![now, tenant, id])? as u64,
            ),
            Op::InsertKey(k) => OpOutput::Affected(
                conn.prepare_cached("INSERT INTO keys (purpose, version, state, created_at, wrapped) VALUES (?1, ?2, ?3, ?4, ?5)")?
                    .execute(params![k.purpose, i64::from(k.version), k.state, k.created_at, k.wrapped])? as u64,
            ),
            Op::SetMeta { key, value } => OpOutput::Affected(
                conn.prepare_cached(
                    "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )?
                .execute(params![key, value])? as u64,
            ),
            Op::Tls(op) => crate::tls::apply_sqlite(conn, op)?,
            Op::Webhook(op) => crate::webhooks::apply_sqlite(conn, op)?,
            Op::RewrapDek { tenant, token, from_version, to_version, wrapped_dek } => OpOutput::Affected(
                conn.prepare_cached(&sqlite_sql(crate::store::REWRAP_DEK_SQL))?
                    .execute(params![i64::from(*to_version), wrapped_dek, tenant, token, i64::from(*from_version)])?
                    as u64,
            ),
            Op::Refingerprint { tenant, token, from_version, to_version, fingerprint } => OpOutput::Affected(
                conn.prepare_cached(&sqlite_sql(crate::store::REFINGERPRINT_SQL))?
                    .execute(params![i64::from(*to_version), fingerprint, tenant, token, i64::from(*from_version)])?
                    as u64,
            ),
            Op::SetKeyState { purpose, version, state } => OpOutput::Affected(
                conn.prepare_cached(&sqlite_sql(crate::store::SET_KEY_STATE_SQL))?
                    .execute(params![state, purpose, i64::from(*version)])? as u64,
            ),
            Op::DestroyKey { purpose, version } => OpOutput::Affected(
                conn.prepare_cached(&sqlite_sql(&crate::store::destroy_key_sql(purpose)))?
                    .execute(params![Vec::<u8>::new(), purpose, i64::from(*version)])? as u64,
            ),
            Op::PruneAudit { upto_seq, last_hash } => {
                let upto = i64::try_from(*upto_seq).unwrap_or(i64::MAX);
                conn.prepare_cached("INSERT INTO audit_pruned (id, upto_seq, last_hash) VALUES (1, ?1, ?2) ON CONFLICT (id) DO UPDATE SET upto_seq = excluded.upto_seq, last_hash = excluded.last_hash")?
                    .execute(params![upto, last_hash.as_slice()])?;
                OpOutput::Affected(
                    conn.prepare_cached("DELETE FROM audit_events WHERE seq <= ?1")?
                        .execute(params![upto])? as u64,
                )
            }
            Op::SetDrainCursor { name, seq } => OpOutput::Affected(
                conn.prepare_cached(
                    "INSERT INTO audit_drains (name, delivered_seq) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET delivered_seq = excluded.delivered_seq WHERE excluded.delivered_seq > audit_drains.delivered_seq",
                )?
                .execute(params![name, i64::try_from(*seq).unwrap_or(i64::MAX)])? as u64,
            ),
            Op::ForgetDrain { name } => OpOutput::Affected(
                conn.prepare_cached("DELETE FROM audit_drains WHERE name = ?1")?
                    .execute(params![name])? as u64,
            ),
            Op::AppendTreeHashes { first_index, hashes } => {
                let mut st = conn.prepare_cached("INSERT INTO audit_tree (idx, hash) VALUES (?1, ?2)")?;
                for (k, h) in hashes.iter().enumerate() {
                    let idx = first_index.saturating_add(k as u64);
                    st.execute(params![i64::try_from(idx).unwrap_or(i64::MAX), h.as_slice()])?;
                }
                OpOutput::Affected(hashes.len() as u64)
            }
            Op::InsertCheckpoint(c) => OpOutput::Affected(
                conn.prepare_cached(
                    "INSERT INTO audit_checkpoints (tree_size, root, note, created_at) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![
                    i64::try_from(c.tree_size).unwrap_or(i64::MAX),
                    c.root.as_slice(),
                    c.note,
                    c.created_at
                ])? as u64,
            ),
        };
        out.push(o);
    }
    Ok(out)
}
