//! The bridge's clock: wall time, or wall time shifted to start at a given instant.
//!
//! Every rule that reads "now" (due times, staleness, claiming due jobs, retries) uses this
//! clock, so tests and demos can replay dated samples as if it were their day. Set
//! `CEM_BRIDGE_CLOCK_START=2026-11-21T10:30:00+08:00` to start the clock there (it then runs at
//! normal speed); unset, it is the system clock.

use jiff::{SignedDuration, Timestamp};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Clock {
    offset: SignedDuration,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self::default()
    }

    /// A clock that reads `start` now and advances in real time.
    pub fn starting_at(start: Timestamp) -> Self {
        Self {
            offset: start.duration_since(Timestamp::now()),
        }
    }

    /// From `CEM_BRIDGE_CLOCK_START`, else the system clock.
    pub fn from_env() -> anyhow::Result<Self> {
        match std::env::var("CEM_BRIDGE_CLOCK_START") {
            Ok(v) if !v.trim().is_empty() => {
                let start: Timestamp = v.trim().parse().map_err(|e| {
                    anyhow::anyhow!(
                        "CEM_BRIDGE_CLOCK_START={v:?} is not an RFC 3339 instant such as 2026-11-21T10:30:00+08:00: {e}"
                    )
                })?;
                Ok(Self::starting_at(start))
            }
            _ => Ok(Self::system()),
        }
    }

    pub fn now(&self) -> Timestamp {
        Timestamp::now()
            .checked_add(self.offset)
            .unwrap_or_else(|_| Timestamp::now())
    }

    pub fn now_ms(&self) -> i64 {
        self.now().as_millisecond()
    }

    pub fn is_shifted(&self) -> bool {
        !self.offset.is_zero()
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
}
