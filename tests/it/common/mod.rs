//! Test harness: unique broker names per test, an in-process CEM recorder, a bridge started
//! in-process (or as a child process for crash tests), and helpers that read what the queues
//! and the store really hold. Only 127.0.0.1 is contacted.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cem_bridge::app::Secrets;

pub mod bridge;
pub mod broker;
pub mod db;
pub mod pii;
pub mod recorder;

pub use bridge::*;
pub use broker::*;
pub use db::*;
pub use pii::*;
pub use recorder::*;

pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const TEST_KEY: &[u8] = b"0123456789abcdef0123456789abcdef-test-key";
/// The vault key of the bridges under test (32 bytes), and as the 64 hex digits of the env.
pub const TEST_VAULT_KEY: [u8; 32] = [0x5a; 32];
pub const TEST_VAULT_KEY_HEX: &str =
    "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
/// The token the test CEM presents at `POST /contact/resolve`.
pub const TEST_RESOLVE_TOKEN: &str = "cem-resolve-token-for-tests-0123456789";

/// Where the bridges under test start their clock: the day after the samples' visits
/// (2026-11-20), so outpatient and inpatient surveys are due at once and not yet stale.
pub const CLOCK_START: &str = "2026-11-21T10:30:00+08:00";

/// The secrets every in-process bridge under test starts with.
pub fn test_secrets() -> Secrets {
    Secrets {
        pseudonym_key: Some(TEST_KEY.to_vec()),
        vault_key: Some(TEST_VAULT_KEY.to_vec()),
        resolve_token: Some(TEST_RESOLVE_TOKEN.to_string()),
        webhook_secret: Some(TEST_WEBHOOK_SECRET.to_vec()),
        callcenter_secret: Some(TEST_CALLCENTER_SECRET.to_vec()),
        ..Default::default()
    }
}

/// The secret the test call center signs its result callbacks with.
pub const TEST_CALLCENTER_SECRET: &[u8] = b"callcenter-secret-for-tests-4567";

/// The secret the test CEM signs ticket webhooks with.
pub const TEST_WEBHOOK_SECRET: &[u8] = b"cem-webhook-secret-for-tests-0123";

pub fn amqp_url() -> String {
    std::env::var("AMQP_ADDR").unwrap_or_else(|_| AMQP.to_string())
}

/// A name unique to this test run: `{prefix}-{pid}-{nanos}`.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// The outpatient registration sample (one survey, R-SRV-1).
pub const A04_SAMPLE: &str = "hl7v2/adt_a04_outpatient_registration.hl7";

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/samples")
        .join(rel)
}

pub fn read_fixture(rel: &str) -> Vec<u8> {
    std::fs::read(fixture(rel)).unwrap_or_else(|e| panic!("fixture {rel}: {e}"))
}

/// A fresh scratch directory under the system temp dir.
pub fn scratch_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir()
        .join("cem-bridge-tests")
        .join(unique(name));
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// `f`'s output, or a panic naming `what` after `secs`: a step that never answers fails the
/// test saying which step it was, instead of running into the harness's timeout silently.
pub async fn within<T>(secs: u64, what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), f).await {
        Ok(v) => v,
        Err(_) => panic!("no answer within {secs} s: {what}"),
    }
}

/// Poll `f` until it returns `Some`, or panic after `secs` with `what`.
pub async fn wait_for<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        // A probe that never answers (a broker call stuck under load) must not hang the test.
        let left = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1);
        match tokio::time::timeout(left, f()).await {
            Ok(Some(v)) => return v,
            Ok(None) => {}
            Err(_) => panic!("timed out after {secs} s waiting for: {what} (the probe hung)"),
        }
        if Instant::now() > deadline {
            panic!("timed out after {secs} s waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
