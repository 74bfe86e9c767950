//! Domain rules §2.4: every worked example (EX-01 … EX-30) as one table, run end to end on
//! both stores — embedded SQLite and the local PostgreSQL (a fresh database per test).
//!
//! Each row is a sequence of steps: set the bridge's clock (`At`, Asia/Shanghai local time;
//! every component of the running bridge moves with it), publish a sample to the source
//! queue through the real local RabbitMQ (`Send`, built from `tests/fixtures/samples` with
//! field edits), start a second instance on the same store (`SecondInstance`), and check
//! what the store, the CEM recorder and the dead-letter table say (`Check`). After every
//! step the runner waits until each message is acked or dead-lettered and every due survey
//! job has left `pending`, so a check sees the settled state at that instant.
//!
//! The ticket loop is on (HCRM and call center are recorders) so follow-up plans (R-FUP-1,
//! shown in EX-05, 07, 08, 09, 15, 21) are checked in the same rows.
//! Test names: `sqlite::ex_01`, `postgres::ex_01`, …

use std::time::Duration;

use crate::common::*;
use cem_bridge::process::clock::Clock;
use cem_pipeline::anonymize::Pseudonymizer;
use cem_pipeline::event::{PatientId, Pii};
use jiff::Timestamp;
use jiff::tz::{Offset, TimeZone};
use sqlx::Row;

// ---------------------------------------------------------------------------------------------
// The table

/// One worked example: its id in domain-rules.md §2.4, the rules it shows, its steps.
struct Example {
    id: &'static str,
    steps: Vec<Step>,
}

enum Step {
    /// Set the bridge clock to this local time (`2026-11-20 09:31`).
    At(&'static str),
    /// Publish a message and wait until it is acked or dead-lettered.
    Send(Msg),
    /// Start a second bridge on the same queue and store (two instances, R-DND-3).
    SecondInstance,
    Check(Check),
}

enum Check {
    /// The survey jobs (do-not-disturb applies), each `TEMPLATE DUE STATUS [REASON]`.
    Surveys(&'static [&'static str]),
    /// Follow-up steps (R-FUP-1): `call DUE STATUS` for calls, `TEMPLATE DUE STATUS` for the
    /// CEM questionnaire and reminders (no do-not-disturb).
    Followups(&'static [&'static str]),
    /// What was decided for a message id: its job's `STATUS REASON`, or an audit
    /// `ACTION REASON` of that message when it made no job.
    Outcome(&'static str, &'static str),
    /// An audit row of that message id says `ACTION REASON` (whether or not it made a job).
    Audited(&'static str, &'static str),
    /// `trace` of the message that made this template's job shows an audit detail with this text.
    TraceSays(&'static str, &'static str),
    /// Survey invitations the CEM recorder accepted.
    Pushes(usize),
    /// Exactly these do-not-disturb keys hold a touch: `pk:AUTHORITY|ID`, `ik:身份证号`,
    /// `mk:mobile` (pseudonymised here with the test key).
    Touched(&'static [&'static str]),
    /// Every touch blocks until this local time (R-DND-4: sent time + 30 days, ±1 min).
    TouchesUntil(&'static str),
    /// The pending or sent job of this template goes to this mobile (its `mk`).
    JobTo(&'static str, &'static str),
    /// The job made by this message id belongs to this patient (`AUTHORITY|ID`).
    JobOf(&'static str, &'static str),
    /// The store's dead letters, by reason (sorted).
    DeadLetters(&'static [&'static str]),
    /// `cem_bridge_messages_duplicate_total` of the source.
    Duplicates(u64),
}

use Check::*;
use Step::{At, Check as C, SecondInstance, Send};

const A01: &str = "hl7v2/adt_a01_admission.hl7";
const A03: &str = "hl7v2/adt_a03_discharge.hl7";
const A03_DEAD: &str = "hl7v2/adt_a03_discharge_deceased.hl7";
const A04: &str = "hl7v2/adt_a04_outpatient_registration.hl7";
const A04_MINOR: &str = "hl7v2/adt_a04_escapes.hl7";
const A08: &str = "hl7v2/adt_a08_update_phone.hl7";
const A11: &str = "hl7v2/adt_a11_cancel_registration.hl7";
const A13: &str = "hl7v2/adt_a13_cancel_discharge.hl7";
const A40: &str = "hl7v2/adt_a40_merge.hl7";
const A28: &str = "hl7v2/adt_a28_add_person.hl7";
const A31_GBK: &str = "hl7v2/adt_a31_update_person_gbk.hl7";
const A04_NO_PHONE: &str = "hl7v2/adt_a04_no_phone.hl7";
const S0001: &str = "xml/patient_register_utf8.xml";
const S0001_GBK: &str = "xml/patient_register_gbk.xml";
const S0002: &str = "xml/patient_update_utf8.xml";
const S0023_NO_PHONE: &str = "xml/registration_no_phone.xml";

fn s0001() -> Msg {
    raw(S0001).header("service-code", "S0001")
}

fn s0002() -> Msg {
    raw(S0002).header("service-code", "S0002")
}

fn s0023_no_phone() -> Msg {
    raw(S0023_NO_PHONE).header("service-code", "S0023")
}

/// EX-05's stay (P00067890, CAT02, discharged 11-20 15:55): IP-SURG-01 and POSTOP-721.
const STAY_SURVEY: &str = "IP-SURG-01 2026-11-21 10:00 pending";
const STAY_PLAN: &[&str] = &[
    "call 2026-11-27 10:00 pending",
    "call 2026-12-17 10:00 pending",
    "FU-ONLINE-60 2027-01-19 10:00 pending",
];

/// The registration of EX-01 as another patient `n` (own id, visit, mobile; no ID card), so
/// do-not-disturb does not join them.
fn a04_other(id: &str, n: u32) -> Msg {
    hl7(A04, id)
        .replace("P00012345", &format!("P0008{n:04}"))
        .replace("~110101199003071233^^^CHN^NI", "")
        .replace("13812345678", &format!("1370000{n:04}"))
        .replace("V20261120001", &format!("V2026112080{n:02}"))
}

fn examples() -> Vec<Example> {
    vec![
        Example {
            id: "EX-01", // R-SRV-1, R-SRV-2, R-DND-1, R-DND-2, R-DND-4
            steps: vec![
                At("2026-11-20 09:31"),
                Send(hl7(A04, "EX01")),
                C(Surveys(&["OP-SAT-01 2026-11-20 11:30 pending"])),
                C(Pushes(0)),
                At("2026-11-20 11:30"),
                C(Surveys(&["OP-SAT-01 2026-11-20 11:30 sent"])),
                C(Pushes(1)),
                C(Touched(&[
                    "pk:HXEYE|P00012345",
                    "ik:110101199003071233",
                    "mk:13812345678",
                ])),
                C(TouchesUntil("2026-12-20 11:30")),
            ],
        },
        Example {
            id: "EX-02", // R-CAN-1
            steps: vec![
                At("2026-11-20 09:31"),
                Send(hl7(A04, "EX02")),
                At("2026-11-20 10:15"),
                Send(hl7(A11, "EX02-A11")),
                C(Surveys(&[
                    "OP-SAT-01 2026-11-20 11:30 cancelled visit_cancelled",
                ])),
                At("2026-11-20 11:31"),
                C(Pushes(0)),
                C(Touched(&[])),
            ],
        },
        Example {
            id: "EX-03", // R-EVT-4
            steps: vec![
                At("2026-11-20 09:31"),
                Send(hl7(A04, "EX03")),
                Send(hl7(A04, "EX03")),
                C(Duplicates(1)),
                C(Surveys(&["OP-SAT-01 2026-11-20 11:30 pending"])),
                At("2026-11-20 11:30"),
                C(Pushes(1)),
            ],
        },
        Example {
            id: "EX-04", // R-SRV-5, R-CAN-4
            steps: vec![
                At("2026-11-20 09:31"),
                Send(hl7(A04, "EX04-1")),
                Send(hl7(A04, "EX04-2")),
                C(Outcome("EX04-2", "no_op already_scheduled")),
                C(Surveys(&["OP-SAT-01 2026-11-20 11:30 pending"])),
                At("2026-11-20 11:30"),
                Send(hl7(A04, "EX04-3")),
                C(Outcome("EX04-3", "no_op already_sent")),
                C(Surveys(&["OP-SAT-01 2026-11-20 11:30 sent"])),
                C(Pushes(1)),
            ],
        },
        Example {
            id: "EX-05", // R-SRV-1, R-SRV-2 (inpatient), R-FUP-1, R-FUP-2
            steps: vec![
                At("2026-11-15 08:01"),
                Send(hl7(A01, "EX05-A01")),
                C(Surveys(&[])),
                C(Followups(&[])),
                At("2026-11-20 16:01"),
                Send(hl7(A03, "EX05-A03")),
                C(Surveys(&[STAY_SURVEY])),
                C(Followups(STAY_PLAN)),
            ],
        },
        Example {
            id: "EX-06", // R-CAN-5, R-DND-1 (mk of the mobile the survey goes to)
            steps: vec![
                At("2026-11-20 16:01"),
                Send(hl7(A03, "EX06-A03")),
                At("2026-11-20 16:31"),
                Send(hl7(A08, "EX06-A08")),
                C(JobTo("IP-SURG-01", "13711112222")),
                At("2026-11-21 10:00"),
                C(Surveys(&["IP-SURG-01 2026-11-21 10:00 sent"])),
                C(Pushes(1)),
                C(Touched(&[
                    "pk:HXEYE|P00067890",
                    "ik:31010419551212002X",
                    "mk:13711112222",
                ])),
            ],
        },
        Example {
            id: "EX-07", // R-CAN-3, R-FUP-4
            steps: vec![
                At("2026-11-20 16:01"),
                Send(hl7(A03, "EX07-A03")),
                At("2026-11-20 17:01"),
                Send(hl7(A13, "EX07-A13")),
                C(Surveys(&[
                    "IP-SURG-01 2026-11-21 10:00 cancelled discharge_cancelled",
                ])),
                At("2026-11-21 10:01"),
                C(Pushes(0)),
                At("2026-11-22 09:05"),
                Send(
                    hl7(A03, "EX07-A03b")
                        .set("EVN-2", "20261122090000")
                        .set("PV1-45", "20261122090000"),
                ),
                C(Surveys(&["IP-SURG-01 2026-11-23 10:00 pending"])),
                C(Followups(&[
                    "call 2026-11-29 10:00 pending",
                    "call 2026-12-19 10:00 pending",
                    "FU-ONLINE-60 2027-01-21 10:00 pending",
                ])),
                At("2026-11-23 10:00"),
                C(Surveys(&["IP-SURG-01 2026-11-23 10:00 sent"])),
                C(Pushes(1)),
            ],
        },
        Example {
            id: "EX-08", // R-EXC-1, R-EXC-8 (DEATH)
            steps: vec![
                At("2026-11-21 09:01"),
                Send(hl7(A03_DEAD, "EX08-A03")),
                C(Outcome("EX08-A03", "suppressed deceased")),
                C(Followups(&[])),
                Send(
                    a04_other("EX08-A04", 1)
                        .replace("P00080001", "P00099999")
                        .set("EVN-2", "20261121090000")
                        .set("PV1-44", "20261121090000"),
                ),
                C(Outcome("EX08-A04", "suppressed deceased")),
                C(Surveys(&[])),
                At("2026-11-21 11:01"),
                C(Pushes(0)),
            ],
        },
        Example {
            id: "EX-09", // R-EXC-2, R-EXC-8 (TRANSFER)
            steps: vec![
                At("2026-11-20 16:01"),
                Send(hl7(A03, "EX09").set("PV1-36", "02")),
                C(Outcome("EX09", "suppressed disposition_excluded")),
                C(Surveys(&[])),
                C(Followups(&[])),
            ],
        },
        Example {
            id: "EX-10", // R-EXC-6
            steps: vec![
                At("2026-11-20 09:31"),
                Send(hl7(A04_MINOR, "EX10-1")),
                C(Outcome("EX10-1", "suppressed minor_no_guardian")),
                Send(
                    hl7(A04_MINOR, "EX10-2")
                        .replace("V20261120077", "V20261120078")
                        .segment_after("PID", "NK1|1|欧阳^丽|MTH||13900001111"),
                ),
                C(Surveys(&["OP-PED-01 2026-11-20 11:30 pending"])),
                C(JobTo("OP-PED-01", "13900001111")),
                At("2026-11-20 11:30"),
                C(Pushes(1)),
            ],
        },
        Example {
            id: "EX-11", // R-SRV-3
            steps: vec![
                At("2026-11-20 19:41"),
                Send(
                    hl7(A04, "EX11-1")
                        .set("EVN-2", "20261120194000")
                        .set("PV1-44", "20261120194000"),
                ),
                C(Surveys(&["OP-SAT-01 2026-11-21 09:00 pending"])),
                At("2026-11-21 05:31"),
                Send(
                    a04_other("EX11-2", 2)
                        .set("EVN-2", "20261121053000")
                        .set("PV1-44", "20261121053000"),
                ),
                C(Surveys(&[
                    "OP-SAT-01 2026-11-21 09:00 pending",
                    "OP-SAT-01 2026-11-21 09:00 pending",
                ])),
                At("2026-11-21 09:00"),
                C(Pushes(2)),
            ],
        },
        Example {
            id: "EX-12", // R-DND-1, R-DND-4
            steps: vec![
                At("2026-11-20 09:31"),
                Send(hl7(A04, "EX12-1")),
                At("2026-11-20 11:30"),
                C(Pushes(1)),
                At("2026-12-05 09:01"),
                Send(
                    hl7(A04, "EX12-2")
                        .replace("V20261120001", "V20261205001")
                        .set("EVN-2", "20261205090000")
                        .set("PV1-44", "20261205090000"),
                ),
                At("2026-12-05 11:00"),
                C(Outcome("EX12-2", "suppressed dnd")),
                At("2026-12-20 10:01"),
                Send(
                    hl7(A04, "EX12-3")
                        .replace("V20261120001", "V20261220001")
                        .set("EVN-2", "20261220100000")
                        .set("PV1-44", "20261220100000"),
                ),
                At("2026-12-20 12:00"),
                C(Surveys(&[
                    "OP-SAT-01 2026-11-20 11:30 sent",
                    "OP-SAT-01 2026-12-05 11:00 suppressed dnd",
                    "OP-SAT-01 2026-12-20 12:00 sent",
                ])),
                C(Pushes(2)),
            ],
        },
        Example {
            id: "EX-13", // R-CAN-6, R-DND-1
            steps: vec![
                At("2026-11-10 08:01"),
                Send(
                    hl7(A04, "EX13-1")
                        .replace(
                            "P00012345^^^HXEYE^PI~110101199003071233^^^CHN^NI",
                            "P00054321^^^HXEYE^PI",
                        )
                        .replace("13812345678", "13600005555")
                        .replace("V20261120001", "V20261110001")
                        .set("EVN-2", "20261110080000")
                        .set("PV1-44", "20261110080000"),
                ),
                At("2026-11-10 10:00"),
                C(Pushes(1)),
                At("2026-11-21 10:01"),
                Send(hl7(A40, "EX13-A40")),
                At("2026-11-25 09:01"),
                // The survivor's own visit, with a mobile and ID card never touched.
                Send(
                    hl7(A04, "EX13-3")
                        .replace("~110101199003071233^^^CHN^NI", "")
                        .replace("13812345678", "13600006666")
                        .replace("V20261120001", "V20261125001")
                        .set("EVN-2", "20261125090000")
                        .set("PV1-44", "20261125090000"),
                ),
                C(JobOf("EX13-3", "HXEYE|P00012345")),
                At("2026-11-25 11:00"),
                C(Outcome("EX13-3", "suppressed dnd")),
                // An event for the merged id maps to the survivor.
                Send(
                    hl7(A04, "EX13-4")
                        .replace(
                            "P00012345^^^HXEYE^PI~110101199003071233^^^CHN^NI",
                            "P00054321^^^HXEYE^PI",
                        )
                        .replace("13812345678", "13600005555")
                        .replace("V20261120001", "V20261125002")
                        .set("EVN-2", "20261125110000")
                        .set("PV1-44", "20261125110000"),
                ),
                C(JobOf("EX13-4", "HXEYE|P00012345")),
                At("2026-11-25 13:01"),
                C(Outcome("EX13-4", "suppressed dnd")),
                // The moved touch (11-10 10:00) blocks until 12-10 10:00, not after.
                At("2026-12-10 09:01"),
                Send(
                    hl7(A04, "EX13-5")
                        .replace("~110101199003071233^^^CHN^NI", "")
                        .replace("13812345678", "13600006666")
                        .replace("V20261120001", "V20261210001")
                        .set("EVN-2", "20261210090000")
                        .set("PV1-44", "20261210090000"),
                ),
                At("2026-12-10 11:00"),
                C(Outcome("EX13-5", "sent")),
                C(Pushes(2)),
            ],
        },
        Example {
            id: "EX-14", // R-CAN-2
            steps: vec![
                At("2026-11-20 09:21"),
                Send(
                    hl7(A11, "EX14-A11")
                        .replace("V20261120001", "V9")
                        .set("EVN-2", "20261120092000"),
                ),
                At("2026-11-20 09:31"),
                Send(hl7(A04, "EX14-A04").replace("V20261120001", "V9")),
                C(Outcome("EX14-A04", "cancelled visit_cancelled")),
                C(Surveys(&[])),
                At("2026-11-20 11:31"),
                C(Pushes(0)),
            ],
        },
        Example {
            id: "EX-15", // R-EVT-8, R-SRV-1, R-SRV-2, R-CAN-1, R-FUP-1
            steps: vec![
                At("2026-11-20 09:50"),
                Send(raw("json/registration.json")),
                Send(raw("json/registration_cancelled.json")),
                Send(raw("xml/registration_utf8.xml").header("service-code", "S0023")),
                C(Surveys(&[
                    "OP-SAT-01 2026-11-20 11:30 cancelled visit_cancelled",
                    "OP-SAT-01 2026-11-20 11:30 pending",
                ])),
                At("2026-11-20 11:30"),
                C(Pushes(1)),
                At("2026-11-20 16:05"),
                Send(raw("json/discharge.json")),
                Send(raw("xml/discharge_utf8.xml").header("service-code", "S0032")),
                C(Surveys(&[
                    "IP-SURG-01 2026-11-21 10:00 pending",
                    "IP-SURG-01 2026-11-21 10:00 pending",
                    "OP-SAT-01 2026-11-20 11:30 cancelled visit_cancelled",
                    "OP-SAT-01 2026-11-20 11:30 sent",
                ])),
                C(Followups(&[
                    "call 2026-11-27 10:00 pending",
                    "call 2026-11-27 10:00 pending",
                    "call 2026-12-17 10:00 pending",
                    "call 2026-12-17 10:00 pending",
                    "FU-ONLINE-60 2027-01-19 10:00 pending",
                    "FU-ONLINE-60 2027-01-19 10:00 pending",
                ])),
            ],
        },
        Example {
            id: "EX-16", // R-DND-1 (ik), R-DND-3: one person at two hospitals, two instances
            steps: vec![
                At("2026-11-20 09:31"),
                Send(hl7(A04, "EX16-1")),
                Send(
                    hl7(A04, "EX16-2")
                        .replace("P00012345^^^HXEYE^PI", "B00770001^^^BJEYE^PI")
                        .replace("13812345678", "13700007777")
                        .replace("HXEYE_SH01", "BJEYE_01")
                        .replace("V20261120001", "V20261120555"),
                ),
                C(Surveys(&[
                    "OP-SAT-01 2026-11-20 11:30 pending",
                    "OP-SAT-01 2026-11-20 11:30 pending",
                ])),
                SecondInstance,
                At("2026-11-20 11:30"),
                C(Surveys(&[
                    "OP-SAT-01 2026-11-20 11:30 sent",
                    "OP-SAT-01 2026-11-20 11:30 suppressed dnd",
                ])),
                C(Pushes(1)),
            ],
        },
        Example {
            id: "EX-17", // R-EXC-7, R-ID-2
            steps: vec![
                At("2026-11-20 09:31"),
                Send(hl7(A04, "EX17").set("PID-13", "02161234567^WPN^PH")),
                C(Outcome("EX17", "suppressed no_mobile")),
                At("2026-11-20 11:31"),
                C(Pushes(0)),
            ],
        },
        Example {
            id: "EX-18", // R-EXC-5
            steps: vec![
                At("2026-11-20 09:31"),
                Send(hl7(A04, "EX18-1").set("PV1-16", "Y")),
                C(Outcome("EX18-1", "suppressed vip")),
                Send(
                    a04_other("EX18-2", 3)
                        .segment_after("PID", "PD1|")
                        .set("PD1-12", "Y"),
                ),
                C(Outcome("EX18-2", "suppressed vip")),
                At("2026-11-20 11:31"),
                C(Pushes(0)),
            ],
        },
        Example {
            id: "EX-19", // R-SRV-4
            steps: vec![
                At("2026-11-25 09:30"),
                Send(hl7(A04, "EX19")),
                C(Outcome("EX19", "suppressed stale_event")),
                C(Surveys(&[])),
                C(Pushes(0)),
            ],
        },
        Example {
            id: "EX-20", // R-EVT-5, R-SRV-1
            steps: vec![
                At("2026-11-20 09:31"),
                Send(hl7(A04, "EX20-1").set("MSH-11", "T")),
                C(Outcome("EX20-1", "suppressed non_production")),
                Send(a04_other("EX20-2", 4).set("PV1-2", "E")),
                C(Outcome("EX20-2", "suppressed no_rule")),
                C(Surveys(&[])),
            ],
        },
        Example {
            id: "EX-21", // R-EXC-1, R-CAN-5, R-FUP-4
            steps: vec![
                At("2026-11-20 16:01"),
                Send(hl7(A03, "EX21-A03")),
                At("2026-11-20 16:31"),
                Send(
                    hl7(A08, "EX21-A08")
                        .set("PID-29", "20261120162000")
                        .set("PID-30", "Y"),
                ),
                C(Surveys(&["IP-SURG-01 2026-11-21 10:00 cancelled deceased"])),
                C(Followups(&[
                    "call 2026-11-27 10:00 cancelled",
                    "call 2026-12-17 10:00 cancelled",
                    "FU-ONLINE-60 2027-01-19 10:00 cancelled deceased",
                ])),
                At("2026-11-21 10:01"),
                C(Pushes(0)),
            ],
        },
        Example {
            id: "EX-22", // R-CAN-5
            steps: vec![
                At("2026-11-20 16:01"),
                Send(hl7(A03, "EX22-A03")),
                At("2026-11-20 16:31"),
                Send(hl7(A08, "EX22-A08")),
                At("2026-11-20 16:41"),
                Send(
                    hl7(A08, "EX22-late")
                        .set("EVN-2", "20261120160000")
                        .replace("13711112222", "13755556666"),
                ),
                C(Outcome("EX22-late", "recorded older_update_ignored")),
                C(JobTo("IP-SURG-01", "13711112222")),
            ],
        },
        Example {
            id: "EX-23", // R-EVT-1, R-EVT-6
            steps: vec![
                At("2026-11-20 09:31"),
                Send(raw("bad/truncated.hl7")),
                Send(raw("bad/not_hl7.txt")),
                Send(raw("bad/invalid_utf8.hl7")),
                Send(raw("bad/missing_patient_id.hl7")),
                Send(raw("bad/unknown_event.hl7")),
                Send(raw("bad/malformed.xml")),
                Send(raw("bad/malformed.json")),
                C(DeadLetters(&[
                    "invalid_encoding",
                    "malformed_json",
                    "malformed_xml",
                    "missing_patient_id",
                    "truncated",
                    "unknown_event",
                    "unknown_format",
                ])),
                C(Surveys(&[])),
            ],
        },
        Example {
            id: "EX-24", // R-SRV-4 with R-SRV-6: staleness again at send time
            steps: vec![
                At("2026-11-20 09:31"),
                Send(hl7(A04, "EX24")),
                C(Surveys(&["OP-SAT-01 2026-11-20 11:30 pending"])),
                // Nothing runs between 10:00 and the restart: the clock jumps.
                At("2026-11-24 09:31"),
                C(Surveys(&[
                    "OP-SAT-01 2026-11-20 11:30 suppressed stale_event",
                ])),
                C(Pushes(0)),
                C(Touched(&[])),
            ],
        },
        Example {
            id: "EX-25", // R-PAT-1, R-PAT-3, R-EVT-8
            steps: vec![
                At("2026-11-19 08:01"),
                Send(s0001()),
                C(Outcome(
                    "XMLPAT20261119080000001",
                    "patient_record record_updated",
                )),
                C(Surveys(&[])),
                At("2026-11-20 10:01"),
                Send(s0023_no_phone()),
                C(Surveys(&["OP-SAT-01 2026-11-20 12:00 pending"])),
                C(JobTo("OP-SAT-01", "13699990000")),
                C(Audited(
                    "XMLREG20261120100000005",
                    "filled_from_record visit_lacked_contact",
                )),
                C(TraceSays(
                    "OP-SAT-01",
                    "mobile from S0001 message XMLPAT20261119080000001 of 2026-11-19T08:00:00+08:00",
                )),
                At("2026-11-20 12:00"),
                C(Surveys(&["OP-SAT-01 2026-11-20 12:00 sent"])),
                C(Pushes(1)),
                C(Touched(&[
                    "pk:HXEYE_SH01|P00099999",
                    "ik:310101198203034560",
                    "mk:13699990000",
                ])),
            ],
        },
        Example {
            id: "EX-26", // R-PAT-2, R-PAT-3, R-CAN-5
            steps: vec![
                At("2026-11-19 08:01"),
                Send(s0001()),
                At("2026-11-20 10:01"),
                Send(s0023_no_phone()),
                C(JobTo("OP-SAT-01", "13699990000")),
                At("2026-11-20 10:30"),
                Send(s0002()),
                C(JobTo("OP-SAT-01", "13699992222")),
                At("2026-11-20 10:40"),
                Send(
                    s0002()
                        .replace("XMLPAT20261120080000002", "EX26-LATE")
                        .replace("20261120080000", "20261119070000")
                        .replace("13699992222", "13699993333"),
                ),
                C(Outcome("EX26-LATE", "patient_record older_facts_ignored")),
                C(JobTo("OP-SAT-01", "13699992222")),
                At("2026-11-20 12:00"),
                C(Surveys(&["OP-SAT-01 2026-11-20 12:00 sent"])),
                C(Touched(&[
                    "pk:HXEYE_SH01|P00099999",
                    "ik:310101198203034560",
                    "mk:13699992222",
                ])),
            ],
        },
        Example {
            id: "EX-27", // R-PAT-1..3 over HL7 A28 / A31 (GBK)
            steps: vec![
                At("2026-11-19 08:01"),
                Send(hl7(A28, "EX27-A28")),
                C(Surveys(&[])),
                At("2026-11-20 10:01"),
                Send(hl7(A04_NO_PHONE, "EX27-A04")),
                C(Surveys(&["OP-SAT-01 2026-11-20 12:00 pending"])),
                C(JobTo("OP-SAT-01", "13788889999")),
                At("2026-11-20 10:30"),
                Send(raw(A31_GBK)),
                C(Outcome(
                    "MSG20261120070000012",
                    "recorded demographics_updated",
                )),
                C(JobTo("OP-SAT-01", "13788880000")),
            ],
        },
        Example {
            id: "EX-28", // R-EXC-6, R-PAT-3: the guardian from S0001's contact person
            steps: vec![
                At("2026-11-19 09:01"),
                Send(raw(S0001_GBK).header("service-code", "S0001")),
                At("2026-11-20 10:01"),
                Send(
                    s0023_no_phone()
                        .replace("XMLREG20261120100000005", "EX28-REG")
                        .replace("P00099999", "P00066666")
                        .replace("310101198203034560", "310101201506014510")
                        .replace("19820303", "20150601")
                        .replace("赵敏", "孙小宝")
                        .replace("V20261120005", "V20261120006")
                        .replace(
                            "administrativeGenderCode code=\"2\"",
                            "administrativeGenderCode code=\"1\"",
                        ),
                ),
                C(Surveys(&["OP-SAT-01 2026-11-20 12:00 pending"])),
                C(JobTo("OP-SAT-01", "13666667777")),
            ],
        },
        Example {
            id: "EX-29", // R-PAT-1: a patient-level event never creates a survey
            steps: vec![
                At("2026-11-20 08:01"),
                Send(s0002()),
                C(Outcome(
                    "XMLPAT20261120080000002",
                    "patient_record record_updated",
                )),
                C(Surveys(&[])),
                At("2026-11-20 12:00"),
                C(Pushes(0)),
                C(Touched(&[])),
            ],
        },
        Example {
            id: "EX-30", // R-PAT-4, R-CAN-6
            steps: vec![
                At("2026-11-19 08:01"),
                Send(hl7(A28, "EX30-A28")),
                At("2026-11-19 09:00"),
                Send(hl7(A40, "EX30-A40").replace("P00054321", "P00088888")),
                At("2026-11-20 09:31"),
                Send(hl7(A04, "EX30-A04").replace("13812345678", "")),
                C(Surveys(&["OP-SAT-01 2026-11-20 11:30 pending"])),
                C(JobTo("OP-SAT-01", "13788889999")),
            ],
        },
    ]
}

macro_rules! worked_examples {
    ($($test:ident => $id:literal),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::run($id, super::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::run($id, super::Backend::Postgres).await;
                }
            )*
        }
        /// Every row of the table has a test on both stores.
        #[test]
        fn every_example_has_a_test() {
            let tested = [$($id),*];
            let ids: Vec<&str> = examples().iter().map(|e| e.id).collect();
            assert_eq!(ids, tested);
        }
    };
}

worked_examples! {
    ex_01 => "EX-01", ex_02 => "EX-02", ex_03 => "EX-03", ex_04 => "EX-04",
    ex_05 => "EX-05", ex_06 => "EX-06", ex_07 => "EX-07", ex_08 => "EX-08",
    ex_09 => "EX-09", ex_10 => "EX-10", ex_11 => "EX-11", ex_12 => "EX-12",
    ex_13 => "EX-13", ex_14 => "EX-14", ex_15 => "EX-15", ex_16 => "EX-16",
    ex_17 => "EX-17", ex_18 => "EX-18", ex_19 => "EX-19", ex_20 => "EX-20",
    ex_21 => "EX-21", ex_22 => "EX-22", ex_23 => "EX-23", ex_24 => "EX-24",
    ex_25 => "EX-25", ex_26 => "EX-26", ex_27 => "EX-27", ex_28 => "EX-28",
    ex_29 => "EX-29", ex_30 => "EX-30",
}

/// The table names every example of docs/domain-rules.md §2.4, in order.
#[test]
fn the_table_covers_every_worked_example_of_the_rules() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/domain-rules.md");
    let rules = std::fs::read_to_string(&path).expect("docs/domain-rules.md");
    let in_rules: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.strip_prefix("| "))
        .filter_map(|l| l.split(' ').next())
        .filter(|id| id.starts_with("EX-"))
        .collect();
    let ids: Vec<&str> = examples().iter().map(|e| e.id).collect();
    assert_eq!(ids, in_rules);
}

// ---------------------------------------------------------------------------------------------
// Messages

/// A message to publish: a sample with edits, its id and AMQP headers.
#[derive(Clone)]
struct Msg {
    label: String,
    body: Vec<u8>,
    headers: Vec<(&'static str, &'static str)>,
}

/// An HL7 v2 sample with MSH-10 (the message id) set to `id`.
fn hl7(file: &str, id: &str) -> Msg {
    raw(&format!("hl7v2/{}", file.trim_start_matches("hl7v2/"))).set("MSH-10", id)
}

/// A sample as it is (JSON, XML, bad input): its own message id.
fn raw(file: &str) -> Msg {
    Msg {
        label: file.to_string(),
        body: read_fixture(file),
        headers: Vec::new(),
    }
}

impl Msg {
    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("an edited sample is UTF-8")
    }

    fn replace(mut self, from: &str, to: &str) -> Self {
        let t = self.text();
        assert!(t.contains(from), "{}: no {from:?} to replace", self.label);
        self.body = t.replace(from, to).into_bytes();
        self
    }

    /// Set HL7 field `SEG-N` (MSH counts its field separator as MSH-1), padding as needed.
    fn set(mut self, field: &str, value: &str) -> Self {
        let (seg, n) = field.split_once('-').expect("SEG-N");
        let n: usize = n.parse().expect("field number");
        let idx = if seg == "MSH" { n - 1 } else { n };
        let mut found = false;
        let segments: Vec<String> = self
            .text()
            .split('\r')
            .map(|s| {
                if !s.starts_with(&format!("{seg}|")) {
                    return s.to_string();
                }
                found = true;
                let mut f: Vec<String> = s.split('|').map(str::to_string).collect();
                if f.len() <= idx {
                    f.resize(idx + 1, String::new());
                }
                f[idx] = value.to_string();
                f.join("|")
            })
            .collect();
        assert!(found, "{}: no {seg} segment", self.label);
        if field == "MSH-10" {
            self.label = value.to_string();
        }
        self.body = segments.join("\r").into_bytes();
        self
    }

    /// Insert a segment after the first `seg` segment.
    fn segment_after(self, seg: &str, segment: &str) -> Self {
        let t = self.text();
        let start = t
            .find(&format!("\r{seg}|"))
            .unwrap_or_else(|| panic!("{}: no {seg}", self.label))
            + 1;
        let end = t[start..].find('\r').map_or(t.len(), |e| start + e);
        let mut out = t[..end].to_string();
        out.push('\r');
        out.push_str(segment);
        out.push_str(&t[end..]);
        Msg {
            body: out.into_bytes(),
            ..self
        }
    }

    fn header(mut self, k: &'static str, v: &'static str) -> Self {
        self.headers.push((k, v));
        self
    }
}

// ---------------------------------------------------------------------------------------------
// The runner

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

fn china() -> TimeZone {
    TimeZone::fixed(Offset::constant(8))
}

/// `2026-11-20 09:31` (Asia/Shanghai) as an instant.
fn local(t: &str) -> Timestamp {
    format!("{}:00+08:00", t.replace(' ', "T"))
        .parse()
        .unwrap_or_else(|e| panic!("{t}: {e}"))
}

fn show(ms: i64) -> String {
    Timestamp::from_millisecond(ms)
        .expect("a stored instant")
        .to_zoned(china())
        .strftime("%Y-%m-%d %H:%M")
        .to_string()
}

struct Run {
    setup: Setup,
    clock: Clock,
    pool: sqlx::AnyPool,
    cem: Recorder,
    keys: Pseudonymizer,
    bridges: Vec<cem_bridge::app::Bridge>,
}

async fn run(id: &'static str, backend: Backend) {
    sqlx::any::install_default_drivers();
    let ex = examples()
        .into_iter()
        .find(|e| e.id == id)
        .expect("the example is in the table");
    // Every step that waits on a service is bounded, so a hang names its step (one run of
    // `postgres::ex_10` once ran into the harness's 300 s timeout with nothing to say why).
    let (cem, hcrm, cc) = within(60, "start the recorders", async {
        (
            Recorder::start().await,
            Recorder::start().await,
            Recorder::start().await,
        )
    })
    .await;
    let name = format!("{}-{backend:?}", id.to_lowercase()).to_lowercase();
    let db = within(60, "create the scratch store", async {
        match backend {
            Backend::Sqlite => Db::sqlite(&name).await,
            Backend::Postgres => Db::postgres(&name).await,
        }
    })
    .await;
    let mut setup = ticket_setup(&name, &cem, &hcrm, &cc, "");
    setup.store_url = Some(db.url.clone());
    let first = ex.steps.iter().find_map(|s| match s {
        At(t) => Some(local(t)),
        _ => None,
    });
    let clock = Clock::starting_at(first.unwrap_or_else(|| local("2026-11-20 09:00")));
    let bridge = within(60, "start the bridge", start(&setup, &clock)).await;
    within(60, "the source queue declared", setup.wait_declared()).await;
    let pool = within(60, "open the store", sqlx::AnyPool::connect(&db.url))
        .await
        .expect("open the store");
    let mut r = Run {
        setup,
        clock,
        pool,
        cem,
        keys: Pseudonymizer::new(TEST_KEY, "t1").expect("test key"),
        bridges: vec![bridge],
    };
    for (i, step) in ex.steps.iter().enumerate() {
        let at = format!("{id} step {}", i + 1);
        match step {
            At(t) => r.clock.set(local(t)),
            Send(m) => r.send(m, &at).await,
            SecondInstance => {
                let b = within(60, "start a second instance", start(&r.setup, &r.clock)).await;
                r.bridges.push(b);
            }
            C(_) => {}
        }
        r.settle(&at).await;
        if let C(c) = step {
            r.check(c, &at).await;
        }
    }
    for b in r.bridges.drain(..) {
        within(60, "shut the bridge down", b.shutdown()).await;
    }
    within(60, "close the store pool", r.pool.close()).await;
    within(60, "delete the queues", cleanup(&r.setup)).await;
    within(60, "drop the scratch store", db.cleanup()).await;
}

async fn start(setup: &Setup, clock: &Clock) -> cem_bridge::app::Bridge {
    cem_bridge::app::start_with_clock(setup.config(), test_secrets(), clock.clone())
        .await
        .expect("bridge starts")
}

/// Sum of a counter's series in this process's metrics.
fn counter(name: &str) -> u64 {
    let text = cem_bridge::http::telemetry::metrics_handle()
        .expect("metrics recorder")
        .render();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn handled() -> u64 {
    counter("cem_bridge_messages_acked_total") + counter("cem_bridge_dead_letters_total")
}

impl Run {
    async fn send(&self, m: &Msg, at: &str) {
        let before = handled();
        within(
            60,
            &format!("{at}: publish {}", m.label),
            publish_with_headers(&self.setup.queue, &m.body, &m.label, &m.headers),
        )
        .await;
        wait_for(20, &format!("{at}: {} handled", m.label), || async {
            (handled() > before).then_some(())
        })
        .await;
    }

    /// Wait until no survey job is due and still pending (sent, suppressed or dead by now).
    async fn settle(&self, at: &str) {
        wait_for(20, &format!("{at}: due surveys decided"), || async {
            let now = self.clock.now_ms();
            let n: i64 = sqlx::query(
                "SELECT COUNT(*) AS n FROM survey_jobs WHERE status = 'pending' AND due_at <= $1",
            )
            .bind(now)
            .fetch_one(&self.pool)
            .await
            .ok()?
            .try_get("n")
            .ok()?;
            (n == 0).then_some(())
        })
        .await;
        // A push answered just now is recorded; let a wrong second push show up too.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    async fn jobs(&self) -> Vec<JobView> {
        sqlx::query(
            "SELECT job_id, template, status, reason, due_at, dnd, mobile_key, patient_key, message_id \
             FROM survey_jobs",
        )
        .fetch_all(&self.pool)
        .await
        .expect("read survey_jobs")
        .iter()
        .map(|r| JobView {
            template: r.get("template"),
            status: r.get("status"),
            reason: r.get("reason"),
            due_at: r.get("due_at"),
            dnd: r.get::<i64, _>("dnd") != 0,
            mobile_key: r.get("mobile_key"),
            patient_key: r.get("patient_key"),
            message_id: r.get("message_id"),
        })
        .collect()
    }

    fn key(&self, subject: &str) -> String {
        match subject.split_once(':') {
            Some(("pk", v)) => {
                let (authority, id) = v.split_once('|').expect("AUTHORITY|ID");
                self.keys.patient_key(&PatientId {
                    authority: authority.into(),
                    id: Pii::new(id.to_string()),
                })
            }
            Some(("ik", v)) => self.keys.id_card_key(v),
            Some(("mk", v)) => self.keys.mobile_key(v),
            _ => panic!("{subject}: pk:, ik: or mk:"),
        }
    }

    async fn check(&self, c: &Check, at: &str) {
        match c {
            Surveys(want) => {
                let mut got: Vec<String> = self
                    .jobs()
                    .await
                    .iter()
                    .filter(|j| j.dnd)
                    .map(JobView::show)
                    .collect();
                got.sort();
                assert_eq!(got, sorted(want), "{at}: survey jobs");
            }
            Followups(want) => {
                let mut got: Vec<String> = self
                    .jobs()
                    .await
                    .iter()
                    .filter(|j| !j.dnd)
                    .map(JobView::show)
                    .collect();
                let calls = sqlx::query(
                    "SELECT status, due_at FROM ticket_outbox \
                     WHERE ticket_id LIKE 'fu:%' AND sink = 'callcenter'",
                )
                .fetch_all(&self.pool)
                .await
                .expect("read ticket_outbox");
                got.extend(calls.iter().map(|r| {
                    format!(
                        "call {} {}",
                        show(r.get("due_at")),
                        r.get::<String, _>("status")
                    )
                }));
                got.sort();
                assert_eq!(got, sorted(want), "{at}: follow-up steps");
            }
            Outcome(msg, want) => {
                let jobs = self.jobs().await;
                let got: Vec<String> = match jobs.iter().find(|j| j.message_id == *msg) {
                    Some(j) => vec![
                        format!("{} {}", j.status, j.reason.as_deref().unwrap_or(""))
                            .trim_end()
                            .to_string(),
                    ],
                    None => self.audit_of(msg).await,
                };
                assert!(
                    got.iter().any(|g| g == want),
                    "{at}: {msg} expected {want:?}, got {got:?}"
                );
            }
            Audited(msg, want) => {
                let got = self.audit_of(msg).await;
                assert!(
                    got.iter().any(|g| g == want),
                    "{at}: {msg} expected an audit {want:?}, got {got:?}"
                );
            }
            TraceSays(template, text) => {
                let jobs = self.jobs().await;
                let j = jobs
                    .iter()
                    .find(|j| j.template == *template)
                    .unwrap_or_else(|| panic!("{at}: no {template} job"));
                let trace = self.bridges[0]
                    .store
                    .trace(&j.message_id)
                    .await
                    .expect("trace");
                let details: Vec<&str> = trace
                    .audit
                    .iter()
                    .filter_map(|a| a.detail.as_deref())
                    .collect();
                assert!(
                    details.iter().any(|d| d.contains(text)),
                    "{at}: trace of {template} says {text:?}: {details:?}"
                );
            }
            Pushes(n) => {
                let pushes = self.cem.accepted();
                assert_eq!(pushes.len(), *n, "{at}: pushes accepted by the CEM");
                for p in &pushes {
                    assert_no_pii(&format!("{at}: push"), &p.body);
                }
            }
            Touched(subjects) => {
                let mut want: Vec<String> = subjects.iter().map(|s| self.key(s)).collect();
                want.sort();
                let mut got: Vec<String> = sqlx::query("SELECT dnd_key FROM touches")
                    .fetch_all(&self.pool)
                    .await
                    .expect("read touches")
                    .iter()
                    .map(|r| r.get("dnd_key"))
                    .collect();
                got.sort();
                assert_eq!(got, want, "{at}: do-not-disturb keys touched {subjects:?}");
            }
            TouchesUntil(t) => {
                let until = local(t).as_millisecond();
                let window = 30 * 24 * 3_600_000_i64;
                let rows = sqlx::query("SELECT last_sent FROM touches")
                    .fetch_all(&self.pool)
                    .await
                    .expect("read touches");
                assert!(!rows.is_empty(), "{at}: no touches");
                for r in rows {
                    let end = r.get::<i64, _>("last_sent") + window;
                    assert!(
                        (until..until + 60_000).contains(&end),
                        "{at}: a touch blocks until {}, not {t}",
                        show(end)
                    );
                }
            }
            JobTo(template, mobile) => {
                let jobs = self.jobs().await;
                let j = jobs
                    .iter()
                    .find(|j| j.template == *template)
                    .unwrap_or_else(|| panic!("{at}: no {template} job"));
                assert_eq!(
                    j.mobile_key.as_deref(),
                    Some(self.keys.mobile_key(mobile).as_str()),
                    "{at}: {template} goes to {mobile}"
                );
            }
            JobOf(msg, patient) => {
                let jobs = self.jobs().await;
                let j = jobs
                    .iter()
                    .find(|j| j.message_id == *msg)
                    .unwrap_or_else(|| panic!("{at}: no job of {msg}"));
                assert_eq!(
                    j.patient_key,
                    self.key(&format!("pk:{patient}")),
                    "{at}: {msg}'s job belongs to {patient}"
                );
            }
            DeadLetters(want) => {
                let mut got: Vec<String> = sqlx::query("SELECT reason FROM dead_letters")
                    .fetch_all(&self.pool)
                    .await
                    .expect("read dead_letters")
                    .iter()
                    .map(|r| r.get("reason"))
                    .collect();
                got.sort();
                assert_eq!(got, sorted(want), "{at}: dead letters");
                let dlq = drain(&self.setup.dlq()).await;
                assert_eq!(dlq.len(), want.len(), "{at}: messages on the DLQ");
            }
            Duplicates(n) => {
                assert_eq!(
                    counter("cem_bridge_messages_duplicate_total"),
                    *n,
                    "{at}: duplicates counted"
                );
            }
        }
    }

    /// `ACTION REASON` of each audit row of a message.
    async fn audit_of(&self, msg: &str) -> Vec<String> {
        sqlx::query("SELECT action, reason FROM audit WHERE message_id = $1")
            .bind(msg)
            .fetch_all(&self.pool)
            .await
            .expect("read audit")
            .iter()
            .map(|r| {
                let reason: Option<String> = r.get("reason");
                format!(
                    "{} {}",
                    r.get::<String, _>("action"),
                    reason.unwrap_or_default()
                )
                .trim_end()
                .to_string()
            })
            .collect()
    }
}

fn sorted(want: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

struct JobView {
    template: String,
    status: String,
    reason: Option<String>,
    due_at: i64,
    dnd: bool,
    mobile_key: Option<String>,
    patient_key: String,
    message_id: String,
}

impl JobView {
    fn show(&self) -> String {
        let mut s = format!("{} {} {}", self.template, show(self.due_at), self.status);
        if let Some(r) = &self.reason {
            s.push(' ');
            s.push_str(r);
        }
        s
    }
}
