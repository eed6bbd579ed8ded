//! PAN discovery for tokengate.
//!
//! - [`Detector`] finds card numbers in bytes (the one detector of the
//!   product: the scanner, the edge proxy's safety net and the webhook
//!   receiver all call it). No I/O, no async.
//! - [`stream`] runs it over readers in blocks with line and column.
//! - [`scan`] walks files, folders, stdin and archive members in parallel.
//! - `db` (feature `database`) reads SQLite and PostgreSQL text and blob
//!   columns.
//! - [`output`] writes text, JSON Lines and SARIF; nothing it writes can
//!   carry more than BIN6 and last4 of a number.
//! - `cli` (feature `cli`) is the `tokengate scan` command: [`ScanArgs`] and
//!   [`run_cli`].

#![forbid(unsafe_code)]

pub mod detect;
pub mod stream;
mod testcards;

pub use detect::{AllowList, Detector, DetectorConfig, Finding, Kind, Matches};
pub use stream::{Located, StreamScanner, scan_reader};
