//! The store: one implementation over sqlx's `Any` driver for both backends.

use std::path::Path;
use std::sync::Once;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, AssertSqlSafe, Executor, Row};
use tokengate_audit::chain::{ChainHash, GENESIS, link};
use tokengate_audit::{SignedHead, StoredEvent};

use crate::StoreError;
use crate::model::*;
use crate::schema;
use crate::sqlite_reader::SqliteReader;
use crate::sqlite_writer::SqliteWriter;
use crate::wal_sync::Durable;
use std::sync::Arc;

/// Which database is behind a [`Store`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Signs the audit chain head after each committed batch.
pub trait HeadSigner: Send + Sync {
    fn sign(&self, seq: u64, hash: &ChainHash) -> Vec<u8>;
}

/// Handle to the database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite only: the in-process writer (see `sqlite_writer`).
    writer: Option<SqliteWriter>,
    /// SQLite only: bulk reads without sqlx (see `sqlite_reader`).
    reader: Option<SqliteReader>,
}

static DRIVERS: Once = Once::new();

fn to_u32(v: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} out of range")))
}

fn hash32(v: Vec<u8>) -> Result<ChainHash, StoreError> {
    v.try_into()
        .map_err(|_| StoreError::Corrupt("hash is not 32 bytes".into()))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// The columns of a [`TokenRow`], in the order `token_row` and
/// `sqlite_reader::token_row` read them.
macro_rules! token_columns {
    () => {
        "t.tenant, t.token, t.format, t.deterministic, t.fingerprint, t.fp_version, \
         t.kek_version, t.wrapped_dek, t.ciphertext, t.brand, t.bin, t.last4, t.exp_month, t.exp_year, \
         t.metadata, t.created_at"
    };
}
const TOKEN_COLUMNS: &str = token_columns!();

/// One token record, and (column 16) how many unexpired CVCs it holds at `$3`.
pub(crate) const GET_TOKEN_SQL: &str = concat!(
    "SELECT ",
    token_columns!(),
    ", (SELECT COUNT(*) FROM cvcs c WHERE c.tenant = t.tenant AND c.token = t.token \
     AND c.expires_at > $3) FROM tokens t WHERE t.tenant = $1 AND t.token = $2"
);

/// The deterministic token of a format for a fingerprint.
pub(crate) const FIND_DETERMINISTIC_SQL: &str = concat!(
    "SELECT ",
    token_columns!(),
    " FROM tokens t WHERE t.tenant = $1 AND t.format = $2 AND t.fingerprint = $3 \
     AND t.deterministic = 1"
);

fn token_row(r: &AnyRow, has_cvc: bool) -> Result<TokenRow, StoreError> {
    Ok(TokenRow {
        tenant: r.try_get(0)?,
        token: r.try_get(1)?,
        format: r.try_get(2)?,
        deterministic: r.try_get::<i64, _>(3)? != 0,
        fingerprint: r.try_get(4)?,
        fp_version: to_u32(r.try_get(5)?, "fp_version")?,
        kek_version: to_u32(r.try_get(6)?, "kek_version")?,
        wrapped_dek: r.try_get(7)?,
        ciphertext: r.try_get(8)?,
        brand: r.try_get(9)?,
        bin: r.try_get(10)?,
        last4: r.try_get(11)?,
        exp_month: u8::try_from(r.try_get::<i64, _>(12)?)
            .map_err(|_| StoreError::Corrupt("exp_month".into()))?,
        exp_year: u16::try_from(r.try_get::<i64, _>(13)?)
            .map_err(|_| StoreError::Corrupt("exp_year".into()))?,
        metadata: r.try_get(14)?,
        created_at: r.try_get(15)?,
        has_cvc,
    })
}

/// An `audit_events` row selected as `seq, event_json, prev_hash, hash`.
fn stored_event(r: &AnyRow) -> Result<StoredEvent, StoreError> {
    Ok(StoredEvent {
        seq: u64::try_from(r.try_get::<i64, _>(0)?)
            .map_err(|_| StoreError::Corrupt("seq".into()))?,
        event_json: r.try_get(1)?,
        prev_hash: hash32(r.try_get(2)?)?,
        hash: hash32(r.try_get(3)?)?,
    })
}

fn api_key_row(r: &AnyRow) -> Result<ApiKeyRow, StoreError> {
    let roles: String = r.try_get(3)?;
    Ok(ApiKeyRow {
        id: r.try_get(0)?,
        tenant: r.try_get(1)?,
        name: r.try_get(2)?,
        roles: roles
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        key_version: to_u32(r.try_get(4)?, "key_version")?,
        hash: r.try_get(5)?,
        created_at: r.try_get(6)?,
        revoked_at: r.try_get(7)?,
    })
}

impl Store {
    /// Connect to `url` (`sqlite://PATH` or `postgres://…`) and apply migrations.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        Self::connect_with_schema(url, None).await
    }

    /// Open (creating if missing) the SQLite database at `path`.
    pub async fn open_sqlite(path: &Path) -> Result<Store, StoreError> {
        Self::connect(&format!("sqlite://{}?mode=rwc", path.display())).await
    }

    /// Connect to PostgreSQL using `schema` (created if missing) as the search
    /// path; used to give every test its own schema.
    pub async fn connect_with_schema(url: &str, schema: Option<&str>) -> Result<Store, StoreError> {
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        if let Some(s) = schema
            && !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(StoreError::Database("invalid schema name".into()));
        }
        let schema_owned = schema.map(str::to_owned);
        let opts = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Sqlite => 8,
                Backend::Postgres => 16,
            })
            .acquire_timeout(Duration::from_secs(10))
            // A pooled PostgreSQL connection can go stale (server restart,
            // failover): check it before use. An embedded SQLite connection
            // cannot, and the check is one more round trip to sqlx's worker
            // thread on every read.
            .test_before_acquire(backend == Backend::Postgres)
            .after_connect(move |conn, _meta| {
                let schema = schema_owned.clone();
                Box::pin(async move {
                    match backend {
                        Backend::Sqlite => {
                            // WAL for concurrent readers; FULL so an acknowledged
                            // commit survives power loss, not only a crash;
                            // secure_delete so deleted DEKs are overwritten.
                            conn.execute(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                                 PRAGMA busy_timeout = 10000; PRAGMA secure_delete = ON; \
                                 PRAGMA foreign_keys = ON; PRAGMA cache_size = -32768;",
                            )
                            .await?;
                        }
                        Backend::Postgres => {
                            if let Some(s) = schema {
                                conn.execute(sqlx::raw_sql(AssertSqlSafe(format!(
                                    "CREATE SCHEMA IF NOT EXISTS {s}; SET search_path TO {s}"
                                ))))
                                .await?;
                            }
                        }
                    }
                    Ok(())
                })
            });
        let pool = opts
            .connect(url)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let mut store = Store {
            pool,
            backend,
            writer: None,
            reader: None,
        };
        store.migrate().await?;
        if backend == Backend::Sqlite {
            let path = url
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:");
            let path = path.split('?').next().unwrap_or(path);
            store.writer = Some(SqliteWriter::open(Path::new(path))?);
            store.reader = Some(SqliteReader::open(Path::new(path))?);
        }
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Apply pending migrations in one transaction. On PostgreSQL an advisory
    /// lock makes nodes that start together take turns.
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        conn.execute(self.begin_sql()).await?;
        match self.migrate_in(&mut conn).await {
            Ok(()) => {
                conn.execute("COMMIT").await?;
                Ok(())
            }
            Err(e) => {
                let _ = conn.execute("ROLLBACK").await;
                Err(e)
            }
        }
    }

    async fn migrate_in(&self, conn: &mut AnyConnection) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            conn.execute("SELECT pg_advisory_xact_lock(7392841)")
                .await?;
        }
        conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            .await?;
        let current: i64 = sqlx::query("SELECT value FROM meta WHERE key = 'schema_version'")
            .fetch_optional(&mut *conn)
            .await?
            .map(|r| r.try_get::<String, _>(0))
            .transpose()?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        for (version, stmts) in schema::migrations(self.backend) {
            if version <= current {
                continue;
            }
            for s in &stmts {
                conn.execute(sqlx::raw_sql(AssertSqlSafe(s.clone())))
                    .await?;
            }
            sqlx::query(
                "INSERT INTO meta (key, value) VALUES ('schema_version', $1) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .bind(version.to_string())
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    fn begin_sql(&self) -> &'static str {
        match self.backend {
            // Take the write lock up front: no deadlock between two writers
            // that both started by reading.
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        }
    }

    // ---- reads ------------------------------------------------------------

    /// A token record with whether an unexpired CVC is held for it at `now`.
    pub async fn get_token(
        &self,
        tenant: &str,
        token: &str,
        now: i64,
    ) -> Result<Option<TokenRow>, StoreError> {
        if let Some(reader) = &self.reader {
            return reader.get_token(tenant, token, now);
        }
        let row = sqlx::query(GET_TOKEN_SQL)
            .bind(tenant)
            .bind(token)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            let has_cvc = r.try_get::<i64, _>(16)? > 0;
            token_row(&r, has_cvc)
        })
        .transpose()
    }

    /// Tokens of `tenant` whose fingerprint is `fp` (at most `limit`).
    pub async fn find_by_fingerprint(
        &self,
        tenant: &str,
        fp: &[u8],
        limit: i64,
    ) -> Result<Vec<TokenRow>, StoreError> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens t WHERE t.tenant = $1 AND t.fingerprint = $2 \
             ORDER BY t.created_at, t.token LIMIT $3"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(tenant)
            .bind(fp.to_vec())
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| token_row(r, false)).collect()
    }

    /// The deterministic token of `format` for fingerprint `fp`, if one exists.
    pub async fn find_deterministic(
        &self,
        tenant: &str,
        format: &str,
        fp: &[u8],
    ) -> Result<Option<TokenRow>, StoreError> {
        if let Some(reader) = &self.reader {
            return reader.find_deterministic(tenant, format, fp);
        }
        let row = sqlx::query(FIND_DETERMINISTIC_SQL)
            .bind(tenant)
            .bind(format)
            .bind(fp.to_vec())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| token_row(&r, false)).transpose()
    }

    /// How many stored rows use each key version, per purpose (purposes
    /// tracked by [`key_usage_columns`](crate::key_usage_columns)).
    pub async fn key_usage(&self) -> Result<Vec<KeyUsage>, StoreError> {
        let mut parts = Vec::new();
        for purpose in ["data", "fingerprint", "cvc", "api_key", "tls_key"] {
            for (table, column) in crate::key_usage_columns(purpose) {
                parts.push(format!(
                    "SELECT '{purpose}' AS purpose, {column} AS version, COUNT(*) AS n FROM {table} GROUP BY {column}"
                ));
            }
        }
        let sql = parts.join(" UNION ALL ");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        let mut out: Vec<KeyUsage> = Vec::new();
        for r in &rows {
            let purpose: String = r.try_get(0)?;
            let version = to_u32(r.try_get(1)?, "key version")?;
            let n: i64 = r.try_get(2)?;
            match out
                .iter_mut()
                .find(|u| u.purpose == purpose && u.version == version)
            {
                Some(u) => u.records += n,
                None => out.push(KeyUsage {
                    purpose,
                    version,
                    records: n,
                }),
            }
        }
        out.sort_by(|a, b| (&a.purpose, a.version).cmp(&(&b.purpose, b.version)));
        Ok(out)
    }

    /// Records whose `column` is `version`, after `(tenant, token)` in
    /// primary-key order, at most `limit`: one batch of a re-keying job.
    pub async fn tokens_on_version(
        &self,
        column: RekeyColumn,
        version: u32,
        after: Option<(&str, &str)>,
        limit: i64,
    ) -> Result<Vec<TokenRow>, StoreError> {
        let col = column.column();
        let (tenant, token) = after.unwrap_or(("", ""));
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens t WHERE t.{col} = $1 AND (t.tenant, t.token) > ($2, $3) \
             ORDER BY t.{col}, t.tenant, t.token LIMIT $4"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(i64::from(version))
            .bind(tenant)
            .bind(token)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| token_row(r, false)).collect()
    }

    /// [`tokens_on_version`](Self::tokens_on_version) for a DEK rewrap:
    /// only the four columns it needs.
    pub async fn deks_on_version(
        &self,
        version: u32,
        after: Option<(&str, &str)>,
        limit: i64,
    ) -> Result<Vec<DekRow>, StoreError> {
        let (tenant, token) = after.unwrap_or(("", ""));
        let rows = sqlx::query(
            "SELECT tenant, token, kek_version, wrapped_dek FROM tokens WHERE kek_version = $1 \
             AND (tenant, token) > ($2, $3) ORDER BY kek_version, tenant, token LIMIT $4",
        )
        .bind(i64::from(version))
        .bind(tenant)
        .bind(token)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DekRow {
                    tenant: r.try_get(0)?,
                    token: r.try_get(1)?,
                    kek_version: to_u32(r.try_get(2)?, "kek version")?,
                    wrapped_dek: r.try_get(3)?,
                })
            })
            .collect()
    }

    pub async fn count_tokens(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT COUNT(*) FROM tokens")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?)
    }

    /// The stored CVC row (tests and sweeps only; reveal uses [`Op::TakeCvc`]).
    pub async fn get_cvc(&self, tenant: &str, token: &str) -> Result<Option<CvcRow>, StoreError> {
        let row = sqlx::query(
            "SELECT tenant, token, key_version, ciphertext, expires_at FROM cvcs WHERE tenant = $1 AND token = $2",
        )
        .bind(tenant)
        .bind(token)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| cvc_row(&r)).transpose()
    }

    /// CVCs that have expired at `now` (oldest first).
    pub async fn expired_cvcs(
        &self,
        now: i64,
        limit: i64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT tenant, token FROM cvcs WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    pub async fn get_api_key(&self, id: &str) -> Result<Option<ApiKeyRow>, StoreError> {
        let row = sqlx::query(
            "SELECT id, tenant, name, roles, key_version, hash, created_at, revoked_at FROM api_keys WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| api_key_row(&r)).transpose()
    }

    pub async fn list_api_keys(&self, tenant: &str) -> Result<Vec<ApiKeyRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, tenant, name, roles, key_version, hash, created_at, revoked_at FROM api_keys \
             WHERE tenant = $1 ORDER BY created_at, id",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(api_key_row).collect()
    }

    pub async fn keys(&self) -> Result<Vec<KeyRow>, StoreError> {
        let rows = sqlx::query("SELECT purpose, version, state, created_at, wrapped FROM keys ORDER BY purpose, version")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(KeyRow {
                    purpose: r.try_get(0)?,
                    version: to_u32(r.try_get(1)?, "key version")?,
                    state: r.try_get(2)?,
                    created_at: r.try_get(3)?,
                    wrapped: r.try_get(4)?,
                })
            })
            .collect()
    }

    pub async fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT value FROM meta WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// Audit records with `seq > after`, in order, at most `limit`.
    pub async fn audit_events(
        &self,
        after: u64,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let after = i64::try_from(after).map_err(|_| StoreError::Corrupt("seq".into()))?;
        let rows = sqlx::query(
            "SELECT seq, event_json, prev_hash, hash FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stored_event).collect()
    }

    /// `(seq, RFC 6962 leaf hash)` of the audit records after `after`, in
    /// `seq` order, at most `limit`: what the Merkle checkpointer needs,
    /// without the records themselves.
    pub async fn audit_leaf_hashes(
        &self,
        after: u64,
        limit: i64,
    ) -> Result<Vec<(u64, tokengate_audit::merkle::Hash)>, StoreError> {
        let after = i64::try_from(after).map_err(|_| StoreError::Corrupt("seq".into()))?;
        if let Some(reader) = &self.reader {
            return reader.audit_leaf_hashes(after, limit).await;
        }
        let rows = sqlx::query(AUDIT_EVENT_JSON_SQL)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let seq = u64::try_from(r.try_get::<i64, _>(0)?)
                    .map_err(|_| StoreError::Corrupt("seq".into()))?;
                let json: String = r.try_get(1)?;
                Ok((seq, tokengate_audit::merkle::leaf_hash(&json)))
            })
            .collect()
    }

    /// Audit records matching `q`, in `seq` order, at most `limit`. Token and
    /// request-id filters use their indexes; time ranges scan in `seq` order
    /// (records are appended in time order, so paging by `after_seq` bounds
    /// each page).
    pub async fn search_audit(
        &self,
        q: &AuditQuery,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut sql = String::from(
            "SELECT seq, event_json, prev_hash, hash FROM audit_events WHERE seq > $1",
        );
        let mut n = 1;
        let mut cond = |sql: &mut String, clause: &str| {
            n += 1;
            sql.push_str(&format!(" AND {clause} ${n}"));
        };
        if q.since_ms.is_some() {
            cond(&mut sql, "ts_ms >=");
        }
        if q.until_ms.is_some() {
            cond(&mut sql, "ts_ms <");
        }
        if q.actor.is_some() {
            cond(&mut sql, "actor =");
        }
        if q.action.is_some() {
            cond(&mut sql, "action =");
        }
        if q.token.is_some() {
            cond(&mut sql, "token =");
        }
        if q.request_id.is_some() {
            cond(&mut sql, "request_id =");
        }
        if q.success.is_some() {
            cond(&mut sql, "outcome =");
        }
        sql.push_str(&format!(" ORDER BY seq LIMIT ${}", n + 1));
        let after = i64::try_from(q.after_seq).map_err(|_| StoreError::Corrupt("seq".into()))?;
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(after);
        for v in [q.since_ms, q.until_ms].into_iter().flatten() {
            query = query.bind(v);
        }
        for v in [&q.actor, &q.action, &q.token, &q.request_id]
            .into_iter()
            .flatten()
        {
            query = query.bind(v.clone());
        }
        if let Some(ok) = q.success {
            query = query.bind(if ok { "success" } else { "failure" });
        }
        let rows = query.bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(stored_event).collect()
    }

    /// Audit records about `token` or carrying `request_id` (incident response).
    pub async fn audit_events_for(
        &self,
        token: Option<&str>,
        request_id: Option<&str>,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, event_json, prev_hash, hash FROM audit_events \
             WHERE ($1 IS NOT NULL AND token = $1) OR ($2 IS NOT NULL AND request_id = $2) ORDER BY seq",
        )
        .bind(token.map(str::to_owned))
        .bind(request_id.map(str::to_owned))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stored_event).collect()
    }

    /// Stored Merkle-tree hashes at `indexes` (those that exist).
    pub async fn audit_tree_hashes(
        &self,
        indexes: &[u64],
    ) -> Result<std::collections::HashMap<u64, [u8; 32]>, StoreError> {
        let mut out = std::collections::HashMap::with_capacity(indexes.len());
        for chunk in indexes.chunks(200) {
            let mut sql = String::from("SELECT idx, hash FROM audit_tree WHERE idx IN (");
            for k in 0..chunk.len() {
                if k > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!("${}", k + 1));
            }
            sql.push(')');
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for i in chunk {
                q = q
                    .bind(i64::try_from(*i).map_err(|_| StoreError::Corrupt("tree index".into()))?);
            }
            for r in q.fetch_all(&self.pool).await? {
                let idx = u64::try_from(r.try_get::<i64, _>(0)?)
                    .map_err(|_| StoreError::Corrupt("tree index".into()))?;
                out.insert(idx, hash32(r.try_get(1)?)?);
            }
        }
        Ok(out)
    }

    /// Stored Merkle-tree hashes with `idx >= from`, in order, at most `limit`.
    pub async fn audit_tree_range(
        &self,
        from: u64,
        limit: i64,
    ) -> Result<Vec<(u64, [u8; 32])>, StoreError> {
        let from = i64::try_from(from).map_err(|_| StoreError::Corrupt("tree index".into()))?;
        let rows =
            sqlx::query("SELECT idx, hash FROM audit_tree WHERE idx >= $1 ORDER BY idx LIMIT $2")
                .bind(from)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    u64::try_from(r.try_get::<i64, _>(0)?)
                        .map_err(|_| StoreError::Corrupt("tree index".into()))?,
                    hash32(r.try_get(1)?)?,
                ))
            })
            .collect()
    }

    /// Where the audit log was pruned: `(upto_seq, chain hash of that record)`.
    pub async fn audit_pruned(&self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        let row = sqlx::query("SELECT upto_seq, last_hash FROM audit_pruned WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok((
                u64::try_from(r.try_get::<i64, _>(0)?)
                    .map_err(|_| StoreError::Corrupt("pruned seq".into()))?,
                hash32(r.try_get(1)?)?,
            ))
        })
        .transpose()
    }

    /// The last audit record with `ts_ms < before_ms` (its seq), if any.
    pub async fn last_audit_seq_before(&self, before_ms: i64) -> Result<Option<u64>, StoreError> {
        let row = sqlx::query("SELECT MAX(seq) FROM audit_events WHERE ts_ms < $1")
            .bind(before_ms)
            .fetch_one(&self.pool)
            .await?;
        Ok(row
            .try_get::<Option<i64>, _>(0)?
            .map(|v| u64::try_from(v).unwrap_or(0)))
    }

    /// The last sequence number drain `name` delivered (0: none yet).
    /// Every drain's cursor: `(name, delivered_seq)`, by name.
    pub async fn drain_cursors(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = sqlx::query("SELECT name, delivered_seq FROM audit_drains ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>(0)?,
                    u64::try_from(r.try_get::<i64, _>(1)?)
                        .map_err(|_| StoreError::Corrupt("drain cursor".into()))?,
                ))
            })
            .collect()
    }

    pub async fn drain_cursor(&self, name: &str) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT delivered_seq FROM audit_drains WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => u64::try_from(r.try_get::<i64, _>(0)?)
                .map_err(|_| StoreError::Corrupt("drain cursor".into())),
            None => Ok(0),
        }
    }

    /// The newest signed checkpoint.
    pub async fn latest_checkpoint(&self) -> Result<Option<CheckpointRow>, StoreError> {
        let row = sqlx::query(
            "SELECT tree_size, root, note, created_at FROM audit_checkpoints ORDER BY tree_size DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(checkpoint_row).transpose()
    }

    /// Checkpoints with `tree_size > after`, smallest first, at most `limit`.
    pub async fn checkpoints(
        &self,
        after: u64,
        limit: i64,
    ) -> Result<Vec<CheckpointRow>, StoreError> {
        let after = i64::try_from(after).map_err(|_| StoreError::Corrupt("tree size".into()))?;
        let rows = sqlx::query(
            "SELECT tree_size, root, note, created_at FROM audit_checkpoints WHERE tree_size > $1 \
             ORDER BY tree_size LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(checkpoint_row).collect()
    }

    pub async fn audit_head(&self) -> Result<Option<SignedHead>, StoreError> {
        let row = sqlx::query("SELECT seq, hash, signature FROM audit_head WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(SignedHead {
                seq: u64::try_from(r.try_get::<i64, _>(0)?)
                    .map_err(|_| StoreError::Corrupt("seq".into()))?,
                hash: hash32(r.try_get(1)?)?,
                signature: r.try_get(2)?,
            })
        })
        .transpose()
    }

    /// Run raw SQL. For tests that simulate failures and tampering (e.g. a
    /// trigger that makes audit writes fail); never used by the product.
    #[cfg(feature = "test-support")]
    pub async fn execute_raw_for_tests(&self, sql: &str) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        conn.execute(sqlx::raw_sql(AssertSqlSafe(sql.to_owned())))
            .await?;
        Ok(())
    }

    /// The read pool (for read helpers in sibling modules such as `tls`).
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    // ---- writes -----------------------------------------------------------

    /// Commit `jobs` in one transaction. Each job commits entirely or not at
    /// all (savepoints); a job whose op hits a uniqueness conflict is rolled
    /// back alone. If any audit record cannot be written, or the transaction
    /// cannot commit, the whole batch fails: nothing is acknowledged.
    pub async fn commit(
        &self,
        jobs: Vec<Job>,
        signer: Arc<dyn HeadSigner>,
    ) -> Result<Vec<JobResult>, StoreError> {
        let (results, durable) = self.commit_pipelined(jobs, signer).await?;
        durable.wait().await?;
        Ok(results)
    }

    /// [`Store::commit`] without waiting for durability: the transaction has
    /// committed (later commits and reads see it) but may not be on disk until
    /// the returned [`Durable`] resolves. Acknowledge nothing before that.
    /// Lets the group committer build the next batch while this one syncs.
    pub async fn commit_pipelined(
        &self,
        jobs: Vec<Job>,
        signer: Arc<dyn HeadSigner>,
    ) -> Result<(Vec<JobResult>, Durable), StoreError> {
        if let Some(w) = &self.writer {
            return w.commit(jobs, signer).await;
        }
        self.commit_postgres(jobs, signer)
            .await
            .map(|r| (r, Durable::now()))
    }

    /// SQLite only: the in-process writer, for the group committer's own
    /// writer thread.
    pub(crate) fn sqlite_writer(&self) -> Option<&SqliteWriter> {
        self.writer.as_ref()
    }

    /// PostgreSQL commit: durable when COMMIT returns.
    async fn commit_postgres(
        &self,
        jobs: Vec<Job>,
        signer: Arc<dyn HeadSigner>,
    ) -> Result<Vec<JobResult>, StoreError> {
        let signer = signer.as_ref();
        let jobs = jobs.as_slice();
        let mut conn = self.pool.acquire().await?;
        conn.execute(self.begin_sql()).await?;
        match self.commit_in(&mut conn, jobs, signer).await {
            Ok(results) => match conn.execute("COMMIT").await {
                Ok(_) => Ok(results),
                Err(e) => {
                    let _ = conn.execute("ROLLBACK").await;
                    Err(e.into())
                }
            },
            Err(e) => {
                if conn.execute("ROLLBACK").await.is_err() {
                    // The connection's state is unknown: do not reuse it.
                    let _ = conn.detach();
                }
                Err(e)
            }
        }
    }

    async fn commit_in(
        &self,
        conn: &mut AnyConnection,
        jobs: &[Job],
        signer: &dyn HeadSigner,
    ) -> Result<Vec<JobResult>, StoreError> {
        let head_sql = match self.backend {
            Backend::Sqlite => "SELECT seq, hash FROM audit_head WHERE id = 1",
            // Serialises chain appends across nodes sharing the database.
            Backend::Postgres => "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE",
        };
        let (mut seq, mut prev) = match sqlx::query(head_sql).fetch_optional(&mut *conn).await? {
            Some(r) => (
                u64::try_from(r.try_get::<i64, _>(0)?)
                    .map_err(|_| StoreError::Corrupt("seq".into()))?,
                hash32(r.try_get(1)?)?,
            ),
            None => (0, GENESIS),
        };
        let start_seq = seq;
        let mut results: Vec<Option<JobResult>> = vec![None; jobs.len()];

        // Fast path: jobs that only insert a token (and its CVC) or only
        // record events go in with one multi-row INSERT per table. A
        // uniqueness conflict sends them down the per-job path below.
        let simple: Vec<usize> = (0..jobs.len()).filter(|&i| is_simple(&jobs[i])).collect();
        let mut individual: Vec<usize> =
            (0..jobs.len()).filter(|&i| !is_simple(&jobs[i])).collect();
        if !simple.is_empty() {
            conn.execute("SAVEPOINT fast").await?;
            let tokens: Vec<&TokenRow> = simple
                .iter()
                .flat_map(|&i| jobs[i].ops.iter())
                .filter_map(|o| {
                    if let Op::InsertToken(t) = o {
                        Some(t)
                    } else {
                        None
                    }
                })
                .collect();
            let cvcs: Vec<&CvcRow> = simple
                .iter()
                .flat_map(|&i| jobs[i].ops.iter())
                .filter_map(|o| {
                    if let Op::InsertCvc(c) = o {
                        Some(c)
                    } else {
                        None
                    }
                })
                .collect();
            let inserted = async {
                insert_tokens(self.backend, conn, &tokens).await?;
                insert_cvcs(self.backend, conn, &cvcs).await
            }
            .await;
            match inserted {
                Ok(()) => {
                    let mut recs = Vec::new();
                    for &i in &simple {
                        for event in &jobs[i].events {
                            let rec = link(seq, prev, event);
                            seq = rec.seq;
                            prev = rec.hash;
                            recs.push((rec, event));
                        }
                        results[i] = Some(Ok(vec![OpOutput::Affected(1); jobs[i].ops.len()]));
                    }
                    insert_audit(self.backend, conn, &recs)
                        .await
                        .map_err(|e| StoreError::AuditWrite(e.to_string()))?;
                    conn.execute("RELEASE SAVEPOINT fast").await?;
                }
                Err(e) if is_unique_violation(&e) => {
                    conn.execute("ROLLBACK TO SAVEPOINT fast").await?;
                    conn.execute("RELEASE SAVEPOINT fast").await?;
                    individual.extend_from_slice(&simple);
                    individual.sort_unstable();
                }
                Err(e) => return Err(e.into()),
            }
        }

        for i in individual {
            let job = &jobs[i];
            conn.execute("SAVEPOINT job").await?;
            match apply_ops(self.backend, conn, &job.ops).await {
                Ok(outputs) => {
                    let conditional = job
                        .events_if_affected
                        .iter()
                        .filter(|(i, _)| outputs.get(*i).is_some_and(|o| o.affected() > 0))
                        .map(|(_, e)| e);
                    let mut recs = Vec::new();
                    for event in job.events.iter().chain(conditional) {
                        let rec = link(seq, prev, event);
                        seq = rec.seq;
                        prev = rec.hash;
                        recs.push((rec, event));
                    }
                    insert_audit(self.backend, conn, &recs)
                        .await
                        .map_err(|e| StoreError::AuditWrite(e.to_string()))?;
                    conn.execute("RELEASE SAVEPOINT job").await?;
                    results[i] = Some(Ok(outputs));
                }
                Err(OpFailure::Job(e)) => {
                    conn.execute("ROLLBACK TO SAVEPOINT job").await?;
                    conn.execute("RELEASE SAVEPOINT job").await?;
                    results[i] = Some(Err(e));
                }
                Err(OpFailure::Batch(e)) => return Err(e.into()),
            }
        }
        let results: Vec<JobResult> = results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(JobError::Database("job not processed".into()))))
            .collect();
        if seq != start_seq {
            let sig = signer.sign(seq, &prev);
            sqlx::query(
                "INSERT INTO audit_head (id, seq, hash, signature) VALUES (1, $1, $2, $3) \
                 ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, signature = excluded.signature",
            )
            .bind(i64::try_from(seq).map_err(|_| StoreError::Corrupt("seq".into()))?)
            .bind(prev.to_vec())
            .bind(sig)
            .execute(&mut *conn)
            .await
            .map_err(|e| StoreError::AuditWrite(e.to_string()))?;
        }
        Ok(results)
    }
}

fn cvc_row(r: &AnyRow) -> Result<CvcRow, StoreError> {
    Ok(CvcRow {
        tenant: r.try_get(0)?,
        token: r.try_get(1)?,
        key_version: to_u32(r.try_get(2)?, "cvc key_version")?,
        ciphertext: r.try_get(3)?,
        expires_at: r.try_get(4)?,
    })
}

enum OpFailure {
    Job(JobError),
    Batch(sqlx::Error),
}

impl From<sqlx::Error> for OpFailure {
    fn from(e: sqlx::Error) -> Self {
        if is_unique_violation(&e) {
            OpFailure::Job(JobError::Conflict)
        } else {
            OpFailure::Batch(e)
        }
    }
}

/// Jobs that the multi-row fast path can take: token and CVC inserts and
/// unconditional events only.
fn is_simple(job: &Job) -> bool {
    job.events_if_affected.is_empty()
        && job
            .ops
            .iter()
            .all(|o| matches!(o, Op::InsertToken(_) | Op::InsertCvc(_)))
}

/// Rows per multi-row INSERT (keeps bound parameters far below both
/// backends' limits).
const ROWS_PER_INSERT: usize = 200;

/// `($1, …, $n), ($n+1, …)` for `rows` rows of `cols` columns; plain `?`
/// on SQLite, which resolves `$N` names by a linear scan per parameter
/// (quadratic in a multi-row statement) but binds `?` by position.
fn values_clause(backend: Backend, rows: usize, cols: usize) -> String {
    let mut s = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for c in 0..cols {
            if c > 0 {
                s.push_str(", ");
            }
            match backend {
                Backend::Sqlite => s.push('?'),
                Backend::Postgres => {
                    s.push('$');
                    s.push_str(&(r * cols + c + 1).to_string());
                }
            }
        }
        s.push(')');
    }
    s
}

async fn insert_tokens(
    backend: Backend,
    conn: &mut AnyConnection,
    rows: &[&TokenRow],
) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO tokens (tenant, token, format, deterministic, fingerprint, fp_version, kek_version, \
             wrapped_dek, ciphertext, brand, bin, last4, exp_month, exp_year, metadata, created_at) VALUES {}",
            values_clause(backend, chunk.len(), 16)
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for t in chunk {
            q = q
                .bind(t.tenant.as_str())
                .bind(t.token.as_str())
                .bind(t.format.as_str())
                .bind(i64::from(t.deterministic))
                .bind(t.fingerprint.as_slice())
                .bind(i64::from(t.fp_version))
                .bind(i64::from(t.kek_version))
                .bind(t.wrapped_dek.as_slice())
                .bind(t.ciphertext.as_slice())
                .bind(t.brand.as_str())
                .bind(t.bin.as_str())
                .bind(t.last4.as_str())
                .bind(i64::from(t.exp_month))
                .bind(i64::from(t.exp_year))
                .bind(t.metadata.as_deref())
                .bind(t.created_at);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

async fn insert_cvcs(
    backend: Backend,
    conn: &mut AnyConnection,
    rows: &[&CvcRow],
) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO cvcs (tenant, token, key_version, ciphertext, expires_at) VALUES {}",
            values_clause(backend, chunk.len(), 5)
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for c in chunk {
            q = q
                .bind(c.tenant.as_str())
                .bind(c.token.as_str())
                .bind(i64::from(c.key_version))
                .bind(c.ciphertext.as_slice())
                .bind(c.expires_at);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

async fn insert_audit(
    backend: Backend,
    conn: &mut AnyConnection,
    recs: &[(StoredEvent, &tokengate_audit::AuditEvent)],
) -> Result<(), sqlx::Error> {
    for chunk in recs.chunks(ROWS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO audit_events (seq, ts_ms, action, actor, token, request_id, outcome, event_json, prev_hash, hash) \
             VALUES {}",
            values_clause(backend, chunk.len(), 10)
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for (rec, event) in chunk {
            q = q
                .bind(rec.seq as i64)
                .bind(event.ts_ms)
                .bind(event.action.as_str())
                .bind(event.actor.as_str())
                .bind(event.token.as_ref().map(|t| t.as_str()))
                .bind(event.request_id.as_ref().map(|t| t.as_str()))
                .bind(if event.outcome.is_success() {
                    "success"
                } else {
                    "failure"
                })
                .bind(rec.event_json.as_str())
                .bind(rec.prev_hash.as_slice())
                .bind(rec.hash.as_slice());
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

async fn apply_ops(
    backend: Backend,
    conn: &mut AnyConnection,
    ops: &[Op],
) -> Result<Vec<OpOutput>, OpFailure> {
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let o = match op {
            Op::InsertToken(t) => {
                insert_tokens(backend, conn, &[t]).await?;
                OpOutput::Affected(1)
            }
            Op::InsertCvc(c) => {
                insert_cvcs(backend, conn, &[c]).await?;
                OpOutput::Affected(1)
            }
            Op::DeleteToken { tenant, token } => {
                sqlx::query("DELETE FROM cvcs WHERE tenant = $1 AND token = $2")
                    .bind(tenant.as_str())
                    .bind(token.as_str())
                    .execute(&mut *conn)
                    .await?;
                let r = sqlx::query("DELETE FROM tokens WHERE tenant = $1 AND token = $2")
                    .bind(tenant.as_str())
                    .bind(token.as_str())
                    .execute(&mut *conn)
                    .await?;
                OpOutput::Affected(r.rows_affected())
            }
            Op::TakeCvc { tenant, token, now } => {
                let row = sqlx::query(
                    "DELETE FROM cvcs WHERE tenant = $1 AND token = $2 AND expires_at > $3 \
                     RETURNING tenant, token, key_version, ciphertext, expires_at",
                )
                .bind(tenant.as_str())
                .bind(token.as_str())
                .bind(*now)
                .fetch_optional(&mut *conn)
                .await?;
                OpOutput::Cvc(
                    row.map(|r| cvc_row(&r))
                        .transpose()
                        .map_err(|e| OpFailure::Job(JobError::Database(e.to_string())))?,
                )
            }
            Op::ExpireCvc { tenant, token, now } => {
                let r = sqlx::query(
                    "DELETE FROM cvcs WHERE tenant = $1 AND token = $2 AND expires_at <= $3",
                )
                .bind(tenant.as_str())
                .bind(token.as_str())
                .bind(*now)
                .execute(&mut *conn)
                .await?;
                OpOutput::Affected(r.rows_affected())
            }
            Op::InsertApiKey(k) => {
                let r = sqlx::query(
                    "INSERT INTO api_keys (id, tenant, name, roles, key_version, hash, created_at, revoked_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)",
                )
                .bind(k.id.as_str())
                .bind(k.tenant.as_str())
                .bind(k.name.as_str())
                .bind(k.roles.join(","))
                .bind(i64::from(k.key_version))
                .bind(k.hash.clone())
                .bind(k.created_at)
                .execute(&mut *conn)
                .await?;
                OpOutput::Affected(r.rows_affected())
            }
            Op::RevokeApiKey { tenant, id, now } => {
                let r = sqlx::query(
                    "UPDATE api_keys SET revoked_at = $1 WHERE tenant = $2 AND id = $3 AND revoked_at IS NULL",
                )
                .bind(*now)
                .bind(tenant.as_str())
                .bind(id.as_str())
                .execute(&mut *conn)
                .await?;
                OpOutput::Affected(r.rows_affected())
            }
            Op::InsertKey(k) => {
                let r = sqlx::query(
                    "INSERT INTO keys (purpose, version, state, created_at, wrapped) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(k.purpose.as_str())
                .bind(i64::from(k.version))
                .bind(k.state.as_str())
                .bind(k.created_at)
                .bind(k.wrapped.clone())
                .execute(&mut *conn)
                .await?;
                OpOutput::Affected(r.rows_affected())
            }
            Op::SetMeta { key, value } => {
                let r = sqlx::query(
                    "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )
                .bind(key.as_str())
                .bind(value.as_str())
                .execute(&mut *conn)
                .await?;
                OpOutput::Affected(r.rows_affected())
            }
            Op::Tls(op) => crate::tls::apply_any(conn, op).await?,
            Op::Webhook(op) => crate::webhooks::apply_any(conn, op).await?,
            Op::RewrapDek {
                tenant,
                token,
                from_version,
                to_version,
                wrapped_dek,
            } => {
                let r = sqlx::query(REWRAP_DEK_SQL)
                    .bind(i64::from(*to_version))
                    .bind(wrapped_dek.clone())
                    .bind(tenant.as_str())
                    .bind(token.as_str())
                    .bind(i64::from(*from_version))
                    .execute(&mut *conn)
                    .await?;
                OpOutput::Affected(r.rows_affected())
            }
            Op::Refingerprint {
                tenant,
                token,
                from_version,
                to_version,
                fingerprint,
            } => {
                let r = sqlx::query(REFINGERPRINT_SQL)
                    .bind(i64::from(*to_version))
                    .bind(fingerprint.clone())
                    .bind(tenant.as_str())
                    .bind(token.as_str())
                    .bind(i64::from(*from_version))
                    .execute(&mut *conn)
                    .await?;
                OpOutput::Affected(r.rows_affected())
            }
            Op::SetKeyState {
                purpose,
                version,
                state,
            } => {
                let r = sqlx::query(SET_KEY_STATE_SQL)
                    .bind(state.as_str())
                    .bind(purpose.as_str())
                    .bind(i64::from(*version))
                    .execute(&mut *conn)
                    .await?;
                OpOutput::Affected(r.rows_affected())
            }
            Op::DestroyKey { purpose, version } => {
                let r = sqlx::query(AssertSqlSafe(destroy_key_sql(purpose)))
                    .bind(Vec::<u8>::new())
                    .bind(purpose.as_str())
                    .bind(i64::from(*version))
                    .execute(&mut *conn)
                    .await?;
                OpOutput::Affected(r.rows_affected())
            }
            Op::PruneAudit {
                upto_seq,
                last_hash,
            } => {
                let upto = i64::try_from(*upto_seq).unwrap_or(i64::MAX);
                sqlx::query("INSERT INTO audit_pruned (id, upto_seq, last_hash) VALUES (1, $1, $2) ON CONFLICT (id) DO UPDATE SET upto_seq = excluded.upto_seq, last_hash = excluded.last_hash")
                    .bind(upto)
                    .bind(last_hash.to_vec())
                    .execute(&mut *conn)
                    .await?;
                let r = sqlx::query("DELETE FROM audit_events WHERE seq <= $1")
                    .bind(upto)
                    .execute(&mut *conn)
                    .await?;
                OpOutput::Affected(r.rows_affected())
            }
            Op::SetDrainCursor { name, seq } => {
                let r = sqlx::query(
                    "INSERT INTO audit_drains (name, delivered_seq) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET delivered_seq = excluded.delivered_seq WHERE excluded.delivered_seq > audit_drains.delivered_seq",
                )
                .bind(name.as_str())
                .bind(i64::try_from(*seq).unwrap_or(i64::MAX))
                .execute(&mut *conn)
                .await?;
                OpOutput::Affected(r.rows_affected())
            }
            Op::ForgetDrain { name } => {
                let r = sqlx::query("DELETE FROM audit_drains WHERE name = $1")
                    .bind(name.as_str())
                    .execute(&mut *conn)
                    .await?;
                OpOutput::Affected(r.rows_affected())
            }
            Op::AppendTreeHashes {
                first_index,
                hashes,
            } => {
                // Multi-row inserts: a checkpoint appends ~2 hashes per record.
                for (c, chunk) in hashes.chunks(500).enumerate() {
                    let mut sql = String::from("INSERT INTO audit_tree (idx, hash) VALUES ");
                    for k in 0..chunk.len() {
                        if k > 0 {
                            sql.push(',');
                        }
                        sql.push_str(&format!("(${}, ${})", 2 * k + 1, 2 * k + 2));
                    }
                    let mut q = sqlx::query(AssertSqlSafe(sql));
                    for (k, h) in chunk.iter().enumerate() {
                        let idx = first_index.saturating_add((c * 500 + k) as u64);
                        q = q
                            .bind(i64::try_from(idx).unwrap_or(i64::MAX))
                            .bind(h.to_vec());
                    }
                    q.execute(&mut *conn).await?;
                }
                OpOutput::Affected(hashes.len() as u64)
            }
            Op::InsertCheckpoint(c) => {
                let r = sqlx::query(
                    "INSERT INTO audit_checkpoints (tree_size, root, note, created_at) VALUES ($1, $2, $3, $4)",
                )
                .bind(i64::try_from(c.tree_size).unwrap_or(i64::MAX))
                .bind(c.root.to_vec())
                .bind(c.note.as_str())
                .bind(c.created_at)
                .execute(&mut *conn)
                .await?;
                OpOutput::Affected(r.rows_affected())
            }
        };
        out.push(o);
    }
    Ok(out)
}

/// Compare-and-set rewrap of one record's DEK (`$1` new version, `$2`
/// wrapped DEK, `$3` tenant, `$4` token, `$5` expected old version).
/// The checkpointer's page of records (`audit_leaf_hashes`, both paths).
pub(crate) const AUDIT_EVENT_JSON_SQL: &str =
    "SELECT seq, event_json FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2";

pub(crate) const REWRAP_DEK_SQL: &str = "UPDATE tokens SET kek_version = $1, wrapped_dek = $2 \
     WHERE tenant = $3 AND token = $4 AND kek_version = $5";
/// Compare-and-set re-fingerprint (same parameters as [`REWRAP_DEK_SQL`]).
pub(crate) const REFINGERPRINT_SQL: &str = "UPDATE tokens SET fp_version = $1, fingerprint = $2 \
     WHERE tenant = $3 AND token = $4 AND fp_version = $5";
/// `$1` state, `$2` purpose, `$3` version; never revives a destroyed key.
pub(crate) const SET_KEY_STATE_SQL: &str = "UPDATE keys SET state = $1 \
     WHERE purpose = $2 AND version = $3 AND state <> 'destroyed'";

/// Destroy a key version (`$1` empty bytes, `$2` purpose, `$3` version)
/// unless it is active or a stored row of its purpose uses it.
pub(crate) fn destroy_key_sql(purpose: &str) -> String {
    let mut sql = String::from(
        "UPDATE keys SET state = 'destroyed', wrapped = $1 WHERE purpose = $2 AND version = $3 \
         AND state NOT IN ('active', 'destroyed')",
    );
    for (table, column) in crate::key_usage_columns(purpose) {
        sql.push_str(&format!(
            " AND NOT EXISTS (SELECT 1 FROM {table} WHERE {column} = $3)"
        ));
    }
    sql
}

fn checkpoint_row(r: &AnyRow) -> Result<CheckpointRow, StoreError> {
    Ok(CheckpointRow {
        tree_size: u64::try_from(r.try_get::<i64, _>(0)?)
            .map_err(|_| StoreError::Corrupt("tree size".into()))?,
        root: hash32(r.try_get(1)?)?,
        note: r.try_get(2)?,
        created_at: r.try_get(3)?,
    })
}
