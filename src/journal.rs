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
//!
//! An event may carry a [`Basis`]: the rows its release was decided on. It is written only
//! if they still hold when its batch is (in the same statement or transaction); if they do
//! not, nothing of the batch is written, that caller is told so (`Unrecorded::Stale`), and
//! the rest of the batch is linked again and written without it.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::audit::{self, Event};
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::store::agents::{self as agent_rows, Basis};
use crate::store::audit::{self as audit_rows, AtHead, EventRow};
use crate::store::{Backend, Db};

/// The most events one transaction carries.
const MAX_BATCH: usize = 512;

struct Pending {
    event: Event,
    /// A connection whose last-use time becomes the event's time.
    touch: Option<String>,
    basis: Option<Basis>,
    done: oneshot::Sender<Result<i64, Unrecorded>>,
}

/// Why an event was not recorded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the audit trail could not be written: {reason}")]
pub struct NotRecorded {
    pub reason: String,
    /// The database was out of reach (see `store::is_unavailable`): the same request can
    /// succeed once it is back.
    pub unavailable: bool,
}

impl NotRecorded {
    fn new(reason: &str) -> NotRecorded {
        NotRecorded {
            reason: reason.to_owned(),
            unavailable: false,
        }
    }
}

/// Why an event with a basis was not recorded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unrecorded {
    /// The rows it was decided on have changed since they were read: decide again.
    #[error("the rows the event was decided on have changed")]
    Stale,
    #[error(transparent)]
    Failed(#[from] NotRecorded),
}

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
        Journal::start_with(db, clock, Arc::new(Metrics::new()))
    }

    /// As [`Journal::start`], counting each commit's size and latency in `metrics`.
    pub fn start_with(db: Db, clock: Arc<dyn Clock>, metrics: Arc<Metrics>) -> Journal {
        let (queue, rx) = mpsc::channel(8 * MAX_BATCH);
        tokio::spawn(writer(db, clock, metrics, rx));
        Journal { queue }
    }

    /// Appends `event` (and records the use of connection `touch`); returns once it is
    /// committed, with its sequence number.
    pub async fn record(&self, event: Event, touch: Option<String>) -> Result<i64, NotRecorded> {
        self.record_if(event, touch, None)
            .await
            .map_err(|e| match e {
                Unrecorded::Failed(e) => e,
                Unrecorded::Stale => NotRecorded::new("stale"),
            })
    }

    /// As [`Journal::record`], and only if `basis` still holds when the event is written.
    pub async fn record_if(
        &self,
        event: Event,
        touch: Option<String>,
        basis: Option<Basis>,
    ) -> Result<i64, Unrecorded> {
        let stopped = || Unrecorded::Failed(NotRecorded::new("the writer has stopped"));
        let (done, answer) = oneshot::channel();
        self.queue
            .send(Pending {
                event,
                touch,
                basis,
                done,
            })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Attempts at the one-statement append before taking the head's lock instead.
const OPTIMISTIC_TRIES: usize = 3;

async fn writer(
    db: Db,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    mut rx: mpsc::Receiver<Pending>,
) {
    let mut pending = Vec::with_capacity(MAX_BATCH);
    // The chain's head as this writer last left it: on PostgreSQL the next batch is
    // appended in one statement on the condition that nobody has moved it since.
    let mut head = None;
    while rx.recv_many(&mut pending, MAX_BATCH).await > 0 {
        let at_ms = clock.unix_ms();
        let mut batch = Batch::default();
        for p in pending.drain(..) {
            batch.rows.push(audit::unlinked((at_ms, p.event)));
            batch.touch.push(p.touch);
            batch.bases.push(p.basis);
            batch.callers.push(p.done);
        }
        // Each round either writes the batch, fails it, or takes out the events whose
        // basis no longer holds (so the loop ends).
        loop {
            let started = std::time::Instant::now();
            match commit(&db, clock.unix(), &mut batch, &mut head).await {
                Ok(Committed::Written(first)) => {
                    metrics.audit_batch(batch.rows.len(), started.elapsed());
                    for (i, done) in (0i64..).zip(batch.callers.drain(..)) {
                        // The caller may have gone away; its event is committed regardless.
                        let _ = done.send(Ok(first + i));
                    }
                    break;
                }
                Ok(Committed::Stale(at)) => {
                    for i in at.into_iter().rev() {
                        batch.rows.remove(i);
                        batch.touch.remove(i);
                        batch.bases.remove(i);
                        let _ = batch.callers.remove(i).send(Err(Unrecorded::Stale));
                    }
                    if batch.rows.is_empty() {
                        break;
                    }
                }
                Err(e) => {
                    for done in batch.callers.drain(..) {
                        let _ = done.send(Err(Unrecorded::Failed(e.clone())));
                    }
                    break;
                }
            }
        }
    }
}

/// The events of one round, with what each caller asked for.
#[derive(Default)]
struct Batch {
    rows: Vec<EventRow>,
    touch: Vec<Option<String>>,
    bases: Vec<Option<Basis>>,
    callers: Vec<oneshot::Sender<Result<i64, Unrecorded>>>,
}

enum Committed {
    /// Written; the first event's sequence number.
    Written(i64),
    /// Nothing written: the bases of these events (indexes, ascending) no longer hold.
    Stale(Vec<usize>),
}

/// Writes one batch, or finds the events whose basis no longer holds; leaves `head` where
/// the chain is after it (`None` when unknown).
async fn commit(
    db: &Db,
    now: i64,
    batch: &mut Batch,
    head: &mut Option<(i64, Vec<u8>)>,
) -> Result<Committed, NotRecorded> {
    let rows = &mut batch.rows;
    let n = i64::try_from(rows.len()).unwrap_or(0);
    let touched: BTreeSet<&str> = batch.touch.iter().flatten().map(String::as_str).collect();
    let touch: Vec<&str> = touched.into_iter().collect();
    let bases: Vec<(usize, &Basis)> = batch
        .bases
        .iter()
        .enumerate()
        .filter_map(|(i, b)| b.as_ref().map(|b| (i, b)))
        .collect();
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
                match audit_rows::append_at_head(db.pool(), seq, &hash, rows, &bases, now).await? {
                    AtHead::Written => return Ok(Committed::Written(seq + 1)),
                    AtHead::Stale(at) => {
                        // Nothing was written: the head is as it was.
                        *head = Some((seq, hash));
                        return Ok(Committed::Stale(at));
                    }
                    AtHead::Moved => {}
                }
            }
        }
        let mut tx = db.begin().await?;
        crate::store::connection::touch_many(&mut tx, &touch, now).await?;
        let last = audit::append_rows(&mut tx, rows).await?;
        // Checked last, holding the head's lock, each check with a snapshot of its own (on
        // PostgreSQL): a change committed before it is seen; a revocation, refresh or
        // disconnect not yet committed appends its own event, so it waits for this
        // transaction and comes after the release.
        let stale = agent_rows::stale_bases(&mut tx, &bases, now).await?;
        if !stale.is_empty() {
            // Rolled back: nothing of the batch is written.
            return Ok(Committed::Stale(stale));
        }
        tx.commit().await?;
        Ok::<Committed, sqlx::Error>(Committed::Written(last - n + 1))
    };
    let result = run.await;
    match (&result, rows.last()) {
        (Ok(Committed::Written(_)), Some(last)) => *head = Some((last.seq, last.hash.clone())),
        (Ok(Committed::Stale(_)), _) => {}
        _ => *head = None,
    }
    result.map_err(|e| {
        tracing::error!(error = %e, events = n, "audit batch failed");
        NotRecorded {
            reason: "database error".to_owned(),
            unavailable: crate::store::is_unavailable(&e),
        }
    })
}
