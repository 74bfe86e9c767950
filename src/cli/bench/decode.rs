//! `cem-bridge bench decode`: the cost of decoding and mapping one message, per format, against
//! the bare parser of the same bytes, measured in the same run. Prints figures; asserts nothing.
//!
//! For each sample: the bare parse (hl7-parser / a quick-xml event walk / serde_json into a
//! `Value`) and the bridge's full `decode` (format detection, charset, parse, mapping choice,
//! paths, transforms, identifier rules → `PatientEvent`) with the shipped mappings. The two are
//! measured interleaved, best of 7 rounds of 200 ms, on one core. The goal of issue 4 §10:
//! decode+map of the HL7 A03 costs at most 1.5× the bare hl7-parser parse.

use std::collections::BTreeMap;
use std::hint::black_box;

use anyhow::{Context, bail};
use cem_pipeline::decode::DecodeOptions;
use cem_pipeline::mapping::{MappingSet, Outcome};
use cem_pipeline::translate::decode;

const A03: &[u8] = include_bytes!("../../../tests/fixtures/samples/hl7v2/adt_a03_discharge.hl7");
const XML: &[u8] = include_bytes!("../../../tests/fixtures/samples/xml/discharge_utf8.xml");
const JSON: &[u8] = include_bytes!("../../../tests/fixtures/samples/json/discharge.json");

/// One measured pair.
#[derive(Debug, Clone)]
pub struct DecodeFigure {
    pub sample: &'static str,
    pub baseline: &'static str,
    pub baseline_rate: f64,
    pub decode_rate: f64,
}

impl DecodeFigure {
    /// How many times the bare parse's cost decode+map costs.
    pub fn cost_ratio(&self) -> f64 {
        self.baseline_rate / self.decode_rate
    }
}

fn check(
    name: &str,
    body: &[u8],
    opts: &DecodeOptions,
    set: &MappingSet,
    headers: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    match decode(body, opts, set, headers) {
        Ok(d) if matches!(d.outcome, Outcome::Event(_)) => Ok(()),
        Ok(d) => bail!("{name} maps to {:?}, not an event", d.outcome),
        Err(r) => bail!("{name} does not decode: {} ({})", r.reason.code(), r.detail),
    }
}

/// Walk every quick-xml event of a document (the floor under building the tree).
fn xml_walk(body: &[u8]) -> usize {
    let Ok(text) = std::str::from_utf8(body) else {
        return 0;
    };
    let mut r = quick_xml::NsReader::from_str(text);
    let mut n = 0;
    while let Ok((_, ev)) = r.read_resolved_event() {
        if matches!(ev, quick_xml::events::Event::Eof) {
            break;
        }
        n += 1;
    }
    n
}

/// Measure the three formats; prints progress on stderr.
pub fn run() -> anyhow::Result<Vec<DecodeFigure>> {
    let zone = cem_pipeline::time::default_zone();
    let set = cem_pipeline::mapping::builtin(&zone);
    let opts = DecodeOptions {
        facility: "BENCH".into(),
        ..DecodeOptions::at("2026-11-23T00:00:00Z".parse().context("bench clock")?)
    };
    let none = BTreeMap::new();
    let xml_headers: BTreeMap<String, String> =
        [("service-code".to_string(), "S0032".to_string())].into();
    check("the A03 sample", A03, &opts, &set, &none)?;
    check("the XML discharge sample", XML, &opts, &set, &xml_headers)?;
    check("the JSON discharge sample", JSON, &opts, &set, &none)?;
    let a03 = std::str::from_utf8(A03).context("A03 is UTF-8")?;
    let mut out = Vec::new();

    eprintln!("measuring HL7 v2 A03 …");
    let (base, full) = crate::cli::bench::best_rates(
        || {
            let _ = black_box(hl7_parser::Message::parse_with_lenient_newlines(
                black_box(a03),
                true,
            ));
        },
        || {
            let _ = black_box(decode(black_box(A03), &opts, &set, &none));
        },
    );
    out.push(DecodeFigure {
        sample: "HL7 v2 ADT^A03 (adt_a03_discharge.hl7)",
        baseline: "hl7-parser parse",
        baseline_rate: base,
        decode_rate: full,
    });

    eprintln!("measuring XML S0032 …");
    let (base, full) = crate::cli::bench::best_rates(
        || {
            black_box(xml_walk(black_box(XML)));
        },
        || {
            let _ = black_box(decode(black_box(XML), &opts, &set, &xml_headers));
        },
    );
    out.push(DecodeFigure {
        sample: "XML 互联互通 S0032 (discharge_utf8.xml)",
        baseline: "quick-xml event walk",
        baseline_rate: base,
        decode_rate: full,
    });

    eprintln!("measuring JSON …");
    let (base, full) = crate::cli::bench::best_rates(
        || {
            let _ = black_box(serde_json::from_slice::<serde_json::Value>(black_box(JSON)));
        },
        || {
            let _ = black_box(decode(black_box(JSON), &opts, &set, &none));
        },
    );
    out.push(DecodeFigure {
        sample: "JSON INPATIENT_DISCHARGED (discharge.json)",
        baseline: "serde_json to Value",
        baseline_rate: base,
        decode_rate: full,
    });
    Ok(out)
}

/// The table `bench decode` prints.
pub fn render(figures: &[DecodeFigure]) -> String {
    let mut s = String::from(
        "sample                                        baseline               baseline msg/s   decode+map msg/s   cost ×baseline\n",
    );
    for f in figures {
        s.push_str(&format!(
            "{:<45} {:<22} {:>14.0}   {:>16.0}   {:>10.2}\n",
            f.sample,
            f.baseline,
            f.baseline_rate,
            f.decode_rate,
            f.cost_ratio()
        ));
    }
    if let Some(h) = figures.first() {
        s.push_str(&format!(
            "goal (issue 4): HL7 decode+map ≤ 1.5× the bare hl7-parser parse — measured {:.2}× ({})\n",
            h.cost_ratio(),
            if h.cost_ratio() <= 1.5 { "met" } else { "not met" }
        ));
    }
    s
}
