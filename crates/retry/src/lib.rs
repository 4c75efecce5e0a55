//! How long walflow waits before trying again, wherever it does (the API, Postgres, Kafka,
//! Cassandra, the schema registry): exponential backoff with full jitter, capped.
//! [`RetryPolicy::delay`] is the wait before a numbered retry, honouring a server's
//! Retry-After; [`Backoff`] is a loop's running count, for loops that retry for as long as it
//! takes and start over once they get somewhere. No I/O here.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts after the first one.
    pub max_retries: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 8,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// A policy for loops that never give up: `max_retries` is not consulted.
    pub const fn forever(initial_backoff: Duration, max_backoff: Duration) -> RetryPolicy {
        RetryPolicy {
            max_retries: u32::MAX,
            initial_backoff,
            max_backoff,
        }
    }

    /// A fresh running count under this policy.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            policy: *self,
            retries: 0,
        }
    }

    /// The wait before retry number `retry` (1 for the first retry). `jitter` is a uniform
    /// draw in [0, 1): full jitter spreads many clients' retries instead of lining them up.
    /// A server's Retry-After wins when it asks for longer, capped at `max_backoff`.
    pub fn delay(&self, retry: u32, jitter: f64, retry_after: Option<Duration>) -> Duration {
        let exponent = retry.saturating_sub(1).min(20);
        let ceiling = self
            .initial_backoff
            .saturating_mul(1 << exponent)
            .min(self.max_backoff);
        let backoff = ceiling.mul_f64(jitter.clamp(0.0, 1.0));
        match retry_after {
            Some(asked) => asked.min(self.max_backoff).max(backoff),
            None => backoff,
        }
    }
}

/// The retries of one loop so far: each [`Backoff::next_delay`] waits up to twice as long as
/// the one before (up to the cap), drawn uniformly below that ceiling.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: RetryPolicy,
    retries: u32,
}

impl Backoff {
    /// The wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        self.retries = self.retries.saturating_add(1);
        self.policy
            .delay(self.retries, rand::rng().random::<f64>(), None)
    }

    /// The loop got somewhere: the next failure waits as little as the first.
    pub fn reset(&mut self) {
        self.retries = 0;
    }

    /// Retries since the start or the last reset.
    pub fn retries(&self) -> u32 {
        self.retries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy {
            max_retries: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        let almost_one = 0.999_999;
        assert!(policy.delay(1, almost_one, None) <= Duration::from_millis(100));
        assert!(policy.delay(2, almost_one, None) > Duration::from_millis(150));
        assert!(policy.delay(3, almost_one, None) <= Duration::from_millis(400));
        assert!(policy.delay(30, almost_one, None) <= Duration::from_secs(1));
        assert_eq!(policy.delay(5, 0.0, None), Duration::ZERO);
    }

    #[test]
    fn retry_after_is_honoured_but_capped() {
        let policy = RetryPolicy::default();
        assert_eq!(
            policy.delay(1, 0.0, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            policy.delay(1, 0.0, Some(Duration::from_secs(3600))),
            policy.max_backoff
        );
    }

    #[test]
    fn a_running_backoff_grows_to_the_cap_and_starts_over_after_a_reset() {
        let policy = RetryPolicy::forever(Duration::from_millis(100), Duration::from_secs(1));
        let mut backoff = policy.backoff();
        for _ in 0..40 {
            assert!(backoff.next_delay() <= Duration::from_secs(1));
        }
        assert_eq!(backoff.retries(), 40);
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
        assert_eq!(backoff.retries(), 1);
    }
}
