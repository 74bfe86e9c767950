//! `cem-bridge bench dispatch`: how fast due survey jobs go out (issue 5 §8). It prints figures;
//! it asserts nothing about speed.
//!
//! For each store — embedded SQLite (a temp file), then the local PostgreSQL with one and with
//! two scheduler instances (separate connection pools, as two processes would have) when
//! `--postgres` reaches it — N due jobs for N different patients are written, then:
//! 1. **Store only**: `claim_due` with do-not-disturb enforced (each job's pk/ik/mk keys checked
//!    and reserved in the claim transaction, R-DND-3) and `record_outcomes` as `sent`, no HTTP:
//!    the store's cost per job.
//! 2. **Dispatch**: the jobs reset to pending and the real scheduler pushes them (contactRef,
//!    rate limit and breaker on, limits raised so they do not throttle) to an in-process HTTP
//!    recorder answering `200 {"code":0}`, until the store has them all `sent`.
//!
//! Printed per run: jobs/s, store ms per job, and the dispatch rate as a ratio to the store-only
//! rate measured in the same run. The goal of issue 5 is ≥ 2 000 jobs/s on SQLite with DND.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use cem_connectors::resilience::Limits;
use cem_connectors::sink::{Peer, PeerSink};
use tokio::sync::Notify;

use crate::config::SchedulerConfig;
use crate::config::peers::ContactMode;
use crate::process::clock::Clock;
use crate::store::claim::JobOutcome;
use crate::store::{NewJob, Store, StoreOptions};

pub const DEFAULT_COUNT: usize = 100_000;
pub const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// What to run.
pub struct DispatchBench {
    pub count: usize,
    /// Admin URL of a PostgreSQL server (a scratch database is created and dropped); `None` or
    /// unreachable = SQLite only.
    pub postgres: Option<String>,
}

/// One measured run.
struct Figure {
    store: String,
    instances: usize,
    store_only_per_s: f64,
    dispatch_per_s: f64,
    pushes: u64,
}

const DAY_MS: i64 = 86_400_000;

pub async fn run(b: &DispatchBench) -> anyhow::Result<()> {
    let (url, hits) = recorder().await?;
    let mut figures = Vec::new();
    let dir = std::env::temp_dir().join(format!("cem-bench-dispatch-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let sqlite = format!("sqlite://{}", dir.join("bench.db").display());
    figures.push(one("sqlite", &sqlite, b.count, 1, &url, &hits).await?);
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(admin) = &b.postgres {
        match scratch_pg(admin).await {
            Ok((db_url, name)) => {
                let r1 = one("postgres", &db_url, b.count, 1, &url, &hits).await;
                let r2 = match &r1 {
                    Ok(_) => one("postgres", &db_url, b.count, 2, &url, &hits).await,
                    Err(_) => Err(anyhow::anyhow!("skipped")),
                };
                crate::store::ops::drop_database(admin, &name).await;
                figures.push(r1?);
                figures.push(r2?);
            }
            Err(e) => println!("PostgreSQL at {admin} not used: {e}"),
        }
    }
    println!();
    println!(
        "{:<10} {:>9} {:>9} {:>14} {:>14} {:>14} {:>9}",
        "store", "instances", "jobs", "store-only/s", "store ms/job", "dispatch/s", "ratio"
    );
    for f in &figures {
        println!(
            "{:<10} {:>9} {:>9} {:>14.0} {:>14.3} {:>14.0} {:>9.2}",
            f.store,
            f.instances,
            b.count,
            f.store_only_per_s,
            1000.0 / f.store_only_per_s,
            f.dispatch_per_s,
            f.dispatch_per_s / f.store_only_per_s
        );
    }
    println!(
        "\ndispatch/s: the scheduler with do-not-disturb, contactRef and the HTTP sink to a local recorder; \
         ratio = dispatch/s ÷ store-only/s of the same run. Pushes received: {}.",
        figures.iter().map(|f| f.pushes).sum::<u64>()
    );
    if let Some(f) = figures.first() {
        let verdict = if f.dispatch_per_s >= 2000.0 {
            "meets"
        } else {
            "misses"
        };
        println!(
            "issue 5 goal (≥ 2 000 jobs/s on SQLite with DND): {verdict} ({:.0} jobs/s)",
            f.dispatch_per_s
        );
    }
    Ok(())
}

/// An HTTP endpoint answering every POST `200 {"code":0}`, counting them.
async fn recorder() -> anyhow::Result<(String, Arc<AtomicU64>)> {
    use axum::routing::post;
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    let app = axum::Router::new().route(
        "/dispatch",
        post(move || {
            let h = h.clone();
            async move {
                h.fetch_add(1, Ordering::Relaxed);
                r#"{"code":0}"#
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((format!("http://{addr}/dispatch"), hits))
}

async fn open(url: &str) -> anyhow::Result<Store> {
    Ok(Store::open(
        url,
        &StoreOptions {
            max_connections: 8,
            ..Default::default()
        },
    )
    .await?)
}

/// Write `n` due jobs for `n` patients (distinct pk, ik and mk: none blocks another).
async fn seed(store: &Store, n: usize, now: i64) -> anyhow::Result<()> {
    let bar = crate::cli::bench::bar(n as u64, "jobs written");
    for chunk in (0..n).collect::<Vec<_>>().chunks(2000) {
        let mut tx = store.begin().await?;
        for &i in chunk {
            let job_id = format!("bench-{i:08}");
            let (pk, ik, mk) = (format!("pk_b{i}"), format!("ik_b{i}"), format!("mk_b{i}"));
            let payload = format!(
                r#"{{"requestId":"sv:{job_id}","jobId":"{job_id}","templateId":"OP-SAT-01","patient":{{"pk":"{pk}"}}}}"#
            );
            tx.insert_job(
                &NewJob {
                    job_id: &job_id,
                    template: "OP-SAT-01",
                    patient_key: &pk,
                    visit_key: &format!("vk_b{i}"),
                    id_card_key: Some(&ik),
                    mobile_key: Some(&mk),
                    due_at: now - 1000,
                    payload: &payload,
                    connector: "bench",
                    message_id: &job_id,
                    dnd: true,
                    stale_at: None,
                },
                now,
            )
            .await?;
        }
        tx.commit().await?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(())
}

async fn count_sent(store: &Store) -> anyhow::Result<u64> {
    Ok(store
        .job_counts()
        .await?
        .iter()
        .filter(|c| c.status == "sent")
        .map(|c| u64::try_from(c.count).unwrap_or(0))
        .sum())
}

async fn one(
    label: &str,
    url: &str,
    n: usize,
    instances: usize,
    sink_url: &str,
    hits: &Arc<AtomicU64>,
) -> anyhow::Result<Figure> {
    println!("{label}, {instances} instance(s): writing {n} due jobs…");
    let store = open(url).await?;
    let now = crate::store::now_ms();
    if instances == 1 {
        seed(&store, n, now).await?;
    } else {
        store.reset_jobs_for_bench().await?;
    }
    // 1. Store only: claim with DND, record as sent.
    let window = 30 * DAY_MS;
    let t = Instant::now();
    let bar = crate::cli::bench::bar(n as u64, "store-only");
    loop {
        let at = crate::store::now_ms();
        let claimed = store
            .claim_due("bench", at, at + 60_000, 256, Some(window))
            .await?;
        if claimed.jobs.is_empty() && claimed.suppressed == 0 {
            break;
        }
        let outcomes: Vec<JobOutcome> = claimed
            .jobs
            .iter()
            .map(|j| JobOutcome::Sent {
                job_id: j.job_id.clone(),
                status: 200,
            })
            .collect();
        store.record_outcomes("bench", at, &outcomes).await?;
        bar.inc(claimed.jobs.len() as u64);
    }
    bar.finish_and_clear();
    let store_only = n as f64 / t.elapsed().as_secs_f64();
    store.reset_jobs_for_bench().await?;

    // 2. The scheduler(s) pushing over HTTP.
    let before = hits.load(Ordering::Relaxed);
    let (trigger, _) = crate::process::shutdown::channel();
    let mut tasks = Vec::new();
    let t = Instant::now();
    for i in 0..instances {
        let s = if i == 0 {
            store.clone()
        } else {
            open(url).await?
        };
        let sink = PeerSink::build(
            Peer::Cem,
            PeerSink::http(
                sink_url,
                None,
                Duration::from_secs(10),
                crate::config::peers::success_rule("/code", &toml::Value::Integer(0)),
            ),
            Limits {
                rate_per_sec: 1_000_000,
                burst: 1_000_000,
                ..Default::default()
            },
            crate::sinks::stamp(&Clock::system()),
        )
        .await?;
        let vault = crate::privacy::vault::VaultCipher::new(("bench", &[7u8; 32]), &[])
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tasks.push(tokio::spawn(crate::surveys::scheduler::run(
            crate::surveys::scheduler::Scheduler {
                store: s,
                sink,
                cfg: SchedulerConfig {
                    poll_interval_ms: 20,
                    claim_batch: 256,
                    concurrency: 64,
                    lease_ms: 60_000,
                },
                policy: Arc::new(crate::process::live::Policy::new(Default::default())),
                clock: Clock::system(),
                owner: format!("bench-{i}"),
                wake: Arc::new(Notify::new()),
                vault,
                contact_mode: ContactMode::Ref,
                lists: Arc::new(crate::privacy::lists::Lists::new(Default::default())),
            },
            trigger.subscribe(),
        )));
    }
    let bar = crate::cli::bench::bar(n as u64, "dispatched");
    loop {
        let sent = count_sent(&store).await?;
        bar.set_position(sent);
        if sent >= n as u64 {
            break;
        }
        if t.elapsed() > Duration::from_secs(1800) {
            anyhow::bail!("dispatch did not finish in 30 min ({sent} of {n} sent)");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dispatch = n as f64 / t.elapsed().as_secs_f64();
    bar.finish_and_clear();
    trigger.trigger();
    for t in tasks {
        let _ = t.await;
    }
    let pushes = hits.load(Ordering::Relaxed) - before;
    println!(
        "  store-only {store_only:.0} jobs/s; dispatch {dispatch:.0} jobs/s ({pushes} pushes)"
    );
    store.close().await;
    Ok(Figure {
        store: label.to_string(),
        instances,
        store_only_per_s: store_only,
        dispatch_per_s: dispatch,
        pushes,
    })
}

/// A fresh database on the server at `admin`: (its URL, its name).
async fn scratch_pg(admin: &str) -> anyhow::Result<(String, String)> {
    let name = format!("cem_bench_{}", std::process::id());
    crate::store::ops::create_database(admin, &name)
        .await
        .with_context(|| format!("creating a scratch database on {admin}"))?;
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(admin);
    Ok((format!("{base}/{name}"), name))
}
