//! Group commit for the audit events of credential use (releases and tool runs).
//!
//! Those events do not accompany another state change (only the connection's last-use
//! time), and there can be thousands a second, each of which must be durable before its
//! caller answers. One writer task per process takes every event waiting, appends them
//! in one transaction (two audit statements and one last-use update, whatever the number)
//! and, after the commit, answers each caller. A caller whose event is not committed gets
//! an error and releases nothing. The chain and its order are exactly those of single
//! appends; only the number of commits changes.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::audit::{self, Event};
use crate::clock::Clock;
use crate::store::Db;

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

async fn writer(db: Db, clock: Arc<dyn Clock>, mut rx: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let result = commit(&db, clock.as_ref(), &mut batch).await;
        for (i, p) in batch.drain(..).enumerate() {
            let answer = match &result {
                Ok(first) => Ok(first + i64::try_from(i).unwrap_or(0)),
                Err(e) => Err(e.clone()),
            };
            // The caller may have gone away; its event is committed regardless.
            let _ = p.done.send(answer);
        }
    }
}

/// Writes one batch; returns the first event's sequence number.
async fn commit(db: &Db, clock: &dyn Clock, batch: &mut [Pending]) -> Result<i64, String> {
    let at_ms = clock.unix_ms();
    let now = clock.unix();
    let mut touched = BTreeMap::new();
    let mut events = Vec::with_capacity(batch.len());
    for p in batch.iter_mut() {
        if let Some(id) = p.touch.take() {
            touched.insert(id, ());
        }
        let placeholder = Event::new(p.event.kind, p.event.actor.clone(), String::new());
        events.push((at_ms, std::mem::replace(&mut p.event, placeholder)));
    }
    let n = i64::try_from(events.len()).unwrap_or(0);
    let run = async {
        let mut tx = db.begin().await?;
        let ids: Vec<&str> = touched.keys().map(String::as_str).collect();
        crate::store::connection::touch_many(&mut tx, &ids, now).await?;
        let last = audit::append_many(&mut tx, events).await?;
        tx.commit().await?;
        Ok::<i64, sqlx::Error>(last - n + 1)
    };
    run.await.map_err(|e| {
        tracing::error!(error = %e, events = n, "audit batch failed");
        "database error".to_owned()
    })
}
