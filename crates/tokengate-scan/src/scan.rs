//! Walking inputs: files, folders, stdin, and the members of gzip, zip and
//! tar archives (nested up to [`MAX_ARCHIVE_DEPTH`]), in parallel.
//!
//! Archives are recognised by their first bytes, not their names, so `.docx`,
//! `.xlsx` and `.jar` (zip) or a rotated `app.log.1` that is really gzip are
//! opened too. Files are shared out between the worker threads; a plain file
//! of [`PARALLEL_MIN`] bytes or more is itself split into pieces scanned in
//! parallel. Each top-level file's findings are handed to the sink together,
//! in order.

use std::fs::File;
use std::io::{self, BufReader, Cursor, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use globset::{Glob, GlobSet, GlobSetBuilder};
use rayon::prelude::*;

use crate::detect::Detector;
use crate::stream::{Located, PARALLEL_MIN, PIECE, scan_file_parallel, scan_reader};

/// Archives inside archives are opened this deep; deeper ones are scanned as
/// plain bytes.
pub const MAX_ARCHIVE_DEPTH: u32 = 4;
/// Most bytes decompressed from one compressed member when no
/// `max_filesize` is set (a guard against decompression bombs).
pub const DEFAULT_MAX_DECOMPRESSED: u64 = 4 << 30;
/// Largest nested zip read into memory to open it.
const MAX_NESTED_ZIP: u64 = 512 << 20;

/// Errors while scanning. Messages carry paths, never file content; output
/// code still passes them through PAN redaction.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScanError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path}: not a readable archive: {message}")]
    Archive { path: String, message: String },
    #[error("invalid glob `{glob}`: {message}")]
    Glob { glob: String, message: String },
    #[error("database {target}: {message}")]
    Database { target: String, message: String },
    #[error("{0}")]
    Usage(String),
}

/// Where a finding is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// File path; archive members as `archive!member`; database values as
    /// `<database>#table.column`.
    pub path: String,
    /// Database row identifier (SQLite rowid, PostgreSQL ctid), if any.
    pub row: Option<String>,
    pub located: Located,
}

/// What happened to one top-level input.
#[derive(Debug)]
pub struct Outcome {
    pub path: String,
    pub findings: Vec<Report>,
    pub bytes: u64,
    pub errors: Vec<ScanError>,
    /// Skipped because of `max_filesize`.
    pub skipped: bool,
}

/// Totals of a scan.
#[derive(Debug, Default)]
pub struct Summary {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    pub findings: AtomicU64,
    pub errors: AtomicU64,
    pub skipped: AtomicU64,
}

impl Summary {
    pub fn add(&self, o: &Outcome) {
        self.files.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(o.bytes, Ordering::Relaxed);
        self.findings
            .fetch_add(o.findings.len() as u64, Ordering::Relaxed);
        self.errors
            .fetch_add(o.errors.len() as u64, Ordering::Relaxed);
        if o.skipped {
            self.skipped.fetch_add(1, Ordering::Relaxed);
        }
    }
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Scanner settings besides the detector's.
#[derive(Clone, Debug, Default)]
pub struct ScanOptions {
    /// Paths (or file/folder names) matching these globs are not scanned.
    pub exclude: Vec<String>,
    /// Findings in paths matching these globs are dropped (allow-list).
    pub allow_paths: Vec<String>,
    /// Files and archive members larger than this are skipped.
    pub max_filesize: Option<u64>,
    /// Worker threads; 0 means one per core.
    pub threads: usize,
    /// Plain files at least this large are split into pieces scanned in
    /// parallel (default [`PARALLEL_MIN`]); ignored with one thread.
    pub split_files_over: Option<u64>,
}

fn globset(globs: &[String]) -> Result<GlobSet, ScanError> {
    let mut b = GlobSetBuilder::new();
    for g in globs {
        let glob = Glob::new(g).map_err(|e| ScanError::Glob {
            glob: g.clone(),
            message: e.kind().to_string(),
        })?;
        b.add(glob);
    }
    b.build().map_err(|e| ScanError::Glob {
        glob: String::new(),
        message: e.to_string(),
    })
}

/// Files, folders, stdin and archives through one [`Detector`].
#[derive(Debug)]
pub struct Scanner {
    det: Detector,
    exclude: GlobSet,
    allow_paths: GlobSet,
    max_filesize: Option<u64>,
    threads: usize,
    split_over: u64,
}

/// The kinds of container recognised by magic bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Container {
    Gzip,
    Zip,
    Tar,
    Plain,
}

fn sniff(head: &[u8]) -> Container {
    if head.starts_with(&[0x1f, 0x8b]) {
        Container::Gzip
    } else if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Container::Zip
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        Container::Tar
    } else {
        Container::Plain
    }
}

fn io_err(path: &str) -> impl FnOnce(io::Error) -> ScanError + '_ {
    move |source| ScanError::Io {
        path: path.to_string(),
        source,
    }
}

impl Scanner {
    pub fn new(det: Detector, opts: &ScanOptions) -> Result<Scanner, ScanError> {
        Ok(Scanner {
            det,
            exclude: globset(&opts.exclude)?,
            allow_paths: globset(&opts.allow_paths)?,
            max_filesize: opts.max_filesize,
            threads: opts.threads,
            split_over: opts.split_files_over.unwrap_or(PARALLEL_MIN).max(1),
        })
    }

    pub fn detector(&self) -> &Detector {
        &self.det
    }

    /// Matches the globs against the path as walked, the path relative to
    /// the folder given (`root`), and the file or folder name.
    fn excluded_under(&self, path: &Path, root: Option<&Path>) -> bool {
        if self.exclude.is_empty() {
            return false;
        }
        self.exclude.is_match(path)
            || root
                .and_then(|r| path.strip_prefix(r).ok())
                .is_some_and(|rel| self.exclude.is_match(rel))
            || path
                .file_name()
                .is_some_and(|n| self.exclude.is_match(Path::new(n)))
    }

    fn excluded(&self, path: &Path) -> bool {
        self.excluded_under(path, None)
    }

    fn too_big(&self, size: u64) -> bool {
        self.max_filesize.is_some_and(|m| size > m)
    }

    /// Expands folders into the files under them (sorted, symlinks not
    /// followed, excluded names pruned). `-` stays as is (stdin).
    pub fn collect_files(&self, inputs: &[PathBuf]) -> (Vec<PathBuf>, Vec<ScanError>) {
        let mut files = Vec::new();
        let mut errors = Vec::new();
        for input in inputs {
            if input.as_os_str() == "-" || !input.is_dir() {
                files.push(input.clone());
                continue;
            }
            let walker = walkdir::WalkDir::new(input)
                .follow_links(false)
                .sort_by_file_name()
                .into_iter()
                .filter_entry(|e| e.depth() == 0 || !self.excluded_under(e.path(), Some(input)));
            for entry in walker {
                match entry {
                    Ok(e) if e.file_type().is_file() => files.push(e.into_path()),
                    Ok(_) => {}
                    Err(e) => {
                        let path = e
                            .path()
                            .map(|p| p.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        errors.push(ScanError::Io {
                            path,
                            source: e.into(),
                        });
                    }
                }
            }
        }
        (files, errors)
    }

    /// Scans every input; `sink` receives each file's outcome (from worker
    /// threads, one call per file). Stdin is read on the calling thread.
    pub fn scan_paths(&self, inputs: &[PathBuf], sink: &(dyn Fn(Outcome) + Sync)) -> Summary {
        let summary = Summary::default();
        let (files, errors) = self.collect_files(inputs);
        for e in errors {
            let o = Outcome {
                path: String::new(),
                findings: Vec::new(),
                bytes: 0,
                errors: vec![e],
                skipped: false,
            };
            summary.add(&o);
            sink(o);
        }
        let (stdin, files): (Vec<_>, Vec<_>) =
            files.into_iter().partition(|p| p.as_os_str() == "-");
        if !stdin.is_empty() {
            let o = self.scan_named_reader("-", &mut io::stdin().lock());
            summary.add(&o);
            sink(o);
        }
        let threads = if self.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.threads
        };
        let may_split = files.len() < threads;
        let work = |p: &PathBuf| {
            let o = self.scan_file_split(p, may_split);
            summary.add(&o);
            sink(o);
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.threads)
            .build();
        match pool {
            Ok(pool) if self.threads != 1 => pool.install(|| files.par_iter().for_each(work)),
            _ => files.iter().for_each(work),
        }
        summary
    }

    /// Scans one reader (for example stdin) under a display name.
    pub fn scan_named_reader(&self, name: &str, reader: &mut dyn Read) -> Outcome {
        let mut o = Outcome {
            path: name.to_string(),
            findings: Vec::new(),
            bytes: 0,
            errors: Vec::new(),
            skipped: false,
        };
        let label = if name == "-" { "<stdin>" } else { name };
        match self.scan_stream(reader, label, 0, &mut o) {
            Ok(n) => o.bytes = n,
            Err(e) => o.errors.push(e),
        }
        o
    }

    /// Scans one file (or archive) from disk.
    pub fn scan_file(&self, path: &Path) -> Outcome {
        self.scan_file_split(path, true)
    }

    /// Scans one file; `may_split` allows splitting a big plain file into
    /// pieces for the worker threads (pointless when there are more files
    /// than threads: measured, reading pieces costs more kernel time than
    /// reading a file front to back).
    fn scan_file_split(&self, path: &Path, may_split: bool) -> Outcome {
        let name = path.to_string_lossy().into_owned();
        let mut o = Outcome {
            path: name.clone(),
            findings: Vec::new(),
            bytes: 0,
            errors: Vec::new(),
            skipped: false,
        };
        match self.scan_file_inner(path, &name, may_split, &mut o) {
            Ok(n) => o.bytes = n,
            Err(e) => o.errors.push(e),
        }
        o
    }

    fn scan_file_inner(
        &self,
        path: &Path,
        name: &str,
        may_split: bool,
        o: &mut Outcome,
    ) -> Result<u64, ScanError> {
        let mut f = File::open(path).map_err(io_err(name))?;
        let size = f.metadata().map_err(io_err(name))?.len();
        if self.too_big(size) {
            o.skipped = true;
            return Ok(0);
        }
        let mut head = [0u8; 512];
        let n = read_up_to(&mut f, &mut head).map_err(io_err(name))?;
        f.rewind().map_err(io_err(name))?;
        let kind = sniff(&head[..n]);
        if may_split && kind == Container::Plain && self.threads != 1 && size >= self.split_over {
            // One big file (a database dump, a long log): scan pieces of it
            // on all workers.
            drop(f);
            let workers = rayon::current_num_threads().max(1) as u64;
            let piece = (size / (4 * workers)).clamp(64 << 10, PIECE);
            let found = scan_file_parallel(&self.det, path, size, piece).map_err(io_err(name))?;
            if !self.allow_paths.is_match(name) {
                o.findings.extend(found.into_iter().map(|l| Report {
                    path: name.to_string(),
                    row: None,
                    located: l,
                }));
            }
            return Ok(size);
        }
        if kind == Container::Zip {
            let za = zip::ZipArchive::new(BufReader::new(f)).map_err(|e| ScanError::Archive {
                path: name.to_string(),
                message: e.to_string(),
            })?;
            return self.scan_zip(za, name, 1, o);
        }
        self.scan_stream(&mut f, name, 0, o)
    }

    fn scan_stream(
        &self,
        r: &mut dyn Read,
        name: &str,
        depth: u32,
        o: &mut Outcome,
    ) -> Result<u64, ScanError> {
        let mut head = Vec::with_capacity(512);
        r.take(512).read_to_end(&mut head).map_err(io_err(name))?;
        let kind = if depth >= MAX_ARCHIVE_DEPTH {
            Container::Plain
        } else {
            sniff(&head)
        };
        let mut r = Cursor::new(head).chain(r);
        match kind {
            Container::Plain => {
                let allowed = self.allow_paths.is_match(name);
                scan_reader(&self.det, &mut r, &mut |l: Located| {
                    if !allowed {
                        o.findings.push(Report {
                            path: name.to_string(),
                            row: None,
                            located: l,
                        });
                    }
                })
                .map_err(io_err(name))
            }
            Container::Gzip => {
                let limit = self.max_filesize.unwrap_or(DEFAULT_MAX_DECOMPRESSED);
                let mut gz = flate2::read::MultiGzDecoder::new(r).take(limit);
                self.scan_stream(&mut gz, name, depth + 1, o)
            }
            Container::Tar => {
                let mut total = 0u64;
                let mut ar = tar::Archive::new(r);
                let entries = ar.entries().map_err(io_err(name))?;
                for entry in entries {
                    let mut entry = entry.map_err(io_err(name))?;
                    if !entry.header().entry_type().is_file() {
                        continue;
                    }
                    let member = entry.path().map(|p| p.to_string_lossy().into_owned());
                    let member = format!("{name}!{}", member.unwrap_or_default());
                    if self.excluded(Path::new(&member)) {
                        continue;
                    }
                    if self.too_big(entry.size()) {
                        continue;
                    }
                    match self.scan_stream(&mut entry, &member, depth + 1, o) {
                        Ok(n) => total += n,
                        Err(e) => o.errors.push(e),
                    }
                }
                Ok(total)
            }
            Container::Zip => {
                let mut data = Vec::new();
                r.take(MAX_NESTED_ZIP)
                    .read_to_end(&mut data)
                    .map_err(io_err(name))?;
                let za =
                    zip::ZipArchive::new(Cursor::new(data)).map_err(|e| ScanError::Archive {
                        path: name.to_string(),
                        message: e.to_string(),
                    })?;
                self.scan_zip(za, name, depth + 1, o)
            }
        }
    }

    fn scan_zip<R: Read + Seek>(
        &self,
        mut za: zip::ZipArchive<R>,
        name: &str,
        depth: u32,
        o: &mut Outcome,
    ) -> Result<u64, ScanError> {
        let mut total = 0u64;
        for i in 0..za.len() {
            let mut file = match za.by_index(i) {
                Ok(f) => f,
                Err(e) => {
                    o.errors.push(ScanError::Archive {
                        path: format!("{name}!#{i}"),
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            if !file.is_file() {
                continue;
            }
            let inner = file
                .name()
                .map(|n| n.into_owned())
                .unwrap_or_else(|_| format!("#{i}"));
            let member = format!("{name}!{inner}");
            if self.excluded(Path::new(&member)) || self.too_big(file.size()) {
                continue;
            }
            let limit = self.max_filesize.unwrap_or(DEFAULT_MAX_DECOMPRESSED);
            let mut limited = (&mut file).take(limit);
            match self.scan_stream(&mut limited, &member, depth, o) {
                Ok(n) => total += n,
                Err(e) => o.errors.push(e),
            }
        }
        Ok(total)
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
