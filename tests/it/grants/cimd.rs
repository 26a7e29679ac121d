//! Public clients named by a client ID metadata document: the `client_id` is a URL whose
//! JSON names the client and its redirect URIs. It is fetched with the tool path's guards
//! (no redirects, a size cap, a timeout), checked, cached, and audited once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::response::{IntoResponse, Redirect};
use axum::routing::get;
use serde_json::{Value, json};

use super::{REDIRECT, oauth_post, params, pkce, with_token};
use crate::support::{Engine, Site};

/// Serves metadata documents; counts the fetches of `/client.json`.
async fn documents() -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let fetches = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&fetches);
    let unasked = Arc::new(AtomicUsize::new(0));
    let asked = Arc::clone(&unasked);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let me = format!("{base}/client.json");
    let app = axum::Router::new()
        .route(
            "/client.json",
            get(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                let doc = json!({"client_id": me, "client_name": "Desk <Agent>",
                                 "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"});
                async move { axum::Json(doc) }
            }),
        )
        .route(
            "/liar.json",
            get(|| async { axum::Json(json!({"client_id": "https://elsewhere.example/c.json", "redirect_uris": [REDIRECT]})) }),
        )
        .route(
            "/moved.json",
            get(|| async { Redirect::temporary("/client.json").into_response() }),
        )
        .route("/huge.json", get(|| async { "x".repeat(1 << 20) }))
        .route(
            "/unasked.json",
            get(move || {
                asked.fetch_add(1, Ordering::SeqCst);
                async { axum::Json(json!({"client_id": "x", "redirect_uris": [REDIRECT]})) }
            }),
        )
        .route(
            "/secretive.json",
            get(|| async { axum::Json(json!({"client_id": "x", "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "client_secret_basic"})) }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, fetches, unasked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_metadata_document_names_a_public_client() {
    let w = super::world(Site::new(Engine::Sqlite).await.unwrap()).await;
    let (docs, fetches, unasked) = documents().await;
    let client_id = format!("{docs}/client.json");
    let (verifier, challenge) = pkce();
    let ask = super::Ask {
        client_id: &client_id,
        redirect_uri: REDIRECT,
        scope: "tool:acme.items credential:acme",
        challenge: &challenge,
        resource: None,
    };
    let page = w.web.get(&ask.url()).await;
    let consent = super::sign_in_from(&w.web, &page).await;
    // Named as its document says (escaped), with the host it came from.
    assert!(
        consent.text.contains("Desk &#60;Agent&#62; (127.0.0.1)"),
        "{}",
        consent.text
    );
    // A public client never sees raw tokens, whatever policy says.
    assert!(
        consent
            .text
            .contains("an application that registered itself never sees raw tokens"),
        "{}",
        consent.text
    );
    let back = super::decide(&w.web, &consent, "approve").await;
    let code = params(back.location.as_deref().unwrap())["code"].clone();
    // A public client: no secret, PKCE only.
    let t = oauth_post(
        &w.base,
        "/oauth2/token",
        None,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &verifier),
            ("client_id", &client_id),
        ],
    )
    .await;
    assert_eq!(t.status, 200, "{}", t.text);
    let access = t.json()["access_token"].as_str().unwrap().to_owned();
    let run = with_token(
        &w.base,
        "POST",
        "/v1/tools/acme.items/run",
        &access,
        json!({"args": {"item": "2"}}),
    )
    .await;
    assert_eq!(run.status, 200, "{}", run.text);
    // Cached: the consent and the token request read it once.
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    super::check_trail(
        &w,
        &["client.registered", "metadata_document"],
        &[&access, &code],
    );

    // Documents that are not to be believed: an error page, never a redirect.
    for bad in [
        "liar.json",
        "moved.json",
        "huge.json",
        "secretive.json",
        "missing.json",
    ] {
        let client_id = format!("{docs}/{bad}");
        let ask = super::Ask {
            client_id: &client_id,
            ..ask
        };
        let page = w.web.get(&ask.url()).await;
        assert_eq!(page.status, 400, "{bad}: {}", page.text);
        assert!(page.location.is_none(), "{bad}");
    }
    // URLs that would lead into the private network, or off the https port, are refused
    // before anything is fetched.
    // (Loopback stands for every private range here: the address check itself is unit
    // tested in `outbound`, and no test sends anything to a private range.)
    for bad in [
        "https://127.0.0.1/c.json",
        "https://[::1]/c.json",
        "https://[::ffff:127.0.0.1]/c.json",
        "https://example.com:8443/c.json",
        "https://example.com/c.json?x=1",
        "https://user:pw@example.com/c.json",
    ] {
        let ask = super::Ask {
            client_id: bad,
            ..ask
        };
        let page = w.web.get(&ask.url()).await;
        assert_eq!(page.status, 400, "{bad}: {}", page.text);
        assert!(page.location.is_none(), "{bad}");
        assert!(page.text.contains("cannot be used"), "{bad}: {}", page.text);
    }
    // The token endpoint never fetches a document a caller names.
    let unasked_id = format!("{docs}/unasked.json");
    let r: Value = oauth_post(
        &w.base,
        "/oauth2/token",
        None,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", "x"),
            ("client_id", &unasked_id),
        ],
    )
    .await
    .json();
    assert_eq!(r["error"], "invalid_client");
    assert_eq!(unasked.load(Ordering::SeqCst), 0);
    // A public client cannot pretend to be a registered agent by name.
    let r: Value = oauth_post(
        &w.base,
        "/oauth2/token",
        None,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", "x"),
            ("client_id", "bot"),
        ],
    )
    .await
    .json();
    assert_eq!(r["error"], "invalid_client");
}
