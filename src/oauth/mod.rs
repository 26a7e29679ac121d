//! Sign-in and account connection: the OAuth 2.0 authorization-code flow with PKCE (S256).
//! No axum types here; `http::browser` calls [`OAuth::prepare`] (any network first),
//! [`OAuth::start`] (inside its transaction) and [`OAuth::finish`] (`callback.rs`).
//!
//! A flow is a one-time `state` bound to the browser session that started it and expiring
//! after ten minutes. The database keeps only digests of the state and the session; the
//! PKCE verifier and the OIDC nonce are derived from the state with a key derived from the
//! root key, so they are never stored. Every token from a callback goes straight into the
//! vault, in the same transaction as the identity, the new session and the audit event.
//! Users are identified by (provider, subject); a second provider with the same email is
//! linked only by a signed-in user connecting it, never merged silently.

mod callback;
mod token;
mod wire;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use zeroize::Zeroizing;

use crate::clock::Clock;
use crate::crypto::{fill_random, hmac_sha256, sha256};
use crate::oidc::Oidc;
use crate::providers::Provider;
use crate::secret::{ClientSecret, SessionToken};
use crate::store::identities::{self, FlowRow};
use crate::store::{Conn, Db};
use crate::vault::Vault;

/// How long a started flow may take.
pub const FLOW_TTL: i64 = 600;

/// What went wrong in a flow. Messages never carry a code, a token or a secret.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("no such provider is configured for this")]
    UnknownProvider,
    #[error(
        "the sign-in request is unknown, was already used, expired, or belongs to another browser"
    )]
    InvalidState,
    /// The provider (or the person at it) refused this sign-in: `error=` on the callback,
    /// a spent code, an ID token that fails validation. A 400.
    #[error("the provider refused: {0}")]
    ProviderError(String),
    /// The provider did not work: unreachable, timed out, a 5xx, a malformed or
    /// incomplete answer from its token, userinfo, discovery or JWKS endpoint. A 502.
    #[error("the provider failed: {0}")]
    ProviderFailed(String),
    #[error("that account is already linked to another user")]
    AlreadyLinked,
    #[error("no such connection")]
    NoSuchConnection,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Vault(#[from] crate::vault::VaultError),
}

/// Where and how a provider revokes tokens (RFC 7009).
pub struct Revocation<'a> {
    pub url: &'a str,
    pub client_id: &'a str,
    pub secret: Option<&'a crate::secret::ClientSecret>,
    pub auth: crate::providers::ClientAuth,
}

impl From<crate::oidc::OidcError> for OAuthError {
    fn from(e: crate::oidc::OidcError) -> Self {
        match e {
            crate::oidc::OidcError::Refused(why) => OAuthError::ProviderError(why),
            crate::oidc::OidcError::Failed(why) => OAuthError::ProviderFailed(why),
        }
    }
}

/// Why a flow is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    Login,
    Connect { user_id: String },
}

/// The query of a callback.
#[derive(Default, serde::Deserialize)]
pub struct Callback {
    pub code: Option<String>,
    pub state: Option<String>,
    pub iss: Option<String>,
    pub error: Option<String>,
}

/// The authorization code and state are credentials for one flow: never printed.
impl std::fmt::Debug for Callback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callback")
            .field("code", &self.code.as_ref().map(|_| "[REDACTED]"))
            .field("state", &self.state.as_ref().map(|_| "[REDACTED]"))
            .field("iss", &self.iss)
            .field("error", &self.error)
            .finish()
    }
}

/// A finished flow.
#[derive(Debug)]
pub struct Finished {
    pub user_id: String,
    /// Whether this was a sign-in: the browser then moves to a new session of this user.
    pub signed_in: bool,
    pub return_to: String,
}

/// A provider with its client credentials, ready for flows.
struct Client {
    provider: Provider,
    client_id: String,
    secret: Option<ClientSecret>,
}

/// The flow service.
pub struct OAuth {
    db: Db,
    vault: Arc<Vault>,
    clients: BTreeMap<String, Client>,
    http: reqwest::Client,
    public_url: String,
    flow_key: Zeroizing<[u8; 32]>,
    clock: Arc<dyn Clock>,
    oidc: Oidc,
    /// Each tool's provider: a disconnect ends the delegations naming its tools.
    tool_providers: BTreeMap<String, String>,
}

/// A provider's endpoints, from the catalogue, configuration or discovery.
struct Endpoints {
    issuer: Option<String>,
    authorize: String,
    token: String,
    userinfo: Option<String>,
    jwks: Option<String>,
}

/// A flow whose provider and endpoints are resolved, from [`OAuth::prepare`]; the only way
/// to [`OAuth::start`] one, so endpoints are never looked up inside the transaction.
pub struct Prepared<'a> {
    client: &'a Client,
    endpoints: Endpoints,
    purpose: Purpose,
}

/// The provider's default scopes followed by `extra` ones it does not already have.
fn requested(p: &Provider, extra: &[String]) -> Vec<String> {
    let mut scopes = p.scopes.clone();
    for s in extra {
        if !scopes.contains(s) {
            scopes.push(s.clone());
        }
    }
    scopes
}

/// What a disconnect did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disconnected {
    /// Revoked at the provider (or it offers no revocation) and erased here.
    Erased { revoked: bool },
    /// Revocation failed for a reason other than unavailability; erased here anyway.
    ErasedRevocationFailed(String),
    /// The provider answered 503: the record is kept and marked `revoke_pending`.
    PendingRetry,
}

/// Only same-origin relative paths are honoured as `return_to`.
pub fn safe_return_to(raw: Option<&str>) -> String {
    match raw {
        Some(p)
            if p.starts_with('/')
                && !p.starts_with("//")
                && !p.starts_with("/\\")
                && p.len() <= 2048
                && p.chars().all(|c| c.is_ascii_graphic()) =>
        {
            p.to_owned()
        }
        _ => "/".to_owned(),
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Encodes for `application/x-www-form-urlencoded` bodies and query strings.
pub fn form_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A form body of `pairs` (the caller zeroizes what it held; the body is zeroized here).
pub fn form_body<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Zeroizing<String> {
    Zeroizing::new(
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish(),
    )
}

/// `client_secret_basic` (RFC 6749 §2.3.1): both parts form-encoded, then base64.
pub(crate) fn basic_auth(client_id: &str, secret: &ClientSecret) -> Zeroizing<String> {
    let creds = Zeroizing::new(format!(
        "{}:{}",
        form_encode(client_id),
        form_encode(secret.reveal())
    ));
    Zeroizing::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(creds.as_bytes())
    ))
}

/// Keeps only characters that can be shown safely from a provider's error code.
fn sanitize(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(64)
        .collect()
}

impl OAuth {
    /// Builds the service from resolved providers; configured ones get their secret now.
    pub fn new(
        db: Db,
        vault: Arc<Vault>,
        providers: &BTreeMap<String, Provider>,
        secrets: BTreeMap<String, ClientSecret>,
        config: &crate::config::Config,
        clock: Arc<dyn Clock>,
    ) -> Result<OAuth, reqwest::Error> {
        let mut secrets = secrets;
        let clients = providers
            .values()
            .filter_map(|p| {
                let client_id = p.client_id.clone()?;
                Some((
                    p.name.clone(),
                    Client {
                        provider: p.clone(),
                        client_id,
                        secret: secrets.remove(&p.name),
                    },
                ))
            })
            .collect();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(config.provider_timeout.unsigned_abs()))
            .user_agent("strongbox")
            .build()?;
        let flow_key = vault.derive_secret("oauth flow");
        Ok(OAuth {
            oidc: Oidc::new(config.https),
            db,
            vault,
            clients,
            http,
            public_url: config.public_url.clone(),
            flow_key,
            clock,
            tool_providers: BTreeMap::new(),
        })
    }

    /// The tool catalogue, so that a disconnect ends the delegations naming a tool of the
    /// provider as well as those naming the provider.
    pub fn with_tools(mut self, tools: &BTreeMap<String, crate::tools::Tool>) -> OAuth {
        self.tool_providers = tools
            .iter()
            .map(|(name, t)| (name.clone(), t.provider.clone()))
            .collect();
        self
    }

    /// Where and how `provider` revokes tokens, if it does (RFC 7009).
    pub(crate) fn revocation(&self, provider: &str) -> Option<Revocation<'_>> {
        let c = self.clients.get(provider)?;
        Some(Revocation {
            url: c.provider.revocation_url.as_deref()?,
            client_id: &c.client_id,
            secret: c.secret.as_ref(),
            auth: c.provider.client_auth,
        })
    }

    /// The user's identities: `(provider, subject, email, name)`.
    pub async fn identities(
        &self,
        user_id: &str,
    ) -> Result<Vec<(String, String, Option<String>, Option<String>)>, OAuthError> {
        Ok(identities::for_user(self.db.pool(), user_id).await?)
    }

    /// The user's identities as the `admins` rules read them: `(provider, subject, email,
    /// email verified)`.
    pub async fn identity_keys(
        &self,
        user_id: &str,
    ) -> Result<Vec<(String, String, Option<String>, bool)>, OAuthError> {
        Ok(identities::keys_of(self.db.pool(), user_id).await?)
    }

    /// Removes sign-in and connect flows past their time (housekeeping).
    pub async fn purge_flows(&self) -> Result<u64, OAuthError> {
        Ok(identities::purge_flows(self.db.pool(), self.clock.unix()).await?)
    }

    /// The outbound HTTP client for providers' endpoints (no redirects, the timeout).
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The tools of `provider`, by name.
    pub(crate) fn tools_of(&self, provider: &str) -> Vec<&str> {
        self.tool_providers
            .iter()
            .filter(|(_, p)| p.as_str() == provider)
            .map(|(t, _)| t.as_str())
            .collect()
    }

    fn client(&self, provider: &str, purpose: &Purpose) -> Result<&Client, OAuthError> {
        let c = self
            .clients
            .get(provider)
            .ok_or(OAuthError::UnknownProvider)?;
        match purpose {
            Purpose::Login if !c.provider.login => Err(OAuthError::UnknownProvider),
            _ => Ok(c),
        }
    }

    /// Where a user (re)connects `provider` with `scopes`: the URL a `reauth_required`,
    /// `not_connected` or `insufficient_scope` problem points at.
    pub fn connect_url(&self, provider: &str, scopes: &[String]) -> String {
        let list: Vec<String> = scopes.iter().map(|s| form_encode(s)).collect();
        format!(
            "{}/connect/{}?scopes={}",
            self.public_url,
            form_encode(provider),
            list.join(",")
        )
    }

    /// Whether `provider` is configured (has a client).
    pub fn is_configured(&self, provider: &str) -> bool {
        self.clients.contains_key(provider)
    }

    /// Providers configured for sign-in, by name and display name.
    pub fn login_providers(&self) -> Vec<(String, String)> {
        self.clients
            .values()
            .filter(|c| c.provider.login)
            .map(|c| (c.provider.name.clone(), c.provider.display_name.clone()))
            .collect()
    }

    /// Every configured provider, for connecting accounts: name, display name and the
    /// default scopes.
    pub fn connect_providers(&self) -> Vec<(String, String, Vec<String>)> {
        self.clients
            .values()
            .map(|c| {
                (
                    c.provider.name.clone(),
                    c.provider.display_name.clone(),
                    c.provider.scopes.clone(),
                )
            })
            .collect()
    }

    /// Endpoints of `c`; a generic OIDC provider's come from discovery (cached).
    async fn endpoints(&self, c: &Client) -> Result<Endpoints, OAuthError> {
        let p = &c.provider;
        let mut e = Endpoints {
            issuer: p.issuer.clone(),
            authorize: p.authorize_url.clone().unwrap_or_default(),
            token: p.token_url.clone().unwrap_or_default(),
            userinfo: p.userinfo_url.clone(),
            jwks: p.jwks_url.clone(),
        };
        if p.kind == crate::providers::Kind::Oidc
            && (e.authorize.is_empty() || e.token.is_empty() || e.jwks.is_none())
        {
            let issuer = p.issuer.as_deref().ok_or(OAuthError::UnknownProvider)?;
            let d = self.oidc.discover(&self.http, issuer).await?;
            if e.authorize.is_empty() {
                e.authorize = d.authorization_endpoint;
            }
            if e.token.is_empty() {
                e.token = d.token_endpoint;
            }
            e.userinfo = e.userinfo.or(d.userinfo_endpoint);
            e.jwks = e.jwks.or(Some(d.jwks_uri));
        }
        if e.authorize.is_empty() || e.token.is_empty() {
            return Err(OAuthError::UnknownProvider);
        }
        Ok(e)
    }

    fn redirect_uri(&self, provider: &str) -> String {
        format!("{}/oauth/callback/{provider}", self.public_url)
    }

    fn derived(&self, label: &str, state: &str) -> String {
        let mut msg = label.as_bytes().to_vec();
        msg.extend_from_slice(state.as_bytes());
        b64(&hmac_sha256(self.flow_key.as_slice(), &msg))
    }

    /// Resolves what starting a flow at `provider` needs from the network (a generic OIDC
    /// provider's discovery document) before the caller opens a transaction: on SQLite the
    /// transaction holds the one write lock, which a slow provider must never hold up.
    pub async fn prepare(
        &self,
        provider: &str,
        purpose: Purpose,
    ) -> Result<Prepared<'_>, OAuthError> {
        let client = self.client(provider, &purpose)?;
        let endpoints = self.endpoints(client).await?;
        Ok(Prepared {
            client,
            endpoints,
            purpose,
        })
    }

    /// The display name of `provider` and the scopes connecting it with `extra` asks for:
    /// what a person confirms before a connect flow starts. No network.
    pub fn connect_plan(
        &self,
        provider: &str,
        extra: &[String],
    ) -> Result<(String, Vec<String>), OAuthError> {
        let c = self
            .clients
            .get(provider)
            .ok_or(OAuthError::UnknownProvider)?;
        Ok((
            c.provider.display_name.clone(),
            requested(&c.provider, extra),
        ))
    }

    /// Starts a prepared flow for the browser session `session` inside the caller's
    /// transaction (no network here) and returns the provider URL to send the browser to.
    pub async fn start(
        &self,
        conn: &mut Conn,
        prepared: Prepared<'_>,
        session: &SessionToken,
        extra_scopes: &[String],
        return_to: Option<&str>,
    ) -> Result<String, OAuthError> {
        let Prepared {
            client: c,
            endpoints,
            purpose,
        } = prepared;
        let p = &c.provider;
        let provider = p.name.as_str();
        let mut state_raw = [0u8; 32];
        fill_random(&mut state_raw).map_err(crate::vault::VaultError::from)?;
        let state = b64(&state_raw);
        let scopes = requested(p, extra_scopes);
        let (purpose_name, user_id) = match purpose {
            Purpose::Login => ("login", None),
            Purpose::Connect { user_id } => ("connect", Some(user_id)),
        };
        let flow = FlowRow {
            session_hash: sha256(&[session.reveal().as_bytes()]).to_vec(),
            provider: provider.to_owned(),
            purpose: purpose_name.to_owned(),
            user_id,
            scopes: scopes.join(" "),
            return_to: safe_return_to(return_to),
            expires_at: self.clock.unix() + FLOW_TTL,
        };
        identities::insert_flow(conn, &sha256(&[state.as_bytes()]), &flow).await?;
        let verifier = self.derived("pkce:", &state);
        let challenge = b64(&sha256(&[verifier.as_bytes()]));
        let mut params = vec![
            ("response_type", "code".to_owned()),
            ("client_id", c.client_id.clone()),
            ("redirect_uri", self.redirect_uri(provider)),
            ("scope", scopes.join(&p.scope_separator)),
            ("state", state.clone()),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256".to_owned()),
        ];
        if p.kind == crate::providers::Kind::Oidc {
            params.push(("nonce", self.derived("nonce:", &state)));
        }
        let extra = p
            .authorize_params
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()));
        let mut url = endpoints.authorize;
        url.push(if url.contains('?') { '&' } else { '?' });
        let query = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params.into_iter().chain(extra))
            .finish();
        url.push_str(&query);
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_to_is_same_origin_only() {
        assert_eq!(safe_return_to(Some("/account?x=1")), "/account?x=1");
        for bad in [
            "//evil.example",
            "https://evil.example",
            "/\\evil",
            "evil",
            "",
            "/a b",
        ] {
            assert_eq!(safe_return_to(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_return_to(None), "/");
    }

    #[test]
    fn callback_debug_hides_code_and_state() {
        let cb = Callback {
            code: Some("c0de-secret".into()),
            state: Some("st4te".into()),
            ..Callback::default()
        };
        let printed = format!("{cb:?}");
        assert!(
            !printed.contains("c0de-secret") && !printed.contains("st4te"),
            "{printed}"
        );
    }

    #[test]
    fn form_encoding() {
        assert_eq!(form_encode("a b&c=d/é"), "a+b%26c%3Dd%2F%C3%A9");
        assert_eq!(sanitize("access_denied<script>"), "access_deniedscript");
    }
}
