//! Survey decisions: which survey an event triggers (R-SRV-1), when (R-SRV-2..4), or which
//! exclusion stops it (R-EVT-5, R-EXC-1..8, checked in the order of domain rules §2.2, the first
//! match being the recorded reason), and the anonymised CEM dispatch payload (R-ANO-1, R-ANO-7).
//!
//! [`resolve`] makes the final decision with what the store knows, read by the caller: a merged
//! patient's survivor (R-CAN-6), a cancel that came before its registration (R-CAN-2), a
//! deceased flag stored earlier (R-EXC-1) and the CEM's unsubscribes (R-EXC-3). Do-not-disturb
//! (R-DND) and cancelling or re-anchoring pending jobs (R-CAN-1, R-CAN-3, R-SRV-2) are the
//! store's, at send time and on the stored jobs.

mod facts;

pub use facts::{FactKeys, PatientFacts, Tombstone, fact_keys, resolve};

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::anonymize::{
    AddressRule, BirthDateRule, CemFieldPolicy, NameRule, Pseudonymizer, VisitTimeRule, age_band,
    age_on, hex, mask_name,
};
use crate::event::{EventKind, PatientEvent};
use crate::lists::ExclusionLists;
use crate::policy::{RuleEvent, SurveyPolicy};
use crate::time::{rfc3339_in, truncate_to_hour};

/// What a decision needs besides the event and the policy.
#[derive(Debug, Clone, Copy)]
pub struct SurveyContext<'a> {
    pub tenant: &'a str,
    pub zone: &'a TimeZone,
    pub pseudo: &'a Pseudonymizer,
    /// Processing time (injectable clock).
    pub now: Timestamp,
    /// How each field is treated in the CEM dispatch (R-ANO-1, `[anonymization.cem]`).
    pub fields: &'a CemFieldPolicy,
    /// Opt-out and staff lists (R-EXC-3, R-EXC-4).
    pub lists: &'a ExclusionLists,
}

/// Discharge disposition classes of R-EXC-8 (UB-04 codes, as the samples use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DispositionClass {
    Routine,
    Transfer,
    Death,
    StillIn,
}

impl DispositionClass {
    /// Class of a PV1-36 code; `None` for a code the table does not know (counted
    /// `unknown_disposition`, treated as ROUTINE).
    pub fn of_ub04(code: &str) -> Option<Self> {
        Some(match code {
            "01" | "06" | "07" => Self::Routine,
            "02" | "03" | "04" | "05" | "43" | "50" | "51" | "61" | "62" | "63" | "64" | "65"
            | "66" | "70" => Self::Transfer,
            "20" | "40" | "41" | "42" => Self::Death,
            "30" => Self::StillIn,
            _ => return None,
        })
    }
}

/// What to do with an event.
#[derive(Debug, Clone, PartialEq)]
pub enum SurveyDecision {
    /// Create (or keep) this job.
    Schedule(Box<SurveyJob>),
    /// A survey would apply but a rule stops it; recorded with the reason.
    Suppress {
        reason: &'static str,
        rule: &'static str,
    },
    /// The event kind triggers no survey; recorded only.
    Record { reason: &'static str },
    /// A08: new demographics for the patient (R-CAN-5); stored only if not older than what is
    /// stored (EX-22).
    Update {
        patient_key: String,
        /// `mk_…` of the current contact mobile (the guardian's for minors), if any.
        mobile_key: Option<String>,
        deceased: bool,
        event_time: Timestamp,
    },
    /// A40: the merged patient becomes an alias of the survivor (R-CAN-6).
    Merge {
        survivor_key: String,
        merged_key: String,
    },
    /// R-SRV-2: an outpatient A03 (end of the visit) moves the visit's pending survey to the
    /// visit end + the outpatient delay.
    Reanchor {
        visit_key: String,
        due_at: Timestamp,
    },
    /// R-CAN-2: the visit was cancelled before this registration arrived. Recorded as a
    /// cancellation (`cancelled(visit_cancelled)`), the same outcome as a cancel that comes after
    /// the registration, so reports count cancellations in one place.
    CancelledBefore {
        reason: &'static str,
        rule: &'static str,
    },
    /// A11 / A13: cancel the visit's pending surveys (R-CAN-1, R-CAN-3).
    Cancel {
        visit_key: String,
        reason: &'static str,
        rule: &'static str,
    },
}

/// A survey to send: identity (R-SRV-5), time and the anonymised payload.
#[derive(Debug, Clone, PartialEq)]
pub struct SurveyJob {
    /// hash(tenant, visit key, template), 32 hex.
    pub job_id: String,
    pub template: String,
    pub due_at: Timestamp,
    pub patient_key: String,
    pub visit_key: String,
    /// `ik_…` of a valid 身份证号 (R-DND-1).
    pub id_card_key: Option<String>,
    /// `mk_…` of the mobile the survey goes to (the guardian's for minors) (R-DND-1).
    pub mobile_key: String,
    pub payload: SurveyDispatch,
    /// When the survey becomes stale (R-SRV-4): past it, the claim suppresses it
    /// `stale_event` instead of pushing (R-SRV-6, after an outage or long retries).
    pub stale_at: Timestamp,
}

impl SurveyJob {
    /// The CEM `Idempotency-Key` (R-SRV-5).
    pub fn idempotency_key(&self) -> String {
        idempotency_key(&self.job_id)
    }
}

/// `sv:{jobId}`.
pub fn idempotency_key(job_id: &str) -> String {
    format!("sv:{job_id}")
}

/// The JSON body of `POST {cem}/surveys/dispatch`. Holds no clear name, phone, ID number,
/// patient id or visit number (R-ANO-1, R-ANO-7).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SurveyDispatch {
    pub request_id: String,
    pub job_id: String,
    pub template_id: String,
    pub channel: String,
    pub key_id: String,
    pub due_at: String,
    pub patient: DispatchPatient,
    pub visit: DispatchVisit,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DispatchPatient {
    pub pk: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name_masked: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sex: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_band: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DispatchVisit {
    pub vk: String,
    pub event: &'static str,
    pub visit_class: &'static str,
    pub hospital: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dept_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dept_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub doctor_code: Option<String>,
    /// Visit start or discharge time, truncated to the hour (R-ANO-1) or the day.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub visit_time: Option<String>,
}

/// R-SRV-5 job id: first 32 hex of SHA-256(`job|tenant|vk|template`). The visit key is already
/// a keyed pseudonym, so the job id cannot be reversed to a visit number.
pub fn job_id(tenant: &str, visit_key: &str, template: &str) -> String {
    let mut h = Sha256::new();
    for (i, p) in ["job", tenant, visit_key, template].iter().enumerate() {
        if i > 0 {
            h.update(b"|");
        }
        h.update(p.as_bytes());
    }
    hex(&h.finalize()[..16])
}

fn suppress(reason: &'static str, rule: &'static str) -> SurveyDecision {
    SurveyDecision::Suppress { reason, rule }
}

/// The due time of R-SRV-2..3, and the stale deadline of R-SRV-4, for a visit event.
fn due_and_stale(
    event: &PatientEvent,
    visit: &crate::event::Visit,
    policy: &SurveyPolicy,
    zone: &TimeZone,
    now: Timestamp,
) -> (Timestamp, Timestamp, Timestamp) {
    let (anchor, due, stale_after) = if event.kind == EventKind::Registered {
        let anchor = visit.start.unwrap_or(event.event_time);
        let due = anchor
            .checked_add(SignedDuration::from_mins(policy.outpatient_delay_minutes))
            .unwrap_or(anchor);
        let stale = anchor
            .checked_add(SignedDuration::from_hours(policy.stale_outpatient_hours))
            .unwrap_or(anchor);
        (anchor, due, stale)
    } else {
        let anchor = visit.discharge.unwrap_or(event.event_time);
        let day = anchor.to_zoned(zone.clone()).date();
        let due = day
            .tomorrow()
            .ok()
            .and_then(|d| {
                d.to_datetime(policy.inpatient_send_time)
                    .to_zoned(zone.clone())
                    .ok()
            })
            .map(|z| z.timestamp())
            .unwrap_or(anchor);
        let stale = anchor
            .checked_add(SignedDuration::from_hours(policy.stale_inpatient_days * 24))
            .unwrap_or(anchor);
        (anchor, due, stale)
    };
    // R-SRV-4: a due time in the past means "at the next allowed time after processing".
    let due = shift_out_of_quiet_hours(due.max(now), policy, zone);
    (anchor, due, stale_after)
}

/// R-SRV-3: a time inside the quiet hours moves to `resume` — the same morning if it is before
/// the end of the quiet hours, else the next morning.
pub fn shift_out_of_quiet_hours(t: Timestamp, policy: &SurveyPolicy, zone: &TimeZone) -> Timestamp {
    let q = &policy.quiet_hours;
    if !q.enabled {
        return t;
    }
    let z = t.to_zoned(zone.clone());
    if !crate::policy::in_window(z.time(), q.start, q.end) {
        return t;
    }
    let day = if q.start > q.end && z.time() >= q.start {
        z.date().tomorrow().unwrap_or(z.date())
    } else {
        z.date()
    };
    day.to_datetime(q.resume)
        .to_zoned(zone.clone())
        .map(|z| z.timestamp())
        .unwrap_or(t)
}

/// Younger than `adult_age` at the event date (R-EXC-6); an unknown age counts as adult.
/// Whether the patient is under `adult_age` on the event date (unknown age counts as adult).
pub fn is_minor(event: &PatientEvent, policy: &SurveyPolicy, zone: &TimeZone) -> bool {
    let event_date = event.event_time.to_zoned(zone.clone()).date();
    event
        .patient
        .birth_date
        .and_then(|b| age_on(b, event_date))
        .is_some_and(|age| age < policy.adult_age)
}

/// Decide what an event means for surveys.
pub fn decide(
    event: &PatientEvent,
    policy: &SurveyPolicy,
    ctx: &SurveyContext<'_>,
) -> SurveyDecision {
    let rule_event = match event.kind {
        EventKind::Registered => RuleEvent::Registered,
        EventKind::Discharged => RuleEvent::Discharged,
        EventKind::Merged if event.production => {
            return match &event.merged_from {
                Some(merged) => SurveyDecision::Merge {
                    survivor_key: ctx.pseudo.patient_key(&event.patient.id),
                    merged_key: ctx.pseudo.patient_key(merged),
                },
                None => SurveyDecision::Record {
                    reason: "merge_without_mrg",
                },
            };
        }
        EventKind::Updated | EventKind::PatientRegistered if event.production => {
            let contact = if is_minor(event, policy, ctx.zone) {
                event.patient.guardian_mobile.as_ref()
            } else {
                event.patient.mobile.as_ref()
            };
            return SurveyDecision::Update {
                patient_key: ctx.pseudo.patient_key(&event.patient.id),
                mobile_key: contact.map(|m| ctx.pseudo.mobile_key(m.expose())),
                deceased: event.patient.deceased,
                event_time: event.event_time,
            };
        }
        EventKind::VisitCancelled | EventKind::DischargeCancelled if event.production => {
            let Some(visit) = &event.visit else {
                return SurveyDecision::Record {
                    reason: "no_survey_for_event",
                };
            };
            let (reason, rule) = if event.kind == EventKind::VisitCancelled {
                ("visit_cancelled", "R-CAN-1")
            } else {
                ("discharge_cancelled", "R-CAN-3")
            };
            return SurveyDecision::Cancel {
                visit_key: ctx.pseudo.visit_key(&visit.facility, visit.number.expose()),
                reason,
                rule,
            };
        }
        _ => {
            return SurveyDecision::Record {
                reason: "no_survey_for_event",
            };
        }
    };
    // 1 non_production (R-EVT-5)
    if !event.production {
        return suppress("non_production", "R-EVT-5");
    }
    // 2 no_rule (R-SRV-1)
    let Some(visit) = &event.visit else {
        return suppress("no_rule", "R-SRV-1");
    };
    // R-SRV-2: an A03 for an outpatient visit marks the end of the visit: the registration's
    // survey is re-anchored to it (the store applies it to a pending job only).
    if event.kind == EventKind::Discharged
        && visit.class == crate::event::PatientClass::Outpatient
        && let Some(end) = visit.discharge
    {
        let due = end
            .checked_add(SignedDuration::from_mins(policy.outpatient_delay_minutes))
            .unwrap_or(end);
        return SurveyDecision::Reanchor {
            visit_key: ctx.pseudo.visit_key(&visit.facility, visit.number.expose()),
            due_at: shift_out_of_quiet_hours(due.max(ctx.now), policy, ctx.zone),
        };
    }
    let Some(rule) = policy.rule_for(rule_event, visit.class.code(), visit.dept_code.as_deref())
    else {
        return suppress("no_rule", "R-SRV-1");
    };
    // 3..9: the exclusions of R-EXC-1..7.
    let Contact { pk, ik, mk, .. } = match screen(event, visit, policy, ctx, ListUse::Survey) {
        Ok(c) => c,
        Err((reason, rule)) => return suppress(reason, rule),
    };
    // 10 stale_event (R-SRV-4)
    let (anchor, due_at, stale_after) = due_and_stale(event, visit, policy, ctx.zone, ctx.now);
    if ctx.now > stale_after {
        return suppress("stale_event", "R-SRV-4");
    }
    let template = &rule.template;
    let channel = rule
        .channel
        .clone()
        .unwrap_or_else(|| policy.channel.clone());
    let vk = ctx.pseudo.visit_key(&visit.facility, visit.number.expose());
    let job_id = job_id(ctx.tenant, &vk, template);
    let payload = dispatch_payload(
        event, visit, ctx, &pk, &job_id, template, channel, due_at, anchor,
    );
    let mobile_key = mk;
    SurveyDecision::Schedule(Box::new(SurveyJob {
        job_id,
        template: template.clone(),
        due_at,
        patient_key: pk,
        visit_key: vk,
        id_card_key: ik,
        mobile_key,
        payload,
        stale_at: stale_after,
    }))
}

/// Which opt-out list an exclusion check uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListUse {
    /// R-EXC-3: the survey opt-out list.
    Survey,
    /// R-FUP-2: the follow-up opt-out list.
    Followup,
}

/// Who a message reaches once the exclusions passed: the patient's pseudonyms and the mobile
/// key it goes to (the guardian's for a minor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    pub pk: String,
    pub ik: Option<String>,
    pub mk: String,
    pub minor: bool,
}

/// R-EXC-1..7 in the order of domain rules §2.2 (deceased, disposition_excluded, opted_out,
/// staff, vip, minor_no_guardian, no_mobile); the first match is the `(reason, rule)`.
/// Shared by surveys and follow-ups (R-FUP-2).
pub fn screen(
    event: &PatientEvent,
    visit: &crate::event::Visit,
    policy: &SurveyPolicy,
    ctx: &SurveyContext<'_>,
    lists: ListUse,
) -> Result<Contact, (&'static str, &'static str)> {
    let disposition = visit
        .disposition
        .as_deref()
        .and_then(DispositionClass::of_ub04);
    // 3 deceased (R-EXC-1)
    if event.patient.deceased || disposition == Some(DispositionClass::Death) {
        return Err(("deceased", "R-EXC-1"));
    }
    // 4 disposition_excluded (R-EXC-2)
    if matches!(
        disposition,
        Some(DispositionClass::Transfer | DispositionClass::StillIn)
    ) {
        return Err(("disposition_excluded", "R-EXC-2"));
    }
    // 5 opted_out, 6 staff (R-EXC-3, R-EXC-4): on the keys the message would use.
    let pseudo = ctx.pseudo;
    let minor = is_minor(event, policy, ctx.zone);
    let would_contact = if minor {
        event.patient.guardian_mobile.as_ref()
    } else {
        event.patient.mobile.as_ref()
    };
    let pk = pseudo.patient_key(&event.patient.id);
    let ik = event
        .patient
        .id_card
        .as_ref()
        .map(|i| pseudo.id_card_key(i.expose()));
    let mk = would_contact.map(|m| pseudo.mobile_key(m.expose()));
    let listed = match lists {
        ListUse::Survey => ctx.lists.check(&pk, ik.as_deref(), mk.as_deref()),
        ListUse::Followup => ctx.lists.check_followup(&pk, ik.as_deref(), mk.as_deref()),
    };
    if let Some(hit) = listed {
        return Err(hit);
    }
    // 7 vip (R-EXC-5)
    let vip =
        visit.vip_indicator.as_deref().is_some_and(|v| {
            policy.vip_values.is_empty() || policy.vip_values.iter().any(|x| x == v)
        }) || event.patient.protected
            || event
                .patient
                .publicity_code
                .as_deref()
                .is_some_and(|c| policy.no_publicity_codes.iter().any(|x| x == c));
    if vip {
        return Err(("vip", "R-EXC-5"));
    }
    // 8 minor_no_guardian (R-EXC-6): unknown age counts as adult.
    if minor && would_contact.is_none() {
        return Err(("minor_no_guardian", "R-EXC-6"));
    }
    // 9 no_mobile (R-EXC-7)
    let Some(mk) = mk else {
        return Err(("no_mobile", "R-EXC-7"));
    };
    Ok(Contact { pk, ik, mk, minor })
}

/// The anonymised CEM body of a push (R-ANO-1, R-ANO-7) for `template` due at `due_at`;
/// `anchor` is the visit time the payload shows (generalised by `[anonymization.cem]`).
#[allow(clippy::too_many_arguments)]
pub fn dispatch_payload(
    event: &PatientEvent,
    visit: &crate::event::Visit,
    ctx: &SurveyContext<'_>,
    pk: &str,
    job_id: &str,
    template: &str,
    channel: String,
    due_at: Timestamp,
    anchor: Timestamp,
) -> SurveyDispatch {
    let zone = ctx.zone;
    let f = ctx.fields;
    let event_date = event.event_time.to_zoned(zone.clone()).date();
    SurveyDispatch {
        request_id: idempotency_key(job_id),
        job_id: job_id.to_string(),
        template_id: template.to_string(),
        channel,
        key_id: ctx.pseudo.key_id().to_string(),
        due_at: rfc3339_in(due_at, zone),
        patient: DispatchPatient {
            pk: pk.to_string(),
            name_masked: match f.name {
                NameRule::Mask => event.patient.name.as_ref().map(|n| mask_name(n.expose())),
                NameRule::Drop => None,
            },
            sex: f.sex.apply(Some(event.patient.sex.code())),
            age_band: match f.birth_date {
                BirthDateRule::AgeBand => event
                    .patient
                    .birth_date
                    .and_then(|b| age_band(b, event_date)),
                BirthDateRule::Drop => None,
            },
            city: match f.address {
                AddressRule::City => event.patient.city.clone(),
                AddressRule::Drop => None,
            },
        },
        visit: DispatchVisit {
            vk: ctx.pseudo.visit_key(&visit.facility, visit.number.expose()),
            event: event.kind.code(),
            visit_class: visit.class.code(),
            hospital: visit.facility.clone(),
            dept_code: f.department.apply(visit.dept_code.clone()),
            dept_name: f.department.apply(visit.dept_name.clone()),
            doctor_code: f.doctor_code.apply(visit.doctor_code.clone()),
            visit_time: match f.visit_time {
                VisitTimeRule::Hour => Some(rfc3339_in(truncate_to_hour(anchor, zone), zone)),
                VisitTimeRule::Day => Some(anchor.to_zoned(zone.clone()).date().to_string()),
                VisitTimeRule::Drop => None,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    //! Worked examples of domain rules §2.4 that need no stored state, on the shared samples.
    use super::*;
    use crate::decode::DecodeOptions;

    pub(super) const A04: &str =
        include_str!("../../../tests/fixtures/samples/hl7v2/adt_a04_outpatient_registration.hl7");
    pub(super) const A03: &str =
        include_str!("../../../tests/fixtures/samples/hl7v2/adt_a03_discharge.hl7");
    const A03_DEAD: &str =
        include_str!("../../../tests/fixtures/samples/hl7v2/adt_a03_discharge_deceased.hl7");
    const A04_ESC: &str = include_str!("../../../tests/fixtures/samples/hl7v2/adt_a04_escapes.hl7");

    fn zone() -> TimeZone {
        crate::time::default_zone()
    }

    pub(super) fn at(local: &str) -> Timestamp {
        crate::time::parse_hl7_ts(local, &zone()).unwrap()
    }

    pub(super) fn event(s: &str) -> PatientEvent {
        let opts = DecodeOptions::at(at("20261120120000"));
        crate::mapping::tests::decode_event(s.as_bytes(), &opts).unwrap()
    }

    fn pseudo() -> Pseudonymizer {
        Pseudonymizer::new(&[3u8; 32], "k1").unwrap()
    }

    /// Decide `msg` as processed at local time `now` (YYYYMMDDHHMM).
    pub(super) fn decide_at(msg: &str, now: &str) -> SurveyDecision {
        decide_with(msg, now, &SurveyPolicy::default())
    }

    fn decide_with(msg: &str, now: &str, policy: &SurveyPolicy) -> SurveyDecision {
        let (z, p) = (zone(), pseudo());
        let fields = CemFieldPolicy::default();
        let ctx = SurveyContext {
            tenant: "hxeye",
            zone: &z,
            pseudo: &p,
            now: at(now),
            fields: &fields,
            lists: &ExclusionLists::default(),
        };
        decide(&event(msg), policy, &ctx)
    }

    pub(super) fn job(d: SurveyDecision) -> SurveyJob {
        match d {
            SurveyDecision::Schedule(j) => *j,
            other => panic!("expected a job, got {other:?}"),
        }
    }

    fn local(t: Timestamp) -> String {
        rfc3339_in(t, &zone())
    }

    fn suppressed(d: SurveyDecision) -> &'static str {
        match d {
            SurveyDecision::Suppress { reason, .. } => reason,
            other => panic!("expected a suppression, got {other:?}"),
        }
    }

    /// R-SRV-2: an outpatient A03 re-anchors the visit's survey to PV1-45 + 2 h.
    #[test]
    fn r_srv_2_outpatient_a03_reanchors_to_the_visit_end_plus_two_hours() {
        let a03_o = A03.replace("PV1|1|I|", "PV1|1|O|");
        match decide_at(&a03_o, "202611201600") {
            SurveyDecision::Reanchor { visit_key, due_at } => {
                assert_eq!(local(due_at), "2026-11-20T17:55:00+08:00", "15:55 + 2 h");
                assert_eq!(
                    visit_key,
                    pseudo().visit_key("HXEYE_SH01", "Z2026111500087")
                );
            }
            other => panic!("expected a re-anchor, got {other:?}"),
        }
        // Quiet hours still apply (R-SRV-3): ended 19:30 → 21:30 → next morning 09:00.
        let late = a03_o.replace("|20261120155500", "|20261120193000");
        match decide_at(&late, "202611201600") {
            SurveyDecision::Reanchor { due_at, .. } => {
                assert_eq!(local(due_at), "2026-11-21T09:00:00+08:00")
            }
            other => panic!("expected a re-anchor, got {other:?}"),
        }
    }

    /// Issue 6 §1, R-ANO-1: `[anonymization.cem]` drops or generalises each field; the
    /// defaults are R-ANO-1's (mask, age band, sex, city, department, doctor code, hour).
    #[test]
    fn r_ano_1_cem_field_policy_drops_or_generalises_each_field() {
        use crate::anonymize::{AddressRule, BirthDateRule, KeepRule, NameRule, VisitTimeRule};
        let (z, p) = (zone(), pseudo());
        let run = |fields: &CemFieldPolicy| {
            let ctx = SurveyContext {
                tenant: "hxeye",
                zone: &z,
                pseudo: &p,
                now: at("202611200931"),
                fields,
                lists: &ExclusionLists::default(),
            };
            let j = job(decide(&event(A04), &SurveyPolicy::default(), &ctx));
            serde_json::to_value(&j.payload).unwrap()
        };
        let full = run(&CemFieldPolicy::default());
        assert_eq!(full["patient"]["nameMasked"], "张*明");
        assert_eq!(full["patient"]["ageBand"], "30-39");
        assert_eq!(full["patient"]["sex"], "M");
        assert_eq!(full["patient"]["city"], "上海市");
        assert_eq!(full["visit"]["deptCode"], "OPH01");
        assert_eq!(full["visit"]["doctorCode"], "D1024");
        assert_eq!(full["visit"]["visitTime"], "2026-11-20T09:00:00+08:00");
        let bare = run(&CemFieldPolicy {
            name: NameRule::Drop,
            birth_date: BirthDateRule::Drop,
            sex: KeepRule::Drop,
            address: AddressRule::Drop,
            department: KeepRule::Drop,
            doctor_code: KeepRule::Drop,
            visit_time: VisitTimeRule::Drop,
        });
        assert_eq!(
            bare["patient"]
                .as_object()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            ["pk"],
            "{bare}"
        );
        let visit: Vec<_> = bare["visit"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(visit, ["event", "hospital", "visitClass", "vk"], "{bare}");
        let day = run(&CemFieldPolicy {
            visit_time: VisitTimeRule::Day,
            ..Default::default()
        });
        assert_eq!(day["visit"]["visitTime"], "2026-11-20");
        assert_eq!(
            day["patient"], full["patient"],
            "only the visit time changed"
        );
    }

    #[test]
    fn ex_01_a04_op_sat_due_two_hours_after_the_visit_start() {
        let j = job(decide_at(A04, "202611200931"));
        assert_eq!(j.template, "OP-SAT-01");
        assert_eq!(local(j.due_at), "2026-11-20T11:30:00+08:00");
        assert_eq!(j.idempotency_key(), format!("sv:{}", j.job_id));
        assert!(
            j.id_card_key
                .as_deref()
                .is_some_and(|k| k.starts_with("ik_"))
        );
        assert_eq!(j.mobile_key, pseudo().mobile_key("13812345678"));
        let body = serde_json::to_string(&j.payload).unwrap();
        assert!(body.contains("\"nameMasked\":\"张*明\""), "{body}");
        assert!(body.contains("\"ageBand\":\"30-39\""), "{body}");
        assert!(
            body.contains("\"visitTime\":\"2026-11-20T09:00:00+08:00\""),
            "{body}"
        );
        for pii in [
            "P00012345",
            "张三明",
            "13812345678",
            "110101199003071233",
            "V20261120001",
            "1990",
        ] {
            assert!(!body.contains(pii), "R-ANO-1: {pii} in {body}");
        }
    }

    #[test]
    fn ex_05_a03_surgical_ward_gets_ip_surg_at_10_next_day() {
        let j = job(decide_at(A03, "202611201600"));
        assert_eq!(j.template, "IP-SURG-01", "CAT02 is a surgical ward");
        assert_eq!(local(j.due_at), "2026-11-21T10:00:00+08:00");
    }

    #[test]
    fn r_srv_5_ex_04_same_visit_same_job_other_template_other_job() {
        let a = job(decide_at(A04, "202611200931"));
        let b = job(decide_at(
            &A04.replace("MSG20261120093015001", "MSG-RESENT"),
            "202611200940",
        ));
        assert_eq!(a.job_id, b.job_id);
        let mut p = SurveyPolicy::default();
        p.rules[0].template = "OP-SAT-02".into();
        let c = job(decide_with(A04, "202611200931", &p));
        assert_ne!(a.job_id, c.job_id);
    }

    #[test]
    fn ex_08_deceased_and_ex_09_transfer() {
        assert_eq!(suppressed(decide_at(A03_DEAD, "202611210900")), "deceased");
        let transfer = A03.replace("|||01||||||||", "|||02||||||||");
        assert_eq!(
            suppressed(decide_at(&transfer, "202611201600")),
            "disposition_excluded"
        );
        let still_in = A03.replace("|||01||||||||", "|||30||||||||");
        assert_eq!(
            suppressed(decide_at(&still_in, "202611201600")),
            "disposition_excluded"
        );
        let died_code = A03.replace("|||01||||||||", "|||41||||||||");
        assert_eq!(
            suppressed(decide_at(&died_code, "202611201600")),
            "deceased"
        );
    }

    #[test]
    fn ex_10_minor_without_guardian_then_with_one() {
        assert_eq!(
            suppressed(decide_at(A04_ESC, "202611200931")),
            "minor_no_guardian"
        );
        let with = A04_ESC.replace("\rPV1|", "\rNK1|1|欧阳^丽|MTH||13900001111\rPV1|");
        let j = job(decide_at(&with, "202611200931"));
        assert_eq!(j.template, "OP-PED-01");
        assert_eq!(
            j.mobile_key,
            pseudo().mobile_key("13900001111"),
            "sent to the guardian"
        );
    }

    #[test]
    fn ex_11_quiet_hours_move_to_nine() {
        let evening = A04.replace(
            "|||||||||||||||||||||||||20261120093000",
            "|||||||||||||||||||||||||20261120194000",
        );
        let j = job(decide_at(&evening, "202611201941"));
        assert_eq!(
            local(j.due_at),
            "2026-11-21T09:00:00+08:00",
            "21:40 → next day 09:00"
        );
        let early = A04.replace(
            "|||||||||||||||||||||||||20261120093000",
            "|||||||||||||||||||||||||20261120053000",
        );
        let j = job(decide_at(&early, "202611200531"));
        assert_eq!(
            local(j.due_at),
            "2026-11-20T09:00:00+08:00",
            "07:30 → same day 09:00"
        );
    }

    #[test]
    fn r_srv_4_late_event_is_due_at_processing_time_and_stale_after_72h() {
        let j = job(decide_at(A04, "202611201300"));
        assert_eq!(
            local(j.due_at),
            "2026-11-20T13:00:00+08:00",
            "late: next allowed time"
        );
        let j = job(decide_at(A04, "202611202300"));
        assert_eq!(
            local(j.due_at),
            "2026-11-21T09:00:00+08:00",
            "late, at night: 09:00"
        );
        assert_eq!(
            suppressed(decide_at(A04, "202611250930")),
            "stale_event",
            "EX-19"
        );
        assert_eq!(
            suppressed(decide_at(A03, "202611280000")),
            "stale_event",
            "inpatient: 7 days"
        );
    }

    #[test]
    fn ex_17_landline_only_is_no_mobile() {
        let m = A04.replace("13812345678^PRN^CP", "02161234567^WPN^PH");
        assert_eq!(suppressed(decide_at(&m, "202611200931")), "no_mobile");
    }

    #[test]
    fn ex_18_vip_and_protection() {
        let vip = A04.replace("|OPH01|||||||||V2026", "|OPH01||||||Y|||V2026");
        assert_eq!(suppressed(decide_at(&vip, "202611200931")), "vip");
        let protected = A04.replace("\rPV1|", &format!("\rPD1{}Y\rPV1|", "|".repeat(12)));
        assert_eq!(suppressed(decide_at(&protected, "202611200931")), "vip");
        let p = SurveyPolicy {
            vip_values: vec!["V1".into()],
            ..Default::default()
        };
        assert!(
            matches!(
                decide_with(&vip, "202611200931", &p),
                SurveyDecision::Schedule(_)
            ),
            "Y is not in the list"
        );
    }

    #[test]
    fn ex_20_test_message_and_emergency_class() {
        let t = A04.replace("|P|2.5|", "|T|2.5|");
        assert_eq!(suppressed(decide_at(&t, "202611200931")), "non_production");
        let e = A04.replace("PV1|1|O|", "PV1|1|E|");
        assert_eq!(suppressed(decide_at(&e, "202611200931")), "no_rule");
    }

    #[test]
    fn exclusion_order_deceased_before_vip_before_minor() {
        let m = A04_ESC
            .replace("|||||||||||||||||N\r", "|||||||||||||||20261121083000|Y\r")
            .replace("|PED01|||||||||V2026", "|PED01||||||Y|||V2026");
        assert_eq!(suppressed(decide_at(&m, "202611200931")), "deceased");
    }

    #[test]
    fn r_can_1_and_r_can_3_cancels_name_the_visit_key() {
        let a11 =
            include_str!("../../../tests/fixtures/samples/hl7v2/adt_a11_cancel_registration.hl7");
        let a13 =
            include_str!("../../../tests/fixtures/samples/hl7v2/adt_a13_cancel_discharge.hl7");
        let reg = job(decide_at(A04, "202611200931"));
        match decide_at(a11, "202611201016") {
            SurveyDecision::Cancel {
                visit_key,
                reason,
                rule,
            } => {
                assert_eq!(
                    (visit_key, reason, rule),
                    (reg.visit_key, "visit_cancelled", "R-CAN-1")
                );
            }
            other => panic!("{other:?}"),
        }
        let dis = job(decide_at(A03, "202611201600"));
        match decide_at(a13, "202611201701") {
            SurveyDecision::Cancel {
                visit_key, reason, ..
            } => {
                assert_eq!((visit_key, reason), (dis.visit_key, "discharge_cancelled"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn r_can_5_a08_carries_the_new_mobile_key_and_death() {
        let a08 = include_str!("../../../tests/fixtures/samples/hl7v2/adt_a08_update_phone.hl7");
        match decide_at(a08, "202611201631") {
            SurveyDecision::Update {
                patient_key,
                mobile_key,
                deceased,
                ..
            } => {
                assert_eq!(patient_key, job(decide_at(A03, "202611201600")).patient_key);
                assert_eq!(
                    mobile_key,
                    Some(pseudo().mobile_key("13711112222")),
                    "EX-06"
                );
                assert!(!deceased);
            }
            other => panic!("{other:?}"),
        }
        let dead = a08.replace("|||||||||||||||||N\r", "|||||||||||||||20261121083000|Y\r");
        assert!(
            matches!(
                decide_at(&dead, "202611201631"),
                SurveyDecision::Update { deceased: true, .. }
            ),
            "EX-21"
        );
    }

    #[test]
    fn r_can_6_a40_names_survivor_and_merged_keys() {
        let a40 = include_str!("../../../tests/fixtures/samples/hl7v2/adt_a40_merge.hl7");
        let survivor = job(decide_at(A04, "202611200931")).patient_key;
        let other = A04.replace("P00012345^^^HXEYE^PI", "P00054321^^^HXEYE^PI");
        let merged = job(decide_at(&other, "202611200931")).patient_key;
        assert_eq!(
            decide_at(a40, "202611211000"),
            SurveyDecision::Merge {
                survivor_key: survivor,
                merged_key: merged
            }
        );
    }

    #[test]
    fn other_events_are_recorded_only() {
        let a01 = A04
            .replace("ADT^A04^ADT_A01", "ADT^A01^ADT_A01")
            .replace("EVN|A04", "EVN|A01");
        assert_eq!(
            decide_at(&a01, "202611200931"),
            SurveyDecision::Record {
                reason: "no_survey_for_event"
            }
        );
    }
}
