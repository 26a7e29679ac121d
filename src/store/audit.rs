//! The `audit_event` and `audit_head` tables. Append only: there is no update or delete
//! here, and the schema's triggers refuse them.

use sqlx::Row;

use super::Conn;
use super::agents::Basis;

/// One stored event, as hashed.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub seq: i64,
    pub at_ms: i64,
    pub kind: String,
    pub actor: String,
    pub subject: String,
    pub outcome: String,
    pub request_id: String,
    pub detail: String,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

/// Takes `n` sequence numbers at once; returns the last one and the previous hash. Locks
/// the head row until commit, so appends are totally ordered.
pub async fn advance_head_by(conn: &mut Conn, n: i64) -> Result<(i64, Vec<u8>), sqlx::Error> {
    let row = sqlx::query("UPDATE audit_head SET seq = seq + $1 WHERE id = 1 RETURNING seq, hash")
        .bind(n)
        .fetch_one(conn)
        .await?;
    Ok((row.try_get("seq")?, row.try_get("hash")?))
}

/// Inserts several events with one statement. The `audit_event_moves_head` trigger sets
/// the head's hash from the newest.
pub async fn insert_many(conn: &mut Conn, events: &[EventRow]) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let mut sql = String::from(
        "INSERT INTO audit_event (seq, at_ms, kind, actor, subject, outcome, request_id, detail, \
         prev_hash, hash) VALUES ",
    );
    let mut p = super::Params::for_conn(conn);
    for i in 0..events.len() {
        if i > 0 {
            sql.push(',');
        }
        p.push_tuple(&mut sql, 10);
    }
    let mut q = sqlx::query(&sql);
    for e in events {
        q = q
            .bind(e.seq)
            .bind(e.at_ms)
            .bind(&e.kind)
            .bind(&e.actor)
            .bind(&e.subject)
            .bind(&e.outcome)
            .bind(&e.request_id)
            .bind(&e.detail)
            .bind(e.prev_hash.as_slice())
            .bind(e.hash.as_slice());
    }
    q.execute(conn).await?;
    Ok(())
}

/// What [`append_at_head`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtHead {
    /// Every event is written.
    Written,
    /// Nothing is written: the head is not where the events were linked from.
    Moved,
    /// Nothing is written: the bases of these events (their indexes) no longer hold.
    Stale(Vec<usize>),
}

/// PostgreSQL only: appends `events` (already linked from `expected` and `expected_hash`)
/// in one statement, if the head is still at `expected` with that hash (so a batch linked
/// to a predecessor that was not written never matches) and every basis in `bases` (by
/// event index) still holds in the statement's snapshot (delegations unexpired at `now`). One statement is its own
/// transaction, so the head update, the events and the head hash (by trigger) commit
/// together. The text never changes with the number of events (they travel as JSON
/// parameters), so it is prepared once per connection.
pub async fn append_at_head<'e, E>(
    e: E,
    expected: i64,
    expected_hash: &[u8],
    events: &[EventRow],
    bases: &[(usize, &Basis)],
    now: i64,
) -> Result<AtHead, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let Some(last) = events.last() else {
        return Ok(AtHead::Written);
    };
    let hex = crate::crypto::hex;
    let json = serde_json::Value::Array(
        events
            .iter()
            .map(|e| {
                serde_json::json!({
                    "seq": e.seq, "at_ms": e.at_ms, "kind": e.kind, "actor": e.actor,
                    "subject": e.subject, "outcome": e.outcome, "request_id": e.request_id,
                    "detail": e.detail, "prev_hash": hex(&e.prev_hash), "hash": hex(&e.hash),
                })
            })
            .collect(),
    )
    .to_string();
    let conditions = super::agents::bases_json(bases.iter().map(|(i, b)| (*i, *b)));
    let row = sqlx::query(
        "WITH stale AS (SELECT b.i FROM json_to_recordset($5::json) AS b(i BIGINT, \
         agent TEXT, secret TEXT, token TEXT, conn TEXT, gen BIGINT, kek BIGINT, status TEXT) \
         WHERE NOT EXISTS (SELECT 1 FROM agent a, delegation d, connection c \
         WHERE a.id = b.agent AND a.secret_hash = decode(b.secret, 'hex') \
         AND d.token_hash = decode(b.token, 'hex') AND d.agent_id = a.id \
         AND c.user_id = d.user_id AND c.id = b.conn AND c.generation = b.gen \
         AND c.kek_version = b.kek AND c.status = b.status AND d.expires_at > $6)), \
         h AS (UPDATE audit_head SET seq = $2 WHERE id = 1 AND seq = $1 AND hash = $4 \
         AND NOT EXISTS (SELECT 1 FROM stale) RETURNING seq), \
         ins AS (INSERT INTO audit_event (seq, at_ms, kind, actor, subject, outcome, \
         request_id, detail, prev_hash, hash) \
         SELECT e.seq, e.at_ms, e.kind, e.actor, e.subject, e.outcome, e.request_id, e.detail, \
         decode(e.prev_hash, 'hex'), decode(e.hash, 'hex') \
         FROM h, json_to_recordset($3::json) AS e(seq BIGINT, at_ms BIGINT, kind TEXT, \
         actor TEXT, subject TEXT, outcome TEXT, request_id TEXT, detail TEXT, prev_hash TEXT, \
         hash TEXT) ORDER BY e.seq RETURNING 1) \
         SELECT (SELECT COUNT(*) FROM ins) AS written, \
         (SELECT string_agg(i::TEXT, ',') FROM stale) AS stale",
    )
    .bind(expected)
    .bind(last.seq)
    .bind(json)
    .bind(expected_hash)
    .bind(conditions)
    .bind(now)
    .fetch_one(e)
    .await?;
    let written: i64 = row.try_get("written")?;
    let stale: Option<String> = row.try_get("stale")?;
    if let Some(stale) = stale {
        let mut at: Vec<usize> = stale.split(',').filter_map(|i| i.parse().ok()).collect();
        at.sort_unstable();
        return Ok(AtHead::Stale(at));
    }
    Ok(
        if usize::try_from(written).is_ok_and(|n| n == events.len()) {
            AtHead::Written
        } else {
            AtHead::Moved
        },
    )
}

/// The head: newest sequence number and hash.
pub async fn head<'e, E>(e: E) -> Result<(i64, Vec<u8>), sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_one(e)
        .await?;
    Ok((row.try_get("seq")?, row.try_get("hash")?))
}

/// Events with `seq > after`, in order.
pub async fn page<'e, E>(e: E, after: i64, limit: i64) -> Result<Vec<EventRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    page_through(e, after, i64::MAX, limit).await
}

/// Events with `after < seq <= through`, in order: a walk bounded by a head read earlier
/// never sees events appended since.
pub async fn page_through<'e, E>(
    e: E,
    after: i64,
    through: i64,
    limit: i64,
) -> Result<Vec<EventRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let rows = sqlx::query(
        "SELECT seq, at_ms, kind, actor, subject, outcome, request_id, detail, prev_hash, hash \
         FROM audit_event WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3",
    )
    .bind(after)
    .bind(through)
    .bind(limit)
    .fetch_all(e)
    .await?;
    rows.iter().map(event_row).collect()
}

fn event_row(r: &sqlx::any::AnyRow) -> Result<EventRow, sqlx::Error> {
    Ok(EventRow {
        seq: r.try_get("seq")?,
        at_ms: r.try_get("at_ms")?,
        kind: r.try_get("kind")?,
        actor: r.try_get("actor")?,
        subject: r.try_get("subject")?,
        outcome: r.try_get("outcome")?,
        request_id: r.try_get("request_id")?,
        detail: r.try_get("detail")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
    })
}

/// Which events `GET /admin/audit` returns.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `user:{id}` as subject or actor.
    pub user: Option<String>,
    /// Exact actor, e.g. `agent:{name}`.
    pub actor: Option<String>,
    pub kind: Option<String>,
    pub from_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

/// Events after `after` matching `f`, oldest first, at most `limit`.
pub async fn search<'e, E>(
    e: E,
    f: &Filter,
    after: i64,
    limit: i64,
) -> Result<Vec<EventRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let mut sql = String::from(
        "SELECT seq, at_ms, kind, actor, subject, outcome, request_id, detail, prev_hash, hash \
         FROM audit_event WHERE seq > $1",
    );
    let mut n = 1;
    let mut next = |sql: &mut String, clause: &str| {
        n += 1;
        sql.push_str(&clause.replace('?', &format!("${n}")));
    };
    if f.user.is_some() {
        next(&mut sql, " AND (subject = ? OR actor = ?)");
    }
    if f.actor.is_some() {
        next(&mut sql, " AND actor = ?");
    }
    if f.kind.is_some() {
        next(&mut sql, " AND kind = ?");
    }
    if f.from_ms.is_some() {
        next(&mut sql, " AND at_ms >= ?");
    }
    if f.until_ms.is_some() {
        next(&mut sql, " AND at_ms < ?");
    }
    next(&mut sql, " ORDER BY seq LIMIT ?");
    let mut q = sqlx::query(&sql).bind(after);
    if let Some(u) = &f.user {
        q = q.bind(u.clone());
    }
    if let Some(a) = &f.actor {
        q = q.bind(a.clone());
    }
    if let Some(k) = &f.kind {
        q = q.bind(k.clone());
    }
    if let Some(t) = f.from_ms {
        q = q.bind(t);
    }
    if let Some(t) = f.until_ms {
        q = q.bind(t);
    }
    let rows = q.bind(limit).fetch_all(e).await?;
    rows.iter().map(event_row).collect()
}
