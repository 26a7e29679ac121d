//! `GET /openapi.json`: every route of SPEC §5 with its method, parameters, request and
//! response schemas and error codes. The routes are written as data in `routes.rs`; the
//! document is parsed into `utoipa`'s OpenAPI 3.1 model once, at first use, so a malformed
//! entry fails the test suite (`openapi_matches_the_router`), which also checks it against
//! the router's routes.

use std::sync::OnceLock;

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

mod routes;
use routes::{Op, obj, ops, problem};

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
    for (status, _) in op.errors {
        let codes: Vec<&str> = op
            .errors
            .iter()
            .filter(|(s, _)| s == status)
            .map(|(_, c)| *c)
            .collect();
        responses.insert(
            status.to_string(),
            json!({"description": format!("code: {}", codes.join(", ")),
                "content": {"application/problem+json": {"schema": problem()}}}),
        );
    }
    let params: Vec<Value> = op
        .path
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    let security: Vec<Value> = if op.auth.is_empty() {
        Vec::new()
    } else {
        let mut req = serde_json::Map::new();
        for a in op.auth {
            req.insert((*a).to_owned(), json!([]));
        }
        vec![Value::Object(req)]
    };
    let mut o = json!({"summary": op.summary, "responses": responses, "parameters": params, "security": security});
    if let Some(body) = &op.body {
        let media = if ["/connections/", "/sessions/", "/connect/"]
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
                &["type", "title", "status", "detail", "code"])},
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": "__Host-strongbox", "description": "`strongbox` on plain-http development"},
                "csrf": {"type": "apiKey", "in": "header", "name": "X-CSRF-Token", "description": "or the csrf_token form field; plus a same-origin Origin or Sec-Fetch-Site"},
                "agent": {"type": "http", "scheme": "bearer", "description": "the agent secret from `strongbox agents add`"},
                "delegation": {"type": "apiKey", "in": "header", "name": "Strongbox-Delegation"},
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
