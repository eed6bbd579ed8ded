//! A bulk read path for SQLite that bypasses sqlx.
//!
//! The Merkle checkpointer hashes every new audit record: about one record
//! per card operation. Through sqlx each row was copied value by value on
//! sqlx's worker thread, sent over a channel and converted again (≈ 6 % of
//! the server's CPU under a tokenize load, see docs/BENCHMARKS.md). Here a
//! page of records is read on one blocking thread from a dedicated
//! connection and each record is hashed in place; only the hashes leave.
//!
//! The connection is read-only by `PRAGMA query_only` and, in WAL mode,
//! reads the latest committed snapshot, exactly as the sqlx pool does.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, params};
use tokengate_audit::merkle::{Hash, leaf_hash};

use crate::StoreError;
use crate::sqlite_writer::sqlite_sql;

fn db_err(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

#[derive(Clone, Debug)]
pub(crate) struct SqliteReader {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteReader {
    pub(crate) fn open(path: &Path) -> Result<SqliteReader, StoreError> {
        let conn = Connection::open(path).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        conn.execute_batch("PRAGMA query_only = ON; PRAGMA busy_timeout = 10000;")
            .map_err(db_err)?;
        Ok(SqliteReader {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// `(seq, RFC 6962 leaf hash of event_json)` of the records after
    /// `after`, in `seq` order, at most `limit`.
    pub(crate) async fn audit_leaf_hashes(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(u64, Hash)>, StoreError> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let conn = conn
                .lock()
                .map_err(|_| StoreError::Unavailable("reader lock poisoned".into()))?;
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
