//! `[[source]]`: one inbound door — a RabbitMQ queue (`kind = "amqp"`, the default), an MLLP
//! listener (`"mllp"`) or a 互联互通 SOAP subscriber (`"soap"`) — with its mappings, batching and
//! limits.

use std::path::PathBuf;
use std::time::Duration;

use cem_connectors::amqp::{AmqpSourceConfig, QueueType};
use cem_connectors::listen::{Allowed, tls_acceptor};
use cem_connectors::mllp::MllpConfig;
use cem_connectors::soap::{SoapAuth, SoapConfig};
use serde::Deserialize;

/// Which door a `[[source]]` is.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// Consume a RabbitMQ queue (`url`, `queue`).
    #[default]
    Amqp,
    /// Listen for HL7 v2 over MLLP/TCP (`listen`); each message is answered with an HL7 ACK.
    Mllp,
    /// Listen for 互联互通 `HIPMessageServer(action, message)` SOAP calls (`listen`, `path`).
    Soap,
}

impl SourceKind {
    pub fn code(self) -> &'static str {
        match self {
            Self::Amqp => "amqp",
            Self::Mllp => "mllp",
            Self::Soap => "soap",
        }
    }
}

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
    /// `amqp` (default), `mllp` or `soap`.
    #[serde(default)]
    pub kind: SourceKind,
    /// amqp: the broker URL (`amqp://user:pass@host:5672/vhost`).
    #[serde(default)]
    pub url: String,
    /// amqp: the queue to consume.
    #[serde(default)]
    pub queue: String,
    /// mllp / soap: the address to listen on, e.g. `0.0.0.0:2575`.
    pub listen: Option<String>,
    /// soap: the endpoint path (default `/services/HIPMessageServer`).
    pub path: Option<String>,
    /// mllp / soap: connections (mllp) or requests in flight (soap) at once; more are refused.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// mllp: close a connection that sent nothing for this many seconds.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_s: u64,
    /// mllp / soap: answer "not taken, send again" (MLLP `AR`, SOAP fault 503) when a message
    /// is not durable within this many milliseconds (store down, say).
    #[serde(default = "default_answer_timeout")]
    pub answer_timeout_ms: u64,
    /// mllp / soap: addresses or networks allowed to connect (`10.1.0.0/16`); empty = any.
    #[serde(default)]
    pub allow: Vec<String>,
    /// mllp / soap: PEM certificate chain for TLS (with `tls_key`); absent = plain TCP/HTTP.
    pub tls_cert: Option<PathBuf>,
    /// mllp / soap: PEM private key for TLS.
    pub tls_key: Option<PathBuf>,
    /// soap: environment variable holding the bearer token callers must send
    /// (`Authorization: Bearer …`); absent = no token.
    pub token_env: Option<String>,
    /// soap: environment variable holding `user:password` for HTTP Basic auth; absent = none.
    pub basic_auth_env: Option<String>,
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
    /// Mapping files or folders, tried in file-name order (default: `mappings`; relative
    /// paths start from the config file's folder).
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

fn default_max_connections() -> usize {
    64
}
fn default_idle_timeout() -> u64 {
    600
}
fn default_answer_timeout() -> u64 {
    20_000
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

    /// The door of this source, ready to open: TLS files read, secrets taken from the
    /// environment. `instance` names the AMQP consumer. The error says what to fix.
    pub fn door(&self, instance: &str) -> Result<Door, String> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => Some(tls_acceptor(c, k).map_err(|e| e.to_string())?),
            _ => None,
        };
        // A host name is resolved once, as `check` saw it (`localhost` → 127.0.0.1).
        let listen = self.listen.clone().unwrap_or_default();
        let listen = crate::config::socket_addr(&listen)
            .map(|a| a.to_string())
            .unwrap_or(listen);
        let allow = self.allowed()?;
        Ok(match self.kind {
            SourceKind::Amqp => Door::Amqp(self.amqp_door(instance)),
            SourceKind::Mllp => Door::Mllp(MllpConfig {
                name: self.name.clone(),
                listen,
                max_frame_bytes: self.max_message_bytes,
                idle_timeout: Duration::from_secs(self.idle_timeout_s),
                max_connections: self.max_connections,
                allow,
                tls,
                answer_timeout: self.answer_timeout(),
            }),
            SourceKind::Soap => Door::Soap(SoapConfig {
                name: self.name.clone(),
                listen,
                path: self.soap_path(),
                // Escaping can triple a message inside the envelope; the message itself is
                // then held to max_message_bytes by the decoder.
                max_body_bytes: self.max_message_bytes.saturating_mul(3) + 64 * 1024,
                max_in_flight: self.max_connections,
                allow,
                tls,
                auth: SoapAuth {
                    bearer: secret(&self.token_env, "token_env")?,
                    basic: secret(&self.basic_auth_env, "basic_auth_env")?,
                },
                answer_timeout: self.answer_timeout(),
            }),
        })
    }

    /// The RabbitMQ door of this source; `instance` names the consumer.
    pub fn amqp_door(&self, instance: &str) -> AmqpSourceConfig {
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

impl SourceConfig {
    /// `allow` parsed; the first entry that is not an address or network is the error.
    pub fn allowed(&self) -> Result<Vec<Allowed>, String> {
        self.allow.iter().map(|a| a.parse()).collect()
    }

    /// soap: the endpoint path.
    pub fn soap_path(&self) -> String {
        self.path
            .clone()
            .unwrap_or_else(|| "/services/HIPMessageServer".into())
    }

    pub fn answer_timeout(&self) -> Duration {
        Duration::from_millis(self.answer_timeout_ms)
    }

    /// What is wrong with this door's settings for its kind: (field, what to do).
    pub fn door_problem(&self) -> Option<(&'static str, String)> {
        let kind = self.kind.code();
        match self.kind {
            SourceKind::Amqp => {
                if self.url.trim().is_empty() {
                    return Some((
                        "url",
                        "must name the broker, e.g. amqp://guest:guest@127.0.0.1:5672/%2f".into(),
                    ));
                }
                if self.queue.trim().is_empty() {
                    return Some(("queue", "must not be empty".into()));
                }
                if self.listen.is_some() {
                    return Some((
                        "listen",
                        "is for kind = \"mllp\" or \"soap\"; a RabbitMQ source consumes `queue`"
                            .into(),
                    ));
                }
            }
            SourceKind::Mllp | SourceKind::Soap => {
                if !self.url.is_empty() || !self.queue.is_empty() {
                    return Some((
                        "url",
                        format!(
                            "kind = {kind:?} listens (`listen`); remove url and queue, or use kind = \"amqp\""
                        ),
                    ));
                }
                match self.listen.as_deref() {
                    None | Some("") => {
                        return Some((
                            "listen",
                            format!(
                                "kind = {kind:?} needs the address to listen on, e.g. listen = \"0.0.0.0:{}\"",
                                if self.kind == SourceKind::Mllp {
                                    2575
                                } else {
                                    8090
                                }
                            ),
                        ));
                    }
                    Some(l) if crate::config::socket_addr(l).is_none() => {
                        return Some((
                            "listen",
                            format!(
                                "{l:?} is not an address or host name with a port, e.g. 0.0.0.0:2575 or localhost:2575"
                            ),
                        ));
                    }
                    _ => {}
                }
                if let Err(e) = self.allowed() {
                    return Some(("allow", e));
                }
                if self.tls_cert.is_some() != self.tls_key.is_some() {
                    return Some((
                        "tls_cert",
                        "TLS needs both tls_cert and tls_key (PEM files)".into(),
                    ));
                }
                if self.max_connections == 0 {
                    return Some(("max_connections", "must be ≥ 1".into()));
                }
                if self.answer_timeout_ms < 1000 {
                    return Some((
                        "answer_timeout_ms",
                        "must be ≥ 1000: a batch commit on a busy store can take that long".into(),
                    ));
                }
                if self.kind == SourceKind::Mllp
                    && (self.path.is_some()
                        || self.token_env.is_some()
                        || self.basic_auth_env.is_some())
                {
                    return Some(("path", "path, token_env and basic_auth_env are for kind = \"soap\"; an MLLP door is guarded by `allow` and TLS".into()));
                }
                if let Some(p) = &self.path
                    && !p.starts_with('/')
                {
                    return Some((
                        "path",
                        format!("{p:?} must start with /, e.g. /services/HIPMessageServer"),
                    ));
                }
            }
        }
        None
    }

    /// Where the door is, for logs and the ops page: the queue or the listen address.
    pub fn place(&self) -> String {
        match self.kind {
            SourceKind::Amqp => self.queue.clone(),
            SourceKind::Mllp => self.listen.clone().unwrap_or_default(),
            SourceKind::Soap => format!(
                "{}{}",
                self.listen.as_deref().unwrap_or_default(),
                self.soap_path()
            ),
        }
    }
}

/// An opened-ready door of one of the kinds.
#[derive(Debug)]
pub enum Door {
    Amqp(AmqpSourceConfig),
    Mllp(MllpConfig),
    Soap(SoapConfig),
}

/// The value of the environment variable a secret setting names, if it names one.
fn secret(var: &Option<String>, field: &str) -> Result<Option<String>, String> {
    let Some(var) = var else { return Ok(None) };
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(Some(v)),
        _ => Err(format!(
            "{field} names the environment variable {var}, which is not set: set it or remove {field}"
        )),
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
