//! Fuzz the JSON path: `decode` with the shipped `mappings/json/his_events.yaml` (its table
//! `tables/json_disposition.csv` embedded), plus `decode::json::parse_json` directly.
//! Property: never panics.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use cem_pipeline::decode::DecodeOptions;
use cem_pipeline::mapping::{Files, MappingSet, compile};
use cem_pipeline::translate::decode;
use libfuzzer_sys::fuzz_target;

struct Tables;
impl Files for Tables {
    fn read(&self, _: &str, path: &str) -> Result<Vec<u8>, String> {
        match path {
            "tables/json_disposition.csv" => {
                Ok(include_bytes!("../../mappings/json/tables/json_disposition.csv").to_vec())
            }
            _ => Err(format!("{path} is not embedded in the fuzz target")),
        }
    }
}

fn set() -> &'static MappingSet {
    static SET: OnceLock<MappingSet> = OnceLock::new();
    SET.get_or_init(|| {
        let zone = cem_pipeline::time::default_zone();
        let text = include_str!("../../mappings/json/his_events.yaml");
        MappingSet::new(vec![
            compile("his_events.yaml", text, &zone, &Tables).expect("shipped mapping compiles"),
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
    let _ = cem_pipeline::decode::json::parse_json(data);
});
