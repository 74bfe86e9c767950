//! The operations HTTP server: Prometheus `/metrics`, liveness `/health`, readiness `/ready`,
//! and the ops page at `/` with the JSON it polls (`/api/summary`).
//!
//! Counters and histograms are emitted where things happen, through the `metrics` facade, with
//! the names and labels of domain rule R-MET-1. This module installs the Prometheus recorder
//! (once per process: tests run several bridges in one process and they share it), refreshes
//! the gauges that come from the store and the process, and serves the text format.
//!
//! The page is static HTML and JavaScript compiled into the binary (no front-end build); it
//! holds no data itself. When the server listens on a non-loopback address, `/metrics` and
//! `/api/*` require `Authorization: Bearer <token>` (the token from `[ops] token_env`).
//!
//! Labels carry connector names, reason codes, formats, events, templates and outcomes only —
//! never personal data and never a department (R-ANO-8, R-MET-1).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use cem_pipeline::reason::DeadLetterReason;
use jiff::tz::TimeZone;
use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::clock::Clock;
use crate::shutdown::Shutdown;
use crate::store::Store;

/// How often the store and process gauges are refreshed (and the recorder's upkeep run).
pub const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

/// How long `/ready` waits for the store to answer its ping.
const READY_PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the ops server could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("ops: cannot install the Prometheus metrics recorder: {0}")]
    Recorder(String),
    #[error(
        "ops: cannot listen on {addr}: {source}. Set [ops] listen to a free address, or \"\" to disable the ops server"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Whether each source is connected to RabbitMQ and consuming, shared by the ingest tasks
/// (which set it) and `/ready` (which reads it). Keyed by connector name.
#[derive(Debug, Clone, Default)]
pub struct SourceHealth {
    connected: Arc<Mutex<BTreeMap<String, bool>>>,
}

impl SourceHealth {
    /// Known sources, all disconnected.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let map = names.into_iter().map(|n| (n.to_string(), false)).collect();
        Self {
            connected: Arc::new(Mutex::new(map)),
        }
    }

    pub fn set_connected(&self, connector: &str, connected: bool) {
        let mut m = self
            .connected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.insert(connector.to_string(), connected);
    }

    /// Every source and whether it is connected, by name.
    pub fn snapshot(&self) -> BTreeMap<String, bool> {
        self.connected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

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

/// What the handlers need.
#[derive(Clone)]
pub struct OpsState {
    pub prom: PrometheusHandle,
    pub store: Store,
    pub sources: SourceHealth,
    /// Required on the data routes when set (non-loopback listen).
    pub token: Option<String>,
    /// For times on the page.
    pub zone: TimeZone,
    /// For the overdue figure (the clock due times are computed with).
    pub clock: Clock,
    /// Verifies contactRefs and opens the vault for `POST /contact/resolve` (R-ANO-7).
    pub vault: crate::vault::VaultCipher,
    /// The CEM's token for `POST /contact/resolve`; without it every call gets 401.
    pub resolve_token: Option<String>,
    /// The signed ticket intake, when `[tickets]` is configured (R-TKT-11).
    pub tickets: Option<std::sync::Arc<crate::webhook::TicketIntake>>,
    /// For the page: a refused reload of mappings or of the config shows until one succeeds.
    pub mappings: std::sync::Arc<crate::reload::Mappings>,
    pub policy: std::sync::Arc<crate::reload::Policy>,
}

/// The ops page: static, bilingual, no data of its own.
const OPS_PAGE: &str = include_str!("ops_page.html");

/// Recent dead letters on the page.
const PAGE_DEAD_LETTERS: u32 = 20;

/// Bind the listener now, so a taken port fails the start before anything is consumed.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, OpsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| OpsError::Bind { addr, source })
}

/// Serve the ops routes on `listener` until shutdown.
pub fn serve(listener: TcpListener, state: OpsState, mut shutdown: Shutdown) -> JoinHandle<()> {
    let token = state.token.is_some();
    let app = router(state);
    let addr = listener.local_addr().ok();
    tokio::spawn(async move {
        info!(addr = ?addr, bearer_token = token, "ops server listening (/, /metrics, /health, /ready)");
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.wait().await })
            .await;
        if let Err(e) = r {
            warn!(error = %e, "ops server stopped with an error");
        }
    })
}

fn router(state: OpsState) -> Router {
    let data = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/summary", get(summary))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/contact/resolve", post(crate::contact::resolve))
        .route("/hooks/cem/tickets", post(crate::webhook::tickets))
        .route(
            "/hooks/cem/unsubscribes",
            post(crate::opt_outs::unsubscribes),
        )
        .route(
            "/hooks/callcenter/results",
            post(crate::webhook::call_results),
        )
        .merge(data)
        .with_state(state)
}

/// Equal without an early exit on the first differing byte.
pub(crate) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// With a token configured, pass only requests carrying `Authorization: Bearer <token>`.
async fn require_token(State(s): State<OpsState>, req: Request, next: Next) -> Response {
    let Some(token) = &s.token else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| same_secret(g.trim().as_bytes(), token.as_bytes())) {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a bearer token is required: Authorization: Bearer <the token in [ops] token_env>",
        )
            .into_response()
    }
}

async fn page() -> Html<&'static str> {
    Html(OPS_PAGE)
}

async fn metrics(State(s): State<OpsState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.prom.render(),
    )
        .into_response()
}

async fn health() -> &'static str {
    "ok"
}

/// 200 when every source consumes and the store answers; else 503 naming what is not ready.
async fn ready(State(s): State<OpsState>) -> Response {
    let (ok, body) = readiness(&s).await;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// What the page shows from the store: readiness, surveys by status, the most overdue one and
/// the recent dead letters (reason and detail; no personal data is stored).
async fn summary(State(s): State<OpsState>) -> Response {
    let (_, readiness) = readiness(&s).await;
    let mut errors = Vec::new();
    let mut note = |e: crate::store::StoreError| errors.push(e.to_string());
    let jobs = s.store.job_counts().await.map_err(&mut note).ok();
    let pending = s.store.pending_summary().await.map_err(&mut note).ok();
    let dead_letters = s
        .store
        .recent_dead_letters(PAGE_DEAD_LETTERS)
        .await
        .map_err(&mut note)
        .ok()
        .map(|rows| {
            rows.iter()
                .map(|r| crate::inspect::json_row(r, &s.zone))
                .collect::<Vec<_>>()
        });
    let dead_letters_total = s.store.dead_letter_count().await.map_err(&mut note).ok();
    let tickets = match s.tickets {
        Some(_) => s.store.ticket_summary().await.map_err(&mut note).ok(),
        None => None,
    };
    let status = if errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "time_zone": s.zone.iana_name(),
        "now": crate::inspect::local_time(s.clock.now_ms(), &s.zone),
        "readiness": readiness,
        "jobs": jobs,
        "pending": pending.map(|p| p.pending),
        "oldest_overdue_seconds": pending.map(|p| p.oldest_overdue_ms(s.clock.now_ms()) / 1000),
        "dead_letters": dead_letters,
        "dead_letters_total": dead_letters_total,
        "tickets": tickets,
        // Issue 8 §5: a refused reload keeps the last good version; the page says so.
        "reload": {
            "mappings_generation": s.mappings.generation(),
            "mappings_error": s.mappings.last_error(),
            "config_error": s.policy.last_error(),
        },
        "errors": errors,
    });
    (status, axum::Json(body)).into_response()
}

/// Whether the bridge is ready, and the JSON saying so.
async fn readiness(s: &OpsState) -> (bool, serde_json::Value) {
    let mut not_ready = Vec::new();
    let store = match tokio::time::timeout(READY_PING_TIMEOUT, s.store.ping()).await {
        Ok(Ok(())) => "ok".to_string(),
        Ok(Err(e)) => {
            not_ready.push("store".to_string());
            e.to_string()
        }
        Err(_) => {
            not_ready.push("store".to_string());
            format!(
                "store: no answer to a ping within {} s",
                READY_PING_TIMEOUT.as_secs()
            )
        }
    };
    let mut sources = serde_json::Map::new();
    for (name, connected) in s.sources.snapshot() {
        if !connected {
            not_ready.push(format!("source {name}"));
        }
        let state = if connected {
            "connected"
        } else {
            "disconnected"
        };
        sources.insert(name, state.into());
    }
    let ok = not_ready.is_empty();
    let body = serde_json::json!({
        "ready": ok,
        "not_ready": not_ready,
        "store": store,
        "sources": sources,
    });
    (ok, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cret", b"s3cres"));
        assert!(!same_secret(b"s3cret", b"s3cre"));
        assert!(!same_secret(b"", b"x"));
    }

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tcem-bridge\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(12345 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\tlots kB\n"), None);
    }

    #[test]
    fn source_health_starts_disconnected_and_follows_the_sources() {
        let h = SourceHealth::new(["adt", "lab"]);
        assert_eq!(
            h.snapshot().into_iter().collect::<Vec<_>>(),
            [("adt".to_string(), false), ("lab".to_string(), false)]
        );
        h.set_connected("adt", true);
        assert_eq!(h.snapshot().get("adt"), Some(&true));
        h.clone().set_connected("adt", false);
        assert_eq!(h.snapshot().get("adt"), Some(&false), "clones share state");
    }

    #[test]
    fn pending_summary_overdue_is_never_negative() {
        use crate::store_ops::PendingSummary;
        let s = PendingSummary {
            pending: 2,
            oldest_due_at: Some(10_000),
        };
        assert_eq!(s.oldest_overdue_ms(15_000), 5_000);
        assert_eq!(s.oldest_overdue_ms(5_000), 0, "not yet due");
        let none = PendingSummary {
            pending: 0,
            oldest_due_at: None,
        };
        assert_eq!(none.oldest_overdue_ms(15_000), 0);
    }
}
