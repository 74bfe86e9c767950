//! Issue 6 (privacy), against the real local RabbitMQ with an in-process recorder as the CEM:
//! the contactRef and its audited resolution (R-ANO-7), `contact_mode = "mobile"`, the sealed
//! vault and dead-letter bodies (R-ANO-6, R-ANO-8), and the leak test — every shared sample,
//! good and bad, through a bridge logging at debug level, and no raw name, phone, ID-card
//! number, patient id or visit number in any CEM request, log line, metric, dead-letter header
//! or store byte.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use crate::common::*;
use cem_bridge::config::Config;
use cem_bridge::privacy::vault::VaultCipher;
use cem_bridge::process::clock::Clock;
use cem_pipeline::decode::DecodeOptions;
use cem_pipeline::mapping::Outcome;
use cem_pipeline::translate::decode;
use sqlx::Row;

/// Every file a sample folder holds, as (relative path, bytes).
fn samples(folders: &[&str]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for folder in folders {
        let mut names: Vec<_> = std::fs::read_dir(fixture(folder))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for n in names {
            let rel = format!("{folder}/{n}");
            out.push((rel.clone(), read_fixture(&rel)));
        }
    }
    out
}

/// The AMQP headers the platform sends with an XML sample.
fn headers_for(rel: &str) -> Vec<(&'static str, &'static str)> {
    match rel {
        "xml/registration_utf8.xml"
        | "xml/registration_gbk.xml"
        | "xml/registration_no_phone.xml" => vec![("service-code", "S0023")],
        "xml/patient_register_utf8.xml" | "xml/patient_register_gbk.xml" => {
            vec![("service-code", "S0001")]
        }
        "xml/patient_update_utf8.xml" => vec![("service-code", "S0002")],
        "xml/registration_cancelled.xml" => vec![("service-code", "S0024")],
        "xml/discharge_utf8.xml" => vec![("service-code", "S0032")],
        _ => vec![],
    }
}

/// The raw personal values of every sample: the listed ones, every mobile, 身份证号 and
/// patient / visit number found in the files (good and bad), and the names, ids and numbers the
/// shipped mappings decode from the good ones.
fn personal_values() -> BTreeSet<String> {
    let mut v: BTreeSet<String> = SAMPLE_PII.iter().map(|s| s.to_string()).collect();
    let patterns = [
        r"(?:^|\D)(1[3-9]\d{9})(?:\D|$)",
        r"(?:^|[^0-9A-Za-z])(\d{17}[0-9Xx])(?:[^0-9A-Za-z]|$)",
        r"(?:^|[^0-9A-Za-z])([PVZ]\d{8,14})(?:\D|$)",
    ]
    .map(|p| regex_lite::Regex::new(p).unwrap());
    let all = samples(&["hl7v2", "xml", "json", "bad"]);
    for (_, bytes) in &all {
        let text = String::from_utf8_lossy(bytes);
        for re in &patterns {
            for c in re.captures_iter(&text) {
                v.insert(c[1].to_string());
            }
        }
    }
    let zone = cem_pipeline::time::default_zone();
    let set = cem_bridge::config::mappings::load(&["mappings".to_string()], &zone).unwrap();
    let opts = DecodeOptions {
        facility: "adt".into(),
        ..DecodeOptions::at(jiff::Timestamp::now())
    };
    for (rel, bytes) in samples(&["hl7v2", "xml", "json"]) {
        let headers: BTreeMap<String, String> = headers_for(&rel)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let Ok(d) = decode(&bytes, &opts, &set, &headers) else {
            continue;
        };
        let Outcome::Event(e) = d.outcome else {
            continue;
        };
        let p = &e.patient;
        v.insert(p.id.id.expose().to_string());
        for s in [&p.name, &p.mobile, &p.guardian_mobile, &p.id_card]
            .into_iter()
            .flatten()
        {
            v.insert(s.expose().to_string());
        }
        if let (Some(name), Some(family)) = (&p.name, &p.family_name) {
            // The given name alone identifies too (三明); a one-character family name alone
            // appears in every mask, so only names of two characters or more count.
            if let Some(given) = name.expose().strip_prefix(family.expose()) {
                v.insert(given.to_string());
            }
            v.insert(family.expose().to_string());
        }
        if let Some(visit) = &e.visit {
            v.insert(visit.number.expose().to_string());
        }
    }
    v.retain(|s| s.chars().count() >= 2);
    v
}

/// The first personal value `text` contains.
fn leak<'a>(text: &str, values: &'a BTreeSet<String>) -> Option<&'a String> {
    values.iter().find(|p| text.contains(p.as_str()))
}

/// The SQLite file and its WAL, as bytes (what a stolen disk would show).
fn store_bytes(db: &Path) -> Vec<u8> {
    let mut out = std::fs::read(db).unwrap_or_default();
    out.extend(std::fs::read(format!("{}-wal", db.display())).unwrap_or_default());
    out
}

fn contains_bytes(hay: &[u8], needle: &str) -> bool {
    let n = needle.as_bytes();
    hay.windows(n.len()).any(|w| w == n)
}

async fn resolve(base: &str, token: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}/contact/resolve"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("resolve request");
    let status = r.status().as_u16();
    let json = r.json().await.unwrap_or(serde_json::Value::Null);
    (status, json)
}

fn resolve_body(contact_ref: &str) -> String {
    serde_json::json!({ "contactRef": contact_ref }).to_string()
}

/// R-ANO-7: the dispatch carries a contactRef and no mobile; the CEM resolves it with its own
/// token (401 without, 400 malformed, 404 forged, 200 with the mobile), every lookup audited
/// without a clear value; after due + 72 h the same reference answers 410.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_ano_7_dispatch_carries_a_contact_ref_that_the_cem_resolves_with_its_token() {
    let cem = Recorder::start().await;
    let setup = Setup::new("contactref", &cem.url());
    let bridge = setup.start().await;
    setup.wait_declared().await;
    publish_fixture(&setup.queue, A04_SAMPLE, "a04").await;
    let push = cem.first_accepted().await;
    let body = &push.json;
    let contact_ref = body["contactRef"].as_str().expect("contactRef").to_string();
    let job_id = body["jobId"].as_str().unwrap().to_string();
    assert!(
        contact_ref.starts_with(&format!("cr_{job_id}.")),
        "{contact_ref}"
    );
    assert!(
        body.get("mobile").is_none(),
        "no mobile in ref mode: {body}"
    );
    assert!(!push.body.contains("13812345678"));

    let base = format!("http://{}", bridge.ops_addr().expect("ops server"));
    let good = resolve_body(&contact_ref);
    assert_eq!(resolve(&base, None, &good).await.0, 401);
    assert_eq!(resolve(&base, Some("wrong-token"), &good).await.0, 401);
    let (status, err) = resolve(&base, Some(TEST_RESOLVE_TOKEN), "{\"ref\": 1}").await;
    assert_eq!(status, 400, "{err}");
    let forged = format!("{}0", &contact_ref[..contact_ref.len() - 1]);
    let forged = if forged == contact_ref {
        format!("{}1", &contact_ref[..contact_ref.len() - 1])
    } else {
        forged
    };
    assert_eq!(
        resolve(&base, Some(TEST_RESOLVE_TOKEN), &resolve_body(&forged))
            .await
            .0,
        404
    );
    // Issue 22 §5: a request announcing a 10 MB body is answered 413 (the limit is 4 KiB)
    // once 8 KiB of it arrived — the bridge does not wait for, or buffer, the rest — and the
    // service answers the next request as usual.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = base.trim_start_matches("http://");
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /contact/resolve HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TEST_RESOLVE_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            10 * 1024 * 1024
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&[b'x'; 8 * 1024]).await.unwrap();
        let mut answer = vec![0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut answer))
            .await
            .expect("answered before the body was sent")
            .unwrap();
        let line = String::from_utf8_lossy(&answer[..n]);
        assert!(line.starts_with("HTTP/1.1 413"), "{line}");
    }
    let (status, ok) = resolve(&base, Some(TEST_RESOLVE_TOKEN), &good).await;
    assert_eq!(status, 200, "{ok}");
    assert_eq!(ok["mobile"], "13812345678");
    assert_eq!(ok["jobId"], job_id.as_str());
    bridge.shutdown().await;

    // Audited: the ok lookup (with the job and the mobile's pseudonym) and the forged one;
    // the 401s read nothing and store nothing. No clear value in the audit.
    let pool = sqlite(&setup.db).await;
    let rows = sqlx::query(
        "SELECT reason, job_id, patient_key, detail FROM audit WHERE action = 'vault_lookup' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let seen: Vec<(String, Option<String>, Option<String>)> = rows
        .iter()
        .map(|r| (r.get("reason"), r.get("job_id"), r.get("patient_key")))
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].0, "not_found");
    assert_eq!(seen[1].0, "ok");
    assert_eq!(seen[1].1.as_deref(), Some(job_id.as_str()));
    assert!(seen[1].2.as_deref().is_some_and(|k| k.starts_with("mk_")));
    pool.close().await;
    let stored = store_bytes(&setup.db);
    for pii in [
        "13812345678",
        "张三明",
        "P00012345",
        "V20261120001",
        "110101199003071233",
    ] {
        assert!(
            !contains_bytes(&stored, pii),
            "R-ANO-6: {pii} in clear in the store"
        );
    }

    // Three days after the due time the reference has expired: 410, audited `denied`.
    let later = runtime_start(&setup, "2026-11-24T12:00:00+08:00").await;
    let base = format!("http://{}", later.ops_addr().expect("ops server"));
    let (status, gone) = resolve(&base, Some(TEST_RESOLVE_TOKEN), &good).await;
    assert_eq!(status, 410, "{gone}");
    later.shutdown().await;
    let pool = sqlite(&setup.db).await;
    let denied: i64 = sqlx::query(
        "SELECT COUNT(*) AS n FROM audit WHERE action = 'vault_lookup' AND reason = 'denied'",
    )
    .fetch_one(&pool)
    .await
    .unwrap()
    .get("n");
    assert_eq!(denied, 1);
    pool.close().await;
    cleanup(&setup).await;
}

/// Start a bridge for `setup` with the clock at `at` and the given config text.
async fn runtime_start_with(cfg: Config, at: &str) -> cem_bridge::app::Bridge {
    cem_bridge::app::start_with_clock(cfg, test_secrets(), Clock::starting_at(at.parse().unwrap()))
        .await
        .expect("bridge starts")
}

async fn runtime_start(setup: &Setup, at: &str) -> cem_bridge::app::Bridge {
    runtime_start_with(setup.config(), at).await
}

/// R-ANO-7: `contact_mode = "mobile"` sends the mobile itself, read through an audited
/// `survey_delivery` lookup, and `cem-bridge check` warns about it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_mode_mobile_sends_the_mobile_and_check_warns() {
    let cem = Recorder::start().await;
    let setup = Setup::new("contactmobile", &cem.url());
    let text = setup.config_text().replace(
        "timeout_ms = 2000",
        "timeout_ms = 2000\ncontact_mode = \"mobile\"",
    );
    let path = setup.dir.join("mobile.toml");
    std::fs::write(&path, &text).unwrap();
    let cfg = Config::load(&path).unwrap();
    let bridge = runtime_start_with(cfg, CLOCK_START).await;
    setup.wait_declared().await;
    publish_fixture(&setup.queue, A04_SAMPLE, "a04").await;
    let push = cem.first_accepted().await;
    assert_eq!(push.json["mobile"], "13812345678");
    assert!(push.json.get("contactRef").is_none());
    bridge.shutdown().await;
    let pool = sqlite(&setup.db).await;
    let n: i64 = sqlx::query(
        "SELECT COUNT(*) AS n FROM audit WHERE action = 'vault_lookup' AND reason = 'ok' \
         AND detail = 'caller=cem purpose=survey_delivery'",
    )
    .fetch_one(&pool)
    .await
    .unwrap()
    .get("n");
    assert_eq!(n, 1, "the send-time lookup is audited");
    pool.close().await;

    let out = check_config(&path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: cem.contact_mode = \"mobile\"") && err.contains("PIPL art. 21"),
        "{err}"
    );
    cleanup(&setup).await;
}

/// R-ANO-6: without the vault key the bridge refuses to start and names the variable; a key
/// that is not 32 bytes is refused too.
#[test]
fn missing_or_short_vault_key_refuses_to_start() {
    let setup = Setup::new("novaultkey", "http://127.0.0.1:9/unused");
    let cfg = setup.write_config();
    let run = |vault: Option<&str>| {
        let mut c = std::process::Command::new(bridge_bin());
        c.args(["check", "-c"])
            .arg(&cfg)
            .env(
                "CEM_BRIDGE_TEST_KEY",
                String::from_utf8_lossy(TEST_KEY).into_owned(),
            )
            .env_remove("CEM_BRIDGE_TEST_VAULT_KEY")
            .env("RUST_LOG", "warn");
        if let Some(v) = vault {
            c.env("CEM_BRIDGE_TEST_VAULT_KEY", v);
        }
        let out = c.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = run(None);
    assert!(!ok);
    assert!(
        err.contains("CEM_BRIDGE_TEST_VAULT_KEY") && err.contains("openssl rand -hex 32"),
        "{err}"
    );
    let (ok, err) = run(Some("abcd"));
    assert!(!ok);
    assert!(err.contains("exactly 64 hex digits"), "{err}");
    let (ok, err) = run(Some("a 32-character passphrase!!!!!!!"));
    assert!(!ok, "a passphrase is not a key");
    assert!(err.contains("exactly 64 hex digits"), "{err}");
    let (ok, err) = run(Some(TEST_VAULT_KEY_HEX));
    assert!(ok, "{err}");
    let _ = std::fs::remove_dir_all(&setup.dir);
}

/// The leak test (issue 6 §5, R-ANO-1, R-ANO-7, R-ANO-8): every shared sample, good and bad,
/// through a bridge process logging at debug level. No raw personal value of any sample in:
/// the CEM requests (bodies and headers), the log, `/metrics`, the dead-letter headers, or the
/// store's bytes (the vault and dead-letter bodies are sealed). Dead-letter bodies open with
/// the vault key to exactly what was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leak_test_no_sample_value_in_requests_logs_metrics_dead_letter_headers_or_store() {
    let values = personal_values();
    for expected in [
        "吴敏",
        "13688889999",
        "P00077777",
        "V20261120005",
        "Z2026111700031",
    ] {
        assert!(
            values.contains(expected),
            "the value list covers the JSON samples too: {expected}"
        );
    }
    let cem = Recorder::start().await;
    let mut setup = Setup::new("leak", &cem.url());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    setup.ops = format!("listen = \"127.0.0.1:{port}\"\n");
    let cfg = setup.write_config();
    let log = setup.dir.join("bridge.log");
    let mut child = spawn_bridge_at_level(&cfg, None, &log, "debug");
    setup.wait_declared().await;

    let good = samples(&["hl7v2", "xml", "json"]);
    let bad = samples(&["bad"]);
    for (rel, bytes) in good.iter().chain(&bad) {
        publish_with_headers(&setup.queue, bytes, rel, &headers_for(rel)).await;
    }
    let dlq = setup.dlq();
    wait_for(
        60,
        "every sample consumed and the bad ones dead-lettered",
        || {
            let (q, dlq) = (setup.queue.clone(), dlq.clone());
            let n = bad.len() as u32;
            async move {
                let left = queue_depth(&q).await?;
                let dead = queue_depth(&dlq).await?;
                (left == 0 && dead >= n).then_some(())
            }
        },
    )
    .await;
    // Let the scheduler push whatever is due, then wait for quiet.
    let mut last = usize::MAX;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let n = cem.requests().len();
        if n == last && n > 0 {
            break;
        }
        last = n;
    }
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("cem_bridge_messages_in_total"),
        "{metrics}"
    );
    // The ops page's data: dead letters with their details (hostile values where codes belong
    // among the bad samples).
    let summary = reqwest::get(format!("http://127.0.0.1:{port}/api/summary"))
        .await
        .expect("summary")
        .text()
        .await
        .unwrap();
    assert!(summary.contains("unknown_event"), "{summary}");
    assert!(summary.contains("value withheld"), "{summary}");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    wait_exit(&mut child, 30).await;
    assert_eq!(
        leak(&summary, &values),
        None,
        "R-ANO-8: /api/summary {summary}"
    );

    // CEM requests: at least the registrations and discharges went out, each with a
    // contactRef, none with a personal value.
    let reqs = cem.requests();
    assert!(reqs.len() >= 4, "pushes: {}", reqs.len());
    for r in &reqs {
        assert!(
            r.json["contactRef"]
                .as_str()
                .is_some_and(|c| c.starts_with("cr_"))
        );
        let all = format!("{} {:?} {:?}", r.body, r.idempotency_key, r.authorization);
        assert_eq!(leak(&all, &values), None, "R-ANO-7: CEM request {}", r.body);
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("DEBUG"), "the log ran at debug level");
    assert!(text.contains("survey pushed"));
    if let Some(v) = leak(&text, &values) {
        let line = text.lines().find(|l| l.contains(v.as_str())).unwrap_or("");
        panic!("R-ANO-8: a personal value in the log: {line}");
    }
    assert_eq!(leak(&metrics, &values), None, "R-ANO-8: /metrics");

    let dead = drain(&dlq).await;
    assert_eq!(dead.len(), bad.len(), "every bad sample dead-lettered");
    assert!(
        dead.iter()
            .any(|d| leak(&String::from_utf8_lossy(&d.body), &values).is_some()),
        "the raw dead-letter bodies do hold personal values: the detector sees them"
    );
    for d in &dead {
        let h = format!("{:?} {:?}", d.headers, d.message_id);
        assert_eq!(leak(&h, &values), None, "R-ANO-8: dead-letter headers {h}");
        assert!(d.headers.contains_key("x-cem-reason"), "{h}");
    }

    let stored = store_bytes(&setup.db);
    for v in &values {
        assert!(
            !contains_bytes(&stored, v),
            "R-ANO-6/R-ANO-8: {v} in clear in the store"
        );
    }
    // The sealed dead-letter bodies open to exactly what was published.
    let cipher = VaultCipher::new(("tv1", &TEST_VAULT_KEY), &[]).unwrap();
    let pool = sqlite(&setup.db).await;
    // Issue 21: the patient-level samples (A08, A28, A31, S0001 ×2, S0002) left sealed patient
    // records, which the byte scan above found free of clear values.
    let records: i64 = sqlx::query("SELECT COUNT(*) AS n FROM vault WHERE pseudonym LIKE 'pr_%'")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get("n");
    assert!(records >= 4, "patient records: {records}");
    let rows = sqlx::query("SELECT content_hash, body_key_id, body FROM dead_letters")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), bad.len());
    let originals: BTreeSet<Vec<u8>> = bad.iter().map(|(_, b)| b.clone()).collect();
    for r in &rows {
        let hash: String = r.get("content_hash");
        let kid: String = r.get("body_key_id");
        let body: Vec<u8> = r.get("body");
        let plain = cipher
            .open(
                &cem_bridge::store::dead_letters::dead_letter_aad(&hash),
                &kid,
                &body,
            )
            .expect("opens with the vault key");
        assert!(originals.contains(&plain), "a dead-letter body round-trips");
    }
    pool.close().await;
    cleanup(&setup).await;
}

/// R-ANO-7: a reference to a survey that was cancelled before sending resolves to nothing:
/// 410, audited `denied`, no mobile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_ref_of_a_cancelled_survey_is_gone() {
    let cem = Recorder::start().await;
    let setup = Setup::new("contactgone", &cem.url());
    let b = setup.start().await;
    setup.wait_declared().await;
    b.shutdown().await;
    // Queued before the start, so the cancel lands in the same batch, before any push.
    publish_many(
        &setup.queue,
        &[
            read_fixture("hl7v2/adt_a04_outpatient_registration.hl7"),
            read_fixture("hl7v2/adt_a11_cancel_registration.hl7"),
        ],
    )
    .await;
    let bridge = setup.start().await;
    let store = bridge.store.clone();
    let job = wait_for(20, "the cancelled job", || {
        let store = store.clone();
        async move {
            let jobs = store.jobs().await.ok()?;
            jobs.into_iter().find(|j| j.status == "cancelled")
        }
    })
    .await;
    let cipher = VaultCipher::new(("tv1", &TEST_VAULT_KEY), &[]).unwrap();
    let base = format!("http://{}", bridge.ops_addr().expect("ops server"));
    let (status, body) = resolve(
        &base,
        Some(TEST_RESOLVE_TOKEN),
        &resolve_body(&cipher.contact_ref(&job.job_id)),
    )
    .await;
    assert_eq!(status, 410, "{body}");
    assert!(body.get("mobile").is_none());
    assert!(cem.requests().is_empty());
    let audit = bridge.store.audit(Some(&job.job_id)).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a.action == "vault_lookup" && a.reason.as_deref() == Some("denied")),
        "{audit:?}"
    );
    bridge.shutdown().await;
    cleanup(&setup).await;
}
