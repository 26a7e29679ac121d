//! Agents end to end against a provider the test starts: delegations, Cedar policies, tool
//! runs (and argument attacks), raw release, single-flight refresh within one instance and
//! across two, refresh-token rotation, `invalid_grant`, and the audit trail.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use strongbox::agents::Grant;
use strongbox::clock::{Clock, ManualClock};
use tower::ServiceExt;

use crate::support::Site;

const START: i64 = 1_900_000_000;

#[derive(Default)]
struct Idp {
    /// code -> scope
    codes: HashMap<String, String>,
    /// access token -> subject
    access: HashMap<String, String>,
    /// refresh tokens still valid
    refresh: Vec<String>,
    issued: Vec<String>,
    /// Paths (with query) the API saw.
    api_paths: Vec<String>,
    /// Refresh responses omit the refresh token (the "keep the old one" quirk).
    no_refresh_in_refresh: bool,
    /// The `scope` sent with each refresh grant.
    refresh_scopes: Vec<Option<String>>,
}

type Shared = Arc<(Mutex<Idp>, AtomicUsize)>;

fn fresh(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

async fn authorize(Query(q): Query<HashMap<String, String>>, State(s): State<Shared>) -> Response {
    let code = fresh("code");
    s.0.lock()
        .unwrap()
        .codes
        .insert(code.clone(), q["scope"].clone());
    Redirect::to(&format!(
        "{}?code={code}&state={}",
        q["redirect_uri"], q["state"]
    ))
    .into_response()
}

async fn token(State(s): State<Shared>, Form(f): Form<HashMap<String, String>>) -> Response {
    let refresh_grant = f["grant_type"] == "refresh_token";
    if refresh_grant {
        s.1.fetch_add(1, Ordering::SeqCst);
        // Slow enough that concurrent callers overlap.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut st = s.0.lock().unwrap();
    let scope = if refresh_grant {
        let sent_scope = f.get("scope").cloned();
        st.refresh_scopes.push(sent_scope);
        let presented = &f["refresh_token"];
        let Some(i) = st.refresh.iter().position(|r| r == presented) else {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": "invalid_grant"})),
            )
                .into_response();
        };
        // Rotation: the presented refresh token is spent.
        st.refresh.remove(i);
        None
    } else {
        match st.codes.remove(&f["code"]) {
            Some(scope) => Some(scope),
            None => {
                return (
                    StatusCode::BAD_REQUEST,
                    axum::Json(json!({"error": "invalid_grant"})),
                )
                    .into_response();
            }
        }
    };
    let access = fresh("at");
    let refresh = fresh("rt");
    st.access.insert(access.clone(), "alice-sub".into());
    st.issued.push(access.clone());
    let mut body = json!({"access_token": access, "token_type": "Bearer", "expires_in": 3600});
    if refresh_grant && st.no_refresh_in_refresh {
        // keep using the presented refresh token
        st.refresh.push(f["refresh_token"].clone());
    } else {
        st.refresh.push(refresh.clone());
        st.issued.push(refresh.clone());
        body["refresh_token"] = refresh.into();
    }
    if let Some(scope) = scope {
        body["scope"] = scope.into();
    }
    axum::Json(body).into_response()
}

fn bearer_ok(s: &Shared, headers: &HeaderMap) -> bool {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    bearer.is_some_and(|t| s.0.lock().unwrap().access.contains_key(t))
}

async fn userinfo(State(s): State<Shared>, headers: HeaderMap) -> Response {
    if !bearer_ok(&s, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    axum::Json(json!({"sub": "alice-sub", "email": "alice@example.com", "email_verified": true}))
        .into_response()
}

async fn api(State(s): State<Shared>, headers: HeaderMap, req: axum::extract::Request) -> Response {
    let path = req
        .uri()
        .path_and_query()
        .map(ToString::to_string)
        .unwrap_or_default();
    s.0.lock().unwrap().api_paths.push(path.clone());
    if !bearer_ok(&s, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if path.contains("boom") {
        return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
    }
    axum::Json(json!({"path": path, "items": [1, 2, 3]})).into_response()
}

async fn start_idp() -> (String, Shared) {
    let shared: Shared = Arc::new((Mutex::new(Idp::default()), AtomicUsize::new(0)));
    let app = axum::Router::new()
        .route("/authorize", get(authorize))
        .route("/token", post(token))
        .route("/userinfo", get(userinfo))
        .route("/api/{*rest}", get(api))
        .route("/elsewhere", get(|| async { "elsewhere" }))
        .route(
            "/redirect-out",
            get(|| async { Redirect::to("http://127.0.0.2:9/steal") }),
        )
        .with_state(Arc::clone(&shared));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, shared)
}

const POLICY: &str = r#"
// bot may run any acme tool and see raw acme tokens limited to openid and email.
permit(principal == Agent::"bot", action == Action::"run_tool", resource)
  when { resource.provider == Provider::"acme" };
permit(principal == Agent::"bot", action == Action::"fetch_credential",
       resource == Provider::"acme")
  when { ["openid", "email"].containsAll(context.scopes) };
permit(principal == Agent::"bot", action == Action::"fetch_credential",
       resource == Provider::"microsoft");
"#;

fn config(site: &Site, base: &str) -> strongbox::config::Config {
    let policies = site.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("agents.cedar"), POLICY).unwrap();
    strongbox::config::Config::from_toml(&format!(
        "public_url = \"http://127.0.0.1:8080\"\npolicies_dir = \"{}\"\n[limits]\nagent_user_per_second = 1000\n\
         [providers.acme]\nkind = \"oauth2\"\nclient_id = \"cid\"\nclient_secret = \"csecret\"\nlogin = true\n\
         authorize_url = \"{base}/authorize\"\ntoken_url = \"{base}/token\"\nuserinfo_url = \"{base}/userinfo\"\n\
         scopes = [\"openid\", \"email\"]\n\
         [providers.microsoft]\nclient_id = \"cid\"\nclient_secret = \"csecret\"\ntoken_url = \"{base}/token\"\n\
         [tools.\"acme.items\"]\nprovider = \"acme\"\nmethod = \"GET\"\nurl = \"{base}/api/items/{{item}}/detail\"\n\
         query = [\"limit\"]\nscopes = [\"email\"]\n\
         [tools.\"acme.other\"]\nprovider = \"acme\"\nmethod = \"GET\"\nurl = \"{base}/api/other\"\nscopes = [\"email\"]\n\
         [tools.\"acme.out\"]\nprovider = \"acme\"\nmethod = \"GET\"\nurl = \"{base}/redirect-out\"\nscopes = [\"email\"]\n\
         [tools.\"acme.admin\"]\nprovider = \"acme\"\nmethod = \"GET\"\nurl = \"{base}/api/admin\"\nscopes = [\"admin\"]\n",
        policies.display()
    ))
    .unwrap()
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
    json: Value,
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .extension(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            [10, 9, 9, 9],
            1,
        ))));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 4 << 20)
        .await
        .unwrap();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        text,
        json,
    }
}

/// Signs alice in through the real flow; returns (cookie, user id, csrf token).
async fn sign_in(app: &axum::Router) -> (String, String, String) {
    let b = crate::oauth::Browser { app: app.clone() };
    let cookie = b.sign_in_with("acme").await.unwrap();
    let me = b.send("GET", "/api/me", Some(&cookie), &[]).await;
    (
        cookie,
        me.body["user"]["id"].as_str().unwrap().to_owned(),
        me.body["csrf_token"].as_str().unwrap().to_owned(),
    )
}

async fn delegate(
    state: &strongbox::AppState,
    user: &str,
    agent: &str,
    tools: &[&str],
    ttl: i64,
) -> String {
    let agent = state.agents.by_name(agent).await.unwrap().unwrap();
    let grant = Grant {
        agent: agent.name.clone(),
        tools: tools.iter().map(|s| (*s).to_owned()).collect(),
        providers: vec!["acme".into()],
        ttl,
    };
    let mut tx = state.db.begin().await.unwrap();
    let (token, _) = state
        .agents
        .delegate(&mut tx, user, &agent, &grant)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    strongbox::agents::token_text(&token).to_string()
}

/// `POST /v1/credentials/acme` as the agent authenticated by `auth`, on delegation `dlg`.
async fn release_as(app: &axum::Router, auth: &str, dlg: &str) -> Reply {
    call(
        app,
        "POST",
        "/v1/credentials/acme",
        &[("authorization", auth), ("strongbox-delegation", dlg)],
        json!({}),
    )
    .await
}

/// How many releases the audit trail holds.
async fn released(site: &Site) -> i64 {
    crate::support::count(
        &site.url,
        "SELECT COUNT(*) FROM audit_event WHERE kind = 'credential.released'",
    )
    .await
}

async fn build(site: &Site, base: &str, clock: &ManualClock) -> strongbox::AppState {
    let clock: Arc<dyn Clock> = Arc::new(clock.clone());
    strongbox::AppState::build(
        config(site, base),
        site.db().await,
        site.vault().await,
        clock,
    )
    .unwrap()
}

async fn agents_end_to_end(site: Site) {
    let (base, idp) = start_idp().await;
    site.ok(&["keys", "init"]);
    let clock = ManualClock::at_unix(START);
    let state = build(&site, &base, &clock).await;
    let app = strongbox::app(state.clone());

    // Agents come from the command line; the secret is the last line, alone.
    let out = site.ok(&["agents", "add", "bot"]);
    let bot_secret = out.lines().last().unwrap().trim().to_owned();
    assert!(bot_secret.starts_with("sbx_agent_"), "{out}");
    let out = site.ok(&["agents", "add", "nopolicy"]);
    let nopolicy_secret = out.lines().last().unwrap().trim().to_owned();
    assert!(site.run(&["agents", "add", "bot"]).status.code() != Some(0));
    let listed = site.ok(&["agents", "list"]);
    assert!(listed.contains("bot") && listed.contains("nopolicy") && !listed.contains(&bot_secret));

    let (cookie, user, csrf) = sign_in(&app).await;
    let session = format!("strongbox={cookie}");
    let origin = ("origin", "http://127.0.0.1:8080");

    // Delegations from the browser: CSRF, validation, and a token.
    let body = json!({"agent": "bot", "tools": ["acme.items", "acme.out", "acme.admin"], "providers": ["acme"], "ttl": 900});
    let r = call(
        &app,
        "POST",
        "/api/delegations",
        &[("cookie", &session), origin],
        body.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "no CSRF token");
    for (bad, name) in [
        (json!({"agent": "ghost", "tools": ["acme.items"]}), "agent"),
        (json!({"agent": "bot", "tools": ["nope"]}), "nope"),
        (
            json!({"agent": "bot", "tools": ["acme.items"], "ttl": 7200}),
            "ttl",
        ),
        (json!({"agent": "bot", "providers": ["unknown"]}), "unknown"),
    ] {
        let r = call(
            &app,
            "POST",
            "/api/delegations",
            &[("cookie", &session), origin, ("x-csrf-token", &csrf)],
            bad,
        )
        .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
        assert!(
            r.json["detail"].as_str().unwrap().contains(name),
            "{}",
            r.text
        );
    }
    let r = call(
        &app,
        "POST",
        "/api/delegations",
        &[("cookie", &session), origin, ("x-csrf-token", &csrf)],
        body,
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let dlg = r.json["token"].as_str().unwrap().to_owned();
    assert!(dlg.starts_with("sbx_dlg_"));
    assert!(r.json["expires_at"].as_str().unwrap().starts_with("2030-"));

    let auth = format!("Bearer {bot_secret}");
    let agent_headers = |d: &str| {
        vec![
            ("authorization".to_owned(), auth.clone()),
            ("strongbox-delegation".to_owned(), d.to_owned()),
        ]
    };
    let h = agent_headers(&dlg);
    let hs: Vec<(&str, &str)> = h.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();

    // A tool run: the provider's JSON, no token anywhere in our answer.
    let r = call(
        &app,
        "POST",
        "/v1/tools/acme.items/run",
        &hs,
        json!({"args": {"item": "42", "limit": 5}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let lower = format!("bearer {bot_secret}");
    let r2 = call(
        &app,
        "POST",
        "/v1/tools/acme.items/run",
        &[
            ("authorization", lower.as_str()),
            ("strongbox-delegation", dlg.as_str()),
        ],
        json!({"args": {"item": "42"}}),
    )
    .await;
    assert_eq!(
        r2.status,
        StatusCode::OK,
        "the scheme is case-insensitive: {}",
        r2.text
    );
    assert_eq!(r.json["status"], 200);
    assert_eq!(r.json["body"]["path"], "/api/items/42/detail?limit=5");
    assert!(
        r.json["headers"]["content-type"]
            .as_str()
            .unwrap()
            .contains("json")
    );
    for t in idp.0.lock().unwrap().issued.clone() {
        assert!(!r.text.contains(&t), "a token in a tool response");
    }

    // Argument attacks stay on the tool's host and path.
    for evil in [
        "../admin",
        "..%2Fadmin",
        "%2e%2e",
        "//evil.example",
        "@evil.example",
        "a/b",
        "%2F",
        "x?limit=1#f",
        "..\\admin",
    ] {
        let before = idp.0.lock().unwrap().api_paths.len();
        let r = call(
            &app,
            "POST",
            "/v1/tools/acme.items/run",
            &hs,
            json!({"args": {"item": evil}}),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{evil}: {}", r.text);
        let seen = idp.0.lock().unwrap().api_paths[before..].to_vec();
        assert_eq!(seen.len(), 1, "{evil}");
        assert!(
            seen[0].starts_with("/api/items/") && seen[0].ends_with("/detail"),
            "{evil}: {seen:?}"
        );
        assert_eq!(seen[0].matches('/').count(), 4, "{evil}: {seen:?}");
    }
    for (args, name) in [
        (json!({"item": ".."}), "item"),
        (json!({}), "item"),
        (json!({"item": "1", "url": "http://evil"}), "url"),
        (json!({"item": {"nested": 1}}), "item"),
    ] {
        let r = call(
            &app,
            "POST",
            "/v1/tools/acme.items/run",
            &hs,
            json!({"args": args}),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
        assert_eq!(r.json["code"], "invalid_argument");
        assert!(
            r.json["detail"].as_str().unwrap().contains(name),
            "{}",
            r.text
        );
    }
    // A malformed body is a 400 that does not echo what was sent.
    let r = call(
        &app,
        "POST",
        "/v1/tools/acme.items/run",
        &hs,
        json!({"args": "echo-me-not-0xbeef"}),
    )
    .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request")),
        "{}",
        r.text
    );
    assert!(!r.text.contains("echo-me-not"), "{}", r.text);

    // A redirect off the tool's host is not followed.
    let r = call(&app, "POST", "/v1/tools/acme.out/run", &hs, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], 303);

    // Refusals.
    let r = call(&app, "POST", "/v1/tools/nope/run", &hs, json!({})).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_tool"))
    );
    let r = call(&app, "POST", "/v1/tools/acme.other/run", &hs, json!({})).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("tool_not_delegated"))
    );
    let r = call(&app, "POST", "/v1/tools/acme.admin/run", &hs, json!({})).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::CONFLICT, Some("insufficient_scope")),
        "{}",
        r.text
    );
    assert!(
        r.json["url"]
            .as_str()
            .unwrap()
            .contains("/connect/acme?scopes=")
    );
    let r = call(
        &app,
        "POST",
        "/v1/tools/acme.items/run",
        &[
            (
                "authorization",
                "Bearer sbx_agent_00000000000000000000000000000000_x",
            ),
            ("strongbox-delegation", &dlg),
        ],
        json!({}),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.headers.contains_key(header::WWW_AUTHENTICATE));
    let r = call(
        &app,
        "POST",
        "/v1/tools/acme.items/run",
        &[("authorization", &auth)],
        json!({}),
    )
    .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("delegation_invalid"))
    );
    let r = call(
        &app,
        "POST",
        "/v1/tools/acme.items/run",
        &[
            ("authorization", &auth),
            ("strongbox-delegation", "sbx_dlg_forged"),
        ],
        json!({}),
    )
    .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("delegation_invalid"))
    );
    let np_auth = format!("Bearer {nopolicy_secret}");
    let r = call(
        &app,
        "POST",
        "/v1/tools/acme.items/run",
        &[("authorization", &np_auth), ("strongbox-delegation", &dlg)],
        json!({"args": {"item": "1"}}),
    )
    .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("delegation_invalid")),
        "another agent's delegation"
    );

    // Policy: the agent without a permit is denied, and the denial is audited.
    let np_dlg = delegate(&state, &user, "nopolicy", &["acme.items"], 900).await;
    let r = call(
        &app,
        "POST",
        "/v1/tools/acme.items/run",
        &[
            ("authorization", &np_auth),
            ("strongbox-delegation", &np_dlg),
        ],
        json!({"args": {"item": "1"}}),
    )
    .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("policy_denied"))
    );
    let r = call(
        &app,
        "POST",
        "/v1/credentials/acme",
        &[
            ("authorization", &np_auth),
            ("strongbox-delegation", &np_dlg),
        ],
        json!({}),
    )
    .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("policy_denied"))
    );

    // Raw release: allowed within policy, refused beyond it.
    let r = call(
        &app,
        "POST",
        "/v1/credentials/acme",
        &hs,
        json!({"scopes": ["email"]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let first = r.json["access_token"].as_str().unwrap().to_owned();
    assert!(idp.0.lock().unwrap().issued.contains(&first));
    assert_eq!(r.json["scopes"], json!(["email"]));
    assert_eq!(r.headers[header::CACHE_CONTROL], "no-store");
    // The use is the connection's last use.
    let b = crate::oauth::Browser { app: app.clone() };
    let listed = b.send("GET", "/api/connections", Some(&cookie), &[]).await;
    assert_eq!(
        listed.body["connections"][0]["last_used_at"],
        strongbox::clock::rfc3339(clock.unix()),
        "{}",
        listed.body
    );
    let r = call(
        &app,
        "POST",
        "/v1/credentials/acme",
        &hs,
        json!({"scopes": ["admin"]}),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::CONFLICT,
        "scope the connection lacks: {}",
        r.text
    );
    let r = call(&app, "POST", "/v1/credentials/other", &hs, json!({})).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("provider_not_delegated"))
    );

    // If the release cannot be audited, nothing is released.
    let (block, unblock) = match site.engine {
        crate::support::Engine::Sqlite => (
            "CREATE TRIGGER block_audit BEFORE INSERT ON audit_event BEGIN SELECT RAISE(ABORT, 'blocked'); END".to_owned(),
            "DROP TRIGGER block_audit".to_owned(),
        ),
        crate::support::Engine::Postgres => (
            "CREATE FUNCTION block_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'blocked'; END $$; \
             CREATE TRIGGER block_audit BEFORE INSERT ON audit_event FOR EACH ROW EXECUTE FUNCTION block_audit()".to_owned(),
            "DROP TRIGGER block_audit ON audit_event; DROP FUNCTION block_audit()".to_owned(),
        ),
    };
    crate::support::sql(&site.url, &block).await;
    let r = call(
        &app,
        "POST",
        "/v1/credentials/acme",
        &hs,
        json!({"scopes": ["email"]}),
    )
    .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, Some("internal")),
        "{}",
        r.text
    );
    for t in idp.0.lock().unwrap().issued.clone() {
        assert!(
            !r.text.contains(&t),
            "a token released without its audit event"
        );
    }
    crate::support::sql(&site.url, &unblock).await;

    // A release may start from the rows an earlier one read, but is recorded only if they
    // still hold then: a change committed in between (here, behind the service's back) is
    // seen at once, and nothing is released on the old rows.
    let release = || call(&app, "POST", "/v1/credentials/acme", &hs, json!({}));
    assert_eq!(release().await.status, StatusCode::OK);
    let before = released(&site).await;
    let reuses = state.agents.reuses();
    crate::support::sql(
        &site.url,
        "UPDATE connection SET status = 'reauth_required'",
    )
    .await;
    let r = release().await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::CONFLICT, Some("reauth_required")),
        "{}",
        r.text
    );
    crate::support::sql(&site.url, "UPDATE connection SET status = 'active'").await;
    assert_eq!(release().await.status, StatusCode::OK);
    crate::support::sql(
        &site.url,
        "CREATE TABLE kept_delegation AS SELECT * FROM delegation",
    )
    .await;
    crate::support::sql(&site.url, "DELETE FROM delegation").await;
    // The last use is old enough to be written again: the release takes the journal's
    // transaction path (the other one on PostgreSQL), which checks the rows too.
    clock.advance(strongbox::executor::LAST_USE_STEP + 1);
    let r = release().await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("delegation_invalid")),
        "{}",
        r.text
    );
    crate::support::sql(
        &site.url,
        "INSERT INTO delegation SELECT * FROM kept_delegation",
    )
    .await;
    crate::support::sql(&site.url, "DROP TABLE kept_delegation").await;
    assert_eq!(release().await.status, StatusCode::OK);
    assert_eq!(release().await.status, StatusCode::OK);
    // Three releases were recorded, none on the changed rows; releases did start from
    // kept rows (the two after a change, found stale, and the last one).
    assert_eq!(released(&site).await, before + 3);
    assert_eq!(state.agents.reuses(), reuses + 3, "kept rows were not used");

    // Releases read together, some on delegations revoked since their rows were kept:
    // those are taken out of their batch and refused on a fresh read, the rest are
    // written (and the chain still verifies, below).
    let mut dlgs = Vec::new();
    for _ in 0..4 {
        let dlg = delegate(&state, &user, "bot", &[], 900).await;
        let r = release_as(&app, &auth, &dlg).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        dlgs.push(dlg);
    }
    let before = released(&site).await;
    for dlg in &dlgs[..2] {
        let digest = ring::digest::digest(&ring::digest::SHA256, dlg.as_bytes());
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let literal = match site.engine {
            crate::support::Engine::Sqlite => format!("X'{hex}'"),
            crate::support::Engine::Postgres => format!("'\\x{hex}'::bytea"),
        };
        crate::support::sql(
            &site.url,
            &format!("DELETE FROM delegation WHERE token_hash = {literal}"),
        )
        .await;
    }
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let app = app.clone();
            let (auth, dlg) = (auth.clone(), dlgs[i % 4].clone());
            tokio::spawn(async move {
                let r = release_as(&app, &auth, &dlg).await;
                (i % 4, r.status, r.json["code"].as_str().map(str::to_owned))
            })
        })
        .collect();
    for t in tasks {
        match t.await.unwrap() {
            (0 | 1, status, code) => assert_eq!(
                (status, code.as_deref()),
                (StatusCode::UNAUTHORIZED, Some("delegation_invalid"))
            ),
            (_, status, _) => assert_eq!(status, StatusCode::OK),
        }
    }
    assert_eq!(released(&site).await, before + 6);

    // Expiry: 20 concurrent releases cause exactly one refresh, and all get its token.
    for cycle in 1..=2 {
        clock.advance(2 * 3600);
        let dlg = delegate(&state, &user, "bot", &["acme.items"], 900).await;
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let app = app.clone();
                let (auth, dlg) = (auth.clone(), dlg.clone());
                tokio::spawn(async move { release_as(&app, &auth, &dlg).await })
            })
            .collect();
        let mut tokens = std::collections::HashSet::new();
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
            tokens.insert(r.json["access_token"].as_str().unwrap().to_owned());
        }
        assert_eq!(
            tokens.len(),
            1,
            "cycle {cycle}: all callers got the same token"
        );
        assert!(!tokens.contains(&first));
        assert_eq!(
            idp.1.load(Ordering::SeqCst),
            cycle,
            "cycle {cycle}: exactly one refresh"
        );
    }

    // A refresh response without a refresh token keeps the old one.
    idp.0.lock().unwrap().no_refresh_in_refresh = true;
    clock.advance(2 * 3600);
    let dlg = delegate(&state, &user, "bot", &["acme.items"], 900).await;
    let h = agent_headers(&dlg);
    let hs: Vec<(&str, &str)> = h.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let r = call(&app, "POST", "/v1/credentials/acme", &hs, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    clock.advance(2 * 3600);
    let dlg = delegate(&state, &user, "bot", &["acme.items"], 900).await;
    let h = agent_headers(&dlg);
    let hs: Vec<(&str, &str)> = h.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let r = call(&app, "POST", "/v1/credentials/acme", &hs, json!({})).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the kept refresh token still works: {}",
        r.text
    );
    assert_eq!(idp.1.load(Ordering::SeqCst), 4);

    // Expired delegation.
    clock.advance(1000);
    let r = call(&app, "POST", "/v1/credentials/acme", &hs, json!({})).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("delegation_expired"))
    );

    // invalid_grant: the refresh token was revoked at the provider.
    idp.0.lock().unwrap().refresh.clear();
    clock.advance(2 * 3600);
    let dlg = delegate(&state, &user, "bot", &["acme.items"], 900).await;
    let h = agent_headers(&dlg);
    let hs: Vec<(&str, &str)> = h.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    for _ in 0..2 {
        let r = call(&app, "POST", "/v1/credentials/acme", &hs, json!({})).await;
        assert_eq!(
            (r.status, r.json["code"].as_str()),
            (StatusCode::CONFLICT, Some("reauth_required")),
            "{}",
            r.text
        );
        assert!(
            r.json["url"]
                .as_str()
                .unwrap()
                .starts_with("http://127.0.0.1:8080/connect/acme?scopes=")
        );
        let r = call(
            &app,
            "POST",
            "/v1/tools/acme.items/run",
            &hs,
            json!({"args": {"item": "1"}}),
        )
        .await;
        assert_eq!(r.json["code"], "reauth_required");
    }
    assert_eq!(
        idp.1.load(Ordering::SeqCst),
        5,
        "a connection needing the user is not retried"
    );
    let conns = state.vault.list(&user).await.unwrap();
    assert_eq!(conns[0].status(), "reauth_required");

    // The trail: releases, tool runs, denials, refreshes; intact; no token in it.
    let audit = site.ok(&["audit", "verify"]);
    assert!(audit.contains("intact"), "{audit}");
    let at_rest = crate::support::at_rest(&site);
    for needle in [
        "credential.released",
        "tool.run",
        "policy.denied",
        "credential.refreshed",
        "credential.refresh_failed",
        "delegation.created",
        "agent.added",
    ] {
        assert!(
            at_rest
                .windows(needle.len())
                .any(|w| w == needle.as_bytes()),
            "no {needle} event"
        );
    }
    for t in idp
        .0
        .lock()
        .unwrap()
        .issued
        .iter()
        .chain([&bot_secret, &dlg])
    {
        assert!(
            !at_rest.windows(t.len()).any(|w| w == t.as_bytes()),
            "a secret stored in the clear"
        );
    }
}

/// Two instances (two app states, as two processes would have) on one database: 20
/// concurrent requests after expiry, split between them, cause exactly one refresh.
async fn two_instances(site: Site) {
    let (base, idp) = start_idp().await;
    site.ok(&["keys", "init"]);
    let clock = ManualClock::at_unix(START);
    let one = build(&site, &base, &clock).await;
    let two = build(&site, &base, &clock).await;
    let (app1, app2) = (strongbox::app(one.clone()), strongbox::app(two));
    let out = site.ok(&["agents", "add", "bot"]);
    let auth = format!("Bearer {}", out.lines().last().unwrap().trim());
    let (_, user, _) = sign_in(&app1).await;
    clock.advance(2 * 3600);
    let dlg = delegate(&one, &user, "bot", &["acme.items"], 900).await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let app = if i % 2 == 0 {
                app1.clone()
            } else {
                app2.clone()
            };
            let (auth, dlg) = (auth.clone(), dlg.clone());
            tokio::spawn(async move {
                call(
                    &app,
                    "POST",
                    "/v1/credentials/acme",
                    &[("authorization", &auth), ("strongbox-delegation", &dlg)],
                    json!({}),
                )
                .await
            })
        })
        .collect();
    let mut tokens = std::collections::HashSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        tokens.insert(r.json["access_token"].as_str().unwrap().to_owned());
    }
    assert_eq!(tokens.len(), 1);
    assert_eq!(
        idp.1.load(Ordering::SeqCst),
        1,
        "exactly one refresh across instances"
    );
}

mod end_to_end {
    use crate::support::{Engine, Site};

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite() {
        super::agents_end_to_end(Site::new(Engine::Sqlite).await.unwrap()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres() {
        if let Some(site) = Site::new(Engine::Postgres).await {
            super::agents_end_to_end(site).await;
        }
    }
}

mod refresh_across_instances {
    use crate::support::{Engine, Site};

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite() {
        super::two_instances(Site::new(Engine::Sqlite).await.unwrap()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres() {
        if let Some(site) = Site::new(Engine::Postgres).await {
            super::two_instances(site).await;
        }
    }
}

/// `/v1/*` is rate-limited per (agent, user): a burst of twice `agent_user_per_second`,
/// then 429 with `Retry-After`; another agent is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_agent_rate_limit() {
    let site = Site::new(crate::support::Engine::Sqlite).await.unwrap();
    let (base, _idp) = start_idp().await;
    site.ok(&["keys", "init"]);
    let clock = ManualClock::at_unix(START);
    let mut config = config(&site, &base);
    config.limits.agent_user_per_second = 2;
    let clock_dyn: Arc<dyn Clock> = Arc::new(clock.clone());
    let state =
        strongbox::AppState::build(config, site.db().await, site.vault().await, clock_dyn).unwrap();
    let app = strongbox::app(state.clone());
    let secret = |name: &str| {
        let out = site.ok(&["agents", "add", name]);
        format!("Bearer {}", out.lines().last().unwrap().trim())
    };
    let (bot, other) = (secret("bot"), secret("other"));
    let (_, user, _) = sign_in(&app).await;
    let dlg = delegate(&state, &user, "bot", &["acme.items"], 900).await;
    let headers = [
        ("authorization", bot.as_str()),
        ("strongbox-delegation", dlg.as_str()),
    ];
    for i in 0..4 {
        let r = call(&app, "POST", "/v1/credentials/acme", &headers, json!({})).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.text);
    }
    let r = call(&app, "POST", "/v1/credentials/acme", &headers, json!({})).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited"))
    );
    assert!(r.headers.contains_key(header::RETRY_AFTER));
    // The other agent has its own bucket (it is refused for its delegation, not the rate).
    let r = call(
        &app,
        "POST",
        "/v1/credentials/acme",
        &[
            ("authorization", other.as_str()),
            ("strongbox-delegation", dlg.as_str()),
        ],
        json!({}),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

/// Microsoft needs `scope` again on a refresh grant (the catalogue's quirk); a generic
/// OAuth 2.0 provider gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microsoft_refresh_sends_scope() {
    use strongbox::audit::{Actor, Event, Kind};
    use strongbox::secret::{AccessToken, RefreshToken};
    use strongbox::vault::{Scopes, TokenSet};
    let site = Site::new(crate::support::Engine::Sqlite).await.unwrap();
    let (base, idp) = start_idp().await;
    site.ok(&["keys", "init"]);
    let clock = ManualClock::at_unix(START);
    let state = build(&site, &base, &clock).await;
    let app = strongbox::app(state.clone());
    let out = site.ok(&["agents", "add", "bot"]);
    let auth = format!("Bearer {}", out.lines().last().unwrap().trim());
    let (_, user, _) = sign_in(&app).await;
    // A Microsoft connection whose access token has expired.
    idp.0.lock().unwrap().refresh.push("rt-ms".into());
    let scopes = vec![
        "openid".to_owned(),
        "offline_access".to_owned(),
        "Mail.Read".to_owned(),
    ];
    let tokens = TokenSet {
        access_token: AccessToken::new("at-ms-old".into()),
        refresh_token: Some(RefreshToken::new("rt-ms".into())),
        id_token: None,
        token_type: "Bearer".into(),
        expires_at: Some(START - 10),
        scopes,
    };
    let mut tx = state.db.begin().await.unwrap();
    let event = Event::new(Kind::CredentialStored, Actor::Cli, format!("user:{user}"));
    state
        .vault
        .store(&mut tx, event, &user, "microsoft", &tokens, Scopes::Replace)
        .await
        .unwrap();
    let agent = state.agents.by_name("bot").await.unwrap().unwrap();
    let grant = Grant {
        agent: "bot".into(),
        tools: vec![],
        providers: vec!["microsoft".into(), "acme".into()],
        ttl: 900,
    };
    let (token, _) = state
        .agents
        .delegate(&mut tx, &user, &agent, &grant)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let dlg = strongbox::agents::token_text(&token).to_string();
    let h = [
        ("authorization", auth.as_str()),
        ("strongbox-delegation", dlg.as_str()),
    ];
    let r = call(&app, "POST", "/v1/credentials/microsoft", &h, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_ne!(r.json["access_token"], "at-ms-old");
    assert_eq!(
        idp.0
            .lock()
            .unwrap()
            .refresh_scopes
            .last()
            .cloned()
            .flatten()
            .as_deref(),
        Some("openid offline_access Mail.Read")
    );
    // The generic provider's refresh carries no scope.
    clock.advance(2 * 3600);
    let dlg = delegate(&state, &user, "bot", &[], 900).await;
    let h = [
        ("authorization", auth.as_str()),
        ("strongbox-delegation", dlg.as_str()),
    ];
    let r = call(&app, "POST", "/v1/credentials/acme", &h, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        idp.0.lock().unwrap().refresh_scopes.last().cloned(),
        Some(None)
    );
}
