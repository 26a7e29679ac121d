//! Every route of the service as data: method, path, summary, who may call it, the
//! request and response schemas, and the error codes it answers. The authorization
//! server's routes and `/mcp` are in `authz.rs`.

use serde_json::{Value, json};

/// Problem document (RFC 9457).
pub(super) fn problem() -> Value {
    json!({"$ref": "#/components/schemas/Problem"})
}

/// RFC 6749 §5.2 / RFC 7591 §3.2.2 error (`{"error", "error_description"}`).
pub(super) fn oauth_error() -> Value {
    json!({"$ref": "#/components/schemas/OAuthError"})
}

pub(super) fn obj(props: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": props, "required": required})
}

pub(super) fn strings() -> Value {
    json!({"type": "array", "items": {"type": "string"}})
}

/// One operation: summary, who may call it, body schema, success response, error codes.
/// `Default` only so that an operation may leave out the rarely used fields
/// (`..Op::default()`).
#[derive(Default)]
pub(super) struct Op {
    pub(super) method: &'static str,
    pub(super) path: &'static str,
    pub(super) summary: &'static str,
    /// Alternative ways to authenticate, each the security schemes it needs together.
    pub(super) auth: &'static [&'static [&'static str]],
    pub(super) body: Option<Value>,
    pub(super) ok: (u16, &'static str, Option<Value>),
    /// Answered as problem documents.
    pub(super) errors: &'static [(u16, &'static str)],
    /// Answered as RFC 6749 §5.2 / RFC 7591 §3.2.2 JSON, which OAuth clients parse.
    pub(super) oauth_errors: &'static [(u16, &'static str)],
    /// Other answers, described in words: redirects, pages, another library's answers,
    /// or a header that comes with an error above.
    pub(super) also: &'static [(u16, &'static str)],
}

pub(super) const COOKIE: &[&[&str]] = &[&["session"]];
pub(super) const COOKIE_CSRF: &[&[&str]] = &[&["session", "csrf"]];
/// The agent secret with a delegation, or an access token from `/oauth2/token` alone.
pub(super) const AGENT: &[&[&str]] = &[&["agent", "delegation"], &["access_token"]];
pub(super) const PUBLIC: &[&[&str]] = &[];

pub(super) fn ops() -> Vec<Op> {
    let connection = obj(
        json!({"id": {"type": "string"}, "provider": {"type": "string"}, "scopes": strings(),
            "status": {"type": "string", "enum": ["active", "revoke_pending", "reauth_required"]},
            "created_at": {"type": "string", "format": "date-time"},
            "last_used_at": {"type": ["string", "null"], "format": "date-time"}}),
        &[
            "id",
            "provider",
            "scopes",
            "status",
            "created_at",
            "last_used_at",
        ],
    );
    let session = obj(
        json!({"id": {"type": "string"}, "current": {"type": "boolean"},
            "created_at": {"type": "string", "format": "date-time"},
            "last_seen_at": {"type": "string", "format": "date-time"}}),
        &["id", "current", "created_at", "last_seen_at"],
    );
    let event = obj(
        json!({"seq": {"type": "integer"}, "at": {"type": "string", "format": "date-time"},
            "at_ms": {"type": "integer"}, "kind": {"type": "string"}, "actor": {"type": "string"},
            "subject": {"type": "string"}, "outcome": {"type": "string"},
            "request_id": {"type": "string"}, "detail": {"type": ["object", "array", "string", "number", "boolean", "null"]}, "hash": {"type": "string"}}),
        &[
            "seq", "at", "kind", "actor", "subject", "outcome", "detail", "hash",
        ],
    );
    let keys = obj(
        json!({"versions": {"type": "array", "items": obj(json!({
            "version": {"type": "integer"}, "state": {"type": "string", "enum": ["primary", "decrypt-only", "retired"]},
            "created_at": {"type": "string", "format": "date-time"}, "records": {"type": "integer"},
            "wraps": {"type": "integer"}}), &["version", "state", "created_at", "records", "wraps"])},
            "rotation_due": {"type": "boolean"}}),
        &["versions", "rotation_due"],
    );
    let redirect = (303, "Redirect", None);
    let html = (200, "HTML page", None);
    vec![
        Op {
            method: "get",
            path: "/",
            summary: "Sign-in page, or the account page when signed in",
            auth: PUBLIC,
            body: None,
            ok: html,
            errors: &[],
            ..Op::default()
        },
        Op {
            method: "get",
            path: "/static/app.css",
            summary: "The pages' stylesheet",
            auth: PUBLIC,
            body: None,
            ok: (200, "CSS", None),
            errors: &[],
            ..Op::default()
        },
        Op {
            method: "get",
            path: "/login/{provider}",
            summary: "Start sign-in (authorization code + PKCE S256 + state + nonce); optional return_to",
            auth: PUBLIC,
            body: None,
            ok: redirect.clone(),
            errors: &[
                (404, "unknown_provider"),
                (429, "rate_limited"),
                (502, "provider_error"),
            ],
            ..Op::default()
        },
        Op {
            method: "get",
            path: "/connect/{provider}",
            summary: "Link a provider account with ?scopes=a,b (incremental); optional return_to. \
                      A navigation from another site (Sec-Fetch-Site cross-site or same-site, or a \
                      foreign Origin) gets a 200 confirmation page instead, starting nothing",
            auth: COOKIE,
            body: None,
            ok: redirect.clone(),
            errors: &[
                (401, "unauthorized"),
                (404, "unknown_provider"),
                (429, "rate_limited"),
                (502, "provider_error"),
            ],
            ..Op::default()
        },
        Op {
            method: "post",
            path: "/connect/{provider}",
            summary: "The confirmation page's Continue: start the connect flow",
            auth: COOKIE_CSRF,
            body: Some(json!({"csrf_token": {"type": "string"},
                "scopes": {"type": "string", "description": "comma-separated, as in the GET"},
                "return_to": {"type": "string"}})),
            ok: redirect.clone(),
            errors: &[
                (401, "unauthorized"),
                (403, "csrf_failed"),
                (404, "unknown_provider"),
                (429, "rate_limited"),
                (502, "provider_error"),
            ],
            ..Op::default()
        },
        Op {
            method: "get",
            path: "/oauth/callback/{provider}",
            summary: "The redirect URI registered at every provider",
            auth: PUBLIC,
            body: None,
            ok: redirect.clone(),
            errors: &[
                (400, "invalid_state"),
                (400, "provider_error"),
                (409, "already_linked"),
                (429, "rate_limited"),
                (502, "provider_error"),
            ],
            ..Op::default()
        },
        Op {
            method: "post",
            path: "/logout",
            summary: "End this session",
            auth: COOKIE_CSRF,
            body: None,
            ok: redirect.clone(),
            errors: &[(401, "unauthorized"), (403, "csrf_failed")],
            ..Op::default()
        },
        Op {
            method: "get",
            path: "/api/me",
            summary: "The signed-in user, identities and CSRF token",
            auth: COOKIE,
            body: None,
            ok: (
                200,
                "Me",
                Some(obj(
                    json!({"user": obj(json!({"id": {"type": "string"}}), &["id"]), "identities": {"type": "array", "items": {"type": "object"}}, "csrf_token": {"type": "string"}}),
                    &["user", "identities", "csrf_token"],
                )),
            ),
            errors: &[(401, "unauthorized")],
            ..Op::default()
        },
        Op {
            method: "get",
            path: "/api/connections",
            summary: "The user's connections",
            auth: COOKIE,
            body: None,
            ok: (
                200,
                "Connections",
                Some(obj(
                    json!({"connections": {"type": "array", "items": connection}}),
                    &["connections"],
                )),
            ),
            errors: &[(401, "unauthorized")],
            ..Op::default()
        },
        Op {
            method: "delete",
            path: "/api/connections/{id}",
            summary: "Disconnect: revoke at the provider where offered, then erase",
            auth: COOKIE_CSRF,
            body: None,
            ok: (
                200,
                "Erased",
                Some(obj(
                    json!({"erased": {"type": "boolean"}, "revoked": {"type": "boolean"}, "detail": {"type": "string"}}),
                    &["erased", "revoked"],
                )),
            ),
            errors: &[
                (401, "unauthorized"),
                (403, "csrf_failed"),
                (404, "not_found"),
                (503, "provider_unavailable"),
            ],
            ..Op::default()
        },
        Op {
            method: "post",
            path: "/connections/{id}/disconnect",
            summary: "Disconnect from the account page's form",
            auth: COOKIE_CSRF,
            body: Some(json!({"csrf_token": {"type": "string"}})),
            ok: redirect.clone(),
            errors: &[(401, "unauthorized"), (403, "csrf_failed")],
            ..Op::default()
        },
        Op {
            method: "get",
            path: "/api/sessions",
            summary: "The user's sessions",
            auth: COOKIE,
            body: None,
            ok: (
                200,
                "Sessions",
                Some(obj(
                    json!({"sessions": {"type": "array", "items": session}}),
                    &["sessions"],
                )),
            ),
            errors: &[(401, "unauthorized")],
            ..Op::default()
        },
        Op {
            method: "delete",
            path: "/api/sessions",
            summary: "Sign out everywhere (also revokes the user's delegations)",
            auth: COOKIE_CSRF,
            body: None,
            ok: (204, "Signed out everywhere", None),
            errors: &[(401, "unauthorized"), (403, "csrf_failed")],
            ..Op::default()
        },
        Op {
            method: "post",
            path: "/sessions/end-all",
            summary: "Sign out everywhere from the account page's form",
            auth: COOKIE_CSRF,
            body: Some(json!({"csrf_token": {"type": "string"}})),
            ok: redirect,
            errors: &[(401, "unauthorized"), (403, "csrf_failed")],
            ..Op::default()
        },
        Op {
            method: "post",
            path: "/api/delegations",
            summary: "Let an agent act for the signed-in user: tools, providers, ttl seconds (default 900, at most 3600)",
            auth: COOKIE_CSRF,
            body: Some(obj(
                json!({"agent": {"type": "string"}, "tools": strings(), "providers": strings(), "ttl": {"type": "integer", "minimum": 1, "maximum": 3600}}),
                &["agent"],
            )),
            ok: (
                201,
                "Delegation",
                Some(obj(
                    json!({"token": {"type": "string"}, "expires_at": {"type": "string", "format": "date-time"}}),
                    &["token", "expires_at"],
                )),
            ),
            errors: &[
                (400, "invalid_request"),
                (401, "unauthorized"),
                (403, "csrf_failed"),
                (422, "invalid_argument"),
            ],
            ..Op::default()
        },
        Op {
            method: "get",
            path: "/v1/tools",
            summary: "The tools the caller's delegation or access token covers, with descriptions and argument schemas",
            auth: AGENT,
            body: None,
            ok: (
                200,
                "The tools",
                Some(obj(
                    json!({"tools": {"type": "array", "items": obj(
                        json!({
                            "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
                            "description": {"type": "string"},
                            "input_schema": {"type": "object", "description": "JSON Schema of the arguments: path arguments are required strings, query names optional strings"},
                            "provider": {"type": "string"},
                            "scopes": strings(),
                        }),
                        &["name", "description", "input_schema", "provider", "scopes"],
                    )}}),
                    &["tools"],
                )),
            ),
            errors: &[
                (401, "unauthorized"),
                (401, "delegation_invalid"),
                (401, "delegation_expired"),
                (401, "invalid_token"),
                (403, "delegation_invalid"),
                (429, "rate_limited"),
                (503, "database_unavailable"),
            ],
            ..Op::default()
        },
        Op {
            method: "post",
            path: "/v1/tools/{tool}/run",
            summary: "Run a tool in the delegating user's context",
            auth: AGENT,
            body: Some(obj(
                json!({"args": {"type": "object", "description": "argument name to a string, number or boolean"}}),
                &[],
            )),
            ok: (
                200,
                "The provider's answer",
                Some(obj(
                    json!({"status": {"type": "integer"}, "headers": {"type": "object", "description": "allow-listed response headers"}, "body": {"type": ["object", "array", "string", "number", "boolean", "null"], "description": "the provider's JSON, or its text"}}),
                    &["status", "headers", "body"],
                )),
            ),
            errors: &[
                (400, "invalid_request"),
                (401, "unauthorized"),
                (401, "delegation_invalid"),
                (401, "delegation_expired"),
                (401, "invalid_token"),
                (403, "delegation_invalid"),
                (403, "tool_not_delegated"),
                (403, "policy_denied"),
                (404, "unknown_tool"),
                (409, "not_connected"),
                (409, "insufficient_scope"),
                (409, "reauth_required"),
                (422, "invalid_argument"),
                (429, "rate_limited"),
                (502, "provider_error"),
                (503, "provider_unavailable"),
                (503, "credential_changed"),
                (503, "database_unavailable"),
            ],
            ..Op::default()
        },
        Op {
            method: "post",
            path: "/v1/credentials/{provider}",
            summary: "Raw release of the access token where policy allows; refreshed first if near expiry",
            auth: AGENT,
            body: Some(obj(json!({"scopes": strings()}), &[])),
            ok: (
                200,
                "Credential",
                Some(obj(
                    json!({"access_token": {"type": "string"}, "token_type": {"type": "string"}, "expires_at": {"type": ["string", "null"], "format": "date-time"}, "scopes": strings()}),
                    &["access_token", "token_type", "expires_at", "scopes"],
                )),
            ),
            errors: &[
                (400, "invalid_request"),
                (401, "unauthorized"),
                (401, "delegation_invalid"),
                (401, "delegation_expired"),
                (401, "invalid_token"),
                (403, "delegation_invalid"),
                (403, "provider_not_delegated"),
                (403, "policy_denied"),
                (409, "not_connected"),
                (409, "insufficient_scope"),
                (409, "reauth_required"),
                (429, "rate_limited"),
                (502, "provider_error"),
                (503, "provider_unavailable"),
                (503, "credential_changed"),
                (503, "database_unavailable"),
            ],
            ..Op::default()
        },
        Op {
            method: "get",
            path: "/admin/keys",
            summary: "Key versions (as `keys status --json`)",
            auth: COOKIE,
            body: None,
            ok: (200, "Keys", Some(keys)),
            errors: &[(401, "unauthorized"), (403, "forbidden")],
            ..Op::default()
        },
        Op {
            method: "post",
            path: "/admin/keys/rotate",
            summary: "A new primary key-encryption key",
            auth: COOKIE_CSRF,
            body: None,
            ok: (
                200,
                "Rotated",
                Some(obj(json!({"primary": {"type": "integer"}}), &["primary"])),
            ),
            errors: &[
                (401, "unauthorized"),
                (403, "forbidden"),
                (403, "csrf_failed"),
            ],
            ..Op::default()
        },
        Op {
            method: "post",
            path: "/admin/keys/rewrap",
            summary: "Re-wrap every record under an older key, in the background",
            auth: COOKIE_CSRF,
            body: None,
            ok: (
                202,
                "Started",
                Some(obj(json!({"started": {"type": "boolean"}}), &["started"])),
            ),
            errors: &[
                (401, "unauthorized"),
                (403, "forbidden"),
                (403, "csrf_failed"),
            ],
            ..Op::default()
        },
        Op {
            method: "get",
            path: "/admin/audit",
            summary: "Audit events, oldest first; filters user, agent, kind, since, until; paging after, limit",
            auth: COOKIE,
            body: None,
            ok: (
                200,
                "Events",
                Some(obj(
                    json!({"events": {"type": "array", "items": event}, "next_after": {"type": ["integer", "null"]}}),
                    &["events", "next_after"],
                )),
            ),
            errors: &[
                (400, "invalid_request"),
                (401, "unauthorized"),
                (403, "forbidden"),
            ],
            ..Op::default()
        },
        Op {
            method: "post",
            path: "/admin/users/{id}/revoke",
            summary: "End every session, delegation and connection of a user",
            auth: COOKIE_CSRF,
            body: None,
            ok: (
                200,
                "Revoked",
                Some(obj(
                    json!({"sessions": {"type": "integer"}, "delegations": {"type": "integer"}, "connections": {"type": "integer"}, "revoked_at_provider": {"type": "integer"}}),
                    &["sessions", "delegations", "connections"],
                )),
            ),
            errors: &[
                (401, "unauthorized"),
                (403, "forbidden"),
                (403, "csrf_failed"),
            ],
            ..Op::default()
        },
        Op {
            method: "get",
            path: "/healthz",
            summary: "Process up",
            auth: PUBLIC,
            body: None,
            ok: (200, "Up", None),
            errors: &[],
            ..Op::default()
        },
        Op {
            method: "get",
            path: "/readyz",
            summary: "Database and keys usable",
            auth: PUBLIC,
            body: None,
            ok: (200, "Ready", None),
            errors: &[(503, "not_ready")],
            ..Op::default()
        },
        Op {
            method: "get",
            path: "/metrics",
            summary: "Prometheus text",
            auth: PUBLIC,
            body: None,
            ok: (200, "Metrics", None),
            errors: &[],
            ..Op::default()
        },
        Op {
            method: "get",
            path: "/openapi.json",
            summary: "This document",
            auth: PUBLIC,
            body: None,
            ok: (200, "OpenAPI 3.1", None),
            errors: &[],
            ..Op::default()
        },
    ]
}
