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

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use jiff::tz::TimeZone;
use metrics::gauge;
use tracing::warn;

use crate::config::ConfigSource;
use crate::config::source::SourceConfig;
use crate::process::live::{Mappings, Policy};
use crate::process::shutdown::Shutdown;

/// How often mapping files are checked for changes.
pub const POLL: Duration = Duration::from_secs(2);

/// What is reloaded, and what from.
pub struct Reloadable {
    pub mappings: Arc<Mappings>,
    pub sources: Vec<SourceConfig>,
    pub zone: TimeZone,
    pub lists: Arc<crate::privacy::lists::Lists>,
    pub lists_cfg: crate::config::lists::ListsConfig,
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
        let files = crate::config::mappings::mapping_files(&s.mappings).unwrap_or_default();
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
