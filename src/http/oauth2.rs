//! The authorization server's routes for browsers (SPEC §11): metadata (RFC 8414,
//! RFC 9728), the authorization request and its consent page, and the user's grants
//! (`/api/grants`, the account page's Revoke). The token, revocation and registration
//! endpoints are in `token.rs`.
//!
//! An authorization request whose client or redirect URI is not trusted gets an error
//! page and never a redirect.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::bodies::{ConsentBody, GrantItem, GrantList, ResourceMetadata, ServerMetadata};
use super::browser::{BrowserSession, SignedIn, require_csrf};
use crate::clock::rfc3339;
use crate::error::Error;
use crate::grants::{Audience, AuthorizeRequest, GrantError, Pending, Refusal};
use crate::sessions::Sessions;

/// `GET /.well-known/oauth-authorization-server` (RFC 8414).
#[utoipa::path(
    get,
    path = "/.well-known/oauth-authorization-server",
    operation_id = "authorization_server_metadata",
    summary = "Authorization server metadata (RFC 8414); issuer is public_url",
    responses((status = 200, description = "Metadata", body = ServerMetadata))
)]
pub async fn metadata(State(app): State<AppState>) -> Json<ServerMetadata> {
    const AUTH_METHODS: &[&str] = &[
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
        "none",
    ];
    let g = &app.grants;
    Json(ServerMetadata {
        issuer: g.issuer().to_owned(),
        authorization_endpoint: g.endpoint("/oauth2/authorize"),
        token_endpoint: g.endpoint("/oauth2/token"),
        revocation_endpoint: g.endpoint("/oauth2/revoke"),
        registration_endpoint: g.endpoint("/oauth2/register"),
        response_types_supported: &["code"],
        response_modes_supported: &["query"],
        grant_types_supported: &["authorization_code", "refresh_token"],
        code_challenge_methods_supported: &["S256"],
        token_endpoint_auth_methods_supported: AUTH_METHODS,
        token_endpoint_auth_signing_alg_values_supported: &["ES256", "EdDSA"],
        revocation_endpoint_auth_methods_supported: AUTH_METHODS,
        scopes_supported: g.scopes_supported(),
        authorization_response_iss_parameter_supported: true,
        client_id_metadata_document_supported: true,
    })
}

/// The protected resource metadata (RFC 9728) of `audience`.
fn resource_metadata(app: &AppState, audience: Audience) -> Json<ResourceMetadata> {
    let g = &app.grants;
    // MCP clients ask for every scope listed here: only tools, never raw credentials.
    let scopes: Vec<String> = g
        .scopes_supported()
        .into_iter()
        .filter(|s| audience == Audience::Api || s.starts_with("tool:"))
        .collect();
    Json(ResourceMetadata {
        resource: g.resource(audience),
        authorization_servers: vec![g.issuer().to_owned()],
        scopes_supported: scopes,
        bearer_methods_supported: &["header"],
        resource_name: "Strongbox",
    })
}

/// `GET /.well-known/oauth-protected-resource/mcp`.
#[utoipa::path(
    get,
    path = "/.well-known/oauth-protected-resource/mcp",
    operation_id = "mcp_resource_metadata",
    summary = "Protected resource metadata (RFC 9728) of /mcp: resource {public_url}/mcp",
    responses((status = 200, description = "Metadata", body = ResourceMetadata))
)]
pub async fn mcp_resource_metadata(State(app): State<AppState>) -> Json<ResourceMetadata> {
    resource_metadata(&app, Audience::Mcp)
}

/// `GET /.well-known/oauth-protected-resource/v1`.
#[utoipa::path(
    get,
    path = "/.well-known/oauth-protected-resource/v1",
    operation_id = "api_resource_metadata",
    summary = "Protected resource metadata (RFC 9728) of the agent routes: resource {public_url}/v1",
    responses((status = 200, description = "Metadata", body = ResourceMetadata))
)]
pub async fn api_resource_metadata(State(app): State<AppState>) -> Json<ResourceMetadata> {
    resource_metadata(&app, Audience::Api)
}

/// A `303 See Other` to `to`.
pub(super) fn see_other(to: &str) -> Response {
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
#[utoipa::path(
    get,
    path = "/oauth2/authorize",
    operation_id = "authorize",
    summary = "Authorization request, in the query: response_type=code, client_id, redirect_uri, \
               scope, state, code_challenge, code_challenge_method=S256, optional resource. \
               Not signed in: the sign-in page, which comes back here; then the consent page. \
               An unknown client or a redirect_uri not registered exactly gets an error, \
               never a redirect; any other fault goes back to the client",
    params(
        ("response_type" = String, Query), ("client_id" = String, Query),
        ("redirect_uri" = String, Query), ("scope" = Option<String>, Query),
        ("state" = Option<String>, Query), ("code_challenge" = String, Query),
        ("code_challenge_method" = String, Query), ("resource" = Option<String>, Query),
    ),
    responses(
        (status = 200, description = "The sign-in page or the consent page (HTML)"),
        (status = 303, description = "Back to redirect_uri with error (unsupported_response_type, \
            invalid_request, invalid_scope, invalid_target), error_description, state and iss"),
        (status = 400, description = "code: invalid_client, invalid_request; a browser \
            (Accept: text/html) gets an error page", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "code: rate_limited", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
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
#[utoipa::path(
    post,
    path = "/oauth2/authorize",
    operation_id = "decide",
    summary = "The consent page's Approve or Deny, with the authorization request again \
               (checked again, never trusted)",
    request_body(content = ConsentBody, content_type = "application/x-www-form-urlencoded"),
    security(("session" = [], "csrf" = [])),
    responses(
        (status = 303, description = "Back to redirect_uri with state and iss: code when \
            approved; error=access_denied when denied or when policy allows nothing asked for; \
            or the error of a request that no longer checks out"),
        (status = 400, description = "code: invalid_client, invalid_request", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "code: unauthorized", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "code: csrf_failed", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "code: rate_limited", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
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

/// `GET /api/grants` — the signed-in user's grants.
#[utoipa::path(
    get,
    path = "/api/grants",
    operation_id = "grants",
    summary = "The user's grants (what agents were approved for on a consent page), newest first",
    security(("session" = [])),
    responses(
        (status = 200, description = "Grants", body = GrantList),
        (status = 401, description = "code: unauthorized", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn grants(State(app): State<AppState>, me: SignedIn) -> Result<Json<GrantList>, Error> {
    let grants = app
        .grants
        .list(&me.user_id)
        .await?
        .into_iter()
        .map(|g| GrantItem {
            id: g.id,
            agent: g.agent,
            tools: g.tools,
            providers: g.providers,
            created_at: rfc3339(g.created_at),
            expires_at: rfc3339(g.expires_at),
            last_used_at: g.last_used_at.map(rfc3339),
        })
        .collect();
    Ok(Json(GrantList { grants }))
}

/// `DELETE /api/grants/{id}` — revoke one; its tokens stop working at once.
#[utoipa::path(
    delete,
    path = "/api/grants/{id}",
    operation_id = "revoke_grant",
    summary = "Revoke a grant: its access and refresh tokens stop working at once",
    params(("id" = String, Path, description = "the grant")),
    security(("session" = [], "csrf" = [])),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "code: unauthorized", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "code: csrf_failed", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "code: not_found", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
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
#[utoipa::path(
    post,
    path = "/grants/{id}/revoke",
    operation_id = "revoke_grant_form",
    summary = "Revoke a grant from the account page's form",
    params(("id" = String, Path, description = "the grant")),
    request_body(content = super::pages::CsrfField, content_type = "application/x-www-form-urlencoded"),
    security(("session" = [], "csrf" = [])),
    responses(
        (status = 303, description = "Redirect to the account page"),
        (status = 401, description = "code: unauthorized", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "code: csrf_failed", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "code: not_found", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
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
