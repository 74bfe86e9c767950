//! The command line as a user runs it: `publish`, `check`, and refusing to start without a
//! pseudonym key (issue 3 §6, §9).

use std::process::Command;

use crate::common::*;

fn bridge() -> Command {
    let mut c = Command::new(bridge_bin());
    c.env_remove("CEM_BRIDGE_PSEUDONYM_KEY")
        .env_remove("CEM_BRIDGE_TEST_KEY")
        .env_remove("CEM_BRIDGE_CONFIG")
        .env("RUST_LOG", "warn");
    c
}

/// `publish` sends each file as one persistent message with confirms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_sends_files_as_persistent_confirmed_messages() {
    let setup = Setup::new("publish", "http://127.0.0.1:9/unused");
    let b = setup.start().await;
    setup.wait_declared().await;
    b.shutdown().await;
    let out = bridge()
        .args([
            "publish",
            "--amqp",
            &amqp_url(),
            "--queue",
            &setup.queue,
            "--header",
            "service-code=S0023",
        ])
        .arg(fixture("hl7v2/adt_a03_discharge.hl7"))
        .arg(fixture("xml/registration_utf8.xml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("published 2 message(s)"));
    let msgs = drain(&setup.queue).await;
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0].body, read_fixture("hl7v2/adt_a03_discharge.hl7"));
    assert_eq!(msgs[0].message_id.as_deref(), Some("adt_a03_discharge.hl7"));
    assert_eq!(
        msgs[1].headers.get("service-code").map(String::as_str),
        Some("S0023")
    );
    cleanup(&setup).await;
}

/// Publishing to a queue that does not exist says so instead of losing the messages.
#[test]
fn publish_to_a_missing_queue_is_a_clear_error() {
    let out = bridge()
        .args([
            "publish",
            "--amqp",
            &amqp_url(),
            "--queue",
            &unique("t.no-such-queue"),
        ])
        .arg(fixture("hl7v2/adt_a03_discharge.hl7"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not exist") && err.contains("Start the bridge"),
        "{err}"
    );
}

/// R-ANO-2: without the key in the environment the bridge refuses to start, naming the variable.
#[test]
fn missing_pseudonym_key_refuses_to_start_with_a_clear_message() {
    let setup = Setup::new("nokey", "http://127.0.0.1:9/unused");
    let cfg = setup.write_config();
    for cmd in ["check", "run"] {
        let out = bridge().args([cmd, "-c"]).arg(&cfg).output().unwrap();
        assert!(!out.status.success(), "{cmd} must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("CEM_BRIDGE_TEST_KEY") && err.contains("at least 32"),
            "{cmd}: {err}"
        );
    }
    // A short key is refused too.
    let out = bridge()
        .args(["check", "-c"])
        .arg(&cfg)
        .env("CEM_BRIDGE_TEST_KEY", "short")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is 5 bytes"));
    let _ = std::fs::remove_dir_all(&setup.dir);
}

/// The shipped demo config is valid and allowed to run on the demo key.
#[test]
fn shipped_demo_config_checks_ok() {
    let out = bridge()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["check", "-c", "config/bridge.toml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("DEMO pseudonym key"),
        "warns about the demo key"
    );
}

/// A typo in the config is reported with file, line and key.
#[test]
fn config_typo_names_file_line_and_key() {
    let setup = Setup::new("typo", "http://127.0.0.1:9/unused");
    let cfg = setup.dir.join("bad.toml");
    std::fs::write(
        &cfg,
        setup
            .config_text()
            .replace("batch_size = 16", "batch_sise = 16"),
    )
    .unwrap();
    let out = bridge()
        .args(["check", "-c"])
        .arg(&cfg)
        .env("CEM_BRIDGE_TEST_KEY", "k".repeat(32))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("batch_sise") && err.contains("line "),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&setup.dir);
}
