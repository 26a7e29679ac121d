//! The `connection` table: one sealed token set per (user, provider).

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Backend, Conn};

/// A stored connection. `envelope` is ciphertext; the other columns are public metadata.
#[derive(Clone)]
pub struct ConnectionRow {
    pub id: String,
    pub user_id: String,
    pub provider: String,
    pub scopes: String,
    pub status: String,
    pub kek_version: i64,
    pub generation: i64,
    pub envelope: Vec<u8>,
    pub expires_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_used_at: Option<i64>,
}

impl std::fmt::Debug for ConnectionRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionRow")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("provider", &self.provider)
            .field("kek_version", &self.kek_version)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

const COLUMNS: &str = "id, user_id, provider, scopes, status, kek_version, generation, \
                       envelope, expires_at, created_at, updated_at, last_used_at";

fn from_row(row: &AnyRow) -> Result<ConnectionRow, sqlx::Error> {
    Ok(ConnectionRow {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        provider: row.try_get("provider")?,
        scopes: row.try_get("scopes")?,
        status: row.try_get("status")?,
        kek_version: row.try_get("kek_version")?,
        generation: row.try_get("generation")?,
        envelope: row.try_get("envelope")?,
        expires_at: row.try_get("expires_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        last_used_at: row.try_get("last_used_at")?,
    })
}

/// The connection columns under `alias.` for a join, each renamed `{alias}_{column}`.
pub fn columns_as(alias: &str) -> String {
    COLUMNS
        .split(',')
        .map(|c| {
            let c = c.trim();
            format!("{alias}.{c} AS {alias}_{c}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A row selected with [`columns_as`]; `None` when the join found no connection.
pub fn from_row_as(row: &AnyRow, alias: &str) -> Result<Option<ConnectionRow>, sqlx::Error> {
    let col = |c: &str| format!("{alias}_{c}");
    let Some(id) = row.try_get::<Option<String>, _>(col("id").as_str())? else {
        return Ok(None);
    };
    Ok(Some(ConnectionRow {
        id,
        user_id: row.try_get(col("user_id").as_str())?,
        provider: row.try_get(col("provider").as_str())?,
        scopes: row.try_get(col("scopes").as_str())?,
        status: row.try_get(col("status").as_str())?,
        kek_version: row.try_get(col("kek_version").as_str())?,
        generation: row.try_get(col("generation").as_str())?,
        envelope: row.try_get(col("envelope").as_str())?,
        expires_at: row.try_get(col("expires_at").as_str())?,
        created_at: row.try_get(col("created_at").as_str())?,
        updated_at: row.try_get(col("updated_at").as_str())?,
        last_used_at: row.try_get(col("last_used_at").as_str())?,
    }))
}

/// The id and generation of a user's connection to a provider, locked for this transaction.
pub async fn find_for_update(
    conn: &mut Conn,
    backend: Backend,
    user_id: &str,
    provider: &str,
) -> Result<Option<Locked>, sqlx::Error> {
    let sql = format!(
        "SELECT id, generation, scopes FROM connection WHERE user_id = $1 AND provider = $2{}",
        backend.for_update()
    );
    let row = sqlx::query(&sql)
        .bind(user_id)
        .bind(provider)
        .fetch_optional(conn)
        .await?;
    row.map(|r| {
        Ok(Locked {
            id: r.try_get("id")?,
            generation: r.try_get("generation")?,
            scopes: r.try_get("scopes")?,
        })
    })
    .transpose()
}

/// A connection row locked for a write: its id, generation and granted scopes
/// (space-separated).
pub struct Locked {
    pub id: String,
    pub generation: i64,
    pub scopes: String,
}

/// What a write stores.
pub struct NewEnvelope<'a> {
    pub id: &'a str,
    pub user_id: &'a str,
    pub provider: &'a str,
    pub scopes: &'a str,
    pub kek_version: i64,
    pub envelope: &'a [u8],
    pub expires_at: Option<i64>,
    pub now: i64,
}

/// Inserts a new row; `false` when a row for (user, provider) already exists.
pub async fn insert(conn: &mut Conn, new: &NewEnvelope<'_>) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO connection (id, user_id, provider, scopes, status, kek_version, generation, \
         envelope, expires_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, 'active', $5, 1, $6, $7, $8, $8) \
         ON CONFLICT (user_id, provider) DO NOTHING",
    )
    .bind(new.id)
    .bind(new.user_id)
    .bind(new.provider)
    .bind(new.scopes)
    .bind(new.kek_version)
    .bind(new.envelope)
    .bind(new.expires_at)
    .bind(new.now)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Replaces the sealed token set of an existing row and bumps its generation.
pub async fn replace(conn: &mut Conn, new: &NewEnvelope<'_>) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE connection SET scopes = $2, status = 'active', kek_version = $3, \
         generation = generation + 1, envelope = $4, expires_at = $5, updated_at = $6, \
         refresh_lease_until = NULL WHERE id = $1",
    )
    .bind(new.id)
    .bind(new.scopes)
    .bind(new.kek_version)
    .bind(new.envelope)
    .bind(new.expires_at)
    .bind(new.now)
    .execute(conn)
    .await?
    .rows_affected())
}

/// Replaces the sealed token set of row `new.id` after a refresh and bumps its generation,
/// only if the row is still at `generation` and active; never inserts, never changes the
/// status. `false` when no row was written: it was erased, marked (a disconnect pending
/// revocation, say) or replaced since the refresh was taken on it.
pub async fn replace_refreshed(
    conn: &mut Conn,
    new: &NewEnvelope<'_>,
    generation: i64,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE connection SET scopes = $2, kek_version = $3, generation = generation + 1, \
         envelope = $4, expires_at = $5, updated_at = $6, refresh_lease_until = NULL \
         WHERE id = $1 AND generation = $7 AND status = 'active'",
    )
    .bind(new.id)
    .bind(new.scopes)
    .bind(new.kek_version)
    .bind(new.envelope)
    .bind(new.expires_at)
    .bind(new.now)
    .bind(generation)
    .execute(conn)
    .await?
    .rows_affected()
        > 0)
}

/// Marks row `id` `reauth_required` if it is still at `generation` and active; whether it
/// did.
pub async fn mark_reauth(conn: &mut Conn, id: &str, generation: i64) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE connection SET status = 'reauth_required' \
         WHERE id = $1 AND generation = $2 AND status = 'active'",
    )
    .bind(id)
    .bind(generation)
    .execute(conn)
    .await?
    .rows_affected()
        > 0)
}

pub async fn by_user_provider<'e, E>(
    e: E,
    user_id: &str,
    provider: &str,
) -> Result<Option<ConnectionRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let sql = format!("SELECT {COLUMNS} FROM connection WHERE user_id = $1 AND provider = $2");
    sqlx::query(&sql)
        .bind(user_id)
        .bind(provider)
        .fetch_optional(e)
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

pub async fn delete(conn: &mut Conn, id: &str) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM connection WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?
        .rows_affected()
        > 0)
}

/// Rows under a version older than `primary`, after `after_id`, in id order.
pub async fn stale_batch<'e, E>(
    e: E,
    primary: i64,
    after_id: &str,
    limit: i64,
) -> Result<Vec<StaleRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(
        "SELECT id, generation, kek_version, envelope FROM connection \
         WHERE kek_version < $1 AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(primary)
    .bind(after_id)
    .bind(limit)
    .fetch_all(e)
    .await?
    .iter()
    .map(|r| {
        Ok(StaleRow {
            id: r.try_get("id")?,
            generation: r.try_get("generation")?,
            kek_version: r.try_get("kek_version")?,
            envelope: r.try_get("envelope")?,
        })
    })
    .collect()
}

/// What a rewrap reads of a record: enough to re-wrap its key and swap it back in only if
/// nothing changed meanwhile.
#[derive(Debug)]
pub struct StaleRow {
    pub id: String,
    pub generation: i64,
    pub kek_version: i64,
    pub envelope: Vec<u8>,
}

/// Every row in id order after `after_id`; for whole-vault checks.
pub async fn page<'e, E>(
    e: E,
    after_id: &str,
    limit: i64,
) -> Result<Vec<ConnectionRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let sql = format!("SELECT {COLUMNS} FROM connection WHERE id > $1 ORDER BY id LIMIT $2");
    sqlx::query(&sql)
        .bind(after_id)
        .bind(limit)
        .fetch_all(e)
        .await?
        .iter()
        .map(from_row)
        .collect()
}

/// One re-wrapped envelope to swap in, valid only if the row is unchanged since it was read.
pub struct Swap {
    pub id: String,
    pub generation: i64,
    pub old_version: i64,
    pub envelope: Vec<u8>,
}

/// Swaps re-wrapped envelopes in one statement. A row written since it was read (its
/// generation or version moved) is left alone. Returns how many rows changed.
pub async fn swap_envelopes(
    conn: &mut Conn,
    new_version: i64,
    swaps: &[Swap],
) -> Result<u64, sqlx::Error> {
    if swaps.is_empty() {
        return Ok(0);
    }
    // Bound in text order: the rows, then the new version.
    let mut p = super::Params::for_conn(conn);
    let mut sql = String::with_capacity(160 + swaps.len() * 24);
    sql.push_str("WITH v (id, gen, old, env) AS (VALUES ");
    for i in 0..swaps.len() {
        if i > 0 {
            sql.push(',');
        }
        p.push_tuple(&mut sql, 4);
    }
    sql.push_str(") UPDATE connection SET envelope = v.env, kek_version = ");
    p.push(&mut sql);
    sql.push_str(
        " FROM v WHERE connection.id = v.id AND connection.generation = v.gen \
         AND connection.kek_version = v.old",
    );
    let mut q = sqlx::query(&sql);
    for s in swaps {
        q = q
            .bind(s.id.as_str())
            .bind(s.generation)
            .bind(s.old_version)
            .bind(s.envelope.as_slice());
    }
    let q = q.bind(new_version);
    Ok(q.execute(conn).await?.rows_affected())
}

/// `(kek_version, records)` for every version in use.
pub async fn count_by_version<'e, E>(e: E) -> Result<Vec<(i64, i64)>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let rows = sqlx::query(
        "SELECT kek_version, COUNT(*) AS n FROM connection GROUP BY kek_version ORDER BY kek_version",
    )
    .fetch_all(e)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("kek_version")?, r.try_get("n")?)))
        .collect()
}

pub async fn count_under(conn: &mut Conn, version: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM connection WHERE kek_version = $1")
        .bind(version)
        .fetch_one(conn)
        .await
}

/// A user's connections, oldest first.
pub async fn for_user<'e, E>(e: E, user_id: &str) -> Result<Vec<ConnectionRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let sql = format!(
        "SELECT {COLUMNS} FROM connection WHERE user_id = $1 ORDER BY created_at, provider"
    );
    sqlx::query(&sql)
        .bind(user_id)
        .fetch_all(e)
        .await?
        .iter()
        .map(from_row)
        .collect()
}

pub async fn by_id<'e, E>(e: E, id: &str) -> Result<Option<ConnectionRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let sql = format!("SELECT {COLUMNS} FROM connection WHERE id = $1");
    sqlx::query(&sql)
        .bind(id)
        .fetch_optional(e)
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

pub async fn set_status(conn: &mut Conn, id: &str, status: &str) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("UPDATE connection SET status = $2 WHERE id = $1")
            .bind(id)
            .bind(status)
            .execute(conn)
            .await?
            .rows_affected(),
    )
}

/// Takes the refresh lease of a connection until `until`, unless another holder's lease
/// is still running at `now` or the row is no longer at `generation` (someone stored new
/// tokens since the caller read it). One statement, so it is atomic on both backends.
pub async fn take_refresh_lease<'e, E>(
    e: E,
    id: &str,
    generation: i64,
    now: i64,
    until: i64,
) -> Result<bool, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    Ok(sqlx::query(
        "UPDATE connection SET refresh_lease_until = $2 \
         WHERE id = $1 AND generation = $4 \
         AND (refresh_lease_until IS NULL OR refresh_lease_until <= $3)",
    )
    .bind(id)
    .bind(until)
    .bind(now)
    .bind(generation)
    .execute(e)
    .await?
    .rows_affected()
        > 0)
}

/// Gives the refresh lease back.
pub async fn release_refresh_lease(conn: &mut Conn, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE connection SET refresh_lease_until = NULL WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Connections whose access token expires before `before` and that may be refreshed
/// (active, not leased): ids, oldest expiry first.
pub async fn expiring<'e, E>(
    e: E,
    before: i64,
    now: i64,
    limit: i64,
) -> Result<Vec<String>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query_scalar(
        "SELECT id FROM connection WHERE status = 'active' AND expires_at IS NOT NULL \
         AND expires_at < $1 AND (refresh_lease_until IS NULL OR refresh_lease_until <= $2) \
         ORDER BY expires_at LIMIT $3",
    )
    .bind(before)
    .bind(now)
    .bind(limit)
    .fetch_all(e)
    .await
}

/// Records a use of several credentials at `now` with one statement.
pub async fn touch_many(conn: &mut Conn, ids: &[&str], now: i64) -> Result<(), sqlx::Error> {
    for chunk in ids.chunks(500) {
        let mut p = super::Params::for_conn(conn);
        let mut sql = String::from("UPDATE connection SET last_used_at = ");
        p.push(&mut sql);
        sql.push_str(" WHERE id IN ");
        p.push_tuple(&mut sql, chunk.len());
        let mut q = sqlx::query(&sql).bind(now);
        for id in chunk {
            q = q.bind(*id);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}
