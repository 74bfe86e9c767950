//! Bytes → a parsed document, or a [`Rejection`] with a dead-letter reason.
//!
//! Steps (R-EVT-1, R-EVT-2): size limit; strip a UTF-8 BOM and MLLP framing; detect the format
//! from the first bytes ([`prepare`]); then by format: HL7 v2 — the charset of MSH-18 and the
//! format-level checks no mapping may change ([`hl7v2::decode_text`], [`hl7v2::parse`]); XML
//! into a small tree ([`xml::parse`]); JSON via serde_json with a depth limit
//! ([`json::parse_json`]).
//!
//! Nothing here knows about mappings: choosing and applying the connector's mapping to the
//! parsed document is the `translate` module's.

pub mod charset;
pub mod hl7v2;
pub mod json;
pub mod xml;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::reason::{DeadLetterReason, Rejection};

pub use charset::Charset;

/// The size limit of R-EVT-1.
pub const DEFAULT_MAX_BYTES: usize = 1024 * 1024;

/// Message formats of R-EVT-1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Hl7v2,
    Xml,
    Json,
}

impl Format {
    pub fn code(self) -> &'static str {
        match self {
            Self::Hl7v2 => "hl7v2",
            Self::Xml => "xml",
            Self::Json => "json",
        }
    }
}

/// Per-connector decoding settings.
#[derive(Debug, Clone)]
pub struct DecodeOptions {
    /// Bodies larger than this are `oversized`.
    pub max_bytes: usize,
    /// Charset when the message declares none (R-EVT-2).
    pub default_charset: Charset,
    /// Zone for times without an offset (R-GEN-1).
    pub zone: TimeZone,
    /// "Today" for identifier checks (R-ID-1 birth date not in the future).
    pub now: Timestamp,
    /// The connector's facility: authority and facility when an XML / JSON message carries
    /// none (R-GEN-3); `$facility` in mappings.
    pub facility: String,
}

impl DecodeOptions {
    /// The defaults (the R-EVT-1 size limit, UTF-8, the hospital's zone, no facility) with
    /// "today" at `now`, the caller's clock: nothing in this crate reads one.
    pub fn at(now: Timestamp) -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
            default_charset: Charset::Utf8,
            zone: crate::time::default_zone(),
            now,
            facility: String::new(),
        }
    }
}

/// Strip a UTF-8 BOM, MLLP framing (0x0B … 0x1C 0x0D) and leading whitespace.
pub fn strip_framing(body: &[u8]) -> &[u8] {
    let mut b = body;
    if let Some(rest) = b.strip_prefix(&[0xEF, 0xBB, 0xBF]) {
        b = rest;
    }
    if let Some(rest) = b.strip_prefix(&[0x0B]) {
        b = rest;
        if let Some(end) = b.iter().rposition(|&c| c == 0x1C) {
            b = &b[..end];
        }
    }
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    &b[start..]
}

/// Detect the format of a framed-stripped body (R-EVT-1).
pub fn detect_format(body: &[u8]) -> Result<Format, Rejection> {
    if is_utf16(body) {
        return Err(Rejection::new(
            DeadLetterReason::InvalidEncoding,
            "the body is UTF-16, which is not supported: send UTF-8 or GB18030",
        ));
    }
    match body.first() {
        None => Err(Rejection::new(
            DeadLetterReason::UnknownFormat,
            "the message body is empty",
        )),
        Some(b'<') => Ok(Format::Xml),
        Some(b'{') => Ok(Format::Json),
        _ if body.starts_with(b"MSH") => Ok(Format::Hl7v2),
        _ => Err(Rejection::new(
            DeadLetterReason::UnknownFormat,
            "the body is not HL7 v2 (starts with MSH), XML (<) or JSON ({)",
        )),
    }
}

/// UTF-16 text: a byte-order mark, or ASCII with a NUL after (LE) or before (BE) each of the
/// first characters.
fn is_utf16(body: &[u8]) -> bool {
    if body.starts_with(&[0xFF, 0xFE]) || body.starts_with(&[0xFE, 0xFF]) {
        return true;
    }
    let head = &body[..body.len().min(8)];
    head.len() >= 4
        && (head
            .chunks(2)
            .all(|c| c.len() == 2 && c[0] != 0 && c[1] == 0)
            || head
                .chunks(2)
                .all(|c| c.len() == 2 && c[0] == 0 && c[1] != 0))
}

/// The size limit, framing and format of a body (R-EVT-1): its format and the body without
/// framing. A body over `max_bytes` is `oversized`.
pub fn prepare(body: &[u8], max_bytes: usize) -> Result<(Format, &[u8]), Rejection> {
    if body.len() > max_bytes {
        return Err(Rejection::new(
            DeadLetterReason::Oversized,
            format!(
                "the body is {} bytes, over the {} byte limit",
                body.len(),
                max_bytes
            ),
        ));
    }
    let body = strip_framing(body);
    let format = detect_format(body)?;
    Ok((format, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_evt_1_framing_and_bom_are_stripped() {
        assert_eq!(strip_framing(b"\x0bMSH|x\r\x1c\r"), b"MSH|x\r");
        assert_eq!(strip_framing(b"\xef\xbb\xbf  {\"a\":1}"), b"{\"a\":1}");
        assert_eq!(strip_framing(b"\x0b"), b"");
    }

    #[test]
    fn r_evt_1_format_detection() {
        assert_eq!(detect_format(b"MSH|^~\\&|").unwrap(), Format::Hl7v2);
        assert_eq!(detect_format(b"<a/>").unwrap(), Format::Xml);
        assert_eq!(detect_format(b"{}").unwrap(), Format::Json);
        let e = detect_format(b"").unwrap_err();
        assert_eq!(
            e.reason,
            DeadLetterReason::UnknownFormat,
            "R-GEN-3 empty body"
        );
        let e = detect_format(b"GET / HTTP/1.1").unwrap_err();
        assert_eq!(e.reason, DeadLetterReason::UnknownFormat);
    }

    #[test]
    fn r_evt_1_utf16_is_named_as_an_encoding_problem() {
        let le: Vec<u8> = "MSH|^~\\&|HIS"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        let be: Vec<u8> = "MSH|^~\\&|HIS"
            .encode_utf16()
            .flat_map(u16::to_be_bytes)
            .collect();
        let with_bom: Vec<u8> = [0xFF, 0xFE].iter().copied().chain(le.clone()).collect();
        for body in [le, be, with_bom] {
            let e = prepare(&body, 1000).unwrap_err();
            assert_eq!(e.reason, DeadLetterReason::InvalidEncoding);
            assert!(e.detail.contains("UTF-16"), "{}", e.detail);
        }
    }

    #[test]
    fn r_evt_1_prepare_checks_the_size_then_strips_and_detects() {
        let e = prepare(b"MSH|^~\\&|0123456789", 10).unwrap_err();
        assert_eq!(e.reason, DeadLetterReason::Oversized);
        assert_eq!(e.detail, "the body is 19 bytes, over the 10 byte limit");
        let framed = b"\x0bMSH|^~\\&|\r\x1c\r";
        assert_eq!(
            prepare(framed, framed.len()).unwrap(),
            (Format::Hl7v2, &b"MSH|^~\\&|\r"[..])
        );
        let e = prepare(b"\xef\xbb\xbf  ", 10).unwrap_err();
        assert_eq!(e.reason, DeadLetterReason::UnknownFormat);
    }
}
