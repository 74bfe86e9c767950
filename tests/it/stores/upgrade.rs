//! Upgrading a store made by the first release (issue 20 §9): its schema — `0001_init.sql` as
//! commit 291be9e shipped it, version 1 recorded — with rows written the way that binary wrote
//! them, opened by today's binary on SQLite and PostgreSQL. The migrations must run, the old
//! rows stay readable through today's API, and today's writes (which use tables and columns
//! the first release did not have) work.

use crate::common::*;
use cem_bridge::store::{InboxResult, NewJob};

const SQLITE: &str = include_str!("../../fixtures/stores/first_release_sqlite.sql");
const POSTGRES: &str = include_str!("../../fixtures/stores/first_release_postgres.sql");

const DAY: i64 = 24 * 3_600_000;

/// What the first release's binary did on an empty database, then a message it took: an inbox
/// row, a pending survey job with its audit row, and a dead letter.
async fn first_release_store(db: &Db, schema: &str) {
    sqlx::any::install_default_drivers();
    if let Some(dir) = &db.dir {
        // The first release created the SQLite file itself.
        std::fs::create_dir_all(dir).unwrap();
        std::fs::File::create(dir.join("store.db")).unwrap();
    }
    db.exec(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .await;
    db.exec(schema).await;
    db.exec("INSERT INTO schema_migrations (version, applied_at) VALUES (1, 1)")
        .await;
    db.exec(
        "INSERT INTO inbox (connector, message_key, content_hash, message_id, event, received_at) \
         VALUES ('adt', 'HIS|H|OLD1', 'h-old', 'MSGOLD1', 'REGISTERED', 900)",
    )
    .await;
    db.exec(
        "INSERT INTO survey_jobs (job_id, template, patient_key, visit_key, status, due_at, \
         next_attempt_at, payload, connector, message_id, created_at, updated_at) \
         VALUES ('sv_old1', 'OP-SAT-01', 'pk_old', 'vk_old', 'pending', 1000, 1000, '{}', 'adt', \
         'MSGOLD1', 900, 900)",
    )
    .await;
    db.exec(
        "INSERT INTO audit (at, connector, message_id, job_id, patient_key, action, rule, reason, detail) \
         VALUES (900, 'adt', 'MSGOLD1', 'sv_old1', 'pk_old', 'scheduled', 'R-SRV-1', NULL, 'OP-SAT-01')",
    )
    .await;
    // A job created by MSGOLD3, cancelled, and recorded again by MSGOLD4 (R-CAN-3), which
    // moved its `message_id`: version 10 finds its `scheduled` row through `created_by`.
    db.exec(
        "INSERT INTO survey_jobs (job_id, template, patient_key, visit_key, status, due_at, \
         next_attempt_at, payload, connector, message_id, created_at, updated_at) \
         VALUES ('sv_old2', 'IP-DIS-01', 'pk_old2', 'vk_old2', 'sent', 1000, 1000, '{}', 'adt', \
         'MSGOLD4', 900, 990)",
    )
    .await;
    db.exec(
        "INSERT INTO audit (at, connector, message_id, job_id, patient_key, action, rule, reason, detail) \
         VALUES (900, 'adt', 'MSGOLD3', 'sv_old2', 'pk_old2', 'scheduled', 'R-SRV-5', NULL, 'IP-DIS-01'), \
         (950, 'adt', 'MSGOLD4', 'sv_old2', 'pk_old2', 'reactivated', 'R-CAN-3', 'discharge_recorded_again', 'IP-DIS-01')",
    )
    .await;
    db.exec(
        "INSERT INTO dead_letters (at, connector, message_id, reason, detail, content_hash, size_bytes, delivery_count) \
         VALUES (950, 'adt', 'MSGOLD2', 'truncated', 'no PID segment', 'h-bad', 42, 1)",
    )
    .await;
}

async fn first_release_store_upgrades(db: Db, schema: &str) {
    first_release_store(&db, schema).await;
    let store = db.open().await;

    // Migrated to this binary's version.
    let latest = db
        .count("SELECT MAX(version) AS n FROM schema_migrations")
        .await;
    assert_eq!(
        latest,
        cem_bridge::store::SCHEMA_VERSION,
        "every migration ran"
    );

    // The old rows, through today's API.
    let trace = store.trace("MSGOLD1").await.unwrap();
    assert_eq!(trace.jobs.len(), 1, "{trace:?}");
    assert_eq!(
        (trace.jobs[0].job_id.as_str(), trace.jobs[0].status.as_str()),
        ("sv_old1", "pending")
    );
    assert_eq!(trace.audit.len(), 1, "{trace:?}");
    assert_eq!(trace.audit[0].action, "scheduled");
    for key in ["sv_old2", "pk_old2"] {
        let actions = audit_of(&store, key).await;
        assert_eq!(
            actions,
            [
                ("scheduled".to_string(), Some("MSGOLD3".to_string())),
                ("reactivated".to_string(), Some("MSGOLD4".to_string()))
            ],
            "{key}"
        );
    }
    let dead = store.recent_dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (
            dead[0].message_id.as_deref(),
            dead[0].reason.as_str(),
            dead[0].replayed_at
        ),
        (Some("MSGOLD2"), "truncated", None)
    );
    let counts = store.job_counts().await.unwrap();
    assert!(
        counts.iter().any(|c| c.status == "pending" && c.count == 1),
        "{counts:?}"
    );

    // The same message again is a duplicate of the old inbox row; a new one and its job (with
    // the ID-card and mobile keys the first release did not store) are written.
    let mut tx = store.begin().await.unwrap();
    assert_eq!(
        tx.record_inbox("adt", "HIS|H|OLD1", "h-old", "MSGOLD1", "REGISTERED", 2_000)
            .await
            .unwrap(),
        InboxResult::Duplicate
    );
    assert_eq!(
        tx.record_inbox("adt", "HIS|H|NEW1", "h-new", "MSGNEW1", "REGISTERED", 2_000)
            .await
            .unwrap(),
        InboxResult::New
    );
    let new = NewJob {
        id_card_key: Some("ik_new"),
        mobile_key: Some("mk_new"),
        ..job("sv_new1", "pk_new", "MSGNEW1", 1_500)
    };
    tx.insert_job(&new, 2_000).await.unwrap();
    tx.commit().await.unwrap();

    // Claiming with do-not-disturb reserves touches (a table the first release lacked): both
    // the old job and the new one go out.
    let claimed = store
        .claim_due("upgrade", 3_000, 60_000, 10, Some(30 * DAY))
        .await
        .unwrap();
    let mut ids: Vec<&str> = claimed.jobs.iter().map(|j| j.job_id.as_str()).collect();
    ids.sort();
    assert_eq!(
        ids,
        ["sv_new1", "sv_old1"],
        "suppressed {}",
        claimed.suppressed
    );
    let mk = claimed.jobs.iter().find(|j| j.job_id == "sv_new1").unwrap();
    assert_eq!(mk.mobile_key.as_deref(), Some("mk_new"));
    // Replaying the old dead letter records when (a column added to migration 4 later).
    store
        .mark_replayed(dead[0].id, "cem.his.adt", 4_000)
        .await
        .unwrap();
    let dead = store.recent_dead_letters(10).await.unwrap();
    assert_eq!(dead[0].replayed_at, Some(4_000));

    // Opening again changes nothing.
    store.close().await;
    let store = db.open().await;
    store.close().await;
    db.cleanup().await;
}

#[tokio::test]
async fn sqlite_first_release_store_upgrades() {
    first_release_store_upgrades(Db::sqlite("upgrade").await, SQLITE).await;
}

#[tokio::test]
async fn postgres_first_release_store_upgrades() {
    first_release_store_upgrades(Db::postgres("upgrade").await, POSTGRES).await;
}
