//! The dashboard and the alert rules use the real metric names (issue 8 §7): every
//! `cem_bridge_…` name in the Grafana dashboard, in docs/operations.md (metric table, alert
//! rules) and in docs/tickets.md is a metric the code emits — a `"cem_bridge_…"` string literal
//! in src/ or connectors/src/. A renamed or misspelt metric fails here instead of leaving a panel
//! empty or an alert that can never fire. The dashboard must also be valid JSON with unique panel
//! ids, and every metric the code emits has a row in the metric table of docs/operations.md.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

const PREFIX: &str = "cem_bridge_";
const DASHBOARD: &str = "docs/grafana/cem-bridge-dashboard.json";
const OPERATIONS: &str = "docs/operations.md";
/// Files whose `cem_bridge_…` names must all be metrics.
const DOCS: &[&str] = &[DASHBOARD, OPERATIONS, "docs/tickets.md"];
/// Series a histogram adds to its name.
const HISTOGRAM_SUFFIXES: &[&str] = &["_bucket", "_count", "_sum"];
/// `cem_bridge_…` words the docs may use that are not metrics. None today: add one here only
/// with a comment saying why it is not a metric.
const NOT_METRICS: &[&str] = &[];

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `cem_bridge_[a-z0-9_]+` word in `text`, with its byte offset.
fn names(text: &str) -> Vec<(usize, &str)> {
    let b = text.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let name_char = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_';
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find(PREFIX).map(|i| from + i) {
        let mut end = at + PREFIX.len();
        while end < b.len() && name_char(b[end]) {
            end += 1;
        }
        if end > at + PREFIX.len() && (at == 0 || !word(b[at - 1])) {
            out.push((at, &text[at..end]));
        }
        from = end;
    }
    out
}

/// The metric names the code defines: `"cem_bridge_…"` string literals (the first argument of
/// `counter!`, `gauge!`, `histogram!`, `describe_*!`), outside `//` comment lines.
fn code_metrics() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "connectors/src"] {
        rust_files(&root.join(dir), &mut files);
    }
    let mut found = BTreeSet::new();
    for f in &files {
        let text = fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (at, name) in names(line) {
                if line[..at].ends_with('"') && line[at + name.len()..].starts_with('"') {
                    found.insert(name.to_string());
                }
            }
        }
    }
    assert!(
        found.contains("cem_bridge_messages_in_total"),
        "the scanner found no metric in src/: {found:?}"
    );
    found
}

fn is_metric(code: &BTreeSet<String>, name: &str) -> bool {
    code.contains(name)
        || NOT_METRICS.contains(&name)
        || HISTOGRAM_SUFFIXES
            .iter()
            .any(|s| name.strip_suffix(s).is_some_and(|base| code.contains(base)))
}

#[test]
fn dashboard_and_docs_use_only_metrics_the_code_emits() {
    let code = code_metrics();

    let dashboard: serde_json::Value = serde_json::from_str(&read(DASHBOARD))
        .unwrap_or_else(|e| panic!("{DASHBOARD} is not valid JSON: {e}"));
    let panels = dashboard["panels"].as_array().expect("dashboard panels");
    let ids: Vec<u64> = panels
        .iter()
        .flat_map(|p| std::iter::once(p).chain(p["panels"].as_array().into_iter().flatten()))
        .map(|p| {
            p["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{DASHBOARD}: a panel without an id: {p}"))
        })
        .collect();
    let unique: BTreeSet<&u64> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "{DASHBOARD}: panel ids repeat: {ids:?}"
    );

    let mut problems = Vec::new();
    for doc in DOCS {
        let text = read(doc);
        let used: BTreeSet<&str> = names(&text).into_iter().map(|(_, n)| n).collect();
        assert!(
            !used.is_empty(),
            "{doc} names no cem_bridge_ metric: was it rewritten?"
        );
        let unknown: Vec<&str> = used.into_iter().filter(|n| !is_metric(&code, n)).collect();
        if !unknown.is_empty() {
            problems.push(format!("{doc}: {}", unknown.join(", ")));
        }
    }
    assert!(
        problems.is_empty(),
        "metric names the code (src/, connectors/src/) does not emit:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_metric_the_code_emits_is_in_the_operations_metric_table() {
    let table = read(OPERATIONS);
    let missing: Vec<String> = code_metrics()
        .into_iter()
        .filter(|n| !table.contains(&format!("| `{n}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "{OPERATIONS}#metrics has no row for: {}",
        missing.join(", ")
    );
}
