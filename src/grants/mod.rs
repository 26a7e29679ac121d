//! Strongbox as an OAuth 2.1 authorization server for agents (SPEC §11): clients, the
//! authorization request and its consent, grants, codes, access and refresh tokens.
//!
//! A grant is what a user approved: one agent may run some tools and fetch some providers'
//! credentials for that user until the grant expires. Its access tokens are delegation rows
//! (`sbx_at_…`, found by digest, 15 minutes), so everything that checks a delegation —
//! policy, connection state, audit, revocation — applies to them unchanged. Deleting the
//! grant deletes its codes, refresh tokens and access tokens in the same statement.
//!
//! Who may call this: the HTTP layer (`http::oauth2`, `http::mcp`) and the CLI. No axum
//! types here; SQL is in `store::grants`. Every decision is audited in the transaction
//! that makes it, and no token leaves before its event is committed.

mod clients;
mod consent;
mod tokens;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::json;

pub use clients::{Client, ClientKind, Registered, RegistrationRequest, valid_redirect_uri};
pub use tokens::{ClientAuth, Issued, JWT_BEARER, TokenRequest, check_jwks};

use crate::agents::Agents;
use crate::audit::{self, Actor, Event, Kind};
use crate::clock::Clock;
use crate::crypto::CryptoError;
use crate::store::Db;
use crate::store::grants as rows;
use crate::tools::Tool;

/// Seconds an authorization code is valid.
pub const CODE_TTL: i64 = 60;
/// Seconds an access token is valid.
pub const ACCESS_TTL: i64 = 15 * 60;
/// Seconds a client ID metadata document is cached.
pub const METADATA_TTL: i64 = 60 * 60;

/// An authorization code as its client receives it (for tools outside the crate, such as
/// the benchmarks, that stand in for the redirect).
pub fn code_text(code: &crate::secret::AuthorizationCode) -> zeroize::Zeroizing<String> {
    zeroize::Zeroizing::new(code.reveal().to_owned())
}

/// An RFC 6749 / 7591 error, with the text a person reads. Never carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    InvalidClient(String),
    #[error("{0}")]
    InvalidGrant(String),
    #[error("{0}")]
    UnauthorizedClient(String),
    #[error("grant_type must be authorization_code or refresh_token")]
    UnsupportedGrantType,
    #[error("response_type must be code")]
    UnsupportedResponseType,
    #[error("{0}")]
    InvalidScope(String),
    #[error("{0}")]
    InvalidTarget(String),
    #[error("the user denied the request")]
    AccessDenied,
    #[error("{0}")]
    InvalidRedirectUri(String),
    #[error("{0}")]
    InvalidClientMetadata(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Agents(#[from] crate::agents::AgentError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
}

impl GrantError {
    /// Whether the request failed only because the database was out of reach (a `503`
    /// the client may retry as it is).
    pub fn database_unavailable(&self) -> bool {
        match self {
            GrantError::Database(e)
            | GrantError::Agents(crate::agents::AgentError::Database(e)) => {
                crate::store::is_unavailable(e)
            }
            _ => false,
        }
    }

    /// The `error` value of RFC 6749 §4.1.2.1 / §5.2 and RFC 7591 §3.2.2.
    pub const fn code(&self) -> &'static str {
        match self {
            GrantError::InvalidRequest(_) => "invalid_request",
            GrantError::InvalidClient(_) => "invalid_client",
            GrantError::InvalidGrant(_) => "invalid_grant",
            GrantError::UnauthorizedClient(_) => "unauthorized_client",
            GrantError::UnsupportedGrantType => "unsupported_grant_type",
            GrantError::UnsupportedResponseType => "unsupported_response_type",
            GrantError::InvalidScope(_) => "invalid_scope",
            GrantError::InvalidTarget(_) => "invalid_target",
            GrantError::AccessDenied => "access_denied",
            GrantError::InvalidRedirectUri(_) => "invalid_redirect_uri",
            GrantError::InvalidClientMetadata(_) => "invalid_client_metadata",
            GrantError::Database(_)
            | GrantError::Agents(_)
            | GrantError::Crypto(_)
            | GrantError::Policy(_) => "server_error",
        }
    }
}

/// What an access token may do: `tool:{name}` and `credential:{provider}` scopes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub tools: Vec<String>,
    pub providers: Vec<String>,
}

impl Scope {
    /// The scope as written in requests and responses.
    pub fn text(&self) -> String {
        let tools = self.tools.iter().map(|t| format!("tool:{t}"));
        let providers = self.providers.iter().map(|p| format!("credential:{p}"));
        tools.chain(providers).collect::<Vec<_>>().join(" ")
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty() && self.providers.is_empty()
    }

    /// Whether everything in `other` is in this scope.
    pub fn covers(&self, other: &Scope) -> bool {
        other.tools.iter().all(|t| self.tools.contains(t))
            && other.providers.iter().all(|p| self.providers.contains(p))
    }

    fn from_lists(tools: &str, providers: &str) -> Scope {
        let list = |s: &str| serde_json::from_str::<Vec<String>>(s).unwrap_or_default();
        Scope {
            tools: list(tools),
            providers: list(providers),
        }
    }
}

/// An agent's grant, as the user sees it.
#[derive(Debug, Clone)]
pub struct GrantView {
    pub id: String,
    pub agent: String,
    pub tools: Vec<String>,
    pub providers: Vec<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub last_used_at: Option<i64>,
}

/// One item of a consent page: a tool or a provider's credentials, and whether policy
/// lets the agent have it.
#[derive(Debug, Clone)]
pub struct Offer {
    /// `tool:{name}` or `credential:{provider}`.
    pub scope: String,
    /// The tool's or provider's name.
    pub name: String,
    pub provider: String,
    pub description: String,
    /// `None` if policy allows it; otherwise why it is not offered.
    pub refused: Option<String>,
}

/// A checked authorization request, waiting for the user's decision.
#[derive(Debug, Clone)]
pub struct Pending {
    pub client: Client,
    pub redirect_uri: String,
    pub state: Option<String>,
    pub scope: Scope,
    pub code_challenge: String,
    pub resource: Option<String>,
}

/// An authorization request as it arrives (`GET /oauth2/authorize`, or posted back from
/// the consent page).
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
pub struct AuthorizeRequest {
    pub response_type: Option<String>,
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub scope: Option<String>,
    pub state: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub resource: Option<String>,
}

/// Why an authorization request was not accepted.
#[derive(Debug)]
pub enum Refusal {
    /// The client or redirect URI cannot be trusted: an error page, never a redirect.
    Page(GrantError),
    /// Sent back to the client's redirect URI (this URL, with `error`, `state`, `iss`).
    Redirect(String),
}

/// Which protected resource a token is presented to (RFC 8707).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// `/v1/*`.
    Api,
    /// `/mcp`.
    Mcp,
}

/// The authorization server.
pub struct AuthServer {
    db: Db,
    clock: Arc<dyn Clock>,
    agents: Arc<Agents>,
    issuer: String,
    https: bool,
    grant_lifetime: i64,
    http: reqwest::Client,
    tools: Arc<BTreeMap<String, Tool>>,
    /// Configured providers, whose credentials may be asked for.
    providers: Vec<String>,
    /// When this process last noted each grant's use (so a busy grant's row is written
    /// at most once a minute); forgotten all at once when full.
    touched: std::sync::Mutex<std::collections::HashMap<String, i64>>,
    /// Client metadata documents being fetched at once, at most [`METADATA_FETCHES`].
    fetches: tokio::sync::Semaphore,
}

/// Client metadata documents fetched at once.
const METADATA_FETCHES: usize = 4;

/// Seconds between two notes of a grant's last use.
const TOUCH_STEP: i64 = 60;
/// Grants whose last note [`AuthServer`] remembers.
const TOUCHED_LIMIT: usize = 4096;

impl AuthServer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        db: Db,
        clock: Arc<dyn Clock>,
        agents: Arc<Agents>,
        config: &crate::config::Config,
        tools: Arc<BTreeMap<String, Tool>>,
        providers: Vec<String>,
    ) -> Result<AuthServer, reqwest::Error> {
        // Metadata documents: no redirects at all, public addresses only (loopback too in
        // development), the provider timeout.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(std::sync::Arc::new(crate::outbound::PublicOnly {
                allow_loopback: !config.https,
            }))
            .timeout(std::time::Duration::from_secs(
                config.provider_timeout.unsigned_abs(),
            ))
            .user_agent("strongbox")
            .build()?;
        Ok(AuthServer {
            db,
            clock,
            agents,
            issuer: config.public_url.clone(),
            https: config.https,
            grant_lifetime: config.grant_lifetime,
            http,
            tools,
            providers,
            touched: std::sync::Mutex::new(std::collections::HashMap::new()),
            fetches: tokio::sync::Semaphore::new(METADATA_FETCHES),
        })
    }

    /// The issuer identifier (`public_url`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// The resource identifier of `audience`.
    pub fn resource(&self, audience: Audience) -> String {
        match audience {
            Audience::Api => self.endpoint("/v1"),
            Audience::Mcp => self.endpoint("/mcp"),
        }
    }

    /// Whether a token issued for `resource` may be used at `audience`: one issued for no
    /// resource (or the issuer itself) anywhere, one for a resource only there.
    pub fn accepts(&self, resource: Option<&str>, audience: Audience) -> bool {
        match resource {
            None => true,
            Some(r) => r == self.issuer || r == self.resource(audience),
        }
    }

    fn known_resource(&self, r: &str) -> bool {
        r == self.issuer || r == self.resource(Audience::Api) || r == self.resource(Audience::Mcp)
    }

    /// Every scope a client may ask for (metadata `scopes_supported`).
    pub fn scopes_supported(&self) -> Vec<String> {
        let tools = self.offered_tools().map(|t| format!("tool:{t}"));
        let providers = self.providers.iter().map(|p| format!("credential:{p}"));
        tools.chain(providers).collect()
    }

    /// The tools whose provider is configured: the only ones a grant can name.
    fn offered_tools(&self) -> impl Iterator<Item = &String> {
        self.tools
            .iter()
            .filter(|(_, t)| self.providers.contains(&t.provider))
            .map(|(name, _)| name)
    }

    /// Parses a requested scope; no scope at all means every tool.
    pub fn parse_scope(&self, text: Option<&str>) -> Result<Scope, GrantError> {
        let mut scope = Scope::default();
        for item in text
            .unwrap_or_default()
            .split(' ')
            .filter(|s| !s.is_empty())
        {
            if let Some(t) = item.strip_prefix("tool:")
                && self
                    .tools
                    .get(t)
                    .is_some_and(|tool| self.providers.contains(&tool.provider))
            {
                if !scope.tools.iter().any(|x| x == t) {
                    scope.tools.push(t.to_owned());
                }
            } else if let Some(p) = item.strip_prefix("credential:")
                && self.providers.iter().any(|x| x == p)
            {
                if !scope.providers.iter().any(|x| x == p) {
                    scope.providers.push(p.to_owned());
                }
            } else {
                let shown: String = item.chars().take(80).collect();
                return Err(GrantError::InvalidScope(format!(
                    "unknown scope {shown:?}: scopes are tool:NAME and credential:PROVIDER"
                )));
            }
        }
        if scope.is_empty() {
            scope.tools = self.offered_tools().cloned().collect();
        }
        Ok(scope)
    }

    /// `redirect_uri` with `params`, `state` and `iss` (RFC 9207) added to its query.
    pub fn redirect(
        &self,
        redirect_uri: &str,
        state: Option<&str>,
        params: &[(&str, &str)],
    ) -> String {
        let Ok(mut url) = url::Url::parse(redirect_uri) else {
            return redirect_uri.to_owned();
        };
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in params {
                q.append_pair(k, v);
            }
            if let Some(s) = state {
                q.append_pair("state", s);
            }
            q.append_pair("iss", &self.issuer);
        }
        url.into()
    }

    /// Checks an authorization request. The client and redirect URI come first: until both
    /// are known good, nothing is sent to the redirect URI.
    pub async fn check(&self, req: &AuthorizeRequest) -> Result<Pending, Refusal> {
        let client_id = req.client_id.as_deref().unwrap_or_default();
        let client = self.client(client_id).await.map_err(Refusal::Page)?;
        let redirect_uri = req.redirect_uri.clone().unwrap_or_default();
        if !client.redirect_uris.contains(&redirect_uri) {
            return Err(Refusal::Page(GrantError::InvalidRequest(
                "the redirect_uri is not registered for this client".into(),
            )));
        }
        let state = req.state.clone();
        let back = |e: GrantError| {
            Refusal::Redirect(self.redirect(
                &redirect_uri,
                state.as_deref(),
                &[("error", e.code()), ("error_description", &e.to_string())],
            ))
        };
        if req.response_type.as_deref() != Some("code") {
            return Err(back(GrantError::UnsupportedResponseType));
        }
        let challenge = req.code_challenge.clone().unwrap_or_default();
        if req.code_challenge_method.as_deref() != Some("S256")
            || !tokens::valid_challenge(&challenge)
        {
            return Err(back(GrantError::InvalidRequest(
                "PKCE is required: code_challenge (43 characters) with code_challenge_method=S256"
                    .into(),
            )));
        }
        let scope = self.parse_scope(req.scope.as_deref()).map_err(back)?;
        if let Some(r) = &req.resource
            && !self.known_resource(r)
        {
            return Err(back(GrantError::InvalidTarget(
                "resource is not a resource of this server".into(),
            )));
        }
        Ok(Pending {
            client,
            redirect_uri,
            state,
            scope,
            code_challenge: challenge,
            resource: req.resource.clone(),
        })
    }

    /// A user's grants, newest first.
    pub async fn list(&self, user_id: &str) -> Result<Vec<GrantView>, GrantError> {
        Ok(rows::grants_of(self.db.pool(), user_id)
            .await?
            .into_iter()
            .map(|(g, agent)| {
                let scope = Scope::from_lists(&g.tools, &g.providers);
                GrantView {
                    id: g.id,
                    agent,
                    tools: scope.tools,
                    providers: scope.providers,
                    created_at: g.created_at,
                    expires_at: g.expires_at,
                    last_used_at: g.last_used_at,
                }
            })
            .collect())
    }

    /// Revokes one of the user's grants, ending its tokens at once; `false` if the user
    /// has no such grant.
    pub async fn revoke(
        &self,
        user_id: &str,
        grant_id: &str,
        actor: Actor,
        request_id: &str,
    ) -> Result<bool, GrantError> {
        let mut tx = self.db.begin().await?;
        let Some(grant) = rows::grant_by_id(&mut tx, grant_id).await? else {
            return Ok(false);
        };
        if grant.user_id != user_id {
            return Ok(false);
        }
        rows::delete_grant(&mut tx, grant_id).await?;
        let event = Event::new(Kind::GrantRevoked, actor, format!("user:{user_id}"))
            .request_id(request_id.to_owned())
            .detail(json!({ "grant": grant_id, "reason": "revoked" }));
        audit::append(&mut tx, self.clock.unix_ms(), event).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Revokes every grant of a user inside the caller's transaction (sign out
    /// everywhere, an admin revoking the user); returns their ids.
    pub async fn revoke_all(
        &self,
        conn: &mut crate::store::Conn,
        user_id: &str,
    ) -> Result<Vec<String>, GrantError> {
        Ok(rows::delete_grants_of(conn, user_id).await?)
    }

    /// Whether a grant's use is due to be noted (at most once a minute per grant, by this
    /// process); marks it noted.
    pub fn touch_due(&self, grant_id: &str) -> bool {
        let now = self.clock.unix();
        let Ok(mut touched) = self.touched.lock() else {
            return true;
        };
        let due = touched.get(grant_id).is_none_or(|t| now - t >= TOUCH_STEP);
        if due {
            if touched.len() >= TOUCHED_LIMIT {
                touched.clear();
            }
            touched.insert(grant_id.to_owned(), now);
        }
        due
    }

    /// Notes that a grant's token was used (see [`AuthServer::touch_due`]).
    pub async fn touch(&self, grant_id: &str) -> Result<(), GrantError> {
        Ok(rows::touch_grant(self.db.pool(), grant_id, self.clock.unix(), TOUCH_STEP).await?)
    }

    /// Removes expired grants, codes and assertion ids (housekeeping).
    pub async fn purge(&self) -> Result<u64, GrantError> {
        Ok(rows::purge(self.db.pool(), self.clock.unix()).await?)
    }
}
