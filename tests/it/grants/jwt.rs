//! RFC 7523 `private_key_jwt`: an agent registered with a JWKS authenticates with a signed
//! assertion and has no secret. Every way an assertion can be wrong is `invalid_client`.

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};

use super::{Ask, REDIRECT, START, approved_code, oauth_post, pkce};
use crate::support::{Engine as Db, Site};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A P-256 key: its signing key and its public JWK.
fn es256(kid: &str) -> (EncodingKey, Value) {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let public = pair.public_key().as_ref();
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                     "x": b64(&public[1..33]), "y": b64(&public[33..65])});
    (EncodingKey::from_ec_der(pkcs8.as_ref()), jwk)
}

/// An Ed25519 key: its signing key and its public JWK.
fn ed25519(kid: &str) -> (EncodingKey, Value) {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let jwk =
        json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(pair.public_key().as_ref())});
    (EncodingKey::from_ed_der(pkcs8.as_ref()), jwk)
}

fn claims(aud: &str, exp: i64, jti: &str) -> Value {
    json!({"iss": "jwt-bot", "sub": "jwt-bot", "aud": aud, "exp": exp, "iat": START, "jti": jti})
}

fn sign(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn private_key_jwt_assertions() {
    let w = super::world(Site::new(Db::Sqlite).await.unwrap()).await;
    let (es_key, es_jwk) = es256("k1");
    let (ed_key, ed_jwk) = ed25519("k2");
    let jwks = w.site.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [es_jwk.clone(), ed_jwk]}).to_string()).unwrap();
    let out = w.site.ok(&[
        "agents",
        "add",
        "jwt-bot",
        "--redirect-uri",
        REDIRECT,
        "--jwks-file",
        jwks.to_str().unwrap(),
    ]);
    assert!(out.contains("private_key_jwt"), "{out}");
    assert!(!out.contains("sbx_agent_"), "{out}");
    let token_endpoint = format!("{}/oauth2/token", w.base);

    let (verifier, challenge) = pkce();
    let ask = Ask {
        client_id: "jwt-bot",
        redirect_uri: REDIRECT,
        scope: "tool:acme.items",
        challenge: &challenge,
        resource: None,
    };
    let code = approved_code(&w, &w.web, &ask).await;
    let exchange = |assertion: String| {
        let (base, code, verifier) = (w.base.clone(), code.clone(), verifier.clone());
        async move {
            oauth_post(
                &base,
                "/oauth2/token",
                None,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", REDIRECT),
                    ("code_verifier", &verifier),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", &assertion),
                ],
            )
            .await
        }
    };
    let good = claims(&token_endpoint, START + 120, "j-1");
    let (stranger, _) = es256("k1");
    let header_none = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let unsigned = format!("{header_none}.{}.", b64(good.to_string().as_bytes()));
    let hs_key = EncodingKey::from_secret(es_jwk.to_string().as_bytes());
    let hs_x = EncodingKey::from_secret(es_jwk["x"].as_str().unwrap().as_bytes());
    let refused = [
        (
            "another key",
            sign(Algorithm::ES256, "k1", &stranger, &good),
        ),
        (
            "wrong aud",
            sign(
                Algorithm::ES256,
                "k1",
                &es_key,
                &claims(&w.base, START + 120, "j-2"),
            ),
        ),
        (
            "expired",
            sign(
                Algorithm::ES256,
                "k1",
                &es_key,
                &claims(&token_endpoint, START - 5, "j-3"),
            ),
        ),
        (
            "over five minutes",
            sign(
                Algorithm::ES256,
                "k1",
                &es_key,
                &claims(&token_endpoint, START + 301, "j-4"),
            ),
        ),
        ("alg none", unsigned),
        (
            "HS256 keyed with the public JWK",
            sign(Algorithm::HS256, "k1", &hs_key, &good),
        ),
        (
            "HS256 keyed with x",
            sign(Algorithm::HS256, "k1", &hs_x, &good),
        ),
        ("another client's name", {
            let mut c = good.clone();
            c["iss"] = "bot".into();
            sign(Algorithm::ES256, "k1", &es_key, &c)
        }),
    ];
    for (what, assertion) in refused {
        let r = exchange(assertion).await;
        assert_eq!(r.status, 401, "{what}: {}", r.text);
        assert_eq!(r.json()["error"], "invalid_client", "{what}");
    }
    // A good one is accepted (the refusals did not spend the code)...
    let assertion = sign(Algorithm::ES256, "k1", &es_key, &good);
    let ok = exchange(assertion.clone()).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let refresh = ok.json()["refresh_token"].as_str().unwrap().to_owned();
    // ...once: its jti is spent.
    let again = oauth_post(
        &w.base,
        "/oauth2/token",
        None,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", &assertion),
        ],
    )
    .await;
    assert_eq!(again.status, 401, "{}", again.text);
    // EdDSA with a fresh jti refreshes.
    let ed = sign(
        Algorithm::EdDSA,
        "k2",
        &ed_key,
        &claims(&token_endpoint, START + 60, "j-5"),
    );
    let r = oauth_post(
        &w.base,
        "/oauth2/token",
        None,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", &ed),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The agent has no secret to authenticate with.
    let r = oauth_post(
        &w.base,
        "/oauth2/token",
        Some(("jwt-bot", "")),
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await;
    assert_eq!(r.json()["error"], "invalid_client");
    // Removing the agent ends its grant, and the event names it.
    w.site.ok(&["agents", "remove", "jwt-bot"]);
    let at_rest = crate::support::at_rest(&w.site);
    let needle = b"\"grants_ended\":[\"";
    assert!(
        at_rest.windows(needle.len()).any(|x| x == needle),
        "no grants_ended"
    );
}
