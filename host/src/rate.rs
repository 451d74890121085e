//! A token bucket: a rate with bursts, for the limits the host applies to an
//! app as a whole (email sends, guest message publishes), so one tenant
//! cannot flood a relay or broker the host shares between tenants.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Allows `count` takes per `period`, in bursts of up to `count`.
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    /// Tokens left, and when they were counted.
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// `count` per `period` (both above 0: the host config refuses a 0
    /// count at load), starting full.
    pub fn new(count: u32, period: Duration) -> Self {
        let capacity = f64::from(count);
        Self {
            capacity,
            per_second: capacity / period.as_secs_f64().max(f64::MIN_POSITIVE),
            state: Mutex::new((capacity, Instant::now())),
        }
    }

    /// Takes a token if one is left.
    pub fn take(&self) -> bool {
        // A panic while holding the lock leaves a state that is still valid.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = &mut *state;
        let now = Instant::now();
        let refill = now.duration_since(*last).as_secs_f64() * self.per_second;
        *tokens = (*tokens + refill).min(self.capacity);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_up_to_the_count_then_refills_at_the_rate() {
        let bucket = TokenBucket::new(3, Duration::from_secs(3));
        assert!((0..3).all(|_| bucket.take()));
        assert!(!bucket.take(), "the burst is spent");
        // One token comes back every second (the margins are wide, so a
        // loaded machine does not fail the test).
        std::thread::sleep(Duration::from_millis(1100));
        assert!(bucket.take());
        assert!(!bucket.take());
    }
}
