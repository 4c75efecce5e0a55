//! Postgres's ISO text output of `date`, `timestamp` and `timestamptz` (DateStyle ISO, which
//! cdc's connections ask for), read into days and microseconds since 1970-01-01 for every
//! value Postgres holds: years of four or more digits, BC years (` BC` at the end; 1 BC is
//! year 0), and UTC offsets with minutes or seconds (`+05:30`, the `+00:09:21` of old local
//! mean times). `infinity` and `-infinity` are not values here: callers decide their form.

/// Days since 1970-01-01 of `2026-01-02`, `0044-03-15 BC`, `5874897-12-31`.
pub fn date_days(text: &str) -> Option<i64> {
    let (text, bc) = era(text);
    days(text, bc)
}

/// Microseconds since 1970-01-01 00:00 of a `timestamp` (no zone: read as if UTC, as
/// Debezium's MicroTimestamp does): `2026-01-02 03:04:05.5`.
pub fn timestamp_micros(text: &str) -> Option<i64> {
    let (text, bc) = era(text);
    let (date, time) = text.split_once(' ')?;
    let micros = time_micros(time)?;
    days(date, bc)?
        .checked_mul(86_400_000_000)?
        .checked_add(micros)
}

/// Microseconds since 1970-01-01 00:00 UTC of a `timestamptz`: `2026-01-02 03:04:05.5+02`.
pub fn timestamptz_micros(text: &str) -> Option<i64> {
    let (text, bc) = era(text);
    let (date, time_and_offset) = text.split_once(' ')?;
    let sign_at = time_and_offset.rfind(['+', '-'])?;
    let (time, offset) = time_and_offset.split_at(sign_at);
    let offset_micros = offset_seconds(offset)? * 1_000_000;
    days(date, bc)?
        .checked_mul(86_400_000_000)?
        .checked_add(time_micros(time)?)?
        .checked_sub(offset_micros)
}

fn era(text: &str) -> (&str, bool) {
    match text.strip_suffix(" BC") {
        Some(text) => (text, true),
        None => (text, false),
    }
}

fn number(digits: &str) -> Option<i64> {
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `YYYY-MM-DD` (the year may have more digits) as days since 1970-01-01.
fn days(text: &str, bc: bool) -> Option<i64> {
    let mut parts = text.splitn(3, '-');
    let year = number(parts.next()?)?;
    let month = number(parts.next()?)?;
    let day = number(parts.next()?)?;
    // 1 BC is year 0 of the proleptic Gregorian calendar, 2 BC year -1.
    let year = if bc { 1 - year } else { year };
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    Some(days_from_civil(year, month, day))
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year.rem_euclid(4) == 0
            && (year.rem_euclid(100) != 0 || year.rem_euclid(400) == 0) =>
        {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// `HH:MM:SS` with an optional fraction of up to six digits, as microseconds; 24:00:00 is
/// allowed, as Postgres allows it.
fn time_micros(text: &str) -> Option<i64> {
    let (clock, fraction) = match text.split_once('.') {
        Some((clock, fraction)) => (clock, fraction),
        None => (text, ""),
    };
    let mut parts = clock.splitn(3, ':');
    let hours = number(parts.next()?)?;
    let minutes = number(parts.next()?)?;
    let seconds = number(parts.next()?)?;
    if hours > 24 || minutes > 59 || seconds > 60 || fraction.len() > 6 {
        return None;
    }
    let fraction = if fraction.is_empty() {
        0
    } else {
        number(fraction)? * 10i64.pow(6 - fraction.len() as u32)
    };
    Some(((hours * 60 + minutes) * 60 + seconds) * 1_000_000 + fraction)
}

/// `+HH`, `-HH:MM`, `+HH:MM:SS` as seconds east of UTC.
fn offset_seconds(text: &str) -> Option<i64> {
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let mut seconds = 0;
    let mut scale = 3600;
    for part in rest.split(':') {
        if scale == 0 || part.len() != 2 {
            return None;
        }
        seconds += number(part)? * scale;
        scale /= 60;
    }
    Some(sign * seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_of_every_era_and_length_of_year() {
        assert_eq!(date_days("1970-01-01"), Some(0));
        assert_eq!(date_days("2000-01-02"), Some(10_958));
        assert_eq!(date_days("1969-12-31"), Some(-1));
        assert_eq!(date_days("2024-02-29"), Some(19_782));
        assert_eq!(date_days("2023-02-29"), None);
        // 1 BC is year 0: the day before 0001-01-01.
        assert_eq!(
            date_days("0001-12-31 BC"),
            Some(date_days("0001-01-01").unwrap() - 1)
        );
        assert_eq!(date_days("4714-11-24 BC"), Some(-2_440_588));
        // Postgres's largest date still fits Avro's int (the integration test checks the
        // value against Postgres's own arithmetic).
        assert!(date_days("5874897-12-31").unwrap() < i64::from(i32::MAX));
        assert_eq!(date_days("infinity"), None);
        assert_eq!(date_days("2026-13-01"), None);
        assert_eq!(date_days("26-01-01x"), None);
    }

    #[test]
    fn every_date_agrees_with_chrono_where_chrono_reaches() {
        let epoch = chrono::NaiveDate::default();
        let mut date = chrono::NaiveDate::from_ymd_opt(-3000, 1, 1).unwrap();
        while date < chrono::NaiveDate::from_ymd_opt(3000, 1, 1).unwrap() {
            let text = date.format("%Y-%m-%d").to_string();
            let postgres_text = if text.starts_with('-') || date.format("%Y").to_string() == "0000"
            {
                // Postgres writes year 0 as 1 BC, -1 as 2 BC.
                use chrono::Datelike;
                format!("{:04}-{} BC", 1 - date.year(), date.format("%m-%d"))
            } else {
                text
            };
            assert_eq!(
                date_days(&postgres_text),
                Some((date - epoch).num_days()),
                "{postgres_text}"
            );
            date += chrono::Duration::days(13);
        }
    }

    #[test]
    fn timestamps_with_fractions_offsets_and_eras() {
        assert_eq!(timestamp_micros("1970-01-01 00:00:01.5"), Some(1_500_000));
        assert_eq!(
            timestamp_micros("2026-01-02 03:04:05.5"),
            Some(1_767_323_045_500_000)
        );
        assert_eq!(
            timestamp_micros("2026-01-02 24:00:00"),
            Some(1_767_398_400_000_000)
        );
        assert_eq!(
            timestamptz_micros("2026-01-02 03:04:05.5+02"),
            Some(1_767_315_845_500_000)
        );
        assert_eq!(
            timestamptz_micros("2026-11-25 00:00:00+00"),
            timestamptz_micros("2026-11-25 05:30:00+05:30")
        );
        assert_eq!(
            timestamptz_micros("1900-01-01 00:09:21+00:09:21"),
            timestamptz_micros("1900-01-01 00:00:00+00")
        );
        assert_eq!(
            timestamptz_micros("2000-01-01 00:00:00-08"),
            timestamptz_micros("2000-01-01 08:00:00+00")
        );
        assert_eq!(
            timestamptz_micros("0044-03-15 12:00:00+00 BC"),
            timestamp_micros("0044-03-15 12:00:00 BC")
        );
        assert!(timestamp_micros("0044-03-15 12:00:00 BC").unwrap() < -62_000_000_000_000_000);
        assert_eq!(timestamp_micros("2026-01-02 03:04:05.1234567"), None);
        assert_eq!(timestamptz_micros("2026-01-02 03:04:05"), None);
        assert_eq!(timestamp_micros("infinity"), None);
    }
}
