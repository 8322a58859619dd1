//! The one retry rule for transient faults (store unavailable, throttling): capped exponential
//! backoff with full jitter. The ASL's `Retry` on `StoreUnavailable` says the same thing
//! (`IntervalSeconds` 1, `BackoffRate` 2, `MaxDelaySeconds` 30, `MaxAttempts` 10,
//! `JitterStrategy` FULL — a test holds the two together), and the local orchestrator's
//! checkpoint loop and the relay use [`Backoff::TRANSIENT`] directly.
//!
//! Why these numbers: a DynamoDB throttling burst or a full disk lasts seconds to minutes, so the
//! budget spans minutes (about 1.5 min on average, 3 min at most), the 30 s cap keeps a recovered
//! store from idling a run for long, and full jitter spreads the retries of runs that failed
//! together. The ceiling is Express's: an execution lives five minutes at most, and one state's
//! whole budget must fit in it with room for the others. What outlasts the budget is not lost:
//! the run fails with a ticket and its hold released, and a redrive resumes it; locally the
//! relay resumes an execution an outage paused.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub initial_secs: f64,
    pub factor: f64,
    pub cap_secs: f64,
    /// Retries after the first attempt.
    pub retries: u32,
    pub full_jitter: bool,
}

impl Backoff {
    pub const TRANSIENT: Backoff = Backoff {
        initial_secs: 1.0,
        factor: 2.0,
        cap_secs: 30.0,
        retries: 10,
        full_jitter: true,
    };

    /// The capped delay before retry `attempt + 1`, before jitter.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let d = self.initial_secs * self.factor.powi(attempt.min(64) as i32);
        Duration::from_secs_f64(d.min(self.cap_secs))
    }

    /// The delay to sleep before retry `attempt + 1`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let c = self.ceiling(attempt);
        if self.full_jitter {
            c.mul_f64(rand::random::<f64>())
        } else {
            c
        }
    }

    /// The longest the whole budget can take (every delay at its ceiling).
    pub fn max_budget(&self) -> Duration {
        (0..self.retries).map(|a| self.ceiling(a)).sum()
    }

    /// Scales every delay (tests shorten the budget; the rule stays the same).
    pub fn scaled(mut self, scale: f64) -> Backoff {
        self.initial_secs *= scale;
        self.cap_secs *= scale;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_budget_spans_minutes_with_a_capped_delay() {
        let b = Backoff::TRANSIENT;
        assert_eq!(b.ceiling(0), Duration::from_secs(1));
        assert_eq!(b.ceiling(3), Duration::from_secs(8));
        assert_eq!(b.ceiling(9), Duration::from_secs(30));
        // 1+2+4+8+16 + 5×30 = 181 s: three minutes at most, inside Express's five.
        assert_eq!(b.max_budget(), Duration::from_secs(181));
        let draws: Vec<Duration> = (0..100).map(|_| b.delay(9)).collect();
        assert!(draws.iter().all(|d| *d <= Duration::from_secs(30)));
        assert!(draws.iter().any(|d| *d < Duration::from_secs(15)));
        assert!(draws.iter().any(|d| *d > Duration::from_secs(15)));
    }
}
