//! The `agent` and `delegation` tables.

use sqlx::Row;

use super::Conn;

/// A registered agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRow {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

pub async fn insert_agent(
    conn: &mut Conn,
    row: &AgentRow,
    secret_hash: &[u8],
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO agent (id, name, secret_hash, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(&row.id)
    .bind(&row.name)
    .bind(secret_hash)
    .bind(row.created_at)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn list_agents<'e, E>(e: E) -> Result<Vec<AgentRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query("SELECT id, name, created_at FROM agent ORDER BY name")
        .fetch_all(e)
        .await?
        .iter()
        .map(agent_row)
        .collect()
}

fn agent_row(r: &sqlx::any::AnyRow) -> Result<AgentRow, sqlx::Error> {
    Ok(AgentRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        created_at: r.try_get("created_at")?,
    })
}

pub async fn agent_by_name<'e, E>(e: E, name: &str) -> Result<Option<AgentRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query("SELECT id, name, created_at FROM agent WHERE name = $1")
        .bind(name)
        .fetch_optional(e)
        .await?
        .as_ref()
        .map(agent_row)
        .transpose()
}

/// The agent with `id` and its secret digest.
pub async fn agent_secret<'e, E>(e: E, id: &str) -> Result<Option<(AgentRow, Vec<u8>)>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let Some(r) = sqlx::query("SELECT id, name, created_at, secret_hash FROM agent WHERE id = $1")
        .bind(id)
        .fetch_optional(e)
        .await?
    else {
        return Ok(None);
    };
    Ok(Some((agent_row(&r)?, r.try_get("secret_hash")?)))
}

pub async fn delete_agent(conn: &mut Conn, name: &str) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM agent WHERE name = $1")
        .bind(name)
        .execute(conn)
        .await?
        .rows_affected()
        > 0)
}

/// A delegation as stored (the token itself is not: only its digest).
#[derive(Debug, Clone)]
pub struct DelegationRow {
    pub handle: String,
    pub agent_id: String,
    pub user_id: String,
    /// JSON array of tool names.
    pub tools: String,
    /// JSON array of provider names.
    pub providers: String,
    pub created_at: i64,
    pub expires_at: i64,
}

pub async fn insert_delegation(
    conn: &mut Conn,
    token_hash: &[u8],
    d: &DelegationRow,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO delegation (token_hash, handle, agent_id, user_id, tools, providers, \
         created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(token_hash)
    .bind(&d.handle)
    .bind(&d.agent_id)
    .bind(&d.user_id)
    .bind(&d.tools)
    .bind(&d.providers)
    .bind(d.created_at)
    .bind(d.expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn delegation<'e, E>(
    e: E,
    token_hash: &[u8],
) -> Result<Option<DelegationRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let Some(r) = sqlx::query(
        "SELECT handle, agent_id, user_id, tools, providers, created_at, expires_at \
         FROM delegation WHERE token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(e)
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(DelegationRow {
        handle: r.try_get("handle")?,
        agent_id: r.try_get("agent_id")?,
        user_id: r.try_get("user_id")?,
        tools: r.try_get("tools")?,
        providers: r.try_get("providers")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
    }))
}

/// Revokes every delegation a user issued; returns how many.
pub async fn delete_delegations_of(conn: &mut Conn, user_id: &str) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM delegation WHERE user_id = $1")
        .bind(user_id)
        .execute(conn)
        .await?
        .rows_affected())
}

/// Removes delegations past their expiry; returns how many.
pub async fn purge_delegations<'e, E>(e: E, now: i64) -> Result<u64, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    Ok(sqlx::query("DELETE FROM delegation WHERE expires_at <= $1")
        .bind(now)
        .execute(e)
        .await?
        .rows_affected())
}
