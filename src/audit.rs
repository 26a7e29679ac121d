//! The audit trail: append-only, hash-chained events.
//!
//! Every state change that matters calls [`append`] with the transaction that makes the
//! change, so the event commits or rolls back with it. Each event's hash is SHA-256 over a
//! canonical encoding (a label, then every field length-prefixed, then the previous
//! event's hash), and sequence numbers are contiguous from 1. [`verify`] recomputes the
//! chain and the head, so an edited, removed, inserted or reordered event is found.
//! Events never carry a token: `detail` is built by callers from ids, names and counts.

use serde_json::Value;

use crate::crypto::sha256;
use crate::store::audit::{self as rows, EventRow};
use crate::store::{Conn, Db};

/// Who did it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// The service itself (automatic rotation, background refresh).
    System,
    /// An operator at the command line.
    Cli,
    /// A signed-in user, by id.
    User(String),
    /// A signed-in user acting with the admin role, by id.
    Admin(String),
    /// A registered agent service, by name.
    Agent(String),
}

impl Actor {
    fn encode(&self) -> String {
        match self {
            Actor::System => "system".into(),
            Actor::Cli => "cli".into(),
            Actor::User(id) => format!("user:{id}"),
            Actor::Admin(id) => format!("admin:{id}"),
            Actor::Agent(name) => format!("agent:{name}"),
        }
    }
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    Denied,
}

impl Outcome {
    const fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
        }
    }
}

/// The kinds of event, with the stable names written to the trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    KeyInitialized,
    KeyRotated,
    KeyRewrapped,
    KeyRetired,
    RootKeyRotated,
    CredentialStored,
    CredentialDeleted,
    SignIn,
    Connect,
    SignOut,
    SessionsRevoked,
    Disconnect,
    AgentAdded,
    AgentRemoved,
    DelegationCreated,
    CredentialRefreshed,
    RefreshFailed,
    CredentialReleased,
    /// A tool run about to call the provider (its result follows as [`Kind::ToolRun`]).
    ToolStarted,
    ToolRun,
    PolicyDenied,
    UserRevoked,
    /// An OAuth client registered itself (RFC 7591) or was named by its metadata document.
    ClientRegistered,
    /// A client's metadata document changed its redirect URIs or name.
    ClientUpdated,
    GrantApproved,
    GrantDenied,
    GrantRevoked,
    /// Access and refresh tokens issued under a grant (code exchange or refresh).
    TokensIssued,
    /// An access token revoked on its own (RFC 7009).
    TokenRevoked,
    /// A spent authorization code or a rotated refresh token presented again: the grant
    /// is revoked.
    ReplayDetected,
}

impl Kind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::KeyInitialized => "key.initialized",
            Kind::KeyRotated => "key.rotated",
            Kind::KeyRewrapped => "key.rewrapped",
            Kind::KeyRetired => "key.retired",
            Kind::RootKeyRotated => "key.root_rotated",
            Kind::CredentialStored => "credential.stored",
            Kind::CredentialDeleted => "credential.deleted",
            Kind::SignIn => "sign_in",
            Kind::Connect => "connect",
            Kind::SignOut => "sign_out",
            Kind::SessionsRevoked => "sessions.revoked",
            Kind::Disconnect => "disconnect",
            Kind::AgentAdded => "agent.added",
            Kind::AgentRemoved => "agent.removed",
            Kind::DelegationCreated => "delegation.created",
            Kind::CredentialRefreshed => "credential.refreshed",
            Kind::RefreshFailed => "credential.refresh_failed",
            Kind::CredentialReleased => "credential.released",
            Kind::ToolStarted => "tool.started",
            Kind::ToolRun => "tool.run",
            Kind::PolicyDenied => "policy.denied",
            Kind::UserRevoked => "user.revoked",
            Kind::ClientRegistered => "client.registered",
            Kind::ClientUpdated => "client.updated",
            Kind::GrantApproved => "grant.approved",
            Kind::GrantDenied => "grant.denied",
            Kind::GrantRevoked => "grant.revoked",
            Kind::TokensIssued => "grant.tokens_issued",
            Kind::TokenRevoked => "grant.token_revoked",
            Kind::ReplayDetected => "grant.replay_detected",
        }
    }
}

pub use crate::store::audit::Filter;

/// Events matching `filter` after sequence number `after`, at most `limit`, oldest first.
pub async fn search(
    db: &crate::store::Db,
    filter: &Filter,
    after: i64,
    limit: i64,
) -> Result<Vec<crate::store::audit::EventRow>, sqlx::Error> {
    crate::store::audit::search(db.pool(), filter, after, limit).await
}

/// An event to append.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: Kind,
    pub actor: Actor,
    pub subject: String,
    pub outcome: Outcome,
    pub request_id: String,
    pub detail: Value,
}

impl Event {
    pub fn new(kind: Kind, actor: Actor, subject: impl Into<String>) -> Event {
        Event {
            kind,
            actor,
            subject: subject.into(),
            outcome: Outcome::Success,
            request_id: String::new(),
            detail: Value::Null,
        }
    }

    pub fn detail(mut self, detail: Value) -> Event {
        self.detail = detail;
        self
    }

    pub fn request_id(mut self, id: impl Into<String>) -> Event {
        self.request_id = id.into();
        self
    }

    pub fn outcome(mut self, outcome: Outcome) -> Event {
        self.outcome = outcome;
        self
    }
}

/// Appends `event` inside the caller's transaction; returns its sequence number.
pub async fn append(conn: &mut Conn, at_ms: i64, event: Event) -> Result<i64, sqlx::Error> {
    append_many(conn, vec![(at_ms, event)]).await
}

/// Appends `events` in order inside the caller's transaction with two statements (one
/// head update, one insert), whatever their number; returns the last sequence number.
pub async fn append_many(conn: &mut Conn, events: Vec<(i64, Event)>) -> Result<i64, sqlx::Error> {
    let mut out: Vec<EventRow> = events.into_iter().map(unlinked).collect();
    append_rows(conn, &mut out).await
}

/// Appends rows made by [`unlinked`], linking them after the current head, inside the
/// caller's transaction; returns the last sequence number.
pub async fn append_rows(conn: &mut Conn, events: &mut [EventRow]) -> Result<i64, sqlx::Error> {
    let n = i64::try_from(events.len()).unwrap_or(i64::MAX);
    if n == 0 {
        return rows::head(&mut *conn).await.map(|(seq, _)| seq);
    }
    let (last, prev_hash) = rows::advance_head_by(conn, n).await?;
    link(events, last - n + 1, prev_hash);
    // Large batches go in slices that stay under every backend's bind-parameter limit.
    for chunk in events.chunks(500) {
        rows::insert_many(conn, chunk).await?;
    }
    Ok(last)
}

/// An event as a row, not yet given its place in the chain (see [`link`]).
pub fn unlinked((at_ms, event): (i64, Event)) -> EventRow {
    EventRow {
        seq: 0,
        at_ms,
        kind: event.kind.as_str().to_owned(),
        actor: event.actor.encode(),
        subject: event.subject,
        outcome: event.outcome.as_str().to_owned(),
        request_id: event.request_id,
        detail: event.detail.to_string(),
        prev_hash: Vec::new(),
        hash: Vec::new(),
    }
}

/// Gives `events` the sequence numbers from `first` on and chains their hashes from
/// `prev_hash` (the hash of event `first - 1`).
pub fn link(events: &mut [EventRow], first: i64, mut prev_hash: Vec<u8>) {
    for (seq, row) in (first..).zip(events.iter_mut()) {
        row.seq = seq;
        row.prev_hash = prev_hash;
        row.hash = chain_hash(row).to_vec();
        prev_hash = row.hash.clone();
    }
}

/// The hash of an event: SHA-256 over a canonical, length-prefixed encoding.
pub fn chain_hash(e: &EventRow) -> [u8; 32] {
    let seq = e.seq.to_be_bytes();
    let at = e.at_ms.to_be_bytes();
    let fields: [&[u8]; 10] = [
        b"strongbox.audit.v1",
        &seq,
        &at,
        e.kind.as_bytes(),
        e.actor.as_bytes(),
        e.subject.as_bytes(),
        e.outcome.as_bytes(),
        e.request_id.as_bytes(),
        e.detail.as_bytes(),
        &e.prev_hash,
    ];
    let mut buf = Vec::with_capacity(256);
    for f in fields {
        buf.extend_from_slice(&u64::try_from(f.len()).unwrap_or(u64::MAX).to_be_bytes());
        buf.extend_from_slice(f);
    }
    sha256(&[&buf])
}

/// Where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Break {
    #[error("event {found} follows event {after}: events are missing or reordered")]
    Gap { after: i64, found: i64 },
    #[error(
        "event {seq} does not link to the event before it: an event was removed, inserted or reordered"
    )]
    Link { seq: i64 },
    #[error("event {seq} was altered: its hash does not match its contents")]
    Altered { seq: i64 },
    #[error(
        "the trail ends at event {last} but the head records {head}: events were removed from the end"
    )]
    Truncated { last: i64, head: i64 },
    #[error("the head hash does not match event {seq}")]
    Head { seq: i64 },
}

/// A verified trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub events: i64,
    /// Hex of the newest hash: record it out of band to anchor the chain.
    pub head: String,
}

/// Failure of [`verify`]: the database, or a break in the chain.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("audit trail broken: {0}")]
    Broken(#[from] Break),
}

/// Walks the trail up to the head as it was when the walk began, and checks every link,
/// hash and that head. Events appended meanwhile (a live service) are left for the next
/// run: they are not yet part of the head this run anchors to.
pub async fn verify(db: &Db) -> Result<Verified, VerifyError> {
    let (head_seq, head_hash) = rows::head(db.pool()).await?;
    let mut prev = vec![0u8; 32];
    let mut last = 0i64;
    loop {
        let page = rows::page_through(db.pool(), last, head_seq, 5_000).await?;
        if page.is_empty() {
            break;
        }
        for e in page {
            if e.seq != last + 1 {
                return Err(Break::Gap {
                    after: last,
                    found: e.seq,
                }
                .into());
            }
            if e.prev_hash != prev {
                return Err(Break::Link { seq: e.seq }.into());
            }
            if chain_hash(&e).as_slice() != e.hash.as_slice() {
                return Err(Break::Altered { seq: e.seq }.into());
            }
            last = e.seq;
            prev = e.hash;
        }
    }
    if last != head_seq {
        return Err(Break::Truncated {
            last,
            head: head_seq,
        }
        .into());
    }
    if prev != head_hash {
        return Err(Break::Head { seq: last }.into());
    }
    Ok(Verified {
        events: last,
        head: crate::crypto::hex(&prev),
    })
}

#[cfg(test)]
mod tests {
    use sqlx::Executor as _;

    use super::*;
    use crate::both_backends;
    use crate::store::Backend;

    async fn trail(db: &Db, n: i64) {
        for i in 1..=n {
            let mut tx = db.begin().await.unwrap();
            let e = Event::new(Kind::KeyRotated, Actor::Cli, format!("kek:{i}"))
                .detail(serde_json::json!({ "version": i }))
                .request_id(format!("req-{i}"));
            assert_eq!(append(&mut tx, 1_000 + i, e).await.unwrap(), i);
            tx.commit().await.unwrap();
        }
    }

    async fn sql(db: &Db, statement: &str) {
        db.pool().execute(statement).await.unwrap();
    }

    /// Simulates a database writer with DDL rights: lifts the append-only triggers.
    async fn lift_triggers(db: &Db) {
        match db.backend() {
            Backend::Sqlite => {
                sql(db, "DROP TRIGGER audit_event_no_update").await;
                sql(db, "DROP TRIGGER audit_event_no_delete").await;
            }
            Backend::Postgres => sql(db, "DROP TRIGGER audit_event_no_change ON audit_event").await,
        }
    }

    async fn broken(db: &Db) -> Break {
        match verify(db).await {
            Err(VerifyError::Broken(b)) => b,
            other => panic!("expected a break, got {other:?}"),
        }
    }

    both_backends! {
        async fn intact_trail_verifies(t: TestDb) {
            assert_eq!(verify(&t.db).await.unwrap().events, 0);
            trail(&t.db, 5).await;
            let v = verify(&t.db).await.unwrap();
            assert_eq!(v.events, 5);
            assert_eq!(v.head.len(), 64);
        }

        async fn batches_chain_like_single_appends(t: TestDb) {
            trail(&t.db, 2).await;
            let mut tx = t.db.begin().await.unwrap();
            let batch: Vec<(i64, Event)> = (0..700)
                .map(|i| (5_000 + i, Event::new(Kind::CredentialReleased, Actor::Agent("a".into()), format!("user:{i}"))))
                .collect();
            assert_eq!(append_many(&mut tx, batch).await.unwrap(), 702);
            tx.commit().await.unwrap();
            trail(&t.db, 0).await;
            let mut tx = t.db.begin().await.unwrap();
            let e = Event::new(Kind::KeyRotated, Actor::Cli, "after");
            assert_eq!(append(&mut tx, 9_000, e).await.unwrap(), 703);
            tx.commit().await.unwrap();
            assert_eq!(verify(&t.db).await.unwrap().events, 703);
        }

        async fn journal_commits_concurrent_events_in_order(t: TestDb) {
            let clock: std::sync::Arc<dyn crate::clock::Clock> = std::sync::Arc::new(crate::clock::SystemClock);
            let journal = crate::journal::Journal::start(t.db.clone(), clock);
            let tasks: Vec<_> = (0..200)
                .map(|i| {
                    let j = journal.clone();
                    tokio::spawn(async move {
                        j.record(Event::new(Kind::ToolRun, Actor::Agent("a".into()), format!("user:{i}")), None)
                            .await
                            .unwrap()
                    })
                })
                .collect();
            let mut seqs = Vec::new();
            for task in tasks {
                seqs.push(task.await.unwrap());
            }
            seqs.sort_unstable();
            assert_eq!(seqs, (1..=200).collect::<Vec<i64>>(), "every event committed once");
            assert_eq!(verify(&t.db).await.unwrap().events, 200);
        }

        async fn journals_and_other_writers_share_one_chain(t: TestDb) {
            // Two journals (two instances on one database) and plain transactions append
            // at once; text that JSON and SQL both escape must come back byte for byte.
            let clock: std::sync::Arc<dyn crate::clock::Clock> = std::sync::Arc::new(crate::clock::SystemClock);
            let journals = [
                crate::journal::Journal::start(t.db.clone(), std::sync::Arc::clone(&clock)),
                crate::journal::Journal::start(t.db.clone(), clock),
            ];
            let odd = "quote \" back \\ tab \t nl \n ctl \u{1} é 𝄞 ' ; -- $1";
            let mut tasks = Vec::new();
            for i in 0..300 {
                let j = journals[i % 2].clone();
                tasks.push(tokio::spawn(async move {
                    let e = Event::new(Kind::CredentialReleased, Actor::Agent(format!("a{i}")), format!("user:{odd}{i}"))
                        .request_id(format!("r{i}"))
                        .detail(serde_json::json!({"n": i, "text": odd}));
                    j.record(e, None).await.unwrap();
                }));
            }
            for i in 0..20 {
                let db = t.db.clone();
                tasks.push(tokio::spawn(async move {
                    let mut tx = db.begin().await.unwrap();
                    append(&mut tx, 7, Event::new(Kind::KeyRotated, Actor::Cli, format!("plain {i}"))).await.unwrap();
                    tx.commit().await.unwrap();
                }));
            }
            for task in tasks {
                task.await.unwrap();
            }
            assert_eq!(verify(&t.db).await.unwrap().events, 320);
            let stored = rows::page(t.db.pool(), 0, 1000).await.unwrap();
            let mine: Vec<_> = stored.iter().filter(|r| r.kind == "credential.released").collect();
            assert_eq!(mine.len(), 300);
            for r in mine {
                let detail: serde_json::Value = serde_json::from_str(&r.detail).unwrap();
                assert_eq!(detail["text"], odd);
                assert!(r.subject.starts_with(&format!("user:{odd}")), "{}", r.subject);
            }
        }

        async fn verify_while_events_are_appended(t: TestDb) {
            // A live service keeps appending while `audit verify` walks the trail: each
            // walk must stop at the head it read first and not report the newer events
            // as a truncation.
            let mut tx = t.db.begin().await.unwrap();
            let seed: Vec<(i64, Event)> = (0..3_000)
                .map(|i| (i, Event::new(Kind::ToolRun, Actor::Agent("a".into()), format!("user:{i}"))))
                .collect();
            append_many(&mut tx, seed).await.unwrap();
            tx.commit().await.unwrap();
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let appender = {
                let (db, stop) = (t.db.clone(), std::sync::Arc::clone(&stop));
                tokio::spawn(async move {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let mut tx = db.begin().await.unwrap();
                        append(&mut tx, 1, Event::new(Kind::ToolRun, Actor::Cli, "live")).await.unwrap();
                        tx.commit().await.unwrap();
                    }
                })
            };
            let mut overlapped = 0;
            for _ in 0..10 {
                let before = rows::head(t.db.pool()).await.unwrap().0;
                let v = verify(&t.db).await.unwrap();
                let after = rows::head(t.db.pool()).await.unwrap().0;
                assert!(v.events >= before && v.events <= after, "{before} <= {} <= {after}", v.events);
                if after > before {
                    overlapped += 1;
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            appender.await.unwrap();
            assert!(overlapped > 0, "appends ran during the walks");
            assert!(verify(&t.db).await.unwrap().events > 3_000);
        }

        async fn updates_and_deletes_are_refused(t: TestDb) {
            trail(&t.db, 2).await;
            assert!(t.db.pool().execute("UPDATE audit_event SET outcome = 'denied'").await.is_err());
            assert!(t.db.pool().execute("DELETE FROM audit_event").await.is_err());
            verify(&t.db).await.unwrap();
        }

        async fn edit_is_detected(t: TestDb) {
            trail(&t.db, 4).await;
            lift_triggers(&t.db).await;
            sql(&t.db, "UPDATE audit_event SET actor = 'user:mallory' WHERE seq = 2").await;
            assert_eq!(broken(&t.db).await, Break::Altered { seq: 2 });
        }

        async fn removal_is_detected(t: TestDb) {
            trail(&t.db, 4).await;
            lift_triggers(&t.db).await;
            sql(&t.db, "DELETE FROM audit_event WHERE seq = 2").await;
            assert_eq!(broken(&t.db).await, Break::Gap { after: 1, found: 3 });
        }

        async fn tail_removal_is_detected(t: TestDb) {
            trail(&t.db, 4).await;
            lift_triggers(&t.db).await;
            sql(&t.db, "DELETE FROM audit_event WHERE seq = 4").await;
            assert_eq!(broken(&t.db).await, Break::Truncated { last: 3, head: 4 });
        }

        async fn reorder_is_detected(t: TestDb) {
            trail(&t.db, 4).await;
            lift_triggers(&t.db).await;
            sql(&t.db, "UPDATE audit_event SET seq = 100 WHERE seq = 2").await;
            sql(&t.db, "UPDATE audit_event SET seq = 2 WHERE seq = 3").await;
            sql(&t.db, "UPDATE audit_event SET seq = 3 WHERE seq = 100").await;
            assert_eq!(broken(&t.db).await, Break::Link { seq: 2 });
        }

        async fn insertion_is_detected(t: TestDb) {
            trail(&t.db, 3).await;
            lift_triggers(&t.db).await;
            // Make room after event 1 and slip in a forged event that hashes correctly
            // over its own contents and links to event 1.
            sql(&t.db, "UPDATE audit_event SET seq = seq + 10 WHERE seq >= 2").await;
            sql(&t.db, "UPDATE audit_event SET seq = seq - 9 WHERE seq >= 12").await;
            let first = crate::store::audit::page(t.db.pool(), 0, 1).await.unwrap().remove(0);
            let mut forged = crate::store::audit::EventRow {
                seq: 2, at_ms: 1_001, kind: "credential.released".into(), actor: "agent:evil".into(),
                subject: "x".into(), outcome: "success".into(), request_id: String::new(),
                detail: "null".into(), prev_hash: first.hash, hash: Vec::new(),
            };
            forged.hash = chain_hash(&forged).to_vec();
            sqlx::query("INSERT INTO audit_event (seq, at_ms, kind, actor, subject, outcome, request_id, detail, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
                .bind(forged.seq).bind(forged.at_ms).bind(&forged.kind).bind(&forged.actor).bind(&forged.subject)
                .bind(&forged.outcome).bind(&forged.request_id).bind(&forged.detail)
                .bind(forged.prev_hash.as_slice()).bind(forged.hash.as_slice())
                .execute(t.db.pool()).await.unwrap();
            assert_eq!(broken(&t.db).await, Break::Link { seq: 3 });
        }
    }
}
