//! End-to-end tests of the foundation slice against the real local RabbitMQ, with the bridge
//! in-process and an in-process HTTP recorder as the CEM. Each test uses its own queues and
//! SQLite file.

use std::collections::BTreeSet;

use crate::common::*;

/// Issue 3 §10, R-ANO-1/R-ANO-7: the A03 sample gives exactly one push with the expected
/// fields, and none of the sample's personal values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a03_sample_gives_one_push_with_expected_fields_and_no_personal_data() {
    let cem = Recorder::start().await;
    let setup = Setup::new("a03", &cem.url());
    let bridge = setup.start().await;
    setup.wait_declared().await;
    publish_fixture(&setup.queue, "hl7v2/adt_a03_discharge.hl7", "a03").await;

    let reqs = wait_for(20, "one push", || {
        let cem = cem.clone();
        async move { (!cem.accepted().is_empty()).then(|| cem.requests()) }
    })
    .await;
    // Give a duplicate a chance to show up before counting.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let reqs_after = cem.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs_after.len(), 1, "exactly one push");
    let r = &reqs_after[0];
    let b = &r.json;
    assert_eq!(
        b["templateId"], "IP-SURG-01",
        "R-SRV-1: A03 on the surgical ward CAT02"
    );
    assert_eq!(
        b["dueAt"], "2026-11-21T10:30:00+08:00",
        "R-SRV-2/4: due 10:00 the day after discharge; processed late, so at once"
    );
    assert_eq!(b["channel"], "sms");
    assert_eq!(b["keyId"], "t1");
    assert_eq!(b["patient"]["nameMasked"], "王*英", "R-ANO-3");
    assert_eq!(b["patient"]["sex"], "F");
    assert_eq!(b["patient"]["ageBand"], "70-79", "R-ANO-4");
    assert_eq!(b["patient"]["city"], "上海市");
    assert!(b["patient"]["pk"].as_str().unwrap().starts_with("pk_"));
    assert_eq!(b["visit"]["event"], "DISCHARGED");
    assert_eq!(b["visit"]["visitClass"], "I");
    assert_eq!(b["visit"]["deptCode"], "CAT02");
    assert_eq!(b["visit"]["doctorCode"], "D2048");
    assert_eq!(
        b["visit"]["visitTime"], "2026-11-20T15:00:00+08:00",
        "R-ANO-1: to the hour"
    );
    assert!(b["visit"]["vk"].as_str().unwrap().starts_with("vk_"));
    let job_id = b["jobId"].as_str().unwrap();
    assert_eq!(
        r.idempotency_key.as_deref(),
        Some(format!("sv:{job_id}").as_str()),
        "R-SRV-5"
    );
    for pii in SAMPLE_PII {
        assert!(
            !r.body.contains(pii),
            "R-ANO-1: {pii:?} leaked into the CEM body: {}",
            r.body
        );
    }

    let jobs = bridge.store.jobs().await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].status, "sent");
    assert_eq!(jobs[0].last_status, Some(200));
    // The push can come before the batch's ack: wait for the ack rather than race it.
    let q = setup.queue.clone();
    wait_for(20, "queue drained (acked)", || {
        let q = q.clone();
        async move { (queue_depth(&q).await? == 0).then_some(()) }
    })
    .await;
    bridge.shutdown().await;
    assert_eq!(
        queue_depth(&setup.queue).await,
        Some(0),
        "nothing unacked came back"
    );
    cleanup(&setup).await;
}

/// EX-03 / R-EVT-4: the same message published twice gives one push and counts a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_message_twice_gives_one_push() {
    let cem = Recorder::start().await;
    let setup = Setup::new("dup", &cem.url());
    let bridge = setup.start().await;
    setup.wait_declared().await;
    let body = read_fixture("hl7v2/adt_a04_outpatient_registration.hl7");
    publish(&setup.queue, &body, "first").await;
    publish(&setup.queue, &body, "second").await;

    let store = bridge.store.clone();
    wait_for(20, "two deliveries processed", || {
        let store = store.clone();
        async move {
            let audit = store.audit(None).await.ok()?;
            (audit.iter().any(|a| a.action == "duplicate")).then_some(())
        }
    })
    .await;
    wait_for(20, "the push", || {
        let cem = cem.clone();
        async move { (!cem.accepted().is_empty()).then_some(()) }
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(cem.requests().len(), 1, "one push for two deliveries");
    assert_eq!(
        cem.accepted()[0].json["templateId"],
        "OP-SAT-01",
        "A04 → outpatient"
    );
    assert_eq!(bridge.store.jobs().await.unwrap().len(), 1);
    assert_eq!(bridge.store.inbox_count().await.unwrap(), 1);
    assert_eq!(queue_depth(&setup.queue).await, Some(0));
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// EX-04 / R-SRV-5: the same visit re-sent with a new MSH-10 is the same job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_visit_new_control_id_is_the_same_job() {
    let cem = Recorder::start().await;
    let setup = Setup::new("resent", &cem.url());
    let bridge = setup.start().await;
    setup.wait_declared().await;
    let body =
        String::from_utf8(read_fixture("hl7v2/adt_a04_outpatient_registration.hl7")).unwrap();
    publish(&setup.queue, body.as_bytes(), "a").await;
    let resent = body.replace("MSG20261120093015001", "MSG20261120093015777");
    publish(&setup.queue, resent.as_bytes(), "b").await;
    let store = bridge.store.clone();
    let audit = wait_for(20, "both processed", || {
        let store = store.clone();
        async move {
            let a = store.audit(Some("MSG20261120093015777")).await.ok()?;
            (!a.is_empty()).then_some(a)
        }
    })
    .await;
    assert_eq!(audit[0].action, "no_op");
    assert!(
        matches!(
            audit[0].reason.as_deref(),
            Some("already_scheduled" | "already_sent")
        ),
        "{audit:?}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(cem.requests().len(), 1);
    assert_eq!(bridge.store.jobs().await.unwrap().len(), 1);
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// R-EVT-1, R-EVT-6, EX-23, R-GEN-3: every bad sample, an oversized body, an empty body and a
/// conflicting re-use of a message id are dead-lettered with the reason in a header and in
/// the store; the queue drains; the bridge keeps consuming afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_is_dead_lettered_with_a_reason_and_consuming_continues() {
    let cem = Recorder::start().await;
    let setup = Setup::new("bad", &cem.url());
    let bridge = setup.start().await;
    setup.wait_declared().await;

    let mut expected = vec![
        ("bad/invalid_utf8.hl7", "invalid_encoding"),
        ("bad/malformed.json", "malformed_json"),
        ("bad/malformed.xml", "malformed_xml"),
        ("bad/missing_patient_id.hl7", "missing_patient_id"),
        ("bad/not_hl7.txt", "unknown_format"),
        ("bad/truncated.hl7", "truncated"),
        ("bad/unknown_event.hl7", "unknown_event"),
    ];
    for (file, _) in &expected {
        publish(&setup.queue, &read_fixture(file), file).await;
    }
    let mut big = read_fixture("hl7v2/adt_a04_outpatient_registration.hl7");
    big.extend(std::iter::repeat_n(b'X', 1024 * 1024));
    publish(&setup.queue, &big, "oversized").await;
    publish(&setup.queue, b"", "empty").await;
    // A well-formed 互联互通 PRPA_IN400001UV without the service-code header: 门诊挂号 and 入院
    // share the root, so the shipped mapping cannot name the event.
    publish_fixture(&setup.queue, "xml/registration_utf8.xml", "xml").await;
    // Same MSH-3/4/10 as the A04 sample, different content: duplicate_id_conflict.
    let a04 = read_fixture("hl7v2/adt_a04_outpatient_registration.hl7");
    publish(&setup.queue, &a04, "a04").await;
    let conflicting = String::from_utf8(a04.clone())
        .unwrap()
        .replace("OPH01^^^", "OPH02^^^");
    publish(&setup.queue, conflicting.as_bytes(), "a04-conflict").await;
    expected.extend([
        ("oversized", "oversized"),
        ("empty", "unknown_format"),
        ("xml", "unknown_event"),
        ("a04-conflict", "duplicate_id_conflict"),
    ]);

    let dlq = setup.dlq();
    let letters = wait_for(30, "all dead letters in the DLQ", || {
        let dlq = dlq.clone();
        let n = expected.len();
        async move { (queue_depth(&dlq).await? as usize >= n).then_some(()) }
    })
    .await;
    let () = letters;
    let letters = drain(&dlq).await;
    let got: BTreeSet<(String, String)> = letters
        .iter()
        .map(|l| {
            (
                l.message_id.clone().unwrap_or_default(),
                l.headers.get("x-cem-reason").cloned().unwrap_or_default(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String)> = expected
        .iter()
        .map(|(f, r)| (f.to_string(), r.to_string()))
        .collect();
    assert_eq!(got, want);
    for l in &letters {
        assert_eq!(
            l.headers.get("x-cem-connector").map(String::as_str),
            Some("adt")
        );
        let detail = l.headers.get("x-cem-detail").cloned().unwrap_or_default();
        assert!(!detail.is_empty(), "a detail explains the reason");
        for pii in SAMPLE_PII {
            assert!(
                !detail.contains(pii),
                "R-ANO-8: {pii} in dead-letter header {detail}"
            );
        }
    }
    // The dead-letter body is the original, untouched.
    let trunc = letters
        .iter()
        .find(|l| l.message_id.as_deref() == Some("bad/truncated.hl7"))
        .unwrap();
    assert_eq!(trunc.body, read_fixture("bad/truncated.hl7"));

    let stored = bridge.store.dead_letters().await.unwrap();
    assert_eq!(
        stored.len(),
        expected.len(),
        "every dead letter recorded in the store"
    );
    // The push can come before the batch's ack: wait for the ack rather than race it.
    let q = setup.queue.clone();
    wait_for(20, "queue drained (acked)", || {
        let q = q.clone();
        async move { (queue_depth(&q).await? == 0).then_some(()) }
    })
    .await;

    // Still consuming: a good message after all that is pushed.
    publish_fixture(&setup.queue, "hl7v2/adt_a03_discharge.hl7", "good").await;
    wait_for(20, "a push after the bad input", || {
        let cem = cem.clone();
        async move {
            cem.accepted()
                .iter()
                .any(|r| r.json["templateId"] == "IP-SURG-01")
                .then_some(())
        }
    })
    .await;
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// Issue 3 §7: the CEM answers 503 twice, then 200 → one successful push after retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cem_503_twice_then_200_gives_one_successful_push() {
    let cem = Recorder::start().await;
    cem.script(&[(503, "busy"), (503, "busy")]);
    let setup = Setup::new("retry", &cem.url());
    let bridge = setup.start().await;
    setup.wait_declared().await;
    publish_fixture(&setup.queue, "hl7v2/adt_a03_discharge.hl7", "a03").await;
    wait_for(20, "a successful push", || {
        let cem = cem.clone();
        async move { (!cem.accepted().is_empty()).then_some(()) }
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let reqs = cem.requests();
    let statuses: Vec<u16> = reqs.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![503, 503, 200]);
    let keys: BTreeSet<_> = reqs.iter().map(|r| r.idempotency_key.clone()).collect();
    assert_eq!(
        keys.len(),
        1,
        "every retry carries the same idempotency key"
    );
    let jobs = bridge.store.jobs().await.unwrap();
    assert_eq!((jobs[0].status.as_str(), jobs[0].attempts), ("sent", 3));
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// peer-apis §0: HTTP 200 with a non-zero `code` is a failure and is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_200_with_error_code_is_retried_until_code_0() {
    let cem = Recorder::start().await;
    cem.script(&[(200, r#"{"code":50001,"msg":"系统繁忙"}"#)]);
    let setup = Setup::new("code", &cem.url());
    let bridge = setup.start().await;
    setup.wait_declared().await;
    publish_fixture(&setup.queue, "hl7v2/adt_a03_discharge.hl7", "a03").await;
    let store = bridge.store.clone();
    wait_for(20, "job sent", || {
        let store = store.clone();
        async move {
            let j = store.jobs().await.ok()?;
            (j.first()?.status == "sent").then_some(())
        }
    })
    .await;
    assert_eq!(
        cem.requests().len(),
        2,
        "the code-50001 answer did not count as sent"
    );
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// A 4xx other than 409/429 is permanent: the job is dead with a reason, not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_400_makes_the_job_dead_without_retries() {
    let cem = Recorder::start().await;
    cem.script(&[(400, r#"{"code":400}"#)]);
    let setup = Setup::new("perm", &cem.url());
    let bridge = setup.start().await;
    setup.wait_declared().await;
    publish_fixture(&setup.queue, "hl7v2/adt_a03_discharge.hl7", "a03").await;
    let store = bridge.store.clone();
    let job = wait_for(20, "job dead", || {
        let store = store.clone();
        async move {
            let j = store.jobs().await.ok()?.into_iter().next()?;
            (j.status == "dead").then_some(j)
        }
    })
    .await;
    assert_eq!(job.reason.as_deref(), Some("rejected"));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(cem.requests().len(), 1);
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// R-EVT-6 poison: a message redelivered more than 5 times is dead-lettered as `poison`
/// without being decoded again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_redelivered_more_than_5_times_is_poison() {
    use futures_lite::StreamExt;
    use lapin::options::{BasicConsumeOptions, BasicNackOptions, BasicQosOptions};

    let cem = Recorder::start().await;
    let setup = Setup::new("poison", &cem.url());
    // Declare the topology the bridge's way, then act as a consumer that keeps failing.
    let bridge = setup.start().await;
    setup.wait_declared().await;
    bridge.shutdown().await;
    publish_fixture(&setup.queue, "hl7v2/adt_a03_discharge.hl7", "loop").await;
    let conn = cem_connectors::amqp::connect(&amqp_url(), "test-poison")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(
            setup.queue.as_str().into(),
            "failing".into(),
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();
    for _ in 0..6 {
        let d = consumer.next().await.unwrap().unwrap();
        ch.basic_nack(
            d.delivery_tag,
            BasicNackOptions {
                multiple: false,
                requeue: true,
            },
        )
        .await
        .unwrap();
    }
    let _ = ch.close(200, "bye".into()).await;
    let _ = conn.close(200, "bye".into()).await;

    let bridge = setup.start().await;
    let dlq = setup.dlq();
    wait_for(20, "poison dead letter", || {
        let dlq = dlq.clone();
        async move { (queue_depth(&dlq).await? >= 1).then_some(()) }
    })
    .await;
    let letters = drain(&dlq).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].headers["x-cem-reason"], "poison");
    assert!(
        letters[0].headers["x-cem-delivery-count"]
            .parse::<u64>()
            .unwrap()
            >= 6
    );
    assert!(
        cem.requests().is_empty(),
        "a poison message is not processed"
    );
    assert!(bridge.store.jobs().await.unwrap().is_empty());
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// Shutdown stops consuming and leaves unprocessed messages on the queue, none half-done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaves_unconsumed_messages_on_the_queue() {
    let cem = Recorder::start().await;
    let setup = Setup::new("stop", &cem.url());
    let bridge = setup.start().await;
    setup.wait_declared().await;
    bridge.shutdown().await;
    let body = read_fixture("hl7v2/adt_a04_outpatient_registration.hl7");
    publish(&setup.queue, &body, "after-stop").await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        queue_depth(&setup.queue).await,
        Some(1),
        "still on the queue after shutdown"
    );
    // A restart picks it up.
    let bridge = setup.start().await;
    wait_for(20, "push after restart", || {
        let cem = cem.clone();
        async move { (!cem.accepted().is_empty()).then_some(()) }
    })
    .await;
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// A message whose effects the store refuses (PostgreSQL rejects a NUL byte in text) does not
/// block the feed: once the store proves healthy, the batch is written message by message,
/// the refused one is dead-lettered as `poison`, and the others are processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_store_refuses_is_isolated_and_the_feed_goes_on() {
    let cem = Recorder::start().await;
    let mut setup = Setup::new("isolate", &cem.url());
    let (url, db) = pg_database("isolate").await;
    setup.store_url = Some(url);
    let b = setup.start().await;
    setup.wait_declared().await;
    b.shutdown().await;
    let good = registrations(2, "iso");
    // A NUL byte in MSH-10: valid UTF-8, accepted by the decoder, refused by PostgreSQL.
    let bad = String::from_utf8(good[0].clone())
        .unwrap()
        .replace("MSG-iso-00000", "MSG-iso-\u{0}-bad")
        .into_bytes();
    publish_many(&setup.queue, &[bad, good[1].clone()]).await;

    let bridge = setup.start().await;
    let dlq = setup.dlq();
    wait_for(60, "the refused message dead-lettered", || {
        let dlq = dlq.clone();
        async move { (queue_depth(&dlq).await? >= 1).then_some(()) }
    })
    .await;
    let letters = drain(&dlq).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].headers["x-cem-reason"], "poison");
    cem.wait_accepted(1, 20, "the good message pushed").await;
    assert_eq!(
        queue_depth(&setup.queue).await,
        Some(0),
        "nothing stuck on the queue"
    );
    bridge.shutdown().await;
    cleanup(&setup).await;
    drop_pg_database(&db).await;
}

/// EX-12 / R-DND-1 end to end: two visits of one patient a few minutes apart give one survey;
/// the second job is suppressed `dnd` with the rule recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_visit_inside_the_dnd_window_is_suppressed() {
    let cem = Recorder::start().await;
    let setup = Setup::new("dnd", &cem.url());
    let bridge = setup.start().await;
    setup.wait_declared().await;
    let first =
        String::from_utf8(read_fixture("hl7v2/adt_a04_outpatient_registration.hl7")).unwrap();
    publish(&setup.queue, first.as_bytes(), "v1").await;
    cem.wait_accepted(1, 20, "the first survey").await;
    let second = first
        .replace("MSG20261120093015001", "MSG20261120093015777")
        .replace("V20261120001", "V20261120999");
    publish(&setup.queue, second.as_bytes(), "v2").await;
    let store = bridge.store.clone();
    let job = wait_for(20, "the second job decided", || {
        let store = store.clone();
        async move {
            let jobs = store.jobs().await.ok()?;
            jobs.into_iter()
                .find(|j| j.message_id == "MSG20261120093015777" && j.status != "pending")
        }
    })
    .await;
    assert_eq!(
        (job.status.as_str(), job.reason.as_deref()),
        ("suppressed", Some("dnd"))
    );
    let audit = bridge.store.audit(Some(&job.job_id)).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a.rule.as_deref() == Some("R-DND-1") && a.reason.as_deref() == Some("dnd")),
        "{audit:?}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(cem.requests().len(), 1, "one survey for two visits");
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// Issue 4 §6: HIS XML (互联互通, UTF-8 and GBK) and JSON events reach the CEM through the
/// shipped mappings, anonymised like HL7 v2; an S0024 update that is not a 退号 is ignored
/// (acked and audited, no dead letter). The GBK sample carries the same 身份证号 as the UTF-8
/// one, so R-DND-1 (one person across identifiers) suppresses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xml_and_json_events_reach_the_cem_through_their_mappings() {
    let cem = Recorder::start().await;
    let setup = Setup::new("xmljson", &cem.url());
    let bridge = setup.start().await;
    setup.wait_declared().await;
    let sends: [(&str, &[(&str, &str)]); 5] = [
        ("xml/registration_utf8.xml", &[("service-code", "S0023")]),
        ("xml/registration_gbk.xml", &[("service-code", "S0023")]),
        ("xml/discharge_utf8.xml", &[("service-code", "S0032")]),
        ("json/registration.json", &[]),
        ("json/discharge.json", &[]),
    ];
    for (file, headers) in sends {
        publish_with_headers(&setup.queue, &read_fixture(file), file, headers).await;
    }
    let update = read_fixture("xml/registration_cancelled.xml");
    let update = String::from_utf8(update)
        .unwrap()
        .replace("code=\"cancelled\"", "code=\"active\"")
        .replace("XMLREG20261120101000003", "XMLREG-UPDATE-1");
    publish_with_headers(
        &setup.queue,
        update.as_bytes(),
        "s0024-active",
        &[("service-code", "S0024")],
    )
    .await;

    let pushes = wait_for(30, "four pushes", || {
        let cem = cem.clone();
        async move {
            let a = cem.accepted();
            (a.len() >= 4).then_some(a)
        }
    })
    .await;
    let mut templates: Vec<(String, String)> = pushes
        .iter()
        .map(|r| {
            let b: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            (
                b["visit"]["deptCode"].as_str().unwrap_or("").to_string(),
                b["templateId"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    templates.sort();
    assert_eq!(
        templates,
        [
            ("GLA05", "IP-SURG-01"),
            ("OPH01", "OP-SAT-01"),
            ("OPH01", "OP-SAT-01"),
            ("REF04", "IP-SURG-01"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let pii = [
        "赵丽",
        "钱进",
        "孙建华",
        "周杰",
        "吴敏",
        "P00033333",
        "P00044444",
        "P00055555",
        "P00077777",
        "P00088888",
        "13933334444",
        "13944445555",
        "13655556666",
        "13577778888",
        "13688889999",
        "330106197712123458",
        "11010519660101111X",
        "110101200001011232",
        "31010119850202432X",
        "V20261120003",
        "V20261120004",
        "Z2026111800055",
        "V20261120005",
        "Z2026111700031",
    ];
    for r in &pushes {
        for p in pii {
            assert!(!r.body.contains(p), "R-ANO-1: {p} leaked: {}", r.body);
        }
    }
    let store = bridge.store.clone();
    wait_for(
        20,
        "the S0024 update ignored and the GBK twin suppressed",
        || {
            let store = store.clone();
            async move {
                let audit = store.audit(None).await.ok()?;
                let ignored = audit.iter().any(|a| a.action == "ignored");
                let dnd = audit.iter().any(|a| {
                    a.message_id.as_deref() == Some("XMLREG20261120093500002")
                        && a.action == "suppressed"
                        && a.reason.as_deref() == Some("dnd")
                });
                (ignored && dnd).then_some(())
            }
        },
    )
    .await;
    assert_eq!(cem.accepted().len(), 4, "no fifth push");
    let q = setup.queue.clone();
    wait_for(20, "queue drained (acked)", || {
        let q = q.clone();
        async move { (queue_depth(&q).await? == 0).then_some(()) }
    })
    .await;
    assert_no_dead_letters(&setup).await;
    bridge.shutdown().await;
    cleanup(&setup).await;
}
