//! How many lines an app's guests may write to the host's log per second
//! (`[app_limits] log_lines_per_second`): through the logging port and on
//! their stdout and stderr together. Every tenant's lines go to the one log
//! of the host, so one tenant logging in a loop must not flood it (nor the
//! disk and the collector behind it) for the others.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
    /// A report of the lines dropped since the last is on its way.
    report_pending: AtomicBool,
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
            report_pending: AtomicBool::new(false),
        }
    }

    /// Whether one more line of `app`, of `bytes` bytes, may be logged. A
    /// line refused is counted, and the count is logged in its place, a
    /// second after the last report at the earliest, whether more lines
    /// come or not (a burst that then stops is reported whole).
    pub fn admit(self: &Arc<Self>, app: &str, bytes: usize) -> bool {
        let kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .max(1);
        if self.bucket.take() && self.kib.take_n(kib) {
            return true;
        }
        // SeqCst here and in `report`: a line counted after a report took
        // the count must find no report pending, and schedule one.
        self.dropped.fetch_add(1, Ordering::SeqCst);
        // The first line dropped since the last report schedules the next.
        if !self.report_pending.swap(true, Ordering::SeqCst) {
            let due = *self.reported_at() + Duration::from_secs(1);
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    let budget = self.clone();
                    let app = app.to_owned();
                    runtime.spawn(async move {
                        tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
                        budget.report(&app);
                    });
                }
                // Outside the runtime (no caller here does that): at once
                // if due, else with a later line, never more than once a
                // second.
                Err(_) if Instant::now() >= due => self.report(app),
                Err(_) => self.report_pending.store(false, Ordering::SeqCst),
            }
        }
        false
    }

    /// Logs how many of `app`'s lines were dropped since the last report.
    fn report(&self, app: &str) {
        *self.reported_at() = Instant::now();
        // Before the count is taken: a line dropped from here on schedules
        // a report of its own (which may find nothing left to report).
        self.report_pending.store(false, Ordering::SeqCst);
        let dropped = self.dropped.swap(0, Ordering::SeqCst);
        if dropped > 0 {
            tracing::warn!(target: "berth::guest", app, dropped, per_second = self.per_second, "the app's guests logged more lines than [app_limits] log_lines_per_second allows; these were dropped");
        }
    }

    fn reported_at(&self) -> std::sync::MutexGuard<'_, Instant> {
        // An `Instant` cannot be left half-written: a poisoned lock is fine.
        self.reported.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_past_the_rate_are_dropped_and_counted() {
        let budget = Arc::new(LogBudget::new(3, 1024));
        assert!((0..3).all(|_| budget.admit("shop", 10)));
        assert!(!budget.admit("shop", 10));
        assert!(!budget.admit("shop", 10));
        assert_eq!(budget.dropped.load(Ordering::Relaxed), 2);
        // And in bytes: two lines of 16 KiB out of 20 KiB a second.
        let budget = Arc::new(LogBudget::new(100, 20));
        assert!(budget.admit("shop", 16 << 10));
        assert!(!budget.admit("shop", 16 << 10));
    }

    /// A burst past the rate that then stops is reported whole, a second
    /// after the budget's last report, without waiting for another line.
    #[tokio::test]
    async fn a_burst_is_reported_once_its_second_has_passed() {
        let started = Instant::now();
        let budget = Arc::new(LogBudget::new(3, 1024));
        assert_eq!((0..10).filter(|_| budget.admit("shop", 10)).count(), 3);
        assert_eq!(budget.dropped.load(Ordering::Relaxed), 7);
        assert!(budget.report_pending.load(Ordering::Acquire));
        // Polled, not slept once: on a loaded machine the report may run
        // late, after this task's own wake-up.
        while budget.dropped.load(Ordering::SeqCst) > 0 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "never reported"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!budget.report_pending.load(Ordering::Acquire));
        assert!(*budget.reported_at() >= started + Duration::from_secs(1));
        // The next burst is reported a second after that report.
        assert_eq!((0..5).filter(|_| budget.admit("shop", 10)).count(), 3);
        assert_eq!(budget.dropped.load(Ordering::Relaxed), 2);
        assert!(budget.report_pending.load(Ordering::Acquire));
    }
}
