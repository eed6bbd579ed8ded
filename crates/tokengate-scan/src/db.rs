//! `--database`: card numbers stored in SQLite files and PostgreSQL.
//!
//! SQLite: every column of every table (SQLite's types are advisory; a PAN in
//! an INTEGER column is still a PAN), each value read as its bytes. The file
//! is opened read-only.
//! PostgreSQL: text-like columns (`text`, `varchar`, `char`, `json`, `jsonb`,
//! `xml`, `bigint`, `numeric`, arrays) as their text and `bytea` as raw bytes, in base
//! tables of every non-system schema (or the schemas asked for), on a
//! read-only session. Rows are streamed, never loaded whole.
//!
//! A finding's path is `<database>#schema.table.column` (password removed
//! from URLs), its row the SQLite rowid or PostgreSQL ctid, and its line and
//! column are positions inside the value.

use futures::TryStreamExt;
use sqlx::{AssertSqlSafe, Connection, Row};

use crate::detect::Detector;
use crate::scan::{Report, ScanError};
use crate::stream::Located;

/// Which database a `--database` argument names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Path of an SQLite file.
    Sqlite(String),
    /// A PostgreSQL URL.
    Postgres(String),
}

impl Target {
    /// `postgres://…` / `postgresql://…`, `sqlite:PATH` / `sqlite://PATH`, or
    /// a path to an SQLite file.
    pub fn parse(s: &str) -> Target {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Target::Postgres(s.to_string())
        } else if let Some(p) = s.strip_prefix("sqlite://") {
            Target::Sqlite(p.to_string())
        } else if let Some(p) = s.strip_prefix("sqlite:") {
            Target::Sqlite(p.to_string())
        } else {
            Target::Sqlite(s.to_string())
        }
    }

    /// How the target is shown in output: no password.
    pub fn display(&self) -> String {
        match self {
            Target::Sqlite(p) => format!("sqlite:{p}"),
            Target::Postgres(u) => redact_url(u),
        }
    }
}

/// Removes the password from `scheme://user:password@host/…`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let auth_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..auth_end].rfind('@') else {
        return url.to_string();
    };
    let userinfo = &rest[..at];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &userinfo[..colon],
            &rest[at..]
        ),
        None => url.to_string(),
    }
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn db_err(target: &Target) -> impl Fn(sqlx::Error) -> ScanError + '_ {
    move |e| ScanError::Database {
        target: target.display(),
        message: e.to_string(),
    }
}

/// Line and column of `start` inside one value.
fn locate(value: &[u8], start: usize) -> (u64, u64) {
    let before = &value[..start];
    let line = before.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map(|p| p + 1)
        .unwrap_or(0);
    (line, (start - line_start) as u64 + 1)
}

fn scan_value(det: &Detector, value: &[u8], path: &str, row: &str, out: &mut dyn FnMut(Report)) {
    for f in det.find(value) {
        let (line, column) = locate(value, f.start);
        out(Report {
            path: path.to_string(),
            row: Some(row.to_string()),
            located: Located {
                finding: f,
                offset: f.start as u64,
                line,
                column,
            },
        });
    }
}

/// Counters of a database scan.
#[derive(Debug, Default, Clone, Copy)]
pub struct DbStats {
    pub columns: u64,
    pub values: u64,
    pub bytes: u64,
}

/// Scans one database. `schemas` limits PostgreSQL to those schemas (all
/// non-system schemas when empty).
pub fn scan_database(
    det: &Detector,
    target: &Target,
    schemas: &[String],
    out: &mut dyn FnMut(Report),
) -> Result<DbStats, ScanError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ScanError::Database {
            target: target.display(),
            message: e.to_string(),
        })?;
    rt.block_on(async {
        match target {
            Target::Sqlite(path) => scan_sqlite(det, target, path, out).await,
            Target::Postgres(url) => scan_postgres(det, target, url, schemas, out).await,
        }
    })
}

async fn scan_sqlite(
    det: &Detector,
    target: &Target,
    path: &str,
    out: &mut dyn FnMut(Report),
) -> Result<DbStats, ScanError> {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
    if !std::path::Path::new(path).is_file() {
        return Err(ScanError::Database {
            target: target.display(),
            message: "no such file".into(),
        });
    }
    let opts = SqliteConnectOptions::new().filename(path).read_only(true);
    let mut conn = SqliteConnection::connect_with(&opts)
        .await
        .map_err(db_err(target))?;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .fetch_all(&mut conn)
    .await
    .map_err(db_err(target))?;
    let mut stats = DbStats::default();
    let shown = target.display();
    for table in tables {
        let cols: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info(?1)")
            .bind(&table)
            .fetch_all(&mut conn)
            .await
            .map_err(db_err(target))?;
        if cols.is_empty() {
            continue;
        }
        stats.columns += cols.len() as u64;
        let select: Vec<String> = cols
            .iter()
            .map(|c| format!("CAST({} AS BLOB)", quote_ident(c)))
            .collect();
        let paths: Vec<String> = cols
            .iter()
            .map(|c| format!("{shown}#{table}.{c}"))
            .collect();
        // WITHOUT ROWID tables have no rowid; number their rows instead.
        let with_rowid = format!(
            "SELECT rowid, {} FROM {}",
            select.join(", "),
            quote_ident(&table)
        );
        let without = format!(
            "SELECT NULL, {} FROM {}",
            select.join(", "),
            quote_ident(&table)
        );
        let has_rowid = sqlx::query(AssertSqlSafe(format!("{with_rowid} LIMIT 0")))
            .fetch_all(&mut conn)
            .await
            .is_ok();
        let sql = if has_rowid { with_rowid } else { without };
        let mut rows = sqlx::query(AssertSqlSafe(sql)).fetch(&mut conn);
        let mut n = 0u64;
        while let Some(row) = rows.try_next().await.map_err(db_err(target))? {
            n += 1;
            let rowid = row
                .try_get::<Option<i64>, _>(0)
                .ok()
                .flatten()
                .map(|r| r.to_string())
                .unwrap_or_else(|| format!("#{n}"));
            for (i, path) in paths.iter().enumerate() {
                if let Ok(Some(v)) = row.try_get::<Option<Vec<u8>>, _>(i + 1) {
                    stats.values += 1;
                    stats.bytes += v.len() as u64;
                    scan_value(det, &v, path, &rowid, out);
                }
            }
        }
    }
    Ok(stats)
}

async fn scan_postgres(
    det: &Detector,
    target: &Target,
    url: &str,
    schemas: &[String],
    out: &mut dyn FnMut(Report),
) -> Result<DbStats, ScanError> {
    use sqlx::postgres::PgConnection;
    let mut conn = PgConnection::connect(url).await.map_err(db_err(target))?;
    sqlx::query("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        .execute(&mut conn)
        .await
        .map_err(db_err(target))?;
    let cols: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT c.table_schema::text, c.table_name::text, c.column_name::text, c.data_type::text \
         FROM information_schema.columns c \
         JOIN information_schema.tables t \
           ON t.table_schema = c.table_schema AND t.table_name = c.table_name \
         WHERE t.table_type = 'BASE TABLE' \
           AND c.table_schema NOT IN ('pg_catalog', 'information_schema') \
           AND c.table_schema NOT LIKE 'pg\\_toast%' AND c.table_schema NOT LIKE 'pg\\_temp%' \
           AND (cardinality($1::text[]) = 0 OR c.table_schema = ANY($1::text[])) \
           AND c.data_type IN ('text', 'character varying', 'character', 'bytea', 'json', \
                               'jsonb', 'xml', 'bigint', 'numeric', 'ARRAY') \
         ORDER BY c.table_schema, c.table_name, c.ordinal_position",
    )
    .bind(schemas)
    .fetch_all(&mut conn)
    .await
    .map_err(db_err(target))?;

    let mut stats = DbStats::default();
    let shown = target.display();
    // Group columns by table (the query returns them ordered).
    let mut i = 0;
    while i < cols.len() {
        let (schema, table) = (&cols[i].0, &cols[i].1);
        let mut j = i;
        while j < cols.len() && &cols[j].0 == schema && &cols[j].1 == table {
            j += 1;
        }
        let these = &cols[i..j];
        stats.columns += these.len() as u64;
        let select: Vec<String> = these
            .iter()
            .map(|(_, _, c, ty)| {
                if ty == "bytea" {
                    quote_ident(c)
                } else {
                    format!("convert_to({}::text, 'UTF8')", quote_ident(c))
                }
            })
            .collect();
        let paths: Vec<String> = these
            .iter()
            .map(|(s, t, c, _)| format!("{shown}#{s}.{t}.{c}"))
            .collect();
        let sql = format!(
            "SELECT ctid::text, {} FROM {}.{}",
            select.join(", "),
            quote_ident(schema),
            quote_ident(table)
        );
        let mut rows = sqlx::query(AssertSqlSafe(sql)).fetch(&mut conn);
        while let Some(row) = rows.try_next().await.map_err(db_err(target))? {
            let ctid: String = row.try_get(0).unwrap_or_default();
            for (k, path) in paths.iter().enumerate() {
                if let Ok(Some(v)) = row.try_get::<Option<Vec<u8>>, _>(k + 1) {
                    stats.values += 1;
                    stats.bytes += v.len() as u64;
                    scan_value(det, &v, path, &ctid, out);
                }
            }
        }
        i = j;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_redaction() {
        assert_eq!(
            Target::parse("postgres://u:secret@h:5432/db").display(),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            Target::parse("sqlite:/tmp/a.db"),
            Target::Sqlite("/tmp/a.db".into())
        );
        assert_eq!(Target::parse("a.db"), Target::Sqlite("a.db".into()));
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn value_positions() {
        assert_eq!(locate(b"ab\ncd", 4), (2, 2));
        assert_eq!(locate(b"abcd", 0), (1, 1));
    }
}
