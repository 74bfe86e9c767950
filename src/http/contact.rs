//! `POST /contact/resolve` (R-ANO-7): the CEM's sender trades a survey's `contactRef` for the
//! mobile to send to, through the audited vault lookup (caller `cem`, purpose
//! `survey_delivery`).
//!
//! Request: `Authorization: Bearer <the CEM's token>` and `{"contactRef": "cr_…"}`.
//! Answers: 200 `{"contactRef", "jobId", "mobile"}`; 400 malformed body; 401 missing or wrong
//! token (nothing read, nothing stored); 404 unknown reference or no mobile on file; 410 the
//! reference expired (due + 72 h) or its survey was cancelled or suppressed. Every answer past
//! the token check is audited; none carries personal data except the 200's mobile.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cem_pipeline::reid::{Caller, Purpose, VaultRecord};
use metrics::counter;
use serde::Deserialize;
use serde_json::json;
use tracing::{debug, warn};

use crate::http::guard::{self, Peer};
use crate::http::state::OpsState;
use crate::privacy::vault::same_secret;
use crate::privacy::vault::{Access, CONTACT_REF_VALID_MS, Lookup};
use crate::store::{AuditEntry, Store, StoreError};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ResolveRequest {
    contact_ref: String,
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn problem(status: StatusCode, error: &str, message: &str) -> Response {
    answer(status, json!({ "error": error, "message": message }))
}

fn access(job_id: &str) -> Access<'_> {
    Access {
        caller: Caller::Cem,
        purpose: Purpose::SurveyDelivery,
        job_id: Some(job_id),
    }
}

/// The largest `/contact/resolve` body: `{"contactRef": "cr_…"}` is under 100 bytes. A larger
/// body is answered 413 as soon as the limit is read past, never buffered whole (issue 22 §5).
pub const MAX_BODY: usize = 4 * 1024;

pub async fn resolve(
    State(s): State<OpsState>,
    peer: Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(wait) = s.auth.locked(peer, "contact_resolve") {
        return guard::throttled(wait);
    }
    let authorised = match (&s.resolve_token, guard::bearer(&headers)) {
        (Some(token), Some(g)) => same_secret(g.as_bytes(), token.as_bytes()),
        _ => false,
    };
    if !authorised {
        if let Some(wait) = s.auth.failed(peer, "contact_resolve") {
            return guard::throttled(wait);
        }
        counter!("cem_bridge_reid_lookups_total", "caller" => "cem", "purpose" => "survey_delivery",
                 "outcome" => "denied")
        .increment(1);
        let mut r = problem(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "present the CEM's token (the bridge's [cem] resolve_token_env) as Authorization: Bearer <token>",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    let req: ResolveRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "malformed",
                &format!("the body must be {{\"contactRef\": \"cr_…\"}}: {e}"),
            );
        }
    };
    match lookup(&s, &req.contact_ref).await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "contact resolution failed");
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the bridge could not read its store; try again",
            )
        }
    }
}

/// Audit a lookup that ended before the vault was read (`not_found` / `denied`).
async fn audit_refusal(
    store: &Store,
    job_id: Option<&str>,
    pseudonym: Option<&str>,
    outcome: &'static str,
    why: &str,
) -> Result<(), StoreError> {
    let mut tx = store.begin().await?;
    tx.audit(&AuditEntry {
        job_id,
        patient_key: pseudonym,
        action: "vault_lookup",
        rule: Some("R-ANO-7"),
        reason: Some(outcome),
        detail: Some(&format!("caller=cem purpose=survey_delivery: {why}")),
        ..Default::default()
    })
    .await?;
    tx.commit().await?;
    counter!("cem_bridge_reid_lookups_total", "caller" => "cem", "purpose" => "survey_delivery",
             "outcome" => outcome)
    .increment(1);
    Ok(())
}

async fn lookup(
    s: &OpsState,
    contact_ref: &str,
) -> Result<Response, crate::store::vault::VaultAccessError> {
    let Some(job_id) = s.vault.verify_contact_ref(contact_ref) else {
        audit_refusal(&s.store, None, None, "not_found", "unknown contactRef").await?;
        return Ok(problem(
            StatusCode::NOT_FOUND,
            "unknown_contact_ref",
            "this contactRef was not issued by this bridge",
        ));
    };
    let Some((status, due_at, mobile_key)) = s.store.job_contact(&job_id).await? else {
        audit_refusal(&s.store, Some(&job_id), None, "not_found", "no such job").await?;
        return Ok(problem(
            StatusCode::NOT_FOUND,
            "unknown_job",
            "the survey job of this contactRef is not in the store (pruned or never created)",
        ));
    };
    let now = s.clock.now_ms();
    let gone = if now > due_at.saturating_add(CONTACT_REF_VALID_MS) {
        Some("expired: valid until the survey's due time + 72 h")
    } else if status != "pending" && status != "sent" {
        Some("the survey was cancelled, suppressed or given up")
    } else {
        None
    };
    if let Some(why) = gone {
        audit_refusal(
            &s.store,
            Some(&job_id),
            mobile_key.as_deref(),
            "denied",
            why,
        )
        .await?;
        return Ok(problem(StatusCode::GONE, "gone", why));
    }
    let Some(mk) = mobile_key else {
        audit_refusal(
            &s.store,
            Some(&job_id),
            None,
            "not_found",
            "the job has no mobile",
        )
        .await?;
        return Ok(problem(
            StatusCode::NOT_FOUND,
            "no_mobile",
            "no mobile is on file for this survey",
        ));
    };
    let found = s.store.vault_lookup(&s.vault, access(&job_id), &mk).await?;
    debug!(job_id = %job_id, outcome = found.outcome(), "contactRef resolved");
    Ok(match found {
        Lookup::Found(VaultRecord {
            mobile: Some(mobile),
            ..
        }) => answer(
            StatusCode::OK,
            json!({ "contactRef": contact_ref, "jobId": job_id, "mobile": mobile }),
        ),
        _ => problem(
            StatusCode::NOT_FOUND,
            "no_mobile",
            "no mobile is on file for this survey (purged after the retention period?)",
        ),
    })
}
