//! The ticket loop end to end (domain rules §4): signed CEM webhooks in, HCRM cases and
//! call-center tasks out, in order, once, on time. In-process bridge on the real local RabbitMQ
//! and a SQLite store; HCRM and the call center are in-process recorders.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::*;
use cem_bridge::process::clock::Clock;
use cem_pipeline::ticket::sign;
use sqlx::Row;

/// Register the outpatient sample so the vault knows the patient; the pseudonym the CEM got.
async fn known_patient(setup: &Setup, cem: &Recorder, message_id: &str) -> String {
    publish_fixture(&setup.queue, A04_SAMPLE, message_id).await;
    cem.first_accepted().await.json["patient"]["pk"]
        .as_str()
        .expect("the CEM push names the patient's pk")
        .to_string()
}

/// A ticket body from the shared samples with its id and patient key replaced.
fn sample(name: &str, ticket_id: &str, pk: &str) -> String {
    String::from_utf8(read_fixture(&format!("tickets/{name}.json")))
        .unwrap()
        .replace("TK-20261121-0042", ticket_id)
        .replace("pk_3f9a0c00000000000000000000000000", pk)
}

fn update(ticket_id: &str, version: u32, status: &str, at: &str) -> String {
    serde_json::json!({
        "ticketId": ticket_id, "version": version, "status": status, "updatedAt": at
    })
    .to_string()
}

/// POST a body to the webhook signed at `at_s` with `secret`; (status, JSON answer).
async fn post_signed(
    addr: SocketAddr,
    body: &str,
    secret: &[u8],
    at_s: i64,
) -> (u16, serde_json::Value) {
    let ts = at_s.to_string();
    let sig = sign(secret, &ts, body.as_bytes());
    post_raw(addr, body, Some(&ts), Some(&sig)).await
}

async fn post_raw(
    addr: SocketAddr,
    body: &str,
    ts: Option<&str>,
    sig: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new()
        .post(format!("http://{addr}/hooks/cem/tickets"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = ts {
        req = req.header("X-CEM-Timestamp", t);
    }
    if let Some(s) = sig {
        req = req.header("X-CEM-Signature", s);
    }
    let r = req.send().await.expect("webhook answers");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// Now on the bridges' test clock, in Unix seconds.
fn now_s() -> i64 {
    Clock::starting_at(CLOCK_START.parse().unwrap())
        .now()
        .as_second()
}

async fn post(addr: SocketAddr, body: &str) -> (u16, serde_json::Value) {
    post_signed(addr, body, TEST_WEBHOOK_SECRET, now_s()).await
}

/// Requests the recorder took for `ticket_id` (HCRM: every op; call center: tasks).
fn for_ticket(r: &Recorder, ticket_id: &str) -> Vec<Recorded> {
    r.accepted()
        .into_iter()
        .filter(|x| x.json["ticketId"] == ticket_id)
        .collect()
}

async fn wait_requests(r: &Recorder, ticket_id: &str, n: usize) -> Vec<Recorded> {
    wait_for(20, &format!("{n} request(s) for {ticket_id}"), || {
        let got = for_ticket(r, ticket_id);
        async move { (got.len() >= n).then_some(got) }
    })
    .await
}

fn keys(v: &[Recorded]) -> Vec<String> {
    v.iter()
        .map(|r| r.idempotency_key.clone().unwrap_or_default())
        .collect()
}

/// TK-1 (R-TKT-6, R-TKT-9, R-ANO-6): an URGENT ticket for a patient the bridge knows — HCRM
/// gets create, update, update in version order with the re-identified patient; the call
/// center gets the urgent call-back at once with the mobile; the revisit waits for
/// resolved + 72 h (11-24 16:00); the response and resolution clocks are met, no escalation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tk1_ticket_reaches_hcrm_and_the_call_center_in_order() {
    let (cem, hcrm, cc) = (
        Recorder::start().await,
        Recorder::start().await,
        Recorder::start().await,
    );
    let setup = ticket_setup("tk1", &cem, &hcrm, &cc, "");
    let bridge = setup.start().await;
    let addr = bridge.ops_addr().unwrap();
    setup.wait_declared().await;
    // The patient's registration puts them in the vault; the CEM learns the pseudonym.
    let pk = known_patient(&setup, &cem, "tk1-a04").await;
    // The CEM names the survey's visit too (visit.vk of the dispatch): HCRM gets its 门诊号.
    let vk = cem.first_accepted().await.json["visit"]["vk"]
        .as_str()
        .unwrap()
        .to_string();
    let id = unique("TK1");
    for (name, version) in [("created_low_score", 1), ("assigned", 2), ("resolved", 3)] {
        let mut body = sample(name, &id, &pk);
        if version == 1 {
            body = body.replace(
                &format!("\"patientKey\": \"{pk}\""),
                &format!("\"patientKey\": \"{pk}\", \"visitKey\": \"{vk}\""),
            );
            assert!(body.contains("visitKey"), "{body}");
        }
        let (status, answer) = post(addr, &body).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["result"], "applied");
        assert_eq!(answer["version"], version);
    }
    let sent = wait_requests(&hcrm, &id, 3).await;
    assert_eq!(
        keys(&sent),
        vec![
            format!("tk:{id}:1:hcrm"),
            format!("tk:{id}:2:hcrm"),
            format!("tk:{id}:3:hcrm")
        ]
    );
    let ops: Vec<&str> = sent
        .iter()
        .map(|r| r.json["op"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["create", "update", "update"]);
    let create = &sent[0].json;
    assert_eq!(create["grade"], "URGENT");
    assert_eq!(create["sla"]["responseDueAt"], "2026-11-21T11:05:00+08:00");
    assert_eq!(
        create["sla"]["resolutionDueAt"],
        "2026-11-22T10:05:00+08:00"
    );
    assert_eq!(create["patient"]["pseudonym"], pk.as_str());
    assert_eq!(create["patient"]["reidentified"], true);
    assert!(create["patient"]["patientId"].is_string(), "{create}");
    // R-ANO-1: the visit number in clear, on every request of the ticket (the later versions
    // do not repeat visitKey).
    for r in &sent {
        assert_eq!(
            r.json["patient"]["visitNumber"], "V20261120001",
            "{}",
            r.body
        );
        assert_eq!(r.json["visitKey"], vk.as_str());
    }
    assert_eq!(sent[2].json["resolution"], "已致电患者致歉并优化分诊叫号");
    // The urgent call-back, with the phone to dial (R-ANO-6 ticket_callback).
    let calls = wait_requests(&cc, &id, 1).await;
    assert_eq!(keys(&calls), vec![format!("tk:{id}:urgent_callback:1")]);
    assert_eq!(calls[0].json["scene"], "urgent_callback");
    assert!(
        calls[0].json["callee"]["mobile"]
            .as_str()
            .is_some_and(|m| m.len() == 11)
    );
    // R-ANO-6: the call center gets the mobile and the greeting, nothing else of the patient.
    let task = calls[0].body.as_str();
    let patient_id = create["patient"]["patientId"].as_str().unwrap();
    let name = create["patient"]["name"].as_str().unwrap();
    assert!(!task.contains(patient_id) && !task.contains(name), "{task}");
    // The revisit is queued for 11-24 16:00 and not sent on 11-21.
    let db = sqlite(&setup.db).await;
    let revisit = sqlx::query(
        "SELECT status, due_at, idem_key FROM ticket_outbox WHERE ticket_id = ? AND kind = 'complaint_revisit'",
    )
    .bind(&id)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(revisit.get::<String, _>("status"), "pending");
    let due: i64 = revisit.get("due_at");
    assert_eq!(
        due,
        "2026-11-24T16:00:00+08:00"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_millisecond()
    );
    // Both clocks met in time: nothing left to escalate.
    let states: Vec<(String, String)> = sqlx::query(
        "SELECT clock, state FROM ticket_escalations WHERE ticket_id = ? ORDER BY clock, level",
    )
    .bind(&id)
    .fetch_all(&db)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get("clock"), r.get("state")))
    .collect();
    assert_eq!(states.len(), 6, "{states:?}");
    assert!(states.iter().all(|(_, s)| s == "met"), "{states:?}");
    // The lookups were audited, without values.
    let audited: i64 = sqlx::query(
        "SELECT COUNT(*) AS n FROM audit WHERE action = 'vault_lookup' AND job_id = ? AND reason = 'ok'",
    )
    .bind(&id)
    .fetch_one(&db)
    .await
    .unwrap()
    .get("n");
    assert!(
        audited >= 4,
        "3 HCRM + 1 call lookups audited, got {audited}"
    );
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// R-TKT-11: unsigned, wrongly signed, stale, tampered and replayed requests get 401 and store
/// nothing; a malformed body gets 400 naming the field; only the good one is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_refuses_bad_signatures_stale_replays_and_malformed_bodies() {
    let (cem, hcrm, cc) = (
        Recorder::start().await,
        Recorder::start().await,
        Recorder::start().await,
    );
    let setup = ticket_setup("tk-sig", &cem, &hcrm, &cc, "");
    let bridge = setup.start().await;
    let addr = bridge.ops_addr().unwrap();
    let id = unique("TKSIG");
    let body = sample(
        "created_low_score",
        &id,
        "pk_00000000000000000000000000000a01",
    );
    let now = now_s();
    let (s, a) = post_raw(addr, &body, None, None).await;
    assert_eq!(
        (s, a["error"].as_str()),
        (401, Some("bad_signature")),
        "unsigned"
    );
    let (s, _) = post_signed(addr, &body, b"another-secret-of-some-length", now).await;
    assert_eq!(s, 401, "wrong secret");
    let (s, a) = post_signed(addr, &body, TEST_WEBHOOK_SECRET, now - 301).await;
    assert_eq!(
        (s, a["error"].as_str()),
        (401, Some("stale")),
        "stale timestamp"
    );
    let ts = now.to_string();
    let sig = sign(TEST_WEBHOOK_SECRET, &ts, body.as_bytes());
    let tampered = body.replace("\"score\": 2", "\"score\": 9");
    assert_ne!(tampered, body);
    let (s, _) = post_raw(addr, &tampered, Some(&ts), Some(&sig)).await;
    assert_eq!(s, 401, "tampered body");
    let (s, a) = post_raw(addr, &body, Some(&ts), Some(&sig)).await;
    assert_eq!((s, a["result"].as_str()), (200, Some("applied")), "{a}");
    let (s, a) = post_raw(addr, &body, Some(&ts), Some(&sig)).await;
    assert_eq!((s, a["error"].as_str()), (401, Some("replay")), "replayed");
    let (s, a) = post(addr, r#"{"ticketId":"X","version":2}"#).await;
    assert_eq!(s, 400);
    assert_eq!(a["error"], "malformed");
    assert!(a["message"].as_str().unwrap().contains("status"), "{a}");
    let (s, _) = post(addr, "not json").await;
    assert_eq!(s, 400);
    // Issue 20 §4: over the webhook's body limit, 413 in JSON, counted as too_large.
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(1024 * 1024 + 1024));
    let (s, a) = post(addr, &big).await;
    assert_eq!((s, a["error"].as_str()), (413, Some("too_large")), "{a}");
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("cem_bridge_webhook_rejected_total{reason=\"too_large\"} 1"),
        "{metrics}"
    );
    // Issue 20 §4: a clear value as patientKey (a phone number) is refused naming the field,
    // and nothing of it is stored or sent.
    let clear = sample("created_low_score", &unique("TKCLEAR"), "13812345678");
    let (s, a) = post(addr, &clear).await;
    assert_eq!((s, a["error"].as_str()), (400, Some("malformed")), "{a}");
    let message = a["message"].as_str().unwrap();
    assert!(
        message.contains("patientKey") && !message.contains("13812345678"),
        "{a}"
    );
    let db = sqlite(&setup.db).await;
    let bytes = std::fs::read(&setup.db).unwrap_or_default();
    let wal = std::fs::read(setup.db.with_extension("db-wal")).unwrap_or_default();
    for b in [&bytes, &wal] {
        assert!(
            !b.windows(11).any(|w| w == b"13812345678"),
            "the refused patientKey reached the store"
        );
    }
    assert!(
        hcrm.requests()
            .iter()
            .all(|r| !r.body.contains("13812345678")),
        "nor HCRM"
    );
    let versions: i64 = sqlx::query("SELECT COUNT(*) AS n FROM ticket_versions")
        .fetch_one(&db)
        .await
        .unwrap()
        .get("n");
    assert_eq!(versions, 1, "only the good request is stored");
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for reason in ["bad_signature", "stale", "replay", "malformed"] {
        assert!(
            metrics.contains(&format!(
                "cem_bridge_webhook_rejected_total{{reason=\"{reason}\"}}"
            )),
            "{reason} counted"
        );
    }
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// TK-2, TK-3, TK-7 (R-TKT-8, R-TKT-10): an early version waits for the missing one and both
/// go out in order; a duplicate is ignored with 200; when the gap never fills, the held
/// version goes out after the hold and the late one is stale. The patient is unknown to the
/// vault: HCRM gets the pseudonym only and no call is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tk2_tk3_tk7_versions_apply_in_order_and_gaps_time_out() {
    let (cem, hcrm, cc) = (
        Recorder::start().await,
        Recorder::start().await,
        Recorder::start().await,
    );
    let setup = ticket_setup("tk2", &cem, &hcrm, &cc, "gap_hold_s = 4");
    let bridge = setup.start().await;
    let addr = bridge.ops_addr().unwrap();
    let (a, b) = (unique("TK2A"), unique("TK2B"));
    for id in [&a, &b] {
        let (s, r) = post(
            addr,
            &sample(
                "created_low_score",
                id,
                "pk_00000000000000000000000000000a02",
            ),
        )
        .await;
        assert_eq!((s, r["result"].as_str()), (200, Some("applied")));
        let (s, r) = post(
            addr,
            &update(id, 3, "IN_PROGRESS", "2026-11-21T10:25:00+08:00"),
        )
        .await;
        assert_eq!((s, r["result"].as_str()), (200, Some("held")));
    }
    wait_requests(&hcrm, &a, 1).await;
    // TK-2 (after 3 min): v2 arrives in time → v2 then v3.
    let (s, r) = post(
        addr,
        &update(&a, 2, "ASSIGNED", "2026-11-21T10:20:00+08:00"),
    )
    .await;
    assert_eq!((s, r["result"].as_str()), (200, Some("applied")));
    let sent = wait_requests(&hcrm, &a, 3).await;
    assert_eq!(
        keys(&sent),
        vec![
            format!("tk:{a}:1:hcrm"),
            format!("tk:{a}:2:hcrm"),
            format!("tk:{a}:3:hcrm")
        ]
    );
    // TK-3: v2 delivered again (a new delivery, signed anew) → ignored, 200.
    let again = update(&a, 2, "ASSIGNED", "2026-11-21T10:20:00+08:00");
    let (s, r) = post_signed(addr, &again, TEST_WEBHOOK_SECRET, now_s() + 1).await;
    assert_eq!((s, r["result"].as_str()), (200, Some("stale_version")));
    // TK-2 (after 12 min): b's v3 goes out when the hold ends, v2 then is stale.
    let sent_b = wait_requests(&hcrm, &b, 2).await;
    assert_eq!(
        keys(&sent_b),
        vec![format!("tk:{b}:1:hcrm"), format!("tk:{b}:3:hcrm")]
    );
    let (s, r) = post(
        addr,
        &update(&b, 2, "ASSIGNED", "2026-11-21T10:20:00+08:00"),
    )
    .await;
    assert_eq!((s, r["result"].as_str()), (200, Some("stale_version")));
    // TK-7: pseudonym only, no call.
    assert_eq!(sent[0].json["patient"]["reidentified"], false);
    assert_eq!(
        sent[0].json["patient"]["pseudonym"],
        "pk_00000000000000000000000000000a02"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        for_ticket(&hcrm, &b).len(),
        2,
        "the late v2 is not forwarded"
    );
    assert!(cc.requests().is_empty(), "no call for an unknown patient");
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("cem_bridge_ticket_gap_timeouts_total 1"),
        "gap counted once"
    );
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// TK-4 (R-TKT-4): an URGENT ticket never answered escalates at 11:05 L1, 12:05 L2, 15:05 L3
/// — once each, also when the bridge restarts after they fired. Levels that fell due together
/// while the bridge was stopped go out as one catch-up, the highest, listing the ones it covers
/// (issue 20 §4): stopped from 11:00 to 12:06, L1 and L2 are one request; L3 then comes alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tk4_escalations_fire_once_each_across_restarts() {
    let (cem, hcrm, cc) = (
        Recorder::start().await,
        Recorder::start().await,
        Recorder::start().await,
    );
    let setup = ticket_setup("tk4", &cem, &hcrm, &cc, "");
    let id = unique("TK4");
    let bridge = setup.start().await;
    let addr = bridge.ops_addr().unwrap();
    let (s, _) = post(
        addr,
        &sample(
            "created_low_score",
            &id,
            "pk_00000000000000000000000000000a03",
        ),
    )
    .await;
    assert_eq!(s, 200);
    wait_requests(&hcrm, &id, 1).await;
    bridge.shutdown().await;
    // Restart at 12:06: levels 1 and 2 of the response clock are due, sent as one catch-up.
    let bridge = setup.start_at("2026-11-21T12:06:00+08:00").await;
    let sent = wait_requests(&hcrm, &id, 2).await;
    bridge.shutdown().await;
    // Restart at 15:06: level 3 alone.
    let bridge = setup.start_at("2026-11-21T15:06:00+08:00").await;
    let sent = [sent, wait_requests(&hcrm, &id, 3).await[2..].to_vec()].concat();
    let esc: Vec<&Recorded> = sent.iter().filter(|r| r.json["op"] == "escalate").collect();
    let esc_keys: Vec<String> = esc
        .iter()
        .map(|r| r.idempotency_key.clone().unwrap())
        .collect();
    assert_eq!(
        esc_keys,
        vec![
            format!("tk:{id}:esc:response:2"),
            format!("tk:{id}:esc:response:3")
        ]
    );
    assert_eq!(
        esc[0].json["escalation"]["deadline"], "2026-11-21T11:05:00+08:00",
        "the deadline missed, whatever the level"
    );
    assert_eq!(
        esc[0].json["escalation"]["catchUp"],
        serde_json::json!([{ "clock": "response", "level": 1 }])
    );
    assert!(esc[1].json["escalation"].get("catchUp").is_none());
    assert_eq!(esc[1].json["escalation"]["target"], "集团客服部");
    bridge.shutdown().await;
    let bridge = setup.start_at("2026-11-21T15:07:00+08:00").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        hcrm.requests()
            .iter()
            .filter(|r| r.json["ticketId"] == id.as_str())
            .count(),
        3,
        "nothing is emitted twice"
    );
    let db = sqlite(&setup.db).await;
    let emitted: i64 = sqlx::query(
        "SELECT COUNT(*) AS n FROM ticket_escalations WHERE ticket_id = ? AND state = 'emitted'",
    )
    .bind(&id)
    .fetch_one(&db)
    .await
    .unwrap()
    .get("n");
    assert_eq!(emitted, 2);
    let superseded: i64 = sqlx::query(
        "SELECT COUNT(*) AS n FROM ticket_escalations WHERE ticket_id = ? AND state = 'superseded' AND level = 1",
    )
    .bind(&id)
    .fetch_one(&db)
    .await
    .unwrap()
    .get("n");
    assert_eq!(superseded, 1);
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// R-TKT-8 under failure, one resilience block: HCRM fails (503) until the breaker opens; the
/// next update of the ticket waits for the 2xx of the first; the breaker's refusals never reach
/// HCRM; once HCRM answers, both go out in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hcrm_failures_open_the_breaker_and_order_holds() {
    let (cem, hcrm, cc) = (
        Recorder::start().await,
        Recorder::start().await,
        Recorder::start().await,
    );
    let mut setup = ticket_setup("tk-breaker", &cem, &hcrm, &cc, "");
    setup.extra_top = setup.extra_top.replace(
        "breaker_open_ms = 300",
        "breaker_open_ms = 300\nbreaker_failures = 2",
    );
    hcrm.script(&[(503, "{}"), (503, "{}"), (503, "{}")]);
    let bridge = setup.start().await;
    let addr = bridge.ops_addr().unwrap();
    let id = unique("TKBR");
    let (s, _) = post(
        addr,
        &sample(
            "created_low_score",
            &id,
            "pk_00000000000000000000000000000a04",
        ),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = post(
        addr,
        &update(&id, 2, "ASSIGNED", "2026-11-21T10:20:00+08:00"),
    )
    .await;
    assert_eq!(s, 200);
    let sent = wait_requests(&hcrm, &id, 2).await;
    assert_eq!(
        keys(&sent),
        vec![format!("tk:{id}:1:hcrm"), format!("tk:{id}:2:hcrm")]
    );
    let all: Vec<(Option<String>, u16)> = hcrm
        .requests()
        .iter()
        .map(|r| (r.idempotency_key.clone(), r.status))
        .collect();
    let first_ok = all.iter().position(|(_, s)| *s == 200).unwrap();
    assert_eq!(first_ok, 3, "three 503s, then the 2xx: {all:?}");
    assert!(
        all[..first_ok]
            .iter()
            .all(|(k, _)| k.as_deref() == Some(format!("tk:{id}:1:hcrm").as_str())),
        "v2 was not sent before v1 succeeded: {all:?}"
    );
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"cem_bridge_sink_requests_total{sink="hcrm",outcome="breaker_open"}"#),
        "breaker refusals counted"
    );
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// `cem-bridge check` refuses a ticket loop without its webhook secret, naming the variable,
/// and reports it on when the secret is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_requires_the_webhook_secret() {
    let (cem, hcrm, cc) = (
        Recorder::start().await,
        Recorder::start().await,
        Recorder::start().await,
    );
    let setup = ticket_setup("tk-check", &cem, &hcrm, &cc, "");
    let cfg = setup.write_config();
    let out = check_config(&cfg);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CEM_BRIDGE_WEBHOOK_SECRET"), "{err}");
    let out = std::process::Command::new(bridge_bin())
        .args(["check", "-c"])
        .arg(&cfg)
        .env(
            "CEM_BRIDGE_TEST_KEY",
            String::from_utf8_lossy(TEST_KEY).into_owned(),
        )
        .env("CEM_BRIDGE_TEST_VAULT_KEY", TEST_VAULT_KEY_HEX)
        .env(
            "CEM_BRIDGE_WEBHOOK_SECRET",
            String::from_utf8_lossy(TEST_WEBHOOK_SECRET).into_owned(),
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("tickets: on"), "{text}");
    assert!(
        text.contains("follow-ups: on (surgical wards CAT GLA RET REF"),
        "{text}"
    );
    cleanup(&setup).await;
}

async fn post_result(addr: SocketAddr, body: &serde_json::Value, secret: &[u8]) -> u16 {
    let text = body.to_string();
    let ts = now_s().to_string();
    let sig = sign(secret, &ts, text.as_bytes());
    reqwest::Client::new()
        .post(format!("http://{addr}/hooks/callcenter/results"))
        .header("X-CEM-Timestamp", ts)
        .header("X-CEM-Signature", sig)
        .body(text)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// R-TKT-7 / R-TKT-6: call results — no answer is tried again + 2 h inside a window (10:31 →
/// 14:00), at most 3 attempts, then `unreachable`; every result updates the HCRM case and is
/// posted back to the CEM (`[cem_results]`); a repeated event id is acknowledged and ignored;
/// an unknown task is 404, a bad signature 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_results_retry_in_windows_then_give_up_and_reach_hcrm() {
    let (cem, hcrm, cc) = (
        Recorder::start().await,
        Recorder::start().await,
        Recorder::start().await,
    );
    let cemr = Recorder::start().await;
    let extra = format!("[cem_results]\nmode = \"http\"\nurl = \"{}\"\n", cemr.url());
    let setup = ticket_setup("tk-calls", &cem, &hcrm, &cc, &extra);
    let bridge = setup.start().await;
    let addr = bridge.ops_addr().unwrap();
    setup.wait_declared().await;
    let pk = known_patient(&setup, &cem, "calls-a04").await;
    let id = unique("TKCALL");
    let (s, _) = post(addr, &sample("created_low_score", &id, &pk)).await;
    assert_eq!(s, 200);
    let task = wait_requests(&cc, &id, 1).await[0].json["taskRef"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(task, format!("tk:{id}:urgent_callback:1"));
    let result = |event: &str, task: &str, status: &str| {
        serde_json::json!({
            "eventId": event, "taskRef": task, "status": status,
            "endedAt": "2026-11-21T10:31:00+08:00"
        })
    };
    let first = result("ev-1", &task, "no_answer");
    assert_eq!(post_result(addr, &first, TEST_CALLCENTER_SECRET).await, 200);
    assert_eq!(
        post_result(addr, &first, TEST_CALLCENTER_SECRET).await,
        200,
        "repeat acked"
    );
    assert_eq!(
        post_result(
            addr,
            &result("ev-x", "tk:nope:urgent_callback:1", "busy"),
            TEST_CALLCENTER_SECRET
        )
        .await,
        404
    );
    assert_eq!(
        post_result(
            addr,
            &result("ev-y", &task, "busy"),
            b"wrong-secret-0123456789"
        )
        .await,
        401
    );
    let db = sqlite(&setup.db).await;
    let second = sqlx::query("SELECT status, due_at FROM ticket_outbox WHERE idem_key = ?")
        .bind(format!("tk:{id}:urgent_callback:2"))
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(second.get::<String, _>("status"), "pending");
    assert_eq!(
        second.get::<i64, _>("due_at"),
        "2026-11-21T14:00:00+08:00"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_millisecond(),
        "+2 h lands in the lunch gap: the next window"
    );
    for (event, n, status) in [("ev-2", 2, "busy"), ("ev-3", 3, "no_answer")] {
        let t = format!("tk:{id}:urgent_callback:{n}");
        assert_eq!(
            post_result(addr, &result(event, &t, status), TEST_CALLCENTER_SECRET).await,
            200
        );
    }
    let updates = wait_for(20, "three call results at HCRM", || {
        let got: Vec<serde_json::Value> = for_ticket(&hcrm, &id)
            .into_iter()
            .filter(|r| r.json["op"] == "call_result")
            .map(|r| r.json)
            .collect();
        async move { (got.len() >= 3).then_some(got) }
    })
    .await;
    let outcomes: Vec<&str> = updates
        .iter()
        .map(|u| u["call"]["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["retrying", "retrying", "unreachable"]);
    let posted = wait_requests(&cemr, &id, 3).await;
    assert_eq!(
        keys(&posted),
        [
            format!("tk:{id}:urgent_callback:1:result:cem"),
            format!("tk:{id}:urgent_callback:2:result:cem"),
            format!("tk:{id}:urgent_callback:3:result:cem")
        ]
    );
    assert_eq!(posted[2].json["outcome"], "unreachable");
    assert_eq!(posted[2].json["patientKey"], pk.as_str());
    assert!(
        !posted.iter().any(|p| p.body.contains("mobile")),
        "pseudonyms only"
    );
    let tasks: i64 = sqlx::query(
        "SELECT COUNT(*) AS n FROM ticket_outbox WHERE ticket_id = ? AND sink = 'callcenter'",
    )
    .bind(&id)
    .fetch_one(&db)
    .await
    .unwrap()
    .get("n");
    assert_eq!(tasks, 3, "at most three attempts");
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// In `shadow` mode the request goes to a plain file: no vault lookup, the patient's clear data
/// is withheld (the pseudonym stays), for HCRM and the call center alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_writes_no_reidentified_data() {
    let (cem, hcrm, cc) = (
        Recorder::start().await,
        Recorder::start().await,
        Recorder::start().await,
    );
    let mut setup = ticket_setup("tk-shadow", &cem, &hcrm, &cc, "");
    let (hf, cf) = (setup.dir.join("hcrm.jsonl"), setup.dir.join("cc.jsonl"));
    setup.extra_top = setup
        .extra_top
        .replace(
            &format!("mode = \"http\"\nurl = \"{}\"", hcrm.url()),
            &format!("mode = \"shadow\"\nshadow_file = \"{}\"", hf.display()),
        )
        .replace(
            &format!("mode = \"http\"\nurl = \"{}\"", cc.url()),
            &format!("mode = \"shadow\"\nshadow_file = \"{}\"", cf.display()),
        );
    assert!(
        setup.extra_top.contains("shadow_file"),
        "{}",
        setup.extra_top
    );
    let bridge = setup.start().await;
    let addr = bridge.ops_addr().unwrap();
    setup.wait_declared().await;
    let pk = known_patient(&setup, &cem, "shadow-a04").await;
    let id = unique("TKSH");
    let (s, _) = post(addr, &sample("created_low_score", &id, &pk)).await;
    assert_eq!(s, 200);
    let (h, c) = wait_for(20, "both shadow files written", || {
        let (h, c) = (
            std::fs::read_to_string(&hf).unwrap_or_default(),
            std::fs::read_to_string(&cf).unwrap_or_default(),
        );
        let done = h.contains(&id) && c.contains(&id);
        async move { done.then_some((h, c)) }
    })
    .await;
    for text in [&h, &c] {
        assert!(text.contains("withheld") && text.contains(&pk), "{text}");
        for value in SAMPLE_PII {
            assert!(!text.contains(value), "{value} written to a shadow file");
        }
    }
    assert!(hcrm.requests().is_empty() && cc.requests().is_empty());
    // Shadow lines and audit rows carry the bridge's (shifted) clock, like due and send times,
    // not the wall clock.
    let start: jiff::Timestamp = CLOCK_START.parse().unwrap();
    let near_start = |ms: i64| (ms - start.as_millisecond()).abs() < 3_600_000;
    for line in h.lines().chain(c.lines()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let at: jiff::Timestamp = v["at"].as_str().unwrap().parse().unwrap();
        assert!(near_start(at.as_millisecond()), "shadow line at {at}");
    }
    let audit = bridge.store.audit(None).await.unwrap();
    assert!(!audit.is_empty());
    for row in &audit {
        assert!(near_start(row.at), "audit {} at {}", row.action, row.at);
    }
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// An outbox row for a peer this bridge does not send to — `[cem_results]` removed from the
/// config after the row was queued, or a sink code it does not know — is given up as
/// `dead(not_configured)`, sent nowhere (HCRM and the call center get nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_rows_for_a_peer_not_configured_are_given_up() {
    let (cem, hcrm, cc) = (
        Recorder::start().await,
        Recorder::start().await,
        Recorder::start().await,
    );
    let setup = ticket_setup("tk-nopeer", &cem, &hcrm, &cc, "");
    let bridge = setup.start().await;
    // Due an hour before the bridge's clock starts.
    let now = CLOCK_START
        .parse::<jiff::Timestamp>()
        .unwrap()
        .as_millisecond()
        - 3_600_000;
    let db = sqlite(&setup.db).await;
    for (sink, key) in [("cem_results", "tk:x:result:cem"), ("fax", "tk:x:fax")] {
        sqlx::query(
            "INSERT INTO ticket_outbox (ticket_id, sink, kind, idem_key, status, due_at, \
             next_attempt_at, key_id, body, created_at, updated_at) \
             VALUES ('T-X', $1, 'call_result', $2, 'pending', $3, $3, 'demo', x'00', $3, $3)",
        )
        .bind(sink)
        .bind(key)
        .bind(now)
        .execute(&db)
        .await
        .unwrap();
    }
    let dead = wait_for(20, "both rows given up", || {
        let db = db.clone();
        async move {
            let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
                "SELECT sink, status, reason FROM ticket_outbox WHERE ticket_id = 'T-X' ORDER BY sink",
            )
            .fetch_all(&db)
            .await
            .ok()?;
            rows.iter().all(|r| r.1 == "dead").then_some(rows)
        }
    })
    .await;
    for (sink, _, reason) in &dead {
        assert_eq!(reason.as_deref(), Some("not_configured"), "{sink}");
    }
    assert!(hcrm.requests().is_empty() && cc.requests().is_empty());
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// Issue 7 §1: the same intake from a RabbitMQ queue (`[tickets.queue]`): versions published
/// out of order apply in order (R-TKT-8), each message is acked once durable, and a body that
/// is not a ticket update is dead-lettered with its reason — stored and republished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_intake_applies_updates_in_order_and_dead_letters_malformed_ones() {
    let (cem, hcrm, cc) = (
        Recorder::start().await,
        Recorder::start().await,
        Recorder::start().await,
    );
    let queue = unique("cem.tickets");
    let extra = format!(
        "[tickets.queue]\nurl = \"{}\"\nqueue = \"{queue}\"\n",
        amqp_url()
    );
    let setup = ticket_setup("tk-queue", &cem, &hcrm, &cc, &extra);
    let bridge = setup.start().await;
    wait_for(20, "the ticket queue declared", || {
        let q = queue.clone();
        async move { queue_depth(&q).await }
    })
    .await;
    let id = unique("TKQ");
    let v1 = sample(
        "created_low_score",
        &id,
        "pk_00000000000000000000000000000a05",
    );
    let v2 = update(&id, 2, "ASSIGNED", "2026-11-21T10:20:00+08:00");
    let v3 = update(&id, 3, "IN_PROGRESS", "2026-11-21T10:25:00+08:00");
    for (body, mid) in [
        (v1.as_str(), "q-v1"),
        (v3.as_str(), "q-v3"),
        ("{\"ticketId\": 7", "q-bad"),
        (v2.as_str(), "q-v2"),
    ] {
        publish(&queue, body.as_bytes(), mid).await;
    }
    let sent = wait_requests(&hcrm, &id, 3).await;
    assert_eq!(
        keys(&sent),
        [
            format!("tk:{id}:1:hcrm"),
            format!("tk:{id}:2:hcrm"),
            format!("tk:{id}:3:hcrm")
        ],
        "applied and forwarded in version order"
    );
    let dlq = format!("{queue}.dlq");
    let dead = wait_for(20, "the malformed body dead-lettered", || {
        let q = dlq.clone();
        async move {
            let d = drain(&q).await;
            (!d.is_empty()).then_some(d)
        }
    })
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].headers["x-cem-reason"], "malformed_ticket");
    assert_eq!(dead[0].message_id.as_deref(), Some("q-bad"));
    let db = sqlite(&setup.db).await;
    let stored: (String, String) =
        sqlx::query("SELECT connector, reason FROM dead_letters WHERE message_id = 'q-bad'")
            .fetch_one(&db)
            .await
            .map(|r| (r.get(0), r.get(1)))
            .unwrap();
    assert_eq!(stored, ("tickets".into(), "malformed_ticket".into()));
    assert_eq!(queue_depth(&queue).await, Some(0), "everything acked");
    bridge.shutdown().await;
    delete_queues(&[queue.clone(), dlq], &[format!("{queue}.dlx")]).await;
    cleanup(&setup).await;
}

/// Issue 7 §7 end to end on the HCRM sink: a `429` with `Retry-After: 1` is retried after the
/// server's second, not the 50 ms backoff; a reply slower than `timeout_ms` counts as a failure
/// and is retried under the same idempotency key, which HCRM answers `409` (already have it) —
/// recorded as sent, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hcrm_429_retry_after_and_timeout_are_retried_with_the_same_key() {
    let (cem, hcrm, cc) = (
        Recorder::start().await,
        Recorder::start().await,
        Recorder::start().await,
    );
    let mut setup = ticket_setup("tk-429", &cem, &hcrm, &cc, "");
    setup.extra_top = setup.extra_top.replace(
        "[hcrm]\nmode = \"http\"",
        "[hcrm]\ntimeout_ms = 400\nmode = \"http\"",
    );
    assert!(setup.extra_top.contains("timeout_ms = 400"));
    hcrm.script_retry_after(1);
    hcrm.script_slow(Duration::from_millis(1500));
    let bridge = setup.start().await;
    let addr = bridge.ops_addr().unwrap();
    let id = unique("TK429");
    let (s, _) = post(
        addr,
        &sample(
            "created_low_score",
            &id,
            "pk_00000000000000000000000000000a06",
        ),
    )
    .await;
    assert_eq!(s, 200);
    // Every request HCRM saw, answered or not (the recorder keeps them all).
    let sent = wait_for(20, "three tries of the create", || {
        let got: Vec<Recorded> = hcrm
            .requests()
            .into_iter()
            .filter(|r| r.json["ticketId"] == id.as_str())
            .collect();
        async move { (got.len() >= 3).then_some(got) }
    })
    .await;
    assert_eq!(
        sent.iter().map(|r| r.status).collect::<Vec<_>>(),
        [429, 200, 409]
    );
    let key = format!("tk:{id}:1:hcrm");
    assert!(keys(&sent).iter().all(|k| *k == key), "{:?}", keys(&sent));
    assert!(
        sent[1].at.duration_since(sent[0].at) >= Duration::from_millis(950),
        "Retry-After honoured: {:?}",
        sent[1].at.duration_since(sent[0].at)
    );
    let db = sqlite(&setup.db).await;
    let row = wait_for(20, "the create recorded as sent", || {
        let db = db.clone();
        let key = key.clone();
        async move {
            sqlx::query(
                "SELECT status, last_status, attempts FROM ticket_outbox WHERE idem_key = ?",
            )
            .bind(key)
            .fetch_one(&db)
            .await
            .ok()
            .filter(|r| r.get::<String, _>("status") == "sent")
        }
    })
    .await;
    assert_eq!(row.get::<i64, _>("last_status"), 409);
    assert_eq!(row.get::<i64, _>("attempts"), 3);
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// Issue 20 §3: failed signatures are throttled per address on every webhook. Ten failures
/// within a minute are answered 401; the eleventh, and then a well-signed update on any
/// webhook, get 429 with `Retry-After` and store nothing; once the wait is over the signed
/// update is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_throttle_an_address_that_keeps_failing_its_signature() {
    let (cem, hcrm, cc) = (
        Recorder::start().await,
        Recorder::start().await,
        Recorder::start().await,
    );
    let setup = ticket_setup("tk-throttle", &cem, &hcrm, &cc, "");
    let bridge = setup.start().await;
    let addr = bridge.ops_addr().unwrap();
    let id = unique("TKTHR");
    let body = sample(
        "created_low_score",
        &id,
        "pk_00000000000000000000000000000a02",
    );
    for i in 0..10 {
        let (s, a) = post_signed(addr, &body, b"a-guess-at-the-secret-0123456789", now_s()).await;
        assert_eq!(
            (s, a["error"].as_str()),
            (401, Some("bad_signature")),
            "guess {i}"
        );
    }
    let (s, a) = post_raw(addr, &body, None, None).await;
    assert_eq!((s, a["error"].as_str()), (429, Some("throttled")), "{a}");
    let (s, _) = post(addr, &body).await;
    assert_eq!(s, 429, "the right signature waits too");
    let unsubscribe = reqwest::Client::new()
        .post(format!("http://{addr}/hooks/cem/unsubscribes"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(unsubscribe.status().as_u16(), 429);
    let wait: u64 = unsubscribe.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=10).contains(&wait), "Retry-After {wait}");
    assert_eq!(
        post_result(
            addr,
            &serde_json::json!({"eventId": "ev-t", "taskRef": "tk:x:urgent_callback:1", "status": "busy"}),
            TEST_CALLCENTER_SECRET
        )
        .await,
        429
    );
    let db = sqlite(&setup.db).await;
    let stored: i64 = sqlx::query("SELECT COUNT(*) AS n FROM tickets WHERE ticket_id = ?")
        .bind(&id)
        .fetch_one(&db)
        .await
        .unwrap()
        .get("n");
    assert_eq!(stored, 0, "nothing stored while throttled");
    tokio::time::sleep(std::time::Duration::from_secs(wait + 1)).await;
    let (s, a) = post(addr, &body).await;
    assert_eq!((s, a["result"].as_str()), (200, Some("applied")), "{a}");
    bridge.shutdown().await;
    cleanup(&setup).await;
}
