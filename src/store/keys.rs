//! The keys of the ticket outbox: which thread a request belongs to (a CEM ticket, or a
//! stay's follow-up plan `fu:{stayKey}`), a follow-up step's key without its retry suffix
//! (R-FUP-4), its plan and step as metric labels, and the associated data outbox requests are
//! sealed under. Shared by the ticket and follow-up sides of the store and by the worker.

use cem_pipeline::followup::Plan;

/// Prefix of a follow-up plan's outbox thread.
const FOLLOWUP_PREFIX: &str = "fu:";

/// The thread an outbox row belongs to (its `ticket_id` column): requests of one thread go out
/// in order (R-TKT-8's machinery).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Thread<'a> {
    /// A CEM ticket, by its ticket id.
    Ticket(&'a str),
    /// The follow-up calls of one stay (`fu:{stayKey}`).
    Followup { stay_key: &'a str },
}

impl<'a> Thread<'a> {
    /// Which thread the stored `ticket_id` names.
    pub fn of(ticket_id: &'a str) -> Self {
        match ticket_id.strip_prefix(FOLLOWUP_PREFIX) {
            Some(stay_key) => Self::Followup { stay_key },
            None => Self::Ticket(ticket_id),
        }
    }

    pub fn is_followup(self) -> bool {
        matches!(self, Self::Followup { .. })
    }
}

/// The associated data of a sealed outbox request.
pub fn outbox_aad(idem_key: &str) -> String {
    format!("tko|{idem_key}")
}

/// The R-FUP-4 step key of a follow-up task ref: without the `:{attempt}` of a retry.
pub fn followup_step_key(task_ref: &str) -> &str {
    match task_ref.rsplit_once(':') {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => task_ref,
    }
}

/// The outbox thread of a stay's follow-up calls (order per stay, R-TKT-8's machinery).
pub fn thread_id(stay_key: &str) -> String {
    format!("{FOLLOWUP_PREFIX}{stay_key}")
}

/// `(plan, step)` of a follow-up task key `fu:{stayKey}:{plan}:{step}[:{attempt}]`, for
/// metric labels and `trace` (both come from the plan table, never from a patient); a key
/// stored under a step's earlier name (`d7`) reads as its rules name (`postop_d7`).
pub fn plan_and_step(key: &str) -> (&'static str, &'static str) {
    let mut parts = followup_step_key(key).rsplit(':');
    let step = parts.next().unwrap_or("");
    let plan = parts.next().unwrap_or("");
    for p in [Plan::Postop721, Plan::PostopHigh, Plan::CareQuarterly] {
        if p.code() == plan
            && let Some(s) = p.steps().iter().find(|s| s.id == step || s.legacy == step)
        {
            return (p.code(), s.id);
        }
    }
    ("unknown", "unknown")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_fup_4_threads_and_step_keys() {
        assert_eq!(Thread::of("T-1"), Thread::Ticket("T-1"));
        let t = thread_id("vk_ab");
        assert_eq!(Thread::of(&t), Thread::Followup { stay_key: "vk_ab" });
        assert!(Thread::of(&t).is_followup() && !Thread::of("T-1").is_followup());
        assert_eq!(
            followup_step_key("fu:vk_ab:postop_721:d7:2"),
            "fu:vk_ab:postop_721:d7"
        );
        assert_eq!(
            followup_step_key("fu:vk_ab:postop_721:d7"),
            "fu:vk_ab:postop_721:d7"
        );
        assert_eq!(plan_and_step("fu:vk_ab:nope:d7"), ("unknown", "unknown"));
    }
}
