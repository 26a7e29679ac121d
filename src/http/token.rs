//! The authorization server's endpoints for clients (SPEC §11): token (RFC 6749, PKCE,
//! rotating refresh tokens), revocation (RFC 7009) and dynamic registration (RFC 7591).
//! Their errors are RFC 6749 §5.2 / RFC 7591 JSON (`{"error", "error_description"}`),
//! which OAuth clients parse; only what every route answers (rate limits, oversized
//! requests) stays a problem document.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;

use super::AppState;
use super::bodies::{
    OAuthError, Registered, Registration, RevokeForm, TokenForm, Tokens, secret_json,
};
use crate::error::Error;
use crate::grants::{ClientAuth, GrantError, TokenRequest};
use crate::secret::ClientPresented;

/// An RFC 6749 §5.2 error answer.
fn oauth_error(e: &GrantError, basic: bool) -> Response {
    if e.database_unavailable() {
        let mut resp = (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(OAuthError {
                error: "temporarily_unavailable".into(),
                error_description: "the database is unavailable; retry shortly".into(),
            }),
        )
            .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return resp;
    }
    let status = match e {
        GrantError::InvalidClient(_) => StatusCode::UNAUTHORIZED,
        GrantError::Database(_)
        | GrantError::Agents(_)
        | GrantError::Crypto(_)
        | GrantError::Policy(_) => {
            tracing::error!(error = %e, "token endpoint failed");
            StatusCode::INTERNAL_SERVER_ERROR
        }
        _ => StatusCode::BAD_REQUEST,
    };
    let description = if status == StatusCode::INTERNAL_SERVER_ERROR {
        "the request failed; the cause is in the server log".to_owned()
    } else {
        e.to_string()
    };
    let mut resp = (
        status,
        Json(OAuthError {
            error: e.code().into(),
            error_description: description,
        }),
    )
        .into_response();
    if basic && status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"strongbox\""),
        );
    }
    resp
}

/// A form body as name/value pairs (each name once).
fn form_fields(
    body: &Bytes,
) -> Result<std::collections::HashMap<String, zeroize::Zeroizing<String>>, GrantError> {
    let mut out = std::collections::HashMap::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        if out
            .insert(k.into_owned(), zeroize::Zeroizing::new(v.into_owned()))
            .is_some()
        {
            return Err(GrantError::InvalidRequest(
                "a parameter was sent twice".into(),
            ));
        }
    }
    Ok(out)
}

/// The client's authentication: HTTP Basic, or form fields (RFC 6749 §2.3, RFC 7523 §2.2).
fn client_auth(
    headers: &HeaderMap,
    form: &std::collections::HashMap<String, zeroize::Zeroizing<String>>,
) -> Result<(ClientAuth, bool), GrantError> {
    let field = |k: &str| form.get(k).map(|v| v.as_str().to_owned());
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .map(|(_, b)| b.trim().to_owned());
    let methods = usize::from(basic.is_some())
        + usize::from(form.contains_key("client_secret"))
        + usize::from(form.contains_key("client_assertion"));
    if methods > 1 {
        return Err(GrantError::InvalidRequest(
            "use one client authentication method".into(),
        ));
    }
    if let Some(b64) = basic {
        let bad = || GrantError::InvalidClient("malformed Basic credentials".into());
        let raw = zeroize::Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| bad())?,
        );
        let text = std::str::from_utf8(&raw).map_err(|_| bad())?;
        let (id, secret) = text.split_once(':').ok_or_else(bad)?;
        let decode = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
        };
        let id = decode(id).ok_or_else(bad)?;
        let secret = ClientPresented::new(decode(secret).ok_or_else(bad)?);
        return Ok((ClientAuth::Secret { id, secret }, true));
    }
    if let Some(assertion) = field("client_assertion") {
        if field("client_assertion_type").as_deref() != Some(crate::grants::JWT_BEARER) {
            return Err(GrantError::InvalidClient(
                "unsupported client_assertion_type".into(),
            ));
        }
        return Ok((
            ClientAuth::Assertion {
                id: field("client_id"),
                assertion: ClientPresented::new(assertion),
            },
            false,
        ));
    }
    let id = field("client_id")
        .ok_or_else(|| GrantError::InvalidClient("client authentication is required".into()))?;
    Ok(match field("client_secret") {
        Some(secret) => (
            ClientAuth::Secret {
                id,
                secret: ClientPresented::new(secret),
            },
            false,
        ),
        None => (ClientAuth::None { id }, false),
    })
}

/// Authenticates the client of a token or revocation request, within the per-address
/// budget of failed authentications.
async fn authenticated(
    app: &AppState,
    parts: &axum::http::request::Parts,
    form: &std::collections::HashMap<String, zeroize::Zeroizing<String>>,
) -> Result<crate::grants::Client, Response> {
    let address = super::guard::client_address_of(app, parts);
    if let Err(w) = app.limits.before_authentication(address, None) {
        return Err(Error::RateLimited(w.0).into_response());
    }
    let (auth, basic) = client_auth(&parts.headers, form).map_err(|e| oauth_error(&e, false))?;
    match app.grants.authenticate(&auth).await {
        Ok(client) => {
            // Only a client that proved something counts as known to the failure limit
            // (a public client's id is public).
            if client.kind != crate::grants::ClientKind::Public {
                app.limits.agent_authenticated(&client.id);
            }
            Ok(client)
        }
        Err(e) => {
            if matches!(e, GrantError::InvalidClient(_)) {
                app.limits.authentication_failed(address);
            }
            Err(oauth_error(&e, basic))
        }
    }
}

/// A form posted to the token or revocation endpoint, and its authenticated client.
type Form = std::collections::HashMap<String, zeroize::Zeroizing<String>>;

/// Reads the form of a token or revocation request and authenticates its client; an
/// answer to send instead when either fails.
async fn client_request(
    app: &AppState,
    req: axum::extract::Request,
) -> Result<(axum::http::request::Parts, Form, crate::grants::Client), Response> {
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, super::guard::MAX_BODY).await else {
        return Err(Error::TooLarge.into_response());
    };
    let form = form_fields(&body).map_err(|e| oauth_error(&e, false))?;
    let client = authenticated(app, &parts, &form).await?;
    Ok((parts, form, client))
}

/// `POST /oauth2/token`.
#[utoipa::path(
    post,
    path = "/oauth2/token",
    operation_id = "token",
    summary = "Token endpoint. grant_type=authorization_code: code (one use, 60 s), the same \
               redirect_uri, code_verifier (PKCE S256); a code used twice revokes what it \
               issued. grant_type=refresh_token: refresh_token, optional narrower scope; the \
               refresh token rotates, and a rotated one presented again revokes the grant. \
               Optional resource (RFC 8707)",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    security(("client" = []), ()),
    responses(
        (status = 200, description = "Tokens (Pragma: no-cache)", body = Tokens),
        (status = 400, description = "error: invalid_request, invalid_grant, \
            unsupported_grant_type, invalid_scope, invalid_target", body = OAuthError, content_type = "application/json"),
        (status = 401, description = "error: invalid_client; WWW-Authenticate: Basic when the \
            client authenticated with HTTP Basic", body = OAuthError, content_type = "application/json"),
        (status = 414, description = "code: request_too_large", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "code: rate_limited", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 500, description = "error: server_error", body = OAuthError, content_type = "application/json"),
        (status = 503, description = "error: temporarily_unavailable (Retry-After)", body = OAuthError, content_type = "application/json"),
    )
)]
pub async fn token(State(app): State<AppState>, req: axum::extract::Request) -> Response {
    let (parts, form, client) = match client_request(&app, req).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let take = |k: &str| {
        form.get(k)
            .map(|v| ClientPresented::new(v.as_str().to_owned()))
    };
    let text = |k: &str| form.get(k).map(|v| v.as_str().to_owned());
    let request = TokenRequest {
        grant_type: text("grant_type").unwrap_or_default(),
        code: take("code"),
        redirect_uri: text("redirect_uri"),
        code_verifier: take("code_verifier"),
        refresh_token: take("refresh_token"),
        scope: text("scope"),
        resource: text("resource"),
    };
    let request_id = super::observe::request_id_of(&parts.extensions);
    match app.grants.token(&client, request, &request_id).await {
        Ok(issued) => {
            let body = Tokens {
                access_token: issued.access_token.reveal(),
                token_type: "Bearer",
                expires_in: issued.expires_in,
                refresh_token: issued.refresh_token.reveal(),
                scope: &issued.scope,
            };
            let mut resp = secret_json(StatusCode::OK, &body);
            resp.headers_mut()
                .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            resp
        }
        Err(e) => oauth_error(&e, false),
    }
}

/// `POST /oauth2/revoke` (RFC 7009): 200 whether or not the token was known.
#[utoipa::path(
    post,
    path = "/oauth2/revoke",
    operation_id = "revoke",
    summary = "Token revocation (RFC 7009): an access token ends alone, a refresh token its \
               whole grant; a token that is unknown or another client's changes nothing",
    request_body(content = RevokeForm, content_type = "application/x-www-form-urlencoded"),
    security(("client" = []), ()),
    responses(
        (status = 200, description = "Revoked, or nothing to revoke (empty body)"),
        (status = 400, description = "error: invalid_request", body = OAuthError, content_type = "application/json"),
        (status = 401, description = "error: invalid_client; WWW-Authenticate: Basic when the \
            client authenticated with HTTP Basic", body = OAuthError, content_type = "application/json"),
        (status = 414, description = "code: request_too_large", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "code: rate_limited", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 500, description = "error: server_error", body = OAuthError, content_type = "application/json"),
        (status = 503, description = "error: temporarily_unavailable (Retry-After)", body = OAuthError, content_type = "application/json"),
    )
)]
pub async fn revoke(State(app): State<AppState>, req: axum::extract::Request) -> Response {
    let (parts, form, client) = match client_request(&app, req).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let Some(token) = form
        .get("token")
        .map(|t| ClientPresented::new(t.as_str().to_owned()))
    else {
        return oauth_error(
            &GrantError::InvalidRequest("token is required".into()),
            false,
        );
    };
    let request_id = super::observe::request_id_of(&parts.extensions);
    match app.grants.revoke_token(&client, &token, &request_id).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => oauth_error(&e, false),
    }
}

/// `POST /oauth2/register` (RFC 7591): public clients only.
#[utoipa::path(
    post,
    path = "/oauth2/register",
    operation_id = "register",
    summary = "Dynamic client registration (RFC 7591) of a public client \
               (token_endpoint_auth_method none); confidential agents are added with \
               `strongbox agents add`",
    request_body(content = Registration, content_type = "application/json"),
    responses(
        (status = 201, description = "Registered", body = Registered),
        (status = 400, description = "error: invalid_redirect_uri, invalid_client_metadata", body = OAuthError, content_type = "application/json"),
        (status = 429, description = "code: rate_limited", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 500, description = "error: server_error", body = OAuthError, content_type = "application/json"),
        (status = 503, description = "error: temporarily_unavailable (Retry-After)", body = OAuthError, content_type = "application/json"),
    )
)]
pub async fn register(State(app): State<AppState>, body: Bytes) -> Response {
    let req = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(_) => {
            return oauth_error(
                &GrantError::InvalidClientMetadata(
                    "the body is not a JSON registration request".into(),
                ),
                false,
            );
        }
    };
    match app.grants.register(req).await {
        Ok(registered) => (StatusCode::CREATED, Json(Registered::from(registered))).into_response(),
        Err(e) => oauth_error(&e, false),
    }
}
