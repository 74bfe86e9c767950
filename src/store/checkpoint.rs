//! SQLite's WAL checkpoints, off the write path. Left to itself, SQLite checkpoints inside the
//! commit that grows the write-ahead log past `wal_autocheckpoint` pages: that commit then also
//! copies the log into the database file and syncs it, and the ingest batch waiting on it waits
//! for all of that. Here a task of its own runs a PASSIVE checkpoint (it never blocks a writer
//! or a reader) on its own connection every [`EVERY`], so the copying and its sync happen beside
//! the writer, on the other core. Under a steady stream of commits such a checkpoint is always
//! one commit behind, and the log only starts over once a checkpoint copied all of it: when the
//! log has grown past [`RESTART_PAGES`], the task copies the little that is left in the writer
//! turn (`Store::checkpoint_between_writes`), so the log stays near that size. Each connection
//! keeps an automatic checkpoint at [`BACKSTOP_PAGES`] as a backstop, should this task fall
//! behind or stop.
//!
//! PostgreSQL checkpoints by itself; there the task returns at once.

use std::time::Duration;

use tracing::{debug, warn};

use crate::process::shutdown::Shutdown;
use crate::store::{Backend, Store};

/// How often the log is copied into the database file.
pub const EVERY: Duration = Duration::from_millis(200);

/// Log pages (4 KiB each) past which a checkpoint in the writer turn lets the log start over.
pub const RESTART_PAGES: i64 = 4_096;

/// The automatic checkpoint each SQLite connection keeps (pages of the log, 4 KiB each): well
/// above what one busy period of [`EVERY`] writes, so it only runs when this task does not.
pub const BACKSTOP_PAGES: u32 = 16_384;

/// Checkpoint every [`EVERY`] until shutdown (SQLite only).
pub async fn run(store: Store, mut shutdown: Shutdown) {
    if store.backend() != Backend::Sqlite {
        return;
    }
    let mut failing = false;
    while !shutdown.sleep(EVERY).await {
        let done = match store.checkpoint().await {
            Ok(Some(c)) if c.log_pages >= RESTART_PAGES => store.checkpoint_between_writes().await,
            other => other,
        };
        match done {
            Ok(done) => {
                if failing {
                    debug!("WAL checkpoints work again");
                }
                failing = false;
                if let Some(c) = done.filter(|c| c.log_pages > 0) {
                    debug!(
                        log_pages = c.log_pages,
                        copied = c.copied_pages,
                        "WAL checkpoint"
                    );
                }
            }
            // Said once per run of failures: the automatic checkpoint still bounds the log.
            Err(e) if !failing => {
                failing = true;
                warn!(error = %e, "WAL checkpoint failed; SQLite's automatic checkpoint takes over until it works again");
            }
            Err(_) => {}
        }
    }
}

/// What one checkpoint found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Pages in the write-ahead log.
    pub log_pages: i64,
    /// Of those, copied into the database file (now or before).
    pub copied_pages: i64,
}
