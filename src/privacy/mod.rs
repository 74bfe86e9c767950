//! Personal data under control: the re-identification [`vault`] cipher (AES-256-GCM bound to
//! pseudonym and key id, key rotation, `contactRef`), constant-time secret comparison, and the
//! opt-out / staff [`lists`] loaded from files as pseudonyms. No SQL: the vault's rows are
//! written and read by `store::vault`.
//!
//! May import: `config`, `process` and the pipeline crate.

pub mod lists;
pub mod vault;
