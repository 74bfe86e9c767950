//! The final survey decision: the exclusions that need stored state, applied to a job
//! [`decide`](super::decide) scheduled, with facts the caller read from the store.
//!
//! In order, as the first that applies wins: R-CAN-6 (the job moves to the merged patient's
//! survivor), R-CAN-2 (a registration whose visit was cancelled before it arrived), R-EXC-1 (a
//! patient flagged deceased earlier), R-EXC-3 (an unsubscribe the CEM reported). The checks
//! after R-CAN-6 are about the patient the job ends with, so the caller reads the facts of a
//! batch in two steps, one query per table:
//!
//! 1. [`fact_keys`] of each decision; `patient_aliases` for their patient keys → each job's
//!    [`PatientFacts::survivor`];
//! 2. [`FactKeys::final_patient_key`] (the survivor, else the job's own key): `patients` and
//!    `opt_outs` for those keys (and the mobile keys), `tombstones` for the visit keys;
//!
//! then calls [`resolve`] on each decision with its facts.

use super::{SurveyDecision, suppress};
use crate::event::{EventKind, PatientEvent};

/// The keys a decision needs stored facts for: those of a scheduled job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FactKeys<'a> {
    /// The job's patient key (`pk_…`), before any merge is applied.
    pub patient_key: &'a str,
    /// The job's visit key (`vk_…`).
    pub visit_key: &'a str,
    /// The mobile key (`mk_…`) the survey goes to.
    pub mobile_key: &'a str,
}

impl<'a> FactKeys<'a> {
    /// The patient key whose deceased flag and opt-out are read: the survivor once the patient
    /// was merged into another (R-CAN-6), else the job's own.
    pub fn final_patient_key(&self, survivor: Option<&'a str>) -> &'a str {
        survivor.unwrap_or(self.patient_key)
    }
}

/// The keys `decision` needs facts for; `None` for a decision that [`resolve`] passes through
/// unchanged (anything but [`SurveyDecision::Schedule`]).
pub fn fact_keys(decision: &SurveyDecision) -> Option<FactKeys<'_>> {
    match decision {
        SurveyDecision::Schedule(job) => Some(FactKeys {
            patient_key: &job.patient_key,
            visit_key: &job.visit_key,
            mobile_key: &job.mobile_key,
        }),
        _ => None,
    }
}

/// A cancellation that arrived before its visit's registration (R-CAN-2): a `tombstones` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    /// `tombstones.reason`: the reason of the cancel (`visit_cancelled`, `discharge_cancelled`).
    pub reason: String,
    /// `tombstones.until`, epoch milliseconds; the tombstone counts while `now_ms < until_ms`.
    pub until_ms: i64,
}

/// What the store knows about the patient and visit of one scheduled job. The default is
/// "nothing stored": no merge, no tombstone, not deceased, not opted out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatientFacts {
    /// R-CAN-6: `patient_aliases.survivor_key` where `alias_key` is the job's patient key
    /// ([`FactKeys::patient_key`]); `None` when the patient was not merged. The store keeps
    /// aliases pointing at the final survivor, so one lookup is enough. A survivor equal to the
    /// job's own key moves nothing.
    pub survivor: Option<String>,
    /// R-CAN-2: the `tombstones` row of the job's visit key ([`FactKeys::visit_key`]), if any.
    /// Only a registration consults it.
    pub tombstone: Option<Tombstone>,
    /// R-EXC-1: `patients.deceased = 1` for the final patient key
    /// ([`FactKeys::final_patient_key`]: the survivor's, not the merged patient's); no row is
    /// `false`.
    pub deceased: bool,
    /// R-EXC-3: `opt_outs` holds an `opt_key` equal to the final patient key or to the job's
    /// mobile key ([`FactKeys::mobile_key`]).
    pub opted_out: bool,
}

/// The final decision for an event: a [`SurveyDecision::Schedule`] from
/// [`decide`](super::decide) checked against the stored `facts` of its job, at `now_ms` (epoch
/// milliseconds, the caller's clock); every other decision unchanged.
///
/// R-CAN-6 first: a job of a merged patient moves to the survivor (`patient_key` and the
/// payload's `pk`), and the remaining checks are the survivor's. Then the first that applies
/// stops the job: R-CAN-2 (a cancellation, [`SurveyDecision::CancelledBefore`]:
/// `visit_cancelled` when the stored reason is `visit_cancelled`, else `cancelled`;
/// registrations only), R-EXC-1 (`deceased`), R-EXC-3 (`opted_out`).
pub fn resolve(
    decision: SurveyDecision,
    event: &PatientEvent,
    facts: &PatientFacts,
    now_ms: i64,
) -> SurveyDecision {
    let SurveyDecision::Schedule(mut job) = decision else {
        return decision;
    };
    // R-CAN-6: events for a merged patient count for the survivor.
    if let Some(survivor) = &facts.survivor
        && *survivor != job.patient_key
    {
        job.patient_key.clone_from(survivor);
        job.payload.patient.pk.clone_from(survivor);
    }
    // R-CAN-2: the visit was cancelled before this registration arrived.
    if event.kind == EventKind::Registered
        && let Some(t) = &facts.tombstone
        && now_ms < t.until_ms
    {
        let reason = if t.reason == "visit_cancelled" {
            "visit_cancelled"
        } else {
            "cancelled"
        };
        return SurveyDecision::CancelledBefore {
            reason,
            rule: "R-CAN-2",
        };
    }
    // R-EXC-1: a patient flagged deceased earlier stays excluded.
    if facts.deceased {
        return suppress("deceased", "R-EXC-1");
    }
    // R-EXC-3: the CEM reported an unsubscribe of this patient or mobile.
    if facts.opted_out {
        return suppress("opted_out", "R-EXC-3");
    }
    SurveyDecision::Schedule(job)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::survey::tests::{A03, A04, at, decide_at, event, job};

    const SURVIVOR: &str = "pk_survivor";

    /// The A04 registration's job, as `decide` schedules it at 09:31.
    fn registration() -> (SurveyDecision, PatientEvent) {
        (decide_at(A04, "202611200931"), event(A04))
    }

    /// The A03 discharge's job, as `decide` schedules it at 16:00.
    fn discharge() -> (SurveyDecision, PatientEvent) {
        (decide_at(A03, "202611201600"), event(A03))
    }

    fn now_ms() -> i64 {
        at("20261120093100").as_millisecond()
    }

    fn run(d: (SurveyDecision, PatientEvent), facts: &PatientFacts) -> SurveyDecision {
        resolve(d.0, &d.1, facts, now_ms())
    }

    fn tombstone(reason: &str) -> Option<Tombstone> {
        Some(Tombstone {
            reason: reason.into(),
            until_ms: now_ms() + 7 * 24 * 3_600_000,
        })
    }

    fn suppression(d: SurveyDecision) -> (&'static str, &'static str) {
        match d {
            SurveyDecision::Suppress { reason, rule } => (reason, rule),
            other => panic!("expected a suppression, got {other:?}"),
        }
    }

    fn cancellation(d: SurveyDecision) -> (&'static str, &'static str) {
        match d {
            SurveyDecision::CancelledBefore { reason, rule } => (reason, rule),
            other => panic!("expected a cancellation, got {other:?}"),
        }
    }

    #[test]
    fn no_stored_facts_keep_the_job() {
        for d in [registration(), discharge()] {
            let want = d.0.clone();
            assert_eq!(run(d, &PatientFacts::default()), want);
        }
    }

    #[test]
    fn r_can_6_schedule_moves_to_survivor() {
        let d = registration();
        let before = job(d.0.clone());
        let facts = PatientFacts {
            survivor: Some(SURVIVOR.into()),
            ..Default::default()
        };
        let after = job(run(d, &facts));
        assert_eq!(after.patient_key, SURVIVOR);
        assert_eq!(after.payload.patient.pk, SURVIVOR);
        let mut back = after;
        back.patient_key.clone_from(&before.patient_key);
        back.payload
            .patient
            .pk
            .clone_from(&before.payload.patient.pk);
        assert_eq!(back, before, "only the patient key moves");
    }

    #[test]
    fn r_can_6_survivor_equal_to_the_own_key_moves_nothing() {
        let d = registration();
        let before = d.0.clone();
        let facts = PatientFacts {
            survivor: Some(job(before.clone()).patient_key),
            ..Default::default()
        };
        assert_eq!(run(d, &facts), before);
    }

    #[test]
    fn r_can_2_tombstone_cancels_a_registration() {
        let facts = PatientFacts {
            tombstone: tombstone("visit_cancelled"),
            ..Default::default()
        };
        assert_eq!(
            cancellation(run(registration(), &facts)),
            ("visit_cancelled", "R-CAN-2")
        );
        let facts = PatientFacts {
            tombstone: tombstone("discharge_cancelled"),
            ..Default::default()
        };
        assert_eq!(
            cancellation(run(registration(), &facts)),
            ("cancelled", "R-CAN-2"),
            "any other stored reason"
        );
    }

    #[test]
    fn r_can_2_expired_tombstone_is_ignored() {
        let (d, e) = registration();
        let facts = PatientFacts {
            tombstone: Some(Tombstone {
                reason: "visit_cancelled".into(),
                until_ms: now_ms(),
            }),
            ..Default::default()
        };
        assert_eq!(resolve(d.clone(), &e, &facts, now_ms()), d);
        assert_eq!(
            cancellation(resolve(d, &e, &facts, now_ms() - 1)),
            ("visit_cancelled", "R-CAN-2")
        );
    }

    #[test]
    fn r_can_2_tombstone_does_not_stop_a_discharge() {
        let d = discharge();
        let want = d.0.clone();
        let facts = PatientFacts {
            tombstone: tombstone("visit_cancelled"),
            ..Default::default()
        };
        assert_eq!(run(d, &facts), want);
    }

    #[test]
    fn r_exc_1_deceased_suppresses() {
        let facts = PatientFacts {
            deceased: true,
            ..Default::default()
        };
        for d in [registration(), discharge()] {
            assert_eq!(suppression(run(d, &facts)), ("deceased", "R-EXC-1"));
        }
    }

    #[test]
    fn r_exc_3_opted_out_suppresses() {
        let facts = PatientFacts {
            opted_out: true,
            ..Default::default()
        };
        for d in [registration(), discharge()] {
            assert_eq!(suppression(run(d, &facts)), ("opted_out", "R-EXC-3"));
        }
    }

    /// The deceased flag read for the survivor stops the moved job.
    #[test]
    fn r_can_6_then_r_exc_1_survivor_deceased_suppresses() {
        let facts = PatientFacts {
            survivor: Some(SURVIVOR.into()),
            deceased: true,
            ..Default::default()
        };
        assert_eq!(
            suppression(run(registration(), &facts)),
            ("deceased", "R-EXC-1")
        );
    }

    #[test]
    fn r_can_6_then_r_exc_3_survivor_opted_out_suppresses() {
        let facts = PatientFacts {
            survivor: Some(SURVIVOR.into()),
            opted_out: true,
            ..Default::default()
        };
        assert_eq!(
            suppression(run(discharge(), &facts)),
            ("opted_out", "R-EXC-3")
        );
    }

    #[test]
    fn r_can_2_before_r_exc_1_before_r_exc_3() {
        let all = PatientFacts {
            survivor: Some(SURVIVOR.into()),
            tombstone: tombstone("visit_cancelled"),
            deceased: true,
            opted_out: true,
        };
        assert_eq!(
            cancellation(run(registration(), &all)),
            ("visit_cancelled", "R-CAN-2")
        );
        let no_tombstone = PatientFacts {
            tombstone: None,
            ..all.clone()
        };
        assert_eq!(
            suppression(run(registration(), &no_tombstone)),
            ("deceased", "R-EXC-1")
        );
        let only_opt_out = PatientFacts {
            deceased: false,
            ..no_tombstone
        };
        assert_eq!(
            suppression(run(registration(), &only_opt_out)),
            ("opted_out", "R-EXC-3")
        );
    }

    #[test]
    fn other_decisions_pass_through_unchanged() {
        let a11 =
            include_str!("../../../tests/fixtures/samples/hl7v2/adt_a11_cancel_registration.hl7");
        let a08 = include_str!("../../../tests/fixtures/samples/hl7v2/adt_a08_update_phone.hl7");
        let a40 = include_str!("../../../tests/fixtures/samples/hl7v2/adt_a40_merge.hl7");
        let a03_outpatient = A03.replace("PV1|1|I|", "PV1|1|O|");
        let test_message = A04.replace("|P|2.5|", "|T|2.5|");
        let all = PatientFacts {
            survivor: Some(SURVIVOR.into()),
            tombstone: tombstone("visit_cancelled"),
            deceased: true,
            opted_out: true,
        };
        for (msg, now) in [
            (a11, "202611201016"),
            (a08, "202611201631"),
            (a40, "202611211000"),
            (a03_outpatient.as_str(), "202611201600"),
            (test_message.as_str(), "202611200931"),
        ] {
            let d = decide_at(msg, now);
            assert!(!matches!(d, SurveyDecision::Schedule(_)), "{d:?}");
            assert_eq!(fact_keys(&d), None);
            assert_eq!(resolve(d.clone(), &event(msg), &all, now_ms()), d);
        }
    }

    #[test]
    fn fact_keys_name_the_jobs_keys() {
        let (d, _) = registration();
        let j = job(d.clone());
        let keys = fact_keys(&d).unwrap();
        assert_eq!(
            keys,
            FactKeys {
                patient_key: &j.patient_key,
                visit_key: &j.visit_key,
                mobile_key: &j.mobile_key,
            }
        );
        assert_eq!(keys.final_patient_key(None), j.patient_key);
        assert_eq!(keys.final_patient_key(Some(SURVIVOR)), SURVIVOR);
    }
}
