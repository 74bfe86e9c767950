//! `POST /hooks/cem/tickets` (R-TKT-11): the CEM's signed ticket updates.
//!
//! The CEM signs `timestamp.body` with HMAC-SHA256 under the shared secret and sends the Unix
//! time and the hex signature in two headers (`X-CEM-Timestamp`, `X-CEM-Signature` by default).
//! Answers: 401 unsigned, wrongly signed, stale (|now − timestamp| > `max_skew_s`) or replayed
//! (the same signature again) — nothing stored; 400 malformed, with the reason (field, never a
//! value); 200 `{"code": 0, "result": "applied"|"held"|"stale_version"|"duplicate"}` once the
//! update is committed to the store (durable before the 2xx); 503 when the store fails (the CEM
//! retries). Counted in `cem_bridge_webhook_rejected_total{reason}`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use cem_pipeline::ticket::{self, TicketUpdate};
use metrics::counter;
use serde_json::json;
use tracing::{info, warn};

use crate::http::guard::{self, Peer};
use crate::http::state::{OpsState, answer};
use crate::store::tickets::{Accepted, CallRecorded};

/// Largest body the partners' webhooks read (a ticket update is a few KiB).
pub const WEBHOOK_MAX_BODY: usize = 1024 * 1024;

/// The webhooks' 413 as JSON like their other answers, counted as `too_large`: the body limit
/// answers before the handler runs, with a plain-text body of its own.
pub async fn too_large_as_json(req: axum::extract::Request, next: Next) -> Response {
    let r = next.run(req).await;
    if r.status() != StatusCode::PAYLOAD_TOO_LARGE {
        return r;
    }
    rejected(
        "too_large",
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the body is over {} KiB, the most a webhook takes: nothing was read or stored",
            WEBHOOK_MAX_BODY / 1024
        ),
    )
}

fn rejected(reason: &'static str, status: StatusCode, message: String) -> Response {
    counter!("cem_bridge_webhook_rejected_total", "reason" => reason).increment(1);
    answer(
        status,
        json!({ "code": status.as_u16(), "error": reason, "message": message }),
    )
}

pub async fn tickets(
    State(s): State<OpsState>,
    peer: Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(intake) = s.tickets.as_deref() else {
        return answer(
            StatusCode::NOT_FOUND,
            json!({ "error": "tickets_disabled", "message": "the ticket loop is off: add a [tickets] table to the bridge config" }),
        );
    };
    if let Some(wait) = s.auth.locked(peer, "ticket_webhook") {
        return guard::throttled(wait);
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let signature = header(&intake.signature_header);
    let now = intake.clock.now_ms();
    if let Err(e) = ticket::verify(
        &intake.secret,
        header(&intake.timestamp_header),
        signature,
        &body,
        now / 1000,
        intake.max_skew_s,
    ) {
        warn!(reason = e.reason(), "ticket webhook refused: {e}");
        if let Some(wait) = s.auth.failed(peer, "ticket_webhook") {
            return guard::throttled(wait);
        }
        return rejected(
            e.reason(),
            StatusCode::UNAUTHORIZED,
            format!(
                "{e}: sign `<unix seconds>.<body>` with HMAC-SHA256 and send {} and {} (R-TKT-11)",
                intake.timestamp_header, intake.signature_header
            ),
        );
    }
    let update = match TicketUpdate::parse(&body) {
        Ok(u) => u,
        Err(e) => {
            warn!(reason = "malformed", "ticket webhook refused: {e}");
            return rejected("malformed", StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    match intake
        .store
        .ticket_accept(&intake.ctx, &update, &body, signature, now)
        .await
    {
        Ok(Accepted::Replay) => {
            warn!(ticket_id = %update.ticket_id, version = update.version, "ticket webhook refused: replayed signature");
            rejected(
                "replay",
                StatusCode::UNAUTHORIZED,
                "this signed request was received before (R-TKT-11)".into(),
            )
        }
        Ok(a) => {
            info!(ticket_id = %update.ticket_id, version = update.version, status = update.status.code(), result = a.code(), "ticket update accepted");
            counter!("cem_bridge_ticket_intake_total", "via" => "webhook", "result" => a.code())
                .increment(1);
            intake.wake.notify_one();
            answer(
                StatusCode::OK,
                json!({ "code": 0, "result": a.code(), "ticketId": update.ticket_id, "version": update.version }),
            )
        }
        Err(e) => {
            warn!(ticket_id = %update.ticket_id, version = update.version, error = %e, "cannot store a ticket update; answered 503 so the CEM retries");
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "code": 503, "error": "store_unavailable", "message": "the update was not stored; retry" }),
            )
        }
    }
}

/// `POST /hooks/callcenter/results` (R-TKT-7): the AI call center's result of one call attempt,
/// signed like the CEM's webhook with the call center's own secret. Answers `{"success": true}`
/// (what 外呼 vendors expect) once recorded, also for a repeated event id; 401 bad signature;
/// 400 malformed; 404 unknown `taskRef`; 503 store failure.
pub async fn call_results(
    State(s): State<OpsState>,
    peer: Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(intake) = s.tickets.as_deref() else {
        return answer(
            StatusCode::NOT_FOUND,
            json!({ "error": "tickets_disabled", "message": "the ticket loop is off: add a [tickets] table to the bridge config" }),
        );
    };
    if let Some(wait) = s.auth.locked(peer, "callcenter_webhook") {
        return guard::throttled(wait);
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = intake.clock.now_ms();
    let verified = match &intake.callcenter_secret {
        None => Err(ticket::SignatureError::Missing),
        Some(secret) => ticket::verify(
            secret,
            header(&intake.timestamp_header),
            header(&intake.signature_header),
            &body,
            now / 1000,
            intake.max_skew_s,
        ),
    };
    if let Err(e) = verified {
        warn!(reason = e.reason(), "call result refused: {e}");
        if let Some(wait) = s.auth.failed(peer, "callcenter_webhook") {
            return guard::throttled(wait);
        }
        return rejected(
            e.reason(),
            StatusCode::UNAUTHORIZED,
            format!(
                "{e}: sign `<unix seconds>.<body>` with HMAC-SHA256 under the call center's secret ([tickets] callcenter_secret_env)"
            ),
        );
    }
    let result = match ticket::CallResult::parse(&body) {
        Ok(r) => r,
        Err(e) => return rejected("malformed", StatusCode::BAD_REQUEST, e.to_string()),
    };
    match intake.store.call_result(&intake.ctx, &result, now).await {
        Ok(CallRecorded::UnknownTask) => answer(
            StatusCode::NOT_FOUND,
            json!({ "success": false, "error": "unknown_task", "message": "no call task has this taskRef" }),
        ),
        Ok(r) => {
            info!(task_ref = %result.task_ref, status = result.status.code(), duplicate = matches!(r, CallRecorded::Duplicate), "call result recorded");
            intake.wake.notify_one();
            answer(StatusCode::OK, json!({ "success": true }))
        }
        Err(e) => {
            warn!(task_ref = %result.task_ref, error = %e, "cannot record a call result; answered 503 so the call center retries");
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "success": false, "error": "store_unavailable" }),
            )
        }
    }
}
