//! Safe hot reload of mappings (issue 8 §5): a changed mapping file is picked up while the
//! bridge runs; a broken one is refused and the last good mappings stay in use; no message is
//! lost or mapped by half a mapping across the swaps.

use std::time::Duration;

use crate::common::*;

fn dept_codes(cem: &Recorder) -> Vec<String> {
    let mut v: Vec<String> = cem
        .accepted()
        .iter()
        .map(|r| {
            let b: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            b["visit"]["deptCode"].as_str().unwrap_or("").to_string()
        })
        .collect();
    v.sort();
    v
}

async fn wait_pushes(cem: &Recorder, n: usize) {
    wait_for(30, &format!("{n} pushes"), || {
        let cem = cem.clone();
        async move { (cem.accepted().len() >= n).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapping_changes_are_reloaded_and_broken_ones_refused() {
    let cem = Recorder::start().await;
    let mut setup = Setup::new("reload", &cem.url());
    let maps = setup.dir.join("maps");
    std::fs::create_dir_all(&maps).unwrap();
    let adt = std::fs::read_to_string("mappings/hl7v2/adt.yaml").unwrap();
    // Test inputs are relative to the mapping; the bridge does not read them.
    let file = maps.join("adt.yaml");
    std::fs::write(&file, &adt).unwrap();
    setup.extra_source = format!("mappings = [\"{}\"]\n", maps.display());
    let bridge = setup.start().await;
    setup.wait_declared().await;
    let bodies = registrations(4, "reload");

    publish(&setup.queue, &bodies[0], "r0").await;
    wait_pushes(&cem, 1).await;
    assert_eq!(dept_codes(&cem), ["OPH01"]);

    // A new version of the mapping: department codes get a prefix.
    let changed = adt.replace(
        "  visit.dept_code: PV1-3.1\n",
        "  visit.dept_code: { concat: [\"NEW-\", { path: PV1-3.1 }] }\n",
    );
    assert_ne!(changed, adt, "the edit applies");
    std::fs::write(&file, &changed).unwrap();
    let m = bridge.mappings.clone();
    wait_for(20, "the file change reloaded", || {
        let m = m.clone();
        async move { (m.generation() >= 1).then_some(()) }
    })
    .await;
    publish(&setup.queue, &bodies[1], "r1").await;
    wait_pushes(&cem, 2).await;
    assert_eq!(dept_codes(&cem), ["NEW-OPH01", "OPH01"]);

    // A broken version is refused: the last good mapping keeps working.
    std::fs::write(&file, changed.replace("event:", "evnt:")).unwrap();
    wait_for(20, "the failed reload reported", || {
        let m = m.clone();
        async move { m.last_error() }
    })
    .await;
    let err = bridge.mappings.last_error().unwrap();
    assert!(err.contains("adt.yaml:") && err.contains("evnt"), "{err}");
    assert_eq!(bridge.mappings.generation(), 1, "no swap on error");
    publish(&setup.queue, &bodies[2], "r2").await;
    wait_pushes(&cem, 3).await;
    assert_eq!(dept_codes(&cem), ["NEW-OPH01", "NEW-OPH01", "OPH01"]);

    // Fixing the file reloads again and clears the error.
    std::fs::write(&file, &adt).unwrap();
    wait_for(20, "the fixed file reloaded", || {
        let m = m.clone();
        async move { (m.generation() >= 2 && m.last_error().is_none()).then_some(()) }
    })
    .await;
    publish(&setup.queue, &bodies[3], "r3").await;
    wait_pushes(&cem, 4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        dept_codes(&cem),
        ["NEW-OPH01", "NEW-OPH01", "OPH01", "OPH01"],
        "every message mapped by exactly one whole version; none lost, none twice"
    );
    assert_no_dead_letters(&setup).await;
    bridge.shutdown().await;
    cleanup(&setup).await;
}

fn templates(cem: &Recorder) -> Vec<String> {
    let mut v: Vec<String> = cem
        .accepted()
        .iter()
        .map(|r| r.json["templateId"].as_str().unwrap_or("").to_string())
        .collect();
    v.sort();
    v
}

/// Issue 8 §5 for the survey policy: `[surveys]` edited in the config file is swapped in while
/// the bridge runs; a config that does not check is refused (the last good policy stays,
/// reported on `/api/summary` for the ops page) until it is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survey_policy_changes_in_the_config_file_are_reloaded_and_broken_ones_refused() {
    let cem = Recorder::start().await;
    let mut setup = Setup::new("reload-policy", &cem.url());
    let policy = |template: &str, extra: &str| {
        format!(
            "[surveys]\n{extra}[[surveys.rule]]\nevent = \"registered\"\nclass = \"O\"\ntemplate = \"{template}\"\n"
        )
    };
    setup.extra_top = policy("OP-A", "");
    let path = setup.write_config();
    let cfg = cem_bridge::config::Config::load(&path).unwrap();
    let bridge = cem_bridge::app::start_with_clock(
        cfg,
        test_secrets(),
        cem_bridge::process::clock::Clock::starting_at(CLOCK_START.parse().unwrap()),
    )
    .await
    .unwrap();
    setup.wait_declared().await;
    let bodies = registrations(3, "policy");
    publish(&setup.queue, &bodies[0], "p0").await;
    wait_pushes(&cem, 1).await;
    assert_eq!(templates(&cem), ["OP-A"]);

    setup.extra_top = policy("OP-BBB", "");
    setup.write_config();
    let p = bridge.policy.clone();
    wait_for(20, "the new policy", || {
        let p = p.clone();
        async move { (p.current().rules[0].template == "OP-BBB").then_some(()) }
    })
    .await;
    publish(&setup.queue, &bodies[1], "p1").await;
    wait_pushes(&cem, 2).await;
    assert_eq!(templates(&cem), ["OP-A", "OP-BBB"]);

    // A broken config is refused; the last good policy keeps working and the page says so.
    setup.extra_top = policy("OP-CCCC", "dnd_days = \"thirty\"\n");
    setup.write_config();
    let err = wait_for(20, "the refused reload reported", || {
        let p = p.clone();
        async move { p.last_error() }
    })
    .await;
    assert!(
        err.contains("bridge.toml") && err.contains("dnd_days"),
        "{err}"
    );
    let addr = bridge.ops_addr().unwrap();
    let summary: serde_json::Value = reqwest::get(format!("http://{addr}/api/summary"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(summary["reload"]["config_error"], err.as_str());
    publish(&setup.queue, &bodies[2], "p2").await;
    wait_pushes(&cem, 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        templates(&cem),
        ["OP-A", "OP-BBB", "OP-BBB"],
        "each message decided by one whole policy; the broken one never applied"
    );
    bridge.shutdown().await;
    cleanup(&setup).await;
}
