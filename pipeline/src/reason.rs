//! Dead-letter reason codes (R-EVT-1, R-EVT-4, R-EVT-6, EX-23/EX-24).
//!
//! A reason code is what operations see in the `x-cem-reason` header, the store and metrics; it is
//! a closed enum so label values never carry free text (R-MET-1).

use std::fmt;

/// Why a message was dead-lettered instead of processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    /// Not HL7 v2, XML or JSON; or an empty body (R-EVT-1, R-GEN-3).
    UnknownFormat,
    /// Bytes invalid in the declared or configured charset (R-EVT-2).
    InvalidEncoding,
    /// HL7 without a usable MSH-9, or a message cut short (R-EVT-6).
    Truncated,
    /// Trigger not in the event table (R-EVT-3).
    UnknownEvent,
    /// No patient identifier in PID-3 (R-EVT-6).
    MissingPatientId,
    /// A visit event without a visit number in PV1-19 (R-EVT-6).
    MissingVisitNumber,
    /// MSH-12 outside 2.3–2.5.1 (R-EVT-6).
    UnsupportedVersion,
    /// Broken XML, or XML with a DTD / entity declarations (R-EVT-6, R-GEN-3).
    MalformedXml,
    /// Broken JSON, or JSON nested deeper than 64 levels (R-EVT-6, R-GEN-3).
    MalformedJson,
    /// Body over the size limit, 1 MiB by default (R-EVT-1).
    Oversized,
    /// Redelivered more than the poison limit, 5 by default (R-EVT-6).
    Poison,
    /// The message key was seen before with different content (R-EVT-4).
    DuplicateIdConflict,
    /// A well-formed message of a format this connector has no mapping for.
    NoMapping,
    /// A field the mapping requires (`required: true`, message.id, event.time) is empty.
    MissingField,
}

impl DeadLetterReason {
    /// Every reason, for metrics pre-registration and docs.
    pub const ALL: [DeadLetterReason; 14] = [
        Self::UnknownFormat,
        Self::InvalidEncoding,
        Self::Truncated,
        Self::UnknownEvent,
        Self::MissingPatientId,
        Self::MissingVisitNumber,
        Self::UnsupportedVersion,
        Self::MalformedXml,
        Self::MalformedJson,
        Self::Oversized,
        Self::Poison,
        Self::DuplicateIdConflict,
        Self::NoMapping,
        Self::MissingField,
    ];

    /// The stable snake_case code used in headers, the store and metric labels.
    pub fn code(self) -> &'static str {
        match self {
            Self::UnknownFormat => "unknown_format",
            Self::InvalidEncoding => "invalid_encoding",
            Self::Truncated => "truncated",
            Self::UnknownEvent => "unknown_event",
            Self::MissingPatientId => "missing_patient_id",
            Self::MissingVisitNumber => "missing_visit_number",
            Self::UnsupportedVersion => "unsupported_version",
            Self::MalformedXml => "malformed_xml",
            Self::MalformedJson => "malformed_json",
            Self::Oversized => "oversized",
            Self::Poison => "poison",
            Self::DuplicateIdConflict => "duplicate_id_conflict",
            Self::NoMapping => "no_mapping",
            Self::MissingField => "missing_field",
        }
    }

    /// Parse a code back (for the CLI and the store).
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A decode failure: the reason code plus a human explanation that names fields and byte
/// offsets but never contains message content (no personal data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Rejection {
    pub reason: DeadLetterReason,
    pub detail: String,
    /// The mapping that refused the message, when one had been chosen (a mapping's
    /// `expect: {error: …}` case checks it is its own; issue 18 §3).
    pub mapping: Option<String>,
}

impl Rejection {
    pub fn new(reason: DeadLetterReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            mapping: None,
        }
    }
}

/// An input value for a rejection's detail: quoted when it has the shape of a code (an event
/// code, a charset label, a version — letters, digits, `_ - . ^` and spaces, at most 32
/// characters, no run of six digits or more), else withheld with its length. A phone number or
/// ID number where a code should be must not reach the log, `/api/summary` or the ops page
/// (R-ANO-8).
pub fn quoted(value: &str) -> String {
    let mut digits = 0usize;
    let mut longest = 0usize;
    let mut shaped = !value.is_empty() && value.chars().count() <= 32;
    for c in value.chars() {
        if c.is_ascii_digit() {
            digits += 1;
            longest = longest.max(digits);
        } else {
            digits = 0;
        }
        if !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '^' | ' ')) {
            shaped = false;
        }
    }
    if shaped && longest < 6 {
        format!("{value:?}")
    } else {
        format!("(value withheld, {} characters)", value.chars().count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_ano_8_only_code_shaped_values_are_quoted() {
        assert_eq!(quoted("Z99"), "\"Z99\"");
        assert_eq!(quoted("OUTPATIENT_CANCELLED"), "\"OUTPATIENT_CANCELLED\"");
        assert_eq!(quoted("GB 18030-2000"), "\"GB 18030-2000\"");
        assert_eq!(quoted("2.5.1"), "\"2.5.1\"");
        assert_eq!(quoted("13812345678"), "(value withheld, 11 characters)");
        assert_eq!(
            quoted("11010119900307123X"),
            "(value withheld, 18 characters)"
        );
        assert_eq!(quoted("张三"), "(value withheld, 2 characters)");
        assert_eq!(quoted("a@b.example"), "(value withheld, 11 characters)");
        assert_eq!(quoted(""), "(value withheld, 0 characters)");
    }

    #[test]
    fn codes_round_trip() {
        for r in DeadLetterReason::ALL {
            assert_eq!(DeadLetterReason::from_code(r.code()), Some(r));
        }
        assert_eq!(DeadLetterReason::from_code("nope"), None);
    }
}
