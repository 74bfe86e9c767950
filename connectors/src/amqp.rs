//! RabbitMQ source and publisher (lapin 4).
//!
//! Topology per source: a durable queue (quorum by default, so the broker counts deliveries in
//! `x-delivery-count`) whose `x-dead-letter-exchange` is a fanout exchange bound to a durable
//! dead-letter queue. The bridge dead-letters by *republishing* to that exchange with reason
//! headers (`x-cem-reason`, `x-cem-detail`) under publisher confirms and then acking, because an
//! AMQP reject cannot add headers; if that publish fails it falls back to `nack(requeue=false)`,
//! which the broker routes to the same exchange.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};

use crate::source::{Delivery, Settle, Settled, Source, SourceBuilder, SourceError};

/// An AMQP failure with what was being done and on which queue. Carries no message content.
#[derive(Debug, thiserror::Error)]
#[error("RabbitMQ: {op} ({target}) failed: {cause}")]
pub struct AmqpError {
    pub op: &'static str,
    pub target: String,
    pub cause: lapin::Error,
}

/// Failures of the publisher beyond transport errors.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    #[error("RabbitMQ refused the message for {target} (publisher confirm was a nack)")]
    Nacked { target: String },
    #[error(
        "no queue is bound for {target}: the message was returned unroutable. Start the bridge once so it declares its queue, or check the queue name"
    )]
    Unroutable { target: String },
    #[error(
        "queue {queue:?} does not exist on the broker. Start the bridge once (it declares its queues) or pass the right --queue"
    )]
    NoSuchQueue { queue: String },
}

fn ctx(op: &'static str, target: &str) -> impl FnOnce(lapin::Error) -> AmqpError {
    let target = target.to_string();
    move |source| AmqpError {
        op,
        target,
        cause: source,
    }
}

/// Queue type of the source queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    /// Replicated; counts deliveries (`x-delivery-count`) so poison messages are detected.
    #[default]
    Quorum,
    /// Classic queue; poison detection then only sees the `redelivered` flag.
    Classic,
}

/// Everything the source needs to know about its broker objects.
#[derive(Debug, Clone)]
pub struct AmqpSourceConfig {
    pub url: String,
    pub queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub queue_type: QueueType,
    pub prefetch: u16,
    pub consumer_tag: String,
}

/// The frame size asked of the broker when the URL sets no `frame_max`, bytes. lapin keeps a
/// send and a receive buffer of 32 frames per connection and zero-fills them when the broker's
/// frame size is agreed: at RabbitMQ's default of 128 KiB that is 8 MiB resident per
/// connection, at 16 KiB it is 1 MiB. A larger message travels as several frames.
pub const FRAME_MAX: u32 = 16 * 1024;

/// Connect with a bounded timeout so a dead broker is an error, not a hang.
pub async fn connect(url: &str, name: &str) -> Result<Connection, AmqpError> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let failed = |kind: std::io::ErrorKind, why: String| AmqpError {
        op: "connect",
        target: redact_url(url),
        cause: lapin::Error::from(lapin::ErrorKind::IOError(std::sync::Arc::new(
            std::io::Error::new(kind, why),
        ))),
    };
    let mut uri: lapin::uri::AMQPUri = url
        .parse()
        .map_err(|why| failed(std::io::ErrorKind::InvalidInput, why))?;
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    match tokio::time::timeout(Duration::from_secs(10), Connection::connect_uri(uri, props)).await {
        Ok(r) => r.map_err(ctx("connect", &redact_url(url))),
        Err(_) => Err(failed(
            std::io::ErrorKind::TimedOut,
            "timed out after 10 s".into(),
        )),
    }
}

/// `amqp://user:secret@host/vhost` → `amqp://user:***@host/vhost` for logs and errors.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Declare the source queue, its dead-letter exchange and dead-letter queue (idempotent).
pub async fn declare_topology(ch: &Channel, cfg: &AmqpSourceConfig) -> Result<(), AmqpError> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        cfg.dead_letter_exchange.as_str().into(),
        ExchangeKind::Fanout,
        durable,
        FieldTable::default(),
    )
    .await
    .map_err(ctx(
        "declare dead-letter exchange",
        &cfg.dead_letter_exchange,
    ))?;
    let qopts = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(
        cfg.dead_letter_queue.as_str().into(),
        qopts,
        FieldTable::default(),
    )
    .await
    .map_err(ctx("declare dead-letter queue", &cfg.dead_letter_queue))?;
    ch.queue_bind(
        cfg.dead_letter_queue.as_str().into(),
        cfg.dead_letter_exchange.as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(ctx("bind dead-letter queue", &cfg.dead_letter_queue))?;
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(cfg.dead_letter_exchange.as_str().into()),
    );
    if cfg.queue_type == QueueType::Quorum {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
    }
    ch.queue_declare(cfg.queue.as_str().into(), qopts, args)
        .await
        .map_err(ctx("declare queue", &cfg.queue))?;
    Ok(())
}

/// A connected source: consuming channel, confirm-mode channel for dead letters.
pub struct AmqpSource {
    conn: Connection,
    consume: Channel,
    dlx: Channel,
    consumer: Consumer,
    cfg: AmqpSourceConfig,
}

impl AmqpSource {
    /// Connect, declare the topology, set the prefetch and start consuming (manual ack).
    pub async fn connect(cfg: &AmqpSourceConfig) -> Result<Self, AmqpError> {
        let conn = connect(&cfg.url, &cfg.consumer_tag).await?;
        let consume = conn
            .create_channel()
            .await
            .map_err(ctx("open channel", &cfg.queue))?;
        declare_topology(&consume, cfg).await?;
        consume
            .basic_qos(cfg.prefetch, BasicQosOptions::default())
            .await
            .map_err(ctx("set prefetch", &cfg.queue))?;
        let dlx = conn
            .create_channel()
            .await
            .map_err(ctx("open channel", &cfg.dead_letter_exchange))?;
        dlx.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(ctx("enable publisher confirms", &cfg.dead_letter_exchange))?;
        let consumer = consume
            .basic_consume(
                cfg.queue.as_str().into(),
                cfg.consumer_tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(ctx("consume", &cfg.queue))?;
        Ok(Self {
            conn,
            consume,
            dlx,
            consumer,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &AmqpSourceConfig {
        &self.cfg
    }

    /// The next delivery; `None` when the consumer was cancelled.
    async fn next_delivery(&mut self) -> Option<Result<Delivery, AmqpError>> {
        let d = self.consumer.next().await?;
        Some(
            d.map(|d| {
                let mut headers = BTreeMap::new();
                let mut delivery_count = 0;
                if let Some(h) = d.properties.headers() {
                    for (k, v) in h.inner() {
                        match v {
                            AMQPValue::LongString(s) => {
                                headers.insert(
                                    k.to_string(),
                                    String::from_utf8_lossy(s.as_bytes()).into_owned(),
                                );
                            }
                            AMQPValue::ShortString(s) => {
                                headers.insert(k.to_string(), s.to_string());
                            }
                            _ => {}
                        }
                        if k.as_str() == "x-delivery-count" {
                            delivery_count = amqp_int(v).unwrap_or(0);
                        }
                    }
                }
                Delivery {
                    id: d.delivery_tag,
                    message_id: d.properties.message_id().as_ref().map(|s| s.to_string()),
                    content_type: d.properties.content_type().as_ref().map(|s| s.to_string()),
                    headers,
                    redeliveries: delivery_count,
                    body: d.data,
                }
            })
            .map_err(ctx("receive", &self.cfg.queue)),
        )
    }

    /// Ack every outstanding delivery up to and including `tag`.
    async fn ack_through(&self, tag: u64) -> Result<(), AmqpError> {
        self.consume
            .basic_ack(tag, BasicAckOptions { multiple: true })
            .await
            .map_err(ctx("ack", &self.cfg.queue))
    }

    /// Reject one delivery without requeue: the broker routes it to the dead-letter exchange.
    async fn reject(&self, tag: u64) -> Result<(), AmqpError> {
        self.consume
            .basic_nack(
                tag,
                BasicNackOptions {
                    multiple: false,
                    requeue: false,
                },
            )
            .await
            .map_err(ctx("reject", &self.cfg.queue))
    }

    /// Put one delivery back on the queue (it counts as a redelivery).
    async fn requeue(&self, tag: u64) -> Result<(), AmqpError> {
        self.consume
            .basic_nack(
                tag,
                BasicNackOptions {
                    multiple: false,
                    requeue: true,
                },
            )
            .await
            .map_err(ctx("requeue", &self.cfg.queue))
    }

    /// Publish a copy of `msg` to the dead-letter exchange with reason headers and wait for the
    /// broker's confirm. The caller acks the original afterwards.
    pub async fn publish_dead_letter(
        &self,
        msg: &Delivery,
        connector: &str,
        reason: &str,
        detail: &str,
    ) -> Result<(), PublishError> {
        let mut headers = FieldTable::default();
        for (k, v) in &msg.headers {
            headers.insert(k.as_str().into(), AMQPValue::LongString(v.as_str().into()));
        }
        let s = |v: &str| AMQPValue::LongString(LongString::from(v));
        headers.insert("x-cem-reason".into(), s(reason));
        headers.insert("x-cem-detail".into(), s(detail));
        headers.insert("x-cem-connector".into(), s(connector));
        headers.insert("x-cem-source-queue".into(), s(&self.cfg.queue));
        headers.insert(
            "x-cem-delivery-count".into(),
            AMQPValue::LongLongInt(i64::try_from(msg.redeliveries).unwrap_or(i64::MAX)),
        );
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers);
        if let Some(id) = &msg.message_id {
            props = props.with_message_id(id.as_str().into());
        }
        if let Some(ct) = &msg.content_type {
            props = props.with_content_type(ct.as_str().into());
        }
        confirm(
            &self.dlx,
            &self.cfg.dead_letter_exchange,
            "",
            &msg.body,
            props,
            &self.cfg.dead_letter_exchange,
        )
        .await
    }

    /// Stop receiving new deliveries (graceful shutdown); unacked ones stay with the broker.
    async fn stop_consuming(&self) -> Result<(), AmqpError> {
        self.consume
            .basic_cancel(
                self.cfg.consumer_tag.as_str().into(),
                BasicCancelOptions::default(),
            )
            .await
            .map_err(ctx("cancel consumer", &self.cfg.queue))
    }

    /// Close channels and the connection; unacked deliveries return to the queue.
    async fn close_all(&self) {
        let _ = self.consume.close(200, "bye".into()).await;
        let _ = self.dlx.close(200, "bye".into()).await;
        let _ = self.conn.close(200, "bye".into()).await;
    }
}

impl Source for AmqpSource {
    async fn recv(&mut self) -> Result<Option<Delivery>, SourceError> {
        match self.next_delivery().await {
            None => Err(SourceError::Ended {
                door: format!("RabbitMQ queue {}", self.cfg.queue),
            }),
            Some(r) => r.map(Some).map_err(|e| SourceError::Transport(Box::new(e))),
        }
    }

    /// Dead letters are republished to the dead-letter exchange with their reason under
    /// publisher confirms (rejected without requeue if that fails, so the broker routes them
    /// there without reason headers), retries are requeued, and then one multiple-ack covers
    /// every delivery up to the last one still outstanding (an ack of a rejected or requeued
    /// tag would be a channel error; the multiple-ack skips them).
    async fn settle(
        &mut self,
        connector: &str,
        batch: &[(&Delivery, Settle)],
    ) -> Result<Settled, SourceError> {
        let io = |e: AmqpError| SourceError::Transport(Box::new(e));
        let mut out = Settled::default();
        let mut released = Vec::new();
        for (d, s) in batch {
            match s {
                Settle::Ack => {}
                Settle::DeadLetter { reason, detail } => {
                    if let Err(e) = self.publish_dead_letter(d, connector, reason, detail).await {
                        tracing::warn!(connector, message_id = ?d.message_id, error = %e,
                              "cannot republish to the dead-letter exchange; rejecting to it instead (no reason header)");
                        self.reject(d.id).await.map_err(io)?;
                        released.push(d.id);
                        out.rejected += 1;
                    }
                }
                Settle::Retry => {
                    self.requeue(d.id).await.map_err(io)?;
                    released.push(d.id);
                    out.retried += 1;
                }
            }
        }
        let acked: Vec<u64> = batch
            .iter()
            .map(|(d, _)| d.id)
            .filter(|t| !released.contains(t))
            .collect();
        if let Some(last) = acked.iter().max() {
            self.ack_through(*last).await.map_err(io)?;
            out.acked = acked.len();
        }
        Ok(out)
    }

    async fn stop(&mut self) {
        if let Err(e) = self.stop_consuming().await {
            tracing::debug!(queue = %self.cfg.queue, error = %e, "cancel consumer at shutdown");
        }
    }

    async fn close(self) {
        self.close_all().await;
    }
}

impl SourceBuilder for AmqpSourceConfig {
    type Source = AmqpSource;

    async fn connect(&self) -> Result<AmqpSource, SourceError> {
        AmqpSource::connect(self)
            .await
            .map_err(|e| SourceError::Transport(Box::new(e)))
    }

    fn describe(&self) -> String {
        format!(
            "RabbitMQ queue {} (dead letters to {})",
            self.queue, self.dead_letter_queue
        )
    }
}

fn amqp_int(v: &AMQPValue) -> Option<u64> {
    match v {
        AMQPValue::ShortShortInt(i) => u64::try_from(*i).ok(),
        AMQPValue::ShortShortUInt(i) => Some(u64::from(*i)),
        AMQPValue::ShortInt(i) => u64::try_from(*i).ok(),
        AMQPValue::ShortUInt(i) => Some(u64::from(*i)),
        AMQPValue::LongInt(i) => u64::try_from(*i).ok(),
        AMQPValue::LongUInt(i) => Some(u64::from(*i)),
        AMQPValue::LongLongInt(i) => u64::try_from(*i).ok(),
        _ => None,
    }
}

async fn confirm(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
    target: &str,
) -> Result<(), PublishError> {
    let pending = ch
        .basic_publish(
            ShortString::from(exchange),
            ShortString::from(routing_key),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            props,
        )
        .await
        .map_err(ctx("publish", target))?;
    check_confirm(
        pending.await.map_err(ctx("publisher confirm", target))?,
        target,
    )
}

/// A message to publish.
#[derive(Debug, Clone, Default)]
pub struct OutboundMessage {
    pub body: Vec<u8>,
    pub message_id: Option<String>,
    pub headers: BTreeMap<String, String>,
}

/// Messages ready in `queue` (not those delivered and unacked), by a passive declare.
async fn passive_depth(conn: &Connection, queue: &str) -> Result<u32, PublishError> {
    // A passive declare closes the channel when the queue is missing: use a throwaway one.
    let probe = conn
        .create_channel()
        .await
        .map_err(ctx("open channel", queue))?;
    let r = probe
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    match r {
        Ok(q) => {
            let _ = probe.close(200, "bye".into()).await;
            Ok(q.message_count())
        }
        Err(e) if matches!(e.kind(), lapin::ErrorKind::ProtocolError(p) if p.get_id() == 404) => {
            Err(PublishError::NoSuchQueue {
                queue: queue.to_string(),
            })
        }
        Err(e) => Err(ctx("inspect queue", queue)(e).into()),
    }
}

/// Reads queue depths on a connection of its own (the bridge's backlog gauge).
pub struct QueueProbe {
    conn: Connection,
}

impl QueueProbe {
    pub async fn connect(url: &str) -> Result<Self, AmqpError> {
        Ok(Self {
            conn: connect(url, "cem-bridge-backlog").await?,
        })
    }

    /// Messages ready in `queue`.
    pub async fn depth(&self, queue: &str) -> Result<u32, PublishError> {
        passive_depth(&self.conn, queue).await
    }

    /// Whether the connection still stands (else connect again).
    pub fn is_open(&self) -> bool {
        self.conn.status().connected()
    }

    pub async fn close(self) {
        let _ = self.conn.close(200, "bye".into()).await;
    }
}

/// Publishes persistent messages with publisher confirms (for `cem-bridge publish` and tests).
pub struct AmqpPublisher {
    conn: Connection,
    ch: Channel,
}

impl AmqpPublisher {
    pub async fn connect(url: &str) -> Result<Self, AmqpError> {
        let conn = connect(url, "cem-bridge-publish").await?;
        let ch = conn
            .create_channel()
            .await
            .map_err(ctx("open channel", "publisher"))?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(ctx("enable publisher confirms", "publisher"))?;
        Ok(Self { conn, ch })
    }

    /// Messages waiting in `queue`, or [`PublishError::NoSuchQueue`].
    pub async fn queue_depth(&self, queue: &str) -> Result<u32, PublishError> {
        passive_depth(&self.conn, queue).await
    }

    /// Publish to a queue through the default exchange and wait for the confirm.
    pub async fn publish(&self, queue: &str, msg: &OutboundMessage) -> Result<(), PublishError> {
        confirm(&self.ch, "", queue, &msg.body, properties(msg), queue).await
    }

    /// Publish many messages keeping up to `window` confirms in flight; calls `progress` after
    /// each confirmed message. Stops at the first failure.
    pub async fn publish_all(
        &self,
        queue: &str,
        msgs: impl IntoIterator<Item = OutboundMessage>,
        window: usize,
        mut progress: impl FnMut(),
    ) -> Result<u64, PublishError> {
        let mut in_flight = std::collections::VecDeque::new();
        let mut done = 0u64;
        for m in msgs {
            let pending = self
                .ch
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &m.body,
                    properties(&m),
                )
                .await
                .map_err(ctx("publish", queue))?;
            in_flight.push_back(pending);
            if in_flight.len() >= window.max(1)
                && let Some(p) = in_flight.pop_front()
            {
                check_confirm(p.await.map_err(ctx("publisher confirm", queue))?, queue)?;
                done += 1;
                progress();
            }
        }
        while let Some(p) = in_flight.pop_front() {
            check_confirm(p.await.map_err(ctx("publisher confirm", queue))?, queue)?;
            done += 1;
            progress();
        }
        Ok(done)
    }

    pub async fn close(&self) {
        let _ = self.ch.close(200, "bye".into()).await;
        let _ = self.conn.close(200, "bye".into()).await;
    }
}

fn check_confirm(c: lapin::Confirmation, target: &str) -> Result<(), PublishError> {
    if c.is_nack() {
        return Err(PublishError::Nacked {
            target: target.to_string(),
        });
    }
    if c.take_message().is_some() {
        return Err(PublishError::Unroutable {
            target: target.to_string(),
        });
    }
    Ok(())
}

fn properties(msg: &OutboundMessage) -> BasicProperties {
    let mut props = BasicProperties::default().with_delivery_mode(2);
    if let Some(id) = &msg.message_id {
        props = props.with_message_id(id.as_str().into());
    }
    if !msg.headers.is_empty() {
        let mut h = FieldTable::default();
        for (k, v) in &msg.headers {
            h.insert(k.as_str().into(), AMQPValue::LongString(v.as_str().into()));
        }
        props = props.with_headers(h);
    }
    props
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted() {
        assert_eq!(
            redact_url("amqp://guest:s3cret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }
}

#[cfg(test)]
mod frame_tests {
    use super::*;

    const LOCAL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

    /// The bridge asks for small frames (lapin's buffers are 32 frames each), unless the URL
    /// sets its own `frame_max`.
    #[tokio::test]
    async fn connections_ask_for_small_frames_unless_the_url_sets_them() {
        let conn = connect(LOCAL, "frame-test").await.unwrap();
        assert_eq!(conn.configuration().frame_max(), FRAME_MAX);
        conn.close(0, "done".into()).await.unwrap();
        let conn = connect(&format!("{LOCAL}?frame_max=65536"), "frame-test")
            .await
            .unwrap();
        assert_eq!(conn.configuration().frame_max(), 65_536);
        conn.close(0, "done".into()).await.unwrap();
    }

    #[tokio::test]
    async fn a_malformed_url_is_an_error_naming_it_without_its_password() {
        let e = connect("amqp://guest:s3cret@127.0.0.1:notaport/%2f", "frame-test")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("amqp://guest:***@127.0.0.1:notaport/%2f"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }
}
