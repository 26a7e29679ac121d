//! The document matches the router, lists each route's error codes, and is what
//! `/openapi.json` serves.

use std::collections::BTreeSet;

use serde_json::Value;

use super::*;

fn doc() -> Value {
    serde_json::to_value(document()).unwrap()
}

/// Every (method, path) the router is built from: the handlers `Routes::route` routed,
/// and `/mcp`, which `app` mounts as a service.
fn routed() -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for routes in crate::http::route_table() {
        for (path, item) in routes.paths.paths {
            let item = serde_json::to_value(item).unwrap();
            for method in item.as_object().unwrap().keys() {
                out.insert((method.clone(), path.clone()));
            }
        }
    }
    out
}

#[test]
fn openapi_matches_the_router() {
    let doc = doc();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path}"
            );
            let id = op["operationId"].as_str().unwrap_or_default();
            assert!(ids.insert(id.to_owned()), "{method} {path}: {id:?} twice");
            documented.insert((method.clone(), path.clone()));
        }
    }
    let routed = routed();
    assert!(routed.len() >= 38, "{routed:?}");
    assert!(routed.contains(&("post".to_owned(), crate::http::mcp::PATH.to_owned())));
    assert_eq!(routed, documented);
}

#[test]
fn every_error_response_names_its_codes_and_schema() {
    let doc = doc();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for (status, r) in op["responses"].as_object().unwrap() {
                let desc = r["description"].as_str().unwrap_or_default();
                assert!(!desc.is_empty(), "{method} {path} {status}");
                if let Some(problem) = r["content"].get("application/problem+json") {
                    assert!(desc.contains("code: "), "{method} {path} {status}");
                    assert_eq!(
                        problem["schema"]["$ref"], "#/components/schemas/Problem",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
}

#[test]
fn agent_routes_list_their_error_codes() {
    let doc = doc();
    let run = &doc["paths"]["/v1/tools/{tool}/run"]["post"]["responses"];
    for (status, code) in [
        ("401", "delegation_expired"),
        ("403", "policy_denied"),
        ("409", "reauth_required"),
        ("422", "invalid_argument"),
        ("429", "rate_limited"),
    ] {
        assert!(
            run[status]["description"].as_str().unwrap().contains(code),
            "{status} {code}"
        );
    }
    let release = &doc["paths"]["/v1/credentials/{provider}"]["post"]["responses"];
    for (status, code) in [
        ("409", "reauth_required"),
        ("503", "provider_unavailable"),
        ("503", "credential_changed"),
        ("503", "database_unavailable"),
    ] {
        assert!(
            release[status]["description"]
                .as_str()
                .unwrap()
                .contains(code),
            "{status} {code}"
        );
    }
}

/// `/openapi.json` serves the generated document.
#[tokio::test]
async fn the_served_document_is_the_generated_one() {
    let resp = openapi().await;
    assert_eq!(resp.status(), 200);
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let served: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(served, serde_json::to_value(generate()).unwrap());
}

#[test]
fn forms_and_json_bodies_have_their_media_types() {
    let doc = doc();
    let mut forms = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let Some(content) = op["requestBody"]["content"].as_object() else {
                continue;
            };
            let form = [
                "/connections/",
                "/sessions/",
                "/connect/",
                "/grants/",
                "/oauth2/authorize",
                "/oauth2/token",
                "/oauth2/revoke",
            ]
            .iter()
            .any(|p| path.starts_with(p));
            let media = if form {
                forms += 1;
                "application/x-www-form-urlencoded"
            } else {
                "application/json"
            };
            assert!(content.contains_key(media), "{method} {path}: {content:?}");
        }
    }
    assert_eq!(forms, 7);
}

#[test]
fn authorization_server_routes_answer_as_oauth_clients_expect() {
    let doc = doc();
    let token = &doc["paths"]["/oauth2/token"]["post"];
    assert!(
        token["requestBody"]["content"]
            .get("application/x-www-form-urlencoded")
            .is_some()
    );
    for (status, code) in [
        ("400", "invalid_grant"),
        ("401", "invalid_client"),
        ("500", "server_error"),
    ] {
        let r = &token["responses"][status];
        assert!(
            r["description"].as_str().unwrap().contains(code),
            "{status}"
        );
        assert_eq!(
            r["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/OAuthError"
        );
        assert!(r["content"].get("application/problem+json").is_none());
    }
    assert!(
        token["responses"]["429"]["content"]
            .get("application/problem+json")
            .is_some()
    );
    let register = &doc["paths"]["/oauth2/register"]["post"]["responses"];
    assert!(register["201"]["content"]["application/json"].is_object());
    assert!(
        register["400"]["description"]
            .as_str()
            .unwrap()
            .contains("invalid_redirect_uri")
    );
    for (path, method) in [
        ("/v1/tools", "get"),
        ("/v1/tools/{tool}/run", "post"),
        ("/v1/credentials/{provider}", "post"),
        ("/mcp", "post"),
    ] {
        let op = &doc["paths"][path][method];
        let desc = op["responses"]["401"]["description"].as_str().unwrap();
        assert!(desc.contains("invalid_token"), "{path}");
        assert!(
            op["security"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r.get("access_token").is_some()),
            "{path}"
        );
    }
    let mcp = doc["paths"]["/mcp"]["post"]["responses"]["401"]["description"]
        .as_str()
        .unwrap();
    assert!(mcp.contains("resource_metadata"), "{mcp}");
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    let names: BTreeSet<&str> = schemes.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "access_token",
            "agent",
            "client",
            "csrf",
            "delegation",
            "session"
        ])
    );
}
