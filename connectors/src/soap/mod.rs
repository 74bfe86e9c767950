//! The SOAP door: a 互联互通 subscriber. Integration platforms (东华 HSB, 嘉和, 卫宁) push each
//! event synchronously through `HIPMessageServer(action, message)`; the service code in
//! `action` becomes the delivery's `service-code` header, the HL7 v3 XML in `message` its body.
//! The call is answered only once the bridge says what became of the message
//! ([`crate::answer`]): an `MCCI_IN000002UV01` with `AA` (durable, or a duplicate) or `AE` and
//! the reason (dead-lettered), or a SOAP fault with HTTP 503 when it was not taken (store
//! unavailable, bridge stopping) so that the platform sends it again. `GET …?wsdl` describes
//! the service for registering the subscriber.

pub mod client;
pub mod envelope;
pub mod mcci;
pub mod wsdl;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::answer::{self, Answer, AnsweringSource, Inbox};
use crate::listen::{Allowed, allowed, refused};
use crate::source::{Delivery, Settle, SourceBuilder, SourceError};
use envelope::{Blame, SoapVersion};

/// How a caller proves who it is (beyond the address allow-list).
#[derive(Clone, Default)]
pub struct SoapAuth {
    /// `Authorization: Bearer <token>` (scheme case-insensitive).
    pub bearer: Option<String>,
    /// `Authorization: Basic base64(user:password)`, given as `user:password`.
    pub basic: Option<String>,
}

/// A SOAP subscriber's settings.
#[derive(Clone)]
pub struct SoapConfig {
    pub name: String,
    pub listen: String,
    /// The endpoint path, e.g. `/services/HIPMessageServer`.
    pub path: String,
    /// Largest request body taken; a larger one gets 413 and a fault.
    pub max_body_bytes: usize,
    /// Requests being answered at once; more get 503.
    pub max_in_flight: usize,
    pub allow: Vec<Allowed>,
    pub tls: Option<TlsAcceptor>,
    pub auth: SoapAuth,
    pub answer_timeout: Duration,
}

impl std::fmt::Debug for SoapConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoapConfig")
            .field("name", &self.name)
            .field("listen", &self.listen)
            .field("path", &self.path)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl SourceBuilder for SoapConfig {
    type Source = AnsweringSource;

    async fn connect(&self) -> Result<AnsweringSource, SourceError> {
        let tcp = TcpListener::bind(&self.listen).await.map_err(|e| {
            SourceError::Transport(format!("cannot listen on {}: {e}", self.listen).into())
        })?;
        let (inbox, make) = answer::channel(&self.name, self.max_in_flight, self.answer_timeout);
        info!(connector = %self.name, listen = %self.listen, path = %self.path, tls = self.tls.is_some(), "SOAP door listening");
        let state = Arc::new(Door {
            cfg: self.clone(),
            inbox: inbox.clone(),
            in_flight: Semaphore::new(self.max_in_flight.max(1)),
        });
        let app = Router::new().route(&self.path, any(call)).with_state(state);
        let local = tcp.local_addr().ok();
        let listener = Guarded {
            tcp,
            allow: self.allow.clone(),
            tls: self.tls.clone(),
            name: self.name.clone(),
        };
        let mut stop = inbox;
        let server = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<PeerAddr>(),
        )
        .with_graceful_shutdown(async move { stop.stopped().await });
        let name = self.name.clone();
        Ok(make(
            tokio::spawn(async move {
                if let Err(e) = server.await {
                    warn!(connector = %name, error = %e, "SOAP door stopped");
                }
            }),
            local,
        ))
    }

    fn describe(&self) -> String {
        format!("SOAP subscriber on {}{}", self.listen, self.path)
    }
}

struct Door {
    cfg: SoapConfig,
    inbox: Inbox,
    in_flight: Semaphore,
}

/// The caller's address, for the allow-list's logs.
#[derive(Clone, Copy, Debug)]
struct PeerAddr(SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Guarded>> for PeerAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Guarded>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// What a connection is: plain TCP or TLS over it.
trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

/// The TCP listener with the allow-list and optional TLS applied before HTTP sees a connection.
struct Guarded {
    tcp: TcpListener,
    allow: Vec<Allowed>,
    tls: Option<TlsAcceptor>,
    name: String,
}

impl axum::serve::Listener for Guarded {
    type Io = Box<dyn Conn>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, peer): (TcpStream, SocketAddr) = match self.tcp.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!(connector = %self.name, error = %e, "SOAP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if !allowed(&self.allow, peer.ip()) {
                warn!(connector = %self.name, peer = %peer.ip(), "SOAP connection refused: the address is not in `allow`");
                refused(&self.name, "address_not_allowed");
                continue;
            }
            let _ = stream.set_nodelay(true);
            match &self.tls {
                None => return (Box::new(stream), peer),
                // The handshake runs here, bounded, so one slow client delays accepts by at
                // most its timeout.
                Some(tls) => {
                    match tokio::time::timeout(Duration::from_secs(10), tls.accept(stream)).await {
                        Ok(Ok(s)) => return (Box::new(s), peer),
                        _ => {
                            warn!(connector = %self.name, peer = %peer.ip(), "SOAP TLS handshake failed or timed out");
                            refused(&self.name, "tls_handshake");
                        }
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// The SOAP version a request speaks, from its content type (for faults before the body is
/// read): `application/soap+xml` is 1.2.
fn version_of(headers: &HeaderMap) -> SoapVersion {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if ct.contains("soap+xml") {
        SoapVersion::V12
    } else {
        SoapVersion::V11
    }
}

fn soap(status: StatusCode, version: SoapVersion, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(version.content_type()),
    );
    r
}

/// A fault: a sender's fault is 400 in SOAP 1.2 and 500 in SOAP 1.1 (WS-I Basic Profile); a
/// receiver's is 503 with `Retry-After` so the platform sends again.
fn fault(version: SoapVersion, blame: Blame, status: Option<StatusCode>, reason: &str) -> Response {
    let status = status.unwrap_or(match (blame, version) {
        (Blame::Receiver, _) => StatusCode::SERVICE_UNAVAILABLE,
        (Blame::Sender, SoapVersion::V12) => StatusCode::BAD_REQUEST,
        (Blame::Sender, SoapVersion::V11) => StatusCode::INTERNAL_SERVER_ERROR,
    });
    let mut r = soap(status, version, envelope::fault(version, blame, reason));
    if blame == Blame::Receiver {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    r
}

/// Constant-time comparison of a presented secret with the configured one.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Standard base64 with padding (for comparing HTTP Basic credentials).
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn authorised(auth: &SoapAuth, headers: &HeaderMap) -> bool {
    if auth.bearer.is_none() && auth.basic.is_none() {
        return true;
    }
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let (scheme, cred) = value.trim().split_once(' ').unwrap_or((value, ""));
    let cred = cred.trim();
    if scheme.eq_ignore_ascii_case("bearer")
        && let Some(t) = &auth.bearer
    {
        return same(cred.as_bytes(), t.as_bytes());
    }
    if scheme.eq_ignore_ascii_case("basic")
        && let Some(userpass) = &auth.basic
    {
        return same(cred.as_bytes(), base64(userpass.as_bytes()).as_bytes());
    }
    false
}

async fn call(
    State(door): State<Arc<Door>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    method: axum::http::Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let version = version_of(&headers);
    let name = &door.cfg.name;
    if !authorised(&door.cfg.auth, &headers) {
        warn!(connector = %name, peer = %peer.ip(), "SOAP call refused: missing or wrong credentials");
        refused(name, "unauthorised");
        let mut r = fault(
            version,
            Blame::Sender,
            Some(StatusCode::UNAUTHORIZED),
            "credentials missing or wrong: send Authorization as configured for this subscriber",
        );
        let challenge = if door.cfg.auth.bearer.is_some() {
            "Bearer"
        } else {
            "Basic realm=\"cem-bridge\""
        };
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
        return r;
    }
    if method == axum::http::Method::GET {
        let asks_wsdl = uri.query().is_some_and(|q| {
            q.eq_ignore_ascii_case("wsdl") || q.to_ascii_lowercase().starts_with("wsdl")
        });
        if !asks_wsdl {
            return (
                StatusCode::METHOD_NOT_ALLOWED,
                "POST a SOAP envelope here; GET ?wsdl describes the service\n",
            )
                .into_response();
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or(&door.cfg.listen);
        let scheme = if door.cfg.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let url = format!("{scheme}://{host}{}", door.cfg.path);
        let mut r = (StatusCode::OK, wsdl::document(&url)).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/xml; charset=utf-8"),
        );
        return r;
    }
    if method != axum::http::Method::POST {
        return fault(
            version,
            Blame::Sender,
            Some(StatusCode::METHOD_NOT_ALLOWED),
            "use POST",
        );
    }
    let Ok(_permit) = door.in_flight.try_acquire() else {
        refused(name, "too_many_requests");
        return fault(
            version,
            Blame::Receiver,
            None,
            "too many calls in flight: send again shortly",
        );
    };
    let bytes: Bytes = match axum::body::to_bytes(body, door.cfg.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            refused(name, "oversized");
            warn!(connector = %name, peer = %peer.ip(), limit = door.cfg.max_body_bytes, "SOAP request over the body limit: refused, not stored");
            return fault(
                version,
                Blame::Sender,
                Some(StatusCode::PAYLOAD_TOO_LARGE),
                &format!(
                    "the request is over the {} byte limit; not stored",
                    door.cfg.max_body_bytes
                ),
            );
        }
    };
    let call = match envelope::parse(&bytes) {
        Ok(c) => c,
        Err(e) => {
            refused(name, "malformed_envelope");
            warn!(connector = %name, peer = %peer.ip(), error = %e, "SOAP request refused");
            return fault(version, Blame::Sender, None, &e.to_string());
        }
    };
    let inbound = mcci::Inbound::parse(&call.message);
    let delivery = Delivery {
        body: call.message.into_bytes(),
        headers: BTreeMap::from([("service-code".to_string(), call.action.clone())]),
        content_type: Some("application/xml".into()),
        ..Default::default()
    };
    let now = jiff::Timestamp::now();
    let ack = match door.inbox.submit(delivery).await {
        Answer::Done(Settle::DeadLetter { reason, detail }) => mcci::build(
            &inbound,
            mcci::Code::Error,
            Some(&format!("{reason}: {detail}")),
            now,
        ),
        Answer::Done(_) => mcci::build(&inbound, mcci::Code::Accept, None, now),
        Answer::Unavailable => {
            refused(name, "unavailable");
            return fault(
                call.version,
                Blame::Receiver,
                None,
                "not stored now (store unavailable or the bridge is stopping): send it again",
            );
        }
    };
    soap(
        StatusCode::OK,
        call.version,
        envelope::response(call.version, &call.namespace, &ack),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_checked_with_any_scheme_case() {
        let auth = SoapAuth {
            bearer: Some("t0ken".into()),
            basic: Some("hsb:secret".into()),
        };
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            h
        };
        assert!(authorised(&auth, &with("Bearer t0ken")));
        assert!(authorised(&auth, &with("bearer t0ken")));
        assert!(!authorised(&auth, &with("Bearer t0ke")));
        assert!(authorised(&auth, &with("Basic aHNiOnNlY3JldA==")));
        assert!(!authorised(&auth, &with("Basic aHNiOnNlY3JldB==")));
        assert!(!authorised(&auth, &HeaderMap::new()));
        assert!(authorised(&SoapAuth::default(), &HeaderMap::new()));
    }
}
