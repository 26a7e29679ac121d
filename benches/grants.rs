//! Latency of the authorization server and of `/mcp`, one client on one keep-alive
//! connection against the real server on loopback, every request durably audited:
//!
//! - the token endpoint: code → tokens, and refresh (rotation);
//! - one tool run against a local provider, as `POST /v1/tools/{tool}/run` with the agent
//!   secret and a delegation, the same with an access token, and as MCP `tools/call` over
//!   `/mcp` (target: MCP adds ≤ 0.3 ms at p50 over the `/v1` run with an access token);
//! - a raw release, with the agent secret and a delegation and with an access token
//!   (target: the access token is no slower).
//!
//! The three runs and the two releases are interleaved request by request, so the
//! machine's drift affects each alike. SQLite, and PostgreSQL when `DATABASE_URL` is set.
//! Run: `cargo bench --bench grants` (`GRANTS_ITERATIONS`, default 1000).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::{Connection, Executor};
use strongbox::agents::{Grant, Registration, token_text};
use strongbox::audit::{Actor, Event, Kind};
use strongbox::clock::{Clock, SystemClock};
use strongbox::crypto::Key32;
use strongbox::grants::AuthorizeRequest;
use strongbox::secret::AccessToken;
use strongbox::store::Db;
use strongbox::vault::{RootKey, RootKeySource, Scopes, TokenSet, Vault, VaultSettings};

const POLICY: &str = r#"
permit(principal == Agent::"bench", action == Action::"run_tool", resource == Tool::"acme.me");
permit(principal == Agent::"bench", action == Action::"fetch_credential", resource == Provider::"acme");
"#;
const REDIRECT: &str = "http://127.0.0.1:9/cb";
/// RFC 7636 appendix B.
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

fn report(what: &str, mut times: Vec<Duration>) -> f64 {
    times.sort_unstable();
    let at = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3;
    println!(
        "  {what:<44} p50 {:>6.3} ms  p99 {:>6.3} ms  (n={})",
        at(0.5),
        at(0.99),
        times.len()
    );
    at(0.5)
}

/// A provider API a tool calls: one small JSON answer.
async fn provider() -> String {
    let app = axum::Router::new().route(
        "/api/me",
        axum::routing::get(|| async { axum::Json(json!({"id": "u1", "name": "Bench"})) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

async fn bench(name: &str, url: &str, n: usize) {
    println!("{name}:");
    let db = Db::connect(url).await.unwrap();
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
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(policies.path().join("bench.cedar"), POLICY).unwrap();
    let api = provider().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    let config = strongbox::config::Config::from_toml(&format!(
        "public_url = \"{base}\"\npolicies_dir = \"{}\"\n\
         [limits]\nsignin_per_second = 0\nagent_user_per_second = 0\nagent_per_second = 0\n\
         [providers.acme]\nkind = \"oauth2\"\nclient_id = \"cid\"\nclient_secret = \"cs\"\n\
         authorize_url = \"http://127.0.0.1:9/a\"\ntoken_url = \"http://127.0.0.1:9/t\"\n\
         [tools.\"acme.me\"]\nprovider = \"acme\"\nmethod = \"GET\"\nurl = \"{api}/api/me\"\nscopes = [\"read\"]\n",
        policies.path().display()
    ))
    .unwrap();
    let state =
        strongbox::AppState::build(config, db.clone(), Arc::clone(&vault), Arc::clone(&clock))
            .unwrap();

    let user = "bench-user";
    let mut tx = db.begin().await.unwrap();
    strongbox::store::users::insert(&mut tx, user, clock.unix())
        .await
        .unwrap();
    let tokens = TokenSet {
        access_token: AccessToken::new("at-bench-not-a-real-token".into()),
        refresh_token: None,
        id_token: None,
        token_type: "Bearer".into(),
        expires_at: Some(clock.unix() + 86_400),
        scopes: vec!["read".into()],
    };
    let event = Event::new(Kind::CredentialStored, Actor::Cli, format!("user:{user}"));
    vault
        .store(&mut tx, event, user, "acme", &tokens, Scopes::Replace)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let registration = Registration {
        redirect_uris: vec![REDIRECT.into()],
        jwks: None,
    };
    let (agent, secret) = state
        .agents
        .add("bench", &registration, Actor::Cli)
        .await
        .unwrap();
    let secret = strongbox::agents::secret_text(&secret.unwrap()).to_string();
    let grant = Grant {
        agent: "bench".into(),
        tools: vec!["acme.me".into()],
        providers: vec!["acme".into()],
        ttl: 3600,
    };
    let mut tx = db.begin().await.unwrap();
    let (dlg, _) = state
        .agents
        .delegate(&mut tx, user, &agent, &grant)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let dlg = token_text(&dlg).to_string();

    let ask = AuthorizeRequest {
        response_type: Some("code".into()),
        client_id: Some("bench".into()),
        redirect_uri: Some(REDIRECT.into()),
        scope: Some("tool:acme.me credential:acme".into()),
        state: None,
        code_challenge: Some(CHALLENGE.into()),
        code_challenge_method: Some("S256".into()),
        resource: None,
    };
    let pending = state
        .grants
        .check(&ask)
        .await
        .expect("the authorization request is accepted");
    let server_state = state.clone();
    tokio::spawn(async move {
        axum::serve(
            listener,
            strongbox::app(server_state)
                .into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
        .unwrap();
    });
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let token_form = |code: &str| {
        vec![
            ("grant_type".to_owned(), "authorization_code".to_owned()),
            ("code".to_owned(), code.to_owned()),
            ("redirect_uri".to_owned(), REDIRECT.to_owned()),
            ("code_verifier".to_owned(), VERIFIER.to_owned()),
        ]
    };

    // Token endpoint: code → tokens (the approval that makes each code is not timed).
    let (mut exchange, mut refresh) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut last: Value = Value::Null;
    for _ in 0..n.min(500) {
        let code = state
            .grants
            .approve(&state.policies, &pending, user, "bench")
            .await
            .unwrap();
        let code = strongbox::grants::code_text(&code);
        let t = Instant::now();
        let r = http
            .post(format!("{base}/oauth2/token"))
            .basic_auth("bench", Some(&secret))
            .form(&token_form(&code))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        last = r.json().await.unwrap();
        exchange.push(t.elapsed());
    }
    let mut rt = last["refresh_token"].as_str().unwrap().to_owned();
    for _ in 0..n.min(500) {
        let t = Instant::now();
        let r = http
            .post(format!("{base}/oauth2/token"))
            .basic_auth("bench", Some(&secret))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", rt.as_str()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        last = r.json().await.unwrap();
        refresh.push(t.elapsed());
        rt = last["refresh_token"].as_str().unwrap().to_owned();
    }
    report("token: code -> tokens", exchange);
    report("token: refresh (rotated)", refresh);

    let access = last["access_token"].as_str().unwrap().to_owned();
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "acme.me", "arguments": {}}});
    let (mut v1_pair, mut v1_token, mut mcp, mut rel_pair, mut rel_token) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..n + 50 {
        let timed = |d: Duration, into: &mut Vec<Duration>| {
            if i >= 50 {
                into.push(d);
            }
        };
        let t = Instant::now();
        let r = http
            .post(format!("{base}/v1/tools/acme.me/run"))
            .bearer_auth(&secret)
            .header("strongbox-delegation", &dlg)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        timed(t.elapsed(), &mut v1_pair);
        let t = Instant::now();
        let r = http
            .post(format!("{base}/v1/tools/acme.me/run"))
            .bearer_auth(&access)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        timed(t.elapsed(), &mut v1_token);
        let t = Instant::now();
        let r = http
            .post(format!("{base}/mcp"))
            .bearer_auth(&access)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .json(&call)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body = r.text().await.unwrap();
        assert!(
            body.contains("Bench") && !body.contains("\"error\""),
            "{body}"
        );
        timed(t.elapsed(), &mut mcp);
        let t = Instant::now();
        let r = http
            .post(format!("{base}/v1/credentials/acme"))
            .bearer_auth(&secret)
            .header("strongbox-delegation", &dlg)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        timed(t.elapsed(), &mut rel_pair);
        let t = Instant::now();
        let r = http
            .post(format!("{base}/v1/credentials/acme"))
            .bearer_auth(&access)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        timed(t.elapsed(), &mut rel_token);
    }
    report("tool run, agent secret + delegation", v1_pair);
    let v1 = report("tool run, access token", v1_token);
    let m = report("tool run, MCP tools/call", mcp);
    println!("  MCP adds {:.3} ms at p50 (target <= 0.3 ms)", m - v1);
    let pair = report("raw release, agent secret + delegation", rel_pair);
    let token = report("raw release, access token", rel_token);
    println!("  access token vs pair at p50: {:+.3} ms", token - pair);
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("GRANTS_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            sqlx::any::install_default_drivers();
            let dir = tempfile::tempdir().unwrap();
            bench(
                "sqlite",
                &format!("sqlite://{}/g.db", dir.path().display()),
                n,
            )
            .await;
            if let Ok(admin) = std::env::var("DATABASE_URL") {
                let name = format!("sbx_bench_grants_{}", std::process::id());
                let mut conn = sqlx::AnyConnection::connect(&admin).await.unwrap();
                conn.execute(format!("DROP DATABASE IF EXISTS {name}").as_str())
                    .await
                    .unwrap();
                conn.execute(format!("CREATE DATABASE {name}").as_str())
                    .await
                    .unwrap();
                let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
                bench("postgres", &format!("{base}/{name}"), n).await;
                conn.execute(format!("DROP DATABASE {name} WITH (FORCE)").as_str())
                    .await
                    .unwrap();
            }
        });
}
