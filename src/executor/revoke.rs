//! Token revocation at the provider (RFC 7009). It needs the plaintext token, so it lives
//! with the executor: the token goes from the vault straight into the request body.

use super::Executor;
use crate::oauth::{basic_auth, form_encode};
use crate::providers::ClientAuth;
use crate::secret::ClientSecret;
use crate::vault::{SealedCredential, VaultError};

/// Where and how to revoke.
pub struct Revocation<'a> {
    pub url: &'a str,
    pub client_id: &'a str,
    pub secret: Option<&'a ClientSecret>,
    pub auth: ClientAuth,
}

/// What the provider said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// The provider confirmed (RFC 7009 §2.2: 200).
    Done,
    /// The provider answered 503: try again later.
    Unavailable,
    /// Anything else, described without the token.
    Failed(String),
}

impl Executor {
    /// Revokes the connection's refresh token (or its access token when it has none).
    pub async fn revoke(
        &self,
        http: &reqwest::Client,
        sealed: &SealedCredential,
        r: Revocation<'_>,
    ) -> Result<Revoked, VaultError> {
        let body = self
            .with_tokens(sealed, |t| {
                let (token, hint) = match &t.refresh_token {
                    Some(rt) => (rt.reveal(), "refresh_token"),
                    None => (t.access_token.reveal(), "access_token"),
                };
                let mut body = zeroize::Zeroizing::new(format!(
                    "token={}&token_type_hint={hint}",
                    form_encode(token)
                ));
                if r.auth == ClientAuth::Post || r.secret.is_none() {
                    body.push_str(&format!("&client_id={}", form_encode(r.client_id)));
                }
                if let (ClientAuth::Post, Some(secret)) = (r.auth, r.secret) {
                    body.push_str(&format!("&client_secret={}", form_encode(secret.reveal())));
                }
                body
            })
            .await?;
        let mut req = http
            .post(r.url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Accept", "application/json");
        if let (ClientAuth::Basic, Some(secret)) = (r.auth, r.secret) {
            req = req.header("Authorization", basic_auth(r.client_id, secret).as_str());
        }
        Ok(match req.body(body.to_string()).send().await {
            Ok(resp) if resp.status().is_success() => Revoked::Done,
            Ok(resp) if resp.status().as_u16() == 503 => Revoked::Unavailable,
            Ok(resp) => {
                Revoked::Failed(format!("the provider answered {}", resp.status().as_u16()))
            }
            Err(e) if e.is_timeout() => {
                Revoked::Failed("the provider did not answer in time".into())
            }
            Err(_) => Revoked::Failed("the provider could not be reached".into()),
        })
    }
}
