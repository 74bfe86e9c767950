//! The store: dedupe records, survey jobs, audit and dead letters, on SQLite (embedded default,
//! WAL) or PostgreSQL, through one sqlx `Any` code path. Times are epoch milliseconds.
//!
//! Ingest writes a whole batch of deliveries in one [`StoreTx`]; the source acks only after
//! [`StoreTx::commit`] returns. The scheduler claims due jobs with a lease (`locked_until`), so a
//! crash mid-send leaves the job to be claimed again and re-sent with the same idempotency key.

mod buffered;
pub mod checkpoint;
pub mod claim;
pub mod dead_letters;
pub mod followups;
pub mod keys;
pub mod ops;
pub mod opt_outs;
pub mod patient_records;
pub mod patients;
pub mod retention;
pub mod tickets;
pub mod vault;
pub mod views;

use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyConnection, AnyPool, AssertSqlSafe, ConnectOptions, Row, Transaction};
use tokio::sync::OwnedMutexGuard;

use crate::process::clock::Clock;
use crate::process::fault;

/// A store failure: what was being done, and the database's message (never row values).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {op} failed: {cause}")]
    Db {
        op: &'static str,
        cause: sqlx::Error,
    },
    #[error(
        "store: cannot open {url}: {cause}. Check the [store] url, that the directory is writable or the server reachable"
    )]
    Open { url: String, cause: sqlx::Error },
    #[error(
        "store: the database schema is version {found}, newer than this binary's {supported}. Run the cem-bridge release that migrated it, or restore a backup"
    )]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("store: unsupported url {0:?}; use sqlite://FILE or postgres://…")]
    UnsupportedUrl(String),
    #[error("store: cannot create directory {dir}: {cause}")]
    CreateDir { dir: String, cause: std::io::Error },
    #[error("store: cannot seal a vault record or dead-letter body with the vault key")]
    Sealing,
    /// Another instance wrote a row this batch read as absent, between the read and the write
    /// (PostgreSQL with several instances): the batch is written again and then finds it.
    #[error(
        "store: {written} of {expected} new {what} row(s) written: another instance wrote the others concurrently; the batch is written again"
    )]
    Raced {
        what: &'static str,
        expected: u64,
        written: u64,
    },
}

impl StoreError {
    /// What was being done, for messages that must not carry database text.
    pub fn op(&self) -> &'static str {
        match self {
            Self::Db { op, .. } => op,
            Self::Open { .. } | Self::UnsupportedUrl(_) | Self::CreateDir { .. } => "open",
            Self::SchemaTooNew { .. } => "migrate",
            Self::Sealing => "seal",
            Self::Raced { .. } => "insert jobs",
        }
    }

    /// The commit itself failed (connection lost, disk full): the store's failure, never one
    /// statement's refusal of one message's effects.
    pub fn at_commit(&self) -> bool {
        matches!(self, Self::Db { op: "commit", .. })
    }
}

pub(crate) fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Db { op, cause: source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The schema version this binary migrates to (the last of each backend's migrations).
pub const SCHEMA_VERSION: i64 = 10;

/// The migration that brings a store made by an earlier text of a migration up to date
/// (`0008_first_release_catch_up.sql`); it first adds [`LATE_COLUMNS`] where missing.
const CATCH_UP_VERSION: i64 = 8;

/// Columns added to migrations after they had shipped — `0001_init.sql` after the first release,
/// `0004_followups.sql` after its first version — so an older store at that version lacks them:
/// (table, column, type). Added in code because SQLite has no `ADD COLUMN IF NOT EXISTS`.
const LATE_COLUMNS: &[(&str, &str, &str)] = &[
    ("survey_jobs", "id_card_key", "TEXT"),
    ("survey_jobs", "mobile_key", "TEXT"),
    ("dead_letters", "replayed_at", "BIGINT"),
];

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
    (
        CATCH_UP_VERSION,
        include_str!("../../migrations/sqlite/0008_first_release_catch_up.sql"),
    ),
    (9, include_str!("../../migrations/sqlite/0009_stale_at.sql")),
    (
        10,
        include_str!("../../migrations/sqlite/0010_audit_partial_indexes.sql"),
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
    (
        CATCH_UP_VERSION,
        include_str!("../../migrations/postgres/0008_first_release_catch_up.sql"),
    ),
    (
        9,
        include_str!("../../migrations/postgres/0009_stale_at.sql"),
    ),
    (
        10,
        include_str!("../../migrations/postgres/0010_audit_partial_indexes.sql"),
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
    /// Stamps audit rows: the bridge's clock once [`Store::with_clock`] set it (the system
    /// clock for a store opened by a command or a test).
    clock: Clock,
    /// SQLite has one writer: the process's write transactions take turns here instead of
    /// meeting in SQLite's busy handler, which sleeps up to 100 ms between tries.
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
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
    /// When the survey is stale (R-SRV-4); the claim suppresses it past this. `None` for a
    /// follow-up step.
    pub stale_at: Option<i64>,
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
            cause: source,
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
        // sqlx logs every statement over a second as a multi-line WARN with its SQL: noise at
        // info level under load, and the figures are in the store gauges and the bench.
        let options = <sqlx::any::AnyConnectOptions as std::str::FromStr>::from_str(&url)
            .map_err(|source| StoreError::Open {
                url: redact(&url),
                cause: source,
            })?
            .disable_statement_logging();
        let pool = AnyPoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .acquire_timeout(opts.connect_timeout)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // Checkpoints are `checkpoint::run`'s, beside the writer; the automatic one
                        // stays as a backstop.
                        let backstop = checkpoint::BACKSTOP_PAGES;
                        sqlx::raw_sql(AssertSqlSafe(format!(
                            "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA busy_timeout=30000; PRAGMA foreign_keys=ON; PRAGMA wal_autocheckpoint={backstop};"
                        )))
                        .execute(&mut *conn)
                        .await?;
                    }
                    Ok(())
                })
            })
            // A connection given back still inside a transaction — its COMMIT failed (disk
            // full, a deferred constraint) and the ROLLBACK queued for it failed too or has not
            // run yet — is closed rather than kept: kept, it would hold SQLite's write lock and
            // every later write would wait `busy_timeout` and fail with "database is locked"
            // until a restart (found by `bench chaos --disk-full`).
            .after_release(|conn, _meta| {
                Box::pin(async move { Ok(!sqlx::Connection::is_in_transaction(conn)) })
            })
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open {
                url: redact(&url),
                cause: source,
            })?;
        let store = Self {
            pool,
            backend,
            clock: Clock::system(),
            writer: Default::default(),
        };
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
            if *version == CATCH_UP_VERSION {
                self.add_late_columns(&mut tx).await?;
            }
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

    /// Add each of [`LATE_COLUMNS`] its table lacks.
    async fn add_late_columns(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    ) -> Result<(), StoreError> {
        let exists = match self.backend {
            Backend::Sqlite => "SELECT COUNT(*) AS n FROM pragma_table_info($1) WHERE name = $2",
            Backend::Postgres => {
                "SELECT COUNT(*) AS n FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1 AND column_name = $2"
            }
        };
        for (table, column, kind) in LATE_COLUMNS {
            let n: i64 = sqlx::query(exists)
                .bind(*table)
                .bind(*column)
                .fetch_one(&mut **tx)
                .await
                .and_then(|r| r.try_get("n"))
                .map_err(db("read the columns of an older store"))?;
            if n == 0 {
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "ALTER TABLE {table} ADD COLUMN {column} {kind}"
                )))
                .execute(&mut **tx)
                .await
                .map_err(db("add a column to an older store"))?;
            }
        }
        Ok(())
    }

    /// SQLite: a PASSIVE checkpoint of the write-ahead log (waits for no one; copies what no
    /// reader still needs). `None` on PostgreSQL. See [`checkpoint`].
    pub async fn checkpoint(&self) -> Result<Option<checkpoint::Checkpoint>, StoreError> {
        let Some(row) = self
            .sqlite_pragma("PRAGMA wal_checkpoint(PASSIVE)", "checkpoint the WAL")
            .await?
        else {
            return Ok(None);
        };
        let get = |i: usize| {
            row.try_get::<i64, _>(i)
                .map_err(db("read the WAL checkpoint"))
        };
        Ok(Some(checkpoint::Checkpoint {
            log_pages: get(1)?,
            copied_pages: get(2)?,
        }))
    }

    /// [`Store::checkpoint`] in the writer turn: no frame is added while it copies, so it copies
    /// them all (unless a reader still needs one) and the next write starts the log over.
    pub async fn checkpoint_between_writes(
        &self,
    ) -> Result<Option<checkpoint::Checkpoint>, StoreError> {
        let _turn = self.writer.lock().await;
        self.checkpoint().await
    }

    /// The SQLite journal mode (for tests and `check`); `None` on PostgreSQL.
    pub async fn sqlite_journal_mode(&self) -> Result<Option<String>, StoreError> {
        let Some(row) = self
            .sqlite_pragma("PRAGMA journal_mode", "read journal mode")
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(
            row.try_get::<String, _>(0)
                .map_err(db("read journal mode"))?,
        ))
    }

    /// The row a SQLite `pragma` answers; `None` on PostgreSQL.
    async fn sqlite_pragma(
        &self,
        pragma: &'static str,
        what: &'static str,
    ) -> Result<Option<AnyRow>, StoreError> {
        if self.backend != Backend::Sqlite {
            return Ok(None);
        }
        let row = sqlx::query(pragma)
            .fetch_one(&self.pool)
            .await
            .map_err(db(what))?;
        Ok(Some(row))
    }

    /// Stamp audit rows with `clock` (the running bridge's, so they agree with due and send
    /// times when the clock is shifted for tests and demos).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// A write transaction. On SQLite it waits for the process's other write transactions
    /// ([`Store::writer`]) and then takes the database's write lock at once (`BEGIN
    /// IMMEDIATE`), so a transaction that reads before it writes cannot fail to upgrade.
    pub async fn begin(&self) -> Result<StoreTx, StoreError> {
        let (writer, tx) = self.begin_write().await?;
        Ok(StoreTx {
            counts: Vec::new(),
            clock: self.clock.clone(),
            backend: self.backend,
            tx,
            buffered: Default::default(),
            jobs_absent: Default::default(),
            _writer: writer,
        })
    }

    /// The writer turn (SQLite) and a transaction begun under it.
    pub(crate) async fn begin_write(
        &self,
    ) -> Result<(Option<OwnedMutexGuard<()>>, Transaction<'static, Any>), StoreError> {
        match self.backend {
            Backend::Sqlite => {
                let turn = self.writer.clone().lock_owned().await;
                let tx = self
                    .pool
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(db("begin"))?;
                Ok((Some(turn), tx))
            }
            Backend::Postgres => Ok((None, self.pool.begin().await.map_err(db("begin"))?)),
        }
    }

    pub async fn jobs(&self) -> Result<Vec<JobRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT job_id, template, patient_key, status, reason, due_at, attempts, payload, sent_at, last_status, message_id, mobile_key \
             FROM survey_jobs ORDER BY created_at, job_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("list jobs"))?;
        read_rows(&rows, db("read jobs"), job_row)
    }

    pub async fn dead_letters(&self) -> Result<Vec<DeadLetterRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, connector, message_id, reason, detail, delivery_count FROM dead_letters ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("list dead letters"))?;
        read_rows(&rows, db("read dead letters"), |r| {
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
    }

    /// Audit rows, oldest first; filtered by message id or job id when given.
    pub async fn audit(&self, message_or_job: Option<&str>) -> Result<Vec<AuditRow>, StoreError> {
        let q = match message_or_job {
            Some(id) => sqlx::query(AssertSqlSafe(ops::audit_about_sql(
                "id, at, message_id, job_id, action, rule, reason, detail",
            )))
            .bind(id.to_string()),
            None => sqlx::query(
                "SELECT at, message_id, job_id, action, rule, reason, detail FROM audit ORDER BY id",
            ),
        };
        let rows = q.fetch_all(&self.pool).await.map_err(db("read audit"))?;
        read_rows(&rows, db("read audit"), |r| {
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
    }

    /// A job's status, due time and mobile pseudonym, for contact resolution.
    pub async fn job_contact(
        &self,
        job_id: &str,
    ) -> Result<Option<(String, i64, Option<String>)>, StoreError> {
        let row =
            sqlx::query("SELECT status, due_at, mobile_key FROM survey_jobs WHERE job_id = $1")
                .bind(job_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db("read job contact"))?;
        row.map(|r| {
            Ok((
                r.try_get("status")?,
                r.try_get("due_at")?,
                r.try_get("mobile_key")?,
            ))
        })
        .transpose()
        .map_err(db("read job contact"))
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

/// One write transaction (a batch of ingest, a push's outcomes, a ticket update). Statements
/// run through [`StoreTx::conn`]; appended rows wait in [`buffered`] until the next statement
/// or the commit.
pub struct StoreTx {
    tx: Transaction<'static, Any>,
    buffered: buffered::Buffered,
    jobs_absent: buffered::JobsAbsent,
    /// The SQLite writer turn, held until the transaction ends.
    _writer: Option<OwnedMutexGuard<()>>,
    /// Counter increments of what this transaction did, emitted only once it commits (a batch
    /// the store refused and that is written again is counted once).
    counts: Vec<(&'static str, Vec<metrics::Label>, u64)>,
    /// The store's clock, for audit rows.
    clock: Clock,
    backend: Backend,
}

impl StoreTx {
    /// The transaction's connection for a statement that may write: what is held is written
    /// first, and job ids read as absent are no longer trusted.
    pub(crate) async fn conn(&mut self) -> Result<&mut AnyConnection, StoreError> {
        self.jobs_absent.forget();
        self.reader().await
    }

    /// The transaction's connection for a read: what is held is written first, so the read
    /// sees it.
    pub(crate) async fn reader(&mut self) -> Result<&mut AnyConnection, StoreError> {
        self.buffered.flush(&mut self.tx, self.backend).await?;
        Ok(&mut *self.tx)
    }

    /// Record the message keys of a batch in one statement (R-EVT-4): `(key, content hash,
    /// message id, event)` per message, answered in order. A key seen before — stored, or
    /// earlier in the same batch — is a duplicate when its content hash matches, else a
    /// conflict.
    pub async fn record_inbox_batch(
        &mut self,
        connector: &str,
        entries: &[(&str, &str, &str, &str)],
        now: i64,
    ) -> Result<Vec<InboxResult>, StoreError> {
        use std::collections::{HashMap, HashSet};
        let mut first: HashMap<&str, &str> = HashMap::new();
        let mut new_rows = Vec::new();
        for (key, hash, mid, event) in entries {
            if !first.contains_key(key) {
                first.insert(key, hash);
                new_rows.push((*key, *hash, *mid, *event));
            }
        }
        let mut inserted: HashSet<String> = HashSet::new();
        for chunk in new_rows.chunks(KEYS_PER_STATEMENT / 2) {
            let sql = buffered::multi_row_sql(
                self.backend,
                "INSERT INTO inbox (connector, message_key, content_hash, message_id, event, received_at) VALUES ",
                "(#, #, #, #, #, #)",
                " ON CONFLICT (connector, message_key) DO NOTHING RETURNING message_key",
                chunk.len(),
            );
            let q = chunk
                .iter()
                .fold(sqlx::query(AssertSqlSafe(sql)), |q, (k, h, m, e)| {
                    q.bind(connector)
                        .bind(*k)
                        .bind(*h)
                        .bind(*m)
                        .bind(*e)
                        .bind(now)
                });
            for r in q
                .fetch_all(self.conn().await?)
                .await
                .map_err(db("record message key"))?
            {
                inserted.insert(r.try_get("message_key").map_err(db("record message key"))?);
            }
        }
        // The keys stored before this batch: their content hashes.
        let before: Vec<&str> = new_rows
            .iter()
            .map(|r| r.0)
            .filter(|k| !inserted.contains(*k))
            .collect();
        let mut stored: HashMap<String, String> = HashMap::new();
        for chunk in before.chunks(KEYS_PER_STATEMENT) {
            let sql = format!(
                "SELECT message_key, content_hash FROM inbox WHERE message_key IN ({{keys}}) AND connector = ${}",
                chunk.len() + 1
            );
            let rows = query_in(&sql, chunk).bind(connector);
            for r in rows
                .fetch_all(self.reader().await?)
                .await
                .map_err(db("read message key"))?
            {
                stored.insert(
                    r.try_get("message_key").map_err(db("read message key"))?,
                    r.try_get("content_hash").map_err(db("read message key"))?,
                );
            }
        }
        let mut claimed: HashSet<&str> = HashSet::new();
        Ok(entries
            .iter()
            .map(|(key, hash, _, _)| {
                if inserted.contains(*key) && claimed.insert(key) {
                    return InboxResult::New;
                }
                let seen = stored
                    .get(*key)
                    .map(String::as_str)
                    .or(first.get(key).copied());
                if seen == Some(*hash) {
                    InboxResult::Duplicate
                } else {
                    InboxResult::Conflict
                }
            })
            .collect())
    }

    /// Read which of `job_ids` exist, so that [`StoreTx::insert_job`] can hold the inserts of
    /// the absent ones for one statement (valid until another statement runs).
    pub async fn read_absent_jobs(&mut self, ids: &[&str]) -> Result<(), StoreError> {
        let mut absent: std::collections::HashSet<String> =
            ids.iter().map(|s| s.to_string()).collect();
        for chunk in ids.chunks(KEYS_PER_STATEMENT) {
            let rows = query_in(
                "SELECT job_id FROM survey_jobs WHERE job_id IN ({keys})",
                chunk,
            )
            .fetch_all(self.reader().await?)
            .await
            .map_err(db("read jobs"))?;
            for id in job_ids(&rows).map_err(db("read jobs"))? {
                absent.remove(&id);
            }
        }
        self.jobs_absent.set(absent);
        Ok(())
    }

    /// Record one message key; tell new, duplicate and conflicting redeliveries apart
    /// (R-EVT-4).
    pub async fn record_inbox(
        &mut self,
        connector: &str,
        message_key: &str,
        content_hash: &str,
        message_id: &str,
        event: &str,
        now: i64,
    ) -> Result<InboxResult, StoreError> {
        let r = self
            .record_inbox_batch(
                connector,
                &[(message_key, content_hash, message_id, event)],
                now,
            )
            .await?;
        Ok(r.first().copied().unwrap_or(InboxResult::Conflict))
    }

    /// Create a pending job unless its id exists (R-SRV-5).
    pub async fn insert_job(
        &mut self,
        job: &NewJob<'_>,
        now: i64,
    ) -> Result<JobInsert, StoreError> {
        if self.jobs_absent.take(job.job_id) {
            self.buffered.job(buffered::JobRow {
                job_id: job.job_id.to_string(),
                template: job.template.to_string(),
                patient_key: job.patient_key.to_string(),
                visit_key: job.visit_key.to_string(),
                due_at: job.due_at,
                payload: job.payload.to_string(),
                connector: job.connector.to_string(),
                message_id: job.message_id.to_string(),
                now,
                id_card_key: job.id_card_key.map(str::to_string),
                mobile_key: job.mobile_key.map(str::to_string),
                dnd: i64::from(job.dnd),
                stale_at: job.stale_at,
            });
            return Ok(JobInsert::Created);
        }
        let n = sqlx::query(
            "INSERT INTO survey_jobs (job_id, template, patient_key, visit_key, status, due_at, next_attempt_at, \
             payload, connector, message_id, created_at, updated_at, id_card_key, mobile_key, dnd, stale_at, created_by) \
             VALUES ($1, $2, $3, $4, 'pending', $5, $5, $6, $7, $8, $9, $9, $10, $11, $12, $13, $8) ON CONFLICT (job_id) DO NOTHING",
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
        .bind(job.stale_at)
        .execute(self.conn().await?)
        .await
        .map_err(db("insert job"))?
        .rows_affected();
        if n == 1 {
            return Ok(JobInsert::Created);
        }
        let revived = sqlx::query(
            "UPDATE survey_jobs SET status = 'pending', reason = NULL, due_at = $1, next_attempt_at = $1, \
             payload = $2, message_id = $3, locked_until = 0, updated_at = $4, stale_at = $6 \
             WHERE job_id = $5 AND status = 'cancelled' AND reason = 'discharge_cancelled'",
        )
        .bind(job.due_at)
        .bind(job.payload)
        .bind(job.message_id)
        .bind(now)
        .bind(job.job_id)
        .bind(job.stale_at)
        .execute(self.conn().await?)
        .await
        .map_err(db("reactivate job"))?
        .rows_affected();
        if revived == 1 {
            return Ok(JobInsert::Reactivated);
        }
        let status: String = sqlx::query("SELECT status FROM survey_jobs WHERE job_id = $1")
            .bind(job.job_id)
            .fetch_one(self.conn().await?)
            .await
            .and_then(|r| r.try_get("status"))
            .map_err(db("read job"))?;
        Ok(JobInsert::Exists { status })
    }

    /// Append an audit row (written with the transaction's next statement or its commit).
    pub async fn audit(&mut self, e: &AuditEntry<'_>) -> Result<(), StoreError> {
        let own = |s: Option<&str>| s.map(str::to_string);
        self.buffered.audit(buffered::AuditRow {
            at: self.clock.now_ms(),
            connector: own(e.connector),
            message_id: own(e.message_id),
            job_id: own(e.job_id),
            patient_key: own(e.patient_key),
            action: e.action.to_string(),
            rule: own(e.rule),
            reason: own(e.reason),
            detail: own(e.detail),
        });
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
        .execute(self.conn().await?)
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

    /// The `fail_commit` fault point (`CEM_BRIDGE_FAULT`, inert unless set): break this
    /// transaction for real so that the [`commit`](Self::commit) after it fails with the
    /// database's own error and nothing of it is stored. PostgreSQL: the transaction's backend
    /// is terminated, as when the server restarts or the connection drops just before the
    /// commit. SQLite: the transaction violates a deferred foreign key between two temporary
    /// tables, so the engine refuses the COMMIT and the transaction is rolled back.
    pub async fn fail_commit_if_faulted(&mut self) {
        if !fault::fails(fault::Point::FailCommit) {
            return;
        }
        let sql = match self.backend {
            Backend::Postgres => "SELECT pg_terminate_backend(pg_backend_pid())",
            Backend::Sqlite => {
                "CREATE TEMP TABLE cem_fault_parent (id INTEGER PRIMARY KEY); \
                 CREATE TEMP TABLE cem_fault_child (parent INTEGER \
                   REFERENCES cem_fault_parent (id) DEFERRABLE INITIALLY DEFERRED); \
                 INSERT INTO cem_fault_child (parent) VALUES (1);"
            }
        };
        // The terminated backend answers this statement with an error: expected, the commit
        // is what must fail.
        if let Ok(conn) = self.conn().await {
            let _ = sqlx::raw_sql(sql).execute(conn).await;
        }
    }

    pub async fn commit(mut self) -> Result<(), StoreError> {
        self.reader().await?;
        self.tx.commit().await.map_err(db("commit"))?;
        for (name, labels, n) in self.counts {
            crate::process::tally::note_counter(name, &labels, n);
            metrics::counter!(name, labels).increment(n);
        }
        Ok(())
    }
}

/// Every row read with `read`; a failure is `err` (`db("what was being read")`). Row structs
/// are mapped by column name in one function each (`job_row`, `dead_letter_record`, …) rather
/// than with sqlx's `FromRow` derive, which would build sqlx-core and the bundled SQLite a
/// second time for the macro.
pub(crate) fn read_rows<T>(
    rows: &[AnyRow],
    err: impl FnOnce(sqlx::Error) -> StoreError,
    read: impl Fn(&AnyRow) -> Result<T, sqlx::Error>,
) -> Result<Vec<T>, StoreError> {
    rows.iter().map(read).collect::<Result<_, _>>().map_err(err)
}

/// The `job_id` column of rows.
fn job_ids(rows: &[AnyRow]) -> Result<Vec<String>, sqlx::Error> {
    rows.iter()
        .map(|r| r.try_get::<String, _>("job_id"))
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

async fn audit_in(
    tx: &mut Transaction<'static, Any>,
    e: &AuditEntry<'_>,
    at: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit (at, connector, message_id, job_id, patient_key, action, rule, reason, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(at)
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

/// Wall-clock epoch milliseconds: when a migration was applied, and retention's "now" (the age
/// of stored rows in real time). Everything a rule decides is on the bridge's clock instead.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

fn redact(url: &str) -> String {
    cem_connectors::amqp::redact_url(url)
}

/// Keys per `IN (…)` statement and rows per multi-row insert: far below SQLite's and
/// PostgreSQL's bound-parameter limits.
pub(crate) const KEYS_PER_STATEMENT: usize = 500;

/// `$first, $first+1, …` for `n` bound values.
pub(crate) fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod schema_tests {
    use super::*;

    #[test]
    fn schema_version_is_the_last_migration_of_both_backends() {
        assert_eq!(SQLITE_MIGRATIONS.last().map(|m| m.0), Some(SCHEMA_VERSION));
        assert_eq!(
            POSTGRES_MIGRATIONS.last().map(|m| m.0),
            Some(SCHEMA_VERSION)
        );
    }
}
