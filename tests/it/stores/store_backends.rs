//! The store suite, run against both backends: embedded SQLite and the local PostgreSQL
//! (a fresh database per test). Same SQL, same expectations (DESIGN: one code path).

use std::collections::HashSet;

use crate::common::*;
use cem_bridge::store::claim::JobOutcome;
use cem_bridge::store::{
    AuditEntry, InboxResult, JobInsert, NewJob, Store, StoreError, StoreOptions,
};
use sqlx::Executor;

fn job(id: &str, due: i64) -> NewJob<'_> {
    crate::common::job(id, "pk_x", "m", due)
}

/// R-EVT-4 and R-SRV-5 in the store: new / duplicate / conflict; a job id is created once.
async fn dedupe_and_job_identity(db: Db) {
    let store = db.open().await;
    let mut tx = store.begin().await.unwrap();
    assert_eq!(
        tx.record_inbox("adt", "HIS|H|1", "h1", "1", "REGISTERED", 1)
            .await
            .unwrap(),
        InboxResult::New
    );
    assert_eq!(
        tx.record_inbox("adt", "HIS|H|1", "h1", "1", "REGISTERED", 2)
            .await
            .unwrap(),
        InboxResult::Duplicate
    );
    assert_eq!(
        tx.record_inbox("adt", "HIS|H|1", "h2", "1", "REGISTERED", 3)
            .await
            .unwrap(),
        InboxResult::Conflict
    );
    assert_eq!(
        tx.record_inbox("other", "HIS|H|1", "h2", "1", "REGISTERED", 3)
            .await
            .unwrap(),
        InboxResult::New,
        "per connector"
    );
    assert_eq!(
        tx.insert_job(&job("j1", 10), 1).await.unwrap(),
        JobInsert::Created
    );
    assert_eq!(
        tx.insert_job(&job("j1", 99), 2).await.unwrap(),
        JobInsert::Exists {
            status: "pending".into()
        }
    );
    tx.audit(&AuditEntry {
        action: "scheduled",
        job_id: Some("j1"),
        ..Default::default()
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let jobs = store.jobs().await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].due_at, 10, "the first job stays as it was");
    assert_eq!(store.inbox_count().await.unwrap(), 2);
    // A rolled-back transaction leaves nothing.
    let mut tx = store.begin().await.unwrap();
    tx.record_inbox("adt", "HIS|H|2", "h", "2", "REGISTERED", 1)
        .await
        .unwrap();
    drop(tx);
    assert_eq!(store.inbox_count().await.unwrap(), 2);
    store.close().await;
    db.cleanup().await;
}

/// Issue 17: a batch's message keys in one statement and its new jobs, vault records and audit
/// rows held for one statement per table answer exactly as one statement per message would
/// (R-EVT-4, R-SRV-5), and a later statement of the transaction sees what was held.
async fn batched_writes_answer_as_one_by_one(db: Db) {
    let store = db.open().await;
    let mut tx = store.begin().await.unwrap();
    tx.record_inbox("adt", "K0", "h0", "0", "REGISTERED", 1)
        .await
        .unwrap();
    tx.insert_job(&job("j-old", 5), 1).await.unwrap();
    tx.commit().await.unwrap();

    let mut tx = store.begin().await.unwrap();
    let got = tx
        .record_inbox_batch(
            "adt",
            &[
                ("K1", "h1", "1", "REGISTERED"),
                ("K1", "h1", "1", "REGISTERED"),
                ("K1", "hX", "1", "REGISTERED"),
                ("K0", "h0", "0", "REGISTERED"),
                ("K0", "hY", "0", "REGISTERED"),
                ("K2", "h2", "2", "REGISTERED"),
            ],
            2,
        )
        .await
        .unwrap();
    use InboxResult::*;
    assert_eq!(
        got,
        vec![New, Duplicate, Conflict, Duplicate, Conflict, New]
    );
    tx.read_absent_jobs(&["j-new", "j-old"]).await.unwrap();
    assert_eq!(
        tx.insert_job(&job("j-new", 10), 2).await.unwrap(),
        JobInsert::Created
    );
    assert_eq!(
        tx.insert_job(&job("j-old", 10), 2).await.unwrap(),
        JobInsert::Exists {
            status: "pending".into()
        },
        "read as present: the usual statement"
    );
    for action in ["first", "second"] {
        tx.audit(&AuditEntry {
            action,
            job_id: Some("j-new"),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    // A later statement sees the held job: cancelling its visit cancels it.
    let cancelled = tx.cancel_visit("vk_x", "visit_cancelled", 3).await.unwrap();
    tx.audit(&AuditEntry {
        action: "third",
        job_id: Some("j-new"),
        ..Default::default()
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert!(
        cancelled.cancelled.iter().any(|j| j == "j-new"),
        "{cancelled:?}"
    );
    assert_eq!(store.inbox_count().await.unwrap(), 3);
    let audit: Vec<String> = store
        .audit(Some("j-new"))
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.action)
        .collect();
    assert_eq!(
        audit,
        ["first", "second", "third"],
        "audit rows keep their order"
    );
    let jobs = store.jobs().await.unwrap();
    assert_eq!(jobs.len(), 2);
    assert!(
        jobs.iter()
            .any(|j| j.job_id == "j-new" && j.status == "cancelled")
    );
    store.close().await;
    db.cleanup().await;
}

/// Issue 17, PostgreSQL with two instances: a job read as absent that another instance writes
/// before this batch's held insert fails the batch (written again, it is found), never counts
/// it twice.
async fn a_job_written_concurrently_fails_the_batch(db: Db) {
    let store = db.open().await;
    if store.backend() != cem_bridge::store::Backend::Postgres {
        // SQLite: one writer at a time, the race cannot happen.
        store.close().await;
        db.cleanup().await;
        return;
    }
    let mut a = store.begin().await.unwrap();
    a.read_absent_jobs(&["j-race"]).await.unwrap();
    let mut b = store.begin().await.unwrap();
    b.insert_job(&job("j-race", 10), 1).await.unwrap();
    b.commit().await.unwrap();
    assert_eq!(
        a.insert_job(&job("j-race", 10), 2).await.unwrap(),
        JobInsert::Created
    );
    let err = a
        .commit()
        .await
        .expect_err("the held insert finds the job written");
    assert!(matches!(err, StoreError::Raced { .. }), "{err}");
    assert_eq!(store.jobs().await.unwrap().len(), 1);
    store.close().await;
    db.cleanup().await;
}

/// Claims are leases: 4 concurrent claimers never get the same job, a claimed job is not
/// claimed again before its lease ends, and is after it.
async fn concurrent_claims_never_double_claim(db: Db) {
    let store = db.open().await;
    let mut tx = store.begin().await.unwrap();
    let ids: Vec<String> = (0..200).map(|i| format!("job{i:03}")).collect();
    for id in &ids {
        tx.insert_job(&job(id, 5), 1).await.unwrap();
    }
    tx.commit().await.unwrap();
    let mut handles = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = store
                    .claim_due(&format!("w{w}"), 100, 10_000, 7, None)
                    .await
                    .unwrap()
                    .jobs;
                if got.is_empty() {
                    break;
                }
                mine.extend(got.into_iter().map(|j| j.job_id));
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 200, "every job claimed");
    assert_eq!(unique.len(), 200, "no job claimed twice");
    assert!(
        store
            .claim_due("late", 9_999, 20_000, 10, None)
            .await
            .unwrap()
            .jobs
            .is_empty(),
        "lease holds"
    );
    let again = store
        .claim_due("late", 10_000, 20_000, 500, None)
        .await
        .unwrap()
        .jobs;
    assert_eq!(again.len(), 200, "claimable again once the lease ended");
    assert!(again.iter().all(|j| j.attempts == 2));
    // Only the lease owner can finish a job.
    assert!(
        !store.mark_sent("job000", "w0", 10_001, 200).await.unwrap(),
        "not the owner any more"
    );
    assert!(
        store
            .mark_sent("job000", "late", 10_001, 200)
            .await
            .unwrap()
    );
    store
        .reschedule("job001", "late", 10_001, 50_000, Some(503), "HTTP 503")
        .await
        .unwrap();
    store
        .mark_dead("job002", "late", 10_001, Some(400), "rejected", "HTTP 400")
        .await
        .unwrap();
    let jobs = store.jobs().await.unwrap();
    let by = |id: &str| jobs.iter().find(|j| j.job_id == id).unwrap().clone();
    assert_eq!(by("job000").status, "sent");
    assert_eq!(by("job001").status, "pending");
    assert_eq!(
        (by("job002").status.as_str(), by("job002").reason.as_deref()),
        ("dead", Some("rejected"))
    );
    assert!(
        store
            .claim_due("x", 49_999, 60_000, 500, None)
            .await
            .unwrap()
            .jobs
            .iter()
            .all(|j| j.job_id != "job001"),
        "backoff respected"
    );
    store.close().await;
    db.cleanup().await;
}

/// Opening twice migrates once; a schema newer than the binary is a clear error.
async fn migrations_are_idempotent_and_newer_schema_is_refused(db: Db) {
    let store = db.open().await;
    store.close().await;
    let store = db.open().await;
    store.close().await;
    sqlx::any::install_default_drivers();
    let url = if db.url.starts_with("sqlite") {
        format!("{}?mode=rw", db.url)
    } else {
        db.url.clone()
    };
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    pool.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (999, 0)")
        .await
        .unwrap();
    pool.close().await;
    match Store::open(&db.url, &StoreOptions::default()).await {
        Err(e @ StoreError::SchemaTooNew { found: 999, .. }) => {
            assert!(e.to_string().contains("newer than this binary"), "{e}");
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a newer schema must be refused"),
    }
    db.cleanup().await;
}

const DAY: i64 = 24 * 3_600_000;
const WINDOW: Option<i64> = Some(30 * DAY);

async fn insert_jobs(store: &Store, jobs: &[(String, String, Option<String>, String)], due: i64) {
    let mut tx = store.begin().await.unwrap();
    for (id, pk, ik, mk) in jobs {
        let j = NewJob {
            job_id: id,
            patient_key: pk,
            id_card_key: ik.as_deref(),
            mobile_key: Some(mk),
            ..job(id, due)
        };
        tx.insert_job(&j, 1).await.unwrap();
    }
    tx.commit().await.unwrap();
}

/// R-DND-3 / issue 5 §3: two schedulers on separate connection pools claim concurrently many
/// jobs for few patients; each patient gets exactly one survey, the rest are `dnd`.
async fn two_schedulers_never_both_touch_a_patient(db: Db) {
    let a = db.open().await;
    let b = db.open().await; // a second instance: its own pool
    let jobs: Vec<_> = (0..120)
        .map(|i| {
            (
                format!("job{i:03}"),
                format!("pk_{}", i % 6),
                None,
                format!("mk_{i}"),
            )
        })
        .collect();
    insert_jobs(&a, &jobs, 5).await;
    let mut handles = Vec::new();
    for (n, store) in [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .enumerate()
    {
        handles.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = store
                    .claim_due(&format!("i{n}"), 100, 10_000, 5, WINDOW)
                    .await
                    .unwrap();
                if got.jobs.is_empty() && got.suppressed == 0 {
                    break;
                }
                mine.extend(got.jobs.into_iter().map(|j| j.job_id));
            }
            mine
        }));
    }
    let mut claimed = Vec::new();
    for h in handles {
        claimed.extend(h.await.unwrap());
    }
    let patients: HashSet<String> = claimed
        .iter()
        .map(|id| jobs.iter().find(|j| &j.0 == id).unwrap().1.clone())
        .collect();
    assert_eq!(claimed.len(), 6, "one job per patient: {claimed:?}");
    assert_eq!(patients.len(), 6);
    let all = a.jobs().await.unwrap();
    assert_eq!(
        all.iter()
            .filter(|j| j.status == "suppressed" && j.reason.as_deref() == Some("dnd"))
            .count(),
        114
    );
    let audit = a.audit(None).await.unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|r| r.rule.as_deref() == Some("R-DND-1"))
            .count(),
        114
    );
    a.close().await;
    b.close().await;
    db.cleanup().await;
}

/// R-DND-1 keys: a shared mobile (family phone) or ID card (EX-16: one person, two hospitals)
/// blocks too; R-DND-4: a touch older than the window does not; R-DND-3: a permanent refusal
/// releases the reservation.
async fn dnd_keys_window_and_release(db: Db) {
    let s = db.open().await;
    let jobs = vec![
        (
            "fam1".to_string(),
            "pk_mum".to_string(),
            None,
            "mk_home".to_string(),
        ),
        (
            "fam2".to_string(),
            "pk_kid".to_string(),
            None,
            "mk_home".to_string(),
        ),
        (
            "h1".to_string(),
            "pk_h1".to_string(),
            Some("ik_same".to_string()),
            "mk_a".to_string(),
        ),
        (
            "h2".to_string(),
            "pk_h2".to_string(),
            Some("ik_same".to_string()),
            "mk_b".to_string(),
        ),
    ];
    insert_jobs(&s, &jobs, 5).await;
    let got: Vec<String> = s
        .claim_due("o", 100, 1_000, 10, WINDOW)
        .await
        .unwrap()
        .jobs
        .into_iter()
        .map(|j| j.job_id)
        .collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got.contains(&"fam1".to_string()) ^ got.contains(&"fam2".to_string()),
        "one per shared mobile"
    );
    assert!(
        got.contains(&"h1".to_string()) ^ got.contains(&"h2".to_string()),
        "one per shared ID card"
    );
    // The accepted one becomes a touch at its send time (day 0 + 100 ms).
    let sent = got.iter().find(|j| j.starts_with("fam")).unwrap().clone();
    assert!(s.mark_sent(&sent, "o", 100, 200).await.unwrap());
    // A permanent refusal releases the reservation: the patient can be surveyed again.
    let refused = got.iter().find(|j| j.starts_with('h')).unwrap().clone();
    s.mark_dead(&refused, "o", 100, Some(400), "rejected", "HTTP 400")
        .await
        .unwrap();
    let later = vec![
        (
            "h3".to_string(),
            "pk_h1".to_string(),
            Some("ik_same".to_string()),
            "mk_a".to_string(),
        ),
        (
            "mum2".to_string(),
            "pk_mum".to_string(),
            None,
            "mk_mum2".to_string(),
        ),
        (
            "mum3".to_string(),
            "pk_mum2".to_string(),
            None,
            "mk_home".to_string(),
        ),
    ];
    insert_jobs(&s, &later, 200).await;
    let got: Vec<String> = s
        .claim_due("o", 300, 1_000, 10, WINDOW)
        .await
        .unwrap()
        .jobs
        .into_iter()
        .map(|j| j.job_id)
        .collect();
    assert_eq!(
        got,
        vec!["h3".to_string()],
        "ik released; mum's pk and the home mobile still blocked"
    );
    assert!(s.mark_sent("h3", "o", 300, 200).await.unwrap());
    // R-DND-4: at exactly 30 days after the touch the window is over.
    let next = vec![(
        "mum4".to_string(),
        "pk_mum".to_string(),
        None,
        "mk_home".to_string(),
    )];
    insert_jobs(&s, &next, 100 + 30 * DAY).await;
    let early = s
        .claim_due("o", 100 + 30 * DAY - 1, 200 + 30 * DAY, 10, WINDOW)
        .await
        .unwrap()
        .jobs;
    assert!(early.is_empty(), "not due yet");
    let got = s
        .claim_due("o", 100 + 30 * DAY, 200 + 30 * DAY, 10, WINDOW)
        .await
        .unwrap()
        .jobs;
    assert_eq!(
        got.len(),
        1,
        "due at or after the end of the window may send"
    );
    s.close().await;
    db.cleanup().await;
}

/// R-CAN-2, R-CAN-6, R-EXC-1, R-EXC-3 in the store: a batch's facts read with one query per
/// table are exactly what one statement per job reads, inside the transaction that changed them
/// (a merge into a deceased survivor, a live and an expired tombstone, opt-outs by patient and
/// by mobile, and a patient with nothing stored).
async fn batch_facts_match_single_reads(db: Db) {
    use cem_pipeline::survey::FactKeys;
    let store = db.open().await;
    let now = 1_000_000;
    let mut tx = store.begin().await.unwrap();
    tx.mark_deceased("pk_survivor", now).await.unwrap();
    tx.merge_patients("pk_merged", "pk_survivor").await.unwrap();
    tx.put_tombstone("vk_live", "visit_cancelled", now + 1)
        .await
        .unwrap();
    tx.put_tombstone("vk_gone", "discharge_cancelled", now - 1)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    db.exec(
        "INSERT INTO opt_outs (opt_key, source, job_id, at) VALUES ('pk_opted', 'cem:sms', NULL, 1), ('mk_opted', 'cem:sms', NULL, 1)",
    )
    .await;
    let keys = [
        ("pk_merged", "vk_a", "mk_a"),
        ("pk_survivor", "vk_live", "mk_b"),
        ("pk_plain", "vk_gone", "mk_c"),
        ("pk_opted", "vk_b", "mk_d"),
        ("pk_other", "vk_c", "mk_opted"),
        ("pk_plain", "vk_live", "mk_c"),
    ];
    let keys: Vec<FactKeys<'_>> = keys
        .iter()
        .map(|(p, v, m)| FactKeys {
            patient_key: p,
            visit_key: v,
            mobile_key: m,
        })
        .collect();
    let mut tx = store.begin().await.unwrap();
    let batch = tx.patient_facts_batch(&keys, now).await.unwrap();
    for (k, b) in keys.iter().zip(&batch) {
        assert_eq!(b, &tx.patient_facts(k, now).await.unwrap(), "{k:?}");
    }
    assert_eq!(batch[0].survivor.as_deref(), Some("pk_survivor"));
    assert!(
        batch[0].deceased && batch[1].deceased,
        "the survivor's flag counts"
    );
    assert!(batch[1].tombstone.is_some() && batch[2].tombstone.is_none());
    assert!(batch[3].opted_out && batch[4].opted_out && !batch[2].opted_out);
    assert_eq!(batch[2], cem_pipeline::survey::PatientFacts::default());
    tx.commit().await.unwrap();
    store.close().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_batch_facts_match_single_reads() {
    batch_facts_match_single_reads(Db::sqlite("s-facts").await).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_batch_facts_match_single_reads() {
    batch_facts_match_single_reads(Db::postgres("p_facts").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_two_schedulers_never_both_touch_a_patient() {
    two_schedulers_never_both_touch_a_patient(Db::sqlite("s-dnd2").await).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_schedulers_never_both_touch_a_patient() {
    two_schedulers_never_both_touch_a_patient(Db::postgres("p_dnd2").await).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_dnd_keys_window_and_release() {
    dnd_keys_window_and_release(Db::sqlite("s-dndk").await).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_dnd_keys_window_and_release() {
    dnd_keys_window_and_release(Db::postgres("p_dndk").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_dedupe_and_job_identity() {
    dedupe_and_job_identity(Db::sqlite("s-dedupe").await).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_dedupe_and_job_identity() {
    dedupe_and_job_identity(Db::postgres("p_dedupe").await).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_batched_writes_answer_as_one_by_one() {
    batched_writes_answer_as_one_by_one(Db::sqlite("s-batched").await).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_batched_writes_answer_as_one_by_one() {
    batched_writes_answer_as_one_by_one(Db::postgres("p_batched").await).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_job_written_concurrently_fails_the_batch() {
    a_job_written_concurrently_fails_the_batch(Db::postgres("p_jobrace").await).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_concurrent_claims_never_double_claim() {
    concurrent_claims_never_double_claim(Db::sqlite("s-claims").await).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_claims_never_double_claim() {
    concurrent_claims_never_double_claim(Db::postgres("p_claims").await).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_migrations_and_newer_schema() {
    migrations_are_idempotent_and_newer_schema_is_refused(Db::sqlite("s-mig").await).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migrations_and_newer_schema() {
    migrations_are_idempotent_and_newer_schema_is_refused(Db::postgres("p_mig").await).await;
}

/// The embedded store runs in WAL mode (issue 3 §7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_uses_wal() {
    let db = Db::sqlite("s-wal").await;
    let store = db.open().await;
    assert_eq!(
        store.sqlite_journal_mode().await.unwrap().as_deref(),
        Some("wal")
    );
    store.close().await;
}

/// The WAL is copied into the database file by the checkpoint task, not inside commits: a
/// PASSIVE checkpoint with no reader copies every page the log holds, and the next commit
/// starts the log over, so the log stays as small as one period's writes (issue 17).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_checkpoints_copy_the_log_and_keep_it_short() {
    let db = Db::sqlite("s-ckpt").await;
    let store = db.open().await;
    let wal = db.dir.as_ref().unwrap().join("store.db-wal");
    let jobs = |from: usize| -> Vec<(String, String, Option<String>, String)> {
        (from..from + 300)
            .map(|i| (format!("j{i}"), format!("pk{i}"), None, format!("m{i}")))
            .collect()
    };
    insert_jobs(&store, &jobs(0), 1).await;
    let first = store
        .checkpoint()
        .await
        .unwrap()
        .expect("SQLite checkpoints");
    assert!(first.log_pages > 0, "{first:?}");
    assert_eq!(
        first.copied_pages, first.log_pages,
        "no reader: every page copied"
    );
    let wal_len = std::fs::metadata(&wal).unwrap().len();
    // The log starts over after a complete checkpoint: the second batch's pages are counted
    // from its start, and the file does not grow past what the first batch used.
    insert_jobs(&store, &jobs(300), 1).await;
    let second = store
        .checkpoint()
        .await
        .unwrap()
        .expect("SQLite checkpoints");
    assert!(
        second.log_pages > 0 && second.log_pages <= first.log_pages + 8,
        "the log started over: {first:?} then {second:?}"
    );
    assert_eq!(second.copied_pages, second.log_pages);
    assert!(std::fs::metadata(&wal).unwrap().len() <= wal_len + 8 * 4096 + 32);
    assert_eq!(store.jobs().await.unwrap().len(), 600);
    store.close().await;
    db.cleanup().await;
}

/// PostgreSQL checkpoints by itself: nothing to do, and the task ends at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_has_no_wal_checkpoint_task() {
    let db = Db::postgres("p_ckpt").await;
    let store = db.open().await;
    assert_eq!(store.checkpoint().await.unwrap(), None);
    let (_trigger, shutdown) = cem_bridge::process::shutdown::channel();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        cem_bridge::store::checkpoint::run(store.clone(), shutdown),
    )
    .await
    .expect("returns at once on PostgreSQL");
    store.close().await;
    db.cleanup().await;
}

/// An unreachable database is a clear error naming the URL without its password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_postgres_is_a_clear_error() {
    let opts = StoreOptions {
        connect_timeout: std::time::Duration::from_secs(2),
        ..Default::default()
    };
    let e = match Store::open("postgres://u:secret@127.0.0.1:1/none", &opts).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("port 1 has no PostgreSQL"),
    };
    assert!(
        e.contains("cannot open") && e.contains("u:***@127.0.0.1:1"),
        "{e}"
    );
    assert!(!e.contains("secret"), "{e}");
}

/// R-SRV-4 with R-SRV-6 (issue 19 §1), on both backends: a survey found past its stale time
/// in the claim — its first attempt failed and the retry came after the limit — is
/// `suppressed(stale_event)` with an audit row saying it was found at send time, its
/// reservation is released (another survey to the same mobile goes out in the same batch),
/// and a follow-up step (no stale time) is sent however late.
async fn a_survey_found_stale_at_send_time_is_suppressed(db: Db) {
    let s = db.open().await;
    let mut tx = s.begin().await.unwrap();
    tx.insert_job(
        &NewJob {
            patient_key: "pk_old",
            mobile_key: Some("mk_shared"),
            stale_at: Some(5_000),
            ..job("old", 100)
        },
        1,
    )
    .await
    .unwrap();
    tx.insert_job(
        &NewJob {
            dnd: false,
            ..job("step", 100)
        },
        1,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let first = s.claim_due("o", 100, 1_000, 10, WINDOW).await.unwrap();
    assert_eq!(first.jobs.len(), 2);
    assert!(s.mark_sent("step", "o", 100, 200).await.unwrap());
    // The CEM was down: retry after the stale time.
    s.reschedule("old", "o", 100, 6_000, Some(503), "HTTP 503")
        .await
        .unwrap();
    let mut tx = s.begin().await.unwrap();
    tx.insert_job(
        &NewJob {
            patient_key: "pk_other",
            mobile_key: Some("mk_shared"),
            stale_at: Some(100_000),
            ..job("other", 6_000)
        },
        1,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let again = s.claim_due("o", 6_000, 7_000, 10, WINDOW).await.unwrap();
    assert_eq!(again.stale, 1);
    let ids: Vec<&str> = again.jobs.iter().map(|j| j.job_id.as_str()).collect();
    assert_eq!(ids, ["other"], "the released reservation blocks nobody");
    let row = db
        .count("SELECT COUNT(*) AS n FROM survey_jobs WHERE job_id = 'old' AND status = 'suppressed' AND reason = 'stale_event'")
        .await;
    assert_eq!(row, 1);
    let audited = db
        .count("SELECT COUNT(*) AS n FROM audit WHERE job_id = 'old' AND action = 'suppressed' AND rule = 'R-SRV-4' AND detail LIKE 'found at send time%'")
        .await;
    assert_eq!(audited, 1);
    let held = db
        .count("SELECT COUNT(*) AS n FROM touches WHERE job_id = 'old'")
        .await;
    assert_eq!(held, 0, "its reservation is released");
    s.close().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_r_srv_4_a_survey_found_stale_at_send_time_is_suppressed() {
    a_survey_found_stale_at_send_time_is_suppressed(Db::sqlite("s-stale").await).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_r_srv_4_a_survey_found_stale_at_send_time_is_suppressed() {
    a_survey_found_stale_at_send_time_is_suppressed(Db::postgres("p_stale").await).await;
}

/// R-SRV-5 / R-DND-3 for a batch of push outcomes: each accepted push of the owner is `sent`
/// with its HTTP status and one audit row, and its reservation becomes the touch at the send
/// time; a job whose lease passed to another owner is not recorded; a job reported twice in
/// one batch (accepted and to be retried) is `sent` once.
async fn a_batch_of_outcomes_is_recorded_once_per_job(db: Db) {
    let s = db.open().await;
    let jobs: Vec<_> = (0..5)
        .map(|i| {
            (
                format!("b{i}"),
                format!("pk_b{i}"),
                None,
                format!("mk_b{i}"),
            )
        })
        .collect();
    insert_jobs(&s, &jobs, 5).await;
    let mine = s.claim_due("o", 100, 1_000, 4, WINDOW).await.unwrap().jobs;
    assert_eq!(mine.len(), 4);
    let theirs = s.claim_due("p", 100, 1_000, 4, WINDOW).await.unwrap().jobs;
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].job_id, "b4");
    let sent = |id: &str, status: u16| JobOutcome::Sent {
        job_id: id.to_string(),
        status,
    };
    let outcomes = vec![
        sent("b0", 200),
        sent("b1", 201),
        sent("b4", 200),
        JobOutcome::Retry {
            job_id: "b2".into(),
            next_at: 9_000,
            status: Some(503),
            error: "HTTP 503".into(),
        },
        sent("b2", 200),
        JobOutcome::Dead {
            job_id: "b3".into(),
            status: Some(400),
            reason: "rejected",
            error: "HTTP 400".into(),
        },
    ];
    let applied = s.record_outcomes("o", 500, &outcomes).await.unwrap();
    assert_eq!(applied, vec![true, true, false, false, true, true]);
    let jobs = s.jobs().await.unwrap();
    let by = |id: &str| jobs.iter().find(|j| j.job_id == id).unwrap().clone();
    assert_eq!(
        (by("b0").status.as_str(), by("b0").sent_at),
        ("sent", Some(500))
    );
    assert_eq!(by("b0").last_status, Some(200));
    assert_eq!(by("b1").last_status, Some(201));
    assert_eq!(by("b2").status, "sent");
    assert_eq!(by("b3").status, "dead");
    assert_eq!(by("b4").status, "pending", "another owner's lease");
    for (id, want) in [
        ("b0", vec!["sent"]),
        ("b2", vec!["sent"]),
        ("b3", vec!["dead"]),
    ] {
        let got: Vec<String> = s
            .audit(Some(id))
            .await
            .unwrap()
            .into_iter()
            .filter(|a| a.job_id.as_deref() == Some(id) && a.message_id.is_none())
            .map(|a| a.action)
            .collect();
        assert_eq!(got, want, "audit of {id}");
    }
    assert!(
        s.audit(Some("b4"))
            .await
            .unwrap()
            .iter()
            .all(|a| a.message_id.is_some())
    );
    // The accepted pushes' reservations are touches at the send time; the refused one's is
    // released; the other owner's keeps its claim time.
    assert_eq!(
        db.count("SELECT COUNT(*) AS n FROM touches WHERE last_sent = 500")
            .await,
        6,
        "pk_ and mk_ of b0, b1, b2"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) AS n FROM touches WHERE job_id = 'b3'")
            .await,
        0
    );
    assert_eq!(
        db.count("SELECT COUNT(*) AS n FROM touches WHERE job_id = 'b4' AND last_sent = 100")
            .await,
        2
    );
    s.close().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_r_srv_5_a_batch_of_outcomes_is_recorded_once_per_job() {
    a_batch_of_outcomes_is_recorded_once_per_job(Db::sqlite("s-outcomes").await).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_r_srv_5_a_batch_of_outcomes_is_recorded_once_per_job() {
    a_batch_of_outcomes_is_recorded_once_per_job(Db::postgres("p_outcomes").await).await;
}
