//! Group commit for the audit events of credential use (releases and tool runs).
//!
//! Those events do not accompany another state change (only the connection's last-use
//! time), and there can be thousands a second, each of which must be durable before its
//! caller answers. One writer task per process takes every event waiting, appends them
//! in one transaction whatever their number and, after the commit, answers each caller. A
//! caller whose event is not committed gets an error and releases nothing. The chain and
//! its order are exactly those of single appends; only the number of commits changes.
//!
//! On PostgreSQL, a batch with no last-use time to write is one statement, conditional on
//! the head being where this writer left it (see `store::audit::append_at_head`); when
//! another writer has moved it, the head is read again, and after a few misses the batch
//! takes the head's lock in a transaction like any other append.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::audit::{self, Event};
use crate::clock::Clock;
use crate::store::audit::{self as audit_rows, EventRow};
use crate::store::{Backend, Db};

/// The most events one transaction carries.
const MAX_BATCH: usize = 512;

struct Pending {
    event: Event,
    /// A connection whose last-use time becomes the event's time.
    touch: Option<String>,
    done: oneshot::Sender<Result<i64, String>>,
}

/// Why an event was not recorded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the audit trail could not be written: {0}")]
pub struct NotRecorded(pub String);

/// Handle to the writer task.
#[derive(Clone)]
pub struct Journal {
    queue: mpsc::Sender<Pending>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Journal")
    }
}

impl Journal {
    /// Starts the writer on the current Tokio runtime.
    pub fn start(db: Db, clock: Arc<dyn Clock>) -> Journal {
        let (queue, rx) = mpsc::channel(8 * MAX_BATCH);
        tokio::spawn(writer(db, clock, rx));
        Journal { queue }
    }

    /// Appends `event` (and records the use of connection `touch`); returns once it is
    /// committed, with its sequence number.
    pub async fn record(&self, event: Event, touch: Option<String>) -> Result<i64, NotRecorded> {
        let (done, answer) = oneshot::channel();
        self.queue
            .send(Pending { event, touch, done })
            .await
            .map_err(|_| NotRecorded("the writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| NotRecorded("the writer has stopped".into()))?
            .map_err(NotRecorded)
    }
}

/// Attempts at the one-statement append before taking the head's lock instead.
const OPTIMISTIC_TRIES: usize = 3;

async fn writer(db: Db, clock: Arc<dyn Clock>, mut rx: mpsc::Receiver<Pending>) {
    let mut pending = Vec::with_capacity(MAX_BATCH);
    // The chain's head as this writer last left it: on PostgreSQL the next batch is
    // appended in one statement on the condition that nobody has moved it since.
    let mut head = None;
    while rx.recv_many(&mut pending, MAX_BATCH).await > 0 {
        let at_ms = clock.unix_ms();
        let mut touched = BTreeSet::new();
        let mut rows = Vec::with_capacity(pending.len());
        let mut callers = Vec::with_capacity(pending.len());
        for p in pending.drain(..) {
            touched.extend(p.touch);
            rows.push(audit::unlinked((at_ms, p.event)));
            callers.push(p.done);
        }
        let ids: Vec<&str> = touched.iter().map(String::as_str).collect();
        let result = commit(&db, clock.unix(), &mut rows, &ids, &mut head).await;
        for (i, done) in (0i64..).zip(callers) {
            // The caller may have gone away; its event is committed regardless.
            let _ = done.send(result.clone().map(|first| first + i));
        }
    }
}

/// Writes one batch; returns the first event's sequence number and leaves `head` where
/// the chain is after it (`None` when unknown).
async fn commit(
    db: &Db,
    now: i64,
    rows: &mut [EventRow],
    touch: &[&str],
    head: &mut Option<(i64, Vec<u8>)>,
) -> Result<i64, String> {
    let n = i64::try_from(rows.len()).unwrap_or(0);
    let run = async {
        // One statement, no lock held between round trips, when there is nothing else to
        // write and the head is where this writer left it.
        if touch.is_empty() && db.backend() == Backend::Postgres {
            for _ in 0..OPTIMISTIC_TRIES {
                let (seq, hash) = match head.take() {
                    Some(h) => h,
                    None => audit_rows::head(db.pool()).await?,
                };
                audit::link(rows, seq + 1, hash.clone());
                if audit_rows::append_at_head(db.pool(), seq, &hash, rows).await? {
                    return Ok(seq + 1);
                }
            }
        }
        let mut tx = db.begin().await?;
        crate::store::connection::touch_many(&mut tx, touch, now).await?;
        let last = audit::append_rows(&mut tx, rows).await?;
        tx.commit().await?;
        Ok::<i64, sqlx::Error>(last - n + 1)
    };
    let result = run.await;
    *head = match (&result, rows.last()) {
        (Ok(_), Some(last)) => Some((last.seq, last.hash.clone())),
        _ => None,
    };
    result.map_err(|e| {
        tracing::error!(error = %e, events = n, "audit batch failed");
        "database error".to_owned()
    })
}
