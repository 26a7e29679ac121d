//! `GET /openapi.json`: the OpenAPI 3.1 document of every route (SPEC §5, §11, §12),
//! generated from the handlers' `#[utoipa::path]` annotations and the typed bodies they
//! take and answer (`super::bodies`).
//!
//! The router is built from [`Routes`]: each handler is routed at the path and methods
//! its annotation declares, and that operation is recorded at the same time, so the
//! document cannot name a route the router lacks or miss one it has. `/mcp` is an rmcp
//! service rather than a handler; its operation is annotated on `mcp::operation`.

use std::sync::OnceLock;

use axum::Json;
use axum::Router;
use axum::handler::Handler;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodFilter;
use utoipa::OpenApi;
use utoipa::openapi::path::{HttpMethod, Paths};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, Schema};

/// Routes with their documentation: the router, and the operations and schemas of
/// every handler routed on it.
pub struct Routes<S> {
    router: Router<S>,
    paths: Paths,
    schemas: Vec<(String, RefOr<Schema>)>,
}

impl<S: Clone + Send + Sync + 'static> Default for Routes<S> {
    fn default() -> Self {
        Routes {
            router: Router::new(),
            paths: Paths::new(),
            schemas: Vec::new(),
        }
    }
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    /// Routes `handler` at the path and methods of its annotation `doc` (the
    /// `__path_{handler}` that `#[utoipa::path]` generates), and records the operation.
    pub fn route<P, H, T>(mut self, doc: P, handler: H) -> Self
    where
        P: utoipa::Path + utoipa::__dev::SchemaReferences,
        H: Handler<T, S>,
        T: 'static,
    {
        self = self.document(doc);
        let filter = P::methods()
            .into_iter()
            .map(method_filter)
            .reduce(MethodFilter::or);
        if let Some(filter) = filter {
            self.router = self
                .router
                .route(&P::path(), axum::routing::on(filter, handler));
        }
        self
    }

    /// Records the operation of `_doc` without routing anything: for a service the
    /// caller mounts itself (`/mcp`). Its schemas come through utoipa's hidden
    /// `SchemaReferences`, the trait utoipa-axum collects them with too.
    pub fn document<P>(mut self, _doc: P) -> Self
    where
        P: utoipa::Path + utoipa::__dev::SchemaReferences,
    {
        self.paths
            .add_path_operation(P::path(), P::methods(), P::operation());
        P::schemas(&mut self.schemas);
        self
    }

    /// The router, its documentation left behind.
    pub fn into_router(self) -> Router<S> {
        self.router
    }
}

fn method_filter(m: HttpMethod) -> MethodFilter {
    match m {
        HttpMethod::Get => MethodFilter::GET,
        HttpMethod::Post => MethodFilter::POST,
        HttpMethod::Put => MethodFilter::PUT,
        HttpMethod::Delete => MethodFilter::DELETE,
        HttpMethod::Options => MethodFilter::OPTIONS,
        HttpMethod::Head => MethodFilter::HEAD,
        HttpMethod::Patch => MethodFilter::PATCH,
        HttpMethod::Trace => MethodFilter::TRACE,
    }
}

/// The document's frame: what it is, the shared schemas, the security schemes. The
/// operations come from the routes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Strongbox",
        description = "Credential vault and OAuth broker for AI agents."
    ),
    components(schemas(crate::error::Problem, super::bodies::OAuthError)),
    modifiers(&SecuritySchemes)
)]
struct Frame;

/// The security schemes operations name: the browser session and its CSRF token, an
/// agent's secret with a delegation, an access token, an OAuth client's credentials.
struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let http = |scheme, description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(scheme)
                    .description(Some(description))
                    .build(),
            )
        };
        let schemes = [
            (
                "session",
                SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                    "__Host-strongbox",
                    "`strongbox` on plain-http development",
                ))),
            ),
            (
                "csrf",
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                    "X-CSRF-Token",
                    "or the csrf_token form field; plus a same-origin Origin or Sec-Fetch-Site",
                ))),
            ),
            (
                "agent",
                http(
                    HttpAuthScheme::Bearer,
                    "the agent secret from `strongbox agents add`",
                ),
            ),
            (
                "delegation",
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("Strongbox-Delegation"))),
            ),
            (
                "access_token",
                http(
                    HttpAuthScheme::Bearer,
                    "an access token from /oauth2/token, alone: it names the agent and the user. \
                     A token issued for a resource (RFC 8707) is accepted only there; an unknown, \
                     revoked or expired one, or one for another resource, is 401 invalid_token. \
                     /.well-known/oauth-authorization-server describes how to get one",
                ),
            ),
            (
                "client",
                http(
                    HttpAuthScheme::Basic,
                    "an OAuth client's id and secret (client_secret_basic) at /oauth2/token and \
                     /oauth2/revoke; without it the client authenticates in the form \
                     (client_secret_post, private_key_jwt, or client_id alone for a public client)",
                ),
            ),
        ];
        let components = doc.components.get_or_insert_with(Default::default);
        for (name, scheme) in schemes {
            components.add_security_scheme(name, scheme);
        }
    }
}

/// The whole document: the frame, and the operations and schemas of every route.
pub fn generate() -> utoipa::openapi::OpenApi {
    let mut doc = Frame::openapi();
    let components = doc.components.get_or_insert_with(Default::default);
    for routes in super::route_table() {
        doc.paths.merge(routes.paths);
        for (name, schema) in routes.schemas {
            components.schemas.entry(name).or_insert(schema);
        }
    }
    doc
}

/// The document, generated once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(generate)
}

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    summary = "This document",
    responses((status = 200, description = "OpenAPI 3.1"))
)]
pub async fn openapi() -> Response {
    Json(document()).into_response()
}

#[cfg(test)]
mod tests;
