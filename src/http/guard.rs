//! Who may call the server's guarded routes: the bearer scheme read as RFC 7235 says
//! (case-insensitive), and failed authentications throttled per peer address.
//!
//! Every guarded route (the ops data routes, `POST /contact/resolve`, the CEM's two webhooks
//! and the call center's) reports a failed authentication to one [`AuthThrottle`]. A peer that
//! fails more than [`FAILURES_PER_MINUTE`] times within a minute is answered 429 with
//! `Retry-After` on every guarded route — right or wrong credentials — until its quota
//! refills, so a token or a webhook secret cannot be guessed at network speed. Counted in
//! `cem_bridge_auth_failures_total{endpoint}` and `cem_bridge_auth_throttled_total{endpoint}`;
//! the moment a peer is locked out is logged once as a warning with its address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use metrics::counter;
use serde_json::json;
use tracing::warn;

/// Failed authentications a peer may make per minute (also the burst) before it is throttled.
pub const FAILURES_PER_MINUTE: u32 = 10;
/// Locked-out peers remembered at most; beyond it the expired entries are dropped.
const MAX_LOCKED: usize = 4096;

/// The token of an `Authorization: Bearer <token>` header; the scheme in any case (RFC 7235
/// §2.1), surrounding spaces ignored. `None` for another scheme or no header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The peer's address, when the server was started with connection info (it always is;
/// a router driven without it — a unit test — has none, and all such callers share one quota).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// Failed authentications per peer address, and the peers locked out.
pub struct AuthThrottle {
    failures: DefaultKeyedRateLimiter<IpAddr>,
    locked: Mutex<HashMap<IpAddr, Instant>>,
    clock: DefaultClock,
}

impl Default for AuthThrottle {
    fn default() -> Self {
        Self::new(FAILURES_PER_MINUTE)
    }
}

/// The key of a caller without an address (never a real peer's).
const NO_ADDRESS: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

impl AuthThrottle {
    pub fn new(per_minute: u32) -> Self {
        let n = NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        Self {
            failures: RateLimiter::keyed(Quota::per_minute(n)),
            locked: Mutex::new(HashMap::new()),
            clock: DefaultClock::default(),
        }
    }

    /// How long `peer` must still wait, if it is locked out. Call before checking credentials.
    pub fn locked(&self, peer: Peer, endpoint: &'static str) -> Option<Duration> {
        let ip = peer.0.unwrap_or(NO_ADDRESS);
        let now = Instant::now();
        let mut locked = self.locked.lock().unwrap_or_else(|p| p.into_inner());
        match locked.get(&ip) {
            Some(until) if *until > now => {
                counter!("cem_bridge_auth_throttled_total", "endpoint" => endpoint).increment(1);
                Some(*until - now)
            }
            Some(_) => {
                locked.remove(&ip);
                None
            }
            None => None,
        }
    }

    /// Count a failed authentication by `peer`; returns the wait when this failure locked it out.
    pub fn failed(&self, peer: Peer, endpoint: &'static str) -> Option<Duration> {
        counter!("cem_bridge_auth_failures_total", "endpoint" => endpoint).increment(1);
        let ip = peer.0.unwrap_or(NO_ADDRESS);
        let Err(not_until) = self.failures.check_key(&ip) else {
            return None;
        };
        let wait = not_until
            .wait_time_from(self.clock.now())
            .max(Duration::from_secs(1));
        let now = Instant::now();
        let mut locked = self.locked.lock().unwrap_or_else(|p| p.into_inner());
        if locked.len() >= MAX_LOCKED {
            locked.retain(|_, until| *until > now);
            self.failures.retain_recent();
        }
        locked.insert(ip, now + wait);
        drop(locked);
        counter!("cem_bridge_auth_throttled_total", "endpoint" => endpoint).increment(1);
        warn!(
            peer = %ip,
            endpoint,
            retry_after_s = wait.as_secs(),
            "more than {FAILURES_PER_MINUTE} failed authentications in a minute from one address: its requests are refused with 429 until the wait is over"
        );
        Some(wait)
    }
}

/// The 429 a locked-out peer gets: JSON like every other answer, with `Retry-After`.
pub fn throttled(wait: Duration) -> Response {
    let secs = wait.as_secs().max(1);
    let mut r = (
        StatusCode::TOO_MANY_REQUESTS,
        axum::Json(json!({
            "code": 429,
            "error": "throttled",
            "message": format!("too many failed authentications from this address; retry after {secs} s with the right credentials"),
        })),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for v in ["Bearer abc", "bearer abc", "BEARER abc", "  bEaReR   abc  "] {
            assert_eq!(bearer(&auth(v)), Some("abc"), "{v:?}");
        }
        for v in ["Basic abc", "Bearerabc", "Bearer ", "Bearer"] {
            assert_eq!(bearer(&auth(v)), None, "{v:?}");
        }
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn a_peer_is_locked_out_after_its_quota_and_others_are_not() {
        let t = AuthThrottle::new(3);
        let a = Peer(Some("10.0.0.1".parse().unwrap()));
        let b = Peer(Some("10.0.0.2".parse().unwrap()));
        for _ in 0..3 {
            assert_eq!(t.locked(a, "test"), None);
            assert_eq!(t.failed(a, "test"), None);
        }
        let wait = t
            .failed(a, "test")
            .expect("the fourth failure locks the peer out");
        assert!(
            wait >= Duration::from_secs(1) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(t.locked(a, "test").is_some());
        assert_eq!(t.locked(b, "test"), None, "another address is not affected");
        assert_eq!(t.failed(b, "test"), None);
    }
}
