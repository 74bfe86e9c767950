//! Property tests: no input makes the decoders or the shipped mappings panic (issue 3 §8,
//! issue 4 §9, R-EVT-1/6). Random bytes, and mutations of real HL7 v2, XML and JSON samples
//! (truncation, splices of separators, escapes, markup and Chinese text).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use cem_pipeline::decode::DecodeOptions;
use cem_pipeline::decode::json::check_json;
use cem_pipeline::mapping::{MappingSet, builtin};
use cem_pipeline::translate::decode as decode_with;
use proptest::prelude::*;

const A03: &str = include_str!("../../tests/fixtures/samples/hl7v2/adt_a03_discharge.hl7");
const XML: &str = include_str!("../../tests/fixtures/samples/xml/discharge_utf8.xml");
const JSON: &str = include_str!("../../tests/fixtures/samples/json/discharge.json");

fn set() -> &'static MappingSet {
    static SET: OnceLock<MappingSet> = OnceLock::new();
    SET.get_or_init(|| {
        let set = builtin(&cem_pipeline::time::default_zone());
        assert_eq!(set.mappings.len(), 5, "every shipped mapping compiles");
        set
    })
}

fn decode(body: &[u8], opts: &DecodeOptions) {
    let headers: BTreeMap<String, String> =
        [("service-code".to_string(), "S0032".to_string())].into();
    let _ = decode_with(body, opts, set(), &headers);
}

fn mutate(src: &str, cut: usize, edits: Vec<(usize, String)>) -> (String, usize) {
    let mut s = src.to_string();
    for (at, text) in edits {
        let mut i = at.min(s.len());
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        s.insert_str(i, &text);
    }
    let mut c = cut.min(s.len());
    while !s.is_char_boundary(c) {
        c -= 1;
    }
    (s, c)
}

fn opts() -> DecodeOptions {
    DecodeOptions::at("2026-11-23T00:00:00Z".parse().unwrap())
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

fn xml_splice() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "<",
        ">",
        "/>",
        "</a>",
        "&",
        "&amp;",
        "&#x0;",
        "&#12345678;",
        "&lol;",
        "\"",
        "'",
        "<!DOCTYPE x>",
        "<![CDATA[",
        "]]>",
        "xmlns:v3=\"urn:x\" ",
        "v3:",
        "张",
        "\u{0}",
        "<?xml version=\"1.0\" encoding=\"GBK\"?>",
        "",
    ])
    .prop_map(str::to_string)
}

fn json_splice() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        "\"",
        ",",
        ":",
        "\\u0000",
        "\\ud800",
        "null",
        "1e999",
        "-0",
        "张",
        "\"eventType\":",
        "\"OUTPATIENT_REGISTERED\"",
        "true",
        "",
    ])
    .prop_map(str::to_string)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn random_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..600)) {
        decode(&body, &opts());
        let _ = check_json(&body);
    }

    #[test]
    fn random_bytes_after_msh_never_panic(tail in prop::collection::vec(any::<u8>(), 0..400)) {
        let mut body = b"MSH|^~\\&|".to_vec();
        body.extend(tail);
        decode(&body, &opts());
    }

    #[test]
    fn mutated_a03_never_panics(
        cut in 0usize..A03.len(),
        edits in prop::collection::vec((0usize..A03.len(), splice()), 0..6),
    ) {
        let (s, c) = mutate(A03, cut, edits);
        decode(s.as_bytes(), &opts());
        decode(&s.as_bytes()[..c], &opts());
    }

    #[test]
    fn xml_and_json_shapes_never_panic(s in "[<>/a-z=\"'{}\\[\\]:,&;! ?-]{0,200}") {
        let _ = check_json(s.as_bytes());
        decode(s.as_bytes(), &opts());
    }

    #[test]
    fn mutated_xml_never_panics(
        cut in 0usize..XML.len(),
        edits in prop::collection::vec((0usize..XML.len(), xml_splice()), 0..6),
    ) {
        let (s, c) = mutate(XML, cut, edits);
        decode(s.as_bytes(), &opts());
        decode(&s.as_bytes()[..c], &opts());
    }

    #[test]
    fn mutated_json_never_panics(
        cut in 0usize..JSON.len(),
        edits in prop::collection::vec((0usize..JSON.len(), json_splice()), 0..6),
    ) {
        let (s, c) = mutate(JSON, cut, edits);
        decode(s.as_bytes(), &opts());
        decode(&s.as_bytes()[..c], &opts());
    }
}

/// Pieces of path and selector syntax, including the characters that delimit and quote.
fn selector_piece() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "[",
        "]",
        "=",
        "!=",
        ",",
        "'",
        "\"",
        "&",
        "|",
        "*",
        "/",
        "//",
        "@",
        ".",
        "~0",
        "~1",
        "0",
        "1",
        "12",
        " ",
        "张",
        "PID-13",
        "NK1",
        "-5",
        "3=CP",
        "phones",
        "type=mobile",
        "no",
        "personalRelationship",
        "code/@code",
        "@root",
        "item",
        "text()",
        "$p",
        "$header.x",
    ])
    .prop_map(str::to_string)
}

proptest! {
    /// Issue 18 §1: any path text — selectors malformed in any way — compiles to a path or an
    /// error, and a compiled path evaluates on real documents of each format without panicking.
    #[test]
    fn selectors_never_panic(parts in prop::collection::vec(selector_piece(), 0..14)) {
        use cem_pipeline::mapping::model::FormatName;
        use cem_pipeline::mapping::path::{Doc, Env, compile};
        let text = parts.concat();
        let ns: BTreeMap<String, String> = BTreeMap::new();
        let lets = vec!["p".to_string()];
        let headers = BTreeMap::new();
        let env = Env { headers: &headers, facility: "F", unmatched: Default::default() };
        let hl7 = hl7_parser::Message::parse_with_lenient_newlines(A03, true).unwrap();
        let xml = cem_pipeline::decode::xml::parse_str(XML).unwrap();
        let json: serde_json::Value = serde_json::from_str(
            r#"{"phones":[{"type":"mobile","no":"13800000001"},{"type":"home"}],"a":{"b":[1,[2],{"c":null}]}}"#,
        ).unwrap();
        for (format, doc) in [
            (FormatName::Hl7v2, Doc::Hl7(&hl7)),
            (FormatName::Xml, Doc::Xml(&xml)),
            (FormatName::Json, Doc::Json(&json)),
        ] {
            if let Ok(p) = compile(&text, format, &ns, &lets) {
                let mut out = Vec::new();
                p.eval(&doc, &env, &[None], &mut out);
                let _ = p.bind(&doc);
            }
        }
    }
}
