//! The canonical fields a mapping fills, and what kind of value each takes.
//!
//! The kind decides which read values are usable: a `mobile` field takes the first value that
//! is a valid mainland mobile (R-ID-2), an `id_card` field the first valid 身份证号 (R-ID-1), a
//! time field the first value that parses as a time, and so on.

/// How values of a field are checked and converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    /// Y/N, true/false, 1/0.
    Bool,
    /// HL7 TS (`20261120155500`), RFC 3339, or `YYYY-MM-DD[ HH:MM[:SS]]` local.
    Time,
    /// HL7 DT (`19551212`) or `YYYY-MM-DD`.
    Date,
    /// R-ID-2.
    Mobile,
    /// R-ID-1.
    IdCard,
    /// HL7 table 0001 codes F M O U A N.
    Sex,
    /// HL7 table 0004 codes O I E P R B N U.
    Class,
}

macro_rules! targets {
    ($( $variant:ident = $name:literal : $kind:ident, $doc:literal; )*) => {
        /// A canonical field.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Target { $( #[doc = $doc] $variant, )* }

        impl Target {
            pub const ALL: &'static [Target] = &[ $( Target::$variant, )* ];

            pub fn name(self) -> &'static str {
                match self { $( Target::$variant => $name, )* }
            }

            pub fn kind(self) -> Kind {
                match self { $( Target::$variant => Kind::$kind, )* }
            }

            pub fn doc(self) -> &'static str {
                match self { $( Target::$variant => $doc, )* }
            }

            pub fn from_name(s: &str) -> Option<Target> {
                match s { $( $name => Some(Target::$variant), )* _ => None }
            }
        }
    };
}

targets! {
    MessageId = "message.id": Text, "The source's message id (MSH-10, id/@extension, eventId). Required.";
    MessageKey = "message.key": Text, "Dedupe key (R-EVT-4); default: message.id.";
    MessageTrigger = "message.trigger": Text, "The trigger as sent; default: the event lookup's code.";
    MessageProcessing = "message.processing_id": Text, "P = production; anything else is recorded only (R-EVT-5). Absent = production.";
    EventTime = "event.time": Time, "When it happened (EVN-6 → EVN-2 → MSH-7). Required.";
    PatientId = "patient.id": Text, "Patient id (R-ID-4). Missing → missing_patient_id.";
    PatientAuthority = "patient.authority": Text, "Assigning authority of patient.id; default: the facility.";
    PatientIdCard = "patient.id_card": IdCard, "身份证号; invalid values are dropped with warning idcard_invalid (R-ID-1).";
    PatientName = "patient.name": Text, "Full name; default: family_name + given_name.";
    PatientFamilyName = "patient.family_name": Text, "Family name (XPN.1).";
    PatientGivenName = "patient.given_name": Text, "Given name (XPN.2).";
    PatientBirthDate = "patient.birth_date": Date, "Birth date; filled from the ID card when empty (R-ID-5).";
    PatientSex = "patient.sex": Sex, "F M O U (HL7 table 0001); map other codes with a table.";
    PatientMobile = "patient.mobile": Mobile, "Mobile; the first valid one wins (R-ID-2).";
    PatientCity = "patient.city": Text, "City (PID-11.3), the only address part that may leave.";
    PatientDeceased = "patient.deceased": Bool, "Death indicator (PID-30).";
    PatientDeathTime = "patient.death_time": Text, "Death date-time (PID-29); present = deceased.";
    PatientPublicity = "patient.publicity_code": Text, "Publicity code (PD1-11), R-EXC-5.";
    PatientProtected = "patient.protected": Bool, "Protection indicator (PD1-12), R-EXC-5.";
    PatientGuardianMobile = "patient.guardian_mobile": Mobile, "Guardian's mobile (NK1, R-EXC-6).";
    VisitNumber = "visit.number": Text, "门诊号 / 住院号 (R-ID-3). Missing on a visit event → missing_visit_number.";
    VisitFacility = "visit.facility": Text, "Facility; default: the connector's facility.";
    VisitClass = "visit.class": Class, "O I E … (HL7 table 0004); map other codes with a table.";
    VisitDeptCode = "visit.dept_code": Text, "Department / ward code.";
    VisitDeptName = "visit.dept_name": Text, "Department / ward name.";
    VisitDoctorCode = "visit.doctor_code": Text, "Attending doctor code (never the name).";
    VisitStart = "visit.start": Time, "Admission / visit start (PV1-44).";
    VisitDischarge = "visit.discharge": Time, "Discharge time (PV1-45).";
    VisitDisposition = "visit.disposition": Text, "Discharge disposition code (HL7 table 0112), R-EXC-8.";
    VisitVip = "visit.vip": Text, "VIP indicator (PV1-16), R-EXC-5.";
    VisitSurgery = "visit.surgery": Text, "A procedure of the stay (PR1-3); present = surgery, for follow-up plans (R-FUP-1).";
    VisitRisk = "visit.risk": Text, "Follow-up risk level HIGH / NORMAL / LOW (R-FUP-1); absent = NORMAL.";
    MergedId = "merged.id": Text, "A40: the non-surviving patient id (MRG-1).";
    MergedAuthority = "merged.authority": Text, "Authority of merged.id; default: patient.authority's default.";
}

impl Target {
    /// Values of these fields identify a person (R-ANO-8): masked in `cem-bridge map`.
    pub fn is_personal(self) -> bool {
        matches!(
            self,
            Target::PatientId
                | Target::PatientIdCard
                | Target::PatientName
                | Target::PatientFamilyName
                | Target::PatientGivenName
                | Target::PatientMobile
                | Target::PatientGuardianMobile
                | Target::VisitNumber
                | Target::MergedId
                | Target::PatientDeathTime
        )
    }
}

/// The canonical field a misspelt name most likely meant (issue 18 §5): one the name is a
/// prefix of (`visit.doctor` → `visit.doctor_code`), else the closest by edit distance (at most
/// 2, or the same last part: `patient.phone` has none, `patient.nmae` → `patient.name`).
pub fn nearest(name: &str) -> Option<Target> {
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    if let Some(t) = Target::ALL
        .iter()
        .find(|t| t.name().starts_with(name) && t.name().len() > name.len())
    {
        return Some(*t);
    }
    if let Some(t) = Target::ALL
        .iter()
        .find(|t| t.name().split('.').next_back() == name.split('.').next_back())
    {
        return Some(*t);
    }
    Target::ALL
        .iter()
        .map(|t| (edit_distance(name, t.name()), *t))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, t)| t)
}

/// The option closest to `given` (a prefix of it, or within two edits), for "did you mean".
pub fn nearest_of<'a>(given: &str, options: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let given = given.trim();
    if given.is_empty() {
        return None;
    }
    options
        .map(|o| (edit_distance(given, o), o))
        .filter(|(d, o)| *d <= 2 || (o.starts_with(given) && given.len() >= 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, o)| o)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_field_suggests_the_near_one() {
        let near = |n: &str| nearest(n).map(Target::name);
        assert_eq!(near("visit.doctor"), Some("visit.doctor_code"));
        assert_eq!(near("patient.nmae"), Some("patient.name"));
        assert_eq!(near("visit.dischage"), Some("visit.discharge"));
        assert_eq!(near("patient.phone"), None, "nothing near: no guess");
        assert_eq!(near(""), None);
    }
}
