//! `cem-bridge bench ingest` (issue 17): what the bridge takes on this machine and how close it
//! comes to the floor under it. It prints one table (or `--json`, one object) and asserts nothing
//! about speed unless `--min-floor-ratio` asks it to.
//!
//! One run measures, in order (each phase shows a progress bar on stderr and fails with what it
//! measured when nothing moves for a minute):
//! 1. **Pure pipeline, one core** ([`pure`]): `decode` + survey `decide` of the A04 outpatient
//!    sample in memory, and the bare hl7-parser parse of the same text; best of 7 interleaved
//!    rounds of 200 ms each.
//! 2. **Broker and floor** ([`broker`]): N persistent messages published with confirms (window
//!    256) to a fresh quorum queue and taken by a plain lapin consumer (prefetch 256, manual ack,
//!    one multiple-ack every 128): raw consume + ack. Then the same consumer on a second queue
//!    holding the N distinct registrations the bridge gets, parsing each with hl7-parser and
//!    reading MSH-9, MSH-10, PID-3 and PV1-45: consume + parse + ack, **the floor**.
//! 3. **Bridge ingest** ([`bridge`]): the N registrations queued *before* the bridge starts;
//!    `--instances` bridges then run in-process on that queue and one store (SQLite in the temp
//!    dir, or a scratch PostgreSQL database with `--store`; prefetch 512, batch 256), on a clock
//!    where the surveys are not yet due, so nothing is pushed meanwhile. Measured from the first
//!    bridge's start: the time until the store's inbox holds N, and the peak RSS of the process
//!    during those seconds (the kernel's high-water mark reset just before).
//! 4. **End-to-end push**: the clock moves past the due time, all N surveys fall due at once and
//!    the bridges push them to an in-process HTTP CEM recorder (`[cem] mode = "http"`, bearer
//!    token checked, rate limit raised to 1 000 000/s): the time until the recorder holds N
//!    distinct surveys and the store N jobs `sent`.
//! 5. **Rate-limited push**: the same with min(N, 3000) registrations on a queue and store of
//!    their own and `[cem.limits] rate_per_sec = 500, burst = 50`; the achieved rate read from
//!    the recorder's arrival times after the initial burst (the first 100 arrivals), its
//!    deviation from 500/s, and the longest gap between two arrivals.
//! 6. **Latency** ([`latency`]): a bridge on an empty queue and distinct registrations offered
//!    open-loop at 1000 msg/s for `--latency-secs` (at most N messages); p50, p99 and max of
//!    scheduled publish → acked.
//! 7. **MLLP door** ([`doors`]): a bridge with a `kind = "mllp"` source takes distinct A04
//!    registrations from senders that wait for each ACK: one connection, then eight
//!    (`--skip-doors` leaves it out).
//!
//! It then prints the figures and deletes what it created, whether the run succeeded or not:
//! every queue, the bridges' `.dlq` queues and `.dlx` exchanges, the temp dir, the scratch
//! databases. With `--min-floor-ratio R` it fails after printing when ingest / floor < R.

mod bridge;
mod broker;
mod doors;
mod latency;
mod pure;
mod report;
mod stores;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use cem_connectors::amqp::{self, AmqpSourceConfig, QueueType, redact_url};

use crate::app;
use crate::cli::bench::cem_recorder::{Cem, RecorderOptions};
use crate::cli::bench::{A04, BENCH_CEM_TOKEN, a04_text, per_s, publish_n, registration};
pub use bridge::{BRIDGE_BATCH, BRIDGE_PREFETCH, Batching};
use bridge::{BridgeRun, arrival_offsets, longest_gap, steady_rate};
use report::{Figures, deviation_pct};
use stores::Stores;

pub const DEFAULT_COUNT: usize = 20_000;
pub const DEFAULT_LATENCY_SECS: u64 = 5;
/// Phase 5: registrations at most, and the limit configured.
const LIMITED_MAX: usize = 3_000;
const LIMITED_RATE: u32 = 500;
/// Governor lets `burst` requests through at once, then one every 1/rate: 50 is a tenth of a
/// second's worth. A burst above 1 also lets the limiter make up for a waiter woken late, so
/// the long-run rate is the configured one.
const LIMITED_BURST: u32 = 50;
/// Arrivals left out of the limited rate: twice the burst, because the bucket refills while
/// the burst itself goes out (over its first milliseconds), so slightly more than `burst`
/// requests pass before the steady spacing starts.
const LIMITED_SKIP: usize = 2 * LIMITED_BURST as usize;

/// `bench ingest` arguments.
#[derive(Debug, Clone)]
pub struct IngestBench {
    /// Registrations per broker and bridge measurement.
    pub count: usize,
    pub amqp: String,
    /// `None`: SQLite in the temp dir; `postgres://…`: scratch databases on that server.
    pub store: Option<String>,
    /// Bridges in-process on the ingest queue and store (phases 3 and 4).
    pub instances: usize,
    pub json: bool,
    /// Seconds of the latency run at 1000 msg/s (at most `count` messages).
    pub latency_secs: u64,
    pub skip_doors: bool,
    /// The bridges' `prefetch` and `batch_size`.
    pub batching: Batching,
    /// Fail after printing when ingest / floor is below this.
    pub min_floor_ratio: Option<f64>,
}

/// Broker objects and files one run creates (all removed at the end).
struct Names {
    run: String,
    raw_queue: String,
    floor_queue: String,
    /// Queues consumed by bridges (each with a `.dlq` queue and a `.dlx` exchange).
    ingest_queue: String,
    limited_queue: String,
    latency_queue: String,
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
            floor_queue: format!("cem-bench.floor-{run}"),
            ingest_queue: format!("cem-bench.bridge-{run}"),
            limited_queue: format!("cem-bench.limited-{run}"),
            latency_queue: format!("cem-bench.latency-{run}"),
            dir: std::env::temp_dir().join(format!("cem-bridge-bench-{run}")),
            run,
        }
    }
    fn bridge_queues(&self) -> [&str; 3] {
        [&self.ingest_queue, &self.limited_queue, &self.latency_queue]
    }
}

/// Run the whole bench, print the figures, apply `--min-floor-ratio`.
pub async fn run(args: &IngestBench) -> anyhow::Result<()> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    if args.instances == 0 {
        bail!("--instances must be at least 1");
    }
    if args.latency_secs == 0 {
        bail!("--latency-secs must be at least 1");
    }
    if let Some(r) = args.min_floor_ratio
        && !(r.is_finite() && r > 0.0)
    {
        bail!("--min-floor-ratio must be a positive number such as 0.5, not {r}");
    }
    a04_text()?;
    pure::check_clocks()?;
    // The bridges load their mapping files from ./mappings: say so before minutes of broker
    // phases rather than after them.
    let probe = crate::cli::bench::bridge_config(
        "bench",
        "sqlite://bench.db",
        &bridge::source(&args.amqp, "bench", args.batching),
        &crate::cli::bench::BenchCem::Shadow(std::path::Path::new("bench.jsonl")),
    )?;
    app::load_mappings(&probe, &cem_pipeline::time::default_zone()).context(
        "bench ingest runs its bridges with the mapping files in ./mappings: run it from the repository or the installed folder that holds mappings/",
    )?;
    let names = Names::new();
    let mut stores = Stores::new(args.store.as_deref(), &names.dir, &names.run)?;
    let shown_url = redact_url(&args.amqp);
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

    let header = format!(
        "cem-bridge bench ingest: {} messages, A04 sample {} bytes, RabbitMQ {shown_url}, store {}, {} instance(s)",
        args.count,
        A04.len(),
        stores.kind().code(),
        args.instances
    );
    let debug_warning = "warning: debug build; build with --release for representative figures";
    if args.json {
        eprintln!("{header}");
        if cfg!(debug_assertions) {
            eprintln!("{debug_warning}");
        }
    } else {
        println!("{header}");
        if cfg!(debug_assertions) {
            println!("{debug_warning}");
        }
    }

    let mut figures = Figures {
        count: args.count,
        store: stores.kind().code(),
        instances: args.instances,
        cpus: std::thread::available_parallelism()
            .map(|c| c.get())
            .unwrap_or(1),
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        prefetch: args.batching.prefetch,
        batch_size: args.batching.batch_size,
        limited_configured_per_s: LIMITED_RATE,
        limited_burst: LIMITED_BURST,
        latency_offered_per_s: latency::OFFERED_PER_S,
        doors_skipped: args.skip_doors,
        ..Default::default()
    };
    let result = phases(args, &names, &mut stores, &control, &stop, &mut figures).await;

    cleanup(&control, &names, &mut stores).await;
    let _ = control.close(200, "bye".into()).await;
    watcher.abort();

    if let Err(e) = result {
        eprintln!(
            "\nmeasured before the failure:\n{}",
            report::table(&figures)
        );
        return Err(e);
    }
    if args.json {
        println!("{}", report::json(&figures)?);
    } else {
        println!();
        print!("{}", report::table(&figures));
    }
    if let Some(min) = args.min_floor_ratio {
        match figures.ingest_floor_ratio {
            Some(r) if r >= min => {}
            Some(r) => bail!(
                "bridge ingest is {r:.2}× the floor (consume + parse + ack), below --min-floor-ratio {min}: ingest got slower relative to the broker and parser on this machine; compare the ingest and floor rows above with the last good run"
            ),
            None => bail!("--min-floor-ratio {min}: the ingest/floor ratio was not measured"),
        }
    }
    Ok(())
}

fn check_stop(stop: &AtomicBool) -> anyhow::Result<()> {
    if stop.load(Ordering::SeqCst) {
        bail!("interrupted (Ctrl-C or SIGTERM)");
    }
    Ok(())
}

/// Declare a bridge's queue, its dead-letter exchange and queue, as the bridge would.
async fn declare_bridge_queue(
    control: &lapin::Connection,
    amqp_url: &str,
    queue: &str,
    prefetch: u16,
) -> anyhow::Result<()> {
    let ch = control
        .create_channel()
        .await
        .context("RabbitMQ: open a control channel")?;
    amqp::declare_topology(
        &ch,
        &AmqpSourceConfig {
            url: amqp_url.to_string(),
            queue: queue.to_string(),
            dead_letter_exchange: format!("{queue}.dlx"),
            dead_letter_queue: format!("{queue}.dlq"),
            queue_type: QueueType::Quorum,
            prefetch,
            consumer_tag: "cem-bridge-bench".into(),
        },
    )
    .await
    .with_context(|| format!("declaring the bridge's queue {queue}"))?;
    let _ = ch.close(200, "bye".into()).await;
    Ok(())
}

/// The bench's CEM recorder: checks the bench token and that no bench patient id, visit number
/// or mobile reaches it.
async fn recorder() -> anyhow::Result<Cem> {
    Cem::start(RecorderOptions {
        token: Some(BENCH_CEM_TOKEN.into()),
        personal_markers: ["PBENCH", "VBENCH", "PLIM", "VLIM", "PLAT", "VLAT"]
            .map(String::from)
            .to_vec(),
    })
    .await
}

async fn phases(
    args: &IngestBench,
    names: &Names,
    stores: &mut Stores,
    control: &lapin::Connection,
    stop: &AtomicBool,
    f: &mut Figures,
) -> anyhow::Result<()> {
    let n = args.count;
    let base = a04_text()?;
    std::fs::create_dir_all(&names.dir)
        .with_context(|| format!("cannot create the temp dir {}", names.dir.display()))?;
    // Every store made (and migrated) first: an unreachable server fails before measuring.
    let ingest_store = stores.fresh("ingest").await?;
    let limited_store = stores.fresh("limited").await?;
    let latency_store = stores.fresh("latency").await?;

    eprintln!("[1/7] pure pipeline: decode + decide and bare parse, one core…");
    let p = tokio::task::spawn_blocking(pure::pure_pipeline)
        .await
        .context("the pure-pipeline measurement task failed")??;
    f.parse_msgs_per_s = Some(p.parse_rate);
    f.decide_msgs_per_s = Some(p.decide_rate);
    check_stop(stop)?;

    eprintln!("[2/7] broker: raw consume + ack, then consume + parse + ack (the floor)…");
    broker::declare_quorum(control, &names.raw_queue).await?;
    let publish = publish_n(&args.amqp, &names.raw_queue, n, "publish raw", |_| {
        A04.to_vec()
    })
    .await?;
    f.publish_msgs_per_s = Some(per_s(n, publish));
    check_stop(stop)?;
    let raw = broker::consume(
        &args.amqp,
        &names.raw_queue,
        n as u64,
        "consume + ack",
        stop,
        |body| {
            std::hint::black_box(body);
            Ok(())
        },
    )
    .await?;
    f.raw_msgs_per_s = Some(per_s(n, raw));
    broker::declare_quorum(control, &names.floor_queue).await?;
    publish_n(&args.amqp, &names.floor_queue, n, "publish A04s", |i| {
        registration(base, "BENCH", i)
    })
    .await?;
    check_stop(stop)?;
    let floor = broker::consume(
        &args.amqp,
        &names.floor_queue,
        n as u64,
        "the floor",
        stop,
        broker::parse_fields,
    )
    .await?;
    f.floor_msgs_per_s = Some(per_s(n, floor));
    check_stop(stop)?;

    eprintln!(
        "[3/7] bridge ingest: queue {n} registrations, start {} bridge(s), wait…",
        args.instances
    );
    declare_bridge_queue(
        control,
        &args.amqp,
        &names.ingest_queue,
        args.batching.prefetch,
    )
    .await?;
    publish_n(&args.amqp, &names.ingest_queue, n, "publish A04s", |i| {
        registration(base, "BENCH", i)
    })
    .await?;
    check_stop(stop)?;
    let cem = recorder().await?;
    let m = bridge::ingest_then_push(
        &BridgeRun {
            name: "bridge ingest",
            amqp: &args.amqp,
            queue: &names.ingest_queue,
            store_url: &ingest_store,
            cem: &cem,
            rate_per_sec: 1_000_000,
            burst: 1_000_000,
            instances: args.instances,
            batching: args.batching,
            count: n,
            measure_rss: true,
            push_heading: Some(format!(
                "[4/7] push: the clock moves past the due time, all {n} surveys fall due…"
            )),
        },
        stop,
    )
    .await?;
    drop(cem);
    let ingest_rate = per_s(n, m.ingest);
    f.ingest_msgs_per_s = Some(ingest_rate);
    f.ingest_seconds = Some(m.ingest.as_secs_f64());
    f.ingest_floor_ratio = f.floor_msgs_per_s.map(|fl| ingest_rate / fl);
    f.ingest_raw_ratio = f.raw_msgs_per_s.map(|r| ingest_rate / r);
    match &m.rss {
        Ok(r) => {
            f.ingest_peak_rss_mib = Some(r.peak_kib as f64 / 1024.0);
            f.ingest_rss_at_start_mib = Some(r.at_start_kib as f64 / 1024.0);
        }
        Err(why) => f.rss_note = Some(format!("n/a: {why}")),
    }
    f.push_msgs_per_s = Some(per_s(n, m.push));
    f.push_seconds = Some(m.push.as_secs_f64());
    f.bridge_start_ms = Some(m.start.as_secs_f64() * 1e3);
    f.bridge_shutdown_ms = Some(m.shutdown.as_secs_f64() * 1e3);
    f.scheduler_concurrency = Some(m.scheduler.concurrency);
    f.scheduler_claim_batch = Some(m.scheduler.claim_batch);
    check_stop(stop)?;

    let lim = n.min(LIMITED_MAX);
    eprintln!("[5/7] rate-limited push: {lim} surveys at rate_per_sec = {LIMITED_RATE}…");
    declare_bridge_queue(
        control,
        &args.amqp,
        &names.limited_queue,
        args.batching.prefetch,
    )
    .await?;
    publish_n(&args.amqp, &names.limited_queue, lim, "publish A04s", |i| {
        registration(base, "LIM", i)
    })
    .await?;
    let cem = recorder().await?;
    bridge::ingest_then_push(
        &BridgeRun {
            name: "limited push",
            amqp: &args.amqp,
            queue: &names.limited_queue,
            store_url: &limited_store,
            cem: &cem,
            rate_per_sec: LIMITED_RATE,
            burst: LIMITED_BURST,
            instances: 1,
            batching: args.batching,
            count: lim,
            measure_rss: false,
            push_heading: None,
        },
        stop,
    )
    .await?;
    f.limited_count = Some(lim);
    let arrivals = arrival_offsets(&cem);
    f.limited_rate_per_s = steady_rate(&arrivals, LIMITED_SKIP);
    f.limited_longest_gap_ms = longest_gap(&arrivals, LIMITED_SKIP).map(|g| g.as_secs_f64() * 1e3);
    f.limited_deviation_pct = f
        .limited_rate_per_s
        .map(|r| deviation_pct(r, f64::from(LIMITED_RATE)));
    drop(cem);
    check_stop(stop)?;

    let messages = usize::try_from(args.latency_secs.saturating_mul(latency::OFFERED_PER_S))
        .unwrap_or(usize::MAX)
        .min(n);
    eprintln!(
        "[6/7] latency: {messages} registrations offered at {} msg/s to a waiting bridge…",
        latency::OFFERED_PER_S
    );
    declare_bridge_queue(
        control,
        &args.amqp,
        &names.latency_queue,
        args.batching.prefetch,
    )
    .await?;
    let cem = recorder().await?;
    let l = latency::run(
        &args.amqp,
        &names.latency_queue,
        &latency_store,
        &cem,
        messages,
        args.batching,
        stop,
    )
    .await?;
    f.latency_messages = Some(l.messages);
    f.latency_p50_ms = Some(l.p50_ms);
    f.latency_p99_ms = Some(l.p99_ms);
    f.latency_max_ms = Some(l.max_ms);
    f.latency_publish_lag_max_ms = Some(l.publish_lag_max_ms);
    f.latency_acked_msgs_per_s = Some(l.acked_msgs_per_s);
    check_stop(stop)?;

    if args.skip_doors {
        eprintln!("[7/7] MLLP door: skipped (--skip-doors)");
        return Ok(());
    }
    eprintln!(
        "[7/7] MLLP door: one connection, then {}…",
        doors::CONNECTIONS
    );
    let door = doors::mllp(&names.dir, n, stop).await?;
    f.mllp_1_conn_msgs_per_s = Some(per_s(door.one.0, door.one.1));
    f.mllp_8_conn_msgs_per_s = Some(per_s(door.many.0, door.many.1));
    Ok(())
}

/// Delete what the run created; best effort, each failure reported.
async fn cleanup(control: &lapin::Connection, names: &Names, stores: &mut Stores) {
    crate::cli::bench::delete_queues(control, &[&names.raw_queue, &names.floor_queue]).await;
    for q in names.bridge_queues() {
        crate::cli::bench::delete_queues_and_exchange(
            control,
            &[q, &format!("{q}.dlq")],
            &format!("{q}.dlx"),
        )
        .await;
    }
    stores.drop_all().await;
    if names.dir.exists()
        && let Err(e) = std::fs::remove_dir_all(&names.dir)
    {
        eprintln!("cleanup: cannot remove {}: {e}", names.dir.display());
    }
}
