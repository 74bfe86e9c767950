//! The canonical `PatientEvent`: what every decoder produces and everything downstream consumes.
//!
//! Personal data is wrapped in [`Pii`], whose `Debug` prints `[redacted]` and which has no
//! `Display`, so `tracing::debug!(?event)` cannot leak a name or phone number (R-ANO-8).

use std::fmt;

use jiff::Timestamp;
use jiff::civil::Date;

/// A value that identifies a person. Read it with [`Pii::expose`] where a rule allows it.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Pii<T>(T);

impl<T> Pii<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }
    /// The clear value. Callers must not log it (R-ANO-8).
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Pii<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Event kinds of R-EVT-3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// 挂号, ADT^A04.
    Registered,
    /// 入院, ADT^A01.
    Admitted,
    /// 出院, ADT^A03.
    Discharged,
    /// Demographics update: ADT^A08, ADT^A31 (update person), 互联互通 S0002 个人信息更新.
    Updated,
    /// A person registered without a visit: ADT^A28 (add person), 互联互通 S0001 个人信息注册.
    /// Patient-level, like [`EventKind::Updated`]: it feeds the patient record, never a survey.
    PatientRegistered,
    /// 退号 / cancel admit, ADT^A11.
    VisitCancelled,
    /// 取消出院, ADT^A13.
    DischargeCancelled,
    /// 患者合并, ADT^A40.
    Merged,
}

impl EventKind {
    /// The HL7 v2 trigger for this kind.
    pub fn from_hl7_trigger(trigger: &str) -> Option<Self> {
        Some(match trigger {
            "A04" => Self::Registered,
            "A01" => Self::Admitted,
            "A03" => Self::Discharged,
            "A08" | "A31" => Self::Updated,
            "A28" => Self::PatientRegistered,
            "A11" => Self::VisitCancelled,
            "A13" => Self::DischargeCancelled,
            "A40" => Self::Merged,
            _ => return None,
        })
    }

    /// Stable upper-case code used in payloads, the store and metric labels.
    pub fn code(self) -> &'static str {
        match self {
            Self::Registered => "REGISTERED",
            Self::Admitted => "ADMITTED",
            Self::Discharged => "DISCHARGED",
            Self::Updated => "UPDATED",
            Self::PatientRegistered => "PATIENT_REGISTERED",
            Self::VisitCancelled => "VISIT_CANCELLED",
            Self::DischargeCancelled => "DISCHARGE_CANCELLED",
            Self::Merged => "MERGED",
        }
    }

    /// Events about the person rather than a visit (R-PAT-1): they update the patient record
    /// and the contact of pending surveys, and never create one.
    pub fn is_patient_level(self) -> bool {
        matches!(self, Self::Updated | Self::PatientRegistered)
    }

    /// Events about one visit or stay; they need a visit number (R-EVT-6).
    pub fn needs_visit_number(self) -> bool {
        matches!(
            self,
            Self::Registered | Self::Discharged | Self::VisitCancelled | Self::DischargeCancelled
        )
    }
}

/// PV1-2 patient class (HL7 table 0004).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PatientClass {
    Outpatient,
    Inpatient,
    Emergency,
    Preadmit,
    RecurringPatient,
    Obstetrics,
    NotApplicable,
    Unknown,
}

impl PatientClass {
    pub fn from_code(code: &str) -> Self {
        match code {
            "O" => Self::Outpatient,
            "I" => Self::Inpatient,
            "E" => Self::Emergency,
            "P" => Self::Preadmit,
            "R" => Self::RecurringPatient,
            "B" => Self::Obstetrics,
            "N" => Self::NotApplicable,
            _ => Self::Unknown,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Self::Outpatient => "O",
            Self::Inpatient => "I",
            Self::Emergency => "E",
            Self::Preadmit => "P",
            Self::RecurringPatient => "R",
            Self::Obstetrics => "B",
            Self::NotApplicable => "N",
            Self::Unknown => "U",
        }
    }
}

/// PID-8 administrative sex (HL7 table 0001).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Sex {
    Female,
    Male,
    Other,
    #[default]
    Unknown,
}

impl Sex {
    pub fn from_hl7(code: &str) -> Self {
        match code {
            "F" => Self::Female,
            "M" => Self::Male,
            "O" | "A" | "N" => Self::Other,
            _ => Self::Unknown,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Self::Female => "F",
            Self::Male => "M",
            Self::Other => "O",
            Self::Unknown => "U",
        }
    }
}

/// A patient identifier qualified by its assigning authority (R-ID-4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientId {
    /// PID-3.4, else MSH-4 (not personal).
    pub authority: String,
    /// PID-3.1 (personal).
    pub id: Pii<String>,
}

/// Who the event is about. Every field that identifies the person is [`Pii`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patient {
    pub id: PatientId,
    /// Valid 身份证号 only (R-ID-1); invalid ones are dropped with a warning.
    pub id_card: Option<Pii<String>>,
    /// Family + given name, no space (R-EVT-7).
    pub name: Option<Pii<String>>,
    /// XPN.1 where the source splits it (R-ANO-5).
    pub family_name: Option<Pii<String>>,
    pub birth_date: Option<Date>,
    pub sex: Sex,
    /// Normalised valid mobile (R-ID-2).
    pub mobile: Option<Pii<String>>,
    /// PID-11.3, the only part of the address that may leave (R-ANO-1).
    pub city: Option<String>,
    /// PID-30 = Y or PID-29 set (R-EXC-1).
    pub deceased: bool,
    /// PD1-11 publicity code, raw (R-EXC-5).
    pub publicity_code: Option<String>,
    /// PD1-12 protection indicator = Y (R-EXC-5).
    pub protected: bool,
    /// First NK1 with relationship MTH/FTH/PAR/GRD and a valid mobile (R-EXC-6, R-GEN-3).
    pub guardian_mobile: Option<Pii<String>>,
}

/// The visit (门诊) or stay (住院) the event belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visit {
    /// PV1-19.1: 门诊号 / 住院号 (R-ID-3), opaque.
    pub number: Pii<String>,
    /// PV1-3.4, else MSH-4.
    pub facility: String,
    pub class: PatientClass,
    pub dept_code: Option<String>,
    pub dept_name: Option<String>,
    /// PV1-7.1 (doctor code only; names never leave).
    pub doctor_code: Option<String>,
    /// PV1-44.
    pub start: Option<Timestamp>,
    /// PV1-45.
    pub discharge: Option<Timestamp>,
    /// PV1-36 raw code (R-EXC-8).
    pub disposition: Option<String>,
    /// PV1-16 VIP indicator, raw (R-EXC-5).
    pub vip_indicator: Option<String>,
    /// A procedure of the stay (PR1-3, JSON `visit.surgery`); present = surgery (R-FUP-1).
    /// Only its presence is used; it never leaves the bridge.
    pub surgery: Option<String>,
    /// Follow-up risk level (`HIGH`, `NORMAL`, `LOW`; R-FUP-1), raw.
    pub risk: Option<String>,
}

/// Non-fatal findings counted as `cem_bridge_identity_warnings_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Warning {
    IdcardInvalid,
    IdentityMismatch,
    AgeUnknown,
    TriggerMismatch,
    UnknownDisposition,
}

impl Warning {
    /// Whether this finding matters for an event of `kind`, and so is counted (issue 19 §3):
    /// identity and age findings only where a survey is decided (a registration or discharge),
    /// an unknown disposition only on a discharge (R-EXC-8), a trigger mismatch always. A
    /// cancel or update that simply carries no birth date is not a finding an operator should
    /// be alerted on.
    pub fn counts_for(self, kind: EventKind) -> bool {
        match self {
            Self::TriggerMismatch => true,
            Self::UnknownDisposition => kind == EventKind::Discharged,
            Self::IdcardInvalid | Self::IdentityMismatch | Self::AgeUnknown => {
                matches!(kind, EventKind::Registered | EventKind::Discharged)
            }
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Self::IdcardInvalid => "idcard_invalid",
            Self::IdentityMismatch => "identity_mismatch",
            Self::AgeUnknown => "age_unknown",
            Self::TriggerMismatch => "trigger_mismatch",
            Self::UnknownDisposition => "unknown_disposition",
        }
    }
}

/// One inbound event in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientEvent {
    /// R-EVT-4 message key, e.g. `HIS|HXEYE_SH01|MSG20261120160000004`. Not personal.
    pub message_key: String,
    /// MSH-10 / the source's own message id, for logs and traces.
    pub message_id: String,
    pub kind: EventKind,
    /// The trigger as sent (`A03`).
    pub trigger: String,
    /// MSH-11 = `P` (R-EVT-5).
    pub production: bool,
    /// EVN-6 → EVN-2 → MSH-7 (R-EVT-7).
    pub event_time: Timestamp,
    pub patient: Patient,
    pub visit: Option<Visit>,
    /// MRG-1 of an A40: the non-surviving id (R-CAN-6).
    pub merged_from: Option<PatientId>,
    pub warnings: Vec<Warning>,
    /// Codes a mapping table with `unmatched: keep` did not know and passed through as the
    /// field's value (issue 18 §4): counted and logged by the bridge, the code itself only for
    /// a code-like field ([`UnmatchedCode::code_shown`]).
    pub unmatched_codes: Vec<UnmatchedCode>,
}

/// A vendor code a mapping's table did not know, kept as the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnmatchedCode {
    /// The mapping's name (its file, as `check` lists it).
    pub mapping: String,
    /// The table's name under `tables:`, or `inline map of FIELD`.
    pub table: String,
    pub field: crate::mapping::target::Target,
    pub code: String,
}

impl UnmatchedCode {
    /// The code, when the field holds codes rather than personal values (a department, a
    /// disposition, a sex, a class…) and it looks like one; `None` otherwise (R-ANO-8).
    pub fn code_shown(&self) -> Option<&str> {
        use crate::mapping::target::Target as T;
        let code_like = matches!(
            self.field,
            T::MessageTrigger
                | T::MessageProcessing
                | T::PatientSex
                | T::PatientPublicity
                | T::PatientProtected
                | T::PatientDeceased
                | T::VisitClass
                | T::VisitDeptCode
                | T::VisitDoctorCode
                | T::VisitDisposition
                | T::VisitVip
                | T::VisitRisk
        );
        let shaped = self.code.len() <= 32
            && self
                .code
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        (code_like && shaped).then_some(self.code.as_str())
    }
}
