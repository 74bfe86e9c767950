//! What a new user meets on a first run (issue 20 §8): paths in `bridge.toml` start from its
//! folder whatever the working directory (the old form works with a deprecation warning),
//! host names in listen addresses, and errors that quote the operating system's error once.

use std::path::Path;
use std::process::Command;

use crate::common::*;

fn bridge(cwd: &Path) -> Command {
    let mut c = Command::new(bridge_bin());
    c.current_dir(cwd)
        .env_remove("CEM_BRIDGE_CONFIG")
        .env("RUST_LOG", "warn");
    c
}

fn text_of(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A demo-key config whose every path is as written in `paths` (store, mappings, shadow file,
/// opt-out list), with `extra` appended.
fn config(store: &str, mappings: &str, shadow: &str, opt_out: &str, extra: &str) -> String {
    format!(
        r#"tenant = "t"
[pseudonym]
key_env = "CEM_BRIDGE_FIRST_RUN_NO_KEY"
key_id = "k"
allow_demo_key = true
[vault]
key_env = "CEM_BRIDGE_FIRST_RUN_NO_VAULT_KEY"
allow_demo_key = true
[store]
url = "{store}"
[[source]]
name = "s"
url = "amqp://127.0.0.1"
queue = "q"
mappings = ["{mappings}"]
[cem]
mode = "shadow"
shadow_file = "{shadow}"
[lists]
opt_out = ["{opt_out}"]
[ops]
listen = ""
{extra}"#
    )
}

/// Copy the shipped HL7 v2 mapping into `dir`.
fn copy_mapping(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/hl7v2/adt.yaml");
    std::fs::copy(shipped, dir.join("adt.yaml")).unwrap();
}

fn write_list(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, "kind,value,authority\n").unwrap();
}

/// A config in a folder of its own naming `mappings/x`, `data/…` and `lists/…` beside it works
/// from any working directory: the paths start from the config file's folder.
#[test]
fn config_paths_start_from_the_config_folder_whatever_the_working_directory() {
    let dir = scratch_dir("paths-beside");
    let elsewhere = scratch_dir("paths-elsewhere");
    copy_mapping(&dir.join("mappings/x"));
    write_list(&dir.join("lists/opt_out.csv"));
    let cfg = dir.join("bridge.toml");
    std::fs::write(
        &cfg,
        config(
            "sqlite://data/store.db",
            "mappings/x",
            "data/requests.jsonl",
            "lists/opt_out.csv",
            "",
        ),
    )
    .unwrap();
    let out = bridge(&elsewhere)
        .args(["check", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    let t = text_of(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("s: 1 mapping(s)"), "{t}");
    assert!(
        t.contains(&format!(
            "store sqlite://{}",
            dir.join("data/store.db").display()
        )),
        "{t}"
    );
    assert!(!t.contains("deprecated"), "{t}");
    assert!(
        std::fs::read_dir(&elsewhere).unwrap().next().is_none(),
        "nothing is created in the working directory"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&elsewhere);
}

/// The shipped demo config names its files relative to itself: checked from another working
/// directory it finds the mappings, and it gives no deprecation warning.
#[test]
fn shipped_demo_config_works_from_another_working_directory_without_warnings() {
    let elsewhere = scratch_dir("paths-demo");
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/bridge.toml");
    let out = bridge(&elsewhere)
        .args(["check", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    let t = text_of(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("his-adt: 5 mapping(s)"), "{t}");
    assert!(!t.contains("deprecated"), "{t}");
    let _ = std::fs::remove_dir_all(&elsewhere);
}

/// The old form — paths relative to the working directory — still works, and `check` says per
/// key, with file:line, what to write instead; a file to be created whose folder exists only
/// from the working directory goes there too.
#[test]
fn working_directory_paths_still_work_with_a_deprecation_warning() {
    let cwd = scratch_dir("paths-old");
    copy_mapping(&cwd.join("maps"));
    write_list(&cwd.join("lists/opt_out.csv"));
    std::fs::create_dir_all(cwd.join("data")).unwrap();
    std::fs::create_dir_all(cwd.join("conf")).unwrap();
    std::fs::write(
        cwd.join("conf/bridge.toml"),
        config(
            "sqlite://data/store.db",
            "maps",
            "data/requests.jsonl",
            "lists/opt_out.csv",
            "",
        ),
    )
    .unwrap();
    let out = bridge(&cwd)
        .args(["check", "-c", "conf/bridge.toml"])
        .output()
        .unwrap();
    let t = text_of(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("s: 1 mapping(s)"), "{t}");
    assert!(t.contains("store sqlite://data/store.db"), "{t}");
    for (line, key, write) in [
        (10, "store.url", "sqlite://../data/store.db"),
        (15, "source[0].mappings[0]", "../maps"),
        (18, "cem.shadow_file", "../data/requests.jsonl"),
        (20, "lists.opt_out[0]", "../lists/opt_out.csv"),
    ] {
        let want = format!("warning: conf/bridge.toml:{line}: {key}: ");
        let hit = t.lines().find(|l| l.starts_with(&want));
        assert!(
            hit.is_some_and(|l| l.contains("deprecated") && l.contains(&format!("write {write:?}"))),
            "expected {want}… write {write:?} in:\n{t}"
        );
    }
    // `run` logs the same notices at start (here it then stops: its ops port is taken).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let text = std::fs::read_to_string(cwd.join("conf/bridge.toml")).unwrap();
    std::fs::write(
        cwd.join("conf/bridge.toml"),
        text.replace("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\"")),
    )
    .unwrap();
    let out = bridge(&cwd)
        .args(["run", "-c", "conf/bridge.toml"])
        .output()
        .unwrap();
    let t = text_of(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.lines().any(|l| l.contains("WARN")
            && l.contains("conf/bridge.toml:15: source[0].mappings[0]:")
            && l.contains("write \"../maps\"")),
        "the start log names the key and what to write:\n{t}"
    );
    drop(taken);
    let _ = std::fs::remove_dir_all(&cwd);
}

/// `localhost:PORT` is an address wherever one is configured: `[ops] listen` and a door's
/// `listen` resolve host names instead of refusing them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localhost_is_accepted_as_a_listen_address() {
    let dir = scratch_dir("localhost");
    let text = config(
        &format!("sqlite://{}", dir.join("s.db").display()),
        &format!("{}/mappings", env!("CARGO_MANIFEST_DIR")),
        "r.jsonl",
        &format!("{}/l.csv", dir.display()),
        "",
    )
    .replace("listen = \"\"", "listen = \"localhost:0\"")
    .replace(
        "url = \"amqp://127.0.0.1\"\nqueue = \"q\"",
        "kind = \"mllp\"\nlisten = \"localhost:0\"",
    );
    write_list(&dir.join("l.csv"));
    let cfg = cem_bridge::config::Config::parse(&text, &dir.join("b.toml"))
        .unwrap_or_else(|e| panic!("localhost is an address: {e}"));
    assert!(!cfg.ops.needs_token(), "localhost is loopback");
    let bridge = cem_bridge::app::start(cfg, test_secrets())
        .await
        .expect("the bridge starts listening on localhost");
    let addr = bridge.ops_addr().expect("ops server on");
    assert!(addr.ip().is_loopback(), "{addr}");
    let body = reqwest::get(format!("http://localhost:{}/health", addr.port()))
        .await
        .expect("/health on localhost")
        .text()
        .await
        .unwrap();
    assert!(body.contains("ok"), "{body}");
    bridge.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Errors caused by the operating system say its error once, not in the message and again as
/// its cause: a missing config file, and a port already taken.
#[test]
fn os_errors_are_quoted_once() {
    let dir = scratch_dir("os-once");
    let missing = dir.join("nope.toml");
    let out = bridge(&dir)
        .args(["check", "-c"])
        .arg(&missing)
        .output()
        .unwrap();
    let t = text_of(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains(&missing.display().to_string()), "{t}");
    assert_eq!(
        t.matches("No such file or directory").count(),
        1,
        "the OS error once:\n{t}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = dir.join("b.toml");
    write_list(&dir.join("l.csv"));
    std::fs::write(
        &cfg,
        config(
            "sqlite://s.db",
            &format!("{}/mappings", env!("CARGO_MANIFEST_DIR")),
            "r.jsonl",
            "l.csv",
            "",
        )
        .replace("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\"")),
    )
    .unwrap();
    let out = bridge(&dir).args(["run", "-c"]).arg(&cfg).output().unwrap();
    let t = text_of(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains(&format!("127.0.0.1:{port}")), "{t}");
    assert_eq!(
        t.matches("Address already in use").count(),
        1,
        "the OS error once:\n{t}"
    );
    drop(taken);
    let _ = std::fs::remove_dir_all(&dir);
}
