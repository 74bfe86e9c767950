//! The ticket loop's intake: what the signed webhooks and the `[tickets.queue]` consumer hand
//! ticket updates and call results to (the store, the ticket context, the secrets, the clock),
//! present when `[tickets]` is configured.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::process::clock::Clock;
use crate::store::Store;
use crate::store::tickets::TicketCtx;

/// What the intake needs (present when `[tickets]` is configured).
pub struct TicketIntake {
    pub store: Store,
    pub ctx: TicketCtx,
    pub secret: Vec<u8>,
    /// The call center's signing secret for `POST /hooks/callcenter/results`; unset = 401.
    pub callcenter_secret: Option<Vec<u8>>,
    pub timestamp_header: String,
    pub signature_header: String,
    pub max_skew_s: i64,
    pub clock: Clock,
    /// Wakes the ticket worker.
    pub wake: Arc<Notify>,
}
