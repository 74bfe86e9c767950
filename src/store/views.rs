//! Store rows as people read them: epoch milliseconds as local or RFC 3339 times in the
//! hospital's zone, and a row as JSON with its times converted (`dlq`, `trace`, the ops page).

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::Value;

/// `2026-11-23 19:46:57.123 +08:00` in `zone`.
pub fn local_time(ms: i64, zone: &TimeZone) -> String {
    match Timestamp::from_millisecond(ms) {
        Ok(ts) => ts
            .to_zoned(zone.clone())
            .strftime("%Y-%m-%d %H:%M:%S%.3f %:z")
            .to_string(),
        Err(_) => format!("{ms} ms"),
    }
}

/// RFC 3339 with milliseconds in `zone`, for JSON.
pub fn rfc3339_ms(ms: i64, zone: &TimeZone) -> Value {
    match Timestamp::from_millisecond(ms) {
        Ok(ts) => Value::String(
            ts.to_zoned(zone.clone())
                .strftime("%Y-%m-%dT%H:%M:%S%.3f%:z")
                .to_string(),
        ),
        Err(_) => Value::Null,
    }
}

/// Fields holding epoch milliseconds in the store's rows.
const TIME_FIELDS: &[&str] = &[
    "at",
    "due_at",
    "sent_at",
    "next_attempt_at",
    "created_at",
    "replayed_at",
];

/// Serialize a row with its times as RFC 3339 in `zone`; the raw value stays as `{field}_ms`.
pub fn json_row<T: serde::Serialize>(row: &T, zone: &TimeZone) -> Value {
    let mut v = serde_json::to_value(row).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        for field in TIME_FIELDS {
            if let Some(ms) = map.get(*field).and_then(Value::as_i64) {
                map.insert(format!("{field}_ms"), Value::from(ms));
                map.insert((*field).to_string(), rfc3339_ms(ms, zone));
            }
        }
    }
    v
}
