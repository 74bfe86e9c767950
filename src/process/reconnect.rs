//! A door's link, kept up: open a [`Source`] from its [`SourceBuilder`], and after a failure
//! open it again with backoff (0.5 s doubling to 30 s, back to 0.5 s once connected) until
//! shutdown. Shared by the `[[source]]` ingest tasks and the `[tickets.queue]` consumer.

use std::time::Duration;

use cem_connectors::source::{SourceBuilder, SourceError};
use tracing::{info, warn};

use crate::process::shutdown::Shutdown;

pub struct Reconnect<'a, B> {
    builder: &'a B,
    connector: &'a str,
    backoff: Duration,
}

impl<'a, B: SourceBuilder> Reconnect<'a, B> {
    pub fn new(builder: &'a B, connector: &'a str) -> Self {
        Self {
            builder,
            connector,
            backoff: Duration::from_millis(500),
        }
    }

    /// The next link, retried with backoff while the other side is unreachable; `None` once
    /// shutdown is requested.
    pub async fn connect(&mut self, shutdown: &mut Shutdown) -> Option<B::Source> {
        loop {
            if shutdown.is_triggered() {
                return None;
            }
            match self.builder.connect().await {
                Ok(source) => {
                    info!(connector = self.connector, from = %self.builder.describe(), "consuming");
                    self.backoff = Duration::from_millis(500);
                    return Some(source);
                }
                Err(e) => {
                    warn!(connector = self.connector, from = %self.builder.describe(), error = %e,
                          retry_in_ms = self.backoff.as_millis() as u64, "cannot open the source");
                }
            }
            if !self.wait(shutdown).await {
                return None;
            }
        }
    }

    /// A consumer ended with `r`: `false` to stop (it stopped for shutdown, or shutdown came
    /// during the wait), `true` to reconnect after the backoff.
    pub async fn ended(&mut self, r: Result<(), SourceError>, shutdown: &mut Shutdown) -> bool {
        match r {
            Ok(()) => false,
            Err(e) => {
                warn!(connector = self.connector, error = %e, "consumer stopped; reconnecting");
                self.wait(shutdown).await
            }
        }
    }

    /// Sleep the backoff and double it; `false` if shutdown came first.
    async fn wait(&mut self, shutdown: &mut Shutdown) -> bool {
        if shutdown.sleep(self.backoff).await {
            return false;
        }
        self.backoff = (self.backoff * 2).min(Duration::from_secs(30));
        true
    }
}
