//! Browser routes (SPEC §5, §6): sign-in, connect, the OAuth callback, logout, and the
//! JSON the account page needs. The session lives in one cookie: `__Host-strongbox`
//! (Secure) over https, `strongbox` on plain-http development. State-changing requests
//! need a same-origin `Origin` (or `Sec-Fetch-Site: same-origin`) and the CSRF token; a
//! connect flow that another site navigates to is confirmed on a page of ours first.

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cookie::{Cookie, SameSite};
use serde::Deserialize;

use super::AppState;
use crate::audit::{self, Actor, Event, Kind};
use crate::error::Error;
use crate::oauth::{Callback, Purpose};
use crate::secret::SessionToken;
use crate::sessions::{SessionError, Sessions, USER_KEY};

/// The session cookie's name for this deployment.
pub fn cookie_name(https: bool) -> &'static str {
    if https {
        "__Host-strongbox"
    } else {
        "strongbox"
    }
}

/// The session cookie's attributes: sent only over HTTP (no script reads it), on top-level
/// navigations from other sites but not their subrequests, for the whole site; `Secure`
/// over https, where the `__Host-` name also pins it to this host and `Path=/`.
fn session_cookie(https: bool, value: &str) -> Cookie<'_> {
    Cookie::build((cookie_name(https), value))
        .http_only(true)
        .same_site(SameSite::Lax)
        .path("/")
        .secure(https)
        .build()
}

fn header_value(cookie: &Cookie<'_>) -> HeaderValue {
    HeaderValue::from_str(&cookie.to_string()).unwrap_or(HeaderValue::from_static(""))
}

/// tower-sessions' layer, with the session cookie's name and attributes: the same
/// cookie as [`session_cookie`] builds, holding the session id.
pub fn session_layer(
    store: crate::sessions::SessionRows,
    https: bool,
) -> tower_sessions::SessionManagerLayer<crate::sessions::SessionRows> {
    tower_sessions::SessionManagerLayer::new(store)
        .with_name(cookie_name(https))
        .with_http_only(true)
        .with_same_site(SameSite::Lax)
        .with_path("/")
        .with_secure(https)
}

/// Ends the session cookie now. Only `Max-Age=0`, not the `Expires` in the past that
/// `Cookie::make_removal` adds: the attributes stay those the cookie was set with.
pub(super) fn clear_cookie(https: bool) -> HeaderValue {
    let mut cookie = session_cookie(https, "");
    cookie.set_max_age(cookie::time::Duration::ZERO);
    header_value(&cookie)
}

/// tower-sessions ends the cookie of a session that is gone with a bare
/// `name=; Path=/; Max-Age=0; Expires=…`. A browser ignores that for a `__Host-` cookie,
/// which must come with `Secure`; so the removal is sent with the attributes the cookie was
/// set with, once.
pub async fn dress_cookie_removal(
    State(app): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut resp = next.run(req).await;
    let https = app.config.https;
    let name = cookie_name(https).as_bytes();
    let is_removal = |v: &HeaderValue| {
        v.as_bytes()
            .strip_prefix(name)
            .is_some_and(|rest| rest.starts_with(b"=;"))
    };
    let headers = resp.headers_mut();
    if headers.get_all(header::SET_COOKIE).iter().any(is_removal) {
        let kept: Vec<HeaderValue> = headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter(|v| !is_removal(v))
            .cloned()
            .collect();
        headers.remove(header::SET_COOKIE);
        for v in kept {
            headers.append(header::SET_COOKIE, v);
        }
        headers.append(header::SET_COOKIE, clear_cookie(https));
    }
    resp
}

/// The browser's session, if it has a live one: its id as the secret it is, the user it is
/// signed in as (none while signing in), and tower-sessions' handle on it.
pub struct BrowserSession {
    pub token: SessionToken,
    pub user_id: Option<String>,
    pub handle: tower_sessions::Session,
}

impl FromRequestParts<AppState> for Option<BrowserSession> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _app: &AppState) -> Result<Self, Error> {
        let Some(handle) = parts.extensions.get::<tower_sessions::Session>().cloned() else {
            return Ok(None);
        };
        if handle.id().is_none() {
            return Ok(None);
        }
        // Loads the record: the store answers nothing for an unknown, ended or timed-out
        // session, and tower-sessions then forgets the id.
        let user_id: Option<String> = handle
            .get(USER_KEY)
            .await
            .map_err(SessionError::from)?
            .flatten();
        Ok(handle.id().map(|id| BrowserSession {
            token: Sessions::token(id),
            user_id,
            handle,
        }))
    }
}

/// A signed-in user's session.
pub struct SignedIn {
    pub token: SessionToken,
    pub user_id: String,
}

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Error> {
        match <Option<BrowserSession>>::from_request_parts(parts, app).await? {
            Some(BrowserSession {
                token,
                user_id: Some(user_id),
                ..
            }) => Ok(SignedIn { token, user_id }),
            _ => Err(Error::Unauthorized),
        }
    }
}

/// Refuses a state-changing request that is not same-origin or lacks the CSRF token.
pub(crate) fn require_csrf(
    app: &AppState,
    headers: &HeaderMap,
    token: &SessionToken,
    form_token: Option<&str>,
) -> Result<(), Error> {
    // Browsers send `Origin: null` on form posts from a page whose Referrer-Policy is
    // `no-referrer` (all of ours); `Sec-Fetch-Site`, which no page can set, decides then.
    let origin_ok = match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        Some(origin) if origin != "null" => origin == app.config.public_url,
        _ => headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) == Some("same-origin"),
    };
    let presented = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .or(form_token)
        .unwrap_or_default();
    if origin_ok && Sessions::csrf_ok(token, presented) {
        Ok(())
    } else {
        Err(Error::Csrf)
    }
}

fn redirect(to: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    return_to: Option<String>,
}

/// `GET /login/{provider}` — start sign-in.
#[utoipa::path(
    get,
    path = "/login/{provider}",
    operation_id = "login",
    summary = "Start sign-in (authorization code + PKCE S256 + state + nonce); optional return_to",
    params(("provider" = String, Path), ("return_to" = Option<String>, Query)),
    responses(
        (status = 303, description = "Redirect"),
        (status = 404, description = "code: unknown_provider", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "code: rate_limited", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 502, description = "code: provider_error", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn login(
    State(app): State<AppState>,
    handle: tower_sessions::Session,
    current: Option<BrowserSession>,
    Path(provider): Path<String>,
    Query(q): Query<LoginQuery>,
) -> Result<Response, Error> {
    // Discovery first, so an unknown provider leaves no session and no flow behind.
    let prepared = app.oauth.prepare(&provider, Purpose::Login).await?;
    let token = match current {
        Some(s) => s.token,
        None => {
            // A session for the flow to be bound to, not signed in as anyone yet.
            handle
                .insert(USER_KEY, Option::<String>::None)
                .await
                .map_err(SessionError::from)?;
            handle.save().await.map_err(SessionError::from)?;
            handle
                .id()
                .map(Sessions::token)
                .ok_or(Error::Unauthorized)?
        }
    };
    let mut tx = app.db.begin().await?;
    let url = app
        .oauth
        .start(&mut tx, prepared, &token, &[], q.return_to.as_deref())
        .await?;
    tx.commit().await?;
    Ok(redirect(&url))
}

#[derive(Debug, Deserialize)]
pub struct ConnectQuery {
    scopes: Option<String>,
    return_to: Option<String>,
}

/// `a,b c` as a scope list.
fn scope_list(raw: Option<&str>) -> Vec<String> {
    raw.unwrap_or_default()
        .split([',', ' '])
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Whether a navigation was started by another site (`Sec-Fetch-Site`, which no page can
/// set, or an `Origin` other than ours). `same-site` counts: a sibling subdomain is not
/// this origin. Requests without fetch metadata (non-browser clients, old browsers) and
/// `none` (typed, bookmarked) are not.
fn cross_site(app: &AppState, headers: &HeaderMap) -> bool {
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    let foreign_origin = headers
        .get(header::ORIGIN)
        .is_some_and(|o| o.as_bytes() != app.config.public_url.as_bytes());
    matches!(fetch_site, Some("cross-site" | "same-site")) || foreign_origin
}

/// `GET /connect/{provider}?scopes=a,b` — link a provider account with those scopes. A
/// navigation from another site gets a confirmation page instead: the session cookie is
/// `SameSite=Lax`, so any site could otherwise start a flow that a provider remembering
/// its consent completes without asking.
#[utoipa::path(
    get,
    path = "/connect/{provider}",
    operation_id = "connect",
    summary = "Link a provider account with ?scopes=a,b (incremental); optional return_to. \
               A navigation from another site (Sec-Fetch-Site cross-site or same-site, or a \
               foreign Origin) gets a 200 confirmation page instead, starting nothing",
    params(
        ("provider" = String, Path),
        ("scopes" = Option<String>, Query, description = "comma-separated"),
        ("return_to" = Option<String>, Query),
    ),
    security(("session" = [])),
    responses(
        (status = 303, description = "Redirect"),
        (status = 200, description = "The confirmation page (HTML), for a cross-site navigation"),
        (status = 401, description = "code: unauthorized", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "code: unknown_provider", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "code: rate_limited", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 502, description = "code: provider_error", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn connect(
    State(app): State<AppState>,
    me: SignedIn,
    headers: HeaderMap,
    Path(provider): Path<String>,
    Query(q): Query<ConnectQuery>,
) -> Result<Response, Error> {
    let scopes = scope_list(q.scopes.as_deref());
    if cross_site(&app, &headers) {
        let (display, all) = app.oauth.connect_plan(&provider, &scopes)?;
        let page = super::pages::ConfirmConnect {
            provider: &provider,
            display: &display,
            scopes: &all,
            extra: &scopes,
            return_to: q.return_to.as_deref(),
            csrf: &Sessions::csrf_token(&me.token),
        };
        return Ok(page.into_response());
    }
    start_connect(&app, me, &provider, &scopes, q.return_to.as_deref()).await
}

/// The confirmation page's form.
// The CSRF token is not printable: no `Debug`.
#[derive(Deserialize, Default, utoipa::ToSchema)]
pub struct ConnectForm {
    csrf_token: Option<String>,
    /// comma-separated, as in the GET
    scopes: Option<String>,
    return_to: Option<String>,
}

/// `POST /connect/{provider}` — the confirmation page's Continue button.
#[utoipa::path(
    post,
    path = "/connect/{provider}",
    operation_id = "connect_confirmed",
    summary = "The confirmation page's Continue: start the connect flow",
    params(("provider" = String, Path)),
    request_body(content = ConnectForm, content_type = "application/x-www-form-urlencoded"),
    security(("session" = [], "csrf" = [])),
    responses(
        (status = 303, description = "Redirect"),
        (status = 401, description = "code: unauthorized", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "code: csrf_failed", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "code: unknown_provider", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "code: rate_limited", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 502, description = "code: provider_error", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn connect_confirmed(
    State(app): State<AppState>,
    me: SignedIn,
    headers: HeaderMap,
    Path(provider): Path<String>,
    form: Result<axum::extract::Form<ConnectForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, Error> {
    let f = form.map(|f| f.0).unwrap_or_default();
    require_csrf(&app, &headers, &me.token, f.csrf_token.as_deref())?;
    let scopes = scope_list(f.scopes.as_deref());
    start_connect(&app, me, &provider, &scopes, f.return_to.as_deref()).await
}

/// Starts a connect flow and sends the browser to the provider.
async fn start_connect(
    app: &AppState,
    me: SignedIn,
    provider: &str,
    scopes: &[String],
    return_to: Option<&str>,
) -> Result<Response, Error> {
    let purpose = Purpose::Connect {
        user_id: me.user_id,
    };
    let prepared = app.oauth.prepare(provider, purpose).await?;
    let mut tx = app.db.begin().await?;
    let url = app
        .oauth
        .start(&mut tx, prepared, &me.token, scopes, return_to)
        .await?;
    tx.commit().await?;
    Ok(redirect(&url))
}

/// `GET /oauth/callback/{provider}` — the one redirect URI registered at every provider.
/// A sign-in moves the browser to a new session id of the user (tower-sessions' `cycle_id`
/// ends the one it came with), saved before the answer leaves; the sign-in's audit event
/// committed before it.
#[utoipa::path(
    get,
    path = "/oauth/callback/{provider}",
    operation_id = "callback",
    summary = "The redirect URI registered at every provider",
    params(("provider" = String, Path)),
    responses(
        (status = 303, description = "Redirect"),
        (status = 400, description = "code: invalid_state, provider_error", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "code: already_linked", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "code: rate_limited", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 502, description = "code: provider_error", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn callback(
    State(app): State<AppState>,
    current: Option<BrowserSession>,
    Path(provider): Path<String>,
    Query(cb): Query<Callback>,
) -> Result<Response, Error> {
    let (token, user_id, handle) = match current {
        Some(s) => (Some(s.token), s.user_id, Some(s.handle)),
        None => (None, None, None),
    };
    let done = app
        .oauth
        .finish(token.as_ref(), user_id.as_deref(), &provider, cb)
        .await?;
    if done.signed_in
        && let Some(handle) = handle
    {
        handle.cycle_id().await.map_err(SessionError::from)?;
        handle
            .insert(USER_KEY, &done.user_id)
            .await
            .map_err(SessionError::from)?;
        handle.save().await.map_err(SessionError::from)?;
    }
    Ok(redirect(&done.return_to))
}

/// The CSRF token is not printable: no `Debug`.
#[derive(Deserialize, Default)]
pub struct CsrfForm {
    csrf_token: Option<String>,
}

/// `POST /logout` — end this session.
#[utoipa::path(
    post,
    path = "/logout",
    operation_id = "logout",
    summary = "End this session",
    security(("session" = [], "csrf" = [])),
    responses(
        (status = 303, description = "Redirect"),
        (status = 401, description = "code: unauthorized", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "code: csrf_failed", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn logout(
    State(app): State<AppState>,
    me: SignedIn,
    headers: HeaderMap,
    form: Result<axum::extract::Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, Error> {
    let form_token = form.as_ref().ok().and_then(|f| f.csrf_token.as_deref());
    require_csrf(&app, &headers, &me.token, form_token)?;
    let mut tx = app.db.begin().await?;
    app.sessions.end_in(&mut tx, &me.token).await?;
    audit::append(
        &mut tx,
        app.clock.unix_ms(),
        Event::new(
            Kind::SignOut,
            Actor::User(me.user_id.clone()),
            format!("user:{}", me.user_id),
        ),
    )
    .await?;
    tx.commit().await?;
    let mut resp = redirect("/");
    resp.headers_mut()
        .insert(header::SET_COOKIE, clear_cookie(app.config.https));
    Ok(resp)
}

#[cfg(test)]
mod tests;
