//! The vault's rows: sealed records written in the ingest transaction and the audited lookup
//! (R-ANO-6). The sealing itself is `privacy::vault`; only this file reads or writes `vault`.

use cem_pipeline::reid::{self, VaultRecord};
use sqlx::Row;

use crate::privacy::vault::{Access, Lookup, VaultCipher, VaultError};
use crate::store::{AuditEntry, Store, StoreError, StoreTx, db};

/// A vault write or lookup that failed: the cipher (key, tampering) or the store under it.
#[derive(Debug, thiserror::Error)]
pub enum VaultAccessError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl VaultAccessError {
    /// As the store error a batch's retry understands: a store failure stays one, a key or
    /// sealing failure is [`StoreError::Sealing`].
    pub fn into_store(self) -> StoreError {
        match self {
            Self::Store(s) => s,
            Self::Vault(_) => StoreError::Sealing,
        }
    }
}

impl StoreTx {
    /// Seal and store `record` under `pseudonym` (replacing what was there), noting `now` as the
    /// patient's last event for the purge (R-ANO-6) unless a later one is already noted (a
    /// follow-up plan notes its last step, so a new visit does not shorten its keep).
    pub async fn vault_put(
        &mut self,
        cipher: &VaultCipher,
        pseudonym: &str,
        record: &VaultRecord,
        now: i64,
    ) -> Result<(), VaultAccessError> {
        let plain = serde_json::to_vec(record).map_err(|_| VaultError::Seal)?;
        let (key_id, sealed) = cipher.seal(pseudonym, &plain)?;
        self.put_sealed(pseudonym, &key_id, sealed, now).await?;
        Ok(())
    }

    /// Store a sealed row under `pseudonym`, keeping the later of its last-event times.
    pub(crate) async fn put_sealed(
        &mut self,
        pseudonym: &str,
        key_id: &str,
        sealed: Vec<u8>,
        now: i64,
    ) -> Result<(), StoreError> {
        self.buffered.vault(super::buffered::VaultRow {
            pseudonym: pseudonym.to_string(),
            key_id: key_id.to_string(),
            sealed,
            last_event_at: now,
        });
        Ok(())
    }
}

impl Store {
    /// The sealed record under `pseudonym`: (key id, sealed bytes).
    async fn vault_row(&self, pseudonym: &str) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        let row = sqlx::query("SELECT key_id, sealed FROM vault WHERE pseudonym = $1")
            .bind(pseudonym)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read vault record"))?;
        row.map(|r| Ok((r.try_get("key_id")?, r.try_get("sealed")?)))
            .transpose()
            .map_err(db("read vault record"))
    }

    /// R-ANO-6: read what `access` may see of `pseudonym`, audit the lookup (never a clear
    /// value), and return it. A tampered row is an error, audited `error`.
    pub async fn vault_lookup(
        &self,
        cipher: &VaultCipher,
        access: Access<'_>,
        pseudonym: &str,
    ) -> Result<Lookup, VaultAccessError> {
        let result = match reid::allowed(access.caller, access.purpose) {
            None => Ok(Lookup::Denied),
            Some(fields) => match self.vault_row(pseudonym).await? {
                None => Ok(Lookup::NotFound),
                Some((key_id, sealed)) => cipher
                    .open(pseudonym, &key_id, &sealed)
                    .and_then(|plain| {
                        serde_json::from_slice::<VaultRecord>(&plain).map_err(|_| {
                            VaultError::Tampered {
                                pseudonym: pseudonym.to_string(),
                            }
                        })
                    })
                    .map(|r| r.only(fields))
                    .map(|r| {
                        if r.is_empty() {
                            Lookup::NotFound
                        } else {
                            Lookup::Found(r)
                        }
                    }),
            },
        };
        let outcome = match &result {
            Ok(l) => l.outcome(),
            Err(_) => "error",
        };
        let detail = format!(
            "caller={} purpose={}",
            access.caller.code(),
            access.purpose.code()
        );
        let mut tx = self.begin().await?;
        tx.audit(&AuditEntry {
            job_id: access.job_id,
            patient_key: Some(pseudonym),
            action: "vault_lookup",
            rule: Some("R-ANO-6"),
            reason: Some(outcome),
            detail: Some(&detail),
            ..Default::default()
        })
        .await?;
        tx.commit().await?;
        metrics::counter!("cem_bridge_reid_lookups_total", "caller" => access.caller.code(),
                          "purpose" => access.purpose.code(), "outcome" => outcome)
        .increment(1);
        result.map_err(VaultAccessError::from)
    }
}
