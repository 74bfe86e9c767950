//! `cem-bridge dlq replay`: put dead letters back through a mapping (issue 8 §3).
//!
//! The bodies are kept sealed in the store (R-ANO-8); this opens them with the vault key.
//! - `--dry-run` changes nothing: per message it shows what the configured mappings make of
//!   it and — with `--mapping FILE` — what the new mapping makes of it, field by field
//!   (personal values masked like `cem-bridge map`), so an interface engineer sees the effect
//!   of a fix before anything moves.
//! - Without `--dry-run`, each message the mapping now accepts is republished (persistent,
//!   confirmed) to its source queue with header `x-cem-replay-of: {id}` and marked replayed;
//!   the running bridge ingests it like any message. One it would still reject stays put.
//!   With `--mapping`, the new file decides what is republished; it must also be the one the
//!   running bridge uses (install it first — the bridge reloads mappings on change).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use cem_connectors::amqp::{AmqpPublisher, OutboundMessage};
use cem_pipeline::mapping::MappingSet;
use serde_json::Value;

use crate::app::Secrets;
use crate::cli::map::{MapRequest, map_body};
use crate::config::Config;
use crate::config::source::SourceConfig;
use crate::config::source::SourceKind;
use crate::store::dead_letters::dead_letter_aad;
use crate::store::ops::{ReplayFilter, SealedDeadLetter};

/// What to replay and how.
pub struct ReplayRequest {
    pub filter: ReplayFilter,
    /// `--mapping`: files or folders to use instead of each source's configured mappings.
    pub mappings: Vec<String>,
    pub dry_run: bool,
}

/// Per message: what happened or would happen.
#[derive(Debug, Default)]
pub struct ReplayReport {
    pub text: String,
    pub examined: usize,
    /// Would map now (dry run) or were republished.
    pub accepted: usize,
    pub still_failing: usize,
    pub skipped: usize,
}

/// Replay per the request; the report (also printed by the CLI).
pub async fn replay(
    cfg: &Config,
    secrets: &Secrets,
    req: &ReplayRequest,
) -> anyhow::Result<ReplayReport> {
    let vault = crate::app::vault_cipher(cfg, secrets)?;
    let pseudo = crate::app::pseudonymizer(cfg, secrets)?;
    let lists = crate::app::load_lists(cfg, &pseudo)?;
    let zone = cfg.zone();
    let store = crate::cli::inspect::open_store(cfg).await?;
    let rows = store.dead_letters_to_replay(&req.filter).await?;
    let new_set = if req.mappings.is_empty() {
        None
    } else {
        Some(load_set(&req.mappings, &zone, "--mapping")?)
    };
    let mut sets: BTreeMap<String, MappingSet> = BTreeMap::new();
    let mut publishers: BTreeMap<String, AmqpPublisher> = BTreeMap::new();
    let mut report = ReplayReport::default();
    let now = crate::process::clock::Clock::from_env()?.now();
    for row in &rows {
        report.examined += 1;
        let d = &row.record;
        let title = format!(
            "#{} {} ({}, {})",
            d.id,
            d.message_id.as_deref().unwrap_or("(no message id)"),
            d.connector,
            d.reason
        );
        let Some(src) = cfg.sources.iter().find(|s| s.name == d.connector) else {
            report.skipped += 1;
            report.text.push_str(&format!(
                "{title}\n  skipped: no [[source]] named {:?} in this config (ticket-queue dead letters are not replayed)\n",
                d.connector
            ));
            continue;
        };
        if src.kind != SourceKind::Amqp {
            report.skipped += 1;
            report.text.push_str(&format!(
                "{title}\n  skipped: [[source]] {:?} is a {} door with no queue to replay into; fix the cause, then have the sender send it again (or `cem-bridge publish --{} …` a copy)\n",
                src.name,
                src.kind.code(),
                src.kind.code()
            ));
            continue;
        }
        let opened = open_body(&vault, row).and_then(|b| Ok((b, open_headers(&vault, row)?)));
        let (body, headers) = match opened {
            Ok(o) => o,
            Err(why) => {
                report.skipped += 1;
                report
                    .text
                    .push_str(&format!("{title}\n  skipped: {why}\n"));
                continue;
            }
        };
        if !sets.contains_key(&src.name) {
            let set = load_set(&src.mappings, &zone, &format!("[[source]] {}", src.name))?;
            sets.insert(src.name.clone(), set);
        }
        let current = &sets[&src.name];
        let map = |set: &MappingSet| -> anyhow::Result<Value> {
            map_body(
                &MapRequest::for_source(
                    cfg,
                    src,
                    set,
                    Path::new(""),
                    headers.clone(),
                    lists.clone(),
                    pseudo.clone(),
                    now,
                ),
                &title,
                &body,
            )
        };
        let old = map(current)?;
        let new = match &new_set {
            Some(set) => map(set)?,
            None => old.clone(),
        };
        let accepts = new["result"] != "dead_letter";
        report.text.push_str(&format!("{title}\n"));
        if new_set.is_some() {
            report
                .text
                .push_str(&format!("  configured mapping: {}\n", outcome(&old)));
            report
                .text
                .push_str(&format!("  new mapping:        {}\n", outcome(&new)));
            for line in field_diff(&old, &new) {
                report.text.push_str(&format!("    {line}\n"));
            }
        } else {
            report.text.push_str(&format!("  now: {}\n", outcome(&new)));
        }
        if !accepts {
            report.still_failing += 1;
            if !req.dry_run {
                report
                    .text
                    .push_str("  left in the dead letters: the mapping still rejects it\n");
            }
            continue;
        }
        report.accepted += 1;
        if req.dry_run {
            continue;
        }
        publish_one(
            &mut publishers,
            src,
            d.id,
            d.message_id.clone(),
            body,
            headers,
        )
        .await?;
        store
            .mark_replayed(d.id, &src.queue, now.as_millisecond())
            .await?;
        report
            .text
            .push_str(&format!("  republished to {}\n", src.queue));
    }
    for (_, p) in publishers {
        p.close().await;
    }
    store.close().await;
    let verb = if req.dry_run {
        "would map now"
    } else {
        "republished"
    };
    report.text.push_str(&format!(
        "{} dead letter(s): {} {verb}, {} still rejected, {} skipped{}\n",
        report.examined,
        report.accepted,
        report.still_failing,
        report.skipped,
        if req.dry_run {
            " (dry run: nothing sent or changed)"
        } else {
            ""
        }
    ));
    Ok(report)
}

fn load_set(paths: &[String], zone: &jiff::tz::TimeZone, what: &str) -> anyhow::Result<MappingSet> {
    crate::config::mappings::load(paths, zone).map_err(|errors| {
        anyhow::anyhow!(
            "{what}: the mapping files have {} problem(s):\n{}",
            errors.len(),
            errors.join("\n")
        )
    })
}

fn open_body(
    vault: &crate::privacy::vault::VaultCipher,
    row: &SealedDeadLetter,
) -> Result<Vec<u8>, String> {
    let (Some(key_id), Some(sealed)) = (&row.key_id, &row.sealed) else {
        return Err("its body was not kept (dead-lettered before bodies were stored)".into());
    };
    let body = vault
        .open(&dead_letter_aad(&row.record.content_hash), key_id, sealed)
        .map_err(|e| format!("cannot open its body with the vault key: {e}"))?;
    if i64::try_from(body.len()).map_or(true, |n| n < row.record.size_bytes) {
        return Err(format!(
            "only its first {} of {} bytes were kept (a body over {} KiB is kept in part): replay the original from the broker's dead-letter queue",
            body.len(),
            row.record.size_bytes,
            crate::store::dead_letters::MAX_STORED_BODY / 1024
        ));
    }
    Ok(body)
}

/// The dead letter's original headers (empty when it had none or predates migration 6).
fn open_headers(
    vault: &crate::privacy::vault::VaultCipher,
    row: &SealedDeadLetter,
) -> Result<BTreeMap<String, String>, String> {
    let (Some(key_id), Some(sealed)) = (&row.key_id, &row.sealed_headers) else {
        return Ok(BTreeMap::new());
    };
    let json = vault
        .open(
            &crate::store::dead_letters::dead_letter_headers_aad(&row.record.content_hash),
            key_id,
            sealed,
        )
        .map_err(|e| format!("cannot open its headers with the vault key: {e}"))?;
    serde_json::from_slice(&json).map_err(|e| format!("its stored headers are not readable: {e}"))
}

async fn publish_one(
    publishers: &mut BTreeMap<String, AmqpPublisher>,
    src: &SourceConfig,
    id: i64,
    message_id: Option<String>,
    body: Vec<u8>,
    mut headers: BTreeMap<String, String>,
) -> anyhow::Result<()> {
    if !publishers.contains_key(&src.url) {
        let p = AmqpPublisher::connect(&src.url)
            .await
            .with_context(|| format!("connecting to RabbitMQ for [[source]] {}", src.name))?;
        publishers.insert(src.url.clone(), p);
    }
    let p = &publishers[&src.url];
    headers.insert("x-cem-replay-of".to_string(), id.to_string());
    p.publish(
        &src.queue,
        &OutboundMessage {
            body,
            message_id,
            headers,
        },
    )
    .await
    .with_context(|| format!("republishing dead letter {id} to {}", src.queue))?;
    Ok(())
}

/// One line: `dead_letter missing_patient_id: …` or `event registration → survey schedule …`.
fn outcome(v: &Value) -> String {
    match v["result"].as_str() {
        Some("dead_letter") => format!(
            "dead letter {} ({})",
            v["reason"].as_str().unwrap_or("?"),
            v["detail"].as_str().unwrap_or("")
        ),
        Some("ignored") => format!(
            "ignored by mapping {}",
            v["mapping"].as_str().unwrap_or("?")
        ),
        Some("event") => {
            let s = &v["survey"];
            let survey = match s["decision"].as_str() {
                Some("schedule") => format!(
                    "survey {} due {}",
                    s["template"].as_str().unwrap_or("?"),
                    s["due_at"].as_str().unwrap_or("?")
                ),
                Some(d) => format!("{d} {}", s["reason"].as_str().unwrap_or("")),
                None => "no survey decision".into(),
            };
            format!(
                "event {} via mapping {} → {}",
                v["event"].as_str().unwrap_or("?"),
                v["mapping"].as_str().unwrap_or("?"),
                survey.trim_end()
            )
        }
        _ => "?".into(),
    }
}

/// The canonical fields that differ: `+ field = v`, `- field = v`, `~ field: a → b`.
fn field_diff(old: &Value, new: &Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let a = old["fields"].as_object().unwrap_or(&empty);
    let b = new["fields"].as_object().unwrap_or(&empty);
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let text = |v: &Value| {
        v.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string())
    };
    keys.into_iter()
        .filter_map(|k| match (a.get(k), b.get(k)) {
            (None, Some(v)) => Some(format!("+ {k} = {}", text(v))),
            (Some(v), None) => Some(format!("- {k} = {}", text(v))),
            (Some(x), Some(y)) if x != y => Some(format!("~ {k}: {} → {}", text(x), text(y))),
            _ => None,
        })
        .collect()
}
