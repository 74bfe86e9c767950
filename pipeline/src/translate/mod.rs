//! Bytes → mapped outcome: decode, choose the connector's mapping, apply.
//!
//! [`decode`] is the whole path of one message body: the steps of [`crate::decode`] (size
//! limit, framing, format, charset, parse with the HL7 v2 format-level checks), then the first
//! of the connector's mappings whose conditions hold ([`MappingSet::choose`]), applied to the
//! parsed document; an HL7 v2 trigger mismatch (R-EVT-3) becomes a warning on the event.

pub mod testing;

use std::collections::BTreeMap;

use crate::decode::{DecodeOptions, Format, hl7v2, json, prepare, xml};
use crate::event::Warning;
use crate::mapping::path::{Doc, Env};
use crate::mapping::{ApplyContext, MappingSet, Outcome};
use crate::reason::Rejection;

/// A message after decoding and mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub format: Format,
    /// The name of the mapping that was applied.
    pub mapping: String,
    pub outcome: Outcome,
}

/// Decode one message body with the connector's mappings.
pub fn decode(
    body: &[u8],
    opts: &DecodeOptions,
    set: &MappingSet,
    headers: &BTreeMap<String, String>,
) -> Result<Decoded, Rejection> {
    let (format, body) = prepare(body, opts.max_bytes)?;
    let (mapping, outcome) = match format {
        Format::Hl7v2 => {
            let text = hl7v2::decode_text(body, opts.default_charset)?;
            let (msg, facts) = hl7v2::parse(&text)?;
            let (mapping, mut outcome) = apply(format, &Doc::Hl7(&msg), opts, set, headers)?;
            if facts.trigger_mismatch
                && let Outcome::Event(e) = &mut outcome
            {
                e.warnings.push(Warning::TriggerMismatch);
            }
            (mapping, outcome)
        }
        Format::Xml => {
            let doc = xml::parse(body, opts.default_charset)?;
            apply(format, &Doc::Xml(&doc), opts, set, headers)?
        }
        Format::Json => {
            let value = json::parse_json(body)?;
            apply(format, &Doc::Json(&value), opts, set, headers)?
        }
    };
    Ok(Decoded {
        format,
        mapping,
        outcome,
    })
}

/// Choose the connector's mapping for a parsed document and apply it: the mapping's name and
/// what it made of the message.
fn apply(
    format: Format,
    doc: &Doc<'_>,
    opts: &DecodeOptions,
    set: &MappingSet,
    headers: &BTreeMap<String, String>,
) -> Result<(String, Outcome), Rejection> {
    let env = Env {
        headers,
        facility: &opts.facility,
        unmatched: Default::default(),
    };
    let mapping = set.choose(format, doc, &env)?;
    let ctx = ApplyContext {
        zone: &opts.zone,
        now: opts.now,
        headers,
        facility: &opts.facility,
    };
    let outcome = mapping.apply(doc, &ctx).map_err(|mut r| {
        r.mapping = Some(mapping.name.clone());
        r
    })?;
    Ok((mapping.name.clone(), outcome))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventKind, PatientClass, PatientEvent, Sex};
    use crate::reason::DeadLetterReason;

    const A03: &str = "MSH|^~\\&|HIS|HXEYE_SH01|CEM-BRIDGE|CEM|20261120160000||ADT^A03^ADT_A03|MSG20261120160000004|P|2.5|||AL|NE||UNICODE UTF-8\rEVN|A03|20261120155500\rPID|1||P00067890^^^HXEYE^PI~31010419551212002X^^^CHN^NI||王^秀英||19551212|F|||中山北路100号^^上海市^^200010^CHN||13998765432^PRN^CP|||||||||||||||||N\rPV1|1|I|CAT02^^^HXEYE_SH01^^^^^白内障病区||||D2048^陈^明^^^主任医师|||CAT02|||||||||Z2026111500087|||||||||||||||||01||||||||20261115075500|20261120155500\r";

    fn opts() -> DecodeOptions {
        DecodeOptions::at("2026-11-23T00:00:00Z".parse().unwrap())
    }

    fn any(b: &[u8]) -> Result<PatientEvent, Rejection> {
        crate::mapping::tests::decode_event(b, &opts())
    }

    fn dec(s: &str) -> Result<PatientEvent, Rejection> {
        any(s.as_bytes())
    }

    #[test]
    fn r_evt_7_a03_fields() {
        let e = dec(A03).unwrap();
        assert_eq!(e.kind, EventKind::Discharged);
        assert_eq!(e.message_key, "HIS|HXEYE_SH01|MSG20261120160000004");
        assert_eq!(e.message_id, "MSG20261120160000004");
        assert!(e.production);
        assert_eq!(e.event_time.to_string(), "2026-11-20T07:55:00Z");
        assert_eq!(e.patient.id.authority, "HXEYE");
        assert_eq!(e.patient.id.id.expose(), "P00067890");
        assert_eq!(
            e.patient.id_card.as_ref().unwrap().expose(),
            "31010419551212002X"
        );
        assert_eq!(e.patient.name.as_ref().unwrap().expose(), "王秀英");
        assert_eq!(e.patient.family_name.as_ref().unwrap().expose(), "王");
        assert_eq!(e.patient.sex, Sex::Female);
        assert_eq!(e.patient.mobile.as_ref().unwrap().expose(), "13998765432");
        assert_eq!(e.patient.city.as_deref(), Some("上海市"));
        assert!(!e.patient.deceased);
        let visit = e.visit.unwrap();
        assert_eq!(visit.number.expose(), "Z2026111500087");
        assert_eq!(visit.facility, "HXEYE_SH01");
        assert_eq!(visit.class, PatientClass::Inpatient);
        assert_eq!(visit.dept_code.as_deref(), Some("CAT02"));
        assert_eq!(visit.dept_name.as_deref(), Some("白内障病区"));
        assert_eq!(visit.doctor_code.as_deref(), Some("D2048"));
        assert_eq!(visit.disposition.as_deref(), Some("01"));
        assert_eq!(visit.discharge.unwrap().to_string(), "2026-11-20T07:55:00Z");
        assert!(e.warnings.is_empty(), "{:?}", e.warnings);
    }

    /// R-ANO-8: a phone or ID number where a code belongs (event code, MSH-18 charset, MSH-12
    /// version, an XML encoding label) is not quoted in the rejection: the detail goes to the
    /// log, `/api/summary` and the ops page.
    #[test]
    fn r_ano_8_hostile_values_in_coded_fields_stay_out_of_rejections() {
        let phone = "13812345678";
        let idc = "31010419551212002X";
        let cases = [
            A03.replace("ADT^A03", &format!("ADT^{phone}"))
                .replace("EVN|A03", &format!("EVN|{phone}")),
            A03.replace("UNICODE UTF-8", idc),
            A03.replace("|2.5|", &format!("|{phone}|")),
            format!("<?xml version=\"1.0\" encoding=\"{phone}\"?><a/>"),
        ];
        for m in cases {
            let r = dec(&m).expect_err("rejected");
            let text = r.to_string();
            assert!(
                !text.contains(phone) && !text.contains(idc),
                "a personal value in {text}"
            );
            assert!(text.contains("value withheld"), "{text}");
        }
    }

    #[test]
    fn r_evt_1_an_msh_alone_is_truncated() {
        let msh = A03.split('\r').next().unwrap();
        for m in [format!("{msh}\r"), msh.to_string(), format!("{msh}\r\r\n")] {
            let r = dec(&m).expect_err("rejected");
            assert_eq!(r.reason, crate::reason::DeadLetterReason::Truncated, "{r}");
        }
    }

    #[test]
    fn r_evt_2_segment_ends_lf_and_crlf() {
        for sep in ["\n", "\r\n"] {
            let e = dec(&A03.replace('\r', sep)).unwrap();
            assert_eq!(
                e.visit.unwrap().number.expose(),
                "Z2026111500087",
                "{sep:?}"
            );
        }
    }

    #[test]
    fn r_evt_2_escapes_after_chinese_text_do_not_panic() {
        // hl7-parser's own decoder panics here (crates.md gotcha 2).
        let m = A03.replace("王^秀英", "欧阳^娜娜\\F\\测试\\S\\x\\E\\");
        let e = dec(&m).unwrap();
        assert_eq!(e.patient.name.unwrap().expose(), "欧阳娜娜|测试^x\\");
    }

    #[test]
    fn r_id_4_patient_key_prefers_pi_then_mr_then_first() {
        let m = A03.replace(
            "P00067890^^^HXEYE^PI~31010419551212002X^^^CHN^NI",
            "31010419551212002X^^^CHN^NI~M1^^^^MR~P9^^^&1.2.3&ISO^PI",
        );
        let e = dec(&m).unwrap();
        assert_eq!(e.patient.id.id.expose(), "P9");
        assert_eq!(e.patient.id.authority, "HXEYE_SH01", "empty 3.4 → MSH-4");
        let m = A03.replace("P00067890^^^HXEYE^PI", "M1^^^HX^MR~X7^^^HX");
        assert_eq!(dec(&m).unwrap().patient.id.id.expose(), "M1");
        let m = A03.replace("P00067890^^^HXEYE^PI", "X7^^^HX~X8^^^HX");
        assert_eq!(dec(&m).unwrap().patient.id.id.expose(), "X7");
    }

    /// Issue 18 §4: a code the shipped JSON mapping's `disposition` table does not know is
    /// kept as the value and reported, with the code shown (a disposition is a code); a known
    /// one is not reported.
    #[test]
    fn an_unknown_table_code_kept_as_the_value_is_reported() {
        let json = include_str!("../../../tests/fixtures/samples/json/discharge.json");
        let e = any(json.replace("\"HOME\"", "\"4\"").as_bytes()).unwrap();
        assert_eq!(e.visit.as_ref().unwrap().disposition.as_deref(), Some("4"));
        assert_eq!(e.unmatched_codes.len(), 1, "{:?}", e.unmatched_codes);
        let u = &e.unmatched_codes[0];
        assert_eq!(
            (u.table.as_str(), u.field.name()),
            ("disposition", "visit.disposition")
        );
        assert_eq!(u.mapping, "json-his-events");
        assert_eq!(u.code_shown(), Some("4"));
        assert!(any(json.as_bytes()).unwrap().unmatched_codes.is_empty());
        let personal = crate::event::UnmatchedCode {
            field: crate::mapping::target::Target::PatientCity,
            ..u.clone()
        };
        assert_eq!(personal.code_shown(), None, "not a code-like field");
    }

    #[test]
    fn r_id_1_invalid_id_card_is_dropped_with_a_warning() {
        let m = A03.replace("31010419551212002X", "310104195512120021");
        let e = dec(&m).unwrap();
        assert!(e.patient.id_card.is_none());
        assert!(e.warnings.contains(&Warning::IdcardInvalid));
    }

    #[test]
    fn r_id_2_mobile_prefers_cp_and_skips_landlines() {
        let m = A03.replace(
            "13998765432^PRN^CP",
            "02161234567^WPN^PH~^PRN^CP^^^^^^^^^+86 139 1111 2222",
        );
        let e = dec(&m).unwrap();
        assert_eq!(e.patient.mobile.unwrap().expose(), "13911112222");
        let m = A03.replace("13998765432^PRN^CP", "02161234567^WPN^PH");
        assert!(dec(&m).unwrap().patient.mobile.is_none(), "EX-17");
    }

    #[test]
    fn r_exc_5_and_r_exc_6_vip_publicity_and_guardian() {
        let m = A03
            .replace("\rPV1|1|I|", "\rPD1|||||||||||02|Y\rNK1|1|欧阳^丽|SPO||13900002222\rNK1|2|欧阳^丽|MTH||13900001111\rPV1|1|I|")
            .replace("|CAT02|||||||||Z2026", "|CAT02||||||Y|||Z2026");
        let e = dec(&m).unwrap();
        assert_eq!(e.patient.publicity_code.as_deref(), Some("02"));
        assert!(e.patient.protected);
        assert_eq!(
            e.patient.guardian_mobile.unwrap().expose(),
            "13900001111",
            "SPO is not a guardian"
        );
        assert_eq!(e.visit.unwrap().vip_indicator.as_deref(), Some("Y"));
        let plain = dec(A03).unwrap();
        assert!(!plain.patient.protected && plain.patient.guardian_mobile.is_none());
        assert!(plain.visit.unwrap().vip_indicator.is_none());
    }

    #[test]
    fn r_exc_1_deceased_flags() {
        let m = A03.replace(
            "||||||||||||||||N\rPV1",
            "|||||||||||||||20261121083000|Y\rPV1",
        );
        assert!(dec(&m).unwrap().patient.deceased);
    }

    #[test]
    fn r_evt_6_rejections() {
        let cases = [
            (
                "MSH|^~\\&|HIS|HXEYE_SH01|CEM-BRIDGE|CEM|2026112009",
                DeadLetterReason::Truncated,
            ),
            (
                &A03.replace("ADT^A03^ADT_A03", "ADT^Z99^ADT_A01")
                    .replace("EVN|A03", "EVN|Z99"),
                DeadLetterReason::UnknownEvent,
            ),
            (
                &A03.replace("P00067890^^^HXEYE^PI~31010419551212002X^^^CHN^NI", ""),
                DeadLetterReason::MissingPatientId,
            ),
            (
                &A03.replace("Z2026111500087", ""),
                DeadLetterReason::MissingVisitNumber,
            ),
            (
                &A03.replace("|P|2.5|", "|P|2.6|"),
                DeadLetterReason::UnsupportedVersion,
            ),
            (
                &A03.replace("MSG20261120160000004", ""),
                DeadLetterReason::Truncated,
            ),
            (
                &A03.replace("UNICODE UTF-8", "ISO IR100"),
                DeadLetterReason::InvalidEncoding,
            ),
        ];
        for (m, want) in cases {
            let e = dec(m).unwrap_err();
            assert_eq!(e.reason, want, "{}", e.detail);
            for pii in ["P00067890", "王", "13998765432", "31010419551212002X"] {
                assert!(!e.detail.contains(pii), "detail leaks {pii}: {}", e.detail);
            }
        }
    }

    #[test]
    fn r_evt_3_msh_trigger_wins_over_evn() {
        let m = A03.replace("EVN|A03", "EVN|A04");
        let e = dec(&m).unwrap();
        assert_eq!(e.kind, EventKind::Discharged);
        assert!(e.warnings.contains(&Warning::TriggerMismatch));
    }

    #[test]
    fn r_evt_2_gb18030_by_msh_18() {
        let m = A03.replace("UNICODE UTF-8", "GB 18030-2000");
        let (bytes, _, _) = encoding_rs::GB18030.encode(&m);
        let e = any(&bytes).unwrap();
        assert_eq!(e.patient.name.unwrap().expose(), "王秀英");
        // The same bytes declared as UTF-8 are invalid, never guessed.
        let (bytes, _, _) = encoding_rs::GB18030.encode(A03);
        let e = any(&bytes).unwrap_err();
        assert_eq!(e.reason, DeadLetterReason::InvalidEncoding);
    }

    #[test]
    fn r_evt_1_mllp_framed_message_decodes() {
        let framed = format!("\x0b{A03}\x1c\r");
        assert_eq!(dec(&framed).unwrap().message_id, "MSG20261120160000004");
    }

    #[test]
    fn r_evt_1_oversized() {
        let opts = DecodeOptions {
            max_bytes: 10,
            ..opts()
        };
        let e = decode(
            b"MSH|^~\\&|0123456789",
            &opts,
            &MappingSet::default(),
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert_eq!(e.reason, DeadLetterReason::Oversized);
    }
}
