//! HL7 v2 ER7: the charset of MSH-18 and the format-level checks; wraps hl7-parser 0.3 with
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

use hl7_parser::Message;
use hl7_parser::message::{Field, Repeat, Segment, Separators};

use super::Charset;
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

/// What the format-level checks found that is not a rejection, for the caller to apply to the
/// mapped event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hl7Facts {
    /// MSH-9.2 and EVN-1 are both present and differ (R-EVT-3): MSH-9.2 wins, and the event
    /// carries the `trigger_mismatch` warning.
    pub trigger_mismatch: bool,
}

/// The text of an HL7 v2 body (framing already stripped), in the charset MSH-18 names
/// (R-EVT-2), else in `default_charset`. An unsupported MSH-18 or invalid bytes are
/// `invalid_encoding`.
pub fn decode_text(body: &[u8], default_charset: Charset) -> Result<Cow<'_, str>, Rejection> {
    let charset = match declared_charset(body) {
        Some(label) if !label.is_empty() => {
            let label = std::str::from_utf8(label).unwrap_or("");
            let label = label.split('^').next().unwrap_or(label);
            Charset::from_label(label).ok_or_else(|| {
                Rejection::new(
                    R::InvalidEncoding,
                    format!("MSH-18 names a charset that is not supported: {} (use UNICODE UTF-8, GBK, GB2312 or GB 18030-2000)", crate::reason::quoted(label)),
                )
            })?
        }
        _ => default_charset,
    };
    charset.decode(body)
}

/// Parse the text of an HL7 v2 message ([`decode_text`]) and apply the format-level rules that
/// stay here, whatever a mapping says: a parseable structure with MSH-9 and MSH-10 (else
/// `truncated`), MSH-12 within 2.3–2.5.1 (R-EVT-6); and note a trigger mismatch (R-EVT-3).
pub fn parse(text: &str) -> Result<(Message<'_>, Hl7Facts), Rejection> {
    let msg = Message::parse_with_lenient_newlines(text, true).map_err(|e| {
        // The parser's own message quotes the input; report the position only.
        let at = match e {
            hl7_parser::parser::ParseError::FailedToParse { position, .. } => {
                format!("at character {position}")
            }
            hl7_parser::parser::ParseError::IncompleteInput(_) => "at the end".to_string(),
        };
        Rejection::new(R::Truncated, format!("HL7 structure cannot be parsed {at}"))
    })?;
    let facts = check(&msg)?;
    Ok((msg, facts))
}

fn check(msg: &Message<'_>) -> Result<Hl7Facts, Rejection> {
    let v = View {
        msg,
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
            format!(
                "MSH-12 version {} is outside 2.3–2.5.1 (message {control_id})",
                crate::reason::quoted(&version)
            ),
        ));
    }
    // Only an MSH (trailing empty lines aside): the rest was cut off.
    if msg
        .segments
        .iter()
        .filter(|s| !s.name.trim().is_empty())
        .count()
        < 2
    {
        return Err(Rejection::new(
            R::Truncated,
            "the message has only its MSH segment: the rest was cut off",
        ));
    }
    let trigger_mismatch = matches!(
        (v.get("MSH", 9, 2), v.get("EVN", 1, 1)),
        (Some(m), Some(e)) if m != e
    );
    Ok(Hl7Facts { trigger_mismatch })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reason::DeadLetterReason;

    const MSH: &str = "MSH|^~\\&|HIS|HXEYE_SH01|CEM-BRIDGE|CEM|20261120160000||ADT^A03^ADT_A03|MSG1|P|2.5|||AL|NE||UNICODE UTF-8\rEVN|A03|20261120155500\rPID|1||P1^^^HXEYE^PI\r";

    fn parsed(text: &str) -> Result<Hl7Facts, Rejection> {
        parse(text).map(|(_, facts)| facts)
    }

    #[test]
    fn r_evt_2_unescape_works_on_byte_positions() {
        // hl7-parser's own decoder panics on these (crates.md gotcha 2).
        let seps = Separators::default();
        assert_eq!(
            unescape(&seps, "欧阳^娜娜\\F\\测试\\S\\x\\E\\"),
            "欧阳^娜娜|测试^x\\"
        );
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
    fn r_evt_6_format_checks_need_no_mapping() {
        let (msg, facts) = parse(MSH).unwrap();
        assert!(msg.segment("PID").is_some());
        assert_eq!(facts, Hl7Facts::default());
        let cases = [
            (
                "MSH|^~\\&|HIS|HXEYE_SH01|CEM-BRIDGE|CEM|2026112009".to_string(),
                DeadLetterReason::Truncated,
            ),
            (
                MSH.replace("ADT^A03^ADT_A03", ""),
                DeadLetterReason::Truncated,
            ),
            (MSH.replace("|MSG1|", "||"), DeadLetterReason::Truncated),
            (
                MSH.replace("|P|2.5|", "|P|2.6|"),
                DeadLetterReason::UnsupportedVersion,
            ),
            (
                MSH.replace("|P|2.5|", "|P||"),
                DeadLetterReason::UnsupportedVersion,
            ),
        ];
        for (m, want) in cases {
            let e = parsed(&m).unwrap_err();
            assert_eq!(e.reason, want, "{}", e.detail);
            assert!(!e.detail.contains("P1^"), "{}", e.detail);
        }
    }

    #[test]
    fn r_evt_3_trigger_mismatch_is_a_fact_not_a_rejection() {
        let m = MSH.replace("EVN|A03", "EVN|A04");
        assert!(parsed(&m).unwrap().trigger_mismatch);
        let no_evn = MSH.replace("EVN|A03|20261120155500\r", "");
        assert!(!parsed(&no_evn).unwrap().trigger_mismatch);
    }

    #[test]
    fn r_evt_2_decode_text_follows_msh_18() {
        let gb = MSH.replace("UNICODE UTF-8", "GB 18030-2000") + "NK1|1|王^丽\r";
        let (bytes, _, _) = encoding_rs::GB18030.encode(&gb);
        assert_eq!(decode_text(&bytes, Charset::Utf8).unwrap(), gb);
        let none = MSH.replace("|UNICODE UTF-8", "|") + "NK1|1|王^丽\r";
        let (bytes, _, _) = encoding_rs::GB18030.encode(&none);
        assert_eq!(
            decode_text(&bytes, Charset::Gb18030).unwrap(),
            none,
            "no MSH-18: the connector's default"
        );
        let e = decode_text(&bytes, Charset::Utf8).unwrap_err();
        assert_eq!(e.reason, DeadLetterReason::InvalidEncoding);
        let e = decode_text(
            MSH.replace("UNICODE UTF-8", "ISO IR100").as_bytes(),
            Charset::Utf8,
        )
        .unwrap_err();
        assert_eq!(e.reason, DeadLetterReason::InvalidEncoding);
    }

    #[test]
    fn declared_charset_reads_msh_18() {
        assert_eq!(
            declared_charset(MSH.as_bytes()),
            Some(&b"UNICODE UTF-8"[..])
        );
        assert_eq!(declared_charset(b"MSH|^~\\&|A"), None);
        assert_eq!(declared_charset(b"MS"), None);
    }
}
