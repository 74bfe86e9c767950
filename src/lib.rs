//! `cem-bridge` — the runtime: configuration, store, ingest, scheduler, ticket loop and CLI.
//!
//! The work lives in two crates below this one: `cem-pipeline` (pure: decode, map, anonymise,
//! decide) and `cem-connectors` (I/O edges behind the `Source` and `Sink` traits: RabbitMQ,
//! HTTP). This crate wires them, one folder per subsystem. Folders import downward only, in
//! this order from the bottom (ARCHITECTURE.md has the map and its invariants):
//! - [`config`] — `bridge.toml` and the mapping files, typed and checked. A leaf.
//! - [`process`] — what every task of one bridge process shares: clock, shutdown, fault
//!   points, log context, source health, the live (reloadable) mappings and policy.
//! - [`privacy`] — the vault cipher and `contactRef`, constant-time compares, the lists.
//! - [`store`] — the only place with SQL: SQLite or PostgreSQL through sqlx `Any`.
//! - [`sinks`] — the HTTP peers (CEM, HCRM, call center, CEM results) as configured.
//! - [`ingest`] — one task per source: batch deliveries, decide, commit, then ack.
//! - [`surveys`] — the scheduler: claims due survey jobs and pushes them to the CEM.
//! - [`tickets`] — the ticket loop: intake, the `[tickets.queue]` consumer, the worker.
//! - [`http`] — the one axum server: ops page, metrics, health, webhooks, contact resolve.
//! - [`app`] — starts everything from a config, reloads, stops in order.
//! - [`cli`] — the commands of `main.rs` other than `run`: inspect, replay, map, publish, bench.

/// This release (`Cargo.toml`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit it was built from (`build.rs`), or "unknown" without git.
pub const COMMIT: &str = env!("CEM_BRIDGE_COMMIT");

pub mod app;
pub mod cli;
pub mod config;
pub mod http;
pub mod ingest;
pub mod privacy;
pub mod process;
pub mod sinks;
pub mod store;
pub mod surveys;
pub mod tickets;
