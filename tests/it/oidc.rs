//! OpenID Connect sign-in against an in-process provider that publishes discovery and a
//! JWKS and signs real RS256 ID tokens; one test per ID-token attack, and key rollover.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use openidconnect::core::{
    CoreIdToken, CoreIdTokenClaims, CoreJsonWebKeySet, CoreJwsSigningAlgorithm,
    CoreRsaPrivateSigningKey,
};
use openidconnect::{
    Audience, EmptyAdditionalClaims, EndUserEmail, IssuerUrl, JsonWebKeyId, Nonce,
    PrivateSigningKey, StandardClaims, SubjectIdentifier,
};
use serde_json::json;
use strongbox::clock::{Clock, SystemClock};
use tokio::sync::Notify;

use crate::oauth::Browser;
use crate::support::{Engine, Site};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Good,
    WrongNonce,
    WrongIssuer,
    WrongAudience,
    Expired,
    Unsigned,
    RolledKey,
}

pub(crate) struct Idp {
    pub(crate) base: String,
    pub(crate) mode: Mode,
    /// code -> nonce
    codes: HashMap<String, String>,
    keys: Vec<CoreRsaPrivateSigningKey>,
    /// How many keys the JWKS publishes.
    published: usize,
    jwks_fetches: usize,
    /// Microsoft-style tokens: (`tid` claim, the tenant named in `iss`).
    tenant: Option<(String, String)>,
    /// Where discovery says the JWKS is, when not at `/jwks`.
    pub(crate) jwks_uri: Option<String>,
    /// A UserInfo answer: when set, discovery names the endpoint and ID tokens carry no
    /// email (OIDC Core §5.4 lets a provider keep scope claims for UserInfo).
    pub(crate) userinfo: Option<serde_json::Value>,
    /// UserInfo requests made with an access token this provider issued.
    pub(crate) userinfo_calls: usize,
    access_tokens: Vec<String>,
    /// When set, discovery notifies the first and waits for the second before answering.
    pub(crate) discovery_gate: Option<(Arc<Notify>, Arc<Notify>)>,
}

/// Microsoft's extra claim: the tenant the account belongs to.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Tenant {
    tid: String,
}
impl openidconnect::AdditionalClaims for Tenant {}

pub(crate) type Shared = Arc<Mutex<Idp>>;

fn key(pem: &str, kid: &str) -> CoreRsaPrivateSigningKey {
    CoreRsaPrivateSigningKey::from_pem(pem, Some(JsonWebKeyId::new(kid.into()))).unwrap()
}

async fn discovery(State(s): State<Shared>) -> Response {
    let gate = s.lock().unwrap().discovery_gate.clone();
    if let Some((arrived, release)) = gate {
        arrived.notify_one();
        release.notified().await;
    }
    let st = s.lock().unwrap();
    let base = st.base.clone();
    let jwks_uri = st.jwks_uri.clone().unwrap_or(format!("{base}/jwks"));
    let mut doc = json!({
        "issuer": base, "authorization_endpoint": format!("{base}/authorize"), "token_endpoint": format!("{base}/token"),
        "jwks_uri": jwks_uri, "response_types_supported": ["code"], "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    });
    if st.userinfo.is_some() {
        doc["userinfo_endpoint"] = json!(format!("{base}/userinfo"));
    }
    axum::Json(doc).into_response()
}

async fn userinfo(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let mut st = s.lock().unwrap();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !st.access_tokens.iter().any(|t| t == bearer) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    st.userinfo_calls += 1;
    match st.userinfo.clone() {
        Some(answer) => axum::Json(answer).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn jwks(State(s): State<Shared>) -> Response {
    let mut st = s.lock().unwrap();
    st.jwks_fetches += 1;
    let keys = st
        .keys
        .iter()
        .take(st.published)
        .map(|k| k.as_verification_key())
        .collect();
    axum::Json(CoreJsonWebKeySet::new(keys)).into_response()
}

async fn authorize(State(s): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let code = format!("code-{}", uuid::Uuid::new_v4().simple());
    s.lock()
        .unwrap()
        .codes
        .insert(code.clone(), q["nonce"].clone());
    Redirect::to(&format!(
        "{}?code={code}&state={}",
        q["redirect_uri"], q["state"]
    ))
    .into_response()
}

async fn token(State(s): State<Shared>, Form(f): Form<HashMap<String, String>>) -> Response {
    let mut st = s.lock().unwrap();
    let Some(nonce) = st.codes.remove(&f["code"]) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_grant"})),
        )
            .into_response();
    };
    let now = chrono::Utc::now();
    let (iss, aud, exp, nonce) = match st.mode {
        Mode::WrongIssuer => (
            "https://evil.example".to_owned(),
            "cid",
            now + chrono::Duration::minutes(5),
            nonce,
        ),
        Mode::WrongAudience => (
            st.base.clone(),
            "other-client",
            now + chrono::Duration::minutes(5),
            nonce,
        ),
        Mode::Expired => (
            st.base.clone(),
            "cid",
            now - chrono::Duration::minutes(5),
            nonce,
        ),
        Mode::WrongNonce => (
            st.base.clone(),
            "cid",
            now + chrono::Duration::minutes(5),
            "replayed".to_owned(),
        ),
        _ => (
            st.base.clone(),
            "cid",
            now + chrono::Duration::minutes(5),
            nonce,
        ),
    };
    if let Some((tid, iss_tenant)) = st.tenant.clone() {
        let claims = openidconnect::IdTokenClaims::new(
            IssuerUrl::new(format!("{}/{iss_tenant}/v2.0", st.base)).unwrap(),
            vec![Audience::new("cid".into())],
            now + chrono::Duration::minutes(5),
            now,
            StandardClaims::new(SubjectIdentifier::new("ms-alice".into())),
            Tenant { tid },
        )
        .set_nonce(Some(Nonce::new(nonce)));
        let jwt = openidconnect::IdToken::<
            Tenant,
            openidconnect::core::CoreGenderClaim,
            openidconnect::core::CoreJweContentEncryptionAlgorithm,
            CoreJwsSigningAlgorithm,
        >::new(
            claims,
            &st.keys[0],
            CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
            None,
            None,
        )
        .unwrap()
        .to_string();
        let access = format!("at-{}", uuid::Uuid::new_v4().simple());
        st.access_tokens.push(access.clone());
        return axum::Json(
            json!({"access_token": access, "token_type": "Bearer", "expires_in": 3600, "id_token": jwt}),
        )
        .into_response();
    }
    let mut standard = StandardClaims::new(SubjectIdentifier::new("oidc-alice".into()));
    if st.userinfo.is_none() {
        standard = standard
            .set_email(Some(EndUserEmail::new("alice@example.com".into())))
            .set_email_verified(Some(true));
    }
    let claims = CoreIdTokenClaims::new(
        IssuerUrl::new(iss).unwrap(),
        vec![Audience::new(aud.into())],
        exp,
        now,
        standard,
        EmptyAdditionalClaims {},
    )
    .set_nonce(Some(Nonce::new(nonce)));
    let signer = if st.mode == Mode::RolledKey {
        &st.keys[1]
    } else {
        &st.keys[0]
    };
    let id_token = CoreIdToken::new(
        claims,
        signer,
        CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
        None,
        None,
    )
    .unwrap();
    let mut jwt = id_token.to_string();
    if st.mode == Mode::Unsigned {
        // Re-header the same claims as alg "none" with no signature.
        let payload = jwt.split('.').nth(1).unwrap().to_owned();
        jwt = format!("eyJhbGciOiJub25lIn0.{payload}.");
    }
    let access = format!("at-{}", uuid::Uuid::new_v4().simple());
    st.access_tokens.push(access.clone());
    axum::Json(json!({"access_token": access, "token_type": "Bearer", "expires_in": 3600, "id_token": jwt}))
        .into_response()
}

pub(crate) async fn start() -> Shared {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shared = Arc::new(Mutex::new(Idp {
        base,
        mode: Mode::Good,
        codes: HashMap::new(),
        keys: vec![
            key(include_str!("../fixtures/oidc-test-signing-key.pem"), "k1"),
            key(
                include_str!("../fixtures/oidc-test-signing-key-2.pem"),
                "k2",
            ),
        ],
        published: 1,
        jwks_fetches: 0,
        tenant: None,
        jwks_uri: None,
        userinfo: None,
        userinfo_calls: 0,
        access_tokens: Vec::new(),
        discovery_gate: None,
    }));
    let app = axum::Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/authorize", get(authorize))
        .route("/token", post(token))
        .route("/userinfo", get(userinfo))
        .with_state(Arc::clone(&shared));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    shared
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_sign_in_and_id_token_attacks() {
    let idp = start().await;
    let base = idp.lock().unwrap().base.clone();
    let site = Site::new(Engine::Sqlite).await.unwrap();
    site.ok(&["keys", "init"]);
    let config = strongbox::config::Config::from_toml(&format!(
        "public_url = \"http://127.0.0.1:8080\"\n[providers.idp]\nkind = \"oidc\"\nissuer = \"{base}\"\n\
         client_id = \"cid\"\nclient_secret = \"csecret\"\nlogin = true\n\
         [providers.down]\nkind = \"oidc\"\nissuer = \"http://127.0.0.1:9/idp\"\n\
         client_id = \"cid\"\nclient_secret = \"csecret\"\nlogin = true\n"
    ))
    .unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let state =
        strongbox::AppState::build(config, site.db().await, site.vault().await, clock).unwrap();
    let b = Browser {
        app: strongbox::app(state),
    };

    // A provider whose discovery cannot be fetched: the provider failed, a 502.
    let down = b.send("GET", "/login/down", None, &[]).await;
    assert_eq!(
        (down.status, down.body["code"].as_str()),
        (StatusCode::BAD_GATEWAY, Some("provider_error")),
        "{:?}",
        down.body
    );
    assert!(down.location.is_none());

    // Discovery, nonce in the request, a valid ID token: signed in as (idp, oidc-alice).
    let start = b.send("GET", "/login/idp", None, &[]).await;
    assert!(start.location.as_deref().unwrap().contains("nonce="));
    let cookie = b.sign_in_with("idp").await.unwrap();
    let me = b.send("GET", "/api/me", Some(&cookie), &[]).await;
    assert_eq!(me.body["identities"][0]["subject"], "oidc-alice");
    assert_eq!(me.body["identities"][0]["email"], "alice@example.com");

    for (mode, why) in [
        (Mode::WrongNonce, "id_token_nonce"),
        (Mode::WrongIssuer, "id_token_issuer"),
        (Mode::WrongAudience, "id_token_audience"),
        (Mode::Expired, "id_token_expired"),
        (Mode::Unsigned, "id_token_signature"),
    ] {
        idp.lock().unwrap().mode = mode;
        let refused = b.sign_in_with("idp").await.unwrap_err();
        assert_eq!(refused.body["code"], "provider_error", "{mode:?}");
        assert!(
            refused.body["detail"].as_str().unwrap().contains(why),
            "{mode:?}: {}",
            refused.body
        );
    }

    // Key rollover: a token signed by a key the cached JWKS lacks triggers one refetch.
    let fetches = idp.lock().unwrap().jwks_fetches;
    {
        let mut st = idp.lock().unwrap();
        st.mode = Mode::RolledKey;
        st.published = 2;
    }
    b.sign_in_with("idp").await.unwrap();
    assert_eq!(idp.lock().unwrap().jwks_fetches, fetches + 1);
    b.sign_in_with("idp").await.unwrap();
    assert_eq!(
        idp.lock().unwrap().jwks_fetches,
        fetches + 1,
        "cached after rollover"
    );
}

/// Microsoft's multi-tenant issuer end to end: the catalogue entry's `/common/` issuer
/// stands for the token's own tenant, and `iss` must name exactly that tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microsoft_tenant_issuer() {
    let idp = start().await;
    let base = idp.lock().unwrap().base.clone();
    let site = Site::new(Engine::Sqlite).await.unwrap();
    site.ok(&["keys", "init"]);
    // The built-in entry, its endpoints pointed at the test provider.
    let config = strongbox::config::Config::from_toml(&format!(
        "public_url = \"http://127.0.0.1:8080\"\n[providers.microsoft]\n\
         client_id = \"cid\"\nclient_secret = \"csecret\"\nlogin = true\n\
         issuer = \"{base}/common/v2.0\"\nauthorize_url = \"{base}/authorize\"\n\
         token_url = \"{base}/token\"\njwks_url = \"{base}/jwks\"\nuserinfo_url = \"{base}/userinfo\"\n"
    ))
    .unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let state =
        strongbox::AppState::build(config, site.db().await, site.vault().await, clock).unwrap();
    let b = Browser {
        app: strongbox::app(state),
    };
    let tenant = "9188040d-6c67-4c5b-b112-36a304b66dad";
    let other = "72f988bf-86f1-41af-91ab-2d7cd011db47";

    // Microsoft's ID tokens carry no email here: it comes from UserInfo (Graph's
    // `/oidc/userinfo` in the catalogue), about the same subject.
    idp.lock().unwrap().userinfo =
        Some(json!({"sub": "ms-alice", "email": "alice@contoso.example"}));
    idp.lock().unwrap().tenant = Some((tenant.into(), tenant.into()));
    let cookie = b.sign_in_with("microsoft").await.unwrap();
    let me = b.send("GET", "/api/me", Some(&cookie), &[]).await;
    assert_eq!(me.body["identities"][0]["provider"], "microsoft");
    assert_eq!(me.body["identities"][0]["subject"], "ms-alice");
    assert_eq!(me.body["identities"][0]["email"], "alice@contoso.example");

    for (tid, iss_tenant) in [
        (tenant, other),              // iss names another tenant than tid
        (tenant, "common"),           // iss keeps the placeholder
        ("not-a-guid", "not-a-guid"), // tid that is not a tenant id
        ("../evil", "../evil"),       // path games in tid
    ] {
        idp.lock().unwrap().tenant = Some((tid.into(), iss_tenant.into()));
        let refused = b.sign_in_with("microsoft").await.unwrap_err();
        assert_eq!(refused.body["code"], "provider_error", "{tid} {iss_tenant}");
        assert!(
            refused.body["detail"]
                .as_str()
                .unwrap()
                .contains("id_token_issuer"),
            "{tid} {iss_tenant}: {}",
            refused.body
        );
    }
}
