//! The CEM survey sink as configured: real HTTP, or `shadow` (append to a JSONL file).

use std::sync::Arc;

use cem_connectors::http_sink::{HttpSink, HttpSinkConfig, SendOutcome, ShadowSink};

use crate::config::{CemConfig, CemMode};

#[derive(Debug, Clone)]
pub enum CemSink {
    Http(Arc<HttpSink>),
    Shadow(Arc<ShadowSink>),
}

impl CemSink {
    /// Build the sink; `token` comes from the environment variable the config names.
    pub async fn from_config(cfg: &CemConfig, token: Option<String>) -> anyhow::Result<Self> {
        Ok(match cfg.mode {
            CemMode::Http => Self::Http(Arc::new(HttpSink::new(HttpSinkConfig {
                url: cfg.url.clone(),
                bearer_token: token,
                timeout: cfg.timeout(),
                success: cfg.success_rule(),
            })?)),
            CemMode::Shadow => {
                let url = if cfg.url.is_empty() {
                    "shadow://cem/surveys/dispatch".to_string()
                } else {
                    cfg.url.clone()
                };
                let s = ShadowSink::open(&cfg.shadow_file, &url)
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "cannot open the shadow file {}: {e}; check [cem] shadow_file",
                            cfg.shadow_file.display()
                        )
                    })?;
                Self::Shadow(Arc::new(s))
            }
        })
    }

    pub async fn push(&self, idempotency_key: &str, body: &[u8]) -> SendOutcome {
        match self {
            Self::Http(h) => h.post_json(idempotency_key, body).await,
            Self::Shadow(s) => {
                let at = jiff::Timestamp::now().to_string();
                s.post_json(idempotency_key, body, &at).await
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Http(h) => format!("http {}", h.url()),
            Self::Shadow(s) => format!("shadow file {}", s.path().display()),
        }
    }
}
