//! An rmcp client that knows only the URL `{public_url}/mcp`: it is refused with the
//! protected resource metadata, discovers the authorization server, registers itself
//! (RFC 7591), has the user consent in a browser (the test's), lists and calls tools.

use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::auth::{AuthorizationRequest, OAuthState};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::json;

use super::{Ask, REDIRECT, add_agent, approved_code, exchange, pkce};
use crate::support::{Engine, Site};

fn args(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    v.as_object().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_mcp_client_discovers_registers_and_calls_tools() {
    let w = super::world(Site::new(Engine::Sqlite).await.unwrap()).await;
    let mcp_url = format!("{}/mcp", w.base);

    let mut oauth = OAuthState::new(mcp_url.as_str(), None).await.unwrap();
    oauth
        .start_authorization(AuthorizationRequest::new(REDIRECT).with_client_name("it-client"))
        .await
        .unwrap();
    let auth_url = oauth.get_authorization_url().await.unwrap();
    assert!(
        auth_url.starts_with(&format!("{}/oauth2/authorize?", w.base)),
        "{auth_url}"
    );
    // The browser: sign in, then the consent page names the self-registered client and
    // offers only what policy allows it.
    let page = w.web.get(&auth_url).await;
    let consent = super::sign_in_from(&w.web, &page).await;
    assert!(
        consent.text.contains("it-client (unverified)"),
        "{}",
        consent.text
    );
    assert!(
        consent.text.contains("registered itself"),
        "{}",
        consent.text
    );
    assert!(
        consent.text.contains("policy does not let"),
        "{}",
        consent.text
    );
    let back = super::decide(&w.web, &consent, "approve").await;
    let callback = back.location.unwrap();
    assert!(callback.starts_with(REDIRECT), "{callback}");
    oauth.handle_callback_url(&callback).await.unwrap();
    let manager = oauth.into_authorization_manager().unwrap();
    let token = manager.get_access_token().await.unwrap();

    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(mcp_url.as_str()).auth_header(token.clone()),
    );
    let client = ().serve(transport).await.unwrap();
    let tools = client.list_all_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(names, ["acme.items"]);
    assert_eq!(
        tools[0].description.as_deref(),
        Some("One of the user's items")
    );
    assert_eq!(tools[0].input_schema["required"], json!(["item"]));

    let result = client
        .call_tool(
            CallToolRequestParams::new("acme.items").with_arguments(args(json!({"item": "3"}))),
        )
        .await
        .unwrap();
    assert_ne!(result.is_error, Some(true), "{result:?}");
    let text = serde_json::to_string(&result).unwrap();
    assert!(text.contains("/api/items/3"), "{text}");
    // Outside the grant: a tool error, not a run.
    let refused = client
        .call_tool(CallToolRequestParams::new("acme.other").with_arguments(args(json!({}))))
        .await
        .unwrap();
    assert_eq!(refused.is_error, Some(true), "{refused:?}");
    let refused_text = serde_json::to_string(&refused).unwrap();
    assert!(
        refused_text.contains("tool_not_delegated"),
        "{refused_text}"
    );
    client.cancel().await.unwrap();

    // No token the provider issued, nor ours, in anything MCP answered.
    let issued = w.idp.0.lock().unwrap().issued.clone();
    for t in issued.iter().chain(std::iter::once(&token)) {
        assert!(!text.contains(t.as_str()) && !refused_text.contains(t.as_str()));
    }
    super::check_trail(
        &w,
        &["client.registered", "grant.approved", "tool.run"],
        &[&token],
    );
    // A client that registered itself is no agent service of the operator's.
    let listed = w.site.ok(&["agents", "list"]);
    assert!(!listed.contains("client-"), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tool_whose_provider_is_not_connected_names_the_url() {
    let w = super::world(Site::new(Engine::Sqlite).await.unwrap()).await;
    let secret = add_agent(&w.site, "bot", REDIRECT);
    let (verifier, challenge) = pkce();
    let mcp_url = format!("{}/mcp", w.base);
    let ask = Ask {
        client_id: "bot",
        redirect_uri: REDIRECT,
        scope: "tool:beta.feed",
        challenge: &challenge,
        resource: Some(&mcp_url),
    };
    let code = approved_code(&w, &w.web, &ask).await;
    let t = exchange(&w, "bot", &secret, &code, &verifier).await.json();
    let token = t["access_token"].as_str().unwrap().to_owned();
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(mcp_url.as_str()).auth_header(token.clone()),
    );
    let client = ().serve(transport).await.unwrap();
    let r = client
        .call_tool(CallToolRequestParams::new("beta.feed").with_arguments(args(json!({}))))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(true), "{r:?}");
    let text = serde_json::to_string(&r).unwrap();
    assert!(text.contains("not_connected"), "{text}");
    assert!(text.contains("/connect/beta"), "{text}");
    client.cancel().await.unwrap();

    // A client that declares URL-mode elicitation (in the request's `_meta`, as clients of
    // the sessionless protocol do) gets the "URL elicitation required" error instead.
    let call = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
        "name": "beta.feed", "arguments": {},
        "_meta": {"io.modelcontextprotocol/clientCapabilities": {"elicitation": {"url": {}}}}}});
    let r: serde_json::Value = reqwest::Client::new()
        .post(&mcp_url)
        .bearer_auth(&token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .json(&call)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["error"]["code"], -32042, "{r}");
    let elicitation = &r["error"]["data"]["elicitations"][0];
    assert_eq!(elicitation["mode"], "url", "{r}");
    assert!(
        elicitation["url"]
            .as_str()
            .unwrap()
            .ends_with("/connect/beta?scopes=read"),
        "{r}"
    );
}
