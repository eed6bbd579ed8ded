//! Rows and write operations, in plain Rust types.

use tokengate_audit::AuditEvent;

/// A stored token record. `ciphertext` and `wrapped_dek` are opaque here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRow {
    pub tenant: String,
    pub token: String,
    pub format: String,
    pub deterministic: bool,
    pub fingerprint: Vec<u8>,
    pub fp_version: u32,
    pub kek_version: u32,
    pub wrapped_dek: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub brand: String,
    pub bin: String,
    pub last4: String,
    pub exp_month: u8,
    pub exp_year: u16,
    /// JSON text, checked by the caller to hold no card data.
    pub metadata: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Whether a CVC is currently held for this token.
    pub has_cvc: bool,
}

/// A CVC held encrypted until first use or expiry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CvcRow {
    pub tenant: String,
    pub token: String,
    pub key_version: u32,
    pub ciphertext: Vec<u8>,
    /// Unix milliseconds.
    pub expires_at: i64,
}

/// An API key as stored: only its keyed hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyRow {
    pub id: String,
    pub tenant: String,
    pub name: String,
    /// Role names.
    pub roles: Vec<String>,
    /// Version of the `api_key` HMAC key the hash was made with.
    pub key_version: u32,
    pub hash: Vec<u8>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// A key-ring entry as stored (wrapped by the root key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRow {
    pub purpose: String,
    pub version: u32,
    pub state: String,
    pub created_at: i64,
    pub wrapped: Vec<u8>,
}

/// One write inside a [`Job`].
#[derive(Clone, Debug)]
pub enum Op {
    /// Fails the job with [`JobError::Conflict`] if the token, or a
    /// deterministic token for the same fingerprint and format, exists.
    InsertToken(TokenRow),
    InsertCvc(CvcRow),
    /// Deletes the record and any CVC (the wrapped DEK goes with the row:
    /// crypto-shredding). Output: rows affected.
    DeleteToken {
        tenant: String,
        token: String,
    },
    /// Deletes and returns the CVC if it has not expired at `now`.
    TakeCvc {
        tenant: String,
        token: String,
        now: i64,
    },
    /// Deletes the CVC if it has expired at `now`. Output: rows affected.
    ExpireCvc {
        tenant: String,
        token: String,
        now: i64,
    },
    InsertApiKey(ApiKeyRow),
    /// Output: rows affected (0 if unknown or already revoked).
    RevokeApiKey {
        tenant: String,
        id: String,
        now: i64,
    },
    InsertKey(KeyRow),
    SetMeta {
        key: String,
        value: String,
    },
    /// Certificate store writes (see [`TlsOp`]).
    Tls(TlsOp),
    /// Appends stored Merkle-tree hashes at `first_index..` (see
    /// `tokengate_audit::merkle`). Fails with a conflict if any exists.
    AppendTreeHashes {
        first_index: u64,
        hashes: Vec<[u8; 32]>,
    },
    /// Fails with a conflict if a checkpoint of that size exists.
    InsertCheckpoint(CheckpointRow),
    /// Records that drain `name` delivered everything up to `seq`. Never
    /// moves a cursor backwards.
    SetDrainCursor {
        name: String,
        seq: u64,
    },
    /// Removes drain `name`'s cursor. Output: rows affected (0 or 1).
    ForgetDrain {
        name: String,
    },
    /// Moves a record's DEK to data KEK `to_version`, only if the record is
    /// still on `from_version` (compare-and-set: a record rewrapped, deleted
    /// or changed meanwhile is left alone). Output: rows affected (0 or 1).
    RewrapDek {
        tenant: String,
        token: String,
        from_version: u32,
        to_version: u32,
        wrapped_dek: Vec<u8>,
    },
    /// Replaces a record's fingerprint with one under fingerprint key
    /// `to_version`, only if it is still on `from_version` (compare-and-set).
    /// Output: rows affected (0 or 1).
    Refingerprint {
        tenant: String,
        token: String,
        from_version: u32,
        to_version: u32,
        fingerprint: Vec<u8>,
    },
    /// Sets the state of a key version that is not destroyed. Output: rows
    /// affected.
    SetKeyState {
        purpose: String,
        version: u32,
        state: String,
    },
    /// Destroys a key version: state `destroyed`, wrapped key erased. Only
    /// when it is not the active version and no stored record uses it (see
    /// [`key_usage_column`](crate::key_usage_columns)), checked in the same
    /// statement. Output: rows affected (0 when refused).
    DestroyKey {
        purpose: String,
        version: u32,
    },
    /// Deletes audit records `seq <= upto_seq` (already archived) and records
    /// where the log now starts. Output: records deleted.
    PruneAudit {
        upto_seq: u64,
        last_hash: [u8; 32],
    },
    /// Webhook outbox writes (see [`WebhookOp`]).
    Webhook(WebhookOp),
}

/// Which column of `tokens` a re-keying job moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RekeyColumn {
    /// `kek_version` (the data KEK wrapping each DEK).
    Data,
    /// `fp_version` (the fingerprint key).
    Fingerprint,
}

impl RekeyColumn {
    pub(crate) fn column(self) -> &'static str {
        match self {
            RekeyColumn::Data => "kek_version",
            RekeyColumn::Fingerprint => "fp_version",
        }
    }
}

/// The `(table, column)` pairs that record which version of `purpose` a
/// stored row uses. A version is in use while any of them names it.
/// Purposes with no entry here (audit keys) are not tracked per row.
pub fn key_usage_columns(purpose: &str) -> &'static [(&'static str, &'static str)] {
    match purpose {
        "data" => &[("tokens", "kek_version")],
        "fingerprint" => &[("tokens", "fp_version")],
        "cvc" => &[("cvcs", "key_version")],
        "api_key" => &[("api_keys", "key_version")],
        "tls_key" => &[
            ("tls_certificates", "kek_version"),
            ("acme_accounts", "kek_version"),
        ],
        _ => &[],
    }
}

/// What a DEK rewrap needs of a record (no card data, not even encrypted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DekRow {
    pub tenant: String,
    pub token: String,
    pub kek_version: u32,
    pub wrapped_dek: Vec<u8>,
}

/// How many stored records use one key version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyUsage {
    pub purpose: String,
    pub version: u32,
    pub records: i64,
}

/// A signed checkpoint of the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointRow {
    /// Records covered: seq 1..=tree_size.
    pub tree_size: u64,
    pub root: [u8; 32],
    /// The signed note (C2SP tlog-checkpoint).
    pub note: String,
    pub created_at: i64,
}

/// What an [`Op`] produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpOutput {
    Affected(u64),
    Cvc(Option<CvcRow>),
}

impl OpOutput {
    pub fn affected(&self) -> u64 {
        match self {
            OpOutput::Affected(n) => *n,
            OpOutput::Cvc(c) => u64::from(c.is_some()),
        }
    }
}

/// A unit of work: its operations and the audit events that record it.
/// Either all of it commits, or none of it.
#[derive(Clone, Debug, Default)]
pub struct Job {
    pub ops: Vec<Op>,
    /// Written when every op succeeded.
    pub events: Vec<AuditEvent>,
    /// `(op index, event)`: written only if that op affected a row.
    pub events_if_affected: Vec<(usize, AuditEvent)>,
}

/// Why one job in a batch did not commit (the others may have).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("a record with the same key already exists")]
    Conflict,
    #[error("database error: {0}")]
    Database(String),
}

pub type JobResult = Result<Vec<OpOutput>, JobError>;

/// A certificate in the TLS certificate store. The private key is held
/// only sealed (`wrapped_dek`, `key_ciphertext`); everything else is public.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsCertRow {
    /// Unique name (`brave-falcon-0042`).
    pub name: String,
    /// How it is managed: `manual`, `self-signed` or `acme`.
    pub source: String,
    /// PEM chain as served: leaf first.
    pub chain_pem: String,
    /// Certificate details (JSON written by the vault).
    pub info_json: String,
    /// End of the leaf's validity, Unix seconds.
    pub not_after: i64,
    /// Encoding of the sealed key DER: `pkcs8`, `pkcs1` or `sec1`.
    pub key_format: String,
    pub kek_version: u32,
    pub wrapped_dek: Vec<u8>,
    pub key_ciphertext: Vec<u8>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub updated_at: i64,
}

/// A domain and the certificate it is served with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsDomainRow {
    /// Lower-case host name, or a wildcard `*.example.com`.
    pub domain: String,
    pub cert_name: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub updated_at: i64,
}

/// Writes to the certificate store.
#[derive(Clone, Debug)]
pub enum TlsOp {
    /// Fails the job with [`JobError::Conflict`] if the name is taken.
    InsertCert(TlsCertRow),
    /// Replaces everything but `name` and `created_at`. Output: rows affected.
    UpdateCert(TlsCertRow),
    /// Deletes the certificate; domains that used it keep existing without
    /// a certificate (their `updated_at` becomes `now`). Output:
    /// certificate rows affected.
    DeleteCert { name: String, now: i64 },
    /// Fails the job with [`JobError::Conflict`] if the domain exists.
    /// Output: 0 (nothing written) when `cert_name` names no certificate.
    InsertDomain(TlsDomainRow),
    /// Points `domain` at `cert_name` (or at none). Output: 0 when the
    /// domain does not exist or `cert_name` names no certificate.
    UpdateDomain {
        domain: String,
        cert_name: Option<String>,
        now: i64,
    },
    /// Output: rows affected.
    DeleteDomain { domain: String },
    /// Insert or replace the ACME state of a domain.
    PutAcmeDomain(AcmeDomainRow),
    /// Output: rows affected.
    DeleteAcmeDomain { domain: String },
    /// Insert or replace an HTTP-01 answer.
    PutAcmeChallenge {
        token: String,
        key_authorization: String,
        expires_at: i64,
    },
    /// Deletes the answer `token`, and every answer expired at `now`.
    DeleteAcmeChallenge { token: String, now: i64 },
    /// Takes the next attempt at `domain` for one node: moves its
    /// `next_attempt_at` from `seen` (what the node read) to `until` (the
    /// lease's end). Output: 1 when this node won, 0 when another node (or
    /// an outcome) changed the row first.
    ClaimAcmeDomain {
        domain: String,
        seen: i64,
        until: i64,
    },
    /// Fails the job with [`JobError::Conflict`] if the directory has an account.
    InsertAcmeAccount(AcmeAccountRow),
}

/// A domain whose certificate is ordered and renewed by ACME.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmeDomainRow {
    pub domain: String,
    /// `pending` (not issued yet), `valid` (issued; renewed at
    /// `next_attempt_at`), or `failed` (retried at `next_attempt_at`).
    pub status: String,
    /// The certificate issued for it.
    pub cert_name: Option<String>,
    pub last_error: Option<String>,
    /// Unix milliseconds of the next order or renewal.
    pub next_attempt_at: i64,
    /// Failed attempts since the last success (for back-off).
    pub failures: u32,
    /// Unix milliseconds.
    pub updated_at: i64,
}

/// An ACME account: its credentials (which hold its private key) sealed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmeAccountRow {
    pub directory_url: String,
    pub kek_version: u32,
    pub wrapped_dek: Vec<u8>,
    pub sealed_credentials: Vec<u8>,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// A page of audit records, as stored.
pub use tokengate_audit::StoredEvent;

/// Filters for searching the audit log; every field set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// `ts_ms >= since_ms`.
    pub since_ms: Option<i64>,
    /// `ts_ms < until_ms`.
    pub until_ms: Option<i64>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub token: Option<String>,
    pub request_id: Option<String>,
    /// `Some(true)`: successes only; `Some(false)`: failures only.
    pub success: Option<bool>,
    /// Records with `seq > after_seq` (paging).
    pub after_seq: u64,
}

/// A webhook delivery target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WebhookTarget {
    /// The merchant's application (`[webhooks.deliver]`).
    App,
    /// NATS JetStream (`[webhooks.nats]`).
    Nats,
}

impl WebhookTarget {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookTarget::App => "app",
            WebhookTarget::Nats => "nats",
        }
    }
}

/// Where one event stands with one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookDelivery {
    /// `pending`, `delivered`, `dead` (dead-lettered), or `none` (the target
    /// was not configured when the event arrived).
    pub state: String,
    pub attempts: u32,
    /// Unix milliseconds before which no new attempt is made.
    pub next_at: i64,
    /// Why the last attempt failed (no payload content).
    pub last_error: Option<String>,
}

impl WebhookDelivery {
    /// A fresh state: `pending` when the target is configured, else `none`.
    pub fn new(configured: bool) -> WebhookDelivery {
        WebhookDelivery {
            state: if configured { "pending" } else { "none" }.to_owned(),
            attempts: 0,
            next_at: 0,
            last_error: None,
        }
    }
}

/// A verified webhook event in the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookEventRow {
    /// Assigned by the database on insert (ignored there); delivery order.
    pub seq: u64,
    /// Configured source name.
    pub source: String,
    /// The sender's event id (idempotency key within the source).
    pub event_id: String,
    /// The event type when the payload names one (`type`).
    pub event_type: Option<String>,
    /// Unix milliseconds.
    pub received_at: i64,
    /// The verified body, card numbers already tokenized or masked.
    pub payload: Vec<u8>,
    pub app: WebhookDelivery,
    pub nats: WebhookDelivery,
}

/// Writes to the webhook outbox. Every op outputs the rows it affected.
#[derive(Clone, Debug)]
pub enum WebhookOp {
    /// Insert a verified event; 0 rows when `(source, event_id)` exists
    /// (a duplicate: already stored, not delivered again).
    Insert(WebhookEventRow),
    /// The target confirmed the event.
    Delivered { seq: u64, target: WebhookTarget },
    /// A failed attempt; the next one not before `next_at` (Unix ms).
    Retry {
        seq: u64,
        target: WebhookTarget,
        next_at: i64,
        error: String,
    },
    /// Dead-letter the event for this target.
    Dead {
        seq: u64,
        target: WebhookTarget,
        error: String,
    },
    /// Put dead-lettered events (one, or all with `seq: None`) back in the
    /// queue with a fresh attempt count.
    Requeue {
        seq: Option<u64>,
        target: WebhookTarget,
        now: i64,
    },
    /// Delete events received before `received_before` that no target needs.
    Prune { received_before: i64 },
}
