//! Claims due survey jobs and pushes them to the CEM sink.
//!
//! A claim is a lease: `attempts + 1`, `locked_until = now + lease`. Outcomes:
//! accepted (2xx passing the success rule, or 409) → `sent`; retryable (5xx, 429, timeout,
//! 2xx with an error code) → retried after exponential backoff with jitter, honouring
//! `Retry-After`, up to `max_attempts`, then `dead(max_attempts)`; permanent (other 4xx) →
//! `dead(rejected)`. Every push carries `Idempotency-Key: sv:{jobId}` (R-SRV-5), so a push
//! repeated after a crash is recognised by the CEM.

use std::sync::Arc;
use std::time::Duration;

use cem_connectors::http_sink::SendOutcome;
use cem_pipeline::survey::idempotency_key;
use metrics::{counter, histogram};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::config::SchedulerConfig;
use crate::fault::{self, Point};
use crate::shutdown::Shutdown;
use crate::sink::CemSink;
use crate::store::{ClaimedJob, Store, now_ms};

/// Delay before attempt `attempts + 1`: initial × 2^(attempts−1), capped, with ±20 % jitter
/// derived from the job id (deterministic, so tests can reason about it).
pub fn backoff(cfg: &SchedulerConfig, job_id: &str, attempts: i64) -> Duration {
    let exp = u32::try_from(attempts.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
    let base = cfg
        .backoff_initial_ms
        .saturating_mul(1u64 << exp)
        .min(cfg.backoff_max_ms);
    let seed = job_id.bytes().fold(attempts as u64, |h, b| {
        h.wrapping_mul(31).wrapping_add(u64::from(b))
    });
    let jitter_pct = (seed % 41) as i64 - 20; // -20..=20
    let ms = (base as i64 + base as i64 * jitter_pct / 100).max(0) as u64;
    Duration::from_millis(ms)
}

/// Run until shutdown; in-flight pushes are finished before returning.
pub async fn run(
    store: Store,
    sink: CemSink,
    cfg: SchedulerConfig,
    owner: String,
    wake: Arc<Notify>,
    mut shutdown: Shutdown,
) {
    let permits = Arc::new(Semaphore::new(cfg.concurrency));
    let mut tasks = JoinSet::new();
    info!(sink = %sink.describe(), owner = %owner, "scheduler started");
    loop {
        if shutdown.is_triggered() {
            break;
        }
        while tasks.try_join_next().is_some() {}
        let free = permits.available_permits() as u32;
        let now = now_ms();
        let claimed = if free == 0 {
            Vec::new()
        } else {
            match store
                .claim_due(
                    &owner,
                    now,
                    now + cfg.lease_ms as i64,
                    free.min(cfg.claim_batch),
                )
                .await
            {
                Ok(j) => j,
                Err(e) => {
                    warn!(error = %e, "cannot claim due jobs; retrying");
                    Vec::new()
                }
            }
        };
        let got = claimed.len();
        for job in claimed {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let (store, sink, cfg, owner) =
                (store.clone(), sink.clone(), cfg.clone(), owner.clone());
            tasks.spawn(async move {
                push_one(&store, &sink, &cfg, &owner, job).await;
                drop(permit);
            });
        }
        if got == 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(cfg.poll_interval_ms)) => {}
                _ = wake.notified() => {}
                _ = tasks.join_next(), if !tasks.is_empty() => {}
                _ = shutdown.wait() => {}
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    info!("scheduler stopped");
}

async fn push_one(
    store: &Store,
    sink: &CemSink,
    cfg: &SchedulerConfig,
    owner: &str,
    job: ClaimedJob,
) {
    let key = idempotency_key(&job.job_id);
    let outcome = sink.push(&key, job.payload.as_bytes()).await;
    counter!("cem_bridge_sink_requests_total", "sink" => "cem", "outcome" => outcome.label())
        .increment(1);
    let now = now_ms();
    let result = match &outcome {
        SendOutcome::Accepted { status } => {
            fault::hit(Point::AfterPush);
            let r = store.mark_sent(&job.job_id, owner, now, *status).await;
            if let Ok(true) = r {
                counter!("cem_bridge_survey_decisions_total", "decision" => "sent", "reason" => "sent").increment(1);
                histogram!("cem_bridge_survey_send_delay_seconds", "template" => job.template.clone())
                    .record(((now - job.due_at).max(0) as f64) / 1000.0);
                info!(job_id = %job.job_id, message_id = %job.message_id, status, attempt = job.attempts, "survey pushed");
            }
            r.map(|_| ())
        }
        SendOutcome::Retryable {
            status,
            retry_after,
            detail,
        } => {
            if job.attempts >= i64::from(cfg.max_attempts) {
                warn!(job_id = %job.job_id, attempts = job.attempts, detail = %detail, "survey push failed too often; job is dead");
                counter!("cem_bridge_survey_decisions_total", "decision" => "dead", "reason" => "max_attempts").increment(1);
                store
                    .mark_dead(&job.job_id, owner, now, *status, "max_attempts", detail)
                    .await
            } else {
                let wait = retry_after
                    .map(|r| r.max(Duration::from_millis(cfg.backoff_initial_ms)))
                    .unwrap_or_else(|| backoff(cfg, &job.job_id, job.attempts));
                debug!(job_id = %job.job_id, attempt = job.attempts, detail = %detail, retry_in_ms = wait.as_millis() as u64, "survey push will be retried");
                store
                    .reschedule(
                        &job.job_id,
                        owner,
                        now,
                        now + wait.as_millis() as i64,
                        *status,
                        detail,
                    )
                    .await
            }
        }
        SendOutcome::Permanent { status, detail } => {
            warn!(job_id = %job.job_id, status, detail = %detail, "CEM refused the survey push; job is dead");
            counter!("cem_bridge_survey_decisions_total", "decision" => "dead", "reason" => "rejected").increment(1);
            store
                .mark_dead(&job.job_id, owner, now, Some(*status), "rejected", detail)
                .await
        }
    };
    if let Err(e) = result {
        // The lease expires and the job is claimed again; the idempotency key makes that safe.
        warn!(job_id = %job.job_id, error = %e, "cannot record the push outcome; the job will be retried after its lease");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered_within_20_percent() {
        let cfg = SchedulerConfig {
            backoff_initial_ms: 1000,
            backoff_max_ms: 8000,
            ..Default::default()
        };
        for (attempts, base) in [(1, 1000u64), (2, 2000), (3, 4000), (4, 8000), (9, 8000)] {
            let d = backoff(&cfg, "job-a", attempts).as_millis() as u64;
            assert!(
                d >= base * 8 / 10 && d <= base * 12 / 10,
                "attempt {attempts}: {d}"
            );
        }
        assert_eq!(backoff(&cfg, "x", 2), backoff(&cfg, "x", 2));
    }
}
