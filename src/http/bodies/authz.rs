//! The authorization server's bodies (SPEC §11) and `/mcp`'s JSON-RPC (SPEC §12). The
//! forms the token and revocation endpoints read field by field, the registration request
//! `grants` reads, and the JSON-RPC that rmcp reads are only described here.

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa::openapi::schema::{ArrayBuilder, Object, ObjectBuilder, Type};

use super::{array_of, one_of};

fn auth_methods() -> utoipa::openapi::schema::Array {
    array_of(&[
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
        "none",
    ])
}

fn signing_algs() -> utoipa::openapi::schema::Array {
    array_of(&["ES256", "EdDSA"])
}

fn query_only() -> utoipa::openapi::schema::Array {
    array_of(&["query"])
}

fn header_only() -> utoipa::openapi::schema::Array {
    array_of(&["header"])
}

fn s256() -> utoipa::openapi::schema::Array {
    array_of(&["S256"])
}

/// `scopes_supported`: every `tool:{name}` and `credential:{provider}`.
fn scopes() -> utoipa::openapi::schema::Array {
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^(tool|credential):")),
        )
        .build()
}

fn always_true() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Boolean)
        .enum_values(Some([true]))
        .build()
}

fn code() -> Object {
    one_of(&["code"])
}

fn s256_method() -> Object {
    one_of(&["S256"])
}

fn grant_type() -> Object {
    one_of(&["authorization_code", "refresh_token"])
}

fn jwt_bearer() -> Object {
    one_of(&[crate::grants::JWT_BEARER])
}

fn approve_or_deny() -> Object {
    one_of(&["approve", "deny"])
}

fn jsonrpc() -> Object {
    one_of(&["2.0"])
}

/// `GET /.well-known/oauth-authorization-server` (RFC 8414); `issuer` is `public_url`.
#[derive(Serialize, ToSchema)]
pub struct ServerMetadata {
    #[schema(format = "uri")]
    pub issuer: String,
    #[schema(format = "uri")]
    pub authorization_endpoint: String,
    #[schema(format = "uri")]
    pub token_endpoint: String,
    #[schema(format = "uri")]
    pub revocation_endpoint: String,
    #[schema(format = "uri")]
    pub registration_endpoint: String,
    #[schema(schema_with = super::code_only)]
    pub response_types_supported: &'static [&'static str],
    #[schema(schema_with = query_only)]
    pub response_modes_supported: &'static [&'static str],
    #[schema(schema_with = super::grant_types)]
    pub grant_types_supported: &'static [&'static str],
    #[schema(schema_with = s256)]
    pub code_challenge_methods_supported: &'static [&'static str],
    #[schema(schema_with = auth_methods)]
    pub token_endpoint_auth_methods_supported: &'static [&'static str],
    #[schema(schema_with = signing_algs)]
    pub token_endpoint_auth_signing_alg_values_supported: &'static [&'static str],
    #[schema(schema_with = auth_methods)]
    pub revocation_endpoint_auth_methods_supported: &'static [&'static str],
    #[schema(schema_with = scopes)]
    pub scopes_supported: Vec<String>,
    #[schema(schema_with = always_true)]
    pub authorization_response_iss_parameter_supported: bool,
    #[schema(schema_with = always_true)]
    pub client_id_metadata_document_supported: bool,
}

/// Protected resource metadata (RFC 9728).
#[derive(Serialize, ToSchema)]
pub struct ResourceMetadata {
    #[schema(format = "uri")]
    pub resource: String,
    pub authorization_servers: Vec<String>,
    #[schema(schema_with = scopes)]
    pub scopes_supported: Vec<String>,
    #[schema(schema_with = header_only)]
    pub bearer_methods_supported: &'static [&'static str],
    pub resource_name: &'static str,
}

/// The consent page's form: the authorization request again, the CSRF token and the
/// answer.
#[derive(ToSchema)]
pub struct ConsentBody {
    #[schema(schema_with = code)]
    pub response_type: String,
    /// an agent's name, a registered client's id, or the https URL of a client ID
    /// metadata document
    pub client_id: String,
    /// exactly as registered
    pub redirect_uri: String,
    /// space-separated tool:NAME and credential:PROVIDER; none means every tool
    pub scope: Option<String>,
    pub state: Option<String>,
    /// base64url of the SHA-256 of the code verifier (43 characters)
    pub code_challenge: String,
    #[schema(schema_with = s256_method)]
    pub code_challenge_method: String,
    /// RFC 8707: {public_url}/mcp, {public_url}/v1 or public_url
    pub resource: Option<String>,
    /// or the X-CSRF-Token header
    pub csrf_token: Option<String>,
    /// anything but approve denies
    #[schema(schema_with = approve_or_deny)]
    pub decision: Option<String>,
}

/// `POST /oauth2/token`'s form, with the client's authentication when not HTTP Basic.
#[derive(ToSchema)]
pub struct TokenForm {
    #[schema(schema_with = grant_type)]
    pub grant_type: String,
    pub code: Option<String>,
    pub redirect_uri: Option<String>,
    #[schema(min_length = 43, max_length = 128)]
    pub code_verifier: Option<String>,
    pub refresh_token: Option<String>,
    /// refresh_token: within the grant
    pub scope: Option<String>,
    pub resource: Option<String>,
    /// client_secret_post, private_key_jwt (optional there) and public clients
    pub client_id: Option<String>,
    /// client_secret_post
    pub client_secret: Option<String>,
    #[schema(schema_with = jwt_bearer)]
    pub client_assertion_type: Option<String>,
    /// private_key_jwt (RFC 7523): a JWT signed with one of the client's keys (ES256 or
    /// EdDSA)
    pub client_assertion: Option<String>,
}

/// `POST /oauth2/revoke`'s form, with the client's authentication when not HTTP Basic.
#[derive(ToSchema)]
pub struct RevokeForm {
    pub token: String,
    /// ignored
    pub token_type_hint: Option<String>,
    /// client_secret_post, private_key_jwt (optional there) and public clients
    pub client_id: Option<String>,
    /// client_secret_post
    pub client_secret: Option<String>,
    #[schema(schema_with = jwt_bearer)]
    pub client_assertion_type: Option<String>,
    /// private_key_jwt (RFC 7523): a JWT signed with one of the client's keys (ES256 or
    /// EdDSA)
    pub client_assertion: Option<String>,
}

/// `POST /oauth2/token`'s answer.
// Borrows the tokens revealed, for `secret_json` to write.
#[derive(Serialize, ToSchema)]
pub struct Tokens<'a> {
    pub access_token: &'a str,
    #[schema(schema_with = super::bearer)]
    pub token_type: &'static str,
    /// seconds (900)
    pub expires_in: i64,
    /// rotates: each use returns a new one
    pub refresh_token: &'a str,
    /// space-separated
    pub scope: &'a str,
}

/// `POST /oauth2/register`'s request (RFC 7591).
// Described only: `grants::RegistrationRequest` reads it.
#[derive(ToSchema)]
pub struct Registration {
    /// https, or plain http to a loopback address; no fragment
    #[schema(min_items = 1, max_items = 10)]
    pub redirect_uris: Vec<String>,
    #[schema(min_length = 1, max_length = 100)]
    pub client_name: Option<String>,
    #[schema(schema_with = super::auth_none)]
    pub token_endpoint_auth_method: Option<String>,
    #[schema(schema_with = super::grant_types)]
    pub grant_types: Option<Vec<String>>,
    #[schema(schema_with = super::code_only)]
    pub response_types: Option<Vec<String>>,
    /// checked like an authorization request's; not stored
    pub scope: Option<String>,
}

/// `POST /oauth2/register`'s answer (RFC 7591 §3.2.1).
#[derive(Serialize, ToSchema)]
pub struct Registered {
    pub client_id: String,
    /// Unix seconds
    pub client_id_issued_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub client_name: Option<String>,
    pub redirect_uris: Vec<String>,
    #[schema(schema_with = super::auth_none)]
    pub token_endpoint_auth_method: &'static str,
    #[schema(schema_with = super::grant_types)]
    pub grant_types: [&'static str; 2],
    #[schema(schema_with = super::code_only)]
    pub response_types: [&'static str; 1],
}

impl From<crate::grants::Registered> for Registered {
    fn from(r: crate::grants::Registered) -> Self {
        Registered {
            client_id: r.client_id,
            client_id_issued_at: r.client_id_issued_at,
            client_name: r.client_name,
            redirect_uris: r.redirect_uris,
            token_endpoint_auth_method: r.token_endpoint_auth_method,
            grant_types: r.grant_types,
            response_types: r.response_types,
        }
    }
}

/// One of the user's grants.
#[derive(Serialize, ToSchema)]
pub struct GrantItem {
    pub id: String,
    pub agent: String,
    pub tools: Vec<String>,
    pub providers: Vec<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
    #[schema(format = DateTime, required = true)]
    pub last_used_at: Option<String>,
}

/// `GET /api/grants`.
#[derive(Serialize, ToSchema)]
pub struct GrantList {
    pub grants: Vec<GrantItem>,
}

/// A JSON-RPC request or notification to `/mcp`.
#[derive(ToSchema)]
pub struct JsonRpcRequest {
    #[schema(schema_with = jsonrpc)]
    pub jsonrpc: String,
    /// a string or an integer; none for a notification
    #[schema(value_type = Option<Value>)]
    pub id: Option<Value>,
    /// initialize, tools/list, tools/call, ping, or a notification
    pub method: String,
    #[schema(value_type = Option<Object>)]
    pub params: Option<Value>,
}

/// A JSON-RPC error.
#[derive(ToSchema)]
pub struct JsonRpcError {
    pub code: i64,
    pub message: String,
    #[schema(value_type = Option<Value>)]
    pub data: Option<Value>,
}

/// A JSON-RPC response from `/mcp`.
#[derive(ToSchema)]
pub struct JsonRpcResponse {
    #[schema(schema_with = jsonrpc)]
    pub jsonrpc: String,
    #[schema(value_type = Value)]
    pub id: Value,
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    pub error: Option<JsonRpcError>,
}
