//! Security-team routes (SPEC §5): keys, the audit trail, revoking a user. For a signed-in
//! user with the admin role: one of their identities is listed in `admins` as
//! `provider:subject`, or as `provider:email` with the provider vouching for the email.
//! State-changing routes need the CSRF checks of every cookie request.

use axum::Json;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::bodies::{AuditEvent, AuditPage, Keys, RewrapStarted, Rotated, UserRevoked};
use super::browser::{SignedIn, require_csrf};
use crate::audit::Filter;
use crate::audit::{self, Actor, Event, Kind, Outcome};
use crate::clock::rfc3339;
use crate::error::Error;

/// A signed-in user with the admin role.
pub struct AdminUser(pub SignedIn);

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Error> {
        let me = SignedIn::from_request_parts(parts, app).await?;
        if is_admin(app, &me.user_id).await? {
            Ok(AdminUser(me))
        } else {
            Err(Error::Forbidden)
        }
    }
}

/// Whether any identity of `user_id` is in the `admins` list.
pub async fn is_admin(app: &AppState, user_id: &str) -> Result<bool, Error> {
    if app.config.admins.is_empty() {
        return Ok(false);
    }
    let keys = app.oauth.identity_keys(user_id).await?;
    Ok(keys.iter().any(|(provider, subject, email, verified)| {
        app.config
            .admins
            .iter()
            .any(|rule| rule.matches(provider, subject, email.as_deref(), *verified))
    }))
}

/// `GET /admin/keys` — the shape of `keys status --json`.
#[utoipa::path(
    get,
    path = "/admin/keys",
    operation_id = "keys",
    summary = "Key versions (as `keys status --json`)",
    security(("session" = [])),
    responses(
        (status = 200, description = "Keys", body = Keys),
        (status = 401, description = "code: unauthorized", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "code: forbidden", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn keys(State(app): State<AppState>, _admin: AdminUser) -> Result<Json<Keys>, Error> {
    Ok(Json(app.vault.status().await?.into()))
}

/// `POST /admin/keys/rotate` — a new primary KEK.
#[utoipa::path(
    post,
    path = "/admin/keys/rotate",
    operation_id = "rotate",
    summary = "A new primary key-encryption key",
    security(("session" = [], "csrf" = [])),
    responses(
        (status = 200, description = "Rotated", body = Rotated),
        (status = 401, description = "code: unauthorized", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "code: forbidden, csrf_failed", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn rotate(
    State(app): State<AppState>,
    AdminUser(me): AdminUser,
    headers: HeaderMap,
) -> Result<Json<Rotated>, Error> {
    require_csrf(&app, &headers, &me.token, None)?;
    let version = app.vault.rotate(Actor::Admin(me.user_id.clone())).await?;
    Ok(Json(Rotated { primary: version }))
}

/// `POST /admin/keys/rewrap` — re-wraps every record under an older KEK, in the
/// background (it is online and resumable); progress shows in `GET /admin/keys`.
#[utoipa::path(
    post,
    path = "/admin/keys/rewrap",
    operation_id = "rewrap",
    summary = "Re-wrap every record under an older key, in the background",
    security(("session" = [], "csrf" = [])),
    responses(
        (status = 202, description = "Started", body = RewrapStarted),
        (status = 401, description = "code: unauthorized", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "code: forbidden, csrf_failed", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn rewrap(
    State(app): State<AppState>,
    AdminUser(me): AdminUser,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<RewrapStarted>), Error> {
    require_csrf(&app, &headers, &me.token, None)?;
    let vault = app.vault.clone();
    let actor = Actor::Admin(me.user_id.clone());
    tokio::spawn(async move {
        match vault.rewrap(actor, 1000).await {
            Ok(r) => tracing::info!(
                rewrapped = r.rewrapped,
                failed = r.failed.len(),
                "rewrap finished"
            ),
            Err(e) => tracing::error!(error = %e, "rewrap failed"),
        }
    });
    Ok((StatusCode::ACCEPTED, Json(RewrapStarted { started: true })))
}

/// `GET /admin/audit`'s filters and paging.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    user: Option<String>,
    agent: Option<String>,
    kind: Option<String>,
    /// RFC 3339, inclusive.
    since: Option<String>,
    /// RFC 3339, exclusive.
    until: Option<String>,
    /// Sequence number to continue after (the previous page's `next_after`).
    after: Option<i64>,
    limit: Option<i64>,
}

fn millis(name: &str, text: Option<&str>) -> Result<Option<i64>, Error> {
    text.map(|t| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .map(|d| i64::try_from(d.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX))
            .map_err(|_| Error::BadRequest(format!("{name}: not an RFC 3339 time")))
    })
    .transpose()
}

/// `GET /admin/audit?user=&agent=&kind=&since=&until=&after=&limit=` — events, oldest
/// first, one page at a time.
#[utoipa::path(
    get,
    path = "/admin/audit",
    operation_id = "audit_events",
    summary = "Audit events, oldest first; filters user, agent, kind, since, until; paging after, limit",
    params(AuditQuery),
    security(("session" = [])),
    responses(
        (status = 200, description = "Events", body = AuditPage),
        (status = 400, description = "code: invalid_request", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "code: unauthorized", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "code: forbidden", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn audit_events(
    State(app): State<AppState>,
    _admin: AdminUser,
    Query(q): Query<AuditQuery>,
) -> Result<Json<AuditPage>, Error> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Error::BadRequest("limit: 1 to 1000".into()));
    }
    let filter = Filter {
        user: q.user.map(|u| format!("user:{u}")),
        actor: q.agent.map(|a| format!("agent:{a}")),
        kind: q.kind,
        from_ms: millis("since", q.since.as_deref())?,
        until_ms: millis("until", q.until.as_deref())?,
    };
    let rows = crate::audit::search(&app.db, &filter, q.after.unwrap_or(0), limit).await?;
    let next_after = (rows.len() == usize::try_from(limit).unwrap_or(0))
        .then(|| rows.last().map(|r| r.seq))
        .flatten();
    let events = rows
        .into_iter()
        .map(|r| AuditEvent {
            seq: r.seq,
            at: rfc3339(r.at_ms / 1000),
            at_ms: r.at_ms,
            detail: serde_json::from_str::<Value>(&r.detail).unwrap_or(Value::Null),
            hash: crate::crypto::hex(&r.hash),
            kind: r.kind,
            actor: r.actor,
            subject: r.subject,
            outcome: r.outcome,
            request_id: r.request_id,
        })
        .collect();
    Ok(Json(AuditPage { events, next_after }))
}

/// `POST /admin/users/{id}/revoke` — ends every session, delegation and connection of
/// the user. Access ends first, in one transaction with the `user.revoked` event, so no
/// agent can use a connection while the providers are asked to revoke; then each
/// connection is revoked at its provider where offered and erased (each a `disconnect`
/// event by the admin); one a provider could not revoke is erased all the same.
#[utoipa::path(
    post,
    path = "/admin/users/{id}/revoke",
    operation_id = "revoke_user",
    summary = "End every session, delegation and connection of a user",
    params(("id" = String, Path, description = "the user")),
    security(("session" = [], "csrf" = [])),
    responses(
        (status = 200, description = "Revoked", body = UserRevoked),
        (status = 401, description = "code: unauthorized", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "code: forbidden, csrf_failed", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn revoke_user(
    State(app): State<AppState>,
    AdminUser(me): AdminUser,
    headers: HeaderMap,
    Path(user_id): Path<String>,
) -> Result<Json<UserRevoked>, Error> {
    require_csrf(&app, &headers, &me.token, None)?;
    let admin = Actor::Admin(me.user_id.clone());
    let mut tx = app.db.begin().await?;
    let sessions = app.sessions.end_all(&mut tx, &user_id).await?;
    let delegations = app.agents.revoke_all(&mut tx, &user_id).await?;
    let grants = app.grants.revoke_all(&mut tx, &user_id).await?;
    let event = Event::new(Kind::UserRevoked, admin.clone(), format!("user:{user_id}"))
        .detail(json!({ "sessions": sessions, "delegations": delegations, "grants": grants }));
    audit::append(&mut tx, app.clock.unix_ms(), event).await?;
    tx.commit().await?;

    let (mut connections, mut revoked) = (0u64, 0u64);
    for c in app.vault.list(&user_id).await? {
        match app.broker.disconnect(admin.clone(), &user_id, c.id()).await {
            Ok(crate::oauth::Disconnected::PendingRetry) => {}
            Ok(crate::oauth::Disconnected::Erased { revoked: true }) => {
                connections += 1;
                revoked += 1;
            }
            Ok(_) => connections += 1,
            Err(e) => {
                tracing::warn!(connection = c.id(), error = %e, "revocation during user revoke failed");
            }
        }
    }
    // What is left (the provider unavailable, or an error) is erased without revocation.
    for c in app.vault.list(&user_id).await? {
        let mut tx = app.db.begin().await?;
        if app.vault.delete(&mut tx, &admin, c.id()).await? {
            let event = Event::new(
                Kind::Disconnect,
                admin.clone(),
                format!("connection:{}", c.id()),
            )
            .outcome(Outcome::Failure)
            .detail(json!({ "revoked": false, "provider": c.provider(), "by": "user revoke" }));
            audit::append(&mut tx, app.clock.unix_ms(), event).await?;
            connections += 1;
        }
        tx.commit().await?;
    }
    Ok(Json(UserRevoked {
        sessions,
        delegations,
        connections,
        revoked_at_provider: revoked,
    }))
}
