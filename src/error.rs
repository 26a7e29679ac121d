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
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    pub code: &'static str,
}

impl Error {
    /// Status, stable code and title. Exhaustive on purpose: a new variant must be mapped.
    fn classify(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Error::Vault(_)
            | Error::Database(_)
            | Error::Session(_)
            | Error::OAuth(
                OAuthError::Database(_) | OAuthError::Vault(_) | OAuthError::Session(_),
            ) => (
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
        }
    }

    pub fn problem(&self) -> Problem {
        let (status, code, title) = self.classify();
        let detail = if status == StatusCode::INTERNAL_SERVER_ERROR {
            "the request failed; the cause is in the server log".to_owned()
        } else {
            self.to_string()
        };
        Problem {
            kind: format!("urn:strongbox:problem:{code}"),
            title,
            status: status.as_u16(),
            detail,
            code,
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
            Error::RateLimited(seconds) => Some(*seconds),
            _ => None,
        };
        let mut resp = (status, Json(problem)).into_response();
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
