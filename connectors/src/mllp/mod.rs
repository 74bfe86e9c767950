//! The MLLP door: HL7 v2 over TCP, one message per frame, each answered with an HL7 ACK only
//! once the bridge says what became of it ([`crate::answer`]): `AA` when its effects are durable
//! (or it is a duplicate), `AE` with the reason when it was dead-lettered, `AR` when it was not
//! taken (store unavailable, bridge stopping) so that the sender sends it again.
//!
//! Messages of one connection are handled in order (the next frame is read after the previous
//! one is answered); many connections share the ingest loop's batches. Limits: frame size,
//! idle timeout, connection count, an address allow-list, optional TLS.

pub mod ack;
pub mod client;
pub mod frame;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::answer::{self, Answer, AnsweringSource, Inbox};
use crate::listen::{Allowed, allowed, refused};
use crate::source::{Delivery, Settle, SourceBuilder, SourceError};
use ack::{AckCode, InboundHeader};
use frame::{Frame, FrameReader};

/// An MLLP listener's settings.
#[derive(Clone)]
pub struct MllpConfig {
    /// The connector name (logs, metrics).
    pub name: String,
    pub listen: String,
    pub max_frame_bytes: usize,
    /// Close a connection that sent nothing for this long.
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// Empty: any address.
    pub allow: Vec<Allowed>,
    pub tls: Option<TlsAcceptor>,
    /// Answer `AR` when the bridge has not settled a message within this time.
    pub answer_timeout: Duration,
}

impl std::fmt::Debug for MllpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MllpConfig")
            .field("name", &self.name)
            .field("listen", &self.listen)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl SourceBuilder for MllpConfig {
    type Source = AnsweringSource;

    async fn connect(&self) -> Result<AnsweringSource, SourceError> {
        let listener = TcpListener::bind(&self.listen).await.map_err(|e| {
            SourceError::Transport(format!("cannot listen on {}: {e}", self.listen).into())
        })?;
        let (inbox, make) = answer::channel(&self.name, self.max_connections, self.answer_timeout);
        info!(connector = %self.name, listen = %self.listen, tls = self.tls.is_some(), "MLLP door listening");
        let cfg = Arc::new(self.clone());
        let local = listener.local_addr().ok();
        Ok(make(tokio::spawn(accept_loop(listener, inbox, cfg)), local))
    }

    fn describe(&self) -> String {
        format!("MLLP listener on {}", self.listen)
    }
}

async fn accept_loop(listener: TcpListener, inbox: Inbox, cfg: Arc<MllpConfig>) {
    let limit = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
    let mut conns = JoinSet::new();
    let mut stop = inbox.clone();
    loop {
        tokio::select! {
            _ = stop.stopped() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    if !allowed(&cfg.allow, peer.ip()) {
                        warn!(connector = %cfg.name, peer = %peer.ip(), "MLLP connection refused: the address is not in `allow`");
                        refused(&cfg.name, "address_not_allowed");
                        continue;
                    }
                    let Ok(permit) = limit.clone().try_acquire_owned() else {
                        warn!(connector = %cfg.name, peer = %peer.ip(), max = cfg.max_connections,
                              "MLLP connection refused: max_connections reached");
                        refused(&cfg.name, "too_many_connections");
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let (inbox, cfg) = (inbox.clone(), cfg.clone());
                    conns.spawn(async move {
                        let _permit = permit;
                        match &cfg.tls {
                            None => serve(stream, peer, inbox, &cfg).await,
                            Some(tls) => {
                                match tokio::time::timeout(Duration::from_secs(10), tls.accept(stream)).await {
                                    Ok(Ok(s)) => serve(s, peer, inbox, &cfg).await,
                                    Ok(Err(e)) => {
                                        warn!(connector = %cfg.name, peer = %peer.ip(), error = %e, "MLLP TLS handshake failed");
                                        refused(&cfg.name, "tls_handshake");
                                    }
                                    Err(_) => {
                                        warn!(connector = %cfg.name, peer = %peer.ip(), "MLLP TLS handshake timed out");
                                        refused(&cfg.name, "tls_handshake");
                                    }
                                }
                            }
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, keep listening.
                    warn!(connector = %cfg.name, error = %e, "MLLP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    // Connections answer the message they hold, then close.
    while conns.join_next().await.is_some() {}
}

/// HL7 DTM of now, in UTC with its offset.
fn now_dtm() -> String {
    jiff::Timestamp::now()
        .strftime("%Y%m%d%H%M%S+0000")
        .to_string()
}

/// One connection: read frames, hand each to the bridge, write its ACK, in order.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    mut inbox: Inbox,
    cfg: &MllpConfig,
) {
    debug!(connector = %cfg.name, peer = %peer.ip(), "MLLP connection opened");
    let mut reader = FrameReader::new(cfg.max_frame_bytes);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while let Some(f) = reader.next_frame() {
            let (header, code, text) = match f {
                Frame::Message(body) => {
                    let header = InboundHeader::parse(&body);
                    let delivery = Delivery {
                        body,
                        ..Default::default()
                    };
                    let (code, text) = match inbox.submit(delivery).await {
                        Answer::Done(Settle::DeadLetter { reason, detail }) => {
                            (AckCode::Error, Some(format!("{reason}: {detail}")))
                        }
                        Answer::Done(_) => (AckCode::Accept, None),
                        Answer::Unavailable => {
                            refused(&cfg.name, "unavailable");
                            (
                                AckCode::Reject,
                                Some("not stored now (store unavailable or bridge stopping): send it again".to_string()),
                            )
                        }
                    };
                    (header, code, text)
                }
                Frame::Oversized { bytes, head } => {
                    let header = InboundHeader::parse(&head);
                    warn!(connector = %cfg.name, message_id = %header.control_id(), bytes, limit = cfg.max_frame_bytes,
                          "MLLP frame over max_message_bytes: answered AE, not stored");
                    refused(&cfg.name, "oversized");
                    let text = format!(
                        "oversized: the frame is {bytes} bytes, over the {} byte limit; not stored",
                        cfg.max_frame_bytes
                    );
                    (header, AckCode::Error, Some(text))
                }
            };
            let ack = ack::build(&header, code, text.as_deref(), &now_dtm());
            if let Err(e) = stream.write_all(&frame::wrap(&ack)).await {
                // The sender will resend what it has no ACK for; a durable one is a duplicate.
                debug!(connector = %cfg.name, peer = %peer.ip(), error = %e, "MLLP connection lost before the ACK was written");
                return;
            }
            if stream.flush().await.is_err() {
                return;
            }
            if inbox.stopping() {
                let _ = stream.shutdown().await;
                return;
            }
        }
        let read = tokio::select! {
            _ = inbox.stopped() => {
                let _ = stream.shutdown().await;
                return;
            }
            r = tokio::time::timeout(cfg.idle_timeout, stream.read(&mut buf)) => r,
        };
        match read {
            Ok(Ok(0)) => {
                if reader.mid_frame() {
                    debug!(connector = %cfg.name, peer = %peer.ip(), "MLLP connection closed mid-frame");
                }
                return;
            }
            Ok(Ok(n)) => reader.feed(&buf[..n]),
            Ok(Err(e)) => {
                debug!(connector = %cfg.name, peer = %peer.ip(), error = %e, "MLLP read failed");
                return;
            }
            Err(_) => {
                info!(connector = %cfg.name, peer = %peer.ip(), idle_s = cfg.idle_timeout.as_secs(), "MLLP connection idle: closed");
                let _ = stream.shutdown().await;
                return;
            }
        }
    }
}
