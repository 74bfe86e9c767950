//! Which sources are connected and consuming: set by the ingest tasks and the ticket-queue
//! consumer, read by `/ready` and the ops page.

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
}

impl SourceHealth {
    /// Known sources, all disconnected.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let map = names.into_iter().map(|n| (n.to_string(), false)).collect();
        Self {
            connected: Arc::new(Mutex::new(map)),
            addresses: Arc::default(),
        }
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
