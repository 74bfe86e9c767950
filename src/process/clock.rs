//! The bridge's clock: wall time, or wall time shifted to start at a given instant.
//!
//! Every rule that reads "now" (due times, staleness, claiming due jobs, retries) uses this
//! clock, so tests and demos can replay dated samples as if it were their day. Set
//! `CEM_BRIDGE_CLOCK_START=2026-11-21T10:30:00+08:00` to start the clock there (it then runs at
//! normal speed); unset, it is the system clock.
//!
//! Clones share one offset: [`Clock::set`] moves every component of a running bridge at once
//! (the worked-example tests jump days and weeks between steps this way).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use jiff::{SignedDuration, Timestamp};

/// `CEM_BRIDGE_CLOCK_START` is set but is not an instant.
#[derive(Debug, thiserror::Error)]
#[error(
    "CEM_BRIDGE_CLOCK_START={value:?} is not an RFC 3339 instant such as 2026-11-21T10:30:00+08:00: {why}"
)]
pub struct ClockError {
    value: String,
    why: String,
}

#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// Nanoseconds added to the system time; shared by every clone.
    offset_ns: Arc<AtomicI64>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self::default()
    }

    /// A clock that reads `start` now and advances in real time.
    pub fn starting_at(start: Timestamp) -> Self {
        let c = Self::default();
        c.set(start);
        c
    }

    /// Make this clock and every clone of it read `at` now (then advance in real time).
    pub fn set(&self, at: Timestamp) {
        let offset = at.duration_since(Timestamp::now());
        let ns = i64::try_from(offset.as_nanos()).unwrap_or(0);
        self.offset_ns.store(ns, Ordering::SeqCst);
    }

    fn offset(&self) -> SignedDuration {
        SignedDuration::from_nanos(self.offset_ns.load(Ordering::SeqCst))
    }

    /// From `CEM_BRIDGE_CLOCK_START`, else the system clock.
    pub fn from_env() -> Result<Self, ClockError> {
        match std::env::var("CEM_BRIDGE_CLOCK_START") {
            Ok(v) if !v.trim().is_empty() => {
                let start: Timestamp = v.trim().parse().map_err(|e: jiff::Error| ClockError {
                    value: v.clone(),
                    why: e.to_string(),
                })?;
                Ok(Self::starting_at(start))
            }
            _ => Ok(Self::system()),
        }
    }

    pub fn now(&self) -> Timestamp {
        Timestamp::now()
            .checked_add(self.offset())
            .unwrap_or_else(|_| Timestamp::now())
    }

    pub fn now_ms(&self) -> i64 {
        self.now().as_millisecond()
    }

    pub fn is_shifted(&self) -> bool {
        !self.offset().is_zero()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_started_clock_reads_its_start_and_advances() {
        let start: Timestamp = "2026-11-21T02:30:00Z".parse().unwrap();
        let c = Clock::starting_at(start);
        let d = c.now().duration_since(start);
        assert!(
            d >= SignedDuration::ZERO && d < SignedDuration::from_secs(5),
            "{d:?}"
        );
        assert!(c.is_shifted());
        assert!(!Clock::system().is_shifted());
    }

    #[test]
    fn setting_a_clone_moves_every_clone() {
        let c = Clock::starting_at("2026-11-21T02:30:00Z".parse().unwrap());
        let other = c.clone();
        let later: Timestamp = "2026-12-20T03:30:00Z".parse().unwrap();
        other.set(later);
        let d = c.now().duration_since(later);
        assert!(
            d >= SignedDuration::ZERO && d < SignedDuration::from_secs(5),
            "{d:?}"
        );
    }
}
