//! The patient record (R-PAT-1..4): the latest contact facts per patient pseudonym, taken from
//! patient-level events (HL7 A28/A31/A08, 互联互通 S0001/S0002), kept sealed by the runtime, and
//! used to fill a registration or discharge that lacks them.
//!
//! Many 互联互通 platforms send the phone in S0001 个人信息注册 and never in S0023 门诊挂号
//! (R-EVT-8); without the record such a registration is `no_mobile` and no survey is ever sent.
//! Pure: sealing, storage and the audit are the runtime's (`src/store/patient_records.rs`).
//!
//! Each fact keeps the event time and the message it came from, so a late older message changes
//! nothing it does not know better (R-PAT-2, as R-CAN-5) and `trace` can say where a filled
//! value came from (R-PAT-3).

use std::fmt;

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use crate::anonymize::Pseudonymizer;
use crate::event::{EventKind, PatientEvent, Pii, Sex};

/// Where a fact came from: the message id and the trigger or service code as sent (`S0002`,
/// `A31`). Neither is personal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub message_id: String,
    pub trigger: String,
}

/// One fact with its event time (ms since the epoch) and origin.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fact<T> {
    pub value: T,
    pub at: i64,
    pub from: Origin,
}

/// What the record holds under one patient pseudonym (clear values: it is only ever stored
/// sealed). `Debug` shows which facts are present, never their values (R-ANO-8).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatientRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mobile: Option<Fact<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guardian_mobile: Option<Fact<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Fact<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_name: Option<Fact<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub birth_date: Option<Fact<Date>>,
    /// HL7 table 0001 code; `U` is never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sex: Option<Fact<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<Fact<String>>,
    /// `ik_…` of the 身份证号 (the clear number is never kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_card_key: Option<Fact<String>>,
}

impl fmt::Debug for PatientRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PatientRecord")
            .field("facts", &self.present())
            .finish()
    }
}

/// A value the record gave an event that lacked it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filled {
    /// `mobile`, `guardian_mobile`, `birth_date`, `name`, `sex`, `city`, `id_card_key`.
    pub field: &'static str,
    pub at: i64,
    pub from: Origin,
}

impl Filled {
    /// "mobile from S0002 message XMLPAT01 of 2026-11-19T10:00:00+08:00" (no value).
    pub fn describe(&self, zone: &TimeZone) -> String {
        let when = Timestamp::from_millisecond(self.at)
            .map(|t| crate::time::rfc3339_in(t, zone))
            .unwrap_or_else(|_| self.at.to_string());
        format!(
            "{} from {} message {} of {when}",
            self.field, self.from.trigger, self.from.message_id
        )
    }
}

/// Replace `slot` with `new` when `new` is at least as recent; `true` if it changed.
fn take<T: PartialEq>(slot: &mut Option<Fact<T>>, new: Option<Fact<T>>) -> bool {
    match (slot.as_ref(), new) {
        (_, None) => false,
        (Some(old), Some(n)) if n.at < old.at || *old == n => false,
        (_, Some(n)) => {
            *slot = Some(n);
            true
        }
    }
}

impl PatientRecord {
    /// The facts an event carries, stamped with its event time and origin.
    pub fn from_event(event: &PatientEvent, pseudo: &Pseudonymizer) -> Self {
        let at = event.event_time.as_millisecond();
        let from = Origin {
            message_id: event.message_id.clone(),
            trigger: event.trigger.clone(),
        };
        let fact = |value| {
            Some(Fact {
                value,
                at,
                from: from.clone(),
            })
        };
        let p = &event.patient;
        let text = |v: &Option<Pii<String>>| v.as_ref().and_then(|x| fact(x.expose().clone()));
        Self {
            mobile: text(&p.mobile),
            guardian_mobile: text(&p.guardian_mobile),
            name: text(&p.name),
            family_name: text(&p.family_name),
            birth_date: p.birth_date.map(|d| Fact {
                value: d,
                at,
                from: from.clone(),
            }),
            sex: (p.sex != Sex::Unknown)
                .then(|| fact(p.sex.code().to_string()))
                .flatten(),
            city: p.city.clone().and_then(fact),
            id_card_key: p
                .id_card
                .as_ref()
                .and_then(|i| fact(pseudo.id_card_key(i.expose()))),
        }
    }

    /// R-PAT-2: take each of `newer`'s facts that is at least as recent as the one held (an
    /// older message arriving late changes nothing it does not know better). Returns the names
    /// of the facts that changed.
    pub fn merge(&mut self, newer: PatientRecord) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut note = |name, did: bool| {
            if did {
                changed.push(name);
            }
        };
        note("mobile", take(&mut self.mobile, newer.mobile));
        note(
            "guardian_mobile",
            take(&mut self.guardian_mobile, newer.guardian_mobile),
        );
        note("name", take(&mut self.name, newer.name));
        note(
            "family_name",
            take(&mut self.family_name, newer.family_name),
        );
        note("birth_date", take(&mut self.birth_date, newer.birth_date));
        note("sex", take(&mut self.sex, newer.sex));
        note("city", take(&mut self.city, newer.city));
        note(
            "id_card_key",
            take(&mut self.id_card_key, newer.id_card_key),
        );
        changed
    }

    /// The names of the facts held.
    pub fn present(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut has = |name, yes: bool| {
            if yes {
                out.push(name);
            }
        };
        has("mobile", self.mobile.is_some());
        has("guardian_mobile", self.guardian_mobile.is_some());
        has("name", self.name.is_some());
        has("family_name", self.family_name.is_some());
        has("birth_date", self.birth_date.is_some());
        has("sex", self.sex.is_some());
        has("city", self.city.is_some());
        has("id_card_key", self.id_card_key.is_some());
        out
    }

    pub fn is_empty(&self) -> bool {
        self.present().is_empty()
    }

    /// R-PAT-3: `event` with what it lacks taken from the record — the visit's own values win
    /// — and the list of what was filled. The 身份证号 cannot be filled (the record holds only
    /// its pseudonym): the caller uses [`PatientRecord::id_card_key`] for do-not-disturb.
    pub fn fill(&self, event: &PatientEvent) -> (PatientEvent, Vec<Filled>) {
        let mut out = event.clone();
        let mut filled = Vec::new();
        let p = &mut out.patient;
        let mut note = |field, f: &Fact<_>| {
            filled.push(Filled {
                field,
                at: f.at,
                from: f.from.clone(),
            })
        };
        fn text<'a>(
            slot: &mut Option<Pii<String>>,
            fact: &'a Option<Fact<String>>,
        ) -> Option<&'a Fact<String>> {
            match (slot.is_none(), fact) {
                (true, Some(f)) => {
                    *slot = Some(Pii::new(f.value.clone()));
                    Some(f)
                }
                _ => None,
            }
        }
        if let Some(f) = text(&mut p.mobile, &self.mobile) {
            note("mobile", f);
        }
        if let Some(f) = text(&mut p.guardian_mobile, &self.guardian_mobile) {
            note("guardian_mobile", f);
        }
        if p.name.is_none() {
            if let Some(f) = text(&mut p.name, &self.name) {
                note("name", f);
            }
            text(&mut p.family_name, &self.family_name);
        }
        if p.birth_date.is_none()
            && let Some(f) = &self.birth_date
        {
            p.birth_date = Some(f.value);
            filled.push(Filled {
                field: "birth_date",
                at: f.at,
                from: f.from.clone(),
            });
        }
        if p.sex == Sex::Unknown
            && let Some(f) = &self.sex
        {
            p.sex = Sex::from_hl7(&f.value);
            filled.push(Filled {
                field: "sex",
                at: f.at,
                from: f.from.clone(),
            });
        }
        if p.city.is_none()
            && let Some(f) = &self.city
        {
            p.city = Some(f.value.clone());
            filled.push(Filled {
                field: "city",
                at: f.at,
                from: f.from.clone(),
            });
        }
        (out, filled)
    }
}

/// Whether a visit event may need the record: a registration or discharge, in production, that
/// lacks the mobile or the birth date, or the guardian's mobile for a minor (`minor` as the
/// survey rules judge it, asked only when it matters). Other events and complete ones need no
/// read.
pub fn needs_record(event: &PatientEvent, minor: impl FnOnce() -> bool) -> bool {
    let p = &event.patient;
    event.production
        && matches!(event.kind, EventKind::Registered | EventKind::Discharged)
        && (p.mobile.is_none()
            || p.birth_date.is_none()
            || (p.guardian_mobile.is_none() && minor()))
}

#[cfg(test)]
mod tests;
