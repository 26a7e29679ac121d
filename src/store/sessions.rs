//! The `session` table. Rows are found by the SHA-256 digest of the cookie secret.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::Conn;

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

/// Ends one session of a user by its handle.
pub async fn delete_by_handle(
    conn: &mut Conn,
    user_id: &str,
    handle: &str,
) -> Result<bool, sqlx::Error> {
    Ok(
        sqlx::query("DELETE FROM session WHERE user_id = $1 AND handle = $2")
            .bind(user_id)
            .bind(handle)
            .execute(conn)
            .await?
            .rows_affected()
            > 0,
    )
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
