//! Fuzz the HL7 v2 path: `decode` with the shipped `mappings/hl7v2/adt.yaml`, plus the
//! lower-level pieces on the same bytes: `hl7v2::declared_charset` (MSH-18 from raw bytes),
//! `hl7v2::unescape` (escape decoding on byte positions) and `xml::parse`.
//! Property: never panics.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use cem_pipeline::decode::{Charset, DecodeOptions, hl7v2};
use cem_pipeline::mapping::{Files, MappingSet, compile};
use cem_pipeline::translate::decode;
use hl7_parser::message::Separators;
use libfuzzer_sys::fuzz_target;

/// adt.yaml refers to no table; its test inputs are not needed to compile it.
struct NoFiles;
impl Files for NoFiles {
    fn read(&self, _: &str, path: &str) -> Result<Vec<u8>, String> {
        Err(format!("{path} is not embedded in the fuzz target"))
    }
}

fn set() -> &'static MappingSet {
    static SET: OnceLock<MappingSet> = OnceLock::new();
    SET.get_or_init(|| {
        let zone = cem_pipeline::time::default_zone();
        let text = include_str!("../../mappings/hl7v2/adt.yaml");
        MappingSet::new(vec![
            compile("adt.yaml", text, &zone, &NoFiles).expect("shipped mapping compiles"),
        ])
    })
}

fn opts() -> &'static DecodeOptions {
    static OPTS: OnceLock<DecodeOptions> = OnceLock::new();
    OPTS.get_or_init(|| DecodeOptions::at("2026-11-23T00:00:00Z".parse().unwrap()))
}

fuzz_target!(|data: &[u8]| {
    let headers = BTreeMap::new();
    let _ = decode(data, opts(), set(), &headers);
    let _ = hl7v2::declared_charset(data);
    let _ = hl7v2::unescape(&Separators::default(), &String::from_utf8_lossy(data));
    let _ = cem_pipeline::decode::xml::parse(data, Charset::Utf8);
});
