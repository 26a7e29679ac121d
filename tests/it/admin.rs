//! The security team's routes: the admin role from `admins`, keys, the audit trail with
//! filters and paging, and revoking a user.

use std::sync::Arc;

use axum::http::StatusCode;
use strongbox::clock::{Clock, SystemClock};

use crate::oauth::{Browser, start_provider};
use crate::support::Site;

async fn admin_routes_flow(site: Site) {
    let (base, provider) = start_provider().await;
    site.ok(&["keys", "init"]);
    let config = strongbox::config::Config::from_toml(&format!(
        "public_url = \"http://127.0.0.1:8080\"\nadmins = [\"acme:alice-sub\"]\n\
         [providers.acme]\nkind = \"oauth2\"\nclient_id = \"cid\"\nclient_secret = \"csecret\"\nlogin = true\n\
         authorize_url = \"{base}/authorize\"\ntoken_url = \"{base}/token\"\nuserinfo_url = \"{base}/userinfo\"\n\
         scopes = [\"openid\", \"email\"]\n"
    ))
    .unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let state =
        strongbox::AppState::build(config, site.db().await, site.vault().await, clock).unwrap();
    let b = Browser {
        app: strongbox::app(state),
    };
    let alice = b.sign_in_with("acme").await.unwrap();
    provider.lock().unwrap().next_subject = "bob-sub".into();
    let bob = b.sign_in_with("acme").await.unwrap();
    let me = |c: String| {
        let b = &b;
        async move { b.send("GET", "/api/me", Some(&c), &[]).await.body }
    };
    let alice_csrf = me(alice.clone()).await["csrf_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let bob_me = me(bob.clone()).await;
    let bob_id = bob_me["user"]["id"].as_str().unwrap().to_owned();
    let bob_csrf = bob_me["csrf_token"].as_str().unwrap().to_owned();
    let origin = ("origin", "http://127.0.0.1:8080");

    // The OpenAPI document is served.
    let r = b.send("GET", "/openapi.json", None, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["openapi"], "3.1.0");
    assert!(r.body["paths"]["/v1/credentials/{provider}"]["post"].is_object());

    // Not an admin, or not signed in.
    let r = b.send("GET", "/admin/keys", Some(&bob), &[]).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let r = b
        .send(
            "POST",
            "/admin/keys/rotate",
            Some(&bob),
            &[origin, ("x-csrf-token", &bob_csrf)],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = b.send("GET", "/admin/audit", None, &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // Keys.
    let r = b.send("GET", "/admin/keys", Some(&alice), &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["versions"][0]["state"], "primary");
    let r = b
        .send("POST", "/admin/keys/rotate", Some(&alice), &[origin])
        .await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("csrf_failed"))
    );
    let r = b
        .send(
            "POST",
            "/admin/keys/rotate",
            Some(&alice),
            &[origin, ("x-csrf-token", &alice_csrf)],
        )
        .await;
    assert_eq!(
        (r.status, r.body["primary"].as_i64()),
        (StatusCode::OK, Some(2)),
        "{:?}",
        r.body
    );
    let r = b
        .send(
            "POST",
            "/admin/keys/rewrap",
            Some(&alice),
            &[origin, ("x-csrf-token", &alice_csrf)],
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    for _ in 0..100 {
        let r = b.send("GET", "/admin/keys", Some(&alice), &[]).await;
        if r.body["versions"][0]["records"] == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let r = b.send("GET", "/admin/keys", Some(&alice), &[]).await;
    assert_eq!(r.body["versions"][0]["records"], 0, "{:?}", r.body);
    assert_eq!(r.body["versions"][1]["records"], 2, "{:?}", r.body);

    // The trail: filters and paging.
    let r = b
        .send("GET", "/admin/audit?kind=key.rotated", Some(&alice), &[])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let events = r.body["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert!(events[0]["actor"].as_str().unwrap().starts_with("admin:"));
    let r = b
        .send(
            "GET",
            &format!("/admin/audit?user={bob_id}"),
            Some(&alice),
            &[],
        )
        .await;
    let kinds: Vec<&str> = r.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"sign_in"), "{kinds:?}");
    assert!(
        r.body["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["subject"] == format!("user:{bob_id}")
                || e["actor"] == format!("user:{bob_id}"))
    );
    let mut after = 0;
    let mut seen = 0;
    loop {
        let r = b
            .send(
                "GET",
                &format!("/admin/audit?limit=2&after={after}"),
                Some(&alice),
                &[],
            )
            .await;
        let page = r.body["events"].as_array().unwrap();
        seen += page.len();
        match r.body["next_after"].as_i64() {
            Some(n) => after = n,
            None => break,
        }
    }
    let all = b
        .send("GET", "/admin/audit?limit=1000", Some(&alice), &[])
        .await;
    assert_eq!(seen, all.body["events"].as_array().unwrap().len());
    let r = b
        .send(
            "GET",
            "/admin/audit?since=2000-01-01T00:00:00Z&until=2001-01-01T00:00:00Z",
            Some(&alice),
            &[],
        )
        .await;
    assert_eq!(r.body["events"].as_array().unwrap().len(), 0);
    let r = b
        .send("GET", "/admin/audit?since=yesterday", Some(&alice), &[])
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // Revoke bob: sessions, delegations and connections end.
    let r = b
        .send(
            "POST",
            &format!("/admin/users/{bob_id}/revoke"),
            Some(&alice),
            &[origin, ("x-csrf-token", &alice_csrf)],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["sessions"], 1);
    assert_eq!(r.body["connections"], 1, "{:?}", r.body);
    assert_eq!(
        b.send("GET", "/api/me", Some(&bob), &[]).await.status,
        StatusCode::UNAUTHORIZED
    );
    let r = b
        .send(
            "GET",
            &format!("/admin/audit?user={bob_id}&kind=user.revoked"),
            Some(&alice),
            &[],
        )
        .await;
    assert_eq!(r.body["events"].as_array().unwrap().len(), 1);
    // The admin, not bob, is who disconnected bob's connection.
    let alice_id = me(alice.clone()).await["user"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = b
        .send("GET", "/admin/audit?kind=disconnect", Some(&alice), &[])
        .await;
    let events = r.body["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["actor"], format!("admin:{alice_id}"));
    assert!(site.vault().await.list(&bob_id).await.unwrap().is_empty());
    assert!(site.ok(&["audit", "verify"]).contains("intact"));
}

mod admin_routes {
    use crate::support::{Engine, Site};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::admin_routes_flow(Site::new(Engine::Sqlite).await.unwrap()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        if let Some(site) = Site::new(Engine::Postgres).await {
            super::admin_routes_flow(site).await;
        }
    }
}

/// `provider:email:ADDRESS` names a verified email; the bare `provider:X` form names a
/// subject only, so an email that happens to equal it grants nothing.
#[tokio::test]
async fn admin_entries_by_verified_email_or_subject() {
    let site = Site::new(crate::support::Engine::Sqlite).await.unwrap();
    let (base, provider) = start_provider().await;
    site.ok(&["keys", "init"]);
    let config = strongbox::config::Config::from_toml(&format!(
        "public_url = \"http://127.0.0.1:8080\"\n\
         admins = [\"acme:email:ALICE-sub@example.com\", \"acme:bob-sub@example.com\", \"acme:sub:carol-sub\"]\n\
         [providers.acme]\nkind = \"oauth2\"\nclient_id = \"cid\"\nclient_secret = \"csecret\"\nlogin = true\n\
         authorize_url = \"{base}/authorize\"\ntoken_url = \"{base}/token\"\nuserinfo_url = \"{base}/userinfo\"\n\
         scopes = [\"openid\", \"email\"]\n"
    ))
    .unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let state =
        strongbox::AppState::build(config, site.db().await, site.vault().await, clock).unwrap();
    let b = Browser {
        app: strongbox::app(state),
    };
    // The provider says each user's email is `{subject}@example.com`, verified.
    let mut admin = Vec::new();
    for subject in ["alice-sub", "bob-sub", "carol-sub"] {
        provider.lock().unwrap().next_subject = subject.into();
        let cookie = b.sign_in_with("acme").await.unwrap();
        let r = b.send("GET", "/admin/keys", Some(&cookie), &[]).await;
        admin.push((subject, r.status));
    }
    assert_eq!(
        admin,
        [
            ("alice-sub", StatusCode::OK),
            ("bob-sub", StatusCode::FORBIDDEN),
            ("carol-sub", StatusCode::OK),
        ]
    );
}
