//! The inbound side of a connector: a door that yields [`Delivery`]s and takes back, per
//! delivery, what became of it ([`Settle`]) — only once the caller says its effects are durable.
//!
//! A door is two things, as in Vector's components: a [`SourceBuilder`] (its config, able to
//! connect and to connect again after a failure) and the [`Source`] it opens (one live link:
//! receive, settle, stop, close). The bridge's ingest loop and the ticket-queue consumer are
//! written against these traits only; [`crate::amqp`] is the first implementation. A new door
//! (MLLP, SOAP) is one file implementing both traits, with no change to ingest.
//!
//! The contract every implementation keeps:
//! - nothing is acknowledged to the sender before [`Source::settle`] says so, and `settle` is
//!   called only after the store transaction holding the deliveries' effects committed;
//! - a delivery that is never settled (crash, lost link, shutdown) goes back to the sender,
//!   which delivers it again with a higher [`Delivery::redeliveries`];
//! - a [`Settle::DeadLetter`] is forwarded with its reason where the transport can carry one
//!   (AMQP: the dead-letter exchange with `x-cem-reason`); the bridge has stored it already.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

/// One inbound message as a door delivers it, detached from the transport's types.
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    /// The door's handle for settling it (AMQP: the delivery tag), increasing on one link.
    pub id: u64,
    pub body: Vec<u8>,
    /// String headers the transport carried (`$header.NAME` in mappings; copied with a dead
    /// letter).
    pub headers: BTreeMap<String, String>,
    /// The transport's message id, when it has one (AMQP `message_id`).
    pub message_id: Option<String>,
    pub content_type: Option<String>,
    /// Earlier deliveries of this message as the door counts them; 0 on a first delivery
    /// (AMQP quorum queues: `x-delivery-count`).
    pub redeliveries: u64,
}

/// What became of a delivery, said once its effects are durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Done: its effects are stored (or it was a counted duplicate).
    Ack,
    /// Stored by the bridge as a dead letter with this reason code and detail; the door
    /// forwards it with them where it can, then lets it go.
    DeadLetter { reason: String, detail: String },
    /// Not taken now: give it back to be delivered again.
    Retry,
}

/// What settling a batch did, for the acked counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settled {
    /// Deliveries acknowledged to the sender (dead letters forwarded with their reason
    /// included).
    pub acked: usize,
    /// Dead letters the door could not forward with their reason and rejected instead (AMQP:
    /// routed to the dead-letter exchange by the broker without reason headers).
    pub rejected: usize,
    /// Deliveries handed back for redelivery.
    pub retried: usize,
}

/// A door failed: the link is unusable and must be reopened. Carries no message content.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{door}: the other side ended the stream (consumer cancelled)")]
    Ended { door: String },
    #[error(transparent)]
    Transport(Box<dyn std::error::Error + Send + Sync>),
}

/// One live inbound link.
pub trait Source: Send {
    /// The next delivery; `Ok(None)` once the other side ended the stream.
    fn recv(&mut self) -> impl Future<Output = Result<Option<Delivery>, SourceError>> + Send;

    /// Settle deliveries of this link, in the order received, after their effects are
    /// durable. `connector` names the bridge's connector in what is forwarded.
    fn settle(
        &mut self,
        connector: &str,
        batch: &[(&Delivery, Settle)],
    ) -> impl Future<Output = Result<Settled, SourceError>> + Send;

    /// Stop taking new deliveries (shutdown); unsettled ones go back to the sender.
    fn stop(&mut self) -> impl Future<Output = ()> + Send;

    /// Close the link; unsettled deliveries go back to the sender.
    fn close(self) -> impl Future<Output = ()> + Send
    where
        Self: Sized;

    /// How long a partial batch waits for more deliveries, given the configured wait. A door
    /// whose senders wait for their answer returns zero: waiting cannot grow its batch.
    fn batch_wait(&self, configured: Duration) -> Duration {
        configured
    }

    /// The address a listening door is bound to (its port when the config said 0).
    fn local_addr(&self) -> Option<std::net::SocketAddr> {
        None
    }
}

/// A door's configuration, able to open a [`Source`] — again after a failure.
pub trait SourceBuilder: Send + Sync {
    type Source: Source;

    /// Open a link (declaring what the transport needs), or say why not.
    fn connect(&self) -> impl Future<Output = Result<Self::Source, SourceError>> + Send;

    /// What this door consumes, for logs: no secrets (AMQP: queue and dead-letter queue).
    fn describe(&self) -> String;
}
