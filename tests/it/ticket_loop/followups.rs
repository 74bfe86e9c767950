//! Post-operative follow-up plans end to end (domain rules §5, R-FUP-1..5, EX-05, EX-07):
//! HL7 discharges in through the real local RabbitMQ, a SQLite store, calls out to an
//! in-process call-center recorder, cases to an HCRM recorder. The bridge's clock is started
//! on the day each step is due.

use std::net::SocketAddr;

use crate::common::*;
use cem_bridge::process::clock::Clock;
use sqlx::Row;

const A03: &str = "hl7v2/adt_a03_discharge.hl7";

fn ms(t: &str) -> i64 {
    t.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

/// A follow-up call row: (step key, status, due, reason).
type Call = (String, String, i64, Option<String>);

async fn fu_calls(setup: &Setup) -> Vec<Call> {
    let db = sqlite(&setup.db).await;
    sqlx::query(
        "SELECT idem_key, status, due_at, reason FROM ticket_outbox \
         WHERE ticket_id LIKE 'fu:%' AND sink = 'callcenter' ORDER BY due_at, id",
    )
    .fetch_all(&db)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

/// Survey jobs as (template, status, due, dnd).
async fn jobs(setup: &Setup) -> Vec<(String, String, i64, i64)> {
    let db = sqlite(&setup.db).await;
    sqlx::query("SELECT template, status, due_at, dnd FROM survey_jobs ORDER BY due_at")
        .fetch_all(&db)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// The first column of every row of `sql` in the test's SQLite store.
async fn column<T>(setup: &Setup, sql: &'static str) -> Vec<T>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite> + Send + Unpin,
{
    let db = sqlite(&setup.db).await;
    let v = sqlx::query(sql)
        .fetch_all(&db)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    db.close().await;
    v
}

async fn wait_calls(setup: &Setup, what: &str, ok: impl Fn(&[Call]) -> bool) -> Vec<Call> {
    wait_for(20, what, || async {
        let c = fu_calls(setup).await;
        ok(&c).then_some(c)
    })
    .await
}

/// The call-center tasks of one scene.
fn tasks(cc: &Recorder, scene: &str) -> Vec<Recorded> {
    cc.accepted()
        .into_iter()
        .filter(|r| r.json["scene"] == scene)
        .collect()
}

async fn wait_task(cc: &Recorder, scene: &str) -> Recorded {
    wait_for(20, &format!("a {scene} task"), || {
        let t = tasks(cc, scene).into_iter().next();
        async move { t }
    })
    .await
}

/// Now on a bridge clock started at `start`, in Unix seconds (for signing).
fn now_s(start: &str) -> i64 {
    Clock::starting_at(start.parse().unwrap()).now().as_second()
}

/// Discharge the A03 sample at 11-20 16:00 and wait for its plan; the stay's step keys.
async fn discharged(setup: &Setup) -> Vec<Call> {
    let bridge = setup.start_at("2026-11-20T16:00:00+08:00").await;
    setup.wait_declared().await;
    publish(&setup.queue, &read_fixture(A03), "fu-a03").await;
    let calls = wait_calls(setup, "two follow-up calls planned", |c| c.len() == 2).await;
    bridge.shutdown().await;
    calls
}

/// EX-05 (R-FUP-1, R-FUP-2, R-ANO-6): a surgical discharge (ward CAT02, PV1-45 11-20 15:55)
/// gets POSTOP-721 — calls 11-27 and 12-17 at 10:00, the online questionnaire 2027-01-19 10:00
/// as a CEM job outside do-not-disturb — beside its survey; on 11-27 the D+7 call reaches the
/// call center with the mobile and greeting from the vault, and nothing else personal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ex_05_discharge_plans_postop_721_and_the_d7_call_goes_out_on_day_7() {
    let (cem, hcrm, cc) = (
        Recorder::start().await,
        Recorder::start().await,
        Recorder::start().await,
    );
    let setup = ticket_setup("fu-ex05", &cem, &hcrm, &cc, "");
    let calls = discharged(&setup).await;
    assert!(calls[0].0.starts_with("fu:vk_"), "{}", calls[0].0);
    // R-FUP-4 with R-FUP-1's step names (issue 19 §5).
    assert!(
        calls[0].0.ends_with(":POSTOP-721:postop_d7"),
        "{}",
        calls[0].0
    );
    assert!(
        calls[1].0.ends_with(":POSTOP-721:review_reminder"),
        "{}",
        calls[1].0
    );
    assert_eq!(
        calls
            .iter()
            .map(|c| (c.1.as_str(), c.2))
            .collect::<Vec<_>>(),
        [
            ("pending", ms("2026-11-27T10:00:00+08:00")),
            ("pending", ms("2026-12-17T10:00:00+08:00"))
        ]
    );
    assert_eq!(
        jobs(&setup).await,
        [
            (
                "IP-SURG-01".into(),
                "pending".into(),
                ms("2026-11-21T10:00:00+08:00"),
                1
            ),
            (
                "FU-ONLINE-60".into(),
                "pending".into(),
                ms("2027-01-19T10:00:00+08:00"),
                0
            ),
        ]
    );
    assert!(cc.requests().is_empty(), "no call before its day");
    // R-ANO-6 retention: the stay's vault records count as used at the last step (D+60), so
    // `vault_days` keeps the number the questionnaire needs; the survey's own write (at the
    // discharge) does not move that back.
    let kept: Vec<i64> = column(
        &setup,
        "SELECT last_event_at FROM vault WHERE pseudonym LIKE 'pk_%' OR pseudonym LIKE 'mk_%'",
    )
    .await;
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(
        kept.iter().all(|t| *t == ms("2027-01-19T10:00:00+08:00")),
        "{kept:?}"
    );

    let bridge = setup.start_at("2026-11-27T10:00:00+08:00").await;
    let task = wait_task(&cc, "postop_d7").await;
    assert_eq!(task.idempotency_key.as_deref(), Some(calls[0].0.as_str()));
    assert_eq!(task.json["taskRef"], calls[0].0.as_str());
    assert_eq!(task.json["plan"], "POSTOP-721");
    assert_eq!(task.json["callee"]["mobile"], "13998765432");
    assert_eq!(task.json["callee"]["honorific"], "王女士");
    for secret in ["秀英", "P00067890", "31010419551212002X", "Z2026111500087"] {
        assert!(!task.body.contains(secret), "the task holds no {secret:?}");
    }
    // The survey (due 11-21) went out; the questionnaire waits for 2027.
    let pushed = wait_for(20, "the survey push", || {
        let a = cem.accepted();
        async move { (!a.is_empty()).then_some(a) }
    })
    .await;
    assert_eq!(pushed.len(), 1);
    assert_eq!(pushed[0].json["templateId"], "IP-SURG-01");
    let calls = wait_calls(&setup, "the D+7 call recorded as sent", |c| {
        c[0].1 == "sent"
    })
    .await;
    assert_eq!(calls[1].1, "pending");
    // R-ANO-6: the lookup was audited with the follow-up purpose.
    let lookups: Vec<String> = column(
        &setup,
        "SELECT detail FROM audit WHERE action = 'vault_lookup' AND detail LIKE 'caller=callcenter%'",
    )
    .await;
    assert_eq!(lookups, ["caller=callcenter purpose=followup_call"]);
    bridge.shutdown().await;

    // Issue 19 §2: `trace` of the discharge, of its stay and of its patient lists the plan
    // step by step: plan, step, sink, due, status, attempts, the key the peer received.
    let cfg = setup.write_config();
    let trace = |id: &str, json: bool| {
        let mut args = vec!["trace", id, "-c", cfg.to_str().unwrap()];
        if json {
            args.push("--json");
        }
        let out = std::process::Command::new(bridge_bin())
            .args(&args)
            .env_remove("RUST_LOG")
            .output()
            .expect("run cem-bridge trace");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let v: serde_json::Value = serde_json::from_str(&trace("MSG20261120160000004", true)).unwrap();
    let steps: Vec<String> = v["followups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{} {} {} {} {} {} {}",
                s["plan"].as_str().unwrap(),
                s["step"].as_str().unwrap(),
                s["sink"].as_str().unwrap(),
                s["due_at"].as_str().unwrap(),
                s["status"].as_str().unwrap(),
                s["attempts"],
                s["key"].as_str().unwrap()
            )
        })
        .collect();
    let questionnaire = job_id_of(&setup, "FU-ONLINE-60").await;
    assert_eq!(
        steps,
        [
            format!(
                "POSTOP-721 postop_d7 callcenter 2026-11-27T10:00:00.000+08:00 sent 1 {}",
                calls[0].0
            ),
            format!(
                "POSTOP-721 review_reminder callcenter 2026-12-17T10:00:00.000+08:00 planned 1 {}",
                calls[1].0
            ),
            format!(
                "POSTOP-721 FU-ONLINE-60 cem 2027-01-19T10:00:00.000+08:00 planned 0 sv:{questionnaire}"
            ),
        ]
    );
    let stay = v["followups"][0]["stay_key"].as_str().unwrap().to_string();
    let pk = v["jobs"][0]["patient_key"].as_str().unwrap().to_string();
    for id in [stay.as_str(), pk.as_str()] {
        let text = trace(id, false);
        assert!(
            text.contains("follow-up plan (R-FUP-1), step by step"),
            "{id}: {text}"
        );
        assert!(
            text.contains("review_reminder")
                && text.contains("call center")
                && text.contains("planned"),
            "{id}: {text}"
        );
        assert_no_pii("trace", &text);
    }
    cleanup(&setup).await;
}

/// The job id of the survey job of this template.
async fn job_id_of(setup: &Setup, template: &str) -> String {
    let db = sqlite(&setup.db).await;
    sqlx::query_scalar("SELECT job_id FROM survey_jobs WHERE template = ?")
        .bind(template)
        .fetch_one(&db)
        .await
        .unwrap()
}

/// EX-07 / R-FUP-4: an A13 cancels the stay's pending steps; the new A03 (discharge 11-22
/// 09:00) re-plans them under the same step keys from the new date, and the survey is one job
/// due 11-23 10:00.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ex_07_a13_cancels_the_steps_and_the_new_a03_replans_them() {
    let (cem, hcrm, cc) = (
        Recorder::start().await,
        Recorder::start().await,
        Recorder::start().await,
    );
    let setup = ticket_setup("fu-ex07", &cem, &hcrm, &cc, "");
    let bridge = setup.start_at("2026-11-20T16:00:00+08:00").await;
    setup.wait_declared().await;
    publish(&setup.queue, &read_fixture(A03), "ex07-a03").await;
    let first = wait_calls(&setup, "the plan", |c| c.len() == 2).await;
    publish_fixture(
        &setup.queue,
        "hl7v2/adt_a13_cancel_discharge.hl7",
        "ex07-a13",
    )
    .await;
    let cancelled = wait_calls(&setup, "the steps cancelled", |c| {
        c.iter().all(|x| x.1 == "cancelled")
    })
    .await;
    assert!(
        cancelled
            .iter()
            .all(|c| c.3.as_deref() == Some("discharge_cancelled"))
    );
    let again = String::from_utf8(read_fixture(A03))
        .unwrap()
        .replace("20261120155500", "20261122090000")
        .replace("MSG20261120160000004", "MSG20261122090500009");
    publish(&setup.queue, again.as_bytes(), "ex07-a03-again").await;
    let replanned = wait_calls(&setup, "the steps re-planned", |c| {
        c.iter().all(|x| x.1 == "pending")
    })
    .await;
    let keys = |c: &[Call]| c.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    assert_eq!(
        keys(&replanned),
        keys(&first),
        "same step keys, no new rows"
    );
    assert_eq!(
        replanned.iter().map(|c| c.2).collect::<Vec<_>>(),
        [
            ms("2026-11-29T10:00:00+08:00"),
            ms("2026-12-19T10:00:00+08:00")
        ]
    );
    let j = jobs(&setup).await;
    assert_eq!(
        j.iter()
            .map(|x| (x.0.as_str(), x.1.as_str(), x.2))
            .collect::<Vec<_>>(),
        [
            ("IP-SURG-01", "pending", ms("2026-11-23T10:00:00+08:00")),
            ("FU-ONLINE-60", "pending", ms("2027-01-21T10:00:00+08:00")),
        ],
        "one survey in total, re-activated; the questionnaire moved too"
    );
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// R-FUP-3 then R-FUP-5: on 11-27 the patient gets an urgent ticket call-back first, so the
/// D+7 call moves to 11-28 10:00 and goes out then; no answer → the retry at 14:00 the same
/// day (a retry is not a second call); its result says the patient needs attention, which
/// opens an URGENT HCRM case with the 1 h response clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_fup_3_one_call_a_day_then_r_fup_5_needs_attention_opens_an_urgent_case() {
    let (cem, hcrm, cc) = (
        Recorder::start().await,
        Recorder::start().await,
        Recorder::start().await,
    );
    let setup = ticket_setup("fu-day", &cem, &hcrm, &cc, "");
    let calls = discharged(&setup).await;
    let d7 = calls[0].0.clone();
    let db = sqlite(&setup.db).await;
    let pk: String = sqlx::query("SELECT patient_key FROM ticket_outbox WHERE idem_key = ?")
        .bind(&d7)
        .fetch_one(&db)
        .await
        .unwrap()
        .get(0);

    let start = "2026-11-27T09:59:56+08:00";
    let bridge = setup.start_at(start).await;
    let addr: SocketAddr = bridge.ops_addr().unwrap();
    let ticket = String::from_utf8(read_fixture("tickets/created_low_score.json"))
        .unwrap()
        .replace("TK-20261121-0042", "TK-FU-DAY")
        .replace("pk_3f9a0c00000000000000000000000000", &pk);
    let (s, _) = post_signed_to(
        addr,
        "/hooks/cem/tickets",
        &ticket,
        TEST_WEBHOOK_SECRET,
        now_s(start),
    )
    .await;
    assert_eq!(s, 200);
    wait_task(&cc, "urgent_callback").await;
    let moved = wait_calls(&setup, "the D+7 call moved to the next day", |c| {
        c[0].2 == ms("2026-11-28T10:00:00+08:00")
    })
    .await;
    assert_eq!(moved[0].1, "pending");
    assert!(
        tasks(&cc, "postop_d7").is_empty(),
        "no second call on 11-27"
    );
    bridge.shutdown().await;

    let start = "2026-11-28T10:00:00+08:00";
    let bridge = setup.start_at(start).await;
    let addr: SocketAddr = bridge.ops_addr().unwrap();
    let task = wait_task(&cc, "postop_d7").await;
    assert_eq!(task.json["taskRef"], d7.as_str());
    // No answer at 10:05: the retry is the same call, + 2 h → the 14:00 window (R-TKT-7).
    let no_answer = serde_json::json!({
        "eventId": "fu-ev-0", "taskRef": d7, "status": "no_answer",
        "endedAt": "2026-11-28T10:05:00+08:00"
    })
    .to_string();
    let (s, _) = post_call_result(addr, &no_answer, now_s(start)).await;
    assert_eq!(s, 200);
    let retry = format!("{d7}:2");
    let calls = wait_calls(&setup, "the retry queued", |c| {
        c.iter().any(|x| x.0 == retry)
    })
    .await;
    let r = calls.iter().find(|x| x.0 == retry).unwrap();
    assert_eq!(r.2, ms("2026-11-28T14:00:00+08:00"));
    bridge.shutdown().await;

    // At 14:00 the retry goes out the same day: an earlier attempt of the same step is not
    // another call (R-FUP-3).
    let start = "2026-11-28T14:00:00+08:00";
    let bridge = setup.start_at(start).await;
    let addr: SocketAddr = bridge.ops_addr().unwrap();
    let again = wait_for(20, "the retry at the call center", || {
        let t: Vec<Recorded> = tasks(&cc, "postop_d7");
        async move { (t.len() >= 2).then_some(t) }
    })
    .await;
    assert_eq!(again[1].json["taskRef"], retry.as_str());
    assert_eq!(again[1].json["attempt"], 2);
    let result = serde_json::json!({
        "eventId": "fu-ev-1", "taskRef": retry, "status": "answered",
        "endedAt": "2026-11-28T14:05:00+08:00", "needsAttention": true
    })
    .to_string();
    let (s, _) = post_call_result(addr, &result, now_s(start)).await;
    assert_eq!(s, 200);
    let case = wait_for(20, "the URGENT case at HCRM", || {
        let c = hcrm
            .accepted()
            .into_iter()
            .find(|r| r.json["source"] == "followup");
        async move { c }
    })
    .await;
    assert!(case.json["ticketId"].as_str().unwrap().starts_with("FU-"));
    assert_eq!(case.json["op"], "create");
    assert_eq!(case.json["grade"], "URGENT");
    assert_eq!(
        case.json["sla"]["responseDueAt"],
        "2026-11-28T15:05:00+08:00"
    );
    assert_eq!(case.json["patient"]["pseudonym"], pk.as_str());
    let case_id = case.json["ticketId"].as_str().unwrap().to_string();
    // HCRM owns the case: the bridge neither calls the patient again nor escalates it.
    let db = sqlite(&setup.db).await;
    let (calls, ladder): (i64, i64) = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM ticket_outbox WHERE ticket_id = ?1 AND sink = 'callcenter'), \
                (SELECT COUNT(*) FROM ticket_escalations WHERE ticket_id = ?1)",
    )
    .bind(&case_id)
    .fetch_one(&db)
    .await
    .map(|r| (r.get(0), r.get(1)))
    .unwrap();
    assert_eq!((calls, ladder), (0, 0));
    // The same event again changes nothing.
    let (s, _) = post_call_result(addr, &result, now_s(start)).await;
    assert_eq!(s, 200);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let cases = hcrm
        .accepted()
        .into_iter()
        .filter(|r| r.json["source"] == "followup" && r.json["op"] == "create")
        .count();
    assert_eq!(cases, 1);
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// R-FUP-4: a death cancels every pending call to the patient; R-FUP-2: the deceased discharge
/// of EX-08 plans nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn death_cancels_the_calls_and_a_deceased_discharge_plans_none() {
    let (cem, hcrm, cc) = (
        Recorder::start().await,
        Recorder::start().await,
        Recorder::start().await,
    );
    let setup = ticket_setup("fu-death", &cem, &hcrm, &cc, "");
    let bridge = setup.start_at("2026-11-20T16:00:00+08:00").await;
    setup.wait_declared().await;
    publish(&setup.queue, &read_fixture(A03), "death-a03").await;
    wait_calls(&setup, "the plan", |c| c.len() == 2).await;
    // An A08 for the same patient with PID-30 = Y (EX-21).
    let a08 = String::from_utf8(read_fixture("hl7v2/adt_a08_update_phone.hl7")).unwrap();
    let dead = a08
        .lines()
        .flat_map(|l| l.split('\r'))
        .filter(|l| !l.is_empty())
        .map(|seg| {
            if seg.starts_with("PID|") {
                let mut f: Vec<String> = seg.split('|').map(String::from).collect();
                f.resize(f.len().max(31), String::new());
                f[3] = "P00067890^^^HXEYE^PI".into();
                f[30] = "Y".into();
                f.join("|")
            } else {
                seg.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\r");
    publish(&setup.queue, dead.as_bytes(), "death-a08").await;
    let calls = wait_calls(&setup, "the calls cancelled", |c| {
        c.iter().all(|x| x.1 == "cancelled")
    })
    .await;
    assert!(calls.iter().all(|c| c.3.as_deref() == Some("deceased")));
    assert!(
        jobs(&setup).await.iter().all(|j| j.1 == "cancelled"),
        "the survey and the questionnaire are cancelled too"
    );
    // EX-08: a deceased discharge of another patient plans nothing, with the reason audited.
    publish_fixture(
        &setup.queue,
        "hl7v2/adt_a03_discharge_deceased.hl7",
        "death-ex08",
    )
    .await;
    let db = sqlite(&setup.db).await;
    let reason: String = wait_for(20, "the follow-up exclusion audited", || {
        let db = db.clone();
        async move {
            sqlx::query("SELECT reason FROM audit WHERE action = 'followup_excluded'")
                .fetch_optional(&db)
                .await
                .unwrap()
                .map(|r| r.get(0))
        }
    })
    .await;
    assert_eq!(reason, "deceased");
    assert_eq!(fu_calls(&setup).await.len(), 2, "no new calls");
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// R-FUP-2: the follow-up opt-out list is checked again when a call is due — a patient listed
/// after planning gets no call (recorded `opted_out`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_on_the_follow_up_opt_out_list_when_the_call_is_due_gets_none() {
    let (cem, hcrm, cc) = (
        Recorder::start().await,
        Recorder::start().await,
        Recorder::start().await,
    );
    let mut setup = ticket_setup("fu-optout", &cem, &hcrm, &cc, "");
    let calls = discharged(&setup).await;
    let list = setup.dir.join("followup-opt-out.csv");
    std::fs::write(&list, "kind,value,authority\npatient_id,P00067890,HXEYE\n").unwrap();
    setup.extra_top.push_str(&format!(
        "\n[lists]\nfollowup_opt_out = [\"{}\"]\n",
        list.display()
    ));
    let bridge = setup.start_at("2026-11-27T10:00:00+08:00").await;
    let done = wait_calls(&setup, "the D+7 call given up", |c| c[0].1 == "dead").await;
    assert_eq!(done[0].0, calls[0].0);
    let db = sqlite(&setup.db).await;
    let reason: String = sqlx::query("SELECT reason FROM ticket_outbox WHERE idem_key = ?")
        .bind(&calls[0].0)
        .fetch_one(&db)
        .await
        .unwrap()
        .get(0);
    assert_eq!(reason, "opted_out");
    assert!(tasks(&cc, "postop_d7").is_empty(), "no call");
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// Issue 19 §1: the bridge was stopped from the discharge until 12-01 10:00, four days after
/// the D+7 call's planned day (11-27): the call is recorded `expired` (more than
/// `max_call_delay_days` = 3 late), not made; the next call (12-17) stays planned; the survey
/// is suppressed `stale_event` at send time (R-SRV-4, R-SRV-6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_call_found_days_after_its_planned_day_expires() {
    let (cem, hcrm, cc) = (
        Recorder::start().await,
        Recorder::start().await,
        Recorder::start().await,
    );
    let setup = ticket_setup("fu-expired", &cem, &hcrm, &cc, "");
    let calls = discharged(&setup).await;
    let bridge = setup.start_at("2026-12-01T10:00:00+08:00").await;
    let done = wait_calls(&setup, "the D+7 call expired", |c| c[0].1 != "pending").await;
    assert_eq!(
        (done[0].0.as_str(), done[0].1.as_str(), done[0].3.as_deref()),
        (calls[0].0.as_str(), "expired", Some("max_call_delay"))
    );
    assert_eq!(done[1].1, "pending", "the later call stays planned");
    // R-SRV-4 at send time: the discharge's survey (due 11-21 10:00, stale after 11-27 15:55)
    // is suppressed, not pushed; the ops summary says what the overdue work came to.
    let addr = bridge.ops_addr().unwrap();
    let report = wait_for(20, "the overdue work done", || async move {
        let v: serde_json::Value = reqwest::get(format!("http://{addr}/api/summary"))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v["catch_up"]["pending"] == 0).then(|| v["catch_up"].clone())
    })
    .await;
    assert_eq!(report["found"], 2, "{report}");
    assert_eq!(
        report["line"],
        "1 call(s) expired(max_call_delay), 1 survey(s) suppressed(stale_event)"
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(cc.accepted().is_empty(), "no call made");
    assert!(cem.requests().is_empty(), "no stale survey pushed");
    bridge.shutdown().await;
    cleanup(&setup).await;
}
