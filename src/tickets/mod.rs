//! The ticket loop (domain rules §4) and the follow-up calls riding on it: the [`intake`] that
//! takes a CEM ticket update or a call result into the store, the [`queue`] consumer of
//! `[tickets.queue]`, and the [`worker`] that releases held versions, emits escalations and
//! sends the outbox to HCRM, the call center and `[cem_results]`. The rules themselves are in
//! `cem_pipeline::ticket`; the SQL in `store::tickets`.
//!
//! May import: `store`, `sinks`, `privacy`, `process`, `config`.

pub mod intake;
pub mod queue;
pub mod worker;
