//! One batch of deliveries written in one store transaction: the inbox dedupe (R-EVT-4), the
//! survey decision's effects (jobs, vault records, cancellations, merges, updates), follow-up
//! plans, dead letters and audit rows. Nothing is acked before this commits.

use std::time::Instant;

use cem_pipeline::event::PatientEvent;
use cem_pipeline::followup::FollowupDecision;
use cem_pipeline::reason::DeadLetterReason;
use cem_pipeline::reid::entries_for;
use cem_pipeline::survey::{SurveyDecision, fact_keys, resolve};
use metrics::histogram;
use tracing::{debug, warn};

use crate::config::source::SourceConfig;
use crate::ingest::context::{Disposition, IngestContext, Mapped, Prepared, message_id_of};
use crate::ingest::facts::{BatchFacts, plan_keys};
use crate::process::fault::{self, Point};
use crate::store::dead_letters::{dead_letter_aad, seal_headers, stored_part};
use crate::store::vault::VaultAccessError;
use crate::store::{AuditEntry, DeadLetterEntry, InboxResult, JobInsert, NewJob, StoreError};

/// How long a cancel that came before its registration is remembered (R-CAN-2).
const TOMBSTONE_MS: i64 = 7 * 24 * 3_600_000;

pub(super) async fn write_batch(
    ctx: &IngestContext,
    src: &SourceConfig,
    prepared: &[Prepared],
) -> Result<Vec<Disposition>, StoreError> {
    let now = ctx.clock.now_ms();
    let conn = src.name.as_str();
    let mut tx = ctx.store.begin().await?;
    // One statement for the batch's message keys, one read of which survey jobs exist; the
    // jobs, vault records and audit rows then wait in the transaction and are written with one
    // statement per table at the commit (`store::buffered`).
    let keyed: Vec<(&str, &str, &str, &str)> = prepared
        .iter()
        .filter_map(|p| match &p.result {
            Ok(Mapped::Event(_, e, _, _)) => Some((
                e.message_key.as_str(),
                p.hash.as_str(),
                e.message_id.as_str(),
                e.kind.code(),
            )),
            _ => None,
        })
        .collect();
    let mut inbox = tx.record_inbox_batch(conn, &keyed, now).await?.into_iter();
    let job_ids: Vec<&str> = prepared
        .iter()
        .filter_map(|p| match &p.result {
            Ok(Mapped::Event(_, _, SurveyDecision::Schedule(job), _)) => Some(job.job_id.as_str()),
            _ => None,
        })
        .collect();
    if !job_ids.is_empty() {
        tx.read_absent_jobs(&job_ids).await?;
    }
    let mut facts = BatchFacts::new(prepared);
    let mut out = Vec::with_capacity(prepared.len());
    let mut created = false;
    // Unknown table codes of new messages, tallied for the page once the batch committed.
    let mut unmatched = Vec::new();
    for p in prepared {
        let mid = message_id_of(p);
        // Every line about this message carries its id and trace id (issue 8 §4); a message
        // without an id is traced by its content hash.
        let traced = mid
            .clone()
            .unwrap_or_else(|| format!("sha256:{}", p.hash.get(..16).unwrap_or(&p.hash)));
        let span = crate::process::logctx::message_span(conn, &traced);
        let made = tracing::Instrument::instrument(
            async {
                let mut made = false;
            let reject = |tx_reason: DeadLetterReason, detail: String| (tx_reason, detail);
            let dl = match &p.result {
                Err(r) => Some(reject(r.reason, r.detail.clone())),
                Ok(Mapped::Ignored { mapping, .. }) => {
                    tx.audit(&AuditEntry {
                        connector: Some(conn),
                        message_id: mid.as_deref(),
                        action: "ignored",
                        rule: Some("mapping"),
                        reason: Some("ignored"),
                        detail: Some(&format!("mapping {mapping} says ignore")),
                        ..Default::default()
                    })
                    .await?;
                    tx.count("cem_bridge_messages_ignored_total", &[("connector", conn)], 1);
                    debug!(connector = conn, message_id = ?mid, mapping = %mapping, "ignored by the mapping");
                    None
                }
                Ok(Mapped::Event(format, event, decision, followup)) => {
                    match inbox.next().unwrap_or(InboxResult::Conflict) {
                        InboxResult::Duplicate => {
                            tx.audit(&AuditEntry {
                                connector: Some(conn),
                                message_id: Some(&event.message_id),
                                action: "duplicate",
                                rule: Some("R-EVT-4"),
                                reason: Some("duplicate"),
                                ..Default::default()
                            })
                            .await?;
                            tx.count("cem_bridge_messages_duplicate_total", &[("connector", conn)], 1);
                            debug!(connector = conn, message_id = %event.message_id, "duplicate delivery acked without effect");
                            None
                        }
                        InboxResult::Conflict => Some(reject(
                            DeadLetterReason::DuplicateIdConflict,
                            format!(
                                "message {} was seen before with different content",
                                event.message_id
                            ),
                        )),
                        InboxResult::New => {
                            tx.count(
                                "cem_bridge_messages_in_total",
                                &[
                                    ("connector", conn),
                                    ("format", format.code()),
                                    ("event", event.kind.code()),
                                ],
                                1,
                            );
                            for u in &event.unmatched_codes {
                                note_unmatched(u, conn, &event.message_id);
                                unmatched.push(u);
                                tx.count(
                                    "cem_bridge_mapping_unmatched_codes_total",
                                    &[("mapping", &u.mapping), ("table", &u.table)],
                                    1,
                                );
                            }
                            for w in event.warnings.iter().filter(|w| w.counts_for(event.kind)) {
                                tx.count("cem_bridge_identity_warnings_total", &[("kind", w.code())], 1);
                            }
                            // R-PAT-1..3: the patient record, merged or read here.
                            let with = super::record::apply(&mut tx, ctx, conn, event, now).await?;
                            let (event, decision, followup) = match &with {
                                Some(w) => (&w.event, &w.decision, &w.followup),
                                None => (&**event, decision, followup),
                            };
                            made |= apply_decision(&mut tx, &mut facts, conn, event, decision, ctx, now).await?;
                            made |= apply_followup(&mut tx, &mut facts, conn, event, followup, ctx, now).await?;
                            None
                        }
                    }
                }
            };
            match dl {
                None => out.push(Disposition::Ack),
                Some((reason, detail)) => {
                    let sealed = ctx
                        .vault
                        .seal(&dead_letter_aad(&p.hash), stored_part(&p.msg.body))
                        .map_err(|_| StoreError::Sealing)?;
                    let headers = seal_headers(&ctx.vault, &p.hash, &p.msg.headers)?;
                    tx.dead_letter(
                        &DeadLetterEntry {
                            connector: conn,
                            message_id: mid.as_deref(),
                            reason: reason.code(),
                            detail: &detail,
                            content_hash: &p.hash,
                            size_bytes: p.msg.body.len() as i64,
                            delivery_count: i64::try_from(p.msg.redeliveries).unwrap_or(i64::MAX),
                            sealed_body: Some((&sealed.0, &sealed.1)),
                            sealed_headers: headers.as_deref(),
                        },
                        now,
                    )
                    .await?;
                    tx.audit(&AuditEntry {
                        connector: Some(conn),
                        message_id: mid.as_deref(),
                        action: "dead_letter",
                        rule: Some("R-EVT-6"),
                        reason: Some(reason.code()),
                        detail: Some(&detail),
                        ..Default::default()
                    })
                    .await?;
                    out.push(Disposition::DeadLetter { reason, detail });
                }
            }
                Ok::<bool, StoreError>(made)
            },
            span,
        )
        .await?;
        created |= made;
    }
    fault::hit(Point::BeforeCommit);
    tx.fail_commit_if_faulted().await;
    tx.commit().await?;
    ctx.unmatched.note(unmatched, now);
    let durable = Instant::now();
    let latency = histogram!("cem_bridge_ingest_latency_seconds", "connector" => src.name.clone());
    for p in prepared {
        latency.record(durable.duration_since(p.received).as_secs_f64());
    }
    if created {
        ctx.scheduler_wake.notify_one();
    }
    Ok(out)
}

/// Write the effects of one decision; `true` if a job was created.
async fn apply_decision(
    tx: &mut crate::store::StoreTx,
    facts: &mut BatchFacts<'_>,
    conn: &str,
    event: &PatientEvent,
    decision: &SurveyDecision,
    ctx: &IngestContext,
    now: i64,
) -> Result<bool, StoreError> {
    let pk = ctx.pseudo.patient_key(&event.patient.id);
    let mid = event.message_id.as_str();
    // The exclusions that need stored state (R-CAN-6 merges, R-CAN-2 tombstones, R-EXC-1,
    // R-EXC-3) are the pipeline's: one read of the facts, inside this transaction so an
    // earlier message of the batch is seen, then the pure `survey::resolve`.
    let resolved = match fact_keys(decision) {
        Some(keys) => {
            let found = facts.get(tx, &keys, now).await?;
            resolve(decision.clone(), event, &found, now)
        }
        None => decision.clone(),
    };
    match &resolved {
        SurveyDecision::Schedule(job) => {
            let payload = serde_json::to_string(&job.payload).unwrap_or_default();
            let r = tx
                .insert_job(
                    &NewJob {
                        job_id: &job.job_id,
                        template: &job.template,
                        patient_key: &job.patient_key,
                        visit_key: &job.visit_key,
                        id_card_key: job.id_card_key.as_deref(),
                        mobile_key: Some(&job.mobile_key),
                        due_at: job.due_at.as_millisecond(),
                        payload: &payload,
                        connector: conn,
                        message_id: mid,
                        dnd: true,
                        stale_at: Some(job.stale_at.as_millisecond()),
                    },
                    now,
                )
                .await?;
            if matches!(r, JobInsert::Created | JobInsert::Reactivated) {
                // R-ANO-6: what re-identification needs for this job, sealed.
                // Under the event's own pk: after a merge (R-CAN-6) the survivor's record keeps
                // the survivor's identity.
                for (pseudonym, record) in entries_for(event, &ctx.pseudo, &pk) {
                    tx.vault_put(&ctx.vault, &pseudonym, &record, now)
                        .await
                        .map_err(VaultAccessError::into_store)?;
                }
            }
            let (action, reason) = match &r {
                JobInsert::Created => ("scheduled", None),
                JobInsert::Reactivated => ("reactivated", Some("discharge_recorded_again")),
                JobInsert::Exists { status } if status == "sent" => ("no_op", Some("already_sent")),
                JobInsert::Exists { .. } => ("no_op", Some("already_scheduled")),
            };
            let due = cem_pipeline::time::rfc3339_in(job.due_at, &ctx.zone);
            tx.audit(&AuditEntry {
                connector: Some(conn),
                message_id: Some(mid),
                job_id: Some(&job.job_id),
                patient_key: Some(&pk),
                action,
                rule: Some(if r == JobInsert::Reactivated {
                    "R-CAN-3"
                } else {
                    "R-SRV-5"
                }),
                reason,
                detail: Some(&format!("template {} due {due}", job.template)),
            })
            .await?;
            tx.count(
                "cem_bridge_survey_decisions_total",
                &[
                    ("decision", "scheduled"),
                    ("reason", reason.unwrap_or("scheduled")),
                ],
                1,
            );
            debug!(connector = conn, message_id = mid, patient_key = %pk, job_id = %job.job_id, action, "survey decision");
            Ok(matches!(r, JobInsert::Created | JobInsert::Reactivated))
        }
        SurveyDecision::Merge {
            survivor_key,
            merged_key,
        } => {
            let moved = tx.merge_patients(merged_key, survivor_key).await?;
            // R-PAT-4: the merged patient's record goes to the survivor.
            tx.move_patient_record(&ctx.vault, merged_key, survivor_key, now)
                .await
                .map_err(VaultAccessError::into_store)?;
            facts.changed(merged_key);
            facts.changed(survivor_key);
            tx.audit(&AuditEntry {
                connector: Some(conn),
                message_id: Some(mid),
                patient_key: Some(merged_key),
                action: "merged",
                rule: Some("R-CAN-6"),
                detail: Some(&format!(
                    "into {survivor_key}; {} pending survey(s) moved",
                    moved.len()
                )),
                ..Default::default()
            })
            .await?;
            Ok(false)
        }
        SurveyDecision::Update {
            patient_key,
            mobile_key,
            deceased,
            event_time,
        } => {
            let applied = tx
                .update_contact(
                    patient_key,
                    mobile_key.as_deref(),
                    event_time.as_millisecond(),
                )
                .await?;
            if applied {
                for (pseudonym, record) in entries_for(event, &ctx.pseudo, patient_key) {
                    tx.vault_put(&ctx.vault, &pseudonym, &record, now)
                        .await
                        .map_err(VaultAccessError::into_store)?;
                }
            }
            tx.audit(&recorded(
                conn,
                mid,
                patient_key,
                Some("R-CAN-5"),
                if applied {
                    "demographics_updated"
                } else {
                    "older_update_ignored"
                },
            ))
            .await?;
            if *deceased {
                facts.changed(patient_key);
                for job_id in tx.mark_deceased(patient_key, now).await? {
                    audit_cancel(tx, conn, mid, &job_id, patient_key, "R-EXC-1", "deceased")
                        .await?;
                }
            }
            Ok(false)
        }
        SurveyDecision::Reanchor { visit_key, due_at } => {
            let due = cem_pipeline::time::rfc3339_in(*due_at, &ctx.zone);
            let moved = tx
                .reanchor_visit(visit_key, due_at.as_millisecond(), &due, now)
                .await?;
            for job_id in &moved {
                tx.audit(&AuditEntry {
                    connector: Some(conn),
                    message_id: Some(mid),
                    job_id: Some(job_id),
                    patient_key: Some(&pk),
                    action: "rescheduled",
                    rule: Some("R-SRV-2"),
                    reason: Some("visit_ended"),
                    detail: Some(&format!("due {due}")),
                })
                .await?;
            }
            if moved.is_empty() {
                tx.audit(&AuditEntry {
                    detail: Some("outpatient visit end with no pending survey to re-anchor"),
                    ..recorded(conn, mid, &pk, Some("R-SRV-2"), "no_pending_survey")
                })
                .await?;
            }
            Ok(!moved.is_empty())
        }
        SurveyDecision::Cancel {
            visit_key,
            reason,
            rule,
        } => {
            let result = tx.cancel_visit(visit_key, reason, now).await?;
            facts.changed(visit_key);
            for job_id in &result.cancelled {
                audit_cancel(tx, conn, mid, job_id, &pk, rule, reason).await?;
            }
            for job_id in &result.sent {
                tx.audit(&AuditEntry {
                    job_id: Some(job_id),
                    ..recorded(conn, mid, &pk, Some("R-CAN-1"), "cancel_after_send")
                })
                .await?;
            }
            if result.followup_calls > 0 {
                tx.audit(&AuditEntry {
                    connector: Some(conn),
                    message_id: Some(mid),
                    patient_key: Some(&pk),
                    action: "cancelled",
                    rule: Some("R-FUP-4"),
                    reason: Some(reason),
                    detail: Some(&format!(
                        "{} pending follow-up call(s) of the stay",
                        result.followup_calls
                    )),
                    ..Default::default()
                })
                .await?;
            }
            if result.cancelled.is_empty() && result.sent.is_empty() && *reason == "visit_cancelled"
            {
                tx.put_tombstone(visit_key, reason, now + TOMBSTONE_MS)
                    .await?;
                tx.audit(&AuditEntry {
                    detail: Some("tombstone kept 7 days"),
                    ..recorded(
                        conn,
                        mid,
                        &pk,
                        Some("R-CAN-2"),
                        "cancel_before_registration",
                    )
                })
                .await?;
            }
            debug!(connector = conn, message_id = mid, patient_key = %pk, cancelled = result.cancelled.len(), reason, "visit cancelled");
            Ok(false)
        }
        SurveyDecision::Suppress { reason, rule } => {
            if *reason == "deceased" {
                facts.changed(&pk);
                for job_id in tx.mark_deceased(&pk, now).await? {
                    audit_cancel(tx, conn, mid, &job_id, &pk, "R-EXC-1", "deceased").await?;
                }
            }
            SURVEY_SUPPRESSED
                .record(tx, conn, mid, &pk, rule, reason)
                .await?;
            debug!(connector = conn, message_id = mid, patient_key = %pk, reason, "survey suppressed");
            Ok(false)
        }
        SurveyDecision::CancelledBefore { reason, rule } => {
            SURVEY_CANCELLED_BEFORE
                .record(tx, conn, mid, &pk, rule, reason)
                .await?;
            debug!(connector = conn, message_id = mid, patient_key = %pk, reason, "survey cancelled: the visit was cancelled before its registration arrived");
            Ok(false)
        }
        SurveyDecision::Record { reason } => {
            tx.audit(&AuditEntry {
                detail: Some(event.kind.code()),
                ..recorded(conn, mid, &pk, None, reason)
            })
            .await?;
            Ok(false)
        }
    }
}

/// Write a follow-up decision (R-FUP-1..4); `true` if CEM steps were scheduled (the
/// scheduler is woken; calls wait in the ticket outbox).
async fn apply_followup(
    tx: &mut crate::store::StoreTx,
    facts: &mut BatchFacts<'_>,
    conn: &str,
    event: &PatientEvent,
    decision: &FollowupDecision,
    ctx: &IngestContext,
    now: i64,
) -> Result<bool, StoreError> {
    let mid = event.message_id.as_str();
    // R-CAN-6 / R-EXC-1 with the stored facts, decided in the pipeline
    // (`followup::resolve`); the callee's vault entries stay under this event's own key.
    let (resolved, own_pk) = match decision {
        FollowupDecision::Plan(p) => {
            let found = facts.get(tx, &plan_keys(p), now).await?;
            (
                cem_pipeline::followup::resolve(decision.clone(), &found),
                p.patient_key.clone(),
            )
        }
        _ => (decision.clone(), String::new()),
    };
    match &resolved {
        FollowupDecision::None => Ok(false),
        FollowupDecision::Excluded { reason, rule } => {
            let pk = ctx.pseudo.patient_key(&event.patient.id);
            FOLLOWUP_EXCLUDED
                .record(tx, conn, mid, &pk, rule, reason)
                .await?;
            Ok(false)
        }
        FollowupDecision::Plan(plan) => {
            let Some(f) = &ctx.followup else {
                return Ok(false);
            };
            // The call center's number and greeting come from the vault at send time: the
            // entries count as used at the plan's last step, so `[retention] vault_days` keeps
            // them until that long after it (CARE-QUARTERLY reminders run to D+360).
            let last_step = plan
                .steps
                .iter()
                .map(|s| s.due_at.as_millisecond())
                .max()
                .unwrap_or(now)
                .max(now);
            for (pseudonym, record) in entries_for(event, &ctx.pseudo, &own_pk) {
                tx.vault_put(&ctx.vault, &pseudonym, &record, last_step)
                    .await
                    .map_err(VaultAccessError::into_store)?;
            }
            let done = tx
                .followup_plan(&ctx.vault, &f.windows, plan, conn, mid, &ctx.zone, now)
                .await?;
            tx.count(
                "cem_bridge_followup_decisions_total",
                &[("decision", "planned"), ("reason", plan.plan.code())],
                1,
            );

            debug!(connector = conn, message_id = mid, patient_key = %plan.patient_key, plan = plan.plan.code(),
                   scheduled = done.scheduled, kept = done.kept, "follow-up planned");
            Ok(done.scheduled > 0)
        }
    }
}

/// The audit row of a message recorded without a (further) effect.
fn recorded<'a>(
    conn: &'a str,
    message_id: &'a str,
    patient_key: &'a str,
    rule: Option<&'a str>,
    reason: &'a str,
) -> AuditEntry<'a> {
    AuditEntry {
        connector: Some(conn),
        message_id: Some(message_id),
        patient_key: Some(patient_key),
        action: "recorded",
        rule,
        reason: Some(reason),
        ..Default::default()
    }
}

/// A survey or follow-up a rule stopped: its audit row (`action`) and its count in `metric`
/// with label `decision`.
struct Stopped {
    action: &'static str,
    metric: &'static str,
    decision: &'static str,
}

/// A survey an exclusion stopped (R-EXC-…, R-CAN-2).
const SURVEY_SUPPRESSED: Stopped = Stopped {
    action: "suppressed",
    metric: "cem_bridge_survey_decisions_total",
    decision: "suppressed",
};

/// A survey whose visit was cancelled before its registration arrived (R-CAN-2): counted
/// and audited as a cancellation, like a cancel that comes after the registration.
const SURVEY_CANCELLED_BEFORE: Stopped = Stopped {
    action: "cancelled",
    metric: "cem_bridge_survey_decisions_total",
    decision: "cancelled",
};

/// A follow-up plan an exclusion stopped (R-FUP-2, R-EXC-1).
const FOLLOWUP_EXCLUDED: Stopped = Stopped {
    action: "followup_excluded",
    metric: "cem_bridge_followup_decisions_total",
    decision: "excluded",
};

impl Stopped {
    async fn record(
        &self,
        tx: &mut crate::store::StoreTx,
        conn: &str,
        message_id: &str,
        patient_key: &str,
        rule: &str,
        reason: &'static str,
    ) -> Result<(), StoreError> {
        tx.audit(&AuditEntry {
            connector: Some(conn),
            message_id: Some(message_id),
            patient_key: Some(patient_key),
            action: self.action,
            rule: Some(rule),
            reason: Some(reason),
            ..Default::default()
        })
        .await?;
        tx.count(
            self.metric,
            &[("decision", self.decision), ("reason", reason)],
            1,
        );
        Ok(())
    }
}

/// Say once per process (per mapping, table and code) that a table with `unmatched: keep`
/// passed a code it does not know through as the field's value (issue 18 §4); later
/// occurrences are at debug and counted. The code is shown only for a code-like field.
fn note_unmatched(u: &cem_pipeline::event::UnmatchedCode, conn: &str, message_id: &str) {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let code = u.code_shown().unwrap_or("(value withheld)");
    let key = format!("{}|{}|{}", u.mapping, u.table, u.code);
    let first = {
        let mut seen = SEEN
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        seen.len() < 10_000 && seen.insert(key)
    };
    if first {
        warn!(
            connector = conn,
            message_id,
            mapping = %u.mapping,
            table = %u.table,
            field = u.field.name(),
            code,
            "a code the mapping's table does not know was kept as the value (unmatched: keep): add it to the table, or set unmatched: default / drop"
        );
    } else {
        debug!(connector = conn, message_id, mapping = %u.mapping, table = %u.table, code, "unknown table code kept again");
    }
}

/// Audit and count one cancelled job.
async fn audit_cancel(
    tx: &mut crate::store::StoreTx,
    conn: &str,
    message_id: &str,
    job_id: &str,
    patient_key: &str,
    rule: &str,
    reason: &'static str,
) -> Result<(), StoreError> {
    tx.audit(&AuditEntry {
        connector: Some(conn),
        message_id: Some(message_id),
        job_id: Some(job_id),
        patient_key: Some(patient_key),
        action: "cancelled",
        rule: Some(rule),
        reason: Some(reason),
        ..Default::default()
    })
    .await?;
    tx.count(
        "cem_bridge_survey_decisions_total",
        &[("decision", "cancelled"), ("reason", reason)],
        1,
    );
    Ok(())
}
