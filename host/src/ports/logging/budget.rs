//! How many lines an app's guests may write to the host's log per second
//! (`[app_limits] log_lines_per_second`): through the logging port and on
//! their stdout and stderr together. Every tenant's lines go to the one log
//! of the host, so one tenant logging in a loop must not flood it (nor the
//! disk and the collector behind it) for the others.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::rate::TokenBucket;

/// Lines per second an app's guests may log unless the host config says
/// otherwise, in bursts of as many.
pub const DEFAULT_LINES_PER_SECOND: u32 = 1000;
/// KiB per second an app's guests may log unless the host config says
/// otherwise, in bursts of as many.
pub const DEFAULT_KIB_PER_SECOND: u32 = 1024;

/// One app's log lines: a rate, and the lines dropped past it.
pub struct LogBudget {
    bucket: TokenBucket,
    /// Bytes, in KiB: lines may be up to 16 KiB.
    kib: TokenBucket,
    per_second: u32,
    dropped: AtomicU64,
    /// When the dropped lines were last reported.
    reported: Mutex<Instant>,
}

impl LogBudget {
    /// A budget of `per_second` lines and `kib_per_second` KiB (each at
    /// least 1; the host config refuses 0).
    pub fn new(per_second: u32, kib_per_second: u32) -> Self {
        let per_second = per_second.max(1);
        Self {
            bucket: TokenBucket::new(per_second, Duration::from_secs(1)),
            kib: TokenBucket::new(kib_per_second.max(1), Duration::from_secs(1)),
            per_second,
            dropped: AtomicU64::new(0),
            reported: Mutex::new(Instant::now()),
        }
    }

    /// Whether one more line of `app`, of `bytes` bytes, may be logged. A
    /// line refused is counted, and the count is logged (once a second at
    /// most) in its place.
    pub fn admit(&self, app: &str, bytes: usize) -> bool {
        let kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .max(1);
        if self.bucket.take() && self.kib.take_n(kib) {
            return true;
        }
        self.dropped.fetch_add(1, Ordering::Relaxed);
        // Whoever holds the lock reports; the others only count.
        let Ok(mut reported) = self.reported.try_lock() else {
            return false;
        };
        if reported.elapsed() >= Duration::from_secs(1) {
            *reported = Instant::now();
            let dropped = self.dropped.swap(0, Ordering::Relaxed);
            tracing::warn!(target: "berth::guest", app, dropped, per_second = self.per_second, "the app's guests logged more lines than [app_limits] log_lines_per_second allows; these were dropped");
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_past_the_rate_are_dropped_and_counted() {
        let budget = LogBudget::new(3, 1024);
        assert!((0..3).all(|_| budget.admit("shop", 10)));
        assert!(!budget.admit("shop", 10));
        assert!(!budget.admit("shop", 10));
        assert_eq!(budget.dropped.load(Ordering::Relaxed), 2);
        // And in bytes: two lines of 16 KiB out of 20 KiB a second.
        let budget = LogBudget::new(100, 20);
        assert!(budget.admit("shop", 16 << 10));
        assert!(!budget.admit("shop", 16 << 10));
    }
}
