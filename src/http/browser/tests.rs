//! The session cookie: its name, attributes and removal.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, header};
use axum::routing::get;
use tower::ServiceExt;

use super::{USER_KEY, clear_cookie, session_layer};
use crate::clock::ManualClock;
use crate::sessions::{SessionRows, Timeouts};
use crate::testkit::{Engine, TestDb};

/// The cookie tower-sessions sets carries the attributes of SPEC §6 and only the id
/// (22 characters of base64url: 128 bits); it is read back by its exact name.
#[tokio::test]
async fn the_session_cookie_keeps_its_name_and_attributes() {
    let Some(t) = TestDb::new(Engine::Sqlite).await else {
        return;
    };
    for https in [false, true] {
        let store = SessionRows::new(
            t.db.clone(),
            Arc::new(ManualClock::at_unix(1_800_000_000)),
            Timeouts {
                idle: 60,
                absolute: 600,
            },
        );
        let app = Router::new()
            .route(
                "/start",
                get(|s: tower_sessions::Session| async move {
                    s.insert(USER_KEY, Option::<String>::None).await.unwrap();
                }),
            )
            .route(
                "/who",
                get(|s: tower_sessions::Session| async move {
                    s.get::<Option<String>>(USER_KEY)
                        .await
                        .unwrap()
                        .is_some()
                        .to_string()
                }),
            )
            .layer(session_layer(store, https));
        let resp = app
            .clone()
            .oneshot(Request::get("/start").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let set = resp.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .to_owned();
        let (name, rest) = set.split_once('=').unwrap();
        let (value, attributes) = rest.split_once(';').unwrap();
        assert_eq!(
            name,
            if https {
                "__Host-strongbox"
            } else {
                "strongbox"
            }
        );
        assert_eq!(value.len(), 22, "{set}");
        let expected = if https {
            " HttpOnly; SameSite=Lax; Secure; Path=/"
        } else {
            " HttpOnly; SameSite=Lax; Path=/"
        };
        assert_eq!(attributes, expected);
        let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT token_hash FROM session")
            .fetch_all(t.db.pool())
            .await
            .unwrap();
        assert!(
            stored
                .iter()
                .all(|h| h.len() == 32 && h.as_slice() != value.as_bytes())
        );
        // The other deployment's name is someone else's cookie.
        for (cookie, known) in [
            (format!("{name}={value}"), true),
            (format!("a=1; x{name}=no; {name}={value} ; b=2"), true),
            (format!("strongbox-other={value}"), false),
            (
                format!(
                    "{}={value}",
                    if https {
                        "strongbox"
                    } else {
                        "__Host-strongbox"
                    }
                ),
                false,
            ),
        ] {
            let resp = app
                .clone()
                .oneshot(
                    Request::get("/who")
                        .header(header::COOKIE, cookie.as_str())
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            let body = axum::body::to_bytes(resp.into_body(), 64).await.unwrap();
            assert_eq!(body == "true", known, "{cookie}");
        }
    }
}

#[test]
fn the_cookie_is_cleared_with_its_attributes() {
    assert_eq!(
        clear_cookie(false),
        "strongbox=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0"
    );
    assert_eq!(
        clear_cookie(true),
        "__Host-strongbox=; HttpOnly; SameSite=Lax; Secure; Path=/; Max-Age=0"
    );
}
