//! Refresh: single flight within one instance and across two, refresh-token rotation and
//! the quirk of keeping the old one, `invalid_grant`, and Microsoft's `scope` on refresh.

use std::sync::atomic::Ordering;

use axum::http::StatusCode;
use serde_json::json;
use strongbox::agents::Grant;
use strongbox::clock::ManualClock;

use super::{START, World, build, call, delegate, release_as, sign_in, start_idp, world};
use crate::support::Site;

async fn refreshes(site: Site) {
    let World {
        idp,
        clock,
        state,
        app,
        user,
        bot_secret,
        ..
    } = world(&site).await;
    let auth = format!("Bearer {bot_secret}");
    // The token the sign-in stored, released before any refresh.
    let dlg = delegate(&state, &user, "bot", &["acme.items"], 900).await;
    let r = release_as(&app, &auth, &dlg).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let first = r.json["access_token"].as_str().unwrap().to_owned();

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
    let hs = super::agent(&auth, &dlg);
    let r = call(&app, "POST", "/v1/credentials/acme", &hs, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    clock.advance(2 * 3600);
    let dlg = delegate(&state, &user, "bot", &["acme.items"], 900).await;
    let hs = super::agent(&auth, &dlg);
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
    let hs = super::agent(&auth, &dlg);
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

    super::check_trail(
        &site,
        &idp,
        &["credential.refreshed", "credential.refresh_failed"],
        &[&bot_secret, &dlg],
    );
}

super::on_both!(single_flight, super::refreshes);

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

super::on_both!(refresh_across_instances, super::two_instances);

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
