//! `[hcrm]`: the hospital CRM. HCRM gets create, update, escalate and call results on one URL
//! with an `op` field (upsert by `externalTicketId`, docs/tickets.md); the case body is built
//! here when the update is accepted and queued sealed, and the worker completes its patient block
//! from the vault at send time (R-ANO-6 purpose `ticket_case`).

use cem_pipeline::ticket::{Grade, HcrmOp, SlaClock, TicketUpdate};
use cem_pipeline::time::rfc3339_in;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::{Value, json};

/// The HCRM case body (docs/tickets.md); the patient block is completed from the vault at
/// send time (R-ANO-6 purpose `ticket_case`).
pub fn hcrm_body(
    u: &TicketUpdate,
    grade: Grade,
    op: HcrmOp,
    patient_key: Option<&str>,
    visit_key: Option<&str>,
    sla: &[(SlaClock, Timestamp)],
    zone: &TimeZone,
) -> Value {
    let mut b = json!({
        "op": op.code(),
        "externalTicketId": format!("cem:{}", u.ticket_id),
        "ticketId": u.ticket_id,
        "version": u.version,
        // R-FUP-5: a case the bridge opened for a follow-up call, not a CEM ticket.
        "source": if u.followup_case() { "followup" } else { "cem" },
        "status": u.status.code(),
        "grade": grade.code(),
        "patient": { "pseudonym": patient_key },
    });
    let obj = b.as_object_mut();
    if let Some(o) = obj {
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                o.insert(k.to_string(), v);
            }
        };
        put("occurredAt", u.at().map(|t| rfc3339_in(t, zone).into()));
        put("trigger", u.trigger.clone().map(Value::from));
        put("score", u.score.map(Value::from));
        put("category", u.category.clone().map(Value::from));
        put("comment", u.comment.clone().map(Value::from));
        put("surveyId", u.survey_id.clone().map(Value::from));
        // The worker adds `patient.visitNumber` from this pseudonym's vault record.
        put("visitKey", visit_key.map(Value::from));
        put("assignee", u.assignee.clone().map(Value::from));
        put("resolution", u.resolution.clone().map(Value::from));
        if !sla.is_empty() {
            let m: serde_json::Map<String, Value> = sla
                .iter()
                .map(|(c, t)| (format!("{}DueAt", c.code()), rfc3339_in(*t, zone).into()))
                .collect();
            o.insert("sla".into(), Value::Object(m));
        }
    }
    b
}

/// A ticket call's outcome for its case (`op: call_result`, R-TKT-6).
pub fn call_result_body(
    ticket_id: &str,
    call: &Value,
    occurred_at: String,
    patient_key: Option<&str>,
) -> Value {
    json!({
        "op": "call_result",
        "externalTicketId": format!("cem:{ticket_id}"),
        "ticketId": ticket_id,
        "call": call,
        "occurredAt": occurred_at,
        "patient": { "pseudonym": patient_key },
    })
}
