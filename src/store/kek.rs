//! The `kek` table: one row per key-encryption-key version.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::Conn;

/// A KEK version's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KekState {
    Primary,
    DecryptOnly,
    Retired,
}

impl KekState {
    pub const fn as_str(self) -> &'static str {
        match self {
            KekState::Primary => "primary",
            KekState::DecryptOnly => "decrypt-only",
            KekState::Retired => "retired",
        }
    }

    fn parse(s: &str) -> Result<KekState, sqlx::Error> {
        match s {
            "primary" => Ok(KekState::Primary),
            "decrypt-only" => Ok(KekState::DecryptOnly),
            "retired" => Ok(KekState::Retired),
            other => Err(sqlx::Error::Decode(
                format!("unknown kek state {other:?}").into(),
            )),
        }
    }
}

/// A stored KEK row. `sealed_key` is ciphertext under the root key.
#[derive(Debug, Clone)]
pub struct KekRow {
    pub version: i64,
    pub state: KekState,
    pub cipher: String,
    pub sealed_key: Option<Vec<u8>>,
    pub root_key_id: String,
    pub wraps: i64,
    pub created_at: i64,
    pub retired_at: Option<i64>,
}

const COLUMNS: &str =
    "version, state, cipher, sealed_key, root_key_id, wraps, created_at, retired_at";

fn from_row(row: &AnyRow) -> Result<KekRow, sqlx::Error> {
    Ok(KekRow {
        version: row.try_get("version")?,
        state: KekState::parse(row.try_get("state")?)?,
        cipher: row.try_get("cipher")?,
        sealed_key: row.try_get("sealed_key")?,
        root_key_id: row.try_get("root_key_id")?,
        wraps: row.try_get("wraps")?,
        created_at: row.try_get("created_at")?,
        retired_at: row.try_get("retired_at")?,
    })
}

/// Every version, oldest first.
pub async fn all<'e, E>(e: E) -> Result<Vec<KekRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let sql = format!("SELECT {COLUMNS} FROM kek ORDER BY version");
    sqlx::query(&sql)
        .fetch_all(e)
        .await?
        .iter()
        .map(from_row)
        .collect()
}

pub async fn by_version<'e, E>(e: E, version: i64) -> Result<Option<KekRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let sql = format!("SELECT {COLUMNS} FROM kek WHERE version = $1");
    sqlx::query(&sql)
        .bind(version)
        .fetch_optional(e)
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

pub async fn primary<'e, E>(e: E) -> Result<Option<KekRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let sql = format!("SELECT {COLUMNS} FROM kek WHERE state = 'primary'");
    sqlx::query(&sql)
        .fetch_optional(e)
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// The primary, its row locked for the rest of the transaction: a rotation checks the
/// root key it is sealed under and demotes it without a root-key rotation slipping in
/// between (that one locks the table, which waits for this lock and blocks it).
pub async fn lock_primary(
    conn: &mut Conn,
    backend: super::Backend,
) -> Result<Option<KekRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM kek WHERE state = 'primary'{}",
        backend.for_update()
    );
    sqlx::query(&sql)
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// Locks the whole table against writers and row locks until commit, for a root-key
/// rotation: no version can be added, demoted or re-sealed between reading every
/// version and re-sealing them. Plain reads (opening records) go on. On SQLite the
/// transaction's write lock already does this.
pub async fn lock_table(conn: &mut Conn, backend: super::Backend) -> Result<(), sqlx::Error> {
    if backend == super::Backend::Postgres {
        sqlx::query("LOCK TABLE kek IN EXCLUSIVE MODE")
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// The oldest live (not retired) version whose key is not sealed under `root_key_id`.
pub async fn first_live_not_under(
    conn: &mut Conn,
    root_key_id: &str,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT MIN(version) FROM kek WHERE state <> 'retired' AND root_key_id <> $1",
    )
    .bind(root_key_id)
    .fetch_one(conn)
    .await
}

/// The outcome of [`reserve_wraps`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// Counted against this primary version; its total is now `wraps`.
    Reserved { version: i64, wraps: i64 },
    /// The primary `version` cannot take `n` more wraps without passing the limit.
    Full { version: i64 },
    /// There is no primary KEK.
    NoPrimary,
}

/// Counts `n` more wraps against the primary if that keeps it within `max`. Locks the
/// primary row until commit, so a rotation cannot slip in between choosing the primary and
/// writing under it.
pub async fn reserve_wraps(conn: &mut Conn, n: i64, max: i64) -> Result<Reservation, sqlx::Error> {
    let row = sqlx::query(
        "UPDATE kek SET wraps = wraps + $1 WHERE state = 'primary' AND wraps + $1 <= $2 \
         RETURNING version, wraps",
    )
    .bind(n)
    .bind(max)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(r) = row {
        return Ok(Reservation::Reserved {
            version: r.try_get("version")?,
            wraps: r.try_get("wraps")?,
        });
    }
    let primary: Option<i64> =
        sqlx::query_scalar("SELECT version FROM kek WHERE state = 'primary'")
            .fetch_optional(conn)
            .await?;
    Ok(
        primary.map_or(Reservation::NoPrimary, |version| Reservation::Full {
            version,
        }),
    )
}

/// The next version number.
pub async fn next_version(conn: &mut Conn) -> Result<i64, sqlx::Error> {
    let v: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) + 1 FROM kek")
        .fetch_one(conn)
        .await?;
    Ok(v)
}

/// Demotes the current primary, if any, to decrypt-only.
pub async fn demote_primary(conn: &mut Conn) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("UPDATE kek SET state = 'decrypt-only' WHERE state = 'primary'")
            .execute(conn)
            .await?
            .rows_affected(),
    )
}

pub async fn insert_primary(
    conn: &mut Conn,
    version: i64,
    cipher: &str,
    sealed_key: &[u8],
    root_key_id: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO kek (version, state, cipher, sealed_key, root_key_id, wraps, created_at) \
         VALUES ($1, 'primary', $2, $3, $4, 0, $5)",
    )
    .bind(version)
    .bind(cipher)
    .bind(sealed_key)
    .bind(root_key_id)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Locks one version's row for the rest of the transaction.
pub async fn lock(
    conn: &mut Conn,
    backend: super::Backend,
    version: i64,
) -> Result<Option<KekRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM kek WHERE version = $1{}",
        backend.for_update()
    );
    sqlx::query(&sql)
        .bind(version)
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// Destroys a version's key material.
pub async fn retire(conn: &mut Conn, version: i64, now: i64) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE kek SET state = 'retired', sealed_key = NULL, retired_at = $2 \
         WHERE version = $1 AND state = 'decrypt-only'",
    )
    .bind(version)
    .bind(now)
    .execute(conn)
    .await?
    .rows_affected())
}

/// Replaces a version's sealed key (root-key rotation).
pub async fn reseal(
    conn: &mut Conn,
    version: i64,
    sealed_key: &[u8],
    root_key_id: &str,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE kek SET sealed_key = $2, root_key_id = $3 WHERE version = $1 AND state <> 'retired'",
    )
    .bind(version)
    .bind(sealed_key)
    .bind(root_key_id)
    .execute(conn)
    .await?
    .rows_affected())
}
