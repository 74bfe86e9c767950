//! RabbitMQ as the tests use it: publish, read queue depths, drain dead letters, delete what a test
//! made.

use std::collections::BTreeMap;

use cem_connectors::amqp::{AmqpPublisher, OutboundMessage};
use lapin::options::{BasicGetOptions, QueueDeleteOptions};
use lapin::types::AMQPValue;

use super::*;

pub async fn publisher() -> AmqpPublisher {
    AmqpPublisher::connect(&amqp_url())
        .await
        .expect("publisher connects")
}

pub async fn publish(queue: &str, body: &[u8], message_id: &str) {
    publish_with_headers(queue, body, message_id, &[]).await
}

/// Publish with AMQP headers (e.g. the platform's `service-code`).
pub async fn publish_with_headers(
    queue: &str,
    body: &[u8],
    message_id: &str,
    headers: &[(&str, &str)],
) {
    let p = publisher().await;
    let msg = OutboundMessage {
        body: body.to_vec(),
        message_id: Some(message_id.to_string()),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    // A broker nack means "not stored, send again" (seen once right after a quorum queue was
    // declared): retry like any confirming publisher, a few times.
    let mut tries = 0;
    while let Err(e) = p.publish(queue, &msg).await {
        tries += 1;
        assert!(tries < 5, "publish to {queue}: {e}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    p.close().await;
}

/// Ready messages in a queue, or `None` if it does not exist.
pub async fn queue_depth(queue: &str) -> Option<u32> {
    let p = publisher().await;
    let r = p.queue_depth(queue).await.ok();
    p.close().await;
    r
}

/// A message taken from a dead-letter queue.
#[derive(Debug)]
pub struct DeadLetter {
    pub body: Vec<u8>,
    pub headers: BTreeMap<String, String>,
    pub message_id: Option<String>,
}

/// Take every message currently in `queue` (acked, i.e. removed).
pub async fn drain(queue: &str) -> Vec<DeadLetter> {
    let conn = cem_connectors::amqp::connect(&amqp_url(), "test-drain")
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let mut out = Vec::new();
    while let Ok(Some(m)) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
    {
        let mut headers = BTreeMap::new();
        if let Some(h) = m.delivery.properties.headers() {
            for (k, v) in h.inner() {
                let s = match v {
                    AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                    AMQPValue::ShortString(s) => s.to_string(),
                    AMQPValue::LongLongInt(i) => i.to_string(),
                    other => format!("{other:?}"),
                };
                headers.insert(k.to_string(), s);
            }
        }
        out.push(DeadLetter {
            message_id: m
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string()),
            body: m.delivery.data,
            headers,
        });
    }
    let _ = conn.close(200, "bye".into()).await;
    out
}

/// Delete a test's queues and exchange (best effort).
pub async fn cleanup(setup: &Setup) {
    delete_queues(
        &[setup.queue.clone(), setup.dlq()],
        &[format!("{}.dlx", setup.queue)],
    )
    .await;
    let _ = std::fs::remove_dir_all(&setup.dir);
}

/// Delete queues and exchanges (best effort).
pub async fn delete_queues(queues: &[String], exchanges: &[String]) {
    if let Ok(conn) = cem_connectors::amqp::connect(&amqp_url(), "test-cleanup").await {
        if let Ok(ch) = conn.create_channel().await {
            for q in queues {
                let _ = ch
                    .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            for x in exchanges {
                let _ = ch
                    .exchange_delete(
                        x.as_str().into(),
                        lapin::options::ExchangeDeleteOptions::default(),
                    )
                    .await;
            }
        }
        let _ = conn.close(200, "bye".into()).await;
    }
}

/// `n` distinct outpatient registrations of `n` distinct patients (own MSH-10, visit number,
/// patient id and mobile each; no ID card), so do-not-disturb does not join them.
pub fn registrations(n: usize, tag: &str) -> Vec<Vec<u8>> {
    let base = String::from_utf8(read_fixture("hl7v2/adt_a04_outpatient_registration.hl7"))
        .expect("utf-8 sample");
    (0..n)
        .map(|i| {
            base.replace("MSG20261120093015001", &format!("MSG-{tag}-{i:05}"))
                .replace("V20261120001", &format!("V{tag}{i:05}"))
                .replace("P00012345", &format!("P{tag}{i:05}"))
                .replace("13812345678", &format!("139{i:08}"))
                .replace("~110101199003071233^^^CHN^NI", "")
                .into_bytes()
        })
        .collect()
}

/// Publish many bodies with confirms.
pub async fn publish_many(queue: &str, bodies: &[Vec<u8>]) {
    let p = publisher().await;
    let msgs = bodies.iter().enumerate().map(|(i, b)| OutboundMessage {
        body: b.clone(),
        message_id: Some(format!("m{i}")),
        headers: BTreeMap::new(),
    });
    p.publish_all(queue, msgs, 128, || {})
        .await
        .expect("publish_all");
    p.close().await;
}

/// Publish one fixture sample (a path under `tests/fixtures/samples`) with this message id.
pub async fn publish_fixture(queue: &str, file: &str, message_id: &str) {
    publish(queue, &read_fixture(file), message_id).await;
}

/// Publish fixture samples, each with its path as the message id.
pub async fn publish_fixtures(queue: &str, files: &[&str]) {
    for f in files {
        publish_fixture(queue, f, f).await;
    }
}

/// Two good samples (a discharge and a registration, two surveys) and two bad ones (two dead
/// letters): the mixed flow the ops page and its metrics are checked against.
pub const MIXED_SAMPLES: [&str; 4] = [
    "hl7v2/adt_a03_discharge.hl7",
    "hl7v2/adt_a04_outpatient_registration.hl7",
    "bad/truncated.hl7",
    "bad/missing_patient_id.hl7",
];

/// Broker-side pids of connections whose client-provided name contains `needle`.
pub fn connection_pids(needle: &str) -> Vec<String> {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "pid",
            "client_properties",
            "-q",
            "--no-table-headers",
        ])
        .output()
        .expect("rabbitmqctl on PATH (the local RabbitMQ's CLI)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| l.split('\t').next().map(str::to_string))
        .collect()
}

/// Close the one bridge connection consuming `queue` from the broker side (`rabbitmqctl
/// close_connection`), as a broker restart or a network cut would; its pid is returned.
pub fn close_bridge_connection(queue: &str) -> Vec<String> {
    let pids = connection_pids(queue);
    assert_eq!(pids.len(), 1, "one bridge connection for this queue");
    let closed = std::process::Command::new("rabbitmqctl")
        .args([
            "close_connection",
            &pids[0],
            "test: simulated broker-side disconnect",
        ])
        .status()
        .expect("rabbitmqctl close_connection");
    assert!(closed.success());
    pids
}

/// The source's dead-letter queue is empty: nothing was dead-lettered.
pub async fn assert_no_dead_letters(setup: &Setup) {
    assert_eq!(
        queue_depth(&setup.dlq()).await,
        Some(0),
        "nothing dead-lettered"
    );
}
