//! `[cem_results]`: a ticket call's outcome posted back to the CEM, which raised the ticket
//! (R-TKT-6). Pseudonyms only: it is queued in the same transaction as the HCRM row and needs
//! no vault lookup at send time.

use serde_json::{Value, json};

/// The call-outcome body; `occurred_at` is RFC 3339 in the hospital's zone.
#[allow(clippy::too_many_arguments)]
pub fn result_body(
    ticket_id: &str,
    task_ref: &str,
    scene: &str,
    attempt: u32,
    status: &str,
    outcome: &str,
    occurred_at: String,
    patient_key: Option<&str>,
) -> Value {
    json!({
        "ticketId": ticket_id,
        "taskRef": task_ref,
        "scene": scene,
        "attempt": attempt,
        "status": status,
        "outcome": outcome,
        "occurredAt": occurred_at,
        "patientKey": patient_key,
    })
}
