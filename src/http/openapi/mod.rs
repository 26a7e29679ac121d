//! `GET /openapi.json`: every route of SPEC §5, §11 and §12 with its method, parameters,
//! request and response schemas and error codes. The routes are written as data in
//! `routes.rs` and `authz.rs`; the document is parsed into `utoipa`'s OpenAPI 3.1 model
//! once, at first use, so a malformed entry fails the test suite
//! (`openapi_matches_the_router`), which also checks it against the router's routes.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

mod authz;
mod routes;
use routes::{Op, oauth_error, obj, problem};

/// Every operation: SPEC §5's, then the authorization server's and `/mcp`.
fn ops() -> Vec<Op> {
    let mut all = routes::ops();
    all.extend(authz::ops());
    all
}

fn operation(op: &Op) -> Value {
    let mut responses = serde_json::Map::new();
    let mut ok = json!({"description": op.ok.1});
    if let (Some(schema), Some(m)) = (&op.ok.2, ok.as_object_mut()) {
        m.insert(
            "content".into(),
            json!({"application/json": {"schema": schema}}),
        );
    }

    responses.insert(op.ok.0.to_string(), ok);
    // Each other status once, however many lists name it: what it means, and the bodies
    // it may carry.
    let statuses: BTreeSet<u16> = op
        .errors
        .iter()
        .chain(op.oauth_errors)
        .chain(op.also)
        .map(|(s, _)| *s)
        .collect();
    for status in statuses {
        let at = |list: &[(u16, &'static str)]| -> Vec<&'static str> {
            list.iter()
                .filter(|(s, _)| *s == status)
                .map(|(_, c)| *c)
                .collect()
        };
        let mut said = Vec::new();
        let mut content = serde_json::Map::new();
        let codes = at(op.errors);
        if !codes.is_empty() {
            said.push(format!("code: {}", codes.join(", ")));
            content.insert(
                "application/problem+json".into(),
                json!({"schema": problem()}),
            );
        }
        let codes = at(op.oauth_errors);
        if !codes.is_empty() {
            said.push(format!("error: {}", codes.join(", ")));
            content.insert("application/json".into(), json!({"schema": oauth_error()}));
        }
        said.extend(at(op.also).into_iter().map(str::to_owned));
        let entry = responses
            .entry(status.to_string())
            .or_insert_with(|| json!({"description": ""}));
        if let Some(e) = entry.as_object_mut() {
            let before = e.get("description").and_then(Value::as_str).unwrap_or("");
            if !before.is_empty() {
                said.insert(0, before.to_owned());
            }
            e.insert("description".into(), json!(said.join("; ")));
            if !content.is_empty() {
                let merged = e.entry("content").or_insert_with(|| json!({}));
                if let Some(m) = merged.as_object_mut() {
                    m.extend(content);
                }
            }
        }
    }
    let params: Vec<Value> = op
        .path
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    // One requirement object per alternative; an empty one means "or none of these".
    let security: Vec<Value> = op
        .auth
        .iter()
        .map(|schemes| {
            Value::Object(
                schemes
                    .iter()
                    .map(|a| ((*a).to_owned(), json!([])))
                    .collect(),
            )
        })
        .collect();
    let mut o = json!({"summary": op.summary, "responses": responses, "parameters": params, "security": security});
    if let Some(body) = &op.body {
        let media = if [
            "/connections/",
            "/sessions/",
            "/connect/",
            "/grants/",
            "/oauth2/authorize",
            "/oauth2/token",
            "/oauth2/revoke",
        ]
        .iter()
        .any(|p| op.path.starts_with(p))
        {
            "application/x-www-form-urlencoded"
        } else {
            "application/json"
        };
        let schema = if body.get("type").is_some() {
            body.clone()
        } else {
            json!({"type": "object", "properties": body})
        };
        if let Some(m) = o.as_object_mut() {
            m.insert(
                "requestBody".into(),
                json!({"content": {media: {"schema": schema}}}),
            );
        }
    }
    o
}

/// The document as JSON.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for op in ops() {
        let item = paths.entry(op.path.to_owned()).or_insert_with(|| json!({}));
        if let Some(m) = item.as_object_mut() {
            m.insert(op.method.to_owned(), operation(&op));
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Strongbox", "version": env!("CARGO_PKG_VERSION"),
            "description": "Credential vault and OAuth broker for AI agents."},
        "paths": paths,
        "components": {
            "schemas": {"Problem": obj(json!({"type": {"type": "string"}, "title": {"type": "string"},
                "status": {"type": "integer"}, "detail": {"type": "string"}, "code": {"type": "string"},
                "url": {"type": "string", "description": "where the user can fix it (reauth_required, not_connected, insufficient_scope)"}}),
                &["type", "title", "status", "detail", "code"]),
                "OAuthError": obj(json!({"error": {"type": "string"}, "error_description": {"type": "string"}}),
                    &["error", "error_description"])},
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": "__Host-strongbox", "description": "`strongbox` on plain-http development"},
                "csrf": {"type": "apiKey", "in": "header", "name": "X-CSRF-Token", "description": "or the csrf_token form field; plus a same-origin Origin or Sec-Fetch-Site"},
                "agent": {"type": "http", "scheme": "bearer", "description": "the agent secret from `strongbox agents add`"},
                "delegation": {"type": "apiKey", "in": "header", "name": "Strongbox-Delegation"},
                "access_token": {"type": "http", "scheme": "bearer", "description": "an access token from /oauth2/token, alone: it names the agent and the user. \
                    A token issued for a resource (RFC 8707) is accepted only there; an unknown, revoked or expired one, or one for another resource, is 401 invalid_token. \
                    /.well-known/oauth-authorization-server describes how to get one"},
                "client": {"type": "http", "scheme": "basic", "description": "an OAuth client's id and secret (client_secret_basic) at /oauth2/token and /oauth2/revoke; \
                    without it the client authenticates in the form (client_secret_post, private_key_jwt, or client_id alone for a public client)"},
            },
        },
    })
}

/// The document parsed into utoipa's model (and back), once.
pub fn parsed() -> Result<&'static utoipa::openapi::OpenApi, String> {
    static DOC: OnceLock<Result<utoipa::openapi::OpenApi, String>> = OnceLock::new();
    DOC.get_or_init(|| serde_json::from_value(document()).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(Clone::clone)
}

/// `GET /openapi.json`.
pub async fn openapi() -> Response {
    match parsed() {
        Ok(doc) => Json(doc).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "the OpenAPI document does not parse");
            crate::error::Error::NotReady("openapi".into()).into_response()
        }
    }
}

#[cfg(test)]
mod tests;
