//! The agent-facing half of the executor: fresh credentials (single-flight refresh), tool
//! runs and raw credential release. Checks that do not need a plaintext (agent, delegation,
//! policy, scopes) run before anything is opened.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::Executor;
use crate::agents::Delegation;
use crate::audit::{self, Actor, Event, Kind, Outcome};
use crate::clock::{Clock, rfc3339};
use crate::error::Error;
use crate::journal::Journal;
use crate::oauth::{OAuth, OAuthError};
use crate::policy::{Action, Policies};
use crate::secret::{AccessToken, IdToken, RefreshToken};
use crate::store::Db;
use crate::store::connection as conns;
use crate::tools::Tool;
use crate::vault::{Scopes, SealedCredential, TokenSet, Vault};

/// An access token this close to expiry (seconds) is refreshed before use.
pub const REFRESH_MARGIN: i64 = 60;
/// Largest provider response a tool run reads.
pub const MAX_TOOL_RESPONSE: usize = 1 << 20;
/// Response headers a tool run passes back.
const HEADER_ALLOW_LIST: &[&str] = &[
    "content-type",
    "content-language",
    "etag",
    "last-modified",
    "retry-after",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
];

/// Who is asking, after authentication and delegation checks.
#[derive(Debug, Clone)]
pub struct Caller {
    pub agent: String,
    pub delegation: Delegation,
    pub request_id: String,
}

/// A released credential, serialized: the only place a token leaves the service.
pub struct Released(pub Zeroizing<String>);

/// What a tool run returns.
#[derive(Debug, serde::Serialize)]
pub struct ToolOutput {
    pub status: u16,
    pub headers: serde_json::Map<String, Value>,
    pub body: Value,
}

/// Runs tools and releases credentials for agents.
pub struct Broker {
    exec: Executor,
    vault: Arc<Vault>,
    oauth: Arc<OAuth>,
    db: Db,
    clock: Arc<dyn Clock>,
    http: reqwest::Client,
    lease_seconds: i64,
    journal: Journal,
    flights: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl Broker {
    pub fn new(
        vault: Arc<Vault>,
        oauth: Arc<OAuth>,
        db: Db,
        clock: Arc<dyn Clock>,
        provider_timeout: i64,
        journal: Journal,
    ) -> Result<Broker, reqwest::Error> {
        // Redirects are followed only on the origin they start from, at most five.
        let policy = reqwest::redirect::Policy::custom(|attempt| {
            let same = attempt.previous().first().is_some_and(|first| {
                first.scheme() == attempt.url().scheme()
                    && first.host_str() == attempt.url().host_str()
                    && first.port_or_known_default() == attempt.url().port_or_known_default()
            });
            if same && attempt.previous().len() <= 5 {
                attempt.follow()
            } else {
                attempt.stop()
            }
        });
        let http = reqwest::Client::builder()
            .redirect(policy)
            .timeout(Duration::from_secs(provider_timeout.unsigned_abs()))
            .user_agent("strongbox")
            .build()?;
        Ok(Broker {
            exec: Executor::new(Arc::clone(&vault)),
            vault,
            oauth,
            db,
            clock,
            http,
            lease_seconds: provider_timeout + 5,
            journal,
            flights: Mutex::new(HashMap::new()),
        })
    }

    /// The in-process single-flight lock for one connection.
    fn flight(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self
            .flights
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(lock) = map.get(id).and_then(Weak::upgrade) {
            return lock;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        map.insert(id.to_owned(), Arc::downgrade(&lock));
        lock
    }

    fn needs_refresh(&self, sealed: &SealedCredential, margin: i64) -> bool {
        sealed
            .expires_at()
            .is_some_and(|t| t - self.clock.unix() < margin)
    }

    /// Refreshes connection `id` ahead of time when its token expires within `margin`
    /// seconds (the background refresher). Same single flight as on-demand refresh.
    pub async fn refresh_ahead(&self, id: &str, margin: i64) -> Result<bool, Error> {
        let Some(sealed) = self.vault.load_by_id(id).await? else {
            return Ok(false);
        };
        if sealed.status() != "active" || !self.needs_refresh(&sealed, margin) {
            return Ok(false);
        }
        self.fresh_within(sealed, &Actor::System, margin).await?;
        Ok(true)
    }

    fn reauth(&self, sealed: &SealedCredential) -> Error {
        let scopes: Vec<String> = sealed.scopes().iter().map(|s| (*s).to_owned()).collect();
        Error::ReauthRequired {
            provider: sealed.provider().to_owned(),
            url: self.oauth.connect_url(sealed.provider(), &scopes),
        }
    }

    /// The connection with an access token valid for at least [`REFRESH_MARGIN`] seconds,
    /// refreshing it first if needed. Concurrent callers, in this process and in others
    /// sharing the database, cause one refresh at the provider and all see its result.
    pub async fn fresh(
        &self,
        sealed: SealedCredential,
        actor: &Actor,
    ) -> Result<SealedCredential, Error> {
        self.fresh_within(sealed, actor, REFRESH_MARGIN).await
    }

    async fn fresh_within(
        &self,
        sealed: SealedCredential,
        actor: &Actor,
        margin: i64,
    ) -> Result<SealedCredential, Error> {
        if sealed.status() == "reauth_required" {
            return Err(self.reauth(&sealed));
        }
        if !self.needs_refresh(&sealed, margin) {
            return Ok(sealed);
        }
        let id = sealed.id().to_owned();
        let lock = self.flight(&id);
        let _one_here = lock.lock().await;
        let deadline = self.clock.unix() + self.lease_seconds + 5;
        loop {
            // Re-read after every wait: someone else may have refreshed already.
            let current = self
                .vault
                .load_by_id(&id)
                .await?
                .ok_or_else(|| Error::NotConnected {
                    provider: sealed.provider().to_owned(),
                    url: self.oauth.connect_url(sealed.provider(), &[]),
                })?;
            if current.status() == "reauth_required" {
                return Err(self.reauth(&current));
            }
            if !self.needs_refresh(&current, margin) {
                return Ok(current);
            }
            let now = self.clock.unix();
            if conns::take_refresh_lease(self.db.pool(), &id, now, now + self.lease_seconds).await?
            {
                return self.refresh_leased(current, actor).await;
            }
            if self.clock.unix() > deadline {
                return Err(Error::RefreshBusy);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Refreshes `current`, whose lease this task holds; the lease ends with the store (or
    /// the failure record) in one transaction.
    async fn refresh_leased(
        &self,
        current: SealedCredential,
        actor: &Actor,
    ) -> Result<SealedCredential, Error> {
        let old = self.exec.with_tokens(&current, copy_tokens).await?;
        let Some(refresh_token) = old.refresh_token.as_ref() else {
            let mut tx = self.db.begin().await?;
            conns::release_refresh_lease(&mut tx, current.id()).await?;
            tx.commit().await?;
            return Err(self.reauth(&current));
        };
        let subject = format!("user:{}", current.user_id());
        let base = json!({"connection": current.id(), "provider": current.provider()});
        match self
            .oauth
            .refresh_grant(current.provider(), refresh_token, &old.scopes)
            .await
        {
            Ok(new) => {
                // The new refresh token (or, without one, the old) is stored, and the lease
                // released, before the new access token is used.
                let merged = TokenSet {
                    refresh_token: new
                        .refresh_token
                        .or_else(|| Some(RefreshToken::new(refresh_token.reveal().to_owned()))),
                    id_token: new.id_token.or_else(|| {
                        old.id_token
                            .as_ref()
                            .map(|t| IdToken::new(t.reveal().to_owned()))
                    }),
                    scopes: if new.scopes.is_empty() {
                        old.scopes.clone()
                    } else {
                        new.scopes
                    },
                    ..new
                };
                let rotated = merged
                    .refresh_token
                    .as_ref()
                    .is_some_and(|t| !t.ct_eq(refresh_token));
                let mut tx = self.db.begin().await?;
                let event = Event::new(Kind::CredentialRefreshed, actor.clone(), subject)
                    .detail(json!({"rotated_refresh_token": rotated}));
                self.vault
                    .store(
                        &mut tx,
                        event,
                        current.user_id(),
                        current.provider(),
                        &merged,
                        Scopes::Replace,
                    )
                    .await?;
                tx.commit().await?;
                self.vault
                    .load_by_id(current.id())
                    .await?
                    .ok_or_else(|| self.reauth(&current))
            }
            Err(OAuthError::ProviderError(reason)) if reason == "invalid_grant" => {
                // Revoked or expired refresh token. Only if it is still the stored one
                // (nobody replaced it meanwhile) does the connection need the user again.
                let mut tx = self.db.begin().await?;
                let now_stored = conns::find_for_update(
                    &mut tx,
                    self.db.backend(),
                    current.user_id(),
                    current.provider(),
                )
                .await?;
                let still_ours = now_stored
                    .as_ref()
                    .is_some_and(|r| r.id == current.id() && r.generation == current.generation());
                if still_ours {
                    self.vault
                        .set_status(&mut tx, current.id(), "reauth_required")
                        .await?;
                }
                conns::release_refresh_lease(&mut tx, current.id()).await?;
                let event = Event::new(Kind::RefreshFailed, actor.clone(), subject)
                    .outcome(Outcome::Failure)
                    .detail(
                        json!({"connection": current.id(), "provider": current.provider(),
                        "reason": "invalid_grant", "reauth_required": still_ours}),
                    );
                audit::append(&mut tx, self.clock.unix_ms(), event).await?;
                tx.commit().await?;
                if still_ours {
                    Err(self.reauth(&current))
                } else {
                    Err(Error::RefreshBusy)
                }
            }
            Err(e) => {
                let reason = match &e {
                    OAuthError::ProviderError(r) | OAuthError::ProviderFailed(r) => r.clone(),
                    other => other.to_string(),
                };
                let mut tx = self.db.begin().await?;
                conns::release_refresh_lease(&mut tx, current.id()).await?;
                let mut detail = base;
                if let Some(d) = detail.as_object_mut() {
                    d.insert("reason".into(), reason.clone().into());
                }
                let event = Event::new(Kind::RefreshFailed, actor.clone(), subject)
                    .outcome(Outcome::Failure)
                    .detail(detail);
                audit::append(&mut tx, self.clock.unix_ms(), event).await?;
                tx.commit().await?;
                Err(Error::ProviderFailed(reason))
            }
        }
    }

    /// Loads the caller's connection to `provider` and checks it holds `scopes`.
    async fn connection(
        &self,
        user_id: &str,
        provider: &str,
        scopes: &[String],
        preloaded: Option<SealedCredential>,
    ) -> Result<SealedCredential, Error> {
        let loaded = match preloaded {
            Some(s) if s.user_id() == user_id && s.provider() == provider => Some(s),
            _ => self.vault.load(user_id, provider).await?,
        };
        let sealed = loaded.ok_or_else(|| Error::NotConnected {
            provider: provider.to_owned(),
            url: self.oauth.connect_url(provider, scopes),
        })?;
        let granted = sealed.scopes();
        if scopes.iter().any(|s| !granted.contains(&s.as_str())) {
            let mut wanted: Vec<String> = granted.iter().map(|s| (*s).to_owned()).collect();
            for s in scopes {
                if !wanted.contains(s) {
                    wanted.push(s.clone());
                }
            }
            return Err(Error::InsufficientScope {
                provider: provider.to_owned(),
                url: self.oauth.connect_url(provider, &wanted),
            });
        }
        Ok(sealed)
    }

    /// Appends a policy denial in its own transaction.
    pub async fn audit_denial(
        &self,
        caller: &Caller,
        what: Value,
        policies: &[String],
    ) -> Result<(), Error> {
        let mut tx = self.db.begin().await?;
        let mut detail = what;
        if let Some(d) = detail.as_object_mut() {
            d.insert("agent".into(), caller.agent.clone().into());
            d.insert("delegation".into(), caller.delegation.handle.clone().into());
            d.insert("decision".into(), "deny".into());
            d.insert("determining_policies".into(), policies.to_vec().into());
        }
        let event = Event::new(
            Kind::PolicyDenied,
            Actor::Agent(caller.agent.clone()),
            format!("user:{}", caller.delegation.user_id),
        )
        .outcome(Outcome::Denied)
        .request_id(caller.request_id.clone())
        .detail(detail);
        audit::append(&mut tx, self.clock.unix_ms(), event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records a use durably (group commit): the audit event and the connection's last
    /// use. Returns only once committed.
    async fn record_use(&self, sealed: &SealedCredential, event: Event) -> Result<(), Error> {
        self.journal
            .record(event, Some(sealed.id().to_owned()))
            .await
            .map_err(|e| Error::NotRecorded(e.to_string()))?;
        Ok(())
    }

    /// Raw release: the access token, after the release is durably audited.
    pub async fn release(
        &self,
        caller: &Caller,
        policies: &Policies,
        provider: &str,
        requested: Option<Vec<String>>,
        preloaded: Option<SealedCredential>,
    ) -> Result<Released, Error> {
        let d = &caller.delegation;
        if !d.providers.iter().any(|p| p == provider) {
            return Err(Error::ProviderNotDelegated(provider.to_owned()));
        }
        let scopes = requested.unwrap_or_default();
        let sealed = self
            .connection(&d.user_id, provider, &scopes, preloaded)
            .await?;
        let scopes: Vec<String> = if scopes.is_empty() {
            sealed.scopes().iter().map(|s| (*s).to_owned()).collect()
        } else {
            scopes
        };
        let verdict = policies.decide(
            &caller.agent,
            &d.user_id,
            &Action::FetchCredential { provider },
            &scopes,
        )?;
        if !verdict.allowed {
            self.audit_denial(
                caller,
                json!({"action": "fetch_credential", "provider": provider, "scopes": scopes,
                    "errors": verdict.errors}),
                &verdict.policies,
            )
            .await?;
            return Err(Error::PolicyDenied);
        }
        let actor = Actor::Agent(caller.agent.clone());
        let sealed = self.fresh(sealed, &actor).await?;
        // Durable before the token leaves: if this fails, nothing is released.
        let event = Event::new(
            Kind::CredentialReleased,
            actor,
            format!("user:{}", d.user_id),
        )
        .request_id(caller.request_id.clone())
        .detail(
            json!({"agent": caller.agent, "delegation": d.handle, "provider": provider,
                "connection": sealed.id(), "scopes": scopes, "policies": verdict.policies}),
        );
        self.record_use(&sealed, event).await?;
        let expires_at = sealed.expires_at().map(rfc3339);
        let body = self
            .exec
            .with_tokens(&sealed, |t| {
                Zeroizing::new(
                    json!({
                        "access_token": t.access_token.reveal(),
                        "token_type": t.token_type,
                        "expires_at": expires_at,
                        "scopes": scopes,
                    })
                    .to_string(),
                )
            })
            .await?;
        Ok(Released(body))
    }

    /// Runs `tool` for the caller with `args` (checked already: `url` is the request URL).
    pub async fn run(
        &self,
        caller: &Caller,
        policies: &Policies,
        tool: &Tool,
        url: reqwest::Url,
        preloaded: Option<SealedCredential>,
    ) -> Result<ToolOutput, Error> {
        let d = &caller.delegation;
        if !d.tools.iter().any(|t| t == &tool.name) {
            return Err(Error::ToolNotDelegated(tool.name.clone()));
        }
        let verdict = policies.decide(
            &caller.agent,
            &d.user_id,
            &Action::RunTool {
                tool: &tool.name,
                provider: &tool.provider,
                tool_scopes: &tool.scopes,
            },
            &tool.scopes,
        )?;
        if !verdict.allowed {
            self.audit_denial(
                caller,
                json!({"action": "run_tool", "tool": tool.name, "provider": tool.provider,
                    "scopes": tool.scopes, "errors": verdict.errors}),
                &verdict.policies,
            )
            .await?;
            return Err(Error::PolicyDenied);
        }
        let sealed = self
            .connection(&d.user_id, &tool.provider, &tool.scopes, preloaded)
            .await?;
        let actor = Actor::Agent(caller.agent.clone());
        let sealed = self.fresh(sealed, &actor).await?;
        let request = self
            .exec
            .with_tokens(&sealed, |t| {
                self.http
                    .request(tool.method.clone(), url.clone())
                    .bearer_auth(t.access_token.reveal())
                    .header("Accept", "application/json")
            })
            .await?;
        let outcome = read_tool_response(request).await;
        let (status, failure) = match &outcome {
            Ok(out) if out.status >= 500 => {
                (Some(out.status), Some(format!("status_{}", out.status)))
            }
            Ok(out) => (Some(out.status), None),
            Err(reason) => (None, Some(reason.clone())),
        };
        let event = Event::new(Kind::ToolRun, actor, format!("user:{}", d.user_id))
            .request_id(caller.request_id.clone())
            .outcome(if failure.is_some() {
                Outcome::Failure
            } else {
                Outcome::Success
            })
            .detail(json!({"agent": caller.agent, "delegation": d.handle, "tool": tool.name,
                "provider": tool.provider, "connection": sealed.id(), "method": tool.method.as_str(),
                "host": url.host_str(), "status": status, "failure": failure,
                "policies": verdict.policies}));
        self.record_use(&sealed, event).await?;
        match (outcome, failure) {
            (Ok(out), None) => Ok(out),
            (_, Some(reason)) => Err(Error::ProviderFailed(reason)),
            (Err(reason), None) => Err(Error::ProviderFailed(reason)),
        }
    }
}

/// A copy of a token set that outlives the executor's loan (for a refresh).
fn copy_tokens(t: &TokenSet) -> TokenSet {
    TokenSet {
        access_token: AccessToken::new(t.access_token.reveal().to_owned()),
        refresh_token: t
            .refresh_token
            .as_ref()
            .map(|r| RefreshToken::new(r.reveal().to_owned())),
        id_token: t
            .id_token
            .as_ref()
            .map(|r| IdToken::new(r.reveal().to_owned())),
        token_type: t.token_type.clone(),
        expires_at: t.expires_at,
        scopes: t.scopes.clone(),
    }
}

/// Sends a tool request and reads at most [`MAX_TOOL_RESPONSE`] bytes of the answer.
async fn read_tool_response(request: reqwest::RequestBuilder) -> Result<ToolOutput, String> {
    let mut resp = request.send().await.map_err(|e| {
        if e.is_timeout() {
            "timeout".to_owned()
        } else {
            "unreachable".to_owned()
        }
    })?;
    let status = resp.status().as_u16();
    let mut headers = serde_json::Map::new();
    for name in HEADER_ALLOW_LIST {
        if let Some(v) = resp.headers().get(*name).and_then(|v| v.to_str().ok()) {
            headers.insert((*name).to_owned(), v.into());
        }
    }
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_TOOL_RESPONSE as u64)
    {
        return Err("response_too_large".into());
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| {
        if e.is_timeout() {
            "timeout".to_owned()
        } else {
            "response_interrupted".to_owned()
        }
    })? {
        if bytes.len() + chunk.len() > MAX_TOOL_RESPONSE {
            return Err("response_too_large".into());
        }
        bytes.extend_from_slice(&chunk);
    }
    let is_json = headers
        .get("content-type")
        .and_then(Value::as_str)
        .is_some_and(|c| c.contains("json"));
    let body = match is_json.then(|| serde_json::from_slice::<Value>(&bytes)) {
        Some(Ok(v)) => v,
        _ => Value::String(String::from_utf8_lossy(&bytes).into_owned()),
    };
    Ok(ToolOutput {
        status,
        headers,
        body,
    })
}
