//! Rows a [`StoreTx`](super::StoreTx) only appends — audit rows, sealed vault records and new
//! survey jobs — held in memory and written as one multi-row statement per table just before
//! the transaction runs any other statement, and at its commit. A batch of registrations is
//! then a handful of statements instead of several per message (issue 17).
//!
//! Nothing changes for a reader: every other statement of the transaction goes through
//! [`StoreTx::conn`](super::StoreTx::conn), which writes what is held first, so a read inside
//! the transaction sees every earlier write, in order. Audit rows keep their order (one
//! buffer, written in order). Vault records under the same pseudonym are folded as the
//! one-row upsert would have applied them: the later seal wins, the later last-event time is
//! kept.
//!
//! A job is held only when the transaction read, in the same transaction and with no other
//! statement since, that its id is absent ([`JobsAbsent`]); the insert still says `ON CONFLICT
//! DO NOTHING` and the number of rows it wrote is checked, so a concurrent instance that wrote
//! the same job between the read and the write fails the batch (written again, the job is then
//! found and the usual path taken) instead of being counted twice.

use std::collections::{HashMap, HashSet};

use sqlx::any::AnyArguments;
use sqlx::{Any, AnyConnection, AssertSqlSafe};

use crate::store::{Backend, StoreError, db};

/// Rows per statement: at most 16 bound values per row (a job's) × 256 = 4 096, far below
/// SQLite's and PostgreSQL's limits.
const ROWS_PER_STATEMENT: usize = 256;

/// An audit row held for the next write.
pub(crate) struct AuditRow {
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

/// A sealed vault record held for the next write.
pub(crate) struct VaultRow {
    pub pseudonym: String,
    pub key_id: String,
    pub sealed: Vec<u8>,
    pub last_event_at: i64,
}

/// A new pending survey job held for the next write.
pub(crate) struct JobRow {
    pub job_id: String,
    pub template: String,
    pub patient_key: String,
    pub visit_key: String,
    pub due_at: i64,
    pub payload: String,
    pub connector: String,
    pub message_id: String,
    pub now: i64,
    pub id_card_key: Option<String>,
    pub mobile_key: Option<String>,
    pub dnd: i64,
    pub stale_at: Option<i64>,
}

/// What one transaction holds.
#[derive(Default)]
pub(crate) struct Buffered {
    audit: Vec<AuditRow>,
    vault: Vec<VaultRow>,
    /// pseudonym → index in `vault`.
    vault_at: HashMap<String, usize>,
    jobs: Vec<JobRow>,
}

impl Buffered {
    pub(crate) fn is_empty(&self) -> bool {
        self.audit.is_empty() && self.vault.is_empty() && self.jobs.is_empty()
    }

    pub(crate) fn audit(&mut self, row: AuditRow) {
        self.audit.push(row);
    }

    /// Hold `row`, folded into a record already held under its pseudonym as two upserts in a
    /// row would leave it.
    pub(crate) fn vault(&mut self, row: VaultRow) {
        match self.vault_at.get(&row.pseudonym) {
            Some(&i) => {
                let held = &mut self.vault[i];
                held.key_id = row.key_id;
                held.sealed = row.sealed;
                held.last_event_at = held.last_event_at.max(row.last_event_at);
            }
            None => {
                self.vault_at
                    .insert(row.pseudonym.clone(), self.vault.len());
                self.vault.push(row);
            }
        }
    }

    pub(crate) fn job(&mut self, row: JobRow) {
        self.jobs.push(row);
    }

    /// Write everything held, one statement per table (per [`ROWS_PER_STATEMENT`] rows).
    pub(crate) async fn flush(
        &mut self,
        conn: &mut AnyConnection,
        backend: Backend,
    ) -> Result<(), StoreError> {
        if self.is_empty() {
            return Ok(());
        }
        let jobs = std::mem::take(&mut self.jobs);
        for chunk in jobs.chunks(ROWS_PER_STATEMENT) {
            let written = insert(
                conn,
                backend,
                "INSERT INTO survey_jobs (job_id, template, patient_key, visit_key, status, due_at, \
                 next_attempt_at, payload, connector, message_id, created_at, updated_at, id_card_key, \
                 mobile_key, dnd, stale_at, created_by) VALUES ",
                "(#, #, #, #, 'pending', #, #, #, #, #, #, #, #, #, #, #, #)",
                " ON CONFLICT (job_id) DO NOTHING",
                chunk,
                |q, j| {
                    q.bind(j.job_id.as_str())
                        .bind(j.template.as_str())
                        .bind(j.patient_key.as_str())
                        .bind(j.visit_key.as_str())
                        .bind(j.due_at)
                        .bind(j.due_at)
                        .bind(j.payload.as_str())
                        .bind(j.connector.as_str())
                        .bind(j.message_id.as_str())
                        .bind(j.now)
                        .bind(j.now)
                        .bind(j.id_card_key.as_deref())
                        .bind(j.mobile_key.as_deref())
                        .bind(j.dnd)
                        .bind(j.stale_at)
                        .bind(j.message_id.as_str())
                },
            )
            .await
            .map_err(db("insert jobs"))?;
            if written != chunk.len() as u64 {
                return Err(StoreError::Raced {
                    what: "survey job",
                    expected: chunk.len() as u64,
                    written,
                });
            }
        }
        let vault = std::mem::take(&mut self.vault);
        self.vault_at.clear();
        for chunk in vault.chunks(ROWS_PER_STATEMENT) {
            insert(
                conn,
                backend,
                "INSERT INTO vault (pseudonym, key_id, sealed, last_event_at) VALUES ",
                "(#, #, #, #)",
                " ON CONFLICT (pseudonym) DO UPDATE SET key_id = excluded.key_id, sealed = excluded.sealed, \
                 last_event_at = CASE WHEN excluded.last_event_at > vault.last_event_at \
                 THEN excluded.last_event_at ELSE vault.last_event_at END",
                chunk,
                |q, v| {
                    q.bind(v.pseudonym.as_str())
                        .bind(v.key_id.as_str())
                        .bind(v.sealed.as_slice())
                        .bind(v.last_event_at)
                },
            )
            .await
            .map_err(db("write vault record"))?;
        }
        let audit = std::mem::take(&mut self.audit);
        for chunk in audit.chunks(ROWS_PER_STATEMENT) {
            insert(
                conn,
                backend,
                "INSERT INTO audit (at, connector, message_id, job_id, patient_key, action, rule, reason, detail) VALUES ",
                "(#, #, #, #, #, #, #, #, #)",
                "",
                chunk,
                |q, a| {
                    q.bind(a.at)
                        .bind(a.connector.as_deref())
                        .bind(a.message_id.as_deref())
                        .bind(a.job_id.as_deref())
                        .bind(a.patient_key.as_deref())
                        .bind(a.action.as_str())
                        .bind(a.rule.as_deref())
                        .bind(a.reason.as_deref())
                        .bind(a.detail.as_deref())
                },
            )
            .await
            .map_err(db("write audit"))?;
        }
        Ok(())
    }
}

type Query<'q> = sqlx::query::Query<'q, Any, AnyArguments>;

/// `head` + one `row` per item (each `#` a fresh placeholder) + `tail`, bound with `bind`;
/// the rows written.
async fn insert<'q, R>(
    conn: &mut AnyConnection,
    backend: Backend,
    head: &str,
    row: &str,
    tail: &str,
    rows: &'q [R],
    bind: impl Fn(Query<'q>, &'q R) -> Query<'q>,
) -> Result<u64, sqlx::Error> {
    let sql = multi_row_sql(backend, head, row, tail, rows.len());
    let q = rows.iter().fold(sqlx::query(AssertSqlSafe(sql)), bind);
    Ok(q.execute(conn).await?.rows_affected())
}

/// `head` + `n` copies of `row` (comma-separated) + `tail`, each `#` a placeholder: `$1`, `$2`,
/// … across the statement on PostgreSQL, `?` on SQLite (sqlx looks a numbered SQLite
/// parameter up by name, which costs a walk of the statement's parameter list per value:
/// quadratic in a multi-row statement).
pub(crate) fn multi_row_sql(
    backend: Backend,
    head: &str,
    row: &str,
    tail: &str,
    n: usize,
) -> String {
    let per_row = row.matches('#').count();
    let mut sql = String::with_capacity(head.len() + n * (row.len() + per_row * 4) + tail.len());
    sql.push_str(head);
    let mut next = 1;
    for i in 0..n {
        if i > 0 {
            sql.push_str(", ");
        }
        for (k, part) in row.split('#').enumerate() {
            if k > 0 {
                match backend {
                    Backend::Sqlite => sql.push('?'),
                    Backend::Postgres => {
                        sql.push('$');
                        sql.push_str(&next.to_string());
                    }
                }
                next += 1;
            }
            sql.push_str(part);
        }
    }
    sql.push_str(tail);
    sql
}

/// The job ids the transaction read as absent, valid until it runs any other statement (which
/// may write a job): only then may a job be held rather than written at once.
#[derive(Default)]
pub(crate) struct JobsAbsent {
    /// `None` when not read, or no longer valid.
    ids: Option<HashSet<String>>,
}

impl JobsAbsent {
    pub(crate) fn set(&mut self, ids: HashSet<String>) {
        self.ids = Some(ids);
    }

    /// Another statement ran: what was read no longer holds.
    pub(crate) fn forget(&mut self) {
        self.ids = None;
    }

    /// Whether `job_id` is known absent; taking it (a held insert makes it present).
    pub(crate) fn take(&mut self, job_id: &str) -> bool {
        self.ids.as_mut().is_some_and(|ids| ids.remove(job_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_row_sql_numbers_every_placeholder_across_rows() {
        let sql = |b| {
            multi_row_sql(
                b,
                "INSERT INTO t (a, b, c) VALUES ",
                "(#, 'x', #)",
                " ON CONFLICT DO NOTHING",
                3,
            )
        };
        assert_eq!(
            sql(Backend::Postgres),
            "INSERT INTO t (a, b, c) VALUES ($1, 'x', $2), ($3, 'x', $4), ($5, 'x', $6) ON CONFLICT DO NOTHING"
        );
        assert_eq!(
            sql(Backend::Sqlite),
            "INSERT INTO t (a, b, c) VALUES (?, 'x', ?), (?, 'x', ?), (?, 'x', ?) ON CONFLICT DO NOTHING"
        );
    }

    #[test]
    fn vault_rows_under_one_pseudonym_fold_as_two_upserts_would() {
        let mut b = Buffered::default();
        let row = |sealed: u8, at: i64| VaultRow {
            pseudonym: "mk_1".into(),
            key_id: format!("k{sealed}"),
            sealed: vec![sealed],
            last_event_at: at,
        };
        b.vault(row(1, 50));
        b.vault(row(2, 10));
        assert_eq!(b.vault.len(), 1);
        assert_eq!(b.vault[0].sealed, vec![2], "the later seal wins");
        assert_eq!(b.vault[0].key_id, "k2");
        assert_eq!(
            b.vault[0].last_event_at, 50,
            "the later last-event time is kept"
        );
    }

    #[test]
    fn a_job_id_is_taken_once_and_forgotten_after_another_statement() {
        let mut a = JobsAbsent::default();
        assert!(!a.take("j1"), "nothing read: nothing known absent");
        a.set(["j1".to_string(), "j2".to_string()].into());
        assert!(a.take("j1"));
        assert!(!a.take("j1"), "held once: present afterwards");
        a.forget();
        assert!(!a.take("j2"));
    }
}
