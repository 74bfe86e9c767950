//! `cem-bridge bench ingest`: throughput figures measured on this machine. It prints figures; it
//! asserts nothing about speed.
//!
//! One run measures, in order:
//! 1. **Pure pipeline, one core**: `decode` + survey `decide` of the A04 outpatient sample in
//!    memory, and the bare hl7-parser parse of the same text (the floor under `decode`); best of
//!    7 interleaved rounds of 200 ms each.
//! 2. **Broker baseline**: N persistent messages published with confirms (window 256) to a fresh
//!    quorum queue, then taken by a plain lapin consumer (prefetch 256, manual ack, one
//!    multiple-ack every 128 deliveries and at the end): what RabbitMQ alone allows.
//! 3. **Bridge ingest**: N distinct A04 registrations queued *before* the bridge starts; the bridge
//!    then runs in-process (SQLite store in a temp dir, shadow CEM sink, prefetch 512, batch 256).
//!    Measured from the moment `runtime::start` returns: the time until all N are in the store's
//!    inbox (delivered → decided → committed → acked), and the time until the scheduler has pushed
//!    all N survey jobs to the shadow sink and marked them `sent`.
//!
//! 4. **MLLP door**: a bridge with a `kind = "mllp"` source takes distinct A04 registrations from
//!    senders that wait for each ACK (`AA` = durable): one connection, then eight ([`doors`]).
//!
//! It then prints the rates, their ratios and the peak RSS, and deletes what it created: both
//! queues, the bridge's `.dlq` queue and `.dlx` exchange, and the temp dir.

pub(crate) mod cem_recorder;
pub mod chaos;
pub mod decode;
pub mod dispatch;
mod doors;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use cem_connectors::amqp::{
    self, AmqpPublisher, AmqpSourceConfig, OutboundMessage, QueueType, redact_url,
};
use cem_pipeline::anonymize::Pseudonymizer;
use cem_pipeline::decode::DecodeOptions;
use cem_pipeline::mapping::Outcome;
use cem_pipeline::policy::SurveyPolicy;
use cem_pipeline::survey::{SurveyContext, SurveyDecision, decide};
use cem_pipeline::translate::decode;
use futures_lite::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions,
    ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use tokio::io::AsyncReadExt;

use crate::app::{self, Secrets};
use crate::config::{Config, SchedulerConfig};
use crate::process::clock::Clock;
use crate::store::Store;

pub const DEFAULT_AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_COUNT: usize = 20_000;

/// The A04 outpatient registration sample, built into the binary so it runs from anywhere.
pub(crate) const A04: &[u8] =
    include_bytes!("../../../tests/fixtures/samples/hl7v2/adt_a04_outpatient_registration.hl7");
const A04_MESSAGE_ID: &str = "MSG20261120093015001";
const A04_VISIT_NUMBER: &str = "V20261120001";
const A04_PATIENT_ID: &str = "P00012345";
const A04_MOBILE: &str = "13812345678";
const A04_ID_CARD: &str = "~110101199003071233^^^CHN^NI";
/// A fixed, public pseudonym key: the bench only ever sees the public sample.
const BENCH_KEY: &[u8] = b"cem-bridge bench key: fixed and public, never for real data";
const BENCH_VAULT_KEY: [u8; 32] = [0xbe; 32];

const PUBLISH_WINDOW: usize = 256;
const RAW_PREFETCH: u16 = 256;
const RAW_ACK_EVERY: u64 = 128;
const BRIDGE_PREFETCH: u16 = 512;
const BRIDGE_BATCH: usize = 256;
const POLL: Duration = Duration::from_millis(20);
/// Give up when nothing moves for this long (a stuck run must not hang forever).
const STALL: Duration = Duration::from_secs(60);
/// In-memory measurements: rounds per function (interleaved) and time per round. The best round
/// counts: on a shared machine, the least disturbed round is the closest to the true cost.
const PURE_ROUNDS: u32 = 7;
const PURE_ROUND: Duration = Duration::from_millis(200);

/// `bench ingest` arguments.
#[derive(Debug, Clone)]
pub struct IngestBench {
    pub count: usize,
    pub amqp: String,
}

/// Logs for the bench: warnings only (the bridge logs every push at `info`), and not sqlx's
/// "slow statement" warnings, which the bench's own write contention on SQLite provokes by the
/// hundred; `RUST_LOG` wins (e.g. `RUST_LOG=warn` to see them).
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // lapin logs a passive declare of a queue not there yet, and a broker restart, as errors.
        tracing_subscriber::EnvFilter::new("warn,sqlx::query=error,lapin=off")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Broker objects and files one run creates (all removed at the end).
struct Names {
    raw_queue: String,
    bridge_queue: String,
    dir: PathBuf,
}

impl Names {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let run = format!("{}-{nanos}", std::process::id());
        Self {
            raw_queue: format!("cem-bench.raw-{run}"),
            bridge_queue: format!("cem-bench.bridge-{run}"),
            dir: std::env::temp_dir().join(format!("cem-bridge-bench-{run}")),
        }
    }
    fn dlq(&self) -> String {
        format!("{}.dlq", self.bridge_queue)
    }
    fn dlx(&self) -> String {
        format!("{}.dlx", self.bridge_queue)
    }
}

struct Pure {
    parse_rate: f64,
    decide_rate: f64,
}

struct Baseline {
    publish: Duration,
    consume: Duration,
}

struct BridgeRun {
    publish: Duration,
    start: Duration,
    ingested: Duration,
    sent: Duration,
    shutdown: Duration,
    scheduler: SchedulerConfig,
}

/// Run the whole bench and print the figures.
pub async fn ingest(args: &IngestBench) -> anyhow::Result<()> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    let n = args.count;
    let shown_url = redact_url(&args.amqp);
    let base = std::str::from_utf8(A04).context("the built-in A04 sample is not UTF-8")?;
    for (what, value) in [
        ("MSH-10", A04_MESSAGE_ID),
        ("visit number", A04_VISIT_NUMBER),
        ("patient id", A04_PATIENT_ID),
        ("mobile", A04_MOBILE),
        ("ID card", A04_ID_CARD),
    ] {
        if !base.contains(value) {
            bail!(
                "the built-in A04 sample no longer holds the {what} {value}: cannot make distinct registrations"
            );
        }
    }

    // Fail before measuring anything if the broker is not there.
    let control = amqp::connect(&args.amqp, "cem-bridge-bench")
        .await
        .with_context(|| {
            format!("RabbitMQ not reachable at {shown_url} (start it, or pass --amqp URL)")
        })?;

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            app::signal().await;
            stop.store(true, Ordering::SeqCst);
        })
    };

    println!(
        "cem-bridge bench ingest: {n} messages, A04 sample {} bytes, RabbitMQ {shown_url}",
        A04.len()
    );
    if cfg!(debug_assertions) {
        println!("warning: debug build; build with --release for representative figures");
    }

    let names = Names::new();
    let result = run(args, &names, &control, &stop).await;

    cleanup(&control, &names).await;
    let _ = control.close(200, "bye".into()).await;
    watcher.abort();

    let (pure, baseline, bridge, door) = result?;
    print_report(n, &pure, &baseline, &bridge, &door);
    Ok(())
}

async fn run(
    args: &IngestBench,
    names: &Names,
    control: &lapin::Connection,
    stop: &AtomicBool,
) -> anyhow::Result<(Pure, Baseline, BridgeRun, doors::DoorRun)> {
    let n = args.count;

    eprintln!("[1/4] pure pipeline: decode + decide and bare parse, one core…");
    let pure = tokio::task::spawn_blocking(pure_pipeline)
        .await
        .context("the pure-pipeline measurement task failed")??;
    check_stop(stop)?;

    eprintln!("[2/4] broker baseline: publish {n}, then consume + ack…");
    let ch = control
        .create_channel()
        .await
        .context("RabbitMQ: open a control channel")?;
    let mut args_q = FieldTable::default();
    args_q.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(
        names.raw_queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args_q,
    )
    .await
    .with_context(|| format!("RabbitMQ: declare queue {}", names.raw_queue))?;
    let publish = publish_n(&args.amqp, &names.raw_queue, n, "publish raw", |_| {
        A04.to_vec()
    })
    .await?;
    check_stop(stop)?;
    let consume = consume_raw(&args.amqp, &names.raw_queue, n as u64, stop).await?;
    let baseline = Baseline { publish, consume };

    eprintln!("[3/4] bridge ingest: queue {n} registrations, start the bridge, wait…");
    amqp::declare_topology(
        &ch,
        &AmqpSourceConfig {
            url: args.amqp.clone(),
            queue: names.bridge_queue.clone(),
            dead_letter_exchange: names.dlx(),
            dead_letter_queue: names.dlq(),
            queue_type: QueueType::Quorum,
            prefetch: BRIDGE_PREFETCH,
            consumer_tag: "cem-bridge-bench".into(),
        },
    )
    .await
    .context("declaring the bridge's queue")?;
    let _ = ch.close(200, "bye".into()).await;
    let base = std::str::from_utf8(A04).context("the built-in A04 sample is not UTF-8")?;
    let bridge_publish = publish_n(&args.amqp, &names.bridge_queue, n, "publish A04s", |i| {
        registration(base, "BENCH", i)
    })
    .await?;
    check_stop(stop)?;
    std::fs::create_dir_all(&names.dir)
        .with_context(|| format!("cannot create the temp dir {}", names.dir.display()))?;
    let bridge = bridge_ingest(args, names, stop, bridge_publish).await?;
    check_stop(stop)?;
    eprintln!(
        "[4/4] MLLP door: one connection, then {} …",
        doors::CONNECTIONS
    );
    let door = doors::mllp(&names.dir, n, stop).await?;
    Ok((pure, baseline, bridge, door))
}

fn check_stop(stop: &AtomicBool) -> anyhow::Result<()> {
    if stop.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// The instant the bench's clock starts at: the day after the A04 sample's visit, so its
/// survey is due at once and not yet stale.
const BENCH_CLOCK_START: &str = "2026-11-21T10:30:00+08:00";

fn bench_clock() -> anyhow::Result<Clock> {
    let start: jiff::Timestamp = BENCH_CLOCK_START.parse().context("the bench clock start")?;
    Ok(Clock::starting_at(start))
}

/// Calls per second of `f` on this thread over about `PURE_ROUND`.
pub(crate) fn rate_of(f: &mut impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut calls = 0u64;
    loop {
        for _ in 0..32 {
            f();
        }
        calls += 32;
        let took = start.elapsed();
        if took >= PURE_ROUND {
            return calls as f64 / took.as_secs_f64();
        }
    }
}

/// Best rates of `a` and `b` over `PURE_ROUNDS` interleaved rounds, after one warm-up round each.
/// Best-of-rounds rates of `a` and `b`, measured interleaved (used by `bench decode` too).
pub(crate) fn best_rates(mut a: impl FnMut(), mut b: impl FnMut()) -> (f64, f64) {
    rate_of(&mut a);
    rate_of(&mut b);
    let (mut best_a, mut best_b) = (0f64, 0f64);
    for _ in 0..PURE_ROUNDS {
        best_a = best_a.max(rate_of(&mut a));
        best_b = best_b.max(rate_of(&mut b));
    }
    (best_a, best_b)
}

fn pure_pipeline() -> anyhow::Result<Pure> {
    let text = std::str::from_utf8(A04).context("the built-in A04 sample is not UTF-8")?;
    let opts = DecodeOptions::at(jiff::Timestamp::now());
    let policy = SurveyPolicy::default();
    let pseudo = Pseudonymizer::new(BENCH_KEY, "bench").context("the bench pseudonym key")?;
    let zone = cem_pipeline::time::default_zone();
    let fields = cem_pipeline::anonymize::CemFieldPolicy::default();
    let lists = cem_pipeline::lists::ExclusionLists::default();
    let ctx = SurveyContext {
        tenant: "bench",
        zone: &zone,
        pseudo: &pseudo,
        now: bench_clock()?.now(),
        fields: &fields,
        lists: &lists,
    };
    let mappings = cem_pipeline::mapping::builtin(&zone);
    let headers = BTreeMap::new();
    // Measure the path the bridge takes for this message, not a rejection.
    match decode(A04, &opts, &mappings, &headers).map(|d| d.outcome) {
        Ok(Outcome::Event(event)) => match decide(&event, &policy, &ctx) {
            SurveyDecision::Schedule(_) => {}
            other => bail!(
                "the A04 sample schedules no survey ({other:?}); the bench would measure the wrong path"
            ),
        },
        Ok(other) => bail!("the built-in A04 sample maps to {other:?}"),
        Err(r) => bail!(
            "the built-in A04 sample does not decode: {} ({})",
            r.reason.code(),
            r.detail
        ),
    }
    hl7_parser::Message::parse_with_lenient_newlines(text, true)
        .map_err(|_| anyhow!("hl7-parser cannot parse the built-in A04 sample"))?;

    let (parse_rate, decide_rate) = best_rates(
        || {
            let _ = black_box(hl7_parser::Message::parse_with_lenient_newlines(
                black_box(text),
                true,
            ));
        },
        || {
            let r = decode(black_box(A04), &opts, &mappings, &headers).map(|d| match d.outcome {
                Outcome::Event(e) => Some(decide(&e, &policy, &ctx)),
                Outcome::Ignored { .. } => None,
            });
            let _ = black_box(r);
        },
    );
    Ok(Pure {
        parse_rate,
        decide_rate,
    })
}

/// One distinct outpatient registration: own MSH-10, visit number, patient id and mobile, and
/// no 身份证号 — a distinct patient each, so that do-not-disturb (one survey per patient, mobile
/// and ID card per window) holds none of them back. `tag` keeps runs of different phases apart.
fn registration(base: &str, tag: &str, i: usize) -> Vec<u8> {
    base.replace(A04_MESSAGE_ID, &format!("MSG-{tag}-{i:07}"))
        .replace(A04_VISIT_NUMBER, &format!("V{tag}{i:07}"))
        .replace(A04_PATIENT_ID, &format!("P{tag}{i:07}"))
        .replace(A04_MOBILE, &format!("139{i:08}"))
        .replace(A04_ID_CARD, "")
        .into_bytes()
}

/// A progress bar for the benches (stderr).
pub(crate) fn bar(len: u64, prefix: &'static str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {prefix:>14} [{bar:32}] {pos}/{len} {elapsed} {msg}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_prefix(prefix);
    pb.enable_steady_tick(Duration::from_millis(100));
    pb
}

/// Publish `n` persistent messages with confirms; the time from the first publish to the last
/// confirm.
async fn publish_n(
    url: &str,
    queue: &str,
    n: usize,
    label: &'static str,
    body: impl Fn(usize) -> Vec<u8>,
) -> anyhow::Result<Duration> {
    let publisher = AmqpPublisher::connect(url)
        .await
        .with_context(|| format!("RabbitMQ not reachable at {}", redact_url(url)))?;
    let pb = bar(n as u64, label);
    let start = Instant::now();
    let msgs = (0..n).map(|i| OutboundMessage {
        body: body(i),
        message_id: Some(format!("bench-{i}")),
        headers: BTreeMap::new(),
    });
    let r = publisher
        .publish_all(queue, msgs, PUBLISH_WINDOW, || pb.inc(1))
        .await;
    let took = start.elapsed();
    pb.finish_and_clear();
    publisher.close().await;
    let done = r.with_context(|| format!("publishing {n} messages to {queue}"))?;
    if done != n as u64 {
        bail!("only {done} of {n} messages were confirmed by RabbitMQ on {queue}");
    }
    Ok(took)
}

/// A plain lapin consumer: prefetch 256, manual ack, multiple-ack every 128 and at the end.
/// Timed from connect to the last ack.
async fn consume_raw(
    url: &str,
    queue: &str,
    n: u64,
    stop: &AtomicBool,
) -> anyhow::Result<Duration> {
    let pb = bar(n, "consume + ack");
    let start = Instant::now();
    let conn = amqp::connect(url, "cem-bridge-bench-consumer")
        .await
        .with_context(|| format!("RabbitMQ not reachable at {}", redact_url(url)))?;
    let r = async {
        let ch = conn
            .create_channel()
            .await
            .context("RabbitMQ: open the consumer channel")?;
        ch.basic_qos(RAW_PREFETCH, BasicQosOptions::default())
            .await
            .context("RabbitMQ: set the prefetch")?;
        let mut consumer = ch
            .basic_consume(
                queue.into(),
                "cem-bridge-bench".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("RabbitMQ: consume from {queue}"))?;
        let (mut got, mut unacked, mut last) = (0u64, 0u64, 0u64);
        while got < n {
            let d = match tokio::time::timeout(STALL, consumer.next()).await {
                Err(_) => bail!(
                    "no delivery from {queue} for {} s after {got} of {n}",
                    STALL.as_secs()
                ),
                Ok(None) => bail!("RabbitMQ cancelled the consumer on {queue} after {got} of {n}"),
                Ok(Some(d)) => d.with_context(|| format!("RabbitMQ: receive from {queue}"))?,
            };
            black_box(&d.data);
            got += 1;
            unacked += 1;
            last = d.delivery_tag;
            if unacked == RAW_ACK_EVERY {
                ch.basic_ack(last, BasicAckOptions { multiple: true })
                    .await
                    .context("RabbitMQ: ack")?;
                unacked = 0;
                pb.set_position(got);
                check_stop(stop)?;
            }
        }
        if unacked > 0 {
            ch.basic_ack(last, BasicAckOptions { multiple: true })
                .await
                .context("RabbitMQ: ack")?;
        }
        let took = start.elapsed();
        let _ = ch
            .basic_cancel("cem-bridge-bench".into(), BasicCancelOptions::default())
            .await;
        let _ = ch.close(200, "bye".into()).await;
        Ok(took)
    }
    .await;
    pb.finish_and_clear();
    let _ = conn.close(200, "bye".into()).await;
    r
}

/// A TOML string literal (quoted and escaped).
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn bridge_config(args: &IngestBench, names: &Names) -> anyhow::Result<Config> {
    let source = format!(
        "name = \"bench\"\nurl = {amqp}\nqueue = {queue}\nqueue_type = \"quorum\"\nprefetch = {BRIDGE_PREFETCH}\nbatch_size = {BRIDGE_BATCH}\n",
        amqp = toml_str(&args.amqp),
        queue = toml_str(&names.bridge_queue),
    );
    bench_config(&names.dir, "bench", &source)
}

/// A bench bridge's config: SQLite `{name}.db` (synchronous = full) and the shadow sink
/// `{name}-requests.jsonl` in `dir`, no rate limit, no ops server, and this `[[source]]` body.
pub(crate) fn bench_config(dir: &Path, name: &str, source: &str) -> anyhow::Result<Config> {
    let text = format!(
        r#"
tenant = "bench"
[pseudonym]
key_env = "CEM_BRIDGE_BENCH_KEY_UNUSED"
key_id = "bench"
[vault]
key_env = "CEM_BRIDGE_BENCH_VAULT_KEY_UNUSED"
key_id = "bench"
[store]
url = {store}
sqlite_synchronous = "full"
[[source]]
{source}
[cem]
mode = "shadow"
shadow_file = {shadow}
[cem.limits]
# Measure the bridge, not the rate limit a real CEM would need.
rate_per_sec = 1000000
burst = 1000000
[ops]
listen = ""
"#,
        store = toml_str(&format!(
            "sqlite://{}",
            dir.join(format!("{name}.db")).display()
        )),
        shadow = toml_str(&shadow_file(dir, name).display().to_string()),
    );
    Config::parse(&text, Path::new(&format!("{name}.toml")))
        .with_context(|| format!("the bench's own bridge config ({name})"))
}

fn shadow_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}-requests.jsonl"))
}

/// Start a bench bridge with the bench's public keys, on the bench clock.
pub(crate) async fn start_bench_bridge(cfg: Config) -> anyhow::Result<app::Bridge> {
    app::start_with_clock(
        cfg,
        Secrets {
            pseudonym_key: Some(BENCH_KEY.to_vec()),
            vault_key: Some(BENCH_VAULT_KEY.to_vec()),
            ..Default::default()
        },
        bench_clock()?,
    )
    .await
    .context("starting the bench's bridge")
}

/// Counts lines appended to the shadow sink's JSONL file, reading only what is new.
struct LineTail {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    lines: u64,
    buf: Vec<u8>,
}

impl LineTail {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            file: None,
            lines: 0,
            buf: vec![0; 256 * 1024],
        }
    }

    async fn count(&mut self) -> anyhow::Result<u64> {
        if self.file.is_none() {
            match tokio::fs::File::open(&self.path).await {
                Ok(f) => self.file = Some(f),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
                Err(e) => {
                    return Err(e).with_context(|| format!("reading {}", self.path.display()));
                }
            }
        }
        if let Some(f) = self.file.as_mut() {
            loop {
                let k = f
                    .read(&mut self.buf)
                    .await
                    .with_context(|| format!("reading {}", self.path.display()))?;
                if k == 0 {
                    break;
                }
                self.lines += self.buf[..k].iter().filter(|&&b| b == b'\n').count() as u64;
            }
        }
        Ok(self.lines)
    }
}

async fn bridge_ingest(
    args: &IngestBench,
    names: &Names,
    stop: &AtomicBool,
    publish: Duration,
) -> anyhow::Result<BridgeRun> {
    let cfg = bridge_config(args, names)?;
    let scheduler = cfg.scheduler.clone();
    let t = Instant::now();
    let bridge = start_bench_bridge(cfg).await?;
    let start = t.elapsed();
    let watched = watch(
        &bridge.store,
        args.count,
        shadow_file(&names.dir, "bench"),
        stop,
    )
    .await;
    let t = Instant::now();
    bridge.shutdown().await;
    let shutdown = t.elapsed();
    let (ingested, sent) = watched?;
    Ok(BridgeRun {
        publish,
        start,
        ingested,
        sent,
        shutdown,
        scheduler,
    })
}

/// Poll the store every 20 ms from now: (time until the inbox holds `n`, time until `n` jobs
/// are `sent`). The time recorded is the one before the query that saw the count.
async fn watch(
    store: &Store,
    n: usize,
    shadow: PathBuf,
    stop: &AtomicBool,
) -> anyhow::Result<(Duration, Duration)> {
    let target = n as i64;
    let pb = bar(n as u64, "bridge ingest");
    let t0 = Instant::now();
    let mut tail = LineTail::new(shadow);
    let mut ingested: Option<Duration> = None;
    let mut last = (0i64, 0u64);
    let mut moved = Instant::now();
    let r = loop {
        if stop.load(Ordering::SeqCst) {
            break Err(anyhow!("interrupted"));
        }
        let at = t0.elapsed();
        let inbox = match store.inbox_count().await {
            Ok(c) => c,
            Err(e) => break Err(e.into()),
        };
        if ingested.is_none() && inbox >= target {
            ingested = Some(at);
            pb.set_prefix("push to CEM");
            pb.set_message("");
            pb.set_position(0);
            pb.reset_eta();
        }
        let pushed = match tail.count().await {
            Ok(c) => c,
            Err(e) => break Err(e),
        };
        match ingested {
            None => {
                pb.set_position(inbox.max(0) as u64);
                pb.set_message(format!("({pushed} pushed)"));
            }
            Some(_) => pb.set_position(pushed),
        }
        if let Some(done) = ingested
            && pushed >= n as u64
        {
            // The sink has every request; confirm the store marked them all sent.
            let at = t0.elapsed();
            let jobs = match store.jobs().await {
                Ok(j) => j,
                Err(e) => break Err(e.into()),
            };
            let sent = jobs.iter().filter(|j| j.status == "sent").count();
            let dead = jobs.iter().filter(|j| j.status == "dead").count();
            if dead > 0 {
                break Err(anyhow!("{dead} survey job(s) went dead in the shadow sink"));
            }
            if sent >= n {
                break Ok((done, at));
            }
        }
        if (inbox, pushed) != last {
            last = (inbox, pushed);
            moved = Instant::now();
        } else {
            // Nothing moved since the last poll: dead letters would explain a missing inbox row.
            let dead_letters = match store.dead_letters().await {
                Ok(d) => d,
                Err(e) => break Err(e.into()),
            };
            if let Some(first) = dead_letters.first() {
                break Err(anyhow!(
                    "{} message(s) were dead-lettered (first: {}: {}); the bench expects every registration to be accepted",
                    dead_letters.len(),
                    first.reason,
                    first.detail
                ));
            }
            if moved.elapsed() > STALL {
                break Err(anyhow!(
                    "the bridge made no progress for {} s: {inbox} of {n} in the inbox, {pushed} pushed",
                    STALL.as_secs()
                ));
            }
        }
        tokio::time::sleep(POLL).await;
    };
    pb.finish_and_clear();
    r
}

/// Delete what the run created; best effort, each failure reported.
async fn cleanup(control: &lapin::Connection, names: &Names) {
    delete_queues_and_exchange(
        control,
        &[&names.raw_queue, &names.bridge_queue, &names.dlq()],
        &names.dlx(),
    )
    .await;
    if names.dir.exists()
        && let Err(e) = std::fs::remove_dir_all(&names.dir)
    {
        eprintln!("cleanup: cannot remove {}: {e}", names.dir.display());
    }
}

/// Delete `queues` and `exchange`, one channel per deletion (a failed AMQP operation closes its
/// channel); best effort, each failure reported.
pub(crate) async fn delete_queues_and_exchange(
    control: &lapin::Connection,
    queues: &[&str],
    exchange: &str,
) {
    for q in queues {
        let r = async {
            let ch = control.create_channel().await?;
            ch.queue_delete((*q).into(), QueueDeleteOptions::default())
                .await?;
            let _ = ch.close(200, "bye".into()).await;
            Ok::<_, lapin::Error>(())
        }
        .await;
        if let Err(e) = r {
            eprintln!("cleanup: cannot delete queue {q}: {e}");
        }
    }
    let r = async {
        let ch = control.create_channel().await?;
        ch.exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await?;
        let _ = ch.close(200, "bye".into()).await;
        Ok::<_, lapin::Error>(())
    }
    .await;
    if let Err(e) = r {
        eprintln!("cleanup: cannot delete exchange {exchange}: {e}");
    }
}

/// Peak resident set size (VmHWM) of this process, in KiB; `None` off Linux.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `12345.6` → `12,346`.
fn thousands(v: f64) -> String {
    let s = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn per_s(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

fn print_report(n: usize, pure: &Pure, base: &Baseline, bridge: &BridgeRun, door: &doors::DoorRun) {
    let row = |what: &str, rate: f64, note: String| {
        println!("  {what:<46} {:>10}  {note}", thousands(rate));
    };
    let cpus = std::thread::available_parallelism()
        .map(|c| c.get())
        .unwrap_or(1);
    println!();
    println!("  {:<46} {:>10}", "stage", "msgs/s");
    println!("  {}", "-".repeat(72));
    row(
        "hl7-parser parse only (1 core, best of 7)",
        pure.parse_rate,
        format!("{:.1} µs/msg", 1e6 / pure.parse_rate),
    );
    row(
        "decode + survey decision (1 core, best of 7)",
        pure.decide_rate,
        format!("{:.1} µs/msg", 1e6 / pure.decide_rate),
    );
    row(
        "broker publish, confirms (window 256)",
        per_s(n, base.publish),
        format!("{:.2} s", base.publish.as_secs_f64()),
    );
    row(
        "broker consume + ack (prefetch 256, ack/128)",
        per_s(n, base.consume),
        format!("{:.2} s", base.consume.as_secs_f64()),
    );
    row(
        "bridge ingest (delivery → durable → acked)",
        per_s(n, bridge.ingested),
        format!("{:.2} s", bridge.ingested.as_secs_f64()),
    );
    row(
        "bridge all sent to shadow CEM (from start)",
        per_s(n, bridge.sent),
        format!("{:.2} s", bridge.sent.as_secs_f64()),
    );
    let push_only = bridge.sent.saturating_sub(bridge.ingested);
    if !push_only.is_zero() {
        println!(
            "  {:<46} {:>10}  after ingest ended: {:.2} s",
            "  (push tail once ingest was done)",
            "",
            push_only.as_secs_f64()
        );
    }
    row(
        "MLLP door, 1 connection (send → durable → AA)",
        per_s(door.one.0, door.one.1),
        format!("{:.2} s for {}", door.one.1.as_secs_f64(), door.one.0),
    );
    row(
        &format!("MLLP door, {} connections", doors::CONNECTIONS),
        per_s(door.many.0, door.many.1),
        format!("{:.2} s for {}", door.many.1.as_secs_f64(), door.many.0),
    );
    println!();
    println!("  ratios");
    println!(
        "  {:<46} {:>10.2}",
        "bridge ingest / raw consume+ack",
        per_s(n, bridge.ingested) / per_s(n, base.consume)
    );
    println!(
        "  {:<46} {:>10.2}",
        format!(
            "MLLP door, {} conns / bridge ingest (AMQP)",
            doors::CONNECTIONS
        ),
        per_s(door.many.0, door.many.1) / per_s(n, bridge.ingested)
    );
    println!(
        "  {:<46} {:>10.2}",
        "decode+decide cost / raw hl7 parse cost",
        pure.parse_rate / pure.decide_rate
    );
    println!(
        "  {:<46} {:>9.1}%",
        "decode+decide share of one core at ingest rate",
        100.0 * per_s(n, bridge.ingested) / pure.decide_rate
    );
    println!();
    match peak_rss_kib() {
        Some(k) => println!(
            "  {:<46} {:>7.1} MiB",
            "peak RSS (VmHWM)",
            k as f64 / 1024.0
        ),
        None => println!("  {:<46} {:>10}", "peak RSS (VmHWM)", "n/a"),
    }
    println!(
        "  setup: {cpus} CPU(s); SQLite synchronous=full (WAL), prefetch {BRIDGE_PREFETCH}, batch {BRIDGE_BATCH}; scheduler concurrency {}, claim {}, poll {} ms",
        bridge.scheduler.concurrency,
        bridge.scheduler.claim_batch,
        bridge.scheduler.poll_interval_ms
    );
    println!(
        "  bridge queue filled in {:.2} s ({} msgs/s publish); start {:.0} ms; shutdown {:.0} ms",
        bridge.publish.as_secs_f64(),
        thousands(per_s(n, bridge.publish)),
        bridge.start.as_secs_f64() * 1e3,
        bridge.shutdown.as_secs_f64() * 1e3
    );
}
