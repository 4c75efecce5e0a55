use std::fmt;
use std::str::FromStr;

/// A position in the write-ahead log (XLogRecPtr), shown as Postgres shows it: `16/B374D848`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an LSN (expected two hexadecimal halves, as in 16/B374D848)")]
pub struct ParseLsnError(String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(text: &str) -> Result<Lsn, ParseLsnError> {
        let invalid = || ParseLsnError(text.to_owned());
        let (high, low) = text.split_once('/').ok_or_else(invalid)?;
        let high = u32::from_str_radix(high, 16).map_err(|_| invalid())?;
        let low = u32::from_str_radix(low, 16).map_err(|_| invalid())?;
        Ok(Lsn((u64::from(high) << 32) | u64::from(low)))
    }
}

/// Microseconds since the Postgres epoch, 2000-01-01 00:00:00 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PgTimestamp(pub i64);

/// Seconds from the Unix epoch to the Postgres epoch.
const POSTGRES_EPOCH_UNIX_SECONDS: i64 = 946_684_800;

impl PgTimestamp {
    pub fn unix_micros(self) -> i64 {
        self.0
            .saturating_add(POSTGRES_EPOCH_UNIX_SECONDS * 1_000_000)
    }

    pub fn unix_millis(self) -> i64 {
        self.unix_micros().div_euclid(1000)
    }

    pub fn from_unix_micros(micros: i64) -> PgTimestamp {
        PgTimestamp(micros.saturating_sub(POSTGRES_EPOCH_UNIX_SECONDS * 1_000_000))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_print_and_parse_as_postgres_does() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert!("16B374D848".parse::<Lsn>().is_err());
        assert!("x/1".parse::<Lsn>().is_err());
    }

    #[test]
    fn timestamps_convert_to_unix_time() {
        assert_eq!(PgTimestamp(0).unix_millis(), 946_684_800_000);
        assert_eq!(
            PgTimestamp::from_unix_micros(946_684_800_000_001),
            PgTimestamp(1)
        );
    }
}
