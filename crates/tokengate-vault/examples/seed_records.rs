//! Fill an initialised data directory with N card records for benchmarks
//! (`bench/run-rewrap-bench.sh`): real envelopes through the vault, 1,000
//! per batch, four batches in flight.
//!
//! Usage: seed_records DATA_DIR ADMIN_API_KEY N
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;
use std::time::Instant;

use tokengate_vault::{CardInput, RequestMeta, TokenizeRequest, Vault, VaultConfig};
use zeroize::Zeroizing;

/// A Luhn-valid 16-digit number built from `n` (test ranges only).
fn pan(n: u64) -> String {
    let body = format!("4{:014}", n % 100_000_000_000_000);
    let digits: Vec<u32> = body.chars().filter_map(|c| c.to_digit(10)).collect();
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    format!("{body}{}", (10 - sum % 10) % 10)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: seed_records DATA_DIR ADMIN_API_KEY N");
        std::process::exit(2);
    }
    let n: u64 = args[3].parse()?;
    let vault = Arc::new(Vault::open(VaultConfig::new(&args[1])).await?);
    let admin = vault
        .authenticate(Some(&args[2]), RequestMeta::default())
        .await?;
    let key = vault
        .create_api_key(&admin, "seed", &["tokenize".to_owned()])
        .await?;
    let caller = vault
        .authenticate(Some(&key.secret), RequestMeta::default())
        .await?;
    let start = Instant::now();
    let batches: Vec<u64> = (0..n.div_ceil(1000)).collect();
    for group in batches.chunks(4) {
        let mut tasks = Vec::new();
        for &b in group {
            let (vault, caller) = (vault.clone(), caller.clone());
            tasks.push(tokio::spawn(async move {
                let reqs: Vec<TokenizeRequest> = (b * 1000..((b + 1) * 1000).min(n))
                    .map(|i| TokenizeRequest {
                        card: CardInput {
                            number: Zeroizing::new(pan(i + 1)),
                            exp_month: 12,
                            exp_year: 2040,
                            name: None,
                            cvc: None,
                        },
                        ..TokenizeRequest::default()
                    })
                    .collect();
                vault.tokenize_batch(&caller, &reqs).await.map(|r| r.len())
            }));
        }
        for t in tasks {
            t.await??;
        }
    }
    println!(
        "seeded {n} records in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    vault.store().close().await;
    Ok(())
}
