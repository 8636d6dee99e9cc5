//! [`Throttle`]: lets a warning through at most once per interval, from any thread, so that a
//! failure repeated per request or per record is visible in the log without flooding it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// At most one `allow()` per interval returns true.
///
/// ```
/// use std::time::Duration;
/// let throttle = auditgate_queue::Throttle::new(Duration::from_secs(10));
/// assert!(throttle.allow());
/// assert!(!throttle.allow());
/// ```
#[derive(Debug)]
pub struct Throttle {
    interval_ms: u64,
    /// When `allow()` last returned true, in ms since `epoch`, offset by one interval so
    /// that the first call is allowed.
    last: AtomicU64,
    epoch: Instant,
}

impl Throttle {
    /// A throttle letting one call through per `interval`.
    pub fn new(interval: Duration) -> Throttle {
        Throttle {
            interval_ms: interval.as_millis() as u64,
            last: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Whether this call may log.
    pub fn allow(&self) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64 + self.interval_ms;
        let last = self.last.load(Ordering::Relaxed);
        now.saturating_sub(last) >= self.interval_ms
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}
