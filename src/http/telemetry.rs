//! The Prometheus side of operations: installs the process-wide recorder with the R-MET-1
//! descriptions and buckets, registers the series alerts need at zero, and refreshes the gauges
//! that come from the store and the process.
//!
//! Labels carry connector names, reason codes, formats, events, templates and outcomes only —
//! never personal data and never a department (R-ANO-8, R-MET-1).

use std::sync::OnceLock;
use std::time::Duration;

use cem_pipeline::reason::DeadLetterReason;
use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::warn;

use crate::http::state::OpsError;
use crate::process::clock::Clock;
use crate::process::shutdown::Shutdown;
use crate::store::Store;

/// How often the store and process gauges are refreshed (and the recorder's upkeep run).
pub const GAUGE_INTERVAL: Duration = Duration::from_secs(5);
/// Histogram buckets (seconds). Delivery → durable is milliseconds to seconds; sent − due can
/// be hours when the CEM was down.
const INGEST_LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const SEND_DELAY_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0, 43200.0, 86400.0,
];
const DEFAULT_SECONDS_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 300.0];

static RECORDER: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> Result<PrometheusHandle, OpsError> {
    RECORDER
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("cem_bridge_ingest_latency_seconds".into()),
                    INGEST_LATENCY_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("cem_bridge_survey_send_delay_seconds".into()),
                        SEND_DELAY_BUCKETS,
                    )
                })
                .and_then(|b| {
                    // Any other `_seconds` histogram: buckets, not a summary.
                    b.set_buckets_for_metric(
                        Matcher::Suffix("_seconds".into()),
                        DEFAULT_SECONDS_BUCKETS,
                    )
                })
                .and_then(PrometheusBuilder::install_recorder)
                .map_err(|e| e.to_string())?;
            describe_metrics();
            Ok(handle)
        })
        .clone()
        .map_err(OpsError::Recorder)
}

/// `# HELP` lines for the R-MET-1 metrics this binary emits.
fn describe_metrics() {
    describe_counter!(
        "cem_bridge_messages_in_total",
        "New messages decoded and committed (duplicates and dead letters excluded)"
    );
    describe_counter!(
        "cem_bridge_messages_duplicate_total",
        "Redeliveries of a message already processed (R-EVT-4), acked without effect"
    );
    describe_counter!(
        "cem_bridge_door_refused_total",
        "Connections, frames and calls a listening door (MLLP, SOAP) turned away or answered 'send again', by reason"
    );
    describe_counter!(
        "cem_bridge_optouts_total",
        "CEM unsubscribes (回复TD) received by result: recorded, already, unknown_job (R-EXC-3)"
    );
    describe_counter!(
        "cem_bridge_mapping_reloads_total",
        "Mapping reloads (SIGHUP or file change) by result: ok, or failed (last good kept)"
    );
    describe_gauge!(
        "cem_bridge_mapping_reload_failed",
        "1 while the newest mapping files failed to compile and the last good ones are in use"
    );
    describe_counter!(
        "cem_bridge_messages_ignored_total",
        "Messages a mapping says to ignore (event: ignore), acked and audited without effect"
    );
    describe_counter!(
        "cem_bridge_messages_acked_total",
        "Deliveries acked to RabbitMQ after their effects were committed (all outcomes)"
    );
    describe_counter!(
        "cem_bridge_dead_letters_total",
        "Messages dead-lettered, by reason code"
    );
    describe_counter!(
        "cem_bridge_mapping_unmatched_codes_total",
        "Codes a mapping table with unmatched: keep did not know and kept as the value, by mapping and table"
    );
    describe_gauge!(
        "cem_bridge_source_queue_depth",
        "Messages ready in an AMQP source's queue at the broker, read every 15 s"
    );
    describe_counter!(
        "cem_bridge_auth_failures_total",
        "Failed authentications on a guarded route (wrong or missing token or signature)"
    );
    describe_counter!(
        "cem_bridge_auth_throttled_total",
        "Requests answered 429: their address failed authentication more than 10 times a minute"
    );
    describe_counter!(
        "cem_bridge_identity_warnings_total",
        "Identifier checks that failed but did not stop the message, by kind"
    );
    describe_histogram!(
        "cem_bridge_ingest_latency_seconds",
        Unit::Seconds,
        "From a delivery's arrival to its effects being durable in the store"
    );
    describe_counter!(
        "cem_bridge_sink_requests_total",
        "Requests to outbound sinks, by outcome"
    );
    describe_counter!(
        "cem_bridge_survey_decisions_total",
        "Survey decisions and job outcomes, by decision and reason"
    );
    describe_histogram!(
        "cem_bridge_survey_send_delay_seconds",
        Unit::Seconds,
        "Time from a survey's due time to its acceptance by the CEM"
    );
    describe_gauge!(
        "cem_bridge_survey_pending",
        "Survey jobs not yet sent (due or not), from the store"
    );
    describe_gauge!(
        "cem_bridge_survey_oldest_overdue_seconds",
        Unit::Seconds,
        "How long the most overdue pending survey job is past its due time (0 if none)"
    );
    describe_gauge!(
        "cem_bridge_process_resident_memory_bytes",
        Unit::Bytes,
        "Resident memory of the bridge process (VmRSS)"
    );
}

/// Outcomes of `cem_bridge_sink_requests_total` the CEM sink can report (R-MET-1).
const SINK_OUTCOMES: &[&str] = &["2xx", "4xx", "5xx", "429", "timeout"];

/// Create the series alerts rely on at 0, so that `increase()` also sees the first event after
/// a start (a series that first appears at 1 shows no increase) and a silent feed is visible.
pub fn register_zero_series<'a>(connectors: impl IntoIterator<Item = &'a str>) {
    for c in connectors {
        counter!("cem_bridge_messages_acked_total", "connector" => c.to_string()).increment(0);
        counter!("cem_bridge_messages_duplicate_total", "connector" => c.to_string()).increment(0);
        counter!("cem_bridge_messages_ignored_total", "connector" => c.to_string()).increment(0);
        for r in DeadLetterReason::ALL {
            counter!("cem_bridge_dead_letters_total", "connector" => c.to_string(), "reason" => r.code())
                .increment(0);
        }
    }
    for o in SINK_OUTCOMES {
        counter!("cem_bridge_sink_requests_total", "sink" => "cem", "outcome" => *o).increment(0);
    }
}

/// The process's resident memory from `/proc/self/status`, where available.
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let rest = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let mut parts = rest.split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => value.checked_mul(1024),
        Some(_) => None,
    }
}

/// Set the gauges that come from the store and the process once. Overdue is measured on the
/// bridge's clock, the one due times are computed and claimed with.
async fn refresh_gauges(store: &Store, clock: &Clock) {
    match store.pending_summary().await {
        Ok(s) => {
            gauge!("cem_bridge_survey_pending").set(s.pending as f64);
            gauge!("cem_bridge_survey_oldest_overdue_seconds")
                .set(s.oldest_overdue_ms(clock.now_ms()) as f64 / 1000.0);
        }
        Err(e) => warn!(error = %e, "cannot refresh the survey gauges"),
    }
    if let Some(rss) = resident_memory_bytes() {
        gauge!("cem_bridge_process_resident_memory_bytes").set(rss as f64);
    }
}

/// Refresh gauges and run the recorder's upkeep every [`GAUGE_INTERVAL`] until shutdown.
pub async fn run_gauges(
    store: Store,
    handle: PrometheusHandle,
    clock: Clock,
    mut shutdown: Shutdown,
) {
    loop {
        refresh_gauges(&store, &clock).await;
        handle.run_upkeep();
        if shutdown.sleep(GAUGE_INTERVAL).await {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tcem-bridge\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(12345 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\tlots kB\n"), None);
    }
}
