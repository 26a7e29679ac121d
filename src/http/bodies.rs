//! The JSON bodies the routes answer, as types: a handler builds one, serde writes it and
//! utoipa describes it in `/openapi.json`, from the one definition. Fields the service
//! writes as `null` stay `Option`s without `skip_serializing_if`.
//!
//! A body that carries a secret (a delegation, tokens) borrows it revealed, and is written
//! by [`secret_json`] into a buffer zeroized on drop; the secret types themselves are never
//! `Serialize`. A released credential is written by the executor, the one opener of
//! plaintext, and only described here.

mod authz;

pub use authz::*;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa::openapi::schema::{ArrayBuilder, Object, ObjectBuilder, Type};

/// A string that is one of `values`.
fn one_of(values: &[&'static str]) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values.iter().copied()))
        .build()
}

/// An array of strings that are each one of `values`.
fn array_of(values: &[&'static str]) -> utoipa::openapi::schema::Array {
    ArrayBuilder::new().items(one_of(values)).build()
}

fn connection_status() -> Object {
    one_of(&["active", "revoke_pending", "reauth_required"])
}

fn key_state() -> Object {
    one_of(&["primary", "decrypt-only", "retired"])
}

pub(super) fn bearer() -> Object {
    one_of(&["Bearer"])
}

pub(super) fn code_only() -> utoipa::openapi::schema::Array {
    array_of(&["code"])
}

pub(super) fn grant_types() -> utoipa::openapi::schema::Array {
    array_of(&["authorization_code", "refresh_token"])
}

pub(super) fn auth_none() -> Object {
    one_of(&["none"])
}

/// An RFC 6749 §5.2 / RFC 7591 §3.2.2 error, which OAuth clients parse.
#[derive(Serialize, ToSchema)]
pub struct OAuthError {
    pub error: String,
    pub error_description: String,
}

/// `GET /healthz`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`
    pub status: &'static str,
}

/// `GET /readyz`.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready`
    pub status: &'static str,
    /// The primary key-encryption key's version.
    pub primary_kek: i64,
}

/// The signed-in user, by id.
#[derive(Serialize, ToSchema)]
pub struct UserRef {
    pub id: String,
}

/// An identity the user signs in with.
#[derive(Serialize, ToSchema)]
pub struct Identity {
    pub provider: String,
    pub subject: String,
    #[schema(required = true)]
    pub email: Option<String>,
    #[schema(required = true)]
    pub name: Option<String>,
}

/// `GET /api/me`: the user, their identities and the session's CSRF token.
#[derive(Serialize, ToSchema)]
pub struct Me {
    pub user: UserRef,
    pub identities: Vec<Identity>,
    pub csrf_token: String,
}

/// One of the user's sessions.
#[derive(Serialize, ToSchema)]
pub struct SessionItem {
    pub id: String,
    pub current: bool,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub last_seen_at: String,
}

/// `GET /api/sessions`.
#[derive(Serialize, ToSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionItem>,
}

/// One of the user's connections.
#[derive(Serialize, ToSchema)]
pub struct ConnectionItem {
    pub id: String,
    pub provider: String,
    pub scopes: Vec<String>,
    #[schema(schema_with = connection_status)]
    pub status: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime, required = true)]
    pub last_used_at: Option<String>,
}

/// `GET /api/connections`.
#[derive(Serialize, ToSchema)]
pub struct ConnectionList {
    pub connections: Vec<ConnectionItem>,
}

/// `DELETE /api/connections/{id}`: erased, and whether the provider revoked it.
#[derive(Serialize, ToSchema)]
pub struct Disconnection {
    pub erased: bool,
    pub revoked: bool,
    /// Why the provider's revocation failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `body` as a JSON answer that holds a secret: serialized straight into a buffer that is
/// zeroized when dropped (no intermediate `Value`). A bare 500 if it cannot be written.
pub fn secret_json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(512));
    if serde_json::to_writer(&mut *buf, body).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let mut resp = (status, buf.to_vec()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// `POST /api/delegations`: the delegation token and when it expires.
// Borrows the token revealed, for `secret_json` to write.
#[derive(Serialize, ToSchema)]
pub struct Delegation<'a> {
    pub token: &'a str,
    #[schema(format = DateTime)]
    pub expires_at: String,
}

/// A tool the caller may run.
#[derive(Serialize, ToSchema)]
pub struct ToolItem {
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments: path arguments are required strings, query names
    /// optional strings.
    #[schema(value_type = Object)]
    pub input_schema: Value,
    pub provider: String,
    pub scopes: Vec<String>,
}

/// `GET /v1/tools`.
#[derive(Serialize, ToSchema)]
pub struct ToolList {
    pub tools: Vec<ToolItem>,
}

/// `POST /v1/tools/{tool}/run`: the provider's answer.
#[derive(Serialize, ToSchema)]
pub struct ToolRun {
    pub status: u16,
    /// Allow-listed response headers.
    #[schema(value_type = Object)]
    pub headers: serde_json::Map<String, Value>,
    /// The provider's JSON, or its text.
    #[schema(value_type = Value)]
    pub body: Value,
}

impl From<crate::executor::ToolOutput> for ToolRun {
    fn from(o: crate::executor::ToolOutput) -> Self {
        ToolRun {
            status: o.status,
            headers: o.headers,
            body: o.body,
        }
    }
}

/// `POST /v1/credentials/{provider}`: the access token, released.
// Described only: the executor, the one opener of plaintext, writes it.
#[derive(ToSchema)]
pub struct Credential {
    pub access_token: String,
    pub token_type: String,
    #[schema(format = DateTime, required = true)]
    pub expires_at: Option<String>,
    pub scopes: Vec<String>,
}

/// A key-encryption key version.
#[derive(Serialize, ToSchema)]
pub struct KeyVersion {
    pub version: i64,
    #[schema(schema_with = key_state)]
    pub state: &'static str,
    #[schema(format = DateTime)]
    pub created_at: String,
    pub records: i64,
    pub wraps: i64,
}

/// `GET /admin/keys`: the shape of `keys status --json`.
#[derive(Serialize, ToSchema)]
pub struct Keys {
    pub versions: Vec<KeyVersion>,
    pub rotation_due: bool,
}

impl From<crate::vault::KeyStatus> for Keys {
    fn from(s: crate::vault::KeyStatus) -> Self {
        Keys {
            versions: s
                .versions
                .into_iter()
                .map(|v| KeyVersion {
                    version: v.version,
                    state: v.state,
                    created_at: crate::clock::rfc3339(v.created_at),
                    records: v.records,
                    wraps: v.wraps,
                })
                .collect(),
            rotation_due: s.rotation_due,
        }
    }
}

/// `POST /admin/keys/rotate`: the new primary version.
#[derive(Serialize, ToSchema)]
pub struct Rotated {
    pub primary: i64,
}

/// `POST /admin/keys/rewrap`.
#[derive(Serialize, ToSchema)]
pub struct RewrapStarted {
    pub started: bool,
}

/// An audit event.
#[derive(Serialize, ToSchema)]
pub struct AuditEvent {
    pub seq: i64,
    #[schema(format = DateTime)]
    pub at: String,
    pub at_ms: i64,
    pub kind: String,
    pub actor: String,
    pub subject: String,
    pub outcome: String,
    pub request_id: String,
    #[schema(value_type = Value)]
    pub detail: Value,
    pub hash: String,
}

/// `GET /admin/audit`: a page of events, and where the next starts (`after`).
#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    pub events: Vec<AuditEvent>,
    #[schema(required = true)]
    pub next_after: Option<i64>,
}

/// `POST /admin/users/{id}/revoke`: what was ended.
#[derive(Serialize, ToSchema)]
pub struct UserRevoked {
    pub sessions: u64,
    pub delegations: u64,
    pub connections: u64,
    pub revoked_at_provider: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bodies keep the wire shapes of SPEC §5: field names, and `null` where today's
    /// service writes it.
    #[test]
    fn bodies_keep_their_wire_shape() {
        let c = ConnectionItem {
            id: "c".into(),
            provider: "p".into(),
            scopes: vec![],
            status: "active".into(),
            created_at: "t".into(),
            last_used_at: None,
        };
        assert_eq!(
            serde_json::to_value(c).unwrap(),
            serde_json::json!({"id": "c", "provider": "p", "scopes": [], "status": "active",
                "created_at": "t", "last_used_at": null})
        );
        let d = Disconnection {
            erased: true,
            revoked: true,
            detail: None,
        };
        assert_eq!(
            serde_json::to_value(d).unwrap(),
            serde_json::json!({"erased": true, "revoked": true})
        );
    }
}
