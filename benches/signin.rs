//! Strongbox's own server time for one sign-in (login redirect + callback, with every
//! database write), against an in-process OAuth 2.0 provider on loopback, excluding the
//! provider's time: before each callback the same token and userinfo calls are timed
//! directly against the provider, and that is subtracted. SQLite, release build.
//! Target: median ≤ 2 ms. Run: `cargo bench --bench signin` (`SIGNIN_RUNS`, default 1000).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing
)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Query;
use axum::http::{Request, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde_json::json;
use strongbox::audit::Actor;
use strongbox::clock::{Clock, SystemClock};
use strongbox::crypto::Key32;
use strongbox::store::Db;
use strongbox::vault::{RootKey, RootKeySource, Vault, VaultSettings};
use tower::ServiceExt;

async fn authorize(Query(q): Query<HashMap<String, String>>) -> Response {
    Redirect::to(&format!(
        "{}?code=bench-code&state={}",
        q["redirect_uri"], q["state"]
    ))
    .into_response()
}

async fn token() -> Response {
    axum::Json(json!({"access_token": "at-bench", "token_type": "Bearer", "expires_in": 3600, "refresh_token": "rt-bench", "scope": "read"}))
        .into_response()
}

async fn userinfo() -> Response {
    axum::Json(json!({"sub": "bench-user", "email": "bench@example.com", "email_verified": true}))
        .into_response()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs: usize = std::env::var("SIGNIN_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let mock = axum::Router::new()
        .route("/authorize", get(authorize))
        .route("/token", post(token))
        .route("/userinfo", get(userinfo));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, mock).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect(&format!("sqlite://{}/s.db", dir.path().display()))
        .await
        .unwrap();
    db.migrate().await.unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let root = RootKey::new(Key32::generate().unwrap(), RootKeySource::Env);
    let vault = Arc::new(Vault::new(
        db.clone(),
        root,
        VaultSettings::default(),
        Arc::clone(&clock),
    ));
    vault.init(Actor::Cli).await.unwrap();
    let config = strongbox::config::Config::from_toml(&format!(
        "[providers.acme]\nkind = \"oauth2\"\nclient_id = \"cid\"\nclient_secret = \"cs\"\nlogin = true\n\
         authorize_url = \"{base}/authorize\"\ntoken_url = \"{base}/token\"\nuserinfo_url = \"{base}/userinfo\"\n"
    ))
    .unwrap();
    let state = strongbox::AppState::build(config, db, vault, clock).unwrap();
    let app = strongbox::app(state);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    let mut samples = Vec::with_capacity(runs);
    let mut logins = Vec::with_capacity(runs);
    for i in 0..runs + 50 {
        // Each sign-in from its own address: the per-IP limit is not what is measured.
        let n = u32::try_from(i).unwrap();
        let peer = axum::extract::ConnectInfo(std::net::SocketAddr::from((
            std::net::Ipv4Addr::from(0x0a00_0000 | n),
            1,
        )));
        let t0 = Instant::now();
        let resp = app
            .clone()
            .oneshot(
                Request::get("/login/acme")
                    .extension(peer)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let login = t0.elapsed();
        let location = resp.headers()[header::LOCATION]
            .to_str()
            .unwrap()
            .to_owned();
        let cookie = resp.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let cb = http.get(&location).send().await.unwrap().headers()[header::LOCATION]
            .to_str()
            .unwrap()
            .to_owned();
        let path = cb.strip_prefix("http://127.0.0.1:8080").unwrap().to_owned();
        // The provider's share: the same two calls the callback makes.
        let t1 = Instant::now();
        http.post(format!("{base}/token"))
            .body("x")
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        http.get(format!("{base}/userinfo"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let provider = t1.elapsed();
        let t2 = Instant::now();
        let resp = app
            .clone()
            .oneshot(
                Request::get(path)
                    .header(header::COOKIE, cookie)
                    .extension(peer)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let callback = t2.elapsed();
        assert_eq!(resp.status(), 303, "sign-in failed");
        if i >= 50 {
            samples.push((login + callback).saturating_sub(provider));
            logins.push(login);
        }
    }
    samples.sort();
    logins.sort();
    println!(
        "sign-in server time on SQLite over {runs} runs: p50 {:?}, p99 {:?} (login + callback minus provider calls)",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99)
    );
    println!("  of which /login: p50 {:?}", percentile(&logins, 0.5));
}
