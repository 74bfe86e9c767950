//! Which sources are connected and consuming: set by the ingest tasks and the ticket-queue
//! consumer, read by `/ready` and the ops page; and each source's backlog (messages waiting at
//! the broker, the rate the bridge takes them, the time to drain), set by the backlog poller.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Whether each source is connected to RabbitMQ and consuming, shared by the ingest tasks
/// (which set it) and `/ready` (which reads it). Keyed by connector name.
#[derive(Debug, Clone, Default)]
pub struct SourceHealth {
    connected: Arc<Mutex<BTreeMap<String, bool>>>,
    /// Where listening doors are bound (their real port when the config said 0), and their kind.
    addresses: Arc<Mutex<BTreeMap<String, (SocketAddr, &'static str)>>>,
    /// Deliveries acked per source since the start (the backlog poller's rate).
    acked: Arc<Mutex<BTreeMap<String, u64>>>,
    backlog: Arc<Mutex<BTreeMap<String, Backlog>>>,
    /// Each source's kind (`amqp`, `mllp`, `soap`), for the page.
    kinds: Arc<Mutex<BTreeMap<String, &'static str>>>,
}

/// A source's backlog as last polled.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Backlog {
    /// Messages ready at the broker (AMQP); `None` for a listening door, or before the first
    /// poll answered.
    pub depth: Option<u64>,
    /// Messages acked per second over the last poll interval.
    pub rate_per_s: f64,
}

impl Backlog {
    /// Seconds to take the waiting messages at the current rate; `None` when nothing is taken.
    pub fn drain_seconds(&self) -> Option<u64> {
        let depth = self.depth?;
        if depth == 0 {
            return Some(0);
        }
        (self.rate_per_s > 0.0).then(|| (depth as f64 / self.rate_per_s).ceil() as u64)
    }
}

impl SourceHealth {
    /// Known sources, all disconnected.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let map = names.into_iter().map(|n| (n.to_string(), false)).collect();
        Self {
            connected: Arc::new(Mutex::new(map)),
            addresses: Arc::default(),
            acked: Arc::default(),
            backlog: Arc::default(),
            kinds: Arc::default(),
        }
    }

    pub fn set_kind(&self, connector: &str, kind: &'static str) {
        self.kinds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(connector.to_string(), kind);
    }

    /// A source's kind, once set.
    pub fn kind(&self, connector: &str) -> Option<&'static str> {
        self.kinds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(connector)
            .copied()
    }

    /// Count deliveries a source acked.
    pub fn note_acked(&self, connector: &str, n: u64) {
        let mut m = self
            .acked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *m.entry(connector.to_string()).or_default() += n;
    }

    /// Deliveries a source acked since the start.
    pub fn acked(&self, connector: &str) -> u64 {
        self.acked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(connector)
            .copied()
            .unwrap_or(0)
    }

    pub fn set_backlog(&self, connector: &str, backlog: Backlog) {
        self.backlog
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(connector.to_string(), backlog);
    }

    /// A source's backlog as last polled (default before the first poll).
    pub fn backlog(&self, connector: &str) -> Backlog {
        self.backlog
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(connector)
            .copied()
            .unwrap_or_default()
    }

    /// Record where a listening door of this kind is bound (nothing for a consuming door).
    pub fn set_address(&self, connector: &str, kind: &'static str, addr: Option<SocketAddr>) {
        let mut m = self
            .addresses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match addr {
            Some(a) => m.insert(connector.to_string(), (a, kind)),
            None => m.remove(connector),
        };
    }

    /// Where a listening door is bound, once it is, and its kind.
    pub fn address(&self, connector: &str) -> Option<(SocketAddr, &'static str)> {
        self.addresses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(connector)
            .copied()
    }

    pub fn set_connected(&self, connector: &str, connected: bool) {
        let mut m = self
            .connected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.insert(connector.to_string(), connected);
    }

    /// Every source and whether it is connected, by name.
    pub fn snapshot(&self) -> BTreeMap<String, bool> {
        self.connected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_health_starts_disconnected_and_follows_the_sources() {
        let h = SourceHealth::new(["adt", "lab"]);
        assert_eq!(
            h.snapshot().into_iter().collect::<Vec<_>>(),
            [("adt".to_string(), false), ("lab".to_string(), false)]
        );
        h.set_connected("adt", true);
        assert_eq!(h.snapshot().get("adt"), Some(&true));
        h.clone().set_connected("adt", false);
        assert_eq!(h.snapshot().get("adt"), Some(&false), "clones share state");
    }
}
