//! The HTTP peers' configuration: `[cem]`, `[hcrm]`, `[callcenter]` and `[cem_results]` — where
//! requests go (HTTP or a shadow file), how a 2xx body is judged, and each peer's resilience block
//! (`[….limits]`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// `[hcrm]` or `[callcenter]`: where its requests go (shadow by default) and its limits.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    #[serde(default = "default_mode")]
    pub mode: CemMode,
    /// JSONL file in `shadow` mode; default `data/{hcrm|callcenter}-requests.jsonl`.
    pub shadow_file: Option<PathBuf>,
    /// Full URL of the operation (HCRM case upsert, call-center task creation).
    #[serde(default)]
    pub url: String,
    /// Environment variable holding a bearer token.
    pub token_env: Option<String>,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// JSON pointer that must equal `success_equals` in a 2xx body; empty = any 2xx.
    #[serde(default = "default_success_pointer")]
    pub success_pointer: String,
    #[serde(default = "default_success_equals")]
    #[schemars(with = "serde_json::Value")]
    pub success_equals: toml::Value,
    #[serde(default)]
    pub limits: SinkLimits,
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            mode: default_mode(),
            shadow_file: None,
            url: String::new(),
            token_env: None,
            timeout_ms: default_timeout(),
            success_pointer: default_success_pointer(),
            success_equals: default_success_equals(),
            limits: SinkLimits::default(),
        }
    }
}

fn default_mode() -> CemMode {
    CemMode::Shadow
}
impl PeerConfig {
    pub fn shadow_file(&self, name: &str) -> PathBuf {
        self.shadow_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("data/{name}-requests.jsonl")))
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn success_rule(&self) -> cem_connectors::http_sink::SuccessRule {
        success_rule(&self.success_pointer, &self.success_equals)
    }

    pub fn problem(&self) -> Option<String> {
        if self.mode == CemMode::Http && !self.url.starts_with("http") {
            return Some("mode = \"http\" needs the full URL of the operation".into());
        }
        self.limits.problem().map(|m| format!("limits: {m}"))
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CemMode {
    /// Append each request to `shadow_file` (JSONL) instead of sending it.
    Shadow,
    /// Send to `url`.
    Http,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CemConfig {
    pub mode: CemMode,
    #[serde(default = "default_shadow")]
    pub shadow_file: PathBuf,
    /// Full URL of the survey dispatch operation.
    #[serde(default)]
    pub url: String,
    /// Environment variable holding a bearer token, if the CEM wants one.
    pub token_env: Option<String>,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// JSON pointer that must equal `success_equals` in a 2xx body; empty = any 2xx.
    #[serde(default = "default_success_pointer")]
    pub success_pointer: String,
    #[serde(default = "default_success_equals")]
    #[schemars(with = "serde_json::Value")]
    pub success_equals: toml::Value,
    /// How the CEM reaches the patient (R-ANO-7): `ref` (default) sends a one-job `contactRef`
    /// the CEM resolves at `POST /contact/resolve`; `mobile` sends the mobile itself — only
    /// under an entrusted-processing agreement (PIPL art. 21); `cem-bridge check` warns.
    #[serde(default)]
    pub contact_mode: ContactMode,
    /// Environment variable holding the token the CEM presents at `POST /contact/resolve`
    /// (`Authorization: Bearer …`). Without it the endpoint answers 401 to everyone.
    pub resolve_token_env: Option<String>,
    /// Rate limit, retries and circuit breaker of the CEM sink (`[cem.limits]`).
    #[serde(default)]
    pub limits: SinkLimits,
}

/// The resilience block of one HTTP sink (`[cem.limits]`, `[hcrm.limits]`,
/// `[callcenter.limits]`): one implementation for all of them (`cem_connectors::resilience`).
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SinkLimits {
    /// Requests per second, sustained (governor).
    pub rate_per_sec: u32,
    /// Requests allowed at once above the rate.
    pub burst: u32,
    /// Attempts before a request is given up as `dead(max_attempts)`.
    pub max_attempts: u32,
    /// Exponential backoff between attempts, ±20 % jitter; a 429's `Retry-After` wins.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Consecutive failures (5xx, 429, timeout) that open the circuit breaker; 0 = none.
    pub breaker_failures: u32,
    /// How long the breaker stays open before one probe is let through.
    pub breaker_open_ms: u64,
}

impl Default for SinkLimits {
    fn default() -> Self {
        let l = cem_connectors::resilience::Limits::default();
        Self {
            rate_per_sec: l.rate_per_sec,
            burst: l.burst,
            max_attempts: l.max_attempts,
            backoff_initial_ms: l.backoff_initial_ms,
            backoff_max_ms: l.backoff_max_ms,
            breaker_failures: l.breaker_failures,
            breaker_open_ms: l.breaker_open_ms,
        }
    }
}

impl SinkLimits {
    pub fn to_limits(&self) -> cem_connectors::resilience::Limits {
        cem_connectors::resilience::Limits {
            rate_per_sec: self.rate_per_sec,
            burst: self.burst,
            max_attempts: self.max_attempts,
            backoff_initial_ms: self.backoff_initial_ms,
            backoff_max_ms: self.backoff_max_ms,
            breaker_failures: self.breaker_failures,
            breaker_open_ms: self.breaker_open_ms,
        }
    }

    /// The first mistake in this block, if any.
    pub fn problem(&self) -> Option<String> {
        if self.rate_per_sec == 0 || self.burst == 0 {
            return Some("rate_per_sec and burst must be ≥ 1".into());
        }
        if self.max_attempts == 0 {
            return Some("max_attempts must be ≥ 1".into());
        }
        (self.backoff_initial_ms > self.backoff_max_ms).then(|| {
            format!(
                "backoff_initial_ms ({}) is above backoff_max_ms ({})",
                self.backoff_initial_ms, self.backoff_max_ms
            )
        })
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ContactMode {
    #[default]
    Ref,
    Mobile,
}

fn default_shadow() -> PathBuf {
    PathBuf::from("data/cem-requests.jsonl")
}
pub(crate) fn default_timeout() -> u64 {
    10_000
}
pub(crate) fn default_success_pointer() -> String {
    "/code".into()
}
pub(crate) fn default_success_equals() -> toml::Value {
    toml::Value::Integer(0)
}
/// `success_pointer` / `success_equals` as a rule; an empty pointer means any 2xx.
pub fn success_rule(pointer: &str, equals: &toml::Value) -> cem_connectors::http_sink::SuccessRule {
    use cem_connectors::http_sink::SuccessRule;
    if pointer.is_empty() {
        return SuccessRule::Status2xx;
    }
    SuccessRule::JsonEquals {
        pointer: pointer.to_string(),
        equals: serde_json::to_value(equals).unwrap_or(serde_json::Value::Null),
    }
}

impl CemConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn success_rule(&self) -> cem_connectors::http_sink::SuccessRule {
        success_rule(&self.success_pointer, &self.success_equals)
    }
}
