//! Mapping test cases (`cem-bridge test`): run each case through the same decode path the
//! bridge uses and compare with what the case expects.
//!
//! A case runs against the whole [`MappingSet`], so it also checks that its own mapping is the
//! one chosen. Test inputs are the mapping author's synthetic samples, so mismatches are shown
//! in clear.

use std::collections::BTreeMap;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::decode;
use crate::decode::{Charset, DecodeOptions};
use crate::mapping::build::{event_fields, event_name};
use crate::mapping::model::TestCase;
use crate::mapping::target::Target;
use crate::mapping::{Files, MappingSet, Outcome};

/// The facility a test message is decoded with when the case names none.
pub const TEST_FACILITY: &str = "TEST_FACILITY";

/// The result of one test case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub mapping: String,
    pub file: String,
    pub line: u64,
    pub name: String,
    /// Empty = passed.
    pub failures: Vec<String>,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Run every test case of every mapping in `set`.
pub fn run_all(
    set: &MappingSet,
    files: &dyn Files,
    zone: &TimeZone,
    now: Timestamp,
) -> Vec<CaseResult> {
    let mut out = Vec::new();
    for m in &set.mappings {
        for (case, line) in &m.tests {
            let failures = run_case(set, &m.name, &m.file, case, files, zone, now);
            out.push(CaseResult {
                mapping: m.name.clone(),
                file: m.file.clone(),
                line: *line,
                name: case.name.clone(),
                failures,
            });
        }
    }
    out
}

fn run_case(
    set: &MappingSet,
    owner: &str,
    file: &str,
    case: &TestCase,
    files: &dyn Files,
    zone: &TimeZone,
    now: Timestamp,
) -> Vec<String> {
    let body = match (&case.input, &case.input_text) {
        (Some(p), _) => match files.read(file, p) {
            Ok(b) => b,
            Err(e) => return vec![format!("cannot read input {p}: {e}")],
        },
        (None, Some(t)) => t.replace("\r\n", "\r").replace('\n', "\r").into_bytes(),
        (None, None) => return vec!["the case has no input".into()],
    };
    let opts = DecodeOptions {
        zone: zone.clone(),
        default_charset: Charset::Utf8,
        facility: TEST_FACILITY.into(),
        ..DecodeOptions::at(now)
    };
    let got = decode(&body, &opts, set, &case.headers);
    let want = &case.expect;
    let mut fails = Vec::new();
    match (got, &want.error) {
        (Err(rej), Some(code)) => {
            if rej.reason.code() != code {
                fails.push(format!(
                    "expected error {code}, got error {}: {}",
                    rej.reason.code(),
                    rej.detail
                ));
            }
            // The case proves its mapping is the one chosen: an error another mapping (tried
            // before it) produced proves nothing about this one.
            let want_mapping = want.mapping.as_deref().unwrap_or(owner);
            if let Some(m) = rej.mapping.as_deref().filter(|m| *m != want_mapping) {
                fails.push(format!(
                    "expected error {code} from mapping {want_mapping}, but mapping {m} took the message (it is tried first): reorder the mappings, narrow {m}'s `match`, or name it with `expect: {{mapping: {m}}}`"
                ));
            }
        }
        (Err(rej), None) => fails.push(format!(
            "expected event {}, got error {}: {}",
            want.event.map(|e| e.code()).unwrap_or("?"),
            rej.reason.code(),
            rej.detail
        )),
        (Ok(d), Some(code)) => fails.push(format!(
            "expected error {code}, got {} from mapping {}",
            match &d.outcome {
                Outcome::Event(e) => event_name(e.kind).code(),
                Outcome::Ignored { .. } => "ignore",
            },
            d.mapping
        )),
        (Ok(d), None) => {
            let want_mapping = want.mapping.as_deref().unwrap_or(owner);
            if d.mapping != want_mapping {
                fails.push(format!(
                    "expected mapping {want_mapping} to be chosen, got {}",
                    d.mapping
                ));
            }
            match &d.outcome {
                Outcome::Ignored { .. } => {
                    if let Some(e) = want.event
                        && e.code() != "ignore"
                    {
                        fails.push(format!("expected event {}, got ignore", e.code()));
                    }
                    if !want.fields.is_empty() {
                        fails.push("fields expected, but the message was ignored".into());
                    }
                }
                Outcome::Event(e) => {
                    let got_name = event_name(e.kind);
                    if let Some(w) = want.event
                        && w != got_name
                    {
                        fails.push(format!(
                            "expected event {}, got {}",
                            w.code(),
                            got_name.code()
                        ));
                    }
                    let fields: BTreeMap<&str, String> = event_fields(e, zone)
                        .into_iter()
                        .map(|(t, v)| (t.name(), v))
                        .collect();
                    for (name, expected) in &want.fields {
                        let actual = fields.get(name.as_str());
                        if actual != expected.as_ref() {
                            fails.push(format!(
                                "{name}: expected {}, got {}",
                                show(expected.as_deref()),
                                show(actual.map(String::as_str))
                            ));
                        }
                    }
                    if let Some(ws) = &want.warnings {
                        let mut got: Vec<&str> = e.warnings.iter().map(|w| w.code()).collect();
                        let mut exp: Vec<&str> = ws.iter().map(String::as_str).collect();
                        got.sort_unstable();
                        exp.sort_unstable();
                        if got != exp {
                            fails.push(format!("warnings: expected {exp:?}, got {got:?}"));
                        }
                    }
                }
            }
        }
    }
    fails
}

fn show(v: Option<&str>) -> String {
    match v {
        Some(s) => format!("{s:?}"),
        None => "(absent)".into(),
    }
}

/// Every canonical field name, for docs and error hints.
pub fn field_names() -> Vec<&'static str> {
    Target::ALL.iter().map(|t| t.name()).collect()
}
