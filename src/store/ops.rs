//! Store queries for operations: the survey gauges behind `/metrics`, the ops page's survey
//! counts, the read-only views behind `cem-bridge dlq` and `cem-bridge trace`, and retention's
//! batched deletes.
//!
//! Kept apart from `store.rs` (the ingest and scheduler write paths) so operations work and
//! pipeline work do not collide; same `Store`, same sqlx `Any` code path on both backends.

use std::collections::BTreeSet;

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use crate::store::{Store, StoreError, db, placeholders, read_rows};

/// Pending survey jobs, for the `cem_bridge_survey_pending` and
/// `cem_bridge_survey_oldest_overdue_seconds` gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingSummary {
    /// Jobs with status `pending` (due or not).
    pub pending: i64,
    /// The earliest due time among them (epoch ms), if any.
    pub oldest_due_at: Option<i64>,
}

impl PendingSummary {
    /// How long the most overdue pending job is past its due time at `now`; 0 if none is due.
    pub fn oldest_overdue_ms(&self, now: i64) -> i64 {
        self.oldest_due_at.map_or(0, |d| (now - d).max(0))
    }
}

/// Survey jobs with one status (and reason, for `dead` and `suppressed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobCount {
    pub status: String,
    pub reason: Option<String>,
    pub count: i64,
}

/// Tickets at a glance (the ops page, R-MET-2): by status, and the first level of each SLA
/// clock — met on time, breached (escalated) or still running.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TicketSummary {
    /// `(status, count)`; a ticket whose first version is still held has no status: `HELD`.
    pub by_status: Vec<(String, i64)>,
    /// Per clock: `{met, breached, running}` of its level-1 deadline.
    pub clocks: Vec<ClockSummary>,
    /// Escalations emitted, `(clock, level, count)`.
    pub escalations: Vec<(String, i64, i64)>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ClockSummary {
    pub clock: String,
    pub met: i64,
    pub breached: i64,
    pub running: i64,
}

impl Store {
    /// Dead letters for `dlq replay`, oldest first, with their sealed bodies.
    pub async fn dead_letters_to_replay(
        &self,
        f: &ReplayFilter,
    ) -> Result<Vec<SealedDeadLetter>, StoreError> {
        let mut sql = format!(
            "SELECT {DEAD_LETTER_COLUMNS}, body_key_id, body, headers FROM dead_letters WHERE 1 = 1"
        );
        let mut n = 0;
        let mut param = || {
            n += 1;
            format!("${n}")
        };
        if !f.ids.is_empty() {
            let list: Vec<String> = f.ids.iter().map(|_| param()).collect();
            sql.push_str(&format!(" AND id IN ({})", list.join(", ")));
        }
        if f.connector.is_some() {
            sql.push_str(&format!(" AND connector = {}", param()));
        }
        if f.reason.is_some() {
            sql.push_str(&format!(" AND reason = {}", param()));
        }
        if !f.again {
            sql.push_str(" AND replayed_at IS NULL");
        }
        sql.push_str(&format!(" ORDER BY id LIMIT {}", param()));
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for id in &f.ids {
            q = q.bind(*id);
        }
        if let Some(c) = &f.connector {
            q = q.bind(c.as_str());
        }
        if let Some(r) = &f.reason {
            q = q.bind(r.as_str());
        }
        let rows = q
            .bind(i64::from(f.limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db("read dead letters to replay"))?;
        read_rows(&rows, db("read dead letters to replay"), |r| {
            Ok(SealedDeadLetter {
                record: dead_letter_record(r)?,
                key_id: r.try_get("body_key_id")?,
                sealed: r.try_get("body")?,
                sealed_headers: r.try_get("headers")?,
            })
        })
    }

    /// Record that dead letter `id` was republished to `queue`, with an audit row.
    pub async fn mark_replayed(&self, id: i64, queue: &str, now: i64) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(
            "UPDATE dead_letters SET replayed_at = $1 WHERE id = $2 RETURNING connector, message_id",
        )
        .bind(now)
        .bind(id)
        .fetch_optional(tx.conn().await?)
        .await
        .map_err(db("mark dead letter replayed"))?;
        let (connector, message_id): (Option<String>, Option<String>) = match &row {
            Some(r) => (
                r.try_get("connector").ok(),
                r.try_get("message_id").ok().flatten(),
            ),
            None => (None, None),
        };
        tx.audit(&crate::store::AuditEntry {
            connector: connector.as_deref(),
            message_id: message_id.as_deref(),
            action: "dlq_replayed",
            rule: Some("R-EVT-6"),
            detail: Some(&format!("dead letter {id} republished to {queue}")),
            ..Default::default()
        })
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Tickets by status and SLA clock (R-TKT-2, R-TKT-4), for the ops page.
    pub async fn ticket_summary(&self) -> Result<TicketSummary, StoreError> {
        let e = || db("summarise tickets");
        let by_status = read_rows(
            &sqlx::query(
                "SELECT COALESCE(status, 'HELD') AS status, COUNT(*) AS n FROM tickets \
             GROUP BY COALESCE(status, 'HELD') ORDER BY 1",
            )
            .fetch_all(&self.pool)
            .await
            .map_err(e())?,
            e(),
            |r| Ok((r.try_get("status")?, r.try_get("n")?)),
        )?;
        let mut clocks: Vec<ClockSummary> = Vec::new();
        for r in sqlx::query(
            "SELECT clock, state, COUNT(*) AS n FROM ticket_escalations WHERE level = 1 \
             GROUP BY clock, state ORDER BY clock",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(e())?
        {
            let clock: String = r.try_get("clock").map_err(e())?;
            let state: String = r.try_get("state").map_err(e())?;
            let n: i64 = r.try_get("n").map_err(e())?;
            if clocks.last().is_none_or(|c| c.clock != clock) {
                clocks.push(ClockSummary {
                    clock,
                    ..Default::default()
                });
            }
            if let Some(c) = clocks.last_mut() {
                match state.as_str() {
                    "met" => c.met += n,
                    "emitted" => c.breached += n,
                    "pending" => c.running += n,
                    _ => {} // void: the ticket closed another way (INVALID)
                }
            }
        }
        let escalations = read_rows(
&sqlx::query(
            "SELECT clock, level, COUNT(*) AS n FROM ticket_escalations WHERE state = 'emitted' \
             GROUP BY clock, level ORDER BY clock, level",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(e())?,
e(),
|r| Ok((r.try_get("clock")?, r.try_get("level")?, r.try_get("n")?)),
)?;
        Ok(TicketSummary {
            by_status,
            clocks,
            escalations,
        })
    }

    /// Survey jobs by status and reason.
    pub async fn job_counts(&self) -> Result<Vec<JobCount>, StoreError> {
        let rows = sqlx::query(
            "SELECT status, reason, COUNT(*) AS n FROM survey_jobs GROUP BY status, reason \
             ORDER BY status, reason",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("count jobs by status"))?;
        read_rows(&rows, db("count jobs by status"), |r| {
            Ok(JobCount {
                status: r.try_get("status")?,
                reason: r.try_get("reason")?,
                count: r.try_get("n")?,
            })
        })
    }

    /// Count pending jobs and find the earliest due time among them.
    pub async fn pending_summary(&self) -> Result<PendingSummary, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, MIN(due_at) AS oldest FROM survey_jobs WHERE status = 'pending'",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db("summarise pending jobs"))?;
        Ok(PendingSummary {
            pending: row.try_get("n").map_err(db("summarise pending jobs"))?,
            oldest_due_at: row
                .try_get::<Option<i64>, _>("oldest")
                .map_err(db("summarise pending jobs"))?,
        })
    }
}

/// What became of the work that was overdue when the bridge started (issue 19 §1): survey jobs
/// and follow-up calls due before `overdue_before`, counted by their status and reason now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OverdueReport {
    /// (kind `survey` / `call`, status, reason, count).
    pub outcomes: Vec<(String, String, Option<String>, i64)>,
}

impl OverdueReport {
    /// Overdue work found at the start.
    pub fn found(&self) -> i64 {
        self.outcomes.iter().map(|o| o.3).sum()
    }

    /// Of it, still pending.
    pub fn pending(&self) -> i64 {
        self.outcomes
            .iter()
            .filter(|o| o.1 == "pending")
            .map(|o| o.3)
            .sum()
    }

    /// `12 survey(s) sent, 25 survey(s) suppressed(stale_event), 1 call(s) expired(max_call_delay)`.
    pub fn line(&self) -> String {
        self.outcomes
            .iter()
            .map(|(kind, status, reason, n)| match reason {
                Some(r) => format!("{n} {kind}(s) {status}({r})"),
                None => format!("{n} {kind}(s) {status}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Store {
    /// The work due before `overdue_before` that was pending at `started` (the process start)
    /// or is still pending, by kind, status and reason. Work finished before `started` is not
    /// counted; work created since is due after `started` (R-SRV-4: a past due time moves to now).
    pub async fn overdue_report(
        &self,
        overdue_before: i64,
        started: i64,
    ) -> Result<OverdueReport, StoreError> {
        let sql = "SELECT 'survey' AS kind, status, reason, COUNT(*) AS n FROM survey_jobs \
             WHERE due_at < $1 AND (status = 'pending' OR updated_at >= $2) GROUP BY status, reason \
             UNION ALL \
             SELECT 'call' AS kind, status, reason, COUNT(*) AS n FROM ticket_outbox \
             WHERE ticket_id LIKE 'fu:%' AND sink = 'callcenter' AND due_at < $1 \
             AND (status = 'pending' OR updated_at >= $2) GROUP BY status, reason";
        let rows = sqlx::query(sql)
            .bind(overdue_before)
            .bind(started)
            .fetch_all(&self.pool)
            .await
            .map_err(db("summarise overdue work"))?;
        let mut outcomes = read_rows(&rows, db("summarise overdue work"), |r| {
            Ok((
                r.try_get::<String, _>("kind")?,
                r.try_get::<String, _>("status")?,
                r.try_get::<Option<String>, _>("reason")?,
                r.try_get::<i64, _>("n")?,
            ))
        })?;
        outcomes.sort();
        Ok(OverdueReport { outcomes })
    }
}

/// A dead letter as recorded (metadata only: the body stays in the broker's dead-letter queue).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetterRecord {
    pub id: i64,
    /// Epoch milliseconds.
    pub at: i64,
    pub connector: String,
    pub message_id: Option<String>,
    pub reason: String,
    pub detail: String,
    pub content_hash: String,
    pub size_bytes: i64,
    pub delivery_count: i64,
    /// When `dlq replay` republished it (epoch ms).
    pub replayed_at: Option<i64>,
}

/// Which dead letters `dlq replay` takes.
#[derive(Debug, Clone, Default)]
pub struct ReplayFilter {
    /// These ids only; empty = all that match the rest.
    pub ids: Vec<i64>,
    pub connector: Option<String>,
    pub reason: Option<String>,
    /// Also the ones replayed before.
    pub again: bool,
    pub limit: u32,
}

/// A dead letter with its sealed body (opened with the vault key by the caller).
#[derive(Debug, Clone)]
pub struct SealedDeadLetter {
    pub record: DeadLetterRecord,
    pub key_id: Option<String>,
    pub sealed: Option<Vec<u8>>,
    /// The message's headers (JSON object), sealed with `key_id` (migration 6; older dead
    /// letters have none).
    pub sealed_headers: Option<Vec<u8>>,
}

/// A survey job as `trace` shows it (no payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceJob {
    pub job_id: String,
    pub template: String,
    pub patient_key: String,
    /// `vk_…` of the visit (the stay, for a follow-up step).
    pub visit_key: String,
    pub status: String,
    pub reason: Option<String>,
    pub attempts: i64,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub due_at: i64,
    pub next_attempt_at: i64,
    pub sent_at: Option<i64>,
    pub created_at: i64,
    pub connector: String,
    pub message_id: String,
}

/// An audit row as `trace` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceAudit {
    pub id: i64,
    pub at: i64,
    pub connector: Option<String>,
    pub message_id: Option<String>,
    pub job_id: Option<String>,
    pub patient_key: Option<String>,
    pub action: String,
    pub rule: Option<String>,
    pub reason: Option<String>,
    pub detail: Option<String>,
}

/// Everything the store holds about one message id, job id or patient pseudonym.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Trace {
    pub jobs: Vec<TraceJob>,
    pub audit: Vec<TraceAudit>,
    pub dead_letters: Vec<DeadLetterRecord>,
    /// The follow-up plans of the stays found, step by step (issue 19 §2).
    pub followups: Vec<crate::store::followups::TraceStep>,
}

impl Trace {
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
            && self.audit.is_empty()
            && self.dead_letters.is_empty()
            && self.followups.is_empty()
    }
}

/// At most this many jobs are followed from one trace (a patient with years of visits).
const TRACE_MAX_JOBS: usize = 500;

const DEAD_LETTER_COLUMNS: &str = "id, at, connector, message_id, reason, detail, content_hash, \
     size_bytes, delivery_count, replayed_at";
const TRACE_JOB_COLUMNS: &str = "job_id, template, patient_key, visit_key, status, reason, attempts, \
     last_status, last_error, due_at, next_attempt_at, sent_at, created_at, connector, message_id";
const TRACE_AUDIT_COLUMNS: &str =
    "id, at, connector, message_id, job_id, patient_key, action, rule, reason, detail";

/// The audit rows about `$1` — a message id, a survey job id or a patient pseudonym — oldest
/// first; `columns` must include `id`. Not one `OR`: the job and patient indexes leave out the
/// `scheduled` rows (one per registration, migration 10), so those are found through the
/// creating message (`created_by`) of the jobs `$1` names — the job itself, the patient's
/// jobs, and for a merged patient the survivor's (its pending jobs moved there, R-CAN-6) — and
/// then checked against `$1` themselves. Each branch is one indexed lookup.
pub(crate) fn audit_about_sql(columns: &str) -> String {
    format!(
        "SELECT {columns} FROM audit WHERE message_id = $1 \
         UNION SELECT {columns} FROM audit WHERE job_id = $1 AND action <> 'scheduled' \
         UNION SELECT {columns} FROM audit WHERE patient_key = $1 AND action <> 'scheduled' \
         UNION SELECT {columns} FROM audit WHERE action = 'scheduled' \
         AND (job_id = $1 OR patient_key = $1) AND message_id IN \
         (SELECT created_by FROM survey_jobs WHERE job_id = $1 OR patient_key = $1 \
         OR patient_key IN (SELECT survivor_key FROM patient_aliases WHERE alias_key = $1)) \
         ORDER BY id"
    )
}

fn dead_letter_record(r: &AnyRow) -> Result<DeadLetterRecord, sqlx::Error> {
    Ok(DeadLetterRecord {
        id: r.try_get("id")?,
        at: r.try_get("at")?,
        connector: r.try_get("connector")?,
        message_id: r.try_get("message_id")?,
        reason: r.try_get("reason")?,
        detail: r.try_get("detail")?,
        content_hash: r.try_get("content_hash")?,
        size_bytes: r.try_get("size_bytes")?,
        delivery_count: r.try_get("delivery_count")?,
        replayed_at: r.try_get("replayed_at")?,
    })
}

fn trace_job(r: &AnyRow) -> Result<TraceJob, sqlx::Error> {
    Ok(TraceJob {
        job_id: r.try_get("job_id")?,
        template: r.try_get("template")?,
        patient_key: r.try_get("patient_key")?,
        visit_key: r.try_get("visit_key")?,
        status: r.try_get("status")?,
        reason: r.try_get("reason")?,
        attempts: r.try_get("attempts")?,
        last_status: r.try_get("last_status")?,
        last_error: r.try_get("last_error")?,
        due_at: r.try_get("due_at")?,
        next_attempt_at: r.try_get("next_attempt_at")?,
        sent_at: r.try_get("sent_at")?,
        created_at: r.try_get("created_at")?,
        connector: r.try_get("connector")?,
        message_id: r.try_get("message_id")?,
    })
}

fn trace_audit(r: &AnyRow) -> Result<TraceAudit, sqlx::Error> {
    Ok(TraceAudit {
        id: r.try_get("id")?,
        at: r.try_get("at")?,
        connector: r.try_get("connector")?,
        message_id: r.try_get("message_id")?,
        job_id: r.try_get("job_id")?,
        patient_key: r.try_get("patient_key")?,
        action: r.try_get("action")?,
        rule: r.try_get("rule")?,
        reason: r.try_get("reason")?,
        detail: r.try_get("detail")?,
    })
}

impl Store {
    /// The newest `limit` dead letters, newest first.
    pub async fn recent_dead_letters(
        &self,
        limit: u32,
    ) -> Result<Vec<DeadLetterRecord>, StoreError> {
        let sql =
            format!("SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters ORDER BY id DESC LIMIT $1");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db("list dead letters"))?;
        read_rows(&rows, db("read dead letters"), dead_letter_record)
    }

    /// Dead letters recorded in total.
    pub async fn dead_letter_count(&self) -> Result<i64, StoreError> {
        sqlx::query("SELECT COUNT(*) AS n FROM dead_letters")
            .fetch_one(&self.pool)
            .await
            .and_then(|r| r.try_get::<i64, _>("n"))
            .map_err(db("count dead letters"))
    }

    /// One dead letter by its id.
    pub async fn dead_letter_by_id(&self, id: i64) -> Result<Option<DeadLetterRecord>, StoreError> {
        let sql = format!("SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = $1");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read dead letter"))?;
        row.as_ref()
            .map(dead_letter_record)
            .transpose()
            .map_err(db("read dead letter"))
    }

    /// Everything about `id`, which may be a message id (MSH-10), a survey job id, a visit or
    /// stay pseudonym (`vk_…`) or a patient pseudonym (`pk_…`): its audit rows, the jobs it led
    /// to (and their later audit rows: pushes, retries, death), its dead letters, and the
    /// follow-up plans of the stays found, step by step.
    pub async fn trace(&self, id: &str) -> Result<Trace, StoreError> {
        let sql = audit_about_sql(TRACE_AUDIT_COLUMNS);
        let direct: Vec<TraceAudit> = read_rows(
            &sqlx::query(AssertSqlSafe(sql))
                .bind(id)
                .fetch_all(&self.pool)
                .await
                .map_err(db("trace: read audit"))?,
            db("trace: read audit"),
            trace_audit,
        )?;

        // Jobs named by the id itself, or by the audit rows found (a re-sent message with a
        // new message id is recorded as a no-op on the job the first one created).
        let mut job_ids: BTreeSet<String> =
            direct.iter().filter_map(|a| a.job_id.clone()).collect();
        job_ids.insert(id.to_string());
        let job_ids: Vec<String> = job_ids.into_iter().take(TRACE_MAX_JOBS).collect();
        let sql = format!(
            "SELECT {TRACE_JOB_COLUMNS} FROM survey_jobs \
             WHERE message_id = $1 OR patient_key = $1 OR visit_key = $1 OR job_id IN ({}) \
             ORDER BY created_at, job_id LIMIT {TRACE_MAX_JOBS}",
            placeholders(2, job_ids.len())
        );
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(id);
        for j in &job_ids {
            q = q.bind(j.as_str());
        }
        let jobs: Vec<TraceJob> = q
            .fetch_all(&self.pool)
            .await
            .map_err(db("trace: read jobs"))?
            .iter()
            .map(trace_job)
            .collect::<Result<_, _>>()
            .map_err(db("trace: read jobs"))?;

        let mut audit = direct;
        if !jobs.is_empty() {
            // A job's `scheduled` row is not in the job index: found by its creating message.
            let ids = placeholders(1, jobs.len());
            let sql = format!(
                "SELECT {TRACE_AUDIT_COLUMNS} FROM audit WHERE job_id IN ({ids}) AND action <> 'scheduled' \
                 UNION SELECT {TRACE_AUDIT_COLUMNS} FROM audit WHERE action = 'scheduled' AND job_id IN ({ids}) \
                 AND message_id IN (SELECT created_by FROM survey_jobs WHERE job_id IN ({ids})) ORDER BY id"
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for j in &jobs {
                q = q.bind(j.job_id.as_str());
            }
            let seen: BTreeSet<i64> = audit.iter().map(|a| a.id).collect();
            for r in q
                .fetch_all(&self.pool)
                .await
                .map_err(db("trace: read job audit"))?
                .iter()
            {
                let a = trace_audit(r).map_err(db("trace: read job audit"))?;
                if !seen.contains(&a.id) {
                    audit.push(a);
                }
            }
        }
        audit.sort_by_key(|a| (a.at, a.id));

        let sql = format!(
            "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE message_id = $1 ORDER BY id"
        );
        let dead_letters = read_rows(
            &sqlx::query(AssertSqlSafe(sql))
                .bind(id)
                .fetch_all(&self.pool)
                .await
                .map_err(db("trace: read dead letters"))?,
            db("trace: read dead letters"),
            dead_letter_record,
        )?;
        // The follow-up plans of the stays these jobs are of, of a stay key given, or of a
        // patient pseudonym given.
        let mut stays: Vec<String> = jobs.iter().map(|j| j.visit_key.clone()).collect();
        stays.push(id.to_string());
        let followups = self
            .followup_steps(&stays, id.starts_with("pk_").then_some(id))
            .await?;
        Ok(Trace {
            jobs,
            audit,
            dead_letters,
            followups,
        })
    }
}

/// A table retention prunes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrunedTable {
    /// Dedupe records, by `received_at`.
    Inbox,
    /// Finished survey jobs (`sent`, `dead`, `cancelled`, `suppressed`), by `updated_at`; never
    /// `pending`.
    Jobs,
    /// Audit rows, by `at`.
    Audit,
    /// Dead-letter records, by `at`.
    DeadLetters,
    /// Re-identification vault records, by `last_event_at` (R-ANO-6).
    Vault,
    /// Finished ticket and follow-up requests (`sent`, `cancelled`, `dead`), by `updated_at`;
    /// never `pending` (R-TKT-8's order only looks at pending rows).
    TicketRequests,
    /// Ticket webhook signatures and call-result event ids seen (replay / dedupe, R-TKT-11), a
    /// day after they arrived; not configurable (a replay older than `max_skew_s` is stale
    /// anyway).
    WebhookSeen,
    /// Cancel-before-registration tombstones (R-CAN-2) past their `until`; not configurable.
    Tombstones,
    /// Do-not-disturb touches (R-DND-2), by `last_sent`.
    Touches,
    /// Patient records that are not deceased, by `demographics_at` (R-CAN-5).
    Patients,
}

impl PrunedTable {
    pub const ALL: [PrunedTable; 10] = [
        Self::Inbox,
        Self::Jobs,
        Self::Audit,
        Self::DeadLetters,
        Self::Vault,
        Self::TicketRequests,
        Self::WebhookSeen,
        Self::Tombstones,
        Self::Touches,
        Self::Patients,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Inbox => "inbox",
            Self::Jobs => "survey_jobs",
            Self::Audit => "audit",
            Self::DeadLetters => "dead_letters",
            Self::Vault => "vault",
            Self::TicketRequests => "ticket_outbox",
            Self::WebhookSeen => "webhook_seen",
            Self::Tombstones => "tombstones",
            Self::Touches => "touches",
            Self::Patients => "patients",
        }
    }

    /// One batch: rows older than `$1`, at most `$2` of them.
    fn delete_sql(self) -> &'static str {
        match self {
            Self::Inbox => {
                "DELETE FROM inbox WHERE (connector, message_key) IN \
                 (SELECT connector, message_key FROM inbox WHERE received_at < $1 LIMIT $2)"
            }
            Self::Jobs => {
                "DELETE FROM survey_jobs WHERE job_id IN \
                 (SELECT job_id FROM survey_jobs WHERE status IN ('sent', 'dead', 'cancelled', 'suppressed') \
                 AND updated_at < $1 LIMIT $2)"
            }
            Self::Audit => {
                "DELETE FROM audit WHERE id IN \
                 (SELECT id FROM audit WHERE at < $1 ORDER BY id LIMIT $2)"
            }
            Self::DeadLetters => {
                "DELETE FROM dead_letters WHERE id IN \
                 (SELECT id FROM dead_letters WHERE at < $1 ORDER BY id LIMIT $2)"
            }
            Self::Vault => {
                "DELETE FROM vault WHERE pseudonym IN \
                 (SELECT pseudonym FROM vault WHERE last_event_at < $1 LIMIT $2)"
            }
            Self::TicketRequests => {
                "DELETE FROM ticket_outbox WHERE id IN \
                 (SELECT id FROM ticket_outbox WHERE status IN ('sent', 'cancelled', 'dead', 'expired') \
                 AND updated_at < $1 ORDER BY id LIMIT $2)"
            }
            Self::WebhookSeen => {
                "DELETE FROM webhook_seen WHERE signature IN \
                 (SELECT signature FROM webhook_seen WHERE seen_at < $1 LIMIT $2)"
            }
            Self::Tombstones => {
                "DELETE FROM tombstones WHERE visit_key IN \
                 (SELECT visit_key FROM tombstones WHERE until < $1 LIMIT $2)"
            }
            Self::Touches => {
                "DELETE FROM touches WHERE dnd_key IN \
                 (SELECT dnd_key FROM touches WHERE last_sent < $1 LIMIT $2)"
            }
            Self::Patients => {
                "DELETE FROM patients WHERE patient_key IN \
                 (SELECT patient_key FROM patients WHERE deceased = 0 AND demographics_at < $1 LIMIT $2)"
            }
        }
    }
}

impl PrunedTable {
    /// For a table with a size cap: how to count its prunable rows, and how to delete the
    /// oldest `$1` of them.
    fn cap_sql(self) -> Option<(&'static str, &'static str)> {
        Some(match self {
            Self::Jobs => (
                "SELECT COUNT(*) AS n FROM survey_jobs WHERE status IN ('sent', 'dead', 'cancelled', 'suppressed')",
                "DELETE FROM survey_jobs WHERE job_id IN \
                 (SELECT job_id FROM survey_jobs WHERE status IN ('sent', 'dead', 'cancelled', 'suppressed') \
                 ORDER BY updated_at, job_id LIMIT $1)",
            ),
            Self::Audit => (
                "SELECT COUNT(*) AS n FROM audit",
                "DELETE FROM audit WHERE id IN (SELECT id FROM audit ORDER BY id LIMIT $1)",
            ),
            Self::DeadLetters => (
                "SELECT COUNT(*) AS n FROM dead_letters",
                "DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters ORDER BY id LIMIT $1)",
            ),
            Self::TicketRequests => (
                "SELECT COUNT(*) AS n FROM ticket_outbox WHERE status IN ('sent', 'cancelled', 'dead', 'expired')",
                "DELETE FROM ticket_outbox WHERE id IN \
                 (SELECT id FROM ticket_outbox WHERE status IN ('sent', 'cancelled', 'dead', 'expired') ORDER BY id LIMIT $1)",
            ),
            _ => return None,
        })
    }
}

impl Store {
    /// Size cap (issue 8 §6): how many prunable rows of `table` are over `max_rows`.
    pub async fn rows_over_cap(
        &self,
        table: PrunedTable,
        max_rows: u64,
    ) -> Result<u64, StoreError> {
        let Some((count, _)) = table.cap_sql() else {
            return Ok(0);
        };
        let n: i64 = sqlx::query(count)
            .fetch_one(&self.pool)
            .await
            .and_then(|r| r.try_get("n"))
            .map_err(db("count rows for the size cap"))?;
        Ok(u64::try_from(n).unwrap_or(0).saturating_sub(max_rows))
    }

    /// Delete the oldest `limit` prunable rows of `table` (size cap); how many went.
    pub async fn prune_oldest(&self, table: PrunedTable, limit: u64) -> Result<u64, StoreError> {
        let Some((_, delete)) = table.cap_sql() else {
            return Ok(0);
        };
        sqlx::query(delete)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(db("prune the oldest rows"))
    }

    /// Delete at most `limit` rows of `table` older than `cutoff` (epoch ms); how many went.
    /// Each call is its own short transaction, so ingest is never blocked for long.
    pub async fn prune_batch(
        &self,
        table: PrunedTable,
        cutoff: i64,
        limit: u32,
    ) -> Result<u64, StoreError> {
        sqlx::query(table.delete_sql())
            .bind(cutoff)
            .bind(i64::from(limit))
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(db("prune old rows"))
    }
}

impl Store {
    /// `bench dispatch`: every job back to pending and the touches cleared, so the same jobs
    /// can be dispatched again.
    pub async fn reset_jobs_for_bench(&self) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        for sql in [
            "UPDATE survey_jobs SET status = 'pending', reason = NULL, locked_until = 0, attempts = 0, sent_at = NULL",
            "DELETE FROM touches",
        ] {
            sqlx::query(sql)
                .execute(tx.conn().await?)
                .await
                .map_err(db("reset jobs for the bench"))?;
        }
        tx.commit().await
    }
}

/// Create database `name` on the PostgreSQL server at `admin` (a bench's scratch database).
pub async fn create_database(admin: &str, name: &str) -> Result<(), StoreError> {
    use sqlx::Executor;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(admin)
        .await
        .map_err(db("connect to the database server"))?;
    let r = pool
        .execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .map_err(db("create a database"));
    pool.close().await;
    r.map(|_| ())
}

/// Drop database `name` on the server at `admin` if it exists (best effort).
pub async fn drop_database(admin: &str, name: &str) {
    use sqlx::Executor;
    if let Ok(pool) = sqlx::AnyPool::connect(admin).await {
        let _ = pool
            .execute(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .await;
        pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_summary_overdue_is_never_negative() {
        let s = PendingSummary {
            pending: 2,
            oldest_due_at: Some(10_000),
        };
        assert_eq!(s.oldest_overdue_ms(15_000), 5_000);
        assert_eq!(s.oldest_overdue_ms(5_000), 0, "not yet due");
        let none = PendingSummary {
            pending: 0,
            oldest_due_at: None,
        };
        assert_eq!(none.oldest_overdue_ms(15_000), 0);
    }

    /// Every branch of the audit lookup by id is an index search: a scan of `audit` (the
    /// planner's choice for one `OR` over the partial indexes) would read the whole table, the
    /// largest one, for each `trace`.
    #[tokio::test]
    async fn sqlite_audit_lookup_by_id_searches_indexes_only() {
        let dir = std::env::temp_dir().join(format!("cem-audit-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join("store.db").display());
        let store = Store::open(&url, &crate::store::StoreOptions::default())
            .await
            .unwrap();
        // An `EXPLAIN` runs on the schema its connection last read: a pooled connection opened
        // before the migrations would show the plan of the old indexes. A real statement first
        // makes it read the schema again.
        let mut conn = store.pool.acquire().await.unwrap();
        sqlx::query(AssertSqlSafe(audit_about_sql(TRACE_AUDIT_COLUMNS)))
            .bind("x")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        let sql = format!(
            "EXPLAIN QUERY PLAN {}",
            audit_about_sql(TRACE_AUDIT_COLUMNS)
        );
        let plan: Vec<String> = sqlx::query(AssertSqlSafe(sql))
            .bind("x")
            .fetch_all(&mut *conn)
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get::<String, _>("detail").unwrap())
            .collect();
        drop(conn);
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
        let audit: Vec<&String> = plan.iter().filter(|d| d.contains(" audit ")).collect();
        assert_eq!(audit.len(), 4, "{plan:?}");
        for d in ["audit_message", "audit_job_later", "audit_patient_later"] {
            assert!(audit.iter().any(|a| a.contains(d)), "{d}: {plan:?}");
        }
        assert!(
            plan.iter().all(|d| !d.starts_with("SCAN audit")),
            "{plan:?}"
        );
    }
}

/// Where every message ended, for an accounting such as `bench chaos`: the message ids the
/// inbox recorded and the dead letters with their reasons (job outcomes are in
/// [`Store::jobs`]).
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    pub inbox: Vec<String>,
    /// (message id, reason), the id `None` when the message had none.
    pub dead_letters: Vec<(Option<String>, String)>,
    /// Redeliveries absorbed by the inbox (audit rows `duplicate`, R-EVT-4).
    pub duplicates: i64,
}

impl Store {
    /// Every inbox message id, every dead letter (id, reason), the duplicates absorbed.
    pub async fn ledger(&self) -> Result<Ledger, StoreError> {
        let inbox = sqlx::query("SELECT message_id FROM inbox")
            .fetch_all(&self.pool)
            .await
            .map_err(db("read the inbox"))?
            .iter()
            .map(|r| r.try_get::<Option<String>, _>("message_id"))
            .collect::<Result<Vec<_>, _>>()
            .map_err(db("read the inbox"))?
            .into_iter()
            .flatten()
            .collect();
        let dead_letters = sqlx::query("SELECT message_id, reason FROM dead_letters")
            .fetch_all(&self.pool)
            .await
            .map_err(db("read dead letters"))?
            .iter()
            .map(|r| Ok((r.try_get("message_id")?, r.try_get("reason")?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(db("read dead letters"))?;
        let duplicates = sqlx::query("SELECT COUNT(*) AS n FROM audit WHERE action = 'duplicate'")
            .fetch_one(&self.pool)
            .await
            .and_then(|r| r.try_get::<i64, _>("n"))
            .map_err(db("count duplicates"))?;
        Ok(Ledger {
            inbox,
            dead_letters,
            duplicates,
        })
    }
}
