//! Detector throughput on in-memory text (no I/O):
//! `cargo bench -p tokengate-scan --bench detector`.
//!
//! - `prose`: English-like text with few digits (about 0.1 % of bytes).
//! - `logs`: access-log and JSON-log lines (about 30 % digits).
//! - `digits`: random digit groups and separators (worst case).
//!
//! Each holds a Luhn-valid card number every 4 KiB or so.

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokengate_scan::Detector;

const SIZE: usize = 8 << 20;

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
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
    "for",
    "user",
    "session",
    "expired",
    "and",
    "token",
];

fn corpus(kind: &str) -> Vec<u8> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut s = String::with_capacity(SIZE + 1024);
    let mut next_card = 4096;
    while s.len() < SIZE {
        if s.len() > next_card {
            s.push_str("card 4539 5787 6362 1486 used\n");
            next_card += 4096;
        }
        match kind {
            "prose" => {
                for _ in 0..12 {
                    s.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
                    s.push(' ');
                }
                if rng.below(10) == 0 {
                    let _ = write!(s, "page {}", rng.below(500));
                }
                s.push_str(".\n");
            }
            "logs" => {
                let _ = writeln!(
                    s,
                    "10.{}.{}.{} - - [22/Nov/2026:{:02}:{:02}:{:02} +0000] \"GET /api/v1/orders/{}?page={} HTTP/1.1\" 200 {} 0.{:03}",
                    rng.below(256),
                    rng.below(256),
                    rng.below(256),
                    rng.below(24),
                    rng.below(60),
                    rng.below(60),
                    rng.below(10_000_000),
                    rng.below(50),
                    rng.below(100_000),
                    rng.below(1000)
                );
                let _ = writeln!(
                    s,
                    "{{\"ts\":\"2026-11-22T{:02}:{:02}:{:02}.{:03}Z\",\"level\":\"info\",\"msg\":\"order created\",\"order_id\":{},\"amount\":{}}}",
                    rng.below(24),
                    rng.below(60),
                    rng.below(60),
                    rng.below(1000),
                    rng.below(1_000_000_000),
                    rng.below(100_000)
                );
            }
            _ => {
                for _ in 0..rng.below(20) {
                    s.push(char::from(b'0' + rng.below(10) as u8));
                }
                s.push(if rng.below(2) == 0 { ' ' } else { '-' });
            }
        }
    }
    s.into_bytes()
}

fn bench(c: &mut Criterion) {
    let det = Detector::default();
    let mut g = c.benchmark_group("detector");
    g.sample_size(20);
    for kind in ["prose", "logs", "digits"] {
        let data = corpus(kind);
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function(kind, |b| b.iter(|| det.find(black_box(&data)).count()));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
