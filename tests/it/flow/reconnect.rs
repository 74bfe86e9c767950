//! Issue 3 §4: when the broker drops the connection the source reconnects with backoff and
//! goes on consuming. The connection is closed from the broker side with `rabbitmqctl`.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_reconnects_after_the_broker_closes_its_connection() {
    let cem = Recorder::start().await;
    let setup = Setup::new("reconnect", &cem.url());
    let bridge = setup.start().await;
    setup.wait_declared().await;
    let bodies = registrations(2, "rc");
    publish(&setup.queue, &bodies[0], "before").await;
    cem.wait_accepted(1, 20, "first push").await;

    let pids = close_bridge_connection(&setup.queue);

    publish(&setup.queue, &bodies[1], "after").await;
    cem.wait_accepted(2, 30, "a push after reconnecting").await;
    // The broker may list the closed connection for a moment: wait for exactly the new one.
    let old = pids[0].clone();
    let needle = setup.queue.clone();
    wait_for(20, "exactly one new bridge connection", || {
        let now = connection_pids(&needle);
        let ok = now.len() == 1 && now[0] != old;
        async move { ok.then_some(()) }
    })
    .await;
    bridge.shutdown().await;
    cleanup(&setup).await;
}
