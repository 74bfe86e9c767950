//! The interface engineer's commands as they run them (issue 4 §3–§5, §7): `check` locates
//! mapping errors, `test` runs cases and fails on a mismatch, `map` dry-runs a message without
//! leaking personal data, `schema` matches the committed schema file.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::*;

fn bridge() -> Command {
    let mut c = Command::new(bridge_bin());
    c.env_remove("CEM_BRIDGE_PSEUDONYM_KEY")
        .env_remove("CEM_BRIDGE_CONFIG")
        .env("RUST_LOG", "error");
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

/// A config with one source `s` reading the mappings in `maps`, its store in `dir`.
fn config_for(dir: &Path, maps: &Path) -> String {
    format!(
        "tenant = \"t\"\n[pseudonym]\nkey_env = \"X_NO_KEY\"\nkey_id = \"k\"\nallow_demo_key = true\n[vault]\nkey_env = \"X_NO_VAULT_KEY\"\nallow_demo_key = true\n[store]\nurl = \"sqlite://{}/db\"\n[[source]]\nname = \"s\"\nurl = \"amqp://127.0.0.1\"\nqueue = \"q\"\nmappings = [\"{}\"]\n[cem]\nmode = \"shadow\"\nshadow_file = \"x.jsonl\"\n",
        dir.display(),
        maps.display()
    )
}

const GOOD: &str = "name: demo
format: json
event: admission
fields:
  message.id: /id
  event.time: /at
  patient.id: /p
tests:
  - name: reads the id
    input_text: '{\"id\":\"M1\",\"at\":\"2026-11-20T09:30:00+08:00\",\"p\":\"P1\"}'
    expect: { event: admission, fields: { patient.id: P1 } }
";

#[test]
fn test_runs_shipped_mapping_cases_and_passes() {
    let out = bridge().args(["test", "mappings"]).output().unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("0 failed"), "{t}");
    assert!(!t.contains("FAIL"), "{t}");
}

#[test]
fn test_fails_with_a_readable_difference() {
    let dir = scratch_dir("maptest");
    // Each mapping takes its own messages (`match` on /kind), so each case meets its own.
    let with_kind = |name: &str| {
        GOOD.replace(
            "name: demo",
            &format!("name: {name}\nmatch: [{{ path: /kind, equals: {name} }}]"),
        )
        .replace("{\"id\"", &format!("{{\"kind\":\"{name}\",\"id\""))
    };
    write(&dir, "ok.yaml", &with_kind("ok"));
    write(
        &dir,
        "bad.yaml",
        &with_kind("bad").replace("patient.id: P1", "patient.id: P2"),
    );
    let out = bridge()
        .args(["test", &dir.display().to_string()])
        .output()
        .unwrap();
    let t = text(&out);
    assert!(!out.status.success(), "a mismatch must fail: {t}");
    assert!(t.contains("FAIL"), "{t}");
    assert!(t.contains("bad.yaml:10"), "file:line of the case: {t}");
    assert!(t.contains("patient.id: expected \"P2\", got \"P1\""), "{t}");
    assert!(
        t.contains("2 test case(s) in 2 mapping(s): 1 passed, 1 failed"),
        "{t}"
    );
}

#[test]
fn check_lists_every_mapping_error_with_its_location() {
    let dir = scratch_dir("mapcheck");
    let maps = dir.join("maps");
    std::fs::create_dir_all(&maps).unwrap();
    write(
        &maps,
        "a.yaml",
        &GOOD.replace(
            "  patient.id: /p\n",
            "  patient.id: /p\n  patient.nmae: /n\n",
        ),
    );
    write(
        &maps,
        "b.yaml",
        &GOOD
            .replace("name: demo", "name: b")
            .replace("message.id: /id", "message.id: id"),
    );
    write(
        &maps,
        "c.yaml",
        &GOOD
            .replace("name: demo", "name: c")
            .replace("event: admission", "evnt: admission"),
    );
    let cfg = write(&dir, "bridge.toml", &config_for(&dir, &maps));
    let out = bridge().args(["check", "-c", &cfg]).output().unwrap();
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    let a = format!("{}:8:", maps.join("a.yaml").display());
    let b = format!("{}:5:", maps.join("b.yaml").display());
    let c = format!("{}:3:", maps.join("c.yaml").display());
    for (loc, what) in [(&a, "patient.nmae"), (&b, "JSON pointer"), (&c, "evnt")] {
        assert!(
            t.lines()
                .any(|l| l.contains(loc.as_str()) && l.contains(what)),
            "expected {loc} … {what} in:\n{t}"
        );
    }
    assert!(t.contains("hint:"), "{t}");
    assert!(t.contains("3 problem(s)"), "{t}");
}

#[test]
fn map_prints_event_payload_and_decision_with_personal_data_masked() {
    let out = bridge()
        .args(["map", "-c", "config/bridge.toml", "-m", "mappings"])
        .arg(fixture("hl7v2/adt_a03_discharge.hl7"))
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for want in [
        "event     discharge",
        "template: IP-SURG-01",
        "\"nameMasked\": \"王*英\"",
        "patient.mobile         139****5432",
    ] {
        assert!(t.contains(want), "missing {want:?} in:\n{t}");
    }
    for pii in [
        "王秀英",
        "13998765432",
        "31010419551212002X",
        "P00067890",
        "Z2026111500087",
    ] {
        assert!(!t.contains(pii), "map output leaks {pii}:\n{t}");
    }
    // --json for scripts, with the same decision.
    let out = bridge()
        .args([
            "map",
            "-c",
            "config/bridge.toml",
            "--json",
            "--header",
            "service-code=S0032",
        ])
        .arg(fixture("xml/discharge_utf8.xml"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("map --json prints JSON");
    assert_eq!(v["mapping"], "xml-hip-encounter");
    assert_eq!(v["event"], "discharge");
    assert_eq!(v["survey"]["decision"], "schedule");
    assert_eq!(v["survey"]["cem_payload"]["visit"]["deptCode"], "REF04");
    // A bad sample reports its dead-letter reason.
    let out = bridge()
        .args(["map", "-c", "config/bridge.toml", "--json"])
        .arg(fixture("bad/missing_patient_id.hl7"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"], "dead_letter");
    assert_eq!(v["reason"], "missing_patient_id");
    // Issue 18 §4: a code the disposition table does not know is named, not passed silently.
    let dir = scratch_dir("map-unmatched");
    let json = String::from_utf8(read_fixture("json/discharge.json"))
        .unwrap()
        .replace("\"HOME\"", "\"4\"");
    let sample = write(&dir, "discharge_4.json", &json);
    let out = bridge()
        .args(["map", "-c", "config/bridge.toml", &sample])
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("unknown code  visit.disposition 4 in table disposition"),
        "{t}"
    );
    // `check --sample DIR` lists the codes no table knows over a folder of samples.
    std::fs::write(
        dir.join("discharge.json"),
        read_fixture("json/discharge.json"),
    )
    .unwrap();
    let out = bridge()
        .args(["check", "-c", "config/bridge.toml", "--sample"])
        .arg(&dir)
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("2 sample(s) from"), "{t}");
    assert!(
        t.contains(
            "json-his-events table disposition (visit.disposition): 4 — in discharge_4.json"
        ),
        "{t}"
    );
}

/// Both committed schemas (`schemas/config.schema.json` too) are what the binary generates.
#[test]
fn committed_config_schema_matches_the_binary() {
    let out = bridge().args(["schema", "config"]).output().unwrap();
    assert!(out.status.success());
    let generated: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("schemas/config.schema.json").unwrap())
            .unwrap();
    assert!(
        generated == committed,
        "schemas/config.schema.json is stale: run `cargo run -- schema config > schemas/config.schema.json`"
    );
    let props = generated["properties"].as_object().unwrap();
    for k in ["vault", "anonymization", "cem", "surveys", "retention"] {
        assert!(props.contains_key(k), "config schema lacks {k}");
    }
}

#[test]
fn committed_schema_matches_the_binary() {
    let out = bridge().args(["schema", "mapping"]).output().unwrap();
    assert!(out.status.success());
    let generated: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("schemas/mapping.schema.json").unwrap())
            .unwrap();
    assert!(
        generated == committed,
        "schemas/mapping.schema.json is stale: run `cargo run -- schema mapping > schemas/mapping.schema.json`"
    );
    let props = generated["properties"].as_object().unwrap();
    for k in [
        "name", "format", "match", "let", "event", "fields", "tables", "tests",
    ] {
        assert!(props.contains_key(k), "schema lacks {k}");
    }
}

/// Issue 18 §3: a mapping tried first with no `match` takes every JSON message, so the site's
/// own mapping after it is never chosen. `check` prints the order and warns, naming both
/// files; `test` fails the later mapping's `expect: {error}` case because the error came from
/// the earlier mapping, not from it.
#[test]
fn check_warns_about_a_mapping_that_is_never_chosen_and_test_names_the_real_producer() {
    let dir = scratch_dir("mapshadow");
    let maps = dir.join("maps");
    std::fs::create_dir_all(&maps).unwrap();
    // Files are tried in path order: a-wide.yaml first.
    write(
        &maps,
        "a-wide.yaml",
        &GOOD.replace("name: demo", "name: wide"),
    );
    let site = GOOD
        .replace("{\"id\":\"M1\"", "{\"vendor\":\"acme\",\"id\":\"M1\"")
        .replace(
            "name: demo",
            "name: site\nmatch: [{ path: /vendor, equals: acme }]",
        )
        .replace(
            "tests:\n",
            "tests:\n  - name: no patient id is an error of this mapping\n    input_text: '{\"vendor\":\"acme\",\"id\":\"M2\",\"at\":\"2026-11-20T09:30:00+08:00\"}'\n    expect: { error: missing_patient_id }\n",
        );
    write(&maps, "b-site.yaml", &site);
    let cfg = write(&dir, "bridge.toml", &config_for(&dir, &maps));
    let out = bridge().args(["check", "-c", &cfg]).output().unwrap();
    let t = text(&out);
    assert!(out.status.success(), "a shadowed mapping is a warning: {t}");
    assert!(
        t.contains("s: mappings tried in this order: wide (json, ") && t.contains("site (json, "),
        "{t}"
    );
    assert!(
        t.lines().any(|l| l.starts_with("warning:")
            && l.contains("mapping site")
            && l.contains("b-site.yaml")
            && l.contains("never chosen")
            && l.contains("a-wide.yaml")
            && l.contains("no `match` conditions")),
        "{t}"
    );
    let out = bridge()
        .args(["test", &maps.display().to_string()])
        .output()
        .unwrap();
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains(
            "expected error missing_patient_id from mapping site, but mapping wide took the message"
        ),
        "{t}"
    );
    // `priority:` orders them explicitly: the site mapping is tried first, nothing is shadowed
    // and its case passes.
    write(
        &maps,
        "b-site.yaml",
        &site.replace("name: site\n", "name: site\npriority: 10\n"),
    );
    let out = bridge().args(["check", "-c", &cfg]).output().unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("s: mappings tried in this order: site (json, "),
        "{t}"
    );
    assert!(!t.contains("never chosen"), "{t}");
    let out = bridge()
        .args(["test", &maps.display().to_string()])
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
}
