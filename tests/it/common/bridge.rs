//! A bridge under test: its config (`Setup`), started in-process or as a child process, and the
//! ticket-loop setup with signed webhook requests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cem_bridge::app::{self, Bridge};
use cem_bridge::config::Config;
use cem_bridge::process::clock::Clock;

use super::*;

/// Names and paths of one test's bridge.
#[derive(Clone, Debug)]
pub struct Setup {
    pub queue: String,
    pub dir: PathBuf,
    pub db: PathBuf,
    pub cem_url: String,
    pub extra_source: String,
    pub extra_top: String,
    pub scheduler: String,
    /// Body of `[cem.limits]` (the CEM sink's retries, rate limit and breaker).
    pub cem_limits: String,
    /// Store URL; a SQLite file in `dir` unless set.
    pub store_url: Option<String>,
    /// Body of the `[ops]` section; a free loopback port by default (tests run in parallel).
    pub ops: String,
}

impl Setup {
    pub fn new(name: &str, cem_url: &str) -> Self {
        let dir = scratch_dir(name);
        Self {
            queue: unique(&format!("t.{name}")),
            db: dir.join("bridge.db"),
            dir,
            cem_url: cem_url.to_string(),
            extra_source: String::new(),
            extra_top: String::new(),
            scheduler: "poll_interval_ms = 50\n".into(),
            cem_limits: "backoff_initial_ms = 50\nbackoff_max_ms = 200\nbreaker_open_ms = 200\n"
                .into(),
            store_url: None,
            ops: "listen = \"127.0.0.1:0\"\n".into(),
        }
    }

    pub fn dlq(&self) -> String {
        format!("{}.dlq", self.queue)
    }

    pub fn config_text(&self) -> String {
        format!(
            r#"
tenant = "test"
{extra_top}
[pseudonym]
key_env = "CEM_BRIDGE_TEST_KEY"
key_id = "t1"
[vault]
key_env = "CEM_BRIDGE_TEST_VAULT_KEY"
key_id = "tv1"
[store]
url = "{store}"
[[source]]
name = "adt"
url = "{amqp}"
queue = "{queue}"
prefetch = 64
batch_size = 16
batch_wait_ms = 10
{extra_source}
[cem]
mode = "http"
url = "{cem}"
timeout_ms = 2000
resolve_token_env = "CEM_BRIDGE_TEST_RESOLVE_TOKEN"
[cem.limits]
{cem_limits}
[scheduler]
{scheduler}
[ops]
{ops}
"#,
            ops = self.ops,
            cem_limits = self.cem_limits,
            extra_top = self.extra_top,
            store = self
                .store_url
                .clone()
                .unwrap_or_else(|| format!("sqlite://{}", self.db.display())),
            amqp = amqp_url(),
            queue = self.queue,
            extra_source = if self.extra_source.contains("mappings") {
                self.extra_source.clone()
            } else {
                // The shipped mappings, named absolutely: a written config lives in a
                // scratch folder, and relative paths start from there.
                format!(
                    "mappings = [\"{}/mappings\"]\n{}",
                    env!("CARGO_MANIFEST_DIR"),
                    self.extra_source,
                )
            },
            cem = self.cem_url,
            scheduler = self.scheduler,
        )
    }

    pub fn config(&self) -> Config {
        Config::parse(&self.config_text(), Path::new("test.toml")).expect("test config parses")
    }

    pub fn write_config(&self) -> PathBuf {
        let p = self.dir.join("bridge.toml");
        std::fs::write(&p, self.config_text()).expect("write config");
        p
    }

    /// Start the bridge in this process, on the test clock ([`CLOCK_START`]).
    pub async fn start(&self) -> Bridge {
        self.start_at(CLOCK_START).await
    }

    /// Start the bridge in this process with its clock starting at `start` (RFC 3339).
    pub async fn start_at(&self, start: &str) -> Bridge {
        app::start_with_clock(
            self.config(),
            test_secrets(),
            Clock::starting_at(start.parse().expect("clock start")),
        )
        .await
        .expect("bridge starts")
    }

    /// Wait until the bridge has declared its queue (it does so on connect).
    pub async fn wait_declared(&self) {
        let q = self.queue.clone();
        wait_for(15, "the bridge declares its queue", || {
            let q = q.clone();
            async move { queue_depth(&q).await }
        })
        .await;
    }
}

/// The bridge binary built for these tests.
pub fn bridge_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cem-bridge"))
}

/// Start `cem-bridge run` as a child; `fault` sets `CEM_BRIDGE_FAULT`. Logs go to `log`.
pub fn spawn_bridge(config: &Path, fault: Option<&str>, log: &Path) -> std::process::Child {
    spawn_bridge_at_level(config, fault, log, "info")
}

/// [`spawn_bridge`] with a log filter (`RUST_LOG`).
pub fn spawn_bridge_at_level(
    config: &Path,
    fault: Option<&str>,
    log: &Path,
    level: &str,
) -> std::process::Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let mut cmd = std::process::Command::new(bridge_bin());
    cmd.arg("run")
        .arg("-c")
        .arg(config)
        .env(
            "CEM_BRIDGE_TEST_KEY",
            String::from_utf8_lossy(TEST_KEY).into_owned(),
        )
        .env("CEM_BRIDGE_TEST_VAULT_KEY", TEST_VAULT_KEY_HEX)
        .env("CEM_BRIDGE_TEST_RESOLVE_TOKEN", TEST_RESOLVE_TOKEN)
        .env("RUST_LOG", level)
        .env("CEM_BRIDGE_CLOCK_START", CLOCK_START)
        .stdout(out.try_clone().expect("log"))
        .stderr(out);
    match fault {
        Some(f) => cmd.env("CEM_BRIDGE_FAULT", f),
        None => cmd.env_remove("CEM_BRIDGE_FAULT"),
    };
    cmd.spawn().expect("spawn cem-bridge")
}

/// `cem-bridge check -c config` with the test keys in the environment (logs at warn).
pub fn check_config(config: &Path) -> std::process::Output {
    std::process::Command::new(bridge_bin())
        .args(["check", "-c"])
        .arg(config)
        .env(
            "CEM_BRIDGE_TEST_KEY",
            String::from_utf8_lossy(TEST_KEY).into_owned(),
        )
        .env("CEM_BRIDGE_TEST_VAULT_KEY", TEST_VAULT_KEY_HEX)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run cem-bridge check")
}

/// Wait for a child to exit (polling), up to `secs`.
pub async fn wait_exit(child: &mut std::process::Child, secs: u64) -> std::process::ExitStatus {
    wait_for(secs, "the bridge process to exit", || {
        let r = child.try_wait().ok().flatten();
        async move { r }
    })
    .await
}

/// A bridge with the ticket loop on, HCRM and the call center pointed at recorders.
pub fn ticket_setup(
    name: &str,
    cem: &Recorder,
    hcrm: &Recorder,
    cc: &Recorder,
    extra: &str,
) -> Setup {
    let mut s = Setup::new(name, &cem.url());
    s.extra_top = format!(
        r#"
[tickets]
poll_interval_ms = 50
{extra}
[hcrm]
mode = "http"
url = "{hcrm}"
[hcrm.limits]
backoff_initial_ms = 50
backoff_max_ms = 200
breaker_open_ms = 300
[callcenter]
mode = "http"
url = "{cc}"
[callcenter.limits]
backoff_initial_ms = 50
backoff_max_ms = 200
"#,
        hcrm = hcrm.url(),
        cc = cc.url()
    );
    s
}

/// POST `body` to `path` on the ops listener signed like the CEM and the call center do
/// (HMAC-SHA256 of `timestamp.body`) at Unix second `at_s`; (status, JSON answer).
pub async fn post_signed_to(
    addr: SocketAddr,
    path: &str,
    body: &str,
    secret: &[u8],
    at_s: i64,
) -> (u16, serde_json::Value) {
    let ts = at_s.to_string();
    let sig = cem_pipeline::ticket::sign(secret, &ts, body.as_bytes());
    let r = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .header("X-CEM-Timestamp", ts)
        .header("X-CEM-Signature", sig)
        .body(body.to_string())
        .send()
        .await
        .expect("the webhook answers");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// `POST /hooks/callcenter/results` signed with the call center's test secret at `at_s`.
pub async fn post_call_result(addr: SocketAddr, body: &str, at_s: i64) -> (u16, serde_json::Value) {
    post_signed_to(
        addr,
        "/hooks/callcenter/results",
        body,
        TEST_CALLCENTER_SECRET,
        at_s,
    )
    .await
}
