//! Charsets of R-EVT-2: UTF-8, or GB18030 for GBK / GB2312 / GB 18030 labels.
//!
//! Invalid bytes are an error naming the byte offset; there is never a silent U+FFFD.

use std::borrow::Cow;

use crate::reason::{DeadLetterReason, Rejection};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Charset {
    #[default]
    Utf8,
    /// GB18030, a superset of GBK and GB2312 (hospital data often leaves GB2312).
    Gb18030,
}

impl Charset {
    /// Map a charset label (MSH-18, an XML declaration, or config) to a charset.
    pub fn from_label(label: &str) -> Option<Self> {
        let l = label
            .trim()
            .to_ascii_uppercase()
            .replace(['-', '_', ' '], "");
        match l.as_str() {
            "" | "UNICODEUTF8" | "UTF8" | "UNICODE" | "ASCII" => Some(Self::Utf8),
            "GB18030" | "GB180302000" | "GBK" | "GB2312" | "CP936" => Some(Self::Gb18030),
            _ => None,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Self::Utf8 => "utf-8",
            Self::Gb18030 => "gb18030",
        }
    }

    /// Decode bytes to text, or fail with the offset of the first invalid byte.
    pub fn decode(self, bytes: &[u8]) -> Result<Cow<'_, str>, Rejection> {
        match self {
            Self::Utf8 => std::str::from_utf8(bytes).map(Cow::Borrowed).map_err(|e| {
                Rejection::new(
                    DeadLetterReason::InvalidEncoding,
                    format!("invalid UTF-8 at byte offset {}", e.valid_up_to()),
                )
            }),
            Self::Gb18030 => {
                let mut decoder = encoding_rs::GB18030.new_decoder_without_bom_handling();
                let cap = decoder
                    .max_utf8_buffer_length_without_replacement(bytes.len())
                    .unwrap_or(bytes.len() * 3 + 16);
                let mut out = String::with_capacity(cap);
                let (result, read) =
                    decoder.decode_to_string_without_replacement(bytes, &mut out, true);
                match result {
                    encoding_rs::DecoderResult::InputEmpty => Ok(Cow::Owned(out)),
                    encoding_rs::DecoderResult::Malformed(bad, _) => Err(Rejection::new(
                        DeadLetterReason::InvalidEncoding,
                        format!(
                            "invalid GB18030 at byte offset {}",
                            read.saturating_sub(usize::from(bad))
                        ),
                    )),
                    encoding_rs::DecoderResult::OutputFull => Err(Rejection::new(
                        DeadLetterReason::InvalidEncoding,
                        "GB18030 decoding ran out of buffer",
                    )),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_evt_2_labels() {
        assert_eq!(Charset::from_label("UNICODE UTF-8"), Some(Charset::Utf8));
        assert_eq!(Charset::from_label("GB 18030-2000"), Some(Charset::Gb18030));
        assert_eq!(Charset::from_label("gbk"), Some(Charset::Gb18030));
        assert_eq!(Charset::from_label("GB2312"), Some(Charset::Gb18030));
        assert_eq!(Charset::from_label("8859/1"), None);
    }

    #[test]
    fn r_evt_2_invalid_bytes_name_the_offset() {
        let e = Charset::Utf8.decode(b"MSH|\xff\xfe").unwrap_err();
        assert_eq!(e.reason, DeadLetterReason::InvalidEncoding);
        assert!(e.detail.contains("offset 4"), "{}", e.detail);
        let (gbk, _, _) = encoding_rs::GBK.encode("李娜");
        assert_eq!(Charset::Gb18030.decode(&gbk).unwrap(), "李娜");
        let e = Charset::Gb18030.decode(b"ab\x81").unwrap_err();
        assert!(e.detail.contains("offset 2"), "{}", e.detail);
    }
}
