//! OAuth clients: registered agents (a secret, or a JWKS for `private_key_jwt`), public
//! clients registered by RFC 7591, and public clients named by a client ID metadata
//! document (an https URL whose JSON names the client and its redirect URIs).
//!
//! A metadata document is fetched like a tool's API call is made: https only (plain http
//! only to loopback while `public_url` is plain http), no redirects, the provider timeout
//! and a size cap; it is cached for an hour in the client's `agent` row.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{AuthServer, GrantError, METADATA_TTL};
use crate::audit::{self, Actor, Event, Kind};
use crate::store::grants::{self as rows, ClientRow};

/// Largest client ID metadata document read.
const MAX_METADATA: usize = 16 * 1024;
/// Most redirect URIs a client may register.
const MAX_REDIRECTS: usize = 10;

/// How a client proves who it is at the token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientKind {
    /// A registered agent with a secret (`client_secret_basic` / `client_secret_post`).
    Secret,
    /// A registered agent with a JWKS (`private_key_jwt`).
    KeyJwt(String),
    /// A public client (`none`): registered by RFC 7591 or by its metadata document.
    Public,
}

/// A client, as the authorization server uses it.
#[derive(Clone)]
pub struct Client {
    /// The agent row's id.
    pub id: String,
    /// The `client_id` (the agent's name in policies and the audit trail).
    pub name: String,
    /// What the consent page calls it.
    pub display: String,
    pub kind: ClientKind,
    pub redirect_uris: Vec<String>,
    pub(super) secret_hash: Vec<u8>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Client {
    fn from_row(row: ClientRow) -> Client {
        let redirect_uris = serde_json::from_str(&row.redirect_uris).unwrap_or_default();
        let kind = match (row.kind.as_str(), row.jwks) {
            ("registered", Some(jwks)) => ClientKind::KeyJwt(jwks),
            ("registered", None) => ClientKind::Secret,
            _ => ClientKind::Public,
        };
        let display = match (&kind, row.display_name) {
            (ClientKind::Public, Some(name)) if row.kind == "metadata" => {
                let host = url::Url::parse(&row.name)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_owned))
                    .unwrap_or_default();
                format!("{name} ({host})")
            }
            (ClientKind::Public, Some(name)) => format!("{name} (unverified)"),
            _ => row.name.clone(),
        };
        Client {
            id: row.id,
            name: row.name,
            display,
            kind,
            redirect_uris,
            secret_hash: row.secret_hash,
        }
    }
}

/// An RFC 7591 registration request (the fields Strongbox reads; others are ignored).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RegistrationRequest {
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    pub client_name: Option<String>,
    pub token_endpoint_auth_method: Option<String>,
    pub grant_types: Option<Vec<String>>,
    pub response_types: Option<Vec<String>>,
    pub scope: Option<String>,
}

/// The registration response (RFC 7591 §3.2.1).
#[derive(Debug, Clone, Serialize)]
pub struct Registered {
    pub client_id: String,
    pub client_id_issued_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
    pub redirect_uris: Vec<String>,
    pub token_endpoint_auth_method: &'static str,
    pub grant_types: [&'static str; 2],
    pub response_types: [&'static str; 1],
}

/// Whether a redirect URI may be registered: an absolute https URL, or plain http to a
/// loopback address (native and command-line clients, RFC 8252 §7.3), with no fragment
/// and no user info.
pub fn valid_redirect_uri(uri: &str) -> bool {
    let Ok(url) = url::Url::parse(uri) else {
        return false;
    };
    uri.len() <= 512
        && url.fragment().is_none()
        && url.username().is_empty()
        && url.password().is_none()
        && url.host().is_some()
        && match url.scheme() {
            "https" => true,
            "http" => crate::config::secure_endpoint(uri),
            _ => false,
        }
}

/// A name the consent page can show as it is: no control characters, and none of the
/// invisible ones that reorder or hide text (bidirectional overrides, zero-width marks).
fn valid_client_name(name: &str) -> bool {
    let invisible = |c: char| {
        matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}'
            | '\u{061C}' | '\u{FEFF}')
    };
    (1..=100).contains(&name.chars().count())
        && !name.chars().any(|c| c.is_control() || invisible(c))
}

/// The URL of a client ID metadata document, if it may be fetched: https on port 443
/// (plain http only to loopback, and only in development: `!https`), in its normal form,
/// with a path and no query, user info or fragment, and not an IP literal outside the
/// public internet (names are held to that by the resolver, [`crate::outbound::PublicOnly`]).
fn screen_metadata_url(url: &str, https: bool) -> Result<url::Url, &'static str> {
    let parsed = url::Url::parse(url).map_err(|_| "not a URL")?;
    let dev_loopback = !https && parsed.scheme() == "http" && crate::config::secure_endpoint(url);
    let https_default_port = parsed.scheme() == "https" && parsed.port().is_none();
    if !(https_default_port || dev_loopback)
        || parsed.as_str() != url
        || parsed.query().is_some()
        || parsed.fragment().is_some()
        || !parsed.username().is_empty()
        || parsed.password().is_some()
        || parsed.path() == "/"
    {
        return Err("not an https URL on port 443 with a path");
    }
    let literal = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
        _ => None,
    };
    if literal.is_some_and(|ip| {
        !(crate::outbound::public_address(ip) || (dev_loopback && ip.is_loopback()))
    }) {
        return Err("a private address");
    }
    Ok(parsed)
}

/// The client ID metadata document fields Strongbox reads.
#[derive(Debug, Deserialize)]
struct MetadataDocument {
    client_id: String,
    client_name: Option<String>,
    #[serde(default)]
    redirect_uris: Vec<String>,
    token_endpoint_auth_method: Option<String>,
}

impl AuthServer {
    /// The client named `client_id`: an agent row, or one made from the metadata document
    /// at that URL (fetched now unless cached within the hour).
    pub async fn client(&self, client_id: &str) -> Result<Client, GrantError> {
        let unknown = || GrantError::InvalidClient("unknown client_id".into());
        if client_id.is_empty() || client_id.len() > 255 {
            return Err(unknown());
        }
        let row = rows::client_by_name(self.db.pool(), client_id).await?;
        if client_id.starts_with("https://") || client_id.starts_with("http://") {
            let fresh = row.as_ref().is_some_and(|r| {
                r.kind == "metadata"
                    && r.fetched_at
                        .is_some_and(|t| self.clock.unix() - t < METADATA_TTL)
            });
            return match row {
                Some(r) if fresh => Ok(Client::from_row(r)),
                Some(r) if r.kind != "metadata" => Err(unknown()),
                cached => self.fetch_metadata(client_id, cached).await,
            };
        }
        row.map(Client::from_row).ok_or_else(unknown)
    }

    /// A client already known here (registered, or whose metadata document was fetched at
    /// an authorization request), without fetching anything: the token and revocation
    /// endpoints never reach out to a URL a caller names.
    pub async fn known_client(&self, client_id: &str) -> Result<Client, GrantError> {
        rows::client_by_name(self.db.pool(), client_id)
            .await?
            .map(Client::from_row)
            .ok_or_else(|| GrantError::InvalidClient("unknown client_id".into()))
    }

    /// Fetches, checks and stores a client ID metadata document. Who chooses the URL is
    /// whoever sends the authorization request, so: https on port 443 only (plain http only
    /// to loopback in development), no query, user info or fragment, public addresses
    /// only (the resolver and IP literals alike), a few fetches at a time, and one answer
    /// for every way it can fail, so the fetch tells nothing about what is behind the URL.
    async fn fetch_metadata(
        &self,
        url: &str,
        cached: Option<ClientRow>,
    ) -> Result<Client, GrantError> {
        let refused = |why: &str| {
            tracing::info!(
                client_id = url,
                reason = why,
                "client metadata document refused"
            );
            GrantError::InvalidClient(
                "the client_id names a client metadata document that cannot be used".into(),
            )
        };
        let parsed = screen_metadata_url(url, self.https).map_err(refused)?;
        let _permit = self
            .fetches
            .acquire()
            .await
            .map_err(|_| refused("shutting down"))?;
        let resp = self
            .http
            .get(parsed)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|_| refused("unreachable"))?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(refused("not answered with 200"));
        }
        let body = crate::outbound::read_capped(resp, MAX_METADATA)
            .await
            .map_err(|_| refused("too large or cut off"))?;
        let doc: MetadataDocument =
            serde_json::from_slice(&body).map_err(|_| refused("not the expected JSON"))?;
        if doc.client_id != url {
            return Err(refused("its client_id is not its own URL"));
        }
        if !matches!(
            doc.token_endpoint_auth_method.as_deref(),
            None | Some("none")
        ) {
            return Err(refused("not a public client"));
        }
        if doc.redirect_uris.is_empty()
            || doc.redirect_uris.len() > MAX_REDIRECTS
            || !doc.redirect_uris.iter().all(|r| valid_redirect_uri(r))
        {
            return Err(refused("bad redirect_uris"));
        }
        let name = doc.client_name.filter(|n| valid_client_name(n));
        let now = self.clock.unix();
        let row = ClientRow {
            id: cached.as_ref().map_or_else(
                || uuid::Uuid::new_v4().simple().to_string(),
                |c| c.id.clone(),
            ),
            name: url.to_owned(),
            kind: "metadata".into(),
            secret_hash: Vec::new(),
            redirect_uris: serde_json::to_string(&doc.redirect_uris)
                .unwrap_or_else(|_| "[]".into()),
            jwks: None,
            display_name: name,
            fetched_at: Some(now),
            created_at: cached.as_ref().map_or(now, |c| c.created_at),
        };
        let mut tx = self.db.begin().await?;
        if let Some(before) = &cached {
            rows::update_metadata(&mut tx, &row).await?;
            // Where codes may be sent is security-relevant: a change is audited.
            if before.redirect_uris != row.redirect_uris || before.display_name != row.display_name
            {
                let event = Event::new(Kind::ClientUpdated, Actor::System, format!("agent:{url}"))
                    .detail(json!({ "client_id": url, "how": "metadata_document",
                                    "redirect_uris": doc.redirect_uris,
                                    "previous_redirect_uris": serde_json::from_str::<Vec<String>>(&before.redirect_uris).unwrap_or_default() }));
                audit::append(&mut tx, self.clock.unix_ms(), event).await?;
            }
        } else if rows::insert_client(&mut tx, &row).await? {
            let event = Event::new(
                Kind::ClientRegistered,
                Actor::System,
                format!("agent:{url}"),
            )
            .detail(json!({ "client_id": url, "how": "metadata_document",
                                "redirect_uris": doc.redirect_uris }));
            audit::append(&mut tx, self.clock.unix_ms(), event).await?;
        }
        tx.commit().await?;
        // Another request may have stored it first: read what is there.
        rows::client_by_name(self.db.pool(), url)
            .await?
            .map(Client::from_row)
            .ok_or_else(|| refused("not stored"))
    }

    /// RFC 7591 registration of a public client.
    pub async fn register(&self, req: RegistrationRequest) -> Result<Registered, GrantError> {
        let meta = GrantError::InvalidClientMetadata;
        if !matches!(
            req.token_endpoint_auth_method.as_deref(),
            None | Some("none")
        ) {
            return Err(meta(
                "only public clients (token_endpoint_auth_method none) may register; \
                 confidential agents are registered with `strongbox agents add`"
                    .into(),
            ));
        }
        if let Some(g) = &req.grant_types
            && g.iter()
                .any(|g| g != "authorization_code" && g != "refresh_token")
        {
            return Err(meta(
                "grant_types may be authorization_code and refresh_token".into(),
            ));
        }
        if let Some(r) = &req.response_types
            && r.iter().any(|r| r != "code")
        {
            return Err(meta("response_types may only be code".into()));
        }
        if req.redirect_uris.is_empty()
            || req.redirect_uris.len() > MAX_REDIRECTS
            || !req.redirect_uris.iter().all(|r| valid_redirect_uri(r))
        {
            return Err(GrantError::InvalidRedirectUri(
                "redirect_uris: 1 to 10 https URLs (plain http only to loopback), no fragment"
                    .into(),
            ));
        }
        if let Some(s) = &req.scope {
            self.parse_scope(Some(s)).map_err(|e| meta(e.to_string()))?;
        }
        let name = match req.client_name {
            Some(n) if !valid_client_name(&n) => {
                return Err(meta(
                    "client_name: 1 to 100 characters, no control characters".into(),
                ));
            }
            other => other,
        };
        let id = uuid::Uuid::new_v4().simple().to_string();
        let now = self.clock.unix();
        let row = ClientRow {
            id: id.clone(),
            name: format!("client-{id}"),
            kind: "dynamic".into(),
            secret_hash: Vec::new(),
            redirect_uris: serde_json::to_string(&req.redirect_uris)
                .unwrap_or_else(|_| "[]".into()),
            jwks: None,
            display_name: name.clone(),
            fetched_at: None,
            created_at: now,
        };
        let mut tx = self.db.begin().await?;
        rows::insert_client(&mut tx, &row).await?;
        let event = Event::new(
            Kind::ClientRegistered,
            Actor::System,
            format!("agent:{}", row.name),
        )
        .detail(
            json!({ "client_id": row.name, "how": "dynamic_registration",
                            "client_name": name, "redirect_uris": req.redirect_uris }),
        );
        audit::append(&mut tx, self.clock.unix_ms(), event).await?;
        tx.commit().await?;
        Ok(Registered {
            client_id: row.name,
            client_id_issued_at: now,
            client_name: name,
            redirect_uris: req.redirect_uris,
            token_endpoint_auth_method: "none",
            grant_types: ["authorization_code", "refresh_token"],
            response_types: ["code"],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::screen_metadata_url as screen;

    #[test]
    fn metadata_urls_outside_the_public_https_web_are_refused() {
        for bad in [
            "https://10.0.0.1/c.json",
            "https://127.0.0.1/c.json",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/c.json",
            "https://[::ffff:10.0.0.1]/c.json",
            "https://[fd00::1]/c.json",
            "https://example.com:8443/c.json",
            "https://example.com/c.json?x=1",
            "https://example.com/c.json#f",
            "https://user:pw@example.com/c.json",
            "https://example.com/",
            "https://example.com/a/../c.json",
            "http://example.com/c.json",
            "http://10.0.0.1/c.json",
            "ftp://example.com/c.json",
        ] {
            assert!(screen(bad, false).is_err(), "{bad}");
            assert!(screen(bad, true).is_err(), "{bad}");
        }
        assert!(screen("https://example.com/c.json", true).is_ok());
        assert!(screen("https://93.184.216.34/c.json", true).is_ok());
        // Plain http to loopback in development only.
        assert!(screen("http://127.0.0.1:8765/c.json", false).is_ok());
        assert!(screen("http://127.0.0.1:8765/c.json", true).is_err());
    }
}
