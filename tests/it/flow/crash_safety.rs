//! Crash safety (issue 3 §10, DESIGN "Nothing lost, nothing twice"): the bridge runs as a child
//! process and is stopped abruptly — at a fault point, or by SIGKILL mid-stream — then
//! restarted. We count what the CEM recorder accepted: every survey exactly once.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;
use cem_bridge::store::{Store, StoreOptions};

fn crash_setup(name: &str, cem: &Recorder) -> Setup {
    let mut s = Setup::new(name, &cem.url());
    // Short lease so a job claimed by the crashed process is claimed again quickly.
    s.scheduler = "poll_interval_ms = 50\nlease_ms = 1000\n".into();
    s
}

async fn open_store(s: &Setup) -> Store {
    Store::open(
        &format!("sqlite://{}", s.db.display()),
        &StoreOptions::default(),
    )
    .await
    .expect("store")
}

/// Every idempotency key accepted (2xx) exactly once, and how many keys there are.
fn accepted_once_each(cem: &Recorder) -> usize {
    let mut per_key: HashMap<String, usize> = HashMap::new();
    for r in cem.accepted() {
        *per_key
            .entry(r.idempotency_key.unwrap_or_default())
            .or_default() += 1;
    }
    for (k, n) in &per_key {
        assert_eq!(*n, 1, "survey {k} was accepted {n} times");
    }
    per_key.len()
}

async fn wait_accepted(cem: &Recorder, n: usize, secs: u64) {
    let what = format!("{n} accepted surveys");
    wait_for(secs, &what, || {
        let cem = cem.clone();
        async move {
            let got = cem.accepted().len();
            (got >= n).then_some(())
        }
    })
    .await;
}

/// Killed after the store commit and before the ack: the broker redelivers, dedupe absorbs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_commit_and_ack_loses_nothing_and_pushes_nothing_twice() {
    let cem = Recorder::start().await;
    let setup = crash_setup("after-commit", &cem);
    let cfg = setup.write_config();
    let log = setup.dir.join("bridge.log");
    // Declare the queue, then load it before the crashing run so the first batch is full.
    let b = setup.start().await;
    setup.wait_declared().await;
    b.shutdown().await;
    publish_many(&setup.queue, &registrations(40, "ac")).await;

    let mut child = spawn_bridge(&cfg, Some("after_commit:1"), &log);
    let status = wait_exit(&mut child, 30).await;
    assert_eq!(
        status.code(),
        Some(86),
        "exited at the fault point; log: {}",
        log.display()
    );
    let store = open_store(&setup).await;
    let committed = store.inbox_count().await.unwrap();
    assert!(committed >= 1, "the crashed run committed a batch");
    store.close().await;
    let unacked = wait_for(10, "unacked deliveries back on the queue", || {
        let q = setup.queue.clone();
        async move { queue_depth(&q).await.filter(|&d| d == 40) }
    })
    .await;
    assert_eq!(unacked, 40, "nothing was acked before the crash");

    let mut child = spawn_bridge(&cfg, None, &log);
    wait_accepted(&cem, 40, 30).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(accepted_once_each(&cem), 40, "every survey exactly once");
    // The crashed run's scheduler may have pushed a committed job before the process died
    // and before it recorded the outcome: the restart pushes it again under the same key, and
    // the CEM answers 409 (already have it). Any repeat must be exactly that.
    let repeats: Vec<Recorded> = cem
        .requests()
        .into_iter()
        .filter(|r| !(200..300).contains(&r.status))
        .collect();
    assert!(
        repeats.iter().all(|r| r.status == 409),
        "a repeated request is only ever the same idempotency key answered 409: {repeats:?}"
    );
    assert_eq!(
        cem.requests().len(),
        40 + repeats.len(),
        "no other repeated HTTP request"
    );
    let store = open_store(&setup).await;
    let audit = store.audit(None).await.unwrap();
    let dups = audit.iter().filter(|a| a.action == "duplicate").count() as i64;
    assert_eq!(
        dups, committed,
        "each redelivery of a committed message counted as duplicate"
    );
    assert!(
        store
            .jobs()
            .await
            .unwrap()
            .iter()
            .all(|j| j.status == "sent")
    );
    store.close().await;
    assert_eq!(queue_depth(&setup.queue).await, Some(0));
    cleanup(&setup).await;
}

/// Killed after consuming and before the commit: nothing durable, everything redelivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_consume_and_commit_loses_nothing() {
    let cem = Recorder::start().await;
    let setup = crash_setup("before-commit", &cem);
    let cfg = setup.write_config();
    let log = setup.dir.join("bridge.log");
    let b = setup.start().await;
    setup.wait_declared().await;
    b.shutdown().await;
    publish_many(&setup.queue, &registrations(20, "bc")).await;

    let mut child = spawn_bridge(&cfg, Some("before_commit:1"), &log);
    assert_eq!(wait_exit(&mut child, 30).await.code(), Some(86));
    let store = open_store(&setup).await;
    assert_eq!(
        store.inbox_count().await.unwrap(),
        0,
        "the crashed transaction left nothing"
    );
    store.close().await;

    let mut child = spawn_bridge(&cfg, None, &log);
    wait_accepted(&cem, 20, 30).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(accepted_once_each(&cem), 20);
    assert_eq!(cem.requests().len(), 20);
    cleanup(&setup).await;
}

/// Killed after the CEM accepted a push and before the job was marked sent: the job is
/// claimed again after its lease and re-sent with the same idempotency key, which the CEM
/// answers with 409; the bridge records that as sent. The CEM took each survey once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_push_before_mark_sent_resends_with_the_same_key_only() {
    let cem = Recorder::start().await;
    let setup = crash_setup("after-push", &cem);
    let cfg = setup.write_config();
    let log = setup.dir.join("bridge.log");
    let b = setup.start().await;
    setup.wait_declared().await;
    b.shutdown().await;
    publish_many(&setup.queue, &registrations(5, "ap")).await;

    let mut child = spawn_bridge(&cfg, Some("after_push:1"), &log);
    assert_eq!(wait_exit(&mut child, 30).await.code(), Some(86));
    let first = cem.accepted();
    assert!(!first.is_empty(), "the crashed run pushed at least once");

    let mut child = spawn_bridge(&cfg, None, &log);
    let store_path = setup.clone();
    wait_for(30, "all 5 jobs sent", || {
        let s = store_path.clone();
        async move {
            let store = open_store(&s).await;
            let jobs = store.jobs().await.ok()?;
            store.close().await;
            (jobs.len() == 5 && jobs.iter().all(|j| j.status == "sent")).then_some(())
        }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        accepted_once_each(&cem),
        5,
        "the CEM accepted each survey once"
    );
    let repeats: Vec<_> = cem
        .requests()
        .into_iter()
        .filter(|r| r.status == 409)
        .collect();
    assert!(
        !repeats.is_empty(),
        "the in-flight push was repeated with its key"
    );
    for r in repeats {
        assert!(
            first.iter().any(|f| f.idempotency_key == r.idempotency_key),
            "only a push that was in flight at the crash is repeated"
        );
    }
    cleanup(&setup).await;
}

/// SIGKILL at an arbitrary moment while 300 messages stream through, then restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_restart_gives_every_survey_exactly_once() {
    let cem = Recorder::start().await;
    let setup = crash_setup("sigkill", &cem);
    let cfg = setup.write_config();
    let log = setup.dir.join("bridge.log");
    let b = setup.start().await;
    setup.wait_declared().await;
    b.shutdown().await;
    publish_many(&setup.queue, &registrations(300, "sk")).await;

    let mut child = spawn_bridge(&cfg, None, &log);
    wait_accepted(&cem, 30, 30).await;
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let before = cem.accepted().len();
    let mut child = spawn_bridge(&cfg, None, &log);
    wait_accepted(&cem, 300, 60).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        accepted_once_each(&cem),
        300,
        "killed after {before} accepted"
    );
    cleanup(&setup).await;
}

/// SIGTERM: the bridge finishes in-flight work and exits 0. Its debug-level log of every shared
/// sample (good and bad) holds no personal value (R-ANO-8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly_and_debug_logs_hold_no_personal_data() {
    let cem = Recorder::start().await;
    let setup = crash_setup("sigterm", &cem);
    let cfg = setup.write_config();
    let log = setup.dir.join("bridge.log");
    let mut child = spawn_bridge_at_level(&cfg, None, &log, "debug");
    setup.wait_declared().await;
    let mut samples = Vec::new();
    for dir in ["hl7v2", "bad", "xml", "json"] {
        for entry in std::fs::read_dir(fixture(dir)).unwrap() {
            samples.push(std::fs::read(entry.unwrap().path()).unwrap());
        }
    }
    publish_many(&setup.queue, &samples).await;
    let n = samples.len() as u32;
    let dlq = setup.dlq();
    wait_for(30, "every sample processed", || {
        let (q, dlq) = (setup.queue.clone(), dlq.clone());
        async move {
            let left = queue_depth(&q).await?;
            let dead = queue_depth(&dlq).await?;
            (left == 0 && dead >= 1 && dead < n).then_some(())
        }
    })
    .await;
    publish_many(&setup.queue, &registrations(10, "st")).await;
    wait_accepted(&cem, 10, 60).await;
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(ok.success());
    let status = wait_exit(&mut child, 30).await;
    assert!(
        status.success(),
        "exit status {status:?}; log: {}",
        log.display()
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("cem-bridge stopped"), "{text}");
    assert!(text.contains("DEBUG"), "the log ran at debug level");
    for pii in SAMPLE_PII {
        assert!(
            !text.contains(pii),
            "R-ANO-8: {pii:?} in the log {}",
            log.display()
        );
    }
    cleanup(&setup).await;
}

/// A child bridge that is killed when the test ends, also when an assertion fails first.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Issue 22 §2: the store commit itself fails (`fail_commit`: PostgreSQL's backend terminated,
/// SQLite's COMMIT refused) with no end in sight. Nothing of the batch is acked — not even as a
/// dead letter, though the store answers other queries — and nothing is stored; a SIGTERM then
/// leaves every delivery on the queue. Restarted with commits failing three times (the pool
/// must get over the broken transaction) and then working, the bridge processes each message
/// once and pushes each survey once.
async fn failing_commit_acks_nothing(db: Db, name: &str) {
    let cem = Recorder::start().await;
    let mut setup = crash_setup(name, &cem);
    setup.store_url = Some(db.url.clone());
    let cfg = setup.write_config();
    let log = setup.dir.join("bridge.log");
    let b = setup.start().await;
    setup.wait_declared().await;
    b.shutdown().await;
    const N: u32 = 20;
    publish_many(&setup.queue, &registrations(N as usize, name)).await;

    // Past the three failures after which a batch the store keeps refusing is written message
    // by message, and past that split's own three (a message then dead-lettered as poison).
    let mut child = KillOnDrop(spawn_bridge(&cfg, Some("fail_commit:1000"), &log));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let held = loop {
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        if log_text.contains("fault injection: fail_commit (7 of 1000)") {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let store = db.open().await;
    assert_eq!(store.inbox_count().await.unwrap(), 0, "no message stored");
    assert!(store.jobs().await.unwrap().is_empty(), "no job stored");
    store.close().await;
    assert!(cem.requests().is_empty(), "nothing pushed");
    sigterm(&child.0);
    let status = wait_exit(&mut child.0, 30).await;
    assert!(status.success(), "{status:?}; log: {}", log.display());
    // The deliveries the stopped bridge held come back to the queue (give the broker 10 s).
    let mut back = None;
    for _ in 0..100 {
        back = queue_depth(&setup.queue).await;
        if back == Some(N) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        back,
        Some(N),
        "nothing acked while the commit failed; log: {}",
        log.display()
    );
    assert!(held, "the held batch was retried through 7 failed commits");
    assert_no_dead_letters(&setup).await;

    // Restarted: three more failed commits, then the store takes the batch.
    let child = KillOnDrop(spawn_bridge(&cfg, Some("fail_commit:3"), &log));
    wait_accepted(&cem, N as usize, 60).await;
    let store = db.open().await;
    wait_for(30, "every job recorded as sent", || {
        let store = store.clone();
        async move {
            let jobs = store.jobs().await.ok()?;
            (jobs.len() == N as usize && jobs.iter().all(|j| j.status == "sent")).then_some(())
        }
    })
    .await;
    drop(child);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("fault injection: fail_commit (3 of 3)"),
        "the restarted bridge's commits failed too: {text}"
    );
    assert!(
        !text.contains("dead-lettering it as poison"),
        "a failed commit blamed no message: {text}"
    );
    assert_eq!(accepted_once_each(&cem), N as usize, "every survey once");
    assert_eq!(cem.requests().len(), N as usize, "no push repeated");
    assert_eq!(
        store.inbox_count().await.unwrap(),
        i64::from(N),
        "every message stored once"
    );
    let audit = store.audit(None).await.unwrap();
    assert_eq!(
        audit.iter().filter(|a| a.action == "duplicate").count(),
        0,
        "no message was stored before the restart"
    );
    store.close().await;
    assert_eq!(
        queue_depth(&setup.queue).await,
        Some(0),
        "every message acked"
    );
    assert_no_dead_letters(&setup).await;
    cleanup(&setup).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_failing_commit_acks_nothing_and_recovers_exactly_once() {
    failing_commit_acks_nothing(Db::sqlite("fail-commit").await, "fcs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_failing_commit_acks_nothing_and_recovers_exactly_once() {
    failing_commit_acks_nothing(Db::postgres("fail_commit").await, "fcp").await;
}

/// A child bridge whose CEM pushes may take a minute (`timeout_ms`), stopped by SIGTERM after
/// `shutdown_timeout_s` at most: (setup, config file, log file).
fn shutdown_setup(
    name: &str,
    cem: &Recorder,
    shutdown_timeout_s: Option<u64>,
) -> (Setup, std::path::PathBuf, std::path::PathBuf) {
    let mut setup = crash_setup(name, cem);
    if let Some(s) = shutdown_timeout_s {
        setup.extra_top = format!("shutdown_timeout_s = {s}\n");
    }
    let cfg = setup.dir.join("bridge.toml");
    let text = setup.config_text();
    assert!(text.contains("timeout_ms = 2000"));
    std::fs::write(
        &cfg,
        text.replace("timeout_ms = 2000", "timeout_ms = 60000"),
    )
    .unwrap();
    let log = setup.dir.join("bridge.log");
    (setup, cfg, log)
}

/// SIGTERM the child; the instant it was sent.
fn sigterm(child: &std::process::Child) -> std::time::Instant {
    let at = std::time::Instant::now();
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(ok.success());
    at
}

async fn wait_logged(log: &std::path::Path, text: &str, secs: u64) {
    wait_for(secs, text, || {
        let seen = std::fs::read_to_string(log).is_ok_and(|t| t.contains(text));
        async move { seen.then_some(()) }
    })
    .await;
}

/// Issue 22 §4: the CEM holds a push past `shutdown_timeout_s`. SIGTERM stops intake at once
/// (what is published afterwards stays on the queue), waits for the push up to the limit, then
/// exits non-zero without it: the job is still pending, nothing after SIGTERM was acked. The
/// restarted bridge sends the held survey again under its key (the CEM answers 409) and the
/// rest once: nothing lost, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_shutdown_timeout_exits_non_zero_having_acked_nothing_uncommitted() {
    let cem = Recorder::start().await;
    cem.script_slow(Duration::from_secs(60));
    let (setup, cfg, log) = shutdown_setup("shutdown-late", &cem, Some(2));
    let mut child = KillOnDrop(spawn_bridge(&cfg, None, &log));
    setup.wait_declared().await;
    // Six patients of their own (do-not-disturb joins no two of them).
    let messages = registrations(6, "sl");
    publish_many(&setup.queue, &messages[..1]).await;
    wait_for(30, "the push the CEM holds", || {
        let n = cem.requests().len();
        async move { (n == 1).then_some(()) }
    })
    .await;

    let sent = sigterm(&child.0);
    wait_logged(&log, "shutdown requested", 10).await;
    publish_many(&setup.queue, &messages[1..]).await;
    let status = wait_exit(&mut child.0, 30).await;
    let took = sent.elapsed();
    assert_eq!(
        status.code(),
        Some(1),
        "non-zero past the limit; log: {}",
        log.display()
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "exited {took:?} after SIGTERM, shutdown_timeout_s = 2"
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("shutdown did not finish within shutdown_timeout_s = 2 s"),
        "{text}"
    );
    assert!(!text.contains("cem-bridge stopped"), "{text}");
    let store = open_store(&setup).await;
    let jobs = store.jobs().await.unwrap();
    store.close().await;
    assert_eq!(jobs.len(), 1, "only the message taken before SIGTERM");
    assert_eq!(jobs[0].status, "pending", "the held push was not recorded");
    assert_eq!(
        queue_depth(&setup.queue).await,
        Some(5),
        "nothing published after SIGTERM was taken"
    );

    let child = KillOnDrop(spawn_bridge(&cfg, None, &log));
    wait_for(30, "all 6 jobs sent", || {
        let s = setup.clone();
        async move {
            let store = open_store(&s).await;
            let jobs = store.jobs().await.ok()?;
            store.close().await;
            (jobs.len() == 6 && jobs.iter().all(|j| j.status == "sent")).then_some(())
        }
    })
    .await;
    drop(child);
    assert_eq!(accepted_once_each(&cem), 6, "every survey accepted once");
    let held = cem.requests()[0].idempotency_key.clone();
    let repeats: Vec<_> = cem
        .requests()
        .into_iter()
        .filter(|r| r.status == 409)
        .collect();
    assert_eq!(repeats.len(), 1, "the held push alone was sent again");
    assert_eq!(repeats[0].idempotency_key, held, "under the same key");
    assert_eq!(queue_depth(&setup.queue).await, Some(0));
    cleanup(&setup).await;
}

/// Issue 22 §4: a push the CEM answers after 1.5 s, SIGTERM while it is held: the bridge waits
/// for it, records it and exits 0 within `shutdown_timeout_s`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_push_in_flight_finish_and_exits_zero() {
    let cem = Recorder::start().await;
    cem.script_slow(Duration::from_millis(1500));
    let (setup, cfg, log) = shutdown_setup("shutdown-wait", &cem, Some(10));
    let mut child = KillOnDrop(spawn_bridge(&cfg, None, &log));
    setup.wait_declared().await;
    publish_many(&setup.queue, &registrations(1, "sw")).await;
    wait_for(30, "the push the CEM holds", || {
        let n = cem.requests().len();
        async move { (n == 1).then_some(()) }
    })
    .await;
    let sent = sigterm(&child.0);
    let status = wait_exit(&mut child.0, 30).await;
    let took = sent.elapsed();
    assert!(status.success(), "{status:?}; log: {}", log.display());
    assert!(
        took >= Duration::from_millis(1000) && took < Duration::from_secs(10),
        "exited {took:?} after SIGTERM: after the held push, within the limit"
    );
    let store = open_store(&setup).await;
    let jobs = store.jobs().await.unwrap();
    store.close().await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].status, "sent", "the push in flight was recorded");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("cem-bridge stopped"), "{text}");
    assert_eq!(cem.requests().len(), 1);
    cleanup(&setup).await;
}

/// Issue 22 §4: with nothing slow, SIGTERM (default `shutdown_timeout_s`) exits 0 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_nothing_slow_exits_zero_quickly() {
    let cem = Recorder::start().await;
    let (setup, cfg, log) = shutdown_setup("shutdown-quick", &cem, None);
    let mut child = KillOnDrop(spawn_bridge(&cfg, None, &log));
    setup.wait_declared().await;
    publish_many(&setup.queue, &registrations(5, "sq")).await;
    wait_accepted(&cem, 5, 30).await;
    let sent = sigterm(&child.0);
    let status = wait_exit(&mut child.0, 30).await;
    let took = sent.elapsed();
    assert!(status.success(), "{status:?}; log: {}", log.display());
    assert!(
        took < Duration::from_secs(3),
        "exited {took:?} after SIGTERM"
    );
    assert_eq!(queue_depth(&setup.queue).await, Some(0));
    assert_eq!(accepted_once_each(&cem), 5);
    cleanup(&setup).await;
}
