//! The ops page in a real browser (issue 8 §2): headless Chromium loads `/` from a bridge that
//! has taken the HL7 samples, a ticket and a call result, runs the page's own script against
//! `/api/summary` and `/metrics`, and the numbers it renders are asserted on the DOM it dumps.
//! A screenshot is kept as a test artifact (path printed; `bash .ci/run` copies it to
//! `artifacts/`). Chromium comes from Debian's `chromium` package (`scripts/test` installs it);
//! `CHROMIUM=/path` picks another binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use cem_bridge::process::clock::Clock;

fn chromium() -> PathBuf {
    if let Ok(p) = std::env::var("CHROMIUM") {
        return PathBuf::from(p);
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::var("PATH").unwrap_or_default().split(':') {
            let p = Path::new(dir).join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "this test drives the ops page in headless Chromium, which is not installed: \
         `apt-get install chromium` (bash scripts/test does it), or set CHROMIUM=/path/to/chrome"
    );
}

/// Run headless Chromium on `url` with `extra` flags; stdout.
fn headless(url: &str, profile: &Path, extra: &[String]) -> String {
    let out = Command::new("timeout")
        .arg("90")
        .arg(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--virtual-time-budget=5000",
            "--lang=zh-CN",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn artifacts() -> PathBuf {
    let dir = std::env::var("CEM_BRIDGE_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts"));
    std::fs::create_dir_all(&dir).expect("artifact directory");
    dir
}

/// The text of the `<tbody>` of table `id`, rows as `cell | cell | …` (tags stripped).
fn table(dom: &str, id: &str) -> Vec<String> {
    let start = dom
        .find(&format!("<table id=\"{id}\""))
        .unwrap_or_else(|| panic!("table {id} on the page"));
    let body = &dom[start..];
    let body = &body[body.find("<tbody>").expect("tbody")..body.find("</tbody>").expect("/tbody")];
    body.split("<tr>")
        .skip(1)
        .map(|row| {
            row.split("<td")
                .skip(1)
                .map(|c| {
                    let c = &c[c.find('>').map_or(0, |i| i + 1)..];
                    c[..c.find("</td>").unwrap_or(c.len())].trim().to_string()
                })
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .collect()
}

fn text_of(dom: &str, id: &str) -> String {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("#{id} on the page"));
    let rest = &dom[start..];
    let rest = &rest[rest.find('>').unwrap() + 1..];
    rest[..rest.find('<').unwrap()].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ops_page_shows_flow_surveys_tickets_and_kpis_in_a_browser() {
    let browser = chromium();
    let (cem, hcrm, cc) = (
        Recorder::start().await,
        Recorder::start().await,
        Recorder::start().await,
    );
    let setup = ticket_setup("ops-browser", &cem, &hcrm, &cc, "");
    let bridge = setup.start().await;
    let addr = bridge.ops_addr().unwrap();
    setup.wait_declared().await;
    publish_fixtures(&setup.queue, &MIXED_SAMPLES).await;
    wait_for(20, "two surveys accepted", || {
        let n = cem.accepted().len();
        async move { (n == 2).then_some(()) }
    })
    .await;
    // A ticket answered in time (R-TKT-2) for the registered patient, and its call-back
    // answered (R-TKT-7).
    let pk = cem
        .accepted()
        .into_iter()
        .find(|r| r.json["templateId"] == "OP-SAT-01")
        .map(|r| r.json["patient"]["pk"].as_str().unwrap().to_string())
        .unwrap();
    let now = || {
        Clock::starting_at(CLOCK_START.parse().unwrap())
            .now()
            .as_second()
    };
    let created = String::from_utf8(read_fixture("tickets/created_low_score.json"))
        .unwrap()
        .replace("pk_3f9a0c00000000000000000000000000", &pk);
    let assigned = String::from_utf8(read_fixture("tickets/assigned.json")).unwrap();
    for body in [&created, &assigned] {
        let (s, _) =
            post_signed_to(addr, "/hooks/cem/tickets", body, TEST_WEBHOOK_SECRET, now()).await;
        assert_eq!(s, 200);
    }
    let task = wait_for(20, "the urgent call-back", || {
        let t = cc.accepted().into_iter().next();
        async move { t }
    })
    .await;
    let result = serde_json::json!({
        "eventId": "browser-1", "taskRef": task.json["taskRef"], "status": "answered",
        "endedAt": "2026-11-21T10:40:00+08:00"
    })
    .to_string();
    let (s, _) = post_call_result(addr, &result, now()).await;
    assert_eq!(s, 200);
    // What the page will show must be in the summary first (the page reads the same API).
    wait_for(
        20,
        "the summary with both dead letters and the ticket",
        || async move {
            let body = reqwest::get(format!("http://{addr}/api/summary"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            (v["dead_letters_total"] == 2
                && v["tickets"]["by_status"][0][0] == "ASSIGNED"
                && v["sources"][0]["depth"].is_u64())
            .then_some(())
        },
    )
    .await;

    let url = format!("http://{addr}/");
    let profile = setup.dir.join("chromium-profile");
    let dom = tokio::task::spawn_blocking({
        let (url, profile) = (url.clone(), profile.clone());
        move || headless(&url, &profile, &["--dump-dom".into()])
    })
    .await
    .unwrap();
    let shot = artifacts().join("ops-page.png");
    tokio::task::spawn_blocking({
        let shot = shot.clone();
        move || {
            headless(
                &url,
                &profile,
                &[
                    format!("--screenshot={}", shot.display()),
                    "--window-size=1280,1800".into(),
                ],
            )
        }
    })
    .await
    .unwrap();
    println!("ops page screenshot: {}", shot.display());
    assert!(
        std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0) > 10_000,
        "a screenshot was written ({})",
        browser.display()
    );

    assert_eq!(text_of(&dom, "banner"), "就绪 · ready", "the script ran");
    assert_eq!(text_of(&dom, "error"), "");
    assert_eq!(text_of(&dom, "dltotal"), "(共 total 2)");
    let flow = table(&dom, "flow");
    assert_eq!(flow.len(), 1, "{flow:?}");
    let cells: Vec<&str> = flow[0].split(" | ").collect();
    assert_eq!(
        cells[..8],
        ["adt", "amqp", "已连接 connected", "4", "2", "0", "2", "–"],
        "connector, kind, state, acked, new, duplicates, dead letters, per minute"
    );
    assert!(
        cells[8].parse::<u64>().is_ok() && cells.len() == 10,
        "queue depth read from the broker, and a drain time: {flow:?}"
    );
    assert!(
        table(&dom, "jobs").contains(&"sent | – | 2".to_string()),
        "{:?}",
        table(&dom, "jobs")
    );
    let sink = table(&dom, "sink");
    for row in ["cem | 2xx | 2", "cem | 5xx | 0", "callcenter | 2xx | 1"] {
        assert!(sink.contains(&row.to_string()), "{row:?} in {sink:?}");
    }
    let dead = table(&dom, "deadletters");
    assert_eq!(dead.len(), 2);
    assert!(dead[0].contains("missing_patient_id"), "{dead:?}");
    assert!(dead[1].contains("truncated") && dead[1].contains("bad/truncated.hl7"));
    assert_eq!(table(&dom, "tickets"), ["ASSIGNED | 1"]);
    assert_eq!(
        table(&dom, "unmatched"),
        ["无 · none"],
        "the HL7 samples have no unknown table code"
    );
    assert_eq!(
        table(&dom, "kpis"),
        [
            "24 小时处理率 · 24 h handling rate | 100.0 % | 响应按时 1 / 已到期 1 · response met on time / due",
            "随访完成率 · follow-up completion | – | 接听 0 / 已结束 0 · answered / finished calls",
            "接通率 · connection rate | 100.0 % | 接通 1 / 呼叫 1 · answered or refused / call results",
        ]
    );
    let sla = table(&dom, "sla");
    assert!(
        sla.contains(&"response | 1 | 0 | 0 | 0 / 0 / 0".to_string()),
        "{sla:?}"
    );
    assert_no_pii("the rendered page", &dom);
    bridge.shutdown().await;
    cleanup(&setup).await;
}

/// Issue 18 §4: a JSON discharge whose disposition (`4`) the mapping's table does not know is
/// listed under "Unknown codes (mapping tables)" with its mapping, table, field, code, count
/// and local time, with the hint to add it to the table — and nothing personal (R-ANO-8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ops_page_lists_the_unknown_table_codes_in_a_browser() {
    chromium();
    let cem = Recorder::start().await;
    let setup = Setup::new("ops-browser-codes", &cem.url());
    let bridge = setup.start().await;
    let addr = bridge.ops_addr().unwrap();
    setup.wait_declared().await;
    let json = String::from_utf8(read_fixture("json/discharge.json")).unwrap();
    let unknown = json
        .replace("\"HOME\"", "\"4\"")
        .replace("EVT-20261120-0003", "EVT-UNMATCHED-1");
    publish(&setup.queue, unknown.as_bytes(), "unknown").await;
    wait_for(20, "the code in the summary", || async move {
        let body = reqwest::get(format!("http://{addr}/api/summary"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (v["unmatched_codes"][0]["count"] == 1).then_some(())
    })
    .await;

    let url = format!("http://{addr}/");
    let profile = setup.dir.join("chromium-profile");
    let dom = tokio::task::spawn_blocking(move || headless(&url, &profile, &["--dump-dom".into()]))
        .await
        .unwrap();
    assert_eq!(text_of(&dom, "banner"), "就绪 · ready", "the script ran");
    let rows = table(&dom, "unmatched");
    assert_eq!(rows.len(), 1, "{rows:?}");
    let cells: Vec<&str> = rows[0].split(" | ").collect();
    assert_eq!(
        cells[..5],
        [
            "json-his-events",
            "disposition",
            "visit.disposition",
            "4",
            "1"
        ],
        "mapping, table, field, code, count: {rows:?}"
    );
    assert!(
        cells.len() == 6 && cells[5].ends_with("+08:00"),
        "last seen in local time: {rows:?}"
    );
    assert!(
        dom.contains("Unknown codes (mapping tables)")
            && dom.contains("add them to the table in the mapping file"),
        "the heading and the hint"
    );
    assert_no_pii("the rendered page", &dom);
    for pii in [
        "吴敏",
        "31010119850202432X",
        "13688889999",
        "P00088888",
        "Z2026111700031",
    ] {
        assert!(!dom.contains(pii), "R-ANO-8: {pii:?} on the page");
    }
    bridge.shutdown().await;
    cleanup(&setup).await;
}
