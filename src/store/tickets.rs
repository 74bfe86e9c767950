//! The ticket loop's store side (domain rules §4): accepting a CEM ticket update durably and in
//! order (R-TKT-8, R-TKT-11), applying it — the outbox rows for HCRM and the call center
//! (R-TKT-6), the SLA escalation rows (R-TKT-2..4), cancelled calls — and emitting due
//! escalations exactly once. Every step is one store transaction; the decisions come from
//! `cem_pipeline::ticket`. Ticket bodies and outbound requests are sealed with the vault key
//! (their free text may hold personal data); nothing here logs a body.

use cem_connectors::sink::Peer;
use cem_pipeline::ticket::{
    self, Admission, Calendar, CallKind, CallingWindows, Grade, HcrmOp, SlaClock, Status,
    TicketState, TicketUpdate,
};
use cem_pipeline::time::rfc3339_in;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use metrics::counter;
use serde_json::{Value, json};
use sqlx::Row;

use crate::privacy::vault::{VaultCipher, VaultError};
use crate::store::keys::{Thread, followup_step_key, outbox_aad};
use crate::store::{AuditEntry, Backend, Store, StoreError, StoreTx, db, read_rows};

/// What the ticket rules need besides the store.
#[derive(Clone)]
pub struct TicketCtx {
    pub cipher: VaultCipher,
    pub zone: TimeZone,
    pub calendar: Calendar,
    pub windows: CallingWindows,
    /// R-TKT-8: how long early versions wait for the gap to fill.
    pub gap_hold_ms: i64,
    /// `[cem_results]` is configured: ticket call outcomes are posted back to the CEM.
    pub cem_results: bool,
}

/// How an accepted update was taken (the webhook's 200 says which).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Applied now, with any held successors it released (versions in order).
    Applied(Vec<u32>),
    /// Early: held until the missing version arrives or the hold times out.
    Held,
    /// `stale_version`: this version or a later one was applied already.
    Stale,
    /// This early version is already held.
    Duplicate,
    /// The same signed request again (R-TKT-11 → 401); nothing stored.
    Replay,
}

impl Accepted {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Applied(_) => "applied",
            Self::Held => "held",
            Self::Stale => "stale_version",
            Self::Duplicate => "duplicate",
            Self::Replay => "replay",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TicketStoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("ticket {ticket_id} version {version}: the stored body no longer parses: {why}")]
    Corrupt {
        ticket_id: String,
        version: u32,
        why: String,
    },
}

/// The associated data of a sealed ticket version.
fn version_aad(ticket_id: &str, version: u32) -> String {
    format!("tk|{ticket_id}|{version}")
}

/// What the store remembers of a ticket.
#[derive(Debug, Clone, Default)]
struct TicketRow {
    ticket_id: String,
    applied_version: u32,
    grade: Option<Grade>,
    status: Option<Status>,
    patient_key: Option<String>,
    /// `vk_…` of the survey the ticket is about, when the CEM named it.
    visit_key: Option<String>,
    patient_known: bool,
    held_since: Option<i64>,
}

fn ts_ms(t: Timestamp) -> i64 {
    t.as_millisecond()
}

impl Store {
    /// R-TKT-11 / R-TKT-8: store `u` (whose raw `body` was signed as `signature`) durably and
    /// apply whatever is now in order, in one transaction. Returns once committed.
    pub async fn ticket_accept(
        &self,
        ctx: &TicketCtx,
        u: &TicketUpdate,
        body: &[u8],
        signature: Option<&str>,
        now: i64,
    ) -> Result<Accepted, TicketStoreError> {
        let mut tx = self.begin().await?;
        if let Some(sig) = signature {
            let fresh = first_sight(&mut tx, sig, now).await?;
            if !fresh {
                return Ok(Accepted::Replay);
            }
        }
        let mut row = lock_ticket(&mut tx, self.backend, &u.ticket_id, now).await?;
        let held = held_versions(&mut tx, &u.ticket_id).await?;
        let result = match ticket::admit(row.applied_version, &held, u.version) {
            Admission::Stale => {
                tx.count("cem_bridge_ticket_stale_versions_total", &[], 1);
                Accepted::Stale
            }
            Admission::Duplicate => Accepted::Duplicate,
            Admission::Hold => {
                insert_version(&mut tx, ctx, u, body, "held", now).await?;
                if row.held_since.is_none() {
                    sqlx::query("UPDATE tickets SET held_since = $1 WHERE ticket_id = $2")
                        .bind(now)
                        .bind(u.ticket_id.as_str())
                        .execute(tx.conn().await?)
                        .await
                        .map_err(db("hold ticket version"))?;
                }
                Accepted::Held
            }
            Admission::Apply => {
                insert_version(&mut tx, ctx, u, body, "applied", now).await?;
                apply(&mut tx, ctx, &mut row, u, now).await?;
                let mut applied = vec![u.version];
                applied.extend(release_held(&mut tx, ctx, &mut row, now, false).await?);
                Accepted::Applied(applied)
            }
        };
        tx.commit().await?;
        Ok(result)
    }

    /// R-TKT-8: tickets whose early versions waited longer than the hold apply them now, in
    /// order, over the gap (counted as `ticket_gap_timeout`). Returns the tickets released.
    pub async fn ticket_release_gaps(
        &self,
        ctx: &TicketCtx,
        now: i64,
    ) -> Result<usize, TicketStoreError> {
        let due: Vec<String> = read_rows(
&sqlx::query(
            "SELECT ticket_id FROM tickets WHERE held_since IS NOT NULL AND held_since <= $1 ORDER BY held_since LIMIT 100",
        )
        .bind(now - ctx.gap_hold_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(db("find held ticket versions"))?,
db("find held ticket versions"),
|r| r.try_get("ticket_id"),
)?;
        let mut released = 0;
        for id in due {
            let mut tx = self.begin().await?;
            let mut row = lock_ticket(&mut tx, self.backend, &id, now).await?;
            // Another instance may have released it meanwhile.
            if row.held_since.is_some_and(|h| h <= now - ctx.gap_hold_ms) {
                let versions = release_held(&mut tx, ctx, &mut row, now, true).await?;
                if !versions.is_empty() {
                    released += 1;
                    tx.count("cem_bridge_ticket_gap_timeouts_total", &[], 1);
                    tx.audit(&AuditEntry {
                        job_id: Some(&id),
                        action: "ticket_gap_timeout",
                        rule: Some("R-TKT-8"),
                        reason: Some("ticket_gap_timeout"),
                        detail: Some(&format!(
                            "versions {versions:?} applied after waiting {} s for a missing one",
                            ctx.gap_hold_ms / 1000
                        )),
                        ..Default::default()
                    })
                    .await?;
                }
            }
            tx.commit().await?;
        }
        Ok(released)
    }

    /// R-TKT-4: emit every due, unmet escalation exactly once — the row turns `emitted` in
    /// the transaction that queues its HCRM update. Returns (grade, clock, level) emitted.
    pub async fn ticket_escalate(
        &self,
        ctx: &TicketCtx,
        now: i64,
    ) -> Result<Vec<(String, String, u8)>, TicketStoreError> {
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let mut tx = self.begin().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT e.ticket_id, e.clock, e.level, e.grade, e.deadline, t.patient_key, t.status \
             FROM ticket_escalations e JOIN tickets t ON t.ticket_id = e.ticket_id \
             WHERE e.state = 'pending' AND e.due_at <= $1 ORDER BY e.due_at, e.ticket_id LIMIT 100{lock}"
        )))
        .bind(now)
        .fetch_all(tx.conn().await?)
        .await
        .map_err(db("find due escalations"))?;
        let mut due: Vec<DueEscalation> = Vec::with_capacity(rows.len());
        for r in &rows {
            let read = db("read escalation");
            due.push(
                (|| {
                    Ok::<_, sqlx::Error>(DueEscalation {
                        id: r.try_get("ticket_id")?,
                        clock: r.try_get("clock")?,
                        level: u8::try_from(r.try_get::<i64, _>("level")?).unwrap_or(3),
                        grade: r.try_get("grade")?,
                        deadline: r.try_get("deadline")?,
                        pk: r.try_get("patient_key")?,
                        status: r.try_get("status")?,
                    })
                })()
                .map_err(read)?,
            );
        }
        let mut emitted = Vec::new();
        let mut breaches = Vec::new();
        for (winner, covered) in catch_up(due) {
            // The levels a catch-up covers are not sent on their own (issue 20 §4).
            let mut covers = Vec::with_capacity(covered.len());
            for c in &covered {
                let superseded = sqlx::query(
                    "UPDATE ticket_escalations SET state = 'superseded', emitted_at = $1 \
                     WHERE ticket_id = $2 AND clock = $3 AND level = $4 AND state = 'pending'",
                )
                .bind(now)
                .bind(c.id.as_str())
                .bind(c.clock.as_str())
                .bind(i64::from(c.level))
                .execute(tx.conn().await?)
                .await
                .map_err(db("supersede escalation"))?
                .rows_affected()
                    == 1;
                if superseded {
                    if c.level == 1 {
                        breaches.push((c.grade.clone(), c.clock.clone()));
                    }
                    covers.push(json!({ "clock": c.clock, "level": c.level }));
                }
            }
            let DueEscalation {
                id,
                clock,
                level,
                grade,
                deadline,
                pk,
                status,
            } = winner;
            let won = sqlx::query(
                "UPDATE ticket_escalations SET state = 'emitted', emitted_at = $1 \
                 WHERE ticket_id = $2 AND clock = $3 AND level = $4 AND state = 'pending'",
            )
            .bind(now)
            .bind(id.as_str())
            .bind(clock.as_str())
            .bind(i64::from(level))
            .execute(tx.conn().await?)
            .await
            .map_err(db("emit escalation"))?
            .rows_affected()
                == 1;
            if !won {
                continue;
            }
            let Some(c) = SlaClock::parse(&clock) else {
                continue;
            };
            let mut body = json!({
                "op": "escalate",
                "externalTicketId": format!("cem:{id}"),
                "ticketId": id,
                "grade": grade,
                "status": status,
                "escalation": {
                    "clock": clock,
                    "level": level,
                    "target": ticket::escalation_target(level),
                    "deadline": local_ms(deadline, &ctx.zone),
                },
                "occurredAt": local_ms(now, &ctx.zone),
                "patient": { "pseudonym": pk },
            });
            if !covers.is_empty() {
                body["escalation"]["catchUp"] = serde_json::Value::Array(covers.clone());
            }
            let key = ticket::escalation_key(&id, c, level);
            queue(
                &mut tx,
                ctx,
                &id,
                Peer::Hcrm,
                "escalate",
                &key,
                pk.as_deref(),
                &body,
                now,
                now,
            )
            .await?;
            tx.audit(&AuditEntry {
                job_id: Some(&id),
                patient_key: pk.as_deref(),
                action: "ticket_escalated",
                rule: Some("R-TKT-4"),
                reason: Some(&clock),
                detail: Some(&if covers.is_empty() {
                    format!("level {level} ({})", ticket::escalation_target(level))
                } else {
                    format!(
                        "level {level} ({}), a catch-up covering {} lower level(s) due at the same time",
                        ticket::escalation_target(level),
                        covers.len()
                    )
                }),
                ..Default::default()
            })
            .await?;
            if level == 1 {
                breaches.push((grade.clone(), clock.clone()));
            }
            emitted.push((grade, clock, level));
        }
        tx.commit().await?;
        for (grade, clock) in breaches {
            counter!("cem_bridge_ticket_sla_breaches_total", "grade" => grade, "clock" => clock)
                .increment(1);
        }
        for (_, _, level) in &emitted {
            counter!("cem_bridge_ticket_escalations_total", "level" => level.to_string())
                .increment(1);
        }
        Ok(emitted)
    }
}

/// A pending escalation found due.
struct DueEscalation {
    id: String,
    clock: String,
    level: u8,
    grade: String,
    deadline: i64,
    pk: Option<String>,
    status: Option<String>,
}

/// The escalations to send from those found due: per ticket the highest level (the latest
/// deadline among equals), with the lower ones it covers. A ticket whose levels fell due one by
/// one while the bridge ran has one each time; after an outage, or for a ticket that arrived
/// late, one catch-up replaces a burst of up to six requests.
fn catch_up(due: Vec<DueEscalation>) -> Vec<(DueEscalation, Vec<DueEscalation>)> {
    let mut by_ticket: Vec<Vec<DueEscalation>> = Vec::new();
    for d in due {
        match by_ticket.iter_mut().find(|g| g[0].id == d.id) {
            Some(g) => g.push(d),
            None => by_ticket.push(vec![d]),
        }
    }
    by_ticket
        .into_iter()
        .filter_map(|mut g| {
            let top = (0..g.len()).max_by_key(|&i| (g[i].level, g[i].deadline))?;
            let winner = g.swap_remove(top);
            Some((winner, g))
        })
        .collect()
}

/// R-TKT-11 replay / callback dedupe: record `key` as seen; `false` if it was seen before.
async fn first_sight(tx: &mut StoreTx, key: &str, now: i64) -> Result<bool, StoreError> {
    Ok(sqlx::query(
        "INSERT INTO webhook_seen (signature, seen_at) VALUES ($1, $2) ON CONFLICT (signature) DO NOTHING",
    )
    .bind(key)
    .bind(now)
    .execute(tx.conn().await?)
    .await
    .map_err(db("record webhook signature"))?
    .rows_affected()
        == 1)
}

/// Make sure the ticket row exists and lock it (PostgreSQL: row lock; SQLite: the insert takes
/// the write lock first, so the transaction never has to upgrade from a read).
async fn lock_ticket(
    tx: &mut StoreTx,
    backend: Backend,
    ticket_id: &str,
    now: i64,
) -> Result<TicketRow, StoreError> {
    sqlx::query(
        "INSERT INTO tickets (ticket_id, updated_at) VALUES ($1, $2) ON CONFLICT (ticket_id) DO NOTHING",
    )
    .bind(ticket_id)
    .bind(now)
    .execute(tx.conn().await?)
    .await
    .map_err(db("create ticket"))?;
    let lock = match backend {
        Backend::Postgres => " FOR UPDATE",
        Backend::Sqlite => "",
    };
    let r = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT applied_version, grade, status, patient_key, visit_key, patient_known, held_since FROM tickets WHERE ticket_id = $1{lock}"
    )))
    .bind(ticket_id)
    .fetch_one(tx.conn().await?)
    .await
    .map_err(db("lock ticket"))?;
    let read = || db("read ticket");
    Ok(TicketRow {
        ticket_id: ticket_id.to_string(),
        applied_version: u32::try_from(r.try_get::<i64, _>("applied_version").map_err(read())?)
            .unwrap_or(0),
        grade: r
            .try_get::<Option<String>, _>("grade")
            .map_err(read())?
            .and_then(|g| Grade::parse(&g)),
        status: r
            .try_get::<Option<String>, _>("status")
            .map_err(read())?
            .and_then(|s| Status::parse(&s)),
        patient_key: r.try_get("patient_key").map_err(read())?,
        visit_key: r.try_get("visit_key").map_err(read())?,
        patient_known: r.try_get::<i64, _>("patient_known").map_err(read())? != 0,
        held_since: r.try_get("held_since").map_err(read())?,
    })
}

async fn held_versions(tx: &mut StoreTx, ticket_id: &str) -> Result<Vec<u32>, StoreError> {
    read_rows(
&sqlx::query("SELECT version FROM ticket_versions WHERE ticket_id = $1 AND state = 'held' ORDER BY version")
        .bind(ticket_id)
        .fetch_all(tx.conn().await?)
        .await
        .map_err(db("read held versions"))?,
db("read held versions"),
|r| r.try_get::<i64, _>("version").map(|v| u32::try_from(v).unwrap_or(0)),
)
}

async fn insert_version(
    tx: &mut StoreTx,
    ctx: &TicketCtx,
    u: &TicketUpdate,
    body: &[u8],
    state: &str,
    now: i64,
) -> Result<(), TicketStoreError> {
    let (key_id, sealed) = ctx
        .cipher
        .seal(&version_aad(&u.ticket_id, u.version), body)?;
    sqlx::query(
        "INSERT INTO ticket_versions (ticket_id, version, state, received_at, key_id, body) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(u.ticket_id.as_str())
    .bind(i64::from(u.version))
    .bind(state)
    .bind(now)
    .bind(key_id)
    .bind(sealed)
    .execute(tx.conn().await?)
    .await
    .map_err(db("store ticket version"))?;
    Ok(())
}

/// Apply the held versions that are now in order — or, with `over_gaps`, all of them in order
/// (the hold timed out). Marks them applied and clears or moves `held_since`.
async fn release_held(
    tx: &mut StoreTx,
    ctx: &TicketCtx,
    row: &mut TicketRow,
    now: i64,
    over_gaps: bool,
) -> Result<Vec<u32>, TicketStoreError> {
    let id = row.ticket_id.clone();
    let rows = sqlx::query(
        "SELECT version, key_id, body FROM ticket_versions WHERE ticket_id = $1 AND state = 'held' ORDER BY version",
    )
    .bind(id.as_str())
    .fetch_all(tx.conn().await?)
    .await
    .map_err(db("read held versions"))?;
    let mut applied = Vec::new();
    let mut remaining = false;
    for r in &rows {
        let read = || db("read held version");
        let v = u32::try_from(r.try_get::<i64, _>("version").map_err(read())?).unwrap_or(0);
        if v <= row.applied_version {
            continue;
        }
        if v != row.applied_version + 1 && !over_gaps {
            remaining = true;
            break;
        }
        let key_id: String = r.try_get("key_id").map_err(read())?;
        let sealed: Vec<u8> = r.try_get("body").map_err(read())?;
        let plain = ctx.cipher.open(&version_aad(&id, v), &key_id, &sealed)?;
        let u = TicketUpdate::parse(&plain).map_err(|e| TicketStoreError::Corrupt {
            ticket_id: id.clone(),
            version: v,
            why: e.to_string(),
        })?;
        apply(tx, ctx, row, &u, now).await?;
        sqlx::query(
            "UPDATE ticket_versions SET state = 'applied' WHERE ticket_id = $1 AND version = $2",
        )
        .bind(id.as_str())
        .bind(i64::from(v))
        .execute(tx.conn().await?)
        .await
        .map_err(db("mark version applied"))?;
        applied.push(v);
    }
    // Still waiting for a gap: the hold restarts from the oldest version still held.
    let held_since: Option<i64> = if remaining {
        sqlx::query("SELECT MIN(received_at) AS m FROM ticket_versions WHERE ticket_id = $1 AND state = 'held'")
            .bind(id.as_str())
            .fetch_one(tx.conn().await?)
            .await
            .map_err(db("read held versions"))?
            .try_get("m")
            .map_err(db("read held versions"))?
    } else {
        None
    };
    sqlx::query("UPDATE tickets SET held_since = $1 WHERE ticket_id = $2")
        .bind(held_since)
        .bind(id.as_str())
        .execute(tx.conn().await?)
        .await
        .map_err(db("update held state"))?;
    row.held_since = held_since;
    Ok(applied)
}

/// Seal and queue one outbound request; a key queued before is left alone (R-TKT-9).
#[allow(clippy::too_many_arguments)]
async fn queue(
    tx: &mut StoreTx,
    ctx: &TicketCtx,
    ticket_id: &str,
    sink: Peer,
    kind: &str,
    idem_key: &str,
    patient_key: Option<&str>,
    body: &Value,
    due_at: i64,
    now: i64,
) -> Result<(), TicketStoreError> {
    let (key_id, sealed) = ctx
        .cipher
        .seal(&outbox_aad(idem_key), body.to_string().as_bytes())?;
    sqlx::query(
        "INSERT INTO ticket_outbox (ticket_id, sink, kind, idem_key, patient_key, status, due_at, next_attempt_at, key_id, body, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 'pending', $6, $6, $7, $8, $9, $9) ON CONFLICT (idem_key) DO NOTHING",
    )
    .bind(ticket_id)
    .bind(sink.code())
    .bind(kind)
    .bind(idem_key)
    .bind(patient_key)
    .bind(due_at)
    .bind(key_id)
    .bind(sealed)
    .bind(now)
    .execute(tx.conn().await?)
    .await
    .map_err(db("queue ticket request"))?;
    Ok(())
}

fn local_ms(ms: i64, zone: &TimeZone) -> String {
    rfc3339_in(cem_pipeline::time::from_ms(ms), zone)
}

/// Apply one update in order (R-TKT-6): queue its HCRM request, schedule or cancel calls,
/// start or stop SLA clocks, and move the ticket to the update's version and status.
async fn apply(
    tx: &mut StoreTx,
    ctx: &TicketCtx,
    row: &mut TicketRow,
    u: &TicketUpdate,
    now: i64,
) -> Result<(), TicketStoreError> {
    let now_ts = cem_pipeline::time::from_ms(now);
    let first = row.grade.is_none();
    let mut sla = Vec::new();
    if first {
        let grade = u.grade();
        row.grade = Some(grade);
        if let Some(pk) = u.patient_key.as_deref() {
            let survivor = tx.resolve_patient(pk).await?;
            row.patient_known = sqlx::query("SELECT 1 AS one FROM vault WHERE pseudonym = $1")
                .bind(survivor.as_str())
                .fetch_optional(tx.conn().await?)
                .await
                .map_err(db("look for the patient in the vault"))?
                .is_some();
            row.patient_key = Some(survivor);
        }
        // R-TKT-2/4: every clock's three levels, once. A case the bridge opened for a follow-up
        // call (R-FUP-5) carries its deadlines to HCRM, which owns it: no update of it ever
        // comes back here, so the bridge does not escalate it.
        sla = ticket::deadlines(u, grade, &ctx.calendar, &ctx.zone).clocks;
        let ladder = if u.followup_case() { &[][..] } else { &sla[..] };
        for (clock, deadline) in ladder {
            for (level, due) in ticket::escalation_times(grade, *deadline) {
                sqlx::query(
                    "INSERT INTO ticket_escalations (ticket_id, clock, level, grade, deadline, due_at, state) \
                     VALUES ($1, $2, $3, $4, $5, $6, 'pending') ON CONFLICT (ticket_id, clock, level) DO NOTHING",
                )
                .bind(u.ticket_id.as_str())
                .bind(clock.code())
                .bind(i64::from(level))
                .bind(grade.code())
                .bind(ts_ms(*deadline))
                .bind(ts_ms(due))
                .execute(tx.conn().await?)
                .await
                .map_err(db("start SLA clock"))?;
            }
        }
    }
    // The first version that names the visit sets it for the ticket's HCRM requests.
    if row.visit_key.is_none() {
        row.visit_key = u.visit_key.clone();
    }
    let grade = row.grade.unwrap_or(Grade::General);
    let state = TicketState {
        grade,
        status: row.status.unwrap_or(Status::Open),
        patient_known: row.patient_known,
    };
    let plan = ticket::plan(u, &state, &ctx.windows, &ctx.zone, now_ts);
    let pk = row.patient_key.clone();
    // R-TKT-10: HCRM gets the case either way; without a vault entry it has the pseudonym only.
    let op = if first { HcrmOp::Create } else { plan.hcrm };
    let body = crate::sinks::hcrm::hcrm_body(
        u,
        grade,
        op,
        pk.as_deref(),
        row.visit_key.as_deref(),
        &sla,
        &ctx.zone,
    );
    let key = ticket::update_key(&u.ticket_id, u.version, Peer::Hcrm.code());
    queue(
        tx,
        ctx,
        &u.ticket_id,
        Peer::Hcrm,
        op.code(),
        &key,
        pk.as_deref(),
        &body,
        now,
        now,
    )
    .await?;
    // Calls: cancel first (a REOPENED revisit), then schedule.
    if !plan.cancel_calls.is_empty() {
        let kinds: Vec<&str> = plan.cancel_calls.iter().map(|k| k.code()).collect();
        for k in &kinds {
            sqlx::query(
                "UPDATE ticket_outbox SET status = 'cancelled', reason = $1, updated_at = $2 \
                 WHERE ticket_id = $3 AND sink = 'callcenter' AND kind = $4 AND status = 'pending'",
            )
            .bind(format!("ticket {}", u.status.code()))
            .bind(now)
            .bind(u.ticket_id.as_str())
            .bind(*k)
            .execute(tx.conn().await?)
            .await
            .map_err(db("cancel pending calls"))?;
        }
    }
    // R-FUP-5: the patient of a follow-up case was just called; staff take it from HCRM.
    let calls = if u.followup_case() {
        &[][..]
    } else {
        &plan.calls[..]
    };
    if let Some(pk) = pk.as_deref() {
        for (kind, due) in calls {
            let n: i64 = sqlx::query(
                "SELECT COUNT(*) AS n FROM ticket_outbox WHERE ticket_id = $1 AND sink = 'callcenter' AND kind = $2",
            )
            .bind(u.ticket_id.as_str())
            .bind(kind.code())
            .fetch_one(tx.conn().await?)
            .await
            .map_err(db("count call tasks"))?
            .try_get("n")
            .map_err(db("count call tasks"))?;
            let key = ticket::call_key(&u.ticket_id, *kind, u32::try_from(n + 1).unwrap_or(1));
            let body = crate::sinks::callcenter::call_body(
                &u.ticket_id,
                *kind,
                &key,
                grade,
                pk,
                *due,
                &ctx.windows,
                &ctx.zone,
            );
            queue(
                tx,
                ctx,
                &u.ticket_id,
                Peer::CallCenter,
                kind.code(),
                &key,
                Some(pk),
                &body,
                ts_ms(*due),
                now,
            )
            .await?;
        }
    }
    // R-TKT-2: clocks this update meets stop; levels not yet due will not fire.
    let at = u.at().map(ts_ms).unwrap_or(now);
    let stop: Vec<SlaClock> = if plan.stop_all_clocks {
        vec![
            SlaClock::Response,
            SlaClock::Assignment,
            SlaClock::Resolution,
        ]
    } else {
        plan.meets.clone()
    };
    for c in stop {
        let state = if plan.meets.contains(&c) {
            "met"
        } else {
            "void"
        };
        sqlx::query(
            "UPDATE ticket_escalations SET state = $1 WHERE ticket_id = $2 AND clock = $3 AND state = 'pending' AND due_at > $4",
        )
        .bind(state)
        .bind(u.ticket_id.as_str())
        .bind(c.code())
        .bind(at)
        .execute(tx.conn().await?)
        .await
        .map_err(db("stop SLA clock"))?;
    }
    sqlx::query(
        "UPDATE tickets SET applied_version = $1, status = $2, grade = $3, patient_key = $4, patient_known = $5, \
         created_at = COALESCE(created_at, $6), updated_at = $7, visit_key = $9 WHERE ticket_id = $8",
    )
    .bind(i64::from(u.version))
    .bind(u.status.code())
    .bind(grade.code())
    .bind(row.patient_key.as_deref())
    .bind(i64::from(row.patient_known))
    .bind(u.created_at.map(ts_ms))
    .bind(now)
    .bind(u.ticket_id.as_str())
    .bind(row.visit_key.as_deref())
    .execute(tx.conn().await?)
    .await
    .map_err(db("update ticket"))?;
    row.applied_version = u.version;
    row.status = Some(u.status);
    tx.audit(&AuditEntry {
        job_id: Some(&u.ticket_id),
        patient_key: row.patient_key.as_deref(),
        action: "ticket_applied",
        rule: Some("R-TKT-6"),
        reason: Some(u.status.code()),
        detail: Some(&format!(
            "version {} grade {}; calls scheduled {}, kinds cancelled {}",
            u.version,
            grade.code(),
            calls.len(),
            plan.cancel_calls.len()
        )),
        ..Default::default()
    })
    .await?;
    tx.count(
        "cem_bridge_tickets_received_total",
        &[("grade", grade.code()), ("status", u.status.code())],
        1,
    );
    Ok(())
}

/// A claimed outbox row.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub ticket_id: String,
    pub sink: String,
    pub kind: String,
    pub idem_key: String,
    pub patient_key: Option<String>,
    pub attempts: i64,
    pub due_at: i64,
    key_id: String,
    sealed: Vec<u8>,
}

impl OutboxRow {
    /// The peer this row goes to; `None` for a code this binary does not know.
    pub fn peer(&self) -> Option<Peer> {
        Peer::from_code(&self.sink)
    }

    /// The request body as queued (the patient block is added by the sender).
    pub fn body(&self, cipher: &VaultCipher) -> Result<Value, TicketStoreError> {
        let plain = cipher.open(&outbox_aad(&self.idem_key), &self.key_id, &self.sealed)?;
        serde_json::from_slice(&plain).map_err(|e| TicketStoreError::Corrupt {
            ticket_id: self.ticket_id.clone(),
            version: 0,
            why: e.to_string(),
        })
    }
}

/// What became of a sent outbox row.
#[derive(Debug, Clone)]
pub enum OutboxOutcome {
    Sent {
        status: u16,
    },
    Retry {
        next_at: i64,
        status: Option<u16>,
        error: String,
    },
    Dead {
        reason: &'static str,
        status: Option<u16>,
        error: String,
    },
    /// A follow-up call found too long after its planned day: recorded `expired`, not made.
    Expired {
        error: String,
    },
}

impl Store {
    /// Claim due outbox rows in order: a row waits while an earlier due row of the same ticket
    /// and sink is still pending (R-TKT-8: update n+1 only after the 2xx of update n).
    pub async fn outbox_claim(
        &self,
        owner: &str,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE ticket_outbox SET locked_until = $1, lock_owner = $2, attempts = attempts + 1, updated_at = $3 \
             WHERE id IN (SELECT o.id FROM ticket_outbox o WHERE o.status = 'pending' AND o.next_attempt_at <= $3 \
               AND o.locked_until <= $3 AND NOT EXISTS (SELECT 1 FROM ticket_outbox p WHERE p.ticket_id = o.ticket_id \
               AND p.sink = o.sink AND p.status = 'pending' AND p.id < o.id AND p.due_at <= $3) \
               ORDER BY o.id LIMIT $4{lock}) \
             RETURNING id, ticket_id, sink, kind, idem_key, patient_key, attempts, due_at, key_id, body"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(lease_until)
            .bind(owner)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db("claim ticket requests"))?;
        let mut out: Vec<OutboxRow> = rows
            .iter()
            .map(|r| {
                Ok(OutboxRow {
                    id: r.try_get("id")?,
                    ticket_id: r.try_get("ticket_id")?,
                    sink: r.try_get("sink")?,
                    kind: r.try_get("kind")?,
                    idem_key: r.try_get("idem_key")?,
                    patient_key: r.try_get("patient_key")?,
                    attempts: r.try_get("attempts")?,
                    due_at: r.try_get("due_at")?,
                    key_id: r.try_get("key_id")?,
                    sealed: r.try_get("body")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db("read claimed ticket requests"))?;
        out.sort_by_key(|r| r.id);
        Ok(out)
    }

    /// Record one row's outcome while `owner` still holds it; a row cancelled meanwhile stays
    /// cancelled. Returns whether it applied.
    pub async fn outbox_record(
        &self,
        owner: &str,
        id: i64,
        outcome: &OutboxOutcome,
        now: i64,
    ) -> Result<bool, StoreError> {
        let q = match outcome {
            OutboxOutcome::Sent { status } => sqlx::query(
                "UPDATE ticket_outbox SET status = 'sent', sent_at = $1, updated_at = $1, locked_until = 0, last_status = $2, last_error = NULL \
                 WHERE id = $3 AND lock_owner = $4 AND status = 'pending'",
            )
            .bind(now)
            .bind(i64::from(*status)),
            OutboxOutcome::Retry { status, .. } => sqlx::query(
                "UPDATE ticket_outbox SET next_attempt_at = $5, updated_at = $1, locked_until = 0, last_status = $2, last_error = $6 \
                 WHERE id = $3 AND lock_owner = $4 AND status = 'pending'",
            )
            .bind(now)
            .bind(status.map(i64::from)),
            OutboxOutcome::Dead { status, .. } => sqlx::query(
                "UPDATE ticket_outbox SET status = 'dead', reason = $5, updated_at = $1, locked_until = 0, last_status = $2, last_error = $6 \
                 WHERE id = $3 AND lock_owner = $4 AND status = 'pending'",
            )
            .bind(now)
            .bind(status.map(i64::from)),
            OutboxOutcome::Expired { .. } => sqlx::query(
                "UPDATE ticket_outbox SET status = 'expired', reason = 'max_call_delay', updated_at = $1, locked_until = 0, \
                 last_status = $2, last_error = $5 WHERE id = $3 AND lock_owner = $4 AND status = 'pending'",
            )
            .bind(now)
            .bind(None::<i64>),
        };
        let q = q.bind(id).bind(owner);
        let q = match outcome {
            OutboxOutcome::Sent { .. } => q,
            OutboxOutcome::Retry { next_at, error, .. } => q.bind(*next_at).bind(error.as_str()),
            OutboxOutcome::Dead { reason, error, .. } => q.bind(*reason).bind(error.as_str()),
            OutboxOutcome::Expired { error } => q.bind(error.as_str()),
        };
        Ok(q.execute(&self.pool)
            .await
            .map_err(db("record ticket request outcome"))?
            .rows_affected()
            == 1)
    }
}

/// R-FUP-5: open an URGENT case (ticket `FU-…`, derived from the task) for a follow-up call
/// whose patient needs attention: the HCRM create with its SLA deadlines (1 h response). HCRM
/// owns the case: the bridge makes no call for it and runs no escalation ladder (no update of
/// it ever comes back). Returns the case's ticket id.
#[allow(clippy::too_many_arguments)]
async fn attention_case(
    backend: Backend,
    tx: &mut StoreTx,
    ctx: &TicketCtx,
    r: &ticket::CallResult,
    scene: &str,
    pk: Option<&str>,
    at: Timestamp,
    now: i64,
) -> Result<String, TicketStoreError> {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(followup_step_key(&r.task_ref).as_bytes());
    let ticket_id = format!("FU-{}", cem_pipeline::anonymize::hex(&digest[..8]));
    let body = json!({
        "ticketId": ticket_id,
        "version": 1,
        "status": "OPEN",
        "grade": "URGENT",
        "trigger": "FOLLOWUP",
        "category": "随访异常",
        "comment": format!("follow-up call {scene} ({}): the patient needs attention", r.task_ref),
        "patientKey": pk,
        "createdAt": rfc3339_in(at, &ctx.zone),
    })
    .to_string();
    let u = TicketUpdate::parse(body.as_bytes()).map_err(|e| TicketStoreError::Corrupt {
        ticket_id: ticket_id.clone(),
        version: 1,
        why: e.to_string(),
    })?;
    let mut row = lock_ticket(tx, backend, &ticket_id, now).await?;
    if row.applied_version == 0 {
        insert_version(tx, ctx, &u, body.as_bytes(), "applied", now).await?;
        apply(tx, ctx, &mut row, &u, now).await?;
        tx.count("cem_bridge_followup_attention_total", &[], 1);
    }
    Ok(ticket_id)
}

/// What a call-center result did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallRecorded {
    Recorded(ticket::CallNext),
    /// The same event id again: acknowledged, nothing changed.
    Duplicate,
    /// No call task has this `taskRef`.
    UnknownTask,
}

impl Store {
    /// R-TKT-7 / R-TKT-6: record a call attempt's result — queue the next attempt (no answer,
    /// busy: + 2 h in a window, at most 3) and the HCRM case update with the outcome, in one
    /// transaction. Repeated event ids are ignored (vendors resend).
    pub async fn call_result(
        &self,
        ctx: &TicketCtx,
        r: &ticket::CallResult,
        now: i64,
    ) -> Result<CallRecorded, TicketStoreError> {
        let mut tx = self.begin().await?;
        let fresh = first_sight(&mut tx, &format!("cc-event:{}", r.event_id), now).await?;
        if !fresh {
            return Ok(CallRecorded::Duplicate);
        }
        let Some(row) = sqlx::query(
            "SELECT ticket_id, kind, patient_key, key_id, body FROM ticket_outbox WHERE idem_key = $1 AND sink = 'callcenter'",
        )
        .bind(r.task_ref.as_str())
        .fetch_optional(tx.conn().await?)
        .await
        .map_err(db("find call task"))?
        else {
            return Ok(CallRecorded::UnknownTask);
        };
        let read = || db("read call task");
        let ticket_id: String = row.try_get("ticket_id").map_err(read())?;
        let kind_code: String = row.try_get("kind").map_err(read())?;
        let pk: Option<String> = row.try_get("patient_key").map_err(read())?;
        let key_id: String = row.try_get("key_id").map_err(read())?;
        let sealed: Vec<u8> = row.try_get("body").map_err(read())?;
        let plain = ctx
            .cipher
            .open(&outbox_aad(&r.task_ref), &key_id, &sealed)?;
        let mut body: Value =
            serde_json::from_slice(&plain).map_err(|e| TicketStoreError::Corrupt {
                ticket_id: ticket_id.clone(),
                version: 0,
                why: e.to_string(),
            })?;
        // The attempt this task was (queued in its body); older rows: the key's last number.
        let attempt: u32 = body["attempt"]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .or_else(|| r.task_ref.rsplit(':').next().and_then(|n| n.parse().ok()))
            .unwrap_or(1);
        let followup = Thread::of(&ticket_id).is_followup();
        let at = r
            .ended_at
            .unwrap_or_else(|| cem_pipeline::time::from_ms(now));
        let closed = !followup
            && sqlx::query("SELECT status FROM tickets WHERE ticket_id = $1")
                .bind(ticket_id.as_str())
                .fetch_optional(tx.conn().await?)
                .await
                .map_err(db("read ticket status"))?
                .and_then(|r| r.try_get::<Option<String>, _>("status").ok().flatten())
                .and_then(|s| Status::parse(&s))
                .is_some_and(Status::is_final);
        let next = match ticket::call_next(r.status, attempt, at, &ctx.windows, &ctx.zone) {
            // R-TKT-6: a closed ticket gets no more calls.
            ticket::CallNext::Retry { .. } if closed => ticket::CallNext::Final {
                outcome: "ticket_closed",
            },
            n => n,
        };
        let mut call = json!({
            "taskRef": r.task_ref,
            "scene": kind_code,
            "attempt": attempt,
            "status": r.status.code(),
        });
        match next {
            ticket::CallNext::Retry { attempt: n, due } => {
                let key = if followup {
                    // R-FUP-4 step key, then `:{attempt}` for the retries.
                    format!("{}:{n}", followup_step_key(&r.task_ref))
                } else {
                    let kind = CallKind::parse(&kind_code).unwrap_or(CallKind::UrgentCallback);
                    ticket::call_key(&ticket_id, kind, n)
                };
                body["taskRef"] = key.clone().into();
                body["notBefore"] = rfc3339_in(due, &ctx.zone).into();
                body["attempt"] = n.into();
                queue(
                    &mut tx,
                    ctx,
                    &ticket_id,
                    Peer::CallCenter,
                    &kind_code,
                    &key,
                    pk.as_deref(),
                    &body,
                    ts_ms(due),
                    now,
                )
                .await?;
                call["outcome"] = "retrying".into();
                call["nextAttemptAt"] = rfc3339_in(due, &ctx.zone).into();
            }
            ticket::CallNext::Final { outcome } => call["outcome"] = outcome.into(),
        }
        let outcome = call["outcome"].as_str().unwrap_or("").to_string();
        if !followup {
            // R-TKT-6: a ticket's call outcome updates its case.
            let body = crate::sinks::hcrm::call_result_body(
                &ticket_id,
                &call,
                rfc3339_in(at, &ctx.zone),
                pk.as_deref(),
            );
            let key = format!("{}:result:hcrm", r.task_ref);
            queue(
                &mut tx,
                ctx,
                &ticket_id,
                Peer::Hcrm,
                "call_result",
                &key,
                pk.as_deref(),
                &body,
                now,
                now,
            )
            .await?;
            // R-TKT-6: and back to the CEM, which raised the ticket (pseudonyms only).
            if ctx.cem_results {
                let body = crate::sinks::cem_results::result_body(
                    &ticket_id,
                    &r.task_ref,
                    &kind_code,
                    attempt,
                    r.status.code(),
                    &outcome,
                    rfc3339_in(at, &ctx.zone),
                    pk.as_deref(),
                );
                let key = format!("{}:result:cem", r.task_ref);
                queue(
                    &mut tx,
                    ctx,
                    &ticket_id,
                    Peer::CemResults,
                    "call_result",
                    &key,
                    None,
                    &body,
                    now,
                    now,
                )
                .await?;
            }
        } else if r.needs_attention {
            // R-FUP-5: the patient needs attention: an URGENT case with the 1 h clock.
            let case = attention_case(
                self.backend,
                &mut tx,
                ctx,
                r,
                &kind_code,
                pk.as_deref(),
                at,
                now,
            )
            .await?;
            call["case"] = case.into();
        }
        tx.audit(&AuditEntry {
            job_id: Some(&ticket_id),
            patient_key: pk.as_deref(),
            action: "call_result",
            rule: Some("R-TKT-7"),
            reason: Some(&outcome),
            detail: Some(&format!(
                "{} attempt {attempt}: {}",
                r.task_ref,
                r.status.code()
            )),
            ..Default::default()
        })
        .await?;
        tx.commit().await?;
        if followup {
            // R-MET-1: answered / refused / invalid_number / unreachable / retrying per step.
            let (plan, step) = crate::store::keys::plan_and_step(&r.task_ref);
            let outcome: &'static str = match outcome.as_str() {
                "retrying" => "retrying",
                "unreachable" => "unreachable",
                _ => r.status.code(),
            };
            counter!("cem_bridge_followup_tasks_total", "plan" => plan, "step" => step, "outcome" => outcome)
                .increment(1);
        }
        counter!("cem_bridge_ticket_call_results_total", "scene" => kind_code, "outcome" => outcome)
            .increment(1);
        Ok(CallRecorded::Recorded(next))
    }
}
