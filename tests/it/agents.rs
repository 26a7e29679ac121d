//! Agents end to end against a provider the test starts. This module holds the provider
//! and the helpers; `tools` covers delegations, Cedar policies and tool runs (and argument
//! attacks), `release` raw release and the rows it may reuse, `refresh` single-flight
//! refresh within one instance and across two, refresh-token rotation and `invalid_grant`.
//! Each ends by checking the audit trail.

mod disconnect;
mod observe;
mod refresh;
mod release;
mod tools;

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
pub(crate) struct Idp {
    /// code -> scope
    codes: HashMap<String, String>,
    /// access token -> subject
    access: HashMap<String, String>,
    /// refresh tokens still valid
    refresh: Vec<String>,
    pub(crate) issued: Vec<String>,
    /// Paths (with query) the API saw.
    api_paths: Vec<String>,
    /// Refresh responses omit the refresh token (the "keep the old one" quirk).
    no_refresh_in_refresh: bool,
    /// The `scope` sent with each refresh grant.
    refresh_scopes: Vec<Option<String>>,
    /// Tokens presented for revocation, in order.
    revoked: Vec<String>,
    /// The revocation endpoint answers 503.
    revoke_unavailable: bool,
    /// The next refresh grant, once answered here, waits at these barriers (met by the
    /// test) before its answer is sent: the first when it has arrived, the second to go.
    hold: Option<Arc<(tokio::sync::Barrier, tokio::sync::Barrier)>>,
}

pub(crate) type Shared = Arc<(Mutex<Idp>, AtomicUsize)>;

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
    let (body, hold) = {
        let mut st = s.0.lock().unwrap();
        let Some(body) = answer(&mut st, &f, refresh_grant) else {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": "invalid_grant"})),
            )
                .into_response();
        };
        (body, if refresh_grant { st.hold.take() } else { None })
    };
    if let Some(hold) = hold {
        hold.0.wait().await;
        hold.1.wait().await;
    }
    axum::Json(body).into_response()
}

/// The token endpoint's answer: new tokens, or `None` for `invalid_grant`.
fn answer(st: &mut Idp, f: &HashMap<String, String>, refresh_grant: bool) -> Option<Value> {
    let scope = if refresh_grant {
        let sent_scope = f.get("scope").cloned();
        st.refresh_scopes.push(sent_scope);
        let presented = &f["refresh_token"];
        let i = st.refresh.iter().position(|r| r == presented)?;
        // Rotation: the presented refresh token is spent.
        st.refresh.remove(i);
        None
    } else {
        Some(st.codes.remove(&f["code"])?)
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
    Some(body)
}

/// RFC 7009 revocation: the token is recorded, and a refresh token stops working.
async fn revoke(State(s): State<Shared>, Form(f): Form<HashMap<String, String>>) -> Response {
    let mut st = s.0.lock().unwrap();
    if st.revoke_unavailable {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let token = f["token"].clone();
    st.refresh.retain(|r| *r != token);
    st.revoked.push(token);
    StatusCode::OK.into_response()
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

pub(crate) async fn start_idp() -> (String, Shared) {
    let shared: Shared = Arc::new((Mutex::new(Idp::default()), AtomicUsize::new(0)));
    let app = axum::Router::new()
        .route("/authorize", get(authorize))
        .route("/token", post(token))
        .route("/revoke", post(revoke))
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
         revocation_url = \"{base}/revoke\"\nscopes = [\"openid\", \"email\"]\n\
         [providers.microsoft]\nclient_id = \"cid\"\nclient_secret = \"csecret\"\ntoken_url = \"{base}/token\"\n\
         [tools.\"acme.items\"]\nprovider = \"acme\"\nmethod = \"GET\"\nurl = \"{base}/api/items/{{item}}/detail\"\n\
         query = [\"limit\"]\nscopes = [\"email\"]\ndescription = \"One item of the user's\"\n\
         args = {{ item = \"The item's id\" }}\n\
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

/// A user's delegation to `agent` of `tools` and the provider acme, for `ttl` seconds.
async fn delegate(
    state: &strongbox::AppState,
    user: &str,
    agent: &str,
    tools: &[&str],
    ttl: i64,
) -> String {
    grant(state, user, agent, tools, &["acme"], ttl).await
}

/// A user's delegation to `agent` of `tools` and `providers`.
async fn grant(
    state: &strongbox::AppState,
    user: &str,
    agent: &str,
    tools: &[&str],
    providers: &[&str],
    ttl: i64,
) -> String {
    let agent = state.agents.by_name(agent).await.unwrap().unwrap();
    let grant = Grant {
        agent: agent.name.clone(),
        tools: tools.iter().map(|s| (*s).to_owned()).collect(),
        providers: providers.iter().map(|s| (*s).to_owned()).collect(),
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

/// A service on a fresh provider with agents `bot` and `nopolicy`, and alice signed in.
struct World {
    idp: Shared,
    clock: ManualClock,
    state: strongbox::AppState,
    app: axum::Router,
    cookie: String,
    user: String,
    csrf: String,
    bot_secret: String,
    nopolicy_secret: String,
}

/// Registers agent `name` from the command line; its secret is the last line, alone.
fn add_agent(site: &Site, name: &str) -> String {
    let out = site.ok(&["agents", "add", name]);
    let secret = out.lines().last().unwrap().trim().to_owned();
    assert!(secret.starts_with("sbx_agent_"), "{out}");
    secret
}

async fn world(site: &Site) -> World {
    let (base, idp) = start_idp().await;
    site.ok(&["keys", "init"]);
    let clock = ManualClock::at_unix(START);
    let state = build(site, &base, &clock).await;
    let app = strongbox::app(state.clone());
    let bot_secret = add_agent(site, "bot");
    let nopolicy_secret = add_agent(site, "nopolicy");
    let (cookie, user, csrf) = sign_in(&app).await;
    World {
        idp,
        clock,
        state,
        app,
        cookie,
        user,
        csrf,
        bot_secret,
        nopolicy_secret,
    }
}

/// The headers of an agent request: its secret (`Bearer …`) and a delegation.
fn agent<'a>(auth: &'a str, dlg: &'a str) -> [(&'static str, &'a str); 2] {
    [("authorization", auth), ("strongbox-delegation", dlg)]
}

/// The trail verifies and holds events of each of `kinds`, and no token the provider
/// issued, nor any of `secrets`, is stored in the clear.
fn check_trail(site: &Site, idp: &Shared, kinds: &[&str], secrets: &[&str]) {
    let audit = site.ok(&["audit", "verify"]);
    assert!(audit.contains("intact"), "{audit}");
    let at_rest = crate::support::at_rest(site);
    for needle in kinds {
        assert!(
            at_rest
                .windows(needle.len())
                .any(|w| w == needle.as_bytes()),
            "no {needle} event"
        );
    }
    let issued = idp.0.lock().unwrap().issued.clone();
    for t in issued
        .iter()
        .map(String::as_str)
        .chain(secrets.iter().copied())
    {
        assert!(
            !at_rest.windows(t.len()).any(|w| w == t.as_bytes()),
            "a secret stored in the clear"
        );
    }
}

/// Makes every insert into the audit trail fail (`true`), or lets them through again.
async fn block_audit(site: &Site, block: bool) {
    let statement = match (site.engine, block) {
        (crate::support::Engine::Sqlite, true) => {
            "CREATE TRIGGER block_audit BEFORE INSERT ON audit_event BEGIN SELECT RAISE(ABORT, 'blocked'); END"
        }
        (crate::support::Engine::Sqlite, false) => "DROP TRIGGER block_audit",
        (crate::support::Engine::Postgres, true) => {
            "CREATE FUNCTION block_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'blocked'; END $$; \
             CREATE TRIGGER block_audit BEFORE INSERT ON audit_event FOR EACH ROW EXECUTE FUNCTION block_audit()"
        }
        (crate::support::Engine::Postgres, false) => {
            "DROP TRIGGER block_audit ON audit_event; DROP FUNCTION block_audit()"
        }
    };
    crate::support::sql(&site.url, statement).await;
}

/// Runs `$scenario(site)` as `$name::sqlite` and `$name::postgres`.
macro_rules! on_both {
    ($name:ident, $scenario:path) => {
        mod $name {
            use crate::support::{Engine, Site};

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                $scenario(Site::new(Engine::Sqlite).await.unwrap()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                if let Some(site) = Site::new(Engine::Postgres).await {
                    $scenario(site).await;
                }
            }
        }
    };
}
pub(crate) use on_both;
