//! The agent-facing half of the executor: fresh credentials (single-flight refresh), tool
//! runs and raw credential release. Checks that do not need a plaintext run before anything
//! is opened, in this order: agent, delegation, Cedar (default deny, audited), and only then
//! the connection's state and scopes, so what policy refuses is refused the same whether or
//! not the user has connected. Only an `active` connection is used.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::Executor;
use crate::agents::{Delegation, Grounds};
use crate::audit::{self, Actor, Event, Kind, Outcome};
use crate::clock::{Clock, rfc3339};
use crate::error::Error;
use crate::journal::{Journal, Unrecorded};
use crate::metrics::Metrics;
use crate::oauth::OAuth;
use crate::outbound::BodyError;
use crate::policy::{Action, Policies};
use crate::store::Db;
use crate::store::agents::Basis;
use crate::tools::Tool;
use crate::vault::{SealedCredential, Vault};

/// An access token this close to expiry (seconds) is refreshed before use.
pub const REFRESH_MARGIN: i64 = 60;
/// The connection's last-use time is kept to within this many seconds (every use is in
/// the audit trail to the millisecond), so a busy connection's row is not rewritten on
/// every use.
pub const LAST_USE_STEP: i64 = 10;
/// Connections whose last touch [`Broker`] remembers; forgotten all at once when full.
const TOUCHED_LIMIT: usize = 4096;
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
    /// What the agent and delegation were checked against.
    pub grounds: Grounds,
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
    pub(super) exec: Executor,
    pub(super) vault: Arc<Vault>,
    pub(super) oauth: Arc<OAuth>,
    pub(super) db: Db,
    pub(super) clock: Arc<dyn Clock>,
    http: reqwest::Client,
    /// Seconds a refresh lease lasts: the provider timeout and a margin.
    pub(super) lease_seconds: i64,
    journal: Journal,
    pub(super) metrics: Arc<Metrics>,
    /// When this process last wrote each connection's last-use time (the row it has may
    /// have been read before that).
    touched: Mutex<HashMap<String, i64>>,
    /// In-process single-flight locks, by connection id (see `refresh.rs`).
    pub(super) flights: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl Broker {
    pub fn new(
        vault: Arc<Vault>,
        oauth: Arc<OAuth>,
        db: Db,
        clock: Arc<dyn Clock>,
        provider_timeout: i64,
        journal: Journal,
        metrics: Arc<Metrics>,
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
            metrics,
            touched: Mutex::new(HashMap::new()),
            flights: Mutex::new(HashMap::new()),
        })
    }

    /// The caller's connection to `provider`: the one read with the request when it is
    /// that, or a fresh read. Nothing of its state is told to the agent before policy has
    /// decided (see [`Broker::usable`]).
    async fn load(
        &self,
        user_id: &str,
        provider: &str,
        preloaded: Option<SealedCredential>,
    ) -> Result<Option<SealedCredential>, Error> {
        Ok(match preloaded {
            Some(s) if s.user_id() == user_id && s.provider() == provider => Some(s),
            _ => self.vault.load(user_id, provider).await?,
        })
    }

    /// Why `sealed` may not be used, if it may not: only an `active` connection is. One
    /// needing the user again is `reauth_required`; one being disconnected (its revocation
    /// pending) is, to an agent, no longer connected.
    pub(super) fn refusal(&self, sealed: &SealedCredential) -> Option<Error> {
        match sealed.status() {
            "active" => None,
            "reauth_required" => Some(self.reauth(sealed)),
            _ => Some(Error::NotConnected {
                provider: sealed.provider().to_owned(),
                url: self.oauth.connect_url(sealed.provider(), &[]),
            }),
        }
    }

    /// The connection if it exists, is active and holds `scopes` (the 409s, asked only
    /// once policy allows the request).
    fn usable(
        &self,
        loaded: Option<SealedCredential>,
        provider: &str,
        scopes: &[String],
    ) -> Result<SealedCredential, Error> {
        let sealed = loaded.ok_or_else(|| Error::NotConnected {
            provider: provider.to_owned(),
            url: self.oauth.connect_url(provider, scopes),
        })?;
        if let Some(refused) = self.refusal(&sealed) {
            return Err(refused);
        }
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
        action: &'static str,
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
        self.metrics.policy_denied(action);
        Ok(())
    }

    /// Records a use durably (group commit): the audit event and, when both the stored
    /// one and the one this process last wrote are [`LAST_USE_STEP`] old or more, the
    /// connection's last-use time. Returns only once committed. With `basis`, only if it
    /// still holds then ([`Error::Stale`] if not).
    async fn record_use(
        &self,
        sealed: &SealedCredential,
        event: Event,
        basis: Option<Basis>,
    ) -> Result<(), Error> {
        let now = self.clock.unix();
        let due = |t: Option<i64>| t.is_none_or(|t| now - t >= LAST_USE_STEP);
        let touch = match self.touched.lock() {
            Ok(mut touched) if due(sealed.last_used_at()) => {
                let due = due(touched.get(sealed.id()).copied());
                if due {
                    if touched.len() >= TOUCHED_LIMIT {
                        touched.clear();
                    }
                    touched.insert(sealed.id().to_owned(), now);
                }
                due.then(|| sealed.id().to_owned())
            }
            _ => None,
        };
        match self.journal.record_if(event, touch, basis).await {
            Ok(_) => Ok(()),
            Err(Unrecorded::Stale) => Err(Error::Stale),
            Err(Unrecorded::Failed(e)) => Err(Error::NotRecorded(e)),
        }
    }

    /// Raw release: the access token, after the release is durably audited, and only if
    /// the agent, delegation and connection it was decided on still hold then
    /// ([`Error::Stale`] otherwise: decide again from a fresh read).
    pub async fn release(
        &self,
        caller: &Caller,
        policies: &Policies,
        provider: &str,
        requested: Option<Vec<String>>,
        preloaded: Option<SealedCredential>,
    ) -> Result<Released, Error> {
        let d = &caller.delegation;
        // On rows read for an earlier request, only the way to a release without a
        // refresh is taken: any refusal, and any refresh, is decided again on a fresh read
        // (and audited then, if it stands).
        let reused = caller.grounds.reused;
        if !d.providers.iter().any(|p| p == provider) {
            return Err(if reused {
                Error::Stale
            } else {
                Error::ProviderNotDelegated(provider.to_owned())
            });
        }
        let requested = requested.unwrap_or_default();
        let loaded = self.load(&d.user_id, provider, preloaded).await?;
        // Without a list, the request is for the scopes granted (none, not connected).
        let scopes: Vec<String> = match &loaded {
            Some(sealed) if requested.is_empty() => {
                sealed.scopes().iter().map(|s| (*s).to_owned()).collect()
            }
            _ => requested.clone(),
        };
        // Policy decides first: a request it refuses is a 403 whatever the connection's
        // state, so an agent is never invited to have the user grant what policy would
        // refuse anyway.
        let verdict = policies.decide(
            &caller.agent,
            &d.user_id,
            &Action::FetchCredential { provider },
            &scopes,
        )?;
        if !verdict.allowed {
            if reused {
                return Err(Error::Stale);
            }
            self.audit_denial(
                caller,
                "fetch_credential",
                json!({"action": "fetch_credential", "provider": provider, "scopes": scopes,
                    "errors": verdict.errors}),
                &verdict.policies,
            )
            .await?;
            return Err(Error::PolicyDenied);
        }
        let sealed = match self.usable(loaded, provider, &requested) {
            Err(_) if reused => return Err(Error::Stale),
            other => other?,
        };
        if reused && self.needs_refresh(&sealed, REFRESH_MARGIN) {
            return Err(Error::Stale);
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
        let basis = caller.grounds.basis(&sealed);
        self.record_use(&sealed, event, Some(basis)).await?;
        self.metrics.release(provider);
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
                "run_tool",
                json!({"action": "run_tool", "tool": tool.name, "provider": tool.provider,
                    "scopes": tool.scopes, "errors": verdict.errors}),
                &verdict.policies,
            )
            .await?;
            return Err(Error::PolicyDenied);
        }
        let loaded = self.load(&d.user_id, &tool.provider, preloaded).await?;
        let sealed = self.usable(loaded, &tool.provider, &tool.scopes)?;
        let actor = Actor::Agent(caller.agent.clone());
        let sealed = self.fresh(sealed, &actor).await?;
        let detail = json!({"agent": caller.agent, "delegation": d.handle, "tool": tool.name,
            "provider": tool.provider, "connection": sealed.id(), "method": tool.method.as_str(),
            "host": url.host_str(), "policies": verdict.policies});
        // Durable before the provider is called, and only if the agent, delegation and
        // connection it was decided on still hold then: if this fails, nothing is sent.
        let started = Event::new(
            Kind::ToolStarted,
            actor.clone(),
            format!("user:{}", d.user_id),
        )
        .request_id(caller.request_id.clone())
        .detail(detail.clone());
        self.record_use(&sealed, started, Some(caller.grounds.basis(&sealed)))
            .await?;
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
        let mut detail = detail;
        if let Some(d) = detail.as_object_mut() {
            d.insert("status".into(), status.into());
            d.insert("failure".into(), failure.clone().into());
        }
        let event = Event::new(Kind::ToolRun, actor, format!("user:{}", d.user_id))
            .request_id(caller.request_id.clone())
            .outcome(if failure.is_some() {
                Outcome::Failure
            } else {
                Outcome::Success
            })
            .detail(detail);
        // The provider has been called already: recorded whatever has changed since (the
        // last use was written with the start).
        self.journal
            .record(event, None)
            .await
            .map_err(Error::NotRecorded)?;
        let word = if failure.is_some() {
            "failure"
        } else {
            "success"
        };
        self.metrics.tool_run(&tool.name, word);
        match (outcome, failure) {
            (Ok(out), None) => Ok(out),
            (_, Some(reason)) => Err(Error::ProviderFailed(reason)),
            (Err(reason), None) => Err(Error::ProviderFailed(reason)),
        }
    }
}

/// Sends a tool request and reads at most [`MAX_TOOL_RESPONSE`] bytes of the answer.
async fn read_tool_response(request: reqwest::RequestBuilder) -> Result<ToolOutput, String> {
    let resp = request.send().await.map_err(|e| {
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
    let bytes = crate::outbound::read_capped(resp, MAX_TOOL_RESPONSE)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge => "response_too_large".to_owned(),
            BodyError::Timeout => "timeout".to_owned(),
            BodyError::Interrupted => "response_interrupted".to_owned(),
        })?;
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
