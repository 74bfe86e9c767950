//! How a dead letter is identified and sealed before the store keeps it: the content hash
//! (R-EVT-4), and the body and the mapping-visible headers sealed with the vault key under
//! associated data naming the hash (R-ANO-8).

use cem_pipeline::anonymize::hex;
use sha2::{Digest, Sha256};

use crate::store::StoreError;

/// SHA-256 of the body, hex (R-EVT-4 content hash).
pub fn content_hash(body: &[u8]) -> String {
    hex(&Sha256::digest(body))
}

/// The most of a dead letter's body the store keeps (issue 20 §1). A bigger body — an
/// `oversized` one above all — is kept as its first 64 KiB, with the size and hash of the
/// whole; the broker's dead-letter queue keeps the original, whole. Enough to see what the
/// sender sent; `dlq replay` sends such a prefix nowhere.
pub const MAX_STORED_BODY: usize = 64 * 1024;

/// What of `body` the store keeps: all of it, or its first [`MAX_STORED_BODY`] bytes.
pub fn stored_part(body: &[u8]) -> &[u8] {
    &body[..body.len().min(MAX_STORED_BODY)]
}

/// Whether a dead letter of `size_bytes` was kept only in part.
pub fn kept_in_part(size_bytes: i64) -> bool {
    usize::try_from(size_bytes).map_or(true, |n| n > MAX_STORED_BODY)
}

/// The associated data a dead-letter body is sealed under: its content hash.
pub fn dead_letter_aad(content_hash: &str) -> String {
    format!("dl|{content_hash}")
}

/// The headers a mapping may match on (`$header.NAME`), as sealed JSON for the dead-letter
/// record; broker and bridge headers (`x-…`) are left out. `None` when there are none.
pub fn seal_headers(
    vault: &crate::privacy::vault::VaultCipher,
    content_hash: &str,
    headers: &std::collections::BTreeMap<String, String>,
) -> Result<Option<Vec<u8>>, StoreError> {
    let kept: std::collections::BTreeMap<&String, &String> = headers
        .iter()
        .filter(|(k, _)| !k.to_ascii_lowercase().starts_with("x-"))
        .collect();
    if kept.is_empty() {
        return Ok(None);
    }
    let json = serde_json::to_vec(&kept).map_err(|_| StoreError::Sealing)?;
    let (_, sealed) = vault
        .seal(
            &crate::store::dead_letters::dead_letter_headers_aad(content_hash),
            &json,
        )
        .map_err(|_| StoreError::Sealing)?;
    Ok(Some(sealed))
}

/// Associated data sealing a dead letter's headers (its body uses `dl|{hash}`).
pub fn dead_letter_headers_aad(content_hash: &str) -> String {
    format!("dlh|{content_hash}")
}
