//! The authorization server's routes (SPEC §11) and `/mcp` (SPEC §12) as data: metadata,
//! the authorization request and its consent, the token, revocation and registration
//! endpoints, the user's grants, and the MCP endpoint.
//!
//! The token, revocation and registration endpoints answer their own errors as RFC 6749
//! §5.2 / RFC 7591 JSON (`oauth_errors`), which OAuth clients parse; only what the service
//! answers for every route (rate limits, oversized requests) stays a problem document.

use serde_json::{Value, json};

use super::routes::{AGENT, COOKIE, COOKIE_CSRF, Op, PUBLIC, obj, strings};

/// HTTP Basic with the client's id and secret, or the client's credentials in the form
/// (`client_secret_post`, `private_key_jwt`, or `client_id` alone for a public client).
const CLIENT: &[&[&str]] = &[&["client"], &[]];

/// The form fields a client authenticates with at the token and revocation endpoints.
fn client_fields() -> Value {
    json!({
        "client_id": {"type": "string", "description": "client_secret_post, private_key_jwt (optional there) and public clients"},
        "client_secret": {"type": "string", "description": "client_secret_post"},
        "client_assertion_type": {"type": "string", "enum": [crate::grants::JWT_BEARER]},
        "client_assertion": {"type": "string", "description": "private_key_jwt (RFC 7523): a JWT signed with one of the client's keys (ES256 or EdDSA)"},
    })
}

/// `props` with the client authentication fields added.
fn with_client_fields(mut props: Value) -> Value {
    if let (Some(p), Value::Object(c)) = (props.as_object_mut(), client_fields()) {
        p.extend(c);
    }
    props
}

fn uri() -> Value {
    json!({"type": "string", "format": "uri"})
}

fn uris() -> Value {
    json!({"type": "array", "items": uri()})
}

/// `scopes_supported`: every `tool:{name}` and `credential:{provider}`.
fn scopes() -> Value {
    json!({"type": "array", "items": {"type": "string", "pattern": "^(tool|credential):"}})
}

pub(super) fn ops() -> Vec<Op> {
    let auth_methods = json!({"type": "array", "items": {"type": "string",
        "enum": ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]}});
    let server_metadata = obj(
        json!({
            "issuer": uri(),
            "authorization_endpoint": uri(),
            "token_endpoint": uri(),
            "revocation_endpoint": uri(),
            "registration_endpoint": uri(),
            "response_types_supported": {"type": "array", "items": {"type": "string", "enum": ["code"]}},
            "response_modes_supported": {"type": "array", "items": {"type": "string", "enum": ["query"]}},
            "grant_types_supported": {"type": "array", "items": {"type": "string", "enum": ["authorization_code", "refresh_token"]}},
            "code_challenge_methods_supported": {"type": "array", "items": {"type": "string", "enum": ["S256"]}},
            "token_endpoint_auth_methods_supported": auth_methods,
            "token_endpoint_auth_signing_alg_values_supported": {"type": "array", "items": {"type": "string", "enum": ["ES256", "EdDSA"]}},
            "revocation_endpoint_auth_methods_supported": auth_methods,
            "scopes_supported": scopes(),
            "authorization_response_iss_parameter_supported": {"type": "boolean", "enum": [true]},
            "client_id_metadata_document_supported": {"type": "boolean", "enum": [true]},
        }),
        &[
            "issuer",
            "authorization_endpoint",
            "token_endpoint",
            "revocation_endpoint",
            "registration_endpoint",
            "response_types_supported",
            "response_modes_supported",
            "grant_types_supported",
            "code_challenge_methods_supported",
            "token_endpoint_auth_methods_supported",
            "token_endpoint_auth_signing_alg_values_supported",
            "revocation_endpoint_auth_methods_supported",
            "scopes_supported",
            "authorization_response_iss_parameter_supported",
            "client_id_metadata_document_supported",
        ],
    );
    let resource_metadata = obj(
        json!({
            "resource": uri(),
            "authorization_servers": uris(),
            "scopes_supported": scopes(),
            "bearer_methods_supported": {"type": "array", "items": {"type": "string", "enum": ["header"]}},
            "resource_name": {"type": "string"},
        }),
        &[
            "resource",
            "authorization_servers",
            "scopes_supported",
            "bearer_methods_supported",
            "resource_name",
        ],
    );
    let authorization_request = json!({
        "response_type": {"type": "string", "enum": ["code"]},
        "client_id": {"type": "string", "description": "an agent's name, a registered client's id, or the https URL of a client ID metadata document"},
        "redirect_uri": {"type": "string", "description": "exactly as registered"},
        "scope": {"type": "string", "description": "space-separated tool:NAME and credential:PROVIDER; none means every tool"},
        "state": {"type": "string"},
        "code_challenge": {"type": "string", "description": "base64url of the SHA-256 of the code verifier (43 characters)"},
        "code_challenge_method": {"type": "string", "enum": ["S256"]},
        "resource": {"type": "string", "description": "RFC 8707: {public_url}/mcp, {public_url}/v1 or public_url"},
    });
    let consent = {
        let mut form = authorization_request;
        if let Some(f) = form.as_object_mut() {
            f.insert(
                "csrf_token".into(),
                json!({"type": "string", "description": "or the X-CSRF-Token header"}),
            );
            f.insert(
                "decision".into(),
                json!({"type": "string", "enum": ["approve", "deny"], "description": "anything but approve denies"}),
            );
        }
        obj(
            form,
            &[
                "response_type",
                "client_id",
                "redirect_uri",
                "code_challenge",
                "code_challenge_method",
            ],
        )
    };
    let tokens = obj(
        json!({
            "access_token": {"type": "string"},
            "token_type": {"type": "string", "enum": ["Bearer"]},
            "expires_in": {"type": "integer", "description": "seconds (900)"},
            "refresh_token": {"type": "string", "description": "rotates: each use returns a new one"},
            "scope": {"type": "string", "description": "space-separated"},
        }),
        &[
            "access_token",
            "token_type",
            "expires_in",
            "refresh_token",
            "scope",
        ],
    );
    let grant_types = json!({"type": "array", "items": {"type": "string", "enum": ["authorization_code", "refresh_token"]}});
    let registration = obj(
        json!({
            "redirect_uris": {"type": "array", "items": uri(), "minItems": 1, "maxItems": 10,
                "description": "https, or plain http to a loopback address; no fragment"},
            "client_name": {"type": "string", "minLength": 1, "maxLength": 100},
            "token_endpoint_auth_method": {"type": "string", "enum": ["none"]},
            "grant_types": grant_types,
            "response_types": {"type": "array", "items": {"type": "string", "enum": ["code"]}},
            "scope": {"type": "string", "description": "checked like an authorization request's; not stored"},
        }),
        &["redirect_uris"],
    );
    let registered = obj(
        json!({
            "client_id": {"type": "string"},
            "client_id_issued_at": {"type": "integer", "description": "Unix seconds"},
            "client_name": {"type": ["string", "null"]},
            "redirect_uris": uris(),
            "token_endpoint_auth_method": {"type": "string", "enum": ["none"]},
            "grant_types": grant_types,
            "response_types": {"type": "array", "items": {"type": "string", "enum": ["code"]}},
        }),
        &[
            "client_id",
            "client_id_issued_at",
            "client_name",
            "redirect_uris",
            "token_endpoint_auth_method",
            "grant_types",
            "response_types",
        ],
    );
    let grant = obj(
        json!({"id": {"type": "string"}, "agent": {"type": "string"}, "tools": strings(),
            "providers": strings(),
            "created_at": {"type": "string", "format": "date-time"},
            "expires_at": {"type": "string", "format": "date-time"},
            "last_used_at": {"type": ["string", "null"], "format": "date-time"}}),
        &[
            "id",
            "agent",
            "tools",
            "providers",
            "created_at",
            "expires_at",
            "last_used_at",
        ],
    );
    let jsonrpc_request = obj(
        json!({"jsonrpc": {"type": "string", "enum": ["2.0"]}, "id": {"type": ["string", "integer"]},
            "method": {"type": "string", "description": "initialize, tools/list, tools/call, ping, or a notification"},
            "params": {"type": "object"}}),
        &["jsonrpc", "method"],
    );
    let jsonrpc_response = obj(
        json!({"jsonrpc": {"type": "string", "enum": ["2.0"]}, "id": {"type": ["string", "integer", "null"]}, "result": {"type": "object"},
            "error": obj(json!({"code": {"type": "integer"}, "message": {"type": "string"}, "data": {"type": ["object", "array", "string", "number", "boolean", "null"]}}), &["code", "message"])}),
        &["jsonrpc", "id"],
    );
    vec![
        Op {
            method: "get",
            path: "/.well-known/oauth-authorization-server",
            summary: "Authorization server metadata (RFC 8414); issuer is public_url",
            auth: PUBLIC,
            ok: (200, "Metadata", Some(server_metadata)),
            ..Op::default()
        },
        Op {
            method: "get",
            path: "/.well-known/oauth-protected-resource/mcp",
            summary: "Protected resource metadata (RFC 9728) of /mcp: resource {public_url}/mcp",
            auth: PUBLIC,
            ok: (200, "Metadata", Some(resource_metadata.clone())),
            ..Op::default()
        },
        Op {
            method: "get",
            path: "/.well-known/oauth-protected-resource/v1",
            summary: "Protected resource metadata (RFC 9728) of the agent routes: resource {public_url}/v1",
            auth: PUBLIC,
            ok: (200, "Metadata", Some(resource_metadata)),
            ..Op::default()
        },
        Op {
            method: "get",
            path: "/oauth2/authorize",
            summary: "Authorization request, in the query: response_type=code, client_id, redirect_uri, \
                      scope, state, code_challenge, code_challenge_method=S256, optional resource. \
                      Not signed in: the sign-in page, which comes back here; then the consent page. \
                      An unknown client or a redirect_uri not registered exactly gets an error, \
                      never a redirect; any other fault goes back to the client",
            auth: PUBLIC,
            ok: (200, "The sign-in page or the consent page (HTML)", None),
            errors: &[
                (400, "invalid_client"),
                (400, "invalid_request"),
                (429, "rate_limited"),
            ],
            also: &[
                (
                    303,
                    "Back to redirect_uri with error (unsupported_response_type, invalid_request, \
                     invalid_scope, invalid_target), error_description, state and iss",
                ),
                (400, "a browser (Accept: text/html) gets an error page"),
            ],
            ..Op::default()
        },
        Op {
            method: "post",
            path: "/oauth2/authorize",
            summary: "The consent page's Approve or Deny, with the authorization request again \
                      (checked again, never trusted)",
            auth: COOKIE_CSRF,
            body: Some(consent),
            ok: (
                303,
                "Back to redirect_uri with state and iss: code when approved; error=access_denied \
                 when denied or when policy allows nothing asked for; or the error of a request \
                 that no longer checks out",
                None,
            ),
            errors: &[
                (400, "invalid_client"),
                (400, "invalid_request"),
                (401, "unauthorized"),
                (403, "csrf_failed"),
                (429, "rate_limited"),
            ],
            ..Op::default()
        },
        Op {
            method: "post",
            path: "/oauth2/token",
            summary: "Token endpoint. grant_type=authorization_code: code (one use, 60 s), the same \
                      redirect_uri, code_verifier (PKCE S256); a code used twice revokes what it \
                      issued. grant_type=refresh_token: refresh_token, optional narrower scope; the \
                      refresh token rotates, and a rotated one presented again revokes the grant. \
                      Optional resource (RFC 8707)",
            auth: CLIENT,
            body: Some(obj(
                with_client_fields(json!({
                    "grant_type": {"type": "string", "enum": ["authorization_code", "refresh_token"]},
                    "code": {"type": "string"},
                    "redirect_uri": {"type": "string"},
                    "code_verifier": {"type": "string", "minLength": 43, "maxLength": 128},
                    "refresh_token": {"type": "string"},
                    "scope": {"type": "string", "description": "refresh_token: within the grant"},
                    "resource": {"type": "string"},
                })),
                &["grant_type"],
            )),
            ok: (200, "Tokens (Pragma: no-cache)", Some(tokens)),
            errors: &[(414, "request_too_large"), (429, "rate_limited")],
            oauth_errors: &[
                (400, "invalid_request"),
                (400, "invalid_grant"),
                (400, "unsupported_grant_type"),
                (400, "invalid_scope"),
                (400, "invalid_target"),
                (401, "invalid_client"),
                (500, "server_error"),
            ],
            also: &[(
                401,
                "WWW-Authenticate: Basic when the client authenticated with HTTP Basic",
            )],
        },
        Op {
            method: "post",
            path: "/oauth2/revoke",
            summary: "Token revocation (RFC 7009): an access token ends alone, a refresh token its \
                      whole grant; a token that is unknown or another client's changes nothing",
            auth: CLIENT,
            body: Some(obj(
                with_client_fields(json!({
                    "token": {"type": "string"},
                    "token_type_hint": {"type": "string", "description": "ignored"},
                })),
                &["token"],
            )),
            ok: (200, "Revoked, or nothing to revoke (empty body)", None),
            errors: &[(414, "request_too_large"), (429, "rate_limited")],
            oauth_errors: &[
                (400, "invalid_request"),
                (401, "invalid_client"),
                (500, "server_error"),
            ],
            also: &[(
                401,
                "WWW-Authenticate: Basic when the client authenticated with HTTP Basic",
            )],
        },
        Op {
            method: "post",
            path: "/oauth2/register",
            summary: "Dynamic client registration (RFC 7591) of a public client \
                      (token_endpoint_auth_method none); confidential agents are added with \
                      `strongbox agents add`",
            auth: PUBLIC,
            body: Some(registration),
            ok: (201, "Registered", Some(registered)),
            errors: &[(429, "rate_limited")],
            oauth_errors: &[
                (400, "invalid_redirect_uri"),
                (400, "invalid_client_metadata"),
                (500, "server_error"),
            ],
            ..Op::default()
        },
        Op {
            method: "get",
            path: "/api/grants",
            summary: "The user's grants (what agents were approved for on a consent page), newest first",
            auth: COOKIE,
            ok: (
                200,
                "Grants",
                Some(obj(
                    json!({"grants": {"type": "array", "items": grant}}),
                    &["grants"],
                )),
            ),
            errors: &[(401, "unauthorized")],
            ..Op::default()
        },
        Op {
            method: "delete",
            path: "/api/grants/{id}",
            summary: "Revoke a grant: its access and refresh tokens stop working at once",
            auth: COOKIE_CSRF,
            ok: (204, "Revoked", None),
            errors: &[
                (401, "unauthorized"),
                (403, "csrf_failed"),
                (404, "not_found"),
            ],
            ..Op::default()
        },
        Op {
            method: "post",
            path: "/grants/{id}/revoke",
            summary: "Revoke a grant from the account page's form",
            auth: COOKIE_CSRF,
            body: Some(json!({"csrf_token": {"type": "string"}})),
            ok: (303, "Redirect to the account page", None),
            errors: &[
                (401, "unauthorized"),
                (403, "csrf_failed"),
                (404, "not_found"),
            ],
            ..Op::default()
        },
        Op {
            method: "post",
            path: "/mcp",
            summary: "MCP server (Streamable HTTP, no sessions; Accept: application/json, \
                      text/event-stream): tools/list lists the tools the caller's grant covers, \
                      tools/call runs one as POST /v1/tools/{tool}/run does. A protected resource \
                      (RFC 9728): see /.well-known/oauth-protected-resource/mcp",
            auth: AGENT,
            body: Some(jsonrpc_request),
            ok: (
                200,
                "The JSON-RPC response. A tool that failed (the provider answered an error, or \
                 the user must connect or reconnect first: the problem, with its url) is a \
                 result with isError; a client that declared URL elicitation gets error -32042 \
                 with the URL instead",
                Some(jsonrpc_response),
            ),
            errors: &[
                (401, "unauthorized"),
                (401, "invalid_token"),
                (401, "delegation_invalid"),
                (401, "delegation_expired"),
                (429, "rate_limited"),
                (503, "database_unavailable"),
            ],
            also: &[
                (202, "A notification, accepted"),
                (
                    401,
                    "WWW-Authenticate: Bearer resource_metadata=\"{public_url}/.well-known/oauth-protected-resource/mcp\", \
                     with error=\"invalid_token\" when credentials were presented",
                ),
                (
                    400,
                    "A JSON-RPC message that is not a request or notification, or an MCP header \
                     that does not match the body (JSON-RPC error)",
                ),
                (
                    403,
                    "The Host header is not public_url's host or a loopback name",
                ),
                (404, "No such JSON-RPC method (JSON-RPC error)"),
                (406, "Accept lacks application/json or text/event-stream"),
                (413, "The body is over 64 KiB"),
                (
                    415,
                    "Content-Type is not application/json, or the body is not JSON",
                ),
            ],
            ..Op::default()
        },
    ]
}
