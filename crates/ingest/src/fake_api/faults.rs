//! Faults the fake API injects on purpose, so that retries, rejects and slow networks are
//! tested against behaviour rather than assumed.

use std::time::Duration;

use serde_json::json;

use super::generator::{rng_for, ApiUser};

#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Share of requests answered 429 with a Retry-After header.
    pub rate_429: f64,
    pub retry_after_secs: u64,
    /// Share of requests answered 500.
    pub rate_500: f64,
    /// Share of requests answered 200 with a body cut short (malformed JSON).
    pub malformed_json_rate: f64,
    /// Share of records sent with a missing or wrong field. Which records is fixed by the
    /// seed and position, so a test can tell exactly which ones should be rejected.
    pub bad_record_rate: f64,
    /// Added to every response.
    pub latency: Duration,
}

/// What the fake API does with one request, drawn from `draw` in [0, 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFault {
    None,
    TooManyRequests,
    ServerError,
    MalformedJson,
}

impl Faults {
    pub fn for_request(&self, draw: f64) -> RequestFault {
        let mut threshold = self.rate_429;
        if draw < threshold {
            return RequestFault::TooManyRequests;
        }
        threshold += self.rate_500;
        if draw < threshold {
            return RequestFault::ServerError;
        }
        threshold += self.malformed_json_rate;
        if draw < threshold {
            return RequestFault::MalformedJson;
        }
        RequestFault::None
    }

    /// Breaks the record at `position` when the seed says it is one of the bad ones.
    pub fn maybe_corrupt(&self, seed: &str, position: u64, record: &mut ApiUser) {
        if self.bad_record_rate <= 0.0 {
            return;
        }
        let mut rng = rng_for(seed, position, 1);
        if rng.next_f64() >= self.bad_record_rate {
            return;
        }
        corrupt(record, rng.below(4));
    }
}

/// The ways a record goes bad, each one `walflow ingest` must reject with its own reason.
pub fn corrupt(record: &mut ApiUser, kind: u64) {
    match kind {
        0 => {
            if let Some(login) = &mut record.login {
                login.uuid = None;
            }
        }
        1 => {
            if let Some(dob) = &mut record.dob {
                dob.date = json!("not-a-date");
            }
        }
        2 => {
            if let Some(location) = &mut record.location {
                location.street.number = json!("twelve");
            }
        }
        _ => record.email = Some(json!(42)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_faults_follow_their_rates() {
        let faults = Faults {
            rate_429: 0.1,
            rate_500: 0.2,
            malformed_json_rate: 0.3,
            ..Faults::default()
        };
        assert_eq!(faults.for_request(0.05), RequestFault::TooManyRequests);
        assert_eq!(faults.for_request(0.15), RequestFault::ServerError);
        assert_eq!(faults.for_request(0.45), RequestFault::MalformedJson);
        assert_eq!(faults.for_request(0.65), RequestFault::None);
        assert_eq!(Faults::default().for_request(0.0), RequestFault::None);
    }
}
