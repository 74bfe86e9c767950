//! Unit tests of the mapping language; the shipped mappings' own cases run here too.

use std::collections::BTreeMap;
use std::path::{Path as FsPath, PathBuf};

use super::*;
use crate::decode::DecodeOptions;
use crate::translate::decode;

/// Files relative to the mapping file, from the real file system (tests only).
pub(crate) struct DiskFiles;

impl Files for DiskFiles {
    fn read(&self, relative_to: &str, path: &str) -> Result<Vec<u8>, String> {
        let base = FsPath::new(relative_to)
            .parent()
            .unwrap_or(FsPath::new("."));
        std::fs::read(base.join(path)).map_err(|e| e.to_string())
    }
}

/// In-memory files for tests.
struct MemFiles(BTreeMap<&'static str, &'static str>);

impl Files for MemFiles {
    fn read(&self, _: &str, path: &str) -> Result<Vec<u8>, String> {
        self.0
            .get(path)
            .map(|s| s.as_bytes().to_vec())
            .ok_or_else(|| "no such file".into())
    }
}

fn zone() -> TimeZone {
    crate::time::default_zone()
}

/// "Today" for the tests that do not care which day it is.
fn fixed_now() -> jiff::Timestamp {
    "2026-11-23T00:00:00Z".parse().unwrap()
}

fn shipped_dir() -> PathBuf {
    FsPath::new(env!("CARGO_MANIFEST_DIR")).join("../mappings")
}

fn shipped_files(dir: &FsPath, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            shipped_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
}

/// Every shipped mapping, compiled.
pub(crate) fn shipped() -> MappingSet {
    let mut files = Vec::new();
    shipped_files(&shipped_dir(), &mut files);
    assert!(!files.is_empty(), "no shipped mappings found");
    let mut ms = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let name = f.to_string_lossy().into_owned();
        match compile(&name, &text, &zone(), &DiskFiles) {
            Ok(m) => ms.push(m),
            Err(errs) => panic!(
                "{}",
                errs.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        }
    }
    MappingSet::new(ms)
}

/// Decode with the shipped mappings and expect an event (tests of other modules use this).
pub(crate) fn decode_event(body: &[u8], opts: &DecodeOptions) -> Result<PatientEvent, Rejection> {
    static SET: std::sync::OnceLock<MappingSet> = std::sync::OnceLock::new();
    let set = SET.get_or_init(shipped);
    decode(body, opts, set, &BTreeMap::new()).map(|d| match d.outcome {
        Outcome::Event(e) => *e,
        other => panic!("not an event: {other:?}"),
    })
}

/// Run every test case of `set`; at least `min` of them, all passing.
fn assert_cases_pass(set: &MappingSet, min: usize) {
    let results = crate::translate::testing::run_all(set, &DiskFiles, &zone(), fixed_now());
    assert!(results.len() >= min, "only {} cases", results.len());
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.passed())
        .map(|r| {
            format!(
                "{}:{} {}: {}",
                r.file,
                r.line,
                r.name,
                r.failures.join("; ")
            )
        })
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn shipped_mappings_pass_their_own_tests() {
    assert_cases_pass(&shipped(), 20);
}

/// The worked examples of docs/mapping.md (`docs/examples/*.yaml`) compile and pass their own
/// test cases, so the docs cannot drift from the language (issue 18 §7).
#[test]
fn docs_examples_pass_their_own_tests() {
    let dir = FsPath::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples");
    let mut files = Vec::new();
    shipped_files(&dir, &mut files);
    assert!(!files.is_empty(), "no examples in {}", dir.display());
    let mut ms = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let m = compile(&f.to_string_lossy(), &text, &zone(), &DiskFiles)
            .unwrap_or_else(|e| panic!("{}: {}", f.display(), e[0]));
        ms.push(m);
    }
    assert_cases_pass(&MappingSet::new(ms), 3);
}

/// Issue 18 §2: a list of rules picks the field's source per event; a rule for other events
/// is skipped, and `required` holds only for the events its rule is for. `join` joins every
/// value a selector yields.
#[test]
fn per_event_rules_and_join() {
    let m = one(
        "name: t\nformat: json\nevent: { path: /e, table: { R: registration, D: discharge } }
fields:
  message.id: /id
  patient.id: /p
  visit.number: /v
  event.time:
    - { path: /out, events: [discharge] }
    - /at
  visit.discharge: { path: /out, events: [discharge], required: true }
  visit.dept_name: { path: /tags/*, join: \"+\" }
  visit.dept_code:
    - { path: /dcode, events: [discharge] }
    - /rcode
",
    )
    .unwrap_or_else(|e| panic!("{}", e[0]));
    let msg = |e: &str, out: &str| {
        format!(
            r#"{{"e":"{e}","id":"M1","at":"2026-11-20T09:30:00+08:00","p":"P1","v":"V1",{out}"dcode":"D","rcode":"R","tags":["a","b"]}}"#
        )
    };
    let reg =
        event(apply_json(&m, &msg("R", r#""out":"2026-11-21T10:00:00+08:00","#), &[]).unwrap());
    assert_eq!(
        reg.event_time.to_string(),
        "2026-11-20T01:30:00Z",
        "not the discharge's rule"
    );
    let v = reg.visit.as_ref().unwrap();
    assert_eq!(v.discharge, None, "visit.discharge is for discharges only");
    assert_eq!(v.dept_code.as_deref(), Some("R"));
    assert_eq!(v.dept_name.as_deref(), Some("a+b"));
    let dis =
        event(apply_json(&m, &msg("D", r#""out":"2026-11-21T10:00:00+08:00","#), &[]).unwrap());
    assert_eq!(dis.event_time.to_string(), "2026-11-21T02:00:00Z");
    assert_eq!(dis.visit.as_ref().unwrap().dept_code.as_deref(), Some("D"));
    // Required for discharges: a discharge without it is a dead letter, a registration is not.
    let e = apply_json(&m, &msg("D", ""), &[]).unwrap_err();
    assert!(
        e.detail.contains("visit.discharge is required"),
        "{}",
        e.detail
    );
    assert!(apply_json(&m, &msg("R", ""), &[]).is_ok());
    // `events: []` is a located error.
    let e = first_error(&format!(
        "{BASE}  visit.dept_code: {{ path: /d, events: [] }}\n"
    ));
    assert!(e.message.contains("names no event"), "{e}");
}

fn one(text: &str) -> Result<Mapping, Vec<MappingError>> {
    let files = MemFiles(
        [(
            "depts.csv",
            "code,name,extra\nOPH01,眼科门诊,x\n\"CAT,02\",\"白内障\"\"病区\",y\n",
        )]
        .into(),
    );
    compile("m.yaml", text, &zone(), &files)
}

fn first_error(text: &str) -> MappingError {
    one(text).unwrap_err().remove(0)
}

const BASE: &str = "name: t\nformat: json\nevent: registration\nfields:\n  message.id: /id\n  event.time: /at\n  patient.id: /p\n";

#[test]
fn unknown_keys_are_located_with_a_hint() {
    let e = first_error(&format!("{BASE}  visit.number: {{ paht: /v }}\n"));
    assert_eq!((e.file.as_str(), e.line), ("m.yaml", 8), "{e}");
    assert!(e.message.contains("paht"), "{e}");
    assert!(e.hint.is_some());
    let e = first_error("name: t\nformat: json\nevnt: registration\n");
    assert_eq!(e.line, 3, "{e}");
}

#[test]
fn unknown_fields_tables_and_events_are_errors() {
    let e = first_error(&format!("{BASE}  patient.nmae: /n\n"));
    assert_eq!(e.line, 8);
    assert!(e.message.contains("unknown field `patient.nmae`"), "{e}");
    let e = first_error(&format!("{BASE}  patient.mobil: /n\n"));
    assert!(e.message.contains("patient.mobil"), "{e}");
    let e = first_error(&format!(
        "{BASE}  visit.number: {{ path: /v, transforms: [{{table: nope}}] }}\n"
    ));
    assert!(e.message.contains("table `nope`"), "{e}");
    let e = first_error(&BASE.replace("event: registration", "event: regisration"));
    assert!(e.message.contains("regisration"), "{e}");
    assert_eq!(e.line, 3, "{e}");
}

#[test]
fn bad_paths_are_located_and_explained() {
    let e = first_error(&BASE.replace("message.id: /id", "message.id: id"));
    assert_eq!(e.line, 5);
    assert!(e.message.contains("JSON pointer"), "{e}");
    let text = "name: t\nformat: hl7v2\nevent: registration\nfields:\n  message.id: MSH-10\n  event.time: MSH-7\n  patient.id: PID-3[5=PI.1\n";
    let e = first_error(text);
    assert_eq!(e.line, 7, "{e}");
    assert!(e.message.contains("closed"), "{e}");
}

#[test]
fn missing_required_targets_are_errors() {
    let e = first_error(
        "name: t\nformat: json\nevent: registration\nfields:\n  message.id: /id\n  event.time: /at\n",
    );
    assert!(e.message.contains("patient.id"), "{e}");
}

fn apply_json(m: &Mapping, json: &str, headers: &[(&str, &str)]) -> Result<Outcome, Rejection> {
    let set = MappingSet::new(vec![]);
    let _ = set;
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let headers: BTreeMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let z = zone();
    let ctx = ApplyContext {
        zone: &z,
        now: "2026-11-23T00:00:00Z".parse().unwrap(),
        headers: &headers,
        facility: "FAC",
    };
    m.apply(&Doc::Json(&v), &ctx)
}

fn event(o: Outcome) -> PatientEvent {
    match o {
        Outcome::Event(e) => *e,
        other => panic!("expected an event, got {other:?}"),
    }
}

#[test]
fn transforms_tables_csv_regex_datetime_default_concat() {
    let m = one(&format!(
        "{BASE}  visit.number: {{ path: /v, transforms: [trim, upper] }}
  visit.dept_name: {{ path: /d, transforms: [{{table: depts}}] }}
  visit.dept_code: {{ path: /d, transforms: [{{map: {{\"CAT,02\": CAT02}}}}] }}
  visit.doctor_code: {{ path: /doc, transforms: [{{regex: \"^DR-(\\\\d+)$\"}}] }}
  visit.start: {{ path: /start, transforms: [{{datetime: {{format: \"%Y/%m/%d %H:%M\"}}}}] }}
  patient.birth_date: {{ path: /born, transforms: [{{date: {{format: \"%d.%m.%Y\"}}}}] }}
  patient.mobile: {{ path: /tel, transforms: [{{strip_prefix: \"tel:\"}}] }}
  visit.class: {{ path: /cls, transforms: [{{table: cls}}] }}
  patient.sex: {{ path: /sex, transforms: [{{only: [F, M]}}], default: U }}
  message.key: {{ concat: [{{path: /src}}, \"|\", {{path: /id}}] }}
  visit.facility: $header.facility-code
tables:
  depts: {{ csv: depts.csv, key_column: code, value_column: name }}
  cls: {{ values: {{ \"1\": O, \"3\": I }}, unmatched: drop }}
"
    ))
    .unwrap_or_else(|e| panic!("{}", e[0]));
    let e = event(
        apply_json(
            &m,
            r#"{"id":"M1","at":"2026-11-20T09:30:00+08:00","p":"P1","v":" v1 ","d":"CAT,02","doc":"DR-42",
                "start":"2026/11/20 09:30","born":"07.03.1990","tel":"tel:13812345678","cls":3,"sex":"X","src":"HIS"}"#,
            &[("facility-code", "HX_SH")],
        )
        .unwrap(),
    );
    let v = e.visit.as_ref().unwrap();
    assert_eq!(v.number.expose(), "V1");
    assert_eq!(
        v.dept_name.as_deref(),
        Some("白内障\"病区"),
        "CSV with quotes and commas"
    );
    assert_eq!(v.dept_code.as_deref(), Some("CAT02"));
    assert_eq!(v.doctor_code.as_deref(), Some("42"));
    assert_eq!(v.start.unwrap().to_string(), "2026-11-20T01:30:00Z");
    assert_eq!(v.class, crate::event::PatientClass::Inpatient);
    assert_eq!(v.facility, "HX_SH");
    assert_eq!(e.patient.birth_date.unwrap().to_string(), "1990-03-07");
    assert_eq!(e.patient.mobile.as_ref().unwrap().expose(), "13812345678");
    assert_eq!(e.patient.sex, crate::event::Sex::Unknown, "only + default");
    assert_eq!(e.patient.id.authority, "FAC", "R-GEN-3: connector facility");
    assert_eq!(e.message_key, "HIS|M1");
    // Unmatched `drop` and a non-matching regex give no value.
    let e = event(
        apply_json(
            &m,
            r#"{"id":"M1","at":"2026-11-20","p":"P1","v":"v","cls":9,"doc":"x"}"#,
            &[],
        )
        .unwrap(),
    );
    let v = e.visit.unwrap();
    assert_eq!(v.class, crate::event::PatientClass::Unknown);
    assert_eq!(v.doctor_code, None);
    assert_eq!(v.facility, "FAC");
}

#[test]
fn required_fields_and_missing_ids_are_dead_letters_naming_the_path() {
    let m = one(&format!(
        "{BASE}  visit.number: /visit/no\n  visit.dept_code: {{ path: /dept, required: true }}\n"
    ))
    .unwrap();
    let e = apply_json(
        &m,
        r#"{"id":"M1","at":"2026-11-20","p":"P1","visit":{"no":"V"}}"#,
        &[],
    )
    .unwrap_err();
    assert_eq!(e.reason, DeadLetterReason::MissingField);
    assert!(
        e.detail.contains("visit.dept_code")
            && e.detail.contains("/dept")
            && e.detail.contains("M1"),
        "{}",
        e.detail
    );
    let e = apply_json(
        &m,
        r#"{"id":"M1","at":"2026-11-20","dept":"D","visit":{"no":"V"}}"#,
        &[],
    )
    .unwrap_err();
    assert_eq!(e.reason, DeadLetterReason::MissingPatientId);
    let e = apply_json(
        &m,
        r#"{"id":"M1","at":"2026-11-20","p":"P1","dept":"D"}"#,
        &[],
    )
    .unwrap_err();
    assert_eq!(e.reason, DeadLetterReason::MissingVisitNumber);
    assert!(e.detail.contains("/visit/no"), "{}", e.detail);
    let e = apply_json(
        &m,
        r#"{"id":"M1","at":"soon","p":"P1","dept":"D","visit":{"no":"V"}}"#,
        &[],
    )
    .unwrap_err();
    assert_eq!(e.reason, DeadLetterReason::MissingField);
    assert!(e.detail.contains("event.time"), "{}", e.detail);
}

#[test]
fn event_lookup_ignore_and_match_conditions() {
    let text = "name: t\nformat: json\nmatch:\n  - { path: $header.service-code, in: [S1, S2] }\n  - { path: /kind, not_in: [X] }\nevent:\n  path: /type\n  table: { REG: registration, NOISE: ignore }\nfields:\n  message.id: /id\n  event.time: /at\n  patient.id: /p\n  visit.number: /v\n";
    let m = one(text).unwrap();
    let set = MappingSet::new(vec![m]);
    let run = |json: &str, svc: &str| {
        let headers: BTreeMap<String, String> =
            [("service-code".to_string(), svc.to_string())].into();
        let opts = DecodeOptions {
            facility: "F".into(),
            ..DecodeOptions::at(fixed_now())
        };
        decode(json.as_bytes(), &opts, &set, &headers)
    };
    let ok = r#"{"id":"M1","at":"2026-11-20","p":"P1","v":"V1","type":"REG"}"#;
    let d = run(ok, "S1").unwrap();
    assert_eq!(d.mapping, "t");
    assert!(
        matches!(d.outcome, Outcome::Event(ref e) if e.kind == crate::event::EventKind::Registered && e.trigger == "REG")
    );
    assert_eq!(
        run(ok, "S9").unwrap_err().reason,
        DeadLetterReason::NoMapping
    );
    let x = ok.replace("\"type\"", "\"kind\":\"X\",\"type\"");
    assert_eq!(
        run(&x, "S1").unwrap_err().reason,
        DeadLetterReason::NoMapping
    );
    let noise = ok.replace("REG", "NOISE");
    assert_eq!(
        run(&noise, "S2").unwrap().outcome,
        Outcome::Ignored {
            message_id: Some("M1".into()),
            code: Some("NOISE".into())
        }
    );
    let other = ok.replace("REG", "WHAT");
    let e = run(&other, "S2").unwrap_err();
    assert_eq!(e.reason, DeadLetterReason::UnknownEvent);
    assert!(
        e.detail.contains("WHAT") && e.detail.contains("REG"),
        "{}",
        e.detail
    );
    let xml = "<a/>";
    assert_eq!(
        run(xml, "S1").unwrap_err().reason,
        DeadLetterReason::NoMapping
    );
}

#[test]
fn test_case_mismatches_are_readable() {
    let text = format!(
        "{BASE}tests:\n  - name: wrong\n    input_text: '{{\"id\":\"M1\",\"at\":\"2026-11-20\",\"p\":\"P1\"}}'\n    expect: {{ event: discharge, fields: {{ patient.id: P2, visit.number: V1 }} }}\n  - name: right\n    input_text: '{{\"id\":\"M1\",\"at\":\"2026-11-20\",\"p\":\"P1\"}}'\n    expect: {{ event: registration, fields: {{ patient.id: P1, visit.number: ~ }} }}\n"
    );
    // A registration without a visit number is a dead letter, so use admission semantics.
    let text = text
        .replace("event: registration\n", "event: admission\n")
        .replace("event: registration,", "event: admission,");
    let m = one(&text).unwrap_or_else(|e| panic!("{}", e[0]));
    let set = MappingSet::new(vec![m]);
    let r =
        crate::translate::testing::run_all(&set, &MemFiles(BTreeMap::new()), &zone(), fixed_now());
    assert_eq!(r.len(), 2);
    assert!(!r[0].passed());
    let all = r[0].failures.join("\n");
    assert!(
        all.contains("expected event discharge, got admission"),
        "{all}"
    );
    assert!(
        all.contains("patient.id: expected \"P2\", got \"P1\""),
        "{all}"
    );
    assert!(
        all.contains("visit.number: expected \"V1\", got (absent)"),
        "{all}"
    );
    assert!(r[1].passed(), "{:?}", r[1].failures);
}

#[test]
fn let_must_stop_at_a_repetition_or_element() {
    let hl7 = "name: t\nformat: hl7v2\nlet:\n  pid: PID-3.1\nevent: admission\nfields:\n  message.id: MSH-10\n  event.time: MSH-7\n  patient.id: $pid.1\n";
    let e = first_error(hl7);
    assert_eq!(e.line, 4, "{e}");
    assert!(e.message.contains("drop the component"), "{e}");
    let xml = "name: t\nformat: xml\nlet:\n  e: a/@b\nevent: admission\nfields:\n  message.id: id/@x\n  event.time: t/@v\n  patient.id: $e/c\n";
    assert!(
        first_error(xml).message.contains("drop the final"),
        "{}",
        first_error(xml)
    );
}

#[test]
fn xml_let_with_descendant_step_and_event_fallback() {
    let text = "name: t\nformat: xml\nlet:\n  enc: enc\nevent:\n  path: [$header.service-code, $root]\n  table: { S0032: discharge, R: admission }\nfields:\n  message.id: $enc//deep/@id\n  event.time: $enc/t/@v\n  patient.id: $enc/p/@id\n";
    let m = one(text).unwrap_or_else(|e| panic!("{}", e[0]));
    let set = MappingSet::new(vec![m]);
    let doc = "<R><enc><t v=\"20261120093000\"/><p id=\"P1\"/><x><deep id=\"M1\"/></x></enc></R>";
    let headers: BTreeMap<String, String> =
        [("service-code".to_string(), "S9999".to_string())].into();
    let d = decode(
        doc.as_bytes(),
        &DecodeOptions::at(fixed_now()),
        &set,
        &headers,
    )
    .unwrap();
    match d.outcome {
        Outcome::Event(e) => {
            assert_eq!(e.message_id, "M1", "`$enc//deep` searches descendants");
            assert_eq!(
                e.kind,
                crate::event::EventKind::Admitted,
                "an unknown header code falls back to the root"
            );
            assert_eq!(e.trigger, "R");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn sex_and_class_take_the_first_known_code_case_insensitively() {
    let m = one(&format!(
        "{BASE}  patient.sex: [/a, /b]\n  visit.number: /v\n  visit.class: [/c, /d]\n"
    ))
    .unwrap();
    let e = event(
        apply_json(
            &m,
            r#"{"id":"M","at":"2026-11-20","p":"P","v":"V","a":"x","b":"f","c":"?","d":"i"}"#,
            &[],
        )
        .unwrap(),
    );
    assert_eq!(e.patient.sex, crate::event::Sex::Female);
    assert_eq!(
        e.visit.unwrap().class,
        crate::event::PatientClass::Inpatient
    );
}

#[test]
fn r_evt_2_json_with_invalid_utf8_is_an_encoding_error() {
    let e = crate::decode::json::parse_json(b"{\"a\":\"\xff\"}").unwrap_err();
    assert_eq!(e.reason, DeadLetterReason::InvalidEncoding);
    assert!(e.detail.contains("byte offset 6"), "{}", e.detail);
}

/// EX-15: HIS XML (互联互通) and JSON events decide like HL7 v2 — templates and due times
/// (the cancellation half of EX-15 is the store's, covered end to end in tests/).
#[test]
fn ex_15_xml_and_json_events_get_the_same_templates_and_times() {
    use crate::anonymize::Pseudonymizer;
    use crate::policy::SurveyPolicy;
    use crate::survey::{SurveyContext, SurveyDecision, decide};
    let set = shipped();
    let z = zone();
    let pseudo = Pseudonymizer::new(&[7u8; 32], "k").unwrap();
    let now: jiff::Timestamp = "2026-11-20T02:00:00Z".parse().unwrap(); // 10:00 local
    let fields = crate::anonymize::CemFieldPolicy::default();
    let ctx = SurveyContext {
        tenant: "hxeye",
        zone: &z,
        pseudo: &pseudo,
        now,
        fields: &fields,
        lists: &Default::default(),
    };
    let opts = DecodeOptions {
        facility: "HXEYE_SH01".into(),
        ..DecodeOptions::at(now)
    };
    let dir = shipped_dir().join("../tests/fixtures/samples");
    let cases = [
        (
            "json/registration.json",
            None,
            "OP-SAT-01",
            "2026-11-20T11:30:00+08:00",
        ),
        (
            "xml/registration_utf8.xml",
            Some("S0023"),
            "OP-SAT-01",
            "2026-11-20T11:30:00+08:00",
        ),
        (
            "json/discharge.json",
            None,
            "IP-SURG-01",
            "2026-11-21T10:00:00+08:00",
        ),
        (
            "xml/discharge_utf8.xml",
            Some("S0032"),
            "IP-SURG-01",
            "2026-11-21T10:00:00+08:00",
        ),
    ];
    for (file, svc, template, due) in cases {
        let body = std::fs::read(dir.join(file)).unwrap();
        let headers: BTreeMap<String, String> = svc
            .map(|s| [("service-code".to_string(), s.to_string())].into())
            .unwrap_or_default();
        let e = match decode(&body, &opts, &set, &headers).unwrap().outcome {
            Outcome::Event(e) => e,
            other => panic!("{file}: {other:?}"),
        };
        match decide(&e, &SurveyPolicy::default(), &ctx) {
            SurveyDecision::Schedule(j) => {
                assert_eq!(j.template, template, "{file}");
                assert_eq!(crate::time::rfc3339_in(j.due_at, &z), due, "{file}");
            }
            other => panic!("{file}: expected a survey, got {other:?}"),
        }
    }
}

/// Issue 18 §5: the JSON Schema an editor uses knows the canonical fields: every shipped
/// mapping and docs example validates, and `patient.phone` (in `fields` or `expect.fields`)
/// fails validation, naming the key.
#[test]
fn the_schema_accepts_the_shipped_mappings_and_refuses_unknown_fields() {
    let schema: serde_json::Value = serde_json::from_str(&super::schema()).unwrap();
    let mut compiler = boon::Compiler::new();
    compiler
        .add_resource("mapping.schema.json", schema)
        .unwrap();
    let mut schemas = boon::Schemas::new();
    let idx = compiler
        .compile("mapping.schema.json", &mut schemas)
        .unwrap();
    let as_json = |text: &str| -> serde_json::Value { serde_saphyr::from_str(text).unwrap() };
    let mut files = Vec::new();
    shipped_files(&shipped_dir(), &mut files);
    shipped_files(
        &FsPath::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples"),
        &mut files,
    );
    for f in &files {
        let v = as_json(&std::fs::read_to_string(f).unwrap());
        if let Err(e) = schemas.validate(&v, idx) {
            panic!("{} does not validate: {e}", f.display());
        }
    }
    for bad in [
        format!("{BASE}  patient.phone: /tel\n"),
        format!(
            "{BASE}tests:\n  - name: x\n    input_text: '{{}}'\n    expect: {{ event: registration, fields: {{ patient.phone: \"1\" }} }}\n"
        ),
    ] {
        let v = as_json(&bad);
        let err = schemas
            .validate(&v, idx)
            .expect_err("patient.phone is not a canonical field");
        let shown = format!("{err:#}");
        assert!(shown.contains("patient.phone"), "{shown}");
    }
}

/// Issue 18 §5: a misspelt transform or key says what was meant; an indentation slip says so.
#[test]
fn structure_errors_suggest_the_near_name_and_indentation() {
    let e = first_error(&format!(
        "{BASE}  visit.number: {{ path: /v, transforms: [{{ strip_prefx: \"x\" }}] }}\n"
    ));
    assert!(
        e.hint
            .as_deref()
            .unwrap_or("")
            .contains("did you mean `strip_prefix`"),
        "{e}"
    );
    let e = first_error(&format!("{BASE}  visit.number: {{ pth: /v }}\n"));
    assert!(
        e.hint
            .as_deref()
            .unwrap_or("")
            .contains("did you mean `path`"),
        "{e}"
    );
    let e = first_error(
        "name: t\nformat: json\nevent: registration\nfields:\n  message.id: /id\n   event.time: /at\n",
    );
    assert_eq!(e.line, 6, "{e}");
    assert!(
        e.hint.as_deref().unwrap_or("").contains("indentation"),
        "{e}"
    );
}

/// Issue 18 §7: every message the mapping compiler builds has an entry in docs/mapping.md §10.
/// The longest literal part of each message (between `{…}` placeholders) must appear there,
/// so a new or reworded error fails here until the catalogue says what to do about it.
#[test]
fn every_compiler_message_is_in_the_error_catalogue() {
    let root = FsPath::new(env!("CARGO_MANIFEST_DIR"));
    let docs = std::fs::read_to_string(root.join("../docs/mapping.md")).unwrap();
    let catalogue = docs
        .split("## 10. Common errors")
        .nth(1)
        .and_then(|s| s.split("## 11.").next())
        .expect("docs/mapping.md has §10");
    let call = regex_lite::Regex::new(
        r#"(?s)(?:self\.err\(|Err\(\s*format!\(|err\(\s*&?[a-z_.]+,\s*(?:format!\()?)\s*"((?:[^"\\]|\\.)*)""#,
    )
    .unwrap();
    let placeholder = regex_lite::Regex::new(r"\{[^}]*\}").unwrap();
    let mut checked = 0;
    let mut missing = Vec::new();
    for file in [
        "mod.rs",
        "path.rs",
        "json_path.rs",
        "selector.rs",
        "model.rs",
    ] {
        let src = std::fs::read_to_string(root.join("src/mapping").join(file)).unwrap();
        let code = src.split("#[cfg(test)]").next().unwrap_or("");
        for c in call.captures_iter(code) {
            let literal = c[1].replace("\\\"", "\"");
            let Some(part) = placeholder
                .split(&literal)
                .map(str::trim)
                .filter(|p| p.len() >= 12)
                .max_by_key(|p| p.len())
            else {
                continue;
            };
            checked += 1;
            if !catalogue.contains(part) {
                missing.push(format!("{file}: {part}"));
            }
        }
    }
    assert!(
        checked >= 30,
        "only {checked} messages found: the pattern broke"
    );
    assert!(
        missing.is_empty(),
        "messages without an entry in docs/mapping.md §10:\n{}",
        missing.join("\n")
    );
}
