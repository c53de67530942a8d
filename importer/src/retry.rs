//! How transient failures are retried: capped exponential back-off with a budget of
//! consecutive failures. A transfer that makes progress earns its budget back, so a long
//! download over a flaky link survives many drops while a dead server fails in seconds.

use std::time::Duration;

/// Retry policy for dropped connections, timeouts and 5xx/408/429 answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Most retries in a row without receiving a byte (the first attempt is not a retry).
    pub max_retries: u32,
    /// Wait before the first retry.
    pub initial_backoff: Duration,
    /// Cap on the wait, which doubles after each failed retry.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 0.5 s doubling to 8 s, 8 retries: about 40 s of patience for a server that is down.
    fn default() -> Self {
        Self {
            max_retries: 8,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1-based).
    pub fn backoff(&self, retry: u32) -> Duration {
        let shift = retry.saturating_sub(1).min(20);
        self.initial_backoff.saturating_mul(1 << shift).min(self.max_backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_half_a_second_and_caps_at_eight() {
        let p = RetryPolicy::default();
        let secs: Vec<f64> = (1..=7).map(|r| p.backoff(r).as_secs_f64()).collect();
        assert_eq!(secs, [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]);
        assert_eq!(p.backoff(1000), Duration::from_secs(8));
    }
}
