//! Bytes → a mapped [`Outcome`] or a [`Rejection`] with a dead-letter reason.
//!
//! Steps (R-EVT-1, R-EVT-2): size limit; strip a UTF-8 BOM and MLLP framing; detect the format
//! from the first bytes; decode the charset; parse (HL7 v2 via hl7-parser, XML into a small
//! tree, JSON via serde_json with a depth limit); choose the connector's mapping for the
//! message and apply it (see [`crate::mapping`]).

pub mod charset;
pub mod hl7v2;
pub mod json;
pub mod xml;

use std::collections::BTreeMap;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::mapping::path::{Doc, Env};
use crate::mapping::{ApplyContext, MappingSet, Outcome};
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

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
            default_charset: Charset::Utf8,
            zone: crate::time::default_zone(),
            now: Timestamp::now(),
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
    if body.len() > opts.max_bytes {
        return Err(Rejection::new(
            DeadLetterReason::Oversized,
            format!(
                "the body is {} bytes, over the {} byte limit",
                body.len(),
                opts.max_bytes
            ),
        ));
    }
    let body = strip_framing(body);
    let format = detect_format(body)?;
    let (mapping, outcome) = match format {
        Format::Hl7v2 => hl7v2::decode(body, opts, set, headers)?,
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
    };
    let mapping = set.choose(format, doc, &env)?;
    let ctx = ApplyContext {
        zone: &opts.zone,
        now: opts.now,
        headers,
        facility: &opts.facility,
    };
    Ok((mapping.name.clone(), mapping.apply(doc, &ctx)?))
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
    fn r_evt_1_oversized() {
        let opts = DecodeOptions {
            max_bytes: 10,
            ..Default::default()
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
