//! OpenID Connect for the sign-in flow: discovery, JWKS with key rollover, and ID-token
//! validation per OIDC Core §3.1.3.7, done by the maintained `openidconnect` crate.
//!
//! Checked: the signature, with an allow-list of asymmetric algorithms (never `none`, never
//! a shared-secret algorithm); `iss` exactly; `aud` contains our client id and no untrusted
//! audience; `azp`, when present or when there are several audiences, is our client id;
//! `exp` with at most [`SKEW`] seconds of tolerance; `iat` neither in the future nor older
//! than [`MAX_AGE`]; and `nonce` equal to the one the flow derived. An unknown `kid`
//! refetches the JWKS once, so a provider's key rollover needs no restart.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::RwLock;

use openidconnect::core::{
    CoreIdToken, CoreIdTokenVerifier, CoreJsonWebKeySet, CoreJwsSigningAlgorithm,
};
use openidconnect::{
    ClaimsVerificationError, ClientId, IssuerUrl, Nonce, SignatureVerificationError,
};
use serde::Deserialize;

/// Tolerated clock skew, seconds.
pub const SKEW: i64 = 60;
/// Oldest acceptable `iat`, seconds before now.
pub const MAX_AGE: i64 = 600;

const ALLOWED_ALGS: [CoreJwsSigningAlgorithm; 6] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EdDsa,
];

/// A provider's discovery document, the fields we use.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub userinfo_endpoint: Option<String>,
    pub jwks_uri: String,
    pub revocation_endpoint: Option<String>,
}

impl Discovery {
    /// The first endpoint a production deployment may not use: not https, and not plain
    /// http to a loopback address (SPEC §3; the same rule as configured endpoints).
    pub fn insecure_endpoint(&self) -> Option<&str> {
        [
            Some(self.authorization_endpoint.as_str()),
            Some(self.token_endpoint.as_str()),
            self.userinfo_endpoint.as_deref(),
            Some(self.jwks_uri.as_str()),
            self.revocation_endpoint.as_deref(),
        ]
        .into_iter()
        .flatten()
        .find(|u| !crate::config::secure_endpoint(u))
    }
}

/// Who an ID token says signed in.
#[derive(Debug, Clone)]
pub struct IdClaims {
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub name: Option<String>,
}

/// What one validation needs.
#[derive(Clone, Copy)]
pub struct Expect<'a> {
    pub provider: &'a str,
    pub jwks_url: &'a str,
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub nonce: &'a str,
    pub now: i64,
}

/// Discovery and JWKS caches.
#[derive(Default)]
pub struct Oidc {
    jwks: RwLock<HashMap<String, CoreJsonWebKeySet>>,
    discovered: RwLock<HashMap<String, Discovery>>,
    /// `public_url` is https: discovered endpoints must be https too (or loopback).
    https: bool,
}

impl Oidc {
    pub fn new(https: bool) -> Oidc {
        Oidc {
            https,
            ..Oidc::default()
        }
    }
}

/// Why discovery, the JWKS or an ID token was not accepted: the provider refused (a 400
/// to the user) or failed (a 502). Reasons are short codes, safe to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    #[error("the provider refused: {0}")]
    Refused(String),
    #[error("the provider failed: {0}")]
    Failed(String),
}

fn refused(why: &str) -> OidcError {
    OidcError::Refused(format!("id_token_{why}"))
}

impl Oidc {
    /// The discovery document of `issuer`, fetched once; its `issuer` must match exactly.
    pub async fn discover(
        &self,
        http: &reqwest::Client,
        issuer: &str,
    ) -> Result<Discovery, OidcError> {
        if let Some(d) = self
            .discovered
            .read()
            .ok()
            .and_then(|m| m.get(issuer).cloned())
        {
            return Ok(d);
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let d: Discovery = serde_json::from_value(
            crate::outbound::get_json(http, &url)
                .await
                .map_err(OidcError::Failed)?,
        )
        .map_err(|_| OidcError::Failed("discovery_malformed".into()))?;
        if d.issuer != issuer {
            return Err(OidcError::Failed("discovery_issuer_mismatch".into()));
        }
        if self.https && d.insecure_endpoint().is_some() {
            return Err(OidcError::Refused("discovery_insecure_endpoint".into()));
        }
        if let Ok(mut m) = self.discovered.write() {
            m.insert(issuer.to_owned(), d.clone());
        }
        Ok(d)
    }

    async fn keys(
        &self,
        http: &reqwest::Client,
        e: &Expect<'_>,
        refresh: bool,
    ) -> Result<CoreJsonWebKeySet, OidcError> {
        let cached = self
            .jwks
            .read()
            .ok()
            .and_then(|m| m.get(e.provider).cloned());
        if let Some(k) = cached.filter(|_| !refresh) {
            return Ok(k);
        }
        let keys: CoreJsonWebKeySet = serde_json::from_value(
            crate::outbound::get_json(http, e.jwks_url)
                .await
                .map_err(OidcError::Failed)?,
        )
        .map_err(|_| OidcError::Failed("jwks_malformed".into()))?;
        if let Ok(mut m) = self.jwks.write() {
            m.insert(e.provider.to_owned(), keys.clone());
        }
        Ok(keys)
    }

    /// Validates `id_token`, refetching the JWKS once when its key is unknown.
    pub async fn verify(
        &self,
        http: &reqwest::Client,
        id_token: &str,
        e: &Expect<'_>,
    ) -> Result<IdClaims, OidcError> {
        let token = CoreIdToken::from_str(id_token).map_err(|_| refused("malformed"))?;
        let tenant = tenant_issuer(e.issuer, id_token);
        let e = &Expect {
            issuer: tenant.as_deref().unwrap_or(e.issuer),
            ..*e
        };
        let keys = self.keys(http, e, false).await?;
        match check(&token, keys, e) {
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) => {
                let keys = self.keys(http, e, true).await?;
                check(&token, keys, e).map_err(|err| reason(&err))
            }
            other => other.map_err(|err| reason(&err)),
        }
    }
}

/// Multi-tenant issuers (Microsoft's `…/common/v2.0`, `…/organizations/v2.0`) stand for
/// `…/{tid}/v2.0`: the issuer to require is the configured one with the token's `tid`
/// substituted. The `tid` is read before verification, but the signature then covers both
/// it and `iss`, which must match the substituted issuer exactly.
pub fn tenant_issuer(configured: &str, id_token: &str) -> Option<String> {
    use base64::Engine;
    let segment = ["/common/", "/organizations/", "/consumers/"]
        .into_iter()
        .find(|s| configured.contains(s))?;
    let payload = id_token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let tid = claims.get("tid")?.as_str()?;
    let is_guid = tid.len() == 36 && tid.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    is_guid.then(|| configured.replacen(segment, &format!("/{tid}/"), 1))
}

fn reason(err: &ClaimsVerificationError) -> OidcError {
    refused(match err {
        ClaimsVerificationError::Expired(_) => "expired",
        ClaimsVerificationError::InvalidAudience(_) => "audience",
        ClaimsVerificationError::InvalidIssuer(_) => "issuer",
        ClaimsVerificationError::InvalidNonce(_) => "nonce",
        ClaimsVerificationError::SignatureVerification(_) => "signature",
        _ => "invalid",
    })
}

fn check(
    token: &CoreIdToken,
    keys: CoreJsonWebKeySet,
    e: &Expect<'_>,
) -> Result<IdClaims, ClaimsVerificationError> {
    let issuer = IssuerUrl::new(e.issuer.to_owned())
        .map_err(|_| ClaimsVerificationError::InvalidIssuer("bad issuer".into()))?;
    let now = e.now;
    let verifier =
        CoreIdTokenVerifier::new_public_client(ClientId::new(e.client_id.to_owned()), issuer, keys)
            .set_allowed_algs(ALLOWED_ALGS)
            .set_time_fn(move || {
                chrono::DateTime::from_timestamp(now - SKEW, 0).unwrap_or_default()
            })
            .set_issue_time_verifier_fn(move |iat| {
                let iat = iat.timestamp();
                if iat > now + SKEW || iat < now - MAX_AGE {
                    Err("outside the accepted window".into())
                } else {
                    Ok(())
                }
            });
    let claims = token.claims(&verifier, &Nonce::new(e.nonce.to_owned()))?;
    let aud_count = claims.audiences().len();
    match claims.authorized_party() {
        Some(azp) if azp.as_str() != e.client_id => {
            return Err(ClaimsVerificationError::InvalidAudience(
                "azp is another client".into(),
            ));
        }
        None if aud_count > 1 => {
            return Err(ClaimsVerificationError::InvalidAudience(
                "several audiences and no azp".into(),
            ));
        }
        _ => {}
    }
    Ok(IdClaims {
        subject: claims.subject().as_str().to_owned(),
        email: claims.email().map(|m| m.as_str().to_owned()),
        email_verified: claims.email_verified().unwrap_or(false),
        name: claims
            .name()
            .and_then(|n| n.get(None))
            .map(|n| n.as_str().to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    use super::tenant_issuer;

    fn token(claims: &str) -> String {
        let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b("{\"alg\":\"RS256\"}"), b(claims))
    }

    #[test]
    fn discovered_endpoints_must_be_https_or_loopback() {
        let doc = |token: &str| super::Discovery {
            issuer: "https://idp.example".into(),
            authorization_endpoint: "https://idp.example/authorize".into(),
            token_endpoint: token.into(),
            userinfo_endpoint: Some("http://127.0.0.1:9/userinfo".into()),
            jwks_uri: "https://idp.example/jwks".into(),
            revocation_endpoint: None,
        };
        assert_eq!(doc("https://idp.example/token").insecure_endpoint(), None);
        assert_eq!(
            doc("http://idp.example/token").insecure_endpoint(),
            Some("http://idp.example/token")
        );
    }

    #[test]
    fn microsoft_tenant_issuers() {
        let common = "https://login.microsoftonline.com/common/v2.0";
        let tid = "9188040d-6c67-4c5b-b112-36a304b66dad";
        assert_eq!(
            tenant_issuer(common, &token(&format!("{{\"tid\":\"{tid}\"}}"))).as_deref(),
            Some("https://login.microsoftonline.com/9188040d-6c67-4c5b-b112-36a304b66dad/v2.0")
        );
        assert_eq!(tenant_issuer(common, &token("{\"tid\":\"../evil\"}")), None);
        assert_eq!(tenant_issuer(common, &token("{}")), None);
        assert_eq!(
            tenant_issuer(
                "https://accounts.google.com",
                &token(&format!("{{\"tid\":\"{tid}\"}}"))
            ),
            None
        );
    }
}
