//! A backlog you can see: every [`POLL_INTERVAL`] the messages ready in each AMQP source's
//! queue (a passive declare on a connection of the poller's own, so a slow or blocked consumer
//! does not hide its own backlog), the rate the bridge acked over the interval, and from the
//! two the time to drain. Set in `cem_bridge_source_queue_depth{connector}` and the
//! [`SourceHealth`] `/api/summary` and the ops page read. A listening door (MLLP, SOAP) has no
//! queue: its senders wait, so only its rate is shown.

use std::time::{Duration, Instant};

use cem_connectors::amqp::QueueProbe;
use metrics::gauge;
use tracing::debug;

use crate::config::source::{SourceConfig, SourceKind};
use crate::process::health::{Backlog, SourceHealth};
use crate::process::shutdown::Shutdown;

/// How often the depths are read.
pub const POLL_INTERVAL: Duration = Duration::from_secs(15);

/// One source the poller watches.
struct Watched {
    name: String,
    /// (broker URL, queue) for an AMQP source.
    queue: Option<(String, String)>,
    acked: u64,
}

/// The poller's state between rounds: the sources, their last acked counts and the
/// connections it opened (one per broker URL, reopened when dropped).
pub struct Poller {
    watched: Vec<Watched>,
    probes: Vec<(String, QueueProbe)>,
    health: SourceHealth,
    last: Instant,
}

impl Poller {
    pub fn new(sources: &[SourceConfig], health: SourceHealth) -> Self {
        let watched = sources
            .iter()
            .map(|s| Watched {
                name: s.name.clone(),
                queue: (s.kind == SourceKind::Amqp).then(|| (s.url.clone(), s.queue.clone())),
                acked: health.acked(&s.name),
            })
            .collect();
        Self {
            watched,
            probes: Vec::new(),
            health,
            last: Instant::now(),
        }
    }

    async fn probe(&mut self, url: &str) -> Option<&QueueProbe> {
        if let Some(i) = self.probes.iter().position(|(u, _)| u == url) {
            if self.probes[i].1.is_open() {
                return Some(&self.probes[i].1);
            }
            let (_, old) = self.probes.swap_remove(i);
            old.close().await;
        }
        match QueueProbe::connect(url).await {
            Ok(p) => {
                self.probes.push((url.to_string(), p));
                self.probes.last().map(|(_, p)| p)
            }
            Err(e) => {
                debug!(error = %e, "backlog: cannot connect to read queue depths; next round");
                None
            }
        }
    }

    /// Read every depth and rate once.
    pub async fn poll_once(&mut self) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64().max(0.001);
        self.last = now;
        for i in 0..self.watched.len() {
            let (name, queue, before) = {
                let w = &self.watched[i];
                (w.name.clone(), w.queue.clone(), w.acked)
            };
            let acked = self.health.acked(&name);
            self.watched[i].acked = acked;
            let rate_per_s = acked.saturating_sub(before) as f64 / elapsed;
            let depth = match &queue {
                Some((url, q)) => match self.probe(url).await {
                    Some(p) => match p.depth(q).await {
                        Ok(d) => Some(u64::from(d)),
                        Err(e) => {
                            debug!(connector = %name, error = %e, "backlog: cannot read the queue depth");
                            None
                        }
                    },
                    None => None,
                },
                None => None,
            };
            if let Some(d) = depth {
                gauge!("cem_bridge_source_queue_depth", "connector" => name.clone()).set(d as f64);
            }
            self.health
                .set_backlog(&name, Backlog { depth, rate_per_s });
        }
    }

    /// Whether an AMQP source has no depth yet (its queue not declared, the broker down).
    fn missing_depth(&self) -> bool {
        self.watched
            .iter()
            .any(|w| w.queue.is_some() && self.health.backlog(&w.name).depth.is_none())
    }

    /// Poll until shutdown, then close the connections. Every second until every AMQP source
    /// has a depth (its consumer declares the queue just after the start), then every
    /// [`POLL_INTERVAL`].
    pub async fn run(mut self, mut shutdown: Shutdown) {
        loop {
            self.poll_once().await;
            let next = if self.missing_depth() {
                Duration::from_secs(1)
            } else {
                POLL_INTERVAL
            };
            tokio::select! {
                _ = tokio::time::sleep(next) => {}
                _ = shutdown.wait() => break,
            }
        }
        for (_, p) in self.probes {
            p.close().await;
        }
    }
}
