//! Property tests: no input makes the decoders panic (issue 3 §8, R-EVT-1/6). Random bytes,
//! and mutations of a real A03 (truncation, splices of separators, escapes and Chinese text).

use cem_pipeline::decode::wellformed::{check_json, check_xml};
use cem_pipeline::decode::{DecodeOptions, decode};
use proptest::prelude::*;

const A03: &str = include_str!("../../tests/fixtures/samples/hl7v2/adt_a03_discharge.hl7");

fn opts() -> DecodeOptions {
    DecodeOptions {
        now: "2026-11-23T00:00:00Z".parse().unwrap(),
        ..Default::default()
    }
}

fn splice() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "|",
        "^",
        "~",
        "\\",
        "&",
        "\r",
        "\n",
        "\\F\\",
        "\\X0D\\",
        "\\Xzz\\",
        "张",
        "北京市\\S\\",
        "MSH|^~\\&|",
        "\u{0b}",
        "\u{1c}",
        "",
        "PID|",
        "PV1|1|I|",
        "\\E\\",
        "é",
    ])
    .prop_map(str::to_string)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn random_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode(&body, &opts());
        let _ = check_xml(&body);
        let _ = check_json(&body);
    }

    #[test]
    fn random_bytes_after_msh_never_panic(tail in prop::collection::vec(any::<u8>(), 0..400)) {
        let mut body = b"MSH|^~\\&|".to_vec();
        body.extend(tail);
        let _ = decode(&body, &opts());
    }

    #[test]
    fn mutated_a03_never_panics(
        cut in 0usize..A03.len(),
        edits in prop::collection::vec((0usize..A03.len(), splice()), 0..6),
    ) {
        let mut s = A03.to_string();
        for (at, text) in edits {
            let mut i = at.min(s.len());
            while !s.is_char_boundary(i) { i -= 1; }
            s.insert_str(i, &text);
        }
        let mut c = cut.min(s.len());
        while !s.is_char_boundary(c) { c -= 1; }
        let _ = decode(s.as_bytes(), &opts());
        let _ = decode(&s.as_bytes()[..c], &opts());
    }

    #[test]
    fn xml_and_json_shapes_never_panic(s in "[<>/a-z=\"'{}\\[\\]:,&;! ?-]{0,200}") {
        let _ = check_xml(s.as_bytes());
        let _ = check_json(s.as_bytes());
        let _ = decode(s.as_bytes(), &opts());
    }
}
