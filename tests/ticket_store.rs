//! The ticket store under concurrency, on both backends (R-TKT-8): two bridge instances
//! accepting the versions of one ticket in scrambled order apply each exactly once and in
//! order, and two senders claiming the outbox never send update n+1 before update n is done.

mod common;

use std::sync::{Arc, Mutex};

use cem_bridge::store::Store;
use cem_bridge::tickets::{Accepted, OutboxOutcome, TicketCtx};
use cem_bridge::vault::VaultCipher;
use cem_pipeline::ticket::{Calendar, CallingWindows, TicketUpdate};
use common::*;
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
