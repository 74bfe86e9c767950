//! Opt-out and staff lists (R-EXC-3, R-EXC-4; the follow-up opt-out of R-FUP-2), held as
//! pseudonyms only.
//!
//! A list file is UTF-8 text, one entry per line: `kind,value[,authority]`, where kind is
//! `patient_id` (value = PID-3.1, authority = PID-3.4, required), `id_card` (a valid
//! 身份证号), `mobile` (normalised like PID-13, R-ID-2) or `pseudonym` (an already keyed
//! `pk_…`/`ik_…`/`mk_…`, e.g. from another system using the same key). Blank lines, lines
//! starting with `#` and a `kind,value,authority` header are skipped. Clear values are turned
//! into pseudonyms as the file is read and never kept.

use std::collections::HashSet;

use jiff::civil::Date;

use crate::anonymize::Pseudonymizer;
use crate::event::{PatientId, Pii};
use crate::identifiers::{normalize_mobile, valid_id_card};

/// Which list a file feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    /// R-EXC-3: checked on `pk` and `mk`.
    OptOut,
    /// R-EXC-4: checked on `pk`, `ik` and `mk`.
    Staff,
    /// R-FUP-2: follow-up calls and reminders only; checked like `OptOut`.
    FollowupOptOut,
}

impl ListKind {
    pub fn code(self) -> &'static str {
        match self {
            Self::OptOut => "opt_out",
            Self::Staff => "staff",
            Self::FollowupOptOut => "followup_opt_out",
        }
    }
}

/// The pseudonyms on each list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExclusionLists {
    pub opt_out: HashSet<String>,
    pub staff: HashSet<String>,
    pub followup_opt_out: HashSet<String>,
}

impl ExclusionLists {
    /// R-EXC-3 before R-EXC-4 (domain rules §2.2 order): the reason and rule of the first list
    /// a survey's keys are on. `mk` is the mobile the survey would go to.
    pub fn check(
        &self,
        pk: &str,
        ik: Option<&str>,
        mk: Option<&str>,
    ) -> Option<(&'static str, &'static str)> {
        self.check_with(&self.opt_out, pk, ik, mk)
    }

    /// The same for a follow-up (R-FUP-2): its own opt-out list, then the staff list.
    pub fn check_followup(
        &self,
        pk: &str,
        ik: Option<&str>,
        mk: Option<&str>,
    ) -> Option<(&'static str, &'static str)> {
        self.check_with(&self.followup_opt_out, pk, ik, mk)
    }

    fn check_with(
        &self,
        opt_out: &HashSet<String>,
        pk: &str,
        ik: Option<&str>,
        mk: Option<&str>,
    ) -> Option<(&'static str, &'static str)> {
        let on = |set: &HashSet<String>, k: Option<&str>| k.is_some_and(|k| set.contains(k));
        if on(opt_out, Some(pk)) || on(opt_out, mk) {
            return Some(("opted_out", "R-EXC-3"));
        }
        if on(&self.staff, Some(pk)) || on(&self.staff, ik) || on(&self.staff, mk) {
            return Some(("staff", "R-EXC-4"));
        }
        None
    }

    pub fn set_mut(&mut self, kind: ListKind) -> &mut HashSet<String> {
        match kind {
            ListKind::OptOut => &mut self.opt_out,
            ListKind::Staff => &mut self.staff,
            ListKind::FollowupOptOut => &mut self.followup_opt_out,
        }
    }
}

/// One problem in a list file: 1-based line and what is wrong (never the value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListProblem {
    pub line: usize,
    pub message: String,
}

/// The pseudonyms of a list file's entries, or every problem in it.
pub fn parse_list(
    text: &str,
    pseudo: &Pseudonymizer,
    today: Date,
) -> Result<Vec<String>, Vec<ListProblem>> {
    let mut keys = Vec::new();
    let mut problems = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim().trim_start_matches('\u{feff}');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split(',').map(str::trim).collect();
        let kind = cols.first().copied().unwrap_or("");
        let value = cols.get(1).copied().unwrap_or("");
        let mut bad = |message: String| {
            problems.push(ListProblem {
                line: i + 1,
                message,
            })
        };
        if kind == "kind" && i == 0 {
            continue;
        }
        if value.is_empty() {
            bad(format!(
                "`{kind}` has no value: write `kind,value[,authority]`"
            ));
            continue;
        }
        match kind {
            "patient_id" => match cols.get(2).filter(|a| !a.is_empty()) {
                Some(authority) => keys.push(pseudo.patient_key(&PatientId {
                    authority: authority.to_string(),
                    id: Pii::new(value.to_string()),
                })),
                None => bad(
                    "patient_id needs its assigning authority (PID-3.4) as the third column"
                        .into(),
                ),
            },
            "id_card" => match valid_id_card(value, today) {
                Some(v) => keys.push(pseudo.id_card_key(&v)),
                None => bad("id_card is not a valid 身份证号 (R-ID-1: 18 characters, check digit, birth date)".into()),
            },
            "mobile" => match normalize_mobile(value) {
                Some(m) => keys.push(pseudo.mobile_key(&m)),
                None => bad("mobile is not a mainland mobile number (R-ID-2)".into()),
            },
            "pseudonym" => {
                let v = value.to_ascii_lowercase();
                let ok = ["pk_", "ik_", "mk_"].iter().any(|p| {
                    v.strip_prefix(p)
                        .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                });
                if ok {
                    keys.push(v);
                } else {
                    bad("pseudonym must be pk_, ik_ or mk_ followed by 32 hex digits".into());
                }
            }
            other => bad(format!(
                "unknown kind {other:?}: use patient_id, id_card, mobile or pseudonym"
            )),
        }
    }
    if problems.is_empty() {
        Ok(keys)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo() -> Pseudonymizer {
        Pseudonymizer::new(&[3u8; 32], "k1").unwrap()
    }

    fn today() -> Date {
        jiff::civil::date(2026, 11, 20)
    }

    #[test]
    fn list_files_become_pseudonyms_and_problems_name_the_line_not_the_value() {
        let p = pseudo();
        let text = "kind,value,authority\n# HR export 2026-11\npatient_id,P00012345,HXEYE\n\nid_card,110101199003071233\nmobile,+86 138-1234-5678\npseudonym,PK_00000000000000000000000000000000\n";
        let keys = parse_list(text, &p, today()).unwrap();
        let pid = PatientId {
            authority: "HXEYE".into(),
            id: Pii::new("P00012345".into()),
        };
        assert_eq!(
            keys,
            [
                p.patient_key(&pid),
                p.id_card_key("110101199003071233"),
                p.mobile_key("13812345678"),
                "pk_00000000000000000000000000000000".to_string(),
            ]
        );
        let bad = "patient_id,P1\nid_card,110101199003071234\nmobile,02161234567\nemail,a@b\npseudonym,pk_12\nmobile\n";
        let problems = parse_list(bad, &p, today()).unwrap_err();
        assert_eq!(
            problems.iter().map(|p| p.line).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5, 6]
        );
        for pr in &problems {
            for v in ["P1", "110101199003071234", "02161234567", "a@b"] {
                assert!(!pr.message.contains(v), "no value in {pr:?}");
            }
        }
    }

    #[test]
    fn r_exc_3_opt_out_on_pk_or_mk_before_r_exc_4_staff_on_pk_ik_or_mk() {
        let mut l = ExclusionLists::default();
        assert_eq!(l.check("pk_a", Some("ik_a"), Some("mk_a")), None);
        l.staff.insert("ik_a".into());
        assert_eq!(
            l.check("pk_a", Some("ik_a"), Some("mk_a")),
            Some(("staff", "R-EXC-4"))
        );
        l.opt_out.insert("mk_a".into());
        assert_eq!(
            l.check("pk_a", Some("ik_a"), Some("mk_a")),
            Some(("opted_out", "R-EXC-3")),
            "opted_out comes first"
        );
        l.opt_out.insert("ik_b".into());
        assert_eq!(
            l.check("pk_b", Some("ik_b"), None),
            None,
            "the opt-out list is checked on pk and mk only"
        );
    }
}
