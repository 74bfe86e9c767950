//! `[tickets]` and `[tickets.queue]`: the ticket loop's configuration (domain rules §4). Without a
//! `[tickets]` table the loop is off: no webhook route, no HCRM or call-center sink. The peers'
//! own sections (`[hcrm]`, `[callcenter]`, `[cem_results]`) are in `peers.rs`.

use cem_connectors::amqp::AmqpSourceConfig;
use cem_pipeline::ticket::{Calendar, CallingWindows, parse_date};
use jiff::civil::Time;
use serde::Deserialize;

use crate::config::source::{QueueTypeConfig, dead_letter_name};

/// The connector name of the queue intake in logs, metrics and dead letters.
pub const CONNECTOR: &str = "tickets";

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TicketsConfig {
    /// Environment variable holding the CEM's webhook signing secret (HMAC-SHA256 over
    /// `timestamp.body`, R-TKT-11). Required: without it the bridge does not start.
    pub webhook_secret_env: String,
    /// Environment variable holding the call center's secret for signing its result callbacks
    /// (`POST /hooks/callcenter/results`); unset = those callbacks get 401.
    pub callcenter_secret_env: String,
    /// Header carrying the Unix time in seconds the CEM signed.
    pub timestamp_header: String,
    /// Header carrying the hex signature (`sha256=` prefix allowed).
    pub signature_header: String,
    /// A signed request older or newer than this is refused as `stale` (R-TKT-11).
    pub max_skew_s: i64,
    /// Public holidays, `YYYY-MM-DD` (R-TKT-3).
    pub holidays: Vec<String>,
    /// Make-up working days (调休), `YYYY-MM-DD`.
    pub makeup_days: Vec<String>,
    /// Local calling windows `HH:MM-HH:MM` (R-TKT-7).
    pub calling_windows: Vec<String>,
    /// How long early versions wait for a missing one before they apply anyway (R-TKT-8).
    pub gap_hold_s: u64,
    /// How often due outbox rows, escalations and held versions are looked for.
    pub poll_interval_ms: u64,
    /// A claimed outbox row whose outcome was not recorded (crash) is claimed again after this.
    pub lease_ms: u64,
    /// Requests to HCRM and the call center in flight at once.
    pub concurrency: usize,
    /// `[tickets.queue]`: take the same updates from a RabbitMQ queue too (absent = webhook
    /// only).
    pub queue: Option<TicketQueueConfig>,
}

/// `[tickets.queue]`: ticket updates as RabbitMQ messages (the JSON body the webhook takes).
/// No signature: the broker's credentials and vhost permissions are the gate. Each update is
/// acked once it is durable in the store; a body that is not an update is dead-lettered with
/// reason `malformed_ticket`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TicketQueueConfig {
    /// `amqp://user:password@host:5672/vhost`.
    pub url: String,
    pub queue: String,
    /// Default `{queue}.dlx`.
    pub dead_letter_exchange: Option<String>,
    /// Default `{queue}.dlq`.
    pub dead_letter_queue: Option<String>,
    #[serde(default)]
    pub queue_type: QueueTypeConfig,
    #[serde(default = "default_queue_prefetch")]
    pub prefetch: u16,
}

impl TicketQueueConfig {
    /// The RabbitMQ door of the ticket queue; `instance` names the consumer.
    pub fn door(&self, instance: &str) -> AmqpSourceConfig {
        AmqpSourceConfig {
            url: self.url.clone(),
            queue: self.queue.clone(),
            dead_letter_exchange: dead_letter_name(&self.dead_letter_exchange, &self.queue, "dlx"),
            dead_letter_queue: dead_letter_name(&self.dead_letter_queue, &self.queue, "dlq"),
            queue_type: self.queue_type.into(),
            prefetch: self.prefetch,
            consumer_tag: format!("cem-bridge/{instance}/{CONNECTOR}/{}", self.queue),
        }
    }
}

fn default_queue_prefetch() -> u16 {
    20
}

impl Default for TicketsConfig {
    fn default() -> Self {
        Self {
            webhook_secret_env: "CEM_BRIDGE_WEBHOOK_SECRET".into(),
            callcenter_secret_env: "CEM_BRIDGE_CALLCENTER_SECRET".into(),
            timestamp_header: "X-CEM-Timestamp".into(),
            signature_header: "X-CEM-Signature".into(),
            max_skew_s: 300,
            holidays: vec![],
            makeup_days: vec![],
            calling_windows: vec!["09:00-12:00".into(), "14:00-20:00".into()],
            gap_hold_s: 600,
            poll_interval_ms: 500,
            lease_ms: 60_000,
            concurrency: 8,
            queue: None,
        }
    }
}

fn parse_hm(s: &str) -> Option<Time> {
    let (h, m) = s.trim().split_once(':')?;
    Time::new(h.parse().ok()?, m.parse().ok()?, 0, 0).ok()
}

impl TicketsConfig {
    /// The working-day calendar, or the first date that is not `YYYY-MM-DD`.
    pub fn calendar(&self) -> Result<Calendar, String> {
        let dates = |list: &[String], key: &str| {
            list.iter()
                .map(|d| {
                    parse_date(d)
                        .ok_or_else(|| format!("{key}: {d:?} is not a date like 2026-10-01"))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Calendar {
            holidays: dates(&self.holidays, "holidays")?,
            makeup_days: dates(&self.makeup_days, "makeup_days")?,
        })
    }

    pub fn windows(&self) -> Result<CallingWindows, String> {
        self.calling_windows
            .iter()
            .map(|w| {
                let bad = || format!("calling_windows: {w:?} is not like \"09:00-12:00\"");
                let (a, b) = w.split_once('-').ok_or_else(bad)?;
                let (a, b) = (parse_hm(a).ok_or_else(bad)?, parse_hm(b).ok_or_else(bad)?);
                if a >= b {
                    return Err(format!("calling_windows: {w:?} ends before it starts"));
                }
                Ok((a, b))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(CallingWindows)
    }

    /// The first mistake, as (field, message).
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if let Err(e) = self.calendar() {
            return Some(("tickets", e));
        }
        if let Err(e) = self.windows() {
            return Some(("tickets.calling_windows", e));
        }
        if self.windows().is_ok_and(|w| w.0.is_empty()) {
            return Some((
                "tickets.calling_windows",
                "at least one window is needed".into(),
            ));
        }
        if self.webhook_secret_env.trim().is_empty() {
            return Some((
                "tickets.webhook_secret_env",
                "must name an environment variable".into(),
            ));
        }
        if self.concurrency == 0 || self.max_skew_s <= 0 {
            return Some(("tickets", "concurrency and max_skew_s must be ≥ 1".into()));
        }
        // Seen signatures are kept a day (retention): a longer skew would let a replay through.
        if self.max_skew_s > 3_600 {
            return Some((
                "tickets.max_skew_s",
                "at most 3600 s (seen signatures are kept a day; R-TKT-11 uses 300)".into(),
            ));
        }
        if let Some(q) = &self.queue {
            if q.queue.trim().is_empty() || !q.url.starts_with("amqp") {
                return Some((
                    "tickets.queue",
                    "needs url = \"amqp://…\" and a queue name".into(),
                ));
            }
            if q.prefetch == 0 {
                return Some((
                    "tickets.queue.prefetch",
                    "must be ≥ 1 (0 would mean unlimited in AMQP)".into(),
                ));
            }
        }
        None
    }

    pub fn gap_hold_ms(&self) -> i64 {
        i64::try_from(self.gap_hold_s.saturating_mul(1000)).unwrap_or(i64::MAX)
    }
}
