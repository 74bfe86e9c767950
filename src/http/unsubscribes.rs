//! Opt-outs the CEM reports (R-EXC-3): a patient who answers 回复TD to a survey SMS, or
//! unsubscribes in WeChat, must get no further survey. `POST /hooks/cem/unsubscribes` (signed
//! like the CEM's ticket webhook) names the survey the patient answered by its `jobId` (or the
//! `requestId` = `sv:{jobId}` the bridge sent as the idempotency key), or a patient pseudonym;
//! the bridge stores the job's patient (`pk_…`) and mobile (`mk_…`) pseudonyms in `opt_outs`.
//! Scheduling checks the table (suppressed `opted_out`), and so does the claim transaction at
//! send time, so a survey scheduled before the unsubscribe is not sent either — on every
//! instance sharing the store. Follow-ups are not stopped (R-FUP-2 has its own list).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use cem_pipeline::unsubscribe::{Subject, Unsubscribe};
use metrics::counter;
use serde_json::json;
use tracing::{info, warn};

use crate::http::guard::{self, Peer};
use crate::http::state::OpsState;
use crate::http::state::answer;
use crate::store::opt_outs::OptOutRecorded;

/// `POST /hooks/cem/unsubscribes`. Answers 200 `{"code": 0, "result": "recorded"|"already"}`
/// once stored (durable before the 2xx); 401 unsigned or wrongly signed; 400 malformed (the
/// field named); 404 unknown job; 503 store failure (the CEM retries). Counted in
/// `cem_bridge_optouts_total{result}`.
pub async fn unsubscribes(
    State(s): State<OpsState>,
    peer: Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(intake) = s.tickets.as_deref() else {
        return answer(
            StatusCode::NOT_FOUND,
            json!({ "error": "webhook_disabled", "message": "CEM callbacks are off: add a [tickets] table (it holds the CEM webhook secret) to the bridge config, or feed unsubscribes through [lists] opt_out files" }),
        );
    };
    if let Some(wait) = s.auth.locked(peer, "unsubscribe_webhook") {
        return guard::throttled(wait);
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = intake.clock.now_ms();
    if let Err(e) = cem_pipeline::ticket::verify(
        &intake.secret,
        header(&intake.timestamp_header),
        header(&intake.signature_header),
        &body,
        now / 1000,
        intake.max_skew_s,
    ) {
        warn!(reason = e.reason(), "unsubscribe refused: {e}");
        if let Some(wait) = s.auth.failed(peer, "unsubscribe_webhook") {
            return guard::throttled(wait);
        }
        counter!("cem_bridge_webhook_rejected_total", "reason" => e.reason()).increment(1);
        return answer(
            StatusCode::UNAUTHORIZED,
            json!({ "code": 401, "error": e.reason(), "message": format!("{e}: sign `<unix seconds>.<body>` with HMAC-SHA256 under the CEM webhook secret") }),
        );
    }
    let (event, subject) = match Unsubscribe::parse(&body) {
        Ok(p) => p,
        Err(message) => {
            counter!("cem_bridge_webhook_rejected_total", "reason" => "malformed").increment(1);
            return answer(
                StatusCode::BAD_REQUEST,
                json!({ "code": 400, "error": "malformed", "message": message }),
            );
        }
    };
    let source = format!(
        "cem:{}",
        event
            .channel
            .as_deref()
            .filter(|c| !c.is_empty()
                && c.len() <= 16
                && c.chars().all(|c| c.is_ascii_alphanumeric()))
            .unwrap_or("unknown")
    );
    match intake.store.record_opt_out(&subject, &source, now).await {
        Ok(r) => {
            counter!("cem_bridge_optouts_total", "result" => r.code()).increment(1);
            let job_id = match &subject {
                Subject::Job(j) => j.as_str(),
                Subject::Patient(_) => "",
            };
            if r == OptOutRecorded::UnknownJob {
                warn!(event_id = %event.event_id, job_id, "unsubscribe names no known survey job");
                return answer(
                    StatusCode::NOT_FOUND,
                    json!({ "code": 404, "error": "unknown_job", "message": "no survey job has this jobId (pruned after [retention] jobs_days, or not this bridge's)" }),
                );
            }
            info!(event_id = %event.event_id, job_id, source = %source, result = r.code(), "unsubscribe recorded");
            answer(StatusCode::OK, json!({ "code": 0, "result": r.code() }))
        }
        Err(e) => {
            warn!(event_id = %event.event_id, error = %e, "cannot record an unsubscribe; answered 503 so the CEM retries");
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "code": 503, "error": "store_unavailable", "message": "not stored; retry" }),
            )
        }
    }
}
