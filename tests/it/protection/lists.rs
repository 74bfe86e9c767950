//! Opt-out and staff lists end to end (R-EXC-3, R-EXC-4, R-SRV-6): checked when an event is
//! scheduled, again when the job is sent, and reloaded when the file changes.

use std::time::Duration;

use crate::common::*;
use cem_bridge::process::clock::Clock;

fn sample(rel: &str) -> String {
    String::from_utf8(read_fixture(rel)).unwrap()
}

/// A setup whose `[lists]` names an opt-out and a staff file in its scratch folder.
fn with_lists(name: &str, cem: &Recorder, opt_out: &str, staff: &str) -> Setup {
    let mut setup = Setup::new(name, &cem.url());
    let (o, s) = (setup.dir.join("opt_out.csv"), setup.dir.join("staff.csv"));
    std::fs::write(&o, opt_out).unwrap();
    std::fs::write(&s, staff).unwrap();
    setup.extra_top = format!(
        "[lists]\nopt_out = [\"{}\"]\nstaff = [\"{}\"]\n",
        o.display(),
        s.display()
    );
    setup
}

async fn audit_reasons(bridge: &cem_bridge::app::Bridge, message_id: &str) -> Vec<String> {
    bridge
        .store
        .audit(Some(message_id))
        .await
        .unwrap()
        .into_iter()
        .filter_map(|a| a.reason)
        .collect()
}

/// R-EXC-3 on the mobile, R-EXC-4 on the 身份证号 (HR export), checked when the event arrives;
/// after the opt-out file changes, the next event is checked against the new list (reload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_exc_3_and_4_lists_suppress_at_scheduling_and_reload_on_change() {
    let cem = Recorder::start().await;
    let setup = with_lists(
        "lists",
        &cem,
        "kind,value,authority\nmobile,13812345678\n",
        "# HR export\nid_card,31010419551212002X\n",
    );
    let bridge = setup.start().await;
    setup.wait_declared().await;
    publish(
        &setup.queue,
        sample("hl7v2/adt_a04_outpatient_registration.hl7").as_bytes(),
        "a04",
    )
    .await;
    publish(
        &setup.queue,
        sample("hl7v2/adt_a03_discharge.hl7").as_bytes(),
        "a03",
    )
    .await;
    let store = bridge.store.clone();
    wait_for(20, "both processed", || {
        let store = store.clone();
        async move { (store.inbox_count().await.ok()? == 2).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(cem.requests().is_empty(), "neither was sent");
    assert!(
        audit_reasons(&bridge, "MSG20261120093015001")
            .await
            .contains(&"opted_out".to_string())
    );
    assert!(
        audit_reasons(&bridge, "MSG20261120160000004")
            .await
            .contains(&"staff".to_string()),
        "{:?}",
        bridge.store.audit(None).await.unwrap()
    );

    // The hospital adds the JSON sample's patient to the opt-out list (by patient id).
    std::fs::write(
        setup.dir.join("opt_out.csv"),
        "mobile,13812345678\npatient_id,P00077777,adt\n",
    )
    .unwrap();
    tokio::time::sleep(cem_bridge::app::reload::POLL * 2 + Duration::from_millis(500)).await;
    publish_fixture(&setup.queue, "json/registration.json", "json-reg").await;
    wait_for(20, "the JSON event processed", || {
        let store = store.clone();
        async move { (store.inbox_count().await.ok()? == 3).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(cem.requests().is_empty(), "still nothing sent");
    assert!(
        audit_reasons(&bridge, "EVT-20261120-0001")
            .await
            .contains(&"opted_out".to_string()),
        "the reloaded list applies: {:?}",
        bridge.store.audit(None).await.unwrap()
    );
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// R-SRV-6: a patient who opts out after the survey was scheduled gets nothing: the lists are
/// checked again when the job is due, the job becomes `suppressed(opted_out)` and its
/// do-not-disturb reservation is released (no touch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_srv_6_lists_are_checked_again_at_send_time() {
    let cem = Recorder::start().await;
    let setup = with_lists("lists-send", &cem, "", "");
    let bridge = setup.start().await;
    setup.wait_declared().await;
    // Discharged 11-21 09:00 → due 11-22 10:00: pending on the test clock.
    let a03 = sample("hl7v2/adt_a03_discharge.hl7").replace(
        "|20261115075500|20261120155500",
        "|20261115075500|20261121090000",
    );
    publish(&setup.queue, a03.as_bytes(), "a03").await;
    let store = bridge.store.clone();
    wait_for(20, "a pending job", || {
        let store = store.clone();
        async move {
            let jobs = store.jobs().await.ok()?;
            (jobs.len() == 1 && jobs[0].status == "pending").then_some(())
        }
    })
    .await;
    bridge.shutdown().await;

    // The patient opts out by mobile; the next morning the job is due.
    std::fs::write(setup.dir.join("opt_out.csv"), "mobile,13998765432\n").unwrap();
    let later = cem_bridge::app::start_with_clock(
        setup.config(),
        test_secrets(),
        Clock::starting_at("2026-11-22T10:05:00+08:00".parse().unwrap()),
    )
    .await
    .unwrap();
    let store = later.store.clone();
    let job = wait_for(20, "the job decided at send time", || {
        let store = store.clone();
        async move {
            let jobs = store.jobs().await.ok()?;
            jobs.into_iter().find(|j| j.status != "pending")
        }
    })
    .await;
    assert_eq!(
        (job.status.as_str(), job.reason.as_deref()),
        ("suppressed", Some("opted_out"))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(cem.requests().is_empty(), "nothing sent");
    let audit = later.store.audit(Some(&job.job_id)).await.unwrap();
    assert!(
        audit.iter().any(|a| a.action == "suppressed"
            && a.rule.as_deref() == Some("R-EXC-3")
            && a.detail.as_deref() == Some("found at send time (R-SRV-6)")),
        "{audit:?}"
    );
    later.shutdown().await;
    let pool = sqlite(&setup.db).await;
    let touches: i64 = sqlx::Row::get(
        &sqlx::query("SELECT COUNT(*) AS n FROM touches")
            .fetch_one(&pool)
            .await
            .unwrap(),
        "n",
    );
    assert_eq!(touches, 0, "R-DND-3: the reservation was released");
    pool.close().await;
    cleanup(&setup).await;
}

/// A list file with a bad line stops the start (and `check`) naming file and line, not value.
#[test]
fn a_bad_list_line_is_reported_with_file_and_line() {
    let cem_url = "http://127.0.0.1:9/unused";
    let mut setup = Setup::new("lists-bad", cem_url);
    let o = setup.dir.join("opt_out.csv");
    std::fs::write(&o, "mobile,13812345678\nmobile,02161234567\n").unwrap();
    setup.extra_top = format!("[lists]\nopt_out = [\"{}\"]\n", o.display());
    let cfg = setup.write_config();
    let out = check_config(&cfg);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "{}:2: mobile is not a mainland mobile",
            o.display()
        )),
        "{err}"
    );
    assert!(!err.contains("02161234567"), "no value in the error: {err}");
    let _ = std::fs::remove_dir_all(&setup.dir);
}
