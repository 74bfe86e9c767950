//! The listening doors (issue 16): HL7 v2 over MLLP and the 互联互通 SOAP subscriber, driven by
//! real clients — raw TCP for MLLP, reqwest with 东华- and 嘉和-style envelopes for SOAP — into
//! the same pipeline and store as the RabbitMQ door, with the bridge in-process or as a child.

mod mllp;
mod soap;

use std::net::SocketAddr;

use cem_bridge::app::Bridge;

use crate::common::*;

/// A test bridge with one more `[[source]]` named `door` of this kind, listening on a free
/// loopback port (`listen`, default port 0), with `extra` settings.
pub fn door_setup(name: &str, cem: &Recorder, kind: &str, listen: &str, extra: &str) -> Setup {
    let mut s = Setup::new(name, &cem.url());
    s.extra_top =
        format!("[[source]]\nname = \"door\"\nkind = \"{kind}\"\nlisten = \"{listen}\"\n{extra}\n");
    s
}

/// Where the bridge's `door` source listens, once it does.
pub async fn door_addr(bridge: &Bridge) -> SocketAddr {
    wait_for(15, "the door listens", || {
        let a = bridge.door_addr("door");
        async move { a }
    })
    .await
}

/// A loopback port free now (for a child bridge, whose bound port the test cannot ask).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
