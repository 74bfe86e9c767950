//! One task per source: receive deliveries from the source's door (a
//! [`cem_connectors::source::Source`]), decode and decide each ([`context`]), write the batch
//! in one store transaction ([`batch`]), and only then settle it with the door: dead letters
//! forwarded with their reason, everything else acked. A crash anywhere before the settle means
//! redelivery; the dedupe record turns that into a counted `duplicate` with no second effect.
//!
//! May import: `store`, `privacy`, `process`, `config`. The door is generic: this room names
//! the door kinds only to pick the one a `[[source]]` configured.

pub mod backlog;
pub mod batch;
pub mod context;
pub mod facts;
pub mod record;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cem_connectors::source::{Delivery, Settle, Source, SourceBuilder, SourceError};
use cem_pipeline::decode::{Charset, DecodeOptions};
use cem_pipeline::mapping::Outcome;
use cem_pipeline::reason::{DeadLetterReason, Rejection};
use cem_pipeline::translate::decode;
use metrics::counter;
use tracing::{info, warn};

use crate::config::source::{Door, SourceConfig};
use crate::process::fault::{self, Point};
use crate::process::reconnect::Reconnect;
use crate::process::shutdown::Shutdown;
use crate::process::tally;
use crate::store::dead_letters::content_hash;
use batch::write_batch;
use context::{Disposition, IngestContext, Mapped, Prepared, message_id_of};

/// Consume one source through its door until shutdown, reopening it with backoff when it
/// fails (broker gone, port taken).
pub async fn run_source(
    ctx: Arc<IngestContext>,
    src: SourceConfig,
    door: Door,
    shutdown: Shutdown,
) {
    match door {
        Door::Amqp(d) => run_door(ctx, src, &d, shutdown).await,
        Door::Mllp(d) => run_door(ctx, src, &d, shutdown).await,
        Door::Soap(d) => run_door(ctx, src, &d, shutdown).await,
    }
}

/// Consume one door until shutdown, reopening it with backoff when it fails.
pub async fn run_door<B: SourceBuilder>(
    ctx: Arc<IngestContext>,
    src: SourceConfig,
    door: &B,
    mut shutdown: Shutdown,
) {
    let mut link = Reconnect::new(door, &src.name);
    while let Some(mut source) = link.connect(&mut shutdown).await {
        ctx.health.set_connected(&src.name, true);
        ctx.health
            .set_address(&src.name, src.kind.code(), source.local_addr());
        let r = consume(&ctx, &src, &mut source, &mut shutdown).await;
        ctx.health.set_connected(&src.name, false);
        source.close().await;
        if !link.ended(r, &mut shutdown).await {
            break;
        }
    }
    info!(connector = %src.name, "source stopped");
}

/// A batch being written: it gives the batch back with what the transaction decided, or
/// `None` when shutdown came while the store was down (nothing written, nothing to settle).
type Commit<'a> =
    Pin<Box<dyn Future<Output = (Vec<Prepared>, Option<Vec<Disposition>>)> + Send + 'a>>;

/// The loop of one open door, pipelined: while one batch is written (decoded and decided
/// already), the next is received, decoded and decided, so the store and the decoding work at
/// the same time. A batch is written when none is being written and it is full, or its first
/// delivery has waited the door's batch wait; under load, the deliveries that arrive during
/// a write form the next batch (group commit). A batch is settled with the door only after its
/// transaction committed, in order; at most two batches are unsettled.
async fn consume<S: Source>(
    ctx: &IngestContext,
    src: &SourceConfig,
    source: &mut S,
    shutdown: &mut Shutdown,
) -> Result<(), SourceError> {
    let wait = source.batch_wait(Duration::from_millis(src.batch_wait_ms));
    let mut next: Vec<Prepared> = Vec::with_capacity(src.batch_size);
    let mut next_since = tokio::time::Instant::now();
    let mut writing: Option<Commit<'_>> = None;
    let mut ended = false;
    loop {
        if writing.is_none()
            && !next.is_empty()
            && (ended || next.len() >= src.batch_size || next_since.elapsed() >= wait)
        {
            let batch = std::mem::replace(&mut next, Vec::with_capacity(src.batch_size));
            writing = Some(start_commit(ctx, src, batch, shutdown.clone()));
        }
        if ended && writing.is_none() {
            return Err(SourceError::Ended {
                door: src.name.clone(),
            });
        }
        let taking = !ended && next.len() < src.batch_size;
        let waiting = writing.is_none() && !next.is_empty();
        tokio::select! {
            _ = shutdown.wait() => {
                // A batch under way is finished and settled: its effects are durable, and
                // acking them spares a redelivery. What was gathered after it is redelivered.
                if let Some(commit) = writing.take() {
                    let (batch, dispositions) = commit.await;
                    if let Some(d) = dispositions {
                        settle(ctx, src, source, &batch, d).await?;
                    }
                }
                source.stop().await;
                return Ok(());
            }
            done = async {
                match writing.as_mut() {
                    Some(commit) => commit.await,
                    None => std::future::pending().await,
                }
            }, if writing.is_some() => {
                writing = None;
                let (batch, dispositions) = done;
                let Some(d) = dispositions else {
                    // Shutdown while the store was down: nothing acked, all redelivered.
                    source.stop().await;
                    return Ok(());
                };
                settle(ctx, src, source, &batch, d).await?;
            }
            d = source.recv(), if taking => {
                // A failure leaves every unsettled delivery to the sender, who delivers it again.
                match d? {
                    Some(m) => {
                        if next.is_empty() {
                            next_since = tokio::time::Instant::now();
                        }
                        next.push(prepare(ctx, src, m, Instant::now()));
                    }
                    None => ended = true,
                }
            }
            _ = tokio::time::sleep_until(next_since + wait), if waiting => {}
        }
    }
}

/// Write `batch` (with retries; see [`commit_with_retry`]) on a shutdown handle of its own.
fn start_commit<'a>(
    ctx: &'a IngestContext,
    src: &'a SourceConfig,
    batch: Vec<Prepared>,
    mut shutdown: Shutdown,
) -> Commit<'a> {
    Box::pin(async move {
        let d = commit_with_retry(ctx, src, &batch, &mut shutdown).await;
        (batch, d)
    })
}

/// After a batch committed: settle it with the door and note what was acked.
async fn settle<S: Source>(
    ctx: &IngestContext,
    src: &SourceConfig,
    source: &mut S,
    batch: &[Prepared],
    dispositions: Vec<Disposition>,
) -> Result<(), SourceError> {
    fault::hit(Point::AfterCommit);
    let acked = finish(src, source, batch, dispositions).await?;
    ctx.health.note_acked(&src.name, acked);
    Ok(())
}

fn prepare(ctx: &IngestContext, src: &SourceConfig, msg: Delivery, received: Instant) -> Prepared {
    let hash = content_hash(&msg.body);
    let result = if msg.redeliveries > src.poison_after {
        Err(Rejection::new(
            DeadLetterReason::Poison,
            format!(
                "delivered {} times before (limit {}): the message keeps failing",
                msg.redeliveries, src.poison_after
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
        // Defence in depth: a panic in a decoder must not take the process down.
        match std::panic::catch_unwind(AssertUnwindSafe(|| {
            decode(&msg.body, &opts, set, &msg.headers).map(|d| match d.outcome {
                Outcome::Event(e) => {
                    let (decision, followup) = ctx.decide(&e, now);
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
) -> Option<Vec<Disposition>> {
    let mut backoff = Duration::from_millis(200);
    let mut failures = 0;
    loop {
        match write_batch(ctx, src, prepared).await {
            Ok(d) => return Some(d),
            Err(e) => {
                failures += 1;
                warn!(connector = %src.name, error = %e, retry_in_ms = backoff.as_millis() as u64,
                      "store write failed; holding the batch unacked and retrying");
                // A failed commit blames no message (connection lost, disk full): hold on.
                if failures >= FAILURES_BEFORE_ISOLATION
                    && !e.at_commit()
                    && ctx.store.ping().await.is_ok()
                {
                    // The store answers, yet this batch keeps failing: one message is to blame.
                    return isolate(ctx, src, prepared, shutdown).await;
                }
                if shutdown.sleep(backoff).await {
                    return None;
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Write each delivery in its own transaction. One the store keeps refusing while it answers
/// other queries is dead-lettered as `poison` (a NUL byte in an id is refused by PostgreSQL,
/// say) so it cannot block the feed; if the store itself is down, or the commit is what fails,
/// wait for it as usual.
async fn isolate(
    ctx: &IngestContext,
    src: &SourceConfig,
    prepared: &[Prepared],
    shutdown: &mut Shutdown,
) -> Option<Vec<Disposition>> {
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
                    if failures >= FAILURES_BEFORE_ISOLATION
                        && !e.at_commit()
                        && ctx.store.ping().await.is_ok()
                    {
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
                        return None;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
    Some(out)
}

/// After the commit: log and count the dead letters, then settle the batch with the door
/// (dead letters forwarded with their reason, the rest acked). Returns how many were acked.
async fn finish<S: Source>(
    src: &SourceConfig,
    source: &mut S,
    prepared: &[Prepared],
    dispositions: Vec<Disposition>,
) -> Result<u64, SourceError> {
    let mut settles = Vec::with_capacity(prepared.len());
    for (p, d) in prepared.iter().zip(dispositions) {
        let settle = match d {
            Disposition::Ack => Settle::Ack,
            Disposition::DeadLetter { reason, detail } => {
                let mid = message_id_of(p).unwrap_or_default();
                counter!("cem_bridge_dead_letters_total", "connector" => src.name.clone(), "reason" => reason.code()).increment(1);
                tally::add(tally::Kind::DeadLettered, 1);
                let traced = if mid.is_empty() {
                    format!("sha256:{}", p.hash.get(..16).unwrap_or(&p.hash))
                } else {
                    mid
                };
                let _span = crate::process::logctx::message_span(&src.name, &traced).entered();
                info!(reason = reason.code(), detail = %detail, "dead-lettered");
                Settle::DeadLetter {
                    reason: reason.code().to_string(),
                    detail,
                }
            }
        };
        settles.push((&p.msg, settle));
    }
    let settled = source.settle(&src.name, &settles).await?;
    if settled.acked > 0 {
        counter!("cem_bridge_messages_acked_total", "connector" => src.name.clone())
            .increment(settled.acked as u64);
    }
    Ok(settled.acked as u64)
}
