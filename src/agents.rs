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
//! signing key to manage; the cost is one indexed read per agent request, shared by the
//! requests waiting at the same moment (see `Lookups`).
//!
//! A credential release may instead start from the rows an earlier release of the same
//! agent, delegation and provider read (`Agents::resolve` with `reuse`), because it is
//! recorded only if those rows still hold when its audit event is written, in the same
//! statement or transaction (`journal`, `store::agents::Basis`); if they do not, it is
//! decided again from a fresh read. Either way a revocation committed before the release
//! is written is seen, and nothing leaves without its event.

mod lookups;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::json;
use zeroize::Zeroizing;

use crate::audit::{self, Actor, Event, Kind};
use crate::clock::Clock;
use crate::crypto::{CryptoError, constant_time_eq, random_text, sha256};
use crate::secret::{AgentSecret, DelegationToken};
pub use crate::store::agents::AgentRow;
use crate::store::agents::{self as rows, Basis, DelegationRow, RequestKey, RequestRows};
pub use crate::store::connection::ConnectionRow;
use crate::store::{Conn, Db};
use lookups::Lookups;

/// Default and longest delegation lifetimes, in seconds.
pub const DEFAULT_TTL: i64 = 15 * 60;
pub const MAX_TTL: i64 = 60 * 60;

const AGENT_PREFIX: &str = "sbx_agent_";
const DELEGATION_PREFIX: &str = "sbx_dlg_";
/// OAuth access tokens (SPEC §11): `sbx_at_<agent id>_<random>`, so that, like an agent
/// secret, the token names the row it is checked against.
pub const ACCESS_PREFIX: &str = "sbx_at_";

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
    #[error("agent request lookup: {reason}")]
    Lookup {
        reason: String,
        /// The database was out of reach (see `store::is_unavailable`): the same request
        /// can succeed once it is back.
        unavailable: bool,
    },
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
    /// The grant an access token was issued under.
    pub grant_id: Option<String>,
    /// The resource an access token is for (RFC 8707), if it was issued for one.
    pub resource: Option<String>,
}

/// The outcome of checking an agent request's credentials (see [`Agents::resolve`]).
// `Accepted` is the common case: boxing it would allocate on every agent request.
#[allow(clippy::large_enum_variant)]
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
        connection: Option<Box<ConnectionRow>>,
        grounds: Grounds,
    },
}

/// The agent and delegation rows an accepted request was checked against, to be made a
/// [`Basis`] with the connection it uses.
#[derive(Clone)]
pub struct Grounds {
    agent_id: String,
    secret_hash: Vec<u8>,
    token_hash: Vec<u8>,
    /// Read earlier, for another request, rather than for this one.
    pub reused: bool,
}

/// Digests only, and nothing to learn from printing them.
impl std::fmt::Debug for Grounds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grounds")
            .field("agent_id", &self.agent_id)
            .field("reused", &self.reused)
            .finish_non_exhaustive()
    }
}

impl Grounds {
    /// The basis of a use of `connection` on these grounds.
    pub fn basis(&self, connection: &crate::vault::SealedCredential) -> Basis {
        Basis {
            agent_id: self.agent_id.clone(),
            secret_hash: self.secret_hash.clone(),
            token_hash: self.token_hash.clone(),
            connection_id: connection.id().to_owned(),
            generation: connection.generation(),
            kek_version: connection.kek_version(),
            // A use is recorded only on an active connection, whatever the row it was
            // decided on said: a disconnect pending revocation never releases.
            status: "active".to_owned(),
        }
    }
}

/// Rows of accepted requests kept for reuse (see the module comment); cleared when full.
/// Invariant: a release decided on kept rows is recorded only if, when its audit event is
/// written, every row it was decided on still holds (its [`Basis`]); otherwise it is decided
/// again from a fresh read. The reuse is worth it: `cargo bench --bench release`, closed
/// loop, 2026-12-07: SQLite 13,051 req/s with it and 7,914 without; PostgreSQL 18,154 and
/// 11,642.
const REUSE_LIMIT: usize = 4096;
/// Rows older than this (milliseconds) are read again rather than reused.
const REUSE_MS: i64 = 30_000;

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

/// The agent id inside a well-formed agent secret or access token.
pub fn agent_id(bearer: &str) -> Option<&str> {
    let (id, _) = bearer
        .strip_prefix(AGENT_PREFIX)
        .or_else(|| bearer.strip_prefix(ACCESS_PREFIX))
        .and_then(|rest| rest.split_once('_'))?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// Whether `bearer` has the form of an access token (rather than an agent secret).
pub fn is_access_token(bearer: &str) -> bool {
    bearer.starts_with(ACCESS_PREFIX)
}

/// What a new agent is registered with, besides its name.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    /// Exact redirect URIs for the authorization code flow.
    pub redirect_uris: Vec<String>,
    /// A JSON Web Key Set: the agent authenticates with `private_key_jwt` and has no secret.
    pub jwks: Option<String>,
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
    /// Started on first use (commands that never check a request start none).
    lookups: OnceLock<Lookups>,
    /// Rows of accepted requests with a connection, and when they were read.
    reusable: Mutex<HashMap<RequestKey, (i64, RequestRows)>>,
    /// Requests accepted on kept rows, since start.
    reuses: std::sync::atomic::AtomicU64,
}

impl Agents {
    pub fn new(db: Db, clock: Arc<dyn Clock>) -> Agents {
        Agents {
            db,
            clock,
            lookups: OnceLock::new(),
            reusable: Mutex::new(HashMap::new()),
            reuses: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Registers `name`; returns the agent and its secret, which is not stored anywhere
    /// (`None` for an agent that authenticates with `private_key_jwt`).
    pub async fn add(
        &self,
        name: &str,
        registration: &Registration,
        actor: Actor,
    ) -> Result<(AgentRow, Option<AgentSecret>), AgentError> {
        if !valid_name(name) {
            return Err(AgentError::BadName);
        }
        let row = AgentRow {
            id: uuid::Uuid::new_v4().simple().to_string(),
            name: name.to_owned(),
            created_at: self.clock.unix(),
        };
        let secret = match registration.jwks {
            Some(_) => None,
            None => {
                let random = random_text(32)?;
                Some(AgentSecret::new(format!(
                    "{AGENT_PREFIX}{}_{}",
                    row.id,
                    random.as_str()
                )))
            }
        };
        let client = crate::store::grants::ClientRow {
            id: row.id.clone(),
            name: row.name.clone(),
            kind: "registered".into(),
            // No digest at all when no secret authenticates the agent.
            secret_hash: secret
                .as_ref()
                .map(|s| sha256(&[s.reveal().as_bytes()]).to_vec())
                .unwrap_or_default(),
            redirect_uris: serde_json::to_string(&registration.redirect_uris)
                .unwrap_or_else(|_| "[]".into()),
            jwks: registration.jwks.clone(),
            display_name: None,
            fetched_at: None,
            created_at: row.created_at,
        };
        let mut tx = self.db.begin().await?;
        if !crate::store::grants::insert_client(&mut tx, &client).await? {
            return Err(AgentError::Exists(name.to_owned()));
        }
        let event = Event::new(Kind::AgentAdded, actor, format!("agent:{name}")).detail(json!({
            "agent": name, "id": row.id, "redirect_uris": registration.redirect_uris,
            "authentication": if registration.jwks.is_some() { "private_key_jwt" } else { "secret" },
        }));
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
        // Its grants go with it (they cascade): the event names them.
        let grants = crate::store::grants::grant_ids_of_agent(&mut tx, name).await?;
        if !rows::delete_agent(&mut tx, name).await? {
            return Err(AgentError::NoSuchAgent(name.to_owned()));
        }
        let event = Event::new(Kind::AgentRemoved, actor, format!("agent:{name}"))
            .detail(json!({ "agent": name, "grants_ended": grants }));
        audit::append(&mut tx, self.clock.unix_ms(), event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Checks an agent request with one database read (shared with the requests waiting
    /// beside it): the bearer secret, the delegation token, and (for the route's provider)
    /// the delegating user's connection. With `reuse`, rows an earlier accepted request
    /// read for the same key are used instead when there are some (the caller must then
    /// record with a [`Basis`] and decide again from a fresh read if it does not hold).
    pub async fn resolve(
        &self,
        bearer: &str,
        token: &str,
        provider: &str,
        reuse: bool,
    ) -> Result<Resolution, AgentError> {
        let Some(id) = agent_id(bearer) else {
            return Ok(Resolution::Unauthenticated);
        };
        // An access token stands alone: it is both the credential and the delegation.
        let access = is_access_token(bearer) && token.is_empty();
        let token = if access { bearer } else { token };
        let hash = sha256(&[token.as_bytes()]);
        // Requests are read together, so no request may carry a value that fails the
        // statement for all of them: text with NUL cannot be bound on PostgreSQL, and no
        // configured provider has one, so such a route matches no connection.
        let provider = if provider.contains('\0') {
            ""
        } else {
            provider
        };
        let key = (id.to_owned(), hash.to_vec(), provider.to_owned());
        let now_ms = self.clock.unix_ms();
        if reuse {
            let kept = self.reusable.lock().ok().and_then(|kept| {
                kept.get(&key)
                    .filter(|(at, _)| now_ms - *at < REUSE_MS)
                    .map(|(_, rows)| rows.clone())
            });
            if let Some(rows) = kept {
                let resolution = self.decide(bearer, token, &hash, rows, true, access);
                // Only an acceptance is taken from kept rows; anything else is read again.
                if matches!(resolution, Resolution::Accepted { .. }) {
                    self.reuses
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Ok(resolution);
                }
            }
        }
        let lookups = self.lookups.get_or_init(|| Lookups::start(&self.db));
        let Some(rows) = lookups.get(key.clone()).await? else {
            self.forget(&key);
            return Ok(Resolution::Unauthenticated);
        };
        let resolution = self.decide(bearer, token, &hash, rows.clone(), false, access);
        match &resolution {
            Resolution::Accepted {
                connection: Some(c),
                ..
            } if c.status == "active" => {
                if let Ok(mut kept) = self.reusable.lock() {
                    if kept.len() >= REUSE_LIMIT {
                        kept.clear();
                    }
                    kept.insert(key, (now_ms, rows));
                }
            }
            _ => self.forget(&key),
        }
        Ok(resolution)
    }

    /// How many requests were accepted on kept rows since start.
    pub fn reuses(&self) -> u64 {
        self.reuses.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn forget(&self, key: &RequestKey) {
        if let Ok(mut kept) = self.reusable.lock() {
            kept.remove(key);
        }
    }

    /// Checks a request's secret and delegation against its rows. An access token
    /// (`access`) was found by its digest, so it authenticates itself: it only has to
    /// belong to the agent it names.
    fn decide(
        &self,
        bearer: &str,
        token: &str,
        token_hash: &[u8],
        rows: RequestRows,
        reused: bool,
        access: bool,
    ) -> Resolution {
        if access {
            let issued = rows
                .delegation
                .as_ref()
                .is_some_and(|d| d.agent_id == rows.agent.id && d.grant_id.is_some());
            if !issued || token.len() > 128 {
                return Resolution::Unauthenticated;
            }
        } else {
            let presented = sha256(&[bearer.as_bytes()]);
            if !constant_time_eq(&presented, &rows.secret_hash) {
                return Resolution::Unauthenticated;
            }
        }
        let prefix = if access {
            ACCESS_PREFIX
        } else {
            DELEGATION_PREFIX
        };
        let well_formed = token.starts_with(prefix) && token.len() <= 128;
        let checked = match rows.delegation {
            // A delegation is presented with the agent's secret, an access token alone.
            Some(d) if well_formed && d.grant_id.is_some() == access => self.check(&rows.agent, d),
            _ => Err(DelegationRefused::Invalid),
        };
        match checked {
            Ok(delegation) => Resolution::Accepted {
                grounds: Grounds {
                    agent_id: rows.agent.id.clone(),
                    secret_hash: rows.secret_hash,
                    token_hash: token_hash.to_vec(),
                    reused,
                },
                agent: rows.agent,
                delegation,
                connection: rows.connection.map(Box::new),
            },
            Err(why) => Resolution::Refused(rows.agent, why),
        }
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
            grant_id: row.grant_id,
            resource: row.resource,
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
            grant_id: None,
            resource: None,
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

    /// Issues an access token under `grant_id` inside the caller's transaction (the
    /// caller records the issue): a delegation row found by the token's digest.
    #[allow(clippy::too_many_arguments)]
    pub async fn issue_access(
        &self,
        conn: &mut Conn,
        agent_id: &str,
        user_id: &str,
        tools: &[String],
        providers: &[String],
        expires_at: i64,
        grant_id: &str,
        resource: Option<&str>,
    ) -> Result<(crate::secret::GrantAccessToken, String), AgentError> {
        let random = random_text(32)?;
        let token = crate::secret::GrantAccessToken::new(format!(
            "{ACCESS_PREFIX}{agent_id}_{}",
            random.as_str()
        ));
        let row = DelegationRow {
            handle: uuid::Uuid::now_v7().to_string(),
            agent_id: agent_id.to_owned(),
            user_id: user_id.to_owned(),
            tools: serde_json::to_string(tools).unwrap_or_else(|_| "[]".into()),
            providers: serde_json::to_string(providers).unwrap_or_else(|_| "[]".into()),
            created_at: self.clock.unix(),
            expires_at,
            grant_id: Some(grant_id.to_owned()),
            resource: resource.map(str::to_owned),
        };
        rows::insert_delegation(conn, &sha256(&[token.reveal().as_bytes()]), &row).await?;
        Ok((token, row.handle))
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
mod tests;
