//! What every task of one bridge process shares: the injectable [`clock`], the one
//! [`shutdown`] signal, crash [`fault`] points for tests, the log context ([`logctx`]), which
//! sources are consuming ([`health`]), and the live mappings and survey policy a reload swaps
//! ([`live`]), the minute's summary line ([`tally`]), and the codes mapping tables did not
//! know, for the ops page ([`unmatched`]).
//!
//! May import: `config` and the pipeline crate. Imported by every room above it.

pub mod clock;
pub mod fault;
pub mod health;
pub mod live;
pub mod logctx;
pub mod reconnect;
pub mod shutdown;
pub mod tally;
pub mod unmatched;
