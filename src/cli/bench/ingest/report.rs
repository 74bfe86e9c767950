//! What a `bench ingest` run measured, as one table for people or one JSON object (`--json`)
//! for scripts; a figure not measured (a phase skipped or failed before it) is `—` / `null`.

use serde::Serialize;

use crate::cli::bench::thousands;

/// Every figure of a run and its setup. JSON keys are the field names.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(super) struct Figures {
    // Setup.
    pub count: usize,
    pub store: &'static str,
    pub instances: usize,
    pub cpus: usize,
    pub profile: &'static str,
    pub prefetch: u16,
    pub batch_size: usize,
    pub scheduler_concurrency: Option<usize>,
    pub scheduler_claim_batch: Option<u32>,
    /// Time for the ingest bridges to start, and to stop after the push.
    pub bridge_start_ms: Option<f64>,
    pub bridge_shutdown_ms: Option<f64>,
    // 1. Pure pipeline, one core.
    pub parse_msgs_per_s: Option<f64>,
    pub decide_msgs_per_s: Option<f64>,
    // 2. Broker and floor.
    pub publish_msgs_per_s: Option<f64>,
    pub raw_msgs_per_s: Option<f64>,
    pub floor_msgs_per_s: Option<f64>,
    // 3. Bridge ingest.
    pub ingest_msgs_per_s: Option<f64>,
    pub ingest_seconds: Option<f64>,
    pub ingest_floor_ratio: Option<f64>,
    pub ingest_raw_ratio: Option<f64>,
    pub ingest_peak_rss_mib: Option<f64>,
    /// The bench's own RSS when the first bridge started (part of the peak).
    pub ingest_rss_at_start_mib: Option<f64>,
    /// Why there is no peak RSS (table only).
    #[serde(skip)]
    pub rss_note: Option<String>,
    // 4. Push, unlimited.
    pub push_msgs_per_s: Option<f64>,
    pub push_seconds: Option<f64>,
    // 5. Push, rate-limited.
    pub limited_count: Option<usize>,
    pub limited_configured_per_s: u32,
    pub limited_burst: u32,
    pub limited_rate_per_s: Option<f64>,
    pub limited_deviation_pct: Option<f64>,
    /// The longest time between two pushes after the burst: a pause longer than burst / rate
    /// is capacity the limiter cannot make up.
    pub limited_longest_gap_ms: Option<f64>,
    // 6. Latency.
    pub latency_offered_per_s: u64,
    pub latency_messages: Option<usize>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
    pub latency_publish_lag_max_ms: Option<f64>,
    pub latency_acked_msgs_per_s: Option<f64>,
    // 7. MLLP door.
    pub mllp_1_conn_msgs_per_s: Option<f64>,
    pub mllp_8_conn_msgs_per_s: Option<f64>,
    pub doors_skipped: bool,
}

/// Deviation of `achieved` from `configured`, in percent of `configured`.
pub(super) fn deviation_pct(achieved: f64, configured: f64) -> f64 {
    (achieved - configured) / configured * 100.0
}

fn rate(v: Option<f64>) -> String {
    v.map_or_else(|| "—".into(), thousands)
}

fn fixed(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "—".into(), |v| format!("{v:.decimals$}"))
}

/// The one table: a row per figure, then the setup.
pub(super) fn table(f: &Figures) -> String {
    let mut out = String::new();
    let mut row = |what: &str, value: String, unit: &str, note: String| {
        out.push_str(&format!("  {what:<48} {value:>10} {unit:<6} {note}\n"));
    };
    row("measure", "value".into(), "unit", String::new());
    row(&"-".repeat(48), "-".repeat(10), "------", "-".repeat(30));
    let us = |r: Option<f64>| r.map_or(String::new(), |r| format!("{:.1} µs/msg", 1e6 / r));
    row(
        "hl7-parser parse only (1 core, best of 7)",
        rate(f.parse_msgs_per_s),
        "msg/s",
        us(f.parse_msgs_per_s),
    );
    row(
        "decode + survey decision (1 core, best of 7)",
        rate(f.decide_msgs_per_s),
        "msg/s",
        us(f.decide_msgs_per_s),
    );
    row(
        "broker publish, confirms (window 256)",
        rate(f.publish_msgs_per_s),
        "msg/s",
        String::new(),
    );
    row(
        "raw consume + ack (prefetch 256, ack/128)",
        rate(f.raw_msgs_per_s),
        "msg/s",
        String::new(),
    );
    row(
        "consume + parse + ack: the floor",
        rate(f.floor_msgs_per_s),
        "msg/s",
        "hl7-parser, MSH-9/10, PID-3, PV1-45".into(),
    );
    row(
        "bridge ingest (delivery → durable → acked)",
        rate(f.ingest_msgs_per_s),
        "msg/s",
        f.ingest_seconds.map_or(String::new(), |s| {
            format!(
                "{} in {s:.2} s, {} instance(s), {}",
                f.count, f.instances, f.store
            )
        }),
    );
    row(
        "ratio ingest / floor",
        fixed(f.ingest_floor_ratio, 2),
        "×",
        f.ingest_raw_ratio
            .map_or(String::new(), |r| format!("ingest / raw consume {r:.2}")),
    );
    row(
        "end-to-end push to HTTP CEM, unlimited",
        rate(f.push_msgs_per_s),
        "msg/s",
        f.push_seconds.map_or(String::new(), |s| {
            format!("{} surveys sent in {s:.2} s once due", f.count)
        }),
    );
    row(
        &format!(
            "limited push, rate_per_sec {} burst {}",
            f.limited_configured_per_s, f.limited_burst
        ),
        fixed(f.limited_rate_per_s, 1),
        "/s",
        f.limited_deviation_pct.map_or(String::new(), |d| {
            format!(
                "{d:+.2} % vs configured (goal ±1 %), {} surveys, longest gap {}",
                f.limited_count.unwrap_or(0),
                f.limited_longest_gap_ms
                    .map_or("—".into(), |g| format!("{g:.0} ms"))
            )
        }),
    );
    let offered = format!("at {} msg/s offered", f.latency_offered_per_s);
    row(
        &format!("latency p50 {offered}"),
        fixed(f.latency_p50_ms, 1),
        "ms",
        match (f.latency_messages, f.latency_acked_msgs_per_s) {
            (Some(n), Some(r)) => format!("{n} messages, publish → acked; acked {r:.0} msg/s"),
            _ => String::new(),
        },
    );
    row(
        &format!("latency p99 {offered}"),
        fixed(f.latency_p99_ms, 1),
        "ms",
        "goal < 50 ms".into(),
    );
    row(
        &format!("latency max {offered}"),
        fixed(f.latency_max_ms, 1),
        "ms",
        f.latency_publish_lag_max_ms.map_or(String::new(), |l| {
            format!("publisher at most {l:.1} ms late")
        }),
    );
    row(
        &format!("peak RSS during ingest ({} queued)", f.count),
        fixed(f.ingest_peak_rss_mib, 1),
        "MiB",
        f.rss_note.clone().unwrap_or_else(|| {
            f.ingest_rss_at_start_mib.map_or(String::new(), |s| {
                format!("{s:.1} MiB of it held by the bench before the bridge started")
            })
        }),
    );
    let door_note = if f.doors_skipped {
        "skipped (--skip-doors)"
    } else {
        ""
    };
    row(
        "MLLP door, 1 connection (send → durable → AA)",
        rate(f.mllp_1_conn_msgs_per_s),
        "msg/s",
        door_note.into(),
    );
    row(
        "MLLP door, 8 connections",
        rate(f.mllp_8_conn_msgs_per_s),
        "msg/s",
        door_note.into(),
    );
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "—".into());
    out.push_str(&format!(
        "\n  setup: {} CPU(s), {} build; store {}, {} instance(s); prefetch {}, batch {}; scheduler concurrency {}, claim {}; bridge start {} ms, shutdown {} ms\n",
        f.cpus,
        f.profile,
        f.store,
        f.instances,
        f.prefetch,
        f.batch_size,
        or_dash(f.scheduler_concurrency.map(|c| c.to_string())),
        or_dash(f.scheduler_claim_batch.map(|c| c.to_string())),
        or_dash(f.bridge_start_ms.map(|v| format!("{v:.0}"))),
        or_dash(f.bridge_shutdown_ms.map(|v| format!("{v:.0}"))),
    ));
    out
}

/// The figures as one JSON object (one line).
pub(super) fn json(f: &Figures) -> anyhow::Result<String> {
    Ok(serde_json::to_string(f)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_has_the_issue_17_keys_in_snake_case_and_null_for_what_was_not_measured() {
        let f = Figures {
            count: 5000,
            store: "sqlite",
            instances: 1,
            floor_msgs_per_s: Some(10_000.0),
            ingest_msgs_per_s: Some(4_000.0),
            ingest_floor_ratio: Some(0.4),
            rss_note: Some("table only".into()),
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::from_str(&json(&f).unwrap()).unwrap();
        let obj = v.as_object().unwrap();
        for key in [
            "count",
            "store",
            "instances",
            "cpus",
            "profile",
            "floor_msgs_per_s",
            "raw_msgs_per_s",
            "ingest_msgs_per_s",
            "ingest_floor_ratio",
            "push_msgs_per_s",
            "limited_rate_per_s",
            "limited_configured_per_s",
            "limited_deviation_pct",
            "latency_p50_ms",
            "latency_p99_ms",
            "latency_max_ms",
            "ingest_peak_rss_mib",
            "ingest_rss_at_start_mib",
            "mllp_8_conn_msgs_per_s",
        ] {
            assert!(obj.contains_key(key), "missing {key}");
        }
        assert!(obj.keys().all(|k| {
            k.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        }));
        assert_eq!(v["ingest_floor_ratio"], 0.4);
        assert!(v["push_msgs_per_s"].is_null());
        assert!(!obj.contains_key("rss_note"));
    }

    #[test]
    fn the_table_shows_a_dash_for_what_was_not_measured_and_says_doors_were_skipped() {
        let f = Figures {
            ingest_msgs_per_s: Some(1234.0),
            doors_skipped: true,
            ..Default::default()
        };
        let t = table(&f);
        assert!(t.contains("1,234"), "{t}");
        assert!(t.contains("skipped (--skip-doors)"), "{t}");
        let floor = t.lines().find(|l| l.contains("the floor")).unwrap();
        assert!(floor.contains('—'), "{floor}");
    }

    #[test]
    fn deviation_is_in_percent_of_the_configured_rate() {
        assert!((deviation_pct(495.0, 500.0) + 1.0).abs() < 1e-9);
        assert!((deviation_pct(505.0, 500.0) - 1.0).abs() < 1e-9);
    }
}
