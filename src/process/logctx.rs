//! Log context (issue 8 §4): every log line about a message, a survey job or a ticket request
//! runs inside a span that names it — `message_id` (the source's id, not personal) and a
//! `trace_id` derived from it — so one `trace_id` finds a message's whole life in the logs:
//! decoded, decided, dead-lettered or pushed, retried. Text logs show the span fields before the
//! message (`msg{connector=adt message_id=… trace_id=…}: …`), JSON logs carry them in `span` /
//! `spans`. No personal data: only ids and pseudonymous keys go in spans.

use sha2::{Digest, Sha256};
use tracing::{Span, info_span};

/// 16 hex of SHA-256(`trace|{id}`): stable for a message id across redeliveries, restarts and
/// instances, so the jobs a message made carry the same trace id as its ingest.
pub fn trace_id(id: &str) -> String {
    let d = Sha256::digest(format!("trace|{id}").as_bytes());
    cem_pipeline::anonymize::hex(&d[..8])
}

/// One inbound message (ingest).
pub fn message_span(connector: &str, message_id: &str) -> Span {
    info_span!("msg", connector, message_id, trace_id = %trace_id(message_id))
}

/// One survey job (scheduler): its trace id is its message's.
pub fn job_span(job_id: &str, message_id: &str) -> Span {
    info_span!("job", job_id, message_id, trace_id = %trace_id(message_id))
}

/// One ticket or follow-up request (ticket worker): traced by the ticket (or stay) id.
pub fn ticket_span(ticket_id: &str, key: &str) -> Span {
    info_span!("ticket", ticket_id, key, trace_id = %trace_id(ticket_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_are_stable_short_and_distinct() {
        let a = trace_id("MSG20261120093015001");
        assert_eq!(a, trace_id("MSG20261120093015001"));
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, trace_id("MSG20261120093015002"));
    }
}
