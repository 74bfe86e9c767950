//! `cem-bridge bench …`: figures measured on this machine; they assert nothing about speed
//! unless asked to (`bench ingest --min-floor-ratio`).
//!
//! - [`ingest`] — the whole path of issue 17: pure pipeline, the broker and the floor under the
//!   bridge (consume + parse + ack), bridge ingest, pushes to an HTTP CEM unlimited and
//!   rate-limited, latency at a fixed offered rate, peak memory, the MLLP door.
//! - [`decode`] — decode+map per format against the bare parser of the same bytes.
//! - [`dispatch`] — due jobs pushed by the scheduler, SQLite and PostgreSQL (issue 5).
//! - [`chaos`] — the bridge as a child process under faults, every message accounted for
//!   (issue 22).
//!
//! This file holds what they share: the built-in A04 sample and the distinct registrations made
//! from it, the bench keys and clock, publishing with confirms, progress bars, a bench bridge's
//! config and start, and deleting broker objects. `cem_recorder` is the in-process CEM that
//! `ingest` and `chaos` push to.

pub(crate) mod cem_recorder;
pub mod chaos;
pub mod decode;
pub mod dispatch;
pub mod ingest;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cem_connectors::amqp::{AmqpPublisher, OutboundMessage, redact_url};
use indicatif::{ProgressBar, ProgressStyle};
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};

use crate::app::{self, Secrets};
use crate::config::Config;
use crate::process::clock::Clock;

pub const DEFAULT_AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

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
/// The bearer token a bench bridge sends to the CEM recorder, which checks it (public).
pub(crate) const BENCH_CEM_TOKEN: &str = "cem-bridge-bench-cem-token-fixed-and-public";
/// The token the CEM would present at `/contact/resolve` (set so `[cem]` in `http` mode is
/// complete and starts without a warning; the benches never call it).
const BENCH_RESOLVE_TOKEN: &str = "cem-bridge-bench-resolve-token-fixed-and-public";

const PUBLISH_WINDOW: usize = 256;
/// Give up when nothing moves for this long (a stuck run must not hang forever).
pub(crate) const STALL: Duration = Duration::from_secs(60);
/// In-memory measurements: rounds per function (interleaved) and time per round. The best round
/// counts: on a shared machine, the least disturbed round is the closest to the true cost.
const PURE_ROUNDS: u32 = 7;
const PURE_ROUND: Duration = Duration::from_millis(200);

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

/// The instant the bench's clock starts at: the day after the A04 sample's visit, so its
/// survey is due at once and not yet stale.
pub(crate) const BENCH_CLOCK_START: &str = "2026-11-21T10:30:00+08:00";

fn bench_clock() -> anyhow::Result<Clock> {
    clock_at(BENCH_CLOCK_START)
}

/// A clock reading `instant` now (an RFC 3339 constant of the bench).
pub(crate) fn clock_at(instant: &str) -> anyhow::Result<Clock> {
    Ok(Clock::starting_at(timestamp(instant)?))
}

pub(crate) fn timestamp(instant: &str) -> anyhow::Result<jiff::Timestamp> {
    instant
        .parse()
        .with_context(|| format!("the bench's clock instant {instant:?}"))
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

/// Best-of-rounds rates of `a` and `b`, measured interleaved after one warm-up round each
/// (`bench ingest` and `bench decode`).
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

/// The built-in A04 sample as text, checked to hold every value [`registration`] replaces.
pub(crate) fn a04_text() -> anyhow::Result<&'static str> {
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
    Ok(base)
}

/// One distinct outpatient registration: own MSH-10, visit number, patient id and mobile, and
/// no 身份证号 — a distinct patient each, so that do-not-disturb (one survey per patient, mobile
/// and ID card per window) holds none of them back. `tag` keeps runs of different phases apart.
pub(crate) fn registration(base: &str, tag: &str, i: usize) -> Vec<u8> {
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

/// Publish `n` persistent messages with confirms (window 256); the time from the first publish
/// to the last confirm. Fails when no confirm comes for [`STALL`].
pub(crate) async fn publish_n(
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
    let confirmed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let msgs = (0..n).map(|i| OutboundMessage {
        body: body(i),
        message_id: Some(format!("bench-{i}")),
        headers: BTreeMap::new(),
    });
    let publish = publisher.publish_all(queue, msgs, PUBLISH_WINDOW, || {
        confirmed.fetch_add(1, Ordering::Relaxed);
    });
    tokio::pin!(publish);
    let (mut last, mut moved) = (0u64, Instant::now());
    let r = loop {
        tokio::select! {
            r = &mut publish => break Some(r),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                let now = confirmed.load(Ordering::Relaxed);
                pb.set_position(now);
                if now != last {
                    (last, moved) = (now, Instant::now());
                } else if moved.elapsed() > STALL {
                    break None;
                }
            }
        }
    };
    let took = start.elapsed();
    pb.finish_and_clear();
    publisher.close().await;
    let Some(r) = r else {
        bail!(
            "RabbitMQ confirmed nothing for {} s after {last} of {n} messages to {queue} (a memory or disk alarm? see `rabbitmqctl status`)",
            STALL.as_secs()
        );
    };
    let done = r.with_context(|| format!("publishing {n} messages to {queue}"))?;
    if done != n as u64 {
        bail!("only {done} of {n} messages were confirmed by RabbitMQ on {queue}");
    }
    Ok(took)
}

/// A TOML string literal (quoted and escaped).
pub(crate) fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Where a bench bridge sends its surveys.
pub(crate) enum BenchCem<'a> {
    /// The shadow sink, appending to this JSONL file.
    Shadow(&'a Path),
    /// An HTTP CEM (the recorder) at `url` with the bench's token, limited to `rate_per_sec`
    /// with `burst`.
    Http {
        url: &'a str,
        rate_per_sec: u32,
        burst: u32,
    },
}

/// A bench bridge's config: the store at `store_url` (SQLite synchronous = full), this
/// `[[source]]` body, the CEM as `cem` says, no ops server. `name` labels errors.
pub(crate) fn bridge_config(
    name: &str,
    store_url: &str,
    source: &str,
    cem: &BenchCem<'_>,
) -> anyhow::Result<Config> {
    let cem = match cem {
        BenchCem::Shadow(file) => format!(
            "mode = \"shadow\"\nshadow_file = {}\n[cem.limits]\n# Measure the bridge, not the rate limit a real CEM would need.\nrate_per_sec = 1000000\nburst = 1000000\n",
            toml_str(&file.display().to_string())
        ),
        BenchCem::Http {
            url,
            rate_per_sec,
            burst,
        } => format!(
            "mode = \"http\"\nurl = {}\ntoken_env = \"CEM_BRIDGE_BENCH_CEM_TOKEN_UNUSED\"\nresolve_token_env = \"CEM_BRIDGE_BENCH_RESOLVE_TOKEN_UNUSED\"\n[cem.limits]\nrate_per_sec = {rate_per_sec}\nburst = {burst}\n",
            toml_str(url)
        ),
    };
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
{cem}
[ops]
listen = ""
"#,
        store = toml_str(store_url),
    );
    Config::parse(&text, Path::new(&format!("{name}.toml")))
        .with_context(|| format!("the bench's own bridge config ({name})"))
}

/// A bench bridge's config with SQLite `{name}.db` and the shadow sink
/// `{name}-requests.jsonl` in `dir`, and this `[[source]]` body.
pub(crate) fn bench_config(dir: &Path, name: &str, source: &str) -> anyhow::Result<Config> {
    let store = format!("sqlite://{}", dir.join(format!("{name}.db")).display());
    let shadow = shadow_file(dir, name);
    bridge_config(name, &store, source, &BenchCem::Shadow(&shadow))
}

pub(crate) fn shadow_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}-requests.jsonl"))
}

/// Start a bench bridge with the bench's public keys, on the bench clock.
pub(crate) async fn start_bench_bridge(cfg: Config) -> anyhow::Result<app::Bridge> {
    start_bench_bridge_on(cfg, bench_clock()?).await
}

/// Start a bench bridge with the bench's public keys on `clock` (clones share its offset, so
/// `clock.set` moves the running bridge). Fails after [`STALL`] rather than hang.
pub(crate) async fn start_bench_bridge_on(
    cfg: Config,
    clock: Clock,
) -> anyhow::Result<app::Bridge> {
    let secrets = Secrets {
        pseudonym_key: Some(BENCH_KEY.to_vec()),
        vault_key: Some(BENCH_VAULT_KEY.to_vec()),
        cem_token: Some(BENCH_CEM_TOKEN.into()),
        resolve_token: Some(BENCH_RESOLVE_TOKEN.into()),
        ..Default::default()
    };
    match tokio::time::timeout(STALL, app::start_with_clock(cfg, secrets, clock)).await {
        Ok(r) => r.context("starting the bench's bridge"),
        Err(_) => bail!(
            "the bench's bridge did not start within {} s (is the store reachable?)",
            STALL.as_secs()
        ),
    }
}

/// Delete `queues`, one channel per deletion (a failed AMQP operation closes its channel); best
/// effort, each failure reported.
pub(crate) async fn delete_queues(control: &lapin::Connection, queues: &[&str]) {
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
}

/// Delete `queues` and `exchange`; best effort, each failure reported.
pub(crate) async fn delete_queues_and_exchange(
    control: &lapin::Connection,
    queues: &[&str],
    exchange: &str,
) {
    delete_queues(control, queues).await;
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

/// `12345.6` → `12,346`.
pub(crate) fn thousands(v: f64) -> String {
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

/// `n` per `d`, per second.
pub(crate) fn per_s(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits_by_three() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(12_345.6), "12,346");
        assert_eq!(thousands(1_000_000.0), "1,000,000");
    }

    #[test]
    fn registrations_are_distinct_and_keep_no_id_card() {
        let base = a04_text().unwrap();
        let a = String::from_utf8(registration(base, "T", 1)).unwrap();
        let b = String::from_utf8(registration(base, "T", 2)).unwrap();
        assert_ne!(a, b);
        assert!(a.contains("MSG-T-0000001") && a.contains("PT0000001"));
        assert!(!a.contains("110101199003071233"));
    }

    #[test]
    fn an_http_bench_config_parses_with_its_limits() {
        let cfg = bridge_config(
            "t",
            "sqlite:///tmp/x.db",
            "name = \"s\"\nurl = \"amqp://127.0.0.1\"\nqueue = \"q\"\n",
            &BenchCem::Http {
                url: "http://127.0.0.1:1/dispatch",
                rate_per_sec: 500,
                burst: 50,
            },
        )
        .unwrap();
        assert_eq!(cfg.cem.limits.rate_per_sec, 500);
        assert_eq!(cfg.cem.limits.burst, 50);
    }
}
