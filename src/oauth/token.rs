//! Requests to a provider's token endpoint through the `oauth2` crate's client types (code
//! exchange with PKCE, refresh), over one HTTP client of our own ([`Capped`]) on the shared
//! reqwest client: no redirects, the provider timeout, answers read chunk by chunk up to
//! 1 MiB, and failures reduced to short codes that are safe to show.
//!
//! Providers differ from RFC 6749 in small ways, so the answer is read leniently
//! ([`Answer`]): a missing `token_type`, `expires_in` as a string, huge or negative, scopes
//! separated by commas, a refresh answer without a refresh token, and GitHub's `200` with
//! an `error` member.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
};
use oauth2::{
    AuthType, EndpointNotSet, EndpointSet, HttpRequest, HttpResponse, RequestTokenError,
    StandardRevocableToken, TokenResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::OAuthError;
use crate::outbound::{BodyError, MAX_PROVIDER_RESPONSE, read_capped};

/// `token_type`, whatever the provider wrote (`Bearer` when it wrote nothing).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub(super) struct Kind(pub(super) String);

impl Default for Kind {
    fn default() -> Self {
        Kind("Bearer".into())
    }
}

impl oauth2::TokenType for Kind {}

/// An ID token as it arrives: a JWT, so never printed.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub(super) struct Jwt(pub(super) String);

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Jwt([REDACTED])")
    }
}

/// A token endpoint's answer, as providers really send it. The secrets are `oauth2`'s
/// secret types (redacted when printed).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Answer {
    pub(super) access_token: oauth2::AccessToken,
    #[serde(default)]
    pub(super) token_type: Kind,
    #[serde(default)]
    pub(super) refresh_token: Option<oauth2::RefreshToken>,
    #[serde(default)]
    pub(super) id_token: Option<Jwt>,
    /// Untrusted: read by `wire::expires_at`.
    #[serde(default)]
    pub(super) expires_in: Option<Value>,
    /// Space- or comma-separated, as the provider wrote it.
    #[serde(default)]
    pub(super) scope: Option<String>,
}

impl TokenResponse for Answer {
    type TokenType = Kind;

    fn access_token(&self) -> &oauth2::AccessToken {
        &self.access_token
    }
    fn token_type(&self) -> &Kind {
        &self.token_type
    }
    /// Read leniently by the caller instead (see the module comment).
    fn expires_in(&self) -> Option<Duration> {
        None
    }
    fn refresh_token(&self) -> Option<&oauth2::RefreshToken> {
        self.refresh_token.as_ref()
    }
    /// Read from `scope` by the caller, whatever its separator.
    fn scopes(&self) -> Option<&Vec<oauth2::Scope>> {
        None
    }
}

/// The `oauth2` client for one provider's token endpoint.
pub(super) type TokenClient = oauth2::Client<
    BasicErrorResponse,
    Answer,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// Builds the client: its id, its secret if it has one, how it authenticates (HTTP Basic
/// or the form body), the token endpoint and, for a code exchange, the redirect URI.
pub(super) fn client(
    client_id: &str,
    secret: Option<&crate::secret::ClientSecret>,
    basic: bool,
    token_url: &str,
    redirect_uri: Option<String>,
) -> Result<TokenClient, OAuthError> {
    let bad = || OAuthError::ProviderFailed("token_endpoint_url".into());
    let mut client = oauth2::Client::new(oauth2::ClientId::new(client_id.to_owned()))
        .set_auth_type(if basic {
            AuthType::BasicAuth
        } else {
            AuthType::RequestBody
        })
        .set_token_uri(oauth2::TokenUrl::new(token_url.to_owned()).map_err(|_| bad())?);
    if let Some(secret) = secret {
        client = client.set_client_secret(oauth2::ClientSecret::new(secret.reveal().to_owned()));
    }
    if let Some(uri) = redirect_uri {
        client = client.set_redirect_uri(oauth2::RedirectUrl::new(uri).map_err(|_| bad())?);
    }
    Ok(client)
}

/// Why the token endpoint could not be asked or did not answer usably.
#[derive(Debug, thiserror::Error)]
pub(super) enum CallError {
    #[error("token_endpoint_timeout")]
    Timeout,
    #[error("token_endpoint_unreachable")]
    Unreachable,
    #[error("token_endpoint_status_{0}")]
    Status(u16),
    #[error("response_too_large")]
    TooLarge,
    #[error("response_interrupted")]
    Interrupted,
}

/// The HTTP client `oauth2` sends through: the shared reqwest client (no redirects, the
/// timeout), answers read up to the cap. A failed answer that is not an OAuth error
/// document is reported by its status, so it is not mistaken for a malformed one.
pub(super) struct Capped<'a>(pub(super) &'a reqwest::Client);

impl<'c> oauth2::AsyncHttpClient<'c> for Capped<'_> {
    type Error = CallError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, CallError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let resp = self
                .0
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .map_err(|e| {
                    if e.is_timeout() {
                        CallError::Timeout
                    } else {
                        CallError::Unreachable
                    }
                })?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let bytes = read_capped(resp, MAX_PROVIDER_RESPONSE)
                .await
                .map_err(|e| match e {
                    BodyError::TooLarge => CallError::TooLarge,
                    BodyError::Timeout => CallError::Timeout,
                    BodyError::Interrupted => CallError::Interrupted,
                })?;
            let oauth_error = serde_json::from_slice::<Value>(&bytes)
                .is_ok_and(|v| v.get("error").is_some_and(Value::is_string));
            if !status.is_success() && !oauth_error {
                return Err(CallError::Status(status.as_u16()));
            }
            let mut out = oauth2::http::Response::new(bytes);
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            Ok(out)
        })
    }
}

/// What a failed token request tells the user: a refused grant (the code spent or
/// foreign, the refresh token revoked) is the request's fault, anything else the
/// provider's.
pub(super) fn failure(e: RequestTokenError<CallError, BasicErrorResponse>) -> OAuthError {
    let from_code = |code: &str| {
        let code = super::sanitize(code);
        if matches!(code.as_str(), "invalid_grant" | "access_denied") {
            OAuthError::ProviderError(code)
        } else {
            OAuthError::ProviderFailed(code)
        }
    };
    match e {
        RequestTokenError::ServerResponse(r) => from_code(r.error().as_ref()),
        RequestTokenError::Request(e) => OAuthError::ProviderFailed(e.to_string()),
        // A `200` carrying `error` (GitHub), or a body that is not a token answer.
        RequestTokenError::Parse(_, body) => {
            match serde_json::from_slice::<Value>(&body)
                .ok()
                .as_ref()
                .and_then(|v| v.get("error"))
                .and_then(Value::as_str)
            {
                Some(code) => from_code(code),
                None if serde_json::from_slice::<Value>(&body)
                    .is_ok_and(|v| v.get("access_token").is_none() && v.is_object()) =>
                {
                    OAuthError::ProviderFailed("no_access_token".into())
                }
                None => OAuthError::ProviderFailed("malformed_response".into()),
            }
        }
        RequestTokenError::Other(_) => OAuthError::ProviderFailed("malformed_response".into()),
    }
}
