//! The outbound side of a connector: a [`Sink`] sends one JSON request to one [`Peer`] under
//! that peer's resilience block and says what became of it ([`SendOutcome`]).
//!
//! [`PeerSink`] is the one implementation the bridge runs for every peer — real HTTP
//! ([`crate::http_sink::HttpSink`]) or `shadow` (append to a JSONL file), behind its own
//! [`Resilience`] (rate limit, circuit breaker, retry schedule). What differs per peer — the
//! request body and its config section — lives in the bridge's `sinks/` folder, one file a
//! peer. The caller keeps every request durable in its store before it calls [`Sink::push`] and
//! records the outcome after, so a crash repeats a request under the same idempotency key.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::http_sink::{
    BuildError, HttpSink, HttpSinkConfig, SendOutcome, ShadowSink, SuccessRule,
};
use crate::resilience::{Limits, Resilience};

/// The peers a bridge sends to. Its code is the metric label `sink` and the outbox's `sink`
/// column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    /// The CEM's survey dispatch (`[cem]`).
    Cem,
    /// The hospital CRM (`[hcrm]`): ticket cases.
    Hcrm,
    /// The AI call center (`[callcenter]`): call tasks.
    CallCenter,
    /// The CEM's call-outcome endpoint (`[cem_results]`).
    CemResults,
}

impl Peer {
    pub const ALL: [Peer; 4] = [Peer::Cem, Peer::Hcrm, Peer::CallCenter, Peer::CemResults];

    pub fn code(self) -> &'static str {
        match self {
            Self::Cem => "cem",
            Self::Hcrm => "hcrm",
            Self::CallCenter => "callcenter",
            Self::CemResults => "cem_results",
        }
    }

    /// The peer a stored `sink` code names; `None` for a code this binary does not know.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.code() == code)
    }
}

/// Something that sends requests to one peer.
pub trait Sink: Send + Sync {
    fn peer(&self) -> Peer;

    /// Send one JSON body under the peer's limits, with its idempotency key.
    fn push(&self, idempotency_key: &str, body: &[u8]) -> impl Future<Output = SendOutcome> + Send;

    /// `shadow` mode: requests go to a local file, so nothing re-identified may go in them.
    fn is_shadow(&self) -> bool;

    /// The peer's limits and retry schedule.
    fn resilience(&self) -> &Resilience;

    /// Where requests go, for logs: `http URL` or `shadow file PATH`.
    fn describe(&self) -> String;
}

/// Where a [`PeerSink`] sends.
#[derive(Debug, Clone)]
pub enum Target {
    Http(HttpSinkConfig),
    /// Append to `file`; `url` is written on each line (`shadow://{peer}` when none is set).
    Shadow {
        file: PathBuf,
        url: String,
    },
}

/// Stamps a shadow line with the bridge's time (RFC 3339), not the wall clock.
pub type Stamp = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Debug)]
enum Kind {
    Http(HttpSink),
    Shadow(ShadowSink),
}

/// Why a sink could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Http(#[from] BuildError),
    #[error("cannot open the shadow file {path}: {cause}; check [{peer}] shadow_file")]
    Shadow {
        path: String,
        peer: &'static str,
        cause: std::io::Error,
    },
}

/// One peer as configured: HTTP or shadow, behind its own resilience block.
#[derive(Clone)]
pub struct PeerSink {
    peer: Peer,
    kind: Arc<Kind>,
    guard: Arc<Resilience>,
    stamp: Stamp,
}

impl std::fmt::Debug for PeerSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerSink")
            .field("peer", &self.peer)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl PeerSink {
    pub async fn build(
        peer: Peer,
        target: Target,
        limits: Limits,
        stamp: Stamp,
    ) -> Result<Self, SinkError> {
        let kind = match target {
            Target::Http(cfg) => Kind::Http(HttpSink::new(cfg)?),
            Target::Shadow { file, url } => {
                let url = if url.is_empty() {
                    format!("shadow://{}", peer.code())
                } else {
                    url
                };
                let sh =
                    ShadowSink::open(&file, &url)
                        .await
                        .map_err(|source| SinkError::Shadow {
                            path: file.display().to_string(),
                            peer: peer.code(),
                            cause: source,
                        })?;
                Kind::Shadow(sh)
            }
        };
        Ok(Self {
            peer,
            kind: Arc::new(kind),
            guard: Arc::new(Resilience::new(peer.code(), limits)),
            stamp,
        })
    }

    /// HTTP target settings in one call.
    pub fn http(
        url: &str,
        bearer_token: Option<String>,
        timeout: Duration,
        success: SuccessRule,
    ) -> Target {
        Target::Http(HttpSinkConfig {
            url: url.to_string(),
            bearer_token,
            timeout,
            success,
        })
    }

    /// Shadow target settings in one call.
    pub fn shadow(file: &Path, url: &str) -> Target {
        Target::Shadow {
            file: file.to_path_buf(),
            url: url.to_string(),
        }
    }
}

impl Sink for PeerSink {
    fn peer(&self) -> Peer {
        self.peer
    }

    async fn push(&self, idempotency_key: &str, body: &[u8]) -> SendOutcome {
        let kind = self.kind.clone();
        let stamp = self.stamp.clone();
        self.guard
            .call(|| async move {
                match &*kind {
                    Kind::Http(h) => h.post_json(idempotency_key, body).await,
                    Kind::Shadow(s) => s.post_json(idempotency_key, body, &stamp()).await,
                }
            })
            .await
    }

    fn is_shadow(&self) -> bool {
        matches!(&*self.kind, Kind::Shadow(_))
    }

    fn resilience(&self) -> &Resilience {
        &self.guard
    }

    fn describe(&self) -> String {
        match &*self.kind {
            Kind::Http(h) => format!("http {}", h.url()),
            Kind::Shadow(s) => format!("shadow file {}", s.path().display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_codes_round_trip() {
        for p in Peer::ALL {
            assert_eq!(Peer::from_code(p.code()), Some(p));
        }
        assert_eq!(Peer::from_code("fax"), None);
    }
}
