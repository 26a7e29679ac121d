//! The `identity` and `oauth_flow` tables.

use sqlx::Row;

use super::Conn;

/// The user an identity belongs to, if known.
pub async fn user_of(
    conn: &mut Conn,
    provider: &str,
    subject: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT user_id FROM identity WHERE provider = $1 AND subject = $2")
        .bind(provider)
        .bind(subject)
        .fetch_optional(conn)
        .await
}

/// What a provider told us about a person.
pub struct IdentityRow<'a> {
    pub provider: &'a str,
    pub subject: &'a str,
    pub user_id: &'a str,
    pub email: Option<&'a str>,
    pub email_verified: bool,
    pub name: Option<&'a str>,
    pub now: i64,
}

pub async fn insert(conn: &mut Conn, i: &IdentityRow<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO identity (provider, subject, user_id, email, email_verified, name, created_at, \
         last_login_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
    )
    .bind(i.provider)
    .bind(i.subject)
    .bind(i.user_id)
    .bind(i.email)
    .bind(i64::from(i.email_verified))
    .bind(i.name)
    .bind(i.now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Refreshes the profile fields of a known identity.
pub async fn update(conn: &mut Conn, i: &IdentityRow<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE identity SET email = $3, email_verified = $4, name = $5, last_login_at = $6 \
         WHERE provider = $1 AND subject = $2",
    )
    .bind(i.provider)
    .bind(i.subject)
    .bind(i.email)
    .bind(i64::from(i.email_verified))
    .bind(i.name)
    .bind(i.now)
    .execute(conn)
    .await?;
    Ok(())
}

/// `(provider, subject, email, name)` of a user's identities.
pub async fn for_user<'e, E>(
    e: E,
    user_id: &str,
) -> Result<Vec<(String, String, Option<String>, Option<String>)>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let rows = sqlx::query(
        "SELECT provider, subject, email, name FROM identity WHERE user_id = $1 ORDER BY created_at, provider",
    )
    .bind(user_id)
    .fetch_all(e)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("provider")?,
                r.try_get("subject")?,
                r.try_get("email")?,
                r.try_get("name")?,
            ))
        })
        .collect()
}

/// An authorization request in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRow {
    pub session_hash: Vec<u8>,
    pub provider: String,
    pub purpose: String,
    pub user_id: Option<String>,
    pub scopes: String,
    pub return_to: String,
    pub expires_at: i64,
}

pub async fn insert_flow(
    conn: &mut Conn,
    state_hash: &[u8],
    f: &FlowRow,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO oauth_flow (state_hash, session_hash, provider, purpose, user_id, scopes, \
         return_to, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(state_hash)
    .bind(f.session_hash.as_slice())
    .bind(&f.provider)
    .bind(&f.purpose)
    .bind(f.user_id.as_deref())
    .bind(&f.scopes)
    .bind(&f.return_to)
    .bind(f.expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Takes a flow out: deletes it and returns what it held, in one statement, so a state
/// works once even under concurrent callbacks.
pub async fn take_flow(conn: &mut Conn, state_hash: &[u8]) -> Result<Option<FlowRow>, sqlx::Error> {
    let Some(r) = sqlx::query(
        "DELETE FROM oauth_flow WHERE state_hash = $1 \
         RETURNING session_hash, provider, purpose, user_id, scopes, return_to, expires_at",
    )
    .bind(state_hash)
    .fetch_optional(conn)
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(FlowRow {
        session_hash: r.try_get("session_hash")?,
        provider: r.try_get("provider")?,
        purpose: r.try_get("purpose")?,
        user_id: r.try_get("user_id")?,
        scopes: r.try_get("scopes")?,
        return_to: r.try_get("return_to")?,
        expires_at: r.try_get("expires_at")?,
    }))
}

/// Removes flows past their expiry; returns how many.
pub async fn purge_flows<'e, E>(e: E, now: i64) -> Result<u64, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    Ok(sqlx::query("DELETE FROM oauth_flow WHERE expires_at <= $1")
        .bind(now)
        .execute(e)
        .await?
        .rows_affected())
}

/// A user's identities as the admin list matches them: (provider, subject, email,
/// email_verified).
pub async fn keys_of<'e, E>(
    e: E,
    user_id: &str,
) -> Result<Vec<(String, String, Option<String>, bool)>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let rows = sqlx::query(
        "SELECT provider, subject, email, email_verified FROM identity WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_all(e)
    .await?;
    rows.iter()
        .map(|r| {
            let verified: i64 = r.try_get("email_verified")?;
            Ok((
                r.try_get("provider")?,
                r.try_get("subject")?,
                r.try_get("email")?,
                verified != 0,
            ))
        })
        .collect()
}
