//! `cem-bridge` — the runtime: configuration, store, ingest, scheduler and CLI wiring.
//!
//! The work lives in two crates: `cem-pipeline` (pure: decode, anonymise, decide) and
//! `cem-connectors` (I/O edges: RabbitMQ, HTTP). This crate wires them:
//! - [`clock`] — the injectable clock every time rule reads.
//! - [`config`] — `bridge.toml`, typed and checked.
//! - [`store`] — SQLite/PostgreSQL through sqlx `Any`: dedupe, jobs, audit, dead letters.
//! - [`mappings`] — loads the mapping files each connector names.
//! - [`mapping_cli`] — `cem-bridge test` and `cem-bridge map` for interface engineers.
//! - [`reload`] — hot reload of mappings on SIGHUP and file change (last good kept on error).
//! - [`ingest`] — one task per source: batch deliveries, decide, commit, then ack.
//! - [`scheduler`] — claims due jobs and pushes them to the CEM sink with retries.
//! - [`ops`] — the ops HTTP server: Prometheus `/metrics`, `/health`, `/ready`.
//! - [`store_ops`] — store queries for operations (gauges, dead letters, traces, pruning).
//! - [`inspect`] — `dlq` and `trace` views of the store, as text or JSON.
//! - [`retention`] — prunes old store rows in batches on a timer (never pending jobs).
//! - [`runtime`] — starts everything, handles shutdown and secrets.
//! - [`shutdown`] — the one signal every task listens to.
//! - [`ticket_config`], [`tickets`], [`ticket_worker`], [`webhook`] — the ticket loop (domain
//!   rules §4): config; accepting updates in order and emitting escalations (store side);
//!   sending the outbox to HCRM and the call center; the signed `POST /hooks/cem/tickets`.
//! - [`opt_outs`] — the CEM's unsubscribes (回复TD) into the store's opt-out table (R-EXC-3).
//! - [`fault`] — crash points for the crash-safety tests (inert unless an env var is set).

pub mod bench;
pub mod bench_decode;
pub mod bench_dispatch;
pub mod clock;
pub mod config;
pub mod contact;
pub mod dlq_replay;
pub mod fault;
pub mod followups;
pub mod ingest;
pub mod inspect;
pub mod lists;
pub mod logctx;
pub mod mapping_cli;
pub mod mappings;
pub mod ops;
pub mod opt_outs;
pub mod publish;
pub mod reload;
pub mod retention;
pub mod runtime;
pub mod scheduler;
pub mod shutdown;
pub mod sink;
pub mod store;
pub mod store_ops;
pub mod ticket_config;
pub mod ticket_queue;
pub mod ticket_worker;
pub mod tickets;
pub mod vault;
pub mod webhook;
