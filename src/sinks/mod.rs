//! The HTTP sinks as configured — the CEM, HCRM and the AI call center — each real HTTP or
//! `shadow` (append to a JSONL file), and each behind its own instance of the one resilience
//! block (rate limit, circuit breaker, retry schedule: `cem_connectors::resilience`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cem_connectors::http_sink::{HttpSink, HttpSinkConfig, SendOutcome, ShadowSink, SuccessRule};
use cem_connectors::resilience::Resilience;

use crate::config::peers::{CemConfig, CemMode, SinkLimits};

#[derive(Debug)]
enum Kind {
    Http(HttpSink),
    Shadow(ShadowSink),
}

/// One outbound peer: where requests go and the limits they go under.
#[derive(Debug, Clone)]
pub struct Sink {
    kind: Arc<Kind>,
    guard: Arc<Resilience>,
}

/// The CEM survey sink (kept as a name: the scheduler and bench use it).
pub type CemSink = Sink;

/// What building a sink needs; the same for every peer.
pub struct SinkSettings<'a> {
    /// Metric label and log name: `cem`, `hcrm`, `callcenter`.
    pub name: &'static str,
    pub mode: CemMode,
    pub url: &'a str,
    pub shadow_file: &'a Path,
    pub token: Option<String>,
    pub timeout: Duration,
    pub success: SuccessRule,
    pub limits: &'a SinkLimits,
}

impl Sink {
    pub async fn build(s: SinkSettings<'_>) -> anyhow::Result<Self> {
        let kind = match s.mode {
            CemMode::Http => Kind::Http(HttpSink::new(HttpSinkConfig {
                url: s.url.to_string(),
                bearer_token: s.token,
                timeout: s.timeout,
                success: s.success,
            })?),
            CemMode::Shadow => {
                let url = if s.url.is_empty() {
                    format!("shadow://{}", s.name)
                } else {
                    s.url.to_string()
                };
                let sh = ShadowSink::open(s.shadow_file, &url).await.map_err(|e| {
                    anyhow::anyhow!(
                        "cannot open the shadow file {}: {e}; check [{}] shadow_file",
                        s.shadow_file.display(),
                        s.name
                    )
                })?;
                Kind::Shadow(sh)
            }
        };
        Ok(Self {
            kind: Arc::new(kind),
            guard: Arc::new(Resilience::new(s.name, s.limits.to_limits())),
        })
    }

    /// The CEM sink from `[cem]`; `token` comes from the environment variable it names.
    pub async fn from_config(cfg: &CemConfig, token: Option<String>) -> anyhow::Result<Self> {
        Self::build(SinkSettings {
            name: "cem",
            mode: cfg.mode,
            url: &cfg.url,
            shadow_file: &cfg.shadow_file,
            token,
            timeout: cfg.timeout(),
            success: cfg.success_rule(),
            limits: &cfg.limits,
        })
        .await
    }

    /// Send one JSON body under the sink's limits.
    pub async fn push(&self, idempotency_key: &str, body: &[u8]) -> SendOutcome {
        let kind = self.kind.clone();
        self.guard
            .call(|| async move {
                match &*kind {
                    Kind::Http(h) => h.post_json(idempotency_key, body).await,
                    Kind::Shadow(s) => {
                        let at = jiff::Timestamp::now().to_string();
                        s.post_json(idempotency_key, body, &at).await
                    }
                }
            })
            .await
    }

    /// `shadow` mode: requests go to a local file, so nothing re-identified may go in them.
    pub fn is_shadow(&self) -> bool {
        matches!(&*self.kind, Kind::Shadow(_))
    }

    /// The sink's limits and retry schedule.
    pub fn resilience(&self) -> &Resilience {
        &self.guard
    }

    pub fn describe(&self) -> String {
        match &*self.kind {
            Kind::Http(h) => format!("http {}", h.url()),
            Kind::Shadow(s) => format!("shadow file {}", s.path().display()),
        }
    }
}
