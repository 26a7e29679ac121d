//! The whole flow on both backends: sign-in from the authorization request, consent,
//! connecting a provider from the consent page, code exchange, tools, a run and a raw
//! release with the access token, refresh rotation, a replayed refresh token ending the
//! grant, and revocation from the account page.

use serde_json::Value;

use super::{
    Ask, REDIRECT, add_agent, approved_code, check_trail, decide, exchange, field, oauth_post,
    params, pkce, sign_in_from, with_token, world,
};
use crate::support::Site;

pub(super) async fn whole_flow(site: Site) {
    let w = world(site).await;
    let secret = add_agent(&w.site, "bot", REDIRECT);
    let (verifier, challenge) = pkce();
    let ask = Ask {
        client_id: "bot",
        redirect_uri: REDIRECT,
        scope: "tool:acme.items tool:beta.feed tool:acme.admin credential:acme",
        challenge: &challenge,
        resource: None,
    };
    // Not signed in: the sign-in page, which comes back to the request.
    let page = w.web.get(&ask.url()).await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("Sign in"), "{}", page.text);
    assert!(
        page.text.contains("An application is asking for access"),
        "{}",
        page.text
    );
    let consent = sign_in_from(&w.web, &page).await;
    // The consent page names the agent, each item, what policy refuses and why, and the
    // provider not yet connected.
    assert_eq!(consent.status, 200, "{}", consent.text);
    for needle in [
        "Allow bot",
        "tool:acme.items",
        "tool:beta.feed",
        "credential:acme",
        "Not offered",
        "policy does not let bot run acme.admin",
        "not connected",
        "Connect beta",
    ] {
        assert!(
            consent.text.contains(needle),
            "{needle} in {}",
            consent.text
        );
    }
    // Connect beta from the consent page; the provider sends the browser back to it.
    let connect = w
        .web
        .post(
            "/connect/beta",
            &[
                ("csrf_token", &field(&consent.text, "csrf_token")),
                ("scopes", "read"),
                ("return_to", &field(&consent.text, "return_to")),
            ],
        )
        .await;
    assert_eq!(connect.status, 303, "{}", connect.text);
    let consent = w.web.follow(connect, "\u{0}").await;
    assert!(consent.text.contains("Allow bot"), "{}", consent.text);
    assert!(!consent.text.contains("Connect beta"), "{}", consent.text);
    // Approve: back to the client with a code, the state and the issuer.
    let back = decide(&w.web, &consent, "approve").await;
    let to = back.location.clone().unwrap();
    assert!(to.starts_with(REDIRECT), "{to}");
    let code = params(&to)["code"].clone();
    assert_eq!(params(&to)["iss"], w.base);

    let tokens = exchange(&w, "bot", &secret, &code, &verifier).await;
    assert_eq!(tokens.status, 200, "{}", tokens.text);
    let t = tokens.json();
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["expires_in"], 900);
    assert_eq!(t["scope"], "tool:acme.items tool:beta.feed credential:acme");
    let access = t["access_token"].as_str().unwrap().to_owned();
    let refresh = t["refresh_token"].as_str().unwrap().to_owned();

    // The tools the grant covers; a run and a raw release with the access token alone.
    let tools = with_token(&w.base, "GET", "/v1/tools", &access, Value::Null).await;
    assert_eq!(tools.status, 200, "{}", tools.text);
    let listed = tools.json();
    let names: Vec<&str> = listed["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect::<Vec<_>>()
        .into_iter()
        .collect();
    assert_eq!(names, ["acme.items", "beta.feed"]);
    let run = with_token(
        &w.base,
        "POST",
        "/v1/tools/acme.items/run",
        &access,
        serde_json::json!({"args": {"item": "7"}}),
    )
    .await;
    assert_eq!(run.status, 200, "{}", run.text);
    assert_eq!(run.json()["body"]["path"], "/api/items/7");
    let beta = with_token(
        &w.base,
        "POST",
        "/v1/tools/beta.feed/run",
        &access,
        serde_json::json!({}),
    )
    .await;
    assert_eq!(beta.status, 200, "{}", beta.text);
    let raw = with_token(
        &w.base,
        "POST",
        "/v1/credentials/acme",
        &access,
        serde_json::json!({}),
    )
    .await;
    assert_eq!(raw.status, 200, "{}", raw.text);
    let not_granted = with_token(
        &w.base,
        "POST",
        "/v1/tools/acme.other/run",
        &access,
        serde_json::json!({}),
    )
    .await;
    assert_eq!(not_granted.status, 403, "{}", not_granted.text);

    // Refresh rotates: a new pair, and the old refresh token is spent.
    let r = oauth_post(
        &w.base,
        "/oauth2/token",
        Some(("bot", &secret)),
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let access2 = r.json()["access_token"].as_str().unwrap().to_owned();
    let refresh2 = r.json()["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(refresh2, refresh);
    assert_eq!(
        with_token(&w.base, "GET", "/v1/tools", &access2, Value::Null)
            .await
            .status,
        200
    );
    // The spent one presented again: the whole grant ends, its newest token at once.
    let replay = oauth_post(
        &w.base,
        "/oauth2/token",
        Some(("bot", &secret)),
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await;
    assert_eq!(replay.status, 400);
    assert_eq!(replay.json()["error"], "invalid_grant");
    let refused = with_token(&w.base, "GET", "/v1/tools", &access2, Value::Null).await;
    assert_eq!(refused.status, 401, "{}", refused.text);
    assert_eq!(refused.json()["code"], "invalid_token");
    let after = oauth_post(
        &w.base,
        "/oauth2/token",
        Some(("bot", &secret)),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh2),
        ],
    )
    .await;
    assert_eq!(after.json()["error"], "invalid_grant");

    // A new grant, listed on the account page and in the API, revoked from the page.
    let (verifier, challenge) = pkce();
    let ask = Ask {
        client_id: "bot",
        redirect_uri: REDIRECT,
        scope: "tool:acme.items",
        challenge: &challenge,
        resource: None,
    };
    let code = approved_code(&w, &w.web, &ask).await;
    let t = exchange(&w, "bot", &secret, &code, &verifier).await.json();
    let access3 = t["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        with_token(
            &w.base,
            "POST",
            "/v1/tools/acme.items/run",
            &access3,
            serde_json::json!({"args": {"item": "1"}})
        )
        .await
        .status,
        200
    );
    // The last use is noted off the request's path: give it a moment.
    let mut listed = w.web.get("/api/grants").await.json();
    for _ in 0..50 {
        if listed["grants"][0]["last_used_at"].is_string() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        listed = w.web.get("/api/grants").await.json();
    }
    let grants = listed["grants"].as_array().unwrap();
    assert_eq!(grants.len(), 1, "{listed}");
    assert_eq!(grants[0]["agent"], "bot");
    assert_eq!(grants[0]["tools"], serde_json::json!(["acme.items"]));
    assert!(grants[0]["last_used_at"].is_string(), "{listed}");
    let account = w.web.get("/").await;
    assert!(
        account.text.contains("Apps with access"),
        "{}",
        account.text
    );
    let id = grants[0]["id"].as_str().unwrap();
    let revoke = w
        .web
        .post(
            &format!("/grants/{id}/revoke"),
            &[("csrf_token", &field(&account.text, "csrf_token"))],
        )
        .await;
    assert_eq!(revoke.status, 303, "{}", revoke.text);
    assert_eq!(
        with_token(&w.base, "GET", "/v1/tools", &access3, Value::Null)
            .await
            .status,
        401
    );
    assert_eq!(
        w.web.get("/api/grants").await.json()["grants"],
        serde_json::json!([])
    );

    check_trail(
        &w,
        &[
            "grant.approved",
            "grant.tokens_issued",
            "grant.replay_detected",
            "grant.revoked",
        ],
        &[
            &access, &refresh, &access2, &refresh2, &access3, &code, &secret,
        ],
    );
}

crate::agents::on_both!(agent_authorization_end_to_end, super::whole_flow);
