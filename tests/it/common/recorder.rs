//! An in-process HTTP recorder standing in for the CEM, HCRM or the call center: what it received,
//! and replies scripted per request.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

use super::*;

/// One request the recorder received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub idempotency_key: Option<String>,
    pub authorization: Option<String>,
    pub body: String,
    pub json: serde_json::Value,
    pub status: u16,
    /// When it arrived.
    pub at: Instant,
}

/// One scripted answer.
#[derive(Debug, Clone, Default)]
struct Reply {
    status: u16,
    body: String,
    /// A `Retry-After` header, in seconds.
    retry_after: Option<u32>,
    /// Answer only after this long (to trip the sender's timeout).
    delay: Duration,
}

#[derive(Default)]
struct RecorderState {
    requests: Vec<Recorded>,
    script: VecDeque<Reply>,
    accepted: HashSet<String>,
}

/// An in-process CEM: records every request; answers from a script, then `200 {"code":0}`;
/// like a real idempotent API, a key it already accepted gets `409`.
#[derive(Clone)]
pub struct Recorder {
    state: Arc<Mutex<RecorderState>>,
    pub addr: SocketAddr,
}

impl Recorder {
    /// Wait up to `secs` until exactly `n` requests were accepted.
    pub async fn wait_accepted(&self, n: usize, secs: u64, what: &str) {
        wait_for(secs, what, || {
            let me = self.clone();
            async move { (me.accepted().len() == n).then_some(()) }
        })
        .await;
    }

    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(RecorderState::default()));
        let app = Router::new()
            .route("/surveys/dispatch", post(record))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { state, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}/surveys/dispatch", self.addr)
    }

    /// Answer the next requests with these statuses and bodies, in order.
    pub fn script(&self, responses: &[(u16, &str)]) {
        let mut s = self.state.lock().unwrap();
        s.script.extend(responses.iter().map(|(c, b)| Reply {
            status: *c,
            body: b.to_string(),
            ..Default::default()
        }));
    }

    /// Answer the next request `429` with `Retry-After: {secs}`.
    pub fn script_retry_after(&self, secs: u32) {
        self.state.lock().unwrap().script.push_back(Reply {
            status: 429,
            body: r#"{"code":429,"msg":"too many requests"}"#.into(),
            retry_after: Some(secs),
            ..Default::default()
        });
    }

    /// Take the next request (a 2xx, remembered as accepted) but answer only after `delay`.
    pub fn script_slow(&self, delay: Duration) {
        self.state.lock().unwrap().script.push_back(Reply {
            status: 200,
            body: r#"{"code":0,"data":{"deliveryId":"d-slow"}}"#.into(),
            delay,
            ..Default::default()
        });
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The first accepted request, waited for up to 20 s.
    pub async fn first_accepted(&self) -> Recorded {
        wait_for(20, "one push", || {
            let r = self.accepted().into_iter().next();
            async move { r }
        })
        .await
    }

    /// Requests answered with a 2xx (surveys the CEM took).
    pub fn accepted(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }
}

async fn record(
    State(state): State<Arc<Mutex<RecorderState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let h = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let key = h("idempotency-key");
    let text = String::from_utf8_lossy(&body).into_owned();
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    let reply = {
        let mut s = state.lock().unwrap();
        let reply = if let Some(scripted) = s.script.pop_front() {
            scripted
        } else if key.as_ref().is_some_and(|k| s.accepted.contains(k)) {
            Reply {
                status: 409,
                body: r#"{"code":409,"msg":"idempotency key already used"}"#.to_string(),
                ..Default::default()
            }
        } else {
            Reply {
                status: 200,
                body: r#"{"code":0,"data":{"deliveryId":"d-1"}}"#.to_string(),
                ..Default::default()
            }
        };
        if (200..300).contains(&reply.status)
            && reply.body.contains("\"code\":0")
            && let Some(k) = &key
        {
            s.accepted.insert(k.clone());
        }
        s.requests.push(Recorded {
            idempotency_key: key,
            authorization: h("authorization"),
            body: text,
            json,
            status: reply.status,
            at: Instant::now(),
        });
        reply
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match reply.retry_after {
        Some(secs) => (status, [("retry-after", secs.to_string())], reply.body).into_response(),
        None => (status, reply.body).into_response(),
    }
}
