//! Schema and migrations for both backends. Version 1 is the initial schema.
//! Migrations only ever append; the applied version is kept in `meta`.

use crate::store::Backend;

/// `(version, statements)` per backend.
pub fn migrations(backend: Backend) -> Vec<(i64, Vec<String>)> {
    let (blob, int) = match backend {
        Backend::Sqlite => ("BLOB", "INTEGER"),
        Backend::Postgres => ("BYTEA", "BIGINT"),
    };
    let v1 = vec![
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)".to_owned(),
        format!(
            "CREATE TABLE IF NOT EXISTS keys (purpose TEXT NOT NULL, version {int} NOT NULL, state TEXT NOT NULL, \
             created_at {int} NOT NULL, wrapped {blob} NOT NULL, PRIMARY KEY (purpose, version))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS tokens (tenant TEXT NOT NULL, token TEXT NOT NULL, format TEXT NOT NULL, \
             deterministic {int} NOT NULL, fingerprint {blob} NOT NULL, fp_version {int} NOT NULL, \
             kek_version {int} NOT NULL, wrapped_dek {blob} NOT NULL, ciphertext {blob} NOT NULL, \
             brand TEXT NOT NULL, bin TEXT NOT NULL, last4 TEXT NOT NULL, exp_month {int} NOT NULL, \
             exp_year {int} NOT NULL, metadata TEXT, created_at {int} NOT NULL, PRIMARY KEY (tenant, token))"
        ),
        "CREATE INDEX IF NOT EXISTS tokens_fingerprint ON tokens (tenant, fingerprint)".to_owned(),
        "CREATE UNIQUE INDEX IF NOT EXISTS tokens_deterministic ON tokens (tenant, format, fingerprint) \
         WHERE deterministic = 1"
            .to_owned(),
        "CREATE INDEX IF NOT EXISTS tokens_kek_version ON tokens (kek_version)".to_owned(),
        format!(
            "CREATE TABLE IF NOT EXISTS cvcs (tenant TEXT NOT NULL, token TEXT NOT NULL, key_version {int} NOT NULL, \
             ciphertext {blob} NOT NULL, expires_at {int} NOT NULL, PRIMARY KEY (tenant, token))"
        ),
        "CREATE INDEX IF NOT EXISTS cvcs_expires ON cvcs (expires_at)".to_owned(),
        format!(
            "CREATE TABLE IF NOT EXISTS api_keys (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, name TEXT NOT NULL, \
             roles TEXT NOT NULL, key_version {int} NOT NULL, hash {blob} NOT NULL, created_at {int} NOT NULL, \
             revoked_at {int})"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS audit_events (seq {int} PRIMARY KEY, ts_ms {int} NOT NULL, \
             action TEXT NOT NULL, actor TEXT NOT NULL, token TEXT, request_id TEXT, outcome TEXT NOT NULL, \
             event_json TEXT NOT NULL, prev_hash {blob} NOT NULL, hash {blob} NOT NULL)"
        ),
        "CREATE INDEX IF NOT EXISTS audit_events_token ON audit_events (token)".to_owned(),
        "CREATE INDEX IF NOT EXISTS audit_events_request ON audit_events (request_id)".to_owned(),
        format!(
            "CREATE TABLE IF NOT EXISTS audit_head (id {int} PRIMARY KEY, seq {int} NOT NULL, \
             hash {blob} NOT NULL, signature {blob} NOT NULL)"
        ),
    ];
    // Version 2: the audit log's Merkle tree (stored hashes, RFC 6962) and
    // its signed checkpoints.
    let v2 = vec![
        format!(
            "CREATE TABLE IF NOT EXISTS audit_tree (idx {int} PRIMARY KEY, hash {blob} NOT NULL)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS audit_checkpoints (tree_size {int} PRIMARY KEY, root {blob} NOT NULL, \
             note TEXT NOT NULL, created_at {int} NOT NULL)"
        ),
    ];
    // Version 3: the TLS certificate store. Private keys are stored only
    // sealed (tokengate-crypto `tls_key`): `key_ciphertext` under a per-key
    // DEK, `wrapped_dek` under the `tls_key` KEK of `kek_version`. Domains
    // point at a certificate by name; NULL means no certificate (no HTTPS
    // for that name unless a default certificate is configured).
    let v3 = vec![
        format!(
            "CREATE TABLE IF NOT EXISTS tls_certificates (name TEXT PRIMARY KEY, source TEXT NOT NULL, \
             chain_pem TEXT NOT NULL, info_json TEXT NOT NULL, not_after {int} NOT NULL, \
             key_format TEXT NOT NULL, kek_version {int} NOT NULL, wrapped_dek {blob} NOT NULL, \
             key_ciphertext {blob} NOT NULL, created_at {int} NOT NULL, updated_at {int} NOT NULL)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS tls_domains (domain TEXT PRIMARY KEY, cert_name TEXT, \
             created_at {int} NOT NULL, updated_at {int} NOT NULL)"
        ),
        "CREATE INDEX IF NOT EXISTS tls_domains_cert ON tls_domains (cert_name)".to_owned(),
    ];
    // Version 4: automated certificates. One row per domain under ACME
    // management, the HTTP-01 answers any node can serve, and the ACME
    // account per directory (its credentials sealed like a private key).
    let v4 = vec![
        format!(
            "CREATE TABLE IF NOT EXISTS acme_domains (domain TEXT PRIMARY KEY, status TEXT NOT NULL, \
             cert_name TEXT, last_error TEXT, next_attempt_at {int} NOT NULL, failures {int} NOT NULL, \
             updated_at {int} NOT NULL)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS acme_challenges (token TEXT PRIMARY KEY, key_authorization TEXT NOT NULL, \
             expires_at {int} NOT NULL)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS acme_accounts (directory_url TEXT PRIMARY KEY, kek_version {int} NOT NULL, \
             wrapped_dek {blob} NOT NULL, sealed_credentials {blob} NOT NULL, created_at {int} NOT NULL)"
        ),
    ];
    // Version 5: audit drains' delivery cursors (the last sequence number
    // each receiver confirmed).
    let v5 = vec![format!(
        "CREATE TABLE IF NOT EXISTS audit_drains (name TEXT PRIMARY KEY, delivered_seq {int} NOT NULL)"
    )];
    // Version 6: where the audit log was pruned (retention): records up to
    // `upto_seq` were archived and deleted; `last_hash` is the chain hash of
    // record `upto_seq`, which the first kept record links to.
    let v6 = vec![format!(
        "CREATE TABLE IF NOT EXISTS audit_pruned (id {int} PRIMARY KEY, upto_seq {int} NOT NULL, \
         last_hash {blob} NOT NULL)"
    )];
    // Version 7: the webhook outbox. One row per verified event, unique per
    // (source, event id) for idempotency; per-target delivery state (`app`,
    // `nats`); `seq` is the delivery order.
    let seq_pk = match backend {
        Backend::Sqlite => "seq INTEGER PRIMARY KEY AUTOINCREMENT",
        Backend::Postgres => "seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    };
    let v7 = vec![
        format!(
            "CREATE TABLE IF NOT EXISTS webhook_events ({seq_pk}, source TEXT NOT NULL, \
             event_id TEXT NOT NULL, event_type TEXT, received_at {int} NOT NULL, payload {blob} NOT NULL, \
             app_state TEXT NOT NULL, app_attempts {int} NOT NULL, app_next_at {int} NOT NULL, app_error TEXT, \
             nats_state TEXT NOT NULL, nats_attempts {int} NOT NULL, nats_next_at {int} NOT NULL, nats_error TEXT, \
             UNIQUE (source, event_id))"
        ),
        // Partial: only events still waiting for a target are indexed (the
        // delivery lanes' query); receipt with a target not configured
        // writes no entry.
        "CREATE INDEX IF NOT EXISTS webhook_events_app ON webhook_events (source, seq) \
         WHERE app_state = 'pending'"
            .to_owned(),
        "CREATE INDEX IF NOT EXISTS webhook_events_nats ON webhook_events (source, seq) \
         WHERE nats_state = 'pending'"
            .to_owned(),
        "CREATE INDEX IF NOT EXISTS webhook_events_received ON webhook_events (received_at)"
            .to_owned(),
    ];
    // Version 8: key lifecycle. Re-keying jobs walk the records of one key
    // version in primary-key order: (version, tenant, token) indexes let
    // each batch start where the last one ended. The one-column
    // `kek_version` index is covered by the new one. Every statement is
    // idempotent (`IF [NOT] EXISTS`).
    let v8 = vec![
        "DROP INDEX IF EXISTS tokens_kek_version".to_owned(),
        "CREATE INDEX IF NOT EXISTS tokens_kek_rekey ON tokens (kek_version, tenant, token)"
            .to_owned(),
        "CREATE INDEX IF NOT EXISTS tokens_fp_rekey ON tokens (fp_version, tenant, token)"
            .to_owned(),
        "CREATE INDEX IF NOT EXISTS cvcs_key_version ON cvcs (key_version)".to_owned(),
    ];
    vec![
        (1, v1),
        (2, v2),
        (3, v3),
        (4, v4),
        (5, v5),
        (6, v6),
        (7, v7),
        (8, v8),
    ]
}
