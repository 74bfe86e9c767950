//! The ticket store under concurrency, on both backends (R-TKT-8): two bridge instances
//! accepting the versions of one ticket in scrambled order apply each exactly once and in
//! order, and two senders claiming the outbox never send update n+1 before update n is done.

use std::sync::{Arc, Mutex};

use crate::common::*;
use cem_bridge::privacy::vault::VaultCipher;
use cem_bridge::store::Store;
use cem_bridge::store::tickets::{Accepted, OutboxOutcome, TicketCtx};
use cem_pipeline::ticket::{Calendar, CallingWindows, TicketUpdate};
use sqlx::Row;

const VERSIONS: u32 = 20;

fn ctx() -> TicketCtx {
    TicketCtx {
        cipher: VaultCipher::new(("tv1", &TEST_VAULT_KEY), &[]).unwrap(),
        zone: cem_pipeline::time::default_zone(),
        calendar: Calendar::default(),
        windows: CallingWindows::default(),
        gap_hold_ms: 600_000,
        cem_results: false,
    }
}

fn body(id: &str, v: u32) -> String {
    if v == 1 {
        return String::from_utf8(read_fixture("tickets/created_low_score.json"))
            .unwrap()
            .replace("TK-20261121-0042", id);
    }
    let status = if v.is_multiple_of(2) {
        "ASSIGNED"
    } else {
        "IN_PROGRESS"
    };
    serde_json::json!({
        "ticketId": id, "version": v, "status": status,
        "updatedAt": "2026-11-21T10:20:00+08:00"
    })
    .to_string()
}

fn now() -> i64 {
    CLOCK_START
        .parse::<jiff::Timestamp>()
        .unwrap()
        .as_millisecond()
}

async fn accept_all(store: Store, id: String, versions: Vec<u32>) -> Vec<Accepted> {
    let ctx = ctx();
    let mut out = Vec::new();
    for v in versions {
        let b = body(&id, v);
        let u = TicketUpdate::parse(b.as_bytes()).unwrap();
        out.push(
            store
                .ticket_accept(&ctx, &u, b.as_bytes(), None, now())
                .await
                .expect("accepted"),
        );
    }
    out
}

async fn two_instances_apply_in_order_and_send_in_order(db: Db) {
    let (a, b) = (db.open().await, db.open().await);
    let id = unique("TKC");
    // Scrambled: highest first, alternating between the two instances.
    let order: Vec<u32> = (1..=VERSIONS).rev().collect();
    let (to_a, to_b): (Vec<u32>, Vec<u32>) = order.iter().partition(|v| v.is_multiple_of(2));
    let (ra, rb) = tokio::join!(
        accept_all(a.clone(), id.clone(), to_a),
        accept_all(b.clone(), id.clone(), to_b)
    );
    let applied: usize = ra
        .iter()
        .chain(&rb)
        .map(|r| match r {
            Accepted::Applied(v) => v.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(
        applied, VERSIONS as usize,
        "each version applied exactly once"
    );
    let pool = sqlx::AnyPool::connect(&db.url).await.unwrap();
    let states: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT state FROM ticket_versions WHERE ticket_id = '{id}' ORDER BY version"
    )))
    .fetch_all(&pool)
    .await
    .unwrap()
    .iter()
    .map(|r| r.get("state"))
    .collect();
    assert_eq!(states, vec!["applied".to_string(); VERSIONS as usize]);
    let queued: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT idem_key FROM ticket_outbox WHERE ticket_id = '{id}' AND sink = 'hcrm' ORDER BY id"
    )))
    .fetch_all(&pool)
    .await
    .unwrap()
    .iter()
    .map(|r| r.get("idem_key"))
    .collect();
    let expected: Vec<String> = (1..=VERSIONS)
        .map(|v| format!("tk:{id}:{v}:hcrm"))
        .collect();
    assert_eq!(queued, expected, "queued in version order");
    pool.close().await;

    // Two senders claim concurrently; each records its claims at once.
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let sender = |store: Store, owner: &'static str, log: Arc<Mutex<Vec<String>>>| async move {
        for _ in 0..400 {
            let rows = store
                .outbox_claim(owner, now(), now() + 60_000, 5)
                .await
                .unwrap();
            let hcrm: Vec<_> = rows.iter().filter(|r| r.sink == "hcrm").collect();
            assert!(
                hcrm.len() <= 1,
                "one update of a ticket in flight at a time"
            );
            for r in &rows {
                if r.sink == "hcrm" {
                    log.lock().unwrap().push(r.idem_key.clone());
                }
                store
                    .outbox_record(owner, r.id, &OutboxOutcome::Sent { status: 200 }, now())
                    .await
                    .unwrap();
            }
            if log.lock().unwrap().len() == VERSIONS as usize {
                break;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::join!(
        sender(a.clone(), "one", log.clone()),
        sender(b.clone(), "two", log.clone())
    );
    assert_eq!(*log.lock().unwrap(), expected, "sent strictly in order");
    a.close().await;
    b.close().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_two_instances_apply_and_send_tickets_in_order() {
    two_instances_apply_in_order_and_send_in_order(Db::sqlite("tk-order").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_instances_apply_and_send_tickets_in_order() {
    two_instances_apply_in_order_and_send_in_order(Db::postgres("tk_order").await).await;
}

/// R-FUP-3 / R-FUP-4 on both backends: a stay's follow-up calls are written, cancelled by an
/// A13, brought back by the new discharge under the same keys (a step already sent stays
/// sent), and "a call today" counts other calls but not an earlier attempt of the same step.
async fn follow_up_steps_replan_and_count_calls(db: Db) {
    use cem_bridge::store::followups::local_day;
    use cem_pipeline::followup::{FollowupPlan, Plan, PlannedStep, StepAction, step_key};
    let store = db.open().await;
    let c = ctx();
    let stay = unique("vk_stay");
    let pk = unique("pk_fu");
    let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
    // Issue 19 §5: the first plan is written as an earlier release named its steps (`d7`,
    // `d27`); the re-plan after the upgrade names them as the rules do (`postop_d7`,
    // `review_reminder`) and must find the stored steps under their old keys.
    let plan = |d7: &str, d27: &str, upgraded: bool| FollowupPlan {
        plan: Plan::Postop721,
        stay_key: stay.clone(),
        patient_key: pk.clone(),
        id_card_key: None,
        mobile_key: "mk_x".into(),
        callee_key: pk.clone(),
        steps: vec![
            PlannedStep {
                key: step_key(
                    &stay,
                    Plan::Postop721,
                    if upgraded { "postop_d7" } else { "d7" },
                ),
                legacy_key: step_key(&stay, Plan::Postop721, "d7"),
                step: "postop_d7",
                due_at: at(d7),
                action: StepAction::Call { scene: "postop_d7" },
            },
            PlannedStep {
                key: step_key(
                    &stay,
                    Plan::Postop721,
                    if upgraded { "review_reminder" } else { "d27" },
                ),
                legacy_key: step_key(&stay, Plan::Postop721, "d27"),
                step: "review_reminder",
                due_at: at(d27),
                action: StepAction::Call {
                    scene: "review_reminder",
                },
            },
        ],
    };
    let write = |p: FollowupPlan| {
        let store = store.clone();
        let cipher = c.cipher.clone();
        async move {
            let mut tx = store.begin().await.unwrap();
            let done = tx
                .followup_plan(
                    &cipher,
                    &CallingWindows::default(),
                    &p,
                    "adt",
                    "m1",
                    &cem_pipeline::time::default_zone(),
                    now(),
                )
                .await
                .unwrap();
            tx.commit().await.unwrap();
            done
        }
    };
    let rows = || {
        let store = store.clone();
        let stay = stay.clone();
        async move {
            let mut out: Vec<(String, String, i64)> = Vec::new();
            for key in ["d7", "d27"] {
                let k = step_key(&stay, Plan::Postop721, key);
                let r = store.outbox_row_state(&k).await.unwrap().unwrap();
                out.push((key.to_string(), r.0, r.1));
            }
            out
        }
    };
    let first = write(plan("2026-11-27T02:00:00Z", "2026-12-17T02:00:00Z", false)).await;
    assert_eq!(first.scheduled, 2);
    // Mark d7 sent, then the A13 cancels what is pending.
    let d7 = step_key(&stay, Plan::Postop721, "d7");
    let claimed = store
        .outbox_claim(
            "t",
            at("2026-11-27T02:00:00Z").as_millisecond(),
            i64::MAX,
            10,
        )
        .await
        .unwrap();
    let row = claimed.iter().find(|r| r.idem_key == d7).expect("d7 due");
    store
        .outbox_record(
            "t",
            row.id,
            &OutboxOutcome::Sent { status: 200 },
            at("2026-11-27T02:00:05Z").as_millisecond(),
        )
        .await
        .unwrap();
    let mut tx = store.begin().await.unwrap();
    let cancel = tx
        .cancel_visit(&stay, "discharge_cancelled", now())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(cancel.followup_calls, 1, "only the pending d27");
    let again = write(plan("2026-11-29T02:00:00Z", "2026-12-19T02:00:00Z", true)).await;
    assert_eq!((again.scheduled, again.kept), (1, 1));
    let renamed = db
        .count(&format!(
            "SELECT COUNT(*) AS n FROM ticket_outbox WHERE idem_key LIKE '%{stay}%postop_d7%' \
             OR idem_key LIKE '%{stay}%review_reminder%'"
        ))
        .await;
    assert_eq!(renamed, 0, "no step planned twice across the upgrade");
    assert_eq!(
        cem_bridge::store::keys::plan_and_step(&step_key(&stay, Plan::Postop721, "d7")),
        ("POSTOP-721", "postop_d7"),
        "an old key reads as the rules' name"
    );
    assert_eq!(
        rows().await,
        [
            (
                "d7".to_string(),
                "sent".to_string(),
                at("2026-11-27T02:00:00Z").as_millisecond()
            ),
            (
                "d27".to_string(),
                "pending".to_string(),
                at("2026-12-19T02:00:00Z").as_millisecond()
            ),
        ]
    );
    // "A call today" (2026-11-27 local): d7's own retry does not count, another call does.
    let zone = cem_pipeline::time::default_zone();
    let day = local_day(at("2026-11-27T06:00:00Z").as_millisecond(), &zone);
    let noon = at("2026-11-27T04:00:00Z").as_millisecond();
    assert!(!store.call_taken(&pk, -1, &d7, day, noon).await.unwrap());
    let d27 = step_key(&stay, Plan::Postop721, "d27");
    assert!(store.call_taken(&pk, -1, &d27, day, noon).await.unwrap());
    let other_day = local_day(at("2026-11-28T06:00:00Z").as_millisecond(), &zone);
    assert!(
        !store
            .call_taken(&pk, -1, &d27, other_day, noon)
            .await
            .unwrap()
    );
    store.close().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_follow_up_steps_replan_and_count_calls() {
    follow_up_steps_replan_and_count_calls(Db::sqlite("fu-steps").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_follow_up_steps_replan_and_count_calls() {
    follow_up_steps_replan_and_count_calls(Db::postgres("fu_steps").await).await;
}

/// Retention of the ticket tables on both backends: finished requests go after
/// `tickets_days`, pending ones never; seen signatures after a day.
async fn retention_prunes_finished_ticket_requests_and_seen_signatures(db: Db) {
    use cem_bridge::config::RetentionConfig;
    use cem_bridge::store::retention::prune_once;
    let store = db.open().await;
    let c = ctx();
    let id = unique("TKRET");
    let b = body(&id, 1);
    let u = TicketUpdate::parse(b.as_bytes()).unwrap();
    store
        .ticket_accept(&c, &u, b.as_bytes(), Some("sig-ret-1"), now())
        .await
        .unwrap();
    // v1 queues the HCRM create: send it; v2's update then stays pending.
    let claimed = store
        .outbox_claim("t", now(), now() + 60_000, 10)
        .await
        .unwrap();
    let create = claimed
        .iter()
        .find(|r| r.sink == "hcrm" && r.ticket_id == id)
        .expect("the create is due");
    store
        .outbox_record("t", create.id, &OutboxOutcome::Sent { status: 200 }, now())
        .await
        .unwrap();
    let b2 = body(&id, 2);
    let u2 = TicketUpdate::parse(b2.as_bytes()).unwrap();
    store
        .ticket_accept(&c, &u2, b2.as_bytes(), None, now())
        .await
        .unwrap();
    let count = |cond: &str| {
        let sql = format!("SELECT COUNT(*) AS n FROM ticket_outbox WHERE ticket_id = '{id}'{cond}");
        let db = &db;
        async move { db.count(&sql).await }
    };
    let (_trigger, mut shutdown) = cem_bridge::process::shutdown::channel();
    let cfg = RetentionConfig::default();
    const DAY: i64 = 86_400_000;
    // A day later: the signature goes, the sent create stays (180 days).
    let p = prune_once(&store, &cfg, now() + DAY + 1, &mut shutdown)
        .await
        .unwrap();
    assert!(p.webhook_seen >= 1, "{p:?}");
    assert_eq!(count("").await, 2);
    // 181 days later: the sent create goes; the pending call stays.
    let p = prune_once(&store, &cfg, now() + 181 * DAY, &mut shutdown)
        .await
        .unwrap();
    assert!(p.ticket_requests >= 1, "{p:?}");
    assert_eq!(count(" AND status = 'pending'").await, 1);
    assert_eq!(count("").await, 1);
    store.close().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_retention_prunes_ticket_tables() {
    retention_prunes_finished_ticket_requests_and_seen_signatures(Db::sqlite("tk-ret").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_retention_prunes_ticket_tables() {
    retention_prunes_finished_ticket_requests_and_seen_signatures(Db::postgres("tk_ret").await)
        .await;
}

/// R-TKT-4 with issue 20 §4, on both backends: an URGENT ticket (created 10:05) found at 15:06
/// with all three levels of its response clock due sends one catch-up, level 3, listing levels
/// 1 and 2, which are recorded `superseded` and never sent; a second sweep sends nothing.
async fn overdue_levels_go_as_one_catch_up(db: Db) {
    let store = db.open().await;
    let c = ctx();
    let id = unique("TKCATCH");
    let b = body(&id, 1);
    let u = TicketUpdate::parse(b.as_bytes()).unwrap();
    store
        .ticket_accept(&c, &u, b.as_bytes(), None, now())
        .await
        .unwrap();
    let at = "2026-11-21T15:06:00+08:00"
        .parse::<jiff::Timestamp>()
        .unwrap()
        .as_millisecond();
    let emitted = store.ticket_escalate(&c, at).await.unwrap();
    assert_eq!(
        emitted,
        vec![("URGENT".to_string(), "response".to_string(), 3)],
        "one request, the highest level"
    );
    assert!(store.ticket_escalate(&c, at + 1).await.unwrap().is_empty());
    let states = db
        .count(&format!(
            "SELECT COUNT(*) AS n FROM ticket_escalations WHERE ticket_id = '{id}' \
             AND clock = 'response' AND state = 'superseded' AND level IN (1, 2)"
        ))
        .await;
    assert_eq!(states, 2);
    let requests = db
        .count(&format!(
            "SELECT COUNT(*) AS n FROM ticket_outbox WHERE ticket_id = '{id}' AND kind = 'escalate'"
        ))
        .await;
    assert_eq!(requests, 1, "levels 1 and 2 are not queued on their own");
    store.close().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_overdue_levels_go_as_one_catch_up() {
    overdue_levels_go_as_one_catch_up(Db::sqlite("tk-catch").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_overdue_levels_go_as_one_catch_up() {
    overdue_levels_go_as_one_catch_up(Db::postgres("tk_catch").await).await;
}

/// Issue 19 §1 and §2 on both backends: a follow-up call recorded `expired`, the overdue
/// report of the work found at a start, and the plan read back step by step for `trace`.
async fn expired_calls_overdue_report_and_trace_steps(db: Db) {
    use cem_pipeline::followup::{FollowupPlan, Plan, PlannedStep, StepAction, step_key};
    let store = db.open().await;
    let c = ctx();
    let stay = unique("vk_exp");
    let pk = unique("pk_exp");
    let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
    let step = |name: &'static str, legacy: &str, due: &str, scene: &'static str| PlannedStep {
        key: step_key(&stay, Plan::Postop721, name),
        legacy_key: step_key(&stay, Plan::Postop721, legacy),
        step: name,
        due_at: at(due),
        action: StepAction::Call { scene },
    };
    let plan = FollowupPlan {
        plan: Plan::Postop721,
        stay_key: stay.clone(),
        patient_key: pk.clone(),
        id_card_key: None,
        mobile_key: "mk_x".into(),
        callee_key: pk.clone(),
        steps: vec![
            step("postop_d7", "d7", "2026-11-27T02:00:00Z", "postop_d7"),
            step(
                "review_reminder",
                "d27",
                "2026-12-17T02:00:00Z",
                "review_reminder",
            ),
        ],
    };
    let mut tx = store.begin().await.unwrap();
    tx.followup_plan(
        &c.cipher,
        &CallingWindows::default(),
        &plan,
        "adt",
        "m-exp",
        &cem_pipeline::time::default_zone(),
        now(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    // The bridge starts on 12-01 10:00 local: the D+7 call is four days late.
    let started = at("2026-12-01T02:00:00Z").as_millisecond();
    let before = started - 600_000;
    let report = store.overdue_report(before, started).await.unwrap();
    assert!(report.found() >= 1 && report.pending() >= 1, "{report:?}");
    let claimed = store
        .outbox_claim("t", started, started + 60_000, 100)
        .await
        .unwrap();
    let d7 = step_key(&stay, Plan::Postop721, "postop_d7");
    let row = claimed
        .iter()
        .find(|r| r.idem_key == d7)
        .expect("the D+7 call is due");
    assert!(
        store
            .outbox_record(
                "t",
                row.id,
                &OutboxOutcome::Expired {
                    error: "4 days late".into()
                },
                started + 1,
            )
            .await
            .unwrap()
    );
    let report = store.overdue_report(before, started).await.unwrap();
    assert!(
        report.outcomes.contains(&(
            "call".into(),
            "expired".into(),
            Some("max_call_delay".into()),
            1
        )),
        "{report:?}"
    );
    let steps = store
        .followup_steps(std::slice::from_ref(&stay), None)
        .await
        .unwrap();
    let shown: Vec<String> = steps
        .iter()
        .map(|s| {
            format!(
                "{} {} {} {:?} {}",
                s.step, s.sink, s.status, s.reason, s.attempts
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            "postop_d7 callcenter expired Some(\"max_call_delay\") 1",
            "review_reminder callcenter planned None 1"
        ]
    );
    let by_patient = store.followup_steps(&[], Some(&pk)).await.unwrap();
    assert_eq!(
        by_patient, steps,
        "a patient's stays are found from the pseudonym"
    );
    store.close().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_expired_calls_overdue_report_and_trace_steps() {
    expired_calls_overdue_report_and_trace_steps(Db::sqlite("fu-exp").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_expired_calls_overdue_report_and_trace_steps() {
    expired_calls_overdue_report_and_trace_steps(Db::postgres("fu_exp").await).await;
}
