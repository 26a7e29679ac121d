//! Calls to a provider's token and userinfo endpoints, and the bounded JSON reading they
//! share with discovery and JWKS. Provider answers are untrusted: at most 1 MiB is read,
//! errors are reduced to sanitized codes, and nothing secret is echoed.

use serde_json::Value;

use super::token::{self, Capped};
use super::{Client, OAuth, OAuthError};
use crate::providers::ClientAuth;
use crate::secret::{AccessToken, IdToken, RefreshToken};
use crate::vault::TokenSet;

impl OAuth {
    /// Redeems an authorization code at the token endpoint. With the tokens comes whether
    /// the provider said which scopes they carry (`scope` in the answer): then they are
    /// exactly those; without it, RFC 6749 §5.1 says they are what was asked for.
    pub(super) async fn exchange(
        &self,
        c: &Client,
        token_url: &str,
        code: &str,
        verifier: &str,
        requested: &str,
    ) -> Result<(TokenSet, bool), OAuthError> {
        let redirect = Some(self.redirect_uri(&c.provider.name));
        let client = self.token_client(c, token_url, redirect)?;
        let answer = client
            .exchange_code(oauth2::AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(oauth2::PkceCodeVerifier::new(verifier.to_owned()))
            .request_async(&Capped(&self.http))
            .await
            .map_err(token::failure)?;
        Ok(self.token_set(answer, requested))
    }

    /// Uses a refresh token at `provider`'s token endpoint. The scopes are sent again
    /// where the provider needs them (Microsoft); a response without `scope` keeps
    /// `scopes`. An `invalid_grant` answer is [`OAuthError::ProviderError`], anything else
    /// that fails is [`OAuthError::ProviderFailed`].
    pub(crate) async fn refresh_grant(
        &self,
        provider: &str,
        refresh_token: &RefreshToken,
        scopes: &[String],
    ) -> Result<TokenSet, OAuthError> {
        let c = self
            .clients
            .get(provider)
            .ok_or(OAuthError::UnknownProvider)?;
        let endpoints = self.endpoints(c).await?;
        let requested = scopes.join(&c.provider.scope_separator);
        let client = self.token_client(c, &endpoints.token, None)?;
        let presented = oauth2::RefreshToken::new(refresh_token.reveal().to_owned());
        let mut request = client.exchange_refresh_token(&presented);
        if c.provider.quirks.refresh_needs_scope {
            // One value, joined with the provider's own separator.
            request = request.add_scope(oauth2::Scope::new(requested.clone()));
        }
        let answer = request
            .request_async(&Capped(&self.http))
            .await
            .map_err(token::failure)?;
        Ok(self.token_set(answer, &requested).0)
    }

    /// The `oauth2` client for `c`'s token endpoint.
    fn token_client(
        &self,
        c: &Client,
        token_url: &str,
        redirect_uri: Option<String>,
    ) -> Result<token::TokenClient, OAuthError> {
        token::client(
            &c.client_id,
            c.secret.as_ref(),
            c.provider.client_auth == ClientAuth::Basic,
            token_url,
            redirect_uri,
        )
    }

    /// The token set of a token endpoint's answer, and whether it said its scopes.
    fn token_set(&self, answer: token::Answer, requested: &str) -> (TokenSet, bool) {
        let told = answer.scope.is_some();
        let granted = answer.scope.unwrap_or_else(|| requested.to_owned());
        let sep: &[char] = &[' ', ','];
        let tokens = TokenSet {
            access_token: AccessToken::new(answer.access_token.into_secret()),
            refresh_token: answer
                .refresh_token
                .map(|r| RefreshToken::new(r.into_secret())),
            id_token: answer.id_token.map(|t| IdToken::new(t.0)),
            token_type: answer.token_type.0,
            expires_at: expires_at(self.clock.unix(), answer.expires_in.as_ref()),
            scopes: granted
                .split(sep)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        };
        (tokens, told)
    }

    /// Fills the email (with its `email_verified`) and the name an ID token left out from
    /// the provider's UserInfo answer. That answer must be about the ID token's subject
    /// (OIDC Core §5.3.2): one about anyone else is refused, never used.
    pub(super) async fn complete_profile(
        &self,
        c: &Client,
        url: &str,
        token: &AccessToken,
        who: &mut Person,
    ) -> Result<(), OAuthError> {
        let info = self.userinfo(c, url, token).await?;
        if info.subject != who.subject {
            return Err(OAuthError::ProviderError(
                "userinfo_subject_mismatch".into(),
            ));
        }
        if who.email.is_none() {
            who.email = info.email;
            who.email_verified = info.email_verified;
        }
        if who.name.is_none() {
            who.name = info.name;
        }
        Ok(())
    }

    /// Who the access token belongs to, from the provider's userinfo endpoint.
    pub(super) async fn userinfo(
        &self,
        c: &Client,
        url: &str,
        token: &AccessToken,
    ) -> Result<Person, OAuthError> {
        let resp = self
            .http
            .get(url)
            .bearer_auth(token.reveal())
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|_| OAuthError::ProviderFailed("userinfo_unreachable".into()))?;
        if !resp.status().is_success() {
            return Err(OAuthError::ProviderFailed(format!(
                "userinfo_status_{}",
                resp.status().as_u16()
            )));
        }
        let json = read_json(resp).await?;
        let names = c.provider.claims;
        let field = |k: &str| match json.get(k) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let subject =
            field(names.subject).ok_or_else(|| OAuthError::ProviderFailed("no_subject".into()))?;
        let verified = names.says_email_verified(&json);
        Ok(Person {
            subject,
            email: field(names.email),
            email_verified: verified,
            name: field(names.name),
        })
    }
}

/// The longest access-token lifetime believed: a provider's `expires_in` is clamped to
/// `0..=MAX_LIFETIME` seconds.
const MAX_LIFETIME: i64 = 365 * 24 * 3600;

/// When an access token with the provider's `expires_in` expires, `None` when it gives
/// none. The value is untrusted: a negative one means expired now, a larger one than
/// [`MAX_LIFETIME`] (up to overflowing any integer type) means a year, and a fraction or a
/// numeric string (some providers send `"3600"`) counts in whole seconds.
fn expires_at(now: i64, expires_in: Option<&Value>) -> Option<i64> {
    let seconds = match expires_in? {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_u64().map(|_| MAX_LIFETIME))
            // `as` saturates (and maps NaN to 0), which the clamp below then bounds.
            .or_else(|| n.as_f64().map(|f| f as i64))?,
        Value::String(s) => {
            let s = s.trim();
            s.parse::<i64>()
                .ok()
                .or_else(|| s.parse::<f64>().ok().map(|f| f as i64))?
        }
        _ => return None,
    };
    Some(now.saturating_add(seconds.clamp(0, MAX_LIFETIME)))
}

/// A person as the provider describes them.
pub(super) struct Person {
    pub(super) subject: String,
    pub(super) email: Option<String>,
    pub(super) email_verified: bool,
    pub(super) name: Option<String>,
}

/// Reads a provider's JSON answer (capped; see [`crate::outbound::read_json`]).
async fn read_json(resp: reqwest::Response) -> Result<Value, OAuthError> {
    crate::outbound::read_json(resp)
        .await
        .map_err(OAuthError::ProviderFailed)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{MAX_LIFETIME, expires_at};

    #[test]
    fn expires_in_is_clamped_to_a_year() {
        let now = 1_800_000_000;
        let at = |v: serde_json::Value| expires_at(now, Some(&v));
        assert_eq!(at(json!(3600)), Some(now + 3600));
        assert_eq!(at(json!("3599")), Some(now + 3599));
        assert_eq!(at(json!(3600.7)), Some(now + 3600));
        assert_eq!(at(json!(0)), Some(now));
        for expired in [json!(-5), json!(i64::MIN), json!(-1e300)] {
            assert_eq!(at(expired.clone()), Some(now), "{expired}");
        }
        for huge in [
            json!(MAX_LIFETIME + 1),
            json!(i64::MAX),
            json!(u64::MAX),
            json!(1e300),
            json!("9223372036854775807"),
            json!("99999999999999999999"),
        ] {
            assert_eq!(at(huge.clone()), Some(now + MAX_LIFETIME), "{huge}");
        }
        assert_eq!(
            expires_at(i64::MAX - 10, Some(&json!(3600))),
            Some(i64::MAX)
        );
        for none in [json!(null), json!("soon"), json!(true), json!([1])] {
            assert_eq!(at(none.clone()), None, "{none}");
        }
        assert_eq!(expires_at(now, None), None);
    }
}
