//! Tickets (工单, domain-rules §4): the CEM's ticket updates as typed values and everything
//! decided about them without I/O — the grade (R-TKT-1), SLA clocks on a working-day calendar
//! (R-TKT-2, R-TKT-3), the escalation ladder (R-TKT-4), what an update forwards to HCRM and the
//! AI call center (R-TKT-6), calling windows (R-TKT-7), the version order rule (R-TKT-8),
//! idempotency keys (R-TKT-9) and the webhook signature (R-TKT-11).
//!
//! The runtime (`src/tickets.rs`, `src/ticket_worker.rs`, `src/webhook.rs`) keeps the state in the store and does the sending; this module
//! says what should happen.

use hmac::{Hmac, KeyInit, Mac};
use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;
use sha2::Sha256;

/// Ticket status (R-TKT-5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Open,
    Assigned,
    InProgress,
    Resolved,
    Closed,
    Reopened,
    Invalid,
}

impl Status {
    pub fn code(self) -> &'static str {
        match self {
            Self::Open => "OPEN",
            Self::Assigned => "ASSIGNED",
            Self::InProgress => "IN_PROGRESS",
            Self::Resolved => "RESOLVED",
            Self::Closed => "CLOSED",
            Self::Reopened => "REOPENED",
            Self::Invalid => "INVALID",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        ALL_STATUSES.iter().copied().find(|st| st.code() == s)
    }

    /// No clock runs after these.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Closed | Self::Invalid)
    }
}

const ALL_STATUSES: [Status; 7] = [
    Status::Open,
    Status::Assigned,
    Status::InProgress,
    Status::Resolved,
    Status::Closed,
    Status::Reopened,
    Status::Invalid,
];

/// Ticket grade (R-TKT-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Grade {
    Urgent,
    General,
    Consultation,
}

impl Grade {
    pub fn code(self) -> &'static str {
        match self {
            Self::Urgent => "URGENT",
            Self::General => "GENERAL",
            Self::Consultation => "CONSULTATION",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Urgent, Self::General, Self::Consultation]
            .into_iter()
            .find(|g| g.code() == s)
    }
}

/// One ticket update as the CEM sends it (webhook body or queue message), after validation.
/// `comment` and `resolution` are free text and may hold personal data: they go to HCRM only,
/// sealed in the store, never into logs or errors.
#[derive(Debug, Clone, PartialEq)]
pub struct TicketUpdate {
    pub ticket_id: String,
    pub version: u32,
    pub status: Status,
    /// The CEM's grade; see [`TicketUpdate::grade`] for the derived one.
    pub grade: Option<Grade>,
    /// `NPS`, `CSAT`, `COMPLAINT`, `CONSULTATION` (free; used for grading only).
    pub trigger: Option<String>,
    pub score: Option<f64>,
    pub category: Option<String>,
    pub comment: Option<String>,
    /// The pseudonymous patient key (`pk_…`) the CEM got with the survey.
    pub patient_key: Option<String>,
    /// The visit pseudonym (`vk_…`, the dispatch's `visit.vk`) of the survey answered: HCRM
    /// gets its 门诊号/住院号 from the vault (R-ANO-1).
    pub visit_key: Option<String>,
    pub survey_id: Option<String>,
    pub created_at: Option<Timestamp>,
    pub updated_at: Option<Timestamp>,
    pub responded_at: Option<Timestamp>,
    pub response_due_at: Option<Timestamp>,
    pub assign_due_at: Option<Timestamp>,
    pub resolve_due_at: Option<Timestamp>,
    pub assignee: Option<String>,
    pub resolution: Option<String>,
    pub revisit_after_hours: Option<u32>,
}

/// A patient pseudonym as the bridge makes them: `pk_` and 32 lowercase hex digits.
pub fn is_patient_key(s: &str) -> bool {
    s.strip_prefix("pk_").is_some_and(|h| {
        h.len() == 32
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Why a ticket body was refused (→ 400). Names the field, never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("the body is not a JSON object: {0}")]
    NotJson(String),
    #[error("field `{field}` is missing; {hint}")]
    Missing {
        field: &'static str,
        hint: &'static str,
    },
    #[error("field `{field}` is invalid: {why}")]
    Invalid { field: &'static str, why: String },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    ticket_id: Option<String>,
    version: Option<serde_json::Value>,
    status: Option<String>,
    grade: Option<String>,
    trigger: Option<String>,
    score: Option<f64>,
    category: Option<String>,
    comment: Option<String>,
    patient_key: Option<String>,
    visit_key: Option<String>,
    survey_id: Option<String>,
    created_at: Option<String>,
    updated_at: Option<String>,
    responded_at: Option<String>,
    response_due_at: Option<String>,
    assign_due_at: Option<String>,
    resolve_due_at: Option<String>,
    assignee: Option<String>,
    resolution: Option<String>,
    revisit_after_hours: Option<u32>,
}

fn ts(field: &'static str, v: Option<String>) -> Result<Option<Timestamp>, TicketError> {
    v.map(|s| {
        s.parse::<Timestamp>().map_err(|_| TicketError::Invalid {
            field,
            why: "expected an RFC 3339 time with an offset, e.g. 2026-11-21T10:05:00+08:00"
                .to_string(),
        })
    })
    .transpose()
}

/// A ticket id is an opaque key: 1..=128 characters of `A-Z a-z 0-9 - _ . :`.
fn valid_ticket_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

impl TicketUpdate {
    /// A case the bridge opened itself for a follow-up call (R-FUP-5), not a CEM ticket: its
    /// `FU-` + 16 hex id, whatever a later update of it says.
    pub fn followup_case(&self) -> bool {
        self.trigger.as_deref() == Some("FOLLOWUP")
            || self
                .ticket_id
                .strip_prefix("FU-")
                .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
    }
}

impl TicketUpdate {
    /// Parse and validate a ticket update (R-TKT-11: malformed → 400 with this reason).
    pub fn parse(body: &[u8]) -> Result<Self, TicketError> {
        let w: Wire = serde_json::from_slice(body).map_err(|e| {
            // serde_json's message names the position and the expected type, not the value.
            TicketError::NotJson(format!("line {} column {}", e.line(), e.column()))
        })?;
        let ticket_id = w.ticket_id.ok_or(TicketError::Missing {
            field: "ticketId",
            hint: "every update names its ticket",
        })?;
        if !valid_ticket_id(&ticket_id) {
            return Err(TicketError::Invalid {
                field: "ticketId",
                why: "1 to 128 characters of A-Z a-z 0-9 - _ . :".into(),
            });
        }
        let version = match w.version {
            None => {
                return Err(TicketError::Missing {
                    field: "version",
                    hint: "updates are ordered by version, 1 for the creation (R-TKT-8)",
                });
            }
            Some(v) => v
                .as_u64()
                .filter(|v| (1..=u64::from(u32::MAX)).contains(v))
                .map(|v| v as u32)
                .ok_or(TicketError::Invalid {
                    field: "version",
                    why: "a whole number from 1".into(),
                })?,
        };
        let status = match w.status {
            None => {
                return Err(TicketError::Missing {
                    field: "status",
                    hint: "one of OPEN ASSIGNED IN_PROGRESS RESOLVED CLOSED REOPENED INVALID",
                });
            }
            Some(s) => Status::parse(&s).ok_or(TicketError::Invalid {
                field: "status",
                why: "one of OPEN ASSIGNED IN_PROGRESS RESOLVED CLOSED REOPENED INVALID".into(),
            })?,
        };
        let grade = w
            .grade
            .map(|g| {
                Grade::parse(&g).ok_or(TicketError::Invalid {
                    field: "grade",
                    why: "one of URGENT GENERAL CONSULTATION".into(),
                })
            })
            .transpose()?;
        // Only a pseudonym is stored: a clear value here (a phone number, say) would be written
        // into the ticket, audit and outbox tables and sent to HCRM.
        if let Some(pk) = &w.patient_key
            && !is_patient_key(pk)
        {
            return Err(TicketError::Invalid {
                field: "patientKey",
                why: "not a patient pseudonym: send the key the CEM received with the survey (pk_ and 32 hex digits)".into(),
            });
        }
        if let Some(vk) = &w.visit_key
            && (!vk.starts_with("vk_") || vk.len() > 128 || vk.chars().any(char::is_whitespace))
        {
            return Err(TicketError::Invalid {
                field: "visitKey",
                why: "the visit pseudonym the CEM received with the survey (visit.vk, vk_…)".into(),
            });
        }
        let u = Self {
            ticket_id,
            version,
            status,
            grade,
            trigger: w.trigger,
            score: w.score,
            category: w.category,
            comment: w.comment,
            patient_key: w.patient_key,
            visit_key: w.visit_key,
            survey_id: w.survey_id,
            created_at: ts("createdAt", w.created_at)?,
            updated_at: ts("updatedAt", w.updated_at)?,
            responded_at: ts("respondedAt", w.responded_at)?,
            response_due_at: ts("responseDueAt", w.response_due_at)?,
            assign_due_at: ts("assignDueAt", w.assign_due_at)?,
            resolve_due_at: ts("resolveDueAt", w.resolve_due_at)?,
            assignee: w.assignee,
            resolution: w.resolution,
            revisit_after_hours: w.revisit_after_hours,
        };
        if u.version == 1 {
            if u.created_at.is_none() {
                return Err(TicketError::Missing {
                    field: "createdAt",
                    hint: "version 1 creates the ticket and starts its SLA clocks (R-TKT-2)",
                });
            }
            if u.patient_key.is_none() {
                return Err(TicketError::Missing {
                    field: "patientKey",
                    hint: "version 1 names the patient's pseudonymous key (pk_…)",
                });
            }
        } else if u.updated_at.is_none() && u.created_at.is_none() {
            return Err(TicketError::Missing {
                field: "updatedAt",
                hint: "an update says when it happened; the SLA clocks are judged by it",
            });
        }
        Ok(u)
    }

    /// When this update happened: `updatedAt`, else `createdAt`.
    pub fn at(&self) -> Option<Timestamp> {
        self.updated_at.or(self.created_at)
    }

    /// R-TKT-1: the CEM's grade wins; else derived from category, trigger and score.
    pub fn grade(&self) -> Grade {
        if let Some(g) = self.grade {
            return g;
        }
        let category = self.category.as_deref().unwrap_or("");
        let trigger = self.trigger.as_deref().unwrap_or("").to_ascii_uppercase();
        let score = self.score;
        let top = category.split('/').next().unwrap_or("").trim();
        if ["医疗安全", "重大投诉", "医疗纠纷"].contains(&top)
            || (trigger == "NPS" && score.is_some_and(|s| s <= 2.0))
            || (trigger == "CSAT" && score.is_some_and(|s| s <= 1.0))
        {
            Grade::Urgent
        } else if top == "咨询" || trigger == "CONSULTATION" {
            Grade::Consultation
        } else {
            Grade::General
        }
    }
}

/// R-TKT-3: working days = Mon–Fri + make-up days (调休) − public holidays.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Calendar {
    pub holidays: Vec<Date>,
    pub makeup_days: Vec<Date>,
}

impl Calendar {
    pub fn is_working_day(&self, d: Date) -> bool {
        if self.makeup_days.contains(&d) {
            return true;
        }
        !matches!(d.weekday(), Weekday::Saturday | Weekday::Sunday) && !self.holidays.contains(&d)
    }

    /// The `n`th working day after `d` (not counting `d`).
    pub fn nth_working_day_after(&self, d: Date, n: u32) -> Date {
        let mut day = d;
        let mut left = n;
        // A calendar is at most a few years of holidays; 3 650 days bounds a bad one.
        for _ in 0..3_650 {
            if left == 0 {
                break;
            }
            day = day.tomorrow().unwrap_or(day);
            if self.is_working_day(day) {
                left -= 1;
            }
        }
        day
    }
}

/// The SLA clocks (R-TKT-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SlaClock {
    Response,
    Assignment,
    Resolution,
}

impl SlaClock {
    pub fn code(self) -> &'static str {
        match self {
            Self::Response => "response",
            Self::Assignment => "assignment",
            Self::Resolution => "resolution",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Response, Self::Assignment, Self::Resolution]
            .into_iter()
            .find(|c| c.code() == s)
    }

    /// Does an update with `status` (and `responded`) stop this clock?
    pub fn met_by(self, status: Status, responded: bool) -> bool {
        use Status::*;
        match self {
            Self::Response => {
                responded || matches!(status, Assigned | InProgress | Resolved | Closed)
            }
            Self::Assignment => matches!(status, Assigned | InProgress | Resolved | Closed),
            Self::Resolution => matches!(status, Resolved | Closed | Invalid),
        }
    }
}

/// The deadlines of a ticket's clocks; a clock without one does not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadlines {
    pub clocks: Vec<(SlaClock, Timestamp)>,
}

/// R-TKT-2: deadlines from `createdAt`; the CEM's own deadlines win. URGENT's assignment is
/// "within response", so it is one clock with the response (no double escalation);
/// CONSULTATION has no assignment clock and is "closed on reply" (no resolution clock).
pub fn deadlines(u: &TicketUpdate, grade: Grade, cal: &Calendar, zone: &TimeZone) -> Deadlines {
    let Some(created) = u.created_at else {
        return Deadlines { clocks: vec![] };
    };
    let hours = |h: i64| created + SignedDuration::from_hours(h);
    let (response, assignment, resolution) = match grade {
        Grade::Urgent => (Some(hours(1)), None, Some(hours(24))),
        Grade::General => {
            let local = created.to_zoned(zone.clone());
            let third = cal.nth_working_day_after(local.date(), 3);
            let end = third
                .to_datetime(Time::constant(23, 59, 59, 0))
                .to_zoned(zone.clone())
                .map(|z| z.timestamp())
                .ok();
            (Some(hours(24)), Some(hours(48)), end)
        }
        Grade::Consultation => (Some(hours(24)), None, None),
    };
    let mut clocks = Vec::new();
    if let Some(d) = u.response_due_at.or(response) {
        clocks.push((SlaClock::Response, d));
    }
    if let Some(d) = u.assign_due_at.or(assignment) {
        clocks.push((SlaClock::Assignment, d));
    }
    if grade != Grade::Consultation
        && let Some(d) = u.resolve_due_at.or(resolution)
    {
        clocks.push((SlaClock::Resolution, d));
    }
    Deadlines { clocks }
}

/// R-TKT-4: when levels 1, 2 and 3 of an unmet clock fire.
pub fn escalation_times(grade: Grade, deadline: Timestamp) -> [(u8, Timestamp); 3] {
    let (l2, l3) = match grade {
        Grade::Urgent => (1, 4),
        _ => (24, 72),
    };
    [
        (1, deadline),
        (2, deadline + SignedDuration::from_hours(l2)),
        (3, deadline + SignedDuration::from_hours(l3)),
    ]
}

/// Who an escalation level goes to (R-TKT-4), for the HCRM case.
pub fn escalation_target(level: u8) -> &'static str {
    match level {
        1 => "科室负责人",
        2 => "医院客服部/质量管理委员会",
        _ => "集团客服部",
    }
}

/// Calling windows (R-TKT-7): local `[start, end)` pairs, every day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallingWindows(pub Vec<(Time, Time)>);

impl Default for CallingWindows {
    fn default() -> Self {
        Self(vec![
            (Time::constant(9, 0, 0, 0), Time::constant(12, 0, 0, 0)),
            (Time::constant(14, 0, 0, 0), Time::constant(20, 0, 0, 0)),
        ])
    }
}

impl CallingWindows {
    /// `t` if it falls inside a window, else the start of the next window.
    pub fn next_allowed(&self, t: Timestamp, zone: &TimeZone) -> Timestamp {
        let local = t.to_zoned(zone.clone());
        let mut windows = self.0.clone();
        windows.sort();
        if windows.is_empty() {
            return t;
        }
        let mut date = local.date();
        for day in 0..2 {
            for (start, end) in &windows {
                if day == 0 && local.time() >= *end {
                    continue;
                }
                if day == 0 && local.time() >= *start {
                    return t;
                }
                if let Ok(z) = date.to_datetime(*start).to_zoned(zone.clone()) {
                    return z.timestamp();
                }
            }
            date = date.tomorrow().unwrap_or(date);
        }
        t
    }

    /// R-TKT-7 retry: `+ 2 h`, then into a window.
    pub fn retry_after(&self, t: Timestamp, zone: &TimeZone) -> Timestamp {
        self.next_allowed(t + SignedDuration::from_hours(2), zone)
    }
}

/// Call-center task kinds (R-TKT-6, R-FUP-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    UrgentCallback,
    ComplaintRevisit,
}

impl CallKind {
    pub fn code(self) -> &'static str {
        match self {
            Self::UrgentCallback => "urgent_callback",
            Self::ComplaintRevisit => "complaint_revisit",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::UrgentCallback, Self::ComplaintRevisit]
            .into_iter()
            .find(|k| k.code() == s)
    }
}

/// Maximum attempts of one call task (R-TKT-7).
pub const MAX_CALL_ATTEMPTS: u32 = 3;

/// How one call attempt ended, as the call center reports it (R-TKT-7, R-FUP-5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    Answered,
    NoAnswer,
    Busy,
    Refused,
    InvalidNumber,
    Failed,
}

impl CallStatus {
    pub fn code(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::NoAnswer => "no_answer",
            Self::Busy => "busy",
            Self::Refused => "refused",
            Self::InvalidNumber => "invalid_number",
            Self::Failed => "failed",
        }
    }

    /// R-TKT-7: no answer or busy is tried again (+ 2 h, inside a window).
    pub fn retries(self) -> bool {
        matches!(self, Self::NoAnswer | Self::Busy)
    }
}

/// A call-center result callback (docs/tickets.md).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallResult {
    /// The vendor's event id; a repeat is acknowledged and ignored.
    pub event_id: String,
    /// The task's `taskRef` (its R-TKT-9 key).
    pub task_ref: String,
    pub status: CallStatus,
    #[serde(default)]
    pub ended_at: Option<Timestamp>,
    /// R-FUP-5: the patient needs attention (e.g. 眼痛): opens an URGENT case.
    #[serde(default)]
    pub needs_attention: bool,
}

impl CallResult {
    pub fn parse(body: &[u8]) -> Result<Self, TicketError> {
        let r: Self = serde_json::from_slice(body).map_err(|e| TicketError::Invalid {
            field: "body",
            why: format!(
                "line {} column {}: expected {{eventId, taskRef, status}} with status one of answered no_answer busy refused invalid_number failed",
                e.line(),
                e.column()
            ),
        })?;
        if r.event_id.is_empty() || r.event_id.len() > 128 {
            return Err(TicketError::Invalid {
                field: "eventId",
                why: "1 to 128 characters".into(),
            });
        }
        Ok(r)
    }
}

/// What a call result leads to (R-TKT-7): another attempt at `due`, or the final outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallNext {
    Retry { attempt: u32, due: Timestamp },
    Final { outcome: &'static str },
}

/// R-TKT-7: attempt `attempt` (1-based) ended with `status` at `at`.
pub fn call_next(
    status: CallStatus,
    attempt: u32,
    at: Timestamp,
    windows: &CallingWindows,
    zone: &TimeZone,
) -> CallNext {
    if status.retries() {
        if attempt < MAX_CALL_ATTEMPTS {
            return CallNext::Retry {
                attempt: attempt + 1,
                due: windows.retry_after(at, zone),
            };
        }
        return CallNext::Final {
            outcome: "unreachable",
        };
    }
    CallNext::Final {
        outcome: status.code(),
    }
}

/// What the ticket state was before an update (what the store remembers).
#[derive(Debug, Clone, PartialEq)]
pub struct TicketState {
    pub grade: Grade,
    pub status: Status,
    /// The patient is in the vault (R-TKT-10: else no call tasks).
    pub patient_known: bool,
}

/// What applying one update does (R-TKT-6), besides storing it.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// HCRM: `create` for version 1, `update` after.
    pub hcrm: HcrmOp,
    /// Call tasks to schedule, with their due times (already inside a calling window).
    pub calls: Vec<(CallKind, Timestamp)>,
    /// Pending call tasks of these kinds to cancel.
    pub cancel_calls: Vec<CallKind>,
    /// Clocks this update meets.
    pub meets: Vec<SlaClock>,
    /// Stop every clock (CLOSED, INVALID).
    pub stop_all_clocks: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HcrmOp {
    Create,
    Update,
}

impl HcrmOp {
    pub fn code(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
        }
    }
}

/// Default hours between RESOLVED and the revisit call (R-TKT-6).
pub const DEFAULT_REVISIT_HOURS: u32 = 72;

/// R-TKT-6: what applying `u` to a ticket in `state` forwards. `now` places a call that is
/// due in the past (an URGENT callback is "now").
pub fn plan(
    u: &TicketUpdate,
    state: &TicketState,
    windows: &CallingWindows,
    zone: &TimeZone,
    now: Timestamp,
) -> Plan {
    let at = u.at().unwrap_or(now);
    let mut p = Plan {
        hcrm: if u.version == 1 {
            HcrmOp::Create
        } else {
            HcrmOp::Update
        },
        calls: vec![],
        cancel_calls: vec![],
        meets: vec![],
        stop_all_clocks: u.status.is_final(),
    };
    for c in [
        SlaClock::Response,
        SlaClock::Assignment,
        SlaClock::Resolution,
    ] {
        if c.met_by(u.status, u.responded_at.is_some()) {
            p.meets.push(c);
        }
    }
    match u.status {
        Status::Open if u.version == 1 && state.grade == Grade::Urgent && state.patient_known => {
            p.calls
                .push((CallKind::UrgentCallback, windows.next_allowed(at, zone)));
        }
        Status::Reopened => p.cancel_calls.push(CallKind::ComplaintRevisit),
        Status::Resolved if state.patient_known && state.grade != Grade::Consultation => {
            let hours = u.revisit_after_hours.unwrap_or(DEFAULT_REVISIT_HOURS);
            let due = at + SignedDuration::from_hours(i64::from(hours));
            p.calls
                .push((CallKind::ComplaintRevisit, windows.next_allowed(due, zone)));
        }
        Status::Closed | Status::Invalid => {
            p.cancel_calls = vec![CallKind::UrgentCallback, CallKind::ComplaintRevisit];
        }
        _ => {}
    }
    p
}

/// R-TKT-8: what to do with version `v` of a ticket whose last applied version is `applied`
/// (0 = none yet) and which holds the early versions `held`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// `v ≤ applied`: ignored, answered 200 `stale_version`.
    Stale,
    /// Already held: ignored, answered 200.
    Duplicate,
    /// The next one: apply now (then any held successors).
    Apply,
    /// Early: hold until the gap fills or the hold times out.
    Hold,
}

pub fn admit(applied: u32, held: &[u32], v: u32) -> Admission {
    if v <= applied {
        Admission::Stale
    } else if held.contains(&v) {
        Admission::Duplicate
    } else if v == applied + 1 {
        Admission::Apply
    } else {
        Admission::Hold
    }
}

/// How long an early version waits for the gap to fill (R-TKT-8).
pub const GAP_HOLD: SignedDuration = SignedDuration::from_mins(10);

/// R-TKT-9 idempotency keys.
pub fn update_key(ticket_id: &str, version: u32, sink: &str) -> String {
    format!("tk:{ticket_id}:{version}:{sink}")
}

pub fn call_key(ticket_id: &str, kind: CallKind, n: u32) -> String {
    format!("tk:{ticket_id}:{}:{n}", kind.code())
}

pub fn escalation_key(ticket_id: &str, clock: SlaClock, level: u8) -> String {
    format!("tk:{ticket_id}:esc:{}:{level}", clock.code())
}

/// Why a webhook signature was refused (R-TKT-11 → 401; metric reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the timestamp or signature header is missing")]
    Missing,
    #[error("the signature does not match the body")]
    BadSignature,
    #[error("the timestamp is more than the allowed skew away from now")]
    Stale,
}

impl SignatureError {
    /// `cem_bridge_webhook_rejected_total{reason}` (R-MET-1).
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing | Self::BadSignature => "bad_signature",
            Self::Stale => "stale",
        }
    }
}

/// The hex HMAC-SHA256 of `timestamp.body` under `secret` (what a sender puts in the header).
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// R-TKT-11: verify `signature` (hex, optionally `sha256=`-prefixed) over `timestamp.body`,
/// and that `timestamp` (Unix seconds) is within `skew_s` of `now_s`. Constant-time compare.
pub fn verify(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_s: i64,
    skew_s: i64,
) -> Result<(), SignatureError> {
    let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
        return Err(SignatureError::Missing);
    };
    let timestamp = timestamp.trim();
    let sig = signature.trim();
    let sig = sig.strip_prefix("sha256=").unwrap_or(sig);
    let Some(given) = hex_decode(sig) else {
        return Err(SignatureError::BadSignature);
    };
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .map_err(|_| SignatureError::BadSignature)?;
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&given)
        .map_err(|_| SignatureError::BadSignature)?;
    // Checked after the MAC so an unauthenticated caller learns nothing about the clock.
    let t: i64 = timestamp.parse().map_err(|_| SignatureError::Stale)?;
    if (now_s - t).abs() > skew_s {
        return Err(SignatureError::Stale);
    }
    Ok(())
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 256 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Parse `YYYY-MM-DD` for the holiday calendar.
pub fn parse_date(s: &str) -> Option<Date> {
    s.trim().parse::<Date>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> TimeZone {
        crate::time::default_zone()
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn sample(name: &str) -> TicketUpdate {
        let path = format!(
            "{}/../tests/fixtures/samples/tickets/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        TicketUpdate::parse(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn samples_parse_and_grade() {
        let c = sample("created_low_score");
        assert_eq!(c.version, 1);
        assert_eq!(c.grade(), Grade::Urgent);
        assert_eq!(
            c.patient_key.as_deref(),
            Some("pk_3f9a0c00000000000000000000000000")
        );
        let a = sample("assigned");
        assert_eq!((a.version, a.status), (2, Status::Assigned));
        let r = sample("resolved");
        assert_eq!((r.version, r.revisit_after_hours), (3, Some(72)));
    }

    /// R-TKT-1: derived grades when the CEM sends none.
    #[test]
    fn grade_is_derived_when_absent() {
        let mut u = sample("created_low_score");
        u.grade = None;
        assert_eq!(u.grade(), Grade::Urgent, "NPS 2");
        u.score = Some(5.0);
        assert_eq!(u.grade(), Grade::General, "NPS 3-6");
        u.category = Some("医疗纠纷/用药".into());
        assert_eq!(u.grade(), Grade::Urgent, "category 医疗纠纷");
        u.category = Some("咨询".into());
        u.trigger = Some("COMPLAINT".into());
        assert_eq!(u.grade(), Grade::Consultation);
        u.trigger = Some("CSAT".into());
        u.category = None;
        u.score = Some(1.0);
        assert_eq!(u.grade(), Grade::Urgent, "CSAT = 1");
        u.score = Some(2.0);
        assert_eq!(u.grade(), Grade::General, "CSAT = 2");
    }

    #[test]
    fn r_tkt_11_a_patient_key_must_be_a_pseudonym() {
        assert!(is_patient_key("pk_3f9a0c00000000000000000000000000"));
        for bad in [
            "13812345678",
            "pk_13812345678",
            "pk_3F9A0C00000000000000000000000000",
            "pk_3f9a0c0000000000000000000000000",
            "vk_3f9a0c00000000000000000000000000",
        ] {
            assert!(!is_patient_key(bad), "{bad}");
            let body = format!(
                r#"{{"ticketId":"T1","version":1,"status":"OPEN","patientKey":"{bad}","createdAt":"2026-11-21T10:05:00+08:00"}}"#
            );
            let e = TicketUpdate::parse(body.as_bytes()).unwrap_err();
            let text = e.to_string();
            assert!(text.contains("patientKey") && !text.contains(bad), "{text}");
        }
    }

    #[test]
    fn malformed_bodies_name_the_field() {
        let e = TicketUpdate::parse(b"{").unwrap_err();
        assert!(matches!(e, TicketError::NotJson(_)), "{e}");
        let e = TicketUpdate::parse(br#"{"version":1,"status":"OPEN"}"#).unwrap_err();
        assert!(e.to_string().contains("ticketId"), "{e}");
        let e =
            TicketUpdate::parse(br#"{"ticketId":"T1","version":0,"status":"OPEN"}"#).unwrap_err();
        assert!(e.to_string().contains("version"), "{e}");
        let e =
            TicketUpdate::parse(br#"{"ticketId":"T1","version":2,"status":"DONE"}"#).unwrap_err();
        assert!(e.to_string().contains("status"), "{e}");
        let e = TicketUpdate::parse(
            br#"{"ticketId":"T1","version":1,"status":"OPEN","patientKey":"pk_00000000000000000000000000000001","createdAt":"yesterday 13800138000"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("createdAt"), "{e}");
        assert!(
            !e.to_string().contains("13800138000"),
            "no value in errors: {e}"
        );
        let e = TicketUpdate::parse(br#"{"ticketId":"T1","version":1,"status":"OPEN","createdAt":"2026-11-21T10:05:00+08:00"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("patientKey"), "{e}");
        let e =
            TicketUpdate::parse(br#"{"ticketId":"T 1","version":2,"status":"OPEN"}"#).unwrap_err();
        assert!(e.to_string().contains("ticketId"), "{e}");
        let e = TicketUpdate::parse(
            br#"{"ticketId":"T1","version":2,"status":"OPEN","visitKey":"V20261120001"}"#,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("visitKey") && !e.to_string().contains("V2026"),
            "{e}"
        );
        let u = TicketUpdate::parse(
            br#"{"ticketId":"T1","version":2,"status":"OPEN","visitKey":"vk_ab12","updatedAt":"2026-11-21T10:05:00+08:00"}"#,
        )
        .unwrap();
        assert_eq!(u.visit_key.as_deref(), Some("vk_ab12"));
    }

    /// TK-1: URGENT created 10:05 → response due 11:05 (met by ASSIGNED 10:20), resolution due
    /// 11-22 10:05 (met by RESOLVED 16:00); urgent callback now, revisit 11-24 16:00.
    #[test]
    fn tk1_urgent_ticket_plan() {
        let z = zone();
        let c = sample("created_low_score");
        let d = deadlines(&c, c.grade(), &Calendar::default(), &z);
        assert_eq!(
            d.clocks,
            vec![
                (SlaClock::Response, t("2026-11-21T11:05:00+08:00")),
                (SlaClock::Resolution, t("2026-11-22T10:05:00+08:00")),
            ]
        );
        let st = TicketState {
            grade: Grade::Urgent,
            status: Status::Open,
            patient_known: true,
        };
        let w = CallingWindows::default();
        let now = t("2026-11-21T10:05:01+08:00");
        let p1 = plan(&c, &st, &w, &z, now);
        assert_eq!(p1.hcrm, HcrmOp::Create);
        assert_eq!(
            p1.calls,
            vec![(CallKind::UrgentCallback, t("2026-11-21T10:05:00+08:00"))]
        );
        let a = sample("assigned");
        let p2 = plan(&a, &st, &w, &z, now);
        assert_eq!(p2.hcrm, HcrmOp::Update);
        assert!(
            p2.meets.contains(&SlaClock::Response) && !p2.meets.contains(&SlaClock::Resolution)
        );
        assert!(p2.calls.is_empty());
        let r = sample("resolved");
        let p3 = plan(&r, &st, &w, &z, now);
        assert_eq!(
            p3.calls,
            vec![(CallKind::ComplaintRevisit, t("2026-11-24T16:00:00+08:00"))]
        );
        assert!(p3.meets.contains(&SlaClock::Resolution));
    }

    /// TK-4: URGENT created 10:05, no update → 11:05 L1, 12:05 L2, 15:05 L3.
    #[test]
    fn tk4_urgent_escalation_ladder() {
        let e = escalation_times(Grade::Urgent, t("2026-11-21T11:05:00+08:00"));
        assert_eq!(
            e,
            [
                (1, t("2026-11-21T11:05:00+08:00")),
                (2, t("2026-11-21T12:05:00+08:00")),
                (3, t("2026-11-21T15:05:00+08:00")),
            ]
        );
        let g = escalation_times(Grade::General, t("2026-11-21T10:00:00+08:00"));
        assert_eq!(g[1].1, t("2026-11-22T10:00:00+08:00"));
        assert_eq!(g[2].1, t("2026-11-24T10:00:00+08:00"));
    }

    /// TK-5: GENERAL created Fri 2026-11-20 10:00, no holidays → response 11-21 10:00,
    /// assignment 11-22 10:00, resolution Wed 11-25 23:59:59.
    #[test]
    fn tk5_general_deadlines_on_working_days() {
        let z = zone();
        let mut u = sample("created_low_score");
        u.grade = Some(Grade::General);
        u.created_at = Some(t("2026-11-20T10:00:00+08:00"));
        u.response_due_at = None;
        u.resolve_due_at = None;
        let d = deadlines(&u, Grade::General, &Calendar::default(), &z);
        assert_eq!(
            d.clocks,
            vec![
                (SlaClock::Response, t("2026-11-21T10:00:00+08:00")),
                (SlaClock::Assignment, t("2026-11-22T10:00:00+08:00")),
                (SlaClock::Resolution, t("2026-11-25T23:59:59+08:00")),
            ]
        );
        // R-TKT-3: a holiday on Tue moves it to Thu; a make-up Saturday pulls it back.
        let cal = Calendar {
            holidays: vec![parse_date("2026-11-24").unwrap()],
            makeup_days: vec![],
        };
        let d = deadlines(&u, Grade::General, &cal, &z);
        assert_eq!(d.clocks[2].1, t("2026-11-26T23:59:59+08:00"));
        let cal = Calendar {
            holidays: vec![parse_date("2026-11-24").unwrap()],
            makeup_days: vec![parse_date("2026-11-21").unwrap()],
        };
        let d = deadlines(&u, Grade::General, &cal, &z);
        assert_eq!(d.clocks[2].1, t("2026-11-25T23:59:59+08:00"));
    }

    /// TK-6: RESOLVED at 21:00 with 72 h → the revisit at 21:00 moves to 09:00 the next day.
    #[test]
    fn tk6_revisit_moves_into_the_calling_window() {
        let z = zone();
        let mut r = sample("resolved");
        r.updated_at = Some(t("2026-11-21T21:00:00+08:00"));
        let st = TicketState {
            grade: Grade::General,
            status: Status::InProgress,
            patient_known: true,
        };
        let p = plan(
            &r,
            &st,
            &CallingWindows::default(),
            &z,
            t("2026-11-21T21:00:00+08:00"),
        );
        assert_eq!(
            p.calls,
            vec![(CallKind::ComplaintRevisit, t("2026-11-25T09:00:00+08:00"))]
        );
        let w = CallingWindows::default();
        assert_eq!(
            w.next_allowed(t("2026-11-21T12:30:00+08:00"), &z),
            t("2026-11-21T14:00:00+08:00")
        );
        assert_eq!(
            w.next_allowed(t("2026-11-21T08:00:00+08:00"), &z),
            t("2026-11-21T09:00:00+08:00")
        );
        assert_eq!(
            w.next_allowed(t("2026-11-21T19:59:00+08:00"), &z),
            t("2026-11-21T19:59:00+08:00")
        );
        assert_eq!(
            w.retry_after(t("2026-11-21T11:00:00+08:00"), &z),
            t("2026-11-21T14:00:00+08:00")
        );
    }

    /// TK-7 / R-TKT-10: an unknown patient gets no call task.
    #[test]
    fn tk7_unknown_patient_gets_no_call() {
        let c = sample("created_low_score");
        let st = TicketState {
            grade: Grade::Urgent,
            status: Status::Open,
            patient_known: false,
        };
        let p = plan(
            &c,
            &st,
            &CallingWindows::default(),
            &zone(),
            t("2026-11-21T10:05:00+08:00"),
        );
        assert_eq!(p.hcrm, HcrmOp::Create);
        assert!(p.calls.is_empty());
    }

    /// R-TKT-6: REOPENED cancels the pending revisit; CLOSED/INVALID cancel all and stop clocks.
    #[test]
    fn reopen_and_close_cancel_calls() {
        let mut u = sample("assigned");
        let st = TicketState {
            grade: Grade::General,
            status: Status::Resolved,
            patient_known: true,
        };
        u.status = Status::Reopened;
        let p = plan(
            &u,
            &st,
            &CallingWindows::default(),
            &zone(),
            t("2026-11-22T10:00:00+08:00"),
        );
        assert_eq!(p.cancel_calls, vec![CallKind::ComplaintRevisit]);
        assert!(!p.stop_all_clocks);
        u.status = Status::Invalid;
        let p = plan(
            &u,
            &st,
            &CallingWindows::default(),
            &zone(),
            t("2026-11-22T10:00:00+08:00"),
        );
        assert_eq!(p.cancel_calls.len(), 2);
        assert!(p.stop_all_clocks && p.meets.contains(&SlaClock::Resolution));
    }

    /// R-TKT-8 / TK-2 / TK-3.
    #[test]
    fn versions_are_admitted_in_order() {
        assert_eq!(admit(0, &[], 1), Admission::Apply);
        assert_eq!(admit(1, &[], 3), Admission::Hold, "TK-2: v3 before v2");
        assert_eq!(admit(1, &[3], 3), Admission::Duplicate);
        assert_eq!(admit(1, &[3], 2), Admission::Apply);
        assert_eq!(
            admit(3, &[], 2),
            Admission::Stale,
            "TK-2: late v2 after the gap"
        );
        assert_eq!(admit(2, &[], 2), Admission::Stale, "TK-3: v2 twice");
        assert_eq!(admit(0, &[], 2), Admission::Hold, "v2 before v1");
    }

    #[test]
    fn keys_follow_r_tkt_9() {
        assert_eq!(update_key("T1", 2, "hcrm"), "tk:T1:2:hcrm");
        assert_eq!(
            call_key("T1", CallKind::ComplaintRevisit, 1),
            "tk:T1:complaint_revisit:1"
        );
        assert_eq!(
            escalation_key("T1", SlaClock::Response, 2),
            "tk:T1:esc:response:2"
        );
    }

    /// R-TKT-11: bad signature, stale timestamp, tampered body.
    #[test]
    fn signatures_are_checked() {
        let body = br#"{"ticketId":"T1"}"#;
        let sig = sign(b"s3cret", "1763690700", body);
        let ok = verify(
            b"s3cret",
            Some("1763690700"),
            Some(&sig),
            body,
            1763690800,
            300,
        );
        assert_eq!(ok, Ok(()));
        let prefixed = format!("sha256={sig}");
        assert_eq!(
            verify(
                b"s3cret",
                Some("1763690700"),
                Some(&prefixed),
                body,
                1763690700,
                300
            ),
            Ok(())
        );
        assert_eq!(
            verify(
                b"other",
                Some("1763690700"),
                Some(&sig),
                body,
                1763690700,
                300
            ),
            Err(SignatureError::BadSignature)
        );
        assert_eq!(
            verify(
                b"s3cret",
                Some("1763690700"),
                Some(&sig),
                br#"{"ticketId":"T2"}"#,
                1763690700,
                300
            ),
            Err(SignatureError::BadSignature),
            "tampered body"
        );
        assert_eq!(
            verify(
                b"s3cret",
                Some("1763690700"),
                Some(&sig),
                body,
                1763691001,
                300
            ),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(b"s3cret", None, Some(&sig), body, 1763690700, 300),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(
                b"s3cret",
                Some("1763690700"),
                Some("zz"),
                body,
                1763690700,
                300
            ),
            Err(SignatureError::BadSignature)
        );
    }

    /// R-TKT-7: no answer → + 2 h inside a window, at most 3 attempts, then unreachable.
    #[test]
    fn call_results_retry_then_give_up() {
        let z = zone();
        let w = CallingWindows::default();
        let at = t("2026-11-21T11:00:00+08:00");
        assert_eq!(
            call_next(CallStatus::NoAnswer, 1, at, &w, &z),
            CallNext::Retry {
                attempt: 2,
                due: t("2026-11-21T14:00:00+08:00")
            }
        );
        assert_eq!(
            call_next(CallStatus::Busy, 3, at, &w, &z),
            CallNext::Final {
                outcome: "unreachable"
            }
        );
        assert_eq!(
            call_next(CallStatus::Answered, 1, at, &w, &z),
            CallNext::Final {
                outcome: "answered"
            }
        );
        let r = CallResult::parse(
            br#"{"eventId":"e1","taskRef":"tk:T:urgent_callback:1","status":"no_answer"}"#,
        )
        .unwrap();
        assert_eq!(r.status, CallStatus::NoAnswer);
        assert!(CallResult::parse(br#"{"eventId":"e1","taskRef":"x","status":"maybe"}"#).is_err());
    }
}
