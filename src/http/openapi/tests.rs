//! The document parses, matches the router, and lists each route's error codes.

use std::collections::BTreeSet;

use super::*;

/// Every `.route(path, method(...))` in the router source, as (METHOD, path).
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
        "routes and /openapi.json differ: document every route (src/http/openapi/routes.rs)"
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
