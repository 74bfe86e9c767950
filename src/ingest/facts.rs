//! The stored facts a batch's decisions need (merge survivor, tombstone, deceased flag,
//! opt-outs), read for the whole batch at once — one query per table — inside the batch's
//! transaction, and read again for one message only when an earlier message of the same batch
//! changed them (a merge, a death, a cancel), so every decision sees what the messages before
//! it did.
//!
//! The batch read happens at the first decision that needs it, after the transaction's first
//! write (the inbox row): a SQLite transaction that reads first and writes later cannot take the
//! write lock while another connection (the scheduler's claim) holds it, and fails with
//! "database is locked" instead of waiting.

use std::collections::{HashMap, HashSet};

use cem_pipeline::followup::FollowupDecision;
use cem_pipeline::survey::{FactKeys, PatientFacts, fact_keys};

use crate::ingest::context::{Mapped, Prepared};
use crate::store::{StoreError, StoreTx};

/// The job keys a message's decisions need facts for: its survey job's, its follow-up plan's.
fn keys_of(p: &Prepared) -> Vec<FactKeys<'_>> {
    let Ok(Mapped::Event(_, _, decision, followup)) = &p.result else {
        return Vec::new();
    };
    let mut keys: Vec<FactKeys<'_>> = fact_keys(decision).into_iter().collect();
    if let FollowupDecision::Plan(plan) = followup {
        keys.push(plan_keys(plan));
    }
    keys
}

/// The keys a follow-up plan needs facts for (its stay stands for the visit).
pub(super) fn plan_keys(plan: &cem_pipeline::followup::FollowupPlan) -> FactKeys<'_> {
    FactKeys {
        patient_key: &plan.patient_key,
        visit_key: &plan.stay_key,
        mobile_key: &plan.mobile_key,
    }
}

type Id = (String, String, String);

fn id(k: &FactKeys<'_>) -> Id {
    (
        k.patient_key.to_string(),
        k.visit_key.to_string(),
        k.mobile_key.to_string(),
    )
}

/// One batch's facts.
pub(super) struct BatchFacts<'a> {
    /// Every job key of the batch, read together at the first [`BatchFacts::get`].
    keys: Vec<FactKeys<'a>>,
    read: Option<HashMap<Id, PatientFacts>>,
    /// Patient and visit keys an earlier message of this batch wrote facts for.
    changed: HashSet<String>,
}

impl<'a> BatchFacts<'a> {
    pub(super) fn new(prepared: &'a [Prepared]) -> Self {
        Self {
            keys: prepared.iter().flat_map(keys_of).collect(),
            read: None,
            changed: HashSet::new(),
        }
    }

    /// The facts of `keys` as they stand now in the transaction.
    pub(super) async fn get(
        &mut self,
        tx: &mut StoreTx,
        keys: &FactKeys<'_>,
        now: i64,
    ) -> Result<PatientFacts, StoreError> {
        let read = match &mut self.read {
            Some(read) => read,
            None => {
                let facts = tx.patient_facts_batch(&self.keys, now).await?;
                self.read
                    .insert(self.keys.iter().map(id).zip(facts).collect())
            }
        };
        let cached = read.get(&id(keys));
        let touched = [keys.patient_key, keys.visit_key, keys.mobile_key]
            .into_iter()
            .chain(cached.and_then(|f| f.survivor.as_deref()))
            .any(|k| self.changed.contains(k));
        match cached {
            Some(f) if !touched => Ok(f.clone()),
            _ => tx.patient_facts(keys, now).await,
        }
    }

    /// An earlier message of the batch wrote facts under `key` (patient or visit).
    pub(super) fn changed(&mut self, key: &str) {
        self.changed.insert(key.to_string());
    }
}
