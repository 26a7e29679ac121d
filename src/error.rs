//! The service's error type and its one mapping to HTTP problem details (RFC 9457).
//!
//! Each variant has a status and a stable machine-readable `code`. A 5xx logs its cause
//! and tells the client only that something failed; a 4xx `detail` is written for people.
//! No message here ever carries a token, a code or a secret: the vault's and the store's
//! errors are built from ids and versions only.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::grants::GrantError;
use crate::oauth::OAuthError;
use crate::vault::VaultError;

/// Errors an HTTP handler can return.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("not ready: {0}")]
    NotReady(String),
    #[error("not found")]
    NotFound,
    #[error("the request took too long and was abandoned; retry later")]
    RequestTimeout,
    #[error("sign in first")]
    Unauthorized,
    #[error("too many requests; retry after {0} s")]
    RateLimited(u64),
    #[error("the request is too large")]
    TooLarge,
    #[error("the provider is unavailable; the connection is kept and marked for retry")]
    ProviderUnavailable,
    #[error("this request needs a same-origin Origin and the CSRF token")]
    Csrf,
    #[error(transparent)]
    OAuth(#[from] OAuthError),
    #[error(transparent)]
    Session(#[from] crate::sessions::SessionError),
    #[error(transparent)]
    Agents(#[from] crate::agents::AgentError),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error("{0}")]
    BadRequest(String),
    #[error("a valid agent secret is required (Authorization: Bearer)")]
    AgentUnauthorized,
    #[error("the delegation is unknown, revoked, malformed or missing")]
    DelegationInvalid,
    #[error("the delegation was issued to another agent")]
    DelegationForeign,
    #[error("the delegation has expired")]
    DelegationExpired,
    #[error("no tool named {0:?}")]
    UnknownTool(String),
    #[error("the delegation does not name the tool {0:?}")]
    ToolNotDelegated(String),
    #[error("the delegation does not name the provider {0:?}")]
    ProviderNotDelegated(String),
    #[error("policy denies this")]
    PolicyDenied,
    #[error(transparent)]
    InvalidArgument(#[from] crate::tools::ArgError),
    #[error("the user has not connected {provider}; they can at the url given")]
    NotConnected { provider: String, url: String },
    #[error(
        "the connection to {provider} lacks scopes this needs; the user can grant them at the url given"
    )]
    InsufficientScope { provider: String, url: String },
    #[error("the connection to {provider} must be authorized again by the user at the url given")]
    ReauthRequired { provider: String, url: String },
    #[error("the provider failed ({0}); retry later")]
    ProviderFailed(String),
    #[error("a refresh of this credential is in progress elsewhere; retry shortly")]
    RefreshBusy,
    #[error(transparent)]
    NotRecorded(crate::journal::NotRecorded),
    /// The agent, delegation or connection a release was decided on changed before it
    /// was recorded (the caller decides again; this reaches an agent only when that keeps
    /// happening).
    #[error("the credential changed while it was being released; retry")]
    Stale,
    #[error("this needs the admin role")]
    Forbidden,
    #[error(transparent)]
    Grant(#[from] crate::grants::GrantError),
    /// An access token that is unknown, revoked, expired or for another resource.
    #[error("the access token {0}")]
    InvalidToken(&'static str),
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    pub code: &'static str,
    /// Where the user can fix it (`reauth_required`, `not_connected`, `insufficient_scope`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub url: Option<String>,
}

impl Error {
    /// True when the request failed only because the database is out of reach (down,
    /// restarting, or no connection free in time): a `503` the caller may retry as it is,
    /// not a fault of the request or of the service's logic.
    fn database_unavailable(&self) -> bool {
        use crate::store::is_unavailable;
        match self {
            Error::Database(e)
            | Error::Vault(VaultError::Database(e))
            | Error::Agents(crate::agents::AgentError::Database(e))
            | Error::OAuth(OAuthError::Database(e) | OAuthError::Vault(VaultError::Database(e))) => {
                is_unavailable(e)
            }
            Error::Session(e) => e.database_unavailable(),
            Error::Agents(crate::agents::AgentError::Lookup { unavailable, .. }) => *unavailable,
            Error::Grant(e) => e.database_unavailable(),
            Error::NotRecorded(e) => e.unavailable,
            _ => false,
        }
    }

    /// Status, stable code and title. Exhaustive on purpose: a new variant must be mapped.
    /// Any variant carrying a database failure answers `503 database_unavailable` when the
    /// database is out of reach.
    fn classify(&self) -> (StatusCode, &'static str, &'static str) {
        if self.database_unavailable() {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "Database unavailable",
            );
        }
        match self {
            Error::Vault(_)
            | Error::Database(_)
            | Error::Session(_)
            | Error::Agents(_)
            | Error::Policy(_)
            | Error::NotRecorded(_)
            | Error::OAuth(OAuthError::Database(_) | OAuthError::Vault(_)) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
            Error::OAuth(OAuthError::UnknownProvider) => (
                StatusCode::NOT_FOUND,
                "unknown_provider",
                "Unknown provider",
            ),
            Error::OAuth(OAuthError::InvalidState) => (
                StatusCode::BAD_REQUEST,
                "invalid_state",
                "Invalid sign-in request",
            ),
            Error::OAuth(OAuthError::ProviderError(_)) => (
                StatusCode::BAD_REQUEST,
                "provider_error",
                "The provider refused",
            ),
            Error::OAuth(OAuthError::ProviderFailed(_)) => (
                StatusCode::BAD_GATEWAY,
                "provider_error",
                "The provider failed",
            ),
            Error::OAuth(OAuthError::AlreadyLinked) => (
                StatusCode::CONFLICT,
                "already_linked",
                "Account already linked",
            ),
            Error::OAuth(OAuthError::NoSuchConnection) => {
                (StatusCode::NOT_FOUND, "not_found", "No such connection")
            }
            Error::ProviderUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "provider_unavailable",
                "Provider unavailable",
            ),
            Error::RateLimited(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many requests",
            ),
            Error::TooLarge => (
                StatusCode::URI_TOO_LONG,
                "request_too_large",
                "Request too large",
            ),
            Error::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", "Sign in first"),
            Error::Csrf => (
                StatusCode::FORBIDDEN,
                "csrf_failed",
                "Cross-site request refused",
            ),
            Error::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready", "Not ready"),
            Error::NotFound => (StatusCode::NOT_FOUND, "not_found", "Not found"),
            Error::RequestTimeout => (
                StatusCode::SERVICE_UNAVAILABLE,
                "request_timeout",
                "Request timed out",
            ),
            Error::Forbidden => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            Error::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request", "Bad request"),
            Error::AgentUnauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Agent authentication required",
            ),
            Error::DelegationInvalid => (
                StatusCode::UNAUTHORIZED,
                "delegation_invalid",
                "Invalid delegation",
            ),
            Error::DelegationForeign => (
                StatusCode::FORBIDDEN,
                "delegation_invalid",
                "Invalid delegation",
            ),
            Error::DelegationExpired => (
                StatusCode::UNAUTHORIZED,
                "delegation_expired",
                "Delegation expired",
            ),
            Error::UnknownTool(_) => (StatusCode::NOT_FOUND, "unknown_tool", "Unknown tool"),
            Error::ToolNotDelegated(_) => (
                StatusCode::FORBIDDEN,
                "tool_not_delegated",
                "Tool not delegated",
            ),
            Error::ProviderNotDelegated(_) => (
                StatusCode::FORBIDDEN,
                "provider_not_delegated",
                "Provider not delegated",
            ),
            Error::PolicyDenied => (StatusCode::FORBIDDEN, "policy_denied", "Denied by policy"),
            Error::InvalidArgument(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_argument",
                "Invalid argument",
            ),
            Error::NotConnected { .. } => (StatusCode::CONFLICT, "not_connected", "Not connected"),
            Error::InsufficientScope { .. } => (
                StatusCode::CONFLICT,
                "insufficient_scope",
                "Insufficient scope",
            ),
            Error::ReauthRequired { .. } => (
                StatusCode::CONFLICT,
                "reauth_required",
                "Authorization required again",
            ),
            Error::ProviderFailed(_) => (
                StatusCode::BAD_GATEWAY,
                "provider_error",
                "The provider failed",
            ),
            Error::RefreshBusy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "provider_unavailable",
                "Refresh in progress",
            ),
            Error::Stale => (
                StatusCode::SERVICE_UNAVAILABLE,
                "credential_changed",
                "The credential changed",
            ),
            Error::InvalidToken(_) => (
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "Invalid access token",
            ),
            Error::Grant(e) => match e {
                GrantError::Database(_)
                | GrantError::Agents(_)
                | GrantError::Crypto(_)
                | GrantError::Policy(_) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "Internal error",
                ),
                GrantError::InvalidClient(_) => (
                    StatusCode::BAD_REQUEST,
                    e.code(),
                    "Unknown or invalid client",
                ),
                GrantError::InvalidRequest(_)
                | GrantError::InvalidGrant(_)
                | GrantError::UnauthorizedClient(_)
                | GrantError::UnsupportedGrantType
                | GrantError::UnsupportedResponseType
                | GrantError::InvalidScope(_)
                | GrantError::InvalidTarget(_)
                | GrantError::AccessDenied
                | GrantError::InvalidRedirectUri(_)
                | GrantError::InvalidClientMetadata(_) => (
                    StatusCode::BAD_REQUEST,
                    e.code(),
                    "Invalid authorization request",
                ),
            },
        }
    }

    pub fn problem(&self) -> Problem {
        let (status, code, title) = self.classify();
        let detail = if status == StatusCode::INTERNAL_SERVER_ERROR {
            "the request failed; the cause is in the server log".to_owned()
        } else if code == "database_unavailable" {
            // The cause (which connection failed how) stays in the log.
            "the database is unavailable; retry shortly".to_owned()
        } else {
            self.to_string()
        };
        Problem {
            kind: format!("urn:strongbox:problem:{code}"),
            title,
            status: status.as_u16(),
            detail,
            code,
            url: match self {
                Error::NotConnected { url, .. }
                | Error::InsufficientScope { url, .. }
                | Error::ReauthRequired { url, .. } => Some(url.clone()),
                _ => None,
            },
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let problem = self.problem();
        if problem.status >= 500 {
            tracing::error!(error = %self, code = problem.code, "request failed");
        }
        let status =
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = match &self {
            e if e.database_unavailable() => Some(1),
            Error::RateLimited(seconds) => Some(*seconds),
            Error::ProviderFailed(_) | Error::OAuth(OAuthError::ProviderFailed(_)) => Some(5),
            Error::RefreshBusy | Error::Stale => Some(1),
            Error::RequestTimeout => Some(5),
            _ => None,
        };
        let mut resp = (status, Json(problem)).into_response();
        if matches!(self, Error::AgentUnauthorized) {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"strongbox\""),
            );
        }
        if matches!(self, Error::InvalidToken(_)) {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"strongbox\", error=\"invalid_token\""),
            );
        }
        if let Some(v) = retry_after.and_then(|s| HeaderValue::from_str(&s.to_string()).ok()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_out_of_reach_is_503_wherever_it_surfaces() {
        let down = || sqlx::Error::PoolTimedOut;
        for e in [
            Error::Database(down()),
            Error::Agents(crate::agents::AgentError::Database(down())),
            // The agent-request reader reports only whether the database was reachable.
            Error::Agents(crate::agents::AgentError::Lookup {
                reason: "database error".into(),
                unavailable: true,
            }),
        ] {
            assert_eq!(
                e.classify().1,
                "database_unavailable",
                "{:?}",
                e.to_string()
            );
            let resp = e.into_response();
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(resp.headers().contains_key(axum::http::header::RETRY_AFTER));
        }
        let broken = Error::Agents(crate::agents::AgentError::Lookup {
            reason: "database error".into(),
            unavailable: false,
        });
        assert_eq!(broken.classify().1, "internal");
    }
}
