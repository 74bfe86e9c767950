//! Fuzz mapping paths and their selectors (issue 18 §1): any text compiles to a path or an
//! error for each format, and a compiled path evaluates on a sample of each format.
//! Property: never panics.
#![no_main]

use std::collections::BTreeMap;

use cem_pipeline::mapping::model::FormatName;
use cem_pipeline::mapping::path::{Doc, Env, compile};
use libfuzzer_sys::fuzz_target;

const A03: &str = include_str!("../../tests/fixtures/samples/hl7v2/adt_a03_discharge.hl7");
const XML: &str = include_str!("../../tests/fixtures/samples/xml/patient_register_utf8.xml");
const JSON: &str = include_str!("../../tests/fixtures/samples/json/discharge.json");

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let ns: BTreeMap<String, String> = [("v3".to_string(), "urn:hl7-org:v3".to_string())].into();
    let lets = vec!["p".to_string()];
    let headers = BTreeMap::new();
    let env = Env {
        headers: &headers,
        facility: "F",
        unmatched: Default::default(),
    };
    let Ok(hl7) = hl7_parser::Message::parse_with_lenient_newlines(A03, true) else {
        return;
    };
    let Ok(xml) = cem_pipeline::decode::xml::parse_str(XML) else {
        return;
    };
    let Ok(json) = cem_pipeline::decode::json::parse_json(JSON.as_bytes()) else {
        return;
    };
    for (format, doc) in [
        (FormatName::Hl7v2, Doc::Hl7(&hl7)),
        (FormatName::Xml, Doc::Xml(&xml)),
        (FormatName::Json, Doc::Json(&json)),
    ] {
        if let Ok(p) = compile(text, format, &ns, &lets) {
            let mut out = Vec::new();
            p.eval(&doc, &env, &[None], &mut out);
            let _ = p.bind(&doc);
        }
    }
});
