//! The audit trail's model and its tamper evidence. Pure: no I/O.
//!
//! - [`event`]: [`AuditEvent`] and the text types it is made of. None of them
//!   can hold a card number: free text is PAN-redacted on construction and
//!   identifiers refuse anything that looks like one.
//! - [`chain`]: each stored record carries `hash = SHA-256(domain ‖ seq ‖
//!   prev_hash ‖ event_json)`; the store appends in one writer transaction.
//! - [`head`]: the newest (seq, hash) signed with the audit Ed25519 key, so
//!   cutting records off the end is caught too.
//! - [`verify`]: walks the stored records and names the first bad one.
//! - [`merkle`]: an RFC 6962 Merkle tree over the records, with inclusion
//!   and consistency proofs.
//! - [`checkpoint`]: signed tree heads (C2SP tlog-checkpoint notes) that,
//!   kept outside tokengate, catch a log rewritten and re-chained by someone
//!   who holds the database and the signing key.

#![forbid(unsafe_code)]

pub mod chain;
pub mod checkpoint;
pub mod event;
pub mod head;
pub mod merkle;
pub mod verify;

pub use chain::{ChainHash, GENESIS, StoredEvent, chain_hash};
pub use checkpoint::{CheckpointError, SignedCheckpoint};
pub use event::{Action, AuditEvent, HmacValue, Ident, Outcome, SafeText};
pub use head::SignedHead;
pub use verify::{Verifier, VerifyError, VerifyReport};
