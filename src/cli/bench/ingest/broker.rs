//! `bench ingest`, phase 2: what RabbitMQ alone allows, and the floor under the bridge. A plain
//! lapin consumer (prefetch 256, manual ack, one multiple-ack every 128 deliveries and at the
//! end) takes N messages from a fresh quorum queue and does nothing with them: raw consume and
//! ack. Then, on a second queue holding the same distinct registrations the bridge gets, it
//! parses each with hl7-parser and reads MSH-9, MSH-10, PID-3 and PV1-45: consume, parse and
//! ack, the floor no bridge can beat on this machine.

use std::hint::black_box;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use cem_connectors::amqp::{self, redact_url};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};

use super::check_stop;
use crate::cli::bench::{STALL, bar};

pub(super) const RAW_PREFETCH: u16 = 256;
pub(super) const RAW_ACK_EVERY: u64 = 128;

/// Declare a durable quorum queue named `queue`.
pub(super) async fn declare_quorum(control: &lapin::Connection, queue: &str) -> anyhow::Result<()> {
    let ch = control
        .create_channel()
        .await
        .context("RabbitMQ: open a control channel")?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .with_context(|| format!("RabbitMQ: declare queue {queue}"))?;
    let _ = ch.close(200, "bye".into()).await;
    Ok(())
}

/// Read what the bridge reads first from an HL7 v2 registration: MSH-9 (event), MSH-10
/// (message id), PID-3 (patient identifiers) and PV1-45 (discharge time, empty here). Fails,
/// without quoting the message, when it does not parse or has no MSH-10.
pub(super) fn parse_fields(body: &[u8]) -> anyhow::Result<()> {
    let text = std::str::from_utf8(body).map_err(|_| anyhow!("a message is not UTF-8"))?;
    let msg = hl7_parser::Message::parse_with_lenient_newlines(text, true)
        .map_err(|_| anyhow!("hl7-parser cannot parse a queued registration"))?;
    let field = |seg: &str, n: usize| {
        msg.segment(seg)
            .and_then(|s| s.field(n))
            .map(|f| f.raw_value())
    };
    let msh9 = field("MSH", 9);
    let msh10 = field("MSH", 10);
    let pid3 = field("PID", 3);
    let pv1_45 = field("PV1", 45);
    if msh10.is_none_or(str::is_empty) || msh9.is_none_or(str::is_empty) {
        bail!("a queued registration has no MSH-9 or MSH-10");
    }
    black_box((msh9, msh10, pid3, pv1_45));
    Ok(())
}

/// Take `n` messages from `queue` with a plain lapin consumer (prefetch [`RAW_PREFETCH`],
/// manual ack, one multiple-ack every [`RAW_ACK_EVERY`] and at the end), calling `each` on
/// every body. Timed from connect to the last ack. Fails when no delivery comes for [`STALL`].
pub(super) async fn consume(
    url: &str,
    queue: &str,
    n: u64,
    label: &'static str,
    stop: &AtomicBool,
    mut each: impl FnMut(&[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<Duration> {
    let pb = bar(n, label);
    let start = Instant::now();
    let conn = amqp::connect(url, "cem-bridge-bench-consumer")
        .await
        .with_context(|| format!("RabbitMQ not reachable at {}", redact_url(url)))?;
    let r = async {
        let ch = conn
            .create_channel()
            .await
            .context("RabbitMQ: open the consumer channel")?;
        ch.basic_qos(RAW_PREFETCH, BasicQosOptions::default())
            .await
            .context("RabbitMQ: set the prefetch")?;
        let mut consumer = ch
            .basic_consume(
                queue.into(),
                "cem-bridge-bench".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("RabbitMQ: consume from {queue}"))?;
        let (mut got, mut unacked, mut last) = (0u64, 0u64, 0u64);
        while got < n {
            let d = match tokio::time::timeout(STALL, consumer.next()).await {
                Err(_) => bail!(
                    "no delivery from {queue} for {} s after {got} of {n}",
                    STALL.as_secs()
                ),
                Ok(None) => bail!("RabbitMQ cancelled the consumer on {queue} after {got} of {n}"),
                Ok(Some(d)) => d.with_context(|| format!("RabbitMQ: receive from {queue}"))?,
            };
            each(&d.data).with_context(|| format!("delivery {} of {n} from {queue}", got + 1))?;
            got += 1;
            unacked += 1;
            last = d.delivery_tag;
            if unacked == RAW_ACK_EVERY {
                ch.basic_ack(last, BasicAckOptions { multiple: true })
                    .await
                    .context("RabbitMQ: ack")?;
                unacked = 0;
                pb.set_position(got);
                check_stop(stop)?;
            }
        }
        if unacked > 0 {
            ch.basic_ack(last, BasicAckOptions { multiple: true })
                .await
                .context("RabbitMQ: ack")?;
        }
        let took = start.elapsed();
        let _ = ch
            .basic_cancel("cem-bridge-bench".into(), BasicCancelOptions::default())
            .await;
        let _ = ch.close(200, "bye".into()).await;
        Ok(took)
    }
    .await;
    pb.finish_and_clear();
    let _ = conn.close(200, "bye".into()).await;
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::bench::{a04_text, registration};

    #[test]
    fn the_floor_reads_the_fields_of_a_bench_registration_and_refuses_garbage() {
        let body = registration(a04_text().unwrap(), "T", 7);
        parse_fields(&body).unwrap();
        assert!(parse_fields(b"not hl7").is_err());
        assert!(parse_fields(&[0xff, 0xfe]).is_err());
    }
}
