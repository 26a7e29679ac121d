//! Catalogue providers' quirks against recorded response shapes, with a mock that asserts
//! what each provider requires of the request (client authentication method, GitHub's
//! `Accept: application/json` and `User-Agent`), plus token-endpoint failures.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde_json::json;
use strongbox::clock::{Clock, SystemClock};

use crate::oauth::Browser;
use crate::support::{Engine, Site};

type Seen = Arc<Mutex<Vec<String>>>;

async fn authorize(Query(q): Query<HashMap<String, String>>) -> Response {
    Redirect::to(&format!(
        "{}?code=recorded-code&state={}",
        q["redirect_uri"], q["state"]
    ))
    .into_response()
}

fn basic(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Basic ")
        .map(str::to_owned)
}

async fn token(
    State(seen): State<Seen>,
    Path(p): Path<String>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let json_accepted = headers
        .get(header::ACCEPT)
        .is_some_and(|v| v.to_str().unwrap().contains("application/json"));
    let auth = if basic(&headers).is_some() {
        "basic"
    } else if f.contains_key("client_secret") {
        "post"
    } else {
        "none"
    };
    seen.lock().unwrap().push(format!("{p}:token:{auth}"));
    assert_eq!(f["code"], "recorded-code");
    match p.as_str() {
        // GitHub answers a form unless asked for JSON.
        "github" if !json_accepted => "access_token=gho_16C7e42F292c6912E7710c838347Ae178B4a&scope=read%3Auser&token_type=bearer".into_response(),
        "github" => axum::Json(json!({"access_token": "gho_16C7e42F292c6912E7710c838347Ae178B4a", "token_type": "bearer", "scope": "read:user,user:email"})).into_response(),
        "discord" => axum::Json(json!({"access_token": "6qrZcUqja7812RVdnEKjpzOL4CvHBFG", "token_type": "Bearer", "expires_in": 604_800,
            "refresh_token": "D43f5y0ahjqew82jZ4NViEr2YafMKhue", "scope": "identify email"})).into_response(),
        "spotify" => axum::Json(json!({"access_token": "NgCXRKc_spotify_recorded_MzYjw", "token_type": "Bearer", "scope": "user-read-private user-read-email",
            "expires_in": 3600, "refresh_token": "NgAagA_spotify_recorded_Um_SHo"})).into_response(),
        // Lifetimes no token has: past the end of i64, and already over.
        "forever" => axum::Json(json!({"access_token": "at-forever", "token_type": "Bearer", "expires_in": i64::MAX})).into_response(),
        "negative" => axum::Json(json!({"access_token": "at-negative", "token_type": "Bearer", "expires_in": -3600})).into_response(),
        "malformed" => (StatusCode::OK, "<html>not json</html>").into_response(),
        // Slower than the configured provider_timeout (1s).
        "slow" => {
            tokio::time::sleep(std::time::Duration::from_secs(3)).await;
            axum::Json(json!({"access_token": "late", "token_type": "Bearer"})).into_response()
        }
        "broken" => (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({"error": "server_error"}))).into_response(),
        "unavailable" => (StatusCode::SERVICE_UNAVAILABLE, "try later").into_response(),
        "denied" => (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "invalid_grant", "error_description": "Bad code <script>recorded-code</script>"}))).into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn userinfo(State(seen): State<Seen>, Path(p): Path<String>, headers: HeaderMap) -> Response {
    let ua = headers.get(header::USER_AGENT).is_some();
    seen.lock().unwrap().push(format!("{p}:userinfo:ua={ua}"));
    match p.as_str() {
        "github" => axum::Json(json!({"login": "octocat", "id": 1, "email": "octocat@github.com", "name": "The Octocat"})).into_response(),
        "discord" => axum::Json(json!({"id": "80351110224678912", "username": "nelly", "global_name": "Nelly", "email": "nelly@discord.com", "verified": true})).into_response(),
        "spotify" => axum::Json(json!({"id": "smedjan", "display_name": "JM Wizzler", "email": "email@example.com", "country": "SE"})).into_response(),
        "forever" | "negative" => axum::Json(json!({"sub": p})).into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_provider_shapes() {
    let seen: Seen = Arc::default();
    let mock = axum::Router::new()
        .route("/{p}/authorize", get(authorize))
        .route("/{p}/token", post(token))
        .route("/{p}/userinfo", get(userinfo))
        .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, mock).await.unwrap() });

    let mut toml =
        String::from("public_url = \"http://127.0.0.1:8080\"\nprovider_timeout = \"1s\"\n");
    // Outside the catalogue: generic OAuth 2.0 providers.
    let generic = [
        "malformed",
        "denied",
        "slow",
        "broken",
        "unavailable",
        "forever",
        "negative",
    ];
    for p in ["github", "discord", "spotify"].iter().chain(&generic) {
        let kind = if generic.contains(p) {
            "kind = \"oauth2\"\n"
        } else {
            ""
        };
        toml.push_str(&format!(
            "[providers.{p}]\n{kind}client_id = \"id-{p}\"\nclient_secret = \"secret-{p}\"\nlogin = true\n\
             authorize_url = \"{base}/{p}/authorize\"\ntoken_url = \"{base}/{p}/token\"\nuserinfo_url = \"{base}/{p}/userinfo\"\n"
        ));
    }
    let site = Site::new(Engine::Sqlite).await.unwrap();
    site.ok(&["keys", "init"]);
    let vault = site.vault().await;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let state = strongbox::AppState::build(
        strongbox::config::Config::from_toml(&toml).unwrap(),
        site.db().await,
        Arc::clone(&vault),
        clock,
    )
    .unwrap();
    let b = Browser {
        app: strongbox::app(state),
    };

    for (provider, subject, scopes) in [
        ("github", "1", vec!["read:user", "user:email"]),
        ("discord", "80351110224678912", vec!["identify", "email"]),
        (
            "spotify",
            "smedjan",
            vec!["user-read-private", "user-read-email"],
        ),
    ] {
        let cookie = b
            .sign_in_with(provider)
            .await
            .unwrap_or_else(|r| panic!("{provider}: {r:?}"));
        let me = b.send("GET", "/api/me", Some(&cookie), &[]).await;
        assert_eq!(me.body["identities"][0]["subject"], subject, "{provider}");
        let user = me.body["user"]["id"].as_str().unwrap();
        let sealed = vault.load(user, provider).await.unwrap().unwrap();
        assert_eq!(sealed.scopes(), scopes, "{provider}: granted scopes parsed");
        assert_eq!(
            sealed.expires_at().is_some(),
            provider != "github",
            "{provider}: expiry only when the provider gives one"
        );
    }
    let seen = seen.lock().unwrap().clone();
    for expected in [
        "github:token:post",
        "discord:token:basic",
        "spotify:token:basic",
        "github:userinfo:ua=true",
    ] {
        assert!(
            seen.iter().any(|s| s == expected),
            "{expected} not in {seen:?}"
        );
    }

    // An `expires_in` past any integer's end, or below zero, is clamped to 0..=1 year.
    for (provider, lifetime) in [("forever", 365 * 24 * 3600), ("negative", 0)] {
        let cookie = b.sign_in_with(provider).await.unwrap();
        let me = b.send("GET", "/api/me", Some(&cookie), &[]).await;
        let user = me.body["user"]["id"].as_str().unwrap();
        let sealed = vault.load(user, provider).await.unwrap().unwrap();
        let now = SystemClock.unix();
        let expires_at = sealed.expires_at().unwrap();
        assert!(
            (now - 5..=now).contains(&(expires_at - lifetime)),
            "{provider}: expires at {expires_at}, now {now}"
        );
    }

    // Token endpoint failures: a clear problem, nothing echoed, no session.
    let r = b.sign_in_with("malformed").await.unwrap_err();
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (StatusCode::BAD_GATEWAY, Some("provider_error"))
    );
    for (p, why) in [
        ("slow", "token_endpoint_timeout"),
        ("broken", "server_error"),
        ("unavailable", "token_endpoint_status_503"),
    ] {
        let started = std::time::Instant::now();
        let r = b.sign_in_with(p).await.unwrap_err();
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (StatusCode::BAD_GATEWAY, Some("provider_error")),
            "{p}"
        );
        assert!(
            r.body["detail"].as_str().unwrap().contains(why),
            "{p}: {}",
            r.body
        );
        assert!(r.cookie.is_none(), "{p}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(3),
            "{p}: timeout honoured"
        );
    }
    // A refused code is the request's fault, not the provider's: 400.
    let r = b.sign_in_with("denied").await.unwrap_err();
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["code"], "provider_error");
    let text = r.body.to_string();
    assert!(
        text.contains("invalid_grant")
            && !text.contains("recorded-code")
            && !text.contains("script"),
        "{text}"
    );
    assert!(r.cookie.is_none());
}
