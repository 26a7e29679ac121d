//! Calls to a provider's token and userinfo endpoints, and the bounded JSON reading they
//! share with discovery and JWKS. Provider answers are untrusted: at most 1 MiB is read,
//! errors are reduced to sanitized codes, and nothing secret is echoed.

use serde_json::Value;

use super::{Client, OAuth, OAuthError, basic_auth, sanitize};
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
        let form = vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", code.to_owned()),
            ("redirect_uri", self.redirect_uri(&c.provider.name)),
            ("code_verifier", verifier.to_owned()),
        ];
        self.token_call(c, token_url, form, requested).await
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
        let mut form = vec![
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", refresh_token.reveal().to_owned()),
        ];
        if c.provider.quirks.refresh_needs_scope {
            form.push(("scope", requested.clone()));
        }
        Ok(self
            .token_call(c, &endpoints.token, form, &requested)
            .await?
            .0)
    }

    /// POSTs a grant to the token endpoint with the client's authentication and reads the
    /// token set.
    async fn token_call(
        &self,
        c: &Client,
        token_url: &str,
        mut form: Vec<(&str, String)>,
        requested: &str,
    ) -> Result<(TokenSet, bool), OAuthError> {
        let p = &c.provider;
        let mut req = self
            .http
            .post(token_url)
            .header("Accept", "application/json");
        match (p.client_auth, &c.secret) {
            (ClientAuth::Basic, Some(secret)) => {
                req = req.header("Authorization", basic_auth(&c.client_id, secret).as_str());
            }
            (ClientAuth::Post, Some(secret)) => {
                form.push(("client_id", c.client_id.clone()));
                form.push(("client_secret", secret.reveal().to_owned()));
            }
            (_, None) => form.push(("client_id", c.client_id.clone())),
        }
        let body = super::form_body(form.iter().map(|(k, v)| (*k, v.as_str())));
        for (_, v) in &mut form {
            zeroize::Zeroize::zeroize(v);
        }
        let resp = req
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| {
                OAuthError::ProviderFailed(if e.is_timeout() {
                    "token_endpoint_timeout".into()
                } else {
                    "token_endpoint_unreachable".into()
                })
            })?;
        let status = resp.status();
        let failed =
            || OAuthError::ProviderFailed(format!("token_endpoint_status_{}", status.as_u16()));
        let json = match read_json(resp).await {
            Ok(json) => json,
            Err(_) if !status.is_success() => return Err(failed()),
            Err(e) => return Err(e),
        };
        if let Some(err) = json.get("error").and_then(Value::as_str) {
            // A spent, expired or foreign code is this request's fault; anything else
            // (invalid_client, server_error…) is the provider's or its configuration's.
            let err = sanitize(err);
            return Err(
                if matches!(err.as_str(), "invalid_grant" | "access_denied") {
                    OAuthError::ProviderError(err)
                } else {
                    OAuthError::ProviderFailed(err)
                },
            );
        }
        if !status.is_success() {
            return Err(failed());
        }
        let text = |k: &str| json.get(k).and_then(Value::as_str).map(str::to_owned);
        let access = text("access_token")
            .ok_or_else(|| OAuthError::ProviderFailed("no_access_token".into()))?;
        let said = text("scope");
        let told = said.is_some();
        let granted = said.unwrap_or_else(|| requested.to_owned());
        let sep: &[char] = &[' ', ','];
        let tokens = TokenSet {
            access_token: AccessToken::new(access),
            refresh_token: text("refresh_token").map(RefreshToken::new),
            id_token: text("id_token").map(IdToken::new),
            token_type: text("token_type").unwrap_or_else(|| "Bearer".into()),
            expires_at: expires_at(self.clock.unix(), json.get("expires_in")),
            scopes: granted
                .split(sep)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        };
        Ok((tokens, told))
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
