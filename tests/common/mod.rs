//! Test harness: unique broker names per test, an in-process CEM recorder, a bridge started
//! in-process (or as a child process for crash tests), and helpers that read what the queues
//! and the store really hold. Only 127.0.0.1 is contacted.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use cem_bridge::app::{self, Bridge, Secrets};
use cem_bridge::config::Config;
use cem_bridge::process::clock::Clock;
use cem_connectors::amqp::{AmqpPublisher, OutboundMessage};
use lapin::options::{BasicGetOptions, QueueDeleteOptions};
use lapin::types::AMQPValue;

pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const TEST_KEY: &[u8] = b"0123456789abcdef0123456789abcdef-test-key";
/// The vault key of the bridges under test (32 bytes), and as the 64 hex digits of the env.
pub const TEST_VAULT_KEY: [u8; 32] = [0x5a; 32];
pub const TEST_VAULT_KEY_HEX: &str =
    "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
/// The token the test CEM presents at `POST /contact/resolve`.
pub const TEST_RESOLVE_TOKEN: &str = "cem-resolve-token-for-tests";

/// Where the bridges under test start their clock: the day after the samples' visits
/// (2026-11-20), so outpatient and inpatient surveys are due at once and not yet stale.
pub const CLOCK_START: &str = "2026-11-21T10:30:00+08:00";

/// The secrets every in-process bridge under test starts with.
pub fn test_secrets() -> Secrets {
    Secrets {
        pseudonym_key: Some(TEST_KEY.to_vec()),
        vault_key: Some(TEST_VAULT_KEY.to_vec()),
        resolve_token: Some(TEST_RESOLVE_TOKEN.to_string()),
        webhook_secret: Some(TEST_WEBHOOK_SECRET.to_vec()),
        callcenter_secret: Some(TEST_CALLCENTER_SECRET.to_vec()),
        ..Default::default()
    }
}

/// The secret the test call center signs its result callbacks with.
pub const TEST_CALLCENTER_SECRET: &[u8] = b"callcenter-secret-for-tests-4567";

/// The secret the test CEM signs ticket webhooks with.
pub const TEST_WEBHOOK_SECRET: &[u8] = b"cem-webhook-secret-for-tests-0123";

pub fn amqp_url() -> String {
    std::env::var("AMQP_ADDR").unwrap_or_else(|_| AMQP.to_string())
}

/// A name unique to this test run: `{prefix}-{pid}-{nanos}`.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/samples")
        .join(rel)
}

pub fn read_fixture(rel: &str) -> Vec<u8> {
    std::fs::read(fixture(rel)).unwrap_or_else(|e| panic!("fixture {rel}: {e}"))
}

/// A fresh scratch directory under the system temp dir.
pub fn scratch_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir()
        .join("cem-bridge-tests")
        .join(unique(name));
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// Poll `f` until it returns `Some`, or panic after `secs` with `what`.
pub async fn wait_for<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        // A probe that never answers (a broker call stuck under load) must not hang the test.
        let left = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1);
        match tokio::time::timeout(left, f()).await {
            Ok(Some(v)) => return v,
            Ok(None) => {}
            Err(_) => panic!("timed out after {secs} s waiting for: {what} (the probe hung)"),
        }
        if Instant::now() > deadline {
            panic!("timed out after {secs} s waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// CEM recorder

/// One request the recorder received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub idempotency_key: Option<String>,
    pub authorization: Option<String>,
    pub body: String,
    pub json: serde_json::Value,
    pub status: u16,
    /// When it arrived.
    pub at: Instant,
}

/// One scripted answer.
#[derive(Debug, Clone, Default)]
struct Reply {
    status: u16,
    body: String,
    /// A `Retry-After` header, in seconds.
    retry_after: Option<u32>,
    /// Answer only after this long (to trip the sender's timeout).
    delay: Duration,
}

#[derive(Default)]
struct RecorderState {
    requests: Vec<Recorded>,
    script: VecDeque<Reply>,
    accepted: HashSet<String>,
}

/// An in-process CEM: records every request; answers from a script, then `200 {"code":0}`;
/// like a real idempotent API, a key it already accepted gets `409`.
#[derive(Clone)]
pub struct Recorder {
    state: Arc<Mutex<RecorderState>>,
    pub addr: SocketAddr,
}

impl Recorder {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(RecorderState::default()));
        let app = Router::new()
            .route("/surveys/dispatch", post(record))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { state, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}/surveys/dispatch", self.addr)
    }

    /// Answer the next requests with these statuses and bodies, in order.
    pub fn script(&self, responses: &[(u16, &str)]) {
        let mut s = self.state.lock().unwrap();
        s.script.extend(responses.iter().map(|(c, b)| Reply {
            status: *c,
            body: b.to_string(),
            ..Default::default()
        }));
    }

    /// Answer the next request `429` with `Retry-After: {secs}`.
    pub fn script_retry_after(&self, secs: u32) {
        self.state.lock().unwrap().script.push_back(Reply {
            status: 429,
            body: r#"{"code":429,"msg":"too many requests"}"#.into(),
            retry_after: Some(secs),
            ..Default::default()
        });
    }

    /// Take the next request (a 2xx, remembered as accepted) but answer only after `delay`.
    pub fn script_slow(&self, delay: Duration) {
        self.state.lock().unwrap().script.push_back(Reply {
            status: 200,
            body: r#"{"code":0,"data":{"deliveryId":"d-slow"}}"#.into(),
            delay,
            ..Default::default()
        });
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The first accepted request, waited for up to 20 s.
    pub async fn first_accepted(&self) -> Recorded {
        wait_for(20, "one push", || {
            let r = self.accepted().into_iter().next();
            async move { r }
        })
        .await
    }

    /// Requests answered with a 2xx (surveys the CEM took).
    pub fn accepted(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }
}

async fn record(
    State(state): State<Arc<Mutex<RecorderState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let h = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let key = h("idempotency-key");
    let text = String::from_utf8_lossy(&body).into_owned();
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    let reply = {
        let mut s = state.lock().unwrap();
        let reply = if let Some(scripted) = s.script.pop_front() {
            scripted
        } else if key.as_ref().is_some_and(|k| s.accepted.contains(k)) {
            Reply {
                status: 409,
                body: r#"{"code":409,"msg":"idempotency key already used"}"#.to_string(),
                ..Default::default()
            }
        } else {
            Reply {
                status: 200,
                body: r#"{"code":0,"data":{"deliveryId":"d-1"}}"#.to_string(),
                ..Default::default()
            }
        };
        if (200..300).contains(&reply.status)
            && reply.body.contains("\"code\":0")
            && let Some(k) = &key
        {
            s.accepted.insert(k.clone());
        }
        s.requests.push(Recorded {
            idempotency_key: key,
            authorization: h("authorization"),
            body: text,
            json,
            status: reply.status,
            at: Instant::now(),
        });
        reply
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match reply.retry_after {
        Some(secs) => (status, [("retry-after", secs.to_string())], reply.body).into_response(),
        None => (status, reply.body).into_response(),
    }
}

// ---------------------------------------------------------------------------------------------
// Bridge under test

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
            extra_source = self.extra_source,
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

// ---------------------------------------------------------------------------------------------
// Broker helpers

pub async fn publisher() -> AmqpPublisher {
    AmqpPublisher::connect(&amqp_url())
        .await
        .expect("publisher connects")
}

pub async fn publish(queue: &str, body: &[u8], message_id: &str) {
    publish_with_headers(queue, body, message_id, &[]).await
}

/// Publish with AMQP headers (e.g. the platform's `service-code`).
pub async fn publish_with_headers(
    queue: &str,
    body: &[u8],
    message_id: &str,
    headers: &[(&str, &str)],
) {
    let p = publisher().await;
    let msg = OutboundMessage {
        body: body.to_vec(),
        message_id: Some(message_id.to_string()),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    // A broker nack means "not stored, send again" (seen once right after a quorum queue was
    // declared): retry like any confirming publisher, a few times.
    let mut tries = 0;
    while let Err(e) = p.publish(queue, &msg).await {
        tries += 1;
        assert!(tries < 5, "publish to {queue}: {e}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    p.close().await;
}

/// Ready messages in a queue, or `None` if it does not exist.
pub async fn queue_depth(queue: &str) -> Option<u32> {
    let p = publisher().await;
    let r = p.queue_depth(queue).await.ok();
    p.close().await;
    r
}

/// A message taken from a dead-letter queue.
#[derive(Debug)]
pub struct DeadLetter {
    pub body: Vec<u8>,
    pub headers: BTreeMap<String, String>,
    pub message_id: Option<String>,
}

/// Take every message currently in `queue` (acked, i.e. removed).
pub async fn drain(queue: &str) -> Vec<DeadLetter> {
    let conn = cem_connectors::amqp::connect(&amqp_url(), "test-drain")
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let mut out = Vec::new();
    while let Ok(Some(m)) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
    {
        let mut headers = BTreeMap::new();
        if let Some(h) = m.delivery.properties.headers() {
            for (k, v) in h.inner() {
                let s = match v {
                    AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                    AMQPValue::ShortString(s) => s.to_string(),
                    AMQPValue::LongLongInt(i) => i.to_string(),
                    other => format!("{other:?}"),
                };
                headers.insert(k.to_string(), s);
            }
        }
        out.push(DeadLetter {
            message_id: m
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string()),
            body: m.delivery.data,
            headers,
        });
    }
    let _ = conn.close(200, "bye".into()).await;
    out
}

/// Delete a test's queues and exchange (best effort).
pub async fn cleanup(setup: &Setup) {
    delete_queues(
        &[setup.queue.clone(), setup.dlq()],
        &[format!("{}.dlx", setup.queue)],
    )
    .await;
    let _ = std::fs::remove_dir_all(&setup.dir);
}

/// Delete queues and exchanges (best effort).
pub async fn delete_queues(queues: &[String], exchanges: &[String]) {
    if let Ok(conn) = cem_connectors::amqp::connect(&amqp_url(), "test-cleanup").await {
        if let Ok(ch) = conn.create_channel().await {
            for q in queues {
                let _ = ch
                    .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            for x in exchanges {
                let _ = ch
                    .exchange_delete(
                        x.as_str().into(),
                        lapin::options::ExchangeDeleteOptions::default(),
                    )
                    .await;
            }
        }
        let _ = conn.close(200, "bye".into()).await;
    }
}

/// R-ANO-8: none of the samples' personal values in `text` (named `what` in the failure).
pub fn assert_no_pii(what: &str, text: &str) {
    for pii in SAMPLE_PII {
        assert!(!text.contains(pii), "R-ANO-8: {pii:?} in {what}: {text}");
    }
}

/// Raw personal values of the shared samples, which must never reach the CEM.
pub const SAMPLE_PII: &[&str] = &[
    // adt_a03_discharge / a01 / a08 / a13: 王秀英
    "王秀英",
    "王^秀英",
    "秀英",
    "P00067890",
    "31010419551212002X",
    "13998765432",
    "13711112222",
    "Z2026111500087",
    "中山北路",
    // adt_a04_outpatient_registration / a11 / a40: 张三明
    "张三明",
    "三明",
    "P00012345",
    "110101199003071233",
    "13812345678",
    "V20261120001",
    "P00054321",
    // escapes, gbk, deceased
    "欧阳",
    "娜娜",
    "P00011111",
    "13512345678",
    "02161234567",
    "V20261120077",
    "李娜",
    "P00022222",
    "320102198807074326",
    "13822223333",
    "V20261120002",
    "刘德华",
    "德华",
    "中山南路",
    "P00099999",
    "440106194801010019",
    "13600000001",
    "Z2026111000123",
];

// ---------------------------------------------------------------------------------------------
// Child-process bridge (crash tests)

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

/// The SQLite store of a test, opened directly (to read what is really stored).
pub async fn sqlite(db: &Path) -> sqlx::SqlitePool {
    sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("open the test store")
}

/// Wait for a child to exit (polling), up to `secs`.
pub async fn wait_exit(child: &mut std::process::Child, secs: u64) -> std::process::ExitStatus {
    wait_for(secs, "the bridge process to exit", || {
        let r = child.try_wait().ok().flatten();
        async move { r }
    })
    .await
}

/// `n` distinct outpatient registrations of `n` distinct patients (own MSH-10, visit number,
/// patient id and mobile each; no ID card), so do-not-disturb does not join them.
pub fn registrations(n: usize, tag: &str) -> Vec<Vec<u8>> {
    let base = String::from_utf8(read_fixture("hl7v2/adt_a04_outpatient_registration.hl7"))
        .expect("utf-8 sample");
    (0..n)
        .map(|i| {
            base.replace("MSG20261120093015001", &format!("MSG-{tag}-{i:05}"))
                .replace("V20261120001", &format!("V{tag}{i:05}"))
                .replace("P00012345", &format!("P{tag}{i:05}"))
                .replace("13812345678", &format!("139{i:08}"))
                .replace("~110101199003071233^^^CHN^NI", "")
                .into_bytes()
        })
        .collect()
}

/// Publish many bodies with confirms.
pub async fn publish_many(queue: &str, bodies: &[Vec<u8>]) {
    let p = publisher().await;
    let msgs = bodies.iter().enumerate().map(|(i, b)| OutboundMessage {
        body: b.clone(),
        message_id: Some(format!("m{i}")),
        headers: BTreeMap::new(),
    });
    p.publish_all(queue, msgs, 128, || {})
        .await
        .expect("publish_all");
    p.close().await;
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL scratch databases

pub fn pg_admin_url() -> String {
    std::env::var("PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Create a fresh database on the local PostgreSQL; returns (url, name).
pub async fn pg_database(name: &str) -> (String, String) {
    use sqlx::Executor;
    sqlx::any::install_default_drivers();
    let db = unique(&format!("cem_{name}"))
        .replace(['-', '.'], "_")
        .to_lowercase();
    let admin = sqlx::AnyPool::connect(&pg_admin_url())
        .await
        .expect("PostgreSQL at 127.0.0.1:5432");
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .await
        .expect("create database");
    admin.close().await;
    let base = pg_admin_url();
    let root = base
        .rsplit_once('/')
        .map(|(r, _)| r.to_string())
        .unwrap_or(base);
    (format!("{root}/{db}"), db)
}

/// A scratch database on one backend, dropped by `cleanup`.
pub struct Db {
    pub url: String,
    pub pg_name: Option<String>,
    pub dir: Option<PathBuf>,
}

impl Db {
    pub async fn sqlite(name: &str) -> Self {
        let dir = scratch_dir(name);
        Self {
            url: format!("sqlite://{}", dir.join("store.db").display()),
            pg_name: None,
            dir: Some(dir),
        }
    }

    pub async fn postgres(name: &str) -> Self {
        let (url, db) = pg_database(name).await;
        Self {
            url,
            pg_name: Some(db),
            dir: None,
        }
    }

    pub async fn open(&self) -> cem_bridge::store::Store {
        cem_bridge::store::Store::open(&self.url, &cem_bridge::store::StoreOptions::default())
            .await
            .expect("store opens")
    }

    /// Run SQL directly (to set up states the write paths reach only through time or pushes).
    pub async fn exec(&self, sql: &str) {
        use sqlx::Executor;
        let pool = sqlx::AnyPool::connect(&self.url).await.expect("connect");
        pool.execute(sqlx::AssertSqlSafe(sql.to_string()))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        pool.close().await;
    }

    /// `SELECT COUNT(*) AS n …` or any query returning one BIGINT column `n`.
    pub async fn count(&self, sql: &str) -> i64 {
        use sqlx::Row;
        let pool = sqlx::AnyPool::connect(&self.url).await.expect("connect");
        let n = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(&pool)
            .await
            .and_then(|r| r.try_get::<i64, _>("n"))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        pool.close().await;
        n
    }

    pub async fn cleanup(self) {
        if let Some(db) = self.pg_name {
            drop_pg_database(&db).await;
        }
        if let Some(dir) = self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Drop a database made by [`pg_database`] (best effort).
pub async fn drop_pg_database(db: &str) {
    use sqlx::Executor;
    if let Ok(admin) = sqlx::AnyPool::connect(&pg_admin_url()).await {
        let _ = admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
            )))
            .await;
        admin.close().await;
    }
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
