//! `bench ingest`, phases 3 to 5: the bridge in-process over a queue filled before it starts.
//! The bridges ingest on a clock where the registrations' surveys are not yet due, so ingest is
//! measured alone (time until the store's inbox holds N, and the peak RSS of those seconds);
//! then the clock moves past the due time, every survey falls due at once, and the push to the
//! HTTP CEM recorder is measured until the recorder holds N distinct surveys and the store N
//! jobs `sent`. Phase 5 is the same with `[cem.limits] rate_per_sec = 500`, reading the rate
//! from the recorder's arrival times.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};

use super::pure::INGEST_CLOCK_START;
use crate::app;
use crate::cli::bench::cem_recorder::Cem;
use crate::cli::bench::{
    BENCH_CLOCK_START, BenchCem, STALL, bar, bridge_config, clock_at, start_bench_bridge_on,
    timestamp, toml_str,
};
use crate::config::SchedulerConfig;
use crate::store::Store;

pub const BRIDGE_PREFETCH: u16 = 512;
pub const BRIDGE_BATCH: usize = 256;

/// The bench bridges' `prefetch` and `batch_size` (`--prefetch`, `--batch-size`).
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    pub prefetch: u16,
    pub batch_size: usize,
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            prefetch: BRIDGE_PREFETCH,
            batch_size: BRIDGE_BATCH,
        }
    }
}
/// The source name of every bench bridge.
pub(super) const SOURCE: &str = "bench";
const POLL: Duration = Duration::from_millis(20);

/// One bridge run: which queue, store and CEM, how many instances, what to wait for.
pub(super) struct BridgeRun<'a> {
    /// Config name (errors) and progress-bar prefix.
    pub name: &'static str,
    pub amqp: &'a str,
    pub queue: &'a str,
    pub store_url: &'a str,
    pub cem: &'a Cem,
    pub rate_per_sec: u32,
    pub burst: u32,
    pub instances: usize,
    pub batching: Batching,
    /// Registrations queued before the start.
    pub count: usize,
    /// Reset the kernel's RSS high-water mark before the start and read it after ingest.
    pub measure_rss: bool,
    /// Printed on stderr when ingest is done and the push begins.
    pub push_heading: Option<String>,
}

/// What one bridge run measured.
pub(super) struct Measured {
    /// Time for every instance to start (the first starts consuming at once).
    pub start: Duration,
    /// From the first instance's start to the inbox holding N.
    pub ingest: Duration,
    /// From the clock moved past the due time to N surveys at the CEM and N jobs `sent`.
    pub push: Duration,
    pub shutdown: Duration,
    /// Peak RSS during ingest and RSS at the start, or why there is none.
    pub rss: Result<Rss, String>,
    pub scheduler: SchedulerConfig,
}

/// The source of a bench bridge on `queue`.
pub(super) fn source(amqp: &str, queue: &str, batching: Batching) -> String {
    format!(
        "name = \"{SOURCE}\"\nurl = {}\nqueue = {}\nqueue_type = \"quorum\"\nprefetch = {}\nbatch_size = {}\n",
        toml_str(amqp),
        toml_str(queue),
        batching.prefetch,
        batching.batch_size,
    )
}

/// Start `run.instances` bridges on the queued registrations, measure ingest, move the clock,
/// measure the push, stop them.
pub(super) async fn ingest_then_push(
    run: &BridgeRun<'_>,
    stop: &AtomicBool,
) -> anyhow::Result<Measured> {
    let cfg = bridge_config(
        run.name,
        run.store_url,
        &source(run.amqp, run.queue, run.batching),
        &BenchCem::Http {
            url: &run.cem.url(),
            rate_per_sec: run.rate_per_sec,
            burst: run.burst,
        },
    )?;
    let scheduler = cfg.scheduler.clone();
    let clock = clock_at(INGEST_CLOCK_START)?;
    let rss_reset = if run.measure_rss {
        reset_peak_rss()
    } else {
        Err("not measured".into())
    };
    let began = Instant::now();
    let mut bridges: Vec<app::Bridge> = Vec::with_capacity(run.instances);
    let mut t0 = began;
    let mut result = Ok(());
    for i in 0..run.instances {
        match start_bench_bridge_on(cfg.clone(), clock.clone()).await {
            Ok(b) => bridges.push(b),
            Err(e) => {
                result = Err(e.context(format!("instance {} of {}", i + 1, run.instances)));
                break;
            }
        }
        if i == 0 {
            t0 = Instant::now();
        }
    }
    let start = began.elapsed();
    let measured = match result {
        Err(e) => Err(e),
        Ok(()) => measure(run, &bridges, &clock, t0, rss_reset, stop).await,
    };
    let t = Instant::now();
    let mut stopped = Ok(());
    for b in bridges {
        if let Err(e) = b.shutdown_within(STALL).await {
            stopped = Err(e);
        }
    }
    let shutdown = t.elapsed();
    let (ingest, push, rss) = measured?;
    stopped?;
    Ok(Measured {
        start,
        ingest,
        push,
        shutdown,
        rss,
        scheduler,
    })
}

type Figures = (Duration, Duration, Result<Rss, String>);

async fn measure(
    run: &BridgeRun<'_>,
    bridges: &[app::Bridge],
    clock: &crate::process::clock::Clock,
    t0: Instant,
    rss_reset: Result<u64, String>,
    stop: &AtomicBool,
) -> anyhow::Result<Figures> {
    let Some(first) = bridges.first() else {
        bail!("no bridge started");
    };
    let store = &first.store;
    let ingest = watch_inbox(store, run, t0, stop).await?;
    let rss = rss_reset.and_then(|at_start_kib| {
        Ok(Rss {
            peak_kib: rss_kib("VmHWM")?,
            at_start_kib,
        })
    });
    let early = run.cem.state.requests.load(Ordering::Relaxed);
    if early > 0 {
        bail!(
            "the CEM got {early} request(s) while the bridge ingested on a clock where no survey is due: the bench's clocks are wrong (see INGEST_CLOCK_START)"
        );
    }
    if let Some(h) = &run.push_heading {
        eprintln!("{h}");
    }
    clock.set(timestamp(BENCH_CLOCK_START)?);
    let t1 = Instant::now();
    for b in bridges {
        b.wake_scheduler();
    }
    let push = watch_push(store, run, t1, stop).await?;
    Ok((ingest, push, rss))
}

/// Poll the inbox every 20 ms from `t0` until it holds `run.count`; the time recorded is the
/// one before the query that saw it.
async fn watch_inbox(
    store: &Store,
    run: &BridgeRun<'_>,
    t0: Instant,
    stop: &AtomicBool,
) -> anyhow::Result<Duration> {
    let n = run.count as i64;
    let pb = bar(run.count as u64, run.name);
    pb.set_message("ingested");
    let (mut last, mut moved) = (-1i64, Instant::now());
    let r = loop {
        if stop.load(Ordering::SeqCst) {
            break Err(anyhow!(
                "interrupted with {} of {} in the inbox",
                last.max(0),
                run.count
            ));
        }
        let at = t0.elapsed();
        let inbox = match store.inbox_count().await {
            Ok(c) => c,
            Err(e) => break Err(e.into()),
        };
        pb.set_position(inbox.max(0) as u64);
        if inbox >= n {
            break Ok(at);
        }
        if inbox != last {
            (last, moved) = (inbox, Instant::now());
        } else {
            // Dead letters would explain a missing inbox row.
            if let Err(e) = no_dead_letters(store).await {
                break Err(e);
            }
            if moved.elapsed() > STALL {
                break Err(anyhow!(
                    "the bridge ingested nothing for {} s: {inbox} of {} in the inbox after {:.1} s",
                    STALL.as_secs(),
                    run.count,
                    t0.elapsed().as_secs_f64()
                ));
            }
        }
        tokio::time::sleep(POLL).await;
    };
    pb.finish_and_clear();
    r
}

async fn no_dead_letters(store: &Store) -> anyhow::Result<()> {
    let dead_letters = store.dead_letters().await?;
    if let Some(first) = dead_letters.first() {
        bail!(
            "{} message(s) were dead-lettered (first: {}: {}); the bench expects every registration to be accepted",
            dead_letters.len(),
            first.reason,
            first.detail
        );
    }
    Ok(())
}

/// Poll the recorder every 20 ms from `t1` until it accepted `run.count` distinct surveys,
/// then the store until it has as many jobs `sent`.
async fn watch_push(
    store: &Store,
    run: &BridgeRun<'_>,
    t1: Instant,
    stop: &AtomicBool,
) -> anyhow::Result<Duration> {
    let n = run.count;
    let pb = bar(n as u64, run.name);
    pb.set_message("pushed");
    let state = &run.cem.state;
    let (mut last, mut moved) = ((0usize, 0i64), Instant::now());
    let r = loop {
        if stop.load(Ordering::SeqCst) {
            break Err(anyhow!(
                "interrupted with {} of {n} surveys at the CEM",
                last.0
            ));
        }
        let at = t1.elapsed();
        let accepted = state.accepted_count();
        pb.set_position(accepted as u64);
        let unauthorized = state.unauthorized.load(Ordering::Relaxed);
        if unauthorized > 0 {
            break Err(anyhow!(
                "the CEM recorder refused {unauthorized} push(es) without the bench's bearer token: [cem] token_env is not applied"
            ));
        }
        let pii = state.pii.load(Ordering::Relaxed);
        if pii > 0 {
            break Err(anyhow!(
                "{pii} push(es) carried a patient id, visit number or mobile in clear"
            ));
        }
        let mut sent = 0i64;
        if accepted >= n {
            // The CEM has every survey; confirm the store marked them all sent.
            let counts = match store.job_counts().await {
                Ok(c) => c,
                Err(e) => break Err(e.into()),
            };
            let dead: i64 = counts
                .iter()
                .filter(|c| c.status == "dead")
                .map(|c| c.count)
                .sum();
            if dead > 0 {
                break Err(anyhow!("{dead} survey job(s) went dead pushing to the CEM"));
            }
            sent = counts
                .iter()
                .filter(|c| c.status == "sent")
                .map(|c| c.count)
                .sum();
            if sent >= n as i64 {
                break Ok(at);
            }
        }
        if (accepted, sent) != last {
            (last, moved) = ((accepted, sent), Instant::now());
        } else if moved.elapsed() > STALL {
            break Err(anyhow!(
                "the push made no progress for {} s: the CEM accepted {accepted} of {n} surveys ({} requests in all), the store shows {sent} sent, after {:.1} s",
                STALL.as_secs(),
                state.requests.load(Ordering::Relaxed),
                t1.elapsed().as_secs_f64()
            ));
        }
        tokio::time::sleep(POLL).await;
    };
    pb.finish_and_clear();
    r
}

/// Reset the kernel's peak-RSS mark (VmHWM) of this process to its current RSS.
/// The bench process's resident memory around an ingest, KiB. The bridges run inside the
/// bench, so the peak includes what the bench itself holds (`at_start_kib`, the RSS when the
/// peak was reset just before the first bridge started).
#[derive(Debug, Clone, Copy)]
pub(super) struct Rss {
    pub peak_kib: u64,
    pub at_start_kib: u64,
}

/// Reset the kernel's high-water mark to the current RSS, and return that RSS (KiB).
fn reset_peak_rss() -> Result<u64, String> {
    std::fs::write("/proc/self/clear_refs", "5")
        .map_err(|e| format!("cannot reset the peak RSS (/proc/self/clear_refs: {e})"))?;
    rss_kib("VmRSS")
}

/// `field` of /proc/self/status (`VmHWM`: peak resident set size since the last reset,
/// `VmRSS`: now), in KiB.
fn rss_kib(field: &str) -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no {field} in /proc/self/status"))
}

/// Requests per second after the first `skip` arrivals (the limiter's initial burst): the
/// arrivals from number `skip` to the last over the time between them. `None` when fewer than
/// two arrivals remain or they share one instant.
pub(super) fn steady_rate(arrivals: &[Duration], skip: usize) -> Option<f64> {
    let rest = arrivals.get(skip..)?;
    let (first, last) = (rest.first()?, rest.last()?);
    let span = last.checked_sub(*first)?.as_secs_f64();
    (rest.len() >= 2 && span > 0.0).then(|| (rest.len() - 1) as f64 / span)
}

/// The longest time between two consecutive arrivals after the first `skip`.
pub(super) fn longest_gap(arrivals: &[Duration], skip: usize) -> Option<Duration> {
    arrivals
        .get(skip..)?
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .max()
}

/// The recorder's arrival times as offsets from the earliest, sorted.
pub(super) fn arrival_offsets(cem: &Cem) -> Vec<Duration> {
    let mut at = cem.state.arrivals();
    at.sort();
    let Some(first) = at.first().copied() else {
        return Vec::new();
    };
    at.into_iter().map(|t| t - first).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_steady_rate_leaves_out_the_initial_burst() {
        // 50 at once, then one every 2 ms: 500/s.
        let mut at = vec![Duration::ZERO; 50];
        at.extend((1..=1000).map(|i| Duration::from_millis(2 * i)));
        let r = steady_rate(&at, 50).unwrap();
        assert!((r - 500.0).abs() < 1e-6, "{r}");
        // Counting the burst would overstate it.
        assert!(steady_rate(&at, 0).unwrap() > 520.0);
        assert_eq!(longest_gap(&at, 50), Some(Duration::from_millis(2)));
    }

    #[test]
    fn a_burst_spread_over_its_first_milliseconds_is_left_out_by_skipping_twice_the_burst() {
        // The burst's 50 arrive over 20 ms, in which the bucket refills 10 more: 60 early
        // arrivals, then one every 2 ms from 22 ms on.
        let mut at: Vec<Duration> = (0..60).map(|i| Duration::from_micros(i * 333)).collect();
        at.extend((0..3000).map(|i| Duration::from_millis(22 + 2 * i)));
        let naive = steady_rate(&at, 50).unwrap();
        assert!(naive > 501.0, "{naive}");
        let r = steady_rate(&at, 100).unwrap();
        assert!((r - 500.0).abs() < 1e-6, "{r}");
    }

    #[test]
    fn a_pause_shows_as_the_longest_gap() {
        let mut at: Vec<Duration> = (0..100).map(|i| Duration::from_millis(2 * i)).collect();
        at.extend((0..100).map(|i| Duration::from_millis(700 + 2 * i)));
        assert_eq!(longest_gap(&at, 0), Some(Duration::from_millis(502)));
        assert_eq!(longest_gap(&at, 500), None);
    }

    #[test]
    fn no_steady_rate_without_two_arrivals_after_the_burst() {
        assert_eq!(steady_rate(&[], 0), None);
        assert_eq!(steady_rate(&[Duration::ZERO; 3], 2), None);
        assert_eq!(steady_rate(&[Duration::ZERO; 3], 5), None);
        assert_eq!(steady_rate(&[Duration::ZERO, Duration::ZERO], 0), None);
    }

    #[test]
    fn the_peak_rss_is_read_from_proc_on_linux() {
        if cfg!(target_os = "linux") {
            let now = rss_kib("VmRSS").unwrap();
            assert!(now > 0);
            assert!(
                rss_kib("VmHWM").unwrap() >= now,
                "the peak is at least what was resident"
            );
            assert!(rss_kib("VmNothing").is_err());
        }
    }
}
