//! PAN discovery for tokengate.
//!
//! - [`Detector`] finds card numbers in bytes (the one detector of the
//!   product: the scanner, the edge proxy's safety net and the webhook
//!   receiver all call it). No I/O, no async, no allocation per byte.
//! - [`stream`] runs it over readers in blocks, with line and column.
//! - [`scan`] walks files, folders, stdin and archive members in parallel.
//! - `db` (feature `database`) reads SQLite and PostgreSQL text and blob
//!   columns.
//! - [`watch`] follows growing files.
//! - [`output`] writes text, JSON Lines and SARIF; nothing it writes can
//!   carry more than BIN6 and last4 of a number.
//! - `cli` (feature `cli`) is the `tokengate scan` command: `ScanArgs` and
//!   `run_cli`.
//!
//! A service that only needs the detector depends on this crate with
//! `default-features = false` (no clap, sqlx or tokio).
//!
//! ```
//! use tokengate_scan::Detector;
//! let det = Detector::default();
//! let found: Vec<String> = det
//!     .find(b"charge ok card=4539 5787 6362 1486 amount=12.00")
//!     .map(|f| f.masked())
//!     .collect();
//! assert_eq!(found, ["453957******1486"]);
//! ```

#![forbid(unsafe_code)]

#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "database")]
pub mod db;
pub mod detect;
pub mod output;
pub mod scan;
pub mod stream;
mod testcards;
pub mod watch;

#[cfg(feature = "cli")]
pub use cli::{ScanArgs, run, run_cli, run_cli_exit};
pub use detect::{AllowList, Detector, DetectorConfig, Finding, Kind, Matches};
pub use scan::{Outcome, Report, ScanError, ScanOptions, Scanner};
pub use stream::{Located, StreamScanner, scan_reader};
