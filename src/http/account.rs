//! The JSON the account page needs (SPEC §5): the user, their sessions and connections,
//! signing out everywhere and disconnecting. Cookie routes: the session, and for a change
//! the CSRF checks of `browser::require_csrf`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::bodies::{
    ConnectionItem, ConnectionList, Disconnection, Identity, Me, SessionItem, SessionList, UserRef,
};
use super::browser::{SignedIn, clear_cookie, require_csrf};
use crate::audit::{self, Actor, Event, Kind};
use crate::error::Error;
use crate::oauth::Disconnected;
use crate::sessions::Sessions;

/// `GET /api/me` — the signed-in user, identities and CSRF token.
#[utoipa::path(
    get,
    path = "/api/me",
    operation_id = "me",
    summary = "The signed-in user, identities and CSRF token",
    security(("session" = [])),
    responses(
        (status = 200, description = "Me", body = Me),
        (status = 401, description = "code: unauthorized", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn me(State(app): State<AppState>, me: SignedIn) -> Result<Json<Me>, Error> {
    let ids = app.oauth.identities(&me.user_id).await?;
    let identities = ids
        .into_iter()
        .map(|(provider, subject, email, name)| Identity {
            provider,
            subject,
            email,
            name,
        })
        .collect();
    Ok(Json(Me {
        csrf_token: Sessions::csrf_token(&me.token),
        user: UserRef { id: me.user_id },
        identities,
    }))
}

/// `GET /api/sessions` — the user's own sessions.
#[utoipa::path(
    get,
    path = "/api/sessions",
    operation_id = "sessions",
    summary = "The user's sessions",
    security(("session" = [])),
    responses(
        (status = 200, description = "Sessions", body = SessionList),
        (status = 401, description = "code: unauthorized", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn sessions(
    State(app): State<AppState>,
    me: SignedIn,
) -> Result<Json<SessionList>, Error> {
    let list = app.sessions.list(&me.user_id, &me.token).await?;
    let sessions = list
        .into_iter()
        .map(|s| SessionItem {
            id: s.handle,
            current: s.current,
            created_at: crate::clock::rfc3339(s.created_at),
            last_seen_at: crate::clock::rfc3339(s.last_seen_at),
        })
        .collect();
    Ok(Json(SessionList { sessions }))
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
#[utoipa::path(
    delete,
    path = "/api/sessions",
    operation_id = "end_all_sessions",
    summary = "Sign out everywhere (also revokes the user's delegations)",
    security(("session" = [], "csrf" = [])),
    responses(
        (status = 204, description = "Signed out everywhere"),
        (status = 401, description = "code: unauthorized", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "code: csrf_failed", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
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
#[utoipa::path(
    get,
    path = "/api/connections",
    operation_id = "connections",
    summary = "The user's connections",
    security(("session" = [])),
    responses(
        (status = 200, description = "Connections", body = ConnectionList),
        (status = 401, description = "code: unauthorized", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn connections(
    State(app): State<AppState>,
    me: SignedIn,
) -> Result<Json<ConnectionList>, Error> {
    let list = app.vault.list(&me.user_id).await?;
    let connections = list
        .iter()
        .map(|c| ConnectionItem {
            id: c.id().to_owned(),
            provider: c.provider().to_owned(),
            scopes: c.scopes().into_iter().map(str::to_owned).collect(),
            status: c.status().to_owned(),
            created_at: crate::clock::rfc3339(c.created_at()),
            last_used_at: c.last_used_at().map(crate::clock::rfc3339),
        })
        .collect();
    Ok(Json(ConnectionList { connections }))
}

/// `DELETE /api/connections/{id}` — revoke at the provider where it can, then erase.
#[utoipa::path(
    delete,
    path = "/api/connections/{id}",
    operation_id = "disconnect",
    summary = "Disconnect: revoke at the provider where offered, then erase",
    params(("id" = String, Path, description = "the connection")),
    security(("session" = [], "csrf" = [])),
    responses(
        (status = 200, description = "Erased", body = Disconnection),
        (status = 401, description = "code: unauthorized", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "code: csrf_failed", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "code: not_found", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "code: provider_unavailable", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn disconnect(
    State(app): State<AppState>,
    me: SignedIn,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Disconnection>, Error> {
    require_csrf(&app, &headers, &me.token, None)?;
    match app
        .broker
        .disconnect(Actor::User(me.user_id.clone()), &me.user_id, &id)
        .await?
    {
        Disconnected::Erased { revoked } => Ok(Json(Disconnection {
            erased: true,
            revoked,
            detail: None,
        })),
        Disconnected::ErasedRevocationFailed(why) => Ok(Json(Disconnection {
            erased: true,
            revoked: false,
            detail: Some(format!("revocation failed: {why}")),
        })),
        Disconnected::PendingRetry => Err(Error::ProviderUnavailable),
    }
}
