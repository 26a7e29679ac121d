//! What the authorization server refuses: redirect URIs it does not know (and lookalikes),
//! codes replayed, stolen by another client or with the wrong verifier, a cross-site
//! consent, scope escalation at refresh, and a token for one resource used at another.

use serde_json::Value;

use super::{
    Ask, REDIRECT, World, add_agent, approved_code, exchange, oauth_post, params, pkce, with_token,
};
use crate::support::{Engine, Site};

async fn world() -> World {
    super::world(Site::new(Engine::Sqlite).await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redirect_uris_are_matched_exactly_and_never_followed_when_not() {
    let w = world().await;
    w.site.ok(&[
        "agents",
        "add",
        "good",
        "--redirect-uri",
        "https://good.example/cb",
    ]);
    let (_, challenge) = pkce();
    for bad in [
        "https://good.example.evil/cb",
        "https://good.example/cb/../x",
        "https://good.example/cbx",
        "https://good.example/cb?next=https://evil.example",
        "https://user@good.example/cb",
        "https://evil.example@good.example/cb",
        "https://good.example:8443/cb",
        "http://good.example/cb",
        "https://GOOD.example/cb#x",
        "",
    ] {
        let ask = Ask {
            client_id: "good",
            redirect_uri: bad,
            scope: "tool:acme.items",
            challenge: &challenge,
            resource: None,
        };
        let page = w.web.get(&ask.url()).await;
        assert_eq!(page.status, 400, "{bad}: {}", page.text);
        assert!(page.location.is_none(), "{bad} redirected");
    }
    // An unknown client, likewise.
    let ask = Ask {
        client_id: "nobody",
        redirect_uri: "https://good.example/cb",
        scope: "tool:acme.items",
        challenge: &challenge,
        resource: None,
    };
    let page = w.web.get(&ask.url()).await;
    assert_eq!(page.status, 400);
    assert!(page.location.is_none());
    // The registered one with a bad scope: now the error goes back to the client.
    let ask = Ask {
        client_id: "good",
        redirect_uri: "https://good.example/cb",
        scope: "tool:nope",
        challenge: &challenge,
        resource: None,
    };
    let page = w.web.get(&ask.url()).await;
    assert_eq!(page.status, 303);
    let p = params(page.location.as_deref().unwrap());
    assert_eq!(p["error"], "invalid_scope");
    assert_eq!(p["iss"], w.base);
    // Registration refuses what it cannot hold to that rule.
    let out = w.site.run(&[
        "agents",
        "add",
        "bad",
        "--redirect-uri",
        "http://evil.example/cb",
    ]);
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn codes_are_one_time_bound_to_client_and_verifier() {
    let w = world().await;
    let secret = add_agent(&w.site, "bot", REDIRECT);
    let other = add_agent(&w.site, "other", REDIRECT);
    let (verifier, challenge) = pkce();
    let ask = Ask {
        client_id: "bot",
        redirect_uri: REDIRECT,
        scope: "tool:acme.items",
        challenge: &challenge,
        resource: None,
    };

    // Another client cannot use bot's code.
    let code = approved_code(&w, &w.web, &ask).await;
    let stolen = exchange(&w, "other", &other, &code, &verifier).await;
    assert_eq!(stolen.status, 400);
    assert_eq!(stolen.json()["error"], "invalid_grant");

    // The wrong verifier is refused, and spends the code.
    let code = approved_code(&w, &w.web, &ask).await;
    let (wrong, _) = pkce();
    let r = exchange(&w, "bot", &secret, &code, &wrong).await;
    assert_eq!(r.json()["error"], "invalid_grant", "{}", r.text);
    let r = exchange(&w, "bot", &secret, &code, &verifier).await;
    assert_eq!(r.json()["error"], "invalid_grant");

    // A replayed code revokes what the first use issued.
    let code = approved_code(&w, &w.web, &ask).await;
    let first = exchange(&w, "bot", &secret, &code, &verifier).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let access = first.json()["access_token"].as_str().unwrap().to_owned();
    let ok = with_token(&w.base, "GET", "/v1/tools", &access, Value::Null).await;
    assert_eq!(ok.status, 200);
    let again = exchange(&w, "bot", &secret, &code, &verifier).await;
    assert_eq!(again.json()["error"], "invalid_grant");
    let gone = with_token(&w.base, "GET", "/v1/tools", &access, Value::Null).await;
    assert_eq!(gone.status, 401);

    // A code past its 60 seconds.
    let code = approved_code(&w, &w.web, &ask).await;
    w.clock.advance(61);
    let late = exchange(&w, "bot", &secret, &code, &verifier).await;
    assert_eq!(late.json()["error"], "invalid_grant");

    // Another agent's secret is invalid_client (401).
    let code = approved_code(&w, &w.web, &ask).await;
    let r = exchange(&w, "bot", &other, &code, &verifier).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "invalid_client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consent_needs_this_origin_and_the_csrf_token() {
    let w = world().await;
    add_agent(&w.site, "bot", REDIRECT);
    let (_, challenge) = pkce();
    let ask = Ask {
        client_id: "bot",
        redirect_uri: REDIRECT,
        scope: "tool:acme.items",
        challenge: &challenge,
        resource: None,
    };
    let page = w.web.get(&ask.url()).await;
    let consent = super::sign_in_from(&w.web, &page).await;
    let csrf = super::field(&consent.text, "csrf_token");
    let fields = [
        ("response_type", "code"),
        ("client_id", "bot"),
        ("redirect_uri", REDIRECT),
        ("scope", "tool:acme.items"),
        ("state", "s"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("decision", "approve"),
    ];
    // Another site posts the form with the user's cookie and even the token.
    let mut forged: Vec<(&str, &str)> = fields.to_vec();
    forged.push(("csrf_token", &csrf));
    let cross = w
        .web
        .send(
            "POST",
            "/oauth2/authorize",
            Some(&forged),
            &[
                ("origin", "https://evil.example"),
                ("sec-fetch-site", "cross-site"),
            ],
        )
        .await;
    assert_eq!(cross.status, 403, "{}", cross.text);
    assert!(cross.location.is_none());
    // Our origin, but no token.
    let no_token = w.web.post("/oauth2/authorize", &fields).await;
    assert_eq!(no_token.status, 403);
    // Deny goes back with access_denied, and is audited.
    let denied = super::decide(&w.web, &consent, "deny").await;
    let p = params(denied.location.as_deref().unwrap());
    assert_eq!(p["error"], "access_denied");
    assert_eq!(p["state"], "st-123");
    super::check_trail(&w, &["grant.denied"], &[]);
    let grants = w.web.get("/api/grants").await.json();
    assert_eq!(grants["grants"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refresh_cannot_widen_and_resources_bind() {
    let w = world().await;
    let secret = add_agent(&w.site, "bot", REDIRECT);
    let (verifier, challenge) = pkce();
    let mcp = format!("{}/mcp", w.base);
    let ask = Ask {
        client_id: "bot",
        redirect_uri: REDIRECT,
        scope: "tool:acme.items credential:acme",
        challenge: &challenge,
        resource: Some(&mcp),
    };
    let code = approved_code(&w, &w.web, &ask).await;
    let t = exchange(&w, "bot", &secret, &code, &verifier).await.json();
    let access = t["access_token"].as_str().unwrap();
    let refresh = t["refresh_token"].as_str().unwrap();
    // A token for /mcp is refused on /v1.
    let elsewhere = with_token(&w.base, "GET", "/v1/tools", access, Value::Null).await;
    assert_eq!(elsewhere.status, 401, "{}", elsewhere.text);
    assert_eq!(elsewhere.json()["code"], "invalid_token");
    // Nor with an empty delegation header beside it (the request must not look like an
    // agent secret and a delegation to skip the resource check).
    for blank in ["", "  "] {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/credentials/acme", w.base))
            .bearer_auth(access)
            .header("strongbox-delegation", blank)
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{blank:?}");
        let r = reqwest::Client::new()
            .get(format!("{}/v1/tools", w.base))
            .bearer_auth(access)
            .header("strongbox-delegation", blank)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{blank:?}");
    }
    let bot = Some(("bot", secret.as_str()));
    // More than the grant at refresh: invalid_scope, and the refresh token still works.
    let wider = oauth_post(
        &w.base,
        "/oauth2/token",
        bot,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("scope", "tool:acme.items tool:acme.other"),
        ],
    )
    .await;
    assert_eq!(wider.status, 400);
    assert_eq!(wider.json()["error"], "invalid_scope");
    // Another resource than the grant's: invalid_target.
    let v1 = format!("{}/v1", w.base);
    let other = oauth_post(
        &w.base,
        "/oauth2/token",
        bot,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("resource", &v1),
        ],
    )
    .await;
    assert_eq!(other.json()["error"], "invalid_target");
    let same = oauth_post(
        &w.base,
        "/oauth2/token",
        bot,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("scope", "tool:acme.items"),
        ],
    )
    .await;
    assert_eq!(same.status, 200, "{}", same.text);
    // Revocation (RFC 7009) of an access token ends it.
    let access2 = same.json()["access_token"].as_str().unwrap().to_owned();
    let revoked = oauth_post(&w.base, "/oauth2/revoke", bot, &[("token", &access2)]).await;
    assert_eq!(revoked.status, 200);
    let mcp_call = reqwest::Client::new()
        .post(&mcp)
        .bearer_auth(&access2)
        .header("accept", "application/json, text/event-stream")
        .json(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(mcp_call.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metadata_names_every_endpoint() {
    let w = world().await;
    let url = format!("{}/.well-known/oauth-authorization-server", w.base);
    let m: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    assert_eq!(m["issuer"], w.base);
    for (k, path) in [
        ("authorization_endpoint", "/oauth2/authorize"),
        ("token_endpoint", "/oauth2/token"),
        ("revocation_endpoint", "/oauth2/revoke"),
        ("registration_endpoint", "/oauth2/register"),
    ] {
        assert_eq!(m[k], format!("{}{path}", w.base));
    }
    assert_eq!(m["response_types_supported"], serde_json::json!(["code"]));
    assert_eq!(
        m["grant_types_supported"],
        serde_json::json!(["authorization_code", "refresh_token"])
    );
    assert_eq!(
        m["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(m["authorization_response_iss_parameter_supported"], true);
    assert_eq!(m["client_id_metadata_document_supported"], true);
    assert_eq!(
        m["token_endpoint_auth_methods_supported"],
        serde_json::json!([
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
            "none"
        ])
    );
    let scopes = m["scopes_supported"].as_array().unwrap();
    assert!(scopes.contains(&Value::from("tool:acme.items")));
    assert!(scopes.contains(&Value::from("credential:acme")));
    // The bare /mcp URL: 401 naming the protected resource metadata, which names us.
    let r = reqwest::get(format!("{}/mcp", w.base)).await.unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    let prm_url = format!("{}/.well-known/oauth-protected-resource/mcp", w.base);
    assert_eq!(challenge, format!("Bearer resource_metadata=\"{prm_url}\""));
    let prm: Value = reqwest::get(&prm_url).await.unwrap().json().await.unwrap();
    assert_eq!(prm["resource"], format!("{}/mcp", w.base));
    assert_eq!(prm["authorization_servers"], serde_json::json!([w.base]));
    assert_eq!(
        prm["bearer_methods_supported"],
        serde_json::json!(["header"])
    );
}
