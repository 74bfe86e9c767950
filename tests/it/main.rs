//! The integration suite as one test binary (it links once, not once per file): each module
//! holds the tests of one area against real local services on 127.0.0.1 — RabbitMQ, PostgreSQL,
//! in-process HTTP recorders, the bridge in-process or as a child process, headless Chromium for
//! the ops page. `common/` is the harness. DEVELOPERS.md has the map of what each module proves.
//!
//! Names are `area::module::test`: `cargo nextest run -E 'test(/^operations::ops::/)'` runs
//! one module. nextest runs every test in its own process, so metrics (per process) stay exact.

mod common;

mod doors;
mod flow;
mod operations;
mod protection;
mod stores;
mod ticket_loop;
