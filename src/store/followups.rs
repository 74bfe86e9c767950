//! Follow-up plans in the store (domain rules §5): a surgical discharge's steps are written in
//! the ingest transaction — calls as call-center rows of the ticket outbox (sent by the ticket
//! worker, one call per patient per day, R-FUP-3), questionnaires and reminders as CEM jobs
//! exempt from do-not-disturb (R-FUP-2). Step keys `fu:{stayKey}:{plan}:{step}` (R-FUP-4) make a
//! re-planned stay (A13 then A03) reuse its rows: cancelled steps come back with the new dates,
//! steps already sent are not repeated. Cancellation on A13 / death and re-keying on A40 are in
//! `store.rs` beside the survey rules they mirror. [`Store::followup_steps`] reads a stay's
//! plan back step by step for `trace`.

use cem_pipeline::followup::{FollowupPlan, FollowupSettings, StepAction};
use cem_pipeline::ticket::CallingWindows;
use cem_pipeline::time::rfc3339_in;
use jiff::tz::TimeZone;
use serde_json::json;
use sqlx::Row;

use crate::privacy::vault::VaultCipher;
use std::collections::BTreeSet;

use crate::store::keys::{Thread, followup_step_key, thread_id};
use crate::store::{AuditEntry, JobInsert, NewJob, Store, StoreError, StoreTx, db};

/// What planning follow-ups needs (present when `[tickets]` is configured: the calls go out
/// through the ticket worker's call-center sink).
#[derive(Clone)]
pub struct FollowupCtx {
    pub settings: FollowupSettings,
    pub windows: CallingWindows,
}

/// How a plan's steps were written.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Planned {
    /// New or re-planned steps.
    pub scheduled: usize,
    /// Steps already sent or in progress: left alone (R-FUP-4).
    pub kept: usize,
}

impl StoreTx {
    /// Write a stay's plan: each step new, re-planned after an A13 (R-FUP-4), or kept.
    #[allow(clippy::too_many_arguments)]
    pub async fn followup_plan(
        &mut self,
        cipher: &VaultCipher,
        windows: &CallingWindows,
        p: &FollowupPlan,
        connector: &str,
        message_id: &str,
        zone: &TimeZone,
        now: i64,
    ) -> Result<Planned, StoreError> {
        let mut out = Planned::default();
        let windows_text = |w: &CallingWindows| -> Vec<[String; 2]> {
            w.0.iter()
                .map(|(a, b)| {
                    [
                        a.strftime("%H:%M").to_string(),
                        b.strftime("%H:%M").to_string(),
                    ]
                })
                .collect()
        };
        for step in &p.steps {
            let due = step.due_at.as_millisecond();
            let fresh = match &step.action {
                StepAction::Call { scene } => {
                    // A step a release before the rules' step names planned keeps its key.
                    let key = if self.outbox_key_exists(&step.legacy_key).await? {
                        step.legacy_key.as_str()
                    } else {
                        step.key.as_str()
                    };
                    let body = json!({
                        "taskRef": key,
                        "scene": scene,
                        "plan": p.plan.code(),
                        "step": step.step,
                        "patientPseudonym": p.patient_key,
                        "calleeKey": p.callee_key,
                        "notBefore": rfc3339_in(step.due_at, zone),
                        "windows": windows_text(windows),
                        "attempt": 1,
                        "maxAttempts": 1,
                    });
                    self.queue_followup_call(
                        cipher,
                        &thread_id(&p.stay_key),
                        scene,
                        key,
                        &p.patient_key,
                        &body,
                        due,
                        now,
                    )
                    .await?
                }
                StepAction::Cem {
                    job_id,
                    legacy_job_id,
                    template,
                    payload,
                } => {
                    let mut payload = payload.as_ref().clone();
                    let job_id = if self.job_exists(legacy_job_id).await? {
                        payload.job_id.clone_from(legacy_job_id);
                        payload.request_id = cem_pipeline::survey::idempotency_key(legacy_job_id);
                        legacy_job_id
                    } else {
                        job_id
                    };
                    let payload = serde_json::to_string(&payload).unwrap_or_default();
                    let r = self
                        .insert_job(
                            &NewJob {
                                job_id,
                                template,
                                patient_key: &p.patient_key,
                                visit_key: &p.stay_key,
                                id_card_key: p.id_card_key.as_deref(),
                                mobile_key: Some(&p.mobile_key),
                                due_at: due,
                                payload: &payload,
                                connector,
                                message_id,
                                dnd: false,
                                stale_at: None,
                            },
                            now,
                        )
                        .await?;
                    matches!(r, JobInsert::Created | JobInsert::Reactivated)
                }
            };
            if fresh {
                out.scheduled += 1;
                // Counted when written (a resent discharge keeps its steps: not counted again).
                self.count(
                    "cem_bridge_followup_tasks_total",
                    &[
                        ("plan", p.plan.code()),
                        ("step", step.step),
                        ("outcome", "scheduled"),
                    ],
                    1,
                );
            } else {
                out.kept += 1;
            }
        }
        self.audit(&AuditEntry {
            connector: Some(connector),
            message_id: Some(message_id),
            patient_key: Some(&p.patient_key),
            action: "followup_planned",
            rule: Some("R-FUP-1"),
            reason: Some(p.plan.code()),
            detail: Some(&format!(
                "{} step(s) scheduled, {} kept; first due {}",
                out.scheduled,
                out.kept,
                p.steps
                    .first()
                    .map(|s| rfc3339_in(s.due_at, zone))
                    .unwrap_or_default()
            )),
            ..Default::default()
        })
        .await?;
        Ok(out)
    }

    /// Whether an outbox row has this key.
    async fn outbox_key_exists(&mut self, key: &str) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("SELECT 1 AS x FROM ticket_outbox WHERE idem_key = $1")
                .bind(key)
                .fetch_optional(self.conn().await?)
                .await
                .map_err(db("look up a follow-up step"))?
                .is_some(),
        )
    }

    /// Whether a survey job has this id.
    async fn job_exists(&mut self, job_id: &str) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("SELECT 1 AS x FROM survey_jobs WHERE job_id = $1")
                .bind(job_id)
                .fetch_optional(self.conn().await?)
                .await
                .map_err(db("look up a follow-up step"))?
                .is_some(),
        )
    }

    /// Queue one follow-up call, or bring back the same step cancelled by an A13 with its new
    /// time (R-FUP-4); `false` if the step exists in any other state (sent steps are done).
    #[allow(clippy::too_many_arguments)]
    async fn queue_followup_call(
        &mut self,
        cipher: &VaultCipher,
        thread: &str,
        scene: &str,
        key: &str,
        patient_key: &str,
        body: &serde_json::Value,
        due: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let (key_id, sealed) = cipher
            .seal(
                &crate::store::keys::outbox_aad(key),
                body.to_string().as_bytes(),
            )
            .map_err(|_| StoreError::Sealing)?;
        let n = sqlx::query(
            "INSERT INTO ticket_outbox (ticket_id, sink, kind, idem_key, patient_key, status, due_at, next_attempt_at, key_id, body, created_at, updated_at) \
             VALUES ($1, 'callcenter', $2, $3, $4, 'pending', $5, $5, $6, $7, $8, $8) \
             ON CONFLICT (idem_key) DO UPDATE SET status = 'pending', reason = NULL, due_at = excluded.due_at, \
             next_attempt_at = excluded.due_at, attempts = 0, locked_until = 0, key_id = excluded.key_id, \
             body = excluded.body, updated_at = excluded.updated_at \
             WHERE ticket_outbox.status = 'cancelled' AND ticket_outbox.reason = 'discharge_cancelled'",
        )
        .bind(thread)
        .bind(scene)
        .bind(key)
        .bind(patient_key)
        .bind(due)
        .bind(key_id)
        .bind(sealed)
        .bind(now)
        .execute(self.conn().await?)
        .await
        .map_err(db("queue follow-up call"))?
        .rows_affected();
        Ok(n == 1)
    }
}

impl Store {
    /// `(status, due_at)` of an outbox row by its key (for `trace` and tests).
    pub async fn outbox_row_state(&self, key: &str) -> Result<Option<(String, i64)>, StoreError> {
        sqlx::query("SELECT status, due_at FROM ticket_outbox WHERE idem_key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read an outbox row"))?
            .map(|r| Ok((r.try_get("status")?, r.try_get("due_at")?)))
            .transpose()
            .map_err(db("read an outbox row"))
    }

    /// R-FUP-3: whether the patient already has a call on the local day `[start, end)`: a
    /// call-center task sent that day, or one claimed before this one (`id`) still in flight.
    /// Earlier attempts of the same step (`step_key`, `step_key:n`) do not count: a retry
    /// after no answer is the same call (R-TKT-7).
    pub async fn call_taken(
        &self,
        patient_key: &str,
        id: i64,
        step_key: &str,
        day: (i64, i64),
        now: i64,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            "SELECT 1 AS one FROM ticket_outbox WHERE patient_key = $1 AND sink = 'callcenter' AND id <> $2 \
             AND idem_key <> $6 AND idem_key NOT LIKE $7 ESCAPE '\\' \
             AND ((status = 'sent' AND sent_at >= $3 AND sent_at < $4) \
               OR (status = 'pending' AND locked_until > $5 AND id < $2)) LIMIT 1",
        )
        .bind(patient_key)
        .bind(id)
        .bind(day.0)
        .bind(day.1)
        .bind(now)
        .bind(step_key)
        .bind(format!("{}:%", like_literal(step_key)))
        .fetch_optional(&self.pool)
        .await
        .map_err(db("look for today's calls"))?
        .is_some())
    }

    /// Move a claimed follow-up call to `due` (R-FUP-3) without counting it as an attempt.
    pub async fn outbox_postpone(
        &self,
        owner: &str,
        id: i64,
        due: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            "UPDATE ticket_outbox SET due_at = $1, next_attempt_at = $1, attempts = attempts - 1, locked_until = 0, \
             last_error = 'R-FUP-3: one call per patient per day', updated_at = $2 \
             WHERE id = $3 AND lock_owner = $4 AND status = 'pending'",
        )
        .bind(due)
        .bind(now)
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await
        .map_err(db("postpone follow-up call"))?
        .rows_affected()
            == 1)
    }
}

/// `s` as a LIKE pattern that matches only itself (escape character `\`).
fn like_literal(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// The local day `[start, end)` (epoch ms) that `at` falls on.
pub fn local_day(at: i64, zone: &TimeZone) -> (i64, i64) {
    let t = cem_pipeline::time::from_ms(at);
    let date = t.to_zoned(zone.clone()).date();
    let start = date
        .to_zoned(zone.clone())
        .map(|z| z.timestamp().as_millisecond())
        .unwrap_or(at);
    let end = date
        .tomorrow()
        .ok()
        .and_then(|d| d.to_zoned(zone.clone()).ok())
        .map(|z| z.timestamp().as_millisecond())
        .unwrap_or(at + 86_400_000);
    (start, end)
}

/// R-FUP-3: a colliding step moves to the next day at the step time.
pub fn next_day_at(at: i64, settings: &FollowupSettings, zone: &TimeZone) -> i64 {
    let t = cem_pipeline::time::from_ms(at);
    t.to_zoned(zone.clone())
        .date()
        .tomorrow()
        .ok()
        .and_then(|d| {
            d.to_datetime(settings.step_time)
                .to_zoned(zone.clone())
                .ok()
        })
        .map(|z| z.timestamp().as_millisecond())
        .unwrap_or(at + 86_400_000)
}

/// One follow-up step as `trace` shows it (issue 19 §2).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TraceStep {
    /// `vk_…` of the stay.
    pub stay_key: String,
    pub plan: &'static str,
    /// The step's name in R-FUP-1 (`postop_d7`, `review_reminder`, `FU-ONLINE-60`, …).
    pub step: &'static str,
    /// `callcenter` (a call) or `cem` (a questionnaire or reminder).
    pub sink: &'static str,
    /// When it was planned (the first attempt's due time; epoch ms).
    pub due_at: i64,
    /// `planned`, `sent`, `cancelled`, `suppressed`, `expired`, `dead`.
    pub status: String,
    pub reason: Option<String>,
    /// Calls made for the step (a no-answer retry is a second), or pushes tried.
    pub attempts: i64,
    pub sent_at: Option<i64>,
    /// The idempotency key the peer receives: the step key (a retry adds `:n`), or `sv:{jobId}`.
    pub key: String,
}

fn shown_status(status: &str) -> String {
    if status == "pending" {
        "planned".into()
    } else {
        status.to_string()
    }
}

impl Store {
    /// The follow-up steps of these stays (`vk_…`), and of the stays of this patient (`pk_…`),
    /// in due order: calls grouped by step (retries are attempts), CEM steps named by their
    /// place in the plan.
    pub async fn followup_steps(
        &self,
        stays: &[String],
        patient_key: Option<&str>,
    ) -> Result<Vec<TraceStep>, StoreError> {
        use cem_pipeline::followup::{Plan, StepKind};
        let mut stays: BTreeSet<String> = stays.iter().cloned().collect();
        if let Some(pk) = patient_key {
            for r in sqlx::query(
                "SELECT DISTINCT ticket_id FROM ticket_outbox WHERE patient_key = $1 AND ticket_id LIKE 'fu:%'",
            )
            .bind(pk)
            .fetch_all(&self.pool)
            .await
            .map_err(db("trace: read follow-up stays"))?
            {
                let t: String = r.try_get("ticket_id").map_err(db("trace: read follow-up stays"))?;
                if let Thread::Followup { stay_key } = Thread::of(&t) {
                    stays.insert(stay_key.to_string());
                }
            }
        }
        let mut out = Vec::new();
        for vk in stays.iter().filter(|s| s.starts_with("vk_")) {
            let calls = sqlx::query(
                "SELECT idem_key, status, reason, due_at, sent_at FROM ticket_outbox \
                 WHERE ticket_id = $1 AND sink = 'callcenter' ORDER BY id",
            )
            .bind(thread_id(vk))
            .fetch_all(&self.pool)
            .await
            .map_err(db("trace: read follow-up calls"))?;
            let mut plan: Option<Plan> = None;
            let mut steps: Vec<TraceStep> = Vec::new();
            for r in &calls {
                let read = db("trace: read follow-up calls");
                let key: String = r.try_get("idem_key").map_err(read)?;
                let read = db("trace: read follow-up calls");
                let (status, reason, due_at, sent_at): (String, Option<String>, i64, Option<i64>) =
                    (|| {
                        Ok::<_, sqlx::Error>((
                            r.try_get("status")?,
                            r.try_get("reason")?,
                            r.try_get("due_at")?,
                            r.try_get("sent_at")?,
                        ))
                    })()
                    .map_err(read)?;
                let base = followup_step_key(&key).to_string();
                let (plan_code, step) = crate::store::keys::plan_and_step(&base);
                plan = plan.or_else(|| {
                    [Plan::Postop721, Plan::PostopHigh, Plan::CareQuarterly]
                        .into_iter()
                        .find(|p| p.code() == plan_code)
                });
                match steps.iter_mut().find(|s| s.key == base) {
                    Some(s) => {
                        s.attempts += 1;
                        s.status = shown_status(&status);
                        s.reason = reason;
                        s.sent_at = sent_at.or(s.sent_at);
                    }
                    None => steps.push(TraceStep {
                        stay_key: vk.clone(),
                        plan: plan_code,
                        step,
                        sink: "callcenter",
                        due_at,
                        status: shown_status(&status),
                        reason,
                        attempts: 1,
                        sent_at,
                        key: base,
                    }),
                }
            }
            let cem_steps: Vec<&'static str> = plan
                .map(|p| {
                    p.steps()
                        .iter()
                        .filter(|s| !matches!(s.kind, StepKind::Call(_)))
                        .map(|s| s.id)
                        .collect()
                })
                .unwrap_or_default();
            let jobs = sqlx::query(
                "SELECT job_id, template, status, reason, due_at, attempts, sent_at FROM survey_jobs \
                 WHERE visit_key = $1 AND dnd = 0 ORDER BY due_at, job_id",
            )
            .bind(vk.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(db("trace: read follow-up questionnaires"))?;
            for (i, r) in jobs.iter().enumerate() {
                let read = db("trace: read follow-up questionnaires");
                let row = (|| {
                    Ok::<_, sqlx::Error>((
                        r.try_get::<String, _>("job_id")?,
                        r.try_get::<String, _>("status")?,
                        r.try_get::<Option<String>, _>("reason")?,
                        r.try_get::<i64, _>("due_at")?,
                        r.try_get::<i64, _>("attempts")?,
                        r.try_get::<Option<i64>, _>("sent_at")?,
                    ))
                })()
                .map_err(read)?;
                let (job_id, status, reason, due_at, attempts, sent_at) = row;
                steps.push(TraceStep {
                    stay_key: vk.clone(),
                    plan: plan.map_or("unknown", Plan::code),
                    step: cem_steps.get(i).copied().unwrap_or("unknown"),
                    sink: "cem",
                    due_at,
                    status: shown_status(&status),
                    reason,
                    attempts,
                    sent_at,
                    key: cem_pipeline::survey::idempotency_key(&job_id),
                });
            }
            steps.sort_by_key(|s| s.due_at);
            out.extend(steps);
        }
        Ok(out)
    }
}
