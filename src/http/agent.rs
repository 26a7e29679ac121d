//! Routes for agent services (`/v1/*`, bearer agent secret + `Strongbox-Delegation`) and
//! the browser route that issues delegations (`POST /api/delegations`).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use super::AppState;
use super::bodies::{Credential, Delegation, ToolItem, ToolList, ToolRun, secret_json};
use super::browser::{SignedIn, require_csrf};
use crate::agents::{DEFAULT_TTL, DelegationRefused, Grant, MAX_TTL, Resolution};
use crate::clock::rfc3339;
use crate::error::Error;
use crate::executor::Caller;
use crate::grants::Audience;
use crate::secret::{AgentSecret, DelegationToken};
use crate::tools::ArgError;
use crate::vault::SealedCredential;

/// The delegation header.
pub const DELEGATION_HEADER: &str = "strongbox-delegation";

/// The credentials an agent request carries, not yet checked (held as secret types: no
/// `Debug`, zeroized on drop).
pub struct AgentRequest {
    bearer: Option<AgentSecret>,
    delegation: Option<DelegationToken>,
    request_id: String,
    /// The client address, for the limit on failed authentications.
    client: std::net::IpAddr,
    /// The resource the request is made to, which an access token must be for.
    audience: Audience,
}

impl FromRequestParts<AppState> for AgentRequest {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Error> {
        Ok(AgentRequest::of(parts, app, Audience::Api))
    }
}

impl AgentRequest {
    /// The credentials `parts` carries, for a request to `audience`.
    pub fn of(parts: &Parts, app: &AppState, audience: Audience) -> AgentRequest {
        let text = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_owned())
        };
        AgentRequest {
            // The scheme name is case-insensitive (RFC 9110 §11.1).
            bearer: text(header::AUTHORIZATION.as_str()).and_then(|v| {
                let (scheme, secret) = v.split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| AgentSecret::new(secret.trim().to_owned()))
            }),
            // An empty header is no delegation: the request is then judged as carrying an
            // access token alone, as `Agents::resolve` judges it.
            delegation: text(DELEGATION_HEADER)
                .filter(|v| !v.is_empty())
                .map(DelegationToken::new),
            // The id the response carries (`x-request-id`), so the audit trail and the
            // caller name the request alike.
            request_id: super::observe::request_id_of(&parts.extensions),
            client: super::guard::client_address_of(app, parts),
            audience,
        }
    }

    /// Whether the request carries an access token alone (rather than an agent secret and
    /// a delegation).
    fn access_token(&self) -> bool {
        self.delegation.is_none()
            && self
                .bearer
                .as_ref()
                .is_some_and(|b| crate::agents::is_access_token(b.reveal()))
    }
}

/// How [`AgentRequest::check`] reads the request's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Read {
    /// Rows read for an earlier request may stand in (see `Agents::resolve`): only for a
    /// use recorded with its basis.
    Reuse,
    /// Read for this request.
    Fresh,
    /// Read again for a request already counted against the agent's rate limit.
    Again,
}

impl AgentRequest {
    /// Checks, in this order: the client address's budget of failed authentications
    /// (429, before anything costs a read; only requests with no or an unknown agent
    /// secret spend it), the agent secret (401), the delegation
    /// (401/403), the (agent, user) and per-agent rate limits (429). One database read
    /// also returns the delegating user's connection to `provider`.
    pub(super) async fn check(
        &self,
        app: &AppState,
        provider: &str,
        read: Read,
    ) -> Result<(Caller, Option<SealedCredential>), Error> {
        let limits = &app.limits;
        if read != Read::Again {
            limits
                .before_authentication(
                    self.client,
                    self.bearer
                        .as_ref()
                        .and_then(|b| crate::agents::agent_id(b.reveal())),
                )
                .map_err(|w| Error::RateLimited(w.0))?;
        }
        let Some(bearer) = self.bearer.as_ref() else {
            limits.authentication_failed(self.client);
            return Err(Error::AgentUnauthorized);
        };
        let token = self.delegation.as_ref().map_or("", DelegationToken::reveal);
        let resolution = app
            .agents
            .resolve(bearer.reveal(), token, provider, read == Read::Reuse)
            .await?;
        if let Resolution::Refused(agent, _) | Resolution::Accepted { agent, .. } = &resolution {
            limits.agent_authenticated(&agent.id);
        }
        if read != Read::Again {
            match &resolution {
                Resolution::Unauthenticated => limits.authentication_failed(self.client),
                // The agent authenticated: a refused delegation is its own business and
                // must not block its address for the users whose delegations are fine.
                Resolution::Refused(agent, _) => limits
                    .agent_ceiling(&agent.name)
                    .map_err(|w| Error::RateLimited(w.0))?,
                Resolution::Accepted {
                    agent, delegation, ..
                } => limits
                    .agent(&agent.name, &delegation.user_id)
                    .map_err(|w| Error::RateLimited(w.0))?,
            }
        }
        // Whatever the request looked like, a delegation issued under a grant is an access
        // token, bound to its resource.
        let granted = matches!(&resolution, Resolution::Accepted { delegation, .. }
            if delegation.grant_id.is_some());
        if self.access_token() || granted {
            return self.accept_access_token(app, resolution);
        }
        match resolution {
            Resolution::Unauthenticated => Err(Error::AgentUnauthorized),
            Resolution::Refused(_, DelegationRefused::Invalid) => Err(Error::DelegationInvalid),
            Resolution::Refused(_, DelegationRefused::OtherAgent) => Err(Error::DelegationForeign),
            Resolution::Refused(_, DelegationRefused::Expired) => Err(Error::DelegationExpired),
            Resolution::Accepted {
                agent,
                delegation,
                connection,
                grounds,
            } => Ok(self.caller(agent, delegation, connection, grounds)),
        }
    }

    /// The checked caller, and the connection read with the request.
    fn caller(
        &self,
        agent: crate::agents::AgentRow,
        delegation: crate::agents::Delegation,
        connection: Option<Box<crate::agents::ConnectionRow>>,
        grounds: crate::agents::Grounds,
    ) -> (Caller, Option<SealedCredential>) {
        (
            Caller {
                agent: agent.name,
                delegation,
                request_id: self.request_id.clone(),
                grounds,
            },
            connection.map(|row| SealedCredential::from_row(*row)),
        )
    }
}

impl AgentRequest {
    /// The outcome for an access token: any refusal is `invalid_token`, and an accepted
    /// token must be for this resource (RFC 8707). Its grant's last use is noted.
    fn accept_access_token(
        &self,
        app: &AppState,
        resolution: Resolution,
    ) -> Result<(Caller, Option<SealedCredential>), Error> {
        let Resolution::Accepted {
            agent,
            delegation,
            connection,
            grounds,
        } = resolution
        else {
            return Err(match resolution {
                Resolution::Refused(_, DelegationRefused::Expired) => {
                    Error::InvalidToken("has expired")
                }
                _ => Error::InvalidToken("is unknown or revoked"),
            });
        };
        if !app
            .grants
            .accepts(delegation.resource.as_deref(), self.audience)
        {
            return Err(Error::InvalidToken("was issued for another resource"));
        }
        if let Some(grant) = delegation.grant_id.clone()
            && app.grants.touch_due(&grant)
        {
            let grants = std::sync::Arc::clone(&app.grants);
            tokio::spawn(async move {
                if let Err(e) = grants.touch(&grant).await {
                    tracing::warn!(error = %e, "could not note a grant's use");
                }
            });
        }
        Ok(self.caller(agent, delegation, connection, grounds))
    }
}

/// Parses a JSON body (an empty body is `{}`), as a 400 `invalid_request` when it is not.
fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Error> {
    let bytes: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    // The message names the place, never the content (it could be anything the caller sent).
    serde_json::from_slice(bytes).map_err(|e| {
        Error::BadRequest(format!(
            "the JSON body is not the expected shape ({:?} error at line {}, column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    })
}

/// The tool's arguments.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunBody {
    /// argument name to a string, number or boolean
    #[serde(default)]
    #[schema(value_type = Object)]
    args: serde_json::Map<String, Value>,
}

/// `POST /v1/tools/{tool}/run` — runs a tool in the delegating user's context.
#[utoipa::path(
    post,
    path = "/v1/tools/{tool}/run",
    operation_id = "run_tool",
    summary = "Run a tool in the delegating user's context",
    params(("tool" = String, Path)),
    request_body(content = RunBody, content_type = "application/json"),
    security(("agent" = [], "delegation" = []), ("access_token" = [])),
    responses(
        (status = 200, description = "The provider's answer", body = ToolRun),
        (status = 400, description = "code: invalid_request", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "code: unauthorized, delegation_invalid, delegation_expired, invalid_token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "code: delegation_invalid, tool_not_delegated, policy_denied", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "code: unknown_tool", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "code: not_connected, insufficient_scope, reauth_required", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "code: invalid_argument", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "code: rate_limited", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 502, description = "code: provider_error", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "code: provider_unavailable, credential_changed, database_unavailable", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn run_tool(
    State(app): State<AppState>,
    request: AgentRequest,
    Path(tool): Path<String>,
    body: Bytes,
) -> Result<Json<ToolRun>, Error> {
    let found = app.tools.get(&tool);
    let provider = found.map_or("", |t| t.provider.as_str());
    let (caller, connection) = request.check(&app, provider, Read::Fresh).await?;
    found.ok_or_else(|| Error::UnknownTool(tool.clone()))?;
    let body: RunBody = json_body(&body)?;
    let out = run_with(&app, &request, caller, connection, &tool, &body.args).await?;
    Ok(Json(out.into()))
}

/// Runs `tool` for a caller already checked (`/mcp`); its connection is read here.
pub(super) async fn run(
    app: &AppState,
    request: &AgentRequest,
    caller: Caller,
    tool: &str,
    args: &serde_json::Map<String, Value>,
) -> Result<crate::executor::ToolOutput, Error> {
    run_with(app, request, caller, None, tool, args).await
}

async fn run_with(
    app: &AppState,
    request: &AgentRequest,
    mut caller: Caller,
    mut connection: Option<SealedCredential>,
    tool: &str,
    args: &serde_json::Map<String, Value>,
) -> Result<crate::executor::ToolOutput, Error> {
    let tool = app
        .tools
        .get(tool)
        .ok_or_else(|| Error::UnknownTool(tool.to_owned()))?;
    if !caller.delegation.tools.iter().any(|t| t == &tool.name) {
        return Err(Error::ToolNotDelegated(tool.name.clone()));
    }
    let url = tool.request_url(args)?;
    // The start is recorded only if the rows the run was decided on still hold; if they
    // changed in between, it is decided again from a fresh read (the provider not called).
    let mut again = 0;
    loop {
        match app
            .broker
            .run(&caller, &app.policies, tool, url.clone(), connection)
            .await
        {
            Err(Error::Stale) if again < STALE_RETRIES => {
                again += 1;
                (caller, connection) = request.check(app, &tool.provider, Read::Again).await?;
            }
            other => return other,
        }
    }
}

/// `GET /v1/tools` — the tools the caller's delegation covers, with what each does and
/// the JSON Schema of its arguments.
#[utoipa::path(
    get,
    path = "/v1/tools",
    operation_id = "list_tools",
    summary = "The tools the caller's delegation or access token covers, with descriptions and argument schemas",
    security(("agent" = [], "delegation" = []), ("access_token" = [])),
    responses(
        (status = 200, description = "The tools", body = ToolList),
        (status = 401, description = "code: unauthorized, delegation_invalid, delegation_expired, invalid_token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "code: delegation_invalid", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "code: rate_limited", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "code: database_unavailable", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_tools(
    State(app): State<AppState>,
    request: AgentRequest,
) -> Result<Json<ToolList>, Error> {
    // No provider is asked about, so no connection is read.
    let (caller, _) = request.check(&app, "", Read::Fresh).await?;
    let tools = caller
        .delegation
        .tools
        .iter()
        .filter_map(|name| app.tools.get(name))
        .map(|t| ToolItem {
            name: t.name.clone(),
            description: t.description.clone(),
            input_schema: t.input_schema(),
            provider: t.provider.clone(),
            scopes: t.scopes.clone(),
        })
        .collect();
    Ok(Json(ToolList { tools }))
}

/// The scopes the token must hold; without them, those the connection was granted.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseBody {
    scopes: Option<Vec<String>>,
}

/// Fresh decisions a release or tool run makes when the rows it was decided on keep
/// changing under it.
const STALE_RETRIES: usize = 2;

/// `POST /v1/credentials/{provider}` — raw release, where policy allows.
#[utoipa::path(
    post,
    path = "/v1/credentials/{provider}",
    operation_id = "release",
    summary = "Raw release of the access token where policy allows; refreshed first if near expiry",
    params(("provider" = String, Path)),
    request_body(content = ReleaseBody, content_type = "application/json"),
    security(("agent" = [], "delegation" = []), ("access_token" = [])),
    responses(
        (status = 200, description = "Credential", body = Credential),
        (status = 400, description = "code: invalid_request", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "code: unauthorized, delegation_invalid, delegation_expired, invalid_token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "code: delegation_invalid, provider_not_delegated, policy_denied", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "code: not_connected, insufficient_scope, reauth_required", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "code: rate_limited", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 502, description = "code: provider_error", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "code: provider_unavailable, credential_changed, database_unavailable", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn release(
    State(app): State<AppState>,
    request: AgentRequest,
    Path(provider): Path<String>,
    body: Bytes,
) -> Result<Response, Error> {
    // From rows read for an earlier release if there are some; if they have changed by
    // the time the release is recorded, decided again from a fresh read.
    let (mut caller, mut connection) = request.check(&app, &provider, Read::Reuse).await?;
    let body: ReleaseBody = json_body(&body)?;
    let mut again = 0;
    let released = loop {
        match app
            .broker
            .release(
                &caller,
                &app.policies,
                &provider,
                body.scopes.clone(),
                connection,
            )
            .await
        {
            Err(Error::Stale) if again < STALE_RETRIES => {
                again += 1;
                (caller, connection) = request.check(&app, &provider, Read::Again).await?;
            }
            other => break other?,
        }
    };
    let mut resp = (StatusCode::OK, released.0.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// The agent, what it may use (at least one tool or provider), and for how many seconds
/// (default 900).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DelegateBody {
    agent: String,
    #[serde(default)]
    tools: Vec<String>,
    #[serde(default)]
    providers: Vec<String>,
    #[schema(minimum = 1, maximum = 3600)]
    ttl: Option<i64>,
}

fn bad_arg(name: &str, reason: &'static str) -> Error {
    Error::InvalidArgument(ArgError {
        name: name.to_owned(),
        reason,
    })
}

/// `POST /api/delegations` — the signed-in user lets an agent act for them.
#[utoipa::path(
    post,
    path = "/api/delegations",
    operation_id = "delegate",
    summary = "Let an agent act for the signed-in user: tools, providers, ttl seconds (default 900, at most 3600)",
    request_body(content = DelegateBody, content_type = "application/json"),
    security(("session" = [], "csrf" = [])),
    responses(
        (status = 201, description = "Delegation", body = Delegation),
        (status = 400, description = "code: invalid_request", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "code: unauthorized", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "code: csrf_failed", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "code: invalid_argument", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delegate(
    State(app): State<AppState>,
    me: SignedIn,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    require_csrf(&app, &headers, &me.token, None)?;
    let body: DelegateBody = json_body(&body)?;
    let agent = app
        .agents
        .by_name(&body.agent)
        .await?
        .ok_or_else(|| bad_arg("agent", "is not a registered agent"))?;
    if body.tools.is_empty() && body.providers.is_empty() {
        return Err(bad_arg("tools", "name at least one tool or provider"));
    }
    for t in &body.tools {
        if !app.tools.contains_key(t) {
            return Err(Error::InvalidArgument(ArgError {
                name: format!("tools: {t}"),
                reason: "is not a known tool",
            }));
        }
    }
    for p in &body.providers {
        if !app.oauth.is_configured(p) {
            return Err(Error::InvalidArgument(ArgError {
                name: format!("providers: {p}"),
                reason: "is not a configured provider",
            }));
        }
    }
    let ttl = body.ttl.unwrap_or(DEFAULT_TTL);
    if !(1..=MAX_TTL).contains(&ttl) {
        return Err(bad_arg("ttl", "must be between 1 and 3600 seconds"));
    }
    let grant = Grant {
        agent: agent.name.clone(),
        tools: body.tools,
        providers: body.providers,
        ttl,
    };
    let mut tx = app.db.begin().await?;
    let (token, expires_at) = app
        .agents
        .delegate(&mut tx, &me.user_id, &agent, &grant)
        .await?;
    tx.commit().await?;
    let body = Delegation {
        token: token.reveal(),
        expires_at: rfc3339(expires_at),
    };
    Ok(secret_json(StatusCode::CREATED, &body))
}
