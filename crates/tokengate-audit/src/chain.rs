//! The hash chain that links audit records.

use aws_lc_rs::digest::{Context, SHA256};

use crate::event::AuditEvent;

pub type ChainHash = [u8; 32];

/// `prev_hash` of the first record.
pub const GENESIS: ChainHash = [0u8; 32];

const DOMAIN: &[u8] = b"tokengate-audit-chain-v1";

/// A record as stored: its position, the exact JSON that was hashed, and the links.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    /// 1-based, contiguous. Invariant: `seq == previous.seq + 1`.
    pub seq: u64,
    /// Invariant: `serde_json` encoding of an [`AuditEvent`], byte-exact as hashed.
    pub event_json: String,
    pub prev_hash: ChainHash,
    /// Invariant: `chain_hash(seq, prev_hash, event_json)`.
    pub hash: ChainHash,
}

/// `SHA-256(domain ‖ seq ‖ prev ‖ len ‖ event_json)`.
pub fn chain_hash(seq: u64, prev: &ChainHash, event_json: &[u8]) -> ChainHash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(DOMAIN);
    ctx.update(&seq.to_be_bytes());
    ctx.update(prev);
    ctx.update(&(event_json.len() as u64).to_be_bytes());
    ctx.update(event_json);
    let d = ctx.finish();
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The canonical encoding of an event (what gets hashed and stored).
pub fn encode(event: &AuditEvent) -> String {
    // Serializing a struct of plain fields cannot fail; fall back to an
    // empty object rather than panic.
    serde_json::to_string(event).unwrap_or_else(|_| "{}".to_owned())
}

/// Append `event` after (`prev_seq`, `prev_hash`).
pub fn link(prev_seq: u64, prev_hash: ChainHash, event: &AuditEvent) -> StoredEvent {
    let seq = prev_seq + 1;
    let event_json = encode(event);
    let hash = chain_hash(seq, &prev_hash, event_json.as_bytes());
    StoredEvent {
        seq,
        event_json,
        prev_hash,
        hash,
    }
}
