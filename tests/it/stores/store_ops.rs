//! The operations queries of the store (`src/store_ops.rs`) on both backends: embedded SQLite
//! and the local PostgreSQL (a fresh database per test). Same SQL, same expectations.

use crate::common::*;
use cem_bridge::config::RetentionConfig;
use cem_bridge::store::ops::PendingSummary;
use cem_bridge::store::retention::{Pruned, prune_once};
use cem_bridge::store::{AuditEntry, Store, now_ms};

/// Two patients: m1 creates j1 (pk_a), m2 re-sends the same visit (a no-op on j1), j1 is sent;
/// m3 creates j2 (pk_b); m4 is dead-lettered.
async fn seed(store: &Store, db: &Db) {
    let mut tx = store.begin().await.unwrap();
    tx.insert_job(&job("j1", "pk_a", "m1", 1_000), 1)
        .await
        .unwrap();
    for (mid, action, reason) in [
        ("m1", "scheduled", None),
        ("m2", "no_op", Some("already_scheduled")),
    ] {
        tx.audit(&AuditEntry {
            connector: Some("adt"),
            message_id: Some(mid),
            job_id: Some("j1"),
            patient_key: Some("pk_a"),
            action,
            rule: Some("R-SRV-5"),
            reason,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    tx.audit(&AuditEntry {
        job_id: Some("j1"),
        action: "sent",
        detail: Some("HTTP 200"),
        ..Default::default()
    })
    .await
    .unwrap();
    tx.insert_job(&job("j2", "pk_b", "m3", 2_000), 2)
        .await
        .unwrap();
    tx.audit(&AuditEntry {
        connector: Some("adt"),
        message_id: Some("m3"),
        job_id: Some("j2"),
        patient_key: Some("pk_b"),
        action: "scheduled",
        ..Default::default()
    })
    .await
    .unwrap();
    tx.dead_letter(&dead_letter(Some("m4"), "truncated"), 10)
        .await
        .unwrap();
    tx.audit(&AuditEntry {
        connector: Some("adt"),
        message_id: Some("m4"),
        action: "dead_letter",
        reason: Some("truncated"),
        ..Default::default()
    })
    .await
    .unwrap();
    tx.dead_letter(&dead_letter(None, "unknown_format"), 20)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    db.exec("UPDATE survey_jobs SET status = 'sent', sent_at = 5000, last_status = 200, attempts = 1 WHERE job_id = 'j1'")
        .await;
}

/// `trace` follows a message id, a job id or a pseudonym to the same job and its whole history,
/// including the re-send recorded under another message id, and nothing of other patients.
async fn trace_follows_message_job_and_pseudonym(db: Db) {
    let store = db.open().await;
    seed(&store, &db).await;
    for key in ["m1", "j1", "pk_a"] {
        let t = store.trace(key).await.unwrap();
        assert_eq!(
            t.jobs.iter().map(|j| j.job_id.as_str()).collect::<Vec<_>>(),
            ["j1"],
            "{key}"
        );
        let j = &t.jobs[0];
        assert_eq!(
            (j.status.as_str(), j.attempts, j.last_status, j.sent_at),
            ("sent", 1, Some(200), Some(5000))
        );
        assert_eq!(
            t.audit
                .iter()
                .map(|a| a.action.as_str())
                .collect::<Vec<_>>(),
            ["scheduled", "no_op", "sent"],
            "{key}"
        );
        assert!(t.dead_letters.is_empty());
    }
    // Following m2 leads to j1 through its audit row.
    let t = store.trace("m2").await.unwrap();
    assert_eq!(t.jobs.len(), 1);
    assert_eq!(t.audit.len(), 3);
    let t = store.trace("m4").await.unwrap();
    assert!(t.jobs.is_empty());
    assert_eq!(t.audit.len(), 1);
    assert_eq!(t.dead_letters.len(), 1);
    assert_eq!(t.dead_letters[0].reason, "truncated");
    assert!(store.trace("nothing").await.unwrap().is_empty());
    store.close().await;
    db.cleanup().await;
}

/// Migration 10: `scheduled` audit rows are in neither the job nor the patient index, and are
/// still found by `trace` and `audit` through the job's message id — by the job, by the
/// patient, and, once the patient was merged (R-CAN-6) and the pending job moved to the
/// survivor, by the merged pseudonym too (the row keeps the pseudonym it was written under).
/// Another patient's rows stay out.
async fn scheduled_rows_found_by_creating_message(db: Db) {
    let store = db.open().await;
    seed(&store, &db).await;
    let mut tx = store.begin().await.unwrap();
    tx.insert_job(&job("j3", "pk_c", "m5", 3_000), 3)
        .await
        .unwrap();
    tx.audit(&AuditEntry {
        connector: Some("adt"),
        message_id: Some("m5"),
        job_id: Some("j3"),
        patient_key: Some("pk_c"),
        action: "scheduled",
        rule: Some("R-SRV-5"),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(tx.merge_patients("pk_c", "pk_b").await.unwrap(), ["j3"]);
    tx.commit().await.unwrap();
    for (key, expected) in [
        ("j3", vec![("scheduled", "m5")]),
        ("pk_c", vec![("scheduled", "m5")]),
        ("pk_b", vec![("scheduled", "m3")]),
        ("j2", vec![("scheduled", "m3")]),
        ("m5", vec![("scheduled", "m5")]),
    ] {
        let got = audit_of(&store, key).await;
        let want: Vec<(String, Option<String>)> = expected
            .iter()
            .map(|(a, m)| (a.to_string(), Some(m.to_string())))
            .collect();
        assert_eq!(got, want, "audit({key})");
    }
    // The survivor's trace shows both its own job and the one that moved to it, each with its
    // `scheduled` row.
    let t = store.trace("pk_b").await.unwrap();
    let mut jobs: Vec<&str> = t.jobs.iter().map(|j| j.job_id.as_str()).collect();
    jobs.sort();
    assert_eq!(jobs, ["j2", "j3"]);
    let mut scheduled: Vec<(&str, &str)> = t
        .audit
        .iter()
        .filter(|a| a.action == "scheduled")
        .map(|a| {
            (
                a.job_id.as_deref().unwrap_or(""),
                a.message_id.as_deref().unwrap_or(""),
            )
        })
        .collect();
    scheduled.sort();
    assert_eq!(scheduled, [("j2", "m3"), ("j3", "m5")]);
    // The merged pseudonym's trace finds the moved job's row, not the survivor's own.
    let t = store.trace("pk_c").await.unwrap();
    assert_eq!(
        t.audit
            .iter()
            .map(|a| (a.action.as_str(), a.message_id.as_deref()))
            .collect::<Vec<_>>(),
        [("scheduled", Some("m5"))]
    );
    store.close().await;
    db.cleanup().await;
}

/// `dlq list` is newest first with a total; `dlq show` finds one by id.
async fn dead_letters_newest_first_and_by_id(db: Db) {
    let store = db.open().await;
    seed(&store, &db).await;
    assert_eq!(store.dead_letter_count().await.unwrap(), 2);
    let rows = store.recent_dead_letters(10).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.reason.as_str()).collect::<Vec<_>>(),
        ["unknown_format", "truncated"]
    );
    assert_eq!(store.recent_dead_letters(1).await.unwrap().len(), 1);
    let one = store.dead_letter_by_id(rows[1].id).await.unwrap().unwrap();
    assert_eq!(one.message_id.as_deref(), Some("m4"));
    assert_eq!((one.at, one.size_bytes), (10, 49));
    assert_eq!(store.dead_letter_by_id(-1).await.unwrap(), None);
    store.close().await;
    db.cleanup().await;
}

/// The survey gauges: pending jobs and the earliest due time among them.
async fn pending_summary_counts_pending_jobs_only(db: Db) {
    let store = db.open().await;
    assert_eq!(
        store.pending_summary().await.unwrap(),
        PendingSummary {
            pending: 0,
            oldest_due_at: None
        }
    );
    seed(&store, &db).await;
    assert_eq!(
        store.pending_summary().await.unwrap(),
        PendingSummary {
            pending: 1,
            oldest_due_at: Some(2_000)
        },
        "j1 is sent"
    );
    store.close().await;
    db.cleanup().await;
}

const DAY: i64 = 86_400_000;

/// Rows 200 days old, 100 days old and 1 day old in every table, and finished and pending jobs.
async fn seed_ages(store: &Store, db: &Db, now: i64) {
    let (old, mid, new) = (now - 200 * DAY, now - 100 * DAY, now - DAY);
    let mut tx = store.begin().await.unwrap();
    for (key, at) in [("k-old", old), ("k-mid", mid), ("k-new", new)] {
        tx.record_inbox("adt", key, "h", key, "REGISTERED", at)
            .await
            .unwrap();
    }
    for (id, at) in [
        ("sent-old", old),
        ("dead-old", old),
        ("cancelled-old", old),
        ("suppressed-old", old),
        ("pending-old", old),
        ("sent-mid", mid),
        ("sent-new", new),
    ] {
        tx.insert_job(&job(id, "pk_a", id, at), at).await.unwrap();
    }
    for (tag, n) in [("old", 3), ("mid", 2), ("new", 1)] {
        for _ in 0..n {
            tx.audit(&AuditEntry {
                action: "recorded",
                detail: Some(tag),
                ..Default::default()
            })
            .await
            .unwrap();
        }
    }
    for at in [old, old, mid, new] {
        tx.dead_letter(&dead_letter(Some("m"), "truncated"), at)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    for sql in [
        "UPDATE survey_jobs SET status = 'sent' WHERE job_id LIKE 'sent-%'".to_string(),
        "UPDATE survey_jobs SET status = 'dead', reason = 'rejected' WHERE job_id = 'dead-old'"
            .to_string(),
        "UPDATE survey_jobs SET status = 'cancelled' WHERE job_id = 'cancelled-old'".to_string(),
        "UPDATE survey_jobs SET status = 'suppressed', reason = 'dnd' WHERE job_id = 'suppressed-old'"
            .to_string(),
        format!("UPDATE audit SET at = {old} WHERE detail = 'old'"),
        format!("UPDATE audit SET at = {mid} WHERE detail = 'mid'"),
    ] {
        db.exec(&sql).await;
    }
}

/// Rows per table: (inbox, jobs, audit, dead letters).
async fn rows(db: &Db) -> (i64, i64, i64, i64) {
    (
        db.count("SELECT COUNT(*) AS n FROM inbox").await,
        db.count("SELECT COUNT(*) AS n FROM survey_jobs").await,
        db.count("SELECT COUNT(*) AS n FROM audit").await,
        db.count("SELECT COUNT(*) AS n FROM dead_letters").await,
    )
}

/// R-EVT-4 and issue 8 §6: rows older than their table's retention are deleted in batches;
/// pending jobs never are, whatever their age; `0` days keeps a table; a second pass finds
/// nothing.
async fn retention_prunes_old_rows_in_batches_and_never_pending_jobs(db: Db) {
    let store = db.open().await;
    let now = now_ms();
    seed_ages(&store, &db, now).await;
    assert_eq!(rows(&db).await, (3, 7, 6, 4));
    let (_trigger, mut shutdown) = cem_bridge::process::shutdown::channel();
    let defaults = RetentionConfig {
        batch_rows: 2, // three or four old rows in a table take two batches
        ..Default::default()
    };

    // Inbox and dead letters kept forever with 0 days; finished jobs (sent, dead, cancelled,
    // suppressed) and audit pruned at 180 days.
    let keep = RetentionConfig {
        inbox_days: 0,
        dead_letters_days: 0,
        ..defaults.clone()
    };
    let p = prune_once(&store, &keep, now, &mut shutdown).await.unwrap();
    assert_eq!(
        p,
        Pruned {
            inbox: 0,
            jobs: 4,
            audit: 3,
            dead_letters: 0,
            ..Default::default()
        }
    );
    assert_eq!(rows(&db).await, (3, 3, 3, 4));
    assert_eq!(
        db.count("SELECT COUNT(*) AS n FROM survey_jobs WHERE job_id IN ('pending-old', 'sent-mid', 'sent-new')")
            .await,
        3,
        "the pending job and the younger finished ones stay"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) AS n FROM audit WHERE detail = 'old'")
            .await,
        0
    );

    // Defaults: inbox and dead letters at 90 days.
    let p = prune_once(&store, &defaults, now, &mut shutdown)
        .await
        .unwrap();
    assert_eq!(
        p,
        Pruned {
            inbox: 2,
            jobs: 0,
            audit: 0,
            dead_letters: 3,
            ..Default::default()
        }
    );
    assert_eq!(rows(&db).await, (1, 3, 3, 1));
    assert_eq!(
        db.count("SELECT COUNT(*) AS n FROM inbox WHERE message_key = 'k-new'")
            .await,
        1
    );
    // Nothing is left to prune; years later, the pending job is still there.
    let p = prune_once(&store, &defaults, now, &mut shutdown)
        .await
        .unwrap();
    assert_eq!(p.total(), 0);
    let p = prune_once(&store, &defaults, now + 3650 * DAY, &mut shutdown)
        .await
        .unwrap();
    assert_eq!(
        p,
        Pruned {
            inbox: 1,
            jobs: 2,
            audit: 3,
            dead_letters: 1,
            ..Default::default()
        }
    );
    assert_eq!(rows(&db).await, (0, 1, 0, 0));
    assert_eq!(
        db.count("SELECT COUNT(*) AS n FROM survey_jobs WHERE job_id = 'pending-old' AND status = 'pending'")
            .await,
        1
    );
    store.close().await;
    db.cleanup().await;
}

/// Issue 8 §6 "by size": over a table's cap the oldest rows go, whatever their age — finished
/// jobs by their last change, audit and dead letters by id; pending jobs never; 0 = no cap.
async fn size_caps_prune_the_oldest_rows_and_never_pending_jobs(db: Db) {
    let store = db.open().await;
    let now = now_ms();
    seed_ages(&store, &db, now).await;
    assert_eq!(rows(&db).await, (3, 7, 6, 4));
    let (_trigger, mut shutdown) = cem_bridge::process::shutdown::channel();
    // Ages keep everything (0 = forever); only the caps act.
    let caps = RetentionConfig {
        inbox_days: 0,
        jobs_days: 0,
        audit_days: 0,
        dead_letters_days: 0,
        vault_days: 0,
        tickets_days: 0,
        max_jobs_rows: 2,
        max_audit_rows: 4,
        max_dead_letters_rows: 1,
        max_tickets_rows: 0,
        batch_rows: 2,
        ..Default::default()
    };
    let p = prune_once(&store, &caps, now, &mut shutdown).await.unwrap();
    assert_eq!(
        p,
        Pruned {
            jobs: 4,
            audit: 2,
            dead_letters: 3,
            ..Default::default()
        }
    );
    assert_eq!(rows(&db).await, (3, 3, 4, 1));
    assert_eq!(
        db.count("SELECT COUNT(*) AS n FROM survey_jobs WHERE job_id IN ('pending-old', 'sent-mid', 'sent-new')")
            .await,
        3,
        "the pending job stays and the newest finished ones are kept"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) AS n FROM audit WHERE detail = 'old'")
            .await,
        1,
        "the oldest audit rows went first"
    );
    let p = prune_once(&store, &caps, now, &mut shutdown).await.unwrap();
    assert_eq!(p.total(), 0, "under the caps now");
    store.close().await;
    db.cleanup().await;
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Db::sqlite(stringify!($name)).await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Db::postgres(stringify!($name)).await).await;
                }
            )*
        }
    };
}

/// Retention of the do-not-disturb and patient state: touches older than `touches_days` go
/// (they block nothing: R-DND-4), younger ones stay; patient records go by the time of their
/// demographics, except deceased ones (R-EXC-1); merge aliases (R-CAN-6) stay.
async fn retention_prunes_old_touches_and_patients_but_never_deceased_or_aliases(db: Db) {
    let store = db.open().await;
    let now = now_ms();
    let old = now - 61 * DAY;
    let young = now - 29 * DAY;
    let ancient = now - 400 * DAY;
    db.exec(&format!(
        "INSERT INTO touches (dnd_key, last_sent, job_id) VALUES \
         ('pk_old', {old}, 'j1'), ('mk_old', {old}, 'j1'), ('pk_young', {young}, 'j2'); \
         INSERT INTO patients (patient_key, deceased, mobile_key, demographics_at) VALUES \
         ('pk_gone', 0, 'mk_a', {ancient}), ('pk_dead', 1, NULL, {ancient}), ('pk_recent', 0, 'mk_b', {young}); \
         INSERT INTO patient_aliases (alias_key, survivor_key) VALUES ('pk_merged', 'pk_recent')"
    ))
    .await;
    let (_trigger, mut shutdown) = cem_bridge::process::shutdown::channel();
    let p = prune_once(&store, &RetentionConfig::default(), now, &mut shutdown)
        .await
        .unwrap();
    assert_eq!((p.touches, p.patients), (2, 1), "{p:?}");
    assert_eq!(
        db.count("SELECT COUNT(*) AS n FROM touches WHERE dnd_key = 'pk_young'")
            .await,
        1
    );
    assert_eq!(
        db.count(
            "SELECT COUNT(*) AS n FROM patients WHERE patient_key IN ('pk_dead', 'pk_recent')"
        )
        .await,
        2,
        "the deceased flag and the recent record stay"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) AS n FROM patient_aliases").await,
        1
    );
    // A deceased patient is still excluded after any number of passes.
    let mut tx = store.begin().await.unwrap();
    assert!(tx.is_deceased("pk_dead").await.unwrap());
    tx.commit().await.unwrap();
    store.close().await;
    db.cleanup().await;
}

/// Counters of what a transaction did are emitted when it commits, never for one rolled back
/// (a batch the store refused and that is written again is counted once).
async fn counts_are_emitted_only_when_the_transaction_commits(db: Db) {
    let metrics = cem_bridge::http::telemetry::metrics_handle().unwrap();
    let store = db.open().await;
    let name = "cem_bridge_messages_duplicate_total";
    let mut tx = store.begin().await.unwrap();
    tx.count(name, &[("connector", "rolled-back")], 1);
    drop(tx);
    let mut tx = store.begin().await.unwrap();
    tx.count(name, &[("connector", "committed")], 2);
    assert!(
        !metrics.render().contains("\"committed\""),
        "not before the commit"
    );
    tx.commit().await.unwrap();
    let text = metrics.render();
    assert!(
        text.contains("cem_bridge_messages_duplicate_total{connector=\"committed\"} 2"),
        "{text}"
    );
    assert!(!text.contains("rolled-back"), "{text}");
    store.close().await;
    db.cleanup().await;
}

both_backends!(
    counts_are_emitted_only_when_the_transaction_commits,
    retention_prunes_old_touches_and_patients_but_never_deceased_or_aliases,
    trace_follows_message_job_and_pseudonym,
    scheduled_rows_found_by_creating_message,
    dead_letters_newest_first_and_by_id,
    pending_summary_counts_pending_jobs_only,
    retention_prunes_old_rows_in_batches_and_never_pending_jobs,
    size_caps_prune_the_oldest_rows_and_never_pending_jobs,
);
