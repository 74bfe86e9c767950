//! The opt-out and staff list files of `[lists]` (R-EXC-3, R-EXC-4): read, turned into
//! pseudonyms (the clear values are dropped as each line is read), and swapped in whole — at
//! start, on SIGHUP and when a file changes (with the mappings, `reload.rs`). A file with a
//! problem keeps the last good lists in use; the problems name file and line, never the value.

use std::sync::{Arc, RwLock};

use cem_pipeline::anonymize::Pseudonymizer;
use cem_pipeline::lists::{ExclusionLists, parse_list};
use jiff::tz::TimeZone;
use metrics::{counter, gauge};
use tracing::{error, info};

use crate::config::lists::ListsConfig;

/// Read every list file; all problems of all files at once, as `file:line: message`.
pub fn load(
    cfg: &ListsConfig,
    pseudo: &Pseudonymizer,
    zone: &TimeZone,
) -> Result<ExclusionLists, Vec<String>> {
    let today = jiff::Timestamp::now().to_zoned(zone.clone()).date();
    let mut lists = ExclusionLists::default();
    let mut problems = Vec::new();
    for (kind, path) in cfg.files() {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!(
                    "{}: cannot read the {} list: {e}",
                    path.display(),
                    kind.code()
                ));
                continue;
            }
        };
        match parse_list(&text, pseudo, today) {
            Ok(keys) => lists.set_mut(kind).extend(keys),
            Err(ps) => problems.extend(
                ps.into_iter()
                    .map(|p| format!("{}:{}: {}", path.display(), p.line, p.message)),
            ),
        }
    }
    if problems.is_empty() {
        Ok(lists)
    } else {
        Err(problems)
    }
}

/// The lists in use, swapped whole.
#[derive(Debug, Default)]
pub struct Lists {
    current: RwLock<Arc<ExclusionLists>>,
}

impl Lists {
    pub fn new(initial: ExclusionLists) -> Self {
        publish_sizes(&initial);
        Self {
            current: RwLock::new(Arc::new(initial)),
        }
    }

    pub fn current(&self) -> Arc<ExclusionLists> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-read the files; swap only if all read cleanly.
    pub fn reload(
        &self,
        cfg: &ListsConfig,
        pseudo: &Pseudonymizer,
        zone: &TimeZone,
        why: &str,
    ) -> bool {
        match load(cfg, pseudo, zone) {
            Ok(next) => {
                publish_sizes(&next);
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
                counter!("cem_bridge_list_reloads_total", "result" => "ok").increment(1);
                info!(trigger = why, "opt-out and staff lists reloaded");
                true
            }
            Err(problems) => {
                counter!("cem_bridge_list_reloads_total", "result" => "failed").increment(1);
                error!(
                    trigger = why,
                    problems = problems.len(),
                    "list reload failed; the last good lists stay in use:\n{}",
                    problems.join("\n")
                );
                false
            }
        }
    }
}

fn publish_sizes(l: &ExclusionLists) {
    gauge!("cem_bridge_list_entries", "list" => "opt_out").set(l.opt_out.len() as f64);
    gauge!("cem_bridge_list_entries", "list" => "staff").set(l.staff.len() as f64);
    gauge!("cem_bridge_list_entries", "list" => "followup_opt_out")
        .set(l.followup_opt_out.len() as f64);
}
