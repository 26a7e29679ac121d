//! Browser routes (SPEC §5, §6): sign-in, connect, the OAuth callback, logout, and the
//! JSON the account page needs. The session lives in one cookie: `__Host-strongbox`
//! (Secure) over https, `strongbox` on plain-http development. State-changing requests
//! need a same-origin `Origin` (or `Sec-Fetch-Site: same-origin`) and the CSRF token; a
//! connect flow that another site navigates to is confirmed on a page of ours first.

use axum::Json;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cookie::{Cookie, SameSite};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use crate::audit::{self, Actor, Event, Kind};
use crate::error::Error;
use crate::oauth::{Callback, Disconnected, Purpose};
use crate::secret::SessionToken;
use crate::sessions::{Session, Sessions};

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

fn set_cookie(https: bool, token: &SessionToken) -> HeaderValue {
    header_value(&session_cookie(https, token.reveal()))
}

/// Ends the session cookie now. Only `Max-Age=0`, not the `Expires` in the past that
/// `Cookie::make_removal` adds: the attributes stay those the cookie was set with.
fn clear_cookie(https: bool) -> HeaderValue {
    let mut cookie = session_cookie(https, "");
    cookie.set_max_age(cookie::time::Duration::ZERO);
    header_value(&cookie)
}

/// The session cookie's secret, if the request carries one (the first of that name, in
/// any of its `Cookie` headers).
fn cookie_token(headers: &HeaderMap, https: bool) -> Option<SessionToken> {
    let name = cookie_name(https);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| SessionToken::new(c.value().to_owned()))
}

/// The browser's session, if it has a live one.
pub struct BrowserSession {
    pub token: SessionToken,
    pub session: Session,
}

impl FromRequestParts<AppState> for Option<BrowserSession> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Error> {
        let Some(token) = cookie_token(&parts.headers, app.config.https) else {
            return Ok(None);
        };
        Ok(app
            .sessions
            .resume(&token)
            .await?
            .map(|session| BrowserSession { token, session }))
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
        let s = <Option<BrowserSession>>::from_request_parts(parts, app).await?;
        match s {
            Some(BrowserSession {
                token,
                session:
                    Session {
                        user_id: Some(user_id),
                        ..
                    },
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
pub async fn login(
    State(app): State<AppState>,
    current: Option<BrowserSession>,
    Path(provider): Path<String>,
    Query(q): Query<LoginQuery>,
) -> Result<Response, Error> {
    // Discovery before the transaction; then one transaction, so an unknown provider
    // leaves no session and no flow behind.
    let prepared = app.oauth.prepare(&provider, Purpose::Login).await?;
    let mut tx = app.db.begin().await?;
    let (token, fresh) = match current {
        Some(s) => (s.token, false),
        None => (app.sessions.start(&mut tx, None).await?.0, true),
    };
    let url = app
        .oauth
        .start(&mut tx, prepared, &token, &[], q.return_to.as_deref())
        .await?;
    tx.commit().await?;
    let mut resp = redirect(&url);
    if fresh {
        resp.headers_mut()
            .insert(header::SET_COOKIE, set_cookie(app.config.https, &token));
    }
    Ok(resp)
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

/// The confirmation page's form. The CSRF token is not printable: no `Debug`.
#[derive(Deserialize, Default)]
pub struct ConnectForm {
    csrf_token: Option<String>,
    scopes: Option<String>,
    return_to: Option<String>,
}

/// `POST /connect/{provider}` — the confirmation page's Continue button.
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
pub async fn callback(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(provider): Path<String>,
    Query(cb): Query<Callback>,
) -> Result<Response, Error> {
    let token = cookie_token(&headers, app.config.https);
    let done = app.oauth.finish(token.as_ref(), &provider, cb).await?;
    let mut resp = redirect(&done.return_to);
    if let Some((token, _)) = done.session {
        resp.headers_mut()
            .insert(header::SET_COOKIE, set_cookie(app.config.https, &token));
    }
    Ok(resp)
}

/// The CSRF token is not printable: no `Debug`.
#[derive(Deserialize, Default)]
pub struct CsrfForm {
    csrf_token: Option<String>,
}

/// `POST /logout` — end this session.
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

/// `GET /api/me` — the signed-in user, identities and CSRF token.
pub async fn me(State(app): State<AppState>, me: SignedIn) -> Result<Json<Value>, Error> {
    let ids = app.oauth.identities(&me.user_id).await?;
    let identities: Vec<Value> = ids
        .into_iter()
        .map(|(provider, subject, email, name)| json!({ "provider": provider, "subject": subject, "email": email, "name": name }))
        .collect();
    Ok(Json(json!({
        "user": { "id": me.user_id },
        "identities": identities,
        "csrf_token": Sessions::csrf_token(&me.token),
    })))
}

/// `GET /api/sessions` — the user's own sessions.
pub async fn sessions(State(app): State<AppState>, me: SignedIn) -> Result<Json<Value>, Error> {
    let list = app.sessions.list(&me.user_id, &me.token).await?;
    let sessions: Vec<Value> = list
        .into_iter()
        .map(|s| json!({
            "id": s.handle, "current": s.current,
            "created_at": crate::clock::rfc3339(s.created_at), "last_seen_at": crate::clock::rfc3339(s.last_seen_at),
        }))
        .collect();
    Ok(Json(json!({ "sessions": sessions })))
}

/// Ends every session of the signed-in user, audited.
pub(crate) async fn end_all(app: &AppState, me: &SignedIn) -> Result<(), Error> {
    let mut tx = app.db.begin().await?;
    let ended = app.sessions.end_all(&mut tx, &me.user_id).await?;
    let delegations = app.agents.revoke_all(&mut tx, &me.user_id).await?;
    let grants = app.grants.revoke_all(&mut tx, &me.user_id).await?;
    let event = Event::new(
        Kind::SessionsRevoked,
        Actor::User(me.user_id.clone()),
        format!("user:{}", me.user_id),
    )
    .detail(json!({ "sessions": ended, "delegations": delegations, "grants": grants }));
    audit::append(&mut tx, app.clock.unix_ms(), event).await?;
    tx.commit().await?;
    Ok(())
}

/// `DELETE /api/sessions` — sign out everywhere.
pub async fn end_all_sessions(
    State(app): State<AppState>,
    me: SignedIn,
    headers: HeaderMap,
) -> Result<Response, Error> {
    require_csrf(&app, &headers, &me.token, None)?;
    end_all(&app, &me).await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, clear_cookie(app.config.https));
    Ok(resp)
}

/// `GET /api/connections` — the user's connections.
pub async fn connections(State(app): State<AppState>, me: SignedIn) -> Result<Json<Value>, Error> {
    let list = app.vault.list(&me.user_id).await?;
    let connections: Vec<Value> = list
        .iter()
        .map(|c| {
            json!({
                "id": c.id(), "provider": c.provider(), "scopes": c.scopes(), "status": c.status(),
                "created_at": crate::clock::rfc3339(c.created_at()),
                "last_used_at": c.last_used_at().map(crate::clock::rfc3339),
            })
        })
        .collect();
    Ok(Json(json!({ "connections": connections })))
}

/// `DELETE /api/connections/{id}` — revoke at the provider where it can, then erase.
pub async fn disconnect(
    State(app): State<AppState>,
    me: SignedIn,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    require_csrf(&app, &headers, &me.token, None)?;
    match app
        .broker
        .disconnect(Actor::User(me.user_id.clone()), &me.user_id, &id)
        .await? {
        Disconnected::Erased { revoked } => Ok(Json(json!({ "erased": true, "revoked": revoked })).into_response()),
        Disconnected::ErasedRevocationFailed(why) => {
            Ok(Json(json!({ "erased": true, "revoked": false, "detail": format!("revocation failed: {why}") })).into_response())
        }
        Disconnected::PendingRetry => Err(Error::ProviderUnavailable),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue, header};

    use super::{clear_cookie, cookie_token, set_cookie};
    use crate::secret::SessionToken;

    #[test]
    fn session_cookie_attributes() {
        let token = SessionToken::new("s3cr3t-Tok_en".to_owned());
        assert_eq!(
            set_cookie(false, &token),
            "strongbox=s3cr3t-Tok_en; HttpOnly; SameSite=Lax; Path=/"
        );
        assert_eq!(
            set_cookie(true, &token),
            "__Host-strongbox=s3cr3t-Tok_en; HttpOnly; SameSite=Lax; Secure; Path=/"
        );
        assert_eq!(
            clear_cookie(false),
            "strongbox=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0"
        );
        assert_eq!(
            clear_cookie(true),
            "__Host-strongbox=; HttpOnly; SameSite=Lax; Secure; Path=/; Max-Age=0"
        );
    }

    fn read(https: bool, cookies: &[&str]) -> Option<String> {
        let mut headers = HeaderMap::new();
        for c in cookies {
            headers.append(header::COOKIE, HeaderValue::from_str(c).unwrap());
        }
        cookie_token(&headers, https).map(|t| t.reveal().to_owned())
    }

    #[test]
    fn reads_the_session_cookie_by_its_exact_name() {
        assert_eq!(read(false, &[]), None);
        assert_eq!(read(false, &["strongbox=tok"]).as_deref(), Some("tok"));
        assert_eq!(
            read(false, &["a=1; xstrongbox=no;strongbox=tok ; b=2"]).as_deref(),
            Some("tok")
        );
        // Any of several `Cookie` headers; pieces that are no cookie are skipped.
        assert_eq!(
            read(false, &["a=1", "junk; =x; strongbox=tok"]).as_deref(),
            Some("tok")
        );
        // The first of that name wins, as before.
        assert_eq!(
            read(false, &["strongbox=one; strongbox=two"]).as_deref(),
            Some("one")
        );
        // The name follows the deployment: the other one is someone else's cookie.
        assert_eq!(read(true, &["strongbox=tok"]), None);
        assert_eq!(read(false, &["__Host-strongbox=tok"]), None);
        assert_eq!(
            read(true, &["strongbox=no; __Host-strongbox=tok"]).as_deref(),
            Some("tok")
        );
    }
}
