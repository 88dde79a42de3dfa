//! Restart and image-pull backoff as Kubernetes does it (CrashLoopBackOff, ImagePullBackOff):
//! 10 s doubling to 5 min, forgotten once a container has run for 10 min. Pure functions; the
//! pod worker keeps the count and the clock.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub initial: Duration,
    pub max: Duration,
    /// A container that ran at least this long before failing starts the count again.
    pub reset_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}

impl BackoffPolicy {
    /// The wait before the next attempt after `failures` consecutive failures (0 = none yet):
    /// 0, 10 s, 20 s, 40 s, … 5 min.
    pub fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(failures - 1).unwrap_or(u32::MAX);
        self.initial.checked_mul(factor).map_or(self.max, |d| d.min(self.max))
    }

    /// The consecutive-failure count after another failure of an attempt that ran `ran_for`.
    pub fn after_failure(&self, failures: u32, ran_for: Duration) -> u32 {
        if ran_for >= self.reset_after {
            1
        } else {
            failures.saturating_add(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_ten_seconds_to_five_minutes() {
        let p = BackoffPolicy::default();
        let secs: Vec<u64> = (0..8).map(|n| p.delay(n).as_secs()).collect();
        assert_eq!(secs, vec![0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(p.delay(u32::MAX), p.max, "no overflow");
    }

    #[test]
    fn a_long_run_resets_the_count() {
        let p = BackoffPolicy::default();
        assert_eq!(p.after_failure(0, Duration::from_secs(1)), 1);
        assert_eq!(p.after_failure(4, Duration::from_secs(599)), 5);
        assert_eq!(p.after_failure(4, Duration::from_secs(600)), 1);
        assert_eq!(p.after_failure(u32::MAX, Duration::ZERO), u32::MAX);
    }
}
