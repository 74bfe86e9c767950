//! The operations surface against the real local RabbitMQ (and PostgreSQL where named), with
//! the bridge in-process and an in-process CEM recorder: `/metrics` (R-MET-1 names, labels and
//! real values; no personal data, R-ANO-8), `/health` and `/ready`.
//!
//! Metrics are per process. `cargo nextest` (what CI runs) gives every test its own process, so
//! the exact counter values asserted here are this test's traffic only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::common::*;
use sqlx::Row;

/// One sample line of the Prometheus text format.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parse the text exposition format (comments skipped; label values unescaped).
fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (head, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("sample line without a value: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match head.split_once('{') {
            None => (head.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unterminated labels in {line:?}"));
                (name.to_string(), parse_labels(body, line))
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

fn parse_labels(body: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        assert_eq!(
            chars.next(),
            Some('"'),
            "label value not quoted in {line:?}"
        );
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => panic!("dangling escape in {line:?}"),
                },
                Some('"') => break,
                Some(c) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        }
        labels.insert(key.trim_start_matches(',').to_string(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    labels
}

/// The value of the series `name` with exactly these labels.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples
        .iter()
        .find(|s| s.name == name && s.labels == want)
        .map(|s| s.value)
}

/// A series to find: name, labels, expected value.
type Expect<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("http://{addr}{path}"))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

async fn metrics(addr: SocketAddr) -> Vec<Sample> {
    let (status, text) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "/metrics: {text}");
    parse_metrics(&text)
}

fn ops_addr(bridge: &cem_bridge::app::Bridge) -> SocketAddr {
    let addr = bridge.ops_addr().expect("the ops server is enabled");
    assert_ne!(
        addr.port(),
        0,
        "port 0 in the config is resolved to the bound port"
    );
    addr
}

/// R-MET-1 / R-ANO-8: after good and bad samples, `/metrics` counts exactly what happened with
/// the rule's names and labels, and no line holds any personal value of the samples.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_met_1_metrics_count_the_real_flow_and_hold_no_personal_data() {
    let cem = Recorder::start().await;
    let setup = Setup::new("ops-metrics", &cem.url());
    let bridge = setup.start().await;
    let addr = ops_addr(&bridge);
    setup.wait_declared().await;
    let sent = [
        "hl7v2/adt_a03_discharge.hl7",
        "hl7v2/adt_a04_outpatient_registration.hl7",
        "hl7v2/adt_a03_discharge_deceased.hl7",
        "bad/truncated.hl7",
        "bad/missing_patient_id.hl7",
        "hl7v2/adt_a04_outpatient_registration.hl7", // again: a duplicate
    ];
    for f in sent {
        publish(&setup.queue, &read_fixture(f), f).await;
    }
    cem.wait_accepted(2, 20, "two surveys accepted").await;
    // Acks and the survey gauge follow the commit and the next refresh.
    let m = wait_for(
        20,
        "every delivery acked and no survey pending",
        || async move {
            let m = metrics(addr).await;
            let acked = value(
                &m,
                "cem_bridge_messages_acked_total",
                &[("connector", "adt")],
            );
            let pending = value(&m, "cem_bridge_survey_pending", &[]);
            (acked == Some(6.0) && pending == Some(0.0)).then_some(m)
        },
    )
    .await;

    let adt = ("connector", "adt");
    let cases: &[Expect] = &[
        (
            "cem_bridge_messages_in_total",
            &[adt, ("format", "hl7v2"), ("event", "DISCHARGED")],
            2.0,
        ),
        (
            "cem_bridge_messages_in_total",
            &[adt, ("format", "hl7v2"), ("event", "REGISTERED")],
            1.0,
        ),
        ("cem_bridge_messages_duplicate_total", &[adt], 1.0),
        (
            "cem_bridge_dead_letters_total",
            &[adt, ("reason", "truncated")],
            1.0,
        ),
        (
            "cem_bridge_dead_letters_total",
            &[adt, ("reason", "missing_patient_id")],
            1.0,
        ),
        (
            "cem_bridge_sink_requests_total",
            &[("sink", "cem"), ("outcome", "2xx")],
            2.0,
        ),
        (
            "cem_bridge_survey_decisions_total",
            &[("decision", "scheduled"), ("reason", "scheduled")],
            2.0,
        ),
        (
            "cem_bridge_survey_decisions_total",
            &[("decision", "sent"), ("reason", "sent")],
            2.0,
        ),
        (
            "cem_bridge_survey_decisions_total",
            &[("decision", "suppressed"), ("reason", "deceased")],
            1.0,
        ),
        ("cem_bridge_ingest_latency_seconds_count", &[adt], 6.0),
        (
            // R-SRV-1: the A03 sample's ward CAT02 gets the surgery template.
            "cem_bridge_survey_send_delay_seconds_count",
            &[("template", "IP-SURG-01")],
            1.0,
        ),
        (
            "cem_bridge_survey_send_delay_seconds_count",
            &[("template", "OP-SAT-01")],
            1.0,
        ),
        ("cem_bridge_survey_oldest_overdue_seconds", &[], 0.0),
    ];
    for (name, labels, want) in cases {
        assert_eq!(
            value(&m, name, labels),
            Some(*want),
            "{name}{labels:?} in {m:#?}"
        );
    }
    // Histograms are rendered with buckets (not as summaries), and the +Inf bucket holds all.
    assert_eq!(
        value(
            &m,
            "cem_bridge_ingest_latency_seconds_bucket",
            &[adt, ("le", "+Inf")]
        ),
        Some(6.0)
    );
    assert!(
        m.iter()
            .any(|s| s.name == "cem_bridge_ingest_latency_seconds_bucket"
                && s.labels.get("le").map(String::as_str) == Some("0.005")),
        "the configured latency buckets are used"
    );
    // Series alerts rely on exist from the start at 0.
    assert_eq!(
        value(
            &m,
            "cem_bridge_dead_letters_total",
            &[adt, ("reason", "poison")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &m,
            "cem_bridge_sink_requests_total",
            &[("sink", "cem"), ("outcome", "5xx")]
        ),
        Some(0.0)
    );
    let rss = value(&m, "cem_bridge_process_resident_memory_bytes", &[]).unwrap_or(0.0);
    assert!(rss > 1_000_000.0, "resident memory {rss} bytes");
    // Only the label names of R-MET-1 are used.
    for s in &m {
        for k in s.labels.keys() {
            assert!(
                [
                    "connector",
                    "format",
                    "event",
                    "reason",
                    "sink",
                    "outcome",
                    "decision",
                    "template",
                    "kind",
                    "le"
                ]
                .contains(&k.as_str()),
                "unexpected label {k} on {}",
                s.name
            );
        }
    }
    // R-ANO-8: nothing personal anywhere in the exposition, labels and help text included.
    let (_, text) = get(addr, "/metrics").await;
    for line in text.lines() {
        for pii in SAMPLE_PII {
            assert!(!line.contains(pii), "{pii:?} in /metrics line {line:?}");
        }
    }
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// `cem_bridge_survey_pending` and `_oldest_overdue_seconds` come from the store: a survey the
/// CEM cannot take stays pending and overdue, measured on the bridge's clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survey_gauges_show_a_job_the_cem_cannot_take_as_pending_and_overdue() {
    // Nothing listens on port 9: every push fails before a response.
    let mut setup = Setup::new("ops-gauges", "http://127.0.0.1:9/surveys/dispatch");
    setup.cem_limits = "backoff_initial_ms = 600000\nbackoff_max_ms = 600000\n".into();
    // The bridge's clock, as `Setup::start` sets it (within milliseconds).
    let clock = cem_bridge::process::clock::Clock::starting_at(CLOCK_START.parse().unwrap());
    let bridge = setup.start().await;
    let addr = ops_addr(&bridge);
    setup.wait_declared().await;
    publish_fixture(&setup.queue, "hl7v2/adt_a03_discharge.hl7", "a03").await;
    // The refresh after the push failed shows the job (every 5 s).
    let m = wait_for(20, "the pending gauge at 1 and overdue", || async move {
        let m = metrics(addr).await;
        let overdue = value(&m, "cem_bridge_survey_oldest_overdue_seconds", &[]);
        (value(&m, "cem_bridge_survey_pending", &[]) == Some(1.0) && overdue > Some(0.0))
            .then_some(m)
    })
    .await;
    let job = &bridge.store.jobs().await.unwrap()[0];
    let expected = (clock.now_ms() - job.due_at) as f64 / 1000.0;
    let overdue = value(&m, "cem_bridge_survey_oldest_overdue_seconds", &[]).unwrap_or(0.0);
    assert!(
        expected > 0.0 && overdue <= expected && expected - overdue < 6.0,
        "overdue {overdue} s, expected about {expected} s (refreshed every 5 s)"
    );
    let failed = value(
        &m,
        "cem_bridge_sink_requests_total",
        &[("sink", "cem"), ("outcome", "timeout")],
    );
    assert_eq!(failed, Some(1.0), "one failed push, retry far away");
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// `/health` answers `{"status":"ok",…}` while the process runs; `/ready` is 200 once the source consumes and
/// the store answers, with a JSON body saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_ok_and_ready_is_200_when_consuming() {
    let setup = Setup::new("ops-ready", "http://127.0.0.1:9/unused");
    let bridge = setup.start().await;
    let addr = ops_addr(&bridge);
    let (status, health) = get(addr, "/health").await;
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    let body = wait_for(15, "/ready 200", || async move {
        let (status, body) = get(addr, "/ready").await;
        (status == 200).then_some(body)
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ready"], true);
    assert_eq!(v["store"], "ok");
    assert_eq!(v["sources"]["adt"], "connected");
    assert_eq!(v["not_ready"], serde_json::json!([]));
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// `/ready` is 503 and names the source that cannot reach RabbitMQ, while the other consumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_503_naming_a_source_that_cannot_reach_rabbitmq() {
    let mut setup = Setup::new("ops-notready", "http://127.0.0.1:9/unused");
    let lab_queue = unique("t.ops-lab");
    // Nothing listens on port 1: the `lab` source never connects.
    setup.extra_source = format!(
        "\n[[source]]\nname = \"lab\"\nurl = \"amqp://guest:guest@127.0.0.1:1/%2f\"\nqueue = \"{lab_queue}\"\n"
    );
    let bridge = setup.start().await;
    let addr = ops_addr(&bridge);
    setup.wait_declared().await;
    let body = wait_for(15, "the adt source connected", || async move {
        let (status, body) = get(addr, "/ready").await;
        assert_eq!(status, 503, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        (v["sources"]["adt"] == "connected").then_some(v)
    })
    .await;
    assert_eq!(body["ready"], false);
    assert_eq!(body["sources"]["lab"], "disconnected");
    assert_eq!(body["store"], "ok");
    assert_eq!(body["not_ready"], serde_json::json!(["source lab"]));
    assert_eq!(get(addr, "/health").await.0, 200, "alive though not ready");
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// `/ready` turns 503 and names the store when the database goes away (PostgreSQL database
/// dropped under the running bridge).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_503_naming_the_store_when_the_database_goes_away() {
    let (url, db) = pg_database("ops_ready").await;
    let mut setup = Setup::new("ops-store", "http://127.0.0.1:9/unused");
    setup.store_url = Some(url);
    let bridge = setup.start().await;
    let addr = ops_addr(&bridge);
    wait_for(15, "/ready 200", || async move {
        (get(addr, "/ready").await.0 == 200).then_some(())
    })
    .await;
    drop_pg_database(&db).await;
    let v = wait_for(20, "/ready 503 naming the store", || async move {
        let (status, body) = get(addr, "/ready").await;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (status == 503 && v["not_ready"] == serde_json::json!(["store"])).then_some(v)
    })
    .await;
    assert_eq!(v["sources"]["adt"], "connected");
    assert_ne!(v["store"], "ok");
    bridge.shutdown().await;
    cleanup(&setup).await;
}

#[test]
fn the_metrics_parser_reads_labels_and_escapes() {
    let m = parse_metrics(
        "# HELP x y\nx_total{a=\"1\",b=\"q\\\"z\"} 3\ny 0.5\nz_bucket{le=\"+Inf\"} 2\n",
    );
    assert_eq!(
        value(&m, "x_total", &[("a", "1"), ("b", "q\"z")]),
        Some(3.0)
    );
    assert_eq!(value(&m, "y", &[]), Some(0.5));
    assert_eq!(value(&m, "z_bucket", &[("le", "+Inf")]), Some(2.0));
    assert_eq!(value(&m, "x_total", &[("a", "1")]), None, "exact label set");
}

/// Run the binary with only the config (no pseudonym key is needed to read the store).
fn cli(args: &[&str]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(bridge_bin());
    cmd.args(args)
        .env_remove("CEM_BRIDGE_PSEUDONYM_KEY")
        .env_remove("CEM_BRIDGE_TEST_KEY")
        .env_remove("CEM_BRIDGE_CONFIG")
        .env_remove("RUST_LOG");
    run_cli(cmd)
}

/// Run a prepared `cem-bridge` command: (success, stdout, stderr).
fn run_cli(mut cmd: std::process::Command) -> (bool, String, String) {
    let out = cmd.output().expect("run cem-bridge");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `dlq list|show` and `trace` read what the running bridge recorded: reasons, details,
/// decisions with rule and reason, job status, attempts and HTTP status, in the configured
/// zone; a re-sent visit (new MSH-10) shows up in the first message's trace through its job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_and_trace_commands_show_what_the_store_recorded() {
    let cem = Recorder::start().await;
    let setup = Setup::new("ops-cli", &cem.url());
    let config = setup.write_config();
    let config = config.to_str().unwrap();
    let bridge = setup.start().await;
    setup.wait_declared().await;
    let a04 = String::from_utf8(read_fixture("hl7v2/adt_a04_outpatient_registration.hl7")).unwrap();
    publish(&setup.queue, a04.as_bytes(), "a04").await;
    publish_fixture(&setup.queue, "bad/truncated.hl7", "bad/truncated.hl7").await;
    let resent = a04.replace("MSG20261120093015001", "MSG-OPS-RESENT");
    publish(&setup.queue, resent.as_bytes(), "a04-resent").await;
    let store = bridge.store.clone();
    wait_for(20, "the survey sent and the re-send recorded", || {
        let store = store.clone();
        async move {
            let sent = store.jobs().await.ok()?.iter().any(|j| j.status == "sent");
            let resent = store
                .audit(Some("MSG-OPS-RESENT"))
                .await
                .ok()?
                .iter()
                .any(|a| a.action == "no_op");
            (sent && resent).then_some(())
        }
    })
    .await;
    let job = bridge.store.jobs().await.unwrap().remove(0);

    // dlq list: one dead letter, text and JSON.
    let (ok, out, err) = cli(&["dlq", "list", "-c", config]);
    assert!(ok, "{err}");
    assert!(out.starts_with("ID  TIME"), "{out}");
    let line = out.lines().nth(1).unwrap_or_default();
    for want in ["adt", "truncated", "bad/truncated.hl7", "MSH-9", "+08:00"] {
        assert!(line.contains(want), "{want} in {line:?}");
    }
    assert!(out.contains("1 of 1 dead letter(s)"), "{out}");
    let (ok, out, err) = cli(&["dlq", "list", "-c", config, "--json", "--limit", "5"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["total"], 1);
    let dl = &v["dead_letters"][0];
    assert_eq!(dl["reason"], "truncated");
    assert_eq!(dl["connector"], "adt");
    assert_eq!(dl["message_id"], "bad/truncated.hl7");
    assert!(dl["at"].as_str().unwrap().ends_with("+08:00"), "{dl}");
    let id = dl["id"].as_i64().unwrap().to_string();

    // dlq show: the record and where the body is.
    let (ok, out, err) = cli(&["dlq", "show", &id, "-c", config]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("RabbitMQ queue {}", setup.dlq())),
        "{out}"
    );
    assert!(out.contains("reason              truncated"), "{out}");
    let (ok, _, err) = cli(&["dlq", "show", "999999", "-c", config]);
    assert!(!ok);
    assert!(err.contains("no dead letter with id 999999"), "{err}");

    // trace by message id: the decision, the re-send's no-op, the push.
    let (ok, out, err) = cli(&["trace", "MSG20261120093015001", "-c", config, "--json"]);
    assert!(ok, "{err}");
    let t: serde_json::Value = serde_json::from_str(&out).unwrap();
    let audit = t["audit"].as_array().unwrap();
    let mut actions: Vec<&str> = audit
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions[0], "scheduled", "{out}");
    let times: Vec<i64> = audit.iter().map(|a| a["at_ms"].as_i64().unwrap()).collect();
    assert!(times.is_sorted(), "oldest first: {times:?}");
    actions.sort_unstable();
    assert_eq!(actions, ["no_op", "scheduled", "sent"], "{out}");
    let no_op = audit.iter().find(|a| a["action"] == "no_op").unwrap();
    assert!(
        ["already_scheduled", "already_sent"].contains(&no_op["reason"].as_str().unwrap()),
        "{no_op}"
    );
    assert_eq!(no_op["message_id"], "MSG-OPS-RESENT");
    assert_eq!(audit[0]["rule"], "R-SRV-5");
    assert_eq!(t["jobs"].as_array().unwrap().len(), 1);
    let j = &t["jobs"][0];
    assert_eq!(j["job_id"], job.job_id.as_str());
    assert_eq!(j["status"], "sent");
    assert_eq!(j["attempts"], 1);
    assert_eq!(j["last_status"], 200);
    let due = jiff::Timestamp::from_millisecond(job.due_at)
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::get("Asia/Shanghai").unwrap())
        .strftime("%Y-%m-%dT%H:%M:%S%.3f%:z")
        .to_string();
    assert_eq!(j["due_at"], due.as_str(), "R-GEN-1: in the configured zone");
    assert!(due.ends_with("+08:00"), "{due}");
    assert!(j["sent_at"].as_str().unwrap().ends_with("+08:00"));
    assert!(j.get("payload").is_none(), "no payload in traces");

    // trace by job id and by pseudonym, as text.
    for key in [job.job_id.as_str(), job.patient_key.as_str()] {
        let (ok, out, err) = cli(&["trace", key, "-c", config]);
        assert!(ok, "{err}");
        assert!(out.starts_with(&format!("trace {key}: 1 job(s)")), "{out}");
        assert!(out.contains("times in Asia/Shanghai"), "{out}");
        for want in [
            "scheduled",
            "sent",
            "OP-SAT-01",
            "HTTP 200",
            "MSG20261120093015001",
        ] {
            assert!(out.contains(want), "{want} in trace {key}: {out}");
        }
        assert_no_pii("trace", &out);
    }
    // trace of the dead letter's message id shows its record.
    let (ok, out, err) = cli(&["trace", "bad/truncated.hl7", "-c", config]);
    assert!(ok, "{err}");
    assert!(
        out.contains("dead_letter") && out.contains("R-EVT-6"),
        "{out}"
    );
    assert_no_pii("trace", &out);
    // Unknown ids are an error that says what an id can be.
    let (ok, _, err) = cli(&["trace", "no-such-id", "-c", config]);
    assert!(!ok);
    assert!(err.contains("pk_"), "{err}");

    bridge.shutdown().await;
    // A config whose SQLite file does not exist is refused, not given a fresh empty store.
    std::fs::remove_file(&setup.db).unwrap();
    let (ok, _, err) = cli(&["dlq", "list", "-c", config]);
    assert!(!ok);
    assert!(err.contains("there is no store at"), "{err}");
    assert!(!setup.db.exists(), "no store was created");
    cleanup(&setup).await;
}

/// The bridge prunes at start (then every `interval_minutes`): old dead letters and finished
/// jobs go, a pending job of the same age stays, and so do recent rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_runs_in_the_bridge_and_keeps_pending_jobs() {
    use cem_bridge::store::{DeadLetterEntry, Store, StoreOptions, now_ms};
    let mut setup = Setup::new("ops-retention", "http://127.0.0.1:9/unused");
    setup.extra_top = "[retention]\ndead_letters_days = 30\njobs_days = 30\n".into();
    // Nothing is due: the pending job must survive retention, not be pushed.
    setup.scheduler = "poll_interval_ms = 60000\n".into();
    let old = now_ms() - 45 * 86_400_000;
    let store = Store::open(
        &format!("sqlite://{}", setup.db.display()),
        &StoreOptions::default(),
    )
    .await
    .unwrap();
    let mut tx = store.begin().await.unwrap();
    for (job_id, due) in [("old-sent", old), ("old-pending", now_ms() + 86_400_000)] {
        let job = job(job_id, "pk_x", job_id, due);
        tx.insert_job(&job, old).await.unwrap();
    }
    for (at, mid) in [(old, "old-dl"), (now_ms(), "new-dl")] {
        let dl = DeadLetterEntry {
            size_bytes: 1,
            ..dead_letter(Some(mid), "truncated")
        };
        tx.dead_letter(&dl, at).await.unwrap();
    }
    tx.commit().await.unwrap();
    let pool = sqlx::AnyPool::connect(&format!("sqlite://{}", setup.db.display()))
        .await
        .unwrap();
    sqlx::query("UPDATE survey_jobs SET status = 'sent' WHERE job_id = 'old-sent'")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    store.close().await;

    let bridge = setup.start().await;
    let store = bridge.store.clone();
    wait_for(15, "the old dead letter and sent job pruned", || {
        let store = store.clone();
        async move {
            let dls = store.dead_letters().await.ok()?;
            let jobs = store.jobs().await.ok()?;
            (dls.len() == 1 && jobs.len() == 1).then_some(())
        }
    })
    .await;
    let dls = bridge.store.dead_letters().await.unwrap();
    assert_eq!(dls[0].message_id.as_deref(), Some("new-dl"));
    let jobs = bridge.store.jobs().await.unwrap();
    assert_eq!(
        (jobs[0].job_id.as_str(), jobs[0].status.as_str()),
        ("old-pending", "pending")
    );
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// `/ready` follows the source: 503 naming it while the broker has dropped its connection,
/// 200 again once it has reconnected. The connection is closed from the broker side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_a_source_through_a_broker_side_disconnect() {
    let setup = Setup::new("ops-reconnect", "http://127.0.0.1:9/unused");
    let bridge = setup.start().await;
    let addr = ops_addr(&bridge);
    wait_for(15, "/ready 200", || async move {
        (get(addr, "/ready").await.0 == 200).then_some(())
    })
    .await;
    close_bridge_connection(&setup.queue);
    // The source waits at least 0.5 s before reconnecting: poll faster than that.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let body = loop {
        let (status, body) = get(addr, "/ready").await;
        if status == 503 {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/ready never turned 503"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["not_ready"], serde_json::json!(["source adt"]), "{v}");
    assert_eq!(v["sources"]["adt"], "disconnected");
    wait_for(15, "/ready 200 after reconnecting", || async move {
        (get(addr, "/ready").await.0 == 200).then_some(())
    })
    .await;
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// `[ops] listen = ""` runs without the server; a port already taken fails the start with a
/// message naming the address and the setting, before anything is consumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_server_can_be_disabled_and_a_taken_port_fails_the_start() {
    let mut setup = Setup::new("ops-listen", "http://127.0.0.1:9/unused");
    setup.ops = "listen = \"\"\n".into();
    let bridge = setup.start().await;
    assert_eq!(bridge.ops_addr(), None);
    bridge.shutdown().await;
    cleanup(&setup).await;

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let mut setup = Setup::new("ops-taken", "http://127.0.0.1:9/unused");
    setup.ops = format!("listen = \"{addr}\"\n");
    let secrets = test_secrets();
    let err = match cem_bridge::app::start(setup.config(), secrets).await {
        Ok(b) => {
            b.shutdown().await;
            panic!("started on a taken port");
        }
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains(&format!("cannot listen on {addr}")) && err.contains("[ops] listen"),
        "{err}"
    );
    assert_eq!(
        queue_depth(&setup.queue).await,
        None,
        "nothing was declared or consumed"
    );
    cleanup(&setup).await;
}

/// The ops page at `/` is the static bilingual page; `/api/summary`, which it polls, shows
/// readiness, surveys by status and the recent dead letters with their reasons — and nothing
/// personal (R-ANO-8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_page_and_its_summary_show_surveys_and_dead_letters_without_personal_data() {
    let cem = Recorder::start().await;
    let setup = Setup::new("ops-page", &cem.url());
    let bridge = setup.start().await;
    let addr = ops_addr(&bridge);
    setup.wait_declared().await;
    publish_fixtures(&setup.queue, &MIXED_SAMPLES).await;
    cem.wait_accepted(2, 20, "two surveys accepted").await;

    let r = reqwest::get(format!("http://{addr}/")).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let ct = r.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(ct.starts_with("text/html"), "{ct}");
    let html = r.text().await.unwrap();
    for label in [
        "最近死信",
        "Recent dead letters",
        "接入流量",
        "Connector flow",
        "问卷任务",
        "Surveys",
        "api/summary",
        "setInterval",
    ] {
        assert!(html.contains(label), "the page has {label:?}");
    }

    // The surveys and the dead letters travel in different batches: wait for both, or the
    // summary can be read between them (CI saw `dead_letters_total` 1 here once).
    let summary = wait_for(
        15,
        "the summary with both surveys sent and both dead letters",
        || async move {
            let (status, body) = get(addr, "/api/summary").await;
            assert_eq!(status, 200, "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let sent = v["jobs"]
                .as_array()?
                .iter()
                .find(|j| j["status"] == "sent")
                .and_then(|j| j["count"].as_i64());
            (sent == Some(2) && v["dead_letters_total"] == 2).then_some((v, body))
        },
    )
    .await;
    let (v, body) = summary;
    assert_eq!(v["readiness"]["ready"], true);
    assert_eq!(v["readiness"]["sources"]["adt"], "connected");
    assert_eq!(v["pending"], 0);
    assert_eq!(v["dead_letters_total"], 2);
    let reasons: Vec<&str> = v["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["missing_patient_id", "truncated"], "newest first");
    assert_eq!(v["dead_letters"][1]["message_id"], "bad/truncated.hl7");
    assert!(
        v["dead_letters"][0]["at"]
            .as_str()
            .unwrap()
            .ends_with("+08:00")
    );
    assert_eq!(v["time_zone"], "Asia/Shanghai");
    assert_no_pii("/api/summary", &body);
    assert_no_pii("/", &html);
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// Listening beyond loopback, `/metrics` and `/api/summary` need `Authorization: Bearer` with
/// the token from `[ops] token_env`; the page itself (no data), `/health` and `/ready` do not.
/// Without the token in the environment, or with one shorter than 32 characters, the bridge
/// refuses to start (issue 20 §3). The scheme is read in any case (RFC 7235); an address that
/// fails more than 10 times a minute gets 429 with `Retry-After` even with the right token,
/// while another address is served, and both are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_loopback_ops_needs_the_bearer_token_for_data() {
    let mut setup = Setup::new("ops-token", "http://127.0.0.1:9/unused");
    setup.ops = "listen = \"0.0.0.0:0\"\ntoken_env = \"CEM_BRIDGE_TEST_OPS_TOKEN\"\n".into();
    let secrets = |ops_token: Option<&str>| cem_bridge::app::Secrets {
        ops_token: ops_token.map(str::to_string),
        ..test_secrets()
    };
    let err = match cem_bridge::app::start(setup.config(), secrets(None)).await {
        Ok(b) => {
            b.shutdown().await;
            panic!("started without the ops token");
        }
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("CEM_BRIDGE_TEST_OPS_TOKEN"), "{err}");
    let err = match cem_bridge::app::start(setup.config(), secrets(Some("s3cret-t0ken"))).await {
        Ok(b) => {
            b.shutdown().await;
            panic!("started with a 12-character ops token");
        }
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("CEM_BRIDGE_TEST_OPS_TOKEN") && err.contains("at least 32"),
        "{err}"
    );

    const TOKEN: &str = "s3cret-t0ken-0123456789abcdef-ops";
    let bridge = cem_bridge::app::start(setup.config(), secrets(Some(TOKEN)))
        .await
        .unwrap();
    let bound = bridge.ops_addr().unwrap();
    assert!(bound.ip().is_unspecified(), "{bound}");
    let addr = SocketAddr::from(([127, 0, 0, 1], bound.port()));
    let client = reqwest::Client::new();
    let status = |path: &'static str, auth: Option<String>| {
        let client = client.clone();
        async move {
            let mut req = client.get(format!("http://{addr}{path}"));
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            req.send().await.unwrap().status().as_u16()
        }
    };
    let some = |s: &str| Some(s.to_string());
    for path in ["/metrics", "/api/summary"] {
        assert_eq!(status(path, None).await, 401, "{path} without a token");
        assert_eq!(status(path, some("Bearer wrong")).await, 401, "{path}");
        assert_eq!(status(path, some(TOKEN)).await, 401, "{path}: no scheme");
        for scheme in ["Bearer", "bearer", "BEARER"] {
            let auth = format!("{scheme} {TOKEN}");
            assert_eq!(status(path, Some(auth)).await, 200, "{path} {scheme}");
        }
    }
    // Six failures so far; four more reach the quota, the next is throttled.
    for i in 0..4 {
        assert_eq!(
            status("/metrics", some("Bearer wrong")).await,
            401,
            "failure {i}"
        );
    }
    let r = client
        .get(format!("http://{addr}/metrics"))
        .header("authorization", "Bearer wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "throttled");
    assert_eq!(
        status("/metrics", Some(format!("Bearer {TOKEN}"))).await,
        429,
        "the right token does not pass while the address is throttled"
    );
    // A caller from another address is served, and sees the counters.
    let other = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let metrics = other
        .get(format!("http://{addr}/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status().as_u16(), 200);
    let metrics = metrics.text().await.unwrap();
    let value = |series: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{series} missing:\n{metrics}"))
    };
    assert_eq!(
        value("cem_bridge_auth_failures_total{endpoint=\"ops\"}"),
        11.0
    );
    assert!(value("cem_bridge_auth_throttled_total{endpoint=\"ops\"}") >= 2.0);
    assert_eq!(status("/", None).await, 200, "the page has no data");
    assert_eq!(status("/health", None).await, 200);
    wait_for(15, "/ready 200 without a token", || {
        let s = status("/ready", None);
        async move { (s.await == 200).then_some(()) }
    })
    .await;
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// `cem-bridge` with the test keys and clock in the environment: (success, stdout, stderr).
fn cli_with_keys(args: &[&str]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(bridge_bin());
    cmd.args(args)
        .env(
            "CEM_BRIDGE_TEST_KEY",
            String::from_utf8_lossy(TEST_KEY).into_owned(),
        )
        .env("CEM_BRIDGE_TEST_VAULT_KEY", TEST_VAULT_KEY_HEX)
        .env("CEM_BRIDGE_CLOCK_START", CLOCK_START)
        .env("RUST_LOG", "warn");
    run_cli(cmd)
}

/// Wait for a dead letter matching `condition` in the test's SQLite store; the open store.
async fn wait_dead_letter(setup: &Setup, condition: &str) -> sqlx::SqlitePool {
    let db = sqlite(&setup.db).await;
    let sql = format!("SELECT id FROM dead_letters WHERE {condition}");
    wait_for(20, "the dead letter", || {
        let (db, sql) = (db.clone(), sql.clone());
        async move {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_optional(&db)
                .await
                .unwrap()
        }
    })
    .await;
    db
}

/// `dlq replay` keeps what a mapping matches on besides the body: an 互联互通 XML registration
/// (whose event comes from the AMQP header `service-code`) reaches a source configured for
/// HL7 v2 only and is dead-lettered; its headers are stored sealed with the body, so a dry run
/// with the XML mappings maps it as a registration, and the real replay republishes it with
/// the header — the survey goes out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_keeps_the_headers_the_mapping_matches_on() {
    let cem = Recorder::start().await;
    let mut setup = Setup::new("dlq-headers", &cem.url());
    setup.extra_source = "mappings = [\"mappings/hl7v2\"]\n".into();
    let bridge = setup.start().await;
    setup.wait_declared().await;
    publish_with_headers(
        &setup.queue,
        &read_fixture("xml/registration_utf8.xml"),
        "xml-reg",
        &[("service-code", "S0023")],
    )
    .await;
    let db = wait_dead_letter(&setup, "headers IS NOT NULL").await;
    let sealed: Vec<u8> = sqlx::query("SELECT headers FROM dead_letters")
        .fetch_one(&db)
        .await
        .unwrap()
        .get(0);
    assert!(
        !String::from_utf8_lossy(&sealed).contains("S0023"),
        "the headers are sealed"
    );
    bridge.shutdown().await;
    let config = setup.write_config();
    let config = config.to_str().unwrap();
    let (ok, out, err) = cli_with_keys(&[
        "dlq",
        "replay",
        "-c",
        config,
        "--mapping",
        "mappings/xml",
        "--dry-run",
    ]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("new mapping:        event registration via mapping")
            && out.contains("survey OP-SAT-01"),
        "{out}"
    );

    setup.extra_source = "mappings = [\"mappings/hl7v2\", \"mappings/xml\"]\n".into();
    let config = setup.write_config();
    let config = config.to_str().unwrap();
    let bridge = setup.start().await;
    setup.wait_declared().await;
    let (ok, out, err) = cli_with_keys(&["dlq", "replay", "-c", config]);
    assert!(
        ok && out.contains("1 dead letter(s): 1 republished"),
        "{out}{err}"
    );
    let push = cem.first_accepted().await;
    assert_eq!(push.json["templateId"], "OP-SAT-01");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cem.accepted().len(), 1, "one survey");
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// Issue 8 §3: a HIS that sends the patient id in PID-2 gets `missing_patient_id`; `dlq replay
/// --mapping FIXED --dry-run` shows, per message, what the configured and the fixed mapping
/// make of it (personal values masked) and changes nothing; with the fixed mapping installed,
/// `dlq replay` republishes it, the bridge ingests it and the survey goes out — once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_dry_run_diffs_the_new_mapping_then_replay_republishes() {
    let cem = Recorder::start().await;
    let mut setup = Setup::new("dlq-replay", &cem.url());
    // The fixed mapping: the patient id may come in PID-2.
    let fixed = setup.dir.join("fixed");
    std::fs::create_dir_all(&fixed).unwrap();
    let adt = std::fs::read_to_string("mappings/hl7v2/adt.yaml").unwrap();
    let adt = adt[..adt.find("\ntests:").unwrap()]
        .replace("name: hl7v2-adt", "name: hl7v2-adt-fixed")
        .replace("  patient.id: $pid.1", "  patient.id: [$pid.1, PID-2.1]")
        .replace(
            "  patient.authority: [$pid.4.1, MSH-4.1]",
            "  patient.authority: [$pid.4.1, PID-2.4, MSH-4.1]",
        );
    assert!(adt.contains("PID-2.1") && adt.contains("PID-2.4"));
    std::fs::write(fixed.join("adt.yaml"), adt).unwrap();
    let msg = String::from_utf8(read_fixture("bad/missing_patient_id.hl7"))
        .unwrap()
        .replace(
            "PID|1||||无名^氏|||U",
            "PID|1|P00055555^^^HXEYE^PI|||赵^六|||U|||||13612345678^PRN^CP",
        );
    assert!(msg.contains("P00055555"));

    let bridge = setup.start().await;
    setup.wait_declared().await;
    publish(&setup.queue, msg.as_bytes(), "pid2").await;
    let db = wait_dead_letter(&setup, "reason = 'missing_patient_id'").await;
    let config = setup.write_config();
    let config = config.to_str().unwrap();
    let fixed_dir = fixed.to_str().unwrap();
    let (ok, out, err) = cli_with_keys(&[
        "dlq",
        "replay",
        "-c",
        config,
        "--mapping",
        fixed_dir,
        "--dry-run",
    ]);
    assert!(ok, "{out}{err}");
    for want in [
        "(adt, missing_patient_id)",
        "configured mapping: dead letter missing_patient_id",
        "new mapping:        event registration via mapping hl7v2-adt-fixed → survey OP-SAT-01 due 2026-11-21T10:30",
        "+ patient.id = P0*****55",
        "1 dead letter(s): 1 would map now, 0 still rejected, 0 skipped (dry run",
    ] {
        assert!(out.contains(want), "{want:?} in:\n{out}");
    }
    assert_no_pii("dlq replay --dry-run", &out);
    for clear in ["P00055555", "赵六", "13612345678"] {
        assert!(!out.contains(clear), "{clear} in {out}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(cem.requests().is_empty(), "a dry run sends nothing");
    let replayed: Option<i64> = sqlx::query("SELECT replayed_at FROM dead_letters")
        .fetch_one(&db)
        .await
        .unwrap()
        .get(0);
    assert_eq!(replayed, None, "a dry run changes nothing");
    bridge.shutdown().await;

    // The fixed mapping installed: replay for real.
    setup.extra_source = format!("mappings = [\"{fixed_dir}\"]\n");
    let config = setup.write_config();
    let config = config.to_str().unwrap();
    let bridge = setup.start().await;
    setup.wait_declared().await;
    let (ok, out, err) = cli_with_keys(&["dlq", "replay", "-c", config]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!("republished to {}", setup.queue)),
        "{out}"
    );
    assert!(out.contains("1 dead letter(s): 1 republished"), "{out}");
    let push = cem.first_accepted().await;
    assert_eq!(push.json["templateId"], "OP-SAT-01");
    let replayed: Option<i64> = sqlx::query("SELECT replayed_at FROM dead_letters")
        .fetch_one(&db)
        .await
        .unwrap()
        .get(0);
    assert!(replayed.is_some());
    let (ok, out, _) = cli_with_keys(&["dlq", "replay", "-c", config]);
    assert!(ok);
    assert!(out.contains("0 dead letter(s)"), "replayed once: {out}");
    let (ok, out, _) = cli_with_keys(&["dlq", "list", "-c", config]);
    assert!(ok && out.contains("missing_patient_id (replayed)"), "{out}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(cem.accepted().len(), 1, "one survey");
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// Issue 20 §6: the backlog. Three messages wait in a source's queue while no bridge consumes
/// it: the poller reads depth 3 from the broker, a rate from what the source acked over the
/// interval, and the drain time from both; the running bridge shows each source's kind, state
/// and depth in `/api/summary` and `cem_bridge_source_queue_depth{connector}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_shows_depth_rate_and_drain_time_per_source() {
    use cem_bridge::ingest::backlog::Poller;
    use cem_bridge::process::health::SourceHealth;
    let cem = Recorder::start().await;
    let setup = Setup::new("backlog", &cem.url());
    let bridge = setup.start().await;
    setup.wait_declared().await;
    bridge.shutdown().await;
    for i in 0..3 {
        publish(&setup.queue, b"MSH|^~\\&|waiting", &format!("wait-{i}")).await;
    }
    let cfg = setup.config();
    let name = cfg.sources[0].name.clone();
    let health = SourceHealth::new([name.as_str()]);
    let mut poller = Poller::new(&cfg.sources, health.clone());
    poller.poll_once().await;
    let b = health.backlog(&name);
    assert_eq!(b.depth, Some(3), "{b:?}");
    assert_eq!(b.drain_seconds(), None, "nothing taken yet: no drain time");
    health.note_acked(&name, 6);
    tokio::time::sleep(Duration::from_millis(500)).await;
    poller.poll_once().await;
    let b = health.backlog(&name);
    assert!(b.rate_per_s > 1.0, "{b:?}");
    assert!(b.drain_seconds().is_some_and(|s| s <= 3), "{b:?}");

    let bridge = setup.start().await;
    let addr = ops_addr(&bridge);
    let summary = wait_for(15, "the backlog in /api/summary", || async move {
        let (_, text) = get(addr, "/api/summary").await;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["sources"][0]["depth"].is_u64().then_some(v)
    })
    .await;
    let s = &summary["sources"][0];
    assert_eq!(
        (s["name"].as_str(), s["kind"].as_str()),
        (Some(name.as_str()), Some("amqp"))
    );
    assert!(
        s["connected"].is_boolean() && s["rate_per_s"].is_number(),
        "{s}"
    );
    let depth = value(
        &metrics(addr).await,
        "cem_bridge_source_queue_depth",
        &[("connector", name.as_str())],
    );
    assert!(depth.is_some(), "the depth gauge is exported");
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// Issue 19 §3: `cem_bridge_identity_warnings_total` counts only where the value was needed
/// for a decision. A cancel (A11) without a birth date or 身份证号 counts nothing; the same
/// gap on a registration (A04), which is surveyed, counts `age_unknown` once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_warnings_count_only_for_messages_that_are_surveyed() {
    let cem = Recorder::start().await;
    let setup = Setup::new("id-warnings", &cem.url());
    let bridge = setup.start().await;
    let addr = ops_addr(&bridge);
    setup.wait_declared().await;
    let strip = |name: &str| {
        String::from_utf8(read_fixture(name))
            .unwrap()
            .replace("~110101199003071233^^^CHN^NI", "")
            .replace("||19900307|", "|||")
    };
    let age_unknown = || async move {
        value(
            &metrics(addr).await,
            "cem_bridge_identity_warnings_total",
            &[("kind", "age_unknown")],
        )
        .unwrap_or(0.0)
    };
    publish(
        &setup.queue,
        strip("hl7v2/adt_a11_cancel_registration.hl7").as_bytes(),
        "a11",
    )
    .await;
    wait_for(15, "the A11 acked", || async move {
        let m = metrics(addr).await;
        (value(
            &m,
            "cem_bridge_messages_acked_total",
            &[("connector", "adt")],
        ) == Some(1.0))
        .then_some(())
    })
    .await;
    assert_eq!(age_unknown().await, 0.0, "a cancel needs no age");
    publish(
        &setup.queue,
        strip("hl7v2/adt_a04_outpatient_registration.hl7")
            .replace("V20261120001", "V20261120077")
            .replace("MSG20261120093015001", "MSG-ID-WARN-A04")
            .as_bytes(),
        "a04",
    )
    .await;
    wait_for(
        15,
        "age_unknown counted for the registration",
        || async move { (age_unknown().await == 1.0).then_some(()) },
    )
    .await;
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// The personal values of `json/discharge.json`, which the shared list does not hold.
const JSON_DISCHARGE_PII: &[&str] = &[
    "吴敏",
    "31010119850202432X",
    "13688889999",
    "P00088888",
    "Z2026111700031",
    "Z2026111700077",
    "Z2026111700078",
];

/// The summary's `unmatched_codes`, once `done` holds for it; the body checked for personal
/// data (R-ANO-8).
async fn unmatched_in_summary(
    addr: SocketAddr,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let (codes, body) = wait_for(15, what, || {
        let done = &done;
        async move {
            let (status, body) = get(addr, "/api/summary").await;
            assert_eq!(status, 200, "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            done(&v["unmatched_codes"]).then(|| (v["unmatched_codes"].clone(), body))
        }
    })
    .await;
    assert_no_pii("/api/summary", &body);
    for pii in JSON_DISCHARGE_PII {
        assert!(
            !body.contains(pii),
            "R-ANO-8: {pii:?} in /api/summary: {body}"
        );
    }
    codes.as_array().unwrap().clone()
}

/// Issue 18 §4: a code the JSON mapping's `disposition` table does not know (`4`) is kept as the
/// value, as before, but counted by mapping and table; a known one counts nothing. `/api/summary`
/// lists it (`unmatched_codes`) with its field, count and local last-seen time, counting new
/// messages only: a redelivered duplicate adds nothing, a second message adds one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_table_code_is_counted_by_mapping_and_table() {
    let cem = Recorder::start().await;
    let setup = Setup::new("unmatched", &cem.url());
    let bridge = setup.start().await;
    let addr = ops_addr(&bridge);
    setup.wait_declared().await;
    let (_, body) = get(addr, "/api/summary").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["unmatched_codes"], serde_json::json!([]), "none yet");
    let json = String::from_utf8(read_fixture("json/discharge.json")).unwrap();
    publish(&setup.queue, json.as_bytes(), "known").await;
    let unknown = json
        .replace("\"HOME\"", "\"4\"")
        .replace("EVT-20261120-0003", "EVT-UNMATCHED-1")
        .replace("Z2026111700031", "Z2026111700077");
    publish(&setup.queue, unknown.as_bytes(), "unknown").await;
    let n = wait_for(15, "the unknown code counted", || async move {
        value(
            &metrics(addr).await,
            "cem_bridge_mapping_unmatched_codes_total",
            &[("mapping", "json-his-events"), ("table", "disposition")],
        )
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(n, 1.0);
    assert_eq!(
        value(
            &metrics(addr).await,
            "cem_bridge_mapping_unmatched_codes_total",
            &[("mapping", "json-his-events"), ("table", "disposition")],
        ),
        Some(1.0),
        "the known code counts nothing"
    );
    let codes = unmatched_in_summary(addr, "the code in /api/summary", |c| {
        c.as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    assert_eq!(codes.len(), 1, "{codes:?}");
    let c = &codes[0];
    assert_eq!(
        (
            &c["mapping"],
            &c["table"],
            &c["field"],
            &c["code"],
            &c["count"]
        ),
        (
            &serde_json::json!("json-his-events"),
            &serde_json::json!("disposition"),
            &serde_json::json!("visit.disposition"),
            &serde_json::json!("4"),
            &serde_json::json!(1)
        ),
        "{codes:?}"
    );
    let seen = c["last_seen"].as_str().unwrap();
    assert!(seen.starts_with("20") && seen.ends_with("+08:00"), "{seen}");

    // The same message again is a duplicate: no count. A new one with the code: one more.
    publish(&setup.queue, unknown.as_bytes(), "unknown again").await;
    wait_for(15, "the duplicate acked", || async move {
        (value(
            &metrics(addr).await,
            "cem_bridge_messages_duplicate_total",
            &[("connector", "adt")],
        ) == Some(1.0))
        .then_some(())
    })
    .await;
    let second = unknown
        .replace("EVT-UNMATCHED-1", "EVT-UNMATCHED-2")
        .replace("Z2026111700077", "Z2026111700078");
    publish(&setup.queue, second.as_bytes(), "unknown, second").await;
    // All four deliveries settled (the ack follows the commit, which feeds the tally).
    wait_for(15, "four deliveries acked", || async move {
        (value(
            &metrics(addr).await,
            "cem_bridge_messages_acked_total",
            &[("connector", "adt")],
        ) == Some(4.0))
        .then_some(())
    })
    .await;
    let codes = unmatched_in_summary(addr, "the summary", |_| true).await;
    assert_eq!(codes.len(), 1, "{codes:?}");
    assert_eq!(
        codes[0]["count"], 2,
        "the duplicate counted nothing: {codes:?}"
    );
    assert_eq!(
        value(
            &metrics(addr).await,
            "cem_bridge_mapping_unmatched_codes_total",
            &[("mapping", "json-his-events"), ("table", "disposition")],
        ),
        Some(2.0),
        "the page and the metric agree"
    );
    bridge.shutdown().await;
    cleanup(&setup).await;
}
