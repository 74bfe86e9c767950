//! The interface engineer's commands: `cem-bridge test` (mapping test cases) and
//! `cem-bridge map` (dry-run one message: event, anonymised CEM payload, survey decision).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use cem_pipeline::anonymize::{Pseudonymizer, mask_id_card, mask_mobile, mask_name};
use cem_pipeline::decode::{Charset, DecodeOptions};
use cem_pipeline::mapping::build::{event_fields, event_name};
use cem_pipeline::mapping::target::Target;
use cem_pipeline::mapping::{MappingSet, Outcome};
use cem_pipeline::policy::SurveyPolicy;
use cem_pipeline::survey::{SurveyContext, SurveyDecision, decide};
use cem_pipeline::translate::decode;
use cem_pipeline::translate::testing::{CaseResult, run_all};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::{Value, json};

use crate::config::mappings::{DiskFiles, load};

/// Run every test case of the mappings under `paths`; print a line per case and a readable
/// list of differences for failures. `Ok(true)` when all pass.
pub fn test_command(paths: &[String], zone: &TimeZone, verbose: bool) -> anyhow::Result<bool> {
    let set = match load(paths, zone) {
        Ok(s) => s,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            anyhow::bail!(
                "{} problem(s) in the mapping files; no test was run",
                errors.len()
            );
        }
    };
    let results = run_all(&set, &DiskFiles, zone, Timestamp::now());
    print!("{}", test_report(&results, verbose));
    Ok(results.iter().all(CaseResult::passed))
}

/// The text `cem-bridge test` prints.
pub fn test_report(results: &[CaseResult], verbose: bool) -> String {
    let mut out = String::new();
    for r in results {
        if r.passed() {
            if verbose {
                let _ = writeln!(out, "ok    {}:{}  {}", r.file, r.line, r.name);
            }
        } else {
            let _ = writeln!(out, "FAIL  {}:{}  {}", r.file, r.line, r.name);
            for f in &r.failures {
                let _ = writeln!(out, "        {f}");
            }
        }
    }
    let failed = results.iter().filter(|r| !r.passed()).count();
    let mappings: std::collections::BTreeSet<&str> =
        results.iter().map(|r| r.mapping.as_str()).collect();
    let _ = writeln!(
        out,
        "{} test case(s) in {} mapping(s): {} passed, {} failed",
        results.len(),
        mappings.len(),
        results.len() - failed,
        failed
    );
    out
}

/// What `cem-bridge map` needs besides the message.
pub struct MapRequest<'a> {
    pub mappings: &'a MappingSet,
    pub file: &'a Path,
    pub headers: BTreeMap<String, String>,
    /// The source's `max_message_bytes` (a bigger body is `oversized`, as ingest says).
    pub max_bytes: usize,
    pub zone: TimeZone,
    pub facility: String,
    pub charset: Charset,
    pub policy: SurveyPolicy,
    /// The CEM dispatch's field treatments (`[anonymization.cem]`).
    pub fields: cem_pipeline::anonymize::CemFieldPolicy,
    /// The opt-out and staff lists of the config.
    pub lists: cem_pipeline::lists::ExclusionLists,
    pub tenant: String,
    pub pseudo: Pseudonymizer,
    pub now: Timestamp,
    /// Print personal values in clear (for the engineer's own test data only).
    pub reveal: bool,
}

impl<'a> MapRequest<'a> {
    /// A dry run as the bridge would map a message of `src` now: its limits, facility and
    /// charset, and the config's policy, field treatments and tenant.
    #[allow(clippy::too_many_arguments)]
    pub fn for_source(
        cfg: &crate::config::Config,
        src: &crate::config::source::SourceConfig,
        mappings: &'a MappingSet,
        file: &'a Path,
        headers: BTreeMap<String, String>,
        lists: cem_pipeline::lists::ExclusionLists,
        pseudo: Pseudonymizer,
        now: Timestamp,
    ) -> Self {
        Self {
            mappings,
            file,
            headers,
            max_bytes: src.max_message_bytes,
            zone: cfg.zone(),
            facility: src.facility().to_string(),
            charset: Charset::from_label(&src.charset).unwrap_or_default(),
            policy: cfg.surveys.clone(),
            fields: cfg.anonymization.cem.clone(),
            lists,
            tenant: cfg.tenant.clone(),
            pseudo,
            now,
            reveal: false,
        }
    }
}

/// Dry-run one message; the report as JSON (the text form is rendered from it).
pub fn map_report(req: &MapRequest<'_>) -> anyhow::Result<Value> {
    let body =
        std::fs::read(req.file).with_context(|| format!("reading {}", req.file.display()))?;
    map_body(req, &req.file.display().to_string(), &body)
}

/// [`map_report`] of a body already in memory (`dlq replay --dry-run`), named `label`.
pub fn map_body(req: &MapRequest<'_>, label: &str, body: &[u8]) -> anyhow::Result<Value> {
    let opts = DecodeOptions {
        max_bytes: req.max_bytes,
        zone: req.zone.clone(),
        now: req.now,
        default_charset: req.charset,
        facility: req.facility.clone(),
    };
    let decoded = match decode(body, &opts, req.mappings, &req.headers) {
        Ok(d) => d,
        Err(rej) => {
            return Ok(json!({
                "file": label,
                "result": "dead_letter",
                "reason": rej.reason.code(),
                "detail": rej.detail,
            }));
        }
    };
    let event = match decoded.outcome {
        Outcome::Ignored { message_id, code } => {
            return Ok(json!({
                "file": label,
                "format": decoded.format.code(),
                "mapping": decoded.mapping,
                "result": "ignored",
                "message_id": message_id,
                "code": code,
            }));
        }
        Outcome::Event(e) => e,
    };
    let fields: serde_json::Map<String, Value> = event_fields(&event, &req.zone)
        .into_iter()
        .map(|(t, v)| {
            let shown = if req.reveal || !t.is_personal() {
                v
            } else {
                mask(t, &v)
            };
            (t.name().to_string(), Value::String(shown))
        })
        .collect();
    let ctx = SurveyContext {
        tenant: &req.tenant,
        zone: &req.zone,
        pseudo: &req.pseudo,
        now: req.now,
        fields: &req.fields,
        lists: &req.lists,
    };
    let decision = match decide(&event, &req.policy, &ctx) {
        SurveyDecision::Schedule(job) => json!({
            "decision": "schedule",
            "template": job.template,
            "due_at": cem_pipeline::time::rfc3339_in(job.due_at, &req.zone),
            "job_id": job.job_id,
            "idempotency_key": job.idempotency_key(),
            "cem_payload": serde_json::to_value(&job.payload)?,
            "note": "do-not-disturb (R-DND-1) is checked against the store at send time",
        }),
        SurveyDecision::Suppress { reason, rule } => {
            let minor = || cem_pipeline::survey::is_minor(&event, &req.policy, &req.zone);
            if cem_pipeline::patient_record::needs_record(&event, minor) {
                json!({ "decision": "suppress", "reason": reason, "rule": rule,
                        "note": "the running bridge first fills a missing mobile, birth date or guardian from the patient's record (S0001/S0002, A28/A31; R-PAT-3); a dry run has no store" })
            } else {
                json!({ "decision": "suppress", "reason": reason, "rule": rule })
            }
        }
        SurveyDecision::CancelledBefore { reason, rule } => {
            json!({ "decision": "cancelled", "reason": reason, "rule": rule })
        }
        SurveyDecision::Record { reason } => json!({ "decision": "record", "reason": reason }),
        SurveyDecision::Update { patient_key, .. } => json!({
            "decision": "update_patient",
            "patient_key": patient_key,
            "note": "patient-level: its facts go to the patient's sealed record and the contact of pending surveys; no survey (R-PAT-1)",
        }),
        SurveyDecision::Merge {
            survivor_key,
            merged_key,
        } => json!({ "decision": "merge", "survivor_key": survivor_key, "merged_key": merged_key }),
        SurveyDecision::Reanchor { visit_key, due_at } => json!({
            "decision": "reanchor",
            "visit_key": visit_key,
            "due_at": cem_pipeline::time::rfc3339_in(due_at, &req.zone),
        }),
        SurveyDecision::Cancel {
            visit_key,
            reason,
            rule,
        } => {
            json!({ "decision": "cancel", "visit_key": visit_key, "reason": reason, "rule": rule })
        }
    };
    Ok(json!({
        "file": label,
        "format": decoded.format.code(),
        "mapping": decoded.mapping,
        "result": "event",
        "event": event_name(event.kind).code(),
        "patient_key": req.pseudo.patient_key(&event.patient.id),
        "fields": fields,
        "warnings": event.warnings.iter().map(|w| w.code()).collect::<Vec<_>>(),
        // Issue 18 §4: codes a table did not know, kept as the value.
        "unmatched_codes": event.unmatched_codes.iter().map(|u| json!({
            "table": u.table,
            "field": u.field.name(),
            "code": u.code_shown().unwrap_or("(value withheld)"),
        })).collect::<Vec<_>>(),
        "survey": decision,
    }))
}

/// R-ANO-3 masks for personal fields, so `map` output can be pasted into a ticket.
fn mask(t: Target, v: &str) -> String {
    match t {
        Target::PatientName | Target::PatientFamilyName | Target::PatientGivenName => mask_name(v),
        Target::PatientMobile | Target::PatientGuardianMobile => mask_mobile(v),
        Target::PatientIdCard => mask_id_card(v),
        _ => {
            let chars: Vec<char> = v.chars().collect();
            if chars.len() <= 4 {
                "*".repeat(chars.len())
            } else {
                let head: String = chars[..2].iter().collect();
                let tail: String = chars[chars.len() - 2..].iter().collect();
                format!("{head}{}{tail}", "*".repeat(chars.len() - 4))
            }
        }
    }
}

/// The human-readable form of a [`map_report`].
pub fn render_map_report(r: &Value) -> String {
    let mut out = String::new();
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let _ = writeln!(out, "file      {}", s(&r["file"]));
    match r["result"].as_str() {
        Some("dead_letter") => {
            let _ = writeln!(out, "result    DEAD LETTER {}", s(&r["reason"]));
            let _ = writeln!(out, "detail    {}", s(&r["detail"]));
        }
        Some("ignored") => {
            let _ = writeln!(
                out,
                "format    {} (mapping {})",
                s(&r["format"]),
                s(&r["mapping"])
            );
            let _ = writeln!(
                out,
                "result    ignored by the mapping (code {})",
                s(&r["code"])
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "format    {} (mapping {})",
                s(&r["format"]),
                s(&r["mapping"])
            );
            let _ = writeln!(out, "event     {}", s(&r["event"]));
            let _ = writeln!(out, "patient   {}", s(&r["patient_key"]));
            let _ = writeln!(out, "fields (personal values masked; --reveal shows them):");
            if let Some(map) = r["fields"].as_object() {
                let width = map.keys().map(String::len).max().unwrap_or(0);
                for (k, v) in map {
                    let _ = writeln!(out, "  {k:width$}  {}", s(v));
                }
            }
            let warnings = r["warnings"].as_array().map(Vec::len).unwrap_or(0);
            let _ = writeln!(
                out,
                "warnings  {}",
                if warnings == 0 {
                    "none".to_string()
                } else {
                    s(&r["warnings"])
                }
            );
            for u in r["unmatched_codes"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "unknown code  {} {} in table {}: kept as the value (unmatched: keep); add it to the table",
                    s(&u["field"]),
                    s(&u["code"]),
                    s(&u["table"])
                );
            }
            let sv = &r["survey"];
            let _ = writeln!(out, "survey    {}", s(&sv["decision"]));
            if let Some(obj) = sv.as_object() {
                for (k, v) in obj {
                    if k != "decision" && k != "cem_payload" {
                        let _ = writeln!(out, "  {k}: {}", s(v));
                    }
                }
                if let Some(p) = obj.get("cem_payload") {
                    let _ = writeln!(out, "CEM payload (exactly what would be sent):");
                    let _ = writeln!(
                        out,
                        "{}",
                        serde_json::to_string_pretty(p).unwrap_or_default()
                    );
                }
            }
        }
    }
    out
}

/// `check --sample DIR` (issue 18 §4): every file of `dir` through a source's mappings, and the
/// codes their tables did not know (kept as the value), each with the samples it came from.
/// Codes of personal fields are withheld, as in the log.
pub fn unknown_codes_report(
    source: &str,
    set: &MappingSet,
    opts: &DecodeOptions,
    dir: &Path,
) -> anyhow::Result<String> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the sample folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    // (mapping, table, field, code) → sample file names.
    let mut unknown: BTreeMap<(String, String, &'static str, String), Vec<String>> =
        BTreeMap::new();
    let mut refused: BTreeMap<&'static str, usize> = BTreeMap::new();
    for f in &files {
        let body = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match decode(&body, opts, set, &BTreeMap::new()) {
            Ok(d) => {
                if let Outcome::Event(e) = d.outcome {
                    for u in &e.unmatched_codes {
                        let code = u.code_shown().unwrap_or("(value withheld)").to_string();
                        unknown
                            .entry((u.mapping.clone(), u.table.clone(), u.field.name(), code))
                            .or_default()
                            .push(name.clone());
                    }
                }
            }
            Err(rej) => *refused.entry(rej.reason.code()).or_default() += 1,
        }
    }
    let mut out = format!(
        "{source}: {} sample(s) from {}: {} code(s) no table knows",
        files.len(),
        dir.display(),
        unknown.len()
    );
    if !refused.is_empty() {
        let r: Vec<String> = refused.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = write!(out, "; dead-lettered: {}", r.join(", "));
    }
    out.push('\n');
    for ((mapping, table, field, code), samples) in &unknown {
        let _ = writeln!(
            out,
            "  {mapping} table {table} ({field}): {code} — in {}",
            samples.join(", ")
        );
    }
    Ok(out)
}
