//! Token refresh for the executor: on demand before a use, and ahead of expiry in the
//! background. Single flight per connection: an in-process lock, and across instances a
//! lease column taken with one conditional `UPDATE`, so no transaction stays open while
//! the provider answers. Waiters re-read the stored row. The new tokens are written only
//! over the row the refresh was taken on, still active; if it is gone or changed they are
//! discarded (revoked where the connection is being disconnected), never stored.

use std::sync::{Arc, Weak};
use std::time::Duration;

use serde_json::json;

use super::broker::{Broker, REFRESH_MARGIN};
use crate::audit::{self, Actor, Event, Kind, Outcome};
use crate::error::Error;
use crate::executor::Revoked;
use crate::oauth::OAuthError;
use crate::secret::{AccessToken, IdToken, RefreshToken};
use crate::store::connection as conns;
use crate::vault::{SealedCredential, TokenSet};

impl Broker {
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

    pub(super) fn needs_refresh(&self, sealed: &SealedCredential, margin: i64) -> bool {
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

    pub(super) fn reauth(&self, sealed: &SealedCredential) -> Error {
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
        if let Some(refused) = self.refusal(&sealed) {
            return Err(refused);
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
            if let Some(refused) = self.refusal(&current) {
                return Err(refused);
            }
            if !self.needs_refresh(&current, margin) {
                return Ok(current);
            }
            let now = self.clock.unix();
            // The lease is taken only if the row is still the one just read, so the refresh
            // token used below is the stored one.
            let leased = conns::take_refresh_lease(
                self.db.pool(),
                &id,
                current.generation(),
                now,
                now + self.lease_seconds,
            )
            .await?;
            if leased {
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
                // Written only over the row the refresh was taken on, still active: a
                // disconnect (or anything else) that won the race stays as it left the row.
                if !self
                    .vault
                    .store_refreshed(&mut tx, event, &current, &merged)
                    .await?
                {
                    drop(tx);
                    self.metrics.refresh(current.provider(), "discarded");
                    return Err(self.discard(&current, &merged, actor).await?);
                }
                tx.commit().await?;
                self.metrics.refresh(current.provider(), "success");
                self.vault
                    .load_by_id(current.id())
                    .await?
                    .ok_or_else(|| self.reauth(&current))
            }
            Err(OAuthError::ProviderError(reason)) if reason == "invalid_grant" => {
                // Revoked or expired refresh token. Only if it is still the stored one
                // (nobody replaced it meanwhile) does the connection need the user again.
                // Only an active row (not one being disconnected) becomes `reauth_required`.
                let mut tx = self.db.begin().await?;
                let still_ours =
                    conns::mark_reauth(&mut tx, current.id(), current.generation()).await?;
                conns::release_refresh_lease(&mut tx, current.id()).await?;
                let event = Event::new(Kind::RefreshFailed, actor.clone(), subject)
                    .outcome(Outcome::Failure)
                    .detail(
                        json!({"connection": current.id(), "provider": current.provider(),
                        "reason": "invalid_grant", "reauth_required": still_ours}),
                    );
                audit::append(&mut tx, self.clock.unix_ms(), event).await?;
                tx.commit().await?;
                self.metrics.refresh(current.provider(), "invalid_grant");
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
                self.metrics.refresh(current.provider(), "failure");
                Err(Error::ProviderFailed(reason))
            }
        }
    }
}

impl Broker {
    /// The refreshed tokens of `current` found no row to go to (erased, no longer active,
    /// or replaced meanwhile): they are never stored. Where the connection is gone or
    /// being disconnected they are revoked at the provider (where it offers revocation;
    /// not for a row replaced by a new grant, which revoking could end too), and the
    /// outcome audited. Returns what the caller is told.
    async fn discard(
        &self,
        current: &SealedCredential,
        tokens: &TokenSet,
        actor: &Actor,
    ) -> Result<Error, Error> {
        let now = self.vault.load_by_id(current.id()).await?;
        let revoked = match &now {
            Some(row) if row.status() == "active" => None,
            _ => self.revoke_unstored(current.provider(), tokens).await,
        };
        let mut tx = self.db.begin().await?;
        conns::release_refresh_lease(&mut tx, current.id()).await?;
        let event = Event::new(
            Kind::RefreshFailed,
            actor.clone(),
            format!("user:{}", current.user_id()),
        )
        .outcome(Outcome::Failure)
        .detail(
            json!({"connection": current.id(), "provider": current.provider(),
            "reason": "connection_changed", "discarded": true,
            "revoked": revoked.as_ref().map(|r| *r == Revoked::Done)}),
        );
        audit::append(&mut tx, self.clock.unix_ms(), event).await?;
        tx.commit().await?;
        Ok(match now {
            None => Error::NotConnected {
                provider: current.provider().to_owned(),
                url: self.oauth.connect_url(current.provider(), &[]),
            },
            Some(row) => self.refusal(&row).unwrap_or(Error::RefreshBusy),
        })
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
