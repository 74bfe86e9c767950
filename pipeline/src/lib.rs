//! `cem-pipeline` — the pure core of cem-bridge: bytes in, decisions out.
//!
//! This crate does no I/O: no network, no database, no async runtime. Everything here is a
//! function of its inputs (plus an explicit clock value), so it is tested with plain unit tests.
//!
//! Map:
//! - [`decode`] — bytes → a parsed document: format detection (R-EVT-1), charset (R-EVT-2), the
//!   HL7 v2 decoder wrapping hl7-parser (with its two workarounds) and its format-level checks,
//!   and well-formedness checks for XML and JSON. Knows nothing of mappings.
//! - [`translate`] — bytes → mapped outcome: decode, choose the connector's mapping, apply; and
//!   [`translate::testing`], the mapping files' own test cases (`cem-bridge test`).
//! - [`mapping`] — mapping files: paths, transforms, checks and test cases (interface
//!   engineers' YAML → [`event::PatientEvent`]).
//! - [`event`] — the canonical [`event::PatientEvent`] every decoder produces.
//! - [`identifiers`] — Chinese identifiers: 身份证号 validation (R-ID-1), mobile numbers (R-ID-2).
//! - [`lists`] — opt-out and staff lists as pseudonyms (R-EXC-3, R-EXC-4).
//! - [`anonymize`] — pseudonyms (R-ANO-2), masks (R-ANO-3), age bands (R-ANO-4).
//! - [`survey`] — which survey an event triggers, when, and the anonymised CEM dispatch payload;
//!   [`survey::resolve`], the final decision with the facts the store holds (R-CAN-2, R-CAN-6,
//!   R-EXC-1, R-EXC-3).
//! - [`followup`] — post-operative follow-up plans: which stays, which steps, when (R-FUP-1..2).
//! - [`patient_record`] — the latest contact facts per patient from patient-level events
//!   (A28/A31/A08, S0001/S0002), and what they fill in a visit event that lacks them (R-PAT-1..4).
//! - [`reid`] — re-identification: vault records and which (caller, purpose) may read what
//!   (R-ANO-6).
//! - [`ticket`] — tickets (工单): grading, SLA clocks and escalation, forwarding plan, order,
//!   calling windows, webhook signatures (R-TKT-1..11).
//! - [`reason`] — the dead-letter reason codes (R-EVT-1, R-EVT-6, EX-24).
//! - [`unsubscribe`] — a CEM unsubscribe (回复TD) parsed and checked (R-EXC-3).
//! - [`time`] — HL7 / ISO timestamps interpreted in the hospital's zone (R-GEN-1).
//!
//! Invariant: no personal data in any error's `Display`. Errors name fields and positions, never
//! values, so they can be logged and put in dead-letter headers.

pub mod anonymize;
pub mod decode;
pub mod event;
pub mod followup;
pub mod identifiers;
pub mod lists;
pub mod mapping;
pub mod patient_record;
pub mod policy;
pub mod reason;
pub mod reid;
pub mod survey;
pub mod ticket;
pub mod time;
pub mod translate;
pub mod unsubscribe;
