//! What `POST /contact/resolve` reads of a survey job: its status, due time and mobile pseudonym.

use sqlx::Row;

use crate::store::{Store, StoreError, db};

impl Store {
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
}
