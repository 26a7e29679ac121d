//! Token revocation at the provider (RFC 7009). It needs the plaintext token, so it lives
//! with the executor: the token goes from the vault straight into the request body.
//!
//! Not through `oauth2`'s revocation request: it refuses any revocation URL that is not
//! https, and a provider on loopback over plain http (a local or test provider) is allowed
//! (SPEC §3). The body is built with `form_urlencoded`, the client authenticated as at the
//! token endpoint.

use zeroize::Zeroizing;

use super::Executor;
use crate::oauth::{Revocation, basic_auth, form_body};
use crate::providers::ClientAuth;
use crate::vault::{SealedCredential, TokenSet, VaultError};

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
        let body = self.with_tokens(sealed, |t| request_body(t, &r)).await?;
        Ok(send(http, &body, &r).await)
    }
}

/// Revokes tokens that were never stored (a refresh whose connection went away meanwhile):
/// the refresh token, or the access token when there is none.
pub async fn revoke_tokens(
    http: &reqwest::Client,
    tokens: &TokenSet,
    r: Revocation<'_>,
) -> Revoked {
    send(http, &request_body(tokens, &r), &r).await
}

/// The form body of a revocation request for `t`.
fn request_body(t: &TokenSet, r: &Revocation<'_>) -> Zeroizing<String> {
    let (token, hint) = match &t.refresh_token {
        Some(rt) => (rt.reveal(), "refresh_token"),
        None => (t.access_token.reveal(), "access_token"),
    };
    let mut pairs = vec![("token", token), ("token_type_hint", hint)];
    if r.auth == ClientAuth::Post || r.secret.is_none() {
        pairs.push(("client_id", r.client_id));
    }
    if let (ClientAuth::Post, Some(secret)) = (r.auth, r.secret) {
        pairs.push(("client_secret", secret.reveal()));
    }
    form_body(pairs)
}

async fn send(http: &reqwest::Client, body: &Zeroizing<String>, r: &Revocation<'_>) -> Revoked {
    let mut req = http
        .post(r.url)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("Accept", "application/json");
    if let (ClientAuth::Basic, Some(secret)) = (r.auth, r.secret) {
        req = req.header("Authorization", basic_auth(r.client_id, secret).as_str());
    }
    match req.body(body.to_string()).send().await {
        Ok(resp) if resp.status().is_success() => Revoked::Done,
        Ok(resp) if resp.status().as_u16() == 503 => Revoked::Unavailable,
        Ok(resp) => Revoked::Failed(format!("the provider answered {}", resp.status().as_u16())),
        Err(e) if e.is_timeout() => Revoked::Failed("the provider did not answer in time".into()),
        Err(_) => Revoked::Failed("the provider could not be reached".into()),
    }
}
