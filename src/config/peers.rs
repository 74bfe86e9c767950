//! The HTTP peers' configuration: `[cem]`, `[hcrm]`, `[callcenter]` and `[cem_results]` — where
//! requests go (HTTP or a shadow file), how a 2xx body is judged, and each peer's resilience block
//! (`[….limits]`).

use std::path::PathBuf;
use std::time::Duration;

use cem_connectors::resilience::Limits;
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
    pub limits: Limits,
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
            limits: Limits::default(),
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
    pub limits: Limits,
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
