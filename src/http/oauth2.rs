//! The authorization server's routes (SPEC §11): metadata (RFC 8414, RFC 9728), the
//! authorization request and its consent page, the token, revocation and registration
//! endpoints, and the user's grants (`/api/grants`, the account page's Revoke).
//!
//! Token, revocation and registration errors are RFC 6749 §5.2 / RFC 7591 JSON
//! (`{"error", "error_description"}`), as OAuth clients expect; an authorization request
//! whose client or redirect URI is not trusted gets an error page and never a redirect.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::browser::{BrowserSession, SignedIn, require_csrf};
use crate::clock::rfc3339;
use crate::error::Error;
use crate::grants::{
    Audience, AuthorizeRequest, ClientAuth, GrantError, Pending, Refusal, TokenRequest,
};
use crate::secret::ClientPresented;
use crate::sessions::Sessions;

/// `GET /.well-known/oauth-authorization-server` (RFC 8414).
pub async fn metadata(State(app): State<AppState>) -> Json<Value> {
    let g = &app.grants;
    Json(json!({
        "issuer": g.issuer(),
        "authorization_endpoint": g.endpoint("/oauth2/authorize"),
        "token_endpoint": g.endpoint("/oauth2/token"),
        "revocation_endpoint": g.endpoint("/oauth2/revoke"),
        "registration_endpoint": g.endpoint("/oauth2/register"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported":
            ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES256", "EdDSA"],
        "revocation_endpoint_auth_methods_supported":
            ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"],
        "scopes_supported": g.scopes_supported(),
        "authorization_response_iss_parameter_supported": true,
        "client_id_metadata_document_supported": true,
    }))
}

/// The protected resource metadata (RFC 9728) of `audience`.
fn resource_metadata(app: &AppState, audience: Audience) -> Json<Value> {
    let g = &app.grants;
    // MCP clients ask for every scope listed here: only tools, never raw credentials.
    let scopes: Vec<String> = g
        .scopes_supported()
        .into_iter()
        .filter(|s| audience == Audience::Api || s.starts_with("tool:"))
        .collect();
    Json(json!({
        "resource": g.resource(audience),
        "authorization_servers": [g.issuer()],
        "scopes_supported": scopes,
        "bearer_methods_supported": ["header"],
        "resource_name": "Strongbox",
    }))
}

/// `GET /.well-known/oauth-protected-resource/mcp`.
pub async fn mcp_resource_metadata(State(app): State<AppState>) -> Json<Value> {
    resource_metadata(&app, Audience::Mcp)
}

/// `GET /.well-known/oauth-protected-resource/v1`.
pub async fn api_resource_metadata(State(app): State<AppState>) -> Json<Value> {
    resource_metadata(&app, Audience::Api)
}

/// A `303 See Other` to `to`.
fn see_other(to: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn refused(r: Refusal) -> Response {
    match r {
        Refusal::Page(e) => Error::Grant(e).into_response(),
        Refusal::Redirect(to) => see_other(&to),
    }
}

/// The authorization request again, as the path and query of `/oauth2/authorize`.
fn authorize_path(req: &AuthorizeRequest) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    let fields = [
        ("response_type", &req.response_type),
        ("client_id", &req.client_id),
        ("redirect_uri", &req.redirect_uri),
        ("scope", &req.scope),
        ("state", &req.state),
        ("code_challenge", &req.code_challenge),
        ("code_challenge_method", &req.code_challenge_method),
        ("resource", &req.resource),
    ];
    for (k, v) in fields {
        if let Some(v) = v {
            q.append_pair(k, v);
        }
    }
    format!("/oauth2/authorize?{}", q.finish())
}

/// `GET /oauth2/authorize` — the sign-in page first if need be, then the consent page.
pub async fn authorize(
    State(app): State<AppState>,
    current: Option<BrowserSession>,
    Query(req): Query<AuthorizeRequest>,
) -> Result<Response, Error> {
    let pending = match app.grants.check(&req).await {
        Ok(p) => p,
        Err(r) => return Ok(refused(r)),
    };
    let signed_in = current.and_then(|s| s.user_id.map(|u| (s.token, u)));
    let Some((token, user_id)) = signed_in else {
        return Ok(super::pages::sign_in_page(&app, Some(authorize_path(&req))));
    };
    super::consent::page(
        &app,
        &pending,
        &req,
        &user_id,
        &Sessions::csrf_token(&token),
        &authorize_path(&req),
    )
    .await
}

/// The consent page's form: the authorization request, the CSRF token and the decision.
#[derive(Deserialize)]
pub struct ConsentForm {
    #[serde(flatten)]
    request: AuthorizeRequest,
    csrf_token: Option<String>,
    decision: Option<String>,
}

/// `POST /oauth2/authorize` — Approve or Deny. Everything is checked again: the form is
/// only the user's answer, never trusted for what it says about the client.
pub async fn decide(
    State(app): State<AppState>,
    me: SignedIn,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    form: axum::extract::Form<ConsentForm>,
) -> Result<Response, Error> {
    let form = form.0;
    require_csrf(&app, &headers, &me.token, form.csrf_token.as_deref())?;
    let pending: Pending = match app.grants.check(&form.request).await {
        Ok(p) => p,
        Err(r) => {
            let mut resp = refused(r);
            if let Some(to) = form.request.redirect_uri.as_deref() {
                resp.headers_mut()
                    .insert(header::CONTENT_SECURITY_POLICY, app.csp_with(to));
            }
            return Ok(resp);
        }
    };
    let request_id = super::observe::request_id_of(&extensions);
    let state = pending.state.as_deref();
    let to = if form.decision.as_deref() == Some("approve") {
        match app
            .grants
            .approve(&app.policies, &pending, &me.user_id, &request_id)
            .await
        {
            Ok(code) => {
                app.grants
                    .redirect(&pending.redirect_uri, state, &[("code", code.reveal())])
            }
            Err(GrantError::AccessDenied) => app.grants.redirect(
                &pending.redirect_uri,
                state,
                &[
                    ("error", "access_denied"),
                    (
                        "error_description",
                        "policy allows nothing that was asked for",
                    ),
                ],
            ),
            Err(e) => return Err(Error::Grant(e)),
        }
    } else {
        app.grants.deny(&pending, &me.user_id, &request_id).await?;
        app.grants
            .redirect(&pending.redirect_uri, state, &[("error", "access_denied")])
    };
    let mut resp = see_other(&to);
    // The redirect leaves this origin after a form submission: `form-action` must allow it.
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        app.csp_with(&pending.redirect_uri),
    );
    Ok(resp)
}

/// An RFC 6749 §5.2 error answer.
fn oauth_error(e: &GrantError, basic: bool) -> Response {
    if e.database_unavailable() {
        let mut resp = (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": "temporarily_unavailable",
                         "error_description": "the database is unavailable; retry shortly" })),
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
        Json(json!({ "error": e.code(), "error_description": description })),
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
            let body = zeroize::Zeroizing::new(
                json!({
                    "access_token": issued.access_token.reveal(),
                    "token_type": "Bearer",
                    "expires_in": issued.expires_in,
                    "refresh_token": issued.refresh_token.reveal(),
                    "scope": issued.scope,
                })
                .to_string(),
            );
            let mut resp = (StatusCode::OK, body.to_string()).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp.headers_mut()
                .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            resp
        }
        Err(e) => oauth_error(&e, false),
    }
}

/// `POST /oauth2/revoke` (RFC 7009): 200 whether or not the token was known.
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
        Ok(registered) => (StatusCode::CREATED, Json(registered)).into_response(),
        Err(e) => oauth_error(&e, false),
    }
}

/// `GET /api/grants` — the signed-in user's grants.
pub async fn grants(State(app): State<AppState>, me: SignedIn) -> Result<Json<Value>, Error> {
    let list: Vec<Value> = app
        .grants
        .list(&me.user_id)
        .await?
        .into_iter()
        .map(|g| {
            json!({
                "id": g.id, "agent": g.agent, "tools": g.tools, "providers": g.providers,
                "created_at": rfc3339(g.created_at), "expires_at": rfc3339(g.expires_at),
                "last_used_at": g.last_used_at.map(rfc3339),
            })
        })
        .collect();
    Ok(Json(json!({ "grants": list })))
}

/// `DELETE /api/grants/{id}` — revoke one; its tokens stop working at once.
pub async fn revoke_grant(
    State(app): State<AppState>,
    me: SignedIn,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    require_csrf(&app, &headers, &me.token, None)?;
    revoke_own(&app, &me, &id, &extensions).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /grants/{id}/revoke` — the account page's Revoke button.
pub async fn revoke_grant_form(
    State(app): State<AppState>,
    me: SignedIn,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    Path(id): Path<String>,
    axum::extract::Form(f): axum::extract::Form<super::pages::CsrfField>,
) -> Result<Response, Error> {
    require_csrf(&app, &headers, &me.token, Some(f.token()))?;
    revoke_own(&app, &me, &id, &extensions).await?;
    Ok(see_other("/"))
}

async fn revoke_own(
    app: &AppState,
    me: &SignedIn,
    id: &str,
    extensions: &axum::http::Extensions,
) -> Result<(), Error> {
    let actor = crate::audit::Actor::User(me.user_id.clone());
    let request_id = super::observe::request_id_of(extensions);
    if app
        .grants
        .revoke(&me.user_id, id, actor, &request_id)
        .await?
    {
        Ok(())
    } else {
        Err(Error::NotFound)
    }
}
