//! After an outage (issue 19 §1): the survey jobs and follow-up calls that were overdue when
//! the bridge started are said in the log when they are found, and again — with what became
//! of them (sent, suppressed `stale_event`, expired, …) — once none of them is pending.
//! `/api/summary` `catch_up` and the ops page show the report this task last read
//! ([`Shared`]): the store is read here only, and not at all once the work is done.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};

use crate::process::shutdown::Shutdown;
use crate::store::Store;
use crate::store::ops::OverdueReport;

/// The last report read, for the ops server: `None` until overdue work is found (and for
/// good when there was none).
#[derive(Clone, Default)]
pub struct Shared(Arc<Mutex<Option<OverdueReport>>>);

impl Shared {
    fn set(&self, r: OverdueReport) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
    }

    pub fn get(&self) -> Option<OverdueReport> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Work due more than this long before the start counts as overdue (a plain restart leaves a
/// few seconds' worth).
pub const OVERDUE_AFTER_MS: i64 = 10 * 60_000;

/// How often the report is read while overdue work is pending.
const POLL: Duration = Duration::from_secs(5);

/// Say what was overdue at `started`, then what became of it; keep the report in `shared`.
pub async fn run(store: Store, started: i64, shared: Shared, mut shutdown: Shutdown) {
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
    shared.set(report);
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
                shared.set(r);
                return;
            }
            Ok(r) => shared.set(r),
            Err(e) => warn!(error = %e, "cannot read the overdue work"),
        }
    }
}
