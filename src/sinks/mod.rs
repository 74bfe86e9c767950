//! The HTTP peers as configured, one file a peer: each builds its [`PeerSink`] from its config
//! section and, where the bridge composes the request, the request body. `cem_connectors::sink`
//! holds the [`Sink`](cem_connectors::sink::Sink) trait, the [`Peer`] enum and the one
//! implementation (HTTP or `shadow`, behind the one resilience block).
//!
//! - [`cem`] — `[cem]`: the survey dispatch (the payload is `cem_pipeline::survey`'s).
//! - [`hcrm`] — `[hcrm]`: ticket cases (`hcrm_body`).
//! - [`callcenter`] — `[callcenter]`: call tasks (`call_body`).
//! - [`cem_results`] — `[cem_results]`: ticket call outcomes posted back to the CEM.
//!
//! May import: `config`, `process` (the clock shadow lines are stamped with) and the pipeline.

pub mod callcenter;
pub mod cem;
pub mod cem_results;
pub mod hcrm;

use cem_connectors::sink::{Peer, PeerSink, SinkError, Stamp, Target};

use crate::config::peers::{CemMode, PeerConfig};
use crate::process::clock::Clock;

/// Shadow lines carry the bridge's time, so a shifted clock shows in them as everywhere else.
pub fn stamp(clock: &Clock) -> Stamp {
    let clock = clock.clone();
    std::sync::Arc::new(move || clock.now().to_string())
}

/// Where a peer's requests go: its URL over HTTP, or its shadow file.
pub(crate) fn target(
    mode: CemMode,
    url: &str,
    shadow_file: &std::path::Path,
    token: Option<String>,
    timeout: std::time::Duration,
    success: cem_connectors::http_sink::SuccessRule,
) -> Target {
    match mode {
        CemMode::Http => PeerSink::http(url, token, timeout, success),
        CemMode::Shadow => PeerSink::shadow(shadow_file, url),
    }
}

/// A ticket-loop peer (`[hcrm]`, `[callcenter]`, `[cem_results]`) from its section; `token`
/// comes from the environment variable it names.
pub async fn from_peer_config(
    peer: Peer,
    p: &PeerConfig,
    token: Option<String>,
    clock: &Clock,
) -> Result<PeerSink, SinkError> {
    let target = target(
        p.mode,
        &p.url,
        &p.shadow_file(peer.code()),
        token,
        p.timeout(),
        p.success_rule(),
    );
    PeerSink::build(peer, target, p.limits.clone(), stamp(clock)).await
}
