//! Outbound HTTP to the CEM, and the `shadow` sink that records requests instead of sending.
//!
//! Every request carries an `Idempotency-Key`. A response is classified once, here:
//! - 2xx whose body passes the [`SuccessRule`] → [`SendOutcome::Accepted`];
//! - 409 (the key was used before: the CEM already has this survey) → accepted too (R-DND-2);
//! - 5xx, 429 (with `Retry-After`), timeouts, connection errors, and 2xx whose body fails the
//!   success rule (Bestcem answers 200 with `{"code": <non-zero>}`) → [`SendOutcome::Retryable`];
//! - other 4xx → [`SendOutcome::Permanent`].
//!
//! Response bodies are never logged or returned in errors: they may echo personal data.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

/// When a 2xx response counts as success.
#[derive(Debug, Clone, PartialEq)]
pub enum SuccessRule {
    /// Any 2xx.
    Status2xx,
    /// 2xx and the JSON value at `pointer` (RFC 6901) equals `equals`, e.g. `/code` == 0.
    JsonEquals {
        pointer: String,
        equals: serde_json::Value,
    },
}

impl SuccessRule {
    /// `None` if the body passes; else a description naming the pointer (never the body).
    fn check(&self, body: &[u8]) -> Option<String> {
        match self {
            Self::Status2xx => None,
            Self::JsonEquals { pointer, equals } => {
                let v: serde_json::Value = match serde_json::from_slice(body) {
                    Ok(v) => v,
                    Err(_) => return Some("2xx but the body is not JSON".to_string()),
                };
                match v.pointer(pointer) {
                    Some(got) if got == equals => None,
                    Some(got) if got.is_number() || got.is_boolean() => {
                        Some(format!("2xx but {pointer} is {got}, expected {equals}"))
                    }
                    Some(_) => Some(format!("2xx but {pointer} is not {equals}")),
                    None => Some(format!("2xx but the body has no {pointer}")),
                }
            }
        }
    }
}

/// Settings of an HTTP sink.
#[derive(Debug, Clone)]
pub struct HttpSinkConfig {
    /// Full URL of the operation, e.g. `https://cem.example/api/open/v1/surveys/dispatch`.
    pub url: String,
    pub bearer_token: Option<String>,
    pub timeout: Duration,
    pub success: SuccessRule,
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq)]
pub enum SendOutcome {
    Accepted {
        status: u16,
    },
    Retryable {
        status: Option<u16>,
        retry_after: Option<Duration>,
        detail: String,
    },
    Permanent {
        status: u16,
        detail: String,
    },
    /// Not sent: the sink's circuit breaker is open (see [`crate::resilience`]).
    BreakerOpen {
        retry_in: Duration,
    },
}

impl SendOutcome {
    /// Metric label for `cem_bridge_sink_requests_total{outcome}` (R-MET-1).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Accepted { .. } => "2xx",
            Self::Retryable {
                status: Some(429), ..
            } => "429",
            Self::Retryable {
                status: Some(408), ..
            } => "timeout",
            // 5xx, and a 2xx whose body carries an error code: the peer failed to take it.
            Self::Retryable {
                status: Some(_), ..
            } => "5xx",
            Self::Retryable { status: None, .. } => "timeout",
            Self::Permanent { .. } => "4xx",
            Self::BreakerOpen { .. } => "breaker_open",
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Accepted { status } | Self::Permanent { status, .. } => Some(*status),
            Self::Retryable { status, .. } => *status,
            Self::BreakerOpen { .. } => None,
        }
    }
}

/// A JSON-over-HTTP sink.
#[derive(Debug, Clone)]
pub struct HttpSink {
    client: reqwest::Client,
    cfg: HttpSinkConfig,
}

/// Building the HTTP client failed (TLS initialisation).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client for {url}: {cause}")]
pub struct BuildError {
    url: String,
    cause: reqwest::Error,
}

impl HttpSink {
    pub fn new(cfg: HttpSinkConfig) -> Result<Self, BuildError> {
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("cem-bridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| BuildError {
                url: cfg.url.clone(),
                cause: source,
            })?;
        Ok(Self { client, cfg })
    }

    pub fn url(&self) -> &str {
        &self.cfg.url
    }

    /// POST a JSON body with an idempotency key and classify the outcome.
    pub async fn post_json(&self, idempotency_key: &str, body: &[u8]) -> SendOutcome {
        let mut req = self
            .client
            .post(&self.cfg.url)
            .header("content-type", "application/json; charset=utf-8")
            .header("idempotency-key", idempotency_key)
            .body(body.to_vec());
        if let Some(t) = &self.cfg.bearer_token {
            req = req.bearer_auth(t);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                let detail = if e.is_timeout() {
                    format!("timed out after {} ms", self.cfg.timeout.as_millis())
                } else if e.is_connect() {
                    "connection failed".to_string()
                } else {
                    "request failed before a response".to_string()
                };
                return SendOutcome::Retryable {
                    status: None,
                    retry_after: None,
                    detail,
                };
            }
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(_) => {
                return SendOutcome::Retryable {
                    status: Some(status),
                    retry_after: None,
                    detail: "response body could not be read".to_string(),
                };
            }
        };
        classify(status, retry_after, &body, &self.cfg.success)
    }
}

/// Classify a response (pure, unit-tested).
pub fn classify(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    rule: &SuccessRule,
) -> SendOutcome {
    match status {
        200..=299 => match rule.check(body) {
            None => SendOutcome::Accepted { status },
            Some(detail) => SendOutcome::Retryable {
                status: Some(status),
                retry_after: None,
                detail,
            },
        },
        409 => SendOutcome::Accepted { status },
        429 => SendOutcome::Retryable {
            status: Some(status),
            retry_after,
            detail: "rate limited (429)".to_string(),
        },
        408 | 500..=599 => SendOutcome::Retryable {
            status: Some(status),
            retry_after,
            detail: format!("HTTP {status}"),
        },
        _ => SendOutcome::Permanent {
            status,
            detail: format!(
                "HTTP {status}: the request was refused; check the URL, token and payload mapping"
            ),
        },
    }
}

/// Appends each request as one JSON line instead of sending it (the default for trying the
/// bridge without a CEM): `{"at", "url", "idempotencyKey", "body"}`.
#[derive(Debug)]
pub struct ShadowSink {
    path: PathBuf,
    url: String,
    file: tokio::sync::Mutex<tokio::fs::File>,
}

impl ShadowSink {
    pub async fn open(path: &Path, url: &str) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await?;
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await?;
        Ok(Self {
            path: path.to_path_buf(),
            url: url.to_string(),
            file: tokio::sync::Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Record one request; a write error is retryable like a network error.
    pub async fn post_json(&self, idempotency_key: &str, body: &[u8], at: &str) -> SendOutcome {
        let body_json: serde_json::Value = serde_json::from_slice(body)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(body).into()));
        let line = serde_json::json!({
            "at": at,
            "url": self.url,
            "idempotencyKey": idempotency_key,
            "body": body_json,
        });
        let mut buf = line.to_string().into_bytes();
        buf.push(b'\n');
        let mut f = self.file.lock().await;
        match f.write_all(&buf).await {
            Ok(()) => match f.flush().await {
                Ok(()) => SendOutcome::Accepted { status: 200 },
                Err(e) => shadow_error(&self.path, e),
            },
            Err(e) => shadow_error(&self.path, e),
        }
    }
}

fn shadow_error(path: &Path, e: std::io::Error) -> SendOutcome {
    SendOutcome::Retryable {
        status: None,
        retry_after: None,
        detail: format!("cannot append to shadow file {}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code0() -> SuccessRule {
        SuccessRule::JsonEquals {
            pointer: "/code".into(),
            equals: 0.into(),
        }
    }

    #[test]
    fn bestcem_200_with_nonzero_code_is_not_success() {
        assert_eq!(
            classify(200, None, br#"{"code":0,"data":{}}"#, &code0()),
            SendOutcome::Accepted { status: 200 }
        );
        let o = classify(200, None, br#"{"code":40001,"msg":"bad"}"#, &code0());
        assert!(
            matches!(
                o,
                SendOutcome::Retryable {
                    status: Some(200),
                    ..
                }
            ),
            "{o:?}"
        );
        let o = classify(200, None, b"<html>", &code0());
        assert!(matches!(o, SendOutcome::Retryable { .. }));
        assert_eq!(
            classify(204, None, b"", &SuccessRule::Status2xx),
            SendOutcome::Accepted { status: 204 }
        );
    }

    #[test]
    fn statuses_are_classified() {
        assert_eq!(classify(409, None, b"", &code0()).label(), "2xx");
        let o = classify(429, Some(Duration::from_secs(7)), b"", &code0());
        assert_eq!(o.label(), "429");
        assert!(
            matches!(o, SendOutcome::Retryable { retry_after: Some(d), .. } if d.as_secs() == 7)
        );
        assert_eq!(classify(503, None, b"", &code0()).label(), "5xx");
        assert_eq!(classify(408, None, b"", &code0()).label(), "timeout");
        assert_eq!(
            classify(200, None, br#"{"code":1}"#, &code0()).label(),
            "5xx",
            "an error code in a 2xx body is not counted as 2xx"
        );
        assert!(matches!(
            classify(400, None, b"", &code0()),
            SendOutcome::Permanent { status: 400, .. }
        ));
        assert!(matches!(
            classify(408, None, b"", &code0()),
            SendOutcome::Retryable { .. }
        ));
    }
}
