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
