//! The authorization server's tables: OAuth clients (as `agent` rows), `agent_grant`,
//! `oauth_code`, `refresh_token`, `client_assertion`, and the access tokens issued under a
//! grant (as `delegation` rows). Every secret is found by its SHA-256 digest; none is
//! stored. Writes take the caller's transaction, so each commits with its audit event.

use sqlx::Row;

use super::Conn;

/// An OAuth client: a registered agent, or a public client registered by RFC 7591 or named
/// by a client ID metadata document.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientRow {
    pub id: String,
    /// The `client_id`.
    pub name: String,
    /// `registered`, `dynamic` or `metadata`.
    pub kind: String,
    /// Empty when no secret authenticates the client.
    pub secret_hash: Vec<u8>,
    /// JSON array of exact redirect URIs.
    pub redirect_uris: String,
    /// JSON Web Key Set for `private_key_jwt`.
    pub jwks: Option<String>,
    pub display_name: Option<String>,
    pub fetched_at: Option<i64>,
    pub created_at: i64,
}

/// The digest is not a secret, but there is nothing to learn from printing it.
impl std::fmt::Debug for ClientRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRow")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

const CLIENT_COLUMNS: &str = "id, name, kind, secret_hash, redirect_uris, jwks, display_name, \
                              fetched_at, created_at";

fn client_row(r: &sqlx::any::AnyRow) -> Result<ClientRow, sqlx::Error> {
    Ok(ClientRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        kind: r.try_get("kind")?,
        secret_hash: r.try_get("secret_hash")?,
        redirect_uris: r.try_get("redirect_uris")?,
        jwks: r.try_get("jwks")?,
        display_name: r.try_get("display_name")?,
        fetched_at: r.try_get("fetched_at")?,
        created_at: r.try_get("created_at")?,
    })
}

pub async fn client_by_name<'e, E>(e: E, name: &str) -> Result<Option<ClientRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(&format!(
        "SELECT {CLIENT_COLUMNS} FROM agent WHERE name = $1"
    ))
    .bind(name)
    .fetch_optional(e)
    .await?
    .as_ref()
    .map(client_row)
    .transpose()
}

pub async fn client_by_id<'e, E>(e: E, id: &str) -> Result<Option<ClientRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(&format!("SELECT {CLIENT_COLUMNS} FROM agent WHERE id = $1"))
        .bind(id)
        .fetch_optional(e)
        .await?
        .as_ref()
        .map(client_row)
        .transpose()
}

/// Inserts a client; `false` if its name is taken.
pub async fn insert_client(conn: &mut Conn, c: &ClientRow) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO agent (id, name, kind, secret_hash, redirect_uris, jwks, display_name, \
         fetched_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(&c.id)
    .bind(&c.name)
    .bind(&c.kind)
    .bind(&c.secret_hash)
    .bind(&c.redirect_uris)
    .bind(&c.jwks)
    .bind(&c.display_name)
    .bind(c.fetched_at)
    .bind(c.created_at)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Replaces what a metadata document said of a client (a refetch).
pub async fn update_metadata(conn: &mut Conn, c: &ClientRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE agent SET redirect_uris = $1, display_name = $2, fetched_at = $3 \
         WHERE id = $4 AND kind = 'metadata'",
    )
    .bind(&c.redirect_uris)
    .bind(&c.display_name)
    .bind(c.fetched_at)
    .bind(&c.id)
    .execute(conn)
    .await?;
    Ok(())
}

/// A grant as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRow {
    pub id: String,
    pub agent_id: String,
    pub user_id: String,
    /// JSON array of tool names.
    pub tools: String,
    /// JSON array of provider names.
    pub providers: String,
    pub resource: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub last_used_at: Option<i64>,
}

const GRANT_COLUMNS: &str = "g.id, g.agent_id, g.user_id, g.tools, g.providers, g.resource, g.created_at, \
     g.expires_at, g.last_used_at";

fn grant_row(r: &sqlx::any::AnyRow) -> Result<GrantRow, sqlx::Error> {
    Ok(GrantRow {
        id: r.try_get("id")?,
        agent_id: r.try_get("agent_id")?,
        user_id: r.try_get("user_id")?,
        tools: r.try_get("tools")?,
        providers: r.try_get("providers")?,
        resource: r.try_get("resource")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        last_used_at: r.try_get("last_used_at")?,
    })
}

pub async fn insert_grant(conn: &mut Conn, g: &GrantRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO agent_grant (id, agent_id, user_id, tools, providers, resource, \
         created_at, expires_at, last_used_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&g.id)
    .bind(&g.agent_id)
    .bind(&g.user_id)
    .bind(&g.tools)
    .bind(&g.providers)
    .bind(&g.resource)
    .bind(g.created_at)
    .bind(g.expires_at)
    .bind(g.last_used_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// A user's grants with their agents' client ids, newest first.
pub async fn grants_of<'e, E>(e: E, user_id: &str) -> Result<Vec<(GrantRow, String)>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(&format!(
        "SELECT {GRANT_COLUMNS}, a.name AS agent_name FROM agent_grant g \
         JOIN agent a ON a.id = g.agent_id WHERE g.user_id = $1 ORDER BY g.created_at DESC, g.id"
    ))
    .bind(user_id)
    .fetch_all(e)
    .await?
    .iter()
    .map(|r| Ok((grant_row(r)?, r.try_get("agent_name")?)))
    .collect()
}

pub async fn grant_by_id(conn: &mut Conn, id: &str) -> Result<Option<GrantRow>, sqlx::Error> {
    grant_by_id_locked(conn, id, "").await
}

/// [`grant_by_id`], taking the row's lock with `lock` ([`super::Backend::for_update`]).
/// A code exchange or refresh locks its grant before its code or refresh token, in the
/// order a revocation's cascade takes them, so the two wait for each other rather than
/// deadlock.
pub async fn grant_by_id_locked(
    conn: &mut Conn,
    id: &str,
    lock: &str,
) -> Result<Option<GrantRow>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {GRANT_COLUMNS} FROM agent_grant g WHERE g.id = $1{lock}"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?
    .as_ref()
    .map(grant_row)
    .transpose()
}

/// The ids of the grants held by the agent named `name`.
pub async fn grant_ids_of_agent(conn: &mut Conn, name: &str) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT g.id FROM agent_grant g JOIN agent a ON a.id = g.agent_id \
         WHERE a.name = $1 ORDER BY g.id",
    )
    .bind(name)
    .fetch_all(conn)
    .await
}

/// Deletes a grant, and with it its codes and tokens; `false` if there was none.
pub async fn delete_grant(conn: &mut Conn, id: &str) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM agent_grant WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?
        .rows_affected()
        > 0)
}

/// Deletes every grant of a user; returns their ids.
pub async fn delete_grants_of(conn: &mut Conn, user_id: &str) -> Result<Vec<String>, sqlx::Error> {
    let mut ids: Vec<String> =
        sqlx::query_scalar("DELETE FROM agent_grant WHERE user_id = $1 RETURNING id")
            .bind(user_id)
            .fetch_all(&mut *conn)
            .await?;
    ids.sort();
    Ok(ids)
}

/// Notes a grant's use, at most once per `step` seconds.
pub async fn touch_grant<'e, E>(e: E, id: &str, now: i64, step: i64) -> Result<(), sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(
        "UPDATE agent_grant SET last_used_at = $1 \
         WHERE id = $2 AND (last_used_at IS NULL OR last_used_at <= $3)",
    )
    .bind(now)
    .bind(id)
    .bind(now - step)
    .execute(e)
    .await?;
    Ok(())
}

/// Seconds a rotated refresh token is kept (its replay revokes the grant meanwhile).
const ROTATED_KEPT: i64 = 7 * 86_400;
/// Seconds a self-registered public client without a grant is kept.
const UNUSED_CLIENT_KEPT: i64 = 86_400;

/// Removes expired grants, codes and assertion ids, rotated refresh tokens older than a
/// week, and self-registered clients unused for a day (housekeeping); returns how many rows.
pub async fn purge<'e, E>(e: E, now: i64) -> Result<u64, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any> + Copy,
{
    let mut n = 0;
    for sql in [
        "DELETE FROM agent_grant WHERE expires_at <= $1",
        "DELETE FROM oauth_code WHERE expires_at <= $1",
        "DELETE FROM client_assertion WHERE expires_at <= $1",
    ] {
        n += sqlx::query(sql).bind(now).execute(e).await?.rows_affected();
    }
    // Rotated refresh tokens are kept a week to catch a replay, then forgotten.
    n += sqlx::query("DELETE FROM refresh_token WHERE rotated_at <= $1")
        .bind(now - ROTATED_KEPT)
        .execute(e)
        .await?
        .rows_affected();
    // Grants approved an hour ago whose code was never exchanged (nor is any longer).
    n += sqlx::query(
        "DELETE FROM agent_grant WHERE created_at <= $1 \
         AND NOT EXISTS (SELECT 1 FROM refresh_token r WHERE r.grant_id = agent_grant.id) \
         AND NOT EXISTS (SELECT 1 FROM oauth_code c WHERE c.grant_id = agent_grant.id)",
    )
    .bind(now - 3600)
    .execute(e)
    .await?
    .rows_affected();
    // Public clients that registered themselves a day ago and hold no grant.
    n += sqlx::query(
        "DELETE FROM agent WHERE kind IN ('dynamic', 'metadata') AND created_at <= $1 \
         AND NOT EXISTS (SELECT 1 FROM agent_grant g WHERE g.agent_id = agent.id)",
    )
    .bind(now - UNUSED_CLIENT_KEPT)
    .execute(e)
    .await?
    .rows_affected();
    Ok(n)
}

/// An authorization code as stored.
#[derive(Debug, Clone)]
pub struct CodeRow {
    pub grant_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

pub async fn insert_code(conn: &mut Conn, hash: &[u8], c: &CodeRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO oauth_code (code_hash, grant_id, redirect_uri, code_challenge, expires_at, \
         used_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(hash)
    .bind(&c.grant_id)
    .bind(&c.redirect_uri)
    .bind(&c.code_challenge)
    .bind(c.expires_at)
    .bind(c.used_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Reads a code and marks it used, in one step: `(row as it was, whether this call was the
/// one that used it)`. A second use sees `false`.
pub async fn use_code(
    conn: &mut Conn,
    hash: &[u8],
    now: i64,
) -> Result<Option<(CodeRow, bool)>, sqlx::Error> {
    let first =
        sqlx::query("UPDATE oauth_code SET used_at = $1 WHERE code_hash = $2 AND used_at IS NULL")
            .bind(now)
            .bind(hash)
            .execute(&mut *conn)
            .await?
            .rows_affected()
            > 0;
    let row = sqlx::query(
        "SELECT grant_id, redirect_uri, code_challenge, expires_at, used_at FROM oauth_code \
         WHERE code_hash = $1",
    )
    .bind(hash)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| {
        Ok((
            CodeRow {
                grant_id: r.try_get("grant_id")?,
                redirect_uri: r.try_get("redirect_uri")?,
                code_challenge: r.try_get("code_challenge")?,
                expires_at: r.try_get("expires_at")?,
                used_at: r.try_get("used_at")?,
            },
            first,
        ))
    })
    .transpose()
}

pub async fn insert_refresh(
    conn: &mut Conn,
    hash: &[u8],
    grant_id: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO refresh_token (token_hash, grant_id, created_at, rotated_at) \
         VALUES ($1, $2, $3, NULL)",
    )
    .bind(hash)
    .bind(grant_id)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Rotates a refresh token: `(its grant, whether this call rotated it)`. `false` means it
/// had been rotated before: a replay.
pub async fn rotate_refresh(
    conn: &mut Conn,
    hash: &[u8],
    now: i64,
) -> Result<Option<(String, bool)>, sqlx::Error> {
    let first = sqlx::query(
        "UPDATE refresh_token SET rotated_at = $1 WHERE token_hash = $2 AND rotated_at IS NULL",
    )
    .bind(now)
    .bind(hash)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        > 0;
    let grant: Option<String> =
        sqlx::query_scalar("SELECT grant_id FROM refresh_token WHERE token_hash = $1")
            .bind(hash)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(grant.map(|g| (g, first)))
}

/// The grant an authorization code belongs to, used or not.
pub async fn code_grant(conn: &mut Conn, hash: &[u8]) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT grant_id FROM oauth_code WHERE code_hash = $1")
        .bind(hash)
        .fetch_optional(conn)
        .await
}

/// The grant a refresh token belongs to, rotated or not.
pub async fn refresh_grant(conn: &mut Conn, hash: &[u8]) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT grant_id FROM refresh_token WHERE token_hash = $1")
        .bind(hash)
        .fetch_optional(conn)
        .await
}

/// The grant and the id of the access token with this digest, if it was issued under one.
pub async fn access_grant(
    conn: &mut Conn,
    hash: &[u8],
) -> Result<Option<(String, String)>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT grant_id, handle FROM delegation WHERE token_hash = $1 AND grant_id IS NOT NULL",
    )
    .bind(hash)
    .fetch_optional(conn)
    .await?;
    row.map(|r| Ok((r.try_get("grant_id")?, r.try_get("handle")?)))
        .transpose()
}

pub async fn delete_access(conn: &mut Conn, hash: &[u8]) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM delegation WHERE token_hash = $1")
        .bind(hash)
        .execute(conn)
        .await?
        .rows_affected()
        > 0)
}

/// Records a `private_key_jwt` assertion id until `expires_at`; `false` if it was seen.
pub async fn spend_assertion(
    conn: &mut Conn,
    jti_hash: &[u8],
    expires_at: i64,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "INSERT INTO client_assertion (jti_hash, expires_at) VALUES ($1, $2) \
         ON CONFLICT (jti_hash) DO NOTHING",
    )
    .bind(jti_hash)
    .bind(expires_at)
    .execute(conn)
    .await?
    .rows_affected()
        > 0)
}
