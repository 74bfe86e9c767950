//! The ticket loop's worker: releases held versions after the gap timeout (R-TKT-8), emits due
//! escalations (R-TKT-4), and sends the outbox to HCRM and the AI call center in per-ticket,
//! per-sink order (R-TKT-6, R-TKT-8), each request under its sink's resilience block with the
//! R-TKT-9 idempotency key. The patient's clear data is read from the vault at send time, by an
//! audited lookup (R-ANO-6: HCRM `ticket_case`, call center `ticket_callback`).

use std::sync::Arc;
use std::time::Duration;

use cem_connectors::http_sink::SendOutcome;
use cem_connectors::sink::{Peer, PeerSink, Sink};
use cem_pipeline::reid::{Caller, Purpose, VaultRecord};
use metrics::counter;
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::privacy::vault::{Access, Lookup};
use crate::process::clock::Clock;
use crate::process::shutdown::Shutdown;
use crate::store::Store;
use crate::store::keys::Thread;
use crate::store::tickets::{OutboxOutcome, OutboxRow, TicketCtx};

/// What the worker needs.
pub struct TicketWorker {
    pub store: Store,
    pub ctx: TicketCtx,
    pub hcrm: PeerSink,
    pub callcenter: PeerSink,
    /// `[cem_results]`: ticket call outcomes back to the CEM.
    pub cem_results: Option<PeerSink>,
    pub clock: Clock,
    pub owner: String,
    pub poll_interval: Duration,
    pub lease_ms: i64,
    pub concurrency: usize,
    /// Woken when the intake applied an update.
    pub wake: Arc<Notify>,
    /// `[followup]`: when a follow-up call moved by R-FUP-3 is due the next day.
    pub followup: cem_pipeline::followup::FollowupSettings,
    /// The follow-up opt-out and staff lists, checked again when a follow-up call is due.
    pub lists: Arc<crate::privacy::lists::Lists>,
}

/// Run until shutdown; requests in flight are finished and recorded first.
pub async fn run(w: TicketWorker, mut shutdown: Shutdown) {
    let w = Arc::new(w);
    let http = Arc::new(Semaphore::new(w.concurrency.max(1)));
    let mut tasks = JoinSet::new();
    info!(hcrm = %w.hcrm.describe(), callcenter = %w.callcenter.describe(), "ticket worker started");
    loop {
        if shutdown.is_triggered() {
            break;
        }
        while tasks.try_join_next().is_some() {}
        let now = w.clock.now_ms();
        if let Err(e) = w.store.ticket_release_gaps(&w.ctx, now).await {
            warn!(error = %e, "cannot release held ticket versions; will retry");
        }
        match w.store.ticket_escalate(&w.ctx, now).await {
            Ok(e) if !e.is_empty() => debug!(count = e.len(), "escalations emitted"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot emit escalations; will retry"),
        }
        let free = http.available_permits() as u32;
        let claimed = if free == 0 {
            vec![]
        } else {
            match w
                .store
                .outbox_claim(&w.owner, now, now + w.lease_ms, free)
                .await
            {
                Ok(rows) => rows,
                Err(e) => {
                    warn!(error = %e, "cannot claim ticket requests; will retry");
                    vec![]
                }
            }
        };
        let got = claimed.len();
        for row in claimed {
            let Ok(permit) = http.clone().acquire_owned().await else {
                break;
            };
            let w = w.clone();
            let span = crate::process::logctx::ticket_span(&row.ticket_id, &row.idem_key);
            tasks.spawn(tracing::Instrument::instrument(
                async move {
                    send_one(&w, row).await;
                    drop(permit);
                },
                span,
            ));
        }
        if got == 0 {
            tokio::select! {
                _ = tokio::time::sleep(w.poll_interval) => {}
                _ = w.wake.notified() => {}
                _ = shutdown.wait() => {}
            }
        } else {
            // Let the sends finish a little before claiming the next in order.
            tokio::select! {
                _ = tasks.join_next() => {}
                _ = shutdown.wait() => {}
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    info!("ticket worker stopped");
}

/// Send one outbox row and record what became of it.
async fn send_one(w: &TicketWorker, row: OutboxRow) {
    let sink = match (row.peer(), &w.cem_results) {
        (Some(Peer::CallCenter), _) => &w.callcenter,
        (Some(Peer::Hcrm), _) => &w.hcrm,
        (Some(Peer::CemResults), Some(s)) => s,
        (peer, _) => {
            let why = match peer {
                Some(Peer::CemResults) => "[cem_results] was removed from the config",
                _ => "the outbox row names a sink this bridge does not send to",
            };
            let dead = OutboxOutcome::Dead {
                reason: "not_configured",
                status: None,
                error: why.into(),
            };
            warn!(key = %row.idem_key, sink = %row.sink, "ticket request not sent: {why}");
            if let Ok(true) = w
                .store
                .outbox_record(&w.owner, row.id, &dead, w.clock.now_ms())
                .await
            {
                counter!("cem_bridge_ticket_requests_dead_total", "sink" => row.sink.clone(), "reason" => "not_configured")
                    .increment(1);
            }
            return;
        }
    };
    if followup_gate(w, &row).await {
        return;
    }
    let outcome = match request_body(w, &row).await {
        Ok(body) => {
            let sent = sink.push(&row.idem_key, body.to_string().as_bytes()).await;
            decide(sink, &row, &sent, w.clock.now_ms())
        }
        Err(o) => o,
    };
    let now = w.clock.now_ms();
    match w.store.outbox_record(&w.owner, row.id, &outcome, now).await {
        Ok(true) => match &outcome {
            OutboxOutcome::Sent { status } => {
                counter!("cem_bridge_tickets_forwarded_total", "sink" => row.sink.clone())
                    .increment(1);
                if Thread::of(&row.ticket_id).is_followup() {
                    let (plan, step) = crate::store::keys::plan_and_step(&row.idem_key);
                    counter!("cem_bridge_followup_tasks_total", "plan" => plan, "step" => step, "outcome" => "sent")
                        .increment(1);
                }
                info!(ticket_id = %row.ticket_id, sink = %row.sink, kind = %row.kind, key = %row.idem_key, status, "ticket request sent");
            }
            OutboxOutcome::Retry { next_at, error, .. } => {
                debug!(ticket_id = %row.ticket_id, sink = %row.sink, key = %row.idem_key, attempt = row.attempts, retry_in_ms = next_at - now, detail = %error, "ticket request will be retried");
            }
            OutboxOutcome::Dead { reason, error, .. } => {
                counter!("cem_bridge_ticket_requests_dead_total", "sink" => row.sink.clone(), "reason" => *reason)
                    .increment(1);
                if Thread::of(&row.ticket_id).is_followup() {
                    let (plan, step) = crate::store::keys::plan_and_step(&row.idem_key);
                    counter!("cem_bridge_followup_tasks_total", "plan" => plan, "step" => step, "outcome" => "dead")
                        .increment(1);
                }
                warn!(ticket_id = %row.ticket_id, sink = %row.sink, key = %row.idem_key, reason, detail = %error, "ticket request given up");
            }
            OutboxOutcome::Expired { .. } => {}
        },
        Ok(false) => {
            debug!(ticket_id = %row.ticket_id, key = %row.idem_key, "outcome not recorded: cancelled or re-claimed meanwhile")
        }
        Err(e) => {
            warn!(ticket_id = %row.ticket_id, key = %row.idem_key, error = %e, "cannot record a ticket request's outcome; it is sent again after its lease (same idempotency key)")
        }
    }
}

/// A due follow-up call, before it is sent: the follow-up opt-out and staff lists again
/// (R-FUP-2: someone listed after planning gets no call), then R-FUP-3 — on a day the patient
/// already has a call (follow-up or ticket; a retry of the same step does not count) it moves
/// to the next day at the step time, inside a calling window. `true` if not sent now.
async fn followup_gate(w: &TicketWorker, row: &OutboxRow) -> bool {
    if row.peer() != Some(Peer::CallCenter) || !Thread::of(&row.ticket_id).is_followup() {
        return false;
    }
    let Some(pk) = row.patient_key.as_deref() else {
        return false;
    };
    let now = w.clock.now_ms();
    let (plan, step) = crate::store::keys::plan_and_step(&row.idem_key);
    // Issue 19 §1: a call found days after its planned day (an outage) is not made.
    let max_delay = i64::from(w.followup.max_call_delay_days) * 86_400_000;
    if now - row.due_at > max_delay {
        let days = (now - row.due_at) / 86_400_000;
        let expired = OutboxOutcome::Expired {
            error: format!(
                "found {days} day(s) after its planned day, more than [followup] max_call_delay_days = {}: not made",
                w.followup.max_call_delay_days
            ),
        };
        if let Ok(true) = w.store.outbox_record(&w.owner, row.id, &expired, now).await {
            counter!("cem_bridge_followup_tasks_total", "plan" => plan, "step" => step, "outcome" => "expired")
                .increment(1);
            info!(key = %row.idem_key, patient_key = %pk, days, "follow-up call expired: too long after its planned day");
        }
        return true;
    }
    let keys = row.body(&w.ctx.cipher).ok().and_then(|b| {
        b.get("calleeKey")
            .and_then(|k| k.as_str().map(String::from))
    });
    let mk = keys.as_deref().filter(|k| k.starts_with("mk_"));
    if let Some((reason, rule)) = w.lists.current().check_followup(pk, None, mk) {
        let dead = OutboxOutcome::Dead {
            reason,
            status: None,
            error: format!("{rule}: on a list when the call was due"),
        };
        if let Ok(true) = w.store.outbox_record(&w.owner, row.id, &dead, now).await {
            counter!("cem_bridge_followup_tasks_total", "plan" => plan, "step" => step, "outcome" => reason)
                .increment(1);
            info!(key = %row.idem_key, patient_key = %pk, reason, "follow-up call not made");
        }
        return true;
    }
    let day = crate::store::followups::local_day(now, &w.ctx.zone);
    let step_key = crate::store::keys::followup_step_key(&row.idem_key);
    let taken = match w.store.call_taken(pk, row.id, step_key, day, now).await {
        Ok(t) => t,
        Err(e) => {
            warn!(key = %row.idem_key, error = %e, "cannot check today's calls; the follow-up call waits");
            let retry = OutboxOutcome::Retry {
                next_at: now + 5_000,
                status: None,
                error: format!("R-FUP-3 check: {e}"),
            };
            let _ = w.store.outbox_record(&w.owner, row.id, &retry, now).await;
            return true;
        }
    };
    if !taken {
        return false;
    }
    let next = crate::store::followups::next_day_at(now, &w.followup, &w.ctx.zone);
    let due = w
        .ctx
        .windows
        .next_allowed(cem_pipeline::time::from_ms(next), &w.ctx.zone)
        .as_millisecond();
    match w.store.outbox_postpone(&w.owner, row.id, due, now).await {
        Ok(_) => {
            counter!("cem_bridge_followup_postponed_total").increment(1);
            counter!("cem_bridge_followup_tasks_total", "plan" => plan, "step" => step, "outcome" => "postponed")
                .increment(1);
            info!(key = %row.idem_key, patient_key = %pk, due = %cem_pipeline::time::rfc3339_in(
                cem_pipeline::time::from_ms(due), &w.ctx.zone),
                "follow-up call moved to the next day: the patient has a call today (R-FUP-3)");
        }
        Err(e) => {
            warn!(key = %row.idem_key, error = %e, "cannot move the follow-up call; it is tried again after its lease")
        }
    }
    true
}

/// The queued body plus the patient's data from the vault; `Err` = the outcome without sending.
async fn request_body(w: &TicketWorker, row: &OutboxRow) -> Result<Value, OutboxOutcome> {
    let mut body = row.body(&w.ctx.cipher).map_err(|e| OutboxOutcome::Dead {
        reason: "unreadable",
        status: None,
        error: e.to_string(),
    })?;
    let Some(pk) = row.patient_key.as_deref() else {
        return Ok(body);
    };
    let to_callcenter = row.peer() == Some(Peer::CallCenter);
    let shadow = if to_callcenter {
        w.callcenter.is_shadow()
    } else {
        w.hcrm.is_shadow()
    };
    if shadow {
        // A shadow file is plain text on disk: it shows the request without the patient's
        // clear data (no vault lookup is made).
        if let Some(o) = body.as_object_mut() {
            let key = if to_callcenter { "callee" } else { "patient" };
            o.insert(
                key.into(),
                json!({ "pseudonym": pk, "withheld": "shadow mode: re-identified data is not written to files" }),
            );
        }
        return Ok(body);
    }
    let followup = Thread::of(&row.ticket_id).is_followup();
    let (caller, purpose) = match (to_callcenter, followup) {
        (true, true) => (Caller::CallCenter, Purpose::FollowupCall),
        (true, false) => (Caller::CallCenter, Purpose::TicketCallback),
        (false, _) => (Caller::Hcrm, Purpose::TicketCase),
    };
    // R-FUP-2: a minor's follow-up calls go to the guardian's number, kept under its `mk_`.
    let lookup_key = match body.get("calleeKey").and_then(Value::as_str) {
        Some(k) if caller == Caller::CallCenter => k.to_string(),
        _ => pk.to_string(),
    };
    let access = Access {
        caller,
        purpose,
        job_id: Some(&row.ticket_id),
    };
    // A vault that cannot be read now is retried in 5 s (the row stays pending).
    let retry = |e: crate::store::vault::VaultAccessError| OutboxOutcome::Retry {
        next_at: w.clock.now_ms() + 5_000,
        status: None,
        error: format!("vault lookup: {e}"),
    };
    let found = w
        .store
        .vault_lookup(&w.ctx.cipher, access, &lookup_key)
        .await
        .map_err(retry)?;
    // R-ANO-1: HCRM gets the 门诊号/住院号 of the visit the ticket names (its own vault record).
    let visit_number = match body.get("visitKey").and_then(Value::as_str) {
        Some(vk) if caller == Caller::Hcrm && matches!(found, Lookup::Found(_)) => {
            match w
                .store
                .vault_lookup(&w.ctx.cipher, access, vk)
                .await
                .map_err(retry)?
            {
                Lookup::Found(v) => v.visit_number,
                _ => None,
            }
        }
        _ => None,
    };
    if let Some(o) = body.as_object_mut() {
        match (caller, found) {
            (
                Caller::CallCenter,
                Lookup::Found(VaultRecord {
                    mobile: Some(m),
                    greeting,
                    ..
                }),
            ) => {
                o.insert(
                    "callee".into(),
                    json!({ "mobile": m, "honorific": greeting }),
                );
            }
            // R-TKT-10: no phone, no call.
            (Caller::CallCenter, other) => {
                return Err(OutboxOutcome::Dead {
                    reason: "no_contact",
                    status: None,
                    error: format!(
                        "no mobile for the patient (vault lookup {})",
                        other.outcome()
                    ),
                });
            }
            (_, Lookup::Found(r)) => {
                o.insert(
                    "patient".into(),
                    json!({
                        "pseudonym": pk,
                        "reidentified": true,
                        "patientId": r.patient_id,
                        "name": r.name,
                        "mobile": r.mobile,
                        "visitNumber": visit_number.or(r.visit_number),
                        "idCardMasked": r.id_card_masked,
                    }),
                );
            }
            // R-TKT-10: the case carries the pseudonym only.
            (_, _) => {
                o.insert(
                    "patient".into(),
                    json!({ "pseudonym": pk, "reidentified": false }),
                );
            }
        }
    }
    Ok(body)
}

/// Map a send outcome to what the outbox records, with the sink's retry schedule.
fn decide(sink: &PeerSink, row: &OutboxRow, sent: &SendOutcome, now: i64) -> OutboxOutcome {
    let attempts = u32::try_from(row.attempts).unwrap_or(u32::MAX);
    match sent {
        SendOutcome::Accepted { status } => OutboxOutcome::Sent { status: *status },
        SendOutcome::Permanent { status, detail } => OutboxOutcome::Dead {
            reason: "rejected",
            status: Some(*status),
            error: detail.clone(),
        },
        other => {
            let (status, error) = match other {
                SendOutcome::Retryable { status, detail, .. } => (*status, detail.clone()),
                _ => (
                    None,
                    "not sent: the sink's circuit breaker is open".to_string(),
                ),
            };
            match sink
                .resilience()
                .retry_delay(other, &row.idem_key, attempts)
            {
                Some(wait) => OutboxOutcome::Retry {
                    next_at: now + wait.as_millis() as i64,
                    status,
                    error,
                },
                None => OutboxOutcome::Dead {
                    reason: "max_attempts",
                    status,
                    error,
                },
            }
        }
    }
}
