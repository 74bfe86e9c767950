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
use cem_connectors::resilience::Resilience;
use cem_connectors::sink::{PeerSink, Sink};
use cem_pipeline::reid::{Caller, Purpose, VaultRecord};
use cem_pipeline::survey::idempotency_key;
use metrics::{counter, histogram};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::config::SchedulerConfig;
use crate::config::peers::ContactMode;
use crate::privacy::vault::{Access, Lookup, VaultCipher, with_member};
use crate::process::clock::Clock;
use crate::process::fault::{self, Point};
use crate::process::shutdown::Shutdown;
use crate::process::tally;
use crate::store::Store;
use crate::store::claim::{Claimed, ClaimedJob, JobOutcome};

/// A finished push on its way to the outcome recorder; its claim slot is released once the
/// outcome is recorded, so claimed-but-unrecorded jobs stay bounded.
struct Finished {
    job: ClaimedJob,
    /// The push's outcome, or the exclusion (reason, rule) that stopped it at send time.
    outcome: Result<SendOutcome, (&'static str, &'static str)>,
    _permit: OwnedSemaphorePermit,
}

/// Outcomes written per store transaction at most.
const RECORD_BATCH: usize = 256;

/// What the scheduler works with.
pub struct Scheduler {
    pub store: Store,
    pub sink: PeerSink,
    pub cfg: SchedulerConfig,
    /// The survey policy: its do-not-disturb window (R-DND-1) is read at each claim.
    pub policy: Arc<crate::process::live::Policy>,
    pub clock: Clock,
    /// This instance's lease owner name.
    pub owner: String,
    /// Woken when ingest created jobs.
    pub wake: Arc<Notify>,
    /// Makes each job's `contactRef`, or opens the mobile in `mobile` mode (R-ANO-7).
    pub vault: VaultCipher,
    pub contact_mode: ContactMode,
    /// Opt-out and staff lists as they are now (re-checked at send time, R-SRV-6).
    pub lists: Arc<crate::privacy::lists::Lists>,
}

/// Run until shutdown; in-flight pushes are finished and recorded before returning.
pub async fn run(scheduler: Scheduler, mut shutdown: Shutdown) {
    let Scheduler {
        store,
        sink,
        cfg,
        policy,
        clock,
        owner,
        wake,
        vault,
        contact_mode,
        lists,
    } = scheduler;
    let contact = Arc::new(Contact {
        store: store.clone(),
        vault,
        mode: contact_mode,
    });
    // `slots` bounds jobs claimed but not yet recorded; `http` bounds pushes in flight.
    let slots = Arc::new(Semaphore::new(cfg.claim_batch as usize * 2));
    let http = Arc::new(Semaphore::new(cfg.concurrency));
    let (done_tx, done_rx) = mpsc::channel::<Finished>(cfg.claim_batch as usize * 2);
    let recorder = tokio::spawn(record_outcomes(
        store.clone(),
        sink.clone(),
        clock.clone(),
        owner.clone(),
        done_rx,
    ));
    let mut tasks = JoinSet::new();
    info!(sink = %sink.describe(), owner = %owner, "scheduler started");
    loop {
        if shutdown.is_triggered() {
            break;
        }
        while tasks.try_join_next().is_some() {}
        let want = (slots.available_permits() as u32).min(cfg.claim_batch);
        let now = clock.now_ms();
        let claimed = if want == 0 {
            Claimed::default()
        } else {
            match store
                .claim_due(
                    &owner,
                    now,
                    now + cfg.lease_ms as i64,
                    want,
                    // R-DND-1: a touch blocks every key this long (rolling, R-DND-4).
                    Some(i64::from(policy.current().dnd_days) * 24 * 3_600_000),
                )
                .await
            {
                Ok(j) => j,
                Err(e) => {
                    warn!(error = %e, "cannot claim due jobs; retrying");
                    Claimed::default()
                }
            }
        };
        tally::add(
            tally::Kind::Suppressed,
            (claimed.suppressed + claimed.opted_out) as u64,
        );
        if claimed.suppressed > 0 {
            counter!("cem_bridge_survey_decisions_total", "decision" => "suppressed", "reason" => "dnd")
                .increment(claimed.suppressed as u64);
        }
        if claimed.opted_out > 0 {
            counter!("cem_bridge_survey_decisions_total", "decision" => "suppressed", "reason" => "opted_out")
                .increment(claimed.opted_out as u64);
        }
        if claimed.stale > 0 {
            counter!("cem_bridge_survey_decisions_total", "decision" => "suppressed", "reason" => "stale_event")
                .increment(claimed.stale as u64);
            tally::add(tally::Kind::Suppressed, claimed.stale as u64);
        }
        let got = claimed.jobs.len() + claimed.suppressed + claimed.opted_out + claimed.stale;
        let lists_now = lists.current();
        for job in claimed.jobs {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            if let Some(excluded) = send_time_exclusion(&job, &lists_now) {
                let _ = done_tx
                    .send(Finished {
                        job,
                        outcome: Err(excluded),
                        _permit: slot,
                    })
                    .await;
                continue;
            }
            let (sink, done_tx, http) = (sink.clone(), done_tx.clone(), http.clone());
            let contact = contact.clone();
            let span = crate::process::logctx::job_span(&job.job_id, &job.message_id);
            tasks.spawn(tracing::Instrument::instrument(
                async move {
                    let outcome = match http.acquire_owned().await {
                        Ok(_in_flight) => match contact.body(&job).await {
                            Ok(body) => {
                                sink.push(&idempotency_key(&job.job_id), body.as_bytes())
                                    .await
                            }
                            Err(detail) => SendOutcome::Retryable {
                                status: None,
                                retry_after: None,
                                detail,
                            },
                        },
                        Err(_) => return,
                    };
                    if matches!(outcome, SendOutcome::Accepted { .. }) {
                        fault::hit(Point::AfterPush);
                    }
                    let _ = done_tx
                        .send(Finished {
                            job,
                            outcome: Ok(outcome),
                            _permit: slot,
                        })
                        .await;
                },
                span,
            ));
        }
        if want > 0 && got < want as usize {
            // Every due job is claimed: wait for new work (or the next due time).
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(cfg.poll_interval_ms)) => {}
                _ = wake.notified() => {}
                _ = shutdown.wait() => {}
            }
        } else if want == 0 {
            // All slots taken: wait until an outcome is recorded.
            tokio::select! {
                _ = slots.clone().acquire_owned() => {}
                _ = shutdown.wait() => {}
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    drop(done_tx);
    let _ = recorder.await;
    info!("scheduler stopped");
}

/// How a dispatch reaches the patient (R-ANO-7).
struct Contact {
    store: Store,
    vault: VaultCipher,
    mode: ContactMode,
}

impl Contact {
    /// The stored anonymised payload plus the job's `contactRef` — or, in `mobile` mode, the
    /// mobile from the vault (an audited `survey_delivery` lookup).
    async fn body(&self, job: &ClaimedJob) -> Result<String, String> {
        match self.mode {
            ContactMode::Ref => Ok(with_member(
                &job.payload,
                "contactRef",
                &self.vault.contact_ref(&job.job_id),
            )),
            ContactMode::Mobile => {
                let Some(mk) = job.mobile_key.as_deref() else {
                    return Err("the job has no mobile to send to".into());
                };
                let access = Access {
                    caller: Caller::Cem,
                    purpose: Purpose::SurveyDelivery,
                    job_id: Some(&job.job_id),
                };
                match self.store.vault_lookup(&self.vault, access, mk).await {
                    Ok(Lookup::Found(VaultRecord {
                        mobile: Some(m), ..
                    })) => Ok(with_member(&job.payload, "mobile", &m)),
                    Ok(other) => Err(format!("vault lookup for the mobile: {}", other.outcome())),
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    }
}

/// R-SRV-6: the exclusions that can change between scheduling and sending — the opt-out and
/// staff lists (R-EXC-3/4) and a contact removed by a later update (R-EXC-7). Deaths cancel
/// pending jobs when they are recorded (R-EXC-1); do-not-disturb is checked at claim.
fn send_time_exclusion(
    job: &ClaimedJob,
    lists: &cem_pipeline::lists::ExclusionLists,
) -> Option<(&'static str, &'static str)> {
    let Some(mk) = job.mobile_key.as_deref() else {
        return Some(("no_mobile", "R-EXC-7"));
    };
    if job.dnd {
        lists.check(&job.patient_key, job.id_card_key.as_deref(), Some(mk))
    } else {
        // R-FUP-2: a follow-up questionnaire or reminder answers to the follow-up list.
        lists.check_followup(&job.patient_key, job.id_card_key.as_deref(), Some(mk))
    }
}

/// What the store should record for a push, given the job's attempts so far.
fn decide_outcome(
    limits: &Resilience,
    job: &ClaimedJob,
    outcome: &Result<SendOutcome, (&'static str, &'static str)>,
    now: i64,
) -> JobOutcome {
    let job_id = job.job_id.clone();
    let outcome = match outcome {
        Ok(o) => o,
        Err((reason, rule)) => {
            return JobOutcome::Suppressed {
                job_id,
                reason,
                rule,
            };
        }
    };
    match outcome {
        SendOutcome::Accepted { status } => JobOutcome::Sent {
            job_id,
            status: *status,
        },
        SendOutcome::Permanent { status, detail } => JobOutcome::Dead {
            job_id,
            status: Some(*status),
            reason: "rejected",
            error: detail.clone(),
        },
        SendOutcome::Retryable { status, detail, .. } => {
            retry_or_dead(limits, job, outcome, now, *status, detail.clone())
        }
        SendOutcome::BreakerOpen { .. } => retry_or_dead(
            limits,
            job,
            outcome,
            now,
            None,
            "not sent: the CEM sink's circuit breaker is open".into(),
        ),
    }
}

/// Retry after the resilience block's delay, or `dead(max_attempts)` when it says stop.
fn retry_or_dead(
    limits: &Resilience,
    job: &ClaimedJob,
    outcome: &SendOutcome,
    now: i64,
    status: Option<u16>,
    error: String,
) -> JobOutcome {
    let job_id = job.job_id.clone();
    let attempts = u32::try_from(job.attempts).unwrap_or(u32::MAX);
    match limits.retry_delay(outcome, &job.job_id, attempts) {
        Some(wait) => JobOutcome::Retry {
            job_id,
            next_at: now + wait.as_millis() as i64,
            status,
            error,
        },
        None => JobOutcome::Dead {
            job_id,
            status,
            reason: "max_attempts",
            error,
        },
    }
}

/// Collect finished pushes and record them in batches (one transaction each).
async fn record_outcomes(
    store: Store,
    sink: PeerSink,
    clock: Clock,
    owner: String,
    mut rx: mpsc::Receiver<Finished>,
) {
    let mut batch: Vec<Finished> = Vec::with_capacity(RECORD_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < RECORD_BATCH {
            match rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        let now = clock.now_ms();
        let outcomes: Vec<JobOutcome> = batch
            .iter()
            .map(|f| decide_outcome(sink.resilience(), &f.job, &f.outcome, now))
            .collect();
        match store.record_outcomes(&owner, now, &outcomes).await {
            Ok(applied) => {
                for ((f, o), ok) in batch.iter().zip(&outcomes).zip(applied) {
                    observe(f, o, ok, now);
                }
            }
            Err(e) => {
                // The leases expire and the jobs are claimed again; the idempotency key makes
                // a repeated push safe.
                warn!(jobs = batch.len(), error = %e, "cannot record push outcomes; the jobs will be retried after their lease");
            }
        }
        batch.clear(); // releases the permits
    }
}

/// Metrics and logs for one recorded outcome.
fn observe(f: &Finished, o: &JobOutcome, applied: bool, now: i64) {
    let job = &f.job;
    let _span = crate::process::logctx::job_span(&job.job_id, &job.message_id).entered();
    if !applied {
        debug!(job_id = %job.job_id, "outcome not recorded: the lease had passed to another claim");
        return;
    }
    match o {
        JobOutcome::Sent { status, .. } => {
            counter!("cem_bridge_survey_decisions_total", "decision" => "sent", "reason" => "sent")
                .increment(1);
            histogram!("cem_bridge_survey_send_delay_seconds", "template" => job.template.clone())
                .record(((now - job.due_at).max(0) as f64) / 1000.0);
            tally::add(tally::Kind::Pushed, 1);
            debug!(job_id = %job.job_id, message_id = %job.message_id, status, attempt = job.attempts, "survey pushed");
        }
        JobOutcome::Retry { next_at, error, .. } => {
            tally::add(tally::Kind::Retried, 1);
            debug!(job_id = %job.job_id, attempt = job.attempts, detail = %error, retry_in_ms = next_at - now, "survey push will be retried");
        }
        JobOutcome::Dead {
            reason,
            error,
            status,
            ..
        } => {
            counter!("cem_bridge_survey_decisions_total", "decision" => "dead", "reason" => *reason).increment(1);
            tally::add(tally::Kind::Failed, 1);
            warn!(job_id = %job.job_id, attempts = job.attempts, status = ?status, reason, detail = %error, "survey push given up; job is dead");
        }
        JobOutcome::Suppressed { reason, rule, .. } => {
            counter!("cem_bridge_survey_decisions_total", "decision" => "suppressed", "reason" => *reason)
                .increment(1);
            tally::add(tally::Kind::Suppressed, 1);
            debug!(job_id = %job.job_id, message_id = %job.message_id, reason, rule, "survey suppressed at send time");
        }
    }
}
