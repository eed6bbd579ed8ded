#![allow(clippy::expect_used)] // benchmark set-up: fail loudly
//! The per-request crypto cost of tokenize and reveal, and the fingerprint.
use std::collections::HashMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tokengate_crypto::{Envelope, FileRootKey, KeyRing, RecordAad};

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = FileRootKey::create(&dir.path().join("root.key")).expect("root");
    let keys = KeyRing::generate_initial(&root, 0).expect("keys");
    let ring = KeyRing::load(&root, &keys, &HashMap::new()).expect("ring");
    let payload =
        br#"{"number":"4539578763621486","exp_month":12,"exp_year":2030,"name":"A CARDHOLDER"}"#;
    let aad = RecordAad {
        tenant: "default",
        token: "tok_6aqe2fcbmdzvwp4kq3r7t2n5xhj6sg4ayb3kfqe7",
    };

    c.bench_function("fingerprint_hmac_sha256", |b| {
        b.iter(|| ring.fingerprint(1, black_box("default"), black_box("4539578763621486")))
    });
    c.bench_function("tokenize_crypto_path", |b| {
        // What tokenize does: fingerprint + new DEK + seal payload + wrap DEK + token bytes.
        b.iter(|| {
            let fp = ring.fingerprint(1, "default", "4539578763621486");
            let _t: [u8; 20] = tokengate_crypto::random::bytes().expect("rand");
            (fp, Envelope::seal(&ring, aad, black_box(payload)))
        })
    });
    let env = Envelope::seal(&ring, aad, payload).expect("seal");
    c.bench_function("reveal_crypto_path", |b| {
        b.iter(|| env.open(&ring, black_box(aad)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
