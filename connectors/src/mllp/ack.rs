//! The HL7 v2 acknowledgement an MLLP sender gets for each message: the inbound MSH with
//! sender and receiver swapped, `ACK^<trigger>^ACK`, the message's version (MSH-12), processing
//! id (MSH-11) and charset (MSH-18), then `MSA|<code>|<MSH-10>` and, for an error, an `ERR`
//! segment naming the reason. Built from the raw MSH bytes so a sending facility written in GBK
//! is echoed as it came.

use std::sync::atomic::{AtomicU64, Ordering};

/// MSA-1: what the sender is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// Application accept: stored (or a duplicate of a stored message).
    Accept,
    /// Application error: dead-lettered (stored as such); sending it again will not help.
    Error,
    /// Application reject: not taken now (store unavailable, bridge stopping); send again.
    Reject,
}

impl AckCode {
    pub fn code(self) -> &'static str {
        match self {
            Self::Accept => "AA",
            Self::Error => "AE",
            Self::Reject => "AR",
        }
    }
}

/// The fields of the inbound MSH the ACK needs, as raw bytes.
#[derive(Debug, Default, Clone)]
pub struct InboundHeader {
    field_sep: u8,
    encoding: Vec<u8>,
    /// MSH-3 … MSH-6.
    sending_app: Vec<u8>,
    sending_facility: Vec<u8>,
    receiving_app: Vec<u8>,
    receiving_facility: Vec<u8>,
    /// MSH-9.2, the trigger event.
    trigger: Vec<u8>,
    control_id: Vec<u8>,
    processing_id: Vec<u8>,
    version: Vec<u8>,
    charset: Vec<u8>,
}

impl InboundHeader {
    /// Read the MSH of a message; a body that does not start with `MSH` gives empty fields (the
    /// ACK is then still well-formed, with `|^~\&` and no echo).
    pub fn parse(message: &[u8]) -> Self {
        let body = message.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(message);
        let start = body
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(body.len());
        let body = &body[start..];
        if !body.starts_with(b"MSH") || body.len() < 4 {
            return Self::default();
        }
        let sep = body[3];
        if sep.is_ascii_alphanumeric() || sep == b'\r' || sep == b'\n' {
            return Self::default();
        }
        let line_end = body
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .unwrap_or(body.len());
        let fields: Vec<&[u8]> = body[..line_end].split(|&b| b == sep).collect();
        // fields[0] = "MSH", fields[1] = MSH-2, fields[n] = MSH-(n+1).
        let f = |n: usize| fields.get(n - 1).map(|v| v.to_vec()).unwrap_or_default();
        let encoding = f(2);
        let component = encoding.first().copied().unwrap_or(b'^');
        let msg_type = f(9);
        let trigger = msg_type
            .split(|&b| b == component)
            .nth(1)
            .map(|t| t.to_vec())
            .unwrap_or_default();
        Self {
            field_sep: sep,
            encoding,
            sending_app: f(3),
            sending_facility: f(4),
            receiving_app: f(5),
            receiving_facility: f(6),
            trigger,
            control_id: f(10),
            processing_id: f(11),
            version: f(12),
            charset: f(18),
        }
    }

    /// MSH-10 as text (for logs: a control id, not personal data).
    pub fn control_id(&self) -> String {
        String::from_utf8_lossy(&self.control_id).into_owned()
    }

    fn is_gb(&self) -> bool {
        let c = String::from_utf8_lossy(&self.charset).to_ascii_uppercase();
        c.contains("GB")
    }
}

static ACK_SEQ: AtomicU64 = AtomicU64::new(0);

/// The ACK for `inbound`. `text` (for AE/AR) says why; it is escaped and written in the
/// message's charset. `now` is `YYYYMMDDHHMMSS+0000`.
pub fn build(inbound: &InboundHeader, code: AckCode, text: Option<&str>, now: &str) -> Vec<u8> {
    let sep = if inbound.field_sep == 0 {
        b'|'
    } else {
        inbound.field_sep
    };
    let encoding: &[u8] = if inbound.encoding.is_empty() {
        b"^~\\&"
    } else {
        &inbound.encoding
    };
    let component = encoding.first().copied().unwrap_or(b'^');
    let seq = ACK_SEQ.fetch_add(1, Ordering::Relaxed);
    let control = format!("CB{}{:04}", &now.get(..14).unwrap_or(now), seq % 10_000);

    let mut out = Vec::with_capacity(256);
    let field = |out: &mut Vec<u8>, v: &[u8]| {
        out.push(sep);
        out.extend_from_slice(v);
    };
    out.extend_from_slice(b"MSH");
    out.push(sep);
    out.extend_from_slice(encoding);
    field(&mut out, &inbound.receiving_app); // MSH-3
    field(&mut out, &inbound.receiving_facility); // MSH-4
    field(&mut out, &inbound.sending_app); // MSH-5
    field(&mut out, &inbound.sending_facility); // MSH-6
    field(&mut out, now.as_bytes()); // MSH-7
    field(&mut out, b""); // MSH-8
    let mut msg_type = b"ACK".to_vec();
    if !inbound.trigger.is_empty() {
        msg_type.push(component);
        msg_type.extend_from_slice(&inbound.trigger);
        msg_type.push(component);
        msg_type.extend_from_slice(b"ACK");
    }
    field(&mut out, &msg_type); // MSH-9
    field(&mut out, control.as_bytes()); // MSH-10
    let pid: &[u8] = if inbound.processing_id.is_empty() {
        b"P"
    } else {
        &inbound.processing_id
    };
    field(&mut out, pid); // MSH-11
    let version: &[u8] = if inbound.version.is_empty() {
        b"2.5"
    } else {
        &inbound.version
    };
    field(&mut out, version); // MSH-12
    if !inbound.charset.is_empty() {
        for _ in 13..18 {
            field(&mut out, b"");
        }
        field(&mut out, &inbound.charset); // MSH-18
    }
    out.push(b'\r');

    out.extend_from_slice(b"MSA");
    field(&mut out, code.code().as_bytes());
    field(&mut out, &inbound.control_id);
    let text = text.map(|t| encode(inbound, &escape(t, sep, encoding)));
    if let Some(t) = &text {
        field(&mut out, t); // MSA-3 (text message; kept for v2.3 senders)
    }
    out.push(b'\r');

    if code != AckCode::Accept {
        // ERR-3 (HL7 table 0357), ERR-4 severity, ERR-8 user message.
        out.extend_from_slice(b"ERR");
        field(&mut out, b"");
        field(&mut out, b"");
        let mut cwe = b"207".to_vec();
        cwe.push(component);
        cwe.extend_from_slice(b"Application internal error");
        cwe.push(component);
        cwe.extend_from_slice(b"HL70357");
        field(&mut out, &cwe);
        field(&mut out, b"E");
        field(&mut out, b"");
        field(&mut out, b"");
        field(&mut out, b"");
        field(&mut out, text.as_deref().unwrap_or_default());
        out.push(b'\r');
    }
    out
}

/// HL7 escape sequences for the delimiters in free text; line breaks become spaces.
fn escape(text: &str, sep: u8, encoding: &[u8]) -> String {
    let comp = encoding.first().copied().unwrap_or(b'^') as char;
    let rep = encoding.get(1).copied().unwrap_or(b'~') as char;
    let esc = encoding.get(2).copied().unwrap_or(b'\\') as char;
    let sub = encoding.get(3).copied().unwrap_or(b'&') as char;
    let sep = sep as char;
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let code = if c == sep {
            Some('F')
        } else if c == comp {
            Some('S')
        } else if c == rep {
            Some('R')
        } else if c == esc {
            Some('E')
        } else if c == sub {
            Some('T')
        } else {
            None
        };
        match code {
            Some(k) => {
                out.push(esc);
                out.push(k);
                out.push(esc);
            }
            None if c == '\r' || c == '\n' => out.push(' '),
            None => out.push(c),
        }
    }
    out
}

/// Text in the message's charset: GB18030 when MSH-18 names a GB charset, else UTF-8.
fn encode(inbound: &InboundHeader, text: &str) -> Vec<u8> {
    if inbound.is_gb() {
        encoding_rs::GB18030.encode(text).0.into_owned()
    } else {
        text.as_bytes().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A04: &[u8] = b"MSH|^~\\&|HIS|HOSP|CEM|BRIDGE|20261123101500||ADT^A04^ADT_A01|MSG0001|P|2.5|||||CHN|UNICODE UTF-8\rPID|1||P1\r";

    fn segments(ack: &[u8]) -> Vec<Vec<String>> {
        String::from_utf8_lossy(ack)
            .split('\r')
            .filter(|s| !s.is_empty())
            .map(|s| s.split('|').map(str::to_string).collect())
            .collect()
    }

    #[test]
    fn the_ack_swaps_sender_and_receiver_and_echoes_id_version_and_charset() {
        let h = InboundHeader::parse(A04);
        let ack = build(&h, AckCode::Accept, None, "20261204093000+0000");
        let s = segments(&ack);
        assert_eq!(s[0][2..6], ["CEM", "BRIDGE", "HIS", "HOSP"]);
        assert_eq!(s[0][8], "ACK^A04^ACK");
        assert_eq!(s[0][10], "P");
        assert_eq!(s[0][11], "2.5");
        assert_eq!(s[0][17], "UNICODE UTF-8");
        assert_eq!(s[1], ["MSA", "AA", "MSG0001"]);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn an_error_ack_names_the_reason_escaped_in_msa_and_err() {
        let h = InboundHeader::parse(A04);
        let ack = build(
            &h,
            AckCode::Error,
            Some("unknown_event: event code Z99|x is not mapped"),
            "20261204093000+0000",
        );
        let s = segments(&ack);
        assert_eq!(s[1][1], "AE");
        assert_eq!(s[1][3], "unknown_event: event code Z99\\F\\x is not mapped");
        assert_eq!(s[2][0], "ERR");
        assert_eq!(s[2][3], "207^Application internal error^HL70357");
        assert_eq!(s[2][4], "E");
        assert!(s[2][8].starts_with("unknown_event"));
    }

    #[test]
    fn a_gbk_message_gets_a_gbk_ack() {
        let (msh, _, _) = encoding_rs::GBK.encode(
            "MSH|^~\\&|HIS|人民医院|CEM||20261123101500||ADT^A03|M2|P|2.4|||||CHN|GB18030\r",
        );
        let h = InboundHeader::parse(&msh);
        let ack = build(&h, AckCode::Error, Some("原因"), "20261204093000+0000");
        let (text, _, bad) = encoding_rs::GB18030.decode(&ack);
        assert!(!bad);
        assert!(text.contains("|HIS|人民医院|"), "{text}");
        assert!(text.contains("MSA|AE|M2|原因"), "{text}");
    }

    #[test]
    fn a_body_without_msh_still_gets_a_wellformed_ack() {
        let h = InboundHeader::parse(b"not hl7 at all");
        let ack = build(
            &h,
            AckCode::Error,
            Some("unknown_format"),
            "20261204093000+0000",
        );
        let s = segments(&ack);
        assert_eq!(s[0][0], "MSH");
        assert_eq!(s[0][1], "^~\\&");
        assert_eq!(s[1][..2], ["MSA", "AE"]);
    }
}
