//! Read-only views of the store for operators: dead letters (`cem-bridge dlq list|show`) and
//! traces (`cem-bridge trace ID`), as aligned text (default) or JSON (`--json`).
//!
//! Times are shown in the configured zone. The store holds no clear personal data, so neither
//! do these views: message ids, job ids, pseudonyms, reasons and details only.

use std::path::{Path, PathBuf};

use jiff::tz::TimeZone;
use serde_json::Value;

use crate::config::Config;
use crate::store::ops::{DeadLetterRecord, Trace};
use crate::store::views::{json_row, local_time};
use crate::store::{Store, StoreError, StoreOptions};

/// Why a view could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(
        "there is no store at {path}: is -c the running bridge's config, and was the bridge started from this directory?"
    )]
    NoStore { path: PathBuf },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no dead letter with id {0}; `cem-bridge dlq list` shows the ids of the recent ones")]
    NoDeadLetter(i64),
    #[error(
        "the store has nothing about {0:?}: give a message id (MSH-10), a survey job id or a patient pseudonym (pk_…)"
    )]
    NothingFound(String),
}

/// The SQLite file a `sqlite:` URL names, if it is one (not `:memory:`).
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

/// Open the configured store for reading; a missing SQLite file is an error, not a new store.
pub async fn open_store(cfg: &Config) -> Result<Store, InspectError> {
    if let Some(path) = sqlite_file(&cfg.store.url)
        && !Path::new(&path).exists()
    {
        return Err(InspectError::NoStore { path });
    }
    Ok(Store::open(
        &cfg.store.url,
        &StoreOptions {
            max_connections: 2,
            sqlite_synchronous: cfg.store.sqlite_synchronous.clone(),
            ..Default::default()
        },
    )
    .await?)
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// Left-aligned columns, two spaces apart.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i + 1 == headers.len() {
                s.push_str(cell);
            } else {
                s.push_str(cell);
                s.push_str(&" ".repeat(w - cell.chars().count() + 2));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(&mut headers.iter().copied());
    out.push('\n');
    for r in rows {
        out.push_str(&line(&mut r.iter().map(String::as_str)));
        out.push('\n');
    }
    out
}

/// At most `max` characters, with `…` when cut (on a character boundary).
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn or_dash(v: Option<&str>) -> String {
    v.filter(|s| !s.is_empty()).unwrap_or("-").to_string()
}

/// `dlq list`: the newest dead letters, newest first.
pub fn dead_letter_list(
    rows: &[DeadLetterRecord],
    total: i64,
    zone: &TimeZone,
    json: bool,
) -> String {
    if json {
        let items: Vec<Value> = rows.iter().map(|r| json_row(r, zone)).collect();
        return pretty(&serde_json::json!({ "total": total, "dead_letters": items }));
    }
    if rows.is_empty() {
        return "no dead letters recorded\n".to_string();
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                local_time(r.at, zone),
                r.connector.clone(),
                match r.replayed_at {
                    Some(_) => format!("{} (replayed)", r.reason),
                    None => r.reason.clone(),
                },
                or_dash(r.message_id.as_deref()),
                shorten(&r.detail, 80),
            ]
        })
        .collect();
    format!(
        "{}\n{} of {total} dead letter(s), newest first; `cem-bridge dlq show ID` for one\n",
        table(
            &["ID", "TIME", "CONNECTOR", "REASON", "MESSAGE ID", "DETAIL"],
            &cells
        )
        .trim_end(),
        rows.len(),
    )
}

/// `dlq show`: one dead letter; `dlq` is the dead-letter queue holding its body, if known.
pub fn dead_letter_detail(
    r: &DeadLetterRecord,
    dlq: Option<&str>,
    zone: &TimeZone,
    json: bool,
) -> String {
    let body_at = match dlq {
        Some(q) => format!("RabbitMQ queue {q} (with headers x-cem-reason, x-cem-detail)"),
        None if r.connector == crate::config::tickets::CONNECTOR => {
            "the dead-letter queue of [tickets.queue]".to_string()
        }
        None => format!(
            "the dead-letter queue of connector {} (not in this config any more)",
            r.connector
        ),
    };
    if json {
        let mut v = json_row(r, zone);
        if let Value::Object(map) = &mut v {
            map.insert("body_in".into(), Value::String(body_at));
        }
        return pretty(&v);
    }
    let rows = [
        ("id", r.id.to_string()),
        ("time", local_time(r.at, zone)),
        ("connector", r.connector.clone()),
        ("message id", or_dash(r.message_id.as_deref())),
        ("reason", r.reason.clone()),
        ("detail", r.detail.clone()),
        ("size", format!("{} bytes", r.size_bytes)),
        ("sha-256", r.content_hash.clone()),
        ("earlier deliveries", r.delivery_count.to_string()),
        (
            "replayed",
            r.replayed_at
                .map(|ms| local_time(ms, zone))
                .unwrap_or_else(|| "no (`cem-bridge dlq replay`)".into()),
        ),
        (
            "body",
            if crate::store::dead_letters::kept_in_part(r.size_bytes) {
                format!(
                    "its first {} KiB sealed in the store (vault key), not all {} bytes; the original, whole, is in {body_at}",
                    crate::store::dead_letters::MAX_STORED_BODY / 1024,
                    r.size_bytes
                )
            } else {
                format!("sealed in the store (vault key); the original is in {body_at}")
            },
        ),
    ];
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("{k:<19} {v}\n"));
    }
    out
}

/// `trace`: the jobs, audit rows and dead letters found for `id`.
pub fn trace_report(id: &str, t: &Trace, zone: &TimeZone, json: bool) -> String {
    if json {
        return pretty(&serde_json::json!({
            "id": id,
            "time_zone": zone.iana_name(),
            "jobs": t.jobs.iter().map(|j| json_row(j, zone)).collect::<Vec<_>>(),
            "audit": t.audit.iter().map(|a| json_row(a, zone)).collect::<Vec<_>>(),
            "dead_letters": t.dead_letters.iter().map(|d| json_row(d, zone)).collect::<Vec<_>>(),
            "followups": t.followups.iter().map(|s| json_row(s, zone)).collect::<Vec<_>>(),
        }));
    }
    let mut out = format!(
        "trace {id}: {} job(s), {} audit row(s), {} dead letter(s), {} follow-up step(s); times in {}\n",
        t.jobs.len(),
        t.audit.len(),
        t.dead_letters.len(),
        t.followups.len(),
        zone.iana_name().unwrap_or("the configured zone"),
    );
    if !t.jobs.is_empty() {
        let cells: Vec<Vec<String>> = t
            .jobs
            .iter()
            .map(|j| {
                vec![
                    j.job_id.clone(),
                    j.template.clone(),
                    match &j.reason {
                        Some(r) => format!("{}({r})", j.status),
                        None => j.status.clone(),
                    },
                    j.attempts.to_string(),
                    j.last_status.map_or("-".into(), |s| s.to_string()),
                    local_time(j.due_at, zone),
                    j.sent_at.map_or("-".into(), |s| local_time(s, zone)),
                    j.patient_key.clone(),
                ]
            })
            .collect();
        out.push_str("\nsurvey jobs\n");
        out.push_str(&table(
            &[
                "JOB ID",
                "TEMPLATE",
                "STATUS",
                "ATTEMPTS",
                "LAST HTTP",
                "DUE",
                "SENT",
                "PATIENT",
            ],
            &cells,
        ));
        for j in t.jobs.iter().filter(|j| j.status == "pending") {
            out.push_str(&format!(
                "  {} next attempt {}{}\n",
                j.job_id,
                local_time(j.next_attempt_at, zone),
                j.last_error
                    .as_deref()
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default()
            ));
        }
    }
    if !t.audit.is_empty() {
        let cells: Vec<Vec<String>> = t
            .audit
            .iter()
            .map(|a| {
                vec![
                    local_time(a.at, zone),
                    a.action.clone(),
                    or_dash(a.rule.as_deref()),
                    or_dash(a.reason.as_deref()),
                    or_dash(a.message_id.as_deref()),
                    or_dash(a.job_id.as_deref()),
                    or_dash(a.detail.as_deref()),
                ]
            })
            .collect();
        out.push_str("\naudit\n");
        out.push_str(&table(
            &[
                "TIME",
                "ACTION",
                "RULE",
                "REASON",
                "MESSAGE ID",
                "JOB ID",
                "DETAIL",
            ],
            &cells,
        ));
    }
    if !t.followups.is_empty() {
        let cells: Vec<Vec<String>> = t
            .followups
            .iter()
            .map(|s| {
                vec![
                    s.plan.to_string(),
                    s.step.to_string(),
                    match s.sink {
                        "callcenter" => "call center".to_string(),
                        other => other.to_uppercase(),
                    },
                    local_time(s.due_at, zone),
                    match &s.reason {
                        Some(r) => format!("{}({r})", s.status),
                        None => s.status.clone(),
                    },
                    s.attempts.to_string(),
                    s.key.clone(),
                ]
            })
            .collect();
        out.push_str("\nfollow-up plan (R-FUP-1), step by step\n");
        out.push_str(&table(
            &["PLAN", "STEP", "SINK", "DUE", "STATUS", "ATTEMPTS", "KEY"],
            &cells,
        ));
    }
    if !t.dead_letters.is_empty() {
        let cells: Vec<Vec<String>> = t
            .dead_letters
            .iter()
            .map(|d| {
                vec![
                    d.id.to_string(),
                    local_time(d.at, zone),
                    d.connector.clone(),
                    d.reason.clone(),
                    d.detail.clone(),
                ]
            })
            .collect();
        out.push_str("\ndead letters (`cem-bridge dlq show ID`)\n");
        out.push_str(&table(
            &["ID", "TIME", "CONNECTOR", "REASON", "DETAIL"],
            &cells,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shanghai() -> TimeZone {
        TimeZone::get("Asia/Shanghai").unwrap()
    }

    #[test]
    fn times_are_shown_in_the_configured_zone() {
        // 2026-11-20T01:30:00.250Z
        let ms = 1_795_138_200_250;
        assert_eq!(
            local_time(ms, &shanghai()),
            "2026-11-20 09:30:00.250 +08:00"
        );
        let row = DeadLetterRecord {
            id: 7,
            at: ms,
            connector: "adt".into(),
            message_id: None,
            reason: "truncated".into(),
            detail: "MSH-9 missing".into(),
            content_hash: "ab".into(),
            size_bytes: 3,
            delivery_count: 0,
            replayed_at: None,
        };
        let v = json_row(&row, &shanghai());
        assert_eq!(v["at"], "2026-11-20T09:30:00.250+08:00");
        assert_eq!(v["at_ms"], ms);
        assert_eq!(v["id"], 7);
    }

    #[test]
    fn sqlite_file_is_read_from_the_url() {
        assert_eq!(
            sqlite_file("sqlite://data/x.db?mode=rwc"),
            Some(PathBuf::from("data/x.db"))
        );
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("postgres://h/db"), None);
    }

    #[test]
    fn shorten_cuts_on_character_boundaries() {
        assert_eq!(shorten("abc", 5), "abc");
        assert_eq!(shorten("患者信息缺失字段", 4), "患者信…");
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["A", "BB", "C"],
            &[vec!["xxx".into(), "y".into(), "z".into()]],
        );
        assert_eq!(t, "A    BB  C\nxxx  y   z\n");
    }
}
