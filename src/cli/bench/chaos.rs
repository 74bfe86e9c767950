//! `cem-bridge bench chaos` (issue 22): the real bridge as a child process under the faults that
//! happen in a hospital, and an account of every message at the end.
//!
//! A stream of N mixed messages — HL7 A04 / A03 / A11 / A08, 互联互通 XML, JSON, about 2 % bad
//! input, about 5 % delivered twice and one poison message — is published to a fresh queue
//! while the bench injects, in turn: SIGKILL of the bridge (K times, restarted each time), the
//! bridge's broker connection closed from the broker side, RabbitMQ stopped and started
//! (`rabbitmqctl stop_app` / `start_app`), the CEM refusing connections, then answering 500,
//! then slower than the bridge's timeout, then 429 with `Retry-After`; on SQLite the store's
//! disk filled up and freed again (a tmpfs of its own, when run as root); on PostgreSQL a
//! PostgreSQL restart and a second instance on the database with the first one killed. The CEM is an in-process recorder that answers a repeated
//! `Idempotency-Key` with 409, as the real one does.
//!
//! At the end every distinct message must be exactly one of: pushed (its survey job `sent`),
//! cancelled or suppressed with a reason, recorded without a survey (an update, a cancel), or
//! dead-lettered with a reason — none missing, none with two effects, each outcome one its kind
//! allows. The recorder must have accepted no survey twice (409 replays are counted, not
//! errors), no patient twice (do-not-disturb) and no personal value. It prints one table (or
//! `--json`) and fails when anything is unaccounted for. A phase that stops progressing ends
//! the run with what was measured, so it never hangs.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cem_connectors::amqp::{AmqpPublisher, OutboundMessage, redact_url};

use crate::store::{Store, StoreOptions};

pub const DEFAULT_COUNT: usize = 5_000;
pub const DEFAULT_KILLS: usize = 3;

/// What to run.
pub struct ChaosBench {
    pub count: usize,
    pub kills: usize,
    pub amqp: String,
    /// PostgreSQL admin URL: the store is a scratch database there and PostgreSQL is restarted
    /// mid-stream; `None` = SQLite.
    pub postgres: Option<String>,
    /// How long each CEM fault (refused, 500, slow, 429) lasts.
    pub cem_phase: Duration,
    /// Stop and start RabbitMQ itself (every client on this machine sees it).
    pub broker_restart: bool,
    /// Fill the SQLite store's disk (a tmpfs of its own; needs root), then free it.
    pub disk_full: bool,
    pub json: bool,
}

/// The bridge's clock at every start: the samples' visits (2026-11-20) are due and not stale.
const CLOCK_START: &str = "2026-11-21T10:30:00+08:00";
const PSEUDONYM_KEY: &str = "6368616f732062656e6368206b65793a2066697865642c207075626c69632e2e";
const VAULT_KEY: &str = "be5be5be5be5be5be5be5be5be5be5be5be5be5be5be5be5be5be5be5be5be5b";
const RESOLVE_TOKEN: &str = "chaos-bench-resolve-token-not-a-secret-0001";
/// No progress for this long ends a phase with what it measured.
const STALL: Duration = Duration::from_secs(90);

const A04: &str =
    include_str!("../../../tests/fixtures/samples/hl7v2/adt_a04_outpatient_registration.hl7");
const A03: &str = include_str!("../../../tests/fixtures/samples/hl7v2/adt_a03_discharge.hl7");
const A11: &str =
    include_str!("../../../tests/fixtures/samples/hl7v2/adt_a11_cancel_registration.hl7");
const A08: &str = include_str!("../../../tests/fixtures/samples/hl7v2/adt_a08_update_phone.hl7");
const XML: &str = include_str!("../../../tests/fixtures/samples/xml/registration_utf8.xml");
const JSON: &str = include_str!("../../../tests/fixtures/samples/json/registration.json");

/// Where a message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Class {
    Pushed,
    Pending,
    Cancelled,
    Suppressed,
    Recorded,
    DeadLettered,
    Lost,
    TwoEffects,
}

impl Class {
    fn name(self) -> &'static str {
        match self {
            Self::Pushed => "pushed",
            Self::Pending => "pending",
            Self::Cancelled => "cancelled",
            Self::Suppressed => "suppressed",
            Self::Recorded => "recorded",
            Self::DeadLettered => "dead-lettered",
            Self::Lost => "LOST",
            Self::TwoEffects => "TWO EFFECTS",
        }
    }
}

/// One distinct message of the stream, and the outcomes its kind allows.
struct Msg {
    id: String,
    kind: &'static str,
    body: Vec<u8>,
    headers: BTreeMap<String, String>,
    allowed: &'static [Class],
}

/// A small deterministic generator (xorshift), so a run can be repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn hl7_with(base: &str, id: &str, pid: &str, visit: &str, mobile: &str) -> Vec<u8> {
    base.replace("MSG20261120093015001", id)
        .replace("MSG20261120160000004", id)
        .replace("MSG20261120101500002", id)
        .replace("MSG20261120163000006", id)
        .replace("~110101199003071233^^^CHN^NI", "")
        .replace("~31010419551212002X^^^CHN^NI", "")
        .replace("P00012345", pid)
        .replace("P00067890", pid)
        .replace("V20261120001", visit)
        .replace("Z2026111500087", visit)
        .replace("13812345678", mobile)
        .replace("13998765432", mobile)
        .replace("13711112222", mobile)
        .into_bytes()
}

/// The stream: `n` distinct messages (distinct patients, visits and mobiles, so do-not-disturb
/// holds none back), in publishing order.
fn plan(n: usize, seed: u64) -> Vec<Msg> {
    let mut rng = Rng(seed | 1);
    let mut out: Vec<Msg> = Vec::with_capacity(n);
    // Registrations a later A11 cancels: their visit is after the bench clock, so they are
    // pending (never pushed) when the cancel comes, whatever the order after redeliveries.
    let mut cancellable: Vec<(String, String)> = Vec::new();
    let mut registered: Vec<String> = Vec::new();
    let headers = BTreeMap::new;
    for i in 0..n {
        let id = format!("CH-{i:07}");
        let pid = format!("PCH{i:07}");
        let visit = format!("VCH{i:07}");
        let mobile = format!("139{i:08}");
        let roll = rng.below(1000);
        let m = if i + 1 == n / 2 {
            // The poison message: a NUL byte in its id. PostgreSQL refuses it in every
            // transaction, so it is isolated and dead-lettered; SQLite stores it.
            Msg {
                id: format!("{id}\0P"),
                kind: "poison",
                body: hl7_with(A04, &format!("{id}\0P"), &pid, &visit, &mobile),
                headers: headers(),
                allowed: &[Class::DeadLettered, Class::Pushed],
            }
        } else if roll < 20 {
            let body = if roll < 10 {
                format!("MSH|^~\\&|HIS|HXEYE_SH01|CEM-BRIDGE|CEM|2026112009{i}").into_bytes()
            } else {
                String::from_utf8_lossy(&hl7_with(A04, &id, &pid, &visit, &mobile))
                    .replace("ADT^A04^ADT_A01", "ADT^Z99^ADT_A01")
                    .replace("EVN|A04|", "EVN|Z99|")
                    .into_bytes()
            };
            Msg {
                id: id.clone(),
                kind: "bad",
                body,
                headers: headers(),
                allowed: &[Class::DeadLettered],
            }
        } else if roll < 100 && !cancellable.is_empty() {
            let k = rng.below(cancellable.len() as u64) as usize;
            let (tpid, tvisit) = cancellable.swap_remove(k);
            Msg {
                id: id.clone(),
                kind: "A11",
                body: hl7_with(A11, &id, &tpid, &tvisit, &mobile),
                headers: headers(),
                allowed: &[Class::Recorded],
            }
        } else if roll < 160 {
            let body = String::from_utf8_lossy(&hl7_with(A04, &id, &pid, &visit, &mobile))
                .replace("|20261120093000\r", "|20261121120000\r")
                .into_bytes();
            cancellable.push((pid.clone(), visit.clone()));
            Msg {
                id: id.clone(),
                kind: "A04 (to cancel)",
                body,
                headers: headers(),
                // Cancelled; or, when the cancel arrived first, recorded as cancelled before;
                // pending if its cancel was never drawn.
                allowed: &[Class::Cancelled, Class::Recorded, Class::Pending],
            }
        } else if roll < 210 && !registered.is_empty() {
            let k = rng.below(registered.len() as u64) as usize;
            let tpid = registered[k].clone();
            Msg {
                id: id.clone(),
                kind: "A08",
                body: hl7_with(A08, &id, &tpid, &visit, &format!("137{i:08}")),
                headers: headers(),
                allowed: &[Class::Recorded],
            }
        } else if roll < 310 {
            Msg {
                id: id.clone(),
                kind: "A03",
                body: hl7_with(A03, &id, &pid, &visit, &mobile),
                headers: headers(),
                allowed: &[Class::Pushed],
            }
        } else if roll < 360 {
            let body = XML
                .replace("XMLREG20261120093500001", &id)
                .replace("V20261120003", &visit)
                .replace("P00033333", &pid)
                .replace("13933334444", &mobile)
                .replace("330106197712123458", "")
                .into_bytes();
            Msg {
                id: id.clone(),
                kind: "XML S0023",
                body,
                headers: [("service-code".to_string(), "S0023".to_string())].into(),
                allowed: &[Class::Pushed],
            }
        } else if roll < 410 {
            let body = JSON
                .replace("EVT-20261120-0001", &id)
                .replace("V20261120005", &visit)
                .replace("P00077777", &pid)
                .replace("13577778888", &mobile)
                .replace("110101200001011232", "")
                .into_bytes();
            Msg {
                id: id.clone(),
                kind: "JSON",
                body,
                headers: headers(),
                allowed: &[Class::Pushed],
            }
        } else {
            registered.push(pid.clone());
            Msg {
                id: id.clone(),
                kind: "A04",
                body: hl7_with(A04, &id, &pid, &visit, &mobile),
                headers: headers(),
                allowed: &[Class::Pushed],
            }
        };
        out.push(m);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The CEM recorder

/// How the recorder answers now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ok,
    /// Connections refused (the listener is closed; pooled connections get 503 and close).
    Down,
    Error500,
    /// Slower than the bridge's timeout; the push is accepted, the bridge never sees the answer.
    Slow,
    TooMany,
}

#[derive(Default)]
struct CemState {
    mode: Mutex<Option<Mode>>,
    /// Idempotency key → times accepted with 2xx (must stay 1).
    accepted: Mutex<HashMap<String, u32>>,
    /// Pseudonymous patient key → surveys accepted (do-not-disturb: must stay 1).
    patients: Mutex<HashMap<String, u32>>,
    requests: AtomicU64,
    replays: AtomicU64,
    refused: AtomicU64,
    pii: AtomicU64,
}

impl CemState {
    fn mode(&self) -> Mode {
        self.mode.lock().ok().and_then(|m| *m).unwrap_or(Mode::Ok)
    }
    fn set(&self, m: Mode) {
        if let Ok(mut g) = self.mode.lock() {
            *g = Some(m);
        }
    }
}

/// Whether a body holds something personal: a mobile number standing alone (not digits inside
/// a hex job id), or a bench patient id or visit number.
fn personal(body: &str) -> bool {
    let b = body.as_bytes();
    let mobile = b.windows(11).enumerate().any(|(i, w)| {
        w[0] == b'1'
            && (b'3'..=b'9').contains(&w[1])
            && w.iter().all(u8::is_ascii_digit)
            && (i == 0 || !b[i - 1].is_ascii_alphanumeric())
            && b.get(i + 11).is_none_or(|c| !c.is_ascii_alphanumeric())
    });
    mobile || body.contains("PCH0") || body.contains("VCH0")
}

struct Cem {
    port: u16,
    state: Arc<CemState>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Cem {
    async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let mut cem = Self {
            port,
            state: Arc::new(CemState::default()),
            server: None,
        };
        cem.serve(listener);
        Ok(cem)
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        use axum::http::{HeaderMap, StatusCode, header};
        use axum::response::IntoResponse;
        let state = self.state.clone();
        let app = axum::Router::new().route(
            "/dispatch",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let s = state.clone();
                async move {
                    s.requests.fetch_add(1, Ordering::Relaxed);
                    let mode = s.mode();
                    match mode {
                        Mode::Down => {
                            s.refused.fetch_add(1, Ordering::Relaxed);
                            return (
                                StatusCode::SERVICE_UNAVAILABLE,
                                [(header::CONNECTION, "close")],
                                String::new(),
                            )
                                .into_response();
                        }
                        Mode::Error500 => {
                            s.refused.fetch_add(1, Ordering::Relaxed);
                            return (
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "{\"code\":500}".to_string(),
                            )
                                .into_response();
                        }
                        Mode::TooMany => {
                            s.refused.fetch_add(1, Ordering::Relaxed);
                            return (
                                StatusCode::TOO_MANY_REQUESTS,
                                [(header::RETRY_AFTER, "1")],
                                "{\"code\":429}".to_string(),
                            )
                                .into_response();
                        }
                        Mode::Slow | Mode::Ok => {}
                    }
                    if personal(&body) {
                        s.pii.fetch_add(1, Ordering::Relaxed);
                    }
                    let key = headers
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let first = match s.accepted.lock() {
                        Ok(mut seen) => {
                            let n = seen.entry(key).or_insert(0);
                            *n += 1;
                            *n == 1
                        }
                        Err(_) => true,
                    };
                    if !first {
                        s.replays.fetch_add(1, Ordering::Relaxed);
                        return (StatusCode::CONFLICT, "{\"code\":409}".to_string())
                            .into_response();
                    }
                    let pk = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["patient"]["pk"].as_str().map(str::to_string))
                        .unwrap_or_default();
                    if let Ok(mut p) = s.patients.lock() {
                        *p.entry(pk).or_insert(0) += 1;
                    }
                    // Slow: the CEM took the survey but answers after the bridge gave up
                    // waiting; the retry under the same key is answered 409.
                    if mode == Mode::Slow {
                        tokio::time::sleep(Duration::from_millis(2_500)).await;
                    }
                    (StatusCode::OK, "{\"code\":0}".to_string()).into_response()
                }
            }),
        );
        self.server = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/dispatch", self.port)
    }

    /// Close the listener: new connections are refused.
    fn down(&mut self) {
        self.state.set(Mode::Down);
        if let Some(s) = self.server.take() {
            s.abort();
        }
    }

    async fn up(&mut self) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .with_context(|| {
                format!("the CEM recorder cannot listen on port {} again", self.port)
            })?;
        self.state.set(Mode::Ok);
        self.serve(listener);
        Ok(())
    }

    /// Accepted surveys, and keys accepted (2xx) more than once.
    fn tally(&self) -> (usize, usize, usize) {
        let (accepted, twice) = self
            .state
            .accepted
            .lock()
            .map(|a| (a.len(), a.values().filter(|n| **n > 1).count()))
            .unwrap_or((0, 0));
        let patients_twice = self
            .state
            .patients
            .lock()
            .map(|p| p.values().filter(|n| **n > 1).count())
            .unwrap_or(0);
        // A key "accepted twice" in the map is a 409 replay, counted separately; what would be
        // wrong is two 2xx for one key, which the recorder never gives — so the figure that
        // matters is patients seen twice.
        let _ = twice;
        (accepted, 0, patients_twice)
    }
}

// ---------------------------------------------------------------------------------------------
// The bridge as a child process

struct Bridge {
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    starts: usize,
}

impl Bridge {
    fn spawn(&mut self) -> anyhow::Result<()> {
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

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait up to `limit` for the exit; kill past it. The exit code, if any.
    async fn stop(&mut self, limit: Duration) -> Option<i32> {
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
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

fn config_text(store: &str, amqp: &str, queue: &str, cem: &str) -> String {
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

// ---------------------------------------------------------------------------------------------
// Faults

/// The SQLite store on a small RAM disk of its own (tmpfs, mounted as root), so the bench can
/// fill it up and free it again.
struct SmallDisk {
    mount: PathBuf,
}

impl SmallDisk {
    /// Mount a 2 GiB tmpfs at `dir/disk` (RAM only as used); `None` when this is not possible here (not root, no
    /// `mount`): the disk-full fault is then left out and the report says so.
    fn mount(dir: &Path) -> Option<Self> {
        let mount = dir.join("disk");
        std::fs::create_dir_all(&mount).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2g", "tmpfs"])
            .arg(&mount)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Self { mount })
    }

    /// Write a filler file until the disk is full; its path.
    fn fill(&self) -> anyhow::Result<PathBuf> {
        use std::io::Write;
        let path = self.mount.join("filler");
        let mut f =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let chunk = vec![0u8; 1 << 20];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.flush();
        Ok(path)
    }

    fn free(&self, filler: &Path) {
        let _ = std::fs::remove_file(filler);
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

/// One injected fault: what, when it ended (the bridge or the peer back), and how long until
/// the first message was settled after it.
struct Fault {
    what: String,
    ended: Instant,
    /// Recovery is the next settled message (broker and store faults) or the next survey the
    /// CEM accepted (CEM faults).
    pushes: bool,
    progress_at_end: u64,
    recovered: Option<Duration>,
}

fn rabbitmqctl(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .context("rabbitmqctl (the local RabbitMQ's CLI) is not on PATH")?;
    if !out.status.success() {
        bail!(
            "rabbitmqctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Close the bridge's connections to `queue` from the broker side. How many were closed.
fn close_bridge_connections(queue: &str) -> anyhow::Result<usize> {
    let list = rabbitmqctl(&[
        "list_connections",
        "pid",
        "client_properties",
        "-q",
        "--no-table-headers",
    ])?;
    let mut n = 0;
    for pid in list
        .lines()
        .filter(|l| l.contains(queue))
        .filter_map(|l| l.split('\t').next())
    {
        rabbitmqctl(&[
            "close_connection",
            pid,
            "chaos bench: broker-side disconnect",
        ])?;
        n += 1;
    }
    Ok(n)
}

fn restart_postgres() -> anyhow::Result<()> {
    let version = std::fs::read_dir("/etc/postgresql")
        .context("PostgreSQL's cluster list (/etc/postgresql)")?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .context("no PostgreSQL cluster under /etc/postgresql")?;
    let st = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "restart"])
        .status()
        .context("pg_ctlcluster")?;
    if !st.success() {
        bail!("pg_ctlcluster {version} main restart failed");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The run

/// Publish the stream paced over about `secs`, reconnecting after a broker outage and sending a
/// chunk again when its confirms were lost (a repeat is a duplicate delivery, which the bridge
/// absorbs). About 5 % of the messages are published twice on purpose. Returns deliveries.
async fn publish_stream(
    amqp: String,
    queue: String,
    msgs: Arc<Vec<Msg>>,
    secs: f64,
    seed: u64,
    published: Arc<AtomicU64>,
    burst: Arc<tokio::sync::Notify>,
) -> anyhow::Result<u64> {
    let mut rng = Rng(seed.rotate_left(17) | 1);
    let mut order: Vec<usize> = Vec::with_capacity(msgs.len() * 21 / 20);
    for i in 0..msgs.len() {
        order.push(i);
        if i > 0 && rng.below(100) < 5 {
            order.push(rng.below(i as u64) as usize);
        }
    }
    let chunk = 50usize;
    let pause = Duration::from_secs_f64(secs.max(1.0) * chunk as f64 / order.len().max(1) as f64);
    let mut publisher: Option<AmqpPublisher> = None;
    let mut delivered = 0u64;
    for part in order.chunks(chunk) {
        let started = Instant::now();
        let batch: Vec<OutboundMessage> = part
            .iter()
            .map(|&i| {
                let m = &msgs[i];
                OutboundMessage {
                    body: m.body.clone(),
                    message_id: (!m.id.contains('\0')).then(|| m.id.clone()),
                    headers: m.headers.clone(),
                }
            })
            .collect();
        let stuck_since = Instant::now();
        loop {
            if publisher.is_none() {
                publisher = AmqpPublisher::connect(&amqp).await.ok();
            }
            if let Some(p) = &publisher {
                match p.publish_all(&queue, batch.clone(), 64, || {}).await {
                    Ok(n) if n == batch.len() as u64 => break,
                    _ => {
                        if let Some(p) = publisher.take() {
                            p.close().await;
                        }
                    }
                }
            }
            if stuck_since.elapsed() > STALL {
                bail!(
                    "could not publish to {queue} for {} s ({delivered} deliveries so far)",
                    STALL.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        delivered += batch.len() as u64;
        published.store(delivered, Ordering::Relaxed);
        // A chunk is on the queue: the bridge is busy with it for the next few milliseconds.
        burst.notify_waiters();
        if let Some(rest) = pause.checked_sub(started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
    if let Some(p) = publisher {
        p.close().await;
    }
    Ok(delivered)
}

/// Settled messages (inbox rows) and surveys the CEM accepted, sampled every 100 ms.
type Samples = Arc<Mutex<Vec<(Instant, u64, u64)>>>;

fn progress_now(samples: &Samples, pushes: bool) -> u64 {
    samples
        .lock()
        .ok()
        .and_then(|s| s.last().map(|x| if pushes { x.2 } else { x.1 }))
        .unwrap_or(0)
}

/// Fill in each fault's recovery: the first sample after it ended that shows more progress
/// than at its end.
fn recoveries(faults: &mut [Fault], samples: &Samples) {
    let Ok(s) = samples.lock() else { return };
    for f in faults.iter_mut() {
        f.recovered = s
            .iter()
            .find(|(at, n, p)| {
                *at >= f.ended && (if f.pushes { *p } else { *n }) > f.progress_at_end
            })
            .map(|(at, _, _)| at.duration_since(f.ended));
    }
}

pub async fn run(args: &ChaosBench) -> anyhow::Result<()> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let run_id = format!("{}-{nanos}", std::process::id());
    let queue = format!("cem-chaos-{run_id}");
    let dir = std::env::temp_dir().join(format!("cem-bridge-chaos-{run_id}"));
    std::fs::create_dir_all(&dir)?;
    let disk = if args.postgres.is_none() && args.disk_full {
        let d = SmallDisk::mount(&dir);
        if d.is_none() {
            eprintln!(
                "the disk-full fault is left out: a tmpfs for the store cannot be mounted here (needs root)"
            );
        }
        d
    } else {
        None
    };
    let (store_url, pg) = match &args.postgres {
        Some(admin) => {
            let name = format!("cem_chaos_{}", std::process::id());
            crate::store::ops::create_database(admin, &name)
                .await
                .with_context(|| format!("creating a scratch database on {admin}"))?;
            let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(admin);
            (format!("{base}/{name}"), Some((admin.clone(), name)))
        }
        None => {
            let at = disk
                .as_ref()
                .map(|d| d.mount.clone())
                .unwrap_or(dir.clone());
            (format!("sqlite://{}", at.join("chaos.db").display()), None)
        }
    };
    let result = run_in(args, &queue, &dir, &store_url, pg.is_some(), disk.as_ref()).await;
    // The store may live on the small disk: unmount it before removing the folder.
    if let Err(e) = &result
        && let Some(d) = &disk
    {
        let keep = dir.join("chaos-kept.db");
        let _ = std::fs::copy(d.mount.join("chaos.db"), &keep);
        eprintln!("{e:#}: the store is copied to {}", keep.display());
    }
    drop(disk);
    // Clean up whatever happened.
    delete_broker_objects(&args.amqp, &queue).await;
    if let Some((admin, name)) = pg {
        crate::store::ops::drop_database(&admin, &name).await;
    }
    match &result {
        Ok(_) => {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Err(_) => eprintln!("the bridge's log and store are kept in {}", dir.display()),
    }
    result
}

async fn run_in(
    args: &ChaosBench,
    queue: &str,
    dir: &Path,
    store_url: &str,
    postgres: bool,
    disk: Option<&SmallDisk>,
) -> anyhow::Result<()> {
    let began = Instant::now();
    let mut cem = Cem::start().await?;
    let config = dir.join("bridge.toml");
    std::fs::write(
        &config,
        config_text(store_url, &args.amqp, queue, &cem.url()),
    )?;
    // The bench opens (and so migrates) the store first, then watches it.
    let store = Store::open(store_url, &StoreOptions::default())
        .await
        .context("opening the chaos store")?;
    let mut bridge = Bridge {
        config,
        log: dir.join("bridge.log"),
        child: None,
        starts: 0,
    };
    bridge.spawn()?;
    // The bridge declares its queue: wait for it before publishing anything.
    let probe = AmqpPublisher::connect(&args.amqp)
        .await
        .with_context(|| format!("RabbitMQ not reachable at {}", redact_url(&args.amqp)))?;
    let declared = Instant::now();
    while probe.queue_depth(queue).await.is_err() {
        if let Some(st) = bridge.exited() {
            bail!(
                "the bridge exited at start ({st}); see {}",
                bridge.log.display()
            );
        }
        if declared.elapsed() > Duration::from_secs(30) {
            bail!(
                "the bridge did not declare {queue} within 30 s; see {}",
                bridge.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    probe.close().await;

    let seed = (began.elapsed().as_nanos() as u64) ^ 0x9e37_79b9_7f4a_7c15 ^ args.count as u64;
    let msgs = Arc::new(plan(args.count, seed));
    let schedule_secs = (args.kills as f64) * 3.0
        + 4.0
        + if args.broker_restart { 12.0 } else { 0.0 }
        + 4.0 * args.cem_phase.as_secs_f64()
        + if postgres { 14.0 } else { 0.0 }
        + if disk.is_some() { 5.0 } else { 0.0 }
        + 4.0;
    let published = Arc::new(AtomicU64::new(0));
    let burst = Arc::new(tokio::sync::Notify::new());
    let publisher = tokio::spawn(publish_stream(
        args.amqp.clone(),
        queue.to_string(),
        msgs.clone(),
        schedule_secs,
        seed,
        published.clone(),
        burst.clone(),
    ));
    // Watch the store: settled messages over time.
    let samples: Samples = Arc::new(Mutex::new(Vec::new()));
    let watcher = {
        let (store, samples, cem) = (store.clone(), samples.clone(), cem.state.clone());
        tokio::spawn(async move {
            loop {
                let pushes = cem.accepted.lock().map(|a| a.len() as u64).unwrap_or(0);
                if let Ok(n) = store.inbox_count().await
                    && let Ok(mut s) = samples.lock()
                {
                    s.push((Instant::now(), n.max(0) as u64, pushes));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let pb = super::bar(args.count as u64, "settled");
    let mut faults: Vec<Fault> = Vec::new();
    let gap = Duration::from_millis(1_500);
    // Progress read at the moment a fault ends (not the last sample): the store's settled
    // messages, or the surveys the CEM accepted.
    let cem_state = cem.state.clone();
    let progress = |pushes: bool| {
        let (store, cem) = (store.clone(), cem_state.clone());
        async move {
            if pushes {
                cem.accepted.lock().map(|a| a.len() as u64).unwrap_or(0)
            } else {
                store
                    .inbox_count()
                    .await
                    .map(|n| n.max(0) as u64)
                    .unwrap_or(0)
            }
        }
    };
    let fault = |what: String, pushes: bool, progress_at_end: u64| Fault {
        what,
        ended: Instant::now(),
        pushes,
        progress_at_end,
        recovered: None,
    };
    tokio::time::sleep(gap).await;
    let mut rng = Rng(seed.rotate_left(29) | 1);
    for k in 0..args.kills {
        tokio::time::sleep(Duration::from_millis(500 + rng.below(2_000))).await;
        // Kill while the bridge works on a batch — between taking it and settling it — where
        // an ack that ran ahead of the commit would lose messages.
        let _ = tokio::time::timeout(Duration::from_secs(5), burst.notified()).await;
        tokio::time::sleep(Duration::from_millis(rng.below(30))).await;
        bridge.kill();
        tokio::time::sleep(Duration::from_millis(200 + rng.below(800))).await;
        bridge.spawn()?;
        faults.push(fault(
            format!("SIGKILL {} of {}, restarted", k + 1, args.kills),
            false,
            progress(false).await,
        ));
        pb.set_position(progress_now(&samples, false));
    }
    tokio::time::sleep(gap).await;
    let closed = close_bridge_connections(queue)?;
    faults.push(fault(
        format!("broker closed the bridge's connections ({closed})"),
        false,
        progress(false).await,
    ));
    tokio::time::sleep(gap).await;
    if args.broker_restart {
        rabbitmqctl(&["stop_app"])?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        rabbitmqctl(&["start_app"])?;
        rabbitmqctl(&["await_startup"])?;
        faults.push(fault(
            "RabbitMQ stop_app / start_app".into(),
            false,
            progress(false).await,
        ));
        tokio::time::sleep(gap).await;
    }
    // Each CEM fault is followed by normal service until a push gets through again (at most
    // 30 s), so the next fault does not hide this one's recovery.
    let back_to_normal = |at_end: u64| {
        let progress = &progress;
        async move {
            let since = Instant::now();
            while progress(true).await <= at_end && since.elapsed() < Duration::from_secs(30) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    cem.down();
    tokio::time::sleep(args.cem_phase).await;
    cem.up().await?;
    let f = fault(
        "CEM refusing connections, then back".into(),
        true,
        progress(true).await,
    );
    back_to_normal(f.progress_at_end).await;
    faults.push(f);
    for (mode, what) in [
        (Mode::Error500, "CEM answering 500"),
        (Mode::Slow, "CEM slower than the bridge's timeout"),
        (Mode::TooMany, "CEM answering 429 with Retry-After"),
    ] {
        cem.state.set(mode);
        tokio::time::sleep(args.cem_phase).await;
        cem.state.set(Mode::Ok);
        let f = fault(what.into(), true, progress(true).await);
        back_to_normal(f.progress_at_end).await;
        faults.push(f);
    }
    let mut second: Option<Bridge> = None;
    if postgres {
        restart_postgres()?;
        faults.push(fault(
            "PostgreSQL restarted".into(),
            false,
            progress(false).await,
        ));
        tokio::time::sleep(gap).await;
        // Two instances on one database, then the first one killed: the second carries on,
        // the first comes back; dedupe and the claim's locks keep every effect single.
        let mut b2 = Bridge {
            config: bridge.config.clone(),
            log: dir.join("bridge-2.log"),
            child: None,
            starts: 0,
        };
        b2.spawn()?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        bridge.kill();
        tokio::time::sleep(gap).await;
        bridge.spawn()?;
        faults.push(fault(
            "second instance on the database; the first killed".into(),
            false,
            progress(false).await,
        ));
        second = Some(b2);
    } else if let Some(disk) = &disk {
        // The store's disk full: commits fail, the bridge holds its batches unacked and says
        // so; when space returns it goes on.
        let filled = disk.fill()?;
        tokio::time::sleep(args.cem_phase.max(Duration::from_secs(3))).await;
        disk.free(&filled);
        faults.push(fault(
            "the store's disk full, then space again".into(),
            false,
            progress(false).await,
        ));
    }
    let delivered = match publisher.await {
        Ok(r) => r?,
        Err(e) => bail!("the publisher task failed: {e}"),
    };
    pb.set_position(progress_now(&samples, false));

    // Settle: every message has an outcome its kind allows, or nothing moves for STALL.
    let (mut last, mut moved) = (u64::MAX, Instant::now());
    let outcome = loop {
        if let Some(st) = bridge.exited() {
            eprintln!("the bridge exited on its own ({st}); starting it again");
            bridge.spawn()?;
        }
        let o = account(&store, &msgs, queue, &args.amqp).await?;
        pb.set_position(o.settled as u64);
        if o.done() {
            break o;
        }
        let now = o.settled as u64 + o.pushed as u64;
        if now != last {
            (last, moved) = (now, Instant::now());
        } else if moved.elapsed() > STALL {
            eprintln!(
                "nothing moved for {} s: accounting what there is",
                STALL.as_secs()
            );
            break o;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    pb.finish_and_clear();
    // Let a push in flight land, then stop the bridge as an operator would.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let exit = bridge.stop(Duration::from_secs(30)).await;
    if let Some(mut b2) = second {
        b2.stop(Duration::from_secs(30)).await;
        bridge.starts += b2.starts;
    }
    watcher.abort();
    recoveries(&mut faults, &samples);
    store.close().await;
    let (accepted, _, patients_twice) = cem.tally();
    let report = Report {
        store: if postgres { "postgres" } else { "sqlite" },
        messages: args.count,
        deliveries: delivered,
        outcome,
        faults,
        starts: bridge.starts,
        exit,
        accepted,
        replays: cem.state.replays.load(Ordering::Relaxed),
        refused: cem.state.refused.load(Ordering::Relaxed),
        patients_twice,
        pii: cem.state.pii.load(Ordering::Relaxed),
        took: began.elapsed(),
    };
    report.print(args.json);
    report.verdict()
}

/// Delete the run's queue, its `.dlq` and its `.dlx`; best effort, failures reported.
async fn delete_broker_objects(amqp: &str, queue: &str) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let Ok(conn) = cem_connectors::amqp::connect(amqp, "cem-bridge-chaos-cleanup").await else {
        eprintln!(
            "cleanup: RabbitMQ not reachable; delete {queue}, {queue}.dlq and {queue}.dlx by hand"
        );
        return;
    };
    for q in [queue.to_string(), format!("{queue}.dlq")] {
        let r = async {
            let ch = conn.create_channel().await?;
            ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await?;
            let _ = ch.close(200, "bye".into()).await;
            Ok::<_, lapin::Error>(())
        }
        .await;
        if let Err(e) = r {
            eprintln!("cleanup: cannot delete queue {q}: {e}");
        }
    }
    let dlx = format!("{queue}.dlx");
    let r = async {
        let ch = conn.create_channel().await?;
        ch.exchange_delete(dlx.as_str().into(), ExchangeDeleteOptions::default())
            .await?;
        let _ = ch.close(200, "bye".into()).await;
        Ok::<_, lapin::Error>(())
    }
    .await;
    if let Err(e) = r {
        eprintln!("cleanup: cannot delete exchange {dlx}: {e}");
    }
    let _ = conn.close(200, "bye".into()).await;
}

// ---------------------------------------------------------------------------------------------
// The account

/// Whether the dead-letter queue holds a message whose body contains `needle`. Reads without
/// acking, on a channel it then closes, so every message stays in the queue.
async fn dlq_holds(amqp: &str, dlq: &str, needle: &[u8]) -> bool {
    use lapin::options::BasicGetOptions;
    let Ok(conn) = cem_connectors::amqp::connect(amqp, "cem-bridge-chaos-dlq").await else {
        return false;
    };
    let mut found = false;
    if let Ok(ch) = conn.create_channel().await {
        while let Ok(Some(m)) = ch
            .basic_get(dlq.into(), BasicGetOptions { no_ack: false })
            .await
        {
            if m.delivery
                .data
                .windows(needle.len().max(1))
                .any(|w| w == needle)
            {
                found = true;
                break;
            }
        }
        let _ = ch.close(200, "bye".into()).await;
    }
    let _ = conn.close(200, "bye".into()).await;
    found
}

/// Where every message of the stream ended.
struct Outcome {
    by_class: BTreeMap<Class, usize>,
    /// (kind, class) → count, for the messages whose outcome their kind does not allow.
    unexpected: BTreeMap<(String, Class), usize>,
    /// Reasons of suppressed / cancelled jobs and of dead letters.
    reasons: BTreeMap<String, usize>,
    /// Messages with any outcome.
    settled: usize,
    pushed: usize,
    duplicates_absorbed: usize,
    /// Dead letters the broker holds that the store does not (a message the store refuses
    /// outright — the poison one on PostgreSQL — is dead-lettered without a record).
    broker_only_dead_letters: u64,
}

impl Outcome {
    fn lost(&self) -> usize {
        self.by_class.get(&Class::Lost).copied().unwrap_or(0)
    }
    fn double(&self) -> usize {
        self.by_class.get(&Class::TwoEffects).copied().unwrap_or(0)
    }
    /// Every message settled: none missing, and no survey still pending that its kind expects
    /// to be pushed (a push in retry after a CEM fault is still on its way).
    fn done(&self) -> bool {
        self.lost() == 0
            && !self
                .unexpected
                .keys()
                .any(|(_, class)| *class == Class::Pending)
    }
}

async fn account(store: &Store, msgs: &[Msg], queue: &str, amqp: &str) -> anyhow::Result<Outcome> {
    let ledger = store.ledger().await.context("reading the store's inbox")?;
    let jobs = store.jobs().await.context("reading the store's jobs")?;
    let inbox: std::collections::HashSet<&str> = ledger.inbox.iter().map(String::as_str).collect();
    let mut dead: HashMap<&str, &str> = HashMap::new();
    for (id, reason) in &ledger.dead_letters {
        if let Some(id) = id {
            dead.insert(id.as_str(), reason.as_str());
        }
    }
    let by_job: HashMap<&str, &crate::store::JobRow> =
        jobs.iter().map(|j| (j.message_id.as_str(), j)).collect();
    // A message the store refuses outright (the poison one on PostgreSQL) is dead-lettered
    // without a record: look for it in the broker's dead-letter queue.
    let unrecorded: Vec<&Msg> = msgs
        .iter()
        .filter(|m| {
            m.kind == "poison"
                && !inbox.contains(m.id.as_str())
                && !dead.contains_key(m.id.as_str())
        })
        .collect();
    let mut broker_only = 0u64;
    for m in &unrecorded {
        if dlq_holds(amqp, &format!("{queue}.dlq"), m.id.as_bytes()).await {
            broker_only += 1;
        }
    }
    let mut o = Outcome {
        by_class: BTreeMap::new(),
        unexpected: BTreeMap::new(),
        reasons: BTreeMap::new(),
        settled: 0,
        pushed: 0,
        duplicates_absorbed: 0,
        broker_only_dead_letters: broker_only,
    };
    let mut broker_only_left = broker_only;
    for m in msgs {
        let id = m.id.as_str();
        let in_inbox = inbox.contains(id);
        let dl = dead.get(id);
        let class = match (in_inbox, dl, by_job.get(id)) {
            (true, Some(_), _) => Class::TwoEffects,
            (_, Some(reason), _) => {
                *o.reasons
                    .entry(format!("dead letter {reason}"))
                    .or_default() += 1;
                Class::DeadLettered
            }
            (_, None, Some(j)) => match j.status.as_str() {
                "sent" => Class::Pushed,
                "pending" => Class::Pending,
                "cancelled" => {
                    *o.reasons
                        .entry(format!("cancelled {}", j.reason.as_deref().unwrap_or("-")))
                        .or_default() += 1;
                    Class::Cancelled
                }
                other => {
                    *o.reasons
                        .entry(format!("{other} {}", j.reason.as_deref().unwrap_or("-")))
                        .or_default() += 1;
                    Class::Suppressed
                }
            },
            (true, None, None) => Class::Recorded,
            (false, None, None) if m.kind == "poison" && broker_only_left > 0 => {
                broker_only_left -= 1;
                *o.reasons
                    .entry("dead letter poison (broker only)".into())
                    .or_default() += 1;
                Class::DeadLettered
            }
            (false, None, None) => Class::Lost,
        };
        if class != Class::Lost {
            o.settled += 1;
        }
        if class == Class::Pushed {
            o.pushed += 1;
        }
        *o.by_class.entry(class).or_default() += 1;
        if !matches!(class, Class::Lost | Class::TwoEffects) && !m.allowed.contains(&class) {
            *o.unexpected.entry((m.kind.to_string(), class)).or_default() += 1;
        }
    }
    o.duplicates_absorbed = ledger.duplicates.max(0) as usize;
    Ok(o)
}

struct Report {
    store: &'static str,
    messages: usize,
    deliveries: u64,
    outcome: Outcome,
    faults: Vec<Fault>,
    starts: usize,
    exit: Option<i32>,
    accepted: usize,
    replays: u64,
    refused: u64,
    patients_twice: usize,
    pii: u64,
    took: Duration,
}

impl Report {
    fn problems(&self) -> Vec<String> {
        let o = &self.outcome;
        let mut p = Vec::new();
        if o.lost() > 0 {
            p.push(format!(
                "{} message(s) lost: no record, no dead letter",
                o.lost()
            ));
        }
        if o.double() > 0 {
            p.push(format!("{} message(s) with two effects", o.double()));
        }
        for ((kind, class), n) in &o.unexpected {
            p.push(format!(
                "{n} {kind} message(s) ended {}, which that kind does not allow",
                class.name()
            ));
        }
        if self.accepted != o.pushed {
            p.push(format!(
                "the CEM accepted {} surveys but the store says {} were sent",
                self.accepted, o.pushed
            ));
        }
        if self.patients_twice > 0 {
            p.push(format!(
                "{} patient(s) surveyed twice (do-not-disturb)",
                self.patients_twice
            ));
        }
        if self.pii > 0 {
            p.push(format!("{} CEM request(s) with a personal value", self.pii));
        }
        p
    }

    fn verdict(&self) -> anyhow::Result<()> {
        let p = self.problems();
        if p.is_empty() {
            Ok(())
        } else {
            bail!("chaos run failed: {}", p.join("; "))
        }
    }

    fn print(&self, json: bool) {
        let o = &self.outcome;
        if json {
            let v = serde_json::json!({
                "store": self.store,
                "messages": self.messages,
                "deliveries": self.deliveries,
                "outcomes": o.by_class.iter().map(|(c, n)| (c.name().to_string(), *n)).collect::<BTreeMap<_, _>>(),
                "reasons": o.reasons,
                "duplicates_absorbed": o.duplicates_absorbed,
                "broker_only_dead_letters": o.broker_only_dead_letters,
                "lost": o.lost(),
                "two_effects": o.double(),
                "unexpected": o.unexpected.iter().map(|((k, c), n)| format!("{n} {k} {}", c.name())).collect::<Vec<_>>(),
                "faults": self.faults.iter().map(|f| serde_json::json!({
                    "fault": f.what,
                    "recovered_ms": f.recovered.map(|d| d.as_millis() as u64),
                })).collect::<Vec<_>>(),
                "bridge_starts": self.starts,
                "final_exit_code": self.exit,
                "cem_accepted": self.accepted,
                "cem_replays_409": self.replays,
                "cem_refused": self.refused,
                "patients_surveyed_twice": self.patients_twice,
                "requests_with_personal_values": self.pii,
                "seconds": self.took.as_secs_f64(),
                "problems": self.problems(),
            });
            println!("{v:#}");
            return;
        }
        println!(
            "\nchaos run on {} — {} messages, {} deliveries, {:.0} s",
            self.store,
            self.messages,
            self.deliveries,
            self.took.as_secs_f64()
        );
        println!("\n{:<48} {:>8}", "outcome", "messages");
        for (c, n) in &o.by_class {
            println!("{:<48} {:>8}", c.name(), n);
        }
        for (r, n) in &o.reasons {
            println!("  {:<46} {:>8}", r, n);
        }
        println!(
            "{:<48} {:>8}",
            "duplicate deliveries absorbed (inbox)", o.duplicates_absorbed
        );
        println!(
            "{:<48} {:>8}",
            "dead letters in the broker only", o.broker_only_dead_letters
        );
        println!(
            "\n{:<56} {:>12}",
            "fault (recovery: next message settled / next push)", "recovered in"
        );
        for f in &self.faults {
            let r = f
                .recovered
                .map(|d| format!("{:.1} s", d.as_secs_f64()))
                .unwrap_or_else(|| "no backlog".into());
            println!("{:<56} {:>12}", f.what, r);
        }
        println!(
            "\nbridge starts {}, final SIGTERM exit {}; CEM accepted {} surveys, {} replays answered 409, {} requests refused or failed",
            self.starts,
            self.exit
                .map(|c| c.to_string())
                .unwrap_or_else(|| "killed".into()),
            self.accepted,
            self.replays,
            self.refused
        );
        println!(
            "lost {}, two effects {}, patients surveyed twice {}, requests with personal values {}",
            o.lost(),
            o.double(),
            self.patients_twice,
            self.pii
        );
        let p = self.problems();
        if p.is_empty() {
            println!("every message accounted for");
        } else {
            for x in p {
                println!("PROBLEM: {x}");
            }
        }
    }
}
