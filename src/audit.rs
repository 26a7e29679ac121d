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
        }
    }
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
    let (seq, prev_hash) = rows::advance_head(conn).await?;
    let mut row = EventRow {
        seq,
        at_ms,
        kind: event.kind.as_str().to_owned(),
        actor: event.actor.encode(),
        subject: event.subject,
        outcome: event.outcome.as_str().to_owned(),
        request_id: event.request_id,
        // serde_json without `preserve_order` writes object keys sorted: canonical.
        detail: event.detail.to_string(),
        prev_hash,
        hash: Vec::new(),
    };
    row.hash = chain_hash(&row).to_vec();
    rows::insert(conn, &row).await?;
    Ok(seq)
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

/// Walks the whole trail and checks every link, hash and the head.
pub async fn verify(db: &Db) -> Result<Verified, VerifyError> {
    let (head_seq, head_hash) = rows::head(db.pool()).await?;
    let mut prev = vec![0u8; 32];
    let mut last = 0i64;
    loop {
        let page = rows::page(db.pool(), last, 5_000).await?;
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
        head: prev.iter().map(|b| format!("{b:02x}")).collect(),
    })
}
