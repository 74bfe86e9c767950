//! `cem-bridge publish`: send files to a queue as persistent messages with publisher confirms.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use cem_connectors::amqp::{AmqpPublisher, OutboundMessage};
use indicatif::{ProgressBar, ProgressStyle};

/// Show a progress bar from this many files on.
const PROGRESS_FROM: usize = 20;

pub struct PublishRequest {
    pub url: String,
    pub queue: String,
    pub files: Vec<PathBuf>,
    pub headers: BTreeMap<String, String>,
}

/// Publish every file; returns how many were confirmed.
pub async fn publish_files(req: &PublishRequest) -> anyhow::Result<u64> {
    let publisher = AmqpPublisher::connect(&req.url).await?;
    publisher.queue_depth(&req.queue).await?;
    let mut msgs = Vec::with_capacity(req.files.len());
    for f in &req.files {
        let body = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        msgs.push(OutboundMessage {
            body,
            message_id: Some(name),
            headers: req.headers.clone(),
        });
    }
    let bar = if msgs.len() >= PROGRESS_FROM {
        let b = ProgressBar::new(msgs.len() as u64);
        if let Ok(style) =
            ProgressStyle::with_template("{bar:40} {pos}/{len} confirmed ({per_sec}, eta {eta})")
        {
            b.set_style(style);
        }
        Some(b)
    } else {
        None
    };
    let n = publisher
        .publish_all(&req.queue, msgs, 256, || {
            if let Some(b) = &bar {
                b.inc(1);
            }
        })
        .await?;
    if let Some(b) = bar {
        b.finish();
    }
    publisher.close().await;
    Ok(n)
}

/// What a listening door answered for one file.
pub struct Answered {
    pub file: String,
    /// `AA` / `AE` / `AR` (MLLP), `AA` / `AE` / `FAULT` (SOAP).
    pub code: String,
    pub text: String,
}

impl Answered {
    pub fn accepted(&self) -> bool {
        self.code == "AA" || self.code == "CA"
    }
}

fn file_name(f: &std::path::Path) -> String {
    f.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Send every file over one MLLP connection, each after the previous one's ACK.
pub async fn send_mllp(addr: &str, files: &[PathBuf]) -> anyhow::Result<Vec<Answered>> {
    use cem_connectors::mllp::client::{MllpClient, ack_summary};
    let mut client = MllpClient::connect(addr, std::time::Duration::from_secs(30)).await?;
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let body = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
        let ack = client
            .send(&body)
            .await
            .with_context(|| format!("sending {}", f.display()))?;
        let (code, text) = ack_summary(&ack);
        out.push(Answered {
            file: file_name(f),
            code,
            text,
        });
    }
    Ok(out)
}

/// Call `HIPMessageServer(action, file)` for every file, one after the other.
pub async fn send_soap(
    url: &str,
    action: &str,
    soap12: bool,
    bearer: Option<&str>,
    files: &[PathBuf],
) -> anyhow::Result<Vec<Answered>> {
    use cem_connectors::soap::client::{call, http_client, summary};
    use cem_connectors::soap::envelope::SoapVersion;
    let version = if soap12 {
        SoapVersion::V12
    } else {
        SoapVersion::V11
    };
    let http = http_client()?;
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let bytes = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
        let message =
            xml_text(&bytes).map_err(|e| anyhow::anyhow!("{}: {}", f.display(), e.detail))?;
        let (status, body) = call(&http, url, version, action, &message, bearer)
            .await
            .with_context(|| format!("calling {url} with {}", f.display()))?;
        let (code, mut text) = summary(&body);
        if code == "FAULT" {
            text = format!("HTTP {status}: {text}");
        }
        out.push(Answered {
            file: file_name(f),
            code,
            text,
        });
    }
    Ok(out)
}

/// A file's XML as text: decoded from the charset its declaration names (UTF-8 without one).
fn xml_text(bytes: &[u8]) -> Result<String, cem_pipeline::reason::Rejection> {
    use cem_pipeline::decode::Charset;
    use cem_pipeline::decode::xml::declared_encoding;
    let bytes = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(bytes);
    let charset = declared_encoding(bytes)
        .and_then(Charset::from_label)
        .unwrap_or_default();
    Ok(charset.decode(bytes)?.into_owned())
}
