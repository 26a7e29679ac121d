//! SQLite's WAL checkpoints, off the commit path.
//!
//! By default the commit that takes the log past 1,000 pages copies the log into the
//! database file and syncs it before it returns, so every few hundred releases one waited
//! for a checkpoint. The pool's connections leave that to this task (their own threshold
//! is only a safety net); this task,
//! on a connection of its own, checkpoints every [`TICK`] without blocking anyone
//! (`PASSIVE`). Under continuous commits a passive checkpoint never finds the moment to
//! start the log over, so once the log passes [`RESTART_FROM`] frames and all of it is
//! in the file, it asks for a `RESTART`, which waits (at most [`RESTART_PATIENCE`]) for
//! readers to move past the log's end, writers held meanwhile. Durability
//! is unchanged: every commit still syncs the log (`synchronous = FULL`).

use std::sync::Weak;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::any::AnyConnectOptions;
use sqlx::{ConnectOptions, Executor};

/// How often the log is copied into the database file.
const TICK: Duration = Duration::from_millis(100);
/// Log frames (about 64 MiB of 4 KiB pages) past which the log is started over.
const RESTART_FROM: i64 = 16_384;
/// How long a restart waits for writers and readers to pause, in milliseconds.
const RESTART_PATIENCE: u32 = 50;

/// Statements for the pool's connections: no checkpoint in a commit unless the log is four
/// times past [`RESTART_FROM`] (a safety net, should this task be unable to connect), and
/// a log cut back to 64 MiB once it is started over.
pub(super) const POOL_PRAGMAS: &str =
    "PRAGMA wal_autocheckpoint = 65536; PRAGMA journal_size_limit = 67108864;";

/// Runs until the database is closed or dropped (`open` is the [`super::Db`]'s flag).
pub(super) fn spawn(options: AnyConnectOptions, open: Weak<AtomicBool>) {
    tokio::spawn(async move {
        let mut conn = None;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match open.upgrade() {
                Some(flag) if flag.load(Ordering::Acquire) => {}
                _ => break,
            }
            if conn.is_none() {
                conn = match options.connect().await {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot open a connection for WAL checkpoints");
                        None
                    }
                };
                if let Some(c) = conn.as_mut() {
                    let pragmas = format!("PRAGMA busy_timeout = {RESTART_PATIENCE};");
                    if c.execute(pragmas.as_str()).await.is_err() {
                        conn = None;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            let passive: Result<(i64, i64, i64), _> =
                sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                    .fetch_one(&mut *c)
                    .await;
            let outcome = match passive {
                // Only once everything in the log is in the file: the restart then waits
                // for no copying, only for readers to move past the log's end.
                Ok((_, log, copied)) if log >= RESTART_FROM && copied == log => c
                    .execute("PRAGMA wal_checkpoint(RESTART)")
                    .await
                    .map(|_| ()),
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = outcome {
                tracing::warn!(error = %e, "WAL checkpoint failed; reconnecting");
                conn = None;
            }
        }
    });
}
