//! Disconnecting a connection: revocation at the provider (RFC 7009: the executor alone
//! opens the token), then erasure, audited in one transaction with the end of the user's
//! delegations that name the provider (or a tool of it).

use serde_json::json;

use super::{Broker, Revoked, revoke_tokens};
use crate::audit::{self, Actor, Event, Kind as AuditKind};
use crate::oauth::{Disconnected, OAuthError};
use crate::store::agents as agent_rows;
use crate::vault::TokenSet;

impl Broker {
    /// Disconnects one of `user_id`'s connections for `actor` (the user, or an admin):
    /// revokes at the provider when it offers RFC 7009 revocation, then erases the record.
    /// A provider answering 503 keeps the record, marked for retry; any other revocation
    /// failure still erases it.
    pub async fn disconnect(
        &self,
        actor: Actor,
        user_id: &str,
        id: &str,
    ) -> Result<Disconnected, OAuthError> {
        let sealed = self
            .vault
            .load_by_id(id)
            .await?
            .filter(|s| s.user_id() == user_id)
            .ok_or(OAuthError::NoSuchConnection)?;
        let outcome = match self.oauth.revocation(sealed.provider()) {
            Some(r) => Some(self.exec.revoke(self.oauth.http(), &sealed, r).await?),
            None => None,
        };
        let mut tx = self.db.begin().await?;
        // Whatever happens to the record, agents lose what they were given with it (a
        // record pending revocation is not released either; see `executor`).
        let tools = self.oauth.tools_of(sealed.provider());
        let ended =
            agent_rows::end_delegations_naming(&mut tx, user_id, sealed.provider(), &tools).await?;
        let result = match outcome {
            Some(Revoked::Unavailable) => {
                self.vault.set_status(&mut tx, id, "revoke_pending").await?;
                Disconnected::PendingRetry
            }
            Some(Revoked::Failed(why)) => {
                self.vault.delete(&mut tx, &actor, id).await?;
                Disconnected::ErasedRevocationFailed(why)
            }
            Some(Revoked::Done) => {
                self.vault.delete(&mut tx, &actor, id).await?;
                Disconnected::Erased { revoked: true }
            }
            None => {
                self.vault.delete(&mut tx, &actor, id).await?;
                Disconnected::Erased { revoked: false }
            }
        };
        let (outcome, detail) = match &result {
            Disconnected::Erased { revoked } => {
                (audit::Outcome::Success, json!({ "revoked": revoked }))
            }
            Disconnected::ErasedRevocationFailed(why) => (
                audit::Outcome::Failure,
                json!({ "revoked": false, "error": why }),
            ),
            Disconnected::PendingRetry => (
                audit::Outcome::Failure,
                json!({ "revoked": false, "pending": true }),
            ),
        };
        let mut detail = detail;
        if let Some(obj) = detail.as_object_mut() {
            obj.insert("provider".into(), json!(sealed.provider()));
            obj.insert("delegations_ended".into(), json!(ended));
        }
        let event = Event::new(AuditKind::Disconnect, actor, format!("connection:{id}"))
            .outcome(outcome)
            .detail(detail);
        audit::append(&mut tx, self.clock.unix_ms(), event).await?;
        tx.commit().await?;
        Ok(result)
    }

    /// Revokes tokens that were never stored (a refresh whose connection was disconnected
    /// meanwhile); `None` when the provider offers no revocation.
    pub(crate) async fn revoke_unstored(
        &self,
        provider: &str,
        tokens: &TokenSet,
    ) -> Option<Revoked> {
        let r = self.oauth.revocation(provider)?;
        Some(revoke_tokens(self.oauth.http(), tokens, r).await)
    }
}
