//! A small in-memory token bucket per key (a user, an IP address, an email). Enough for a
//! single node; it slows down a caller who harvests prekey bundles (each fetch uses up one of
//! the target's one-time prekeys), guesses passwords, or floods the API with writes.

use std::{
    hash::Hash,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use dashmap::DashMap;

use crate::model::UserId;

/// Every this many checks, buckets that have refilled completely are forgotten.
const PRUNE_EVERY: u64 = 1024;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
pub struct RateLimiter<K: Eq + Hash = UserId> {
    /// Tokens a full bucket holds (the burst).
    burst: f64,
    /// Tokens regained per minute.
    per_minute: f64,
    buckets: DashMap<K, Bucket>,
    checks: AtomicU64,
}

impl<K: Eq + Hash> RateLimiter<K> {
    /// `per_minute` tokens a minute, and as many at once.
    pub fn new(per_minute: u32) -> Self {
        Self::with_burst(per_minute, per_minute)
    }

    /// Up to `burst` tokens at once, regained at `per_minute`.
    pub fn with_burst(burst: u32, per_minute: u32) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            per_minute: f64::from(per_minute.max(1)),
            buckets: DashMap::new(),
            checks: AtomicU64::new(0),
        }
    }

    /// Gives back a token taken for `key` (the attempt turned out not to count).
    pub fn refund(&self, key: &K) {
        if let Some(mut bucket) = self.buckets.get_mut(key) {
            bucket.tokens = (bucket.tokens + 1.0).min(self.burst);
        }
    }

    /// Fills `key`'s bucket again (e.g. failed logins stop counting after a success).
    pub fn forget(&self, key: &K) {
        self.buckets.remove(key);
    }

    /// Takes one token for `user`, or says how long to wait for the next one.
    pub fn check(&self, user: K) -> Result<(), Duration> {
        self.check_at(user, Instant::now())
    }

    /// `check`, as the `429` error with `Retry-After` in whole seconds (at least 1).
    pub fn take(&self, key: K) -> crate::error::Result<()> {
        self.check(key)
            .map_err(|wait| crate::error::Error::TooManyRequests {
                retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
            })
    }

    fn check_at(&self, user: K, now: Instant) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.buckets
                .retain(|_, bucket| self.refilled(*bucket, now) < self.burst);
        }
        let mut bucket = self.buckets.entry(user).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let tokens = self.refilled(*bucket, now);
        if tokens >= 1.0 {
            *bucket = Bucket {
                tokens: tokens - 1.0,
                at: now,
            };
            Ok(())
        } else {
            *bucket = Bucket { tokens, at: now };
            let per_second = self.per_minute / 60.0;
            Err(Duration::from_secs_f64((1.0 - tokens) / per_second))
        }
    }

    fn refilled(&self, bucket: Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        (bucket.tokens + elapsed * self.per_minute / 60.0).min(self.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn a_burst_is_allowed_then_refused_until_tokens_come_back() {
        let limiter = RateLimiter::new(60);
        let (alice, bob) = (UserId(Uuid::new_v4()), UserId(Uuid::new_v4()));
        let start = Instant::now();
        for _ in 0..60 {
            assert!(limiter.check_at(alice, start).is_ok());
        }
        let wait = limiter.check_at(alice, start).expect_err("bucket is empty");
        assert!(wait <= Duration::from_secs(1) && wait > Duration::ZERO);
        // Others are not affected; one token per second comes back.
        assert!(limiter.check_at(bob, start).is_ok());
        assert!(
            limiter
                .check_at(alice, start + Duration::from_secs(1))
                .is_ok()
        );
        assert!(
            limiter
                .check_at(alice, start + Duration::from_secs(1))
                .is_err()
        );
    }

    #[test]
    fn a_burst_can_exceed_the_rate_and_refunds_and_resets_give_tokens_back() {
        let limiter = RateLimiter::with_burst(3, 1);
        let alice = UserId(Uuid::new_v4());
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check_at(alice, start).is_ok());
        }
        let wait = limiter.check_at(alice, start).expect_err("burst used up");
        assert!(wait > Duration::from_secs(59) && wait <= Duration::from_secs(60));
        limiter.refund(&alice);
        assert!(limiter.check_at(alice, start).is_ok());
        assert!(limiter.check_at(alice, start).is_err());
        limiter.forget(&alice);
        for _ in 0..3 {
            assert!(limiter.check_at(alice, start).is_ok());
        }
    }

    #[test]
    fn full_buckets_are_forgotten() {
        let limiter = RateLimiter::new(60);
        let start = Instant::now();
        for _ in 1..PRUNE_EVERY {
            let _ = limiter.check_at(UserId(Uuid::new_v4()), start);
        }
        let later = start + Duration::from_secs(120);
        let _ = limiter.check_at(UserId(Uuid::new_v4()), later);
        assert_eq!(limiter.buckets.len(), 1);
    }
}
