//! The HL7 v3 acknowledgement a 互联互通 subscriber answers with: `MCCI_IN000002UV01`, its
//! `acknowledgement/@typeCode` `AA` (accepted) or `AE` (error, with the reason text), its
//! `targetMessage/id` the inbound message's id, sender and receiver swapped.

use quick_xml::Reader;
use quick_xml::events::Event;

use super::envelope::{attribute, escape};

/// Message ids (`id/@root`) of 互联互通 messages.
const MESSAGE_ID_ROOT: &str = "2.16.156.10011.2.5.1.1";
/// Device ids (`sender|receiver/device/id/item/@root`).
const DEVICE_ROOT: &str = "2.16.156.10011.2.5.1.3";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Accept,
    Error,
}

/// What the acknowledgement echoes from the inbound message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inbound {
    /// The root element's `id`: (root, extension).
    pub id: Option<(String, String)>,
    /// `sender/device/id/item/@extension`.
    pub sender: Option<String>,
    /// `receiver/device/id/item/@extension`.
    pub receiver: Option<String>,
}

impl Inbound {
    /// Read the ids from the message; what cannot be read is left out (never an error: a
    /// malformed message still gets an `AE`).
    pub fn parse(xml: &str) -> Self {
        let mut out = Self::default();
        let mut reader = Reader::from_str(xml);
        let mut path: Vec<String> = Vec::new();
        while let Ok(ev) = reader.read_event() {
            let (e, empty) = match &ev {
                Event::Start(e) => (e, false),
                Event::Empty(e) => (e, true),
                Event::End(_) => {
                    path.pop();
                    continue;
                }
                Event::Eof => break,
                _ => continue,
            };
            let local = e.local_name().as_ref().to_string();
            let attr = |name: &str| attribute(e, name);
            if path.len() == 1 && local == "id" && out.id.is_none() {
                out.id = Some((
                    attr("root").unwrap_or_else(|| MESSAGE_ID_ROOT.into()),
                    attr("extension").unwrap_or_default(),
                ));
            }
            if local == "item" && path.len() >= 4 && path[path.len() - 2] == "device" {
                let role = &path[path.len() - 3];
                let ext = attr("extension");
                if role == "sender" && out.sender.is_none() {
                    out.sender = ext;
                } else if role == "receiver" && out.receiver.is_none() {
                    out.receiver = ext;
                }
            }
            if path.len() > 6 && out.id.is_some() && out.sender.is_some() && out.receiver.is_some()
            {
                break;
            }
            if !empty {
                path.push(local);
            }
        }
        out
    }
}

fn device(role: &str, type_code: &str, id: Option<&str>) -> String {
    let item = match id {
        Some(ext) => format!(
            "<item root=\"{DEVICE_ROOT}\" extension=\"{}\"/>",
            escape(ext)
        ),
        None => String::new(),
    };
    format!(
        "<{role} typeCode=\"{type_code}\"><device classCode=\"DEV\" determinerCode=\"INSTANCE\"><id>{item}</id></device></{role}>"
    )
}

/// The acknowledgement, as XML text (it goes escaped into the SOAP response).
pub fn build(inbound: &Inbound, code: Code, text: Option<&str>, now: jiff::Timestamp) -> String {
    let type_code = match code {
        Code::Accept => "AA",
        Code::Error => "AE",
    };
    let created = now.strftime("%Y%m%d%H%M%S");
    let own_id = format!("CB{}{:06}", now.as_millisecond(), next_seq() % 1_000_000);
    let target = match &inbound.id {
        Some((root, ext)) => format!(
            "<id root=\"{}\" extension=\"{}\"/>",
            escape(root),
            escape(ext)
        ),
        None => format!("<id root=\"{MESSAGE_ID_ROOT}\"/>"),
    };
    let detail = match text {
        Some(t) => format!(
            "<acknowledgementDetail typeCode=\"E\"><text value=\"{}\"/></acknowledgementDetail>",
            escape(t)
        ),
        None => "<acknowledgementDetail><text value=\"success\"/></acknowledgementDetail>".into(),
    };
    format!(
        "<MCCI_IN000002UV01 xmlns=\"urn:hl7-org:v3\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" ITSVersion=\"XML_1.0\"><id root=\"{MESSAGE_ID_ROOT}\" extension=\"{own_id}\"/><creationTime value=\"{created}\"/><interactionId root=\"2.16.156.10011.2.5.1.2\" extension=\"MCCI_IN000002UV01\"/><processingCode code=\"P\"/><processingModeCode/><acceptAckCode code=\"AL\"/>{}{}<acknowledgement typeCode=\"{type_code}\"><targetMessage>{target}</targetMessage>{detail}</acknowledgement></MCCI_IN000002UV01>",
        device("receiver", "RCV", inbound.sender.as_deref()),
        device("sender", "SND", inbound.receiver.as_deref()),
    )
}

fn next_seq() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &str = r#"<?xml version="1.0" encoding="UTF-8"?><PRPA_IN400003UV xmlns="urn:hl7-org:v3" ITSVersion="XML_1.0"><id root="2.16.156.10011.2.5.1.1" extension="MSG-9"/><creationTime value="20261123101500"/><receiver typeCode="RCV"><device classCode="DEV" determinerCode="INSTANCE"><id><item root="2.16.156.10011.2.5.1.3" extension="CEM"/></id></device></receiver><sender typeCode="SND"><device classCode="DEV" determinerCode="INSTANCE"><id><item root="2.16.156.10011.2.5.1.3" extension="HIS&amp;1"/></id></device></sender><controlActProcess><subject><encounterEvent><id><item root="x" extension="not-this"/></id></encounterEvent></subject></controlActProcess></PRPA_IN400003UV>"#;

    #[test]
    fn the_ids_the_ack_echoes_are_read() {
        let i = Inbound::parse(MSG);
        assert_eq!(
            i.id,
            Some(("2.16.156.10011.2.5.1.1".into(), "MSG-9".into()))
        );
        assert_eq!(i.sender.as_deref(), Some("HIS&1"));
        assert_eq!(i.receiver.as_deref(), Some("CEM"));
        assert_eq!(Inbound::parse("not xml <<"), Inbound::default());
    }

    #[test]
    fn the_ack_targets_the_message_and_swaps_the_devices() {
        let now = jiff::Timestamp::from_second(1_795_000_000).unwrap();
        let ack = build(
            &Inbound::parse(MSG),
            Code::Error,
            Some("unknown_event: <x>"),
            now,
        );
        assert!(ack.contains("<acknowledgement typeCode=\"AE\"><targetMessage><id root=\"2.16.156.10011.2.5.1.1\" extension=\"MSG-9\"/></targetMessage>"), "{ack}");
        assert!(ack.contains("<receiver typeCode=\"RCV\"><device classCode=\"DEV\" determinerCode=\"INSTANCE\"><id><item root=\"2.16.156.10011.2.5.1.3\" extension=\"HIS&amp;1\"/>"), "{ack}");
        assert!(
            ack.contains("text value=\"unknown_event: &lt;x&gt;\""),
            "{ack}"
        );
        let mut r = Reader::from_str(&ack);
        while !matches!(r.read_event().unwrap(), Event::Eof) {}
    }
}
