//! Connections, disconnect and sessions from the browser: revocation outcomes, another
//! user's connection, the session list, and CSRF on every state-changing route, against the
//! in-process OAuth 2.0 provider of `oauth`.

use axum::http::StatusCode;
use serde_json::json;

use crate::oauth::{Acme, acme, assert_nothing_in_the_clear};
use crate::support::Site;

async fn connections_and_sessions(site: Site) {
    let Acme { b, provider, .. } = acme(&site).await;
    let alice = b.sign_in().await;
    let csrf = b.send("GET", "/api/me", Some(&alice), &[]).await.body["csrf_token"]
        .as_str()
        .unwrap()
        .to_owned();
    provider.lock().unwrap().next_subject = "bob-sub".into();
    let bob = b.sign_in().await;
    provider.lock().unwrap().next_subject = "alice-sub".into();

    // Connections and disconnect: 503 keeps the record for retry, other failures erase it
    // anyway, success revokes the refresh token at the provider.
    let origin = ("origin", "http://127.0.0.1:8080");
    let list = b.send("GET", "/api/connections", Some(&alice), &[]).await;
    let conn = &list.body["connections"][0];
    assert_eq!(
        (conn["provider"].as_str(), conn["status"].as_str()),
        (Some("acme"), Some("active"))
    );
    let id = conn["id"].as_str().unwrap().to_owned();
    let path = format!("/api/connections/{id}");
    assert_eq!(
        b.send("DELETE", &path, Some(&alice), &[origin]).await.body["code"],
        "csrf_failed"
    );
    provider.lock().unwrap().revoke_status = 503;
    let r = b
        .send(
            "DELETE",
            &path,
            Some(&alice),
            &[origin, ("x-csrf-token", &csrf)],
        )
        .await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("provider_unavailable")
        )
    );
    let list = b.send("GET", "/api/connections", Some(&alice), &[]).await;
    assert_eq!(list.body["connections"][0]["status"], "revoke_pending");
    provider.lock().unwrap().revoke_status = 400;
    let r = b
        .send(
            "DELETE",
            &path,
            Some(&alice),
            &[origin, ("x-csrf-token", &csrf)],
        )
        .await;
    assert_eq!(
        (r.body["erased"].as_bool(), r.body["revoked"].as_bool()),
        (Some(true), Some(false)),
        "{:?}",
        r.body
    );
    assert_eq!(
        b.send("GET", "/api/connections", Some(&alice), &[])
            .await
            .body["connections"],
        json!([])
    );
    provider.lock().unwrap().revoke_status = 200;
    let alice3 = b.sign_in().await;
    let list = b.send("GET", "/api/connections", Some(&alice3), &[]).await;
    let id = list.body["connections"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let csrf3 = b.send("GET", "/api/me", Some(&alice3), &[]).await.body["csrf_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = b
        .send(
            "DELETE",
            &format!("/api/connections/{id}"),
            Some(&alice3),
            &[origin, ("x-csrf-token", &csrf3)],
        )
        .await;
    assert_eq!(r.body["revoked"], true, "{:?}", r.body);
    let revoked = provider.lock().unwrap().revoked.clone();
    assert!(
        revoked.len() == 1 && revoked[0].starts_with("rt-"),
        "the refresh token was revoked"
    );
    // Another user's connection cannot be touched.
    let bob_conn = b
        .send("GET", "/api/connections", Some(&bob), &[])
        .await
        .body["connections"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = b
        .send(
            "DELETE",
            &format!("/api/connections/{bob_conn}"),
            Some(&alice3),
            &[origin, ("x-csrf-token", &csrf3)],
        )
        .await;
    assert_eq!(r.body["code"], "not_found");

    // Sessions: list, CSRF, sign out everywhere.
    let alice2 = b.sign_in().await;
    let list = b.send("GET", "/api/sessions", Some(&alice), &[]).await;
    assert_eq!(list.body["sessions"].as_array().unwrap().len(), 3);
    assert!(!list.body.to_string().contains(&alice));
    let r = b.send("POST", "/logout", Some(&alice2), &[origin]).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("csrf_failed")),
        "no token"
    );
    let csrf2 = b.send("GET", "/api/me", Some(&alice2), &[]).await.body["csrf_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = b
        .send(
            "POST",
            "/logout",
            Some(&alice2),
            &[("origin", "https://evil.example"), ("x-csrf-token", &csrf2)],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "cross-origin");
    let r = b
        .send(
            "POST",
            "/logout",
            Some(&alice2),
            &[origin, ("x-csrf-token", &csrf)],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "another session's token");
    let r = b
        .send(
            "POST",
            "/logout",
            Some(&alice2),
            &[origin, ("x-csrf-token", &csrf2)],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(
        b.send("GET", "/api/me", Some(&alice2), &[]).await.status,
        StatusCode::UNAUTHORIZED
    );
    let (status, _, _) = b
        .raw(
            "POST",
            "/sessions/end-all",
            Some(&alice),
            &[("origin", "https://evil.example")],
            &format!("csrf_token={csrf}"),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "cross-origin form post refused"
    );
    // `Origin: null` (an opaque origin, or a no-referrer page) counts only with
    // `Sec-Fetch-Site: same-origin`.
    for fetch_site in ["cross-site", "same-site", "none"] {
        let (status, _, _) = b
            .raw(
                "POST",
                "/sessions/end-all",
                Some(&alice),
                &[("origin", "null"), ("sec-fetch-site", fetch_site)],
                &format!("csrf_token={csrf}"),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "Origin null, {fetch_site}");
    }
    let (status, _, _) = b
        .raw(
            "POST",
            "/sessions/end-all",
            Some(&alice),
            &[("origin", "null")],
            &format!("csrf_token={csrf}"),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "Origin null alone");
    let r = b
        .send(
            "DELETE",
            "/api/sessions",
            Some(&alice),
            &[("sec-fetch-site", "same-origin"), ("x-csrf-token", &csrf)],
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        b.send("GET", "/api/me", Some(&alice), &[]).await.status,
        StatusCode::UNAUTHORIZED
    );

    // No token the provider issued is stored in the clear.
    assert_nothing_in_the_clear(&site, &provider);
}

mod connections_disconnect_and_sessions {
    use crate::support::{Engine, Site};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::connections_and_sessions(Site::new(Engine::Sqlite).await.unwrap()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        if let Some(site) = Site::new(Engine::Postgres).await {
            super::connections_and_sessions(site).await;
        }
    }
}
