//! Streaming a reader through the detector in blocks, with line and column.
//!
//! Blocks are cut at a byte that cannot belong to a card number, so no
//! number is split between blocks; the tail after the cut is carried into the
//! next block. Line numbers are counted lazily, only up to the last finding,
//! so a file without findings costs one pass of the detector and nothing more.

use std::io::{self, Read};

use crate::detect::{Detector, Finding, in_cluster};

/// Default read block.
pub const BLOCK: usize = 1 << 20;

/// A finding with its position in the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Located {
    pub finding: Finding,
    /// Byte offset of the first digit from the start of the stream.
    pub offset: u64,
    /// 1-based line number.
    pub line: u64,
    /// 1-based byte column within the line.
    pub column: u64,
}

/// Incremental scanner: feed bytes with [`push`](Self::push), then call
/// [`finish`](Self::finish). Used for files, archive members and followed logs.
#[derive(Debug)]
pub struct StreamScanner<'d> {
    det: &'d Detector,
    buf: Vec<u8>,
    /// Stream offset of `buf[0]`.
    base: u64,
    /// Lines are counted up to this stream offset.
    counted_to: u64,
    /// 1-based line number at `counted_to`.
    line: u64,
    /// Stream offset of the first byte of the line holding `counted_to`.
    line_start: u64,
    /// Total bytes pushed.
    pushed: u64,
}

impl<'d> StreamScanner<'d> {
    pub fn new(det: &'d Detector) -> Self {
        StreamScanner {
            det,
            buf: Vec::new(),
            base: 0,
            counted_to: 0,
            line: 1,
            line_start: 0,
            pushed: 0,
        }
    }

    /// Bytes pushed so far.
    pub fn bytes(&self) -> u64 {
        self.pushed
    }

    /// Adds bytes; reports the findings that are complete.
    pub fn push(&mut self, data: &[u8], out: &mut impl FnMut(Located)) {
        self.pushed += data.len() as u64;
        self.buf.extend_from_slice(data);
        let Some(cut) = cut_point(&self.buf) else {
            // One cluster fills the whole buffer; keep reading unless it is
            // too long to be anything but noise.
            if self.buf.len() > 4 * BLOCK {
                self.scan(self.buf.len(), out);
                self.consume(self.buf.len());
            }
            return;
        };
        self.scan(cut, out);
        self.consume(cut);
    }

    /// Scans what is left at end of stream.
    pub fn finish(&mut self, out: &mut impl FnMut(Located)) {
        let n = self.buf.len();
        self.scan(n, out);
        self.consume(n);
    }

    fn scan(&mut self, limit: usize, out: &mut impl FnMut(Located)) {
        let buf = std::mem::take(&mut self.buf);
        for f in self.det.find_before(&buf, limit) {
            let offset = self.base + f.start as u64;
            let (line, column) = self.position(&buf, offset);
            out(Located {
                finding: f,
                offset,
                line,
                column,
            });
        }
        self.buf = buf;
    }

    /// Line and column of a stream offset inside the current buffer.
    fn position(&mut self, buf: &[u8], offset: u64) -> (u64, u64) {
        let from = usize::try_from(self.counted_to.saturating_sub(self.base)).unwrap_or(0);
        let to = usize::try_from(offset - self.base).unwrap_or(0);
        if to > from {
            let span = &buf[from..to];
            let n = span.iter().filter(|&&b| b == b'\n').count() as u64;
            if n > 0 {
                self.line += n;
                let last = span.iter().rposition(|&b| b == b'\n').unwrap_or(0);
                self.line_start = self.base + (from + last + 1) as u64;
            }
            self.counted_to = offset;
        }
        (self.line, offset - self.line_start + 1)
    }

    fn consume(&mut self, n: usize) {
        // Keep line accounting for the bytes we drop.
        if self.counted_to < self.base + n as u64 {
            let from = usize::try_from(self.counted_to - self.base).unwrap_or(0);
            let span = &self.buf[from..n];
            // Counting only matters if a later finding asks; do it now
            // because the bytes go away. Cheap, autovectorised.
            let cnt = span.iter().filter(|&&b| b == b'\n').count() as u64;
            if cnt > 0 {
                self.line += cnt;
                let last = span.iter().rposition(|&b| b == b'\n').unwrap_or(0);
                self.line_start = self.base + (from + last + 1) as u64;
            }
            self.counted_to = self.base + n as u64;
        }
        self.buf.drain(..n);
        self.base += n as u64;
    }
}

/// Where to cut a buffer whose end may continue: the index of the last byte
/// that is certainly not part of a cluster (a separator at the very end is
/// not: whether it belongs to a cluster depends on what comes next). `None`
/// when there is no such byte.
fn cut_point(buf: &[u8]) -> Option<usize> {
    let n = buf.len();
    let &last = buf.last()?;
    if !last.is_ascii_digit() && last != b' ' && last != b'-' {
        return Some(n - 1);
    }
    (0..n - 1).rev().find(|&i| !in_cluster(buf, i))
}

/// Scans a whole reader. Returns the number of bytes read.
pub fn scan_reader(
    det: &Detector,
    mut reader: impl Read,
    out: &mut impl FnMut(Located),
) -> io::Result<u64> {
    let mut s = StreamScanner::new(det);
    let mut block = vec![0u8; BLOCK];
    loop {
        let n = match reader.read(&mut block) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        s.push(&block[..n], out);
    }
    s.finish(out);
    Ok(s.bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that returns at most `n` bytes per read.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(self.1).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn lines_and_columns_survive_any_block_size() {
        let text =
            "first line\nsecond 4539 5787 6362 1486 x\n\nfourth:4526018159083012\n4661318609133";
        let det = Detector::default();
        for step in [1, 2, 3, 5, 7, 16, 1000] {
            let mut got = Vec::new();
            scan_reader(&det, Trickle(text.as_bytes(), step), &mut |l| {
                got.push((l.line, l.column, l.finding.masked()))
            })
            .ok();
            assert_eq!(
                got,
                [
                    (2, 8, "453957******1486".to_string()),
                    (4, 8, "452601******3012".to_string()),
                    (5, 1, "466131***9133".to_string()),
                ],
                "step {step}"
            );
        }
    }
}
