//! The codes mapping tables with `unmatched: keep` did not know (issue 18 §4), tallied in
//! memory for the ops page: per (mapping, table, field, code) how often and when last. Fed by
//! ingest after a batch committed (so a batch written again after a refused commit counts
//! once), for new messages only — the same ones `cem_bridge_mapping_unmatched_codes_total`
//! counts; read by `/api/summary`.
//!
//! The code is kept only when the field is code-like ([`UnmatchedCode::code_shown`]); any
//! other field's value is tallied as [`WITHHELD`], so no personal value is ever held here.
//! At most [`CAPACITY`] distinct keys are kept; a new key beyond that evicts the one seen
//! least recently. Counts start at zero with the process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use cem_pipeline::event::UnmatchedCode;

/// How many distinct (mapping, table, field, code) keys are kept.
pub const CAPACITY: usize = 200;
/// What stands for a code the tally does not show (the field may hold personal values).
pub const WITHHELD: &str = "(value withheld)";

/// What is tallied for one code.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CodeKey {
    pub mapping: String,
    pub table: String,
    /// The canonical field, such as `visit.disposition`.
    pub field: String,
    /// The code, or [`WITHHELD`].
    pub code: String,
}

impl CodeKey {
    pub fn of(u: &UnmatchedCode) -> Self {
        Self {
            mapping: u.mapping.clone(),
            table: u.table.clone(),
            field: u.field.name().to_string(),
            code: u.code_shown().unwrap_or(WITHHELD).to_string(),
        }
    }
}

/// One tallied code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeCount {
    pub key: CodeKey,
    pub count: u64,
    /// Epoch ms on the bridge clock.
    pub last_seen_ms: i64,
}

#[derive(Debug, Default)]
struct Inner {
    /// Per key: count, last seen (ms), and the order of the last sighting (for eviction, so a
    /// clock set backwards in a test does not change which key is the least recent).
    codes: HashMap<CodeKey, (u64, i64, u64)>,
    seq: u64,
}

/// The tally, shared by clones (ingest writes it, the ops server reads it).
#[derive(Debug, Clone, Default)]
pub struct UnmatchedCodes {
    inner: Arc<Mutex<Inner>>,
}

impl UnmatchedCodes {
    /// Count each of `codes`, seen at `at_ms`.
    pub fn note<'a>(&self, codes: impl IntoIterator<Item = &'a UnmatchedCode>, at_ms: i64) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        for u in codes {
            inner.seq += 1;
            let seq = inner.seq;
            let key = CodeKey::of(u);
            if let Some(e) = inner.codes.get_mut(&key) {
                e.0 += 1;
                e.1 = e.1.max(at_ms);
                e.2 = seq;
                continue;
            }
            if inner.codes.len() >= CAPACITY {
                let oldest = inner
                    .codes
                    .iter()
                    .min_by_key(|(_, e)| e.2)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    inner.codes.remove(&k);
                }
            }
            inner.codes.insert(key, (1, at_ms, seq));
        }
    }

    /// The `n` most frequent codes, most frequent first (then the most recently seen, then by
    /// key, so the order is stable).
    pub fn top(&self, n: usize) -> Vec<CodeCount> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<CodeCount> = inner
            .codes
            .iter()
            .map(|(k, &(count, last_seen_ms, _))| CodeCount {
                key: k.clone(),
                count,
                last_seen_ms,
            })
            .collect();
        all.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then(b.last_seen_ms.cmp(&a.last_seen_ms))
                .then_with(|| a.key.cmp(&b.key))
        });
        all.truncate(n);
        all
    }

    /// How many distinct keys are kept.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .codes
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cem_pipeline::mapping::target::Target;

    fn code(table: &str, field: Target, code: &str) -> UnmatchedCode {
        UnmatchedCode {
            mapping: "json-his-events".into(),
            table: table.into(),
            field,
            code: code.into(),
        }
    }

    #[test]
    fn counts_per_code_most_frequent_first_and_clones_share_the_tally() {
        let t = UnmatchedCodes::default();
        let four = code("disposition", Target::VisitDisposition, "4");
        let nine = code("disposition", Target::VisitDisposition, "9");
        t.clone().note([&four], 1_000);
        t.note([&nine, &four], 2_000);
        let top = t.top(10);
        assert_eq!(top.len(), 2);
        assert_eq!(
            (top[0].key.code.as_str(), top[0].count, top[0].last_seen_ms),
            ("4", 2, 2_000)
        );
        assert_eq!(top[0].key.field, "visit.disposition");
        assert_eq!((top[1].key.code.as_str(), top[1].count), ("9", 1));
        assert_eq!(t.top(1).len(), 1);
    }

    /// R-ANO-8: a personal field's value never enters the tally; such codes are one key.
    #[test]
    fn a_personal_fields_value_is_withheld() {
        let t = UnmatchedCodes::default();
        let a = code("names", Target::PatientName, "王秀英");
        let b = code("names", Target::PatientName, "张三明");
        let long = code("dept", Target::VisitDeptCode, "a code with spaces");
        t.note([&a, &b, &long], 5);
        let top = t.top(10);
        assert_eq!(top.len(), 2, "{top:?}");
        assert_eq!(
            (top[0].key.code.as_str(), top[0].count),
            (WITHHELD, 2),
            "{top:?}"
        );
        assert_eq!(top[1].key.code, WITHHELD, "not shaped like a code");
        assert!(!format!("{top:?}").contains("秀英"));
    }

    #[test]
    fn at_most_capacity_keys_the_least_recent_evicted() {
        let t = UnmatchedCodes::default();
        let codes: Vec<UnmatchedCode> = (0..=CAPACITY)
            .map(|i| code("dept", Target::VisitDeptCode, &format!("D{i}")))
            .collect();
        // D0 first, seen again last (with an earlier clock): D1 is the least recent.
        t.note(&codes[..CAPACITY], 100);
        t.note([&codes[0]], 50);
        t.note([&codes[CAPACITY]], 200);
        assert_eq!(t.len(), CAPACITY);
        let kept: Vec<String> = t.top(CAPACITY).into_iter().map(|c| c.key.code).collect();
        assert!(kept.contains(&"D0".to_string()), "seen recently");
        assert!(kept.contains(&format!("D{CAPACITY}")), "the new key");
        assert!(
            !kept.contains(&"D1".to_string()),
            "the least recent evicted"
        );
        assert_eq!(t.top(1)[0].key.code, "D0", "counted twice");
        assert_eq!(t.top(1)[0].last_seen_ms, 100, "last seen never goes back");
    }
}
