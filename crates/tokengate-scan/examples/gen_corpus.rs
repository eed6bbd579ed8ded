//! Generates the benchmark corpus for `tokengate scan` (docs/BENCHMARKS.md,
//! "PAN discovery"). Deterministic: the same arguments give the same bytes.
//!
//! ```text
//! cargo run --release -p tokengate-scan --example gen_corpus -- \
//!     --out /tmp/tg-corpus/logs --profile logs --files 8 --mib 128
//! ```
//!
//! Profiles:
//! - `logs`: mixed application logs: nginx access lines, JSON app logs,
//!   syslog, CSV exports, Java stack frames, XML payload dumps. Digits are
//!   everywhere (timestamps, IPs, ids). Negatives that look like card numbers
//!   are mixed in: phone numbers, epoch timestamps, order ids, IBANs,
//!   Luhn-valid 16-digit numbers outside every IIN range, 20–24 digit runs.
//! - `prose`: English-like text with few digits (the "few digits" case).
//!
//! Card numbers (random, Luhn-valid, every brand, none a test card) are
//! planted in about one line in 2,000: contiguous or grouped with spaces or
//! dashes, at line start and end, in JSON, CSV, XML, a URL query and as
//! track 2 data. `--truth FILE` gets one line per planted number:
//! `path<TAB>line<TAB>masked<TAB>brand<TAB>style`: masked only, never the
//! number.

// A command-line tool: it reports on stderr.
#![allow(clippy::print_stderr)]

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::PathBuf;

/// SplitMix64: small, fast, good enough for test data.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
    fn digits(&mut self, n: usize, s: &mut String) {
        for _ in 0..n {
            s.push(char::from(b'0' + self.below(10) as u8));
        }
    }
}

fn luhn_complete(body: &str) -> String {
    let mut sum = 0u32;
    for (i, b) in body.bytes().rev().enumerate() {
        let mut d = u32::from(b - b'0');
        if i % 2 == 0 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    format!("{body}{}", (10 - sum % 10) % 10)
}

/// (brand, IIN prefix, length, grouping used when printed with separators)
const BRANDS: &[(&str, &str, usize, &[usize])] = &[
    ("visa", "4", 16, &[4, 4, 4, 4]),
    ("visa", "4", 13, &[4, 4, 5]),
    ("visa", "4", 19, &[4, 4, 4, 4, 3]),
    ("mastercard", "51", 16, &[4, 4, 4, 4]),
    ("mastercard", "55", 16, &[4, 4, 4, 4]),
    ("mastercard", "2221", 16, &[4, 4, 4, 4]),
    ("mastercard", "2720", 16, &[4, 4, 4, 4]),
    ("amex", "34", 15, &[4, 6, 5]),
    ("amex", "37", 15, &[4, 6, 5]),
    ("discover", "6011", 16, &[4, 4, 4, 4]),
    ("discover", "65", 16, &[4, 4, 4, 4]),
    ("discover", "645", 16, &[4, 4, 4, 4]),
    ("jcb", "3530", 16, &[4, 4, 4, 4]),
    ("jcb", "3589", 16, &[4, 4, 4, 4]),
    ("diners", "300", 14, &[4, 6, 4]),
    ("diners", "36", 14, &[4, 6, 4]),
    ("diners", "38", 16, &[4, 4, 4, 4]),
    ("unionpay", "62", 16, &[4, 4, 4, 4]),
    ("unionpay", "62", 19, &[6, 13]),
    ("maestro", "6759", 16, &[4, 4, 4, 4]),
    ("maestro", "5018", 19, &[4, 4, 4, 4, 3]),
    ("mir", "2200", 16, &[4, 4, 4, 4]),
    ("rupay", "81", 16, &[4, 4, 4, 4]),
];

fn card(rng: &mut Rng) -> (String, &'static str, &'static [usize]) {
    let &(brand, prefix, len, groups) = rng.pick(BRANDS);
    let mut body = prefix.to_string();
    rng.digits(len - 1 - prefix.len(), &mut body);
    (luhn_complete(&body), brand, groups)
}

fn grouped(digits: &str, groups: &[usize], sep: char) -> String {
    let mut out = String::with_capacity(digits.len() + groups.len());
    let mut at = 0;
    for (i, g) in groups.iter().enumerate() {
        if i > 0 {
            out.push(sep);
        }
        out.push_str(&digits[at..at + g]);
        at += g;
    }
    out
}

fn masked(d: &str) -> String {
    format!(
        "{}{}{}",
        &d[..6],
        "*".repeat(d.len() - 10),
        &d[d.len() - 4..]
    )
}

const WORDS: &[&str] = &[
    "the",
    "order",
    "payment",
    "customer",
    "service",
    "request",
    "was",
    "processed",
    "with",
    "status",
    "pending",
    "retry",
    "cache",
    "miss",
    "for",
    "user",
    "session",
    "expired",
    "and",
    "token",
    "refreshed",
    "invoice",
    "shipped",
    "warehouse",
    "queue",
    "latency",
    "upstream",
    "connection",
    "reset",
    "by",
    "peer",
    "handler",
    "completed",
    "successfully",
    "in",
    "region",
    "checkout",
    "basket",
    "updated",
    "item",
    "removed",
    "coupon",
    "applied",
    "address",
    "validated",
    "email",
    "sent",
    "webhook",
    "delivered",
    "to",
    "endpoint",
    "after",
    "backoff",
];

const PATHS: &[&str] = &[
    "/api/v1/orders",
    "/api/v1/cart/items",
    "/static/app.js",
    "/login",
    "/checkout/confirm",
    "/api/v2/payments",
    "/healthz",
    "/images/logo.png",
    "/api/v1/users/me",
    "/search",
];

fn sentence(rng: &mut Rng, s: &mut String, words: usize) {
    for i in 0..words {
        if i > 0 {
            s.push(' ');
        }
        let w: &&str = rng.pick(WORDS);
        s.push_str(w);
    }
}

fn ts(rng: &mut Rng, s: &mut String) {
    let _ = write!(
        s,
        "2026-11-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        1 + rng.below(28),
        rng.below(24),
        rng.below(60),
        rng.below(60),
        rng.below(1000)
    );
}

fn ip(rng: &mut Rng, s: &mut String) {
    let _ = write!(
        s,
        "{}.{}.{}.{}",
        10 + rng.below(200),
        rng.below(256),
        rng.below(256),
        1 + rng.below(254)
    );
}

/// One background line of the `logs` profile (no card number).
fn log_line(rng: &mut Rng, s: &mut String) {
    match rng.below(100) {
        0..=29 => {
            ip(rng, s);
            let _ = write!(
                s,
                " - - [{:02}/Nov/2026:{:02}:{:02}:{:02} +0000] \"GET {}?page={}&id={} HTTP/1.1\" {} {} \"-\" \"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36\" 0.{:03}",
                1 + rng.below(28),
                rng.below(24),
                rng.below(60),
                rng.below(60),
                rng.pick(PATHS),
                rng.below(50),
                rng.below(10_000_000),
                rng.pick(&[200, 200, 200, 201, 204, 301, 404, 500]),
                rng.below(100_000),
                rng.below(1000)
            );
        }
        30..=54 => {
            s.push_str("{\"ts\":\"");
            ts(rng, s);
            let _ = write!(
                s,
                "\",\"level\":\"{}\",\"service\":\"checkout\",\"trace_id\":\"{:016x}{:016x}\",\"msg\":\"",
                rng.pick(&["info", "info", "warn", "debug", "error"]),
                rng.next(),
                rng.next()
            );
            let n = 4 + rng.below(6) as usize;
            sentence(rng, s, n);
            let _ = write!(
                s,
                "\",\"order_id\":\"ORD-2026{:04}-{:06}\",\"amount_cents\":{},\"user_id\":{}}}",
                rng.below(10000),
                rng.below(1_000_000),
                rng.below(100_000),
                rng.below(10_000_000)
            );
        }
        55..=69 => {
            let _ = write!(
                s,
                "Nov {:2} {:02}:{:02}:{:02} web-{} {}[{}]: ",
                1 + rng.below(28),
                rng.below(24),
                rng.below(60),
                rng.below(60),
                rng.below(9),
                rng.pick(&["sshd", "nginx", "app", "cron", "kernel"]),
                rng.below(65536)
            );
            let n = 5 + rng.below(8) as usize;
            sentence(rng, s, n);
            s.push_str(" from ");
            ip(rng, s);
            let _ = write!(s, " port {}", rng.below(65536));
        }
        70..=79 => {
            let _ = write!(
                s,
                "2026-11-{:02},{},ORD-{:06},{},EUR,{},",
                1 + rng.below(28),
                rng.below(1_000_000),
                rng.below(1_000_000),
                rng.below(100_000),
                rng.pick(&["shipped", "pending", "refunded"])
            );
            sentence(rng, s, 3);
        }
        80..=87 => {
            let _ = write!(
                s,
                "    at com.example.checkout.{}Service.{}({}Service.java:{})",
                rng.pick(&["Payment", "Order", "Cart", "User"]),
                rng.pick(&["charge", "submit", "load", "validate"]),
                rng.pick(&["Payment", "Order", "Cart", "User"]),
                rng.below(900)
            );
        }
        88..=91 => {
            let _ = write!(
                s,
                "<event id=\"{}\"><type>order.updated</type><amount currency=\"EUR\">{}.{:02}</amount><note>",
                rng.below(100_000_000),
                rng.below(1000),
                rng.below(100)
            );
            sentence(rng, s, 4);
            s.push_str("</note></event>");
        }
        _ => negative(rng, s),
    }
}

/// Lines with numbers that must not be reported.
fn negative(rng: &mut Rng, s: &mut String) {
    match rng.below(7) {
        0 => {
            let _ = write!(
                s,
                "support callback requested phone=+1 {}-555-{:04} alt=(020) 7946 {:04}",
                200 + rng.below(800),
                rng.below(10000),
                rng.below(10000)
            );
        }
        1 => {
            let _ = write!(
                s,
                "epoch_ms={} epoch_us={}",
                1_760_000_000_000 + rng.below(10_000_000_000),
                1_760_000_000_000_000 + rng.below(10_000_000_000_000)
            );
        }
        2 => {
            s.push_str("order reference ");
            let n = 20 + rng.below(5) as usize;
            rng.digits(n, s);
            s.push_str(" accepted");
        }
        3 => {
            s.push_str("payout to IBAN DE89 3704 0044 0532 0130 00 scheduled, ref ");
            rng.digits(8, s);
        }
        4 => {
            // Luhn-valid but outside every IIN range (leading 1, 7, 9, 0).
            let mut body = rng.pick(&["1", "7", "9", "0"]).to_string();
            rng.digits(14, &mut body);
            let _ = write!(s, "tracking number {}", luhn_complete(&body));
        }
        5 => {
            // A card number glued inside a longer digit run.
            let (d, _, _) = card(rng);
            let _ = write!(s, "blob={:04}{d}{:04}", rng.below(10000), rng.below(10000));
        }
        _ => {
            s.push_str("uuid=");
            let _ = write!(
                s,
                "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                rng.next() as u32,
                rng.next() as u16,
                rng.next() as u16,
                rng.next() as u16,
                rng.next() & 0xffff_ffff_ffff
            );
        }
    }
}

/// One background line of the `prose` profile.
fn prose_line(rng: &mut Rng, s: &mut String) {
    let n = 8 + rng.below(12) as usize;
    sentence(rng, s, n);
    s.push('.');
    if rng.below(20) == 0 {
        let _ = write!(s, " Chapter {}.", rng.below(100));
    }
}

/// A line with a planted card number; returns (style).
fn planted(rng: &mut Rng, s: &mut String, d: &str, groups: &[usize]) -> &'static str {
    let shown = match rng.below(4) {
        0 => grouped(d, groups, ' '),
        1 => grouped(d, groups, '-'),
        _ => d.to_string(),
    };
    match rng.below(8) {
        0 => {
            let _ = write!(s, "{shown} charge declined by issuer");
            "line-start"
        }
        1 => {
            s.push_str("WARN payment retry with card ");
            s.push_str(&shown);
            "line-end"
        }
        2 => {
            s.push_str("{\"ts\":\"");
            ts(rng, s);
            let _ = write!(
                s,
                "\",\"level\":\"debug\",\"request\":{{\"card\":{{\"number\":\"{shown}\",\"exp\":\"12/29\"}}}}}}"
            );
            "json"
        }
        3 => {
            let _ = write!(
                s,
                "2026-11-03,{},\"{shown}\",12/29,EUR",
                rng.below(1_000_000)
            );
            "csv"
        }
        4 => {
            let _ = write!(
                s,
                "<payment><cardNumber>{shown}</cardNumber><cvv>xxx</cvv></payment>"
            );
            "xml"
        }
        5 => {
            ip(rng, s);
            // Spaces would end a query value: contiguous or dashes only.
            let q = if shown.contains(' ') {
                d.to_string()
            } else {
                shown.clone()
            };
            let _ = write!(
                s,
                " - - \"GET /pay?amount=1299&card={q}&exp=1229 HTTP/1.1\" 302 0"
            );
            "url-query"
        }
        6 => {
            let _ = write!(s, "swipe data ;{d}=29121010000012345678?");
            "track2"
        }
        _ => {
            s.push_str("user pasted ");
            s.push_str(&shown);
            s.push_str(" into the notes field");
            "text"
        }
    }
}

fn main() -> std::io::Result<()> {
    let mut out = PathBuf::from("/tmp/tg-corpus/logs");
    let mut profile = "logs".to_string();
    let mut files = 8usize;
    let mut mib = 128u64;
    let mut truth: Option<PathBuf> = None;
    let mut rate = 2000u64;
    let mut seed = 42u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_default();
        match a.as_str() {
            "--out" => out = PathBuf::from(v),
            "--profile" => profile = v,
            "--files" => files = v.parse().unwrap_or(files),
            "--mib" => mib = v.parse().unwrap_or(mib),
            "--truth" => truth = Some(PathBuf::from(v)),
            "--rate" => rate = v.parse().unwrap_or(rate),
            "--seed" => seed = v.parse().unwrap_or(seed),
            _ => {
                eprintln!("unknown argument {a}");
                std::process::exit(2);
            }
        }
    }
    fs::create_dir_all(&out)?;
    let mut truth_w = match &truth {
        Some(p) => Some(BufWriter::new(File::create(p)?)),
        None => None,
    };
    let mut rng = Rng(seed);
    let mut planted_n = 0u64;
    let mut line = String::with_capacity(512);
    for f in 0..files {
        let path = out.join(format!("part-{f:02}.log"));
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&path)?);
        let target = mib << 20;
        let mut written = 0u64;
        let mut lineno = 0u64;
        while written < target {
            line.clear();
            lineno += 1;
            if rng.below(rate) == 0 {
                let (d, brand, groups) = card(&mut rng);
                let style = planted(&mut rng, &mut line, &d, groups);
                planted_n += 1;
                if let Some(t) = truth_w.as_mut() {
                    writeln!(
                        t,
                        "{}\t{lineno}\t{}\t{brand}\t{style}",
                        path.display(),
                        masked(&d)
                    )?;
                }
            } else if profile == "prose" {
                prose_line(&mut rng, &mut line);
            } else {
                log_line(&mut rng, &mut line);
            }
            line.push('\n');
            w.write_all(line.as_bytes())?;
            written += line.len() as u64;
        }
        w.flush()?;
    }
    if let Some(mut t) = truth_w {
        t.flush()?;
    }
    eprintln!(
        "wrote {files} files of {mib} MiB to {}, {planted_n} card numbers planted",
        out.display()
    );
    Ok(())
}
