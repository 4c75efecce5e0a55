//! When to ask the API again: which answers are worth another try, and the server's
//! Retry-After; how long to wait is walflow's one [`RetryPolicy`]. No I/O here.

use std::time::Duration;

pub use walflow_retry::RetryPolicy;

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
