//! The patient record in a batch (R-PAT-1..4): a patient-level event (A28/A31/A08, 互联互通
//! S0001/S0002) merges its facts into the patient's sealed record; a registration or discharge
//! that lacks the mobile, the birth date or a minor's guardian takes them from the record and is
//! decided again on the filled event. Both happen inside the batch's transaction, so a later
//! message of the same batch sees an earlier one's facts. What was filled, and from which
//! message, is audited (`trace` shows it); values never are.

use cem_pipeline::event::PatientEvent;
use cem_pipeline::followup::FollowupDecision;
use cem_pipeline::patient_record::{PatientRecord, needs_record};
use cem_pipeline::survey::SurveyDecision;

use crate::ingest::context::IngestContext;
use crate::store::vault::VaultAccessError;
use crate::store::{AuditEntry, StoreError, StoreTx};

/// A message's event and decisions once the patient record is taken into account.
pub(super) struct WithRecord {
    pub(super) event: PatientEvent,
    pub(super) decision: SurveyDecision,
    pub(super) followup: FollowupDecision,
}

/// Merge a patient-level event into the record, or fill a visit event from it. `None` when the
/// message's own event and decisions stand (nothing to merge or fill).
pub(super) async fn apply(
    tx: &mut StoreTx,
    ctx: &IngestContext,
    conn: &str,
    event: &PatientEvent,
    now: i64,
) -> Result<Option<WithRecord>, StoreError> {
    let mid = event.message_id.as_str();
    if event.kind.is_patient_level() && event.production {
        let pk = ctx.pseudo.patient_key(&event.patient.id);
        let incoming = PatientRecord::from_event(event, &ctx.pseudo);
        let (record, changed) = tx
            .merge_patient_record(&ctx.vault, &pk, incoming, now)
            .await
            .map_err(VaultAccessError::into_store)?;
        let detail = if changed.is_empty() {
            "nothing newer than the record holds".to_string()
        } else {
            format!("newer facts: {}", changed.join(", "))
        };
        tx.audit(&AuditEntry {
            connector: Some(conn),
            message_id: Some(mid),
            patient_key: Some(&pk),
            action: "patient_record",
            rule: Some("R-PAT-2"),
            reason: Some(if changed.is_empty() {
                "older_facts_ignored"
            } else {
                "record_updated"
            }),
            detail: Some(&detail),
            ..Default::default()
        })
        .await?;
        // The contact the patient's pending surveys move to is the record's, so an update that
        // carries no phone (an address change) keeps the one known (R-PAT-3).
        let (filled, what) = record.fill(event);
        if what.is_empty() {
            return Ok(None);
        }
        let (decision, followup) = ctx.decide(&filled, ctx.clock.now());
        return Ok(Some(WithRecord {
            event: filled,
            decision,
            followup,
        }));
    }
    // The common case — a visit with its own contact — stops here, with no pseudonym computed.
    if !needs_record(event, || ctx.is_minor(event)) {
        return Ok(None);
    }
    let pk = ctx.pseudo.patient_key(&event.patient.id);
    let Some(record) = tx.patient_record(&ctx.vault, &pk).await? else {
        return Ok(None);
    };
    let (filled, what) = record.fill(event);
    if what.is_empty() {
        return Ok(None);
    }
    let (mut decision, followup) = ctx.decide(&filled, ctx.clock.now());
    // The 身份证号 itself cannot be filled, but its pseudonym can: do-not-disturb counts it.
    if let SurveyDecision::Schedule(job) = &mut decision
        && job.id_card_key.is_none()
    {
        job.id_card_key = record.id_card_key.as_ref().map(|f| f.value.clone());
    }
    let detail = what
        .iter()
        .map(|f| f.describe(&ctx.zone))
        .collect::<Vec<_>>()
        .join("; ");
    let job_id = match &decision {
        SurveyDecision::Schedule(job) => Some(job.job_id.as_str()),
        _ => None,
    };
    tx.audit(&AuditEntry {
        connector: Some(conn),
        message_id: Some(mid),
        job_id,
        patient_key: Some(&pk),
        action: "filled_from_record",
        rule: Some("R-PAT-3"),
        reason: Some("visit_lacked_contact"),
        detail: Some(&detail),
    })
    .await?;
    Ok(Some(WithRecord {
        event: filled,
        decision,
        followup,
    }))
}
