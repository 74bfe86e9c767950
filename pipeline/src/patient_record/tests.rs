//! R-PAT-1..3 on HL7 samples: what a record takes, which fact wins, what a visit gets.

use super::*;
use crate::decode::DecodeOptions;

const A04: &str =
    include_str!("../../../tests/fixtures/samples/hl7v2/adt_a04_outpatient_registration.hl7");

fn zone() -> TimeZone {
    crate::time::default_zone()
}

fn event(s: &str) -> PatientEvent {
    let now = crate::time::parse_hl7_ts("20261120120000", &zone()).unwrap();
    crate::mapping::tests::decode_event(s.as_bytes(), &DecodeOptions::at(now)).unwrap()
}

fn pseudo() -> Pseudonymizer {
    Pseudonymizer::new(&[3u8; 32], "k1").unwrap()
}

/// The A04 sample turned into an A31 at `evn` (YYYYMMDDHHMM) with PID-13 `phone`.
fn a31(evn: &str, phone: &str, id: &str) -> PatientEvent {
    let msg = A04
        .replace("ADT^A04", "ADT^A31")
        .replace("EVN|A04|", "EVN|A31|")
        .replace("13812345678", phone)
        .replace("MSG20261120093015001", id);
    let msg = msg
        .split('\r')
        .map(|l| {
            if l.starts_with("EVN|") {
                let mut f: Vec<&str> = l.split('|').collect();
                if f.len() > 2 {
                    f[2] = evn;
                }
                f.join("|")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\r");
    event(&msg)
}

#[test]
fn r_pat_1_a_record_keeps_each_fact_with_its_time_and_origin() {
    let e = a31("202611190800", "13900001111", "U1");
    let r = PatientRecord::from_event(&e, &pseudo());
    let m = r.mobile.as_ref().expect("the mobile is kept");
    assert_eq!(m.value, "13900001111");
    assert_eq!(m.from.message_id, "U1");
    assert_eq!(m.from.trigger, "A31");
    assert_eq!(m.at, e.event_time.as_millisecond());
    assert!(r.id_card_key.as_ref().unwrap().value.starts_with("ik_"));
    assert!(r.birth_date.is_some() && r.sex.is_some() && r.name.is_some());
    let shown = format!("{r:?}");
    assert!(
        !shown.contains("13900001111"),
        "Debug shows no value: {shown}"
    );
}

#[test]
fn r_pat_2_newer_facts_win_and_a_late_older_message_changes_nothing() {
    let p = pseudo();
    let old = PatientRecord::from_event(&a31("202611190800", "13900001111", "U1"), &p);
    let new = PatientRecord::from_event(&a31("202611200800", "13922223333", "U2"), &p);
    let mut r = old.clone();
    assert!(r.merge(new.clone()).contains(&"mobile"));
    assert_eq!(r.mobile.as_ref().unwrap().value, "13922223333");
    // The older update arrives late: nothing it holds is newer.
    assert!(r.merge(old).is_empty());
    assert_eq!(r.mobile.as_ref().unwrap().from.message_id, "U2");
    // The same message again changes nothing either.
    assert!(r.merge(new).is_empty());
}

#[test]
fn r_pat_2_an_older_message_still_fills_a_fact_the_record_lacks() {
    let p = pseudo();
    let mut r = PatientRecord::from_event(&a31("202611200800", "13922223333", "U2"), &p);
    r.city = None;
    let older = PatientRecord::from_event(&a31("202611190800", "13900001111", "U1"), &p);
    let changed = r.merge(older);
    assert!(
        changed.contains(&"city") && !changed.contains(&"mobile"),
        "{changed:?}"
    );
}

#[test]
fn r_pat_3_the_visit_s_own_values_win_and_missing_ones_come_from_the_record() {
    let p = pseudo();
    let r = PatientRecord::from_event(&a31("202611190800", "13900001111", "S1"), &p);
    // A registration without PID-13 and birth date.
    let bare = event(&A04.replace("13812345678", "").replace("19900307", ""));
    assert!(bare.patient.mobile.is_none());
    assert!(needs_record(&bare, || false));
    let (filled, what) = r.fill(&bare);
    assert_eq!(
        filled.patient.mobile.as_ref().unwrap().expose(),
        "13900001111"
    );
    let fields: Vec<_> = what.iter().map(|f| f.field).collect();
    assert!(fields.contains(&"mobile"), "{fields:?}");
    assert!(
        what[0]
            .describe(&zone())
            .starts_with("mobile from A31 message S1 of 2026-11-19T08:00:00+08:00"),
        "{}",
        what[0].describe(&zone())
    );
    // A registration with its own mobile keeps it.
    let own = event(A04);
    assert!(!needs_record(&own, || false));
    let (kept, what) = r.fill(&own);
    assert_eq!(
        kept.patient.mobile.as_ref().unwrap().expose(),
        "13812345678"
    );
    assert!(!what.iter().any(|f| f.field == "mobile"));
}

#[test]
fn r_pat_1_patient_level_events_need_no_record_read() {
    let e = a31("202611190800", "", "U1");
    assert!(!needs_record(&e, || true), "an update is not filled");
}
