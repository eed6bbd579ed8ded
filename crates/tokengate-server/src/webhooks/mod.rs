//! The webhook receiver and its delivery workers.
//!
//! - [`config`]: the `[webhooks]` section.
//! - [`receive`]: `POST /webhooks/{source}`: rate limit, body limit,
//!   signature and timestamp check over the raw bytes, idempotency by event
//!   id, the PAN safety net, and a durable outbox write before the 2xx.
//!   Every refusal is audited with its reason and counted.
//! - [`deliver`]: at-least-once delivery from the outbox to the app
//!   (re-signed with Standard Webhooks v1), one ordered lane per source,
//!   exponential backoff with jitter, `Retry-After`, 410 disables,
//!   dead-letter after N attempts.
//! - [`nats`]: the same from the outbox to NATS JetStream (`Nats-Msg-Id`,
//!   waiting for the stream's ack).

pub mod config;
pub mod deliver;
pub mod nats;
pub mod receive;

pub use receive::Receivers;

/// Delay before attempt `attempts + 1` after `attempts` failures:
/// `base * 2^(attempts-1)`, capped at `max_ms`, with "equal jitter" (a
/// random point in the upper half) so that many senders do not retry in
/// step.
pub fn backoff_ms(attempts: u32, base_ms: u64, max_ms: u64) -> u64 {
    let exp = attempts.saturating_sub(1).min(40);
    let d = base_ms.saturating_mul(1u64 << exp).min(max_ms).max(1);
    let r = u64::from_le_bytes(tokengate_crypto::random::bytes::<8>().unwrap_or([0; 8]));
    d / 2 + r % (d / 2 + 1)
}

/// Seconds from a `Retry-After` header (delta-seconds, or an HTTP date).
pub fn retry_after_ms(value: &str, now_ms: i64) -> Option<u64> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(secs.saturating_mul(1000));
    }
    let at = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc2822).ok()?;
    let ms = i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()?;
    Some(u64::try_from(ms.saturating_sub(now_ms)).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        for _ in 0..100 {
            let d1 = backoff_ms(1, 1000, 60_000);
            assert!((500..=1000).contains(&d1), "{d1}");
            let d3 = backoff_ms(3, 1000, 60_000);
            assert!((2000..=4000).contains(&d3), "{d3}");
            let big = backoff_ms(30, 1000, 60_000);
            assert!((30_000..=60_000).contains(&big), "{big}");
        }
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(retry_after_ms("7", 0), Some(7000));
        assert_eq!(
            retry_after_ms("Thu, 01 Jan 1970 00:00:10 GMT", 4000),
            Some(6000)
        );
        assert_eq!(retry_after_ms("soon", 0), None);
    }
}
