//! `bridge.toml`: the typed configuration, parsed and checked at the edge.
//!
//! Unknown keys are errors (typos fail loudly, with file:line:column from the TOML parser).
//! Secrets never live in this file: it names the environment variables that hold them.

pub mod deprecated;
pub mod lists;
pub mod paths;

pub mod peers;
pub mod source;

pub mod mappings;
pub mod tickets;

use std::path::{Path, PathBuf};

use serde::Deserialize;

use peers::{CemConfig, CemMode, ContactMode};
use source::SourceConfig;

/// Why a configuration could not be used. Every variant says where and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A key of an earlier release that cannot be carried over (`deprecated.rs`).
    #[error("{0}")]
    Obsolete(deprecated::Notice),
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// One hospital-group deployment; part of every job identity (R-SRV-5).
    pub tenant: String,
    /// Zone for local times and calendar rules (R-GEN-1).
    #[serde(default = "default_zone")]
    pub time_zone: String,
    /// Seconds `run` gives in-flight work after SIGTERM or Ctrl-C (the batch being written and
    /// acked, pushes and sends under way) before it exits non-zero without waiting longer;
    /// nothing uncommitted is acked either way. At least 1.
    #[serde(default = "default_shutdown_timeout_s")]
    #[schemars(range(min = 1))]
    pub shutdown_timeout_s: u64,
    pub pseudonym: PseudonymConfig,
    /// The re-identification vault (R-ANO-6): its AES-256 key comes from the environment.
    #[serde(default)]
    pub vault: VaultConfig,
    pub store: StoreConfig,
    #[serde(rename = "source", default)]
    pub sources: Vec<SourceConfig>,
    pub cem: CemConfig,
    #[serde(default)]
    pub scheduler: SchedulerConfig,
    /// Survey policy (R-SRV, R-EXC); every key has the default of the domain rules.
    #[serde(default)]
    pub surveys: cem_pipeline::policy::SurveyPolicy,
    /// Field-level de-identification per destination (R-ANO-1).
    #[serde(default)]
    pub anonymization: AnonymizationConfig,
    /// Opt-out and staff list files (R-EXC-3, R-EXC-4), reloaded on change.
    #[serde(default)]
    pub lists: crate::config::lists::ListsConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub ops: OpsConfig,
    #[serde(default)]
    pub retention: RetentionConfig,
    /// The ticket loop (domain rules §4); absent = off.
    pub tickets: Option<crate::config::tickets::TicketsConfig>,
    /// Post-operative follow-up plans (domain rules §5). They run with the ticket loop, whose
    /// call-center sink makes the calls: without `[tickets]` nothing is planned.
    #[serde(default)]
    pub followup: cem_pipeline::followup::FollowupSettings,
    /// The hospital CRM sink for tickets (shadow by default).
    #[serde(default)]
    pub hcrm: crate::config::peers::PeerConfig,
    /// The AI call-center sink for call-backs and revisits (shadow by default).
    #[serde(default)]
    pub callcenter: crate::config::peers::PeerConfig,
    /// Where ticket call outcomes are posted back to the CEM (R-TKT-6); absent = not posted.
    pub cem_results: Option<crate::config::peers::PeerConfig>,
    /// Deprecated forms found in the file (`deprecated.rs`): reported by `warnings`.
    #[serde(skip)]
    #[schemars(skip)]
    pub notices: Vec<deprecated::Notice>,
    /// The file this config was read from (for the live reload of `[surveys]`).
    #[serde(skip)]
    #[schemars(skip)]
    pub file: Option<crate::config::ConfigSource>,
}

fn default_zone() -> String {
    cem_pipeline::time::DEFAULT_ZONE.to_string()
}

fn default_shutdown_timeout_s() -> u64 {
    30
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PseudonymConfig {
    /// Environment variable holding the HMAC key (≥ 32 bytes; hex is decoded).
    #[serde(default = "default_key_env")]
    pub key_env: String,
    /// Label stored and sent with every pseudonym so keys can rotate (R-ANO-2).
    pub key_id: String,
    /// Demo only: without the environment variable, use a fixed, publicly known key.
    #[serde(default)]
    pub allow_demo_key: bool,
}

fn default_key_env() -> String {
    "CEM_BRIDGE_PSEUDONYM_KEY".into()
}

/// Field-level de-identification per destination (R-ANO-1). Only the CEM dispatch is
/// configurable yet; the HCRM and call-center payloads (tickets) follow R-ANO-1 as written.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnonymizationConfig {
    /// The CEM survey dispatch.
    #[serde(default)]
    pub cem: cem_pipeline::anonymize::CemFieldPolicy,
}

/// The re-identification vault (R-ANO-6). Keys are 32 bytes (64 hex digits) in the environment.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    /// Environment variable holding the current AES-256 key (64 hex digits).
    pub key_env: String,
    /// Label stored with every sealed record, so keys can rotate.
    pub key_id: String,
    /// Keys of earlier rotations: they only open records sealed before the rotation.
    pub previous: Vec<VaultPreviousKey>,
    /// Demo only: without the environment variable, use a fixed, publicly known key.
    pub allow_demo_key: bool,
}

impl Default for VaultConfig {
    fn default() -> Self {
        Self {
            key_env: "CEM_BRIDGE_VAULT_KEY".into(),
            key_id: "v1".into(),
            previous: Vec::new(),
            allow_demo_key: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VaultPreviousKey {
    pub key_id: String,
    /// Environment variable holding that key.
    pub key_env: String,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://path/to/file.db` (created if missing) or `postgres://…`.
    pub url: String,
    /// SQLite `synchronous`: `full` (default; durable across power loss) or `normal`.
    #[serde(default = "default_sync")]
    pub sqlite_synchronous: String,
    #[serde(default = "default_pool")]
    pub max_connections: u32,
}

fn default_sync() -> String {
    "full".into()
}
fn default_pool() -> u32 {
    4
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    pub poll_interval_ms: u64,
    pub claim_batch: u32,
    pub concurrency: usize,
    /// A claimed job not finished within this time is claimed again (after a crash).
    pub lease_ms: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            poll_interval_ms: 500,
            claim_batch: 64,
            concurrency: 8,
            lease_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// `tracing` filter, e.g. `info,cem_bridge::ingest=debug`; `RUST_LOG` overrides it.
    #[serde(default = "default_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: default_level(),
        }
    }
}

fn default_level() -> String {
    "info".into()
}

/// The operations HTTP server: the ops page, `/metrics`, `/health`, `/ready`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    /// `host:port` to listen on (port 0 picks a free port); `""` disables the server.
    pub listen: String,
    /// Environment variable holding the bearer token that `/metrics` and `/api/*` require when
    /// `listen` is not a loopback address (required then).
    pub token_env: Option<String>,
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_OPS_LISTEN.into(),
            token_env: None,
        }
    }
}

/// Where the ops server listens unless configured (Prometheus exporters' port range).
pub const DEFAULT_OPS_LISTEN: &str = "127.0.0.1:9464";

/// How long rows are kept in the store; a background task deletes older ones in batches.
/// `0` days keeps a table's rows forever. Pending survey jobs are never pruned.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Dedupe records (R-EVT-4: at least 90 days).
    pub inbox_days: u32,
    /// Survey jobs that are `sent`, `dead`, `cancelled` or `suppressed`, by their last change.
    pub jobs_days: u32,
    pub audit_days: u32,
    pub dead_letters_days: u32,
    /// Re-identification vault records, by the last event of their patient, visit or mobile
    /// (R-ANO-6: 180 days).
    pub vault_days: u32,
    /// Ticket and follow-up requests that are `sent`, `cancelled` or `dead`, by their last
    /// change (pending ones are never pruned).
    pub tickets_days: u32,
    /// Do-not-disturb touches (R-DND-2), by when they were sent: a touch older than the
    /// window blocks nothing. At least `[surveys] dnd_days` (checked); 0 keeps them forever.
    pub touches_days: u32,
    /// What the store knows of a patient who is not deceased (the latest mobile pseudonym and
    /// the time of the demographics it came from, R-CAN-5), by that time. Deceased flags
    /// (R-EXC-1) and merge aliases (R-CAN-6) are never pruned: they are small and forgetting
    /// them would survey a deceased patient or split a merged one.
    pub patients_days: u32,
    /// Size caps (0 = none): after the age rules, the oldest rows over the cap go — finished
    /// survey jobs, audit rows, dead letters, finished ticket requests. They bound the store
    /// when a flood (a feed replayed, a mapping gone wrong) makes rows faster than age removes.
    pub max_jobs_rows: u64,
    pub max_audit_rows: u64,
    pub max_dead_letters_rows: u64,
    pub max_tickets_rows: u64,
    /// How often the pruning runs (first run at start).
    pub interval_minutes: u64,
    /// Rows deleted per statement: small batches keep write locks short.
    pub batch_rows: u32,
}

/// R-EVT-4: message keys are kept at least this long.
pub const MIN_INBOX_DAYS: u32 = 90;

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            inbox_days: MIN_INBOX_DAYS,
            jobs_days: 180,
            audit_days: 180,
            dead_letters_days: 90,
            vault_days: 180,
            tickets_days: 180,
            touches_days: 60,
            patients_days: 365,
            max_jobs_rows: 5_000_000,
            max_audit_rows: 10_000_000,
            max_dead_letters_rows: 200_000,
            max_tickets_rows: 2_000_000,
            interval_minutes: 60,
            batch_rows: 1000,
        }
    }
}

impl OpsConfig {
    /// The address to listen on, or `None` when the server is disabled.
    pub fn listen_addr(&self) -> Option<std::net::SocketAddr> {
        let l = self.listen.trim();
        if l.is_empty() { None } else { socket_addr(l) }
    }

    /// Whether the server is reachable from other hosts (and so needs a token).
    pub fn needs_token(&self) -> bool {
        self.listen_addr().is_some_and(|a| !a.ip().is_loopback())
    }
}

/// `host:port` as a socket address: an IP literal, or a host name such as `localhost` resolved
/// now (its first IPv4 address when it has one, so `localhost` means 127.0.0.1).
pub fn socket_addr(text: &str) -> Option<std::net::SocketAddr> {
    if let Ok(a) = text.parse() {
        return Some(a);
    }
    let found: Vec<std::net::SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(text)
        .ok()?
        .collect();
    found
        .iter()
        .find(|a| a.is_ipv4())
        .or(found.first())
        .copied()
}

/// One path key resolved (`paths::resolve`); found only from the working directory, a notice
/// says what to write. `shown` writes a path as the key holds it (the store URL around it).
fn resolve_one(
    notices: &mut Vec<deprecated::Notice>,
    text: &str,
    file: &Path,
    key: &[deprecated::Seg<'_>],
    written: &Path,
    default: bool,
    shown: &dyn Fn(&Path) -> String,
) -> PathBuf {
    let r = paths::resolve(file, written);
    if let paths::Resolved::FromWorkingDir { write, .. } = &r {
        notices.push(deprecated::Notice {
            file: file.to_path_buf(),
            line: if default {
                None
            } else {
                deprecated::line_of(text, key)
            },
            key: key_name(key),
            message: format!(
                "{:?} is found from the working directory, not from this file's folder (deprecated: relative paths are relative to the config file){}; write {:?}",
                shown(written),
                if default { " — it is the default" } else { "" },
                shown(write),
            ),
        });
    }
    r.path().to_path_buf()
}

/// A SQLite store URL cut around its file path: `sqlite://` + path + `?query`.
struct SqliteFile<'a> {
    scheme: &'a str,
    path: &'a str,
    query: &'a str,
}

/// The file of a `sqlite:` URL; `None` for PostgreSQL and in-memory databases.
fn sqlite_file(url: &str) -> Option<SqliteFile<'_>> {
    let scheme = ["sqlite://", "sqlite:"]
        .into_iter()
        .find(|s| url.starts_with(s))?;
    let rest = &url[scheme.len()..];
    let cut = rest.find('?').unwrap_or(rest.len());
    let (path, query) = rest.split_at(cut);
    (!path.is_empty() && path != ":memory:" && !query.contains("mode=memory")).then_some(
        SqliteFile {
            scheme,
            path,
            query,
        },
    )
}

/// `source[0].mappings[1]` for a key path.
fn key_name(key: &[deprecated::Seg<'_>]) -> String {
    let mut out = String::new();
    for seg in key {
        match seg {
            deprecated::Seg::Key(k) if out.is_empty() => out.push_str(k),
            deprecated::Seg::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            deprecated::Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// The JSON Schema of `bridge.toml`, pretty-printed (`cem-bridge schema config`).
pub fn schema() -> String {
    let s = schemars::schema_for!(Config);
    serde_json::to_string_pretty(&s).unwrap_or_default()
}

impl Config {
    /// Read, parse and check a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            cause: source,
        })?;
        let mut cfg = Self::parse(&text, path)?;
        cfg.file = Some(crate::config::ConfigSource {
            path: path.to_path_buf(),
            started: toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?,
        });
        Ok(cfg)
    }

    /// Parse and check config text read from `path`: deprecated keys are carried over (or
    /// refused), and relative paths resolved against `path`'s folder (`paths.rs`).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let (text, mut notices) = deprecated::apply(text, path, deprecated::DEPRECATED)?;
        let mut cfg: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.check(path)?;
        notices.extend(cfg.resolve_paths(&text, path));
        cfg.notices = notices;
        Ok(cfg)
    }

    /// Every path-shaped key made relative to the config file's folder; a path found only
    /// from the working directory is kept and reported.
    fn resolve_paths(&mut self, text: &str, path: &Path) -> Vec<deprecated::Notice> {
        use deprecated::Seg;
        let mut notices = Vec::new();
        let plain = |p: &Path| p.display().to_string();
        let mut fix =
            |key: Vec<Seg<'_>>, written: &Path, default: bool, shown: &dyn Fn(&Path) -> String| {
                resolve_one(&mut notices, text, path, &key, written, default, shown)
            };
        for (i, s) in self.sources.iter_mut().enumerate() {
            let written = deprecated::line_of(
                text,
                &[Seg::Key("source"), Seg::Index(i), Seg::Key("mappings")],
            )
            .is_some();
            for (j, m) in s.mappings.iter_mut().enumerate() {
                let key = vec![
                    Seg::Key("source"),
                    Seg::Index(i),
                    Seg::Key("mappings"),
                    Seg::Index(j),
                ];
                *m = fix(key, Path::new(m.as_str()), !written, &plain)
                    .display()
                    .to_string();
            }
            for (name, file) in [("tls_cert", &mut s.tls_cert), ("tls_key", &mut s.tls_key)] {
                if let Some(f) = file {
                    let key = vec![Seg::Key("source"), Seg::Index(i), Seg::Key(name)];
                    *f = fix(key, f, false, &plain);
                }
            }
        }

        for (name, files) in [
            ("opt_out", &mut self.lists.opt_out),
            ("staff", &mut self.lists.staff),
            ("followup_opt_out", &mut self.lists.followup_opt_out),
        ] {
            for (j, f) in files.iter_mut().enumerate() {
                let key = vec![Seg::Key("lists"), Seg::Key(name), Seg::Index(j)];
                *f = fix(key, f, false, &plain);
            }
        }
        if let Some(sqlite) = sqlite_file(&self.store.url) {
            let key = vec![Seg::Key("store"), Seg::Key("url")];
            let url = |p: &Path| format!("{}{}{}", sqlite.scheme, p.display(), sqlite.query);
            let file = fix(key, Path::new(sqlite.path), false, &url);
            self.store.url = url(&file);
        }
        if self.cem.mode == CemMode::Shadow {
            let written = deprecated::line_of(text, &[Seg::Key("cem"), Seg::Key("shadow_file")]);
            let key = vec![Seg::Key("cem"), Seg::Key("shadow_file")];
            self.cem.shadow_file = fix(key, &self.cem.shadow_file, written.is_none(), &plain);
        }
        if self.tickets.is_some() {
            let peers = [
                ("hcrm", Some(&mut self.hcrm)),
                ("callcenter", Some(&mut self.callcenter)),
                ("cem_results", self.cem_results.as_mut()),
            ];
            for (name, peer) in peers {
                let Some(peer) = peer.filter(|p| p.mode == CemMode::Shadow) else {
                    continue;
                };
                let key = vec![Seg::Key(name), Seg::Key("shadow_file")];
                let default = peer.shadow_file.is_none();
                let file = fix(key, &peer.shadow_file(name), default, &plain);
                peer.shadow_file = Some(file);
            }
        }
        notices.sort_by_key(|n| n.line);
        notices
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |field: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field: field.to_string(),
            message,
        };
        if self.tenant.trim().is_empty() {
            return Err(bad("tenant", "must not be empty".into()));
        }
        if jiff::tz::TimeZone::get(&self.time_zone).is_err() {
            return Err(bad(
                "time_zone",
                format!(
                    "{:?} is not an IANA zone name (e.g. Asia/Shanghai)",
                    self.time_zone
                ),
            ));
        }
        if self.shutdown_timeout_s == 0 {
            return Err(bad(
                "shutdown_timeout_s",
                "must be at least 1 (seconds given to in-flight work at shutdown)".into(),
            ));
        }
        if self.sources.is_empty() {
            return Err(bad(
                "source",
                "no [[source]] is configured; add one with name, url and queue".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            let f = |k: &str| format!("source[{i}].{k}");
            if !names.insert(&s.name) {
                return Err(bad(&f("name"), format!("{:?} is used twice", s.name)));
            }
            if let Some((field, message)) = s.door_problem() {
                return Err(bad(&f(field), message));
            }
            if cem_pipeline::decode::Charset::from_label(&s.charset).is_none() {
                return Err(bad(
                    &f("charset"),
                    format!("{:?} is not supported; use utf-8 or gb18030", s.charset),
                ));
            }
            if s.batch_size == 0 || s.prefetch == 0 {
                return Err(bad(
                    &f("batch_size"),
                    "batch_size and prefetch must be ≥ 1".into(),
                ));
            }
            if usize::from(s.prefetch) < s.batch_size {
                return Err(bad(
                    &f("prefetch"),
                    format!(
                        "prefetch {} is smaller than batch_size {}: a batch could never fill",
                        s.prefetch, s.batch_size
                    ),
                ));
            }
        }
        if self.cem.mode == CemMode::Http && !self.cem.url.starts_with("http") {
            return Err(bad(
                "cem.url",
                "mode = \"http\" needs the full dispatch URL, e.g. https://cem.example/api/open/v1/surveys/dispatch".into(),
            ));
        }
        if let Some(m) = self.cem.limits.problem() {
            return Err(bad("cem.limits", m));
        }
        if self
            .sources
            .iter()
            .any(|s| s.name == crate::config::tickets::CONNECTOR)
        {
            return Err(bad(
                "source.name",
                format!(
                    "{:?} is the ticket queue's connector name (logs, metrics, dead letters); name the source differently",
                    crate::config::tickets::CONNECTOR
                ),
            ));
        }
        if let Some(t) = &self.tickets {
            if let Some((field, m)) = t.problem() {
                return Err(bad(field, m));
            }
            if let Some(m) = self.hcrm.problem() {
                return Err(bad("hcrm", m));
            }
            if let Some(m) = self.callcenter.problem() {
                return Err(bad("callcenter", m));
            }
            if let Some(m) = self.cem_results.as_ref().and_then(|p| p.problem()) {
                return Err(bad("cem_results", m));
            }
        }
        if self.scheduler.concurrency == 0 || self.scheduler.claim_batch == 0 {
            return Err(bad(
                "scheduler",
                "concurrency and claim_batch must be ≥ 1".into(),
            ));
        }
        if !self.ops.listen.trim().is_empty() && self.ops.listen_addr().is_none() {
            return Err(bad(
                "ops.listen",
                format!(
                    "{:?} is not an address or host name with a port such as \"127.0.0.1:9464\" or \"localhost:9464\"; use \"\" to disable the ops server",
                    self.ops.listen
                ),
            ));
        }
        if self.ops.needs_token()
            && self
                .ops
                .token_env
                .as_deref()
                .is_none_or(|e| e.trim().is_empty())
        {
            return Err(bad(
                "ops.token_env",
                format!(
                    "listen = {:?} is reachable from other hosts: name the environment variable holding the ops bearer token (e.g. token_env = \"CEM_BRIDGE_OPS_TOKEN\"), or listen on 127.0.0.1",
                    self.ops.listen
                ),
            ));
        }
        let r = &self.retention;
        if r.inbox_days != 0 && r.inbox_days < MIN_INBOX_DAYS {
            return Err(bad(
                "retention.inbox_days",
                format!(
                    "{} is too short: message keys are kept at least {MIN_INBOX_DAYS} days so redeliveries are recognised (R-EVT-4); use {MIN_INBOX_DAYS} or more, or 0 to keep them forever",
                    r.inbox_days
                ),
            ));
        }
        if r.touches_days != 0 && r.touches_days < self.surveys.dnd_days {
            return Err(bad(
                "retention.touches_days",
                format!(
                    "{} is shorter than the do-not-disturb window ([surveys] dnd_days = {}): a patient could be surveyed again inside it (R-DND-1); use {} or more, or 0 to keep touches forever",
                    r.touches_days, self.surveys.dnd_days, self.surveys.dnd_days
                ),
            ));
        }
        if r.interval_minutes == 0 || r.batch_rows == 0 {
            return Err(bad(
                "retention",
                "interval_minutes and batch_rows must be ≥ 1".into(),
            ));
        }
        if let Some(first) = self.surveys.check().into_iter().next() {
            let (field, message) = first
                .split_once(": ")
                .unwrap_or(("surveys", first.as_str()));
            return Err(bad(field, message.to_string()));
        }
        Ok(())
    }

    /// Legal but risky settings: `cem-bridge check` prints them, the bridge logs them at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.cem.contact_mode == ContactMode::Mobile {
            w.push("cem.contact_mode = \"mobile\": every survey dispatch carries the patient's mobile in clear (R-ANO-7). Use it only under an entrusted-processing agreement with the CEM (PIPL art. 21); the default `ref` sends a contactRef instead".into());
        } else if self.cem.mode == CemMode::Http && self.cem.resolve_token_env.is_none() {
            w.push("cem.resolve_token_env is not set: the CEM cannot resolve contactRef tokens at POST /contact/resolve (it gets 401), so it cannot reach patients; name the environment variable holding the CEM's token".into());
        }
        w.extend(self.notices.iter().map(|n| n.to_string()));
        if self.vault.allow_demo_key {
            w.push(format!("vault.allow_demo_key = true: without {} the vault uses a public demo key; never with real data", self.vault.key_env));
        }
        w
    }

    pub fn zone(&self) -> jiff::tz::TimeZone {
        jiff::tz::TimeZone::get(&self.time_zone)
            .unwrap_or_else(|_| cem_pipeline::time::default_zone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
tenant = "t"
[pseudonym]
key_id = "k1"
[store]
url = "sqlite://x.db"
[[source]]
name = "adt"
url = "amqp://127.0.0.1"
queue = "q"
[cem]
mode = "shadow"
"#;

    #[test]
    fn minimal_config_parses_with_defaults() {
        let c = Config::parse(MIN, Path::new("t.toml")).unwrap();
        assert_eq!(c.sources[0].dlx(), "q.dlx");
        assert_eq!(c.sources[0].dlq(), "q.dlq");
        assert_eq!(c.sources[0].poison_after, 5);
        assert_eq!(c.time_zone, "Asia/Shanghai");
        assert_eq!(c.shutdown_timeout_s, 30);
        assert_eq!(
            c.ops.listen_addr(),
            Some(DEFAULT_OPS_LISTEN.parse().unwrap())
        );
    }

    #[test]
    fn retention_defaults_and_r_evt_4_minimum() {
        let c = Config::parse(MIN, Path::new("b.toml")).unwrap();
        let r = &c.retention;
        assert_eq!(
            (r.inbox_days, r.jobs_days, r.audit_days, r.dead_letters_days),
            (90, 180, 180, 90)
        );
        assert_eq!(r.interval_minutes, 60);
        let text = format!("{MIN}[retention]\ninbox_days = 30\n");
        let e = Config::parse(&text, Path::new("b.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("retention.inbox_days") && e.contains("R-EVT-4"),
            "{e}"
        );
        let text = format!("{MIN}[retention]\ninbox_days = 0\naudit_days = 7\n");
        let c = Config::parse(&text, Path::new("b.toml")).unwrap();
        assert_eq!((c.retention.inbox_days, c.retention.audit_days), (0, 7));
    }

    /// R-DND-1: touches are kept at least as long as the do-not-disturb window.
    #[test]
    fn touches_are_kept_at_least_the_dnd_window() {
        let c = Config::parse(MIN, Path::new("b.toml")).unwrap();
        assert_eq!(
            (c.retention.touches_days, c.retention.patients_days),
            (60, 365)
        );
        let text = format!("{MIN}[surveys]\ndnd_days = 90\n");
        let e = Config::parse(&text, Path::new("b.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("retention.touches_days") && e.contains("dnd_days = 90"),
            "{e}"
        );
        let text = format!("{MIN}[surveys]\ndnd_days = 90\n[retention]\ntouches_days = 0\n");
        assert!(Config::parse(&text, Path::new("b.toml")).is_ok());
    }

    #[test]
    fn ops_listen_can_be_disabled_and_must_be_an_address() {
        let text = format!("{MIN}[ops]\nlisten = \"\"\n");
        let c = Config::parse(&text, Path::new("b.toml")).unwrap();
        assert_eq!(c.ops.listen_addr(), None);
        let text = format!("{MIN}[ops]\nlisten = \"0.0.0.0:9464\"\n");
        let e = Config::parse(&text, Path::new("b.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ops.token_env"), "{e}");
        let text = format!("{MIN}[ops]\nlisten = \"0.0.0.0:9464\"\ntoken_env = \"T\"\n");
        assert!(
            Config::parse(&text, Path::new("b.toml"))
                .unwrap()
                .ops
                .needs_token()
        );
        let text = format!("{MIN}[ops]\nlisten = \"[::1]:9464\"\n");
        assert!(
            !Config::parse(&text, Path::new("b.toml"))
                .unwrap()
                .ops
                .needs_token()
        );
        let text = format!("{MIN}[ops]\nlisten = \"localhost:9464\"\n");
        let c = Config::parse(&text, Path::new("b.toml")).unwrap();
        assert!(
            c.ops
                .listen_addr()
                .is_some_and(|a| a.ip().is_loopback() && a.port() == 9464)
        );
        assert!(!c.ops.needs_token(), "localhost is loopback");
        let text = format!("{MIN}[ops]\nlisten = \"localhost\"\n");
        let e = Config::parse(&text, Path::new("b.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ops.listen"), "{e}");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = MIN.replace("queue = \"q\"", "queue = \"q\"\nprefech = 3");
        let e = Config::parse(&text, Path::new("conf/b.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("conf/b.toml: "), "{e}");
        assert!(
            e.contains("prefech") && e.contains("line 11, column 1"),
            "{e}"
        );
    }

    #[test]
    fn invalid_values_name_the_field() {
        let text = MIN.replace("mode = \"shadow\"", "mode = \"http\"");
        let e = Config::parse(&text, Path::new("b.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cem.url"), "{e}");
        let text = MIN.replace("queue = \"q\"", "queue = \"q\"\ncharset = \"latin1\"");
        let e = Config::parse(&text, Path::new("b.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("source[0].charset"), "{e}");
        let text = MIN.replace(
            "queue = \"q\"",
            "queue = \"q\"\nprefetch = 2\nbatch_size = 10",
        );
        let e = Config::parse(&text, Path::new("b.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("source[0].prefetch"), "{e}");
        let text = MIN.replace("tenant = \"t\"", "tenant = \"t\"\nshutdown_timeout_s = 0");
        let e = Config::parse(&text, Path::new("b.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("shutdown_timeout_s"), "{e}");
        let text = MIN.replace("tenant = \"t\"", "tenant = \"t\"\nshutdown_timeout_s = 5");
        let c = Config::parse(&text, Path::new("b.toml")).unwrap();
        assert_eq!(c.shutdown_timeout_s, 5);
    }
}

/// The config file a running bridge was started from.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    /// Its contents at start (to tell which sections changed).
    pub started: toml::Value,
}
