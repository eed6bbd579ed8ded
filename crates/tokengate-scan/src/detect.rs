//! The card-number detector: bytes in, masked findings out.
//!
//! This module owns the rules for what counts as a card number in free text,
//! and it is the one detector of the product (scanner, edge proxy safety net,
//! webhook receiver). It does no I/O and allocates only per iterator.
//!
//! # What is a finding
//! A *cluster* is a maximal stretch of ASCII digits in which single spaces or
//! dashes may stand between two digits. A cluster splits into *groups* (the
//! digit runs between separators). A candidate is a sequence of consecutive
//! groups of one cluster that
//! - holds 13–19 digits (`min_len` is configurable down to 12 for Maestro),
//! - when it has separators, puts them only where a usual printed grouping for
//!   that length does (4-4-4-4, 4-6-5, 4-6-4, 4-4-4-4-3, 6-13, …; see
//!   [`GROUPINGS`]); a separator may be left out, and spaces and dashes mix,
//! - has a brand by the IIN ranges in `tokengate_core::brand` and a length that
//!   brand issues, and passes Luhn.
//!
//! Because a group is always a whole digit run, a number inside a longer
//! digit run is never a candidate. Candidates are then filtered: allow-list,
//! known test cards (unless asked for), and low-entropy numbers (repeated,
//! sequential or periodic digits).
//!
//! # Speed
//! Any card number spans at least `min_len` bytes made only of digits and
//! separators. The scan therefore probes one byte every `min_len` bytes and
//! only looks closer when the probe lands on a digit (or a separator between
//! digits); text with few digits is skipped at a fraction of a byte read per
//! byte. Every byte is examined at most about twice.
//!
//! Invariant: a [`Finding`] never holds more than BIN6 and last4 of the
//! number; the full digits live only on the stack inside [`Matches::next`].

use std::collections::HashSet;
use std::fmt;

use tokengate_core::Brand;
use tokengate_core::brand;
use tokengate_core::luhn;

use crate::testcards;

/// Shortest number the ISO/IEC 7812 numbering allows (some Maestro cards).
pub const MIN_PAN_LEN: usize = 12;
/// Longest card number.
pub const MAX_PAN_LEN: usize = 19;
/// Default shortest number reported: 13 digits, as PCI scanners use.
pub const DEFAULT_MIN_LEN: usize = 13;

/// Printed groupings a card number may carry, by total length. A candidate's
/// separator positions must be a subset of one grouping's boundaries.
pub const GROUPINGS: &[&[u8]] = &[
    &[4, 4, 4],       // 12 (Maestro)
    &[4, 4, 5],       // 13
    &[4, 3, 3, 3],    // 13
    &[4, 6, 4],       // 14 (Diners)
    &[4, 4, 6],       // 14
    &[4, 6, 5],       // 15 (Amex)
    &[4, 4, 4, 3],    // 15
    &[4, 4, 4, 4],    // 16
    &[4, 4, 4, 5],    // 17
    &[4, 4, 4, 4, 1], // 17
    &[4, 4, 4, 6],    // 18
    &[4, 4, 4, 4, 2], // 18
    &[4, 4, 4, 4, 3], // 19
    &[6, 13],         // 19 (UnionPay, Maestro)
    &[4, 4, 4, 7],    // 19
];

/// Boundary bitmasks of [`GROUPINGS`], indexed by total length.
fn grouping_masks() -> [[u32; 4]; MAX_PAN_LEN + 1] {
    let mut out = [[0u32; 4]; MAX_PAN_LEN + 1];
    let mut used = [0usize; MAX_PAN_LEN + 1];
    for g in GROUPINGS {
        let total: usize = g.iter().map(|&x| usize::from(x)).sum();
        let mut mask = 0u32;
        let mut cum = 0usize;
        for &len in &g[..g.len() - 1] {
            cum += usize::from(len);
            mask |= 1 << cum;
        }
        if total <= MAX_PAN_LEN && used[total] < 4 {
            out[total][used[total]] = mask;
            used[total] += 1;
        }
    }
    out
}

/// How the number appeared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// A card number in text.
    Pan,
    /// Magnetic-stripe track 1 data (`%B<PAN>^NAME^YYMM…`): sensitive
    /// authentication data that must never be stored after authorisation.
    Track1,
    /// Magnetic-stripe track 2 data (`;<PAN>=YYMM…`, or `D` as separator as
    /// in EMV tag 57).
    Track2,
}

impl Kind {
    /// Stable lower-case name for output.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Pan => "pan",
            Kind::Track1 => "track1",
            Kind::Track2 => "track2",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One card number found in a haystack. Holds BIN6 and last4 only.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Finding {
    /// Byte offset of the first digit in the haystack.
    pub start: usize,
    /// Byte offset one past the last digit.
    pub end: usize,
    pub brand: Brand,
    pub kind: Kind,
    /// True when the number is a documented test card (reported only when
    /// the detector was asked to include test cards).
    pub test_card: bool,
    /// Invariant: `len` is 12..=19.
    len: u8,
    /// Invariant: ASCII digits.
    bin6: [u8; 6],
    /// Invariant: ASCII digits.
    last4: [u8; 4],
}

impl Finding {
    /// Number of digits of the card number.
    pub fn digits_len(&self) -> usize {
        usize::from(self.len)
    }

    /// The first six digits.
    pub fn bin6(&self) -> &str {
        std::str::from_utf8(&self.bin6).unwrap_or("??????")
    }

    /// The last four digits.
    pub fn last4(&self) -> &str {
        std::str::from_utf8(&self.last4).unwrap_or("????")
    }

    /// BIN6, one `*` per hidden digit, last4: the most PCI DSS lets anyone see.
    pub fn masked(&self) -> String {
        let mut s = String::with_capacity(self.digits_len());
        s.push_str(self.bin6());
        s.extend(std::iter::repeat_n(
            '*',
            self.digits_len().saturating_sub(10),
        ));
        s.push_str(self.last4());
        s
    }
}

impl fmt::Debug for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Finding")
            .field("start", &self.start)
            .field("end", &self.end)
            .field("brand", &self.brand)
            .field("kind", &self.kind)
            .field("masked", &self.masked())
            .field("test_card", &self.test_card)
            .finish()
    }
}

/// Numbers the operator has declared harmless.
#[derive(Clone, Default)]
pub struct AllowList {
    /// Exact numbers. Invariant: ASCII digits, 12..=19 long.
    exact: HashSet<Vec<u8>>,
    /// (BIN6, last4, length) triples, as printed in our own `masked` output.
    masked: HashSet<([u8; 6], [u8; 4], u8)>,
}

impl fmt::Debug for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AllowList")
            .field("exact", &self.exact.len())
            .field("masked", &self.masked.len())
            .finish()
    }
}

/// An allow-list entry that could not be read; never echoes the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("allow-list entry is neither a card number nor a masked number (BIN6, `*`s, last4)")]
pub struct AllowEntryError;

impl AllowList {
    pub fn new() -> AllowList {
        AllowList::default()
    }

    /// Add an entry: a card number (digits, optionally with spaces or
    /// dashes) or a masked number such as `411111******1111` (BIN6, one
    /// `*` or `x` per hidden digit, last4) as printed by the scanner.
    pub fn add(&mut self, entry: &str) -> Result<(), AllowEntryError> {
        let entry = entry.trim();
        let mut digits = Vec::with_capacity(MAX_PAN_LEN);
        let mut stars = 0usize;
        let mut star_at = None;
        for (i, b) in entry.bytes().enumerate() {
            match b {
                b'0'..=b'9' => digits.push(b),
                b'*' | b'x' | b'X' => {
                    star_at.get_or_insert(i);
                    stars += 1;
                }
                b' ' | b'-' => {}
                _ => return Err(AllowEntryError),
            }
        }
        let total = digits.len() + stars;
        if !(MIN_PAN_LEN..=MAX_PAN_LEN).contains(&total) {
            return Err(AllowEntryError);
        }
        if stars == 0 {
            self.exact.insert(digits);
            return Ok(());
        }
        if digits.len() != 10 {
            return Err(AllowEntryError);
        }
        let mut bin6 = [0u8; 6];
        let mut last4 = [0u8; 4];
        bin6.copy_from_slice(&digits[..6]);
        last4.copy_from_slice(&digits[6..]);
        let len = u8::try_from(total).map_err(|_| AllowEntryError)?;
        self.masked.insert((bin6, last4, len));
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.masked.is_empty()
    }

    fn allows(&self, digits: &[u8], bin6: [u8; 6], last4: [u8; 4]) -> bool {
        if self.is_empty() {
            return false;
        }
        let len = u8::try_from(digits.len()).unwrap_or(0);
        self.exact.contains(digits) || self.masked.contains(&(bin6, last4, len))
    }
}

/// Detector settings.
#[derive(Clone, Debug)]
pub struct DetectorConfig {
    /// Report documented test card numbers (flagged `test_card`).
    pub include_test_cards: bool,
    /// Report numbers with repeated, sequential or periodic digits.
    pub include_low_entropy: bool,
    /// Shortest number reported, 12..=19 (default 13).
    pub min_len: usize,
    /// Numbers never reported.
    pub allow: AllowList,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            include_test_cards: false,
            include_low_entropy: false,
            min_len: DEFAULT_MIN_LEN,
            allow: AllowList::new(),
        }
    }
}

/// What the rules say about one candidate digit string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    NotCard,
    /// A card number that a rule (test card, low entropy, allow-list) hides.
    Suppressed,
    /// Brand and test-card flag.
    Card(Brand, bool),
}

/// Byte classes for the scan loop.
const DIGIT: u8 = 1;
const SEP: u8 = 2;

const fn class_table() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut b = b'0';
    while b <= b'9' {
        t[b as usize] = DIGIT;
        b += 1;
    }
    t[b' ' as usize] = SEP;
    t[b'-' as usize] = SEP;
    t
}

static CLASS: [u8; 256] = class_table();

#[inline(always)]
fn is_digit(b: u8) -> bool {
    CLASS[usize::from(b)] == DIGIT
}

#[inline(always)]
fn is_sep(b: u8) -> bool {
    CLASS[usize::from(b)] == SEP
}

/// True when `hay[i]` belongs to a cluster: a digit, or a single separator
/// between two digits.
#[inline(always)]
pub(crate) fn in_cluster(hay: &[u8], i: usize) -> bool {
    match hay.get(i) {
        Some(&b) if is_digit(b) => true,
        Some(&b) if is_sep(b) => {
            i > 0
                && hay.get(i - 1).is_some_and(|&p| is_digit(p))
                && hay.get(i + 1).is_some_and(|&n| is_digit(n))
        }
        _ => false,
    }
}

/// The card-number detector. Cheap to share between threads (`&Detector`).
#[derive(Clone, Debug)]
pub struct Detector {
    cfg: DetectorConfig,
    /// Invariant: 12..=19.
    min_len: usize,
    masks: [[u32; 4]; MAX_PAN_LEN + 1],
}

impl Default for Detector {
    fn default() -> Self {
        Detector::new(DetectorConfig::default())
    }
}

impl Detector {
    pub fn new(cfg: DetectorConfig) -> Detector {
        let min_len = cfg.min_len.clamp(MIN_PAN_LEN, MAX_PAN_LEN);
        Detector {
            cfg,
            min_len,
            masks: grouping_masks(),
        }
    }

    pub fn config(&self) -> &DetectorConfig {
        &self.cfg
    }

    /// Every card number in `hay`, in order, never overlapping.
    pub fn find<'d, 'h>(&'d self, hay: &'h [u8]) -> Matches<'d, 'h> {
        self.find_before(hay, hay.len())
    }

    /// Like [`find`](Self::find), but only numbers that start before `limit`
    /// are reported; bytes after `limit` are context (used for streaming,
    /// where the caller has cut `hay` at a byte that is not in a cluster).
    pub fn find_before<'d, 'h>(&'d self, hay: &'h [u8], limit: usize) -> Matches<'d, 'h> {
        Matches {
            det: self,
            hay,
            limit: limit.min(hay.len()),
            pos: 0,
            groups: Vec::new(),
            pending: None,
        }
    }

    /// Numbers of the clusters that start in `from..limit`, where a cluster
    /// already running at `from` (begun before it) is skipped: it belongs
    /// to whoever scans the bytes before `from`. Used to scan one file in
    /// parallel pieces.
    pub fn find_range<'d, 'h>(
        &'d self,
        hay: &'h [u8],
        from: usize,
        limit: usize,
    ) -> Matches<'d, 'h> {
        let mut pos = from.min(hay.len());
        if pos > 0 && in_cluster(hay, pos - 1) {
            while pos < hay.len() && in_cluster(hay, pos) {
                pos += 1;
            }
        }
        Matches {
            det: self,
            hay,
            limit: limit.min(hay.len()),
            pos,
            groups: Vec::new(),
            pending: None,
        }
    }

    /// True when `hay` holds at least one reportable card number.
    pub fn is_match(&self, hay: &[u8]) -> bool {
        self.find(hay).next().is_some()
    }

    /// `hay` with every reported card number masked in place: digits other
    /// than BIN6 and last4 become `*`, separators and length are kept (so
    /// offsets and `Content-Length` arithmetic stay valid). Borrowed when
    /// nothing was found. For the edge proxy's safety net and log scrubbing.
    pub fn mask<'h>(&self, hay: &'h [u8]) -> std::borrow::Cow<'h, [u8]> {
        let mut out: Option<Vec<u8>> = None;
        for f in self.find(hay) {
            let o = out.get_or_insert_with(|| hay.to_vec());
            let total = f.digits_len();
            let mut seen = 0usize;
            for b in &mut o[f.start..f.end] {
                if b.is_ascii_digit() {
                    if seen >= 6 && seen < total - 4 {
                        *b = b'*';
                    }
                    seen += 1;
                }
            }
        }
        match out {
            Some(v) => std::borrow::Cow::Owned(v),
            None => std::borrow::Cow::Borrowed(hay),
        }
    }

    /// Judges one candidate digit string (no separators).
    fn check(&self, digits: &[u8]) -> Verdict {
        let len = digits.len();
        if !(self.min_len..=MAX_PAN_LEN).contains(&len) {
            return Verdict::NotCard;
        }
        // Cheapest rejections first: 4-digit prefix, then Luhn (9 in 10).
        if !prefix_may_have_brand(digits) || !luhn::is_valid(digits) {
            return Verdict::NotCard;
        }
        let Some(brand) = brand::detect(digits) else {
            return Verdict::NotCard;
        };
        if !brand.lengths().contains(&len) {
            return Verdict::NotCard;
        }
        let test_card = testcards::is_test_card(digits);
        if test_card {
            if !self.cfg.include_test_cards {
                return Verdict::Suppressed;
            }
        } else if !self.cfg.include_low_entropy && low_entropy(digits) {
            return Verdict::Suppressed;
        }
        let (bin6, last4) = bin6_last4(digits);
        if self.cfg.allow.allows(digits, bin6, last4) {
            return Verdict::Suppressed;
        }
        Verdict::Card(brand, test_card)
    }

    /// True when the separator layout of a multi-group window fits a usual
    /// printed grouping of `total` digits.
    fn grouping_ok(&self, lens: impl Iterator<Item = usize>, total: usize) -> bool {
        let mut mask = 0u32;
        let mut cum = 0usize;
        let mut lens = lens.peekable();
        while let Some(l) = lens.next() {
            cum += l;
            if lens.peek().is_some() {
                mask |= 1 << cum;
            }
        }
        self.masks[total].iter().any(|&m| m != 0 && mask & !m == 0)
    }
}

/// Leading digits that some IIN range in `tokengate_core::brand` starts
/// with (2: Mastercard, Mir; 3: Amex, JCB, Diners; 4: Visa; 5: Mastercard,
/// Maestro, RuPay; 6: Discover, UnionPay, Maestro, RuPay; 8: RuPay). A test
/// checks this against every 6-digit prefix, so a brand added to core with a
/// new leading digit fails the build's tests until it is added here.
const BRAND_FIRST_DIGIT: [bool; 10] = [
    false, false, true, true, true, true, true, false, true, false,
];

#[inline]
fn prefix_may_have_brand(digits: &[u8]) -> bool {
    BRAND_FIRST_DIGIT[usize::from(digits[0].wrapping_sub(b'0') % 10)]
}

fn bin6_last4(digits: &[u8]) -> ([u8; 6], [u8; 4]) {
    let mut bin6 = [0u8; 6];
    let mut last4 = [0u8; 4];
    if digits.len() >= 10 {
        bin6.copy_from_slice(&digits[..6]);
        last4.copy_from_slice(&digits[digits.len() - 4..]);
    }
    (bin6, last4)
}

/// True for numbers no issuer hands out and people type as placeholders:
/// a run of 8 or more equal digits, a run of 8 or more digits counting up or
/// down (9→0 wraps), an account part (after BIN6, before the check digit) of
/// one repeated digit, or a body that repeats with a period of 1–4 digits.
pub fn low_entropy(digits: &[u8]) -> bool {
    let n = digits.len();
    if n < 10 {
        return false;
    }
    let body = &digits[..n - 1];
    let account = &digits[6..n - 1];
    if account.iter().all(|&d| d == account[0]) {
        return true;
    }
    let (mut same, mut up, mut down) = (1usize, 1usize, 1usize);
    for w in body.windows(2) {
        let (a, b) = (w[0], w[1]);
        same = if a == b { same + 1 } else { 1 };
        up = if (a - b'0' + 1) % 10 == b - b'0' {
            up + 1
        } else {
            1
        };
        down = if (b - b'0' + 1) % 10 == a - b'0' {
            down + 1
        } else {
            1
        };
        if same >= 8 || up >= 8 || down >= 8 {
            return true;
        }
    }
    (1..=4).any(|p| body.len() > 2 * p && body.iter().zip(&body[p..]).all(|(a, b)| a == b))
}

/// Iterator over the findings of one haystack.
#[derive(Debug)]
pub struct Matches<'d, 'h> {
    det: &'d Detector,
    hay: &'h [u8],
    /// Only clusters starting before `limit` are examined.
    limit: usize,
    /// Invariant: no unreported finding starts before `pos`, and `hay[pos-1]`
    /// (if any) is not inside a cluster that is still to be examined.
    pos: usize,
    /// Reused buffer of (start, end) digit groups of the current cluster.
    groups: Vec<(usize, usize)>,
    /// Remaining groups of the current cluster: (next group index).
    pending: Option<usize>,
}

impl Matches<'_, '_> {
    /// Finds the next cluster holding at least `min_len` digits that starts
    /// before `limit`, fills `groups`, and moves `pos` past it.
    fn next_cluster(&mut self) -> bool {
        let hay = self.hay;
        let min_len = self.det.min_len;
        loop {
            if self.pos >= self.limit {
                return false;
            }
            // Probe: any number starting at or after `pos` covers this byte.
            let probe = self.pos + min_len - 1;
            if probe >= hay.len() {
                self.pos = hay.len();
                return false;
            }
            // A number covering `probe` spans at least `min_len` (≥ 12)
            // digit-or-separator bytes, so it covers the 6 bytes before the
            // probe or the 6 bytes after it. Three lookups per side reject most
            // short numbers (dates, times, ids) without expanding them.
            let class = |i: usize| hay.get(i).is_some_and(|&b| CLASS[usize::from(b)] != 0);
            let plausible = in_cluster(hay, probe)
                && ((probe >= 6 && class(probe - 2) && class(probe - 4) && class(probe - 6))
                    || (class(probe + 2) && class(probe + 4) && class(probe + 6)));
            if !plausible {
                self.pos = probe + 1;
                continue;
            }
            // Expand to the whole cluster. It cannot reach back before `pos`.
            let mut cs = probe;
            while cs > self.pos && in_cluster(hay, cs - 1) {
                cs -= 1;
            }
            let mut ce = probe + 1;
            while ce < hay.len() && in_cluster(hay, ce) {
                ce += 1;
            }
            self.pos = ce + 1;
            if cs >= self.limit {
                // Belongs to the next block of a stream.
                self.pos = cs;
                self.limit = cs;
                return false;
            }
            let seps = hay[cs..ce].iter().filter(|&&b| is_sep(b)).count();
            if ce - cs - seps < min_len {
                continue;
            }
            self.groups.clear();
            let mut g = cs;
            for (i, &b) in hay.iter().enumerate().take(ce).skip(cs) {
                if is_sep(b) {
                    self.groups.push((g, i));
                    g = i + 1;
                }
            }
            self.groups.push((g, ce));
            return true;
        }
    }

    /// Tries windows of groups starting at `groups[i]`. The longest window
    /// that is a card number wins (a 19-digit card printed 4-4-4-4-3 must not
    /// be cut to the 16 digits before its last group). Returns the finding
    /// (`None` when a rule suppresses it) and the index of the group after
    /// the window; `None` when no window starting here is a card number.
    fn window_at(&self, i: usize) -> Option<(Option<Finding>, usize)> {
        let det = self.det;
        let mut buf = [0u8; MAX_PAN_LEN];
        let mut total = 0usize;
        let mut best: Option<(usize, usize, Verdict)> = None;
        for j in i..self.groups.len() {
            let (s, e) = self.groups[j];
            let len = e - s;
            if total + len > MAX_PAN_LEN {
                break;
            }
            buf[total..total + len].copy_from_slice(&self.hay[s..e]);
            total += len;
            if total < det.min_len {
                continue;
            }
            if j > i && !det.grouping_ok(self.groups[i..=j].iter().map(|(s, e)| e - s), total) {
                continue;
            }
            match det.check(&buf[..total]) {
                Verdict::NotCard => {}
                v => best = Some((j, total, v)),
            }
        }
        let (j, total, verdict) = best?;
        let Verdict::Card(brand, test_card) = verdict else {
            return Some((None, j + 1));
        };
        let (bin6, last4) = bin6_last4(&buf[..total]);
        let start = self.groups[i].0;
        let end = self.groups[j].1;
        let kind = track_kind(self.hay, start, end);
        if kind != Kind::Track2
            && (in_long_hex_token(self.hay, start, end) || in_uuid(self.hay, start, end))
        {
            // Part of a hash or trace id: the whole token is consumed.
            return Some((None, j + 1));
        }
        let finding = Finding {
            start,
            end,
            brand,
            kind,
            test_card,
            len: u8::try_from(total).unwrap_or(0),
            bin6,
            last4,
        };
        Some((Some(finding), j + 1))
    }
}

impl Iterator for Matches<'_, '_> {
    type Item = Finding;

    fn next(&mut self) -> Option<Finding> {
        loop {
            let i = match self.pending.take() {
                Some(i) => i,
                None => {
                    if !self.next_cluster() {
                        return None;
                    }
                    0
                }
            };
            let mut i = i;
            while i < self.groups.len() {
                match self.window_at(i) {
                    Some((Some(f), next)) => {
                        self.pending = Some(next);
                        return Some(f);
                    }
                    Some((None, next)) => i = next,
                    None => i += 1,
                }
            }
        }
    }
}

/// Shortest hexadecimal token (hash, trace id, UUID without dashes) whose
/// digit runs are not card numbers.
const LONG_HEX_TOKEN: usize = 24;

/// True when `hay[start..end]` sits inside a run of 24 or more hex digits
/// that also holds a letter (a digit-only run is a longer digit run and never
/// gets here).
fn in_long_hex_token(hay: &[u8], start: usize, end: usize) -> bool {
    let before = hay[..start]
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_hexdigit())
        .count();
    let after = hay[end..]
        .iter()
        .take_while(|b| b.is_ascii_hexdigit())
        .count();
    (before > 0 || after > 0) && before + (end - start) + after >= LONG_HEX_TOKEN
}

/// True when `hay[start..end]` lies inside a UUID (`8-4-4-4-12` hex digits):
/// its dash-separated groups can be all digits and look like 4-4-4-4.
fn in_uuid(hay: &[u8], start: usize, end: usize) -> bool {
    let is_tok = |b: &u8| b.is_ascii_hexdigit() || *b == b'-';
    let from = start - hay[..start].iter().rev().take_while(|b| is_tok(b)).count();
    let to = end + hay[end..].iter().take_while(|b| is_tok(b)).count();
    let tok = &hay[from..to];
    // The token may run into neighbouring text; look for a UUID shape that
    // covers the number.
    (0..tok.len().saturating_sub(35)).any(|i| {
        let u = &tok[i..i + 36];
        let covers = from + i <= start && end <= from + i + 36;
        covers
            && u.iter().enumerate().all(|(k, b)| {
                if matches!(k, 8 | 13 | 18 | 23) {
                    *b == b'-'
                } else {
                    b.is_ascii_hexdigit()
                }
            })
    })
}

/// Classifies the context of a number at `hay[start..end]` as track data.
fn track_kind(hay: &[u8], start: usize, end: usize) -> Kind {
    let digits_after = |from: usize, n: usize| {
        hay.get(from..from + n)
            .is_some_and(|s| s.iter().all(|&b| is_digit(b)))
    };
    match hay.get(end) {
        // Track 2: PAN '=' YYMM service-code(3) …
        Some(b'=') | Some(b'D') if digits_after(end + 1, 7) => Kind::Track2,
        // Track 1: 'B' PAN '^' NAME(2..=26) '^' YYMM service-code(3) …
        Some(b'^') if start > 0 && hay[start - 1] == b'B' => {
            let name_end = hay
                .get(end + 1..hay.len().min(end + 28))
                .and_then(|s| s.iter().position(|&b| b == b'^'));
            match name_end {
                Some(n) if n >= 1 && digits_after(end + 2 + n, 7) => Kind::Track1,
                _ => Kind::Pan,
            }
        }
        _ => Kind::Pan,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(hay: &str) -> Vec<String> {
        Detector::default()
            .find(hay.as_bytes())
            .map(|f| f.masked())
            .collect()
    }

    #[test]
    fn finds_plain_and_grouped() {
        assert_eq!(masked("pan=4539578763621486;"), ["453957******1486"]);
        assert_eq!(masked("4539 5787 6362 1486"), ["453957******1486"]);
        assert_eq!(masked("4539-5787-6362-1486"), ["453957******1486"]);
        assert_eq!(masked("4539 57876362-1486"), ["453957******1486"]);
        assert_eq!(
            masked("x 3400 000000 00009 y").len(),
            0,
            "test-like amex suppressed"
        );
    }

    #[test]
    fn rejects_bad_groupings_and_longer_runs() {
        assert!(masked("45395 78763 62148 6").is_empty());
        assert!(masked("14539578763621486").is_empty());
        assert!(masked("45395787636214860").is_empty());
        assert!(masked("4539  5787 6362 1486").is_empty());
    }

    #[test]
    fn longest_window_wins() {
        // 19-digit Visa printed 4-4-4-4-3 whose first 16 digits also pass Luhn.
        let d = Detector::default();
        let f: Vec<_> = d.find(b"x 4909 9603 0824 6281 946 y").collect();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].digits_len(), 19);
    }

    #[test]
    fn separated_neighbours_do_not_hide_a_number() {
        assert_eq!(masked("qty 2 4539578763621486 ok"), ["453957******1486"]);
        assert_eq!(
            masked("2026-01-02 4539 5787 6362 1486"),
            ["453957******1486"]
        );
    }

    #[test]
    fn first_digit_table_agrees_with_core() {
        let mut seen = [false; 10];
        let mut num = *b"0000000000000000";
        for p in 0..1_000_000u32 {
            let mut x = p;
            for k in (0..6).rev() {
                num[k] = b'0' + (x % 10) as u8;
                x /= 10;
            }
            if brand::detect(&num).is_some() {
                seen[usize::from(num[0] - b'0')] = true;
            }
        }
        assert_eq!(seen, BRAND_FIRST_DIGIT);
    }

    #[test]
    fn low_entropy_rules() {
        assert!(low_entropy(b"4111111111111111"));
        assert!(low_entropy(b"4242424242424242"));
        assert!(low_entropy(b"4012345678901234"));
        assert!(low_entropy(b"4000000000000002"));
        assert!(!low_entropy(b"4539578763621486"));
    }

    #[test]
    fn track_data() {
        let d = Detector::default();
        let t2 = b";4539578763621486=29121011234567890?";
        assert_eq!(d.find(t2).next().map(|f| f.kind), Some(Kind::Track2));
        let t1 = b"%B4539578763621486^DOE/JOHN^2912101123456789?";
        assert_eq!(d.find(t1).next().map(|f| f.kind), Some(Kind::Track1));
    }

    #[test]
    fn limit_cuts_reporting_not_context() {
        let hay = b"a 4539578763621486 b 4539578763621486=29121011234";
        let d = Detector::default();
        let all: Vec<_> = d.find(hay).collect();
        assert_eq!(all.len(), 2);
        let first: Vec<_> = d.find_before(hay, 20).collect();
        assert_eq!(first.len(), 1);
    }

    #[test]
    fn hex_tokens_are_not_cards() {
        assert!(masked("trace=ab4539578763621486cdef0123").is_empty());
        assert!(masked("id=123a4539-5787-6362-1486-b12c3d4e5f60").is_empty());
        assert!(masked("id=4539578a-4539-5787-6362-148612345678").is_empty());
        assert_eq!(masked("q=%3D4539578763621486%26"), ["453957******1486"]);
        assert_eq!(masked("cardB4539578763621486x"), ["453957******1486"]);
    }

    #[test]
    fn mask_in_place() {
        let d = Detector::default();
        let hay = b"{\"pan\":\"4539 5787 6362 1486\",\"n\":12345}";
        let m = d.mask(hay);
        assert_eq!(
            &m[..],
            &b"{\"pan\":\"4539 57** **** 1486\",\"n\":12345}"[..]
        );
        assert!(matches!(
            d.mask(b"nothing 123"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn debug_is_masked() {
        let f = Detector::default().find(b"4539578763621486").next();
        let s = format!("{f:?}");
        assert!(!s.contains("4539578763621486"), "{s}");
        assert!(s.contains("453957******1486"));
    }

    #[test]
    fn allow_list() {
        let mut allow = AllowList::new();
        allow.add("453957******1486").ok();
        allow.add("5182 1993 5181 9098").ok();
        assert!(allow.add("hello").is_err());
        let d = Detector::new(DetectorConfig {
            allow,
            ..Default::default()
        });
        assert!(!d.is_match(b"4539578763621486"));
        assert!(!d.is_match(b"5182199351819098"));
        assert!(d.is_match(b"4163726516761223"));
    }
}
