//! `--watch`: follow growing files (logs) and report new findings.
//!
//! Polls the inputs every interval. Existing content is scanned first; after
//! that only appended bytes are read. A file that shrinks (truncated) or is
//! replaced (rotated: a new inode under the same name) is read again from
//! the start; files that appear in a watched folder are picked up. Archives
//! are not followed.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::scan::{Report, ScanError, Scanner};
use crate::stream::{Located, StreamScanner};

struct Followed<'d> {
    offset: u64,
    id: u64,
    scanner: StreamScanner<'d>,
}

#[cfg(unix)]
fn file_id(m: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    m.ino() ^ m.dev().rotate_left(32)
}

#[cfg(not(unix))]
fn file_id(_m: &std::fs::Metadata) -> u64 {
    0
}

/// Follows `inputs` until `stop` is set, calling `on_finding` for each new
/// finding and `on_error` for files that cannot be read (once per poll).
pub fn watch(
    scanner: &Scanner,
    inputs: &[PathBuf],
    interval: Duration,
    stop: &AtomicBool,
    on_finding: &mut dyn FnMut(Report),
    on_error: &mut dyn FnMut(ScanError),
) {
    let det = scanner.detector();
    let mut files: HashMap<PathBuf, Followed<'_>> = HashMap::new();
    let mut block = vec![0u8; crate::stream::BLOCK];
    loop {
        let (paths, errors) = scanner.collect_files(inputs);
        errors.into_iter().for_each(&mut *on_error);
        for path in paths {
            if path.as_os_str() == "-" {
                continue;
            }
            let name = path.to_string_lossy().into_owned();
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(_) => continue, // gone between listing and reading
            };
            let id = file_id(&meta);
            let entry = files.entry(path.clone()).or_insert_with(|| Followed {
                offset: 0,
                id,
                scanner: StreamScanner::new(det),
            });
            if meta.len() < entry.offset || entry.id != id {
                *entry = Followed {
                    offset: 0,
                    id,
                    scanner: StreamScanner::new(det),
                };
            }
            if meta.len() == entry.offset {
                continue;
            }
            let read = File::open(&path).and_then(|mut f| {
                f.seek(SeekFrom::Start(entry.offset))?;
                let mut f = f.take(meta.len() - entry.offset);
                loop {
                    let n = f.read(&mut block)?;
                    if n == 0 {
                        break;
                    }
                    entry.offset += n as u64;
                    entry.scanner.push(&block[..n], &mut |l: Located| {
                        on_finding(Report {
                            path: name.clone(),
                            row: None,
                            located: l,
                        })
                    });
                }
                Ok(())
            });
            if let Err(source) = read {
                on_error(ScanError::Io { path: name, source });
            }
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        // Sleep in short steps so `stop` is honoured quickly.
        let mut slept = Duration::ZERO;
        while slept < interval && !stop.load(Ordering::Relaxed) {
            let step = Duration::from_millis(50).min(interval - slept);
            std::thread::sleep(step);
            slept += step;
        }
    }
}
