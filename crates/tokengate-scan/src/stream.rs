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
    /// Note: `finding.start` / `finding.end` are positions in the block that
    /// was scanned; use `offset` for the position in the stream.
    pub finding: Finding,
    /// Byte offset of the first digit from the start of the stream.
    pub offset: u64,
    /// 1-based line number.
    pub line: u64,
    /// 1-based byte column within the line.
    pub column: u64,
}

/// Incremental scanner: feed bytes with [`push`](Self::push) (or let it
/// read with [`read_from`](Self::read_from)), then call
/// [`finish`](Self::finish). Used for files, archive members and followed
/// logs.
#[derive(Debug)]
pub struct StreamScanner<'d> {
    det: &'d Detector,
    /// Invariant: `buf[..filled]` holds unscanned bytes (the carried tail of
    /// the previous block, then new data); `buf[filled..]` is spare room.
    buf: Vec<u8>,
    filled: usize,
    /// Stream offset of `buf[0]`.
    base: u64,
    /// Lines are counted up to this stream offset.
    counted_to: u64,
    /// 1-based line number at `counted_to`.
    line: u64,
    /// Stream offset of the first byte of the line holding `counted_to`.
    line_start: u64,
    /// Total bytes taken in.
    pushed: u64,
}

impl<'d> StreamScanner<'d> {
    pub fn new(det: &'d Detector) -> Self {
        StreamScanner {
            det,
            buf: Vec::new(),
            filled: 0,
            base: 0,
            counted_to: 0,
            line: 1,
            line_start: 0,
            pushed: 0,
        }
    }

    /// Bytes taken in so far.
    pub fn bytes(&self) -> u64 {
        self.pushed
    }

    fn reserve(&mut self, n: usize) {
        if self.buf.len() < self.filled + n {
            self.buf.resize(self.filled + n, 0);
        }
    }

    /// Adds bytes; reports the findings that are complete.
    pub fn push(&mut self, data: &[u8], out: &mut impl FnMut(Located)) {
        self.reserve(data.len());
        self.buf[self.filled..self.filled + data.len()].copy_from_slice(data);
        self.filled += data.len();
        self.pushed += data.len() as u64;
        self.process(out);
    }

    /// Reads one block from `reader` straight into the buffer and scans what
    /// is complete. Returns the bytes read (0 at end of stream).
    pub fn read_from(
        &mut self,
        reader: &mut impl Read,
        out: &mut impl FnMut(Located),
    ) -> io::Result<usize> {
        self.reserve(BLOCK);
        let n = loop {
            match reader.read(&mut self.buf[self.filled..self.filled + BLOCK]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        self.filled += n;
        self.pushed += n as u64;
        if n > 0 {
            self.process(out);
        }
        Ok(n)
    }

    fn process(&mut self, out: &mut impl FnMut(Located)) {
        let Some(cut) = cut_point(&self.buf[..self.filled]) else {
            // One cluster fills the whole buffer; keep reading unless it is
            // too long to be anything but noise.
            if self.filled > 4 * BLOCK {
                self.scan(self.filled, out);
                self.consume(self.filled);
            }
            return;
        };
        self.scan(cut, out);
        self.consume(cut);
    }

    /// Scans what is left at end of stream.
    pub fn finish(&mut self, out: &mut impl FnMut(Located)) {
        let n = self.filled;
        self.scan(n, out);
        self.consume(n);
    }

    fn scan(&mut self, limit: usize, out: &mut impl FnMut(Located)) {
        let buf = std::mem::take(&mut self.buf);
        for f in self.det.find_before(&buf[..self.filled], limit) {
            let offset = self.base + f.start as u64;
            self.count_lines_to(&buf, offset);
            out(Located {
                finding: f,
                offset,
                line: self.line,
                column: offset - self.line_start + 1,
            });
        }
        self.buf = buf;
    }

    /// Advances line accounting to stream offset `to` (inside `buf`).
    fn count_lines_to(&mut self, buf: &[u8], to: u64) {
        if to <= self.counted_to {
            return;
        }
        let from = usize::try_from(self.counted_to - self.base).unwrap_or(0);
        let end = usize::try_from(to - self.base).unwrap_or(0);
        let span = &buf[from..end];
        let n = count_newlines(span);
        if n > 0 {
            self.line += n;
            let last = span.iter().rposition(|&b| b == b'\n').unwrap_or(0);
            self.line_start = self.base + (from + last + 1) as u64;
        }
        self.counted_to = to;
    }

    /// Drops `buf[..n]` (scanned), keeping line accounting.
    fn consume(&mut self, n: usize) {
        let buf = std::mem::take(&mut self.buf);
        self.count_lines_to(&buf, self.base + n as u64);
        self.buf = buf;
        self.buf.copy_within(n..self.filled, 0);
        self.filled -= n;
        self.base += n as u64;
    }
}

/// Newlines in `s`, eight bytes at a time.
fn count_newlines(s: &[u8]) -> u64 {
    const LO7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const NL: u64 = 0x0a0a_0a0a_0a0a_0a0a;
    let mut chunks = s.chunks_exact(8);
    let mut n = 0u64;
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let v = u64::from_le_bytes(w) ^ NL;
        // High bit set exactly in the zero bytes of v.
        let t = !(((v & LO7) + LO7) | v | LO7);
        n += u64::from(t.count_ones());
    }
    n + chunks.remainder().iter().filter(|&&b| b == b'\n').count() as u64
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
    while s.read_from(&mut reader, out)? > 0 {}
    s.finish(out);
    Ok(s.bytes())
}

/// Files at least this large are scanned in parallel pieces when the
/// scanner has more than one thread.
pub const PARALLEL_MIN: u64 = 64 << 20;
/// Piece size for parallel scans of one file.
pub const PIECE: u64 = 8 << 20;
/// Longest cluster followed past the end of a piece.
const MAX_LOOKAHEAD: usize = 1 << 20;

/// What one piece of a file found: findings with their line relative to the
/// piece, and the piece's newlines.
struct Piece {
    /// (finding, stream offset, newlines between piece start and finding,
    /// stream offset of the last of those newlines)
    found: Vec<(Finding, u64, u64, Option<u64>)>,
    newlines: u64,
    last_newline: Option<u64>,
}

fn read_at(f: &mut std::fs::File, at: u64, buf: &mut Vec<u8>, n: usize) -> io::Result<()> {
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(at))?;
    f.take(n as u64).read_to_end(buf)?;
    Ok(())
}

thread_local! {
    /// One piece buffer per worker thread, reused: fresh multi-megabyte
    /// buffers would cost a page fault per 4 KiB every time.
    static PIECE_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn scan_piece(det: &Detector, path: &std::path::Path, a: u64, b: u64) -> io::Result<Piece> {
    PIECE_BUF.with(|cell| {
        let mut hay = cell.take();
        hay.clear();
        let r = scan_piece_in(det, path, a, b, &mut hay);
        cell.replace(hay);
        r
    })
}

fn scan_piece_in(
    det: &Detector,
    path: &std::path::Path,
    a: u64,
    b: u64,
    hay: &mut Vec<u8>,
) -> io::Result<Piece> {
    let mut f = std::fs::File::open(path)?;
    // Two bytes of look-behind decide whether a cluster runs into the piece.
    let lb = a.saturating_sub(2);
    hay.reserve(usize::try_from(b - lb).unwrap_or(0) + 4096);
    read_at(&mut f, lb, hay, usize::try_from(b - lb).unwrap_or(0))?;
    let cs = usize::try_from(a - lb).unwrap_or(0);
    let ce = hay.len();
    // Look-ahead: follow a cluster that runs past the end, plus context for
    // track data.
    let mut extra = 0usize;
    loop {
        let before = hay.len();
        read_at(&mut f, lb + before as u64, hay, 4096)?;
        extra += hay.len() - before;
        let done = hay.len() == before
            || extra >= MAX_LOOKAHEAD
            || (ce..hay.len().saturating_sub(1)).any(|i| !in_cluster(hay, i) && i >= ce + 64);
        if done {
            break;
        }
    }
    let mut piece = Piece {
        found: Vec::new(),
        newlines: 0,
        last_newline: None,
    };
    let mut counted = cs;
    for f in det.find_range(hay, cs, ce) {
        let span = &hay[counted..f.start];
        let n = count_newlines(span);
        if n > 0 {
            piece.newlines += n;
            let last = span.iter().rposition(|&b| b == b'\n').unwrap_or(0);
            piece.last_newline = Some(lb + (counted + last) as u64);
        }
        counted = f.start;
        piece
            .found
            .push((f, lb + f.start as u64, piece.newlines, piece.last_newline));
    }
    // A number may start past `ce` inside a cluster that began before it;
    // clusters hold no newline, so nothing is lost by stopping at `ce`.
    let span = &hay[counted.min(ce)..ce];
    let n = count_newlines(span);
    if n > 0 {
        piece.newlines += n;
        let last = span.iter().rposition(|&b| b == b'\n').unwrap_or(0);
        piece.last_newline = Some(lb + (counted + last) as u64);
    }
    Ok(piece)
}

/// Scans the first `len` bytes of a plain file in pieces of `piece` bytes on
/// the current rayon pool; same findings, lines and columns as
/// [`scan_reader`].
pub fn scan_file_parallel(
    det: &Detector,
    path: &std::path::Path,
    len: u64,
    piece: u64,
) -> io::Result<Vec<Located>> {
    use rayon::prelude::*;
    let piece = piece.max(64);
    let starts: Vec<u64> = (0..len.div_ceil(piece)).map(|k| k * piece).collect();
    let pieces: Vec<io::Result<Piece>> = starts
        .par_iter()
        .map(|&a| scan_piece(det, path, a, (a + piece).min(len)))
        .collect();
    let mut out = Vec::new();
    let mut line = 1u64;
    let mut last_nl: Option<u64> = None;
    for p in pieces {
        let p = p?;
        for (finding, offset, nl, piece_last_nl) in p.found {
            let line_start = match (nl, piece_last_nl) {
                (n, Some(pos)) if n > 0 => pos + 1,
                _ => last_nl.map_or(0, |p| p + 1),
            };
            out.push(Located {
                finding,
                offset,
                line: line + nl,
                column: offset - line_start + 1,
            });
        }
        line += p.newlines;
        if p.last_newline.is_some() {
            last_nl = p.last_newline;
        }
    }
    Ok(out)
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
    fn parallel_pieces_match_the_stream() {
        // Numbers, grouped numbers, track data and long digit runs at every
        // distance from piece boundaries.
        let mut text = String::new();
        let parts = [
            "4539578763621486",
            "4539 5787 6362 1486",
            ";4526018159083012=29121010000012345678?",
            "12345678901234567890123 4539-5787-6362-1486",
            "x\n",
            "hello world ",
            "\n\n",
            "5182 1993 5181 9098",
            "-",
        ];
        let mut seed = 7u64;
        for _ in 0..3000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            text.push_str(parts[(seed >> 33) as usize % parts.len()]);
        }
        let dir = std::env::temp_dir().join(format!("tgscan-par-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let path = dir.join("big.log");
        std::fs::write(&path, &text).ok();
        let det = Detector::default();
        // `finding.start` is relative to the buffer scanned; compare the rest.
        let key = |l: &Located| {
            let f = &l.finding;
            (
                l.offset,
                l.line,
                l.column,
                f.masked(),
                f.kind,
                f.end - f.start,
            )
        };
        let mut want = Vec::new();
        scan_reader(&det, text.as_bytes(), &mut |l| want.push(key(&l))).ok();
        assert!(want.len() > 300, "{}", want.len());
        for piece in [64, 100, 777, 4096, 1 << 20] {
            let got: Vec<_> = scan_file_parallel(&det, &path, text.len() as u64, piece)
                .unwrap_or_default()
                .iter()
                .map(key)
                .collect();
            let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
            assert_eq!((got.len(), first_diff), (want.len(), None), "piece {piece}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn newline_count() {
        let s = b"a\nbb\n\n\xff\x8a\x0a0123456789\n\n";
        for i in 0..s.len() {
            let want = s[i..].iter().filter(|&&b| b == b'\n').count() as u64;
            assert_eq!(count_newlines(&s[i..]), want);
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
