//! The store: dedupe records, survey jobs, audit and dead letters, on SQLite (embedded default,
//! WAL) or PostgreSQL, through one sqlx `Any` code path. Times are epoch milliseconds.
//!
//! Ingest writes a whole batch of deliveries in one [`StoreTx`]; the source acks only after
//! [`StoreTx::commit`] returns. The scheduler claims due jobs with a lease (`locked_until`), so a
//! crash mid-send leaves the job to be claimed again and re-sent with the same idempotency key.

pub mod contact;
pub mod dead_letters;
pub mod followups;
pub mod keys;
pub mod ops;
pub mod opt_outs;
pub mod patients;
pub mod retention;
pub mod tickets;
pub mod vault;
pub mod views;

use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, AssertSqlSafe, Row, Transaction};

/// A store failure: what was being done, and the database's message (never row values).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {op} failed: {source}")]
    Db {
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "store: cannot open {url}: {source}. Check the [store] url, that the directory is writable or the server reachable"
    )]
    Open {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "store: the database schema is version {found}, newer than this binary's {supported}. Run the cem-bridge release that migrated it, or restore a backup"
    )]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("store: unsupported url {0:?}; use sqlite://FILE or postgres://…")]
    UnsupportedUrl(String),
    #[error("store: cannot create directory {dir}: {source}")]
    CreateDir {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("store: cannot seal a vault record or dead-letter body with the vault key")]
    Sealing,
}

impl StoreError {
    /// What was being done, for messages that must not carry database text.
    pub fn op(&self) -> &'static str {
        match self {
            Self::Db { op, .. } => op,
            Self::Open { .. } | Self::UnsupportedUrl(_) | Self::CreateDir { .. } => "open",
            Self::SchemaTooNew { .. } => "migrate",
            Self::Sealing => "seal",
        }
    }
}

pub(crate) fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Db { op, source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

const SQLITE_MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../../migrations/sqlite/0002_vault.sql")),
    (3, include_str!("../../migrations/sqlite/0003_tickets.sql")),
    (
        4,
        include_str!("../../migrations/sqlite/0004_followups.sql"),
    ),
    (5, include_str!("../../migrations/sqlite/0005_opt_outs.sql")),
    (
        6,
        include_str!("../../migrations/sqlite/0006_dead_letter_headers.sql"),
    ),
    (
        7,
        include_str!("../../migrations/sqlite/0007_ticket_visit.sql"),
    ),
];
const POSTGRES_MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_init.sql")),
    (2, include_str!("../../migrations/postgres/0002_vault.sql")),
    (
        3,
        include_str!("../../migrations/postgres/0003_tickets.sql"),
    ),
    (
        4,
        include_str!("../../migrations/postgres/0004_followups.sql"),
    ),
    (
        5,
        include_str!("../../migrations/postgres/0005_opt_outs.sql"),
    ),
    (
        6,
        include_str!("../../migrations/postgres/0006_dead_letter_headers.sql"),
    ),
    (
        7,
        include_str!("../../migrations/postgres/0007_ticket_visit.sql"),
    ),
];

/// Options for opening a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub max_connections: u32,
    /// SQLite `synchronous` (`full` or `normal`).
    pub sqlite_synchronous: String,
    /// How long to wait for a connection (also at start: an unreachable server fails then).
    pub connect_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 4,
            sqlite_synchronous: "full".into(),
            connect_timeout: Duration::from_secs(15),
        }
    }
}

#[derive(Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    pub(crate) backend: Backend,
}

/// Result of recording a message key (R-EVT-4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxResult {
    New,
    /// Same key, same content: a redelivery.
    Duplicate,
    /// Same key, other content.
    Conflict,
}

/// A survey job to create.
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    pub job_id: &'a str,
    pub template: &'a str,
    pub patient_key: &'a str,
    pub visit_key: &'a str,
    pub id_card_key: Option<&'a str>,
    pub mobile_key: Option<&'a str>,
    pub due_at: i64,
    pub payload: &'a str,
    pub connector: &'a str,
    pub message_id: &'a str,
    /// `false` for a follow-up step (R-FUP-2): no do-not-disturb check, no touch.
    pub dnd: bool,
}

/// Result of creating a job (R-SRV-5: an existing job id is a no-op).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobInsert {
    Created,
    /// The job was cancelled by a discharge cancellation (A13) and a new discharge brought it
    /// back with the new due time (R-CAN-3).
    Reactivated,
    Exists {
        status: String,
    },
}

/// What cancelling a visit did (R-CAN-1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VisitCancel {
    /// Pending jobs now cancelled.
    pub cancelled: Vec<String>,
    /// Jobs of the visit already sent (the cancel is only recorded for them).
    pub sent: Vec<String>,
    /// Pending follow-up calls of the stay now cancelled (R-FUP-4).
    pub followup_calls: u64,
}

/// One audit row (R-GEN-2). No personal data: pseudonyms and message ids only.
#[derive(Debug, Clone, Default)]
pub struct AuditEntry<'a> {
    pub connector: Option<&'a str>,
    pub message_id: Option<&'a str>,
    pub job_id: Option<&'a str>,
    pub patient_key: Option<&'a str>,
    pub action: &'a str,
    pub rule: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub detail: Option<&'a str>,
}

/// A dead-letter record.
#[derive(Debug, Clone)]
pub struct DeadLetterEntry<'a> {
    pub connector: &'a str,
    pub message_id: Option<&'a str>,
    pub reason: &'a str,
    pub detail: &'a str,
    pub content_hash: &'a str,
    pub size_bytes: i64,
    pub delivery_count: i64,
    /// The body sealed with the vault key: (key id, nonce || ciphertext) (R-ANO-8).
    pub sealed_body: Option<(&'a str, &'a [u8])>,
    /// The message's string headers as JSON, sealed with the body's key id under
    /// [`dead_letters::dead_letter_headers_aad`] (`None` when it had none).
    pub sealed_headers: Option<&'a [u8]>,
}

/// A job claimed for sending.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub job_id: String,
    pub template: String,
    pub payload: String,
    pub attempts: i64,
    pub due_at: i64,
    pub message_id: String,
    /// `mk_…` the survey goes to.
    pub mobile_key: Option<String>,
    /// `pk_…` and `ik_…`, for the send-time exclusions (R-SRV-6).
    pub patient_key: String,
    pub id_card_key: Option<String>,
    /// `false` for a follow-up questionnaire or reminder (R-FUP-2: its own opt-out list).
    pub dnd: bool,
}

/// What a push came to, as the store records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// Accepted by the CEM (2xx passing the success rule, or 409).
    Sent { job_id: String, status: u16 },
    /// Try again at `next_at`.
    Retry {
        job_id: String,
        next_at: i64,
        status: Option<u16>,
        error: String,
    },
    /// Given up: `rejected` (permanent 4xx) or `max_attempts`.
    Dead {
        job_id: String,
        status: Option<u16>,
        reason: &'static str,
        error: String,
    },
    /// An exclusion found at send time (R-SRV-6): not pushed, reservation released.
    Suppressed {
        job_id: String,
        reason: &'static str,
        rule: &'static str,
    },
}

/// The result of one claim: jobs to push, and how many claimed jobs do-not-disturb stopped.
#[derive(Debug, Clone, Default)]
pub struct Claimed {
    pub jobs: Vec<ClaimedJob>,
    /// Suppressed `dnd` in the claim (R-DND-1).
    pub suppressed: usize,
    /// Suppressed `opted_out` in the claim: the CEM reported an unsubscribe of the patient or
    /// the mobile after the job was scheduled (R-EXC-3, table `opt_outs`).
    pub opted_out: usize,
}

/// A job as stored (for tests, `trace` and the ops page).
#[derive(Debug, Clone)]
pub struct JobRow {
    pub job_id: String,
    pub template: String,
    pub patient_key: String,
    pub status: String,
    pub reason: Option<String>,
    pub due_at: i64,
    pub attempts: i64,
    pub payload: String,
    pub sent_at: Option<i64>,
    pub last_status: Option<i64>,
    pub message_id: String,
    /// `mk_…` the survey goes to (R-DND-1, R-CAN-5).
    pub mobile_key: Option<String>,
}

/// A stored dead letter.
#[derive(Debug, Clone)]
pub struct DeadLetterRow {
    pub id: i64,
    pub at: i64,
    pub connector: String,
    pub message_id: Option<String>,
    pub reason: String,
    pub detail: String,
    pub delivery_count: i64,
}

/// A stored audit row.
#[derive(Debug, Clone)]
pub struct AuditRow {
    pub at: i64,
    pub message_id: Option<String>,
    pub job_id: Option<String>,
    pub action: String,
    pub rule: Option<String>,
    pub reason: Option<String>,
    pub detail: Option<String>,
}

fn sqlite_url(url: &str) -> Result<String, StoreError> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| StoreError::UnsupportedUrl(url.to_string()))?;
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let parent = Path::new(path)
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && path != ":memory:");
    if let Some(dir) = parent {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            dir: dir.display().to_string(),
            source,
        })?;
    }
    Ok(match query {
        Some(q) if q.contains("mode=") => format!("sqlite://{path}?{q}"),
        Some(q) => format!("sqlite://{path}?{q}&mode=rwc"),
        None => format!("sqlite://{path}?mode=rwc"),
    })
}

impl Store {
    /// Open (creating a SQLite file if needed) and migrate.
    pub async fn open(url: &str, opts: &StoreOptions) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if url.starts_with("sqlite:") {
            (Backend::Sqlite, sqlite_url(url)?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_string())
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        };
        let sync = match opts.sqlite_synchronous.to_ascii_lowercase().as_str() {
            "normal" => "NORMAL",
            _ => "FULL",
        };
        let pool = AnyPoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .acquire_timeout(opts.connect_timeout)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        sqlx::raw_sql(AssertSqlSafe(format!(
                            "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA busy_timeout=30000; PRAGMA foreign_keys=ON;"
                        )))
                        .execute(&mut *conn)
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|source| StoreError::Open {
                url: redact(&url),
                source,
            })?;
        let store = Self { pool, backend };
        store.migrate().await?;
        Ok(store)
    }

    /// A trivial query: is the database answering?
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(db("ping"))
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let migrations = match self.backend {
            Backend::Sqlite => SQLITE_MIGRATIONS,
            Backend::Postgres => POSTGRES_MIGRATIONS,
        };
        let supported = migrations.last().map(|m| m.0).unwrap_or(0);
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .execute(&self.pool)
        .await
        .map_err(db("create schema_migrations"))?;
        let found: Option<i64> = sqlx::query("SELECT MAX(version) AS v FROM schema_migrations")
            .fetch_one(&self.pool)
            .await
            .map_err(db("read schema version"))?
            .try_get::<Option<i64>, _>("v")
            .map_err(db("read schema version"))?;
        let found = found.unwrap_or(0);
        if found > supported {
            return Err(StoreError::SchemaTooNew { found, supported });
        }
        for (version, sql) in migrations.iter().filter(|m| m.0 > found) {
            let mut tx = self.pool.begin().await.map_err(db("begin migration"))?;
            sqlx::raw_sql(AssertSqlSafe(*sql))
                .execute(&mut *tx)
                .await
                .map_err(db("apply migration"))?;
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(*version)
                .bind(now_ms())
                .execute(&mut *tx)
                .await
                .map_err(db("record migration"))?;
            tx.commit().await.map_err(db("commit migration"))?;
        }
        Ok(())
    }

    /// The SQLite journal mode (for tests and `check`); `None` on PostgreSQL.
    pub async fn sqlite_journal_mode(&self) -> Result<Option<String>, StoreError> {
        if self.backend != Backend::Sqlite {
            return Ok(None);
        }
        let row = sqlx::query("PRAGMA journal_mode")
            .fetch_one(&self.pool)
            .await
            .map_err(db("read journal mode"))?;
        Ok(Some(
            row.try_get::<String, _>(0)
                .map_err(db("read journal mode"))?,
        ))
    }

    pub async fn begin(&self) -> Result<StoreTx, StoreError> {
        Ok(StoreTx {
            counts: Vec::new(),
            tx: self.pool.begin().await.map_err(db("begin"))?,
        })
    }

    /// Claim up to `limit` due pending jobs for `owner` until `lease_until`. With a DND window,
    /// each job's keys are checked and reserved in the same transaction (R-DND-3); a job whose
    /// patient, ID card or mobile had a touch inside the window is `suppressed(dnd)` instead.
    pub async fn claim_due(
        &self,
        owner: &str,
        now: i64,
        lease_until: i64,
        limit: u32,
        dnd_window_ms: Option<i64>,
    ) -> Result<Claimed, StoreError> {
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE survey_jobs SET locked_until = $1, lock_owner = $2, attempts = attempts + 1, updated_at = $3 \
             WHERE job_id IN (SELECT job_id FROM survey_jobs WHERE status = 'pending' AND next_attempt_at <= $3 \
             AND locked_until <= $3 ORDER BY next_attempt_at, job_id LIMIT $4{lock}) \
             RETURNING job_id, template, payload, attempts, due_at, message_id, patient_key, id_card_key, mobile_key, dnd"
        );
        let mut tx = self.pool.begin().await.map_err(db("begin claim"))?;
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(lease_until)
            .bind(owner)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await
            .map_err(db("claim due jobs"))?;
        let mut claimed = Claimed {
            jobs: Vec::with_capacity(rows.len()),
            suppressed: 0,
            opted_out: 0,
        };
        let opted = opted_out_among(&mut tx, &rows).await?;
        // R-DND-3 for the whole batch: lock its keys (PostgreSQL), read their touches once,
        // decide job by job in claim order, write every reservation in one statement.
        let mut touches = match dnd_window_ms {
            Some(_) => self.lock_and_read_touches(&mut tx, &rows).await?,
            None => TouchState::default(),
        };
        for r in &rows {
            let job = ClaimedJob {
                job_id: r.try_get("job_id").map_err(db("read claimed jobs"))?,
                template: r.try_get("template").map_err(db("read claimed jobs"))?,
                payload: r.try_get("payload").map_err(db("read claimed jobs"))?,
                attempts: r.try_get("attempts").map_err(db("read claimed jobs"))?,
                due_at: r.try_get("due_at").map_err(db("read claimed jobs"))?,
                message_id: r.try_get("message_id").map_err(db("read claimed jobs"))?,
                mobile_key: r.try_get("mobile_key").map_err(db("read claimed jobs"))?,
                patient_key: r.try_get("patient_key").map_err(db("read claimed jobs"))?,
                id_card_key: r.try_get("id_card_key").map_err(db("read claimed jobs"))?,
                dnd: under_dnd(r),
            };
            // R-EXC-3 at send time: an unsubscribe the CEM reported since scheduling.
            if job.dnd
                && [Some(&job.patient_key), job.mobile_key.as_ref()]
                    .into_iter()
                    .flatten()
                    .any(|k| opted.contains(k))
            {
                claimed.opted_out += 1;
                suppress_in(
                    &mut tx,
                    &job,
                    now,
                    "opted_out",
                    "R-EXC-3",
                    "the patient or the mobile unsubscribed at the CEM (opt_outs) after scheduling",
                )
                .await?;
                continue;
            }
            // R-FUP-2: follow-up steps are not touches and ignore do-not-disturb.
            let Some(window) = dnd_window_ms.filter(|_| under_dnd(r)) else {
                claimed.jobs.push(job);
                continue;
            };
            let mut keys = dnd_keys(r);
            keys.sort();
            keys.dedup();
            match touches.reserve(&job.job_id, &keys, now, now - window) {
                None => claimed.jobs.push(job),
                Some(blocking) => {
                    claimed.suppressed += 1;
                    let kind = blocking.get(..2).unwrap_or("key");
                    suppress_in(
                        &mut tx,
                        &job,
                        now,
                        "dnd",
                        "R-DND-1",
                        &format!(
                            "a survey reached this {kind} pseudonym within the do-not-disturb window"
                        ),
                    )
                    .await?;
                }
            }
        }
        touches.write(&mut tx).await?;
        tx.commit().await.map_err(db("commit claim"))?;
        Ok(claimed)
    }

    /// Record the outcomes of many pushes in one transaction (one fsync, one write lock).
    /// Each applies only while `owner` still holds the job's lease; the result says which did.
    pub async fn record_outcomes(
        &self,
        owner: &str,
        now: i64,
        outcomes: &[JobOutcome],
    ) -> Result<Vec<bool>, StoreError> {
        let mut tx = self.begin().await?;
        let mut applied = Vec::with_capacity(outcomes.len());
        for o in outcomes {
            let n = match o {
                JobOutcome::Sent { job_id, status } => sqlx::query(
                    "UPDATE survey_jobs SET status = 'sent', sent_at = $1, updated_at = $1, last_status = $2, \
                     locked_until = 0, last_error = NULL WHERE job_id = $3 AND lock_owner = $4 AND status = 'pending'",
                )
                .bind(now)
                .bind(i64::from(*status))
                .bind(job_id.as_str())
                .bind(owner),
                JobOutcome::Retry { job_id, next_at, status, error } => sqlx::query(
                    "UPDATE survey_jobs SET next_attempt_at = $1, locked_until = 0, updated_at = $2, \
                     last_status = $3, last_error = $4 WHERE job_id = $5 AND lock_owner = $6 AND status = 'pending'",
                )
                .bind(*next_at)
                .bind(now)
                .bind(status.map(i64::from))
                .bind(error.as_str())
                .bind(job_id.as_str())
                .bind(owner),
                JobOutcome::Dead { job_id, status, reason, error } => sqlx::query(
                    "UPDATE survey_jobs SET status = 'dead', reason = $1, locked_until = 0, updated_at = $2, \
                     last_status = $3, last_error = $4 WHERE job_id = $5 AND lock_owner = $6 AND status = 'pending'",
                )
                .bind(*reason)
                .bind(now)
                .bind(status.map(i64::from))
                .bind(error.as_str())
                .bind(job_id.as_str())
                .bind(owner),
                JobOutcome::Suppressed { job_id, reason, .. } => sqlx::query(
                    "UPDATE survey_jobs SET status = 'suppressed', reason = $1, locked_until = 0, updated_at = $2 \
                     WHERE job_id = $3 AND lock_owner = $4 AND status = 'pending'",
                )
                .bind(*reason)
                .bind(now)
                .bind(job_id.as_str())
                .bind(owner),
            }
            .execute(&mut *tx.tx)
            .await
            .map_err(db("record push outcome"))?
            .rows_affected();
            if n == 1 {
                let (job_id, action, rule, reason, detail) = match o {
                    JobOutcome::Sent { job_id, status } => (
                        job_id,
                        "sent",
                        Some("R-SRV-5"),
                        None,
                        format!("HTTP {status}"),
                    ),
                    JobOutcome::Retry { job_id, error, .. } => {
                        (job_id, "retry", None, None, error.clone())
                    }
                    JobOutcome::Dead {
                        job_id,
                        reason,
                        error,
                        ..
                    } => (
                        job_id,
                        "dead",
                        Some("R-SRV-6"),
                        Some(*reason),
                        error.clone(),
                    ),
                    JobOutcome::Suppressed {
                        job_id,
                        reason,
                        rule,
                    } => (
                        job_id,
                        "suppressed",
                        Some(*rule),
                        Some(*reason),
                        "found at send time (R-SRV-6)".to_string(),
                    ),
                };
                tx.audit(&AuditEntry {
                    job_id: Some(job_id),
                    action,
                    rule,
                    reason,
                    detail: Some(&detail),
                    ..Default::default()
                })
                .await?;
            }
            if n == 1 {
                touch_follow_up(&mut tx, o, now).await?;
            }
            applied.push(n == 1);
        }
        tx.commit().await?;
        Ok(applied)
    }

    /// The CEM accepted the job: mark it sent (only if this owner still holds it).
    pub async fn mark_sent(
        &self,
        job_id: &str,
        owner: &str,
        now: i64,
        status: u16,
    ) -> Result<bool, StoreError> {
        let o = JobOutcome::Sent {
            job_id: job_id.to_string(),
            status,
        };
        Ok(self.record_outcomes(owner, now, &[o]).await?[0])
    }

    /// A retryable failure: try again at `next_at`.
    pub async fn reschedule(
        &self,
        job_id: &str,
        owner: &str,
        now: i64,
        next_at: i64,
        status: Option<u16>,
        error: &str,
    ) -> Result<(), StoreError> {
        let o = JobOutcome::Retry {
            job_id: job_id.to_string(),
            next_at,
            status,
            error: error.to_string(),
        };
        self.record_outcomes(owner, now, &[o]).await.map(|_| ())
    }

    /// A permanent failure or too many attempts: the job is `dead(reason)`.
    pub async fn mark_dead(
        &self,
        job_id: &str,
        owner: &str,
        now: i64,
        status: Option<u16>,
        reason: &'static str,
        error: &str,
    ) -> Result<(), StoreError> {
        let o = JobOutcome::Dead {
            job_id: job_id.to_string(),
            status,
            reason,
            error: error.to_string(),
        };
        self.record_outcomes(owner, now, &[o]).await.map(|_| ())
    }

    pub async fn jobs(&self) -> Result<Vec<JobRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT job_id, template, patient_key, status, reason, due_at, attempts, payload, sent_at, last_status, message_id, mobile_key \
             FROM survey_jobs ORDER BY created_at, job_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("list jobs"))?;
        rows.iter()
            .map(job_row)
            .collect::<Result<_, _>>()
            .map_err(db("read jobs"))
    }

    pub async fn dead_letters(&self) -> Result<Vec<DeadLetterRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, connector, message_id, reason, detail, delivery_count FROM dead_letters ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("list dead letters"))?;
        rows.iter()
            .map(|r| {
                Ok(DeadLetterRow {
                    id: r.try_get("id")?,
                    at: r.try_get("at")?,
                    connector: r.try_get("connector")?,
                    message_id: r.try_get("message_id")?,
                    reason: r.try_get("reason")?,
                    detail: r.try_get("detail")?,
                    delivery_count: r.try_get("delivery_count")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db("read dead letters"))
    }

    /// Audit rows, oldest first; filtered by message id or job id when given.
    pub async fn audit(&self, message_or_job: Option<&str>) -> Result<Vec<AuditRow>, StoreError> {
        let q = match message_or_job {
            Some(id) => sqlx::query(
                "SELECT at, message_id, job_id, action, rule, reason, detail FROM audit \
                 WHERE message_id = $1 OR job_id = $1 OR patient_key = $1 ORDER BY id",
            )
            .bind(id.to_string()),
            None => sqlx::query(
                "SELECT at, message_id, job_id, action, rule, reason, detail FROM audit ORDER BY id",
            ),
        };
        let rows = q.fetch_all(&self.pool).await.map_err(db("read audit"))?;
        rows.iter()
            .map(|r| {
                Ok(AuditRow {
                    at: r.try_get("at")?,
                    message_id: r.try_get("message_id")?,
                    job_id: r.try_get("job_id")?,
                    action: r.try_get("action")?,
                    rule: r.try_get("rule")?,
                    reason: r.try_get("reason")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db("read audit"))
    }

    /// Rows in `inbox` (deduplicated messages seen).
    pub async fn inbox_count(&self) -> Result<i64, StoreError> {
        sqlx::query("SELECT COUNT(*) AS n FROM inbox")
            .fetch_one(&self.pool)
            .await
            .and_then(|r| r.try_get::<i64, _>("n"))
            .map_err(db("count inbox"))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn job_row(r: &AnyRow) -> Result<JobRow, sqlx::Error> {
    Ok(JobRow {
        job_id: r.try_get("job_id")?,
        template: r.try_get("template")?,
        patient_key: r.try_get("patient_key")?,
        status: r.try_get("status")?,
        reason: r.try_get("reason")?,
        due_at: r.try_get("due_at")?,
        attempts: r.try_get("attempts")?,
        payload: r.try_get("payload")?,
        sent_at: r.try_get("sent_at")?,
        last_status: r.try_get("last_status")?,
        message_id: r.try_get("message_id")?,
        mobile_key: r.try_get("mobile_key")?,
    })
}

/// One ingest transaction.
pub struct StoreTx {
    pub(crate) tx: Transaction<'static, Any>,
    /// Counter increments of what this transaction did, emitted only once it commits (a batch
    /// the store refused and that is written again is counted once).
    counts: Vec<(&'static str, Vec<metrics::Label>, u64)>,
}

impl StoreTx {
    /// Record a message key; tell new, duplicate and conflicting redeliveries apart (R-EVT-4).
    pub async fn record_inbox(
        &mut self,
        connector: &str,
        message_key: &str,
        content_hash: &str,
        message_id: &str,
        event: &str,
        now: i64,
    ) -> Result<InboxResult, StoreError> {
        let n = sqlx::query(
            "INSERT INTO inbox (connector, message_key, content_hash, message_id, event, received_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (connector, message_key) DO NOTHING",
        )
        .bind(connector)
        .bind(message_key)
        .bind(content_hash)
        .bind(message_id)
        .bind(event)
        .bind(now)
        .execute(&mut *self.tx)
        .await
        .map_err(db("record message key"))?
        .rows_affected();
        if n == 1 {
            return Ok(InboxResult::New);
        }
        let stored: String =
            sqlx::query("SELECT content_hash FROM inbox WHERE connector = $1 AND message_key = $2")
                .bind(connector)
                .bind(message_key)
                .fetch_one(&mut *self.tx)
                .await
                .and_then(|r| r.try_get("content_hash"))
                .map_err(db("read message key"))?;
        Ok(if stored == content_hash {
            InboxResult::Duplicate
        } else {
            InboxResult::Conflict
        })
    }

    /// Create a pending job unless its id exists (R-SRV-5).
    pub async fn insert_job(
        &mut self,
        job: &NewJob<'_>,
        now: i64,
    ) -> Result<JobInsert, StoreError> {
        let n = sqlx::query(
            "INSERT INTO survey_jobs (job_id, template, patient_key, visit_key, status, due_at, next_attempt_at, \
             payload, connector, message_id, created_at, updated_at, id_card_key, mobile_key, dnd) \
             VALUES ($1, $2, $3, $4, 'pending', $5, $5, $6, $7, $8, $9, $9, $10, $11, $12) ON CONFLICT (job_id) DO NOTHING",
        )
        .bind(job.job_id)
        .bind(job.template)
        .bind(job.patient_key)
        .bind(job.visit_key)
        .bind(job.due_at)
        .bind(job.payload)
        .bind(job.connector)
        .bind(job.message_id)
        .bind(now)
        .bind(job.id_card_key)
        .bind(job.mobile_key)
        .bind(i64::from(job.dnd))
        .execute(&mut *self.tx)
        .await
        .map_err(db("insert job"))?
        .rows_affected();
        if n == 1 {
            return Ok(JobInsert::Created);
        }
        let revived = sqlx::query(
            "UPDATE survey_jobs SET status = 'pending', reason = NULL, due_at = $1, next_attempt_at = $1, \
             payload = $2, message_id = $3, locked_until = 0, updated_at = $4 \
             WHERE job_id = $5 AND status = 'cancelled' AND reason = 'discharge_cancelled'",
        )
        .bind(job.due_at)
        .bind(job.payload)
        .bind(job.message_id)
        .bind(now)
        .bind(job.job_id)
        .execute(&mut *self.tx)
        .await
        .map_err(db("reactivate job"))?
        .rows_affected();
        if revived == 1 {
            return Ok(JobInsert::Reactivated);
        }
        let status: String = sqlx::query("SELECT status FROM survey_jobs WHERE job_id = $1")
            .bind(job.job_id)
            .fetch_one(&mut *self.tx)
            .await
            .and_then(|r| r.try_get("status"))
            .map_err(db("read job"))?;
        Ok(JobInsert::Exists { status })
    }

    pub async fn audit(&mut self, e: &AuditEntry<'_>) -> Result<(), StoreError> {
        audit_in(&mut self.tx, e).await
    }

    /// R-SRV-2: move the visit's pending jobs that are not in flight to `due_at` (and the
    /// `dueAt` of their payload to `due_text`); the moved job ids.
    pub async fn reanchor_visit(
        &mut self,
        visit_key: &str,
        due_at: i64,
        due_text: &str,
        now: i64,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT job_id, payload FROM survey_jobs WHERE visit_key = $1 AND status = 'pending' AND locked_until <= $2",
        )
        .bind(visit_key)
        .bind(now)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(db("read jobs to re-anchor"))?;
        let mut moved = Vec::with_capacity(rows.len());
        for r in &rows {
            let job_id: String = r.try_get("job_id").map_err(db("read jobs to re-anchor"))?;
            let payload: String = r.try_get("payload").map_err(db("read jobs to re-anchor"))?;
            let payload = match serde_json::from_str::<serde_json::Value>(&payload) {
                Ok(mut v) => {
                    v["dueAt"] = serde_json::Value::String(due_text.to_string());
                    v.to_string()
                }
                Err(_) => payload,
            };
            sqlx::query(
                "UPDATE survey_jobs SET due_at = $1, next_attempt_at = $1, payload = $2, updated_at = $3 \
                 WHERE job_id = $4 AND status = 'pending'",
            )
            .bind(due_at)
            .bind(payload)
            .bind(now)
            .bind(job_id.as_str())
            .execute(&mut *self.tx)
            .await
            .map_err(db("re-anchor job"))?;
            moved.push(job_id);
        }
        Ok(moved)
    }

    /// Cancel the visit's pending jobs (R-CAN-1, R-CAN-3), releasing any do-not-disturb
    /// reservation they held, and list the jobs already sent.
    pub async fn cancel_visit(
        &mut self,
        visit_key: &str,
        reason: &str,
        now: i64,
    ) -> Result<VisitCancel, StoreError> {
        let cancelled = self
            .cancel_pending(JobsOf::Visit, visit_key, reason, now)
            .await?;
        let rows =
            sqlx::query("SELECT job_id FROM survey_jobs WHERE visit_key = $1 AND status = 'sent'")
                .bind(visit_key)
                .fetch_all(&mut *self.tx)
                .await
                .map_err(db("read sent jobs"))?;
        let sent = job_ids(&rows).map_err(db("read sent jobs"))?;
        // R-FUP-4: the stay's pending follow-up calls go too (a new A03 re-plans them).
        let followup_calls = sqlx::query(
            "UPDATE ticket_outbox SET status = 'cancelled', reason = $1, locked_until = 0, updated_at = $2 \
             WHERE ticket_id = $3 AND status = 'pending'",
        )
        .bind(reason)
        .bind(now)
        .bind(keys::thread_id(visit_key))
        .execute(&mut *self.tx)
        .await
        .map_err(db("cancel follow-up calls"))?
        .rows_affected();
        Ok(VisitCancel {
            cancelled,
            sent,
            followup_calls,
        })
    }

    /// Cancel the pending jobs of one visit or patient with `reason`, releasing any
    /// do-not-disturb reservation they held; returns their ids.
    async fn cancel_pending(
        &mut self,
        of: JobsOf,
        key: &str,
        reason: &str,
        now: i64,
    ) -> Result<Vec<String>, StoreError> {
        let sql = match of {
            JobsOf::Visit => {
                "UPDATE survey_jobs SET status = 'cancelled', reason = $1, locked_until = 0, updated_at = $2 \
                 WHERE visit_key = $3 AND status = 'pending' RETURNING job_id"
            }
            JobsOf::Patient => {
                "UPDATE survey_jobs SET status = 'cancelled', reason = $1, locked_until = 0, updated_at = $2 \
                 WHERE patient_key = $3 AND status = 'pending' RETURNING job_id"
            }
        };
        let rows = sqlx::query(sql)
            .bind(reason)
            .bind(now)
            .bind(key)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(db("cancel jobs"))?;
        let cancelled = job_ids(&rows).map_err(db("cancel jobs"))?;
        for id in &cancelled {
            sqlx::query("DELETE FROM touches WHERE job_id = $1")
                .bind(id.as_str())
                .execute(&mut *self.tx)
                .await
                .map_err(db("release touch"))?;
        }
        Ok(cancelled)
    }

    /// Is this patient flagged deceased (R-EXC-1, persisted per `pk`)?
    pub async fn is_deceased(&mut self, patient_key: &str) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("SELECT deceased FROM patients WHERE patient_key = $1")
                .bind(patient_key)
                .fetch_optional(&mut *self.tx)
                .await
                .map_err(db("read patient"))?
                .map(|r| r.try_get::<i64, _>("deceased"))
                .transpose()
                .map_err(db("read patient"))?
                .unwrap_or(0)
                == 1,
        )
    }

    /// Flag a patient deceased (never cleared) and cancel their pending surveys (R-EXC-1,
    /// EX-21); returns the cancelled job ids.
    pub async fn mark_deceased(
        &mut self,
        patient_key: &str,
        now: i64,
    ) -> Result<Vec<String>, StoreError> {
        sqlx::query(
            "INSERT INTO patients (patient_key, deceased) VALUES ($1, 1) \
             ON CONFLICT (patient_key) DO UPDATE SET deceased = 1",
        )
        .bind(patient_key)
        .execute(&mut *self.tx)
        .await
        .map_err(db("flag deceased"))?;
        let cancelled = self
            .cancel_pending(JobsOf::Patient, patient_key, "deceased", now)
            .await?;
        // R-FUP-4: death cancels every pending call to the patient, follow-up or ticket.
        let calls = sqlx::query(
            "UPDATE ticket_outbox SET status = 'cancelled', reason = 'deceased', locked_until = 0, updated_at = $1 \
             WHERE patient_key = $2 AND sink = 'callcenter' AND status = 'pending'",
        )
        .bind(now)
        .bind(patient_key)
        .execute(&mut *self.tx)
        .await
        .map_err(db("cancel calls"))?
        .rows_affected();
        if calls > 0 {
            self.audit(&AuditEntry {
                patient_key: Some(patient_key),
                action: "cancelled",
                rule: Some("R-FUP-4"),
                reason: Some("deceased"),
                detail: Some(&format!("{calls} pending call(s) to the patient")),
                ..Default::default()
            })
            .await?;
        }
        Ok(cancelled)
    }

    /// R-CAN-5: store newer demographics (the contact mobile's pseudonym) and point the
    /// patient's pending surveys at it; an older update changes nothing (EX-22). Returns
    /// whether it applied.
    pub async fn update_contact(
        &mut self,
        patient_key: &str,
        mobile_key: Option<&str>,
        event_time: i64,
    ) -> Result<bool, StoreError> {
        let applied = sqlx::query(
            "INSERT INTO patients (patient_key, mobile_key, demographics_at) VALUES ($1, $2, $3) \
             ON CONFLICT (patient_key) DO UPDATE SET mobile_key = excluded.mobile_key, \
             demographics_at = excluded.demographics_at WHERE patients.demographics_at <= excluded.demographics_at",
        )
        .bind(patient_key)
        .bind(mobile_key)
        .bind(event_time)
        .execute(&mut *self.tx)
        .await
        .map_err(db("update patient"))?
        .rows_affected()
            == 1;
        if applied {
            sqlx::query(
                "UPDATE survey_jobs SET mobile_key = $1 WHERE patient_key = $2 AND status = 'pending'",
            )
            .bind(mobile_key)
            .bind(patient_key)
            .execute(&mut *self.tx)
            .await
            .map_err(db("update pending jobs"))?;
        }
        Ok(applied)
    }

    /// The survivor a patient pseudonym was merged into, or the pseudonym itself (R-CAN-6).
    pub async fn resolve_patient(&mut self, patient_key: &str) -> Result<String, StoreError> {
        Ok(
            sqlx::query("SELECT survivor_key FROM patient_aliases WHERE alias_key = $1")
                .bind(patient_key)
                .fetch_optional(&mut *self.tx)
                .await
                .map_err(db("read alias"))?
                .map(|r| r.try_get::<String, _>("survivor_key"))
                .transpose()
                .map_err(db("read alias"))?
                .unwrap_or_else(|| patient_key.to_string()),
        )
    }

    /// R-CAN-6: `merged` becomes an alias of `survivor`; its touches (the later of both per key
    /// counts), pending jobs and deceased flag move to the survivor. Returns the moved job ids.
    pub async fn merge_patients(
        &mut self,
        merged: &str,
        survivor: &str,
    ) -> Result<Vec<String>, StoreError> {
        let survivor = self.resolve_patient(survivor).await?;
        if merged == survivor {
            return Ok(Vec::new());
        }
        sqlx::query(
            "INSERT INTO patient_aliases (alias_key, survivor_key) VALUES ($1, $2) \
             ON CONFLICT (alias_key) DO UPDATE SET survivor_key = excluded.survivor_key",
        )
        .bind(merged)
        .bind(survivor.as_str())
        .execute(&mut *self.tx)
        .await
        .map_err(db("write alias"))?;
        // Aliases of the merged patient now point at the survivor too.
        sqlx::query("UPDATE patient_aliases SET survivor_key = $1 WHERE survivor_key = $2")
            .bind(survivor.as_str())
            .bind(merged)
            .execute(&mut *self.tx)
            .await
            .map_err(db("update aliases"))?;
        sqlx::query(
            "INSERT INTO touches (dnd_key, last_sent, job_id) \
             SELECT $1, last_sent, job_id FROM touches WHERE dnd_key = $2 \
             ON CONFLICT (dnd_key) DO UPDATE SET last_sent = excluded.last_sent, job_id = excluded.job_id \
             WHERE touches.last_sent < excluded.last_sent",
        )
        .bind(survivor.as_str())
        .bind(merged)
        .execute(&mut *self.tx)
        .await
        .map_err(db("merge touches"))?;
        let rows = sqlx::query(
            "UPDATE survey_jobs SET patient_key = $1 WHERE patient_key = $2 AND status = 'pending' RETURNING job_id",
        )
        .bind(survivor.as_str())
        .bind(merged)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(db("move jobs"))?;
        let moved = job_ids(&rows).map_err(db("move jobs"))?;
        sqlx::query(
            "INSERT INTO patients (patient_key, deceased) \
             SELECT $1, deceased FROM patients WHERE patient_key = $2 AND deceased = 1 \
             ON CONFLICT (patient_key) DO UPDATE SET deceased = 1",
        )
        .bind(survivor.as_str())
        .bind(merged)
        .execute(&mut *self.tx)
        .await
        .map_err(db("merge deceased flag"))?;
        // R-CAN-6: an opt-out of the merged patient holds for the survivor.
        sqlx::query(
            "INSERT INTO opt_outs (opt_key, source, job_id, at) \
             SELECT $1, source, job_id, at FROM opt_outs WHERE opt_key = $2 \
             ON CONFLICT (opt_key) DO NOTHING",
        )
        .bind(survivor.as_str())
        .bind(merged)
        .execute(&mut *self.tx)
        .await
        .map_err(db("merge opt-out"))?;
        // R-FUP-4: pending calls and case updates follow the survivor (one call a day counts
        // the survivor's calls).
        sqlx::query(
            "UPDATE ticket_outbox SET patient_key = $1 WHERE patient_key = $2 AND status = 'pending'",
        )
        .bind(survivor.as_str())
        .bind(merged)
        .execute(&mut *self.tx)
        .await
        .map_err(db("move calls"))?;
        Ok(moved)
    }

    /// Remember a cancel that came before its visit's registration (R-CAN-2).
    pub async fn put_tombstone(
        &mut self,
        visit_key: &str,
        reason: &str,
        until: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tombstones (visit_key, reason, until) VALUES ($1, $2, $3) \
             ON CONFLICT (visit_key) DO UPDATE SET reason = excluded.reason, until = excluded.until",
        )
        .bind(visit_key)
        .bind(reason)
        .bind(until)
        .execute(&mut *self.tx)
        .await
        .map_err(db("write tombstone"))?;
        Ok(())
    }

    pub async fn dead_letter(
        &mut self,
        d: &DeadLetterEntry<'_>,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO dead_letters (at, connector, message_id, reason, detail, content_hash, size_bytes, delivery_count, body_key_id, body, headers) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(now)
        .bind(d.connector)
        .bind(d.message_id)
        .bind(d.reason)
        .bind(d.detail)
        .bind(d.content_hash)
        .bind(d.size_bytes)
        .bind(d.delivery_count)
        .bind(d.sealed_body.map(|b| b.0))
        .bind(d.sealed_body.map(|b| b.1.to_vec()))
        .bind(d.sealed_headers.map(<[u8]>::to_vec))
        .execute(&mut *self.tx)
        .await
        .map_err(db("record dead letter"))?;
        Ok(())
    }

    /// Count `n` on the counter `name` with `labels` when this transaction commits.
    pub fn count(&mut self, name: &'static str, labels: &[(&'static str, &str)], n: u64) {
        let labels = labels
            .iter()
            .map(|(k, v)| metrics::Label::new(*k, v.to_string()))
            .collect();
        self.counts.push((name, labels, n));
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await.map_err(db("commit"))?;
        for (name, labels, n) in self.counts {
            metrics::counter!(name, labels).increment(n);
        }
        Ok(())
    }
}

/// Which jobs a cancellation applies to.
#[derive(Debug, Clone, Copy)]
enum JobsOf {
    Visit,
    Patient,
}

/// The `job_id` column of rows.
fn job_ids(rows: &[AnyRow]) -> Result<Vec<String>, sqlx::Error> {
    rows.iter()
        .map(|r| r.try_get::<String, _>("job_id"))
        .collect()
}

/// Whether a claimed job row is a survey under do-not-disturb (not a follow-up step).
fn under_dnd(r: &AnyRow) -> bool {
    r.try_get::<i64, _>("dnd").map_or(true, |d| d != 0)
}

/// The do-not-disturb keys of a claimed job row: `pk_`, `ik_` (if any), `mk_` (R-DND-1).
fn dnd_keys(r: &AnyRow) -> Vec<String> {
    ["patient_key", "id_card_key", "mobile_key"]
        .iter()
        .filter_map(|c| r.try_get::<Option<String>, _>(*c).ok().flatten())
        .collect()
}

/// `sql` with its `{keys}` replaced by `$1, …, $n` and the `n` keys bound in order: a
/// `… IN ({keys})` query the `Any` driver can run (it binds no arrays).
fn query_in<'q>(
    sql: &str,
    keys: &[&'q str],
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments> {
    let sql = sql.replace("{keys}", &placeholders(1, keys.len()));
    keys.iter()
        .fold(sqlx::query(AssertSqlSafe(sql)), |q, k| q.bind(*k))
}

/// Suppress a claimed job in the claim transaction, with its audit row.
async fn suppress_in(
    tx: &mut Transaction<'static, Any>,
    job: &ClaimedJob,
    now: i64,
    reason: &str,
    rule: &str,
    detail: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE survey_jobs SET status = 'suppressed', reason = $1, locked_until = 0, updated_at = $2 \
         WHERE job_id = $3",
    )
    .bind(reason)
    .bind(now)
    .bind(job.job_id.as_str())
    .execute(&mut **tx)
    .await
    .map_err(db("suppress job"))?;
    audit_in(
        tx,
        &AuditEntry {
            message_id: Some(&job.message_id),
            job_id: Some(&job.job_id),
            action: "suppressed",
            rule: Some(rule),
            reason: Some(reason),
            detail: Some(detail),
            ..Default::default()
        },
    )
    .await
}

/// The patient and mobile pseudonyms of the claimed surveys that are on `opt_outs`: one
/// statement per claimed batch.
async fn opted_out_among(
    tx: &mut Transaction<'static, Any>,
    rows: &[AnyRow],
) -> Result<std::collections::HashSet<String>, StoreError> {
    let mut keys: Vec<String> = rows
        .iter()
        .filter(|r| under_dnd(r))
        .flat_map(|r| {
            ["patient_key", "mobile_key"]
                .iter()
                .filter_map(|c| r.try_get::<Option<String>, _>(*c).ok().flatten())
                .collect::<Vec<_>>()
        })
        .collect();
    keys.sort();
    keys.dedup();
    if keys.is_empty() {
        return Ok(Default::default());
    }
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let found = query_in(
        "SELECT opt_key FROM opt_outs WHERE opt_key IN ({keys})",
        &keys,
    )
    .fetch_all(&mut **tx)
    .await
    .map_err(db("read opt-outs"))?;
    Ok(found
        .iter()
        .filter_map(|r| r.try_get::<String, _>("opt_key").ok())
        .collect())
}

/// The do-not-disturb touches of one claimed batch's keys, as read under the batch's locks,
/// and the reservations decided in it (R-DND-3).
#[derive(Default)]
struct TouchState {
    /// key → (last_sent, job_id), updated as the batch reserves.
    current: std::collections::HashMap<String, (i64, String)>,
    /// Keys reserved in this batch (their `current` entry is written by [`TouchState::write`]).
    reserved: std::collections::BTreeSet<String>,
}

impl TouchState {
    /// Reserve every key for `job_id`, or name the first key touched after `since` by another
    /// job (a touch of the same job is its own earlier reservation: a re-claim after a crash).
    fn reserve(&mut self, job_id: &str, keys: &[String], now: i64, since: i64) -> Option<String> {
        if let Some(k) = keys.iter().find(|k| {
            self.current
                .get(k.as_str())
                .is_some_and(|(at, owner)| *at > since && owner != job_id)
        }) {
            return Some(k.clone());
        }
        for k in keys {
            self.current.insert(k.clone(), (now, job_id.to_string()));
            self.reserved.insert(k.clone());
        }
        None
    }

    /// Write the batch's reservations: one multi-row upsert per 300 keys.
    async fn write(&self, tx: &mut Transaction<'static, Any>) -> Result<(), StoreError> {
        let rows: Vec<(&String, &(i64, String))> = self
            .reserved
            .iter()
            .filter_map(|k| Some((k, self.current.get(k)?)))
            .collect();
        for chunk in rows.chunks(300) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
                .collect();
            let sql = format!(
                "INSERT INTO touches (dnd_key, last_sent, job_id) VALUES {} \
                 ON CONFLICT (dnd_key) DO UPDATE SET last_sent = excluded.last_sent, job_id = excluded.job_id",
                values.join(", ")
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for (key, (at, job)) in chunk {
                q = q.bind(key.as_str()).bind(*at).bind(job.as_str());
            }
            q.execute(&mut **tx)
                .await
                .map_err(db("reserve do-not-disturb keys"))?;
        }
        Ok(())
    }
}

impl Store {
    /// Lock (PostgreSQL) and read the touches of every do-not-disturb key of a claimed batch.
    /// Two instances reserving overlapping keys must not interleave: each takes
    /// transaction-scoped advisory locks on its batch's keys first, in one global (sorted)
    /// order and in one statement, so the read below sees every reservation committed before
    /// and none can land until this transaction ends. SQLite's single writer gives the same.
    async fn lock_and_read_touches(
        &self,
        tx: &mut Transaction<'static, Any>,
        rows: &[AnyRow],
    ) -> Result<TouchState, StoreError> {
        let mut all: Vec<String> = rows
            .iter()
            .filter(|r| under_dnd(r))
            .flat_map(dnd_keys)
            .collect();
        all.sort();
        all.dedup();
        let mut state = TouchState::default();
        if all.is_empty() {
            return Ok(state);
        }
        if self.backend == Backend::Postgres {
            // Pseudonyms are `pk_`/`ik_`/`mk_` + hex: no commas. unnest keeps the array order.
            sqlx::query(
                "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM unnest(string_to_array($1, ',')) AS k",
            )
            .bind(all.join(","))
            .execute(&mut **tx)
            .await
            .map_err(db("lock do-not-disturb keys"))?;
        }
        for chunk in all.chunks(500) {
            let keys: Vec<&str> = chunk.iter().map(String::as_str).collect();
            for r in query_in(
                "SELECT dnd_key, last_sent, job_id FROM touches WHERE dnd_key IN ({keys})",
                &keys,
            )
            .fetch_all(&mut **tx)
            .await
            .map_err(db("read do-not-disturb touches"))?
            {
                let key: String = r.try_get("dnd_key").map_err(db("read touches"))?;
                let at: i64 = r.try_get("last_sent").map_err(db("read touches"))?;
                let job: String = r.try_get("job_id").map_err(db("read touches"))?;
                state.current.insert(key, (at, job));
            }
        }
        Ok(state)
    }
}

/// R-DND-3 after the push: accepted → the reservation becomes the touch at the send time; a
/// permanent refusal → released (the CEM never had it). Retries keep it.
async fn touch_follow_up(tx: &mut StoreTx, o: &JobOutcome, now: i64) -> Result<(), StoreError> {
    match o {
        JobOutcome::Sent { job_id, .. } => {
            sqlx::query("UPDATE touches SET last_sent = $1 WHERE job_id = $2")
                .bind(now)
                .bind(job_id.as_str())
                .execute(&mut *tx.tx)
                .await
                .map_err(db("record touch"))?;
        }
        JobOutcome::Dead {
            job_id,
            reason: "rejected",
            ..
        }
        | JobOutcome::Suppressed { job_id, .. } => {
            sqlx::query("DELETE FROM touches WHERE job_id = $1")
                .bind(job_id.as_str())
                .execute(&mut *tx.tx)
                .await
                .map_err(db("release touch"))?;
        }
        _ => {}
    }
    Ok(())
}

async fn audit_in(
    tx: &mut Transaction<'static, Any>,
    e: &AuditEntry<'_>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit (at, connector, message_id, job_id, patient_key, action, rule, reason, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(now_ms())
    .bind(e.connector)
    .bind(e.message_id)
    .bind(e.job_id)
    .bind(e.patient_key)
    .bind(e.action)
    .bind(e.rule)
    .bind(e.reason)
    .bind(e.detail)
    .execute(&mut **tx)
    .await
    .map_err(db("write audit"))?;
    Ok(())
}

/// Wall-clock epoch milliseconds.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

fn redact(url: &str) -> String {
    cem_connectors::amqp::redact_url(url)
}

/// `$first, $first+1, …` for `n` bound values.
pub(crate) fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}
