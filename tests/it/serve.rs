//! `strongbox serve` from a fresh checkout, and the operations routes.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

use crate::support::{Engine, Site, fixed_root};

async fn get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf.split(' ').nth(1).unwrap().parse().unwrap();
    (status, buf)
}

#[tokio::test]
async fn serve_from_scratch_then_sigterm() {
    let site = Site::new(Engine::Sqlite).await.unwrap();
    let started = Instant::now();
    let mut child = site
        .cmd(&["serve"])
        .env_remove("STRONGBOX_DATABASE_URL") // the default: sqlite://data/strongbox.db
        .env("STRONGBOX_LISTEN", "127.0.0.1:0")
        .env("STRONGBOX_LOG__FORMAT", "json")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let addr = loop {
        let line = lines.next().expect("serve exited early").unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        seen.push(json.clone());
        if json["fields"]["message"] == "strongbox listening" {
            break json["fields"]["addr"].as_str().unwrap().to_owned();
        }
    };
    eprintln!(
        "ready after {:?} (includes process start)",
        started.elapsed()
    );
    assert!(seen.iter().any(|j| {
        j["level"] == "WARN"
            && j["fields"]["message"]
                .as_str()
                .unwrap()
                .contains("DEVELOPMENT ONLY")
    }));
    assert!(site.path().join("data/strongbox.db").exists());
    assert!(site.keys_dir().join("root.key").exists());

    let (status, body) = get(&addr, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(&addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"primary_kek\":1"));
    assert!(
        body.to_ascii_lowercase()
            .contains("x-content-type-options: nosniff")
    );
    let (status, body) = get(&addr, "/metrics").await;
    assert_eq!(status, 200);
    for metric in [
        "strongbox_kek_age_seconds{version=\"1\",state=\"primary\"}",
        "strongbox_kek_records{version=\"1\"} 0",
        "strongbox_kek_wraps_total{version=\"1\"} 0",
        "strongbox_kek_rotation_due 0",
    ] {
        assert!(body.contains(metric), "{metric} missing from {body}");
    }

    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn readyz_fails_with_the_wrong_root_key() {
    let site = Site::new(Engine::Sqlite).await.unwrap();
    site.ok(&["keys", "init"]);
    let clock: std::sync::Arc<dyn strongbox::clock::Clock> =
        std::sync::Arc::new(strongbox::clock::SystemClock);
    let db = site.db().await;
    let vault =
        strongbox::vault::Vault::new(db.clone(), fixed_root(3), Default::default(), clock.clone());
    let state = strongbox::AppState::build(
        strongbox::config::Config::from_toml("").unwrap(),
        db,
        std::sync::Arc::new(vault),
        clock,
    )
    .unwrap();
    let resp = strongbox::app(state)
        .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
        .await
        .unwrap();
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["code"], "not_ready");
    assert_eq!(problem["status"], 503);
}

#[tokio::test]
async fn limits_and_security_headers() {
    let site = Site::new(Engine::Sqlite).await.unwrap();
    site.ok(&["keys", "init"]);
    // A clock that stands still, so the bucket does not refill during the loop.
    let clock: std::sync::Arc<dyn strongbox::clock::Clock> =
        std::sync::Arc::new(strongbox::clock::ManualClock::at_unix(1_900_000_000));
    let config =
        strongbox::config::Config::from_toml("public_url = \"https://vault.example\"").unwrap();
    let state =
        strongbox::AppState::build(config, site.db().await, site.vault().await, clock).unwrap();
    let app = strongbox::app(state);
    let get = |uri: String| {
        let app = app.clone();
        async move {
            app.oneshot(Request::get(uri).body(Body::empty()).unwrap())
                .await
                .unwrap()
        }
    };
    let resp = get(format!("/login/google?return_to=/{}", "a".repeat(5000))).await;
    assert_eq!(resp.status(), StatusCode::URI_TOO_LONG);
    let h = resp.headers();
    assert!(
        h["strict-transport-security"]
            .to_str()
            .unwrap()
            .contains("max-age=")
    );
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    assert_eq!(h["cache-control"], "no-store");
    let mut limited = None;
    for i in 0..140 {
        let resp = get("/login/nope".into()).await;
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some((
                i,
                resp.headers()["retry-after"].to_str().unwrap().to_owned(),
            ));
            break;
        }
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
    let (after, retry) = limited.expect("rate limited");
    assert_eq!(after, 100, "the default burst of 100 is allowed");
    assert!(retry.parse::<u64>().unwrap() >= 1);
    // Operations routes are not rate-limited.
    assert_eq!(get("/healthz".into()).await.status(), StatusCode::OK);
}

/// Every operation `/openapi.json` names is routed: none gets axum's 405 or the fallback's
/// `not_found` (no handler answers that code to a request without credentials).
#[tokio::test]
async fn every_documented_operation_is_routed() {
    let site = Site::new(Engine::Sqlite).await.unwrap();
    site.ok(&["keys", "init"]);
    let clock: std::sync::Arc<dyn strongbox::clock::Clock> =
        std::sync::Arc::new(strongbox::clock::SystemClock);
    let config = strongbox::config::Config::from_toml("").unwrap();
    let state =
        strongbox::AppState::build(config, site.db().await, site.vault().await, clock).unwrap();
    let app = strongbox::app(state);
    let doc = serde_json::to_value(strongbox::http::openapi::document()).unwrap();
    let mut seen = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let uri: String = path
            .split('/')
            .map(|s| if s.starts_with('{') { "x" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        for method in item.as_object().unwrap().keys() {
            let req = Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(if uri.is_empty() { "/" } else { uri.as_str() })
                .body(Body::empty())
                .unwrap();
            let resp = app.clone().oneshot(req).await.unwrap();
            let status = resp.status();
            let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            let code = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["code"].as_str().map(str::to_owned));
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert!(
                !(status == StatusCode::NOT_FOUND && code.as_deref() == Some("not_found")),
                "{method} {path} is not routed"
            );
            seen += 1;
        }
    }
    assert!(seen >= 39, "{seen}");
}
