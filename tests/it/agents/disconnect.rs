//! Connections going away under agents: a connection pending revocation is never used, a
//! disconnect ends the delegations that name its provider, and a refresh at the provider
//! while the connection is disconnected neither brings it back nor keeps its new tokens.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;
use strongbox::audit::Actor;
use strongbox::oauth::Disconnected;

use super::{World, agent, call, delegate, grant, release_as, released, world};
use crate::support::Site;

/// A connection marked `revoke_pending` (its disconnect waits for the provider) releases
/// nothing and runs nothing, from kept rows or fresh ones, and is not refreshed.
async fn pending_revocation(site: Site) {
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
    let run = |dlg: String| {
        let (app, auth) = (app.clone(), auth.clone());
        async move {
            let h = agent(&auth, &dlg);
            call(
                &app,
                "POST",
                "/v1/tools/acme.items/run",
                &h,
                json!({"args": {"item": "1"}}),
            )
            .await
        }
    };
    // Both work, and the release's rows are kept for the next one.
    let dlg = delegate(&state, &user, "bot", &["acme.items"], 900).await;
    assert_eq!(release_as(&app, &auth, &dlg).await.status, StatusCode::OK);
    assert_eq!(run(dlg.clone()).await.status, StatusCode::OK);
    let (releases, calls) = (released(&site).await, idp.0.lock().unwrap().api_paths.len());
    crate::support::sql(&site.url, "UPDATE connection SET status = 'revoke_pending'").await;
    for expired in [false, true] {
        let dlg = if expired {
            // Past expiry: a refresh is not attempted either.
            clock.advance(2 * 3600);
            delegate(&state, &user, "bot", &["acme.items"], 900).await
        } else {
            dlg.clone()
        };
        let r = release_as(&app, &auth, &dlg).await;
        assert_eq!(
            (r.status, r.json["code"].as_str()),
            (StatusCode::CONFLICT, Some("not_connected")),
            "{}",
            r.text
        );
        assert!(r.json.get("access_token").is_none(), "{}", r.text);
        let r = run(dlg).await;
        assert_eq!(
            (r.status, r.json["code"].as_str()),
            (StatusCode::CONFLICT, Some("not_connected")),
            "{}",
            r.text
        );
    }
    assert_eq!(released(&site).await, releases);
    assert_eq!(
        idp.0.lock().unwrap().api_paths.len(),
        calls,
        "the provider was called"
    );
    assert_eq!(idp.1.load(Ordering::SeqCst), 0, "a refresh was attempted");
}

super::on_both!(pending_revocation_is_not_used, super::pending_revocation);

/// Disconnecting ends the user's delegations naming the provider or one of its tools, in
/// the transaction of the disconnect's audit event; others stay.
async fn ends_delegations(site: Site) {
    let World {
        state,
        app,
        user,
        bot_secret,
        ..
    } = world(&site).await;
    let auth = format!("Bearer {bot_secret}");
    let by_provider = grant(&state, &user, "bot", &[], &["acme", "microsoft"], 900).await;
    let by_tool = grant(&state, &user, "bot", &["acme.items"], &["microsoft"], 900).await;
    let other = grant(&state, &user, "bot", &[], &["microsoft"], 900).await;
    let microsoft = |dlg: String| {
        let (app, auth) = (app.clone(), auth.clone());
        async move {
            let h = agent(&auth, &dlg);
            call(&app, "POST", "/v1/credentials/microsoft", &h, json!({})).await
        }
    };
    // All three are accepted (alice has no Microsoft connection).
    for dlg in [&by_provider, &by_tool, &other] {
        let r = microsoft(dlg.clone()).await;
        assert_eq!(r.json["code"], "not_connected", "{}", r.text);
    }
    let id = state.vault.list(&user).await.unwrap()[0].id().to_owned();
    let done = state
        .broker
        .disconnect(Actor::User(user.clone()), &user, &id)
        .await
        .unwrap();
    assert_eq!(done, Disconnected::Erased { revoked: true });
    for dlg in [&by_provider, &by_tool] {
        let r = microsoft(dlg.clone()).await;
        assert_eq!(
            (r.status, r.json["code"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("delegation_invalid")),
            "{}",
            r.text
        );
    }
    assert_eq!(microsoft(other.clone()).await.json["code"], "not_connected");
    // Only the other is left, and the disconnect's event names what it ended.
    let left = crate::support::count(&site.url, "SELECT COUNT(*) FROM delegation").await;
    assert_eq!(left, 1);
    let ended = crate::support::count(
        &site.url,
        "SELECT COUNT(*) FROM audit_event WHERE kind = 'disconnect' \
         AND detail LIKE '%\"delegations_ended\":[\"%'",
    )
    .await;
    assert_eq!(ended, 1);
    let audit = site.ok(&["audit", "verify"]);
    assert!(audit.contains("intact"), "{audit}");
}

super::on_both!(disconnect_ends_delegations, super::ends_delegations);

/// A release whose refresh is at the provider while the user disconnects (`pending`: the
/// provider's revocation endpoint answers 503, so the record stays `revoke_pending`): the
/// refresh's tokens are not stored, the connection is not re-created or made active again,
/// nothing is released, and the new refresh token is revoked.
async fn refresh_racing_disconnect(site: Site, pending: bool) {
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
    let before = state.vault.list(&user).await.unwrap();
    let (id, generation) = (before[0].id().to_owned(), before[0].generation());
    clock.advance(2 * 3600);
    let dlg = delegate(&state, &user, "bot", &[], 900).await;
    let hold = Arc::new((tokio::sync::Barrier::new(2), tokio::sync::Barrier::new(2)));
    idp.0.lock().unwrap().hold = Some(Arc::clone(&hold));
    let release = {
        let (app, auth, dlg) = (app.clone(), auth.clone(), dlg.clone());
        tokio::spawn(async move { release_as(&app, &auth, &dlg).await })
    };
    // The provider has issued the new tokens; its answer waits.
    tokio::time::timeout(Duration::from_secs(30), hold.0.wait())
        .await
        .expect("the refresh never reached the provider");
    let issued = idp.0.lock().unwrap().issued.clone();
    let new_refresh = issued
        .iter()
        .rev()
        .find(|t| t.starts_with("rt-"))
        .unwrap()
        .clone();
    idp.0.lock().unwrap().revoke_unavailable = pending;
    let done = state
        .broker
        .disconnect(Actor::User(user.clone()), &user, &id)
        .await
        .unwrap();
    if pending {
        assert_eq!(done, Disconnected::PendingRetry);
        idp.0.lock().unwrap().revoke_unavailable = false;
    } else {
        assert_eq!(done, Disconnected::Erased { revoked: true });
    }
    hold.1.wait().await;
    let r = release.await.unwrap();
    assert_ne!(
        r.status,
        StatusCode::OK,
        "released after a disconnect: {}",
        r.text
    );
    assert!(r.json.get("access_token").is_none(), "{}", r.text);
    let after = state.vault.list(&user).await.unwrap();
    if pending {
        assert_eq!(after.len(), 1);
        assert_eq!(
            after[0].status(),
            "revoke_pending",
            "the refresh made it active"
        );
        assert_eq!(after[0].generation(), generation, "the refresh was stored");
    } else {
        assert!(after.is_empty(), "the refresh re-created the connection");
    }
    assert!(
        idp.0.lock().unwrap().revoked.contains(&new_refresh),
        "the discarded refresh token was not revoked"
    );
    assert_eq!(released(&site).await, 0);
    let audit = site.ok(&["audit", "verify"]);
    assert!(audit.contains("intact"), "{audit}");
}

async fn refresh_racing_erasure(site: Site) {
    refresh_racing_disconnect(site, false).await;
}

async fn refresh_racing_pending_revocation(site: Site) {
    refresh_racing_disconnect(site, true).await;
}

super::on_both!(refresh_then_erased, super::refresh_racing_erasure);
super::on_both!(
    refresh_then_pending,
    super::refresh_racing_pending_revocation
);
