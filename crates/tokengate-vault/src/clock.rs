//! Wall-clock access in one place.

use std::time::{SystemTime, UNIX_EPOCH};

use tokengate_core::YearMonth;

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The current UTC month, for card-expiry checks.
pub fn this_month() -> YearMonth {
    let now = time::OffsetDateTime::now_utc();
    YearMonth {
        year: now.year() as u16,
        month: u8::from(now.month()),
    }
}

/// RFC 3339 for a Unix-millisecond timestamp.
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
