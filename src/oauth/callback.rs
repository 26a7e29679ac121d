//! The callback half of a flow: the one-time state is spent, the code redeemed, the
//! person identified (a validated ID token, completed from UserInfo where it leaves the
//! email or name out; or the userinfo answer), and the identity, tokens and audit event
//! written in one transaction. A sign-in's new browser session is made by the caller once
//! that transaction has committed: the event is durable before the session exists.

use super::wire::Person;
use super::{Callback, Client, Finished, OAuth, OAuthError, Purpose, sanitize};
use crate::audit::{Actor, Event, Kind as AuditKind};
use crate::crypto::sha256;
use crate::oidc::Expect;
use crate::secret::SessionToken;
use crate::store::identities::{self, IdentityRow};
use crate::store::users;
use crate::vault::{Scopes, TokenSet};

impl OAuth {
    /// Completes a flow from the provider's callback, for the browser session `session`,
    /// which is signed in as `signed_in_as` (if anyone).
    pub async fn finish(
        &self,
        session: Option<&SessionToken>,
        signed_in_as: Option<&str>,
        provider: &str,
        cb: Callback,
    ) -> Result<Finished, OAuthError> {
        let session = session.ok_or(OAuthError::InvalidState)?;
        let state = cb.state.as_deref().ok_or(OAuthError::InvalidState)?;
        // One statement (DELETE … RETURNING), atomic on its own: the state is spent
        // whatever happens next, and a replay finds nothing.
        let flow = {
            let mut conn = self.db.pool().acquire().await?;
            identities::take_flow(&mut conn, &sha256(&[state.as_bytes()])).await?
        };
        let flow = flow.ok_or(OAuthError::InvalidState)?;
        let mine = sha256(&[session.reveal().as_bytes()]);
        if flow.provider != provider
            || !crate::crypto::constant_time_eq(&flow.session_hash, &mine)
            || self.clock.unix() >= flow.expires_at
        {
            return Err(OAuthError::InvalidState);
        }
        if let Some(error) = cb.error.as_deref() {
            return Err(OAuthError::ProviderError(sanitize(error)));
        }
        let purpose = match flow.user_id.clone() {
            Some(user_id) if flow.purpose == "connect" => Purpose::Connect { user_id },
            _ => Purpose::Login,
        };
        // A connection is only added for a session that is still signed in as its user.
        if let Purpose::Connect { user_id } = &purpose
            && signed_in_as != Some(user_id.as_str())
        {
            return Err(OAuthError::InvalidState);
        }
        let c = self.client(provider, &purpose)?;
        // RFC 9207: where the provider names itself, it must be the one we asked.
        if let (Some(iss), Some(expected)) = (cb.iss.as_deref(), c.provider.issuer.as_deref())
            && iss != expected
        {
            return Err(OAuthError::ProviderError("issuer_mismatch".into()));
        }
        let code = cb
            .code
            .as_deref()
            .ok_or_else(|| OAuthError::ProviderError("missing_code".into()))?;
        let endpoints = self.endpoints(c).await?;
        let (tokens, scopes_told) = self
            .exchange(
                c,
                &endpoints.token,
                code,
                &self.derived("pkce:", state),
                &flow.scopes,
            )
            .await?;
        let who = match (&c.provider.kind, &tokens.id_token) {
            (crate::providers::Kind::Oidc, Some(id_token)) => {
                let expect = Expect {
                    provider: &c.provider.name,
                    jwks_url: endpoints.jwks.as_deref().unwrap_or_default(),
                    issuer: endpoints.issuer.as_deref().unwrap_or_default(),
                    client_id: &c.client_id,
                    nonce: &self.derived("nonce:", state),
                    now: self.clock.unix(),
                };
                let claims = self
                    .oidc
                    .verify(&self.http, id_token.reveal(), &expect)
                    .await?;
                let mut who = Person {
                    subject: claims.subject,
                    email: claims.email,
                    email_verified: claims.email_verified,
                    name: claims.name,
                };
                // OIDC Core §5.4: with an access token, a provider may keep the email
                // and name for UserInfo only.
                if (who.email.is_none() || who.name.is_none())
                    && let Some(url) = endpoints.userinfo.as_deref()
                {
                    self.complete_profile(c, url, &tokens.access_token, &mut who)
                        .await?;
                }
                who
            }
            (crate::providers::Kind::Oidc, None) => {
                return Err(OAuthError::ProviderFailed("no_id_token".into()));
            }
            (crate::providers::Kind::OAuth2, _) => {
                let url = endpoints
                    .userinfo
                    .as_deref()
                    .ok_or_else(|| OAuthError::ProviderError("no_userinfo".into()))?;
                self.userinfo(c, url, &tokens.access_token).await?
            }
        };
        self.complete(c, purpose, who, (tokens, scopes_told), flow.return_to)
            .await
    }

    async fn complete(
        &self,
        c: &Client,
        purpose: Purpose,
        who: Person,
        (tokens, scopes_told): (TokenSet, bool),
        return_to: String,
    ) -> Result<Finished, OAuthError> {
        let provider = c.provider.name.as_str();
        let now = self.clock.unix();
        let mut tx = self.db.begin().await?;
        let known = identities::user_of(&mut tx, provider, &who.subject).await?;
        let identity = |user_id| IdentityRow {
            provider,
            subject: &who.subject,
            user_id,
            email: who.email.as_deref(),
            email_verified: who.email_verified,
            name: who.name.as_deref(),
            now,
        };
        let (user_id, kind) = match (&purpose, known) {
            (Purpose::Login, Some(user_id)) => {
                identities::update(&mut tx, &identity(&user_id)).await?;
                (user_id, AuditKind::SignIn)
            }
            (Purpose::Login, None) => {
                let user_id = uuid::Uuid::now_v7().to_string();
                users::insert(&mut tx, &user_id, now).await?;
                identities::insert(&mut tx, &identity(&user_id)).await?;
                (user_id, AuditKind::SignIn)
            }
            (Purpose::Connect { user_id }, Some(owner)) if owner != *user_id => {
                return Err(OAuthError::AlreadyLinked);
            }
            (Purpose::Connect { user_id }, Some(_)) => {
                identities::update(&mut tx, &identity(user_id)).await?;
                (user_id.clone(), AuditKind::Connect)
            }
            (Purpose::Connect { user_id }, None) => {
                identities::insert(&mut tx, &identity(user_id)).await?;
                (user_id.clone(), AuditKind::Connect)
            }
        };
        // The stored scopes are what the new token carries: exactly what the provider said
        // when it said (it knows whether it keeps earlier grants); otherwise what was asked
        // for, beside what was granted before (incremental authorization). The vault adds
        // the connection, KEK version and stored scopes to the event.
        let actor = Actor::User(user_id.clone());
        let event = Event::new(kind, actor, format!("user:{user_id}"));
        let scopes = if scopes_told {
            Scopes::Replace
        } else {
            Scopes::Merge
        };
        self.vault
            .store(&mut tx, event, &user_id, provider, &tokens, scopes)
            .await?;
        tx.commit().await?;
        Ok(Finished {
            signed_in: kind == AuditKind::SignIn,
            user_id,
            return_to,
        })
    }
}
