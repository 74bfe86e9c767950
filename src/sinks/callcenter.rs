//! `[callcenter]`: the AI call center. A call task is built here when it is planned and queued
//! sealed; it is held in the bridge until due, and the worker adds the callee block from the
//! vault at send time (purposes `ticket_callback`, `followup_call`).

use cem_pipeline::ticket::{CallKind, CallingWindows, Grade};
use cem_pipeline::time::rfc3339_in;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::{Value, json};

/// The call-center task body (docs/tickets.md); `callee` is added from the vault at send time
/// (purpose `ticket_callback`).
#[allow(clippy::too_many_arguments)]
pub fn call_body(
    ticket_id: &str,
    kind: CallKind,
    task_ref: &str,
    grade: Grade,
    patient_key: &str,
    due: Timestamp,
    windows: &CallingWindows,
    zone: &TimeZone,
) -> Value {
    let w: Vec<Value> = windows
        .0
        .iter()
        .map(|(a, b)| {
            json!([
                a.strftime("%H:%M").to_string(),
                b.strftime("%H:%M").to_string()
            ])
        })
        .collect();
    json!({
        "taskRef": task_ref,
        "scene": kind.code(),
        "ticketId": ticket_id,
        "grade": grade.code(),
        "patientPseudonym": patient_key,
        "notBefore": rfc3339_in(due, zone),
        "windows": w,
        // The bridge schedules retries itself (R-TKT-7): one attempt per task.
        "attempt": 1,
        "maxAttempts": 1,
    })
}
