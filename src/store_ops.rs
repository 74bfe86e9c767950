//! Store queries for operations: the survey gauges behind `/metrics`.
//!
//! Kept apart from `store.rs` (the ingest and scheduler write paths) so operations work and
//! pipeline work do not collide; same `Store`, same sqlx `Any` code path on both backends.

use sqlx::Row;

use crate::store::{Store, StoreError};

fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Db { op, source }
}

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

impl Store {
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
