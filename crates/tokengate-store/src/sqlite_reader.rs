//! Reads on SQLite that bypass sqlx: the point reads of the card path
//! (reveal's record, the deterministic-token lookup) and the Merkle
//! checkpointer's bulk read.
//!
//! Through sqlx a read is a pool checkout, a hop to the connection's worker
//! thread and back, and a copy of every value into an `Any` row. Here a few
//! dedicated connections with cached prepared statements answer directly.
//!
//! - Point reads run on the calling thread. Each reads one row through a
//!   unique index, and in WAL mode a reader never waits for the writer: it
//!   sees the last committed snapshot. So the read costs microseconds, less
//!   than the hop to another thread would (measured in docs/BENCHMARKS.md,
//!   "Point reads without sqlx").
//! - The checkpointer's page of records runs on a blocking thread, and each
//!   record is hashed in place; only the hashes leave.
//!
//! Every connection is read-only by `PRAGMA query_only` and reads the latest
//! committed snapshot, exactly as the sqlx pool does. A read never sees an
//! unacknowledged write as missing: a job is acknowledged only after its
//! transaction committed.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, TryLockError};

use rusqlite::{Connection, OptionalExtension, Row, params};
use tokengate_audit::merkle::{Hash, leaf_hash};

use crate::StoreError;
use crate::model::TokenRow;
use crate::sqlite_writer::sqlite_sql;

/// Connections in the pool: one per runtime worker on a 2-core machine,
/// plus room for the Merkle checkpointer's bulk read at the same time.
const CONNECTIONS: usize = 4;

/// Busy timeout of a reader. In WAL mode a reader waits only while another
/// connection recovers the WAL index after a crash; keep such a wait short
/// because point reads run on a runtime worker.
const BUSY_TIMEOUT_MS: u32 = 2_000;

/// The point reads' SQL in SQLite's `?N` form, converted once (they run
/// on every reveal).
static GET_TOKEN_SQLITE: LazyLock<String> =
    LazyLock::new(|| sqlite_sql(crate::store::GET_TOKEN_SQL));
static FIND_DETERMINISTIC_SQLITE: LazyLock<String> =
    LazyLock::new(|| sqlite_sql(crate::store::FIND_DETERMINISTIC_SQL));

fn db_err(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

fn poisoned() -> StoreError {
    StoreError::Unavailable("reader lock poisoned".into())
}

#[derive(Clone, Debug)]
pub(crate) struct SqliteReader {
    conns: Arc<[Mutex<Connection>]>,
    next: Arc<AtomicUsize>,
}

impl SqliteReader {
    pub(crate) fn open(path: &Path) -> Result<SqliteReader, StoreError> {
        let mut conns = Vec::with_capacity(CONNECTIONS);
        for _ in 0..CONNECTIONS {
            let conn =
                Connection::open(path).map_err(|e| StoreError::Unavailable(e.to_string()))?;
            // A small page cache: SQLite drops a reader's whole cache
            // whenever another connection committed since its last read,
            // which under write load is before nearly every read, and the
            // drop costs time in proportion to the cache.
            conn.execute_batch(&format!(
                "PRAGMA query_only = ON; PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}; \
                 PRAGMA cache_size = -512;"
            ))
            .map_err(db_err)?;
            conn.set_prepared_statement_cache_capacity(16);
            conns.push(Mutex::new(conn));
        }
        Ok(SqliteReader {
            conns: conns.into(),
            next: Arc::default(),
        })
    }

    /// A free connection if there is one, else wait for one (round robin).
    fn conn(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.conns.len();
        for i in 0..n {
            match self.conns[(start + i) % n].try_lock() {
                Ok(g) => return Ok(g),
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Poisoned(_)) => return Err(poisoned()),
            }
        }
        self.conns[start % n].lock().map_err(|_| poisoned())
    }

    /// [`Store::get_token`](crate::Store::get_token) on a reader connection.
    pub(crate) fn get_token(
        &self,
        tenant: &str,
        token: &str,
        now: i64,
    ) -> Result<Option<TokenRow>, StoreError> {
        let conn = self.conn()?;
        let mut st = conn.prepare_cached(&GET_TOKEN_SQLITE).map_err(db_err)?;
        st.query_row(params![tenant, token, now], |r| {
            let has_cvc = r.get::<_, i64>(16)? > 0;
            Ok(token_row(r, has_cvc))
        })
        .optional()
        .map_err(db_err)?
        .transpose()
    }

    /// [`Store::find_deterministic`](crate::Store::find_deterministic) on a
    /// reader connection.
    pub(crate) fn find_deterministic(
        &self,
        tenant: &str,
        format: &str,
        fp: &[u8],
    ) -> Result<Option<TokenRow>, StoreError> {
        let conn = self.conn()?;
        let mut st = conn
            .prepare_cached(&FIND_DETERMINISTIC_SQLITE)
            .map_err(db_err)?;
        st.query_row(params![tenant, format, fp], |r| Ok(token_row(r, false)))
            .optional()
            .map_err(db_err)?
            .transpose()
    }

    /// `(seq, RFC 6962 leaf hash of event_json)` of the records after
    /// `after`, in `seq` order, at most `limit`.
    pub(crate) async fn audit_leaf_hashes(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(u64, Hash)>, StoreError> {
        let reader = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.conn()?;
            let mut st = conn
                .prepare_cached(&sqlite_sql(crate::store::AUDIT_EVENT_JSON_SQL))
                .map_err(db_err)?;
            let mut rows = st.query(params![after, limit]).map_err(db_err)?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(db_err)? {
                let seq = u64::try_from(r.get::<_, i64>(0).map_err(db_err)?)
                    .map_err(|_| StoreError::Corrupt("seq".into()))?;
                // The stored text, byte for byte, as the leaf definition says.
                let json = r
                    .get_ref(1)
                    .and_then(|v| v.as_str().map_err(Into::into))
                    .map_err(db_err)?;
                out.push((seq, leaf_hash(json)));
            }
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }
}

fn narrow<T: TryFrom<i64>>(r: &Row<'_>, i: usize, what: &str) -> Result<T, StoreError> {
    let v: i64 = r.get(i).map_err(db_err)?;
    T::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} out of range")))
}

/// A row selected with the token columns of `store::token_columns!`.
fn token_row(r: &Row<'_>, has_cvc: bool) -> Result<TokenRow, StoreError> {
    let get = |i| r.get(i).map_err(db_err);
    let get_bytes = |i| r.get::<_, Vec<u8>>(i).map_err(db_err);
    Ok(TokenRow {
        tenant: get(0)?,
        token: get(1)?,
        format: get(2)?,
        deterministic: r.get::<_, i64>(3).map_err(db_err)? != 0,
        fingerprint: get_bytes(4)?,
        fp_version: narrow(r, 5, "fp_version")?,
        kek_version: narrow(r, 6, "kek_version")?,
        wrapped_dek: get_bytes(7)?,
        ciphertext: get_bytes(8)?,
        brand: get(9)?,
        bin: get(10)?,
        last4: get(11)?,
        exp_month: narrow(r, 12, "exp_month")?,
        exp_year: narrow(r, 13, "exp_year")?,
        metadata: r.get(14).map_err(db_err)?,
        created_at: r.get(15).map_err(db_err)?,
        has_cvc,
    })
}
