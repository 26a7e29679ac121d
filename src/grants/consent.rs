//! The user's answer to an authorization request: what the consent page offers (each
//! item with policy's verdict for this agent and user), approval (a grant and a one-time
//! code, audited together) and denial (audited).

use serde_json::json;

use super::{AuthServer, CODE_TTL, GrantError, Offer, Pending, Scope};
use crate::audit::{self, Actor, Event, Kind};
use crate::crypto::{random_text, sha256};
use crate::policy::{Action, Policies};
use crate::secret::AuthorizationCode;
use crate::store::grants::{self as rows, CodeRow, GrantRow};

impl AuthServer {
    /// What the consent page offers for `pending`: every item asked for, each with whether
    /// policy lets this agent have it for this user.
    pub fn offers(
        &self,
        policies: &Policies,
        pending: &Pending,
        user_id: &str,
    ) -> Result<Vec<Offer>, GrantError> {
        let agent = &pending.client.name;
        let mut out = Vec::new();
        for name in &pending.scope.tools {
            let Some(tool) = self.tools.get(name) else {
                continue;
            };
            let action = Action::RunTool {
                tool: &tool.name,
                provider: &tool.provider,
                tool_scopes: &tool.scopes,
            };
            let verdict = policies.decide(agent, user_id, &action, &tool.scopes)?;
            out.push(Offer {
                scope: format!("tool:{name}"),
                name: name.clone(),
                provider: tool.provider.clone(),
                description: tool.description.clone(),
                refused: (!verdict.allowed)
                    .then(|| format!("policy does not let {agent} run {name}")),
            });
        }
        for p in &pending.scope.providers {
            let refused = if pending.client.kind == super::ClientKind::Public {
                Some("an application that registered itself never sees raw tokens".to_owned())
            } else {
                let action = Action::FetchCredential { provider: p };
                let verdict = policies.decide(agent, user_id, &action, &[])?;
                (!verdict.allowed).then(|| format!("policy does not let {agent} see {p} tokens"))
            };
            out.push(Offer {
                scope: format!("credential:{p}"),
                name: p.clone(),
                provider: p.clone(),
                description: format!("see your {p} access token itself"),
                refused,
            });
        }
        Ok(out)
    }

    /// The user approved: a grant of what policy allows of `pending`, and a code for it.
    pub async fn approve(
        &self,
        policies: &Policies,
        pending: &Pending,
        user_id: &str,
        request_id: &str,
    ) -> Result<AuthorizationCode, GrantError> {
        let offers = self.offers(policies, pending, user_id)?;
        let allowed = |prefix: &str| -> Vec<String> {
            offers
                .iter()
                .filter(|o| o.refused.is_none() && o.scope.starts_with(prefix))
                .map(|o| o.name.clone())
                .collect()
        };
        let scope = Scope {
            tools: allowed("tool:"),
            providers: allowed("credential:"),
        };
        if scope.is_empty() {
            return Err(GrantError::AccessDenied);
        }
        let now = self.clock.unix();
        let grant = GrantRow {
            id: uuid::Uuid::now_v7().to_string(),
            agent_id: pending.client.id.clone(),
            user_id: user_id.to_owned(),
            tools: serde_json::to_string(&scope.tools).unwrap_or_else(|_| "[]".into()),
            providers: serde_json::to_string(&scope.providers).unwrap_or_else(|_| "[]".into()),
            resource: pending.resource.clone(),
            created_at: now,
            expires_at: now.saturating_add(self.grant_lifetime),
            last_used_at: None,
        };
        let code = AuthorizationCode::new(format!("sbx_code_{}", random_text(32)?.as_str()));
        let mut tx = self.db.begin().await?;
        rows::insert_grant(&mut tx, &grant).await?;
        let code_row = CodeRow {
            grant_id: grant.id.clone(),
            redirect_uri: pending.redirect_uri.clone(),
            code_challenge: pending.code_challenge.clone(),
            expires_at: now + CODE_TTL,
            used_at: None,
        };
        rows::insert_code(&mut tx, &sha256(&[code.reveal().as_bytes()]), &code_row).await?;
        let event = Event::new(
            Kind::GrantApproved,
            Actor::User(user_id.to_owned()),
            format!("user:{user_id}"),
        )
        .request_id(request_id.to_owned())
        .detail(json!({
            "grant": grant.id, "agent": pending.client.name, "tools": scope.tools,
            "providers": scope.providers, "resource": grant.resource,
            "expires_at": grant.expires_at,
        }));
        audit::append(&mut tx, self.clock.unix_ms(), event).await?;
        tx.commit().await?;
        Ok(code)
    }

    /// The user denied: audited, and the client is told `access_denied`.
    pub async fn deny(
        &self,
        pending: &Pending,
        user_id: &str,
        request_id: &str,
    ) -> Result<(), GrantError> {
        let mut tx = self.db.begin().await?;
        let event = Event::new(
            Kind::GrantDenied,
            Actor::User(user_id.to_owned()),
            format!("user:{user_id}"),
        )
        .outcome(audit::Outcome::Denied)
        .request_id(request_id.to_owned())
        .detail(json!({ "agent": pending.client.name, "scope": pending.scope.text() }));
        audit::append(&mut tx, self.clock.unix_ms(), event).await?;
        tx.commit().await?;
        Ok(())
    }
}
