//! Fuzz the XML path: `decode` with the shipped `mappings/xml/hip_encounter.yaml`,
//! `hip_registration_update.yaml` and `hip_patient.yaml` (header service-code=S0032), plus
//! `decode::xml::parse`
//! directly. Property: never panics.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use cem_pipeline::decode::{Charset, DecodeOptions};
use cem_pipeline::mapping::{Files, MappingSet, compile};
use cem_pipeline::translate::decode;
use libfuzzer_sys::fuzz_target;

/// The XML mappings refer to no table; their test inputs are inline.
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
        let files = [
            (
                "hip_encounter.yaml",
                include_str!("../../mappings/xml/hip_encounter.yaml"),
            ),
            (
                "hip_registration_update.yaml",
                include_str!("../../mappings/xml/hip_registration_update.yaml"),
            ),
            (
                "hip_patient.yaml",
                include_str!("../../mappings/xml/hip_patient.yaml"),
            ),
        ];
        MappingSet::new(
            files
                .iter()
                .map(|(n, t)| compile(n, t, &zone, &NoFiles).expect("shipped mapping compiles"))
                .collect(),
        )
    })
}

fn opts() -> &'static DecodeOptions {
    static OPTS: OnceLock<DecodeOptions> = OnceLock::new();
    OPTS.get_or_init(|| DecodeOptions::at("2026-11-23T00:00:00Z".parse().unwrap()))
}

fn headers() -> &'static BTreeMap<String, String> {
    static HEADERS: OnceLock<BTreeMap<String, String>> = OnceLock::new();
    HEADERS.get_or_init(|| [("service-code".to_string(), "S0032".to_string())].into())
}

fuzz_target!(|data: &[u8]| {
    let _ = decode(data, opts(), set(), headers());
    let _ = cem_pipeline::decode::xml::parse(data, Charset::Utf8);
});
