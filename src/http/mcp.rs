//! `/mcp`: a Model Context Protocol server (Streamable HTTP, rmcp) over the executor
//! (SPEC §12), and an OAuth protected resource (RFC 9728).
//!
//! Every request is authenticated in front of rmcp, like any `/v1` request (access token
//! alone, or agent secret and delegation; per-(agent, user) limits), and a request without
//! a valid token is answered `401` with the `resource_metadata` an MCP client discovers
//! the authorization server from. rmcp runs without sessions (each POST stands alone, so
//! any instance answers it) and answers plain JSON. `tools/list` lists the caller's
//! tools; `tools/call` runs one through the broker exactly as `POST /v1/tools/{tool}/run`
//! does: policy, refresh, audit. Nothing a tool returns carries a token.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ElicitRequestParams,
    ErrorCode, Implementation, ListToolsResult, PaginatedRequestParams, ServerCapabilities,
    ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::Value;

use super::AppState;
use super::agent::{AgentRequest, Read};
use super::bodies::{JsonRpcRequest, JsonRpcResponse};
use crate::error::Error;
use crate::executor::Caller;
use crate::grants::Audience;

/// The MCP error a client that declared URL-mode elicitation gets when the user must visit
/// a URL first ("URL elicitation required").
const URL_ELICITATION_REQUIRED: i32 = -32042;

/// Where the service is mounted.
pub const PATH: &str = "/mcp";

/// `POST /mcp`'s operation in `/openapi.json`. rmcp's service answers the route, not a
/// handler, so the annotation sits on this function, which is never called.
#[utoipa::path(
    post,
    path = "/mcp",
    operation_id = "mcp",
    summary = "MCP server (Streamable HTTP, no sessions; Accept: application/json, \
               text/event-stream): tools/list lists the tools the caller's grant covers, \
               tools/call runs one as POST /v1/tools/{tool}/run does. A protected resource \
               (RFC 9728): see /.well-known/oauth-protected-resource/mcp",
    request_body(content = JsonRpcRequest, content_type = "application/json"),
    security(("agent" = [], "delegation" = []), ("access_token" = [])),
    responses(
        (status = 200, description = "The JSON-RPC response. A tool that failed (the provider \
            answered an error, or the user must connect or reconnect first: the problem, with \
            its url) is a result with isError; a client that declared URL elicitation gets \
            error -32042 with the URL instead", body = JsonRpcResponse),
        (status = 202, description = "A notification, accepted"),
        (status = 400, description = "A JSON-RPC message that is not a request or notification, \
            or an MCP header that does not match the body (JSON-RPC error)"),
        (status = 401, description = "code: unauthorized, invalid_token, delegation_invalid, \
            delegation_expired; WWW-Authenticate: Bearer resource_metadata=\"{public_url}/.well-known/oauth-protected-resource/mcp\", \
            with error=\"invalid_token\" when credentials were presented", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The Host header is not public_url's host or a loopback name"),
        (status = 404, description = "No such JSON-RPC method (JSON-RPC error)"),
        (status = 406, description = "Accept lacks application/json or text/event-stream"),
        (status = 413, description = "The body is over 64 KiB"),
        (status = 415, description = "Content-Type is not application/json, or the body is not JSON"),
        (status = 429, description = "code: rate_limited", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "code: database_unavailable", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub fn operation() {}

/// Who is calling, as the middleware checked it (rmcp hands the request's parts, with
/// these extensions, to the handler).
#[derive(Clone)]
struct McpCaller {
    request: Arc<AgentRequest>,
    caller: Caller,
}

/// The rmcp service for `/mcp`, mounted behind [`authenticate`].
pub fn service(app: &AppState) -> StreamableHttpService<Handler, NeverSessionManager> {
    let mut hosts = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Some(host) = url::Url::parse(&app.config.public_url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
    {
        hosts.push(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
        );
    }
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        .with_max_request_body_bytes(super::guard::MAX_BODY)
        .with_allowed_hosts(hosts);
    let handler = Handler { app: app.clone() };
    StreamableHttpService::new(
        move || Ok(handler.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    )
}

/// Authenticates an MCP request; without a valid token, `401` with the protected resource
/// metadata's URL (RFC 9728 §5.1).
pub async fn authenticate(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let request = AgentRequest::of(&parts, &app, Audience::Mcp);
    match request.check(&app, "", Read::Fresh).await {
        Ok((caller, _)) => {
            parts.extensions.insert(McpCaller {
                request: Arc::new(request),
                caller,
            });
            next.run(Request::from_parts(parts, body)).await
        }
        Err(
            e @ (Error::AgentUnauthorized
            | Error::InvalidToken(_)
            | Error::DelegationInvalid
            | Error::DelegationExpired
            | Error::DelegationForeign),
        ) => {
            let invalid = matches!(e, Error::AgentUnauthorized) && !has_bearer(&parts);
            let metadata = app
                .grants
                .endpoint("/.well-known/oauth-protected-resource/mcp");
            let challenge = if invalid {
                format!("Bearer resource_metadata=\"{metadata}\"")
            } else {
                format!("Bearer error=\"invalid_token\", resource_metadata=\"{metadata}\"")
            };
            let mut resp = e.into_response();
            *resp.status_mut() = axum::http::StatusCode::UNAUTHORIZED;
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            resp
        }
        Err(e) => e.into_response(),
    }
}

fn has_bearer(parts: &Parts) -> bool {
    parts.headers.contains_key(header::AUTHORIZATION)
}

/// The MCP server: one per request (rmcp's factory clones it), sharing the app.
#[derive(Clone)]
pub struct Handler {
    app: AppState,
}

fn caller_of(cx: &RequestContext<RoleServer>) -> Result<McpCaller, ErrorData> {
    cx.extensions
        .get::<Parts>()
        .and_then(|p| p.extensions.get::<McpCaller>())
        .cloned()
        .ok_or_else(|| ErrorData::internal_error("the request was not authenticated", None))
}

impl ServerHandler for Handler {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("strongbox", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Tools run in the signed-in user's context through Strongbox; their \
                 credentials never leave it. A tool error with a URL means the user must \
                 visit that URL (connect or reconnect an account).",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        cx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let who = caller_of(&cx)?;
        let tools = who
            .caller
            .delegation
            .tools
            .iter()
            .filter_map(|name| self.app.tools.get(name))
            .map(|t| {
                let schema = match t.input_schema() {
                    Value::Object(map) => map,
                    _ => serde_json::Map::new(),
                };
                Tool::new(t.name.clone(), t.description.clone(), schema)
            })
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let who = caller_of(&cx)?;
        let args = request.arguments.unwrap_or_default();
        match super::agent::run(&self.app, &who.request, who.caller, &request.name, &args).await {
            Ok(out) => Ok(tool_result(out).into()),
            Err(Error::UnknownTool(name)) => Err(ErrorData::invalid_params(
                format!("no tool named {name:?}"),
                None,
            )),
            Err(e) => {
                let problem = e.problem();
                let url_ok = cx
                    .client_capabilities()
                    .and_then(|c| c.elicitation)
                    .is_some_and(|e| e.url.is_some());
                if let (Some(url), true) = (&problem.url, url_ok) {
                    let params = ElicitRequestParams::UrlElicitationParams {
                        meta: None,
                        message: problem.detail.clone(),
                        url: url.clone(),
                        elicitation_id: uuid::Uuid::new_v4().to_string(),
                    };
                    return Err(ErrorData::new(
                        ErrorCode(URL_ELICITATION_REQUIRED),
                        "URL elicitation required",
                        Some(serde_json::json!({ "elicitations": [params] })),
                    ));
                }
                let mut text = format!("{}: {}", problem.code, problem.detail);
                if let Some(url) = &problem.url {
                    text.push_str(&format!(" Visit {url}"));
                }
                let body = serde_json::to_value(&problem).unwrap_or(Value::Null);
                let mut result = CallToolResult::structured_error(body);
                result.content = vec![ContentBlock::text(text)];
                Ok(result.into())
            }
        }
    }
}

/// The provider's answer as MCP content: its JSON (structured when it is an object), an
/// error result when the provider answered with an error status.
fn tool_result(out: crate::executor::ToolOutput) -> CallToolResult {
    let failed = out.status >= 400;
    match out.body {
        Value::Object(_) if !failed => CallToolResult::structured(out.body),
        Value::Object(_) => CallToolResult::structured_error(out.body),
        other => {
            let text = match other {
                Value::String(s) => s,
                v => v.to_string(),
            };
            let block = vec![ContentBlock::text(text)];
            if failed {
                CallToolResult::error(block)
            } else {
                CallToolResult::success(block)
            }
        }
    }
}
