//! The minute's summary at info level: what the bridge did, counted, instead of a line per
//! push or per duplicate. Once a minute, when anything happened, one line such as
//! `last 60 s: 1200 received, 3 duplicate(s), 1 dead-lettered, 1150 survey(s) scheduled,
//! 40 suppressed, 2 cancelled, 980 pushed, 1 push(es) failed, 4 retried` — each message's own
//! lines are at debug.
//!
//! The counts are the ones the Prometheus counters get ([`note_counter`] is fed the counts a
//! store transaction made, after its commit), so the line and `/metrics` agree.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tracing::info;

use crate::process::shutdown::Shutdown;

/// What the summary line counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Received,
    Duplicate,
    DeadLettered,
    Scheduled,
    Suppressed,
    Cancelled,
    Pushed,
    Failed,
    Retried,
}

const KINDS: [(Kind, &str); 9] = [
    (Kind::Received, "received"),
    (Kind::Duplicate, "duplicate(s)"),
    (Kind::DeadLettered, "dead-lettered"),
    (Kind::Scheduled, "survey(s) scheduled"),
    (Kind::Suppressed, "suppressed"),
    (Kind::Cancelled, "cancelled"),
    (Kind::Pushed, "pushed"),
    (Kind::Failed, "push(es) failed"),
    (Kind::Retried, "retried"),
];

static COUNTS: [AtomicU64; 9] = [const { AtomicU64::new(0) }; 9];

fn slot(kind: Kind) -> &'static AtomicU64 {
    let i = KINDS.iter().position(|(k, _)| *k == kind).unwrap_or(0);
    &COUNTS[i]
}

/// Count `n` of `kind` in this minute's summary.
pub fn add(kind: Kind, n: u64) {
    slot(kind).fetch_add(n, Ordering::Relaxed);
}

/// Feed a counter the store counted at a commit; the ones the summary shows are kept.
pub fn note_counter(name: &str, labels: &[metrics::Label], n: u64) {
    let label = |k: &str| {
        labels
            .iter()
            .find(|l| l.key() == k)
            .map(metrics::Label::value)
    };
    let kind = match name {
        "cem_bridge_messages_in_total" => Kind::Received,
        "cem_bridge_messages_duplicate_total" => Kind::Duplicate,
        "cem_bridge_survey_decisions_total" => match label("decision") {
            Some("scheduled") => Kind::Scheduled,
            Some("suppressed") => Kind::Suppressed,
            Some("cancelled") => Kind::Cancelled,
            _ => return,
        },
        _ => return,
    };
    add(kind, n);
}

/// Take the counts since the last call, zeroing them; the line, or `None` when nothing happened.
pub fn take_line(period: Duration) -> Option<String> {
    let parts: Vec<String> = KINDS
        .iter()
        .zip(&COUNTS)
        .filter_map(|((_, what), c)| {
            let n = c.swap(0, Ordering::Relaxed);
            (n > 0).then(|| format!("{n} {what}"))
        })
        .collect();
    (!parts.is_empty()).then(|| format!("last {} s: {}", period.as_secs(), parts.join(", ")))
}

/// Log the summary every `period` until shutdown, and once more at the end.
pub async fn run(period: Duration, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Some(line) = take_line(period) {
                    info!("{line}");
                }
            }
            _ = shutdown.wait() => {
                if let Some(line) = take_line(period) {
                    info!("{line} (at shutdown)");
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_says_what_happened_and_nothing_when_idle() {
        // The counts are process-wide: this is the only test in this binary that touches them.
        let _ = take_line(Duration::from_secs(60));
        assert_eq!(take_line(Duration::from_secs(60)), None);
        add(Kind::Pushed, 3);
        let dup = [metrics::Label::new("connector", "his")];
        note_counter("cem_bridge_messages_duplicate_total", &dup, 2);
        let sup = [metrics::Label::new("decision", "suppressed")];
        note_counter("cem_bridge_survey_decisions_total", &sup, 1);
        note_counter("cem_bridge_messages_ignored_total", &dup, 5);
        assert_eq!(
            take_line(Duration::from_secs(60)).as_deref(),
            Some("last 60 s: 2 duplicate(s), 1 suppressed, 3 pushed")
        );
        assert_eq!(take_line(Duration::from_secs(60)), None);
    }
}
