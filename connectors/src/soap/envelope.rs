//! SOAP 1.1 / 1.2 envelopes of the 互联互通 operation `HIPMessageServer(action, message)`: read a
//! request (any operation namespace; parameter names case-insensitive; the message as escaped
//! text, CDATA or inline XML) and write the response or a fault in the request's SOAP version.

use quick_xml::NsReader;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;

pub const SOAP11: &str = "http://schemas.xmlsoap.org/soap/envelope/";
pub const SOAP12: &str = "http://www.w3.org/2003/05/soap-envelope";
/// The operation every 互联互通 platform calls on its subscribers.
pub const OPERATION: &str = "HIPMessageServer";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoapVersion {
    V11,
    V12,
}

impl SoapVersion {
    pub fn namespace(self) -> &'static str {
        match self {
            Self::V11 => SOAP11,
            Self::V12 => SOAP12,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::V11 => "text/xml; charset=utf-8",
            Self::V12 => "application/soap+xml; charset=utf-8",
        }
    }
}

/// One `HIPMessageServer` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub version: SoapVersion,
    /// The operation element's namespace (echoed in the response); empty when unqualified.
    pub namespace: String,
    /// The service code, e.g. `S0032`.
    pub action: String,
    /// The HL7 v3 XML, as text.
    pub message: String,
}

/// Why a request is not a `HIPMessageServer` call (said to the caller in a SOAP fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("the request body is not well-formed XML ({0})")]
    NotXml(String),
    #[error(
        "the request is not a SOAP envelope (expected an Envelope element in the SOAP 1.1 or 1.2 namespace)"
    )]
    NotEnvelope,
    #[error(
        "the SOAP body calls {0:?}; this subscriber offers only HIPMessageServer(action, message)"
    )]
    WrongOperation(String),
    #[error("the SOAP body holds no operation element")]
    NoOperation,
    #[error("HIPMessageServer is missing its `{0}` parameter")]
    Missing(&'static str),
}

fn ns_of(r: &ResolveResult<'_>) -> String {
    match r {
        ResolveResult::Bound(ns) => ns.as_ref().to_string(),
        _ => String::new(),
    }
}

/// Read a request body (UTF-8, or the GB charset its XML declaration names).
pub fn parse(body: &[u8]) -> Result<Call, EnvelopeError> {
    let text = to_utf8(body)?;
    let mut reader = NsReader::from_str(&text);
    let mut depth = 0usize;
    let mut version = None;
    let mut in_body = false;
    let mut op: Option<(String, usize)> = None;
    let mut action = None;
    let mut message = None;
    // The parameter being read: which, its depth, where its content starts, whether it holds
    // elements, and its text.
    let mut param: Option<(&'static str, usize, usize, bool, String)> = None;
    loop {
        let before = reader.buffer_position() as usize;
        let (ns, ev) = reader
            .read_resolved_event()
            .map_err(|e| EnvelopeError::NotXml(e.to_string()))?;
        match ev {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(ev, Event::Empty(_));
                let local = e.local_name().as_ref().to_string();
                let ns = ns_of(&ns);
                depth += 1;
                if let Some(p) = param.as_mut() {
                    p.3 = true;
                } else if depth == 1 {
                    version = match (local.as_str(), ns.as_str()) {
                        ("Envelope", SOAP11) => Some(SoapVersion::V11),
                        ("Envelope", SOAP12) => Some(SoapVersion::V12),
                        _ => return Err(EnvelopeError::NotEnvelope),
                    };
                } else if depth == 2 && local == "Body" {
                    in_body = true;
                } else if in_body && depth == 3 && op.is_none() {
                    if !local.eq_ignore_ascii_case(OPERATION) {
                        return Err(EnvelopeError::WrongOperation(local));
                    }
                    op = Some((ns, depth));
                } else if op.is_some() && depth == 4 {
                    let which = if local.eq_ignore_ascii_case("action") {
                        Some("action")
                    } else if local.eq_ignore_ascii_case("message") {
                        Some("message")
                    } else {
                        None
                    };
                    if let Some(w) = which {
                        if empty {
                            match w {
                                "action" => action = Some(String::new()),
                                _ => message = Some(String::new()),
                            }
                        } else {
                            let start = reader.buffer_position() as usize;
                            param = Some((w, depth, start, false, String::new()));
                        }
                    }
                }
                if empty {
                    depth -= 1;
                }
            }
            Event::End(_) => {
                if let Some((w, d, start, nested, txt)) = param.take() {
                    if d == depth {
                        let value = if nested {
                            text.get(start..before)
                                .unwrap_or_default()
                                .trim()
                                .to_string()
                        } else {
                            txt
                        };
                        match w {
                            "action" => action = Some(value.trim().to_string()),
                            _ => message = Some(value),
                        }
                    } else {
                        param = Some((w, d, start, nested, txt));
                    }
                }
                if depth == 2 {
                    in_body = false;
                }
                depth = depth.saturating_sub(1);
            }
            Event::Text(t) => {
                if let Some(p) = param.as_mut() {
                    p.4.push_str(&t.xml10_content());
                }
            }
            Event::GeneralRef(r) => {
                if let Some(p) = param.as_mut() {
                    p.4.push(entity(&r).ok_or_else(|| {
                        EnvelopeError::NotXml(format!("unknown entity &{};", r.xml10_content()))
                    })?);
                }
            }
            Event::CData(c) => {
                if let Some(p) = param.as_mut() {
                    p.4.push_str(&c.xml10_content());
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    let version = version.ok_or(EnvelopeError::NotEnvelope)?;
    let (namespace, _) = op.ok_or(EnvelopeError::NoOperation)?;
    let action = action
        .filter(|a| !a.is_empty())
        .ok_or(EnvelopeError::Missing("action"))?;
    let message = message
        .filter(|m| !m.trim().is_empty())
        .ok_or(EnvelopeError::Missing("message"))?;
    Ok(Call {
        version,
        namespace,
        action,
        message: utf8_declaration(message.trim()),
    })
}

/// The body as UTF-8: as is, or decoded from the GB charset its XML declaration names.
fn to_utf8(body: &[u8]) -> Result<String, EnvelopeError> {
    let body = body.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(body);
    let head = String::from_utf8_lossy(&body[..body.len().min(200)]).to_ascii_lowercase();
    if head.starts_with("<?xml") && head.contains("encoding") && head.contains("gb") {
        let (text, _, bad) = encoding_rs::GB18030.decode(body);
        if bad {
            return Err(EnvelopeError::NotXml("bytes that are not GB18030".into()));
        }
        return Ok(text.into_owned());
    }
    String::from_utf8(body.to_vec())
        .map_err(|_| EnvelopeError::NotXml("bytes that are not UTF-8".into()))
}

/// The message, now Unicode text, with an XML declaration that says so (the sender's may name
/// GBK: it described the bytes before they were put in the envelope).
fn utf8_declaration(message: &str) -> String {
    let rest = match message.strip_prefix("<?xml") {
        Some(r) => r.find("?>").map(|i| &r[i + 2..]).unwrap_or(message),
        None => message,
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>{}",
        rest.trim_start()
    )
}

/// The character an entity or character reference stands for: the five XML entities and
/// `&#…;`; `None` for anything else (no DTD entities are expanded).
pub(crate) fn entity(r: &quick_xml::events::BytesRef<'_>) -> Option<char> {
    match r.xml10_content().as_ref() {
        "lt" => Some('<'),
        "gt" => Some('>'),
        "amp" => Some('&'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        _ => r.resolve_char_ref().ok().flatten(),
    }
}

/// The value of the attribute with this local name, if the element has it.
pub(crate) fn attribute(e: &quick_xml::events::BytesStart<'_>, name: &str) -> Option<String> {
    e.attributes().flatten().find_map(|a| {
        (a.key.local_name().as_ref() == name)
            .then(|| {
                a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                    .map(|v| v.into_owned())
                    .ok()
            })
            .flatten()
    })
}

/// Escape text for an XML element or attribute.
pub fn escape(text: &str) -> String {
    quick_xml::escape::escape(text).into_owned()
}

/// The response envelope: `HIPMessageServerResponse/HIPMessageServerResult` holding `result`
/// (escaped), in the operation's namespace.
pub fn response(version: SoapVersion, namespace: &str, result: &str) -> String {
    let ns = if namespace.is_empty() {
        String::new()
    } else {
        format!(" xmlns=\"{}\"", escape(namespace))
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><soap:Envelope xmlns:soap=\"{}\"><soap:Body><{OPERATION}Response{ns}><{OPERATION}Result>{}</{OPERATION}Result></{OPERATION}Response></soap:Body></soap:Envelope>",
        version.namespace(),
        escape(result)
    )
}

/// Who is to blame for a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The request was wrong; sending it again unchanged will not help.
    Sender,
    /// The bridge could not take it now; send it again.
    Receiver,
}

/// A SOAP fault in `version`.
pub fn fault(version: SoapVersion, blame: Blame, reason: &str) -> String {
    let reason = escape(reason);
    let body = match version {
        SoapVersion::V11 => {
            let code = match blame {
                Blame::Sender => "soap:Client",
                Blame::Receiver => "soap:Server",
            };
            format!(
                "<soap:Fault><faultcode>{code}</faultcode><faultstring>{reason}</faultstring></soap:Fault>"
            )
        }
        SoapVersion::V12 => {
            let code = match blame {
                Blame::Sender => "soap:Sender",
                Blame::Receiver => "soap:Receiver",
            };
            format!(
                "<soap:Fault><soap:Code><soap:Value>{code}</soap:Value></soap:Code><soap:Reason><soap:Text xml:lang=\"en\">{reason}</soap:Text></soap:Reason></soap:Fault>"
            )
        }
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><soap:Envelope xmlns:soap=\"{}\"><soap:Body>{body}</soap:Body></soap:Envelope>",
        version.namespace()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const V3: &str = "<?xml version=\"1.0\" encoding=\"GBK\"?><PRPA_IN400003UV xmlns=\"urn:hl7-org:v3\"><id root=\"2.16.156.10011.2.5.1.1\" extension=\"M1\"/></PRPA_IN400003UV>";

    #[test]
    fn a_dhcc_soap11_call_with_an_escaped_message() {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><soapenv:Envelope xmlns:soapenv=\"{SOAP11}\" xmlns:dhcc=\"http://www.dhcc.com.cn\"><soapenv:Header/><soapenv:Body><dhcc:HIPMessageServer><dhcc:action>S0032</dhcc:action><dhcc:message>{}</dhcc:message></dhcc:HIPMessageServer></soapenv:Body></soapenv:Envelope>",
            escape(V3)
        );
        let c = parse(body.as_bytes()).unwrap();
        assert_eq!(c.version, SoapVersion::V11);
        assert_eq!(c.namespace, "http://www.dhcc.com.cn");
        assert_eq!(c.action, "S0032");
        assert!(
            c.message
                .starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?><PRPA_IN400003UV"),
            "{}",
            c.message
        );
        assert!(c.message.contains("extension=\"M1\""));
    }

    #[test]
    fn a_goodwill_soap12_call_with_cdata_and_capitalised_parameters() {
        let body = format!(
            "<s:Envelope xmlns:s=\"{SOAP12}\"><s:Body><HIPMessageServer xmlns=\"http://goodwillcis.com\"><Action>S0023</Action><Message><![CDATA[{V3}]]></Message></HIPMessageServer></s:Body></s:Envelope>"
        );
        let c = parse(body.as_bytes()).unwrap();
        assert_eq!(c.version, SoapVersion::V12);
        assert_eq!(c.namespace, "http://goodwillcis.com");
        assert_eq!(c.action, "S0023");
        assert!(
            c.message
                .contains("<PRPA_IN400003UV xmlns=\"urn:hl7-org:v3\">")
        );
    }

    #[test]
    fn a_message_given_as_inline_xml_is_taken_as_written() {
        let body = format!(
            "<s:Envelope xmlns:s=\"{SOAP12}\"><s:Body><h:HIPMessageServer xmlns:h=\"urn:x\"><h:action>S0026</h:action><h:message><PRPA_IN400001UV xmlns=\"urn:hl7-org:v3\"><id extension=\"M2\"/></PRPA_IN400001UV></h:message></h:HIPMessageServer></s:Body></s:Envelope>"
        );
        let c = parse(body.as_bytes()).unwrap();
        assert!(
            c.message.ends_with(
                "<PRPA_IN400001UV xmlns=\"urn:hl7-org:v3\"><id extension=\"M2\"/></PRPA_IN400001UV>"
            ),
            "{}",
            c.message
        );
    }

    #[test]
    fn what_is_not_a_call_is_named() {
        let broken = format!("<s:Envelope xmlns:s=\"{SOAP11}\"></s:Body>");
        assert!(matches!(
            parse(broken.as_bytes()),
            Err(EnvelopeError::NotXml(_))
        ));
        assert!(matches!(
            parse(&[0xff, 0xfe, 0x00]),
            Err(EnvelopeError::NotXml(_))
        ));
        assert_eq!(parse(b"<a/>"), Err(EnvelopeError::NotEnvelope));
        let other =
            format!("<s:Envelope xmlns:s=\"{SOAP11}\"><s:Body><Ping/></s:Body></s:Envelope>");
        assert_eq!(
            parse(other.as_bytes()),
            Err(EnvelopeError::WrongOperation("Ping".into()))
        );
        let no_msg = format!(
            "<s:Envelope xmlns:s=\"{SOAP11}\"><s:Body><HIPMessageServer><action>S0032</action></HIPMessageServer></s:Body></s:Envelope>"
        );
        assert_eq!(
            parse(no_msg.as_bytes()),
            Err(EnvelopeError::Missing("message"))
        );
    }

    #[test]
    fn responses_and_faults_are_wellformed_in_both_versions() {
        for v in [SoapVersion::V11, SoapVersion::V12] {
            for doc in [
                response(v, "http://www.dhcc.com.cn", "<MCCI_IN000002UV01/>"),
                fault(v, Blame::Receiver, "not stored <now>"),
            ] {
                let mut r = quick_xml::Reader::from_str(&doc);
                loop {
                    match r.read_event() {
                        Ok(Event::Eof) => break,
                        Ok(_) => {}
                        Err(e) => panic!("{e}: {doc}"),
                    }
                }
            }
        }
    }
}
