//! The operations routes: the ops page `/`, `/metrics`, `/health`, `/ready`, `/api/summary`,
//! and the bearer-token guard on the data routes.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};

use crate::http::guard::{self, Peer};
use crate::http::state::OpsState;
use crate::privacy::vault::same_secret;

/// How long `/ready` waits for the store to answer its ping.
const READY_PING_TIMEOUT: Duration = Duration::from_secs(2);
/// The ops page: static, bilingual, no data of its own.
const OPS_PAGE: &str = include_str!("ops_page.html");

/// Recent dead letters on the page.
const PAGE_DEAD_LETTERS: u32 = 20;
/// Unknown table codes on the page (the most frequent).
const PAGE_UNMATCHED_CODES: usize = 10;
/// With a token configured, pass only requests carrying `Authorization: Bearer <token>`.
/// The scheme in any case; failures count towards the peer's throttle ([`guard`]).
pub(crate) async fn require_token(
    State(s): State<OpsState>,
    peer: Peer,
    req: Request,
    next: Next,
) -> Response {
    let Some(token) = &s.token else {
        return next.run(req).await;
    };
    if let Some(wait) = s.auth.locked(peer, "ops") {
        return guard::throttled(wait);
    }
    let given = guard::bearer(req.headers());
    if given.is_some_and(|g| same_secret(g.as_bytes(), token.as_bytes())) {
        next.run(req).await
    } else {
        if let Some(wait) = s.auth.failed(peer, "ops") {
            return guard::throttled(wait);
        }
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a bearer token is required: Authorization: Bearer <the token in [ops] token_env>",
        )
            .into_response()
    }
}

pub(crate) async fn page() -> Html<&'static str> {
    Html(OPS_PAGE)
}

pub(crate) async fn metrics(State(s): State<OpsState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.prom.render(),
    )
        .into_response()
}

/// Liveness: `{"status":"ok","version":…,"commit":…}` while the process runs (a check for the
/// text "ok" still passes).
pub(crate) async fn health() -> Response {
    axum::Json(serde_json::json!({
        "status": "ok",
        "version": crate::VERSION,
        "commit": crate::COMMIT,
    }))
    .into_response()
}

/// 200 when every source consumes and the store answers; else 503 naming what is not ready.
pub(crate) async fn ready(State(s): State<OpsState>) -> Response {
    let (ok, body) = readiness(&s).await;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// What the page shows from the store: readiness, surveys by status, the most overdue one and
/// the recent dead letters (reason and detail; no personal data is stored); and, from memory,
/// the sources' backlog and the unknown table codes.
pub(crate) async fn summary(State(s): State<OpsState>) -> Response {
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
                .map(|r| crate::store::views::json_row(r, &s.zone))
                .collect::<Vec<_>>()
        });
    let dead_letters_total = s.store.dead_letter_count().await.map_err(&mut note).ok();
    let tickets = match s.tickets {
        Some(_) => s.store.ticket_summary().await.map_err(&mut note).ok(),
        None => None,
    };
    let catch_up = catch_up(&s);
    let status = if errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "time_zone": s.zone.iana_name(),
        "now": crate::store::views::local_time(s.clock.now_ms(), &s.zone),
        "readiness": readiness,
        "jobs": jobs,
        "pending": pending.map(|p| p.pending),
        "oldest_overdue_seconds": pending.map(|p| p.oldest_overdue_ms(s.clock.now_ms()) / 1000),
        "dead_letters": dead_letters,
        "dead_letters_total": dead_letters_total,
        "tickets": tickets,
        "sources": sources(&s),
        "catch_up": catch_up,
        "unmatched_codes": unmatched_codes(&s),
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

/// Issue 18 §4: the codes mapping tables with `unmatched: keep` did not know, the most
/// frequent first, since the process started. The code only for a code-like field, else
/// `(value withheld)` (R-ANO-8).
fn unmatched_codes(s: &OpsState) -> Vec<serde_json::Value> {
    s.unmatched
        .top(PAGE_UNMATCHED_CODES)
        .into_iter()
        .map(|c| {
            serde_json::json!({
                "mapping": c.key.mapping,
                "table": c.key.table,
                "field": c.key.field,
                "code": c.key.code,
                "count": c.count,
                "last_seen": crate::store::views::local_time(c.last_seen_ms, &s.zone),
            })
        })
        .collect()
}

/// The work overdue at the start and what became of it; `null` when there was none.
fn catch_up(s: &OpsState) -> serde_json::Value {
    match s.catch_up.get() {
        Some(r) => serde_json::json!({
            "started": crate::store::views::local_time(s.started, &s.zone),
            "found": r.found(),
            "pending": r.pending(),
            "outcomes": r.outcomes.iter().map(|(kind, status, reason, n)| serde_json::json!({
                "kind": kind, "status": status, "reason": reason, "count": n,
            })).collect::<Vec<_>>(),
            "line": r.line(),
        }),
        None => serde_json::Value::Null,
    }
}

/// Per source: its kind, state, and backlog (depth at the broker, acked per second over the
/// last poll, seconds to drain at that rate; `null` where unknown).
fn sources(s: &OpsState) -> Vec<serde_json::Value> {
    s.sources
        .snapshot()
        .into_iter()
        .map(|(name, connected)| {
            let b = s.sources.backlog(&name);
            serde_json::json!({
                "name": name,
                "kind": s.sources.kind(&name),
                "connected": connected,
                "depth": b.depth,
                "rate_per_s": (b.rate_per_s * 10.0).round() / 10.0,
                "drain_seconds": b.drain_seconds(),
            })
        })
        .collect()
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
        // A listening door (MLLP, SOAP) says where it listens.
        let state = match (connected, s.sources.address(&name)) {
            (true, Some((addr, kind))) => format!("listening on {addr} ({kind})"),
            (true, None) => "connected".into(),
            (false, _) => "disconnected".into(),
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
