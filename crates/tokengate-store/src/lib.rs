//! Persistence for tokengate.
//!
//! One [`Store`] over two backends: SQLite (embedded default: WAL, every
//! commit fsynced before it is acknowledged, `secure_delete=ON`) and PostgreSQL (many stateless
//! nodes). Schema, migrations and reads go through sqlx's `Any` driver for
//! both, except the checkpointer's bulk read of audit records, which SQLite
//! serves from a connection of its own (`sqlite_reader`). Writes differ: PostgreSQL commits through sqlx with multi-row
//! inserts; SQLite commits a whole batch inside one blocking thread on a
//! dedicated connection (`sqlite_writer`), because a sqlx round trip per
//! statement cost more than the statements. `tests/conformance.rs` runs one
//! suite against both.
//!
//! Writes go through [`Store::commit`] as a batch of [`Job`]s in one
//! transaction: the records and their audit events commit together or not at
//! all (fail-closed auditing), and the audit hash chain is extended inside the
//! same transaction under a lock on its head, so several nodes can share one
//! chain. [`committer::GroupCommitter`] collects concurrent jobs into such
//! batches so one fsync acknowledges many requests.
//!
//! SQL types never leave this crate: callers see the row structs in [`model`].

#![forbid(unsafe_code)]

pub mod committer;
pub mod model;
mod schema;
mod sqlite_reader;
mod sqlite_writer;
mod store;
mod tls;
mod wal_sync;
mod webhooks;

pub use committer::{EventFilter, GroupCommitter};
pub use model::*;
pub use store::{Backend, HeadSigner, Store};
pub use tls::ACME_ALPN_TOKEN_PREFIX;
pub use wal_sync::Durable;

/// Storage errors. Messages carry no card data (the store never sees any
/// plaintext) and no SQL text.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Database(String),
    #[error("the audit trail could not be written: {0}")]
    AuditWrite(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("unsupported database URL (use sqlite://PATH or postgres://…)")]
    UnsupportedUrl,
    #[error("the data store is not initialised; run `tokengate init`")]
    NotInitialized,
    #[error("the group committer has stopped")]
    CommitterStopped,
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                StoreError::Unavailable(e.to_string())
            }
            sqlx::Error::Database(db) => StoreError::Database(db.message().to_owned()),
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::ColumnNotFound(_) => StoreError::Corrupt(e.to_string()),
            _ => StoreError::Database(e.to_string()),
        }
    }
}
