//! The CEM the benches push to: an in-process HTTP recorder on 127.0.0.1 that answers a
//! repeated `Idempotency-Key` with 409 as the real CEM does, counts surveys per key and per
//! patient, notes each request's arrival time, flags any personal value, checks the bearer
//! token when given one, and can refuse connections, fail, stall or throttle on command
//! (`bench chaos`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

/// How the recorder answers now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Ok,
    /// Connections refused (the listener is closed; pooled connections get 503 and close).
    Down,
    Error500,
    /// Slower than the bridge's timeout; the push is accepted, the bridge never sees the answer.
    Slow,
    TooMany,
}

/// What the recorder is told at the start.
#[derive(Debug, Clone, Default)]
pub(crate) struct RecorderOptions {
    /// The bearer token the bridge must send (`[cem] token_env`); a request without it gets
    /// 401. `None`: no check.
    pub token: Option<String>,
    /// Text that must never reach the CEM (the bench's patient ids, visit numbers): a body
    /// holding one, or a standalone mobile number, is counted in `pii`.
    pub personal_markers: Vec<String>,
}

#[derive(Default)]
pub(crate) struct CemState {
    pub(crate) mode: Mutex<Option<Mode>>,
    /// Idempotency key → times accepted with 2xx (must stay 1).
    pub(crate) accepted: Mutex<HashMap<String, u32>>,
    /// Pseudonymous patient key → surveys accepted (do-not-disturb: must stay 1).
    pub(crate) patients: Mutex<HashMap<String, u32>>,
    /// When each request arrived, in arrival order (the rate the bridge really sends at).
    pub(crate) arrivals: Mutex<Vec<Instant>>,
    pub(crate) requests: AtomicU64,
    pub(crate) replays: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) unauthorized: AtomicU64,
    pub(crate) pii: AtomicU64,
}

impl CemState {
    pub(crate) fn mode(&self) -> Mode {
        self.mode.lock().ok().and_then(|m| *m).unwrap_or(Mode::Ok)
    }
    pub(crate) fn set(&self, m: Mode) {
        if let Ok(mut g) = self.mode.lock() {
            *g = Some(m);
        }
    }
    /// Distinct surveys accepted (idempotency keys answered 2xx).
    pub(crate) fn accepted_count(&self) -> usize {
        self.accepted.lock().map(|a| a.len()).unwrap_or(0)
    }
    /// The request arrival times so far.
    pub(crate) fn arrivals(&self) -> Vec<Instant> {
        self.arrivals.lock().map(|a| a.clone()).unwrap_or_default()
    }
}

/// Whether a body holds something personal: a mobile number standing alone (not digits inside
/// a hex job id), or one of `markers`.
fn personal(body: &str, markers: &[String]) -> bool {
    let b = body.as_bytes();
    let mobile = b.windows(11).enumerate().any(|(i, w)| {
        w[0] == b'1'
            && (b'3'..=b'9').contains(&w[1])
            && w.iter().all(u8::is_ascii_digit)
            && (i == 0 || !b[i - 1].is_ascii_alphanumeric())
            && b.get(i + 11).is_none_or(|c| !c.is_ascii_alphanumeric())
    });
    mobile || markers.iter().any(|m| body.contains(m.as_str()))
}

pub(crate) struct Cem {
    port: u16,
    pub(crate) state: Arc<CemState>,
    options: Arc<RecorderOptions>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Cem {
    pub(crate) async fn start(options: RecorderOptions) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("the CEM recorder cannot listen on 127.0.0.1")?;
        let port = listener
            .local_addr()
            .context("the CEM recorder's port")?
            .port();
        let mut cem = Self {
            port,
            state: Arc::new(CemState::default()),
            options: Arc::new(options),
            server: None,
        };
        cem.serve(listener);
        Ok(cem)
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        use axum::http::{HeaderMap, StatusCode, header};
        use axum::response::IntoResponse;
        let state = self.state.clone();
        let options = self.options.clone();
        let app = axum::Router::new().route(
            "/dispatch",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let (s, options) = (state.clone(), options.clone());
                async move {
                    let arrived = Instant::now();
                    s.requests.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut a) = s.arrivals.lock() {
                        a.push(arrived);
                    }
                    let mode = s.mode();
                    match mode {
                        Mode::Down => {
                            s.refused.fetch_add(1, Ordering::Relaxed);
                            return (
                                StatusCode::SERVICE_UNAVAILABLE,
                                [(header::CONNECTION, "close")],
                                String::new(),
                            )
                                .into_response();
                        }
                        Mode::Error500 => {
                            s.refused.fetch_add(1, Ordering::Relaxed);
                            return (
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "{\"code\":500}".to_string(),
                            )
                                .into_response();
                        }
                        Mode::TooMany => {
                            s.refused.fetch_add(1, Ordering::Relaxed);
                            return (
                                StatusCode::TOO_MANY_REQUESTS,
                                [(header::RETRY_AFTER, "1")],
                                "{\"code\":429}".to_string(),
                            )
                                .into_response();
                        }
                        Mode::Slow | Mode::Ok => {}
                    }
                    if let Some(token) = &options.token {
                        let sent = headers
                            .get(header::AUTHORIZATION)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.split_once(' '))
                            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                            .map(|(_, t)| t.trim());
                        if sent != Some(token.as_str()) {
                            s.unauthorized.fetch_add(1, Ordering::Relaxed);
                            return (StatusCode::UNAUTHORIZED, "{\"code\":401}".to_string())
                                .into_response();
                        }
                    }
                    if personal(&body, &options.personal_markers) {
                        s.pii.fetch_add(1, Ordering::Relaxed);
                    }
                    let key = headers
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let first = match s.accepted.lock() {
                        Ok(mut seen) => {
                            let n = seen.entry(key).or_insert(0);
                            *n += 1;
                            *n == 1
                        }
                        Err(_) => true,
                    };
                    if !first {
                        s.replays.fetch_add(1, Ordering::Relaxed);
                        return (StatusCode::CONFLICT, "{\"code\":409}".to_string())
                            .into_response();
                    }
                    let pk = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["patient"]["pk"].as_str().map(str::to_string))
                        .unwrap_or_default();
                    if let Ok(mut p) = s.patients.lock() {
                        *p.entry(pk).or_insert(0) += 1;
                    }
                    // Slow: the CEM took the survey but answers after the bridge gave up
                    // waiting; the retry under the same key is answered 409.
                    if mode == Mode::Slow {
                        tokio::time::sleep(Duration::from_millis(2_500)).await;
                    }
                    (StatusCode::OK, "{\"code\":0}".to_string()).into_response()
                }
            }),
        );
        self.server = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}/dispatch", self.port)
    }

    /// Close the listener: new connections are refused.
    pub(crate) fn down(&mut self) {
        self.state.set(Mode::Down);
        if let Some(s) = self.server.take() {
            s.abort();
        }
    }

    pub(crate) async fn up(&mut self) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .with_context(|| {
                format!("the CEM recorder cannot listen on port {} again", self.port)
            })?;
        self.state.set(Mode::Ok);
        self.serve(listener);
        Ok(())
    }

    /// Accepted surveys, and keys accepted (2xx) more than once.
    pub(crate) fn tally(&self) -> (usize, usize, usize) {
        let (accepted, twice) = self
            .state
            .accepted
            .lock()
            .map(|a| (a.len(), a.values().filter(|n| **n > 1).count()))
            .unwrap_or((0, 0));
        let patients_twice = self
            .state
            .patients
            .lock()
            .map(|p| p.values().filter(|n| **n > 1).count())
            .unwrap_or(0);
        // A key "accepted twice" in the map is a 409 replay, counted separately; what would be
        // wrong is two 2xx for one key, which the recorder never gives — so the figure that
        // matters is patients seen twice.
        let _ = twice;
        (accepted, 0, patients_twice)
    }
}

impl Drop for Cem {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mobile_standing_alone_or_a_marker_is_personal_digits_in_a_hex_id_are_not() {
        let markers = vec!["PBENCH".to_string()];
        assert!(personal(r#"{"m":"13912345678"}"#, &markers));
        assert!(personal(r#"{"id":"PBENCH0000001"}"#, &markers));
        assert!(!personal(r#"{"job":"ab13912345678cd"}"#, &markers));
        assert!(!personal(r#"{"job":"ab13912345678cd"}"#, &[]));
    }
}
