//! JSON bodies: parsed with a depth limit (R-EVT-6, R-GEN-3). JSON nested deeper than 64
//! levels is refused before serde sees it, so parsing never recurses deeply. (XML is parsed in
//! [`super::xml`].)

use crate::reason::{DeadLetterReason, Rejection};

/// Maximum JSON nesting (R-GEN-3).
pub const MAX_JSON_DEPTH: usize = 64;

/// Parse a JSON body that nests at most [`MAX_JSON_DEPTH`] levels.
pub fn parse_json(body: &[u8]) -> Result<serde_json::Value, Rejection> {
    // R-EVT-2: JSON is UTF-8; invalid bytes are an encoding problem, not a syntax one.
    if let Err(e) = std::str::from_utf8(body) {
        return Err(Rejection::new(
            DeadLetterReason::InvalidEncoding,
            format!(
                "invalid UTF-8 at byte offset {} (JSON must be UTF-8)",
                e.valid_up_to()
            ),
        ));
    }
    check_json_depth(body)?;
    serde_json::from_slice(body).map_err(json_error)
}

/// Check that a JSON body parses and nests at most [`MAX_JSON_DEPTH`] levels.
pub fn check_json(body: &[u8]) -> Result<(), Rejection> {
    check_json_depth(body)?;
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map(|_| ())
        .map_err(json_error)
}

fn json_error(e: serde_json::Error) -> Rejection {
    Rejection::new(
        DeadLetterReason::MalformedJson,
        format!(
            "JSON error at line {} column {}: {}",
            e.line(),
            e.column(),
            match e.classify() {
                serde_json::error::Category::Eof => "unexpected end of input",
                serde_json::error::Category::Syntax => "syntax error",
                serde_json::error::Category::Data => "invalid data",
                serde_json::error::Category::Io => "read error",
            }
        ),
    )
}

fn check_json_depth(body: &[u8]) -> Result<(), Rejection> {
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
