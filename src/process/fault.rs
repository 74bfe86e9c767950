//! Crash and failure points for the crash-safety tests.
//!
//! Inert unless `CEM_BRIDGE_FAULT` is set, e.g. `after_commit:2` makes the process exit right
//! after its 2nd ingest commit and before the acks — as if the machine lost power there. The
//! integration tests use it to prove that no survey is lost and none is pushed twice.
//!
//! `fail_commit:n` is a failure, not an exit: the first `n` ingest commits fail with the
//! database's own error (the store breaks the transaction for real just before committing,
//! [`crate::store::StoreTx::fail_commit_if_faulted`]), later ones work again. It proves that a
//! batch whose commit fails is not acked.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Named crash points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// Ingest: deliveries received and decided, before the store transaction commits.
    BeforeCommit,
    /// Ingest: the transaction committed, before any ack.
    AfterCommit,
    /// Scheduler: the CEM accepted the push, before the job is marked sent.
    AfterPush,
    /// Ingest: the commit of the batch's transaction fails (see [`fails`]); no exit.
    FailCommit,
}

impl Point {
    fn name(self) -> &'static str {
        match self {
            Self::BeforeCommit => "before_commit",
            Self::AfterCommit => "after_commit",
            Self::AfterPush => "after_push",
            Self::FailCommit => "fail_commit",
        }
    }
}

fn configured() -> &'static Option<(String, u64)> {
    static CFG: OnceLock<Option<(String, u64)>> = OnceLock::new();
    CFG.get_or_init(|| {
        let v = std::env::var("CEM_BRIDGE_FAULT").ok()?;
        let (name, n) = v.split_once(':').unwrap_or((v.as_str(), "1"));
        Some((name.to_string(), n.parse().unwrap_or(1)))
    })
}

/// Exit the process abruptly if this point is the configured one and its count is reached.
pub fn hit(point: Point) {
    static HITS: AtomicU64 = AtomicU64::new(0);
    if let Some((name, n)) = configured()
        && name == point.name()
        && HITS.fetch_add(1, Ordering::SeqCst) + 1 >= *n
    {
        eprintln!("cem-bridge: fault injection: exiting at {}", point.name());
        std::process::exit(86);
    }
}

/// Whether a failure point fails this time: `fail_commit:n` fails the first `n` times it is
/// reached, then never again.
pub fn fails(point: Point) -> bool {
    static HITS: AtomicU64 = AtomicU64::new(0);
    let Some((name, n)) = configured() else {
        return false;
    };
    if name != point.name() {
        return false;
    }
    let k = HITS.fetch_add(1, Ordering::SeqCst) + 1;
    if k > *n {
        return false;
    }
    eprintln!("cem-bridge: fault injection: {} ({k} of {n})", point.name());
    true
}
