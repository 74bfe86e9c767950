//! `[[source]]`: one RabbitMQ queue the bridge consumes, with its mappings, batching and limits.

use cem_connectors::amqp::{AmqpSourceConfig, QueueType};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum QueueTypeConfig {
    #[default]
    Quorum,
    Classic,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Connector name: in the store, logs, metrics and dead-letter headers.
    pub name: String,
    pub url: String,
    pub queue: String,
    /// Default `{queue}.dlx`.
    pub dead_letter_exchange: Option<String>,
    /// Default `{queue}.dlq`.
    pub dead_letter_queue: Option<String>,
    #[serde(default)]
    pub queue_type: QueueTypeConfig,
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// Deliveries per store transaction.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// How long to wait for more deliveries before committing a partial batch.
    #[serde(default = "default_batch_wait")]
    pub batch_wait_ms: u64,
    /// Charset when a message declares none: `utf-8` or `gb18030` (also `gbk`).
    #[serde(default = "default_charset")]
    pub charset: String,
    #[serde(default = "default_max_bytes")]
    pub max_message_bytes: usize,
    /// Dead-letter as `poison` after this many earlier deliveries (R-EVT-6).
    #[serde(default = "default_poison")]
    pub poison_after: u64,
    /// Mapping files or folders, tried in file-name order (default: `mappings`, relative to
    /// the working directory).
    #[serde(default = "default_mappings")]
    pub mappings: Vec<String>,
    /// Facility / patient-id authority for XML and JSON messages that carry none (R-GEN-3);
    /// `$facility` in mappings. Default: the connector name.
    pub facility: Option<String>,
}

fn default_mappings() -> Vec<String> {
    vec!["mappings".into()]
}

impl SourceConfig {
    /// `facility`, else the connector name.
    pub fn facility(&self) -> &str {
        self.facility.as_deref().unwrap_or(&self.name)
    }
}

fn default_prefetch() -> u16 {
    256
}
fn default_batch() -> usize {
    128
}
fn default_batch_wait() -> u64 {
    20
}
fn default_charset() -> String {
    "utf-8".into()
}
fn default_max_bytes() -> usize {
    cem_pipeline::decode::DEFAULT_MAX_BYTES
}
fn default_poison() -> u64 {
    5
}

impl SourceConfig {
    pub fn dlx(&self) -> String {
        dead_letter_name(&self.dead_letter_exchange, &self.queue, "dlx")
    }
    pub fn dlq(&self) -> String {
        dead_letter_name(&self.dead_letter_queue, &self.queue, "dlq")
    }

    /// The RabbitMQ door of this source; `instance` names the consumer.
    pub fn door(&self, instance: &str) -> AmqpSourceConfig {
        AmqpSourceConfig {
            url: self.url.clone(),
            queue: self.queue.clone(),
            dead_letter_exchange: self.dlx(),
            dead_letter_queue: self.dlq(),
            queue_type: self.queue_type.into(),
            prefetch: self.prefetch,
            consumer_tag: format!("cem-bridge/{instance}/{}/{}", self.name, self.queue),
        }
    }
}

/// A dead-letter exchange or queue name: as configured, else `{queue}.{suffix}`.
pub(crate) fn dead_letter_name(configured: &Option<String>, queue: &str, suffix: &str) -> String {
    configured
        .clone()
        .unwrap_or_else(|| format!("{queue}.{suffix}"))
}

impl From<QueueTypeConfig> for QueueType {
    fn from(t: QueueTypeConfig) -> Self {
        match t {
            QueueTypeConfig::Quorum => QueueType::Quorum,
            QueueTypeConfig::Classic => QueueType::Classic,
        }
    }
}
