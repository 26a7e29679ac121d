//! Disconnecting a connection: revocation at the provider (RFC 7009, performed by the
//! executor, which alone holds the token), then erasure, audited in one transaction.

use serde_json::json;

use super::{Disconnected, OAuth, OAuthError};
use crate::audit::{self, Actor, Event, Kind as AuditKind};
use crate::executor::{Revocation, Revoked};

impl OAuth {
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
        let client = self.clients.get(sealed.provider());
        let outcome =
            match client.and_then(|c| c.provider.revocation_url.as_deref().map(|u| (c, u))) {
                Some((c, url)) => {
                    let r = Revocation {
                        url,
                        client_id: &c.client_id,
                        secret: c.secret.as_ref(),
                        auth: c.provider.client_auth,
                    };
                    Some(self.executor.revoke(&self.http, &sealed, r).await?)
                }
                None => None,
            };
        let mut tx = self.db.begin().await?;
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
        }
        let event = Event::new(AuditKind::Disconnect, actor, format!("connection:{id}"))
            .outcome(outcome)
            .detail(detail);
        audit::append(&mut tx, self.clock.unix_ms(), event).await?;
        tx.commit().await?;
        Ok(result)
    }
}
