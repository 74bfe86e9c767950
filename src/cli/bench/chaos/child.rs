//! The bridge under test: the real binary as a child process (`run -c` with the run's config,
//! public bench keys, a clock where the samples' visits are due), started, killed and stopped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// The bridge's clock at every start: the samples' visits (2026-11-20) are due and not stale.
const CLOCK_START: &str = "2026-11-21T10:30:00+08:00";
const PSEUDONYM_KEY: &str = "6368616f732062656e6368206b65793a2066697865642c207075626c69632e2e";
const VAULT_KEY: &str = "be5be5be5be5be5be5be5be5be5be5be5be5be5be5be5be5be5be5be5be5be5b";
const RESOLVE_TOKEN: &str = "chaos-bench-resolve-token-not-a-secret-0001";

pub(super) struct Bridge {
    pub(super) config: PathBuf,
    pub(super) log: PathBuf,
    pub(super) child: Option<Child>,
    pub(super) starts: usize,
}

impl Bridge {
    pub(super) fn spawn(&mut self) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("the path of this program")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let err = log.try_clone()?;
        let child = Command::new(exe)
            .args(["run", "-c"])
            .arg(&self.config)
            .env("CEM_BRIDGE_CLOCK_START", CLOCK_START)
            .env("CEM_CHAOS_PSEUDONYM_KEY", PSEUDONYM_KEY)
            .env("CEM_CHAOS_VAULT_KEY", VAULT_KEY)
            .env("CEM_CHAOS_RESOLVE_TOKEN", RESOLVE_TOKEN)
            .env("RUST_LOG", "warn,cem_bridge=info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .context("starting the bridge as a child process")?;
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    pub(super) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait up to `limit` for the exit; kill past it. The exit code, if any.
    pub(super) async fn stop(&mut self, limit: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let until = Instant::now() + limit;
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return s.code();
            }
            if Instant::now() > until {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the child died on its own (a start error, a panic).
    pub(super) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

pub(super) fn config_text(store: &str, amqp: &str, queue: &str, cem: &str) -> String {
    let q = |s: &str| toml::Value::String(s.to_string()).to_string();
    format!(
        r#"tenant = "chaos"
shutdown_timeout_s = 20
[pseudonym]
key_env = "CEM_CHAOS_PSEUDONYM_KEY"
key_id = "chaos"
[vault]
key_env = "CEM_CHAOS_VAULT_KEY"
key_id = "chaos"
[store]
url = {store}
[[source]]
name = "chaos"
url = {amqp}
queue = {queue}
prefetch = 128
batch_size = 64
batch_wait_ms = 5
[cem]
mode = "http"
url = {cem}
timeout_ms = 1000
resolve_token_env = "CEM_CHAOS_RESOLVE_TOKEN"
[cem.limits]
# Faults last seconds here, not hours: retries every 0.1–2 s, and enough of them (a real
# site keeps the defaults: 10 attempts over about 17 minutes).
rate_per_sec = 1000000
burst = 1000000
max_attempts = 200
backoff_initial_ms = 100
backoff_max_ms = 2000
breaker_open_ms = 500
[scheduler]
poll_interval_ms = 100
[ops]
listen = ""
"#,
        store = q(store),
        amqp = q(amqp),
        queue = q(queue),
        cem = q(cem),
    )
}
