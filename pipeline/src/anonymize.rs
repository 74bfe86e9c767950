//! De-identification (去标识化): pseudonyms (R-ANO-2), masks (R-ANO-3), age bands (R-ANO-4).

use hmac::{Hmac, KeyInit, Mac};
use jiff::civil::Date;
use serde::Deserialize;
use sha2::Sha256;

use crate::event::PatientId;

/// The minimum pseudonym key length (R-ANO-2).
pub const MIN_KEY_BYTES: usize = 32;

/// Why a pseudonym key was refused. Never contains the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "pseudonym key is {0} bytes; at least {MIN_KEY_BYTES} are required (generate one with `openssl rand -hex 32`)"
    )]
    TooShort(usize),
    #[error("pseudonym key id is empty; set a short label such as `k2026a` so keys can rotate")]
    EmptyKeyId,
}

/// Keyed, stable pseudonyms: prefix + first 32 hex of HMAC-SHA256(K, `domain|value`).
///
/// Same input and key → same pseudonym forever; another tenant's key → another pseudonym.
#[derive(Clone)]
pub struct Pseudonymizer {
    mac: Hmac<Sha256>,
    key_id: String,
}

impl std::fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pseudonymizer")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Pseudonymizer {
    pub fn new(key: &[u8], key_id: &str) -> Result<Self, KeyError> {
        if key.len() < MIN_KEY_BYTES {
            return Err(KeyError::TooShort(key.len()));
        }
        if key_id.trim().is_empty() {
            return Err(KeyError::EmptyKeyId);
        }
        let mac = Hmac::<Sha256>::new_from_slice(key).map_err(|_| KeyError::TooShort(key.len()))?;
        Ok(Self {
            mac,
            key_id: key_id.to_string(),
        })
    }

    /// The key id sent as `keyId` beside every pseudonym.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    fn pseudonym(&self, prefix: &str, parts: &[&str]) -> String {
        let mut mac = self.mac.clone();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                mac.update(b"|");
            }
            mac.update(p.as_bytes());
        }
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(prefix.len() + 32);
        out.push_str(prefix);
        out.push_str(&hex(&digest[..16]));
        out
    }

    /// `pk_…` from `pid|authority|id`.
    pub fn patient_key(&self, id: &PatientId) -> String {
        self.pseudonym("pk_", &["pid", &id.authority, id.id.expose()])
    }

    /// `vk_…` from `visit|facility|number`.
    pub fn visit_key(&self, facility: &str, number: &str) -> String {
        self.pseudonym("vk_", &["visit", facility, number])
    }

    /// `ik_…` from `idc|18 chars`.
    pub fn id_card_key(&self, id_card: &str) -> String {
        self.pseudonym("ik_", &["idc", id_card])
    }

    /// `mk_…` from `mob|11 digits`.
    pub fn mobile_key(&self, mobile: &str) -> String {
        self.pseudonym("mk_", &["mob", mobile])
    }
}

/// How each canonical field is treated in the CEM survey dispatch (R-ANO-1; config
/// `[anonymization.cem]`). Only safe treatments exist: patient id and visit number are always
/// pseudonymised (R-ANO-2); 身份证号, doctor names, diagnoses and the address beyond the city
/// never leave; the mobile reaches the CEM only through `[cem] contact_mode` (R-ANO-7).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CemFieldPolicy {
    /// `mask` (R-ANO-3: 张*明, default) or `drop`.
    pub name: NameRule,
    /// `age_band` (R-ANO-4, default) or `drop`. The birth date itself is never sent.
    pub birth_date: BirthDateRule,
    /// `keep` (default) or `drop`.
    pub sex: KeepRule,
    /// `city` (PID-11.3, default) or `drop`.
    pub address: AddressRule,
    /// Department code and name: `keep` (default) or `drop`.
    pub department: KeepRule,
    /// Attending doctor's code (never the name): `keep` (default) or `drop`.
    pub doctor_code: KeepRule,
    /// Visit start / discharge time: `hour` (truncated, default), `day` or `drop`.
    pub visit_time: VisitTimeRule,
}

impl Default for CemFieldPolicy {
    fn default() -> Self {
        Self {
            name: NameRule::Mask,
            birth_date: BirthDateRule::AgeBand,
            sex: KeepRule::Keep,
            address: AddressRule::City,
            department: KeepRule::Keep,
            doctor_code: KeepRule::Keep,
            visit_time: VisitTimeRule::Hour,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NameRule {
    Mask,
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BirthDateRule {
    AgeBand,
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeepRule {
    Keep,
    Drop,
}

impl KeepRule {
    /// `value` if kept.
    pub fn apply<T>(self, value: Option<T>) -> Option<T> {
        match self {
            Self::Keep => value,
            Self::Drop => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AddressRule {
    City,
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VisitTimeRule {
    Hour,
    Day,
    Drop,
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// R-ANO-3 name mask: spaces and `·` removed; 1 → `*`, 2 → `张*`, n ≥ 3 → `张*明`, `欧**娜`.
pub fn mask_name(name: &str) -> String {
    let chars: Vec<char> = name
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '·')
        .collect();
    match chars.len() {
        0 => String::new(),
        1 => "*".to_string(),
        2 => format!("{}*", chars[0]),
        n => {
            let mut s = String::new();
            s.push(chars[0]);
            s.extend(std::iter::repeat_n('*', n - 2));
            s.push(chars[n - 1]);
            s
        }
    }
}

/// R-ANO-3 mobile mask: `13812345678` → `138****5678`.
pub fn mask_mobile(mobile: &str) -> String {
    match (
        mobile.get(..3),
        mobile.get(mobile.len().saturating_sub(4)..),
    ) {
        (Some(head), Some(tail)) if mobile.len() >= 7 => format!("{head}****{tail}"),
        _ => "*".repeat(mobile.chars().count()),
    }
}

/// R-ANO-3 身份证号 mask: first 3 + 11 `*` + last 4.
pub fn mask_id_card(id: &str) -> String {
    match (id.get(..3), id.get(id.len().saturating_sub(4)..)) {
        (Some(head), Some(tail)) if id.len() == 18 => format!("{head}{}{tail}", "*".repeat(11)),
        _ => "*".repeat(id.chars().count()),
    }
}

/// Completed years between `birth` and `on`.
pub fn age_on(birth: Date, on: Date) -> Option<i16> {
    if birth > on {
        return None;
    }
    let mut age = on.year() - birth.year();
    if (on.month(), on.day()) < (birth.month(), birth.day()) {
        age -= 1;
    }
    Some(age)
}

/// R-ANO-4 age band of the completed years at the event date.
pub fn age_band(birth: Date, on: Date) -> Option<&'static str> {
    let age = age_on(birth, on)?;
    Some(match age {
        0..=6 => "0-6",
        7..=13 => "7-13",
        14..=17 => "14-17",
        18..=29 => "18-29",
        30..=39 => "30-39",
        40..=49 => "40-49",
        50..=59 => "50-59",
        60..=69 => "60-69",
        70..=79 => "70-79",
        _ => "80+",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Pii;
    use jiff::civil::date;

    fn p(key: &[u8]) -> Pseudonymizer {
        Pseudonymizer::new(key, "k1").unwrap()
    }

    #[test]
    fn r_ano_2_pseudonyms_are_stable_prefixed_and_keyed() {
        let a = p(&[7u8; 32]);
        let id = PatientId {
            authority: "HXEYE".into(),
            id: Pii::new("P00012345".into()),
        };
        let pk = a.patient_key(&id);
        assert!(pk.starts_with("pk_") && pk.len() == 35, "{pk}");
        assert!(
            pk[3..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(pk, a.patient_key(&id), "stable");
        assert_ne!(pk, p(&[8u8; 32]).patient_key(&id), "two tenants differ");
        // domain separation: the same text in another domain gives another value
        assert_ne!(a.visit_key("HXEYE", "P00012345")[3..], pk[3..]);
        assert!(a.id_card_key("110101199003071233").starts_with("ik_"));
        assert!(a.mobile_key("13812345678").starts_with("mk_"));
    }

    #[test]
    fn r_ano_2_known_vector() {
        // HMAC-SHA256(key = 32 × 0x07, "pid|HXEYE|P00012345"), first 16 bytes.
        let a = p(&[7u8; 32]);
        let id = PatientId {
            authority: "HXEYE".into(),
            id: Pii::new("P00012345".into()),
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(&[7u8; 32]).unwrap();
        mac.update(b"pid|HXEYE|P00012345");
        let full = hex(&mac.finalize().into_bytes());
        assert_eq!(a.patient_key(&id), format!("pk_{}", &full[..32]));
    }

    #[test]
    fn r_ano_2_short_key_or_empty_id_refused() {
        assert_eq!(
            Pseudonymizer::new(&[1u8; 31], "k").unwrap_err(),
            KeyError::TooShort(31)
        );
        assert_eq!(
            Pseudonymizer::new(&[1u8; 32], " ").unwrap_err(),
            KeyError::EmptyKeyId
        );
        let dbg = format!("{:?}", p(&[9u8; 32]));
        assert!(!dbg.contains("9, 9"), "{dbg}");
    }

    #[test]
    fn r_ano_3_masks() {
        assert_eq!(mask_name("张"), "*");
        assert_eq!(mask_name("张三"), "张*");
        assert_eq!(mask_name("张三明"), "张*明");
        assert_eq!(mask_name("欧阳娜娜"), "欧**娜");
        assert_eq!(mask_name("王秀英"), "王*英");
        assert_eq!(mask_name("阿依·古丽"), "阿**丽");
        assert_eq!(mask_mobile("13812345678"), "138****5678");
        assert_eq!(mask_id_card("110101199003071233"), "110***********1233");
    }

    #[test]
    fn r_ano_4_age_bands() {
        let on = date(2026, 11, 20);
        assert_eq!(age_band(date(2010, 5, 5), on), Some("14-17"));
        assert_eq!(
            age_band(date(2008, 11, 20), on),
            Some("18-29"),
            "18 on the day"
        );
        assert_eq!(age_band(date(2008, 11, 21), on), Some("14-17"));
        assert_eq!(age_band(date(1955, 12, 12), on), Some("70-79"));
        assert_eq!(age_band(date(1930, 1, 1), on), Some("80+"));
        assert_eq!(age_band(date(2026, 11, 1), on), Some("0-6"));
        assert_eq!(age_band(date(2027, 1, 1), on), None);
    }
}
