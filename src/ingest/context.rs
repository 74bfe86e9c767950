//! What ingest works with: the context the runtime hands each source task, and a delivery as it
//! moves through a batch — prepared (decoded and decided, or rejected), then disposed (acked or
//! dead-lettered) by the transaction.

use std::sync::Arc;
use std::time::Instant;

use cem_connectors::source::Delivery;
use cem_pipeline::anonymize::Pseudonymizer;
use cem_pipeline::decode::Format;
use cem_pipeline::event::PatientEvent;
use cem_pipeline::followup::FollowupDecision;
use cem_pipeline::reason::{DeadLetterReason, Rejection};
use cem_pipeline::survey::SurveyDecision;
use jiff::tz::TimeZone;
use tokio::sync::Notify;

use crate::process::clock::Clock;
use crate::process::health::SourceHealth;
use crate::store::Store;

/// What ingest needs from the runtime.
pub struct IngestContext {
    /// Each source's compiled mappings, swapped whole by a reload.
    pub mappings: Arc<crate::process::live::Mappings>,
    pub store: Store,
    pub pseudo: Pseudonymizer,
    /// Seals what the vault keeps and dead-letter bodies (R-ANO-6, R-ANO-8).
    pub vault: crate::privacy::vault::VaultCipher,
    pub tenant: String,
    /// The survey policy (`[surveys]`), swapped whole by a config reload.
    pub policy: Arc<crate::process::live::Policy>,
    /// Opt-out and staff lists (R-EXC-3, R-EXC-4), swapped whole on reload.
    pub lists: Arc<crate::privacy::lists::Lists>,
    /// How each field is treated in the CEM dispatch (R-ANO-1).
    pub fields: cem_pipeline::anonymize::CemFieldPolicy,
    pub zone: TimeZone,
    pub clock: Clock,
    /// Woken after a commit that created jobs, so due jobs go out without waiting for a poll.
    pub scheduler_wake: Arc<Notify>,
    /// Where each source says whether it is consuming (read by `/ready`).
    pub health: SourceHealth,
    /// Follow-up planning (R-FUP-1..4); `None` when the ticket loop (which sends the calls) is
    /// not configured or `[followup] enabled = false`.
    pub followup: Option<crate::store::followups::FollowupCtx>,
    /// The codes tables with `unmatched: keep` did not know, fed after each commit (read by
    /// `/api/summary`).
    pub unmatched: crate::process::unmatched::UnmatchedCodes,
}

impl IngestContext {
    /// The survey decision and the follow-up plan of `event` at `now`, under the policy and
    /// lists current now (pure). Used when a delivery is prepared, and again by the batch when
    /// the patient record filled what the event lacked (R-PAT-3).
    pub(super) fn decide(
        &self,
        event: &PatientEvent,
        now: jiff::Timestamp,
    ) -> (SurveyDecision, FollowupDecision) {
        let lists = self.lists.current();
        let survey = cem_pipeline::survey::SurveyContext {
            tenant: &self.tenant,
            zone: &self.zone,
            pseudo: &self.pseudo,
            now,
            fields: &self.fields,
            lists: &lists,
        };
        let policy = self.policy.current();
        let decision = cem_pipeline::survey::decide(event, &policy, &survey);
        let followup = match &self.followup {
            Some(f) => {
                cem_pipeline::followup::decide(event, &policy, &survey, &f.settings, &f.windows)
            }
            None => FollowupDecision::None,
        };
        (decision, followup)
    }

    /// Whether `event`'s patient is a minor under the current policy (R-EXC-6).
    pub(super) fn is_minor(&self, event: &PatientEvent) -> bool {
        cem_pipeline::survey::is_minor(event, &self.policy.current(), &self.zone)
    }
}

/// A delivery after the pure work: decoded and decided, or rejected.
pub(super) struct Prepared {
    pub(super) msg: Delivery,
    pub(super) received: Instant,
    pub(super) hash: String,
    pub(super) result: Result<Mapped, Rejection>,
}

/// What the pure work made of a delivery.
pub(super) enum Mapped {
    Event(Format, Box<PatientEvent>, SurveyDecision, FollowupDecision),
    /// The mapping said `ignore`: ack, count, audit, no effect.
    Ignored {
        message_id: Option<String>,
        mapping: String,
    },
}

/// What the transaction decided for one delivery.
pub(super) enum Disposition {
    Ack,
    DeadLetter {
        reason: DeadLetterReason,
        detail: String,
    },
}
pub(super) fn message_id_of(p: &Prepared) -> Option<String> {
    match &p.result {
        Ok(Mapped::Event(_, e, _, _)) => Some(e.message_id.clone()),
        Ok(Mapped::Ignored { message_id, .. }) => {
            message_id.clone().or_else(|| p.msg.message_id.clone())
        }
        Err(_) => p.msg.message_id.clone(),
    }
}
