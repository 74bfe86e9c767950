//! Personal data: the vault, contactRef, what leaves the bridge (R-ANO-1..8), and the opt-out
//! and staff lists.

mod lists;
mod oversized;
mod privacy;
