//! The integration suite as one test binary (it links once, not once per file): each module
//! is the tests of one area against real local services on 127.0.0.1 — RabbitMQ, PostgreSQL,
//! in-process HTTP recorders, the bridge in-process or as a child process, headless Chromium for
//! the ops page. `common/` is the harness. DEVELOPERS.md has the map of what each module proves.
//!
//! Names: `cargo nextest run -E 'test(/^ops::/)'` runs one module; nextest runs every test in
//! its own process, so metrics (per process) stay exact.

mod common;

mod cli;
mod crash_safety;
mod docs_metrics;
mod followups;
mod lists;
mod logs;
mod mapping_cli;
mod ops;
mod ops_browser;
mod opt_outs;
mod privacy;
mod reconnect;
mod reload;
mod slice_e2e;
mod store_backends;
mod store_ops;
mod survey_lifecycle;
mod ticket_store;
mod tickets;
mod worked_examples;
