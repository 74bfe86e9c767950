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

mod account;
mod child;
mod faults;
mod stream;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cem_connectors::amqp::{AmqpPublisher, OutboundMessage, redact_url};

use crate::store::{Store, StoreOptions};

use super::cem_recorder::{Cem, Mode, RecorderOptions};
use account::{Report, account};
use child::{Bridge, config_text};
use faults::{Fault, SmallDisk, close_bridge_connections, rabbitmqctl, restart_postgres};
use stream::{Msg, Rng, plan};

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

/// No progress for this long ends a phase with what it measured.
const STALL: Duration = Duration::from_secs(90);

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
    let mut cem = Cem::start(RecorderOptions {
        token: None,
        // The stream's patient ids and visit numbers (`stream::plan`).
        personal_markers: vec!["PCH0".into(), "VCH0".into()],
    })
    .await?;
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
    let Ok(conn) = cem_connectors::amqp::connect(amqp, "cem-bridge-chaos-cleanup").await else {
        eprintln!(
            "cleanup: RabbitMQ not reachable; delete {queue}, {queue}.dlq and {queue}.dlx by hand"
        );
        return;
    };
    let dlq = format!("{queue}.dlq");
    super::delete_queues_and_exchange(&conn, &[queue, &dlq], &format!("{queue}.dlx")).await;
    let _ = conn.close(200, "bye".into()).await;
}
