//! Survey decisions for the foundation slice: which survey an event triggers, when, or why not,
//! and the anonymised CEM dispatch payload (R-SRV-1/2/5 in part, R-EXC-1, R-EVT-5, R-ANO-1/7).
//!
//! The slice's rules: REGISTERED with class O → the outpatient template; DISCHARGED with class I
//! → the inpatient template; due = anchor (PV1-44 resp. PV1-45, else the event time) + a
//! configured delay. Quiet hours, DND, cancellations and the other exclusions come with the
//! survey engine.

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::anonymize::{Pseudonymizer, age_band, hex, mask_name};
use crate::event::{EventKind, PatientClass, PatientEvent};
use crate::time::{rfc3339_in, truncate_to_hour};

/// Slice survey rules (from config).
#[derive(Debug, Clone)]
pub struct SurveyRules {
    pub tenant: String,
    pub outpatient_template: String,
    pub inpatient_template: String,
    pub channel: String,
    /// Added to the anchor time.
    pub delay: SignedDuration,
    pub zone: TimeZone,
}

/// Disposition codes (UB-04) of class DEATH (R-EXC-8).
pub const DEATH_DISPOSITIONS: [&str; 4] = ["20", "40", "41", "42"];

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
    pub payload: SurveyDispatch,
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
    pub sex: &'static str,
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
    /// Visit start or discharge time, truncated to the hour (R-ANO-1).
    pub visit_time: String,
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

/// Decide what an event means for surveys.
pub fn decide(event: &PatientEvent, rules: &SurveyRules, pseudo: &Pseudonymizer) -> SurveyDecision {
    let (template, anchor_of) = match event.kind {
        EventKind::Registered => (&rules.outpatient_template, PatientClass::Outpatient),
        EventKind::Discharged => (&rules.inpatient_template, PatientClass::Inpatient),
        _ => {
            return SurveyDecision::Record {
                reason: "no_survey_for_event",
            };
        }
    };
    if !event.production {
        return SurveyDecision::Suppress {
            reason: "non_production",
            rule: "R-EVT-5",
        };
    }
    let Some(visit) = &event.visit else {
        // Decoders refuse visit events without a visit number; keep the core total anyway.
        return SurveyDecision::Suppress {
            reason: "no_rule",
            rule: "R-SRV-1",
        };
    };
    if visit.class != anchor_of {
        return SurveyDecision::Suppress {
            reason: "no_rule",
            rule: "R-SRV-1",
        };
    }
    let death_disposition = visit
        .disposition
        .as_deref()
        .is_some_and(|d| DEATH_DISPOSITIONS.contains(&d));
    if event.patient.deceased || death_disposition {
        return SurveyDecision::Suppress {
            reason: "deceased",
            rule: "R-EXC-1",
        };
    }
    let anchor = match event.kind {
        EventKind::Registered => visit.start,
        _ => visit.discharge,
    }
    .unwrap_or(event.event_time);
    let due_at = anchor.checked_add(rules.delay).unwrap_or(anchor);
    let pk = pseudo.patient_key(&event.patient.id);
    let vk = pseudo.visit_key(&visit.facility, visit.number.expose());
    let job_id = job_id(&rules.tenant, &vk, template);
    let event_date = event.event_time.to_zoned(rules.zone.clone()).date();
    let payload = SurveyDispatch {
        request_id: idempotency_key(&job_id),
        job_id: job_id.clone(),
        template_id: template.clone(),
        channel: rules.channel.clone(),
        key_id: pseudo.key_id().to_string(),
        due_at: rfc3339_in(due_at, &rules.zone),
        patient: DispatchPatient {
            pk: pk.clone(),
            name_masked: event.patient.name.as_ref().map(|n| mask_name(n.expose())),
            sex: event.patient.sex.code(),
            age_band: event
                .patient
                .birth_date
                .and_then(|b| age_band(b, event_date)),
            city: event.patient.city.clone(),
        },
        visit: DispatchVisit {
            vk: vk.clone(),
            event: event.kind.code(),
            visit_class: visit.class.code(),
            hospital: visit.facility.clone(),
            dept_code: visit.dept_code.clone(),
            dept_name: visit.dept_name.clone(),
            doctor_code: visit.doctor_code.clone(),
            visit_time: rfc3339_in(truncate_to_hour(anchor, &rules.zone), &rules.zone),
        },
    };
    SurveyDecision::Schedule(Box::new(SurveyJob {
        job_id,
        template: template.clone(),
        due_at,
        patient_key: pk,
        visit_key: vk,
        payload,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{DecodeOptions, decode};

    const A04: &str = "MSH|^~\\&|HIS|HXEYE_SH01|CEM-BRIDGE|CEM|20261120093015||ADT^A04^ADT_A01|MSG20261120093015001|P|2.5|||AL|NE||UNICODE UTF-8\rEVN|A04|20261120093000\rPID|1||P00012345^^^HXEYE^PI~110101199003071233^^^CHN^NI||张^三明||19900307|M|||中山北路100号^^上海市^^200010^CHN||13812345678^PRN^CP|||||||||||||||||N\rPV1|1|O|OPH01^^^HXEYE_SH01^^^^^眼科门诊||||D1024^李^建国|||OPH01|||||||||V20261120001|||||||||||||||||||||||||20261120093000\r";

    fn rules(delay_min: i64) -> SurveyRules {
        SurveyRules {
            tenant: "hxeye".into(),
            outpatient_template: "OP-SAT-01".into(),
            inpatient_template: "IP-SAT-01".into(),
            channel: "sms".into(),
            delay: SignedDuration::from_mins(delay_min),
            zone: crate::time::default_zone(),
        }
    }

    fn event(s: &str) -> PatientEvent {
        let opts = DecodeOptions {
            now: "2026-11-23T00:00:00Z".parse().unwrap(),
            ..Default::default()
        };
        decode(s.as_bytes(), &opts).unwrap().1
    }

    fn pseudo() -> Pseudonymizer {
        Pseudonymizer::new(&[3u8; 32], "k1").unwrap()
    }

    #[test]
    fn r_srv_1_a04_outpatient_schedules_op_template_due_at_anchor_plus_delay() {
        let SurveyDecision::Schedule(job) = decide(&event(A04), &rules(120), &pseudo()) else {
            panic!("expected a job");
        };
        assert_eq!(job.template, "OP-SAT-01");
        assert_eq!(
            rfc3339_in(job.due_at, &crate::time::default_zone()),
            "2026-11-20T11:30:00+08:00",
            "EX-01: PV1-44 09:30 + 2 h"
        );
        assert_eq!(job.idempotency_key(), format!("sv:{}", job.job_id));
        let body = serde_json::to_string(&job.payload).unwrap();
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
    fn r_srv_5_same_visit_same_job_other_template_other_job() {
        let a = decide(&event(A04), &rules(0), &pseudo());
        let b = decide(
            &event(&A04.replace("MSG20261120093015001", "MSG-RESENT")),
            &rules(0),
            &pseudo(),
        );
        let (SurveyDecision::Schedule(a), SurveyDecision::Schedule(b)) = (a, b) else {
            panic!()
        };
        assert_eq!(a.job_id, b.job_id, "EX-04 / R-CAN-4");
        let mut r = rules(0);
        r.outpatient_template = "OP-REF-01".into();
        let SurveyDecision::Schedule(c) = decide(&event(A04), &r, &pseudo()) else {
            panic!()
        };
        assert_ne!(a.job_id, c.job_id);
        assert_eq!(a.job_id.len(), 32);
    }

    #[test]
    fn r_evt_5_non_production_and_r_srv_1_wrong_class() {
        let t = A04.replace("|P|2.5|", "|T|2.5|");
        assert_eq!(
            decide(&event(&t), &rules(0), &pseudo()),
            SurveyDecision::Suppress {
                reason: "non_production",
                rule: "R-EVT-5"
            }
        );
        let e = A04.replace("PV1|1|O|", "PV1|1|E|");
        assert_eq!(
            decide(&event(&e), &rules(0), &pseudo()),
            SurveyDecision::Suppress {
                reason: "no_rule",
                rule: "R-SRV-1"
            },
            "EX-20"
        );
    }

    #[test]
    fn r_exc_1_deceased_and_other_kinds() {
        let d = A04.replace(
            "||||||||||||||||N\rPV1",
            "|||||||||||||||20261121083000|Y\rPV1",
        );
        assert_eq!(
            decide(&event(&d), &rules(0), &pseudo()),
            SurveyDecision::Suppress {
                reason: "deceased",
                rule: "R-EXC-1"
            }
        );
        let a11 = A04
            .replace("ADT^A04^ADT_A01", "ADT^A11^ADT_A09")
            .replace("EVN|A04", "EVN|A11");
        assert_eq!(
            decide(&event(&a11), &rules(0), &pseudo()),
            SurveyDecision::Record {
                reason: "no_survey_for_event"
            }
        );
    }
}
