//! Well-formedness checks for XML and JSON bodies (R-EVT-6, R-GEN-3).
//!
//! XML with a DTD or entity declarations is refused (no XXE, no billion laughs); JSON nested
//! deeper than 64 levels is refused.

use quick_xml::Reader;
use quick_xml::events::Event;

use crate::reason::{DeadLetterReason, Rejection};

/// Maximum JSON nesting (R-GEN-3).
pub const MAX_JSON_DEPTH: usize = 64;

/// Check that an XML body is well-formed, has one root and no DTD.
pub fn check_xml(body: &[u8]) -> Result<(), Rejection> {
    let bad = |detail: String| Rejection::new(DeadLetterReason::MalformedXml, detail);
    let mut reader = Reader::from_reader(body);
    reader.config_mut().check_end_names = true;
    let mut buf = Vec::new();
    let mut depth: usize = 0;
    let mut roots = 0;
    loop {
        let pos = reader.buffer_position();
        match reader.read_event_into(&mut buf) {
            Ok(Event::Eof) => break,
            Ok(Event::DocType(_)) => {
                return Err(bad(format!(
                    "DTD at byte {pos}: documents with a DOCTYPE or entity declarations are refused"
                )));
            }
            Ok(Event::Start(_)) => {
                if depth == 0 {
                    roots += 1;
                }
                depth += 1;
            }
            Ok(Event::Empty(_)) => {
                if depth == 0 {
                    roots += 1;
                }
            }
            Ok(Event::End(_)) => depth = depth.saturating_sub(1),
            Ok(_) => {}
            Err(e) => {
                return Err(bad(format!(
                    "XML error near byte {}: {}",
                    reader.error_position(),
                    xml_error_kind(&e)
                )));
            }
        }
        buf.clear();
    }
    if depth != 0 {
        return Err(bad(format!("XML ends with {depth} unclosed element(s)")));
    }
    if roots != 1 {
        return Err(bad(format!(
            "XML has {roots} root elements; exactly one is required"
        )));
    }
    Ok(())
}

/// A description of an XML error without document content.
fn xml_error_kind(e: &quick_xml::Error) -> &'static str {
    use quick_xml::Error as E;
    match e {
        E::Syntax(_) => "syntax error",
        E::IllFormed(_) => "ill-formed document (mismatched or missing tags)",
        E::Encoding(_) => "invalid encoding",
        E::Escape(_) => "bad escape or entity reference",
        _ => "unreadable XML",
    }
}

/// Check that a JSON body parses and nests at most [`MAX_JSON_DEPTH`] levels.
pub fn check_json(body: &[u8]) -> Result<(), Rejection> {
    let bad = |detail: String| Rejection::new(DeadLetterReason::MalformedJson, detail);
    // Depth first, with a scanner that respects strings, so serde never recurses deeply.
    let (mut depth, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for &b in body {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if max > MAX_JSON_DEPTH {
        return Err(bad(format!(
            "JSON nests {max} levels; at most {MAX_JSON_DEPTH} are allowed"
        )));
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map(|_| ())
        .map_err(|e| {
            bad(format!(
                "JSON error at line {} column {}: {}",
                e.line(),
                e.column(),
                match e.classify() {
                    serde_json::error::Category::Eof => "unexpected end of input",
                    serde_json::error::Category::Syntax => "syntax error",
                    serde_json::error::Category::Data => "invalid data",
                    serde_json::error::Category::Io => "read error",
                }
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_evt_6_malformed_xml_sample() {
        let e = check_xml(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Registration><Patient><Name>张三</Patient>"
                .as_bytes(),
        )
        .unwrap_err();
        assert_eq!(e.reason, DeadLetterReason::MalformedXml);
        assert!(
            !e.detail.contains("张"),
            "no content in errors: {}",
            e.detail
        );
    }

    #[test]
    fn r_gen_3_dtd_refused_and_good_xml_passes() {
        let bomb =
            br#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">]><lolz>&lol;</lolz>"#;
        assert_eq!(
            check_xml(bomb).unwrap_err().reason,
            DeadLetterReason::MalformedXml
        );
        check_xml(br#"<a xmlns="urn:hl7-org:v3"><b x="1"/>t &amp; u</a>"#).unwrap();
        assert!(check_xml(b"<a/><b/>").is_err(), "two roots");
    }

    #[test]
    fn r_gen_3_json_depth_and_syntax() {
        check_json(br#"{"a":[1,{"b":"}}}]]"}]}"#).unwrap();
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert_eq!(
            check_json(deep.as_bytes()).unwrap_err().reason,
            DeadLetterReason::MalformedJson
        );
        let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
        check_json(ok.as_bytes()).unwrap();
        let e = check_json(br#"{"event": "registration", "patient": {"id": "P1", "#).unwrap_err();
        assert_eq!(e.reason, DeadLetterReason::MalformedJson);
        assert!(!e.detail.contains("P1"));
    }
}
