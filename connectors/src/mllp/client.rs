//! A minimal MLLP sender: one connection, one message at a time, each waiting for its ACK. For
//! `cem-bridge publish --mllp` (interface engineers testing a door) and for the benchmarks.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::frame::{Frame, FrameReader, wrap};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {cause}")]
    Connect { addr: String, cause: std::io::Error },
    #[error("no answer from {addr} within {secs} s")]
    Timeout { addr: String, secs: u64 },
    #[error("the connection to {addr} failed: {cause}")]
    Io { addr: String, cause: std::io::Error },
    #[error("{addr} closed the connection before answering")]
    Closed { addr: String },
}

/// One open MLLP connection.
pub struct MllpClient {
    stream: TcpStream,
    reader: FrameReader,
    addr: String,
    timeout: Duration,
}

impl MllpClient {
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Self, ClientError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout {
                addr: addr.into(),
                secs: timeout.as_secs(),
            })?
            .map_err(|source| ClientError::Connect {
                addr: addr.into(),
                cause: source,
            })?;
        let _ = stream.set_nodelay(true);
        Ok(Self {
            stream,
            reader: FrameReader::new(1 << 20),
            addr: addr.into(),
            timeout,
        })
    }

    /// Send one message (unframed bytes) and return its ACK (unframed).
    pub async fn send(&mut self, message: &[u8]) -> Result<Vec<u8>, ClientError> {
        let io = |source| ClientError::Io {
            addr: self.addr.clone(),
            cause: source,
        };
        self.stream.write_all(&wrap(message)).await.map_err(io)?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut buf = vec![0u8; 4096];
        loop {
            if let Some(Frame::Message(ack)) = self.reader.next_frame() {
                return Ok(ack);
            }
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut buf))
                .await
                .map_err(|_| ClientError::Timeout {
                    addr: self.addr.clone(),
                    secs: self.timeout.as_secs(),
                })?
                .map_err(|source| ClientError::Io {
                    addr: self.addr.clone(),
                    cause: source,
                })?;
            if n == 0 {
                return Err(ClientError::Closed {
                    addr: self.addr.clone(),
                });
            }
            self.reader.feed(&buf[..n]);
        }
    }
}

/// MSA-1 and MSA-3 (or ERR-8) of an ACK, for printing: `("AA", "")`, `("AE", "reason …")`.
pub fn ack_summary(ack: &[u8]) -> (String, String) {
    let text = match std::str::from_utf8(ack) {
        Ok(t) => std::borrow::Cow::Borrowed(t),
        // An ACK in the message's charset (MSH-18 GB18030).
        Err(_) => encoding_rs::GB18030.decode(ack).0,
    };
    let mut code = String::new();
    let mut why = String::new();
    for seg in text.split(['\r', '\n']) {
        let f: Vec<&str> = seg.split('|').collect();
        match f.first() {
            Some(&"MSA") => {
                code = f.get(1).unwrap_or(&"").to_string();
                why = f.get(3).unwrap_or(&"").to_string();
            }
            Some(&"ERR") if why.is_empty() => why = f.get(8).unwrap_or(&"").to_string(),
            _ => {}
        }
    }
    (code, why)
}
