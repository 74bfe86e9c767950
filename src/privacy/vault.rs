//! The re-identification vault (R-ANO-6) and survey contact references (R-ANO-7).
//!
//! Name, mobile, guardian mobile, patient id and visit number are sealed with AES-256-GCM under
//! a key from the environment (never the config file) and stored by pseudonym. The associated
//! data binds each sealed record to its pseudonym and key id, so a row copied onto another
//! pseudonym, or edited, fails to open (`Tampered`). Only the (caller, purpose) pairs of
//! [`cem_pipeline::reid::allowed`] read, only their fields, and every lookup is audited with its
//! outcome and never a clear value.
//!
//! A contact reference is `cr_{jobId}.{tag}`: the tag is 128 bits of HMAC-SHA256 under a key
//! derived from the vault key, so it cannot be guessed or forged, and the same job always gets
//! the same reference — a retried push carries a body identical to the first one under the same
//! `Idempotency-Key`, and sending writes nothing. It is valid until the job's due time + 72 h.

use std::collections::HashMap;

use aes_gcm::aead::{Aead, Generate, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use cem_pipeline::reid::{Caller, Purpose, VaultRecord};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// AES-256 keys are exactly this long.
pub const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 12;
/// A contact reference stays valid this long after the job's due time (R-ANO-7).
pub const CONTACT_REF_VALID_MS: i64 = 72 * 3_600_000;

/// Why the vault could not do what was asked. Never contains a clear value or a key.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(
        "the vault key {key_id:?} is {len} bytes; AES-256 needs exactly {KEY_BYTES} (generate one with `openssl rand -hex 32`)"
    )]
    KeyLength { key_id: String, len: usize },
    #[error("the vault key id is empty; set a short label such as `v2026a` so keys can rotate")]
    EmptyKeyId,
    #[error(
        "the vault record for {pseudonym} was sealed with key id {key_id:?}, which is not configured: add it under [vault] previous"
    )]
    UnknownKey { pseudonym: String, key_id: String },
    #[error(
        "the vault record for {pseudonym} failed authentication: the row was altered or moved; restore it from a backup"
    )]
    Tampered { pseudonym: String },
    #[error("cannot encrypt a vault record")]
    Seal,
}

/// The vault keys: the current one seals, every configured one opens.
#[derive(Clone)]
pub struct VaultCipher {
    current: String,
    keys: HashMap<String, (Aes256Gcm, Hmac<Sha256>)>,
}

impl std::fmt::Debug for VaultCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultCipher")
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

impl VaultCipher {
    /// `current` seals; `previous` (key id, key) only open records sealed before a rotation.
    pub fn new(current: (&str, &[u8]), previous: &[(String, Vec<u8>)]) -> Result<Self, VaultError> {
        let mut keys = HashMap::new();
        let all = std::iter::once((current.0, current.1))
            .chain(previous.iter().map(|(id, k)| (id.as_str(), k.as_slice())));
        for (id, key) in all {
            if id.trim().is_empty() {
                return Err(VaultError::EmptyKeyId);
            }
            let len_err = || VaultError::KeyLength {
                key_id: id.to_string(),
                len: key.len(),
            };
            if key.len() != KEY_BYTES {
                return Err(len_err());
            }
            let aes = Aes256Gcm::new(&Key::<Aes256Gcm>::try_from(key).map_err(|_| len_err())?);
            // Separate keys for separate uses: the reference key is derived, never the AES key.
            let mut derive =
                <Hmac<Sha256> as KeyInit>::new_from_slice(key).map_err(|_| len_err())?;
            derive.update(b"cem-bridge|contact-ref-key");
            let ref_key = derive.finalize().into_bytes();
            let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&ref_key).map_err(|_| len_err())?;
            keys.entry(id.to_string()).or_insert((aes, mac));
        }
        Ok(Self {
            current: current.0.to_string(),
            keys,
        })
    }

    pub fn key_id(&self) -> &str {
        &self.current
    }

    fn aad(pseudonym: &str, key_id: &str) -> Vec<u8> {
        format!("cem-bridge-vault|{pseudonym}|{key_id}").into_bytes()
    }

    /// Seal `plain` for `pseudonym`: (key id, nonce || ciphertext + tag).
    pub fn seal(&self, pseudonym: &str, plain: &[u8]) -> Result<(String, Vec<u8>), VaultError> {
        let (aes, _) = self.keys.get(&self.current).ok_or(VaultError::Seal)?;
        let nonce = Nonce::generate();
        let aad = Self::aad(pseudonym, &self.current);
        let ct = aes
            .encrypt(
                &nonce,
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .map_err(|_| VaultError::Seal)?;
        let mut out = Vec::with_capacity(NONCE_BYTES + ct.len());
        out.extend_from_slice(nonce.as_slice());
        out.extend_from_slice(&ct);
        Ok((self.current.clone(), out))
    }

    /// Open what [`seal`](Self::seal) made for `pseudonym`.
    pub fn open(
        &self,
        pseudonym: &str,
        key_id: &str,
        sealed: &[u8],
    ) -> Result<Vec<u8>, VaultError> {
        let (aes, _) = self
            .keys
            .get(key_id)
            .ok_or_else(|| VaultError::UnknownKey {
                pseudonym: pseudonym.to_string(),
                key_id: key_id.to_string(),
            })?;
        let tampered = || VaultError::Tampered {
            pseudonym: pseudonym.to_string(),
        };
        if sealed.len() < NONCE_BYTES {
            return Err(tampered());
        }
        let (n, ct) = sealed.split_at(NONCE_BYTES);
        let nonce = Nonce::try_from(n).map_err(|_| tampered())?;
        let aad = Self::aad(pseudonym, key_id);
        aes.decrypt(&nonce, Payload { msg: ct, aad: &aad })
            .map_err(|_| tampered())
    }

    fn ref_tag(mac: &Hmac<Sha256>, job_id: &str) -> String {
        let mut m = mac.clone();
        m.update(b"contact-ref|");
        m.update(job_id.as_bytes());
        cem_pipeline::anonymize::hex(&m.finalize().into_bytes()[..16])
    }

    /// The contact reference of a job (R-ANO-7).
    pub fn contact_ref(&self, job_id: &str) -> String {
        let tag = self
            .keys
            .get(&self.current)
            .map(|(_, mac)| Self::ref_tag(mac, job_id))
            .unwrap_or_default();
        format!("cr_{job_id}.{tag}")
    }

    /// The job id a reference names, if its tag verifies under any configured key.
    pub fn verify_contact_ref(&self, contact_ref: &str) -> Option<String> {
        let (job_id, tag) = contact_ref.strip_prefix("cr_")?.split_once('.')?;
        if job_id.is_empty() || job_id.len() > 64 || !job_id.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return None;
        }
        self.keys
            .values()
            .any(|(_, mac)| same_secret(Self::ref_tag(mac, job_id).as_bytes(), tag.as_bytes()))
            .then(|| job_id.to_string())
    }
}

/// Put `"name":"value"` as the last member of a JSON object the bridge serialised itself.
pub fn with_member(payload: &str, name: &str, value: &str) -> String {
    let body = payload.trim_end();
    let Some(inner) = body.strip_suffix('}') else {
        return payload.to_string();
    };
    let value = serde_json::to_string(value).unwrap_or_else(|_| "\"\"".into());
    let sep = if inner.trim_end().ends_with('{') {
        ""
    } else {
        ","
    };
    format!("{inner}{sep}\"{name}\":{value}}}")
}

/// What a lookup came to (the audited outcome).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(VaultRecord),
    NotFound,
    Denied,
}

impl Lookup {
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Found(_) => "ok",
            Self::NotFound => "not_found",
            Self::Denied => "denied",
        }
    }
}

/// Who reads, why, for which job or ticket: the audit trail of a lookup.
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    pub caller: Caller,
    pub purpose: Purpose,
    /// The job or ticket the lookup serves.
    pub job_id: Option<&'a str>,
}

/// Equal without an early exit on the first differing byte.
pub(crate) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cret", b"s3cres"));
        assert!(!same_secret(b"s3cret", b"s3cre"));
        assert!(!same_secret(b"", b"x"));
    }

    fn cipher() -> VaultCipher {
        VaultCipher::new(("v1", &[7u8; 32]), &[]).unwrap()
    }

    #[test]
    fn r_ano_6_sealed_records_open_only_under_their_own_pseudonym() {
        let c = cipher();
        let (kid, sealed) = c.seal("pk_a", "13812345678".as_bytes()).unwrap();
        assert_eq!(kid, "v1");
        assert!(
            !sealed.windows(11).any(|w| w == b"13812345678"),
            "the clear value is not in the sealed bytes"
        );
        assert_eq!(c.open("pk_a", "v1", &sealed).unwrap(), b"13812345678");
        assert!(matches!(
            c.open("pk_b", "v1", &sealed),
            Err(VaultError::Tampered { .. })
        ));
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(
            c.open("pk_a", "v1", &flipped),
            Err(VaultError::Tampered { .. })
        ));
        assert!(matches!(
            c.open("pk_a", "v1", &sealed[..5]),
            Err(VaultError::Tampered { .. })
        ));
        assert!(matches!(
            c.open("pk_a", "v0", &sealed),
            Err(VaultError::UnknownKey { .. })
        ));
        let (_, again) = c.seal("pk_a", "13812345678".as_bytes()).unwrap();
        assert_ne!(sealed, again, "a fresh nonce per seal");
    }

    #[test]
    fn rotation_seals_with_the_new_key_and_still_opens_the_old() {
        let old = cipher();
        let (_, sealed) = old.seal("pk_a", b"x").unwrap();
        let new = VaultCipher::new(("v2", &[9u8; 32]), &[("v1".into(), vec![7u8; 32])]).unwrap();
        assert_eq!(new.open("pk_a", "v1", &sealed).unwrap(), b"x");
        assert_eq!(new.seal("pk_a", b"y").unwrap().0, "v2");
        let r = old.contact_ref("abc123");
        assert_eq!(new.verify_contact_ref(&r).as_deref(), Some("abc123"));
    }

    #[test]
    fn keys_must_be_32_bytes_with_an_id() {
        assert!(matches!(
            VaultCipher::new(("v1", &[1u8; 31]), &[]),
            Err(VaultError::KeyLength { len: 31, .. })
        ));
        assert!(matches!(
            VaultCipher::new((" ", &[1u8; 32]), &[]),
            Err(VaultError::EmptyKeyId)
        ));
    }

    #[test]
    fn r_ano_7_contact_refs_verify_and_cannot_be_forged() {
        let c = cipher();
        let job = "0123456789abcdef0123456789abcdef";
        let r = c.contact_ref(job);
        assert!(r.starts_with("cr_0123456789abcdef"));
        assert_eq!(r, c.contact_ref(job), "stable across retries");
        assert_eq!(c.verify_contact_ref(&r).as_deref(), Some(job));
        let other = VaultCipher::new(("v1", &[8u8; 32]), &[]).unwrap();
        assert_eq!(other.verify_contact_ref(&r), None, "another key");
        let forged = r.replace("cr_0", "cr_1");
        assert_eq!(c.verify_contact_ref(&forged), None, "another job");
        for bad in ["", "cr_", "cr_.", "x", &r[..r.len() - 1], "cr_zz.00"] {
            assert_eq!(c.verify_contact_ref(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn members_are_appended_to_the_stored_payload() {
        assert_eq!(
            with_member(r#"{"a":1}"#, "contactRef", "cr_x.y"),
            r#"{"a":1,"contactRef":"cr_x.y"}"#
        );
        assert_eq!(with_member("{}", "m", "1"), r#"{"m":"1"}"#);
        let v: serde_json::Value =
            serde_json::from_str(&with_member(r#"{"a":{"b":2}}"#, "m", "q\"")).unwrap();
        assert_eq!(v["m"], "q\"");
    }
}
