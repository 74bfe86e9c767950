//! One resilience block for every HTTP sink (CEM, HCRM, AI call center): a governor rate limit,
//! a circuit breaker, and the retry schedule (exponential backoff with jitter, `Retry-After`
//! honoured). The timeout is the sink's HTTP client's; the idempotency key is the caller's.
//!
//! Retries themselves are durable: the store keeps the next attempt time of each job or outbox
//! row, so a retry survives a restart. This block only says *when* ([`Resilience::retry_delay`]).
//!
//! Breaker: after `breaker_failures` consecutive failures (5xx, 429, timeout, connection error)
//! the breaker opens for `breaker_open_ms`; requests then fail at once with
//! [`SendOutcome::BreakerOpen`] without touching the peer. When the time is up one probe goes
//! through (half-open): success closes the breaker, failure opens it again.

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::http_sink::SendOutcome;

/// The resilience block of one HTTP sink (`[cem.limits]`, `[hcrm.limits]`,
/// `[callcenter.limits]`, `[cem_results.limits]`): one type for the config and the runtime.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
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

impl Limits {
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

impl Default for Limits {
    fn default() -> Self {
        Self {
            rate_per_sec: 20,
            burst: 20,
            max_attempts: 10,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 600_000,
            breaker_failures: 5,
            breaker_open_ms: 30_000,
        }
    }
}

/// Breaker state, also the value of `cem_bridge_sink_breaker_state{sink}` (0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::Open => 1.0,
            Self::HalfOpen => 2.0,
        }
    }
}

#[derive(Debug)]
enum Breaker {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe in flight; others are refused until it reports.
    HalfOpen,
}

/// The shared block; one per sink, shared by all its tasks.
pub struct Resilience {
    sink: &'static str,
    limits: Limits,
    limiter: DefaultDirectRateLimiter,
    breaker: Mutex<Breaker>,
}

impl std::fmt::Debug for Resilience {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resilience")
            .field("sink", &self.sink)
            .field("limits", &self.limits)
            .finish()
    }
}

impl Resilience {
    /// `sink` is the metric label (`cem`, `hcrm`, `callcenter`).
    pub fn new(sink: &'static str, limits: Limits) -> Self {
        let rate = NonZeroU32::new(limits.rate_per_sec.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let limiter = RateLimiter::direct(Quota::per_second(rate).allow_burst(burst));
        metrics::gauge!("cem_bridge_sink_breaker_state", "sink" => sink).set(0.0);
        Self {
            sink,
            limits,
            limiter,
            breaker: Mutex::new(Breaker::Closed { failures: 0 }),
        }
    }

    pub fn sink(&self) -> &'static str {
        self.sink
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn state(&self) -> BreakerState {
        match &*self.lock() {
            Breaker::Closed { .. } => BreakerState::Closed,
            Breaker::Open { until } if Instant::now() < *until => BreakerState::Open,
            Breaker::Open { .. } | Breaker::HalfOpen => BreakerState::HalfOpen,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        // A panic while holding this lock cannot leave the state torn (plain enum writes).
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run one request under the limits: refuse at once if the breaker is open, wait for the
    /// rate limiter, send, feed the outcome to the breaker, count it.
    pub async fn call<F, Fut>(&self, send: F) -> SendOutcome
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = SendOutcome>,
    {
        if let Some(wait) = self.admit() {
            let o = SendOutcome::BreakerOpen { retry_in: wait };
            self.count(&o);
            return o;
        }
        if self.limiter.check().is_err() {
            metrics::counter!("cem_bridge_sink_rate_limited_total", "sink" => self.sink)
                .increment(1);
            self.limiter.until_ready().await;
        }
        let o = send().await;
        self.report(&o);
        self.count(&o);
        o
    }

    fn count(&self, o: &SendOutcome) {
        metrics::counter!("cem_bridge_sink_requests_total", "sink" => self.sink,
                          "outcome" => o.label())
        .increment(1);
    }

    /// `None` = go ahead; `Some(wait)` = the breaker is open for about `wait` more.
    fn admit(&self) -> Option<Duration> {
        if self.limits.breaker_failures == 0 {
            return None;
        }
        let mut b = self.lock();
        match &*b {
            Breaker::Closed { .. } => None,
            Breaker::Open { until } => {
                let now = Instant::now();
                if now < *until {
                    Some(*until - now)
                } else {
                    *b = Breaker::HalfOpen;
                    self.set_gauge(BreakerState::HalfOpen);
                    None
                }
            }
            Breaker::HalfOpen => Some(Duration::from_millis(
                self.limits.breaker_open_ms.min(1_000),
            )),
        }
    }

    /// Feed an outcome to the breaker. A permanent 4xx says the peer is up: it closes it.
    fn report(&self, o: &SendOutcome) {
        if self.limits.breaker_failures == 0 {
            return;
        }
        let failed = matches!(o, SendOutcome::Retryable { .. });
        let mut b = self.lock();
        let next = match (&*b, failed) {
            (_, false) => Breaker::Closed { failures: 0 },
            (Breaker::Closed { failures }, true) if failures + 1 < self.limits.breaker_failures => {
                Breaker::Closed {
                    failures: failures + 1,
                }
            }
            (_, true) => {
                tracing::warn!(
                    sink = self.sink,
                    open_ms = self.limits.breaker_open_ms,
                    "circuit breaker opened: the peer keeps failing"
                );
                Breaker::Open {
                    until: Instant::now() + Duration::from_millis(self.limits.breaker_open_ms),
                }
            }
        };
        let state = match next {
            Breaker::Closed { .. } => BreakerState::Closed,
            Breaker::Open { .. } => BreakerState::Open,
            Breaker::HalfOpen => BreakerState::HalfOpen,
        };
        if matches!(*b, Breaker::HalfOpen | Breaker::Open { .. }) && state == BreakerState::Closed {
            tracing::info!(
                sink = self.sink,
                "circuit breaker closed: the peer answers again"
            );
        }
        *b = next;
        self.set_gauge(state);
    }

    fn set_gauge(&self, s: BreakerState) {
        metrics::gauge!("cem_bridge_sink_breaker_state", "sink" => self.sink).set(s.gauge());
    }

    /// When to try again after `outcome` on attempt `attempts` (1-based), or `None` when it is
    /// given up (permanent, or `max_attempts` reached). A breaker refusal is not an attempt
    /// the peer saw, but it counts, so a peer down for hours still ends in `dead`.
    pub fn retry_delay(&self, outcome: &SendOutcome, key: &str, attempts: u32) -> Option<Duration> {
        match outcome {
            SendOutcome::Accepted { .. } | SendOutcome::Permanent { .. } => None,
            _ if attempts >= self.limits.max_attempts => None,
            SendOutcome::Retryable {
                retry_after: Some(r),
                ..
            } => Some((*r).max(Duration::from_millis(self.limits.backoff_initial_ms))),
            SendOutcome::BreakerOpen { retry_in } => {
                Some((*retry_in).max(backoff(&self.limits, key, attempts)))
            }
            SendOutcome::Retryable { .. } => Some(backoff(&self.limits, key, attempts)),
        }
    }
}

/// Delay before attempt `attempts + 1`: initial × 2^(attempts−1), capped, with ±20 % jitter
/// derived from `key` (deterministic, so tests can reason about it, yet spread across keys).
pub fn backoff(limits: &Limits, key: &str, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let base = limits
        .backoff_initial_ms
        .saturating_mul(1u64 << exp)
        .min(limits.backoff_max_ms);
    let seed = key.bytes().fold(u64::from(attempts), |h, b| {
        h.wrapping_mul(31).wrapping_add(u64::from(b))
    });
    let jitter_pct = (seed % 41) as i64 - 20; // -20..=20
    let ms = (base as i64 + base as i64 * jitter_pct / 100).max(0) as u64;
    Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(failures: u32, open_ms: u64) -> Limits {
        Limits {
            rate_per_sec: 1_000,
            burst: 1_000,
            max_attempts: 3,
            backoff_initial_ms: 100,
            backoff_max_ms: 1_000,
            breaker_failures: failures,
            breaker_open_ms: open_ms,
        }
    }

    fn fail() -> SendOutcome {
        SendOutcome::Retryable {
            status: Some(503),
            retry_after: None,
            detail: "HTTP 503".into(),
        }
    }

    /// Breaker: closed → open after N failures (peer not called) → half-open probe → closed.
    #[tokio::test]
    async fn breaker_opens_half_opens_and_closes() {
        let r = Resilience::new("test", limits(2, 150));
        let calls = std::sync::atomic::AtomicU32::new(0);
        let send = |o: SendOutcome| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { o }
        };
        assert_eq!(r.call(|| send(fail())).await.label(), "5xx");
        assert_eq!(r.state(), BreakerState::Closed);
        assert_eq!(r.call(|| send(fail())).await.label(), "5xx");
        assert_eq!(r.state(), BreakerState::Open);
        let refused = r.call(|| send(SendOutcome::Accepted { status: 200 })).await;
        assert_eq!(refused.label(), "breaker_open");
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "peer not called"
        );
        tokio::time::sleep(Duration::from_millis(170)).await;
        assert_eq!(r.state(), BreakerState::HalfOpen);
        // The probe fails: open again.
        assert_eq!(r.call(|| send(fail())).await.label(), "5xx");
        assert_eq!(r.state(), BreakerState::Open);
        tokio::time::sleep(Duration::from_millis(170)).await;
        let ok = r.call(|| send(SendOutcome::Accepted { status: 200 })).await;
        assert_eq!(ok.label(), "2xx");
        assert_eq!(r.state(), BreakerState::Closed);
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_permanent_4xx_does_not_open_the_breaker() {
        let r = Resilience::new("test", limits(1, 10_000));
        let o = r
            .call(|| async {
                SendOutcome::Permanent {
                    status: 400,
                    detail: "HTTP 400".into(),
                }
            })
            .await;
        assert_eq!(o.label(), "4xx");
        assert_eq!(r.state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn the_rate_limit_spaces_requests() {
        let mut l = limits(0, 0);
        l.rate_per_sec = 20;
        l.burst = 1;
        let r = Resilience::new("test", l);
        let start = Instant::now();
        for _ in 0..5 {
            r.call(|| async { SendOutcome::Accepted { status: 200 } })
                .await;
        }
        // 1 at once, then 4 at 20/s = 200 ms.
        assert!(
            start.elapsed() >= Duration::from_millis(180),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn retry_delay_honours_retry_after_and_max_attempts() {
        let r = Resilience::new("test", limits(0, 0));
        let ra = SendOutcome::Retryable {
            status: Some(429),
            retry_after: Some(Duration::from_secs(7)),
            detail: "rate limited".into(),
        };
        assert_eq!(r.retry_delay(&ra, "k", 1), Some(Duration::from_secs(7)));
        assert_eq!(r.retry_delay(&ra, "k", 3), None, "max_attempts reached");
        let d = r.retry_delay(&fail(), "k", 2).unwrap();
        assert!((160..=240).contains(&d.as_millis()), "{d:?}");
        assert_eq!(
            r.retry_delay(
                &SendOutcome::Permanent {
                    status: 400,
                    detail: String::new()
                },
                "k",
                1
            ),
            None
        );
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let l = limits(0, 0);
        let d1 = backoff(&l, "a", 1).as_millis();
        let d3 = backoff(&l, "a", 3).as_millis();
        let d9 = backoff(&l, "a", 9).as_millis();
        assert!((80..=120).contains(&d1), "{d1}");
        assert!((320..=480).contains(&d3), "{d3}");
        assert!((800..=1200).contains(&d9), "{d9}");
        let spread: std::collections::HashSet<u128> = (0..20)
            .map(|i| backoff(&l, &format!("k{i}"), 2).as_millis())
            .collect();
        assert!(spread.len() > 3, "jitter spreads keys: {spread:?}");
    }
}
