//! Oversized messages are bounded (issue 20 §1): three 15 MB random bodies on the queue are
//! dead-lettered `oversized` with the original kept by the broker's dead-letter queue, while
//! the store keeps at most the first 64 KiB of each (sealed) with the size and hash of the
//! whole, and the bridge's peak memory stays bounded. A child bridge process, so its peak
//! resident size (`VmHWM`) is its own.

use crate::common::*;

const BODY: usize = 15 * 1024 * 1024;

/// `n` bytes that do not compress and are no message format (xorshift).
fn noise(n: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// The peak resident size of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn store_bytes(db: &std::path::Path) -> u64 {
    ["", "-wal"]
        .iter()
        .map(|s| {
            std::fs::metadata(format!("{}{s}", db.display()))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_dead_lettered_with_a_bounded_prefix_and_bounded_memory() {
    let cem = Recorder::start().await;
    let setup = Setup::new("oversized", &cem.url());
    let cfg = setup.write_config();
    let log = setup.dir.join("bridge.log");
    let mut child = spawn_bridge(&cfg, None, &log);
    setup.wait_declared().await;
    publish_fixture(&setup.queue, A04_SAMPLE, "a04").await;
    cem.first_accepted().await;
    let baseline_rss = peak_rss_kib(child.id());
    let baseline_store = store_bytes(&setup.db);
    let bodies: Vec<Vec<u8>> = (1..=3).map(|i| noise(BODY, 0x9E37_79B9 * i)).collect();
    for (i, b) in bodies.iter().enumerate() {
        publish(&setup.queue, b, &format!("big-{i}")).await;
    }
    let dlq = setup.dlq();
    wait_for(60, "three dead letters at the broker", || {
        let dlq = dlq.clone();
        async move { (queue_depth(&dlq).await? == 3).then_some(()) }
    })
    .await;
    let peak = peak_rss_kib(child.id());
    let grown = store_bytes(&setup.db).saturating_sub(baseline_store);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    wait_exit(&mut child, 30).await;
    println!(
        "peak RSS {} MiB (before the big bodies {} MiB), store grew {} KiB",
        peak / 1024,
        baseline_rss / 1024,
        grown / 1024
    );

    // The broker keeps the originals, whole.
    let originals = drain(&dlq).await;
    assert_eq!(originals.len(), 3);
    for d in &originals {
        assert_eq!(d.body.len(), BODY);
        assert_eq!(
            d.headers.get("x-cem-reason").map(String::as_str),
            Some("oversized")
        );
    }
    // The store: each at most 64 KiB sealed, with the size and hash of the whole.
    let db = sqlite(&setup.db).await;
    let rows: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT size_bytes, content_hash, LENGTH(body) FROM dead_letters WHERE reason = 'oversized'",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(rows.len(), 3);
    for (size, hash, stored) in &rows {
        assert_eq!(*size as usize, BODY);
        assert!(
            bodies
                .iter()
                .any(|b| cem_bridge::store::dead_letters::content_hash(b) == *hash),
            "the hash is of the whole body"
        );
        assert!(*stored <= 64 * 1024 + 64, "stored {stored} bytes");
    }
    assert!(
        grown < 2 * 1024 * 1024,
        "the store grew {grown} bytes for 45 MB of bodies"
    );
    // Three 15 MB bodies are in flight at once (prefetch): 45 MB the broker hands over, read
    // once each; no copy per step.
    assert!(
        peak < baseline_rss + 80 * 1024,
        "peak RSS {} MiB, {} MiB before",
        peak / 1024,
        baseline_rss / 1024
    );

    // `dlq show` says what was kept.
    let id: i64 = sqlx::query_scalar("SELECT MIN(id) FROM dead_letters WHERE reason = 'oversized'")
        .fetch_one(&db)
        .await
        .unwrap();
    let out = std::process::Command::new(bridge_bin())
        .args(["dlq", "show", &id.to_string(), "-c", cfg.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .output()
        .expect("run cem-bridge");
    let out = (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.0, "{}", out.2);
    assert!(
        out.1.contains("first 64 KiB") && out.1.contains(&dlq),
        "dlq show: {}",
        out.1
    );
    cleanup(&setup).await;
}
