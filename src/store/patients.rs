//! What the store knows of a patient and a visit that a survey decision depends on, read in
//! one statement inside the ingest transaction (so an earlier message of the same batch — a
//! merge, a death, a cancel — is seen): the merge survivor (R-CAN-6), a tombstone (R-CAN-2),
//! the deceased flag (R-EXC-1) and the CEM's opt-outs (R-EXC-3). `cem_pipeline::survey::resolve`
//! decides with them.

use cem_pipeline::survey::{FactKeys, PatientFacts, Tombstone};
use sqlx::Row;

use crate::store::{StoreError, StoreTx, db};

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

impl StoreTx {
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
            .fetch_one(&mut *self.tx)
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
