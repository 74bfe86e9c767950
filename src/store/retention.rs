//! Retention: deletes store rows older than `[retention]` allows, in small batches, on a
//! timer, so the store's disk use stays bounded. Pending survey jobs are never pruned; message
//! keys are kept at least 90 days (R-EVT-4, enforced by the config check).

use std::time::Duration;

use tracing::{debug, info, warn};

use crate::config::RetentionConfig;
use crate::process::shutdown::Shutdown;
use crate::store::ops::PrunedTable;
use crate::store::{Store, StoreError, now_ms};

const DAY_MS: i64 = 86_400_000;

/// Pause between batches: lets ingest take the (SQLite) write lock in between.
const BATCH_PAUSE: Duration = Duration::from_millis(10);

/// Rows deleted by one pass, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub inbox: u64,
    pub jobs: u64,
    pub audit: u64,
    pub dead_letters: u64,
    pub vault: u64,
    pub ticket_requests: u64,
    pub webhook_seen: u64,
    pub tombstones: u64,
    pub touches: u64,
    pub patients: u64,
}

impl Pruned {
    fn add(&mut self, table: PrunedTable, n: u64) {
        let slot = match table {
            PrunedTable::Inbox => &mut self.inbox,
            PrunedTable::Jobs => &mut self.jobs,
            PrunedTable::Audit => &mut self.audit,
            PrunedTable::DeadLetters => &mut self.dead_letters,
            PrunedTable::Vault => &mut self.vault,
            PrunedTable::TicketRequests => &mut self.ticket_requests,
            PrunedTable::WebhookSeen => &mut self.webhook_seen,
            PrunedTable::Tombstones => &mut self.tombstones,
            PrunedTable::Touches => &mut self.touches,
            PrunedTable::Patients => &mut self.patients,
        };
        *slot += n;
    }

    pub fn total(&self) -> u64 {
        self.inbox
            + self.jobs
            + self.audit
            + self.dead_letters
            + self.vault
            + self.ticket_requests
            + self.webhook_seen
            + self.tombstones
            + self.touches
            + self.patients
    }
}

/// The cutoff for `table` at `now`: rows older go; `None` keeps them forever (0 days).
fn cutoff(cfg: &RetentionConfig, table: PrunedTable, now: i64) -> Option<i64> {
    let days = match table {
        PrunedTable::Inbox => cfg.inbox_days,
        PrunedTable::Jobs => cfg.jobs_days,
        PrunedTable::Audit => cfg.audit_days,
        PrunedTable::DeadLetters => cfg.dead_letters_days,
        PrunedTable::Vault => cfg.vault_days,
        PrunedTable::TicketRequests => cfg.tickets_days,
        PrunedTable::Touches => cfg.touches_days,
        PrunedTable::Patients => cfg.patients_days,
        PrunedTable::WebhookSeen => return Some(now.saturating_sub(DAY_MS)),
        // A tombstone carries its own expiry (R-CAN-2: 7 days).
        PrunedTable::Tombstones => return Some(now),
    };
    (days != 0).then(|| now.saturating_sub(i64::from(days).saturating_mul(DAY_MS)))
}

/// The size cap of `table` (0 = none).
fn cap(cfg: &RetentionConfig, table: PrunedTable) -> u64 {
    match table {
        PrunedTable::Jobs => cfg.max_jobs_rows,
        PrunedTable::Audit => cfg.max_audit_rows,
        PrunedTable::DeadLetters => cfg.max_dead_letters_rows,
        PrunedTable::TicketRequests => cfg.max_tickets_rows,
        _ => 0,
    }
}

/// One pass at `now`: every table by age, batch after batch until a batch comes back short,
/// then by size (the oldest rows over the table's cap). Stops early (with what was done) when
/// shutdown is requested.
pub async fn prune_once(
    store: &Store,
    cfg: &RetentionConfig,
    now: i64,
    shutdown: &mut Shutdown,
) -> Result<Pruned, StoreError> {
    let mut pruned = Pruned::default();
    for table in PrunedTable::ALL {
        if let Some(cutoff) = cutoff(cfg, table, now) {
            loop {
                let n = store.prune_batch(table, cutoff, cfg.batch_rows).await?;
                pruned.add(table, n);
                if n < u64::from(cfg.batch_rows) || shutdown.sleep(BATCH_PAUSE).await {
                    break;
                }
            }
        }
        let max = cap(cfg, table);
        if max > 0 && !shutdown.is_triggered() {
            let mut over = store.rows_over_cap(table, max).await?;
            if over > 0 {
                warn!(
                    table = table.name(),
                    max_rows = max,
                    over,
                    "the table is over its size cap: pruning its oldest rows"
                );
            }
            while over > 0 {
                let n = store
                    .prune_oldest(table, over.min(u64::from(cfg.batch_rows)))
                    .await?;
                pruned.add(table, n);
                over = over.saturating_sub(n);
                if n == 0 || shutdown.sleep(BATCH_PAUSE).await {
                    break;
                }
            }
        }
        if shutdown.is_triggered() {
            break;
        }
    }
    Ok(pruned)
}

/// Prune at start and then every `interval_minutes` until shutdown.
pub async fn run(store: Store, cfg: RetentionConfig, mut shutdown: Shutdown) {
    let interval = Duration::from_secs(cfg.interval_minutes.saturating_mul(60));
    info!(settings = ?cfg, "retention started");
    loop {
        match prune_once(&store, &cfg, now_ms(), &mut shutdown).await {
            Ok(p) if p.total() > 0 => info!(
                inbox = p.inbox,
                survey_jobs = p.jobs,
                audit = p.audit,
                dead_letters = p.dead_letters,
                vault = p.vault,
                ticket_requests = p.ticket_requests,
                webhook_seen = p.webhook_seen,
                tombstones = p.tombstones,
                touches = p.touches,
                patients = p.patients,
                "retention pruned old rows"
            ),
            Ok(_) => debug!("retention: nothing to prune"),
            Err(e) => warn!(error = %e, "retention could not prune; trying again next interval"),
        }
        if shutdown.sleep(interval).await {
            break;
        }
    }
}
