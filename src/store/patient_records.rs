//! The patient record's rows (R-PAT-1..4): one sealed `PatientRecord` per patient pseudonym,
//! kept in the vault table under `pr_…` (so the vault's key rotation and its retention —
//! `vault_days` after the patient's last event, R-ANO-6 — apply unchanged), read and written
//! inside the ingest transaction so a later message of the same batch sees an earlier one's.
//!
//! The record is the ingest's own memory, never handed to a peer: reading it here is not a
//! re-identification lookup (`store/vault.rs`), and what it filled is audited per message.

use cem_pipeline::patient_record::PatientRecord;
use sqlx::Row;
use tracing::warn;

use crate::privacy::vault::{VaultCipher, VaultError};
use crate::store::vault::VaultAccessError;
use crate::store::{StoreError, StoreTx, db};

/// The vault pseudonym of `patient_key`'s record: `pr_` and the same hash, so it can never be
/// mistaken for (or opened as) the `pk_` entry a survey's lookups read.
pub fn record_key(patient_key: &str) -> String {
    format!(
        "pr_{}",
        patient_key.strip_prefix("pk_").unwrap_or(patient_key)
    )
}

impl StoreTx {
    /// The record of `patient_key`, if any. A record that cannot be opened (its key id is no
    /// longer configured, or the row was altered) is logged with its pseudonym and treated as
    /// absent: ingest goes on, and the next patient-level event writes a fresh one.
    pub async fn patient_record(
        &mut self,
        cipher: &VaultCipher,
        patient_key: &str,
    ) -> Result<Option<PatientRecord>, StoreError> {
        let key = record_key(patient_key);
        let row = sqlx::query("SELECT key_id, sealed FROM vault WHERE pseudonym = $1")
            .bind(&key)
            .fetch_optional(self.conn().await?)
            .await
            .map_err(db("read patient record"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let key_id: String = row.try_get("key_id").map_err(db("read patient record"))?;
        let sealed: Vec<u8> = row.try_get("sealed").map_err(db("read patient record"))?;
        let opened = cipher.open(&key, &key_id, &sealed).and_then(|plain| {
            serde_json::from_slice::<PatientRecord>(&plain).map_err(|_| VaultError::Tampered {
                pseudonym: key.clone(),
            })
        });
        match opened {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                warn!(patient_key, error = %e, "the patient record cannot be opened; it is ignored and will be replaced by the next patient-level event");
                Ok(None)
            }
        }
    }

    /// R-PAT-2: merge `incoming` into `patient_key`'s record (newer facts win) and store it if
    /// anything changed. Returns the record as it now stands and the facts that changed.
    pub async fn merge_patient_record(
        &mut self,
        cipher: &VaultCipher,
        patient_key: &str,
        incoming: PatientRecord,
        now: i64,
    ) -> Result<(PatientRecord, Vec<&'static str>), VaultAccessError> {
        let mut record = self
            .patient_record(cipher, patient_key)
            .await?
            .unwrap_or_default();
        let changed = record.merge(incoming);
        if !changed.is_empty() {
            self.put_patient_record(cipher, patient_key, &record, now)
                .await?;
        }
        Ok((record, changed))
    }

    async fn put_patient_record(
        &mut self,
        cipher: &VaultCipher,
        patient_key: &str,
        record: &PatientRecord,
        now: i64,
    ) -> Result<(), VaultAccessError> {
        let plain = serde_json::to_vec(record).map_err(|_| VaultError::Seal)?;
        let key = record_key(patient_key);
        let (key_id, sealed) = cipher.seal(&key, &plain)?;
        self.put_sealed(&key, &key_id, sealed, now).await?;
        Ok(())
    }

    /// R-PAT-4 (A40, R-CAN-6): the merged patient's facts go to the survivor's record (newer
    /// facts win) and the merged patient's record is deleted. Returns the facts the survivor
    /// gained.
    pub async fn move_patient_record(
        &mut self,
        cipher: &VaultCipher,
        merged: &str,
        survivor: &str,
        now: i64,
    ) -> Result<Vec<&'static str>, VaultAccessError> {
        let Some(from) = self.patient_record(cipher, merged).await? else {
            return Ok(Vec::new());
        };
        let (_, changed) = self
            .merge_patient_record(cipher, survivor, from, now)
            .await?;
        sqlx::query("DELETE FROM vault WHERE pseudonym = $1")
            .bind(record_key(merged))
            .execute(self.conn().await?)
            .await
            .map_err(db("delete merged patient record"))?;
        Ok(changed)
    }
}
