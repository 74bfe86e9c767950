//! Safe hot reload of mapping files, the opt-out / staff lists (`lists.rs`) and the survey
//! policy (`[surveys]` of the config file): on SIGHUP and when one of their files changes on
//! disk.
//!
//! A reload compiles every source's mappings; only if all compile are they swapped in, in one
//! step, for all sources. On any error the last good mappings stay in use, the problems are
//! logged with file:line:column, `cem_bridge_mapping_reloads_total{result="failed"}` counts it
//! and `cem_bridge_mapping_reload_failed` is 1 until a reload succeeds. Each delivery takes the
//! mapping set current when it is decoded, so no message is half-mapped across a swap.
//!
//! The config file is re-read and checked whole; only `[surveys]` is swapped live (the same
//! all-or-nothing rule, `cem_bridge_config_reloads_total{result}` and
//! `cem_bridge_config_reload_failed`); a change to any other section is logged as needing a
//! restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use cem_pipeline::mapping::MappingSet;
use cem_pipeline::policy::SurveyPolicy;
use jiff::tz::TimeZone;
use metrics::{counter, gauge};
use tracing::{error, info, warn};

use crate::config::SourceConfig;
use crate::shutdown::Shutdown;

/// How often mapping files are checked for changes.
pub const POLL: Duration = Duration::from_secs(2);

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
            match crate::mappings::load(&s.mappings, zone) {
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

/// The config file a running bridge was started from.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    /// Its contents at start (to tell which sections changed).
    pub started: toml::Value,
}

/// What is reloaded, and what from.
pub struct Reloadable {
    pub mappings: Arc<Mappings>,
    pub sources: Vec<SourceConfig>,
    pub zone: TimeZone,
    pub lists: Arc<crate::lists::Lists>,
    pub lists_cfg: crate::lists::ListsConfig,
    pub pseudo: cem_pipeline::anonymize::Pseudonymizer,
    pub policy: Arc<Policy>,
    /// `None` when the bridge was started from a config not read from a file (tests).
    pub config: Option<ConfigSource>,
}

impl Reloadable {
    /// Mappings, lists and the survey policy, each all-or-nothing.
    fn reload(&self, why: &str) {
        self.mappings.reload(&self.sources, &self.zone, why);
        self.lists
            .reload(&self.lists_cfg, &self.pseudo, &self.zone, why);
        if let Some(c) = &self.config
            && let Ok(changed) = self.policy.reload(&c.path, &c.started, why)
            && !changed.is_empty()
        {
            warn!(
                sections = %changed.join(", "),
                "config sections changed on disk take effect after a restart (only [surveys] reloads live)"
            );
        }
    }

    fn fingerprint(&self) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
        let mut out = fingerprint(&self.sources);
        if let Some(c) = &self.config {
            let meta = std::fs::metadata(&c.path).ok();
            out.push((
                c.path.clone(),
                meta.as_ref().and_then(|m| m.modified().ok()),
                meta.map(|m| m.len()).unwrap_or(0),
            ));
        }
        for (_, p) in self.lists_cfg.files() {
            let meta = std::fs::metadata(p).ok();
            out.push((
                p.to_path_buf(),
                meta.as_ref().and_then(|m| m.modified().ok()),
                meta.map(|m| m.len()).unwrap_or(0),
            ));
        }
        out
    }
}

/// What the mapping files look like on disk: (path, modified, length) of each.
fn fingerprint(sources: &[SourceConfig]) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let mut out = Vec::new();
    for s in sources {
        let files = crate::mappings::mapping_files(&s.mappings).unwrap_or_default();
        for f in files {
            let meta = std::fs::metadata(&f).ok();
            out.push((
                f,
                meta.as_ref().and_then(|m| m.modified().ok()),
                meta.map(|m| m.len()).unwrap_or(0),
            ));
        }
        // CSV tables and other files referenced by mappings live beside them: watch the
        // folders' own times too (a new or removed file changes them).
        for p in &s.mappings {
            let meta = std::fs::metadata(p).ok();
            out.push((PathBuf::from(p), meta.and_then(|m| m.modified().ok()), 0));
        }
    }
    out
}

/// Reload on SIGHUP and when the files change, until shutdown.
pub async fn run(what: Reloadable, mut shutdown: Shutdown) {
    let what = Arc::new(what);
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut seen = what.fingerprint();
    gauge!("cem_bridge_mapping_reload_failed").set(0.0);
    gauge!("cem_bridge_config_reload_failed").set(0.0);
    loop {
        #[cfg(unix)]
        let hup_fired = async {
            match hup.as_mut() {
                Some(h) => h.recv().await.is_some(),
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hup_fired = std::future::pending::<bool>();
        let why = tokio::select! {
            _ = shutdown.wait() => return,
            fired = hup_fired => if fired { "SIGHUP" } else { continue },
            _ = tokio::time::sleep(POLL) => {
                if what.fingerprint() == seen {
                    continue;
                }
                "file change"
            }
        };
        let (w, why) = (what.clone(), why.to_string());
        // Compiling reads files: keep it off the async workers.
        let _ = tokio::task::spawn_blocking(move || w.reload(&why)).await;
        seen = what.fingerprint();
    }
}
