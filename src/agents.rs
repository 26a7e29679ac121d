//! Agent services and the delegations users give them.
//!
//! An agent authenticates with `Authorization: Bearer sbx_agent_<id>_<secret>`. The id part
//! finds the row by key; the whole secret's SHA-256 digest is then compared with the
//! stored one in constant time. The secret has 256 random bits, so a plain digest (no
//! slow hash) is enough, and the database never holds anything that authenticates.
//!
//! A delegation is an opaque random token (`sbx_dlg_…`) stored as a SHA-256 digest, with
//! the agent, user, tools, providers and expiry beside it. Opaque rather than signed, so
//! that revocation (sign out everywhere, an admin revoking the user, the agent being
//! removed) is one `DELETE` and takes effect at once on every instance, and there is no
//! signing key to manage; the cost is one indexed read per agent request.

use std::sync::Arc;

use serde_json::json;
use zeroize::Zeroizing;

use crate::audit::{self, Actor, Event, Kind};
use crate::clock::Clock;
use crate::crypto::{CryptoError, constant_time_eq, random_text, sha256};
use crate::secret::{AgentSecret, DelegationToken};
use crate::store::agents::{self as rows, AgentRow, DelegationRow};
use crate::store::{Conn, Db};

/// Default and longest delegation lifetimes, in seconds.
pub const DEFAULT_TTL: i64 = 15 * 60;
pub const MAX_TTL: i64 = 60 * 60;

const AGENT_PREFIX: &str = "sbx_agent_";
const DELEGATION_PREFIX: &str = "sbx_dlg_";

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent names are 1 to 64 letters, digits, '.', '-' or '_'")]
    BadName,
    #[error("an agent named {0:?} already exists")]
    Exists(String),
    #[error("no agent named {0:?}")]
    NoSuchAgent(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Crypto(#[from] CryptoError),
}

/// Why a delegation token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelegationRefused {
    /// Unknown, malformed or revoked.
    Invalid,
    /// Issued to another agent.
    OtherAgent,
    /// Past its expiry.
    Expired,
}

/// A delegation as checked for a request.
#[derive(Debug, Clone)]
pub struct Delegation {
    pub handle: String,
    pub user_id: String,
    pub tools: Vec<String>,
    pub providers: Vec<String>,
    pub expires_at: i64,
}

/// The outcome of checking an agent request's credentials (see [`Agents::resolve`]).
pub enum Resolution {
    /// No agent has this secret.
    Unauthenticated,
    /// The agent is who it says, but the delegation is not acceptable.
    Refused(AgentRow, DelegationRefused),
    /// The agent, its delegation, and the delegating user's connection to the provider
    /// asked about, if there is one.
    Accepted {
        agent: AgentRow,
        delegation: Delegation,
        connection: Option<Box<crate::store::connection::ConnectionRow>>,
    },
}

/// What a user asks to delegate.
#[derive(Debug, Clone)]
pub struct Grant {
    pub agent: String,
    pub tools: Vec<String>,
    pub providers: Vec<String>,
    pub ttl: i64,
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// The agent id inside a well-formed agent secret.
fn agent_id(bearer: &str) -> Option<&str> {
    let (id, _) = bearer
        .strip_prefix(AGENT_PREFIX)
        .and_then(|rest| rest.split_once('_'))?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// A delegation token as its holder receives it (what `POST /api/delegations` answers).
pub fn token_text(token: &DelegationToken) -> Zeroizing<String> {
    Zeroizing::new(token.reveal().to_owned())
}

/// An agent secret as printed once by `strongbox agents add`.
pub fn secret_text(secret: &AgentSecret) -> Zeroizing<String> {
    Zeroizing::new(secret.reveal().to_owned())
}

/// The agent registry and delegations.
pub struct Agents {
    db: Db,
    clock: Arc<dyn Clock>,
}

impl Agents {
    pub fn new(db: Db, clock: Arc<dyn Clock>) -> Agents {
        Agents { db, clock }
    }

    /// Registers `name`; returns the agent and its secret, which is not stored anywhere.
    pub async fn add(
        &self,
        name: &str,
        actor: Actor,
    ) -> Result<(AgentRow, AgentSecret), AgentError> {
        if !valid_name(name) {
            return Err(AgentError::BadName);
        }
        let row = AgentRow {
            id: uuid::Uuid::new_v4().simple().to_string(),
            name: name.to_owned(),
            created_at: self.clock.unix(),
        };
        let random = random_text(32)?;
        let secret = AgentSecret::new(format!("{AGENT_PREFIX}{}_{}", row.id, random.as_str()));
        let hash = sha256(&[secret.reveal().as_bytes()]);
        let mut tx = self.db.begin().await?;
        if !rows::insert_agent(&mut tx, &row, &hash).await? {
            return Err(AgentError::Exists(name.to_owned()));
        }
        let event = Event::new(Kind::AgentAdded, actor, format!("agent:{name}"))
            .detail(json!({ "agent": name, "id": row.id }));
        audit::append(&mut tx, self.clock.unix_ms(), event).await?;
        tx.commit().await?;
        Ok((row, secret))
    }

    pub async fn list(&self) -> Result<Vec<AgentRow>, AgentError> {
        Ok(rows::list_agents(self.db.pool()).await?)
    }

    pub async fn by_name(&self, name: &str) -> Result<Option<AgentRow>, AgentError> {
        Ok(rows::agent_by_name(self.db.pool(), name).await?)
    }

    /// Removes `name` and, with it, every delegation to it.
    pub async fn remove(&self, name: &str, actor: Actor) -> Result<(), AgentError> {
        let mut tx = self.db.begin().await?;
        if !rows::delete_agent(&mut tx, name).await? {
            return Err(AgentError::NoSuchAgent(name.to_owned()));
        }
        let event = Event::new(Kind::AgentRemoved, actor, format!("agent:{name}"))
            .detail(json!({ "agent": name }));
        audit::append(&mut tx, self.clock.unix_ms(), event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Checks an agent request in one database read: the bearer secret, the delegation
    /// token, and (for the route's provider) the delegating user's connection.
    pub async fn resolve(
        &self,
        bearer: &str,
        token: &str,
        provider: &str,
    ) -> Result<Resolution, AgentError> {
        let Some(id) = agent_id(bearer) else {
            return Ok(Resolution::Unauthenticated);
        };
        let hash = sha256(&[token.as_bytes()]);
        let Some(rows) = rows::request_rows(self.db.pool(), id, &hash, provider).await? else {
            return Ok(Resolution::Unauthenticated);
        };
        let presented = sha256(&[bearer.as_bytes()]);
        if !constant_time_eq(&presented, &rows.secret_hash) {
            return Ok(Resolution::Unauthenticated);
        }
        let well_formed = token.starts_with(DELEGATION_PREFIX) && token.len() <= 128;
        let checked = match rows.delegation {
            Some(d) if well_formed => self.check(&rows.agent, d),
            _ => Err(DelegationRefused::Invalid),
        };
        Ok(match checked {
            Ok(delegation) => Resolution::Accepted {
                agent: rows.agent,
                delegation,
                connection: rows.connection.map(Box::new),
            },
            Err(why) => Resolution::Refused(rows.agent, why),
        })
    }

    fn check(&self, agent: &AgentRow, row: DelegationRow) -> Result<Delegation, DelegationRefused> {
        if row.agent_id != agent.id {
            return Err(DelegationRefused::OtherAgent);
        }
        if self.clock.unix() >= row.expires_at {
            return Err(DelegationRefused::Expired);
        }
        let list = |s: &str| serde_json::from_str::<Vec<String>>(s).unwrap_or_default();
        Ok(Delegation {
            handle: row.handle,
            user_id: row.user_id,
            tools: list(&row.tools),
            providers: list(&row.providers),
            expires_at: row.expires_at,
        })
    }

    /// Issues a delegation inside the caller's transaction (with its audit event).
    /// `grant` must already be checked against the tool and provider catalogue.
    pub async fn delegate(
        &self,
        conn: &mut Conn,
        user_id: &str,
        agent: &AgentRow,
        grant: &Grant,
    ) -> Result<(DelegationToken, i64), AgentError> {
        let now = self.clock.unix();
        let random = random_text(32)?;
        let token = DelegationToken::new(format!("{DELEGATION_PREFIX}{}", random.as_str()));
        let hash = sha256(&[token.reveal().as_bytes()]);
        let row = DelegationRow {
            handle: uuid::Uuid::now_v7().to_string(),
            agent_id: agent.id.clone(),
            user_id: user_id.to_owned(),
            tools: serde_json::to_string(&grant.tools).unwrap_or_else(|_| "[]".into()),
            providers: serde_json::to_string(&grant.providers).unwrap_or_else(|_| "[]".into()),
            created_at: now,
            expires_at: now + grant.ttl,
        };
        rows::insert_delegation(conn, &hash, &row).await?;
        let event = Event::new(
            Kind::DelegationCreated,
            Actor::User(user_id.to_owned()),
            format!("user:{user_id}"),
        )
        .detail(json!({
            "delegation": row.handle, "agent": agent.name, "tools": grant.tools,
            "providers": grant.providers, "expires_at": row.expires_at,
        }));
        audit::append(conn, self.clock.unix_ms(), event).await?;
        Ok((token, row.expires_at))
    }

    /// Revokes every delegation a user issued, inside the caller's transaction.
    pub async fn revoke_all(&self, conn: &mut Conn, user_id: &str) -> Result<u64, AgentError> {
        Ok(rows::delete_delegations_of(conn, user_id).await?)
    }

    /// Removes expired delegations (housekeeping).
    pub async fn purge(&self) -> Result<u64, AgentError> {
        Ok(rows::purge_delegations(self.db.pool(), self.clock.unix()).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::valid_name;

    #[test]
    fn agent_names() {
        for good in ["chat-backend", "a", "agent_1.prod"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "a b", "ägent", "x/y", &"a".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
