//! What the store knows of a patient and a visit that a survey decision depends on, read in
//! one statement inside the ingest transaction (so an earlier message of the same batch — a
//! merge, a death, a cancel — is seen): the merge survivor (R-CAN-6), a tombstone (R-CAN-2),
//! the deceased flag (R-EXC-1) and the CEM's opt-outs (R-EXC-3). `cem_pipeline::survey::resolve`
//! decides with them.
//!
//! And what ingest writes about patients and visits: re-anchoring a visit's jobs (R-SRV-2),
//! cancellations (R-CAN-1, R-CAN-2 tombstones), deaths (R-EXC-1), contact updates (R-CAN-5)
//! and merges (R-CAN-6).

use std::collections::{HashMap, HashSet};

use cem_pipeline::survey::{FactKeys, PatientFacts, Tombstone};
use sqlx::Row;

use crate::store::{AuditEntry, StoreError, StoreTx, db, job_ids, query_in};

/// One row: the survivor of `$1` (patient key) if merged; the tombstone of `$2` (visit key)
/// still in force at `$4`; the deceased flag and the opt-outs of the final patient key (the
/// survivor, else `$1`) — opt-outs also of `$3` (mobile key).
const FACTS: &str = "SELECT \
    (SELECT survivor_key FROM patient_aliases WHERE alias_key = $1) AS survivor, \
    (SELECT reason FROM tombstones WHERE visit_key = $2 AND until > $4) AS tomb_reason, \
    (SELECT until FROM tombstones WHERE visit_key = $2 AND until > $4) AS tomb_until, \
    (SELECT deceased FROM patients WHERE patient_key = \
        COALESCE((SELECT survivor_key FROM patient_aliases WHERE alias_key = $1), $1)) AS deceased, \
    (SELECT COUNT(*) FROM opt_outs WHERE opt_key = $3 OR opt_key = \
        COALESCE((SELECT survivor_key FROM patient_aliases WHERE alias_key = $1), $1)) AS opted_out";

/// Keys per `IN (…)` statement: far below SQLite's and PostgreSQL's bound-parameter limits.
const IN_CHUNK: usize = 500;

impl StoreTx {
    /// The facts of a whole batch's jobs at `now`, one query per table (aliases, patients,
    /// opt-outs, tombstones) instead of one statement per job; `facts[i]` belongs to
    /// `keys[i]`, exactly as [`StoreTx::patient_facts`] would read it.
    pub async fn patient_facts_batch(
        &mut self,
        keys: &[FactKeys<'_>],
        now: i64,
    ) -> Result<Vec<PatientFacts>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let distinct = |it: &mut dyn Iterator<Item = &str>| -> Vec<String> {
            let mut seen = HashSet::new();
            it.filter(|k| seen.insert(*k)).map(str::to_string).collect()
        };
        let pks = distinct(&mut keys.iter().map(|k| k.patient_key));
        let survivors: HashMap<String, String> = self
            .pairs_in(
                "SELECT alias_key AS k, survivor_key AS v FROM patient_aliases WHERE alias_key IN ({keys})",
                &pks,
                "read aliases",
            )
            .await?
            .into_iter()
            .collect();
        let final_key = |k: &FactKeys<'_>| -> String {
            survivors
                .get(k.patient_key)
                .cloned()
                .unwrap_or_else(|| k.patient_key.to_string())
        };
        let finals: Vec<String> = keys.iter().map(final_key).collect();
        let deceased: HashSet<String> = self
            .pairs_in(
                "SELECT patient_key AS k, 'yes' AS v FROM patients WHERE deceased = 1 AND patient_key IN ({keys})",
                &distinct(&mut finals.iter().map(String::as_str)),
                "read patients",
            )
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let opt_keys = distinct(
            &mut finals
                .iter()
                .map(String::as_str)
                .chain(keys.iter().map(|k| k.mobile_key)),
        );
        let opted: HashSet<String> = self
            .pairs_in(
                "SELECT opt_key AS k, opt_key AS v FROM opt_outs WHERE opt_key IN ({keys})",
                &opt_keys,
                "read opt-outs",
            )
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let mut tombstones: HashMap<String, Tombstone> = HashMap::new();
        for chunk in distinct(&mut keys.iter().map(|k| k.visit_key)).chunks(IN_CHUNK) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let rows = query_in(
                "SELECT visit_key, reason, until FROM tombstones WHERE visit_key IN ({keys})",
                &refs,
            )
            .fetch_all(self.reader().await?)
            .await
            .map_err(db("read tombstones"))?;
            for r in rows {
                let read = || db("read tombstones");
                let until: i64 = r.try_get("until").map_err(read())?;
                if until > now {
                    tombstones.insert(
                        r.try_get("visit_key").map_err(read())?,
                        Tombstone {
                            reason: r.try_get("reason").map_err(read())?,
                            until_ms: until,
                        },
                    );
                }
            }
        }
        Ok(keys
            .iter()
            .zip(&finals)
            .map(|(k, fin)| PatientFacts {
                survivor: survivors.get(k.patient_key).cloned(),
                tombstone: tombstones.get(k.visit_key).cloned(),
                deceased: deceased.contains(fin),
                opted_out: opted.contains(fin) || opted.contains(k.mobile_key),
            })
            .collect())
    }

    /// `(k, v)` string columns of `sql` (with `IN ({keys})`) over `keys`, in chunks.
    async fn pairs_in(
        &mut self,
        sql: &str,
        keys: &[String],
        op: &'static str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut out = Vec::new();
        for chunk in keys.chunks(IN_CHUNK) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let rows = query_in(sql, &refs)
                .fetch_all(self.reader().await?)
                .await
                .map_err(db(op))?;
            for r in rows {
                out.push((
                    r.try_get("k").map_err(db(op))?,
                    r.try_get("v").map_err(db(op))?,
                ));
            }
        }
        Ok(out)
    }

    /// The facts of one scheduled job's patient and visit at `now` (epoch ms): the deceased
    /// flag and opt-outs are the survivor's when the patient was merged.
    pub async fn patient_facts(
        &mut self,
        keys: &FactKeys<'_>,
        now: i64,
    ) -> Result<PatientFacts, StoreError> {
        let row = sqlx::query(FACTS)
            .bind(keys.patient_key)
            .bind(keys.visit_key)
            .bind(keys.mobile_key)
            .bind(now)
            .fetch_one(self.reader().await?)
            .await
            .map_err(db("read patient facts"))?;
        let read = || db("read patient facts");
        let survivor: Option<String> = row.try_get("survivor").map_err(read())?;
        let tomb_reason: Option<String> = row.try_get("tomb_reason").map_err(read())?;
        let tomb_until: Option<i64> = row.try_get("tomb_until").map_err(read())?;
        let deceased: Option<i64> = row.try_get("deceased").map_err(read())?;
        let opted_out: i64 = row.try_get("opted_out").map_err(read())?;
        Ok(PatientFacts {
            survivor,
            tombstone: tomb_reason.map(|reason| Tombstone {
                reason,
                until_ms: tomb_until.unwrap_or(i64::MAX),
            }),
            deceased: deceased == Some(1),
            opted_out: opted_out > 0,
        })
    }
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

/// Which jobs a cancellation applies to.
#[derive(Debug, Clone, Copy)]
enum JobsOf {
    Visit,
    Patient,
}

impl StoreTx {
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
        .fetch_all(self.conn().await?)
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
            .execute(self.conn().await?)
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
                .fetch_all(self.conn().await?)
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
        .bind(crate::store::keys::thread_id(visit_key))
        .execute(self.conn().await?)
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
            .fetch_all(self.conn().await?)
            .await
            .map_err(db("cancel jobs"))?;
        let cancelled = job_ids(&rows).map_err(db("cancel jobs"))?;
        for id in &cancelled {
            crate::store::claim::release_touch(self.conn().await?, id).await?;
        }
        Ok(cancelled)
    }

    /// Is this patient flagged deceased (R-EXC-1, persisted per `pk`)?
    pub async fn is_deceased(&mut self, patient_key: &str) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("SELECT deceased FROM patients WHERE patient_key = $1")
                .bind(patient_key)
                .fetch_optional(self.conn().await?)
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
        .execute(self.conn().await?)
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
        .execute(self.conn().await?)
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
        .execute(self.conn().await?)
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
            .execute(self.conn().await?)
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
                .fetch_optional(self.conn().await?)
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
        .execute(self.conn().await?)
        .await
        .map_err(db("write alias"))?;
        // Aliases of the merged patient now point at the survivor too.
        sqlx::query("UPDATE patient_aliases SET survivor_key = $1 WHERE survivor_key = $2")
            .bind(survivor.as_str())
            .bind(merged)
            .execute(self.conn().await?)
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
        .execute(self.conn().await?)
        .await
        .map_err(db("merge touches"))?;
        let rows = sqlx::query(
            "UPDATE survey_jobs SET patient_key = $1 WHERE patient_key = $2 AND status = 'pending' RETURNING job_id",
        )
        .bind(survivor.as_str())
        .bind(merged)
        .fetch_all(self.conn().await?)
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
        .execute(self.conn().await?)
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
        .execute(self.conn().await?)
        .await
        .map_err(db("merge opt-out"))?;
        // R-FUP-4: pending calls and case updates follow the survivor (one call a day counts
        // the survivor's calls).
        sqlx::query(
            "UPDATE ticket_outbox SET patient_key = $1 WHERE patient_key = $2 AND status = 'pending'",
        )
        .bind(survivor.as_str())
        .bind(merged)
        .execute(self.conn().await?)
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
        .execute(self.conn().await?)
        .await
        .map_err(db("write tombstone"))?;
        Ok(())
    }
}
