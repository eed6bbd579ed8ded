//! Group commit on SQLite: one batch of 64 tokenize-shaped jobs (token row +
//! one audit event each), durable (WAL, synchronous=FULL).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokengate_audit::chain::ChainHash;
use tokengate_audit::{Action, AuditEvent, Ident, Outcome};
use tokengate_store::*;

struct NoSign;
impl HeadSigner for NoSign {
    fn sign(&self, _: u64, _: &ChainHash) -> Vec<u8> {
        vec![0; 64]
    }
}

fn job(n: u64) -> Job {
    let token = format!("tok_{n:032}");
    let mut ev = AuditEvent::new(
        1,
        Action::TokenCreate,
        Outcome::Success,
        Ident::from_static("key_bench"),
    );
    ev.token = Ident::new(&token);
    Job {
        ops: vec![Op::InsertToken(TokenRow {
            tenant: "default".into(),
            token,
            format: "opaque".into(),
            deterministic: false,
            fingerprint: vec![7; 32],
            fp_version: 1,
            kek_version: 1,
            wrapped_dek: vec![1; 60],
            ciphertext: vec![2; 90],
            brand: "visa".into(),
            bin: "424242".into(),
            last4: "4242".into(),
            exp_month: 12,
            exp_year: 2030,
            metadata: Some(r#"{"order":"bench"}"#.into()),
            created_at: 1,
            has_cvc: false,
        })],
        events: vec![ev],
        events_if_affected: vec![],
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = rt
        .block_on(Store::open_sqlite(&dir.path().join("b.db")))
        .unwrap();
    let mut n = 0u64;
    let mut g = c.benchmark_group("sqlite_commit");
    for size in [1usize, 64] {
        g.throughput(Throughput::Elements(size as u64));
        g.bench_function(format!("batch_{size}"), |b| {
            b.to_async(&rt).iter(|| {
                let jobs: Vec<Job> = (0..size)
                    .map(|_| {
                        n += 1;
                        job(n)
                    })
                    .collect();
                let store = store.clone();
                async move {
                    black_box(
                        store
                            .commit(jobs, std::sync::Arc::new(NoSign))
                            .await
                            .unwrap(),
                    )
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
