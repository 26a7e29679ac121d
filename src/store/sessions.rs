//! The `session` table, and the [`SessionStore`] that tower-sessions keeps browser
//! sessions in. Rows are found by the SHA-256 digest of the cookie's session id, so a
//! database reader cannot ride a session; `user_id` is the per-user index that lists a
//! user's sessions and ends them all.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::Row;
use sqlx::any::AnyRow;
use tower_sessions::SessionStore;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store;

use super::{Conn, Db};
use crate::clock::Clock;
use crate::crypto::{fill_random, random_text, sha256};

/// The one key a session's record holds: the signed-in user's id, or `null` for a browser
/// that has started signing in. Nothing else is kept in a session.
pub const USER_KEY: &str = "user";

/// How often, at most, a session's `last_seen_at` is written, unless the idle timeout
/// is short (see [`Timeouts::touch_interval`]).
const TOUCH_INTERVAL: i64 = 60;

/// Session timeouts in seconds.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub idle: i64,
    pub absolute: i64,
}

impl Timeouts {
    /// Seconds between writes of `last_seen_at`: at most a tenth of the idle timeout, so a
    /// session in use is never ended for idleness because its last use went unwritten.
    pub fn touch_interval(&self) -> i64 {
        TOUCH_INTERVAL.min(self.idle / 10).max(0)
    }
}

/// The digest a session is stored under: SHA-256 of the id as the cookie carries it.
pub fn digest(cookie_value: &str) -> [u8; 32] {
    sha256(&[cookie_value.as_bytes()])
}

/// tower-sessions' store for browser sessions, on the service's database.
///
/// Timeouts are kept here, on the service's clock, not by the cookie: `load` answers
/// `None` for a session idle for longer than the idle timeout or older than the absolute
/// one (and deletes it), and records activity at most every [`Timeouts::touch_interval`].
/// `save` never brings back a session that was ended meanwhile (sign out everywhere, an
/// administrator's revocation): it only updates a row that is still there.
#[derive(Clone)]
pub struct SessionRows {
    db: Db,
    clock: Arc<dyn Clock>,
    timeouts: Timeouts,
}

impl std::fmt::Debug for SessionRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRows")
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

/// How a store error says the database was out of reach (tower-sessions' errors carry
/// text only).
const UNAVAILABLE: &str = "database unavailable: ";

fn backend(e: impl std::fmt::Display) -> session_store::Error {
    session_store::Error::Backend(e.to_string())
}

fn database(e: sqlx::Error) -> session_store::Error {
    if super::is_unavailable(&e) {
        session_store::Error::Backend(format!("{UNAVAILABLE}{e}"))
    } else {
        backend(e)
    }
}

/// True when a session failed because the database is out of reach.
pub fn is_unavailable(e: &tower_sessions::session::Error) -> bool {
    matches!(e, tower_sessions::session::Error::Store(session_store::Error::Backend(m)) if m.starts_with(UNAVAILABLE))
}

/// The user a record names: a string, or `null`/absent for a browser not yet signed in.
fn user_of(record: &Record) -> session_store::Result<Option<String>> {
    match record.data.get(USER_KEY) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(u)) => Ok(Some(u.clone())),
        Some(_) => Err(session_store::Error::Encode("user must be a string".into())),
    }
}

/// A new session id: 128 bits from the operating system's generator.
fn fresh_id() -> session_store::Result<Id> {
    let mut raw = zeroize::Zeroizing::new([0u8; 16]);
    fill_random(raw.as_mut_slice()).map_err(backend)?;
    Ok(Id(i128::from_le_bytes(*raw)))
}

impl SessionRows {
    pub fn new(db: Db, clock: Arc<dyn Clock>, timeouts: Timeouts) -> SessionRows {
        SessionRows {
            db,
            clock,
            timeouts,
        }
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Whether a row is past either timeout at `now`.
    fn expired(&self, row: &SessionRow, now: i64) -> bool {
        now >= row.expires_at || now - row.last_seen_at >= self.timeouts.idle
    }
}

#[async_trait::async_trait]
impl SessionStore for SessionRows {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        let user = user_of(record)?;
        let now = self.clock.unix();
        let row = SessionRow {
            handle: random_text(12).map_err(backend)?.to_string(),
            user_id: user,
            created_at: now,
            last_seen_at: now,
            expires_at: now + self.timeouts.absolute,
        };
        // The id is drawn here, from the operating system's generator like every other
        // secret of the service, whatever tower-sessions drew. A 128-bit id colliding with
        // a live one is next to impossible; should it happen, the unique key refuses it and
        // another is drawn.
        for _ in 0..3 {
            record.id = fresh_id()?;
            let mut conn = self.db.pool().acquire().await.map_err(database)?;
            match insert(&mut conn, &digest(&record.id.to_string()), &row).await {
                Ok(()) => return Ok(()),
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {}
                Err(e) => return Err(database(e)),
            }
        }
        Err(session_store::Error::Backend(
            "no free session id after three draws".into(),
        ))
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        set_user(
            self.db.pool(),
            &digest(&record.id.to_string()),
            user_of(record)?.as_deref(),
        )
        .await
        .map_err(database)
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let hash = digest(&id.to_string());
        let pool = self.db.pool();
        let Some(row) = by_token(pool, &hash).await.map_err(database)? else {
            return Ok(None);
        };
        let now = self.clock.unix();
        if self.expired(&row, now) {
            delete_by_token(pool, &hash).await.map_err(database)?;
            return Ok(None);
        }
        touch(pool, &hash, now, self.timeouts.touch_interval())
            .await
            .map_err(database)?;
        let ends = row.expires_at.min(now + self.timeouts.idle);
        let user = row
            .user_id
            .map_or(serde_json::Value::Null, serde_json::Value::String);
        Ok(Some(Record {
            id: *id,
            data: HashMap::from([(USER_KEY.to_owned(), user)]),
            expiry_date: time::OffsetDateTime::from_unix_timestamp(ends).map_err(backend)?,
        }))
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        delete_by_token(self.db.pool(), &digest(&id.to_string()))
            .await
            .map_err(database)?;
        Ok(())
    }
}

/// A stored session (no secret in it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub handle: String,
    pub user_id: Option<String>,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub expires_at: i64,
}

const COLUMNS: &str = "handle, user_id, created_at, last_seen_at, expires_at";

fn from_row(r: &AnyRow) -> Result<SessionRow, sqlx::Error> {
    Ok(SessionRow {
        handle: r.try_get("handle")?,
        user_id: r.try_get("user_id")?,
        created_at: r.try_get("created_at")?,
        last_seen_at: r.try_get("last_seen_at")?,
        expires_at: r.try_get("expires_at")?,
    })
}

pub async fn insert(
    conn: &mut Conn,
    token_hash: &[u8],
    row: &SessionRow,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO session (token_hash, handle, user_id, created_at, last_seen_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(token_hash)
    .bind(&row.handle)
    .bind(row.user_id.as_deref())
    .bind(row.created_at)
    .bind(row.last_seen_at)
    .bind(row.expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn by_token<'e, E>(e: E, token_hash: &[u8]) -> Result<Option<SessionRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let sql = format!("SELECT {COLUMNS} FROM session WHERE token_hash = $1");
    sqlx::query(&sql)
        .bind(token_hash)
        .fetch_optional(e)
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// Names the user of a session that is still there; a session that was ended stays ended.
/// Writes nothing when the user is already the one named.
pub async fn set_user<'e, E>(
    e: E,
    token_hash: &[u8],
    user_id: Option<&str>,
) -> Result<(), sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(
        "UPDATE session SET user_id = $2 WHERE token_hash = $1 AND user_id IS DISTINCT FROM $2",
    )
    .bind(token_hash)
    .bind(user_id)
    .execute(e)
    .await?;
    Ok(())
}

/// Records activity, at most once per `min_interval` seconds to spare the database.
pub async fn touch<'e, E>(
    e: E,
    token_hash: &[u8],
    now: i64,
    min_interval: i64,
) -> Result<(), sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(
        "UPDATE session SET last_seen_at = $2 WHERE token_hash = $1 AND last_seen_at <= $3",
    )
    .bind(token_hash)
    .bind(now)
    .bind(now - min_interval)
    .execute(e)
    .await?;
    Ok(())
}

pub async fn delete_by_token<'e, E>(e: E, token_hash: &[u8]) -> Result<bool, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    Ok(sqlx::query("DELETE FROM session WHERE token_hash = $1")
        .bind(token_hash)
        .execute(e)
        .await?
        .rows_affected()
        > 0)
}

/// Ends every session of a user; returns how many.
pub async fn delete_for_user(conn: &mut Conn, user_id: &str) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM session WHERE user_id = $1")
        .bind(user_id)
        .execute(conn)
        .await?
        .rows_affected())
}

/// A user's live sessions, newest first, with the digest of each for marking the current one.
pub async fn for_user<'e, E>(
    e: E,
    user_id: &str,
    now: i64,
) -> Result<Vec<(Vec<u8>, SessionRow)>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let sql = format!(
        "SELECT token_hash, {COLUMNS} FROM session WHERE user_id = $1 AND expires_at > $2 \
         ORDER BY created_at DESC, handle"
    );
    let rows = sqlx::query(&sql)
        .bind(user_id)
        .bind(now)
        .fetch_all(e)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("token_hash")?, from_row(r)?)))
        .collect()
}

/// Removes sessions past their absolute or idle timeout.
pub async fn purge_expired<'e, E>(e: E, now: i64, idle: i64) -> Result<u64, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    Ok(
        sqlx::query("DELETE FROM session WHERE expires_at <= $1 OR last_seen_at <= $2")
            .bind(now)
            .bind(now - idle)
            .execute(e)
            .await?
            .rows_affected(),
    )
}
