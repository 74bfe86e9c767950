//! After an outage (issue 19 §1): the survey jobs and follow-up calls that were overdue when
//! the bridge started are said in the log when they are found, and again — with what became
//! of them (sent, suppressed `stale_event`, expired, …) — once none of them is pending.
//! `/api/summary` `catch_up` and the ops page show the same report.

use std::time::Duration;

use tracing::{info, warn};

use crate::process::shutdown::Shutdown;
use crate::store::Store;

/// Work due more than this long before the start counts as overdue (a plain restart leaves a
/// few seconds' worth).
pub const OVERDUE_AFTER_MS: i64 = 10 * 60_000;

/// How often the report is read while overdue work is pending.
const POLL: Duration = Duration::from_secs(5);

/// Say what was overdue at `started`, then what became of it.
pub async fn run(store: Store, started: i64, mut shutdown: Shutdown) {
    let before = started - OVERDUE_AFTER_MS;
    let report = match store.overdue_report(before, started).await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "cannot read the overdue work at start");
            return;
        }
    };
    let found = report.found();
    if found == 0 {
        return;
    }
    info!(
        found,
        "found {found} overdue job(s) at start (due more than 10 min before it): taking them now; surveys past their stale time are suppressed stale_event (R-SRV-4), follow-up calls more than [followup] max_call_delay_days late expire"
    );
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.wait() => return,
        }
        match store.overdue_report(before, started).await {
            Ok(r) if r.pending() == 0 => {
                info!(
                    found,
                    "the overdue work found at start is done: {}",
                    r.line()
                );
                return;
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot read the overdue work"),
        }
    }
}
