//! Lockout after repeated failed authentications (PCI DSS 8.3.4: at most 10
//! attempts, then locked for at least 30 minutes or until an administrator
//! unlocks), per API-key id and per client address, and the alerts that go
//! with it.
//!
//! State is per node and in memory: a restart clears it, and on several nodes
//! an attacker gets `threshold` attempts per node. Every failure and every
//! lockout is in the audit trail either way, and reaches the drains.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lockout settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockoutPolicy {
    /// Failures for one API-key id within `window` that lock it (0: never).
    pub key_threshold: u32,
    /// Failures from one client address within `window` that lock it (0:
    /// never). Higher than the key threshold: many users may share a NAT.
    pub ip_threshold: u32,
    pub window: Duration,
    /// How long a lock lasts.
    pub duration: Duration,
}

impl Default for LockoutPolicy {
    fn default() -> Self {
        LockoutPolicy {
            key_threshold: 10,
            ip_threshold: 100,
            window: Duration::from_secs(15 * 60),
            duration: Duration::from_secs(30 * 60),
        }
    }
}

/// What is counted: a presented key id, or a client address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Subject {
    Key(String),
    Ip(IpAddr),
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Key(k) => write!(f, "key={k}"),
            Subject::Ip(ip) => write!(f, "ip={ip}"),
        }
    }
}

#[derive(Debug)]
struct Entry {
    window_start: Instant,
    failures: u32,
    locked_until: Option<Instant>,
}

/// Failure counters. Bounded: at most `MAX_TRACKED` subjects are tracked
/// (the oldest windows are dropped first), so a flood of random addresses
/// cannot exhaust memory.
#[derive(Debug)]
pub(crate) struct Lockout {
    policy: LockoutPolicy,
    entries: Mutex<HashMap<Subject, Entry>>,
}

const MAX_TRACKED: usize = 100_000;

impl Lockout {
    fn threshold(&self, s: &Subject) -> u32 {
        match s {
            Subject::Key(_) => self.policy.key_threshold,
            Subject::Ip(_) => self.policy.ip_threshold,
        }
    }

    pub(crate) fn new(policy: LockoutPolicy) -> Lockout {
        Lockout {
            policy,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Seconds left if any of `subjects` is locked now.
    pub(crate) fn locked(&self, subjects: &[Subject], now: Instant) -> Option<u64> {
        let map = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        subjects
            .iter()
            .filter(|s| self.threshold(s) > 0)
            .filter_map(|s| map.get(s)?.locked_until)
            .filter(|until| *until > now)
            .map(|until| (until - now).as_secs().max(1))
            .max()
    }

    /// Count a failure; returns the subjects that became locked by it.
    pub(crate) fn fail(&self, subjects: &[Subject], now: Instant) -> Vec<Subject> {
        let mut map = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= MAX_TRACKED {
            let window = self.policy.window;
            map.retain(|_, e| {
                e.locked_until.is_some_and(|u| u > now)
                    || now.duration_since(e.window_start) < window
            });
        }
        let mut newly = Vec::new();
        for s in subjects {
            let threshold = self.threshold(s);
            if threshold == 0 {
                continue;
            }
            if map.len() >= MAX_TRACKED && !map.contains_key(s) {
                continue;
            }
            let e = map.entry(s.clone()).or_insert(Entry {
                window_start: now,
                failures: 0,
                locked_until: None,
            });
            if now.duration_since(e.window_start) >= self.policy.window {
                e.window_start = now;
                e.failures = 0;
            }
            e.failures += 1;
            let locked_now = e.locked_until.is_some_and(|u| u > now);
            if e.failures >= threshold && !locked_now {
                e.locked_until = Some(now + self.policy.duration);
                e.failures = 0;
                e.window_start = now;
                newly.push(s.clone());
            }
        }
        newly
    }

    /// A successful authentication clears the key's counter.
    pub(crate) fn succeed(&self, key: &Subject) {
        let mut map = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.get(key).is_some_and(|e| e.locked_until.is_none()) {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn locks_at_the_threshold_for_the_duration_then_opens() {
        let l = Lockout::new(LockoutPolicy {
            key_threshold: 3,
            ip_threshold: 3,
            window: Duration::from_secs(60),
            duration: Duration::from_secs(30),
        });
        let t0 = Instant::now();
        let s = [Subject::Ip("203.0.113.7".parse().unwrap())];
        assert!(l.fail(&s, t0).is_empty());
        assert!(l.fail(&s, t0).is_empty());
        assert!(l.locked(&s, t0).is_none());
        assert_eq!(l.fail(&s, t0), s.to_vec());
        assert_eq!(l.locked(&s, t0 + Duration::from_secs(10)), Some(20));
        assert!(l.locked(&s, t0 + Duration::from_secs(31)).is_none());
        // Failures outside the window do not add up.
        let k = [Subject::Key("key_a".into())];
        assert!(l.fail(&k, t0).is_empty());
        assert!(l.fail(&k, t0).is_empty());
        assert!(l.fail(&k, t0 + Duration::from_secs(61)).is_empty());
        assert!(l.locked(&k, t0 + Duration::from_secs(61)).is_none());
        // Success clears an unlocked counter.
        l.succeed(&k[0]);
        assert!(l.fail(&k, t0 + Duration::from_secs(62)).is_empty());
        assert!(l.fail(&k, t0 + Duration::from_secs(62)).is_empty());
        assert!(l.locked(&k, t0 + Duration::from_secs(62)).is_none());
    }

    #[test]
    fn zero_threshold_disables() {
        let l = Lockout::new(LockoutPolicy {
            key_threshold: 0,
            ..LockoutPolicy::default()
        });
        let s = [Subject::Key("k".into())];
        for _ in 0..100 {
            assert!(l.fail(&s, Instant::now()).is_empty());
        }
        assert!(l.locked(&s, Instant::now()).is_none());
    }
}
