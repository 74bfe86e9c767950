//! The `opt_outs` table: the CEM's unsubscribes (R-EXC-3) recorded as the patient and mobile
//! pseudonyms of the survey answered, checked at scheduling and in the claim.

use cem_pipeline::unsubscribe::Subject;

use crate::store::{AuditEntry, Store, StoreError, db};

/// What recording an unsubscribe did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptOutRecorded {
    /// New opt-out rows were written (this many).
    Recorded(u64),
    /// Every pseudonym was already opted out (a repeated callback).
    Already,
    /// No survey job has this id (pruned, or another tenant's).
    UnknownJob,
}

impl OptOutRecorded {
    pub fn code(self) -> &'static str {
        match self {
            Self::Recorded(_) => "recorded",
            Self::Already => "already",
            Self::UnknownJob => "unknown_job",
        }
    }
}

impl Store {
    /// Record an unsubscribe from `source` (e.g. `cem:sms`): the job's patient (resolved
    /// through merges) and mobile pseudonyms; for a patient pseudonym alone, the patient and
    /// the mobile of the latest survey sent to them. Audited once.
    pub async fn record_opt_out(
        &self,
        subject: &Subject,
        source: &str,
        now: i64,
    ) -> Result<OptOutRecorded, StoreError> {
        let mut tx = self.begin().await?;
        let (job_id, keys) = match subject {
            Subject::Job(job_id) => {
                let row = sqlx::query(
                    "SELECT patient_key, mobile_key FROM survey_jobs WHERE job_id = $1",
                )
                .bind(job_id.as_str())
                .fetch_optional(tx.conn().await?)
                .await
                .map_err(db("read the unsubscribed job"))?;
                let Some(row) = row else {
                    return Ok(OptOutRecorded::UnknownJob);
                };
                use sqlx::Row;
                let pk: String = row.try_get("patient_key").map_err(db("read job"))?;
                let mk: Option<String> = row.try_get("mobile_key").map_err(db("read job"))?;
                let pk = tx.resolve_patient(&pk).await?;
                (Some(job_id.as_str()), [Some(pk), mk])
            }
            Subject::Patient(pk) => {
                // The reply came from a phone (issue 19 §6): the mobile the patient's latest
                // sent survey went to is opted out too, so a family member sharing it is not
                // surveyed either.
                let resolved = tx.resolve_patient(pk).await?;
                let mk = sqlx::query(
                    "SELECT mobile_key FROM survey_jobs WHERE patient_key IN ($1, $2) \
                     AND status = 'sent' AND mobile_key IS NOT NULL AND dnd = 1 \
                     ORDER BY sent_at DESC, job_id LIMIT 1",
                )
                .bind(pk.as_str())
                .bind(resolved.as_str())
                .fetch_optional(tx.conn().await?)
                .await
                .map_err(db("read the patient's last survey"))?;
                use sqlx::Row;
                let mk: Option<String> = match mk {
                    Some(r) => r.try_get("mobile_key").map_err(db("read job"))?,
                    None => None,
                };
                (None, [Some(resolved), mk])
            }
        };
        let mut added = 0;
        for key in keys.iter().flatten() {
            added += sqlx::query(
                "INSERT INTO opt_outs (opt_key, source, job_id, at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (opt_key) DO NOTHING",
            )
            .bind(key.as_str())
            .bind(source)
            .bind(job_id)
            .bind(now)
            .execute(tx.conn().await?)
            .await
            .map_err(db("record opt-out"))?
            .rows_affected();
        }
        if added == 0 {
            return Ok(OptOutRecorded::Already);
        }
        tx.audit(&AuditEntry {
            job_id,
            patient_key: keys[0].as_deref(),
            action: "opted_out",
            rule: Some("R-EXC-3"),
            reason: Some("cem_unsubscribe"),
            detail: Some(&format!(
                "{source}: {added} pseudonym(s) added to the opt-out table"
            )),
            ..Default::default()
        })
        .await?;
        tx.commit().await?;
        Ok(OptOutRecorded::Recorded(added))
    }
}
