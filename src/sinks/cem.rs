//! `[cem]`: the CEM's survey dispatch. The request body is the anonymised payload
//! `cem_pipeline::survey` built when the job was scheduled (plus the `contactRef` or mobile the
//! scheduler adds at send time); every push carries `Idempotency-Key: sv:{jobId}` (R-SRV-5).

use cem_connectors::sink::{Peer, PeerSink, SinkError};

use crate::config::peers::CemConfig;
use crate::process::clock::Clock;

/// The CEM sink from `[cem]`; `token` comes from the environment variable it names.
pub async fn from_config(
    cfg: &CemConfig,
    token: Option<String>,
    clock: &Clock,
) -> Result<PeerSink, SinkError> {
    let target = super::target(
        cfg.mode,
        &cfg.url,
        &cfg.shadow_file,
        token,
        cfg.timeout(),
        cfg.success_rule(),
    );
    PeerSink::build(Peer::Cem, target, cfg.limits.clone(), super::stamp(clock)).await
}
