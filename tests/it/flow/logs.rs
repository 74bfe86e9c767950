//! Structured logs (issue 8 §4): in JSON, every line about a message carries its message id
//! and a trace id, and the push of the survey it made carries the same trace id — one grep
//! finds a message's whole life. A child bridge process with `[log] format = "json"`.

use std::collections::BTreeSet;

use crate::common::*;

/// The `(message_id, trace_id)` of the innermost span that names a message, if any.
fn ids(line: &serde_json::Value) -> Option<(String, String)> {
    let spans = line["spans"].as_array()?;
    spans.iter().rev().find_map(|s| {
        Some((
            s["message_id"].as_str()?.to_string(),
            s["trace_id"].as_str()?.to_string(),
        ))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_message_and_trace_id_on_every_line_about_it() {
    let cem = Recorder::start().await;
    let mut setup = Setup::new("logs-json", &cem.url());
    setup.extra_top = "[log]\nformat = \"json\"\n".into();
    let cfg = setup.write_config();
    let log = setup.dir.join("bridge.log");
    let mut child = spawn_bridge_at_level(&cfg, None, &log, "debug");
    setup.wait_declared().await;
    publish_fixture(&setup.queue, A04_SAMPLE, "a04").await;
    publish_fixture(&setup.queue, "bad/truncated.hl7", "bad/truncated.hl7").await;
    cem.first_accepted().await;
    wait_for(20, "the dead letter", || {
        let dlq = setup.dlq();
        async move { (queue_depth(&dlq).await? == 1).then_some(()) }
    })
    .await;
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(ok.success());
    assert!(wait_exit(&mut child, 30).await.success());

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let of = |mid: &str| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|l| ids(l).is_some_and(|(m, _)| m == mid))
            .collect()
    };
    let a04 = of("MSG20261120093015001");
    let messages: BTreeSet<&str> = a04
        .iter()
        .filter_map(|l| l["fields"]["message"].as_str())
        .collect();
    for want in ["survey decision", "survey pushed"] {
        assert!(messages.contains(want), "{want:?} among {messages:?}");
    }
    let traces: BTreeSet<String> = a04.iter().map(|l| ids(l).unwrap().1).collect();
    assert_eq!(
        traces.into_iter().collect::<Vec<_>>(),
        [cem_bridge::process::logctx::trace_id(
            "MSG20261120093015001"
        )],
        "ingest and push share one trace id"
    );
    let bad = of("bad/truncated.hl7");
    assert!(
        bad.iter()
            .any(|l| l["fields"]["message"] == "dead-lettered"
                && l["fields"]["reason"] == "truncated"),
        "{bad:?}"
    );
    assert_no_pii("the JSON log", &text);
    cleanup(&setup).await;
}

/// Issue 20 §7: at info level a push writes no line of its own; one summary line counts what
/// happened (received, duplicates, pushed) — here the one written at shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_logs_count_pushes_and_duplicates_in_a_summary_line() {
    let cem = Recorder::start().await;
    let setup = Setup::new("logs-info", &cem.url());
    let cfg = setup.write_config();
    let log = setup.dir.join("bridge.log");
    let mut child = spawn_bridge_at_level(&cfg, None, &log, "info");
    setup.wait_declared().await;
    publish_fixture(&setup.queue, A04_SAMPLE, "a04").await;
    publish_fixture(&setup.queue, A04_SAMPLE, "a04-again").await;
    cem.first_accepted().await;
    let db = sqlite(&setup.db).await;
    wait_for(20, "the second delivery recorded as a duplicate", || {
        let db = db.clone();
        async move {
            let n: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM audit WHERE action = 'duplicate'")
                    .fetch_one(&db)
                    .await
                    .ok()?;
            (n == 1).then_some(())
        }
    })
    .await;
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(ok.success());
    assert!(wait_exit(&mut child, 30).await.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("survey pushed"),
        "no line per push at info:\n{text}"
    );
    let summary = text
        .lines()
        .find(|l| l.contains("last 60 s:"))
        .unwrap_or_else(|| panic!("no summary line:\n{text}"));
    for want in [
        "1 received",
        "1 duplicate(s)",
        "1 survey(s) scheduled",
        "1 pushed",
    ] {
        assert!(summary.contains(want), "{want:?} in {summary}");
    }
    assert_no_pii("the info log", &text);
    cleanup(&setup).await;
}
