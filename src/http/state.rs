//! What the HTTP handlers share ([`OpsState`]) and why the server could not start.

use std::net::SocketAddr;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jiff::tz::TimeZone;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::process::clock::Clock;
use crate::process::health::SourceHealth;
use crate::store::Store;

/// Why the ops server could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("ops: cannot install the Prometheus metrics recorder: {0}")]
    Recorder(String),
    #[error(
        "ops: cannot listen on {addr}: {cause}. Set [ops] listen to a free address, or \"\" to disable the ops server"
    )]
    Bind {
        addr: SocketAddr,
        cause: std::io::Error,
    },
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
    pub vault: crate::privacy::vault::VaultCipher,
    /// The CEM's token for `POST /contact/resolve`; without it every call gets 401.
    pub resolve_token: Option<String>,
    /// The signed ticket intake, when `[tickets]` is configured (R-TKT-11).
    pub tickets: Option<std::sync::Arc<crate::tickets::intake::TicketIntake>>,
    /// For the page: a refused reload of mappings or of the config shows until one succeeds.
    pub mappings: std::sync::Arc<crate::process::live::Mappings>,
    pub policy: std::sync::Arc<crate::process::live::Policy>,
    /// When this process started (epoch ms on the bridge clock): the overdue report's start.
    pub started: i64,
    /// The overdue work found at the start and what became of it, as last read.
    pub catch_up: crate::surveys::catchup::Shared,
    /// The codes mapping tables did not know (`unmatched: keep`), as ingest tallied them.
    pub unmatched: crate::process::unmatched::UnmatchedCodes,
    /// Failed authentications per peer address, on every guarded route.
    pub auth: std::sync::Arc<crate::http::guard::AuthThrottle>,
}

pub(crate) fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}
