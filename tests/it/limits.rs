//! `[limits]`: sign-in routes per client address (the TCP peer, or what a trusted proxy
//! says), agent routes per (agent, user) with an optional per-agent ceiling, failed agent
//! authentications per address before any database read, and `0` turning a limit off.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use strongbox::clock::{Clock, ManualClock};
use strongbox::config::Config;
use tower::ServiceExt;

use crate::oauth::{Browser, start_provider};
use crate::support::{Engine, Site};

const START: i64 = 1_900_000_000;
/// A well-formed agent secret that no agent has (the lookup reads the database).
const GUESS: &str = "sbx_agent_0123456789abcdef0123456789abcdef_guess";

struct Client {
    app: axum::Router,
    peer: SocketAddr,
}

struct Answer {
    status: StatusCode,
    location: Option<String>,
    cookie: Option<String>,
    retry_after: Option<String>,
}

impl Client {
    async fn get(&self, uri: &str, cookie: Option<&str>, extra: &[(&str, &str)]) -> Answer {
        let mut req = Request::get(uri).extension(ConnectInfo(self.peer));
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, format!("strongbox={c}"));
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let resp = self
            .app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let text = |name: header::HeaderName| {
            resp.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        Answer {
            status: resp.status(),
            location: text(header::LOCATION),
            cookie: text(header::SET_COOKIE).and_then(|s| {
                s.split(';')
                    .next()
                    .and_then(|kv| kv.strip_prefix("strongbox="))
                    .map(str::to_owned)
            }),
            retry_after: text(header::RETRY_AFTER),
        }
    }

    /// A whole sign-in from this client's address: `/login`, the provider, the callback.
    async fn sign_in(&self, extra: &[(&str, &str)]) -> Result<(), Answer> {
        let start = self.get("/login/acme", None, extra).await;
        if start.status != StatusCode::SEE_OTHER {
            return Err(start);
        }
        let b = Browser {
            app: self.app.clone(),
        };
        let callback = b.authorize(start.location.as_deref().unwrap()).await;
        let done = self.get(&callback, start.cookie.as_deref(), extra).await;
        match (&done.status, &done.cookie) {
            (&StatusCode::SEE_OTHER, Some(_)) => Ok(()),
            _ => Err(done),
        }
    }
}

async fn app(site: &Site, base: &str, limits: &str, clock: &ManualClock) -> axum::Router {
    strongbox::app(state(site, base, limits, clock).await)
}

async fn state(site: &Site, base: &str, limits: &str, clock: &ManualClock) -> strongbox::AppState {
    let config = Config::from_toml(&format!(
        "public_url = \"http://127.0.0.1:8080\"\n\
         [limits]\n{limits}\n\
         [providers.acme]\nkind = \"oauth2\"\nclient_id = \"cid\"\nclient_secret = \"csecret\"\nlogin = true\n\
         authorize_url = \"{base}/authorize\"\ntoken_url = \"{base}/token\"\nuserinfo_url = \"{base}/userinfo\"\n\
         scopes = [\"openid\", \"email\"]\n"
    ))
    .unwrap();
    let clock: Arc<dyn Clock> = Arc::new(clock.clone());
    strongbox::AppState::build(config, site.db().await, site.vault().await, clock).unwrap()
}

fn peer(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// An office behind one NAT: 150 sign-ins from one address within a minute all succeed
/// with the default limits (10 a second, bursts of 100; each sign-in is two requests).
#[tokio::test]
async fn an_office_behind_one_address_signs_in_with_the_defaults() {
    let site = Site::new(Engine::Sqlite).await.unwrap();
    site.ok(&["keys", "init"]);
    let (base, _provider) = start_provider().await;
    let clock = ManualClock::at_unix(START);
    let client = Client {
        app: app(&site, &base, "", &clock).await,
        peer: peer("198.51.100.20:50000"),
    };
    for i in 0..150 {
        if let Err(a) = client.sign_in(&[]).await {
            panic!("sign-in {i} answered {}", a.status);
        }
        // 150 sign-ins spread over 60 s.
        if i % 5 == 4 {
            clock.advance(2);
        }
    }
    // The defaults still stop a flood from that address.
    let mut refused = None;
    for i in 0..200 {
        let a = client.get("/login/acme", None, &[]).await;
        if a.status == StatusCode::TOO_MANY_REQUESTS {
            refused = Some((i, a.retry_after));
            break;
        }
    }
    let (after, retry) = refused.expect("a flood is refused");
    assert!(after <= 100, "refused after {after}");
    assert!(retry.unwrap().parse::<u64>().unwrap() >= 1);
}

/// Without trusted proxies a forged `X-Forwarded-For` changes nothing: every request from
/// the peer shares its bucket. From a trusted proxy, two client addresses get two buckets,
/// and what the client wrote to the left of the proxy's entry is ignored.
#[tokio::test]
async fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
    let site = Site::new(Engine::Sqlite).await.unwrap();
    site.ok(&["keys", "init"]);
    let (base, _provider) = start_provider().await;
    let clock = ManualClock::at_unix(START);
    let limits = "signin_per_second = 1\nsignin_burst = 3";

    let direct = Client {
        app: app(&site, &base, limits, &clock).await,
        peer: peer("203.0.113.9:40000"),
    };
    for i in 0..3 {
        let forged = format!("192.0.2.{i}");
        let a = direct
            .get("/login/acme", None, &[("x-forwarded-for", &forged)])
            .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER);
    }
    for forged in [
        ("x-forwarded-for", "192.0.2.77"),
        ("forwarded", "for=192.0.2.78"),
    ] {
        let a = direct.get("/login/acme", None, &[forged]).await;
        assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{forged:?}");
    }

    let limits = format!("{limits}\ntrusted_proxies = [\"10.0.0.0/8\"]");
    let proxy = Client {
        app: app(&site, &base, &limits, &clock).await,
        peer: peer("10.1.2.3:40000"),
    };
    for _ in 0..3 {
        let a = proxy
            .get("/login/acme", None, &[("x-forwarded-for", "198.51.100.1")])
            .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER);
    }
    // That client's bucket is empty, also when it forges an address left of its own.
    let a = proxy
        .get(
            "/login/acme",
            None,
            &[("x-forwarded-for", "192.0.2.200, 198.51.100.1")],
        )
        .await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    // Another client behind the same proxy has its own bucket (through `Forwarded` too).
    let a = proxy
        .get("/login/acme", None, &[("x-forwarded-for", "198.51.100.2")])
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    let a = proxy
        .get("/login/acme", None, &[("forwarded", "for=198.51.100.3")])
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    // A whole sign-in through the proxy works.
    clock.advance(10);
    let behind = Client {
        app: proxy.app.clone(),
        peer: proxy.peer,
    };
    assert!(
        behind
            .sign_in(&[("x-forwarded-for", "198.51.100.50")])
            .await
            .is_ok()
    );
}

/// `0` turns the sign-in limit off.
#[tokio::test]
async fn zero_turns_the_signin_limit_off() {
    let site = Site::new(Engine::Sqlite).await.unwrap();
    site.ok(&["keys", "init"]);
    let (base, _provider) = start_provider().await;
    let clock = ManualClock::at_unix(START);
    let client = Client {
        app: app(&site, &base, "signin_per_second = 0", &clock).await,
        peer: peer("198.51.100.21:50000"),
    };
    for _ in 0..300 {
        assert_eq!(
            client.get("/login/acme", None, &[]).await.status,
            StatusCode::SEE_OTHER
        );
    }
}

/// Requests without a valid agent secret spend the address's budget; once it is spent,
/// the next is refused before the agent is looked up (the database is not read).
#[tokio::test]
async fn unauthenticated_agent_requests_are_limited_per_address() {
    let site = Site::new(Engine::Sqlite).await.unwrap();
    site.ok(&["keys", "init"]);
    let (base, _provider) = start_provider().await;
    let clock = ManualClock::at_unix(START);
    let app = app(
        &site,
        &base,
        "signin_per_second = 1\nsignin_burst = 3",
        &clock,
    )
    .await;
    let post = |peer: SocketAddr, secret: &'static str| {
        let app = app.clone();
        async move {
            let req = Request::post("/v1/credentials/acme")
                .extension(ConnectInfo(peer))
                .header(header::AUTHORIZATION, format!("Bearer {secret}"))
                .header("strongbox-delegation", "sbx_dlg_nope")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{}"))
                .unwrap();
            app.oneshot(req).await.unwrap().status()
        }
    };
    let attacker = peer("203.0.113.50:1234");
    for _ in 0..4 {
        assert_eq!(post(attacker, GUESS).await, StatusCode::UNAUTHORIZED);
    }
    // Over budget: refused before authentication. With the agent table gone, a request
    // that reached the lookup would fail with 500 instead.
    crate::support::sql(&site.url, "ALTER TABLE agent RENAME TO agent_gone").await;
    assert_eq!(post(attacker, GUESS).await, StatusCode::TOO_MANY_REQUESTS);
    clock.advance(2);
    assert_eq!(
        post(attacker, GUESS).await,
        StatusCode::INTERNAL_SERVER_ERROR,
        "after the budget refills the request is authenticated again"
    );
}
