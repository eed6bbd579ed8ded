//! The webhook outbox: `webhook_events` (schema version 7).
//!
//! A verified event is inserted here, in a group-committed job, before the
//! receiver answers 2xx; the delivery workers then move each target's state
//! (`app`, `nats`) from `pending` to `delivered` or `dead`. The unique key
//! `(source, event_id)` is the idempotency check: a second insert of the same
//! event affects no row. Rows leave only when pruned after the retention
//! window, and only once no target still needs them.
//!
//! Writes arrive as [`Op::Webhook`](crate::Op::Webhook); [`apply_sqlite`]
//! runs them on the SQLite writer connection, [`apply_any`] on PostgreSQL.
//! Payloads reach this module already screened for card numbers.

use rusqlite::Connection;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AssertSqlSafe, Row};

use crate::StoreError;
use crate::model::{OpOutput, WebhookDelivery, WebhookEventRow, WebhookOp, WebhookTarget};
use crate::store::Store;

const INSERT: &str = "INSERT INTO webhook_events (source, event_id, event_type, received_at, payload, \
    app_state, app_attempts, app_next_at, nats_state, nats_attempts, nats_next_at) \
    VALUES ($1, $2, $3, $4, $5, $6, 0, $4, $7, 0, $4) ON CONFLICT (source, event_id) DO NOTHING";

const COLUMNS: &str = "seq, source, event_id, event_type, received_at, payload, \
    app_state, app_attempts, app_next_at, app_error, nats_state, nats_attempts, nats_next_at, nats_error";

fn col(target: WebhookTarget) -> &'static str {
    match target {
        WebhookTarget::App => "app",
        WebhookTarget::Nats => "nats",
    }
}

/// `(sql, binds)` per op: every op is one statement; binds are i64 or text.
enum Bind<'a> {
    I(i64),
    T(Option<&'a str>),
    B(&'a [u8]),
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn statement(op: &WebhookOp) -> (String, Vec<Bind<'_>>) {
    match op {
        WebhookOp::Insert(e) => (
            INSERT.to_owned(),
            vec![
                Bind::T(Some(&e.source)),
                Bind::T(Some(&e.event_id)),
                Bind::T(e.event_type.as_deref()),
                Bind::I(e.received_at),
                Bind::B(&e.payload),
                Bind::T(Some(e.app.state.as_str())),
                Bind::T(Some(e.nats.state.as_str())),
            ],
        ),
        WebhookOp::Delivered { seq, target } => (
            format!(
                "UPDATE webhook_events SET {c}_state = 'delivered', {c}_attempts = {c}_attempts + 1, \
                 {c}_error = NULL WHERE seq = $1 AND {c}_state = 'pending'",
                c = col(*target)
            ),
            vec![Bind::I(i(*seq))],
        ),
        WebhookOp::Retry {
            seq,
            target,
            next_at,
            error,
        } => (
            format!(
                "UPDATE webhook_events SET {c}_attempts = {c}_attempts + 1, {c}_next_at = $2, \
                 {c}_error = $3 WHERE seq = $1 AND {c}_state = 'pending'",
                c = col(*target)
            ),
            vec![Bind::I(i(*seq)), Bind::I(*next_at), Bind::T(Some(error))],
        ),
        WebhookOp::Dead { seq, target, error } => (
            format!(
                "UPDATE webhook_events SET {c}_state = 'dead', {c}_attempts = {c}_attempts + 1, \
                 {c}_error = $2 WHERE seq = $1 AND {c}_state = 'pending'",
                c = col(*target)
            ),
            vec![Bind::I(i(*seq)), Bind::T(Some(error))],
        ),
        WebhookOp::Requeue { seq, target, now } => (
            format!(
                "UPDATE webhook_events SET {c}_state = 'pending', {c}_attempts = 0, {c}_next_at = $2, \
                 {c}_error = NULL WHERE {c}_state = 'dead' AND ($1 < 0 OR seq = $1)",
                c = col(*target)
            ),
            vec![Bind::I(seq.map_or(-1, i)), Bind::I(*now)],
        ),
        WebhookOp::Prune { received_before } => (
            "DELETE FROM webhook_events WHERE received_at < $1 \
             AND app_state IN ('delivered', 'none') AND nats_state IN ('delivered', 'none')"
                .to_owned(),
            vec![Bind::I(*received_before)],
        ),
    }
}

/// Runs one webhook op on the SQLite writer connection.
pub(crate) fn apply_sqlite(conn: &Connection, op: &WebhookOp) -> rusqlite::Result<OpOutput> {
    let (sql, binds) = statement(op);
    let mut stmt = conn.prepare_cached(&sql.replace('$', "?"))?;
    for (k, b) in binds.iter().enumerate() {
        match b {
            Bind::I(v) => stmt.raw_bind_parameter(k + 1, v)?,
            Bind::T(v) => stmt.raw_bind_parameter(k + 1, v)?,
            Bind::B(v) => stmt.raw_bind_parameter(k + 1, v)?,
        }
    }
    let n = stmt.raw_execute()?;
    Ok(OpOutput::Affected(n as u64))
}

/// Runs one webhook op through sqlx (PostgreSQL).
pub(crate) async fn apply_any(
    conn: &mut AnyConnection,
    op: &WebhookOp,
) -> Result<OpOutput, sqlx::Error> {
    let (sql, binds) = statement(op);
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for b in binds {
        q = match b {
            Bind::I(v) => q.bind(v),
            Bind::T(v) => q.bind(v),
            Bind::B(v) => q.bind(v),
        };
    }
    let r = q.execute(&mut *conn).await?;
    Ok(OpOutput::Affected(r.rows_affected()))
}

fn delivery(r: &AnyRow, base: usize) -> Result<WebhookDelivery, StoreError> {
    Ok(WebhookDelivery {
        state: r.try_get(base)?,
        attempts: u32::try_from(r.try_get::<i64, _>(base + 1)?)
            .map_err(|_| StoreError::Corrupt("webhook attempts".into()))?,
        next_at: r.try_get(base + 2)?,
        last_error: r.try_get(base + 3)?,
    })
}

fn event_row(r: &AnyRow) -> Result<WebhookEventRow, StoreError> {
    Ok(WebhookEventRow {
        seq: u64::try_from(r.try_get::<i64, _>(0)?)
            .map_err(|_| StoreError::Corrupt("webhook seq".into()))?,
        source: r.try_get(1)?,
        event_id: r.try_get(2)?,
        event_type: r.try_get(3)?,
        received_at: r.try_get(4)?,
        payload: r.try_get(5)?,
        app: delivery(r, 6)?,
        nats: delivery(r, 10)?,
    })
}

impl Store {
    /// Events whose `target` state is `pending` (of one source, or all),
    /// oldest first, after `after_seq`.
    pub async fn webhook_pending(
        &self,
        target: WebhookTarget,
        source: Option<&str>,
        after_seq: u64,
        limit: i64,
    ) -> Result<Vec<WebhookEventRow>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM webhook_events WHERE {c}_state = 'pending' AND seq > $1 \
             AND ($2 IS NULL OR source = $2) ORDER BY seq LIMIT $3",
            c = col(target)
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(i(after_seq))
            .bind(source)
            .bind(limit)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(event_row).collect()
    }

    /// Dead-lettered events (any target), oldest first.
    pub async fn webhook_dead(&self, limit: i64) -> Result<Vec<WebhookEventRow>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM webhook_events WHERE app_state = 'dead' OR nats_state = 'dead' \
             ORDER BY seq LIMIT $1"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(limit)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(event_row).collect()
    }

    /// One event by its source and id.
    pub async fn webhook_event(
        &self,
        source: &str,
        event_id: &str,
    ) -> Result<Option<WebhookEventRow>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM webhook_events WHERE source = $1 AND event_id = $2");
        sqlx::query(AssertSqlSafe(sql))
            .bind(source)
            .bind(event_id)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(event_row)
            .transpose()
    }
}
