//! HL7 v2 ER7: format-level checks, then the connector's mapping; wraps hl7-parser 0.3 with
//! the two workarounds it needs.
//!
//! 1. hl7-parser's `Separators::decode` (and every `.display()`) slices bytes with character
//!    indexes and panics on non-ASCII text before an escape (`北京市\F\朝阳区`). We never call
//!    it: [`unescape`] decodes escapes on byte positions.
//! 2. Its `MessageBuilder` double-escapes existing escapes; we never rebuild messages.
//!
//! Segments may end with `\r`, `\n` or `\r\n` (lenient parsing). Field numbers follow HL7:
//! `MSH-9` is MSH field 9. Which fields make the event is the mapping's business
//! (mappings/hl7v2/adt.yaml ships the R-EVT-7 / R-ID-1..4 mapping).

use std::borrow::Cow;
use std::collections::BTreeMap;

use hl7_parser::Message;
use hl7_parser::message::{Field, Repeat, Segment, Separators};

use super::{Charset, DecodeOptions, Format};
use crate::event::Warning;
use crate::mapping::path::{Doc, Env};
use crate::mapping::{ApplyContext, MappingSet, Outcome};
use crate::reason::{DeadLetterReason as R, Rejection};

/// HL7 versions accepted (R-EVT-6).
pub const SUPPORTED_VERSIONS: [&str; 5] = ["2.3", "2.3.1", "2.4", "2.5", "2.5.1"];

/// Read MSH-18 from raw bytes, before the body is decoded (the MSH segment is ASCII in
/// practice; a non-ASCII label simply does not match any charset).
pub fn declared_charset(body: &[u8]) -> Option<&[u8]> {
    let end = body
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(body.len());
    let msh = &body[..end];
    let sep = *msh.get(3)?;
    // MSH-1 is the separator itself, so field n is split element n-1.
    msh.split(|&b| b == sep).nth(17)
}

/// Undo HL7 escapes on a raw value, working on byte positions (UTF-8 safe).
///
/// `\F\ \S\ \T\ \R\ \E\` become the separators, `\Xhh..\` the bytes it encodes when they form
/// UTF-8 text, `\X0A\`/`\X0D\`/`\.br\` line breaks; formatting escapes (`\H\ \N\` …) are dropped;
/// an unterminated escape is kept as text.
pub fn unescape<'a>(seps: &Separators, raw: &'a str) -> Cow<'a, str> {
    let esc = seps.escape;
    if !raw.contains(esc) {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find(esc) {
        out.push_str(&rest[..i]);
        let after = &rest[i + esc.len_utf8()..];
        let Some(j) = after.find(esc) else {
            out.push_str(&rest[i..]);
            return Cow::Owned(out);
        };
        let code = &after[..j];
        match code {
            "F" => out.push(seps.field),
            "S" => out.push(seps.component),
            "T" => out.push(seps.subcomponent),
            "R" => out.push(seps.repetition),
            "E" => out.push(esc),
            ".br" => out.push('\n'),
            // Hex bytes that are not UTF-8 text are dropped rather than corrupted.
            _ if code.starts_with('X') => {
                if let Some(s) = hex_bytes(&code[1..]).and_then(|b| String::from_utf8(b).ok()) {
                    out.push_str(&s.replace('\r', "\n"));
                }
            }
            // \H\ \N\ \.sp\ \Cxxyy\ \Mxxyyzz\ \Zxx\: formatting or charset switches, dropped.
            _ => {}
        }
        rest = &after[j + esc.len_utf8()..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

fn hex_bytes(h: &str) -> Option<Vec<u8>> {
    if h.is_empty() || !h.len().is_multiple_of(2) || !h.is_ascii() {
        return None;
    }
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).ok())
        .collect()
}

/// Accessors that never pass index 0 to hl7-parser (its accessors subtract 1) and return
/// unescaped, trimmed, non-empty text.
struct View<'a> {
    msg: &'a Message<'a>,
    seps: Separators,
}

fn field<'s, 'm>(seg: &'s Segment<'m>, n: usize) -> Option<&'s Field<'m>> {
    if n == 0 { None } else { seg.field(n) }
}

fn component_raw<'r>(rep: &'r Repeat<'_>, c: usize) -> Option<&'r str> {
    if c == 0 {
        return None;
    }
    rep.component(c).map(|x| x.raw_value())
}

impl<'a> View<'a> {
    fn seg(&self, name: &str) -> Option<&'a Segment<'a>> {
        self.msg.segment(name)
    }

    fn text(&self, raw: &str) -> Option<String> {
        let v = unescape(&self.seps, raw);
        let v = v.trim();
        (!v.is_empty()).then(|| v.to_string())
    }

    /// Component `c` of the first repeat of field `f` of segment `seg`.
    fn get(&self, seg: &str, f: usize, c: usize) -> Option<String> {
        let rep = field(self.seg(seg)?, f)?.repeat(1)?;
        self.text(component_raw(rep, c)?)
    }
}

/// Decode an HL7 v2 message (framing already stripped) and apply the connector's mapping.
///
/// Format-level rules stay here, whatever the mapping says: the charset of MSH-18 (R-EVT-2), a
/// parseable structure with MSH-9 and MSH-10 (else `truncated`), MSH-12 within 2.3–2.5.1
/// (R-EVT-6), and the `trigger_mismatch` warning when MSH-9.2 and EVN-1 differ (R-EVT-3).
pub fn decode(
    body: &[u8],
    opts: &DecodeOptions,
    set: &MappingSet,
    headers: &BTreeMap<String, String>,
) -> Result<(String, Outcome), Rejection> {
    let charset = match declared_charset(body) {
        Some(label) if !label.is_empty() => {
            let label = std::str::from_utf8(label).unwrap_or("");
            let label = label.split('^').next().unwrap_or(label);
            Charset::from_label(label).ok_or_else(|| {
                Rejection::new(
                    R::InvalidEncoding,
                    format!("MSH-18 names a charset that is not supported: {label:?} (use UNICODE UTF-8, GBK, GB2312 or GB 18030-2000)"),
                )
            })?
        }
        _ => opts.default_charset,
    };
    let text = charset.decode(body)?;
    let msg = Message::parse_with_lenient_newlines(&text, true).map_err(|e| {
        // The parser's own message quotes the input; report the position only.
        let at = match e {
            hl7_parser::parser::ParseError::FailedToParse { position, .. } => {
                format!("at character {position}")
            }
            hl7_parser::parser::ParseError::IncompleteInput(_) => "at the end".to_string(),
        };
        Rejection::new(R::Truncated, format!("HL7 structure cannot be parsed {at}"))
    })?;
    let v = View {
        msg: &msg,
        seps: msg.separators,
    };
    let msh = v
        .seg("MSH")
        .ok_or_else(|| Rejection::new(R::Truncated, "no MSH segment"))?;
    if field(msh, 9).is_none_or(|f| f.raw_value().trim().is_empty()) {
        return Err(Rejection::new(
            R::Truncated,
            "MSH-9 (message type) is missing: the message is truncated",
        ));
    }
    let control_id = v
        .get("MSH", 10, 1)
        .ok_or_else(|| Rejection::new(R::Truncated, "MSH-10 (message control id) is missing"))?;
    let version = v.get("MSH", 12, 1).unwrap_or_default();
    if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
        return Err(Rejection::new(
            R::UnsupportedVersion,
            format!("MSH-12 version {version:?} is outside 2.3–2.5.1 (message {control_id})"),
        ));
    }
    let mismatch = matches!(
        (v.get("MSH", 9, 2), v.get("EVN", 1, 1)),
        (Some(m), Some(e)) if m != e
    );
    let doc = Doc::Hl7(&msg);
    let env = Env {
        headers,
        facility: &opts.facility,
    };
    let mapping = set.choose(Format::Hl7v2, &doc, &env)?;
    let ctx = ApplyContext {
        zone: &opts.zone,
        now: opts.now,
        headers,
        facility: &opts.facility,
    };
    let mut outcome = mapping.apply(&doc, &ctx)?;
    if mismatch && let Outcome::Event(e) = &mut outcome {
        e.warnings.push(Warning::TriggerMismatch);
    }
    Ok((mapping.name.clone(), outcome))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::DecodeOptions;
    use crate::event::{EventKind, PatientClass, PatientEvent, Sex};
    use crate::reason::DeadLetterReason;

    const A03: &str = "MSH|^~\\&|HIS|HXEYE_SH01|CEM-BRIDGE|CEM|20261120160000||ADT^A03^ADT_A03|MSG20261120160000004|P|2.5|||AL|NE||UNICODE UTF-8\rEVN|A03|20261120155500\rPID|1||P00067890^^^HXEYE^PI~31010419551212002X^^^CHN^NI||王^秀英||19551212|F|||中山北路100号^^上海市^^200010^CHN||13998765432^PRN^CP|||||||||||||||||N\rPV1|1|I|CAT02^^^HXEYE_SH01^^^^^白内障病区||||D2048^陈^明^^^主任医师|||CAT02|||||||||Z2026111500087|||||||||||||||||01||||||||20261115075500|20261120155500\r";

    fn opts() -> DecodeOptions {
        DecodeOptions {
            now: "2026-11-23T00:00:00Z".parse().unwrap(),
            ..Default::default()
        }
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
        let seps = Separators::default();
        assert_eq!(
            unescape(&seps, "北京市\\F\\朝阳区 A\\S\\B"),
            "北京市|朝阳区 A^B"
        );
        assert_eq!(unescape(&seps, "a\\X41\\b\\H\\c\\N\\"), "aAbc");
        assert_eq!(
            unescape(&seps, "王\\E6B189\\"),
            "王",
            "unknown escape dropped"
        );
        assert_eq!(unescape(&seps, "\\XE78E8B\\"), "王");
        assert_eq!(unescape(&seps, "tail\\F"), "tail\\F", "unterminated kept");
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
    fn declared_charset_reads_msh_18() {
        assert_eq!(
            declared_charset(A03.as_bytes()),
            Some(&b"UNICODE UTF-8"[..])
        );
        assert_eq!(declared_charset(b"MSH|^~\\&|A"), None);
        assert_eq!(declared_charset(b"MS"), None);
    }
}
