//! One task per source: receive deliveries, decide, write the batch in one store transaction,
//! and only then ack (multiple-ack up to the last tag). Bad input is dead-lettered with a reason.
//!
//! Order after a commit: dead letters are republished to the dead-letter exchange with their
//! reason headers (confirmed), then everything up to the batch's last tag is acked at once. A
//! crash anywhere before the ack means redelivery; the dedupe record turns that into a counted
//! `duplicate` with no second effect.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cem_connectors::amqp::{AmqpSource, AmqpSourceConfig, InboundMessage, QueueType};
use cem_pipeline::anonymize::{Pseudonymizer, hex};
use cem_pipeline::decode::{Charset, DecodeOptions, Format, decode};
use cem_pipeline::event::{EventKind, PatientEvent};
use cem_pipeline::followup::FollowupDecision;
use cem_pipeline::mapping::Outcome;
use cem_pipeline::reason::{DeadLetterReason, Rejection};
use cem_pipeline::reid::entries_for;
use cem_pipeline::survey::{SurveyContext, SurveyDecision, decide};
use jiff::tz::TimeZone;
use metrics::{counter, histogram};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::clock::Clock;
use crate::config::{QueueTypeConfig, SourceConfig};
use crate::fault::{self, Point};
use crate::ops::SourceHealth;
use crate::shutdown::Shutdown;
use crate::store::{
    AuditEntry, DeadLetterEntry, InboxResult, JobInsert, NewJob, Store, StoreError,
};

/// How long a cancel that came before its registration is remembered (R-CAN-2).
const TOMBSTONE_MS: i64 = 7 * 24 * 3_600_000;

/// What ingest needs from the runtime.
pub struct IngestContext {
    /// Each source's compiled mappings, swapped whole by a reload.
    pub mappings: Arc<crate::reload::Mappings>,
    pub store: Store,
    pub pseudo: Pseudonymizer,
    /// Seals what the vault keeps and dead-letter bodies (R-ANO-6, R-ANO-8).
    pub vault: crate::vault::VaultCipher,
    pub tenant: String,
    /// The survey policy (`[surveys]`), swapped whole by a config reload.
    pub policy: Arc<crate::reload::Policy>,
    /// Opt-out and staff lists (R-EXC-3, R-EXC-4), swapped whole on reload.
    pub lists: Arc<crate::lists::Lists>,
    /// How each field is treated in the CEM dispatch (R-ANO-1).
    pub fields: cem_pipeline::anonymize::CemFieldPolicy,
    pub zone: TimeZone,
    pub clock: Clock,
    /// Woken after a commit that created jobs, so due jobs go out without waiting for a poll.
    pub scheduler_wake: Arc<Notify>,
    /// Where each source says whether it is consuming (read by `/ready`).
    pub health: SourceHealth,
    /// Follow-up planning (R-FUP-1..4); `None` when the ticket loop (which sends the calls) is
    /// not configured or `[followup] enabled = false`.
    pub followup: Option<crate::followups::FollowupCtx>,
}

/// A delivery after the pure work: decoded and decided, or rejected.
struct Prepared {
    msg: InboundMessage,
    received: Instant,
    hash: String,
    result: Result<Mapped, Rejection>,
}

/// What the pure work made of a delivery.
enum Mapped {
    Event(Format, Box<PatientEvent>, SurveyDecision, FollowupDecision),
    /// The mapping said `ignore`: ack, count, audit, no effect.
    Ignored {
        message_id: Option<String>,
        mapping: String,
    },
}

/// What the transaction decided for one delivery.
enum Disposition {
    Ack,
    DeadLetter {
        reason: DeadLetterReason,
        detail: String,
    },
}

/// SHA-256 of the body, hex (R-EVT-4 content hash).
pub fn content_hash(body: &[u8]) -> String {
    hex(&Sha256::digest(body))
}

fn amqp_config(src: &SourceConfig, instance: &str) -> AmqpSourceConfig {
    AmqpSourceConfig {
        url: src.url.clone(),
        queue: src.queue.clone(),
        dead_letter_exchange: src.dlx(),
        dead_letter_queue: src.dlq(),
        queue_type: match src.queue_type {
            QueueTypeConfig::Quorum => QueueType::Quorum,
            QueueTypeConfig::Classic => QueueType::Classic,
        },
        prefetch: src.prefetch,
        consumer_tag: format!("cem-bridge/{instance}/{}/{}", src.name, src.queue),
    }
}

/// Consume one source until shutdown, reconnecting with backoff when the broker goes away.
pub async fn run_source(
    ctx: Arc<IngestContext>,
    src: SourceConfig,
    instance: String,
    mut shutdown: Shutdown,
) {
    let amqp = amqp_config(&src, &instance);
    let mut link = Reconnect::new(&amqp, &src.name);
    while let Some(mut source) = link.connect(&mut shutdown).await {
        ctx.health.set_connected(&src.name, true);
        let r = consume(&ctx, &src, &mut source, &mut shutdown).await;
        ctx.health.set_connected(&src.name, false);
        source.close().await;
        if !link.ended(r, &mut shutdown).await {
            break;
        }
    }
    info!(connector = %src.name, "source stopped");
}

/// A consumer's link to RabbitMQ: connect, and after a failure reconnect with backoff (0.5 s
/// doubling to 30 s, back to 0.5 s once connected) until shutdown. Shared by the `[[source]]`
/// consumers and the `[tickets.queue]` one.
pub(crate) struct Reconnect<'a> {
    amqp: &'a AmqpSourceConfig,
    connector: &'a str,
    backoff: Duration,
}

impl<'a> Reconnect<'a> {
    pub(crate) fn new(amqp: &'a AmqpSourceConfig, connector: &'a str) -> Self {
        Self {
            amqp,
            connector,
            backoff: Duration::from_millis(500),
        }
    }

    /// The next connection, retried with backoff while the broker is unreachable; `None` once
    /// shutdown is requested.
    pub(crate) async fn connect(&mut self, shutdown: &mut Shutdown) -> Option<AmqpSource> {
        loop {
            if shutdown.is_triggered() {
                return None;
            }
            match AmqpSource::connect(self.amqp).await {
                Ok(source) => {
                    info!(connector = self.connector, queue = %self.amqp.queue, dlq = %self.amqp.dead_letter_queue, "consuming");
                    self.backoff = Duration::from_millis(500);
                    return Some(source);
                }
                Err(e) => {
                    warn!(connector = self.connector, queue = %self.amqp.queue, error = %e, retry_in_ms = self.backoff.as_millis() as u64, "cannot reach RabbitMQ");
                }
            }
            if !self.wait(shutdown).await {
                return None;
            }
        }
    }

    /// A consumer ended with `r`: `false` to stop (it stopped for shutdown, or shutdown came
    /// during the wait), `true` to reconnect after the backoff.
    pub(crate) async fn ended(&mut self, r: anyhow::Result<()>, shutdown: &mut Shutdown) -> bool {
        match r {
            Ok(()) => false,
            Err(e) => {
                warn!(connector = self.connector, error = %e, "consumer stopped; reconnecting");
                self.wait(shutdown).await
            }
        }
    }

    /// Sleep the backoff and double it; `false` if shutdown came first.
    async fn wait(&mut self, shutdown: &mut Shutdown) -> bool {
        if shutdown.sleep(self.backoff).await {
            return false;
        }
        self.backoff = (self.backoff * 2).min(Duration::from_secs(30));
        true
    }
}

async fn consume(
    ctx: &IngestContext,
    src: &SourceConfig,
    source: &mut AmqpSource,
    shutdown: &mut Shutdown,
) -> anyhow::Result<()> {
    let wait = Duration::from_millis(src.batch_wait_ms);
    loop {
        let first = tokio::select! {
            _ = shutdown.wait() => {
                let _ = source.stop_consuming().await;
                return Ok(());
            }
            d = source.recv() => d,
        };
        let mut batch = match first {
            None => anyhow::bail!("the broker cancelled the consumer"),
            Some(r) => vec![r?],
        };
        let deadline = tokio::time::Instant::now() + wait;
        let mut broken = None;
        while batch.len() < src.batch_size {
            match tokio::time::timeout_at(deadline, source.recv()).await {
                Ok(Some(Ok(m))) => batch.push(m),
                Ok(Some(Err(e))) => {
                    broken = Some(e);
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
        if let Some(e) = broken {
            // The channel is gone: acks would fail. The broker redelivers the batch.
            return Err(e.into());
        }
        let received = Instant::now();
        let prepared: Vec<Prepared> = batch
            .into_iter()
            .map(|m| prepare(ctx, src, m, received))
            .collect();
        let dispositions = commit_with_retry(ctx, src, &prepared, shutdown).await?;
        let Some(dispositions) = dispositions else {
            return Ok(()); // shutdown while the store was down: nothing acked, all redelivered
        };
        fault::hit(Point::AfterCommit);
        finish(src, source, &prepared, dispositions).await?;
    }
}

fn prepare(
    ctx: &IngestContext,
    src: &SourceConfig,
    msg: InboundMessage,
    received: Instant,
) -> Prepared {
    let hash = content_hash(&msg.body);
    let result = if msg.delivery_count > src.poison_after {
        Err(Rejection::new(
            DeadLetterReason::Poison,
            format!(
                "delivered {} times before (limit {}): the message keeps failing",
                msg.delivery_count, src.poison_after
            ),
        ))
    } else {
        let now = ctx.clock.now();
        let opts = DecodeOptions {
            max_bytes: src.max_message_bytes,
            default_charset: Charset::from_label(&src.charset).unwrap_or_default(),
            zone: ctx.zone.clone(),
            now,
            facility: src.facility().to_string(),
        };
        // The set current now: a reload swaps whole sets, never half a message's mapping.
        let set = ctx.mappings.for_source(&src.name).unwrap_or_default();
        let set = set.as_ref();
        let lists = ctx.lists.current();
        let survey = SurveyContext {
            tenant: &ctx.tenant,
            zone: &ctx.zone,
            pseudo: &ctx.pseudo,
            now,
            fields: &ctx.fields,
            lists: &lists,
        };
        // Defence in depth: a panic in a decoder must not take the process down.
        match std::panic::catch_unwind(AssertUnwindSafe(|| {
            decode(&msg.body, &opts, set, &msg.headers).map(|d| match d.outcome {
                Outcome::Event(e) => {
                    let policy = ctx.policy.current();
                    let decision = decide(&e, &policy, &survey);
                    let followup = match &ctx.followup {
                        Some(f) => cem_pipeline::followup::decide(
                            &e,
                            &policy,
                            &survey,
                            &f.settings,
                            &f.windows,
                        ),
                        None => FollowupDecision::None,
                    };
                    Mapped::Event(d.format, e, decision, followup)
                }
                Outcome::Ignored { message_id, .. } => Mapped::Ignored {
                    message_id,
                    mapping: d.mapping,
                },
            })
        })) {
            Ok(r) => r,
            Err(_) => Err(Rejection::new(
                DeadLetterReason::Poison,
                "the decoder failed on this message (internal error); it is kept for analysis",
            )),
        }
    };
    Prepared {
        msg,
        received,
        hash,
        result,
    }
}

/// Consecutive failures of one write before the store's health is checked and, if it is fine,
/// the batch is written message by message to isolate a message the store refuses.
const FAILURES_BEFORE_ISOLATION: u32 = 3;

async fn commit_with_retry(
    ctx: &IngestContext,
    src: &SourceConfig,
    prepared: &[Prepared],
    shutdown: &mut Shutdown,
) -> anyhow::Result<Option<Vec<Disposition>>> {
    let mut backoff = Duration::from_millis(200);
    let mut failures = 0;
    loop {
        match write_batch(ctx, src, prepared).await {
            Ok(d) => return Ok(Some(d)),
            Err(e) => {
                failures += 1;
                warn!(connector = %src.name, error = %e, retry_in_ms = backoff.as_millis() as u64,
                      "store write failed; holding the batch unacked and retrying");
                if failures >= FAILURES_BEFORE_ISOLATION && ctx.store.ping().await.is_ok() {
                    // The store answers, yet this batch keeps failing: one message is to blame.
                    return isolate(ctx, src, prepared, shutdown).await;
                }
                if shutdown.sleep(backoff).await {
                    return Ok(None);
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Write each delivery in its own transaction. One the store keeps refusing while it answers
/// other queries is dead-lettered as `poison` (a NUL byte in an id is refused by PostgreSQL,
/// say) so it cannot block the feed; if the store itself is down, wait for it as usual.
async fn isolate(
    ctx: &IngestContext,
    src: &SourceConfig,
    prepared: &[Prepared],
    shutdown: &mut Shutdown,
) -> anyhow::Result<Option<Vec<Disposition>>> {
    let mut out = Vec::with_capacity(prepared.len());
    for p in prepared {
        let mut failures = 0;
        let mut backoff = Duration::from_millis(200);
        loop {
            match write_batch(ctx, src, std::slice::from_ref(p)).await {
                Ok(mut d) => {
                    out.append(&mut d);
                    break;
                }
                Err(e) => {
                    failures += 1;
                    if failures >= FAILURES_BEFORE_ISOLATION && ctx.store.ping().await.is_ok() {
                        let mid = message_id_of(p).unwrap_or_default();
                        warn!(connector = %src.name, message_id = %mid, error = %e,
                              "the store refuses this message's effects; dead-lettering it as poison (not recorded in the store)");
                        out.push(Disposition::DeadLetter {
                            reason: DeadLetterReason::Poison,
                            detail: format!(
                                "the store refused this message's effects ({}); see the bridge log",
                                e.op()
                            ),
                        });
                        break;
                    }
                    if shutdown.sleep(backoff).await {
                        return Ok(None);
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
    Ok(Some(out))
}

fn message_id_of(p: &Prepared) -> Option<String> {
    match &p.result {
        Ok(Mapped::Event(_, e, _, _)) => Some(e.message_id.clone()),
        Ok(Mapped::Ignored { message_id, .. }) => {
            message_id.clone().or_else(|| p.msg.message_id.clone())
        }
        Err(_) => p.msg.message_id.clone(),
    }
}

async fn write_batch(
    ctx: &IngestContext,
    src: &SourceConfig,
    prepared: &[Prepared],
) -> Result<Vec<Disposition>, StoreError> {
    let now = ctx.clock.now_ms();
    let conn = src.name.as_str();
    let mut tx = ctx.store.begin().await?;
    let mut out = Vec::with_capacity(prepared.len());
    let mut created = false;
    for p in prepared {
        let mid = message_id_of(p);
        // Every line about this message carries its id and trace id (issue 8 §4); a message
        // without an id is traced by its content hash.
        let traced = mid
            .clone()
            .unwrap_or_else(|| format!("sha256:{}", p.hash.get(..16).unwrap_or(&p.hash)));
        let span = crate::logctx::message_span(conn, &traced);
        let made = tracing::Instrument::instrument(
            async {
                let mut made = false;
            let reject = |tx_reason: DeadLetterReason, detail: String| (tx_reason, detail);
            let dl = match &p.result {
                Err(r) => Some(reject(r.reason, r.detail.clone())),
                Ok(Mapped::Ignored { mapping, .. }) => {
                    tx.audit(&AuditEntry {
                        connector: Some(conn),
                        message_id: mid.as_deref(),
                        action: "ignored",
                        rule: Some("mapping"),
                        reason: Some("ignored"),
                        detail: Some(&format!("mapping {mapping} says ignore")),
                        ..Default::default()
                    })
                    .await?;
                    tx.count("cem_bridge_messages_ignored_total", &[("connector", conn)], 1);
                    debug!(connector = conn, message_id = ?mid, mapping = %mapping, "ignored by the mapping");
                    None
                }
                Ok(Mapped::Event(format, event, decision, followup)) => {
                    match tx
                        .record_inbox(
                            conn,
                            &event.message_key,
                            &p.hash,
                            &event.message_id,
                            event.kind.code(),
                            now,
                        )
                        .await?
                    {
                        InboxResult::Duplicate => {
                            tx.audit(&AuditEntry {
                                connector: Some(conn),
                                message_id: Some(&event.message_id),
                                action: "duplicate",
                                rule: Some("R-EVT-4"),
                                reason: Some("duplicate"),
                                ..Default::default()
                            })
                            .await?;
                            tx.count("cem_bridge_messages_duplicate_total", &[("connector", conn)], 1);
                            debug!(connector = conn, message_id = %event.message_id, "duplicate delivery acked without effect");
                            None
                        }
                        InboxResult::Conflict => Some(reject(
                            DeadLetterReason::DuplicateIdConflict,
                            format!(
                                "message {} was seen before with different content",
                                event.message_id
                            ),
                        )),
                        InboxResult::New => {
                            tx.count(
                                "cem_bridge_messages_in_total",
                                &[
                                    ("connector", conn),
                                    ("format", format.code()),
                                    ("event", event.kind.code()),
                                ],
                                1,
                            );
                            for w in &event.warnings {
                                tx.count("cem_bridge_identity_warnings_total", &[("kind", w.code())], 1);
                            }
                            made |= apply_decision(&mut tx, conn, event, decision, ctx, now).await?;
                            made |= apply_followup(&mut tx, conn, event, followup, ctx, now).await?;
                            None
                        }
                    }
                }
            };
            match dl {
                None => out.push(Disposition::Ack),
                Some((reason, detail)) => {
                    let sealed = ctx
                        .vault
                        .seal(&dead_letter_aad(&p.hash), &p.msg.body)
                        .map_err(|_| StoreError::Sealing)?;
                    let headers = seal_headers(&ctx.vault, &p.hash, &p.msg.headers)?;
                    tx.dead_letter(
                        &DeadLetterEntry {
                            connector: conn,
                            message_id: mid.as_deref(),
                            reason: reason.code(),
                            detail: &detail,
                            content_hash: &p.hash,
                            size_bytes: p.msg.body.len() as i64,
                            delivery_count: i64::try_from(p.msg.delivery_count).unwrap_or(i64::MAX),
                            sealed_body: Some((&sealed.0, &sealed.1)),
                            sealed_headers: headers.as_deref(),
                        },
                        now,
                    )
                    .await?;
                    tx.audit(&AuditEntry {
                        connector: Some(conn),
                        message_id: mid.as_deref(),
                        action: "dead_letter",
                        rule: Some("R-EVT-6"),
                        reason: Some(reason.code()),
                        detail: Some(&detail),
                        ..Default::default()
                    })
                    .await?;
                    out.push(Disposition::DeadLetter { reason, detail });
                }
            }
                Ok::<bool, StoreError>(made)
            },
            span,
        )
        .await?;
        created |= made;
    }
    fault::hit(Point::BeforeCommit);
    tx.commit().await?;
    let durable = Instant::now();
    for p in prepared {
        histogram!("cem_bridge_ingest_latency_seconds", "connector" => src.name.clone())
            .record(durable.duration_since(p.received).as_secs_f64());
    }
    if created {
        ctx.scheduler_wake.notify_one();
    }
    Ok(out)
}

/// Write the effects of one decision; `true` if a job was created.
async fn apply_decision(
    tx: &mut crate::store::StoreTx,
    conn: &str,
    event: &PatientEvent,
    decision: &SurveyDecision,
    ctx: &IngestContext,
    now: i64,
) -> Result<bool, StoreError> {
    let pk = ctx.pseudo.patient_key(&event.patient.id);
    let mid = event.message_id.as_str();
    match decision {
        SurveyDecision::Schedule(job) => {
            // R-CAN-6: events for a merged patient count for the survivor.
            let survivor = tx.resolve_patient(&job.patient_key).await?;
            if survivor != job.patient_key {
                let mut moved = job.clone();
                moved.patient_key = survivor.clone();
                moved.payload.patient.pk = survivor;
                let decision = SurveyDecision::Schedule(moved);
                return Box::pin(apply_decision(tx, conn, event, &decision, ctx, now)).await;
            }
            // R-CAN-2: the visit was cancelled before this registration arrived.
            if event.kind == EventKind::Registered
                && let Some(reason) = tx.tombstone(&job.visit_key, now).await?
            {
                let decision = SurveyDecision::Suppress {
                    reason: if reason == "visit_cancelled" {
                        "visit_cancelled"
                    } else {
                        "cancelled"
                    },
                    rule: "R-CAN-2",
                };
                return Box::pin(apply_decision(tx, conn, event, &decision, ctx, now)).await;
            }
            // R-EXC-1: a patient flagged deceased earlier stays excluded.
            if tx.is_deceased(&job.patient_key).await? {
                let decision = SurveyDecision::Suppress {
                    reason: "deceased",
                    rule: "R-EXC-1",
                };
                return Box::pin(apply_decision(tx, conn, event, &decision, ctx, now)).await;
            }
            // R-EXC-3: the CEM reported an unsubscribe of this patient or mobile (opt_outs).
            if tx
                .opted_out(&[job.patient_key.as_str(), job.mobile_key.as_str()])
                .await?
            {
                let decision = SurveyDecision::Suppress {
                    reason: "opted_out",
                    rule: "R-EXC-3",
                };
                return Box::pin(apply_decision(tx, conn, event, &decision, ctx, now)).await;
            }
            let payload = serde_json::to_string(&job.payload).unwrap_or_default();
            let r = tx
                .insert_job(
                    &NewJob {
                        job_id: &job.job_id,
                        template: &job.template,
                        patient_key: &job.patient_key,
                        visit_key: &job.visit_key,
                        id_card_key: job.id_card_key.as_deref(),
                        mobile_key: Some(&job.mobile_key),
                        due_at: job.due_at.as_millisecond(),
                        payload: &payload,
                        connector: conn,
                        message_id: mid,
                        dnd: true,
                    },
                    now,
                )
                .await?;
            if matches!(r, JobInsert::Created | JobInsert::Reactivated) {
                // R-ANO-6: what re-identification needs for this job, sealed.
                // Under the event's own pk: after a merge (R-CAN-6) the survivor's record keeps
                // the survivor's identity.
                for (pseudonym, record) in entries_for(event, &ctx.pseudo, &pk) {
                    tx.vault_put(&ctx.vault, &pseudonym, &record, now)
                        .await
                        .map_err(vault_error)?;
                }
            }
            let (action, reason) = match &r {
                JobInsert::Created => ("scheduled", None),
                JobInsert::Reactivated => ("reactivated", Some("discharge_recorded_again")),
                JobInsert::Exists { status } if status == "sent" => ("no_op", Some("already_sent")),
                JobInsert::Exists { .. } => ("no_op", Some("already_scheduled")),
            };
            let due = cem_pipeline::time::rfc3339_in(job.due_at, &ctx.zone);
            tx.audit(&AuditEntry {
                connector: Some(conn),
                message_id: Some(mid),
                job_id: Some(&job.job_id),
                patient_key: Some(&pk),
                action,
                rule: Some(if r == JobInsert::Reactivated {
                    "R-CAN-3"
                } else {
                    "R-SRV-5"
                }),
                reason,
                detail: Some(&format!("template {} due {due}", job.template)),
            })
            .await?;
            tx.count(
                "cem_bridge_survey_decisions_total",
                &[
                    ("decision", "scheduled"),
                    ("reason", reason.unwrap_or("scheduled")),
                ],
                1,
            );
            debug!(connector = conn, message_id = mid, patient_key = %pk, job_id = %job.job_id, action, "survey decision");
            Ok(matches!(r, JobInsert::Created | JobInsert::Reactivated))
        }
        SurveyDecision::Merge {
            survivor_key,
            merged_key,
        } => {
            let moved = tx.merge_patients(merged_key, survivor_key).await?;
            tx.audit(&AuditEntry {
                connector: Some(conn),
                message_id: Some(mid),
                patient_key: Some(merged_key),
                action: "merged",
                rule: Some("R-CAN-6"),
                detail: Some(&format!(
                    "into {survivor_key}; {} pending survey(s) moved",
                    moved.len()
                )),
                ..Default::default()
            })
            .await?;
            Ok(false)
        }
        SurveyDecision::Update {
            patient_key,
            mobile_key,
            deceased,
            event_time,
        } => {
            let applied = tx
                .update_contact(
                    patient_key,
                    mobile_key.as_deref(),
                    event_time.as_millisecond(),
                )
                .await?;
            if applied {
                for (pseudonym, record) in entries_for(event, &ctx.pseudo, patient_key) {
                    tx.vault_put(&ctx.vault, &pseudonym, &record, now)
                        .await
                        .map_err(vault_error)?;
                }
            }
            tx.audit(&AuditEntry {
                connector: Some(conn),
                message_id: Some(mid),
                patient_key: Some(patient_key),
                action: "recorded",
                rule: Some("R-CAN-5"),
                reason: Some(if applied {
                    "demographics_updated"
                } else {
                    "older_update_ignored"
                }),
                ..Default::default()
            })
            .await?;
            if *deceased {
                for job_id in tx.mark_deceased(patient_key, now).await? {
                    audit_cancel(tx, conn, mid, &job_id, patient_key, "R-EXC-1", "deceased")
                        .await?;
                }
            }
            Ok(false)
        }
        SurveyDecision::Reanchor { visit_key, due_at } => {
            let due = cem_pipeline::time::rfc3339_in(*due_at, &ctx.zone);
            let moved = tx
                .reanchor_visit(visit_key, due_at.as_millisecond(), &due, now)
                .await?;
            for job_id in &moved {
                tx.audit(&AuditEntry {
                    connector: Some(conn),
                    message_id: Some(mid),
                    job_id: Some(job_id),
                    patient_key: Some(&pk),
                    action: "rescheduled",
                    rule: Some("R-SRV-2"),
                    reason: Some("visit_ended"),
                    detail: Some(&format!("due {due}")),
                })
                .await?;
            }
            if moved.is_empty() {
                tx.audit(&AuditEntry {
                    connector: Some(conn),
                    message_id: Some(mid),
                    patient_key: Some(&pk),
                    action: "recorded",
                    rule: Some("R-SRV-2"),
                    reason: Some("no_pending_survey"),
                    detail: Some("outpatient visit end with no pending survey to re-anchor"),
                    ..Default::default()
                })
                .await?;
            }
            Ok(!moved.is_empty())
        }
        SurveyDecision::Cancel {
            visit_key,
            reason,
            rule,
        } => {
            let result = tx.cancel_visit(visit_key, reason, now).await?;
            for job_id in &result.cancelled {
                audit_cancel(tx, conn, mid, job_id, &pk, rule, reason).await?;
            }
            for job_id in &result.sent {
                tx.audit(&AuditEntry {
                    connector: Some(conn),
                    message_id: Some(mid),
                    job_id: Some(job_id),
                    patient_key: Some(&pk),
                    action: "recorded",
                    rule: Some("R-CAN-1"),
                    reason: Some("cancel_after_send"),
                    ..Default::default()
                })
                .await?;
            }
            if result.followup_calls > 0 {
                tx.audit(&AuditEntry {
                    connector: Some(conn),
                    message_id: Some(mid),
                    patient_key: Some(&pk),
                    action: "cancelled",
                    rule: Some("R-FUP-4"),
                    reason: Some(reason),
                    detail: Some(&format!(
                        "{} pending follow-up call(s) of the stay",
                        result.followup_calls
                    )),
                    ..Default::default()
                })
                .await?;
            }
            if result.cancelled.is_empty() && result.sent.is_empty() && *reason == "visit_cancelled"
            {
                tx.put_tombstone(visit_key, reason, now + TOMBSTONE_MS)
                    .await?;
                tx.audit(&AuditEntry {
                    connector: Some(conn),
                    message_id: Some(mid),
                    patient_key: Some(&pk),
                    action: "recorded",
                    rule: Some("R-CAN-2"),
                    reason: Some("cancel_before_registration"),
                    detail: Some("tombstone kept 7 days"),
                    ..Default::default()
                })
                .await?;
            }
            debug!(connector = conn, message_id = mid, patient_key = %pk, cancelled = result.cancelled.len(), reason, "visit cancelled");
            Ok(false)
        }
        SurveyDecision::Suppress { reason, rule } => {
            if *reason == "deceased" {
                for job_id in tx.mark_deceased(&pk, now).await? {
                    audit_cancel(tx, conn, mid, &job_id, &pk, "R-EXC-1", "deceased").await?;
                }
            }
            tx.audit(&AuditEntry {
                connector: Some(conn),
                message_id: Some(mid),
                patient_key: Some(&pk),
                action: "suppressed",
                rule: Some(rule),
                reason: Some(reason),
                ..Default::default()
            })
            .await?;
            tx.count(
                "cem_bridge_survey_decisions_total",
                &[("decision", "suppressed"), ("reason", reason)],
                1,
            );
            debug!(connector = conn, message_id = mid, patient_key = %pk, reason, "survey suppressed");
            Ok(false)
        }
        SurveyDecision::Record { reason } => {
            tx.audit(&AuditEntry {
                connector: Some(conn),
                message_id: Some(mid),
                patient_key: Some(&pk),
                action: "recorded",
                reason: Some(reason),
                detail: Some(event.kind.code()),
                ..Default::default()
            })
            .await?;
            Ok(false)
        }
    }
}

/// Write a follow-up decision (R-FUP-1..4); `true` if CEM steps were scheduled (the
/// scheduler is woken; calls wait in the ticket outbox).
async fn apply_followup(
    tx: &mut crate::store::StoreTx,
    conn: &str,
    event: &PatientEvent,
    decision: &FollowupDecision,
    ctx: &IngestContext,
    now: i64,
) -> Result<bool, StoreError> {
    let mid = event.message_id.as_str();
    match decision {
        FollowupDecision::None => Ok(false),
        FollowupDecision::Excluded { reason, rule } => {
            let pk = ctx.pseudo.patient_key(&event.patient.id);
            tx.audit(&AuditEntry {
                connector: Some(conn),
                message_id: Some(mid),
                patient_key: Some(&pk),
                action: "followup_excluded",
                rule: Some(rule),
                reason: Some(reason),
                ..Default::default()
            })
            .await?;
            tx.count(
                "cem_bridge_followup_decisions_total",
                &[("decision", "excluded"), ("reason", reason)],
                1,
            );
            Ok(false)
        }
        FollowupDecision::Plan(plan) => {
            let Some(f) = &ctx.followup else {
                return Ok(false);
            };
            // R-CAN-6: a merged patient's stay is followed up under the survivor.
            let mut plan = plan.clone();
            let survivor = tx.resolve_patient(&plan.patient_key).await?;
            // The callee stays this event's own key: its vault entry (written below) holds the
            // number this discharge carries.
            let own_pk = plan.patient_key.clone();
            plan.patient_key = survivor;
            // R-EXC-1: a patient flagged deceased earlier stays excluded.
            if tx.is_deceased(&plan.patient_key).await? {
                let d = FollowupDecision::Excluded {
                    reason: "deceased",
                    rule: "R-EXC-1",
                };
                return Box::pin(apply_followup(tx, conn, event, &d, ctx, now)).await;
            }
            // The call center's number and greeting come from the vault at send time: the
            // entries count as used at the plan's last step, so `[retention] vault_days` keeps
            // them until that long after it (CARE-QUARTERLY reminders run to D+360).
            let last_step = plan
                .steps
                .iter()
                .map(|s| s.due_at.as_millisecond())
                .max()
                .unwrap_or(now)
                .max(now);
            for (pseudonym, record) in entries_for(event, &ctx.pseudo, &own_pk) {
                tx.vault_put(&ctx.vault, &pseudonym, &record, last_step)
                    .await
                    .map_err(vault_error)?;
            }
            let done = tx
                .followup_plan(&ctx.vault, &f.windows, &plan, conn, mid, &ctx.zone, now)
                .await?;
            tx.count(
                "cem_bridge_followup_decisions_total",
                &[("decision", "planned"), ("reason", plan.plan.code())],
                1,
            );

            debug!(connector = conn, message_id = mid, patient_key = %plan.patient_key, plan = plan.plan.code(),
                   scheduled = done.scheduled, kept = done.kept, "follow-up planned");
            Ok(done.scheduled > 0)
        }
    }
}

/// The associated data a dead-letter body is sealed under: its content hash.
pub fn dead_letter_aad(content_hash: &str) -> String {
    format!("dl|{content_hash}")
}

/// The headers a mapping may match on (`$header.NAME`), as sealed JSON for the dead-letter
/// record; broker and bridge headers (`x-…`) are left out. `None` when there are none.
pub fn seal_headers(
    vault: &crate::vault::VaultCipher,
    content_hash: &str,
    headers: &std::collections::BTreeMap<String, String>,
) -> Result<Option<Vec<u8>>, StoreError> {
    let kept: std::collections::BTreeMap<&String, &String> = headers
        .iter()
        .filter(|(k, _)| !k.to_ascii_lowercase().starts_with("x-"))
        .collect();
    if kept.is_empty() {
        return Ok(None);
    }
    let json = serde_json::to_vec(&kept).map_err(|_| StoreError::Sealing)?;
    let (_, sealed) = vault
        .seal(&crate::store::dead_letter_headers_aad(content_hash), &json)
        .map_err(|_| StoreError::Sealing)?;
    Ok(Some(sealed))
}

/// A vault write failure as the store error the batch retry understands.
fn vault_error(e: crate::vault::VaultError) -> StoreError {
    match e {
        crate::vault::VaultError::Store(s) => s,
        _ => StoreError::Sealing,
    }
}

/// Audit and count one cancelled job.
async fn audit_cancel(
    tx: &mut crate::store::StoreTx,
    conn: &str,
    message_id: &str,
    job_id: &str,
    patient_key: &str,
    rule: &str,
    reason: &'static str,
) -> Result<(), StoreError> {
    tx.audit(&AuditEntry {
        connector: Some(conn),
        message_id: Some(message_id),
        job_id: Some(job_id),
        patient_key: Some(patient_key),
        action: "cancelled",
        rule: Some(rule),
        reason: Some(reason),
        ..Default::default()
    })
    .await?;
    tx.count(
        "cem_bridge_survey_decisions_total",
        &[("decision", "cancelled"), ("reason", reason)],
        1,
    );
    Ok(())
}

/// After the commit: republish dead letters, then ack everything up to the last tag.
async fn finish(
    src: &SourceConfig,
    source: &AmqpSource,
    prepared: &[Prepared],
    dispositions: Vec<Disposition>,
) -> anyhow::Result<()> {
    let mut rejected = Vec::new();
    for (p, d) in prepared.iter().zip(&dispositions) {
        if let Disposition::DeadLetter { reason, detail } = d {
            let mid = message_id_of(p).unwrap_or_default();
            counter!("cem_bridge_dead_letters_total", "connector" => src.name.clone(), "reason" => reason.code()).increment(1);
            {
                let traced = if mid.is_empty() {
                    format!("sha256:{}", p.hash.get(..16).unwrap_or(&p.hash))
                } else {
                    mid.clone()
                };
                let _span = crate::logctx::message_span(&src.name, &traced).entered();
                info!(reason = reason.code(), detail = %detail, "dead-lettered");
            }
            if let Err(e) = source
                .publish_dead_letter(&p.msg, &src.name, reason.code(), detail)
                .await
            {
                warn!(connector = %src.name, message_id = %mid, error = %e,
                      "cannot republish to the dead-letter exchange; rejecting to it instead (no reason header)");
                source.reject(p.msg.tag).await?;
                rejected.push(p.msg.tag);
            }
        }
    }
    // Ack up to the last delivery still outstanding (an ack of a rejected tag is a channel
    // error); the multiple-ack skips the rejected ones before it.
    let acked: Vec<u64> = prepared
        .iter()
        .map(|p| p.msg.tag)
        .filter(|t| !rejected.contains(t))
        .collect();
    if let Some(last) = acked.last() {
        source.ack_through(*last).await?;
        counter!("cem_bridge_messages_acked_total", "connector" => src.name.clone())
            .increment(acked.len() as u64);
    }
    Ok(())
}
