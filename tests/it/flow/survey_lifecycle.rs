//! Survey lifecycle end to end (R-CAN-1..5, R-EXC-1; EX-02, 06, 07, 08, 14, 21, 22): messages are queued before
//! the bridge starts, so they arrive in order in one batch, before any push.

use std::time::Duration;

use crate::common::*;

/// Start a bridge on `msgs` (queued first), wait until all are acked, return the bridge.
async fn run_sequence(
    name: &str,
    cem: &Recorder,
    msgs: &[&str],
) -> (Setup, cem_bridge::app::Bridge) {
    let setup = Setup::new(name, &cem.url());
    let b = setup.start().await;
    setup.wait_declared().await;
    b.shutdown().await;
    let bodies: Vec<Vec<u8>> = msgs.iter().map(|m| m.as_bytes().to_vec()).collect();
    publish_many(&setup.queue, &bodies).await;
    let bridge = setup.start().await;
    let store = bridge.store.clone();
    let n = msgs.len() as i64;
    wait_for(20, "every message processed", || {
        let store = store.clone();
        async move { (store.inbox_count().await.ok()? == n).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await; // let a wrong push show up
    (setup, bridge)
}

fn sample(rel: &str) -> String {
    String::from_utf8(read_fixture(rel)).unwrap()
}

/// EX-02 / R-CAN-1: a registration cancelled (A11) before its survey was sent → nothing sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ex_02_cancel_before_send_sends_nothing() {
    let cem = Recorder::start().await;
    let a04 = sample("hl7v2/adt_a04_outpatient_registration.hl7");
    let a11 = sample("hl7v2/adt_a11_cancel_registration.hl7");
    let (setup, bridge) = run_sequence("ex02", &cem, &[&a04, &a11]).await;
    let jobs = bridge.store.jobs().await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (jobs[0].status.as_str(), jobs[0].reason.as_deref()),
        ("cancelled", Some("visit_cancelled"))
    );
    assert!(cem.requests().is_empty(), "nothing sent");
    let audit = bridge.store.audit(Some(&jobs[0].job_id)).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a.action == "cancelled" && a.rule.as_deref() == Some("R-CAN-1"))
    );
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// EX-14 / R-CAN-2: the cancel arrives before the registration → the registration is
/// `cancelled(visit_cancelled)`, the same outcome as a cancel after it (EX-02; issue 19 §4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ex_14_cancel_before_registration_cancels_it() {
    let cem = Recorder::start().await;
    let a04 = sample("hl7v2/adt_a04_outpatient_registration.hl7");
    let a11 = sample("hl7v2/adt_a11_cancel_registration.hl7");
    let (setup, bridge) = run_sequence("ex14", &cem, &[&a11, &a04]).await;
    assert!(bridge.store.jobs().await.unwrap().is_empty(), "no job");
    let audit = bridge
        .store
        .audit(Some("MSG20261120093015001"))
        .await
        .unwrap();
    assert!(
        audit.iter().any(|a| a.action == "cancelled"
            && a.reason.as_deref() == Some("visit_cancelled")
            && a.rule.as_deref() == Some("R-CAN-2")),
        "{audit:?}"
    );
    assert!(cem.requests().is_empty());
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// EX-07 / R-CAN-3: A03, A13, A03 (new discharge time) → one job, active again with the new
/// due time; at most one survey.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ex_07_discharge_cancelled_and_discharged_again_is_one_job_with_the_new_time() {
    let cem = Recorder::start().await;
    let a03 = sample("hl7v2/adt_a03_discharge.hl7");
    let a13 = sample("hl7v2/adt_a13_cancel_discharge.hl7");
    let again = a03
        .replace("MSG20261120160000004", "MSG20261122090000009")
        .replace(
            "|20261115075500|20261120155500",
            "|20261115075500|20261122090000",
        );
    let (setup, bridge) = run_sequence("ex07", &cem, &[&a03, &a13, &again]).await;
    let jobs = bridge.store.jobs().await.unwrap();
    assert_eq!(jobs.len(), 1, "one job for the stay");
    let j = &jobs[0];
    assert_eq!(j.status, "pending", "re-activated, not yet due");
    let due = jiff::Timestamp::from_millisecond(j.due_at).unwrap();
    assert_eq!(
        cem_pipeline::time::rfc3339_in(due, &cem_pipeline::time::default_zone()),
        "2026-11-23T10:00:00+08:00"
    );
    let actions: Vec<String> = bridge
        .store
        .audit(Some(&j.job_id))
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.action)
        .collect();
    assert_eq!(actions, vec!["scheduled", "cancelled", "reactivated"]);
    assert!(
        cem.requests().is_empty(),
        "nothing due yet on the test clock"
    );
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// R-CAN-1: a cancel after the survey was sent is recorded as `cancel_after_send` only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_after_send_is_recorded_only() {
    let cem = Recorder::start().await;
    let setup = Setup::new("after-send", &cem.url());
    let bridge = setup.start().await;
    setup.wait_declared().await;
    publish_fixture(&setup.queue, A04_SAMPLE, "a04").await;
    cem.wait_accepted(1, 20, "the survey").await;
    let store = bridge.store.clone();
    wait_for(10, "marked sent", || {
        let store = store.clone();
        async move { (store.jobs().await.ok()?.first()?.status == "sent").then_some(()) }
    })
    .await;
    publish_fixture(&setup.queue, "hl7v2/adt_a11_cancel_registration.hl7", "a11").await;
    let audit = wait_for(20, "the cancel recorded", || {
        let store = store.clone();
        async move {
            let a = store.audit(Some("MSG20261120101500002")).await.ok()?;
            (!a.is_empty()).then_some(a)
        }
    })
    .await;
    assert_eq!(audit[0].reason.as_deref(), Some("cancel_after_send"));
    assert_eq!(
        bridge.store.jobs().await.unwrap()[0].status,
        "sent",
        "stays sent"
    );
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// R-SRV-2: an outpatient visit's survey is due 2 h after the registration's PV1-44 until an
/// A03 for the same visit (PV1-2 = O) says when the visit ended: then PV1-45 + 2 h, in the job
/// and in the payload's `dueAt`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_srv_2_outpatient_a03_reanchors_the_pending_survey() {
    let cem = Recorder::start().await;
    // Registered 11-21 10:00 (the test clock starts 10:30) → due 12:00, pending.
    let a04 = sample("hl7v2/adt_a04_outpatient_registration.hl7")
        .replace("|20261120093000", "|20261121100000");
    let a03 = a04
        .replace("ADT^A04^ADT_A01", "ADT^A03^ADT_A03")
        .replace("EVN|A04|", "EVN|A03|")
        .replace("MSG20261120093015001", "MSG-A03-OUTPATIENT")
        .replace("|20261121100000\r", "|20261121100000|20261121113000\r");
    assert!(a03.contains("|20261121113000"), "PV1-45 set");
    let (setup, bridge) = run_sequence("reanchor", &cem, &[&a04, &a03]).await;
    let jobs = bridge.store.jobs().await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].status, "pending");
    let due = jiff::Timestamp::from_millisecond(jobs[0].due_at).unwrap();
    assert_eq!(
        cem_pipeline::time::rfc3339_in(due, &cem_pipeline::time::default_zone()),
        "2026-11-21T13:30:00+08:00",
        "11:30 + 2 h"
    );
    let payload: serde_json::Value = serde_json::from_str(&jobs[0].payload).unwrap();
    assert_eq!(payload["dueAt"], "2026-11-21T13:30:00+08:00");
    let audit = bridge
        .store
        .audit(Some("MSG-A03-OUTPATIENT"))
        .await
        .unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a.action == "rescheduled" && a.rule.as_deref() == Some("R-SRV-2")),
        "{audit:?}"
    );
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// The A03 sample discharged on 2026-11-21 09:00, so its survey is due 11-22 10:00 and stays
/// pending on the test clock.
fn a03_pending() -> String {
    sample("hl7v2/adt_a03_discharge.hl7").replace(
        "|20261115075500|20261120155500",
        "|20261115075500|20261121090000",
    )
}

/// EX-06 / R-CAN-5: an A08 with a new phone points the pending survey at the new mobile's
/// pseudonym; EX-22: an older A08 afterwards changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ex_06_and_ex_22_a08_updates_the_pending_contact_only_when_newer() {
    let cem = Recorder::start().await;
    let a03 = a03_pending();
    let a08 = sample("hl7v2/adt_a08_update_phone.hl7");
    let older = a08
        .replace("MSG20261120163000006", "MSG20261120160000777")
        .replace("EVN|A08|20261120163000", "EVN|A08|20261120160000")
        .replace("13711112222", "13755556666");
    let (setup, bridge) = run_sequence("ex06", &cem, &[&a03, &a08, &older]).await;
    let jobs = bridge.store.jobs().await.unwrap();
    assert_eq!(jobs.len(), 1);
    let keys = cem_pipeline::anonymize::Pseudonymizer::new(TEST_KEY, "t1").unwrap();
    assert_eq!(
        jobs[0].mobile_key.as_deref(),
        Some(keys.mobile_key("13711112222").as_str()),
        "EX-06"
    );
    let older_audit = bridge
        .store
        .audit(Some("MSG20261120160000777"))
        .await
        .unwrap();
    let reasons: Vec<_> = older_audit
        .iter()
        .filter_map(|a| a.reason.as_deref())
        .collect();
    assert!(
        reasons.contains(&"older_update_ignored"),
        "EX-22: {reasons:?}"
    );
    assert!(
        reasons.contains(&"older_facts_ignored"),
        "R-PAT-2: the patient record keeps the newer facts: {reasons:?}"
    );
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// EX-21 / R-EXC-1: an A08 saying the patient died cancels the pending survey; EX-08: later
/// events for that patient are suppressed `deceased`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ex_21_and_ex_08_death_cancels_pending_and_suppresses_later_events() {
    let cem = Recorder::start().await;
    let a03 = a03_pending();
    let died = sample("hl7v2/adt_a08_update_phone.hl7")
        .replace("|||||||||||||||||N\r", "|||||||||||||||20261121083000|Y\r");
    let later = sample("hl7v2/adt_a04_outpatient_registration.hl7")
        .replace("P00012345", "P00067890")
        .replace("MSG20261120093015001", "MSG-LATER-1");
    let (setup, bridge) = run_sequence("ex21", &cem, &[&a03, &died, &later]).await;
    let jobs = bridge.store.jobs().await.unwrap();
    assert_eq!(jobs.len(), 1, "no job for the later visit");
    assert_eq!(
        (jobs[0].status.as_str(), jobs[0].reason.as_deref()),
        ("cancelled", Some("deceased"))
    );
    let audit = bridge.store.audit(Some("MSG-LATER-1")).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a.action == "suppressed" && a.reason.as_deref() == Some("deceased")),
        "{audit:?}"
    );
    assert!(cem.requests().is_empty());
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// EX-13 / R-CAN-6: P00054321 was surveyed; it is merged (A40) into P00012345, whose own next
/// visit is then inside the do-not-disturb window; an event for P00054321 maps to P00012345.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ex_13_merge_moves_touches_and_maps_later_events_to_the_survivor() {
    let cem = Recorder::start().await;
    let setup = Setup::new("ex13", &cem.url());
    let bridge = setup.start().await;
    setup.wait_declared().await;
    let a04 = sample("hl7v2/adt_a04_outpatient_registration.hl7");
    // P00054321's own visit: other id, other mobile, no ID card, other visit.
    let merged_visit = a04
        .replace(
            "P00012345^^^HXEYE^PI~110101199003071233^^^CHN^NI",
            "P00054321^^^HXEYE^PI",
        )
        .replace("13812345678", "13600005555")
        .replace("V20261120001", "V20261119001")
        .replace("MSG20261120093015001", "MSG-EX13-1");
    publish(&setup.queue, merged_visit.as_bytes(), "m1").await;
    cem.wait_accepted(1, 20, "P00054321 surveyed").await;
    let store = bridge.store.clone();
    wait_for(10, "marked sent", || {
        let store = store.clone();
        async move { (store.jobs().await.ok()?.first()?.status == "sent").then_some(()) }
    })
    .await;
    publish_fixture(&setup.queue, "hl7v2/adt_a40_merge.hl7", "a40").await;
    // The survivor's own visit, with a mobile and ID card never touched: only pk links it.
    let survivor_visit = a04
        .replace("13812345678", "13600006666")
        .replace("~110101199003071233^^^CHN^NI", "")
        .replace("MSG20261120093015001", "MSG-EX13-2");
    publish(&setup.queue, survivor_visit.as_bytes(), "s1").await;
    let job = wait_for(20, "the survivor's job decided", || {
        let store = store.clone();
        async move {
            store
                .jobs()
                .await
                .ok()?
                .into_iter()
                .find(|j| j.message_id == "MSG-EX13-2" && j.status != "pending")
        }
    })
    .await;
    assert_eq!(
        (job.status.as_str(), job.reason.as_deref()),
        ("suppressed", Some("dnd")),
        "EX-13"
    );
    // A later event for the merged id is scheduled under the survivor's pseudonym.
    let again = merged_visit
        .replace("V20261119001", "V20261121777")
        .replace("MSG-EX13-1", "MSG-EX13-3");
    publish(&setup.queue, again.as_bytes(), "m2").await;
    let j3 = wait_for(20, "the merged id's new job", || {
        let store = store.clone();
        async move {
            store
                .jobs()
                .await
                .ok()?
                .into_iter()
                .find(|j| j.message_id == "MSG-EX13-3")
        }
    })
    .await;
    assert_eq!(j3.patient_key, job.patient_key, "maps to the survivor");
    assert!(
        j3.payload.contains(&job.patient_key),
        "the CEM sees the survivor's pk"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cem.accepted().len(), 1, "still one survey");
    bridge.shutdown().await;
    cleanup(&setup).await;
}
