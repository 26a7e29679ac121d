//! The document parses, matches the router, and lists each route's error codes.

use std::collections::BTreeSet;

use super::*;

/// Every `.route(path, method(...))` in the router source, as (METHOD, path), and every
/// `.route_service(path, ...)` as (post, path).
fn router_routes() -> BTreeSet<(String, String)> {
    let src = include_str!("../mod.rs");
    let mut out = BTreeSet::new();
    for chunk in src.split(".route(").skip(1) {
        let Some(rest) = chunk.trim_start().strip_prefix('"') else {
            continue;
        };
        let Some((path, rest)) = rest.split_once('"') else {
            continue;
        };
        let call = rest.split(")\n").next().unwrap_or_default();
        for m in ["get", "post", "delete", "put", "patch"] {
            if call.contains(&format!(" {m}(")) || call.contains(&format!(".{m}(")) {
                out.insert((m.to_owned(), path.to_owned()));
            }
        }
    }
    // `.route_service(path, ...)` mounts a whole service there: `/mcp`, whose Streamable
    // HTTP transport is POST.
    for chunk in src.split(".route_service(").skip(1) {
        let path = chunk
            .trim_start()
            .strip_prefix('"')
            .and_then(|rest| rest.split_once('"'));
        if let Some((path, _)) = path {
            out.insert(("post".to_owned(), path.to_owned()));
        }
    }
    out
}

#[test]
fn openapi_matches_the_router() {
    let doc = serde_json::to_value(parsed().unwrap()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path}"
            );
            documented.insert((method.clone(), path.clone()));
        }
    }
    let routed = router_routes();
    assert!(routed.len() >= 25, "the router scan found {routed:?}");
    assert_eq!(
        routed, documented,
        "routes and /openapi.json differ: document every route (src/http/openapi/routes.rs, authz.rs)"
    );
}

#[test]
fn agent_routes_list_their_error_codes() {
    let doc = document();
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

/// Every key of `written` that `served` lacks, as a path (an empty `required` list may go).
fn lost(at: &str, written: &Value, served: &Value, out: &mut Vec<String>) {
    match (written, served) {
        (Value::Object(w), Value::Object(s)) => {
            for (k, v) in w {
                match s.get(k) {
                    Some(sv) => lost(&format!("{at}/{k}"), v, sv, out),
                    None if k == "required" && v.as_array().is_some_and(Vec::is_empty) => {}
                    None => out.push(format!("{at}/{k}")),
                }
            }
        }
        (Value::Array(w), Value::Array(s)) => {
            for (i, (v, sv)) in w.iter().zip(s).enumerate() {
                lost(&format!("{at}/{i}"), v, sv, out);
            }
        }
        _ => {}
    }
}

/// utoipa's model drops what it cannot read (a schema without `type`, `const`, an OAuth
/// flow it mistakes for another) instead of failing: the served document must still say
/// everything the data does.
#[test]
fn the_served_document_loses_nothing() {
    let served = serde_json::to_value(parsed().unwrap()).unwrap();
    let mut out = Vec::new();
    lost("", &document(), &served, &mut out);
    assert!(out.is_empty(), "lost in parsing: {out:?}");
}

#[test]
fn authorization_server_routes_answer_as_oauth_clients_expect() {
    let doc = document();
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
}
