//! `bench ingest`, phase 6: latency at a fixed offered rate. A bridge waits on an empty queue;
//! an open-loop publisher sends distinct registrations at 1000 msg/s — message i at t0 + i ms,
//! whatever happened to the earlier ones, confirms awaited on the side — while the bench polls
//! the bridge's acked count every millisecond. The bridge acks one queue's deliveries in order,
//! so message i is durable and acked when the count first reaches i + 1; its latency is that
//! moment minus its scheduled publish time (a late publisher adds to it rather than hiding it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use cem_connectors::amqp::{self, redact_url};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, PublisherConfirm};
use tokio::sync::mpsc;

use super::bridge::{Batching, SOURCE, source};
use super::pure::INGEST_CLOCK_START;
use crate::app;
use crate::cli::bench::cem_recorder::Cem;
use crate::cli::bench::{
    BenchCem, STALL, a04_text, bar, bridge_config, clock_at, registration, start_bench_bridge_on,
};

/// Messages offered per second.
pub(super) const OFFERED_PER_S: u64 = 1_000;

/// What phase 6 measured, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Latency {
    pub messages: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// How far behind its schedule the publisher fell at worst (included in the latencies).
    pub publish_lag_max_ms: f64,
    /// Messages acked per second from the first scheduled publish to the last ack: below the
    /// offered rate, the bridge fell behind and the latencies grew through the run.
    pub acked_msgs_per_s: f64,
}

/// The value at percentile `p` (0–100] of `sorted` (ascending), nearest rank; `None` when empty.
pub(super) fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Run phase 6: `messages` registrations offered at [`OFFERED_PER_S`] to a bridge on `queue`
/// (already declared, empty) with its store at `store_url`.
pub(super) async fn run(
    amqp_url: &str,
    queue: &str,
    store_url: &str,
    cem: &Cem,
    messages: usize,
    batching: Batching,
    stop: &AtomicBool,
) -> anyhow::Result<Latency> {
    let cfg = bridge_config(
        "latency",
        store_url,
        &source(amqp_url, queue, batching),
        &BenchCem::Http {
            url: &cem.url(),
            rate_per_sec: 1_000_000,
            burst: 1_000_000,
        },
    )?;
    // Surveys not due: the bridge only ingests, as between a registration and its survey.
    let bridge = start_bench_bridge_on(cfg, clock_at(INGEST_CLOCK_START)?).await?;
    let r = offer(amqp_url, queue, &bridge, messages, stop).await;
    let stopped = bridge.shutdown_within(STALL).await;
    let latency = r?;
    stopped?;
    Ok(latency)
}

async fn offer(
    amqp_url: &str,
    queue: &str,
    bridge: &app::Bridge,
    messages: usize,
    stop: &AtomicBool,
) -> anyhow::Result<Latency> {
    let base = a04_text()?;
    let conn = amqp::connect(amqp_url, "cem-bridge-bench-latency")
        .await
        .with_context(|| format!("RabbitMQ not reachable at {}", redact_url(amqp_url)))?;
    let r = async {
        let ch = conn
            .create_channel()
            .await
            .context("RabbitMQ: open the publisher channel")?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .context("RabbitMQ: enable publisher confirms")?;
        let publish = |body: Vec<u8>, id: String| {
            let ch = ch.clone();
            async move {
                ch.basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &body,
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_message_id(id.into()),
                )
                .await
                .with_context(|| format!("RabbitMQ: publish to {queue}"))
            }
        };
        // Warm-up: one message through, so the consumer is there and the first batch's costs
        // are paid before the clock starts.
        let warm = publish(
            registration(base, "LATW", 9_999_999),
            "bench-latency-warm".into(),
        )
        .await?;
        confirmed(warm.await, queue)?;
        let since = Instant::now();
        while bridge.acked(SOURCE) < 1 {
            if since.elapsed() > STALL {
                bail!(
                    "the latency bridge acked nothing within {} s of the first message",
                    STALL.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let offset = bridge.acked(SOURCE);

        let pb = bar(messages as u64, "latency");
        let t0 = Instant::now() + Duration::from_millis(20);
        let scheduled = |i: usize| t0 + Duration::from_millis(i as u64 * 1_000 / OFFERED_PER_S);
        let (tx, rx) = mpsc::unbounded_channel::<PublisherConfirm>();
        let failed = AtomicBool::new(false);
        let mut lag = Duration::ZERO;
        let publisher = async {
            let r = async {
                for i in 0..messages {
                    tokio::time::sleep_until(scheduled(i).into()).await;
                    if stop.load(Ordering::SeqCst) {
                        bail!("interrupted (Ctrl-C or SIGTERM) after {i} of {messages} published");
                    }
                    if failed.load(Ordering::SeqCst) {
                        // The confirms or the poller failed: their error is the one to report.
                        break;
                    }
                    let body = registration(base, "LAT", i);
                    let confirm = publish(body, format!("bench-latency-{i}")).await?;
                    lag = lag.max(Instant::now().saturating_duration_since(scheduled(i)));
                    // The receiver lives until every confirm is in.
                    let _ = tx.send(confirm);
                }
                Ok(())
            }
            .await;
            drop(tx);
            if r.is_err() {
                failed.store(true, Ordering::SeqCst);
            }
            r
        };
        let confirms = async {
            let mut rx = rx;
            let mut n = 0u64;
            while let Some(c) = rx.recv().await {
                if let Err(e) = confirmed(c.await, queue) {
                    failed.store(true, Ordering::SeqCst);
                    return Err(e);
                }
                n += 1;
            }
            Ok(n)
        };
        let poller = async {
            let mut acked_at: Vec<Instant> = Vec::with_capacity(messages);
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut moved = Instant::now();
            let mut shown = Instant::now();
            while acked_at.len() < messages {
                tick.tick().await;
                let now = Instant::now();
                let acked = bridge.acked(SOURCE).saturating_sub(offset) as usize;
                if acked > acked_at.len() {
                    acked_at.resize(acked.min(messages), now);
                    moved = now;
                }
                if now.duration_since(shown) > Duration::from_millis(50) {
                    pb.set_position(acked_at.len() as u64);
                    shown = now;
                }
                if failed.load(Ordering::SeqCst) || stop.load(Ordering::SeqCst) {
                    return Err(anyhow!(
                        "stopped with {} of {messages} acked",
                        acked_at.len()
                    ));
                }
                if moved.elapsed() > STALL {
                    return Err(anyhow!(
                        "the bridge acked nothing for {} s: {} of {messages} offered messages acked",
                        STALL.as_secs(),
                        acked_at.len()
                    ));
                }
            }
            Ok(acked_at)
        };
        let (published, confirmed_n, acked_at) = tokio::join!(publisher, confirms, poller);
        pb.finish_and_clear();
        published.context("the latency publisher failed")?;
        let confirmed_n = confirmed_n?;
        if confirmed_n != messages as u64 {
            bail!("RabbitMQ confirmed {confirmed_n} of {messages} latency messages");
        }
        let acked_at = acked_at?;
        let span = acked_at
            .last()
            .map_or(Duration::ZERO, |last| last.saturating_duration_since(t0));
        let mut ms: Vec<f64> = acked_at
            .iter()
            .enumerate()
            .map(|(i, at)| at.saturating_duration_since(scheduled(i)).as_secs_f64() * 1e3)
            .collect();
        ms.sort_by(f64::total_cmp);
        let _ = ch.close(200, "bye".into()).await;
        let pick = |p| percentile(&ms, p).ok_or_else(|| anyhow!("no latency measured"));
        Ok(Latency {
            messages,
            p50_ms: pick(50.0)?,
            p99_ms: pick(99.0)?,
            max_ms: pick(100.0)?,
            publish_lag_max_ms: lag.as_secs_f64() * 1e3,
            acked_msgs_per_s: crate::cli::bench::per_s(messages, span),
        })
    }
    .await;
    let _ = conn.close(200, "bye".into()).await;
    r
}

/// A publisher confirm that is an ack for a routed message, or what went wrong.
fn confirmed(c: lapin::Result<lapin::Confirmation>, queue: &str) -> anyhow::Result<()> {
    let c = c.with_context(|| format!("RabbitMQ: publisher confirm on {queue}"))?;
    if c.is_nack() {
        bail!("RabbitMQ refused (nacked) a latency message on {queue}");
    }
    if c.take_message().is_some() {
        bail!("RabbitMQ returned a latency message: no queue {queue}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        // 1000 samples: p99 is the 990th, so 10 slow ones show in p99 only if more than 10.
        let mut w = vec![1.0; 990];
        w.extend(vec![100.0; 10]);
        assert_eq!(percentile(&w, 99.0), Some(1.0));
        assert_eq!(percentile(&w, 100.0), Some(100.0));
    }
}
