//! What a reload swaps while the bridge runs: each source's compiled mapping sets and the
//! survey policy (`[surveys]`). Every delivery takes the set current when it is decoded, so no
//! message is half-mapped across a swap; a refused reload keeps the last good one and says so.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use cem_pipeline::mapping::MappingSet;
use cem_pipeline::policy::SurveyPolicy;
use jiff::tz::TimeZone;
use metrics::{counter, gauge};
use tracing::{error, info};

use crate::config::source::SourceConfig;

/// The mapping sets in use, by source name; swapped as a whole.
#[derive(Debug, Default)]
pub struct Mappings {
    current: RwLock<Arc<HashMap<String, Arc<MappingSet>>>>,
    /// Successful reloads since start (tests and the ops page read it).
    generation: std::sync::atomic::AtomicU64,
    last_error: RwLock<Option<String>>,
}

impl Mappings {
    pub fn new(initial: HashMap<String, Arc<MappingSet>>) -> Self {
        Self {
            current: RwLock::new(Arc::new(initial)),
            ..Default::default()
        }
    }

    /// The set a source uses now.
    pub fn for_source(&self, source: &str) -> Option<Arc<MappingSet>> {
        let guard = self.current.read().unwrap_or_else(|p| p.into_inner());
        guard.get(source).cloned()
    }

    /// Number of successful reloads since start.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The problems of the last failed reload, until one succeeds.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Compile every source's mappings and swap them in if all compile.
    pub fn reload(&self, sources: &[SourceConfig], zone: &TimeZone, why: &str) -> bool {
        let mut next = HashMap::new();
        let mut problems = Vec::new();
        for s in sources {
            match crate::config::mappings::load(&s.mappings, zone) {
                Ok(set) => {
                    next.insert(s.name.clone(), Arc::new(set));
                }
                Err(errs) => {
                    problems.extend(errs.into_iter().map(|e| format!("[source {}] {e}", s.name)))
                }
            }
        }
        if problems.is_empty() {
            *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
            *self.last_error.write().unwrap_or_else(|p| p.into_inner()) = None;
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            counter!("cem_bridge_mapping_reloads_total", "result" => "ok").increment(1);
            gauge!("cem_bridge_mapping_reload_failed").set(0.0);
            info!(trigger = why, "mappings reloaded");
            true
        } else {
            let text = problems.join("\n");
            error!(
                trigger = why,
                problems = problems.len(),
                "mapping reload failed; the last good mappings stay in use:\n{text}"
            );
            *self.last_error.write().unwrap_or_else(|p| p.into_inner()) = Some(text);
            counter!("cem_bridge_mapping_reloads_total", "result" => "failed").increment(1);
            gauge!("cem_bridge_mapping_reload_failed").set(1.0);
            false
        }
    }
}

/// The survey policy in use (`[surveys]`), swapped whole by a reload of the config file.
#[derive(Debug)]
pub struct Policy {
    current: RwLock<Arc<SurveyPolicy>>,
    last_error: RwLock<Option<String>>,
}

impl Policy {
    pub fn new(initial: SurveyPolicy) -> Self {
        Self {
            current: RwLock::new(Arc::new(initial)),
            last_error: RwLock::new(None),
        }
    }

    /// The policy now; a decision holds it for its whole run.
    pub fn current(&self) -> Arc<SurveyPolicy> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Why the last config reload was refused, until one succeeds.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-read the config at `path`: if it parses and checks, swap in its `[surveys]` (when it
    /// changed) and return the other top-level sections that differ from `started` (they need a
    /// restart); else keep the policy and return the problem.
    pub fn reload(
        &self,
        path: &std::path::Path,
        started: &toml::Value,
        why: &str,
    ) -> Result<Vec<String>, String> {
        let result = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))
            .and_then(|text| {
                let cfg = crate::config::Config::parse(&text, path).map_err(|e| e.to_string())?;
                let now: toml::Value = toml::from_str(&text).map_err(|e| e.to_string())?;
                Ok((cfg, now))
            });
        match result {
            Ok((cfg, now)) => {
                *self.last_error.write().unwrap_or_else(|p| p.into_inner()) = None;
                counter!("cem_bridge_config_reloads_total", "result" => "ok").increment(1);
                gauge!("cem_bridge_config_reload_failed").set(0.0);
                if *self.current() != cfg.surveys {
                    *self.current.write().unwrap_or_else(|p| p.into_inner()) =
                        Arc::new(cfg.surveys);
                    info!(trigger = why, "survey policy reloaded");
                }
                Ok(changed_sections(started, &now))
            }
            Err(problem) => {
                error!(
                    trigger = why,
                    "config reload failed; the last good survey policy stays in use: {problem}"
                );
                *self.last_error.write().unwrap_or_else(|p| p.into_inner()) = Some(problem.clone());
                counter!("cem_bridge_config_reloads_total", "result" => "failed").increment(1);
                gauge!("cem_bridge_config_reload_failed").set(1.0);
                Err(problem)
            }
        }
    }
}

/// Top-level keys other than `surveys` whose values differ.
fn changed_sections(a: &toml::Value, b: &toml::Value) -> Vec<String> {
    let empty = toml::map::Map::new();
    let a = a.as_table().unwrap_or(&empty);
    let b = b.as_table().unwrap_or(&empty);
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| k.as_str() != "surveys" && a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}
