//! Group commit on SQLite, durable (nothing returns before its WAL fsync):
//! - `sqlite_commit`: one batch of 1, 16 or 64 tokenize-shaped jobs (token
//!   row + one audit event each), committed directly. Tokens, fingerprints
//!   and request ids are spread like real ones (random-looking), so every
//!   index insert lands where production's would.
//! - `audit_append`: audit-only jobs (one record each, shaped like a failed
//!   authentication) submitted by 256 concurrent tasks through the
//!   `GroupCommitter`, as the server does — durable appends per second.
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

/// SplitMix64: a well-spread 64-bit value per `n` (not a secret; only so
/// that keys land at random places in the B-trees, as random tokens do).
fn spread(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn job(n: u64) -> Job {
    let (a, b) = (spread(n), spread(n ^ 0xA5A5_A5A5_A5A5_A5A5));
    let token = format!("tok_{a:016x}{b:016x}");
    let mut fingerprint = Vec::with_capacity(32);
    for k in 0..4 {
        fingerprint.extend_from_slice(&spread(n.wrapping_mul(4).wrapping_add(k)).to_be_bytes());
    }
    let mut ev = AuditEvent::new(
        1_795_000_000_000 + n as i64,
        Action::TokenCreate,
        Outcome::Success,
        Ident::from_static("key_bench"),
    );
    ev.token = Ident::new(&token);
    // Request ids start with their millisecond, as the server's do.
    ev.request_id = Ident::new(&format!(
        "req_{:012x}{:012x}",
        1_795_000_000_000 + n,
        spread(!n) & 0xFFFF_FFFF_FFFF
    ));
    ev.client_ip = Some(std::net::IpAddr::from([203, 0, 113, 7]));
    ev.user_agent = Some(tokengate_audit::SafeText::new("wrk/4.1"));
    Job {
        ops: vec![Op::InsertToken(TokenRow {
            tenant: "default".into(),
            token,
            format: "opaque".into(),
            deterministic: false,
            fingerprint,
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
    for size in [1usize, 16, 64] {
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

    let committer = rt
        .block_on(async { GroupCommitter::spawn(store.clone(), std::sync::Arc::new(NoSign), 256) });
    let mut g = c.benchmark_group("audit_append");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    g.bench_function("group_commit_256_submitters", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let committer = committer.clone();
            async move {
                let start = std::time::Instant::now();
                let tasks: Vec<_> = (0..256u64)
                    .map(|t| {
                        let committer = committer.clone();
                        tokio::spawn(async move {
                            let mut i = t;
                            while i < iters {
                                committer.submit(auth_failure(i)).await.unwrap().unwrap();
                                i += 256;
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
                start.elapsed()
            }
        })
    });
    g.finish();
}

/// An audit-only job shaped like a refused request.
fn auth_failure(n: u64) -> Job {
    let mut ev = AuditEvent::new(
        1_795_000_000_000 + n as i64,
        Action::AuthFailure,
        Outcome::failure("invalid_api_key"),
        Ident::from_static("anonymous"),
    );
    ev.request_id = Ident::new(&format!("req_{n:020}"));
    ev.client_ip = Some(std::net::IpAddr::from([203, 0, 113, 7]));
    ev.user_agent = Some(tokengate_audit::SafeText::new("curl/8.5.0"));
    Job {
        events: vec![ev],
        ..Job::default()
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
