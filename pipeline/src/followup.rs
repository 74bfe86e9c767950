//! Post-operative follow-up plans (术后回访, domain rules §5): which discharged stays get a plan
//! (R-FUP-1), under which exclusions (R-FUP-2), its steps and when each is due. Pure: the store
//! keeps the steps (calls in the ticket outbox, online questionnaires and reminders as CEM jobs
//! exempt from do-not-disturb), cancels them on A13 and death and re-keys them on A40 (R-FUP-4);
//! the ticket worker applies one call per patient per day (R-FUP-3) at send time.

use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;

use crate::event::{EventKind, PatientClass, PatientEvent, Visit};
use crate::policy::SurveyPolicy;
use crate::survey::{Contact, ListUse, SurveyContext, SurveyDispatch, dispatch_payload, screen};
use crate::ticket::CallingWindows;

/// The three plans of R-FUP-1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// NORMAL risk (S004 7-2-1).
    Postop721,
    /// HIGH risk: D+1 and D+3 calls, then POSTOP-721.
    PostopHigh,
    /// LOW risk: a D+7 call, then quarterly health reminders.
    CareQuarterly,
}

impl Plan {
    pub fn code(self) -> &'static str {
        match self {
            Self::Postop721 => "POSTOP-721",
            Self::PostopHigh => "POSTOP-HIGH",
            Self::CareQuarterly => "CARE-QUARTERLY",
        }
    }

    /// R-FUP-1: by risk level (`HIGH`, `LOW`; anything else or none = NORMAL).
    pub fn for_risk(risk: Option<&str>) -> Self {
        match risk.map(str::trim) {
            Some(r) if r.eq_ignore_ascii_case("HIGH") => Self::PostopHigh,
            Some(r) if r.eq_ignore_ascii_case("LOW") => Self::CareQuarterly,
            _ => Self::Postop721,
        }
    }

    /// The plan's steps in time order.
    pub fn steps(self) -> &'static [StepDef] {
        use StepKind::*;
        const D7: StepDef = StepDef {
            id: "postop_d7",
            legacy: "d7",
            days: 7,
            kind: Call("postop_d7"),
        };
        const D27: StepDef = StepDef {
            id: "review_reminder",
            legacy: "d27",
            days: 27,
            kind: Call("review_reminder"),
        };
        const D60: StepDef = StepDef {
            id: "FU-ONLINE-60",
            legacy: "d60",
            days: 60,
            kind: Online,
        };
        match self {
            Self::Postop721 => &[D7, D27, D60],
            Self::PostopHigh => &[
                StepDef {
                    id: "postop_d1",
                    legacy: "d1",
                    days: 1,
                    kind: Call("postop_d1"),
                },
                StepDef {
                    id: "postop_d3",
                    legacy: "d3",
                    days: 3,
                    kind: Call("postop_d3"),
                },
                D7,
                D27,
                D60,
            ],
            Self::CareQuarterly => &[
                D7,
                StepDef {
                    id: "health_reminder_d90",
                    legacy: "d90",
                    days: 90,
                    kind: Reminder,
                },
                StepDef {
                    id: "health_reminder_d180",
                    legacy: "d180",
                    days: 180,
                    kind: Reminder,
                },
                StepDef {
                    id: "health_reminder_d270",
                    legacy: "d270",
                    days: 270,
                    kind: Reminder,
                },
                StepDef {
                    id: "health_reminder_d360",
                    legacy: "d360",
                    days: 360,
                    kind: Reminder,
                },
            ],
        }
    }
}

/// One step of a plan, as defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepDef {
    /// The step's name in R-FUP-1's table (`postop_d7`, `review_reminder`, `FU-ONLINE-60`, …):
    /// the last part of its step key, a metric label, what `trace` shows.
    pub id: &'static str,
    /// The name earlier releases used (`d7`, `d27`, `d60`, …). Stored plans keep their keys:
    /// re-planning a stay finds a step under either name, so nothing is planned twice.
    pub legacy: &'static str,
    /// Days after the discharge date.
    pub days: i64,
    pub kind: StepKind,
}

/// What a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// An AI call-center task with this scene.
    Call(&'static str),
    /// The CEM follow-up questionnaire (`[followup] online_template`).
    Online,
    /// A CEM health reminder (`[followup] reminder_template`).
    Reminder,
}

/// `[followup]`: the plans' settings.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FollowupSettings {
    /// Plan follow-ups at all (default on).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Ward / department code prefixes that mean surgery (R-FUP-1), besides a procedure in the
    /// message (`visit.surgery`).
    #[serde(default = "default_wards")]
    pub surgical_wards: Vec<String>,
    /// Local time each step is due on its day (R-FUP-1: 10:00).
    #[serde(default = "default_step_time")]
    #[schemars(with = "String")]
    pub step_time: Time,
    /// CEM template of the D+60 online follow-up questionnaire.
    #[serde(default = "default_online")]
    pub online_template: String,
    /// CEM template of CARE-QUARTERLY's health reminders.
    #[serde(default = "default_reminder")]
    pub reminder_template: String,
    /// A follow-up call found due more than this many days after its planned day (the bridge
    /// was stopped, the call center down) is recorded `expired`, not made: a D+1 post-op call
    /// on day 9 helps nobody (issue 19 §1).
    #[serde(default = "default_max_call_delay")]
    pub max_call_delay_days: u32,
}

fn yes() -> bool {
    true
}
fn default_wards() -> Vec<String> {
    ["CAT", "GLA", "RET", "REF"].map(String::from).to_vec()
}
fn default_step_time() -> Time {
    Time::constant(10, 0, 0, 0)
}
fn default_online() -> String {
    "FU-ONLINE-60".into()
}
fn default_reminder() -> String {
    "FU-HEALTH-REMINDER".into()
}
fn default_max_call_delay() -> u32 {
    3
}

impl Default for FollowupSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            surgical_wards: default_wards(),
            step_time: default_step_time(),
            online_template: default_online(),
            reminder_template: default_reminder(),
            max_call_delay_days: default_max_call_delay(),
        }
    }
}

impl FollowupSettings {
    /// R-FUP-1: a procedure in the message, or a surgical ward.
    pub fn is_surgical(&self, visit: &Visit) -> bool {
        visit
            .surgery
            .as_deref()
            .is_some_and(|s| !s.trim().is_empty())
            || visit.dept_code.as_deref().is_some_and(|d| {
                self.surgical_wards
                    .iter()
                    .any(|w| !w.is_empty() && d.starts_with(w.as_str()))
            })
    }
}

/// A planned step with its key and due time.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedStep {
    /// R-FUP-4 `fu:{stayKey}:{plan}:{step}` — the same for a re-planned stay.
    pub key: String,
    /// The same step's key under its earlier name ([`StepDef::legacy`]): a plan stored by an
    /// earlier release is found under it.
    pub legacy_key: String,
    pub step: &'static str,
    pub due_at: Timestamp,
    pub action: StepAction,
}

/// What a planned step sends.
#[derive(Debug, Clone, PartialEq)]
pub enum StepAction {
    Call {
        scene: &'static str,
    },
    /// A CEM push (questionnaire or reminder) with this payload; the job id is derived from
    /// the step key.
    Cem {
        job_id: String,
        /// The job id under the step's earlier name (see [`PlannedStep::legacy_key`]).
        legacy_job_id: String,
        template: String,
        payload: Box<SurveyDispatch>,
    },
}

/// A stay's plan.
#[derive(Debug, Clone, PartialEq)]
pub struct FollowupPlan {
    pub plan: Plan,
    /// `vk_…` of the stay.
    pub stay_key: String,
    pub patient_key: String,
    pub id_card_key: Option<String>,
    /// `mk_…` of the number called: the guardian's for a minor (R-FUP-2).
    pub mobile_key: String,
    /// Whose vault entry the call center's mobile comes from: `pk_…` for an adult (mobile and
    /// greeting), the guardian's `mk_…` for a minor (mobile only).
    pub callee_key: String,
    pub steps: Vec<PlannedStep>,
}

/// What a discharge means for follow-ups.
#[derive(Debug, Clone, PartialEq)]
pub enum FollowupDecision {
    Plan(Box<FollowupPlan>),
    /// A surgical stay, but an exclusion applies (R-FUP-2): recorded with the reason.
    Excluded {
        reason: &'static str,
        rule: &'static str,
    },
    /// Not a surgical inpatient discharge (or follow-ups are off).
    None,
}

/// The final follow-up decision with the stored facts of its patient (read as for a survey,
/// [`crate::survey::PatientFacts`]): a merged patient's stay is followed up under the survivor
/// (R-CAN-6), and a patient flagged deceased earlier gets no plan (R-EXC-1). Tombstones and the
/// CEM's unsubscribes do not stop follow-ups (R-FUP-2 has its own list).
pub fn resolve(
    decision: FollowupDecision,
    facts: &crate::survey::PatientFacts,
) -> FollowupDecision {
    let FollowupDecision::Plan(mut plan) = decision else {
        return decision;
    };
    if let Some(survivor) = &facts.survivor {
        plan.patient_key.clone_from(survivor);
    }
    if facts.deceased {
        return FollowupDecision::Excluded {
            reason: "deceased",
            rule: "R-EXC-1",
        };
    }
    FollowupDecision::Plan(plan)
}

/// R-FUP-4 step key.
pub fn step_key(stay_key: &str, plan: Plan, step: &str) -> String {
    format!("fu:{stay_key}:{}:{step}", plan.code())
}

/// `step_time` local on `date + days`; calls are then moved into a calling window (R-TKT-7).
fn due(
    date: Date,
    days: i64,
    s: &FollowupSettings,
    zone: &TimeZone,
    now: Timestamp,
) -> Option<Timestamp> {
    let day = date
        .checked_add(SignedDuration::from_hours(24 * days))
        .ok()?;
    let t = day.to_datetime(s.step_time).to_zoned(zone.clone()).ok()?;
    // A late discharge message: a step already past is due now (R-SRV-4's reading).
    Some(t.timestamp().max(now))
}

/// Decide the follow-up plan of an event (R-FUP-1, R-FUP-2).
pub fn decide(
    event: &PatientEvent,
    policy: &SurveyPolicy,
    ctx: &SurveyContext<'_>,
    settings: &FollowupSettings,
    windows: &CallingWindows,
) -> FollowupDecision {
    if !settings.enabled || event.kind != EventKind::Discharged || !event.production {
        return FollowupDecision::None;
    }
    let Some(visit) = &event.visit else {
        return FollowupDecision::None;
    };
    if visit.class != PatientClass::Inpatient || !settings.is_surgical(visit) {
        return FollowupDecision::None;
    }
    let Contact { pk, ik, mk, minor } = match screen(event, visit, policy, ctx, ListUse::Followup) {
        Ok(c) => c,
        Err((reason, rule)) => return FollowupDecision::Excluded { reason, rule },
    };
    let plan = Plan::for_risk(visit.risk.as_deref());
    let zone = ctx.zone;
    let anchor = visit.discharge.unwrap_or(event.event_time);
    let date = anchor.to_zoned(zone.clone()).date();
    let vk = ctx.pseudo.visit_key(&visit.facility, visit.number.expose());
    let mut steps = Vec::new();
    for def in plan.steps() {
        let Some(at) = due(date, def.days, settings, zone, ctx.now) else {
            continue;
        };
        let key = step_key(&vk, plan, def.id);
        let legacy_key = step_key(&vk, plan, def.legacy);
        let (due_at, action) = match def.kind {
            StepKind::Call(scene) => (windows.next_allowed(at, zone), StepAction::Call { scene }),
            StepKind::Online | StepKind::Reminder => {
                let template = if def.kind == StepKind::Online {
                    &settings.online_template
                } else {
                    &settings.reminder_template
                };
                let at = crate::survey::shift_out_of_quiet_hours(at, policy, zone);
                let job_id = crate::survey::job_id(ctx.tenant, &vk, &key);
                let legacy_job_id = crate::survey::job_id(ctx.tenant, &vk, &legacy_key);
                let payload = dispatch_payload(
                    event,
                    visit,
                    ctx,
                    &pk,
                    &job_id,
                    template,
                    policy.channel.clone(),
                    at,
                    anchor,
                );
                (
                    at,
                    StepAction::Cem {
                        job_id,
                        legacy_job_id,
                        template: template.clone(),
                        payload: Box::new(payload),
                    },
                )
            }
        };
        steps.push(PlannedStep {
            key,
            legacy_key,
            step: def.id,
            due_at,
            action,
        });
    }
    let callee_key = if minor { mk.clone() } else { pk.clone() };
    FollowupDecision::Plan(Box::new(FollowupPlan {
        plan,
        stay_key: vk,
        patient_key: pk,
        id_card_key: ik,
        mobile_key: mk,
        callee_key,
        steps,
    }))
}

#[cfg(test)]
mod tests {
    //! R-FUP-1, R-FUP-2 and the plan part of EX-05 / EX-07 on the shared samples.
    use super::*;
    use crate::anonymize::{CemFieldPolicy, Pseudonymizer};
    use crate::decode::DecodeOptions;
    use crate::lists::ExclusionLists;

    const A03: &str = include_str!("../../tests/fixtures/samples/hl7v2/adt_a03_discharge.hl7");
    const A03_DEAD: &str =
        include_str!("../../tests/fixtures/samples/hl7v2/adt_a03_discharge_deceased.hl7");
    const A04: &str =
        include_str!("../../tests/fixtures/samples/hl7v2/adt_a04_outpatient_registration.hl7");

    fn zone() -> TimeZone {
        crate::time::default_zone()
    }

    fn at(local: &str) -> Timestamp {
        local
            .parse::<jiff::civil::DateTime>()
            .unwrap()
            .to_zoned(zone())
            .unwrap()
            .timestamp()
    }

    fn local(t: Timestamp) -> String {
        t.to_zoned(zone()).strftime("%Y-%m-%d %H:%M").to_string()
    }

    fn event(s: &str) -> PatientEvent {
        let opts = DecodeOptions::at(at("2026-11-20 12:00"));
        crate::mapping::tests::decode_event(s.as_bytes(), &opts).unwrap()
    }

    fn decide_with(e: &PatientEvent, now: &str, lists: &ExclusionLists) -> FollowupDecision {
        let pseudo = Pseudonymizer::new(&[3u8; 32], "k1").unwrap();
        let z = zone();
        let fields = CemFieldPolicy::default();
        let ctx = SurveyContext {
            tenant: "t",
            zone: &z,
            pseudo: &pseudo,
            now: at(now),
            fields: &fields,
            lists,
        };
        decide(
            e,
            &SurveyPolicy::default(),
            &ctx,
            &FollowupSettings::default(),
            &CallingWindows::default(),
        )
    }

    fn plan(d: FollowupDecision) -> FollowupPlan {
        match d {
            FollowupDecision::Plan(p) => *p,
            other => panic!("expected a plan, got {other:?}"),
        }
    }

    fn schedule(p: &FollowupPlan) -> Vec<(&'static str, String, String)> {
        p.steps
            .iter()
            .map(|s| {
                let what = match &s.action {
                    StepAction::Call { scene } => format!("call {scene}"),
                    StepAction::Cem { template, .. } => format!("cem {template}"),
                };
                (s.step, local(s.due_at), what)
            })
            .collect()
    }

    #[test]
    fn ex_05_surgical_discharge_gets_postop_721_at_ten() {
        // A03 sample: ward CAT02, PV1-36 01, PV1-45 2026-11-20 15:55.
        let p = plan(decide_with(
            &event(A03),
            "2026-11-20 16:00",
            &Default::default(),
        ));
        assert_eq!(p.plan, Plan::Postop721);
        assert_eq!(
            schedule(&p),
            [
                (
                    "postop_d7",
                    "2026-11-27 10:00".into(),
                    "call postop_d7".into()
                ),
                (
                    "review_reminder",
                    "2026-12-17 10:00".into(),
                    "call review_reminder".into()
                ),
                (
                    "FU-ONLINE-60",
                    "2027-01-19 10:00".into(),
                    "cem FU-ONLINE-60".into()
                ),
            ]
        );
        assert!(p.steps[0].key.starts_with("fu:vk_"), "{}", p.steps[0].key);
        assert!(p.steps[0].key.ends_with(":POSTOP-721:postop_d7"));
        assert!(p.steps[0].legacy_key.ends_with(":POSTOP-721:d7"));
        assert_eq!(
            p.callee_key, p.patient_key,
            "an adult is called on their own number"
        );
        let StepAction::Cem { payload, .. } = &p.steps[2].action else {
            panic!("FU-ONLINE-60 is a CEM step")
        };
        assert_eq!(payload.template_id, "FU-ONLINE-60");
        assert_eq!(payload.due_at, "2027-01-19T10:00:00+08:00");
    }

    #[test]
    fn ex_07_replanned_stay_keeps_its_step_keys_and_moves_its_dates() {
        let first = plan(decide_with(
            &event(A03),
            "2026-11-20 16:00",
            &Default::default(),
        ));
        let again = A03.replace("20261120155500", "20261122090000");
        assert_ne!(again, A03, "the sample's PV1-45 was replaced");
        let second = plan(decide_with(
            &event(&again),
            "2026-11-22 09:05",
            &Default::default(),
        ));
        let keys = |p: &FollowupPlan| p.steps.iter().map(|s| s.key.clone()).collect::<Vec<_>>();
        assert_eq!(keys(&first), keys(&second), "R-FUP-4: same step keys");
        assert_eq!(
            schedule(&second)
                .into_iter()
                .map(|(_, d, _)| d)
                .collect::<Vec<_>>(),
            ["2026-11-29 10:00", "2026-12-19 10:00", "2027-01-21 10:00"]
        );
    }

    #[test]
    fn r_fup_1_risk_picks_the_plan() {
        assert_eq!(Plan::for_risk(Some("HIGH")), Plan::PostopHigh);
        assert_eq!(Plan::for_risk(Some("low")), Plan::CareQuarterly);
        assert_eq!(Plan::for_risk(None), Plan::Postop721);
        assert_eq!(Plan::for_risk(Some("MEDIUM")), Plan::Postop721);
        let mut e = event(A03);
        e.visit.as_mut().unwrap().risk = Some("HIGH".into());
        let p = plan(decide_with(&e, "2026-11-20 16:00", &Default::default()));
        assert_eq!(
            schedule(&p)
                .iter()
                .map(|(s, d, _)| format!("{s} {d}"))
                .collect::<Vec<_>>(),
            [
                "postop_d1 2026-11-21 10:00",
                "postop_d3 2026-11-23 10:00",
                "postop_d7 2026-11-27 10:00",
                "review_reminder 2026-12-17 10:00",
                "FU-ONLINE-60 2027-01-19 10:00"
            ]
        );
        e.visit.as_mut().unwrap().risk = Some("LOW".into());
        let p = plan(decide_with(&e, "2026-11-20 16:00", &Default::default()));
        assert_eq!(
            schedule(&p)
                .iter()
                .map(|(s, _, w)| format!("{s} {w}"))
                .collect::<Vec<_>>(),
            [
                "postop_d7 call postop_d7",
                "health_reminder_d90 cem FU-HEALTH-REMINDER",
                "health_reminder_d180 cem FU-HEALTH-REMINDER",
                "health_reminder_d270 cem FU-HEALTH-REMINDER",
                "health_reminder_d360 cem FU-HEALTH-REMINDER"
            ]
        );
    }

    #[test]
    fn r_fup_1_only_surgical_inpatient_discharges() {
        // A procedure in the message counts even on a non-surgical ward.
        let mut e = event(A03);
        let v = e.visit.as_mut().unwrap();
        v.dept_code = Some("MED01".into());
        assert_eq!(
            decide_with(&e, "2026-11-20 16:00", &Default::default()),
            FollowupDecision::None
        );
        e.visit.as_mut().unwrap().surgery = Some("小梁切除术".into());
        assert!(matches!(
            decide_with(&e, "2026-11-20 16:00", &Default::default()),
            FollowupDecision::Plan(_)
        ));
        // HL7: a PR1 segment on a medical ward is surgery too.
        let medical = A03.replace("CAT02", "MED01");
        assert_eq!(
            decide_with(&event(&medical), "2026-11-20 16:00", &Default::default()),
            FollowupDecision::None
        );
        let with_pr1 = format!(
            "{}\rPR1|1||66984^白内障超声乳化术|||20261116090000\r",
            medical.trim_end()
        );
        let e = event(&with_pr1);
        assert_eq!(e.visit.as_ref().unwrap().surgery.as_deref(), Some("66984"));
        assert!(matches!(
            decide_with(&e, "2026-11-20 16:00", &Default::default()),
            FollowupDecision::Plan(_)
        ));
        // A registration is no discharge.
        assert_eq!(
            decide_with(&event(A04), "2026-11-20 09:30", &Default::default()),
            FollowupDecision::None
        );
    }

    #[test]
    fn r_fup_2_exclusions_apply_with_their_own_opt_out_list() {
        // EX-08: deceased → no follow-up.
        assert_eq!(
            decide_with(&event(A03_DEAD), "2026-11-20 16:00", &Default::default()),
            FollowupDecision::Excluded {
                reason: "deceased",
                rule: "R-EXC-1"
            }
        );
        // EX-09: a transfer.
        let transfer = A03.replace("|01|", "|02|");
        if transfer != A03 {
            assert_eq!(
                decide_with(&event(&transfer), "2026-11-20 16:00", &Default::default()),
                FollowupDecision::Excluded {
                    reason: "disposition_excluded",
                    rule: "R-EXC-2"
                }
            );
        }
        let p = plan(decide_with(
            &event(A03),
            "2026-11-20 16:00",
            &Default::default(),
        ));
        // On the survey opt-out list only: still followed up.
        let mut lists = ExclusionLists::default();
        lists.opt_out.insert(p.patient_key.clone());
        assert!(matches!(
            decide_with(&event(A03), "2026-11-20 16:00", &lists),
            FollowupDecision::Plan(_)
        ));
        // On the follow-up opt-out list: excluded.
        let mut lists = ExclusionLists::default();
        lists.followup_opt_out.insert(p.patient_key.clone());
        assert_eq!(
            decide_with(&event(A03), "2026-11-20 16:00", &lists),
            FollowupDecision::Excluded {
                reason: "opted_out",
                rule: "R-EXC-3"
            }
        );
    }

    #[test]
    fn r_fup_2_a_minor_is_called_on_the_guardians_mobile() {
        let mut e = event(A03);
        e.patient.birth_date = Some(jiff::civil::date(2015, 1, 1));
        assert_eq!(
            decide_with(&e, "2026-11-20 16:00", &Default::default()),
            FollowupDecision::Excluded {
                reason: "minor_no_guardian",
                rule: "R-EXC-6"
            }
        );
        e.patient.guardian_mobile = Some(crate::event::Pii::new("13900001111".into()));
        let p = plan(decide_with(&e, "2026-11-20 16:00", &Default::default()));
        assert!(p.callee_key.starts_with("mk_"), "{}", p.callee_key);
        assert_eq!(p.callee_key, p.mobile_key);
    }

    #[test]
    fn a_late_discharge_message_makes_past_steps_due_now_inside_a_window() {
        // Processed on 11-28 at 21:00: the D+7 call is past, so it goes at the next window.
        let p = plan(decide_with(
            &event(A03),
            "2026-11-28 21:00",
            &Default::default(),
        ));
        assert_eq!(schedule(&p)[0].1, "2026-11-29 09:00");
        assert_eq!(schedule(&p)[1].1, "2026-12-17 10:00");
    }

    #[test]
    fn r_can_6_and_r_exc_1_resolve_a_plan_with_the_stored_facts() {
        use crate::survey::PatientFacts;
        let d = decide_with(&event(A03), "2026-11-20 12:00", &ExclusionLists::default());
        let own = plan(d.clone()).patient_key;
        // Nothing stored: the plan is unchanged.
        assert_eq!(resolve(d.clone(), &PatientFacts::default()), d);
        // R-CAN-6: merged into pk_survivor → planned under the survivor; the callee stays.
        let merged = PatientFacts {
            survivor: Some("pk_survivor".into()),
            ..Default::default()
        };
        let moved = plan(resolve(d.clone(), &merged));
        assert_eq!(moved.patient_key, "pk_survivor");
        assert_eq!(moved.callee_key, plan(d.clone()).callee_key);
        assert_ne!(own, "pk_survivor");
        // R-EXC-1: a patient flagged deceased earlier gets no plan, merged or not.
        let dead = PatientFacts {
            deceased: true,
            ..merged
        };
        assert_eq!(
            resolve(d.clone(), &dead),
            FollowupDecision::Excluded {
                reason: "deceased",
                rule: "R-EXC-1"
            }
        );
        // Tombstones and CEM opt-outs do not stop follow-ups (R-FUP-2 has its own list).
        let other = PatientFacts {
            opted_out: true,
            tombstone: Some(crate::survey::Tombstone {
                reason: "visit_cancelled".into(),
                until_ms: i64::MAX,
            }),
            ..Default::default()
        };
        assert_eq!(resolve(d.clone(), &other), d);
        // Other decisions pass through.
        assert_eq!(
            resolve(FollowupDecision::None, &dead),
            FollowupDecision::None
        );
    }
}
