//! Survey policy: which template an event gets (R-SRV-1), when it is due (R-SRV-2..4), and the
//! exclusion settings (R-EXC-1..8). Plain data read from `[surveys]` in `bridge.toml`, checked
//! by [`SurveyPolicy::check`] before anything runs.

use jiff::civil::Time;
use serde::Deserialize;

/// The whole survey policy.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SurveyPolicy {
    /// Default channel when a rule names none (R-SRV-2).
    #[serde(default = "default_channel")]
    pub channel: String,
    /// Do-not-disturb window per patient, mobile and ID card (R-DND-1).
    #[serde(default = "default_dnd_days")]
    pub dnd_days: u32,
    #[serde(default)]
    pub quiet_hours: QuietHours,
    /// Outpatient due time = visit start + this (R-SRV-2).
    #[serde(default = "default_op_delay")]
    pub outpatient_delay_minutes: i64,
    /// Inpatient due time = this local time on the day after discharge (R-SRV-2).
    #[serde(default = "default_ip_time")]
    #[schemars(with = "String")]
    pub inpatient_send_time: Time,
    /// Processed later than visit start + this → `stale_event` (R-SRV-4).
    #[serde(default = "default_stale_op")]
    pub stale_outpatient_hours: i64,
    /// Processed later than discharge + this → `stale_event` (R-SRV-4).
    #[serde(default = "default_stale_ip")]
    pub stale_inpatient_days: i64,
    /// Below this age at the event date a survey goes to a guardian or not at all (R-EXC-6).
    #[serde(default = "default_adult")]
    pub adult_age: i16,
    /// PV1-16 values meaning VIP; empty = any non-empty value (R-EXC-5, R-GEN-3).
    #[serde(default)]
    pub vip_values: Vec<String>,
    /// PD1-11 publicity codes meaning "no publicity" (R-EXC-5).
    #[serde(default)]
    pub no_publicity_codes: Vec<String>,
    /// Template rules; the defaults of R-SRV-1 when none are given.
    #[serde(default = "default_rules", rename = "rule")]
    pub rules: Vec<TemplateRule>,
}

/// R-SRV-3: a due time inside [start, end) moves to `resume` (same morning before `end`, else
/// the next morning).
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_quiet_start")]
    #[schemars(with = "String")]
    pub start: Time,
    #[serde(default = "default_quiet_end")]
    #[schemars(with = "String")]
    pub end: Time,
    #[serde(default = "default_quiet_resume")]
    #[schemars(with = "String")]
    pub resume: Time,
}

impl Default for QuietHours {
    fn default() -> Self {
        Self {
            enabled: true,
            start: default_quiet_start(),
            end: default_quiet_end(),
            resume: default_quiet_resume(),
        }
    }
}

/// Events a survey rule can match.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleEvent {
    Registered,
    Discharged,
}

/// One row of the R-SRV-1 table.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateRule {
    pub event: RuleEvent,
    /// PV1-2 patient class code: `O`, `I`, `E`…
    pub class: String,
    /// `*`, a prefix such as `REF*`, or an exact department code.
    #[serde(default = "star")]
    pub dept: String,
    pub template: String,
    pub channel: Option<String>,
}

/// How specific a department pattern is (R-SRV-1: code > prefix > `*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Specificity {
    Any,
    Prefix,
    Exact,
}

impl TemplateRule {
    pub fn specificity(&self) -> Specificity {
        if self.dept == "*" {
            Specificity::Any
        } else if self.dept.ends_with('*') {
            Specificity::Prefix
        } else {
            Specificity::Exact
        }
    }

    /// Does this rule apply to a department code?
    pub fn matches_dept(&self, dept: Option<&str>) -> bool {
        match self.specificity() {
            Specificity::Any => true,
            Specificity::Prefix => {
                dept.is_some_and(|d| d.starts_with(&self.dept[..self.dept.len() - 1]))
            }
            Specificity::Exact => dept == Some(self.dept.as_str()),
        }
    }
}

fn yes() -> bool {
    true
}
fn star() -> String {
    "*".into()
}
fn default_channel() -> String {
    "sms".into()
}
fn default_dnd_days() -> u32 {
    30
}
fn default_op_delay() -> i64 {
    120
}
fn default_ip_time() -> Time {
    Time::constant(10, 0, 0, 0)
}
fn default_stale_op() -> i64 {
    72
}
fn default_stale_ip() -> i64 {
    7
}
fn default_adult() -> i16 {
    18
}
fn default_quiet_start() -> Time {
    Time::constant(21, 0, 0, 0)
}
fn default_quiet_end() -> Time {
    Time::constant(8, 0, 0, 0)
}
fn default_quiet_resume() -> Time {
    Time::constant(9, 0, 0, 0)
}

fn rule(event: RuleEvent, class: &str, dept: &str, template: &str) -> TemplateRule {
    TemplateRule {
        event,
        class: class.into(),
        dept: dept.into(),
        template: template.into(),
        channel: None,
    }
}

/// The R-SRV-1 defaults.
pub fn default_rules() -> Vec<TemplateRule> {
    use RuleEvent::{Discharged, Registered};
    let mut r = vec![
        rule(Registered, "O", "*", "OP-SAT-01"),
        rule(Registered, "O", "REF*", "OP-REF-01"),
        rule(Registered, "O", "OPT*", "OP-REF-01"),
        rule(Registered, "O", "PED*", "OP-PED-01"),
        rule(Discharged, "I", "*", "IP-SAT-01"),
    ];
    for ward in ["CAT*", "GLA*", "RET*", "REF*"] {
        r.push(rule(Discharged, "I", ward, "IP-SURG-01"));
    }
    r
}

impl Default for SurveyPolicy {
    fn default() -> Self {
        Self {
            channel: default_channel(),
            dnd_days: default_dnd_days(),
            quiet_hours: QuietHours::default(),
            outpatient_delay_minutes: default_op_delay(),
            inpatient_send_time: default_ip_time(),
            stale_outpatient_hours: default_stale_op(),
            stale_inpatient_days: default_stale_ip(),
            adult_age: default_adult(),
            vip_values: Vec::new(),
            no_publicity_codes: Vec::new(),
            rules: default_rules(),
        }
    }
}

impl SurveyPolicy {
    /// Problems a user must fix, each naming the setting (empty = fine).
    pub fn check(&self) -> Vec<String> {
        let mut errors = Vec::new();
        for (i, a) in self.rules.iter().enumerate() {
            if a.template.trim().is_empty() {
                errors.push(format!(
                    "surveys.rule[{i}].template: must name a CEM template id"
                ));
            }
            if a.dept.is_empty() || a.dept[..a.dept.len() - 1].contains('*') {
                errors.push(format!(
                    "surveys.rule[{i}].dept: {:?} must be `*`, a prefix ending in `*` (REF*), or a code",
                    a.dept
                ));
            }
            for (j, b) in self.rules.iter().enumerate().skip(i + 1) {
                if a.event == b.event && a.class == b.class && a.dept == b.dept {
                    errors.push(format!(
                        "surveys.rule[{i}] and surveys.rule[{j}]: both match event {:?}, class {}, dept {} with equal specificity; keep one (R-SRV-1)",
                        a.event, a.class, a.dept
                    ));
                }
            }
        }
        let q = &self.quiet_hours;
        if q.enabled && q.start == q.end {
            errors.push("surveys.quiet_hours: start and end are equal".into());
        }
        if q.enabled && in_window(q.resume, q.start, q.end) {
            errors.push("surveys.quiet_hours.resume: lies inside the quiet hours".into());
        }
        if self.dnd_days == 0 {
            errors.push("surveys.dnd_days: must be ≥ 1 (use a large value, not 0)".into());
        }
        errors
    }

    /// The most specific rule for (event, class, dept) (R-SRV-1).
    pub fn rule_for(
        &self,
        event: RuleEvent,
        class: &str,
        dept: Option<&str>,
    ) -> Option<&TemplateRule> {
        self.rules
            .iter()
            .filter(|r| r.event == event && r.class == class && r.matches_dept(dept))
            .max_by_key(|r| (r.specificity(), r.dept.len()))
    }
}

/// Is `t` inside [start, end), a window that may wrap midnight?
pub fn in_window(t: Time, start: Time, end: Time) -> bool {
    if start <= end {
        t >= start && t < end
    } else {
        t >= start || t < end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_srv_1_most_specific_rule_wins() {
        let p = SurveyPolicy::default();
        let t = |e, c, d| p.rule_for(e, c, d).map(|r| r.template.as_str());
        assert_eq!(
            t(RuleEvent::Registered, "O", Some("OPH01")),
            Some("OP-SAT-01")
        );
        assert_eq!(
            t(RuleEvent::Registered, "O", Some("REF02")),
            Some("OP-REF-01")
        );
        assert_eq!(
            t(RuleEvent::Registered, "O", Some("PED01")),
            Some("OP-PED-01")
        );
        assert_eq!(
            t(RuleEvent::Discharged, "I", Some("CAT02")),
            Some("IP-SURG-01")
        );
        assert_eq!(
            t(RuleEvent::Discharged, "I", Some("MED01")),
            Some("IP-SAT-01")
        );
        assert_eq!(
            t(RuleEvent::Registered, "E", Some("OPH01")),
            None,
            "no rule for E"
        );
        let mut p2 = p.clone();
        p2.rules
            .push(rule(RuleEvent::Registered, "O", "PED01", "OP-PED-SPECIAL"));
        assert_eq!(
            p2.rule_for(RuleEvent::Registered, "O", Some("PED01"))
                .map(|r| r.template.as_str()),
            Some("OP-PED-SPECIAL"),
            "exact code beats prefix"
        );
    }

    #[test]
    fn r_srv_1_ties_and_bad_settings_are_check_errors() {
        let mut p = SurveyPolicy::default();
        assert!(p.check().is_empty(), "{:?}", p.check());
        p.rules
            .push(rule(RuleEvent::Registered, "O", "REF*", "OTHER"));
        p.rules.push(rule(RuleEvent::Registered, "O", "A*B", "X"));
        p.quiet_hours.resume = Time::constant(22, 0, 0, 0);
        let e = p.check();
        assert!(e.iter().any(|m| m.contains("equal specificity")), "{e:?}");
        assert!(e.iter().any(|m| m.contains("rule[10].dept")), "{e:?}");
        assert!(e.iter().any(|m| m.contains("resume")), "{e:?}");
    }

    #[test]
    fn windows_wrap_midnight() {
        let (s, e) = (Time::constant(21, 0, 0, 0), Time::constant(8, 0, 0, 0));
        assert!(in_window(Time::constant(23, 0, 0, 0), s, e));
        assert!(in_window(Time::constant(7, 59, 0, 0), s, e));
        assert!(!in_window(Time::constant(8, 0, 0, 0), s, e));
        assert!(!in_window(Time::constant(20, 59, 0, 0), s, e));
    }
}
