//! Re-identification (R-ANO-6): what the vault holds per pseudonym, and which (caller, purpose)
//! pairs may read which of it. Pure: the encryption and the audited lookup live in the runtime
//! (`src/vault.rs`); this module decides what a lookup may return.

use serde::{Deserialize, Serialize};

use crate::anonymize::{Pseudonymizer, mask_id_card};
use crate::event::PatientEvent;

/// Who asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The CEM's sender, through `POST /contact/resolve` (or the CEM sink in `mobile` mode).
    Cem,
    /// The hospital CRM sink (tickets, issue 7).
    Hcrm,
    /// The AI call-center sink (call-backs and follow-ups).
    CallCenter,
}

impl Caller {
    pub fn code(self) -> &'static str {
        match self {
            Self::Cem => "cem",
            Self::Hcrm => "hcrm",
            Self::CallCenter => "callcenter",
        }
    }
}

/// Why they ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    SurveyDelivery,
    TicketCase,
    TicketCallback,
    FollowupCall,
}

impl Purpose {
    pub fn code(self) -> &'static str {
        match self {
            Self::SurveyDelivery => "survey_delivery",
            Self::TicketCase => "ticket_case",
            Self::TicketCallback => "ticket_callback",
            Self::FollowupCall => "followup_call",
        }
    }
}

/// One re-identifiable item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    PatientId,
    Name,
    Mobile,
    GuardianMobile,
    VisitNumber,
    /// Family name + 先生/女士 (R-ANO-5), never the full name.
    Greeting,
}

/// R-ANO-6: the fields a (caller, purpose) pair may read; `None` = denied.
pub fn allowed(caller: Caller, purpose: Purpose) -> Option<&'static [Field]> {
    use Field::*;
    match (caller, purpose) {
        (Caller::Cem, Purpose::SurveyDelivery) => Some(&[Mobile]),
        (Caller::Hcrm, Purpose::TicketCase) => Some(&[PatientId, Name, Mobile, VisitNumber]),
        (Caller::CallCenter, Purpose::TicketCallback | Purpose::FollowupCall) => {
            Some(&[Mobile, Greeting])
        }
        _ => None,
    }
}

/// What the vault holds under one pseudonym, before encryption. A `pk_` entry holds the
/// patient's items, a `vk_` entry the visit number, an `mk_` entry the mobile it names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mobile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guardian_mobile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visit_number: Option<String>,
    /// Greeting for calls (R-ANO-5); derived at write time so the name is not needed later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub greeting: Option<String>,
    /// `110***********1233` for the HCRM case (R-ANO-1); the clear number is never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_card_masked: Option<String>,
}

impl VaultRecord {
    /// Only the fields in `fields`; the rest cleared.
    pub fn only(&self, fields: &[Field]) -> Self {
        let has = |f| fields.contains(&f);
        Self {
            patient_id: self.patient_id.clone().filter(|_| has(Field::PatientId)),
            name: self.name.clone().filter(|_| has(Field::Name)),
            mobile: self.mobile.clone().filter(|_| has(Field::Mobile)),
            guardian_mobile: self
                .guardian_mobile
                .clone()
                .filter(|_| has(Field::GuardianMobile)),
            visit_number: self
                .visit_number
                .clone()
                .filter(|_| has(Field::VisitNumber)),
            greeting: self.greeting.clone().filter(|_| has(Field::Greeting)),
            // The masked number goes with the case (R-ANO-1 HCRM column).
            id_card_masked: self
                .id_card_masked
                .clone()
                .filter(|_| has(Field::PatientId)),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// R-ANO-5: family name + 先生 (M) / 女士 (F); other sexes → no greeting.
pub fn greeting(event: &PatientEvent) -> Option<String> {
    let title = match event.patient.sex.code() {
        "M" => "先生",
        "F" => "女士",
        _ => return None,
    };
    let family = match &event.patient.family_name {
        Some(f) if !f.expose().trim().is_empty() => f.expose().trim().to_string(),
        _ => {
            let name = event.patient.name.as_ref()?;
            name.expose().trim().chars().next()?.to_string()
        }
    };
    Some(format!("{family}{title}"))
}

/// The vault entries an event's survey job needs: (pseudonym, record). `contact` is the mobile
/// the survey goes to (the guardian's for minors) and `mobile_key` its pseudonym.
pub fn entries_for(
    event: &PatientEvent,
    pseudo: &Pseudonymizer,
    patient_key: &str,
) -> Vec<(String, VaultRecord)> {
    let p = &event.patient;
    let mut out = vec![(
        patient_key.to_string(),
        VaultRecord {
            patient_id: Some(format!("{}^{}", p.id.id.expose(), p.id.authority)),
            name: p.name.as_ref().map(|n| n.expose().to_string()),
            mobile: p.mobile.as_ref().map(|m| m.expose().to_string()),
            guardian_mobile: p.guardian_mobile.as_ref().map(|m| m.expose().to_string()),
            greeting: greeting(event),
            id_card_masked: p.id_card.as_ref().map(|i| mask_id_card(i.expose())),
            ..Default::default()
        },
    )];
    for m in [&p.mobile, &p.guardian_mobile].into_iter().flatten() {
        out.push((
            pseudo.mobile_key(m.expose()),
            VaultRecord {
                mobile: Some(m.expose().to_string()),
                ..Default::default()
            },
        ));
    }
    if let Some(v) = &event.visit {
        out.push((
            pseudo.visit_key(&v.facility, v.number.expose()),
            VaultRecord {
                visit_number: Some(v.number.expose().to_string()),
                ..Default::default()
            },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_ano_6_only_the_listed_pairs_may_read_and_only_their_fields() {
        assert_eq!(
            allowed(Caller::Cem, Purpose::SurveyDelivery),
            Some(&[Field::Mobile][..])
        );
        assert_eq!(allowed(Caller::Cem, Purpose::TicketCase), None);
        assert_eq!(allowed(Caller::Hcrm, Purpose::SurveyDelivery), None);
        assert_eq!(allowed(Caller::CallCenter, Purpose::TicketCase), None);
        assert!(allowed(Caller::CallCenter, Purpose::FollowupCall).is_some());
        let full = VaultRecord {
            patient_id: Some("P1^HIS".into()),
            name: Some("张三明".into()),
            mobile: Some("13812345678".into()),
            guardian_mobile: Some("13900001111".into()),
            visit_number: Some("V1".into()),
            greeting: Some("张先生".into()),
            id_card_masked: Some("110***********1233".into()),
        };
        let cem = full.only(allowed(Caller::Cem, Purpose::SurveyDelivery).unwrap());
        assert_eq!(
            cem,
            VaultRecord {
                mobile: Some("13812345678".into()),
                ..Default::default()
            }
        );
        let call = full.only(allowed(Caller::CallCenter, Purpose::TicketCallback).unwrap());
        assert_eq!(
            call.name, None,
            "the call center gets a greeting, not the name"
        );
        assert_eq!(call.greeting.as_deref(), Some("张先生"));
        let hcrm = full.only(allowed(Caller::Hcrm, Purpose::TicketCase).unwrap());
        assert_eq!(hcrm.guardian_mobile, None);
        assert_eq!(hcrm.id_card_masked.as_deref(), Some("110***********1233"));
    }
}
