//! The token and revocation endpoints' work: client authentication (secret, RFC 7523
//! `private_key_jwt`, or none for public clients), the code exchange with PKCE, refresh
//! with rotation and replay detection (RFC 9700 §4.14), and RFC 7009 revocation.
//!
//! A code or refresh token is spent with one conditional `UPDATE`, so two requests racing
//! with the same one cannot both win; the loser is a replay and revokes the grant.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::json;

use super::{ACCESS_TTL, AuthServer, Client, ClientKind, GrantError, Scope};
use crate::audit::{self, Actor, Event, Kind, Outcome};
use crate::crypto::{constant_time_eq, random_text, sha256};
use crate::secret::{ClientPresented, GrantAccessToken, GrantRefreshToken};
use crate::store::Tx;
use crate::store::grants::{self as rows, GrantRow};

/// The assertion type of RFC 7523 §2.2.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Longest lifetime of a `private_key_jwt` assertion, in seconds.
const MAX_ASSERTION_LIFETIME: i64 = 5 * 60;

/// How the client authenticated at the token or revocation endpoint.
pub enum ClientAuth {
    /// `client_secret_basic` or `client_secret_post`.
    Secret { id: String, secret: ClientPresented },
    /// `private_key_jwt`.
    Assertion {
        id: Option<String>,
        assertion: ClientPresented,
    },
    /// A public client names itself.
    None { id: String },
}

/// A token request's parameters (the secrets among them are secret types).
#[derive(Default)]
pub struct TokenRequest {
    pub grant_type: String,
    pub code: Option<ClientPresented>,
    pub redirect_uri: Option<String>,
    pub code_verifier: Option<ClientPresented>,
    pub refresh_token: Option<ClientPresented>,
    pub scope: Option<String>,
    pub resource: Option<String>,
}

/// Tokens issued; the only place they leave is the token endpoint's answer.
pub struct Issued {
    pub access_token: GrantAccessToken,
    pub refresh_token: GrantRefreshToken,
    pub expires_in: i64,
    pub scope: String,
}

/// `code_challenge` is base64url of a SHA-256 digest: 43 characters.
pub(super) fn valid_challenge(c: &str) -> bool {
    c.len() == 43
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// RFC 7636 §4.1: 43 to 128 unreserved characters; S256 of it must be the challenge.
fn pkce_ok(verifier: &str, challenge: &str) -> bool {
    let shaped = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    let computed = URL_SAFE_NO_PAD.encode(sha256(&[verifier.as_bytes()]));
    shaped && constant_time_eq(computed.as_bytes(), challenge.as_bytes())
}

/// Checks a JWKS given at registration: ES256 (P-256) and Ed25519 public keys only.
pub fn check_jwks(text: &str) -> Result<(), String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("not a JWKS: {e}"))?;
    if set.keys.is_empty() {
        return Err("the JWKS has no keys".into());
    }
    for key in &set.keys {
        match &key.algorithm {
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {}
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {}
            _ => {
                return Err(
                    "only P-256 (ES256) and Ed25519 (EdDSA) public keys are accepted".into(),
                );
            }
        }
        DecodingKey::from_jwk(key).map_err(|e| format!("a key cannot be read: {e}"))?;
    }
    Ok(())
}

#[derive(Deserialize)]
struct AssertionClaims {
    iss: String,
    sub: String,
    exp: i64,
    jti: String,
}

impl AuthServer {
    /// Authenticates the client at the token or revocation endpoint.
    pub async fn authenticate(&self, auth: &ClientAuth) -> Result<Client, GrantError> {
        let refused = || GrantError::InvalidClient("client authentication failed".into());
        match auth {
            ClientAuth::Secret { id, secret } => {
                let client = self.known_client(id).await.map_err(|_| refused())?;
                let presented = sha256(&[secret.reveal().as_bytes()]);
                if client.kind != ClientKind::Secret
                    || !constant_time_eq(&presented, &client.secret_hash)
                {
                    return Err(refused());
                }
                Ok(client)
            }
            ClientAuth::Assertion { id, assertion } => {
                self.verify_assertion(id.as_deref(), assertion).await
            }
            ClientAuth::None { id } => {
                let client = self.known_client(id).await.map_err(|_| refused())?;
                match client.kind {
                    ClientKind::Public => Ok(client),
                    _ => Err(refused()),
                }
            }
        }
    }

    /// RFC 7523 §3: signed by one of the client's keys (ES256 or EdDSA), `iss` = `sub` =
    /// client id, `aud` = the token endpoint, expiring within five minutes, `jti` unseen.
    async fn verify_assertion(
        &self,
        id: Option<&str>,
        assertion: &ClientPresented,
    ) -> Result<Client, GrantError> {
        let refused = || GrantError::InvalidClient("client assertion rejected".into());
        let jwt = assertion.reveal();
        let header = jsonwebtoken::decode_header(jwt).map_err(|_| refused())?;
        if !matches!(header.alg, Algorithm::ES256 | Algorithm::EdDSA) {
            return Err(refused());
        }
        // The claims name the client whose keys then verify them.
        let unverified: AssertionClaims =
            jsonwebtoken::dangerous::insecure_decode_claims(jwt).map_err(|_| refused())?;
        if id.is_some_and(|id| id != unverified.sub) {
            return Err(refused());
        }
        let client = self
            .known_client(&unverified.sub)
            .await
            .map_err(|_| refused())?;
        let ClientKind::KeyJwt(jwks) = &client.kind else {
            return Err(refused());
        };
        let set: JwkSet = serde_json::from_str(jwks).map_err(|_| refused())?;
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[self.endpoint("/oauth2/token")]);
        validation.set_issuer(&[client.name.as_str()]);
        validation.sub = Some(client.name.clone());
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        // Expiry is checked below against the service's clock.
        validation.validate_exp = false;
        let candidates = set.keys.iter().filter(|k| match &header.kid {
            Some(kid) => k.common.key_id.as_deref() == Some(kid.as_str()),
            None => true,
        });
        let mut verified = None;
        for jwk in candidates {
            let family_fits = matches!(
                (&jwk.algorithm, header.alg),
                (AlgorithmParameters::EllipticCurve(_), Algorithm::ES256)
                    | (AlgorithmParameters::OctetKeyPair(_), Algorithm::EdDSA)
            );
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            if family_fits
                && let Ok(data) = jsonwebtoken::decode::<AssertionClaims>(jwt, &key, &validation)
            {
                verified = Some(data.claims);
                break;
            }
        }
        let claims = verified.ok_or_else(refused)?;
        let now = self.clock.unix();
        if claims.iss != client.name
            || claims.exp <= now
            || claims.exp > now + MAX_ASSERTION_LIFETIME
            || claims.jti.is_empty()
            || claims.jti.len() > 256
        {
            return Err(refused());
        }
        let mut tx = self.db.begin().await?;
        let jti = sha256(&[client.id.as_bytes(), b"\0", claims.jti.as_bytes()]);
        if !rows::spend_assertion(&mut tx, &jti, claims.exp).await? {
            return Err(refused());
        }
        tx.commit().await?;
        Ok(client)
    }

    /// The token endpoint: a code or a refresh token for new tokens.
    pub async fn token(
        &self,
        client: &Client,
        req: TokenRequest,
        request_id: &str,
    ) -> Result<Issued, GrantError> {
        match req.grant_type.as_str() {
            "authorization_code" => self.exchange_code(client, req, request_id).await,
            "refresh_token" => self.refresh(client, req, request_id).await,
            _ => Err(GrantError::UnsupportedGrantType),
        }
    }

    async fn exchange_code(
        &self,
        client: &Client,
        req: TokenRequest,
        request_id: &str,
    ) -> Result<Issued, GrantError> {
        let invalid = |why: &str| GrantError::InvalidGrant(why.to_owned());
        let code = req
            .code
            .ok_or_else(|| GrantError::InvalidRequest("code is required".into()))?;
        let now = self.clock.unix();
        let mut tx = self.db.begin().await?;
        let hash = sha256(&[code.reveal().as_bytes()]);
        let Some(grant_id) = rows::code_grant(&mut tx, &hash).await? else {
            return Err(invalid("the code is unknown, expired or revoked"));
        };
        let grant = self.lock_grant(&mut tx, &grant_id).await?;
        // The code is spent by any attempt that finds it, so a wrong verifier cannot be
        // retried; the spend commits whatever the outcome.
        let Some((row, first)) = rows::use_code(&mut tx, &hash, now).await? else {
            return Err(invalid("the code is unknown, expired or revoked"));
        };
        let Some(grant) = grant else {
            tx.commit().await?;
            return Err(invalid("the code is unknown, expired or revoked"));
        };
        if !first {
            self.replayed(tx, &grant, "authorization_code", request_id)
                .await?;
            return Err(invalid(
                "the code was already used; the grant it issued is revoked",
            ));
        }
        let verifier = req
            .code_verifier
            .as_ref()
            .map_or("", ClientPresented::reveal);
        let refusal = if now >= row.expires_at || now >= grant.expires_at {
            Some("the code has expired")
        } else if grant.agent_id != client.id {
            Some("the code was issued to another client")
        } else if req.redirect_uri.as_deref() != Some(row.redirect_uri.as_str()) {
            Some("redirect_uri differs from the authorization request's")
        } else if !pkce_ok(verifier, &row.code_challenge) {
            Some("the code_verifier does not match the code_challenge")
        } else {
            None
        };
        if let Some(why) = refusal {
            tx.commit().await?;
            return Err(invalid(why));
        }
        let resource = self.token_resource(&grant, req.resource.as_deref())?;
        let scope = Scope::from_lists(&grant.tools, &grant.providers);
        let issued = self
            .issue(
                &mut tx,
                &grant,
                &scope,
                resource.as_deref(),
                "authorization_code",
                request_id,
            )
            .await?;
        tx.commit().await?;
        Ok(issued)
    }

    async fn refresh(
        &self,
        client: &Client,
        req: TokenRequest,
        request_id: &str,
    ) -> Result<Issued, GrantError> {
        let invalid = |why: &str| GrantError::InvalidGrant(why.to_owned());
        let presented = req
            .refresh_token
            .ok_or_else(|| GrantError::InvalidRequest("refresh_token is required".into()))?;
        let now = self.clock.unix();
        let mut tx = self.db.begin().await?;
        let hash = sha256(&[presented.reveal().as_bytes()]);
        let Some(grant_id) = rows::refresh_grant(&mut tx, &hash).await? else {
            return Err(invalid("the refresh token is unknown or revoked"));
        };
        let Some(grant) = self.lock_grant(&mut tx, &grant_id).await? else {
            return Err(invalid("the refresh token is unknown or revoked"));
        };
        let Some((_, first)) = rows::rotate_refresh(&mut tx, &hash, now).await? else {
            return Err(invalid("the refresh token is unknown or revoked"));
        };
        if grant.agent_id != client.id {
            // Not spent: it is not this client's to spend.
            return Err(invalid("the refresh token was issued to another client"));
        }
        if !first {
            self.replayed(tx, &grant, "refresh_token", request_id)
                .await?;
            return Err(invalid(
                "the refresh token was already used; the grant is revoked",
            ));
        }
        if now >= grant.expires_at {
            return Err(invalid("the grant has expired"));
        }
        let granted = Scope::from_lists(&grant.tools, &grant.providers);
        let scope = match req.scope.as_deref() {
            None | Some("") => granted,
            Some(asked) => {
                let asked = self.parse_scope(Some(asked))?;
                if !granted.covers(&asked) {
                    // Not spent: the client may try again within its grant.
                    return Err(GrantError::InvalidScope(
                        "the scope asked for exceeds the grant".into(),
                    ));
                }
                asked
            }
        };
        let resource = self.token_resource(&grant, req.resource.as_deref())?;
        let issued = self
            .issue(
                &mut tx,
                &grant,
                &scope,
                resource.as_deref(),
                "refresh_token",
                request_id,
            )
            .await?;
        tx.commit().await?;
        Ok(issued)
    }

    /// Reads and locks a grant, before its code or refresh token: the order a revocation's
    /// cascade takes them in, so a revocation and an exchange wait for each other rather
    /// than deadlock (PostgreSQL).
    async fn lock_grant(
        &self,
        tx: &mut Tx,
        grant_id: &str,
    ) -> Result<Option<GrantRow>, GrantError> {
        let lock = self.db.backend().for_update();
        Ok(rows::grant_by_id_locked(tx, grant_id, lock).await?)
    }

    /// The resource a token is issued for: the grant's, or one asked for now if the grant
    /// named none.
    fn token_resource(
        &self,
        grant: &GrantRow,
        asked: Option<&str>,
    ) -> Result<Option<String>, GrantError> {
        match (grant.resource.as_deref(), asked) {
            (_, None) => Ok(grant.resource.clone()),
            (Some(g), Some(a)) if g == a => Ok(Some(a.to_owned())),
            (None, Some(a)) if self.known_resource(a) => Ok(Some(a.to_owned())),
            _ => Err(GrantError::InvalidTarget(
                "resource is not one this grant covers".into(),
            )),
        }
    }

    /// Issues an access token (narrowed to `scope`) and a new refresh token, audited.
    async fn issue(
        &self,
        tx: &mut Tx,
        grant: &GrantRow,
        scope: &Scope,
        resource: Option<&str>,
        how: &str,
        request_id: &str,
    ) -> Result<Issued, GrantError> {
        let now = self.clock.unix();
        let expires_at = (now + ACCESS_TTL).min(grant.expires_at);
        let (access_token, handle) = self
            .agents
            .issue_access(
                tx,
                &grant.agent_id,
                &grant.user_id,
                &scope.tools,
                &scope.providers,
                expires_at,
                &grant.id,
                resource,
            )
            .await?;
        let refresh_token = GrantRefreshToken::new(format!("sbx_rt_{}", random_text(32)?.as_str()));
        rows::insert_refresh(
            tx,
            &sha256(&[refresh_token.reveal().as_bytes()]),
            &grant.id,
            now,
        )
        .await?;
        let agent = rows::client_by_id(&mut **tx, &grant.agent_id)
            .await?
            .map(|c| c.name)
            .unwrap_or_default();
        let event = Event::new(
            Kind::TokensIssued,
            Actor::Agent(agent),
            format!("user:{}", grant.user_id),
        )
        .request_id(request_id.to_owned())
        .detail(json!({
            "grant": grant.id, "grant_type": how, "access_token": handle,
            "scope": scope.text(), "resource": resource, "expires_at": expires_at,
        }));
        audit::append(tx, self.clock.unix_ms(), event).await?;
        Ok(Issued {
            access_token,
            refresh_token,
            expires_in: expires_at - now,
            scope: scope.text(),
        })
    }

    /// A spent code or rotated refresh token came back: the grant is revoked, audited.
    async fn replayed(
        &self,
        mut tx: Tx,
        grant: &GrantRow,
        what: &str,
        request_id: &str,
    ) -> Result<(), GrantError> {
        rows::delete_grant(&mut tx, &grant.id).await?;
        let event = Event::new(
            Kind::ReplayDetected,
            Actor::System,
            format!("user:{}", grant.user_id),
        )
        .outcome(Outcome::Denied)
        .request_id(request_id.to_owned())
        .detail(json!({ "grant": grant.id, "replayed": what, "action": "grant revoked" }));
        audit::append(&mut tx, self.clock.unix_ms(), event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// RFC 7009: an access token ends alone; a refresh token ends its whole grant. A
    /// token that is unknown, or another client's, changes nothing (and says nothing).
    pub async fn revoke_token(
        &self,
        client: &Client,
        token: &ClientPresented,
        request_id: &str,
    ) -> Result<(), GrantError> {
        let hash = sha256(&[token.reveal().as_bytes()]);
        let mut tx = self.db.begin().await?;
        if let Some((grant_id, handle)) = rows::access_grant(&mut tx, &hash).await? {
            if let Some(grant) = rows::grant_by_id(&mut tx, &grant_id).await?
                && grant.agent_id == client.id
            {
                rows::delete_access(&mut tx, &hash).await?;
                let event = Event::new(
                    Kind::TokenRevoked,
                    Actor::Agent(client.name.clone()),
                    format!("user:{}", grant.user_id),
                )
                .request_id(request_id.to_owned())
                .detail(json!({ "grant": grant_id, "access_token": handle }));
                audit::append(&mut tx, self.clock.unix_ms(), event).await?;
            }
        } else if let Some(grant_id) = rows::refresh_grant(&mut tx, &hash).await?
            && let Some(grant) = rows::grant_by_id(&mut tx, &grant_id).await?
            && grant.agent_id == client.id
        {
            rows::delete_grant(&mut tx, &grant_id).await?;
            let event = Event::new(
                Kind::GrantRevoked,
                Actor::Agent(client.name.clone()),
                format!("user:{}", grant.user_id),
            )
            .request_id(request_id.to_owned())
            .detail(json!({ "grant": grant_id, "reason": "refresh token revoked by the client" }));
            audit::append(&mut tx, self.clock.unix_ms(), event).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_is_s256_of_a_well_formed_verifier() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        // RFC 7636 appendix B.
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(valid_challenge(challenge));
        assert!(pkce_ok(verifier, challenge));
        assert!(!pkce_ok(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXj",
            challenge
        ));
        assert!(!pkce_ok("short", challenge));
        assert!(!valid_challenge("plain-challenge"));
    }

    #[test]
    fn only_p256_and_ed25519_public_keys_are_registered() {
        let ec = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","kid":"k1"}]}"#;
        assert!(check_jwks(ec).is_ok());
        let oct = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#;
        assert!(check_jwks(oct).is_err());
        let rsa = r#"{"keys":[{"kty":"RSA","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}]}"#;
        assert!(check_jwks(rsa).is_err());
        assert!(check_jwks(r#"{"keys":[]}"#).is_err());
        assert!(check_jwks("not json").is_err());
    }
}
