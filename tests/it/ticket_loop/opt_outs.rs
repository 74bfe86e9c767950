//! R-EXC-3 fed by the CEM: a patient who answers 回复TD to a survey is opted out through the
//! signed `POST /hooks/cem/unsubscribes`; the bridge stores the patient and mobile pseudonyms
//! and no later survey goes out — neither one scheduled afterwards (suppressed when the event
//! arrives) nor one already pending (suppressed in the claim at send time). Run on both stores.

use crate::common::*;
use cem_bridge::process::clock::Clock;
use cem_pipeline::anonymize::Pseudonymizer;
use cem_pipeline::event::{PatientId, Pii};
use jiff::Timestamp;

const A04: &str = "hl7v2/adt_a04_outpatient_registration.hl7";

fn local(t: &str) -> Timestamp {
    format!("{}:00+08:00", t.replace(' ', "T")).parse().unwrap()
}

fn a04(id: &str, visit: &str, at: &str) -> Vec<u8> {
    String::from_utf8(read_fixture(A04))
        .unwrap()
        .replace("MSG20261120093015001", id)
        .replace("V20261120001", visit)
        .replace("20261120093000", at)
        .into_bytes()
}

async fn job_of(db: &Db, message_id: &str) -> Option<(String, String, Option<String>)> {
    use sqlx::Row;
    let pool = sqlx::AnyPool::connect(&db.url).await.ok()?;
    let r = sqlx::query("SELECT job_id, status, reason FROM survey_jobs WHERE message_id = $1")
        .bind(message_id)
        .fetch_optional(&pool)
        .await
        .ok()??;
    pool.close().await;
    Some((r.get("job_id"), r.get("status"), r.get("reason")))
}

async fn wait_job(db: &Db, message_id: &str, status: &str) -> (String, Option<String>) {
    wait_for(20, &format!("{message_id} {status}"), || async {
        job_of(db, message_id)
            .await
            .filter(|j| j.1 == status)
            .map(|j| (j.0, j.2))
    })
    .await
}

async fn unsubscribe_flow(db: Db, name: &str) {
    sqlx::any::install_default_drivers();
    let (cem, hcrm, cc) = (
        Recorder::start().await,
        Recorder::start().await,
        Recorder::start().await,
    );
    let mut setup = ticket_setup(name, &cem, &hcrm, &cc, "");
    setup.store_url = Some(db.url.clone());
    let clock = Clock::starting_at(local("2026-11-20 09:31"));
    let bridge = cem_bridge::app::start_with_clock(setup.config(), test_secrets(), clock.clone())
        .await
        .expect("bridge starts");
    setup.wait_declared().await;
    let ops = bridge.ops_addr().expect("ops listener");
    let keys = Pseudonymizer::new(TEST_KEY, "t1").unwrap();
    let post = |body: String| {
        let at = clock.now().as_second();
        async move {
            post_signed_to(
                ops,
                "/hooks/cem/unsubscribes",
                &body,
                TEST_WEBHOOK_SECRET,
                at,
            )
            .await
        }
    };

    // A survey is sent; the patient answers TD to its SMS.
    publish(
        &setup.queue,
        &a04("TD-1", "V20261120001", "20261120093000"),
        "td1",
    )
    .await;
    wait_job(&db, "TD-1", "pending").await;
    clock.set(local("2026-11-20 11:30"));
    let (job, _) = wait_job(&db, "TD-1", "sent").await;
    let td = format!(r#"{{"eventId":"u1","requestId":"sv:{job}","channel":"sms","reply":"TD"}}"#);
    let (status, answer) = post(td.clone()).await;
    assert_eq!((status, answer["result"].as_str()), (200, Some("recorded")));
    let (status, answer) = post(td.replace("u1", "u2")).await;
    assert_eq!(
        (status, answer["result"].as_str()),
        (200, Some("already")),
        "a repeated callback changes nothing"
    );
    let pk = keys.patient_key(&PatientId {
        authority: "HXEYE".into(),
        id: Pii::new("P00012345".to_string()),
    });
    let mk = keys.mobile_key("13812345678");
    assert_eq!(
        db.count(&format!(
            "SELECT COUNT(*) AS n FROM opt_outs WHERE opt_key IN ('{pk}', '{mk}') AND source = 'cem:sms' AND job_id = '{job}'"
        ))
        .await,
        2,
        "the patient and the mobile the survey went to"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) AS n FROM audit WHERE action = 'opted_out' AND rule = 'R-EXC-3'")
            .await,
        1,
        "audited once"
    );

    // Refusals: unknown job, unsigned, malformed (the field named, no value echoed).
    let (status, answer) = post(r#"{"eventId":"u3","jobId":"nope"}"#.into()).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (404, Some("unknown_job"))
    );
    let (status, answer) = post(r#"{"eventId":"u4","patientKey":"13812345678"}"#.into()).await;
    assert_eq!(status, 400);
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .starts_with("patientKey")
            && !answer.to_string().contains("13812345678"),
        "{answer}"
    );
    let unsigned = reqwest::Client::new()
        .post(format!("http://{ops}/hooks/cem/unsubscribes"))
        .body(td)
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status().as_u16(), 401);

    // A pending survey of another patient, who then unsubscribes by pseudonym: nothing is
    // sent when it falls due (checked in the claim, R-SRV-6).
    let other = String::from_utf8(a04("TD-2", "V20261120002", "20261120113100"))
        .unwrap()
        .replace("P00012345", "P00022222")
        .replace("~110101199003071233^^^CHN^NI", "")
        .replace("13812345678", "13922223333");
    clock.set(local("2026-11-20 11:32"));
    publish(&setup.queue, other.as_bytes(), "td2").await;
    wait_job(&db, "TD-2", "pending").await;
    let pk2 = keys.patient_key(&PatientId {
        authority: "HXEYE".into(),
        id: Pii::new("P00022222".to_string()),
    });
    let (status, _) = post(format!(r#"{{"eventId":"u5","patientKey":"{pk2}"}}"#)).await;
    assert_eq!(status, 200);
    clock.set(local("2026-11-20 13:31"));
    let (_, reason) = wait_job(&db, "TD-2", "suppressed").await;
    assert_eq!(reason.as_deref(), Some("opted_out"));

    // Weeks later, after the do-not-disturb window, the first patient visits again: the
    // opt-out holds (suppressed when the registration arrives).
    clock.set(local("2026-12-25 09:01"));
    publish(
        &setup.queue,
        &a04("TD-3", "V20261225001", "20261225090000"),
        "td3",
    )
    .await;
    wait_for(20, "TD-3 decided", || async {
        (db.count(
            "SELECT COUNT(*) AS n FROM audit WHERE message_id = 'TD-3' AND action = 'suppressed' AND reason = 'opted_out'",
        )
        .await
            == 1)
            .then_some(())
    })
    .await;
    assert!(job_of(&db, "TD-3").await.is_none(), "no job for TD-3");

    // Issue 19 §6: a TD that names only the patient stops the phone too. A third patient's
    // survey goes to 13955556666; the CEM reports the TD by patientKey; six weeks later (past
    // do-not-disturb) a family member sharing that mobile registers: not surveyed.
    let family = |id: &str, pid: &str, visit: &str, at: &str| {
        String::from_utf8(a04(id, visit, at))
            .unwrap()
            .replace("P00012345", pid)
            .replace("~110101199003071233^^^CHN^NI", "")
            .replace("13812345678", "13955556666")
    };
    publish(
        &setup.queue,
        family("TD-4", "P00033333", "V20261225004", "20261225090200").as_bytes(),
        "td4",
    )
    .await;
    wait_job(&db, "TD-4", "pending").await;
    clock.set(local("2026-12-25 11:03"));
    wait_job(&db, "TD-4", "sent").await;
    let pk3 = keys.patient_key(&PatientId {
        authority: "HXEYE".into(),
        id: Pii::new("P00033333".to_string()),
    });
    let (status, answer) = post(format!(r#"{{"eventId":"u6","patientKey":"{pk3}"}}"#)).await;
    assert_eq!((status, answer["result"].as_str()), (200, Some("recorded")));
    let mk3 = keys.mobile_key("13955556666");
    assert_eq!(
        db.count(&format!(
            "SELECT COUNT(*) AS n FROM opt_outs WHERE opt_key IN ('{pk3}', '{mk3}')"
        ))
        .await,
        2,
        "the patient and the mobile of their latest survey"
    );
    clock.set(local("2027-02-08 09:01"));
    publish(
        &setup.queue,
        family("TD-5", "P00044444", "V20270208005", "20270208090000").as_bytes(),
        "td5",
    )
    .await;
    wait_for(20, "TD-5 decided", || async {
        (db.count(
            "SELECT COUNT(*) AS n FROM audit WHERE message_id = 'TD-5' AND action = 'suppressed' AND reason = 'opted_out'",
        )
        .await
            == 1)
            .then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        cem.accepted().len(),
        2,
        "the survey before each TD, nothing after"
    );
    bridge.shutdown().await;
    cleanup(&setup).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_cem_unsubscribe_stops_later_and_pending_surveys() {
    unsubscribe_flow(Db::sqlite("optout").await, "optout-sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_cem_unsubscribe_stops_later_and_pending_surveys() {
    unsubscribe_flow(Db::postgres("optout").await, "optout-pg").await;
}
