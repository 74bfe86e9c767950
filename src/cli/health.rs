//! `cem-bridge health`: GET the ops server's `/health` and exit 0 when it answers 200 "ok" —
//! the container `HEALTHCHECK` and service monitors use it where there is no curl.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Config;

/// How long the whole check may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The most of an answer that is read.
const MAX_ANSWER: u64 = 64 * 1024;

/// `http://{listen}/health` of a config's `[ops]` server; a wildcard address is asked on
/// loopback.
pub fn url_from_config(cfg: &Config) -> anyhow::Result<String> {
    let Some(addr) = cfg.ops.listen_addr() else {
        bail!(
            "[ops] listen is \"\": the ops server is off, so there is no /health to ask; pass --url"
        )
    };
    let addr = if addr.ip().is_unspecified() {
        let ip: std::net::IpAddr = if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        SocketAddr::new(ip, addr.port())
    } else {
        addr
    };
    Ok(format!("http://{addr}/health"))
}

/// GET `url` (plain `http://host:port/path`); the body when the answer is 200 with "ok".
pub async fn check(url: &str) -> anyhow::Result<String> {
    let rest = url.strip_prefix("http://").with_context(|| {
        format!("{url:?}: give an http:// URL, e.g. http://127.0.0.1:9464/health")
    })?;
    let (host, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/health"),
    };
    let answer = tokio::time::timeout(TIMEOUT, get(host, path))
        .await
        .with_context(|| format!("{url}: no answer within {} s", TIMEOUT.as_secs()))??;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") || !body.contains("ok") {
        bail!("{url}: not healthy: {status} {}", body.trim());
    }
    Ok(body.trim().to_string())
}

async fn get(host: &str, path: &str) -> anyhow::Result<String> {
    let mut tcp = tokio::net::TcpStream::connect(host)
        .await
        .with_context(|| format!("cannot connect to {host}"))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .with_context(|| format!("cannot send to {host}"))?;
    let mut answer = Vec::new();
    tcp.take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .await
        .with_context(|| format!("cannot read the answer of {host}"))?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}
