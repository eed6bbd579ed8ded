//! Luhn and PAN parsing: the per-card cost on every tokenize.
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use tokengate_core::{Pan, luhn, redact_pans};

fn bench(c: &mut Criterion) {
    c.bench_function("luhn_16_digits", |b| {
        b.iter(|| luhn::is_valid(black_box(b"4539578763621486")))
    });
    c.bench_function("pan_parse_grouped", |b| {
        b.iter(|| Pan::parse(black_box("4539 5787 6362 1486")))
    });
    let line = "2026-11-22T12:00:00Z INFO request done route=/v1/tokens status=201 latency_us=812 request_id=4f1c2a";
    c.bench_function("redact_log_line_clean", |b| {
        b.iter(|| redact_pans(black_box(line)).len())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
