//! A local OAuth 2.0 + OpenID Connect provider for trying Strongbox offline, with no Google
//! or Spotify account: `cargo run --example dev_provider`, then `cargo run -- --config
//! examples/dev.toml serve`, and open http://127.0.0.1:8080. Development only: any name
//! signs in. One confidential client, `strongbox-dev` / `dev-secret`, redirecting to
//! `http://127.0.0.1:PORT/oauth/callback/NAME` (or `localhost`); authorization code with
//! PKCE S256; ES256 ID tokens signed by a P-256 key made at start (`/jwks`); rotating
//! refresh tokens (a replayed one revokes its grant); a toy API for tools: `GET /api/me`
//! (scope `profile`) and `GET /api/notes/{id}` (scope `notes.read`). All in memory; tokens
//! and codes are never logged. `DEV_PROVIDER_ADDR` (default `127.0.0.1:9000`) moves it;
//! `DEV_PROVIDER_TOKEN_TTL` (seconds, default 3600) shortens access tokens.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::result_large_err)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Form, Path, Query, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, HeaderValue, PRAGMA, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

const CLIENT_ID: &str = "strongbox-dev";
const CLIENT_SECRET: &str = "dev-secret";
const SCOPES: [&str; 4] = ["openid", "profile", "email", "notes.read"];
const CODE_TTL: u64 = 60;
const REFRESH_TTL: u64 = 30 * 86_400;

type Reply = Result<Response, Response>;

struct Dev {
    issuer: String,
    kid: String,
    key: EncodingKey,
    /// Access token lifetime, seconds.
    token_ttl: u64,
    jwk: Value,
    rng: SystemRandom,
    db: Mutex<Db>,
}

/// Codes and tokens (random, so used as keys as they are) and what they stand for.
#[derive(Default)]
struct Db {
    codes: HashMap<String, Code>,
    access: HashMap<String, Grant>,
    refresh: HashMap<String, Grant>,
    /// Rotated-out refresh tokens and their grant's family, to catch replays.
    spent: HashMap<String, String>,
}

#[derive(Clone)]
struct Grant {
    sub: String,
    name: String,
    email: String,
    scope: String,
    /// One per sign-in: every token that descends from the same code.
    family: String,
    expires: u64,
}

struct Code {
    grant: Grant,
    redirect_uri: String,
    challenge: String,
    nonce: Option<String>,
}

/// `GET /authorize` query and `POST /authorize` form (which adds `name`).
#[derive(Deserialize)]
struct AuthParams {
    client_id: Option<String>,
    response_type: Option<String>,
    redirect_uri: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    nonce: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    name: Option<String>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dev provider: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("DEV_PROVIDER_ADDR").unwrap_or_else(|_| "127.0.0.1:9000".into());
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| format!("DEV_PROVIDER_ADDR {addr:?} is not an ip:port"))?;
    let token_ttl = match std::env::var("DEV_PROVIDER_TOKEN_TTL") {
        Ok(text) => text
            .parse()
            .map_err(|_| format!("DEV_PROVIDER_TOKEN_TTL {text:?} is not a number of seconds"))?,
        Err(_) => 3600,
    };
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| "cannot generate the signing key")?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|_| "cannot read the signing key")?;
    // The public key is the uncompressed point 0x04 || x || y.
    let point = pair.public_key().as_ref();
    let (Some(x), Some(y)) = (point.get(1..33), point.get(33..65)) else {
        return Err("unexpected public key format".into());
    };
    let (x, y) = (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y));
    // The key id is the key's RFC 7638 thumbprint.
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    let kid = URL_SAFE_NO_PAD.encode(digest(&SHA256, canonical.as_bytes()));
    let jwk = json!({"kty": "EC", "crv": "P-256", "x": x, "y": y,
        "use": "sig", "alg": "ES256", "kid": kid});
    let issuer = format!("http://{addr}");
    let dev = Arc::new(Dev {
        issuer: issuer.clone(),
        kid,
        key: EncodingKey::from_ec_der(pkcs8.as_ref()),
        token_ttl,
        jwk,
        rng,
        db: Mutex::new(Db::default()),
    });
    let app = Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/authorize", get(authorize_form).post(authorize))
        .route("/token", post(token))
        .route("/userinfo", get(userinfo))
        .route("/revoke", post(revoke))
        .route("/api/me", get(api_me))
        .route("/api/notes/{id}", get(api_note))
        .with_state(dev);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    println!(
        "dev provider at {issuer}: client_id {CLIENT_ID}, client_secret {CLIENT_SECRET} \
         (then: cargo run -- --config examples/dev.toml serve)"
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

fn now() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH);
    since.map(|d| d.as_secs()).unwrap_or(0)
}

impl Dev {
    fn db(&self) -> MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// 32 random bytes, base64url: a code or a token.
    fn random(&self) -> Result<String, Response> {
        let mut bytes = [0u8; 32];
        let failed = |_| error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "rng");
        self.rng.fill(&mut bytes).map_err(failed)?;
        Ok(URL_SAFE_NO_PAD.encode(bytes))
    }
}

/// An RFC 6749 §5.2 error; a 401 (`invalid_client`) carries the Basic challenge.
fn error(status: StatusCode, error: &str, description: &str) -> Response {
    let body = Json(json!({"error": error, "error_description": description}));
    let mut resp = (status, [(CACHE_CONTROL, "no-store")], body).into_response();
    if status == StatusCode::UNAUTHORIZED {
        let basic = HeaderValue::from_static("Basic realm=\"dev-provider\"");
        resp.headers_mut().insert(WWW_AUTHENTICATE, basic);
    }
    resp
}

fn bad(code: &str, description: &str) -> Response {
    error(StatusCode::BAD_REQUEST, code, description)
}
fn compact(mut v: Value) -> Value {
    if let Some(map) = v.as_object_mut() {
        map.retain(|_, v| !v.is_null());
    }
    v
}

fn has_scope(grant: &Grant, scope: &str) -> bool {
    grant.scope.split(' ').any(|s| s == scope)
}

async fn discovery(State(dev): State<Arc<Dev>>) -> Json<Value> {
    let iss = &dev.issuer;
    let auth_methods = ["client_secret_basic", "client_secret_post"];
    Json(json!({
        "issuer": iss,
        "authorization_endpoint": format!("{iss}/authorize"),
        "token_endpoint": format!("{iss}/token"),
        "userinfo_endpoint": format!("{iss}/userinfo"),
        "jwks_uri": format!("{iss}/jwks"),
        "revocation_endpoint": format!("{iss}/revoke"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "scopes_supported": SCOPES,
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nonce", "name", "email",
            "email_verified"],
        "token_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "code_challenge_methods_supported": ["S256"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "authorization_response_iss_parameter_supported": true,
    }))
}

async fn jwks(State(dev): State<Arc<Dev>>) -> Json<Value> {
    Json(json!({"keys": [dev.jwk]}))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn page(status: StatusCode, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Dev provider</title>\
         </head><body style=\"font-family:sans-serif;max-width:36rem;margin:3rem auto\">\
         <h1>Dev provider</h1>{body}</body></html>"
    );
    (status, Html(html)).into_response()
}

fn page_error(why: &str) -> Response {
    let body = format!("<p>Bad request: {}</p>", escape(why));
    page(StatusCode::BAD_REQUEST, &body)
}

/// A Strongbox callback on this machine: http, 127.0.0.1 or localhost (any port),
/// path `/oauth/callback/NAME`, no query.
fn loopback_callback(uri: &str) -> Option<Url> {
    let u = Url::parse(uri).ok()?;
    let host = match u.host() {
        Some(url::Host::Ipv4(ip)) => ip.octets() == [127, 0, 0, 1],
        Some(url::Host::Domain(d)) => d == "localhost",
        _ => false,
    };
    let name = u
        .path()
        .strip_prefix("/oauth/callback/")
        .unwrap_or_default();
    let ok = u.scheme() == "http" && host && u.username().is_empty() && u.password().is_none();
    let ok = ok && u.query().is_none() && u.fragment().is_none();
    (ok && !name.is_empty() && !name.contains('/')).then_some(u)
}

/// A 303 back to the client with `pairs`, then `state` and `iss` (RFC 9207).
fn back(mut to: Url, pairs: &[(&str, &str)], state: Option<&str>, iss: &str) -> Response {
    {
        let mut q = to.query_pairs_mut();
        q.extend_pairs(pairs);
        if let Some(state) = state {
            q.append_pair("state", state);
        }
        q.append_pair("iss", iss);
    }
    Redirect::to(to.as_str()).into_response()
}

/// Checks an authorization request and returns the redirect URI and the granted scope.
/// A bad client or redirect URI is shown here; anything else goes back to the client as
/// `error=...` (RFC 6749 §4.1.2.1).
fn check(p: &AuthParams, iss: &str) -> Result<(Url, String), Response> {
    if p.client_id.as_deref() != Some(CLIENT_ID) {
        let why = "unknown client_id: the only client is strongbox-dev";
        return Err(page_error(why));
    }
    let Some(redirect) = p.redirect_uri.as_deref().and_then(loopback_callback) else {
        let why = "redirect_uri must be http://127.0.0.1:PORT/oauth/callback/NAME (or localhost)";
        return Err(page_error(why));
    };
    let fail = |error: &str, description: &str| {
        let pairs = [("error", error), ("error_description", description)];
        back(redirect.clone(), &pairs, p.state.as_deref(), iss)
    };
    if p.response_type.as_deref() != Some("code") {
        return Err(fail("unsupported_response_type", "only response_type=code"));
    }
    let challenge = p.code_challenge.as_deref().unwrap_or_default();
    let b64url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    if p.code_challenge_method.as_deref() != Some("S256")
        || challenge.len() != 43
        || !challenge.bytes().all(b64url)
    {
        return Err(fail("invalid_request", "PKCE S256 is required"));
    }
    let mut scopes: Vec<&str> = Vec::new();
    for s in p.scope.as_deref().unwrap_or_default().split_whitespace() {
        if !SCOPES.contains(&s) {
            let why = "known scopes: openid profile email notes.read";
            return Err(fail("invalid_scope", why));
        }
        if !scopes.contains(&s) {
            scopes.push(s);
        }
    }
    Ok((redirect, scopes.join(" ")))
}

async fn authorize_form(State(dev): State<Arc<Dev>>, Query(p): Query<AuthParams>) -> Reply {
    let (_, scope) = check(&p, &dev.issuer)?;
    let fields = [
        ("client_id", &p.client_id),
        ("response_type", &p.response_type),
        ("redirect_uri", &p.redirect_uri),
        ("scope", &Some(scope.clone())),
        ("state", &p.state),
        ("nonce", &p.nonce),
        ("code_challenge", &p.code_challenge),
        ("code_challenge_method", &p.code_challenge_method),
    ];
    let mut hidden = String::new();
    for (name, value) in fields {
        if let Some(v) = value {
            let v = escape(v);
            hidden += &format!("<input type=\"hidden\" name=\"{name}\" value=\"{v}\">");
        }
    }
    let body = format!(
        "<p><code>{CLIENT_ID}</code> asks for <code>{scope}</code>, back to <code>{to}</code>.\
         </p><form method=\"post\" action=\"/authorize\">{hidden}<label>Sign in as: \
         <input name=\"name\" value=\"Ada Lovelace\" maxlength=\"64\" required autofocus>\
         </label> <button>Sign in</button></form><p><small>Any name works, no password: \
         the subject is <code>dev-</code> and the name's lowercase slug, the email \
         <code>SLUG@dev.example</code>.</small></p>",
        scope = escape(&scope),
        to = escape(p.redirect_uri.as_deref().unwrap_or_default()),
    );
    Ok(page(StatusCode::OK, &body))
}

/// `Ada Lovelace` → `ada-lovelace`.
fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-');
    if out.is_empty() { "user" } else { out }.to_owned()
}

async fn authorize(State(dev): State<Arc<Dev>>, Form(p): Form<AuthParams>) -> Reply {
    let (redirect, scope) = check(&p, &dev.issuer)?;
    let name = p.name.as_deref().unwrap_or_default().trim();
    let name: String = name.chars().take(64).collect();
    if name.is_empty() {
        return Err(page_error("a name is needed to sign in"));
    }
    let slug = slug(&name);
    let (sub, email) = (format!("dev-{slug}"), format!("{slug}@dev.example"));
    eprintln!("authorize: {sub} signed in, scope {scope:?}");
    let family = uuid::Uuid::new_v4().to_string();
    let t = now();
    let grant = Grant {
        sub,
        name,
        email,
        scope,
        family,
        expires: t + CODE_TTL,
    };
    let code = dev.random()?;
    let stored = Code {
        grant,
        redirect_uri: p.redirect_uri.clone().unwrap_or_default(),
        challenge: p.code_challenge.clone().unwrap_or_default(),
        nonce: p.nonce.clone(),
    };
    {
        let mut db = dev.db();
        db.codes.retain(|_, c| c.grant.expires > t);
        db.access.retain(|_, g| g.expires > t);
        db.refresh.retain(|_, g| g.expires > t);
        db.codes.insert(code.clone(), stored);
    }
    let state = p.state.as_deref();
    Ok(back(redirect, &[("code", &code)], state, &dev.issuer))
}

/// Equality without revealing where two secrets differ (their digests are compared).
fn same(a: &str, b: &str) -> bool {
    digest(&SHA256, a.as_bytes()).as_ref() == digest(&SHA256, b.as_bytes()).as_ref()
}

fn authorization<'a>(headers: &'a HeaderMap, scheme: &str) -> Option<&'a str> {
    let (name, credentials) = headers.get(AUTHORIZATION)?.to_str().ok()?.split_once(' ')?;
    name.eq_ignore_ascii_case(scheme)
        .then(|| credentials.trim())
}

/// `id:secret` from `client_secret_basic` (nothing in them that form-encoding changes).
fn basic_credentials(b64: &str) -> Option<(String, String)> {
    let text = String::from_utf8(STANDARD.decode(b64).ok()?).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

/// The form (each parameter at most once) of a request from the client, authenticated by
/// exactly one of `client_secret_basic` and `client_secret_post`.
fn client_form(headers: &HeaderMap, body: &[u8]) -> Result<HashMap<String, String>, Response> {
    let mut form = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        if form.insert(k.into_owned(), v.into_owned()).is_some() {
            return Err(bad("invalid_request", "a parameter is repeated"));
        }
    }
    let basic = authorization(headers, "Basic").map(basic_credentials);
    let post = form.get("client_secret").map(|secret| {
        let id = form.get("client_id").cloned().unwrap_or_default();
        (id, secret.clone())
    });
    let credentials = match (basic, post) {
        (Some(_), Some(_)) => return Err(bad("invalid_request", "two client auth methods")),
        (Some(basic), None) => basic,
        (None, post) => post,
    };
    match credentials {
        Some((id, secret)) if id == CLIENT_ID && same(&secret, CLIENT_SECRET) => Ok(form),
        _ => Err(error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "bad client",
        )),
    }
}

async fn token(State(dev): State<Arc<Dev>>, headers: HeaderMap, body: Bytes) -> Reply {
    let form = client_form(&headers, &body)?;
    let param = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    let invalid_grant = |why: &str| bad("invalid_grant", why);
    let (mut grant, id_nonce) = match param("grant_type") {
        "authorization_code" => {
            let code = dev.db().codes.remove(param("code"));
            let code = code.ok_or_else(|| invalid_grant("unknown or spent code"))?;
            if code.grant.expires <= now() || code.redirect_uri != param("redirect_uri") {
                return Err(invalid_grant("expired code, or not the same redirect_uri"));
            }
            let verifier = param("code_verifier");
            let computed = URL_SAFE_NO_PAD.encode(digest(&SHA256, verifier.as_bytes()));
            if !(43..=128).contains(&verifier.len()) || !same(&computed, &code.challenge) {
                return Err(invalid_grant("PKCE verification failed"));
            }
            (code.grant, Some(code.nonce))
        }
        "refresh_token" => {
            // The same scope again; the old refresh token is spent (rotation).
            let old = param("refresh_token");
            let mut db = dev.db();
            let Some(grant) = db.refresh.remove(old).filter(|g| g.expires > now()) else {
                if let Some(family) = db.spent.get(old).cloned() {
                    eprintln!("token: a spent refresh token was replayed: grant revoked");
                    db.access.retain(|_, g| g.family != family);
                    db.refresh.retain(|_, g| g.family != family);
                }
                let why = "unknown, expired, revoked or spent refresh token";
                return Err(invalid_grant(why));
            };
            db.spent.insert(old.to_owned(), grant.family.clone());
            (grant, None)
        }
        "" => return Err(bad("invalid_request", "grant_type is required")),
        _ => return Err(bad("unsupported_grant_type", "use authorization_code")),
    };
    let (access, refresh, iat) = (dev.random()?, dev.random()?, now());
    // An ID token comes with the code exchange (OIDC Core §3.1.3.3), its claims by scope.
    let id_token = match id_nonce.filter(|_| has_scope(&grant, "openid")) {
        Some(nonce) => {
            let (email, profile) = (has_scope(&grant, "email"), has_scope(&grant, "profile"));
            let claims = compact(json!({
                "iss": dev.issuer, "sub": grant.sub, "aud": CLIENT_ID, "iat": iat,
                "exp": iat + dev.token_ttl, "nonce": nonce, "name": profile.then_some(&grant.name),
                "email": email.then_some(&grant.email), "email_verified": email.then_some(true),
            }));
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some(dev.kid.clone());
            let signed = jsonwebtoken::encode(&header, &claims, &dev.key);
            let failed = |_| error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "signing");
            Some(signed.map_err(failed)?)
        }
        None => None,
    };
    let (kind, sub, scope) = (param("grant_type"), &grant.sub, &grant.scope);
    eprintln!("token: {kind} for {sub}, scope {scope:?}");
    let out = compact(json!({
        "access_token": access, "token_type": "Bearer", "expires_in": dev.token_ttl,
        "refresh_token": refresh, "scope": grant.scope, "id_token": id_token,
    }));
    let mut db = dev.db();
    grant.expires = iat + dev.token_ttl;
    db.access.insert(access, grant.clone());
    grant.expires = iat + REFRESH_TTL;
    db.refresh.insert(refresh, grant);
    let no_store = [(CACHE_CONTROL, "no-store"), (PRAGMA, "no-cache")];
    Ok((no_store, Json(out)).into_response())
}

/// RFC 7009: forgets the token; a refresh token takes its grant's access tokens along.
/// Unknown tokens are fine too.
async fn revoke(State(dev): State<Arc<Dev>>, headers: HeaderMap, body: Bytes) -> Reply {
    let form = client_form(&headers, &body)?;
    let token = form
        .get("token")
        .ok_or_else(|| bad("invalid_request", "token is required"))?;
    let mut db = dev.db();
    if let Some(g) = db.refresh.remove(token) {
        db.access.retain(|_, a| a.family != g.family);
        eprintln!(
            "revoke: a refresh token of {}, and its access tokens",
            g.sub
        );
    } else if let Some(g) = db.access.remove(token) {
        eprintln!("revoke: an access token of {}", g.sub);
    }
    Ok(StatusCode::OK.into_response())
}

/// The grant of the request's bearer access token, which must hold `scope`: else 401 or
/// 403 with an RFC 6750 §3 challenge.
fn bearer(dev: &Dev, headers: &HeaderMap, scope: &str) -> Result<Grant, Response> {
    let token = authorization(headers, "Bearer");
    let grant = token.and_then(|t| dev.db().access.get(t).cloned());
    let (status, error) = match grant.filter(|g| g.expires > now()) {
        Some(g) if has_scope(&g, scope) => return Ok(g),
        Some(_) => (StatusCode::FORBIDDEN, "insufficient_scope"),
        None => (StatusCode::UNAUTHORIZED, "invalid_token"),
    };
    let www = format!("Bearer realm=\"dev-provider\", error=\"{error}\", scope=\"{scope}\"");
    let body = Json(json!({"error": error, "scope": scope}));
    Err((status, [(WWW_AUTHENTICATE, www)], body).into_response())
}

async fn userinfo(State(dev): State<Arc<Dev>>, headers: HeaderMap) -> Reply {
    let g = bearer(&dev, &headers, "openid")?;
    let (email, profile) = (has_scope(&g, "email"), has_scope(&g, "profile"));
    Ok(Json(compact(json!({
        "sub": g.sub, "name": profile.then_some(&g.name),
        "email": email.then_some(&g.email), "email_verified": email.then_some(true),
    })))
    .into_response())
}

async fn api_me(State(dev): State<Arc<Dev>>, headers: HeaderMap) -> Reply {
    let g = bearer(&dev, &headers, "profile")?;
    let greeting = format!("Hello, {}", g.name);
    let me = json!({"sub": g.sub, "name": g.name, "email": g.email, "greeting": greeting});
    Ok(Json(me).into_response())
}

async fn api_note(State(dev): State<Arc<Dev>>, id: Path<String>, headers: HeaderMap) -> Reply {
    let g = bearer(&dev, &headers, "notes.read")?;
    let text = match id.as_str() {
        "1" => format!("Welcome, {}. Only notes.read can read this.", g.name),
        "2" => "Shopping list: coffee, oat milk, a spare hardware key.".to_owned(),
        "3" => "Strongbox ran this tool for an agent; the agent never saw the token.".to_owned(),
        _ => {
            let body = Json(json!({"error": "not_found", "notes": ["1", "2", "3"]}));
            return Err((StatusCode::NOT_FOUND, body).into_response());
        }
    };
    Ok(Json(json!({"id": id.0, "owner": g.sub, "text": text})).into_response())
}
