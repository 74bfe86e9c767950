//! `cem-connectors` — the I/O edges of cem-bridge, behind small types the runtime wires up.
//!
//! Map:
//! - [`amqp`] — RabbitMQ (lapin): the source (durable queue with a dead-letter exchange,
//!   prefetch, manual multiple-ack, dead-letter republish with reason headers) and a publisher
//!   with confirms (`cem-bridge publish`).
//! - [`http_sink`] — outbound HTTP to the CEM (reqwest): idempotency key header, configurable
//!   success rule for `{"code":0}` envelopes, classification of every outcome into
//!   accepted / retryable / permanent; and the `shadow` sink that appends requests to JSONL.
//! - [`resilience`] — the one block every HTTP sink (CEM, HCRM, call center) runs under: rate
//!   limit (governor), circuit breaker, backoff with jitter and `Retry-After`.
//!
//! - [`source`] — the inbound door traits; [`answer`] — the plumbing of doors whose sender
//!   waits for an answer; [`mllp`] — HL7 v2 over MLLP/TCP with HL7 ACKs; [`soap`] — the 互联互通
//!   `HIPMessageServer` subscriber with MCCI acknowledgements; [`listen`] — their allow-list and
//!   TLS.
//! - [`sink`] — the outbound peer traits.
//!
//! Invariant: nothing here decides business rules; nothing here logs message bodies.

pub mod amqp;
pub mod answer;
pub mod http_sink;
pub mod listen;
pub mod mllp;
pub mod resilience;
pub mod sink;
pub mod soap;
pub mod source;
