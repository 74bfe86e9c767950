//! Field values → [`PatientEvent`], applying the rules no mapping should have to restate:
//! first valid mobile / 身份证号 (R-ID-1, R-ID-2), ID-card vs birth date and sex (R-ID-5), name
//! from family + given, deceased from PID-29 or PID-30 (R-EXC-1), the dead-letter reasons of
//! R-EVT-6 for missing patient ids and visit numbers.

use jiff::Timestamp;
use jiff::civil::{Date, DateTime};

use super::model::EventName;
use super::target::{Kind, Target};
use super::{ApplyContext, Mapping, Rule};
use crate::event::{
    EventKind, Patient, PatientClass, PatientEvent, PatientId, Pii, Sex, Visit, Warning,
};
use crate::identifiers::{id_card_birth_date, normalize_mobile, valid_id_card};
use crate::reason::{DeadLetterReason as R, Rejection};
use crate::time::{parse_hl7_date, parse_hl7_ts};

/// The canonical event kind of a mapping event name (`ignore` has none).
pub fn event_kind(n: EventName) -> Option<EventKind> {
    Some(match n {
        EventName::Registration => EventKind::Registered,
        EventName::RegistrationCancelled => EventKind::VisitCancelled,
        EventName::Admission => EventKind::Admitted,
        EventName::Discharge => EventKind::Discharged,
        EventName::DischargeCancelled => EventKind::DischargeCancelled,
        EventName::PatientUpdated => EventKind::Updated,
        EventName::PatientRegistered => EventKind::PatientRegistered,
        EventName::PatientMerged => EventKind::Merged,
        EventName::Ignore => return None,
    })
}

/// The mapping event name of a kind (for `cem-bridge map` and tests).
pub fn event_name(k: EventKind) -> EventName {
    match k {
        EventKind::Registered => EventName::Registration,
        EventKind::VisitCancelled => EventName::RegistrationCancelled,
        EventKind::Admitted => EventName::Admission,
        EventKind::Discharged => EventName::Discharge,
        EventKind::DischargeCancelled => EventName::DischargeCancelled,
        EventKind::Updated => EventName::PatientUpdated,
        EventKind::PatientRegistered => EventName::PatientRegistered,
        EventKind::Merged => EventName::PatientMerged,
    }
}

/// Parse a time: HL7 TS, RFC 3339 with offset, or a local `YYYY-MM-DD[ T]HH:MM[:SS]` / date.
pub fn parse_time(s: &str, zone: &jiff::tz::TimeZone) -> Option<Timestamp> {
    let s = s.trim();
    // HL7 TS starts with at least four digits and has no date separators.
    let head = &s.as_bytes()[..s.len().min(8)];
    if head.len() >= 4 && head.iter().all(u8::is_ascii_digit) {
        return parse_hl7_ts(s, zone).ok();
    }
    if let Ok(t) = s.parse::<Timestamp>() {
        return Some(t);
    }
    let dt = s.parse::<DateTime>().ok().or_else(|| {
        s.parse::<Date>()
            .ok()
            .map(|d| d.to_datetime(jiff::civil::time(0, 0, 0, 0)))
    })?;
    zone.to_ambiguous_zoned(dt)
        .compatible()
        .ok()
        .map(|z| z.timestamp())
}

/// Parse a date: HL7 DT (`19551212`, longer TS values use their date) or `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Option<Date> {
    let s = s.trim();
    if s.bytes().take(8).all(|b| b.is_ascii_digit()) && s.len() >= 8 {
        return parse_hl7_date(s).ok();
    }
    s.get(..10).and_then(|d| d.parse::<Date>().ok())
}

/// A sex code the field accepts: known HL7 table 0001 codes, case-insensitive.
pub(crate) fn known_sex(s: &str) -> Option<Sex> {
    let c = s.trim().to_ascii_uppercase();
    let x = Sex::from_hl7(&c);
    (x != Sex::Unknown || c == "U").then_some(x)
}

/// A patient class the field accepts: known HL7 table 0004 codes, case-insensitive.
pub(crate) fn known_class(s: &str) -> Option<PatientClass> {
    let c = s.trim().to_ascii_uppercase();
    let x = PatientClass::from_code(&c);
    (x != PatientClass::Unknown || c == "U").then_some(x)
}

pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" | "true" | "1" | "t" => Some(true),
        "n" | "no" | "false" | "0" | "f" => Some(false),
        _ => None,
    }
}

struct Fields<'a> {
    values: &'a [(Target, &'a Rule, Vec<String>)],
}

impl Fields<'_> {
    fn raw(&self, t: Target) -> &[String] {
        self.values
            .iter()
            .find(|(x, _, _)| *x == t)
            .map(|(_, _, v)| v.as_slice())
            .unwrap_or(&[])
    }
    fn rule(&self, t: Target) -> Option<&Rule> {
        self.values
            .iter()
            .find(|(x, _, _)| *x == t)
            .map(|(_, r, _)| *r)
    }
    fn text(&self, t: Target) -> Option<String> {
        debug_assert_eq!(t.kind(), Kind::Text);
        self.raw(t).first().cloned()
    }
    fn first<T>(&self, t: Target, f: impl Fn(&str) -> Option<T>) -> Option<T> {
        self.raw(t).iter().find_map(|v| f(v))
    }
    fn path_text(&self, t: Target) -> String {
        self.rule(t)
            .map(|r| r.text.clone())
            .unwrap_or_else(|| "(not mapped)".into())
    }
}

pub(super) fn build(
    m: &Mapping,
    name: EventName,
    code: Option<String>,
    values: &[(Target, &Rule, Vec<String>)],
    ctx: &ApplyContext<'_>,
) -> Result<PatientEvent, Rejection> {
    let Some(kind) = event_kind(name) else {
        return Err(Rejection::new(R::UnknownEvent, "ignore has no event"));
    };
    let f = Fields { values };
    let zone = ctx.zone;
    let message_id = f.text(Target::MessageId).ok_or_else(|| {
        Rejection::new(
            R::MissingField,
            format!(
                "message.id is empty at {} (mapping {})",
                f.path_text(Target::MessageId),
                m.name
            ),
        )
    })?;
    // `required: true` on any field: missing → dead letter naming the field and its path.
    for (t, rule, vals) in values {
        if rule.required_for(name)
            && vals.is_empty()
            && !matches!(t, Target::PatientId | Target::VisitNumber)
        {
            return Err(Rejection::new(
                R::MissingField,
                format!(
                    "{} is required but empty at {} (message {message_id}, mapping {})",
                    t.name(),
                    rule.text,
                    m.name
                ),
            ));
        }
    }
    let event_time = f
        .first(Target::EventTime, |s| parse_time(s, zone))
        .ok_or_else(|| {
            Rejection::new(
                R::MissingField,
                format!(
                    "event.time: no readable time at {} (message {message_id}, mapping {})",
                    f.path_text(Target::EventTime),
                    m.name
                ),
            )
        })?;
    let today = event_time
        .to_zoned(zone.clone())
        .date()
        .max(ctx.now.to_zoned(zone.clone()).date());
    let mut warnings = Vec::new();

    let facility = f
        .text(Target::VisitFacility)
        .unwrap_or_else(|| ctx.facility.to_string());
    let authority_default = ctx.facility.to_string();
    let patient_id = f.text(Target::PatientId).ok_or_else(|| {
        Rejection::new(
            R::MissingPatientId,
            format!(
                "no patient id at {} (message {message_id}, mapping {})",
                f.path_text(Target::PatientId),
                m.name
            ),
        )
    })?;
    let id_card_raw = f.raw(Target::PatientIdCard);
    let id_card = id_card_raw.iter().find_map(|s| valid_id_card(s, today));
    if id_card.is_none() && !id_card_raw.is_empty() {
        warnings.push(Warning::IdcardInvalid);
    }
    let family = f.text(Target::PatientFamilyName);
    let given = f.text(Target::PatientGivenName);
    let name = f
        .text(Target::PatientName)
        .or_else(|| match (&family, &given) {
            (None, None) => None,
            _ => Some(format!(
                "{}{}",
                family.as_deref().unwrap_or(""),
                given.as_deref().unwrap_or("")
            )),
        });
    let mut birth_date = f.first(Target::PatientBirthDate, parse_date);
    // The first value that is a known code (case-insensitive); unknown codes are skipped.
    let sex = f.first(Target::PatientSex, known_sex).unwrap_or_default();
    if let Some(idc) = &id_card {
        let idc_birth = id_card_birth_date(idc);
        match birth_date {
            None => birth_date = idc_birth,
            Some(b) if Some(b) != idc_birth => warnings.push(Warning::IdentityMismatch),
            _ => {}
        }
        let male_digit = idc.as_bytes().get(16).is_some_and(|d| (d - b'0') % 2 == 1);
        let mismatch = matches!((sex, male_digit), (Sex::Female, true) | (Sex::Male, false));
        if mismatch && !warnings.contains(&Warning::IdentityMismatch) {
            warnings.push(Warning::IdentityMismatch);
        }
    }
    if birth_date.is_none() {
        warnings.push(Warning::AgeUnknown);
    }
    let deceased = f
        .first(Target::PatientDeceased, parse_bool)
        .unwrap_or(false)
        || f.text(Target::PatientDeathTime).is_some();

    let visit_number = f.text(Target::VisitNumber);
    if kind.needs_visit_number() && visit_number.is_none() {
        return Err(Rejection::new(
            R::MissingVisitNumber,
            format!(
                "{} needs a visit number at {} (message {message_id}, mapping {})",
                kind.code(),
                f.path_text(Target::VisitNumber),
                m.name
            ),
        ));
    }
    let visit = visit_number.map(|number| Visit {
        number: Pii::new(number),
        facility: facility.clone(),
        class: f
            .first(Target::VisitClass, known_class)
            .unwrap_or(PatientClass::Unknown),
        dept_code: f.text(Target::VisitDeptCode),
        dept_name: f.text(Target::VisitDeptName),
        doctor_code: f.text(Target::VisitDoctorCode),
        start: f.first(Target::VisitStart, |s| parse_time(s, zone)),
        discharge: f.first(Target::VisitDischarge, |s| parse_time(s, zone)),
        disposition: f.text(Target::VisitDisposition),
        vip_indicator: f.text(Target::VisitVip),
        surgery: f.text(Target::VisitSurgery),
        risk: f.text(Target::VisitRisk),
    });
    let merged_from = if kind == EventKind::Merged {
        f.text(Target::MergedId).map(|id| PatientId {
            authority: f
                .text(Target::MergedAuthority)
                .unwrap_or_else(|| authority_default.clone()),
            id: Pii::new(id),
        })
    } else {
        None
    };
    let production = f
        .text(Target::MessageProcessing)
        .is_none_or(|p| p.eq_ignore_ascii_case("P"));
    let trigger = f
        .text(Target::MessageTrigger)
        .or(code)
        .unwrap_or_else(|| kind.code().to_string());
    Ok(PatientEvent {
        message_key: f
            .text(Target::MessageKey)
            .unwrap_or_else(|| message_id.clone()),
        message_id,
        kind,
        trigger,
        production,
        event_time,
        patient: Patient {
            id: PatientId {
                authority: f
                    .text(Target::PatientAuthority)
                    .unwrap_or(authority_default),
                id: Pii::new(patient_id),
            },
            id_card: id_card.map(Pii::new),
            name: name.map(Pii::new),
            family_name: family.map(Pii::new),
            birth_date,
            sex,
            mobile: f
                .first(Target::PatientMobile, normalize_mobile)
                .map(Pii::new),
            city: f.text(Target::PatientCity),
            deceased,
            publicity_code: f.text(Target::PatientPublicity),
            protected: f
                .first(Target::PatientProtected, parse_bool)
                .unwrap_or(false),
            guardian_mobile: f
                .first(Target::PatientGuardianMobile, normalize_mobile)
                .map(Pii::new),
        },
        visit,
        merged_from,
        warnings,
        unmatched_codes: Vec::new(),
    })
}

/// A flat view of an event by canonical field name, as tests and `cem-bridge map` show it.
/// Personal values are clear here: callers decide whether to mask (see [`Target::is_personal`]).
pub fn event_fields(e: &PatientEvent, zone: &jiff::tz::TimeZone) -> Vec<(Target, String)> {
    let ts = |t: Timestamp| crate::time::rfc3339_in(t, zone);
    let mut out: Vec<(Target, String)> = vec![
        (Target::MessageId, e.message_id.clone()),
        (Target::MessageKey, e.message_key.clone()),
        (Target::MessageTrigger, e.trigger.clone()),
        (
            Target::MessageProcessing,
            if e.production {
                "P".into()
            } else {
                "not P".into()
            },
        ),
        (Target::EventTime, ts(e.event_time)),
        (Target::PatientId, e.patient.id.id.expose().clone()),
        (Target::PatientAuthority, e.patient.id.authority.clone()),
        (Target::PatientSex, e.patient.sex.code().into()),
        (
            Target::PatientDeceased,
            if e.patient.deceased {
                "Y".into()
            } else {
                "N".into()
            },
        ),
        (
            Target::PatientProtected,
            if e.patient.protected {
                "Y".into()
            } else {
                "N".into()
            },
        ),
    ];
    let mut opt = |t: Target, v: Option<String>| {
        if let Some(v) = v {
            out.push((t, v));
        }
    };
    let p = &e.patient;
    opt(
        Target::PatientIdCard,
        p.id_card.as_ref().map(|x| x.expose().clone()),
    );
    opt(
        Target::PatientName,
        p.name.as_ref().map(|x| x.expose().clone()),
    );
    opt(
        Target::PatientFamilyName,
        p.family_name.as_ref().map(|x| x.expose().clone()),
    );
    opt(
        Target::PatientBirthDate,
        p.birth_date.map(|d| d.to_string()),
    );
    opt(
        Target::PatientMobile,
        p.mobile.as_ref().map(|x| x.expose().clone()),
    );
    opt(Target::PatientCity, p.city.clone());
    opt(Target::PatientPublicity, p.publicity_code.clone());
    opt(
        Target::PatientGuardianMobile,
        p.guardian_mobile.as_ref().map(|x| x.expose().clone()),
    );
    if let Some(v) = &e.visit {
        opt(Target::VisitNumber, Some(v.number.expose().clone()));
        opt(Target::VisitFacility, Some(v.facility.clone()));
        opt(Target::VisitClass, Some(v.class.code().into()));
        opt(Target::VisitDeptCode, v.dept_code.clone());
        opt(Target::VisitDeptName, v.dept_name.clone());
        opt(Target::VisitDoctorCode, v.doctor_code.clone());
        opt(Target::VisitStart, v.start.map(ts));
        opt(Target::VisitDischarge, v.discharge.map(ts));
        opt(Target::VisitDisposition, v.disposition.clone());
        opt(Target::VisitVip, v.vip_indicator.clone());
        opt(Target::VisitSurgery, v.surgery.clone());
        opt(Target::VisitRisk, v.risk.clone());
    }
    if let Some(mf) = &e.merged_from {
        opt(Target::MergedId, Some(mf.id.expose().clone()));
        opt(Target::MergedAuthority, Some(mf.authority.clone()));
    }
    out.sort_by_key(|(t, _)| *t);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_every_accepted_shape() {
        let z = crate::time::default_zone();
        let want = "2026-11-20T07:55:00Z";
        for s in [
            "20261120155500",
            "202611201555",
            "20261120155500+0800",
            "2026-11-20T15:55:00+08:00",
            "2026-11-20T15:55:00",
            "2026-11-20 15:55:00",
        ] {
            assert_eq!(
                parse_time(s, &z).map(|t| t.to_string()).as_deref(),
                Some(want),
                "{s}"
            );
        }
        assert_eq!(
            parse_time("2026-11-20", &z).unwrap().to_string(),
            "2026-11-19T16:00:00Z"
        );
        assert!(parse_time("yesterday", &z).is_none());
        assert!(parse_time("2026-13-01", &z).is_none());
    }

    #[test]
    fn dates_and_bools() {
        assert_eq!(parse_date("19551212").unwrap().to_string(), "1955-12-12");
        assert_eq!(parse_date("1985-02-02").unwrap().to_string(), "1985-02-02");
        assert_eq!(
            parse_date("1985-02-02T00:00:00").unwrap().to_string(),
            "1985-02-02"
        );
        assert!(parse_date("02/02/1985").is_none());
        assert_eq!(parse_bool("Y"), Some(true));
        assert_eq!(parse_bool("false"), Some(false));
        assert_eq!(parse_bool("maybe"), None);
    }
}
