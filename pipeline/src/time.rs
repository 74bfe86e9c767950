//! Timestamps from HL7 v2 `TS`/`DTM` values, read in the hospital's zone (R-GEN-1).
//!
//! `YYYY[MM[DD[HH[MM[SS[.S…]]]]]][±ZZZZ]`: without an offset the value is local time in the
//! configured zone; a date-only value is local 00:00.

use jiff::civil::{Date, DateTime};
use jiff::tz::{Offset, TimeZone};
use jiff::{Timestamp, Zoned};

/// The zone every calendar rule uses unless configured otherwise.
pub const DEFAULT_ZONE: &str = "Asia/Shanghai";

/// The default zone. Bundled tzdb, so this works in minimal containers too.
pub fn default_zone() -> TimeZone {
    TimeZone::get(DEFAULT_ZONE).unwrap_or_else(|_| {
        TimeZone::fixed(Offset::constant(8)) // Asia/Shanghai has had no DST since 1991
    })
}

/// Why a timestamp could not be read. Carries no value (values can be personal).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("not a HL7 timestamp (expected YYYYMMDD[HHMM[SS]][±ZZZZ])")]
    Format,
    #[error("not a real date or time")]
    OutOfRange,
}

fn digits(s: &str) -> Result<i32, TimeError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TimeError::Format);
    }
    s.parse().map_err(|_| TimeError::Format)
}

/// Parse an HL7 `DT` (first 8 digits) into a civil date.
pub fn parse_hl7_date(value: &str) -> Result<Date, TimeError> {
    let v = value.trim();
    let head = v
        .get(..8)
        .filter(|h| h.is_ascii())
        .ok_or(TimeError::Format)?;
    let (y, m, d) = (
        digits(&head[..4])?,
        digits(&head[4..6])?,
        digits(&head[6..8])?,
    );
    Date::new(
        i16::try_from(y).map_err(|_| TimeError::OutOfRange)?,
        m as i8,
        d as i8,
    )
    .map_err(|_| TimeError::OutOfRange)
}

/// Parse an HL7 `TS`/`DTM` into an instant; no offset → local time in `zone`.
pub fn parse_hl7_ts(value: &str, zone: &TimeZone) -> Result<Timestamp, TimeError> {
    let v = value.trim();
    // Split off a trailing ±ZZZZ offset.
    let (body, offset) = match v.find(['+', '-']) {
        Some(i) => {
            let (b, o) = v.split_at(i);
            (b, Some(o))
        }
        None => (v, None),
    };
    // Drop fractional seconds.
    let body = body.split('.').next().unwrap_or(body);
    if body.len() < 4 || body.len() > 14 || body.len() % 2 != 0 || !body.is_ascii() {
        return Err(TimeError::Format);
    }
    let part = |from: usize, to: usize, default: i32| -> Result<i32, TimeError> {
        match body.get(from..to) {
            Some(s) => digits(s),
            None => Ok(default),
        }
    };
    let (y, mo, d) = (part(0, 4, 0)?, part(4, 6, 1)?, part(6, 8, 1)?);
    let (h, mi, s) = (part(8, 10, 0)?, part(10, 12, 0)?, part(12, 14, 0)?);
    let dt = DateTime::new(
        i16::try_from(y).map_err(|_| TimeError::OutOfRange)?,
        mo as i8,
        d as i8,
        h as i8,
        mi as i8,
        s as i8,
        0,
    )
    .map_err(|_| TimeError::OutOfRange)?;
    match offset {
        None => zone
            .to_ambiguous_zoned(dt)
            .compatible()
            .map(|z| z.timestamp())
            .map_err(|_| TimeError::OutOfRange),
        Some(o) => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let hhmm = &o[1..];
            if hhmm.len() != 4 || !hhmm.is_ascii() {
                return Err(TimeError::Format);
            }
            let (oh, om) = (digits(&hhmm[..2])?, digits(&hhmm[2..])?);
            let secs = sign * (oh * 3600 + om * 60);
            let off = Offset::from_seconds(secs).map_err(|_| TimeError::OutOfRange)?;
            off.to_timestamp(dt).map_err(|_| TimeError::OutOfRange)
        }
    }
}

/// Epoch milliseconds as an instant. Every millisecond value the bridge stores or computes is
/// within jiff's range (years −9999..=9999); one outside it (a corrupt row) is clamped to the
/// nearest representable instant rather than read as 1970, so it keeps its order: a due time
/// far in the future stays in the future.
pub fn from_ms(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(if ms < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

/// An instant shown in `zone` as RFC 3339 with offset (`2026-11-21T10:00:00+08:00`).
pub fn rfc3339_in(ts: Timestamp, zone: &TimeZone) -> String {
    let z: Zoned = ts.to_zoned(zone.clone());
    z.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
}

/// Truncate an instant to the start of its local hour (R-ANO-1: visit times to the hour).
pub fn truncate_to_hour(ts: Timestamp, zone: &TimeZone) -> Timestamp {
    let z = ts.to_zoned(zone.clone());
    let dt = z.datetime();
    let hour = DateTime::new(dt.year(), dt.month(), dt.day(), dt.hour(), 0, 0, 0).unwrap_or(dt);
    zone.to_ambiguous_zoned(hour)
        .compatible()
        .map(|z| z.timestamp())
        .unwrap_or(ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh() -> TimeZone {
        default_zone()
    }

    #[test]
    fn r_gen_1_local_time_without_offset_is_shanghai() {
        let ts = parse_hl7_ts("20261120155500", &sh()).unwrap();
        assert_eq!(ts.to_string(), "2026-11-20T07:55:00Z");
    }

    #[test]
    fn r_gen_1_date_only_is_local_midnight() {
        let ts = parse_hl7_ts("20261120", &sh()).unwrap();
        assert_eq!(ts.to_string(), "2026-11-19T16:00:00Z");
    }

    #[test]
    fn explicit_offset_wins_and_fraction_is_ignored() {
        let ts = parse_hl7_ts("20261120155500.1234+0000", &sh()).unwrap();
        assert_eq!(ts.to_string(), "2026-11-20T15:55:00Z");
        let ts = parse_hl7_ts("202611201555-0130", &sh()).unwrap();
        assert_eq!(ts.to_string(), "2026-11-20T17:25:00Z");
    }

    #[test]
    fn bad_values_are_errors_not_panics() {
        for v in [
            "",
            "2026",
            "2026x1",
            "20261340",
            "202611201",
            "20261120+08",
            "北京时间",
            "2026-11-20",
        ] {
            let r = parse_hl7_ts(v, &sh());
            if v == "2026" {
                assert!(r.is_ok(), "year-only is a valid TS");
            } else {
                assert!(r.is_err(), "{v:?} should fail");
            }
        }
        assert!(parse_hl7_date("1990030").is_err());
        assert!(parse_hl7_date("19900230").is_err());
        assert!(
            parse_hl7_date("1990é307").is_err(),
            "found by proptest: no panic"
        );
        assert!(parse_hl7_ts("202611201555+1é2", &sh()).is_err());
        assert_eq!(
            parse_hl7_date("19900307").unwrap(),
            jiff::civil::date(1990, 3, 7)
        );
    }

    #[test]
    fn r_ano_1_truncates_to_the_local_hour() {
        let ts = parse_hl7_ts("20261120155500", &sh()).unwrap();
        assert_eq!(
            rfc3339_in(truncate_to_hour(ts, &sh()), &sh()),
            "2026-11-20T15:00:00+08:00"
        );
    }

    #[test]
    fn epoch_milliseconds_out_of_range_keep_their_order() {
        assert_eq!(from_ms(0), Timestamp::UNIX_EPOCH);
        assert_eq!(
            from_ms(1_764_000_000_123).as_millisecond(),
            1_764_000_000_123
        );
        assert_eq!(from_ms(i64::MAX), Timestamp::MAX);
        assert_eq!(from_ms(i64::MIN), Timestamp::MIN);
    }
}
