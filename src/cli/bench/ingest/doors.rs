//! `bench ingest`, phase 7: the MLLP door. A bridge with one `kind = "mllp"` source (SQLite,
//! shadow CEM) takes distinct A04 registrations from MLLP senders, each waiting for its ACK as
//! interface engines do: first one connection, then eight at once. An `AA` means durable, so
//! the time to the last `AA` is the door's durable ingest rate. A sender that gets no answer
//! within a minute fails the phase (it never hangs).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use cem_connectors::mllp::client::{MllpClient, ack_summary};

use crate::cli::bench::{a04_text, bar, bench_config, registration, start_bench_bridge};
use crate::config::Config;

/// Connections of the concurrent run.
pub(super) const CONNECTIONS: usize = 8;
const SOURCE: &str = "bench-mllp";
const ANSWER: Duration = Duration::from_secs(60);

/// Messages sent and the time until the last was acknowledged, per run.
pub(super) struct DoorRun {
    pub one: (usize, Duration),
    pub many: (usize, Duration),
}

fn config(dir: &Path) -> anyhow::Result<Config> {
    let source = format!(
        "name = \"{SOURCE}\"\nkind = \"mllp\"\nlisten = \"127.0.0.1:0\"\nbatch_size = 256\n"
    );
    bench_config(dir, "mllp", &source)
}

/// Send `bodies` over one connection, each after the previous `AA`.
async fn sender(
    addr: String,
    bodies: Vec<Vec<u8>>,
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut c = MllpClient::connect(&addr, ANSWER).await?;
    for b in bodies {
        if stop.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        let ack = c.send(&b).await?;
        let (code, why) = ack_summary(&ack);
        if code != "AA" {
            bail!(
                "the MLLP door answered {code} ({why}); the bench expects every registration accepted"
            );
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// `n` registrations tagged `tag` over `connections` senders; the time to the last `AA`.
async fn run(
    addr: &str,
    n: usize,
    connections: usize,
    tag: &str,
    label: &'static str,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<Duration> {
    let base = a04_text()?;
    let mut shares: Vec<Vec<Vec<u8>>> = vec![Vec::new(); connections];
    for i in 0..n {
        shares[i % connections].push(registration(base, tag, i));
    }
    let done = Arc::new(AtomicU64::new(0));
    let pb = bar(n as u64, label);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for share in shares {
        tasks.spawn(sender(addr.to_string(), share, done.clone(), stop.clone()));
    }
    let mut result = Ok(());
    loop {
        tokio::select! {
            r = tasks.join_next() => match r {
                None => break,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => { result = Err(e); tasks.abort_all(); }
                Some(Err(e)) if e.is_cancelled() => {}
                Some(Err(e)) => { result = Err(anyhow!("an MLLP sender failed: {e}")); tasks.abort_all(); }
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => pb.set_position(done.load(Ordering::Relaxed)),
        }
    }
    let took = start.elapsed();
    pb.finish_and_clear();
    result.map_err(|e| {
        anyhow!(
            "{e} ({} of {n} acknowledged before it failed)",
            done.load(Ordering::Relaxed)
        )
    })?;
    Ok(took)
}

/// Start the MLLP bridge in `dir`, run one connection with `n / 4` messages, then
/// [`CONNECTIONS`] connections with `n`.
pub(super) async fn mllp(dir: &Path, n: usize, stop: &AtomicBool) -> anyhow::Result<DoorRun> {
    let bridge = start_bench_bridge(config(dir)?).await?;
    let stop_flag = Arc::new(AtomicBool::new(stop.load(Ordering::SeqCst)));
    let r = async {
        let deadline = Instant::now() + Duration::from_secs(15);
        let addr = loop {
            if let Some(a) = bridge.door_addr(SOURCE) {
                break a.to_string();
            }
            if Instant::now() > deadline {
                bail!("the MLLP door did not listen within 15 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let one_n = (n / 4).max(1);
        let one = run(&addr, one_n, 1, "M1", "MLLP 1 conn", &stop_flag).await?;
        let many = run(&addr, n, CONNECTIONS, "M8", "MLLP 8 conns", &stop_flag).await?;
        Ok(DoorRun {
            one: (one_n, one),
            many: (n, many),
        })
    }
    .await;
    bridge.shutdown().await;
    r
}
