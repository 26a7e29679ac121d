//! Raw release: within policy and beyond it, never without its audit event, and on rows
//! an earlier release read only if they still hold when it is recorded.

use axum::http::{StatusCode, header};
use serde_json::json;
use strongbox::clock::Clock;

use super::{World, call, delegate, release_as, released, world};
use crate::support::Site;

async fn releases(site: Site) {
    let World {
        idp,
        clock,
        state,
        app,
        cookie,
        user,
        bot_secret,
        nopolicy_secret,
        ..
    } = world(&site).await;
    let auth = format!("Bearer {bot_secret}");
    let dlg = delegate(&state, &user, "bot", &["acme.items"], 900).await;
    let hs = super::agent(&auth, &dlg);

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
    // Policy decides before the connection's state is told: scopes beyond policy are
    // denied whether the connection lacks them or not, and so is a provider the user has
    // not connected, for an agent without a permit.
    let denials = || {
        crate::support::count(
            &site.url,
            "SELECT COUNT(*) FROM audit_event WHERE kind = 'policy.denied'",
        )
    };
    let denied = denials().await;
    for scopes in [json!(["admin"]), json!(["openid", "email", "admin"])] {
        let r = call(
            &app,
            "POST",
            "/v1/credentials/acme",
            &hs,
            json!({ "scopes": scopes }),
        )
        .await;
        assert_eq!(
            (r.status, r.json["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("policy_denied")),
            "scope beyond policy the connection lacks: {}",
            r.text
        );
        assert!(r.json.get("url").is_none(), "{}", r.text);
    }
    let np_auth = format!("Bearer {nopolicy_secret}");
    let np_dlg = super::grant(&state, &user, "nopolicy", &[], &["acme", "microsoft"], 900).await;
    for (provider, scopes) in [
        ("microsoft", json!({})),
        ("acme", json!({"scopes": ["admin"]})),
    ] {
        let r = call(
            &app,
            "POST",
            &format!("/v1/credentials/{provider}"),
            &super::agent(&np_auth, &np_dlg),
            scopes,
        )
        .await;
        assert_eq!(
            (r.status, r.json["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("policy_denied")),
            "{provider}: {}",
            r.text
        );
    }
    assert_eq!(denials().await, denied + 4, "each denial is audited");
    // Within policy, the connection's state decides: bot may see Microsoft tokens, and
    // alice has not connected it.
    let bot_ms = super::grant(&state, &user, "bot", &[], &["microsoft"], 900).await;
    let h = super::agent(&auth, &bot_ms);
    let r = call(&app, "POST", "/v1/credentials/microsoft", &h, json!({})).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::CONFLICT, Some("not_connected")),
        "{}",
        r.text
    );
    let r = call(&app, "POST", "/v1/credentials/other", &hs, json!({})).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("provider_not_delegated"))
    );

    // If the release cannot be audited, nothing is released.
    super::block_audit(&site, true).await;
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
    super::block_audit(&site, false).await;

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

    super::check_trail(&site, &idp, &["credential.released"], &[&bot_secret, &dlg]);
}

super::on_both!(end_to_end, super::releases);
