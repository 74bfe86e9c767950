//! `[tickets.queue]`: CEM ticket updates from a RabbitMQ queue — the same intake as
//! `POST /hooks/cem/tickets` (R-TKT-8 order, durable before the ack), for CEM deployments that
//! publish to the hospital's broker instead of calling a webhook.
//!
//! One delivery at a time (tickets are few): parse → `ticket_accept` in one transaction → ack.
//! A body the loop cannot take is stored as a dead letter (sealed, connector `tickets`), then
//! republished to the dead-letter exchange with its reason and acked: `malformed_ticket` (not a
//! ticket update), `poison` (redelivered more than 5 times), `unprocessable` (a failure other
//! than a store outage, 5 times in a row). A store failure acks nothing: the update is retried with backoff, and after a crash
//! or shutdown the broker redelivers it (a redelivered version is `stale_version`, no effect).

use std::sync::Arc;
use std::time::Duration;

use cem_connectors::source::{Delivery, Settle, Source, SourceError};
use cem_pipeline::ticket::TicketUpdate;
use metrics::counter;
use tracing::{info, warn};

use crate::config::tickets::{CONNECTOR, TicketQueueConfig};
use crate::process::reconnect::Reconnect;
use crate::process::shutdown::Shutdown;
use crate::store::dead_letters::{content_hash, dead_letter_aad, stored_part};
use crate::store::tickets::TicketStoreError;
use crate::store::{AuditEntry, DeadLetterEntry, StoreError};
use crate::tickets::intake::TicketIntake;

/// A delivery redelivered more often than this (crashes while handling it) is dead-lettered.
const POISON_AFTER: u64 = 5;

/// Failures other than a store outage tolerated before an update is dead-lettered.
const UNPROCESSABLE_AFTER: u32 = 5;

/// Consume until shutdown, reconnecting with backoff when the broker goes away.
pub async fn run(
    intake: Arc<TicketIntake>,
    q: TicketQueueConfig,
    instance: String,
    mut shutdown: Shutdown,
) {
    let door = q.door(&instance);
    let mut link = Reconnect::new(&door, CONNECTOR);
    while let Some(mut source) = link.connect(&mut shutdown).await {
        let r = consume(&intake, &mut source, &mut shutdown).await;
        source.close().await;
        if !link.ended(r, &mut shutdown).await {
            break;
        }
    }
    info!(connector = CONNECTOR, "ticket queue stopped");
}

async fn consume<S: Source>(
    intake: &TicketIntake,
    source: &mut S,
    shutdown: &mut Shutdown,
) -> Result<(), SourceError> {
    loop {
        let msg = tokio::select! {
            _ = shutdown.wait() => {
                source.stop().await;
                return Ok(());
            }
            d = source.recv() => match d? {
                None => return Err(SourceError::Ended { door: CONNECTOR.to_string() }),
                Some(m) => m,
            },
        };
        let mut wait = Duration::from_millis(200);
        let mut failures = 0u32;
        let settle = loop {
            let e = match handle(intake, &msg).await {
                Ok(settle) => break settle,
                Err(e) => e,
            };
            if !matches!(e, TicketStoreError::Store(_)) {
                failures += 1;
            }
            // A store outage: keep trying (nothing is acked, nothing lost). Anything else (a
            // stored version that no longer opens or parses) would block the queue for good:
            // after a few tries the update is dead-lettered instead.
            if failures > UNPROCESSABLE_AFTER {
                let detail = format!("cannot apply: {e}");
                let now = intake.clock.now_ms();
                if let Ok(settle) = dead_letter(intake, &msg, "unprocessable", &detail, now).await {
                    break settle;
                }
            }
            warn!(connector = CONNECTOR, error = %e, retry_in_ms = wait.as_millis() as u64,
                  "cannot store a ticket update from the queue; not acked, retrying");
            if shutdown.sleep(wait).await {
                return Ok(()); // unacked: the broker redelivers it
            }
            wait = (wait * 2).min(Duration::from_secs(30));
        };
        let settled = source.settle(CONNECTOR, &[(&msg, settle)]).await?;
        if settled.acked > 0 {
            counter!("cem_bridge_messages_acked_total", "connector" => CONNECTOR).increment(1);
        }
    }
}

/// Store one delivery's effect; `Ok` = it may be settled so.
async fn handle(intake: &TicketIntake, msg: &Delivery) -> Result<Settle, TicketStoreError> {
    let now = intake.clock.now_ms();
    if msg.redeliveries > POISON_AFTER {
        let detail = format!(
            "delivered {} times before: it keeps failing",
            msg.redeliveries
        );
        return Ok(dead_letter(intake, msg, "poison", &detail, now).await?);
    }
    let update = match TicketUpdate::parse(&msg.body) {
        Ok(u) => u,
        Err(e) => {
            return Ok(dead_letter(intake, msg, "malformed_ticket", &e.to_string(), now).await?);
        }
    };
    match intake
        .store
        .ticket_accept(&intake.ctx, &update, &msg.body, None, now)
        .await
    {
        Ok(a) => {
            counter!("cem_bridge_ticket_intake_total", "via" => "queue", "result" => a.code())
                .increment(1);
            info!(connector = CONNECTOR, ticket_id = %update.ticket_id, version = update.version,
                  status = update.status.code(), result = a.code(), "ticket update accepted");
            intake.wake.notify_one();
            Ok(Settle::Ack)
        }
        Err(e) => Err(e),
    }
}

/// Keep a body the loop cannot take (sealed); the settle forwards it with its reason:
/// `malformed_ticket`, `poison` (redelivered too often) or `unprocessable`.
async fn dead_letter(
    intake: &TicketIntake,
    msg: &Delivery,
    reason: &'static str,
    detail: &str,
    now: i64,
) -> Result<Settle, StoreError> {
    let hash = content_hash(&msg.body);
    let sealed = intake
        .ctx
        .cipher
        .seal(&dead_letter_aad(&hash), stored_part(&msg.body))
        .map_err(|_| StoreError::Sealing)?;
    let mut tx = intake.store.begin().await?;
    tx.dead_letter(
        &DeadLetterEntry {
            connector: CONNECTOR,
            message_id: msg.message_id.as_deref(),
            reason,
            detail,
            content_hash: &hash,
            size_bytes: msg.body.len() as i64,
            delivery_count: i64::try_from(msg.redeliveries).unwrap_or(i64::MAX),
            sealed_body: Some((&sealed.0, &sealed.1)),
            sealed_headers: None,
        },
        now,
    )
    .await?;
    tx.audit(&AuditEntry {
        connector: Some(CONNECTOR),
        message_id: msg.message_id.as_deref(),
        action: "dead_letter",
        rule: Some("R-TKT-11"),
        reason: Some(reason),
        detail: Some(detail),
        ..Default::default()
    })
    .await?;
    tx.commit().await?;
    counter!("cem_bridge_dead_letters_total", "connector" => CONNECTOR, "reason" => reason)
        .increment(1);
    warn!(connector = CONNECTOR, message_id = ?msg.message_id, reason, detail, "dead-lettered");
    Ok(Settle::DeadLetter {
        reason: reason.to_string(),
        detail: detail.to_string(),
    })
}
