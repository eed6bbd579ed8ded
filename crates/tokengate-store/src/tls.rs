//! The TLS certificate store: `tls_certificates` and `tls_domains`.
//!
//! Writes arrive as [`Op::Tls`](crate::Op::Tls) inside a [`Job`](crate::Job),
//! so every change commits together with its audit event, like any other
//! write. [`apply_sqlite`] runs them on the SQLite writer connection,
//! [`apply_any`] on PostgreSQL; both have the same semantics and are covered
//! by the conformance suite. Reads are on [`Store`].
//!
//! Private keys are opaque ciphertext here; this module never sees a key.

use rusqlite::{Connection, params};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::StoreError;
use crate::model::{OpOutput, TlsCertRow, TlsDomainRow, TlsOp};
use crate::store::Store;

const CERT_COLUMNS: &str = "name, source, chain_pem, info_json, not_after, key_format, kek_version, \
    wrapped_dek, key_ciphertext, created_at, updated_at";

const INSERT_CERT: &str = "INSERT INTO tls_certificates (name, source, chain_pem, info_json, not_after, \
    key_format, kek_version, wrapped_dek, key_ciphertext, created_at, updated_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";

const UPDATE_CERT: &str = "UPDATE tls_certificates SET source = $2, chain_pem = $3, info_json = $4, \
    not_after = $5, key_format = $6, kek_version = $7, wrapped_dek = $8, key_ciphertext = $9, \
    updated_at = $10 WHERE name = $1";

const UNMAP_CERT: &str =
    "UPDATE tls_domains SET cert_name = NULL, updated_at = $2 WHERE cert_name = $1";
const DELETE_CERT: &str = "DELETE FROM tls_certificates WHERE name = $1";

const INSERT_DOMAIN_BARE: &str =
    "INSERT INTO tls_domains (domain, cert_name, created_at, updated_at) VALUES ($1, NULL, $2, $3)";
// Written only if the certificate exists (affected = 0 otherwise).
const INSERT_DOMAIN_MAPPED: &str = "INSERT INTO tls_domains (domain, cert_name, created_at, updated_at) \
    SELECT $1, name, $3, $4 FROM tls_certificates WHERE name = $2";

const UPDATE_DOMAIN_BARE: &str =
    "UPDATE tls_domains SET cert_name = NULL, updated_at = $2 WHERE domain = $1";
const UPDATE_DOMAIN_MAPPED: &str = "UPDATE tls_domains SET cert_name = $2, updated_at = $3 \
    WHERE domain = $1 AND EXISTS (SELECT 1 FROM tls_certificates WHERE name = $2)";

const DELETE_DOMAIN: &str = "DELETE FROM tls_domains WHERE domain = $1";

/// The statement with SQLite's numbered parameters (`?N`). SQLite reads
/// `$N` as a *named* parameter and numbers those in order of appearance, so
/// positional binding would be wrong where `$N` appear out of order.
fn numbered(sql: &str) -> String {
    sql.replace('$', "?")
}

/// Runs one certificate-store op on the SQLite writer connection.
pub(crate) fn apply_sqlite(conn: &Connection, op: &TlsOp) -> rusqlite::Result<OpOutput> {
    let prepare = |sql: &str| conn.prepare_cached(&numbered(sql));
    let n = match op {
        TlsOp::InsertCert(c) => prepare(INSERT_CERT)?.execute(params![
            c.name,
            c.source,
            c.chain_pem,
            c.info_json,
            c.not_after,
            c.key_format,
            i64::from(c.kek_version),
            c.wrapped_dek,
            c.key_ciphertext,
            c.created_at,
            c.updated_at
        ])?,
        TlsOp::UpdateCert(c) => prepare(UPDATE_CERT)?.execute(params![
            c.name,
            c.source,
            c.chain_pem,
            c.info_json,
            c.not_after,
            c.key_format,
            i64::from(c.kek_version),
            c.wrapped_dek,
            c.key_ciphertext,
            c.updated_at
        ])?,
        TlsOp::DeleteCert { name, now } => {
            prepare(UNMAP_CERT)?.execute(params![name, now])?;
            prepare(DELETE_CERT)?.execute(params![name])?
        }
        TlsOp::InsertDomain(d) => match &d.cert_name {
            None => prepare(INSERT_DOMAIN_BARE)?.execute(params![
                d.domain,
                d.created_at,
                d.updated_at
            ])?,
            Some(cert) => prepare(INSERT_DOMAIN_MAPPED)?.execute(params![
                d.domain,
                cert,
                d.created_at,
                d.updated_at
            ])?,
        },
        TlsOp::UpdateDomain {
            domain,
            cert_name,
            now,
        } => match cert_name {
            None => prepare(UPDATE_DOMAIN_BARE)?.execute(params![domain, now])?,
            Some(cert) => prepare(UPDATE_DOMAIN_MAPPED)?.execute(params![domain, cert, now])?,
        },
        TlsOp::DeleteDomain { domain } => prepare(DELETE_DOMAIN)?.execute(params![domain])?,
    };
    Ok(OpOutput::Affected(n as u64))
}

/// Runs one certificate-store op through sqlx (PostgreSQL).
pub(crate) async fn apply_any(
    conn: &mut AnyConnection,
    op: &TlsOp,
) -> Result<OpOutput, sqlx::Error> {
    let r = match op {
        TlsOp::InsertCert(c) | TlsOp::UpdateCert(c) => {
            let insert = matches!(op, TlsOp::InsertCert(_));
            let q = sqlx::query(if insert { INSERT_CERT } else { UPDATE_CERT })
                .bind(c.name.as_str())
                .bind(c.source.as_str())
                .bind(c.chain_pem.as_str())
                .bind(c.info_json.as_str())
                .bind(c.not_after)
                .bind(c.key_format.as_str())
                .bind(i64::from(c.kek_version))
                .bind(c.wrapped_dek.as_slice())
                .bind(c.key_ciphertext.as_slice());
            let q = if insert {
                q.bind(c.created_at).bind(c.updated_at)
            } else {
                q.bind(c.updated_at)
            };
            q.execute(&mut *conn).await?
        }
        TlsOp::DeleteCert { name, now } => {
            sqlx::query(UNMAP_CERT)
                .bind(name.as_str())
                .bind(*now)
                .execute(&mut *conn)
                .await?;
            sqlx::query(DELETE_CERT)
                .bind(name.as_str())
                .execute(&mut *conn)
                .await?
        }
        TlsOp::InsertDomain(d) => match &d.cert_name {
            None => {
                sqlx::query(INSERT_DOMAIN_BARE)
                    .bind(d.domain.as_str())
                    .bind(d.created_at)
                    .bind(d.updated_at)
                    .execute(&mut *conn)
                    .await?
            }
            Some(cert) => {
                sqlx::query(INSERT_DOMAIN_MAPPED)
                    .bind(d.domain.as_str())
                    .bind(cert.as_str())
                    .bind(d.created_at)
                    .bind(d.updated_at)
                    .execute(&mut *conn)
                    .await?
            }
        },
        TlsOp::UpdateDomain {
            domain,
            cert_name,
            now,
        } => match cert_name {
            None => {
                sqlx::query(UPDATE_DOMAIN_BARE)
                    .bind(domain.as_str())
                    .bind(*now)
                    .execute(&mut *conn)
                    .await?
            }
            Some(cert) => {
                sqlx::query(UPDATE_DOMAIN_MAPPED)
                    .bind(domain.as_str())
                    .bind(cert.as_str())
                    .bind(*now)
                    .execute(&mut *conn)
                    .await?
            }
        },
        TlsOp::DeleteDomain { domain } => {
            sqlx::query(DELETE_DOMAIN)
                .bind(domain.as_str())
                .execute(&mut *conn)
                .await?
        }
    };
    Ok(OpOutput::Affected(r.rows_affected()))
}

fn cert_row(r: &AnyRow) -> Result<TlsCertRow, StoreError> {
    Ok(TlsCertRow {
        name: r.try_get(0)?,
        source: r.try_get(1)?,
        chain_pem: r.try_get(2)?,
        info_json: r.try_get(3)?,
        not_after: r.try_get(4)?,
        key_format: r.try_get(5)?,
        kek_version: u32::try_from(r.try_get::<i64, _>(6)?)
            .map_err(|_| StoreError::Corrupt("tls kek_version out of range".into()))?,
        wrapped_dek: r.try_get(7)?,
        key_ciphertext: r.try_get(8)?,
        created_at: r.try_get(9)?,
        updated_at: r.try_get(10)?,
    })
}

fn domain_row(r: &AnyRow) -> Result<TlsDomainRow, StoreError> {
    Ok(TlsDomainRow {
        domain: r.try_get(0)?,
        cert_name: r.try_get(1)?,
        created_at: r.try_get(2)?,
        updated_at: r.try_get(3)?,
    })
}

impl Store {
    /// Every certificate, by name.
    pub async fn tls_certificates(&self) -> Result<Vec<TlsCertRow>, StoreError> {
        let sql = format!("SELECT {CERT_COLUMNS} FROM tls_certificates ORDER BY name");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(cert_row).collect()
    }

    /// One certificate by name.
    pub async fn tls_certificate(&self, name: &str) -> Result<Option<TlsCertRow>, StoreError> {
        let sql = format!("SELECT {CERT_COLUMNS} FROM tls_certificates WHERE name = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(cert_row).transpose()
    }

    /// Every domain, by name.
    pub async fn tls_domains(&self) -> Result<Vec<TlsDomainRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT domain, cert_name, created_at, updated_at FROM tls_domains ORDER BY domain",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(domain_row).collect()
    }

    /// One domain.
    pub async fn tls_domain(&self, domain: &str) -> Result<Option<TlsDomainRow>, StoreError> {
        let row = sqlx::query(
            "SELECT domain, cert_name, created_at, updated_at FROM tls_domains WHERE domain = $1",
        )
        .bind(domain)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(domain_row).transpose()
    }
}
