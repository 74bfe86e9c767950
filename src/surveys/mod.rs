//! Surveys after ingest: the [`scheduler`] claims due survey jobs with a lease (do-not-disturb
//! reserved in the claim), pushes them to the CEM sink, and records the outcome with retries
//! on the sink's schedule. What a survey is and when it is due is decided in the pipeline
//! (`cem_pipeline::survey`); the store keeps the jobs. [`catchup`] reports the work found
//! overdue at the start (after an outage) and what became of it.
//!
//! May import: `store`, `sinks`, `privacy`, `process`, `config`.

pub mod catchup;
pub mod scheduler;
