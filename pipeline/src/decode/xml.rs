//! XML → a small owned tree that mapping paths walk (R-EVT-2, R-EVT-8, R-GEN-3).
//!
//! quick-xml streams events; mapping paths need to look around (`item[@root='…']`), so the
//! document is built into [`XmlDoc`]: elements with their resolved namespace, attributes and
//! text. The charset comes from the XML declaration (GBK / GB18030 / UTF-8), else the
//! connector's. A DOCTYPE is refused and entities other than the five predefined ones and
//! character references are an error, so nothing is ever expanded (no XXE, no billion laughs).

use quick_xml::NsReader;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;

use super::Charset;
use crate::reason::{DeadLetterReason, Rejection};

/// One element.
#[derive(Debug, Clone, Default)]
pub struct Element {
    /// Local name (`encounterEvent`).
    pub local: String,
    /// Resolved namespace URI (`urn:hl7-org:v3`), if bound.
    pub ns: Option<String>,
    /// Attributes: (local name, namespace URI, value).
    pub attrs: Vec<(String, Option<String>, String)>,
    /// Child element indexes, in document order.
    pub children: Vec<usize>,
    /// Concatenated text content directly inside this element.
    pub text: String,
}

/// A parsed document; element 0 is the root.
#[derive(Debug, Clone, Default)]
pub struct XmlDoc {
    pub elements: Vec<Element>,
}

impl XmlDoc {
    pub fn root(&self) -> Option<&Element> {
        self.elements.first()
    }

    /// Element indexes under `at` (excluding it), in document order.
    pub fn descendants(&self, at: usize, out: &mut Vec<usize>) {
        if let Some(e) = self.elements.get(at) {
            for &c in &e.children {
                out.push(c);
                self.descendants(c, out);
            }
        }
    }
}

/// The `encoding` of an XML declaration, read from the raw bytes (ASCII) before decoding.
pub fn declared_encoding(body: &[u8]) -> Option<&str> {
    let head = body.strip_prefix(b"<?xml")?;
    let end = head.windows(2).position(|w| w == b"?>")?;
    let decl = std::str::from_utf8(&head[..end]).ok()?;
    let at = decl.find("encoding")?;
    let rest = decl[at + "encoding".len()..]
        .trim_start()
        .strip_prefix('=')?;
    let rest = rest.trim_start();
    let quote = rest.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let rest = &rest[1..];
    rest.find(quote).map(|e| &rest[..e])
}

fn bad(detail: impl Into<String>) -> Rejection {
    Rejection::new(DeadLetterReason::MalformedXml, detail)
}

/// Decode and parse an XML body (framing already stripped).
pub fn parse(body: &[u8], default_charset: Charset) -> Result<XmlDoc, Rejection> {
    let charset = match declared_encoding(body) {
        Some(label) => Charset::from_label(label).ok_or_else(|| {
            Rejection::new(
                DeadLetterReason::InvalidEncoding,
                format!("the XML declaration names encoding {}, which is not supported (use UTF-8, GBK or GB18030)", crate::reason::quoted(label)),
            )
        })?,
        None => default_charset,
    };
    let text = charset.decode(body)?;
    parse_str(&text)
}

/// Parse decoded XML text.
pub fn parse_str(text: &str) -> Result<XmlDoc, Rejection> {
    let mut reader = NsReader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut doc = XmlDoc::default();
    let mut stack: Vec<usize> = Vec::new();
    let mut roots = 0usize;
    loop {
        let pos = reader.buffer_position();
        let (ns, event) = match reader.read_resolved_event() {
            Ok((ns, ev)) => (owned_ns(&ns), ev),
            Err(e) => {
                return Err(bad(format!(
                    "XML error near byte {}: {}",
                    reader.error_position(),
                    error_kind(&e)
                )));
            }
        };
        match event {
            Event::Eof => break,
            Event::DocType(_) => {
                return Err(bad(format!(
                    "DTD at byte {pos}: documents with a DOCTYPE or entity declarations are refused"
                )));
            }
            Event::Start(ref s) | Event::Empty(ref s) => {
                let is_empty = matches!(event, Event::Empty(_));
                let el = element(&reader, s, ns)?;
                let idx = doc.elements.len();
                doc.elements.push(el);
                match stack.last() {
                    Some(&parent) => doc.elements[parent].children.push(idx),
                    None => {
                        roots += 1;
                        if roots > 1 {
                            return Err(bad("XML has more than one root element"));
                        }
                    }
                }
                if !is_empty {
                    stack.push(idx);
                }
            }
            Event::End(_) => {
                stack.pop();
            }
            Event::Text(t) => {
                if let Some(&cur) = stack.last() {
                    doc.elements[cur].text.push_str(&t.xml10_content());
                }
            }
            Event::CData(c) => {
                if let Some(&cur) = stack.last() {
                    doc.elements[cur].text.push_str(c.as_ref());
                }
            }
            Event::GeneralRef(r) => {
                let ch = match r.resolve_char_ref() {
                    Ok(Some(c)) => c,
                    Ok(None) => match &*r.xml10_content() {
                        "lt" => '<',
                        "gt" => '>',
                        "amp" => '&',
                        "apos" => '\'',
                        "quot" => '"',
                        _ => {
                            return Err(bad(format!(
                                "entity reference near byte {pos} is not one of the five predefined entities; entities are never expanded"
                            )));
                        }
                    },
                    Err(_) => return Err(bad(format!("bad character reference near byte {pos}"))),
                };
                if let Some(&cur) = stack.last() {
                    doc.elements[cur].text.push(ch);
                }
            }
            _ => {}
        }
    }
    if !stack.is_empty() {
        return Err(bad(format!(
            "XML ends with {} unclosed element(s)",
            stack.len()
        )));
    }
    if roots != 1 {
        return Err(bad("XML has no root element"));
    }
    Ok(doc)
}

fn owned_ns(r: &ResolveResult<'_>) -> Option<String> {
    match r {
        ResolveResult::Bound(ns) => Some(ns.as_ref().to_string()),
        _ => None,
    }
}

fn element(
    reader: &NsReader<&[u8]>,
    s: &BytesStart<'_>,
    ns: Option<String>,
) -> Result<Element, Rejection> {
    let local = s.local_name().as_ref().to_string();
    let mut attrs = Vec::new();
    for a in s.attributes() {
        let a = a.map_err(|_| bad("malformed attribute"))?;
        let key = a.key.as_ref();
        if key == "xmlns" || key.starts_with("xmlns:") {
            continue;
        }
        let (ans, alocal) = reader.resolver().resolve_attribute(a.key);
        let ans = owned_ns(&ans);
        let alocal = alocal.as_ref().to_string();
        let value = a
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|_| bad("an attribute value holds an unknown entity or bad character reference; entities are never expanded"))?
            .into_owned();
        attrs.push((alocal, ans, value));
    }
    Ok(Element {
        local,
        ns,
        attrs,
        children: Vec::new(),
        text: String::new(),
    })
}

/// A description of an XML error without document content.
pub(crate) fn error_kind(e: &quick_xml::Error) -> &'static str {
    use quick_xml::Error as E;
    match e {
        E::Syntax(_) => "syntax error",
        E::IllFormed(_) => "ill-formed document (mismatched or missing tags)",
        E::Encoding(_) => "invalid encoding",
        E::Escape(_) => "bad escape or entity reference",
        _ => "unreadable XML",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_evt_8_namespaces_attributes_and_text() {
        let d = parse_str(
            r#"<?xml version="1.0"?><r xmlns="urn:hl7-org:v3" xmlns:x="urn:x"><id root="1" extension="A&amp;B"/><x:n x:t="v">a &lt; b&#x41;</x:n></r>"#,
        )
        .unwrap();
        let root = d.root().unwrap();
        assert_eq!(root.local, "r");
        assert_eq!(root.ns.as_deref(), Some("urn:hl7-org:v3"));
        let id = &d.elements[root.children[0]];
        assert_eq!(id.attrs[1], ("extension".into(), None, "A&B".into()));
        let n = &d.elements[root.children[1]];
        assert_eq!(n.ns.as_deref(), Some("urn:x"));
        assert_eq!(n.attrs[0].1.as_deref(), Some("urn:x"));
        assert_eq!(n.text, "a < bA");
    }

    #[test]
    fn r_evt_6_malformed_xml_sample_names_no_content() {
        let e = parse_str(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Registration><Patient><Name>张三</Patient>",
        )
        .unwrap_err();
        assert_eq!(e.reason, DeadLetterReason::MalformedXml);
        assert!(
            !e.detail.contains('张'),
            "no content in errors: {}",
            e.detail
        );
    }

    #[test]
    fn r_gen_3_dtd_and_unknown_entities_refused() {
        let bomb =
            r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">]><lolz>&lol;</lolz>"#;
        assert_eq!(
            parse_str(bomb).unwrap_err().reason,
            DeadLetterReason::MalformedXml
        );
        assert_eq!(
            parse_str("<a>&lol;</a>").unwrap_err().reason,
            DeadLetterReason::MalformedXml
        );
        assert_eq!(
            parse_str("<a/><b/>").unwrap_err().reason,
            DeadLetterReason::MalformedXml
        );
        assert_eq!(
            parse_str("<a><b></a>").unwrap_err().reason,
            DeadLetterReason::MalformedXml
        );
        assert_eq!(
            parse_str("").unwrap_err().reason,
            DeadLetterReason::MalformedXml
        );
    }

    #[test]
    fn r_evt_2_declared_encoding() {
        assert_eq!(
            declared_encoding(br#"<?xml version="1.0" encoding="GBK"?><a/>"#),
            Some("GBK")
        );
        assert_eq!(
            declared_encoding(b"<?xml version='1.0' encoding = 'utf-8' ?><a/>"),
            Some("utf-8")
        );
        assert_eq!(declared_encoding(b"<a/>"), None);
        let (bytes, _, _) =
            encoding_rs::GBK.encode(r#"<?xml version="1.0" encoding="GBK"?><a>孙建华</a>"#);
        let d = parse(&bytes, Charset::Utf8).unwrap();
        assert_eq!(d.root().unwrap().text, "孙建华");
        let e = parse(
            br#"<?xml version="1.0" encoding="latin9"?><a/>"#,
            Charset::Utf8,
        )
        .unwrap_err();
        assert_eq!(e.reason, DeadLetterReason::InvalidEncoding);
    }
}
