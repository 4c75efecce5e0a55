//! When and how long to wait before asking the API again: exponential backoff with full
//! jitter, and the server's Retry-After when it gives one. No I/O here.

use std::time::Duration;

#[derive(Debug, Clone)]
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

/// HTTP statuses worth another try: rate limiting and server-side failures.
pub fn is_retryable_status(status: u16) -> bool {
    status == 429 || status == 408 || (500..=599).contains(&status)
}

/// Retry-After in its delay-seconds form. (The HTTP-date form is rare for APIs like this
/// and falls back to backoff.)
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
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
    fn which_statuses_are_retried() {
        for status in [429, 500, 502, 503, 504, 408] {
            assert!(is_retryable_status(status), "{status}");
        }
        for status in [400, 401, 403, 404, 422] {
            assert!(!is_retryable_status(status), "{status}");
        }
        assert_eq!(parse_retry_after(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
