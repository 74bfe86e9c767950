//! What the listening doors (MLLP, SOAP) share: who may connect (an allow-list of addresses and
//! networks), the count of what they turn away, and optional TLS from PEM files.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

/// An address or network (`10.1.2.3`, `10.1.0.0/16`, `fd00::/8`) allowed to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    net: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Allowed {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr.trim().parse().map_err(|_| {
            format!("{s:?} is not an IP address or network (e.g. 10.1.2.3 or 10.1.0.0/16)")
        })?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("{s:?}: the prefix length must be 0–{max}")),
            },
        };
        Ok(Self { net, prefix })
    }
}

impl Allowed {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Count a connection, frame or call a listening door turned away (or answered "send again"),
/// by reason: `cem_bridge_door_refused_total{connector, reason}`.
pub fn refused(connector: &str, reason: &'static str) {
    metrics::counter!("cem_bridge_door_refused_total", "connector" => connector.to_string(), "reason" => reason)
        .increment(1);
}

/// An empty list allows everyone.
pub fn allowed(list: &[Allowed], ip: IpAddr) -> bool {
    list.is_empty() || list.iter().any(|a| a.contains(ip))
}

/// A TLS setup that could not be loaded: which file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("{path} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: String },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: String },
    #[error("the certificate and key in {cert} / {key} do not form a TLS server setup: {reason}")]
    Invalid {
        cert: String,
        key: String,
        reason: String,
    },
}

/// A TLS acceptor from a PEM certificate chain and a PEM private key.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.display().to_string(),
            cause: source,
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.display().to_string(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::NoKey {
        path: key.display().to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key_der))
        .map_err(|e| TlsError::Invalid {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
            reason: e.to_string(),
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_networks_are_matched() {
        let list: Vec<Allowed> = ["10.1.0.0/16", "192.168.5.7", "fd00::/8"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert!(allowed(&list, "10.1.200.3".parse().unwrap()));
        assert!(!allowed(&list, "10.2.0.1".parse().unwrap()));
        assert!(allowed(&list, "192.168.5.7".parse().unwrap()));
        assert!(!allowed(&list, "192.168.5.8".parse().unwrap()));
        assert!(allowed(&list, "fd12::1".parse().unwrap()));
        assert!(allowed(&list, "::ffff:10.1.0.9".parse().unwrap()));
        assert!(allowed(&[], "8.8.8.8".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Allowed>().is_err());
        assert!("example.org".parse::<Allowed>().is_err());
        let any: Allowed = "0.0.0.0/0".parse().unwrap();
        assert!(any.contains("1.2.3.4".parse().unwrap()));
    }
}
