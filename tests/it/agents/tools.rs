//! Delegations from the browser, tool runs (and argument attacks), refusals, Cedar
//! denials, and the per-agent rate limit.

use std::sync::Arc;

use axum::http::{StatusCode, header};
use serde_json::json;
use strongbox::clock::{Clock, ManualClock};

use super::{START, World, call, config, delegate, sign_in, start_idp, world};
use crate::support::Site;

async fn tool_runs(site: Site) {
    let World {
        idp,
        state,
        app,
        cookie,
        user,
        csrf,
        bot_secret,
        nopolicy_secret,
        ..
    } = world(&site).await;
    // Agent names are unique; the list shows no secret.
    assert!(site.run(&["agents", "add", "bot"]).status.code() != Some(0));
    let listed = site.ok(&["agents", "list"]);
    assert!(listed.contains("bot") && listed.contains("nopolicy") && !listed.contains(&bot_secret));

    let session = format!("strongbox={cookie}");
    let origin = ("origin", "http://127.0.0.1:8080");

    // Delegations from the browser: CSRF, validation, and a token.
    let body = json!({"agent": "bot", "tools": ["acme.items", "acme.out", "acme.admin"], "providers": ["acme"], "ttl": 900});
    let r = call(
        &app,
        "POST",
        "/api/delegations",
        &[("cookie", &session), origin],
        body.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "no CSRF token");
    for (bad, name) in [
        (json!({"agent": "ghost", "tools": ["acme.items"]}), "agent"),
        (json!({"agent": "bot", "tools": ["nope"]}), "nope"),
        (
            json!({"agent": "bot", "tools": ["acme.items"], "ttl": 7200}),
            "ttl",
        ),
        (json!({"agent": "bot", "providers": ["unknown"]}), "unknown"),
    ] {
        let r = call(
            &app,
            "POST",
            "/api/delegations",
            &[("cookie", &session), origin, ("x-csrf-token", &csrf)],
            bad,
        )
        .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
        assert!(
            r.json["detail"].as_str().unwrap().contains(name),
            "{}",
            r.text
        );
    }
    let r = call(
        &app,
        "POST",
        "/api/delegations",
        &[("cookie", &session), origin, ("x-csrf-token", &csrf)],
        body,
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let dlg = r.json["token"].as_str().unwrap().to_owned();
    assert!(dlg.starts_with("sbx_dlg_"));
    assert!(r.json["expires_at"].as_str().unwrap().starts_with("2030-"));

    let auth = format!("Bearer {bot_secret}");
    let agent_headers = |d: &str| {
        vec![
            ("authorization".to_owned(), auth.clone()),
            ("strongbox-delegation".to_owned(), d.to_owned()),
        ]
    };
    let h = agent_headers(&dlg);
    let hs: Vec<(&str, &str)> = h.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();

    // A tool run: the provider's JSON, no token anywhere in our answer.
    let r = call(
        &app,
        "POST",
        "/v1/tools/acme.items/run",
        &hs,
        json!({"args": {"item": "42", "limit": 5}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let lower = format!("bearer {bot_secret}");
    let r2 = call(
        &app,
        "POST",
        "/v1/tools/acme.items/run",
        &[
            ("authorization", lower.as_str()),
            ("strongbox-delegation", dlg.as_str()),
        ],
        json!({"args": {"item": "42"}}),
    )
    .await;
    assert_eq!(
        r2.status,
        StatusCode::OK,
        "the scheme is case-insensitive: {}",
        r2.text
    );
    assert_eq!(r.json["status"], 200);
    assert_eq!(r.json["body"]["path"], "/api/items/42/detail?limit=5");
    assert!(
        r.json["headers"]["content-type"]
            .as_str()
            .unwrap()
            .contains("json")
    );
    for t in idp.0.lock().unwrap().issued.clone() {
        assert!(!r.text.contains(&t), "a token in a tool response");
    }

    // Argument attacks stay on the tool's host and path.
    for evil in [
        "../admin",
        "..%2Fadmin",
        "%2e%2e",
        "//evil.example",
        "@evil.example",
        "a/b",
        "%2F",
        "x?limit=1#f",
        "..\\admin",
    ] {
        let before = idp.0.lock().unwrap().api_paths.len();
        let r = call(
            &app,
            "POST",
            "/v1/tools/acme.items/run",
            &hs,
            json!({"args": {"item": evil}}),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{evil}: {}", r.text);
        let seen = idp.0.lock().unwrap().api_paths[before..].to_vec();
        assert_eq!(seen.len(), 1, "{evil}");
        assert!(
            seen[0].starts_with("/api/items/") && seen[0].ends_with("/detail"),
            "{evil}: {seen:?}"
        );
        assert_eq!(seen[0].matches('/').count(), 4, "{evil}: {seen:?}");
    }
    for (args, name) in [
        (json!({"item": ".."}), "item"),
        (json!({}), "item"),
        (json!({"item": "1", "url": "http://evil"}), "url"),
        (json!({"item": {"nested": 1}}), "item"),
    ] {
        let r = call(
            &app,
            "POST",
            "/v1/tools/acme.items/run",
            &hs,
            json!({"args": args}),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
        assert_eq!(r.json["code"], "invalid_argument");
        assert!(
            r.json["detail"].as_str().unwrap().contains(name),
            "{}",
            r.text
        );
    }
    // A malformed body is a 400 that does not echo what was sent.
    let r = call(
        &app,
        "POST",
        "/v1/tools/acme.items/run",
        &hs,
        json!({"args": "echo-me-not-0xbeef"}),
    )
    .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request")),
        "{}",
        r.text
    );
    assert!(!r.text.contains("echo-me-not"), "{}", r.text);

    // A redirect off the tool's host is not followed.
    let r = call(&app, "POST", "/v1/tools/acme.out/run", &hs, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], 303);

    // Refusals.
    let r = call(&app, "POST", "/v1/tools/nope/run", &hs, json!({})).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_tool"))
    );
    let r = call(&app, "POST", "/v1/tools/acme.other/run", &hs, json!({})).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("tool_not_delegated"))
    );
    let r = call(&app, "POST", "/v1/tools/acme.admin/run", &hs, json!({})).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::CONFLICT, Some("insufficient_scope")),
        "{}",
        r.text
    );
    assert!(
        r.json["url"]
            .as_str()
            .unwrap()
            .contains("/connect/acme?scopes=")
    );
    let r = call(
        &app,
        "POST",
        "/v1/tools/acme.items/run",
        &[
            (
                "authorization",
                "Bearer sbx_agent_00000000000000000000000000000000_x",
            ),
            ("strongbox-delegation", &dlg),
        ],
        json!({}),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.headers.contains_key(header::WWW_AUTHENTICATE));
    let r = call(
        &app,
        "POST",
        "/v1/tools/acme.items/run",
        &[("authorization", &auth)],
        json!({}),
    )
    .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("delegation_invalid"))
    );
    let r = call(
        &app,
        "POST",
        "/v1/tools/acme.items/run",
        &[
            ("authorization", &auth),
            ("strongbox-delegation", "sbx_dlg_forged"),
        ],
        json!({}),
    )
    .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("delegation_invalid"))
    );
    let np_auth = format!("Bearer {nopolicy_secret}");
    let r = call(
        &app,
        "POST",
        "/v1/tools/acme.items/run",
        &[("authorization", &np_auth), ("strongbox-delegation", &dlg)],
        json!({"args": {"item": "1"}}),
    )
    .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("delegation_invalid")),
        "another agent's delegation"
    );

    // Policy: the agent without a permit is denied, and the denial is audited.
    let np_dlg = delegate(&state, &user, "nopolicy", &["acme.items"], 900).await;
    let r = call(
        &app,
        "POST",
        "/v1/tools/acme.items/run",
        &[
            ("authorization", &np_auth),
            ("strongbox-delegation", &np_dlg),
        ],
        json!({"args": {"item": "1"}}),
    )
    .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("policy_denied"))
    );
    let r = call(
        &app,
        "POST",
        "/v1/credentials/acme",
        &[
            ("authorization", &np_auth),
            ("strongbox-delegation", &np_dlg),
        ],
        json!({}),
    )
    .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("policy_denied"))
    );

    // A run's start is durable before the provider is called: if it cannot be written,
    // the provider sees nothing and the agent gets an error.
    let run = || {
        call(
            &app,
            "POST",
            "/v1/tools/acme.items/run",
            &hs,
            json!({"args": {"item": "7"}}),
        )
    };
    let calls = idp.0.lock().unwrap().api_paths.len();
    super::block_audit(&site, true).await;
    let r = run().await;
    super::block_audit(&site, false).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, Some("internal")),
        "{}",
        r.text
    );
    assert_eq!(
        idp.0.lock().unwrap().api_paths.len(),
        calls,
        "the provider was called before the run was audited"
    );
    // Otherwise the start comes first and the result after, under one request id.
    assert_eq!(run().await.status, StatusCode::OK);
    let paired = crate::support::count(
        &site.url,
        "SELECT COUNT(*) FROM audit_event s JOIN audit_event r ON r.request_id = s.request_id \
         WHERE s.kind = 'tool.started' AND r.kind = 'tool.run' AND s.seq < r.seq",
    )
    .await;
    let runs = crate::support::count(
        &site.url,
        "SELECT COUNT(*) FROM audit_event WHERE kind = 'tool.run'",
    )
    .await;
    assert_eq!(paired, runs, "a tool run without its start before it");

    super::check_trail(
        &site,
        &idp,
        &[
            "tool.started",
            "tool.run",
            "policy.denied",
            "delegation.created",
            "agent.added",
        ],
        &[&bot_secret, &dlg],
    );
}

super::on_both!(end_to_end, super::tool_runs);

/// `/v1/*` is rate-limited per (agent, user): a burst of twice `agent_user_per_second`,
/// then 429 with `Retry-After`; another user of the same agent, and another agent, are
/// not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_agent_rate_limit() {
    let site = Site::new(crate::support::Engine::Sqlite).await.unwrap();
    let (base, _idp) = start_idp().await;
    site.ok(&["keys", "init"]);
    let clock = ManualClock::at_unix(START);
    let mut config = config(&site, &base);
    config.limits.agent_user_per_second = 2;
    let clock_dyn: Arc<dyn Clock> = Arc::new(clock.clone());
    let state =
        strongbox::AppState::build(config, site.db().await, site.vault().await, clock_dyn).unwrap();
    let app = strongbox::app(state.clone());
    let secret = |name: &str| {
        let out = site.ok(&["agents", "add", name]);
        format!("Bearer {}", out.lines().last().unwrap().trim())
    };
    let (bot, other) = (secret("bot"), secret("other"));
    let (_, user, _) = sign_in(&app).await;
    let dlg = delegate(&state, &user, "bot", &["acme.items"], 900).await;
    let headers = [
        ("authorization", bot.as_str()),
        ("strongbox-delegation", dlg.as_str()),
    ];
    for i in 0..4 {
        let r = call(&app, "POST", "/v1/credentials/acme", &headers, json!({})).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.text);
    }
    let r = call(&app, "POST", "/v1/credentials/acme", &headers, json!({})).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited"))
    );
    assert!(r.headers.contains_key(header::RETRY_AFTER));
    // Another user of the same agent has a bucket of their own: refused for having no
    // connection, not for the rate.
    let mut tx = site.db().await.begin().await.unwrap();
    strongbox::store::users::insert(&mut tx, "bob-user", 0)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let bob = delegate(&state, "bob-user", "bot", &["acme.items"], 900).await;
    let r = call(
        &app,
        "POST",
        "/v1/credentials/acme",
        &[
            ("authorization", bot.as_str()),
            ("strongbox-delegation", bob.as_str()),
        ],
        json!({}),
    )
    .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::CONFLICT, Some("not_connected")),
        "{}",
        r.text
    );
    // The other agent has its own bucket (it is refused for its delegation, not the rate).
    let r = call(
        &app,
        "POST",
        "/v1/credentials/acme",
        &[
            ("authorization", other.as_str()),
            ("strongbox-delegation", dlg.as_str()),
        ],
        json!({}),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

/// `GET /v1/tools` lists exactly the delegation's tools, each with its description and the
/// JSON Schema of its arguments; no delegation, no list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_agents_can_read() {
    let site = Site::new(crate::support::Engine::Sqlite).await.unwrap();
    let World {
        state,
        app,
        user,
        bot_secret,
        ..
    } = world(&site).await;
    let bearer = format!("Bearer {bot_secret}");
    let dlg = delegate(&state, &user, "bot", &["acme.items", "acme.other"], 900).await;
    let r = call(
        &app,
        "GET",
        "/v1/tools",
        &[("authorization", &bearer), ("strongbox-delegation", &dlg)],
        json!(null),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let tools = r.json["tools"].as_array().unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["acme.items", "acme.other"]);
    assert_eq!(tools[0]["description"], "One item of the user's");
    assert_eq!(tools[0]["provider"], "acme");
    assert_eq!(tools[0]["scopes"], json!(["email"]));
    assert_eq!(
        tools[0]["input_schema"],
        json!({
            "type": "object",
            "properties": {
                "item": {"type": "string", "description": "The item's id"},
                "limit": {"type": "string"},
            },
            "required": ["item"],
            "additionalProperties": false,
        })
    );
    assert!(
        tools[1]["description"]
            .as_str()
            .unwrap()
            .contains("/api/other"),
        "a tool without a description gets one from its method and URL"
    );
    // Without a valid delegation there is nothing to list.
    let r = call(
        &app,
        "GET",
        "/v1/tools",
        &[
            ("authorization", &bearer),
            ("strongbox-delegation", "sbx_dlg_nope"),
        ],
        json!(null),
    )
    .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("delegation_invalid"))
    );
}
