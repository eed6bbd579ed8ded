//! The `tokengate scan` command: arguments, validation, exit codes.
//!
//! Flags are parsed by clap into [`ScanArgs`], validated into a
//! [`Scanner`] without touching any input (bad globs, bad sizes and
//! unreadable allow files fail with exit 2 before any scanning), then run.
//! Exit codes: 0 nothing found, 1 card numbers found, 2 error (a scan that
//! found numbers and also hit errors exits 1: the finding is certain, the
//! errors are printed).

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use tokengate_core::redact_pans;

use crate::detect::{AllowList, DEFAULT_MIN_LEN, Detector, DetectorConfig};
use crate::output::{Format, Writer};
use crate::scan::{Outcome, Report, ScanError, ScanOptions, Scanner, Summary};

/// Exit code: no card number found.
pub const EXIT_CLEAN: i32 = 0;
/// Exit code: card numbers found.
pub const EXIT_FOUND: i32 = 1;
/// Exit code: usage error or failed scan.
pub const EXIT_ERROR: i32 = 2;

/// Find card numbers (PANs) in files, folders, archives, logs and databases.
///
/// Prints BIN6 and last4 at most, never a whole number. Exit status: 0 none
/// found, 1 found, 2 error.
#[derive(clap::Args, Debug, Clone)]
pub struct ScanArgs {
    /// Files or folders to scan; `-` reads standard input. Gzip, zip and tar
    /// (also .tar.gz, .docx, .xlsx, .jar) are opened by content.
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,

    /// Write JSON Lines: one finding per line.
    #[arg(long, conflicts_with = "sarif")]
    pub json: bool,

    /// Write one SARIF 2.1.0 document (for code-scanning tools).
    #[arg(long)]
    pub sarif: bool,

    /// Do not scan paths, file or folder names, or archive members matching
    /// this glob (repeatable), e.g. `--exclude '*.min.js' --exclude .git`.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,

    /// Skip files and archive members larger than this (bytes, or with a
    /// K, M, G suffix: 1024-based).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_filesize: Option<u64>,

    /// Worker threads (default: one per core).
    #[arg(long, short = 'j', value_name = "N", default_value_t = 0)]
    pub threads: usize,

    /// Allow-list file (repeatable). One entry per line: a card number, a
    /// masked number as printed by this command (`411111******1111`), or
    /// `path:GLOB` to ignore findings in matching paths. `#` starts a comment.
    #[arg(long, value_name = "FILE")]
    pub allow: Vec<PathBuf>,

    /// Report documented test card numbers (suppressed by default).
    #[arg(long)]
    pub include_test_cards: bool,

    /// Report numbers made of repeated, sequential or periodic digits
    /// (suppressed by default).
    #[arg(long)]
    pub include_repeated: bool,

    /// Shortest number reported, 12–19.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MIN_LEN, value_parser = parse_min_length)]
    pub min_length: usize,

    /// Scan a database (repeatable): an SQLite file (`sqlite:PATH` or a
    /// path) or a PostgreSQL URL (`postgres://…`): text and blob columns.
    #[arg(long, value_name = "URL")]
    pub database: Vec<String>,

    /// With a PostgreSQL `--database`: scan only this schema (repeatable).
    #[arg(long, value_name = "NAME")]
    pub db_schema: Vec<String>,

    /// Keep following the files (growing logs) and report new findings
    /// until interrupted.
    #[arg(long, conflicts_with = "sarif")]
    pub watch: bool,

    /// Poll interval for --watch, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub watch_interval_ms: u64,

    /// Print totals (files, bytes, time, throughput) to standard error.
    #[arg(long)]
    pub stats: bool,
}

impl Default for ScanArgs {
    /// The same values as the command line without flags (and no paths).
    fn default() -> Self {
        ScanArgs {
            paths: Vec::new(),
            json: false,
            sarif: false,
            exclude: Vec::new(),
            max_filesize: None,
            threads: 0,
            allow: Vec::new(),
            include_test_cards: false,
            include_repeated: false,
            min_length: DEFAULT_MIN_LEN,
            database: Vec::new(),
            db_schema: Vec::new(),
            watch: false,
            watch_interval_ms: 1000,
            stats: false,
        }
    }
}

fn parse_min_length(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (12..=19).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a length between 12 and 19")),
    }
}

/// Parses `123`, `10K`, `5M`, `2G` (1024-based; a trailing `B` or `iB` is
/// accepted).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 1 << 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 1 << 30),
        Some('t' | 'T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("`{s}` is not a size (examples: 1048576, 512K, 10M, 2G)"))
}

/// Reads allow files into the detector allow-list and path globs. Errors
/// name the file and line, never the entry.
pub fn read_allow_files(files: &[PathBuf]) -> Result<(AllowList, Vec<String>), ScanError> {
    let mut list = AllowList::new();
    let mut globs = Vec::new();
    for file in files {
        let name = file.to_string_lossy().into_owned();
        let text = std::fs::read_to_string(file).map_err(|source| ScanError::Io {
            path: name.clone(),
            source,
        })?;
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            if let Some(glob) = line.strip_prefix("path:") {
                globs.push(glob.trim().to_string());
            } else if list.add(line).is_err() {
                return Err(ScanError::Usage(format!(
                    "{name}:{}: entry is neither a card number, a masked number (BIN6, `*`s, last4) nor `path:GLOB`",
                    i + 1
                )));
            }
        }
    }
    Ok((list, globs))
}

/// Builds the scanner from the arguments without touching any input.
pub fn build_scanner(args: &ScanArgs) -> Result<Scanner, ScanError> {
    if args.paths.is_empty() && args.database.is_empty() {
        return Err(ScanError::Usage(
            "nothing to scan: give a PATH (`-` for standard input) or --database URL".into(),
        ));
    }
    if args.watch && !args.database.is_empty() {
        return Err(ScanError::Usage(
            "--watch follows files, not databases".into(),
        ));
    }
    if args.watch && args.paths.iter().any(|p| p.as_os_str() == "-") {
        return Err(ScanError::Usage(
            "--watch cannot follow standard input".into(),
        ));
    }
    let (allow, allow_paths) = read_allow_files(&args.allow)?;
    let det = Detector::new(DetectorConfig {
        include_test_cards: args.include_test_cards,
        include_low_entropy: args.include_repeated,
        min_len: args.min_length,
        allow,
    });
    Scanner::new(
        det,
        &ScanOptions {
            exclude: args.exclude.clone(),
            allow_paths,
            max_filesize: args.max_filesize,
            threads: args.threads,
            split_files_over: None,
        },
    )
}

fn format_of(args: &ScanArgs) -> Format {
    if args.sarif {
        Format::Sarif
    } else if args.json {
        Format::JsonLines
    } else {
        Format::Text
    }
}

fn report_error(err: &mut (dyn Write + Send), e: &ScanError) {
    let msg = e.to_string();
    let _ = writeln!(err, "tokengate scan: error: {}", redact_pans(&msg));
}

/// Runs `tokengate scan` on the process's standard streams; returns the exit
/// code.
pub fn run_cli(args: ScanArgs) -> i32 {
    let mut out = BufWriter::with_capacity(1 << 16, io::stdout());
    let mut err = io::stderr();
    run(&args, &mut out, &mut err)
}

/// [`run_cli`] as a process exit code (for `fn main() -> ExitCode`).
///
/// Call it outside any async runtime: `--database` starts its own.
pub fn run_cli_exit(args: ScanArgs) -> std::process::ExitCode {
    std::process::ExitCode::from(u8::try_from(run_cli(args)).unwrap_or(2))
}

/// Runs `tokengate scan` writing findings to `out` and diagnostics to `err`.
pub fn run(args: &ScanArgs, out: &mut (dyn Write + Send), err: &mut (dyn Write + Send)) -> i32 {
    let scanner = match build_scanner(args) {
        Ok(s) => s,
        Err(e) => {
            report_error(err, &e);
            return EXIT_ERROR;
        }
    };
    let started = Instant::now();
    let mut writer = Writer::new(format_of(args), out);
    writer.flush_each = args.watch;
    let writer = Mutex::new(Some(writer));
    let err = Mutex::new(err);
    let write_failed = AtomicBool::new(false);

    let emit = |r: &Report| {
        if let Ok(mut w) = writer.lock()
            && let Some(w) = w.as_mut()
            && w.finding(r).is_err()
        {
            write_failed.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    };
    let emit_error = |e: &ScanError| {
        if let Ok(mut err) = err.lock() {
            report_error(&mut **err, e);
        }
    };

    let mut found = 0u64;
    let mut errors = 0u64;
    let mut summary = Summary::default();
    if !args.paths.is_empty() && !args.watch {
        let sink = |o: Outcome| {
            for r in &o.findings {
                emit(r);
            }
            for e in &o.errors {
                emit_error(e);
            }
        };
        summary = scanner.scan_paths(&args.paths, &sink);
        found += Summary::get(&summary.findings);
        errors += Summary::get(&summary.errors);
    }

    #[cfg(feature = "database")]
    for url in &args.database {
        let target = crate::db::Target::parse(url);
        let mut on = |r: Report| {
            found += 1;
            emit(&r);
        };
        match crate::db::scan_database(scanner.detector(), &target, &args.db_schema, &mut on) {
            Ok(stats) => {
                summary
                    .bytes
                    .fetch_add(stats.bytes, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => {
                errors += 1;
                emit_error(&e);
            }
        }
    }
    #[cfg(not(feature = "database"))]
    if !args.database.is_empty() {
        errors += 1;
        emit_error(&ScanError::Usage(
            "this build has no database support (feature `database`)".into(),
        ));
    }

    if args.watch {
        let stop = AtomicBool::new(false);
        let mut on = |r: Report| {
            found += 1;
            emit(&r);
        };
        let mut on_err = |e: ScanError| {
            errors += 1;
            emit_error(&e);
        };
        crate::watch::watch(
            &scanner,
            &args.paths,
            Duration::from_millis(args.watch_interval_ms.max(10)),
            &stop,
            &mut on,
            &mut on_err,
        );
    }

    let finished = writer
        .lock()
        .ok()
        .and_then(|mut w| w.take())
        .map(|w| w.finish().is_ok())
        .unwrap_or(false);
    if !finished || write_failed.load(std::sync::atomic::Ordering::Relaxed) {
        emit_error(&ScanError::Usage("could not write the output".into()));
        return EXIT_ERROR;
    }
    if args.stats {
        let secs = started.elapsed().as_secs_f64();
        let bytes = Summary::get(&summary.bytes);
        let msg = format!(
            "scanned {} files, {} bytes in {:.3} s ({:.1} MB/s); {} findings, {} errors, {} skipped",
            Summary::get(&summary.files),
            bytes,
            secs,
            bytes as f64 / 1e6 / secs.max(1e-9),
            found,
            errors,
            Summary::get(&summary.skipped),
        );
        if let Ok(mut e) = err.lock() {
            let _ = writeln!(e, "{msg}");
        }
    }
    if found > 0 {
        EXIT_FOUND
    } else if errors > 0 {
        EXIT_ERROR
    } else {
        EXIT_CLEAN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_matches_the_command_line() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: ScanArgs,
        }
        let parsed = Cli::parse_from(["scan"]).args;
        assert_eq!(format!("{parsed:?}"), format!("{:?}", ScanArgs::default()));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10"), Ok(10));
        assert_eq!(parse_size("2K"), Ok(2048));
        assert_eq!(parse_size("5MiB"), Ok(5 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
