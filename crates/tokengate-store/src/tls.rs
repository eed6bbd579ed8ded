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
use crate::model::{AcmeAccountRow, AcmeDomainRow, OpOutput, TlsCertRow, TlsDomainRow, TlsOp};
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

const PUT_ACME_DOMAIN: &str = "INSERT INTO acme_domains (domain, status, cert_name, last_error, \
    next_attempt_at, failures, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
    ON CONFLICT (domain) DO UPDATE SET status = excluded.status, cert_name = excluded.cert_name, \
    last_error = excluded.last_error, next_attempt_at = excluded.next_attempt_at, \
    failures = excluded.failures, updated_at = excluded.updated_at";
const DELETE_ACME_DOMAIN: &str = "DELETE FROM acme_domains WHERE domain = $1";
const PUT_ACME_CHALLENGE: &str = "INSERT INTO acme_challenges (token, key_authorization, expires_at) \
    VALUES ($1, $2, $3) ON CONFLICT (token) DO UPDATE SET key_authorization = excluded.key_authorization, \
    expires_at = excluded.expires_at";
const DELETE_ACME_CHALLENGE: &str =
    "DELETE FROM acme_challenges WHERE token = $1 OR expires_at <= $2";
const CLAIM_ACME_DOMAIN: &str =
    "UPDATE acme_domains SET next_attempt_at = $3 WHERE domain = $1 AND next_attempt_at = $2";
/// TLS-ALPN-01 answers share the HTTP-01 table under this token prefix.
/// HTTP-01 serves only base64url tokens (`routes/acme.rs` in the server),
/// which never contain the `/`, so these rows are not served over HTTP.
pub const ACME_ALPN_TOKEN_PREFIX: &str = "tls-alpn-01/";
const INSERT_ACME_ACCOUNT: &str = "INSERT INTO acme_accounts (directory_url, kek_version, wrapped_dek, \
    sealed_credentials, created_at) VALUES ($1, $2, $3, $4, $5)";
const ACME_DOMAIN_COLUMNS: &str =
    "domain, status, cert_name, last_error, next_attempt_at, failures, updated_at";

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
        TlsOp::PutAcmeDomain(a) => prepare(PUT_ACME_DOMAIN)?.execute(params![
            a.domain,
            a.status,
            a.cert_name,
            a.last_error,
            a.next_attempt_at,
            i64::from(a.failures),
            a.updated_at
        ])?,
        TlsOp::DeleteAcmeDomain { domain } => {
            prepare(DELETE_ACME_DOMAIN)?.execute(params![domain])?
        }
        TlsOp::PutAcmeChallenge {
            token,
            key_authorization,
            expires_at,
        } => prepare(PUT_ACME_CHALLENGE)?.execute(params![token, key_authorization, expires_at])?,
        TlsOp::DeleteAcmeChallenge { token, now } => {
            prepare(DELETE_ACME_CHALLENGE)?.execute(params![token, now])?
        }
        TlsOp::ClaimAcmeDomain {
            domain,
            seen,
            until,
        } => prepare(CLAIM_ACME_DOMAIN)?.execute(params![domain, seen, until])?,
        TlsOp::InsertAcmeAccount(a) => prepare(INSERT_ACME_ACCOUNT)?.execute(params![
            a.directory_url,
            i64::from(a.kek_version),
            a.wrapped_dek,
            a.sealed_credentials,
            a.created_at
        ])?,
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
        TlsOp::PutAcmeDomain(a) => {
            sqlx::query(PUT_ACME_DOMAIN)
                .bind(a.domain.as_str())
                .bind(a.status.as_str())
                .bind(a.cert_name.as_deref())
                .bind(a.last_error.as_deref())
                .bind(a.next_attempt_at)
                .bind(i64::from(a.failures))
                .bind(a.updated_at)
                .execute(&mut *conn)
                .await?
        }
        TlsOp::DeleteAcmeDomain { domain } => {
            sqlx::query(DELETE_ACME_DOMAIN)
                .bind(domain.as_str())
                .execute(&mut *conn)
                .await?
        }
        TlsOp::PutAcmeChallenge {
            token,
            key_authorization,
            expires_at,
        } => {
            sqlx::query(PUT_ACME_CHALLENGE)
                .bind(token.as_str())
                .bind(key_authorization.as_str())
                .bind(*expires_at)
                .execute(&mut *conn)
                .await?
        }
        TlsOp::DeleteAcmeChallenge { token, now } => {
            sqlx::query(DELETE_ACME_CHALLENGE)
                .bind(token.as_str())
                .bind(*now)
                .execute(&mut *conn)
                .await?
        }
        TlsOp::ClaimAcmeDomain {
            domain,
            seen,
            until,
        } => {
            sqlx::query(CLAIM_ACME_DOMAIN)
                .bind(domain.as_str())
                .bind(*seen)
                .bind(*until)
                .execute(&mut *conn)
                .await?
        }
        TlsOp::InsertAcmeAccount(a) => {
            sqlx::query(INSERT_ACME_ACCOUNT)
                .bind(a.directory_url.as_str())
                .bind(i64::from(a.kek_version))
                .bind(a.wrapped_dek.as_slice())
                .bind(a.sealed_credentials.as_slice())
                .bind(a.created_at)
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

fn acme_domain_row(r: &AnyRow) -> Result<AcmeDomainRow, StoreError> {
    Ok(AcmeDomainRow {
        domain: r.try_get(0)?,
        status: r.try_get(1)?,
        cert_name: r.try_get(2)?,
        last_error: r.try_get(3)?,
        next_attempt_at: r.try_get(4)?,
        failures: u32::try_from(r.try_get::<i64, _>(5)?)
            .map_err(|_| StoreError::Corrupt("acme failures out of range".into()))?,
        updated_at: r.try_get(6)?,
    })
}

impl Store {
    /// Every domain under ACME management, by name.
    pub async fn acme_domains(&self) -> Result<Vec<AcmeDomainRow>, StoreError> {
        let sql = format!("SELECT {ACME_DOMAIN_COLUMNS} FROM acme_domains ORDER BY domain");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(acme_domain_row).collect()
    }

    /// The HTTP-01 answer for `token`, if it has not expired at `now`.
    pub async fn acme_challenge(
        &self,
        token: &str,
        now: i64,
    ) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT key_authorization FROM acme_challenges WHERE token = $1 AND expires_at > $2",
        )
        .bind(token)
        .bind(now)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// Every TLS-ALPN-01 answer not expired at `now`: `(domain, hex SHA-256
    /// of the key authorization)`.
    pub async fn acme_alpn_challenges(
        &self,
        now: i64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT token, key_authorization FROM acme_challenges WHERE token LIKE $1 AND expires_at > $2",
        )
        .bind(format!("{ACME_ALPN_TOKEN_PREFIX}%"))
        .bind(now)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let token: String = r.try_get(0)?;
                let digest: String = r.try_get(1)?;
                Ok((
                    token
                        .strip_prefix(ACME_ALPN_TOKEN_PREFIX)
                        .unwrap_or(&token)
                        .to_owned(),
                    digest,
                ))
            })
            .collect()
    }

    /// The account for an ACME directory.
    pub async fn acme_account(
        &self,
        directory_url: &str,
    ) -> Result<Option<AcmeAccountRow>, StoreError> {
        let row = sqlx::query(
            "SELECT directory_url, kek_version, wrapped_dek, sealed_credentials, created_at \
             FROM acme_accounts WHERE directory_url = $1",
        )
        .bind(directory_url)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| {
            Ok(AcmeAccountRow {
                directory_url: r.try_get(0)?,
                kek_version: u32::try_from(r.try_get::<i64, _>(1)?)
                    .map_err(|_| StoreError::Corrupt("acme kek_version out of range".into()))?,
                wrapped_dek: r.try_get(2)?,
                sealed_credentials: r.try_get(3)?,
                created_at: r.try_get(4)?,
            })
        })
        .transpose()
    }

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
