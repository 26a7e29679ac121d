//! Sign-in and connect against a real OAuth 2.0 provider (authorization code + PKCE S256,
//! client authentication, userinfo) started by the test on 127.0.0.1, and the browser and
//! app the other browser-route tests (`sessions`, `connect`) share.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde_json::{Value, json};
use strongbox::clock::{Clock, SystemClock};
use tower::ServiceExt;

use crate::support::Site;

#[derive(Default)]
pub(crate) struct ProviderState {
    /// The subject the next authorization signs in as.
    pub(crate) next_subject: String,
    /// code -> (redirect_uri, challenge, subject, scope)
    codes: HashMap<String, (String, String, String, String)>,
    /// access token -> subject
    tokens: HashMap<String, String>,
    /// Every token issued, for leak scans.
    pub(crate) issued: Vec<String>,
    /// Status the revocation endpoint answers with (0: 200).
    pub(crate) revoke_status: u16,
    /// Tokens revoked.
    pub(crate) revoked: Vec<String>,
    /// Token answers leave out `scope` (RFC 6749 §5.1: "as requested").
    pub(crate) omit_scope: bool,
}

pub(crate) type Shared = Arc<Mutex<ProviderState>>;

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

async fn authorize(State(s): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["client_id"], "cid");
    let code = format!("code-{}", uuid::Uuid::new_v4().simple());
    let mut st = s.lock().unwrap();
    let subject = st.next_subject.clone();
    st.codes.insert(
        code.clone(),
        (
            q["redirect_uri"].clone(),
            q["code_challenge"].clone(),
            subject,
            q["scope"].clone(),
        ),
    );
    Redirect::to(&format!(
        "{}?code={code}&state={}",
        q["redirect_uri"], q["state"]
    ))
    .into_response()
}

async fn token(
    State(s): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("cid:csecret")
    );
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(expected.as_str())
    {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let mut st = s.lock().unwrap();
    let Some((redirect_uri, challenge, subject, scope)) = st.codes.remove(&f["code"]) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_grant"})),
        )
            .into_response();
    };
    let verifier_ok =
        b64url(ring::digest::digest(&ring::digest::SHA256, f["code_verifier"].as_bytes()).as_ref())
            == challenge;
    if f["grant_type"] != "authorization_code" || f["redirect_uri"] != redirect_uri || !verifier_ok
    {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_grant"})),
        )
            .into_response();
    }
    let access = format!("at-{}", uuid::Uuid::new_v4().simple());
    let refresh = format!("rt-{}", uuid::Uuid::new_v4().simple());
    st.tokens.insert(access.clone(), subject);
    st.issued.push(access.clone());
    st.issued.push(refresh.clone());
    let mut answer = json!({"access_token": access, "token_type": "Bearer", "expires_in": 3600, "refresh_token": refresh, "scope": scope});
    if st.omit_scope {
        answer.as_object_mut().unwrap().remove("scope");
    }
    axum::Json(answer).into_response()
}

async fn userinfo(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let st = s.lock().unwrap();
    match bearer.and_then(|t| st.tokens.get(t)) {
        Some(sub) => axum::Json(json!({"sub": sub, "email": format!("{sub}@example.com"), "email_verified": true, "name": sub})).into_response(),
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

async fn revoke(
    State(s): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("cid:csecret")
    );
    assert_eq!(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
        Some(expected.as_str())
    );
    let mut st = s.lock().unwrap();
    match st.revoke_status {
        0 | 200 => {
            st.revoked.push(f["token"].clone());
            StatusCode::OK.into_response()
        }
        code => StatusCode::from_u16(code).unwrap().into_response(),
    }
}

pub(crate) async fn start_provider() -> (String, Shared) {
    let shared: Shared = Arc::new(Mutex::new(ProviderState {
        next_subject: "alice-sub".into(),
        ..Default::default()
    }));
    let app = axum::Router::new()
        .route("/authorize", get(authorize))
        .route("/token", post(token))
        .route("/userinfo", get(userinfo))
        .route("/revoke", post(revoke))
        .with_state(Arc::clone(&shared));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, shared)
}

pub(crate) struct Browser {
    pub(crate) app: axum::Router,
}

#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) location: Option<String>,
    pub(crate) cookie: Option<String>,
    pub(crate) body: Value,
}

/// A different client address per request, so the per-IP sign-in rate limit (tested on
/// its own in `serve`) does not throttle these flows.
fn next_peer() -> axum::extract::ConnectInfo<std::net::SocketAddr> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    axum::extract::ConnectInfo(std::net::SocketAddr::from((
        std::net::Ipv4Addr::from(0x0a00_0000 | n),
        40_000,
    )))
}

impl Browser {
    pub(crate) async fn send(
        &self,
        method: &str,
        uri: &str,
        cookie: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Reply {
        self.request(method, uri, cookie, extra, None).await
    }

    /// A `POST` of the form `form` (already urlencoded).
    pub(crate) async fn post_form(
        &self,
        uri: &str,
        cookie: Option<&str>,
        extra: &[(&str, &str)],
        form: &str,
    ) -> Reply {
        self.request("POST", uri, cookie, extra, Some(form)).await
    }

    async fn request(
        &self,
        method: &str,
        uri: &str,
        cookie: Option<&str>,
        extra: &[(&str, &str)],
        form: Option<&str>,
    ) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .extension(next_peer());
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, format!("strongbox={c}"));
        }
        if form.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let body = form.map_or_else(Body::empty, |f| Body::from(f.to_owned()));
        let resp = self
            .app
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let location = resp
            .headers()
            .get(header::LOCATION)
            .map(|v| v.to_str().unwrap().to_owned());
        let set = resp
            .headers()
            .get(header::SET_COOKIE)
            .map(|v| v.to_str().unwrap().to_owned());
        if let Some(set) = &set {
            assert!(
                set.contains("HttpOnly") && set.contains("SameSite=Lax") && set.contains("Path=/"),
                "{set}"
            );
        }
        let cookie = set.and_then(|s| {
            s.split(';')
                .next()
                .and_then(|kv| kv.strip_prefix("strongbox="))
                .map(str::to_owned)
        });
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            location,
            cookie,
            body,
        }
    }

    /// A request with a form body; returns status, content type and the body as text.
    pub(crate) async fn raw(
        &self,
        method: &str,
        uri: &str,
        cookie: Option<&str>,
        extra: &[(&str, &str)],
        form: &str,
    ) -> (StatusCode, String, String) {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .extension(next_peer());
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, format!("strongbox={c}"));
        }
        if !form.is_empty() {
            req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let resp = self
            .app
            .clone()
            .oneshot(req.body(Body::from(form.to_owned())).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let ctype = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map_or(String::new(), |v| v.to_str().unwrap().to_owned());
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, ctype, String::from_utf8(bytes.to_vec()).unwrap())
    }

    /// Follows the provider's authorize redirect and returns our callback path and query.
    pub(crate) async fn authorize(&self, url: &str) -> String {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let resp = client.get(url).send().await.unwrap();
        assert_eq!(resp.status(), 303, "authorize answered {}", resp.status());
        let loc = resp.headers()[header::LOCATION]
            .to_str()
            .unwrap()
            .to_owned();
        loc.strip_prefix("http://127.0.0.1:8080")
            .unwrap()
            .to_owned()
    }

    /// Signs in from scratch; returns the session cookie.
    pub(crate) async fn sign_in(&self) -> String {
        self.sign_in_with("acme").await.unwrap()
    }

    /// Signs in with `provider`; the callback's reply when no session came out of it.
    pub(crate) async fn sign_in_with(&self, provider: &str) -> Result<String, Reply> {
        let r = self
            .send("GET", &format!("/login/{provider}"), None, &[])
            .await;
        let callback = self.authorize(&r.location.unwrap()).await;
        let done = self.send("GET", &callback, r.cookie.as_deref(), &[]).await;
        done.cookie.clone().ok_or(done)
    }
}

/// An app with one OAuth 2.0 provider, `acme`, backed by a fresh in-process provider.
pub(crate) struct Acme {
    pub(crate) b: Browser,
    pub(crate) base: String,
    pub(crate) provider: Shared,
    pub(crate) vault: Arc<strongbox::vault::Vault>,
    pub(crate) state: strongbox::AppState,
}

/// Initialises `site`'s keys and builds the app with `acme` configured for sign-in.
pub(crate) async fn acme(site: &Site) -> Acme {
    let (base, provider) = start_provider().await;
    let config = strongbox::config::Config::from_toml(&format!(
        "public_url = \"http://127.0.0.1:8080\"\n\
         [providers.acme]\nkind = \"oauth2\"\nclient_id = \"cid\"\nclient_secret = \"csecret\"\nlogin = true\n\
         authorize_url = \"{base}/authorize\"\ntoken_url = \"{base}/token\"\nuserinfo_url = \"{base}/userinfo\"\nrevocation_url = \"{base}/revoke\"\n\
         scopes = [\"openid\", \"email\"]\n"
    ))
    .unwrap();
    site.ok(&["keys", "init"]);
    let vault = site.vault().await;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let state =
        strongbox::AppState::build(config, site.db().await, Arc::clone(&vault), clock).unwrap();
    let b = Browser {
        app: strongbox::app(state.clone()),
    };
    Acme {
        b,
        base,
        provider,
        vault,
        state,
    }
}

/// Every token `provider` issued is absent from what `site` stores, and the audit trail is
/// intact.
pub(crate) fn assert_nothing_in_the_clear(site: &Site, provider: &Shared) {
    assert!(site.ok(&["audit", "verify"]).contains("intact"));
    let issued = provider.lock().unwrap().issued.clone();
    assert!(issued.len() >= 8);
    let at_rest = crate::support::at_rest(site);
    for t in &issued {
        assert!(
            !at_rest.windows(t.len()).any(|w| w == t.as_bytes()),
            "token stored in the clear"
        );
    }
}

async fn flows(site: Site) {
    let Acme {
        b,
        base,
        provider,
        vault,
        ..
    } = acme(&site).await;

    let start = b
        .send("GET", "/login/acme?return_to=/account", None, &[])
        .await;
    assert_eq!(start.status, StatusCode::SEE_OTHER);
    let url = start.location.unwrap();
    assert!(
        url.starts_with(&format!("{base}/authorize?"))
            && url.contains("code_challenge_method=S256")
    );
    let pre = start.cookie.unwrap();
    let callback = b.authorize(&url).await;
    let done = b.send("GET", &callback, Some(&pre), &[]).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{:?}", done.body);
    assert_eq!(done.location.as_deref(), Some("/account"));
    let alice = done.cookie.unwrap();
    assert_ne!(alice, pre, "a new session id at sign-in");
    assert_eq!(
        b.send("GET", "/api/me", Some(&pre), &[]).await.status,
        StatusCode::UNAUTHORIZED
    );
    let me = b.send("GET", "/api/me", Some(&alice), &[]).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["identities"][0]["subject"], "alice-sub");
    let user_id = me.body["user"]["id"].as_str().unwrap().to_owned();
    let csrf = me.body["csrf_token"].as_str().unwrap().to_owned();
    let sealed = vault.load(&user_id, "acme").await.unwrap().unwrap();
    assert_eq!(sealed.scopes(), ["openid", "email"]);

    // The pages: sign-in buttons, the account page with its forms, friendly errors.
    let (status, ctype, html) = b.raw("GET", "/", None, &[], "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        ctype.starts_with("text/html") && html.contains("href=\"/login/acme\""),
        "{html}"
    );
    let (_, _, html) = b.raw("GET", "/", Some(&alice), &[], "").await;
    assert!(
        html.contains("Your account") && html.contains("alice-sub") && html.contains("Disconnect")
    );
    assert!(
        html.contains(&format!("value=\"{csrf}\"")),
        "forms carry the CSRF token"
    );
    assert!(!html.contains("<script"), "no JavaScript");
    let (status, ctype, html) = b
        .raw("GET", "/login/nope", None, &[("accept", "text/html")], "")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        ctype.starts_with("text/html") && html.contains("unknown_provider"),
        "{html}"
    );

    // The same state twice, or from another browser, or without a cookie: refused.
    let replay = b.send("GET", &callback, Some(&alice), &[]).await;
    assert_eq!(
        (replay.status, replay.body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_state"))
    );
    let other = b.send("GET", "/login/acme", None, &[]).await;
    let stolen = b.authorize(&other.location.unwrap()).await;
    let r = b.send("GET", &stolen, Some(&alice), &[]).await;
    assert_eq!(r.body["code"], "invalid_state");
    let r = b.send("GET", &stolen, None, &[]).await;
    assert_eq!(r.body["code"], "invalid_state");
    assert!(!r.body.to_string().contains("code-"), "no code echoed");
    // A provider error, an unknown provider, an unknown state.
    let other = b.send("GET", "/login/acme", None, &[]).await;
    let state_param = other
        .location
        .unwrap()
        .split("state=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned();
    let r = b
        .send(
            "GET",
            &format!("/oauth/callback/acme?error=access_denied&state={state_param}"),
            other.cookie.as_deref(),
            &[],
        )
        .await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("provider_error"))
    );
    assert_eq!(
        b.send("GET", "/login/nope", None, &[]).await.body["code"],
        "unknown_provider"
    );
    assert_eq!(
        b.send(
            "GET",
            "/oauth/callback/acme?code=x&state=forged",
            Some(&alice),
            &[]
        )
        .await
        .body["code"],
        "invalid_state"
    );

    // Connect more scopes: incremental, merged with what was granted.
    let r = b
        .send(
            "GET",
            "/connect/acme?scopes=calendar,contacts",
            Some(&alice),
            &[],
        )
        .await;
    assert!(r.location.as_deref().unwrap().contains("calendar"));
    let cb = b.authorize(&r.location.unwrap()).await;
    let r = b.send("GET", &cb, Some(&alice), &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{:?}", r.body);
    let sealed = vault.load(&user_id, "acme").await.unwrap().unwrap();
    assert_eq!(sealed.scopes(), ["openid", "email", "calendar", "contacts"]);
    // Signing in again with a provider that does not say which scopes the new token has:
    // what was asked, beside what was granted before.
    provider.lock().unwrap().omit_scope = true;
    b.sign_in().await;
    let sealed = vault.load(&user_id, "acme").await.unwrap().unwrap();
    assert_eq!(sealed.scopes(), ["openid", "email", "calendar", "contacts"]);
    // One that says: exactly what it says (the new token has no calendar scope).
    provider.lock().unwrap().omit_scope = false;
    b.sign_in().await;
    let sealed = vault.load(&user_id, "acme").await.unwrap().unwrap();
    assert_eq!(sealed.scopes(), ["openid", "email"]);
    // Connecting an account that belongs to another user is refused, never merged.
    provider.lock().unwrap().next_subject = "bob-sub".into();
    let bob = b.sign_in().await;
    assert_ne!(
        b.send("GET", "/api/me", Some(&bob), &[]).await.body["user"]["id"],
        user_id.as_str()
    );
    let r = b.send("GET", "/connect/acme", Some(&alice), &[]).await;
    let cb = b.authorize(&r.location.unwrap()).await;
    assert_eq!(
        b.send("GET", &cb, Some(&alice), &[]).await.body["code"],
        "already_linked"
    );
    provider.lock().unwrap().next_subject = "alice-sub".into();

    // No token the provider issued is stored in the clear.
    assert_nothing_in_the_clear(&site, &provider);
}

mod sign_in_and_connect {
    use crate::support::{Engine, Site};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::flows(Site::new(Engine::Sqlite).await.unwrap()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        if let Some(site) = Site::new(Engine::Postgres).await {
            super::flows(site).await;
        }
    }
}
