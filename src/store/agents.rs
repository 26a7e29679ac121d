//! The `agent` and `delegation` tables.

use std::sync::OnceLock;

use sqlx::Row;

use super::Conn;

/// A registered agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRow {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

pub async fn list_agents<'e, E>(e: E) -> Result<Vec<AgentRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    // Registered by an operator; public OAuth clients that registered themselves are not
    // agent services.
    sqlx::query("SELECT id, name, created_at FROM agent WHERE kind = 'registered' ORDER BY name")
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
    /// The grant an OAuth access token was issued under (SPEC §11); `None` for a
    /// delegation made with `POST /api/delegations`.
    pub grant_id: Option<String>,
    /// The one resource (RFC 8707) an access token is for, if it was issued for one.
    pub resource: Option<String>,
}

pub async fn insert_delegation(
    conn: &mut Conn,
    token_hash: &[u8],
    d: &DelegationRow,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO delegation (token_hash, handle, agent_id, user_id, tools, providers, \
         created_at, expires_at, grant_id, resource) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(token_hash)
    .bind(&d.handle)
    .bind(&d.agent_id)
    .bind(&d.user_id)
    .bind(&d.tools)
    .bind(&d.providers)
    .bind(d.created_at)
    .bind(d.expires_at)
    .bind(&d.grant_id)
    .bind(&d.resource)
    .execute(conn)
    .await?;
    Ok(())
}

/// Revokes every delegation a user issued; returns how many.
pub async fn delete_delegations_of(conn: &mut Conn, user_id: &str) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM delegation WHERE user_id = $1")
        .bind(user_id)
        .execute(conn)
        .await?
        .rows_affected())
}

/// Revokes the delegations `user_id` issued that name `provider`, or one of `tools` (the
/// provider's tools), inside the caller's transaction; returns their handles.
pub async fn end_delegations_naming(
    conn: &mut Conn,
    user_id: &str,
    provider: &str,
    tools: &[&str],
) -> Result<Vec<String>, sqlx::Error> {
    // The lists are JSON text, read here rather than matched in SQL the two backends would
    // spell differently; a user has a handful of delegations.
    let rows = sqlx::query("SELECT handle, tools, providers FROM delegation WHERE user_id = $1")
        .bind(user_id)
        .fetch_all(&mut *conn)
        .await?;
    let list = |s: &str| serde_json::from_str::<Vec<String>>(s).unwrap_or_default();
    let mut ended = Vec::new();
    for r in &rows {
        let names_it = list(&r.try_get::<String, _>("providers")?)
            .iter()
            .any(|p| p == provider)
            || list(&r.try_get::<String, _>("tools")?)
                .iter()
                .any(|t| tools.contains(&t.as_str()));
        if names_it {
            ended.push(r.try_get::<String, _>("handle")?);
        }
    }
    ended.sort();
    for handle in &ended {
        sqlx::query("DELETE FROM delegation WHERE handle = $1")
            .bind(handle)
            .execute(&mut *conn)
            .await?;
    }
    Ok(ended)
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

/// Everything an agent request needs: the agent (with its secret digest), the delegation
/// behind the presented token's digest if any, and that delegation's user's connection to
/// the route's provider if any.
#[derive(Clone)]
pub struct RequestRows {
    pub agent: AgentRow,
    pub secret_hash: Vec<u8>,
    pub delegation: Option<DelegationRow>,
    pub connection: Option<super::connection::ConnectionRow>,
}

/// What one agent request looks up: agent id, delegation token digest, provider.
pub type RequestKey = (String, Vec<u8>, String);

/// The most keys [`request_rows_many`] reads with one statement.
pub const MAX_KEYS: usize = 64;

/// The statement for `width` keys (a power of two up to [`MAX_KEYS`]), built once; `None`
/// for any other width.
fn request_sql(width: usize) -> Option<&'static str> {
    static SQL: [OnceLock<String>; 7] = [const { OnceLock::new() }; 7];
    let build = || {
        let values: Vec<String> = (0..width)
            .map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
            .collect();
        // VALUES columns are named column1.. by both PostgreSQL and SQLite.
        format!(
            "SELECT k.column1 AS k_id, k.column2 AS k_hash, k.column3 AS k_provider, \
             a.id, a.name, a.created_at, a.secret_hash, d.handle AS d_handle, \
             d.agent_id AS d_agent_id, d.user_id AS d_user_id, d.tools AS d_tools, \
             d.providers AS d_providers, d.created_at AS d_created_at, \
             d.expires_at AS d_expires_at, d.grant_id AS d_grant_id, d.resource AS d_resource, \
             {} FROM (VALUES {}) AS k \
             JOIN agent a ON a.id = k.column1 \
             LEFT JOIN delegation d ON d.token_hash = k.column2 \
             LEFT JOIN connection c ON c.user_id = d.user_id AND c.provider = k.column3",
            super::connection::columns_as("c"),
            values.join(",")
        )
    };
    let cell = SQL.get(usize::try_from(width.trailing_zeros()).ok()?)?;
    width
        .is_power_of_two()
        .then(|| cell.get_or_init(build).as_str())
}

/// Reads the rows of up to [`MAX_KEYS`] agent requests with one statement. Keys whose
/// agent does not exist are absent from the answer. The key list is padded to a power of
/// two (repeating the last key), so a handful of statement texts cover every size.
pub async fn request_rows_many<'e, E>(
    e: E,
    keys: &[RequestKey],
) -> Result<Vec<(RequestKey, RequestRows)>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let Some(last) = keys.last() else {
        return Ok(Vec::new());
    };
    let width = keys.len().next_power_of_two();
    let sql = request_sql(width).ok_or_else(|| {
        sqlx::Error::Protocol(format!(
            "{} agent requests in one read, at most {MAX_KEYS}",
            keys.len()
        ))
    })?;
    let mut q = sqlx::query(sql);
    for (id, hash, provider) in keys.iter().chain(std::iter::repeat(last)).take(width) {
        q = q
            .bind(id.as_str())
            .bind(hash.as_slice())
            .bind(provider.as_str());
    }
    let mut out: Vec<(RequestKey, RequestRows)> = Vec::with_capacity(keys.len());
    for r in q.fetch_all(e).await? {
        let key: RequestKey = (
            r.try_get("k_id")?,
            r.try_get("k_hash")?,
            r.try_get("k_provider")?,
        );
        if out.iter().any(|(k, _)| *k == key) {
            continue; // a padding repeat
        }
        let delegation = match r.try_get::<Option<String>, _>("d_handle")? {
            Some(handle) => Some(DelegationRow {
                handle,
                agent_id: r.try_get("d_agent_id")?,
                user_id: r.try_get("d_user_id")?,
                tools: r.try_get("d_tools")?,
                providers: r.try_get("d_providers")?,
                created_at: r.try_get("d_created_at")?,
                expires_at: r.try_get("d_expires_at")?,
                grant_id: r.try_get("d_grant_id")?,
                resource: r.try_get("d_resource")?,
            }),
            None => None,
        };
        let rows = RequestRows {
            agent: agent_row(&r)?,
            secret_hash: r.try_get("secret_hash")?,
            delegation,
            connection: super::connection::from_row_as(&r, "c")?,
        };
        out.push((key, rows));
    }
    Ok(out)
}

/// What a credential release was decided on: the agent (with its secret digest), the
/// delegation (by token digest) and the connection in the state it was read in. The
/// release is recorded only if all of it still holds when its audit event is written
/// (see `journal`), so a decision taken on rows read earlier is never acted on after the
/// agent, the delegation or the connection changed.
#[derive(Clone, PartialEq, Eq)]
pub struct Basis {
    pub agent_id: String,
    pub secret_hash: Vec<u8>,
    pub token_hash: Vec<u8>,
    pub connection_id: String,
    pub generation: i64,
    pub kek_version: i64,
    pub status: String,
}

/// The digests are not secrets, but there is nothing to learn from printing them.
impl std::fmt::Debug for Basis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Basis")
            .field("agent_id", &self.agent_id)
            .field("connection_id", &self.connection_id)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// Bases as the JSON array the one-statement checks read: `i` is the caller's index.
pub(super) fn bases_json<'a>(bases: impl Iterator<Item = (usize, &'a Basis)>) -> String {
    let hex = crate::crypto::hex;
    serde_json::Value::Array(
        bases
            .map(|(i, b)| {
                serde_json::json!({
                    "i": i, "agent": b.agent_id, "secret": hex(&b.secret_hash),
                    "token": hex(&b.token_hash), "conn": b.connection_id, "gen": b.generation,
                    "kek": b.kek_version, "status": b.status,
                })
            })
            .collect(),
    )
    .to_string()
}

/// The indexes (ascending) of the bases that no longer hold at `now`, inside the caller's
/// transaction. Releases of one agent for one user share a basis, so each distinct basis
/// is checked once; on SQLite all of them in one statement (a round trip to SQLite's
/// thread per release was most of an audit batch's time), on PostgreSQL one at a time,
/// each with a snapshot of its own.
pub async fn stale_bases(
    conn: &mut Conn,
    bases: &[(usize, &Basis)],
    now: i64,
) -> Result<Vec<usize>, sqlx::Error> {
    let mut distinct: Vec<(&Basis, Vec<usize>)> = Vec::new();
    for (i, b) in bases {
        match distinct.iter_mut().find(|(d, _)| *d == *b) {
            Some((_, at)) => at.push(*i),
            None => distinct.push((b, vec![*i])),
        }
    }
    let mut stale = Vec::new();
    if conn.backend_name().eq_ignore_ascii_case("sqlite") {
        let json = bases_json(distinct.iter().enumerate().map(|(k, (b, _))| (k, *b)));
        let found: Vec<i64> = sqlx::query_scalar(
            "SELECT CAST(j.value ->> 'i' AS INTEGER) FROM json_each($1) AS j \
             WHERE NOT EXISTS (SELECT 1 FROM agent a, delegation d, connection c \
             WHERE a.id = j.value ->> 'agent' AND a.secret_hash = unhex(j.value ->> 'secret') \
             AND d.token_hash = unhex(j.value ->> 'token') AND d.agent_id = a.id \
             AND c.user_id = d.user_id AND c.id = j.value ->> 'conn' \
             AND c.generation = j.value ->> 'gen' AND c.kek_version = j.value ->> 'kek' \
             AND c.status = j.value ->> 'status' AND d.expires_at > $2)",
        )
        .bind(json)
        .bind(now)
        .fetch_all(&mut *conn)
        .await?;
        for k in found {
            if let Some((_, at)) = usize::try_from(k).ok().and_then(|k| distinct.get(k)) {
                stale.extend_from_slice(at);
            }
        }
    } else {
        for (b, at) in &distinct {
            if !basis_holds(&mut *conn, b, now).await? {
                stale.extend_from_slice(at);
            }
        }
    }
    stale.sort_unstable();
    Ok(stale)
}

/// Whether every row `basis` was read from is still as it was, and the delegation unexpired
/// at `now`, inside the caller's transaction.
pub async fn basis_holds(conn: &mut Conn, basis: &Basis, now: i64) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM agent a, delegation d, connection c \
         WHERE a.id = $1 AND a.secret_hash = $2 AND d.token_hash = $3 AND d.agent_id = a.id \
         AND c.user_id = d.user_id AND c.id = $4 AND c.generation = $5 \
         AND c.kek_version = $6 AND c.status = $7 AND d.expires_at > $8",
    )
    .bind(&basis.agent_id)
    .bind(&basis.secret_hash)
    .bind(&basis.token_hash)
    .bind(&basis.connection_id)
    .bind(basis.generation)
    .bind(basis.kek_version)
    .bind(&basis.status)
    .bind(now)
    .fetch_one(conn)
    .await?;
    Ok(n > 0)
}
