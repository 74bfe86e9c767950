//! The commands of `main.rs` other than `run`: [`inspect`] (`dlq`, `trace`), [`dlq_replay`],
//! [`map`] (`test`, `map`), [`publish`], [`health`] and the [`bench`]es. Nothing imports this room but
//! `main.rs`.
//!
//! May import: every room below it (`app` for secrets and start-up, `store`, `config`, …).

pub mod bench;
pub mod dlq_replay;
pub mod health;
pub mod inspect;
pub mod map;
pub mod publish;
