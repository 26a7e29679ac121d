//! Agent requests read together (see `Lookups`).

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::AgentError;
use crate::store::Db;
use crate::store::agents::{self as rows, RequestKey, RequestRows};

/// Lookups running at once; each reads every request waiting when it starts.
const READERS: usize = 2;

struct Lookup {
    key: RequestKey,
    /// `Err(unavailable)`: the read failed (its cause is logged), and whether the database
    /// was out of reach.
    done: oneshot::Sender<Result<Option<RequestRows>, bool>>,
}

/// Reads agent-request rows for many requests with one statement: a request waits for a
/// reader, and a reader takes every request waiting when it starts. A read always starts
/// after the request arrived, so a revocation committed before it is always seen.
pub(super) struct Lookups {
    queue: mpsc::Sender<Lookup>,
}

impl Lookups {
    pub(super) fn start(db: &Db) -> Lookups {
        let (queue, rx) = mpsc::channel(64 * rows::MAX_KEYS);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..READERS {
            tokio::spawn(read(db.clone(), Arc::clone(&rx)));
        }
        Lookups { queue }
    }

    pub(super) async fn get(&self, key: RequestKey) -> Result<Option<RequestRows>, AgentError> {
        let stopped = || AgentError::Lookup {
            reason: "the reader has stopped".into(),
            unavailable: false,
        };
        let (done, answer) = oneshot::channel();
        self.queue
            .send(Lookup { key, done })
            .await
            .map_err(|_| stopped())?;
        answer
            .await
            .map_err(|_| stopped())?
            .map_err(|unavailable| AgentError::Lookup {
                reason: "database error".into(),
                unavailable,
            })
    }
}

async fn read(db: Db, rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Lookup>>>) {
    let mut batch = Vec::with_capacity(rows::MAX_KEYS);
    loop {
        if rx.lock().await.recv_many(&mut batch, rows::MAX_KEYS).await == 0 {
            return;
        }
        let mut keys: Vec<RequestKey> = batch.iter().map(|l| l.key.clone()).collect();
        keys.sort_unstable();
        keys.dedup();
        let found = rows::request_rows_many(db.pool(), &keys)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "agent request lookup failed");
                crate::store::is_unavailable(&e)
            });
        for l in batch.drain(..) {
            let answer = match &found {
                Ok(found) => Ok(found
                    .iter()
                    .find(|(k, _)| *k == l.key)
                    .map(|(_, r)| r.clone())),
                Err(unavailable) => Err(*unavailable),
            };
            // The request may have gone away.
            let _ = l.done.send(answer);
        }
    }
}
