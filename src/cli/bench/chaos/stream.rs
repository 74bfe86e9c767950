//! The stream a chaos run publishes: distinct patients, visits and mobiles (so do-not-disturb
//! holds none back), HL7 A04 / A03 / A11 / A08, 互联互通 XML, JSON, about 2 % bad input and one
//! poison message, each with the outcomes its kind allows.

use std::collections::BTreeMap;

const A04: &str =
    include_str!("../../../../tests/fixtures/samples/hl7v2/adt_a04_outpatient_registration.hl7");
const A03: &str = include_str!("../../../../tests/fixtures/samples/hl7v2/adt_a03_discharge.hl7");
const A11: &str =
    include_str!("../../../../tests/fixtures/samples/hl7v2/adt_a11_cancel_registration.hl7");
const A08: &str = include_str!("../../../../tests/fixtures/samples/hl7v2/adt_a08_update_phone.hl7");
const XML: &str = include_str!("../../../../tests/fixtures/samples/xml/registration_utf8.xml");
const JSON: &str = include_str!("../../../../tests/fixtures/samples/json/registration.json");

/// Where a message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Class {
    Pushed,
    Pending,
    Cancelled,
    Suppressed,
    Recorded,
    DeadLettered,
    Lost,
    TwoEffects,
}

impl Class {
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Pushed => "pushed",
            Self::Pending => "pending",
            Self::Cancelled => "cancelled",
            Self::Suppressed => "suppressed",
            Self::Recorded => "recorded",
            Self::DeadLettered => "dead-lettered",
            Self::Lost => "LOST",
            Self::TwoEffects => "TWO EFFECTS",
        }
    }
}

/// One distinct message of the stream, and the outcomes its kind allows.
pub(super) struct Msg {
    pub(super) id: String,
    pub(super) kind: &'static str,
    pub(super) body: Vec<u8>,
    pub(super) headers: BTreeMap<String, String>,
    pub(super) allowed: &'static [Class],
}

/// A small deterministic generator (xorshift), so a run can be repeated.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn hl7_with(base: &str, id: &str, pid: &str, visit: &str, mobile: &str) -> Vec<u8> {
    base.replace("MSG20261120093015001", id)
        .replace("MSG20261120160000004", id)
        .replace("MSG20261120101500002", id)
        .replace("MSG20261120163000006", id)
        .replace("~110101199003071233^^^CHN^NI", "")
        .replace("~31010419551212002X^^^CHN^NI", "")
        .replace("P00012345", pid)
        .replace("P00067890", pid)
        .replace("V20261120001", visit)
        .replace("Z2026111500087", visit)
        .replace("13812345678", mobile)
        .replace("13998765432", mobile)
        .replace("13711112222", mobile)
        .into_bytes()
}

/// The stream: `n` distinct messages (distinct patients, visits and mobiles, so do-not-disturb
/// holds none back), in publishing order.
pub(super) fn plan(n: usize, seed: u64) -> Vec<Msg> {
    let mut rng = Rng(seed | 1);
    let mut out: Vec<Msg> = Vec::with_capacity(n);
    // Registrations a later A11 cancels: their visit is after the bench clock, so they are
    // pending (never pushed) when the cancel comes, whatever the order after redeliveries.
    let mut cancellable: Vec<(String, String)> = Vec::new();
    let mut registered: Vec<String> = Vec::new();
    let headers = BTreeMap::new;
    for i in 0..n {
        let id = format!("CH-{i:07}");
        let pid = format!("PCH{i:07}");
        let visit = format!("VCH{i:07}");
        let mobile = format!("139{i:08}");
        let roll = rng.below(1000);
        let m = if i + 1 == n / 2 {
            // The poison message: a NUL byte in its id. PostgreSQL refuses it in every
            // transaction, so it is isolated and dead-lettered; SQLite stores it.
            Msg {
                id: format!("{id}\0P"),
                kind: "poison",
                body: hl7_with(A04, &format!("{id}\0P"), &pid, &visit, &mobile),
                headers: headers(),
                allowed: &[Class::DeadLettered, Class::Pushed],
            }
        } else if roll < 20 {
            let body = if roll < 10 {
                format!("MSH|^~\\&|HIS|HXEYE_SH01|CEM-BRIDGE|CEM|2026112009{i}").into_bytes()
            } else {
                String::from_utf8_lossy(&hl7_with(A04, &id, &pid, &visit, &mobile))
                    .replace("ADT^A04^ADT_A01", "ADT^Z99^ADT_A01")
                    .replace("EVN|A04|", "EVN|Z99|")
                    .into_bytes()
            };
            Msg {
                id: id.clone(),
                kind: "bad",
                body,
                headers: headers(),
                allowed: &[Class::DeadLettered],
            }
        } else if roll < 100 && !cancellable.is_empty() {
            let k = rng.below(cancellable.len() as u64) as usize;
            let (tpid, tvisit) = cancellable.swap_remove(k);
            Msg {
                id: id.clone(),
                kind: "A11",
                body: hl7_with(A11, &id, &tpid, &tvisit, &mobile),
                headers: headers(),
                allowed: &[Class::Recorded],
            }
        } else if roll < 160 {
            let body = String::from_utf8_lossy(&hl7_with(A04, &id, &pid, &visit, &mobile))
                .replace("|20261120093000\r", "|20261121120000\r")
                .into_bytes();
            cancellable.push((pid.clone(), visit.clone()));
            Msg {
                id: id.clone(),
                kind: "A04 (to cancel)",
                body,
                headers: headers(),
                // Cancelled; or, when the cancel arrived first, recorded as cancelled before;
                // pending if its cancel was never drawn.
                allowed: &[Class::Cancelled, Class::Recorded, Class::Pending],
            }
        } else if roll < 210 && !registered.is_empty() {
            let k = rng.below(registered.len() as u64) as usize;
            let tpid = registered[k].clone();
            Msg {
                id: id.clone(),
                kind: "A08",
                body: hl7_with(A08, &id, &tpid, &visit, &format!("137{i:08}")),
                headers: headers(),
                allowed: &[Class::Recorded],
            }
        } else if roll < 310 {
            Msg {
                id: id.clone(),
                kind: "A03",
                body: hl7_with(A03, &id, &pid, &visit, &mobile),
                headers: headers(),
                allowed: &[Class::Pushed],
            }
        } else if roll < 360 {
            let body = XML
                .replace("XMLREG20261120093500001", &id)
                .replace("V20261120003", &visit)
                .replace("P00033333", &pid)
                .replace("13933334444", &mobile)
                .replace("330106197712123458", "")
                .into_bytes();
            Msg {
                id: id.clone(),
                kind: "XML S0023",
                body,
                headers: [("service-code".to_string(), "S0023".to_string())].into(),
                allowed: &[Class::Pushed],
            }
        } else if roll < 410 {
            let body = JSON
                .replace("EVT-20261120-0001", &id)
                .replace("V20261120005", &visit)
                .replace("P00077777", &pid)
                .replace("13577778888", &mobile)
                .replace("110101200001011232", "")
                .into_bytes();
            Msg {
                id: id.clone(),
                kind: "JSON",
                body,
                headers: headers(),
                allowed: &[Class::Pushed],
            }
        } else {
            registered.push(pid.clone());
            Msg {
                id: id.clone(),
                kind: "A04",
                body: hl7_with(A04, &id, &pid, &visit, &mobile),
                headers: headers(),
                allowed: &[Class::Pushed],
            }
        };
        out.push(m);
    }
    out
}
